//! Raw HTTP/1 on both sides, for what a well-behaved client or server would
//! never send: the raw client writes bytes over TLS (or TCP) and reads the
//! answer off the stream; the raw upstream hands each accepted TCP connection
//! to the test, which reads and writes what it likes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::{client_config, find, tls_connect, Portico};

// ---------------------------------------------------------------------------
// The raw client

/// A response read off a raw stream.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads up to the end of a message head (or EOF); returns head and any extra.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> (Vec<u8>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (buf, rest);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf, Vec::new()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response (body by Content-Length); `None` if the stream
/// ended or failed before a complete head.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Option<RawResp> {
    let (head, mut body) = read_head(s).await;
    let text = String::from_utf8(head).ok()?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let mut lines = text.trim_end().split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let resp = RawResp {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawResp { body, ..resp })
}

/// [`read_response`], failing the test unless a response or the end of the
/// stream comes within `limit`.
pub async fn read_response_within<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<RawResp> {
    tokio::time::timeout(limit, read_response(s))
        .await
        .unwrap_or_else(|_| panic!("a response (or a close) within {limit:?}"))
}

/// Reads until the peer closes (EOF or error); the time it took, or `None` if
/// it stayed open for `limit`.
pub async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A raw HTTP/1.1 TLS connection to portico.
pub async fn raw_tls(p: &Portico) -> TlsStream<TcpStream> {
    tls_connect(
        p.tls_addr,
        "localhost",
        client_config(p.roots(), &[b"http/1.1"], None),
    )
    .await
    .expect("tls connect")
}

/// Sends `raw` on a fresh HTTP/1.1 TLS connection; the answer (if any, within
/// 3 s) and whether the connection was then closed within 2 s.
pub async fn send_raw(p: &Portico, raw: &[u8]) -> (Option<RawResp>, bool) {
    let mut tls = raw_tls(p).await;
    tls.write_all(raw).await.expect("write");
    let resp = read_response_within(&mut tls, Duration::from_secs(3)).await;
    let closed = closed_within(&mut tls, Duration::from_secs(2))
        .await
        .is_some();
    (resp, closed)
}

/// All values of header `name` in a head read off the wire (names lower-case).
pub fn header_values<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------
// The raw upstream

/// A raw TCP upstream on 127.0.0.1:0: a function of the test runs for each
/// connection it accepts. Readiness probes connect too, and close without
/// sending a byte.
pub struct RawUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// `f` runs for each accepted connection, from its first byte.
    pub async fn start<F, Fut>(f: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::on(TcpSocket::new_v4().expect("socket"), f).await
    }

    /// The same on a socket the test has set up (e.g. a small receive buffer).
    pub async fn on<F, Fut>(sock: TcpSocket, f: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        sock.bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = sock.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(f(s));
            }
        });
        Self { addr, task }
    }

    /// `f` runs for each connection that sends a complete request head, once
    /// the head has been read (so readiness probes never reach it).
    pub async fn after_head<F, Fut>(f: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        Self::start(move |mut s| {
            let f = f.clone();
            async move {
                if read_head(&mut s).await.0.ends_with(b"\r\n\r\n") {
                    f(s).await;
                }
            }
        })
        .await
    }

    /// Answers every request head on a connection with `response` (requests
    /// without a body: each head is one request).
    pub async fn answering(response: &'static [u8]) -> Self {
        Self::start(move |mut tcp| async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Ok(n) = tcp.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = find(&buf, b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if tcp.write_all(response).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    }

    /// Its `http://` URL, for `--upstream`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bytes each upstream connection received.
type Received = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A raw upstream that records the exact bytes it receives: each connection
/// is read until it is idle for 150 ms, then answered `200 ok` (if anything
/// came), and read again until EOF. Every byte is kept, per connection.
pub struct Recorder {
    up: RawUpstream,
    conns: Received,
}

impl Recorder {
    /// Listens on 127.0.0.1:0 and records.
    pub async fn start() -> Self {
        let conns: Received = Arc::default();
        let c = conns.clone();
        let up = RawUpstream::start(move |mut s| {
            let rec = Arc::new(Mutex::new(Vec::new()));
            c.lock().expect("lock").push(rec.clone());
            async move {
                let mut chunk = [0u8; 16 * 1024];
                let mut pending = false;
                loop {
                    match tokio::time::timeout(Duration::from_millis(150), s.read(&mut chunk)).await
                    {
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
            }
        })
        .await;
        Self { up, conns }
    }

    /// Its `http://` URL, for `--upstream`.
    pub fn url(&self) -> String {
        self.up.url()
    }

    /// Every connection that carried at least one byte, as bytes.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .expect("lock")
            .iter()
            .map(|r| r.lock().expect("lock").clone())
            .filter(|b| !b.is_empty())
            .collect()
    }

    /// All bytes received, over every connection.
    pub fn all(&self) -> Vec<u8> {
        self.received().concat()
    }

    /// The request lines the upstream could read, over every connection: any
    /// line shaped `METHOD TARGET HTTP/1.x`.
    pub fn request_lines(&self) -> Vec<String> {
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
    pub fn only_request(&self) -> (String, Vec<(String, String)>, Vec<u8>) {
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

/// A raw upstream answering `/probe` with `ok` and anything else with `len`
/// bytes (keep-alive), and the instants at which portico closed a connection
/// that carried a large answer.
pub async fn big_upstream(
    len: usize,
) -> (RawUpstream, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut s| {
        let tx = tx.clone();
        async move {
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
        }
    })
    .await;
    (up, rx)
}
