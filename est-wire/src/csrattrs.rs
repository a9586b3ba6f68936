//! The `/csrattrs` body (RFC 7030 §4.5.2): `SEQUENCE OF AttrOrOID`.
//!
//! Items are OIDs (a signature algorithm, `challengePassword`) or
//! attributes with values (RFC 7030's `{ id-ecPublicKey, { secp256r1 } }`
//! for a key type and curve, an `extensionRequest` carrying the extensions
//! the CA wants asked for, as RFC 9908 clarifies).

use const_oid::db::rfc5912;
use const_oid::ObjectIdentifier;
use der::asn1::{Any, SetOfVec};
use der::{Decode, Encode, Tagged};
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::ext::Extension;
use x509_cert::request::ExtensionReq;

use crate::keys::KeyAlgorithm;

/// One `AttrOrOID` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrAttr {
    /// An OID on its own.
    Oid(ObjectIdentifier),
    /// An attribute with values.
    Attribute(Attribute),
}

/// Encodes a list of OIDs as a DER `CsrAttrs` sequence.
pub fn encode(oids: &[ObjectIdentifier]) -> Vec<u8> {
    oids.to_vec()
        .to_der()
        .expect("a sequence of OIDs always encodes")
}

/// Encodes items of either form as a DER `CsrAttrs` sequence.
pub fn encode_items(items: &[CsrAttr]) -> Result<Vec<u8>, der::Error> {
    let anys = items
        .iter()
        .map(|item| match item {
            CsrAttr::Oid(oid) => Any::encode_from(oid),
            CsrAttr::Attribute(attribute) => Any::encode_from(attribute),
        })
        .collect::<Result<Vec<Any>, _>>()?;
    anys.to_der()
}

/// The items that ask for a key of `algorithm`: for EC, the attribute
/// `{ id-ecPublicKey, { curve } }` and ECDSA with SHA-256 (P-256) or
/// SHA-384 (P-384); for RSA, rsaEncryption and SHA-256 with RSA.
pub fn key_attributes(algorithm: KeyAlgorithm) -> Vec<CsrAttr> {
    let ec = |curve: ObjectIdentifier, signature: ObjectIdentifier| {
        let values = SetOfVec::try_from(vec![Any::encode_from(&curve).expect("an OID encodes")])
            .expect("one value");
        vec![
            CsrAttr::Attribute(Attribute {
                oid: rfc5912::ID_EC_PUBLIC_KEY,
                values,
            }),
            CsrAttr::Oid(signature),
        ]
    };
    match algorithm {
        KeyAlgorithm::EcP256 => ec(rfc5912::SECP_256_R_1, rfc5912::ECDSA_WITH_SHA_256),
        KeyAlgorithm::EcP384 => ec(rfc5912::SECP_384_R_1, rfc5912::ECDSA_WITH_SHA_384),
        KeyAlgorithm::Rsa { .. } => vec![
            CsrAttr::Oid(rfc5912::RSA_ENCRYPTION),
            CsrAttr::Oid(rfc5912::SHA_256_WITH_RSA_ENCRYPTION),
        ],
    }
}

/// An `extensionRequest` attribute asking for these extended key usages.
pub fn extended_key_usage_request(ekus: &[ObjectIdentifier]) -> Result<CsrAttr, der::Error> {
    let extension = Extension {
        extn_id: const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE,
        critical: false,
        extn_value: der::asn1::OctetString::new(ExtendedKeyUsage(ekus.to_vec()).to_der()?)?,
    };
    let request = ExtensionReq(vec![extension]);
    Ok(CsrAttr::Attribute(Attribute {
        oid: rfc5912::ID_EXTENSION_REQ,
        values: SetOfVec::try_from(vec![Any::encode_from(&request)?])?,
    }))
}

/// Decodes a DER `CsrAttrs` sequence. Each `AttrOrOID` yields its OID: the
/// OID itself, or the attribute type of an `Attribute`.
pub fn decode(der: &[u8]) -> Result<Vec<ObjectIdentifier>, der::Error> {
    Vec::<der::Any>::from_der(der)?
        .into_iter()
        .map(|item| match item.tag() {
            der::Tag::ObjectIdentifier => item.decode_as::<ObjectIdentifier>(),
            _ => item
                .decode_as::<x509_cert::attr::Attribute>()
                .map(|attribute| attribute.oid),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_decode_to_their_oids() {
        let mut items = key_attributes(KeyAlgorithm::EcP256);
        items.push(
            extended_key_usage_request(&[const_oid::db::rfc5280::ID_KP_CLIENT_AUTH]).unwrap(),
        );
        let der = encode_items(&items).unwrap();
        assert_eq!(
            decode(&der).unwrap(),
            vec![
                rfc5912::ID_EC_PUBLIC_KEY,
                rfc5912::ECDSA_WITH_SHA_256,
                rfc5912::ID_EXTENSION_REQ
            ]
        );
        let rsa = encode_items(&key_attributes(KeyAlgorithm::Rsa { bits: 2048 })).unwrap();
        assert_eq!(decode(&rsa).unwrap()[0], rfc5912::RSA_ENCRYPTION);
    }

    #[test]
    fn round_trip() {
        let oids = vec![
            crate::csr::CHALLENGE_PASSWORD,
            ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        ];
        let der = encode(&oids);
        assert_eq!(der[0], 0x30);
        assert_eq!(decode(&der).unwrap(), oids);
    }

    #[test]
    fn reads_libest_example_answer_and_attributes() {
        // libest estserver's default /csrattrs body.
        let libest =
            crate::body::decode(b"MCYGBysGAQEBARYGCSqGSIb3DQEJAQYFK4EEACIGCWCGSAFlAwQCAg==\0")
                .unwrap();
        let oids = decode(&libest).unwrap();
        assert_eq!(oids.len(), 4);
        assert_eq!(oids[2], ObjectIdentifier::new_unwrap("1.3.132.0.34"));
        // An Attribute form (extensionRequest with a value) yields its type.
        let with_attribute = [
            0x30, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09,
            0x0e, 0x31, 0x00,
        ];
        assert_eq!(
            decode(&with_attribute).unwrap(),
            vec![ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14")]
        );
    }
}
