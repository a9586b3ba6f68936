//! TLS and a single HTTP/1.1 exchange per connection.
//!
//! The server is authenticated against explicit trust anchors before any
//! credential is sent (RFC 7030 §3.3.1). Each EST operation opens its own
//! connection, so the TLS channel binding of that connection can be put into
//! the CSR it carries.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest response body accepted.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// RFC 9266 channel binding label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Where trust in the server comes from.
pub enum ServerTrust {
    /// Trust anchors from explicit PEM files.
    Anchors(Vec<CertificateDer<'static>>),
    /// First contact: accept any server certificate (only to fetch /cacerts
    /// and show its fingerprint to an operator).
    FirstContactInsecure,
}

/// A TLS client certificate and its key.
pub struct ClientIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

/// Builds a rustls client configuration (TLS 1.2 and 1.3).
pub fn client_config(
    trust: ServerTrust,
    identity: Option<ClientIdentity>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?;
    let builder = match trust {
        ServerTrust::Anchors(anchors) => {
            let mut roots = RootCertStore::empty();
            for anchor in anchors {
                roots.add(anchor).context("unusable trust anchor")?;
            }
            if roots.is_empty() {
                anyhow::bail!("no trust anchors given");
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::FirstContactInsecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider))),
    };
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .context("client certificate and key do not form a usable pair")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A response, fully read.
#[derive(Debug)]
pub struct Exchange {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
    /// `Retry-After` in seconds, if any.
    pub retry_after: Option<u64>,
    /// Body bytes.
    pub body: Bytes,
}

/// One open TLS connection, before the request is sent.
pub struct Connection {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    host: String,
}

impl Connection {
    /// Connects and completes the TLS handshake.
    pub async fn open(
        config: Arc<ClientConfig>,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .with_context(|| format!("connecting to {host}:{port} timed out"))?
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("bad host name {host}"))?;
        let stream = tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake failed")?;
        Ok(Self {
            stream,
            host: host.to_owned(),
        })
    }

    /// RFC 9266 `tls-exporter` channel binding of this connection (32 bytes).
    pub fn channel_binding(&self) -> anyhow::Result<[u8; 32]> {
        let mut out = [0u8; 32];
        self.stream
            .get_ref()
            .1
            .export_keying_material(&mut out, EXPORTER_LABEL, Some(b""))
            .map_err(|e| anyhow::anyhow!("channel binding unavailable: {e}"))?;
        Ok(out)
    }

    /// The server's certificate chain as it presented it.
    pub fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Exchange> {
        let host = self.host.clone();
        let exchange = async move {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(self.stream))
                    .await
                    .context("HTTP handshake")?;
            let driver = tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header("Host", host);
            for (name, value) in headers {
                request =
                    request.header(*name, HeaderValue::from_str(value).context("header value")?);
            }
            let request = request
                .body(Full::new(Bytes::from(body)))
                .context("building request")?;
            let response = sender
                .send_request(request)
                .await
                .context("sending request")?;
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let content_type = header("content-type");
            let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading response: {e}"))?
                .to_bytes();
            driver.abort();
            Ok::<_, anyhow::Error>(Exchange {
                status,
                content_type,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .context("request timed out")?
    }
}

/// Accepts any server certificate. Used only for an explicit first contact.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads every certificate from a PEM file.
pub fn read_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &std::path::Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .with_context(|| format!("{} is not PEM", path.display()))?
        .with_context(|| format!("{} holds no private key", path.display()))
}
