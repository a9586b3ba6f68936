//! OCSP (RFC 6960) answers for a local CA.
//!
//! The server parses a request with [`OcspQuery::parse`], finds the CA its
//! first entry names ([`OcspQuery::names_issuer_of`]), looks up each serial
//! of that CA ([`OcspQuery::serials`]) and has [`LocalCa::ocsp_response`]
//! sign the statuses — with the issuing CA's key (a client then needs no
//! extra certificate: `openssl ocsp -issuer issuing.pem -VAfile issuing.pem`)
//! or with a [`DelegatedResponder`]: a short-lived certificate the issuing CA
//! gives an in-memory key (id-kp-OCSPSigning, id-pkix-ocsp-nocheck), sent
//! with every answer, so answers cost no HSM or KMS round trip.

use std::time::{Duration, SystemTime};

use der::asn1::{BitString, GeneralizedTime, OctetString};
use der::{Decode, Encode};
use x509_cert::ext::pkix::CrlReason;
use x509_ocsp::ext::Nonce;
use x509_ocsp::{
    BasicOcspResponse, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    OcspResponseStatus, ResponderId, ResponseBytes, ResponseData, RevokedInfo, SingleResponse,
    Version,
};

use crate::local::LocalCa;
use crate::CaError;

/// What the registry says about one serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Issued by this CA and not revoked.
    Good,
    /// Revoked at `at`, for `reason` (RFC 5280 CRLReason).
    Revoked {
        /// Revocation time.
        at: SystemTime,
        /// Why.
        reason: CrlReason,
    },
    /// Not known to this responder.
    Unknown,
}

/// A parsed OCSP request.
#[derive(Debug, Clone)]
pub struct OcspQuery {
    request: OcspRequest,
}

impl OcspQuery {
    /// Parses a DER `OCSPRequest`.
    pub fn parse(der: &[u8]) -> Result<Self, CaError> {
        let request = OcspRequest::from_der(der)
            .map_err(|e| CaError::Rejected(format!("not an OCSP request: {e}")))?;
        if request.tbs_request.request_list.is_empty() {
            return Err(CaError::Rejected(
                "the OCSP request asks about nothing".into(),
            ));
        }
        Ok(Self { request })
    }

    /// Whether the first certificate asked about names `ca`'s issuing CA
    /// (the responder answers for that CA; entries of others are unknown).
    pub fn names_issuer_of(&self, ca: &LocalCa) -> bool {
        self.request
            .tbs_request
            .request_list
            .first()
            .is_some_and(|single| names_issuer(ca, &single.req_cert))
    }

    /// The DER of the one CertID asked about when the answer may be reused
    /// for the same question (one entry, no nonce); `None` otherwise.
    pub fn cache_key(&self) -> Option<Vec<u8>> {
        let list = &self.request.tbs_request.request_list;
        if list.len() != 1 || self.request.nonce().is_some() {
            return None;
        }
        list[0].req_cert.to_der().ok()
    }

    /// For each certificate asked about, its serial (lower-case hex) when
    /// the CertID names `ca`'s issuing CA, `None` otherwise (then unknown).
    pub fn serials(&self, ca: &LocalCa) -> Vec<Option<String>> {
        self.request
            .tbs_request
            .request_list
            .iter()
            .map(|single| {
                let id = &single.req_cert;
                names_issuer(ca, id).then(|| crate::hex_of(id.serial_number.as_bytes()))
            })
            .collect()
    }
}

/// Whether `id`'s issuer name and key hashes are those of `ca`'s issuing
/// CA, in the hash the request chose (SHA-1, SHA-256, SHA-384).
fn names_issuer(ca: &LocalCa, id: &x509_ocsp::CertId) -> bool {
    use aws_lc_rs::digest;
    use const_oid::db::rfc5912;
    let algorithm = match id.hash_algorithm.oid {
        rfc5912::ID_SHA_1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        rfc5912::ID_SHA_256 => &digest::SHA256,
        rfc5912::ID_SHA_384 => &digest::SHA384,
        _ => return false,
    };
    let issuing = &ca.issuing().tbs_certificate;
    let Ok(name) = issuing.subject.to_der() else {
        return false;
    };
    let key = issuing
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    digest::digest(algorithm, &name).as_ref() == id.issuer_name_hash.as_bytes()
        && digest::digest(algorithm, key).as_ref() == id.issuer_key_hash.as_bytes()
}

/// A delegated OCSP signer: a key made in memory (never written anywhere)
/// and the certificate the issuing CA gave it.
#[derive(Debug)]
pub struct DelegatedResponder {
    key: crate::signer::file::FileSigner,
    certificate: x509_cert::Certificate,
}

impl DelegatedResponder {
    /// Makes a P-256 key and has `ca` certify it for OCSP signing for `validity`.
    pub async fn issue(ca: &LocalCa, validity: Duration) -> Result<Self, CaError> {
        let key = tokio::task::spawn_blocking(|| {
            est_wire::keys::SigningKey::generate(est_wire::keys::KeyAlgorithm::EcP256)
        })
        .await
        .map_err(|e| CaError::Internal(e.to_string()))?
        .map_err(|e| CaError::Internal(e.to_string()))?;
        let key = crate::signer::file::FileSigner::new(key, None);
        let certificate = ca.issue_ocsp_responder(&key, validity).await?;
        Ok(Self { key, certificate })
    }

    /// The responder's certificate.
    pub fn certificate(&self) -> &x509_cert::Certificate {
        &self.certificate
    }

    /// When its certificate ends.
    pub fn not_after(&self) -> SystemTime {
        self.certificate
            .tbs_certificate
            .validity
            .not_after
            .to_system_time()
    }
}

impl LocalCa {
    /// A signed, successful `OCSPResponse` (DER) giving `statuses` (one per
    /// request entry, in order), valid for `lifetime`, with the request's
    /// nonce echoed; signed by `delegated` (its certificate included) or,
    /// without one, by the issuing CA.
    pub async fn ocsp_response(
        &self,
        query: &OcspQuery,
        statuses: &[Status],
        lifetime: Duration,
        delegated: Option<&DelegatedResponder>,
    ) -> Result<Vec<u8>, CaError> {
        use crate::signer::Signer;
        let internal = |e: der::Error| CaError::Internal(e.to_string());
        let now = SystemTime::now();
        let time = |at: SystemTime| -> Result<OcspGeneralizedTime, CaError> {
            let since = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| CaError::Internal(e.to_string()))?;
            Ok(OcspGeneralizedTime(
                GeneralizedTime::from_unix_duration(Duration::from_secs(since.as_secs()))
                    .map_err(internal)?,
            ))
        };
        let responses = query
            .request
            .tbs_request
            .request_list
            .iter()
            .zip(statuses)
            .map(|(single, status)| {
                Ok(SingleResponse {
                    cert_id: single.req_cert.clone(),
                    cert_status: match status {
                        Status::Good => CertStatus::good(),
                        Status::Unknown => CertStatus::unknown(),
                        Status::Revoked { at, reason } => CertStatus::revoked(RevokedInfo {
                            revocation_time: time(*at)?,
                            revocation_reason: Some(*reason),
                        }),
                    },
                    this_update: time(now)?,
                    next_update: Some(time(now + lifetime)?),
                    single_extensions: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let response_extensions = match query.request.nonce() {
            Some(nonce) => Some(vec![x509_cert::ext::Extension {
                extn_id: <Nonce as const_oid::AssociatedOid>::OID,
                critical: false,
                extn_value: OctetString::new(nonce.to_der().map_err(internal)?)
                    .map_err(internal)?,
            }]),
            None => None,
        };
        let signer: &dyn Signer = match delegated {
            Some(responder) => &responder.key,
            None => self.signer().as_ref(),
        };
        let tbs_response_data = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(
                OctetString::new(crate::x509::key_identifier(&signer.public_key_info()))
                    .map_err(internal)?,
            ),
            produced_at: time(now)?,
            responses,
            response_extensions,
        };
        let signature = signer
            .sign(&tbs_response_data.to_der().map_err(internal)?)
            .await?;
        let basic = BasicOcspResponse {
            tbs_response_data,
            signature_algorithm: signer.signature_algorithm(),
            signature: BitString::from_bytes(&signature).map_err(internal)?,
            certs: delegated.map(|responder| vec![responder.certificate.clone()]),
        };
        OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: const_oid::db::rfc6960::ID_PKIX_OCSP_BASIC,
                response: OctetString::new(basic.to_der().map_err(internal)?).map_err(internal)?,
            }),
        }
        .to_der()
        .map_err(internal)
    }
}

/// An unsigned error answer (`malformedRequest`, `internalError`, `tryLater`).
pub fn ocsp_error(status: OcspResponseStatus) -> Vec<u8> {
    OcspResponse {
        response_status: status,
        response_bytes: None,
    }
    .to_der()
    .unwrap_or_default()
}
