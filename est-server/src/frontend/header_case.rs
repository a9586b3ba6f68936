//! Response header names spelled exactly as real EST clients expect.
//!
//! libest's `estclient` compares header names byte for byte: it needs
//! `Content-Type`, `Content-Length` and — to send Basic credentials at all —
//! `WWW-Authenticate`. hyper writes lower-case names, or with title casing
//! `Www-Authenticate`. hyper does write a response's header names in the
//! spelling recorded in its header-case map extension, but only hyper itself
//! can create that map: it does so when it parses a request with
//! `preserve_header_case`. So at start-up we let hyper parse one request that
//! spells every header we send, keep the resulting extensions, and attach a
//! clone to every response. Only public hyper APIs are involved.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::Extensions;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header names in the spelling we send.
const SPELLINGS: &[&str] = &[
    "Content-Type",
    "Content-Length",
    "Content-Transfer-Encoding",
    "WWW-Authenticate",
    "Retry-After",
    "Allow",
    "Connection",
    "Date",
];

/// Returns extensions that make hyper spell response headers as in [`SPELLINGS`].
pub async fn template() -> anyhow::Result<Extensions> {
    let (client, server) = tokio::io::duplex(4096);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let sender = std::sync::Mutex::new(Some(sender));
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        if let Some(sender) = sender.lock().expect("not poisoned").take() {
            let _ = sender.send(request.extensions().clone());
        }
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let connection = tokio::spawn(async move {
        hyper::server::conn::http1::Builder::new()
            .preserve_header_case(true)
            .serve_connection(TokioIo::new(server), service)
            .await
    });
    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for name in SPELLINGS.iter().filter(|n| **n != "Content-Length") {
        request.push_str(&format!("{name}: x\r\n"));
    }
    request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut client = client;
    client.write_all(request.as_bytes()).await?;
    let extensions = receiver.await?;
    let mut sink = Vec::new();
    let _ = client.read_to_end(&mut sink).await;
    let _ = connection.await;
    Ok(extensions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hyper_writes_the_exact_spelling() {
        let template = template().await.unwrap();
        let (client, server) = tokio::io::duplex(4096);
        let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
            let template = template.clone();
            async move {
                let mut response = Response::builder()
                    .header("www-authenticate", "Basic realm=\"r\"")
                    .header("content-type", "text/plain")
                    .header("x-other", "1")
                    .body(Full::new(Bytes::from_static(b"hi")))
                    .unwrap();
                *response.extensions_mut() = template;
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .serve_connection(TokioIo::new(server), service)
                .await
        });
        let mut client = client;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        client.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(text.contains("\r\nWWW-Authenticate: Basic"), "{text}");
        assert!(text.contains("\r\nContent-Type: text/plain"), "{text}");
        assert!(text.contains("\r\nContent-Length: 2"), "{text}");
        assert!(text.contains("\r\nX-Other: 1"), "{text}");
    }
}
