//! What portico reports about itself: `/metrics` as Prometheus text with
//! every family of docs/reference.md and its labels, counters that rise by
//! exactly what happened (requests per route, connections, handshakes,
//! certificate reloads), and the access log's TLS fields.

use crate::support::*;

use std::time::Duration;

use http::StatusCode;
use hyper_util::rt::TokioIo;
use portico::routing::Route;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// A PEM leaf's notAfter, unix seconds.
fn not_after(pem: &str) -> f64 {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    cert.validity().not_after.timestamp() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_is_prometheus_text_with_every_documented_family_and_its_labels() {
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
async fn metrics_requests_rise_by_exactly_n_per_route_labelled_with_the_route_text() {
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

/// One request over `tls` (HTTP/1.1, `Connection: close`); its status.
async fn get_on(tls: tokio_rustls::client::TlsStream<TcpStream>, path: &str) -> StatusCode {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let resp = send.send_request(h1_get(path)).await.expect("response");
    collect(resp).await.status
}

/// `--access-log`: each line names the connection's TLS version and SNI,
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
