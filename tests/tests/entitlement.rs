//! No credential buys more than its entitlement, tried against the shipped
//! example/dev config: a one-time token cannot buy a CA or another device's
//! name, reserved names stay reserved whatever their encoding, and subjects
//! and SubjectAltNames are rebuilt from validated attributes.

use std::path::{Path, PathBuf};

use der::asn1::{Any, Ia5String, SetOfVec};
use der::Tag;
use est_e2e::*;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};

/// The example config as shipped (what `serve --dev` writes), with the
/// test's bootstrap trust.
fn shipped_config(bootstrap: Option<&Path>) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../est-server/est-server.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.replace("@HASH@", estpwd_hash());
    match bootstrap {
        Some(ca) => text.replacen(
            "bootstrap_trust = []",
            &format!("bootstrap_trust = [\"{}\"]", ca.display()),
            1,
        ),
        None => text,
    }
}

fn token_of(server: &Server, id: &str) -> String {
    let line = server.admin(&["devices", "add", id]);
    line.trim().rsplit(' ').next().unwrap().to_owned()
}

fn demo_token(server: &Server) -> String {
    std::fs::read_to_string(server.path("demo-device.token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn with_token(id: &str, token: &str) -> [String; 2] {
    ["-u".into(), format!("{id}:{token}")]
}

fn post(server: &Server, label: Option<&str>, b64: &Path, extra: &[String]) -> HttpResponse {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    post_csr(server, label, "simpleenroll", b64, &extra)
}

/// A CSR whose subject is built attribute by attribute (tag, bytes), with
/// optional SubjectAltNames: what openssl will not make.
fn raw_csr(dir: &Path, name: &str, attributes: &[(Tag, &[u8])], sans: Vec<GeneralName>) -> PathBuf {
    let rdns = attributes
        .iter()
        .map(|(tag, value)| {
            RelativeDistinguishedName(
                SetOfVec::try_from(vec![AttributeTypeAndValue {
                    oid: const_oid::db::rfc4519::COMMON_NAME,
                    value: Any::new(*tag, value.to_vec()).unwrap(),
                }])
                .unwrap(),
            )
        })
        .collect();
    let key = est_wire::keys::SigningKey::generate(est_wire::keys::KeyAlgorithm::EcP256).unwrap();
    let spec = est_wire::csr::CsrSpec {
        subject: RdnSequence(rdns),
        subject_alt_names: sans,
        ..Default::default()
    };
    let der = est_wire::csr::build(&spec, &key).unwrap();
    let path = dir.join(format!("{name}.b64"));
    std::fs::write(&path, est_wire::body::encode(&der)).unwrap();
    path
}

fn edge_ca_csr(dir: &Path, name: &str, subject: &str) -> Csr {
    Csr::new(
        dir,
        name,
        KeyType::Rsa(2048),
        subject,
        &[
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "keyUsage=critical,digitalSignature,keyCertSign",
        ],
    )
}

fn certificate_count(server: &Server) -> usize {
    server.admin(&["certs", "list"]).lines().count()
}

#[test]
fn a_one_time_token_buys_one_end_entity_certificate_and_nothing_more() {
    let server = Server::start_with(&shipped_config(None), None);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let token = demo_token(&server);
    let csr = Csr::new(dir, "t", KeyType::P256, "/CN=demo-device-001", &[]);
    let response = post(
        &server,
        None,
        &csr.b64,
        &with_token("demo-device-001", &token),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let cert = dir.join("t.pem");
    std::fs::write(&cert, pkcs7_to_pem(&response.body)).unwrap();
    let (c, k) = (cert.display().to_string(), csr.key.display().to_string());
    let mtls = ["--cert".to_owned(), c, "--key".into(), k];
    let before = certificate_count(&server);

    // With that certificate: an Edge CA, for its own derived name or another …
    for subject in [
        "/CN=aziot-edge CA demo-device-001",
        "/CN=est-server-rotation",
        "/CN=another-device",
    ] {
        let ca = edge_ca_csr(dir, "ca", subject);
        let response = post(&server, Some("edgeca"), &ca.b64, &mtls);
        assert_eq!(response.status, 403, "{subject}: {}", response.text());
    }
    let ca = edge_ca_csr(dir, "ca", "/CN=aziot-edge CA demo-device-001");
    let response = post(&server, Some("edgeca"), &ca.b64, &mtls);
    assert!(
        response.text().contains("may not obtain CA certificates"),
        "{}",
        response.text()
    );
    // … the orchestrator's name or another device's, as an end entity.
    for subject in ["/CN=est-server-rotation", "/CN=another-device"] {
        let other = Csr::new(dir, "o", KeyType::P256, subject, &[]);
        for label in [None, Some("edgeca")] {
            let response = post(&server, label, &other.b64, &mtls);
            assert_eq!(
                response.status,
                403,
                "{subject} {label:?}: {}",
                response.text()
            );
        }
    }
    // The token itself, once more.
    let again = Csr::new(dir, "again", KeyType::P256, "/CN=demo-device-001", &[]);
    let response = post(
        &server,
        None,
        &again.b64,
        &with_token("demo-device-001", &token),
    );
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(
        certificate_count(&server),
        before,
        "nothing more was issued"
    );

    // The demo user may (the Azure tutorial's Basic-only setup), from the
    // Edge hierarchy, with a name that fits the template.
    let ca = edge_ca_csr(dir, "user-ca", "/CN=aziot-edge CA tutorial-device");
    let response = post(
        &server,
        Some("edgeca"),
        &ca.b64,
        &["-u".into(), "estuser:estpwd".into()],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let pem = dir.join("user-ca.pem");
    std::fs::write(&pem, pkcs7_to_pem(&response.body)).unwrap();
    assert!(x509(&pem, &["-text"]).contains("CA:TRUE, pathlen:0"));
    assert!(
        x509(&pem, &["-issuer"]).contains("Edge"),
        "{}",
        x509(&pem, &["-issuer"])
    );
    let ca = edge_ca_csr(dir, "user-ca2", "/CN=est-server-rotation");
    let response = post(
        &server,
        Some("edgeca"),
        &ca.b64,
        &["-u".into(), "estuser:estpwd".into()],
    );
    assert_eq!(response.status, 403, "{}", response.text());
}

#[test]
fn subjects_are_rebuilt_and_reserved_names_stay_reserved() {
    let server = Server::start_with(&shipped_config(None), None);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let basic = ["-u".to_owned(), "estuser:estpwd".into()];
    let before = certificate_count(&server);

    // The orchestrator's name in any case and any string type.
    for (name, tag, value) in [
        ("numeric", Tag::NumericString, &b"est-server-rotation"[..]),
        ("upper", Tag::Utf8String, b"EST-Server-Rotation"),
        ("ia5", Tag::Ia5String, b"est-server-rotation "),
        ("teletex", Tag::TeletexString, b"est-server-rotation"),
    ] {
        let csr = raw_csr(dir, name, &[(tag, value)], vec![]);
        let response = post(&server, None, &csr, &basic);
        assert_eq!(response.status, 403, "{name}: {}", response.text());
        assert!(response.text().contains("reserved"), "{}", response.text());
    }
    // A CN that is no text, a NUL, two CNs, a NUL inside a dNSName.
    let nul_dns = GeneralName::DnsName(Ia5String::new("ok.example\0.evil.example").unwrap());
    for (name, attributes, sans, wanted) in [
        (
            "integer",
            vec![(Tag::Integer, &[0x05u8][..])],
            vec![],
            "INTEGER",
        ),
        (
            "nul",
            vec![(Tag::NumericString, &b"12\x0034"[..])],
            vec![],
            "control",
        ),
        (
            "two",
            vec![
                (Tag::Utf8String, &b"SN-2"[..]),
                (Tag::Utf8String, &b"demo-device-001"[..]),
            ],
            vec![],
            "more than one common name",
        ),
        (
            "dns",
            vec![(Tag::Utf8String, &b"dev-nul"[..])],
            vec![nul_dns],
            "dNSName",
        ),
    ] {
        let csr = raw_csr(dir, name, &attributes, sans);
        let response = post(&server, None, &csr, &basic);
        assert_eq!(response.status, 400, "{name}: {}", response.text());
        assert!(
            response.text().contains(wanted),
            "{name}: {}",
            response.text()
        );
    }
    assert_eq!(certificate_count(&server), before, "nothing was issued");

    // What is issued is re-encoded: a NumericString CN comes back printable.
    let csr = raw_csr(dir, "digits", &[(Tag::NumericString, b"4711")], vec![]);
    let response = post(&server, None, &csr, &basic);
    assert_eq!(response.status, 200, "{}", response.text());
    let pem = dir.join("digits.pem");
    std::fs::write(&pem, pkcs7_to_pem(&response.body)).unwrap();
    let parsed =
        String::from_utf8(openssl(&["asn1parse", "-in", &pem.display().to_string()])).unwrap();
    assert!(
        parsed
            .lines()
            .any(|l| l.contains("PRINTABLESTRING") && l.ends_with(":4711")),
        "{parsed}"
    );
    assert!(!parsed.contains("NUMERICSTRING"), "{parsed}");
}

#[test]
fn token_and_bootstrap_devices_get_only_their_own_name() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mfr = ManufacturerCa::new(dir, "factory");
    let server = Server::start_with(&shipped_config(Some(&mfr.cert)), None);
    let sn2 = token_of(&server, "SN-2");
    let sn3 = token_of(&server, "SN-3");
    let before = certificate_count(&server);

    // Two CNs, the last naming another device (several libraries read the last).
    let two = raw_csr(
        dir,
        "two",
        &[
            (Tag::Utf8String, b"SN-2"),
            (Tag::Utf8String, b"demo-device-001"),
        ],
        vec![],
    );
    let response = post(&server, None, &two, &with_token("SN-2", &sn2));
    assert_eq!(response.status, 400, "{}", response.text());
    // SANs naming another device.
    let sans = Csr::new(
        dir,
        "sans",
        KeyType::P256,
        "/CN=SN-3",
        &["subjectAltName=DNS:demo-device-001,URI:urn:device:demo-device-001"],
    );
    let response = post(&server, None, &sans.b64, &with_token("SN-3", &sn3));
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response.text().contains("subjectAltName"),
        "{}",
        response.text()
    );
    // The same through the JSON façade.
    let url = server.url("/cvm/v1/certificates");
    for (serial, token, csr_file) in [
        ("SN-2", &sn2, two.clone()),
        ("SN-3", &sn3, sans.b64.clone()),
    ] {
        let body = serde_json::json!({
            "serial": serial,
            "token": token,
            "csr": std::fs::read_to_string(&csr_file).unwrap(),
        })
        .to_string();
        let response = server.curl(&[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &url,
        ]);
        assert!(
            (400..500).contains(&response.status),
            "{serial}: {} {}",
            response.status,
            response.text()
        );
    }
    // A bootstrap certificate: its own name, no SANs.
    let (boot, boot_key) = mfr.issue("boot-dev");
    let (b, k) = (boot.display().to_string(), boot_key.display().to_string());
    let mtls = ["--cert".to_owned(), b, "--key".into(), k];
    for (subject, ext) in [
        ("/CN=demo-device-001", None),
        ("/CN=boot-dev", Some("subjectAltName=DNS:demo-device-001")),
        ("/CN=aziot-edge CA boot-dev", None),
    ] {
        let ext: Vec<&str> = ext.into_iter().collect();
        let csr = Csr::new(dir, "b", KeyType::P256, subject, &ext);
        let response = post(&server, None, &csr.b64, &mtls);
        assert_eq!(response.status, 403, "{subject}: {}", response.text());
    }
    assert_eq!(certificate_count(&server), before, "nothing was issued");
    // Its own name works; so does the Edge CA URL's second subject.
    let own = Csr::new(dir, "own", KeyType::P256, "/CN=boot-dev", &[]);
    assert_eq!(post(&server, None, &own.b64, &mtls).status, 200);
    let edge_subject = Csr::new(dir, "es", KeyType::P256, "/CN=aziot-edge CA boot-dev", &[]);
    assert_eq!(
        post(&server, Some("edgeca"), &edge_subject.b64, &mtls).status,
        200
    );
    // But not a CA: boot-dev is not allowed one.
    let ca = edge_ca_csr(dir, "bca", "/CN=aziot-edge CA boot-dev");
    let response = post(&server, Some("edgeca"), &ca.b64, &mtls);
    assert_eq!(response.status, 403, "{}", response.text());
}

#[test]
fn config_refuses_a_subordinate_ca_profile_on_the_client_authentication_ca() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("c.toml");
    let text = shipped_config(None).replace("ca = \"edge\"\n", "");
    std::fs::write(&config, text).unwrap();
    let output = std::process::Command::new(server_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("profiles.edge-ca")
            && stderr.contains("not trusted for client authentication"),
        "{stderr}"
    );
}
