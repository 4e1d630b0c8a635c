//! Plain-HTTP servers off the data path: the admin server (`/healthz`,
//! `/readyz`, `/metrics`, `POST /shutdown`) and the `--redirect-listen` 308
//! redirector. Both listen where anyone in the cluster can reach them, so
//! each has a connection cap of its own (the admin server a small one), a
//! bounded request head, a header timeout and a bounded connection lifetime,
//! and `POST /shutdown` is taken only from a loopback peer (the Pod's own
//! containers).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::readiness::Readiness;
use crate::routing::host_without_port;
use crate::shutdown::{Drain, Phase};
use crate::telemetry::Metrics;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What the admin server reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics to print.
    pub metrics: Arc<Metrics>,
    /// Readiness to report.
    pub ready: Arc<Readiness>,
    /// Drain to begin on `POST /shutdown`.
    pub drain: Arc<Drain>,
}

/// Connections the admin server holds open at once; past it, accepting
/// pauses. The kubelet's probes and a scraper need a handful; the cap keeps
/// the admin port from being a way around `--max-connections`.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this (a probe's comes at once).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A keep-alive connection is closed (gracefully) after this long, so
/// connections cannot be held for ever within the cap.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);
/// The read buffer, and so the largest request head (hyper's minimum).
const MAX_HEAD: usize = 8192;

/// Whether `peer` is the Pod's own (127.0.0.0/8, `::1`, or 127/8 mapped into
/// IPv6 by a `[::]` listener).
fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

fn admin(state: &AdminState, req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => match state.ready.reason() {
            None => text(StatusCode::OK, "ready\n"),
            Some(r) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{r}\n")),
        },
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::POST, "/shutdown") if !is_loopback(peer) => {
            tracing::warn!(peer = %peer, "POST /shutdown refused: accepted only from loopback");
            text(
                StatusCode::FORBIDDEN,
                "forbidden: POST /shutdown is accepted only from loopback\n",
            )
        }
        (&Method::POST, "/shutdown") => {
            tracing::info!(peer = %peer, "drain requested by POST /shutdown");
            state.drain.advance(Phase::Draining);
            text(StatusCode::ACCEPTED, "draining\n")
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics, POST /shutdown\n",
        ),
    }
}

/// Serves the admin endpoints until the process exits.
pub async fn run_admin(listener: TcpListener, state: AdminState) {
    serve_plain(listener, MAX_CONNECTIONS, move |req, peer| {
        let resp = admin(&state, &req, peer);
        async move { Ok::<_, Infallible>(resp) }
    })
    .await
}

/// `https://HOST[:PORT]/PATH?QUERY` for a plain-HTTP request, or `None` without a host.
pub fn redirect_location(req: &Request<Incoming>, tls_port: u16) -> Option<String> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })?;
    let bare = host_without_port(&host);
    if bare.is_empty() || bare.contains(['/', '@', ' ']) {
        return None;
    }
    let bare = if bare.contains(':') {
        format!("[{bare}]")
    } else {
        bare.to_string()
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    Some(if tls_port == 443 {
        format!("https://{bare}{pq}")
    } else {
        format!("https://{bare}:{tls_port}{pq}")
    })
}

/// Answers every request with a 308 to the TLS listener, holding at most
/// `max_connections` (the TLS listener's `--max-connections`, a pool of its
/// own: browsers reach it as often as the TLS port).
pub async fn run_redirect(
    listener: TcpListener,
    tls_port: u16,
    max_connections: usize,
    drain: Arc<Drain>,
) {
    let mut phase = drain.subscribe();
    let serve = serve_plain(listener, max_connections, move |req, _| {
        let resp =
            match redirect_location(&req, tls_port).and_then(|l| HeaderValue::from_str(&l).ok()) {
                Some(loc) => {
                    let mut r = text(StatusCode::PERMANENT_REDIRECT, "");
                    r.headers_mut().insert(header::LOCATION, loc);
                    r
                }
                None => text(StatusCode::BAD_REQUEST, "no Host header to redirect to\n"),
            };
        async move { Ok::<_, Infallible>(resp) }
    });
    tokio::select! {
        _ = serve => {}
        _ = crate::shutdown::reached(&mut phase, Phase::Closing) => {}
    }
}

async fn serve_plain<F, Fut>(listener: TcpListener, max_connections: usize, f: F)
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let f = f.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(tcp), service_fn(move |req| f(req, peer)));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(MAX_LIFETIME) => {}
            }
            // Finish the request in progress, if any, then close; a client
            // that does not read its answer is cut after the head timeout.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
        });
    }
}
