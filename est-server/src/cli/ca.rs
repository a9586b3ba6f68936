//! `est-server ca …`: create the local CA with its key in a file, a
//! PKCS#11 token or AWS KMS, hand its CSR to an offline root, install what
//! the root signed, and show what is in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ca_backends::local::{self, LocalCa};
use ca_backends::signer::pkcs11::{Pkcs11Config, Pkcs11Signer};
use ca_backends::signer::{self, Signer, SignerConfig};
use clap::Subcommand;
use der::Encode;
use est_server::config::Config;
use x509_cert::Certificate;

/// What to do with the local CA.
#[derive(Subcommand)]
pub enum CaAction {
    /// Create the CA: a new issuing key (inside the token for `pkcs11`,
    /// never extractable; in KMS for `aws-kms`) and either a root in the
    /// same place or, with `--offline-root`, the issuing CA's CSR for an
    /// offline root to sign.
    Init {
        /// Where the keys go; must match the config's `[ca.signer] kind`.
        #[arg(long, value_parser = ["file", "pkcs11", "aws-kms"])]
        signer: String,
        /// Keep the root offline: write the issuing CA's CSR (then `ca import`).
        #[arg(long)]
        offline_root: bool,
        /// Label of the root key in the token (default: `<key_label>-root`).
        #[arg(long)]
        root_key_label: Option<String>,
        /// `aws-kms`: the issuing CA's KMS key (id, ARN or `alias/…`;
        /// default: `key_id` of `[ca.signer]`).
        #[arg(long)]
        key_id: Option<String>,
        /// `aws-kms`: the root's KMS key (a different key; not with `--offline-root`).
        #[arg(long)]
        root_key_id: Option<String>,
        /// `aws-kms`: create the issuing key in KMS (`CreateKey`, SIGN_VERIFY,
        /// the spec of `key_algorithm`), and the root key too unless
        /// `--root-key-id` or `--offline-root`; prints the key ids.
        #[arg(long)]
        create_key: bool,
    },
    /// Write the issuing CA's CSR (signed by its key) for an offline root.
    Csr {
        /// Output file (PEM); default `<dir>/issuing-ca.csr`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install the issuing CA certificate an offline root signed.
    Import {
        /// The issuing CA certificate (PEM or DER).
        #[arg(long)]
        cert: PathBuf,
        /// The root certificate that signed it (PEM or DER).
        #[arg(long)]
        chain: PathBuf,
    },
    /// Print the chain, where the key is, and fingerprints.
    Show,
}

/// Runs `action` on CA `name` (`device` is `[ca]`, others `[cas.<name>]`).
pub async fn run(config: &Config, name: &str, action: CaAction) -> anyhow::Result<()> {
    let settings = config
        .ca_named(name)
        .with_context(|| format!("no CA named `{name}`"))?
        .clone();
    let field = est_server::server::ca_field(name);
    let dir = settings.dir.clone();
    match action {
        CaAction::Init {
            signer: kind,
            offline_root,
            root_key_label,
            key_id,
            root_key_id,
            create_key,
        } => {
            if kind != settings.signer.kind() {
                anyhow::bail!(
                    "--signer {kind}, but [{field}.signer] kind is `{}`: set it in the config first",
                    settings.signer.kind()
                );
            }
            if dir.join(local::ISSUING_CERT).exists() {
                anyhow::bail!("{} already holds a CA", dir.display());
            }
            let options = est_server::server::ca_options(config, name)?;
            match (&settings.signer, offline_root) {
                (SignerConfig::File, false) => {
                    LocalCa::open_or_create(&dir, &options).await?;
                }
                (SignerConfig::File, true) => {
                    let key = est_wire::keys::SigningKey::generate(options.key_algorithm)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    local::create_private_dir(&dir)?;
                    local::write_private(
                        &dir.join(local::ISSUING_KEY),
                        key.to_pkcs8_pem().as_bytes(),
                    )?;
                    let signer = signer::file::FileSigner::new(key, None);
                    write_csr(
                        &options.issuing_subject,
                        &signer,
                        &dir.join(local::ISSUING_CSR),
                    )
                    .await?;
                }
                (SignerConfig::Pkcs11(p11), _) => {
                    let issuing = generate(p11.clone(), options.key_algorithm).await?;
                    if offline_root {
                        local::create_private_dir(&dir)?;
                        write_csr(
                            &options.issuing_subject,
                            &issuing,
                            &dir.join(local::ISSUING_CSR),
                        )
                        .await?;
                    } else {
                        let label = root_key_label.unwrap_or_else(|| {
                            format!("{}-root", p11.key_label.as_deref().unwrap_or("ca"))
                        });
                        let root =
                            generate(p11.with_key_label(&label), options.key_algorithm).await?;
                        LocalCa::create_with_signers(&dir, &options, &root, &issuing).await?;
                        println!("root key: {}", root.location());
                    }
                    println!("issuing key: {}", issuing.location());
                }
                (SignerConfig::AwsKms(kms), _) => {
                    let kms = kms_init(
                        kms,
                        &field,
                        &dir,
                        &options,
                        KmsInit {
                            offline_root,
                            key_id,
                            root_key_id,
                            create_key,
                        },
                    )
                    .await?;
                    if !offline_root {
                        show(&dir, &SignerConfig::AwsKms(kms)).await?;
                    }
                    return Ok(());
                }
            }
            if !offline_root {
                show(&dir, &settings.signer).await?;
            }
            Ok(())
        }
        CaAction::Csr { out } => {
            let signer = open_signer(&settings.signer, &dir).await?;
            let options = est_server::server::ca_options(config, name)?;
            let out = out.unwrap_or_else(|| dir.join(local::ISSUING_CSR));
            write_csr(&options.issuing_subject, signer.as_ref(), &out).await
        }
        CaAction::Import { cert, chain } => {
            let issuing = local::read_certificate(&cert)?;
            let root = local::read_certificate(&chain)?;
            let signer = open_signer(&settings.signer, &dir).await?;
            LocalCa::import(&dir, &issuing, &root, signer.as_ref())?;
            println!("installed {}", dir.join(local::ISSUING_CERT).display());
            show(&dir, &settings.signer).await
        }
        CaAction::Show => show(&dir, &settings.signer).await,
    }
}

/// Generates a key pair in the token (blocking work, off the runtime).
async fn generate(
    config: Pkcs11Config,
    algorithm: est_wire::keys::KeyAlgorithm,
) -> anyhow::Result<Pkcs11Signer> {
    Ok(tokio::task::spawn_blocking(move || Pkcs11Signer::generate(&config, algorithm)).await??)
}

async fn open_signer(config: &SignerConfig, dir: &Path) -> anyhow::Result<Arc<dyn Signer>> {
    Ok(signer::open(config, dir).await?)
}

/// The `--key-id` / `--root-key-id` / `--create-key` choices of `ca init --signer aws-kms`.
struct KmsInit {
    offline_root: bool,
    key_id: Option<String>,
    root_key_id: Option<String>,
    create_key: bool,
}

/// `ca init --signer aws-kms`: the issuing key (given, configured or
/// created), then a root signed by a second KMS key or the issuing CSR for
/// an offline root. Returns the settings with the issuing key id filled in.
#[cfg(feature = "aws")]
async fn kms_init(
    kms: &ca_backends::signer::aws_kms::AwsKmsConfig,
    field: &str,
    dir: &Path,
    options: &ca_backends::local::LocalCaOptions,
    choice: KmsInit,
) -> anyhow::Result<ca_backends::signer::aws_kms::AwsKmsConfig> {
    use ca_backends::signer::aws_kms::AwsKmsSigner;
    if choice.offline_root && choice.root_key_id.is_some() {
        anyhow::bail!("--root-key-id and --offline-root exclude each other");
    }
    let configured = kms.key_id.clone().filter(|id| !id.trim().is_empty());
    let in_config = configured.is_some();
    let issuing_id = match (choice.key_id, configured, choice.create_key) {
        (Some(given), Some(configured), _) if given != configured => anyhow::bail!(
            "--key-id {given}, but [{field}.signer] key_id is `{configured}`: use one key"
        ),
        (Some(_), _, true) | (_, Some(_), true) => anyhow::bail!(
            "--create-key makes a new key, but a key id is already given: drop one of them"
        ),
        (Some(id), _, false) | (None, Some(id), false) => id,
        (None, None, true) => {
            let (id, arn) = AwsKmsSigner::create_key(
                kms,
                options.key_algorithm,
                &format!("est-server issuing CA ({})", options.issuing_subject),
            )
            .await?;
            println!("created KMS key {id} ({arn}) for the issuing CA");
            id
        }
        (None, None, false) => anyhow::bail!(
            "[{field}.signer] kind = \"aws-kms\" needs a key: set key_id, pass --key-id, or --create-key"
        ),
    };
    let kms = kms.with_key_id(&issuing_id);
    let issuing = AwsKmsSigner::open(&kms).await?;
    if choice.offline_root {
        local::create_private_dir(dir)?;
        write_csr(
            &options.issuing_subject,
            &issuing,
            &dir.join(local::ISSUING_CSR),
        )
        .await?;
    } else {
        let root_id = match choice.root_key_id {
            Some(id) => id,
            None if choice.create_key => {
                let (id, arn) = AwsKmsSigner::create_key(
                    &kms,
                    options.key_algorithm,
                    &format!("est-server root CA ({})", options.root_subject),
                )
                .await?;
                println!("created KMS key {id} ({arn}) for the root");
                id
            }
            None => anyhow::bail!(
                "the root needs its own KMS key: pass --root-key-id, --create-key, or --offline-root"
            ),
        };
        let root = AwsKmsSigner::open(&kms.with_key_id(&root_id)).await?;
        if root.key_arn() == issuing.key_arn() {
            anyhow::bail!("the root and the issuing CA must have different KMS keys");
        }
        LocalCa::create_with_signers(dir, options, &root, &issuing).await?;
        println!("root key: {}", root.location());
    }
    println!("issuing key: {}", issuing.location());
    if !in_config {
        println!("now set in [{field}.signer]: key_id = \"{issuing_id}\"");
    }
    Ok(kms)
}

#[cfg(not(feature = "aws"))]
async fn kms_init(
    _kms: &ca_backends::signer::aws_kms::AwsKmsConfig,
    _field: &str,
    _dir: &Path,
    _options: &ca_backends::local::LocalCaOptions,
    _choice: KmsInit,
) -> anyhow::Result<ca_backends::signer::aws_kms::AwsKmsConfig> {
    anyhow::bail!("--signer aws-kms: this build has no AWS support (the `aws` feature)")
}

async fn write_csr(subject: &str, signer: &dyn Signer, out: &Path) -> anyhow::Result<()> {
    let der = LocalCa::issuing_csr(subject, signer).await?;
    let pem = est_wire::pem::encode("CERTIFICATE REQUEST", &der);
    std::fs::write(out, pem).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote the issuing CA's CSR to {}", out.display());
    println!("have the offline root sign it, then: est-server ca import --cert issuing.pem --chain root.pem");
    Ok(())
}

/// Prints the chain, where the key is, and SHA-256 fingerprints.
async fn show(dir: &Path, config: &SignerConfig) -> anyhow::Result<()> {
    println!("CA directory: {}", dir.display());
    let issuing_path = dir.join(local::ISSUING_CERT);
    if !issuing_path.exists() {
        if dir.join(local::ISSUING_CSR).exists() {
            println!(
                "state: awaiting `ca import` (CSR at {})",
                dir.join(local::ISSUING_CSR).display()
            );
        } else {
            println!("state: no CA yet (run `est-server ca init`)");
        }
        return Ok(());
    }
    let signer = open_signer(config, dir).await?;
    let ca = LocalCa::open_with_signer(dir, signer)?;
    println!("issuing key: {}", ca.key_location());
    for (role, certificate) in [("issuing", ca.issuing()), ("root", ca.root())] {
        print_certificate(role, certificate)?;
    }
    Ok(())
}

fn print_certificate(role: &str, certificate: &Certificate) -> anyhow::Result<()> {
    let tbs = &certificate.tbs_certificate;
    println!("{role}:");
    println!("  subject: {}", tbs.subject);
    println!("  issuer: {}", tbs.issuer);
    println!("  serial: {}", ca_backends::serial_hex(certificate));
    println!(
        "  valid: {} .. {}",
        tbs.validity.not_before, tbs.validity.not_after
    );
    println!(
        "  SHA-256 fingerprint: {}",
        signer::fingerprint(&certificate.to_der()?)
    );
    println!(
        "  public key SHA-256: {}",
        signer::fingerprint(&tbs.subject_public_key_info.to_der()?)
    );
    Ok(())
}
