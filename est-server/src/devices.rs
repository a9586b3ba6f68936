//! Device provisioning helpers: one-time tokens and CSV import.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::registry::NewDevice;

/// A fresh one-time enrollment token: 128 random bits, base64url (22 characters).
pub fn new_token() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    aws_lc_rs::rand::fill(bytes.as_mut()).expect("system randomness");
    Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

/// What the registry stores of a token: its SHA-256, hex. Tokens carry 128
/// random bits, so a fast hash is enough; they are compared in constant time.
pub fn token_hash(token: &str) -> String {
    est_wire::sha256_hex(token.as_bytes())
}

/// A device id is 1–128 printable ASCII characters without `:` (it is the
/// Basic user name) or `,` (it is a CSV field).
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b',')
}

/// One device from an import file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    /// Device id.
    pub id: String,
    /// Label it enrolls on.
    pub label: String,
    /// AWS IoT thing name, if given.
    pub thing_name: Option<String>,
    /// AWS IoT policy, if given.
    pub policy: Option<String>,
}

/// One CSV row: `id[,label[,thing_name[,policy]]]`. `#` lines and blank
/// lines are skipped (the caller skips a header line).
pub fn parse_csv_row(line: &str, default_label: &str) -> Result<Option<CsvRow>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let id = fields[0];
    if !is_valid_device_id(id) {
        return Err(format!("`{id}` is not a valid device id"));
    }
    let field = |i: usize| {
        fields
            .get(i)
            .filter(|f| !f.is_empty())
            .map(|f| f.to_string())
    };
    let label = field(1).unwrap_or_else(|| default_label.to_owned());
    Ok(Some(CsvRow {
        id: id.to_owned(),
        label,
        thing_name: field(2),
        policy: field(3),
    }))
}

/// Builds the registry entry for a device with a fresh token; returns both.
pub fn provision(
    id: String,
    label: String,
    thing_name: Option<String>,
    policy: Option<String>,
) -> (NewDevice, Zeroizing<String>) {
    let token = new_token();
    (
        NewDevice {
            id,
            token_hash: token_hash(&token),
            label,
            thing_name,
            policy,
            edge_ca: false,
        },
        token,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 22);
        assert_ne!(*a, *b);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), *a);
    }

    #[test]
    fn csv_rows() {
        assert_eq!(parse_csv_row("# comment", "").unwrap(), None);
        assert_eq!(parse_csv_row("", "").unwrap(), None);
        assert_eq!(
            parse_csv_row("SN-1,iot,thing-1,pol", "").unwrap(),
            Some(CsvRow {
                id: "SN-1".into(),
                label: "iot".into(),
                thing_name: Some("thing-1".into()),
                policy: Some("pol".into())
            })
        );
        assert_eq!(
            parse_csv_row("SN-2", "dflt").unwrap(),
            Some(CsvRow {
                id: "SN-2".into(),
                label: "dflt".into(),
                thing_name: None,
                policy: None
            })
        );
        assert!(parse_csv_row("bad:id", "").is_err());
        assert!(is_valid_device_id("ABC-123_x.y"));
        assert!(!is_valid_device_id("has space"));
    }
}
