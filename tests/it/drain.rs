//! The drain (docs/reference.md, "Signals and exit codes"): walked in-process
//! and through the real binary by SIGTERM, SIGINT and `POST /shutdown`;
//! `--drain-delay` keeps serving while `/readyz` fails, then the listener
//! closes; requests in flight complete over HTTP/1.1 (`Connection: close`)
//! and HTTP/2 (GOAWAY); `--drain-timeout` cuts what is left; a second signal
//! exits at once.

use crate::support::h2raw::{frame, read_frame};
use crate::support::*;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use portico::shutdown::Phase;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

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

// ---------------------------------------------------------------------------
// In-process

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

/// The drain: a keep-alive connection with no request on it is closed at
/// once when the drain begins, and does not linger for a client that sends
/// nothing: the drain ends without waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_an_idle_silent_keepalive_connection_without_lingering() {
    let up = hello_upstream().await;
    let mut p = start(&up.url(), |_, _, _| {}).await;
    let mut tls = raw_tls(&p).await;
    tls.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let resp = read_response(&mut tls).await.expect("a response");
    assert_eq!(resp.status, 200);
    let t0 = Instant::now();
    p.drain.advance(portico::shutdown::Phase::Draining);
    tokio::time::timeout(MS(1000), &mut p.run)
        .await
        .expect("the drain ends within 1 s")
        .expect("join");
    assert!(t0.elapsed() < MS(1000), "took {:?}", t0.elapsed());
    assert_eq!(
        metric(&p.metrics_text(), "portico_connections_open"),
        Some(0.0)
    );
    drop(tls);
}

// ---------------------------------------------------------------------------
// Signals, through the binary

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
