//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same functions the cargo-fuzz targets call, so every input the fuzzer ever
//! kept is a regression test in CI.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        count += 1;
    }
    assert!(count > 0, "empty corpus for {target}");
    eprintln!("{target}: replayed {count} inputs");
}

#[test]
fn csr_corpus() {
    replay("csr", est_server::fuzzing::csr);
}

#[test]
fn pkcs7_corpus() {
    replay("pkcs7", est_server::fuzzing::pkcs7);
}

#[test]
fn body_corpus() {
    replay("body", est_server::fuzzing::body);
}

#[test]
fn basic_auth_corpus() {
    replay("basic_auth", est_server::fuzzing::basic_auth);
}

#[test]
fn router_corpus() {
    replay("router", est_server::fuzzing::router);
}

#[test]
fn config_corpus() {
    replay("config", est_server::fuzzing::config);
}

#[test]
fn subject_corpus() {
    replay("subject", est_server::fuzzing::subject);
}
