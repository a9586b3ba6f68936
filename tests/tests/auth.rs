//! Authentication: Basic challenge spelling, wrong credentials, bootstrap certificates.

use est_e2e::*;

#[test]
fn missing_credentials_get_a_basic_challenge_spelled_exactly() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "x", KeyType::P256, "/CN=x", &[]);
    let response = post_csr(&server, None, "simpleenroll", &csr.b64, &[]);
    assert_eq!(response.status, 401);
    // libest's estclient only answers a challenge spelled exactly so.
    assert_eq!(
        response.header_exact("WWW-Authenticate").as_deref(),
        Some("Basic realm=\"estrealm\""),
        "{}",
        response.headers
    );
    assert!(response.header_exact("Content-Length").is_some());
    assert!(response.header_exact("Content-Type").is_some());
}

#[test]
fn wrong_password_and_unknown_user_are_401() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "x", KeyType::P256, "/CN=x", &[]);
    for user in ["estuser:wrong", "nobody:estpwd", "estuser:"] {
        let response = post_csr(&server, None, "simpleenroll", &csr.b64, &["-u", user]);
        assert_eq!(response.status, 401, "{user}");
        assert!(response.header_exact("WWW-Authenticate").is_some());
    }
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &csr.b64,
        &["-H", "Authorization: Basic !!!notbase64"],
    );
    assert_eq!(response.status, 401);
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &csr.b64,
        &["-H", "Authorization: Bearer abc"],
    );
    assert_eq!(response.status, 401);
    assert!(response.text().contains("Bearer"));
    server.assert_healthy();
}

#[test]
fn bootstrap_certificate_enrolls_its_own_name_only() {
    let work = tempfile::tempdir().unwrap();
    let manufacturer = ManufacturerCa::new(work.path(), "Manufacturer CA");
    let server = Server::start_with(&config_with(""), Some(&manufacturer.cert));
    let (boot, key) = manufacturer.issue("device-77");
    let (b, k) = (boot.display().to_string(), key.display().to_string());

    let own = Csr::new(work.path(), "own", KeyType::P256, "/CN=device-77", &[]);
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &own.b64,
        &["--cert", &b, "--key", &k],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let listing = server.admin(&["certs", "list"]);
    assert!(
        listing.contains("auth=bootstrap-cert:CN=device-77"),
        "{listing}"
    );

    let other = Csr::new(work.path(), "other", KeyType::P256, "/CN=device-78", &[]);
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &other.b64,
        &["--cert", &b, "--key", &k],
    );
    assert_eq!(response.status, 403, "{}", response.text());
}

#[test]
fn bootstrap_certificate_is_refused_where_the_label_does_not_allow_it() {
    let work = tempfile::tempdir().unwrap();
    let manufacturer = ManufacturerCa::new(work.path(), "Manufacturer CA");
    let server = Server::start_with(
        &config_with("[labels.basiconly]\nprofile = \"device\"\nauth = [\"basic\"]\n"),
        Some(&manufacturer.cert),
    );
    let (boot, key) = manufacturer.issue("device-5");
    let (b, k) = (boot.display().to_string(), key.display().to_string());
    let csr = Csr::new(work.path(), "c", KeyType::P256, "/CN=device-5", &[]);
    let response = post_csr(
        &server,
        Some("basiconly"),
        "simpleenroll",
        &csr.b64,
        &["--cert", &b, "--key", &k],
    );
    assert_eq!(response.status, 401, "{}", response.text());
    assert!(response.text().contains("bootstrap"), "{}", response.text());
}

#[test]
fn certificate_from_an_unknown_ca_fails_the_handshake() {
    let work = tempfile::tempdir().unwrap();
    let trusted = ManufacturerCa::new(work.path(), "Trusted Manufacturer");
    let rogue_dir = work.path().join("rogue");
    std::fs::create_dir(&rogue_dir).unwrap();
    let rogue = ManufacturerCa::new(&rogue_dir, "Rogue CA");
    let server = Server::start_with(&config_with(""), Some(&trusted.cert));
    let (cert, key) = rogue.issue("device-1");
    let csr = Csr::new(work.path(), "c", KeyType::P256, "/CN=device-1", &[]);
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &csr.b64,
        &[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    );
    assert_eq!(response.status, 0);
    assert_ne!(response.exit, 0);
    server.assert_healthy();
}
