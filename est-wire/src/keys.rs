//! Key pairs: generation, PKCS#8 storage and signing (EC P-256 / P-384, RSA).
//!
//! Used by the local CA for its own keys and by clients to make CSRs. The
//! cryptography is aws-lc-rs; this module only adds the X.509 views of a key
//! (its `SubjectPublicKeyInfo` and signature `AlgorithmIdentifier`).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING, RSA_PKCS1_SHA256,
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
    /// RSA with PKCS#1 v1.5 SHA-256 signatures.
    Rsa {
        /// Modulus size: 2048, 3072 or 4096.
        bits: usize,
    },
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ec-p256" | "prime256v1" | "secp256r1" => Ok(Self::EcP256),
            "p384" | "p-384" | "ec-p384" | "secp384r1" => Ok(Self::EcP384),
            "rsa2048" | "rsa-2048" => Ok(Self::Rsa { bits: 2048 }),
            "rsa3072" | "rsa-3072" => Ok(Self::Rsa { bits: 3072 }),
            "rsa4096" | "rsa-4096" => Ok(Self::Rsa { bits: 4096 }),
            other => Err(format!(
                "unknown key algorithm `{other}` (use p256, p384, rsa2048, rsa3072 or rsa4096)"
            )),
        }
    }
}

/// Why a key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not PEM, not a supported encoding, or not a supported key type.
    #[error("cannot read private key: {0}")]
    Unreadable(String),
    /// The crypto library refused to generate or sign.
    #[error("key operation failed: {0}")]
    Failed(&'static str),
}

enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private key that can sign certificates or CSRs.
pub struct SigningKey {
    algorithm: KeyAlgorithm,
    pair: Pair,
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
        match algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let document =
                    EcdsaKeyPair::generate_pkcs8(ec_algorithm(algorithm), &SystemRandom::new())
                        .map_err(|_| KeyError::Failed("EC key generation"))?;
                Self::from_pkcs8_der(document.as_ref())
            }
            KeyAlgorithm::Rsa { bits } => {
                let size = match bits {
                    2048 => KeySize::Rsa2048,
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    _ => return Err(KeyError::Failed("RSA size must be 2048, 3072 or 4096")),
                };
                let pair = RsaKeyPair::generate(size)
                    .map_err(|_| KeyError::Failed("RSA key generation"))?;
                Self::from_rsa(pair)
            }
        }
    }

    /// Loads a PKCS#8 DER key (EC P-256, P-384 or RSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        for algorithm in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(ec_algorithm(algorithm), der) {
                return Ok(Self {
                    algorithm,
                    pair: Pair::Ec(pair),
                    pkcs8: der.to_vec(),
                    rng: SystemRandom::new(),
                });
            }
        }
        let pair = RsaKeyPair::from_pkcs8(der)
            .map_err(|_| KeyError::Unreadable("not a PKCS#8 EC P-256, P-384 or RSA key".into()))?;
        Self::from_rsa(pair)
    }

    /// Loads a DER key that is PKCS#8 or, failing that, PKCS#1 RSA (what
    /// libest's serverkeygen puts in its "pkcs8" part).
    pub fn from_der_any(der: &[u8]) -> Result<Self, KeyError> {
        Self::from_pkcs8_der(der).or_else(|_| {
            RsaKeyPair::from_der(der)
                .map_err(|_| KeyError::Unreadable("neither PKCS#8 nor PKCS#1".into()))
                .and_then(Self::from_rsa)
        })
    }

    /// Loads a PEM key: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) or
    /// `RSA PRIVATE KEY` (PKCS#1, as libest's serverkeygen returns).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (label, der) = first_key_block(pem)?;
        match label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&der),
            "EC PRIVATE KEY" => {
                for algorithm in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
                    if let Ok(pair) =
                        EcdsaKeyPair::from_private_key_der(ec_algorithm(algorithm), &der)
                    {
                        let pkcs8 = pair
                            .to_pkcs8v1()
                            .map_err(|_| KeyError::Failed("PKCS#8 encoding"))?;
                        return Self::from_pkcs8_der(pkcs8.as_ref());
                    }
                }
                Err(KeyError::Unreadable(
                    "EC key is not on P-256 or P-384".into(),
                ))
            }
            "RSA PRIVATE KEY" => {
                let pair = RsaKeyPair::from_der(&der)
                    .map_err(|e| KeyError::Unreadable(format!("RSA key: {e}")))?;
                Self::from_rsa(pair)
            }
            other => Err(KeyError::Unreadable(format!(
                "expected a PEM private key, found {other}"
            ))),
        }
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS#8) or another supported PEM key.
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Self::from_pem(pem)
    }

    fn from_rsa(pair: RsaKeyPair) -> Result<Self, KeyError> {
        let bits = pair.public_modulus_len() * 8;
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
            .map_err(|_| KeyError::Failed("PKCS#8 encoding"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            algorithm: KeyAlgorithm::Rsa { bits },
            pair: Pair::Rsa(pair),
            pkcs8,
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
        let (algorithm, key_bytes) = match &self.pair {
            Pair::Ec(pair) => {
                let curve = match self.algorithm {
                    KeyAlgorithm::EcP384 => rfc5912::SECP_384_R_1,
                    _ => rfc5912::SECP_256_R_1,
                };
                (
                    AlgorithmIdentifierOwned {
                        oid: rfc5912::ID_EC_PUBLIC_KEY,
                        parameters: Some(Any::from(&curve)),
                    },
                    pair.public_key().as_ref().to_vec(),
                )
            }
            Pair::Rsa(pair) => (
                AlgorithmIdentifierOwned {
                    oid: rfc5912::RSA_ENCRYPTION,
                    parameters: Some(Any::null()),
                },
                pair.public_key().as_ref().to_vec(),
            ),
        };
        SubjectPublicKeyInfoOwned {
            algorithm,
            subject_public_key: BitString::from_bytes(&key_bytes)
                .expect("a public key is a whole number of bytes"),
        }
    }

    /// The `AlgorithmIdentifier` of signatures made by [`SigningKey::sign`].
    pub fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        match self.algorithm {
            KeyAlgorithm::EcP256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            KeyAlgorithm::EcP384 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_384,
                parameters: None,
            },
            KeyAlgorithm::Rsa { .. } => AlgorithmIdentifierOwned {
                oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                parameters: Some(Any::null()),
            },
        }
    }

    /// Signs `message` (ECDSA: DER signature; RSA: PKCS#1 v1.5 SHA-256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ec(pair) => pair
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Failed("signing")),
            Pair::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
                    .map_err(|_| KeyError::Failed("signing"))?;
                Ok(signature)
            }
        }
    }
}

/// Finds the first private-key PEM block, skipping anything before it (a
/// certificate in a combined file, say) and decodes it.
fn first_key_block(pem: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::Unreadable("not PEM text".into()))?;
    for label in ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"] {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let (Some(from), Some(to)) = (text.find(&begin), text.find(&end)) {
            if from < to {
                let block = &text[from..to + end.len()];
                return crate::pem::decode(block.as_bytes())
                    .map_err(|e| KeyError::Unreadable(e.to_string()));
            }
        }
    }
    Err(KeyError::Unreadable(
        "no PEM private key block found".into(),
    ))
}

fn ec_algorithm(algorithm: KeyAlgorithm) -> &'static EcdsaSigningAlgorithm {
    match algorithm {
        KeyAlgorithm::EcP384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
        _ => &ECDSA_P256_SHA256_ASN1_SIGNING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_same_public_key() {
        for alg in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa { bits: 2048 },
        ] {
            let key = SigningKey::generate(alg).unwrap();
            let again = SigningKey::from_pem(key.to_pkcs8_pem().as_bytes()).unwrap();
            assert_eq!(again.algorithm(), alg);
            assert_eq!(again.public_key_info(), key.public_key_info());
        }
    }

    #[test]
    fn csrs_signed_by_every_key_type_verify() {
        for alg in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa { bits: 2048 },
        ] {
            let key = SigningKey::generate(alg).unwrap();
            let spec = crate::csr::CsrSpec {
                subject: "CN=k".parse().unwrap(),
                ..Default::default()
            };
            let der = crate::csr::build(&spec, &key).unwrap();
            crate::csr::Csr::from_der(&der).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
    }

    #[test]
    fn reads_openssl_sec1_and_pkcs1_keys() {
        let dir = std::env::temp_dir().join(format!("est-wire-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (args, expected) in [
            (
                vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
                KeyAlgorithm::EcP256,
            ),
            (
                vec!["genrsa", "-traditional", "2048"],
                KeyAlgorithm::Rsa { bits: 2048 },
            ),
        ] {
            let Ok(output) = std::process::Command::new("openssl").args(&args).output() else {
                panic!("openssl is needed for this test");
            };
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let key = SigningKey::from_pem(&output.stdout).unwrap();
            assert_eq!(key.algorithm(), expected);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_non_keys() {
        assert!(SigningKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(SigningKey::from_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
        assert!(SigningKey::from_pkcs8_der(b"junk").is_err());
    }
}
