//! The two bodies portico streams: the client's request body on its way up, and
//! the response body on its way back. Each enforces `--body-timeout` with one
//! timer that is re-armed only when it fires (a byte moved since? sleep on),
//! so a busy stream costs a clock read per frame, not a timer update. The
//! response body keeps a second such timer for the client's side of it
//! (`ClientWatch`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::conn::ConnActivity;
pub use crate::error::BodyError;
use crate::upstream::{CheckIn, UpstreamBody};

/// An idle timer for a body: armed on the first `Pending`, re-armed lazily.
/// The wait is timed from the first `Pending` after the last progress, so a
/// body that never waits (most small ones) never reads the clock (two reads
/// per request; `upstream/pool.rs`'s `coarse_now` says why they count). A
/// body that hyper did not poll for a while (the peer was not taking what it
/// had) is not counted as idle for that while.
struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    since: Option<Instant>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
            since: None,
        }
    }

    fn progressed(&mut self) {
        self.since = None;
    }

    /// `true` once no progress was made for the whole timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        let deadline = *self.since.get_or_insert_with(Instant::now) + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return false,
                Poll::Ready(()) if Instant::now() >= deadline => return true,
                Poll::Ready(()) => continue,
            }
        }
    }
}

use std::future::Future;

/// Notices a client that stops taking a response body. hyper polls a body only
/// when it can send what it got, so a client that never reads (HTTP/1) or
/// never opens its flow-control window (HTTP/2) leaves the body unpolled, its
/// idle timer unchecked, and the upstream connection and the in-flight permit
/// held for ever. The watch's timer wakes a waker of its own rather than the
/// connection's task, so it fires while nobody polls the body; it re-arms
/// itself, once per timeout, for as long as the body lives.
struct ClientWatch {
    timeout: Duration,
    origin: Instant,
    /// When the body handed hyper a frame that hyper has not come back for
    /// (nanoseconds since `origin`), or `TAKEN` when it has.
    waiting_since: AtomicU64,
    timer: std::sync::Mutex<Option<Pin<Box<Sleep>>>>,
    conn: Arc<ConnActivity>,
}

const TAKEN: u64 = u64::MAX;

impl ClientWatch {
    fn start(timeout: Duration, conn: Arc<ConnActivity>, waiting_since: Instant) -> Arc<Self> {
        let w = Arc::new(Self {
            timeout,
            origin: waiting_since,
            waiting_since: AtomicU64::new(0),
            timer: std::sync::Mutex::new(Some(Box::pin(tokio::time::sleep_until(
                waiting_since + timeout,
            )))),
            conn,
        });
        w.arm(waiting_since + timeout);
        w
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<Sleep>>>> {
        self.timer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-arms the timer, unless `stop` has taken it.
    fn arm(self: &Arc<Self>, at: Instant) {
        if let Some(sleep) = self.lock().as_mut() {
            sleep.as_mut().reset(at);
            let waker = std::task::Waker::from(self.clone());
            // Unconstrained: out of coop budget, the poll would wake this
            // waker at once, which would re-enter `arm` under the lock.
            let mut poll =
                tokio::task::unconstrained(std::future::poll_fn(|cx| sleep.as_mut().poll(cx)));
            let _ = Pin::new(&mut poll).poll(&mut Context::from_waker(&waker));
        }
    }

    fn waiting(&self, since: Option<Instant>) {
        let v = since.map_or(TAKEN, |t| (t - self.origin).as_nanos() as u64);
        self.waiting_since.store(v, Ordering::Release);
    }

    /// The body is gone: drop the timer, and with it the waker's reference.
    fn stop(&self) {
        self.lock().take();
    }
}

impl std::task::Wake for ClientWatch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let now = Instant::now();
        let since = self.waiting_since.load(Ordering::Acquire);
        let next = if since == TAKEN {
            now + self.timeout
        } else {
            let waited = now.saturating_duration_since(self.origin + Duration::from_nanos(since));
            // Within a millisecond of the timeout counts as past it: the timer
            // cannot be armed any finer.
            if waited + Duration::from_millis(1) >= self.timeout {
                tracing::debug!(timeout = ?self.timeout, "client took no response byte for --body-timeout");
                self.conn.client_stalled();
                return;
            }
            now + (self.timeout - waited)
        };
        self.arm(next);
    }
}

/// What the request body tells the rest of the request: bytes seen, whether it
/// ended (the request timeout starts then), and whether it broke the limit.
#[derive(Debug, Default)]
pub struct ReqProgress {
    /// Body bytes read from the client.
    pub bytes: AtomicU64,
    /// Set when the body has been read to its end.
    pub done: AtomicBool,
    /// Woken when `done` is set.
    pub done_notify: Notify,
    /// Set when the body passed `--max-request-body`.
    pub too_large: AtomicBool,
    /// Set when the body stalled for `--body-timeout`.
    pub timed_out: AtomicBool,
}

impl ReqProgress {
    /// Resolves once the request body has been read to its end.
    pub async fn wait_done(&self) {
        loop {
            let notified = self.done_notify.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.done_notify.notify_one();
    }
}

/// The client's request body on its way to the upstream.
pub struct ReqBody {
    inner: Option<Incoming>,
    timer: IdleTimer,
    limit: u64,
    seen: u64,
    progress: Option<Arc<ReqProgress>>,
}

impl ReqBody {
    /// An empty body (upgrades, and requests that have none).
    pub fn empty() -> Self {
        Self {
            inner: None,
            timer: IdleTimer::new(Duration::ZERO),
            limit: 0,
            seen: 0,
            progress: None,
        }
    }

    /// Wraps a client body; `limit` zero is no limit.
    pub fn new(inner: Incoming, timeout: Duration, limit: u64, progress: Arc<ReqProgress>) -> Self {
        Self {
            inner: Some(inner),
            timer: IdleTimer::new(timeout),
            limit,
            seen: 0,
            progress: Some(progress),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progressed();
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(p) = &this.progress {
                        p.bytes.store(this.seen, Ordering::Relaxed);
                    }
                    if this.limit != 0 && this.seen > this.limit {
                        if let Some(p) = &this.progress {
                            p.too_large.store(true, Ordering::Release);
                        }
                        this.inner = None;
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Peer(e)))),
            Poll::Ready(None) => {
                if let Some(p) = &this.progress {
                    p.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.timer.poll_expired(cx) {
                    if let Some(p) = &this.progress {
                        p.timed_out.store(true, Ordering::Release);
                    }
                    this.inner = None;
                    return Poll::Ready(Some(Err(BodyError::Timeout(this.timer.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Called once when a response body is finished or dropped, with the bytes sent.
pub trait OnDone: Send + 'static {
    /// The response is over: `complete` when its body reached its end.
    fn done(self: Box<Self>, bytes_out: u64, complete: bool);
}

/// The response body on its way to the client.
pub struct RespBody {
    inner: RespInner,
    timer: IdleTimer,
    sent: u64,
    complete: bool,
    on_done: Option<Box<dyn OnDone>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The client connection, told when the client stops taking this body.
    conn: Option<Arc<ConnActivity>>,
    watch: Option<Arc<ClientWatch>>,
    /// The upstream connection, checked back into its pool when the body is
    /// dropped after its end.
    check_in: Option<CheckIn<ReqBody>>,
}

enum RespInner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl RespBody {
    /// A body portico made itself.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            inner: RespInner::Full(if bytes.is_empty() { None } else { Some(bytes) }),
            timer: IdleTimer::new(Duration::ZERO),
            sent: 0,
            complete: false,
            on_done: None,
            permit: None,
            conn: None,
            watch: None,
            check_in: None,
        }
    }

    /// The upstream's body, cut after `timeout` without a byte.
    pub fn upstream(
        inner: UpstreamBody,
        timeout: Duration,
        check_in: Option<CheckIn<ReqBody>>,
    ) -> Self {
        Self {
            inner: RespInner::Upstream(inner),
            timer: IdleTimer::new(timeout),
            sent: 0,
            complete: false,
            on_done: None,
            permit: None,
            conn: None,
            watch: None,
            check_in,
        }
    }

    /// Closes `conn` when its client takes no byte of this upstream body for
    /// `--body-timeout`.
    pub fn watch_client(&mut self, conn: Arc<ConnActivity>) {
        if matches!(self.inner, RespInner::Upstream(_)) && !self.timer.timeout.is_zero() {
            self.conn = Some(conn);
        }
    }

    /// Holds an in-flight permit until this body ends or is dropped.
    pub fn hold(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    /// Runs `f` when this body ends or is dropped.
    pub fn set_on_done(&mut self, f: Box<dyn OnDone>) {
        self.on_done = Some(f);
    }
}

impl From<Bytes> for RespBody {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // hyper drops a body as soon as it has ended; one dropped before its
        // end leaves unread bytes on the connection, which is not reused.
        if let Some(c) = self.check_in.take() {
            if self.complete || self.is_end_stream() {
                c.check_in();
            }
        }
        if let Some(w) = self.watch.take() {
            w.stop();
        }
        if let Some(f) = self.on_done.take() {
            // hyper never polls a body that is empty from the start.
            let complete = self.complete || self.is_end_stream();
            f.done(self.sent, complete);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(w) = &this.watch {
            w.waiting(None);
        }
        let polled = match &mut this.inner {
            RespInner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespInner::Upstream(inner) => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(r) => Poll::Ready(r.map(|r| r.map_err(BodyError::Upstream))),
                Poll::Pending => {
                    if this.timer.poll_expired(cx) {
                        return Poll::Ready(Some(Err(BodyError::Timeout(this.timer.timeout))));
                    }
                    Poll::Pending
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progressed();
                if let Some(d) = frame.data_ref() {
                    let first = this.sent == 0;
                    this.sent += d.len() as u64;
                    // Until hyper polls again, the client has this frame to take.
                    match (&this.watch, &this.conn) {
                        (Some(w), _) => w.waiting(Some(Instant::now())),
                        // The watch costs a timer; a body's first frame fits in
                        // the socket buffer or the initial h2 window, so only a
                        // body that goes on can stall on a client not reading.
                        (None, Some(_)) if first => {}
                        (None, Some(c)) => {
                            this.watch = Some(ClientWatch::start(
                                this.timer.timeout,
                                c.clone(),
                                Instant::now(),
                            ));
                        }
                        (None, None) => {}
                    }
                }
            }
            Poll::Ready(None) => this.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RespInner::Full(b) => b.is_none(),
            RespInner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RespInner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespInner::Upstream(b) => b.size_hint(),
        }
    }
}
