//! Base64 transfer bodies (RFC 7030 §4, clarified by RFC 8951).
//!
//! In: whitespace of any kind (CR, LF, space, tab) is ignored wherever it
//! appears, `Content-Transfer-Encoding` is not consulted at all, and a
//! PEM-armoured body (`-----BEGIN …-----`) is unwrapped, for sloppy clients.
//! Out: 64-column lines, each ending in LF, because OpenSSL-based clients
//! such as libest's `estclient` fail on a single long line.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Nothing but whitespace (or nothing at all) was sent.
    #[error("the request body is empty; expected base64-encoded DER")]
    Empty,
    /// A byte outside the base64 alphabet, or bad padding.
    #[error("the request body is not valid base64: {0}")]
    InvalidBase64(String),
    /// A `-----BEGIN` line without its matching `-----END` line.
    #[error("the request body starts a PEM block but does not end it")]
    UnterminatedPem,
}

/// Decodes a base64 body, ignoring all whitespace and unwrapping PEM armour.
pub fn decode(body: &[u8]) -> Result<Vec<u8>, BodyError> {
    // libest counts a C string's terminating NUL in Content-Length.
    let end = body.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let payload = strip_pem_armour(&body[..end])?;
    let compact: Vec<u8> = payload
        .iter()
        .copied()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .collect();
    if compact.is_empty() {
        return Err(BodyError::Empty);
    }
    STANDARD
        .decode(&compact)
        .map_err(|e| BodyError::InvalidBase64(e.to_string()))
}

/// Encodes `der` as base64 in 64-column lines, each ending with `\n`.
pub fn encode(der: &[u8]) -> String {
    let flat = STANDARD.encode(der);
    let mut out = String::with_capacity(flat.len() + flat.len() / 64 + 1);
    for line in flat.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

/// Returns the text between `-----BEGIN …-----` and `-----END …-----` when the
/// body is PEM armoured, or the whole body otherwise.
fn strip_pem_armour(body: &[u8]) -> Result<&[u8], BodyError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Ok(body);
    };
    let trimmed = &body[start..];
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(body);
    }
    let after_begin = match find(trimmed, b"\n") {
        Some(i) => &trimmed[i + 1..],
        None => return Err(BodyError::UnterminatedPem),
    };
    match find(after_begin, b"-----END") {
        Some(end) => Ok(&after_begin[..end]),
        None => Err(BodyError::UnterminatedPem),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_wraps_at_64_columns_with_trailing_newline() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = encode(&data);
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            assert!(line.len() <= 64);
        }
        assert_eq!(text.lines().next().unwrap().len(), 64);
        assert_eq!(decode(text.as_bytes()).unwrap(), data);
    }

    #[test]
    fn accepts_any_whitespace_anywhere() {
        let data = b"hello EST world, some bytes \x00\x01\xff";
        let flat = STANDARD.encode(data);
        let (a, b) = flat.split_at(7);
        let messy = format!(" \t{a}\r\n \t{b}\r\n\r\n");
        assert_eq!(decode(messy.as_bytes()).unwrap(), data);
        assert_eq!(decode(flat.as_bytes()).unwrap(), data);
    }

    #[test]
    fn unwraps_pem_armour() {
        let pem =
            "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8=\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(decode(pem.as_bytes()).unwrap(), b"hello");
        let broken = "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8=\n";
        assert_eq!(decode(broken.as_bytes()), Err(BodyError::UnterminatedPem));
    }

    #[test]
    fn tolerates_trailing_nul_as_libest_sends_it() {
        assert_eq!(decode(b"aGVsbG8=\n\0").unwrap(), b"hello");
        assert!(
            decode(b"aGVs\0bG8=").is_err(),
            "interior NUL stays an error"
        );
    }

    #[test]
    fn rejects_invalid_characters_and_empty_bodies() {
        assert!(matches!(
            decode(b"aGVs*G8="),
            Err(BodyError::InvalidBase64(_))
        ));
        assert!(matches!(
            decode(b"aGVsbG8"),
            Err(BodyError::InvalidBase64(_))
        ));
        assert_eq!(decode(b""), Err(BodyError::Empty));
        assert_eq!(decode(b" \r\n\t"), Err(BodyError::Empty));
        assert!(matches!(
            decode(b"\x00\xff\xfe"),
            Err(BodyError::InvalidBase64(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(data in proptest::collection::vec(any::<u8>(), 1..2048)) {
            let text = encode(&data);
            prop_assert!(text.lines().all(|l| l.len() <= 64));
            prop_assert_eq!(decode(text.as_bytes()).unwrap(), data);
        }

        #[test]
        fn whitespace_anywhere_is_ignored(data in proptest::collection::vec(any::<u8>(), 1..512), cuts in proptest::collection::vec((0usize..1000, 0usize..4), 0..20)) {
            let mut text: Vec<u8> = STANDARD.encode(&data).into_bytes();
            for (at, kind) in cuts {
                let at = at % (text.len() + 1);
                text.insert(at, [b' ', b'\t', b'\r', b'\n'][kind]);
            }
            prop_assert_eq!(decode(&text).unwrap(), data);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&data);
        }
    }
}
