//! The innermost service: checks a request, rewrites it for its route's
//! upstream, sends it within `--request-timeout`, and turns what comes back
//! into the client's response. Every failed exchange becomes portico's own
//! response here ([`crate::error::classify`] names its kind), so nothing
//! reaches hyper unanswered.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::Service;

use super::body::{ReqBody, ReqProgress, RespBody};
use super::refuse::refuse;
use super::timeout::within;
use super::{headers, kind_response, own_response, rewrite, tunnel, Routed, Shared};
use crate::config::Config;
use crate::conn::ConnInfo;
use crate::error::{classify, BodyError, ExchangeError};
use crate::upstream::{Sender, Upstream, UpstreamResponse};

type ExchangeFut = Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>;

/// Forwards a request to its route's upstream.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

impl Proxy {
    /// The innermost service of one connection's stack.
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnInfo>) -> Self {
        Self { shared, conn }
    }
}

impl Service<Routed> for Proxy {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, r: Routed) -> ProxyFuture {
        // The request is built for the upstream here, outside the future:
        // what that takes is not kept (and moved into a box) with the
        // exchange's state.
        match prepare(&self.shared, &self.conn, r) {
            Ok(x) => ProxyFuture::Exchange(Box::pin(exchange(self.shared.clone(), x))),
            Err(own) => ProxyFuture::Refused(Some(own)),
        }
    }
}

/// [`Proxy`]'s future: the upstream exchange, or portico's own answer given
/// before anything was sent.
pub enum ProxyFuture {
    /// Waiting for the upstream.
    Exchange(ExchangeFut),
    /// Refused before it was sent: portico's own response.
    Refused(Option<Box<Response<RespBody>>>),
}

impl Future for ProxyFuture {
    type Output = Result<Response<RespBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            ProxyFuture::Exchange(f) => f.as_mut().poll(cx).map(Ok),
            ProxyFuture::Refused(a) => match a.take() {
                Some(a) => Poll::Ready(Ok(*a)),
                // hyper does not poll an answered request's future again.
                None => Poll::Pending,
            },
        }
    }
}

/// A request sent to its upstream, and what its answer needs.
struct Exchange {
    upstream: Arc<Upstream<ReqBody>>,
    route: usize,
    h1: bool,
    progress: Option<Arc<ReqProgress>>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    req: Request<ReqBody>,
    start: Instant,
}

/// Checks the request and rewrites it for its upstream (header rules, target,
/// version, body limits), then hands it to the upstream client; `Err` is
/// portico's answer when it must not be sent.
fn prepare(
    shared: &Shared,
    conn: &ConnInfo,
    r: Routed,
) -> Result<Exchange, Box<Response<RespBody>>> {
    let cfg = &shared.cfg;
    let h1 = !conn.h2;
    let Routed {
        mut req,
        route,
        progress,
        start,
    } = r;
    if let Some(r) = refuse(&req, cfg.max_header_bytes, cfg.max_request_body) {
        return Err(Box::new(own_response(&r.into(), h1)));
    }
    let upstream = shared.upstreams[route].clone();

    let upgrade = h1 && tunnel::is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    rewrite::for_upstream(&mut parts, conn, &upstream, upgrade);
    let body = match &progress {
        Some(p) => ReqBody::new(body, cfg.body_timeout, cfg.max_request_body, p.clone()),
        None => ReqBody::empty(),
    };
    Ok(Exchange {
        upstream,
        route,
        h1,
        progress,
        client_upgrade,
        req: Request::from_parts(parts, body),
        start,
    })
}

/// Sends the request and waits for the upstream's answer within
/// `--request-timeout`; [`client_response`] makes the client's response of
/// it.
///
/// This future is moved into a box per request, so all its room is copied
/// each time; it is kept small. Not an `async fn`: one would move `x` into a
/// local beside its own copy of the argument (the room twice). The send
/// future is pinned in place, once, in the arm that makes it (awaited by value
/// or through a wrapper, it would be moved and given room again per layer);
/// the raw exchange borrows the request rather than holding a copy; hyper's
/// and h2c's, rarer and larger, are boxed apart.
// Deliberately not `async fn` (the layout above): clippy's suggestion would
// bring the copy back.
#[allow(clippy::manual_async_fn)]
fn exchange(shared: Arc<Shared>, x: Exchange) -> impl Future<Output = Response<RespBody>> {
    async move {
        let result = match x.upstream.sender() {
            Sender::H1(pool) => {
                // Upgrades, CONNECT and uploads go through hyper's client.
                let raw = x.client_upgrade.is_none()
                    && x.req.method() != Method::CONNECT
                    && http_body::Body::is_end_stream(x.req.body());
                if raw {
                    let send = std::pin::pin!(pool.send_raw(&x.req));
                    within(send, shared.cfg.request_timeout, &x.progress, x.start).await
                } else {
                    let mut send = Box::pin(pool.send_hyper(x.req));
                    within(
                        send.as_mut(),
                        shared.cfg.request_timeout,
                        &x.progress,
                        x.start,
                    )
                    .await
                }
            }
            Sender::H2(h2) => {
                let mut send = Box::pin(h2.send(x.req));
                within(
                    send.as_mut(),
                    shared.cfg.request_timeout,
                    &x.progress,
                    x.start,
                )
                .await
            }
        };
        let result = result.map_err(|e| with_body_cause(e, &x.progress, &shared.cfg));
        client_response(
            &shared,
            &x.upstream,
            x.route,
            x.h1,
            x.client_upgrade,
            result,
        )
    }
}

/// The request body's own failure, when it is why the exchange failed. The
/// HTTP/1.1 client carries it in its error's source chain, but the h2c
/// client answers a failed body with a reset stream and only its own error,
/// which would read as the upstream's fault (a 502 for a client's oversized
/// upload).
fn with_body_cause(
    e: ExchangeError,
    progress: &Option<Arc<ReqProgress>>,
    cfg: &Config,
) -> ExchangeError {
    let Some(p) = progress else {
        return e;
    };
    if p.too_large.load(Ordering::Acquire) {
        ExchangeError::RequestBody(BodyError::TooLarge(cfg.max_request_body))
    } else if p.timed_out.load(Ordering::Acquire) {
        ExchangeError::RequestBody(BodyError::Timeout(cfg.body_timeout))
    } else {
        e
    }
}

/// The upstream's answer turned into the client's response: a failure into
/// portico's own, a `101` into a spawned join of the upgrade's two sides.
fn client_response(
    shared: &Shared,
    upstream: &Upstream<ReqBody>,
    route: usize,
    h1: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    result: Result<UpstreamResponse<ReqBody>, ExchangeError>,
) -> Response<RespBody> {
    let cfg = &shared.cfg;
    let UpstreamResponse {
        response: mut resp,
        check_in,
    } = match result {
        Ok(r) => r,
        Err(e @ ExchangeError::Timeout { .. }) => {
            tracing::warn!(upstream = %upstream.addr, route = %shared.route_names[route],
                "upstream did not answer within --request-timeout");
            return own_response(&e, h1);
        }
        Err(e) => {
            let kind = classify(&e);
            let detail = error_chain(&e);
            if kind.is_upstream() {
                tracing::warn!(upstream = %upstream.addr, route = %shared.route_names[route],
                    kind = kind.as_str(), error = %detail, "upstream request failed");
            } else {
                tracing::info!(route = %shared.route_names[route], kind = kind.as_str(),
                    error = %detail, "request refused");
            }
            return kind_response(kind, h1);
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match client_upgrade {
            Some(client) => {
                tunnel::join(client, hyper::upgrade::on(&mut resp), &shared.drain);
            }
            None => return own_response(&ExchangeError::UnaskedUpgrade, h1),
        }
    }
    let (mut parts, body) = resp.into_parts();
    // A length beside a coding: hyper read the body by its chunks, and RFC
    // 9112 section 6.3 has an intermediary remove the length before passing
    // the message on (kept, it cut the body short for an HTTP/1.1 client).
    // The framing was in doubt, so the connection is not used again.
    let doubtful = parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.remove(header::CONTENT_LENGTH).is_some();
    headers::strip_hop_by_hop(&mut parts.headers, switching, false);
    let body_timeout = if switching {
        Duration::ZERO
    } else {
        cfg.body_timeout
    };
    let check_in = if switching || doubtful {
        None
    } else {
        check_in
    };
    Response::from_parts(parts, RespBody::upstream(body, body_timeout, check_in))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
