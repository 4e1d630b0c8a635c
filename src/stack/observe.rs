//! The outermost layer: the request id, the route, the metrics and the access
//! log, and the in-flight count the drain and the connection's idle clock
//! read. Outermost so that every answer, portico's own included, is tagged,
//! counted and logged once; the log line is written when the response body
//! ends, so it carries the bytes sent and whether the body was complete.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::body::{OnDone, ReqProgress, RespBody};
use super::{headers, Routed, Shared};
use crate::conn::{ConnActivity, ConnInfo};
use crate::error::{ErrorKind, OwnAnswer};
use crate::routing::host_without_port;
use crate::telemetry::RouteKind;

/// Layer for [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    activity: Arc<ConnActivity>,
}

impl ObserveLayer {
    /// The layer for one connection's stack.
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnInfo>, activity: Arc<ConnActivity>) -> Self {
        Self {
            shared,
            conn,
            activity,
        }
    }
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
}

impl InFlightGuard {
    fn new(shared: Arc<Shared>, activity: Arc<ConnActivity>) -> Self {
        activity.request_started();
        shared.drain.requests.fetch_add(1, Ordering::AcqRel);
        Self { shared, activity }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.shared.drain.requests.fetch_sub(1, Ordering::AcqRel);
        self.activity.request_finished();
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
        let guard = InFlightGuard::new(self.shared.clone(), self.activity.clone());

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
        let kind = resp.extensions().get::<OwnAnswer>().map(|a| a.0);
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
