//! Renewal: one attempt ([`Renewer::renew_once`]) and the loop around it
//! ([`Renewer::run`]).
//!
//! An attempt renews with `/simplereenroll` over mTLS with the current pair.
//! When there is no current certificate, it has expired, or the server
//! rejects it (401/403), the bootstrap credentials (Basic and/or a bootstrap
//! certificate) enroll afresh with `/simpleenroll`. A new certificate is
//! installed only after it verifies against the trust anchors and certifies
//! the key; then the optional hook runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use est_wire::csr::CsrSpec;
use est_wire::keys::{KeyAlgorithm, SigningKey};
use serde::Deserialize;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::client::{ClientError, CsrSource, EstClient, EstClientConfig};
use crate::files::{install_pair, read_certificate, recover_pair, sibling, write_atomic};
use crate::mqtt::MqttConfig;
use crate::policy::{with_jitter, AutoRenew};
use crate::transport::{read_certs, read_key, ClientIdentity, ServerTrust};

/// The renewal configuration file (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewConfig {
    /// `https://host:port`.
    pub server: String,
    /// EST label, if any.
    #[serde(default)]
    pub label: Option<String>,
    /// PEM trust anchors for the server and for issued certificates.
    pub trust: Vec<PathBuf>,
    /// Where the device certificate lives.
    pub cert: PathBuf,
    /// Where its private key lives.
    pub key: PathBuf,
    /// Key type for new keys: p256 (default), p384, rsa2048, rsa3072.
    #[serde(default = "default_key_algorithm")]
    pub key_algorithm: String,
    /// Put the TLS channel binding into CSRs (RFC 9266).
    #[serde(default)]
    pub channel_binding: bool,
    /// Command (argv) to run after a successful renewal.
    #[serde(default)]
    pub hook: Vec<String>,
    /// Threshold, retry and key rotation.
    #[serde(default)]
    pub auto_renew: AutoRenew,
    /// Fallback credentials for a first or lapsed enrollment.
    #[serde(default)]
    pub bootstrap: Option<Bootstrap>,
    /// MQTT rotation agent (server-driven rotation), run by `est-client run`.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
}

/// Credentials for `/simpleenroll` when there is no usable identity certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// HTTP Basic user.
    #[serde(default)]
    pub user: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Bootstrap (manufacturer) certificate.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Subject CN for a first enrollment (default: the bootstrap certificate's CN).
    #[serde(default)]
    pub common_name: Option<String>,
}

fn default_key_algorithm() -> String {
    "p256".into()
}

impl RenewConfig {
    /// Loads and checks a config file; relative paths are relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: RenewConfig =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        config.trust.iter_mut().for_each(resolve);
        resolve(&mut config.cert);
        resolve(&mut config.key);
        if let Some(b) = &mut config.bootstrap {
            b.cert.iter_mut().for_each(resolve);
            b.key.iter_mut().for_each(resolve);
            b.password_file.iter_mut().for_each(resolve);
        }
        if let Some(m) = &mut config.mqtt {
            m.broker_ca.iter_mut().for_each(resolve);
            m.check().context("[mqtt]")?;
        }
        config
            .key_algorithm
            .parse::<KeyAlgorithm>()
            .map_err(|e| anyhow::anyhow!("key_algorithm: {e}"))?;
        Ok(config)
    }
}

/// The result of one attempt.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to do until `due`.
    NotDue {
        /// When renewal becomes due.
        due: SystemTime,
    },
    /// A new certificate is installed.
    Renewed {
        /// Its serial, hex.
        serial: String,
        /// Its end of validity.
        not_after: SystemTime,
        /// Whether the bootstrap credentials were used.
        via_bootstrap: bool,
    },
}

/// Renews one device certificate according to a [`RenewConfig`].
pub struct Renewer {
    config: RenewConfig,
    install_lock: tokio::sync::Mutex<()>,
}

impl Renewer {
    /// Wraps a configuration.
    pub fn new(config: RenewConfig) -> Self {
        Self {
            config,
            install_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RenewConfig {
        &self.config
    }

    /// The lock held across a whole renewal ([`Renewer::renew_once`]); anyone
    /// else changing the certificate/key files (the MQTT agent) holds it too.
    pub fn install_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.install_lock
    }

    /// The trust anchors (`trust` files) for servers and issued certificates.
    pub fn anchors(&self) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
        let mut anchors = Vec::new();
        for path in &self.config.trust {
            anchors.extend(read_certs(path)?);
        }
        Ok(anchors)
    }

    fn client(
        &self,
        basic: Option<(String, Zeroizing<String>)>,
        identity: Option<(&Path, &Path)>,
    ) -> anyhow::Result<EstClient> {
        let mut config = EstClientConfig::new(
            self.config.server.clone(),
            ServerTrust::Anchors(self.anchors()?),
        );
        config.label = self.config.label.clone();
        config.basic = basic;
        config.channel_binding = self.config.channel_binding;
        if let Some((cert, key)) = identity {
            config.identity = Some(ClientIdentity {
                chain: read_certs(cert)?,
                key: read_key(key)?,
            });
        }
        Ok(EstClient::new(config)?)
    }

    /// Renews if due (or if `force`), installing the result.
    pub async fn renew_once(&self, force: bool) -> anyhow::Result<Outcome> {
        let _installing = self.install_lock.lock().await;
        let cfg = &self.config;
        recover_pair(&cfg.cert, &cfg.key)?;
        let current = if cfg.cert.exists() {
            Some(read_certificate(&cfg.cert)?)
        } else {
            None
        };
        let now = SystemTime::now();
        if let Some(cert) = &current {
            let (not_before, not_after) = validity(cert);
            let due = cfg.auto_renew.due_at(not_before, not_after);
            if now < due && !force {
                return Ok(Outcome::NotDue { due });
            }
        }

        let (key, rotate) = renewal_key(cfg, current.as_ref())?;
        let pending_key = sibling(&cfg.key, "pending");

        let mut via_bootstrap = false;
        let issued = match &current {
            Some(cert) if validity(cert).1 > now => {
                let spec = spec_from(cert);
                let client = self.client(None, Some((&cfg.cert, &cfg.key)))?;
                match client
                    .simplereenroll(CsrSource::Build {
                        spec: &spec,
                        key: &key,
                    })
                    .await
                {
                    Ok(issued) => issued,
                    Err(e) if e.is_auth_rejection() && cfg.bootstrap.is_some() => {
                        tracing::warn!(error = %e, "current certificate rejected; falling back to bootstrap credentials");
                        via_bootstrap = true;
                        self.bootstrap_enroll(&spec, &key).await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {
                tracing::info!("no valid certificate; enrolling with bootstrap credentials");
                via_bootstrap = true;
                let spec = match &current {
                    Some(cert) => spec_from(cert),
                    None => self.first_spec()?,
                };
                self.bootstrap_enroll(&spec, &key).await?
            }
        };

        // Verify before installing: chains to the trust anchors through
        // /cacerts (fetched without a client certificate) and certifies our key.
        let chain = self.cacerts_with(None).await?;
        crate::verify::verify_chain(&issued, &chain, &self.anchors()?)?;
        if issued.tbs_certificate.subject_public_key_info != key.public_key_info() {
            anyhow::bail!("the issued certificate does not certify our key");
        }
        let cert_pem = est_wire::pem::certificate_to_pem(&issued);
        let key_pem = rotate.then(|| key.to_pkcs8_pem());
        install_pair(&cfg.cert, &cfg.key, &cert_pem, key_pem.as_deref())?;
        let _ = std::fs::remove_file(&pending_key);
        // Only now, with the pair installed, show the server the successor in
        // use: that lets it retire the predecessor. Until then a lost
        // response can still be retried with the predecessor.
        if let Err(e) = self.cacerts_with(Some((&issued, &key))).await {
            tracing::warn!(error = %e, "the server did not accept the new certificate yet; it will see it on next use");
        }
        let serial = hex_serial(&issued);
        let not_after = validity(&issued).1;
        tracing::info!(%serial, rotated_key = rotate, via_bootstrap, not_after = %humantime::format_rfc3339_seconds(not_after), "renewed certificate");
        self.run_hook();
        Ok(Outcome::Renewed {
            serial,
            not_after,
            via_bootstrap,
        })
    }

    /// `/cacerts`, over TLS with `identity` as client certificate if given.
    async fn cacerts_with(
        &self,
        identity: Option<(&Certificate, &SigningKey)>,
    ) -> anyhow::Result<Vec<Certificate>> {
        use der::Encode;
        let mut config = EstClientConfig::new(
            self.config.server.clone(),
            ServerTrust::Anchors(self.anchors()?),
        );
        config.label = self.config.label.clone();
        if let Some((certificate, key)) = identity {
            config.identity = Some(ClientIdentity {
                chain: vec![rustls_pki_types::CertificateDer::from(
                    certificate.to_der()?,
                )],
                key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into()),
            });
        }
        Ok(EstClient::new(config)?.cacerts().await?)
    }

    async fn bootstrap_enroll(
        &self,
        spec: &CsrSpec,
        key: &SigningKey,
    ) -> anyhow::Result<Certificate> {
        let bootstrap = self
            .config
            .bootstrap
            .as_ref()
            .context("no usable certificate and no [bootstrap] credentials configured")?;
        let basic = match &bootstrap.user {
            Some(user) => Some((user.clone(), bootstrap_password(bootstrap)?)),
            None => None,
        };
        let identity = match (&bootstrap.cert, &bootstrap.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            _ => None,
        };
        let client = self.client(basic, identity)?;
        Ok(client.simpleenroll(CsrSource::Build { spec, key }).await?)
    }

    fn first_spec(&self) -> anyhow::Result<CsrSpec> {
        let bootstrap = self
            .config
            .bootstrap
            .as_ref()
            .context("no certificate and no [bootstrap] section")?;
        let cn = match (&bootstrap.common_name, &bootstrap.cert) {
            (Some(cn), _) => cn.clone(),
            (None, Some(cert)) => {
                est_wire::csr::common_name(&read_certificate(cert)?.tbs_certificate.subject)
                    .context("bootstrap certificate has no CN; set bootstrap.common_name")?
            }
            (None, None) => anyhow::bail!("set bootstrap.common_name for the first enrollment"),
        };
        Ok(CsrSpec {
            subject: format!("CN={}", escape_rdn(&cn))
                .parse()
                .context("common name")?,
            ..CsrSpec::default()
        })
    }

    /// Runs the configured `hook` (if any) after a new certificate was installed.
    pub fn run_hook(&self) {
        let Some((program, args)) = self.config.hook.split_first() else {
            return;
        };
        match std::process::Command::new(program).args(args).status() {
            Ok(status) if status.success() => tracing::info!(hook = %program, "renewal hook ran"),
            Ok(status) => tracing::warn!(hook = %program, %status, "renewal hook failed"),
            Err(e) => tracing::warn!(hook = %program, error = %e, "renewal hook could not start"),
        }
    }

    /// Renews whenever due until `shutdown` resolves; failures are retried
    /// after the retry interval with jitter.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let wait = match self.renew_once(false).await {
                Ok(Outcome::NotDue { due }) => {
                    let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
                    tracing::info!(due = %humantime::format_rfc3339_seconds(due), "renewal not due");
                    wait
                }
                Ok(Outcome::Renewed { .. }) => Duration::ZERO,
                Err(e) => {
                    let wait = with_jitter(self.retry_interval());
                    tracing::warn!(error = %format!("{e:#}"), retry_in_secs = wait.as_secs_f64(), "renewal failed");
                    wait
                }
            };
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("stopping");
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn retry_interval(&self) -> Duration {
        match read_certificate(&self.config.cert) {
            Ok(cert) => {
                let (from, to) = validity(&cert);
                self.config.auto_renew.retry_interval(from, to)
            }
            Err(_) => Duration::from_secs(30),
        }
    }
}

/// The key to certify in a renewal of `current`, and whether it is a new one
/// (`auto_renew.rotate_key`, or no key yet): a new key comes from
/// [`pending_or_new_key`], otherwise it is the current key.
pub(crate) fn renewal_key(
    cfg: &RenewConfig,
    current: Option<&Certificate>,
) -> anyhow::Result<(SigningKey, bool)> {
    let rotate = cfg.auto_renew.rotate_key || !cfg.key.exists();
    let key = if rotate {
        let algorithm: KeyAlgorithm = cfg
            .key_algorithm
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        pending_or_new_key(&sibling(&cfg.key, "pending"), current, algorithm)?
    } else {
        SigningKey::from_pem(&std::fs::read(&cfg.key)?)?
    };
    Ok((key, rotate))
}

/// The key for a renewal with a new key. It is kept in `<key>.pending`
/// (0600) from before the request until the certificate is installed, so a
/// retry after a lost response or a crash sends the same key again and the
/// server can answer with the certificate it already issued for it.
fn pending_or_new_key(
    pending: &Path,
    current: Option<&Certificate>,
    algorithm: KeyAlgorithm,
) -> anyhow::Result<SigningKey> {
    if let Some(key) = std::fs::read(pending)
        .ok()
        .and_then(|pem| SigningKey::from_pem(&pem).ok())
    {
        let already_installed = current
            .is_some_and(|c| c.tbs_certificate.subject_public_key_info == key.public_key_info());
        if !already_installed {
            tracing::info!("reusing the key of an unfinished renewal");
            return Ok(key);
        }
    }
    let key = SigningKey::generate(algorithm)?;
    write_atomic(pending, key.to_pkcs8_pem().as_bytes(), 0o600)?;
    Ok(key)
}

fn bootstrap_password(bootstrap: &Bootstrap) -> anyhow::Result<Zeroizing<String>> {
    if let Some(var) = &bootstrap.password_env {
        return std::env::var(var).map(Zeroizing::new).with_context(|| {
            format!("environment variable {var} (bootstrap.password_env) is not set")
        });
    }
    if let Some(file) = &bootstrap.password_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?,
        );
        return Ok(Zeroizing::new(text.lines().next().unwrap_or("").to_owned()));
    }
    anyhow::bail!("bootstrap.user needs bootstrap.password_env or bootstrap.password_file")
}

/// A CSR spec asking for the same identity as `cert` (subject and SANs).
pub fn spec_from(cert: &Certificate) -> CsrSpec {
    CsrSpec {
        subject: cert.tbs_certificate.subject.clone(),
        subject_alt_names: est_wire::names::certificate_sans(cert),
        ..CsrSpec::default()
    }
}

/// Validity start and end.
pub fn validity(cert: &Certificate) -> (SystemTime, SystemTime) {
    let v = &cert.tbs_certificate.validity;
    (v.not_before.to_system_time(), v.not_after.to_system_time())
}

/// Serial number as hex.
pub fn hex_serial(cert: &Certificate) -> String {
    cert.tbs_certificate
        .serial_number
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Escapes RFC 4514 special characters in an attribute value.
pub fn escape_rdn(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == value.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Error kind helper for the CLI.
pub fn is_client_error(e: &anyhow::Error) -> Option<&ClientError> {
    e.downcast_ref::<ClientError>()
}
