//! The embedded registry: one SQLite file (WAL, `synchronous=FULL`).
//!
//! Calls run on tokio's blocking pool behind one connection mutex; every
//! write is one `IMMEDIATE` transaction whose conditions are checked inside
//! it, so concurrent requests serialize on SQLite's write lock and exactly one
//! wins each race. Look-ups by serial, device and expiry are indexed; a
//! presented certificate is found by its serial and then its fingerprint is
//! compared, so no index is keyed by a random hash (each new certificate
//! would dirty a random page of it). With the local CA's time-ordered
//! serials, a new certificate appends to the end of every index.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use super::sql::*;
use super::{
    unix_now, CertState, CertificateRecord, Device, DeviceClaim, DeviceState, NewCertificate,
    NewDevice, PendingRequest, PendingState, Registry, RegistryError, Rotation, RotationState,
};

/// The SQLite registry. Cheap to clone.
///
/// Reads use their own connection. Writes go to one writer thread that
/// commits them in groups: it takes every write queued while the previous
/// commit was on disk, runs each inside its own savepoint (a failed condition
/// rolls back only that write), commits once, and only then answers each
/// caller. Concurrent enrollments share one fsync instead of paying one each,
/// and nothing is acknowledged before it is durable.
#[derive(Clone)]
pub struct SqliteRegistry {
    connection: Arc<Mutex<Connection>>,
    writer: std::sync::mpsc::Sender<WriteRequest>,
}

type JobOutput = Box<dyn std::any::Any + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Result<JobOutput, RegistryError> + Send>;

struct WriteRequest {
    job: Job,
    reply: tokio::sync::oneshot::Sender<Result<JobOutput, RegistryError>>,
}

/// Most writes committed together.
const MAX_BATCH: usize = 512;

/// WAL frames (4 KiB pages) after which the log is wound back to its start.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// Bytes a wound-back WAL file is truncated to.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Longest a WAL restart waits for readers (writes wait meanwhile).
const WAL_RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Pause before trying again when readers kept a restart from finishing.
const WAL_RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a connection waits for another process's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long opening waits for another process while upgrading a registry
/// made by an earlier version (see [`drop_fingerprint_index`]).
const MIGRATION_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The writer thread: group commit (see [`SqliteRegistry`]). When the
/// checkpointer reports a long log, the writer winds it back between two
/// batches (see [`checkpoint_loop`]).
fn writer_loop(
    conn: Connection,
    requests: std::sync::mpsc::Receiver<WriteRequest>,
    restart_wanted: Arc<AtomicBool>,
) {
    let mut next_restart = std::time::Instant::now();
    while let Ok(first) = requests.recv() {
        let restart_due = restart_wanted.swap(false, Ordering::AcqRel)
            && std::time::Instant::now() >= next_restart;
        // A long reader (an operator listing, another process) that keeps the
        // restart from finishing is left to finish instead of stalling
        // writes again at once.
        if restart_due && !restart_wal(&conn) {
            next_restart = std::time::Instant::now() + WAL_RESTART_BACKOFF;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            for request in batch {
                let _ = request
                    .reply
                    .send(Err(RegistryError::Database(e.to_string())));
            }
            continue;
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for WriteRequest { job, reply } in batch {
            let savepoint = exec(&conn, "SAVEPOINT job", []).map(drop);
            let result = match savepoint {
                Ok(()) => job(&conn),
                Err(e) => Err(db(e)),
            };
            let closed = if result.is_ok() {
                exec(&conn, "RELEASE job", []).map(drop)
            } else {
                exec(&conn, "ROLLBACK TO job", [])
                    .and_then(|_| exec(&conn, "RELEASE job", []))
                    .map(drop)
            };
            let result = match closed {
                Ok(()) => result,
                Err(e) => Err(db(e)),
            };
            outcomes.push((reply, result));
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                for (reply, result) in outcomes {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                for (reply, _) in outcomes {
                    let _ = reply.send(Err(RegistryError::Database(e.to_string())));
                }
            }
        }
    }
}

/// Winds the WAL back to its start (RESTART checkpoint). Waits at most
/// [`WAL_RESTART_WAIT`] for readers still using the log, since every write
/// waits meanwhile; false when they did not leave in time.
fn restart_wal(conn: &Connection) -> bool {
    let _ = conn.busy_timeout(WAL_RESTART_WAIT);
    let outcome = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    });
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    match outcome {
        Ok(0) => true,
        Ok(_) => {
            tracing::debug!("registry log restart waited on a reader; retrying later");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "registry log restart failed; retrying later");
            false
        }
    }
}

/// Creates the database file readable by its owner only (0600, whatever
/// the umask), or makes an existing one so: it holds token hashes and the
/// issuance history.
fn create_private(path: &Path) -> Result<(), RegistryError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| RegistryError::Task(format!("{}: {e}", path.display())))?;
    make_private(path)
}

/// Sets mode 0600 on `path` if it exists.
fn make_private(path: &Path) -> Result<(), RegistryError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RegistryError::Task(format!("{}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

/// Copies committed WAL frames into the database file twice a second
/// (PASSIVE: never blocks the writer or readers).
///
/// Under constant load a PASSIVE checkpoint never catches up with the
/// writer, so SQLite never starts the log over and it grows without bound
/// (gigabytes in a minute of benchmark, and every page read searches a
/// longer WAL index). Once the log passes [`WAL_RESTART_FRAMES`] this asks
/// the writer to wind it back: between two batches, with no frame being
/// added, it checkpoints the few frames this pass left and restarts the log.
fn checkpoint_loop(connection: Connection, restart_wanted: Arc<AtomicBool>) {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let checkpoint = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(1)
        });
        match checkpoint {
            Ok(frames) if frames > WAL_RESTART_FRAMES => {
                restart_wanted.store(true, Ordering::Release)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "registry checkpoint failed; retrying"),
        }
    }
}

/// The certificates table's columns (used when creating the table and by the
/// rebuild in [`drop_fingerprint_index`]).
const CERTIFICATE_COLUMNS_DDL: &str = "(
    serial       TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
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
    der          BLOB NOT NULL,
    device_id    TEXT,
    backend_ref  TEXT,
    superseded_at INTEGER,
    proven       INTEGER NOT NULL DEFAULT 0,
    retired_at   INTEGER,
    revoked_at   INTEGER,
    owner        TEXT,
    lineage      TEXT
)";

const SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS rotations (
    client_id       TEXT PRIMARY KEY,
    serial          TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      TEXT,
    new_serial      TEXT,
    requested_at    INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id               TEXT PRIMARY KEY,
    token_hash       TEXT NOT NULL,
    label            TEXT NOT NULL,
    thing_name       TEXT,
    policy           TEXT,
    state            TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    enrolled_at      INTEGER,
    cert_serial      TEXT,
    cert_id          TEXT,
    cert_fingerprint TEXT,
    cert_not_after   INTEGER,
    failed_attempts  INTEGER NOT NULL DEFAULT 0,
    locked_until     INTEGER,
    lease_owner      TEXT,
    lease_until      INTEGER,
    edge_ca          INTEGER NOT NULL DEFAULT 0
);
";

/// Indexes, created after [`migrate`] has added any missing column.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS certificates_not_after ON certificates(state, not_after);
DROP INDEX IF EXISTS certificates_device;
CREATE INDEX IF NOT EXISTS certificates_by_device ON certificates(device_id, issued_at DESC, serial);
DROP INDEX IF EXISTS certificates_retirement;
CREATE INDEX IF NOT EXISTS certificates_retire_queue ON certificates(state, retired_at, label, superseded_at);
CREATE INDEX IF NOT EXISTS certificates_issued ON certificates(issued_at DESC, serial);
CREATE UNIQUE INDEX IF NOT EXISTS certificates_live_lineage ON certificates(owner, lineage)
    WHERE state = 'active' AND lineage IS NOT NULL;
";

/// Brings a registry made by an earlier version up to the current schema.
///
/// Columns added since a table was made are added with their defaults:
/// certificates recorded before lineages have no `owner` and `lineage` (see
/// `authority::lineage::owner_of` and `legacy_match` for how they are read),
/// devices recorded before the Edge CA flag are not allowed a CA.
fn migrate(connection: &Connection) -> Result<(), RegistryError> {
    for (table, column, definition) in [
        ("certificates", "device_id", "TEXT"),
        ("certificates", "backend_ref", "TEXT"),
        ("certificates", "superseded_at", "INTEGER"),
        ("certificates", "proven", "INTEGER NOT NULL DEFAULT 0"),
        ("certificates", "retired_at", "INTEGER"),
        ("certificates", "revoked_at", "INTEGER"),
        ("certificates", "owner", "TEXT"),
        ("certificates", "lineage", "TEXT"),
        ("devices", "edge_ca", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        let present = connection
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
            .and_then(|mut s| s.exists([table, column]))
            .map_err(db)?;
        if !present {
            connection
                .execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                ))
                .map_err(db)?;
        }
    }
    drop_fingerprint_index(connection)?;
    connection.execute_batch(INDEXES).map_err(db)
}

/// Registries made before certificates were looked up by serial declared
/// `fingerprint UNIQUE`: an index of random values that costs every new
/// certificate a random page write. SQLite cannot drop such a constraint, so
/// the table is rebuilt once, in one transaction (14 s for 1.37 million
/// certificates on the 2-core test machine); its other indexes are recreated
/// by [`INDEXES`].
fn drop_fingerprint_index(connection: &Connection) -> Result<(), RegistryError> {
    if !has_unique_fingerprint(connection)? {
        return Ok(());
    }
    // Another process opening the same old file may be rebuilding it: wait
    // for it, then look again inside the write lock.
    connection
        .busy_timeout(MIGRATION_BUSY_TIMEOUT)
        .map_err(db)?;
    let rebuilt = rebuild_certificates_table(connection);
    connection.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    rebuilt
}

/// True when the certificates table still declares `fingerprint UNIQUE`.
fn has_unique_fingerprint(connection: &Connection) -> Result<bool, RegistryError> {
    connection
        .prepare(
            "SELECT 1 FROM pragma_index_list('certificates') AS list
             JOIN pragma_index_info(list.name) AS info
             WHERE list.origin = 'u' AND info.name = 'fingerprint'",
        )
        .and_then(|mut s| s.exists([]))
        .map_err(db)
}

/// Copies the certificates into a table made from [`CERTIFICATE_COLUMNS_DDL`]
/// (every column it names, so the list cannot drift) and swaps it in.
fn rebuild_certificates_table(connection: &Connection) -> Result<(), RegistryError> {
    connection.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
    let rebuilt = (|| {
        if !has_unique_fingerprint(connection)? {
            return Ok(());
        }
        tracing::info!("rebuilding the certificates table without its fingerprint index (once)");
        connection
            .execute_batch(&format!(
                "CREATE TABLE certificates_rebuilt {CERTIFICATE_COLUMNS_DDL};"
            ))
            .map_err(db)?;
        let columns: String = connection
            .query_row(
                "SELECT group_concat(name, ', ') FROM pragma_table_info('certificates_rebuilt')",
                [],
                |row| row.get(0),
            )
            .map_err(db)?;
        connection
            .execute_batch(&format!(
                "INSERT INTO certificates_rebuilt ({columns}) SELECT {columns} FROM certificates;
                 DROP TABLE certificates;
                 ALTER TABLE certificates_rebuilt RENAME TO certificates;"
            ))
            .map_err(db)
    })();
    match rebuilt {
        Ok(()) => connection.execute_batch("COMMIT").map_err(db),
        Err(e) => {
            let _ = connection.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl SqliteRegistry {
    /// Opens (creating if needed) the registry file.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RegistryError::Task(e.to_string()))?;
        }
        create_private(path)?;
        let connection = Connection::open(path).map_err(db)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        // SQLite gives a new -wal or -shm the database file's mode; these
        // were made by older servers or under another umask.
        for companion in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(companion);
            make_private(Path::new(&name))?;
        }
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        connection
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS certificates {CERTIFICATE_COLUMNS_DDL};"
            ))
            .map_err(db)?;
        connection.execute_batch(SCHEMA).map_err(db)?;
        migrate(&connection)?;
        let write_connection = Connection::open(path).map_err(db)?;
        write_connection.set_prepared_statement_cache_capacity(64);
        // Checkpoints run beside the writer, not inside its commits (on a
        // large registry they copy random pages and would stall a batch).
        write_connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db)?;
        write_connection
            .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(db)?;
        let restart_wanted = Arc::new(AtomicBool::new(false));
        let checkpoint_connection = Connection::open(path).map_err(db)?;
        checkpoint_connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(db)?;
        std::thread::Builder::new()
            .name("registry-checkpoint".into())
            .spawn({
                let restart_wanted = restart_wanted.clone();
                move || checkpoint_loop(checkpoint_connection, restart_wanted)
            })
            .map_err(|e| RegistryError::Task(e.to_string()))?;
        write_connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        write_connection.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        let (writer, requests) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || writer_loop(write_connection, requests, restart_wanted))
            .map_err(|e| RegistryError::Task(e.to_string()))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            writer,
        })
    }

    /// Runs `f` in the next group commit and returns once it is durable.
    async fn write<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, RegistryError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| f(conn).map(|value| Box::new(value) as JobOutput));
        self.writer
            .send(WriteRequest { job, reply })
            .map_err(|_| RegistryError::Task("registry writer stopped".into()))?;
        let output = answer
            .await
            .map_err(|_| RegistryError::Task("registry writer stopped".into()))??;
        output
            .downcast::<T>()
            .map(|value| *value)
            .map_err(|_| RegistryError::Task("registry writer returned the wrong type".into()))
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

    fn query_records(
        conn: &Connection,
        sql_tail: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        let mut statement = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM certificates {sql_tail}"))
            .map_err(db)?;
        let rows = statement.query_map(params, read_record).map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }
}

#[async_trait::async_trait]
impl Registry for SqliteRegistry {
    async fn record_issued(
        &self,
        certificate: NewCertificate,
        supersedes: Option<String>,
        pending_id: Option<String>,
        claim: Option<DeviceClaim>,
    ) -> Result<(), RegistryError> {
        self.write(move |conn| {
            let tx = conn;
            let mut device_id = certificate.device_id.clone();
            if let Some(old) = &supersedes {
                let changed = tx
                    .execute(SUPERSEDE, params![certificate.serial, old, unix_now()])
                    .map_err(db)?;
                if changed != 1 {
                    return Err(RegistryError::PredecessorNotActive(old.clone()));
                }
                if device_id.is_none() {
                    device_id = tx
                        .query_row(DEVICE_OF, [old], |row| row.get(0))
                        .map_err(db)?;
                }
            }
            if let Some(claim) = &claim {
                let changed = tx
                    .execute(
                        ENROLL_CLAIMED,
                        params![unix_now(), claim.device_id, claim.owner],
                    )
                    .map_err(db)?;
                if changed != 1 {
                    return Err(RegistryError::ReservationLost(claim.device_id.clone()));
                }
                device_id = Some(claim.device_id.clone());
            }
            exec(
                tx,
                INSERT_CERTIFICATE,
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
                    device_id,
                    certificate.backend_ref,
                    certificate.owner,
                    certificate.lineage,
                ],
            )
            .map_err(lineage_conflict)?;
            if let Some(device) = &device_id {
                exec(
                    tx,
                    POINT_DEVICE,
                    params![
                        certificate.serial,
                        certificate.fingerprint,
                        certificate.not_after,
                        claim.as_ref().and_then(|c| c.cert_id.clone()),
                        device
                    ],
                )
                .map_err(db)?;
            }
            if let Some(id) = &pending_id {
                exec(tx, MARK_PENDING_ISSUED, params![certificate.serial, id]).map_err(db)?;
            }
            Ok(())
        })
        .await
    }

    async fn live_in_lineage(
        &self,
        owner: &str,
        lineage: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        let (owner, lineage) = (owner.to_owned(), lineage.to_owned());
        self.with(move |conn| {
            Ok(Self::query_records(conn, LIVE_IN_LINEAGE, [owner, lineage])?.pop())
        })
        .await
    }

    async fn set_device_edge_ca(&self, id: &str, allowed: bool) -> Result<(), RegistryError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let changed = exec(conn, SET_EDGE_CA, params![id, allowed]).map_err(db)?;
            if changed == 1 {
                Ok(())
            } else {
                Err(RegistryError::NotFound(format!("device {id}")))
            }
        })
        .await
    }

    async fn find_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        let serial = serial.to_owned();
        self.with(move |conn| Ok(Self::query_records(conn, BY_SERIAL, [serial])?.pop()))
            .await
    }

    async fn list_certificates(
        &self,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.with(move |conn| Self::query_records(conn, NEWEST_FIRST, [limit as i64]))
            .await
    }

    async fn expiring_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.with(move |conn| {
            Self::query_records(conn, EXPIRING_BEFORE, params![before, limit as i64])
        })
        .await
    }

    async fn count_expiring_before(&self, before: i64) -> Result<u64, RegistryError> {
        self.with(move |conn| {
            conn.query_row(COUNT_EXPIRING, [before], |row| row.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db)
        })
        .await
    }

    async fn revoke(&self, serial: &str) -> Result<(), RegistryError> {
        let serial = serial.to_owned();
        self.write(move |conn| {
            let changed = conn
                .execute(REVOKE, params![&serial, unix_now()])
                .map_err(db)?;
            if changed == 0 {
                return Err(RegistryError::NotFound(format!("certificate {serial}")));
            }
            Ok(())
        })
        .await
    }

    async fn mark_predecessor_proven(
        &self,
        serial: &str,
        fingerprint: &str,
    ) -> Result<(), RegistryError> {
        let (serial, fingerprint) = (serial.to_owned(), fingerprint.to_owned());
        self.write(move |conn| {
            exec(conn, MARK_PREDECESSOR_PROVEN, params![serial, fingerprint]).map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn retirement_candidates(
        &self,
        label: &str,
        superseded_before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        let label = label.to_owned();
        self.with(move |conn| {
            Self::query_records(
                conn,
                RETIREMENT_CANDIDATES,
                params![label, superseded_before, limit as i64],
            )
        })
        .await
    }

    async fn mark_retired(&self, serial: &str) -> Result<(), RegistryError> {
        let serial = serial.to_owned();
        self.write(move |conn| {
            exec(conn, MARK_RETIRED, params![unix_now(), serial]).map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn local_revocations(&self) -> Result<Vec<(String, i64)>, RegistryError> {
        self.with(|conn| {
            let mut statement = conn.prepare(LOCAL_REVOCATIONS).map_err(db)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get(0)?, row.get::<_, Option<i64>>(1)?.unwrap_or(0)))
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
        .await
    }

    async fn pending(&self, id: &str) -> Result<Option<PendingRequest>, RegistryError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {PENDING_COLUMNS} FROM pending_requests WHERE id = ?1"),
                [id],
                read_pending,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn add_pending(&self, request: PendingRequest) -> Result<(), RegistryError> {
        self.write(move |conn| {
            exec(
                conn,
                ADD_PENDING,
                params![
                    request.id,
                    request.label,
                    request.subject,
                    request.requested_by,
                    request.created_at
                ],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn decide_pending(&self, id: &str, approve: bool) -> Result<(), RegistryError> {
        let id = id.to_owned();
        let state = if approve {
            PendingState::Approved
        } else {
            PendingState::Rejected
        };
        self.write(move |conn| {
            let changed = conn
                .execute(DECIDE_PENDING, params![state.as_str(), unix_now(), id])
                .map_err(db)?;
            if changed == 0 {
                return Err(RegistryError::NotFound(format!("pending request {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn list_pending(&self) -> Result<Vec<PendingRequest>, RegistryError> {
        self.with(|conn| {
            let mut statement = conn
                .prepare(&format!(
                    "SELECT {PENDING_COLUMNS} FROM pending_requests ORDER BY created_at, id"
                ))
                .map_err(db)?;
            let rows = statement.query_map([], read_pending).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
        .await
    }

    async fn add_devices(&self, devices: Vec<NewDevice>) -> Result<Vec<bool>, RegistryError> {
        self.write(move |conn| {
            let tx = conn;
            let mut added = Vec::with_capacity(devices.len());
            {
                let mut insert = tx.prepare_cached(ADD_DEVICE).map_err(db)?;
                let now = unix_now();
                for d in &devices {
                    let inserted = insert
                        .execute(params![
                            d.id,
                            d.token_hash,
                            d.label,
                            d.thing_name,
                            d.policy,
                            now,
                            d.edge_ca
                        ])
                        .map_err(db)?;
                    added.push(inserted == 1);
                }
            }
            Ok(added)
        })
        .await
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, RegistryError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
                [id],
                read_device,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn list_devices(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Device>, RegistryError> {
        self.with(move |conn| {
            let mut statement = conn
                .prepare(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))
                .map_err(db)?;
            let rows = statement
                .query_map(
                    params![after.unwrap_or_default(), limit as i64],
                    read_device,
                )
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
        .await
    }

    async fn device_certificates(&self, id: &str) -> Result<Vec<CertificateRecord>, RegistryError> {
        let id = id.to_owned();
        self.with(move |conn| Self::query_records(conn, OF_DEVICE, [id]))
            .await
    }

    async fn disable_device(&self, id: &str) -> Result<(), RegistryError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let changed = conn.execute(DISABLE_DEVICE, [&id]).map_err(db)?;
            if changed == 0 {
                return Err(RegistryError::NotFound(format!("device {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn record_failed_attempt(
        &self,
        id: &str,
        lock_after: u32,
        lock_secs: i64,
    ) -> Result<(), RegistryError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let now = unix_now();
            exec(
                conn,
                FAILED_ATTEMPT,
                params![lock_after, now + lock_secs, id, now],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn reserve_device(
        &self,
        id: &str,
        token_hash: &str,
        owner: &str,
        lease_until: i64,
    ) -> Result<(), RegistryError> {
        let (id, token_hash, owner) = (id.to_owned(), token_hash.to_owned(), owner.to_owned());
        self.write(move |conn| {
            let tx = conn;
            let changed = tx
                .execute(
                    RESERVE_DEVICE,
                    params![owner, lease_until, id, token_hash, unix_now()],
                )
                .map_err(db)?;
            if changed == 1 {
                return Ok(());
            }
            let state: Option<String> = tx
                .query_row(DEVICE_STATE, [&id], |r| r.get(0))
                .optional()
                .map_err(db)?;
            Err(match state.as_deref().map(DeviceState::parse) {
                None => RegistryError::NotFound(format!("device {id}")),
                Some(DeviceState::Enrolled) => RegistryError::TokenUsed(id),
                Some(DeviceState::Disabled) => RegistryError::DeviceDisabled(id),
                Some(DeviceState::Unused) => RegistryError::DeviceBusy(id),
            })
        })
        .await
    }

    async fn release_device(&self, id: &str, owner: &str) -> Result<(), RegistryError> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.write(move |conn| {
            exec(conn, RELEASE_DEVICE, params![id, owner]).map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn reinstate_predecessor(
        &self,
        predecessor: &str,
        successor: &str,
    ) -> Result<(), RegistryError> {
        let (old, new) = (predecessor.to_owned(), successor.to_owned());
        self.write(move |conn| {
            let revoked = conn
                .execute(REVOKE_UNUSED_SUCCESSOR, params![new, unix_now()])
                .map_err(db)?;
            let reinstated = conn.execute(REINSTATE, params![old, new]).map_err(db)?;
            if revoked != 1 || reinstated != 1 {
                return Err(RegistryError::PredecessorNotActive(old));
            }
            exec(conn, REPOINT_DEVICE, params![old, new]).map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn rotation(&self, client_id: &str) -> Result<Option<Rotation>, RegistryError> {
        let client_id = client_id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {ROTATION_COLUMNS} FROM rotations WHERE client_id = ?1"),
                [client_id],
                read_rotation,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn save_rotation(&self, rotation: Rotation) -> Result<(), RegistryError> {
        self.write(move |conn| {
            exec(
                conn,
                SAVE_ROTATION,
                rusqlite::params_from_iter(rotation_values(&rotation)),
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn replace_rotation(
        &self,
        expected: &Rotation,
        rotation: Rotation,
    ) -> Result<bool, RegistryError> {
        // ?1–?9 the new record, ?10–?17 the one read (its client id is ?1).
        let values: Vec<_> = rotation_values(&rotation)
            .into_iter()
            .chain(rotation_values(expected).into_iter().skip(1))
            .collect();
        self.write(move |conn| {
            let changed =
                exec(conn, REPLACE_ROTATION, rusqlite::params_from_iter(values)).map_err(db)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn list_rotations(&self, limit: usize) -> Result<Vec<Rotation>, RegistryError> {
        self.with(move |conn| {
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {ROTATION_COLUMNS} FROM rotations ORDER BY client_id LIMIT ?1"
                ))
                .map_err(db)?;
            let rows = statement
                .query_map([limit as i64], read_rotation)
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: i64,
    ) -> Result<bool, RegistryError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            exec(
                conn,
                ACQUIRE_LEASE,
                params![name, holder, until, unix_now()],
            )
            .map(|changed| changed == 1)
            .map_err(db)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), RegistryError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            exec(conn, RELEASE_LEASE, params![name, holder])
                .map(drop)
                .map_err(db)
        })
        .await
    }
}

fn read_rotation(row: &rusqlite::Row<'_>) -> rusqlite::Result<Rotation> {
    Ok(Rotation {
        client_id: row.get(0)?,
        serial: row.get(1)?,
        state: RotationState::parse(&row.get::<_, String>(2)?),
        attempts: row.get(3)?,
        last_error: row.get(4)?,
        new_serial: row.get(5)?,
        requested_at: row.get(6)?,
        updated_at: row.get(7)?,
        next_attempt_at: row.get(8)?,
    })
}

/// The columns of [`ROTATION_COLUMNS`] for `rotation`, in order.
fn rotation_values(rotation: &Rotation) -> [rusqlite::types::Value; 9] {
    use rusqlite::types::Value;
    let text = |t: &Option<String>| t.clone().map_or(Value::Null, Value::Text);
    [
        Value::Text(rotation.client_id.clone()),
        Value::Text(rotation.serial.clone()),
        Value::Text(rotation.state.as_str().to_owned()),
        Value::Integer(rotation.attempts.into()),
        text(&rotation.last_error),
        text(&rotation.new_serial),
        Value::Integer(rotation.requested_at),
        Value::Integer(rotation.updated_at),
        Value::Integer(rotation.next_attempt_at),
    ]
}

/// Runs one statement through the connection's prepared-statement cache
/// (the profile showed SQL parsing at ~3% of the server's CPU otherwise).
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// A second live certificate in one lineage breaks the unique index
/// `certificates_live_lineage`: a concurrent request recorded one first.
fn lineage_conflict(e: rusqlite::Error) -> RegistryError {
    match &e {
        rusqlite::Error::SqliteFailure(failure, Some(message))
            if failure.code == rusqlite::ErrorCode::ConstraintViolation
                && message.contains("owner") =>
        {
            RegistryError::LineageBusy
        }
        _ => db(e),
    }
}

fn db(e: rusqlite::Error) -> RegistryError {
    RegistryError::Database(e.to_string())
}

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
            device_id: row.get(13)?,
            backend_ref: row.get(14)?,
            owner: row.get(17)?,
            lineage: row.get(18)?,
        },
        successor: row.get(9)?,
        state: CertState::parse(&row.get::<_, String>(10)?),
        issued_at: row.get(11)?,
        retired_at: row.get(15)?,
        successor_proven: row.get::<_, i64>(16)? != 0,
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

fn read_device(row: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device: NewDevice {
            id: row.get(0)?,
            token_hash: row.get(1)?,
            label: row.get(2)?,
            thing_name: row.get(3)?,
            policy: row.get(4)?,
            edge_ca: row.get::<_, i64>(14)? != 0,
        },
        state: DeviceState::parse(&row.get::<_, String>(5)?),
        created_at: row.get(6)?,
        enrolled_at: row.get(7)?,
        cert_serial: row.get(8)?,
        cert_id: row.get(9)?,
        cert_fingerprint: row.get(10)?,
        cert_not_after: row.get(11)?,
        failed_attempts: row.get::<_, i64>(12)? as u32,
        locked_until: row.get(13)?,
    })
}

// Behaviour is tested by the registry conformance suite
// (tests/tests/registry.rs), which runs on this store and on DynamoDB alike.

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes placeholder certificates numbered `numbers`, 256 at a time,
    /// calling `every_thousand` as they go; returns the longest single write.
    async fn write_placeholders(
        registry: &SqliteRegistry,
        numbers: std::ops::Range<u32>,
        mut every_thousand: impl FnMut(),
    ) -> std::time::Duration {
        let gate = Arc::new(tokio::sync::Semaphore::new(256));
        let mut writes = tokio::task::JoinSet::new();
        let mut longest = std::time::Duration::ZERO;
        let mut note = |done: Result<Result<std::time::Duration, RegistryError>, _>| {
            let took: std::time::Duration = done.expect("write task").expect("write");
            longest = longest.max(took);
        };
        for i in numbers {
            let permit = gate.clone().acquire_owned().await.unwrap();
            let registry = registry.clone();
            writes.spawn(async move {
                let serial = format!("{i:032x}");
                let record = NewCertificate {
                    fingerprint: est_wire::sha256_hex(serial.as_bytes()),
                    serial,
                    label: String::new(),
                    subject: format!("CN=wal-{i}"),
                    san: String::new(),
                    not_before: 0,
                    not_after: 1,
                    auth: "basic:test".into(),
                    predecessor: None,
                    device_id: None,
                    backend_ref: None,
                    owner: None,
                    lineage: None,
                    der: vec![0x30; 600],
                };
                let started = std::time::Instant::now();
                let written = registry.record_issued(record, None, None, None).await;
                drop(permit);
                written.map(|()| started.elapsed())
            });
            while let Some(done) = writes.try_join_next() {
                note(done);
            }
            if i % 1_000 == 0 {
                every_thousand();
            }
        }
        while let Some(done) = writes.join_next().await {
            note(done);
        }
        longest
    }

    /// Under constant writes the WAL is wound back instead of growing: a
    /// PASSIVE checkpoint alone never catches up with a busy writer, and
    /// 250,000 records left a WAL of about 450 MB (debug build) before the
    /// writer started restarting it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_stays_bounded_under_constant_writes() {
        let dir = tempfile::tempdir().unwrap();
        let registry = SqliteRegistry::open(&dir.path().join("r.sqlite")).unwrap();
        let mut largest_wal = 0;
        write_placeholders(&registry, 0..250_000, || {
            let wal = std::fs::metadata(dir.path().join("r.sqlite-wal")).map_or(0, |m| m.len());
            largest_wal = largest_wal.max(wal);
        })
        .await;
        let limit = 160 * 1024 * 1024;
        assert!(
            largest_wal < limit,
            "WAL reached {largest_wal} bytes (limit {limit})"
        );
    }

    /// A reader that holds an old snapshot (an operator listing, another
    /// process) keeps the log from being wound back; the writer gives up
    /// after a short wait instead of stalling every write for the 10 s busy
    /// timeout, and writes go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_reader_does_not_stall_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let registry = SqliteRegistry::open(&path).unwrap();
        write_placeholders(&registry, 0..1_000, || {}).await;
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT COUNT(*) FROM certificates", [], |row| row.get(0))
            .unwrap();
        assert_eq!(seen, 1_000);
        let longest = write_placeholders(&registry, 1_000..121_000, || {}).await;
        assert!(
            longest < std::time::Duration::from_secs(3),
            "a write waited {longest:?} behind the reader"
        );
        reader.execute_batch("COMMIT").unwrap();
    }

    /// A registry made with `fingerprint UNIQUE` loses that index on open and
    /// keeps every record and the other indexes.
    #[test]
    fn old_registries_lose_the_fingerprint_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE certificates (
                    serial TEXT PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE,
                    label TEXT NOT NULL, subject TEXT NOT NULL, san TEXT NOT NULL,
                    not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,
                    auth TEXT NOT NULL, predecessor TEXT, successor TEXT,
                    state TEXT NOT NULL, issued_at INTEGER NOT NULL, der BLOB NOT NULL);
                 INSERT INTO certificates VALUES
                    ('01', 'fp-01', '', 'CN=a', '', 0, 10, 'basic:u', NULL, '02', 'superseded', 1, x'3000'),
                    ('02', 'fp-02', '', 'CN=a', '', 0, 20, 'basic:u', '01', NULL, 'active', 2, x'3000');",
            )
            .unwrap();
        }
        let registry = SqliteRegistry::open(&path).unwrap();
        let conn = registry.connection.lock().unwrap();
        let unique: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_list('certificates') WHERE origin = 'u'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(unique.is_empty(), "{unique:?}");
        let records = SqliteRegistry::query_records(&conn, "ORDER BY serial", []).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].certificate.predecessor.as_deref(), Some("01"));
        assert_eq!(records[0].successor.as_deref(), Some("02"));
        let indexes: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_index_list('certificates') WHERE origin = 'c'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 5, "the five named indexes are back");
    }

    /// A registry made before lineages (the previous release's schema, with a
    /// certificate and a device) opens with the new columns added: its
    /// certificates have no owner or lineage, its devices no Edge CA flag,
    /// and a new certificate of a lineage can replace an old one.
    #[tokio::test]
    async fn registries_from_before_lineages_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("previous.sqlite");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE certificates (
                    serial TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, label TEXT NOT NULL,
                    subject TEXT NOT NULL, san TEXT NOT NULL, not_before INTEGER NOT NULL,
                    not_after INTEGER NOT NULL, auth TEXT NOT NULL, predecessor TEXT,
                    successor TEXT, state TEXT NOT NULL, issued_at INTEGER NOT NULL,
                    der BLOB NOT NULL, device_id TEXT, backend_ref TEXT, superseded_at INTEGER,
                    proven INTEGER NOT NULL DEFAULT 0, retired_at INTEGER, revoked_at INTEGER);
                 CREATE TABLE devices (
                    id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, label TEXT NOT NULL,
                    thing_name TEXT, policy TEXT, state TEXT NOT NULL, created_at INTEGER NOT NULL,
                    enrolled_at INTEGER, cert_serial TEXT, cert_id TEXT, cert_fingerprint TEXT,
                    cert_not_after INTEGER, failed_attempts INTEGER NOT NULL DEFAULT 0,
                    locked_until INTEGER, lease_owner TEXT, lease_until INTEGER);
                 INSERT INTO certificates (serial, fingerprint, label, subject, san, not_before,
                    not_after, auth, state, issued_at, der, device_id)
                 VALUES ('0a', 'fp-0a', '', 'CN=dev', '', 0, 10, 'device-token:dev', 'active', 1, x'3000', 'dev');
                 INSERT INTO devices (id, token_hash, label, state, created_at, cert_serial)
                 VALUES ('dev', 'h', '', 'enrolled', 1, '0a');",
            )
            .unwrap();
        }
        let registry = SqliteRegistry::open(&path).unwrap();
        let old = registry.find_by_serial("0a").await.unwrap().unwrap();
        assert_eq!(
            (old.certificate.owner, old.certificate.lineage),
            (None, None)
        );
        assert!(
            !registry
                .device("dev")
                .await
                .unwrap()
                .unwrap()
                .device
                .edge_ca
        );
        registry.set_device_edge_ca("dev", true).await.unwrap();
        assert!(
            registry
                .device("dev")
                .await
                .unwrap()
                .unwrap()
                .device
                .edge_ca
        );
        let successor = NewCertificate {
            serial: "0b".into(),
            fingerprint: "fp-0b".into(),
            label: String::new(),
            subject: "CN=dev".into(),
            san: String::new(),
            not_before: 0,
            not_after: 20,
            auth: "identity-cert:0a".into(),
            predecessor: Some("0a".into()),
            device_id: None,
            backend_ref: None,
            owner: Some("device:dev".into()),
            lineage: Some("l1".into()),
            der: vec![0x30, 0x00],
        };
        registry
            .record_issued(successor, Some("0a".into()), None, None)
            .await
            .unwrap();
        let live = registry
            .live_in_lineage("device:dev", "l1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(live.certificate.serial, "0b");
        assert_eq!(live.certificate.device_id.as_deref(), Some("dev"));
        assert_eq!(
            registry.find_by_serial("0a").await.unwrap().unwrap().state,
            CertState::Superseded
        );
    }

    /// Every certificate look-up runs on an index, so a registry of a million
    /// certificates answers renewals, audits and listings without table scans.
    #[test]
    fn query_plans_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let _registry = SqliteRegistry::open(&dir.path().join("r.sqlite")).unwrap();
        let conn = Connection::open(dir.path().join("r.sqlite")).unwrap();
        let queries = [
            BY_SERIAL,
            NEWEST_FIRST,
            EXPIRING_BEFORE,
            RETIREMENT_CANDIDATES,
            OF_DEVICE,
            LIVE_IN_LINEAGE,
        ]
        .map(|tail| format!("SELECT {COLUMNS} FROM certificates {tail}"));
        for sql in queries
            .iter()
            .map(String::as_str)
            .chain([COUNT_EXPIRING, MARK_PREDECESSOR_PROVEN])
        {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut steps = Vec::new();
            let mut rows = plan.raw_query();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get::<_, String>(3).unwrap());
            }
            assert!(
                steps
                    .iter()
                    .all(|s| s != "SCAN certificates" && !s.contains("TEMP B-TREE")),
                "{sql}: {steps:?}"
            );
        }
    }
}
