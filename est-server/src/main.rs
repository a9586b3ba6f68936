//! `est-server`: run the EST server and administer its registry.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use est_server::config::Config;

mod cli;

use cli::certs::{CertsAction, PendingAction};
use cli::devices::DevicesAction;
use cli::registry::RegistryAction;
use cli::Target;

/// EST (RFC 7030) server for IoT fleets.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text or json (one object per line, with the request id).
    #[arg(long, global = true, env = "EST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// The local CA: create it (key in a file or a PKCS#11 token), hand its
    /// CSR to an offline root, install the signed certificate, show it.
    Ca {
        #[command(flatten)]
        target: Target,
        /// Which CA: `device` (`[ca]`) or a `[cas.<name>]`.
        #[arg(long, global = true, default_value = est_server::config::DEVICE_CA)]
        ca: String,
        #[command(subcommand)]
        action: cli::ca::CaAction,
    },
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
    /// The device registry (serial + one-time token enrollment).
    Devices {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: DevicesAction,
    },
    /// Write the local CA's CRL (revoked and retired certificates), DER.
    Crl {
        #[command(flatten)]
        target: Target,
        /// Output file (DER); also served at GET /crl.
        #[arg(long)]
        out: PathBuf,
    },
    /// Registry maintenance.
    Registry {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: RegistryAction,
    },
    /// Ask devices over MQTT to rotate certificates expiring within a window
    /// (the running server's orchestrator handles their answers).
    Rotate {
        #[command(flatten)]
        target: Target,
        /// Rotate active certificates that expire within this window (e.g. 30d).
        #[arg(long, value_parser = parse_duration)]
        expiring_within: std::time::Duration,
        /// Only this device (MQTT client id = certificate CN); ignores its back-off.
        #[arg(long)]
        device: Option<String>,
    },
    /// Show the MQTT rotation state of every device.
    Rotations {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Fleet-wide expiry audit (like Device Defender's DEVICE_CERTIFICATE_EXPIRING_CHECK).
    Audit {
        #[command(flatten)]
        target: Target,
        /// Report active certificates that expire within this window (e.g. 30d).
        #[arg(long, value_parser = parse_duration)]
        expiring_within: std::time::Duration,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    ca_backends::profile::duration_text::parse(text)
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        die_on_broken_pipe();
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.init();
    }
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

/// Lets an admin command end quietly, as Unix tools do, when its reader
/// goes away (`est-server certs list | head`). Rust starts programs with
/// SIGPIPE ignored, which turns that into a `println!` panic; the server
/// keeps ignoring it (a client closing its socket is no reason to stop).
fn die_on_broken_pipe() {
    // SAFETY: restores the default disposition of one signal before any
    // other thread exists; no handler code is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Ca { target, ca, action } => cli::ca::run(&target.config()?, &ca, action).await,
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
            let hash = est_server::authority::auth::hash_password(&password)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{hash}");
            Ok(())
        }
        Command::Pending { target, action } => cli::certs::pending(target, action).await,
        Command::Certs { target, action } => cli::certs::certs(target, action).await,
        Command::Devices { target, action } => cli::devices::devices(target, action).await,
        Command::Crl { target, out } => {
            let config = target.config()?;
            let ca = est_server::server::open_ca(&config).await?;
            let registry = est_server::server::open_registry(&config).await?;
            let der = est_server::authority::revocation::current_crl(&*registry, &ca)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            std::fs::write(&out, der).with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Registry {
            target,
            action: RegistryAction::CreateTable,
        } => cli::registry::create_table(target).await,
        Command::Registry {
            target,
            action: RegistryAction::Migrate,
        } => cli::registry::migrate(target).await,
        Command::Registry {
            action: RegistryAction::Copy { from, to },
            ..
        } => cli::registry::copy_registry(&from, &to).await,
        Command::Audit {
            target,
            expiring_within,
            json,
        } => cli::devices::audit(target, expiring_within, json).await,
        Command::Rotate {
            target,
            expiring_within,
            device,
        } => cli::rotation::rotate(target, expiring_within, device).await,
        Command::Rotations { target, json } => cli::rotation::rotations(target, json).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (mut config, dev_dir) = if args.dev {
        let path = est_server::dev::prepare(&args.data_dir).await?;
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
