//! est-client against the real server: CLI, renewal daemon, outages, crashes,
//! bootstrap fallback and channel binding.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use est_e2e::*;

#[test]
fn cli_enroll_status_reenroll_and_cacerts() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_pem().display().to_string();
    enroll(&server, dir.path(), None, "cli-device");
    let text = x509(&dir.path().join("device.pem"), &["-text"]);
    assert!(text.contains("DNS:cli-device.example"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key files are 0600");

    let cert = dir.path().join("device.pem").display().to_string();
    let key = dir.path().join("device.key").display().to_string();
    let (code, out, _) = est_client(&["status", "--cert", &cert, "--key", &key], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("subject:    CN=cli-device") && out.contains("% used"),
        "{out}"
    );

    let before = serial(dir.path());
    let old_key = std::fs::read(dir.path().join("device.key")).unwrap();
    let mut args: Vec<String> = vec!["reenroll".into()];
    args.extend(common(&server, &ca));
    args.extend([
        "--cert".into(),
        cert.clone(),
        "--key".into(),
        key.clone(),
        "--rotate-key".into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = est_client(&refs, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(serial(dir.path()), before);
    assert_ne!(
        std::fs::read(dir.path().join("device.key")).unwrap(),
        old_key,
        "rekeyed"
    );
    assert!(dir.path().join("device.pem.prev").exists());
    assert!(status_ok(dir.path()));

    let mut args: Vec<String> = vec!["cacerts".into()];
    args.extend(common(&server, &ca));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, _) = est_client(&refs, &[]);
    assert_eq!(code, 0);
    assert_eq!(count_certs(&out), 2);

    // Server errors are quoted.
    let mut args: Vec<String> = vec!["enroll".into()];
    args.extend(common(&server, &ca));
    args.extend([
        "--user".into(),
        "estuser".into(),
        "--cn".into(),
        "x".into(),
        "--out".into(),
        dir.path().join("x.pem").display().to_string(),
        "--out-key".into(),
        dir.path().join("x.key").display().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = est_client(&refs, &[("EST_PASSWORD", "wrong")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("wrong user name or password"),
        "{err}"
    );
}

#[test]
fn first_contact_prints_the_fingerprint_and_saves_only_when_confirmed() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "https://localhost:{}",
        server.addr.rsplit(':').next().unwrap()
    );
    let out = dir.path().join("ca.pem").display().to_string();
    let (code, _, err) = est_client(
        &[
            "cacerts",
            "--server",
            &url,
            "--first-contact",
            "--out",
            &out,
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("NOT authenticated") && err.contains("SHA256"),
        "{err}"
    );
    assert!(!dir.path().join("ca.pem").exists());
    let root = String::from_utf8(openssl(&[
        "x509",
        "-in",
        &server.ca_pem().display().to_string(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]))
    .unwrap();
    let fp = root.trim().rsplit('=').next().unwrap().to_owned();
    let (code, _, err) = est_client(
        &[
            "cacerts",
            "--server",
            &url,
            "--first-contact",
            "--accept-fingerprint",
            &fp,
            "--out",
            &out,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        count_certs(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap()),
        2
    );
    // Without --trust and without --first-contact nothing is sent.
    let (code, _, err) = est_client(&["cacerts", "--server", &url], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--trust"), "{err}");
}

#[test]
fn renew_exit_codes_distinguish_not_due_renewed_failed() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path(), None, "codes");
    let config = dir.path().join("renew.toml");
    std::fs::write(&config, format!(
        "server = \"https://localhost:{}\"\ntrust = [\"{}\"]\ncert = \"device.pem\"\nkey = \"device.key\"\n",
        server.addr.rsplit(':').next().unwrap(), server.ca_pem().display())).unwrap();
    let config_str = config.display().to_string();
    let (code, out, _) = est_client(&["renew", "--config", &config_str], &[]);
    assert_eq!(code, 10, "{out}");
    let before = serial(dir.path());
    let (code, out, err) = est_client(&["renew", "--config", &config_str, "--force"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(serial(dir.path()), before);
    drop(server.stop());
    let (code, _, _) = est_client(&["renew", "--config", &config_str, "--force"], &[]);
    assert_eq!(code, 1);
    assert!(
        status_ok(dir.path()),
        "a failed renewal leaves the pair intact"
    );
}

#[test]
fn daemon_keeps_a_valid_certificate_through_several_lifetimes_and_rotates_keys() {
    let server = Server::start_with(&short_config("6s"), None);
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path(), Some("short"), "daemon-device");
    let config = renew_config(&server, dir.path(), "short", "hook = [\"sh\", \"-c\", \"echo renewed >> hook.log\"]\n[auto_renew]\nthreshold = \"50%\"\nretry = \"10%\"\nrotate_key = true\n");
    // The hook runs in the daemon's working directory.
    let mut child = Command::new(client_binary())
        .args([
            "renew",
            "--daemon",
            "--config",
            &config.display().to_string(),
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut serials = vec![serial(dir.path())];
    let mut keys = vec![std::fs::read(dir.path().join("device.key")).unwrap()];
    let start = Instant::now();
    // Three lifetimes (18 s): at every check the pair on disk is valid and consistent.
    while start.elapsed() < Duration::from_secs(18) {
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            status_ok(dir.path()),
            "{}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap()
        );
        let s = serial(dir.path());
        if serials.last() != Some(&s) {
            serials.push(s);
            keys.push(std::fs::read(dir.path().join("device.key")).unwrap());
        }
    }
    unsafe_sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "exits cleanly on SIGTERM");
    assert!(
        serials.len() >= 5,
        "renewed at least 4 times in 3 lifetimes: {serials:?}"
    );
    keys.dedup();
    assert_eq!(
        keys.len(),
        serials.len(),
        "rotate_key gives every certificate a new key"
    );
    let hook_runs = std::fs::read_to_string(dir.path().join("hook.log"))
        .unwrap_or_default()
        .lines()
        .count();
    assert!(hook_runs >= 4, "hook ran {hook_runs} times");
    // Each renewal superseded its predecessor on the server.
    let listing = server.admin(&["certs", "list"]);
    assert!(listing.matches("superseded").count() >= 4, "{listing}");
}

/// Sends SIGTERM via the `kill` command (no unsafe code in tests).
fn unsafe_sigterm(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

#[test]
fn daemon_survives_a_server_outage() {
    let server = Server::start_with(&short_config("30s"), None);
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path(), Some("short"), "outage-device");
    let first = serial(dir.path());
    // Due 3 s after issuance; the server is down from before then until about 6 s.
    let config = renew_config(
        &server,
        dir.path(),
        "short",
        "[auto_renew]\nthreshold = \"10%\"\nretry = \"1s\"\n",
    );
    let stopped = server.stop();
    let mut child = daemon(&config);
    // Past the renewal point while the server is down: the daemon retries.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(serial(dir.path()), first);
    let server = stopped.start();
    assert!(
        wait_for(Duration::from_secs(10), || serial(dir.path()) != first),
        "renewed once the server is back"
    );
    assert!(status_ok(dir.path()));
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap();
    assert!(log.contains("renewal failed"), "{log}");
    unsafe_sigterm(&child);
    child.wait().unwrap();
    drop(server);
}

#[test]
fn kill_9_during_renewals_leaves_a_complete_pair() {
    let server = Server::start_with(&short_config("60s"), None);
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path(), Some("short"), "crash-device");
    // Renew as often as possible, with a new key each time.
    let config = renew_config(
        &server,
        dir.path(),
        "short",
        "[auto_renew]\nthreshold = \"1%\"\nretry = \"1s\"\nrotate_key = true\n",
    );
    // Kill points spread from 0.2 s to 2 s so some land before, some during
    // and some after a renewal, whatever the machine's speed.
    for round in 0..12u64 {
        let mut child = daemon(&config);
        std::thread::sleep(Duration::from_millis(200 + (round * 397) % 1800));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert!(
            status_ok(dir.path()),
            "round {round}: pair broken after kill -9"
        );
    }
    // The daemon still makes progress from whatever state the kills left:
    // it renews again, and a kill right after that leaves a complete pair.
    let before = serial(dir.path());
    let mut child = daemon(&config);
    let renewed = wait_for(Duration::from_secs(20), || serial(dir.path()) != before);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(renewed, "the daemon renewed after the kills: {log}");
    assert!(status_ok(dir.path()), "pair broken after the last kill -9");
}

#[test]
fn bootstrap_fallback_after_revocation_and_expiry() {
    let server = Server::start_with(&short_config("3s"), None);
    let dir = tempfile::tempdir().unwrap();
    enroll(&server, dir.path(), Some("short"), "fallback-device");
    let config = renew_config(
        &server,
        dir.path(),
        "short",
        "[auto_renew]\nthreshold = \"99%\"\n[bootstrap]\nuser = \"estuser\"\npassword_env = \"EST_PASSWORD\"\n",
    );
    let config_str = config.display().to_string();
    // Revoked: the server says 403, the client enrolls again with Basic.
    let revoked = serial(dir.path())
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    server.admin(&["certs", "revoke", &revoked]);
    let (code, out, err) = est_client(
        &["renew", "--config", &config_str, "--force"],
        &[("EST_PASSWORD", "estpwd")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bootstrap"), "{out}");
    // Expired: no mTLS attempt at all, straight to bootstrap.
    std::thread::sleep(Duration::from_secs(4));
    let (code, out, err) = est_client(
        &["renew", "--config", &config_str],
        &[("EST_PASSWORD", "estpwd")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bootstrap"), "{out}");
    assert!(status_ok(dir.path()));
    // A first enrollment from nothing, by the daemon config alone.
    let fresh = tempfile::tempdir().unwrap();
    let config = renew_config(&server, fresh.path(), "short", "[bootstrap]\nuser = \"estuser\"\npassword_env = \"EST_PASSWORD\"\ncommon_name = \"from-nothing\"\n");
    let (code, out, err) = est_client(
        &["renew", "--config", &config.display().to_string()],
        &[("EST_PASSWORD", "estpwd")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(x509(&fresh.path().join("device.pem"), &["-subject"]).contains("from-nothing"));
}

#[test]
fn channel_binding_match_mismatch_missing() {
    let server = Server::start_with(
        &config_with("[labels.pop]\nprofile = \"device\"\nchannel_binding = \"require\"\n"),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_pem().display().to_string();
    // /csrattrs announces challengePassword on the label.
    let mut args: Vec<String> = vec!["csrattrs".into()];
    args.extend(common(&server, &ca));
    args.extend(["--label".into(), "pop".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, _) = est_client(&refs, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("challengePassword"), "{out}");

    let run = |flag: bool, cn: &str| {
        let mut args: Vec<String> = vec!["enroll".into()];
        args.extend(common(&server, &ca));
        args.extend([
            "--label".into(),
            "pop".into(),
            "--user".into(),
            "estuser".into(),
            "--cn".into(),
            cn.into(),
            "--out".into(),
            dir.path().join(format!("{cn}.pem")).display().to_string(),
            "--out-key".into(),
            dir.path().join(format!("{cn}.key")).display().to_string(),
        ]);
        if flag {
            args.push("--channel-binding".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        est_client(&refs, &[("EST_PASSWORD", "estpwd")])
    };
    // Match: the client binds the CSR to its own connection.
    let (code, out, err) = run(true, "bound");
    assert_eq!(code, 0, "{out}{err}");
    // Missing.
    let (code, _, err) = run(false, "unbound");
    assert_eq!(code, 1);
    assert!(
        err.contains("400") && err.contains("channel binding"),
        "{err}"
    );
    // Mismatch: a challengePassword from another connection, sent by curl (TLS 1.3 and 1.2).
    let key = dir.path().join("m.key");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &key.display().to_string(),
    ]);
    let conf = dir.path().join("cp.cnf");
    std::fs::write(&conf, "[req]\nprompt=no\ndistinguished_name=dn\nattributes=attrs\n[dn]\nCN=mismatch\n[attrs]\nchallengePassword=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    let der = dir.path().join("cp.der");
    openssl(&[
        "req",
        "-new",
        "-key",
        &key.display().to_string(),
        "-config",
        &conf.display().to_string(),
        "-outform",
        "DER",
        "-out",
        &der.display().to_string(),
    ]);
    let b64 = dir.path().join("cp.b64");
    std::fs::write(
        &b64,
        openssl(&["base64", "-in", &der.display().to_string()]),
    )
    .unwrap();
    for tls in ["--tlsv1.3", "--tls-max"] {
        let mut extra = vec!["-u", "estuser:estpwd"];
        if tls == "--tls-max" {
            extra.extend(["--tls-max", "1.2"]);
        } else {
            extra.push(tls);
        }
        let response = post_csr(&server, Some("pop"), "simpleenroll", &b64, &extra);
        assert_eq!(response.status, 400, "{}", response.text());
        assert!(
            response.text().contains("does not match"),
            "{}",
            response.text()
        );
    }
}

#[test]
fn cli_serverkeygen_installs_the_server_generated_pair() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_pem().display().to_string();
    let mut args: Vec<String> = vec!["serverkeygen".into()];
    args.extend(common(&server, &ca));
    args.extend([
        "--user".into(),
        "estuser".into(),
        "--cn".into(),
        "skg-cli".into(),
        "--key-type".into(),
        "p384".into(),
        "--out".into(),
        dir.path().join("device.pem").display().to_string(),
        "--out-key".into(),
        dir.path().join("device.key").display().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = est_client(&refs, &[("EST_PASSWORD", "estpwd")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("EcP384"),
        "the server matched the CSR's key type: {out}"
    );
    assert!(status_ok(dir.path()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
