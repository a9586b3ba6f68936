//! `est-client`: enroll, renew and inspect device certificates over EST.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use der::asn1::{Ia5String, OctetString};
use est_client::client::{fingerprint, CsrSource, EstClient, EstClientConfig};
use est_client::daemon::{
    escape_rdn, hex_serial, spec_from, validity, Outcome, RenewConfig, Renewer,
};
use est_client::files::{install_pair, read_certificate, recover_pair, write_atomic};
use est_client::mqtt::MqttAgent;
use est_client::policy::lifetime_used;
use est_client::transport::{read_certs, read_key, ClientIdentity, ServerTrust};
use est_wire::csr::CsrSpec;
use est_wire::keys::{KeyAlgorithm, SigningKey};
use x509_cert::ext::pkix::name::GeneralName;
use zeroize::Zeroizing;

/// Exit code: renewal not due.
const EXIT_NOT_DUE: u8 = 10;
/// Exit code: failure.
const EXIT_FAILED: u8 = 1;

/// Device-side EST (RFC 7030) client.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// EST server, e.g. https://est.example:8443
    #[arg(long, env = "EST_SERVER")]
    server: String,
    /// CA label (/.well-known/est/<label>/...).
    #[arg(long)]
    label: Option<String>,
    /// PEM trust anchor(s) for the server (repeatable).
    #[arg(long = "trust")]
    trust: Vec<PathBuf>,
    /// HTTP Basic user.
    #[arg(long)]
    user: Option<String>,
    /// HTTP Basic password (prefer the EST_PASSWORD environment variable).
    #[arg(long, env = "EST_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// TLS client certificate (PEM): bootstrap cert for enroll, current cert for reenroll.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Key of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Put the TLS channel binding (RFC 9266 tls-exporter) into the CSR's challengePassword.
    #[arg(long)]
    channel_binding: bool,
}

#[derive(Args, Clone)]
struct Identity {
    /// Subject common name.
    #[arg(long)]
    cn: Option<String>,
    /// DNS subjectAltName (repeatable).
    #[arg(long)]
    dns: Vec<String>,
    /// URI subjectAltName (repeatable).
    #[arg(long)]
    uri: Vec<String>,
    /// IP subjectAltName (repeatable).
    #[arg(long)]
    ip: Vec<IpAddr>,
    /// Key type for a new key: p256 (default), p384, rsa2048, rsa3072.
    #[arg(long, default_value = "p256")]
    key_type: KeyAlgorithm,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the CA certificates.
    Cacerts {
        #[command(flatten)]
        common: Common,
        /// Write the certificates here (PEM).
        #[arg(long)]
        out: Option<PathBuf>,
        /// First contact without a trust anchor: print fingerprints; save only
        /// with --accept-fingerprint matching the root.
        #[arg(long)]
        first_contact: bool,
        /// SHA-256 fingerprint of the root the operator has confirmed.
        #[arg(long, requires = "first_contact")]
        accept_fingerprint: Option<String>,
    },
    /// Show the CSR attributes the server asks for.
    Csrattrs {
        #[command(flatten)]
        common: Common,
    },
    /// First enrollment: make (or reuse) a key, send a CSR, save the certificate.
    Enroll {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        identity: Identity,
        /// Where to write the certificate (PEM).
        #[arg(long, default_value = "device.pem")]
        out: PathBuf,
        /// Where the enrolled key lives (created 0600 if absent).
        #[arg(long, default_value = "device.key")]
        out_key: PathBuf,
    },
    /// Renew now over mTLS with --cert/--key, installing the result in place.
    Reenroll {
        #[command(flatten)]
        common: Common,
        /// Make a new key pair (rekey) instead of renewing the same key.
        #[arg(long)]
        rotate_key: bool,
        /// Key type when rotating.
        #[arg(long, default_value = "p256")]
        key_type: KeyAlgorithm,
    },
    /// Server-side key generation: the server makes the key pair and returns it with the certificate.
    Serverkeygen {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        identity: Identity,
        /// Where to write the certificate (PEM).
        #[arg(long, default_value = "device.pem")]
        out: PathBuf,
        /// Where to write the returned private key (PKCS#8 PEM, 0600).
        #[arg(long, default_value = "device.key")]
        out_key: PathBuf,
    },
    /// Show a certificate's subject, serial, issuer, validity and lifetime used.
    Status {
        /// Certificate (PEM).
        #[arg(long, default_value = "device.pem")]
        cert: PathBuf,
        /// Its key; checks the pair (and repairs an interrupted renewal).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Renew per a TOML config when due: exit 0 renewed, 10 not due, 1 failed.
    Renew {
        /// Renewal config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Keep running, renewing whenever due, until SIGTERM.
        #[arg(long)]
        daemon: bool,
        /// Renew now even if not due.
        #[arg(long, conflicts_with = "daemon")]
        force: bool,
    },
    /// Run until SIGTERM/SIGINT: the renewal daemon, plus the MQTT rotation
    /// agent when the config has an [mqtt] section.
    Run {
        /// Renewal config (TOML).
        #[arg(long)]
        config: PathBuf,
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Cacerts {
            common,
            out,
            first_contact,
            accept_fingerprint,
        } => cacerts(common, out, first_contact, accept_fingerprint).await,
        Command::Csrattrs { common } => {
            let oids = client(&common, false)?.csrattrs().await?;
            if oids.is_empty() {
                println!("no CSR attributes requested");
            }
            for oid in oids {
                println!("{}", est_wire::csr::oid_name(&oid));
            }
            Ok(0)
        }
        Command::Enroll {
            common,
            identity,
            out,
            out_key,
        } => enroll(common, identity, out, out_key).await,
        Command::Reenroll {
            common,
            rotate_key,
            key_type,
        } => reenroll(common, rotate_key, key_type).await,
        Command::Serverkeygen {
            common,
            identity,
            out,
            out_key,
        } => {
            // The CSR only carries the identity; it is signed with a throw-away key.
            let spec = spec(&identity)?;
            let throwaway = SigningKey::generate(identity.key_type)?;
            let (certificate, key) = client(&common, true)?
                .serverkeygen(CsrSource::Build {
                    spec: &spec,
                    key: &throwaway,
                })
                .await?;
            install_pair(
                &out,
                &out_key,
                &est_wire::pem::certificate_to_pem(&certificate),
                Some(&key.to_pkcs8_pem()),
            )?;
            println!(
                "server generated a {:?} key; {} serial {} -> {}, key -> {}",
                key.algorithm(),
                certificate.tbs_certificate.subject,
                hex_serial(&certificate),
                out.display(),
                out_key.display()
            );
            Ok(0)
        }
        Command::Status { cert, key } => status(&cert, key.as_deref()),
        Command::Renew {
            config,
            daemon,
            force,
        } => renew(&config, daemon, force).await,
        Command::Run { config } => run_agents(&config).await,
    }
}

fn client(common: &Common, with_identity: bool) -> anyhow::Result<EstClient> {
    let mut anchors = Vec::new();
    for path in &common.trust {
        anchors.extend(read_certs(path)?);
    }
    if anchors.is_empty() {
        anyhow::bail!("--trust <PEM> is required: the server must be authenticated before credentials are sent");
    }
    let mut config = EstClientConfig::new(common.server.clone(), ServerTrust::Anchors(anchors));
    config.label = common.label.clone();
    config.channel_binding = common.channel_binding;
    if let Some(user) = &common.user {
        let password = common
            .password
            .clone()
            .context("--user needs --password or EST_PASSWORD")?;
        config.basic = Some((user.clone(), Zeroizing::new(password)));
    }
    if with_identity {
        if let (Some(cert), Some(key)) = (&common.cert, &common.key) {
            config.identity = Some(ClientIdentity {
                chain: read_certs(cert)?,
                key: read_key(key)?,
            });
        }
    }
    Ok(EstClient::new(config)?)
}

async fn cacerts(
    common: Common,
    out: Option<PathBuf>,
    first_contact: bool,
    accept: Option<String>,
) -> anyhow::Result<u8> {
    let certs = if first_contact {
        let mut config =
            EstClientConfig::new(common.server.clone(), ServerTrust::FirstContactInsecure);
        config.label = common.label.clone();
        let (certs, _) = EstClient::new(config)?.cacerts_with_server_chain().await?;
        eprintln!("FIRST CONTACT: the server was NOT authenticated. Confirm the root fingerprint out of band.");
        for cert in &certs {
            eprintln!(
                "  {}  SHA256 {}",
                cert.tbs_certificate.subject,
                fingerprint(cert)
            );
        }
        let root = certs
            .iter()
            .find(|c| c.tbs_certificate.subject == c.tbs_certificate.issuer)
            .context("the /cacerts answer holds no self-signed root")?;
        let normalise = |s: &str| s.replace(':', "").to_ascii_lowercase();
        match accept {
            Some(expected) if normalise(&expected) == normalise(&fingerprint(root)) => {}
            Some(_) => {
                anyhow::bail!("root fingerprint does not match --accept-fingerprint; nothing saved")
            }
            None => {
                eprintln!("re-run with --accept-fingerprint <root SHA256> to save it");
                return Ok(EXIT_FAILED);
            }
        }
        certs
    } else {
        client(&common, false)?.cacerts().await?
    };
    let pem: String = certs
        .iter()
        .map(est_wire::pem::certificate_to_pem)
        .collect();
    match out {
        Some(path) => {
            write_atomic(&path, pem.as_bytes(), 0o644)?;
            eprintln!("wrote {} certificates to {}", certs.len(), path.display());
        }
        None => print!("{pem}"),
    }
    Ok(0)
}

fn spec(identity: &Identity) -> anyhow::Result<CsrSpec> {
    let cn = identity.cn.as_deref().context("--cn is required")?;
    let mut names = Vec::new();
    for dns in &identity.dns {
        names.push(GeneralName::DnsName(Ia5String::new(dns).context("--dns")?));
    }
    for uri in &identity.uri {
        names.push(GeneralName::UniformResourceIdentifier(
            Ia5String::new(uri).context("--uri")?,
        ));
    }
    for ip in &identity.ip {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(GeneralName::IpAddress(OctetString::new(octets)?));
    }
    Ok(CsrSpec {
        subject: format!("CN={}", escape_rdn(cn)).parse().context("--cn")?,
        subject_alt_names: names,
        ..CsrSpec::default()
    })
}

async fn enroll(
    common: Common,
    identity: Identity,
    out: PathBuf,
    out_key: PathBuf,
) -> anyhow::Result<u8> {
    let spec = spec(&identity)?;
    let (key, new_key) = if out_key.exists() {
        (SigningKey::from_pem(&std::fs::read(&out_key)?)?, false)
    } else {
        (SigningKey::generate(identity.key_type)?, true)
    };
    let certificate = client(&common, true)?
        .simpleenroll(CsrSource::Build {
            spec: &spec,
            key: &key,
        })
        .await?;
    let key_pem = new_key.then(|| key.to_pkcs8_pem());
    install_pair(
        &out,
        &out_key,
        &est_wire::pem::certificate_to_pem(&certificate),
        key_pem.as_deref(),
    )?;
    println!(
        "enrolled {} serial {} -> {}",
        certificate.tbs_certificate.subject,
        hex_serial(&certificate),
        out.display()
    );
    Ok(0)
}

async fn reenroll(common: Common, rotate_key: bool, key_type: KeyAlgorithm) -> anyhow::Result<u8> {
    let cert_path = common
        .cert
        .clone()
        .context("--cert (the current certificate) is required")?;
    let key_path = common.key.clone().context("--key is required")?;
    recover_pair(&cert_path, &key_path)?;
    let current = read_certificate(&cert_path)?;
    let key = if rotate_key {
        SigningKey::generate(key_type)?
    } else {
        SigningKey::from_pem(&std::fs::read(&key_path)?)?
    };
    let spec = spec_from(&current);
    let certificate = client(&common, true)?
        .simplereenroll(CsrSource::Build {
            spec: &spec,
            key: &key,
        })
        .await?;
    let key_pem = rotate_key.then(|| key.to_pkcs8_pem());
    install_pair(
        &cert_path,
        &key_path,
        &est_wire::pem::certificate_to_pem(&certificate),
        key_pem.as_deref(),
    )?;
    println!(
        "renewed {} serial {} -> {} (previous kept as .prev)",
        certificate.tbs_certificate.subject,
        hex_serial(&certificate),
        cert_path.display()
    );
    Ok(0)
}

fn status(cert_path: &Path, key_path: Option<&Path>) -> anyhow::Result<u8> {
    if let Some(key_path) = key_path {
        let recovery = recover_pair(cert_path, key_path)?;
        if recovery == est_client::files::Recovery::Empty {
            anyhow::bail!(
                "neither {} nor {} exists",
                cert_path.display(),
                key_path.display()
            );
        }
        println!("pair:       {recovery:?} (certificate and key belong together)");
    }
    let cert = read_certificate(cert_path)?;
    let (not_before, not_after) = validity(&cert);
    let used = lifetime_used(not_before, not_after, SystemTime::now());
    let text = format!(
        "subject:    {}\nserial:     {}\nissuer:     {}\nnot before: {}\nnot after:  {}\nlifetime:   {used:.1}% used{}\n",
        cert.tbs_certificate.subject,
        hex_serial(&cert),
        cert.tbs_certificate.issuer,
        humantime::format_rfc3339_seconds(not_before),
        humantime::format_rfc3339_seconds(not_after),
        if used >= 100.0 { " (EXPIRED)" } else { "" }
    );
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    Ok(if used >= 100.0 { EXIT_FAILED } else { 0 })
}

async fn renew(config: &Path, daemon: bool, force: bool) -> anyhow::Result<u8> {
    let renewer = Renewer::new(RenewConfig::load(config)?);
    if daemon {
        renewer.run(shutdown_signal()).await;
        return Ok(0);
    }
    match renewer.renew_once(force).await? {
        Outcome::NotDue { due } => {
            println!("not due until {}", humantime::format_rfc3339_seconds(due));
            Ok(EXIT_NOT_DUE)
        }
        Outcome::Renewed {
            serial,
            not_after,
            via_bootstrap,
        } => {
            println!(
                "renewed: serial {serial}, valid until {}{}",
                humantime::format_rfc3339_seconds(not_after),
                if via_bootstrap {
                    " (bootstrap credentials)"
                } else {
                    ""
                }
            );
            Ok(0)
        }
    }
}

/// The renewal daemon and (if configured) the MQTT agent, until a signal.
async fn run_agents(config: &Path) -> anyhow::Result<u8> {
    let renewer = Arc::new(Renewer::new(RenewConfig::load(config)?));
    let agent = MqttAgent::new(Arc::clone(&renewer))?;
    if agent.is_none() {
        tracing::info!("no [mqtt] section: running the renewal daemon only");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    tokio::join!(
        async {
            shutdown_signal().await;
            let _ = stop.send(true);
        },
        renewer.run(until_stopped(stopped.clone())),
        async {
            if let Some(agent) = agent {
                agent.run(until_stopped(stopped.clone())).await;
            }
        },
    );
    Ok(0)
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
