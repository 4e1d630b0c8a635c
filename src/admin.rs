//! Plain-HTTP servers off the data path: the admin server (`/healthz`,
//! `/readyz`, `/metrics`, `POST /shutdown`) and the `--redirect-listen` 308
//! redirector.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

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

fn admin(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
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
        (&Method::POST, "/shutdown") => {
            tracing::info!("drain requested by POST /shutdown");
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
    serve_plain(listener, move |req| {
        let resp = admin(&state, &req);
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

/// Answers every request with a 308 to the TLS listener.
pub async fn run_redirect(listener: TcpListener, tls_port: u16, drain: Arc<Drain>) {
    let mut phase = drain.subscribe();
    let serve = serve_plain(listener, move |req| {
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

async fn serve_plain<F, Fut>(listener: TcpListener, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let f = f.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service_fn(f));
            let _ = conn.await;
        });
    }
}
