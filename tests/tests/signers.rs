//! The CA key in a real SoftHSM2 token (PKCS#11): `ca init`, enrollment,
//! renewal and the CRL signed by the token, each checked with openssl; the
//! offline-root ceremony (`ca csr` / `ca import`); and the faults a start
//! must name clearly (wrong PIN, missing key, key/certificate mismatch).

use std::path::Path;
use std::process::{Command, Output};

use est_e2e::ca_tools::*;
use est_e2e::softhsm::{SoftHsm, MODULE};
use est_e2e::*;

/// Writes the default test config plus `extra` into a fresh data directory.
fn data_dir(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), extra);
    dir
}

fn write_config(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("est-server.toml"),
        config_with(extra).replace("@BOOTSTRAP@", "[]"),
    )
    .unwrap();
}

fn est_server(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    est_server_in(dir, args, env)
}

fn verify(ca_dir: &Path, cert: &Path) {
    verify_against(ca_dir, cert)
}

fn start_fails(dir: &Path, env: &[(&str, String)]) -> String {
    start_fails_in(dir, env)
}

#[test]
fn pkcs11_ca_enrolls_renews_and_signs_the_crl_with_a_key_that_never_leaves_the_token() {
    let hsm = SoftHsm::new("est-ca", "4321");
    let dir = data_dir(&format!(
        "[ca]\ncrl_file = \"mosquitto/crl.pem\"\n{}",
        hsm.signer_toml("ca", "issuing")
    ));
    std::fs::create_dir(dir.path().join("mosquitto")).unwrap();
    let init = ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "pkcs11"],
        &hsm.env(),
    ));
    assert!(
        init.contains("pkcs11 key `issuing` in token `est-ca`"),
        "{init}"
    );
    assert!(init.contains("SHA-256 fingerprint"), "{init}");
    let ca_dir = dir.path().join("ca");
    for entry in std::fs::read_dir(&ca_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".key"), "no key file in the CA dir: {name}");
    }
    // The token holds both private keys, sensitive and never extractable.
    let objects = Command::new("pkcs11-tool")
        .args(["--module", MODULE, "--token-label", "est-ca", "--login"])
        .args(["--pin", "4321", "--list-objects", "--type", "privkey"])
        .env("SOFTHSM2_CONF", hsm.conf())
        .output()
        .expect("pkcs11-tool (opensc)");
    let objects = String::from_utf8_lossy(&objects.stdout).into_owned();
    for label in ["issuing", "issuing-root"] {
        assert!(
            objects.contains(&format!("label:      {label}")),
            "{objects}"
        );
    }
    assert_eq!(objects.matches("never extractable").count(), 2, "{objects}");
    assert_eq!(objects.matches("always sensitive").count(), 2, "{objects}");

    let server = Server::start_in(dir, &hsm.env());
    assert!(
        server.path("mosquitto/crl.pem").exists(),
        "written at start"
    );
    let work = tempfile::tempdir().unwrap();
    let first = Csr::new(work.path(), "d1", KeyType::P256, "/CN=hsm-device-1", &[]);
    let cert1 = work.path().join("1.pem");
    enroll_basic(&server, None, &first, &cert1);
    verify(&ca_dir, &cert1);

    // Renewal over mTLS, signed by the token too.
    let cert2 = work.path().join("2.pem");
    renew_and_verify(&server, &first, &cert1, "/CN=hsm-device-1", &ca_dir, &cert2);

    // An RSA device certificate from the same EC CA key.
    let rsa = Csr::new(
        work.path(),
        "d2",
        KeyType::Rsa(2048),
        "/CN=hsm-device-2",
        &[],
    );
    let cert3 = work.path().join("3.pem");
    enroll_basic(&server, None, &rsa, &cert3);
    verify(&ca_dir, &cert3);

    // Revoke and fetch the CRL the token signs; openssl checks its signature.
    let serial = serial_of(&cert3);
    server.admin_env(&["certs", "revoke", &serial], &hsm.env());
    crl_lists(&server, "/crl", &ca_dir.join("issuing-ca.pem"), &serial);

    // `ca show` names where the key is and what the chain is.
    let show = ok(est_server(server.dir.path(), &["ca", "show"], &hsm.env()));
    assert!(show.contains("issuing key: pkcs11 key `issuing`"), "{show}");
    assert!(show.contains("CN=EST Root CA"), "{show}");
    assert!(!server.log().contains("4321"), "the PIN is never logged");
}

#[test]
fn a_start_names_a_wrong_pin_a_missing_key_and_a_key_that_is_not_the_certificates() {
    let hsm = SoftHsm::new("est-ca", "1111");
    let dir = data_dir(&hsm.signer_toml("ca", "issuing"));
    ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "pkcs11"],
        &hsm.env(),
    ));

    let mut wrong_pin = hsm.env();
    wrong_pin[1].1 = "9999".into();
    let error = start_fails(dir.path(), &wrong_pin);
    assert!(
        error.contains("C_Login to token `est-ca`: PinIncorrect"),
        "{error}"
    );
    assert!(!error.contains("9999"), "the PIN is never printed");

    let error = start_fails(
        dir.path(),
        &[("SOFTHSM2_CONF", hsm.conf().display().to_string())],
    );
    assert!(error.contains("EST_HSM_PIN is not set"), "{error}");

    write_config(dir.path(), &hsm.signer_toml("ca", "gone"));
    let error = start_fails(dir.path(), &hsm.env());
    assert!(error.contains("no key `gone` in token `est-ca`"), "{error}");

    // The root key is in the token too, but it is not the issuing CA's.
    write_config(dir.path(), &hsm.signer_toml("ca", "issuing-root"));
    let error = start_fails(dir.path(), &hsm.env());
    assert!(
        error.contains("the CA key does not match the certificate")
            && error.contains("issuing-ca.pem")
            && error.contains("pkcs11 key `issuing-root`"),
        "{error}"
    );

    let mut other_token = hsm.signer_toml("ca", "issuing");
    other_token = other_token.replace("token_label = \"est-ca\"", "token_label = \"absent\"");
    write_config(dir.path(), &other_token);
    let error = start_fails(dir.path(), &hsm.env());
    assert!(error.contains("token `absent` is not present"), "{error}");

    // A PIN file readable by others is refused.
    let pin_file = hsm.dir.path().join("pin");
    std::fs::write(&pin_file, "1111\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with_file = hsm.signer_toml("ca", "issuing").replace(
        "pin_env = \"EST_HSM_PIN\"",
        &format!("pin_file = \"{}\"", pin_file.display()),
    );
    write_config(dir.path(), &with_file);
    let conf_only = [("SOFTHSM2_CONF", hsm.conf().display().to_string())];
    let error = start_fails(dir.path(), &conf_only);
    assert!(error.contains("must be mode 0600"), "{error}");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let show = ok(est_server(dir.path(), &["ca", "show"], &conf_only));
    assert!(show.contains("issuing key: pkcs11"), "{show}");
}

#[test]
fn offline_root_signs_the_issuing_csr_and_import_checks_key_and_chain() {
    let hsm = SoftHsm::new("est-ca", "2222");
    let dir = data_dir(&hsm.signer_toml("ca", "issuing"));
    let out = ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "pkcs11", "--offline-root"],
        &hsm.env(),
    ));
    let ca_dir = dir.path().join("ca");
    let csr = ca_dir.join("issuing-ca.csr");
    assert!(csr.exists(), "{out}");
    assert!(ok(est_server(dir.path(), &["ca", "show"], &hsm.env())).contains("awaiting"));
    // The CSR is signed by the token's key: openssl checks it.
    openssl(&[
        "req",
        "-in",
        &csr.display().to_string(),
        "-noout",
        "-verify",
    ]);
    // `ca csr` writes it again on demand.
    let again = dir.path().join("again.csr");
    ok(est_server(
        dir.path(),
        &["ca", "csr", "--out", &again.display().to_string()],
        &hsm.env(),
    ));
    openssl(&[
        "req",
        "-in",
        &again.display().to_string(),
        "-noout",
        "-verify",
    ]);

    // The offline root, here made by openssl.
    let root = OfflineRoot::new();
    let offline = &root.dir;
    let p = |name: &str| root.path(name);
    let sign = |csr: &str, out: &str| root.sign_issuing(csr, out);
    sign(&csr.display().to_string(), &p("issuing.pem"));

    // A certificate for some other key is refused, naming the mismatch.
    let stranger = Csr::new(
        offline.path(),
        "stranger",
        KeyType::P256,
        "/CN=Stranger",
        &[],
    );
    let stranger_pem = p("stranger.csr.pem");
    openssl(&[
        "req",
        "-inform",
        "DER",
        "-in",
        &stranger.der.display().to_string(),
        "-out",
        &stranger_pem,
    ]);
    sign(&stranger_pem, &p("stranger.pem"));
    let refused = est_server(
        dir.path(),
        &[
            "ca",
            "import",
            "--cert",
            &p("stranger.pem"),
            "--chain",
            &p("root.pem"),
        ],
        &hsm.env(),
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // …and so is a root that did not sign it.
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p("other.key"),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p("other.key"),
        "-subj",
        "/CN=Offline Root",
        "-days",
        "10",
        "-out",
        &p("other.pem"),
    ]);
    let refused = est_server(
        dir.path(),
        &[
            "ca",
            "import",
            "--cert",
            &p("issuing.pem"),
            "--chain",
            &p("other.pem"),
        ],
        &hsm.env(),
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not chain to the given root"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let imported = ok(est_server(
        dir.path(),
        &[
            "ca",
            "import",
            "--cert",
            &p("issuing.pem"),
            "--chain",
            &p("root.pem"),
        ],
        &hsm.env(),
    ));
    assert!(imported.contains("CN=Offline Root"), "{imported}");

    let server = Server::start_in(dir, &hsm.env());
    let work = tempfile::tempdir().unwrap();
    let device = Csr::new(work.path(), "d", KeyType::P384, "/CN=offline-rooted", &[]);
    let cert = work.path().join("d.pem");
    enroll_basic(&server, None, &device, &cert);
    verify(&ca_dir, &cert);
    let out = openssl(&[
        "verify",
        "-CAfile",
        &p("root.pem"),
        "-untrusted",
        &p("issuing.pem"),
        &cert.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&out).contains(": OK"));
}

#[test]
fn token_taken_away_while_running_answers_503_and_recovers_when_back() {
    let hsm = SoftHsm::new("est-ca", "3333");
    let dir = data_dir(&hsm.signer_toml("ca", "issuing"));
    ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "pkcs11"],
        &hsm.env(),
    ));
    let server = Server::start_in(dir, &hsm.env());
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "d", KeyType::P256, "/CN=hsm-away", &[]);
    let enroll = || {
        post_csr(
            &server,
            None,
            "simpleenroll",
            &csr.b64,
            &["-u", "estuser:estpwd"],
        )
    };
    assert_eq!(enroll().status, 200);

    // "Pull" the token: its directory goes away.
    let tokens = hsm.dir.path().join("tokens");
    let away = hsm.dir.path().join("away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    let response = enroll();
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        server.log().contains("PKCS#11 signing failed"),
        "{}",
        server.log()
    );

    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    // The module is re-initialised at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let response = enroll();
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        server.log()
    );
}
