//! Where the CA's private key lives, behind one trait.
//!
//! Everything the local CA signs (certificates, CRLs, CSRs for an offline
//! root) goes through [`Signer`]: it tells the public key and the signature
//! algorithm, and signs the DER of a to-be-signed structure. Nothing here
//! knows HTTP; a signer that cannot reach its key says
//! [`SignerError::Unavailable`], which the server answers with 503.
//!
//! * [`file::FileSigner`] — a PKCS#8 key file (today's behaviour).
//! * [`pkcs11::Pkcs11Signer`] — a key that never leaves a PKCS#11 token.
//! * `aws_kms::AwsKmsSigner` — a key in AWS KMS (the `aws` feature).

pub mod aws_kms;
pub mod file;
pub mod pkcs11;

use std::sync::Arc;

use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::CaError;

/// Why a signature could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignerError {
    /// The key is out of reach for now (token removed, HSM down); retry later.
    #[error("signing key unavailable: {0}")]
    Unavailable(String),
    /// The key or the request is wrong in a way retrying will not fix.
    #[error("signing failed: {0}")]
    Failed(String),
}

impl From<SignerError> for CaError {
    fn from(e: SignerError) -> Self {
        match e {
            SignerError::Unavailable(text) => CaError::Unavailable(text),
            SignerError::Failed(text) => CaError::Internal(text),
        }
    }
}

/// A private key that signs for the CA. Implementations that block (a
/// token, a network call) move the work off the async runtime themselves.
#[async_trait::async_trait]
pub trait Signer: Send + Sync + std::fmt::Debug {
    /// The public half, as it must appear in the CA certificate.
    fn public_key_info(&self) -> SubjectPublicKeyInfoOwned;

    /// The `AlgorithmIdentifier` of the signatures [`Signer::sign`] makes.
    fn signature_algorithm(&self) -> AlgorithmIdentifierOwned;

    /// Where the key is, for logs and `ca show` (never a secret).
    fn location(&self) -> String;

    /// Signs `tbs` (the DER to be signed) and returns the signature value as
    /// it goes into the BIT STRING (ECDSA: DER `Ecdsa-Sig-Value`).
    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError>;
}

/// Which signer holds a CA's key, as configured in `[ca.signer]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SignerConfig {
    /// Key files in the CA directory (the default).
    #[default]
    File,
    /// A key inside a PKCS#11 token.
    Pkcs11(pkcs11::Pkcs11Config),
    /// A key in AWS KMS.
    AwsKms(aws_kms::AwsKmsConfig),
}

impl SignerConfig {
    /// Short name: `file`, `pkcs11` or `aws-kms`.
    pub fn kind(&self) -> &'static str {
        match self {
            SignerConfig::File => "file",
            SignerConfig::Pkcs11(_) => "pkcs11",
            SignerConfig::AwsKms(_) => "aws-kms",
        }
    }
}

/// The signature algorithm that goes with a public key: ECDSA with SHA-256
/// (P-256) or SHA-384 (P-384), RSA PKCS#1 v1.5 with SHA-256.
pub fn signature_algorithm_for(
    key: &SubjectPublicKeyInfoOwned,
) -> Result<AlgorithmIdentifierOwned, SignerError> {
    use const_oid::db::rfc5912;
    let kind = est_wire::csr::key_kind_of(key).map_err(|e| SignerError::Failed(e.to_string()))?;
    Ok(match kind {
        est_wire::csr::KeyKind::EcP256 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        est_wire::csr::KeyKind::EcP384 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_384,
            parameters: None,
        },
        est_wire::csr::KeyKind::Rsa { .. } => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(der::Any::null()),
        },
    })
}

/// Checks that `signature` over `message` was made by `key` with `algorithm`
/// (certificates and CRLs the CA imports or makes are checked with this).
pub fn verify(
    key: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignerError> {
    use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
    use const_oid::db::rfc5912;
    let kind = est_wire::csr::key_kind_of(key).map_err(|e| SignerError::Failed(e.to_string()))?;
    let verifier: &'static dyn VerificationAlgorithm = match (kind, algorithm.oid) {
        (est_wire::csr::KeyKind::EcP256, rfc5912::ECDSA_WITH_SHA_256) => {
            &sig::ECDSA_P256_SHA256_ASN1
        }
        (est_wire::csr::KeyKind::EcP256, rfc5912::ECDSA_WITH_SHA_384) => {
            &sig::ECDSA_P256_SHA384_ASN1
        }
        (est_wire::csr::KeyKind::EcP384, rfc5912::ECDSA_WITH_SHA_384) => {
            &sig::ECDSA_P384_SHA384_ASN1
        }
        (est_wire::csr::KeyKind::EcP384, rfc5912::ECDSA_WITH_SHA_256) => {
            &sig::ECDSA_P384_SHA256_ASN1
        }
        (est_wire::csr::KeyKind::Rsa { .. }, rfc5912::SHA_256_WITH_RSA_ENCRYPTION) => {
            &sig::RSA_PKCS1_2048_8192_SHA256
        }
        (est_wire::csr::KeyKind::Rsa { .. }, rfc5912::SHA_384_WITH_RSA_ENCRYPTION) => {
            &sig::RSA_PKCS1_2048_8192_SHA384
        }
        (_, oid) => {
            return Err(SignerError::Failed(format!(
                "unsupported signature algorithm {oid} for this key"
            )))
        }
    };
    UnparsedPublicKey::new(verifier, key.subject_public_key.raw_bytes())
        .verify(message, signature)
        .map_err(|_| SignerError::Failed("bad signature".into()))
}

/// Opens the signer `config` names for the key of the CA in `dir` (a
/// token is opened on the blocking pool; KMS is asked for the public key).
pub async fn open(
    config: &SignerConfig,
    dir: &std::path::Path,
) -> Result<Arc<dyn Signer>, CaError> {
    match config {
        SignerConfig::File => Ok(Arc::new(file::FileSigner::load(
            &dir.join(crate::local::ISSUING_KEY),
        )?)),
        SignerConfig::Pkcs11(config) => {
            let config = config.clone();
            let signer = tokio::task::spawn_blocking(move || pkcs11::Pkcs11Signer::open(&config))
                .await
                .map_err(|e| CaError::Internal(e.to_string()))??;
            Ok(Arc::new(signer))
        }
        #[cfg(feature = "aws")]
        SignerConfig::AwsKms(config) => Ok(Arc::new(aws_kms::AwsKmsSigner::open(config).await?)),
        #[cfg(not(feature = "aws"))]
        SignerConfig::AwsKms(_) => Err(CaError::Internal(
            "[ca.signer] kind = \"aws-kms\": this build has no AWS support (the `aws` feature)"
                .into(),
        )),
    }
}

/// SHA-256 fingerprint of DER bytes, upper-case hex with colons (as openssl prints).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::file::FileSigner;
    use super::*;
    use crate::local::{LocalCa, LocalCaOptions};
    use est_wire::keys::{KeyAlgorithm, SigningKey};

    fn signer(algorithm: KeyAlgorithm) -> FileSigner {
        FileSigner::new(SigningKey::generate(algorithm).unwrap(), None)
    }

    #[tokio::test]
    async fn signatures_verify_and_csrs_parse_for_every_key_type() {
        for algorithm in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Rsa { bits: 2048 },
        ] {
            let key = signer(algorithm);
            let signature = key.sign(b"tbs").await.unwrap();
            let spki = key.public_key_info();
            assert_eq!(
                signature_algorithm_for(&spki).unwrap(),
                key.signature_algorithm()
            );
            verify(&spki, &key.signature_algorithm(), b"tbs", &signature).unwrap();
            assert!(verify(&spki, &key.signature_algorithm(), b"other", &signature).is_err());
            let csr = LocalCa::issuing_csr("CN=Issuing", &key).await.unwrap();
            est_wire::csr::Csr::from_der(&csr).unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        }
    }

    #[tokio::test]
    async fn a_signer_that_is_not_the_certificates_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::open_or_create(dir.path(), &LocalCaOptions::default())
            .await
            .unwrap();
        let stranger = Arc::new(signer(KeyAlgorithm::EcP256));
        let error = LocalCa::open_with_signer(dir.path(), stranger)
            .unwrap_err()
            .to_string();
        assert!(error.contains("issuing-ca.pem"), "{error}");
        assert!(error.contains("in memory"), "{error}");
        assert!(error.contains("does not match"), "{error}");
    }

    #[tokio::test]
    async fn import_checks_key_chain_and_ca_flag() {
        let made = tempfile::tempdir().unwrap();
        let (root_key, issuing_key) = (signer(KeyAlgorithm::EcP256), signer(KeyAlgorithm::EcP256));
        LocalCa::create_with_signers(
            made.path(),
            &LocalCaOptions::default(),
            &root_key,
            &issuing_key,
        )
        .await
        .unwrap();
        let ca = LocalCa::open_with_signer(made.path(), Arc::new(signer(KeyAlgorithm::EcP256)));
        assert!(ca.is_err());
        let root =
            crate::local::read_certificate(&made.path().join(crate::local::ROOT_CERT)).unwrap();
        let issuing =
            crate::local::read_certificate(&made.path().join(crate::local::ISSUING_CERT)).unwrap();
        let target = tempfile::tempdir().unwrap();
        let into = target.path().join("ca");
        assert!(
            LocalCa::import(&into, &issuing, &root, &root_key).is_err(),
            "wrong key"
        );
        assert!(
            LocalCa::import(&into, &issuing, &issuing, &issuing_key).is_err(),
            "wrong root"
        );
        LocalCa::import(&into, &issuing, &root, &issuing_key).unwrap();
    }
}
