//! Revocation status of the local CAs' certificates, from the registry:
//! CRLs (one per hierarchy, signed through its signer), OCSP answers (signed
//! by the issuing CA or a delegated responder), and CRL files kept current
//! for brokers. The HTTP front-end only carries bytes in and out.
//!
//! Every answer reads the registry, so a revocation made by any server or
//! by `est-server certs revoke` shows at once. Signed OCSP answers without a
//! nonce are reused while the registry still gives the same status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ca_backends::local::LocalCa;
use ca_backends::ocsp::{DelegatedResponder, OcspQuery, Status};
use ca_backends::CaError;
use x509_cert::ext::pkix::CrlReason;

use crate::error::EstError;
use crate::registry::{CertState, Registry};

/// How long a CRL is valid (nextUpdate − thisUpdate); files are rewritten
/// well before (hourly, and on every change).
const CRL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// At most this many signed OCSP answers are kept for reuse.
const CACHE_ENTRIES: usize = 10_000;

/// A delegated responder certificate lasts this long and is replaced when
/// a third of it is left.
const DELEGATED_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Who signs OCSP answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OcspSigner {
    /// The issuing CA's own key (through its signer).
    #[default]
    IssuingCa,
    /// A delegated responder certificate for an in-memory key, issued by
    /// each CA at start and renewed before it ends.
    Delegated,
}

/// One reusable signed answer.
struct Cached {
    status: Status,
    der: Vec<u8>,
    signed: Instant,
}

/// Signed answers to nonce-less questions, reused while the status they
/// give still holds and they are young enough. Bounded: at `capacity`
/// entries it is emptied before the next one goes in (a flood of distinct
/// questions costs signatures, never memory).
struct AnswerCache {
    entries: HashMap<Vec<u8>, Cached>,
    capacity: usize,
}

impl AnswerCache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// The answer kept for `key`, if it gave `status` less than `max_age` ago.
    fn get(&self, key: &[u8], status: Status, max_age: Duration) -> Option<Vec<u8>> {
        self.entries
            .get(key)
            .filter(|c| c.status == status && c.signed.elapsed() < max_age)
            .map(|c| c.der.clone())
    }

    fn put(&mut self, key: Vec<u8>, status: Status, der: Vec<u8>) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        let signed = Instant::now();
        self.entries.insert(
            key,
            Cached {
                status,
                der,
                signed,
            },
        );
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The CRL and OCSP authority over every local CA of the server.
pub struct Revocation {
    registry: Arc<dyn Registry>,
    /// `(name, CA)`, the device CA first.
    cas: Vec<(String, Arc<LocalCa>)>,
    signer: OcspSigner,
    /// nextUpdate − thisUpdate of OCSP answers.
    lifetime: Duration,
    delegated: tokio::sync::Mutex<HashMap<String, Arc<DelegatedResponder>>>,
    cache: Mutex<AnswerCache>,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field("cas", &self.cas.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Revocation {
    /// Status answers for `cas` (the device CA first) from `registry`.
    pub fn new(
        registry: Arc<dyn Registry>,
        cas: Vec<(String, Arc<LocalCa>)>,
        signer: OcspSigner,
        lifetime: Duration,
    ) -> Self {
        Self {
            registry,
            cas,
            signer,
            lifetime,
            delegated: Default::default(),
            cache: Mutex::new(AnswerCache::new(CACHE_ENTRIES)),
        }
    }

    /// The CA called `name` (`device` is `[ca]`).
    pub fn ca(&self, name: &str) -> Option<&Arc<LocalCa>> {
        self.cas.iter().find(|(n, _)| n == name).map(|(_, ca)| ca)
    }

    /// The current DER CRL of CA `name`.
    pub async fn crl(&self, name: &str) -> Result<Vec<u8>, EstError> {
        let ca = self
            .ca(name)
            .ok_or_else(|| EstError::NotFound(format!("no CA named {name}")))?;
        current_crl(&*self.registry, ca).await
    }

    /// Answers a DER `OCSPRequest`: `Err` only when the request is not one
    /// (malformed) or the registry or signer failed.
    pub async fn ocsp(&self, der: &[u8]) -> Result<Vec<u8>, CaError> {
        let query = OcspQuery::parse(der)?;
        let Some((name, ca)) = self.cas.iter().find(|(_, ca)| query.names_issuer_of(ca)) else {
            // No CA of ours: every entry unknown, signed by the device CA.
            let (_, ca) = &self.cas[0];
            let statuses = vec![Status::Unknown; query.serials(ca).len()];
            let delegated = self.delegated_for(&self.cas[0].0, ca).await?;
            return ca
                .ocsp_response(&query, &statuses, self.lifetime, delegated.as_deref())
                .await;
        };
        let mut statuses = Vec::new();
        for serial in query.serials(ca) {
            statuses.push(match serial {
                Some(serial) => self.status_of(&serial).await?,
                None => Status::Unknown,
            });
        }
        let key = query.cache_key();
        if let Some(key) = &key {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(der) = cache.get(key, statuses[0], self.lifetime / 10) {
                return Ok(der);
            }
        }
        let delegated = self.delegated_for(name, ca).await?;
        let der = ca
            .ocsp_response(&query, &statuses, self.lifetime, delegated.as_deref())
            .await?;
        if let Some(key) = key {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(key, statuses[0], der.clone());
        }
        Ok(der)
    }

    /// The delegated responder of CA `name` (issued now when there is none
    /// or a third of its validity is left); `None` when the CA signs.
    async fn delegated_for(
        &self,
        name: &str,
        ca: &LocalCa,
    ) -> Result<Option<Arc<DelegatedResponder>>, CaError> {
        if self.signer != OcspSigner::Delegated {
            return Ok(None);
        }
        let mut responders = self.delegated.lock().await;
        let fresh = responders.get(name).filter(|responder| {
            responder
                .not_after()
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > DELEGATED_VALIDITY / 3)
        });
        if let Some(responder) = fresh {
            return Ok(Some(responder.clone()));
        }
        let responder = Arc::new(DelegatedResponder::issue(ca, DELEGATED_VALIDITY).await?);
        tracing::info!(ca = %name, "issued a delegated OCSP responder certificate");
        responders.insert(name.to_owned(), responder.clone());
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(Some(responder))
    }

    /// What the registry says about `serial`: good, revoked (operator
    /// revocation `unspecified`, a retired predecessor `superseded`) or
    /// unknown (not issued by a local CA).
    async fn status_of(&self, serial: &str) -> Result<Status, CaError> {
        let unavailable = |e: crate::registry::RegistryError| CaError::Unavailable(e.to_string());
        let Some(record) = self
            .registry
            .find_by_serial(serial)
            .await
            .map_err(unavailable)?
        else {
            return Ok(Status::Unknown);
        };
        if record.certificate.backend_ref.is_some() {
            return Ok(Status::Unknown);
        }
        if record.state != CertState::Revoked && record.retired_at.is_none() {
            return Ok(Status::Good);
        }
        let at = self
            .registry
            .local_revocations()
            .await
            .map_err(unavailable)?
            .into_iter()
            .find(|(s, _)| s == serial)
            .map(|(_, at)| UNIX_EPOCH + Duration::from_secs(at.max(0) as u64))
            .unwrap_or_else(SystemTime::now);
        let reason = if record.state == CertState::Revoked {
            CrlReason::Unspecified
        } else {
            CrlReason::Superseded
        };
        Ok(Status::Revoked { at, reason })
    }
}

/// Signs a CRL of `ca` from the registry's revocations, valid for one day.
/// Every hierarchy's CRL lists the local revocations (serials are 80-bit
/// random values, so one hierarchy's entries never name another's
/// certificates).
pub async fn current_crl(registry: &dyn Registry, ca: &LocalCa) -> Result<Vec<u8>, EstError> {
    let revoked = revocations(registry).await?;
    Ok(ca.crl(&revoked, CRL_LIFETIME).await?)
}

/// The registry's local revocations, sorted by serial.
async fn revocations(registry: &dyn Registry) -> Result<Vec<(String, SystemTime)>, EstError> {
    let mut revoked: Vec<_> = registry
        .local_revocations()
        .await
        .map_err(EstError::from)?
        .into_iter()
        .map(|(serial, at)| (serial, UNIX_EPOCH + Duration::from_secs(at.max(0) as u64)))
        .collect();
    revoked.sort();
    Ok(revoked)
}

/// Writes the current CRL as PEM to `path` atomically: a temporary file in
/// the same directory, synced, then renamed over `path`, so a reader
/// (Mosquitto's `crlfile`) sees the old CRL or the new one, never half.
pub async fn write_crl_file(
    registry: &dyn Registry,
    ca: &LocalCa,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let der = current_crl(registry, ca)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pem = est_wire::pem::encode("X509 CRL", &der);
    crate::secure_files::replace_atomically(path, pem.as_bytes())
}

/// A CRL file to keep current, and what to run after each rewrite.
#[derive(Debug, Clone)]
pub struct CrlFile {
    /// Which CA's CRL.
    pub ca: Arc<LocalCa>,
    /// Where.
    pub path: PathBuf,
    /// Run (no shell) after every rewrite, e.g. `["pkill", "-HUP", "-x", "mosquitto"]`.
    pub reload_command: Vec<String>,
}

/// Runs `command` (argv, no shell) with a 10 s bound; failures are logged.
pub async fn run_reload_command(command: &[String]) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), child).await {
        Ok(Ok(output)) if output.status.success() => {
            tracing::info!(command = %program, "CRL reload command ran");
        }
        Ok(Ok(output)) => tracing::warn!(
            command = %program,
            status = %output.status,
            stderr = %String::from_utf8_lossy(&output.stderr).trim(),
            "CRL reload command failed"
        ),
        Ok(Err(e)) => {
            tracing::warn!(command = %program, error = %e, "cannot run the CRL reload command")
        }
        Err(_) => {
            tracing::warn!(command = %program, "CRL reload command did not finish within 10 s")
        }
    }
}

/// Keeps `files` current: checks the registry every `check_every` and
/// rewrites (then reloads) when the revocations changed — whichever server
/// or command made them — and at least hourly, before the CRL ends.
pub async fn keep_crl_files(
    registry: Arc<dyn Registry>,
    files: Vec<CrlFile>,
    check_every: Duration,
    mut last: Vec<(String, SystemTime)>,
) {
    let mut written = Instant::now();
    let mut every = tokio::time::interval(check_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let current = match revocations(&*registry).await {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read revocations for the CRL files");
                continue;
            }
        };
        if current == last && written.elapsed() < Duration::from_secs(3600) {
            continue;
        }
        let mut all_written = true;
        for file in &files {
            match write_crl_file(&*registry, &file.ca, &file.path).await {
                Ok(()) => {
                    tracing::info!(file = %file.path.display(), revoked = current.len(), "rewrote the CRL file");
                    run_reload_command(&file.reload_command).await;
                }
                Err(e) => {
                    all_written = false;
                    tracing::error!(error = %format!("{e:#}"), file = %file.path.display(), "cannot rewrite the CRL file");
                }
            }
        }
        if all_written {
            last = current;
            written = Instant::now();
        }
    }
}

/// The revocations now, as [`keep_crl_files`] compares them.
pub async fn snapshot(registry: &dyn Registry) -> Result<Vec<(String, SystemTime)>, EstError> {
    revocations(registry).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(60);

    #[test]
    fn the_answer_cache_reuses_only_a_matching_status() {
        let mut cache = AnswerCache::new(4);
        cache.put(b"q".to_vec(), Status::Good, b"signed".to_vec());
        assert_eq!(cache.get(b"q", Status::Good, AGE), Some(b"signed".to_vec()));
        assert_eq!(cache.get(b"q", Status::Unknown, AGE), None);
        assert_eq!(cache.get(b"q", Status::Good, Duration::ZERO), None);
        assert_eq!(cache.get(b"other", Status::Good, AGE), None);
    }

    #[test]
    fn the_answer_cache_never_grows_past_its_bound() {
        let mut cache = AnswerCache::new(3);
        for n in 0..10u8 {
            cache.put(vec![n], Status::Good, vec![n]);
            assert!(cache.len() <= 3, "{} entries after {n}", cache.len());
            assert_eq!(cache.get(&[n], Status::Good, AGE), Some(vec![n]));
        }
        // Replacing a kept answer at the bound keeps the others.
        let mut cache = AnswerCache::new(2);
        cache.put(vec![1], Status::Good, vec![1]);
        cache.put(vec![2], Status::Good, vec![2]);
        cache.put(vec![2], Status::Unknown, vec![3]);
        assert_eq!(cache.get(&[1], Status::Good, AGE), Some(vec![1]));
        assert_eq!(cache.get(&[2], Status::Unknown, AGE), Some(vec![3]));
    }
}
