//! Assembles a running server from a [`Config`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ca_backends::local::{LocalCa, LocalCaBackend, LocalCaOptions};
use ca_backends::CaBackend;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, Users};
use crate::config::{BackendKind, ChannelBinding, Config, LabelConfig, RegistryKind};
use crate::enroll::{EnrollService, Label};
use crate::http::AppState;
use crate::registry::{Registry, SqliteRegistry};

/// Opens the local CA described by `config` (creating it on first start).
pub fn open_ca(config: &Config) -> anyhow::Result<Arc<LocalCa>> {
    let options = LocalCaOptions {
        key_algorithm: config
            .ca
            .key_algorithm
            .parse()
            .map_err(|e: String| anyhow::anyhow!("ca.key_algorithm: {e}"))?,
        root_subject: config.ca.root_subject.clone(),
        issuing_subject: config.ca.issuing_subject.clone(),
        ..LocalCaOptions::default()
    };
    let ca = LocalCa::open_or_create(&config.ca.dir, &options)
        .with_context(|| format!("local CA in {}", config.ca.dir.display()))?;
    Ok(Arc::new(ca))
}

/// Opens the registry the config names (SQLite file or DynamoDB table).
pub async fn open_registry(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    match config.registry.kind {
        RegistryKind::Sqlite => Ok(Arc::new(
            SqliteRegistry::open(&config.registry.path)
                .with_context(|| format!("registry {}", config.registry.path.display()))?,
        )),
        RegistryKind::Dynamodb => dynamodb_registry(config).await,
    }
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
    let ca = open_ca(&config)?;
    let registry = open_registry(&config).await?;
    // Client certificates may come from the local CA or from a backend's CA.
    let mut issuers = ca.chain();
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
    let tls = crate::tls::build(&config.tls, &issuers)?;

    let mut labels = HashMap::new();
    labels.insert(
        String::new(),
        label(&config, None, &config.enroll, &ca).await?,
    );
    for (name, label_config) in &config.labels {
        labels.insert(
            name.clone(),
            label(&config, Some(name.clone()), label_config, &ca).await?,
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
    let reserved = config
        .rotation
        .iter()
        .map(|r| r.client_id.clone())
        .collect();
    let enroll = EnrollService::new(authenticator, registry.clone(), metrics.clone())
        .with_reserved_names(reserved);
    let header_case = crate::header_case::template().await?;
    let state = Arc::new(AppState {
        labels,
        enroll,
        realm: config.realm.clone(),
        limits: config.limits.clone(),
        header_case,
        cvm_label: config.cvm.as_ref().map(|c| c.label.clone()),
        registry: registry.clone(),
        local_ca: ca.clone(),
        next_request_id: std::sync::atomic::AtomicU64::new(1),
        metrics: metrics.clone(),
    });
    tokio::spawn(crate::retirement::sweep(
        state.clone(),
        registry,
        config.retire_sweep_interval,
    ));

    if let Some(address) = config.admin_listen {
        let (metrics, registry) = (metrics.clone(), state.registry.clone());
        let listener =
            crate::metrics::serve_admin(address, metrics, registry, config.limits.clone());
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    if let Some(rotation) = config.rotation.clone().filter(|r| r.enabled) {
        // Fails now (not in the background) when no certificate can be had.
        crate::rotation::mqtt::client_pair(&rotation, &ca, &config.ca.dir)?;
        let trust = broker_trust(&rotation, &ca)?;
        let state = state.clone();
        let (pair_config, pair_ca, ca_dir) = (rotation.clone(), ca.clone(), config.ca.dir.clone());
        let pair_source =
            move || crate::rotation::mqtt::client_pair(&pair_config, &pair_ca, &ca_dir);
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
    crate::http::serve(state, listener, tls.server_config, shutdown).await;
    tracing::info!("EST server stopped");
    Ok(())
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
    ca: &Arc<LocalCa>,
) -> anyhow::Result<Label> {
    let profile = config.profile(&label_config.profile);
    let mut oids = label_config
        .csrattrs
        .iter()
        .map(|oid| const_oid::ObjectIdentifier::new(oid))
        .collect::<Result<Vec<_>, _>>()
        .context("csrattrs")?;
    // A label that requires channel binding tells clients so (RFC 7030 §3.5).
    if label_config.channel_binding == ChannelBinding::Require
        && !oids.contains(&est_wire::csr::CHALLENGE_PASSWORD)
    {
        oids.insert(0, est_wire::csr::CHALLENGE_PASSWORD);
    }
    let csrattrs = (!oids.is_empty()).then(|| est_wire::csrattrs::encode(&oids));
    let backend: Arc<dyn CaBackend> = match label_config.backend {
        BackendKind::Local => Arc::new(LocalCaBackend::new(ca.clone(), profile.clone())),
        BackendKind::AwsIot => aws_backend(config, label_config).await?,
    };
    Ok(Label {
        name,
        config: label_config.clone(),
        backend,
        profile,
        csrattrs,
    })
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
