//! Hostile clients and broken upstreams (issue 6): request smuggling and
//! framing against an upstream that records the exact bytes it got, HTTP/2
//! abuse with hand-written frames (rapid reset, CONTINUATION, SETTINGS and PING
//! floods, a window that never opens), slow and idle clients, hostile TLS input,
//! broken upstreams, and the limits under attack. Real sockets, real TLS,
//! loopback only; each test bounded in time.
mod support;
use support::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Tests that measure the process (RSS, latency under a flood) hold this
/// exclusively and every other test holds it shared, so that no other test's
/// memory or load is charged to the one measuring.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

// ---------------------------------------------------------------------------
// Raw HTTP/1 helpers.
// ---------------------------------------------------------------------------

/// Reads one HTTP/1.1 response (body by Content-Length) within 3 s; `None` if
/// the stream ended before a complete head.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Option<RawResp> {
    tokio::time::timeout(MS(3000), support::read_response(s))
        .await
        .expect("a response (or a close) within 3s")
}

/// `GET path` on an open HTTP/1.1 connection, once it is ready for one.
async fn h1_get(c: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, path: &str) -> Got {
    c.ready().await.expect("h1 connection ready");
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req");
    collect(c.send_request(req).await.expect("response")).await
}

fn failed_handshakes(p: &Portico) -> f64 {
    metric(
        &p.metrics_text(),
        "portico_tls_handshakes_total{result=\"failed\"}",
    )
    .unwrap_or(0.0)
}

/// Waits until exactly `n` handshakes have failed (the counter moves just after
/// the socket closes), then checks it stays there.
async fn assert_failed_handshakes(p: &Portico, n: f64) {
    eventually(MS(3000), &format!("{n} failed handshakes"), || async {
        (failed_handshakes(p) >= n).then_some(())
    })
    .await;
    tokio::time::sleep(MS(100)).await;
    assert_eq!(failed_handshakes(p), n, "exactly {n} failed handshakes");
}

/// The process's resident set size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

// ---------------------------------------------------------------------------
// An upstream that records the exact bytes it receives.
// ---------------------------------------------------------------------------

/// The bytes each upstream connection received.
type Received = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A raw TCP upstream: each connection is read until it is idle for 150 ms,
/// then answered `200 ok` (if anything came), and read again until EOF. Every
/// byte is kept, per connection.
struct Recorder {
    addr: SocketAddr,
    conns: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Received = Arc::default();
        let c = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let rec = Arc::new(Mutex::new(Vec::new()));
                c.lock().expect("lock").push(rec.clone());
                tokio::spawn(async move {
                    let mut chunk = [0u8; 16 * 1024];
                    let mut pending = false;
                    loop {
                        match tokio::time::timeout(MS(150), s.read(&mut chunk)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => return,
                            Ok(Ok(n)) => {
                                rec.lock().expect("lock").extend_from_slice(&chunk[..n]);
                                pending = true;
                            }
                            Err(_) if pending => {
                                pending = false;
                                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                                if s.write_all(ok).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => {}
                        }
                    }
                });
            }
        });
        Self { addr, conns, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every connection that carried at least one byte, as bytes.
    fn received(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .expect("lock")
            .iter()
            .map(|r| r.lock().expect("lock").clone())
            .filter(|b| !b.is_empty())
            .collect()
    }

    /// All bytes received, over every connection.
    fn all(&self) -> Vec<u8> {
        self.received().concat()
    }

    /// The request lines the upstream could read, over every connection: any
    /// line shaped `METHOD TARGET HTTP/1.x`.
    fn request_lines(&self) -> Vec<String> {
        let all = self.all();
        String::from_utf8_lossy(&all)
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| {
                let mut parts = l.split(' ');
                let m = parts.next().unwrap_or("");
                let _target = parts.next();
                let v = parts.next().unwrap_or("");
                !m.is_empty()
                    && m.bytes().all(|b| b.is_ascii_uppercase())
                    && v.starts_with("HTTP/1.")
                    && parts.next().is_none()
            })
            .map(str::to_owned)
            .collect()
    }

    /// The one head the upstream received: request line and headers
    /// (lower-case names), and the bytes after it.
    fn only_request(&self) -> (String, Vec<(String, String)>, Vec<u8>) {
        let got = self.received();
        assert_eq!(
            got.len(),
            1,
            "one upstream connection carried bytes: {got:?}"
        );
        let bytes = &got[0];
        let end = find(bytes, b"\r\n\r\n").expect("a complete head with CRLF framing");
        let head = std::str::from_utf8(&bytes[..end]).expect("ASCII head");
        assert!(
            !head.replace("\r\n", "").contains('\n') && !head.replace("\r\n", "").contains('\r'),
            "every line of the forwarded head ends in CRLF: {head:?}"
        );
        let mut lines = head.split("\r\n");
        let line = lines.next().expect("request line").to_owned();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("name: value");
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        (line, headers, bytes[end + 4..].to_vec())
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Sends `raw` on a fresh HTTP/1.1 TLS connection; the answer (if any) and
/// whether the connection was then closed within 2 s.
async fn send_raw(p: &Portico, raw: &[u8]) -> (Option<RawResp>, bool) {
    let mut tls = raw_tls(p).await;
    tls.write_all(raw).await.expect("write");
    let resp = read_response(&mut tls).await;
    let closed = closed_within(&mut tls, MS(2000)).await.is_some();
    (resp, closed)
}

// ---------------------------------------------------------------------------
// 1. Request smuggling and framing (HTTP/1.1).
// ---------------------------------------------------------------------------

/// Issue 6: heads whose framing or syntax an upstream could read differently
/// are refused with 400 and a closed connection, and not one byte of them
/// reaches the upstream. (hyper's parser refuses them before portico sees
/// them: its plain 400, which SPEC accepts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_h1_heads_get_400_close_and_never_reach_the_upstream() {
    let _shared = SERIAL.read().await;
    let rec = Recorder::start().await;
    let p = start(&rec.url(), |_, _, _| {}).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cases: &[(&str, String)] = &[
        (
            "TE chunked, identity",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE identity",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello{smuggled}"),
        ),
        (
            "TE on HTTP/1.0",
            format!("POST /a HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE xchunked",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold continuation line",
            format!("GET /a HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold of Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "space inside a header name",
            format!("GET /a HTTP/1.1\r\nHost: localhost\r\nX Bad: 1\r\n\r\n{smuggled}"),
        ),
        (
            "space before the colon (TE)",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "NUL in a value",
            format!("GET /a HTTP/1.1\r\nHost: localhost\r\nX-Nul: a\0b\r\n\r\n{smuggled}"),
        ),
        (
            "bare CR in a value",
            format!("GET /a HTTP/1.1\r\nHost: localhost\r\nX-Cr: a\rX-Injected: 1\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length with a sign",
            format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
        ),
        (
            "space in the request target",
            format!("GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n{smuggled}"),
        ),
    ];
    for (what, raw) in cases {
        let (resp, closed) = send_raw(&p, raw.as_bytes()).await;
        let resp = resp.unwrap_or_else(|| panic!("{what}: no answer before the close"));
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        assert!(closed, "{what}: connection closed after the 400");
        assert_eq!(rec.all(), b"", "{what}: nothing reached the upstream");
    }
}

/// Issue 6: bare LF line endings are tolerated by hyper's parser (RFC 9112
/// §2.2 allows it); the request is forwarded once, re-framed with CRLF, its
/// body by a single Content-Length, and what followed it is a second request
/// the client sent on its own connection, not bytes smuggled into the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_head_is_forwarded_once_in_crlf_form() {
    let _shared = SERIAL.read().await;
    let rec = Recorder::start().await;
    let p = start(&rec.url(), |_, _, _| {}).await;
    let (resp, _) = send_raw(
        &p,
        b"POST /lf HTTP/1.1\nHost: localhost\nContent-Length: 5\n\nhello",
    )
    .await;
    let resp = resp.expect("an answer");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"ok");
    let (line, headers, body) = rec.only_request();
    assert_eq!(line, "POST /lf HTTP/1.1");
    assert_eq!(header(&headers, "content-length"), ["5"]);
    assert_eq!(header(&headers, "transfer-encoding"), Vec::<&str>::new());
    assert_eq!(header(&headers, "host"), ["localhost"]);
    assert_eq!(body, b"hello");
    assert_eq!(rec.request_lines(), ["POST /lf HTTP/1.1"]);
}

/// Issue 6: chunked bodies with an invalid chunk size (not hex, negative,
/// overflowing 64 bits, a bare-LF size line) are cut: the client gets 400 and a
/// closed connection, the upstream at most the head and the valid chunks
/// before the bad one, and never the request hidden after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_sizes_cut_the_request_and_smuggle_nothing() {
    let _shared = SERIAL.read().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for (what, body) in [
        ("not hex", format!("zz\r\nhello\r\n0\r\n\r\n{smuggled}")),
        ("negative", format!("-5\r\nhello\r\n0\r\n\r\n{smuggled}")),
        (
            "overflowing",
            format!("10000000000000005\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        ("0x prefix", format!("0x5\r\nhello\r\n0\r\n\r\n{smuggled}")),
        (
            "data longer than its size",
            format!("2\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
    ] {
        let rec = Recorder::start().await;
        let p = start(&rec.url(), |_, _, _| {}).await;
        let head = "POST /chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (resp, closed) = send_raw(&p, format!("{head}{body}").as_bytes()).await;
        let resp = resp.unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        assert!(closed, "{what}: connection closed");
        let lines = rec.request_lines();
        assert!(
            lines.iter().all(|l| l == "POST /chunks HTTP/1.1"),
            "{what}: only the cut request's head reached the upstream: {lines:?}"
        );
        assert!(
            find(&rec.all(), b"smuggled").is_none(),
            "{what}: the hidden request never reached the upstream"
        );
        // The upstream never got a complete chunked body: no last-chunk.
        let all = rec.all();
        let sent_body = find(&all, b"\r\n\r\n").map_or(&[][..], |i| &all[i + 4..]);
        assert!(
            find(sent_body, b"0\r\n\r\n").is_none(),
            "{what}: the upstream got no complete body: {:?}",
            String::from_utf8_lossy(sent_body)
        );
    }
}

/// RFC 9112 §3.2.2: with an absolute-form target, the target's authority is
/// the host and `Host` is ignored. portico routes on that authority and the
/// upstream sees it as `Host` (and `X-Forwarded-Host`): what portico routed on
/// and what the upstream reads are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_routes_and_sets_host_by_its_authority() {
    let _shared = SERIAL.read().await;
    let default = Recorder::start().await;
    let other = Recorder::start().await;
    let route =
        portico::routing::Route::parse(&format!("other.example/={}", other.url())).expect("route");
    let p = start(&default.url(), move |cfg, _, _| cfg.routes.push(route)).await;

    let (resp, _) = send_raw(
        &p,
        b"GET http://other.example/abs?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.expect("answer").status, 200);
    assert_eq!(
        default.all(),
        b"",
        "routed on the target's authority, not Host"
    );
    let (line, headers, _) = other.only_request();
    assert_eq!(
        line, "GET /abs?q=1 HTTP/1.1",
        "origin-form towards the upstream"
    );
    assert_eq!(header(&headers, "host"), ["other.example"]);
    assert_eq!(header(&headers, "x-forwarded-host"), ["other.example"]);

    // And the other way round: Host names the other route, the target does not.
    let (resp, _) = send_raw(
        &p,
        b"GET http://localhost:8443/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.expect("answer").status, 200);
    assert_eq!(
        other.received().len(),
        1,
        "no second request on the other route"
    );
    let (line, headers, _) = default.only_request();
    assert_eq!(line, "GET /abs HTTP/1.1");
    assert_eq!(header(&headers, "host"), ["localhost:8443"]);
}

/// RFC 9110 §4.2.4: userinfo in an `http` target is an error. portico routes on
/// the host alone, so forwarding `user@host` as `Host` would make the upstream
/// read a different (invalid) host than the one routed on: it is refused 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_with_userinfo_is_400() {
    let _shared = SERIAL.read().await;
    let rec = Recorder::start().await;
    let p = start(&rec.url(), |_, _, _| {}).await;
    let (resp, closed) = send_raw(
        &p,
        b"GET http://admin@localhost/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let resp = resp.expect("an answer");
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.header("portico-error"), Some("bad-request"));
    assert!(closed, "connection closed");
    assert_eq!(rec.all(), b"", "nothing reached the upstream");
}

/// Over-long request lines, at each limit in turn: a target that makes the head
/// pass `--max-header-bytes` is portico's 431 `headers-too-large`; one past
/// hyper's URI limit (65534 bytes) is hyper's 414; a head past hyper's buffer
/// (the backstop, twice `--max-header-bytes` plus 16 KiB) is hyper's plain
/// 431. Each closes the connection; none reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_request_lines_get_431_or_414_and_close() {
    let _shared = SERIAL.read().await;
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

/// `Content-Length` repeated: in list form (`5, 5`) hyper's parser refuses it
/// (400, nothing forwarded); as two equal lines it is forwarded as one plain
/// value, so the upstream never has to pick between readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_length_is_refused_or_forwarded_as_one_value() {
    let _shared = SERIAL.read().await;
    let rec = Recorder::start().await;
    let p = start(&rec.url(), |_, _, _| {}).await;
    let (resp, closed) = send_raw(
        &p,
        b"POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(resp.expect("an answer").status, 400);
    assert!(closed, "connection closed");
    assert_eq!(rec.all(), b"", "nothing forwarded");

    let (resp, _) = send_raw(
        &p,
        b"POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let resp = resp.expect("an answer");
    assert_eq!(resp.status, 200, "{resp:?}");
    let (_, headers, body) = rec.only_request();
    assert_eq!(header(&headers, "content-length"), ["5"], "{headers:?}");
    assert_eq!(body, b"hello");
    assert_eq!(rec.request_lines().len(), 1);
}

// ---------------------------------------------------------------------------
// A healthy client, probing while an attack runs.
// ---------------------------------------------------------------------------

/// A healthy HTTP/1.1 keep-alive client on its own connection, opened before
/// the attack, sending a request every 10 ms and timing each answer.
struct Prober {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Duration, Vec<String>)>,
}

impl Prober {
    async fn start(p: &Portico) -> Self {
        let mut c = p.h1().await;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut n, mut worst, mut failures) = (0, Duration::ZERO, Vec::new());
            while !s.load(Ordering::Relaxed) {
                let req = Request::get("/probe")
                    .header("host", "localhost")
                    .body(Full::new(Bytes::new()))
                    .expect("req");
                let started = Instant::now();
                match tokio::time::timeout(MS(2000), async {
                    let r = c.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = r.status();
                    r.into_body().collect().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(status)
                })
                .await
                {
                    Ok(Ok(s)) if s == 200 => {}
                    Ok(Ok(s)) => failures.push(format!("status {s}")),
                    Ok(Err(e)) => failures.push(e),
                    Err(_) => failures.push("no answer within 2s".into()),
                }
                worst = worst.max(started.elapsed());
                n += 1;
                if !failures.is_empty() {
                    break;
                }
                tokio::time::sleep(MS(10)).await;
            }
            (n, worst, failures)
        });
        Self { stop, task }
    }

    /// Stops probing and checks every answer was a 200 within `bound`.
    /// Probing goes on for 300 ms after the attack first.
    async fn finish(self, bound: Duration) -> usize {
        tokio::time::sleep(MS(300)).await;
        self.stop.store(true, Ordering::Relaxed);
        let (n, worst, failures) = tokio::time::timeout(MS(3000), self.task)
            .await
            .expect("prober stops")
            .expect("prober task");
        assert!(failures.is_empty(), "healthy client failed: {failures:?}");
        assert!(n >= 5, "healthy client made only {n} requests");
        assert!(
            worst < bound,
            "healthy client's slowest answer took {worst:?} (bound {bound:?}, {n} requests)"
        );
        n
    }
}

// ---------------------------------------------------------------------------
// A hand-rolled HTTP/2 client: frames written byte by byte.
// ---------------------------------------------------------------------------

mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix, `high` the bits above it.
    pub fn int(out: &mut Vec<u8>, n: u8, high: u8, v: usize) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(high | v as u8);
            return;
        }
        out.push(high | max as u8);
        let mut rest = v - max;
        while rest >= 128 {
            out.push((rest % 128 + 128) as u8);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    /// A literal header field without indexing, new name, no Huffman.
    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0);
        int(out, 7, 0, name.len());
        out.extend_from_slice(name);
        int(out, 7, 0, value.len());
        out.extend_from_slice(value);
    }

    /// A literal value for a static-table name (`:path` is 4, `:authority` 1).
    pub fn literal_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
        int(out, 4, 0, index);
        int(out, 7, 0, value.len());
        out.extend_from_slice(value);
    }

    /// `method` (`:method` GET is static 2, POST 3), `:scheme https`, `path`,
    /// `:authority localhost`, then `extra`.
    pub fn request(post: bool, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut b = vec![if post { 0x83 } else { 0x82 }, 0x87];
        literal_indexed_name(&mut b, 4, path.as_bytes());
        literal_indexed_name(&mut b, 1, b"localhost");
        for (n, v) in extra {
            literal(&mut b, n.as_bytes(), v.as_bytes());
        }
        b
    }

    pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in pairs {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }
}

/// What the server sent on a raw HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Seen {
    /// GOAWAY error code, if one came.
    goaway: Option<u32>,
    /// When the connection ended (EOF or error).
    closed: Option<Instant>,
    /// RST_STREAM frames: (stream, code).
    resets: Vec<(u32, u32)>,
    /// HEADERS frames: (stream, first byte of the block; 0x88 is `:status 200`).
    heads: Vec<(u32, u8)>,
    /// DATA payload bytes, by stream.
    data: std::collections::HashMap<u32, usize>,
    frames: usize,
}

/// A raw HTTP/2 connection over TLS: the write half, and a task reading and
/// recording every frame the server sends.
struct RawH2 {
    wr: tokio::io::WriteHalf<TlsStream<TcpStream>>,
    seen: Arc<Mutex<H2Seen>>,
    reader: tokio::task::JoinHandle<()>,
    /// For a client opened not reading: starts the reader.
    start_reading: Arc<tokio::sync::Notify>,
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

impl RawH2 {
    /// Connects (ALPN h2), sends the preface and `settings`, acknowledges the
    /// server's SETTINGS, then reads in the background (if `read`).
    async fn open(p: &Portico, settings: &[(u16, u32)], read: bool) -> Self {
        let sock = TcpSocket::new_v4().expect("socket");
        if !read {
            // A client that does not read: keep what the kernel buffers small.
            sock.set_recv_buffer_size(4096).expect("rcvbuf");
        }
        let tcp = sock.connect(p.tls_addr).await.expect("connect");
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(client_config(p.roots(), &[b"h2"], None)));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("tls");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(h2raw::PREFACE).await.expect("preface");
        tls.write_all(&h2raw::settings(settings))
            .await
            .expect("settings");
        loop {
            let (ty, flags, _, _) = tokio::time::timeout(MS(2000), read_frame(&mut tls))
                .await
                .expect("server SETTINGS in time")
                .expect("server SETTINGS");
            if ty == h2raw::SETTINGS && flags & h2raw::ACK == 0 {
                break;
            }
        }
        tls.write_all(&h2raw::frame(h2raw::SETTINGS, h2raw::ACK, 0, &[]))
            .await
            .expect("settings ack");
        let (mut rd, wr) = tokio::io::split(tls);
        let seen = Arc::new(Mutex::new(H2Seen::default()));
        let s = seen.clone();
        let start_reading = Arc::new(tokio::sync::Notify::new());
        let go = start_reading.clone();
        let reader = tokio::spawn(async move {
            if !read {
                go.notified().await;
            }
            loop {
                match read_frame(&mut rd).await {
                    Ok((ty, _, stream, payload)) => {
                        let mut s = s.lock().expect("lock");
                        s.frames += 1;
                        match ty {
                            h2raw::GOAWAY if payload.len() >= 8 => {
                                s.goaway = Some(u32::from_be_bytes([
                                    payload[4], payload[5], payload[6], payload[7],
                                ]));
                            }
                            h2raw::RST_STREAM if payload.len() == 4 => {
                                let code = u32::from_be_bytes([
                                    payload[0], payload[1], payload[2], payload[3],
                                ]);
                                s.resets.push((stream, code));
                            }
                            h2raw::HEADERS => {
                                s.heads
                                    .push((stream, payload.first().copied().unwrap_or(0)));
                            }
                            h2raw::DATA => *s.data.entry(stream).or_default() += payload.len(),
                            _ => {}
                        }
                    }
                    Err(_) => {
                        s.lock().expect("lock").closed = Some(Instant::now());
                        return;
                    }
                }
            }
        });
        Self {
            wr,
            seen,
            reader,
            start_reading,
        }
    }

    /// Writes `bytes`; false once the server has stopped taking them (closed,
    /// or not reading for 1 s).
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(MS(1000), self.wr.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// How long after `since` the server closed the connection, if within `limit`.
    async fn closed_within(&self, since: Instant, limit: Duration) -> Option<Duration> {
        let deadline = since + limit;
        loop {
            if let Some(at) = self.seen.lock().expect("lock").closed {
                return Some(at.saturating_duration_since(since));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(MS(10)).await;
        }
    }
}

const ENHANCE_YOUR_CALM: u32 = 0xb;
const PROTOCOL_ERROR: u32 = 0x1;

/// An upstream answering `/probe` with `ok` and anything else with `len`
/// bytes (keep-alive), that reports when portico closes a connection that
/// carried a large answer.
async fn big_upstream(
    len: usize,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Instant>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut big = false;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                'requests: loop {
                    let end = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'requests,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let probe = buf.starts_with(b"GET /probe ");
                    buf.drain(..end + 4);
                    if probe {
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    big = true;
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        break;
                    }
                    let block = vec![b'x'; 64 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(block.len());
                        if s.write_all(&block[..n]).await.is_err() {
                            break 'requests;
                        }
                        left -= n;
                    }
                }
                if big {
                    let _ = tx.send(Instant::now());
                }
            });
        }
    });
    (addr, rx, task)
}

// ---------------------------------------------------------------------------
// 2. HTTP/2 abuse.
// ---------------------------------------------------------------------------

/// CVE-2023-44487 (rapid reset): 5,000 streams opened and reset at once. The
/// offending connection is closed (GOAWAY ENHANCE_YOUR_CALM, or EOF) within a
/// bound, a healthy client on another connection keeps its answers under
/// 500 ms, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_closes_the_connection_and_others_stay_served() {
    let _serial = SERIAL.write().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    let mut c = RawH2::open(&p, &[], true).await;
    let block = h2raw::request(false, "/rapid", &[]);
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut sent = 0u32;
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        buf.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            id,
            &block,
        ));
        buf.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
        sent = i + 1;
        if buf.len() >= 32 * 1024 {
            if !c.send(&buf).await {
                break;
            }
            buf.clear();
        }
    }
    let _ = c.send(&buf).await;
    let took = c
        .closed_within(started, MS(5000))
        .await
        .expect("the offending connection is closed within 5s");
    let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
    assert_eq!(
        seen.goaway,
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY ENHANCE_YOUR_CALM after {sent} streams, {took:?}"
    );
    let rapid = up
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| s.uri.path() == "/rapid")
        .count();
    assert!(
        rapid <= 64,
        "{rapid} of {sent} reset streams reached the upstream"
    );
    prober.finish(MS(500)).await;
    assert_eq!(p.get("/after").await.status, 200, "served after the attack");
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// CVE-2024-27316 class (CONTINUATION flood): a HEADERS frame without
/// END_HEADERS followed by CONTINUATION frames without end, either carrying an
/// ever-growing header value or empty. The connection is closed within a
/// bound, memory stays bounded, other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_closes_the_connection_and_others_stay_served() {
    let _serial = SERIAL.write().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    for empty in [false, true] {
        let mut c = RawH2::open(&p, &[], true).await;
        let mut block = h2raw::request(false, "/cont", &[]);
        // A literal whose value claims 100 MB, its bytes to follow.
        block.push(0);
        h2raw::int(&mut block, 7, 0, 7);
        block.extend_from_slice(b"x-flood");
        h2raw::int(&mut block, 7, 0, 100_000_000);
        let started = Instant::now();
        let mut ok = c
            .send(&h2raw::frame(h2raw::HEADERS, h2raw::END_STREAM, 1, &block))
            .await;
        let filler = vec![b'a'; if empty { 0 } else { 16 * 1024 }];
        let one = h2raw::frame(h2raw::CONTINUATION, 0, 1, &filler);
        let batch: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * if empty { 4096 } else { 4 })
            .collect();
        let mut frames = 0;
        while ok && frames < 200_000 && started.elapsed() < MS(4000) {
            ok = c.send(&batch).await;
            frames += batch.len() / one.len();
        }
        let took = c.closed_within(started, MS(5000)).await.unwrap_or_else(|| {
            panic!("empty={empty}: connection closed within 5s ({frames} frames sent)")
        });
        let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
        assert_eq!(
            seen.goaway,
            Some(ENHANCE_YOUR_CALM),
            "empty={empty}: GOAWAY ENHANCE_YOUR_CALM after {frames} frames, {took:?}"
        );
        assert!(seen.heads.is_empty(), "no response to an unfinished head");
    }
    let paths: Vec<String> = up
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/probe"),
        "no flood request reached the upstream: {paths:?}"
    );
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// SETTINGS and PING floods from a client that reads: h2 answers each ACK in
/// turn and reads no further while one is unsent, so the flood costs what the
/// client itself reads. Memory stays bounded, a healthy client is served, and
/// the connection, which never sent a request, is closed by
/// `--header-read-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_settings_and_ping_floods_stay_bounded_and_others_stay_served() {
    let _serial = SERIAL.write().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(1000);
    })
    .await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    for ping in [false, true] {
        let mut c = RawH2::open(&p, &[], true).await;
        let one = if ping {
            h2raw::frame(h2raw::PING, 0, 0, b"pingpong")
        } else {
            h2raw::settings(&[(0x2, 0), (0x4, 65535)])
        };
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        let started = Instant::now();
        let mut sent = 0;
        while sent < 50_000 && c.send(&batch).await {
            sent += 1000;
        }
        let flood_took = started.elapsed();
        let took = c
            .closed_within(started, MS(4000))
            .await
            .unwrap_or_else(|| panic!("ping={ping}: closed within 4s"));
        let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
        assert!(
            seen.frames > sent,
            "ping={ping}: each of the {sent} frames got its ACK ({} frames back, flood took {flood_took:?})",
            seen.frames
        );
        assert_eq!(seen.goaway, Some(0), "ping={ping}: GOAWAY NO_ERROR");
        // --header-read-timeout, then as long again for the close to finish:
        // this client never answers the PING that follows the GOAWAY.
        assert!(
            took >= MS(1800) && took < MS(3500),
            "ping={ping}: closed after {took:?}"
        );
    }
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// A PING flood from a client that never reads: h2 stops reading it once its
/// answers cannot be written. When `--header-read-timeout` sends it GOAWAY,
/// that GOAWAY cannot be written either; the connection is still closed
/// (not held forever, holding a `--max-connections` slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ping_flood_from_a_client_that_never_reads_is_closed() {
    let _serial = SERIAL.write().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(500);
    })
    .await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    let mut c = RawH2::open(&p, &[], false).await;
    let one = h2raw::frame(h2raw::PING, 0, 0, b"pingpong");
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let started = Instant::now();
    let mut sent = 0;
    while sent < 2_000_000 && c.send(&batch).await {
        sent += 1000;
    }
    assert!(sent < 2_000_000, "portico stopped taking the flood");
    eventually(MS(4000), "the non-reading connection is closed", || async {
        (p.metrics.connections_open.get() == 1).then_some(())
    })
    .await;
    // --header-read-timeout, then as long again for the GOAWAY to go out.
    assert!(
        started.elapsed() < MS(3000),
        "closed after {:?}",
        started.elapsed()
    );
    c.start_reading.notify_one();
    assert!(
        c.closed_within(started, MS(8000)).await.is_some(),
        "the client sees the close"
    );
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// A client whose flow-control window never opens (no WINDOW_UPDATE, ever)
/// asking for 1 MiB: it gets the first 65,535 bytes, then, as the body moves
/// no byte for `--body-timeout`, its connection and the upstream's are
/// closed; the upstream connection is not held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_window_that_never_opens_is_cut_after_body_timeout() {
    let _serial = SERIAL.write().await;
    let (addr, mut up_closed, _up) = big_upstream(1 << 20).await;
    let p = start(&format!("http://{addr}"), |cfg, _, _| {
        cfg.body_timeout = MS(500);
    })
    .await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    let mut c = RawH2::open(&p, &[], true).await;
    let started = Instant::now();
    assert!(
        c.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            1,
            &h2raw::request(false, "/big", &[]),
        ))
        .await
    );
    let took = c
        .closed_within(started, MS(5000))
        .await
        .expect("the stalled connection is closed within 5s");
    let seen = std::mem::take(&mut *c.seen.lock().expect("lock"));
    assert_eq!(seen.heads, [(1, 0x88)], "a 200 head on stream 1");
    assert_eq!(
        seen.data.get(&1),
        Some(&65_535),
        "exactly the initial window"
    );
    assert!(took >= MS(450), "not before --body-timeout: {took:?}");
    let at = tokio::time::timeout(MS(3000), up_closed.recv())
        .await
        .expect("the upstream connection is closed")
        .expect("upstream");
    assert!(
        at - started < MS(4000),
        "upstream closed after {:?}",
        at - started
    );
    prober.finish(MS(500)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 64 * 1024, "RSS rose {rise} KiB");
}

/// HTTP/2 to HTTP/1.1 downgrade smuggling: HTTP/2 carries no framing in its
/// headers, so an attacker puts HTTP/1 syntax into them, hoping the proxy
/// writes it out verbatim. CR/LF or NUL in a value, a space in a name, an
/// upper-case name, `Transfer-Encoding` or `Connection` in a request, a
/// `:path` carrying a second request line: each stream is reset (or the
/// connection ended) and not one byte reaches the upstream. A body longer than
/// its `content-length` is cut at the first extra DATA frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_downgrade_smuggling_attempts_are_reset_and_never_reach_the_upstream() {
    let _shared = SERIAL.read().await;
    let rec = Recorder::start().await;
    let p = start(&rec.url(), |_, _, _| {}).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let path_attack = format!("/x HTTP/1.1\r\nHost: localhost\r\n\r\n{smuggled}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CRLF in a value",
            h2raw::request(false, "/a", &[("x-inject", "a\r\nX-Injected: 1")]),
        ),
        (
            "LF in a value",
            h2raw::request(false, "/a", &[("x-inject", "a\nX-Injected: 1")]),
        ),
        (
            "NUL in a value",
            h2raw::request(false, "/a", &[("x-nul", "a\0b")]),
        ),
        (
            "space in a name",
            h2raw::request(false, "/a", &[("x bad", "1")]),
        ),
        (
            "colon in a name",
            h2raw::request(false, "/a", &[("x-a:b", "1")]),
        ),
        (
            "upper-case name",
            h2raw::request(false, "/a", &[("X-Upper", "1")]),
        ),
        (
            "transfer-encoding",
            h2raw::request(true, "/a", &[("transfer-encoding", "chunked")]),
        ),
        (
            "connection",
            h2raw::request(false, "/a", &[("connection", "keep-alive")]),
        ),
        (
            "request line in :path",
            h2raw::request(false, &path_attack, &[]),
        ),
    ];
    for (what, block) in cases {
        let mut c = RawH2::open(&p, &[], true).await;
        assert!(
            c.send(&h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_STREAM | h2raw::END_HEADERS,
                1,
                &block
            ))
            .await
        );
        let refused = eventually(MS(2000), &format!("{what}: refused"), || async {
            let s = c.seen.lock().expect("lock");
            let reset = s.resets.iter().find(|(id, _)| *id == 1).map(|r| r.1);
            match (reset, s.goaway, &s.heads[..]) {
                (Some(code), _, _) => Some(format!("RST_STREAM {code}")),
                (None, Some(code), _) => Some(format!("GOAWAY {code}")),
                (None, None, [(_, first)]) => Some(format!("a response head {first:#x}")),
                _ => None,
            }
        })
        .await;
        assert!(
            refused == format!("RST_STREAM {PROTOCOL_ERROR}")
                || refused == format!("GOAWAY {PROTOCOL_ERROR}"),
            "{what}: {refused}"
        );
        assert_eq!(rec.all(), b"", "{what}: nothing reached the upstream");
    }

    // content-length: 5, then 5 bytes, then a request's worth more.
    let mut c = RawH2::open(&p, &[], true).await;
    let head = h2raw::request(true, "/cl", &[("content-length", "5")]);
    assert!(
        c.send(&h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &head))
            .await
    );
    assert!(c.send(&h2raw::frame(h2raw::DATA, 0, 1, b"hello")).await);
    tokio::time::sleep(MS(100)).await;
    let _ = c
        .send(&h2raw::frame(
            h2raw::DATA,
            h2raw::END_STREAM,
            1,
            smuggled.as_bytes(),
        ))
        .await;
    let code = eventually(MS(2000), "the over-long body is reset", || async {
        let s = c.seen.lock().expect("lock");
        s.resets
            .iter()
            .find(|(id, _)| *id == 1)
            .map(|r| r.1)
            .or(s.goaway)
    })
    .await;
    assert_eq!(code, PROTOCOL_ERROR);
    tokio::time::sleep(MS(300)).await;
    assert!(
        find(&rec.all(), b"smuggled").is_none(),
        "the extra bytes never reached the upstream: {:?}",
        String::from_utf8_lossy(&rec.all())
    );
    assert!(rec.request_lines().len() <= 1, "{:?}", rec.request_lines());
}

/// RFC 9113 §8.3.1: `:authority` is the target; a `host` header that differs
/// is not what portico routes on, and the upstream sees `Host` set to the
/// `:authority` portico routed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_authority_wins_over_a_different_host_header_for_routing_and_host() {
    let _shared = SERIAL.read().await;
    let default = Recorder::start().await;
    let other = Recorder::start().await;
    let route =
        portico::routing::Route::parse(&format!("other.example/={}", other.url())).expect("route");
    let p = start(&default.url(), move |cfg, _, _| cfg.routes.push(route)).await;
    let mut c = RawH2::open(&p, &[], true).await;
    let block = h2raw::request(false, "/auth", &[("host", "other.example")]);
    assert!(
        c.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_STREAM | h2raw::END_HEADERS,
            1,
            &block
        ))
        .await
    );
    eventually(MS(3000), "a response", || async {
        (!c.seen.lock().expect("lock").heads.is_empty()).then_some(())
    })
    .await;
    assert_eq!(c.seen.lock().expect("lock").heads, [(1, 0x88)]);
    assert_eq!(other.all(), b"", "not routed on the host header");
    let (line, headers, _) = default.only_request();
    assert_eq!(line, "GET /auth HTTP/1.1");
    assert_eq!(header(&headers, "host"), ["localhost"]);
}

// ---------------------------------------------------------------------------
// 3. Slow and idle clients.
// ---------------------------------------------------------------------------

/// A client that asks for a large response and never reads it (HTTP/1.1):
/// hyper stops polling the body once the socket is full, so the body's own
/// timer never runs. After `--body-timeout` with no byte taken, portico closes
/// the client connection and the upstream's: the upstream connection is not
/// held for ever, nor is the in-flight permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_its_response_frees_the_upstream_after_body_timeout() {
    let _shared = SERIAL.read().await;
    let (addr, mut up_closed, _up) = big_upstream(64 << 20).await;
    let p = start(&format!("http://{addr}"), |cfg, _, _| {
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

/// 100 TCP connections that never send a ClientHello, while a healthy client
/// keeps getting answers within 500 ms and a new client still connects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connections_do_not_slow_a_healthy_client() {
    let _serial = SERIAL.write().await;
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

/// A slow upload, one byte every 100 ms with `--body-timeout 1s`, is not cut:
/// bytes keep moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_that_keeps_moving_outlives_body_timeout() {
    let _shared = SERIAL.read().await;
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
    let resp = read_response(&mut tls).await.expect("a response");
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
    let _shared = SERIAL.read().await;
    let (addr, _up_closed, _up) = big_upstream(256 * 1024).await;
    let p = start(&format!("http://{addr}"), |cfg, _, _| {
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

// ---------------------------------------------------------------------------
// 4. TLS input.
// ---------------------------------------------------------------------------

mod tlsraw {
    /// A ClientHello handshake message.
    pub fn client_hello(version: u16, suites: &[u16], extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&[0x42; 32]);
        body.push(0);
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (t, d) in extensions {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Handshake records (type 22) carrying `msg`, at most 16 KiB each.
    pub fn records(version: u16, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in msg.chunks(16 * 1024) {
            out.push(22);
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Extensions a real client sends: SNI localhost, groups, signature
    /// algorithms, EC point formats.
    pub fn usual_extensions() -> Vec<(u16, Vec<u8>)> {
        let name = b"localhost";
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        vec![
            (0x0000, sni),
            (0x000a, vec![0, 4, 0x00, 0x1d, 0x00, 0x17]),
            (0x000b, vec![1, 0]),
            (0x000d, vec![0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]),
        ]
    }
}

/// What a refused TLS client saw: a fatal alert's description, or none if the
/// connection just closed.
async fn tls_refusal(p: &Portico, bytes: &[u8], then_close: bool) -> Option<u8> {
    let mut tcp = TcpStream::connect(p.tls_addr).await.expect("connect");
    // portico may refuse before it has read everything: write errors are fine.
    let _ = tcp.write_all(bytes).await;
    if then_close {
        let _ = tcp.shutdown().await;
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(MS(3000), tcp.read(&mut chunk)).await {
            Err(_) => panic!("portico neither answered nor closed within 3s"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    match got[..] {
        [] => None,
        // An alert record: type 21, version, length 2, level 2 (fatal), description.
        [21, 3, _, 0, 2, 2, desc, ..] => Some(desc),
        _ => panic!("portico answered something else than an alert: {got:02x?}"),
    }
}

const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_PROTOCOL_VERSION: u8 = 70;

/// Garbage instead of a ClientHello (plain HTTP, random bytes, an SSLv2
/// ClientHello, a non-handshake record), and records cut short then closed:
/// each refused cleanly (an alert, or a close), each counted once in
/// `portico_tls_handshakes_total{result="failed"}`, and portico still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_client_hellos_are_refused_and_counted() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let hello = tlsraw::client_hello(0x0303, &[0x1301, 0xc02b], &tlsraw::usual_extensions());
    let full = tlsraw::records(0x0301, &hello);
    // (what, its bytes, then close the write side, the alert expected)
    let cases: Vec<(&str, Vec<u8>, bool, Option<u8>)> = vec![
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            false,
            Some(ALERT_DECODE_ERROR),
        ),
        (
            "random bytes",
            (0..512u32).map(|i| (i * 7919 % 251) as u8).collect(),
            false,
            Some(ALERT_DECODE_ERROR),
        ),
        (
            "SSLv2 ClientHello",
            vec![
                0x80, 0x1f, 0x01, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x10, 0x01, 0x00, 0x80,
                0x07, 0x00, 0xc0, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
                0x42, 0x42, 0x42, 0x42, 0x42,
            ],
            false,
            Some(ALERT_DECODE_ERROR),
        ),
        (
            "application data first",
            vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5],
            false,
            Some(ALERT_UNEXPECTED_MESSAGE),
        ),
        ("half a record header", full[..3].to_vec(), true, None),
        (
            "a record cut short",
            full[..full.len() / 2].to_vec(),
            true,
            None,
        ),
        (
            "a ClientHello longer than its record",
            {
                let mut r = full.clone();
                // Claim 200 more bytes of handshake message than the record holds.
                let len = u32::from_be_bytes([0, r[6], r[7], r[8]]) + 200;
                r[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
                r
            },
            true,
            None,
        ),
    ];
    let mut n = 0.0;
    for (what, bytes, close, expected) in cases {
        let alert = tls_refusal(&p, &bytes, close).await;
        assert_eq!(alert, expected, "{what}: the alert (None: a plain close)");
        n += 1.0;
        assert_failed_handshakes(&p, n).await;
    }
    assert_eq!(p.get("/after").await.status, 200, "portico still serves");
    assert_eq!(failed_handshakes(&p), n);
}

/// An oversized ClientHello (70 KB, past the 64 KiB a handshake message may
/// have in rustls) is refused (closed), counted, and portico serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_client_hello_is_refused_and_counted() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut msg = vec![1];
    msg.extend_from_slice(&70_000u32.to_be_bytes()[1..]);
    msg.extend(std::iter::repeat_n(0u8, 70_000));
    let alert = tls_refusal(&p, &tlsraw::records(0x0301, &msg), false).await;
    // rustls stops at the handshake header and closes; the rest of the 70 KB
    // unread may turn the close into a reset, which would lose an alert.
    assert!(
        matches!(alert, None | Some(ALERT_DECODE_ERROR)),
        "{alert:?}"
    );
    assert_failed_handshakes(&p, 1.0).await;
    assert_eq!(p.get("/after").await.status, 200, "portico still serves");
}

/// SSLv3, TLS 1.0 and TLS 1.1 offers (legacy version, no supported_versions
/// extension), and a TLS 1.2 offer of weak suites only (RSA key exchange, CBC,
/// 3DES, RC4): each refused with an alert, counted, and portico serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_versions_and_weak_suites_are_refused_and_counted() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let ext = tlsraw::usual_extensions();
    let legacy_suites = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f, 0x0035, 0x000a];
    let mut n = 0.0;
    for (what, version) in [("SSLv3", 0x0300), ("TLS 1.0", 0x0301), ("TLS 1.1", 0x0302)] {
        let hello = tlsraw::client_hello(version, &legacy_suites, &ext);
        let alert = tls_refusal(&p, &tlsraw::records(version.min(0x0301), &hello), false).await;
        assert_eq!(alert, Some(ALERT_PROTOCOL_VERSION), "{what}");
        n += 1.0;
        assert_failed_handshakes(&p, n).await;
    }
    let weak = [
        0x002f, 0x0035, 0x003c, 0x009c, 0x000a, 0x0005, 0xc009, 0xc013, 0xc023,
    ];
    let hello = tlsraw::client_hello(0x0303, &weak, &ext);
    let alert = tls_refusal(&p, &tlsraw::records(0x0301, &hello), false).await;
    assert_eq!(alert, Some(ALERT_HANDSHAKE_FAILURE), "weak suites only");
    n += 1.0;
    assert_failed_handshakes(&p, n).await;
    assert_eq!(p.get("/after").await.status, 200, "portico still serves");
}

/// Renegotiation: a TLS 1.2 client (`openssl s_client -tls1_2 -msg`)
/// completes a handshake, then asks to renegotiate (`R`), sending a second
/// ClientHello on the established connection. rustls does not renegotiate:
/// portico answers with the `no_renegotiation` warning alert (RFC 5246
/// §7.2.2) and nothing else, the client gives up (OpenSSL sends a fatal
/// `handshake_failure`) and the connection closes at once, well before
/// `--header-read-timeout`. Not a failed handshake; portico serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_renegotiation_attempt_gets_no_second_handshake() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(2000);
    })
    .await;
    let ca = p.dir.path().join("ca.pem");
    std::fs::write(&ca, &p.pki.ca_pem).expect("write CA");
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-msg",
            "-tls1_2",
            "-servername",
            "localhost",
            "-connect",
        ])
        .arg(p.tls_addr.to_string())
        .arg("-CAfile")
        .arg(&ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut chunk).await {
            t.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    eventually(MS(3000), "the first handshake", || async {
        let t = text.lock().expect("lock");
        t.contains("Verify return code: 0 (ok)").then_some(())
    })
    .await;
    let handshaken = Instant::now();
    stdin.write_all(b"R\n").await.expect("ask to renegotiate");
    stdin.flush().await.expect("flush");
    eventually(MS(2000), "a second ClientHello sent", || async {
        let t = text.lock().expect("lock");
        (t.matches("ClientHello").count() == 2).then_some(())
    })
    .await;
    let exited = tokio::time::timeout(MS(4000), child.wait()).await;
    assert!(exited.is_ok(), "the connection is closed");
    let took = handshaken.elapsed();
    assert!(
        took < MS(1400),
        "at once, not by the header-read timeout: {took:?}"
    );
    let t = text.lock().expect("lock").clone();
    assert!(
        t.contains("Protocol  : TLSv1.2"),
        "TLS 1.2 was negotiated: {t}"
    );
    let second = t.rfind("ClientHello").expect("second ClientHello");
    let answers: Vec<&str> = t[second..]
        .lines()
        .filter(|l| l.starts_with("<<<") && !l.contains("RecordHeader"))
        .collect();
    assert_eq!(
        answers,
        ["<<< TLS 1.2, Alert [length 0002], warning no_renegotiation"],
        "portico's only answer is the refusal, no second ServerHello"
    );
    assert_eq!(p.metrics.connections_open.get(), 0);
    let m = p.metrics_text();
    assert_eq!(
        metric(&m, "portico_tls_handshakes_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(failed_handshakes(&p), 0.0, "not a failed handshake");
    assert_eq!(p.get("/after").await.status, 200, "portico still serves");
}

/// TLS 1.3 KeyUpdate messages from the client between requests (post-handshake
/// handshake records the record layer must hand to rustls) are followed: each
/// next request on the same connection is answered, three times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_key_updates_between_requests_keep_the_connection_serving() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut tls = raw_tls(&p).await;
    for round in 0..4 {
        if round > 0 {
            tls.get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update queued");
        }
        let req = format!("GET /ku{round} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        tls.write_all(req.as_bytes()).await.expect("write");
        tls.flush().await.expect("flush");
        let resp = read_response(&mut tls)
            .await
            .unwrap_or_else(|| panic!("round {round}: no response"));
        assert_eq!(resp.status, 200, "round {round}");
        assert_eq!(up.last().uri.path(), format!("/ku{round}"));
    }
    assert_eq!(up.count(), 4);
}

/// A request head sent one byte per TLS record, and a second request that
/// shares a record with the end of the first, are both read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_split_over_one_byte_records_or_sharing_a_record_are_read_whole() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut tls = raw_tls(&p).await;
    for b in b"GET /bytewise HTTP/1.1\r\nHost: localhost\r\n\r\n" {
        tls.write_all(&[*b]).await.expect("write");
        tls.flush().await.expect("flush");
    }
    let resp = read_response(&mut tls).await.expect("a response");
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().uri.path(), "/bytewise");
    tls.write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\nGET /second HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    tls.flush().await.expect("flush");
    // Both answers, read as one stream (a response reader would drop bytes
    // past its own response).
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let two = tokio::time::timeout(MS(3000), async {
        while got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count() < 2 {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    assert_eq!(two, Ok(true), "{}", String::from_utf8_lossy(&got));
    assert_eq!(up.last().uri.path(), "/second");
    assert_eq!(up.count(), 3);
}

// ---------------------------------------------------------------------------
// 4b. TLS records after the handshake: rustls's record layer, its limits,
// and what portico owes a client that does not read.
// ---------------------------------------------------------------------------

const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_NO_RENEGOTIATION: u8 = 100;

/// An upstream that answers `/slow` after 2 s and everything else at once.
async fn slow_upstream() -> Upstream {
    upstream_with(false, |s| async move {
        if s.uri.path() == "/slow" {
            tokio::time::sleep(MS(2000)).await;
        }
        Response::new(Full::new(Bytes::from_static(b"done")))
    })
    .await
}

/// SPEC "TLS": a KeyUpdate flood. A TLS 1.3 client with a slow request in
/// flight sends 1,000 KeyUpdates asking for an update and reads nothing.
/// rustls allows 32 without application data between them: the connection is
/// closed, portico's memory stays put (under 2 MiB more), and a well-behaved
/// client's requests meanwhile are all answered, none slower than 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_update_flood_from_a_client_that_never_reads_is_closed_and_bounded() {
    let _serial = SERIAL.write().await;
    let up = slow_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.header_read_timeout = MS(30_000);
        cfg.idle_timeout = MS(30_000);
    })
    .await;
    let prober = Prober::start(&p).await;
    let rss_before = rss_kib();
    let mut tls = raw_tls(&p).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    tls.flush().await.expect("flush");
    let mut sent = 0;
    for _ in 0..1000 {
        if tls.get_mut().1.refresh_traffic_keys().is_err() || tls.flush().await.is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 32, "the client got {sent} KeyUpdates out");
    // Read as TCP, not through the client's TLS: the close must be portico's
    // doing, not the client's refusal of what it reads. Without a limit the
    // connection would wait for a next request until the 30 s timeouts.
    let (mut tcp, _) = tls.into_inner();
    let closed = closed_within(&mut tcp, MS(8000)).await;
    assert!(
        closed.is_some(),
        "the flooding connection is closed ({sent} KeyUpdates sent)"
    );
    prober.finish(MS(1000)).await;
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 2048, "RSS rose {rise} KiB");
    assert_eq!(p.get("/after").await.status, 200, "portico still serves");
}

/// SPEC "TLS": a second TLS 1.2 renegotiation attempt ends the connection.
/// The first encrypted ClientHello gets the `no_renegotiation` warning and
/// the connection lives on; the second closes it. A client sending them in a
/// loop without reading is closed too, and portico's memory stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_renegotiation_requests_in_a_loop_are_closed_at_the_second() {
    let _serial = SERIAL.write().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let hello = tlsraw::client_hello(0x0303, &[0xc02b, 0xc02f], &tlsraw::usual_extensions());
    let cfg = || tlsrec::config(p.roots(), &rustls::version::TLS12, None);

    let mut c = tlsrec::Keyed::connect(p.tls_addr, cfg()).await;
    c.send(tlsrec::HANDSHAKE, &hello, 0).await.expect("send");
    let first = c.next_record(MS(3000)).await;
    assert_eq!(
        first,
        Some((tlsrec::ALERT, vec![1, ALERT_NO_RENEGOTIATION])),
        "the first attempt is refused with a warning"
    );
    c.send(
        tlsrec::APPLICATION_DATA,
        b"GET /between HTTP/1.1\r\nHost: localhost\r\n\r\n",
        0,
    )
    .await
    .expect("a request after the refusal");
    let (_, data) = c.until_alert(MS(1000)).await;
    assert!(
        data.starts_with(b"HTTP/1.1 200"),
        "the connection still serves: {}",
        String::from_utf8_lossy(&data)
    );
    c.send(tlsrec::HANDSHAKE, &hello, 0).await.expect("send");
    // rustls ends the connection without a word (no alert names a peer
    // that keeps asking), or with a fatal one; never a second warning.
    let (alert, _) = c.until_alert(MS(3000)).await;
    assert!(
        matches!(alert, None | Some((2, _))),
        "at the second attempt: {alert:?}"
    );
    assert!(
        c.ends_within(MS(1000)).await,
        "closed at the second attempt"
    );

    let rss_before = rss_kib();
    let mut c = tlsrec::Keyed::connect(p.tls_addr, cfg()).await;
    let mut sent = 0;
    for _ in 0..10_000 {
        if c.send(tlsrec::HANDSHAKE, &hello, 0).await.is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        c.ends_within(MS(3000)).await,
        "the loop is closed ({sent} sent)"
    );
    let rise = rss_kib().saturating_sub(rss_before);
    assert!(rise < 2048, "RSS rose {rise} KiB");
    assert_eq!(p.get("/after").await.status, 200, "portico still serves");
}

/// SPEC "TLS": a KeyUpdate asking for an update that arrives in the same TCP
/// segment as the client's Finished is handled like any other: rustls
/// answers it and switches its key, and the next request gets its answer
/// under the new key. Ten connections, each checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_update_in_the_same_segment_as_the_client_finished_is_followed() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let addr = p.tls_addr;
    let cfg = Arc::new(tlsrec::config(p.roots(), &rustls::version::TLS13, None));
    let answers = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut answers = Vec::new();
        for _ in 0..10 {
            let mut sock = std::net::TcpStream::connect(addr).expect("connect");
            sock.set_read_timeout(Some(MS(3000))).expect("timeout");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client");
            while conn.is_handshaking() {
                while conn.wants_write() {
                    conn.write_tls(&mut sock).expect("write");
                }
                conn.read_tls(&mut sock).expect("read");
                conn.process_new_packets().expect("server's flight");
            }
            // The Finished is queued, not sent: the KeyUpdate joins it.
            conn.refresh_traffic_keys().expect("KeyUpdate queued");
            let mut flight = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut flight).expect("encode");
            }
            sock.write_all(&flight)
                .expect("Finished and KeyUpdate in one write");
            conn.writer()
                .write_all(
                    b"GET /after-update HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )
                .expect("request");
            while conn.wants_write() {
                conn.write_tls(&mut sock).expect("write");
            }
            let mut got = Vec::new();
            loop {
                match conn.read_tls(&mut sock) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if conn.process_new_packets().is_err() {
                    break;
                }
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = conn.reader().read(&mut chunk) {
                    got.extend_from_slice(&chunk[..n]);
                }
            }
            answers.push(String::from_utf8_lossy(&got).into_owned());
        }
        answers
    })
    .await
    .expect("client thread");
    for (i, a) in answers.iter().enumerate() {
        assert!(a.starts_with("HTTP/1.1 200"), "connection {i}: {a:?}");
        assert!(a.ends_with("hello from upstream"), "connection {i}: {a:?}");
    }
    assert_eq!(up.count(), 10);
}

/// SPEC "TLS": a TLS 1.3 record longer than RFC 8446 allows once its padding
/// is counted (content, type and padding past 2^14 + 1 bytes) is answered
/// `record_overflow` and the connection closed, and what it carried never
/// reaches the upstream. One byte less is the largest allowed, and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_padded_tls13_record_gets_record_overflow() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let cfg = || tlsrec::config(p.roots(), &rustls::version::TLS13, None);
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();

    let mut c = tlsrec::Keyed::connect(p.tls_addr, cfg()).await;
    let at_limit = req("/at-limit");
    let padding = (1 << 14) + 1 - at_limit.len() - 1;
    c.send(tlsrec::APPLICATION_DATA, &at_limit, padding)
        .await
        .expect("send");
    let (alert, data) = c.until_alert(MS(1000)).await;
    assert_eq!(alert, None);
    assert!(data.starts_with(b"HTTP/1.1 200"), "{data:?}");

    let mut c = tlsrec::Keyed::connect(p.tls_addr, cfg()).await;
    let over = req("/over-limit");
    c.send(
        tlsrec::APPLICATION_DATA,
        &over,
        padding + at_limit.len() - over.len() + 1,
    )
    .await
    .expect("send");
    let (alert, data) = c.until_alert(MS(3000)).await;
    assert_eq!(alert, Some((2, ALERT_RECORD_OVERFLOW)), "{data:?}");
    assert!(c.ends_within(MS(3000)).await, "closed");
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().uri.path(), "/at-limit");
}

/// The smaller departures from RFC 8446 and 5246 a hand-written record layer
/// made, each answered as rustls answers it: a KeyUpdate whose
/// `request_update` is neither 0 nor 1 gets `illegal_parameter`; a TLS 1.2
/// record shorter than its tag gets `bad_record_mac`; data after a
/// close_notify in the same write is not handed on; a KeyUpdate split over
/// two records is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_handshake_messages_are_answered_as_rustls_answers_them() {
    let _shared = SERIAL.read().await;
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let tls13 = || tlsrec::config(p.roots(), &rustls::version::TLS13, None);

    let mut c = tlsrec::Keyed::connect(p.tls_addr, tls13()).await;
    c.send(tlsrec::HANDSHAKE, &[24, 0, 0, 1, 2], 0)
        .await
        .expect("send");
    assert_eq!(
        c.until_alert(MS(3000)).await.0,
        Some((2, ALERT_ILLEGAL_PARAMETER)),
        "request_update 2"
    );

    let mut c = tlsrec::Keyed::connect(
        p.tls_addr,
        tlsrec::config(
            p.roots(),
            &rustls::version::TLS12,
            Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ),
    )
    .await;
    // A TLS 1.2 AES-GCM record: 8 bytes of explicit nonce and 4 of a 16-byte tag.
    c.tcp
        .write_all(&[23, 3, 3, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .await
        .expect("send");
    assert_eq!(
        c.until_alert(MS(3000)).await.0,
        Some((2, ALERT_BAD_RECORD_MAC)),
        "a TLS 1.2 record shorter than its tag"
    );

    let mut c = tlsrec::Keyed::connect(p.tls_addr, tls13()).await;
    let mut both = c.tx.seal(tlsrec::ALERT, &[1, 0], 0);
    both.extend(c.tx.seal(
        tlsrec::APPLICATION_DATA,
        b"GET /after-close HTTP/1.1\r\nHost: localhost\r\n\r\n",
        0,
    ));
    c.tcp.write_all(&both).await.expect("send");
    assert!(c.ends_within(MS(3000)).await, "closed after close_notify");
    assert_eq!(up.count(), 0, "nothing after close_notify is handed on");

    // A KeyUpdate in two records is one message: accepted, not refused.
    // (This client cannot follow it with more: its next key would need the
    // traffic secret, which rustls does not hand out.)
    let mut c = tlsrec::Keyed::connect(p.tls_addr, tls13()).await;
    c.send(tlsrec::HANDSHAKE, &[24, 0, 0], 0)
        .await
        .expect("send");
    c.send(tlsrec::HANDSHAKE, &[1, 0], 0).await.expect("send");
    assert!(
        !c.ends_within(MS(500)).await,
        "a KeyUpdate split over two records is not refused"
    );
}

/// Interop: 10 MiB downloaded and 10 MiB uploaded, each checked by its
/// SHA-256, over ChaCha20-Poly1305 and AES-256-GCM in TLS 1.2 and 1.3; in
/// TLS 1.3 the client also sends a KeyUpdate (asking for one back) after every
/// MiB of the download, so rustls changes keys both ways mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_over_chacha20_and_aes256_in_tls12_and_tls13_arrive_whole() {
    use rustls::CipherSuite::*;
    use sha2::{Digest, Sha256};
    let _shared = SERIAL.read().await;
    const SIZE: usize = 10 * 1024 * 1024;
    let big = Bytes::from(
        (0..SIZE)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    let big_hash = Sha256::digest(&big);
    let served = big.clone();
    let up = upstream_with(false, move |s| {
        let served = served.clone();
        async move {
            if s.method == http::Method::POST {
                let hex: String = Sha256::digest(&s.body)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Response::new(Full::new(Bytes::from(hex)))
            } else {
                Response::new(Full::new(served))
            }
        }
    })
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let cases = [
        (&rustls::version::TLS13, TLS13_CHACHA20_POLY1305_SHA256),
        (&rustls::version::TLS13, TLS13_AES_256_GCM_SHA384),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (version, suite) in cases {
        let tls13 = version.version == rustls::ProtocolVersion::TLSv1_3;
        let cfg = tlsrec::config(p.roots(), version, Some(suite));
        let mut tls = tls_connect(p.tls_addr, "localhost", cfg)
            .await
            .expect("handshake");
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite)
        );
        tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("request");
        let (head, mut body) = read_head(&mut tls).await;
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{suite:?}: {head}");
        let mut hasher = Sha256::new();
        let mut got = body.len();
        hasher.update(&body);
        let mut next_update = 1024 * 1024;
        let mut updates = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        while got < SIZE {
            if tls13 && got >= next_update {
                tls.get_mut().1.refresh_traffic_keys().expect("KeyUpdate");
                tls.flush().await.expect("flush");
                next_update += 1024 * 1024;
                updates += 1;
            }
            let n = tokio::time::timeout(MS(10_000), tls.read(&mut chunk))
                .await
                .expect("body moves")
                .expect("read");
            assert!(n > 0, "{suite:?}: body cut at {got}");
            hasher.update(&chunk[..n]);
            got += n;
        }
        body.clear();
        assert_eq!(got, SIZE, "{suite:?}");
        assert_eq!(
            hasher.finalize(),
            big_hash,
            "{suite:?}: the download's hash"
        );
        if tls13 {
            assert!(updates >= 9, "{suite:?}: {updates} KeyUpdates");
        }

        let head =
            format!("POST /hash HTTP/1.1\r\nHost: localhost\r\nContent-Length: {SIZE}\r\n\r\n");
        tls.write_all(head.as_bytes()).await.expect("head");
        for part in big.chunks(64 * 1024) {
            tls.write_all(part).await.expect("upload");
        }
        tls.flush().await.expect("flush");
        let resp = read_response(&mut tls).await.expect("the upload's answer");
        let want: String = big_hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(resp.status, 200, "{suite:?}");
        assert_eq!(
            String::from_utf8_lossy(&resp.body),
            want,
            "{suite:?}: the upload's hash"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Broken upstreams.
// ---------------------------------------------------------------------------

/// portico's answer to a GET when the primary writes `bytes` and then holds
/// the connection open for `hold` (so the verdict must come from the bytes),
/// and how long the answer took; the test fails unless it comes within 3 s.
async fn answer_to_upstream_bytes(bytes: String, hold: Duration) -> (Got, Duration) {
    let bytes = Arc::new(bytes);
    let sent = bytes.clone();
    let (url, _up) = raw_upstream(move |mut s| {
        let bytes = sent.clone();
        async move {
            let _ = s.write_all(bytes.as_bytes()).await;
            tokio::time::sleep(hold).await;
        }
    })
    .await;
    let p = start(&url, |_, _, _| {}).await;
    let head = bytes.lines().next().unwrap_or_default();
    let started = Instant::now();
    let got = tokio::time::timeout(MS(3000), p.get("/"))
        .await
        .unwrap_or_else(|_| panic!("{head:?} ({} bytes): an answer within 3s", bytes.len()));
    (got, started.elapsed())
}

/// A raw upstream on 127.0.0.1:0: `f` runs for each connection that sends a
/// request head (readiness probes that connect and close are skipped).
async fn raw_upstream<F, Fut>(f: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let f = Arc::new(f);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                f(s).await;
            });
        }
    });
    (format!("http://{addr}"), task)
}

/// SPEC 502 `upstream-reset`: an upstream that answers `100 Continue`, then
/// dies before a final response head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sending_100_continue_then_dying_is_502_upstream_reset() {
    let _shared = SERIAL.read().await;
    let (url, _up) = raw_upstream(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let _ = s.flush().await;
        tokio::time::sleep(MS(50)).await;
    })
    .await;
    let p = start(&url, |_, _, _| {}).await;
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

/// SPEC 502 `bad-upstream-response`: an upstream that sends a huge header
/// block (200 KiB in 2,000 lines; and a single 2 MiB header, far past the
/// 64 KiB portico reads) gets a prompt 502, not a hang, though it holds its
/// connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sending_a_huge_header_block_is_502_bad_upstream_response() {
    let _shared = SERIAL.read().await;
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
/// intact, a 256 KiB one is SPEC's 502 `bad-upstream-response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_response_head_of_60kib_is_forwarded_and_one_of_256kib_is_502() {
    let _shared = SERIAL.read().await;
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

/// SPEC 502 `bad-upstream-response`: a response head whose framing cannot be
/// trusted (two different `Content-Length`s, one that is not a number) is
/// refused, never forwarded with a guessed length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_conflicting_or_malformed_content_length_is_502_bad_upstream_response() {
    let _shared = SERIAL.read().await;
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

/// A chunked response that also states a length is read by its chunks (RFC
/// 9112: the coding wins), its trailers dropped for an HTTP/1.1 client that
/// did not ask for them, its length removed (RFC 9112 section 6.3), and its
/// connection is not used again: the framing was in doubt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_chunked_response_with_a_length_is_dechunked_and_its_connection_not_reused() {
    let _shared = SERIAL.read().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let (url, _up) = raw_upstream(move |mut s| {
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
    let p = start(&url, |cfg, _, _| {
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

/// `--body-timeout` cuts a body that moves no byte, not a slow one: an
/// upstream trickling a byte every 50 ms (`--body-timeout 1s`) delivers its
/// whole body, over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_trickling_its_body_completes_within_body_timeout() {
    let _shared = SERIAL.read().await;
    let (url, _up) = raw_upstream(|mut s| async move {
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
    let p = start(&url, |cfg, _, _| {
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

/// An upstream that resets its connection mid-body: the client sees the body
/// cut (an error reading it), never a clean, short "complete" response, over
/// HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_cuts_the_client_body() {
    let _shared = SERIAL.read().await;
    let (url, _up) = raw_upstream(|mut s| async move {
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
    let p = start(&url, |_, _, _| {}).await;
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
    let _shared = SERIAL.read().await;
    let served = Arc::new(AtomicUsize::new(0));
    let mut up = Restartable::start("127.0.0.1:0".parse().expect("addr"), served.clone()).await;
    let p = start(&format!("http://{}", up.addr), |_, _, _| {}).await;
    let mut c = p.h1().await;
    let got = h1_get(&mut c, "/pooled").await;
    assert_eq!(got.status, 200);
    for round in 0..10 {
        let addr = up.stop().await;
        up = Restartable::start(addr, served.clone()).await;
        let got = h1_get(&mut c, "/pooled").await;
        assert_eq!(got.status, 200, "round {round}: {got:?}");
        assert_eq!(got.text(), "ok");
    }
    assert_eq!(up.served.load(Ordering::SeqCst), 11);
}

// ---------------------------------------------------------------------------
// 6. Limits under attack.
// ---------------------------------------------------------------------------

/// SPEC `--max-connections` under attack: with 20 allowed, one healthy
/// keep-alive client connected first and 19 attackers holding the rest (plus
/// 20 more waiting), the healthy client keeps being served within 500 ms; a
/// new connection waits; once the attackers go, it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_client_is_served_while_attackers_hold_max_connections() {
    let _serial = SERIAL.write().await;
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

/// SPEC `--max-requests-in-flight` under attack: with 8 slow requests parked,
/// every further request, on any route, is a 503 in under 100 ms; once the
/// slow ones finish, requests succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_requests_in_flight_503s_are_fast_and_service_recovers() {
    let _serial = SERIAL.write().await;
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
            h1_get(&mut c, path).await
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
        let got = h1_get(&mut c, path).await;
        assert_eq!(got.status, 200, "{path} after the slow ones finished");
    }
}
