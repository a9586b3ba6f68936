//! The registry of issued certificates and pending requests (SQLite).
//!
//! Every certificate is written here — in a committed, fsynced transaction —
//! before its response is sent. Renewal is one transaction that marks the
//! predecessor `superseded` only if it is still `active` and inserts the
//! successor, so two concurrent renewals of one certificate cannot both win.
//! Look-ups by fingerprint (client certificates), serial and expiry are indexed.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

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
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Superseded => "superseded",
            Self::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Self {
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
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Issued => "issued",
        }
    }

    fn parse(s: &str) -> Self {
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

/// Why a registry write was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The predecessor was renewed or revoked by someone else first.
    #[error("certificate {0} is no longer active")]
    PredecessorNotActive(String),
    /// No such row.
    #[error("{0} not found")]
    NotFound(String),
    /// SQLite failed.
    #[error("registry: {0}")]
    Database(#[from] rusqlite::Error),
    /// The blocking task died.
    #[error("registry task failed: {0}")]
    Task(String),
}

/// The SQLite registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    connection: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS certificates (
    serial       TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL UNIQUE,
    label        TEXT NOT NULL,
    subject      TEXT NOT NULL,
    san          TEXT NOT NULL,
    not_before   INTEGER NOT NULL,
    not_after    INTEGER NOT NULL,
    auth         TEXT NOT NULL,
    predecessor  TEXT,
    successor    TEXT,
    state        TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    der          BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_not_after ON certificates(not_after);
CREATE INDEX IF NOT EXISTS certificates_subject ON certificates(subject);
CREATE TABLE IF NOT EXISTS pending_requests (
    id            TEXT PRIMARY KEY,
    label         TEXT NOT NULL,
    subject       TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    decided_at    INTEGER,
    issued_serial TEXT
);
";

impl Registry {
    /// Opens (creating if needed) the registry file.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RegistryError::Task(e.to_string()))?;
        }
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, RegistryError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .map_err(|_| RegistryError::Task("registry lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))?
    }

    /// Records a new certificate; when `supersedes` is given, that certificate
    /// must still be active and becomes superseded in the same transaction;
    /// when `pending_id` is given, that request is marked issued.
    pub async fn record_issued(
        &self,
        certificate: NewCertificate,
        supersedes: Option<String>,
        pending_id: Option<String>,
    ) -> Result<(), RegistryError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(old) = &supersedes {
                let changed = tx.execute(
                    "UPDATE certificates SET state = 'superseded', successor = ?1
                     WHERE serial = ?2 AND state = 'active'",
                    params![certificate.serial, old],
                )?;
                if changed != 1 {
                    return Err(RegistryError::PredecessorNotActive(old.clone()));
                }
            }
            tx.execute(
                "INSERT INTO certificates (serial, fingerprint, label, subject, san, not_before,
                     not_after, auth, predecessor, successor, state, issued_at, der)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, 'active', ?10, ?11)",
                params![
                    certificate.serial,
                    certificate.fingerprint,
                    certificate.label,
                    certificate.subject,
                    certificate.san,
                    certificate.not_before,
                    certificate.not_after,
                    certificate.auth,
                    certificate.predecessor,
                    unix_now(),
                    certificate.der,
                ],
            )?;
            if let Some(id) = &pending_id {
                tx.execute(
                    "UPDATE pending_requests SET state = 'issued', issued_serial = ?1 WHERE id = ?2",
                    params![certificate.serial, id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The certificate with this SHA-256 fingerprint.
    pub async fn find_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        let fingerprint = fingerprint.to_owned();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM certificates WHERE fingerprint = ?1"),
                    [fingerprint],
                    read_record,
                )
                .optional()?)
        })
        .await
    }

    /// The certificate with this serial (lower-case hex).
    pub async fn find_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        let serial = serial.to_owned();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM certificates WHERE serial = ?1"),
                    [serial],
                    read_record,
                )
                .optional()?)
        })
        .await
    }

    /// All certificates, newest first (operator listing).
    pub async fn list_certificates(
        &self,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.with(move |conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM certificates ORDER BY issued_at DESC, serial LIMIT ?1"
            ))?;
            let rows = statement.query_map([limit as i64], read_record)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Marks a certificate revoked.
    pub async fn revoke(&self, serial: &str) -> Result<(), RegistryError> {
        let serial = serial.to_owned();
        self.with(move |conn| {
            let changed = conn.execute(
                "UPDATE certificates SET state = 'revoked' WHERE serial = ?1",
                [&serial],
            )?;
            if changed == 0 {
                return Err(RegistryError::NotFound(format!("certificate {serial}")));
            }
            Ok(())
        })
        .await
    }

    /// The pending request `id`, if any.
    pub async fn pending(&self, id: &str) -> Result<Option<PendingRequest>, RegistryError> {
        let id = id.to_owned();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {PENDING_COLUMNS} FROM pending_requests WHERE id = ?1"),
                    [id],
                    read_pending,
                )
                .optional()?)
        })
        .await
    }

    /// Records a new pending request (a no-op when it already exists).
    pub async fn add_pending(&self, request: PendingRequest) -> Result<(), RegistryError> {
        self.with(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO pending_requests (id, label, subject, requested_by, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                params![request.id, request.label, request.subject, request.requested_by, request.created_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Approves or rejects a pending request (only while it is still pending).
    pub async fn decide_pending(&self, id: &str, approve: bool) -> Result<(), RegistryError> {
        let id = id.to_owned();
        let state = if approve {
            PendingState::Approved
        } else {
            PendingState::Rejected
        };
        self.with(move |conn| {
            let changed = conn.execute(
                "UPDATE pending_requests SET state = ?1, decided_at = ?2 WHERE id = ?3 AND state = 'pending'",
                params![state.as_str(), unix_now(), id],
            )?;
            if changed == 0 {
                return Err(RegistryError::NotFound(format!("pending request {id}")));
            }
            Ok(())
        })
        .await
    }

    /// All pending requests, oldest first.
    pub async fn list_pending(&self) -> Result<Vec<PendingRequest>, RegistryError> {
        self.with(|conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {PENDING_COLUMNS} FROM pending_requests ORDER BY created_at, id"
            ))?;
            let rows = statement.query_map([], read_pending)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

const COLUMNS: &str = "serial, fingerprint, label, subject, san, not_before, not_after, auth, \
                       predecessor, successor, state, issued_at, der";
const PENDING_COLUMNS: &str = "id, label, subject, requested_by, state, created_at, issued_serial";

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        certificate: NewCertificate {
            serial: row.get(0)?,
            fingerprint: row.get(1)?,
            label: row.get(2)?,
            subject: row.get(3)?,
            san: row.get(4)?,
            not_before: row.get(5)?,
            not_after: row.get(6)?,
            auth: row.get(7)?,
            predecessor: row.get(8)?,
            der: row.get(12)?,
        },
        successor: row.get(9)?,
        state: CertState::parse(&row.get::<_, String>(10)?),
        issued_at: row.get(11)?,
    })
}

fn read_pending(row: &rusqlite::Row<'_>) -> rusqlite::Result<PendingRequest> {
    Ok(PendingRequest {
        id: row.get(0)?,
        label: row.get(1)?,
        subject: row.get(2)?,
        requested_by: row.get(3)?,
        state: PendingState::parse(&row.get::<_, String>(4)?),
        created_at: row.get(5)?,
        issued_serial: row.get(6)?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str, predecessor: Option<&str>) -> NewCertificate {
        NewCertificate {
            serial: serial.into(),
            fingerprint: format!("fp-{serial}"),
            label: String::new(),
            subject: "CN=dev".into(),
            san: String::new(),
            not_before: 0,
            not_after: 100,
            auth: "basic:estuser".into(),
            predecessor: predecessor.map(str::to_owned),
            der: vec![1, 2, 3],
        }
    }

    #[tokio::test]
    async fn renewal_supersedes_exactly_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let registry = Registry::open(&path).unwrap();
        registry
            .record_issued(cert("01", None), None, None)
            .await
            .unwrap();
        registry
            .record_issued(cert("02", Some("01")), Some("01".into()), None)
            .await
            .unwrap();
        let second = registry
            .record_issued(cert("03", Some("01")), Some("01".into()), None)
            .await;
        assert!(matches!(
            second,
            Err(RegistryError::PredecessorNotActive(_))
        ));
        assert!(registry.find_by_serial("03").await.unwrap().is_none());
        drop(registry);

        let registry = Registry::open(&path).unwrap();
        let old = registry
            .find_by_fingerprint("fp-01")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(old.state, CertState::Superseded);
        assert_eq!(old.successor.as_deref(), Some("02"));
        let new = registry.find_by_serial("02").await.unwrap().unwrap();
        assert_eq!(new.state, CertState::Active);
        assert_eq!(new.certificate.predecessor.as_deref(), Some("01"));
    }

    #[tokio::test]
    async fn pending_requests_flow() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.sqlite")).unwrap();
        let request = PendingRequest {
            id: "abc".into(),
            label: String::new(),
            subject: "CN=x".into(),
            requested_by: "basic:u".into(),
            state: PendingState::Pending,
            created_at: 1,
            issued_serial: None,
        };
        registry.add_pending(request.clone()).await.unwrap();
        registry.add_pending(request).await.unwrap();
        assert_eq!(registry.list_pending().await.unwrap().len(), 1);
        registry.decide_pending("abc", true).await.unwrap();
        assert!(registry.decide_pending("abc", false).await.is_err());
        registry
            .record_issued(cert("0a", None), None, Some("abc".into()))
            .await
            .unwrap();
        let done = registry.pending("abc").await.unwrap().unwrap();
        assert_eq!(done.state, PendingState::Issued);
        assert_eq!(done.issued_serial.as_deref(), Some("0a"));
    }
}
