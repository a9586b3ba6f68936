//! The registry: every issued certificate, every device of the fleet, and
//! enrollments held for approval.
//!
//! One trait, [`Registry`], with no HTTP in it; [`sqlite::SqliteRegistry`] is
//! the embedded default. Every transition is a conditional write, so "one
//! token → one certificate" and "one renewal per certificate" hold under
//! concurrent requests and across server processes sharing the store.

#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "aws")]
pub use dynamodb::DynamoDbRegistry;
pub use postgres::{PostgresOptions, PostgresRegistry};
pub use sqlite::SqliteRegistry;

/// Lifecycle state of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// The device's current certificate.
    Active,
    /// Replaced by a successor; no longer accepted for renewal.
    Superseded,
    /// Revoked by an operator.
    Revoked,
}

impl CertState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Superseded => "superseded",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a stored name (unknown names read as revoked, the safe side).
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "superseded" => Self::Superseded,
            _ => Self::Revoked,
        }
    }
}

impl std::fmt::Display for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate about to be recorded.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Serial, lower-case hex.
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// Label it was issued under (`""` for the unlabelled path).
    pub label: String,
    /// Subject, RFC 4514 text.
    pub subject: String,
    /// SubjectAltNames, `DNS:…, IP:…`.
    pub san: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// How the client authenticated (`basic:estuser`, `bootstrap-cert:CN=…`, `identity-cert:<serial>`).
    pub auth: String,
    /// Serial of the certificate this one renews.
    pub predecessor: Option<String>,
    /// The device (registry entry) this certificate belongs to, if any.
    pub device_id: Option<String>,
    /// The CA backend's id for it (AWS certificate id), if any.
    pub backend_ref: Option<String>,
    /// The identity it belongs to (`device:<id>`, `cert:<serial>`; see
    /// `authority::lineage`); `None` for certificates recorded before lineages.
    pub owner: Option<String>,
    /// Its lineage key (`authority::lineage::lineage_key`); `None` for
    /// certificates recorded before lineages.
    pub lineage: Option<String>,
    /// The certificate.
    pub der: Vec<u8>,
}

/// A recorded certificate.
#[derive(Debug, Clone)]
pub struct CertificateRecord {
    /// What was recorded at issuance.
    pub certificate: NewCertificate,
    /// Current state.
    pub state: CertState,
    /// Serial of the successor, once renewed.
    pub successor: Option<String>,
    /// When it was recorded, Unix seconds.
    pub issued_at: i64,
    /// When it was retired in its CA (after being superseded), Unix seconds.
    pub retired_at: Option<i64>,
    /// The successor has authenticated, so this certificate may be retired.
    pub successor_proven: bool,
}

impl CertificateRecord {
    /// Whether a renewal request authenticated by this superseded certificate
    /// may be answered with its successor again: the successor was never used
    /// and this certificate is not yet retired. That is a renewal whose
    /// response was lost (a crash or a dropped connection between issuance
    /// and installation); the device retries with the key it sent before and
    /// gets the same certificate, and nothing new is issued.
    pub fn may_replay_renewal(&self) -> bool {
        self.state == CertState::Superseded && !self.successor_proven && self.retired_at.is_none()
    }
}

/// State of a request held for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// Waiting for an operator.
    Pending,
    /// Approved; the next retry is issued.
    Approved,
    /// Refused; retries get 403.
    Rejected,
    /// Issued; retries get the same certificate again.
    Issued,
}

impl PendingState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Issued => "issued",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Self {
        match s {
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "issued" => Self::Issued,
            _ => Self::Pending,
        }
    }
}

impl std::fmt::Display for PendingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An enrollment held for approval.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    /// SHA-256 of label + CSR, hex: the client's retry carries the same CSR.
    pub id: String,
    /// Label.
    pub label: String,
    /// Requested subject.
    pub subject: String,
    /// Who asked.
    pub requested_by: String,
    /// Decision so far.
    pub state: PendingState,
    /// First seen, Unix seconds.
    pub created_at: i64,
    /// Serial issued for it, once issued.
    pub issued_serial: Option<String>,
}

/// Where a server-driven (MQTT) rotation of one device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationState {
    /// `csr_req` published; waiting for the device's CSR.
    Requested,
    /// Successor issued and sent (`crt_res`); waiting for `crt_ack`.
    Issued,
    /// The device acknowledged; the predecessor is retired.
    Acknowledged,
    /// The device reported `crt_err`; the old certificate stays (a refused
    /// CSR leaves the rotation `Requested`, with the reason in `last_error`).
    Failed,
}

impl RotationState {
    /// Every state, for metrics.
    pub const ALL: [RotationState; 4] = [
        Self::Requested,
        Self::Issued,
        Self::Acknowledged,
        Self::Failed,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Issued => "issued",
            Self::Acknowledged => "acknowledged",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name (unknown names read as failed).
    pub fn parse(s: &str) -> Self {
        match s {
            "requested" => Self::Requested,
            "issued" => Self::Issued,
            "acknowledged" => Self::Acknowledged,
            _ => Self::Failed,
        }
    }
}

impl std::fmt::Display for RotationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rotation record of one device (MQTT client id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// MQTT client id: the certificate's common name.
    pub client_id: String,
    /// Serial of the certificate being replaced.
    pub serial: String,
    /// Where it stands.
    pub state: RotationState,
    /// Requests sent to the device for this certificate (`csr_req`, and
    /// `crt_res` sent again while no `crt_ack` came).
    pub attempts: u32,
    /// The last error (device `crt_err` or a refused `csr_res`).
    pub last_error: Option<String>,
    /// Serial of the successor, once issued.
    pub new_serial: Option<String>,
    /// First `csr_req` for this certificate, Unix seconds.
    pub requested_at: i64,
    /// Last change, Unix seconds.
    pub updated_at: i64,
    /// The next audit may ask again from then on, Unix seconds.
    pub next_attempt_at: i64,
}

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The predecessor was renewed or revoked by someone else first.
    #[error("certificate {0} is no longer active")]
    PredecessorNotActive(String),
    /// The device's one-time token was already used.
    #[error("the enrollment token of device {0} has already been used")]
    TokenUsed(String),
    /// Another request holds the device's enrollment right now.
    #[error("device {0} is being enrolled by a concurrent request")]
    DeviceBusy(String),
    /// The device is disabled.
    #[error("device {0} is disabled")]
    DeviceDisabled(String),
    /// The reservation was lost (expired and taken over) before completion.
    #[error("the enrollment reservation of device {0} was lost")]
    ReservationLost(String),
    /// Another certificate became the live one of this lineage first (a
    /// concurrent request for the same kind of certificate).
    #[error("another certificate of the same lineage was recorded first")]
    LineageBusy,
    /// No such row.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed.
    #[error("registry: {0}")]
    Database(String),
    /// The store cannot be reached right now (connection refused or lost,
    /// timeout): the request may be retried.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The store was migrated by a newer version of this server.
    #[error(
        "the registry schema is version {found}, newer than this server knows ({known}): \
         upgrade est-server (or restore the database)"
    )]
    SchemaTooNew {
        /// Version found in the store.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// The blocking task died.
    #[error("registry task failed: {0}")]
    Task(String),
}

/// Lifecycle state of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Created; its one-time token has not been used.
    Unused,
    /// Enrolled; the token is burned.
    Enrolled,
    /// Refused for enrollment and renewal.
    Disabled,
}

impl DeviceState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unused => "unused",
            Self::Enrolled => "enrolled",
            Self::Disabled => "disabled",
        }
    }

    /// Parses a stored name (unknown names read as disabled, the safe side).
    pub fn parse(s: &str) -> Self {
        match s {
            "unused" => Self::Unused,
            "enrolled" => Self::Enrolled,
            _ => Self::Disabled,
        }
    }
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device to add to the registry.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Device id: serial number or product id (also the certificate CN).
    pub id: String,
    /// SHA-256 of the one-time token, hex. The token itself is never stored.
    pub token_hash: String,
    /// Label the device enrolls on (`""` for the unlabelled path).
    pub label: String,
    /// AWS IoT thing name, when it differs from the id.
    pub thing_name: Option<String>,
    /// AWS IoT policy for this device, overriding the label's.
    pub policy: Option<String>,
    /// The device may obtain subordinate CA certificates (an Azure IoT Edge
    /// Edge CA) on labels that issue them (`devices add --edge-ca`).
    pub edge_ca: bool,
}

/// A device as recorded.
#[derive(Debug, Clone)]
pub struct Device {
    /// What was added.
    pub device: NewDevice,
    /// Current state.
    pub state: DeviceState,
    /// When it was added, Unix seconds.
    pub created_at: i64,
    /// When it first enrolled, Unix seconds.
    pub enrolled_at: Option<i64>,
    /// Serial of its current certificate.
    pub cert_serial: Option<String>,
    /// Backend id of its current certificate (AWS certificate id), if any.
    pub cert_id: Option<String>,
    /// SHA-256 of its current certificate, hex.
    pub cert_fingerprint: Option<String>,
    /// End of validity of its current certificate, Unix seconds.
    pub cert_not_after: Option<i64>,
    /// Failed token attempts since the last success.
    pub failed_attempts: u32,
    /// Token attempts are refused until then, Unix seconds.
    pub locked_until: Option<i64>,
}

/// Burns a device's token in the same transaction that records its certificate.
#[derive(Debug, Clone)]
pub struct DeviceClaim {
    /// The device.
    pub device_id: String,
    /// The reservation owner (request id) that holds the device.
    pub owner: String,
    /// Backend id of the certificate (AWS certificate id), if any.
    pub cert_id: Option<String>,
}

/// The operations the server and the operator CLI need from a store.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// Records a new certificate, which becomes the live certificate of its
    /// lineage (`certificate.owner` + `certificate.lineage`, when set): with
    /// `supersedes`, no other certificate may be live in it; without, none at
    /// all (else [`RegistryError::LineageBusy`]). With `supersedes`, that certificate must still
    /// be active and becomes superseded (and the successor inherits its device);
    /// with `pending_id`, that request is marked issued; with `claim`, the
    /// device must still be reserved by the claim's owner and becomes enrolled.
    /// All of it happens in one transaction or not at all.
    async fn record_issued(
        &self,
        certificate: NewCertificate,
        supersedes: Option<String>,
        pending_id: Option<String>,
        claim: Option<DeviceClaim>,
    ) -> Result<(), RegistryError>;

    /// The certificate a client presented: the one with this serial, provided
    /// its SHA-256 fingerprint is `fingerprint` (a certificate from another
    /// issuer that happens to share the serial is not ours). Looked up by
    /// serial, so no registry needs an index of random fingerprints.
    async fn find_presented(
        &self,
        serial: &str,
        fingerprint: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        Ok(self
            .find_by_serial(serial)
            .await?
            .filter(|record| record.certificate.fingerprint == fingerprint))
    }

    /// The active certificate of `owner` whose lineage key is `lineage`, if any.
    async fn live_in_lineage(
        &self,
        owner: &str,
        lineage: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError>;

    /// Sets whether a device may obtain subordinate CA certificates.
    async fn set_device_edge_ca(&self, id: &str, allowed: bool) -> Result<(), RegistryError>;

    /// The certificate with this serial (lower-case hex).
    async fn find_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError>;

    /// Certificates, newest first.
    async fn list_certificates(
        &self,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError>;

    /// Active certificates whose validity ends before `before` (Unix seconds), soonest first.
    async fn expiring_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError>;

    /// How many active certificates end at or before `before` (Unix seconds).
    async fn count_expiring_before(&self, before: i64) -> Result<u64, RegistryError>;

    /// Marks a certificate revoked.
    async fn revoke(&self, serial: &str) -> Result<(), RegistryError>;

    /// The active certificate with this serial and fingerprint authenticated:
    /// its superseded predecessor is now obsolete and may be retired.
    async fn mark_predecessor_proven(
        &self,
        serial: &str,
        fingerprint: &str,
    ) -> Result<(), RegistryError>;

    /// Superseded, not yet retired certificates of `label` whose successor was
    /// proven, or that were superseded before `superseded_before`.
    async fn retirement_candidates(
        &self,
        label: &str,
        superseded_before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError>;

    /// Records that a certificate was retired in its CA.
    async fn mark_retired(&self, serial: &str) -> Result<(), RegistryError>;

    /// Certificates of the local CA (no backend id) that are revoked or
    /// retired, with when (Unix seconds): what its CRL lists.
    async fn local_revocations(&self) -> Result<Vec<(String, i64)>, RegistryError>;

    /// The pending request `id`, if any.
    async fn pending(&self, id: &str) -> Result<Option<PendingRequest>, RegistryError>;

    /// Records a new pending request (a no-op when it already exists).
    async fn add_pending(&self, request: PendingRequest) -> Result<(), RegistryError>;

    /// Approves or rejects a pending request (only while it is still pending).
    async fn decide_pending(&self, id: &str, approve: bool) -> Result<(), RegistryError>;

    /// All pending requests, oldest first.
    async fn list_pending(&self) -> Result<Vec<PendingRequest>, RegistryError>;

    /// Adds devices whose id is not yet known (in one transaction); returns,
    /// for each input, whether it was added (false: the id already existed).
    async fn add_devices(&self, devices: Vec<NewDevice>) -> Result<Vec<bool>, RegistryError>;

    /// One device.
    async fn device(&self, id: &str) -> Result<Option<Device>, RegistryError>;

    /// Devices ordered by id, starting after `after`.
    async fn list_devices(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Device>, RegistryError>;

    /// Every certificate issued to a device, newest first.
    async fn device_certificates(&self, id: &str) -> Result<Vec<CertificateRecord>, RegistryError>;

    /// Disables a device (no enrollment, no renewal).
    async fn disable_device(&self, id: &str) -> Result<(), RegistryError>;

    /// Counts a failed token attempt; the `lock_after`-th locks the device for `lock_secs`.
    async fn record_failed_attempt(
        &self,
        id: &str,
        lock_after: u32,
        lock_secs: i64,
    ) -> Result<(), RegistryError>;

    /// Reserves an unused device for one enrollment until `lease_until`, if
    /// `token_hash` is its token and no live reservation exists.
    async fn reserve_device(
        &self,
        id: &str,
        token_hash: &str,
        owner: &str,
        lease_until: i64,
    ) -> Result<(), RegistryError>;

    /// Gives a reservation back (the token stays usable).
    async fn release_device(&self, id: &str, owner: &str) -> Result<(), RegistryError>;

    /// Undoes a renewal the device could not use: `successor` (which must
    /// still be active, never used, and the successor of `predecessor`) becomes revoked and
    /// `predecessor` (superseded, not retired) active again, with its device
    /// pointing back at it.
    async fn reinstate_predecessor(
        &self,
        predecessor: &str,
        successor: &str,
    ) -> Result<(), RegistryError>;

    /// The rotation record of `client_id`, if any.
    async fn rotation(&self, client_id: &str) -> Result<Option<Rotation>, RegistryError>;

    /// Creates or replaces the rotation record of `rotation.client_id`.
    async fn save_rotation(&self, rotation: Rotation) -> Result<(), RegistryError>;

    /// Replaces the rotation record of `rotation.client_id` only while it is
    /// still `expected` (every field as read): `false`, and nothing written,
    /// when another server or command changed it meanwhile.
    async fn replace_rotation(
        &self,
        expected: &Rotation,
        rotation: Rotation,
    ) -> Result<bool, RegistryError>;

    /// Rotation records ordered by client id, at most `limit`.
    async fn list_rotations(&self, limit: usize) -> Result<Vec<Rotation>, RegistryError>;

    /// Takes the lease `name` for `holder` until `until` (Unix seconds), or
    /// renews it when `holder` already holds it; true when `holder` holds it
    /// now. A lease its holder did not renew before its end is taken over.
    /// Decided by the store in one conditional write, so of several servers
    /// exactly one holds a lease at a time.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: i64,
    ) -> Result<bool, RegistryError>;

    /// Ends the lease `name` if `holder` holds it (another server may take it at once).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), RegistryError>;
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

/// `at` as seconds since the Unix epoch.
pub fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
