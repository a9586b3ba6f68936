//! Structured logs: `--log-format json` (here via `EST_LOG_FORMAT`) writes
//! one JSON object per line, and every line of a request carries its id.

use est_e2e::*;

#[test]
fn json_logs_carry_the_request_id() {
    let server = Server::start_with_env(&config_with(""), None, &[("EST_LOG_FORMAT", "json")]);
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "json", KeyType::P256, "/CN=json-logs", &[]);
    enroll_basic(&server, None, &csr, &work.path().join("c.pem"));
    // A refused request is logged too, under its own id.
    let refused = post_csr(
        &server,
        None,
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:Sup3rS3cretGuess"],
    );
    assert_eq!(refused.status, 401);

    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let issued = lines
        .iter()
        .find(|l| l["fields"]["message"] == "issued certificate")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(issued["span"]["name"], "request", "{issued}");
    let issued_id = issued["span"]["id"].as_u64().expect("request id");
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["message"] == "refused")
        .unwrap_or_else(|| panic!("{log}"));
    let refused_id = refusal["span"]["id"].as_u64().expect("request id");
    assert_ne!(issued_id, refused_id);
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Sup3rS3cretGuess"))
        .collect();
    assert!(leaks.is_empty(), "a password reached the log: {leaks:?}");
}
