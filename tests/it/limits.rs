//! The limits (`--max-requests-in-flight`, `--max-connections`,
//! `--max-request-body`, `--max-header-bytes`), alone and under attack: the
//! answer past each (503, a paused accept, 413, 431), what reaches the
//! upstream meanwhile (nothing), and the lingering close that lets a refused
//! client read its 413.

use crate::support::*;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Sum of the chunk data in a (possibly cut) chunked body.
fn dechunk_len(mut b: &[u8]) -> usize {
    let mut total = 0;
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return total;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return total };
        if size == 0 {
            return total;
        }
        b = &b[eol + 2..];
        total += size.min(b.len());
        if b.len() < size + 2 {
            return total;
        }
        b = &b[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// --max-requests-in-flight

/// Past `--max-requests-in-flight`, a request is answered 503
/// `overloaded` at once with `Retry-After: 1`; the requests in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_requests_in_flight_is_503_at_once() {
    let (release, gate) = tokio::sync::watch::channel(false);
    let up = upstream_with(false, move |_| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Response::new(Full::new(Bytes::from_static(b"held")))
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_requests_in_flight = 2;
    })
    .await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (addr, roots) = (p.tls_addr, p.roots());
            tokio::spawn(async move { get(addr, roots, "/held").await })
        })
        .collect();
    eventually(MS(3000), "two requests held at the upstream", || async {
        (up.count() == 2).then_some(())
    })
    .await;

    let mut c = p.h1().await;
    let req = Request::get("/third")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let started = Instant::now();
    let got = collect(c.send_request(req).await.expect("response")).await;
    assert!(
        started.elapsed() < MS(200),
        "503 at once, took {:?}",
        started.elapsed()
    );
    let a = assert_answer(&got, 503, "overloaded", &[]);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(
        up.count(),
        2,
        "the third request never reached the upstream"
    );

    release.send(true).expect("release");
    for h in held {
        let got = tokio::time::timeout(MS(3000), h)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "held");
    }
    let text = p.metrics_text();
    assert_eq!(
        metric(
            &text,
            "portico_requests_total{route=\"default\",code=\"503\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "portico_requests_total{route=\"default\",code=\"200\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, &upstream_errors("overloaded")),
        None,
        "not an upstream error"
    );
}

/// `--max-requests-in-flight` under attack: with 8 slow requests parked,
/// every further request, on any route, is a 503 in under 100 ms; once the
/// slow ones finish, requests succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_requests_in_flight_503s_are_fast_and_service_recovers() {
    let _alone = alone().await;
    let (release, gate) = tokio::sync::watch::channel(false);
    let slow = upstream_with(false, move |_| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Response::new(Full::new(Bytes::from_static(b"slow")))
        }
    })
    .await;
    let fast = hello_upstream().await;
    let route = portico::routing::Route::parse(&format!("/fast={}", fast.url())).expect("route");
    let p = start(&slow.url(), move |cfg, _, _| {
        cfg.max_requests_in_flight = 8;
        cfg.routes.push(route);
    })
    .await;
    let parked: Vec<_> = (0..8)
        .map(|_| {
            let (addr, roots) = (p.tls_addr, p.roots());
            tokio::spawn(async move { get(addr, roots, "/slow").await })
        })
        .collect();
    eventually(MS(3000), "8 requests parked", || async {
        (slow.count() == 8).then_some(())
    })
    .await;
    let mut c = p.h1().await;
    let mut h2 = p.h2().await;
    for i in 0..40 {
        let path = if i % 2 == 0 { "/slow" } else { "/fast" };
        let started = Instant::now();
        let got = if i % 4 < 2 {
            send(&mut c, h1_get(path)).await
        } else {
            collect(
                h2.send_request(
                    Request::get(format!("https://localhost:{}{path}", p.tls_addr.port()))
                        .body(Full::new(Bytes::new()))
                        .expect("req"),
                )
                .await
                .expect("response"),
            )
            .await
        };
        let took = started.elapsed();
        assert_eq!(got.status, 503, "request {i} to {path}");
        assert_eq!(got.header("portico-error"), Some("overloaded"));
        assert_eq!(got.header("retry-after"), Some("1"));
        assert!(took < MS(100), "request {i} to {path}: 503 took {took:?}");
    }
    assert_eq!(slow.count(), 8, "no refused request reached an upstream");
    assert_eq!(fast.count(), 0);
    release.send(true).expect("release");
    for h in parked {
        let got = tokio::time::timeout(MS(3000), h)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!((got.status.as_u16(), got.text()), (200, "slow".to_string()));
    }
    for path in ["/slow", "/fast"] {
        let got = send(&mut c, h1_get(path)).await;
        assert_eq!(got.status, 200, "{path} after the slow ones finished");
    }
}

// ---------------------------------------------------------------------------
// --max-connections

/// `--max-connections`: past it, accepting pauses. A third TCP connect
/// succeeds in the kernel, but its handshake completes only once one of the
/// first two closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_pauses_at_max_connections() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_connections = 2;
    })
    .await;
    let first = raw_tls(&p).await;
    let _second = raw_tls(&p).await;

    let tcp = tokio::time::timeout(MS(1000), TcpStream::connect(p.tls_addr))
        .await
        .expect("kernel accepts the TCP connect")
        .expect("connect");
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(p.roots(), &[b"http/1.1"], None)));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let hs = connector.connect(name, tcp);
    tokio::pin!(hs);
    assert!(
        tokio::time::timeout(MS(500), &mut hs).await.is_err(),
        "the third handshake must wait for a free slot"
    );
    assert_eq!(p.metrics.connections_open.get(), 2);

    drop(first);
    let mut third = tokio::time::timeout(MS(2000), hs)
        .await
        .expect("handshake completes once a slot frees")
        .expect("handshake");
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let resp = read_response(&mut third).await.expect("response");
    assert_eq!(resp.status, 200);
}

/// `--max-connections` under attack: with 20 allowed, one healthy
/// keep-alive client connected first and 19 attackers holding the rest (plus
/// 20 more waiting), the healthy client keeps being served within 500 ms; a
/// new connection waits; once the attackers go, it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_client_is_served_while_attackers_hold_max_connections() {
    let _alone = alone().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_connections = 20;
        cfg.handshake_timeout = Duration::from_secs(8);
    })
    .await;
    let prober = Prober::start(&p).await;
    let mut attackers = Vec::new();
    for _ in 0..39 {
        attackers.push(TcpStream::connect(p.tls_addr).await.expect("connect"));
    }
    eventually(MS(3000), "20 connections open", || async {
        (p.metrics.connections_open.get() == 20).then_some(())
    })
    .await;
    let late = tokio::spawn({
        let (addr, roots) = (p.tls_addr, p.roots());
        async move {
            let started = Instant::now();
            let got = get(addr, roots, "/late").await;
            (got.status, started.elapsed())
        }
    });
    tokio::time::sleep(MS(700)).await;
    assert!(!late.is_finished(), "a new connection waits at the limit");
    assert_eq!(p.metrics.connections_open.get(), 20, "never more than 20");
    prober.finish(MS(500)).await;
    drop(attackers);
    let (status, waited) = tokio::time::timeout(MS(3000), late)
        .await
        .expect("served once the attackers left")
        .expect("task");
    assert_eq!(status, 200);
    assert!(waited >= MS(700), "{waited:?}");
}

// ---------------------------------------------------------------------------
// --max-request-body

/// portico with `--max-request-body 1000` in front of a hello upstream.
async fn start_with_body_limit_1000() -> (Upstream, Portico) {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_request_body = 1000;
    })
    .await;
    (up, p)
}

/// A declared body over `--max-request-body` gets 413 `body-too-large` at
/// once (before the body is sent), and the upstream sees no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_over_limit_is_413_at_once() {
    let (up, p) = start_with_body_limit_1000().await;
    let mut tls = raw_tls(&p).await;
    let started = Instant::now();
    tls.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("head");
    let resp = tokio::time::timeout(MS(1000), read_response(&mut tls))
        .await
        .expect("413 before the body is sent")
        .expect("a response");
    assert!(
        started.elapsed() < MS(500),
        "at once, took {:?}",
        started.elapsed()
    );
    let a = assert_answer(&resp, 413, "body-too-large", &[]);
    assert_eq!(a.connection.as_deref(), Some("close"));
    assert!(
        closed_within(&mut tls, MS(2000)).await.is_some(),
        "connection closed"
    );
    assert_eq!(up.count(), 0, "the upstream saw no request");

    // At the limit exactly is fine.
    let mut c = p.h1().await;
    let req = Request::post("/ok")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(vec![b'a'; 1000])))
        .expect("req");
    let got = collect(c.send_request(req).await.expect("response")).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().body.len(), 1000);
}

/// The 413 `body-too-large` for a declared body reaches an HTTP/2
/// client still sending that body, and the connection goes on serving (the
/// stream's request half is then reset, with NO_ERROR as RFC 9113 8.1 asks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_over_limit_is_413_over_h2_while_the_body_is_still_sent() {
    let (up, p) = start_with_body_limit_1000().await;
    let mut c = p.h2().await;
    // Far past the stream's flow-control window: most of it is unsent when
    // the answer comes.
    let body = Bytes::from(vec![b'x'; 4 << 20]);
    let req = Request::post(format!("https://localhost:{}/upload", p.tls_addr.port()))
        .header("content-length", body.len())
        .body(Full::new(body))
        .expect("req");
    let resp = tokio::time::timeout(MS(3000), c.send_request(req))
        .await
        .expect("an answer in time")
        .expect("the 413, not a reset stream");
    let got = collect(resp).await;
    assert_answer(&got, 413, "body-too-large", &[]);
    assert_eq!(up.count(), 0, "the upstream saw no request");
    // The connection still serves.
    let req = Request::get(format!("https://localhost:{}/after", p.tls_addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let after = collect(c.send_request(req).await.expect("response")).await;
    assert_eq!(after.status, 200);
}

/// The 413 `body-too-large` for a declared body reaches a client that
/// sends its whole body anyway before it reads (as curl does without
/// `Expect`): portico reads and discards what still comes after its answer
/// (a lingering close, as nginx's `lingering_close`), so its close is no
/// reset that would fail the client's writes and can destroy the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_that_keeps_sending_still_reads_its_413() {
    let (up, p) = start_with_body_limit_1000().await;
    let mut tls = raw_tls(&p).await;
    // Far more than the kernel's buffers on both ends take: without the
    // lingering close the write meets portico's reset.
    let body = vec![b'x'; 32 << 20];
    let started = Instant::now();
    tls.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("head");
    tokio::time::timeout(MS(10_000), tls.write_all(&body))
        .await
        .expect("the body is taken within 10 s")
        .expect("the whole body is written, not reset");
    tls.flush().await.expect("flush");
    read_413_then_close(&mut tls).await;
    assert_eq!(up.count(), 0, "the upstream saw no request");
    assert!(started.elapsed() < MS(12_000));
}

/// Reads a 413 `body-too-large` with `Connection: close` within 2 s, then the
/// connection's end within 2 s more.
async fn read_413_then_close(tls: &mut TlsStream<TcpStream>) {
    let resp = tokio::time::timeout(MS(2000), read_response(tls))
        .await
        .expect("an answer in time")
        .expect("a response");
    let a = assert_answer(&resp, 413, "body-too-large", &[]);
    assert_eq!(a.connection.as_deref(), Some("close"));
    assert!(
        closed_within(tls, MS(2000)).await.is_some(),
        "connection closed"
    );
}

/// Sends a POST declaring `declared` bytes (over the test's limit) and the
/// `first` of them; returns the connection once its 413 `body-too-large` has
/// been read.
async fn post_refused_413(p: &Portico, declared: usize, first: &[u8]) -> TlsStream<TcpStream> {
    let mut tls = raw_tls(p).await;
    let mut req =
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {declared}\r\n\r\n")
            .into_bytes();
    req.extend_from_slice(first);
    tls.write_all(&req).await.expect("head");
    tls.flush().await.expect("flush");
    let resp = tokio::time::timeout(MS(2000), read_response(&mut tls))
        .await
        .expect("an answer in time")
        .expect("a response");
    assert_answer(&resp, 413, "body-too-large", &[]);
    tls
}

/// The lingering close is bounded: a refused client that stops sending, and
/// does not close, holds its connection for 2 s after its last byte, not for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_close_ends_2s_after_the_refused_client_falls_quiet() {
    let (up, p) = start_with_body_limit_1000().await;
    let open = || metric(&p.metrics_text(), "portico_connections_open");
    let _tls = post_refused_413(&p, 1 << 20, &[b'x'; 256 << 10]).await;
    let quiet_from = Instant::now();
    tokio::time::sleep(MS(1200)).await;
    assert_eq!(
        open(),
        Some(1.0),
        "still lingering 1.2 s after the last byte"
    );
    let gone = eventually(MS(4000), "the lingering connection is closed", || async {
        (open() == Some(0.0)).then(|| quiet_from.elapsed())
    })
    .await;
    assert!(
        gone >= MS(1500) && gone < MS(3500),
        "closed {gone:?} after the client fell quiet"
    );
    assert_eq!(up.count(), 0);
}

/// The lingering close is bounded: a refused client that never stops sending
/// is read for 10 s after the answer, then the connection is closed and its
/// writes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_close_of_a_client_that_never_stops_sending_ends_after_10s() {
    let (_up, p) = start_with_body_limit_1000().await;
    let mut tls = post_refused_413(&p, 1 << 30, b"").await;
    let answered = Instant::now();
    let chunk = vec![b'x'; 16 << 10];
    let failed = loop {
        let sent = async {
            tls.write_all(&chunk).await?;
            tls.flush().await
        };
        if sent.await.is_err() {
            break answered.elapsed();
        }
        assert!(answered.elapsed() < MS(15_000), "still taken after 15 s");
        tokio::time::sleep(MS(50)).await;
    };
    assert!(
        failed >= MS(9_500) && failed < MS(12_500),
        "writes failed {failed:?} after the answer"
    );
    assert_eq!(
        metric(&p.metrics_text(), "portico_connections_open"),
        Some(0.0)
    );
}

/// Starts a chunked upload on a new connection and sends 4096 bytes of it
/// (the tests' `--max-request-body`) in four chunks.
async fn chunked_upload_of_4096(p: &Portico) -> TlsStream<TcpStream> {
    let mut tls = raw_tls(p).await;
    tls.write_all(
        b"POST /stream HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("head");
    let chunk = format!("400\r\n{}\r\n", "b".repeat(1024));
    for _ in 0..4 {
        tls.write_all(chunk.as_bytes()).await.expect("chunk");
    }
    tls
}

/// A streamed (chunked) body is cut off when it passes
/// `--max-request-body`: the client gets 413 `body-too-large`, and the
/// upstream never receives more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_over_limit_is_cut() {
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let r = received.clone();
    let up = RawUpstream::start(move |mut s| {
        let r = r.clone();
        async move {
            let (_, rest) = read_head(&mut s).await;
            r.lock().expect("lock").extend_from_slice(&rest);
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut chunk).await {
                r.lock().expect("lock").extend_from_slice(&chunk[..n]);
            }
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_request_body = 4096;
    })
    .await;
    let mut tls = chunked_upload_of_4096(&p).await;
    eventually(
        MS(3000),
        "the upstream streams the first 4096 bytes",
        || async { (dechunk_len(&received.lock().expect("lock")) == 4096).then_some(()) },
    )
    .await;
    // One more byte than the limit.
    tls.write_all(b"1\r\nc\r\n").await.expect("chunk");
    read_413_then_close(&mut tls).await;
    assert_eq!(
        dechunk_len(&received.lock().expect("lock")),
        4096,
        "never more than the limit"
    );
}

/// The same cut towards an h2c primary: the request body's error reaches
/// portico through the h2c client, and the client still gets 413
/// `body-too-large` (not a 502), with the upstream never seeing a complete
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_over_limit_is_cut_towards_an_h2c_upstream() {
    let up = upstream_with(true, |_| async {
        Response::new(Full::new(Bytes::from_static(b"read it all")))
    })
    .await;
    let p = start(&format!("h2c://{}", up.addr), |cfg, _, _| {
        cfg.max_request_body = 4096;
    })
    .await;
    let mut tls = chunked_upload_of_4096(&p).await;
    tokio::time::sleep(MS(200)).await;
    tls.write_all(b"1\r\nc\r\n").await.expect("chunk");
    read_413_then_close(&mut tls).await;
    // The upstream read its request to an error, never to a complete body.
    let seen = up.seen.lock().expect("lock");
    assert!(
        seen.iter().all(|s| s.body.len() != 4097),
        "the upstream got the whole over-limit body"
    );
}

// ---------------------------------------------------------------------------
// --max-header-bytes

/// A request head larger than `--max-header-bytes` is 431
/// `headers-too-large` over HTTP/1.1, and is not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_head_over_h1_is_431() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_header_bytes = 4096;
    })
    .await;
    let mut c = p.h1().await;
    let req = Request::get("/big")
        .header("host", "localhost")
        .header("x-big", "h".repeat(6 * 1024))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let got = collect(c.send_request(req).await.expect("response")).await;
    let a = assert_answer(&got, 431, "headers-too-large", &[]);
    assert_eq!(a.connection.as_deref(), Some("close"));
    assert_eq!(up.count(), 0);

    // A head under the limit passes.
    let mut c = p.h1().await;
    let req = Request::get("/small")
        .header("host", "localhost")
        .header("x-small", "s".repeat(2 * 1024))
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(
        collect(c.send_request(req).await.expect("response"))
            .await
            .status,
        200
    );
}

/// The same over HTTP/2: 431 `headers-too-large` with `Portico-Error`,
/// not forwarded; the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_head_over_h2_is_431() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_header_bytes = 4096;
    })
    .await;
    let mut c = p.h2().await;
    let uri = format!("https://localhost:{}/big", p.tls_addr.port());
    let req = Request::get(&uri)
        .header("x-big", "h".repeat(6 * 1024))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let got = collect(c.send_request(req).await.expect("response")).await;
    assert_answer(&got, 431, "headers-too-large", &[]);
    assert_eq!(up.count(), 0);
    let req = Request::get(&uri)
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(
        collect(c.send_request(req).await.expect("response"))
            .await
            .status,
        200
    );
}

/// Over-long request lines, at each limit in turn: a target that makes the head
/// pass `--max-header-bytes` is portico's 431 `headers-too-large`; one past
/// hyper's URI limit (65534 bytes) is hyper's 414; a head past hyper's buffer
/// (the backstop, twice `--max-header-bytes` plus 16 KiB) is hyper's plain
/// 431. Each closes the connection; none reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_request_lines_get_431_or_414_and_close() {
    let rec = Recorder::start().await;
    let p = start(&rec.url(), |cfg, _, _| {
        cfg.max_header_bytes = 32 * 1024;
    })
    .await;
    for (len, status, kind) in [
        (40_000, 431, Some("headers-too-large")),
        (70_000, 414, None),
        (200_000, 431, None),
    ] {
        let raw = format!(
            "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "a".repeat(len)
        );
        let (resp, closed) = send_raw(&p, raw.as_bytes()).await;
        let resp = resp.unwrap_or_else(|| panic!("{len}: no answer"));
        assert_eq!(resp.status, status, "{len}-byte target: {resp:?}");
        assert_eq!(resp.header("portico-error"), kind, "{len}-byte target");
        assert!(closed, "{len}-byte target: connection closed");
    }
    assert_eq!(rec.all(), b"", "nothing reached the upstream");
}
