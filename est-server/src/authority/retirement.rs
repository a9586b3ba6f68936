//! Retiring superseded certificates.
//!
//! A renewal marks the predecessor `superseded` at once, but the CA keeps it
//! valid until the device is seen using the successor (any TLS connection to
//! this server with it, e.g. est-client's post-install `/cacerts` check) or
//! the label's `retire_grace` has passed. This sweeper then retires it in the
//! backend (AWS IoT: INACTIVE, detach policy and thing, delete) and records
//! that. Its state lives in the registry, so a restart picks up where it left.

use std::sync::Arc;
use std::time::Duration;

use ca_backends::Binding;

use crate::registry::{unix_now, CertificateRecord, Registry};

/// What the sweeper needs of one label: its registry name, its
/// `retire_grace` and the CA that retires its certificates.
pub struct SweptLabel {
    /// The label as the registry stores it (`""` for the unlabelled path).
    pub name: String,
    /// Superseded certificates are retired after this at the latest.
    pub grace: Duration,
    /// The backend that retires them.
    pub backend: Arc<dyn ca_backends::CaBackend>,
}

/// Runs forever, one pass every `interval`.
pub async fn sweep(labels: Vec<SweptLabel>, registry: Arc<dyn Registry>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        for label in &labels {
            let before = unix_now() - label.grace.as_secs() as i64;
            let candidates = match registry
                .retirement_candidates(&label.name, before, 100)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "retirement sweep: registry unavailable");
                    continue;
                }
            };
            for record in candidates {
                retire_one(&*registry, label.backend.as_ref(), &record).await;
            }
        }
    }
}

/// Retires one superseded certificate in its backend and records it.
pub async fn retire_one(
    registry: &dyn Registry,
    backend: &dyn ca_backends::CaBackend,
    record: &CertificateRecord,
) {
    let serial = &record.certificate.serial;
    if let Some(backend_ref) = &record.certificate.backend_ref {
        let binding = binding_of(registry, record).await;
        if let Err(e) = backend.retire(backend_ref, binding.as_ref()).await {
            tracing::warn!(%serial, error = %e, "retirement failed; the next sweep retries");
            return;
        }
    }
    match registry.mark_retired(serial).await {
        Ok(()) => tracing::info!(%serial, "retired superseded certificate"),
        Err(e) => tracing::warn!(%serial, error = %e, "could not record retirement"),
    }
}

/// Where a certificate is bound in its backend: its device's thing and
/// policy, or a thing named after its CN.
pub async fn binding_of(registry: &dyn Registry, record: &CertificateRecord) -> Option<Binding> {
    if let Some(id) = &record.certificate.device_id {
        if let Ok(Some(device)) = registry.device(id).await {
            return Some(Binding {
                thing_name: device.device.thing_name.unwrap_or(device.device.id),
                policy: device.device.policy,
            });
        }
    }
    let certificate = est_wire::pem::certificate_from_der(&record.certificate.der).ok()?;
    est_wire::csr::common_name(&certificate.tbs_certificate.subject).map(|thing_name| Binding {
        thing_name,
        policy: None,
    })
}
