//! `certs` and `pending`: issued certificates and enrollments held for approval.

use clap::Subcommand;
use est_server::registry::unix_now;

use super::{format_time, lineage_text, state_text, Target};

#[derive(Subcommand)]
pub(crate) enum PendingAction {
    /// List requests and their state.
    List,
    /// Approve a request: the client's next retry gets its certificate.
    Approve {
        /// Request id (from `pending list` or the 202 response).
        id: String,
    },
    /// Reject a request: the client's next retry gets 403.
    Reject {
        /// Request id.
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum CertsAction {
    /// List issued certificates, newest first (the newest 100 unless told).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100, conflicts_with = "all")]
        limit: usize,
        /// All of them.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a certificate: it can no longer authenticate or be renewed.
    Revoke {
        /// Serial number, hex in any spelling: `0A:1B`, `0a1b`, `0x0A1B`, `serial=0A1B`.
        serial: String,
    },
}

pub(crate) async fn pending(target: Target, action: PendingAction) -> anyhow::Result<()> {
    let registry = target.registry().await?;
    match action {
        PendingAction::List => {
            let requests = registry.list_pending().await?;
            if requests.is_empty() {
                println!("no pending requests");
            }
            for r in requests {
                let age = unix_now() - r.created_at;
                println!(
                    "{}  {:<8}  label={:<10} age={}s  subject={}  by={}",
                    r.id,
                    r.state,
                    if r.label.is_empty() { "-" } else { &r.label },
                    age,
                    r.subject,
                    r.requested_by
                );
            }
        }
        PendingAction::Approve { id } => {
            registry.decide_pending(&id, true).await?;
            println!("approved {id}");
        }
        PendingAction::Reject { id } => {
            registry.decide_pending(&id, false).await?;
            println!("rejected {id}");
        }
    }
    Ok(())
}

pub(crate) async fn certs(target: Target, action: CertsAction) -> anyhow::Result<()> {
    let registry = target.registry().await?;
    match action {
        CertsAction::List { limit, all } => {
            let limit = if all { usize::MAX } else { limit };
            let mut listed = registry.list_certificates(limit.saturating_add(1)).await?;
            if listed.len() > limit {
                listed.truncate(limit);
                eprintln!("showing the newest {limit}; use --limit N or --all");
            }
            for r in listed {
                let c = &r.certificate;
                println!(
                    "{}  {:<10}  label={:<8} lineage={}  not_after={}  subject={}  predecessor={}  auth={}",
                    c.serial,
                    state_text(&r),
                    if c.label.is_empty() { "-" } else { &c.label },
                    lineage_text(&r),
                    format_time(c.not_after),
                    c.subject,
                    c.predecessor.as_deref().unwrap_or("-"),
                    c.auth
                );
            }
        }
        CertsAction::Revoke { serial } => {
            let serial = registry_serial(&serial)?;
            registry.revoke(&serial).await?;
            est_server::server::refresh_crl_file(&target.config()?, &*registry).await?;
            println!("revoked {serial}");
        }
    }
    Ok(())
}

/// A serial as the registry keys it (lower-case hex of the serial's bytes
/// without leading zero bytes, as `ca_backends::serial_hex` writes it) from
/// any spelling an operator may paste: upper-case, with colons or spaces
/// (`openssl x509 -text`), a `0x` or `serial=` prefix (`openssl x509
/// -serial`), leading zeros.
pub(crate) fn registry_serial(text: &str) -> anyhow::Result<String> {
    let trimmed = text.trim();
    let bare = ["serial=", "0x", "0X"]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))
        .unwrap_or(trimmed);
    let digits: String = bare
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        anyhow::bail!("`{text}` is not a hex serial number");
    }
    let significant = digits.trim_start_matches('0');
    Ok(match significant.len() {
        0 => "00".to_owned(),
        n if n % 2 == 1 => format!("0{significant}"),
        _ => significant.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn serials_in_any_spelling_become_the_registry_key() {
        for (spelling, key) in [
            ("0a1b", "0a1b"),
            ("0A1B", "0a1b"),
            ("0A:1B", "0a1b"),
            ("00:0a:1b", "0a1b"),
            ("a1b", "0a1b"),
            ("0x0A1B", "0a1b"),
            ("serial=0A1B", "0a1b"),
            (" 8F:01 ", "8f01"),
            ("00", "00"),
        ] {
            assert_eq!(super::registry_serial(spelling).unwrap(), key, "{spelling}");
        }
        for bad in ["", "xyz", "0g", ":"] {
            assert!(super::registry_serial(bad).is_err(), "{bad}");
        }
    }
}
