//! Media types used by EST (RFC 7030 §3.2.4, §4) and helpers to match them.

/// Request body of `/simpleenroll` and `/simplereenroll`.
pub const PKCS10: &str = "application/pkcs10";
/// `/cacerts` response.
pub const PKCS7_MIME: &str = "application/pkcs7-mime";
/// `/simpleenroll` and `/simplereenroll` responses. libest's `estclient`
/// compares the start of the header with exactly this text.
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// `/csrattrs` response.
pub const CSRATTRS: &str = "application/csrattrs";
/// Private-key part of a `/serverkeygen` response.
pub const PKCS8: &str = "application/pkcs8";
/// `/serverkeygen` response (with a `boundary` parameter).
pub const MULTIPART_MIXED: &str = "multipart/mixed";
/// Value of `Content-Transfer-Encoding` on every base64 body we send.
pub const TRANSFER_ENCODING_BASE64: &str = "base64";

/// True when `header` names the media type `expected`, ignoring case,
/// surrounding whitespace and any parameters (`; smime-type=…`).
pub fn matches(header: &str, expected: &str) -> bool {
    let essence = header.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_ignores_case_and_parameters() {
        assert!(matches("application/pkcs10", PKCS10));
        assert!(matches(" Application/PKCS10 ; charset=x", PKCS10));
        assert!(matches(PKCS7_CERTS_ONLY, PKCS7_MIME));
        assert!(!matches("application/pkcs10x", PKCS10));
        assert!(!matches("text/plain", PKCS10));
        assert!(!matches("", PKCS10));
    }
}
