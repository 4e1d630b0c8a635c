//! The HTTP stage for one client connection: hyper's HTTP/1.1 or HTTP/2 server,
//! as ALPN chose, run against the connection's own clock
//! ([`ConnActivity`]) for the reference's header-read and idle timeouts,
//! which hyper does not separate: its header-read timer also runs while a
//! keep-alive connection is idle.
//!
//! It serves any [`ClientStream`] (the listener hands it the TLS stage's
//! stream), so it imports nothing of the TLS stage; there is one such stream
//! in the binary, and so one instance of this code.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::conn::{ClientStream, ConnActivity, ConnInfo, Expired};
use crate::shutdown::{reached, Phase};
use crate::stack::{self, Shared};

/// The client stream, telling the connection's clock when a request head begins.
struct ActivityIo<S> {
    inner: Box<S>,
    activity: Arc<ConnActivity>,
}

impl<S: ClientStream> AsyncRead for ActivityIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        r
    }
}

impl<S: ClientStream> AsyncWrite for ActivityIo<S> {
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
        this.inner.poll_close(cx, this.activity.linger())
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
type ClientIo<S> = TokioIo<ActivityIo<S>>;

/// Serves HTTP on one client connection until it closes, times out or drains.
///
/// ALPN has already fixed the protocol, so the connection is hyper's HTTP/1.1
/// or HTTP/2 server directly, not hyper-util's auto connection, which sizes
/// every connection for both. hyper's connection (and its 8 KiB read buffer)
/// is created when the client's first bytes arrive, so a connection that only
/// completed its handshake costs its TLS state and little else (S5 in
/// benches/). The returned future is boxed at its own size for the same reason.
pub fn serve<S: ClientStream>(
    stream: S,
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
type H1Conn<S> = http1::UpgradeableConnection<ClientIo<S>, Svc>;
type H2Conn<S> = http2::Connection<ClientIo<S>, Svc, TokioExecutor>;

fn http1_conn<S: ClientStream>(io: ClientIo<S>, svc: Svc, shared: &Shared) -> Pin<Box<H1Conn<S>>> {
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

fn http2_conn<S: ClientStream>(io: ClientIo<S>, svc: Svc, shared: &Shared) -> Pin<Box<H2Conn<S>>> {
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

impl<S: ClientStream> GracefulShutdown for H1Conn<S> {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<S: ClientStream> GracefulShutdown for H2Conn<S> {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Whether the client has sent anything since the handshake: the TLS stream
/// may already hold the first request (sent in the flight with the client's
/// Finished), or the socket has bytes (or an end) to read.
async fn first_bytes<S: ClientStream>(io: &mut ClientIo<S>) {
    let _ = io.inner_mut().inner.input().await;
}

/// Runs a connection against the connection's clock and the drain: first
/// waiting for the client's first bytes, then in hyper.
async fn drive<S, C>(
    mut io: ClientIo<S>,
    make: fn(ClientIo<S>, Svc, &Shared) -> Pin<Box<C>>,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    activity: Arc<ConnActivity>,
) where
    S: ClientStream,
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
                activity.close_begun();
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
                    activity.close_begun();
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
