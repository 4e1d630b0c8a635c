//! The HTTP stage for one client connection: hyper's HTTP/1.1 or HTTP/2 server,
//! as ALPN chose, and the connection's own clock for SPEC's
//! header-read and idle timeouts, which hyper does not separate: its
//! header-read timer also runs while a keep-alive connection is idle.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::shutdown::{reached, Phase};
use crate::stack::{self, Shared};
use crate::tls::stream::{Linger, TlsStream};
use crate::tls::ConnInfo;

/// A connection's request activity, shared by its I/O, its service and its
/// clock. Plain atomics, and no wake-up per request: the clock looks at them
/// when its timer fires and re-arms itself, so a busy connection costs a timer
/// per timeout period, not a notification per request.
#[derive(Debug)]
pub struct ConnActivity {
    origin: Instant,
    in_flight: AtomicU32,
    served_any: AtomicBool,
    /// When the connection last became idle, in nanoseconds since `origin`.
    idle_since: AtomicU64,
    /// When the first byte of a next head arrived (nanoseconds since `origin`,
    /// plus one; zero: none yet).
    head_started: AtomicU64,
    /// Idle with no byte of a next request yet: the I/O records the first byte.
    awaiting_first_byte: AtomicBool,
    /// A response body waited `--body-timeout` for the client to take it.
    client_stalled: AtomicBool,
    /// portico began the close itself (a drain, a timeout's GOAWAY), with no
    /// request cut short: the close lingers only over bytes already sent.
    closed_by_us: AtomicBool,
    /// The connection became a tunnel (101): its close must not linger, as
    /// the tunnel's other direction still reads the client's bytes.
    upgraded: AtomicBool,
    /// Woken only for `client_stalled`, which must act at once.
    changed: Notify,
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
            origin: Instant::now(),
            in_flight: AtomicU32::new(0),
            served_any: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            awaiting_first_byte: AtomicBool::new(track_heads),
            client_stalled: AtomicBool::new(false),
            closed_by_us: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn since_origin(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    /// A request head has arrived complete.
    pub fn request_started(&self) {
        self.awaiting_first_byte.store(false, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served_any.store(true, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    /// A response has been sent (or abandoned).
    pub fn request_finished(&self, track_heads: bool) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since
                .store(self.since_origin(), Ordering::Relaxed);
            self.head_started.store(0, Ordering::Relaxed);
            if track_heads {
                self.awaiting_first_byte.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A 101 is being answered: the connection becomes a tunnel.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// A response body has waited `--body-timeout` for the client to take it
    /// (see `RespBody`): the connection is closed.
    pub fn client_stalled(&self) {
        self.client_stalled.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn first_byte(&self) {
        if self.awaiting_first_byte.swap(false, Ordering::Relaxed)
            && self.in_flight.load(Ordering::Acquire) == 0
        {
            let _ = self.head_started.compare_exchange(
                0,
                self.since_origin() + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// The timeout that applies now, and when to look again in case the state
    /// changed without telling (a request began or ended, a head started).
    fn next(
        &self,
        header: Option<Duration>,
        idle: Option<Duration>,
    ) -> (Option<(Instant, Expired)>, Option<Instant>) {
        let now = Instant::now();
        let period = match (header, idle) {
            (Some(h), Some(i)) => Some(h.min(i)),
            (h, i) => h.or(i),
        };
        let recheck = period.map(|d| now + d);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (None, recheck);
        }
        let head = self.head_started.load(Ordering::Acquire);
        let idle_since = self.at(self.idle_since.load(Ordering::Acquire));
        if head != 0 {
            (
                header.map(|d| (self.at(head - 1) + d, Expired::HeaderRead)),
                recheck,
            )
        } else if !self.served_any.load(Ordering::Acquire) {
            (
                header.map(|d| (idle_since + d, Expired::HeaderRead)),
                recheck,
            )
        } else {
            // While idle, look every header-read period for a head that began.
            let look = if self.awaiting_first_byte.load(Ordering::Relaxed) {
                header.map(|d| now + d)
            } else {
                recheck
            };
            (idle.map(|d| (idle_since + d, Expired::Idle)), look)
        }
    }

    /// Resolves when the header-read or idle timeout has passed.
    async fn expired(&self, header: Option<Duration>, idle: Option<Duration>) -> Expired {
        loop {
            let notified = self.changed.notified();
            if self.client_stalled.load(Ordering::Acquire) {
                return Expired::ClientStalled;
            }
            let (due, look) = self.next(header, idle);
            if let Some((at, kind)) = due {
                if Instant::now() >= at {
                    return kind;
                }
            }
            let wake = match (due.map(|d| d.0), look) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// The client stream, telling the connection's clock when a request head begins.
struct ActivityIo {
    inner: Box<TlsStream>,
    activity: Arc<ConnActivity>,
}

impl AsyncRead for ActivityIo {
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

impl AsyncWrite for ActivityIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    /// hyper queues a response's head and body chunks as separate slices (no
    /// copy of a large body). Small writes are joined here into one slice
    /// first: one plain write is cheaper through rustls than a vectored one.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut self.get_mut().inner;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() > 1 && total <= COALESCE_MAX {
            return SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                for b in bufs {
                    scratch.extend_from_slice(b);
                }
                Pin::new(inner).poll_write(cx, scratch)
            });
        }
        Pin::new(inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let a = &this.activity;
        let linger = if a.upgraded.load(Ordering::Relaxed) {
            Linger::Never
        } else if a.closed_by_us.load(Ordering::Relaxed) {
            Linger::IfUnread
        } else {
            Linger::Always
        };
        this.inner.poll_close(cx, linger)
    }
}

/// Writes up to one TLS record's worth are joined before rustls sees them.
const COALESCE_MAX: usize = 16 * 1024;

thread_local! {
    /// One buffer per thread for joining small writes, not one per connection.
    static SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(COALESCE_MAX));
}

fn opt(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// The client stream as hyper sees it. Boxed: the TLS state is the largest
/// part of a connection and is then allocated once, at its exact size, rather
/// than inside every future that passes it on.
type ClientIo = TokioIo<ActivityIo>;

/// Serves HTTP on one TLS connection until it closes, times out or drains.
///
/// ALPN has already fixed the protocol, so the connection is hyper's HTTP/1.1
/// or HTTP/2 server directly, not hyper-util's auto connection, which sizes
/// every connection for both. hyper's connection (and its 8 KiB read buffer)
/// is created when the client's first bytes arrive, so a connection that only
/// completed its handshake costs its TLS state and little else (S5 in
/// benches/). The returned future is boxed at its own size for the same reason.
pub fn serve(
    stream: TlsStream,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let activity = Arc::new(ConnActivity::new(!info.h2));
    let io = TokioIo::new(ActivityIo {
        inner: Box::new(stream),
        activity: activity.clone(),
    });
    if info.h2 {
        Box::pin(drive(io, http2_conn, info, shared, activity))
    } else {
        Box::pin(drive(io, http1_conn, info, shared, activity))
    }
}

/// Heads past --max-header-bytes are answered 431 by the stack, with
/// Portico-Error; the protocol's own limit is only the backstop above it
/// (h2 would otherwise answer a bare 431 itself).
fn head_backstop(cfg: &crate::config::Config) -> usize {
    cfg.max_header_bytes
        .saturating_mul(2)
        .saturating_add(16 * 1024)
        .max(8192)
}

type Svc = TowerToHyperService<stack::Stack>;
type H1Conn = http1::UpgradeableConnection<ClientIo, Svc>;
type H2Conn = http2::Connection<ClientIo, Svc, TokioExecutor>;

fn http1_conn(io: ClientIo, svc: Svc, shared: &Shared) -> Pin<Box<H1Conn>> {
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(head_backstop(&shared.cfg))
        // Queued writes: a large body goes to rustls without hyper copying
        // it into its own buffer first (ActivityIo joins the small ones).
        .writev(true)
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, svc)
        .with_upgrades();
    Box::pin(conn)
}

fn http2_conn(io: ClientIo, svc: Svc, shared: &Shared) -> Pin<Box<H2Conn>> {
    let backstop = head_backstop(&shared.cfg);
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(backstop).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        // Fixed windows, not hyper's adaptive one: its BDP estimate reads the
        // clock and takes a lock on every request accepted and every poll of
        // the connection, and it starts from 64 KiB. 1 MiB per stream and per connection lets an upload through
        // at 1 MiB per round trip while bounding what one client can have
        // portico buffer.
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .serve_connection(io, svc);
    Box::pin(conn)
}

/// hyper's graceful close, for either protocol.
trait GracefulShutdown: Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: Pin<&mut Self>);
}

impl GracefulShutdown for H1Conn {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl GracefulShutdown for H2Conn {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Whether the client has sent anything since the handshake: the TLS stream
/// may already hold the first request (sent in the flight with the client's
/// Finished), or the socket has bytes (or an end) to read.
async fn first_bytes(io: &mut ClientIo) {
    let _ = io.inner_mut().inner.input().await;
}

/// Runs a connection against the connection's clock and the drain: first
/// waiting for the client's first bytes, then in hyper.
async fn drive<C>(
    mut io: ClientIo,
    make: fn(ClientIo, Svc, &Shared) -> Pin<Box<C>>,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    activity: Arc<ConnActivity>,
) where
    C: GracefulShutdown + ?Sized,
{
    let h2 = info.h2;
    let cfg = &shared.cfg;
    let header_to = opt(cfg.header_read_timeout);
    let idle_to = opt(cfg.idle_timeout);
    let mut phase = shared.drain.subscribe();
    let expired = activity.expired(header_to, idle_to);
    tokio::pin!(expired);
    // Nothing is in flight before the first bytes: a drain or a timeout
    // closes the connection without a word (--header-read-timeout applies).
    tokio::select! {
        _ = first_bytes(&mut io) => {}
        _ = reached(&mut phase, Phase::Closing) => return,
        why = &mut expired => {
            tracing::debug!(peer = %info.peer, reason = ?why, "closing client connection");
            return;
        }
    }
    let svc =
        TowerToHyperService::new(stack::build(shared.clone(), info.clone(), activity.clone()));
    let mut conn = make(io, svc, &shared);
    let mut closing = false;
    // When a timeout's GOAWAY began the close: a client that neither reads it
    // nor answers the PING h2 sends after it would otherwise hold the
    // connection, and its --max-connections slot, for ever.
    let mut give_up: Option<Instant> = None;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = reached(&mut phase, Phase::Closing), if !closing => {
                activity.closed_by_us.store(true, Ordering::Relaxed);
                conn.as_mut().graceful();
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
                    activity.closed_by_us.store(true, Ordering::Relaxed);
                    conn.as_mut().graceful();
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
