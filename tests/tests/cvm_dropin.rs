//! A drop-in for the AWS reference certificate vending machine: its device
//! table (in DynamoDB, on a real moto) imported, and a device written only
//! against the reference's documented response (tests/cvm/reference_device.py,
//! Python standard library) getting its certificate through
//! `GET /Prod/getcert?…` and connecting with it to a real Mosquitto.

use std::path::Path;
use std::process::Command;

use est_e2e::mosquitto::{publish_as, Mosquitto, ORCHESTRATOR};
use est_e2e::*;

const UNUSED: usize = 290;
const ENROLLED: usize = 10;

fn token(i: usize) -> String {
    format!("ref-token-{i:04}-{}", std::process::id())
}

/// Creates the reference's `deviceInfo` table in moto and fills it: unused
/// devices, devices already enrolled with a certificate created in moto IoT
/// from a CSR for their serial, and malformed rows.
fn fill_reference_table(moto: &Moto, work: &Path) {
    let mut csrs = Vec::new();
    for i in 0..ENROLLED {
        let csr = Csr::new(
            work,
            &format!("e{i}"),
            KeyType::P256,
            &format!("/CN=SN-E{i:03}"),
            &[],
        );
        let pem = openssl(&[
            "req",
            "-inform",
            "DER",
            "-in",
            &csr.der.display().to_string(),
        ]);
        csrs.push(String::from_utf8(pem).unwrap());
    }
    let input = serde_json::json!({
        "unused": (0..UNUSED).map(|i| [format!("SN-{i:04}"), token(i)]).collect::<Vec<_>>(),
        "enrolled": csrs.iter().enumerate().map(|(i, csr)| [format!("SN-E{i:03}"), token(10_000 + i), csr.clone()]).collect::<Vec<_>>(),
    });
    let input_path = work.join("table.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    moto.boto(&format!(
        r#"
data = json.load(open({path:?}))
ddb.create_table(TableName='deviceInfo', KeySchema=[{{'AttributeName': 'serialNumber', 'KeyType': 'HASH'}}],
    AttributeDefinitions=[{{'AttributeName': 'serialNumber', 'AttributeType': 'S'}}], BillingMode='PAY_PER_REQUEST')
def put(item):
    ddb.put_item(TableName='deviceInfo', Item=item)
for serial, token in data['unused']:
    put({{'serialNumber': {{'S': serial}}, 'deviceToken': {{'S': token}}, 'applyState': {{'N': '0'}}, 'timestamp': {{'N': '1700000000000'}}}})
for serial, token, csr in data['enrolled']:
    created = iot.create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=True)
    put({{'serialNumber': {{'S': serial}}, 'deviceToken': {{'S': token}}, 'applyState': {{'N': '-1'}},
         'certID': {{'S': created['certificateId']}}, 'timestamp': {{'N': '1700000000000'}}}})
put({{'serialNumber': {{'S': 'BAD SERIAL'}}, 'deviceToken': {{'S': 'x'}}, 'applyState': {{'N': '0'}}}})
put({{'serialNumber': {{'S': 'SN-NOTOKEN'}}, 'applyState': {{'N': '0'}}}})
put({{'serialNumber': {{'S': 'SN-BADSTATE'}}, 'deviceToken': {{'S': 'x'}}, 'applyState': {{'S': 'done'}}}})
put({{'serialNumber': {{'S': 'SN-NOCERT'}}, 'deviceToken': {{'S': 'x'}}, 'applyState': {{'N': '-1'}}}})
put({{'serialNumber': {{'S': 'SN-GONE'}}, 'deviceToken': {{'S': 'x'}}, 'applyState': {{'N': '-1'}}, 'certID': {{'S': '{gone}'}}}})
print(ddb.scan(TableName='deviceInfo', Select='COUNT')['Count'])
"#,
        path = input_path.display().to_string(),
        gone = "0".repeat(64),
    ));
}

/// The reference device: `GET <api>?serialNumber=…&deviceToken=…`, files in `out`.
fn reference_device(
    api: &str,
    serial: &str,
    token: &str,
    trust: &Path,
    out: &Path,
) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cvm/reference_device.py");
    let output = Command::new("python3")
        .arg(script)
        .args([api, serial, token])
        .arg(trust)
        .arg(out)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn certificate_lines(server: &Server) -> usize {
    server
        .admin(&["certs", "list", "--limit", "100000"])
        .lines()
        .count()
}

#[test]
fn reference_table_imported_and_reference_device_enrolls_through_getcert() {
    let moto = Moto::start();
    let work = tempfile::tempdir().unwrap();
    fill_reference_table(&moto, work.path());

    let broker_port = Mosquitto::free_port();
    let config = config_with(&format!(
        "[aws]\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\n\
         [labels.fleet]\nprofile = \"device\"\nauth = [\"device-token\"]\n\
         [cvm]\nlabel = \"fleet\"\ngetcert_path = \"/Prod/getcert\"\n\
         [rotation]\nenabled = true\nbroker = \"127.0.0.1:{broker_port}\"\n\
         client_id = \"{ORCHESTRATOR}\"\nexpiring_within = \"1d\"\naudit_interval = \"1h\"\n",
        endpoint = moto.endpoint
    ))
    .replace(
        "realm = \"estrealm\"",
        "realm = \"estrealm\"\nadmin_listen = \"127.0.0.1:0\"",
    );
    let env = moto.env();
    let mut server_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    server_env.push(("EST_LOG", "debug"));
    let server = Server::start_with_env(&config, None, &server_env);
    let broker = Mosquitto::start(&server, broker_port);
    let import = |extra: &[&str]| import_table(&server, &env, extra);

    // Dry run: says what would change, writes nothing.
    let dry = import(&["--dry-run"]);
    assert!(dry.contains("dry run, nothing written"), "{dry}");
    assert!(
        dry.contains(&format!(
            "{UNUSED} devices added with unused tokens, {ENROLLED} added as enrolled"
        )),
        "{dry}"
    );
    assert!(
        dry.contains("SN-E000: add enrolled with certificate"),
        "{dry}"
    );
    assert!(!server.admin(&["devices", "list"]).contains("SN-"));

    let started = std::time::Instant::now();
    let report = import(&[]);
    let import_secs = started.elapsed().as_secs_f64();
    assert!(
        report.contains(&format!(
            "{UNUSED} devices added with unused tokens, {ENROLLED} added as enrolled, 0 already imported, 5 skipped"
        )),
        "{report}"
    );
    eprintln!(
        "import of {} rows: {import_secs:.2}s",
        UNUSED + ENROLLED + 5
    );
    // Idempotent.
    let again = import(&[]);
    assert!(
        again.contains(&format!(
            "0 devices added with unused tokens, 0 added as enrolled, {} already imported, 5 skipped",
            UNUSED + ENROLLED
        )),
        "{again}"
    );
    // Tokens are stored hashed only.
    let registry = std::fs::read(server.path("registry.sqlite")).unwrap();
    assert!(
        !registry
            .windows(token(7).len())
            .any(|w| w == token(7).as_bytes()),
        "a token in clear in the registry"
    );

    // The reference device gets its certificate and connects with it.
    let api = server.url("/Prod/getcert");
    let device_dir = work.path().join("sn-0007");
    let (ok, out) = reference_device(&api, "SN-0007", &token(7), &server.ca_pem(), &device_dir);
    assert!(ok, "{out}\n{}", server.log());
    let cert = device_dir.join("cert.pem");
    assert_eq!(
        out.trim(),
        fingerprint(&cert),
        "certificateId is the SHA-256 fingerprint on the local CA"
    );
    assert!(x509(&cert, &["-noout", "-subject"]).contains("CN = SN-0007"));
    assert!(
        publish_as(
            broker.port,
            "SN-0007",
            &cert,
            &device_dir.join("key.pem"),
            &device_dir.join("root.pem"),
            "management/topic/SN-0007/hello",
            b"hi",
        ),
        "the broker accepted the vended certificate: {}",
        broker.log()
    );
    assert!(broker.saw_client("SN-0007"), "{}", broker.log());

    // A replay gets a 4xx and creates nothing.
    let before = certificate_lines(&server);
    let (ok, out) = reference_device(
        &api,
        "SN-0007",
        &token(7),
        &server.ca_pem(),
        &work.path().join("replay"),
    );
    assert!(!ok && out.starts_with("HTTP 403"), "{out}");
    assert!(out.contains("\"error\""), "{out}");
    assert_eq!(certificate_lines(&server), before);

    // The token never reaches the log (EST_LOG=debug logs every request).
    assert!(server.log().contains("/Prod/getcert"), "{}", server.log());
    assert!(!server.log().contains(&token(7)), "token in the log");
    // Nor a metric label: the façade is counted by label and operation only.
    let metrics = curl(&[format!("http://{}/metrics", server.admin_addr())]).text();
    assert!(metrics.contains("operation=\"getcert\""), "{metrics}");
    assert!(!metrics.contains(&token(7)) && !metrics.contains("deviceToken"));

    // An imported, already-enrolled device is refused ...
    let (ok, out) = reference_device(
        &api,
        "SN-E003",
        &token(10_003),
        &server.ca_pem(),
        &work.path().join("e3"),
    );
    assert!(!ok && out.starts_with("HTTP 403"), "{out}");
    let show = server.admin(&["devices", "show", "SN-E003"]);
    assert!(show.contains("state:        enrolled"), "{show}");
    assert!(show.contains("auth=import:cvm-dynamodb"), "{show}");
    // ... and its certificate is known to the audit and rotatable.
    let audit = server.admin(&["audit", "--expiring-within", "36500d", "--json"]);
    let items: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let imported = items
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["deviceId"]
                .as_str()
                .is_some_and(|d| d.starts_with("SN-E"))
        })
        .count();
    assert_eq!(imported, ENROLLED, "{audit}");
    let rotate = server.admin(&[
        "rotate",
        "--expiring-within",
        "36500d",
        "--device",
        "SN-E003",
    ]);
    assert!(rotate.contains("requested  SN-E003"), "{rotate}");
    let rotations = server.admin(&["rotations"]);
    assert!(rotations.contains("SN-E003"), "{rotations}");

    // Unknown or malformed input: clear 4xx, JSON.
    let response = server.curl(&[&format!("{api}?serialNumber=SN-0008")]);
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("deviceToken"),
        "{}",
        response.text()
    );
    let response = server.curl(&["-X", "PUT", &api]);
    assert_eq!(response.status, 405);
    // The same fields in a JSON body (POST), with the device's own CSR: no keyPair.
    let csr = Csr::new(work.path(), "sn8", KeyType::P256, "/CN=SN-0008", &[]);
    let csr_pem = String::from_utf8(openssl(&[
        "req",
        "-inform",
        "DER",
        "-in",
        &csr.der.display().to_string(),
    ]))
    .unwrap();
    let body =
        serde_json::json!({"serialNumber": "SN-0008", "deviceToken": token(8), "csr": csr_pem})
            .to_string();
    let response = server.curl(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &api,
    ]);
    assert_eq!(response.status, 200, "{}", response.text());
    let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(answer.get("keyPair").is_none(), "{answer}");
    assert!(answer.get("certificateArn").is_none(), "{answer}");
    assert!(answer["certificatePem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(answer["RootCA"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

fn fingerprint(pem: &Path) -> String {
    let der = openssl(&["x509", "-in", &pem.display().to_string(), "-outform", "DER"]);
    String::from_utf8(openssl_with_input(&["dgst", "-sha256", "-r"], Some(&der)))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Runs `devices import --from-cvm-dynamodb deviceInfo --label fleet` with `extra`.
fn import_table(server: &Server, env: &[(&str, String)], extra: &[&str]) -> String {
    let mut args = vec![
        "devices",
        "import",
        "--from-cvm-dynamodb",
        "deviceInfo",
        "--label",
        "fleet",
    ];
    args.extend_from_slice(extra);
    server.admin_env(&args, env)
}

#[test]
fn on_aws_iot_with_a_dynamodb_registry_the_answer_carries_aws_ids() {
    let moto = Moto::start();
    let work = tempfile::tempdir().unwrap();
    fill_reference_table(&moto, work.path());
    moto.boto("iot.create_policy(policyName='FleetPolicy', policyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 'iot:Connect', 'Resource': '*'}]}))");
    let env = moto.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // What the label's devices trust for the MQTT endpoint (Amazon Root CA 1 on AWS).
    let amazon_root = work.path().join("amazon-root.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &work.path().join("amazon-root.key").display().to_string(),
        "-subj",
        "/CN=Stand-in Amazon Root CA 1",
        "-days",
        "30",
        "-out",
        &amazon_root.display().to_string(),
    ]);
    let extra = format!(
        "[registry]\nkind = \"dynamodb\"\ntable = \"est-registry\"\n\
         [aws]\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\n\
         [labels.fleet]\nbackend = \"aws-iot\"\npolicy = \"FleetPolicy\"\nca_bundle = \"{ca}\"\n\
         auth = [\"device-token\"]\n[cvm]\nlabel = \"fleet\"\ngetcert_path = \"/Prod/getcert\"\nroot_ca = \"{root}\"\n",
        endpoint = moto.endpoint,
        ca = moto.ca_pem.display(),
        root = amazon_root.display()
    );
    let setup = tempfile::tempdir().unwrap();
    let setup_config = setup.path().join("est-server.toml");
    std::fs::write(
        &setup_config,
        config_with(&extra).replace("@BOOTSTRAP@", "[]"),
    )
    .unwrap();
    let output = Command::new(server_binary())
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
    let server = Server::start_with_env(&config_with(&extra), None, &env_refs);

    let report = import_table(&server, &env, &[]);
    assert!(
        report.contains(&format!(
            "{UNUSED} devices added with unused tokens, {ENROLLED} added as enrolled, 0 already imported, 5 skipped"
        )),
        "{report}"
    );
    let again = import_table(&server, &env, &[]);
    assert!(
        again.contains(&format!("{} already imported", UNUSED + ENROLLED)),
        "{again}"
    );

    // The reference device: its certificate is ACTIVE, attached to its thing and the policy.
    let api = server.url("/Prod/getcert");
    let (ok, id) = reference_device(
        &api,
        "SN-0011",
        &token(11),
        &server.ca_pem(),
        &work.path().join("d11"),
    );
    assert!(ok, "{id}\n{}", server.log());
    let id = id.trim();
    assert_eq!(
        id,
        fingerprint(&work.path().join("d11/cert.pem")),
        "AWS's certificate id"
    );
    let out = moto.boto(&format!(
        "d = iot.describe_certificate(certificateId='{id}')['certificateDescription']\n\
         print(d['status'])\n\
         print(iot.list_thing_principals(thingName='SN-0011')['principals'])\n\
         print([p['policyName'] for p in iot.list_attached_policies(target=d['certificateArn'])['policies']])"
    ));
    assert!(
        out.contains("ACTIVE") && out.contains(id) && out.contains("FleetPolicy"),
        "{out}"
    );

    // The raw answer: the reference's fields, with AWS's ARN.
    let response = server.curl(&[&format!(
        "{api}?serialNumber=SN-0012&deviceToken={}",
        token(12)
    )]);
    assert_eq!(response.status, 200, "{}", response.text());
    let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    // In the reference's order (serde_json's map sorts, so read the raw text).
    let text = response.text();
    let positions: Vec<usize> = [
        "\"certificateArn\"",
        "\"certificateId\"",
        "\"certificatePem\"",
        "\"keyPair\"",
        "\"RootCA\"",
    ]
    .iter()
    .map(|key| {
        text.find(key)
            .unwrap_or_else(|| panic!("{key} missing: {text}"))
    })
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(answer.as_object().unwrap().len(), 5, "{text}");
    let arn = answer["certificateArn"].as_str().unwrap();
    assert!(arn.starts_with("arn:aws:iot:"), "{answer}");
    assert!(
        arn.ends_with(answer["certificateId"].as_str().unwrap()),
        "{answer}"
    );
    assert!(answer["keyPair"]["PrivateKey"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));
    assert!(answer["keyPair"]["PublicKey"]
        .as_str()
        .unwrap()
        .contains("PUBLIC KEY"));
    assert_eq!(
        answer["RootCA"].as_str().unwrap().trim(),
        std::fs::read_to_string(&amazon_root).unwrap().trim(),
        "RootCA is cvm.root_ca"
    );

    // Replay: 4xx, no new AWS certificate.
    let count = || moto.boto("print(len(iot.list_certificates()['certificates']))");
    let before = count();
    let (ok, out) = reference_device(
        &api,
        "SN-0011",
        &token(11),
        &server.ca_pem(),
        &work.path().join("r"),
    );
    assert!(!ok && out.starts_with("HTTP 403"), "{out}");
    assert_eq!(count(), before);

    // An imported enrolled device: refused; the registry holds its AWS certificate.
    let (ok, out) = reference_device(
        &api,
        "SN-E001",
        &token(10_001),
        &server.ca_pem(),
        &work.path().join("e1"),
    );
    assert!(!ok && out.starts_with("HTTP 403"), "{out}");
    let show = server.admin_env(&["devices", "show", "SN-E001"], &env);
    assert!(
        show.contains("state:        enrolled") && show.contains("auth=import:cvm-dynamodb"),
        "{show}"
    );
    let audit = server.admin_env(&["audit", "--expiring-within", "36500d", "--json"], &env);
    assert!(audit.contains("\"deviceId\": \"SN-E001\""), "{audit}");
}
