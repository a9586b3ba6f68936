//! cacerts, simpleenroll, labels and csrattrs, driven by curl + openssl.

use est_e2e::*;

#[test]
fn cacerts_serves_the_chain_with_exact_headers() {
    let server = Server::start();
    let response = server.curl(&[&format!("{}/cacerts", server.base(None))]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_exact("Content-Type").as_deref(),
        Some("application/pkcs7-mime")
    );
    assert_eq!(
        response
            .header_exact("Content-Transfer-Encoding")
            .as_deref(),
        Some("base64")
    );
    assert!(
        response.header_exact("Content-Length").is_some(),
        "{}",
        response.headers
    );
    assert!(!response.headers.to_ascii_lowercase().contains("chunked"));
    let text = response.text();
    assert!(text.ends_with('\n'));
    assert!(text.lines().all(|l| l.len() <= 64), "64-column base64");

    let pem = pkcs7_to_pem(&response.body);
    assert_eq!(count_certs(&pem), 2, "issuing CA + root");
    let work = tempfile::tempdir().unwrap();
    let chain = work.path().join("chain.pem");
    std::fs::write(&chain, &pem).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &server.ca_pem().display().to_string(),
        &chain.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&verified).contains(": OK"));
}

#[test]
fn cacerts_answers_200_with_credentials_and_client_certificate() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "d", KeyType::P256, "/CN=edge-device", &[]);
    let cert = work.path().join("d.pem");
    enroll_basic(&server, None, &csr, &cert);
    let response = server.curl(&[
        "-u",
        "estuser:estpwd",
        "--cert",
        &cert.display().to_string(),
        "--key",
        &csr.key.display().to_string(),
        &format!("{}/cacerts", server.base(Some("edgeca"))),
    ]);
    assert_eq!(response.status, 200);
}

#[test]
fn simpleenroll_p256_issues_a_verifiable_client_certificate() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(
        work.path(),
        "dev",
        KeyType::P256,
        "/CN=device-0001/O=Fleet",
        &["subjectAltName=DNS:device-0001.example,URI:urn:dev:0001"],
    );
    let response = post_csr(
        &server,
        None,
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header_exact("Content-Type").as_deref(),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    assert_eq!(
        response
            .header_exact("Content-Transfer-Encoding")
            .as_deref(),
        Some("base64")
    );
    let pem = pkcs7_to_pem(&response.body);
    assert_eq!(count_certs(&pem), 1, "only the issued certificate");
    let cert = work.path().join("dev.pem");
    std::fs::write(&cert, &pem).unwrap();

    let chain = work.path().join("chain.pem");
    let cacerts = server.curl(&[&format!("{}/cacerts", server.base(None))]);
    std::fs::write(&chain, pkcs7_to_pem(&cacerts.body)).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &server.ca_pem().display().to_string(),
        "-untrusted",
        &chain.display().to_string(),
        "-purpose",
        "sslclient",
        &cert.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&verified).contains(": OK"));

    let text = x509(&cert, &["-text"]);
    assert!(text.contains("CN = device-0001"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("DNS:device-0001.example"), "{text}");
    assert!(text.contains("URI:urn:dev:0001"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    // The certificate certifies the CSR's own key.
    let cert_key = openssl(&[
        "x509",
        "-in",
        &cert.display().to_string(),
        "-noout",
        "-pubkey",
    ]);
    let csr_key = openssl(&["pkey", "-in", &csr.key.display().to_string(), "-pubout"]);
    assert_eq!(cert_key, csr_key);
    // 16-byte positive serial.
    let serial = x509(&cert, &["-serial"]);
    assert_eq!(
        serial.trim().trim_start_matches("serial=").len(),
        32,
        "{serial}"
    );
}

#[test]
fn simpleenroll_accepts_rsa_2048_and_p384() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    for (name, key) in [("rsa", KeyType::Rsa(2048)), ("p384", KeyType::P384)] {
        let csr = Csr::new(work.path(), name, key, &format!("/CN={name}-device"), &[]);
        let pem = enroll_basic(
            &server,
            None,
            &csr,
            &work.path().join(format!("{name}.pem")),
        );
        assert_eq!(count_certs(&pem), 1);
    }
}

#[test]
fn enrollment_is_recorded_before_the_response() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "rec", KeyType::P256, "/CN=recorded", &[]);
    let cert = work.path().join("rec.pem");
    enroll_basic(&server, None, &csr, &cert);
    let serial = x509(&cert, &["-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let listing = server.admin(&["certs", "list"]);
    let line = listing
        .lines()
        .find(|l| l.starts_with(&serial))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        line.contains("active") && line.contains("CN=recorded") && line.contains("basic:estuser"),
        "{line}"
    );
}

#[test]
fn label_selects_the_profile_and_csr_cannot_ask_for_more() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    // The Edge CA label issues CA:true, pathlen 0.
    let csr = Csr::new(
        work.path(),
        "edgeca",
        KeyType::P256,
        "/CN=aziot-edge CA edge-ca-1",
        &[
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "keyUsage=critical,keyCertSign",
        ],
    );
    let cert = work.path().join("edgeca.pem");
    enroll_basic(&server, Some("edgeca"), &csr, &cert);
    let text = x509(&cert, &["-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");

    // The device label ignores a CSR that asks for CA:true and extra usages.
    let csr = Csr::new(
        work.path(),
        "greedy",
        KeyType::P256,
        "/CN=greedy",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,keyCertSign,digitalSignature",
            "extendedKeyUsage=serverAuth,codeSigning",
        ],
    );
    let cert = work.path().join("greedy.pem");
    enroll_basic(&server, None, &csr, &cert);
    let text = x509(&cert, &["-text"]);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");
    assert!(
        !text.contains("Code Signing") && !text.contains("Server Authentication"),
        "{text}"
    );
}

/// `/csrattrs` as openssl's asn1parse reads it.
fn csrattrs_text(server: &Server, label: Option<&str>) -> String {
    let response = server.curl(&[&format!("{}/csrattrs", server.base(label))]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header_exact("Content-Type").as_deref(),
        Some("application/csrattrs")
    );
    let der = openssl_with_input(&["base64", "-d"], Some(&response.body));
    String::from_utf8(openssl_with_input(
        &["asn1parse", "-inform", "DER"],
        Some(&der),
    ))
    .unwrap()
}

#[test]
fn csrattrs_says_what_the_profile_wants_and_is_204_only_when_configured_empty() {
    let server = Server::start_with(
        &config_with(
            "[labels.attrs]
profile = \"device\"
csrattrs = [\"1.2.840.113549.1.9.7\", \"1.2.840.10045.4.3.2\"]\n\
             [labels.none]\nprofile = \"device\"\ncsrattrs = []\n\
             [labels.bound]\nprofile = \"device\"\nchannel_binding = \"require\"\n\
             [profiles.rsa]\nkey_algorithm = \"rsa2048\"\n[labels.rsa]\nprofile = \"rsa\"\n",
        ),
        None,
    );
    // From the profile (RFC 7030 §4.5.2, RFC 9908): EC P-256 key, ECDSA with
    // SHA-256, an extensionRequest asking for clientAuth.
    let parsed = csrattrs_text(&server, None);
    for wanted in [
        "id-ecPublicKey",
        "prime256v1",
        "ecdsa-with-SHA256",
        "Extension Request",
        "X509v3 Extended Key Usage",
    ] {
        assert!(parsed.contains(wanted), "{wanted}: {parsed}");
    }
    assert!(!parsed.contains("challengePassword"), "{parsed}");
    let parsed = csrattrs_text(&server, Some("bound"));
    assert!(parsed.contains("challengePassword"), "{parsed}");
    let parsed = csrattrs_text(&server, Some("rsa"));
    assert!(parsed.contains("rsaEncryption"), "{parsed}");
    assert!(parsed.contains("sha256WithRSAEncryption"), "{parsed}");
    // Configured OIDs are served as configured.
    let parsed = csrattrs_text(&server, Some("attrs"));
    assert!(parsed.contains("challengePassword"), "{parsed}");
    assert!(parsed.contains("ecdsa-with-SHA256"), "{parsed}");
    assert!(!parsed.contains("id-ecPublicKey"), "{parsed}");
    // 204 only where a label explicitly configures none.
    let response = server.curl(&[&format!("{}/csrattrs", server.base(Some("none")))]);
    assert_eq!(response.status, 204);
}

#[test]
fn tolerant_base64_input_rfc8951() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "t", KeyType::P256, "/CN=tolerant", &[]);
    let wrapped = std::fs::read_to_string(&csr.b64).unwrap();
    let flat: String = wrapped.split_whitespace().collect();
    let variants = [
        ("one-line", flat.clone()),
        ("crlf", wrapped.replace('\n', "\r\n")),
        (
            "spaces-tabs",
            format!("  {}\t\n", wrapped.replace('\n', " \t\n")),
        ),
        (
            "pem",
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{wrapped}-----END CERTIFICATE REQUEST-----\n"
            ),
        ),
    ];
    for (name, body) in variants {
        let path = work.path().join(name);
        std::fs::write(&path, body).unwrap();
        let response = post_csr(
            &server,
            None,
            "simpleenroll",
            &path,
            &[
                "-u",
                "estuser:estpwd",
                "-H",
                "Content-Transfer-Encoding: binary",
            ],
        );
        assert_eq!(response.status, 200, "{name}: {}", response.text());
    }
}

#[test]
fn content_type_parameters_and_case_are_accepted() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "ct", KeyType::P256, "/CN=ct", &[]);
    let url = format!("{}/simpleenroll", server.base(None));
    let data = format!("@{}", csr.b64.display());
    let response = server.curl(&[
        "-u",
        "estuser:estpwd",
        "-H",
        "Content-Type: Application/PKCS10; charset=us-ascii",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn serverkeygen_returns_a_fresh_key_and_its_certificate() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(
        work.path(),
        "skg",
        KeyType::P256,
        "/CN=keyless-device",
        &["subjectAltName=DNS:keyless.example"],
    );
    let response = post_csr(
        &server,
        None,
        "serverkeygen",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let content_type = response.header_exact("Content-Type").unwrap();
    assert!(
        content_type.starts_with("multipart/mixed; boundary="),
        "{content_type}"
    );
    let boundary = content_type.split("boundary=").nth(1).unwrap().to_owned();
    let text = response.text();
    let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
    assert_eq!(
        parts.len(),
        4,
        "preamble, key, certificate, epilogue: {text}"
    );
    assert!(parts[1].contains("Content-Type: application/pkcs8\r\n"));
    assert!(parts[2].contains("Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n"));
    assert!(parts[3].starts_with("--"), "closing delimiter");
    let body = |part: &str| part.split("\r\n\r\n").nth(1).unwrap().trim().to_owned() + "\n";

    let key_der = openssl_with_input(&["base64", "-d"], Some(body(parts[1]).as_bytes()));
    let key_pub = openssl_with_input(&["pkey", "-inform", "DER", "-pubout"], Some(&key_der));
    let cert_pem = pkcs7_to_pem(body(parts[2]).as_bytes());
    assert_eq!(count_certs(&cert_pem), 1);
    let cert_pub = openssl_with_input(&["x509", "-pubkey", "-noout"], Some(cert_pem.as_bytes()));
    assert_eq!(
        key_pub, cert_pub,
        "the certificate certifies the returned key"
    );
    let csr_pub = openssl(&["pkey", "-in", &csr.key.display().to_string(), "-pubout"]);
    assert_ne!(key_pub, csr_pub, "a fresh key, not the CSR's");
    let subject = openssl_with_input(
        &["x509", "-noout", "-subject", "-ext", "subjectAltName"],
        Some(cert_pem.as_bytes()),
    );
    let subject = String::from_utf8(subject).unwrap();
    assert!(
        subject.contains("keyless-device") && subject.contains("keyless.example"),
        "{subject}"
    );
    // The server never logs the key.
    let key_b64 = body(parts[1]);
    assert!(!server.log().contains(key_b64.lines().nth(1).unwrap()));
}
