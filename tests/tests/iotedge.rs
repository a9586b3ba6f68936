//! Azure IoT Edge's production setup, request for request as aziot-certd
//! 1.6 sends them: a manufacturer bootstrap certificate, an EST identity
//! certificate (EC P-256, EKU clientAuth requested), a device identity
//! certificate (RSA-2048, no extension request, often the same subject) and
//! an Edge CA (RSA-2048, critical CA:TRUE pathlen 0, critical keyUsage) over
//! EST, each renewed on its own timer — always `simpleenroll`, `cacerts`
//! sent concurrently, Basic sent up front, the client chain sent whole.
//! Every step must answer exactly 200 and every certificate is verified
//! with openssl.

use std::path::{Path, PathBuf};

use est_e2e::*;

/// The server config the README's "Azure IoT Edge" section gives.
fn edge_config(device_validity: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
bootstrap_trust = @BOOTSTRAP@
[[users]]
name = "estuser"
password_hash = "{hash}"
[cas.edge]
dir = "edge-ca"
root_subject = "CN=Edge Root CA,O=Example"
issuing_subject = "CN=Edge Issuing CA,O=Example"
[profiles.device]
validity = "{device_validity}"
[profiles.edge-ca]
validity = "90d"
subordinate_ca = true
extended_key_usage = []
copy_san = []
key_algorithm = "rsa2048"
ca = "edge"
[enroll]
profile = "device"
auth = ["basic", "bootstrap-cert"]
[labels.edgeca]
profiles = ["edge-ca", "device"]
auth = ["basic", "bootstrap-cert", "issued-cert"]
bootstrap_subjects = ["{{cn}}", "aziot-edge CA {{cn}}"]
"#,
        hash = estpwd_hash()
    )
}

/// One IoT Edge device: its bootstrap credential and working directory.
struct Device<'a> {
    server: &'a Server,
    dir: PathBuf,
    name: String,
    /// Leaf + chain, and key, of the bootstrap certificate.
    bootstrap: (PathBuf, PathBuf),
    counter: std::cell::Cell<u32>,
}

/// What the three certificates are.
#[derive(Clone, Copy, Debug)]
enum Kind {
    EstIdentity,
    DeviceIdentity,
    EdgeCa,
}

/// An issued certificate as the device stores it: its own certificate
/// followed by the cacerts certificates (what aziot-certd writes), and its key.
#[derive(Clone, Debug)]
struct Issued {
    chain: PathBuf,
    key: PathBuf,
    serial: String,
}

impl<'a> Device<'a> {
    fn new(server: &'a Server, mfr: &ManufacturerCa, dir: &Path, name: &str) -> Self {
        let (cert, key) = mfr.issue(name);
        let chain = dir.join(format!("{name}-bootstrap-chain.pem"));
        std::fs::write(
            &chain,
            std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&mfr.cert).unwrap(),
        )
        .unwrap();
        Self {
            server,
            dir: dir.to_path_buf(),
            name: name.into(),
            bootstrap: (chain, key),
            counter: std::cell::Cell::new(0),
        }
    }

    /// A CSR shaped like aziot-certd's for `kind` with `subject`.
    fn csr(&self, kind: Kind, subject: &str) -> Csr {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        let name = format!("{}-{kind:?}-{n}", self.name);
        match kind {
            Kind::EstIdentity => Csr::new(
                &self.dir,
                &name,
                KeyType::P256,
                subject,
                &["extendedKeyUsage=clientAuth"],
            ),
            Kind::DeviceIdentity => Csr::new(&self.dir, &name, KeyType::Rsa(2048), subject, &[]),
            Kind::EdgeCa => Csr::new(
                &self.dir,
                &name,
                KeyType::Rsa(2048),
                subject,
                &[
                    "basicConstraints=critical,CA:TRUE,pathlen:0",
                    "keyUsage=critical,digitalSignature,keyCertSign",
                ],
            ),
        }
    }

    /// One issuance: `simpleenroll` and `cacerts` concurrently, with the
    /// same client certificate and the same Basic header sent up front.
    /// Returns both statuses and, on success, the stored certificate.
    fn issue(
        &self,
        label: Option<&str>,
        client: (&Path, &Path),
        csr: &Csr,
    ) -> (u16, u16, Option<Issued>) {
        let base = self.server.base(label);
        let data = format!("@{}", csr.b64.display());
        let (cert, key) = (
            client.0.display().to_string(),
            client.1.display().to_string(),
        );
        let basic = "Authorization: Basic ZXN0dXNlcjplc3Rwd2Q="; // estuser:estpwd
        let enroll_args = vec![
            "--http1.1".to_owned(),
            "--cert".into(),
            cert.clone(),
            "--key".into(),
            key.clone(),
            "-H".into(),
            basic.into(),
            "-H".into(),
            "Content-Type: application/pkcs10".into(),
            "-H".into(),
            "Content-Transfer-Encoding: base64".into(),
            "--data-binary".into(),
            data,
            format!("{base}/simpleenroll"),
        ];
        let cacerts_args = [
            "--http1.1".to_owned(),
            "--cert".into(),
            cert,
            "--key".into(),
            key,
            "-H".into(),
            basic.into(),
            format!("{base}/cacerts"),
        ];
        let (enroll, cacerts) = std::thread::scope(|scope| {
            let e = scope.spawn(|| {
                let args: Vec<&str> = enroll_args.iter().map(String::as_str).collect();
                self.server.curl(&args)
            });
            let c = scope.spawn(|| {
                let args: Vec<&str> = cacerts_args.iter().map(String::as_str).collect();
                self.server.curl(&args)
            });
            (e.join().unwrap(), c.join().unwrap())
        });
        if enroll.status != 200 || cacerts.status != 200 {
            eprintln!("enroll {}: {}", enroll.status, enroll.text());
            return (enroll.status, cacerts.status, None);
        }
        let own = pkcs7_to_pem(&enroll.body);
        assert_eq!(
            count_certs(&own),
            1,
            "the enroll response holds only the issued certificate"
        );
        let chain_pem = pkcs7_to_pem(&cacerts.body);
        let n = self.counter.get();
        let chain = self.dir.join(format!("{}-issued-{n}.pem", self.name));
        std::fs::write(&chain, own + &chain_pem).unwrap();
        let issued = Issued {
            serial: serial_of(&chain),
            chain,
            key: csr.key.clone(),
        };
        // Its key is the one the device asked for.
        assert_eq!(
            openssl(&[
                "x509",
                "-in",
                &issued.chain.display().to_string(),
                "-noout",
                "-pubkey"
            ]),
            openssl(&["pkey", "-in", &csr.key.display().to_string(), "-pubout"])
        );
        (enroll.status, cacerts.status, Some(issued))
    }

    /// `issue` that must answer exactly 200 twice.
    fn must_issue(
        &self,
        label: Option<&str>,
        client: (&Path, &Path),
        kind: Kind,
        subject: &str,
    ) -> Issued {
        let csr = self.csr(kind, subject);
        let (enroll, cacerts, issued) = self.issue(label, client, &csr);
        assert_eq!(
            (enroll, cacerts),
            (200, 200),
            "{kind:?} {subject} on {label:?}"
        );
        let issued = issued.unwrap();
        verify(self.server, &issued, kind);
        issued
    }

    fn bootstrap(&self) -> (&Path, &Path) {
        (&self.bootstrap.0, &self.bootstrap.1)
    }
}

/// The certificates of a PEM text, each as its own PEM block.
fn pem_blocks(text: &str) -> Vec<String> {
    let end = "-----END CERTIFICATE-----";
    text.split_inclusive(end)
        .filter_map(|piece| {
            piece
                .find("-----BEGIN CERTIFICATE-----")
                .map(|at| format!("{}\n", &piece[at..]))
        })
        .collect()
}

/// `openssl verify` of the certificate against the hierarchy it must
/// chain to (the device CA, or the Edge CA hierarchy for an Edge CA), and
/// the extensions each kind must (not) have.
fn verify(server: &Server, issued: &Issued, kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    let pem = std::fs::read_to_string(&issued.chain).unwrap();
    std::fs::write(&leaf, pem_blocks(&pem).remove(0)).unwrap();
    let hierarchy = match kind {
        Kind::EdgeCa => "edge-ca",
        _ => "ca",
    };
    let root = server.path(&format!("{hierarchy}/root-ca.pem"));
    let issuing = server.path(&format!("{hierarchy}/issuing-ca.pem"));
    let mut args = vec![
        "verify".to_owned(),
        "-CAfile".into(),
        root.display().to_string(),
        "-untrusted".into(),
        issuing.display().to_string(),
    ];
    if matches!(kind, Kind::EstIdentity | Kind::DeviceIdentity) {
        args.extend(["-purpose".into(), "sslclient".into()]);
    }
    args.push(leaf.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = String::from_utf8(openssl(&args)).unwrap();
    assert!(out.contains(": OK"), "{out}");
    let text = x509(&leaf, &["-text"]);
    match kind {
        Kind::EdgeCa => {
            assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
            assert!(text.contains("Certificate Sign"), "{text}");
        }
        _ => {
            assert!(text.contains("CA:FALSE"), "{text}");
            assert!(text.contains("TLS Web Client Authentication"), "{text}");
        }
    }
}

/// Starts the README's server with a manufacturer CA and one registered
/// device allowed an Edge CA.
fn setup(work: &Path, device_validity: &str, devices: &[&str]) -> (Server, ManufacturerCa) {
    let mfr = ManufacturerCa::new(work, "mfr");
    let server = Server::start_with(&edge_config(device_validity), Some(&mfr.cert));
    for device in devices {
        server.admin(&["devices", "add", device, "--edge-ca"]);
    }
    (server, mfr)
}

#[test]
fn production_setup_with_every_renewal_in_every_order() {
    let work = tempfile::tempdir().unwrap();
    let (server, mfr) = setup(work.path(), "30d", &["edge-dev-1"]);
    let device = Device::new(&server, &mfr, work.path(), "edge-dev-1");

    // 1. EST identity certificate, authenticated by the bootstrap certificate.
    let mut est = device.must_issue(
        None,
        device.bootstrap(),
        Kind::EstIdentity,
        "/CN=edge-dev-1",
    );
    // 2. Device identity: same URL, same subject, authenticated by the EST identity.
    let mut id = device.must_issue(
        None,
        (&est.chain, &est.key),
        Kind::DeviceIdentity,
        "/CN=edge-dev-1",
    );
    // Another lineage: the EST identity certificate is still live.
    assert_eq!(state_of(&server, &est.serial), "active");
    // 3. Edge CA on its own URL, authenticated by the EST identity.
    let mut edge = device.must_issue(
        Some("edgeca"),
        (&est.chain, &est.key),
        Kind::EdgeCa,
        "/CN=aziot-edge CA edge-dev-1",
    );
    for cert in [&est, &id, &edge] {
        assert_eq!(state_of(&server, &cert.serial), "active");
    }

    // 4. Three renewal timers firing in every order.
    let orders = [
        [Kind::EstIdentity, Kind::DeviceIdentity, Kind::EdgeCa],
        [Kind::EstIdentity, Kind::EdgeCa, Kind::DeviceIdentity],
        [Kind::DeviceIdentity, Kind::EstIdentity, Kind::EdgeCa],
        [Kind::DeviceIdentity, Kind::EdgeCa, Kind::EstIdentity],
        [Kind::EdgeCa, Kind::EstIdentity, Kind::DeviceIdentity],
        [Kind::EdgeCa, Kind::DeviceIdentity, Kind::EstIdentity],
    ];
    for order in orders {
        for kind in order {
            let client = (est.chain.clone(), est.key.clone());
            let client = (client.0.as_path(), client.1.as_path());
            let (label, subject, old) = match kind {
                Kind::EstIdentity => (None, "/CN=edge-dev-1", &mut est),
                Kind::DeviceIdentity => (None, "/CN=edge-dev-1", &mut id),
                Kind::EdgeCa => (Some("edgeca"), "/CN=aziot-edge CA edge-dev-1", &mut edge),
            };
            let new = device.must_issue(label, client, kind, subject);
            // The renewal replaced its own lineage's certificate, and only it.
            assert!(
                state_of(&server, &old.serial).starts_with("superseded"),
                "{order:?} {kind:?}"
            );
            let listing = server.admin(&["certs", "list"]);
            let line = listing
                .lines()
                .find(|l| l.starts_with(&new.serial))
                .unwrap();
            assert!(
                line.contains(&format!("predecessor={}", old.serial)),
                "{line}"
            );
            *old = new;
            for live in [&est, &id, &edge] {
                assert_eq!(
                    state_of(&server, &live.serial),
                    "active",
                    "{order:?} {kind:?}"
                );
            }
        }
    }
    // A renewed-away EST identity certificate, once its successor was used,
    // authenticates nothing more.
    let history = server.admin(&["devices", "show", "edge-dev-1"]);
    let superseded_est = history
        .lines()
        .filter(|l| l.contains("superseded") && l.contains("subject=CN=edge-dev-1"))
        .count();
    assert!(superseded_est >= 12, "{history}");
    assert_eq!(
        history.matches("  active").count(),
        3,
        "three live lineages:\n{history}"
    );
    server.assert_healthy();
}

#[test]
fn fallback_to_the_bootstrap_certificate_after_the_est_identity_expired() {
    let work = tempfile::tempdir().unwrap();
    // Device certificates end 10 s after issuance here: the EST identity
    // expires during the test.
    let (server, mfr) = setup(work.path(), "10s", &["edge-dev-2"]);
    let device = Device::new(&server, &mfr, work.path(), "edge-dev-2");
    let est = device.must_issue(
        None,
        device.bootstrap(),
        Kind::EstIdentity,
        "/CN=edge-dev-2",
    );
    let id = device.must_issue(
        None,
        (&est.chain, &est.key),
        Kind::DeviceIdentity,
        "/CN=edge-dev-2",
    );
    std::thread::sleep(std::time::Duration::from_secs(11));
    // The expired EST identity is refused in the handshake, and the server says why.
    let csr = device.csr(Kind::DeviceIdentity, "/CN=edge-dev-2");
    let (status, _, _) = device.issue(None, (&est.chain, &est.key), &csr);
    assert_eq!(
        status, 0,
        "an expired client certificate fails the TLS handshake"
    );
    let log = server.log();
    assert!(
        log.contains("client certificate refused in the TLS handshake") && log.contains("Expired"),
        "{log}"
    );
    // Back to the bootstrap certificate: a new EST identity of the same lineage.
    let est2 = device.must_issue(
        None,
        device.bootstrap(),
        Kind::EstIdentity,
        "/CN=edge-dev-2",
    );
    assert!(state_of(&server, &est.serial).starts_with("superseded"));
    let id2 = device.must_issue(
        None,
        (&est2.chain, &est2.key),
        Kind::DeviceIdentity,
        "/CN=edge-dev-2",
    );
    assert!(state_of(&server, &id.serial).starts_with("superseded"));
    assert_eq!(state_of(&server, &id2.serial), "active");
    let edge = device.must_issue(
        Some("edgeca"),
        (&est2.chain, &est2.key),
        Kind::EdgeCa,
        "/CN=aziot-edge CA edge-dev-2",
    );
    assert_eq!(state_of(&server, &edge.serial), "active");
}

#[test]
fn edge_ca_only_setup_takes_the_est_identity_subject_from_the_edge_ca() {
    let work = tempfile::tempdir().unwrap();
    let (server, mfr) = setup(work.path(), "30d", &["edge-dev-3"]);
    let device = Device::new(&server, &mfr, work.path(), "edge-dev-3");
    let subject = "/CN=aziot-edge CA edge-dev-3";
    // The EST identity certificate, requested on the Edge CA URL with the
    // Edge CA's subject: an end entity from the device CA.
    let est = device.must_issue(
        Some("edgeca"),
        device.bootstrap(),
        Kind::EstIdentity,
        subject,
    );
    let edge = device.must_issue(
        Some("edgeca"),
        (&est.chain, &est.key),
        Kind::EdgeCa,
        subject,
    );
    // Renewals, EST identity first and last.
    let est2 = device.must_issue(
        Some("edgeca"),
        (&est.chain, &est.key),
        Kind::EstIdentity,
        subject,
    );
    let edge2 = device.must_issue(
        Some("edgeca"),
        (&est2.chain, &est2.key),
        Kind::EdgeCa,
        subject,
    );
    let est3 = device.must_issue(
        Some("edgeca"),
        (&est2.chain, &est2.key),
        Kind::EstIdentity,
        subject,
    );
    for old in [&est, &edge, &est2] {
        assert!(state_of(&server, &old.serial).starts_with("superseded"));
    }
    for live in [&edge2, &est3] {
        assert_eq!(state_of(&server, &live.serial), "active");
    }
    // The EST identity chains to the device CA, the Edge CA to its own hierarchy.
    let device_root = std::fs::read_to_string(server.path("ca/root-ca.pem")).unwrap();
    let edge_root = std::fs::read_to_string(server.path("edge-ca/root-ca.pem")).unwrap();
    let issuer = x509(&edge2.chain, &["-issuer"]);
    assert!(issuer.contains("Edge"), "{issuer}");
    assert_ne!(device_root, edge_root);
}

#[test]
fn a_certificate_minted_under_an_edge_ca_authenticates_nowhere() {
    let work = tempfile::tempdir().unwrap();
    let (server, mfr) = setup(work.path(), "30d", &["edge-dev-4"]);
    let device = Device::new(&server, &mfr, work.path(), "edge-dev-4");
    let est = device.must_issue(
        None,
        device.bootstrap(),
        Kind::EstIdentity,
        "/CN=edge-dev-4",
    );
    let edge = device.must_issue(
        Some("edgeca"),
        (&est.chain, &est.key),
        Kind::EdgeCa,
        "/CN=aziot-edge CA edge-dev-4",
    );
    // The Edge CA mints a client certificate for the orchestrator's name.
    let dir = work.path();
    let edge_ca_cert = dir.join("edge-ca-only.pem");
    let first = pem_blocks(&std::fs::read_to_string(&edge.chain).unwrap()).remove(0);
    std::fs::write(&edge_ca_cert, first).unwrap();
    let forged_csr = Csr::new(dir, "forged", KeyType::P256, "/CN=est-server-rotation", &[]);
    let ext = dir.join("forged.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let forged = dir.join("forged.pem");
    openssl(&[
        "x509",
        "-req",
        "-inform",
        "DER",
        "-in",
        &forged_csr.der.display().to_string(),
        "-CA",
        &edge_ca_cert.display().to_string(),
        "-CAkey",
        &edge.key.display().to_string(),
        "-set_serial",
        "0x42",
        "-days",
        "1",
        "-extfile",
        &ext.display().to_string(),
        "-out",
        &forged.display().to_string(),
    ]);
    let forged_chain = dir.join("forged-chain.pem");
    std::fs::write(
        &forged_chain,
        std::fs::read_to_string(&forged).unwrap() + &std::fs::read_to_string(&edge.chain).unwrap(),
    )
    .unwrap();
    // openssl agrees it does not chain to the device CA.
    let device_chain = dir.join("device-chain.pem");
    std::fs::write(
        &device_chain,
        std::fs::read_to_string(server.path("ca/root-ca.pem")).unwrap()
            + &std::fs::read_to_string(server.path("ca/issuing-ca.pem")).unwrap(),
    )
    .unwrap();
    let verdict = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&device_chain)
        .arg("-untrusted")
        .arg(&edge.chain)
        .arg(&forged)
        .output()
        .unwrap();
    assert!(!verdict.status.success());
    // This server's handshake refuses it…
    let csr = device.csr(Kind::DeviceIdentity, "/CN=est-server-rotation");
    let (status, _, _) = device.issue(None, (&forged_chain, &forged_csr.key), &csr);
    assert_eq!(status, 0, "the handshake must fail");
    assert!(
        server
            .log()
            .contains("client certificate refused in the TLS handshake"),
        "{}",
        server.log()
    );
    // The Edge CA itself is no client certificate either, and the log says why.
    let (status, _, _) = device.issue(None, (&edge.chain, &edge.key), &csr);
    assert_eq!(
        status, 0,
        "a CA used as an end entity must fail the handshake"
    );
    assert!(
        server.log().contains("CaUsedAsEndEntity"),
        "{}",
        server.log()
    );
    // …and so does the README's Mosquitto, which trusts the device CA only.
    let port = mosquitto::Mosquitto::free_port();
    let broker = mosquitto::Mosquitto::start(&server, port);
    assert!(
        !mosquitto::publish_as(
            port,
            "est-server-rotation",
            &forged_chain,
            &forged_csr.key,
            &server.ca_pem(),
            "management/topic/edge-dev-4/crt_res",
            b"{}",
        ),
        "{}",
        broker.log()
    );
    // The genuine EST identity certificate does connect (the broker works).
    assert!(mosquitto::publish_as(
        port,
        "edge-dev-4",
        &est.chain,
        &est.key,
        &server.ca_pem(),
        "management/topic/edge-dev-4/crt_ack",
        b"{}",
    ));
}
