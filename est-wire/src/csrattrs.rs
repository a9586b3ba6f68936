//! The `/csrattrs` body (RFC 7030 §4.5.2): `SEQUENCE OF AttrOrOID`.
//!
//! This crate supports the OID form, which is what EST servers use in
//! practice to ask for a key type, a signature algorithm or `challengePassword`.

use const_oid::ObjectIdentifier;
use der::{Decode, Encode, Tagged};

/// Encodes a list of OIDs as a DER `CsrAttrs` sequence.
pub fn encode(oids: &[ObjectIdentifier]) -> Vec<u8> {
    oids.to_vec()
        .to_der()
        .expect("a sequence of OIDs always encodes")
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
