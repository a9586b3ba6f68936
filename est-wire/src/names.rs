//! Text forms of names for logs, registries and comparisons.

use der::Encode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// `DNS:host`, `IP:10.0.0.1`, `URI:urn:x`, `email:a@b`, or the kind for others.
pub fn general_name_text(name: &GeneralName) -> String {
    match name {
        GeneralName::DnsName(s) => format!("DNS:{}", s.as_str()),
        GeneralName::Rfc822Name(s) => format!("email:{}", s.as_str()),
        GeneralName::UniformResourceIdentifier(s) => format!("URI:{}", s.as_str()),
        GeneralName::IpAddress(octets) => {
            let bytes = octets.as_bytes();
            match bytes.len() {
                4 => format!(
                    "IP:{}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap())
                ),
                16 => format!(
                    "IP:{}",
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap())
                ),
                _ => format!("IP:<{} bytes>", bytes.len()),
            }
        }
        GeneralName::DirectoryName(n) => format!("DirName:{n}"),
        GeneralName::RegisteredId(oid) => format!("RID:{oid}"),
        GeneralName::OtherName(other) => format!("othername:{}", other.type_id),
        GeneralName::EdiPartyName(_) => "EdiPartyName".into(),
    }
}

/// All names joined with `, ` (empty string for none).
pub fn general_names_text(names: &[GeneralName]) -> String {
    names
        .iter()
        .map(general_name_text)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SubjectAltName entries of a certificate (empty when it has none or it is unreadable).
pub fn certificate_sans(cert: &Certificate) -> Vec<GeneralName> {
    use der::Decode;
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == const_oid::db::rfc5912::ID_CE_SUBJECT_ALT_NAME)
        .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
        .flat_map(|san| san.0)
        .collect()
}

/// True when both lists hold the same names, in any order.
pub fn same_names(a: &[GeneralName], b: &[GeneralName]) -> bool {
    let canonical = |names: &[GeneralName]| {
        let mut encoded: Vec<Vec<u8>> = names.iter().filter_map(|n| n.to_der().ok()).collect();
        encoded.sort();
        encoded
    };
    canonical(a) == canonical(b)
}
