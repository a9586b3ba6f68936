//! The README's Mosquitto refuses a retired certificate within seconds: the
//! server keeps `[ca] crl_file` current (it notices the retirement in the
//! registry by itself, rewrites the file atomically and runs
//! `crl_reload_command`, here a SIGHUP to the broker), and the broker's
//! `crlfile` is that file.

use std::time::{Duration, Instant};

use est_e2e::*;

#[test]
fn a_retired_certificate_is_refused_by_mosquitto_within_seconds() {
    let work = tempfile::tempdir().unwrap();
    let pid_file = work.path().join("broker.pid");
    let reload = format!(
        "[\"sh\", \"-c\", \"kill -HUP $(cat {}) && echo reloaded >> {}\"]",
        pid_file.display(),
        work.path().join("reloads").display()
    );
    let config = config_with(&format!(
        "[ca]\ncrl_file = \"crl.pem\"\ncrl_reload_command = {reload}\n\
         [revocation]\ncrl_check_interval = \"1s\"\n"
    ))
    .replace(
        "realm = \"estrealm\"",
        "realm = \"estrealm\"\nretire_sweep_interval = \"1s\"",
    );
    let server = Server::start_with(&config, None);
    let crl = server.path("crl.pem");
    assert!(
        std::fs::read_to_string(&crl)
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----"),
        "the CRL file is written at start"
    );
    let port = Mosquitto::free_port();
    let broker = Mosquitto::start_with_crl(&server, port, &crl);
    std::fs::write(&pid_file, broker.pid().to_string()).unwrap();

    let p = |name: &str| work.path().join(name);
    let csr = Csr::new(work.path(), "old", KeyType::P256, "/CN=crl-device", &[]);
    enroll_basic(&server, None, &csr, &p("old.pem"));
    let topic = "management/topic/crl-device/crt_ack";
    let ca = server.ca_pem();
    assert!(
        mosquitto::publish_as(
            port,
            "crl-device",
            &p("old.pem"),
            &csr.key,
            &ca,
            topic,
            b"{}"
        ),
        "the broker accepts a live certificate: {}",
        broker.log()
    );

    // Renew; the successor's first use lets the sweep retire the old one.
    let (c, k) = (
        p("old.pem").display().to_string(),
        csr.key.display().to_string(),
    );
    let response = post_csr(
        &server,
        None,
        "simplereenroll",
        &csr.b64,
        &["--cert", &c, "--key", &k],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    std::fs::write(p("new.pem"), pkcs7_to_pem(&response.body)).unwrap();
    let n = p("new.pem").display().to_string();
    let used = server.curl(&[
        "--cert",
        &n,
        "--key",
        &k,
        &format!("{}/cacerts", server.base(None)),
    ]);
    assert_eq!(used.status, 200);
    let old_serial = serial_of(&p("old.pem"));
    assert!(
        wait_for(Duration::from_secs(10), || state_of(&server, &old_serial)
            == "superseded+retired"),
        "{}",
        server.admin(&["certs", "list"])
    );
    let retired = Instant::now();
    let mut refused = false;
    while retired.elapsed() < Duration::from_secs(15) {
        if !mosquitto::publish_as(
            port,
            "crl-device",
            &p("old.pem"),
            &csr.key,
            &ca,
            topic,
            b"{}",
        ) {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        refused,
        "the retired certificate still connects:\n{}\n{}",
        server.log(),
        broker.log()
    );
    eprintln!(
        "retired certificate refused by Mosquitto {:?} after its retirement",
        retired.elapsed()
    );
    assert!(
        std::fs::read_to_string(p("reloads"))
            .unwrap_or_default()
            .lines()
            .count()
            >= 1,
        "the reload command ran after the change (the broker was not up at start): {}",
        server.log()
    );
    assert!(
        server.log().contains("rewrote the CRL file"),
        "{}",
        server.log()
    );
    // The successor still connects.
    assert!(
        mosquitto::publish_as(
            port,
            "crl-device",
            &p("new.pem"),
            &csr.key,
            &ca,
            topic,
            b"{}"
        ),
        "{}",
        broker.log()
    );
}

/// A reload command that hangs is stopped after 10 s (logged), so it holds
/// up neither the start nor the CRL file's next rewrite.
#[test]
fn a_hanging_reload_command_is_cut_off_after_ten_seconds() {
    let started = Instant::now();
    let server = Server::start_with(
        &config_with("[ca]\ncrl_file = \"crl.pem\"\ncrl_reload_command = [\"sleep\", \"60\"]\n"),
        None,
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(25),
        "started after {took:?}"
    );
    assert!(
        server
            .log()
            .contains("CRL reload command did not finish within 10 s"),
        "{}",
        server.log()
    );
    assert_eq!(server.curl(&[&server.url("/crl")]).status, 200);
}
