//! The JSON façades for devices built against certificate vending machines:
//! `POST /cvm/v1/certificates` with `{"serial", "token", "csr"?}`, and the
//! AWS reference vending machine's `GET`/`POST /getcert` with
//! `serialNumber` + `deviceToken` (+ `csr`) in the query string or a JSON
//! body, answered in the reference's JSON shape.
//!
//! Both are a translation layer only: the request becomes HTTP Basic
//! `serial:token` plus a CSR (the device's own, or — when it sent none — one
//! made here for `CN=<serial>` so that the server generates the key) and goes
//! through the same [`EnrollService`] as EST, with the same rules.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::authority::auth::Credentials;
use crate::authority::enroll::{EnrollRequest, EnrollService, Enrolled, Label};
use crate::error::EstError;
use crate::frontend::router::Operation;

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
    let request: CvmRequest = serde_json::from_slice(body)
        .map_err(|e| EstError::BadRequest(format!("the JSON body is invalid: {e}")))?;
    let device = DeviceRequest {
        serial: &request.serial,
        token: &request.token,
        csr: request.csr.as_deref(),
    };
    let enrolled = device.enroll(service, label, peer, channel_binding).await?;
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

/// The AWS reference vending machine's API (`GET`/`POST <getcert_path>`),
/// as configured.
#[derive(Debug, Clone)]
pub struct Getcert {
    /// The path, with any API Gateway stage prefix (`/Prod/getcert`).
    pub path: String,
    /// PEM answered as `RootCA`; `None`: the root of the label's chain.
    pub root_ca: Option<String>,
}

/// The reference's answer: the `CreateKeysAndCertificate` (or
/// `CreateCertificateFromCsr`) result plus `RootCA`, field for field.
#[derive(Serialize)]
pub struct GetcertResponse {
    /// The AWS certificate ARN (AWS IoT labels only).
    #[serde(rename = "certificateArn", skip_serializing_if = "Option::is_none")]
    pub certificate_arn: Option<String>,
    /// The AWS certificate id, or the SHA-256 fingerprint on the local CA.
    #[serde(rename = "certificateId")]
    pub certificate_id: String,
    /// The device certificate.
    #[serde(rename = "certificatePem")]
    pub certificate_pem: String,
    /// The generated key pair, only when the request carried no CSR.
    #[serde(rename = "keyPair", skip_serializing_if = "Option::is_none")]
    pub key_pair: Option<KeyPair>,
    /// What the device should trust for its MQTT endpoint.
    #[serde(rename = "RootCA")]
    pub root_ca: String,
}

/// A generated key pair, PEM.
#[derive(Serialize)]
pub struct KeyPair {
    /// `PUBLIC KEY` (SubjectPublicKeyInfo).
    #[serde(rename = "PublicKey")]
    pub public_key: String,
    /// `PRIVATE KEY` (PKCS#8).
    #[serde(rename = "PrivateKey")]
    pub private_key: Zeroizing<String>,
}

/// The reference's request fields, from a JSON body.
#[derive(Deserialize, Default)]
struct GetcertBody {
    #[serde(rename = "serialNumber")]
    serial_number: Option<String>,
    #[serde(rename = "deviceToken")]
    device_token: Option<Zeroizing<String>>,
    csr: Option<String>,
}

/// Runs one reference-API request (fields from the query string and/or a
/// JSON body) through the enrollment service.
pub async fn handle_getcert(
    service: &EnrollService,
    label: &Label,
    getcert: &Getcert,
    query: Option<&str>,
    body: &[u8],
    peer: Option<std::net::IpAddr>,
    channel_binding: Option<[u8; 32]>,
) -> Result<GetcertResponse, EstError> {
    let fields = getcert_fields(query, body)?;
    let (serial, token) = (&fields.serial_number, &fields.device_token);
    let device = DeviceRequest {
        serial,
        token,
        csr: fields.csr.as_deref(),
    };
    let enrolled = device.enroll(service, label, peer, channel_binding).await?;
    let root_ca = match &getcert.root_ca {
        Some(pem) => pem.clone(),
        None => label
            .backend
            .ca_certs()
            .await?
            .last()
            .map(est_wire::pem::certificate_to_pem)
            .unwrap_or_default(),
    };
    let key_pair = match enrolled.private_key {
        Some(key) => {
            use der::Encode;
            let spki = enrolled
                .certificate
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(EstError::internal)?;
            Some(KeyPair {
                public_key: est_wire::pem::encode("PUBLIC KEY", &spki),
                private_key: Zeroizing::new(est_wire::pem::encode("PRIVATE KEY", &key)),
            })
        }
        None => None,
    };
    Ok(GetcertResponse {
        certificate_arn: enrolled.certificate_arn,
        certificate_id: enrolled.certificate_id,
        certificate_pem: est_wire::pem::certificate_to_pem(&enrolled.certificate),
        key_pair,
        root_ca,
    })
}

/// A reference-API request's fields: a JSON body (if any) and the query
/// string, which must agree where both give a field.
fn getcert_fields(query: Option<&str>, body: &[u8]) -> Result<GetcertFields, EstError> {
    let mut fields = if body.iter().all(u8::is_ascii_whitespace) {
        GetcertBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| EstError::BadRequest(format!("the JSON body is invalid: {e}")))?
    };
    let mut token = fields.device_token.take().map(|t| t.to_string());
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match name.as_ref() {
            "serialNumber" => &mut fields.serial_number,
            "deviceToken" => &mut token,
            "csr" => &mut fields.csr,
            _ => continue,
        };
        merge(slot, value.into_owned(), &name)?;
    }
    let token = token.map(Zeroizing::new);
    let (Some(serial_number), Some(device_token)) = (fields.serial_number, token) else {
        return Err(EstError::BadRequest(
            "serialNumber and deviceToken are required (query string or JSON body)".into(),
        ));
    };
    if !crate::devices::is_valid_device_id(&serial_number) {
        return Err(EstError::BadRequest(
            "serialNumber must be 1-128 printable ASCII characters without `:` or `,`".into(),
        ));
    }
    Ok(GetcertFields {
        serial_number,
        device_token,
        csr: fields.csr,
    })
}

/// The fields of a well-formed reference-API request.
struct GetcertFields {
    serial_number: String,
    device_token: Zeroizing<String>,
    csr: Option<String>,
}

/// Sets a field from the query string; the same field with another value
/// in the body is refused rather than guessed between.
fn merge(slot: &mut Option<String>, value: String, name: &str) -> Result<(), EstError> {
    match slot {
        Some(existing) if *existing != value => Err(EstError::BadRequest(format!(
            "{name} is given twice with different values"
        ))),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// A device's serial, token and optional CSR, in either façade's terms.
struct DeviceRequest<'a> {
    serial: &'a str,
    token: &'a str,
    csr: Option<&'a str>,
}

impl DeviceRequest<'_> {
    /// HTTP Basic `serial:token` plus the device's CSR (or, without one, a
    /// placeholder CSR for `CN=<serial>` so that the server generates the
    /// key) through the enrollment service.
    async fn enroll(
        &self,
        service: &EnrollService,
        label: &Label,
        peer: Option<std::net::IpAddr>,
        channel_binding: Option<[u8; 32]>,
    ) -> Result<Enrolled, EstError> {
        use base64::Engine;
        let basic = Zeroizing::new(format!("{}:{}", self.serial, self.token));
        let header = Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(basic.as_bytes())
        ));
        let (operation, csr_body) = match self.csr {
            Some(csr) => (Operation::SimpleEnroll, csr.as_bytes().to_vec()),
            None => (Operation::ServerKeyGen, placeholder_csr(self.serial)?),
        };
        service
            .enroll(EnrollRequest {
                label,
                operation,
                credentials: Credentials {
                    authorization: Some(header.as_bytes().to_vec()),
                    client_certificate: None,
                    peer,
                },
                body: &csr_body,
                channel_binding,
            })
            .await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: Option<&str>, body: &str) -> String {
        match getcert_fields(query, body.as_bytes()) {
            Err(EstError::BadRequest(text)) => text,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted {query:?} {body}"),
        }
    }

    #[test]
    fn fields_from_the_query_or_the_body() {
        let f = getcert_fields(Some("serialNumber=SN-1&deviceToken=a%2Bb+c&x=1"), b"").unwrap();
        assert_eq!(f.serial_number, "SN-1");
        assert_eq!(f.device_token.as_str(), "a+b c");
        assert!(f.csr.is_none());
        let body = r#"{"serialNumber": "SN-2", "deviceToken": "t", "csr": "PEM"}"#;
        let f = getcert_fields(None, body.as_bytes()).unwrap();
        assert_eq!(
            (f.serial_number.as_str(), f.csr.as_deref()),
            ("SN-2", Some("PEM"))
        );
        // Both, agreeing: fine.
        let f = getcert_fields(Some("serialNumber=SN-2"), body.as_bytes()).unwrap();
        assert_eq!(f.device_token.as_str(), "t");
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(refused(Some("serialNumber=SN-1"), "").contains("deviceToken"));
        assert!(refused(None, "").contains("required"));
        assert!(refused(None, "{not json").contains("JSON"));
        assert!(refused(Some("serialNumber=a%3Ab&deviceToken=t"), "").contains("serialNumber"));
        let body = r#"{"serialNumber": "SN-2", "deviceToken": "t"}"#;
        assert!(refused(Some("deviceToken=other"), body).contains("twice"));
    }
}
