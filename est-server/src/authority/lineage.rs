//! Lineages: which live certificate a new one replaces.
//!
//! A device identity may hold several live certificates at once (Azure IoT
//! Edge: its EST identity certificate, its device identity certificate and
//! its Edge CA). Each belongs to one **lineage**: the certificates of one
//! *owner* on one label with the same subject, the same SubjectAltNames and
//! the same *kind of request* — key algorithm, and the extended key usages,
//! basic constraints and key usages the CSR asked for. An issuance replaces
//! at most the live certificate of its own lineage, never one of another.
//!
//! The owner is the identity behind the first credential: `device:<id>` for
//! a registered device's token and for a bootstrap certificate (the id is its
//! common name), `cert:<serial>` for a certificate first obtained with a
//! Basic user (every such enrollment starts an identity of its own).
//! Certificates obtained by authenticating with an issued certificate
//! inherit its owner.

use der::Encode;
use est_wire::csr::{Csr, KeyKind};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::registry::CertificateRecord;

/// What kind of certificate a CSR asks for, as far as lineages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKind {
    /// The key's algorithm and size.
    pub key: KeyKind,
    /// The CSR asked for `CA:TRUE`.
    pub ca: bool,
    /// Requested extended key usages, dotted, sorted.
    pub extended_key_usage: Vec<String>,
    /// Requested key usage bits (the DER bit string's bits), 0 for none.
    pub key_usage: u16,
}

impl RequestKind {
    /// Reads the kind from a verified CSR's extension request. Extensions
    /// that cannot be decoded count as not requested.
    pub fn of(csr: &Csr) -> Self {
        use const_oid::db::rfc5280;
        use der::Decode;
        let mut kind = RequestKind {
            key: csr.key_kind(),
            ca: false,
            extended_key_usage: Vec::new(),
            key_usage: 0,
        };
        for extension in csr.requested_extensions() {
            let value = extension.extn_value.as_bytes();
            if extension.extn_id == rfc5280::ID_CE_BASIC_CONSTRAINTS {
                kind.ca = BasicConstraints::from_der(value).is_ok_and(|bc| bc.ca);
            } else if extension.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE {
                if let Ok(eku) = ExtendedKeyUsage::from_der(value) {
                    kind.extended_key_usage = eku.0.iter().map(|oid| oid.to_string()).collect();
                    kind.extended_key_usage.sort();
                    kind.extended_key_usage.dedup();
                }
            } else if extension.extn_id == rfc5280::ID_CE_KEY_USAGE {
                if let Ok(usage) = KeyUsage::from_der(value) {
                    kind.key_usage = usage.0.bits();
                }
            }
        }
        kind
    }

    /// Short text for logs and listings, e.g. `EC P-256 end-entity eku=1.3.6.1.5.5.7.3.2`.
    pub fn describe(&self) -> String {
        let mut text = format!("{} {}", self.key, if self.ca { "CA" } else { "end-entity" });
        if !self.extended_key_usage.is_empty() {
            text.push_str(&format!(" eku={}", self.extended_key_usage.join("+")));
        }
        if self.key_usage != 0 {
            text.push_str(&format!(" ku={:#x}", self.key_usage));
        }
        text
    }
}

/// The lineage key of a request: SHA-256 (hex) over the label, the issued
/// subject, the SubjectAltNames (in any order) and the request kind. Two
/// requests of one owner with the same key are renewals of one another.
pub fn lineage_key(
    label: &str,
    subject: &Name,
    sans: &[GeneralName],
    kind: &RequestKind,
) -> String {
    let mut input = Vec::new();
    let mut field = |bytes: &[u8]| {
        input.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        input.extend_from_slice(bytes);
    };
    field(b"lineage-v1");
    field(label.as_bytes());
    field(&subject.to_der().unwrap_or_default());
    let mut names: Vec<Vec<u8>> = sans.iter().filter_map(|n| n.to_der().ok()).collect();
    names.sort();
    for name in &names {
        field(name);
    }
    field(kind.describe().as_bytes());
    est_wire::sha256_hex(&input)
}

/// The owner of a registered device (by token or bootstrap certificate).
pub fn device_owner(device_id: &str) -> String {
    format!("device:{device_id}")
}

/// The owner a certificate starts when its first credential is a Basic user.
pub fn certificate_owner(serial: &str) -> String {
    format!("cert:{serial}")
}

/// The device id of a `device:` owner.
pub fn owner_device(owner: &str) -> Option<&str> {
    owner.strip_prefix("device:")
}

/// The owner of a recorded certificate. Certificates recorded before
/// lineages existed have none stored: theirs is their device's, or a
/// `cert:` owner of their own.
pub fn owner_of(record: &CertificateRecord) -> String {
    match (&record.certificate.owner, &record.certificate.device_id) {
        (Some(owner), _) => owner.clone(),
        (None, Some(device)) => device_owner(device),
        (None, None) => certificate_owner(&record.certificate.serial),
    }
}

/// Whether a certificate recorded before lineages existed (no lineage key
/// stored) is of the lineage a request asks for: same label, subject,
/// SubjectAltNames and key kind (what it asked for beyond that is unknown).
pub fn legacy_match(
    record: &CertificateRecord,
    certificate: &Certificate,
    label: &str,
    subject: &Name,
    sans: &[GeneralName],
    kind: &RequestKind,
) -> bool {
    if record.certificate.lineage.is_some() || record.certificate.label != label {
        return false;
    }
    let tbs = &certificate.tbs_certificate;
    let same_subject = tbs.subject.to_der().ok() == subject.to_der().ok()
        || tbs.subject.to_string() == subject.to_string();
    let same_key_kind =
        est_wire::csr::key_kind_of(&tbs.subject_public_key_info).is_ok_and(|k| k == kind.key);
    same_subject
        && same_key_kind
        && est_wire::names::same_names(&est_wire::names::certificate_sans(certificate), sans)
}
