//! Soak: portico under a mixed load for a bounded time (about two minutes in
//! all), asserting that nothing is lost or corrupted and that it gives back
//! what it took. Slow, so `#[ignore]`d; run it with
//!
//!     cargo test --release --test soak -- --ignored --nocapture
//!
//! (`SOAK_SECONDS` sets the load phase, 60 s by default; a 10 s warm-up of the
//! same load comes first, and up to 75 s of settling after.)
//!
//! The load, all at once, against one in-process portico:
//! - HTTP/1.1 keep-alive clients, each on one connection, GETs and small POSTs;
//! - HTTP/2 clients, each on one connection with several streams at a time;
//! - clients that open a new TLS connection for every request (and note the
//!   certificate they were served);
//! - uploads up to 2 MiB over HTTP/1.1 and HTTP/2; the upstream hashes the body
//!   it received and answers the hash;
//! - WebSocket sessions (text and binary echoes, then a close), routed by a
//!   `--route` to a separate WebSocket upstream;
//! - certificate rotations every few seconds, written as the kubelet updates a
//!   Secret (a new timestamped directory, then the `..data` symlink swapped).
//!
//! Every response body is checked by SHA-256 (downloads against the hash the
//! upstream computed from the request, uploads against the client's own), and
//! every request is counted: sent == good, and no failure of any kind. After
//! the load, with every client closed and portico's idle upstream connections
//! expired (its pool keeps them 30 s, reaped on a 30 s tick), the process's
//! open file descriptors are back within 10 of the idle baseline; the bytes
//! live in its heap (counted by a wrapper around the global allocator) within
//! 8 MiB of what was live with portico idle before any client, so nothing
//! outlives its request; and its resident memory within 32 MiB of the
//! baseline taken after the warm-up (so that memory the allocator keeps for
//! the working set is not read as a leak). The process runs under the
//! allocator the binary ships with (mimalloc, through `portico::alloc`): a
//! test binary would otherwise get glibc's malloc, whose arenas keep a
//! share of the freed body buffers resident and so measure glibc, not
//! portico.
// This suite uses only part of the support the `it` binary uses in full.
#[allow(dead_code, unused_imports)]
mod support;
use support::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portico::config::CertSource;
use portico::routing::Route;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The warm-up run before the memory baseline.
const WARM_UP_SECONDS: u64 = 10;

/// Any one request or WebSocket exchange taking longer than this is lost.
const PER_REQUEST: Duration = Duration::from_secs(30);

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn sha(b: &[u8]) -> String {
    hex(Sha256::digest(b))
}

/// Deterministic bytes from a seed (xorshift), so both ends can make them.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn query_u64(uri: &http::Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// The HTTP upstream: `GET /data?seed=S&len=N` answers N bytes made from S
/// (with their hash in `x-sha256`); `POST /upload` answers the hash of the body
/// it received, hashed as it streams in. It keeps nothing, and counts its open
/// connections.
async fn http_upstream(open: Arc<AtomicU64>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let open = open.clone();
            tokio::spawn(async move {
                open.fetch_add(1, Ordering::Relaxed);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (parts, mut body) = req.into_parts();
                    let resp = match (parts.method.as_str(), parts.uri.path()) {
                        ("GET", "/data") => {
                            let seed = query_u64(&parts.uri, "seed").unwrap_or(1);
                            let len = query_u64(&parts.uri, "len").unwrap_or(0) as usize;
                            let body = payload(seed, len);
                            Response::builder()
                                .header("x-sha256", sha(&body))
                                .body(Full::new(Bytes::from(body)))
                        }
                        ("POST", "/upload") => {
                            let mut h = Sha256::new();
                            let mut n = 0usize;
                            let mut cut = false;
                            while let Some(f) = body.frame().await {
                                match f {
                                    Ok(f) => {
                                        if let Some(d) = f.data_ref() {
                                            h.update(d);
                                            n += d.len();
                                        }
                                    }
                                    Err(_) => {
                                        cut = true;
                                        break;
                                    }
                                }
                            }
                            Response::builder()
                                .status(if cut {
                                    StatusCode::BAD_REQUEST
                                } else {
                                    StatusCode::OK
                                })
                                .header("x-len", n)
                                .body(Full::new(Bytes::from(hex(h.finalize()))))
                        }
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, std::convert::Infallible>(resp.expect("response"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    (addr, task)
}

/// A WebSocket upstream that echoes text and binary messages.
async fn ws_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// What the open descriptors are, for a failure message: TCP sockets by their
/// local and remote port's role, everything else by kind.
fn fd_report(roles: &[(u16, &str)]) -> String {
    let role = |port: u16| {
        roles
            .iter()
            .find(|(p, _)| *p == port)
            .map_or_else(|| "client".to_string(), |(_, r)| r.to_string())
    };
    let mut sockets = std::collections::HashMap::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            let (l, r) = (port(f[1]), port(f[2]));
            let desc = if r == 0 {
                format!("listening {}", role(l))
            } else {
                format!("{} -> {} (state {})", role(l), role(r), f[3])
            };
            sockets.insert(f[9].to_string(), desc);
        }
    }
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let kind = match target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            Some(inode) => sockets
                .get(inode)
                .cloned()
                .unwrap_or_else(|| "socket (not TCP)".into()),
            None if target.starts_with('/') => "file".into(),
            None => target.split(':').next().unwrap_or("?").to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    format!("{kinds:#?}")
}

/// The allocator the binary ships with (mimalloc; the system's under
/// `--no-default-features`), counting the bytes live in it.
struct Counting;

#[cfg(feature = "mimalloc")]
static INNER: portico::alloc::MiMalloc = portico::alloc::MiMalloc;
#[cfg(not(feature = "mimalloc"))]
static INNER: std::alloc::System = std::alloc::System;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to `INNER` unchanged; the counter is all that
// is added.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(l.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(l.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated and not yet freed, in KiB: the whole test process, clients
/// and upstreams included.
fn live_kib() -> u64 {
    LIVE_BYTES.load(Ordering::Relaxed) >> 10
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// What the clients did.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    good: AtomicU64,
    bytes: AtomicU64,
    failures: Mutex<Vec<String>>,
    leaves: Mutex<Vec<String>>,
    by_kind: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn start(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
    fn ok(&self, kind: &'static str, bytes: usize) {
        self.good.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        *self.by_kind.lock().expect("lock").entry(kind).or_default() += 1;
    }
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().expect("lock");
        if f.len() < 50 {
            f.push(what);
        }
    }
}

/// Checks a download answer: 200, and the body's hash is the one the upstream
/// computed and the one the client expects from the seed.
fn check_download(got: &Got, seed: u64, len: usize) -> Result<(), String> {
    if got.status != StatusCode::OK {
        return Err(format!("status {} {:?}", got.status, got.text()));
    }
    let want = sha(&payload(seed, len));
    let body = sha(&got.body);
    if got.header("x-sha256") != Some(want.as_str()) || body != want {
        return Err(format!(
            "download seed={seed} len={len}: body {} bytes, hash {body}, want {want}",
            got.body.len()
        ));
    }
    Ok(())
}

fn check_upload(got: &Got, body: &[u8]) -> Result<(), String> {
    if got.status != StatusCode::OK {
        return Err(format!("status {} {:?}", got.status, got.text()));
    }
    let want = sha(body);
    if got.text() != want {
        return Err(format!(
            "upload of {} bytes: upstream hashed {}, want {want}",
            body.len(),
            got.text()
        ));
    }
    Ok(())
}

fn download(seed: u64, len: usize) -> Request<Full<Bytes>> {
    Request::get(format!("/data?seed={seed}&len={len}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

fn upload(body: Bytes) -> Request<Full<Bytes>> {
    Request::post("/upload")
        .header("host", "localhost")
        .body(Full::new(body))
        .expect("request")
}

/// Sizes that cross buffer and frame boundaries, from empty to 256 KiB.
fn size_for(i: u64) -> usize {
    const SIZES: &[usize] = &[0, 1, 100, 4096, 16_383, 16_385, 65_536, 100_000, 262_144];
    SIZES[(i as usize) % SIZES.len()]
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h1_send(c: &mut H1, req: Request<Full<Bytes>>) -> Result<Got, String> {
    timeout(PER_REQUEST, async {
        c.ready().await.map_err(|e| format!("h1 not ready: {e}"))?;
        let resp = c
            .send_request(req)
            .await
            .map_err(|e| format!("h1 send: {e}"))?;
        collect_checked(resp).await
    })
    .await
    .map_err(|_| "h1 request timed out".to_string())?
}

async fn h2_send(mut c: H2, req: Request<Full<Bytes>>) -> Result<Got, String> {
    timeout(PER_REQUEST, async {
        c.ready().await.map_err(|e| format!("h2 not ready: {e}"))?;
        let resp = c
            .send_request(req)
            .await
            .map_err(|e| format!("h2 send: {e}"))?;
        collect_checked(resp).await
    })
    .await
    .map_err(|_| "h2 request timed out".to_string())?
}

/// Like `support::collect`, but a broken body is an error, not a panic.
async fn collect_checked(resp: Response<Incoming>) -> Result<Got, String> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|e| format!("body cut: {e}"))?;
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    })
}

/// Starts every kind of client against portico at `addr` until `deadline`.
fn load(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    tally: &Arc<Tally>,
    deadline: Instant,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();

    // HTTP/1.1 keep-alive: one connection each, downloads and small uploads.
    for w in 0..4u64 {
        let (t, roots) = (tally.clone(), roots.clone());
        tasks.spawn(async move {
            let mut c = h1(addr, roots).await;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let seed = (w << 40) | i;
                t.start();
                let r = if i % 5 == 4 {
                    let body = Bytes::from(payload(seed, 3000 + (i as usize % 7) * 1000));
                    h1_send(&mut c, upload(body.clone()))
                        .await
                        .and_then(|g| check_upload(&g, &body).map(|_| body.len()))
                } else {
                    let len = size_for(i);
                    h1_send(&mut c, download(seed, len))
                        .await
                        .and_then(|g| check_download(&g, seed, len).map(|_| len))
                };
                match r {
                    Ok(n) => t.ok("h1 keep-alive", n),
                    Err(e) => t.fail(format!("h1 keep-alive #{w}: {e}")),
                }
                i += 1;
            }
        });
    }

    // HTTP/2: one connection each, 8 streams at a time.
    for w in 0..2u64 {
        let (t, roots) = (tally.clone(), roots.clone());
        tasks.spawn(async move {
            let c = h2(addr, roots).await;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let mut batch = tokio::task::JoinSet::new();
                for _ in 0..8 {
                    let seed = (1 << 50) | (w << 40) | i;
                    let len = size_for(i.wrapping_mul(7));
                    let (c, t) = (c.clone(), t.clone());
                    t.start();
                    batch.spawn(async move {
                        match h2_send(c, download(seed, len))
                            .await
                            .and_then(|g| check_download(&g, seed, len))
                        {
                            Ok(()) => t.ok("h2 stream", len),
                            Err(e) => t.fail(format!("h2 #{w}: {e}")),
                        }
                    });
                    i += 1;
                }
                while batch.join_next().await.is_some() {}
            }
        });
    }

    // A new TLS connection for every request; notes the leaf it was served.
    for w in 0..2u64 {
        let (t, roots) = (tally.clone(), roots.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let seed = (2 << 50) | (w << 40) | i;
                let len = size_for(i);
                t.start();
                let r = async {
                    let tls = timeout(
                        PER_REQUEST,
                        tls_connect(
                            addr,
                            "localhost",
                            client_config(roots.clone(), &[b"http/1.1"], None),
                        ),
                    )
                    .await
                    .map_err(|_| "handshake timed out".to_string())?
                    .map_err(|e| format!("handshake: {e}"))?;
                    let leaf = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| sha(c.as_ref()))
                        .unwrap_or_default();
                    let (mut c, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                        .await
                        .map_err(|e| format!("h1 handshake: {e}"))?;
                    tokio::spawn(conn);
                    let g = h1_send(&mut c, download(seed, len)).await?;
                    check_download(&g, seed, len)?;
                    Ok::<_, String>(leaf)
                }
                .await;
                match r {
                    Ok(leaf) => {
                        t.ok("new connection", len);
                        let mut l = t.leaves.lock().expect("lock");
                        if l.last() != Some(&leaf) {
                            l.push(leaf);
                        }
                    }
                    Err(e) => t.fail(format!("new connection #{w}: {e}")),
                }
                i += 1;
            }
        });
    }

    // Uploads up to 2 MiB, over HTTP/1.1 and HTTP/2 in turn.
    for w in 0..2u64 {
        let (t, roots) = (tally.clone(), roots.clone());
        tasks.spawn(async move {
            let mut c1 = h1(addr, roots.clone()).await;
            let c2 = h2(addr, roots).await;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let seed = (3 << 50) | (w << 40) | i;
                let len = [1usize, 65_535, 300_000, 1 << 20, 2 << 20][(i % 5) as usize];
                let body = Bytes::from(payload(seed, len));
                t.start();
                let r = if i.is_multiple_of(2) {
                    h1_send(&mut c1, upload(body.clone())).await
                } else {
                    h2_send(c2.clone(), upload(body.clone())).await
                };
                match r.and_then(|g| check_upload(&g, &body)) {
                    Ok(()) => t.ok("upload", len),
                    Err(e) => t.fail(format!("upload #{w} ({len} bytes): {e}")),
                }
                i += 1;
            }
        });
    }

    // WebSocket sessions.
    for w in 0..2u64 {
        let (t, roots) = (tally.clone(), roots.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                ws_session(addr, roots.clone(), (4 << 50) | (w << 40) | i, &t).await;
                i += 1;
            }
        });
    }

    tasks
}

/// Run on the runtime the binary builds (`app::runtime`), so that its workers
/// give memory back as they do in portico.
#[test]
#[ignore = "slow (about two minutes): cargo test --release --test soak -- --ignored"]
fn soak_mixed_load_loses_nothing_and_gives_back_fds_and_memory() {
    portico::app::runtime(4)
        .expect("the runtime")
        .block_on(soak());
}

async fn soak() {
    let load_for = Duration::from_secs(
        std::env::var("SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let up_open = Arc::new(AtomicU64::new(0));
    let (up_addr, up_task) = http_upstream(up_open.clone()).await;
    let (ws_addr, ws_task) = ws_upstream().await;
    let ws_route = format!("/ws=http://{ws_addr}");
    let secret_pair: Arc<Mutex<Option<Pair>>> = Arc::default();
    let sp = secret_pair.clone();
    let p = start(&format!("http://{up_addr}"), move |cfg, pki, dir| {
        let pair = pki.server(&["localhost", "127.0.0.1"]);
        let secret = dir.join("secret");
        kubelet_pair(&secret, &pair);
        *sp.lock().expect("lock") = Some(pair);
        cfg.certs = vec![CertSource {
            cert: secret.join("tls.crt"),
            key: secret.join("tls.key"),
            option: "tls-dir",
        }];
        cfg.cert_poll_interval = Duration::from_secs(1);
        cfg.routes = vec![Route::parse(&ws_route).expect("route")];
    })
    .await;
    let addr = p.tls_addr;
    let secret = p.dir.path().join("secret");
    let tally = Arc::new(Tally::default());

    // File descriptors: the baseline is portico idle, before any client.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fd_base = open_fds();
    let live_idle = live_kib();

    // Resident memory: the baseline is after a short run of the same load, so
    // that what the allocator keeps for the working set (per-thread caches,
    // segments not yet purged) and lazily made things are in it; what grows
    // after that is what counts.
    let warm = Arc::new(Tally::default());
    let mut tasks = load(
        addr,
        p.roots(),
        &warm,
        Instant::now() + Duration::from_secs(WARM_UP_SECONDS),
    );
    while let Some(r) = tasks.join_next().await {
        r.expect("a warm-up client task panicked");
    }
    let warm_failures = warm.failures.lock().expect("lock").clone();
    assert!(warm_failures.is_empty(), "warm-up: {warm_failures:#?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base = rss_kib();
    eprintln!(
        "soak: warm-up {} requests; baseline {fd_base} fds (idle), {rss_base} KiB RSS \
         (after warm-up); load for {load_for:?}",
        warm.good.load(Ordering::Relaxed)
    );
    let t0 = Instant::now();
    let deadline = t0 + load_for;
    let mut tasks = load(addr, p.roots(), &tally, deadline);

    // Certificate rotations every 3 s, as the kubelet writes them.
    let rotations = {
        let pki = &p.pki;
        let mut n = 1u64;
        let mut last = secret_pair.lock().expect("lock").clone().expect("pair");
        while Instant::now() + Duration::from_secs(3) < deadline {
            tokio::time::sleep(Duration::from_secs(3)).await;
            last = pki.server(&["localhost", "127.0.0.1"]);
            kubelet_pair(&secret, &last);
            n += 1;
        }
        *secret_pair.lock().expect("lock") = Some(last);
        n - 1
    };

    while let Some(r) = tasks.join_next().await {
        r.expect("a client task panicked");
    }
    let load_took = t0.elapsed();

    // New handshakes get the last certificate.
    let last = secret_pair.lock().expect("lock").clone().expect("pair");
    let want_leaf = sha(last.leaf_der().as_ref());
    let served = eventually(Duration::from_secs(3), "the last rotation served", || {
        let (roots, want) = (p.roots(), want_leaf.clone());
        async move {
            let tls = tls_connect(
                addr,
                "localhost",
                client_config(roots, &[b"http/1.1"], None),
            )
            .await
            .ok()?;
            let leaf = sha(tls.get_ref().1.peer_certificates()?.first()?.as_ref());
            (leaf == want).then_some(leaf)
        }
    })
    .await;
    assert_eq!(served, want_leaf);

    let sent = tally.sent.load(Ordering::Relaxed);
    let good = tally.good.load(Ordering::Relaxed);
    let failures = tally.failures.lock().expect("lock").clone();
    let leaves = tally.leaves.lock().expect("lock").len();
    let metrics = p.metrics_text();
    let reload_ok = metric(
        &metrics,
        r#"portico_certificate_reloads_total{result="ok"}"#,
    )
    .unwrap_or(0.0);
    let reload_failed = metric(
        &metrics,
        r#"portico_certificate_reloads_total{result="failed"}"#,
    )
    .unwrap_or(0.0);
    eprintln!(
        "soak: {sent} sent, {good} good in {load_took:.1?} ({:.0}/s), {} MiB of bodies; \
         {rotations} rotations, {reload_ok} reloads ok, {reload_failed} failed, \
         {leaves} leaf changes seen by new connections; by kind {:?}",
        good as f64 / load_took.as_secs_f64(),
        tally.bytes.load(Ordering::Relaxed) >> 20,
        tally.by_kind.lock().expect("lock"),
    );
    assert!(failures.is_empty(), "lost or corrupted: {failures:#?}");
    assert_eq!(sent, good, "every request answered and checked");
    assert!(good > 1000, "the load ran ({good} requests)");
    assert!(rotations >= 5, "rotations happened ({rotations})");
    assert!(
        leaves as u64 >= rotations / 2,
        "new connections saw the rotations ({leaves} leaves for {rotations} rotations)"
    );
    assert_eq!(reload_failed, 0.0, "a kubelet update never fails a reload");

    // Give back: every client is gone; portico's idle upstream connections
    // expire after its 30 s pool timeout.
    let settle = Instant::now();
    let fd_limit = fd_base + 10;
    let fds = loop {
        let n = open_fds();
        if n <= fd_limit || settle.elapsed() > Duration::from_secs(75) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let rss = rss_kib();
    let live = live_kib();
    eprintln!(
        "soak: after {:.1?} settle: {fds} fds (baseline {fd_base}), {rss} KiB RSS \
         (baseline {rss_base}, {:+} KiB), {live} KiB live in the heap ({live_idle} \
         before any client, {:+} KiB); connections open per metrics: {:?}",
        settle.elapsed(),
        rss as i64 - rss_base as i64,
        live as i64 - live_idle as i64,
        metric(&p.metrics_text(), "portico_connections_open"),
    );
    assert!(
        fds <= fd_limit,
        "file descriptors: {fds} open, baseline {fd_base}; upstream sees {} connections; {}",
        up_open.load(Ordering::Relaxed),
        fd_report(&[
            (addr.port(), "portico"),
            (up_addr.port(), "upstream"),
            (ws_addr.port(), "ws-upstream"),
        ])
    );
    assert!(
        live <= live_idle + 8 * 1024,
        "heap: {live} KiB live after the load, {live_idle} KiB with portico idle \
         before any client: something outlived its request or connection"
    );
    assert!(
        rss <= rss_base + 32 * 1024,
        "resident memory: {rss} KiB, baseline {rss_base} KiB"
    );
    ws_task.abort();
    up_task.abort();
}

/// One WebSocket session through portico: a few text and binary echoes, then a
/// close answered by the upstream's close.
async fn ws_session(addr: SocketAddr, roots: rustls::RootCertStore, seed: u64, t: &Tally) {
    t.start();
    let r = timeout(PER_REQUEST, async {
        let tls = tls_connect(
            addr,
            "localhost",
            client_config(roots, &[b"http/1.1"], None),
        )
        .await
        .map_err(|e| format!("ws tls: {e}"))?;
        let url = format!("wss://localhost:{}/ws/echo", addr.port());
        let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), tls)
            .await
            .map_err(|e| format!("ws handshake: {e}"))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!("ws status {}", resp.status()));
        }
        let mut bytes = 0;
        for k in 0..10u64 {
            let m = if k % 2 == 0 {
                Message::text(hex(payload(seed ^ k, 64)))
            } else {
                Message::binary(payload(seed ^ k, 1 + (k as usize * 7919) % 100_000))
            };
            bytes += m.len();
            ws.send(m.clone())
                .await
                .map_err(|e| format!("ws send: {e}"))?;
            match ws.next().await {
                Some(Ok(echo)) if echo == m => {}
                Some(Ok(other)) => {
                    return Err(format!("ws echo differs ({} bytes)", other.len()));
                }
                Some(Err(e)) => return Err(format!("ws read: {e}")),
                None => return Err("ws closed early".into()),
            }
        }
        ws.close(None).await.map_err(|e| format!("ws close: {e}"))?;
        let mut closed = false;
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(_)) => closed = true,
                Ok(_) => return Err("ws message after close".into()),
                Err(_) => break,
            }
        }
        if !closed {
            return Err("ws: the upstream's close did not come back".into());
        }
        Ok(bytes)
    })
    .await
    .unwrap_or_else(|_| Err("ws session timed out".into()));
    match r {
        Ok(n) => t.ok("websocket session", n),
        Err(e) => t.fail(format!("websocket: {e}")),
    }
}
