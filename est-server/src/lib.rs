//! EST (RFC 7030) server for IoT fleets.
//!
//! The request path reads top to bottom: [`http`] (TLS, HTTP/1.1, limits,
//! media types) → [`router`] → [`enroll`] (authenticate via [`auth`],
//! parse, authorize, approve, issue via a `ca_backends::CaBackend`, record in
//! [`registry`]) → back to [`http`] to encode the answer. Beside it:
//! [`rotation`] (server-driven rotation over MQTT, through the same
//! enrollment service), [`retirement`] (the sweeper) and [`metrics`]
//! (Prometheus series and the admin listener). [`listener`] holds what both
//! listeners use against hostile clients: accept back-off, the per-address
//! cap and the write timeout.

pub mod auth;
pub mod authority;
pub mod config;
pub mod cvm;
#[cfg(feature = "aws")]
pub mod cvm_import;
pub mod dev;
pub mod devices;
pub mod enroll;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod header_case;
pub mod http;
pub mod keyed_locks;
pub mod listener;
pub mod metrics;
pub mod ocsp;
pub mod password;
pub mod registry;
pub mod retirement;
pub mod rotation;
pub mod router;
pub mod server;
pub mod tls;
