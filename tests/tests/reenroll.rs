//! Re-enrollment is rotation: /simplereenroll over mTLS, and /simpleenroll
//! with a certificate this server issued (how Azure IoT Edge renews).

use est_e2e::*;

fn serial_of_response(response: &HttpResponse) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pem");
    std::fs::write(&path, pkcs7_to_pem(&response.body)).unwrap();
    serial_of(&path)
}

fn mtls<'a>(cert: &'a str, key: &'a str) -> [&'a str; 4] {
    ["--cert", cert, "--key", key]
}

#[test]
fn renew_with_same_key_then_rekey_supersedes_each_predecessor() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let subject = "/CN=rotating-device/O=Fleet";
    let san = "subjectAltName=DNS:rotating.example";
    let first = Csr::new(work.path(), "first", KeyType::P256, subject, &[san]);
    let cert1 = work.path().join("1.pem");
    enroll_basic(&server, None, &first, &cert1);

    // Renew: same key.
    let renew = Csr::for_key(work.path(), "renew", &first.key, subject, &[san]);
    let (c, k) = (cert1.display().to_string(), first.key.display().to_string());
    let response = post_csr(&server, None, "simplereenroll", &renew.b64, &mtls(&c, &k));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header_exact("Content-Type").as_deref(),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    let pem = pkcs7_to_pem(&response.body);
    assert_eq!(count_certs(&pem), 1);
    let cert2 = work.path().join("2.pem");
    std::fs::write(&cert2, pem).unwrap();
    assert_ne!(serial_of(&cert1), serial_of(&cert2));
    assert_eq!(x509(&cert1, &["-subject"]), x509(&cert2, &["-subject"]));
    assert_eq!(state_of(&server, &serial_of(&cert1)), "superseded");
    assert_eq!(state_of(&server, &serial_of(&cert2)), "active");

    // The response was lost: until cert2 is used, the same request
    // authenticated by cert1 gets cert2 again and nothing new is issued...
    let response = post_csr(&server, None, "simplereenroll", &renew.b64, &mtls(&c, &k));
    assert_eq!(response.status, 200, "{}", response.text());
    let again = work.path().join("2-again.pem");
    std::fs::write(&again, pkcs7_to_pem(&response.body)).unwrap();
    assert_eq!(serial_of(&again), serial_of(&cert2));
    // ...but a different key is not a retry: refused.
    let other = Csr::new(work.path(), "other", KeyType::P256, subject, &[san]);
    let response = post_csr(&server, None, "simplereenroll", &other.b64, &mtls(&c, &k));
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(response.text().contains("superseded"));
    assert_eq!(
        server
            .admin(&["certs", "list"])
            .matches("CN=rotating-device")
            .count(),
        2
    );

    // Once cert2 has been used, cert1 can no longer renew at all.
    let c2 = cert2.display().to_string();
    let cacerts = format!("{}/cacerts", server.base(None));
    assert_eq!(
        server.curl(&["--cert", &c2, "--key", &k, &cacerts]).status,
        200
    );
    let mut refused = false;
    for _ in 0..40 {
        let r = post_csr(&server, None, "simplereenroll", &renew.b64, &mtls(&c, &k));
        if r.status == 403 && r.text().contains("superseded") {
            refused = true;
            break;
        }
        assert_eq!(
            serial_of_response(&r),
            serial_of(&cert2),
            "never a new certificate"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(refused, "cert1 refused once cert2 was used");

    // Rekey: new key, authenticated by the current certificate.
    let rekey = Csr::new(work.path(), "rekey", KeyType::P256, subject, &[san]);
    let response = post_csr(&server, None, "simplereenroll", &rekey.b64, &mtls(&c2, &k));
    assert_eq!(response.status, 200, "{}", response.text());
    let cert3 = work.path().join("3.pem");
    std::fs::write(&cert3, pkcs7_to_pem(&response.body)).unwrap();
    let new_key = openssl(&["pkey", "-in", &rekey.key.display().to_string(), "-pubout"]);
    let cert_key = openssl(&[
        "x509",
        "-in",
        &cert3.display().to_string(),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(new_key, cert_key);
    assert_eq!(state_of(&server, &serial_of(&cert2)), "superseded");
    let listing = server.admin(&["certs", "list"]);
    assert!(
        listing.contains(&format!("predecessor={}", serial_of(&cert2))),
        "{listing}"
    );
    server.assert_healthy();
}

#[test]
fn identity_certificate_on_simpleenroll_is_a_renewal_iot_edge_style() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let first = Csr::new(
        work.path(),
        "edge",
        KeyType::P256,
        "/CN=edge-device-9",
        &["extendedKeyUsage=clientAuth"],
    );
    let cert1 = work.path().join("edge1.pem");
    enroll_basic(&server, Some("iot"), &first, &cert1);
    // Renew on the same label with a new key, Basic sent up front as IoT Edge does.
    let next = Csr::new(
        work.path(),
        "edge2",
        KeyType::P256,
        "/CN=edge-device-9",
        &["extendedKeyUsage=clientAuth"],
    );
    let (c, k) = (cert1.display().to_string(), first.key.display().to_string());
    let mut args = mtls(&c, &k).to_vec();
    args.extend([
        "-u",
        "estuser:estpwd",
        "-H",
        "Content-Transfer-Encoding: base64",
    ]);
    let response = post_csr(&server, Some("iot"), "simpleenroll", &next.b64, &args);
    assert_eq!(response.status, 200, "{}", response.text());
    let cert2 = work.path().join("edge2.pem");
    std::fs::write(&cert2, pkcs7_to_pem(&response.body)).unwrap();
    assert_eq!(state_of(&server, &serial_of(&cert1)), "superseded");
    let listing = server.admin(&["certs", "list"]);
    assert!(
        listing.contains(&format!("auth=identity-cert:{}", serial_of(&cert1))),
        "{listing}"
    );

    // On another label the identity certificate is not a renewal: without a method
    // that label accepts it is refused, and simplereenroll there is 403.
    let c2 = cert2.display().to_string();
    let k2 = next.key.display().to_string();
    let again = Csr::for_key(work.path(), "edge3", &next.key, "/CN=edge-device-9", &[]);
    let response = post_csr(&server, None, "simpleenroll", &again.b64, &mtls(&c2, &k2));
    assert_eq!(response.status, 401, "{}", response.text());
    assert!(
        response.text().contains("another label"),
        "{}",
        response.text()
    );
    let response = post_csr(&server, None, "simplereenroll", &again.b64, &mtls(&c2, &k2));
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("renew it there"),
        "{}",
        response.text()
    );
    assert_eq!(state_of(&server, &serial_of(&cert2)), "active");
}

#[test]
fn identity_certificate_authenticates_a_first_enrollment_where_issued_cert_is_allowed() {
    let server = Server::start_with(
        &config_with(
            "[labels.edge-ca-issued]\nprofile = \"edge-ca\"\nauth = [\"issued-cert\"]\n\
             [labels.other]\nprofile = \"device\"\nauth = [\"issued-cert\"]\n\
             [labels.closed]\nprofile = \"device\"\nauth = [\"basic\"]\n\
             [labels.tok]\nprofile = \"device\"\nauth = [\"device-token\"]\n",
        ),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    // A device token's certificate: its device may obtain an Edge CA.
    server.admin(&["devices", "add", "edge-7", "--label", "tok", "--edge-ca"]);
    let token = {
        let line = server.admin(&["devices", "add", "edge-8", "--label", "tok"]);
        line.trim().rsplit(' ').next().unwrap().to_owned()
    };
    let id = Csr::new(work.path(), "id", KeyType::P256, "/CN=edge-8", &[]);
    let cert = work.path().join("id.pem");
    let response = post_csr(
        &server,
        Some("tok"),
        "simpleenroll",
        &id.b64,
        &["-u", &format!("edge-8:{token}")],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    std::fs::write(&cert, pkcs7_to_pem(&response.body)).unwrap();
    let (c, k) = (cert.display().to_string(), id.key.display().to_string());
    // A first end-entity certificate on another label: the same identity's
    // subject, not a renewal of the authenticating certificate.
    let other = Csr::new(work.path(), "other", KeyType::P256, "/CN=edge-8", &[]);
    let response = post_csr(
        &server,
        Some("other"),
        "simpleenroll",
        &other.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let listing = server.admin(&["certs", "list"]);
    assert!(
        listing.contains(&format!("auth=issued-cert:{}", serial_of(&cert))),
        "{listing}"
    );
    assert_eq!(
        state_of(&server, &serial_of(&cert)),
        "active",
        "not a renewal of the identity"
    );
    // Another identity's subject is refused.
    let foreign = Csr::new(work.path(), "foreign", KeyType::P256, "/CN=edge-7", &[]);
    let response = post_csr(
        &server,
        Some("other"),
        "simpleenroll",
        &foreign.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 403, "{}", response.text());
    // Where issued certificates are not accepted, they are not.
    let response = post_csr(
        &server,
        Some("closed"),
        "simpleenroll",
        &other.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 401, "{}", response.text());
    // A CA needs a device allowed one (edge-8 is not) …
    let edge_ca = Csr::new(
        work.path(),
        "eca",
        KeyType::P256,
        "/CN=aziot-edge CA edge-8",
        &["basicConstraints=critical,CA:TRUE,pathlen:0"],
    );
    let response = post_csr(
        &server,
        Some("edge-ca-issued"),
        "simpleenroll",
        &edge_ca.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("devices edge-ca edge-8"),
        "{}",
        response.text()
    );
    // … and once allowed, it gets one, with the subject derived from it.
    server.admin(&["devices", "edge-ca", "edge-8"]);
    let response = post_csr(
        &server,
        Some("edge-ca-issued"),
        "simpleenroll",
        &edge_ca.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let wrong = Csr::new(
        work.path(),
        "eca2",
        KeyType::P256,
        "/CN=aziot-edge CA edge-7",
        &["basicConstraints=critical,CA:TRUE,pathlen:0"],
    );
    let response = post_csr(
        &server,
        Some("edge-ca-issued"),
        "simpleenroll",
        &wrong.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("CN=aziot-edge CA edge-8"),
        "{}",
        response.text()
    );
}

#[test]
fn reenroll_refuses_another_identity() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let first = Csr::new(
        work.path(),
        "a",
        KeyType::P256,
        "/CN=device-a",
        &["subjectAltName=DNS:a.example"],
    );
    let cert = work.path().join("a.pem");
    enroll_basic(&server, None, &first, &cert);
    let (c, k) = (cert.display().to_string(), first.key.display().to_string());

    let other_subject = Csr::for_key(
        work.path(),
        "b",
        &first.key,
        "/CN=device-b",
        &["subjectAltName=DNS:a.example"],
    );
    let response = post_csr(
        &server,
        None,
        "simplereenroll",
        &other_subject.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 403);
    assert!(response.text().contains("subject"), "{}", response.text());

    let other_san = Csr::for_key(
        work.path(),
        "c",
        &first.key,
        "/CN=device-a",
        &["subjectAltName=DNS:b.example"],
    );
    let response = post_csr(
        &server,
        None,
        "simplereenroll",
        &other_san.b64,
        &mtls(&c, &k),
    );
    assert_eq!(response.status, 403);
    assert!(
        response.text().contains("subjectAltName"),
        "{}",
        response.text()
    );

    // Still active after the refusals.
    let same = Csr::for_key(
        work.path(),
        "d",
        &first.key,
        "/CN=device-a",
        &["subjectAltName=DNS:a.example"],
    );
    let response = post_csr(&server, None, "simplereenroll", &same.b64, &mtls(&c, &k));
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn reenroll_needs_an_issued_certificate() {
    let work = tempfile::tempdir().unwrap();
    let manufacturer = ManufacturerCa::new(work.path(), "Manufacturer CA");
    let server = Server::start_with(&config_with(""), Some(&manufacturer.cert));
    let csr = Csr::new(work.path(), "n", KeyType::P256, "/CN=no-cert", &[]);
    // No client certificate: 401, even with Basic.
    let response = post_csr(
        &server,
        None,
        "simplereenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 401);
    assert!(response.header_exact("WWW-Authenticate").is_some());
    // A bootstrap certificate is not an identity: 403.
    let (boot, key) = manufacturer.issue("no-cert");
    let (b, k) = (boot.display().to_string(), key.display().to_string());
    let response = post_csr(&server, None, "simplereenroll", &csr.b64, &mtls(&b, &k));
    assert_eq!(response.status, 403, "{}", response.text());
}

#[test]
fn revoked_certificate_cannot_renew() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let first = Csr::new(work.path(), "r", KeyType::P256, "/CN=revoked-device", &[]);
    let cert = work.path().join("r.pem");
    enroll_basic(&server, None, &first, &cert);
    server.admin(&["certs", "revoke", &serial_of(&cert)]);
    let (c, k) = (cert.display().to_string(), first.key.display().to_string());
    let response = post_csr(&server, None, "simplereenroll", &first.b64, &mtls(&c, &k));
    assert_eq!(response.status, 403);
    assert!(response.text().contains("revoked"), "{}", response.text());
}

#[test]
fn expired_certificate_fails_the_handshake() {
    let server = Server::start_with(
        &config_with("[profiles.short]\nvalidity = \"1s\"\nbackdate = \"0s\"\n[labels.short]\nprofile = \"short\"\n"),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    let first = Csr::new(work.path(), "e", KeyType::P256, "/CN=expiring", &[]);
    let cert = work.path().join("e.pem");
    enroll_basic(&server, Some("short"), &first, &cert);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (c, k) = (cert.display().to_string(), first.key.display().to_string());
    let response = post_csr(
        &server,
        Some("short"),
        "simplereenroll",
        &first.b64,
        &mtls(&c, &k),
    );
    assert_eq!(
        response.status,
        0,
        "no HTTP answer to an expired certificate: {}",
        response.text()
    );
    assert_ne!(response.exit, 0);
    server.assert_healthy();
}

#[test]
fn registry_survives_restart() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let first = Csr::new(work.path(), "p", KeyType::P256, "/CN=persistent", &[]);
    let cert = work.path().join("p.pem");
    enroll_basic(&server, None, &first, &cert);
    let server = server.restart();
    let (c, k) = (cert.display().to_string(), first.key.display().to_string());
    let response = post_csr(&server, None, "simplereenroll", &first.b64, &mtls(&c, &k));
    assert_eq!(
        response.status,
        200,
        "same CA and registry after restart: {}",
        response.text()
    );
}

#[test]
fn crl_lists_revoked_and_retired_certificates() {
    let config = config_with("").replace(
        "realm = \"estrealm\"",
        "realm = \"estrealm\"\nretire_sweep_interval = \"1s\"",
    );
    let server = Server::start_with(&config, None);
    let work = tempfile::tempdir().unwrap();
    // One revoked by the operator.
    let revoked = Csr::new(work.path(), "rv", KeyType::P256, "/CN=revoked-one", &[]);
    let revoked_cert = work.path().join("rv.pem");
    enroll_basic(&server, None, &revoked, &revoked_cert);
    server.admin(&["certs", "revoke", &serial_of(&revoked_cert)]);
    // One superseded, then retired once its successor is used.
    let old = Csr::new(work.path(), "old", KeyType::P256, "/CN=rotated-one", &[]);
    let old_cert = work.path().join("old.pem");
    enroll_basic(&server, None, &old, &old_cert);
    let (c, k) = (
        old_cert.display().to_string(),
        old.key.display().to_string(),
    );
    let response = post_csr(&server, None, "simplereenroll", &old.b64, &mtls(&c, &k));
    assert_eq!(response.status, 200);
    let new_cert = work.path().join("new.pem");
    std::fs::write(&new_cert, pkcs7_to_pem(&response.body)).unwrap();
    let n = new_cert.display().to_string();
    assert_eq!(
        server
            .curl(&[
                "--cert",
                &n,
                "--key",
                &k,
                &format!("{}/cacerts", server.base(None))
            ])
            .status,
        200
    );
    let mut retired = false;
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if state_of(&server, &serial_of(&old_cert)) == "superseded+retired" {
            retired = true;
            break;
        }
    }
    assert!(retired, "{}", server.admin(&["certs", "list"]));

    let response = server.curl(&[&server.url("/crl")]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_exact("Content-Type").as_deref(),
        Some("application/pkix-crl")
    );
    let crl = work.path().join("ca.crl");
    std::fs::write(&crl, &response.body).unwrap();
    let chain = work.path().join("chain.pem");
    let cacerts = server.curl(&[&format!("{}/cacerts", server.base(None))]);
    std::fs::write(&chain, pkcs7_to_pem(&cacerts.body)).unwrap();
    let output = std::process::Command::new("openssl")
        .args([
            "crl",
            "-inform",
            "DER",
            "-in",
            &crl.display().to_string(),
            "-CAfile",
            &chain.display().to_string(),
            "-noout",
            "-text",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("verify OK"), "{text}");
    for cert in [&revoked_cert, &old_cert] {
        let serial = serial_of(cert).to_ascii_uppercase();
        assert!(text.contains(&serial), "{serial} listed:\n{text}");
    }
    assert!(!text.contains(&serial_of(&new_cert).to_ascii_uppercase()));
    // The CLI writes the same CRL.
    let out = work.path().join("cli.crl");
    server.admin(&["crl", "--out", &out.display().to_string()]);
    assert!(std::fs::metadata(&out).unwrap().len() > 100);
}

/// libest's `simplereenroll` copies the old certificate's extensions into
/// its CSR; the renewal still continues the same lineage.
#[test]
fn reenroll_continues_the_lineage_whatever_the_csr_asks_for() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let first = Csr::new(work.path(), "l1", KeyType::P256, "/CN=libest-like", &[]);
    let cert = work.path().join("l1.pem");
    enroll_basic(&server, None, &first, &cert);
    let again = Csr::new(
        work.path(),
        "l2",
        KeyType::P256,
        "/CN=libest-like",
        &[
            "extendedKeyUsage=clientAuth",
            "keyUsage=digitalSignature,keyAgreement",
        ],
    );
    let (c, k) = (cert.display().to_string(), first.key.display().to_string());
    let response = post_csr(&server, None, "simplereenroll", &again.b64, &mtls(&c, &k));
    assert_eq!(response.status, 200, "{}", response.text());
    let renewed = serial_of_response(&response);
    let listing = server.admin(&["certs", "list"]);
    let lineage = |serial: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(serial))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("lineage=")))
            .unwrap()
            .to_owned()
    };
    assert_eq!(lineage(&serial_of(&cert)), lineage(&renewed), "{listing}");
    assert!(state_of(&server, &serial_of(&cert)).starts_with("superseded"));
}
