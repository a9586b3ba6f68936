//! What each fuzz target exercises, shared by `fuzz/` (cargo fuzz) and the
//! corpus replay test that runs in CI. Every function must return normally
//! for any input: a panic is a bug.

/// PKCS#10 parse + verify; an accepted request re-encodes and re-parses.
pub fn csr(data: &[u8]) {
    if let Ok(csr) = est_wire::csr::Csr::from_der(data) {
        let again = est_wire::csr::Csr::from_der(csr.der()).expect("accepted CSR re-parses");
        assert_eq!(again.subject(), csr.subject());
        let _ = csr.common_name();
        let _ = est_wire::names::general_names_text(csr.subject_alt_names());
    }
}

/// PKCS#7 certs-only decoding; decoded sets re-encode and decode to the same set.
pub fn pkcs7(data: &[u8]) {
    if let Ok(certs) = est_wire::pkcs7::decode_certs_only(data) {
        if let Ok(der) = est_wire::pkcs7::encode_certs_only(&certs) {
            let back = est_wire::pkcs7::decode_certs_only(&der).expect("re-encoded bundle decodes");
            assert_eq!(back.len(), certs.len());
        }
    }
}

/// Base64 body decoding; what decodes survives an encode/decode round trip.
pub fn body(data: &[u8]) {
    if let Ok(decoded) = est_wire::body::decode(data) {
        let text = est_wire::body::encode(&decoded);
        assert!(text.lines().all(|l| l.len() <= 64));
        if !decoded.is_empty() {
            assert_eq!(
                est_wire::body::decode(text.as_bytes()).expect("round trip"),
                decoded
            );
        }
    }
    let _ = est_wire::csrattrs::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(boundary) = est_wire::multipart::boundary(text) {
            let _ = est_wire::multipart::decode(&boundary, data);
        }
    }
}

/// The `Authorization` header parser.
pub fn basic_auth(data: &[u8]) {
    if let Ok(credentials) = crate::authority::auth::parse_basic(data) {
        assert!(!credentials.user.is_empty());
        assert!(!credentials.user.contains(':'));
    }
}

/// The path router: a routed label is always one safe segment.
pub fn router(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, path) = text.split_once(' ').unwrap_or(("GET", text));
    if let Ok(route) = crate::frontend::router::route(method, path) {
        assert!(path.starts_with("/.well-known/est/"));
        if let Some(label) = route.label {
            assert!(crate::frontend::router::is_valid_label(label));
            assert!(!label.contains('/') && label != ".." && label != ".");
        }
    }
}

/// Config parsing and validation of arbitrary text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<crate::config::Config>(text) {
        let _ = config.validate();
    }
}

/// Subject and SubjectAltName policy: the input is read as a DER subject
/// (and, failing that, as a DER SubjectAltName list). A subject the policy
/// accepts has exactly one common name, only UTF8String/PrintableString
/// values without control characters, and rebuilds to itself; names the
/// policy accepts carry no control characters.
pub fn subject(data: &[u8]) {
    use der::{Decode, Encode, Tagged};
    if let Ok(name) = x509_cert::name::Name::from_der(data) {
        if let Ok(strict) = crate::authority::subject::rebuild(&name) {
            let cns = strict
                .name
                .0
                .iter()
                .flat_map(|rdn| rdn.0.iter())
                .filter(|atv| atv.oid == const_oid::db::rfc4519::COMMON_NAME)
                .count();
            assert_eq!(cns, 1, "exactly one CN");
            for atv in strict.name.0.iter().flat_map(|rdn| rdn.0.iter()) {
                assert!(matches!(
                    atv.value.tag(),
                    der::Tag::Utf8String | der::Tag::PrintableString
                ));
                let text = std::str::from_utf8(atv.value.value()).expect("UTF-8 text");
                assert!(!text.chars().any(char::is_control));
            }
            assert!(!strict.common_name.chars().any(char::is_control));
            let again = crate::authority::subject::rebuild(&strict.name).expect("rebuilds");
            assert_eq!(
                again.name.to_der().expect("encodes"),
                strict.name.to_der().expect("encodes")
            );
            let _ = crate::authority::subject::normalise(&strict.common_name);
        }
    } else if let Ok(names) = x509_cert::ext::pkix::SubjectAltName::from_der(data) {
        if crate::authority::subject::check_names(&names.0).is_ok() {
            for name in &names.0 {
                let text = est_wire::names::general_name_text(name);
                assert!(!text.chars().any(char::is_control), "{text:?}");
            }
        }
    }
}
