//! The OCSP responder on the EST port, checked with `openssl ocsp`: good,
//! revoked (time and reason), unknown; signed by the issuing CA; nonce
//! echoed; POST and GET.

use std::path::Path;
use std::process::Command;

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
