//! `est-bench`: drives `/simpleenroll` (new TLS connection per enrollment, or
//! keep-alive) and `/simplereenroll` over mTLS at fixed concurrency for a fixed
//! time, and prints enrollments/s, latency percentiles, errors by status, the
//! server's CPU seconds per enrollment and peak RSS (from /proc/<pid>), and
//! this machine's single-core crypto floor (CSR verify + certificate sign).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use est_client::transport::{client_config, read_certs, ClientIdentity, ServerTrust};
use est_wire::csr::{Csr, CsrSpec};
use est_wire::keys::{KeyAlgorithm, SigningKey};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// Enrollment benchmark for est-server.
#[derive(Parser)]
struct Args {
    /// Server host:port.
    #[arg(long, default_value = "localhost:8443")]
    server: String,
    /// Trust anchor PEM.
    #[arg(long)]
    trust: std::path::PathBuf,
    /// Basic user:password for /simpleenroll.
    #[arg(long, default_value = "estuser:estpwd")]
    basic: String,
    /// Concurrency levels to run.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    concurrency: Vec<usize>,
    /// Time per run.
    #[arg(long, default_value = "10")]
    seconds: u64,
    /// Modes: keepalive, newconn, reenroll.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "keepalive,newconn,reenroll"
    )]
    modes: Vec<String>,
    /// Server process id, for CPU and RSS figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Pre-generated CSRs (reused round-robin).
    #[arg(long, default_value = "256")]
    csrs: usize,
}

/// One worker's latencies and errors by kind.
type WorkerResult = (Vec<Duration>, BTreeMap<String, usize>);

struct Run {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let floor = crypto_floor().await;
    println!("crypto floor (1 core, P-256 CSR verify + certificate sign): {floor:.0} ops/s; {cores} cores");

    let anchors = read_certs(&args.trust)?;
    let plain = client_config(ServerTrust::Anchors(anchors.clone()), None)?;
    let (host, port) = args.server.rsplit_once(':').context("--server host:port")?;
    let target = Target {
        host: host.to_owned(),
        port: port.parse()?,
        basic: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(&args.basic)
        ),
    };
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..args.csrs)
            .map(|i| {
                let key = SigningKey::generate(KeyAlgorithm::EcP256).expect("key");
                let spec = CsrSpec {
                    subject: format!("CN=bench-{i}").parse().expect("name"),
                    ..Default::default()
                };
                Bytes::from(est_wire::body::encode(
                    &est_wire::csr::build(&spec, &key).expect("csr"),
                ))
            })
            .collect(),
    );
    println!(
        "{:<10} {:>5} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>9}  errors",
        "mode",
        "conc",
        "enroll/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "vs floor",
        "cpu ms/enr",
        "peak RSS"
    );
    for mode in &args.modes {
        for &concurrency in &args.concurrency {
            let cpu_before = args.server_pid.and_then(cpu_seconds);
            let run = match mode.as_str() {
                "keepalive" => {
                    run_enroll(&target, &plain, &bodies, concurrency, args.seconds, true).await
                }
                "newconn" => {
                    run_enroll(&target, &plain, &bodies, concurrency, args.seconds, false).await
                }
                "reenroll" => {
                    run_reenroll(&target, &anchors, &plain, concurrency, args.seconds).await?
                }
                other => anyhow::bail!("unknown mode {other}"),
            };
            let cpu_after = args.server_pid.and_then(cpu_seconds);
            report(
                mode,
                concurrency,
                run,
                floor,
                cores,
                cpu_before.zip(cpu_after),
                args.server_pid,
            );
        }
    }
    Ok(())
}

struct Target {
    host: String,
    port: u16,
    basic: String,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(
    target: &Target,
    tls: &Arc<tokio_rustls::rustls::ClientConfig>,
) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(target.host.clone())?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn post(
    sender: &mut Sender,
    target: &Target,
    path: &str,
    body: Bytes,
    basic: bool,
) -> Result<Bytes, String> {
    let mut request = hyper::Request::post(path)
        .header("Host", &target.host)
        .header("Content-Type", "application/pkcs10");
    if basic {
        request = request.header("Authorization", &target.basic);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| "io".to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| "io".to_string())?
        .to_bytes();
    if status == 200 {
        Ok(body)
    } else {
        Err(status.as_u16().to_string())
    }
}

async fn run_enroll(
    target: &Target,
    tls: &Arc<tokio_rustls::rustls::ClientConfig>,
    bodies: &Arc<Vec<Bytes>>,
    concurrency: usize,
    seconds: u64,
    keep_alive: bool,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let target = Arc::new(Target {
        host: target.host.clone(),
        port: target.port,
        basic: target.basic.clone(),
    });
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (target, tls, bodies) = (target.clone(), tls.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            let mut sender: Option<Sender> = None;
            let mut i = worker;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if sender.is_none() || !keep_alive {
                    match connect(&target, &tls).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            *errors.entry("connect".into()).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let body = bodies[i % bodies.len()].clone();
                i += concurrency;
                let result = post(
                    sender.as_mut().expect("connected"),
                    &target,
                    "/.well-known/est/simpleenroll",
                    body,
                    true,
                )
                .await;
                match result {
                    Ok(_) => latencies.push(t0.elapsed()),
                    Err(status) => {
                        *errors.entry(status).or_default() += 1;
                        sender = None;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    collect(workers, started).await
}

async fn run_reenroll(
    target: &Target,
    anchors: &[rustls_pki_types::CertificateDer<'static>],
    plain: &Arc<tokio_rustls::rustls::ClientConfig>,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<Run> {
    // Each worker enrolls once, then renews its own certificate in a loop,
    // each renewal over a new mTLS connection with the current certificate.
    let target = Arc::new(Target {
        host: target.host.clone(),
        port: target.port,
        basic: target.basic.clone(),
    });
    let mut workers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    for worker in 0..concurrency {
        let key = SigningKey::generate(KeyAlgorithm::EcP256)?;
        let spec = CsrSpec {
            subject: format!("CN=bench-renew-{worker}").parse()?,
            ..Default::default()
        };
        let body = Bytes::from(est_wire::body::encode(&est_wire::csr::build(&spec, &key)?));
        let mut sender = connect(&target, plain).await?;
        let first = post(
            &mut sender,
            &target,
            "/.well-known/est/simpleenroll",
            body.clone(),
            true,
        )
        .await
        .map_err(|s| anyhow::anyhow!("initial enrollment: {s}"))?;
        let (target, anchors) = (target.clone(), anchors.to_vec());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            let mut current = first_cert(&first);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let identity = ClientIdentity {
                    chain: vec![rustls_pki_types::CertificateDer::from(current.clone())],
                    key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into()),
                };
                let tls = match client_config(ServerTrust::Anchors(anchors.clone()), Some(identity))
                {
                    Ok(tls) => tls,
                    Err(_) => break,
                };
                let result = match connect(&target, &tls).await {
                    Ok(mut sender) => {
                        post(
                            &mut sender,
                            &target,
                            "/.well-known/est/simplereenroll",
                            body.clone(),
                            false,
                        )
                        .await
                    }
                    Err(_) => Err("connect".into()),
                };
                match result {
                    Ok(response) => {
                        current = first_cert(&response);
                        latencies.push(t0.elapsed());
                    }
                    Err(status) => *errors.entry(status).or_default() += 1,
                }
            }
            (latencies, errors)
        }));
    }
    Ok(collect(workers, started).await)
}

fn first_cert(body: &[u8]) -> Vec<u8> {
    use der::Encode;
    let der = est_wire::body::decode(body).unwrap_or_default();
    est_wire::pkcs7::decode_certs_only(&der)
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .and_then(|c| c.to_der().ok())
        .unwrap_or_default()
}

async fn collect(workers: Vec<tokio::task::JoinHandle<WorkerResult>>, started: Instant) -> Run {
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    for worker in workers {
        if let Ok((l, e)) = worker.await {
            latencies.extend(l);
            for (k, v) in e {
                *errors.entry(k).or_default() += v;
            }
        }
    }
    latencies.sort();
    Run {
        latencies,
        errors,
        elapsed: started.elapsed(),
    }
}

fn report(
    mode: &str,
    concurrency: usize,
    run: Run,
    floor: f64,
    cores: usize,
    cpu: Option<(f64, f64)>,
    pid: Option<u32>,
) {
    let n = run.latencies.len();
    let rate = n as f64 / run.elapsed.as_secs_f64();
    let pct = |p: f64| {
        if n == 0 {
            0.0
        } else {
            run.latencies[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1000.0
        }
    };
    let cpu_per = cpu.map(|(a, b)| {
        if n == 0 {
            0.0
        } else {
            (b - a) / n as f64 * 1000.0
        }
    });
    let rss = pid.and_then(peak_rss_kib);
    println!(
        "{:<10} {:>5} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.1}% {:>11} {:>9}  {:?}",
        mode,
        concurrency,
        rate,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        run.latencies
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0),
        rate / (floor * cores as f64) * 100.0,
        cpu_per
            .map(|c| format!("{c:.3}"))
            .unwrap_or_else(|| "-".into()),
        rss.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "-".into()),
        run.errors
    );
}

/// Single-core CSR verification + certificate signing rate (the floor to approach).
async fn crypto_floor() -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = ca_backends::local::LocalCa::open_or_create(dir.path(), &Default::default())
        .await
        .expect("CA");
    let key = SigningKey::generate(KeyAlgorithm::EcP256).expect("key");
    let spec = CsrSpec {
        subject: "CN=floor".parse().expect("name"),
        ..Default::default()
    };
    let der = est_wire::csr::build(&spec, &key).expect("csr");
    let profile = ca_backends::Profile::default();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        let csr = Csr::from_der(&der).expect("verify");
        ca.issue(csr.subject(), csr.public_key(), &[], &profile)
            .await
            .expect("sign");
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
