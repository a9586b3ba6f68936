//! The MQTT rotation agent: the device side of server-driven certificate
//! rotation (protocol in [`est_wire::rotation`]).
//!
//! The agent keeps one MQTT connection (TLS, the current device certificate
//! as client certificate, persistent session) to the broker, subscribed to
//! `{prefix}/{clientId}/csr_req` and `{prefix}/{clientId}/crt_res`:
//!
//! * `csr_req` → a CSR for the current subject and SANs, for a new key
//!   (`auto_renew.rotate_key`, kept in `<key>.pending` like the renewal
//!   daemon does) or the current key, published on `csr_res`;
//! * `crt_res` → the certificate is checked (chains to the trust anchors
//!   through `caPem`, certifies the key we sent, valid now), installed, and
//!   the agent reconnects with the new pair and publishes `crt_ack`. If the
//!   reconnect fails the previous pair is restored and used again. A
//!   `crt_res` for the certificate already installed is acknowledged again.
//!
//! Any failure while handling either message is reported on `crt_err`; the
//! old pair stays in use. Installs are serialized with the renewal daemon
//! through [`Renewer::install_lock`].

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use der::Encode;
use est_wire::keys::SigningKey;
use est_wire::rotation::{
    valid_client_id, CertificateAck, CertificateError, CertificateResponse, CsrRequest,
    CsrResponse, Step, Topics, DEFAULT_PREFIX,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use x509_cert::Certificate;

use crate::daemon::{hex_serial, renewal_key, spec_from, validity, Renewer};
use crate::files::{install_pair, read_certificate, recover_pair, restore_previous_pair, sibling};
use crate::transport::{client_config, read_certs, read_key, ClientIdentity, ServerTrust};

/// First reconnection delay; doubled after each failure.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a connection attempt (TCP, TLS, CONNECT/CONNACK) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful DISCONNECT may take before the connection is dropped.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[mqtt]` section of the renewal configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker as `host:port`; always TLS (mqtts).
    pub broker: String,
    /// PEM trust anchors for the broker's certificate (default: the `trust` files).
    #[serde(default)]
    pub broker_ca: Option<PathBuf>,
    /// MQTT client id (default: the CN of the current device certificate).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic prefix (default `management/topic`).
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// MQTT keep-alive (humantime, default 30s; 0 disables, else at least 1s).
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "humantime_duration"
    )]
    pub keep_alive: Duration,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn humantime_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

impl MqttConfig {
    /// Checks the values that serde cannot.
    pub fn check(&self) -> anyhow::Result<()> {
        self.host_port()?;
        if let Some(id) = &self.client_id {
            if !valid_client_id(id) {
                anyhow::bail!("client_id `{id}` cannot be a topic level");
            }
        }
        if self.topic_prefix.trim_end_matches('/').is_empty() {
            anyhow::bail!("topic_prefix is empty");
        }
        if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            anyhow::bail!("keep_alive must be 0 or at least 1s");
        }
        Ok(())
    }

    /// The broker's host and port.
    pub fn host_port(&self) -> anyhow::Result<(String, u16)> {
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .with_context(|| format!("broker `{}` is not host:port", self.broker))?;
        let port = port
            .parse()
            .with_context(|| format!("broker `{}`: bad port", self.broker))?;
        if host.is_empty() || host.contains(':') {
            anyhow::bail!("broker `{}` is not host:port", self.broker);
        }
        Ok((host.to_owned(), port))
    }
}

/// The MQTT rotation agent for one device.
pub struct MqttAgent {
    renewer: Arc<Renewer>,
    mqtt: MqttConfig,
    topics: Topics,
    host: String,
    port: u16,
    client_id: Option<String>,
    /// Messages to publish once connected again (a `crt_err` whose
    /// connection was lost).
    outbox: Vec<(Step, Vec<u8>)>,
}

/// One MQTT connection.
struct Link {
    client: AsyncClient,
    events: EventLoop,
}

/// The current pair, read from disk.
struct Identity {
    certificate: Certificate,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
}

/// What a `crt_res` asks for.
enum Delivery {
    /// The certificate is the one in use: acknowledge again.
    AlreadyInstalled { serial: String },
    /// A new, verified certificate (and the new key if it certifies one).
    New {
        certificate: Box<Certificate>,
        key_pem: Option<String>,
    },
}

/// Why serving a connection stopped.
enum Stop {
    Shutdown,
}

impl MqttAgent {
    /// An agent for the renewer's configuration; `None` without an `[mqtt]` section.
    pub fn new(renewer: Arc<Renewer>) -> anyhow::Result<Option<Self>> {
        let Some(mqtt) = renewer.config().mqtt.clone() else {
            return Ok(None);
        };
        let (host, port) = mqtt.host_port()?;
        Ok(Some(Self {
            topics: Topics::new(&mqtt.topic_prefix),
            client_id: mqtt.client_id.clone(),
            renewer,
            mqtt,
            host,
            port,
            outbox: Vec::new(),
        }))
    }

    /// Runs until `shutdown` resolves, reconnecting with back-off (1 s
    /// doubling to 30 s) whenever the connection fails or drops.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = BACKOFF_START;
        loop {
            let renewer = Arc::clone(&self.renewer);
            let connected = async {
                let identity = {
                    let _installing = renewer.install_lock().lock().await;
                    self.read_identity()?
                };
                self.open(identity).await
            };
            let attempt = tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("mqtt agent stopping");
                    return;
                }
                attempt = connected => attempt,
            };
            let mut link = match attempt {
                Ok(link) => {
                    backoff = BACKOFF_START;
                    link
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_secs = backoff.as_secs(), "mqtt connection failed; retrying");
                    if sleep_or_shutdown(backoff, shutdown.as_mut()).await {
                        tracing::info!("mqtt agent stopping");
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            for (step, payload) in std::mem::take(&mut self.outbox) {
                self.publish(&link, step, payload).await;
            }
            match self.serve(&mut link, shutdown.as_mut()).await {
                Ok(Stop::Shutdown) => {
                    close(link).await;
                    tracing::info!("mqtt agent stopping");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_secs = backoff.as_secs(), "mqtt connection lost; reconnecting");
                    if sleep_or_shutdown(backoff, shutdown.as_mut()).await {
                        tracing::info!("mqtt agent stopping");
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The current pair, after repairing an interrupted install. The caller
    /// holds the install lock.
    fn read_identity(&mut self) -> anyhow::Result<Identity> {
        let cfg = self.renewer.config();
        recover_pair(&cfg.cert, &cfg.key)?;
        let certificate = read_certificate(&cfg.cert)?;
        if self.client_id.is_none() {
            let cn = est_wire::csr::common_name(&certificate.tbs_certificate.subject)
                .context("the device certificate has no CN; set mqtt.client_id")?;
            if !valid_client_id(&cn) {
                anyhow::bail!("the device CN `{cn}` cannot be a topic level; set mqtt.client_id");
            }
            tracing::info!(client_id = %cn, "mqtt client id from the device certificate");
            self.client_id = Some(cn);
        }
        Ok(Identity {
            certificate,
            chain: read_certs(&cfg.cert)?,
            key: read_key(&cfg.key)?,
        })
    }

    fn client_id(&self) -> &str {
        self.client_id
            .as_deref()
            .expect("resolved by read_identity before any connection")
    }

    /// Connects with `identity`, waits for a successful CONNACK and subscribes.
    async fn open(&self, identity: Identity) -> anyhow::Result<Link> {
        let serial = hex_serial(&identity.certificate);
        let anchors = match &self.mqtt.broker_ca {
            Some(path) => read_certs(path)?,
            None => self.renewer.anchors()?,
        };
        let config = client_config(
            ServerTrust::Anchors(anchors),
            Some(ClientIdentity {
                chain: identity.chain,
                key: identity.key,
            }),
        )?;
        let mut config = (*config).clone();
        config.alpn_protocols.clear();

        let client_id = self.client_id().to_owned();
        let mut options = MqttOptions::new(client_id.clone(), self.host.clone(), self.port);
        options
            .set_keep_alive(self.mqtt.keep_alive)
            .set_clean_session(false)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        let (client, mut events) = AsyncClient::new(options, 16);
        let mut network = events.network_options();
        network.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
        events.set_network_options(network);

        tracing::info!(broker = %self.mqtt.broker, %client_id, %serial, "connecting to the mqtt broker");
        let connack = tokio::time::timeout(CONNECT_TIMEOUT, events.poll())
            .await
            .context("connecting to the broker timed out")?
            .context("cannot connect to the broker")?;
        match connack {
            Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                tracing::info!(
                    session_present = ack.session_present,
                    %serial,
                    "connected to the mqtt broker"
                );
            }
            Event::Incoming(Packet::ConnAck(ack)) => {
                anyhow::bail!("the broker refused the connection: {:?}", ack.code)
            }
            other => anyhow::bail!("expected CONNACK from the broker, got {other:?}"),
        }
        for step in [Step::CsrReq, Step::CrtRes] {
            client
                .subscribe(self.topics.topic(&client_id, step), QoS::AtLeastOnce)
                .await
                .context("subscribe")?;
        }
        Ok(Link { client, events })
    }

    /// Handles messages until the connection drops (error) or `shutdown`.
    async fn serve(
        &mut self,
        link: &mut Link,
        mut shutdown: Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> anyhow::Result<Stop> {
        loop {
            let event = tokio::select! {
                _ = shutdown.as_mut() => return Ok(Stop::Shutdown),
                event = link.events.poll() => event.context("mqtt connection")?,
            };
            match event {
                Event::Incoming(Packet::Publish(publish)) => self.handle(link, publish).await?,
                Event::Incoming(Packet::SubAck(ack)) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        anyhow::bail!("the broker refused a subscription to the rotation topics");
                    }
                    tracing::info!(client_id = %self.client_id(), "subscribed to the rotation topics");
                }
                Event::Incoming(Packet::Disconnect) => {
                    anyhow::bail!("the broker disconnected")
                }
                _ => {}
            }
        }
    }

    /// Dispatches one message. An error means the connection is unusable.
    async fn handle(&mut self, link: &mut Link, publish: Publish) -> anyhow::Result<()> {
        let step = match self.topics.parse(&publish.topic) {
            Some((id, step)) if id == self.client_id() => step,
            _ => {
                tracing::debug!(topic = %publish.topic, "ignoring a message on a foreign topic");
                return Ok(());
            }
        };
        match step {
            Step::CsrReq => {
                tracing::info!("csr_req received");
                match self.csr_for(&publish.payload).await {
                    Ok(csr) => {
                        tracing::info!("publishing csr_res");
                        let serial = self.installed_serial();
                        let payload = serde_json::to_vec(&CsrResponse { csr, serial })?;
                        self.publish(link, Step::CsrRes, payload).await;
                    }
                    Err(e) => self.reject(link, "csr_req", e).await,
                }
                Ok(())
            }
            Step::CrtRes => {
                tracing::info!("crt_res received");
                self.rotate(link, &publish.payload).await
            }
            _ => {
                tracing::debug!(topic = %publish.topic, "ignoring a message not meant for the device");
                Ok(())
            }
        }
    }

    /// The PEM CSR answering a `csr_req`.
    async fn csr_for(&self, payload: &[u8]) -> anyhow::Result<String> {
        let request: CsrRequest =
            serde_json::from_slice(payload).context("csr_req payload is not a CSR request")?;
        let _installing = self.renewer.install_lock().lock().await;
        let cfg = self.renewer.config();
        recover_pair(&cfg.cert, &cfg.key)?;
        let current = read_certificate(&cfg.cert)?;
        let serial = hex_serial(&current);
        if request.serial != serial {
            tracing::warn!(requested = %request.serial, current = %serial, "csr_req names another certificate than the one in use; answering for the one in use");
        }
        let (key, rotate) = renewal_key(cfg, Some(&current))?;
        let der = est_wire::csr::build(&spec_from(&current), &key).context("building the CSR")?;
        tracing::info!(
            new_key = rotate,
            "CSR built for the current subject and SANs"
        );
        Ok(est_wire::pem::encode("CERTIFICATE REQUEST", &der))
    }

    /// Handles a `crt_res`: check, install, reconnect with the new pair and
    /// acknowledge; on failure report `crt_err` and keep (or go back to) the
    /// old pair. An error means no connection could be re-established.
    async fn rotate(&mut self, link: &mut Link, payload: &[u8]) -> anyhow::Result<()> {
        let renewer = Arc::clone(&self.renewer);
        let _installing = renewer.install_lock().lock().await;
        let cfg = renewer.config();
        let (certificate, key_pem) = match self.check_delivery(payload) {
            Ok(Delivery::AlreadyInstalled { serial }) => {
                tracing::info!(%serial, "crt_res for the certificate in use; acknowledging again");
                self.acknowledge(link, serial).await?;
                return Ok(());
            }
            Ok(Delivery::New {
                certificate,
                key_pem,
            }) => (certificate, key_pem),
            Err(e) => {
                self.reject(link, "crt_res", e).await;
                return Ok(());
            }
        };
        let serial = hex_serial(&certificate);
        let cert_pem = est_wire::pem::certificate_to_pem(&certificate);
        if let Err(e) = install_pair(&cfg.cert, &cfg.key, &cert_pem, key_pem.as_deref()) {
            let e = e.context("installing the new certificate");
            // Whatever half of the install happened is undone here.
            if let Err(repair) = recover_pair(&cfg.cert, &cfg.key) {
                tracing::error!(error = %format!("{repair:#}"), "cannot repair the certificate/key pair");
            }
            self.reject(link, "crt_res", e).await;
            return Ok(());
        }
        let _ = std::fs::remove_file(sibling(&cfg.key, "pending"));
        tracing::info!(%serial, rotated_key = key_pem.is_some(), "new certificate installed; reconnecting with it");

        close(std::mem::replace(link, self.detached_link())).await;
        let reconnected = match self.read_identity() {
            Ok(identity) => self.open(identity).await,
            Err(e) => Err(e),
        };
        match reconnected {
            Ok(new_link) => {
                *link = new_link;
                tracing::info!(%serial, "connected with the new certificate; publishing crt_ack");
                self.acknowledge(link, serial).await?;
                renewer.run_hook();
                Ok(())
            }
            Err(e) => {
                let e = e.context("connecting with the new certificate");
                tracing::warn!(error = %format!("{e:#}"), "rolling back to the previous certificate");
                let error = match restore_previous_pair(&cfg.cert, &cfg.key) {
                    Ok(()) => format!("{e:#}; rolled back to the previous certificate"),
                    Err(restore) => {
                        tracing::error!(error = %format!("{restore:#}"), "cannot restore the previous certificate");
                        format!("{e:#}; restoring the previous certificate failed: {restore:#}")
                    }
                };
                let serial = self.installed_serial();
                let payload = serde_json::to_vec(&CertificateError { error, serial })?;
                match self.read_identity() {
                    Ok(identity) => match self.open(identity).await {
                        Ok(old_link) => {
                            *link = old_link;
                            tracing::info!(
                                "reconnected with the previous certificate; publishing crt_err"
                            );
                            self.publish(link, Step::CrtErr, payload).await;
                            Ok(())
                        }
                        Err(reopen) => {
                            self.outbox.push((Step::CrtErr, payload));
                            Err(reopen.context("reconnecting with the previous certificate"))
                        }
                    },
                    Err(read) => {
                        self.outbox.push((Step::CrtErr, payload));
                        Err(read)
                    }
                }
            }
        }
    }

    /// Parses and checks a `crt_res` against the pair in use. The caller
    /// holds the install lock.
    fn check_delivery(&self, payload: &[u8]) -> anyhow::Result<Delivery> {
        let cfg = self.renewer.config();
        let response: CertificateResponse = serde_json::from_slice(payload)
            .context("crt_res payload is not a certificate response")?;
        let certificate = est_wire::pem::certificates_from_pem(response.certificate_pem.as_bytes())
            .context("certificatePem is not a PEM certificate")?
            .into_iter()
            .next()
            .context("certificatePem holds no certificate")?;
        let chain = if response.ca_pem.trim().is_empty() {
            Vec::new()
        } else {
            est_wire::pem::certificates_from_pem(response.ca_pem.as_bytes())
                .context("caPem is not PEM certificates")?
        };

        recover_pair(&cfg.cert, &cfg.key)?;
        let current = read_certificate(&cfg.cert)?;
        let serial = hex_serial(&certificate);
        if serial == hex_serial(&current) && certificate.to_der()? == current.to_der()? {
            return Ok(Delivery::AlreadyInstalled { serial });
        }

        crate::verify::verify_chain(&certificate, &chain, &self.renewer.anchors()?)?;
        let (not_before, not_after) = validity(&certificate);
        let now = SystemTime::now();
        if now < not_before || now >= not_after {
            anyhow::bail!("the new certificate is not valid now");
        }
        let spki = &certificate.tbs_certificate.subject_public_key_info;
        let pending = std::fs::read(sibling(&cfg.key, "pending"))
            .ok()
            .and_then(|pem| SigningKey::from_pem(&pem).ok());
        if let Some(pending) = pending.filter(|k| &k.public_key_info() == spki) {
            return Ok(Delivery::New {
                certificate: Box::new(certificate),
                key_pem: Some(pending.to_pkcs8_pem()),
            });
        }
        let current_key = SigningKey::from_pem(&std::fs::read(&cfg.key)?)
            .with_context(|| format!("{} is not a private key", cfg.key.display()))?;
        if &current_key.public_key_info() == spki {
            return Ok(Delivery::New {
                certificate: Box::new(certificate),
                key_pem: None,
            });
        }
        anyhow::bail!("the new certificate does not certify the key of our CSR")
    }

    /// Publishes `crt_ack` for `serial`.
    async fn acknowledge(&self, link: &Link, serial: String) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(&CertificateAck { serial })?;
        self.publish(link, Step::CrtAck, payload).await;
        Ok(())
    }

    /// Serial of the certificate installed now (the one being replaced).
    fn installed_serial(&self) -> Option<String> {
        read_certificate(&self.renewer.config().cert)
            .ok()
            .map(|c| hex_serial(&c))
    }

    /// Reports a failed `csr_req`/`crt_res` on `crt_err`.
    async fn reject(&self, link: &Link, what: &str, error: anyhow::Error) {
        let error = format!("{error:#}");
        tracing::warn!(message = what, %error, "rotation step failed; keeping the current certificate; publishing crt_err");
        let serial = self.installed_serial();
        match serde_json::to_vec(&CertificateError { error, serial }) {
            Ok(payload) => self.publish(link, Step::CrtErr, payload).await,
            Err(e) => tracing::error!(error = %e, "cannot encode crt_err"),
        }
    }

    /// Queues a QoS 1 publish on `link` (sent as the link is polled).
    async fn publish(&self, link: &Link, step: Step, payload: Vec<u8>) {
        let topic = self.topics.topic(self.client_id(), step);
        if let Err(e) = link
            .client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(%topic, error = %e, "cannot queue a publish");
        }
    }

    /// A placeholder link that is never polled (for swapping the real one out).
    fn detached_link(&self) -> Link {
        let (client, events) = AsyncClient::new(MqttOptions::new("detached", "localhost", 1), 1);
        Link { client, events }
    }
}

/// Sends DISCONNECT (after whatever is queued) and waits briefly for it to go out.
async fn close(mut link: Link) {
    if link.client.disconnect().await.is_err() {
        return;
    }
    let drained = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
        loop {
            match link.events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!("mqtt disconnect timed out; dropping the connection");
    }
}

/// Sleeps for `wait`; true if `shutdown` resolved first.
async fn sleep_or_shutdown(
    wait: Duration,
    shutdown: Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    tokio::select! {
        _ = shutdown => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::daemon::RenewConfig;
    use std::time::Duration;

    fn load(text: &str) -> anyhow::Result<RenewConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("renew.toml");
        std::fs::write(&path, text).unwrap();
        RenewConfig::load(&path)
    }

    const BASE: &str =
        "server = \"https://est:8443\"\ntrust = [\"ca.pem\"]\ncert = \"d.pem\"\nkey = \"d.key\"\n";

    #[test]
    fn mqtt_section_defaults_and_relative_paths() {
        let config = load(&format!("{BASE}[mqtt]\nbroker = \"127.0.0.1:8883\"\n")).unwrap();
        let mqtt = config.mqtt.unwrap();
        assert_eq!(mqtt.topic_prefix, est_wire::rotation::DEFAULT_PREFIX);
        assert_eq!(mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(mqtt.client_id, None);
        assert_eq!(mqtt.broker_ca, None);
        assert_eq!(mqtt.host_port().unwrap(), ("127.0.0.1".into(), 8883));

        let config = load(&format!(
            "{BASE}[mqtt]\nbroker = \"mq.example:8883\"\nbroker_ca = \"broker-ca.pem\"\nclient_id = \"SN-1\"\ntopic_prefix = \"fleet/rot\"\nkeep_alive = \"1m\"\n"
        ))
        .unwrap();
        let mqtt = config.mqtt.unwrap();
        let ca = mqtt.broker_ca.unwrap();
        assert!(ca.is_absolute() && ca.ends_with("broker-ca.pem"));
        assert_eq!(mqtt.keep_alive, Duration::from_secs(60));
        assert_eq!(mqtt.client_id.as_deref(), Some("SN-1"));
        assert!(load(BASE).unwrap().mqtt.is_none());
    }

    #[test]
    fn bad_mqtt_sections_are_refused() {
        for bad in [
            "broker = \"127.0.0.1\"",
            "broker = \"127.0.0.1:x\"",
            "broker = \"h:1\"\nclient_id = \"a/b\"",
            "broker = \"h:1\"\nkeep_alive = \"500ms\"",
            "broker = \"h:1\"\nunknown = 1",
        ] {
            assert!(load(&format!("{BASE}[mqtt]\n{bad}\n")).is_err(), "{bad}");
        }
    }
}
