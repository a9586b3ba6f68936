//! `est-server`: run the EST server and administer its registry.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use est_server::config::Config;
use est_server::registry::{unix_now, Registry};
use std::sync::Arc;

mod cli;

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

#[derive(Subcommand)]
enum RegistryAction {
    /// Create the DynamoDB table and its indexes (registry.kind = "dynamodb").
    CreateTable,
    /// Bring the registry's schema up to this version (the server also does
    /// at start); prints the schema version before and after.
    Migrate,
    /// Copy a SQLite registry into PostgreSQL, row for row (rows already
    /// there are kept): `--from sqlite:<path> --to postgres:<url>`.
    Copy {
        /// `sqlite:<path>`.
        #[arg(long)]
        from: String,
        /// `postgres:<url>` (`postgres://user@host:port/dbname`); the
        /// password, if any, from `PGPASSWORD`.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum DevicesAction {
    /// Register one device and print its one-time token (shown only now).
    Add {
        /// Device id (serial); it must be the CN of the device's CSR.
        id: String,
        /// Label the device enrolls on (default: the unlabelled path).
        #[arg(long, default_value = "")]
        label: String,
        /// AWS IoT thing name, when it differs from the id.
        #[arg(long)]
        thing: Option<String>,
        /// AWS IoT policy for this device.
        #[arg(long)]
        policy: Option<String>,
        /// Allow the device to obtain a subordinate CA (Azure IoT Edge's Edge
        /// CA) on labels that issue them.
        #[arg(long)]
        edge_ca: bool,
    },
    /// Allow (or, with --deny, forbid) a device to obtain a subordinate CA.
    EdgeCa {
        /// Device id.
        id: String,
        /// Forbid instead of allow.
        #[arg(long)]
        deny: bool,
    },
    /// Register devices from a CSV file (`id[,label[,thing[,policy]]]`); tokens go to a 0600 file.
    /// Or bring over the AWS certificate vending machine's device table (`--from-cvm-dynamodb`).
    Import {
        /// CSV file.
        #[arg(required_unless_present = "from_cvm_dynamodb")]
        csv: Option<PathBuf>,
        /// Where to write `id,token` lines (created 0600; must not exist).
        #[arg(long, required_unless_present = "from_cvm_dynamodb")]
        tokens_out: Option<PathBuf>,
        /// Label for rows that name none (the vending machine's devices: all of them).
        #[arg(long, default_value = "")]
        label: String,
        /// The reference vending machine's DynamoDB table (e.g. `deviceInfo`;
        /// endpoint and region from `[aws]`): its tokens stay valid, hashed.
        #[arg(long, conflicts_with_all = ["csv", "tokens_out"])]
        from_cvm_dynamodb: Option<String>,
        /// With --from-cvm-dynamodb: print what would change, write nothing.
        #[arg(long, requires = "from_cvm_dynamodb")]
        dry_run: bool,
    },
    /// List devices.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this id (paging).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one device and its certificate history.
    Show {
        /// Device id.
        id: String,
    },
    /// Disable a device: no enrollment, no renewal.
    Disable {
        /// Device id.
        id: String,
    },
    /// Revoke every active certificate of a device and disable it.
    Revoke {
        /// Device id.
        id: String,
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

    async fn registry(&self) -> anyhow::Result<Arc<dyn Registry>> {
        est_server::server::open_registry(&self.config()?).await
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
        Command::Pending { target, action } => pending(target, action).await,
        Command::Certs { target, action } => certs(target, action).await,
        Command::Devices { target, action } => devices(target, action).await,
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
        } => create_table(target).await,
        Command::Registry {
            target,
            action: RegistryAction::Migrate,
        } => migrate(target).await,
        Command::Registry {
            action: RegistryAction::Copy { from, to },
            ..
        } => copy_registry(&from, &to).await,
        Command::Audit {
            target,
            expiring_within,
            json,
        } => audit(target, expiring_within, json).await,
        Command::Rotate {
            target,
            expiring_within,
            device,
        } => rotate(target, expiring_within, device).await,
        Command::Rotations { target, json } => rotations(target, json).await,
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

async fn pending(target: Target, action: PendingAction) -> anyhow::Result<()> {
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

async fn certs(target: Target, action: CertsAction) -> anyhow::Result<()> {
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
fn registry_serial(text: &str) -> anyhow::Result<String> {
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

/// A certificate's lineage as listed: the first 12 hex digits of its key,
/// `legacy` for certificates recorded before lineages.
fn lineage_text(record: &est_server::registry::CertificateRecord) -> String {
    record
        .certificate
        .lineage
        .as_deref()
        .map(|key| key.chars().take(12).collect())
        .unwrap_or_else(|| "legacy".into())
}

async fn devices(target: Target, action: DevicesAction) -> anyhow::Result<()> {
    use est_server::devices::{is_valid_device_id, provision};
    let registry = target.registry().await?;
    match action {
        DevicesAction::Add {
            id,
            label,
            thing,
            policy,
            edge_ca,
        } => {
            if !is_valid_device_id(&id) {
                anyhow::bail!("`{id}` is not a valid device id (printable ASCII, no `:` or `,`)");
            }
            let (mut device, token) = provision(id.clone(), label, thing, policy);
            device.edge_ca = edge_ca;
            let added = registry.add_devices(vec![device]).await?;
            if added != [true] {
                anyhow::bail!("device {id} already exists");
            }
            println!(
                "device {id} added; one-time token (shown only now): {}",
                token.as_str()
            );
        }
        DevicesAction::EdgeCa { id, deny } => {
            registry.set_device_edge_ca(&id, !deny).await?;
            println!(
                "device {id} {} obtain a subordinate CA",
                if deny { "may no longer" } else { "may" }
            );
        }
        DevicesAction::Import {
            from_cvm_dynamodb: Some(table),
            label,
            dry_run,
            ..
        } => import_cvm(&target, &*registry, &table, &label, dry_run).await?,
        DevicesAction::Import {
            csv: Some(csv),
            tokens_out: Some(tokens_out),
            label,
            ..
        } => import(&*registry, &csv, &tokens_out, &label).await?,
        DevicesAction::Import { .. } => anyhow::bail!("give a CSV file and --tokens-out"),
        DevicesAction::List { limit, after } => {
            for d in registry.list_devices(after, limit).await? {
                println!(
                    "{:<24} {:<9} label={:<10} cert={} not_after={}",
                    d.device.id,
                    d.state.to_string(),
                    if d.device.label.is_empty() {
                        "-"
                    } else {
                        &d.device.label
                    },
                    d.cert_serial.as_deref().unwrap_or("-"),
                    d.cert_not_after
                        .map(format_time)
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        DevicesAction::Show { id } => {
            let d = registry
                .device(&id)
                .await?
                .with_context(|| format!("no device {id}"))?;
            println!("device:       {}", d.device.id);
            println!("state:        {}", d.state);
            println!(
                "label:        {}",
                if d.device.label.is_empty() {
                    "-"
                } else {
                    &d.device.label
                }
            );
            println!(
                "thing:        {}",
                d.device.thing_name.as_deref().unwrap_or("-")
            );
            println!(
                "policy:       {}",
                d.device.policy.as_deref().unwrap_or("-")
            );
            println!("created:      {}", format_time(d.created_at));
            println!(
                "enrolled:     {}",
                d.enrolled_at.map(format_time).unwrap_or_else(|| "-".into())
            );
            println!(
                "certificate:  {} (id {}, sha256 {}, not after {})",
                d.cert_serial.as_deref().unwrap_or("-"),
                d.cert_id.as_deref().unwrap_or("-"),
                d.cert_fingerprint.as_deref().unwrap_or("-"),
                d.cert_not_after
                    .map(format_time)
                    .unwrap_or_else(|| "-".into())
            );
            println!("failed token attempts: {}", d.failed_attempts);
            println!(
                "edge CA:      {}",
                if d.device.edge_ca {
                    "allowed"
                } else {
                    "not allowed"
                }
            );
            println!("history (lineage = label + subject + names + kind of request):");
            for c in registry.device_certificates(&id).await? {
                println!(
                    "  {}  {:<10}  lineage={}  label={}  subject={}  issued {}  not_after {}  replaces={}  auth={}",
                    c.certificate.serial,
                    state_text(&c),
                    lineage_text(&c),
                    if c.certificate.label.is_empty() { "-" } else { &c.certificate.label },
                    c.certificate.subject,
                    format_time(c.issued_at),
                    format_time(c.certificate.not_after),
                    c.certificate.predecessor.as_deref().unwrap_or("-"),
                    c.certificate.auth
                );
            }
        }
        DevicesAction::Disable { id } => {
            registry.disable_device(&id).await?;
            println!("disabled {id}");
        }
        DevicesAction::Revoke { id } => {
            registry.disable_device(&id).await?;
            let mut revoked = 0;
            for c in registry.device_certificates(&id).await? {
                if c.state == est_server::registry::CertState::Active {
                    registry.revoke(&c.certificate.serial).await?;
                    revoked += 1;
                }
            }
            println!("disabled {id} and revoked {revoked} active certificate(s)");
            est_server::server::refresh_crl_file(&target.config()?, &*registry).await?;
        }
    }
    Ok(())
}

async fn import(
    registry: &dyn Registry,
    csv: &Path,
    tokens_out: &Path,
    default_label: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if number == 0
            && line
                .split(',')
                .next()
                .is_some_and(|f| f.trim().eq_ignore_ascii_case("id"))
        {
            continue;
        }
        match est_server::devices::parse_csv_row(line, default_label) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(e) => anyhow::bail!("{}:{}: {e}", csv.display(), number + 1),
        }
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tokens_out)
        .with_context(|| format!("cannot create {} (it must not exist)", tokens_out.display()))?;
    let (mut added, mut skipped) = (0usize, 0usize);
    let started = std::time::Instant::now();
    // Drawn only when stderr is a terminal; hidden in logs and pipes.
    let progress = indicatif::ProgressBar::new(rows.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("[{bar:40}] {pos}/{len} devices")
            .expect("a valid template")
            .progress_chars("#> "),
    );
    let mut writer = std::io::BufWriter::new(&mut out);
    writeln!(writer, "id,token")?;
    for chunk in rows.chunks(5000) {
        let provisioned: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|row| {
                est_server::devices::provision(row.id, row.label, row.thing_name, row.policy)
            })
            .collect();
        let outcome = registry
            .add_devices(provisioned.iter().map(|(d, _)| d.clone()).collect())
            .await?;
        for ((device, token), was_added) in provisioned.iter().zip(outcome) {
            if was_added {
                writeln!(writer, "{},{}", device.id, token.as_str())?;
                added += 1;
            } else {
                skipped += 1;
            }
        }
        progress.inc(chunk.len() as u64);
    }
    writer.flush()?;
    drop(writer);
    out.sync_all()?;
    progress.finish_and_clear();
    println!(
        "imported {added} devices ({skipped} already known, skipped) in {:.1}s; tokens in {} (0600) — hand them over and delete the file",
        started.elapsed().as_secs_f64(),
        tokens_out.display()
    );
    Ok(())
}

/// `devices import --from-cvm-dynamodb`: the reference vending machine's table.
#[cfg(feature = "aws")]
async fn import_cvm(
    target: &Target,
    registry: &dyn Registry,
    table: &str,
    label: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let config = target.config()?;
    let sdk = est_server::server::aws_sdk_config(&config).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let iot = ca_backends::aws::AwsIotBackend::new(ca_backends::aws::AwsIotOptions {
        region: config.aws.region.clone(),
        endpoint_url: config.aws.endpoint_url.clone(),
        max_attempts: config.aws.max_attempts,
        operation_timeout: config.aws.operation_timeout,
        ..Default::default()
    })
    .await;
    let started = std::time::Instant::now();
    let items = est_server::cvm_import::scan(&dynamodb, table).await?;
    eprintln!(
        "scanned {} items of {table} in {:.1}s",
        items.len(),
        started.elapsed().as_secs_f64()
    );
    let report = est_server::cvm_import::import(registry, &iot, items, label, dry_run).await?;
    for skipped in &report.skipped {
        eprintln!("skipped {skipped}");
    }
    println!(
        "{}{} devices added with unused tokens, {} added as enrolled, {} already imported, {} skipped ({:.1}s)",
        if dry_run { "dry run, nothing written: " } else { "" },
        report.added,
        report.enrolled,
        report.unchanged,
        report.skipped.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn import_cvm(_: &Target, _: &dyn Registry, _: &str, _: &str, _: bool) -> anyhow::Result<()> {
    anyhow::bail!("this build has no DynamoDB support")
}

async fn audit(target: Target, window: std::time::Duration, json: bool) -> anyhow::Result<()> {
    let registry = target.registry().await?;
    let now = unix_now();
    let until = now + window.as_secs() as i64;
    let found = registry.expiring_before(until, 1_000_000).await?;
    if json {
        let items: Vec<serde_json::Value> = found
            .iter()
            .map(|r| {
                let c = &r.certificate;
                serde_json::json!({
                    "serial": c.serial,
                    "deviceId": c.device_id,
                    "label": c.label,
                    "subject": c.subject,
                    "notAfter": format_time(c.not_after),
                    "secondsLeft": c.not_after - now,
                    "status": if c.not_after <= now { "expired" } else { "expiring" },
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for r in &found {
            let c = &r.certificate;
            let left = c.not_after - now;
            println!(
                "{}  {:<8}  device={:<20} not_after={}  ({})  subject={}",
                c.serial,
                if left <= 0 { "EXPIRED" } else { "expiring" },
                c.device_id.as_deref().unwrap_or("-"),
                format_time(c.not_after),
                if left <= 0 {
                    "past".to_owned()
                } else {
                    format!("{:.1} days left", left as f64 / 86400.0)
                },
                c.subject
            );
        }
        eprintln!(
            "{} active certificate(s) expire within {}",
            found.len(),
            humantime::format_duration(window)
        );
    }
    Ok(())
}

fn format_time(unix: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64),
    )
    .to_string()
}

fn state_text(record: &est_server::registry::CertificateRecord) -> String {
    match record.retired_at {
        Some(_) => format!("{}+retired", record.state),
        None => record.state.to_string(),
    }
}

async fn copy_registry(from: &str, to: &str) -> anyhow::Result<()> {
    let source = from
        .strip_prefix("sqlite:")
        .context("--from: expected sqlite:<path>")?;
    let url = to
        .strip_prefix("postgres:")
        .context("--to: expected postgres:<url>")?;
    let mut options = est_server::registry::PostgresOptions::from_url(url)?;
    if let Ok(password) = std::env::var("PGPASSWORD") {
        options.config.password(password);
    }
    let target = est_server::registry::PostgresRegistry::open(options).await?;
    for (table, rows) in target.copy_from_sqlite(Path::new(source)).await? {
        println!("{table:<18} {rows} rows copied");
    }
    Ok(())
}

async fn migrate(target: Target) -> anyhow::Result<()> {
    use est_server::config::RegistryKind;
    let config = target.config()?;
    match config.registry.kind {
        RegistryKind::Postgres => {
            let options = est_server::server::postgres_options(&config.registry)?;
            let (before, after) = est_server::registry::PostgresRegistry::connect(options)?
                .migrate()
                .await?;
            println!("registry schema version {before} -> {after}");
        }
        // SQLite migrates when it opens; DynamoDB has no schema to migrate.
        RegistryKind::Sqlite | RegistryKind::Dynamodb => {
            est_server::server::open_registry(&config).await?;
            println!("registry is up to date");
        }
    }
    Ok(())
}

#[cfg(feature = "aws")]
async fn create_table(target: Target) -> anyhow::Result<()> {
    let config = target.config()?;
    if config.registry.kind != est_server::config::RegistryKind::Dynamodb {
        anyhow::bail!("registry.kind is not \"dynamodb\"");
    }
    let sdk = est_server::server::aws_sdk_config(&config).await;
    est_server::registry::DynamoDbRegistry::new(&sdk, config.registry.table.clone())
        .create_table()
        .await?;
    println!("table {} is ready", config.registry.table);
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn create_table(_: Target) -> anyhow::Result<()> {
    anyhow::bail!("this build has no DynamoDB support")
}

async fn rotate(
    target: Target,
    window: std::time::Duration,
    device: Option<String>,
) -> anyhow::Result<()> {
    use est_server::rotation::{confirmed_audit, mqtt};
    let config = target.config()?;
    let rotation = config
        .rotation
        .clone()
        .context("the config has no [rotation] section")?;
    if !rotation.enabled {
        eprintln!(
            "note: rotation.enabled is false, so no running server handles the devices' answers"
        );
    }
    let ca = est_server::server::open_ca(&config).await?;
    let registry = est_server::server::open_registry(&config).await?;
    let pair = mqtt::client_pair(&rotation, &ca, &config.ca.dir).await?;
    let trust = est_server::server::broker_trust(&rotation, &ca)?;
    let client_id = format!("{}-cli-{}", rotation.client_id, std::process::id());
    let outcome = confirmed_audit(
        &*registry,
        &rotation,
        &client_id,
        &trust,
        &pair,
        None,
        window,
        device.as_deref(),
    )
    .await?;
    let report = outcome.report;
    for id in &report.requested {
        println!("requested  {id}");
    }
    println!(
        "{} devices asked for a CSR, {} backing off, {} deferred (max_in_flight), {} without a client id, {} already expired",
        report.requested.len(),
        report.backing_off,
        report.deferred,
        report.without_client_id,
        report.expired
    );
    if !outcome.unconfirmed.is_empty() {
        anyhow::bail!(
            "the broker did not confirm the csr_req of {} devices (not counted; run again)",
            outcome.unconfirmed.len()
        );
    }
    Ok(())
}

async fn rotations(target: Target, json: bool) -> anyhow::Result<()> {
    let registry = target.registry().await?;
    let all = registry.list_rotations(usize::MAX).await?;
    if json {
        let items: Vec<serde_json::Value> = all
            .iter()
            .map(|r| {
                serde_json::json!({
                    "clientId": r.client_id,
                    "serial": r.serial,
                    "state": r.state.as_str(),
                    "attempts": r.attempts,
                    "lastError": r.last_error,
                    "newSerial": r.new_serial,
                    "requestedAt": format_time(r.requested_at),
                    "updatedAt": format_time(r.updated_at),
                    "nextAttemptAt": format_time(r.next_attempt_at),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no rotations");
    }
    for r in all {
        println!(
            "{:<24} {:<12} attempts={} serial={} new={} updated={} error={}",
            r.client_id,
            r.state.as_str(),
            r.attempts,
            r.serial,
            r.new_serial.as_deref().unwrap_or("-"),
            format_time(r.updated_at),
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
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
