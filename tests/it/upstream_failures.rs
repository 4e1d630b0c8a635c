//! Upstreams that fail: refused, missing, hanging, silent, closing early,
//! resetting, answering garbage or a head too large or framed in doubt, and
//! restarted under a pool. Each is portico's 502 or 504 with its
//! `Portico-Error` kind, counted in `portico_upstream_errors_total`, or a
//! body cut so the client cannot take it for whole.

use crate::support::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

// ---------------------------------------------------------------------------
// 502

/// 502 `connect-refused` when the upstream refused the connection, and it
/// is counted in `portico_upstream_errors_total{route,kind}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_is_502_and_counted() {
    let (dead, _hold) = dead_port().await;
    let p = start(&format!("http://{dead}"), |_, _, _| {}).await;
    let got = p.get("/x").await;
    assert_answer(&got, 502, "connect-refused", &[&dead.port().to_string()]);

    let text = p.metrics_text();
    let line = text
        .lines()
        .find(|l| l.starts_with("portico_upstream_errors_total{") && l.contains("connect-refused"))
        .unwrap_or_else(|| panic!("no connect-refused series in:\n{text}"));
    assert_eq!(line, format!("{} 1", upstream_errors("connect-refused")));
    assert_eq!(
        metric(&text, &upstream_errors("connect-refused")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "portico_requests_total{route=\"default\",code=\"502\"}"
        ),
        Some(1.0)
    );
}

/// 502 `connect-failed` for any other connect error (a Unix socket that
/// does not exist); the body does not name the socket path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unix_socket_is_502_connect_failed() {
    let p = start("unix:/nonexistent/sock", |_, _, _| {}).await;
    let got = p.get("/").await;
    assert_answer(
        &got,
        502,
        "connect-failed",
        &["/nonexistent", "sock", "unix:"],
    );
    assert_eq!(
        metric(&p.metrics_text(), &upstream_errors("connect-failed")),
        Some(1.0)
    );
}

/// 502 `upstream-reset` when the upstream closes before a complete
/// response head: here it reads the whole request, then closes without a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_is_502_upstream_reset() {
    let heads = Arc::new(AtomicUsize::new(0));
    let h = heads.clone();
    let up = RawUpstream::start(move |mut s| {
        let h = h.clone();
        async move {
            let (head, _) = read_head(&mut s).await;
            if head.starts_with(b"GET /reset HTTP/1.1\r\n") {
                h.fetch_add(1, Ordering::SeqCst);
            }
            drop(s);
        }
    })
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let got = p.get("/reset").await;
    assert_answer(&got, 502, "upstream-reset", &[&up.addr.port().to_string()]);
    assert_eq!(
        heads.load(Ordering::SeqCst),
        1,
        "the upstream read the request exactly once"
    );
    assert_eq!(
        metric(&p.metrics_text(), &upstream_errors("upstream-reset")),
        Some(1.0)
    );
}

/// 502 `upstream-reset` when the upstream sends half a response head and
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_head_is_502_upstream_reset() {
    let up = RawUpstream::start(|mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: te").await;
        let _ = s.flush().await;
        drop(s);
    })
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let got = p.get("/").await;
    assert_answer(&got, 502, "upstream-reset", &[]);
}

/// 502 `upstream-reset`: an upstream that answers `100 Continue`, then
/// dies before a final response head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sending_100_continue_then_dying_is_502_upstream_reset() {
    let up = RawUpstream::after_head(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let _ = s.flush().await;
        tokio::time::sleep(MS(50)).await;
    })
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut c = p.h1().await;
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("req");
    let started = Instant::now();
    let got = collect(c.send_request(req).await.expect("response")).await;
    assert_eq!(got.status, 502, "{got:?}");
    assert_eq!(got.header("portico-error"), Some("upstream-reset"));
    assert!(started.elapsed() < MS(2000), "{:?}", started.elapsed());
}

/// 502 `bad-upstream-response` when the upstream sends something that is
/// not HTTP: a line of garbage, and a status line with no valid status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_from_upstream_is_502_bad_upstream_response() {
    for answer in [
        &b"garbage\r\n\r\n"[..],
        &b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n"[..],
    ] {
        let up = RawUpstream::start(move |mut s| async move {
            let _ = read_head(&mut s).await;
            let _ = s.write_all(answer).await;
            // Hold the connection open: the verdict must come from the bytes.
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let p = start(&up.url(), |_, _, _| {}).await;
        let started = Instant::now();
        let got = p.get("/").await;
        assert_answer(&got, 502, "bad-upstream-response", &["garbage"]);
        assert!(
            started.elapsed() < MS(2000),
            "answered at once, not on close"
        );
        assert_eq!(
            metric(&p.metrics_text(), &upstream_errors("bad-upstream-response")),
            Some(1.0)
        );
    }
}

/// portico's answer to a GET when the primary writes `bytes` and then holds
/// the connection open for `hold` (so the verdict must come from the bytes),
/// and how long the answer took; the test fails unless it comes within 3 s.
async fn answer_to_upstream_bytes(bytes: String, hold: Duration) -> (Got, Duration) {
    let bytes = Arc::new(bytes);
    let sent = bytes.clone();
    let up = RawUpstream::after_head(move |mut s| {
        let bytes = sent.clone();
        async move {
            let _ = s.write_all(bytes.as_bytes()).await;
            tokio::time::sleep(hold).await;
        }
    })
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let head = bytes.lines().next().unwrap_or_default();
    let started = Instant::now();
    let got = tokio::time::timeout(MS(3000), p.get("/"))
        .await
        .unwrap_or_else(|_| panic!("{head:?} ({} bytes): an answer within 3s", bytes.len()));
    (got, started.elapsed())
}

/// 502 `bad-upstream-response`: an upstream that sends a huge header
/// block (200 KiB in 2,000 lines; and a single 2 MiB header, far past the
/// 64 KiB portico reads) gets a prompt 502, not a hang, though it holds its
/// connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sending_a_huge_header_block_is_502_bad_upstream_response() {
    for (what, head) in [
        ("2,000 headers", {
            let mut h = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..2000 {
                h.push_str(&format!("x-h{i:04}: {}\r\n", "v".repeat(92)));
            }
            h + "\r\n"
        }),
        (
            "one 2 MiB header",
            format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "v".repeat(2 << 20)),
        ),
    ] {
        let (got, took) = answer_to_upstream_bytes(head, Duration::from_secs(8)).await;
        assert_eq!(got.status, 502, "{what}");
        assert_eq!(
            got.header("portico-error"),
            Some("bad-upstream-response"),
            "{what}"
        );
        assert!(took < MS(2000), "{what}: {took:?}");
    }
}

/// portico reads an upstream in steps of at most 64 KiB, which bounds the
/// buffer an idle pooled connection keeps and the response head it takes
/// (a read may land up to twice that): a 60 KiB header reaches the client
/// intact, a 256 KiB one is portico's 502 `bad-upstream-response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_response_head_of_60kib_is_forwarded_and_one_of_256kib_is_502() {
    for (kib, status) in [(60usize, 200u16), (256, 502)] {
        let value = "v".repeat(kib * 1024);
        let (got, _) = answer_to_upstream_bytes(
            format!("HTTP/1.1 200 OK\r\nx-big: {value}\r\ncontent-length: 2\r\n\r\nok"),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(got.status, status, "{kib} KiB head");
        if status == 200 {
            assert_eq!(got.header("x-big"), Some(value.as_str()), "{kib} KiB head");
            assert_eq!(got.text(), "ok");
        } else {
            assert_eq!(got.header("portico-error"), Some("bad-upstream-response"));
        }
    }
}

/// 502 `bad-upstream-response`: a response head whose framing cannot be
/// trusted (two different `Content-Length`s, one that is not a number) is
/// refused, never forwarded with a guessed length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_conflicting_or_malformed_content_length_is_502_bad_upstream_response() {
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
        "HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok!",
        "HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok",
    ] {
        let (got, _) = answer_to_upstream_bytes(head.to_owned(), Duration::from_secs(3)).await;
        assert_eq!(got.status, 502, "{head:?}");
        assert_eq!(
            got.header("portico-error"),
            Some("bad-upstream-response"),
            "{head:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 504

/// A listener on 127.0.0.1 whose accept queue is full: connects to it hang
/// (the kernel drops their SYNs). Returns the address and what fills it.
async fn hanging_listener() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = sock.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(MS(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filler connect failed: {e}"),
            Err(_) => break,
        }
    }
    // Verify the approach: a further connect does not complete.
    assert!(
        tokio::time::timeout(MS(300), TcpStream::connect(addr))
            .await
            .is_err(),
        "connects to a full accept queue should hang"
    );
    (addr, listener, fillers)
}

/// 504 `connect-timeout` when `--connect-timeout` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_connect_is_504_connect_timeout() {
    let (addr, _listener, _fillers) = hanging_listener().await;
    let p = start(&format!("http://{addr}"), |cfg, _, _| {
        cfg.connect_timeout = MS(300);
    })
    .await;
    let started = Instant::now();
    let got = p.get("/").await;
    assert_between(
        started.elapsed(),
        MS(300),
        MS(2000),
        "connect-timeout answer",
    );
    assert_answer(&got, 504, "connect-timeout", &[&addr.port().to_string()]);
    assert_eq!(
        metric(&p.metrics_text(), &upstream_errors("connect-timeout")),
        Some(1.0)
    );
}

/// 504 `upstream-timeout` when the upstream accepts, reads the request and
/// never answers within `--request-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_504_upstream_timeout() {
    let up = RawUpstream::start(|mut s| async move {
        let _ = read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.request_timeout = MS(300);
    })
    .await;
    let started = Instant::now();
    let got = p.get("/").await;
    assert_between(
        started.elapsed(),
        MS(300),
        MS(2000),
        "upstream-timeout answer",
    );
    assert_answer(&got, 504, "upstream-timeout", &[]);
    assert_eq!(
        metric(&p.metrics_text(), &upstream_errors("upstream-timeout")),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------
// Bodies and connections in doubt

/// A chunked response that also states a length is read by its chunks (RFC
/// 9112: the coding wins), its trailers dropped for an HTTP/1.1 client that
/// did not ask for them, its length removed (RFC 9112 section 6.3), and its
/// connection is not used again: the framing was in doubt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_chunked_response_with_a_length_is_dechunked_and_its_connection_not_reused() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let up = RawUpstream::after_head(move |mut s| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = [0u8; 4096];
            let mut first = true;
            loop {
                let answer: &[u8] = if first {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
                      5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-trailer: t\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain"
                };
                first = false;
                if s.write_all(answer).await.is_err() {
                    return;
                }
                // The next request on this connection, if one comes.
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.admin_listen = None;
        cfg.ready_check = portico::config::ReadyCheck::None;
    })
    .await;
    let got = p.get("/").await;
    assert_eq!(
        (got.status.as_u16(), got.text()),
        (200, "hello!".to_string())
    );
    assert_eq!(got.header("content-length"), None, "{got:?}");
    for _ in 0..3 {
        let got = p.get("/").await;
        assert_eq!(
            (got.status.as_u16(), got.text()),
            (200, "hello!".to_string())
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "each doubtful response closed its connection"
    );
}

/// An upstream that resets its connection mid-body: the client sees the body
/// cut (an error reading it), never a clean, short "complete" response, over
/// HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_cuts_the_client_body() {
    let up = RawUpstream::after_head(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .await;
        let _ = s.write_all(&[b'r'; 10_000]).await;
        let _ = s.flush().await;
        tokio::time::sleep(MS(100)).await;
        // A reset, not a FIN.
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;
    for h2 in [false, true] {
        let resp = if h2 {
            p.h2()
                .await
                .send_request(
                    Request::get(format!("https://localhost:{}/cut", p.tls_addr.port()))
                        .body(Full::new(Bytes::new()))
                        .expect("req"),
                )
                .await
        } else {
            p.h1()
                .await
                .send_request(
                    Request::get("/cut")
                        .header("host", "localhost")
                        .body(Full::new(Bytes::new()))
                        .expect("req"),
                )
                .await
        }
        .expect("a response head");
        assert_eq!(resp.status(), 200, "h2={h2}");
        if !h2 {
            assert_eq!(resp.headers()["content-length"], "100000");
        }
        let mut body = resp.into_body();
        let mut got = 0;
        let err = loop {
            match tokio::time::timeout(MS(3000), body.frame())
                .await
                .expect("the body ends or fails within 3s")
            {
                Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => break e,
                None => panic!("h2={h2}: the body ended cleanly after {got} bytes"),
            }
        };
        assert!(got < 100_000, "h2={h2}: {got} bytes ({err})");
    }
}

/// An upstream that can be stopped (every connection closed) and started
/// again on the same port; it answers `200 ok` with keep-alive.
struct Restartable {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    served: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Restartable {
    async fn start(addr: SocketAddr, served: Arc<AtomicUsize>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the same port");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let s = served.clone();
        let mut st = stopped.clone();
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (mut c, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                    _ = st.changed() => return,
                };
                let mut st = stopped.clone();
                let s = s.clone();
                t.lock().expect("lock").push(tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        tokio::select! {
                            r = c.read(&mut chunk) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            },
                            _ = st.changed() => return,
                        }
                        while let Some(i) = find(&buf, b"\r\n\r\n") {
                            buf.drain(..i + 4);
                            s.fetch_add(1, Ordering::SeqCst);
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if c.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                }));
            }
        });
        tasks.lock().expect("lock").push(accept);
        Self {
            addr,
            stop,
            served,
            tasks,
        }
    }

    /// Closes the listener and every connection, and waits until they are.
    async fn stop(self) -> SocketAddr {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("lock"));
        for t in tasks {
            let _ = t.await;
        }
        self.addr
    }
}

/// Pooled connections to a restarted upstream are not reused broken: after
/// each restart on the same port (every old connection closed), the very next
/// request succeeds with 200, not 502, ten times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_to_a_restarted_upstream_are_not_reused_broken() {
    let served = Arc::new(AtomicUsize::new(0));
    let mut up = Restartable::start("127.0.0.1:0".parse().expect("addr"), served.clone()).await;
    let p = start(&format!("http://{}", up.addr), |_, _, _| {}).await;
    let mut c = p.h1().await;
    let got = send(&mut c, h1_get("/pooled")).await;
    assert_eq!(got.status, 200);
    for round in 0..10 {
        let addr = up.stop().await;
        up = Restartable::start(addr, served.clone()).await;
        let got = send(&mut c, h1_get("/pooled")).await;
        assert_eq!(got.status, 200, "round {round}: {got:?}");
        assert_eq!(got.text(), "ok");
    }
    assert_eq!(up.served.load(Ordering::SeqCst), 11);
}
