//! Device-side EST (RFC 7030) client.
//!
//! * [`client::EstClient`] — `cacerts`, `csrattrs`, `simpleenroll`,
//!   `simplereenroll`, `serverkeygen` against one server and label;
//! * [`transport`] — TLS (explicit trust anchors only) and one HTTP/1.1 exchange;
//! * [`files`] — atomic writes, and installing a cert/key pair so that a crash
//!   leaves either the old or the new complete pair;
//! * [`policy`] — when a certificate is due for renewal (threshold / retry, as
//!   Azure IoT Edge's `auto_renew`);
//! * [`daemon`] — the renewal loop;
//! * [`mqtt`] — the MQTT rotation agent (server-driven rotation);
//! * [`verify`] — checking an issued certificate against the trust anchors.
//!
//! Wire formats (CSR, PKCS#7, base64) come from `est-wire`, shared with the server.

pub mod client;
pub mod daemon;
pub mod files;
pub mod mqtt;
pub mod policy;
pub mod transport;
pub mod verify;

pub use client::{ClientError, EstClient, EstClientConfig};
