//! Pieces both listeners (EST and admin) share to hold up under hostile
//! clients: an accept loop that backs off on errors, a per-address
//! connection cap, and a write timeout for connections whose peer stops
//! reading.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// First wait after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between accept attempts while they keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A TCP listener whose [`BackoffListener::accept`] never spins: after an accept
/// error (typically EMFILE, out of file descriptors) it waits 100 ms,
/// doubling up to 1 s while the errors go on, and logs once per burst.
pub struct BackoffListener {
    listener: TcpListener,
    /// Names the listener in logs.
    name: &'static str,
    /// Accept errors since the last success.
    failures: u32,
}

impl BackoffListener {
    /// Wraps `listener`; `name` names it in logs.
    pub fn new(listener: TcpListener, name: &'static str) -> Self {
        Self {
            listener,
            name,
            failures: 0,
        }
    }

    /// The next connection. Cancel-safe: dropping the future loses nothing.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(pair) => {
                    if self.failures > 0 {
                        tracing::info!(
                            listener = self.name,
                            failures = self.failures,
                            "accepting connections again"
                        );
                        self.failures = 0;
                    }
                    return pair;
                }
                Err(e) => {
                    if self.failures == 0 {
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            "accept failed; retrying with back-off"
                        );
                    }
                    self.failures = self.failures.saturating_add(1);
                    tokio::time::sleep(backoff(self.failures)).await;
                }
            }
        }
    }
}

/// Wait after the `failures`-th consecutive accept error.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(4);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Counts open connections per client address and refuses those over a cap.
///
/// An IPv6 client counts by its /64 (one host usually has the whole prefix
/// to pick addresses from); an IPv4-mapped IPv6 address as its IPv4 address.
pub struct PerAddress {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// At most `limit` connections per address.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A guard counting one connection from `address`, or `None` when the
    /// address already holds `limit` connections.
    pub fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Option<AddressGuard> {
        let address = client_key(address);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressGuard {
            owner: self.clone(),
            address,
        })
    }

    /// Connections `address` holds now.
    pub fn count(&self, address: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&client_key(address)).copied().unwrap_or(0)
    }
}

/// What one client is counted as: its IPv4 address, or its IPv6 /64.
fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// One connection counted against its address; released on drop.
pub struct AddressGuard {
    owner: Arc<PerAddress>,
    address: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// An IO stream whose writes fail with [`io::ErrorKind::TimedOut`] once the
/// stream has refused to take any bytes for `timeout`.
///
/// The timer is armed when `poll_write`, `poll_flush` or `poll_shutdown`
/// returns `Pending` and disarmed by any write that completes, so a slow
/// reader that keeps taking bytes is not cut off; only a stalled one is.
/// Wrap the TCP stream (beneath TLS) so that every partial write counts as
/// progress.
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Passes a finished write through (disarming the timer); on `Pending`
    /// arms the timer and fails once it has run out.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.deadline = None;
            return polled;
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took no data for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn backoff_grows_to_one_second() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(5), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn per_address_cap_counts_and_releases() {
        let caps = PerAddress::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = caps.try_acquire(a).unwrap();
        let _second = caps.try_acquire(a).unwrap();
        assert!(caps.try_acquire(a).is_none());
        let _other = caps
            .try_acquire(b)
            .expect("other addresses are not affected");
        drop(first);
        assert_eq!(caps.count(a), 1);
        assert!(caps.try_acquire(a).is_some());
        drop(_other);
        assert_eq!(caps.count(b), 0);
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        let caps = PerAddress::new(1);
        let _held = caps
            .try_acquire("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(caps
            .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_none());
        assert!(caps
            .try_acquire("2001:db8:1:3::1".parse().unwrap())
            .is_some());
        let _v4 = caps.try_acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert!(caps
            .try_acquire("::ffff:192.0.2.7".parse().unwrap())
            .is_none());
    }

    #[tokio::test]
    async fn a_stalled_write_times_out_and_progress_resets_the_timer() {
        let timeout = Duration::from_millis(400);
        // A 64-byte pipe: writes stall once it is full and nobody reads.
        let (client, mut server) = tokio::io::duplex(64);
        let mut stream = WriteTimeout::new(client, timeout);
        stream.write_all(&[0; 64]).await.unwrap();
        // Drain slowly (every 250 ms, under the timeout): writes keep going.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                    .await
                    .unwrap();
            }
            server
        });
        for _ in 0..4 {
            stream.write_all(&[0; 64]).await.unwrap();
        }
        let _server = reader.await.unwrap();
        // Nobody reads any more: the next write fails once the timeout has passed.
        let started = tokio::time::Instant::now();
        let error = stream.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < timeout * 3, "{waited:?}");
    }
}
