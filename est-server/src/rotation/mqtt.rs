//! The orchestrator's MQTT connection: TLS with a client certificate, and
//! the certificate itself (issued by the local CA when none is configured).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ca_backends::local::LocalCa;
use ca_backends::Profile;
use est_wire::keys::{KeyAlgorithm, SigningKey};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};

use crate::config::RotationConfig;

/// Where the orchestrator's client certificate and key are.
pub struct ClientPair {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Lifetime of the orchestrator certificate the local CA issues.
const ISSUED_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// It is reissued when less than this is left.
const REISSUE_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// The configured pair, or one the local CA issues (CN = `client_id`, valid a
/// year, kept in the CA directory, key 0600, reissued 30 days before its end).
pub async fn client_pair(
    config: &RotationConfig,
    ca: &LocalCa,
    ca_dir: &std::path::Path,
) -> anyhow::Result<ClientPair> {
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        return Ok(ClientPair {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    let pair = issued_pair(ca_dir, &config.client_id);
    if usable(&pair, &config.client_id, REISSUE_BEFORE) {
        return Ok(pair);
    }
    let key = SigningKey::generate(KeyAlgorithm::EcP256).context("orchestrator key")?;
    let subject = ca_backends::local::parse_name(&format!("CN={}", config.client_id))
        .context("orchestrator subject")?;
    let issued = ca
        .issue(
            &subject,
            &key.public_key_info(),
            &[],
            &Profile {
                validity: ISSUED_LIFETIME,
                ..Profile::default()
            },
        )
        .await
        .context("orchestrator certificate")?;
    // A crash between these writes leaves a pair that does not match, which
    // `usable` refuses, so the next call issues again.
    for (path, bytes, mode) in [
        (&pair.key, key.to_pkcs8_pem().into_bytes(), 0o600),
        (
            &pair.cert,
            est_wire::pem::certificate_to_pem(&issued.certificate).into_bytes(),
            0o644,
        ),
    ] {
        let _ = std::fs::remove_file(path);
        crate::secure_files::write_new(path, &bytes, mode)?;
    }
    tracing::info!(cert = %pair.cert.display(), "issued the rotation orchestrator's MQTT client certificate");
    Ok(pair)
}

/// The files of the pair the local CA issues for `client_id`:
/// `rotation-client-<client id>.pem` (and `.key`), so that servers sharing
/// one CA directory each connect as their own client id (a broker that takes
/// the certificate's CN as the user name tells them apart, and each gets its
/// own ACL entry). `rotation-client.pem`, which earlier versions wrote for
/// whichever server started first, is still used when it names `client_id`.
fn issued_pair(ca_dir: &std::path::Path, client_id: &str) -> ClientPair {
    let earlier = ClientPair {
        cert: ca_dir.join("rotation-client.pem"),
        key: ca_dir.join("rotation-client.key"),
    };
    if common_name(&earlier.cert).as_deref() == Some(client_id) {
        return earlier;
    }
    let name: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    ClientPair {
        cert: ca_dir.join(format!("rotation-client-{name}.pem")),
        key: ca_dir.join(format!("rotation-client-{name}.key")),
    }
}

/// The subject CN of the first certificate in a PEM file.
fn common_name(cert: &std::path::Path) -> Option<String> {
    let pem = std::fs::read(cert).ok()?;
    let certificate = est_wire::pem::certificates_from_pem(&pem)
        .ok()?
        .into_iter()
        .next()?;
    est_wire::csr::common_name(&certificate.tbs_certificate.subject)
}

/// SHA-256 of the pair's certificate file (changes when it is reissued).
pub fn fingerprint(pair: &ClientPair) -> Option<String> {
    std::fs::read(&pair.cert)
        .ok()
        .map(|pem| est_wire::sha256_hex(&pem))
}

/// The issued pair exists, belongs together, names `client_id` and is
/// valid for `margin` more.
fn usable(pair: &ClientPair, client_id: &str, margin: Duration) -> bool {
    if common_name(&pair.cert).as_deref() != Some(client_id) {
        return false;
    }
    let certificate = std::fs::read(&pair.cert)
        .ok()
        .and_then(|pem| est_wire::pem::certificates_from_pem(&pem).ok())
        .and_then(|certs| certs.into_iter().next());
    let key = std::fs::read(&pair.key)
        .ok()
        .and_then(|pem| SigningKey::from_pem(&pem).ok());
    match (certificate, key) {
        (Some(certificate), Some(key)) => {
            certificate.tbs_certificate.subject_public_key_info == key.public_key_info()
                && certificate
                    .tbs_certificate
                    .validity
                    .not_after
                    .to_system_time()
                    > std::time::SystemTime::now() + margin
        }
        _ => false,
    }
}

/// Connects (lazily: the returned event loop connects when polled).
/// `clean_session = false` keeps the orchestrator's subscriptions and queued
/// device answers on the broker across its restarts.
pub fn connect(
    config: &RotationConfig,
    client_id: &str,
    clean_session: bool,
    trust_pem: &[u8],
    pair: &ClientPair,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let (host, port) = config
        .broker
        .rsplit_once(':')
        .context("rotation.broker: expected host:port")?;
    let port: u16 = port.parse().context("rotation.broker: port")?;
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(clean_session);
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls_config(trust_pem, pair)?),
    )));
    Ok(AsyncClient::new(options, 1024))
}

fn tls_config(trust_pem: &[u8], pair: &ClientPair) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &trust_pem[..]) {
        roots
            .add(cert.context("broker trust anchors")?)
            .context("broker trust anchor")?;
    }
    let chain = rustls_pemfile::certs(&mut &std::fs::read(&pair.cert)?[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}", pair.cert.display()))?;
    let key = rustls_pemfile::private_key(&mut &std::fs::read(&pair.key)?[..])
        .with_context(|| format!("{}", pair.key.display()))?
        .with_context(|| format!("{}: no private key", pair.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}
