//! Every failure portico answers itself, in one place: the SPEC kind, its status
//! and its one-line body. The match is exhaustive so a new kind cannot go
//! unanswered.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// The `Portico-Error` header name.
pub const PORTICO_ERROR: &str = "portico-error";

/// A failure kind from SPEC's table.
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

/// A response portico made, tagged so the access log and metrics know its kind.
#[derive(Clone, Copy, Debug)]
pub struct Answered(pub ErrorKind);
