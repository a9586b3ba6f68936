//! A real Mosquitto broker for the rotation tests: TLS on 127.0.0.1 with the
//! EST server's TLS identity, client certificates required and checked
//! against the server's CA, the certificate CN as user name, and an ACL that
//! confines every device to `management/topic/<its CN>/#`.
//!
//! `run-tests.sh` installs the Debian package `mosquitto`; without it these
//! tests fail loudly rather than skip.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Server;

/// The MQTT client id the server's orchestrator uses in the tests.
pub const ORCHESTRATOR: &str = "est-server-rotation";

/// A running broker; killed on drop.
pub struct Mosquitto {
    /// TLS port on 127.0.0.1.
    pub port: u16,
    /// Its config file (unique per broker: `pkill -f` finds it by this).
    pub conf: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Mosquitto {
    /// A port that is free now (the server's config names it before the
    /// broker can start, because the broker needs the server's CA files).
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    /// Starts the broker on `port`, trusting `server`'s CA for client certificates.
    pub fn start(server: &Server, port: u16) -> Self {
        Self::start_with_operators(server, port, &[])
    }

    /// Like [`Mosquitto::start`]; the client ids in `operators` may, like the
    /// orchestrator, use every device's topics (a fleet simulator).
    pub fn start_with_operators(server: &Server, port: u16, operators: &[&str]) -> Self {
        Self::start_full(server, port, operators, None)
    }

    /// Like [`Mosquitto::start`], also refusing the certificates on the CRL
    /// in `crlfile` (the README's broker config; reloaded on SIGHUP).
    pub fn start_with_crl(server: &Server, port: u16, crlfile: &Path) -> Self {
        Self::start_full(server, port, &[], Some(crlfile))
    }

    fn start_full(server: &Server, port: u16, operators: &[&str], crlfile: Option<&Path>) -> Self {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("mosquitto is not installed: run ./run-tests.sh (it installs the Debian package `mosquitto`)");
        let dir = tempfile::tempdir().unwrap();
        let cafile = dir.path().join("clients-ca.pem");
        let chain = [
            server.path("ca/root-ca.pem"),
            server.path("ca/issuing-ca.pem"),
        ]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
        std::fs::write(&cafile, chain).unwrap();
        let acl = dir.path().join("acl");
        // The orchestrator reads device answers and writes requests and
        // certificates, nothing more; operators (a fleet simulator) get all.
        let mut rules = format!(
            "user {ORCHESTRATOR}\n\
             topic read management/topic/+/csr_res\n\
             topic read management/topic/+/crt_ack\n\
             topic read management/topic/+/crt_err\n\
             topic write management/topic/+/csr_req\n\
             topic write management/topic/+/crt_res\n\n"
        );
        for user in operators {
            rules.push_str(&format!(
                "user {user}\ntopic readwrite management/topic/#\n\n"
            ));
        }
        rules.push_str("pattern readwrite management/topic/%u/#\n");
        std::fs::write(&acl, rules).unwrap();
        let log = dir.path().join("mosquitto.log");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\n\
                 persistence false\n\
                 log_dest stderr\n\
                 log_type all\n\
                 connection_messages true\n\
                 per_listener_settings false\n\
                 acl_file {acl}\n\
                 listener {port} 127.0.0.1\n\
                 cafile {cafile}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 tls_version tlsv1.2\n\
                 require_certificate true\n\
                 use_identity_as_username true\n\
                 {crl}",
                crl = crlfile.map_or(String::new(), |path| format!(
                    "crlfile {}\n",
                    path.display()
                )),
                acl = acl.display(),
                cafile = cafile.display(),
                cert = server.path("tls/server.pem").display(),
                key = server.path("tls/server.key").display(),
            ),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mosquitto");
        let mut broker = Self {
            port,
            conf,
            child,
            _dir: dir,
            log,
        };
        let start = Instant::now();
        loop {
            // Exited: the port was taken meanwhile (someone else would
            // answer on it), or the configuration was refused.
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!(
                    "mosquitto exited ({status}) on port {port}: {}",
                    broker.log()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "mosquitto did not start: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Listening, and still ours.
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!(
                "mosquitto exited ({status}) on port {port}: {}",
                broker.log()
            );
        }
        broker
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether a client with this id has connected (according to the log).
    pub fn saw_client(&self, client_id: &str) -> bool {
        BufReader::new(std::fs::File::open(&self.log).unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("New client connected") && l.contains(&format!(" as {client_id} ")))
    }
}

/// Connects as the holder of `cert`/`key` (trusting `ca`), publishes
/// `payload` on `topic` with QoS 1 and disconnects. Returns whether the
/// broker accepted the connection and acknowledged the message (Mosquitto
/// acknowledges publishes its ACL drops, so `true` does not mean delivered).
pub fn publish_as(
    port: u16,
    client_id: &str,
    cert: &Path,
    key: &Path,
    ca: &Path,
    topic: &str,
    payload: &[u8],
) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &std::fs::read(ca).unwrap()[..]) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain = rustls_pemfile::certs(&mut &std::fs::read(cert).unwrap()[..])
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut &std::fs::read(key).unwrap()[..])
            .unwrap()
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
        ));
        let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
        let acked = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), events.poll()).await;
        acked
    })
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
