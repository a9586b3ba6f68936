//! Key pairs: generation, PKCS#8 storage and signing (EC P-256 / P-384).
//!
//! Used by the local CA for its own keys and by clients to make CSRs. The
//! cryptography is aws-lc-rs; this module only adds the X.509 views of a key
//! (its `SubjectPublicKeyInfo` and signature `AlgorithmIdentifier`).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING,
};
use const_oid::db::rfc5912;
use der::asn1::BitString;
use der::Any;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// Which kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// NIST P-256 with ECDSA-SHA256 (the default everywhere).
    #[default]
    EcP256,
    /// NIST P-384 with ECDSA-SHA384.
    EcP384,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ec-p256" | "prime256v1" | "secp256r1" => Ok(Self::EcP256),
            "p384" | "p-384" | "ec-p384" | "secp384r1" => Ok(Self::EcP384),
            other => Err(format!(
                "unknown key algorithm `{other}` (use p256 or p384)"
            )),
        }
    }
}

/// Why a key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not PEM, not PKCS#8, or not an EC key on a supported curve.
    #[error("cannot read private key: {0}")]
    Unreadable(String),
    /// The crypto library refused to sign.
    #[error("signing failed")]
    SigningFailed,
}

/// An EC private key that can sign certificates or CSRs.
pub struct SigningKey {
    algorithm: KeyAlgorithm,
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key pair.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let document = EcdsaKeyPair::generate_pkcs8(signing_algorithm(algorithm), &rng)
            .map_err(|_| KeyError::Unreadable("key generation failed".into()))?;
        Self::from_pkcs8_der_with(algorithm, document.as_ref())
    }

    /// Loads a PKCS#8 DER key, detecting its curve.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384]
            .into_iter()
            .find_map(|alg| Self::from_pkcs8_der_with(alg, der).ok())
            .ok_or_else(|| KeyError::Unreadable("not a PKCS#8 EC P-256 or P-384 key".into()))
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS#8).
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (label, der) =
            crate::pem::decode(pem).map_err(|e| KeyError::Unreadable(e.to_string()))?;
        if label != "PRIVATE KEY" {
            return Err(KeyError::Unreadable(format!(
                "expected a PEM PRIVATE KEY block, found {label}"
            )));
        }
        Self::from_pkcs8_der(&der)
    }

    fn from_pkcs8_der_with(algorithm: KeyAlgorithm, der: &[u8]) -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(signing_algorithm(algorithm), der)
            .map_err(|e| KeyError::Unreadable(e.to_string()))?;
        Ok(Self {
            algorithm,
            pair,
            pkcs8: der.to_vec(),
            rng: SystemRandom::new(),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The private key as PKCS#8 DER. Handle with care.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The private key as a PEM `PRIVATE KEY` block. Handle with care.
    pub fn to_pkcs8_pem(&self) -> String {
        crate::pem::encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The public key as an X.509 `SubjectPublicKeyInfo`.
    pub fn public_key_info(&self) -> SubjectPublicKeyInfoOwned {
        let curve = match self.algorithm {
            KeyAlgorithm::EcP256 => rfc5912::SECP_256_R_1,
            KeyAlgorithm::EcP384 => rfc5912::SECP_384_R_1,
        };
        SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: rfc5912::ID_EC_PUBLIC_KEY,
                parameters: Some(Any::from(&curve)),
            },
            subject_public_key: BitString::from_bytes(self.pair.public_key().as_ref())
                .expect("an EC point is a whole number of bytes"),
        }
    }

    /// The `AlgorithmIdentifier` of signatures made by [`SigningKey::sign`].
    pub fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        let oid = match self.algorithm {
            KeyAlgorithm::EcP256 => rfc5912::ECDSA_WITH_SHA_256,
            KeyAlgorithm::EcP384 => rfc5912::ECDSA_WITH_SHA_384,
        };
        AlgorithmIdentifierOwned {
            oid,
            parameters: None,
        }
    }

    /// Signs `message`, returning a DER ECDSA signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::SigningFailed)
    }
}

fn signing_algorithm(algorithm: KeyAlgorithm) -> &'static EcdsaSigningAlgorithm {
    match algorithm {
        KeyAlgorithm::EcP256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
        KeyAlgorithm::EcP384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_same_public_key() {
        for alg in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
            let key = SigningKey::generate(alg).unwrap();
            let again = SigningKey::from_pkcs8_pem(key.to_pkcs8_pem().as_bytes()).unwrap();
            assert_eq!(again.algorithm(), alg);
            assert_eq!(again.public_key_info(), key.public_key_info());
        }
    }

    #[test]
    fn refuses_non_keys() {
        assert!(SigningKey::from_pkcs8_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(SigningKey::from_pkcs8_der(b"junk").is_err());
    }
}
