//! CMS `SignedData` "certs-only" bundles (RFC 5652 §5, RFC 7030 §4.1.3).
//!
//! A certs-only bundle is a `SignedData` with no content and no signers; it
//! carries certificates (and optionally CRLs). EST uses it for `/cacerts`
//! (the CA chain) and for enrollment responses (only the issued certificate:
//! the certificate set is a DER SET, which encoders sort, and clients such as
//! Azure IoT Edge take the first certificate as their own).

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use const_oid::db::rfc5911::{ID_DATA, ID_SIGNED_DATA};
use der::asn1::SetOfVec;
use der::{Any, Decode, Encode};
use x509_cert::Certificate;

/// Why a certs-only bundle could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs7Error {
    /// The bytes are not a DER `ContentInfo` / `SignedData`.
    #[error("not a DER PKCS#7 structure: {0}")]
    Malformed(der::Error),
    /// A `ContentInfo` of another type (enveloped data, say).
    #[error("PKCS#7 content type {0} is not signedData")]
    NotSignedData(der::asn1::ObjectIdentifier),
    /// The same certificate was given twice.
    #[error("duplicate certificate in certs-only bundle")]
    Duplicate,
}

/// Encodes `certs` as a DER certs-only `ContentInfo`.
pub fn encode_certs_only(certs: &[Certificate]) -> Result<Vec<u8>, Pkcs7Error> {
    let choices: Vec<CertificateChoices> = certs
        .iter()
        .cloned()
        .map(CertificateChoices::Certificate)
        .collect();
    let set = SetOfVec::try_from(choices).map_err(|_| Pkcs7Error::Duplicate)?;
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(set)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let content_info = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed_data).map_err(Pkcs7Error::Malformed)?,
    };
    content_info.to_der().map_err(Pkcs7Error::Malformed)
}

/// Decodes a DER certs-only `ContentInfo` and returns its certificates in
/// the order they appear.
pub fn decode_certs_only(der: &[u8]) -> Result<Vec<Certificate>, Pkcs7Error> {
    let content_info = ContentInfo::from_der(der).map_err(Pkcs7Error::Malformed)?;
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(Pkcs7Error::NotSignedData(content_info.content_type));
    }
    let signed_data: SignedData = content_info
        .content
        .decode_as()
        .map_err(Pkcs7Error::Malformed)?;
    let certs = signed_data
        .certificates
        .map(|set| {
            set.0
                .into_vec()
                .into_iter()
                .filter_map(|choice| match choice {
                    CertificateChoices::Certificate(cert) => Some(cert),
                    CertificateChoices::Other(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl crl2pkcs7 -nocrl -certfile` output for two self-signed certificates
    /// (see `testdata/README.md`).
    const OPENSSL_BUNDLE: &str = include_str!("../testdata/two-certs.p7b.pem");

    fn openssl_bundle_der() -> Vec<u8> {
        crate::body::decode(OPENSSL_BUNDLE.as_bytes()).unwrap()
    }

    #[test]
    fn decodes_openssl_crl2pkcs7_output() {
        let certs = decode_certs_only(&openssl_bundle_der()).unwrap();
        assert_eq!(certs.len(), 2);
    }

    #[test]
    fn re_encoding_openssl_bundle_round_trips() {
        let certs = decode_certs_only(&openssl_bundle_der()).unwrap();
        let der = encode_certs_only(&certs).unwrap();
        let mut back = decode_certs_only(&der).unwrap();
        // OpenSSL keeps insertion order; a DER SET OF is sorted, so compare as sets.
        let mut expected = certs.clone();
        let key = |c: &Certificate| der::Encode::to_der(c).unwrap();
        back.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(back, expected);
        assert_eq!(der.len(), openssl_bundle_der().len());
    }

    #[test]
    fn single_certificate_bundle_holds_only_that_certificate() {
        let certs = decode_certs_only(&openssl_bundle_der()).unwrap();
        let der = encode_certs_only(&certs[..1]).unwrap();
        let back = decode_certs_only(&der).unwrap();
        assert_eq!(back, vec![certs[0].clone()]);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(matches!(
            decode_certs_only(b"\x30\x03\x02\x01\x01"),
            Err(Pkcs7Error::Malformed(_))
        ));
        let der = openssl_bundle_der();
        assert!(decode_certs_only(&der[..der.len() - 10]).is_err());
        let mut trailing = der.clone();
        trailing.extend_from_slice(b"junk");
        assert!(decode_certs_only(&trailing).is_err());
    }

    #[test]
    fn duplicates_are_refused() {
        let certs = decode_certs_only(&openssl_bundle_der()).unwrap();
        let twice = vec![certs[0].clone(), certs[0].clone()];
        assert!(matches!(
            encode_certs_only(&twice),
            Err(Pkcs7Error::Duplicate)
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_subset_of_certificates_round_trips(mask in 1u8..4) {
            let der = crate::body::decode(include_str!("../testdata/two-certs.p7b.pem").as_bytes()).unwrap();
            let all = decode_certs_only(&der).unwrap();
            let chosen: Vec<Certificate> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| c.clone())
                .collect();
            let encoded = encode_certs_only(&chosen).unwrap();
            let mut back = decode_certs_only(&encoded).unwrap();
            let mut expected = chosen.clone();
            let key = |c: &Certificate| der::Encode::to_der(c).unwrap();
            back.sort_by_key(key);
            expected.sort_by_key(key);
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_certs_only(&data);
        }
    }
}
