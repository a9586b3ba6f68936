//! Building and signing X.509 certificates from derived RustCrypto types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use const_oid::AssociatedOid;
use der::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use der::Encode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use crate::signer::Signer;
use crate::CaError;

/// What goes into one certificate, before signing.
pub(crate) struct CertificateSpec<'a> {
    pub subject: Name,
    pub public_key: SubjectPublicKeyInfoOwned,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key_usage: flagset::FlagSet<KeyUsages>,
    pub extended_key_usage: Vec<const_oid::ObjectIdentifier>,
    pub subject_alt_names: Vec<GeneralName>,
    /// `Some(path_len)` for a CA certificate.
    pub ca_path_len: Option<Option<u8>>,
    pub issuer: &'a Name,
    /// `None` for a self-signed certificate (the key identifier is then the subject's own).
    pub issuer_key_id: Option<&'a [u8]>,
    /// Further extensions (AIA, CRL distribution point, OCSP no-check).
    pub extra_extensions: Vec<Extension>,
}

/// Where relying parties find a certificate's status: the OCSP responder
/// (Authority Information Access) and the CRL (CRL distribution point).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusUrls {
    /// `http://…/ocsp`, written into issued certificates' AIA extension.
    pub ocsp: Option<String>,
    /// `http://…/crl`, written into their CRL distribution points.
    pub crl: Option<String>,
}

impl StatusUrls {
    /// The AIA and CRL distribution point extensions for these URLs.
    pub(crate) fn extensions(&self) -> Result<Vec<Extension>, CaError> {
        use x509_cert::ext::pkix::crl::dp::DistributionPoint;
        use x509_cert::ext::pkix::name::DistributionPointName;
        use x509_cert::ext::pkix::{
            AccessDescription, AuthorityInfoAccessSyntax, CrlDistributionPoints,
        };
        let uri = |url: &str| -> Result<GeneralName, CaError> {
            Ok(GeneralName::UniformResourceIdentifier(
                der::asn1::Ia5String::new(url).map_err(internal)?,
            ))
        };
        let mut extensions = Vec::new();
        if let Some(url) = &self.ocsp {
            extensions.push(extension(
                &AuthorityInfoAccessSyntax(vec![AccessDescription {
                    access_method: const_oid::db::rfc5280::ID_AD_OCSP,
                    access_location: uri(url)?,
                }]),
                false,
            )?);
        }
        if let Some(url) = &self.crl {
            extensions.push(extension(
                &CrlDistributionPoints(vec![DistributionPoint {
                    distribution_point: Some(DistributionPointName::FullName(vec![uri(url)?])),
                    reasons: None,
                    crl_issuer: None,
                }]),
                false,
            )?);
        }
        Ok(extensions)
    }
}

/// RFC 6960 §4.2.2.2.1 `id-pkix-ocsp-nocheck` (value NULL): a delegated
/// OCSP responder's own certificate is not checked for revocation.
pub(crate) fn ocsp_nocheck() -> Result<Extension, CaError> {
    Ok(Extension {
        extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NOCHECK,
        critical: false,
        extn_value: octets(der::asn1::Null.to_der().map_err(internal)?)?,
    })
}

/// Builds the certificate described by `spec` and signs it with `signer`.
pub(crate) async fn build_and_sign(
    spec: CertificateSpec<'_>,
    signer: &dyn Signer,
) -> Result<Certificate, CaError> {
    let subject_key_id = key_identifier(&spec.public_key);
    let authority_key_id = spec.issuer_key_id.unwrap_or(&subject_key_id).to_vec();

    let mut extensions = Vec::new();
    let basic_constraints = match spec.ca_path_len {
        Some(path_len_constraint) => BasicConstraints {
            ca: true,
            path_len_constraint,
        },
        None => BasicConstraints {
            ca: false,
            path_len_constraint: None,
        },
    };
    extensions.push(extension(&basic_constraints, true)?);
    extensions.push(extension(&KeyUsage(spec.key_usage), true)?);
    if !spec.extended_key_usage.is_empty() {
        extensions.push(extension(
            &ExtendedKeyUsage(spec.extended_key_usage.clone()),
            false,
        )?);
    }
    if !spec.subject_alt_names.is_empty() {
        // RFC 5280 §4.2.1.6: critical when the subject is empty.
        let critical = spec.subject.0.is_empty();
        extensions.push(extension(
            &SubjectAltName(spec.subject_alt_names.clone()),
            critical,
        )?);
    }
    extensions.extend(spec.extra_extensions.iter().cloned());
    extensions.push(extension(
        &SubjectKeyIdentifier(octets(subject_key_id)?),
        false,
    )?);
    extensions.push(extension(
        &AuthorityKeyIdentifier {
            key_identifier: Some(octets(authority_key_id)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
        false,
    )?);

    let tbs_certificate = TbsCertificate {
        version: Version::V3,
        serial_number: new_serial()?,
        signature: signer.signature_algorithm(),
        issuer: spec.issuer.clone(),
        validity: Validity {
            not_before: x509_time(spec.not_before)?,
            not_after: x509_time(spec.not_after)?,
        },
        subject: spec.subject,
        subject_public_key_info: spec.public_key,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs_certificate.to_der().map_err(internal)?;
    let signature = signer.sign(&tbs_der).await?;
    Ok(Certificate {
        tbs_certificate,
        signature_algorithm: signer.signature_algorithm(),
        signature: BitString::from_bytes(&signature).map_err(internal)?,
    })
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
pub(crate) fn key_identifier(public_key: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        public_key.subject_public_key.raw_bytes(),
    );
    digest.as_ref().to_vec()
}

/// A positive 16-byte serial number: the issue time in milliseconds (6 bytes,
/// so the first byte is non-zero since 2004 and the top bit clear until the
/// year 6429) followed by 80 random bits.
///
/// The random part keeps serials unguessable (CA/Browser Forum: at least 64
/// bits from a CSPRNG); the time prefix makes each new serial sort after the
/// ones issued before it, so a registry indexed by serial appends to the end
/// of its index instead of dirtying a random page for every certificate.
pub fn time_ordered_serial(issued_at: SystemTime) -> Result<Vec<u8>, CaError> {
    let millis = issued_at
        .duration_since(UNIX_EPOCH)
        .map_err(internal)?
        .as_millis() as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    aws_lc_rs::rand::fill(&mut bytes[6..])
        .map_err(|_| CaError::Internal("no randomness".into()))?;
    Ok(bytes.to_vec())
}

fn new_serial() -> Result<SerialNumber, CaError> {
    SerialNumber::new(&time_ordered_serial(SystemTime::now())?).map_err(internal)
}

/// UTCTime until 2049, GeneralizedTime from 2050 on (RFC 5280 §4.1.2.5).
fn x509_time(at: SystemTime) -> Result<Time, CaError> {
    const YEAR_2050: Duration = Duration::from_secs(2_524_608_000);
    let since_epoch = at.duration_since(UNIX_EPOCH).map_err(internal)?;
    let whole_seconds = Duration::from_secs(since_epoch.as_secs());
    if whole_seconds < YEAR_2050 {
        Ok(Time::UtcTime(
            UtcTime::from_unix_duration(whole_seconds).map_err(internal)?,
        ))
    } else {
        Ok(Time::GeneralTime(
            GeneralizedTime::from_unix_duration(whole_seconds).map_err(internal)?,
        ))
    }
}

fn extension<T: AssociatedOid + Encode>(value: &T, critical: bool) -> Result<Extension, CaError> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: octets(value.to_der().map_err(internal)?)?,
    })
}

fn octets(bytes: Vec<u8>) -> Result<OctetString, CaError> {
    OctetString::new(bytes).map_err(internal)
}

fn internal(e: impl std::fmt::Display) -> CaError {
    CaError::Internal(e.to_string())
}

/// Builds and signs a CRL (RFC 5280 §5) listing `revoked` (serial bytes, revocation time).
pub(crate) async fn build_crl(
    issuer: &Name,
    issuer_key_id: &[u8],
    signer: &dyn Signer,
    revoked: &[(Vec<u8>, SystemTime)],
    number: u64,
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<x509_cert::crl::CertificateList, CaError> {
    use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
    use x509_cert::ext::pkix::CrlNumber;
    let entries = revoked
        .iter()
        .map(|(serial, at)| {
            Ok(RevokedCert {
                serial_number: SerialNumber::new(serial).map_err(internal)?,
                revocation_date: x509_time(*at)?,
                crl_entry_extensions: None,
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    let number = der::asn1::Uint::new(&number.to_be_bytes()).map_err(internal)?;
    let tbs_cert_list = TbsCertList {
        version: Version::V2,
        signature: signer.signature_algorithm(),
        issuer: issuer.clone(),
        this_update: x509_time(this_update)?,
        next_update: Some(x509_time(next_update)?),
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: Some(vec![
            extension(&CrlNumber(number), false)?,
            extension(
                &AuthorityKeyIdentifier {
                    key_identifier: Some(octets(issuer_key_id.to_vec())?),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                },
                false,
            )?,
        ]),
    };
    let tbs_der = tbs_cert_list.to_der().map_err(internal)?;
    let signature = signer.sign(&tbs_der).await?;
    Ok(CertificateList {
        tbs_cert_list,
        signature_algorithm: signer.signature_algorithm(),
        signature: BitString::from_bytes(&signature).map_err(internal)?,
    })
}

/// A PKCS#10 request for `subject` signed by `signer` (the issuing CA's CSR
/// for an offline root). Returns its DER.
pub(crate) async fn build_csr(subject: Name, signer: &dyn Signer) -> Result<Vec<u8>, CaError> {
    use x509_cert::request::{CertReq, CertReqInfo, Version as CsrVersion};
    let info = CertReqInfo {
        version: CsrVersion::V1,
        subject,
        public_key: signer.public_key_info(),
        attributes: Default::default(),
    };
    let signature = signer.sign(&info.to_der().map_err(internal)?).await?;
    CertReq {
        info,
        algorithm: signer.signature_algorithm(),
        signature: BitString::from_bytes(&signature).map_err(internal)?,
    }
    .to_der()
    .map_err(internal)
}

/// Checks that `issuer`'s key signed `certificate` and that the names chain.
pub(crate) fn check_signed_by(
    certificate: &Certificate,
    issuer: &Certificate,
) -> Result<(), CaError> {
    if certificate.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(CaError::Rejected(format!(
            "issued by `{}`, not by `{}`",
            certificate.tbs_certificate.issuer, issuer.tbs_certificate.subject
        )));
    }
    let tbs = certificate.tbs_certificate.to_der().map_err(internal)?;
    crate::signer::verify(
        &issuer.tbs_certificate.subject_public_key_info,
        &certificate.signature_algorithm,
        &tbs,
        certificate.signature.raw_bytes(),
    )
    .map_err(|e| CaError::Rejected(e.to_string()))
}

/// Whether `certificate` has basicConstraints with cA true.
pub(crate) fn is_ca(certificate: &Certificate) -> bool {
    use der::Decode;
    certificate
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5912::ID_CE_BASIC_CONSTRAINTS)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|bc| bc.ca)
}
