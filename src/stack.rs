//! The request stage: the tower stack every request passes through, composed
//! here, outermost first, with the reason each layer sits where it does. Each
//! layer lives in its own file.
//!
//! 1. [`Observe`] (`observe.rs`): request id, route selection, metrics and the
//!    access log. It is outermost so that every answer, portico's own
//!    included, carries the request id and is counted and logged once.
//! 2. [`InFlightLimit`] (`in_flight.rs`): `--max-requests-in-flight`,
//!    process-wide, answering `503` at once. It takes a permit only if one is
//!    free right now: tower's `GlobalConcurrencyLimit` with `LoadShed` would
//!    queue a waiter per refused connection, which later holds a permit
//!    while idle.
//! 3. [`Proxy`] (`proxy.rs`): the checks made before anything is sent
//!    (`refuse.rs`), the request rewritten for its upstream (`rewrite.rs`),
//!    the upstream call within `--request-timeout` (`timeout.rs`), the
//!    WebSocket tunnel after a `101` (`tunnel.rs`), and the one place a
//!    failed exchange becomes portico's own response
//!    ([`crate::error::classify`] names its kind). Its error type is
//!    `Infallible`: nothing reaches hyper unanswered.
//!
//! [`Shared`] (`shared.rs`) is the state every connection's stack shares.

pub mod body;
pub mod headers;
mod in_flight;
mod observe;
mod proxy;
mod refuse;
mod rewrite;
mod shared;
mod timeout;
mod tunnel;

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::ServiceBuilder;

use crate::conn::{ConnActivity, ConnInfo};
use crate::error::{classify, ErrorKind, ExchangeError, OwnAnswer};
use body::{ReqProgress, RespBody};

pub use in_flight::{InFlightFuture, InFlightLimit, InFlightLimitLayer};
pub use observe::{Observe, ObserveFuture, ObserveLayer};
pub use proxy::{Proxy, ProxyFuture};
pub use shared::Shared;

/// A request with what [`Observe`] decided for it, handed down the stack as
/// it is (not in the request's extensions, which would cost allocations on
/// every request).
pub struct Routed {
    /// The request.
    pub req: Request<Incoming>,
    /// The route's id.
    pub route: usize,
    /// The body's progress, when the request has a body.
    pub progress: Option<Arc<ReqProgress>>,
    /// When the request arrived: `--request-timeout` counts from here (for a
    /// request without a body), with no clock read of its own.
    pub start: Instant,
}

/// The stack one connection's requests pass through, outermost first.
pub type Stack = Observe<InFlightLimit<Proxy>>;

/// The stack for one connection.
pub fn build(shared: Arc<Shared>, conn: Arc<ConnInfo>, activity: Arc<ConnActivity>) -> Stack {
    ServiceBuilder::new()
        .layer(ObserveLayer::new(shared.clone(), conn.clone(), activity))
        .layer(InFlightLimitLayer::new(shared.in_flight.clone()))
        .service(Proxy::new(shared, conn))
}

/// portico's own response to a request that failed with `e`, tagged with its
/// kind for the log and metrics; on HTTP/1.1 it closes the connection when
/// the rest of the request may still be unread.
fn own_response(e: &ExchangeError, h1: bool) -> Response<RespBody> {
    kind_response(classify(e), h1)
}

/// [`own_response`] for a failure already classified.
fn kind_response(kind: ErrorKind, h1: bool) -> Response<RespBody> {
    let mut resp: Response<RespBody> = kind.response();
    if h1 && kind.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.extensions_mut().insert(OwnAnswer(kind));
    resp
}
