//! Durability: kill -9 the server 30 seconds into an enrollment load, restart
//! it, and check that every certificate a client received is in the registry
//! and that no one-time token produced two certificates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use est_e2e::*;

#[test]
fn every_certificate_received_before_a_kill_9_is_in_the_registry() {
    let config = config_with("").replace(
        "[enroll]\nprofile = \"device\"\n[labels.edgeca]",
        "[labels.edgeca]",
    ) + "[enroll]\nprofile = \"device\"\nauth = [\"basic\", \"device-token\"]\n";
    let server = Server::start_with(&config, None);
    let work = tempfile::tempdir().unwrap();
    // Devices with one-time tokens, one per enrollment attempt.
    let csv = work.path().join("devices.csv");
    let ids: Vec<String> = (0..4_000).map(|i| format!("DUR-{i:04}")).collect();
    std::fs::write(&csv, ids.join("\n")).unwrap();
    let tokens_file = work.path().join("tokens.csv");
    server.admin(&[
        "devices",
        "import",
        &csv.display().to_string(),
        "--tokens-out",
        &tokens_file.display().to_string(),
    ]);
    let tokens: Vec<(String, String)> = std::fs::read_to_string(&tokens_file)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (id, token) = l.split_once(',').unwrap();
            (id.to_owned(), token.to_owned())
        })
        .collect();
    let key = work.path().join("k.pem");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &key.display().to_string(),
    ]);

    let received = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for worker in 0..6 {
            let (server, tokens, received, next, stop, key, work) =
                (&server, &tokens, &received, &next, &stop, &key, &work);
            scope.spawn(move || {
                let dir = work.path().join(format!("w{worker}"));
                std::fs::create_dir_all(&dir).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    // Every token is sent twice, by different workers: a replay race.
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, token)) = tokens.get(i / 2) else {
                        break;
                    };
                    let csr = Csr::for_key(&dir, id, key, &format!("/CN={id}"), &[]);
                    let response = post_csr(
                        server,
                        None,
                        "simpleenroll",
                        &csr.b64,
                        &["-u", &format!("{id}:{token}")],
                    );
                    if response.status == 200 {
                        received
                            .lock()
                            .unwrap()
                            .push((id.clone(), pkcs7_to_pem(&response.body)));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(30));
        assert!(
            next.load(Ordering::Relaxed) < 2 * tokens.len(),
            "the load ran out of tokens before the kill"
        );
        // kill -9 while requests are in flight.
        let pid = server.pid();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let received = received.into_inner().unwrap();
    assert!(
        received.len() > 10,
        "the load issued certificates before the kill: {}",
        received.len()
    );
    eprintln!("{} certificates delivered before kill -9", received.len());

    let server = server.restart();
    let listing = server.admin(&["certs", "list", "--limit", "100000"]);
    let pem_dir = tempfile::tempdir().unwrap();
    for (n, (id, pem)) in received.iter().enumerate() {
        let path = pem_dir.path().join(format!("{n}.pem"));
        std::fs::write(&path, pem).unwrap();
        let serial = x509(&path, &["-serial"])
            .trim()
            .trim_start_matches("serial=")
            .to_ascii_lowercase();
        assert!(
            listing.contains(&serial),
            "certificate {serial} of {id} was delivered but is not in the registry"
        );
    }
    // No token produced two certificates, in the registry or on the wire.
    for id in &ids {
        let recorded = listing
            .matches(&format!("auth=device-token:{id}\n"))
            .count();
        let delivered = received.iter().filter(|(r, _)| r == id).count();
        assert!(
            recorded <= 1 && delivered <= 1,
            "{id}: {recorded} recorded, {delivered} delivered"
        );
    }
    server.assert_healthy();
}

/// 1,000 concurrent enrollments replaying one token, split across two server
/// processes that share one SQLite registry: exactly one certificate.
#[test]
fn a_thousand_replays_of_one_token_across_two_processes_yield_one_certificate() {
    let shared_registry = tempfile::tempdir().unwrap();
    let registry_path = shared_registry.path().join("registry.sqlite");
    let tables = format!(
        "[registry]\npath = \"{}\"\n[labels.fleet]\nprofile = \"device\"\nauth = [\"device-token\"]\n\
         [limits]\nmax_connections = 4096\nmax_connections_per_address = 4096\n\
         failures_per_minute_per_address = 100000\n",
        registry_path.display()
    );
    let server_a = Server::start_with(&config_with(&tables), None);
    let ca_dir = server_a.path("ca");
    let server_b = Server::start_with(
        &config_with(&format!("{tables}[ca]\ndir = \"{}\"\n", ca_dir.display())),
        None,
    );
    let out = server_a.admin(&["devices", "add", "RACE-1000", "--label", "fleet"]);
    let token = out.trim().rsplit(' ').next().unwrap().to_owned();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcomes: Vec<Result<(), u16>> = runtime.block_on(async {
        let key =
            est_wire::keys::SigningKey::generate(est_wire::keys::KeyAlgorithm::EcP256).unwrap();
        let spec = est_wire::csr::CsrSpec {
            subject: "CN=RACE-1000".parse().unwrap(),
            ..Default::default()
        };
        let csr = std::sync::Arc::new(est_wire::csr::build(&spec, &key).unwrap());
        let clients: Vec<_> = [&server_a, &server_b]
            .iter()
            .map(|server| {
                let mut config = est_client::client::EstClientConfig::new(
                    format!("localhost:{}", server.addr.rsplit(':').next().unwrap()),
                    est_client::transport::ServerTrust::Anchors(
                        est_client::transport::read_certs(&server.ca_pem()).unwrap(),
                    ),
                );
                config.label = Some("fleet".into());
                config.basic = Some(("RACE-1000".into(), token.clone().into()));
                config.timeout = Duration::from_secs(120);
                std::sync::Arc::new(est_client::client::EstClient::new(config).unwrap())
            })
            .collect();
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let (client, csr) = (clients[i % 2].clone(), csr.clone());
                tokio::spawn(async move {
                    match client
                        .simpleenroll(est_client::client::CsrSource::Der(&csr))
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(est_client::client::ClientError::Server { status, .. }) => Err(status),
                        Err(other) => panic!("request failed outside HTTP: {other}"),
                    }
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    });
    let issued = outcomes.iter().filter(|o| o.is_ok()).count();
    let mut refusals = std::collections::BTreeMap::new();
    for status in outcomes.iter().filter_map(|o| o.err()) {
        *refusals.entry(status).or_insert(0) += 1;
    }
    assert_eq!(issued, 1, "refusals: {refusals:?}");
    // 403 once the token is used, 409 (retry) while a request holds it.
    assert!(
        refusals.keys().all(|s| *s == 403 || *s == 409),
        "only 403 or 409 for the replays: {refusals:?}"
    );
    let show = server_b.admin(&["devices", "show", "RACE-1000"]);
    assert_eq!(
        show.matches("auth=device-token:RACE-1000").count(),
        1,
        "{show}"
    );
    server_a.assert_healthy();
    server_b.assert_healthy();
}
