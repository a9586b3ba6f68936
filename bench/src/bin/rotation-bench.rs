//! Rotation benchmark: how long one MQTT rotation round trip takes, and how
//! long the audit of a fleet of N devices takes from `est-server rotate` to
//! the last device acknowledged and its predecessor retired.
//!
//! Self-contained: starts the real `est-server` (target/debug, or
//! `$EST_SERVER_BIN`) with the orchestrator on and a real Mosquitto, enrolls
//! N devices over EST, then plays the whole fleet from one MQTT connection
//! (a "fleet-sim" client the broker ACL lets use every device topic): each
//! `csr_req` gets a CSR from a fresh P-256 key, each `crt_res` a `crt_ack`.
//!
//! ```sh
//! cargo build -p est-server && cargo run --release -p est-bench --bin rotation-bench -- --devices 1000
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use est_client::client::{CsrSource, EstClient, EstClientConfig};
use est_client::transport::{read_certs, ServerTrust};
use est_e2e::mosquitto::ORCHESTRATOR;
use est_e2e::{config_with, Mosquitto, Server};
use est_wire::csr::CsrSpec;
use est_wire::keys::{KeyAlgorithm, SigningKey};
use est_wire::rotation::{CertificateAck, CertificateResponse, CsrResponse, Step, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::Mutex;

/// The simulator's MQTT client id (and certificate CN).
const FLEET: &str = "fleet-sim";

#[derive(Parser)]
#[command(about = "MQTT rotation round trip and fleet audit time")]
struct Args {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Concurrent EST enrollments while building the fleet.
    #[arg(long, default_value_t = 16)]
    enroll_concurrency: usize,
}

#[derive(Default)]
struct Timeline {
    asked: HashMap<String, Instant>,
    answered: HashMap<String, Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let port = Mosquitto::free_port();
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\n{}",
        config_with(&format!(
            "[rotation]\nenabled = true\nbroker = \"127.0.0.1:{port}\"\n\
             client_id = \"{ORCHESTRATOR}\"\nexpiring_within = \"1d\"\naudit_interval = \"1h\"\n\
             retry_after = \"1h\"\nmax_in_flight = {}\n",
            args.devices + 10
        ))
    );
    let server = Server::start_with(&config, None);
    let broker = Mosquitto::start_with_operators(&server, port, &[FLEET]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args, &server, &broker))
}

fn est_client(server: &Server) -> anyhow::Result<EstClient> {
    let mut config = EstClientConfig::new(
        format!("localhost:{}", server.addr.rsplit(':').next().unwrap()),
        ServerTrust::Anchors(read_certs(&server.ca_pem())?),
    );
    config.label = Some("iot".into());
    config.basic = Some(("estuser".into(), "estpwd".to_owned().into()));
    Ok(EstClient::new(config)?)
}

fn spec(cn: &str) -> anyhow::Result<CsrSpec> {
    Ok(CsrSpec {
        subject: format!("CN={cn}").parse().context("subject")?,
        ..CsrSpec::default()
    })
}

async fn run(args: &Args, server: &Server, broker: &Mosquitto) -> anyhow::Result<()> {
    let client = Arc::new(est_client(server)?);
    // The fleet: N devices enrolled over EST.
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.enroll_concurrency));
    let mut tasks = Vec::new();
    for i in 0..args.devices {
        let (client, gate) = (client.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let key = SigningKey::generate(KeyAlgorithm::EcP256)?;
            let spec = spec(&format!("fleet-{i:05}"))?;
            client
                .simpleenroll(CsrSource::Build {
                    spec: &spec,
                    key: &key,
                })
                .await?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "enrolled {} devices in {:.1} s",
        args.devices,
        started.elapsed().as_secs_f64()
    );

    // The simulator's own certificate, from the same CA.
    let dir = tempfile::tempdir()?;
    let key = SigningKey::generate(KeyAlgorithm::EcP256)?;
    let certificate = client
        .simpleenroll(CsrSource::Build {
            spec: &spec(FLEET)?,
            key: &key,
        })
        .await?;
    let (cert_path, key_path) = (dir.path().join("fleet.pem"), dir.path().join("fleet.key"));
    std::fs::write(&cert_path, est_wire::pem::certificate_to_pem(&certificate))?;
    std::fs::write(&key_path, key.to_pkcs8_pem())?;

    let topics = Topics::default();
    let (mqtt, mut events) = connect(broker.port, &server.ca_pem(), &cert_path, &key_path)?;
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = {
        let (mqtt, topics, timeline, acked) = (
            mqtt.clone(),
            topics.clone(),
            timeline.clone(),
            acked.clone(),
        );
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for step in [Step::CsrReq, Step::CrtRes] {
                            mqtt.subscribe(topics.all_clients(step), QoS::AtLeastOnce)
                                .await?;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(message))) => {
                        let (mqtt, topics, timeline, acked) = (
                            mqtt.clone(),
                            topics.clone(),
                            timeline.clone(),
                            acked.clone(),
                        );
                        tokio::spawn(async move {
                            if let Err(e) = answer(
                                &mqtt,
                                &topics,
                                &timeline,
                                &acked,
                                &message.topic,
                                &message.payload,
                            )
                            .await
                            {
                                eprintln!("fleet-sim: {e:#}");
                            }
                        });
                    }
                    Ok(_) => {}
                    Err(e) => anyhow::bail!("fleet-sim MQTT: {e}"),
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        })
    };
    // Let the subscription settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One device first: a single round trip.
    let single = Instant::now();
    audit(server, Some("fleet-00000")).await?;
    wait_acknowledged(server, 1).await?;
    let single = single.elapsed();

    // Then the whole fleet (every certificate, the renewed one and the
    // simulator's own included: the window covers them all).
    let started = Instant::now();
    let (audit_time, asked) = audit(server, None).await?;
    wait_acknowledged(server, asked).await?;
    let total = started.elapsed();
    handler.abort();

    let timeline = timeline.lock().await;
    let mut round_trips: Vec<Duration> = timeline.answered.values().copied().collect();
    round_trips.sort();
    let percentile = |p: f64| {
        round_trips
            .get(((round_trips.len() as f64 * p) as usize).min(round_trips.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "one rotation (csr_req → csr_res → crt_res → crt_ack → retired): {:.0} ms",
        single.as_secs_f64() * 1000.0
    );
    println!(
        "fleet audit of {asked} devices: `est-server rotate` published every csr_req in {:.2} s; \
         all acknowledged and predecessors retired after {:.2} s ({:.0} rotations/s)",
        audit_time.as_secs_f64(),
        total.as_secs_f64(),
        asked as f64 / total.as_secs_f64()
    );
    println!(
        "per device, csr_req received → crt_res received: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        round_trips.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    Ok(())
}

/// Answers one message for the whole fleet.
async fn answer(
    mqtt: &AsyncClient,
    topics: &Topics,
    timeline: &Mutex<Timeline>,
    acked: &std::sync::atomic::AtomicUsize,
    topic: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let Some((client_id, step)) = topics.parse(topic) else {
        return Ok(());
    };
    match step {
        Step::CsrReq => {
            timeline
                .lock()
                .await
                .asked
                .insert(client_id.to_owned(), Instant::now());
            let key = SigningKey::generate(KeyAlgorithm::EcP256)?;
            let der = est_wire::csr::build(&spec(client_id)?, &key)?;
            let request: est_wire::rotation::CsrRequest = serde_json::from_slice(payload)?;
            let response = CsrResponse {
                csr: est_wire::pem::encode("CERTIFICATE REQUEST", &der),
                serial: Some(request.serial),
            };
            mqtt.publish(
                topics.topic(client_id, Step::CsrRes),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&response)?,
            )
            .await?;
        }
        Step::CrtRes => {
            let response: CertificateResponse = serde_json::from_slice(payload)?;
            let certificates =
                est_wire::pem::certificates_from_pem(response.certificate_pem.as_bytes())?;
            let certificate = certificates.first().context("no certificate")?;
            let serial = hex::encode(certificate.tbs_certificate.serial_number.as_bytes());
            {
                let mut timeline = timeline.lock().await;
                if let Some(asked) = timeline.asked.get(client_id).copied() {
                    timeline
                        .answered
                        .insert(client_id.to_owned(), asked.elapsed());
                }
            }
            mqtt.publish(
                topics.topic(client_id, Step::CrtAck),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&CertificateAck { serial })?,
            )
            .await?;
            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        _ => {}
    }
    Ok(())
}

/// Runs `est-server rotate`; returns how long it took and how many devices it asked.
async fn audit(server: &Server, device: Option<&str>) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let mut args = vec!["rotate", "--expiring-within", "60d"];
    if let Some(device) = device {
        args.extend(["--device", device]);
    }
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let out = tokio::task::block_in_place(|| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        server.admin(&refs)
    });
    let elapsed = started.elapsed();
    let summary = out.lines().last().unwrap_or_default();
    println!("rotate: {summary}");
    let asked = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("rotate summary")?;
    Ok((elapsed, asked))
}

/// Polls `/metrics` until `count` rotations are acknowledged.
async fn wait_acknowledged(server: &Server, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let metrics = tokio::task::block_in_place(|| {
            est_e2e::curl(&[format!("http://{}/metrics", server.admin_addr())]).text()
        });
        let done = metrics
            .lines()
            .find(|l| l.starts_with("est_rotations{state=\"acknowledged\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
        if done >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {count} rotations acknowledged after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn connect(
    port: u16,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(ca)?[..]) {
        roots.add(c?)?;
    }
    let chain =
        rustls_pemfile::certs(&mut &std::fs::read(cert)?[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &std::fs::read(key)?[..])?.context("key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let mut options = MqttOptions::new(FLEET, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    options.set_inflight(1000);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    Ok(AsyncClient::new(options, 20_000))
}
