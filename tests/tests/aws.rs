//! The AWS IoT backend against a real AWS emulator (moto, with the project's
//! patches in tests/moto/est_moto.py) — no Rust-side mocks of AWS.

use est_e2e::*;

/// A server whose `fleet` label issues through AWS IoT (moto).
fn aws_server(moto: &Moto, extra_env: &[(&str, &str)]) -> Server {
    let config = config_with(&format!(
        "[aws]\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\nmax_attempts = 2\noperation_timeout = \"10s\"\n\
         [labels.fleet]\nbackend = \"aws-iot\"\npolicy = \"FleetPolicy\"\nca_bundle = \"{ca}\"\n\
         auth = [\"basic\", \"device-token\"]\nretire_grace = \"1h\"\n[cvm]\nlabel = \"fleet\"\n",
        endpoint = moto.endpoint,
        ca = moto.ca_pem.display()
    ))
    .replace("realm = \"estrealm\"", "realm = \"estrealm\"\nretire_sweep_interval = \"1s\"");
    let mut env: Vec<(&str, String)> = moto.env();
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    moto.boto("iot.create_policy(policyName='FleetPolicy', policyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 'iot:Connect', 'Resource': '*'}]}))");
    Server::start_with_env(&config, None, &env_refs)
}

fn add_device(server: &Server, id: &str) -> String {
    let out = server.admin(&["devices", "add", id, "--label", "fleet"]);
    out.trim().rsplit(' ').next().unwrap().to_owned()
}

fn certificate_count(moto: &Moto) -> usize {
    moto.boto("print(len(iot.list_certificates()['certificates']))")
        .trim()
        .parse()
        .unwrap()
}

fn fingerprint(pem_path: &std::path::Path) -> String {
    let der = openssl(&[
        "x509",
        "-in",
        &pem_path.display().to_string(),
        "-outform",
        "DER",
    ]);
    String::from_utf8(openssl_with_input(&["dgst", "-sha256", "-r"], Some(&der)))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn token_enrollment_creates_certificate_thing_policy_and_attachment() {
    let moto = Moto::start();
    let server = aws_server(&moto, &[]);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "AWS-0001");
    let csr = Csr::new(work.path(), "a", KeyType::P256, "/CN=AWS-0001", &[]);
    let response = post_csr(
        &server,
        Some("fleet"),
        "simpleenroll",
        &csr.b64,
        &["-u", &format!("AWS-0001:{token}")],
    );
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        server.log()
    );
    let cert = work.path().join("a.pem");
    std::fs::write(&cert, pkcs7_to_pem(&response.body)).unwrap();
    // Signed by the (patched) AWS CA, for the device's own key.
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &moto.ca_pem.display().to_string(),
        &cert.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&verified).contains(": OK"));
    let id = fingerprint(&cert);
    let out = moto.boto(&format!(
        "d = iot.describe_certificate(certificateId='{id}')['certificateDescription']\n\
         print(d['status'])\n\
         print(iot.list_thing_principals(thingName='AWS-0001')['principals'])\n\
         print([p['policyName'] for p in iot.list_attached_policies(target=d['certificateArn'])['policies']])"
    ));
    assert!(out.contains("ACTIVE"), "{out}");
    assert!(
        out.contains(&id),
        "certificate attached to thing AWS-0001: {out}"
    );
    assert!(out.contains("FleetPolicy"), "{out}");
    let show = server.admin(&["devices", "show", "AWS-0001"]);
    assert!(
        show.contains(&format!("id {id}")),
        "registry records the AWS certificate id: {show}"
    );
    // /cacerts on the label serves the configured bundle.
    let cacerts = server.curl(&[&format!("{}/cacerts", server.base(Some("fleet")))]);
    assert!(pkcs7_to_pem(&cacerts.body).contains("BEGIN CERTIFICATE"));

    // Replay: 403 and no new AWS certificate.
    let before = certificate_count(&moto);
    let again = Csr::new(work.path(), "b", KeyType::P256, "/CN=AWS-0001", &[]);
    let response = post_csr(
        &server,
        Some("fleet"),
        "simpleenroll",
        &again.b64,
        &["-u", &format!("AWS-0001:{token}")],
    );
    assert_eq!(response.status, 403);
    assert_eq!(certificate_count(&moto), before);
}

#[test]
fn concurrent_token_replays_create_exactly_one_aws_certificate() {
    let moto = Moto::start();
    let server = aws_server(&moto, &[]);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "AWS-RACE");
    let before = certificate_count(&moto);
    let csrs: Vec<Csr> = (0..20)
        .map(|i| {
            Csr::new(
                work.path(),
                &format!("r{i}"),
                KeyType::P256,
                "/CN=AWS-RACE",
                &[],
            )
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = csrs
            .iter()
            .map(|csr| {
                let server = &server;
                let token = &token;
                scope.spawn(move || {
                    post_csr(
                        server,
                        Some("fleet"),
                        "simpleenroll",
                        &csr.b64,
                        &["-u", &format!("AWS-RACE:{token}")],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        certificate_count(&moto),
        before + 1,
        "exactly one AWS certificate"
    );
}

#[test]
fn reenroll_keeps_thing_and_policy_and_retires_the_predecessor_after_proof() {
    let moto = Moto::start();
    let server = aws_server(&moto, &[]);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "AWS-ROT");
    let first = Csr::new(work.path(), "f", KeyType::P256, "/CN=AWS-ROT", &[]);
    let response = post_csr(
        &server,
        Some("fleet"),
        "simpleenroll",
        &first.b64,
        &["-u", &format!("AWS-ROT:{token}")],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let cert1 = work.path().join("1.pem");
    std::fs::write(&cert1, pkcs7_to_pem(&response.body)).unwrap();

    let next = Csr::new(work.path(), "n", KeyType::P256, "/CN=AWS-ROT", &[]);
    let (c1, k1) = (cert1.display().to_string(), first.key.display().to_string());
    let response = post_csr(
        &server,
        Some("fleet"),
        "simplereenroll",
        &next.b64,
        &["--cert", &c1, "--key", &k1],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let cert2 = work.path().join("2.pem");
    std::fs::write(&cert2, pkcs7_to_pem(&response.body)).unwrap();
    let (id1, id2) = (fingerprint(&cert1), fingerprint(&cert2));
    let principals =
        moto.boto("print(iot.list_thing_principals(thingName='AWS-ROT')['principals'])");
    assert!(
        principals.contains(&id1) && principals.contains(&id2),
        "both attached until proof: {principals}"
    );
    let arn2 = moto.boto(&format!("print(iot.describe_certificate(certificateId='{id2}')['certificateDescription']['certificateArn'])"));
    let policies = moto.boto(&format!(
        "print([p['policyName'] for p in iot.list_attached_policies(target='{}')['policies']])",
        arn2.trim()
    ));
    assert!(
        policies.contains("FleetPolicy"),
        "same policy on the successor: {policies}"
    );

    // The device uses the successor: the predecessor is retired by the sweeper.
    let (c2, k2) = (cert2.display().to_string(), next.key.display().to_string());
    let response = server.curl(&[
        "--cert",
        &c2,
        "--key",
        &k2,
        &format!("{}/cacerts", server.base(Some("fleet"))),
    ]);
    assert_eq!(response.status, 200);
    let mut gone = false;
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let out = moto.boto(&format!(
            "try:\n    iot.describe_certificate(certificateId='{id1}')\n    print('present')\nexcept iot.exceptions.ResourceNotFoundException:\n    print('deleted')"
        ));
        if out.contains("deleted") {
            gone = true;
            break;
        }
    }
    assert!(
        gone,
        "predecessor deleted in AWS after proof: {}",
        server.log()
    );
    let principals =
        moto.boto("print(iot.list_thing_principals(thingName='AWS-ROT')['principals'])");
    assert!(
        !principals.contains(&id1) && principals.contains(&id2),
        "{principals}"
    );
    let listing = server.admin(&["certs", "list"]);
    assert!(listing.contains("superseded+retired"), "{listing}");
}

#[test]
fn failure_after_create_is_compensated_and_the_token_stays_usable() {
    let moto = Moto::start();
    let server = aws_server(&moto, &[("EST_FAULT_INJECTION", "after-create")]);
    let work = tempfile::tempdir().unwrap();
    let token = add_device(&server, "AWS-FAIL");
    let before = certificate_count(&moto);
    let csr = Csr::new(work.path(), "x", KeyType::P256, "/CN=AWS-FAIL", &[]);
    let response = post_csr(
        &server,
        Some("fleet"),
        "simpleenroll",
        &csr.b64,
        &["-u", &format!("AWS-FAIL:{token}")],
    );
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        !response.text().contains("injected"),
        "backend detail is logged, not leaked"
    );
    assert_eq!(
        certificate_count(&moto),
        before,
        "no orphan certificate in AWS"
    );
    let show = server.admin(&["devices", "show", "AWS-FAIL"]);
    assert!(show.contains("state:        unused"), "{show}");
    // Same token, healthy backend: enrolls.
    let server = server.stop().start_with_env(
        &moto
            .env()
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    );
    let response = post_csr(
        &server,
        Some("fleet"),
        "simpleenroll",
        &csr.b64,
        &["-u", &format!("AWS-FAIL:{token}")],
    );
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn serverkeygen_and_json_facade_on_aws() {
    let moto = Moto::start();
    let server = aws_server(&moto, &[]);
    let work = tempfile::tempdir().unwrap();
    // EST serverkeygen -> CreateKeysAndCertificate.
    let csr = Csr::new(work.path(), "k", KeyType::P256, "/CN=AWS-KEYLESS", &[]);
    let response = post_csr(
        &server,
        Some("fleet"),
        "serverkeygen",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response
        .header_exact("Content-Type")
        .unwrap()
        .starts_with("multipart/mixed"));
    let principals =
        moto.boto("print(iot.list_thing_principals(thingName='AWS-KEYLESS')['principals'])");
    assert!(principals.contains("arn:aws:iot"), "{principals}");

    // JSON façade without CSR on the AWS label.
    let token = add_device(&server, "AWS-CVM");
    let body = work.path().join("req.json");
    std::fs::write(
        &body,
        format!(r#"{{"serial":"AWS-CVM","token":"{token}"}}"#),
    )
    .unwrap();
    let response = server.curl(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", body.display()),
        &server.url("/cvm/v1/certificates"),
    ]);
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    assert!(
        text.contains("privateKeyPem") && text.contains("certificateId"),
        "{text}"
    );
    let principals =
        moto.boto("print(iot.list_thing_principals(thingName='AWS-CVM')['principals'])");
    assert!(principals.contains("arn:aws:iot"), "{principals}");
}

#[test]
fn two_servers_share_one_dynamodb_registry() {
    let moto = Moto::start();
    let env = moto.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let shared = format!(
        "[registry]\nkind = \"dynamodb\"\ntable = \"shared-registry\"\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n\
         [labels.shared]\nprofile = \"device\"\nauth = [\"device-token\"]\n",
        moto.endpoint
    );
    // The table exists before any server starts (as an operator would create it).
    let setup = tempfile::tempdir().unwrap();
    let setup_config = setup.path().join("est-server.toml");
    std::fs::write(
        &setup_config,
        config_with(&shared).replace("@BOOTSTRAP@", "[]"),
    )
    .unwrap();
    let output = std::process::Command::new(server_binary())
        .args(["registry", "create-table", "--config"])
        .arg(&setup_config)
        .envs(env_refs.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let server_a = Server::start_with_env(&config_with(&shared), None, &env_refs);
    let ca_dir = server_a.path("ca");
    let server_b = Server::start_with_env(
        &config_with(&format!("{shared}[ca]\ndir = \"{}\"\n", ca_dir.display())),
        None,
        &env_refs,
    );
    let out = server_a.admin_env(&["devices", "add", "SHARED-1", "--label", "shared"], &env);
    let token = out.trim().rsplit(' ').next().unwrap().to_owned();

    let work = tempfile::tempdir().unwrap();
    let csrs: Vec<Csr> = (0..20)
        .map(|i| {
            Csr::new(
                work.path(),
                &format!("s{i}"),
                KeyType::P256,
                "/CN=SHARED-1",
                &[],
            )
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = csrs
            .iter()
            .enumerate()
            .map(|(i, csr)| {
                let server = if i % 2 == 0 { &server_a } else { &server_b };
                let token = &token;
                scope.spawn(move || {
                    post_csr(
                        server,
                        Some("shared"),
                        "simpleenroll",
                        &csr.b64,
                        &["-u", &format!("SHARED-1:{token}")],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}\n{}",
        server_a.log()
    );
    // Either server sees the device enrolled, with one certificate.
    let show = server_b.admin_env(&["devices", "show", "SHARED-1"], &env);
    assert!(show.contains("state:        enrolled"), "{show}");
    assert_eq!(
        show.matches("auth=device-token:SHARED-1").count(),
        1,
        "{show}"
    );
}
