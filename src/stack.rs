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
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder};

use crate::config::Config;
use crate::error::{Answered, ErrorKind};
use crate::routing::{host_without_port, RouteTable};
use crate::server::ConnActivity;
use crate::shutdown::Drain;
use crate::telemetry::{CodeCounters, Metrics, RouteKind};
use crate::tls::ConnInfo;
use crate::upstream::{classify_error, Upstream};
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

/// The route a request was given, by id.
#[derive(Clone, Copy, Debug)]
pub struct RouteId(pub usize);

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

type BoxFut = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

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
    S: Service<Request<Incoming>, Response = Response<RespBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> BoxFut {
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
        req.extensions_mut().insert(RouteId(route));
        let progress = if http_body::Body::is_end_stream(req.body()) {
            None
        } else {
            let p = Arc::new(ReqProgress::default());
            req.extensions_mut().insert(p.clone());
            Some(p)
        };
        let method = req.method().clone();
        let uri = req.uri().clone();
        let version = req.version();

        let fut = self.inner.call(req);
        let shared = self.shared.clone();
        let conn = self.conn.clone();
        let activity = self.activity.clone();
        Box::pin(async move {
            let Ok(mut resp) = fut.await;
            resp.headers_mut()
                .insert(&headers::X_REQUEST_ID, request_id.clone());
            let kind = resp.extensions().get::<Answered>().map(|a| a.0);
            let m = &shared.metrics;
            let name = &shared.route_names[route];
            shared.route_codes[route].inc(&m.requests, resp.status().as_u16());
            shared.route_hist[route].observe(start.elapsed().as_secs_f64());
            if let Some(k) = kind.filter(|k| k.is_upstream()) {
                m.upstream_errors
                    .get_or_create(&RouteKind {
                        route: name.clone(),
                        kind: k.as_str(),
                    })
                    .inc();
            }
            let status = resp.status();
            resp.body_mut().watch_client(activity);
            resp.body_mut().set_on_done(Box::new(Finish {
                guard,
                conn,
                start,
                method,
                uri,
                version,
                status,
                route,
                request_id,
                progress,
                kind,
            }));
            Ok(resp)
        })
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

impl<S> Service<Request<Incoming>> for InFlightLimit<S>
where
    S: Service<Request<Incoming>, Response = Response<RespBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let permit: OwnedSemaphorePermit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                return Box::pin(std::future::ready(Ok(answer(ErrorKind::Overloaded, false))));
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Ok(mut resp) = fut.await;
            resp.body_mut().hold(permit);
            Ok(resp)
        })
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

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> BoxFut {
        let shared = self.shared.clone();
        let conn = self.conn.clone();
        Box::pin(async move { Ok(forward(shared, conn, req).await) })
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

async fn forward(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let cfg = &shared.cfg;
    let h1 = !conn.h2;
    let route = req
        .extensions()
        .get::<RouteId>()
        .map_or(shared.upstreams.len() - 1, |r| r.0);
    let progress = req.extensions_mut().remove::<Arc<ReqProgress>>();
    if let Some(kind) = refuse(&req, cfg) {
        return answer(kind, h1);
    }
    let upstream = shared.upstreams[route].clone();

    let upgrade = h1 && is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade, upstream.h2);
    parts.headers.remove(&headers::XFCC);
    if let Some(x) = &conn.xfcc {
        parts.headers.insert(&headers::XFCC, x.clone());
    }
    headers::add_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        host.as_ref(),
        conn.local_port,
    );
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h);
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(upstream.base.clone())
        .path_and_query(path)
        .build()
    {
        Ok(u) => u,
        Err(_) => return answer(ErrorKind::BadRequest, h1),
    };
    parts.version = if upstream.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let body = match &progress {
        Some(p) => ReqBody::new(body, cfg.body_timeout, cfg.max_request_body, p.clone()),
        None => ReqBody::empty(),
    };
    let send = upstream.client.request(Request::from_parts(parts, body));

    let result = match (cfg.request_timeout, &progress) {
        (t, _) if t.is_zero() => send.await.map_err(Some),
        (t, None) => match tokio::time::timeout(t, send).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        },
        (t, Some(p)) => {
            tokio::select! {
                r = send => r.map_err(Some),
                _ = timeout_after_body(p, t) => Err(None),
            }
        }
    };

    let mut resp = match result {
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
    headers::strip_hop_by_hop(&mut parts.headers, switching, false);
    let body_timeout = if switching {
        Duration::ZERO
    } else {
        cfg.body_timeout
    };
    Response::from_parts(parts, RespBody::upstream(body, body_timeout))
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
