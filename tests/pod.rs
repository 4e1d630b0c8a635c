//! Pod integration: the admin server (`/healthz`, `/readyz`, `/metrics`,
//! `POST /shutdown`), the drain walked by SIGTERM/SIGINT (in-process and through
//! the real binary), `--redirect-listen`, and the Dockerfile and deploy manifests
//! checked against what portico really exports.
mod support;
use support::*;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use portico::routing::Route;
use portico::shutdown::Phase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------- helpers

/// An upstream that answers `GET /sleep/MS` after MS milliseconds, anything else at once.
async fn sleepy_upstream() -> Upstream {
    upstream_with(false, |s| async move {
        let ms = s
            .uri
            .path()
            .strip_prefix("/sleep/")
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(Full::new(Bytes::from(format!("slept {ms}"))))
    })
    .await
}

fn admin(p: &Portico) -> SocketAddr {
    p.admin_addr.expect("admin server on")
}

async fn readyz(addr: SocketAddr) -> Got {
    plain_get(addr, "/readyz").await
}

/// `/readyz` until it answers `status` with `body`.
async fn ready_becomes(addr: SocketAddr, within: Duration, status: u16, body: &str) {
    let what = format!("/readyz answers {status} {body:?}");
    eventually(within, &what, || async {
        let g = readyz(addr).await;
        (g.status == status && g.text() == body).then_some(())
    })
    .await
}

/// GET on a plain listener, `None` when nothing accepts.
async fn try_plain_get(addr: SocketAddr, path: &str) -> Option<Got> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("req");
    Some(collect(send.send_request(req).await.ok()?).await)
}

async fn scrape(p: &Portico) -> String {
    let g = plain_get(admin(p), "/metrics").await;
    assert_eq!(g.status, 200);
    g.text()
}

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// A raw HTTP/1.x exchange: the status, the headers (names lower-cased) and the body.
async fn raw_exchange(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("answer within 5s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn h2_get(p: &Portico, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://localhost:{}{path}", p.tls_addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("req")
}

fn h1_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req")
}

async fn wait_seen(up: &Upstream, n: usize) {
    eventually(
        Duration::from_secs(3),
        "the upstream sees the requests",
        || async { (up.count() >= n).then_some(()) },
    )
    .await
}

/// Sample names in an exposition, with `_bucket`, `_sum` and `_count` stripped.
fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
        .map(|n| strip_histogram_suffix(n).to_string())
        .collect()
}

fn strip_histogram_suffix(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Every `portico_[a-z0-9_]+` token in `text`.
fn portico_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portico_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(strip_histogram_suffix(&tail[..end]).to_string());
        rest = &tail[end..];
    }
    out
}

/// A PEM leaf's notAfter, unix seconds.
fn not_after(pem: &str) -> f64 {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    cert.validity().not_after.timestamp() as f64
}

// ---------------------------------------------------------------- 1. /healthz and /readyz

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_200_ok_and_unknown_admin_paths_are_404() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let g = plain_get(admin(&p), "/healthz").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text().trim_end(), "ok");
    let g = plain_get(admin(&p), "/nope").await;
    assert_eq!(g.status, 404);
    let g = plain_get(admin(&p), "/healthzz").await;
    assert_eq!(g.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_ready_with_a_live_upstream_and_tcp_check() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.ready_check = portico::config::ReadyCheck::Tcp;
    })
    .await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_naming_a_refused_upstream() {
    let (dead, _hold) = dead_port().await;
    let url = format!("http://{dead}");
    let p = start(&url, |_, _, _| {}).await;
    let want = format!(
        "upstream http://127.0.0.1:{}: connection refused\n",
        dead.port()
    );
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;
    // Liveness is unaffected.
    assert_eq!(plain_get(admin(&p), "/healthz").await.status, 200);
}

/// Accepts TCP connections on `addr` and answers any request `200` (HTTP/1.1).
async fn listener_on(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let l = eventually(Duration::from_secs(2), "re-bind the same port", || async {
        TcpListener::bind(addr).await.ok()
    })
    .await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"up"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_upstream_going_down_and_coming_back_within_2s() {
    let up = hello_upstream().await;
    let addr = up.addr;
    let p = start(&up.url(), |_, _, _| {}).await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;

    drop(up);
    let t = Instant::now();
    let want = format!("upstream http://{addr}: connection refused\n");
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;
    println!("went down after {:?}", t.elapsed());

    let back = listener_on(addr).await;
    let t = Instant::now();
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
    println!("came back after {:?}", t.elapsed());

    back.abort();
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_http_check_needs_a_2xx_from_its_path() {
    let status = Arc::new(AtomicU16::new(200));
    let s2 = status.clone();
    let up = upstream_with(false, move |seen| {
        let code = if seen.uri.path() == "/health" {
            s2.load(Ordering::SeqCst)
        } else {
            404
        };
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"health")));
            *r.status_mut() = StatusCode::from_u16(code).expect("status");
            r
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.ready_check = portico::config::ReadyCheck::Http("/health".into());
    })
    .await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
    let last = up.last();
    assert_eq!(last.uri.path(), "/health");
    assert_eq!(last.method, http::Method::GET);

    status.store(500, Ordering::SeqCst);
    let want = format!(
        "upstream {}: GET /health answered 500 Internal Server Error\n",
        up.url()
    );
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;

    status.store(204, Ordering::SeqCst);
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_none_check_is_ready_even_with_a_dead_upstream() {
    let (dead, _hold) = dead_port().await;
    let p = start(&format!("http://{dead}"), |cfg, _, _| {
        cfg.ready_check = portico::config::ReadyCheck::None;
    })
    .await;
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "ready\n"));
    // It stays so: no check runs behind it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "ready\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_draining_once_a_drain_begins_while_healthz_stays_200() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.drain_delay = Duration::from_secs(2);
    })
    .await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
    p.drain.advance(Phase::Draining);
    // At once, not at the next check.
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (503, "draining\n"));
    assert_eq!(plain_get(admin(&p), "/healthz").await.status, 200);
}

// ---------------------------------------------------------------- 2. /metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_is_prometheus_text_with_every_spec_family_and_its_labels() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    assert_eq!(p.get("/x").await.status, 200);

    let g = plain_get(admin(&p), "/metrics").await;
    assert_eq!(g.status, 200);
    let ct = g.header("content-type").expect("content-type").to_string();
    let text = g.text();
    println!("content-type: {ct}\n{text}");
    if ct.starts_with("application/openmetrics-text") {
        assert!(ct.contains("version=1.0.0"), "{ct}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    } else {
        assert!(
            ct.starts_with("text/plain; version=0.0.4"),
            "not a Prometheus type: {ct}"
        );
    }

    for (family, kind) in [
        ("portico_requests", "counter"),
        ("portico_request_duration_seconds", "histogram"),
        ("portico_upstream_errors", "counter"),
        ("portico_connections_open", "gauge"),
        ("portico_connections", "counter"),
        ("portico_tls_handshakes", "counter"),
        ("portico_certificate_not_after_seconds", "gauge"),
        ("portico_certificate_reloads", "counter"),
        ("portico_build_info", "gauge"),
    ] {
        let line = format!("# TYPE {family} {kind}\n");
        assert!(text.contains(&line), "missing {line:?}");
    }

    assert_eq!(
        value(
            &text,
            r#"portico_requests_total{route="default",code="200"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"portico_request_duration_seconds_count{route="default"}"#
        ),
        1.0
    );
    assert!(
        value(
            &text,
            r#"portico_request_duration_seconds_sum{route="default"}"#
        ) > 0.0
    );
    assert_eq!(
        value(
            &text,
            r#"portico_request_duration_seconds_bucket{le="+Inf",route="default"}"#
        ),
        1.0
    );
    for kind in [
        "connect-refused",
        "connect-failed",
        "upstream-reset",
        "bad-upstream-response",
        "connect-timeout",
        "upstream-timeout",
    ] {
        let s = format!(r#"portico_upstream_errors_total{{route="default",kind="{kind}"}}"#);
        assert_eq!(value(&text, &s), 0.0, "{s}");
    }
    assert_eq!(value(&text, "portico_connections_total"), 1.0);
    assert!(metric(&text, "portico_connections_open").is_some());
    assert_eq!(
        value(&text, r#"portico_tls_handshakes_total{result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"portico_tls_handshakes_total{result="failed"}"#),
        0.0
    );
    assert_eq!(
        value(&text, r#"portico_certificate_reloads_total{result="ok"}"#),
        0.0
    );
    assert_eq!(
        value(
            &text,
            r#"portico_certificate_reloads_total{result="failed"}"#
        ),
        0.0
    );
    assert_eq!(value(&text, r#"portico_build_info{version="0.1.0"}"#), 1.0);

    // The expiry of the certificate in service, under its first DNS name.
    let pem = std::fs::read_to_string(p.dir.path().join("tls/tls.crt")).expect("cert");
    assert_eq!(
        value(
            &text,
            r#"portico_certificate_not_after_seconds{name="localhost"}"#
        ),
        not_after(&pem)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_requests_rise_by_exactly_n_per_route_labelled_with_the_route_spec_text() {
    let up = hello_upstream().await;
    let (dead, _hold) = dead_port().await;
    let api = format!("/api={}", up.url());
    let gone = format!("/gone=http://{dead}");
    let (a, g) = (api.clone(), gone.clone());
    let p = start(&up.url(), move |cfg, _, _| {
        cfg.routes = vec![
            Route::parse(&a).expect("route"),
            Route::parse(&g).expect("route"),
        ];
    })
    .await;
    let api_200 = format!(r#"portico_requests_total{{route="{api}",code="200"}}"#);
    let api_count = format!(r#"portico_request_duration_seconds_count{{route="{api}"}}"#);
    let def_200 = r#"portico_requests_total{route="default",code="200"}"#;
    let gone_502 = format!(r#"portico_requests_total{{route="{gone}",code="502"}}"#);
    let gone_refused =
        format!(r#"portico_upstream_errors_total{{route="{gone}",kind="connect-refused"}}"#);

    let before = scrape(&p).await;
    assert_eq!(metric(&before, &api_200), None, "no requests yet");
    assert_eq!(
        value(&before, &api_count),
        0.0,
        "route histograms exist before traffic"
    );
    assert_eq!(value(&before, &gone_refused), 0.0);

    let mut c = p.h1().await;
    for _ in 0..5 {
        c.ready().await.expect("keep-alive");
        let got = collect(c.send_request(h1_get("/api/x")).await.expect("resp")).await;
        assert_eq!(got.status, 200);
    }
    let mut c2 = p.h2().await;
    for _ in 0..2 {
        let got = collect(c2.send_request(h2_get(&p, "/api")).await.expect("resp")).await;
        assert_eq!(got.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(p.get("/apix").await.status, 200); // not on a segment boundary: default
    }
    let got = p.get("/gone/1").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("portico-error"), Some("connect-refused"));

    let after = scrape(&p).await;
    assert_eq!(value(&after, &api_200), 7.0);
    assert_eq!(value(&after, &api_count), 7.0);
    let le_inf = format!(r#"portico_request_duration_seconds_bucket{{le="+Inf",route="{api}"}}"#);
    assert_eq!(value(&after, &le_inf), 7.0);
    assert!(
        value(
            &after,
            &format!(r#"portico_request_duration_seconds_sum{{route="{api}"}}"#)
        ) > 0.0
    );
    assert_eq!(value(&after, def_200), 3.0);
    assert_eq!(value(&after, &gone_502), 1.0);
    assert_eq!(value(&after, &gone_refused), 1.0);
    assert_eq!(
        value(
            &after,
            &format!(r#"portico_upstream_errors_total{{route="{api}",kind="connect-refused"}}"#)
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_tls_connections_and_handshakes_including_plain_http_sent_to_the_tls_port() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let m0 = scrape(&p).await;
    assert_eq!(value(&m0, "portico_connections_total"), 0.0);
    assert_eq!(value(&m0, "portico_connections_open"), 0.0);

    // Two TLS connections held open.
    let mut a = p.h1().await;
    let mut b = p.h2().await;
    assert_eq!(
        collect(a.send_request(h1_get("/")).await.expect("resp"))
            .await
            .status,
        200
    );
    assert_eq!(
        collect(b.send_request(h2_get(&p, "/")).await.expect("resp"))
            .await
            .status,
        200
    );
    let m1 = scrape(&p).await;
    assert_eq!(value(&m1, "portico_connections_open"), 2.0);
    assert_eq!(value(&m1, "portico_connections_total"), 2.0);
    assert_eq!(
        value(&m1, r#"portico_tls_handshakes_total{result="ok"}"#),
        2.0
    );

    // Plain HTTP on the TLS port: the handshake fails; counted once.
    let mut tcp = TcpStream::connect(p.tls_addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink))
        .await
        .expect("portico closes the plain-HTTP connection");
    let text = eventually(
        Duration::from_secs(2),
        "the failed handshake is counted",
        || async {
            let t = p.metrics_text();
            (metric(&t, r#"portico_tls_handshakes_total{result="failed"}"#) == Some(1.0))
                .then_some(t)
        },
    )
    .await;
    assert_eq!(value(&text, "portico_connections_total"), 3.0);
    assert_eq!(
        value(&text, r#"portico_tls_handshakes_total{result="ok"}"#),
        2.0
    );

    drop(a);
    drop(b);
    drop(tcp);
    eventually(
        Duration::from_secs(3),
        "connections_open returns to 0",
        || async {
            (metric(&p.metrics_text(), "portico_connections_open") == Some(0.0)).then_some(())
        },
    )
    .await;
    assert_eq!(value(&scrape(&p).await, "portico_connections_total"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_certificate_reloads_failed_and_ok_and_follow_the_new_expiry() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.cert_poll_interval = Duration::from_millis(200);
    })
    .await;
    let dir = p.dir.path().join("tls");
    std::fs::write(
        dir.join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .expect("write");
    eventually(
        Duration::from_secs(3),
        "a failed reload is counted",
        || async {
            let t = p.metrics_text();
            (metric(&t, r#"portico_certificate_reloads_total{result="failed"}"#).unwrap_or(0.0)
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        p.get("/").await.status,
        200,
        "the last good pair stays in service"
    );

    let pair = p.pki.leaf(&["localhost"], |params| {
        params.not_after = rcgen::date_time_ymd(2040, 1, 2);
    });
    let tmp = p.dir.path().join("staging");
    pair.write_to(&tmp);
    // Key first, then the certificate, each by rename (whole files).
    std::fs::rename(tmp.join("tls.key"), dir.join("tls.key")).expect("rename key");
    std::fs::rename(tmp.join("tls.crt"), dir.join("tls.crt")).expect("rename crt");
    let want = not_after(&pair.cert_pem);
    eventually(Duration::from_secs(3), "the new pair is loaded", || async {
        let t = p.metrics_text();
        (metric(&t, r#"portico_certificate_reloads_total{result="ok"}"#).unwrap_or(0.0) >= 1.0
            && metric(
                &t,
                r#"portico_certificate_not_after_seconds{name="localhost"}"#,
            ) == Some(want))
        .then_some(())
    })
    .await;
}

// ---------------------------------------------------------------- 3. drain (in-process)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_serving_then_closes_the_listener_and_h1_h2_requests_in_flight_complete()
{
    let up = sleepy_upstream().await;
    let delay = Duration::from_millis(600);
    let mut p = start(&up.url(), |cfg, _, _| {
        cfg.drain_delay = delay;
        cfg.drain_timeout = Duration::from_secs(10);
    })
    .await;
    let mut c1 = p.h1().await;
    let mut c2 = p.h2().await;
    let r1 = tokio::spawn(c1.send_request(h1_get("/sleep/1200")));
    let r2 = tokio::spawn(c2.send_request(h2_get(&p, "/sleep/1200")));
    wait_seen(&up, 2).await;

    let t0 = Instant::now();
    p.drain.advance(Phase::Draining);
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (503, "draining\n"));

    // During the delay a new TLS connection is still served, as before.
    let got = p.get("/sleep/0").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "slept 0");
    assert!(t0.elapsed() < delay, "served inside the delay");

    // After the delay the listener is closed.
    eventually(
        Duration::from_secs(2),
        "new TCP connections are refused",
        || async { TcpStream::connect(p.tls_addr).await.is_err().then_some(()) },
    )
    .await;
    let refused_at = t0.elapsed();
    assert!(
        refused_at >= delay,
        "closed after {refused_at:?}, before the delay"
    );
    assert!(
        refused_at < delay + Duration::from_millis(500),
        "closed only after {refused_at:?}"
    );

    // The admin server stays up during the drain.
    assert_eq!(plain_get(admin(&p), "/healthz").await.status, 200);

    let got1 = collect(r1.await.expect("join").expect("h1 response")).await;
    assert_eq!(got1.status, 200);
    assert_eq!(got1.text(), "slept 1200");
    assert_eq!(
        got1.header("connection"),
        Some("close"),
        "HTTP/1.1 during the drain: Connection: close"
    );
    let got2 = collect(r2.await.expect("join").expect("h2 response")).await;
    assert_eq!(got2.status, 200);
    assert_eq!(got2.text(), "slept 1200");
    let last_done = t0.elapsed();

    // GOAWAY received: the HTTP/2 connection takes no new request.
    let again = tokio::time::timeout(
        Duration::from_secs(2),
        c2.send_request(h2_get(&p, "/sleep/0")),
    )
    .await
    .expect("fails, not hangs");
    assert!(
        again.is_err(),
        "a new request on the drained HTTP/2 connection must fail: {again:?}"
    );
    assert!(
        c1.send_request(h1_get("/")).await.is_err(),
        "HTTP/1.1 connection closed"
    );

    tokio::time::timeout(Duration::from_millis(1500), &mut p.run)
        .await
        .expect("run completes soon after the last request")
        .expect("join");
    let ended = t0.elapsed();
    println!("refused at {refused_at:?}, last response {last_done:?}, run ended {ended:?}");
    assert!(
        ended < delay + Duration::from_millis(1200 + 1500),
        "run ended at {ended:?}"
    );
    assert!(ended >= last_done.saturating_sub(Duration::from_millis(50)));
    // Still up after the drain, until the process exits.
    assert_eq!(plain_get(admin(&p), "/healthz").await.status, 200);
}

/// The frames of a minimal HTTP/2 client: `(type, flags, stream, payload)`.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_http2_goaway_and_closes_the_connection_after_the_stream_in_flight() {
    let up = sleepy_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let tls = tls_connect(
        p.tls_addr,
        "localhost",
        client_config(p.roots(), &[b"h2"], None),
    )
    .await
    .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                       // GET /sleep/800, HPACK: :method GET, :scheme https, :path and :authority literal.
    let mut block = vec![0x82, 0x87];
    for (idx, v) in [(0x04u8, "/sleep/800"), (0x01, "localhost")] {
        block.push(idx);
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    out.extend(frame(0x1, 0x5, 1, &block)); // HEADERS, END_STREAM | END_HEADERS
    wr.write_all(&out).await.expect("write");
    wait_seen(&up, 1).await;
    let t0 = Instant::now();
    p.drain.advance(Phase::Draining);

    // (event, when): "goaway", "status200", "end", "eof".
    let mut events: Vec<&str> = Vec::new();
    let mut goaways = Vec::new();
    let read = async {
        loop {
            match read_frame(&mut rd).await {
                Err(_) => {
                    events.push("eof");
                    break;
                }
                Ok((kind, flags, stream, payload)) => match kind {
                    0x4 if flags & 1 == 0 => {
                        wr.write_all(&frame(0x4, 1, 0, &[])).await.expect("ack")
                    }
                    0x6 if flags & 1 == 0 => wr
                        .write_all(&frame(0x6, 1, 0, &payload))
                        .await
                        .expect("pong"),
                    0x7 => {
                        let last =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                                & 0x7fff_ffff;
                        let code =
                            u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                        goaways.push((last, code));
                        events.push("goaway");
                    }
                    0x1 if stream == 1 => {
                        assert_eq!(payload.first(), Some(&0x88), "HPACK-indexed :status 200");
                        events.push("status200");
                        if flags & 1 != 0 {
                            events.push("end");
                        }
                    }
                    0x0 if stream == 1 && flags & 1 != 0 => events.push("end"),
                    0x3 if stream == 1 => panic!("stream 1 was reset"),
                    _ => {}
                },
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the connection closes");
    let closed = t0.elapsed();
    println!("events {events:?}, goaways {goaways:?}, closed after {closed:?}");
    let pos = |e: &str| {
        events
            .iter()
            .position(|x| *x == e)
            .unwrap_or_else(|| panic!("no {e} in {events:?}"))
    };
    assert!(
        pos("goaway") < pos("status200"),
        "GOAWAY comes while the stream is in flight"
    );
    assert!(pos("status200") < pos("end") && pos("end") < pos("eof"));
    assert!(
        goaways.iter().all(|&(_, code)| code == 0),
        "GOAWAY NO_ERROR: {goaways:?}"
    );
    assert!(
        goaways.iter().any(|&(last, _)| last >= 1),
        "stream 1 is kept: {goaways:?}"
    );
    tokio::time::timeout(Duration::from_secs(1), p.run)
        .await
        .expect("run ends once the connection is closed")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_answers_202_and_starts_the_same_drain_as_sigterm() {
    let up = sleepy_upstream().await;
    let mut p = start(&up.url(), |cfg, _, _| {
        cfg.redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let redirect = p.redirect_addr.expect("redirect on");
    assert_eq!(
        plain_get(admin(&p), "/shutdown").await.status,
        405,
        "GET does not drain"
    );
    assert_eq!(p.drain.phase(), Phase::Running);
    let mut c = p.h1().await;
    let slow = tokio::spawn(c.send_request(h1_get("/sleep/700")));
    wait_seen(&up, 1).await;

    let t0 = Instant::now();
    let g = plain_request(admin(&p), http::Method::POST, "/shutdown").await;
    assert_eq!(g.status, 202);
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (503, "draining\n"));
    eventually(
        Duration::from_secs(1),
        "the TLS listener closes",
        || async { TcpStream::connect(p.tls_addr).await.is_err().then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(1),
        "the redirect listener closes",
        || async { TcpStream::connect(redirect).await.is_err().then_some(()) },
    )
    .await;
    let got = collect(slow.await.expect("join").expect("response")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("connection"), Some("close"));
    tokio::time::timeout(Duration::from_secs(1), &mut p.run)
        .await
        .expect("drained")
        .expect("join");
    assert!(t0.elapsed() < Duration::from_millis(700 + 1500));
    assert_eq!(plain_get(admin(&p), "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_ends_run_at_the_deadline_with_a_request_still_in_flight() {
    let up = sleepy_upstream().await;
    let timeout = Duration::from_secs(1);
    let p = start(&up.url(), |cfg, _, _| {
        cfg.drain_timeout = timeout;
    })
    .await;
    let mut c = p.h1().await;
    let _slow = tokio::spawn(c.send_request(h1_get("/sleep/5000")));
    wait_seen(&up, 1).await;
    let t0 = Instant::now();
    p.drain.advance(Phase::Draining);
    tokio::time::timeout(Duration::from_secs(3), p.run)
        .await
        .expect("ends at the deadline")
        .expect("join");
    let ended = t0.elapsed();
    println!("run ended {ended:?} after the drain began");
    assert!(
        ended >= timeout - Duration::from_millis(50),
        "ended before the deadline: {ended:?}"
    );
    assert!(
        ended <= timeout + Duration::from_secs(1),
        "ended long after the deadline: {ended:?}"
    );
    assert_eq!(
        p.drain.requests.load(Ordering::Acquire),
        1,
        "one request cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_0_turns_the_limit_off_and_waits_for_the_request() {
    let up = sleepy_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.drain_timeout = Duration::ZERO;
    })
    .await;
    let mut c = p.h1().await;
    let slow = tokio::spawn(c.send_request(h1_get("/sleep/1500")));
    wait_seen(&up, 1).await;
    p.drain.advance(Phase::Draining);
    let mut run = p.run;
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), &mut run)
            .await
            .is_err(),
        "with --drain-timeout 0 the drain waits for requests in flight"
    );
    let got = collect(slow.await.expect("join").expect("response")).await;
    assert_eq!(got.status, 200);
    tokio::time::timeout(Duration::from_secs(1), run)
        .await
        .expect("drained")
        .expect("join");
}

// ---------------------------------------------------------------- 4. signals, through the binary

async fn signal_drains_the_request_in_flight_and_exits_0(sig: &str, use_h2: bool) {
    let up = sleepy_upstream().await;
    let mut bin = Bin::start(&up.url(), &[]).await;
    let slow = if use_h2 {
        let mut c = h2(bin.tls, bin.roots.clone()).await;
        let req = Request::get(format!("https://localhost:{}/sleep/1000", bin.tls.port()))
            .body(Full::new(Bytes::new()))
            .expect("req");
        tokio::spawn(async move { c.send_request(req).await })
    } else {
        let mut c = bin.h1().await;
        tokio::spawn(async move { c.send_request(h1_get("/sleep/1000")).await })
    };
    wait_seen(&up, 1).await;
    let t0 = Instant::now();
    bin.signal(sig);
    eventually(
        Duration::from_secs(1),
        "/readyz fails after the signal",
        || async {
            try_plain_get(bin.admin, "/readyz")
                .await
                .filter(|g| g.status == 503)
                .map(|_| ())
        },
    )
    .await;
    let got = collect(
        slow.await
            .expect("join")
            .expect("the request in flight completes"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "slept 1000");
    if !use_h2 {
        assert_eq!(got.header("connection"), Some("close"));
    }
    let st = bin.exit(Duration::from_millis(2500)).await;
    let took = t0.elapsed();
    println!("{sig}: exit {st} after {took:?}");
    assert_eq!(st.code(), Some(0), "{}", bin.logs());
    assert!(
        took < Duration::from_millis(1000 + 1500),
        "exit took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_h1_request_in_flight_complete_then_exits_0() {
    signal_drains_the_request_in_flight_and_exits_0("-TERM", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_the_h2_request_in_flight_complete_then_exits_0() {
    signal_drains_the_request_in_flight_and_exits_0("-INT", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_a_long_drain_exits_at_once() {
    let up = sleepy_upstream().await;
    let mut bin = Bin::start(&up.url(), &["--drain-timeout", "30s"]).await;
    let mut c = bin.h1().await;
    let slow = tokio::spawn(async move { c.send_request(h1_get("/sleep/20000")).await });
    wait_seen(&up, 1).await;
    bin.signal("-TERM");
    eventually(
        Duration::from_secs(1),
        "the first SIGTERM drains",
        || async {
            try_plain_get(bin.admin, "/readyz")
                .await
                .filter(|g| g.status == 503)
                .map(|_| ())
        },
    )
    .await;
    assert!(
        bin.child.try_wait().expect("try_wait").is_none(),
        "still draining after one signal"
    );
    let t0 = Instant::now();
    bin.signal("-TERM");
    let st = bin.exit(Duration::from_secs(1)).await;
    println!("second SIGTERM: exit {st} after {:?}", t0.elapsed());
    assert_eq!(st.code(), Some(0), "second signal exit status: {st}");
    let cut = tokio::time::timeout(Duration::from_secs(2), slow)
        .await
        .expect("the client sees the cut");
    assert!(
        cut.expect("join").is_err(),
        "the request in flight is cut, not answered"
    );
    assert!(bin.logs().contains("second signal"), "{}", bin.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_1s_fails_readyz_at_once_while_the_listener_accepts_for_1s() {
    let up = sleepy_upstream().await;
    let mut bin = Bin::start(&up.url(), &["--drain-delay", "1s"]).await;
    eventually(
        Duration::from_secs(2),
        "ready before the signal",
        || async {
            try_plain_get(bin.admin, "/readyz")
                .await
                .filter(|g| g.status == 200)
                .map(|_| ())
        },
    )
    .await;
    let t0 = Instant::now();
    bin.signal("-TERM");
    eventually(
        Duration::from_millis(300),
        "/readyz 503 right after SIGTERM",
        || async {
            try_plain_get(bin.admin, "/readyz")
                .await
                .filter(|g| g.status == 503 && g.text() == "draining\n")
                .map(|_| ())
        },
    )
    .await;
    let got = get(bin.tls, bin.roots.clone(), "/sleep/0").await;
    assert_eq!(got.status, 200);
    assert!(
        got.header("connection").is_none(),
        "before the delay ends nothing changes"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "served inside the delay"
    );
    eventually(
        Duration::from_secs(2),
        "the listener closes after the delay",
        || async { TcpStream::connect(bin.tls).await.is_err().then_some(()) },
    )
    .await;
    let closed = t0.elapsed();
    assert!(
        closed >= Duration::from_millis(950),
        "closed after {closed:?}"
    );
    let st = bin.exit(Duration::from_secs(2)).await;
    println!(
        "listener closed after {closed:?}, exit {st} after {:?}",
        t0.elapsed()
    );
    assert_eq!(st.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_a_slow_request_and_exits_0_at_the_deadline_counting_it() {
    let up = sleepy_upstream().await;
    let mut bin = Bin::start(&up.url(), &["--drain-timeout", "1s"]).await;
    let mut c = bin.h1().await;
    let slow = tokio::spawn(async move { c.send_request(h1_get("/sleep/5000")).await });
    wait_seen(&up, 1).await;
    let t0 = Instant::now();
    bin.signal("-TERM");
    let st = bin.exit(Duration::from_secs(3)).await;
    let took = t0.elapsed();
    println!("exit {st} after {took:?}");
    assert_eq!(st.code(), Some(0));
    assert!(
        took >= Duration::from_millis(950) && took <= Duration::from_secs(2),
        "exit after {took:?}"
    );
    let cut = tokio::time::timeout(Duration::from_secs(2), slow)
        .await
        .expect("the client sees the cut");
    assert!(cut.expect("join").is_err(), "the slow request is cut");
    let logs = bin.logs();
    assert!(
        logs.contains("WARN") && logs.contains("requests_cut=1"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_post_shutdown_continues_the_drain_instead_of_cutting_it() {
    // A preStop hook that POSTs /shutdown is followed by the kubelet's SIGTERM.
    let up = sleepy_upstream().await;
    let mut bin = Bin::start(&up.url(), &[]).await;
    let mut c = bin.h1().await;
    let slow = tokio::spawn(async move { c.send_request(h1_get("/sleep/1000")).await });
    wait_seen(&up, 1).await;
    let g = plain_request(bin.admin, http::Method::POST, "/shutdown").await;
    assert_eq!(g.status, 202);
    bin.signal("-TERM");
    let got = collect(
        slow.await
            .expect("join")
            .expect("the request in flight completes"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(bin.exit(Duration::from_secs(2)).await.code(), Some(0));
}

// ---------------------------------------------------------------- 5. --redirect-listen

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listener_answers_308_to_https_with_the_tls_port_path_and_query() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let r = p.redirect_addr.expect("redirect on");
    let port = p.tls_addr.port();
    let (status, headers, _) = raw_exchange(
        r,
        "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 308);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("https://example.com:{port}/a/b?x=1").as_str())
    );

    let (status, headers, _) =
        raw_exchange(r, "POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 308, "every method");
    assert_eq!(
        header(&headers, "location"),
        Some(format!("https://example.com:{port}/form").as_str())
    );

    let (status, headers, _) = raw_exchange(
        r,
        "GET /v6 HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 308);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("https://[::1]:{port}/v6").as_str())
    );

    let (status, headers, _) = raw_exchange(r, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "no Host: {headers:?}");
    assert_eq!(header(&headers, "location"), None);
}

/// `redirect_location` takes a hyper `Request<Incoming>`, which only a server
/// makes: serve one on loopback and call it with the TLS port set to 443.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_location_omits_the_port_when_the_tls_listener_is_on_443() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let loc = portico::admin::redirect_location(&req, 443)
                            .unwrap_or_else(|| "none".into());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            loc,
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    for (host, path, want) in [
        (
            "example.com:8080",
            "/a/b?x=1",
            "https://example.com/a/b?x=1",
        ),
        ("example.com", "/", "https://example.com/"),
        ("[::1]:80", "/p", "https://[::1]/p"),
    ] {
        let (status, _, body) = raw_exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body, want, "Host: {host}");
    }
    let (_, _, body) = raw_exchange(addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(body, "none", "no Host, no location");
}

// ---------------------------------------------------------------- 6. Dockerfile

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (ins, rest) = cur
                    .trim()
                    .split_once(char::is_whitespace)
                    .unwrap_or((cur.trim(), ""));
                out.push((ins.to_ascii_uppercase(), rest.trim().to_string()));
                cur.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_pins_every_base_image_and_runs_the_release_binary_as_non_root() {
    let ins = dockerfile();
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        froms.len() >= 2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for f in &froms {
        let image = f
            .split_whitespace()
            .find(|w| !w.starts_with("--"))
            .expect("image");
        let last = image.rsplit('/').next().expect("name");
        let (_, tag) = last
            .split_once(':')
            .unwrap_or_else(|| panic!("FROM {image} has no tag"));
        let tag = tag.split('@').next().unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest",
            "FROM {image} is not pinned"
        );
    }

    let final_start = ins.iter().rposition(|(i, _)| i == "FROM").expect("FROM");
    let (build, fin) = ins.split_at(final_start);
    let user = fin
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.as_str())
        .expect("final stage sets USER");
    let uid = user.split(':').next().expect("uid");
    assert!(uid != "root" && uid != "0", "USER {user} is root");
    assert!(uid.parse::<u32>().map_or(true, |n| n > 0), "USER {user}");
    let exposed: Vec<&str> = fin
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert!(
        exposed.contains(&"8443") && exposed.contains(&"9901"),
        "EXPOSE {exposed:?}"
    );

    let copy = fin
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first().is_some_and(|f| f.starts_with("--from=")))
        .expect("the final stage copies the binary from the build stage");
    assert_eq!(copy.len(), 3, "COPY --from=STAGE SRC DEST: {copy:?}");
    let (src, dest) = (copy[1], copy[2]);
    // The build stage puts the binary at SRC: by default the plain release
    // build, with PGO=1 the profile-guided build from benches/pgo.sh.
    assert!(
        build.iter().any(|(i, a)| i == "ARG" && a == "PGO=0"),
        "the profile-guided build is opt-in (ARG PGO=0)"
    );
    let put = build
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains(&format!("\" {src};")))
        .map(|(_, a)| a.as_str())
        .unwrap_or_else(|| panic!("no RUN in the build stage copies the binary to {src}"));
    assert!(
        put.contains("bin=$(bash benches/pgo.sh) && cp \"$bin\""),
        "PGO=1 builds with benches/pgo.sh: {put}"
    );
    assert!(
        put.contains(&format!("cp target/release/portico {src};")),
        "the default copies the plain release build: {put}"
    );
    let pgo = std::fs::read_to_string(Path::new(ROOT).join("benches/pgo.sh")).expect("pgo.sh");
    let pgo_builds: Vec<&str> = pgo.lines().filter(|l| l.contains("cargo build")).collect();
    assert_eq!(pgo_builds.len(), 2, "instrumented and optimised builds");
    for b in &pgo_builds {
        assert!(
            b.contains("cargo build --release --locked --bin portico"),
            "{b}"
        );
    }
    let entry = fin
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, a)| a.as_str())
        .expect("ENTRYPOINT");
    let first = entry
        .trim_start_matches('[')
        .split(',')
        .next()
        .expect("argv0")
        .trim()
        .trim_matches(|c| c == '"' || c == ']');
    assert_eq!(first, dest, "ENTRYPOINT runs what was copied");
    assert!(dest.ends_with("/portico"));

    let cargo = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).expect("Cargo.toml");
    let bin = cargo.split("[[bin]]").nth(1).expect("[[bin]] section");
    assert!(
        bin.lines()
            .any(|l| l.replace(' ', "") == "name=\"portico\""),
        "[[bin]] name is portico"
    );

    assert_eq!(
        build
            .iter()
            .rev()
            .find(|(i, _)| i == "WORKDIR")
            .map(|(_, a)| a.as_str()),
        Some("/src"),
        "the build stage works in /src"
    );
    let builds: Vec<&str> = build
        .iter()
        .filter(|(i, a)| i == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(!builds.is_empty());
    for b in &builds {
        assert!(b.contains("cargo build --release --locked"), "{b}");
    }
    assert!(
        Path::new(ROOT).join("Cargo.lock").is_file(),
        "--locked needs Cargo.lock"
    );
    if let Ok(o) = std::process::Command::new("git")
        .args(["-C", ROOT, "ls-files", "--error-unmatch", "Cargo.lock"])
        .output()
    {
        if String::from_utf8_lossy(&o.stderr).contains("not a git repository") {
            return;
        }
        assert!(o.status.success(), "Cargo.lock is not tracked by git");
    }
}

// ---------------------------------------------------------------- 7. manifests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let dashboard = std::fs::read_to_string(
        Path::new(ROOT).join("deploy/components/monitoring/dashboard.json"),
    )
    .expect("dashboard");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("dashboard.json is JSON");
    assert!(parsed.is_object());
    let rules = std::fs::read_to_string(
        Path::new(ROOT).join("deploy/components/monitoring/prometheusrule.yaml"),
    )
    .expect("rules");

    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    assert_eq!(p.get("/").await.status, 200);
    let exported = exported_families(&scrape(&p).await);
    println!("exported: {exported:?}");

    let mut used = BTreeSet::new();
    let mut strings = vec![&parsed];
    while let Some(v) = strings.pop() {
        match v {
            serde_json::Value::String(s) => used.extend(portico_names(s)),
            serde_json::Value::Array(a) => strings.extend(a),
            serde_json::Value::Object(o) => strings.extend(o.values()),
            _ => {}
        }
    }
    let from_rules = portico_names(&rules);
    assert!(!used.is_empty() && !from_rules.is_empty());
    used.extend(from_rules);
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used in deploy/ but not exported: {missing:?}"
    );
}

/// One request over `tls` (HTTP/1.1, `Connection: close`); its status.
async fn get_on(tls: tokio_rustls::client::TlsStream<TcpStream>, path: &str) -> StatusCode {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let resp = send.send_request(h1_get(path)).await.expect("response");
    collect(resp).await.status
}

/// SPEC `--access-log`: each line names the connection's TLS version and SNI,
/// for a full handshake, a resumed one (no certificate is chosen then) and a
/// client that sent no SNI (`-`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_names_the_tls_version_and_sni_of_full_resumed_and_nameless_handshakes() {
    let up = hello_upstream().await;
    let bin = Bin::start(&up.url(), &["--access-log", "on", "--log-format", "json"]).await;
    let cfg = client_config(bin.roots.clone(), &[b"http/1.1"], None);
    let full = tls_connect(bin.tls, "localhost", cfg.clone())
        .await
        .expect("full handshake");
    assert_eq!(
        full.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(get_on(full, "/sni-full").await, StatusCode::OK);
    let resumed = tls_connect(bin.tls, "localhost", cfg.clone())
        .await
        .expect("resumed handshake");
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert_eq!(get_on(resumed, "/sni-resumed").await, StatusCode::OK);
    // An IP address as the server name: rustls sends no SNI for it.
    let nameless = tls_connect(bin.tls, "127.0.0.1", cfg)
        .await
        .expect("handshake without SNI");
    assert_eq!(get_on(nameless, "/sni-none").await, StatusCode::OK);

    let line = |path: &str| {
        let logs = bin.logs();
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["path"] == path)
    };
    for (path, sni) in [
        ("/sni-full", "localhost"),
        ("/sni-resumed", "localhost"),
        ("/sni-none", "-"),
    ] {
        let v = eventually(Duration::from_secs(5), "the access log line", || async {
            line(path)
        })
        .await;
        assert_eq!(v["sni"], sni, "{path}: {v}");
        assert_eq!(v["tls"], "TLSv1.3", "{path}: {v}");
        assert_eq!(v["status"], 200, "{path}: {v}");
    }
}

/// One memory figure of a process (`VmRSS`, `RssAnon`, ...) from
/// `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// An idle portico's own memory (anonymous pages: heap, stacks; not the
/// mapped binary) is small. mimalloc asked for transparent huge pages for
/// its arena, which made 12 MiB of it resident at once: 13 MiB in all against
/// 1.4 MiB with `no_thp` (release build, 2 workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_portico_keeps_under_6_mib_of_anonymous_memory() {
    let up = sleepy_upstream().await;
    let bin = Bin::start(&up.url(), &[]).await;
    let mut c = bin.h1().await;
    let got = collect(c.send_request(h1_get("/sleep/0")).await.expect("response")).await;
    assert_eq!(got.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = bin.child.id().expect("running");
    let anon = status_kib(pid, "RssAnon");
    println!(
        "idle portico: RssAnon {anon} KiB, VmRSS {} KiB",
        rss_kib(pid)
    );
    // With THP "always" the kernel backs any aligned region with huge pages,
    // asked or not; the bound is for the usual "madvise" (and "never").
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[always]") {
        println!("transparent huge pages are [always] here: bound not checked");
        return;
    }
    assert!(anon <= 6 * 1024, "RssAnon {anon} KiB");
}

/// One request on each connection, all at once; every answer must be 200
/// with a body of `len` bytes.
async fn round(
    clients: &mut [hyper::client::conn::http1::SendRequest<Full<Bytes>>],
    path: &str,
    len: usize,
) {
    let calls = clients.iter_mut().map(|c| async move {
        c.ready().await.expect("connection ready");
        let got = collect(c.send_request(h1_get(path)).await.expect("response")).await;
        assert_eq!(
            (got.status, got.body.len()),
            (StatusCode::OK, len),
            "{path}"
        );
    });
    futures_util::future::join_all(calls).await;
}

/// A pooled upstream connection keeps the buffer its reads grew to while it
/// waits for its next request, so what it may read at once bounds what idle
/// connections hold: after 32 concurrent 2 MiB downloads, each on its own
/// upstream connection, idle portico holds at most 32 MiB more than after the
/// same 32 connections carried small answers. With 64 KiB reads it held
/// 10-13 MiB more (most of it what mimalloc keeps of the burst's freed
/// buffers: 4.5 MiB with the system allocator); with 1 MiB reads, 83 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_upstream_connections_keep_little_memory_after_large_downloads() {
    const BIG: usize = 2 << 20;
    let big = Bytes::from(vec![b'x'; BIG]);
    let up = upstream_with(false, move |s| {
        let body = if s.uri.path() == "/big" {
            big.clone()
        } else {
            Bytes::from_static(b"ok")
        };
        async move {
            // All 32 exchanges overlap: each needs its own upstream connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::new(Full::new(body))
        }
    })
    .await;
    let bin = Bin::start(&up.url(), &[]).await;
    let pid = bin.child.id().expect("running");
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(bin.h1().await);
    }
    for _ in 0..2 {
        round(&mut clients, "/small", 2).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid);
    for _ in 0..3 {
        round(&mut clients, "/big", BIG).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    println!("portico RSS {base} KiB after small answers, {after} KiB after large downloads");
    assert!(
        after <= base + 32 * 1024,
        "idle portico grew from {base} KiB to {after} KiB"
    );
}
