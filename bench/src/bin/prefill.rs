//! Pre-fills a server's SQLite or PostgreSQL registry with N certificate
//! records, so `est-bench` can compare throughput on a full registry with an
//! empty one.
//!
//! SQLite: the records go through the registry's own API (group commit, the
//! same indexes the server uses). PostgreSQL: the registry is opened once
//! (which migrates the schema), then the same records go in as multi-row
//! `INSERT … SELECT FROM UNNEST(arrays)` of `--batch` rows, one transaction
//! each, over `--connections` connections (the registry's per-record
//! transaction would take hours for a million). Either way their DER is a 600-byte placeholder (nothing
//! reads it unless a client presents that certificate); serials come from
//! the local CA's generator (time-ordered, like the records a real server
//! would have written before), fingerprints are SHA-256 values, and validity
//! ends are spread over a year so expiry audits have work to skip.
//!
//! ```sh
//! target/release/prefill --registry /tmp/benchdata/registry.sqlite --count 1000000
//! target/release/prefill --postgres postgres://est@127.0.0.1:5432/est --count 1000000
//! ```

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use clap::Parser;
use est_server::registry::{unix_now, NewCertificate, Registry, SqliteRegistry};

#[derive(Parser)]
#[command(about = "Pre-fill an est-server SQLite or PostgreSQL registry with certificate records")]
struct Args {
    /// The SQLite registry file (created if missing).
    #[arg(
        long,
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    registry: Option<std::path::PathBuf>,
    /// A PostgreSQL registry instead (URL; the schema is migrated first).
    #[arg(long)]
    postgres: Option<String>,
    /// Records to add.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Writes in flight at once (they share group commits). SQLite only.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Rows per INSERT (one transaction each). PostgreSQL only.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
    /// Connections inserting at once. PostgreSQL only.
    #[arg(long, default_value_t = 4)]
    connections: u64,
}

/// A fingerprint and a serial (time-ordered, as the local CA makes them).
fn identity() -> anyhow::Result<(String, String)> {
    let serial = hex::encode(ca_backends::time_ordered_serial(SystemTime::now())?);
    Ok((est_wire::sha256_hex(serial.as_bytes()), serial))
}

/// When record `i` ends: spread over a year.
fn not_after(now: i64, i: u64) -> i64 {
    now + 86_400 + (i as i64 % 365) * 86_400
}

/// The columns `record_issued` writes for a new active certificate with no
/// predecessor, device, backend id, owner or lineage; the rows of one batch
/// come as arrays.
const INSERT_BATCH: &str = "INSERT INTO certificates (serial, fingerprint, label, subject, san,
        not_before, not_after, auth, predecessor, successor, state, issued_at, der, device_id,
        backend_ref, owner, lineage)
    SELECT serial, fingerprint, '', subject, '', $4, not_after, 'basic:prefill', NULL, NULL,
        'active', $5, $6, NULL, NULL, NULL, NULL
    FROM UNNEST($1::text[], $2::text[], $3::text[], $7::bigint[])
        AS batch(serial, fingerprint, subject, not_after)";

async fn prefill_postgres(args: &Args, url: &str) -> anyhow::Result<()> {
    use est_server::registry::{PostgresOptions, PostgresRegistry};
    PostgresRegistry::open(PostgresOptions::from_url(url)?).await?;
    let started = Instant::now();
    let now = unix_now();
    let batches = args.count.div_ceil(args.batch.max(1));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.connections.max(1) {
        let (url, next, done) = (url.to_owned(), next.clone(), done.clone());
        let (count, size) = (args.count, args.batch.max(1));
        workers.spawn(async move {
            let (mut client, connection) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let insert = client.prepare(INSERT_BATCH).await?;
            let der = vec![0x30u8; 600];
            loop {
                let batch = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let rows = batch * size..((batch + 1) * size).min(count);
                let mut serials = Vec::new();
                let mut fingerprints = Vec::new();
                let mut subjects = Vec::new();
                let mut ends = Vec::new();
                for i in rows.clone() {
                    let (fingerprint, serial) = identity()?;
                    serials.push(serial);
                    fingerprints.push(fingerprint);
                    subjects.push(format!("CN=prefill-{i}"));
                    ends.push(not_after(now, i));
                }
                let tx = client.transaction().await?;
                tx.execute(
                    &insert,
                    &[&serials, &fingerprints, &subjects, &now, &now, &der, &ends],
                )
                .await?;
                tx.commit().await?;
                let total = done
                    .fetch_add(rows.end - rows.start, std::sync::atomic::Ordering::Relaxed)
                    + (rows.end - rows.start);
                if total / 100_000 != (total - (rows.end - rows.start)) / 100_000 {
                    eprintln!(
                        "{total} records, {:.0}/s",
                        total as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker??;
    }
    println!(
        "added {} records in {:.1} s ({:.0}/s)",
        args.count,
        started.elapsed().as_secs_f64(),
        args.count as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.postgres {
        return prefill_postgres(&args, url).await;
    }
    let path = args.registry.as_ref().expect("clap requires --registry");
    let registry: Arc<dyn Registry> = Arc::new(SqliteRegistry::open(path)?);
    let started = Instant::now();
    let now = unix_now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let permit = gate.clone().acquire_owned().await?;
        let registry = registry.clone();
        tasks.spawn(async move {
            let (fingerprint, serial) = identity()?;
            let record = NewCertificate {
                fingerprint,
                serial,
                label: String::new(),
                subject: format!("CN=prefill-{i}"),
                san: String::new(),
                not_before: now,
                not_after: not_after(now, i),
                auth: "basic:prefill".into(),
                predecessor: None,
                device_id: None,
                backend_ref: None,
                owner: None,
                lineage: None,
                der: vec![0x30; 600],
            };
            let result = registry.record_issued(record, None, None, None).await;
            drop(permit);
            anyhow::Ok(result?)
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
        if i > 0 && i % 100_000 == 0 {
            eprintln!(
                "{i} records, {:.0}/s",
                i as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    println!(
        "added {} records in {:.1} s ({:.0}/s)",
        args.count,
        started.elapsed().as_secs_f64(),
        args.count as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
