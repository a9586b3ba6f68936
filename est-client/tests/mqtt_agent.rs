//! `est-client run` with an `[mqtt]` section against a real Mosquitto broker
//! (mTLS, throwaway CAs made with the `openssl` CLI). The test plays the
//! server's orchestrator with rumqttc.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use est_client::transport::{client_config, read_certs, read_key, ClientIdentity, ServerTrust};
use est_wire::rotation::{
    CertificateAck, CertificateError, CertificateResponse, CsrRequest, CsrResponse, Step, Topics,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

const CLIENT_ID: &str = "SN-1";
const OLD_SERIAL: &str = "1001";
/// Generous: a slow, busy 2-core CI machine.
const WAIT: Duration = Duration::from_secs(90);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl_stdout(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// An EC P-256 key `name.key` and a certificate `name.pem` for `cn`, signed
/// by `ca` (self-signed when `None`) with the extensions in `ext`.
fn issue(dir: &Path, name: &str, cn: &str, ca: Option<&str>, serial: &str, ext: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ],
    );
    sign(dir, &csr, ca, serial, &ext_file, &pem, Some(&key));
}

/// Signs `csr` with CA `ca` (or self-signs with `self_key`).
fn sign(
    dir: &Path,
    csr: &str,
    ca: Option<&str>,
    serial: &str,
    ext_file: &str,
    out: &str,
    self_key: Option<&str>,
) {
    let mut args: Vec<String> = ["x509", "-req", "-in", csr, "-days", "3650"]
        .map(String::from)
        .to_vec();
    match ca {
        Some(ca) => args.extend([
            "-CA".into(),
            format!("{ca}.pem"),
            "-CAkey".into(),
            format!("{ca}.key"),
        ]),
        None => args.extend(["-signkey".into(), self_key.unwrap().into()]),
    }
    args.extend([
        "-set_serial".into(),
        format!("0x{serial}"),
        "-extfile".into(),
        ext_file.into(),
        "-out".into(),
        out.into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(dir, &args);
}

const CA_EXT: &str =
    "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n";
const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
const SERVER_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n";

/// Kills the child when dropped (also when the test panics).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    port: u16,
    _broker: Killed,
    agent: Killed,
    log: Arc<Mutex<String>>,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls until the agent's log holds `n` occurrences of `needle`.
    fn wait_for_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.logs().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "agent never logged `{needle}` ({n}x); log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CAs, broker, device (rotate_key = true) and orchestrator credentials;
/// Mosquitto trusting only `ca`; `est-client run` trusting `ca` and
/// `ca-device-only` (which the broker does not accept).
fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    issue(d, "ca", "Test Root CA", None, "01", CA_EXT);
    issue(d, "ca-untrusted", "Untrusted CA", None, "02", CA_EXT);
    issue(d, "ca-device-only", "Device-only CA", None, "03", CA_EXT);
    issue(d, "broker", "broker", Some("ca"), "10", SERVER_EXT);
    issue(d, "device", CLIENT_ID, Some("ca"), OLD_SERIAL, CLIENT_EXT);
    issue(
        d,
        "orchestrator",
        "orchestrator",
        Some("ca"),
        "11",
        CLIENT_EXT,
    );
    std::fs::write(d.join("client.ext"), CLIENT_EXT).unwrap();

    let port = free_port();
    std::fs::write(
        d.join("mosquitto.conf"),
        format!(
            "user root\npersistence false\nlog_dest stderr\nlistener {port} 127.0.0.1\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\n\
             use_identity_as_username true\n",
            ca = d.join("ca.pem").display(),
            cert = d.join("broker.pem").display(),
            key = d.join("broker.key").display(),
        ),
    )
    .unwrap();
    let broker = Killed(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(d.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed"),
    );
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let unused = free_port();
    std::fs::write(
        d.join("renew.toml"),
        format!(
            r#"server = "https://127.0.0.1:{unused}"
trust = ["ca.pem", "ca-device-only.pem"]
cert = "device.pem"
key = "device.key"

[auto_renew]
threshold = "99%"
retry = "1h"
rotate_key = true

[mqtt]
broker = "127.0.0.1:{port}"
broker_ca = "ca.pem"
keep_alive = "30s"
"#
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_est-client"))
        .args(["run", "--config"])
        .arg(d.join("renew.toml"))
        .env("EST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let fixture = Fixture {
        dir,
        port,
        _broker: broker,
        agent: Killed(child),
        log,
    };
    fixture.wait_for_log("subscribed to the rotation topics", 1);
    fixture
}

/// The test's side of the protocol.
struct Orchestrator {
    client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    topics: Topics,
}

impl Orchestrator {
    async fn connect(f: &Fixture) -> Self {
        let config = client_config(
            ServerTrust::Anchors(read_certs(&f.path("ca.pem")).unwrap()),
            Some(ClientIdentity {
                chain: read_certs(&f.path("orchestrator.pem")).unwrap(),
                key: read_key(&f.path("orchestrator.key")).unwrap(),
            }),
        )
        .unwrap();
        let mut config = (*config).clone();
        config.alpn_protocols.clear();
        let mut options = MqttOptions::new("orchestrator", "127.0.0.1", f.port);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
        let (client, mut events) = AsyncClient::new(options, 16);
        let topics = Topics::default();
        for step in [Step::CsrRes, Step::CrtAck, Step::CrtErr] {
            client
                .subscribe(topics.all_clients(step), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let (tx, inbox) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic, p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        for _ in 0..3 {
            tokio::time::timeout(WAIT, subscribed.recv())
                .await
                .expect("orchestrator subscribed");
        }
        Self {
            client,
            inbox,
            topics,
        }
    }

    async fn send(&self, step: Step, payload: &impl serde::Serialize) {
        self.client
            .publish(
                self.topics.topic(CLIENT_ID, step),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(payload).unwrap(),
            )
            .await
            .unwrap();
    }

    /// The next message from the device, as (step, payload).
    async fn next(&mut self, f: &Fixture) -> (Step, Vec<u8>) {
        let (topic, payload) = tokio::time::timeout(WAIT, self.inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no message from the device; agent log:\n{}", f.logs()))
            .unwrap();
        let (id, step) = self.topics.parse(&topic).unwrap();
        assert_eq!(id, CLIENT_ID);
        (step, payload)
    }

    async fn expect<T: serde::de::DeserializeOwned>(&mut self, f: &Fixture, want: Step) -> T {
        let (step, payload) = self.next(f).await;
        assert_eq!(
            step,
            want,
            "unexpected {step:?}: {}\nagent log:\n{}",
            String::from_utf8_lossy(&payload),
            f.logs()
        );
        serde_json::from_slice(&payload).unwrap()
    }

    /// csr_req → csr_res; returns the CSR file name.
    async fn request_csr(&mut self, f: &Fixture, name: &str) -> String {
        self.send(
            Step::CsrReq,
            &CsrRequest {
                serial: OLD_SERIAL.into(),
                not_after: "2035-01-01T00:00:00Z".into(),
            },
        )
        .await;
        let response: CsrResponse = self.expect(f, Step::CsrRes).await;
        assert!(response
            .csr
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let file = format!("{name}.csr");
        std::fs::write(f.path(&file), &response.csr).unwrap();
        // Signature good, subject kept.
        let text = openssl_stdout(
            f.dir.path(),
            &["req", "-in", &file, "-noout", "-verify", "-subject"],
        );
        assert!(text.contains(&format!("CN = {CLIENT_ID}")), "{text}");
        file
    }

    async fn deliver(&self, f: &Fixture, cert: &str, ca: &str) {
        self.send(
            Step::CrtRes,
            &CertificateResponse {
                certificate_pem: std::fs::read_to_string(f.path(cert)).unwrap(),
                ca_pem: std::fs::read_to_string(f.path(ca)).unwrap(),
            },
        )
        .await;
    }
}

fn public_key_of_cert(f: &Fixture, cert: &str) -> String {
    openssl_stdout(f.dir.path(), &["x509", "-in", cert, "-noout", "-pubkey"])
}

fn public_key_of_key(f: &Fixture, key: &str) -> String {
    openssl_stdout(f.dir.path(), &["pkey", "-in", key, "-pubout"])
}

fn der_of(path: &Path) -> Vec<u8> {
    read_certs(path).unwrap().remove(0).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_installs_the_new_pair_and_acknowledges_on_the_new_connection() {
    let mut f = start();
    let mut orchestrator = Orchestrator::connect(&f).await;
    let old_key = std::fs::read_to_string(f.path("device.key")).unwrap();

    let csr = orchestrator.request_csr(&f, "rotate").await;
    // The new key waits in device.key.pending (0600) until installed.
    use std::os::unix::fs::PermissionsExt;
    let pending = f.path("device.key.pending");
    assert_eq!(
        std::fs::metadata(&pending).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_ne!(
        public_key_of_key(&f, "device.key.pending"),
        public_key_of_key(&f, "device.key")
    );

    sign(
        f.dir.path(),
        &csr,
        Some("ca"),
        "2002",
        "client.ext",
        "new.pem",
        None,
    );
    orchestrator.deliver(&f, "new.pem", "ca.pem").await;
    let ack: CertificateAck = orchestrator.expect(&f, Step::CrtAck).await;
    assert_eq!(ack.serial, "2002");

    // The new pair is installed and belongs together; the key is new.
    assert_eq!(der_of(&f.path("device.pem")), der_of(&f.path("new.pem")));
    assert_eq!(
        public_key_of_cert(&f, "device.pem"),
        public_key_of_key(&f, "device.key")
    );
    assert_ne!(
        std::fs::read_to_string(f.path("device.key")).unwrap(),
        old_key
    );
    assert!(!pending.exists());
    // The acknowledgement came after reconnecting with the new certificate.
    f.wait_for_log("connected with the new certificate", 1);

    // The server may resend crt_res: acknowledged again, nothing changes.
    orchestrator.deliver(&f, "new.pem", "ca.pem").await;
    let ack: CertificateAck = orchestrator.expect(&f, Step::CrtAck).await;
    assert_eq!(ack.serial, "2002");
    assert_eq!(der_of(&f.path("device.pem")), der_of(&f.path("new.pem")));

    // SIGTERM stops `est-client run` cleanly.
    let pid = f.agent.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = f.agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "est-client run ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}; log:\n{}", f.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_is_refused_and_the_old_pair_kept() {
    let f = start();
    let mut orchestrator = Orchestrator::connect(&f).await;
    let old_cert = std::fs::read(f.path("device.pem")).unwrap();
    let old_key = std::fs::read(f.path("device.key")).unwrap();

    // Signed by a CA the device does not trust: refused before installing.
    let csr = orchestrator.request_csr(&f, "untrusted").await;
    sign(
        f.dir.path(),
        &csr,
        Some("ca-untrusted"),
        "3003",
        "client.ext",
        "untrusted.pem",
        None,
    );
    orchestrator
        .deliver(&f, "untrusted.pem", "ca-untrusted.pem")
        .await;
    let error: CertificateError = orchestrator.expect(&f, Step::CrtErr).await;
    assert!(error.error.contains("trust anchors"), "{}", error.error);
    assert_eq!(std::fs::read(f.path("device.pem")).unwrap(), old_cert);
    assert_eq!(std::fs::read(f.path("device.key")).unwrap(), old_key);

    // A payload that is not a certificate response.
    orchestrator
        .send(Step::CrtRes, &serde_json::json!({"hello": "world"}))
        .await;
    let error: CertificateError = orchestrator.expect(&f, Step::CrtErr).await;
    assert!(error.error.contains("crt_res payload"), "{}", error.error);

    // Trusted by the device but not by the broker: installed, the reconnect
    // fails, the old pair is restored and used again.
    let csr = orchestrator.request_csr(&f, "device-only").await;
    sign(
        f.dir.path(),
        &csr,
        Some("ca-device-only"),
        "4004",
        "client.ext",
        "device-only.pem",
        None,
    );
    orchestrator
        .deliver(&f, "device-only.pem", "ca-device-only.pem")
        .await;
    let error: CertificateError = orchestrator.expect(&f, Step::CrtErr).await;
    assert!(error.error.contains("rolled back"), "{}", error.error);
    assert_eq!(std::fs::read(f.path("device.pem")).unwrap(), old_cert);
    assert_eq!(std::fs::read(f.path("device.key")).unwrap(), old_key);

    // Still connected and serving with the old pair.
    orchestrator.request_csr(&f, "after").await;
}
