//! The server's configuration file (TOML).
//!
//! Relative paths are resolved against `data_dir`, which itself defaults to
//! the directory holding the config file. Unknown fields are errors, and
//! every check after parsing names the field it is about, so a bad config
//! fails at start with a message that points at the line to fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ca_backends::profile::duration_text;
use ca_backends::Profile;
use serde::Deserialize;

use crate::frontend::router::is_valid_label;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, e.g. `127.0.0.1:8443`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Realm sent in `WWW-Authenticate: Basic realm="…"`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Base directory for relative paths (default: the config file's directory).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// TLS server identity and client-certificate trust.
    pub tls: TlsConfig,
    /// The device CA: the local CA whose certificates authenticate to this
    /// server (and, in the README's setup, to the MQTT broker).
    #[serde(default)]
    pub ca: CaConfig,
    /// Further local CA hierarchies by name, for profiles that name one with
    /// `ca = "<name>"` (e.g. the Edge CA hierarchy, which nothing trusts for
    /// client authentication).
    #[serde(default)]
    pub cas: BTreeMap<String, CaConfig>,
    /// Common names no client may enroll, besides the rotation
    /// orchestrator's `client_id` (always reserved). Compared case-insensitively.
    #[serde(default)]
    pub reserved_names: Vec<String>,
    /// The registry of issued certificates.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Size and time limits.
    #[serde(default)]
    pub limits: Limits,
    /// HTTP Basic users (operators, provisioning stations).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Certificate profiles, by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// The unlabelled path `/.well-known/est/…`.
    pub enroll: LabelConfig,
    /// Labelled paths `/.well-known/est/<label>/…`.
    #[serde(default)]
    pub labels: BTreeMap<String, LabelConfig>,
    /// The JSON façade for hand-rolled vending-machine devices (off when absent).
    #[serde(default)]
    pub cvm: Option<CvmConfig>,
    /// AWS settings shared by `backend = "aws-iot"` labels.
    #[serde(default)]
    pub aws: AwsConfig,
    /// How often superseded certificates are checked for retirement.
    #[serde(default = "default_sweep_interval", with = "duration_text")]
    pub retire_sweep_interval: Duration,
    /// Plain-HTTP admin listener for `/metrics`, `/healthz`, `/readyz` (off when absent).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Server-driven rotation over MQTT (off when absent or `enabled = false`).
    #[serde(default)]
    pub rotation: Option<RotationConfig>,
    /// OCSP answers and CRL files (`[revocation]`).
    #[serde(default)]
    pub revocation: RevocationConfig,
}

/// The MQTT rotation orchestrator (see `est_wire::rotation` for the topics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    /// Turns the orchestrator on in `serve`.
    #[serde(default)]
    pub enabled: bool,
    /// Broker `host:port`; the connection is always TLS with a client certificate.
    pub broker: String,
    /// PEM trust anchors for the broker's certificate (default: the local CA).
    #[serde(default)]
    pub broker_ca: Option<PathBuf>,
    /// The orchestrator's client certificate (PEM). When absent with `key`,
    /// the local CA issues one (CN = `client_id`) into the CA directory.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// MQTT client id of the orchestrator.
    #[serde(default = "default_rotation_client_id")]
    pub client_id: String,
    /// Topic prefix; topics are `{prefix}/{clientId}/csr_req` and so on.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Certificates ending within this window are rotated by the scheduled audit.
    #[serde(default = "default_expiring_within", with = "duration_text")]
    pub expiring_within: Duration,
    /// How often the audit runs.
    #[serde(default = "default_audit_interval", with = "duration_text")]
    pub audit_interval: Duration,
    /// Wait before asking an unanswering device again; doubles per attempt, up to a day.
    #[serde(default = "default_rotation_retry", with = "duration_text")]
    pub retry_after: Duration,
    /// Most rotations waiting for a device at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// URL that receives a JSON POST for every `crt_err` (http or https).
    #[serde(default)]
    pub webhook: Option<String>,
}

fn default_rotation_client_id() -> String {
    "est-server-rotation".into()
}
fn default_topic_prefix() -> String {
    est_wire::rotation::DEFAULT_PREFIX.into()
}
fn default_expiring_within() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_audit_interval() -> Duration {
    Duration::from_secs(3_600)
}
fn default_rotation_retry() -> Duration {
    Duration::from_secs(3_600)
}
fn default_max_in_flight() -> usize {
    100
}

fn default_sweep_interval() -> Duration {
    Duration::from_secs(30)
}

/// AWS settings (credentials come from the SDK's usual chain: environment,
/// profile, instance or container role).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region, e.g. `eu-west-1` (default: from the environment).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override, for a local emulator.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Most attempts per API call (throttling and transient faults are retried with backoff).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Time limit per API call, retries included.
    #[serde(default = "default_operation_timeout", with = "duration_text")]
    pub operation_timeout: Duration,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            max_attempts: default_max_attempts(),
            operation_timeout: default_operation_timeout(),
        }
    }
}

fn default_max_attempts() -> u32 {
    5
}
fn default_operation_timeout() -> Duration {
    Duration::from_secs(20)
}

/// Which CA serves a label.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The local CA in `[ca]`, with the label's profile.
    #[default]
    Local,
    /// AWS IoT Core (`CreateCertificateFromCsr`, things and policies).
    AwsIot,
}

/// The vending-machine façades: `POST /cvm/v1/certificates` (`{"serial",
/// "token", "csr"?}` in, PEMs out) and the AWS reference vending machine's
/// `GET`/`POST <getcert_path>?serialNumber=…&deviceToken=…`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvmConfig {
    /// Whose rules apply (`""` for the unlabelled path). It must allow `device-token`.
    #[serde(default)]
    pub label: String,
    /// Path of the reference vending machine's API, with any API Gateway
    /// stage prefix (`/Prod/getcert`).
    #[serde(default = "default_getcert_path")]
    pub getcert_path: String,
    /// PEM file answered as `RootCA` (e.g. Amazon Root CA 1 on AWS labels;
    /// default: the root of the label's CA chain).
    #[serde(default)]
    pub root_ca: Option<PathBuf>,
}

fn default_getcert_path() -> String {
    "/getcert".into()
}

/// TLS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server (leaf first).
    pub cert: PathBuf,
    /// PEM private key of the server (PKCS#8).
    pub key: PathBuf,
    /// PEM files of manufacturer/bootstrap CAs whose client certificates may enroll.
    #[serde(default)]
    pub bootstrap_trust: Vec<PathBuf>,
}

/// Local CA settings (used when the CA directory is first created).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Directory of the CA files.
    #[serde(default = "default_ca_dir")]
    pub dir: PathBuf,
    /// `p256` (default) or `p384`.
    #[serde(default = "default_key_algorithm")]
    pub key_algorithm: String,
    /// Subject of a new root.
    #[serde(default = "default_root_subject")]
    pub root_subject: String,
    /// Subject of a new issuing CA.
    #[serde(default = "default_issuing_subject")]
    pub issuing_subject: String,
    /// Whether certificates of this hierarchy authenticate TLS clients to
    /// this server. Always true for `[ca]`; default false for `[cas.*]`. A
    /// hierarchy trusted for client authentication never issues subordinate CAs.
    #[serde(default)]
    pub client_auth: Option<bool>,
    /// Where the issuing CA's key is: `file` (default, in `dir`), `pkcs11` or `aws-kms`.
    #[serde(default)]
    pub signer: ca_backends::signer::SignerConfig,
    /// A PEM copy of this CA's CRL kept current (Mosquitto's `crlfile`):
    /// written at start, whenever the registry's revocations change (checked
    /// every `[revocation] crl_check_interval`, whichever server or command
    /// revoked or retired), at least hourly, and by `certs revoke` /
    /// `devices revoke`; each time atomically (temporary file + rename).
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
    /// Run after every rewrite of `crl_file` (argv, no shell), e.g.
    /// `["pkill", "-HUP", "-x", "mosquitto"]` (Mosquitto reloads its
    /// `crlfile` on SIGHUP).
    #[serde(default)]
    pub crl_reload_command: Vec<String>,
    /// OCSP responder URL written into issued certificates' Authority
    /// Information Access (e.g. `http://ca.example.com:8080/ocsp`).
    #[serde(default)]
    pub ocsp_url: Option<String>,
    /// CRL URL written into issued certificates' CRL distribution points
    /// (e.g. `http://ca.example.com:8080/crl`; `/crl/<name>` for `[cas.<name>]`).
    #[serde(default)]
    pub crl_url: Option<String>,
}

/// `[revocation]`: how OCSP answers are signed and served, how often CRL
/// files are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// `issuing-ca` (default: the CA's own key) or `delegated` (a
    /// responder certificate for an in-memory key, so answers cost no HSM
    /// or KMS round trip).
    #[serde(default)]
    pub ocsp_signer: crate::authority::revocation::OcspSigner,
    /// nextUpdate − thisUpdate of OCSP answers.
    #[serde(default = "default_ocsp_lifetime", with = "duration_text")]
    pub ocsp_lifetime: Duration,
    /// A plain-HTTP listener for `/ocsp` and `/crl` (nginx stapling and most
    /// OCSP clients speak HTTP); none by default (they are on the EST port).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Connections at once on that listener.
    #[serde(default = "default_ocsp_max_connections")]
    pub max_connections: usize,
    /// How often the registry is checked for new revocations to write into
    /// the CRL files.
    #[serde(default = "default_crl_check_interval", with = "duration_text")]
    pub crl_check_interval: Duration,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            ocsp_signer: Default::default(),
            ocsp_lifetime: default_ocsp_lifetime(),
            listen: None,
            max_connections: default_ocsp_max_connections(),
            crl_check_interval: default_crl_check_interval(),
        }
    }
}

fn default_ocsp_lifetime() -> Duration {
    Duration::from_secs(3600)
}

fn default_ocsp_max_connections() -> usize {
    256
}

fn default_crl_check_interval() -> Duration {
    Duration::from_secs(2)
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            dir: default_ca_dir(),
            key_algorithm: default_key_algorithm(),
            root_subject: default_root_subject(),
            issuing_subject: default_issuing_subject(),
            client_auth: None,
            signer: Default::default(),
            crl_file: None,
            crl_reload_command: Vec::new(),
            ocsp_url: None,
            crl_url: None,
        }
    }
}

/// The name `[ca]` goes by where a CA is named (`profiles.*.ca`).
pub const DEVICE_CA: &str = "device";

/// Registry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `sqlite` (embedded default), `dynamodb` or `postgres` (several servers
    /// sharing state).
    #[serde(default)]
    pub kind: RegistryKind,
    /// SQLite file.
    #[serde(default = "default_registry_path")]
    pub path: PathBuf,
    /// DynamoDB table (`est-server registry create-table` makes it).
    #[serde(default = "default_table")]
    pub table: String,
    // PostgreSQL (`kind = "postgres"`): a `url` (`postgres://user@host:port/dbname`)
    // or the discrete fields; the password never goes in the file itself.
    /// Connection URL or `key=value` string (without a password).
    pub url: Option<String>,
    /// Host name, IP address or Unix socket directory.
    pub host: Option<String>,
    /// Port (default 5432).
    pub port: Option<u16>,
    /// Database user.
    pub user: Option<String>,
    /// Database name.
    pub dbname: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (one line).
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) of the database server: TLS is required and the
    /// server's certificate verified against them.
    pub ca_file: Option<PathBuf>,
    /// Most open connections per server.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest one statement may run.
    #[serde(default = "default_db_timeout", with = "duration_text")]
    pub statement_timeout: Duration,
    /// Longest connecting or waiting for a free connection may take.
    #[serde(default = "default_db_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            kind: RegistryKind::default(),
            path: default_registry_path(),
            table: default_table(),
            url: None,
            host: None,
            port: None,
            user: None,
            dbname: None,
            password_env: None,
            password_file: None,
            ca_file: None,
            pool_size: default_pool_size(),
            statement_timeout: default_db_timeout(),
            connect_timeout: default_db_timeout(),
        }
    }
}

/// Where the registry lives.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// One SQLite file (WAL, fsync per commit).
    #[default]
    Sqlite,
    /// One DynamoDB table, shared by several servers (uses `[aws]`).
    Dynamodb,
    /// One PostgreSQL database, shared by several servers.
    Postgres,
}

fn default_pool_size() -> usize {
    16
}

fn default_db_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_table() -> String {
    "est-registry".into()
}

/// Limits that protect the server from large or slow clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body (413 above it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time allowed for the TLS handshake.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub handshake_timeout: Duration,
    /// Time allowed to send a request's headers (also the keep-alive idle limit).
    #[serde(default = "default_timeout", with = "duration_text")]
    pub header_timeout: Duration,
    /// Time allowed to send a request's body (408 above it).
    #[serde(default = "default_timeout", with = "duration_text")]
    pub body_timeout: Duration,
    /// Most connections served at once; further ones wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections one client address (IPv6: one /64) may hold at once;
    /// further ones from it are closed before the TLS handshake. At most
    /// `max_connections`; unset: 64, or `max_connections` when that is lower
    /// (see [`Limits::connections_per_address`]).
    #[serde(default)]
    pub max_connections_per_address: Option<usize>,
    /// A response write that makes no progress for this long closes the
    /// connection (clients that send requests but never read the answers).
    #[serde(default = "default_timeout", with = "duration_text")]
    pub write_timeout: Duration,
    /// The longest a connection is kept; after it the connection is closed
    /// once the response in progress is sent.
    #[serde(default = "default_connection_lifetime", with = "duration_text")]
    pub connection_lifetime: Duration,
    /// Most connections the admin listener serves at once; further ones are closed.
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// Failed device-token attempts before the device is locked.
    #[serde(default = "default_lockout_after")]
    pub token_lockout_after: u32,
    /// How long a device stays locked after too many failed attempts.
    #[serde(default = "default_lockout", with = "duration_text")]
    pub token_lockout: Duration,
    /// Failed authentications per client address per minute before it gets 429.
    #[serde(default = "default_failures_per_minute")]
    pub failures_per_minute_per_address: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            handshake_timeout: default_timeout(),
            header_timeout: default_timeout(),
            body_timeout: default_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_address: None,
            write_timeout: default_timeout(),
            connection_lifetime: default_connection_lifetime(),
            admin_max_connections: default_admin_max_connections(),
            token_lockout_after: default_lockout_after(),
            token_lockout: default_lockout(),
            failures_per_minute_per_address: default_failures_per_minute(),
        }
    }
}

impl Limits {
    /// The per-address connection cap in force.
    pub fn connections_per_address(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or(DEFAULT_CONNECTIONS_PER_ADDRESS.min(self.max_connections))
    }

    /// Checks the values that serde cannot.
    fn validate(&self) -> anyhow::Result<()> {
        if self.max_connections == 0 {
            bail!("limits.max_connections: must be at least 1");
        }
        match self.max_connections_per_address {
            Some(0) => bail!("limits.max_connections_per_address: must be at least 1"),
            Some(cap) if cap > self.max_connections => bail!(
                "limits.max_connections_per_address ({cap}) must not exceed limits.max_connections ({})",
                self.max_connections
            ),
            _ => {}
        }
        if self.admin_max_connections == 0 {
            bail!("limits.admin_max_connections: must be at least 1");
        }
        for (field, value) in [
            ("write_timeout", self.write_timeout),
            ("connection_lifetime", self.connection_lifetime),
        ] {
            if value.is_zero() {
                bail!("limits.{field}: must be longer than 0s");
            }
        }
        Ok(())
    }
}

/// One HTTP Basic user.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name.
    pub name: String,
    /// Argon2 PHC string (`est-server hash-password` makes one).
    pub password_hash: String,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How a client may authenticate a first enrollment.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// HTTP Basic against `users`.
    Basic,
    /// A TLS client certificate from a `tls.bootstrap_trust` CA.
    BootstrapCert,
    /// A current certificate this server issued under another label (Azure
    /// IoT Edge asks for its Edge CA certificate with its identity certificate).
    IssuedCert,
    /// HTTP Basic `serial:one-time-token` checked against the device registry
    /// (the certificate-vending-machine flow). The CSR's CN must be the serial.
    DeviceToken,
}

/// What one EST path (label) does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// Name of the profile in `profiles` (`default` is built in).
    #[serde(default = "default_profile_name")]
    pub profile: String,
    /// Several profiles, chosen by the request: a CSR asking for `CA:TRUE`
    /// gets the first subordinate-CA profile, any other the first
    /// end-entity one (default: `[profile]`). `/cacerts` serves the chain of
    /// the first one's CA.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Subjects a bootstrap certificate (and a certificate issued to its
    /// device) may enroll, as templates over its common name: `{cn}`.
    #[serde(default = "default_bootstrap_subjects")]
    pub bootstrap_subjects: Vec<String>,
    /// Basic users who may obtain a subordinate CA on this label (devices
    /// may when their registry entry allows it: `devices add --edge-ca`).
    #[serde(default)]
    pub subordinate_ca_users: Vec<String>,
    /// The common name of a subordinate CA, derived from the identity that
    /// asks for it (`{cn}`: the device id, or the authenticating
    /// certificate's common name).
    #[serde(default = "default_subordinate_ca_subject")]
    pub subordinate_ca_subject: String,
    /// Accepted authentication for first enrollments. Renewals always use the
    /// certificate being renewed.
    #[serde(default = "default_auth")]
    pub auth: Vec<AuthMethod>,
    /// Hold first enrollments for an operator's approval (answers 202 + Retry-After).
    #[serde(default)]
    pub require_approval: bool,
    /// `Retry-After` sent with 202.
    #[serde(default = "default_retry_after", with = "duration_text")]
    pub retry_after: Duration,
    /// OIDs listed by `/csrattrs`. When absent, the answer is derived from the
    /// profile (key algorithm and curve, signature algorithm, EKU, and
    /// challengePassword when channel binding is required); `[]` answers 204.
    #[serde(default)]
    pub csrattrs: Option<Vec<String>>,
    /// A bootstrap certificate may only enroll the subjects of
    /// `bootstrap_subjects`; `false` lets it enroll any subject.
    #[serde(default = "yes")]
    pub bootstrap_subject_must_match: bool,
    /// The CA behind the label: `local` (default) or `aws-iot`.
    #[serde(default)]
    pub backend: BackendKind,
    /// AWS IoT policy attached to each certificate (aws-iot; a device's own overrides it).
    #[serde(default)]
    pub policy: Option<String>,
    /// PEM bundle served by `/cacerts` (aws-iot: the chain devices should trust).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// PEM of the CA that signs this backend's certificates, trusted for TLS
    /// client authentication so devices can renew with them (aws-iot: the
    /// issuer of AWS IoT device certificates; default: `ca_bundle`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// A superseded certificate is retired (AWS: deactivated, detached, deleted)
    /// once its successor is used, or after this grace period at the latest.
    #[serde(default = "default_retire_grace", with = "duration_text")]
    pub retire_grace: Duration,
    /// Proof-of-possession linking (RFC 7030 §3.5 with RFC 9266 tls-exporter):
    /// `off`, `verify` (check a challengePassword when present; default) or `require`.
    #[serde(default)]
    pub channel_binding: ChannelBinding,
}

/// How a label treats the CSR's challengePassword as TLS channel binding.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// challengePassword is not interpreted.
    Off,
    /// When present, it must equal base64 of the connection's tls-exporter value.
    #[default]
    Verify,
    /// It must be present and equal base64 of the connection's tls-exporter value.
    Require,
}

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = match &config.data_dir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => path.parent().unwrap_or(Path::new(".")).join(dir),
            None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        };
        config.resolve_paths(&base);
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        self.tls.bootstrap_trust.iter_mut().for_each(resolve);
        resolve(&mut self.ca.dir);
        if let Some(path) = &mut self.ca.crl_file {
            resolve(path);
        }
        for ca in self.cas.values_mut() {
            resolve(&mut ca.dir);
            if let Some(path) = &mut ca.crl_file {
                resolve(path);
            }
        }
        resolve(&mut self.registry.path);
        self.registry.ca_file.iter_mut().for_each(resolve);
        self.registry.password_file.iter_mut().for_each(resolve);
        let resolve_label = |label: &mut LabelConfig| {
            for path in [&mut label.ca_bundle, &mut label.client_ca]
                .into_iter()
                .flatten()
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        resolve_label(&mut self.enroll);
        self.labels.values_mut().for_each(resolve_label);
        if let Some(rotation) = &mut self.rotation {
            for path in [
                &mut rotation.broker_ca,
                &mut rotation.cert,
                &mut rotation.key,
            ]
            .into_iter()
            .flatten()
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        if let Some(path) = self.cvm.as_mut().and_then(|c| c.root_ca.as_mut()) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        self.data_dir = Some(base.to_path_buf());
    }

    /// Checks cross-references and values that serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.ca
            .key_algorithm
            .parse::<est_wire::keys::KeyAlgorithm>()
            .map_err(|e| anyhow::anyhow!("ca.key_algorithm: {e}"))?;
        for (field, ca) in std::iter::once(("ca".to_owned(), &self.ca)).chain(
            self.cas
                .iter()
                .map(|(name, ca)| (format!("cas.{name}"), ca)),
        ) {
            for (key, url) in [("ocsp_url", &ca.ocsp_url), ("crl_url", &ca.crl_url)] {
                if let Some(url) = url {
                    if !(url.starts_with("http://") || url.starts_with("https://"))
                        || !url.is_ascii()
                        || url.chars().any(|c| c.is_ascii_control() || c == ' ')
                    {
                        bail!("{field}.{key}: `{url}` is not an http:// or https:// URL (ASCII, no spaces)");
                    }
                }
            }
            if ca.crl_reload_command.first().is_some_and(|c| c.is_empty()) {
                bail!("{field}.crl_reload_command: the program name is empty");
            }
        }
        if self.revocation.max_connections == 0 {
            bail!("revocation.max_connections: must be at least 1");
        }
        if self.revocation.crl_check_interval.is_zero() || self.revocation.ocsp_lifetime.is_zero() {
            bail!("revocation.crl_check_interval and ocsp_lifetime must be longer than 0s");
        }
        if self.ca.client_auth == Some(false) {
            bail!("ca.client_auth: the device CA in [ca] always authenticates clients; put a hierarchy that must not into [cas.<name>]");
        }
        for (name, ca) in &self.cas {
            if name == DEVICE_CA {
                bail!("cas.{name}: `{DEVICE_CA}` names [ca]; choose another name");
            }
            ca.key_algorithm
                .parse::<est_wire::keys::KeyAlgorithm>()
                .map_err(|e| anyhow::anyhow!("cas.{name}.key_algorithm: {e}"))?;
            if ca.dir == self.ca.dir
                || self
                    .cas
                    .iter()
                    .any(|(other, o)| other != name && o.dir == ca.dir)
            {
                bail!(
                    "cas.{name}.dir: {} is already another CA's directory",
                    ca.dir.display()
                );
            }
        }
        for (name, profile) in &self.profiles {
            profile
                .validate()
                .map_err(|e| anyhow::anyhow!("profiles.{name}: {e}"))?;
            let ca = profile.ca.as_deref().unwrap_or(DEVICE_CA);
            if ca != DEVICE_CA && !self.cas.contains_key(ca) {
                bail!("profiles.{name}.ca: no CA named `{ca}` in [cas]");
            }
            if profile.subordinate_ca && self.trusts_for_client_auth(ca) {
                bail!(
                    "profiles.{name}: a subordinate-CA profile must issue from a CA hierarchy that is not trusted for client authentication \
                     (its CA `{ca}` is), or every certificate an Edge CA mints would authenticate to this server and to brokers trusting the device CA; \
                     add e.g. [cas.edge] with dir = \"edge-ca\" and set ca = \"edge\" on this profile"
                );
            }
        }
        self.validate_label("enroll", &self.enroll)?;
        for (name, label) in &self.labels {
            if !is_valid_label(name) {
                bail!("labels.{name}: a label is 1-64 characters of A-Z a-z 0-9 . _ - and not `.` or `..`");
            }
            self.validate_label(&format!("labels.{name}"), label)?;
        }
        for (i, user) in self.users.iter().enumerate() {
            let hash = argon2::PasswordHash::new(&user.password_hash).map_err(|e| {
                anyhow::anyhow!(
                    "users[{i}].password_hash ({}): not an argon2 PHC string: {e}",
                    user.name
                )
            })?;
            let params = argon2::Params::try_from(&hash)
                .map_err(|e| anyhow::anyhow!("users[{i}].password_hash ({}): {e}", user.name))?;
            if params.m_cost() > crate::authority::password::MAX_MEMORY_KIB {
                bail!(
                    "users[{i}].password_hash ({}): argon2 memory cost above {} KiB",
                    user.name,
                    crate::authority::password::MAX_MEMORY_KIB
                );
            }
        }
        if let Some(rotation) = &self.rotation {
            if rotation.cert.is_some() != rotation.key.is_some() {
                bail!(
                    "rotation: set both cert and key, or neither (the local CA then issues them)"
                );
            }
            if !est_wire::rotation::valid_client_id(&rotation.client_id) {
                bail!("rotation.client_id: not a valid MQTT client id");
            }
            if rotation.broker.rsplit_once(':').is_none() {
                bail!("rotation.broker: expected host:port");
            }
            if let Some(url) = &rotation.webhook {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("rotation.webhook: expected an http:// or https:// URL");
                }
            }
        }
        if self.registry.kind == RegistryKind::Dynamodb && cfg!(not(feature = "aws")) {
            bail!("registry.kind: this build has no DynamoDB support (built without the `aws` feature)");
        }
        if let Some(cvm) = &self.cvm {
            let label = if cvm.label.is_empty() {
                Some(&self.enroll)
            } else {
                self.labels.get(&cvm.label)
            };
            match label {
                None => bail!("cvm.label: no label named `{}`", cvm.label),
                Some(l) if !l.auth.contains(&AuthMethod::DeviceToken) => {
                    bail!("cvm.label: label `{}` must allow device-token", cvm.label)
                }
                Some(_) => {}
            }
            let path = &cvm.getcert_path;
            let reserved = path.starts_with("/.well-known/")
                || path == "/crl"
                || path.starts_with("/crl/")
                || path.starts_with("/ocsp")
                || path.starts_with("/cvm/");
            if !path.starts_with('/')
                || path.len() > 256
                || reserved
                || !path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
            {
                bail!(
                    "cvm.getcert_path: `{path}` must start with `/`, hold only A-Z a-z 0-9 / - _ . \
                     and not be an EST, CRL or /cvm/ path"
                );
            }
        }
        if self.limits.max_body_bytes < 1024 {
            bail!("limits.max_body_bytes: must be at least 1024");
        }
        self.limits.validate()?;
        Ok(())
    }

    fn validate_label(&self, field: &str, label: &LabelConfig) -> anyhow::Result<()> {
        if label.profile != "default" && !self.profiles.contains_key(&label.profile) {
            bail!(
                "{field}.profile: no profile named `{}` in [profiles]",
                label.profile
            );
        }
        for name in &label.profiles {
            if name != "default" && !self.profiles.contains_key(name) {
                bail!("{field}.profiles: no profile named `{name}` in [profiles]");
            }
        }
        for oid in label.csrattrs.iter().flatten() {
            const_oid::ObjectIdentifier::new(oid)
                .map_err(|_| anyhow::anyhow!("{field}.csrattrs: `{oid}` is not a dotted OID"))?;
        }
        for template in label
            .bootstrap_subjects
            .iter()
            .chain([&label.subordinate_ca_subject])
        {
            if template.matches("{cn}").count() > 1 || template.trim().is_empty() {
                bail!("{field}: subject template `{template}` must be non-empty and name {{cn}} at most once");
            }
        }
        for user in &label.subordinate_ca_users {
            if !self.users.iter().any(|u| &u.name == user) {
                bail!("{field}.subordinate_ca_users: no [[users]] entry named `{user}`");
            }
        }
        if label.backend == BackendKind::AwsIot {
            if cfg!(not(feature = "aws")) {
                bail!("{field}.backend: this build has no AWS support (built without the `aws` feature)");
            }
            if label.ca_bundle.is_none() {
                bail!("{field}.ca_bundle: an aws-iot label needs the PEM bundle /cacerts serves");
            }
        }
        if label.auth.contains(&AuthMethod::Basic) && self.users.is_empty() {
            tracing::warn!("{field}.auth allows basic but no [[users]] are configured");
        }
        Ok(())
    }

    /// The profile named `name` (`default` when not configured).
    pub fn profile(&self, name: &str) -> Profile {
        self.profiles.get(name).cloned().unwrap_or_default()
    }

    /// The CA settings named `name` (`device` is `[ca]`).
    pub fn ca_named(&self, name: &str) -> Option<&CaConfig> {
        if name == DEVICE_CA {
            Some(&self.ca)
        } else {
            self.cas.get(name)
        }
    }

    /// Whether the CA named `name` is trusted for TLS client authentication.
    pub fn trusts_for_client_auth(&self, name: &str) -> bool {
        name == DEVICE_CA
            || self
                .cas
                .get(name)
                .and_then(|ca| ca.client_auth)
                .unwrap_or(false)
    }

    /// Whether any profile issues subordinate CAs from the CA named `name`
    /// (its issuing CA then needs room for one more level).
    pub fn issues_subordinate_cas(&self, name: &str) -> bool {
        self.profiles
            .values()
            .any(|p| p.subordinate_ca && p.ca.as_deref().unwrap_or(DEVICE_CA) == name)
    }

    /// Names reserved for the server's own use: the rotation orchestrator's
    /// client id (configured or default, whether or not rotation is on) and
    /// `reserved_names`, normalised for comparison.
    pub fn reserved_common_names(&self) -> Vec<String> {
        let orchestrator = self
            .rotation
            .as_ref()
            .map(|r| r.client_id.clone())
            .unwrap_or_else(default_rotation_client_id);
        std::iter::once(orchestrator)
            .chain(self.reserved_names.iter().cloned())
            .map(|name| crate::authority::subject::normalise(&name))
            .collect()
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8443".parse().expect("valid address")
}
fn default_realm() -> String {
    "estrealm".into()
}
fn default_ca_dir() -> PathBuf {
    "ca".into()
}
fn default_key_algorithm() -> String {
    "p256".into()
}
fn default_root_subject() -> String {
    "CN=EST Root CA,O=est-server".into()
}
fn default_issuing_subject() -> String {
    "CN=EST Issuing CA,O=est-server".into()
}
fn default_registry_path() -> PathBuf {
    "registry.sqlite".into()
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    4096
}
/// `limits.max_connections_per_address` when unset (and `max_connections` is higher).
const DEFAULT_CONNECTIONS_PER_ADDRESS: usize = 64;
fn default_connection_lifetime() -> Duration {
    Duration::from_secs(300)
}
fn default_admin_max_connections() -> usize {
    32
}
fn default_retire_grace() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_lockout_after() -> u32 {
    5
}
fn default_lockout() -> Duration {
    Duration::from_secs(300)
}
fn default_failures_per_minute() -> u32 {
    30
}
fn default_profile_name() -> String {
    "default".into()
}
fn default_bootstrap_subjects() -> Vec<String> {
    vec!["{cn}".into()]
}
fn default_subordinate_ca_subject() -> String {
    "aziot-edge CA {cn}".into()
}
fn default_auth() -> Vec<AuthMethod> {
    vec![AuthMethod::Basic, AuthMethod::BootstrapCert]
}
fn default_retry_after() -> Duration {
    Duration::from_secs(60)
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    const MINIMAL: &str = "[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n[enroll]\n";

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let config = load_str(MINIMAL).unwrap();
        assert_eq!(config.limits.max_body_bytes, 65536);
        assert!(config.tls.cert.is_absolute());
        assert_eq!(config.enroll.profile, "default");
    }

    #[test]
    fn errors_name_the_field() {
        let err = format!(
            "{:#}",
            load_str(&format!("{MINIMAL}bogus = 1\n")).unwrap_err()
        );
        assert!(err.contains("bogus"), "{err}");
        let err = format!(
            "{:#}",
            load_str(&format!("{MINIMAL}[labels.x]\nprofile = \"nope\"\n")).unwrap_err()
        );
        assert!(err.contains("labels.x.profile"), "{err}");
        let err = format!(
            "{:#}",
            load_str(&format!("{MINIMAL}[labels.\"a/b\"]\n")).unwrap_err()
        );
        assert!(err.contains("labels.a/b"), "{err}");
        let err = format!(
            "{:#}",
            load_str(&format!("{MINIMAL}[profiles.p]\nvalidity = \"soon\"\n")).unwrap_err()
        );
        assert!(err.contains("validity"), "{err}");
        let err = format!(
            "{:#}",
            load_str(&format!(
                "{MINIMAL}[[users]]\nname = \"u\"\npassword_hash = \"plain\"\n"
            ))
            .unwrap_err()
        );
        assert!(err.contains("users[0].password_hash"), "{err}");
    }

    #[test]
    fn getcert_path_is_checked() {
        let with =
            |cvm: &str| load_str(&format!("{MINIMAL}auth = [\"device-token\"]\n[cvm]\n{cvm}"));
        let config = with("").unwrap();
        assert_eq!(config.cvm.unwrap().getcert_path, "/getcert");
        let config = with("getcert_path = \"/Prod/getcert\"\nroot_ca = \"r.pem\"\n").unwrap();
        let cvm = config.cvm.unwrap();
        assert_eq!(cvm.getcert_path, "/Prod/getcert");
        assert!(cvm.root_ca.unwrap().is_absolute());
        for bad in [
            "getcert",
            "/.well-known/est/x",
            "/a?b",
            "/crl",
            "/crl/edge",
            "/ocsp",
        ] {
            let err = format!(
                "{:#}",
                with(&format!("getcert_path = \"{bad}\"\n")).unwrap_err()
            );
            assert!(err.contains("cvm.getcert_path"), "{bad}: {err}");
        }
    }

    #[test]
    fn status_urls_and_revocation_settings_are_checked() {
        let config = load_str(&format!(
            "{MINIMAL}[ca]\nocsp_url = \"http://ca.example/ocsp\"\ncrl_file = \"crl.pem\"\n\
             crl_reload_command = [\"pkill\", \"-HUP\", \"-x\", \"mosquitto\"]\n\
             [revocation]\nocsp_signer = \"delegated\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.ca.ocsp_url.as_deref(),
            Some("http://ca.example/ocsp")
        );
        assert!(config.ca.crl_file.unwrap().is_absolute());
        assert_eq!(
            config.revocation.ocsp_signer,
            crate::authority::revocation::OcspSigner::Delegated
        );
        assert_eq!(config.revocation.crl_check_interval, Duration::from_secs(2));
        for (bad, field) in [
            ("[ca]\nocsp_url = \"ca.example/ocsp\"\n", "ca.ocsp_url"),
            (
                "[ca]\ncrl_url = \"http://ca.example/crl list\"\n",
                "ca.crl_url",
            ),
            (
                "[ca]\ncrl_reload_command = [\"\"]\n",
                "ca.crl_reload_command",
            ),
            ("[revocation]\nocsp_signer = \"hsm\"\n", "ocsp_signer"),
            (
                "[revocation]\ncrl_check_interval = \"0s\"\n",
                "crl_check_interval",
            ),
        ] {
            let err = format!("{:#}", load_str(&format!("{MINIMAL}{bad}")).unwrap_err());
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn connection_limits_are_checked() {
        let config = load_str(MINIMAL).unwrap();
        assert_eq!(config.limits.connections_per_address(), 64);
        // Unset, it follows a lower max_connections (older configs keep loading).
        let small = load_str(&format!("{MINIMAL}[limits]\nmax_connections = 10\n")).unwrap();
        assert_eq!(small.limits.connections_per_address(), 10);
        assert_eq!(config.limits.write_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.connection_lifetime, Duration::from_secs(300));
        assert_eq!(config.limits.admin_max_connections, 32);
        let err = format!(
            "{:#}",
            load_str(&format!(
                "{MINIMAL}[limits]\nmax_connections = 10\nmax_connections_per_address = 11\n"
            ))
            .unwrap_err()
        );
        assert!(
            err.contains("limits.max_connections_per_address (11) must not exceed limits.max_connections (10)"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            load_str(&format!("{MINIMAL}[limits]\nwrite_timeout = \"0s\"\n")).unwrap_err()
        );
        assert!(err.contains("limits.write_timeout"), "{err}");
    }
}
