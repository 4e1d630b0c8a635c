//! The request stage: the tower stack every request passes through, composed in
//! one place, outermost first. Each layer says why it sits where it does.
//!
//! 1. [`Observe`]: request id, route selection, metrics and the access log. It
//!    is outermost so that every answer, portico's own included, carries the
//!    request id and is counted and logged once.
//! 2. [`InFlightLimit`]: `--max-requests-in-flight`, process-wide, answering
//!    `503` at once. tower's `GlobalConcurrencyLimit` + `LoadShed` would queue a
//!    waiter per refused connection, which later holds a permit while idle, so
//!    this takes a permit only if one is free right now.
//! 3. [`Proxy`]: framing and size checks, header rules, the upstream call with
//!    `--request-timeout`, upgrades, and the one place upstream failures turn
//!    into SPEC answers. Its error type is `Infallible`: nothing reaches hyper
//!    unanswered.

pub mod body;
pub mod headers;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder};

use crate::config::Config;
use crate::conn::{ConnActivity, ConnInfo};
use crate::error::{Answered, ErrorKind};
use crate::routing::{host_without_port, RouteTable};
use crate::shutdown::Drain;
use crate::telemetry::{CodeCounters, Metrics, RouteKind};
use crate::upstream::{classify_error, H1Response, SendError, Sender, Upstream};
use body::{OnDone, ReqBody, ReqProgress, RespBody};

/// Everything the stack shares across connections.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// The route table.
    pub routes: RouteTable,
    /// Upstream clients by route id (the default route last).
    pub upstreams: Vec<Arc<Upstream>>,
    /// Route names by route id.
    pub route_names: Vec<Arc<str>>,
    /// Latency histograms by route id.
    pub route_hist: Vec<Histogram>,
    /// Request counters by route id.
    pub route_codes: Vec<CodeCounters>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Drain state and counts.
    pub drain: Arc<Drain>,
    /// Permits for `--max-requests-in-flight`.
    pub in_flight: Arc<Semaphore>,
}

impl Shared {
    /// Builds the shared state: one upstream client per distinct address.
    pub fn new(cfg: Config, metrics: Arc<Metrics>, drain: Arc<Drain>) -> Self {
        let routes = RouteTable::new(cfg.upstream.clone(), cfg.routes.clone());
        let mut by_addr: Vec<Arc<Upstream>> = Vec::new();
        let mut upstreams = Vec::new();
        let mut route_names = Vec::new();
        let mut route_hist = Vec::new();
        let mut route_codes = Vec::new();
        for r in routes.all() {
            let up = match by_addr.iter().find(|u| u.addr == r.upstream) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(Upstream::new(&r.upstream, cfg.connect_timeout));
                    by_addr.push(u.clone());
                    u
                }
            };
            upstreams.push(up);
            route_names.push(r.name.clone());
            route_hist.push(metrics.register_route(&r.name));
            route_codes.push(CodeCounters::new(r.name.clone()));
        }
        let in_flight = Arc::new(Semaphore::new(cfg.max_requests_in_flight));
        Self {
            cfg,
            routes,
            upstreams,
            route_names,
            route_hist,
            route_codes,
            metrics,
            drain,
            in_flight,
        }
    }
}

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
        .layer(ObserveLayer {
            shared: shared.clone(),
            conn: conn.clone(),
            activity,
        })
        .layer(InFlightLimitLayer {
            permits: shared.in_flight.clone(),
        })
        .service(Proxy { shared, conn })
}

type ExchangeFut = Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>;

/// Layer for [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    activity: Arc<ConnActivity>,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            activity: self.activity.clone(),
        }
    }
}

/// Request id, route, metrics, access log, and the in-flight bookkeeping.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    activity: Arc<ConnActivity>,
}

/// Counts a request in flight (for the drain and the connection's clock) from
/// its head until its response ends, or until hyper drops it unanswered
/// because the client went away.
struct InFlightGuard {
    shared: Arc<Shared>,
    activity: Arc<ConnActivity>,
    h1: bool,
}

impl InFlightGuard {
    fn new(shared: Arc<Shared>, activity: Arc<ConnActivity>, h1: bool) -> Self {
        activity.request_started();
        shared.drain.requests.fetch_add(1, Ordering::AcqRel);
        Self {
            shared,
            activity,
            h1,
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.shared.drain.requests.fetch_sub(1, Ordering::AcqRel);
        self.activity.request_finished(self.h1);
    }
}

struct Finish {
    guard: InFlightGuard,
    conn: Arc<ConnInfo>,
    start: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    status: StatusCode,
    route: usize,
    request_id: HeaderValue,
    progress: Option<Arc<ReqProgress>>,
    kind: Option<ErrorKind>,
}

impl OnDone for Finish {
    fn done(self: Box<Self>, bytes_out: u64, complete: bool) {
        let shared = &self.guard.shared;
        if shared.cfg.access_log {
            let bytes_in = self
                .progress
                .as_ref()
                .map_or(0, |p| p.bytes.load(Ordering::Relaxed));
            tracing::info!(
                target: "access",
                client = %self.conn.peer,
                method = %self.method,
                path = %self.uri.path(),
                proto = ?self.version,
                status = self.status.as_u16(),
                route = %shared.route_names[self.route],
                upstream = %shared.upstreams[self.route].addr,
                duration_ms = self.start.elapsed().as_micros() as f64 / 1e3,
                bytes_in,
                bytes_out,
                complete,
                tls = self.conn.tls_version,
                sni = self.conn.sni.as_deref().unwrap_or("-"),
                request_id = self.request_id.to_str().unwrap_or("-"),
                error = self.kind.map_or("-", ErrorKind::as_str),
            );
        }
    }
}

impl<S> Service<Request<Incoming>> for Observe<S>
where
    S: Service<Routed, Response = Response<RespBody>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let start = Instant::now();
        let guard = InFlightGuard::new(self.shared.clone(), self.activity.clone(), !self.conn.h2);

        let request_id = headers::request_id(req.headers());
        req.headers_mut()
            .insert(&headers::X_REQUEST_ID, request_id.clone());
        let host = match req.uri().authority() {
            Some(a) => Some(a.host()),
            None => req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(host_without_port),
        };
        let route = self.shared.routes.lookup(host, req.uri().path()).id;
        let progress = if http_body::Body::is_end_stream(req.body()) {
            None
        } else {
            Some(Arc::new(ReqProgress::default()))
        };
        let finish = Box::new(Finish {
            guard,
            conn: self.conn.clone(),
            start,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            status: StatusCode::OK,
            route,
            request_id,
            progress: progress.clone(),
            kind: None,
        });
        ObserveFuture {
            inner: self.inner.call(Routed {
                req,
                route,
                progress,
                start,
            }),
            finish: Some(finish),
        }
    }
}

/// [`Observe`]'s future: the response gets the request id, is counted, and
/// carries the access-log line to its body's end. Not boxed: it is one
/// allocation less per request than an `async` block would be.
pub struct ObserveFuture<F> {
    inner: F,
    /// Taken when the response comes; dropped with the future if hyper
    /// drops the request unanswered (the client went away).
    finish: Option<Box<Finish>>,
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<RespBody>, Infallible>> + Unpin,
{
    type Output = Result<Response<RespBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut resp) = ready!(Pin::new(&mut self.inner).poll(cx));
        let Some(mut finish) = self.finish.take() else {
            // hyper does not poll an answered request's future again.
            return Poll::Pending;
        };
        // A fresh value on every response: in HPACK's table it would only
        // evict entries that are sent again (content-type, server, ...), so
        // h2 sends it as a literal that is never indexed.
        let mut id = finish.request_id.clone();
        id.set_sensitive(true);
        resp.headers_mut().insert(&headers::X_REQUEST_ID, id);
        let kind = resp.extensions().get::<Answered>().map(|a| a.0);
        let route = finish.route;
        {
            let shared = &finish.guard.shared;
            let m = &shared.metrics;
            shared.route_codes[route].inc(&m.requests, resp.status().as_u16());
            shared.route_hist[route].observe(finish.start.elapsed().as_secs_f64());
            if let Some(k) = kind.filter(|k| k.is_upstream()) {
                m.upstream_errors
                    .get_or_create(&RouteKind {
                        route: shared.route_names[route].clone(),
                        kind: k.as_str(),
                    })
                    .inc();
            }
        }
        finish.status = resp.status();
        finish.kind = kind;
        if finish.status == StatusCode::SWITCHING_PROTOCOLS {
            finish.guard.activity.upgraded();
        }
        resp.body_mut().watch_client(finish.guard.activity.clone());
        resp.body_mut().set_on_done(finish);
        Poll::Ready(Ok(resp))
    }
}

/// Layer for [`InFlightLimit`].
#[derive(Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;
    fn layer(&self, inner: S) -> InFlightLimit<S> {
        InFlightLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// `--max-requests-in-flight`: a permit is held until the response body ends.
#[derive(Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> Service<Routed> for InFlightLimit<S>
where
    S: Service<Routed, Response = Response<RespBody>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, r: Routed) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => InFlightFuture {
                inner: Some(self.inner.call(r)),
                permit: Some(permit),
            },
            Err(_) => InFlightFuture {
                inner: None,
                permit: None,
            },
        }
    }
}

/// [`InFlightLimit`]'s future: the inner one's answer, holding the permit
/// until its body ends; without a permit, `503` at once.
pub struct InFlightFuture<F> {
    inner: Option<F>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<F> Future for InFlightFuture<F>
where
    F: Future<Output = Result<Response<RespBody>, Infallible>> + Unpin,
{
    type Output = Result<Response<RespBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Ok(answer(ErrorKind::Overloaded, false)));
        };
        let Ok(mut resp) = ready!(Pin::new(inner).poll(cx));
        if let Some(permit) = self.permit.take() {
            resp.body_mut().hold(permit);
        }
        Poll::Ready(Ok(resp))
    }
}

/// portico's own answer, tagged for the log and metrics.
fn answer(kind: ErrorKind, h1: bool) -> Response<RespBody> {
    let mut resp: Response<RespBody> = kind.response();
    if h1 && kind.closes_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.extensions_mut().insert(Answered(kind));
    resp
}

/// Forwards a request to its route's upstream.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
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
            Err(answer) => ProxyFuture::Answered(Some(answer)),
        }
    }
}

/// [`Proxy`]'s future: the upstream exchange, or portico's own answer given
/// before anything was sent.
pub enum ProxyFuture {
    /// Waiting for the upstream.
    Exchange(ExchangeFut),
    /// Refused before it was sent.
    Answered(Option<Box<Response<RespBody>>>),
}

impl Future for ProxyFuture {
    type Output = Result<Response<RespBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            ProxyFuture::Exchange(f) => f.as_mut().poll(cx).map(Ok),
            ProxyFuture::Answered(a) => match a.take() {
                Some(a) => Poll::Ready(Ok(*a)),
                // hyper does not poll an answered request's future again.
                None => Poll::Pending,
            },
        }
    }
}

/// Why a request must not be forwarded as it is, before anything is sent.
fn refuse(req: &Request<Incoming>, cfg: &Config) -> Option<ErrorKind> {
    // Userinfo in the target or :authority is an error (RFC 9110 §4.2.4, RFC
    // 9113 §8.3.1). Routing reads only the host, so forwarding `user@host` as
    // `Host` would let the upstream read another host than the one routed on.
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Some(ErrorKind::BadRequest);
    }
    // Ambiguous HTTP/1 framing never gets here: hyper's parser refuses two
    // different Content-Lengths (its plain 400) and, for Content-Length with
    // Transfer-Encoding, drops the length, reads the chunked body and closes
    // the connection after the answer (RFC 9112 §6.3). portico re-frames every
    // request towards the upstream itself, so the upstream cannot read it
    // differently. HTTP/2 carries no such headers (h2 refuses them).
    let h = req.headers();
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 11;
    if headers::head_size(h, line) > cfg.max_header_bytes {
        return Some(ErrorKind::HeadersTooLarge);
    }
    if cfg.max_request_body > 0 {
        let declared = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cfg.max_request_body) {
            return Some(ErrorKind::BodyTooLarge);
        }
    }
    None
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A request sent to its upstream, and what its answer needs.
struct Exchange {
    upstream: Arc<Upstream>,
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
    if let Some(kind) = refuse(&req, cfg) {
        return Err(Box::new(answer(kind, h1)));
    }
    let upstream = shared.upstreams[route].clone();

    let upgrade = h1 && is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    let host = match parts.uri.authority() {
        Some(a) => conn.client_for.host(a.as_str()),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // Room for the forwarding headers and Host in one growth of the table,
    // not one per header that crosses its load limit.
    parts.headers.reserve(6);
    headers::strip_hop_by_hop(&mut parts.headers, upgrade, upstream.h2());
    match &conn.xfcc {
        Some(x) => parts.headers.insert(&headers::XFCC, x.clone()),
        None => parts.headers.remove(&headers::XFCC),
    };
    headers::add_forwarded(
        &mut parts.headers,
        &conn.client_for,
        host.as_ref(),
        &conn.port,
    );
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h);
    }
    // hyper writes the target as given: origin form, or authority form for
    // CONNECT. The h2c client adds scheme and authority itself.
    parts.uri = match parts.uri.path_and_query() {
        _ if parts.method == Method::CONNECT => Uri::from(upstream.base.clone()),
        Some(p) => Uri::from(p.clone()),
        None => Uri::from_static("/"),
    };
    parts.version = if upstream.h2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
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
/// `--request-timeout`; [`answered`] makes the client's response of it.
///
/// This future is moved into a box per request, so all its room is copied
/// each time; it is kept small. Not an `async fn`: one would move `x` into a
/// local beside its own copy of the argument (392 bytes twice). The send
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
                    within(send, &shared.cfg, &x.progress, x.start).await
                } else {
                    let mut send = Box::pin(pool.send_hyper(x.req));
                    within(send.as_mut(), &shared.cfg, &x.progress, x.start).await
                }
            }
            Sender::H2(h2) => {
                let mut send = Box::pin(h2.send(x.req));
                within(send.as_mut(), &shared.cfg, &x.progress, x.start)
                    .await
                    .map(|r| (r, None))
            }
        };
        answered(
            &shared,
            &x.upstream,
            x.route,
            x.h1,
            x.client_upgrade,
            result,
        )
    }
}

/// The upstream's answer turned into the client's: a failure into portico's
/// answer, a `101` into a spawned join of the upgrade's two sides.
fn answered(
    shared: &Shared,
    upstream: &Upstream,
    route: usize,
    h1: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    result: Result<H1Response, Option<SendError>>,
) -> Response<RespBody> {
    let cfg = &shared.cfg;
    let (mut resp, reuse) = match result {
        Ok(r) => r,
        Err(None) => {
            tracing::warn!(upstream = %upstream.addr, route = %shared.route_names[route],
                "upstream did not answer within --request-timeout");
            return answer(ErrorKind::UpstreamTimeout, h1);
        }
        Err(Some(e)) => {
            let kind = classify_error(&e);
            let detail = error_chain(&e);
            if kind.is_upstream() {
                tracing::warn!(upstream = %upstream.addr, route = %shared.route_names[route],
                    kind = kind.as_str(), error = %detail, "upstream request failed");
            } else {
                tracing::info!(route = %shared.route_names[route], kind = kind.as_str(),
                    error = %detail, "request refused");
            }
            return answer(kind, h1);
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match client_upgrade {
            Some(client) => {
                let upstream_side = hyper::upgrade::on(&mut resp);
                let guard = shared.drain.track();
                tokio::spawn(async move {
                    let _guard = guard;
                    match tokio::try_join!(client, upstream_side) {
                        Ok((c, u)) => {
                            let mut c = hyper_util::rt::TokioIo::new(c);
                            let mut u = hyper_util::rt::TokioIo::new(u);
                            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                                tracing::debug!(error = %e, "upgraded connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
                    }
                });
            }
            None => return answer(ErrorKind::BadUpstreamResponse, h1),
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
    let reuse = if switching || doubtful { None } else { reuse };
    Response::from_parts(parts, RespBody::upstream(body, body_timeout, reuse))
}

/// Waits for `send` within `--request-timeout`, counted from the end of the
/// request body when it has one; `Err(None)` when that passes.
async fn within<T>(
    mut send: Pin<&mut impl Future<Output = Result<T, SendError>>>,
    cfg: &Config,
    progress: &Option<Arc<ReqProgress>>,
    start: Instant,
) -> Result<T, Option<SendError>> {
    match (cfg.request_timeout, progress) {
        (t, _) if t.is_zero() => send.await.map_err(Some),
        (t, None) => match tokio::time::timeout_at(start + t, send).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        },
        (t, Some(p)) => {
            tokio::select! {
                r = &mut send => r.map_err(Some),
                _ = timeout_after_body(p, t) => Err(None),
            }
        }
    }
}

async fn timeout_after_body(p: &ReqProgress, t: Duration) {
    p.wait_done().await;
    tokio::time::sleep(t).await;
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
