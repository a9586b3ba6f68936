//! The optional webhook told about failed rotations: one JSON POST per event.

use std::sync::Arc;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Posts JSON events to one URL (http, or https with the system's roots).
#[derive(Clone)]
pub struct Webhook {
    url: hyper::Uri,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Webhook {
    /// Checks the URL and prepares TLS for `https://`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let url: hyper::Uri = url.parse().context("rotation.webhook")?;
        let tls = match url.scheme_str() {
            Some("https") => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            }
            Some("http") => None,
            _ => anyhow::bail!("rotation.webhook: expected an http:// or https:// URL"),
        };
        Ok(Self { url, tls })
    }

    /// Sends `event` in the background; failures are logged, never retried.
    pub fn notify(&self, event: serde_json::Value) {
        let hook = self.clone();
        tokio::spawn(async move {
            let sent = tokio::time::timeout(std::time::Duration::from_secs(10), hook.post(event));
            match sent.await {
                Ok(Ok(status)) if status.is_success() => {}
                Ok(Ok(status)) => tracing::warn!(%status, "rotation webhook refused the event"),
                Ok(Err(e)) => tracing::warn!(error = %e, "rotation webhook failed"),
                Err(_) => tracing::warn!("rotation webhook timed out"),
            }
        });
    }

    async fn post(&self, event: serde_json::Value) -> anyhow::Result<hyper::StatusCode> {
        let host = self.url.host().context("webhook host")?.to_owned();
        let port = self
            .url
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(event.to_string())))?;
        let response = match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(host.clone())?;
                let stream = tls.connect(name, tcp).await?;
                send(TokioIo::new(stream), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        Ok(response)
    }
}

async fn send<S>(io: S, request: hyper::Request<Full<Bytes>>) -> anyhow::Result<hyper::StatusCode>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}
