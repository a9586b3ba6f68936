//! Server-driven rotation over MQTT.
//!
//! The expiry audit finds active certificates ending within a window and
//! asks each device for a CSR (`csr_req`). The device's `csr_res` goes
//! through the same enrollment service as `/simplereenroll` authenticated by
//! the old certificate (same identity, one successor, same thing and policy);
//! the successor goes back in `crt_res`. Only `crt_ack` — the device is
//! connected with the successor — retires the predecessor; `crt_err` undoes
//! the renewal (the successor is revoked, the old certificate active again),
//! is logged and posted to the optional webhook. Each device's state is a
//! [`Rotation`] record in the registry, so a restart resumes, and devices
//! that never answer are asked again with back-off. Topics and payloads:
//! [`est_wire::rotation`].

pub mod audit;
pub mod mqtt;
pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use est_wire::csr::Csr;
use est_wire::rotation::{
    CertificateAck, CertificateError, CertificateResponse, CsrRequest, CsrResponse, Step, Topics,
};
use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::authority::keyed_locks::KeyedLocks;
use crate::config::RotationConfig;
use crate::error::EstError;
use crate::frontend::http::AppState;
use crate::registry::{unix_now, CertState, CertificateRecord, Rotation, RotationState};
use audit::Decision;
use webhook::Webhook;

/// Most expiring certificates one audit looks at.
const AUDIT_LIMIT: usize = 100_000;
/// Device messages handled at once.
const HANDLER_CONCURRENCY: usize = 16;

/// What one audit did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Devices sent `csr_req`.
    pub requested: Vec<String>,
    /// Devices skipped because they were asked recently.
    pub backing_off: usize,
    /// Devices left for the next audit because `max_in_flight` was reached.
    pub deferred: usize,
    /// Expiring certificates without a usable client id (no CN).
    pub without_client_id: usize,
    /// Certificates already expired (the device needs its bootstrap credentials).
    pub expired: usize,
}

/// Selects and asks devices: the part shared by the scheduled audit and
/// `est-server rotate`.
pub struct Auditor<'a> {
    /// Where certificates and rotation records are.
    pub registry: &'a dyn crate::registry::Registry,
    /// Publishes `csr_req`.
    pub client: &'a AsyncClient,
    /// Topic names.
    pub topics: &'a Topics,
    /// Back-off and concurrency settings.
    pub config: &'a RotationConfig,
    /// The orchestrator's per-device locks, when auditing inside `serve`.
    pub locks: Option<&'a KeyedLocks>,
}

impl Auditor<'_> {
    /// Asks every device whose certificate ends within `window` (only
    /// `device`, when given, ignoring its back-off) for a CSR.
    pub async fn audit(
        &self,
        window: Duration,
        device: Option<&str>,
    ) -> anyhow::Result<AuditReport> {
        let now = unix_now();
        let mut rotations: HashMap<String, Rotation> = self
            .registry
            .list_rotations(usize::MAX)
            .await?
            .into_iter()
            .map(|r| (r.client_id.clone(), r))
            .collect();
        let expiring = self
            .registry
            .expiring_before(now + window.as_secs() as i64, AUDIT_LIMIT)
            .await?;
        let mut report = AuditReport::default();
        let mut in_flight = audit::in_flight(&rotations, now);
        for record in &expiring {
            let decision = audit::decide(record, &rotations, now, device.is_some());
            let client_id = match decision {
                Decision::Ask { client_id, .. } => client_id,
                Decision::BackingOff(client_id) => {
                    if device.is_none_or(|d| d == client_id) {
                        report.backing_off += 1;
                    }
                    continue;
                }
                Decision::NoClientId(_) => {
                    report.without_client_id += 1;
                    continue;
                }
                Decision::Expired(client_id) => {
                    if device.is_none_or(|d| d == client_id) {
                        report.expired += 1;
                    }
                    continue;
                }
            };
            if device.is_some_and(|d| d != client_id) {
                continue;
            }
            if in_flight >= self.config.max_in_flight && device.is_none() {
                report.deferred += 1;
                continue;
            }
            // Decide again on the stored record, under the device's lock: a
            // device message may have moved it on since the snapshot.
            let _guard = match self.locks {
                Some(locks) => Some(locks.lock(&client_id).await),
                None => None,
            };
            if let Some(fresh) = self.registry.rotation(&client_id).await? {
                rotations.insert(client_id.clone(), fresh);
            }
            let attempt = match audit::decide(record, &rotations, now, device.is_some()) {
                Decision::Ask { attempt, .. } => attempt,
                _ => continue,
            };
            let previous = rotations.get(&client_id);
            // Recorded before it is sent (an answer always finds its record),
            // but not yet counted: only a request the broker confirmed is an
            // attempt (see [`confirmed_audit`], which counts it). Until then
            // the device may be asked again at once.
            let rotation = Rotation {
                client_id: client_id.clone(),
                serial: record.certificate.serial.clone(),
                state: RotationState::Requested,
                attempts: attempt - 1,
                last_error: previous
                    .filter(|r| r.serial == record.certificate.serial)
                    .and_then(|r| r.last_error.clone()),
                new_serial: None,
                requested_at: previous
                    .filter(|r| r.serial == record.certificate.serial)
                    .map_or(now, |r| r.requested_at),
                updated_at: now,
                next_attempt_at: now,
            };
            match previous {
                // Another server may handle a device message for this record
                // meanwhile: write only over the record decided on.
                Some(previous) => {
                    if !self
                        .registry
                        .replace_rotation(previous, rotation.clone())
                        .await?
                    {
                        continue;
                    }
                }
                None => self.registry.save_rotation(rotation.clone()).await?,
            }
            let request = CsrRequest {
                serial: record.certificate.serial.clone(),
                not_after: rfc3339(record.certificate.not_after),
            };
            self.client
                .publish(
                    self.topics.topic(&client_id, Step::CsrReq),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&request)?,
                )
                .await
                .context("publish csr_req")?;
            tracing::info!(client_id = %client_id, serial = %record.certificate.serial, attempt, "rotation: asking the device for a CSR");
            rotations.insert(
                client_id.clone(),
                Rotation {
                    // Holds a `max_in_flight` slot for the rest of this audit.
                    next_attempt_at: now + 1,
                    ..rotation
                },
            );
            in_flight += 1;
            report.requested.push(client_id);
        }
        Ok(report)
    }
}

/// What [`confirmed_audit`] did.
#[derive(Debug, Default)]
pub struct ConfirmedAudit {
    /// The audit; `requested` lists the devices whose `csr_req` the broker
    /// confirmed (each counted as an attempt).
    pub report: AuditReport,
    /// Devices sent `csr_req` that the broker did not confirm in time (not
    /// counted: they are asked again at the next audit).
    pub unconfirmed: Vec<String>,
}

/// The publishes of one audit connection and which of them the broker acknowledged.
#[derive(Default)]
struct Confirmations {
    /// Packet ids of the outgoing publishes, in order.
    sent: Vec<u16>,
    /// Packet ids the broker acknowledged.
    acked: std::collections::HashSet<u16>,
}

impl Confirmations {
    fn note(
        &mut self,
        event: Result<Event, rumqttc::ConnectionError>,
        broker: &str,
    ) -> anyhow::Result<()> {
        match event {
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => self.sent.push(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                self.acked.insert(ack.pkid);
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!("MQTT broker {broker}: {e}"),
        }
        Ok(())
    }

    /// Whether the `n`-th publish was acknowledged.
    fn confirmed(&self, n: usize) -> bool {
        self.sent
            .get(n)
            .is_some_and(|pkid| self.acked.contains(pkid))
    }

    /// Whether all `count` publishes went out and were acknowledged.
    fn all(&self, count: usize) -> bool {
        (0..count).all(|n| self.confirmed(n))
    }
}

/// How long a broker may take to accept the connection of an audit.
const AUDIT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a broker may take to confirm the requests of an audit.
const AUDIT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one audit over an MQTT connection of its own (client id
/// `client_id`, clean session): the scheduled audit and `est-server rotate`
/// alike. A `csr_req` counts as an attempt only once the broker confirmed it
/// (PUBACK); while the broker is unreachable nothing is sent or counted, so
/// devices do not back off or look offline because of a broker outage.
#[allow(clippy::too_many_arguments)]
pub async fn confirmed_audit(
    registry: &dyn crate::registry::Registry,
    config: &RotationConfig,
    client_id: &str,
    trust_pem: &[u8],
    pair: &mqtt::ClientPair,
    locks: Option<&KeyedLocks>,
    window: Duration,
    device: Option<&str>,
) -> anyhow::Result<ConfirmedAudit> {
    let (client, mut events) = mqtt::connect(config, client_id, true, trust_pem, pair)?;
    tokio::time::timeout(AUDIT_CONNECT_TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("MQTT broker {}: {e}", config.broker)),
            }
        }
    })
    .await
    .with_context(|| format!("MQTT broker {} did not answer", config.broker))??;
    let topics = Topics::new(&config.topic_prefix);
    let auditor = Auditor {
        registry,
        client: &client,
        topics: &topics,
        config,
        locks,
    };
    // Publishing queues into the event loop: poll it while auditing. The
    // connection carries only this audit's requests, in order, so the n-th
    // outgoing publish is the n-th device asked.
    let mut confirmations = Confirmations::default();
    let audit = auditor.audit(window, device);
    tokio::pin!(audit);
    let mut connection_lost = None;
    let mut report = loop {
        tokio::select! {
            report = &mut audit => break report?,
            event = events.poll(), if connection_lost.is_none() => {
                if let Err(e) = confirmations.note(event, &config.broker) {
                    connection_lost = Some(e);
                }
            }
        }
    };
    if connection_lost.is_none() {
        let _ = tokio::time::timeout(AUDIT_CONFIRM_TIMEOUT, async {
            while !confirmations.all(report.requested.len()) {
                if let Err(e) = confirmations.note(events.poll().await, &config.broker) {
                    tracing::warn!(error = %e, "rotation: connection lost before every csr_req was confirmed");
                    break;
                }
            }
        })
        .await;
    }
    let _ = client.disconnect().await;
    let now = unix_now();
    let mut confirmed = Vec::new();
    let mut unconfirmed = Vec::new();
    for (n, id) in report.requested.drain(..).enumerate() {
        if !confirmations.confirmed(n) {
            unconfirmed.push(id);
            continue;
        }
        let _guard = match locks {
            Some(locks) => Some(locks.lock(&id).await),
            None => None,
        };
        if let Some(read) = registry.rotation(&id).await? {
            if read.state == RotationState::Requested {
                // Unless the device's answer, handled by another server,
                // moved the record on meanwhile: that one stands.
                transition(registry, read.clone(), same_step(&read), |r| {
                    r.attempts += 1;
                    r.updated_at = now;
                    r.next_attempt_at = audit::next_attempt_at(now, r.attempts, config.retry_after);
                })
                .await?;
            }
        }
        confirmed.push(id);
    }
    report.requested = confirmed;
    if !unconfirmed.is_empty() {
        tracing::warn!(
            unconfirmed = unconfirmed.len(),
            "rotation: the broker did not confirm every csr_req; they are not counted and are sent again"
        );
    }
    Ok(ConfirmedAudit {
        report,
        unconfirmed,
    })
}

/// Refuses a device answer that names another certificate than the one this
/// rotation replaces (a late or redelivered answer to an earlier rotation).
fn ensure_current(serial: Option<&str>, rotation: &Rotation) -> anyhow::Result<()> {
    match serial {
        Some(serial) if serial != rotation.serial => anyhow::bail!(
            "the answer is about certificate {serial}, but the rotation replaces {}",
            rotation.serial
        ),
        _ => Ok(()),
    }
}

fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64),
    )
    .to_string()
}

/// The orchestrator running inside `serve`.
pub struct Orchestrator {
    state: Arc<AppState>,
    config: RotationConfig,
    topics: Topics,
    client: std::sync::RwLock<AsyncClient>,
    webhook: Option<Webhook>,
    locks: KeyedLocks,
    /// Broker trust anchors and the client certificate files, for the
    /// audit's own connection.
    trust_pem: Vec<u8>,
    pair: mqtt::ClientPair,
}

/// The registry lease whose holder runs the scheduled audit.
pub const AUDIT_LEASE: &str = "rotation-audit";
/// How often the holder renews the audit lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the other servers try to take it (one conditional write that
/// fails while the lease lasts), so a dead holder's lease is taken within a
/// second of its end.
pub const LEASE_TRY: Duration = Duration::from_secs(1);
/// How long a lease lasts unless renewed.
pub const LEASE_TERM: Duration = Duration::from_secs(30);

/// This process's name as a lease holder: host, process id and a random
/// part (two servers on one host, or a restarted one, never share it).
fn lease_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut nonce = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut nonce);
    format!("{host}/{}/{}", std::process::id(), hex::encode(nonce))
}

/// Whether this server holds the audit lease, by its own clock: until a
/// little before the term that its last successful renewal asked for (from
/// when it asked), so a renewal that hangs or a paused process stops
/// auditing before another server can take the lease over.
#[derive(Default)]
struct Lead(std::sync::Mutex<Option<tokio::time::Instant>>);

/// Room on this server's side of a lease's end (the registry counts whole
/// seconds from when it was asked).
const LEASE_MARGIN: Duration = Duration::from_secs(2);

impl Lead {
    fn set(&self, until: Option<tokio::time::Instant>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    fn holds(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }
}

/// Takes and renews the audit lease for `holder`, keeping `lead` current;
/// `gained` is notified when the lease comes to this server. A registry
/// error counts as not leading (the lease may end).
async fn keep_lease(
    registry: Arc<dyn crate::registry::Registry>,
    holder: String,
    lead: Arc<Lead>,
    gained: Arc<tokio::sync::Notify>,
) {
    let mut was_leading = false;
    loop {
        let asked = tokio::time::Instant::now();
        let until = unix_now() + LEASE_TERM.as_secs() as i64;
        let now_leading = match registry.acquire_lease(AUDIT_LEASE, &holder, until).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "rotation: cannot renew the audit lease");
                false
            }
        };
        lead.set(now_leading.then(|| asked + LEASE_TERM - LEASE_MARGIN));
        if now_leading != was_leading {
            if now_leading {
                tracing::info!(holder = %holder, "rotation: this server leads the audit");
                gained.notify_one();
            } else {
                tracing::info!(holder = %holder, "rotation: another server leads the audit");
            }
            was_leading = now_leading;
        }
        tokio::time::sleep(if now_leading { LEASE_RENEW } else { LEASE_TRY }).await;
    }
}

/// How often the orchestrator checks that its own MQTT certificate has
/// enough life left (it reconnects with a fresh one when not).
const CLIENT_CERT_CHECK: Duration = Duration::from_secs(3600);

/// Connects to the broker and runs the orchestrator until the process ends:
/// the scheduled audit, and the handlers for device answers. `pair_source`
/// yields the orchestrator's client certificate (reissuing it when near its
/// end); it is asked again every hour.
pub async fn run<F>(
    state: Arc<AppState>,
    config: RotationConfig,
    trust_pem: Vec<u8>,
    pair_source: impl Fn() -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<mqtt::ClientPair>>,
{
    let mut pair = pair_source().await?;
    let (client, mut events) = mqtt::connect(&config, &config.client_id, false, &trust_pem, &pair)?;
    let webhook = config.webhook.as_deref().map(Webhook::new).transpose()?;
    state
        .metrics
        .rotation_enabled
        .store(true, Ordering::Relaxed);
    let orchestrator = Arc::new(Orchestrator {
        topics: Topics::new(&config.topic_prefix),
        state,
        config,
        client: std::sync::RwLock::new(client),
        webhook,
        locks: KeyedLocks::default(),
        trust_pem: trust_pem.clone(),
        pair: mqtt::ClientPair {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
        },
    });
    tokio::spawn(orchestrator.clone().audit_schedule());
    let handlers = Arc::new(tokio::sync::Semaphore::new(HANDLER_CONCURRENCY));
    let mut failures = 0u32;
    let mut cert_check = tokio::time::interval(CLIENT_CERT_CHECK);
    cert_check.tick().await;
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = cert_check.tick() => {
                let fresh = pair_source().await?;
                if mqtt::fingerprint(&fresh) != mqtt::fingerprint(&pair) {
                    // The persistent session keeps subscriptions and queued answers.
                    tracing::info!("rotation: reconnecting with a renewed MQTT client certificate");
                    let _ = orchestrator.client().disconnect().await;
                    let (client, fresh_events) = mqtt::connect(
                        &orchestrator.config,
                        &orchestrator.config.client_id,
                        false,
                        &trust_pem,
                        &fresh,
                    )?;
                    *orchestrator.client.write().unwrap_or_else(|e| e.into_inner()) = client;
                    events = fresh_events;
                    pair = fresh;
                }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                orchestrator
                    .state
                    .metrics
                    .broker_connected
                    .store(true, Ordering::Relaxed);
                tracing::info!(broker = %orchestrator.config.broker, "rotation: connected to the MQTT broker");
                let filters = [Step::CsrRes, Step::CrtAck, Step::CrtErr].map(|step| {
                    rumqttc::SubscribeFilter::new(
                        orchestrator.topics.all_clients(step),
                        QoS::AtLeastOnce,
                    )
                });
                if let Err(e) = orchestrator.client().try_subscribe_many(filters) {
                    tracing::error!(error = %e, "rotation: cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Ok(permit) = handlers.clone().acquire_owned().await else {
                    continue;
                };
                let orchestrator = orchestrator.clone();
                tokio::spawn(async move {
                    orchestrator.handle(&publish.topic, &publish.payload).await;
                    drop(permit);
                });
            }
            Ok(_) => {}
            Err(e) => {
                orchestrator
                    .state
                    .metrics
                    .broker_connected
                    .store(false, Ordering::Relaxed);
                failures += 1;
                let wait = Duration::from_secs(1 << (failures - 1).min(4));
                tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "rotation: MQTT connection failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Conditional writes of one transition before it counts as moved on.
const TRANSITION_TRIES: usize = 5;

/// Writes `change` applied to the record `read`, conditionally (see
/// [`Registry::replace_rotation`]). When another writer changed the record
/// meanwhile and `still` holds for the fresh copy (it only touched what this
/// transition does not depend on, such as the attempt count), the change is
/// applied to that copy and written again. `Some(written)`, or `None` when
/// the record moved on: another server or request handled this step.
async fn transition(
    registry: &dyn crate::registry::Registry,
    mut read: Rotation,
    still: impl Fn(&Rotation) -> bool,
    change: impl Fn(&mut Rotation),
) -> Result<Option<Rotation>, crate::registry::RegistryError> {
    for _ in 0..TRANSITION_TRIES {
        let mut next = read.clone();
        change(&mut next);
        if registry.replace_rotation(&read, next.clone()).await? {
            return Ok(Some(next));
        }
        match registry.rotation(&read.client_id).await? {
            Some(fresh) if still(&fresh) => read = fresh,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Whether `fresh` is still the rotation `read` was, in what a device
/// message acts on: the same certificate, state and successor.
fn same_step(read: &Rotation) -> impl Fn(&Rotation) -> bool + '_ {
    move |fresh| {
        fresh.serial == read.serial
            && fresh.state == read.state
            && fresh.new_serial == read.new_serial
    }
}

impl Orchestrator {
    /// The current MQTT client (replaced when the orchestrator reconnects
    /// with a renewed certificate).
    fn client(&self) -> AsyncClient {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Audits every `audit_interval` while this server leads: of several
    /// servers sharing a registry, only the holder of the [`AUDIT_LEASE`]
    /// audits and publishes `csr_req` (every server handles answers). The
    /// lease is renewed every [`LEASE_RENEW`] by a task of its own, so a long
    /// audit keeps it; it ends [`LEASE_TERM`] after its last renewal, so at
    /// most that long after its holder stopped, and the others (trying every
    /// [`LEASE_TRY`]) take it over then and audit at once.
    async fn audit_schedule(self: Arc<Self>) {
        let holder = lease_holder();
        let lead = Arc::new(Lead::default());
        let gained = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(keep_lease(
            self.state.registry.clone(),
            holder,
            lead.clone(),
            gained.clone(),
        ));
        // A short pause lets the first connection come up (and the lease be taken).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let check = self.config.audit_interval.min(LEASE_RENEW);
        let mut last_audit: Option<tokio::time::Instant> = None;
        loop {
            let due = last_audit.is_none_or(|at| at.elapsed() >= self.config.audit_interval);
            if !lead.holds() {
                // Audit at once when the lead comes (back) to this server.
                last_audit = None;
            } else if due {
                last_audit = Some(tokio::time::Instant::now());
                if let Err(e) = self.scheduled_audit().await {
                    tracing::warn!(error = %e, "rotation: audit failed; the next one retries");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(check) => {}
                _ = gained.notified() => {}
            }
        }
    }

    /// Asks expiring devices for CSRs and sends unacknowledged certificates again.
    async fn scheduled_audit(&self) -> anyhow::Result<()> {
        let registry = &*self.state.registry;
        let audit_client = format!("{}-audit", self.config.client_id);
        let report = confirmed_audit(
            registry,
            &self.config,
            &audit_client,
            &self.trust_pem,
            &self.pair,
            Some(&self.locks),
            self.config.expiring_within,
            None,
        )
        .await?
        .report;
        for _ in &report.requested {
            self.state.metrics.rotation_event("requested");
        }
        let now = unix_now();
        let rotations: HashMap<String, Rotation> = registry
            .list_rotations(usize::MAX)
            .await?
            .into_iter()
            .map(|r| (r.client_id.clone(), r))
            .collect();
        for rotation in audit::unacknowledged(&rotations, now) {
            let _guard = self.locks.lock(&rotation.client_id).await;
            // Re-read under the lock: the device may have answered meanwhile.
            let Some(read) = registry.rotation(&rotation.client_id).await? else {
                continue;
            };
            if read.state != RotationState::Issued || read.next_attempt_at > now {
                continue;
            }
            let Some(new_serial) = read.new_serial.clone() else {
                continue;
            };
            let retry_after = self.config.retry_after;
            let due = |fresh: &Rotation| same_step(&read)(fresh) && fresh.next_attempt_at <= now;
            let Some(rotation) = transition(registry, read.clone(), due, |r| {
                r.attempts += 1;
                r.updated_at = now;
                r.next_attempt_at = audit::next_attempt_at(now, r.attempts, retry_after);
            })
            .await?
            else {
                continue; // acknowledged (or moved on) through another server meanwhile
            };
            // Not a successor the device refused meanwhile (taken back).
            let Some(successor) = registry
                .find_by_serial(&new_serial)
                .await?
                .filter(|s| s.state == CertState::Active)
            else {
                continue;
            };
            self.send_certificate(&rotation.client_id, &successor)
                .await?;
            self.state.metrics.rotation_event("resent");
            tracing::info!(client_id = %rotation.client_id, serial = %new_serial, "rotation: no crt_ack yet; certificate sent again");
        }
        if !report.requested.is_empty() || report.deferred > 0 {
            tracing::info!(
                requested = report.requested.len(),
                backing_off = report.backing_off,
                deferred = report.deferred,
                "rotation audit done"
            );
        }
        Ok(())
    }

    /// Dispatches one device message. Every refusal is logged and counted.
    async fn handle(&self, topic: &str, payload: &[u8]) {
        let Some((client_id, step)) = self.topics.parse(topic) else {
            return;
        };
        let _guard = self.locks.lock(client_id).await;
        let outcome = match step {
            Step::CsrRes => self.on_csr(client_id, payload).await,
            Step::CrtAck => self.on_ack(client_id, payload).await,
            Step::CrtErr => self.on_error(client_id, payload).await,
            Step::CsrReq | Step::CrtRes => Ok(()),
        };
        if let Err(e) = outcome {
            self.state.metrics.rotation_event("refused");
            tracing::warn!(client_id, step = step.as_str(), error = %format!("{e:#}"), "rotation: message refused");
        }
    }

    /// `csr_res`: issue the successor through the enrollment service.
    async fn on_csr(&self, client_id: &str, payload: &[u8]) -> anyhow::Result<()> {
        let registry = &*self.state.registry;
        let rotation = self.waiting_rotation(client_id).await?;
        let response: CsrResponse = serde_json::from_slice(payload).context("csr_res payload")?;
        ensure_current(response.serial.as_deref(), &rotation)?;
        let old = self.device_certificate(client_id, &rotation.serial).await?;
        let label = self
            .state
            .labels
            .get(&old.certificate.label)
            .with_context(|| {
                format!("label `{}` is no longer configured", old.certificate.label)
            })?;
        let issued = async {
            let (_, der) = est_wire::pem::decode(response.csr.as_bytes())
                .map_err(|e| EstError::BadRequest(format!("CSR is not PEM: {e}")))?;
            let csr = Csr::from_der(&der)?;
            self.state.enroll.renew_for_rotation(label, old, csr).await
        }
        .await;
        let enrolled = match issued {
            Ok(enrolled) => enrolled,
            Err(e) => {
                // Every server receives every device message, so another
                // one may have issued for this same CSR a moment ago (the
                // predecessor has a successor now) or be issuing now (a
                // conflict). The record is then that server's to write:
                // saving the copy read above would undo its `Issued`.
                let renewed = matches!(e, EstError::Conflict { .. })
                    || registry
                        .find_by_serial(&rotation.serial)
                        .await?
                        .is_some_and(|old| old.successor.is_some());
                if renewed {
                    self.duplicate(client_id, "csr_res", &e.to_string());
                    return Ok(());
                }
                // The device may answer again; the record keeps the reason.
                let reason = e.to_string();
                let noted = transition(registry, rotation.clone(), same_step(&rotation), |r| {
                    r.last_error = Some(reason.clone());
                    r.updated_at = unix_now();
                })
                .await?;
                if noted.is_none() {
                    self.duplicate(client_id, "csr_res", &reason);
                    return Ok(());
                }
                anyhow::bail!("CSR refused: {e}");
            }
        };
        let successor = registry
            .find_by_serial(&enrolled.serial)
            .await?
            .context("the issued certificate is not recorded")?;
        if rotation.state == RotationState::Issued
            && rotation.new_serial.as_deref() == Some(enrolled.serial.as_str())
        {
            // The successor recorded already, asked for again (the device
            // lost the crt_res, or this server read the record just after
            // another one recorded and sent it): sent again, nothing rewritten.
            self.send_certificate(client_id, &successor).await?;
            self.state.metrics.rotation_event("resent");
            tracing::info!(client_id, serial = %enrolled.serial, "rotation: successor sent again");
            return Ok(());
        }
        let now = unix_now();
        let retry_after = self.config.retry_after;
        let recorded = transition(registry, rotation.clone(), same_step(&rotation), |r| {
            r.state = RotationState::Issued;
            r.new_serial = Some(enrolled.serial.clone());
            r.updated_at = now;
            r.next_attempt_at = audit::next_attempt_at(now, r.attempts, retry_after);
        })
        .await?;
        if recorded.is_none() {
            let now_recorded = registry.rotation(client_id).await?;
            if now_recorded.as_ref().is_some_and(|r| {
                r.state != RotationState::Requested
                    && r.new_serial.as_deref() == Some(enrolled.serial.as_str())
            }) {
                // Another server recorded (and sent) this successor first.
                self.duplicate(
                    client_id,
                    "csr_res",
                    "the rotation record changed meanwhile",
                );
                return Ok(());
            }
            anyhow::bail!(
                "successor {} was issued but the rotation record moved on meanwhile ({}); it is not sent",
                enrolled.serial,
                now_recorded.map_or("gone".to_owned(), |r| r.state.to_string())
            );
        }
        self.send_certificate(client_id, &successor).await?;
        self.state.metrics.rotation_event("issued");
        tracing::info!(client_id, serial = %enrolled.serial, renewed = ?enrolled.renewed, "rotation: successor issued and sent");
        Ok(())
    }

    /// A device message another server (or request) already handled: the
    /// rotation record is left to it.
    fn duplicate(&self, client_id: &str, step: &str, reason: &str) {
        self.state.metrics.rotation_event("duplicate");
        tracing::info!(
            client_id,
            step,
            reason,
            "rotation: {step} handled by another server or request"
        );
    }

    /// `crt_ack`: the device uses the successor; retire the predecessor now.
    async fn on_ack(&self, client_id: &str, payload: &[u8]) -> anyhow::Result<()> {
        let registry = &*self.state.registry;
        let ack: CertificateAck = serde_json::from_slice(payload).context("crt_ack payload")?;
        let rotation = registry
            .rotation(client_id)
            .await?
            .context("no rotation for this client")?;
        if rotation.state == RotationState::Acknowledged
            && rotation.new_serial.as_deref() == Some(ack.serial.as_str())
        {
            return Ok(()); // a redelivered acknowledgement
        }
        if rotation.state != RotationState::Issued
            || rotation.new_serial.as_deref() != Some(ack.serial.as_str())
        {
            anyhow::bail!(
                "crt_ack for {} does not match the rotation ({}, new serial {:?})",
                ack.serial,
                rotation.state,
                rotation.new_serial
            );
        }
        let successor = self.device_certificate(client_id, &ack.serial).await?;
        registry
            .mark_predecessor_proven(
                &successor.certificate.serial,
                &successor.certificate.fingerprint,
            )
            .await?;
        if let Some(old) = registry.find_by_serial(&rotation.serial).await? {
            if old.retired_at.is_none() {
                if let Some(label) = self.state.labels.get(&old.certificate.label) {
                    crate::authority::retirement::retire_one(
                        registry,
                        label.backend.as_ref(),
                        &old,
                    )
                    .await;
                }
            }
        }
        let now = unix_now();
        let took = now - rotation.requested_at;
        let acknowledged = transition(registry, rotation.clone(), same_step(&rotation), |r| {
            r.state = RotationState::Acknowledged;
            r.last_error = None;
            r.updated_at = now;
        })
        .await?;
        if acknowledged.is_none() {
            // Another server recorded this acknowledgement (or the record
            // moved on); the retirement above is the same either way.
            self.duplicate(
                client_id,
                "crt_ack",
                "the rotation record changed meanwhile",
            );
            return Ok(());
        }
        self.state.metrics.rotation_event("acknowledged");
        tracing::info!(client_id, serial = %ack.serial, seconds = took, "rotation complete: device acknowledged, predecessor retired");
        Ok(())
    }

    /// `crt_err`: the device keeps its old certificate; undo and report.
    async fn on_error(&self, client_id: &str, payload: &[u8]) -> anyhow::Result<()> {
        let registry = &*self.state.registry;
        let report: CertificateError =
            serde_json::from_slice(payload).context("crt_err payload")?;
        let rotation = self.waiting_rotation(client_id).await?;
        ensure_current(report.serial.as_deref(), &rotation)?;
        if let (RotationState::Issued, Some(new_serial)) = (rotation.state, &rotation.new_serial) {
            match registry
                .reinstate_predecessor(&rotation.serial, new_serial)
                .await
            {
                Ok(()) => {
                    if let Some(abandoned) = registry.find_by_serial(new_serial).await? {
                        self.take_back(&abandoned).await;
                    }
                }
                // Already used, retired or renewed since: the failure is
                // still recorded and reported, the registry left as it is.
                Err(e) => {
                    tracing::warn!(client_id, serial = %rotation.serial, error = %e, "rotation: the old certificate cannot be reinstated")
                }
            }
        }
        let now = unix_now();
        let error: String = report.error.chars().take(500).collect();
        let retry_after = self.config.retry_after;
        let failed = transition(registry, rotation.clone(), same_step(&rotation), |r| {
            r.state = RotationState::Failed;
            r.last_error = Some(error.clone());
            r.updated_at = now;
            r.next_attempt_at = audit::next_attempt_at(now, r.attempts, retry_after);
        })
        .await?;
        let Some(rotation) = failed else {
            // Another server recorded this report (and notifies).
            self.duplicate(
                client_id,
                "crt_err",
                "the rotation record changed meanwhile",
            );
            return Ok(());
        };
        self.state.metrics.rotation_event("failed");
        tracing::warn!(client_id, serial = %rotation.serial, error = %error, attempts = rotation.attempts, "rotation failed on the device; the old certificate stays active");
        if let Some(webhook) = &self.webhook {
            webhook.notify(serde_json::json!({
                "event": "rotation_failed",
                "clientId": client_id,
                "serial": rotation.serial,
                "newSerial": rotation.new_serial,
                "error": error,
                "attempts": rotation.attempts,
            }));
        }
        Ok(())
    }

    /// Retires a successor the device refused in its CA (AWS: deactivated and
    /// deleted; local CA: it is revoked in the registry, so the CRL lists it).
    async fn take_back(&self, abandoned: &CertificateRecord) {
        let Some(backend_ref) = &abandoned.certificate.backend_ref else {
            return;
        };
        if let Some(label) = self.state.labels.get(&abandoned.certificate.label) {
            let binding =
                crate::authority::retirement::binding_of(&*self.state.registry, abandoned).await;
            if let Err(e) = label.backend.retire(backend_ref, binding.as_ref()).await {
                self.state
                    .metrics
                    .backend_error(&abandoned.certificate.label);
                tracing::warn!(serial = %abandoned.certificate.serial, error = %e, "could not retire the refused certificate in its CA");
            }
        }
    }

    /// The rotation of `client_id`, which must be waiting for the device.
    async fn waiting_rotation(&self, client_id: &str) -> anyhow::Result<Rotation> {
        let rotation = self
            .state
            .registry
            .rotation(client_id)
            .await?
            .context("no rotation was requested for this client")?;
        match rotation.state {
            RotationState::Requested | RotationState::Issued => Ok(rotation),
            other => anyhow::bail!("the rotation is {other}, not waiting for the device"),
        }
    }

    /// The certificate `serial`, which must belong to `client_id` (its CN):
    /// a message on one client's topic can only concern that client's own
    /// certificate.
    async fn device_certificate(
        &self,
        client_id: &str,
        serial: &str,
    ) -> anyhow::Result<CertificateRecord> {
        let record = self
            .state
            .registry
            .find_by_serial(serial)
            .await?
            .with_context(|| format!("certificate {serial} is not in the registry"))?;
        if audit::client_id_of(&record).as_deref() != Some(client_id) {
            anyhow::bail!("certificate {serial} does not belong to client {client_id}");
        }
        if record.state == CertState::Revoked {
            anyhow::bail!("certificate {serial} is revoked");
        }
        Ok(record)
    }

    /// Publishes `crt_res` with the certificate and its label's chain.
    async fn send_certificate(
        &self,
        client_id: &str,
        certificate: &CertificateRecord,
    ) -> anyhow::Result<()> {
        let label = self
            .state
            .labels
            .get(&certificate.certificate.label)
            .context("label no longer configured")?;
        let chain = label.backend.ca_certs().await?;
        let response = CertificateResponse {
            certificate_pem: est_wire::pem::encode("CERTIFICATE", &certificate.certificate.der),
            ca_pem: chain
                .iter()
                .map(est_wire::pem::certificate_to_pem)
                .collect(),
        };
        self.client()
            .publish(
                self.topics.topic(client_id, Step::CrtRes),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&response)?,
            )
            .await
            .context("publish crt_res")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lead_ends_at_its_own_deadline_without_a_renewal() {
        let lead = Lead::default();
        assert!(!lead.holds(), "nobody leads before a lease was taken");
        lead.set(Some(
            tokio::time::Instant::now() + Duration::from_millis(100),
        ));
        assert!(lead.holds());
        // No renewal came (it hangs, or the process was paused): the lead
        // ends by this server's clock, before the registry's lease does.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!lead.holds());
        lead.set(Some(
            tokio::time::Instant::now() + LEASE_TERM - LEASE_MARGIN,
        ));
        assert!(lead.holds());
        lead.set(None);
        assert!(!lead.holds(), "a failed renewal ends the lead at once");
    }
}
