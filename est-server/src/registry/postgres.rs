//! The PostgreSQL registry, for several servers sharing one database.
//!
//! The same tables, columns and conditions as the SQLite registry (the SQL
//! lives in `sql.rs`, shared by both). Every write is one transaction whose
//! conditions are checked by PostgreSQL itself: conditional `UPDATE … WHERE
//! state = 'active'` (a concurrent update waits for the first and then finds
//! the row changed), and the unique partial index `certificates_live_lineage`
//! for one live certificate per (owner, lineage). No guarantee rests on a lock
//! inside one process, so any number of servers can share the database.
//!
//! The schema is versioned: `schema_version` holds the number of the last
//! migration applied; [`PostgresRegistry::open`] applies the missing ones (one
//! server at a time, under an advisory lock) and refuses a database whose
//! schema is newer than this version knows.

use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::sql::*;
use super::{
    unix_now, CertState, CertificateRecord, Device, DeviceClaim, DeviceState, NewCertificate,
    NewDevice, PendingRequest, PendingState, Registry, RegistryError, Rotation, RotationState,
};

/// The migrations, in order: migration `n` (1-based) brings the schema from
/// version `n - 1` to `n`. Append only; never edit one that was released.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE certificates (
    serial        TEXT PRIMARY KEY,
    fingerprint   TEXT NOT NULL,
    label         TEXT NOT NULL,
    subject       TEXT NOT NULL,
    san           TEXT NOT NULL,
    not_before    BIGINT NOT NULL,
    not_after     BIGINT NOT NULL,
    auth          TEXT NOT NULL,
    predecessor   TEXT,
    successor     TEXT,
    state         TEXT NOT NULL,
    issued_at     BIGINT NOT NULL,
    der           BYTEA NOT NULL,
    device_id     TEXT,
    backend_ref   TEXT,
    superseded_at BIGINT,
    proven        BIGINT NOT NULL DEFAULT 0,
    retired_at    BIGINT,
    revoked_at    BIGINT,
    owner         TEXT,
    lineage       TEXT
);
CREATE INDEX certificates_not_after ON certificates(state, not_after);
CREATE INDEX certificates_by_device ON certificates(device_id, issued_at DESC, serial);
CREATE INDEX certificates_retire_queue ON certificates(state, retired_at, label, superseded_at);
CREATE INDEX certificates_issued ON certificates(issued_at DESC, serial);
CREATE UNIQUE INDEX certificates_live_lineage ON certificates(owner, lineage)
    WHERE state = 'active' AND lineage IS NOT NULL;
CREATE TABLE pending_requests (
    id            TEXT PRIMARY KEY,
    label         TEXT NOT NULL,
    subject       TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    decided_at    BIGINT,
    issued_serial TEXT
);
CREATE TABLE rotations (
    client_id       TEXT PRIMARY KEY,
    serial          TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    last_error      TEXT,
    new_serial      TEXT,
    requested_at    BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL
);
CREATE TABLE devices (
    id               TEXT PRIMARY KEY,
    token_hash       TEXT NOT NULL,
    label            TEXT NOT NULL,
    thing_name       TEXT,
    policy           TEXT,
    state            TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    enrolled_at      BIGINT,
    cert_serial      TEXT,
    cert_id          TEXT,
    cert_fingerprint TEXT,
    cert_not_after   BIGINT,
    failed_attempts  BIGINT NOT NULL DEFAULT 0,
    locked_until     BIGINT,
    lease_owner      TEXT,
    lease_until      BIGINT,
    edge_ca          BOOLEAN NOT NULL DEFAULT FALSE
);
",
    "
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Advisory lock key taken while migrating (one migrating server at a time).
const MIGRATION_LOCK: i64 = 0x6573_745f_7265_6701;

/// How to reach the database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Connection parameters (host, port, user, database, password).
    pub config: tokio_postgres::Config,
    /// CA certificates (PEM) that sign the database server's certificate:
    /// when set, the connection uses TLS and verifies the server.
    pub ca_pem: Option<Vec<u8>>,
    /// Most connections kept open.
    pub pool_size: usize,
    /// Longest one statement may run (PostgreSQL `statement_timeout`).
    pub statement_timeout: Duration,
    /// Longest a connection attempt or a wait for a free connection may take.
    pub connect_timeout: Duration,
}

impl PostgresOptions {
    /// Options for `url` (`postgres://user@host:port/dbname` or `key=value`
    /// form), without TLS, with default pool size and timeouts.
    pub fn from_url(url: &str) -> Result<Self, RegistryError> {
        Ok(Self {
            config: url
                .parse()
                .map_err(|e: tokio_postgres::Error| RegistryError::Database(e.to_string()))?,
            ca_pem: None,
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        })
    }
}

/// The PostgreSQL registry. Cheap to clone (a connection pool).
#[derive(Clone)]
pub struct PostgresRegistry {
    pool: Pool,
}

impl std::fmt::Debug for PostgresRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRegistry").finish_non_exhaustive()
    }
}

/// A statement parameter owned by its caller.
type Value = Box<dyn ToSql + Sync + Send>;

/// The columns of [`ROTATION_COLUMNS`] for `rotation`, in order.
fn rotation_values(rotation: &Rotation) -> Vec<Value> {
    vec![
        Box::new(rotation.client_id.clone()),
        Box::new(rotation.serial.clone()),
        Box::new(rotation.state.as_str().to_owned()),
        Box::new(i64::from(rotation.attempts)),
        Box::new(rotation.last_error.clone()),
        Box::new(rotation.new_serial.clone()),
        Box::new(rotation.requested_at),
        Box::new(rotation.updated_at),
        Box::new(rotation.next_attempt_at),
    ]
}

/// `values` as the parameter list tokio-postgres takes.
fn params_of(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Rewrites SQLite's `?N` placeholders of the shared SQL to PostgreSQL's `$N`.
pub(super) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl PostgresRegistry {
    /// Connects, applies missing migrations and checks the schema version
    /// (a database migrated by a newer version is refused).
    pub async fn open(options: PostgresOptions) -> Result<Self, RegistryError> {
        let registry = Self::connect(options)?;
        registry.migrate().await?;
        Ok(registry)
    }

    /// A pool without touching the database (connections open on first use).
    pub fn connect(options: PostgresOptions) -> Result<Self, RegistryError> {
        let mut config = options.config.clone();
        config.connect_timeout(options.connect_timeout);
        config.options(format!(
            "-c statement_timeout={}",
            options.statement_timeout.as_millis().max(1)
        ));
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &options.ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert =
                        cert.map_err(|e| RegistryError::Database(format!("ca_file: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| RegistryError::Database(format!("ca_file: {e}")))?;
                }
                let tls = rustls::ClientConfig::builder_with_provider(
                    rustls::crypto::aws_lc_rs::default_provider().into(),
                )
                .with_safe_default_protocol_versions()
                .map_err(|e| RegistryError::Database(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Manager::from_config(
                    config,
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                    manager_config,
                )
            }
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(options.connect_timeout),
                create: Some(options.connect_timeout),
                recycle: Some(options.connect_timeout),
            })
            .build()
            .map_err(|e| RegistryError::Database(e.to_string()))?;
        Ok(Self { pool })
    }

    /// The schema version of the database (0: empty).
    pub async fn schema_version(&self) -> Result<i64, RegistryError> {
        let client = self.client().await?;
        read_version(&client).await
    }

    /// Applies the migrations the database lacks, in one transaction under an
    /// advisory lock; returns the version before and after. Refuses a schema
    /// newer than [`SCHEMA_VERSION`].
    pub async fn migrate(&self) -> Result<(i64, i64), RegistryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await
            .map_err(pg)?;
        let before = read_version(&tx).await?;
        if before > SCHEMA_VERSION {
            return Err(RegistryError::SchemaTooNew {
                found: before,
                known: SCHEMA_VERSION,
            });
        }
        for (done, migration) in MIGRATIONS.iter().enumerate().skip(before as usize) {
            tx.batch_execute(migration).await.map_err(pg)?;
            tracing::info!(version = done + 1, "registry schema migrated");
        }
        tx.execute("DELETE FROM schema_version", &[])
            .await
            .map_err(pg)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok((before, SCHEMA_VERSION))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, RegistryError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => pg(e),
            other => RegistryError::Unavailable(other.to_string()),
        })
    }

    /// Runs `sql` (shared `?N` form) and returns how many rows it changed.
    async fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, RegistryError> {
        let client = self.client().await?;
        run(&client, sql, params).await
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, RegistryError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&numbered(sql)).await.map_err(pg)?;
        client.query(&statement, params).await.map_err(pg)
    }

    async fn records(
        &self,
        tail: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.rows(
            &format!("SELECT {COLUMNS} FROM certificates {tail}"),
            params,
        )
        .await?
        .iter()
        .map(read_record)
        .collect()
    }

    async fn devices(
        &self,
        tail: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Device>, RegistryError> {
        self.rows(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices {tail}"),
            params,
        )
        .await?
        .iter()
        .map(read_device)
        .collect()
    }

    async fn pendings(
        &self,
        tail: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<PendingRequest>, RegistryError> {
        self.rows(
            &format!("SELECT {PENDING_COLUMNS} FROM pending_requests {tail}"),
            params,
        )
        .await?
        .iter()
        .map(read_pending)
        .collect()
    }

    async fn rotations(
        &self,
        tail: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Rotation>, RegistryError> {
        self.rows(
            &format!("SELECT {ROTATION_COLUMNS} FROM rotations {tail}"),
            params,
        )
        .await?
        .iter()
        .map(read_rotation)
        .collect()
    }
}

/// The tables `copy_from_sqlite` copies, with the columns both stores share.
const COPIED_TABLES: [(&str, &str); 4] = [
    ("certificates", CERTIFICATE_COPY_COLUMNS),
    ("devices", DEVICE_COPY_COLUMNS),
    ("pending_requests", PENDING_COPY_COLUMNS),
    ("rotations", ROTATION_COLUMNS),
];

/// Every certificate column (the look-up list plus the bookkeeping ones).
const CERTIFICATE_COPY_COLUMNS: &str = "serial, fingerprint, label, subject, san, not_before, \
    not_after, auth, predecessor, successor, state, issued_at, der, device_id, backend_ref, \
    superseded_at, proven, retired_at, revoked_at, owner, lineage";
/// Every device column.
const DEVICE_COPY_COLUMNS: &str = "id, token_hash, label, thing_name, policy, state, created_at, \
    enrolled_at, cert_serial, cert_id, cert_fingerprint, cert_not_after, failed_attempts, \
    locked_until, lease_owner, lease_until, edge_ca";
/// Every pending request column.
const PENDING_COPY_COLUMNS: &str =
    "id, label, subject, requested_by, state, created_at, decided_at, issued_serial";

impl PostgresRegistry {
    /// Copies every certificate, device, pending request and rotation record
    /// of the SQLite registry at `path` (opened, and so migrated, first) into
    /// this database, row for row, in one transaction; rows whose key is
    /// already here are left alone. Returns the rows copied per table.
    pub async fn copy_from_sqlite(
        &self,
        path: &std::path::Path,
    ) -> Result<Vec<(&'static str, u64)>, RegistryError> {
        drop(super::SqliteRegistry::open(path)?);
        let path = path.to_owned();
        let tables = tokio::task::spawn_blocking(move || read_sqlite_tables(&path))
            .await
            .map_err(|e| RegistryError::Task(e.to_string()))??;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut copied = Vec::new();
        for ((table, columns), rows) in COPIED_TABLES.into_iter().zip(tables) {
            let count = columns.split(',').count();
            let placeholders: Vec<String> = (1..=count).map(|n| format!("${n}")).collect();
            let statement = tx
                .prepare(&format!(
                    "INSERT INTO {table} ({columns}) VALUES ({}) ON CONFLICT DO NOTHING",
                    placeholders.join(", ")
                ))
                .await
                .map_err(pg)?;
            let mut inserted = 0;
            for row in rows {
                let values: Vec<Box<dyn ToSql + Sync + Send>> = row
                    .into_iter()
                    .zip(statement.params())
                    .map(|(value, kind)| to_pg(value, kind))
                    .collect::<Result<_, _>>()?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
                inserted += tx.execute(&statement, &params).await.map_err(pg)?;
            }
            copied.push((table, inserted));
        }
        tx.commit().await.map_err(pg)?;
        Ok(copied)
    }
}

/// Every row of the copied tables, in [`COPIED_TABLES`] order.
fn read_sqlite_tables(
    path: &std::path::Path,
) -> Result<Vec<Vec<Vec<rusqlite::types::Value>>>, RegistryError> {
    let sqlite = |e: rusqlite::Error| RegistryError::Database(e.to_string());
    let connection =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite)?;
    COPIED_TABLES
        .iter()
        .map(|(table, columns)| {
            let count = columns.split(',').count();
            let mut statement = connection
                .prepare(&format!("SELECT {columns} FROM {table}"))
                .map_err(sqlite)?;
            let rows = statement
                .query_map([], |row| {
                    (0..count)
                        .map(|i| row.get::<_, rusqlite::types::Value>(i))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(sqlite)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
        })
        .collect()
}

/// One SQLite value as a parameter for a column of type `kind`.
fn to_pg(
    value: rusqlite::types::Value,
    kind: &tokio_postgres::types::Type,
) -> Result<Box<dyn ToSql + Sync + Send>, RegistryError> {
    use rusqlite::types::Value;
    use tokio_postgres::types::Type;
    Ok(match (value, kind) {
        (Value::Integer(n), &Type::BOOL) => Box::new(n != 0),
        (Value::Integer(n), _) => Box::new(n),
        (Value::Text(text), _) => Box::new(text),
        (Value::Blob(bytes), _) => Box::new(bytes),
        (Value::Null, &Type::INT8) => Box::new(None::<i64>),
        (Value::Null, &Type::BOOL) => Box::new(None::<bool>),
        (Value::Null, &Type::BYTEA) => Box::new(None::<Vec<u8>>),
        (Value::Null, _) => Box::new(None::<String>),
        (Value::Real(r), _) => {
            return Err(RegistryError::Database(format!(
                "unexpected real value {r} in the SQLite registry"
            )))
        }
    })
}

async fn read_version(client: &impl GenericClient) -> Result<i64, RegistryError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(pg)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_opt("SELECT MAX(version) FROM schema_version", &[])
        .await
        .map_err(pg)?;
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0))
}

async fn run(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, RegistryError> {
    let statement = client.prepare_cached(&numbered(sql)).await.map_err(pg)?;
    client.execute(&statement, params).await.map_err(pg)
}

/// Maps a database error: lost connections and timeouts are
/// [`RegistryError::Unavailable`] (the client may retry), a second live
/// certificate of one lineage is [`RegistryError::LineageBusy`].
fn pg(e: tokio_postgres::Error) -> RegistryError {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
            let on_lineage = e
                .as_db_error()
                .and_then(|d| d.constraint())
                .is_some_and(|c| c == "certificates_live_lineage");
            if on_lineage {
                RegistryError::LineageBusy
            } else {
                RegistryError::Database(describe(&e))
            }
        }
        Some(code)
            if *code == SqlState::QUERY_CANCELED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            RegistryError::Unavailable(e.to_string())
        }
        Some(_) => RegistryError::Database(describe(&e)),
        // No SQLSTATE: the connection failed or closed.
        None => RegistryError::Unavailable(e.to_string()),
    }
}

/// A database error with the server's own reason: tokio-postgres displays
/// every server-side error as just "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A `LIMIT` parameter: callers ask for everything with `usize::MAX`, which
/// `as i64` turns into -1, and PostgreSQL refuses a negative LIMIT (SQLite
/// reads it as "no limit").
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A row that does not read as this version expects.
fn decode(e: tokio_postgres::Error) -> RegistryError {
    RegistryError::Database(e.to_string())
}

#[async_trait::async_trait]
impl Registry for PostgresRegistry {
    async fn record_issued(
        &self,
        certificate: NewCertificate,
        supersedes: Option<String>,
        pending_id: Option<String>,
        claim: Option<DeviceClaim>,
    ) -> Result<(), RegistryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let now = unix_now();
        let mut device_id = certificate.device_id.clone();
        if let Some(old) = &supersedes {
            if run(&tx, SUPERSEDE, &[&certificate.serial, old, &now]).await? != 1 {
                return Err(RegistryError::PredecessorNotActive(old.clone()));
            }
            if device_id.is_none() {
                let statement = tx.prepare_cached(&numbered(DEVICE_OF)).await.map_err(pg)?;
                device_id = tx.query_one(&statement, &[old]).await.map_err(pg)?.get(0);
            }
        }
        if let Some(claim) = &claim {
            if run(&tx, ENROLL_CLAIMED, &[&now, &claim.device_id, &claim.owner]).await? != 1 {
                return Err(RegistryError::ReservationLost(claim.device_id.clone()));
            }
            device_id = Some(claim.device_id.clone());
        }
        run(
            &tx,
            INSERT_CERTIFICATE,
            &[
                &certificate.serial,
                &certificate.fingerprint,
                &certificate.label,
                &certificate.subject,
                &certificate.san,
                &certificate.not_before,
                &certificate.not_after,
                &certificate.auth,
                &certificate.predecessor,
                &now,
                &certificate.der,
                &device_id,
                &certificate.backend_ref,
                &certificate.owner,
                &certificate.lineage,
            ],
        )
        .await?;
        if let Some(device) = &device_id {
            let cert_id = claim.as_ref().and_then(|c| c.cert_id.clone());
            run(
                &tx,
                POINT_DEVICE,
                &[
                    &certificate.serial,
                    &certificate.fingerprint,
                    &certificate.not_after,
                    &cert_id,
                    device,
                ],
            )
            .await?;
        }
        if let Some(id) = &pending_id {
            run(&tx, MARK_PENDING_ISSUED, &[&certificate.serial, id]).await?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn live_in_lineage(
        &self,
        owner: &str,
        lineage: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        Ok(self
            .records(LIVE_IN_LINEAGE, &[&owner, &lineage])
            .await?
            .pop())
    }

    async fn set_device_edge_ca(&self, id: &str, allowed: bool) -> Result<(), RegistryError> {
        match self.exec(SET_EDGE_CA, &[&id, &allowed]).await? {
            1 => Ok(()),
            _ => Err(RegistryError::NotFound(format!("device {id}"))),
        }
    }

    async fn find_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        Ok(self.records(BY_SERIAL, &[&serial]).await?.pop())
    }

    async fn list_certificates(
        &self,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.records(NEWEST_FIRST, &[&sql_limit(limit)]).await
    }

    async fn expiring_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.records(EXPIRING_BEFORE, &[&before, &sql_limit(limit)])
            .await
    }

    async fn count_expiring_before(&self, before: i64) -> Result<u64, RegistryError> {
        let rows = self.rows(COUNT_EXPIRING, &[&before]).await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    async fn revoke(&self, serial: &str) -> Result<(), RegistryError> {
        match self.exec(REVOKE, &[&serial, &unix_now()]).await? {
            0 => Err(RegistryError::NotFound(format!("certificate {serial}"))),
            _ => Ok(()),
        }
    }

    async fn mark_predecessor_proven(
        &self,
        serial: &str,
        fingerprint: &str,
    ) -> Result<(), RegistryError> {
        self.exec(MARK_PREDECESSOR_PROVEN, &[&serial, &fingerprint])
            .await
            .map(drop)
    }

    async fn retirement_candidates(
        &self,
        label: &str,
        superseded_before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.records(
            RETIREMENT_CANDIDATES,
            &[&label, &superseded_before, &sql_limit(limit)],
        )
        .await
    }

    async fn mark_retired(&self, serial: &str) -> Result<(), RegistryError> {
        self.exec(MARK_RETIRED, &[&unix_now(), &serial])
            .await
            .map(drop)
    }

    async fn local_revocations(&self) -> Result<Vec<(String, i64)>, RegistryError> {
        Ok(self
            .rows(LOCAL_REVOCATIONS, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, Option<i64>>(1).unwrap_or(0)))
            .collect())
    }

    async fn pending(&self, id: &str) -> Result<Option<PendingRequest>, RegistryError> {
        Ok(self.pendings("WHERE id = ?1", &[&id]).await?.pop())
    }

    async fn add_pending(&self, request: PendingRequest) -> Result<(), RegistryError> {
        self.exec(
            ADD_PENDING,
            &[
                &request.id,
                &request.label,
                &request.subject,
                &request.requested_by,
                &request.created_at,
            ],
        )
        .await
        .map(drop)
    }

    async fn decide_pending(&self, id: &str, approve: bool) -> Result<(), RegistryError> {
        let state = if approve {
            PendingState::Approved
        } else {
            PendingState::Rejected
        };
        match self
            .exec(DECIDE_PENDING, &[&state.as_str(), &unix_now(), &id])
            .await?
        {
            0 => Err(RegistryError::NotFound(format!("pending request {id}"))),
            _ => Ok(()),
        }
    }

    async fn list_pending(&self) -> Result<Vec<PendingRequest>, RegistryError> {
        self.pendings("ORDER BY created_at, id", &[]).await
    }

    async fn add_devices(&self, devices: Vec<NewDevice>) -> Result<Vec<bool>, RegistryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let now = unix_now();
        let mut added = Vec::with_capacity(devices.len());
        for d in &devices {
            let inserted = run(
                &tx,
                ADD_DEVICE,
                &[
                    &d.id,
                    &d.token_hash,
                    &d.label,
                    &d.thing_name,
                    &d.policy,
                    &now,
                    &d.edge_ca,
                ],
            )
            .await?;
            added.push(inserted == 1);
        }
        tx.commit().await.map_err(pg)?;
        Ok(added)
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, RegistryError> {
        Ok(self.devices("WHERE id = ?1", &[&id]).await?.pop())
    }

    async fn list_devices(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Device>, RegistryError> {
        self.devices(
            "WHERE id > ?1 ORDER BY id LIMIT ?2",
            &[&after.unwrap_or_default(), &sql_limit(limit)],
        )
        .await
    }

    async fn device_certificates(&self, id: &str) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.records(OF_DEVICE, &[&id]).await
    }

    async fn disable_device(&self, id: &str) -> Result<(), RegistryError> {
        match self.exec(DISABLE_DEVICE, &[&id]).await? {
            0 => Err(RegistryError::NotFound(format!("device {id}"))),
            _ => Ok(()),
        }
    }

    async fn record_failed_attempt(
        &self,
        id: &str,
        lock_after: u32,
        lock_secs: i64,
    ) -> Result<(), RegistryError> {
        let now = unix_now();
        self.exec(
            FAILED_ATTEMPT,
            &[&i64::from(lock_after), &(now + lock_secs), &id, &now],
        )
        .await
        .map(drop)
    }

    async fn reserve_device(
        &self,
        id: &str,
        token_hash: &str,
        owner: &str,
        lease_until: i64,
    ) -> Result<(), RegistryError> {
        let changed = self
            .exec(
                RESERVE_DEVICE,
                &[&owner, &lease_until, &id, &token_hash, &unix_now()],
            )
            .await?;
        if changed == 1 {
            return Ok(());
        }
        let state = self.rows(DEVICE_STATE, &[&id]).await?;
        let id = id.to_owned();
        Err(match state.first().map(|r| DeviceState::parse(r.get(0))) {
            None => RegistryError::NotFound(format!("device {id}")),
            Some(DeviceState::Enrolled) => RegistryError::TokenUsed(id),
            Some(DeviceState::Disabled) => RegistryError::DeviceDisabled(id),
            Some(DeviceState::Unused) => RegistryError::DeviceBusy(id),
        })
    }

    async fn release_device(&self, id: &str, owner: &str) -> Result<(), RegistryError> {
        self.exec(RELEASE_DEVICE, &[&id, &owner]).await.map(drop)
    }

    async fn reinstate_predecessor(
        &self,
        predecessor: &str,
        successor: &str,
    ) -> Result<(), RegistryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let revoked = run(&tx, REVOKE_UNUSED_SUCCESSOR, &[&successor, &unix_now()]).await?;
        let reinstated = run(&tx, REINSTATE, &[&predecessor, &successor]).await?;
        if revoked != 1 || reinstated != 1 {
            return Err(RegistryError::PredecessorNotActive(predecessor.to_owned()));
        }
        run(&tx, REPOINT_DEVICE, &[&predecessor, &successor]).await?;
        tx.commit().await.map_err(pg)
    }

    async fn rotation(&self, client_id: &str) -> Result<Option<Rotation>, RegistryError> {
        Ok(self
            .rotations("WHERE client_id = ?1", &[&client_id])
            .await?
            .pop())
    }

    async fn save_rotation(&self, rotation: Rotation) -> Result<(), RegistryError> {
        let values = rotation_values(&rotation);
        self.exec(SAVE_ROTATION, &params_of(&values))
            .await
            .map(drop)
    }

    async fn replace_rotation(
        &self,
        expected: &Rotation,
        rotation: Rotation,
    ) -> Result<bool, RegistryError> {
        // $1–$9 the new record, $10–$17 the one read (its client id is $1).
        let values: Vec<_> = rotation_values(&rotation)
            .into_iter()
            .chain(rotation_values(expected).into_iter().skip(1))
            .collect();
        Ok(self.exec(REPLACE_ROTATION, &params_of(&values)).await? == 1)
    }

    async fn list_rotations(&self, limit: usize) -> Result<Vec<Rotation>, RegistryError> {
        self.rotations("ORDER BY client_id LIMIT ?1", &[&sql_limit(limit)])
            .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: i64,
    ) -> Result<bool, RegistryError> {
        let changed = self
            .exec(ACQUIRE_LEASE, &[&name, &holder, &until, &unix_now()])
            .await?;
        Ok(changed == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), RegistryError> {
        self.exec(RELEASE_LEASE, &[&name, &holder]).await.map(drop)
    }
}

fn read_record(row: &Row) -> Result<CertificateRecord, RegistryError> {
    Ok(CertificateRecord {
        certificate: NewCertificate {
            serial: row.try_get(0).map_err(decode)?,
            fingerprint: row.try_get(1).map_err(decode)?,
            label: row.try_get(2).map_err(decode)?,
            subject: row.try_get(3).map_err(decode)?,
            san: row.try_get(4).map_err(decode)?,
            not_before: row.try_get(5).map_err(decode)?,
            not_after: row.try_get(6).map_err(decode)?,
            auth: row.try_get(7).map_err(decode)?,
            predecessor: row.try_get(8).map_err(decode)?,
            der: row.try_get(12).map_err(decode)?,
            device_id: row.try_get(13).map_err(decode)?,
            backend_ref: row.try_get(14).map_err(decode)?,
            owner: row.try_get(17).map_err(decode)?,
            lineage: row.try_get(18).map_err(decode)?,
        },
        successor: row.try_get(9).map_err(decode)?,
        state: CertState::parse(row.try_get(10).map_err(decode)?),
        issued_at: row.try_get(11).map_err(decode)?,
        retired_at: row.try_get(15).map_err(decode)?,
        successor_proven: row.try_get::<_, i64>(16).map_err(decode)? != 0,
    })
}

fn read_pending(row: &Row) -> Result<PendingRequest, RegistryError> {
    Ok(PendingRequest {
        id: row.try_get(0).map_err(decode)?,
        label: row.try_get(1).map_err(decode)?,
        subject: row.try_get(2).map_err(decode)?,
        requested_by: row.try_get(3).map_err(decode)?,
        state: PendingState::parse(row.try_get(4).map_err(decode)?),
        created_at: row.try_get(5).map_err(decode)?,
        issued_serial: row.try_get(6).map_err(decode)?,
    })
}

fn read_device(row: &Row) -> Result<Device, RegistryError> {
    Ok(Device {
        device: NewDevice {
            id: row.try_get(0).map_err(decode)?,
            token_hash: row.try_get(1).map_err(decode)?,
            label: row.try_get(2).map_err(decode)?,
            thing_name: row.try_get(3).map_err(decode)?,
            policy: row.try_get(4).map_err(decode)?,
            edge_ca: row.try_get(14).map_err(decode)?,
        },
        state: DeviceState::parse(row.try_get(5).map_err(decode)?),
        created_at: row.try_get(6).map_err(decode)?,
        enrolled_at: row.try_get(7).map_err(decode)?,
        cert_serial: row.try_get(8).map_err(decode)?,
        cert_id: row.try_get(9).map_err(decode)?,
        cert_fingerprint: row.try_get(10).map_err(decode)?,
        cert_not_after: row.try_get(11).map_err(decode)?,
        failed_attempts: row.try_get::<_, i64>(12).map_err(decode)? as u32,
        locked_until: row.try_get(13).map_err(decode)?,
    })
}

fn read_rotation(row: &Row) -> Result<Rotation, RegistryError> {
    Ok(Rotation {
        client_id: row.try_get(0).map_err(decode)?,
        serial: row.try_get(1).map_err(decode)?,
        state: RotationState::parse(row.try_get(2).map_err(decode)?),
        attempts: row.try_get::<_, i64>(3).map_err(decode)? as u32,
        last_error: row.try_get(4).map_err(decode)?,
        new_serial: row.try_get(5).map_err(decode)?,
        requested_at: row.try_get(6).map_err(decode)?,
        updated_at: row.try_get(7).map_err(decode)?,
        next_attempt_at: row.try_get(8).map_err(decode)?,
    })
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_are_renumbered() {
        assert_eq!(
            numbered("WHERE a = ?1 AND b = ?12 AND c = '?'"),
            "WHERE a = $1 AND b = $12 AND c = '?'"
        );
    }
}
