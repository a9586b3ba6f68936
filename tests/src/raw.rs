//! A minimal HTTPS/1.1 client on one kept-alive connection from a chosen
//! loopback source address (127.0.x.y), for tests that need many distinct
//! client addresses or request timings without a process start each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::Server;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// One TLS connection to a test server, trusting its CA.
pub struct RawClient {
    reader: BufReader<Tls>,
}

/// A response read by [`RawClient::post`].
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, as received.
    pub headers: String,
    /// Body, as text.
    pub body: String,
    /// From the end of sending the request to the end of the body.
    pub elapsed: Duration,
}

impl RawClient {
    /// Connects from `source` (any 127.0.0.0/8 address works on Linux
    /// loopback) and completes the TLS handshake.
    pub fn connect(server: &Server, source: IpAddr) -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        let target: SocketAddr = server.addr.parse().unwrap();
        socket.connect(&target.into()).expect("connect");
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let connection =
            rustls::ClientConnection::new(client_config(server), "localhost".try_into().unwrap())
                .unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        Self {
            reader: BufReader::new(tls),
        }
    }

    /// POSTs `body` as `application/pkcs10` to `path` with Basic `user:password`.
    pub fn post(&mut self, path: &str, user: &str, password: &str, body: &[u8]) -> RawResponse {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {credentials}\r\nContent-Type: application/pkcs10\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let stream = self.reader.get_mut();
        stream.write_all(&request).expect("send request");
        stream.flush().unwrap();
        let sent = Instant::now();
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {status_line:?}"));
        let mut headers = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
            headers.push_str(&line);
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: sent.elapsed(),
        }
    }
}

fn client_config(server: &Server) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(server.ca_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
