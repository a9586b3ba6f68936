//! A CA key in a PKCS#8 file, signed with in process.

use std::path::{Path, PathBuf};

use est_wire::keys::SigningKey;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::{Signer, SignerError};
use crate::CaError;

/// A [`SigningKey`] held in memory, loaded from (or written to) a file.
#[derive(Debug)]
pub struct FileSigner {
    key: SigningKey,
    path: Option<PathBuf>,
}

impl FileSigner {
    /// Loads a PEM private key file.
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let pem = std::fs::read(path)
            .map_err(|e| CaError::Internal(format!("{}: {e}", path.display())))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| CaError::Internal(format!("{}: {e}", path.display())))?;
        Ok(Self {
            key,
            path: Some(path.to_path_buf()),
        })
    }

    /// Wraps a key already in memory (`path` is where it is or will be kept).
    pub fn new(key: SigningKey, path: Option<PathBuf>) -> Self {
        Self { key, path }
    }

    /// The key itself, to be written to its file.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
}

#[async_trait::async_trait]
impl Signer for FileSigner {
    fn public_key_info(&self) -> SubjectPublicKeyInfoOwned {
        self.key.public_key_info()
    }

    fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        self.key.signature_algorithm()
    }

    fn location(&self) -> String {
        match &self.path {
            Some(path) => format!("file {}", path.display()),
            None => "in memory".into(),
        }
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        // Tens of microseconds: not worth a thread hop.
        self.key
            .sign(tbs)
            .map_err(|e| SignerError::Failed(e.to_string()))
    }
}
