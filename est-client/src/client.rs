//! The EST operations against one server and label.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use der::Encode;
use est_wire::csr::CsrSpec;
use est_wire::keys::SigningKey;
use est_wire::media;
use hyper::StatusCode;
use rustls::ClientConfig;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::transport::{client_config, ClientIdentity, Connection, Exchange, ServerTrust};

/// Where and how to talk to an EST server.
pub struct EstClientConfig {
    /// `https://host[:port]` (port 443 by default) or `host:port`.
    pub server: String,
    /// CA label (`/.well-known/est/<label>/…`), if any.
    pub label: Option<String>,
    /// How the server is authenticated.
    pub trust: ServerTrust,
    /// HTTP Basic user and password, sent with enrollment requests.
    pub basic: Option<(String, Zeroizing<String>)>,
    /// TLS client certificate.
    pub identity: Option<ClientIdentity>,
    /// Put the TLS channel binding into CSRs built by the client (RFC 9266).
    pub channel_binding: bool,
    /// Longest total wait for 202 + Retry-After answers.
    pub max_pending_wait: Duration,
    /// Per-request time limit.
    pub timeout: Duration,
}

impl EstClientConfig {
    /// A configuration with defaults: no credentials, 5 minutes of pending waits, 30 s per request.
    pub fn new(server: impl Into<String>, trust: ServerTrust) -> Self {
        Self {
            server: server.into(),
            label: None,
            trust,
            basic: None,
            identity: None,
            channel_binding: false,
            max_pending_wait: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why an EST operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused; `message` is its own text.
    #[error("server answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's plain-text explanation.
        message: String,
    },
    /// Still pending after the bounded wait.
    #[error("enrollment still pending after {0:?}")]
    StillPending(Duration),
    /// The response could not be understood.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// Connecting, TLS, or I/O.
    #[error("{0:#}")]
    Transport(#[from] anyhow::Error),
}

impl ClientError {
    /// True when the server rejected our credentials or identity (401/403).
    pub fn is_auth_rejection(&self) -> bool {
        matches!(
            self,
            ClientError::Server {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// What to enroll with: a ready CSR, or a key and subject to build one per
/// connection (so the CSR can carry that connection's channel binding).
pub enum CsrSource<'a> {
    /// A DER CSR made elsewhere.
    Der(&'a [u8]),
    /// Build (and sign) a CSR with this key after the TLS handshake.
    Build {
        /// Subject, SANs and extensions.
        spec: &'a CsrSpec,
        /// The key to certify.
        key: &'a SigningKey,
    },
}

/// An EST client bound to one server and label.
pub struct EstClient {
    tls: Arc<ClientConfig>,
    host: String,
    port: u16,
    prefix: String,
    basic: Option<String>,
    channel_binding: bool,
    max_pending_wait: Duration,
    timeout: Duration,
}

impl EstClient {
    /// Prepares a client (nothing is sent yet).
    pub fn new(config: EstClientConfig) -> Result<Self, ClientError> {
        let (host, port) = parse_server(&config.server)?;
        let prefix = match &config.label {
            Some(label) => format!("/.well-known/est/{label}"),
            None => "/.well-known/est".into(),
        };
        let basic = config.basic.as_ref().map(|(user, password)| {
            let joined = Zeroizing::new(format!("{user}:{}", password.as_str()));
            format!("Basic {}", STANDARD.encode(joined.as_bytes()))
        });
        Ok(Self {
            tls: client_config(config.trust, config.identity)?,
            host,
            port,
            prefix,
            basic,
            channel_binding: config.channel_binding,
            max_pending_wait: config.max_pending_wait,
            timeout: config.timeout,
        })
    }

    async fn connect(&self) -> Result<Connection, ClientError> {
        Ok(Connection::open(self.tls.clone(), &self.host, self.port, self.timeout).await?)
    }

    /// `GET /cacerts`: the CA certificates the server publishes.
    pub async fn cacerts(&self) -> Result<Vec<Certificate>, ClientError> {
        let exchange = self
            .connect()
            .await?
            .send(
                "GET",
                &format!("{}/cacerts", self.prefix),
                &[],
                Vec::new(),
                self.timeout,
            )
            .await?;
        let exchange = expect_ok(exchange)?;
        decode_certs(&exchange)
    }

    /// `GET /cacerts` plus the server's own certificate chain as presented in
    /// TLS (for first-contact fingerprint display).
    pub async fn cacerts_with_server_chain(
        &self,
    ) -> Result<
        (
            Vec<Certificate>,
            Vec<rustls_pki_types::CertificateDer<'static>>,
        ),
        ClientError,
    > {
        let connection = self.connect().await?;
        let chain = connection.server_chain();
        let exchange = connection
            .send(
                "GET",
                &format!("{}/cacerts", self.prefix),
                &[],
                Vec::new(),
                self.timeout,
            )
            .await?;
        Ok((decode_certs(&expect_ok(exchange)?)?, chain))
    }

    /// `GET /csrattrs`: the OIDs the server wants in a CSR (empty for 204).
    pub async fn csrattrs(&self) -> Result<Vec<const_oid::ObjectIdentifier>, ClientError> {
        let exchange = self
            .connect()
            .await?
            .send(
                "GET",
                &format!("{}/csrattrs", self.prefix),
                &[],
                Vec::new(),
                self.timeout,
            )
            .await?;
        if exchange.status == StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        let exchange = expect_ok(exchange)?;
        let der = est_wire::body::decode(&exchange.body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        est_wire::csrattrs::decode(&der)
            .map_err(|e| ClientError::Protocol(format!("csrattrs: {e}")))
    }

    /// `POST /simpleenroll`.
    pub async fn simpleenroll(&self, csr: CsrSource<'_>) -> Result<Certificate, ClientError> {
        self.enroll("simpleenroll", csr).await
    }

    /// `POST /simplereenroll` (the configured identity must be the current certificate).
    pub async fn simplereenroll(&self, csr: CsrSource<'_>) -> Result<Certificate, ClientError> {
        self.enroll("simplereenroll", csr).await
    }

    /// `POST /serverkeygen`: the server makes the key pair; returns the
    /// certificate and the private key (PKCS#8, or PKCS#1 as libest sends it).
    pub async fn serverkeygen(
        &self,
        csr: CsrSource<'_>,
    ) -> Result<(Certificate, SigningKey), ClientError> {
        let (exchange, _) = self.post_csr("serverkeygen", csr).await?;
        let content_type = exchange.content_type.clone().unwrap_or_default();
        if !media::matches(&content_type, media::MULTIPART_MIXED) {
            return Err(ClientError::Protocol(format!(
                "expected multipart/mixed, got `{content_type}`"
            )));
        }
        let boundary = est_wire::multipart::boundary(&content_type)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let parts = est_wire::multipart::decode(&boundary, &exchange.body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut key = None;
        let mut certs = Vec::new();
        for part in parts {
            let der = Zeroizing::new(
                est_wire::body::decode(&part.body)
                    .map_err(|e| ClientError::Protocol(format!("{}: {e}", part.content_type)))?,
            );
            if media::matches(&part.content_type, media::PKCS8) {
                key = Some(
                    SigningKey::from_der_any(&der)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?,
                );
            } else if media::matches(&part.content_type, media::PKCS7_MIME) {
                certs = est_wire::pkcs7::decode_certs_only(&der)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
            }
        }
        let key =
            key.ok_or_else(|| ClientError::Protocol("no private key part in the response".into()))?;
        let certificate = certs
            .into_iter()
            .find(|c| c.tbs_certificate.subject_public_key_info == key.public_key_info())
            .ok_or_else(|| {
                ClientError::Protocol(
                    "no certificate in the response certifies the returned key".into(),
                )
            })?;
        Ok((certificate, key))
    }

    async fn enroll(
        &self,
        operation: &str,
        csr: CsrSource<'_>,
    ) -> Result<Certificate, ClientError> {
        let (exchange, csr_der) = self.post_csr(operation, csr).await?;
        let certs = decode_certs(&exchange)?;
        let csr_key = est_wire::csr::Csr::from_der(&csr_der)
            .map(|c| c.public_key().clone())
            .map_err(|e| ClientError::Protocol(format!("own CSR: {e}")))?;
        certs
            .into_iter()
            .find(|c| c.tbs_certificate.subject_public_key_info == csr_key)
            .ok_or_else(|| {
                ClientError::Protocol("no certificate in the response certifies our key".into())
            })
    }

    /// Sends a CSR (built per connection when asked), waiting out 202 answers
    /// within the bounded time. Returns the 200 exchange and the CSR sent.
    async fn post_csr(
        &self,
        operation: &str,
        csr: CsrSource<'_>,
    ) -> Result<(Exchange, Vec<u8>), ClientError> {
        let started = Instant::now();
        loop {
            let connection = self.connect().await?;
            let csr_der = match &csr {
                CsrSource::Der(der) => der.to_vec(),
                CsrSource::Build { spec, key } => {
                    let mut spec = (*spec).clone();
                    if self.channel_binding {
                        spec.challenge_password =
                            Some(STANDARD.encode(connection.channel_binding()?));
                    }
                    est_wire::csr::build(&spec, key)
                        .map_err(|e| ClientError::Protocol(format!("building CSR: {e}")))?
                }
            };
            let mut headers = vec![
                ("Content-Type", media::PKCS10.to_owned()),
                ("Content-Transfer-Encoding", "base64".to_owned()),
            ];
            if let Some(basic) = &self.basic {
                headers.push(("Authorization", basic.clone()));
            }
            let exchange = connection
                .send(
                    "POST",
                    &format!("{}/{operation}", self.prefix),
                    &headers,
                    est_wire::body::encode(&csr_der).into_bytes(),
                    self.timeout,
                )
                .await?;
            if exchange.status == StatusCode::ACCEPTED {
                let wait = Duration::from_secs(exchange.retry_after.unwrap_or(60).clamp(1, 3600));
                if started.elapsed() + wait > self.max_pending_wait {
                    return Err(ClientError::StillPending(started.elapsed()));
                }
                tracing::info!(
                    seconds = wait.as_secs(),
                    "enrollment pending; waiting as the server asked"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return Ok((expect_ok(exchange)?, csr_der));
        }
    }
}

fn expect_ok(exchange: Exchange) -> Result<Exchange, ClientError> {
    if exchange.status == StatusCode::OK {
        return Ok(exchange);
    }
    let text = String::from_utf8_lossy(&exchange.body);
    let message: String = text.trim().chars().take(500).collect();
    Err(ClientError::Server {
        status: exchange.status.as_u16(),
        message: if message.is_empty() {
            exchange
                .status
                .canonical_reason()
                .unwrap_or("no reason")
                .to_owned()
        } else {
            message
        },
    })
}

fn decode_certs(exchange: &Exchange) -> Result<Vec<Certificate>, ClientError> {
    let content_type = exchange.content_type.as_deref().unwrap_or("");
    if !media::matches(content_type, media::PKCS7_MIME) {
        return Err(ClientError::Protocol(format!(
            "expected {}, got `{content_type}`",
            media::PKCS7_MIME
        )));
    }
    let der =
        est_wire::body::decode(&exchange.body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let certs = est_wire::pkcs7::decode_certs_only(&der)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    if certs.is_empty() {
        return Err(ClientError::Protocol(
            "the PKCS#7 response holds no certificate".into(),
        ));
    }
    Ok(certs)
}

/// Splits `https://host:port`, `host:port` or `host` (port 443).
pub fn parse_server(server: &str) -> Result<(String, u16), ClientError> {
    let rest = server.strip_prefix("https://").unwrap_or(server);
    if server.starts_with("http://") {
        return Err(ClientError::Protocol("EST needs https".into()));
    }
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let (host, after) = stripped
            .split_once(']')
            .ok_or_else(|| ClientError::Protocol(format!("bad server `{server}`")))?;
        (host.to_owned(), after.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port),
            None => (authority.to_owned(), "443"),
        }
    };
    let port = port
        .parse()
        .map_err(|_| ClientError::Protocol(format!("bad port in `{server}`")))?;
    if host.is_empty() {
        return Err(ClientError::Protocol(format!("no host in `{server}`")));
    }
    Ok((host, port))
}

/// SHA-256 fingerprint of a certificate, as colon-separated upper-case hex.
pub fn fingerprint(cert: &Certificate) -> String {
    let der = cert.to_der().unwrap_or_default();
    est_wire::sha256_hex(&der)
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap_or("").to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_forms() {
        assert_eq!(
            parse_server("https://est.example:8443").unwrap(),
            ("est.example".into(), 8443)
        );
        assert_eq!(
            parse_server("localhost:9").unwrap(),
            ("localhost".into(), 9)
        );
        assert_eq!(
            parse_server("https://est.example/").unwrap(),
            ("est.example".into(), 443)
        );
        assert_eq!(parse_server("[::1]:8443").unwrap(), ("::1".into(), 8443));
        assert!(parse_server("http://x:1").is_err());
        assert!(parse_server("x:notaport").is_err());
    }
}
