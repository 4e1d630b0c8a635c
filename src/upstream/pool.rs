//! Keep-alive HTTP/1.1 connections to one primary.
//!
//! A connection is taken for one exchange and comes back when the response
//! body has ended, from the body itself ([`Reuse`]); nothing is spawned or
//! hashed per request. The most recently used connection is taken first, so
//! under light load the rest age out, and one that was idle longer than the
//! idle timeout is never used: portico drops it before the primary's own
//! keep-alive timeout can close it under a request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;

use super::{Connector, SendError};
use crate::stack::body::ReqBody;

/// How far hyper grows a connection's read buffer; it also limits the
/// response head (one read may fill up to twice this; Envoy's default head
/// limit is 60 KiB). hyper keeps that buffer while the connection waits in
/// the pool, so this bounds what an idle connection holds: at 1 MiB,
/// connections that had carried large bodies kept about that much each.
const READ_BUF_MAX: usize = 64 * 1024;

/// An idle connection and when it went idle.
struct Idle {
    tx: SendRequest<ReqBody>,
    since: Instant,
}

impl Idle {
    /// Idle too long to be used, or closed by the primary.
    fn stale(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) > timeout || self.tx.is_closed()
    }
}

/// Idle HTTP/1.1 connections to one primary, the most recently used last.
pub struct H1Pool {
    idle: Mutex<VecDeque<Idle>>,
    connector: Connector,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

/// A connection whose response is still being read; it goes back to its pool
/// once the response body has ended.
pub struct Reuse {
    tx: SendRequest<ReqBody>,
    pool: Arc<H1Pool>,
}

impl Reuse {
    /// Returns the connection to its pool. hyper has usually finished with
    /// the exchange by then; a checkout takes only a connection that is ready.
    pub fn put(self) {
        self.pool.put(self.tx);
    }
}

impl H1Pool {
    /// An empty pool whose connections close after `idle_timeout` unused.
    pub fn new(connector: Connector, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            connector,
            idle_timeout,
            reaper: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // Nothing panics while holding it; a poisoned queue is still sound.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are idle (closed ones not yet dropped included).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn put(&self, tx: SendRequest<ReqBody>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        Self::expire(&mut idle, now, self.idle_timeout);
        idle.push_back(Idle { tx, since: now });
    }

    /// Drops connections idle for longer than `timeout`: they are the oldest,
    /// at the front.
    fn expire(idle: &mut VecDeque<Idle>, now: Instant, timeout: Duration) {
        while idle.front().is_some_and(|i| i.stale(now, timeout)) {
            idle.pop_front();
        }
    }

    /// The newest idle connection that is ready for a request. One whose
    /// response ended while hyper still sends its request body (a primary
    /// that answered early) stays in the pool: taking it would hold this
    /// request behind that upload.
    fn pop(&self) -> Option<SendRequest<ReqBody>> {
        let now = Instant::now();
        let mut idle = self.lock();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(i) = idle.pop_back() {
            if i.stale(now, self.idle_timeout) {
                continue;
            }
            if i.tx.is_ready() {
                found = Some(i.tx);
                break;
            }
            busy.push(i);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    /// A ready connection: an idle one, else a new one; `true` if reused.
    async fn checkout(self: &Arc<Self>) -> Result<(SendRequest<ReqBody>, bool), SendError> {
        if let Some(tx) = self.pop() {
            return Ok((tx, true));
        }
        let io = self.connector.connect().await.map_err(SendError::Connect)?;
        let (tx, conn) = Builder::new()
            .max_buf_size(READ_BUF_MAX)
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        self.start_reaper();
        Ok((tx, false))
    }

    /// Closes connections left idle when no request comes to take or return
    /// one (within one and a half idle timeouts); started with the first
    /// connection, ends with the pool.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                Self::expire(&mut pool.lock(), Instant::now(), pool.idle_timeout);
            }
        });
    }

    /// Sends `req` on an idle connection or a new one. A request that found
    /// its pooled connection closed before any of it was written goes again
    /// on another, as the primary never saw it.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Reuse), SendError> {
        loop {
            let (mut tx, reused) = self.checkout().await?;
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok((resp, Reuse { tx, pool }));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::UpstreamAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn get(path: &str) -> Request<ReqBody> {
        let mut r = Request::new(ReqBody::empty());
        *r.uri_mut() = http::Uri::try_from(path).expect("path");
        r.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("app"));
        r
    }

    /// A primary that answers every request `ok` with keep-alive, and reports
    /// each connection it accepts and when each one reaches EOF.
    async fn primary() -> (String, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = tx.send("accepted");
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = tx.send("eof");
                                return;
                            }
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// A pool with `idle_timeout` in front of a fresh [`primary`].
    async fn pool_to_primary(
        idle_timeout: Duration,
    ) -> (
        Arc<H1Pool>,
        tokio::sync::mpsc::UnboundedReceiver<&'static str>,
    ) {
        let (addr, events) = primary().await;
        let c = Connector::new(&UpstreamAddr::Http(addr), Duration::from_secs(1));
        (Arc::new(H1Pool::new(c, idle_timeout)), events)
    }

    async fn body(resp: Response<Incoming>, reuse: Reuse) -> String {
        use http_body_util::BodyExt;
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        reuse.put();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn a_connection_comes_back_when_its_body_ends_and_is_taken_again() {
        let (pool, mut events) = pool_to_primary(Duration::from_secs(30)).await;
        for _ in 0..5 {
            let (resp, reuse) = pool.send(get("/")).await.expect("answer");
            assert_eq!(resp.status(), 200);
            assert_eq!(body(resp, reuse).await, "ok");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(events.recv().await, Some("accepted"));
        assert!(events.try_recv().is_err(), "one connection for 5 requests");
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_idle_timeout_is_closed_without_a_request() {
        let (pool, mut events) = pool_to_primary(Duration::from_millis(100)).await;
        let (resp, reuse) = pool.send(get("/")).await.expect("answer");
        assert_eq!(body(resp, reuse).await, "ok");
        assert_eq!(events.recv().await, Some("accepted"));
        let eof = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
        assert_eq!(eof.expect("closed within 2 s"), Some("eof"));
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_not_read_to_its_end_is_not_reused() {
        let (pool, mut events) = pool_to_primary(Duration::from_secs(30)).await;
        let (resp, reuse) = pool.send(get("/")).await.expect("answer");
        drop((resp, reuse));
        assert_eq!(pool.idle_count(), 0);
        let (resp, reuse) = pool.send(get("/")).await.expect("answer");
        assert_eq!(body(resp, reuse).await, "ok");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(events.recv().await.expect("event"));
        }
        seen.sort_unstable();
        assert_eq!(seen, ["accepted", "accepted", "eof"]);
    }
}
