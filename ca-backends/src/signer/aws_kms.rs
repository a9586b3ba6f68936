//! A CA key in AWS KMS: the private key never leaves KMS, every signature
//! is one `Sign` call (a network round trip).
//!
//! At open the signer reads the key with `GetPublicKey` (which must say
//! `KeyUsage = SIGN_VERIFY`; ECC_NIST_P256, ECC_NIST_P384 and RSA 2048/3072/4096
//! keys are accepted). To sign, the to-be-signed DER is hashed here
//! (SHA-256 for P-256 and RSA, SHA-384 for P-384) and only the digest goes
//! to KMS (`MessageType = DIGEST`, `ECDSA_SHA_256`, `ECDSA_SHA_384` or
//! `RSASSA_PKCS1_V1_5_SHA_256`).
//!
//! The SDK client is shared (it is cheap to clone and pools connections), so
//! concurrent signatures go out concurrently; nothing here serialises them.
//! Throttling and transient faults are retried by the SDK's standard retry
//! mode with exponential back-off (bounded attempts, bounded time); what
//! still fails is mapped by [`classify`]: a KMS that cannot be reached,
//! throttling that outlasted the retries, a disabled or unavailable key and
//! access denied become [`SignerError::Unavailable`] (503: the device's
//! request is fine, and each of these can be fixed without a new
//! configuration); a key that does not exist, is not a signing key or is
//! asked for the wrong algorithm is [`SignerError::Failed`].
//!
//! Credentials come from the standard AWS chain (environment, profile,
//! web identity, container or instance role); none is ever logged.

use std::time::Duration;

#[cfg(feature = "aws")]
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

#[cfg(feature = "aws")]
use super::{Signer, SignerError};
use crate::CaError;

/// `[ca.signer] kind = "aws-kms"`: which key, where, and how hard to try.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// The KMS key: key id, key ARN, `alias/<name>` or alias ARN. Required
    /// to serve; `ca init --signer aws-kms` may take it from `--key-id`
    /// or create the key (`--create-key`).
    #[serde(default)]
    pub key_id: Option<String>,
    /// AWS region (default: the region in a key ARN, else the SDK's
    /// resolution from the environment and profile).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (a local emulator such as moto in tests, or a VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Most attempts per KMS call, the first included (standard retry mode).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Base of the exponential back-off between attempts (the SDK's
    /// standard mode waits up to base × 2^(attempt−1), capped at 20 s).
    #[serde(
        default = "default_initial_backoff",
        with = "crate::profile::duration_text"
    )]
    pub initial_backoff: Duration,
    /// Random jitter on the back-off (full jitter). Leave on; off only
    /// for tests that measure the back-off itself.
    #[serde(default = "default_true")]
    pub retry_jitter: bool,
    /// Time to establish a connection to KMS.
    #[serde(
        default = "default_connect_timeout",
        with = "crate::profile::duration_text"
    )]
    pub connect_timeout: Duration,
    /// Time limit of one attempt (connection, request and response).
    #[serde(
        default = "default_attempt_timeout",
        with = "crate::profile::duration_text"
    )]
    pub attempt_timeout: Duration,
    /// Time limit of one KMS call, all attempts and back-off included.
    #[serde(
        default = "default_operation_timeout",
        with = "crate::profile::duration_text"
    )]
    pub operation_timeout: Duration,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_attempt_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_operation_timeout() -> Duration {
    Duration::from_secs(15)
}

impl AwsKmsConfig {
    /// The same settings for another key (the root key of `ca init`).
    pub fn with_key_id(&self, key_id: &str) -> Self {
        Self {
            key_id: Some(key_id.to_owned()),
            ..self.clone()
        }
    }

    /// The configured key id, or a clear error naming the setting.
    pub fn require_key_id(&self) -> Result<&str, CaError> {
        match self.key_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => Ok(id),
            _ => Err(CaError::Internal(
                "[ca.signer] kind = \"aws-kms\" needs key_id (a KMS key id, key ARN or alias/<name>); `est-server ca init --signer aws-kms --create-key` creates one".into(),
            )),
        }
    }

    /// The region: configured, else taken from a key ARN, else none (the SDK's chain).
    #[cfg(any(feature = "aws", test))]
    fn region(&self) -> Option<String> {
        if let Some(region) = &self.region {
            return Some(region.clone());
        }
        let key = self.key_id.as_deref()?;
        let mut parts = key.strip_prefix("arn:")?.split(':');
        let (_partition, service, region) = (parts.next()?, parts.next()?, parts.next()?);
        (service == "kms" && !region.is_empty()).then(|| region.to_owned())
    }
}

/// What a KMS key is: its spec mapped to the signature this CA makes.
#[cfg(feature = "aws")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFlavour {
    EcP256,
    EcP384,
    Rsa,
}

/// A [`Signer`] whose key is in AWS KMS.
#[cfg(feature = "aws")]
#[derive(Clone)]
pub struct AwsKmsSigner {
    client: aws_sdk_kms::Client,
    key_id: String,
    key_arn: String,
    flavour: KeyFlavour,
    public_key: SubjectPublicKeyInfoOwned,
    algorithm: AlgorithmIdentifierOwned,
}

#[cfg(feature = "aws")]
impl std::fmt::Debug for AwsKmsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsSigner")
            .field("key", &self.key_arn)
            .finish_non_exhaustive()
    }
}

/// Builds the KMS client: credentials from the standard chain, the
/// configured region/endpoint, standard retries and the timeouts.
#[cfg(feature = "aws")]
pub async fn client(config: &AwsKmsConfig) -> aws_sdk_kms::Client {
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(config.max_attempts.max(1))
        .with_initial_backoff(config.initial_backoff)
        .with_use_static_exponential_base(!config.retry_jitter);
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(config.connect_timeout)
        .operation_attempt_timeout(config.attempt_timeout)
        .operation_timeout(config.operation_timeout)
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(region) = config.region() {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    aws_sdk_kms::Client::new(&loader.load().await)
}

#[cfg(feature = "aws")]
impl AwsKmsSigner {
    /// Reads the key's public half with `GetPublicKey` and checks that it is
    /// a signing key of a supported spec. Errors name the key and what is
    /// wrong (unreachable KMS, unknown key, wrong usage or spec).
    pub async fn open(config: &AwsKmsConfig) -> Result<Self, CaError> {
        let key_id = config.require_key_id()?.to_owned();
        let client = client(config).await;
        let output = client
            .get_public_key()
            .key_id(&key_id)
            .send()
            .await
            .map_err(|e| {
                CaError::Internal(format!(
                    "KMS key `{key_id}`: {}",
                    classify("GetPublicKey", e)
                ))
            })?;
        use aws_sdk_kms::types::KeyUsageType;
        match output.key_usage() {
            Some(KeyUsageType::SignVerify) => {}
            other => {
                return Err(CaError::Internal(format!(
                    "KMS key `{key_id}` has key usage {}; a CA key must be SIGN_VERIFY",
                    other.map(|u| u.as_str()).unwrap_or("(none)")
                )))
            }
        }
        let der = output.public_key().map(|b| b.as_ref()).ok_or_else(|| {
            CaError::Internal(format!("KMS key `{key_id}`: GetPublicKey returned no key"))
        })?;
        use der::Decode;
        let public_key = SubjectPublicKeyInfoOwned::from_der(der)
            .map_err(|e| CaError::Internal(format!("KMS key `{key_id}`: public key: {e}")))?;
        let flavour = flavour_of(&public_key)
            .map_err(|text| CaError::Internal(format!("KMS key `{key_id}`: {text}")))?;
        let algorithm = super::signature_algorithm_for(&public_key)?;
        let key_arn = output
            .key_id()
            .filter(|id| id.starts_with("arn:"))
            .unwrap_or(&key_id)
            .to_owned();
        Ok(Self {
            client,
            key_id,
            key_arn,
            flavour,
            public_key,
            algorithm,
        })
    }

    /// Creates a new KMS key for the CA (`CreateKey`, `KeyUsage =
    /// SIGN_VERIFY`, the spec for `algorithm`) and returns its key id and ARN.
    /// Needs `kms:CreateKey`, which the running server never does.
    pub async fn create_key(
        config: &AwsKmsConfig,
        algorithm: est_wire::keys::KeyAlgorithm,
        description: &str,
    ) -> Result<(String, String), CaError> {
        use aws_sdk_kms::types::{KeySpec, KeyUsageType};
        use est_wire::keys::KeyAlgorithm;
        let spec = match algorithm {
            KeyAlgorithm::EcP256 => KeySpec::EccNistP256,
            KeyAlgorithm::EcP384 => KeySpec::EccNistP384,
            KeyAlgorithm::Rsa { bits: 2048 } => KeySpec::Rsa2048,
            KeyAlgorithm::Rsa { bits: 3072 } => KeySpec::Rsa3072,
            KeyAlgorithm::Rsa { bits: 4096 } => KeySpec::Rsa4096,
            KeyAlgorithm::Rsa { bits } => {
                return Err(CaError::Internal(format!(
                    "KMS has no RSA {bits} keys (2048, 3072 or 4096)"
                )))
            }
        };
        let output = client(config)
            .await
            .create_key()
            .key_spec(spec)
            .key_usage(KeyUsageType::SignVerify)
            .description(description)
            .send()
            .await
            .map_err(|e| CaError::Internal(classify("CreateKey", e).to_string()))?;
        let metadata = output
            .key_metadata()
            .ok_or_else(|| CaError::Internal("CreateKey returned no key".into()))?;
        let id = metadata.key_id().to_owned();
        let arn = metadata.arn().unwrap_or(&id).to_owned();
        tracing::info!(key = %arn, "created a KMS key for the CA");
        Ok((id, arn))
    }

    /// The key's ARN as KMS reported it (the configured id if it did not).
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }
}

#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl Signer for AwsKmsSigner {
    fn public_key_info(&self) -> SubjectPublicKeyInfoOwned {
        self.public_key.clone()
    }

    fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        self.algorithm.clone()
    }

    fn location(&self) -> String {
        format!("aws-kms key {}", self.key_arn)
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        use aws_sdk_kms::primitives::Blob;
        use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
        let (digest, spec) = match self.flavour {
            KeyFlavour::EcP256 => (
                &aws_lc_rs::digest::SHA256,
                SigningAlgorithmSpec::EcdsaSha256,
            ),
            KeyFlavour::EcP384 => (
                &aws_lc_rs::digest::SHA384,
                SigningAlgorithmSpec::EcdsaSha384,
            ),
            KeyFlavour::Rsa => (
                &aws_lc_rs::digest::SHA256,
                SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
            ),
        };
        let digest = aws_lc_rs::digest::digest(digest, tbs);
        let result = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(digest.as_ref()))
            .message_type(MessageType::Digest)
            .signing_algorithm(spec)
            .send()
            .await;
        let error = match result {
            Ok(output) => match output.signature {
                Some(signature) if !signature.as_ref().is_empty() => {
                    return Ok(signature.into_inner())
                }
                _ => SignerError::Failed("KMS Sign returned no signature".into()),
            },
            Err(e) => classify("Sign", e),
        };
        match &error {
            SignerError::Unavailable(reason) => {
                tracing::warn!(key = %self.key_arn, %reason, "KMS signing failed; answering 503")
            }
            SignerError::Failed(reason) => {
                tracing::error!(key = %self.key_arn, %reason, "KMS signing failed")
            }
        }
        Err(error)
    }
}

/// Which signature a public key makes, or why KMS keys of its kind are not supported.
#[cfg(feature = "aws")]
fn flavour_of(key: &SubjectPublicKeyInfoOwned) -> Result<KeyFlavour, String> {
    use est_wire::csr::KeyKind;
    match est_wire::csr::key_kind_of(key).map_err(|e| e.to_string())? {
        KeyKind::EcP256 => Ok(KeyFlavour::EcP256),
        KeyKind::EcP384 => Ok(KeyFlavour::EcP384),
        KeyKind::Rsa {
            bits: 2048 | 3072 | 4096,
        } => Ok(KeyFlavour::Rsa),
        KeyKind::Rsa { bits } => Err(format!("RSA {bits} is not a KMS key size")),
    }
}

/// Maps a failed KMS call (after the SDK's retries) to a [`SignerError`]:
///
/// * `Unavailable` (503, try later): KMS unreachable or timing out,
///   `ThrottlingException` / `LimitExceededException` that outlasted the
///   retries, `KMSInternalException`, `DependencyTimeoutException`,
///   `KeyUnavailableException`, `DisabledException` and
///   `KMSInvalidStateException` (a disabled key, or one pending deletion,
///   can be re-enabled), `AccessDeniedException` and expired or unknown
///   credentials (an IAM or credential fix needs no restart);
/// * `Failed` (500): everything else — `NotFoundException`,
///   `InvalidKeyUsageException`, `ValidationException`, a request that could
///   not be built.
///
/// The text names the operation, the error code and KMS's message; never
/// a credential.
#[cfg(feature = "aws")]
pub fn classify<E, R>(operation: &str, error: aws_sdk_kms::error::SdkError<E, R>) -> SignerError
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
    let code = error.code().unwrap_or("").to_owned();
    let message = error.message().unwrap_or("").to_owned();
    match (&error, code.as_str()) {
        (SdkError::TimeoutError(_), _) => {
            SignerError::Unavailable(format!("KMS {operation}: timed out"))
        }
        (SdkError::DispatchFailure(_), _) => SignerError::Unavailable(format!(
            "KMS {operation}: KMS unreachable ({})",
            DisplayErrorContext(&error)
        )),
        (
            _,
            "ThrottlingException"
            | "LimitExceededException"
            | "KMSInternalException"
            | "DependencyTimeoutException"
            | "KeyUnavailableException"
            | "DisabledException"
            | "KMSInvalidStateException"
            | "AccessDeniedException"
            | "ExpiredTokenException"
            | "UnrecognizedClientException"
            | "ServiceUnavailable"
            | "InternalFailure",
        ) => SignerError::Unavailable(format!("KMS {operation}: {code}: {message}")),
        (_, "") => SignerError::Failed(format!("KMS {operation}: {}", DisplayErrorContext(&error))),
        _ => SignerError::Failed(format!("KMS {operation}: {code}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> AwsKmsConfig {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            signer: AwsKmsConfig,
        }
        toml::from_str::<Wrapper>(toml_text).unwrap().signer
    }

    #[test]
    fn region_comes_from_a_key_arn_when_not_configured() {
        let c = config("[signer]\nkey_id = \"arn:aws:kms:eu-west-1:111122223333:key/abcd\"");
        assert_eq!(c.region().as_deref(), Some("eu-west-1"));
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.attempt_timeout, Duration::from_secs(5));
        let c = config("[signer]\nkey_id = \"alias/est-ca\"\nregion = \"us-east-2\"");
        assert_eq!(c.region().as_deref(), Some("us-east-2"));
        let c = config("[signer]\nkey_id = \"alias/est-ca\"");
        assert_eq!(c.region(), None);
    }

    #[test]
    fn a_missing_key_id_is_named() {
        let c = config("[signer]\nregion = \"us-east-2\"");
        let error = c.require_key_id().unwrap_err().to_string();
        assert!(error.contains("needs key_id"), "{error}");
    }
}
