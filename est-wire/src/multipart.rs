//! `multipart/mixed` bodies of `/serverkeygen` (RFC 7030 §4.4.2).
//!
//! The answer holds two parts: the private key (`application/pkcs8`, base64)
//! and the certificate (`application/pkcs7-mime; smime-type=certs-only`,
//! base64). Servers differ in details (libest's example server puts a PKCS#1
//! key in its "pkcs8" part and ends lines with LF only), so the reader is
//! lenient about line endings and part headers.

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's `Content-Type` (empty when absent).
    pub content_type: String,
    /// The part's body, whitespace around it trimmed.
    pub body: Vec<u8>,
}

/// Why a multipart body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// No `boundary=` parameter in the Content-Type.
    #[error("multipart Content-Type without a boundary parameter")]
    NoBoundary,
    /// The body does not contain the boundary.
    #[error("multipart body does not contain its boundary")]
    Malformed,
}

/// Encodes `parts` (each `(content type, base64 body)`) with `boundary`.
/// Every delimiter is preceded by CRLF, as RFC 2046 asks and as libest's
/// parser insists (it finds the end of a part only at a CR).
pub fn encode(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (content_type, body) in parts {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n\r\n")
                .as_bytes(),
        );
        let end = body
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        out.extend_from_slice(&body[..end]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// The `boundary` parameter of a `multipart/mixed` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty())
        .ok_or(MultipartError::NoBoundary)
}

/// Splits a multipart body into its parts.
pub fn decode(boundary: &str, body: &[u8]) -> Result<Vec<Part>, MultipartError> {
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut sections = text.split(delimiter.as_str());
    sections.next().ok_or(MultipartError::Malformed)?; // preamble
    let mut parts = Vec::new();
    for section in sections {
        if section.starts_with("--") {
            break;
        }
        let section = section.trim_start_matches(['\r', '\n']);
        let (head, body) = match section.find("\r\n\r\n") {
            Some(i) => (&section[..i], &section[i + 4..]),
            None => match section.find("\n\n") {
                Some(i) => (&section[..i], &section[i + 2..]),
                None => return Err(MultipartError::Malformed),
            },
        };
        let content_type = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        parts.push(Part {
            content_type,
            body: body.trim().as_bytes().to_vec(),
        });
    }
    if parts.is_empty() {
        return Err(MultipartError::Malformed);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let body = encode(
            "b1",
            &[
                ("application/pkcs8", b"S0VZ\n"),
                ("application/pkcs7-mime; smime-type=certs-only", b"Q0VSVA=="),
            ],
        );
        assert!(
            String::from_utf8_lossy(&body).contains("S0VZ\r\n--b1\r\n"),
            "CRLF before every delimiter"
        );
        let parts = decode("b1", &body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].content_type, "application/pkcs8");
        assert_eq!(parts[0].body, b"S0VZ");
        assert_eq!(parts[1].body, b"Q0VSVA==");
        assert_eq!(boundary("multipart/mixed; boundary=\"b1\"").unwrap(), "b1");
        assert_eq!(boundary("multipart/mixed"), Err(MultipartError::NoBoundary));
    }

    #[test]
    fn reads_lf_only_bodies_like_libest() {
        let body = b"--est-server-boundary\nContent-Type: application/pkcs8\nContent-Transfer-Encoding: base64\n\nS0VZ\n--est-server-boundary\nContent-Type: application/pkcs7-mime; smime-type=certs-only\nContent-Transfer-Encoding: base64\n\nQ0VSVA==\n--est-server-boundary--\n";
        let parts = decode("est-server-boundary", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[1].content_type,
            "application/pkcs7-mime; smime-type=certs-only"
        );
        assert!(decode("other", body).is_err());
    }
}
