//! EST (RFC 7030) wire formats, shared by `est-server` and `est-client`.
//!
//! Everything a request or response body can contain lives here, so the two
//! ends of the protocol never carry their own copies:
//!
//! * [`body`] — base64 transfer bodies (lenient in, 64-column lines out, RFC 8951);
//! * [`csr`] — PKCS#10 certification requests: parse, verify the signature, check the key;
//! * [`pkcs7`] — CMS `SignedData` "certs-only" bundles (encode and decode);
//! * [`csrattrs`] — the `/csrattrs` response body;
//! * [`media`] — media types and the header values that go with them;
//! * [`pem`] — PEM helpers for certificates and keys;
//! * [`rotation`] — MQTT rotation topics and payloads (server orchestrator ↔ device agent).
//!
//! ASN.1 structures come from RustCrypto's derived types (`x509-cert`, `cms`);
//! nothing here is hand-encoded.

pub mod body;
pub mod csr;
pub mod csrattrs;
pub mod keys;
pub mod media;
pub mod multipart;
pub mod names;
pub mod pem;
pub mod pkcs7;
pub mod rotation;

pub use x509_cert::Certificate;

/// SHA-256 of `data`, as lower-case hex (certificate fingerprints, request ids).
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
