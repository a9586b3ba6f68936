//! EST (RFC 7030) server for IoT fleets.
//!
//! The request path reads top to bottom: [`http`] (TLS, HTTP/1.1, limits,
//! media types) → [`router`] → [`enroll`] (authenticate via [`auth`],
//! parse, authorize, approve, issue via a `ca_backends::CaBackend`, record in
//! [`registry`]) → back to [`http`] to encode the answer.

pub mod auth;
pub mod config;
pub mod cvm;
pub mod dev;
pub mod devices;
pub mod enroll;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod header_case;
pub mod http;
pub mod registry;
pub mod retirement;
pub mod router;
pub mod server;
pub mod tls;
