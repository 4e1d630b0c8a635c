//! Errors, timeouts and limits: every answer portico makes itself (SPEC "Answers
//! portico makes itself"), the upstream error counter, the connection timeouts
//! (`--handshake-timeout`, `--header-read-timeout`, `--idle-timeout`,
//! `--body-timeout`, `--request-timeout`, `--connect-timeout`) and the limits
//! (`--max-connections`, `--max-requests-in-flight`, `--max-request-body`,
//! `--max-header-bytes`), over real sockets, real TLS and real upstreams.
mod support;
use support::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const MS: fn(u64) -> Duration = Duration::from_millis;

// ---------------------------------------------------------------------------
// Helpers local to this file.
// ---------------------------------------------------------------------------

/// What a test needs of a response to check a portico answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    error: Option<String>,
    content_type: Option<String>,
    retry_after: Option<String>,
    connection: Option<String>,
    body: String,
}

impl From<&Got> for Answer {
    fn from(g: &Got) -> Self {
        Self {
            status: g.status.as_u16(),
            error: g.header("portico-error").map(str::to_owned),
            content_type: g.header("content-type").map(str::to_owned),
            retry_after: g.header("retry-after").map(str::to_owned),
            connection: g.header("connection").map(str::to_owned),
            body: g.text(),
        }
    }
}

impl From<&RawResp> for Answer {
    fn from(r: &RawResp) -> Self {
        Self {
            status: r.status,
            error: r.header("portico-error").map(str::to_owned),
            content_type: r.header("content-type").map(str::to_owned),
            retry_after: r.header("retry-after").map(str::to_owned),
            connection: r.header("connection").map(str::to_owned),
            body: String::from_utf8_lossy(&r.body).into_owned(),
        }
    }
}

/// SPEC: each answer carries `Portico-Error: KIND` and a one-line `text/plain`
/// body that names no internal address.
#[track_caller]
fn assert_answer(a: impl Into<Answer>, status: u16, kind: &str, secrets: &[&str]) -> Answer {
    let a = a.into();
    assert_eq!(a.status, status, "status of {a:?}");
    assert_eq!(a.error.as_deref(), Some(kind), "Portico-Error of {a:?}");
    assert!(
        a.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "content-type of {a:?}"
    );
    let line = a.body.strip_suffix('\n').unwrap_or(&a.body);
    assert!(!line.trim().is_empty(), "empty body: {a:?}");
    assert!(
        !line.contains('\n') && !line.contains('\r'),
        "not one line: {a:?}"
    );
    for s in ["127.0.0.1", "[::1]", "localhost:"].iter().chain(secrets) {
        assert!(!a.body.contains(s), "body names {s:?}: {a:?}");
    }
    if kind != "overloaded" {
        assert_eq!(
            a.retry_after, None,
            "Retry-After only for overloaded: {a:?}"
        );
    }
    a
}

/// A raw TCP upstream on 127.0.0.1:0: `f` runs for each accepted connection.
struct RawUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_upstream<F, Fut>(f: F) -> RawUpstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    raw_upstream_on(TcpSocket::new_v4().expect("socket"), f).await
}

async fn raw_upstream_on<F, Fut>(sock: TcpSocket, f: F) -> RawUpstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = sock.listen(64).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(f(s));
        }
    });
    RawUpstream { addr, task }
}

#[track_caller]
fn assert_between(d: Duration, lo: Duration, hi: Duration, what: &str) {
    assert!(
        d >= lo && d <= hi,
        "{what}: took {d:?}, expected {lo:?}..{hi:?}"
    );
}

fn series(kind: &str) -> String {
    format!("portico_upstream_errors_total{{route=\"default\",kind=\"{kind}\"}}")
}

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
// 502
// ---------------------------------------------------------------------------

/// SPEC: 502 `connect-refused` when the upstream refused the connection, and it
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
    assert_eq!(line, format!("{} 1", series("connect-refused")));
    assert_eq!(metric(&text, &series("connect-refused")), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "portico_requests_total{route=\"default\",code=\"502\"}"
        ),
        Some(1.0)
    );
}

/// SPEC: 502 `connect-failed` for any other connect error (a Unix socket that
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
        metric(&p.metrics_text(), &series("connect-failed")),
        Some(1.0)
    );
}

/// SPEC: 502 `upstream-reset` when the upstream closes before a complete
/// response head: here it reads the whole request, then closes without a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_is_502_upstream_reset() {
    let heads = Arc::new(AtomicUsize::new(0));
    let h = heads.clone();
    let up = raw_upstream(move |mut s| {
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
        metric(&p.metrics_text(), &series("upstream-reset")),
        Some(1.0)
    );
}

/// SPEC: 502 `upstream-reset` when the upstream sends half a response head and
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_head_is_502_upstream_reset() {
    let up = raw_upstream(|mut s| async move {
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

/// SPEC: 502 `bad-upstream-response` when the upstream sends something that is
/// not HTTP: a line of garbage, and a status line with no valid status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_from_upstream_is_502_bad_upstream_response() {
    for answer in [
        &b"garbage\r\n\r\n"[..],
        &b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n"[..],
    ] {
        let up = raw_upstream(move |mut s| async move {
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
            metric(&p.metrics_text(), &series("bad-upstream-response")),
            Some(1.0)
        );
    }
}

// ---------------------------------------------------------------------------
// 504
// ---------------------------------------------------------------------------

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

/// SPEC: 504 `connect-timeout` when `--connect-timeout` passes.
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
        metric(&p.metrics_text(), &series("connect-timeout")),
        Some(1.0)
    );
}

/// SPEC: 504 `upstream-timeout` when the upstream accepts, reads the request and
/// never answers within `--request-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_504_upstream_timeout() {
    let up = raw_upstream(|mut s| async move {
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
        metric(&p.metrics_text(), &series("upstream-timeout")),
        Some(1.0)
    );
}

/// SPEC `--request-timeout` runs "from the complete request (head, and body if
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
    let up = raw_upstream_on(sock, move |mut s| {
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
// 503
// ---------------------------------------------------------------------------

/// SPEC: past `--max-requests-in-flight`, a request is answered 503
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
        metric(&text, &series("overloaded")),
        None,
        "not an upstream error"
    );
}

// ---------------------------------------------------------------------------
// 400, 413, 431
// ---------------------------------------------------------------------------

const CL_AND_TE: [&str; 2] = [
    "POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST /smuggle HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
];

/// SPEC (as amended): `Content-Length` with `Transfer-Encoding` is read by its
/// chunked framing (hyper's parser drops the length, RFC 9112 §6.3) and the
/// client connection closes after the answer, so no smuggling is possible. The chunked framing wins, the upstream gets one
/// request without `Content-Length` carrying exactly the chunked body, and the
/// client connection is closed after the answer, so no bytes left by the other
/// framing can be read as a next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_forwarded_as_chunked() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    for (i, head) in CL_AND_TE.iter().enumerate() {
        let mut tls = raw_tls(&p).await;
        tls.write_all(head.as_bytes()).await.expect("head");
        // Under Content-Length: 5 framing, `GET /smuggled` would be a second request.
        tls.write_all(b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("body");
        let resp = read_response(&mut tls).await.expect("a response");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        assert!(
            closed_within(&mut tls, MS(2000)).await.is_some(),
            "connection closed"
        );
        assert_eq!(up.count(), i + 1, "exactly one request forwarded");
        let seen = up.last();
        assert_eq!(seen.uri.path(), "/smuggle");
        assert_eq!(seen.headers.get("content-length"), None);
        assert_eq!(&seen.body[..], b"hello");
    }
}

/// SPEC: two different `Content-Length` values cannot be forwarded safely.
/// hyper's HTTP/1 parser refuses this head before portico sees it: its plain
/// 400 (no `Portico-Error`) and a closed connection, which SPEC accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_content_lengths_are_refused_by_the_parser() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut tls = raw_tls(&p).await;
    tls.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        .await
        .expect("write");
    let resp = read_response(&mut tls).await.expect("a response");
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.header("portico-error"), None, "hyper's own 400");
    assert!(
        closed_within(&mut tls, MS(2000)).await.is_some(),
        "connection closed"
    );
    assert_eq!(up.count(), 0);
}

/// portico with `--max-request-body 1000` in front of a hello upstream.
async fn start_with_body_limit_1000() -> (Upstream, Portico) {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.max_request_body = 1000;
    })
    .await;
    (up, p)
}

/// SPEC: a declared body over `--max-request-body` gets 413 `body-too-large` at
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

/// SPEC: the 413 `body-too-large` for a declared body reaches an HTTP/2
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

/// SPEC: the 413 `body-too-large` for a declared body reaches a client that
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

/// SPEC (drain): a keep-alive connection with no request on it is closed at
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

/// SPEC: a streamed (chunked) body is cut off when it passes
/// `--max-request-body`: the client gets 413 `body-too-large`, and the
/// upstream never receives more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_over_limit_is_cut() {
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let r = received.clone();
    let up = raw_upstream(move |mut s| {
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
    let mut tls = raw_tls(&p).await;
    tls.write_all(
        b"POST /stream HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("head");
    let chunk = format!("400\r\n{}\r\n", "b".repeat(1024));
    for _ in 0..4 {
        tls.write_all(chunk.as_bytes()).await.expect("chunk");
    }
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

/// SPEC: a request head larger than `--max-header-bytes` is 431
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

/// SPEC: the same over HTTP/2: 431 `headers-too-large` with `Portico-Error`,
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

// ---------------------------------------------------------------------------
// Connection timeouts
// ---------------------------------------------------------------------------

/// SPEC `--handshake-timeout`: a TCP connection that never starts its TLS
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

/// SPEC `--header-read-timeout` runs from the first byte of a head to its end:
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

/// SPEC `--header-read-timeout` on a new connection runs from the end of the
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

/// SPEC `--idle-timeout`: a keep-alive connection with nothing in flight and no
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

/// SPEC `--idle-timeout` only counts idle time: a connection sending a request
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

/// SPEC `--idle-timeout` over HTTP/2: after its request, an idle connection is
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

/// SPEC `--body-timeout`: a response body that stalls is cut; the client sees
/// the body fail, and the upstream connection is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_response_body_is_cut_after_body_timeout() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<Duration>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let up = raw_upstream(move |mut s| {
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

/// SPEC `--body-timeout`: a request body that stalls is cut: the client's
/// connection and the upstream's are closed (the client first gets portico's
/// 400 `bad-request`, since no response head had been sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cut_after_body_timeout() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<usize>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let up = raw_upstream(move |mut s| {
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
    let mut tls = raw_tls(&p).await;
    tls.write_all(b"POST /stall HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("head");
    tls.write_all(&[b'x'; 100]).await.expect("part of the body");
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

// ---------------------------------------------------------------------------
// --max-connections
// ---------------------------------------------------------------------------

/// SPEC `--max-connections`: past it, accepting pauses. A third TCP connect
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
