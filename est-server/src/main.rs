//! `est-server`: run the EST server and administer its registry.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use est_server::config::Config;
use est_server::registry::{unix_now, Registry, SqliteRegistry};
use std::sync::Arc;

/// EST (RFC 7030) server for IoT fleets.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Hash a password for `[[users]]` (reads it from stdin, or EST_PASSWORD).
    HashPassword,
    /// Enrollments held for approval.
    Pending {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: PendingAction,
    },
    /// Issued certificates.
    Certs {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: CertsAction,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Config file.
    #[arg(long, conflicts_with = "dev", required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Zero-setup development mode: create CA, TLS cert, registry and a demo user.
    #[arg(long)]
    dev: bool,
    /// Data directory for --dev.
    #[arg(long, default_value = "est-data", requires = "dev")]
    data_dir: PathBuf,
    /// Listen address (overrides the config file).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// Which server's registry to work on.
#[derive(Args)]
struct Target {
    /// Config file of the server.
    #[arg(long, global = true, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Data directory of a --dev server (uses its est-server.toml).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl Target {
    fn config(&self) -> anyhow::Result<Config> {
        let path = match (&self.config, &self.data_dir) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.join(est_server::dev::CONFIG_FILE),
            (None, None) => Path::new("est-data").join(est_server::dev::CONFIG_FILE),
        };
        Config::load(&path)
    }

    fn registry(&self) -> anyhow::Result<Arc<dyn Registry>> {
        let config = self.config()?;
        let registry = SqliteRegistry::open(&config.registry.path)
            .with_context(|| format!("registry {}", config.registry.path.display()))?;
        Ok(Arc::new(registry))
    }
}

#[derive(Subcommand)]
enum PendingAction {
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
enum CertsAction {
    /// List issued certificates, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Revoke a certificate: it can no longer authenticate or be renewed.
    Revoke {
        /// Serial number, hex.
        serial: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::HashPassword => {
            let password = match std::env::var("EST_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if password.is_empty() {
                anyhow::bail!("empty password");
            }
            let hash =
                est_server::auth::hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{hash}");
            Ok(())
        }
        Command::Pending { target, action } => pending(target, action).await,
        Command::Certs { target, action } => certs(target, action).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (mut config, dev_dir) = if args.dev {
        let path = est_server::dev::prepare(&args.data_dir)?;
        (Config::load(&path)?, Some(args.data_dir.clone()))
    } else {
        let path = args.config.expect("clap requires --config without --dev");
        (Config::load(&path)?, None)
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = &dev_dir {
        est_server::dev::print_instructions(dir, config.listen);
    }
    est_server::server::run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn pending(target: Target, action: PendingAction) -> anyhow::Result<()> {
    let registry = target.registry()?;
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

async fn certs(target: Target, action: CertsAction) -> anyhow::Result<()> {
    let registry = target.registry()?;
    match action {
        CertsAction::List { limit } => {
            for r in registry.list_certificates(limit).await? {
                let c = &r.certificate;
                println!(
                    "{}  {:<10}  label={:<8} not_after={}  subject={}  predecessor={}  auth={}",
                    c.serial,
                    r.state.to_string(),
                    if c.label.is_empty() { "-" } else { &c.label },
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(c.not_after.max(0) as u64)
                    ),
                    c.subject,
                    c.predecessor.as_deref().unwrap_or("-"),
                    c.auth
                );
            }
        }
        CertsAction::Revoke { serial } => {
            registry.revoke(&serial.to_ascii_lowercase()).await?;
            println!("revoked {serial}");
        }
    }
    Ok(())
}
