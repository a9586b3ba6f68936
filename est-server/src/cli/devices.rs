//! `devices` and `audit`: the device registry (add, import, show, disable, revoke) and the fleet-wide expiry audit.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use est_server::registry::{unix_now, Registry};

use super::{format_time, lineage_text, state_text, Target};

#[derive(Subcommand)]
pub(crate) enum DevicesAction {
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

pub(crate) async fn devices(target: Target, action: DevicesAction) -> anyhow::Result<()> {
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
            let mut listed = registry
                .list_devices(after, limit.saturating_add(1))
                .await?;
            let more = listed.len() > limit;
            listed.truncate(limit);
            let last = listed.last().map(|d| d.device.id.clone());
            for d in listed {
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
            if let (true, Some(last)) = (more, last) {
                eprintln!("showing {limit}; more with --after {last} (or --limit N)");
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

pub(crate) async fn import(
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
pub(crate) async fn import_cvm(
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
pub(crate) async fn import_cvm(
    _: &Target,
    _: &dyn Registry,
    _: &str,
    _: &str,
    _: bool,
) -> anyhow::Result<()> {
    anyhow::bail!("this build has no DynamoDB support")
}

pub(crate) async fn audit(
    target: Target,
    window: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
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
