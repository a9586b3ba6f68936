//! A bounded soak: legitimate token enrollments, renewals and Basic logins
//! while a hostile client set runs against the same server — pipeliners that
//! never read, slowloris header trickles, a flood of the admin port and
//! password guessers from 200 addresses, each within its failure budget.
//! The legitimate p99 must stay under 1 s and every certificate a client
//! received must be in the registry. Figures: docs/PERFORMANCE.md.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use der::Encode;
use est_e2e::net::*;
use est_e2e::*;
use tokio::io::AsyncWriteExt;

/// How long the hostile set and the legitimate clients run together.
const SOAK: Duration = Duration::from_secs(45);
/// Legitimate workers (each: enroll with a token, renew over mTLS, enroll as a Basic user).
const WORKERS: usize = 4;
/// Guessing addresses, 127.0.3.1 … 127.0.3.200.
const GUESSERS: usize = 200;

fn csr(cn: &str) -> (Vec<u8>, Vec<u8>) {
    let key = est_wire::keys::SigningKey::generate(est_wire::keys::KeyAlgorithm::EcP256).unwrap();
    let spec = est_wire::csr::CsrSpec {
        subject: ca_name(cn),
        ..Default::default()
    };
    let der = est_wire::csr::build(&spec, &key).unwrap();
    (
        est_wire::body::encode(&der).into_bytes(),
        key.pkcs8_der().to_vec(),
    )
}

fn ca_name(cn: &str) -> x509_cert::name::Name {
    use std::str::FromStr;
    x509_cert::name::Name::from_str(&format!("CN={cn}")).unwrap()
}

fn post(path: &str, authorization: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: Basic {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// One request on a new TLS connection from 127.0.0.1; status, body, latency.
async fn exchange(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    request: &[u8],
) -> (u16, Vec<u8>, Duration) {
    let started = Instant::now();
    let attempt = async {
        let mut tls = tls_from(connector, "127.0.0.1", addr, false).await.ok()?;
        tls.write_all(request).await.ok()?;
        read_response_with_body(&mut tls).await
    };
    // A starved request fails the soak rather than hanging it.
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Some((head, body))) => (status_of(&head), body, started.elapsed()),
        _ => (0, Vec::new(), started.elapsed()),
    }
}

fn certificate_of(body: &[u8]) -> x509_cert::Certificate {
    let der = est_wire::body::decode(body).unwrap();
    est_wire::pkcs7::decode_certs_only(&der).unwrap().remove(0)
}

#[derive(Default)]
struct Tally {
    latencies: std::sync::Mutex<Vec<Duration>>,
    serials: std::sync::Mutex<Vec<String>>,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, status: u16, took: Duration) -> bool {
        self.latencies.lock().unwrap().push(took);
        if status != 200 {
            self.failures
                .lock()
                .unwrap()
                .push(format!("{what}: {status}"));
        }
        status == 200
    }
}

#[test]
fn legitimate_clients_keep_their_latency_under_a_hostile_load() {
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\n{}",
        config_with(&format!(
            "[labels.tok]\nprofile = \"device\"\nauth = [\"device-token\"]\n\
             [[users]]\nname = \"alice\"\npassword_hash = \"{}\"\n",
            estpwd_hash()
        ))
    );
    let server = Server::start_with(&config, None);
    let admin = server.admin_addr();
    // Devices for the legitimate token enrollments.
    let work = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..400).map(|i| format!("SOAK-{i:04}")).collect();
    let csv = work.path().join("devices.csv");
    std::fs::write(
        &csv,
        ids.iter()
            .map(|id| format!("{id},tok\n"))
            .collect::<String>(),
    )
    .unwrap();
    let tokens_file = work.path().join("tokens.csv");
    server.admin(&[
        "devices",
        "import",
        &csv.display().to_string(),
        "--tokens-out",
        &tokens_file.display().to_string(),
    ]);
    let tokens: Vec<(String, String)> = std::fs::read_to_string(&tokens_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(',').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .filter(|(id, _)| id.starts_with("SOAK-"))
        .collect();
    assert_eq!(tokens.len(), ids.len());

    let addr = server.addr.clone();
    let connector = connector(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let hostile_closed = Arc::new(AtomicU64::new(0));
    let guesses = Arc::new(AtomicU64::new(0));
    let runtime = runtime();
    let alice_took = runtime.block_on(async {
        let mut hostile = tokio::task::JoinSet::new();
        // Pipeliners: 20 connections that pipeline requests and never read.
        for _ in 0..20 {
            let (connector, addr, stop, closed) = (
                connector.clone(),
                addr.clone(),
                stop.clone(),
                hostile_closed.clone(),
            );
            hostile.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(tls) = tls_from(&connector, "127.0.2.1", &addr, true).await {
                        if pipeline_until_closed(tls, CACERTS, SOAK).await.is_some() {
                            closed.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
        }
        // Slowloris: 40 connections trickling a header a byte a second.
        for _ in 0..40 {
            let (addr, stop, closed) = (addr.clone(), stop.clone(), hostile_closed.clone());
            hostile.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = tcp_from("127.0.2.2", &addr, false).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    for byte in b"\x16\x03\x01\x02\x00".iter().cycle() {
                        if stop.load(Ordering::Relaxed) || tcp.write_all(&[*byte]).await.is_err() {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
        }
        // Admin flood: 100 connections to the admin port, opened and held.
        for _ in 0..100 {
            let (admin, stop, closed) = (admin.clone(), stop.clone(), hostile_closed.clone());
            hostile.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = tcp_from("127.0.2.3", &admin, false).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let _ = tcp.write_all(b"GET /metrics HTTP/1.1\r\n").await;
                    let mut sink = [0u8; 512];
                    let _ = tokio::time::timeout(
                        SOAK,
                        tokio::io::AsyncReadExt::read(&mut tcp, &mut sink),
                    )
                    .await;
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Password guessers: 200 addresses, each a wrong password every 8 s
        // (7.5 a minute, within the default budget of 30): 25 argon2 checks a second.
        let (guess_body, _) = csr("guess");
        let guess_body = Arc::new(guess_body);
        for i in 0..GUESSERS {
            let (connector, addr, stop, guesses, body) = (
                connector.clone(),
                addr.clone(),
                stop.clone(),
                guesses.clone(),
                guess_body.clone(),
            );
            let from = format!("127.0.3.{}", i + 1);
            hostile.spawn(async move {
                tokio::time::sleep(Duration::from_millis((i as u64 * 40) % 8000)).await;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request = post(
                        "/.well-known/est/simpleenroll",
                        Some(&basic("estuser", &format!("wrong-{i}-{n}"))),
                        &body,
                    );
                    if let Ok(mut tls) = tls_from(&connector, &from, &addr, false).await {
                        if tls.write_all(&request).await.is_ok() {
                            let _ = read_response(&mut tls).await;
                            guesses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(8)).await;
                }
            });
        }
        // Let the hostile set settle in.
        tokio::time::sleep(Duration::from_secs(5)).await;

        // Legitimate clients.
        let tokens = Arc::new(std::sync::Mutex::new(tokens));
        let started = Instant::now();
        let mut legit = tokio::task::JoinSet::new();
        for _ in 0..WORKERS {
            let (connector, addr, tally, tokens, server_ca) = (
                connector.clone(),
                addr.clone(),
                tally.clone(),
                tokens.clone(),
                server.ca_pem(),
            );
            legit.spawn(async move {
                while started.elapsed() < SOAK - Duration::from_secs(5) {
                    let Some((id, token)) = tokens.lock().unwrap().pop() else {
                        break;
                    };
                    let (body, key) = csr(&id);
                    let request = post(
                        "/.well-known/est/tok/simpleenroll",
                        Some(&basic(&id, &token)),
                        &body,
                    );
                    let (status, response, took) = exchange(&connector, &addr, &request).await;
                    if !tally.record("token enroll", status, took) {
                        continue;
                    }
                    let cert = certificate_of(&response);
                    tally
                        .serials
                        .lock()
                        .unwrap()
                        .push(ca_backends::serial_hex(&cert));
                    // Renew over mTLS with the new certificate and a new key.
                    let (body, _) = csr(&id);
                    let mtls =
                        connector_with_identity(&server_ca, vec![cert.to_der().unwrap()], key);
                    let request = post("/.well-known/est/tok/simplereenroll", None, &body);
                    let (status, response, took) = exchange(&mtls, &addr, &request).await;
                    if tally.record("renew", status, took) {
                        let renewed = certificate_of(&response);
                        tally
                            .serials
                            .lock()
                            .unwrap()
                            .push(ca_backends::serial_hex(&renewed));
                    }
                    // A Basic user's enrollment (remembered after its first check).
                    let (body, _) = csr(&format!("{id}-basic"));
                    let request = post(
                        "/.well-known/est/simpleenroll",
                        Some(&basic("estuser", "estpwd")),
                        &body,
                    );
                    let (status, response, took) = exchange(&connector, &addr, &request).await;
                    if tally.record("basic enroll", status, took) {
                        tally
                            .serials
                            .lock()
                            .unwrap()
                            .push(ca_backends::serial_hex(&certificate_of(&response)));
                    }
                }
            });
        }
        // Half-way: a real login that no cache has seen yet.
        tokio::time::sleep(SOAK / 2).await;
        let (body, _) = csr("alice-device");
        let request = post(
            "/.well-known/est/simpleenroll",
            Some(&basic("alice", "estpwd")),
            &body,
        );
        let (status, response, alice_took) = exchange(&connector, &addr, &request).await;
        assert_eq!(status, 200, "alice's first login");
        tally
            .serials
            .lock()
            .unwrap()
            .push(ca_backends::serial_hex(&certificate_of(&response)));
        while legit.join_next().await.is_some() {}
        stop.store(true, Ordering::Relaxed);
        hostile.abort_all();
        alice_took
    });

    let mut latencies = tally.latencies.lock().unwrap().clone();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let (p50, p99, max) = (at(0.50), at(0.99), *latencies.last().unwrap());
    let failures = tally.failures.lock().unwrap().clone();
    let serials = tally.serials.lock().unwrap().clone();
    eprintln!(
        "soak: {} legitimate requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; first Basic login under load {:.1} ms; \
         {} failures; {} wrong guesses answered; {} hostile connections closed by the server",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        alice_took.as_secs_f64() * 1e3,
        failures.len(),
        guesses.load(Ordering::Relaxed),
        hostile_closed.load(Ordering::Relaxed),
    );
    assert!(
        latencies.len() >= 100,
        "too little legitimate traffic: {}",
        latencies.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert!(
        alice_took < Duration::from_secs(1),
        "first login took {alice_took:?}"
    );
    assert!(
        guesses.load(Ordering::Relaxed) >= GUESSERS as u64,
        "the guessers ran"
    );
    // Nothing lost: every certificate a client received is recorded.
    let registry =
        est_server::registry::SqliteRegistry::open(&server.path("registry.sqlite")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for serial in &serials {
            let record = est_server::registry::Registry::find_by_serial(&registry, serial)
                .await
                .unwrap();
            assert!(
                record.is_some(),
                "certificate {serial} was delivered but not recorded"
            );
        }
    });
    server.assert_healthy();
}
