//! Assembles a running server from a [`Config`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ca_backends::local::{LocalCa, LocalCaBackend, LocalCaOptions};
use ca_backends::profile::duration_text;
use ca_backends::CaBackend;
use tokio::net::TcpListener;

use crate::authority::auth::{Authenticator, Users};
use crate::authority::enroll::{EnrollService, Label, Variant};
use crate::config::{BackendKind, ChannelBinding, Config, LabelConfig, RegistryKind, DEVICE_CA};
use crate::frontend::http::AppState;
use crate::registry::{Registry, SqliteRegistry};

/// Opens the device CA described by `config.ca` (creating it on first start).
pub async fn open_ca(config: &Config) -> anyhow::Result<Arc<LocalCa>> {
    open_named_ca(config, DEVICE_CA).await
}

/// Opens the CA `name` (`device` is `[ca]`, others are `[cas.<name>]`),
/// creating it on first start. A new issuing CA gets pathLenConstraint 1
/// when a profile issues subordinate CAs from it, 0 otherwise. A CA whose
/// key is in a token or KMS is never created here (`est-server ca init` does);
/// opening it checks that the signer's key is the certificate's.
pub async fn open_named_ca(config: &Config, name: &str) -> anyhow::Result<Arc<LocalCa>> {
    let field = ca_field(name);
    let settings = config
        .ca_named(name)
        .with_context(|| format!("no CA named `{name}`"))?;
    let options = ca_options(config, name)?;
    let ca = match &settings.signer {
        ca_backends::signer::SignerConfig::File => {
            LocalCa::open_or_create(&settings.dir, &options).await
        }
        signer => match ca_backends::signer::open(signer, &settings.dir).await {
            Ok(signer) => LocalCa::open_with_signer(&settings.dir, signer),
            Err(e) => Err(e),
        },
    }
    .with_context(|| format!("{field}: local CA in {}", settings.dir.display()))?
    .with_status_urls(ca_backends::local::StatusUrls {
        ocsp: settings.ocsp_url.clone(),
        crl: settings.crl_url.clone(),
    });
    tracing::info!(ca = %name, key = %ca.key_location(), "opened local CA");
    Ok(Arc::new(ca))
}

/// The section name of CA `name` in the config file (`ca` or `cas.<name>`).
pub fn ca_field(name: &str) -> String {
    if name == DEVICE_CA {
        "ca".to_owned()
    } else {
        format!("cas.{name}")
    }
}

/// How a new CA `name` is made, from its config section.
pub fn ca_options(config: &Config, name: &str) -> anyhow::Result<LocalCaOptions> {
    let field = ca_field(name);
    let settings = config
        .ca_named(name)
        .with_context(|| format!("no CA named `{name}`"))?;
    Ok(LocalCaOptions {
        key_algorithm: settings
            .key_algorithm
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{field}.key_algorithm: {e}"))?,
        root_subject: named_subject(&settings.root_subject, name),
        issuing_subject: named_subject(&settings.issuing_subject, name),
        issuing_path_len: u8::from(config.issues_subordinate_cas(name)),
        ..LocalCaOptions::default()
    })
}

/// A further hierarchy left with the default subjects is told apart from
/// the device CA by its name: `CN=EST Root CA (edge),O=est-server`.
fn named_subject(subject: &str, name: &str) -> String {
    let defaults = crate::config::CaConfig::default();
    if name == DEVICE_CA
        || (subject != defaults.root_subject && subject != defaults.issuing_subject)
    {
        return subject.to_owned();
    }
    subject.replacen(" CA,", &format!(" CA ({name}),"), 1)
}

/// Every local CA the config names: the device CA and each `[cas.*]`.
pub async fn open_cas(config: &Config) -> anyhow::Result<HashMap<String, Arc<LocalCa>>> {
    let mut cas = HashMap::new();
    cas.insert(DEVICE_CA.to_owned(), open_ca(config).await?);
    for name in config.cas.keys() {
        cas.insert(name.clone(), open_named_ca(config, name).await?);
    }
    Ok(cas)
}

/// Opens the registry the config names (SQLite file or DynamoDB table).
pub async fn open_registry(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    match config.registry.kind {
        RegistryKind::Sqlite => Ok(Arc::new(
            SqliteRegistry::open(&config.registry.path)
                .with_context(|| format!("registry {}", config.registry.path.display()))?,
        )),
        RegistryKind::Dynamodb => dynamodb_registry(config).await,
        RegistryKind::Postgres => Ok(Arc::new(
            crate::registry::PostgresRegistry::open(postgres_options(&config.registry)?)
                .await
                .context("PostgreSQL registry")?,
        )),
    }
}

/// The PostgreSQL connection `[registry]` describes. The password comes from
/// `password_env` or `password_file` and is never logged (tokio-postgres
/// redacts it from its `Debug` output too).
pub fn postgres_options(
    registry: &crate::config::RegistryConfig,
) -> anyhow::Result<crate::registry::PostgresOptions> {
    let mut pg = match &registry.url {
        Some(url) => url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| anyhow::anyhow!("registry.url: {e}"))?,
        None => tokio_postgres::Config::new(),
    };
    if let Some(host) = &registry.host {
        pg.host(host);
    }
    if let Some(port) = registry.port {
        pg.port(port);
    }
    if let Some(user) = &registry.user {
        pg.user(user);
    }
    if let Some(dbname) = &registry.dbname {
        pg.dbname(dbname);
    }
    if let Some(name) = &registry.password_env {
        let password = std::env::var(name)
            .with_context(|| format!("registry.password_env: variable {name} is not set"))?;
        pg.password(password.trim_end_matches(['\r', '\n']));
    } else if let Some(path) = &registry.password_file {
        let password = std::fs::read_to_string(path)
            .with_context(|| format!("registry.password_file {}", path.display()))?;
        pg.password(password.trim_end_matches(['\r', '\n']));
    }
    if pg.get_hosts().is_empty() {
        anyhow::bail!("registry: kind = \"postgres\" needs `url` or `host`");
    }
    let ca_pem = match &registry.ca_file {
        Some(path) => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(
                std::fs::read(path)
                    .with_context(|| format!("registry.ca_file {}", path.display()))?,
            )
        }
        None => None,
    };
    Ok(crate::registry::PostgresOptions {
        config: pg,
        ca_pem,
        pool_size: registry.pool_size,
        statement_timeout: registry.statement_timeout,
        connect_timeout: registry.connect_timeout,
    })
}

/// The SDK configuration for `[aws]` (region, endpoint, retries, timeouts).
#[cfg(feature = "aws")]
pub async fn aws_sdk_config(config: &Config) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(config.aws.max_attempts.max(1)),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(config.aws.operation_timeout)
                .build(),
        );
    if let Some(region) = &config.aws.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.aws.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}

#[cfg(feature = "aws")]
async fn dynamodb_registry(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    let sdk = aws_sdk_config(config).await;
    Ok(Arc::new(crate::registry::DynamoDbRegistry::new(
        &sdk,
        config.registry.table.clone(),
    )))
}

#[cfg(not(feature = "aws"))]
async fn dynamodb_registry(_: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    anyhow::bail!("this build has no DynamoDB support")
}

/// Binds the listener and serves until `shutdown` resolves. Prints
/// `listening on <addr>` on stdout once ready.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cas = open_cas(&config).await?;
    let ca = cas[DEVICE_CA].clone();
    let registry = open_registry(&config).await?;
    // Client certificates may come from the device CA, a hierarchy marked
    // `client_auth`, or a backend's CA — never from one that issues
    // subordinate CAs (config validation keeps those apart).
    let mut issuers = ca.chain();
    for (name, other) in &cas {
        if name != DEVICE_CA && config.trusts_for_client_auth(name) {
            issuers.extend(other.chain());
        }
    }
    for label in std::iter::once(&config.enroll).chain(config.labels.values()) {
        if label.backend == BackendKind::Local {
            continue;
        }
        if let Some(path) = label.client_ca.as_ref().or(label.ca_bundle.as_ref()) {
            let pem =
                std::fs::read(path).with_context(|| format!("client_ca {}", path.display()))?;
            issuers.extend(
                est_wire::pem::certificates_from_pem(&pem)
                    .with_context(|| format!("{}: not PEM certificates", path.display()))?,
            );
        }
    }
    let tls = crate::frontend::tls::build(&config.tls, &issuers)?;

    let mut labels = HashMap::new();
    labels.insert(
        String::new(),
        label(&config, None, &config.enroll, &cas).await?,
    );
    for (name, label_config) in &config.labels {
        labels.insert(
            name.clone(),
            label(&config, Some(name.clone()), label_config, &cas).await?,
        );
    }

    let users = Arc::new(Users::new(&config.users));
    let authenticator = Authenticator::new(
        users,
        tls.bootstrap_verifier.clone(),
        registry.clone(),
        config.limits.clone(),
    );
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let reserved = config.reserved_common_names();
    let enroll = EnrollService::new(authenticator, registry.clone(), metrics.clone())
        .with_reserved_names(reserved);
    let header_case = crate::frontend::header_case::template().await?;
    let state = Arc::new(AppState {
        labels,
        enroll,
        realm: config.realm.clone(),
        limits: config.limits.clone(),
        header_case,
        cvm_label: config.cvm.as_ref().map(|c| c.label.clone()),
        getcert: config.cvm.as_ref().map(getcert).transpose()?,
        registry: registry.clone(),
        revocation: Arc::new(crate::authority::revocation::Revocation::new(
            registry.clone(),
            ordered_cas(&cas),
            config.revocation.ocsp_signer,
            config.revocation.ocsp_lifetime,
        )),
        next_request_id: std::sync::atomic::AtomicU64::new(1),
        metrics: metrics.clone(),
    });
    let swept = state
        .labels
        .iter()
        .map(|(name, label)| crate::authority::retirement::SweptLabel {
            name: name.clone(),
            grace: label.config.retire_grace,
            backend: label.backend.clone(),
        })
        .collect();
    tokio::spawn(crate::authority::retirement::sweep(
        swept,
        registry,
        config.retire_sweep_interval,
    ));

    if let Some(address) = config.admin_listen {
        let (metrics, registry) = (metrics.clone(), state.registry.clone());
        // Bound now, like the EST port: a taken port stops the start.
        let bound = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (admin_listen)"))?;
        let listener = crate::metrics::serve_admin(bound, metrics, registry, config.limits.clone());
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    let crl_files = crl_files(&config, &cas);
    if !crl_files.is_empty() {
        // At start (a failure stops the server), then on every change.
        let before = crate::authority::revocation::snapshot(&*state.registry)
            .await
            .map_err(|e| anyhow::anyhow!("CRL files: {e}"))?;
        for file in &crl_files {
            crate::authority::revocation::write_crl_file(&*state.registry, &file.ca, &file.path)
                .await?;
            crate::authority::revocation::run_reload_command(&file.reload_command).await;
        }
        tokio::spawn(crate::authority::revocation::keep_crl_files(
            state.registry.clone(),
            crl_files,
            config.revocation.crl_check_interval,
            before,
        ));
    }
    if let Some(address) = config.revocation.listen {
        // Bound now, so a taken port stops the start and the listener is
        // up before the server says it is ready.
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} ([revocation] listen)"))?;
        let plain = crate::frontend::status::serve_plain(
            listener,
            state.clone(),
            config.revocation.max_connections,
        );
        tokio::spawn(async move {
            if let Err(e) = plain.await {
                tracing::error!(error = %e, "OCSP/CRL listener failed");
            }
        });
    }
    if let Some(rotation) = config.rotation.clone().filter(|r| r.enabled) {
        warn_short_profiles(&state, rotation.expiring_within);
        // Fails now (not in the background) when no certificate can be had.
        crate::rotation::mqtt::client_pair(&rotation, &ca, &config.ca.dir).await?;
        let trust = broker_trust(&rotation, &ca)?;
        let state = state.clone();
        let (pair_config, pair_ca, ca_dir) = (rotation.clone(), ca.clone(), config.ca.dir.clone());
        let pair_source = move || {
            let (pair_config, pair_ca, ca_dir) =
                (pair_config.clone(), pair_ca.clone(), ca_dir.clone());
            async move { crate::rotation::mqtt::client_pair(&pair_config, &pair_ca, &ca_dir).await }
        };
        tokio::spawn(async move {
            if let Err(e) = crate::rotation::run(state, rotation, trust, pair_source).await {
                tracing::error!(error = %format!("{e:#}"), "rotation orchestrator stopped");
            }
        });
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(address = %local, "EST server listening");
    println!("listening on {local}");
    crate::frontend::http::serve(state, listener, tls.server_config, shutdown).await;
    tracing::info!("EST server stopped");
    Ok(())
}

/// Warns about every profile whose certificates live no longer than the
/// rotation window: each certificate it issues is due at once, so devices
/// would be rotated over and over.
fn warn_short_profiles(state: &AppState, window: std::time::Duration) {
    let mut warned = std::collections::BTreeSet::new();
    for variant in state.labels.values().flat_map(|l| &l.variants) {
        if variant.profile.validity <= window && warned.insert(variant.profile_name.clone()) {
            tracing::warn!(
                profile = %variant.profile_name,
                validity = %duration_text::format(variant.profile.validity),
                expiring_within = %duration_text::format(window),
                "rotation.expiring_within is not shorter than this profile's validity: \
                 every certificate it issues is due for rotation at once"
            );
        }
    }
}

/// PEM trust anchors for the MQTT broker: `broker_ca`, or the local CA chain.
pub fn broker_trust(
    rotation: &crate::config::RotationConfig,
    ca: &LocalCa,
) -> anyhow::Result<Vec<u8>> {
    match &rotation.broker_ca {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("rotation.broker_ca {}", path.display()))
        }
        None => Ok(ca
            .chain()
            .iter()
            .map(est_wire::pem::certificate_to_pem)
            .collect::<String>()
            .into_bytes()),
    }
}

async fn label(
    config: &Config,
    name: Option<String>,
    label_config: &LabelConfig,
    cas: &HashMap<String, Arc<LocalCa>>,
) -> anyhow::Result<Label> {
    let profile_names = if label_config.profiles.is_empty() {
        vec![label_config.profile.clone()]
    } else {
        label_config.profiles.clone()
    };
    let mut variants = Vec::with_capacity(profile_names.len());
    for profile_name in profile_names {
        let profile = config.profile(&profile_name);
        let backend: Arc<dyn CaBackend> = match label_config.backend {
            BackendKind::Local => {
                let ca_name = profile.ca.as_deref().unwrap_or(DEVICE_CA);
                let ca = cas
                    .get(ca_name)
                    .with_context(|| format!("profiles.{profile_name}.ca: no CA `{ca_name}`"))?;
                Arc::new(LocalCaBackend::new(ca.clone(), profile.clone()))
            }
            BackendKind::AwsIot => aws_backend(config, label_config).await?,
        };
        variants.push(Variant {
            profile_name,
            profile,
            backend,
        });
    }
    let first = &variants[0];
    let csrattrs = csr_attributes(label_config, &first.profile)?;
    Ok(Label {
        name,
        config: label_config.clone(),
        profile: first.profile.clone(),
        backend: first.backend.clone(),
        variants,
        csrattrs,
    })
}

/// The `/csrattrs` answer of a label (RFC 7030 §4.5, RFC 9908): the
/// configured OIDs, or — when none are configured — what the label's first
/// profile wants: the key algorithm (and curve), the signature algorithm
/// and, in an extensionRequest, the extended key usages. challengePassword
/// leads when the label requires channel binding (RFC 7030 §3.5). `None`
/// (204) only for an explicit `csrattrs = []`.
fn csr_attributes(
    label: &LabelConfig,
    profile: &ca_backends::Profile,
) -> anyhow::Result<Option<Vec<u8>>> {
    use est_wire::csrattrs::CsrAttr;
    let mut items: Vec<CsrAttr> = match &label.csrattrs {
        Some(oids) => oids
            .iter()
            .map(|oid| const_oid::ObjectIdentifier::new(oid).map(CsrAttr::Oid))
            .collect::<Result<Vec<_>, _>>()
            .context("csrattrs")?,
        None => {
            let algorithm: est_wire::keys::KeyAlgorithm = profile
                .key_algorithm
                .parse()
                .map_err(|e: String| anyhow::anyhow!("key_algorithm: {e}"))?;
            let mut items = est_wire::csrattrs::key_attributes(algorithm);
            let ekus = profile.extended_key_usage_oids();
            if !ekus.is_empty() && !profile.subordinate_ca {
                items.push(est_wire::csrattrs::extended_key_usage_request(&ekus)?);
            }
            items
        }
    };
    if label.channel_binding == ChannelBinding::Require
        && !items.contains(&CsrAttr::Oid(est_wire::csr::CHALLENGE_PASSWORD))
    {
        items.insert(0, CsrAttr::Oid(est_wire::csr::CHALLENGE_PASSWORD));
    }
    if items.is_empty() {
        return Ok(None);
    }
    Ok(Some(est_wire::csrattrs::encode_items(&items)?))
}

#[cfg(feature = "aws")]
async fn aws_backend(config: &Config, label: &LabelConfig) -> anyhow::Result<Arc<dyn CaBackend>> {
    use ca_backends::aws::{AwsIotBackend, AwsIotOptions};
    let bundle_path = label.ca_bundle.as_ref().context("ca_bundle")?;
    let bundle = std::fs::read(bundle_path)
        .with_context(|| format!("ca_bundle {}", bundle_path.display()))?;
    let ca_bundle = est_wire::pem::certificates_from_pem(&bundle)
        .with_context(|| format!("ca_bundle {}: not PEM certificates", bundle_path.display()))?;
    let backend = AwsIotBackend::new(AwsIotOptions {
        region: config.aws.region.clone(),
        endpoint_url: config.aws.endpoint_url.clone(),
        policy: label.policy.clone(),
        ca_bundle,
        max_attempts: config.aws.max_attempts,
        operation_timeout: config.aws.operation_timeout,
    })
    .await;
    Ok(Arc::new(backend))
}

#[cfg(not(feature = "aws"))]
async fn aws_backend(_: &Config, _: &LabelConfig) -> anyhow::Result<Arc<dyn CaBackend>> {
    anyhow::bail!("this build has no AWS support")
}

/// The reference vending machine's API as configured, its `RootCA` read once.
fn getcert(cvm: &crate::config::CvmConfig) -> anyhow::Result<crate::frontend::cvm::Getcert> {
    let root_ca = match &cvm.root_ca {
        Some(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("cvm.root_ca {}", path.display()))?;
            let certificates = est_wire::pem::certificates_from_pem(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .with_context(|| format!("cvm.root_ca {}: not PEM certificates", path.display()))?;
            Some(
                certificates
                    .iter()
                    .map(est_wire::pem::certificate_to_pem)
                    .collect(),
            )
        }
        None => None,
    };
    Ok(crate::frontend::cvm::Getcert {
        path: cvm.getcert_path.clone(),
        root_ca,
    })
}

/// The local CAs, the device CA first, then `[cas.*]` by name.
fn ordered_cas(cas: &HashMap<String, Arc<LocalCa>>) -> Vec<(String, Arc<LocalCa>)> {
    let mut ordered: Vec<_> = cas.iter().map(|(n, ca)| (n.clone(), ca.clone())).collect();
    ordered.sort_by_key(|(name, _)| (name != DEVICE_CA, name.clone()));
    ordered
}

/// The CRL files the config asks for (`crl_file` of `[ca]` and `[cas.*]`).
fn crl_files(
    config: &Config,
    cas: &HashMap<String, Arc<LocalCa>>,
) -> Vec<crate::authority::revocation::CrlFile> {
    ordered_cas(cas)
        .into_iter()
        .filter_map(|(name, ca)| {
            let settings = config.ca_named(&name)?;
            Some(crate::authority::revocation::CrlFile {
                ca,
                path: settings.crl_file.clone()?,
                reload_command: settings.crl_reload_command.clone(),
            })
        })
        .collect()
}

/// Rewrites every configured `crl_file` and runs its reload command (after
/// a revocation by the CLI; running servers notice it by themselves too).
pub async fn refresh_crl_file(
    config: &crate::config::Config,
    registry: &dyn crate::registry::Registry,
) -> anyhow::Result<()> {
    if config.ca.crl_file.is_none() && config.cas.values().all(|ca| ca.crl_file.is_none()) {
        return Ok(());
    }
    let cas = open_cas(config).await?;
    for file in crl_files(config, &cas) {
        crate::authority::revocation::write_crl_file(registry, &file.ca, &file.path).await?;
        crate::authority::revocation::run_reload_command(&file.reload_command).await;
        println!("rewrote {}", file.path.display());
    }
    Ok(())
}
