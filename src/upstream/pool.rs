//! Keep-alive HTTP/1.1 connections to one primary.
//!
//! A connection is taken for one exchange and comes back when the response
//! body has ended, from the body itself: portico's own
//! [`RawBody`](super::RawBody) checks its connection in (this pool is its
//! [`h1::Pool`]), and a body hyper reads comes with a [`CheckIn`] that its
//! holder uses at the body's end. Nothing is spawned or hashed per request.
//! The most recently used connection is taken first, so under light load the
//! rest age out, and one that was idle longer than the idle timeout is never
//! used: portico drops it before the primary's own keep-alive timeout can
//! close it under a request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use http::{Method, Request};
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;

use super::h1::{self, Again, RawConn};
use super::{Connector, RequestBody, Stream, UpstreamBody, UpstreamResponse};
use crate::error::ExchangeError;

/// How far hyper grows a connection's read buffer; it also limits the
/// response head (one read may fill up to twice this; Envoy's default head
/// limit is 60 KiB). hyper keeps that buffer while the connection waits in
/// the pool, so this bounds what an idle connection holds: at 1 MiB,
/// connections that had carried large bodies kept about that much each.
const READ_BUF_MAX: usize = 64 * 1024;

/// An idle connection: one portico drives itself, or one with hyper's
/// client task (it carried an upload).
enum Conn<B> {
    Raw(RawConn),
    Hyper(SendRequest<B>),
}

impl<B> Conn<B> {
    fn closed(&self) -> bool {
        match self {
            Self::Raw(c) => c.closed(),
            Self::Hyper(tx) => tx.is_closed(),
        }
    }
}

/// An idle connection and when it went idle (on [`coarse_now`]'s clock).
struct Idle<B> {
    conn: Conn<B>,
    since: Duration,
}

impl<B> Idle<B> {
    /// Idle too long to be used.
    fn expired(&self, now: Duration, timeout: Duration) -> bool {
        now.saturating_sub(self.since) > timeout
    }
}

/// The time on a clock for idle ages. On Linux the kernel's coarse monotonic
/// clock (its tick, a few milliseconds, read from the vDSO without a TSC
/// read): a put and a take per request read it, and `Instant::now` costs
/// enough to show in a small request's profile (`benches/callgrind.sh S1`;
/// docs/perf-log.md has the figure), for ages compared with timeouts of
/// seconds.
#[cfg(target_os = "linux")]
fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(not(target_os = "linux"))]
fn coarse_now() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// Idle HTTP/1.1 connections to one primary, the most recently used last,
/// for requests with bodies of type `B`.
pub struct H1Pool<B> {
    idle: Mutex<VecDeque<Idle<B>>>,
    connector: Connector,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

/// The check-in handle of a connection whose response hyper is still
/// reading: its holder checks it back into its pool once the response body
/// has ended (dropped unused, the connection closes).
pub struct CheckIn<B> {
    tx: SendRequest<B>,
    pool: Arc<H1Pool<B>>,
}

impl<B: RequestBody> CheckIn<B> {
    /// Returns the connection to its pool. hyper has usually finished with
    /// the exchange by then; a checkout takes only a connection that is ready.
    pub fn check_in(self) {
        self.pool.put(Conn::Hyper(self.tx));
    }
}

/// Methods a request of which may go again when its connection failed before
/// any byte of an answer (RFC 9110 section 9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<B: RequestBody> h1::Pool for H1Pool<B> {
    fn check_in(&self, conn: RawConn) {
        self.put(Conn::Raw(conn));
    }
}

impl<B: RequestBody> H1Pool<B> {
    /// An empty pool whose connections close after `idle_timeout` unused.
    pub fn new(connector: Connector, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            connector,
            idle_timeout,
            reaper: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle<B>>> {
        // Nothing panics while holding it; a poisoned queue is still sound.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are idle (closed ones not yet dropped included).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn put(&self, conn: Conn<B>) {
        if let Conn::Hyper(tx) = &conn {
            if tx.is_closed() {
                return;
            }
        }
        let now = coarse_now();
        let mut idle = self.lock();
        Self::expire(&mut idle, now, self.idle_timeout);
        idle.push_back(Idle { conn, since: now });
    }

    /// Drops connections idle for longer than `timeout`: they are the oldest,
    /// at the front.
    fn expire(idle: &mut VecDeque<Idle<B>>, now: Duration, timeout: Duration) {
        while idle.front().is_some_and(|i| i.expired(now, timeout)) {
            idle.pop_front();
        }
    }

    /// The newest idle connection that `fits`, skipping (and dropping) those
    /// that expired or were closed. A hyper connection whose response ended
    /// while it still sends its request body (a primary that answered early)
    /// is not ready, and stays: taking it would hold this request behind that
    /// upload.
    fn pop(&self, fits: impl Fn(&Conn<B>) -> bool) -> Option<Conn<B>> {
        let now = coarse_now();
        let mut idle = self.lock();
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(i) = idle.pop_back() {
            if i.expired(now, self.idle_timeout) {
                // Everything before it is older still.
                idle.clear();
                break;
            }
            if i.conn.closed() {
                continue;
            }
            let ready = match &i.conn {
                Conn::Hyper(tx) => tx.is_ready(),
                Conn::Raw(_) => true,
            };
            if ready && fits(&i.conn) {
                found = Some(i.conn);
                break;
            }
            skipped.push(i);
        }
        idle.extend(skipped.into_iter().rev());
        found
    }

    /// A new connection.
    async fn connect(&self) -> Result<RawConn, ExchangeError> {
        let io = self.connector.connect().await?;
        Ok(RawConn::new(io))
    }

    /// Puts hyper's client on a connection.
    async fn hyper(self: &Arc<Self>, io: Stream) -> Result<SendRequest<B>, ExchangeError> {
        let (tx, conn) = Builder::new()
            .max_buf_size(READ_BUF_MAX)
            .handshake(TokioIo::new(io))
            .await
            .map_err(ExchangeError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
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
                let mut idle = pool.lock();
                Self::expire(&mut idle, coarse_now(), pool.idle_timeout);
                // Connections the primary closed hold a socket until taken.
                idle.retain(|i| !i.conn.closed());
            }
        });
    }

    /// Either path, as the stack chooses it (for tests).
    #[cfg(test)]
    async fn send(
        self: &Arc<Self>,
        req: Request<B>,
        raw: bool,
    ) -> Result<UpstreamResponse<B>, ExchangeError> {
        if raw {
            self.send_raw(&req).await
        } else {
            self.send_hyper(req).await
        }
    }

    /// Sends a request without a body (not an upgrade) on an idle connection
    /// or a new one, which portico drives itself. A request that found its
    /// pooled connection closed goes again on another when the primary
    /// cannot have seen it, or, if it is idempotent, when the connection
    /// ended without a byte of answer: the race with a primary closing an
    /// idle connection that nginx and browsers also retry. It borrows the
    /// request: the caller's future holds it already, and a copy held here
    /// was more room in the box each request's exchange is.
    pub async fn send_raw(
        self: &Arc<Self>,
        req: &Request<B>,
    ) -> Result<UpstreamResponse<B>, ExchangeError> {
        let idempotent = idempotent(req.method());
        loop {
            let (conn, reused) = match self.pop(|c| matches!(c, Conn::Raw(_))) {
                Some(Conn::Raw(c)) => (c, true),
                _ => {
                    // Boxed: a connect's future is large, and rarely needed.
                    let c = Box::pin(self.connect()).await?;
                    self.start_reaper();
                    (c, false)
                }
            };
            match h1::exchange(conn, req, self).await {
                Ok(resp) => {
                    return Ok(UpstreamResponse {
                        response: resp.map(UpstreamBody::Raw),
                        check_in: None,
                    })
                }
                Err((_, Again::Always)) if reused => continue,
                Err((_, Again::IfIdempotent)) if reused && idempotent => continue,
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Sends a request through hyper's client (uploads, upgrades, CONNECT),
    /// going again as [`H1Pool::send_raw`] does when the connection was found
    /// closed before the request left.
    pub async fn send_hyper(
        self: &Arc<Self>,
        mut req: Request<B>,
    ) -> Result<UpstreamResponse<B>, ExchangeError> {
        loop {
            let (mut tx, reused) = match self.pop(|_| true) {
                Some(Conn::Hyper(tx)) => (tx, true),
                Some(Conn::Raw(c)) => (self.hyper(c.into_stream()).await?, true),
                None => {
                    let c = self.connect().await?;
                    self.start_reaper();
                    (self.hyper(c.into_stream()).await?, false)
                }
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(UpstreamResponse {
                        response: resp.map(UpstreamBody::Hyper),
                        check_in: Some(CheckIn { tx, pool }),
                    });
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(ExchangeError::Http(e.into_error())),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RawError;
    use crate::routing::UpstreamAddr;
    use bytes::Bytes;
    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Requests in these tests carry no body: any body type will do.
    type Body = Empty<Bytes>;

    fn get(path: &str) -> Request<Body> {
        let mut r = Request::new(Body::new());
        *r.uri_mut() = http::Uri::try_from(path).expect("path");
        r.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("app"));
        r
    }

    /// A primary that answers every request `ok` with keep-alive, and reports
    /// each connection it accepts and when each one reaches EOF.
    async fn primary() -> (String, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
        primary_answering(usize::MAX).await
    }

    /// A [`primary`] that answers `answers` requests on each connection and
    /// closes it when it has read the next one.
    async fn primary_answering(
        answers: usize,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
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
                    let mut answered = 0;
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
                            if answered == answers {
                                let _ = tx.send("eof");
                                return;
                            }
                            answered += 1;
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
        Arc<H1Pool<Body>>,
        tokio::sync::mpsc::UnboundedReceiver<&'static str>,
    ) {
        let (addr, events) = primary().await;
        let c = Connector::new(&UpstreamAddr::Http(addr), Duration::from_secs(1));
        (Arc::new(H1Pool::new(c, idle_timeout)), events)
    }

    async fn body(r: UpstreamResponse<Body>) -> String {
        use http_body_util::BodyExt;
        let b = r.response.into_body().collect().await.expect("body");
        if let Some(c) = r.check_in {
            c.check_in();
        }
        String::from_utf8_lossy(&b.to_bytes()).into_owned()
    }

    fn status(r: &UpstreamResponse<Body>) -> u16 {
        r.response.status().as_u16()
    }

    #[tokio::test]
    async fn a_connection_comes_back_when_its_body_ends_and_is_taken_again() {
        let (pool, mut events) = pool_to_primary(Duration::from_secs(30)).await;
        for _ in 0..5 {
            let r = pool.send(get("/"), true).await.expect("answer");
            assert_eq!(status(&r), 200);
            assert_eq!(body(r).await, "ok");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(events.recv().await, Some("accepted"));
        assert!(events.try_recv().is_err(), "one connection for 5 requests");
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_idle_timeout_is_closed_without_a_request() {
        let (pool, mut events) = pool_to_primary(Duration::from_millis(100)).await;
        let r = pool.send(get("/"), true).await.expect("answer");
        assert_eq!(body(r).await, "ok");
        assert_eq!(events.recv().await, Some("accepted"));
        let eof = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
        assert_eq!(eof.expect("closed within 2 s"), Some("eof"));
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_not_read_to_its_end_is_not_reused() {
        let (pool, mut events) = pool_to_primary(Duration::from_secs(30)).await;
        let r = pool.send(get("/"), true).await.expect("answer");
        drop(r);
        assert_eq!(pool.idle_count(), 0);
        let r = pool.send(get("/"), true).await.expect("answer");
        assert_eq!(body(r).await, "ok");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(events.recv().await.expect("event"));
        }
        seen.sort_unstable();
        assert_eq!(seen, ["accepted", "accepted", "eof"]);
    }

    #[tokio::test]
    async fn a_connection_the_primary_closed_while_idle_is_not_used() {
        let (addr, mut events) = primary_answering(1).await;
        let c = Connector::new(&UpstreamAddr::Http(addr), Duration::from_secs(1));
        let pool = Arc::new(H1Pool::new(c, Duration::from_secs(30)));
        for _ in 0..3 {
            let r = pool.send(get("/"), true).await.expect("answer");
            assert_eq!(body(r).await, "ok");
        }
        let mut seen = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            seen.push(e);
        }
        assert_eq!(seen.iter().filter(|e| **e == "accepted").count(), 3);
    }

    #[tokio::test]
    async fn an_idempotent_request_goes_again_when_its_reused_connection_closes_unanswered() {
        let (addr, _events) = primary_answering(1).await;
        let c = Connector::new(&UpstreamAddr::Http(addr), Duration::from_secs(1));
        let pool = Arc::new(H1Pool::new(c, Duration::from_secs(30)));
        let r = pool.send(get("/"), true).await.expect("answer");
        assert_eq!(body(r).await, "ok");
        // The pooled connection looks alive, so the next request is written
        // to it; the primary reads it and closes without a byte of answer.
        let r = pool.send(get("/again"), true).await.expect("sent again");
        assert_eq!(body(r).await, "ok");

        let r = pool.send(get("/"), true).await.expect("answer");
        assert_eq!(body(r).await, "ok");
        let mut post = get("/");
        *post.method_mut() = Method::POST;
        match pool.send(post, true).await {
            Err(ExchangeError::Raw(RawError::Io(_))) => {}
            Err(e) => panic!("expected a connection error, got {e}"),
            Ok(_) => panic!("a POST the primary may have seen must not go again"),
        }
    }

    #[tokio::test]
    async fn an_idle_raw_connection_carries_a_request_through_hyper_and_stays_with_it() {
        let (pool, mut events) = pool_to_primary(Duration::from_secs(30)).await;
        let r = pool.send(get("/"), true).await.expect("answer");
        assert!(r.check_in.is_none(), "read by portico itself");
        assert_eq!(body(r).await, "ok");
        let r = pool.send(get("/"), false).await.expect("answer");
        assert!(r.check_in.is_some(), "read by hyper");
        assert_eq!(body(r).await, "ok");
        assert_eq!(pool.idle_count(), 1);
        // A bodiless request opens its own rather than queue on hyper's.
        let r = pool.send(get("/"), true).await.expect("answer");
        assert_eq!(body(r).await, "ok");
        assert_eq!(pool.idle_count(), 2);
        assert_eq!(events.recv().await, Some("accepted"));
        assert_eq!(events.recv().await, Some("accepted"));
        assert!(
            events.try_recv().is_err(),
            "two connections for three requests"
        );
    }
}
