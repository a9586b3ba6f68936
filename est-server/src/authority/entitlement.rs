//! What a credential entitles a client to: which subjects, which
//! SubjectAltNames, and whether a subordinate CA.
//!
//! | credential | subjects | SubjectAltNames | subordinate CA |
//! |---|---|---|---|
//! | device token | `CN=<device id>` only | none | never |
//! | bootstrap certificate | `bootstrap_subjects` over its CN | none | when its device is allowed (`devices add --edge-ca`) |
//! | issued certificate | its own lineage's subject, or `bootstrap_subjects` over its identity's name | those of the authenticating certificate | when its device is allowed |
//! | Basic user | any (strict) subject | the profile's `copy_san` kinds | when listed in `subordinate_ca_users` |
//!
//! A subordinate CA's common name is always `subordinate_ca_subject` over
//! the identity's name. Every function here is pure: the enrollment path
//! gathers the facts and asks.

use x509_cert::ext::pkix::name::GeneralName;

use crate::authority::subject::{apply_template, normalise, StrictSubject};
use crate::config::LabelConfig;
use crate::error::EstError;

/// The kind of credential a request authenticated with, for entitlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A registered device's one-time token.
    DeviceToken,
    /// A bootstrap (manufacturer) certificate.
    Bootstrap,
    /// A certificate this server issued.
    IssuedCertificate,
    /// A configured Basic user.
    User,
}

/// The identity behind a request, as far as entitlement goes.
#[derive(Debug, Clone)]
pub struct Identity {
    /// How it authenticated.
    pub credential: CredentialKind,
    /// The name `{cn}` stands for in subject templates: the device id, the
    /// bootstrap certificate's CN, or the authenticating certificate's CN.
    pub name: String,
    /// Human-readable, for refusals (`device SN-1`, `user estuser`).
    pub describe: String,
    /// The identity may obtain subordinate CAs on labels that issue them.
    pub may_obtain_ca: bool,
    /// SubjectAltNames it may put in an end-entity certificate, when limited
    /// (`None`: whatever the profile copies).
    pub allowed_sans: Option<Vec<GeneralName>>,
}

/// Checks that `identity` may have a certificate with `subject` and `sans`
/// under a profile that is (`subordinate_ca`) or is not a subordinate CA.
/// `renewing_own_lineage` is true when the request replaces a certificate
/// of the same lineage (same subject and names by definition).
pub fn check(
    identity: &Identity,
    label: &LabelConfig,
    subordinate_ca: bool,
    subject: &StrictSubject,
    sans: &[GeneralName],
    renewing_own_lineage: bool,
) -> Result<(), EstError> {
    let cn = &subject.common_name;
    if subordinate_ca {
        if identity.credential == CredentialKind::DeviceToken {
            return Err(EstError::Forbidden(
                "a one-time enrollment token never entitles a CA certificate; ask with the device's EST identity or bootstrap certificate".into(),
            ));
        }
        if !identity.may_obtain_ca {
            return Err(EstError::Forbidden(match identity.credential {
                CredentialKind::User => format!(
                    "{} may not obtain CA certificates on this label (not in subordinate_ca_users)",
                    identity.describe
                ),
                _ => format!(
                    "{} may not obtain CA certificates (allow it with `est-server devices edge-ca {}`)",
                    identity.describe, identity.name
                ),
            }));
        }
        let template = &label.subordinate_ca_subject;
        let allowed = if identity.credential == CredentialKind::User {
            // A user asks on a device's behalf: any name fits the template's
            // place, provided the template's fixed text is there.
            matches_template(template, cn)
        } else {
            *cn == apply_template(template, &identity.name)
        };
        if !allowed {
            return Err(EstError::Forbidden(format!(
                "a CA certificate for {} must have the subject CN={}, not CN={cn}",
                identity.describe,
                apply_template(template, &identity.name)
            )));
        }
        return Ok(());
    }
    match identity.credential {
        CredentialKind::DeviceToken => {
            if *cn != identity.name {
                return Err(EstError::Forbidden(format!(
                    "device {} may only enroll CN={}, not CN={cn}",
                    identity.name, identity.name
                )));
            }
        }
        CredentialKind::Bootstrap | CredentialKind::IssuedCertificate => {
            let derived = label
                .bootstrap_subjects
                .iter()
                .any(|t| *cn == apply_template(t, &identity.name));
            let free = identity.credential == CredentialKind::Bootstrap
                && !label.bootstrap_subject_must_match;
            if !(renewing_own_lineage || derived || free) {
                let allowed: Vec<String> = label
                    .bootstrap_subjects
                    .iter()
                    .map(|t| format!("CN={}", apply_template(t, &identity.name)))
                    .collect();
                return Err(EstError::Forbidden(format!(
                    "{} may enroll {}, not CN={cn}",
                    identity.describe,
                    allowed.join(" or ")
                )));
            }
        }
        CredentialKind::User => {}
    }
    if let Some(allowed) = &identity.allowed_sans {
        let allowed_der: Vec<Vec<u8>> = allowed.iter().filter_map(der_of).collect();
        if let Some(extra) = sans
            .iter()
            .find(|name| der_of(name).is_none_or(|d| !allowed_der.contains(&d)))
        {
            return Err(EstError::Forbidden(format!(
                "{} may not have the subjectAltName {} (its registration allows {})",
                identity.describe,
                est_wire::names::general_name_text(extra),
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    est_wire::names::general_names_text(allowed)
                }
            )));
        }
    }
    Ok(())
}

/// Refuses reserved common names, compared normalised.
pub fn check_reserved(subject: &StrictSubject, reserved: &[String]) -> Result<(), EstError> {
    if reserved.contains(&normalise(&subject.common_name)) {
        return Err(EstError::Forbidden(format!(
            "CN={} is reserved for the server's own use",
            subject.common_name
        )));
    }
    Ok(())
}

/// Whether `cn` is `template` with some non-empty text in place of `{cn}`.
fn matches_template(template: &str, cn: &str) -> bool {
    match template.split_once("{cn}") {
        None => cn == template,
        Some((before, after)) => {
            cn.len() > before.len() + after.len() && cn.starts_with(before) && cn.ends_with(after)
        }
    }
}

fn der_of(name: &GeneralName) -> Option<Vec<u8>> {
    der::Encode::to_der(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> LabelConfig {
        toml::from_str("").unwrap()
    }

    fn subject(cn: &str) -> StrictSubject {
        let name = ca_backends::local::parse_name(&format!("CN={cn}")).unwrap();
        crate::authority::subject::rebuild(&name).unwrap()
    }

    fn identity(credential: CredentialKind, may_obtain_ca: bool) -> Identity {
        Identity {
            credential,
            name: "dev1".into(),
            describe: "device dev1".into(),
            may_obtain_ca,
            allowed_sans: Some(Vec::new()),
        }
    }

    #[test]
    fn tokens_never_buy_a_ca() {
        let label = label();
        let err = check(
            &identity(CredentialKind::DeviceToken, true),
            &label,
            true,
            &subject("aziot-edge CA dev1"),
            &[],
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("never entitles"), "{err}");
    }

    #[test]
    fn ca_subjects_are_derived_from_the_identity() {
        let label = label();
        let allowed = identity(CredentialKind::IssuedCertificate, true);
        check(
            &allowed,
            &label,
            true,
            &subject("aziot-edge CA dev1"),
            &[],
            false,
        )
        .unwrap();
        assert!(check(
            &allowed,
            &label,
            true,
            &subject("aziot-edge CA dev2"),
            &[],
            false
        )
        .is_err());
        assert!(check(
            &allowed,
            &label,
            true,
            &subject("est-server-rotation"),
            &[],
            false
        )
        .is_err());
        let not_allowed = identity(CredentialKind::Bootstrap, false);
        assert!(check(
            &not_allowed,
            &label,
            true,
            &subject("aziot-edge CA dev1"),
            &[],
            false
        )
        .is_err());
        let user = Identity {
            credential: CredentialKind::User,
            may_obtain_ca: true,
            ..identity(CredentialKind::User, true)
        };
        check(
            &user,
            &label,
            true,
            &subject("aziot-edge CA any"),
            &[],
            false,
        )
        .unwrap();
        assert!(check(&user, &label, true, &subject("aziot-edge CA "), &[], false).is_err());
        assert!(check(&user, &label, true, &subject("other"), &[], false).is_err());
    }

    #[test]
    fn end_entity_subjects_and_names() {
        let label = label();
        let token = identity(CredentialKind::DeviceToken, false);
        check(&token, &label, false, &subject("dev1"), &[], false).unwrap();
        assert!(check(&token, &label, false, &subject("dev2"), &[], false).is_err());
        let san = GeneralName::DnsName(der::asn1::Ia5String::new("other.example").unwrap());
        assert!(check(
            &token,
            &label,
            false,
            &subject("dev1"),
            std::slice::from_ref(&san),
            false
        )
        .unwrap_err()
        .to_string()
        .contains("subjectAltName"));
        let bootstrap = identity(CredentialKind::Bootstrap, false);
        assert!(check(
            &bootstrap,
            &label,
            false,
            &subject("aziot-edge CA dev1"),
            &[],
            false
        )
        .is_err());
        let mut edge_label = label.clone();
        edge_label.bootstrap_subjects = vec!["{cn}".into(), "aziot-edge CA {cn}".into()];
        check(
            &bootstrap,
            &edge_label,
            false,
            &subject("aziot-edge CA dev1"),
            &[],
            false,
        )
        .unwrap();
        let user = identity(CredentialKind::User, false);
        let user = Identity {
            allowed_sans: None,
            ..user
        };
        check(&user, &label, false, &subject("anything"), &[san], false).unwrap();
    }

    #[test]
    fn reserved_names_whatever_the_case() {
        let reserved = vec!["est-server-rotation".to_owned()];
        assert!(check_reserved(&subject("EST-Server-Rotation"), &reserved).is_err());
        check_reserved(&subject("dev1"), &reserved).unwrap();
    }
}
