//! Certificate profiles: what a certificate issued under a label looks like.
//!
//! The profile alone decides a certificate's extensions. A CSR that asks for
//! `CA:true`, extra key usages or SubjectAltName kinds the profile does not
//! copy never gets them.

use std::time::Duration;

use const_oid::ObjectIdentifier;
use serde::Deserialize;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::KeyUsages;

/// How certificates under one label are built.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Lifetime of issued certificates, e.g. `"30d"`, `"12h"`, `"5m"`.
    #[serde(default = "default_validity", with = "duration_text")]
    pub validity: Duration,
    /// How far `notBefore` is set in the past, to absorb device clock skew.
    #[serde(default = "default_backdate", with = "duration_text")]
    pub backdate: Duration,
    /// Key usage bits, e.g. `["digitalSignature", "keyAgreement"]`.
    #[serde(default = "default_key_usage")]
    pub key_usage: Vec<KeyUsageName>,
    /// Extended key usages: `clientAuth`, `serverAuth`, … or dotted OIDs.
    #[serde(default = "default_extended_key_usage")]
    pub extended_key_usage: Vec<String>,
    /// Which CSR SubjectAltName kinds are copied: `dns`, `ip`, `uri`, `email`.
    #[serde(default = "default_copy_san")]
    pub copy_san: Vec<SanKind>,
    /// Issue subordinate CA certificates (`CA:true, pathlen:0, keyCertSign, cRLSign`),
    /// as Azure IoT Edge's Edge CA asks for. Off for device labels.
    #[serde(default)]
    pub subordinate_ca: bool,
    /// Which CA issues under this profile: a name from the server's `[cas]`
    /// (default: the device CA in `[ca]`, the one trusted for client
    /// authentication).
    #[serde(default)]
    pub ca: Option<String>,
    /// The key a CSR should carry, announced by `/csrattrs`: `p256`
    /// (default), `p384`, `rsa2048`, `rsa3072` or `rsa4096`. Other accepted
    /// keys are still certified.
    #[serde(default = "default_key_algorithm")]
    pub key_algorithm: String,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            validity: default_validity(),
            backdate: default_backdate(),
            key_usage: default_key_usage(),
            extended_key_usage: default_extended_key_usage(),
            copy_san: default_copy_san(),
            subordinate_ca: false,
            ca: None,
            key_algorithm: default_key_algorithm(),
        }
    }
}

impl Profile {
    /// A TLS server profile (used for the dev-mode server certificate).
    pub fn tls_server(validity: Duration) -> Self {
        Self {
            validity,
            extended_key_usage: vec!["serverAuth".into()],
            ..Self::default()
        }
    }

    /// Checks names and OIDs, so a bad config fails at start.
    pub fn validate(&self) -> Result<(), String> {
        if self.validity.is_zero() {
            return Err("validity must be longer than zero".into());
        }
        for eku in &self.extended_key_usage {
            eku_oid(eku)?;
        }
        self.key_algorithm
            .parse::<est_wire::keys::KeyAlgorithm>()
            .map_err(|e| format!("key_algorithm: {e}"))?;
        Ok(())
    }

    /// The extended key usage OIDs.
    pub fn extended_key_usage_oids(&self) -> Vec<ObjectIdentifier> {
        self.extended_key_usage
            .iter()
            .filter_map(|name| eku_oid(name).ok())
            .collect()
    }

    /// Whether a SubjectAltName of this kind is copied from the CSR.
    pub fn copies(&self, name: &GeneralName) -> bool {
        let kind = match name {
            GeneralName::DnsName(_) => SanKind::Dns,
            GeneralName::IpAddress(_) => SanKind::Ip,
            GeneralName::UniformResourceIdentifier(_) => SanKind::Uri,
            GeneralName::Rfc822Name(_) => SanKind::Email,
            _ => return false,
        };
        self.copy_san.contains(&kind)
    }
}

/// A key usage bit, by its RFC 5280 name.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KeyUsageName {
    /// digitalSignature
    DigitalSignature,
    /// contentCommitment (formerly nonRepudiation)
    #[serde(alias = "nonRepudiation")]
    ContentCommitment,
    /// keyEncipherment
    KeyEncipherment,
    /// dataEncipherment
    DataEncipherment,
    /// keyAgreement
    KeyAgreement,
    /// keyCertSign
    KeyCertSign,
    /// cRLSign
    #[serde(rename = "cRLSign")]
    CrlSign,
}

impl KeyUsageName {
    /// The corresponding flag.
    pub fn flag(self) -> KeyUsages {
        match self {
            Self::DigitalSignature => KeyUsages::DigitalSignature,
            Self::ContentCommitment => KeyUsages::NonRepudiation,
            Self::KeyEncipherment => KeyUsages::KeyEncipherment,
            Self::DataEncipherment => KeyUsages::DataEncipherment,
            Self::KeyAgreement => KeyUsages::KeyAgreement,
            Self::KeyCertSign => KeyUsages::KeyCertSign,
            Self::CrlSign => KeyUsages::CRLSign,
        }
    }
}

/// A kind of SubjectAltName.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SanKind {
    /// dNSName
    Dns,
    /// iPAddress
    Ip,
    /// uniformResourceIdentifier
    Uri,
    /// rfc822Name
    Email,
}

/// Resolves an EKU name (`clientAuth`, …) or a dotted OID.
pub fn eku_oid(name: &str) -> Result<ObjectIdentifier, String> {
    use const_oid::db::rfc5280 as r;
    let oid = match name {
        "clientAuth" => r::ID_KP_CLIENT_AUTH,
        "serverAuth" => r::ID_KP_SERVER_AUTH,
        "codeSigning" => r::ID_KP_CODE_SIGNING,
        "emailProtection" => r::ID_KP_EMAIL_PROTECTION,
        "timeStamping" => r::ID_KP_TIME_STAMPING,
        "OCSPSigning" | "ocspSigning" => r::ID_KP_OCSP_SIGNING,
        other => ObjectIdentifier::new(other).map_err(|_| {
            format!("unknown extended key usage `{other}` (use clientAuth, serverAuth, codeSigning, emailProtection, timeStamping, OCSPSigning or a dotted OID)")
        })?,
    };
    Ok(oid)
}

fn default_key_algorithm() -> String {
    "p256".into()
}
fn default_validity() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_backdate() -> Duration {
    Duration::from_secs(60)
}
fn default_key_usage() -> Vec<KeyUsageName> {
    vec![KeyUsageName::DigitalSignature, KeyUsageName::KeyAgreement]
}
fn default_extended_key_usage() -> Vec<String> {
    vec!["clientAuth".into()]
}
fn default_copy_san() -> Vec<SanKind> {
    vec![SanKind::Dns, SanKind::Ip, SanKind::Uri, SanKind::Email]
}

/// Serde adapter for durations written as text (`"30d"`, `"90s"`, `"1h 30m"`).
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses a duration such as `30d`, `12h`, `5m`, `90s`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration like 30d, 12h, 5m or 90s: {e}"))
    }

    /// Writes a duration as the config would: `60d`, `12h`, `5m` or `90s`
    /// when whole, else humantime's longer form.
    pub fn format(duration: Duration) -> String {
        let secs = duration.as_secs();
        if duration.subsec_nanos() != 0 || secs == 0 {
            return humantime::format_duration(duration).to_string();
        }
        [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")]
            .iter()
            .find(|(unit, _)| secs.is_multiple_of(*unit))
            .map(|(unit, name)| format!("{}{name}", secs / unit))
            .unwrap_or_default()
    }

    /// Deserializes a duration from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::duration_text::{format, parse};
    use std::time::Duration;

    #[test]
    fn durations_are_written_as_the_config_writes_them() {
        for text in ["60d", "12h", "5m", "90s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
        assert_eq!(format(Duration::from_millis(1500)), "1s 500ms");
    }
}
