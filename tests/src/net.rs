//! Raw TLS and TCP clients for the hostile-client tests: connections from a
//! chosen loopback source address, pipelining writers, HTTP/1.1 readers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::Server;

/// `GET /cacerts`, as raw request bytes.
pub const CACERTS: &[u8] = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// A two-thread runtime for a test's clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// TLS client config trusting the server's CA.
pub fn connector(server: &Server) -> TlsConnector {
    let pem = std::fs::read(server.ca_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A TCP connection from the loopback address `from` to `to`, with a small
/// receive buffer when asked (so that a client that never reads stalls the
/// server's writes after a few kilobytes instead of megabytes).
pub async fn tcp_from(
    from: &str,
    to: &str,
    small_receive_buffer: bool,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if small_receive_buffer {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    socket.connect(to.parse().unwrap()).await
}

/// A TLS connection from `from` to the server's EST port.
pub async fn tls_from(
    connector: &TlsConnector,
    from: &str,
    to: &str,
    small_receive_buffer: bool,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, to, small_receive_buffer).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// When the server's side of a connection closed, for a client that only writes.
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    /// Since the first write.
    pub after: Duration,
    /// Since the client's last write that went through (the stall).
    pub stalled: Duration,
}

/// Writes `request` over and over without ever reading until a write fails
/// (the server closed its side); `None` when it was still open after `limit`.
pub async fn pipeline_until_closed<S: AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    limit: Duration,
) -> Option<Closed> {
    let batch = request.repeat(50);
    let started = Instant::now();
    let writing = async {
        let mut progress = started;
        loop {
            if stream.write_all(&batch).await.is_err() || stream.flush().await.is_err() {
                return Closed {
                    after: started.elapsed(),
                    stalled: progress.elapsed(),
                };
            }
            progress = Instant::now();
        }
    };
    tokio::time::timeout(limit, writing).await.ok()
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body); `None`
/// when the connection ends (EOF or reset) before a whole response.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    read_response_with_body(stream).await.map(|(head, _)| head)
}

/// Like [`read_response`], with the body.
pub async fn read_response_with_body<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

/// The status code of a response head (0 when unreadable).
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// TLS client config trusting the CA in `ca_pem` and presenting a client
/// certificate (DER chain, PKCS#8 key).
pub fn connector_with_identity(
    ca_pem: &std::path::Path,
    chain: Vec<Vec<u8>>,
    pkcs8: Vec<u8>,
) -> TlsConnector {
    let pem = std::fs::read(ca_pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = chain
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8.into());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    TlsConnector::from(Arc::new(config))
}
