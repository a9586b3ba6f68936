//! Three est-server processes sharing one registry (PostgreSQL, or DynamoDB
//! on a real moto) and one CA (a directory, or one SoftHSM2 token), with
//! clients spread over them, on the unlabelled path and on a label: the
//! registry's guarantees hold across servers (one token → one certificate,
//! one successor per certificate) and survive a server killed with SIGKILL
//! under load, the database restarted under load, and the rotation leader
//! killed mid-way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use est_e2e::softhsm::SoftHsm;
use est_e2e::*;
use est_server::registry::{
    CertState, DynamoDbRegistry, PostgresOptions, PostgresRegistry, Registry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The TOML of a fleet server: vending-machine tokens and Basic on the
/// unlabelled path and on label `fleet`, the shared `registry`, the CA
/// section `ca` (a shared directory, a signer) and `extra`.
fn fleet_config(registry: &str, ca: &str, extra: &str) -> String {
    config_with(&format!(
        "[enroll]\nprofile = \"device\"\nauth = [\"basic\", \"device-token\"]\n\
         [labels.fleet]\nprofile = \"device\"\nauth = [\"basic\", \"device-token\"]\n\
         {registry}[limits]\nmax_connections_per_address = 1024\n{ca}{extra}"
    ))
    .replacen(
        "[enroll]\nprofile = \"device\"\n[labels.edgeca]",
        "[labels.edgeca]",
        1,
    )
}

fn postgres_toml(url: &str) -> String {
    format!("[registry]\nkind = \"postgres\"\nurl = \"{url}\"\npool_size = 8\n")
}

fn ca_toml(ca_dir: Option<&Path>) -> String {
    ca_dir.map_or(String::new(), |dir| {
        format!("[ca]\ndir = \"{}\"\n", dir.display())
    })
}

/// A server of the fleet on the PostgreSQL registry at `url`, with the CA
/// of `ca_dir` (the first server's) when given.
fn fleet_server(url: &str, ca_dir: Option<&Path>) -> Server {
    fleet_server_with(url, ca_dir, "")
}

/// Like [`fleet_server`], with more TOML.
fn fleet_server_with(url: &str, ca_dir: Option<&Path>, extra: &str) -> Server {
    let config = fleet_config(&postgres_toml(url), &ca_toml(ca_dir), extra);
    Server::start_with(&config, None)
}

/// Which registry a fleet shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    /// DynamoDB on a real moto server.
    DynamoDb,
}

/// What the servers of one fleet share: the registry (and the database
/// process behind it), the environment they need, and optionally a SoftHSM2
/// token holding the CA key.
struct Shared {
    registry: Arc<dyn Registry>,
    toml: String,
    env: Vec<(&'static str, String)>,
    hsm: Option<SoftHsm>,
    _pg: Option<Postgres>,
    _moto: Option<Moto>,
}

impl Shared {
    async fn new(kind: Kind, hsm: Option<SoftHsm>) -> Self {
        let mut env = hsm.as_ref().map(SoftHsm::env).unwrap_or_default();
        let shared = match kind {
            Kind::Postgres => {
                let pg = Postgres::start();
                let url = pg.create_database("fleet");
                let registry = PostgresRegistry::open(PostgresOptions::from_url(&url).unwrap())
                    .await
                    .unwrap();
                Self {
                    registry: Arc::new(registry),
                    toml: postgres_toml(&url),
                    env,
                    hsm,
                    _pg: Some(pg),
                    _moto: None,
                }
            }
            Kind::DynamoDb => {
                let moto = Moto::start();
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new("us-east-1"))
                    .endpoint_url(&moto.endpoint)
                    .credentials_provider(aws_credential_types::Credentials::new(
                        "testing", "testing", None, None, "tests",
                    ))
                    .load()
                    .await;
                // The table exists before any server starts, as an operator
                // would create it.
                let registry = DynamoDbRegistry::new(&sdk, "fleet");
                registry.create_table().await.unwrap();
                env.extend(moto.env());
                Self {
                    registry: Arc::new(registry),
                    toml: format!(
                        "[registry]\nkind = \"dynamodb\"\ntable = \"fleet\"\n\
                         [aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
                        moto.endpoint
                    ),
                    env,
                    hsm,
                    _pg: None,
                    _moto: Some(moto),
                }
            }
        };
        shared
    }

    /// Starts a server; the first (`ca_dir` none) makes the CA, the others
    /// use its directory. With a token, the first runs `ca init --signer
    /// pkcs11` before it starts, and every server signs with that one key.
    fn server(&self, ca_dir: Option<&Path>, extra: &str) -> Server {
        let mut ca = ca_toml(ca_dir);
        if let Some(hsm) = &self.hsm {
            if ca.is_empty() {
                ca.push_str("[ca]\n");
            }
            ca.push_str(&hsm.signer_toml("ca", "issuing"));
        }
        let config = fleet_config(&self.toml, &ca, extra);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match (&self.hsm, ca_dir) {
            (Some(_), None) => {
                let dir = tempfile::tempdir().unwrap();
                std::fs::write(
                    dir.path().join("est-server.toml"),
                    config.replace("@BOOTSTRAP@", "[]"),
                )
                .unwrap();
                let init = std::process::Command::new(server_binary())
                    .args(["ca", "init", "--signer", "pkcs11", "--data-dir"])
                    .arg(dir.path())
                    .envs(env.iter().copied())
                    .output()
                    .unwrap();
                assert!(
                    init.status.success(),
                    "ca init: {}",
                    String::from_utf8_lossy(&init.stderr)
                );
                Server::start_in(dir, &self.env)
            }
            _ => Server::start_with_env(&config, None, &env),
        }
    }

    /// Three servers on one CA.
    fn three_servers(&self) -> Vec<Server> {
        let first = self.server(None, "");
        let ca_dir = first.path("ca");
        vec![
            first,
            self.server(Some(&ca_dir), ""),
            self.server(Some(&ca_dir), ""),
        ]
    }

    /// Adds device `id` on `label` through `server`'s admin command; its token.
    fn add_device(&self, server: &Server, id: &str, label: Option<&str>) -> String {
        let mut args = vec!["devices", "add", id];
        if let Some(label) = label {
            args.extend(["--label", label]);
        }
        let out = server.admin_env(&args, &self.env);
        out.trim().rsplit(' ').next().unwrap().to_owned()
    }
}

/// `/.well-known/est[/<label>]/<op>`.
fn est_path(label: Option<&str>, op: &str) -> String {
    match label {
        Some(label) => format!("/.well-known/est/{label}/{op}"),
        None => format!("/.well-known/est/{op}"),
    }
}

/// `openssl verify` of a DER certificate against the fleet's CA directory.
fn verify_issued(ca_dir: &Path, der: &[u8], work: &Path) {
    let cert = work.join("verify.pem");
    std::fs::write(&cert, est_wire::pem::encode("CERTIFICATE", der)).unwrap();
    let out = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        &ca_dir.join("root-ca.pem").display().to_string(),
        "-untrusted",
        &ca_dir.join("issuing-ca.pem").display().to_string(),
        &cert.display().to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&out).contains(": OK"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// TLS to the fleet (trusting the shared CA), with an optional client certificate.
fn tls(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(ca).unwrap().as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut std::fs::read(key).unwrap().as_slice())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

/// POSTs a base64 CSR to `path` on `addr`; the status (0: no answer, as
/// from a killed server) and the body.
async fn post(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    basic: Option<&str>,
    csr_b64: &[u8],
) -> (u16, Vec<u8>) {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let auth = basic.map_or(String::new(), |credentials| {
            format!(
                "Authorization: Basic {}\r\n",
                est_wire::body::encode(credentials.as_bytes()).trim()
            )
        });
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\n\
             Content-Length: {}\r\nConnection: close\r\n{auth}\r\n",
            csr_b64.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(csr_b64).await?;
        let mut response = Vec::new();
        // A server that closes without close_notify still sent its answer.
        let _ = stream.read_to_end(&mut response).await;
        Ok::<_, std::io::Error>(response)
    };
    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(30), attempt).await else {
        return (0, Vec::new());
    };
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => response[at + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

/// The serial (registry form) and fingerprint of the certificate a 200 carried.
fn issued(body: &[u8]) -> (String, String) {
    let der = est_wire::body::decode(body).expect("base64 body");
    let certs = est_wire::pkcs7::decode_certs_only(&der).expect("certs-only");
    let cert = certs.first().expect("one certificate");
    let der = der::Encode::to_der(cert).unwrap();
    (ca_backends::serial_hex(cert), est_wire::sha256_hex(&der))
}

/// The three-server scenario on `kind` and the path of `label` (none: the
/// unlabelled path), with the CA key in `hsm` when given: 1,000 concurrent
/// replays of one token give one certificate; 100 concurrent renewals of it
/// through different servers give one successor; with a server killed
/// (SIGKILL) under load, every certificate a client received is in the
/// registry and no token yielded two. Every certificate is verified with
/// openssl against the shared CA.
async fn scenario(kind: Kind, label: Option<&'static str>, hsm: Option<SoftHsm>) {
    let started = Instant::now();
    let shared = Shared::new(kind, hsm).await;
    let mut servers = shared.three_servers();
    let ca = servers[0].ca_pem();
    let ca_dir = servers[0].path("ca");
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let registry = shared.registry.clone();
    let work = tempfile::tempdir().unwrap();
    let anonymous = tls(&ca, None);
    let enroll = Arc::new(est_path(label, "simpleenroll"));

    // 1,000 concurrent replays of one token, spread over the three servers:
    // exactly one certificate. (All 1,000 on every registry: on moto, which
    // serves DynamoDB requests one at a time, they take 11–20 s against
    // 9–12 s on PostgreSQL.)
    let token = shared.add_device(&servers[0], "SN-FLEET", label);
    let csr = Csr::new(work.path(), "fleet", KeyType::P256, "/CN=SN-FLEET", &[]);
    let csr_b64 = Arc::new(std::fs::read(&csr.b64).unwrap());
    let credentials = Arc::new(format!("SN-FLEET:{token}"));
    // 150 at once, 50 per server. The generator is one address, so the
    // fleet's per-address cap is raised above that (the cap itself is
    // tested in hostile.rs): a refused connection would say nothing here.
    let gate = Arc::new(tokio::sync::Semaphore::new(150));
    let mut replays = tokio::task::JoinSet::new();
    for i in 0..1_000 {
        let (addr, tls, csr_b64) = (addrs[i % 3].clone(), anonymous.clone(), csr_b64.clone());
        let (credentials, gate, path) = (credentials.clone(), gate.clone(), enroll.clone());
        replays.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            post(&addr, tls, &path, Some(&credentials), &csr_b64).await
        });
    }
    let mut certificates = std::collections::BTreeSet::new();
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(outcome) = replays.join_next().await {
        let (status, body) = outcome.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        if status == 200 {
            certificates.insert(issued(&body));
        }
    }
    assert_eq!(certificates.len(), 1, "statuses {statuses:?}");
    assert!(
        statuses.keys().all(|s| [200, 403, 409].contains(s)),
        "every replay is answered: issued, token used, or busy: {statuses:?}"
    );
    let history = registry.device_certificates("SN-FLEET").await.unwrap();
    assert_eq!(history.len(), 1);
    let (serial, _) = certificates.pop_first().unwrap();
    assert_eq!(history[0].certificate.serial, serial);
    assert_eq!(history[0].certificate.label, label.unwrap_or(""));
    eprintln!(
        "{kind:?} {label:?}: 1,000 replays of one token in {:?}: {statuses:?}",
        started.elapsed()
    );

    // 100 concurrent renewals of that certificate through different
    // servers: one successor, and never a 500 (on DynamoDB the unlabelled
    // path once answered every renewal with 500: an empty index key).
    let cert_path = work.path().join("fleet.pem");
    let record = registry.find_by_serial(&serial).await.unwrap().unwrap();
    verify_issued(&ca_dir, &record.certificate.der, work.path());
    std::fs::write(
        &cert_path,
        est_wire::pem::encode("CERTIFICATE", &record.certificate.der),
    )
    .unwrap();
    let holder = tls(&ca, Some((&cert_path, &csr.key)));
    let renewal_started = Instant::now();
    let reenroll = Arc::new(est_path(label, "simplereenroll"));
    let mut renewals = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (addr, tls, csr_b64) = (addrs[i % 3].clone(), holder.clone(), csr_b64.clone());
        let path = reenroll.clone();
        renewals.spawn(async move { post(&addr, tls, &path, None, &csr_b64).await });
    }
    let mut successors = std::collections::BTreeSet::new();
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(outcome) = renewals.join_next().await {
        let (status, body) = outcome.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        if status == 200 {
            successors.insert(issued(&body).0);
        }
    }
    assert_eq!(successors.len(), 1, "statuses {statuses:?}");
    assert!(!statuses.contains_key(&500), "statuses {statuses:?}");
    assert!(
        statuses.keys().all(|s| [200, 403, 409].contains(s)),
        "statuses {statuses:?}"
    );
    let history = registry.device_certificates("SN-FLEET").await.unwrap();
    assert_eq!(history.len(), 2, "one successor");
    let old = registry.find_by_serial(&serial).await.unwrap().unwrap();
    assert_eq!(old.successor.as_ref(), successors.first());
    assert_eq!(old.state, CertState::Superseded);
    let successor = registry
        .find_by_serial(successors.first().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(successor.certificate.label, label.unwrap_or(""));
    verify_issued(&ca_dir, &successor.certificate.der, work.path());
    eprintln!(
        "{kind:?} {label:?}: 100 renewals of one certificate in {:?}: {statuses:?}",
        renewal_started.elapsed()
    );

    // Under load, one server is killed with SIGKILL: every certificate a
    // client received is in the registry, and no token yielded two.
    const DEVICES: usize = 240;
    let (devices, tokens): (Vec<_>, Vec<_>) = (0..DEVICES)
        .map(|i| {
            let (device, token) = est_server::devices::provision(
                format!("SN-LOAD-{i:03}"),
                label.unwrap_or("").to_owned(),
                None,
                None,
            );
            (device, token.to_string())
        })
        .unzip();
    let added = registry.add_devices(devices).await.unwrap();
    assert!(added.iter().all(|added| *added));
    let load_csrs: Vec<Arc<Vec<u8>>> = (0..DEVICES)
        .map(|i| {
            let id = format!("SN-LOAD-{i:03}");
            let csr = Csr::new(work.path(), &id, KeyType::P256, &format!("/CN={id}"), &[]);
            Arc::new(std::fs::read(&csr.b64).unwrap())
        })
        .collect();
    let load_started = Instant::now();
    let mut load = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let id = format!("SN-LOAD-{i:03}");
        let credentials = format!("{id}:{token}");
        let (addrs, tls, csr_b64) = (addrs.clone(), anonymous.clone(), load_csrs[i].clone());
        let path = enroll.clone();
        load.spawn(async move {
            // Spread over the servers; a request that found no answer (the
            // killed server) is tried again on the next one.
            let mut received = Vec::new();
            for attempt in 0..3 {
                let addr = &addrs[(i + attempt) % 3];
                let (status, body) =
                    post(addr, tls.clone(), &path, Some(&credentials), &csr_b64).await;
                if status == 200 {
                    received.push(issued(&body));
                    break;
                }
                if status != 0 && status != 503 {
                    break;
                }
            }
            (id, received)
        });
        if i == DEVICES / 3 {
            let victim = servers.remove(2);
            let pid = victim.pid();
            let _stopped = victim.stop();
            eprintln!("killed server pid {pid} with SIGKILL");
        }
    }
    let mut received = 0;
    while let Some(outcome) = load.join_next().await {
        let (id, certificates) = outcome.unwrap();
        let history = registry.device_certificates(&id).await.unwrap();
        assert!(
            history.len() <= 1,
            "{id}: a token yielded {}",
            history.len()
        );
        for (serial, fingerprint) in certificates {
            assert!(
                registry
                    .find_presented(&serial, &fingerprint)
                    .await
                    .unwrap()
                    .is_some(),
                "{id}: certificate {serial} was delivered but is not in the registry"
            );
            received += 1;
        }
    }
    eprintln!(
        "{kind:?} {label:?}: {DEVICES} token enrollments with a server killed: \
         {received} delivered in {:?}",
        load_started.elapsed()
    );
    assert!(
        received > DEVICES / 2,
        "only {received} enrollments succeeded"
    );
    for server in &servers {
        assert!(!server.log().contains("panicked"), "{}", server.log());
    }
    eprintln!("{kind:?} {label:?}: scenario took {:?}", started.elapsed());
    // Measured on a 2-core VM: PostgreSQL 14–27 s; DynamoDB on moto 74 s
    // alone and 125 s beside the other fleet tests. moto serves DynamoDB one
    // request at a time (tests/moto/est_moto.py), so the load phase (240
    // enrollments, each several conditional writes, some waiting out the
    // killed server's 30 s client timeout) dominates there: about 70 s, with
    // 160–240 of the 240 delivered. The bounds catch a hang, not a slowdown.
    let bound = match kind {
        Kind::Postgres => Duration::from_secs(90),
        Kind::DynamoDb => Duration::from_secs(240),
    };
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_postgres_registry() {
    scenario(Kind::Postgres, None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_postgres_registry_on_a_label() {
    scenario(Kind::Postgres, Some("fleet"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_dynamodb_registry() {
    scenario(Kind::DynamoDb, None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_dynamodb_registry_on_a_label() {
    scenario(Kind::DynamoDb, Some("fleet"), None).await;
}

/// The same fleet with the CA key in one SoftHSM2 token that all three
/// servers open (one `SOFTHSM2_CONF`; `ca init --signer pkcs11` once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_sign_with_one_softhsm_token() {
    let hsm = SoftHsm::new("fleet-ca", "2468");
    scenario(Kind::Postgres, None, Some(hsm)).await;
}

/// `registry migrate` finds the schema a server made current; with the
/// database down, an enrollment answers 503 (retry later), not 500.
#[test]
fn enrollment_answers_503_while_the_database_is_down() {
    let pg = Postgres::start();
    let url = pg.create_database("down");
    let server = fleet_server(&url, None);
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "d", KeyType::P256, "/CN=db-down", &[]);
    enroll_basic(&server, None, &csr, &work.path().join("up.pem"));
    let known = est_server::registry::postgres::SCHEMA_VERSION;
    let migrated = server.admin(&["registry", "migrate"]);
    assert!(
        migrated.contains(&format!("registry schema version {known} -> {known}")),
        "{migrated}"
    );
    drop(pg);
    let again = Csr::new(work.path(), "d2", KeyType::P256, "/CN=db-down-2", &[]);
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &again.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// With rotation on two servers, exactly one leads the audit (the registry
/// lease); when it is killed, the other takes over once the lease ends: at
/// most its 30 s term after the kill (the last renewal came before it), plus
/// the follower's 1 s between tries and a margin for a busy machine (with
/// tries every 10 s this took up to 40 s).
#[test]
fn one_server_leads_the_rotation_audit() {
    let pg = Postgres::start();
    let url = pg.create_database("lead");
    let broker = Mosquitto::free_port();
    let rotation = |id: &str| {
        format!(
            "[rotation]\nenabled = true\nbroker = \"127.0.0.1:{broker}\"\nclient_id = \"{id}\"\n\
             expiring_within = \"1d\"\naudit_interval = \"1s\"\n"
        )
    };
    let first = fleet_server_with(&url, None, &rotation("orch-a"));
    let ca_dir = first.path("ca");
    let second = fleet_server_with(&url, Some(&ca_dir), &rotation("orch-b"));
    let leads = |server: &Server| server.log().contains("this server leads the audit");
    assert!(
        wait_for(Duration::from_secs(15), || leads(&first) || leads(&second)),
        "nobody leads:\n{}\n{}",
        first.log(),
        second.log()
    );
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        leads(&first) != leads(&second),
        "exactly one leads:\n{}\n{}",
        first.log(),
        second.log()
    );
    let (leader, follower) = if leads(&first) {
        (first, second)
    } else {
        (second, first)
    };
    let killed = Instant::now();
    // Kept: its data directory may hold the CA directory the other uses
    // (its MQTT certificate, the audit's trust anchors).
    let _stopped = leader.stop();
    assert!(
        wait_for(Duration::from_secs(33), || leads(&follower)),
        "no takeover within 33 s:\n{}",
        follower.log()
    );
    eprintln!(
        "audit lead taken over {:?} after the leader was killed",
        killed.elapsed()
    );
}

/// Two servers with rotation on one PostgreSQL database and a real broker,
/// once one of them leads and both are connected: `(leader, follower, broker)`.
/// Device certificates live 30 days: the 60-day window asks at once.
fn rotation_pair(url: &str) -> (Server, Server, Mosquitto) {
    rotation_pair_with(url, "")
}

/// [`rotation_pair`] with `extra` `[rotation]` settings on both servers.
fn rotation_pair_with(url: &str, extra: &str) -> (Server, Server, Mosquitto) {
    let broker_port = Mosquitto::free_port();
    let rotation = |id: &str| {
        format!(
            "[rotation]\nenabled = true\nbroker = \"127.0.0.1:{broker_port}\"\nclient_id = \"{id}\"\n\
             expiring_within = \"60d\"\naudit_interval = \"1s\"\nretry_after = \"2s\"\n{extra}"
        )
    };
    let first = fleet_server_with(url, None, &rotation("orch-a"));
    let ca_dir = first.path("ca");
    let second = fleet_server_with(url, Some(&ca_dir), &rotation("orch-b"));
    let broker = Mosquitto::start_with_operators(&first, broker_port, &["orch-a", "orch-b"]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            (leads(&first) || leads(&second))
                && broker.saw_client("orch-a")
                && broker.saw_client("orch-b")
        }),
        "no leader, or not both connected:\n{}\n{}\n{}",
        first.log(),
        second.log(),
        broker.log()
    );
    if leads(&first) {
        (first, second, broker)
    } else {
        (second, first, broker)
    }
}

/// Whether `server` has taken the rotation lead.
fn leads(server: &Server) -> bool {
    server.log().contains("this server leads the audit")
}

/// A rotation the leader started (its `csr_req` published and recorded)
/// survives the leader being killed with SIGKILL before the device answered:
/// the other server takes the lead, asks again, issues, and retires the
/// predecessor on the device's `crt_ack`.
///
/// The device is offline when the leader publishes (a device that never
/// connected has no session, so the request is lost, as for a device that
/// was powered off); it comes up after the leader is gone, so only the
/// server that took over can finish the rotation.
#[test]
fn a_rotation_survives_its_leader_killed_mid_way() {
    let started = Instant::now();
    let pg = Postgres::start();
    let url = pg.create_database("takeover");
    let (leader, follower, broker) = rotation_pair(&url);
    // Each server connects as its own client id, with a certificate that
    // names it (the broker's user name), though they share a CA directory.
    for id in ["orch-a", "orch-b"] {
        assert!(
            broker
                .log()
                .lines()
                .any(|l| l.contains(&format!(" as {id} ")) && l.contains(&format!("u'{id}'"))),
            "{id} did not connect as itself:\n{}",
            broker.log()
        );
    }

    // The device enrolls (through the follower); the leader's next audit
    // asks it for a CSR while it is offline.
    let dir = tempfile::tempdir().unwrap();
    enroll(&follower, dir.path(), Some("iot"), "rot-fleet");
    let old = serial(dir.path())
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    assert!(
        wait_for(Duration::from_secs(20), || rotation_state(
            &follower,
            "rot-fleet"
        ) == "requested"),
        "the leader never asked: {:?}\n{}",
        rotation_of(&follower, "rot-fleet"),
        leader.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || leader
            .log()
            .contains("rotation audit done")),
        "{}",
        leader.log()
    );
    assert!(
        !follower.log().contains("rotation audit done"),
        "only the leader audits:\n{}",
        follower.log()
    );
    let killed = Instant::now();
    let pid = leader.pid();
    // Kept: its data directory may hold the CA directory the other uses.
    let _stopped = leader.stop();
    eprintln!("killed the leader (pid {pid}) with the rotation requested");
    assert_eq!(rotation_state(&follower, "rot-fleet"), "requested");

    // The device comes up, talking EST to the surviving server.
    let config = renew_config(
        &follower,
        dir.path(),
        "iot",
        &format!(
            "[auto_renew]\nrotate_key = true\n[mqtt]\nbroker = \"127.0.0.1:{}\"\nbroker_ca = \"{}\"\n",
            broker.port,
            follower.ca_pem().display()
        ),
    );
    let mut agent = std::process::Command::new(client_binary())
        .args(["run", "--config", &config.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(config.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let finished = wait_for(Duration::from_secs(90), || {
        rotation_state(&follower, "rot-fleet") == "acknowledged"
    });
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        finished,
        "rotation not finished: {:?}\nserver: {}\ndevice: {}",
        rotation_of(&follower, "rot-fleet"),
        follower.log(),
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
    );
    eprintln!(
        "rotation finished {:?} after the leader was killed ({:?} in all)",
        killed.elapsed(),
        started.elapsed()
    );
    assert!(leads(&follower), "{}", follower.log());
    let record = rotation_of(&follower, "rot-fleet").unwrap();
    assert!(
        record["attempts"].as_u64().unwrap() >= 2,
        "asked again by the new leader: {record}"
    );
    let new = serial(dir.path())
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    assert_ne!(new, old, "the device holds a new certificate");
    assert!(status_ok(dir.path()));
    assert_eq!(record["newSerial"], new.as_str());
    assert_eq!(state_of(&follower, &new), "active");
    assert_eq!(state_of(&follower, &old), "superseded+retired");
    assert!(!follower.log().contains("panicked"), "{}", follower.log());
}

/// One request through the fleet, timed.
struct Outcome {
    status: u16,
    took: Duration,
    certificate: Option<(String, String)>,
}

async fn timed_post(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    basic: &str,
    csr_b64: &[u8],
) -> Outcome {
    let sent = Instant::now();
    let (status, body) = post(addr, tls, path, Some(basic), csr_b64).await;
    Outcome {
        status,
        took: sent.elapsed(),
        certificate: (status == 200).then(|| issued(&body)),
    }
}

/// PostgreSQL stopped (`pg_ctl stop -m fast`) and started again on the same
/// port and data directory while clients enroll across three servers, with
/// tokens and with Basic: during the outage every request is answered 503
/// within a bound (never 500, never a hang); a token whose request got 503
/// is not burned (it succeeds afterwards); nothing is half-recorded (every
/// certificate a client received is in the registry, no token has two); and
/// the servers serve again by themselves, without a restart, within 10 s of
/// the database being back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_rides_out_a_postgres_restart() {
    let started = Instant::now();
    let pg = Arc::new(Postgres::start());
    let url = pg.create_database("restart");
    let first = fleet_server(&url, None);
    let ca_dir = first.path("ca");
    let servers = [
        first,
        fleet_server(&url, Some(&ca_dir)),
        fleet_server(&url, Some(&ca_dir)),
    ];
    let ca = servers[0].ca_pem();
    let addrs: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.addr.clone()).collect());
    let registry = PostgresRegistry::open(PostgresOptions::from_url(&url).unwrap())
        .await
        .unwrap();
    let anonymous = tls(&ca, None);
    let work = tempfile::tempdir().unwrap();

    // Work items: a device with its token, or a Basic user with its own
    // subject, interleaved two to one.
    const DEVICES: usize = 120;
    const BASIC: usize = 60;
    let (devices, tokens): (Vec<_>, Vec<_>) = (0..DEVICES)
        .map(|i| {
            let (device, token) =
                est_server::devices::provision(format!("SN-PG-{i:03}"), String::new(), None, None);
            (device, token.to_string())
        })
        .unzip();
    assert!(registry
        .add_devices(devices)
        .await
        .unwrap()
        .iter()
        .all(|added| *added));
    let mut items: Vec<(Option<String>, String, Arc<Vec<u8>>)> = Vec::new();
    for i in 0..DEVICES + BASIC {
        let (device, credentials, cn) = if i % 3 == 2 {
            let n = i / 3;
            (None, "estuser:estpwd".to_owned(), format!("basic-{n:03}"))
        } else {
            let n = i - i / 3;
            let id = format!("SN-PG-{n:03}");
            (Some(id.clone()), format!("{id}:{}", tokens[n]), id)
        };
        let csr = Csr::new(work.path(), &cn, KeyType::P256, &format!("/CN={cn}"), &[]);
        items.push((
            device,
            credentials,
            Arc::new(std::fs::read(&csr.b64).unwrap()),
        ));
    }
    let items = Arc::new(items);
    let path = "/.well-known/est/simpleenroll";

    // One request every 50 ms (9 s in all), round robin over the servers;
    // the database goes down after 1.5 s for 4 s.
    let load_started = Instant::now();
    let launcher = {
        let (items, addrs, tls) = (items.clone(), addrs.clone(), anonymous.clone());
        tokio::spawn(async move {
            let mut requests = tokio::task::JoinSet::new();
            let mut pace = tokio::time::interval(Duration::from_millis(50));
            for i in 0..items.len() {
                pace.tick().await;
                let (items, addrs, tls) = (items.clone(), addrs.clone(), tls.clone());
                requests.spawn(async move {
                    let (_, credentials, csr) = &items[i];
                    let at = load_started.elapsed();
                    let outcome = timed_post(&addrs[i % 3], tls, path, credentials, csr).await;
                    (i, at, outcome)
                });
            }
            requests.join_all().await
        })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stopping = load_started.elapsed();
    on_cluster(&pg, Postgres::stop).await;
    let down = load_started.elapsed();
    eprintln!("database stopped at {stopping:?} (down at {down:?})");
    tokio::time::sleep(Duration::from_secs(4)).await;
    on_cluster(&pg, Postgres::start_again).await;
    let back = Instant::now();
    let up = load_started.elapsed();
    eprintln!("database up again at {up:?}");

    // Every server enrolls again by itself, within 10 s.
    for (n, addr) in addrs.iter().enumerate() {
        let csr = Csr::new(
            work.path(),
            &format!("resume-{n}"),
            KeyType::P256,
            &format!("/CN=resume-{n}"),
            &[],
        );
        let csr = std::fs::read(&csr.b64).unwrap();
        loop {
            let outcome = timed_post(addr, anonymous.clone(), path, "estuser:estpwd", &csr).await;
            if outcome.status == 200 {
                break;
            }
            assert_eq!(outcome.status, 503, "server {n} after the restart");
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "server {n} does not serve again {:?} after the database is back:\n{}",
                back.elapsed(),
                servers[n].log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "all three servers enroll again {:?} after the database is back",
        back.elapsed()
    );

    let outcomes = launcher.await.unwrap();
    let mut statuses = std::collections::BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut retry = Vec::new();
    let mut received: Vec<(usize, (String, String))> = Vec::new();
    for (i, at, outcome) in outcomes {
        *statuses.entry(outcome.status).or_insert(0) += 1;
        slowest = slowest.max(outcome.took);
        assert!(
            [200, 503].contains(&outcome.status),
            "request {i} sent at {at:?} answered {} after {:?}",
            outcome.status,
            outcome.took
        );
        assert!(
            outcome.took < Duration::from_secs(12),
            "request {i} sent at {at:?} took {:?}",
            outcome.took
        );
        match outcome.certificate {
            Some(certificate) => received.push((i, certificate)),
            None => retry.push(i),
        }
    }
    eprintln!(
        "{} requests across the restart: {statuses:?}, slowest {slowest:?}",
        items.len()
    );
    assert!(
        statuses.get(&503).copied().unwrap_or(0) >= 20,
        "the outage was hit: {statuses:?}"
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 20,
        "served before and after: {statuses:?}"
    );

    // What got 503 succeeds now: no token was burned by a failed request.
    // A request that reserved its device just before the database went
    // away could not give the reservation back then; the server releases it
    // once the database is back, so a retry after the 409's Retry-After (5 s)
    // succeeds (without that, the reservation would hold for its 60 s).
    let mut busy = 0;
    for &i in &retry {
        let (device, credentials, csr) = &items[i];
        let again = || {
            timed_post(
                &addrs[(i + 1) % 3],
                anonymous.clone(),
                path,
                credentials,
                csr,
            )
        };
        let mut outcome = again().await;
        if outcome.status == 409 {
            busy += 1;
            tokio::time::sleep(Duration::from_secs(5)).await;
            outcome = again().await;
        }
        assert_eq!(
            outcome.status, 200,
            "request {i} ({device:?}) answered 503 during the outage and {} afterwards",
            outcome.status
        );
        received.push((i, outcome.certificate.unwrap()));
    }
    eprintln!(
        "{} retried after the outage, {busy} of them still reserved at first",
        retry.len()
    );

    // Nothing half-recorded: every certificate received is in the registry,
    // every device holds exactly the one it received.
    for (i, (serial, fingerprint)) in &received {
        let record = registry.find_presented(serial, fingerprint).await.unwrap();
        assert!(
            record.is_some(),
            "request {i}: {serial} delivered but not recorded"
        );
        if let Some(device) = &items[*i].0 {
            let history = registry.device_certificates(device).await.unwrap();
            assert_eq!(
                history.len(),
                1,
                "{device}: a token yielded {}",
                history.len()
            );
            assert_eq!(&history[0].certificate.serial, serial, "{device}");
        }
    }
    assert_eq!(received.len(), items.len());
    for server in &servers {
        assert!(!server.log().contains("panicked"), "{}", server.log());
    }
    eprintln!(
        "postgres restart under load: {} retried after the outage, {:?} in all",
        retry.len(),
        started.elapsed()
    );
}

/// What the fake device of [`an_unacknowledged_certificate_is_sent_again_by_the_next_leader`] saw.
enum DeviceEvent {
    /// A `crt_res` arrived (the certificate's serial, lower-case hex).
    Certificate(String),
}

/// A PEM CSR for device `id` (its CN and DNS SAN as enrolled), the key in
/// `dir/next.key`.
fn next_csr(dir: &Path, id: &str) -> String {
    let csr = Csr::new(
        dir,
        "next",
        KeyType::P256,
        &format!("/CN={id}"),
        &[&format!("subjectAltName=DNS:{id}.example")],
    );
    let b64 = std::fs::read_to_string(&csr.b64).unwrap();
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n")
}

/// A token request that reserved its device and then lost the database
/// (held at recording its certificate while PostgreSQL stops) answers 503
/// and cannot give its reservation back then. Once the database is back the
/// server gives it back by itself, so the device's retry succeeds within
/// seconds instead of meeting 409 for the reservation's 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_left_by_a_database_outage_is_given_back() {
    let pg = Arc::new(Postgres::start());
    let url = pg.create_database("reservation");
    let server = fleet_server(&url, None);
    let registry = PostgresRegistry::open(PostgresOptions::from_url(&url).unwrap())
        .await
        .unwrap();
    let (device, token) =
        est_server::devices::provision("SN-HELD".to_owned(), String::new(), None, None);
    assert!(registry.add_devices(vec![device]).await.unwrap()[0]);
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "held", KeyType::P256, "/CN=SN-HELD", &[]);
    let body = Arc::new(std::fs::read(&csr.b64).unwrap());
    let credentials = Arc::new(format!("SN-HELD:{}", token.as_str()));
    let anonymous = tls(&server.ca_pem(), None);
    let path = "/.well-known/est/simpleenroll";
    let enroll = || {
        let (addr, tls, credentials, body) = (
            server.addr.clone(),
            anonymous.clone(),
            credentials.clone(),
            body.clone(),
        );
        async move { post(&addr, tls, path, Some(&credentials), &body).await.0 }
    };

    let held = hold_certificates(&pg, "reservation");
    let request = tokio::spawn(enroll());
    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting_at_certificates(&pg, "reservation") == 0 {
        assert!(
            Instant::now() < deadline && !request.is_finished(),
            "the enrollment never waited at the certificates table (finished: {}):\n{}",
            request.is_finished(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Within the statement timeout (5 s), so the request fails by the outage.
    on_cluster(&pg, Postgres::stop).await;
    drop(held);
    assert_eq!(request.await.unwrap(), 503, "the outage answers 503");
    on_cluster(&pg, Postgres::start_again).await;

    let back = Instant::now();
    let mut seen = Vec::new();
    loop {
        let status = enroll().await;
        seen.push(status);
        if status == 200 {
            break;
        }
        assert!(
            [409, 503].contains(&status) && back.elapsed() < Duration::from_secs(10),
            "the token still answers {status} {:?} after the database came back: {seen:?}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "the reserved token enrolls {:?} after the database is back ({seen:?})",
        back.elapsed()
    );
}

/// Runs `step` (`Postgres::stop`, say: it waits for `pg_ctl`) off the runtime.
async fn on_cluster(pg: &Arc<Postgres>, step: fn(&Postgres)) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || step(&pg))
        .await
        .unwrap();
}

/// Blocks every write to the certificates table of database `name` until
/// released: issuances and reinstatements wait at their first write.
fn hold_certificates(pg: &Postgres, name: &str) -> est_e2e::postgres::Held {
    pg.hold(name, "LOCK TABLE certificates IN SHARE ROW EXCLUSIVE MODE")
}

/// How many statements wait at the lock of [`hold_certificates`].
fn waiting_at_certificates(pg: &Postgres, name: &str) -> usize {
    pg.query(
        name,
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'certificates'::regclass",
    )
    .parse()
    .unwrap()
}

/// What the test tells the fake device to answer to a `crt_res`.
enum DeviceReply {
    /// `crt_ack` for this serial.
    Ack(String),
    /// `crt_err` with this error, keeping the old certificate.
    Reject(String),
}

impl From<String> for DeviceReply {
    fn from(serial: String) -> Self {
        Self::Ack(serial)
    }
}

/// A device that answers `csr_req` with `csr_pem` and reports every
/// `crt_res`; it acknowledges (or rejects) only once told to by `ack`.
fn fake_device(
    port: u16,
    dir: &Path,
    ca: &Path,
    client_id: &str,
    csr_pem: String,
    events: std::sync::mpsc::Sender<DeviceEvent>,
    ack: std::sync::mpsc::Receiver<DeviceReply>,
) -> std::thread::JoinHandle<()> {
    let (cert, key, ca, id) = (
        dir.join("device.pem"),
        dir.join("device.key"),
        ca.to_path_buf(),
        client_id.to_owned(),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &std::fs::read(&ca).unwrap()[..]) {
                roots.add(c.unwrap()).unwrap();
            }
            let chain = rustls_pemfile::certs(&mut &std::fs::read(&cert).unwrap()[..])
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut &std::fs::read(&key).unwrap()[..])
                .unwrap()
                .unwrap();
            let tls = rustls::ClientConfig::builder_with_provider(
                rustls::crypto::aws_lc_rs::default_provider().into(),
            )
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
            let mut options = rumqttc::MqttOptions::new(&id, "127.0.0.1", port);
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
            ));
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
            let topic = |step: &str| format!("management/topic/{id}/{step}");
            for step in ["csr_req", "crt_res"] {
                client
                    .subscribe(topic(step), rumqttc::QoS::AtLeastOnce)
                    .await
                    .unwrap();
            }
            let until = Instant::now() + Duration::from_secs(150);
            while Instant::now() < until {
                match ack.try_recv() {
                    Ok(reply) => {
                        let (step, body) = match reply {
                            DeviceReply::Ack(serial) => (
                                "crt_ack",
                                serde_json::to_vec(&est_wire::rotation::CertificateAck { serial }),
                            ),
                            DeviceReply::Reject(error) => (
                                "crt_err",
                                serde_json::to_vec(&est_wire::rotation::CertificateError {
                                    error,
                                    serial: None,
                                }),
                            ),
                        };
                        client
                            .publish(topic(step), rumqttc::QoS::AtLeastOnce, false, body.unwrap())
                            .await
                            .unwrap();
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                let event =
                    tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)))) = event
                else {
                    if let Ok(Err(_)) = event {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                };
                if publish.topic.ends_with("/csr_req") {
                    let body = serde_json::to_vec(&est_wire::rotation::CsrResponse {
                        csr: csr_pem.clone(),
                        serial: None,
                    })
                    .unwrap();
                    client
                        .publish(topic("csr_res"), rumqttc::QoS::AtLeastOnce, false, body)
                        .await
                        .unwrap();
                } else if publish.topic.ends_with("/crt_res") {
                    let response: est_wire::rotation::CertificateResponse =
                        serde_json::from_slice(&publish.payload).unwrap();
                    let pem = tempfile::NamedTempFile::new().unwrap();
                    std::fs::write(pem.path(), response.certificate_pem).unwrap();
                    let _ = events.send(DeviceEvent::Certificate(serial_of(pem.path())));
                }
            }
        });
    })
}

/// The leader dies after the device got its new certificate but before the
/// device acknowledged it: the other server takes the lead, sends the same
/// certificate again (nothing new is issued), and the late `crt_ack`
/// finishes the rotation and retires the predecessor.
#[test]
fn an_unacknowledged_certificate_is_sent_again_by_the_next_leader() {
    let pg = Postgres::start();
    let url = pg.create_database("unacked");
    let (leader, follower, broker) = rotation_pair(&url);
    let dir = tempfile::tempdir().unwrap();
    enroll(&follower, dir.path(), Some("iot"), "rot-unacked");
    let old = serial(dir.path())
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let csr_pem = next_csr(dir.path(), "rot-unacked");
    let (events_tx, events) = std::sync::mpsc::channel();
    let (ack, ack_rx) = std::sync::mpsc::channel();
    let device = fake_device(
        broker.port,
        dir.path(),
        &follower.ca_pem(),
        "rot-unacked",
        csr_pem,
        events_tx,
        ack_rx,
    );
    let DeviceEvent::Certificate(new) = events
        .recv_timeout(Duration::from_secs(40))
        .unwrap_or_else(|_| {
            panic!(
                "no crt_res: {:?}\n{}\n{}",
                rotation_of(&follower, "rot-unacked"),
                leader.log(),
                follower.log()
            )
        });
    assert_eq!(
        rotation_state(&follower, "rot-unacked"),
        "issued",
        "{:?}\nFOLLOWER {}\nLEADER {}",
        rotation_of(&follower, "rot-unacked"),
        follower.log(),
        leader.log()
    );
    let leader_log = leader.log();
    let _stopped = leader.stop();
    let killed = Instant::now();
    // The next leader sends the same certificate again (the dead leader
    // may have resent it once just before it died: wait for the follower's).
    while !follower.log().contains("certificate sent again") {
        let Ok(DeviceEvent::Certificate(again)) = events.recv_timeout(Duration::from_secs(80))
        else {
            panic!(
                "not sent again after the leader died: {:?}\n{}",
                rotation_of(&follower, "rot-unacked"),
                follower.log()
            )
        };
        assert_eq!(
            again,
            new,
            "the same certificate, nothing new issued: {:?}\nFOLLOWER {}\nLEADER {}",
            rotation_of(&follower, "rot-unacked"),
            follower.log(),
            leader_log
        );
    }
    assert!(leads(&follower), "{}", follower.log());
    eprintln!(
        "certificate sent again {:?} after the leader was killed",
        killed.elapsed()
    );
    ack.send(new.clone().into()).unwrap();
    // (With this test's 60-day window the new certificate is itself due at
    // once, so the record may move on to its rotation right after.)
    assert!(
        wait_for(Duration::from_secs(20), || state_of(&follower, &old)
            == "superseded+retired"),
        "{:?}\n{}",
        rotation_of(&follower, "rot-unacked"),
        follower.log()
    );
    assert_eq!(state_of(&follower, &new), "active");
    assert!(
        follower
            .log()
            .contains("rotation complete: device acknowledged"),
        "{}",
        follower.log()
    );
    drop(ack);
    drop(events);
    let _ = device.join();
}

/// Both servers receive every device message, so both handle each
/// `csr_res`, and on a busy database both can be inside the issuance at
/// once. The one that loses must leave the rotation record to the one that
/// issued: written after the winner's, its copy would take the record back
/// from `issued` to `requested`, the device's `crt_ack` would be refused and
/// the rotation would wait for the next audit (seen once in CI).
///
/// The race is made certain: the test locks the certificates table, so each
/// server's issuance for each device waits at the same statement, and
/// records every write to the rotations table with a trigger. No write may
/// carry the loser's error, whichever order the two land in.
#[test]
fn the_server_that_loses_a_csr_race_leaves_the_record_alone() {
    const DEVICES: usize = 3;
    let pg = Postgres::start();
    let url = pg.create_database("race");
    let (leader, follower, broker) = rotation_pair(&url);
    pg.psql(
        "race",
        "CREATE TABLE rotation_writes AS SELECT * FROM rotations WHERE false;
         CREATE FUNCTION log_rotation_write() RETURNS trigger AS $$
           BEGIN INSERT INTO rotation_writes SELECT NEW.*; RETURN NEW; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER rotation_writes AFTER INSERT OR UPDATE ON rotations
           FOR EACH ROW EXECUTE FUNCTION log_rotation_write();",
    );
    let mut devices = Vec::new();
    let mut enrolled = Vec::new();
    for n in 0..DEVICES {
        let id = format!("rot-race-{n}");
        let dir = tempfile::tempdir().unwrap();
        enroll(&follower, dir.path(), Some("iot"), &id);
        enrolled.push(
            serial(dir.path())
                .trim_start_matches("serial=")
                .to_ascii_lowercase(),
        );
        devices.push((id, dir));
    }
    let lock = hold_certificates(&pg, "race");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for (id, dir) in &devices {
        let csr_pem = next_csr(dir.path(), id);
        let (events_tx, events) = std::sync::mpsc::channel();
        let (ack, ack_rx) = std::sync::mpsc::channel();
        let device = fake_device(
            broker.port,
            dir.path(),
            &follower.ca_pem(),
            id,
            csr_pem,
            events_tx,
            ack_rx,
        );
        // Acknowledge every certificate as soon as it arrives, until told
        // to stop (dropping `ack` then ends the device).
        let stop = stop.clone();
        let acker = std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match events.recv_timeout(Duration::from_millis(200)) {
                    Ok(DeviceEvent::Certificate(serial)) => {
                        if ack.send(serial.into()).is_err() {
                            break;
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        threads.push((device, acker));
    }
    // Both servers wait at the lock for every device.
    let waiting = || waiting_at_certificates(&pg, "race");
    let both = wait_for(Duration::from_secs(40), || waiting() >= 2 * DEVICES);
    let seen = waiting();
    lock.release();
    assert!(
        both,
        "{seen} issuances waiting at the lock, not {}:\nLEADER {}\nFOLLOWER {}",
        2 * DEVICES,
        leader.log(),
        follower.log()
    );
    for old in &enrolled {
        assert!(
            wait_for(Duration::from_secs(30), || state_of(&follower, old)
                == "superseded+retired"),
            "{old} not retired: {}\nLEADER {}\nFOLLOWER {}",
            follower.admin(&["rotations", "--json"]),
            leader.log(),
            follower.log()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written_back = pg.query(
        "race",
        "SELECT client_id || ' ' || state || ': ' || last_error FROM rotation_writes \
         WHERE last_error IS NOT NULL",
    );
    let (leader_log, follower_log) = (leader.log(), follower.log());
    let lost = leader_log
        .matches("csr_res handled by another server")
        .count()
        + follower_log
            .matches("csr_res handled by another server")
            .count();
    eprintln!("{DEVICES} devices rotated; {lost} csr_res races lost and left alone");
    assert!(
        written_back.is_empty(),
        "the server that lost the race wrote the record:\n{written_back}\nLEADER {leader_log}\nFOLLOWER {follower_log}"
    );
    for (device, acker) in threads {
        let _ = acker.join();
        let _ = device.join();
    }
}

/// A device's `crt_err` reaches both servers; the operator's webhook hears
/// of it once. The test holds the certificates table until both servers
/// wait at it (each has read the record and is reinstating the old
/// certificate), so both finish together and only the conditional write
/// of the rotation record decides which one reports.
#[test]
fn a_rejected_certificate_is_reported_once_by_two_servers() {
    let pg = Postgres::start();
    let url = pg.create_database("rejected");
    let (hook_port, hook) = est_e2e::webhook::webhook_receiver();
    let (leader, follower, broker) = rotation_pair_with(
        &url,
        &format!("webhook = \"http://127.0.0.1:{hook_port}/rotation\"\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    enroll(&follower, dir.path(), Some("iot"), "rot-rejects");
    let old = serial(dir.path())
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let csr_pem = next_csr(dir.path(), "rot-rejects");
    let (events_tx, events) = std::sync::mpsc::channel();
    let (reply, reply_rx) = std::sync::mpsc::channel();
    let device = fake_device(
        broker.port,
        dir.path(),
        &follower.ca_pem(),
        "rot-rejects",
        csr_pem,
        events_tx,
        reply_rx,
    );
    let Ok(DeviceEvent::Certificate(new)) = events.recv_timeout(Duration::from_secs(40)) else {
        panic!(
            "no crt_res: {:?}\nLEADER {}\nFOLLOWER {}",
            rotation_of(&follower, "rot-rejects"),
            leader.log(),
            follower.log()
        );
    };
    let lock = hold_certificates(&pg, "rejected");
    reply
        .send(DeviceReply::Reject(
            "the new certificate does not verify".into(),
        ))
        .unwrap();
    let waiting = || waiting_at_certificates(&pg, "rejected");
    let both = wait_for(Duration::from_secs(30), || waiting() >= 2);
    lock.release();
    assert!(
        both,
        "both servers did not wait at the lock:\nLEADER {}\nFOLLOWER {}",
        leader.log(),
        follower.log()
    );
    // Every report for this successor, over a few seconds (the next
    // attempt's successor, if any, has another serial).
    let mut reports = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(body) = hook.recv_timeout(left) else {
            break;
        };
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["newSerial"].as_str().map(str::to_ascii_lowercase) == Some(new.clone()) {
            reports.push(report);
        }
    }
    assert_eq!(
        reports.len(),
        1,
        "{reports:?}\nLEADER {}\nFOLLOWER {}",
        leader.log(),
        follower.log()
    );
    assert_eq!(reports[0]["event"], "rotation_failed");
    assert_eq!(reports[0]["error"], "the new certificate does not verify");
    // The refused successor is taken back and the old certificate kept
    // (the 60-day window may already have started the next attempt, which
    // supersedes it again).
    assert_eq!(state_of(&follower, &new), "revoked");
    assert!(
        ["active", "superseded"].contains(&state_of(&follower, &old).as_str()),
        "{}",
        state_of(&follower, &old)
    );
    drop(reply);
    drop(events);
    let _ = device.join();
}
