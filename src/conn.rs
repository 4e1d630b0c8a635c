//! The connection's facts and clock, shared by the stages a connection
//! passes through: [`ConnInfo`] (what the handshake learnt: addresses, SNI,
//! TLS version, protocol, client certificate), [`ConnActivity`] (the request
//! activity that the header-read, idle and body timeouts read), and
//! [`ClientStream`], what the HTTP server needs of the stream it serves.
//!
//! A leaf: the TLS stage fills `ConnInfo` and implements `ClientStream`, the
//! HTTP server and the stack read and record activity, and none of them
//! imports another for it. Every write to `ConnActivity`'s state is a method
//! here.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What the HTTP stage knows about a client connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's address as the forwarding headers carry it.
    pub client_for: ClientFor,
    /// The TLS listener's port, as `X-Forwarded-Port` gives it (built once
    /// per listener: cloning it allocates nothing).
    pub port: HeaderValue,
    /// The SNI the client sent.
    pub sni: Option<Box<str>>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub tls_version: &'static str,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// The `X-Forwarded-Client-Cert` value for a verified client certificate.
    pub xfcc: Option<HeaderValue>,
}

/// The client's address as the forwarding headers carry it, formatted once per
/// connection instead of on every request (the stack's
/// `headers::add_forwarded` writes them).
#[derive(Clone, Debug)]
pub struct ClientFor {
    /// `X-Forwarded-For`'s element: the address.
    xff: HeaderValue,
    /// `Forwarded`'s element without a host: `for=192.0.2.7;proto=https`, or
    /// `for="[2001:db8::1]";proto=https`.
    forwarded: HeaderValue,
    /// The first host this connection's requests named, and the `Forwarded`
    /// value made for it: a connection's requests (an HTTP/2 connection's
    /// streams above all) nearly always name one host, so both are built once.
    first_host: OnceLock<(HeaderValue, HeaderValue)>,
}

impl ClientFor {
    /// The elements for a client at `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let mut buf = [0u8; 48];
        let text = ip_text(ip, &mut buf);
        let forwarded = match ip {
            IpAddr::V4(_) => format!("for={text};proto=https"),
            IpAddr::V6(_) => format!("for=\"[{text}]\";proto=https"),
        };
        // The value takes the string's buffer instead of copying it.
        let shared = |s: String| {
            HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        };
        Self {
            xff: shared(text.to_owned()),
            forwarded: shared(forwarded),
            first_host: OnceLock::new(),
        }
    }

    /// `X-Forwarded-For`'s element: the address.
    pub fn xff(&self) -> &HeaderValue {
        &self.xff
    }

    /// `Forwarded`'s element without a host.
    pub fn forwarded(&self) -> &HeaderValue {
        &self.forwarded
    }

    /// The connection's first host and the `Forwarded` value made for it,
    /// once one is kept.
    pub fn first_host(&self) -> Option<&(HeaderValue, HeaderValue)> {
        self.first_host.get()
    }

    /// Keeps `host` and its `Forwarded` value as the connection's first (only
    /// the first call keeps anything).
    pub fn keep_first_host(&self, host: HeaderValue, forwarded: HeaderValue) {
        let _ = self.first_host.set((host, forwarded));
    }

    /// The `Host` value for a request's authority: the connection's first
    /// host again when it is the same (no validation, no copy).
    pub fn host(&self, authority: &str) -> Option<HeaderValue> {
        match self.first_host.get() {
            Some((host, _)) if host.as_bytes() == authority.as_bytes() => Some(host.clone()),
            _ => HeaderValue::from_str(authority).ok(),
        }
    }
}

/// An address as text in `buf` (the longest IPv6 text is 45 bytes).
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &str {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
    let n = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// Whether a close lingers (the TLS stream's lingering close, as nginx's
/// `lingering_close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Until the client ends its side or falls quiet: it may be sending a
    /// request the answer cut short (a refused body, a pipelined request).
    Always,
    /// Only if the client's bytes are already waiting (nginx's heuristic):
    /// portico chose to close a connection with no request on it (a drain,
    /// a timeout), and a client that sends nothing must not hold it open.
    IfUnread,
    /// Not at all: another reader still takes the client's bytes (a tunnel
    /// whose other direction goes on after this one ended).
    Never,
}

/// What the HTTP server needs of the stream it serves beyond reading and
/// writing. The TLS stage's stream implements it; the server is generic over
/// it, so it is called directly, with no dynamic dispatch.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves when the client has sent something (or closed) since the
    /// handshake.
    fn input(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the stream (what is owed first), then lingers as `linger` says.
    fn poll_close(&mut self, cx: &mut Context<'_>, linger: Linger) -> Poll<io::Result<()>>;
}

/// A connection's request activity, shared by its I/O, its service and its
/// clock. Plain atomics, and no wake-up per request: the clock looks at them
/// when its timer fires and re-arms itself, so a busy connection costs a timer
/// per timeout period, not a notification per request.
#[derive(Debug)]
pub struct ConnActivity {
    origin: Instant,
    /// HTTP/1.1: the I/O notes when a request head begins (an HTTP/2
    /// connection's heads are its streams').
    track_heads: bool,
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
pub enum Expired {
    /// `--header-read-timeout`: a request head did not arrive whole in time.
    HeaderRead,
    /// `--idle-timeout`: no request for that long.
    Idle,
    /// `--body-timeout`: the client took no byte of a response body.
    ClientStalled,
}

impl ConnActivity {
    /// A new connection's; `track_heads` (HTTP/1.1) has its I/O note when a
    /// request head begins (an HTTP/2 connection's heads are its streams').
    pub fn new(track_heads: bool) -> Self {
        Self {
            origin: Instant::now(),
            track_heads,
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
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since
                .store(self.since_origin(), Ordering::Relaxed);
            self.head_started.store(0, Ordering::Relaxed);
            if self.track_heads {
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

    /// Bytes have arrived from the client: the first after an idle spell
    /// starts the header-read clock. One relaxed load per read otherwise.
    #[inline]
    pub fn bytes_read(&self) {
        if self.awaiting_first_byte.load(Ordering::Relaxed) {
            self.first_byte();
        }
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

    /// portico begins the close itself (a drain, a timeout's GOAWAY), with no
    /// request cut short.
    pub fn close_begun(&self) {
        self.closed_by_us.store(true, Ordering::Relaxed);
    }

    /// How the client stream's close lingers, by how the connection ends.
    pub fn linger(&self) -> Linger {
        if self.upgraded.load(Ordering::Relaxed) {
            Linger::Never
        } else if self.closed_by_us.load(Ordering::Relaxed) {
            Linger::IfUnread
        } else {
            Linger::Always
        }
    }

    /// Resolves when the header-read or idle timeout has passed, or the
    /// client stalled a response body.
    pub async fn expired(&self, header: Option<Duration>, idle: Option<Duration>) -> Expired {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_close_lingers_by_how_the_connection_ends() {
        let a = ConnActivity::new(true);
        assert_eq!(a.linger(), Linger::Always);
        a.close_begun();
        assert_eq!(a.linger(), Linger::IfUnread);
        // A tunnel's close never lingers, whoever began it.
        a.upgraded();
        assert_eq!(a.linger(), Linger::Never);
    }

    /// The header-read clock runs from the connection's start, then from the
    /// first byte of each next head; the idle clock from the last response;
    /// neither while a request is in flight; a stalled client ends it at once.
    #[tokio::test(start_paused = true)]
    async fn the_clock_times_heads_from_their_first_byte_and_idleness_from_the_last_response() {
        let header = Some(Duration::from_secs(1));
        let idle = Some(Duration::from_secs(10));
        let a = ConnActivity::new(true);
        let t0 = Instant::now();
        assert_eq!(a.expired(header, idle).await, Expired::HeaderRead);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));

        a.request_started();
        let busy = tokio::time::timeout(Duration::from_secs(60), a.expired(header, idle)).await;
        assert!(busy.is_err(), "a timeout fired with a request in flight");
        a.request_finished();

        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        a.bytes_read();
        assert_eq!(a.expired(header, idle).await, Expired::HeaderRead);
        assert_eq!(t1.elapsed(), Duration::from_secs(4));

        a.request_started();
        a.request_finished();
        let t2 = Instant::now();
        assert_eq!(a.expired(header, idle).await, Expired::Idle);
        assert_eq!(t2.elapsed(), Duration::from_secs(10));

        a.request_started();
        let t3 = Instant::now();
        a.client_stalled();
        assert_eq!(a.expired(header, idle).await, Expired::ClientStalled);
        assert_eq!(t3.elapsed(), Duration::ZERO);
    }
}
