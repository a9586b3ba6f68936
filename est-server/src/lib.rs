//! EST (RFC 7030) server for IoT fleets, in layers (top to bottom):
//!
//! - [`frontend`]: the protocol front-ends, holding no policy — EST over
//!   HTTPS ([`frontend::http`], [`frontend::router`], [`frontend::tls`],
//!   [`frontend::listener`] against hostile clients), the vending-machine
//!   JSON façades ([`frontend::cvm`]) and OCSP and CRLs ([`frontend::status`]);
//!   [`rotation`] (MQTT) and the admin listener in [`metrics`] beside them.
//! - [`authority`]: one path decides who may get which certificate and
//!   records it — [`authority::enroll`] (authenticate via
//!   [`authority::auth`], strict subject, entitlement, lineage, approve,
//!   issue via a `ca_backends::CaBackend`, record), the retirement sweeper
//!   and revocation content.
//! - [`registry`]: the stores (SQLite, DynamoDB, PostgreSQL) behind one trait.
//!
//! [`server`] assembles a running server from [`config`]; `main.rs` and
//! `cli/` are the operator commands.

pub mod authority;
pub mod config;
#[cfg(feature = "aws")]
pub mod cvm_import;
pub mod dev;
pub mod devices;
pub mod error;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod registry;
pub mod rotation;
pub mod secure_files;
pub mod server;
