//! The CA key in AWS KMS, against a real moto (with the launcher's patch 5):
//! `ca init --signer aws-kms` (a key created by `--create-key`, or given),
//! token enrollment, renewal over mTLS, the CRL and OCSP all signed in KMS
//! and each checked with openssl; a P-384 issuing key under an offline root;
//! the faults a start must name (a key that is not the certificate's, no
//! key id, a key that cannot sign); and, through a proxy in front of moto,
//! KMS throttling retried with growing back-off and KMS out of reach
//! answered with 503 without burning the device's one-time token.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use est_e2e::ca_tools::*;
use est_e2e::*;

/// A secret the server must never print; moto does not check credentials.
const SECRET: &str = "kms-test-secret-9f3c1d";

fn env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIAKMSTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// The test config with Basic and device-token enrollment and `extra`.
fn kms_config(extra: &str) -> String {
    config_with(&format!(
        "[enroll]\nprofile = \"device\"\nauth = [\"basic\", \"device-token\"]\n{extra}"
    ))
    .replacen(
        "[enroll]\nprofile = \"device\"\n[labels.edgeca]",
        "[labels.edgeca]",
        1,
    )
    .replace("@BOOTSTRAP@", "[]")
}

/// `[ca.signer]` for KMS at `endpoint`, with `key_id` when given, and `more` settings.
fn signer_toml(endpoint: &str, key_id: Option<&str>, more: &str) -> String {
    let key = key_id
        .map(|id| format!("key_id = \"{id}\"\n"))
        .unwrap_or_default();
    format!("[ca]\n{more}[ca.signer]\nkind = \"aws-kms\"\nendpoint_url = \"{endpoint}\"\n{key}")
}

fn write_config(dir: &Path, config: &str) {
    std::fs::write(dir.join("est-server.toml"), config).unwrap();
}

fn est_server(dir: &Path, args: &[&str]) -> Output {
    est_server_in(dir, args, &env())
}

/// A serve that must fail at start: returns its stderr.
fn start_fails(dir: &Path) -> String {
    start_fails_in(dir, &env())
}

/// Creates a key in moto's KMS and returns its key id.
fn create_key(moto: &Moto, spec: &str, usage: &str) -> String {
    moto.boto(&format!(
        "print(kms.create_key(KeySpec='{spec}', KeyUsage='{usage}')['KeyMetadata']['KeyId'])"
    ))
    .trim()
    .to_owned()
}

fn verify(ca_dir: &Path, cert: &Path) {
    verify_against(ca_dir, cert)
}

fn add_device(server: &Server, id: &str) -> String {
    let out = server.admin_env(&["devices", "add", id], &env());
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

/// Revokes `cert`, fetches the CRL and has openssl check its signature and
/// that it lists the serial.
fn revoke_and_check_crl(server: &Server, cert: &Path) {
    let serial = serial_of(cert);
    server.admin_env(&["certs", "revoke", &serial], &env());
    crl_lists(server, "/crl", &server.path("ca/issuing-ca.pem"), &serial);
}

/// Asks the OCSP responder about `cert`; openssl verifies the response
/// (signed in KMS by the issuing CA) and the status must be `status`.
fn ocsp_status(server: &Server, cert: &Path, work: &Path, status: &str) {
    let issuing = server.path("ca/issuing-ca.pem").display().to_string();
    let root = server.path("ca/root-ca.pem").display().to_string();
    let name = cert.file_stem().unwrap().to_string_lossy().into_owned();
    let req = work.join(format!("{name}.ocsp-req"));
    let resp = work.join(format!("{name}.ocsp-resp"));
    openssl(&[
        "ocsp",
        "-issuer",
        &issuing,
        "-cert",
        &cert.display().to_string(),
        "-reqout",
        &req.display().to_string(),
    ]);
    let response = server.curl(&[
        "-H",
        "Content-Type: application/ocsp-request",
        "--data-binary",
        &format!("@{}", req.display()),
        &server.url("/ocsp"),
    ]);
    assert_eq!(response.status, 200);
    std::fs::write(&resp, &response.body).unwrap();
    let output = Command::new("openssl")
        .args(["ocsp", "-reqin"])
        .arg(&req)
        .arg("-respin")
        .arg(&resp)
        .args(["-issuer", &issuing, "-VAfile", &issuing, "-CAfile", &root])
        .arg("-resp_text")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains(&format!("Cert Status: {status}")), "{text}");
}

#[test]
fn kms_p256_ca_created_by_ca_init_enrolls_renews_and_signs_crl_and_ocsp() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &kms_config(&signer_toml(&moto.endpoint, None, "")),
    );

    // No key yet: init says what to do.
    let refused = est_server(dir.path(), &["ca", "init", "--signer", "aws-kms"]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("needs a key: set key_id, pass --key-id, or --create-key"),
        "{error}"
    );

    let init = ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "aws-kms", "--create-key"],
    ));
    assert!(init.contains("for the issuing CA"), "{init}");
    assert!(init.contains("for the root"), "{init}");
    assert!(init.contains("SHA-256 fingerprint"), "{init}");
    let key_id = init
        .lines()
        .find_map(|line| line.strip_prefix("now set in [ca.signer]: key_id = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no key id printed: {init}"))
        .to_owned();
    // Both keys are P-256 signing keys in KMS; no key file on disk.
    let specs = moto.boto(
        "for k in kms.list_keys()['Keys']:\n    m = kms.describe_key(KeyId=k['KeyId'])['KeyMetadata']\n    print(m['KeyId'], m['KeySpec'], m['KeyUsage'])",
    );
    assert_eq!(
        specs.matches("ECC_NIST_P256 SIGN_VERIFY").count(),
        2,
        "{specs}"
    );
    assert!(specs.contains(&key_id), "{specs}");
    let ca_dir = dir.path().join("ca");
    for entry in std::fs::read_dir(&ca_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".key"), "no key file in the CA dir: {name}");
    }
    write_config(
        dir.path(),
        &kms_config(&signer_toml(&moto.endpoint, Some(&key_id), "")),
    );
    let show = ok(est_server(dir.path(), &["ca", "show"]));
    assert!(
        show.contains(&format!(
            "issuing key: aws-kms key arn:aws:kms:us-east-1:123456789012:key/{key_id}"
        )),
        "{show}"
    );
    assert!(show.contains("public key SHA-256"), "{show}");

    let server = Server::start_in(dir, &env());
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "SN-KMS-1");
    let first = Csr::new(work.path(), "d1", KeyType::P256, "/CN=SN-KMS-1", &[]);
    let response = enroll_token(&server, &first, "SN-KMS-1", &token);
    assert_eq!(response.status, 200, "{}", response.text());
    let cert1 = work.path().join("cert1.pem");
    std::fs::write(&cert1, pkcs7_to_pem(&response.body)).unwrap();
    verify(&ca_dir, &cert1);

    // Renewal over mTLS, signed in KMS too.
    let cert2 = work.path().join("cert2.pem");
    renew_and_verify(&server, &first, &cert1, "/CN=SN-KMS-1", &ca_dir, &cert2);
    assert_ne!(serial_of(&cert1), serial_of(&cert2));

    // A Basic enrollment, then revoked: the CRL and OCSP are signed in KMS.
    let other = Csr::new(work.path(), "d2", KeyType::P256, "/CN=kms-basic", &[]);
    let cert3 = work.path().join("cert3.pem");
    enroll_basic(&server, None, &other, &cert3);
    verify(&ca_dir, &cert3);
    revoke_and_check_crl(&server, &cert3);
    ocsp_status(&server, &cert3, work.path(), "revoked");
    ocsp_status(&server, &cert2, work.path(), "good");
    assert!(
        server.log().contains("aws-kms key arn:aws:kms:"),
        "{}",
        server.log()
    );
    assert!(!server.log().contains(SECRET), "no credential in the log");
}

#[test]
fn kms_rsa2048_keys_given_by_id_sign_certificates_and_the_crl() {
    let moto = Moto::start();
    let issuing = create_key(&moto, "RSA_2048", "SIGN_VERIFY");
    let root = create_key(&moto, "RSA_2048", "SIGN_VERIFY");
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &kms_config(&signer_toml(&moto.endpoint, Some(&issuing), "")),
    );
    // The root must be another key than the issuing CA's.
    let refused = est_server(
        dir.path(),
        &[
            "ca",
            "init",
            "--signer",
            "aws-kms",
            "--root-key-id",
            &issuing,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("different KMS keys"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let init = ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "aws-kms", "--root-key-id", &root],
    ));
    assert!(
        init.contains(&format!(
            "root key: aws-kms key arn:aws:kms:us-east-1:123456789012:key/{root}"
        )),
        "{init}"
    );
    let ca_dir = dir.path().join("ca");
    let text = x509(&ca_dir.join("issuing-ca.pem"), &["-noout", "-text"]);
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");

    let server = Server::start_in(dir, &env());
    let work = tempfile::tempdir().unwrap();
    for (name, key) in [("ec", KeyType::P256), ("rsa", KeyType::Rsa(2048))] {
        let csr = Csr::new(work.path(), name, key, &format!("/CN=kms-rsa-{name}"), &[]);
        let cert = work.path().join(format!("{name}.pem"));
        enroll_basic(&server, None, &csr, &cert);
        verify(&ca_dir, &cert);
    }
    revoke_and_check_crl(&server, &work.path().join("rsa.pem"));
    ocsp_status(
        &server,
        &work.path().join("rsa.pem"),
        work.path(),
        "revoked",
    );
}

#[test]
fn kms_p384_issuing_key_under_an_offline_root() {
    let moto = Moto::start();
    let issuing = create_key(&moto, "ECC_NIST_P384", "SIGN_VERIFY");
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &kms_config(&signer_toml(&moto.endpoint, Some(&issuing), "")),
    );
    ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "aws-kms", "--offline-root"],
    ));
    let ca_dir = dir.path().join("ca");
    let csr = ca_dir.join("issuing-ca.csr");
    // The CSR is signed in KMS (ECDSA P-384 with SHA-384): openssl checks it.
    let text = String::from_utf8(openssl(&[
        "req",
        "-in",
        &csr.display().to_string(),
        "-noout",
        "-text",
        "-verify",
    ]))
    .unwrap();
    assert!(text.contains("ecdsa-with-SHA384"), "{text}");
    assert!(text.contains("NIST CURVE: P-384"), "{text}");

    let root = OfflineRoot::new();
    let p = |name: &str| root.path(name);
    root.sign_issuing(&csr.display().to_string(), &p("issuing.pem"));
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
    ));
    assert!(
        imported.contains("issuing key: aws-kms key arn:aws:kms:"),
        "{imported}"
    );

    let server = Server::start_in(dir, &env());
    let work = tempfile::tempdir().unwrap();
    let device = Csr::new(work.path(), "d", KeyType::P256, "/CN=kms-offline", &[]);
    let cert = work.path().join("d.pem");
    enroll_basic(&server, None, &device, &cert);
    verify(&ca_dir, &cert);
    let text = x509(&cert, &["-noout", "-text"]);
    assert!(text.contains("ecdsa-with-SHA384"), "{text}");
}

#[test]
fn kms_start_names_a_mismatched_key_a_missing_key_id_and_a_key_that_cannot_sign() {
    let moto = Moto::start();
    let issuing = create_key(&moto, "ECC_NIST_P256", "SIGN_VERIFY");
    let root = create_key(&moto, "ECC_NIST_P256", "SIGN_VERIFY");
    let dir = tempfile::tempdir().unwrap();
    let config = |key: Option<&str>| kms_config(&signer_toml(&moto.endpoint, key, ""));
    write_config(dir.path(), &config(Some(&issuing)));
    ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "aws-kms", "--root-key-id", &root],
    ));

    // The root's key is in KMS too, but it is not the issuing CA's.
    write_config(dir.path(), &config(Some(&root)));
    let error = start_fails(dir.path());
    assert!(
        error.contains("the CA key does not match the certificate")
            && error.contains("issuing-ca.pem")
            && error.contains(&format!(
                "aws-kms key arn:aws:kms:us-east-1:123456789012:key/{root}"
            )),
        "{error}"
    );

    write_config(dir.path(), &config(None));
    let error = start_fails(dir.path());
    assert!(error.contains("kind = \"aws-kms\" needs key_id"), "{error}");

    let encrypting = create_key(&moto, "RSA_2048", "ENCRYPT_DECRYPT");
    write_config(dir.path(), &config(Some(&encrypting)));
    let error = start_fails(dir.path());
    assert!(
        error.contains("has key usage ENCRYPT_DECRYPT; a CA key must be SIGN_VERIFY"),
        "{error}"
    );

    write_config(dir.path(), &config(Some("alias/no-such-key")));
    let error = start_fails(dir.path());
    assert!(
        error.contains("KMS key `alias/no-such-key`") && error.contains("NotFoundException"),
        "{error}"
    );
    assert!(!error.contains(SECRET), "{error}");
}

#[test]
fn kms_throttling_is_retried_with_back_off_and_an_unreachable_kms_burns_no_token() {
    let moto = Moto::start();
    let proxy = KmsProxy::start(&moto.endpoint);
    let issuing = create_key(&moto, "ECC_NIST_P256", "SIGN_VERIFY");
    let root = create_key(&moto, "ECC_NIST_P256", "SIGN_VERIFY");
    let dir = tempfile::tempdir().unwrap();
    // Back-off without jitter so its growth can be measured: 100, 200, 400 ms.
    let signer = signer_toml(&proxy.endpoint, Some(&issuing), "")
        + "initial_backoff = \"100ms\"\nretry_jitter = false\n";
    write_config(dir.path(), &kms_config(&signer));
    ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "aws-kms", "--root-key-id", &root],
    ));
    let ca_dir = dir.path().join("ca");
    let server = Server::start_in(dir, &env());
    let work = tempfile::tempdir().unwrap();

    // Three throttled Sign calls, then the fourth goes through.
    const THROTTLED: usize = 3;
    proxy.take_signs();
    proxy.throttle_next_signs(THROTTLED);
    let csr = Csr::new(work.path(), "t", KeyType::P256, "/CN=kms-throttled", &[]);
    let cert = work.path().join("t.pem");
    enroll_basic(&server, None, &csr, &cert);
    verify(&ca_dir, &cert);
    let signs = proxy.take_signs();
    assert_eq!(signs.len(), THROTTLED + 1, "{signs:?}");
    let gaps: Vec<Duration> = signs.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("Sign calls under throttling, gaps: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(80), "{gaps:?}");
    for pair in gaps.windows(2) {
        assert!(pair[1] > pair[0], "back-off grows: {gaps:?}");
    }

    // KMS out of reach: 503 within seconds, the reason logged, nothing
    // recorded, and the one-time token still good afterwards.
    let token = add_device(&server, "SN-KMS-AWAY");
    let device = Csr::new(work.path(), "a", KeyType::P256, "/CN=SN-KMS-AWAY", &[]);
    let certs_before = server.admin_env(&["certs", "list", "--all"], &env());
    proxy.refuse();
    let started = Instant::now();
    let response = enroll_token(&server, &device, "SN-KMS-AWAY", &token);
    let took = started.elapsed();
    assert_eq!(response.status, 503, "{}", response.text());
    eprintln!("KMS unreachable: 503 after {took:?}");
    assert!(took < Duration::from_secs(8), "503 after {took:?}");
    let log = server.log();
    assert!(
        log.contains("KMS signing failed; answering 503") && log.contains("KMS unreachable"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "no credential in the log");
    let show = server.admin_env(&["devices", "show", "SN-KMS-AWAY"], &env());
    assert!(show.contains("state:        unused"), "{show}");
    assert_eq!(
        server.admin_env(&["certs", "list", "--all"], &env()),
        certs_before,
        "nothing recorded"
    );

    proxy.restore();
    let response = enroll_token(&server, &device, "SN-KMS-AWAY", &token);
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        server.log()
    );
    let cert = work.path().join("a.pem");
    std::fs::write(&cert, pkcs7_to_pem(&response.body)).unwrap();
    verify(&ca_dir, &cert);
    let show = server.admin_env(&["devices", "show", "SN-KMS-AWAY"], &env());
    assert!(show.contains("state:        enrolled"), "{show}");
}

#[test]
fn kms_signatures_of_concurrent_enrollments_are_in_flight_together() {
    let moto = Moto::start();
    let proxy = KmsProxy::start(&moto.endpoint);
    let issuing = create_key(&moto, "ECC_NIST_P256", "SIGN_VERIFY");
    let root = create_key(&moto, "ECC_NIST_P256", "SIGN_VERIFY");
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &kms_config(&signer_toml(&proxy.endpoint, Some(&issuing), "")),
    );
    ok(est_server(
        dir.path(),
        &["ca", "init", "--signer", "aws-kms", "--root-key-id", &root],
    ));
    let ca_dir = dir.path().join("ca");
    let server = Server::start_in(dir, &env());
    let work = tempfile::tempdir().unwrap();
    const DEVICES: usize = 4;
    let csrs: Vec<Csr> = (0..DEVICES)
        .map(|i| {
            Csr::new(
                work.path(),
                &format!("c{i}"),
                KeyType::P256,
                &format!("/CN=kms-concurrent-{i}"),
                &[],
            )
        })
        .collect();
    // Every Sign takes 400 ms more (a distant region): one signer at a
    // time would need 4 × 400 ms for four enrollments.
    let delay = Duration::from_millis(400);
    proxy.delay_signs(delay);
    proxy.take_most_signs_in_flight();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, csr) in csrs.iter().enumerate() {
            let (server, work) = (&server, work.path());
            scope.spawn(move || {
                let cert = work.join(format!("c{i}.pem"));
                enroll_basic(server, None, csr, &cert);
            });
        }
    });
    let took = started.elapsed();
    let most = proxy.take_most_signs_in_flight();
    eprintln!("{DEVICES} enrollments with a {delay:?} Sign: {took:?}, {most} Sign calls in flight at once");
    assert_eq!(most, DEVICES, "all Sign calls were in flight together");
    assert!(took < delay * DEVICES as u32, "{took:?}");
    for i in 0..DEVICES {
        verify(&ca_dir, &work.path().join(format!("c{i}.pem")));
    }
}
