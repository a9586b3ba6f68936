//! The certificate-vending-machine flow: device registry, serial + one-time
//! token over EST, the JSON façade, operator commands and the expiry audit.

use std::process::Command;

use est_e2e::*;

fn vending_config(extra: &str) -> String {
    config_with(&format!(
        "[enroll]\nprofile = \"device\"\nauth = [\"basic\", \"device-token\"]\n[cvm]\nlabel = \"\"\n{extra}"
    ))
    // config_with already has an [enroll] table; keep only the last one.
    .replacen("[enroll]\nprofile = \"device\"\n[labels.edgeca]", "[labels.edgeca]", 1)
}

fn add_device(server: &Server, id: &str) -> String {
    let out = server.admin(&["devices", "add", id]);
    out.trim().rsplit(' ').next().unwrap().to_owned()
}

fn enroll_token(server: &Server, csr: &Csr, id: &str, token: &str) -> HttpResponse {
    post_csr(
        server,
        None,
        "simpleenroll",
        &csr.b64,
        &["-u", &format!("{id}:{token}")],
    )
}

#[test]
fn token_enrolls_once_for_its_own_serial() {
    let server = Server::start_with(&vending_config(""), None);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-0001");
    assert_eq!(token.len(), 22, "128-bit token");

    // Another device's identity: refused, and the token stays usable.
    let other = Csr::new(work.path(), "o", KeyType::P256, "/CN=SN-9999", &[]);
    let response = enroll_token(&server, &other, "SN-0001", &token);
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("CN=SN-0001"),
        "{}",
        response.text()
    );

    let own = Csr::new(work.path(), "d", KeyType::P256, "/CN=SN-0001", &[]);
    let response = enroll_token(&server, &own, "SN-0001", &token);
    assert_eq!(response.status, 200, "{}", response.text());

    // Replay: 403, nothing issued.
    let again = Csr::new(work.path(), "d2", KeyType::P256, "/CN=SN-0001", &[]);
    let response = enroll_token(&server, &again, "SN-0001", &token);
    assert_eq!(response.status, 403);
    assert!(
        response.text().contains("already been used"),
        "{}",
        response.text()
    );
    let show = server.admin(&["devices", "show", "SN-0001"]);
    assert!(show.contains("state:        enrolled"), "{show}");
    assert_eq!(
        show.matches("auth=device-token:SN-0001").count(),
        1,
        "{show}"
    );
    // The token is stored only as a hash.
    let db = std::fs::read(server.path("registry.sqlite")).unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
}

#[test]
fn concurrent_replays_of_one_token_yield_exactly_one_certificate() {
    let server = Server::start_with(&vending_config(""), None);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-RACE");
    let csrs: Vec<Csr> = (0..20)
        .map(|i| {
            Csr::new(
                work.path(),
                &format!("r{i}"),
                KeyType::P256,
                "/CN=SN-RACE",
                &[],
            )
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = csrs
            .iter()
            .map(|csr| scope.spawn(|| enroll_token(&server, csr, "SN-RACE", &token).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    // The others: the token is used (403), or another request holds the
    // device right now (409 + Retry-After: a temporary conflict).
    assert!(
        statuses.iter().all(|s| [200, 403, 409].contains(s)),
        "{statuses:?}"
    );
    let show = server.admin(&["devices", "show", "SN-RACE"]);
    assert_eq!(
        show.matches("auth=device-token:SN-RACE").count(),
        1,
        "{show}"
    );
}

/// A device whose token a request reserved, and whose server then crashed
/// (the reservation is left to lapse), gets 409 with Retry-After, not 403:
/// the token is not used, and a retry will succeed.
#[test]
fn a_device_reserved_by_a_crashed_request_is_busy_for_a_while_not_refused() {
    use est_server::registry::Registry;
    let server = Server::start_with(&vending_config(""), None);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-BUSY");
    let registry =
        est_server::registry::SqliteRegistry::open(&server.path("registry.sqlite")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // What a request that crashed mid-enrollment leaves behind.
    runtime
        .block_on(registry.reserve_device(
            "SN-BUSY",
            &est_server::devices::token_hash(&token),
            "crashed-request",
            est_server::registry::unix_now() + 60,
        ))
        .unwrap();
    let csr = Csr::new(work.path(), "b", KeyType::P256, "/CN=SN-BUSY", &[]);
    let response = enroll_token(&server, &csr, "SN-BUSY", &token);
    assert_eq!(response.status, 409, "{}", response.text());
    assert_eq!(response.header_exact("Retry-After").as_deref(), Some("5"));
    assert!(
        response
            .text()
            .contains("being enrolled by another request"),
        "{}",
        response.text()
    );
    // Once the reservation is gone, the same token enrolls.
    runtime
        .block_on(registry.release_device("SN-BUSY", "crashed-request"))
        .unwrap();
    let response = enroll_token(&server, &csr, "SN-BUSY", &token);
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn wrong_tokens_lock_the_device_and_the_address() {
    let server = Server::start_with(
        &vending_config("[limits]\ntoken_lockout_after = 3\ntoken_lockout = \"5m\"\nfailures_per_minute_per_address = 6\n"),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-LOCK");
    let csr = Csr::new(work.path(), "l", KeyType::P256, "/CN=SN-LOCK", &[]);
    for _ in 0..3 {
        assert_eq!(
            enroll_token(&server, &csr, "SN-LOCK", "wrong-token").status,
            401
        );
    }
    // Locked: even the right token waits.
    let response = enroll_token(&server, &csr, "SN-LOCK", &token);
    assert_eq!(response.status, 429, "{}", response.text());
    assert!(response.header_exact("Retry-After").is_some());
    // The address is limited too, whatever device it tries.
    for _ in 0..3 {
        assert_eq!(enroll_token(&server, &csr, "SN-NOBODY", "x").status, 401);
    }
    let response = enroll_token(&server, &csr, "SN-NOBODY", "x");
    assert_eq!(response.status, 429, "{}", response.text());
}

#[test]
fn disabled_and_revoked_devices_are_refused() {
    let server = Server::start_with(&vending_config(""), None);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-OFF");
    server.admin(&["devices", "disable", "SN-OFF"]);
    let csr = Csr::new(work.path(), "x", KeyType::P256, "/CN=SN-OFF", &[]);
    let response = enroll_token(&server, &csr, "SN-OFF", &token);
    assert_eq!(response.status, 403);
    assert!(response.text().contains("disabled"), "{}", response.text());

    let token = add_device(&server, "SN-REV");
    let csr = Csr::new(work.path(), "r", KeyType::P256, "/CN=SN-REV", &[]);
    let response = enroll_token(&server, &csr, "SN-REV", &token);
    assert_eq!(response.status, 200);
    let cert = work.path().join("r.pem");
    std::fs::write(&cert, pkcs7_to_pem(&response.body)).unwrap();
    server.admin(&["devices", "revoke", "SN-REV"]);
    let renew = post_csr(
        &server,
        None,
        "simplereenroll",
        &csr.b64,
        &[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &csr.key.display().to_string(),
        ],
    );
    assert_eq!(renew.status, 403, "{}", renew.text());
}

#[test]
fn renewal_of_a_token_enrolled_device_stays_on_the_device() {
    let server = Server::start_with(&vending_config(""), None);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-ROT");
    let csr = Csr::new(work.path(), "a", KeyType::P256, "/CN=SN-ROT", &[]);
    let response = enroll_token(&server, &csr, "SN-ROT", &token);
    let cert = work.path().join("a.pem");
    std::fs::write(&cert, pkcs7_to_pem(&response.body)).unwrap();
    let next = Csr::new(work.path(), "b", KeyType::P256, "/CN=SN-ROT", &[]);
    let renew = post_csr(
        &server,
        None,
        "simplereenroll",
        &next.b64,
        &[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &csr.key.display().to_string(),
        ],
    );
    assert_eq!(renew.status, 200, "{}", renew.text());
    let show = server.admin(&["devices", "show", "SN-ROT"]);
    assert!(
        show.contains("superseded") && show.contains("identity-cert:"),
        "{show}"
    );
}

#[test]
fn json_facade_with_and_without_csr() {
    let server = Server::start_with(&vending_config(""), None);
    let work = tempfile::tempdir().unwrap();
    let url = server.url("/cvm/v1/certificates");
    let post = |json: String| {
        let body = work.path().join("req.json");
        std::fs::write(&body, json).unwrap();
        server.curl(&[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
            &url,
        ])
    };
    // With a CSR (PEM, as hand-rolled devices send it).
    let token = add_device(&server, "CVM-1");
    let csr = Csr::new(work.path(), "c", KeyType::P256, "/CN=CVM-1", &[]);
    let pem = String::from_utf8(openssl(&[
        "req",
        "-in",
        &csr.der.display().to_string(),
        "-inform",
        "DER",
    ]))
    .unwrap();
    let response = post(format!(
        r#"{{"serial":"CVM-1","token":"{token}","csr":{}}}"#,
        json_string(&pem)
    ));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header_exact("Content-Type").as_deref(),
        Some("application/json")
    );
    let text = response.text();
    assert!(
        text.contains("\"certificatePem\":\"-----BEGIN CERTIFICATE-----"),
        "{text}"
    );
    assert!(
        text.contains("\"caPem\":") && text.contains("\"certificateId\":"),
        "{text}"
    );
    assert!(
        !text.contains("privateKeyPem"),
        "no key when the device sent a CSR"
    );
    // Replay: same rules as EST.
    let response = post(format!(
        r#"{{"serial":"CVM-1","token":"{token}","csr":{}}}"#,
        json_string(&pem)
    ));
    assert_eq!(response.status, 403);
    assert!(response.text().contains("\"error\""), "{}", response.text());

    // Without a CSR: the server generates the key.
    let token = add_device(&server, "CVM-2");
    let response = post(format!(r#"{{"serial":"CVM-2","token":"{token}"}}"#));
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    let field = |name: &str| -> String {
        let start = text.find(&format!("\"{name}\":\"")).unwrap() + name.len() + 4;
        let end = start + text[start..].find('"').unwrap();
        text[start..end].replace("\\n", "\n")
    };
    let key_pub = openssl_with_input(
        &["pkey", "-pubout"],
        Some(field("privateKeyPem").as_bytes()),
    );
    let cert_pub = openssl_with_input(
        &["x509", "-pubkey", "-noout"],
        Some(field("certificatePem").as_bytes()),
    );
    assert_eq!(key_pub, cert_pub);
    let subject = openssl_with_input(
        &["x509", "-noout", "-subject"],
        Some(field("certificatePem").as_bytes()),
    );
    assert!(String::from_utf8(subject).unwrap().contains("CN = CVM-2"));

    // Malformed JSON and wrong media type.
    assert_eq!(post("{not json".into()).status, 400);
    let response = server.curl(&["-H", "Content-Type: text/plain", "--data-binary", "x", &url]);
    assert_eq!(response.status, 415);
    server.assert_healthy();
}

fn json_string(text: &str) -> String {
    format!(
        "\"{}\"",
        text.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

#[test]
fn import_writes_tokens_0600_and_they_work() {
    let server = Server::start_with(&vending_config(""), None);
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("devices.csv");
    let mut text = String::from("id,label\n");
    for i in 0..2000 {
        text.push_str(&format!("IMP-{i:05}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let tokens = work.path().join("tokens.csv");
    let out = server.admin(&[
        "devices",
        "import",
        &csv.display().to_string(),
        "--tokens-out",
        &tokens.display().to_string(),
    ]);
    assert!(out.contains("imported 2000 devices"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let tokens_text = std::fs::read_to_string(&tokens).unwrap();
    let line = tokens_text
        .lines()
        .find(|l| l.starts_with("IMP-01234,"))
        .unwrap();
    let token = line.split(',').nth(1).unwrap();
    let csr = Csr::new(work.path(), "i", KeyType::P256, "/CN=IMP-01234", &[]);
    assert_eq!(enroll_token(&server, &csr, "IMP-01234", token).status, 200);
    // Importing again adds nothing and overwrites no token.
    let again = work.path().join("tokens2.csv");
    let out = server.admin(&[
        "devices",
        "import",
        &csv.display().to_string(),
        "--tokens-out",
        &again.display().to_string(),
    ]);
    assert!(
        out.contains("imported 0 devices (2000 already known"),
        "{out}"
    );
}

#[test]
fn audit_lists_certificates_expiring_within_the_window() {
    let server = Server::start_with(
        &vending_config(
            "[profiles.short]\nvalidity = \"2h\"\n[labels.short]\nprofile = \"short\"\n",
        ),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    let soon = Csr::new(work.path(), "s", KeyType::P256, "/CN=soon", &[]);
    enroll_basic(&server, Some("short"), &soon, &work.path().join("s.pem"));
    let later = Csr::new(work.path(), "l", KeyType::P256, "/CN=later", &[]);
    enroll_basic(&server, None, &later, &work.path().join("l.pem"));
    let out = server.admin(&["audit", "--expiring-within", "1d"]);
    assert!(
        out.contains("CN=soon") && !out.contains("CN=later"),
        "{out}"
    );
    let json = server.admin(&["audit", "--expiring-within", "60d", "--json"]);
    assert_eq!(json.matches("\"serial\"").count(), 2, "{json}");
    assert!(json.contains("\"status\": \"expiring\""), "{json}");
    let status = Command::new(server_binary())
        .args(["audit", "--expiring-within", "soon"])
        .output()
        .unwrap();
    assert!(!status.status.success());
}

/// The failure limits hold when the wrong attempts arrive all at once. 40
/// concurrent wrong tokens for one device: exactly `token_lockout_after`
/// count on the device, and its lock shows only to the right token; 40
/// concurrent wrong credentials from one address: exactly
/// `failures_per_minute_per_address` 401s, the rest 429.
#[test]
fn failure_limits_hold_under_concurrent_attempts() {
    let server = Server::start_with(
        &vending_config(
            "[limits]\ntoken_lockout_after = 3\ntoken_lockout = \"5m\"\nfailures_per_minute_per_address = 10\n",
        ),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-BURST");
    let csr = Csr::new(work.path(), "b", KeyType::P256, "/CN=SN-BURST", &[]);
    let from = |address: &str, user: &str, password: &str| {
        let credentials = format!("{user}:{password}");
        let extra = ["-4", "--interface", address, "-u", &credentials];
        post_csr(&server, None, "simpleenroll", &csr.b64, &extra)
    };
    let statuses = |address: &str, attempts: Vec<(String, String)>| {
        let mut statuses: Vec<u16> = std::thread::scope(|scope| {
            let handles: Vec<_> = attempts
                .iter()
                .map(|(user, password)| {
                    let from = &from;
                    scope.spawn(move || from(address, user, password).status)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        statuses.sort_unstable();
        statuses
    };
    let count = |seen: &[u16], status: u16| seen.iter().filter(|s| **s == status).count();

    // One device, 40 wrong tokens at once from one address: 3 count on the
    // device and lock it; the address's 10 failures end the burst.
    let burst = (0..40)
        .map(|i| ("SN-BURST".to_owned(), format!("wrong-{i}")))
        .collect();
    let seen = statuses("127.0.5.1", burst);
    assert_eq!(count(&seen, 401), 10, "{seen:?}");
    assert_eq!(count(&seen, 429), 30, "{seen:?}");
    let show = server.admin(&["devices", "show", "SN-BURST"]);
    assert!(show.contains("failed token attempts: 3"), "{show}");
    // Locked: the right token is refused; a wrong one gets the usual 401,
    // so the lock does not tell that the serial exists.
    let response = from("127.0.5.2", "SN-BURST", &token);
    assert_eq!(response.status, 429, "locked: {}", response.text());
    assert!(response.text().contains("locked"), "{}", response.text());
    let response = from("127.0.5.2", "SN-BURST", "wrong");
    assert_eq!(response.status, 401, "{}", response.text());
    let unknown = from("127.0.5.2", "SN-NOBODY", "wrong");
    assert_eq!(
        (unknown.status, unknown.text()),
        (response.status, response.text())
    );

    // One address, 40 wrong credentials for unknown devices at once: 10
    // are judged and 30 refused.
    let burst = (0..40)
        .map(|i| (format!("SN-NONE-{i}"), "x".to_owned()))
        .collect();
    let seen = statuses("127.0.5.3", burst);
    assert_eq!(count(&seen, 401), 10, "{seen:?}");
    assert_eq!(count(&seen, 429), 30, "{seen:?}");
    // The address stays blocked for the rest of its minute, right token or not.
    let fresh = add_device(&server, "SN-FRESH");
    let response = from("127.0.5.3", "SN-FRESH", &fresh);
    assert_eq!(response.status, 429, "{}", response.text());
    assert!(response.header_exact("Retry-After").is_some());
}
