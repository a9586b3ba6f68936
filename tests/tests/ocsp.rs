//! The OCSP responder on the EST port, checked with `openssl ocsp`: good,
//! revoked (time and reason), unknown; signed by the issuing CA; nonce
//! echoed; POST and GET.

use std::path::Path;
use std::process::Command;

use est_e2e::ca_tools::{crl_lists, start_fails_in};
use est_e2e::*;

/// `openssl ocsp` verifies the server's response to `req` (signature, chain,
/// nonce) and prints it; returns stdout + stderr.
fn check(server: &Server, req: &Path, resp: &Path) -> String {
    let issuing = server.path("ca/issuing-ca.pem").display().to_string();
    let root = server.path("ca/root-ca.pem").display().to_string();
    let mut command = Command::new("openssl");
    command
        .args(["ocsp", "-reqin"])
        .arg(req)
        .arg("-respin")
        .arg(resp)
        .args(["-VAfile", &issuing, "-CAfile", &root, "-resp_text"]);
    let output = command.output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn post(server: &Server, req: &Path, out: &Path) {
    let response = server.curl(&[
        "-H",
        "Content-Type: application/ocsp-request",
        "--data-binary",
        &format!("@{}", req.display()),
        &server.url("/ocsp"),
    ]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_exact("Content-Type").as_deref(),
        Some("application/ocsp-response")
    );
    std::fs::write(out, &response.body).unwrap();
}

fn request(server: &Server, target: &[&str], out: &Path) {
    let issuing = server.path("ca/issuing-ca.pem").display().to_string();
    let mut args = vec!["ocsp", "-issuer", &issuing];
    args.extend_from_slice(target);
    let out_text = out.display().to_string();
    args.extend_from_slice(&["-reqout", &out_text]);
    openssl(&args);
}

#[test]
fn ocsp_says_good_revoked_and_unknown_signed_by_the_issuing_ca_with_the_nonce() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let p = |name: &str| work.path().join(name);
    let good_csr = Csr::new(work.path(), "good", KeyType::P256, "/CN=ocsp-good", &[]);
    enroll_basic(&server, None, &good_csr, &p("good.pem"));
    let bad_csr = Csr::new(work.path(), "bad", KeyType::P256, "/CN=ocsp-bad", &[]);
    enroll_basic(&server, None, &bad_csr, &p("bad.pem"));
    server.admin(&["certs", "revoke", &serial_of(&p("bad.pem"))]);

    let good = p("good.pem").display().to_string();
    request(&server, &["-cert", &good], &p("good.req"));
    post(&server, &p("good.req"), &p("good.resp"));
    let text = check(&server, &p("good.req"), &p("good.resp"));
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(!text.contains("Nonce Verify error"), "{text}");
    assert!(text.contains("Cert Status: good"), "{text}");
    assert!(text.contains("Next Update"), "{text}");
    assert!(!text.contains("WARNING: no nonce"), "{text}");

    let bad = p("bad.pem").display().to_string();
    request(&server, &["-cert", &bad], &p("bad.req"));
    post(&server, &p("bad.req"), &p("bad.resp"));
    let text = check(&server, &p("bad.req"), &p("bad.resp"));
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("Cert Status: revoked"), "{text}");
    assert!(text.contains("Revocation Reason: unspecified"), "{text}");
    assert!(text.contains("Revocation Time"), "{text}");

    // A serial this CA never issued, asked by GET.
    request(&server, &["-serial", "0x0badc0ffee"], &p("unknown.req"));
    let encoded = String::from_utf8(openssl(&[
        "base64",
        "-A",
        "-in",
        &p("unknown.req").display().to_string(),
    ]))
    .unwrap()
    .trim()
    .replace('+', "%2B")
    .replace('/', "%2F")
    .replace('=', "%3D");
    let response = server.curl(&[&server.url(&format!("/ocsp/{encoded}"))]);
    assert_eq!(response.status, 200);
    std::fs::write(p("unknown.resp"), &response.body).unwrap();
    let text = check(&server, &p("unknown.req"), &p("unknown.resp"));
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("Cert Status: unknown"), "{text}");
    assert!(text.contains("OCSP Nonce"), "{text}");

    // Not an OCSP request: malformedRequest.
    std::fs::write(p("junk.req"), b"junk").unwrap();
    post(&server, &p("junk.req"), &p("junk.resp"));
    let output = Command::new("openssl")
        .args(["ocsp", "-resp_text", "-noverify", "-respin"])
        .arg(p("junk.resp"))
        .output()
        .unwrap();
    let resp_text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(resp_text.contains("malformedrequest"), "{resp_text}");
}

/// `openssl ocsp` against a URL: the whole client side (request with or
/// without a nonce, fetch, verify against `cafile`); stdout + stderr.
fn ask(url: &str, issuer: &Path, cert: &Path, cafile: &Path, nonce: bool, out: &Path) -> String {
    let mut command = Command::new("openssl");
    command
        .arg("ocsp")
        .arg("-issuer")
        .arg(issuer)
        .arg("-cert")
        .arg(cert)
        .args(["-url", url, "-resp_text", "-CAfile"])
        .arg(cafile)
        .arg("-respout")
        .arg(out);
    if !nonce {
        command.arg("-no_nonce");
    }
    let output = command.output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Issued certificates name the OCSP responder (AIA) and the CRL (CDP) on
/// the plain-HTTP listener; a delegated responder (its certificate in the
/// answer, id-kp-OCSPSigning, ocsp-nocheck) signs; answers without a nonce
/// are reused until the status changes; `certs revoke` shows in OCSP and
/// in the CRL within one second.
#[test]
fn status_urls_delegated_responder_and_revocation_within_a_second() {
    let port = Mosquitto::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = Server::start_with(
        &config_with(&format!(
            "[ca]\nocsp_url = \"{base}/ocsp\"\ncrl_url = \"{base}/crl\"\n\
             [revocation]\nocsp_signer = \"delegated\"\nlisten = \"127.0.0.1:{port}\"\n"
        )),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    let p = |name: &str| work.path().join(name);
    let csr = Csr::new(work.path(), "dev", KeyType::P256, "/CN=status-urls", &[]);
    enroll_basic(&server, None, &csr, &p("dev.pem"));
    let uri = String::from_utf8(openssl(&[
        "x509",
        "-noout",
        "-ocsp_uri",
        "-in",
        &p("dev.pem").display().to_string(),
    ]))
    .unwrap();
    assert_eq!(uri.trim(), format!("{base}/ocsp"));
    let text = x509(&p("dev.pem"), &["-text"]);
    assert!(text.contains("X509v3 CRL Distribution Points"), "{text}");
    assert!(text.contains(&format!("URI:{base}/crl")), "{text}");

    let issuing = server.path("ca/issuing-ca.pem");
    let chain = p("chain.pem");
    std::fs::write(
        &chain,
        [server.path("ca/root-ca.pem"), issuing.clone()]
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect::<String>(),
    )
    .unwrap();
    let url = uri.trim();
    let text = ask(url, &issuing, &p("dev.pem"), &chain, true, &p("n.resp"));
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("Cert Status: good"), "{text}");
    assert!(
        text.contains("OCSP Signing"),
        "delegated responder certificate: {text}"
    );
    assert!(text.contains("OCSP No Check"), "{text}");
    assert!(text.contains("OCSP responder"), "{text}");
    // Without a nonce the signed answer is reused (same bytes)…
    let first = ask(url, &issuing, &p("dev.pem"), &chain, false, &p("a.resp"));
    assert!(first.contains("Cert Status: good"), "{first}");
    let again = ask(url, &issuing, &p("dev.pem"), &chain, false, &p("b.resp"));
    assert!(again.contains("Response verify OK"), "{again}");
    assert_eq!(
        std::fs::read(p("a.resp")).unwrap(),
        std::fs::read(p("b.resp")).unwrap()
    );

    // …until the operator revokes: within a second OCSP (even the cached,
    // nonce-less question) and the CRL say so.
    let serial = serial_of(&p("dev.pem"));
    server.admin(&["certs", "revoke", &serial]);
    let revoked_at = std::time::Instant::now();
    let text = ask(url, &issuing, &p("dev.pem"), &chain, false, &p("c.resp"));
    let response = curl(&[format!("{base}/crl")]);
    let elapsed = revoked_at.elapsed();
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("Cert Status: revoked"), "{text}");
    assert_eq!(response.status, 200);
    std::fs::write(p("dev.crl"), &response.body).unwrap();
    let crl = String::from_utf8_lossy(&openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &p("dev.crl").display().to_string(),
        "-CAfile",
        &chain.display().to_string(),
        "-noout",
        "-text",
    ]))
    .into_owned();
    assert!(
        crl.to_ascii_lowercase()
            .contains(&serial.to_ascii_lowercase()),
        "{serial} not in {crl}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(1),
        "took {elapsed:?}"
    );
    eprintln!("revocation seen by OCSP and the CRL {elapsed:?} after `certs revoke` returned");
    // The listener serves only status.
    assert_eq!(
        curl(&[format!("{base}/.well-known/est/cacerts")]).status,
        404
    );
}

/// A further hierarchy (`[cas.edge]`, the Edge CA label) answers for its
/// own certificates: OCSP signed by its issuing CA, its CRL at `/crl/edge`.
#[test]
fn a_hierarchy_answers_ocsp_and_crl_for_its_own_certificates() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let p = |name: &str| work.path().join(name);
    let csr = Csr::new(
        work.path(),
        "edge",
        KeyType::P256,
        "/CN=aziot-edge CA ocsp-edge",
        &[
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "keyUsage=critical,keyCertSign",
        ],
    );
    enroll_basic(&server, Some("edgeca"), &csr, &p("edge.pem"));
    let serial = serial_of(&p("edge.pem"));
    server.admin(&["certs", "revoke", &serial]);
    let edge_issuing = server.path("edge-ca/issuing-ca.pem").display().to_string();
    let edge_root = server.path("edge-ca/root-ca.pem").display().to_string();
    let edge = p("edge.pem").display().to_string();
    let mut args = vec!["ocsp", "-issuer", &edge_issuing, "-cert", &edge];
    let req = p("edge.req").display().to_string();
    args.extend_from_slice(&["-reqout", &req]);
    openssl(&args);
    post(&server, &p("edge.req"), &p("edge.resp"));
    let output = Command::new("openssl")
        .args(["ocsp", "-reqin", &req, "-respin"])
        .arg(p("edge.resp"))
        .args([
            "-VAfile",
            &edge_issuing,
            "-CAfile",
            &edge_root,
            "-resp_text",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("Response verify OK"), "{text}");
    assert!(text.contains("Cert Status: revoked"), "{text}");

    let text = crl_lists(
        &server,
        "/crl/edge",
        &server.path("edge-ca/issuing-ca.pem"),
        &serial,
    );
    assert!(text.contains("EST Issuing CA (edge)"), "{text}");
    let response = server.curl(&[&server.url("/crl/edge")]);
    std::fs::write(p("edge.crl"), &response.body).unwrap();
    // The device CA's key did not sign the Edge CRL; no CA called `nope`.
    let output = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(p("edge.crl"))
        .args(["-CAfile"])
        .arg(server.path("ca/issuing-ca.pem"))
        .args(["-noout"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("verify failure")
            || !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(server.curl(&[&server.url("/crl/nope")]).status, 404);
}

/// The plain-HTTP OCSP/CRL listener keeps its limits: at most
/// `[revocation] max_connections` at once (more are closed at once, and
/// served again once the others go) and the header timeout closes a client
/// that never sends its request.
#[test]
fn the_plain_listener_caps_connections_and_times_out_idle_clients() {
    use std::io::{Read, Write};
    let port = Mosquitto::free_port();
    let server = Server::start_with(
        &config_with(&format!(
            "[limits]\nheader_timeout = \"2s\"\n\
             [revocation]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 2\n"
        )),
        None,
    );
    let addr = format!("127.0.0.1:{port}");
    let closed_within = |stream: &mut std::net::TcpStream, limit: std::time::Duration| {
        stream.set_read_timeout(Some(limit)).unwrap();
        match stream.read(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let started = std::time::Instant::now();
    let mut idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A third is closed at once, without an answer.
    let mut third = std::net::TcpStream::connect(&addr).unwrap();
    third
        .write_all(b"GET /crl HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok();
    third
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < std::time::Duration::from_millis(1800));
    // The idle ones are closed by the header timeout (2 s)…
    for stream in &mut idle {
        assert!(closed_within(stream, std::time::Duration::from_secs(5)));
    }
    let idle_for = started.elapsed();
    assert!(
        idle_for >= std::time::Duration::from_millis(1800)
            && idle_for < std::time::Duration::from_secs(6),
        "{idle_for:?}"
    );
    // …and then the listener serves again.
    let response = curl(&[format!("http://{addr}/crl")]);
    assert_eq!(response.status, 200);
    drop(server);
}

/// A taken port for the plain OCSP/CRL listener or the admin listener
/// stops the start with a message naming it. Both were bound in the
/// background: the server said it was ready, served EST, and only logged
/// that the other listener failed.
#[test]
fn a_taken_listener_port_stops_the_start() {
    starting_on_a_taken_port_fails(
        |port| config_with(&format!("[revocation]\nlisten = \"127.0.0.1:{port}\"\n")),
        "([revocation] listen)",
    );
    starting_on_a_taken_port_fails(
        |port| format!("admin_listen = \"127.0.0.1:{port}\"\n{}", config_with("")),
        "(admin_listen)",
    );
}

/// Starts `serve --dev` with `config(port)` while `port` is taken: the
/// start must fail, its stderr naming the port and `what`.
fn starting_on_a_taken_port_fails(config: impl Fn(u16) -> String, what: &str) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("est-server.toml"),
        config(port).replace("@BOOTSTRAP@", "[]"),
    )
    .unwrap();
    let stderr = start_fails_in(dir.path(), &[]);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} {what}")),
        "{stderr}"
    );
}
