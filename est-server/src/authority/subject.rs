//! Strict subjects: the issued subject is rebuilt from validated attributes.
//!
//! A CSR's subject is never copied as sent. [`rebuild`] checks every
//! attribute and re-encodes it, so what a certificate says is what the
//! policy checked: exactly one common name, attribute values as UTF8String
//! or PrintableString only (other string types are re-encoded, non-string
//! values refused), and no NUL or control character anywhere. [`check_names`]
//! does the same for SubjectAltNames, and [`normalise`] is how reserved names
//! are compared (case-insensitive, whatever the string type).

use const_oid::db::rfc4519;
use der::asn1::{
    Any, BmpString, Ia5StringRef, PrintableStringRef, SetOfVec, TeletexStringRef, Utf8StringRef,
};
use der::{Decode, Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

/// The longest attribute value accepted, in characters (RFC 5280's
/// upper bound for a common name is 64; other attributes are allowed more).
const MAX_VALUE_CHARS: usize = 256;

/// A subject that passed [`rebuild`]: the name to put in the certificate
/// and its one common name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictSubject {
    /// The rebuilt name (every value UTF8String or PrintableString).
    pub name: Name,
    /// The one common name, as text.
    pub common_name: String,
}

/// Rebuilds `subject` from validated attributes, or says why it cannot be
/// issued (the text is for the client, answered with 400).
pub fn rebuild(subject: &Name) -> Result<StrictSubject, String> {
    let mut common_name = None;
    let mut rdns = Vec::with_capacity(subject.0.len());
    for rdn in subject.0.iter() {
        let mut values = Vec::with_capacity(rdn.0.len());
        for atv in rdn.0.iter() {
            let attribute = attribute_label(&atv.oid);
            let text = value_text(&atv.value).ok_or_else(|| {
                format!(
                    "the subject's {attribute} is encoded as {}; only text (UTF8String or PrintableString) is accepted",
                    tag_name(atv.value.tag())
                )
            })?;
            check_text(&text).map_err(|why| format!("the subject's {attribute} {why}"))?;
            if atv.oid == rfc4519::COMMON_NAME {
                if common_name.is_some() {
                    return Err(
                        "the subject has more than one common name (CN); exactly one is accepted"
                            .into(),
                    );
                }
                if text.trim().is_empty() {
                    return Err("the subject's common name (CN) is empty".into());
                }
                common_name = Some(text.clone());
            }
            // UTF8String and PrintableString values are kept as sent (so a
            // valid subject is issued byte for byte, and a CA that signs the
            // CSR as sent sees no difference); other text is re-encoded.
            let value = match atv.value.tag() {
                Tag::Utf8String | Tag::PrintableString => atv.value.clone(),
                _ => encode_text(&text)?,
            };
            values.push(AttributeTypeAndValue {
                oid: atv.oid,
                value,
            });
        }
        let set = SetOfVec::try_from(values)
            .map_err(|e| format!("the subject's attributes cannot be re-encoded: {e}"))?;
        rdns.push(RelativeDistinguishedName(set));
    }
    let common_name = common_name
        .ok_or_else(|| "the subject has no common name (CN); exactly one is required".to_owned())?;
    Ok(StrictSubject {
        name: RdnSequence(rdns),
        common_name,
    })
}

/// Checks requested SubjectAltNames: no NUL or control character in any
/// text name, IP addresses of 4 or 16 bytes.
pub fn check_names(names: &[GeneralName]) -> Result<(), String> {
    for name in names {
        let (kind, text) = match name {
            GeneralName::DnsName(s) => ("dNSName", s.as_str()),
            GeneralName::Rfc822Name(s) => ("rfc822Name", s.as_str()),
            GeneralName::UniformResourceIdentifier(s) => ("URI", s.as_str()),
            GeneralName::IpAddress(octets) => {
                let len = octets.as_bytes().len();
                if len != 4 && len != 16 {
                    return Err(format!(
                        "a subjectAltName IP address has {len} bytes; 4 or 16 are accepted"
                    ));
                }
                continue;
            }
            GeneralName::DirectoryName(directory) => {
                for atv in directory.0.iter().flat_map(|rdn| rdn.0.iter()) {
                    let text = value_text(&atv.value).ok_or_else(|| {
                        "a subjectAltName directoryName holds a value that is not text".to_owned()
                    })?;
                    check_text(&text)
                        .map_err(|why| format!("a subjectAltName directoryName {why}"))?;
                }
                continue;
            }
            _ => continue,
        };
        check_text(text)
            .map_err(|why| format!("the subjectAltName {kind} `{}` {why}", printable(text)))?;
    }
    Ok(())
}

/// The form reserved names are compared in: trimmed, Unicode lower case.
pub fn normalise(name: &str) -> String {
    name.trim().to_lowercase()
}

/// A template such as `aziot-edge CA {cn}` applied to a common name.
pub fn apply_template(template: &str, cn: &str) -> String {
    template.replace("{cn}", cn)
}

fn check_text(text: &str) -> Result<(), &'static str> {
    if text.chars().any(|c| c.is_control()) {
        return Err("contains a NUL or control character");
    }
    if text.chars().count() > MAX_VALUE_CHARS {
        return Err("is too long");
    }
    Ok(())
}

/// The value of a directory-string-like attribute as text. NumericString,
/// VisibleString, IA5String, TeletexString (read as Latin-1 by most
/// libraries, accepted here only when ASCII) and BMPString are read too, to be
/// re-encoded; anything else is not text.
fn value_text(value: &Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(value)
            .ok()
            .map(|s| s.as_str().to_owned()),
        Tag::PrintableString => PrintableStringRef::try_from(value)
            .ok()
            .map(|s| s.as_str().to_owned()),
        Tag::Ia5String => Ia5StringRef::try_from(value)
            .ok()
            .map(|s| s.as_str().to_owned()),
        Tag::TeletexString => TeletexStringRef::try_from(value)
            .ok()
            .map(|s| s.as_str().to_owned())
            .filter(|s| s.is_ascii()),
        Tag::NumericString | Tag::VisibleString => std::str::from_utf8(bytes)
            .ok()
            .filter(|s| s.is_ascii())
            .map(str::to_owned),
        Tag::BmpString => {
            let der = der::Encode::to_der(value).ok()?;
            BmpString::from_der(&der).ok().map(|s| s.to_string())
        }
        _ => None,
    }
}

/// PrintableString when the text allows it, UTF8String otherwise.
fn encode_text(text: &str) -> Result<Any, String> {
    let any = match PrintableStringRef::new(text) {
        Ok(printable) => Any::from(printable),
        Err(_) => Any::from(
            Utf8StringRef::new(text).map_err(|e| format!("the subject cannot be encoded: {e}"))?,
        ),
    };
    Ok(any)
}

fn attribute_label(oid: &const_oid::ObjectIdentifier) -> String {
    est_wire::csr::oid_name(oid)
}

fn tag_name(tag: Tag) -> String {
    match tag {
        Tag::Integer => "INTEGER".into(),
        Tag::OctetString => "OCTET STRING".into(),
        Tag::BitString => "BIT STRING".into(),
        Tag::Null => "NULL".into(),
        Tag::ObjectIdentifier => "OBJECT IDENTIFIER".into(),
        Tag::Sequence => "SEQUENCE".into(),
        Tag::Set => "SET".into(),
        Tag::Boolean => "BOOLEAN".into(),
        other => format!("{other:?}"),
    }
}

/// `text` with control characters shown as `\u{…}`, safe to put in a message.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::asn1::{Ia5String, OctetString};
    use der::Encode;

    fn atv(oid: const_oid::ObjectIdentifier, tag: Tag, value: &[u8]) -> AttributeTypeAndValue {
        AttributeTypeAndValue {
            oid,
            value: Any::new(tag, value.to_vec()).unwrap(),
        }
    }

    fn name(atvs: Vec<AttributeTypeAndValue>) -> Name {
        RdnSequence(
            atvs.into_iter()
                .map(|a| RelativeDistinguishedName(SetOfVec::try_from(vec![a]).unwrap()))
                .collect(),
        )
    }

    #[test]
    fn keeps_one_cn_and_reencodes_other_string_types() {
        let subject = name(vec![
            atv(rfc4519::ORGANIZATION_NAME, Tag::Ia5String, b"Acme"),
            atv(rfc4519::COMMON_NAME, Tag::NumericString, b"12345"),
        ]);
        let strict = rebuild(&subject).unwrap();
        assert_eq!(strict.common_name, "12345");
        for atv in strict.name.0.iter().flat_map(|r| r.0.iter()) {
            assert!(matches!(
                atv.value.tag(),
                Tag::PrintableString | Tag::Utf8String
            ));
        }
        assert_eq!(strict.name.to_string(), "CN=12345,O=Acme");
        let utf8 = name(vec![atv(
            rfc4519::COMMON_NAME,
            Tag::Utf8String,
            "gerät_1".as_bytes(),
        )]);
        let strict = rebuild(&utf8).unwrap();
        assert_eq!(
            strict.name.0[0].0.get(0).unwrap().value.tag(),
            Tag::Utf8String
        );
        // A subject already strict is issued byte for byte.
        let plain = name(vec![atv(rfc4519::COMMON_NAME, Tag::Utf8String, b"plain")]);
        assert_eq!(
            rebuild(&plain).unwrap().name.to_der().unwrap(),
            plain.to_der().unwrap()
        );
    }

    #[test]
    fn refuses_what_cannot_be_issued() {
        let two = name(vec![
            atv(rfc4519::COMMON_NAME, Tag::Utf8String, b"SN-2"),
            atv(rfc4519::COMMON_NAME, Tag::Utf8String, b"demo-device-001"),
        ]);
        assert!(rebuild(&two).unwrap_err().contains("more than one"));
        let none = name(vec![atv(rfc4519::ORGANIZATION_NAME, Tag::Utf8String, b"x")]);
        assert!(rebuild(&none).unwrap_err().contains("no common name"));
        let integer = name(vec![atv(rfc4519::COMMON_NAME, Tag::Integer, &[0x05])]);
        assert!(rebuild(&integer).unwrap_err().contains("INTEGER"));
        let nul = name(vec![atv(
            rfc4519::COMMON_NAME,
            Tag::NumericString,
            b"12\x0034",
        )]);
        assert!(rebuild(&nul).unwrap_err().contains("control"));
        let nul_utf8 = name(vec![atv(rfc4519::COMMON_NAME, Tag::Utf8String, b"a\x00b")]);
        assert!(rebuild(&nul_utf8).is_err());
        let empty = name(vec![atv(rfc4519::COMMON_NAME, Tag::Utf8String, b" ")]);
        assert!(rebuild(&empty).is_err());
    }

    #[test]
    fn checks_every_san_kind() {
        let nul = GeneralName::DnsName(Ia5String::new("a\0.example").unwrap());
        assert!(check_names(&[nul]).unwrap_err().contains("dNSName"));
        let ok = GeneralName::DnsName(Ia5String::new("a.example").unwrap());
        let ip = GeneralName::IpAddress(OctetString::new(vec![127, 0, 0, 1]).unwrap());
        assert!(check_names(&[ok, ip]).is_ok());
        let bad_ip = GeneralName::IpAddress(OctetString::new(vec![1, 2, 3]).unwrap());
        assert!(check_names(&[bad_ip]).is_err());
        let uri = GeneralName::UniformResourceIdentifier(Ia5String::new("urn:\x07").unwrap());
        assert!(check_names(&[uri]).is_err());
    }

    #[test]
    fn reserved_names_compare_normalised() {
        assert_eq!(normalise(" EST-Server-Rotation "), "est-server-rotation");
        assert_eq!(
            apply_template("aziot-edge CA {cn}", "dev1"),
            "aziot-edge CA dev1"
        );
        // Re-encoding is stable: a rebuilt name rebuilds to itself.
        let subject = name(vec![atv(rfc4519::COMMON_NAME, Tag::TeletexString, b"x")]);
        let once = rebuild(&subject).unwrap();
        let twice = rebuild(&once.name).unwrap();
        assert_eq!(once.name.to_der().unwrap(), twice.name.to_der().unwrap());
    }
}
