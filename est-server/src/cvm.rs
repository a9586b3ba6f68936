//! The JSON façade for devices built against hand-rolled certificate vending
//! machines: `POST /cvm/v1/certificates` with `{"serial", "token", "csr"?}`.
//!
//! It is a translation layer only: the request becomes HTTP Basic
//! `serial:token` plus a CSR (the device's own, or — when it sent none — one
//! made here for `CN=<serial>` so that the server generates the key) and goes
//! through the same [`EnrollService`] as EST, with the same rules.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::auth::Credentials;
use crate::enroll::{EnrollRequest, EnrollService, Label};
use crate::error::EstError;
use crate::router::Operation;

/// The request body.
#[derive(Deserialize)]
pub struct CvmRequest {
    /// Device serial (registry id).
    pub serial: String,
    /// One-time enrollment token.
    pub token: Zeroizing<String>,
    /// PEM or base64 DER PKCS#10; absent: the server generates the key.
    #[serde(default)]
    pub csr: Option<String>,
}

/// The answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CvmResponse {
    /// The device certificate.
    pub certificate_pem: String,
    /// The backend's id (AWS certificate id) or the SHA-256 fingerprint.
    pub certificate_id: String,
    /// The CA chain devices should trust.
    pub ca_pem: String,
    /// The generated private key (PKCS#8), only when no CSR was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
}

/// Runs one façade request through the enrollment service.
pub async fn handle(
    service: &EnrollService,
    label: &Label,
    body: &[u8],
    peer: Option<std::net::IpAddr>,
    channel_binding: Option<[u8; 32]>,
) -> Result<CvmResponse, EstError> {
    use base64::Engine;
    let request: CvmRequest = serde_json::from_slice(body)
        .map_err(|e| EstError::BadRequest(format!("the JSON body is invalid: {e}")))?;
    let basic = Zeroizing::new(format!("{}:{}", request.serial, request.token.as_str()));
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(basic.as_bytes())
    );
    let (operation, csr_body) = match &request.csr {
        Some(csr) => (Operation::SimpleEnroll, csr.clone().into_bytes()),
        None => (Operation::ServerKeyGen, placeholder_csr(&request.serial)?),
    };
    let enrolled = service
        .enroll(EnrollRequest {
            label,
            operation,
            credentials: Credentials {
                authorization: Some(header.into_bytes()),
                client_certificate: None,
                peer,
            },
            body: &csr_body,
            channel_binding,
        })
        .await?;
    let chain = label.backend.ca_certs().await?;
    Ok(CvmResponse {
        certificate_pem: est_wire::pem::certificate_to_pem(&enrolled.certificate),
        certificate_id: enrolled.certificate_id,
        ca_pem: chain
            .iter()
            .map(est_wire::pem::certificate_to_pem)
            .collect(),
        private_key_pem: enrolled
            .private_key
            .map(|key| est_wire::pem::encode("PRIVATE KEY", &key)),
    })
}

/// A CSR for `CN=<serial>` signed by a throw-away key: it carries only the
/// identity when the server is to generate the key.
fn placeholder_csr(serial: &str) -> Result<Vec<u8>, EstError> {
    let key = est_wire::keys::SigningKey::generate(est_wire::keys::KeyAlgorithm::EcP256)
        .map_err(EstError::internal)?;
    let spec = est_wire::csr::CsrSpec {
        subject: ca_backends::local::parse_name(&format!("CN={}", escape(serial))).map_err(
            |_| EstError::BadRequest("the serial cannot be used as a common name".into()),
        )?,
        ..Default::default()
    };
    let der = est_wire::csr::build(&spec, &key).map_err(EstError::internal)?;
    Ok(est_wire::body::encode(&der).into_bytes())
}

fn escape(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| {
            let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#');
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}
