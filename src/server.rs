//! The HTTP stage for one client connection: hyper-util's auto builder with the
//! protocol fixed by ALPN, and the connection's own clock for SPEC's
//! header-read and idle timeouts, which hyper does not separate: its
//! header-read timer also runs while a keep-alive connection is idle.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::shutdown::{reached, Phase};
use crate::stack::{self, Shared};
use crate::tls::ConnInfo;

/// A connection's request activity, shared by its I/O, its service and its clock.
#[derive(Debug)]
pub struct ConnActivity {
    state: Mutex<ActivityState>,
    /// Idle with no byte of a next request yet: the I/O records the first byte.
    awaiting_first_byte: AtomicBool,
    /// A response body waited `--body-timeout` for the client to take it.
    client_stalled: AtomicBool,
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: u32,
    idle_since: Instant,
    head_started: Option<Instant>,
    served_any: bool,
}

/// Which timer closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    HeaderRead,
    Idle,
    ClientStalled,
}

impl ConnActivity {
    fn new(track_heads: bool) -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
                served_any: false,
            }),
            awaiting_first_byte: AtomicBool::new(track_heads),
            client_stalled: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // The state is plain data; a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request head has arrived complete.
    pub fn request_started(&self) {
        self.awaiting_first_byte.store(false, Ordering::Relaxed);
        let mut s = self.lock();
        s.in_flight += 1;
        s.served_any = true;
        s.head_started = None;
        drop(s);
        self.changed.notify_one();
    }

    /// A response has been sent (or abandoned).
    pub fn request_finished(&self, track_heads: bool) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
            if track_heads {
                self.awaiting_first_byte.store(true, Ordering::Relaxed);
            }
        }
        drop(s);
        self.changed.notify_one();
    }

    /// A response body has waited `--body-timeout` for the client to take it
    /// (see `RespBody`): the connection is closed.
    pub fn client_stalled(&self) {
        self.client_stalled.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn first_byte(&self) {
        if self.awaiting_first_byte.swap(false, Ordering::Relaxed) {
            let mut s = self.lock();
            if s.in_flight == 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
            }
            drop(s);
            self.changed.notify_one();
        }
    }

    fn deadline(
        &self,
        header: Option<Duration>,
        idle: Option<Duration>,
    ) -> Option<(Instant, Expired)> {
        let s = self.lock();
        if s.in_flight > 0 {
            None
        } else if let Some(t) = s.head_started {
            header.map(|d| (t + d, Expired::HeaderRead))
        } else if !s.served_any {
            header.map(|d| (s.idle_since + d, Expired::HeaderRead))
        } else {
            idle.map(|d| (s.idle_since + d, Expired::Idle))
        }
    }

    /// Resolves when the header-read or idle timeout has passed.
    async fn expired(&self, header: Option<Duration>, idle: Option<Duration>) -> Expired {
        loop {
            let notified = self.changed.notified();
            if self.client_stalled.load(Ordering::Acquire) {
                return Expired::ClientStalled;
            }
            match self.deadline(header, idle) {
                None => notified.await,
                Some((at, kind)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            if self.deadline(header, idle) == Some((at, kind)) {
                                return kind;
                            }
                        }
                        _ = notified => {}
                    }
                }
            }
        }
    }
}

/// The client stream, telling the connection's clock when a request head begins.
struct ActivityIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before && this.activity.awaiting_first_byte.load(Ordering::Relaxed)
        {
            this.activity.first_byte();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn opt(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Serves HTTP on one TLS connection until it closes, times out or drains.
pub async fn serve<T>(io: T, info: Arc<ConnInfo>, shared: Arc<Shared>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = info.h2;
    let activity = Arc::new(ConnActivity::new(!h2));
    let svc =
        TowerToHyperService::new(stack::build(shared.clone(), info.clone(), activity.clone()));
    let io = TokioIo::new(ActivityIo {
        inner: io,
        activity: activity.clone(),
    });

    let cfg = &shared.cfg;
    // Heads past --max-header-bytes are answered 431 by the stack, with
    // Portico-Error; the protocol's own limit is only the backstop above it
    // (h2 would otherwise answer a bare 431 itself).
    let backstop = cfg
        .max_header_bytes
        .saturating_mul(2)
        .saturating_add(16 * 1024)
        .max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if h2 {
        builder = builder.http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(backstop).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256))
            .adaptive_window(true);
    } else {
        builder = builder.http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(backstop)
            .max_headers(512)
            .header_read_timeout(None)
            .keep_alive(true);
    }
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);

    let header_to = opt(cfg.header_read_timeout);
    let idle_to = opt(cfg.idle_timeout);
    let mut phase = shared.drain.subscribe();
    let mut closing = false;
    // When a timeout's GOAWAY began the close: a client that neither reads it
    // nor answers the PING h2 sends after it would otherwise hold the
    // connection, and its --max-connections slot, for ever.
    let mut give_up: Option<Instant> = None;
    let expired = activity.expired(header_to, idle_to);
    tokio::pin!(expired);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = reached(&mut phase, Phase::Closing), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            why = &mut expired, if !closing => {
                tracing::debug!(peer = %info.peer, reason = ?why, "closing client connection");
                let grace = match why {
                    Expired::HeaderRead => header_to,
                    Expired::Idle => idle_to,
                    // The client stopped taking a body: --body-timeout cuts
                    // both connections, whatever else is in flight.
                    Expired::ClientStalled => return,
                };
                if h2 {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    give_up = grace.map(|g| Instant::now() + g);
                } else {
                    // Nothing is in flight: a plain close loses nothing.
                    return;
                }
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(Instant::now)), if give_up.is_some() => {
                tracing::debug!(peer = %info.peer, "client did not finish the close in time");
                return;
            }
        }
    }
}
