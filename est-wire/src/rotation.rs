//! The MQTT rotation protocol shared by the server's orchestrator and the
//! device agent: topic names and JSON payloads.
//!
//! All topics live under `{prefix}/{clientId}/` (prefix `management/topic` by
//! default; the client id is the device certificate's common name):
//!
//! | topic       | direction       | payload                                         |
//! |-------------|-----------------|-------------------------------------------------|
//! | `csr_req`   | server → device | [`CsrRequest`] `{"serial", "notAfter"}`         |
//! | `csr_res`   | device → server | [`CsrResponse`] `{"CSR": "<PEM>", "serial"?}`   |
//! | `crt_res`   | server → device | [`CertificateResponse`] `{"certificatePem", "caPem"}` |
//! | `crt_ack`   | device → server | [`CertificateAck`] `{"serial"}`                 |
//! | `crt_err`   | device → server | [`CertificateError`] `{"error", "serial"?}`     |
//!
//! Every message is published with QoS 1.

use serde::{Deserialize, Serialize};

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "management/topic";

/// One step of the rotation exchange (the last topic segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Server asks the device for a CSR.
    CsrReq,
    /// Device answers with a CSR.
    CsrRes,
    /// Server sends the new certificate.
    CrtRes,
    /// Device reconnected with the new certificate.
    CrtAck,
    /// Device could not use the new certificate.
    CrtErr,
}

impl Step {
    /// The topic segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CsrReq => "csr_req",
            Self::CsrRes => "csr_res",
            Self::CrtRes => "crt_res",
            Self::CrtAck => "crt_ack",
            Self::CrtErr => "crt_err",
        }
    }

    fn parse(segment: &str) -> Option<Self> {
        Some(match segment {
            "csr_req" => Self::CsrReq,
            "csr_res" => Self::CsrRes,
            "crt_res" => Self::CrtRes,
            "crt_ack" => Self::CrtAck,
            "crt_err" => Self::CrtErr,
            _ => return None,
        })
    }
}

/// Topic names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// `{prefix}/{client_id}/{step}`.
    pub fn topic(&self, client_id: &str, step: Step) -> String {
        format!("{}/{}/{}", self.prefix, client_id, step.as_str())
    }

    /// The filter matching `step` for every client: `{prefix}/+/{step}`.
    pub fn all_clients(&self, step: Step) -> String {
        format!("{}/+/{}", self.prefix, step.as_str())
    }

    /// Splits a topic under this prefix into client id and step. Client ids
    /// with MQTT wildcards or separators are refused.
    pub fn parse<'t>(&self, topic: &'t str) -> Option<(&'t str, Step)> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (client_id, step) = rest.split_once('/')?;
        if !valid_client_id(client_id) {
            return None;
        }
        Some((client_id, Step::parse(step)?))
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

/// Whether `id` can be one topic level: not empty, no `/`, `+`, `#` or NUL.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '+', '#', '\0'])
}

/// `csr_req`: the server asks for a CSR to replace certificate `serial`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrRequest {
    /// Serial (lower-case hex) of the certificate to replace.
    pub serial: String,
    /// Its end of validity, RFC 3339.
    #[serde(rename = "notAfter")]
    pub not_after: String,
}

/// `csr_res`: the device's CSR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrResponse {
    /// PKCS#10 CSR, PEM.
    #[serde(rename = "CSR")]
    pub csr: String,
    /// Serial of the certificate the device replaces (optional; when
    /// present, an answer to an earlier rotation is recognised and ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// `crt_res`: the new certificate and its issuer chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The new certificate, PEM.
    #[serde(rename = "certificatePem")]
    pub certificate_pem: String,
    /// The issuing chain (issuing CA first), PEM.
    #[serde(rename = "caPem")]
    pub ca_pem: String,
}

/// `crt_ack`: the device is connected with the new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateAck {
    /// Serial (lower-case hex) of the certificate now in use.
    pub serial: String,
}

/// `crt_err`: the device could not use the new certificate and keeps the old.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateError {
    /// What went wrong, for the operator.
    pub error: String,
    /// Serial of the certificate the device keeps (optional, as in [`CsrResponse`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let topics = Topics::new("management/topic/");
        let t = topics.topic("SN-1", Step::CsrRes);
        assert_eq!(t, "management/topic/SN-1/csr_res");
        assert_eq!(topics.parse(&t), Some(("SN-1", Step::CsrRes)));
        assert_eq!(
            topics.all_clients(Step::CrtAck),
            "management/topic/+/crt_ack"
        );
    }

    #[test]
    fn foreign_and_malformed_topics_are_refused() {
        let topics = Topics::default();
        assert_eq!(topics.parse("other/SN-1/csr_res"), None);
        assert_eq!(topics.parse("management/topic/SN-1/csr_res/x"), None);
        assert_eq!(topics.parse("management/topic//csr_res"), None);
        assert_eq!(topics.parse("management/topic/SN-1/unknown"), None);
        assert_eq!(topics.parse("management/topicX/SN-1/csr_res"), None);
    }

    #[test]
    fn payloads_use_the_documented_field_names() {
        let json = serde_json::to_string(&CertificateResponse {
            certificate_pem: "c".into(),
            ca_pem: "a".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"certificatePem":"c","caPem":"a"}"#);
        let csr: CsrResponse = serde_json::from_str(r#"{"CSR":"pem"}"#).unwrap();
        assert_eq!(csr.csr, "pem");
        assert_eq!(csr.serial, None);
        let json = serde_json::to_string(&CertificateError {
            error: "no".into(),
            serial: Some("0a".into()),
        })
        .unwrap();
        assert_eq!(json, r#"{"error":"no","serial":"0a"}"#);
        let request: CsrRequest =
            serde_json::from_str(r#"{"serial":"0a","notAfter":"2027-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(request.serial, "0a");
    }
}
