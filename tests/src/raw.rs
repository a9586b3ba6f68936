//! A blocking HTTPS/1.1 client on one kept-alive connection from a chosen
//! loopback source address (127.0.x.y), over the async helpers of
//! [`crate::net`], for tests that run many clients on plain threads or time
//! single requests.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::net;
use crate::Server;

/// One TLS connection to a test server, trusting its CA.
pub struct RawClient {
    runtime: tokio::runtime::Runtime,
    stream: TlsStream<TcpStream>,
}

/// A response read by [`RawClient::post`].
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// The response head, as received.
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = runtime
            .block_on(net::tls_from(
                &net::connector(server),
                &source.to_string(),
                &server.addr,
                false,
            ))
            .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
        Self { runtime, stream }
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
        let stream = &mut self.stream;
        self.runtime.block_on(async {
            stream.write_all(&request).await.expect("send request");
            stream.flush().await.unwrap();
            let sent = Instant::now();
            let (head, body) = net::read_response_with_body(stream)
                .await
                .expect("a whole response");
            RawResponse {
                status: net::status_of(&head),
                headers: head,
                body: String::from_utf8_lossy(&body).into_owned(),
                elapsed: sent.elapsed(),
            }
        })
    }
}
