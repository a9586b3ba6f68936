//! The operator commands of the `est-server` binary, one file per group;
//! `main.rs` holds the clap types and the dispatch.

pub mod ca;
pub mod certs;
pub mod devices;
pub mod registry;
pub mod rotation;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use est_server::config::Config;
use est_server::registry::Registry;

/// Which server's registry to work on.
#[derive(Args)]
pub(crate) struct Target {
    /// Config file of the server.
    #[arg(long, global = true, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Data directory of a --dev server (uses its est-server.toml).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl Target {
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        let path = match (&self.config, &self.data_dir) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.join(est_server::dev::CONFIG_FILE),
            (None, None) => Path::new("est-data").join(est_server::dev::CONFIG_FILE),
        };
        Config::load(&path)
    }

    pub(crate) async fn registry(&self) -> anyhow::Result<Arc<dyn Registry>> {
        est_server::server::open_registry(&self.config()?).await
    }
}

pub(crate) fn format_time(unix: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64),
    )
    .to_string()
}

pub(crate) fn state_text(record: &est_server::registry::CertificateRecord) -> String {
    match record.retired_at {
        Some(_) => format!("{}+retired", record.state),
        None => record.state.to_string(),
    }
}

/// A certificate's lineage as listed: the first 12 hex digits of its key,
/// `legacy` for certificates recorded before lineages.
pub(crate) fn lineage_text(record: &est_server::registry::CertificateRecord) -> String {
    record
        .certificate
        .lineage
        .as_deref()
        .map(|key| key.chars().take(12).collect())
        .unwrap_or_else(|| "legacy".into())
}
