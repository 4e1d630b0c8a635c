//! Every failure portico answers itself, in one place: what can go wrong with
//! a request (the typed errors below, gathered in [`ExchangeError`]), the one
//! [`classify`] that maps each to its kind, and each kind's status and
//! one-line body. The matches are exhaustive, so a new failure cannot go
//! unclassified and a new kind cannot go unanswered.
//!
//! The error types live here, not in the stages that raise them (the
//! upstream's connector and its HTTP/1.1 exchange, the stack's bodies), so
//! that this module imports no stage and each stage can name them.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// The `Portico-Error` header name.
pub const PORTICO_ERROR: &str = "portico-error";

/// A failure kind from the reference's table of answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The upstream refused the connection.
    ConnectRefused,
    /// Any other connect error (unreachable, Unix socket missing).
    ConnectFailed,
    /// The upstream closed or reset before a complete response head.
    UpstreamReset,
    /// The upstream sent something that is not HTTP.
    BadUpstreamResponse,
    /// Past `--max-requests-in-flight`.
    Overloaded,
    /// `--connect-timeout` passed.
    ConnectTimeout,
    /// `--request-timeout` passed.
    UpstreamTimeout,
    /// A request that cannot be forwarded safely.
    BadRequest,
    /// Past `--max-request-body`.
    BodyTooLarge,
    /// Past `--max-header-bytes`.
    HeadersTooLarge,
}

impl ErrorKind {
    /// Every kind, for metrics pre-registration and tests.
    pub const ALL: [ErrorKind; 10] = [
        Self::ConnectRefused,
        Self::ConnectFailed,
        Self::UpstreamReset,
        Self::BadUpstreamResponse,
        Self::Overloaded,
        Self::ConnectTimeout,
        Self::UpstreamTimeout,
        Self::BadRequest,
        Self::BodyTooLarge,
        Self::HeadersTooLarge,
    ];

    /// The `Portico-Error` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect-refused",
            Self::ConnectFailed => "connect-failed",
            Self::UpstreamReset => "upstream-reset",
            Self::BadUpstreamResponse => "bad-upstream-response",
            Self::Overloaded => "overloaded",
            Self::ConnectTimeout => "connect-timeout",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::BadRequest => "bad-request",
            Self::BodyTooLarge => "body-too-large",
            Self::HeadersTooLarge => "headers-too-large",
        }
    }

    /// The status portico answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ConnectRefused
            | Self::ConnectFailed
            | Self::UpstreamReset
            | Self::BadUpstreamResponse => StatusCode::BAD_GATEWAY,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectTimeout | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// The one-line body: says what happened, names no internal address.
    pub fn message(self) -> &'static str {
        match self {
            Self::ConnectRefused => "upstream refused the connection\n",
            Self::ConnectFailed => "could not connect to upstream\n",
            Self::UpstreamReset => "upstream closed the connection before answering\n",
            Self::BadUpstreamResponse => "upstream sent an invalid response\n",
            Self::Overloaded => "too many requests in flight, retry shortly\n",
            Self::ConnectTimeout => "timed out connecting to upstream\n",
            Self::UpstreamTimeout => "upstream did not answer in time\n",
            Self::BadRequest => "request cannot be forwarded safely\n",
            Self::BodyTooLarge => "request body too large\n",
            Self::HeadersTooLarge => "request headers too large\n",
        }
    }

    /// Whether the upstream (not the client, not portico) failed: counted in
    /// `portico_upstream_errors_total`.
    pub fn is_upstream(self) -> bool {
        match self {
            Self::ConnectRefused
            | Self::ConnectFailed
            | Self::UpstreamReset
            | Self::BadUpstreamResponse
            | Self::ConnectTimeout
            | Self::UpstreamTimeout => true,
            Self::Overloaded | Self::BadRequest | Self::BodyTooLarge | Self::HeadersTooLarge => {
                false
            }
        }
    }

    /// Whether the client's connection should close after this answer: the rest
    /// of its request may still be on the wire, unread.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Self::BadRequest | Self::BodyTooLarge | Self::HeadersTooLarge
        )
    }

    /// portico's own answer for this kind.
    pub fn response<B: From<Bytes>>(self) -> Response<B> {
        let mut resp = Response::new(B::from(Bytes::from_static(self.message().as_bytes())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(PORTICO_ERROR, HeaderValue::from_static(self.as_str()));
        if self == Self::Overloaded {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A response portico made itself, tagged with its kind so the access log
/// and metrics know it.
#[derive(Clone, Copy, Debug)]
pub struct OwnAnswer(pub ErrorKind);

/// Why a connect to the primary failed.
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

/// Why an exchange on portico's own HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The primary's answer broke HTTP/1.1.
    #[error("bad response from the primary: {0}")]
    Bad(&'static str),
    /// The connection failed or ended before the head was complete.
    #[error("connection to the primary failed: {0}")]
    Io(#[from] io::Error),
}

/// An error a body wrapper raises itself.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// No byte moved for `--body-timeout`.
    #[error("body moved no byte for {0:?}")]
    Timeout(Duration),
    /// The request body passed `--max-request-body`.
    #[error("request body is larger than {0} bytes")]
    TooLarge(u64),
    /// The peer's body failed.
    #[error(transparent)]
    Peer(#[from] hyper::Error),
    /// The primary's response body failed.
    #[error("the primary's response body failed: {0}")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a request is answered by portico before anything is sent upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Past `--max-requests-in-flight`.
    #[error("too many requests in flight")]
    Overloaded,
    /// Userinfo in the target or `:authority` (RFC 9110 section 4.2.4, RFC
    /// 9113 section 8.3.1).
    #[error("userinfo in the request's authority")]
    Userinfo,
    /// The head passed `--max-header-bytes`.
    #[error("request head too large")]
    HeadersTooLarge,
    /// The declared `Content-Length` passed `--max-request-body`.
    #[error("declared request body too large")]
    BodyTooLarge,
}

/// Why a request got no answer from its primary: refused before it was sent,
/// or failed on the way (connect, either HTTP client, `--request-timeout`).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Refused by portico before anything was sent.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// No connection to the primary.
    #[error(transparent)]
    Connect(ConnectError),
    /// hyper's HTTP/1.1 client failed (uploads, upgrades, CONNECT).
    #[error(transparent)]
    Http(hyper::Error),
    /// hyper-util's h2c client failed.
    #[error(transparent)]
    H2c(hyper_util::client::legacy::Error),
    /// portico's own HTTP/1.1 exchange failed.
    #[error(transparent)]
    Raw(RawError),
    /// The client's request body failed on its way (past
    /// `--max-request-body`, or stalled for `--body-timeout`): the cause,
    /// whatever the HTTP client made of it.
    #[error(transparent)]
    RequestBody(BodyError),
    /// `--request-timeout` passed without an answer.
    #[error("upstream did not answer within {after:?}")]
    Timeout {
        /// The `--request-timeout` that passed.
        after: Duration,
    },
    /// The primary switched protocols on a request that asked for no upgrade.
    #[error("upstream switched protocols unasked")]
    UnaskedUpgrade,
}

impl From<Refusal> for ExchangeError {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<ConnectError> for ExchangeError {
    fn from(e: ConnectError) -> Self {
        Self::Connect(e)
    }
}

impl From<RawError> for ExchangeError {
    fn from(e: RawError) -> Self {
        Self::Raw(e)
    }
}

/// The kind of answer a failed request gets: the one place a failure becomes
/// a kind. hyper's errors are read down their source chain, where the
/// connector's [`ConnectError`] (h2c) or a request body's [`BodyError`] (the
/// client's upload failed or was too large) may be the cause.
pub fn classify(e: &ExchangeError) -> ErrorKind {
    match e {
        ExchangeError::Refused(r) => match r {
            Refusal::Overloaded => ErrorKind::Overloaded,
            Refusal::Userinfo => ErrorKind::BadRequest,
            Refusal::HeadersTooLarge => ErrorKind::HeadersTooLarge,
            Refusal::BodyTooLarge => ErrorKind::BodyTooLarge,
        },
        ExchangeError::Connect(c) => connect_kind(c),
        ExchangeError::Raw(RawError::Bad(_)) => ErrorKind::BadUpstreamResponse,
        ExchangeError::Raw(RawError::Io(_)) => ErrorKind::UpstreamReset,
        ExchangeError::RequestBody(b) => body_kind(b),
        ExchangeError::Timeout { .. } => ErrorKind::UpstreamTimeout,
        ExchangeError::UnaskedUpgrade => ErrorKind::BadUpstreamResponse,
        ExchangeError::Http(h) => from_chain(h).unwrap_or(ErrorKind::UpstreamReset),
        ExchangeError::H2c(l) => from_chain(l).unwrap_or(if l.is_connect() {
            ErrorKind::ConnectFailed
        } else {
            ErrorKind::UpstreamReset
        }),
    }
}

fn connect_kind(c: &ConnectError) -> ErrorKind {
    match c {
        ConnectError::Refused(_) => ErrorKind::ConnectRefused,
        ConnectError::Timeout(_) => ErrorKind::ConnectTimeout,
        ConnectError::Failed(_) => ErrorKind::ConnectFailed,
    }
}

fn body_kind(b: &BodyError) -> ErrorKind {
    match b {
        BodyError::TooLarge(_) => ErrorKind::BodyTooLarge,
        BodyError::Timeout(_) | BodyError::Peer(_) => ErrorKind::BadRequest,
        // Only response bodies raise it; a send never sees one.
        BodyError::Upstream(_) => ErrorKind::UpstreamReset,
    }
}

/// The kind named by the first error down `e`'s source chain (`e` included)
/// that names one: a connect error, a body error, or hyper's parse errors.
fn from_chain(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut src = Some(e);
    while let Some(err) = src {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(connect_kind(c));
        }
        if let Some(b) = err.downcast_ref::<BodyError>() {
            return Some(body_kind(b));
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() {
                return Some(ErrorKind::BadUpstreamResponse);
            }
        }
        src = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::{Request, Uri};
    use http_body::{Body, Frame};
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn io_error() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionReset)
    }

    #[test]
    fn each_error_is_classified_to_its_kind_and_every_kind_has_one() {
        let table: Vec<(ExchangeError, ErrorKind)> = vec![
            (Refusal::Overloaded.into(), ErrorKind::Overloaded),
            (Refusal::Userinfo.into(), ErrorKind::BadRequest),
            (Refusal::HeadersTooLarge.into(), ErrorKind::HeadersTooLarge),
            (Refusal::BodyTooLarge.into(), ErrorKind::BodyTooLarge),
            (
                ConnectError::Refused(io_error()).into(),
                ErrorKind::ConnectRefused,
            ),
            (
                ConnectError::Timeout(Duration::from_secs(1)).into(),
                ErrorKind::ConnectTimeout,
            ),
            (
                ConnectError::Failed(io_error()).into(),
                ErrorKind::ConnectFailed,
            ),
            (
                RawError::Bad("bad chunk size").into(),
                ErrorKind::BadUpstreamResponse,
            ),
            (RawError::Io(io_error()).into(), ErrorKind::UpstreamReset),
            (
                ExchangeError::Timeout {
                    after: Duration::from_secs(30),
                },
                ErrorKind::UpstreamTimeout,
            ),
            (
                ExchangeError::UnaskedUpgrade,
                ErrorKind::BadUpstreamResponse,
            ),
            (
                ExchangeError::RequestBody(BodyError::TooLarge(4096)),
                ErrorKind::BodyTooLarge,
            ),
            (
                ExchangeError::RequestBody(BodyError::Timeout(Duration::from_secs(60))),
                ErrorKind::BadRequest,
            ),
        ];
        for (e, kind) in &table {
            assert_eq!(classify(e), *kind, "{e}");
        }
        let named: BTreeSet<&str> = table.iter().map(|(_, k)| k.as_str()).collect();
        let all: BTreeSet<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(named, all);
    }

    /// A request body that fails with its error when first polled.
    struct Failing(Option<BodyError>);

    impl Body for Failing {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.0.take().map(Err))
        }
    }

    /// A primary on loopback that reads a request's first bytes, then writes
    /// `answer` and closes, or (`None`) waits for the client to close.
    async fn primary(answer: Option<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    match answer {
                        Some(a) => {
                            let _ = s.write_all(a).await;
                        }
                        None => while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {},
                    }
                });
            }
        });
        addr
    }

    /// The error hyper's HTTP/1.1 client returns for `body` sent to `addr`.
    async fn h1_error<B>(addr: SocketAddr, body: B) -> hyper::Error
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::new(body);
        *req.method_mut() = http::Method::POST;
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("app"));
        tx.send_request(req).await.expect_err("an error")
    }

    #[tokio::test]
    async fn a_response_that_is_not_http_is_a_bad_upstream_response() {
        let addr = primary(Some(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")).await;
        let e = h1_error(addr, Empty::<Bytes>::new()).await;
        assert!(e.is_parse(), "{e}");
        assert_eq!(
            classify(&ExchangeError::Http(e)),
            ErrorKind::BadUpstreamResponse
        );
    }

    #[tokio::test]
    async fn a_connection_closed_before_an_answer_is_an_upstream_reset() {
        let addr = primary(Some(b"")).await;
        let e = h1_error(addr, Empty::<Bytes>::new()).await;
        assert!(e.is_incomplete_message(), "{e}");
        assert_eq!(classify(&ExchangeError::Http(e)), ErrorKind::UpstreamReset);
    }

    #[tokio::test]
    async fn a_request_body_error_under_hypers_error_names_the_kind() {
        let cases = [
            (BodyError::TooLarge(1000), ErrorKind::BodyTooLarge),
            (
                BodyError::Timeout(Duration::from_secs(1)),
                ErrorKind::BadRequest,
            ),
            (
                BodyError::Upstream(io_error().into()),
                ErrorKind::UpstreamReset,
            ),
        ];
        let addr = primary(None).await;
        for (body_error, kind) in cases {
            let e = h1_error(addr, Failing(Some(body_error))).await;
            assert!(e.is_user(), "{e}");
            assert_eq!(classify(&ExchangeError::Http(e)), kind);
        }
    }

    type Connecting =
        Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, ConnectError>> + Send>>;

    /// The error hyper-util's h2c client returns when its connector fails
    /// with `fail`'s error, after a real connect to `addr`.
    async fn h2c_error(
        addr: SocketAddr,
        fail: fn(io::Error) -> ConnectError,
    ) -> hyper_util::client::legacy::Error {
        let connector = tower::service_fn(move |_: Uri| -> Connecting {
            Box::pin(async move {
                TcpStream::connect(addr)
                    .await
                    .map(TokioIo::new)
                    .map_err(fail)
            })
        });
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let uri = format!("http://{addr}/");
        let req = Request::get(uri).body(Empty::new()).expect("request");
        client.request(req).await.expect_err("an error")
    }

    /// An address nothing listens on.
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn a_connect_error_under_the_h2c_clients_error_names_the_kind() {
        let addr = closed_port().await;
        let e = h2c_error(addr, ConnectError::Refused).await;
        assert!(e.is_connect(), "{e}");
        assert_eq!(classify(&ExchangeError::H2c(e)), ErrorKind::ConnectRefused);
        let e = h2c_error(addr, |_| ConnectError::Timeout(Duration::from_secs(1))).await;
        assert_eq!(classify(&ExchangeError::H2c(e)), ErrorKind::ConnectTimeout);
        let e = h2c_error(addr, ConnectError::Failed).await;
        assert_eq!(classify(&ExchangeError::H2c(e)), ErrorKind::ConnectFailed);
    }

    #[tokio::test]
    async fn an_h2c_connection_that_ends_unanswered_is_an_upstream_reset() {
        let addr = primary(Some(b"")).await;
        let e = h2c_error(addr, ConnectError::Failed).await;
        assert!(!e.is_connect(), "{e}");
        assert_eq!(classify(&ExchangeError::H2c(e)), ErrorKind::UpstreamReset);
    }
}
