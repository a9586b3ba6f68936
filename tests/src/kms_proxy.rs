//! A small HTTP proxy between the server and moto's KMS, for faults a real
//! KMS shows: it answers the next N `TrentService.Sign` requests (the
//! `X-Amz-Target` header of the KMS JSON protocol) with
//! `400 ThrottlingException` as KMS does when a request quota is exceeded,
//! records when each Sign request arrived, can hold each Sign for a while
//! (a distant region) and count how many were in flight at once, and can stop listening (KMS
//! unreachable: connections are refused) and listen again on the same port.
//! Everything else is forwarded to moto unchanged, one request per
//! connection (`Connection: close` both ways).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct State {
    upstream: SocketAddr,
    throttle: AtomicUsize,
    signs: Mutex<Vec<Instant>>,
    delay_ms: AtomicU64,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// The proxy; stopped on drop.
pub struct KmsProxy {
    /// `http://127.0.0.1:<port>`: the `endpoint_url` to give the server.
    pub endpoint: String,
    addr: SocketAddr,
    state: Arc<State>,
    runtime: tokio::runtime::Runtime,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl KmsProxy {
    /// Listens on a free 127.0.0.1 port in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream host:port");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            throttle: AtomicUsize::new(0),
            signs: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let accept = runtime.spawn(accept_loop(listener, state.clone()));
        Self {
            endpoint: format!("http://{addr}"),
            addr,
            state,
            runtime,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// Answers the next `n` Sign requests with ThrottlingException.
    pub fn throttle_next_signs(&self, n: usize) {
        self.state.throttle.store(n, Ordering::SeqCst);
    }

    /// Holds every forwarded Sign request for `delay` before passing it on.
    pub fn delay_signs(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The most Sign requests in flight at once since the last call (and resets it).
    pub fn take_most_signs_in_flight(&self) -> usize {
        self.state.most_in_flight.swap(0, Ordering::SeqCst)
    }

    /// When each Sign request seen since the last call arrived (and forgets them).
    pub fn take_signs(&self) -> Vec<Instant> {
        std::mem::take(&mut *self.state.signs.lock().unwrap())
    }

    /// Stops listening: new connections are refused, as by a KMS out of reach.
    pub fn refuse(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
            let _ = self.runtime.block_on(task);
        }
    }

    /// Listens again on the same port.
    pub fn restore(&self) {
        let mut accept = self.accept.lock().unwrap();
        if accept.is_none() {
            let listener = self
                .runtime
                .block_on(TcpListener::bind(self.addr))
                .expect("rebind the proxy port");
            *accept = Some(
                self.runtime
                    .spawn(accept_loop(listener, self.state.clone())),
            );
        }
    }
}

impl Drop for KmsProxy {
    fn drop(&mut self) {
        self.refuse();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve(stream, state.clone()));
    }
}

/// The request head (up to the blank line) and the body, or `None` on EOF/garbage.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buffer.len() > 1 << 20 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            !line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("connection")
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

async fn serve(mut client: TcpStream, state: Arc<State>) {
    let Some((head, body)) = read_request(&mut client).await else {
        return;
    };
    if header(&head, "x-amz-target") == Some("TrentService.Sign") {
        state.signs.lock().unwrap().push(Instant::now());
        let throttled = state
            .throttle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if throttled {
            let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(response.as_bytes()).await;
            let _ = client.shutdown().await;
            return;
        }
    }
    let sign = header(&head, "x-amz-target") == Some("TrentService.Sign");
    if sign {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    forward(&mut client, &state, &head, &body).await;
    if sign {
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn forward(client: &mut TcpStream, state: &State, head: &str, body: &[u8]) {
    let Ok(mut upstream) = TcpStream::connect(state.upstream).await else {
        return;
    };
    if upstream.write_all(closing(head).as_bytes()).await.is_err()
        || upstream.write_all(body).await.is_err()
    {
        return;
    }
    let mut response = Vec::new();
    if upstream.read_to_end(&mut response).await.is_err() {
        return;
    }
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..at]).into_owned();
    let _ = client.write_all(closing(&head).as_bytes()).await;
    let _ = client.write_all(&response[at..]).await;
    let _ = client.shutdown().await;
}
