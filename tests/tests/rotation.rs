//! Server-driven rotation over a real Mosquitto: the orchestrator in
//! `est-server serve`, `est-server rotate`, and the device agent in
//! `est-client run`, end to end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use est_e2e::mosquitto::{publish_as, ORCHESTRATOR};
use est_e2e::webhook::webhook_receiver;
use est_e2e::*;

/// A server with the admin listener and the orchestrator on `broker_port`.
/// `window` is the scheduled audit's `expiring_within` (device certificates
/// live 30 days, so "1d" keeps the schedule quiet and "60d" rotates at once).
fn rotation_server(broker_port: u16, window: &str, extra: &str) -> Server {
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\n{}",
        config_with(&format!(
            "[rotation]\nenabled = true\nbroker = \"127.0.0.1:{broker_port}\"\n\
             client_id = \"{ORCHESTRATOR}\"\nexpiring_within = \"{window}\"\n\
             audit_interval = \"1s\"\nretry_after = \"2s\"\n{extra}"
        ))
    );
    Server::start_with(&config, None)
}

/// What the server warns when a profile's certificates are due at once.
const SHORT_PROFILE: &str = "rotation.expiring_within is not shorter than this profile's validity";

/// A window as long as a profile's validity would rotate every certificate
/// it issues at once: the server says so at start, naming the profile.
#[test]
fn a_window_longer_than_a_profile_is_warned_about() {
    let server = rotation_server(Mosquitto::free_port(), "60d", "");
    let log = strip_ansi(&server.log());
    let warning = log
        .lines()
        .find(|l| l.contains(SHORT_PROFILE))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        warning.contains("profile=device")
            && warning.contains("validity=30d")
            && warning.contains("expiring_within=60d"),
        "{warning}"
    );
}

/// Server and broker, with the orchestrator connected.
fn setup(window: &str, extra: &str) -> (Server, Mosquitto) {
    let port = Mosquitto::free_port();
    let server = rotation_server(port, window, extra);
    let broker = Mosquitto::start(&server, port);
    assert!(
        wait_for(Duration::from_secs(40), || broker.saw_client(ORCHESTRATOR)),
        "orchestrator never connected: {}\n{}",
        server.log(),
        broker.log()
    );
    (server, broker)
}

/// Enrolls `cn` on label `iot` and writes its `est-client run` config.
fn device(
    server: &Server,
    broker: &Mosquitto,
    dir: &Path,
    cn: &str,
    extra: &str,
) -> std::path::PathBuf {
    enroll(server, dir, Some("iot"), cn);
    renew_config(
        server,
        dir,
        "iot",
        &format!(
            "{extra}\n[auto_renew]\nrotate_key = true\n[mqtt]\nbroker = \"127.0.0.1:{}\"\nbroker_ca = \"{}\"\n",
            broker.port,
            server.ca_pem().display()
        ),
    )
}

fn agent(config: &Path) -> Child {
    Command::new(client_binary())
        .args(["run", "--config", &config.display().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(config.with_extension("log")).unwrap())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn hex_serial(dir: &Path) -> String {
    serial(dir)
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

fn cert_state(server: &Server, serial: &str) -> String {
    let listing = server.admin(&["certs", "list"]);
    listing
        .lines()
        .find(|l| l.starts_with(serial))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{serial} not in\n{listing}"))
        .to_owned()
}

fn admin_get(server: &Server, path: &str) -> HttpResponse {
    curl(&[format!("http://{}{path}", server.admin_addr())])
}

fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn rotation_round_trip_on_demand_retires_the_old_certificate() {
    let (server, broker) = setup("1d", "");
    assert!(!server.log().contains(SHORT_PROFILE), "{}", server.log());
    let dir = tempfile::tempdir().unwrap();
    let config = device(&server, &broker, dir.path(), "rot-1", "");
    let old = hex_serial(dir.path());
    let child = agent(&config);
    assert!(wait_for(Duration::from_secs(30), || broker.saw_client("rot-1")));

    let started = Instant::now();
    let out = server.admin(&["rotate", "--expiring-within", "60d", "--device", "rot-1"]);
    assert!(out.contains("requested  rot-1"), "{out}");
    assert!(
        wait_for(Duration::from_secs(60), || rotation_state(&server, "rot-1")
            == "acknowledged"),
        "rotation: {:?}\nserver: {}\ndevice: {}",
        rotation_of(&server, "rot-1"),
        server.log(),
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
    );
    eprintln!(
        "one rotation round trip: {} ms",
        started.elapsed().as_millis()
    );

    let new = hex_serial(dir.path());
    assert_ne!(new, old);
    assert!(status_ok(dir.path()));
    assert_eq!(
        rotation_of(&server, "rot-1").unwrap()["newSerial"],
        new.as_str()
    );
    assert_eq!(cert_state(&server, &new), "active");
    assert_eq!(cert_state(&server, &old), "superseded+retired");
    // The device's new pair is accepted by the broker; the retired one is in the CRL.
    assert!(publish_as(
        broker.port,
        "rot-1",
        &dir.path().join("device.pem"),
        &dir.path().join("device.key"),
        &server.ca_pem(),
        "management/topic/rot-1/hello",
        b"{}",
    ));
    let crl = dir.path().join("ca.crl");
    server.admin(&["crl", "--out", &crl.display().to_string()]);
    let text = String::from_utf8(openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &crl.display().to_string(),
        "-noout",
        "-text",
    ]))
    .unwrap();
    assert!(text.to_ascii_lowercase().contains(&old), "{text}");

    // Metrics, health and readiness on the admin listener.
    assert_eq!(admin_get(&server, "/healthz").status, 200);
    assert_eq!(admin_get(&server, "/readyz").status, 200);
    let metrics = admin_get(&server, "/metrics").text();
    assert_eq!(
        metric(&metrics, "est_rotations{state=\"acknowledged\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "est_rotation_events_total{event=\"acknowledged\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "est_enrollments_total{label=\"iot\",operation=\"simpleenroll\",status=\"200\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("est_enrollment_duration_seconds_bucket"),
        "{metrics}"
    );
    // Device certificates live 30 days: the one active certificate ends
    // within 30 days, none within 7.
    assert_eq!(
        metric(&metrics, "est_certificates_expiring{within=\"30d\"}"),
        1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("est_certificates_expiring{within=\"7d\"} 0"),
        "{metrics}"
    );
    // Without its broker the server is alive but not ready.
    drop(broker);
    assert!(
        wait_for(Duration::from_secs(60), || admin_get(&server, "/readyz")
            .status
            == 503),
        "readyz stayed ready without a broker"
    );
    assert!(admin_get(&server, "/readyz").text().contains("broker"));
    assert_eq!(admin_get(&server, "/healthz").status, 200);
    stop(child);
}

#[test]
fn device_offline_during_csr_req_is_asked_again_when_back() {
    let (server, broker) = setup("60d", "");
    let dir = tempfile::tempdir().unwrap();
    let config = device(&server, &broker, dir.path(), "rot-offline", "");
    let old = hex_serial(dir.path());
    // The scheduled audit asks while the device is away, and keeps asking.
    assert!(wait_for(Duration::from_secs(30), || {
        rotation_of(&server, "rot-offline")
            .is_some_and(|r| r["state"] == "requested" && r["attempts"].as_u64() >= Some(2))
    }));
    let child = agent(&config);
    assert!(
        wait_for(Duration::from_secs(90), || rotation_state(
            &server,
            "rot-offline"
        ) == "acknowledged"),
        "{:?}\n{}",
        rotation_of(&server, "rot-offline"),
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
    );
    assert_ne!(hex_serial(dir.path()), old);
    assert_eq!(cert_state(&server, &old), "superseded+retired");
    stop(child);
}

#[test]
fn device_rejecting_the_certificate_keeps_the_old_one_and_notifies() {
    let (hook_port, hook) = webhook_receiver();
    let (server, broker) = setup(
        "1d",
        &format!("webhook = \"http://127.0.0.1:{hook_port}/rotation\"\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = device(&server, &broker, dir.path(), "rot-reject", "");
    // The device trusts another CA for its certificates, so it must refuse
    // what the server sends (the broker is still trusted through broker_ca).
    let stranger = ManufacturerCa::new(dir.path(), "stranger");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        &format!("trust = [\"{}\"]", server.ca_pem().display()),
        &format!("trust = [\"{}\"]", stranger.cert.display()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let old = hex_serial(dir.path());
    let old_pem = std::fs::read(dir.path().join("device.pem")).unwrap();
    let child = agent(&config);
    assert!(wait_for(Duration::from_secs(30), || broker.saw_client("rot-reject")));

    server.admin(&[
        "rotate",
        "--expiring-within",
        "60d",
        "--device",
        "rot-reject",
    ]);
    assert!(
        wait_for(Duration::from_secs(60), || rotation_state(
            &server,
            "rot-reject"
        ) == "failed"),
        "{:?}\n{}",
        rotation_of(&server, "rot-reject"),
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
    );
    let rotation = rotation_of(&server, "rot-reject").unwrap();
    assert!(
        !rotation["lastError"].as_str().unwrap().is_empty(),
        "{rotation}"
    );
    let refused = rotation["newSerial"].as_str().unwrap().to_owned();
    // The old certificate is active again and still installed; the refused one is revoked.
    assert_eq!(cert_state(&server, &old), "active");
    assert_eq!(cert_state(&server, &refused), "revoked");
    assert_eq!(
        std::fs::read(dir.path().join("device.pem")).unwrap(),
        old_pem
    );
    assert!(status_ok(dir.path()));
    let event = hook
        .recv_timeout(Duration::from_secs(20))
        .expect("webhook called");
    let event: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["event"], "rotation_failed");
    assert_eq!(event["clientId"], "rot-reject");
    assert_eq!(event["serial"], old.as_str());
    assert!(server.log().contains("rotation failed on the device"));
    stop(child);
}

#[test]
fn orchestrator_down_mid_rotation_resumes_after_restart() {
    let (server, broker) = setup("1d", "");
    let dir = tempfile::tempdir().unwrap();
    let config = device(&server, &broker, dir.path(), "rot-restart", "");
    let old = hex_serial(dir.path());
    let child = agent(&config);
    assert!(wait_for(Duration::from_secs(30), || broker.saw_client("rot-restart")));
    // The orchestrator dies (kill -9); its broker session keeps its subscriptions.
    let stopped = server.stop();
    // Meanwhile an operator asks, and the device answers into the broker's queue.
    let out = stopped.admin(&[
        "rotate",
        "--expiring-within",
        "60d",
        "--device",
        "rot-restart",
    ]);
    assert!(out.contains("requested  rot-restart"), "{out}");
    let device_log = || std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(30), || device_log()
            .contains("publishing csr_res")),
        "{}",
        device_log()
    );
    // Restarted, it picks the rotation up from the registry and the queued answer.
    let server = stopped.start();
    assert!(
        wait_for(Duration::from_secs(60), || rotation_state(
            &server,
            "rot-restart"
        ) == "acknowledged"),
        "{:?}\n{}\n{}",
        rotation_of(&server, "rot-restart"),
        server.log(),
        device_log()
    );
    assert_ne!(hex_serial(dir.path()), old);
    assert_eq!(cert_state(&server, &old), "superseded+retired");
    stop(child);
}

#[test]
fn a_device_cannot_answer_for_another() {
    let (server, broker) = setup("1d", "");
    let victim = tempfile::tempdir().unwrap();
    let attacker = tempfile::tempdir().unwrap();
    device(&server, &broker, victim.path(), "rot-victim", "");
    device(&server, &broker, attacker.path(), "rot-attacker", "");
    let out = server.admin(&["rotate", "--expiring-within", "60d"]);
    assert!(
        out.contains("rot-victim") && out.contains("rot-attacker"),
        "{out}"
    );
    let forged = Csr::new(
        attacker.path(),
        "forged",
        KeyType::P256,
        "/CN=rot-victim",
        &["subjectAltName=DNS:rot-victim.example"],
    );
    let pem = est_wire::pem::encode("CERTIFICATE REQUEST", &std::fs::read(&forged.der).unwrap());
    let payload = serde_json::json!({ "CSR": pem }).to_string();
    let (cert, key) = (
        attacker.path().join("device.pem"),
        attacker.path().join("device.key"),
    );

    // On the victim's topic: the broker's ACL drops it.
    assert!(publish_as(
        broker.port,
        "rot-attacker",
        &cert,
        &key,
        &server.ca_pem(),
        "management/topic/rot-victim/csr_res",
        payload.as_bytes()
    ));
    // On its own topic, for the victim's identity: the server refuses the CSR.
    assert!(publish_as(
        broker.port,
        "rot-attacker",
        &cert,
        &key,
        &server.ca_pem(),
        "management/topic/rot-attacker/csr_res",
        payload.as_bytes()
    ));
    assert!(
        wait_for(Duration::from_secs(30), || rotation_of(
            &server,
            "rot-attacker"
        )
        .is_some_and(|r| r["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("subject")))),
        "{:?}\n{}",
        rotation_of(&server, "rot-attacker"),
        server.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rotation_state(&server, "rot-victim"), "requested");
    assert_eq!(rotation_state(&server, "rot-attacker"), "requested");
    let listing = server.admin(&["certs", "list"]);
    assert_eq!(listing.matches("CN=rot-victim").count(), 1, "{listing}");
    assert_eq!(listing.matches("CN=rot-attacker").count(), 1, "{listing}");
    // The broker dropped the publish on the victim's topic (its ACL), so the
    // server never saw it.
    assert!(
        broker.log().contains("Denied PUBLISH from rot-attacker")
            && broker.log().contains("management/topic/rot-victim/csr_res"),
        "{}",
        broker.log()
    );
    // (Log lines carry ANSI colour codes around field names, so look for the
    // refusal line itself rather than a formatted field.)
    let log = server.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("message refused"))
        .collect();
    assert!(
        refused.iter().any(|l| l.contains("rot-attacker")),
        "the attacker's own-topic answer was refused: {log}"
    );
    assert!(
        // The client id is logged quoted; the attacker's refusal names the
        // victim only inside its CSR subject (`CN=rot-victim`).
        !refused.iter().any(|l| l.contains("\"rot-victim\"")),
        "the server saw the publish on the victim's topic: {refused:?}"
    );
    // The orchestrator's name is reserved: no device can enroll it.
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(
        work.path(),
        "o",
        KeyType::P256,
        &format!("/CN={ORCHESTRATOR}"),
        &[],
    );
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(response.text().contains("reserved"));
}

#[test]
fn repeated_and_stale_device_answers_change_nothing() {
    let (server, broker) = setup("1d", "");
    let dir = tempfile::tempdir().unwrap();
    device(&server, &broker, dir.path(), "rot-dup", "");
    let old = hex_serial(dir.path());
    server.admin(&["rotate", "--expiring-within", "60d", "--device", "rot-dup"]);
    let (cert, key) = (dir.path().join("device.pem"), dir.path().join("device.key"));
    let say = |step: &str, payload: serde_json::Value| {
        assert!(publish_as(
            broker.port,
            "rot-dup",
            &cert,
            &key,
            &server.ca_pem(),
            &format!("management/topic/rot-dup/{step}"),
            payload.to_string().as_bytes(),
        ));
    };
    let csr = Csr::new(
        dir.path(),
        "next",
        KeyType::P256,
        "/CN=rot-dup",
        &["subjectAltName=DNS:rot-dup.example"],
    );
    let pem = est_wire::pem::encode("CERTIFICATE REQUEST", &std::fs::read(&csr.der).unwrap());
    let answer = serde_json::json!({ "CSR": pem, "serial": old });
    say("csr_res", answer.clone());
    assert!(wait_for(Duration::from_secs(30), || rotation_state(
        &server, "rot-dup"
    ) == "issued"));
    let issued = rotation_of(&server, "rot-dup").unwrap()["newSerial"]
        .as_str()
        .unwrap()
        .to_owned();

    // The same answer again (a QoS 1 redelivery): the same certificate, no second one.
    say("csr_res", answer);
    // An error report about another certificate (an earlier rotation): ignored.
    say(
        "crt_err",
        serde_json::json!({ "error": "stale", "serial": "0badc0de" }),
    );
    std::thread::sleep(Duration::from_secs(2));
    let rotation = rotation_of(&server, "rot-dup").unwrap();
    assert_eq!(rotation["state"], "issued", "{rotation}");
    assert_eq!(rotation["newSerial"], issued.as_str());
    let listing = server.admin(&["certs", "list"]);
    assert_eq!(listing.matches("CN=rot-dup").count(), 2, "{listing}");
    assert_eq!(cert_state(&server, &issued), "active");
    // Sent again as it was recorded, not recorded a second time.
    let log = server.log();
    assert!(log.contains("rotation: successor sent again"), "{log}");
    assert_eq!(log.matches("successor issued and sent").count(), 1, "{log}");

    // The current error report undoes the renewal.
    say(
        "crt_err",
        serde_json::json!({ "error": "cannot install", "serial": old }),
    );
    assert!(wait_for(Duration::from_secs(30), || rotation_state(
        &server, "rot-dup"
    ) == "failed"));
    assert_eq!(cert_state(&server, &old), "active");
    assert_eq!(cert_state(&server, &issued), "revoked");
    assert!(
        server.log().contains("the rotation replaces"),
        "{}",
        server.log()
    );
}

/// While the broker is unreachable, the scheduled audit sends nothing and
/// counts nothing (no back-off earned during the outage); once the broker is
/// up, confirmed requests count.
#[test]
fn broker_outage_does_not_count_attempts() {
    let port = Mosquitto::free_port();
    let server = rotation_server(port, "60d", "");
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path(), Some("iot"), "rot-outage");
    // Several audit intervals (1 s) pass with no broker.
    std::thread::sleep(Duration::from_secs(5));
    let during = rotation_of(&server, "rot-outage");
    assert!(
        during
            .as_ref()
            .is_none_or(|r| r["attempts"].as_u64() == Some(0)),
        "{during:?}"
    );
    let broker = Mosquitto::start(&server, port);
    assert!(
        wait_for(Duration::from_secs(40), || rotation_of(
            &server,
            "rot-outage"
        )
        .is_some_and(|r| r["attempts"].as_u64() >= Some(1))),
        "{:?}\n{}\n{}",
        rotation_of(&server, "rot-outage"),
        server.log(),
        broker.log()
    );
}

/// `text` without the terminal colour sequences the server's log carries.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
