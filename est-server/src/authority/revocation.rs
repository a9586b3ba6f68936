//! Revocation content: the local CA's CRL, assembled from the registry's
//! revoked and retired certificates and signed through the CA's signer —
//! served by the HTTP front-end, written as a file for brokers.

use crate::error::EstError;
use crate::registry::Registry;

/// Signs a CRL from the registry's revocations, valid for one day.
pub async fn current_crl(
    registry: &dyn Registry,
    ca: &ca_backends::local::LocalCa,
) -> Result<Vec<u8>, EstError> {
    let revoked: Vec<(String, std::time::SystemTime)> = registry
        .local_revocations()
        .await
        .map_err(EstError::from)?
        .into_iter()
        .map(|(serial, at)| {
            (
                serial,
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.max(0) as u64),
            )
        })
        .collect();
    Ok(ca
        .crl(&revoked, std::time::Duration::from_secs(24 * 3600))
        .await?)
}

/// Writes the current CRL as PEM to `path` atomically: a temporary file in
/// the same directory, synced, then renamed over `path`, so a reader
/// (Mosquitto's `crlfile`) sees the old CRL or the new one, never half.
pub async fn write_crl_file(
    registry: &dyn Registry,
    ca: &ca_backends::local::LocalCa,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let der = current_crl(registry, ca)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pem = est_wire::pem::encode("X509 CRL", &der);
    crate::secure_files::replace_atomically(path, pem.as_bytes())
}
