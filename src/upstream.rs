//! The upstream stage: one pooled keep-alive client per distinct primary
//! (`http://`, `h2c://`, `unix:`), with a connector that times out and says
//! *why* a connect failed, so each failure maps to its SPEC kind.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::error::ErrorKind;
use crate::routing::UpstreamAddr;
use crate::stack::body::{BodyError, ReqBody};

pub mod h1;
mod pool;
pub use h1::{RawBody, RawError};
pub use pool::{H1Pool, H1Response, Reuse};

/// Why a connect failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The primary refused.
    #[error("connection refused: {0}")]
    Refused(io::Error),
    /// `--connect-timeout` passed.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// Anything else (unreachable, no such socket, DNS).
    #[error("connect failed: {0}")]
    Failed(io::Error),
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
                    .map_err(classify)?;
                    // Requests are small writes; never wait for Nagle.
                    let _ = s.set_nodelay(true);
                    Ok(Stream::Tcp(s))
                }
                Target::Unix(p) => UnixStream::connect(&**p)
                    .await
                    .map(Stream::Unix)
                    .map_err(classify),
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

fn classify(e: io::Error) -> ConnectError {
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

/// Why an exchange with the primary failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection.
    #[error(transparent)]
    Connect(ConnectError),
    /// The HTTP/1.1 exchange failed.
    #[error(transparent)]
    Http(hyper::Error),
    /// The h2c client failed.
    #[error(transparent)]
    Legacy(hyper_util::client::legacy::Error),
    /// portico's own HTTP/1.1 exchange failed.
    #[error(transparent)]
    Raw(RawError),
}

/// A response body from a primary: read by portico itself, or by hyper.
pub enum UpstreamBody {
    /// Read on a [`h1::RawConn`].
    Raw(RawBody),
    /// Read by hyper's client (uploads, upgrades, h2c).
    Hyper(Incoming),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
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

/// One primary: its address, the authority requests are sent with, and its
/// connection pool.
pub struct Upstream {
    /// Where it is.
    pub addr: UpstreamAddr,
    /// The authority requests are sent with (h2c's `:authority`).
    pub base: http::uri::Authority,
    /// A bare connector for readiness checks.
    pub connector: Connector,
    client: Pooled,
}

/// HTTP/1.1 primaries get portico's own pool; h2c ones hyper-util's client,
/// which multiplexes on one connection and replaces it when it goes away.
enum Pooled {
    H1(Arc<H1Pool>),
    H2(Box<Client<Connector, ReqBody>>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({})", self.addr)
    }
}

/// How long an upstream connection may sit idle: shorter than the keep-alive
/// timeout of common app servers, so portico drops an idle connection before
/// the primary does.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Upstream {
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
    pub fn sender(&self) -> Sender<'_> {
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
pub enum Sender<'a> {
    /// portico's pool of HTTP/1.1 connections; a response comes with its
    /// connection, to return to the pool when its body has ended.
    H1(&'a Arc<H1Pool>),
    /// hyper-util's client, multiplexing on h2c.
    H2(H2Sender<'a>),
}

/// Sends to an h2c primary.
pub struct H2Sender<'a> {
    client: &'a Client<Connector, ReqBody>,
    base: &'a http::uri::Authority,
}

impl H2Sender<'_> {
    /// Sends `req` (origin-form target) with the primary's scheme and
    /// authority.
    pub async fn send(
        self,
        mut req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
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
        self.client
            .request(req)
            .await
            .map(|r| r.map(UpstreamBody::Hyper))
            .map_err(SendError::Legacy)
    }
}

/// Maps a client error to its SPEC kind, with the detail for the log line.
pub fn classify_error(e: &SendError) -> ErrorKind {
    let mut src: Option<&(dyn std::error::Error + 'static)> = match e {
        SendError::Connect(c) => Some(c),
        SendError::Http(h) => Some(h),
        SendError::Legacy(l) => Some(l),
        SendError::Raw(RawError::Bad(_)) => return ErrorKind::BadUpstreamResponse,
        SendError::Raw(RawError::Io(_)) => return ErrorKind::UpstreamReset,
    };
    while let Some(err) = src {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Refused(_) => ErrorKind::ConnectRefused,
                ConnectError::Timeout(_) => ErrorKind::ConnectTimeout,
                ConnectError::Failed(_) => ErrorKind::ConnectFailed,
            };
        }
        if let Some(b) = err.downcast_ref::<BodyError>() {
            return match b {
                BodyError::TooLarge(_) => ErrorKind::BodyTooLarge,
                BodyError::Timeout(_) | BodyError::Peer(_) => ErrorKind::BadRequest,
                // Only response bodies raise it; a send never sees one.
                BodyError::Upstream(_) => ErrorKind::UpstreamReset,
            };
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() {
                return ErrorKind::BadUpstreamResponse;
            }
        }
        src = err.source();
    }
    if matches!(e, SendError::Legacy(l) if l.is_connect()) {
        ErrorKind::ConnectFailed
    } else {
        ErrorKind::UpstreamReset
    }
}
