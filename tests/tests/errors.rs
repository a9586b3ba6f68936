//! Every malformed or refused input gets a clear 4xx and the server stays healthy.

use std::io::Write;
use std::process::{Command, Stdio};

use est_e2e::*;

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn b64(bytes: &[u8]) -> Vec<u8> {
    openssl_with_input(&["base64"], Some(bytes))
}

#[test]
fn malformed_bodies_are_400_with_a_reason() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let good = Csr::new(work.path(), "g", KeyType::P256, "/CN=good", &[]);
    let der = std::fs::read(&good.der).unwrap();
    let mut bad_signature = der.clone();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    let mut trailing = der.clone();
    trailing.extend_from_slice(b"garbage");
    let rsa1024 = Csr::new(work.path(), "weak", KeyType::Rsa(1024), "/CN=weak", &[]);
    let k256 = Csr::new(work.path(), "k256", KeyType::Secp256k1, "/CN=k256", &[]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "invalid base64 characters",
            b"MIIB*&^%$#@!\n".to_vec(),
            "base64",
        ),
        ("empty body", Vec::new(), "empty"),
        (
            "not DER",
            b64(b"this is not a certification request"),
            "DER",
        ),
        ("truncated DER", b64(&der[..der.len() / 2]), "DER"),
        ("trailing garbage", b64(&trailing), "DER"),
        ("raw DER instead of base64", der.clone(), "base64"),
        ("bad signature", b64(&bad_signature), "signature"),
        ("RSA-1024", std::fs::read(&rsa1024.b64).unwrap(), "2048"),
        ("secp256k1", std::fs::read(&k256.b64).unwrap(), "secp256k1"),
    ];
    for (name, body, reason) in cases {
        let path = write(work.path(), "body", &body);
        let response = post_csr(
            &server,
            None,
            "simpleenroll",
            &path,
            &["-u", "estuser:estpwd"],
        );
        assert_eq!(response.status, 400, "{name}: {}", response.text());
        assert!(
            response.text().contains(reason),
            "{name}: `{}` lacks `{reason}`",
            response.text()
        );
        assert_eq!(
            response.header_exact("Content-Type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
    }
    server.assert_healthy();
}

/// Signs a CSR whose CN is `value` under `tag`, with `sans` DNS names, using est-wire
/// (openssl will not produce these malformed subjects).
fn crafted_csr(tag: der::Tag, value: &[u8], sans: usize) -> Vec<u8> {
    use der::asn1::{Ia5String, SetOfVec};
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
    let atv = AttributeTypeAndValue {
        oid: const_oid::db::rfc4519::COMMON_NAME,
        value: der::Any::new(tag, value.to_vec()).unwrap(),
    };
    let spec = est_wire::csr::CsrSpec {
        subject: RdnSequence(vec![RelativeDistinguishedName(
            SetOfVec::try_from(vec![atv]).unwrap(),
        )]),
        subject_alt_names: (0..sans)
            .map(|i| GeneralName::DnsName(Ia5String::new(&format!("n{i}.example")).unwrap()))
            .collect(),
        ..Default::default()
    };
    let key = est_wire::keys::SigningKey::generate(est_wire::keys::KeyAlgorithm::EcP256).unwrap();
    est_wire::csr::build(&spec, &key).unwrap()
}

#[test]
fn nul_bytes_invalid_utf8_and_10000_sans_are_refused() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cases = [
        (
            "NUL in CN",
            crafted_csr(der::Tag::Utf8String, b"evil\x00.example.com", 0),
            "control",
        ),
        (
            "invalid UTF-8 in CN",
            crafted_csr(der::Tag::Utf8String, b"\xc3\x28", 0),
            "not valid text",
        ),
        (
            "150 SANs",
            crafted_csr(der::Tag::Utf8String, b"many", 150),
            "subjectAltName",
        ),
        // 10,000 SANs do not even fit the 64 KiB body limit.
        (
            "10,000 SANs",
            crafted_csr(der::Tag::Utf8String, b"many", 10_000),
            "exceeds 65536 bytes",
        ),
    ];
    for (name, der, reason) in cases {
        let path = write(
            work.path(),
            "crafted.b64",
            est_wire::body::encode(&der).as_bytes(),
        );
        let response = post_csr(
            &server,
            None,
            "simpleenroll",
            &path,
            &["-u", "estuser:estpwd"],
        );
        let expected = if name.starts_with("10,000") { 413 } else { 400 };
        assert_eq!(response.status, expected, "{name}: {}", response.text());
        assert!(
            response.text().contains(reason),
            "{name}: {}",
            response.text()
        );
    }
    // The same builder with a sane subject is accepted, so the refusals above are about the content.
    let good = crafted_csr(der::Tag::Utf8String, b"crafted-ok", 2);
    let path = write(
        work.path(),
        "good.b64",
        est_wire::body::encode(&good).as_bytes(),
    );
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &path,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn wrong_or_missing_media_type_is_415() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "m", KeyType::P256, "/CN=m", &[]);
    let url = format!("{}/simpleenroll", server.base(None));
    let data = format!("@{}", csr.b64.display());
    for content_type in [
        "Content-Type: text/plain",
        "Content-Type: application/pkcs7-mime",
        "Content-Type:",
    ] {
        let response = server.curl(&[
            "-u",
            "estuser:estpwd",
            "-H",
            content_type,
            "--data-binary",
            &data,
            &url,
        ]);
        assert_eq!(response.status, 415, "{content_type}: {}", response.text());
        assert!(response.text().contains("application/pkcs10"));
    }
}

#[test]
fn oversized_bodies_are_413() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let big = write(work.path(), "big", &vec![b'A'; 10 * 1024 * 1024]);
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &big,
        &["-u", "estuser:estpwd"],
    );
    assert!(
        response.status == 413 || response.status == 0,
        "{}",
        response.status
    );
    let just_over = write(work.path(), "over", &vec![b'A'; 64 * 1024 + 1]);
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &just_over,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 413);
    // Chunked: no Content-Length up front, the limit still holds.
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &just_over,
        &["-u", "estuser:estpwd", "-H", "Transfer-Encoding: chunked"],
    );
    assert_eq!(response.status, 413, "{}", response.text());
    server.assert_healthy();
}

#[test]
fn paths_outside_the_est_tree_are_404_and_wrong_methods_405() {
    let server = Server::start();
    let long_label = "a".repeat(10 * 1024);
    for path in [
        "/".to_owned(),
        "/.well-known/est/unknown-label/cacerts".to_owned(),
        "/.well-known/est/../../etc/passwd".to_owned(),
        "/.well-known/est/../cacerts".to_owned(),
        "/.well-known/est/%2e%2e/cacerts".to_owned(),
        format!("/.well-known/est/{long_label}/cacerts"),
        "/.well-known/est/edgeca/extra/cacerts".to_owned(),
    ] {
        let response = server.curl(&["--path-as-is", &server.url(&path)]);
        assert_eq!(response.status, 404, "{}", &path[..path.len().min(60)]);
    }
    let response = server.curl(&[&format!("{}/simpleenroll", server.base(None))]);
    assert_eq!(response.status, 405);
    assert_eq!(response.header_exact("Allow").as_deref(), Some("POST"));
    let response = server.curl(&["-X", "POST", &format!("{}/cacerts", server.base(None))]);
    assert_eq!(response.status, 405);
    let response = server.curl(&[
        "-u",
        "estuser:estpwd",
        "-X",
        "POST",
        &format!("{}/serverkeygen", server.base(None)),
    ]);
    assert_eq!(
        response.status, 415,
        "serverkeygen takes a PKCS#10 body like simpleenroll"
    );
    server.assert_healthy();
}

#[test]
fn huge_headers_are_refused() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let header = write(
        work.path(),
        "h",
        format!("X-Big: {}\r\n", "b".repeat(1024 * 1024)).as_bytes(),
    );
    let response = server.curl(&[
        "-H",
        &format!("@{}", header.display()),
        &format!("{}/cacerts", server.base(None)),
    ]);
    assert!(
        response.status == 431 || response.status == 0,
        "{}",
        response.status
    );
    server.assert_healthy();
}

#[test]
fn slow_bodies_time_out_with_408() {
    let server = Server::start_with(
        &config_with("[limits]\nbody_timeout = \"2s\"\nheader_timeout = \"2s\"\n"),
        None,
    );
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
            &server.ca_pem().display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin
        .write_all(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic ZXN0dXNlcjplc3Rwd2Q=\r\nContent-Type: application/pkcs10\r\nContent-Length: 1000\r\n\r\nMIIB")
        .unwrap();
    stdin.flush().unwrap();
    let started = std::time::Instant::now();
    let stdout = client.stdout.take().unwrap();
    let output = std::thread::spawn(move || read_all(stdout));
    std::thread::sleep(std::time::Duration::from_secs(4));
    drop(stdin);
    let text = output.join().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    server.assert_healthy();
}

#[test]
fn legacy_tls_is_refused_and_garbage_is_survived() {
    let server = Server::start();
    let url = format!("{}/cacerts", server.base(None));
    let response = server.curl(&["--tls-max", "1.1", "--tlsv1.0", &url]);
    assert_eq!(response.status, 0, "TLS 1.0/1.1 must not connect");
    let response = server.curl(&["--tls-max", "1.2", "--tlsv1.2", &url]);
    assert_eq!(
        response.status, 200,
        "TLS 1.2 stays enabled: {}",
        response.stderr
    );
    let response = server.curl(&["--tlsv1.3", &url]);
    assert_eq!(response.status, 200);

    // Plain bytes before any handshake.
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage")
        .unwrap();
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = read_all(&mut stream);
    server.assert_healthy();
}

#[test]
fn approval_holds_enrollment_with_202_until_an_operator_decides() {
    let server = Server::start_with(
        &config_with(
            "[labels.held]\nprofile = \"device\"\nrequire_approval = true\nretry_after = \"7s\"\n",
        ),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "h", KeyType::P256, "/CN=held-device", &[]);
    let response = post_csr(
        &server,
        Some("held"),
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.header_exact("Retry-After").as_deref(), Some("7"));
    let again = post_csr(
        &server,
        Some("held"),
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(again.status, 202);

    let listing = server.admin(&["pending", "list"]);
    let id = listing.split_whitespace().next().unwrap().to_owned();
    assert!(
        listing.contains("CN=held-device") && listing.contains("pending"),
        "{listing}"
    );
    server.admin(&["pending", "approve", &id]);
    let issued = post_csr(
        &server,
        Some("held"),
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(issued.status, 200, "{}", issued.text());
    // A retry after issuance gets the same certificate, not a second one.
    let repeat = post_csr(
        &server,
        Some("held"),
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(repeat.status, 200);
    assert_eq!(pkcs7_to_pem(&issued.body), pkcs7_to_pem(&repeat.body));

    let other = Csr::new(work.path(), "r", KeyType::P256, "/CN=rejected-device", &[]);
    assert_eq!(
        post_csr(
            &server,
            Some("held"),
            "simpleenroll",
            &other.b64,
            &["-u", "estuser:estpwd"]
        )
        .status,
        202
    );
    let listing = server.admin(&["pending", "list"]);
    let id = listing
        .lines()
        .find(|l| l.contains("rejected-device"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    server.admin(&["pending", "reject", &id]);
    let refused = post_csr(
        &server,
        Some("held"),
        "simpleenroll",
        &other.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(refused.status, 403);
    assert!(refused.text().contains("rejected"));
}

#[test]
fn a_bad_config_fails_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[tls]\ncert = \"a\"\nkey = \"b\"\n[enroll]\nprofile = \"missing\"\n",
    )
    .unwrap();
    let output = Command::new(server_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("enroll.profile"), "{stderr}");
    std::fs::write(
        &config,
        "[tls]\ncert = \"a\"\nkey = \"b\"\n[enroll]\nauth = [\"telepathy\"]\n",
    )
    .unwrap();
    let output = Command::new(server_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("auth") && stderr.contains("telepathy"),
        "{stderr}"
    );
}
