//! TLS for the EST listener: TLS 1.2 and 1.3 only, optional client certificates.
//!
//! The handshake accepts a client certificate that chains to the union of the
//! bootstrap (manufacturer) CAs and this server's own CA, so both bootstrap
//! and issued identity certificates get through; the HTTP layer then decides
//! what each may do. A second verifier over the bootstrap CAs alone tells the
//! two apart.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use der::Encode;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::Certificate;

use crate::config::TlsConfig;

/// What the listener and the authenticator need from TLS.
pub struct TlsSetup {
    /// Server configuration for the acceptor.
    pub server_config: Arc<ServerConfig>,
    /// Verifier over the bootstrap CAs only (`None` when none are configured).
    pub bootstrap_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// Builds the TLS configuration from files and the CA chain.
pub fn build(config: &TlsConfig, ca_chain: &[Certificate]) -> anyhow::Result<TlsSetup> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut bootstrap_roots = RootCertStore::empty();
    for path in &config.bootstrap_trust {
        for cert in
            read_certs(path).with_context(|| format!("tls.bootstrap_trust: {}", path.display()))?
        {
            bootstrap_roots.add(cert).with_context(|| {
                format!(
                    "tls.bootstrap_trust: {}: unusable CA certificate",
                    path.display()
                )
            })?;
        }
    }
    let mut all_roots = bootstrap_roots.clone();
    for cert in ca_chain {
        let der = cert.to_der().context("re-encoding CA certificate")?;
        all_roots
            .add(CertificateDer::from(der))
            .context("CA certificate unusable as TLS trust anchor")?;
    }

    let bootstrap_verifier = if bootstrap_roots.is_empty() {
        None
    } else {
        Some(client_verifier(bootstrap_roots, &provider)?)
    };
    let client_verifier = client_verifier(all_roots, &provider)?;

    let chain =
        read_certs(&config.cert).with_context(|| format!("tls.cert: {}", config.cert.display()))?;
    if chain.is_empty() {
        bail!("tls.cert: {} holds no certificate", config.cert.display());
    }
    let key =
        read_key(&config.key).with_context(|| format!("tls.key: {}", config.key.display()))?;

    let mut server_config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .context("tls.cert / tls.key do not form a usable pair")?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        server_config: Arc::new(server_config),
        bootstrap_verifier,
    })
}

fn client_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("client certificate verifier")
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))?;
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .with_context(|| format!("{} is not PEM", path.display()))?
        .with_context(|| format!("{} holds no private key", path.display()))
}
