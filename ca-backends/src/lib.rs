//! Certificate authority backends for the EST server.
//!
//! One async trait, [`CaBackend`], stands between the server's enrollment
//! path and whatever actually signs certificates. It knows nothing of HTTP:
//! errors are [`CaError`] kinds that the server maps to statuses.
//!
//! * [`local::LocalCa`] — a root + issuing CA held in files on this host,
//!   exposed per label through [`local::LocalCaBackend`] with a [`Profile`].
//!
//! Room is left for more (AWS IoT, an upstream EST server as RA, keys in a
//! PKCS#11 token) without touching the server.

#[cfg(feature = "aws")]
pub mod aws;
pub mod local;
pub mod ocsp;
pub mod profile;
pub mod signer;
mod x509;

use std::time::SystemTime;

use est_wire::csr::Csr;
use x509_cert::Certificate;

pub use profile::Profile;
pub use x509::time_ordered_serial;

/// A request to issue one certificate.
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    /// The verified certification request.
    pub csr: &'a Csr,
    /// The subject to issue: the CSR's, rebuilt by the server's subject
    /// policy from validated attributes. A backend that cannot choose the
    /// subject (it signs the CSR as sent) refuses when the two differ.
    pub subject: &'a x509_cert::name::Name,
    /// The certificate being renewed, when this is a re-enrollment.
    pub renewal_of: Option<&'a Certificate>,
    /// Where the certificate is bound, for backends that bind (AWS IoT things).
    pub binding: Option<&'a Binding>,
}

/// What a certificate is attached to in a platform (AWS IoT): the thing and,
/// optionally, a policy overriding the label's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Thing name (the device serial unless the registry says otherwise).
    pub thing_name: String,
    /// Policy name for this device, if it differs from the label's.
    pub policy: Option<String>,
}

/// A certificate the backend has issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate.
    pub certificate: Certificate,
    /// Its DER encoding.
    pub der: Vec<u8>,
    /// Serial number as lower-case hex without leading zeros.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// A backend-specific handle (an AWS certificate id, say), if any.
    pub backend_ref: Option<String>,
    /// The backend's resource name for it (an AWS certificate ARN), if any.
    pub backend_arn: Option<String>,
}

impl IssuedCertificate {
    /// Describes `certificate` as issued, with the backend's handle for it.
    pub fn from_certificate(
        certificate: Certificate,
        backend_ref: Option<String>,
    ) -> Result<Self, CaError> {
        use der::Encode;
        let der = certificate
            .to_der()
            .map_err(|e| CaError::Internal(e.to_string()))?;
        Ok(Self {
            serial_hex: serial_hex(&certificate),
            not_before: certificate
                .tbs_certificate
                .validity
                .not_before
                .to_system_time(),
            not_after: certificate
                .tbs_certificate
                .validity
                .not_after
                .to_system_time(),
            certificate,
            der,
            backend_ref,
            backend_arn: None,
        })
    }
}

/// Why a backend could not issue. Each kind maps to one EST answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    /// The request breaks the backend's policy; the text is for the client (400).
    #[error("{0}")]
    Rejected(String),
    /// The request was accepted but awaits a decision; ask again later (202).
    #[error("the request is pending; retry in {retry_after_secs} s")]
    Pending {
        /// Seconds the client should wait.
        retry_after_secs: u32,
    },
    /// The backend is temporarily unreachable (503); details are for the log only.
    #[error("CA backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else that went wrong inside the backend (500); for the log only.
    #[error("CA backend failure: {0}")]
    Internal(String),
}

/// A certificate authority that can serve one EST label.
#[async_trait::async_trait]
pub trait CaBackend: Send + Sync {
    /// Short name for logs (`local`, `aws-iot`, …).
    fn kind(&self) -> &'static str;

    /// The CA certificates served by `/cacerts`: issuing CA first, root last.
    async fn ca_certs(&self) -> Result<Vec<Certificate>, CaError>;

    /// Issues a certificate for a verified CSR.
    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCertificate, CaError>;

    /// Takes a certificate out of service for good: a superseded predecessor
    /// once its successor is proven, or a certificate created by a request
    /// that then failed (compensation). `backend_ref` is what `issue` returned.
    /// Backends whose certificates need no clean-up keep this default.
    async fn retire(&self, backend_ref: &str, binding: Option<&Binding>) -> Result<(), CaError> {
        let _ = (backend_ref, binding);
        Ok(())
    }

    /// Server-side key generation (`/serverkeygen`): makes a key pair, issues a
    /// certificate for it with the CSR's identity, and returns the private key
    /// as PKCS#8 DER. CAs that cannot generate keys keep this default.
    async fn issue_with_generated_key(
        &self,
        request: IssueRequest<'_>,
    ) -> Result<(IssuedCertificate, zeroize::Zeroizing<Vec<u8>>), CaError> {
        let _ = request;
        Err(CaError::Rejected(format!(
            "the {} CA behind this label does not generate keys",
            self.kind()
        )))
    }
}

/// Serial number bytes as lower-case hex without leading zero bytes.
pub fn serial_hex(certificate: &Certificate) -> String {
    hex_of(certificate.tbs_certificate.serial_number.as_bytes())
}

pub(crate) fn hex_of(bytes: &[u8]) -> String {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(first) => &bytes[first..],
        None => &bytes[bytes.len().saturating_sub(1)..],
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}
