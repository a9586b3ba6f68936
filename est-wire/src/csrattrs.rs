//! The `/csrattrs` body (RFC 7030 §4.5.2): `SEQUENCE OF AttrOrOID`.
//!
//! This crate supports the OID form, which is what EST servers use in
//! practice to ask for a key type, a signature algorithm or `challengePassword`.

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};

/// Encodes a list of OIDs as a DER `CsrAttrs` sequence.
pub fn encode(oids: &[ObjectIdentifier]) -> Vec<u8> {
    oids.to_vec()
        .to_der()
        .expect("a sequence of OIDs always encodes")
}

/// Decodes a DER `CsrAttrs` sequence made only of OIDs.
pub fn decode(der: &[u8]) -> Result<Vec<ObjectIdentifier>, der::Error> {
    Vec::<ObjectIdentifier>::from_der(der)
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
}
