//! Assembles a running server from a [`Config`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ca_backends::local::{LocalCa, LocalCaBackend, LocalCaOptions};
use tokio::net::TcpListener;

use crate::auth::{Authenticator, Users};
use crate::config::{ChannelBinding, Config, LabelConfig};
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

/// Binds the listener and serves until `shutdown` resolves. Prints
/// `listening on <addr>` on stdout once ready.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ca = open_ca(&config)?;
    let registry: Arc<dyn Registry> = Arc::new(
        SqliteRegistry::open(&config.registry.path)
            .with_context(|| format!("registry {}", config.registry.path.display()))?,
    );
    let tls = crate::tls::build(&config.tls, &ca.chain())?;

    let mut labels = HashMap::new();
    labels.insert(String::new(), label(&config, None, &config.enroll, &ca)?);
    for (name, label_config) in &config.labels {
        labels.insert(
            name.clone(),
            label(&config, Some(name.clone()), label_config, &ca)?,
        );
    }

    let users = Arc::new(Users::new(&config.users));
    let authenticator = Authenticator::new(
        users,
        tls.bootstrap_verifier.clone(),
        registry.clone(),
        config.limits.clone(),
    );
    let enroll = EnrollService::new(authenticator, registry);
    let header_case = crate::header_case::template().await?;
    let state = Arc::new(AppState::new(
        labels,
        enroll,
        config.realm.clone(),
        config.limits.clone(),
        header_case,
        config.cvm.as_ref().map(|c| c.label.clone()),
    ));

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

fn label(
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
    Ok(Label {
        name,
        config: label_config.clone(),
        backend: Arc::new(LocalCaBackend::new(ca.clone(), profile.clone())),
        profile,
        csrattrs,
    })
}
