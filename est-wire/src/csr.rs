//! PKCS#10 certification requests (RFC 2986): parse, verify, inspect.
//!
//! [`Csr::from_der`] accepts a request only when it is well-formed DER with
//! nothing trailing, its key is EC P-256/P-384 or RSA 2048–4096, its
//! signature verifies with that key, and its subject holds printable text.
//! Every refusal is a [`CsrError`] whose message says what was wrong, so the
//! server can pass it on to the client verbatim.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::db::{rfc4519, rfc5912};
use const_oid::ObjectIdentifier;
use der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use der::{Decode, Encode, Tag, Tagged};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, ExtensionReq};

/// The most SubjectAltName entries a request may carry.
pub const MAX_SUBJECT_ALT_NAMES: usize = 100;

/// OID of the PKCS#9 `challengePassword` attribute (RFC 2985 §5.4.1).
pub const CHALLENGE_PASSWORD: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7");

/// The kind and size of a request's public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// NIST P-256 (secp256r1).
    EcP256,
    /// NIST P-384 (secp384r1).
    EcP384,
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus length in bits.
        bits: usize,
    },
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::EcP256 => f.write_str("EC P-256"),
            KeyKind::EcP384 => f.write_str("EC P-384"),
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// Why a certification request was refused. The message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not DER, truncated, or followed by extra bytes.
    #[error("the CSR is not a well-formed DER PKCS#10 request: {0}")]
    Malformed(String),
    /// Only version 1 (value 0) exists.
    #[error("the CSR has version {0}; only version 1 is defined")]
    BadVersion(u8),
    /// A key algorithm or curve this server does not issue for.
    #[error(
        "the CSR's key is {0}, which is not accepted; use EC P-256, EC P-384 or RSA 2048-4096"
    )]
    UnsupportedKey(String),
    /// RSA outside 2048–4096 bits.
    #[error("the CSR's RSA key has {0} bits; RSA keys must have 2048 to 4096 bits")]
    RsaKeySize(usize),
    /// A signature algorithm this server does not verify.
    #[error("the CSR is signed with {0}, which is not accepted; use ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512")]
    UnsupportedSignature(String),
    /// The signature does not verify with the request's own key.
    #[error(
        "the CSR's signature does not verify with its public key (proof of possession failed)"
    )]
    BadSignature,
    /// A subject attribute that is not printable text.
    #[error("the CSR's subject {0}")]
    BadSubject(String),
    /// The extension request or SubjectAltName cannot be read, or has too many names.
    #[error("the CSR's requested extensions are invalid: {0}")]
    BadExtensions(String),
}

/// A verified PKCS#10 certification request.
#[derive(Debug, Clone)]
pub struct Csr {
    der: Vec<u8>,
    request: CertReq,
    key_kind: KeyKind,
    requested_extensions: Vec<Extension>,
    subject_alt_names: Vec<GeneralName>,
    challenge_password: Option<String>,
}

impl Csr {
    /// Parses `der`, verifies its signature and checks its key and subject.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let request = CertReq::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
        let version = request.info.version as u8;
        if version != 0 {
            return Err(CsrError::BadVersion(version + 1));
        }
        let key_kind = key_kind(&request.info.public_key)?;
        verify_signature(&request, key_kind)?;
        check_subject(&request.info.subject)?;
        let requested_extensions = requested_extensions(&request)?;
        let subject_alt_names = subject_alt_names(&requested_extensions)?;
        let challenge_password = challenge_password(&request)?;
        Ok(Csr {
            der: der.to_vec(),
            request,
            key_kind,
            requested_extensions,
            subject_alt_names,
            challenge_password,
        })
    }

    /// The request exactly as received.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The requested subject name.
    pub fn subject(&self) -> &Name {
        &self.request.info.subject
    }

    /// The first common name (CN) of the subject, if any.
    pub fn common_name(&self) -> Option<String> {
        common_name(self.subject())
    }

    /// The public key to certify.
    pub fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        &self.request.info.public_key
    }

    /// The kind and size of the public key.
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// Extensions asked for in the `extensionRequest` attribute (the CA decides which it honours).
    pub fn requested_extensions(&self) -> &[Extension] {
        &self.requested_extensions
    }

    /// SubjectAltName entries asked for, in request order.
    pub fn subject_alt_names(&self) -> &[GeneralName] {
        &self.subject_alt_names
    }

    /// The `challengePassword` attribute, when present (RFC 7030 §3.5 channel binding).
    pub fn challenge_password(&self) -> Option<&str> {
        self.challenge_password.as_deref()
    }
}

/// The first common name in `name`, decoded as text.
pub fn common_name(name: &Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == rfc4519::COMMON_NAME)
        .and_then(|atv| attribute_text(&atv.value))
}

/// Decodes a directory-string attribute value as text, or `None` when it is not a string type.
pub fn attribute_text(value: &der::Any) -> Option<String> {
    let text = match value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(value).ok()?.as_str().to_owned(),
        Tag::PrintableString => PrintableStringRef::try_from(value)
            .ok()?
            .as_str()
            .to_owned(),
        Tag::Ia5String => Ia5StringRef::try_from(value).ok()?.as_str().to_owned(),
        Tag::TeletexString => TeletexStringRef::try_from(value).ok()?.as_str().to_owned(),
        _ => return None,
    };
    Some(text)
}

/// The kind of a public key (also for certificates), or why it is not accepted.
pub fn key_kind_of(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyKind, CsrError> {
    key_kind(spki)
}

fn key_kind(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyKind, CsrError> {
    let algorithm = spki.algorithm.oid;
    if algorithm == rfc5912::ID_EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC without a named curve".into()))?;
        return match curve {
            rfc5912::SECP_256_R_1 => Ok(KeyKind::EcP256),
            rfc5912::SECP_384_R_1 => Ok(KeyKind::EcP384),
            other => Err(CsrError::UnsupportedKey(format!(
                "EC on curve {}",
                oid_name(&other)
            ))),
        };
    }
    if algorithm == rfc5912::RSA_ENCRYPTION {
        let key = pkcs1::RsaPublicKey::from_der(spki.subject_public_key.raw_bytes())
            .map_err(|e| CsrError::Malformed(format!("RSA public key: {e}")))?;
        let modulus = key.modulus.as_bytes();
        let bits = match modulus.first() {
            Some(first) => modulus.len() * 8 - first.leading_zeros() as usize,
            None => 0,
        };
        if !(2048..=4096).contains(&bits) {
            return Err(CsrError::RsaKeySize(bits));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    Err(CsrError::UnsupportedKey(oid_name(&algorithm)))
}

fn verify_signature(request: &CertReq, key_kind: KeyKind) -> Result<(), CsrError> {
    let algorithm = request.algorithm.oid;
    let verifier: &'static dyn VerificationAlgorithm = match (key_kind, algorithm) {
        (KeyKind::EcP256, rfc5912::ECDSA_WITH_SHA_256) => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyKind::EcP256, rfc5912::ECDSA_WITH_SHA_384) => &signature::ECDSA_P256_SHA384_ASN1,
        (KeyKind::EcP256, rfc5912::ECDSA_WITH_SHA_512) => &signature::ECDSA_P256_SHA512_ASN1,
        (KeyKind::EcP384, rfc5912::ECDSA_WITH_SHA_256) => &signature::ECDSA_P384_SHA256_ASN1,
        (KeyKind::EcP384, rfc5912::ECDSA_WITH_SHA_384) => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyKind::EcP384, rfc5912::ECDSA_WITH_SHA_512) => &signature::ECDSA_P384_SHA512_ASN1,
        (KeyKind::Rsa { .. }, rfc5912::SHA_256_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (KeyKind::Rsa { .. }, rfc5912::SHA_384_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (KeyKind::Rsa { .. }, rfc5912::SHA_512_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        (kind, other) => {
            return Err(CsrError::UnsupportedSignature(format!(
                "{} for a {kind} key",
                oid_name(&other)
            )))
        }
    };
    let signed = request
        .info
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let signature_bytes = request
        .signature
        .as_bytes()
        .ok_or_else(|| CsrError::Malformed("signature has unused bits".into()))?;
    let key_bytes = request.info.public_key.subject_public_key.raw_bytes();
    UnparsedPublicKey::new(verifier, key_bytes)
        .verify(&signed, signature_bytes)
        .map_err(|_| CsrError::BadSignature)
}

fn check_subject(subject: &Name) -> Result<(), CsrError> {
    for atv in subject.0.iter().flat_map(|rdn| rdn.0.iter()) {
        let is_string = matches!(
            atv.value.tag(),
            Tag::Utf8String
                | Tag::PrintableString
                | Tag::Ia5String
                | Tag::TeletexString
                | Tag::BmpString
                | Tag::VisibleString
        );
        if !is_string {
            continue;
        }
        let Some(text) = attribute_text(&atv.value) else {
            return Err(CsrError::BadSubject(format!(
                "attribute {} is not valid text for its string type",
                oid_name(&atv.oid)
            )));
        };
        if text.chars().any(|c| c.is_control()) {
            return Err(CsrError::BadSubject(format!(
                "attribute {} contains a NUL or control character",
                oid_name(&atv.oid)
            )));
        }
    }
    Ok(())
}

fn requested_extensions(request: &CertReq) -> Result<Vec<Extension>, CsrError> {
    let mut extensions = Vec::new();
    for attribute in request
        .info
        .attributes
        .iter()
        .filter(|a| a.oid == rfc5912::ID_EXTENSION_REQ)
    {
        for value in attribute.values.iter() {
            let encoded = value
                .to_der()
                .map_err(|e| CsrError::BadExtensions(e.to_string()))?;
            let request = ExtensionReq::from_der(&encoded)
                .map_err(|e| CsrError::BadExtensions(e.to_string()))?;
            extensions.extend(request.0);
        }
    }
    Ok(extensions)
}

fn subject_alt_names(extensions: &[Extension]) -> Result<Vec<GeneralName>, CsrError> {
    let mut names = Vec::new();
    for extension in extensions
        .iter()
        .filter(|e| e.extn_id == rfc5912::ID_CE_SUBJECT_ALT_NAME)
    {
        let san = SubjectAltName::from_der(extension.extn_value.as_bytes())
            .map_err(|e| CsrError::BadExtensions(format!("subjectAltName: {e}")))?;
        names.extend(san.0);
    }
    if names.len() > MAX_SUBJECT_ALT_NAMES {
        return Err(CsrError::BadExtensions(format!(
            "{} subjectAltName entries (at most {MAX_SUBJECT_ALT_NAMES} are accepted)",
            names.len()
        )));
    }
    Ok(names)
}

fn challenge_password(request: &CertReq) -> Result<Option<String>, CsrError> {
    let Some(attribute) = request
        .info
        .attributes
        .iter()
        .find(|a| a.oid == CHALLENGE_PASSWORD)
    else {
        return Ok(None);
    };
    let value = attribute
        .values
        .iter()
        .next()
        .ok_or_else(|| CsrError::Malformed("challengePassword without a value".into()))?;
    attribute_text(value)
        .map(Some)
        .ok_or_else(|| CsrError::Malformed("challengePassword is not a string".into()))
}

/// What to put in a new certification request.
#[derive(Debug, Clone, Default)]
pub struct CsrSpec {
    /// Subject name.
    pub subject: Name,
    /// SubjectAltName entries (none: no extension).
    pub subject_alt_names: Vec<GeneralName>,
    /// Further extensions to request.
    pub extensions: Vec<Extension>,
    /// `challengePassword` attribute (RFC 7030 §3.5 channel binding).
    pub challenge_password: Option<String>,
}

/// Builds and signs a PKCS#10 request with `key`; returns its DER.
pub fn build(spec: &CsrSpec, key: &crate::keys::SigningKey) -> Result<Vec<u8>, der::Error> {
    use der::asn1::{BitString, SetOfVec};
    use x509_cert::attr::Attribute;
    use x509_cert::request::{CertReqInfo, Version};

    let mut extensions = spec.extensions.clone();
    if !spec.subject_alt_names.is_empty() {
        extensions.push(Extension {
            extn_id: rfc5912::ID_CE_SUBJECT_ALT_NAME,
            critical: false,
            extn_value: der::asn1::OctetString::new(
                SubjectAltName(spec.subject_alt_names.clone()).to_der()?,
            )?,
        });
    }
    let mut attributes = SetOfVec::new();
    if !extensions.is_empty() {
        attributes.insert(Attribute::try_from(ExtensionReq(extensions))?)?;
    }
    if let Some(password) = &spec.challenge_password {
        let value = der::Any::encode_from(&der::asn1::Utf8StringRef::new(password)?)?;
        attributes.insert(Attribute {
            oid: CHALLENGE_PASSWORD,
            values: SetOfVec::try_from(vec![value])?,
        })?;
    }
    let info = CertReqInfo {
        version: Version::V1,
        subject: spec.subject.clone(),
        public_key: key.public_key_info(),
        attributes,
    };
    let signature = key
        .sign(&info.to_der()?)
        .map_err(|_| der::Error::from(der::ErrorKind::Failed))?;
    CertReq {
        info,
        algorithm: key.signature_algorithm(),
        signature: BitString::from_bytes(&signature)?,
    }
    .to_der()
}

/// A readable name for an OID: its registered name when known, else dotted decimal.
pub fn oid_name(oid: &ObjectIdentifier) -> String {
    const_oid::db::DB
        .by_oid(oid)
        .map(|name| format!("{name} ({oid})"))
        .or_else(|| well_known_oid(oid).map(|name| format!("{name} ({oid})")))
        .unwrap_or_else(|| oid.to_string())
}

fn well_known_oid(oid: &ObjectIdentifier) -> Option<&'static str> {
    match oid.to_string().as_str() {
        "1.3.132.0.10" => Some("secp256k1"),
        "1.3.132.0.35" => Some("secp521r1"),
        "1.3.36.3.3.2.8.1.1.7" => Some("brainpoolP256r1"),
        "1.2.840.113549.1.9.7" => Some("challengePassword"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn accepts_openssl_p256_with_sans() {
        let csr = Csr::from_der(&vector("p256.csr.der")).unwrap();
        assert_eq!(csr.key_kind(), KeyKind::EcP256);
        assert_eq!(csr.common_name().as_deref(), Some("device-p256"));
        assert_eq!(csr.subject_alt_names().len(), 3);
        assert!(csr.challenge_password().is_none());
    }

    #[test]
    fn accepts_p384_and_rsa_2048_and_4096() {
        assert_eq!(
            Csr::from_der(&vector("p384.csr.der")).unwrap().key_kind(),
            KeyKind::EcP384
        );
        assert_eq!(
            Csr::from_der(&vector("rsa2048.csr.der"))
                .unwrap()
                .key_kind(),
            KeyKind::Rsa { bits: 2048 }
        );
        assert_eq!(
            Csr::from_der(&vector("rsa4096.csr.der"))
                .unwrap()
                .key_kind(),
            KeyKind::Rsa { bits: 4096 }
        );
    }

    #[test]
    fn rejects_weak_and_unsupported_keys_with_reasons() {
        let err = Csr::from_der(&vector("rsa1024.csr.der")).unwrap_err();
        assert_eq!(err, CsrError::RsaKeySize(1024));
        assert!(err.to_string().contains("2048 to 4096"));

        let err = Csr::from_der(&vector("secp256k1.csr.der")).unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err}");
        assert!(err.to_string().contains("secp256k1"), "{err}");

        let err = Csr::from_der(&vector("ed25519.csr.der")).unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err}");
    }

    #[test]
    fn rejects_a_bad_signature() {
        let mut der = vector("p256.csr.der");
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(Csr::from_der(&der).unwrap_err(), CsrError::BadSignature);
    }

    #[test]
    fn rejects_a_tampered_subject() {
        let mut der = vector("rsa2048.csr.der");
        let at = der
            .windows(6)
            .position(|w| w == b"device")
            .expect("CN in vector");
        der[at] = b'D';
        assert_eq!(Csr::from_der(&der).unwrap_err(), CsrError::BadSignature);
    }

    #[test]
    fn rejects_truncation_and_trailing_garbage() {
        let der = vector("p256.csr.der");
        assert!(matches!(
            Csr::from_der(&der[..der.len() - 1]),
            Err(CsrError::Malformed(_))
        ));
        let mut longer = der.clone();
        longer.push(0);
        assert!(matches!(
            Csr::from_der(&longer),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(Csr::from_der(b""), Err(CsrError::Malformed(_))));
    }

    fn name_with_raw_cn(tag: Tag, value: &[u8]) -> Name {
        use der::asn1::SetOfVec;
        use x509_cert::attr::AttributeTypeAndValue;
        use x509_cert::name::RelativeDistinguishedName;
        let atv = AttributeTypeAndValue {
            oid: rfc4519::COMMON_NAME,
            value: der::Any::new(tag, value.to_vec()).unwrap(),
        };
        x509_cert::name::RdnSequence(vec![RelativeDistinguishedName(
            SetOfVec::try_from(vec![atv]).unwrap(),
        )])
    }

    #[test]
    fn built_requests_verify_and_carry_what_was_asked() {
        use der::asn1::Ia5String;
        let key = crate::keys::SigningKey::generate(crate::keys::KeyAlgorithm::EcP256).unwrap();
        let spec = CsrSpec {
            subject: "CN=built,O=Example".parse().unwrap(),
            subject_alt_names: vec![GeneralName::DnsName(
                Ia5String::new("built.example").unwrap(),
            )],
            extensions: vec![],
            challenge_password: Some("binding-value".into()),
        };
        let csr = Csr::from_der(&build(&spec, &key).unwrap()).unwrap();
        assert_eq!(csr.common_name().as_deref(), Some("built"));
        assert_eq!(csr.subject_alt_names().len(), 1);
        assert_eq!(csr.challenge_password(), Some("binding-value"));
        assert_eq!(csr.public_key(), &key.public_key_info());
    }

    #[test]
    fn rejects_nul_and_invalid_utf8_in_the_subject_even_when_signed() {
        let key = crate::keys::SigningKey::generate(crate::keys::KeyAlgorithm::EcP256).unwrap();
        for (tag, value, why) in [
            (Tag::Utf8String, &b"evil\x00.example.com"[..], "control"),
            (Tag::Utf8String, &b"\xff\xfe"[..], "not valid text"),
            (Tag::PrintableString, &b"a\x01b"[..], "not valid text"),
        ] {
            let spec = CsrSpec {
                subject: name_with_raw_cn(tag, value),
                ..CsrSpec::default()
            };
            let der = build(&spec, &key).unwrap();
            let err = Csr::from_der(&der).unwrap_err();
            assert!(matches!(err, CsrError::BadSubject(_)), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn exposes_requested_ca_extension_without_honouring_it() {
        let csr = Csr::from_der(&vector("p256-ca-request.csr.der")).unwrap();
        assert!(csr
            .requested_extensions()
            .iter()
            .any(|e| e.extn_id == rfc5912::ID_CE_BASIC_CONSTRAINTS));
    }
}
