//! Pre-fills a server's SQLite registry with N certificate records, so
//! `est-bench` can compare throughput on a full registry with an empty one.
//!
//! The records go through the registry's own API (group commit, the same
//! indexes the server uses). Their DER is a 600-byte placeholder (nothing
//! reads it unless a client presents that certificate); serials come from
//! the local CA's generator (time-ordered, like the records a real server
//! would have written before), fingerprints are SHA-256 values, and validity
//! ends are spread over a year so expiry audits have work to skip.
//!
//! ```sh
//! target/release/prefill --registry /tmp/benchdata/registry.sqlite --count 1000000
//! ```

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use clap::Parser;
use est_server::registry::{unix_now, NewCertificate, Registry, SqliteRegistry};

#[derive(Parser)]
#[command(about = "Pre-fill an est-server SQLite registry with certificate records")]
struct Args {
    /// The registry file (created if missing).
    #[arg(long)]
    registry: std::path::PathBuf,
    /// Records to add.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Writes in flight at once (they share group commits).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let registry: Arc<dyn Registry> = Arc::new(SqliteRegistry::open(&args.registry)?);
    let started = Instant::now();
    let now = unix_now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let permit = gate.clone().acquire_owned().await?;
        let registry = registry.clone();
        tasks.spawn(async move {
            let serial = hex::encode(ca_backends::time_ordered_serial(SystemTime::now())?);
            let record = NewCertificate {
                fingerprint: est_wire::sha256_hex(serial.as_bytes()),
                serial,
                label: String::new(),
                subject: format!("CN=prefill-{i}"),
                san: String::new(),
                not_before: now,
                not_after: now + 86_400 + (i as i64 % 365) * 86_400,
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
