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

/// A cheap argon2id hash of `password` (`m_kib` KiB, one pass): debug
/// builds run argon2 some fifty times slower than release, where the
/// default cost takes about 18 ms.
fn cheap_hash(password: &str, m_kib: u32) -> String {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let params = argon2::Params::new(m_kib, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string()
}

fn loopback(third: u8, fourth: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, third, fourth])
}

fn median(mut samples: Vec<std::time::Duration>) -> std::time::Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

const ENROLL: &str = "/.well-known/est/simpleenroll";

/// Issue 11: 200 addresses, each guessing a password within its failure
/// budget, do not hold up one real login from another address. Password
/// checks take turns per address, and an address that has not been
/// checking goes first; with one queue for the whole server the login
/// waited behind every guess already queued.
#[test]
fn guessing_addresses_do_not_delay_a_real_login() {
    const ADDRESSES: usize = 200;
    const GUESSES: usize = 4;
    let config = config_with(&format!(
        "[[users]]\nname = \"fast\"\npassword_hash = \"{}\"\n[limits]\nfailures_per_minute_per_address = 10\n",
        cheap_hash("fastpwd", 1024)
    ));
    let server = Server::start_with(&config, None);
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "real", KeyType::P256, "/CN=real-login", &[]);
    let csr = std::fs::read(&csr.b64).unwrap();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let (login, guesses) = std::thread::scope(|scope| {
        let attackers: Vec<_> = (0..ADDRESSES)
            .map(|i| {
                let (server, answered) = (&server, &answered);
                scope.spawn(move || {
                    let mut client = RawClient::connect(server, loopback(1, i as u8 + 1));
                    (0..GUESSES)
                        .map(|guess| {
                            let response =
                                client.post(ENROLL, "fast", &format!("guess-{guess}"), b"x");
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            response.status
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        // Once every address had its first guess answered, the queue is full.
        let started = std::time::Instant::now();
        while answered.load(std::sync::atomic::Ordering::SeqCst) < ADDRESSES {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(300),
                "the first round of guesses did not end"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut client = RawClient::connect(&server, loopback(0, 2));
        let login = client.post(ENROLL, "fast", "fastpwd", &csr);
        let during = answered.load(std::sync::atomic::Ordering::SeqCst);
        let guesses: Vec<u16> = attackers
            .into_iter()
            .flat_map(|a| a.join().unwrap())
            .collect();
        ((login, during, started.elapsed()), guesses)
    });
    let (login, during, flood) = login;
    eprintln!(
        "real login: {} in {:?}, with {during} of {} guesses answered (flood {flood:?})",
        login.status,
        login.elapsed,
        ADDRESSES * GUESSES
    );
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(
        during < ADDRESSES * GUESSES,
        "the login ran while guesses were queued"
    );
    assert!(
        guesses.iter().all(|status| *status == 401),
        "every guess was judged (within its budget): {guesses:?}"
    );
    assert!(
        login.elapsed < std::time::Duration::from_millis(500),
        "the real login took {:?}",
        login.elapsed
    );
}

/// Argon2 memory stays bounded by the checker's buffers (one per CPU, 2
/// to 8, 19 MiB each at the default cost): 32 addresses checking
/// default-cost passwords at once grow the server by no more than that.
#[test]
fn concurrent_password_checks_keep_memory_bounded() {
    let server = Server::start();
    let kib = |field: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let before = kib("VmRSS:");
    std::thread::scope(|scope| {
        for i in 0..32u8 {
            let server = &server;
            scope.spawn(move || {
                let mut client = RawClient::connect(server, loopback(2, i + 1));
                assert_eq!(client.post(ENROLL, "estuser", "wrong", b"x").status, 401);
            });
        }
    });
    let (after, peak) = (kib("VmRSS:"), kib("VmHWM:"));
    let slots = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8) as u64;
    let bound = slots * 19 * 1024 + 12 * 1024;
    eprintln!(
        "server RSS {} MiB before, {} MiB after 32 concurrent checks (peak {} MiB, bound +{} MiB)",
        before / 1024,
        after / 1024,
        peak / 1024,
        bound / 1024
    );
    assert!(
        peak.saturating_sub(before) <= bound,
        "peak {peak} KiB, {before} KiB before"
    );
}

/// Issue 11: on a label that takes user passwords and device tokens, a
/// wrong password of a user, a wrong token of a device and a name that is
/// neither get the same answer after the same work (one argon2 check).
#[test]
fn failed_basic_logins_do_not_tell_which_names_exist() {
    let config = config_with(
        "[labels.both]\nprofile = \"device\"\nauth = [\"basic\", \"device-token\"]\n[limits]\nfailures_per_minute_per_address = 100000\ntoken_lockout_after = 100000\n",
    );
    // The default-cost hash, as deployed: with a cheap one the device's
    // failed-attempt write (which runs beside the check) would outlast the
    // check and the comparison would measure the disk, not the policy.
    let server = Server::start_with(&config, None);
    server.admin(&["devices", "add", "SN-ENUM", "--label", "both"]);
    let kinds = [
        ("known user, wrong password", "estuser", "wrong"),
        ("known device, wrong token", "SN-ENUM", "wrong-token"),
        ("unknown name", "SN-NOBODY", "whatever"),
    ];
    let mut client = RawClient::connect(&server, loopback(3, 1));
    let path = "/.well-known/est/both/simpleenroll";
    let mut samples = vec![Vec::new(); kinds.len()];
    let mut answers = std::collections::BTreeSet::new();
    for round in 0..105 {
        for (kind, (_, user, password)) in kinds.iter().enumerate() {
            let response = client.post(path, user, password, b"x");
            answers.insert((response.status, response.body.clone()));
            // The first rounds warm up caches and allocations.
            if round >= 5 {
                samples[kind].push(response.elapsed);
            }
        }
    }
    let medians: Vec<_> = samples.into_iter().map(median).collect();
    for ((kind, _, _), median) in kinds.iter().zip(&medians) {
        eprintln!("{kind}: median {median:?}");
    }
    assert_eq!(
        answers.into_iter().collect::<Vec<_>>(),
        [(
            401,
            "wrong user name, password or enrollment token\n".to_owned()
        )]
    );
    let (fastest, slowest) = (medians.iter().min().unwrap(), medians.iter().max().unwrap());
    assert!(
        slowest.as_secs_f64() <= fastest.as_secs_f64() * 1.2,
        "medians differ by more than 20 %: {medians:?}"
    );
}
