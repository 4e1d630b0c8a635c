//! Shared test support: a fresh rcgen PKI per test, portico started in-process
//! on 127.0.0.1:0 or as the real binary, real upstream servers, and real TLS
//! clients that trust only the test CA; raw clients and upstreams for what
//! well-behaved peers never send ([`raw`], [`h2raw`], [`tlsrec`]).

pub mod answer;
pub mod h2raw;
pub mod measure;
pub mod raw;
pub mod tlsrec;

pub use answer::*;
pub use measure::*;
pub use raw::*;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico::app::{self, App};
use portico::config::{CertSource, Config};
use portico::routing::UpstreamAddr;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// Milliseconds, for the many short durations of these tests.
pub const MS: fn(u64) -> Duration = Duration::from_millis;

static INIT: Once = Once::new();

/// Installs the crypto provider and a test log writer, once per binary.
pub fn init() {
    INIT.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A PEM certificate chain and key.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pair {
    /// Writes `tls.crt` and `tls.key` into `dir`.
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let c = dir.join("tls.crt");
        let k = dir.join("tls.key");
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }

    /// The leaf as DER.
    pub fn leaf_der(&self) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .next()
            .expect("a cert")
            .expect("valid pem")
    }
}

/// A throwaway CA.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    /// A CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Pair {
        self.leaf(names, |_| {})
    }

    /// A leaf with extra settings.
    pub fn leaf(&self, names: &[&str], f: impl FnOnce(&mut CertificateParams)) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        f(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate with a CN, DNS and URI SANs.
    pub fn client(&self, cn: &str, dns: &[&str], uris: &[&str]) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Test Org");
        for d in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into().expect("dns")));
        }
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().expect("uri")));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A root store holding this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut r = RootCertStore::empty();
        r.add(self.ca_der.clone()).expect("root");
        r
    }
}

/// A TLS client configuration trusting `roots`, offering `alpn`.
pub fn client_config(
    roots: RootCertStore,
    alpn: &[&[u8]],
    cert: Option<&Pair>,
) -> rustls::ClientConfig {
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut c = match cert {
        Some(p) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(p.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).expect("key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// Opens a TLS connection to `addr` with SNI `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    connector.connect(name, tcp).await
}

/// An HTTP/1.1 client connection over TLS.
pub async fn h1(
    addr: SocketAddr,
    roots: RootCertStore,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tls = tls_connect(
        addr,
        "localhost",
        client_config(roots, &[b"http/1.1"], None),
    )
    .await
    .expect("tls connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn.with_upgrades());
    send
}

/// An HTTP/2 client connection over TLS.
pub async fn h2(
    addr: SocketAddr,
    roots: RootCertStore,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tls = tls_connect(addr, "localhost", client_config(roots, &[b"h2"], None))
        .await
        .expect("tls connect");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// A full response, collected.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Got {
    /// The first value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The body, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a whole response: head, body and trailers.
pub async fn collect(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// `GET path` over a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, roots: RootCertStore, path: &str) -> Got {
    let mut c = h1(addr, roots).await;
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req");
    collect(c.send_request(req).await.expect("response")).await
}

/// A request builder with a body.
pub fn req(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request")
}

/// Sends `req` on `c` and collects the answer.
pub async fn send(
    c: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Got {
    c.ready().await.expect("client connection ready");
    collect(c.send_request(req).await.expect("response")).await
}

/// `GET path` with `Host: localhost`, for an HTTP/1.1 connection.
pub fn h1_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req")
}

/// `GET path` in absolute form, for an HTTP/2 connection to `p`.
pub fn h2_get(p: &Portico, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://localhost:{}{path}", p.tls_addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("req")
}

/// All values of a header, as strings.
pub fn all(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect()
}

/// The one value of a header, as a string.
pub fn one<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().expect("ascii"))
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A real HTTP server on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Its `http://` URL, for `--upstream`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The last request it saw.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }
    /// How many requests it saw.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Handler = Arc<
    dyn Fn(Seen) -> std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// An upstream whose answers come from `f`; it records every request (body read whole).
pub async fn upstream_with<F, Fut>(h2c: bool, f: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |s| Box::pin(f(s)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let s = Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        seen.lock().expect("lock").push(s.clone());
                        Ok::<_, std::convert::Infallible>(handler(s).await)
                    }
                });
                let io = TokioIo::new(tcp);
                if h2c {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Upstream { addr, seen, task }
}

/// An upstream that answers `200` with body `hello from upstream`.
pub async fn hello_upstream() -> Upstream {
    upstream_with(false, |_| async {
        Response::new(Full::new(Bytes::from_static(b"hello from upstream")))
    })
    .await
}

/// An upstream that answers `GET /sleep/MS` after MS milliseconds, anything else at once.
pub async fn sleepy_upstream() -> Upstream {
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

/// Waits until the upstream has seen at least `n` requests.
pub async fn wait_seen(up: &Upstream, n: usize) {
    eventually(
        Duration::from_secs(3),
        "the upstream sees the requests",
        || async { (up.count() >= n).then_some(()) },
    )
    .await
}

/// Deterministic bytes (xorshift), so corruption or reordering is visible.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A port on 127.0.0.1 where nothing listens, and the socket that holds it:
/// bound but not listening, so a connection is refused and, while the socket
/// lives, no other test can take the port (a bound-then-closed one could be).
pub async fn dead_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    (s.local_addr().expect("addr"), s)
}

/// portico running in this test's runtime.
pub struct Portico {
    pub tls_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub redirect_addr: Option<SocketAddr>,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub drain: Arc<portico::shutdown::Drain>,
    pub metrics: Arc<portico::telemetry::Metrics>,
    pub run: tokio::task::JoinHandle<()>,
    _shared: Shared,
}

impl Portico {
    /// Roots that trust the test CA.
    pub fn roots(&self) -> RootCertStore {
        self.pki.roots()
    }
    /// `GET path` over a fresh HTTP/1.1 connection.
    pub async fn get(&self, path: &str) -> Got {
        get(self.tls_addr, self.roots(), path).await
    }
    /// An HTTP/1.1 connection.
    pub async fn h1(&self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        h1(self.tls_addr, self.roots()).await
    }
    /// An HTTP/2 connection.
    pub async fn h2(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        h2(self.tls_addr, self.roots()).await
    }
    /// The metrics as `/metrics` would serve them.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }
}

/// The admin server's address (the test config turns it on).
pub fn admin(p: &Portico) -> SocketAddr {
    p.admin_addr.expect("admin server on")
}

/// `GET /readyz` on the admin server at `addr`.
pub async fn readyz(addr: SocketAddr) -> Got {
    plain_get(addr, "/readyz").await
}

/// `GET /metrics` on `p`'s admin server: its text, once it answered 200.
pub async fn scrape(p: &Portico) -> String {
    let g = plain_get(admin(p), "/metrics").await;
    assert_eq!(g.status, 200);
    g.text()
}

/// The count of failed TLS handshakes.
pub fn failed_handshakes(p: &Portico) -> f64 {
    metric(
        &p.metrics_text(),
        "portico_tls_handshakes_total{result=\"failed\"}",
    )
    .unwrap_or(0.0)
}

/// Waits until exactly `n` handshakes have failed (the counter moves just after
/// the socket closes), then checks it stays there.
pub async fn assert_failed_handshakes(p: &Portico, n: f64) {
    eventually(MS(3000), &format!("{n} failed handshakes"), || async {
        (failed_handshakes(p) >= n).then_some(())
    })
    .await;
    tokio::time::sleep(MS(100)).await;
    assert_eq!(failed_handshakes(p), n, "exactly {n} failed handshakes");
}

/// A configuration for tests: loopback, port 0, a localhost certificate from `pki`.
pub fn test_config(pki: &Pki, dir: &Path, upstream: &str) -> Config {
    let pair = pki.server(&["localhost", "127.0.0.1"]);
    let (cert, key) = pair.write_to(&dir.join("tls"));
    let mut cfg = Config::defaults();
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.upstream = UpstreamAddr::parse(upstream).expect("upstream");
    cfg.certs = vec![CertSource {
        cert,
        key,
        option: "tls-dir",
    }];
    cfg.access_log = false;
    cfg.workers = 2;
    cfg
}

/// Starts portico with the test config, adjusted by `f`.
pub async fn start(upstream: &str, f: impl FnOnce(&mut Config, &Pki, &Path)) -> Portico {
    let shared = shared().await;
    init();
    let pki = Pki::new("portico test CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(&pki, dir.path(), upstream);
    f(&mut cfg, &pki, dir.path());
    let app: App = app::build(cfg).await.expect("portico starts");
    Portico {
        tls_addr: app.tls_addr,
        admin_addr: app.admin_addr,
        redirect_addr: app.redirect_addr,
        pki,
        dir,
        drain: app.drain.clone(),
        metrics: app.metrics.clone(),
        run: tokio::spawn(app.run()),
        _shared: shared,
    }
}

/// Plain HTTP/1.1 GET to the admin server (or any plain listener).
pub async fn plain_get(addr: SocketAddr, path: &str) -> Got {
    plain_request(addr, http::Method::GET, path).await
}

/// A request without a body on a fresh plain HTTP/1.1 connection.
pub async fn plain_request(addr: SocketAddr, method: http::Method, path: &str) -> Got {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("req");
    collect(send.send_request(req).await.expect("response")).await
}

/// The TLS and admin addresses (`None` when off) that a portico process
/// reports in its "portico is serving" line, text or JSON; started on port 0,
/// a test learns its ports here rather than racing other tests for a freed one.
pub fn serving_addrs(log: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let line = log.lines().find(|l| l.contains("portico is serving"))?;
    let field = |key: &str| -> Option<SocketAddr> {
        let at = [format!("{key}="), format!("\"{key}\":\"")]
            .iter()
            .find_map(|k| line.find(k.as_str()).map(|i| i + k.len()))?;
        let v: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
            .collect();
        v.parse().ok()
    };
    Some((field("tls")?, field("admin")))
}

/// Waits until the portico process logging to `log` says where it serves
/// (see [`serving_addrs`]); panics with the log if `exited` reports an exit
/// first or nothing comes `within`.
pub fn wait_serving(
    log: &Path,
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
    within: Duration,
) -> (SocketAddr, Option<SocketAddr>) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addrs) = serving_addrs(&text) {
            return addrs;
        }
        if let Some(status) = exited() {
            panic!("portico exited {status} before serving:\n{text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "portico did not report serving within {within:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("not within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `d` is within `lo..=hi`.
#[track_caller]
pub fn assert_between(d: Duration, lo: Duration, hi: Duration, what: &str) {
    assert!(
        d >= lo && d <= hi,
        "{what}: took {d:?}, expected {lo:?}..{hi:?}"
    );
}

/// The value of one sample line in a Prometheus text exposition, e.g.
/// `portico_requests_total{route="default",code="200"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Where `needle` first stands in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Distinct names for the timestamped directories of successive updates.
static UPDATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Updates the Secret volume in `dir` as the kubelet's AtomicWriter does: the
/// files go into a new timestamped hidden directory, a `..data_tmp` symlink to
/// it is renamed over `..data` (atomic), the user-visible names are symlinks to
/// `..data/NAME` (created on the first update), and the old hidden directory is
/// removed.
pub fn kubelet_update(dir: &Path, files: &[(&str, &[u8])]) {
    std::fs::create_dir_all(dir).expect("mkdir secret volume");
    let n = UPDATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ts = format!("..2026_11_26_21_51_12.{n:09}");
    let hidden = dir.join(&ts);
    std::fs::create_dir(&hidden).expect("mkdir timestamped dir");
    for (name, content) in files {
        std::fs::write(hidden.join(name), content).expect("write payload");
    }
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).expect("symlink ..data_tmp");
    std::fs::rename(&tmp, &data).expect("rename ..data_tmp -> ..data");
    for (name, _) in files {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &visible)
                .expect("symlink visible name");
        }
    }
    if let Some(old) = old {
        if old != Path::new(&ts) {
            std::fs::remove_dir_all(dir.join(old)).expect("remove old timestamped dir");
        }
    }
}

/// A `kubernetes.io/tls` Secret update with `pair`.
pub fn kubelet_pair(dir: &Path, pair: &Pair) {
    kubelet_update(
        dir,
        &[
            ("tls.crt", pair.cert_pem.as_bytes()),
            ("tls.key", pair.key_pem.as_bytes()),
        ],
    );
}

/// Kills and reaps the child when the test ends, however it ends.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// portico as a child process (the real binary), on 127.0.0.1:0 with a
/// certificate from a fresh CA, its log in a file; `--access-log off` unless
/// `extra` sets it.
pub struct Bin {
    pub child: tokio::process::Child,
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    pub roots: rustls::RootCertStore,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    _shared: Shared,
}

impl Bin {
    /// Starts the binary in front of `upstream`, with `extra` arguments.
    pub async fn start(upstream: &str, extra: &[&str]) -> Bin {
        let shared = shared().await;
        init();
        let pki = Pki::new("portico binary CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pki
            .server(&["localhost", "127.0.0.1"])
            .write_to(&dir.path().join("tls"));
        let log = dir.path().join("portico.log");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PORTICO_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", upstream, "--workers", "2"])
            .args(if extra.contains(&"--access-log") {
                &[][..]
            } else {
                &["--access-log", "off"][..]
            })
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(extra)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn portico");
        let (tls, admin) = wait_serving(
            &log,
            || child.try_wait().expect("try_wait"),
            Duration::from_secs(10),
        );
        let admin = admin.expect("admin address in the serving line");
        // The serving line comes after the listeners are bound: one request
        // is enough, no polling.
        assert_eq!(plain_get(admin, "/healthz").await.status, 200);
        Bin {
            child,
            tls,
            admin,
            roots: pki.roots(),
            log,
            _dir: dir,
            _shared: shared,
        }
    }

    /// Sends `sig` (e.g. `-TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let st = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Waits for the exit, at most `within`.
    pub async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(st) => st.expect("wait"),
            Err(_) => panic!("portico still running after {within:?}:\n{}", self.logs()),
        }
    }

    /// What it has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An HTTP/1.1 connection.
    pub async fn h1(&self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        h1(self.tls, self.roots.clone()).await
    }
}

/// Runs a command (`ip netns ...` for the namespace tests); its stderr in the error.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two network namespaces joined by a veth pair, as two hosts: `pod` at
/// `{net}.1` and `peer` at `{net}.2` (a /24 of a documentation prefix), each
/// with its loopback up. The processes in `children` are killed and the
/// namespaces deleted on drop. Needs root (`ip netns`).
pub struct Netns {
    pub pod: String,
    pub peer: String,
    pub children: Vec<std::process::Child>,
}

impl Netns {
    /// Namespaces `{prefix}-pod-{tag}` and `{prefix}-peer-{tag}` on `net`
    /// (e.g. `192.0.2`).
    pub fn pair(prefix: &str, tag: &str, net: &str) -> Result<Self, String> {
        let ns = Netns {
            pod: format!("{prefix}-pod-{tag}"),
            peer: format!("{prefix}-peer-{tag}"),
            children: Vec::new(),
        };
        // Interface names: at most 15 bytes.
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        sh(&["ip", "netns", "add", &ns.pod])?;
        sh(&["ip", "netns", "add", &ns.peer])?;
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ])?;
        sh(&["ip", "link", "set", &va, "netns", &ns.pod])?;
        sh(&["ip", "link", "set", &vb, "netns", &ns.peer])?;
        for (n, dev, host) in [(&ns.pod, &va, 1), (&ns.peer, &vb, 2)] {
            let addr = format!("{net}.{host}/24");
            sh(&["ip", "-n", n, "addr", "add", &addr, "dev", dev])?;
            sh(&["ip", "-n", n, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.pod, &self.peer] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}
