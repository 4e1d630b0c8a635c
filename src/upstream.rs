//! The upstream stage: one pooled keep-alive client per distinct primary
//! (`http://`, `h2c://`, `unix:`), with a connector that times out and says
//! *why* a connect failed, so each failure maps to its kind
//! ([`crate::error::classify`]).
//!
//! It is generic over the request body it is handed (`B`, any
//! [`RequestBody`]): the stack hands it its own body type, tests any other.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::error::ExchangeError;
pub use crate::error::{ConnectError, RawError};
use crate::routing::UpstreamAddr;

pub mod h1;
mod pool;
pub use h1::RawBody;
pub use pool::{CheckIn, H1Pool};

/// A request body upstream can send: what hyper's HTTP/1.1 and h2c clients
/// take. Implemented for every type that qualifies.
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<T> RequestBody for T where
    T: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

#[derive(Clone, Debug)]
enum Target {
    Tcp(Arc<str>),
    Unix(Arc<PathBuf>),
}

/// Connects to one fixed upstream whatever the request URI says.
#[derive(Clone, Debug)]
pub struct Connector {
    target: Target,
    timeout: Duration,
}

/// A TCP or Unix stream to a primary.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Connector {
    /// A connector for `addr` with `--connect-timeout` (zero: none).
    pub fn new(addr: &UpstreamAddr, timeout: Duration) -> Self {
        let target = match addr {
            UpstreamAddr::Http(a) | UpstreamAddr::H2c(a) => Target::Tcp(Arc::from(a.as_str())),
            UpstreamAddr::Unix(p) => Target::Unix(Arc::new(p.clone())),
        };
        Self { target, timeout }
    }

    /// Opens one connection (also used by the readiness check).
    pub async fn connect(&self) -> Result<Stream, ConnectError> {
        let fut = async {
            match &self.target {
                Target::Tcp(a) => {
                    let s = match a.parse::<SocketAddr>() {
                        Ok(sa) => TcpStream::connect(sa).await,
                        Err(_) => TcpStream::connect(&**a).await,
                    }
                    .map_err(connect_error)?;
                    // Requests are small writes; never wait for Nagle.
                    let _ = s.set_nodelay(true);
                    Ok(Stream::Tcp(s))
                }
                Target::Unix(p) => UnixStream::connect(&**p)
                    .await
                    .map(Stream::Unix)
                    .map_err(connect_error),
            }
        };
        if self.timeout.is_zero() {
            fut.await
        } else {
            match tokio::time::timeout(self.timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout(self.timeout)),
            }
        }
    }
}

/// Says why a connect failed: refused, or otherwise.
fn connect_error(e: io::Error) -> ConnectError {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        ConnectError::Refused(e)
    } else {
        ConnectError::Failed(e)
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// A response body from a primary: read by portico itself, or by hyper.
pub enum UpstreamBody {
    /// Read on a [`h1::RawConn`].
    Raw(RawBody),
    /// Read by hyper's client (uploads, upgrades, h2c).
    Hyper(Incoming),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Raw(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Raw(b) => b.is_end_stream(),
            Self::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Raw(b) => b.size_hint(),
            Self::Hyper(b) => b.size_hint(),
        }
    }
}

/// A response from a primary, over HTTP/1.1 or h2c.
pub struct UpstreamResponse<B> {
    /// The response, its body read by portico or by hyper.
    pub response: Response<UpstreamBody>,
    /// The HTTP/1.1 connection hyper read it on, to check back into its pool
    /// when the body has ended (portico's own connections check themselves
    /// in; h2c's are shared).
    pub check_in: Option<CheckIn<B>>,
}

/// One primary: its address, the authority requests are sent with, and its
/// connection pool, for requests with bodies of type `B`.
pub struct Upstream<B> {
    /// Where it is.
    pub addr: UpstreamAddr,
    /// The authority requests are sent with (h2c's `:authority`).
    pub base: http::uri::Authority,
    /// A bare connector for readiness checks.
    pub connector: Connector,
    client: Pooled<B>,
}

/// HTTP/1.1 primaries get portico's own pool; h2c ones hyper-util's client,
/// which multiplexes on one connection and replaces it when it goes away.
enum Pooled<B> {
    H1(Arc<H1Pool<B>>),
    H2(Box<Client<Connector, B>>),
}

impl<B> std::fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({})", self.addr)
    }
}

/// How long an upstream connection may sit idle: shorter than the keep-alive
/// timeout of common app servers, so portico drops an idle connection before
/// the primary does.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl<B: RequestBody> Upstream<B> {
    /// Builds the client for `addr`.
    pub fn new(addr: &UpstreamAddr, connect_timeout: Duration) -> Self {
        let connector = Connector::new(addr, connect_timeout);
        let h2 = matches!(addr, UpstreamAddr::H2c(_));
        let base = match addr {
            UpstreamAddr::Http(a) | UpstreamAddr::H2c(a) => a.parse().ok(),
            UpstreamAddr::Unix(_) => None,
        }
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
        let client = if h2 {
            let mut b = Client::builder(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .set_host(false)
                .retry_canceled_requests(true)
                .http2_only(true)
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .http2_keep_alive_timeout(Duration::from_secs(10));
            Pooled::H2(Box::new(b.build(connector.clone())))
        } else {
            Pooled::H1(Arc::new(H1Pool::new(connector.clone(), POOL_IDLE_TIMEOUT)))
        };
        Self {
            addr: addr.clone(),
            base,
            connector,
            client,
        }
    }

    /// Speaks HTTP/2 (h2c).
    pub fn h2(&self) -> bool {
        matches!(self.client, Pooled::H2(_))
    }

    /// What requests to this primary are sent with. Each kind's send future
    /// is awaited in place by the exchange: behind one `send` for both, it
    /// would be moved once more per request, and sized for the larger.
    pub fn sender(&self) -> Sender<'_, B> {
        match &self.client {
            Pooled::H1(pool) => Sender::H1(pool),
            Pooled::H2(client) => Sender::H2(H2Sender {
                client,
                base: &self.base,
            }),
        }
    }
}

/// How requests reach a primary.
pub enum Sender<'a, B> {
    /// portico's pool of HTTP/1.1 connections; a response comes with its
    /// connection, to return to the pool when its body has ended.
    H1(&'a Arc<H1Pool<B>>),
    /// hyper-util's client, multiplexing on h2c.
    H2(H2Sender<'a, B>),
}

/// Sends to an h2c primary.
pub struct H2Sender<'a, B> {
    client: &'a Client<Connector, B>,
    base: &'a http::uri::Authority,
}

impl<B: RequestBody> H2Sender<'_, B> {
    /// Sends `req` (origin-form target) with the primary's scheme and
    /// authority.
    pub async fn send(self, mut req: Request<B>) -> Result<UpstreamResponse<B>, ExchangeError> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        if let Ok(u) = http::Uri::builder()
            .scheme("http")
            .authority(self.base.clone())
            .path_and_query(path)
            .build()
        {
            *req.uri_mut() = u;
        }
        match self.client.request(req).await {
            Ok(r) => Ok(UpstreamResponse {
                response: r.map(UpstreamBody::Hyper),
                check_in: None,
            }),
            Err(e) => Err(ExchangeError::H2c(e)),
        }
    }
}
