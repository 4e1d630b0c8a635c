//! The connection and request timeouts (`--handshake-timeout`,
//! `--header-read-timeout`, `--idle-timeout`, `--body-timeout`,
//! `--request-timeout`): slow, silent and idle clients and upstreams are cut
//! when a timeout passes, and ones that keep moving are not.

use crate::support::h2raw::{self, RawH2};
use crate::support::*;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------
// --handshake-timeout and --header-read-timeout

/// `--handshake-timeout`: a TCP connection that never starts its TLS
/// handshake is closed, and counted as a failed handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_client_is_closed_after_handshake_timeout() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.handshake_timeout = MS(300);
    })
    .await;
    let mut tcp = TcpStream::connect(p.tls_addr).await.expect("connect");
    let took = closed_within(&mut tcp, MS(3000)).await.expect("closed");
    assert_between(took, MS(250), MS(2000), "handshake timeout");
    let text = p.metrics_text();
    assert_eq!(
        metric(&text, "portico_tls_handshakes_total{result=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "portico_tls_handshakes_total{result=\"ok\"}").unwrap_or(0.0),
        0.0
    );
}

/// 100 TCP connections that never send a ClientHello, while a healthy client
/// keeps getting answers within 500 ms and a new client still connects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connections_do_not_slow_a_healthy_client() {
    let _alone = alone().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.handshake_timeout = Duration::from_secs(8);
    })
    .await;
    let prober = Prober::start(&p).await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(p.tls_addr).await.expect("connect"));
    }
    eventually(MS(3000), "101 connections open", || async {
        (p.metrics.connections_open.get() == 101).then_some(())
    })
    .await;
    let started = Instant::now();
    let got = p.get("/new").await;
    assert_eq!(got.status, 200);
    assert!(
        started.elapsed() < MS(500),
        "a new client connected and was served in {:?}",
        started.elapsed()
    );
    prober.finish(MS(500)).await;
    assert_eq!(failed_handshakes(&p), 0.0, "none has timed out yet");
    drop(silent);
    assert_failed_handshakes(&p, 100.0).await;
}

/// `--header-read-timeout` runs from the first byte of a head to its end:
/// a slowloris trickling one header byte every 100ms is closed anyway, and the
/// upstream never sees a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_after_header_read_timeout() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(500);
        cfg.idle_timeout = Duration::from_secs(10);
    })
    .await;
    let tls = raw_tls(&p).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    wr.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("head start");
    let trickle = tokio::spawn(async move {
        for b in b"X-Slow: ".iter().chain([b'a'; 64].iter()).cycle().take(40) {
            tokio::time::sleep(MS(100)).await;
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut rd, MS(3000))
        .await
        .expect("closed despite the trickle");
    assert_between(took, MS(450), MS(2000), "header-read timeout");
    assert_between(started.elapsed(), MS(450), MS(2000), "header-read timeout");
    trickle.abort();
    assert_eq!(up.count(), 0, "the upstream never got a request");
}

/// `--header-read-timeout` on a new connection runs from the end of the
/// handshake: a client that sends nothing after it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_client_is_closed_after_header_read_timeout() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(500);
        cfg.idle_timeout = Duration::from_secs(10);
    })
    .await;
    let mut tls = raw_tls(&p).await;
    let took = closed_within(&mut tls, MS(3000)).await.expect("closed");
    assert_between(
        took,
        MS(450),
        MS(2000),
        "header-read timeout after the handshake",
    );
}

// ---------------------------------------------------------------------------
// --idle-timeout

/// `--idle-timeout`: a keep-alive connection with nothing in flight and no
/// byte of a next request is closed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h1_connection_is_closed_after_idle_timeout() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.idle_timeout = MS(500);
        cfg.header_read_timeout = Duration::from_secs(10);
    })
    .await;
    let mut tls = raw_tls(&p).await;
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("req");
    let resp = read_response(&mut tls).await.expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello from upstream");
    assert_eq!(resp.header("connection"), None, "kept alive");
    let took = closed_within(&mut tls, MS(3000)).await.expect("closed");
    assert_between(took, MS(450), MS(2000), "idle timeout");
}

/// `--idle-timeout` only counts idle time: a connection sending a request
/// every 200ms for 2s (4x the timeout) stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_h1_connection_outlives_idle_timeout() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.idle_timeout = MS(500);
        cfg.header_read_timeout = Duration::from_secs(10);
    })
    .await;
    let mut tls = raw_tls(&p).await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < MS(2000) {
        tls.write_all(format!("GET /{n} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .expect("request on the same connection");
        let resp = read_response(&mut tls)
            .await
            .expect("response on the same connection");
        assert_eq!(resp.status, 200);
        n += 1;
        tokio::time::sleep(MS(200)).await;
    }
    assert!(n >= 8, "{n} requests");
    assert_eq!(up.count(), n);
    assert_eq!(
        p.metrics.connections_total.get(),
        1,
        "all on one connection"
    );
}

/// `--idle-timeout` over HTTP/2: after its request, an idle connection is
/// sent GOAWAY and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connection_is_closed_after_idle_timeout() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.idle_timeout = MS(500);
        cfg.header_read_timeout = Duration::from_secs(10);
    })
    .await;
    let tls = tls_connect(
        p.tls_addr,
        "localhost",
        client_config(p.roots(), &[b"h2"], None),
    )
    .await
    .expect("tls");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = conn.await;
        let _ = ended_tx.send((Instant::now(), r.is_ok()));
    });
    let req = Request::get(format!("https://localhost:{}/h2", p.tls_addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let got = collect(send.send_request(req).await.expect("response")).await;
    assert_eq!(got.status, 200);
    let idle_from = Instant::now();
    let (ended, clean) = tokio::time::timeout(MS(3000), ended_rx)
        .await
        .expect("closed within 3s")
        .expect("conn task");
    assert_between(ended - idle_from, MS(450), MS(2000), "h2 idle timeout");
    assert!(clean, "a graceful GOAWAY, not an error");
    assert!(send.is_closed());
}

// ---------------------------------------------------------------------------
// --request-timeout

/// `--request-timeout` runs "from the complete request (head, and body if
/// any, forwarded)": a body the client sends over longer than the timeout is
/// not cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_starts_after_a_slow_client_body() {
    let up = upstream_with(false, |s| async move {
        Response::new(Full::new(Bytes::from(format!("got {}", s.body.len()))))
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.request_timeout = MS(300);
    })
    .await;
    let mut tls = raw_tls(&p).await;
    let started = Instant::now();
    tls.write_all(b"POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n")
        .await
        .expect("head");
    for _ in 0..5 {
        tokio::time::sleep(MS(150)).await;
        tls.write_all(&[b'a'; 1000]).await.expect("chunk");
    }
    let resp = read_response(&mut tls).await.expect("a response");
    assert!(
        started.elapsed() >= MS(750),
        "the body took longer than the timeout"
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"got 5000");
    assert_eq!(up.last().body.len(), 5000);
}

/// The same with an upstream that reads a large body slowly: the body is still
/// being forwarded after `--request-timeout` has passed since the head, and
/// the request is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_starts_after_an_upstream_reads_the_body() {
    const LEN: usize = 4 << 20;
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let read_done = Arc::new(Mutex::new(None::<Instant>));
    let rd = read_done.clone();
    let up = RawUpstream::on(sock, move |mut s| {
        let rd = rd.clone();
        async move {
            let (_, rest) = read_head(&mut s).await;
            let mut got = rest.len();
            let mut chunk = vec![0u8; 32 * 1024];
            while got < LEN {
                tokio::time::sleep(MS(5)).await;
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            *rd.lock().expect("lock") = Some(Instant::now());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.request_timeout = MS(300);
    })
    .await;
    let mut c = p.h1().await;
    let req = Request::post("/big")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(vec![b'z'; LEN])))
        .expect("req");
    let started = Instant::now();
    let got = collect(c.send_request(req).await.expect("response")).await;
    let took = started.elapsed();
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.text(), "ok");
    let read_at = read_done
        .lock()
        .expect("lock")
        .expect("upstream read the body");
    assert!(
        read_at - started > MS(600),
        "the upstream took {:?} (> 2x the timeout) to read the body; total {took:?}",
        read_at - started
    );
}

// ---------------------------------------------------------------------------
// --body-timeout

/// `--body-timeout`: a response body that stalls is cut; the client sees
/// the body fail, and the upstream connection is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_response_body_is_cut_after_body_timeout() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<Duration>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let up = RawUpstream::start(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            // Readiness probes connect and close without a request.
            if read_head(&mut s).await.0.is_empty() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await;
            if let Some(took) = closed_within(&mut s, MS(5000)).await {
                if let Some(tx) = closed_tx.lock().expect("lock").take() {
                    let _ = tx.send(took);
                }
            }
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.body_timeout = MS(300);
    })
    .await;
    let mut c = p.h1().await;
    let req = Request::get("/stall")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = c.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    let head_at = Instant::now();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let err = loop {
        match tokio::time::timeout(MS(3000), body.frame())
            .await
            .expect("cut within 3s")
        {
            Some(Ok(f)) => got.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly after {} bytes", got.len()),
        }
    };
    assert_between(
        head_at.elapsed(),
        MS(250),
        MS(2000),
        "response body timeout",
    );
    assert_eq!(
        got, b"0123456789",
        "the part before the stall arrived ({err})"
    );
    let up_closed = tokio::time::timeout(MS(3000), closed_rx)
        .await
        .expect("upstream closed")
        .expect("tx");
    assert!(
        up_closed < MS(2000),
        "upstream connection closed after {up_closed:?}"
    );
}

/// Sends a POST declaring 1000 bytes of body and the first 100 of them, then
/// nothing more.
async fn stalled_upload(p: &Portico) -> TlsStream<TcpStream> {
    let mut tls = raw_tls(p).await;
    tls.write_all(b"POST /stall HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("head");
    tls.write_all(&[b'x'; 100]).await.expect("part of the body");
    tls
}

/// `--body-timeout`: a request body that stalls is cut: the client's
/// connection and the upstream's are closed (the client first gets portico's
/// 400 `bad-request`, since no response head had been sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cut_after_body_timeout() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<usize>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let up = RawUpstream::start(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            let (head, rest) = read_head(&mut s).await;
            if head.is_empty() {
                return; // a readiness probe
            }
            let mut n = rest.len();
            let mut chunk = [0u8; 4096];
            while let Ok(Ok(k @ 1..)) = tokio::time::timeout(MS(5000), s.read(&mut chunk)).await {
                n += k;
            }
            if let Some(tx) = closed_tx.lock().expect("lock").take() {
                let _ = tx.send(n);
            }
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.body_timeout = MS(300);
    })
    .await;
    let mut tls = stalled_upload(&p).await;
    let stalled = Instant::now();
    let resp = tokio::time::timeout(MS(3000), read_response(&mut tls))
        .await
        .expect("in time");
    let took = stalled.elapsed();
    assert_between(took, MS(250), MS(2000), "request body timeout");
    // portico answers its own 400 (the request could not be forwarded whole)
    // and closes: the rest of the body may still come.
    let resp = resp.expect("an answer before the close");
    let a = assert_answer(&resp, 400, "bad-request", &[]);
    assert_eq!(a.connection.as_deref(), Some("close"));
    assert!(
        closed_within(&mut tls, MS(2000)).await.is_some(),
        "client connection closed"
    );
    let n = tokio::time::timeout(MS(3000), closed_rx)
        .await
        .expect("upstream closed")
        .expect("tx");
    assert_eq!(
        n, 100,
        "the upstream got the part that was sent, then its connection was closed"
    );
}

/// The same stall towards an h2c primary: the client still gets portico's
/// 400 `bad-request` for its own stalled body, not a 502 for the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_towards_an_h2c_upstream_is_a_bad_request() {
    let up = upstream_with(true, |_| async {
        Response::new(Full::new(Bytes::from_static(b"read it all")))
    })
    .await;
    let p = start(&format!("h2c://{}", up.addr), |cfg, _, _| {
        cfg.body_timeout = MS(300);
    })
    .await;
    let mut tls = stalled_upload(&p).await;
    let resp = tokio::time::timeout(MS(3000), read_response(&mut tls))
        .await
        .expect("in time")
        .expect("an answer before the close");
    let a = assert_answer(&resp, 400, "bad-request", &[]);
    assert_eq!(a.connection.as_deref(), Some("close"));
}

/// A client that asks for a large response and never reads it (HTTP/1.1):
/// hyper stops polling the body once the socket is full, so the body's own
/// timer never runs. After `--body-timeout` with no byte taken, portico closes
/// the client connection and the upstream's: the upstream connection is not
/// held for ever, nor is the in-flight permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_its_response_frees_the_upstream_after_body_timeout() {
    let (up, mut up_closed) = big_upstream(64 << 20).await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.body_timeout = MS(500);
        cfg.max_requests_in_flight = 1;
    })
    .await;
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = sock.connect(p.tls_addr).await.expect("connect");
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(p.roots(), &[b"http/1.1"], None)));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    let started = Instant::now();
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    // Never read. The upstream connection must be closed within a few seconds.
    let at = tokio::time::timeout(MS(5000), up_closed.recv())
        .await
        .expect("the upstream connection is closed within 5s")
        .expect("upstream");
    let took = at - started;
    assert!(took >= MS(450), "not before --body-timeout: {took:?}");
    // The permit is back: with --max-requests-in-flight 1, a request is served.
    let got = p.get("/probe").await;
    assert_eq!(got.status, 200, "the in-flight permit was released");
    assert!(
        closed_within(&mut tls, MS(3000)).await.is_some(),
        "the client connection was closed"
    );
}

/// A slow upload, one byte every 100 ms with `--body-timeout 1s`, is not cut:
/// bytes keep moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_that_keeps_moving_outlives_body_timeout() {
    let up = upstream_with(false, |s| async move {
        Response::new(Full::new(Bytes::from(format!("got {}", s.body.len()))))
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.body_timeout = MS(1000);
    })
    .await;
    let mut tls = raw_tls(&p).await;
    let started = Instant::now();
    tls.write_all(b"POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 25\r\n\r\n")
        .await
        .expect("head");
    for _ in 0..25 {
        tokio::time::sleep(MS(100)).await;
        tls.write_all(b"s").await.expect("a byte");
    }
    let resp = read_response_within(&mut tls, MS(3000))
        .await
        .expect("a response");
    assert!(started.elapsed() >= MS(2500), "the upload took 2.5 s");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"got 25");
    assert_eq!(&up.last().body[..], &[b's'; 25][..]);
}

/// A response body the client reads slowly but steadily (HTTP/2, a window
/// update every 100 ms for 1.5 s, `--body-timeout 1s`) is not cut: the client
/// keeps taking bytes. (With a 500 ms timeout, one window update held up for
/// 400 ms on a loaded machine running the suites in parallel cut it: 2 runs in
/// 13.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_that_keeps_reading_outlives_body_timeout() {
    let (up, _up_closed) = big_upstream(256 * 1024).await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.body_timeout = MS(1000);
    })
    .await;
    let mut c = RawH2::open(&p, &[(0x4, 16 * 1024)], true).await;
    assert!(
        c.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            1,
            &h2raw::request(false, "/big", &[]),
        ))
        .await
    );
    let started = Instant::now();
    // 16 KiB per 100 ms on the stream and the connection.
    let mut granted = 16 * 1024;
    while granted < 256 * 1024 {
        tokio::time::sleep(MS(100)).await;
        let inc = (16 * 1024u32).to_be_bytes();
        assert!(c.send(&h2raw::frame(8, 0, 1, &inc)).await, "stream open");
        assert!(
            c.send(&h2raw::frame(8, 0, 0, &inc)).await,
            "connection open"
        );
        granted += 16 * 1024;
    }
    let deadline = Instant::now() + MS(3000);
    loop {
        let missing = {
            let s = c.seen.lock().expect("lock");
            (s.data.get(&1) != Some(&(256 * 1024))).then(|| {
                format!(
                    "{:?} bytes, closed {:?}, resets {:?}",
                    s.data.get(&1),
                    s.closed,
                    s.resets
                )
            })
        };
        let Some(state) = missing else { break };
        assert!(
            Instant::now() < deadline,
            "the whole body within 3 s of the last window update: {state}"
        );
        tokio::time::sleep(MS(25)).await;
    }
    assert!(started.elapsed() >= MS(1400), "{:?}", started.elapsed());
    let s = c.seen.lock().expect("lock");
    assert_eq!(s.closed, None, "the connection stayed open");
    assert!(s.resets.is_empty(), "{:?}", s.resets);
}

/// `--body-timeout` cuts a body that moves no byte, not a slow one: an
/// upstream trickling a byte every 50 ms (`--body-timeout 1s`) delivers its
/// whole body, over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_trickling_its_body_completes_within_body_timeout() {
    let up = RawUpstream::after_head(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
            .await;
        for i in 0..30u8 {
            tokio::time::sleep(MS(50)).await;
            if s.write_all(&[b'a' + i % 26]).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.body_timeout = MS(1000);
    })
    .await;
    let expected: Vec<u8> = (0..30u8).map(|i| b'a' + i % 26).collect();
    let (mut c1, mut c2) = (p.h1().await, p.h2().await);
    let started = Instant::now();
    let r1 = c1.send_request(
        Request::get("/trickle")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("req"),
    );
    let r2 = c2.send_request(
        Request::get(format!("https://localhost:{}/trickle", p.tls_addr.port()))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    );
    let (r1, r2) = tokio::join!(r1, r2);
    let (g1, g2) = tokio::join!(collect(r1.expect("h1")), collect(r2.expect("h2")));
    assert!(started.elapsed() >= MS(1400), "{:?}", started.elapsed());
    assert_eq!(
        (g1.status, &g1.body[..]),
        (http::StatusCode::OK, &expected[..])
    );
    assert_eq!(
        (g2.status, &g2.body[..]),
        (http::StatusCode::OK, &expected[..])
    );
}
