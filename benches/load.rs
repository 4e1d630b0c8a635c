//! Load bench: the real `portico` binary (pinned to one core, one worker)
//! between an in-process upstream and an in-process load generator (pinned to
//! the other core), over loopback. For each scenario it prints throughput,
//! latency percentiles (HDR histogram) and the proxy's CPU time per request,
//! read from `/proc/PID/stat` (utime + stime) over the measured window.
//!
//! Run: `cargo bench --bench load`. Knobs (environment):
//!
//! - `BENCH_SCENARIOS=S1,S2,...` (default all: S1 S1R S2 S2R S3E S3R S3T S4D S4U S5)
//! - `BENCH_SECS` (measured seconds per scenario, default 5), `BENCH_WARMUP_SECS` (default 1)
//! - `BENCH_S1R_RATE` (offered req/s of S1R, default 2500), `BENCH_S2R_RATE` (of S2R,
//!   default 20000), `BENCH_S3_CONC` (S3 connections at once, default 16),
//!   `BENCH_IDLE_CONNS` (S5, default 5000)
//! - `BENCH_TARGET_ADDR=127.0.0.1:PORT` + `BENCH_TARGET_PID=PID` + `BENCH_CA=ca.pem`: drive an
//!   already-running proxy (nginx, HAProxy, or a portico you started) instead of spawning one.
//!   It must serve the certificates written by `BENCH_WRITE_CERTS`: SNI `ec.bench.test`
//!   (ECDSA P-256) and `rsa.bench.test` (RSA-2048).
//! - `BENCH_LABEL` (the name in the table), `BENCH_JSON=FILE` (append one JSON line per scenario)
//! - `BENCH_UPSTREAM_ADDR=127.0.0.1:PORT`: the spawned portico forwards there instead of to
//!   the in-process upstream
//! - `BENCH_CLIENT_CPU` (default 1), `BENCH_PROXY_CPU` (default 0), `BENCH_PIN=0` to pin nothing
//! - `BENCH_TRACE=FILE`: S2 appends every measured request (connection, when it ended,
//!   its latency) to FILE, for `benches/waves.py`, which shows where S2's tail comes from
//!
//! Helper modes for `benches/compare.sh`: `BENCH_WRITE_CERTS=DIR` mints the CA and both
//! server pairs into DIR and exits; `BENCH_UPSTREAM_ONLY=PORT` runs only the upstream.
//! The upstream answers `GET /__accepted` with how many connections it has accepted, so
//! that compare.sh can tell a proxy that keeps its upstream connections from one that
//! opens new ones under load.
//!
//! Pinning is done with `taskset` (util-linux): this process pins all its own threads
//! with `taskset -a -p` before it starts any, and runs portico under `taskset -c`. The
//! file-descriptor limit is raised to the hard limit with `prlimit` for S5; portico
//! inherits it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::agreement;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, RootCertStore};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SMALL_BODY: &[u8] = b"hello from the bench upstream\n";
const MIB: usize = 1 << 20;
/// Connections the upstream has accepted (`GET /__accepted`).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
const SNI_EC: &str = "ec.bench.test";
const SNI_RSA: &str = "rsa.bench.test";
const ALL: &[&str] = &[
    "S1", "S1R", "S2", "S2R", "S3E", "S3R", "S3T", "S4D", "S4U", "S5",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Ok(dir) = std::env::var("BENCH_WRITE_CERTS") {
        let dir = PathBuf::from(dir);
        write_certs(&dir).expect("write certificates");
        println!("certificates written to {}", dir.display());
        return;
    }
    let pin = env_or("BENCH_PIN", 1u8) != 0;
    let client_cpu: usize = env_or("BENCH_CLIENT_CPU", 1);
    if pin {
        pin_self(client_cpu);
    }
    raise_nofile();
    if let Ok(port) = std::env::var("BENCH_UPSTREAM_ONLY") {
        let port: u16 = port.parse().expect("BENCH_UPSTREAM_ONLY=PORT");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind upstream");
            eprintln!("bench upstream on {}", l.local_addr().expect("addr"));
            serve_upstream(l).await;
        });
        return;
    }
    if let Err(e) = run(pin) {
        eprintln!("load bench failed: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- process plumbing

/// Pins every thread of this process (there is only the main one yet; later
/// threads inherit the mask) to `cpu`.
fn pin_self(cpu: usize) {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    if cpus.trim() == "0" {
        eprintln!("note: one CPU online, nothing pinned");
        return;
    }
    let ok = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("note: taskset failed, the load generator is not pinned");
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (S5 holds thousands of sockets).
fn raise_nofile() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            let line = l.lines().find(|l| l.starts_with("Max open files"))?;
            Some(line.split_whitespace().nth(4)?.to_string())
        });
    let (Some(hard), Some(soft)) = (hard, nofile_soft()) else {
        return;
    };
    if hard != "unlimited" && hard.parse::<u64>().is_ok_and(|h| h <= soft) {
        return;
    }
    let ok = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={hard}:"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("note: cannot raise the open-file limit (prlimit failed)");
    }
}

fn nofile_soft() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a process (all its threads, live and exited), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields from 3 (state) on: utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process that is killed when dropped.
struct Proxy {
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- certificates

struct Certs {
    ca_pem: String,
    ec: (String, String),
    rsa: (String, String),
}

fn mint_certs() -> Result<Certs, BoxError> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "portico bench CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, key: KeyPair| -> Result<(String, String), BoxError> {
        let mut p = CertificateParams::new(names.clone())?;
        p.distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let ec = leaf(
        vec![SNI_EC.into(), "localhost".into()],
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
    )?;
    // rcgen generates RSA keys with the aws-lc-rs backend (2048 bits for PKCS_RSA_SHA256).
    let rsa = leaf(
        vec![SNI_RSA.into()],
        KeyPair::generate_for(&PKCS_RSA_SHA256)?,
    )?;
    Ok(Certs {
        ca_pem: ca_cert.pem(),
        ec,
        rsa,
    })
}

/// DIR/ca.pem, DIR/{ec,rsa}/tls.{crt,key} (a kubernetes.io/tls layout for portico's
/// `--tls-dir`) and DIR/{ec,rsa}.pem (certificate + key, for HAProxy's `crt`).
fn write_certs(dir: &Path) -> Result<Certs, BoxError> {
    let certs = mint_certs()?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), &certs.ca_pem)?;
    for (name, (cert, key)) in [("ec", &certs.ec), ("rsa", &certs.rsa)] {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("tls.crt"), cert)?;
        std::fs::write(d.join("tls.key"), key)?;
        std::fs::write(dir.join(format!("{name}.pem")), format!("{cert}{key}"))?;
    }
    Ok(certs)
}

// ---------------------------------------------------------------- upstream

/// `GET /` small body, `GET /big` 1 MiB, `POST /upload` drains and counts the body,
/// `GET /__accepted` the connections accepted so far.
async fn serve_upstream(listener: TcpListener) {
    let big = Bytes::from(vec![b'x'; MIB]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        ACCEPTED.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let big = big.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let big = big.clone();
                async move { Ok::<_, Infallible>(upstream_answer(req, big).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn upstream_answer(req: Request<Incoming>, big: Bytes) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/big" => big,
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
                    Err(_) => break,
                }
            }
            Bytes::from(format!("received {n}\n"))
        }
        "/__accepted" => Bytes::from(ACCEPTED.load(Ordering::Relaxed).to_string()),
        _ => Bytes::from_static(SMALL_BODY),
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

// ---------------------------------------------------------------- client side

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    pid: u32,
    roots: Arc<RootCertStore>,
    clk_tck: u64,
    warm: Duration,
    secs: Duration,
}

fn client_config(t: &Target, alpn: &[u8], resume: bool) -> Arc<ClientConfig> {
    // X25519 only, so that every proxy does the same key exchange (rustls would
    // otherwise offer the post-quantum hybrid first, which OpenSSL 3.0 lacks).
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![*REUSED_X25519.get_or_init(ReusedX25519::new)];
    // AES-128-GCM first, as browsers, Go and rustls' own servers prefer: nginx and
    // HAProxy follow the client's order in TLS 1.3, portico its own, so all three
    // negotiate the same suite (the note in the table says which one).
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let provider = Arc::new(provider);
    let webpki = WebPkiServerVerifier::builder_with_provider(t.roots.clone(), provider.clone())
        .build()
        .expect("a verifier for the bench's CA");
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RememberingVerifier {
            webpki,
            checked: Mutex::default(),
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.resumption = if resume {
        Resumption::store(Arc::new(TicketPool::default()))
    } else {
        Resumption::disabled()
    };
    Arc::new(cfg)
}

/// The load client's certificate check: the full WebPKI check (chain and
/// handshake signature) the first time a server shows a certificate, then a
/// byte-for-byte match with one already checked for that name. ECDSA
/// verification is twice the cost of the server's signature: two per handshake
/// were a third of the client's CPU in S3, where the client, not the proxy
/// under test, was the bottleneck (h2load and wrk check nothing at all).
#[derive(Debug)]
struct RememberingVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    checked: Mutex<Vec<(CertificateDer<'static>, ServerName<'static>)>>,
}

impl ServerCertVerifier for RememberingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let known = |checked: &Vec<(CertificateDer<'static>, ServerName<'static>)>| {
            checked
                .iter()
                .any(|(c, n)| c.as_ref() == end_entity.as_ref() && n == server_name)
        };
        if known(&self.checked.lock().expect("verifier lock")) {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let mut checked = self.checked.lock().expect("verifier lock");
        if !known(&checked) {
            checked.push((end_entity.clone().into_owned(), server_name.to_owned()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let checked = self.checked.lock().expect("verifier lock");
        if checked.iter().any(|(c, _)| c.as_ref() == cert.as_ref()) {
            return Ok(HandshakeSignatureValid::assertion());
        }
        drop(checked);
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

static REUSED_X25519: std::sync::OnceLock<&'static ReusedX25519> = std::sync::OnceLock::new();

/// The load client's X25519 key share: one key pair for every handshake, so
/// the client does not pay a key generation per connection. The server still
/// generates its own and does the full agreement; a load generator's secrets
/// protect nothing.
#[derive(Debug)]
struct ReusedX25519 {
    key: agreement::PrivateKey,
    public: Vec<u8>,
}

impl ReusedX25519 {
    fn new() -> &'static Self {
        let key = agreement::PrivateKey::generate(&agreement::X25519).expect("an X25519 key");
        let public = key
            .compute_public_key()
            .expect("its public key")
            .as_ref()
            .to_vec();
        Box::leak(Box::new(Self { key, public }))
    }
}

impl SupportedKxGroup for ReusedX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        Ok(Box::new(ReusedShare(
            REUSED_X25519.get().expect("initialised"),
        )))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct ReusedShare(&'static ReusedX25519);

impl ActiveKeyExchange for ReusedShare {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        agreement::agree(
            &self.0.key,
            agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
            rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare),
            |secret| Ok(SharedSecret::from(secret)),
        )
    }

    fn pub_key(&self) -> &[u8] {
        &self.0.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// A client session store that keeps up to 256 TLS 1.3 tickets per server.
/// rustls' `ClientSessionMemoryCache` keeps 8, which 16 connections at once
/// drain, turning some resumptions into full handshakes.
#[derive(Debug, Default)]
struct TicketPool {
    tickets: Mutex<HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>,
    kx: Mutex<HashMap<ServerName<'static>, NamedGroup>>,
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.kx.lock().expect("lock").insert(name, group);
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.kx.lock().expect("lock").get(&name.to_owned()).copied()
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut t = self.tickets.lock().expect("lock");
        let q = t.entry(name).or_default();
        if q.len() >= 256 {
            q.pop_front();
        }
        q.push_back(value);
    }
    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.tickets.lock().expect("lock").get_mut(name)?.pop_back()
    }
}

async fn connect_tls(
    t: &Target,
    tls: &TlsConnector,
    sni: &'static str,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni)?;
    Ok(tls.connect(name, tcp).await?)
}

/// What one task saw inside the measured window.
struct Tally {
    hist: Histogram<u64>,
    n: u64,
    errors: u64,
    resumed: u64,
    cipher: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram"),
            n: 0,
            errors: 0,
            resumed: 0,
            cipher: None,
        }
    }

    fn record(&mut self, w: &Window, from: Instant, done: Instant) -> bool {
        if done >= w.warm && done <= w.end {
            self.n += 1;
            let us = done.saturating_duration_since(from).as_micros().max(1) as u64;
            let _ = self.hist.record(us.min(120_000_000));
            true
        } else {
            false
        }
    }

    fn merge(&mut self, o: Tally) {
        let _ = self.hist.add(&o.hist);
        self.n += o.n;
        self.errors += o.errors;
        self.resumed += o.resumed;
        if self.cipher.is_none() {
            self.cipher = o.cipher;
        }
    }
}

#[derive(Clone, Copy)]
struct Window {
    warm: Instant,
    end: Instant,
}

/// Samples the proxy's CPU ticks at the window's start and end from a plain
/// thread, so a busy runtime cannot delay the readings.
fn cpu_sampler(pid: u32, w: Window) -> std::thread::JoinHandle<Option<u64>> {
    std::thread::spawn(move || {
        std::thread::sleep(w.warm.saturating_duration_since(Instant::now()));
        let a = cpu_ticks(pid)?;
        std::thread::sleep(w.end.saturating_duration_since(Instant::now()));
        let b = cpu_ticks(pid)?;
        Some(b.saturating_sub(a))
    })
}

fn window(t: &Target) -> Window {
    let warm = Instant::now() + t.warm;
    Window {
        warm,
        end: warm + t.secs,
    }
}

/// One scenario's result.
struct Outcome {
    scenario: &'static str,
    n: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// Proxy CPU per unit.
    cpu: f64,
    unit: &'static str,
    /// Proxy CPU time over wall time in the window, percent.
    util: f64,
    errors: u64,
    note: String,
}

fn outcome(
    t: &Target,
    scenario: &'static str,
    tally: Tally,
    ticks: Option<u64>,
    units_per_req: f64,
    unit: &'static str,
    note: String,
) -> Outcome {
    let secs = t.secs.as_secs_f64();
    let cpu_us = ticks
        .map(|k| k as f64 * 1e6 / t.clk_tck as f64)
        .unwrap_or(f64::NAN);
    let mut note = note;
    if let Some(c) = &tally.cipher {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(c);
    }
    Outcome {
        scenario,
        n: tally.n,
        rps: tally.n as f64 / secs,
        p50_us: tally.hist.value_at_quantile(0.50),
        p99_us: tally.hist.value_at_quantile(0.99),
        p999_us: tally.hist.value_at_quantile(0.999),
        cpu: if tally.n > 0 {
            cpu_us / (tally.n as f64 * units_per_req)
        } else {
            f64::NAN
        },
        unit,
        util: cpu_us / 1e6 / secs * 100.0,
        errors: tally.errors,
        note,
    }
}

fn describe(conn: &rustls::ClientConnection) -> String {
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let kx = conn
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_default();
    format!("{suite} {kx}")
}

fn get(path: &str, authority: &str, h2: bool) -> Request<Full<Bytes>> {
    let b = Request::builder().method(Method::GET);
    let b = if h2 {
        b.uri(format!("https://{authority}{path}"))
    } else {
        b.uri(path).header(http::header::HOST, authority)
    };
    b.header(http::header::USER_AGENT, "portico-bench/1")
        .header(http::header::ACCEPT, "*/*")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

fn post(path: &str, authority: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "portico-bench/1")
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(body))
        .expect("request")
}

/// Reads a response body to the end, returning its length.
async fn drain(resp: Response<Incoming>) -> Result<usize, BoxError> {
    let status = resp.status();
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame?.data_ref().map_or(0, |d| d.len());
    }
    if status != StatusCode::OK {
        return Err(format!("status {status}").into());
    }
    Ok(n)
}

#[derive(Clone)]
enum Work {
    Get(&'static str),
    Upload(Bytes),
}

/// When one client slot sends its requests: back to back (closed loop), or at
/// a fixed offered load shared by `slots` slots, each on a schedule of its own.
struct Schedule {
    /// The next turn and the interval between turns, at a fixed load.
    next: Option<(Instant, Duration)>,
}

impl Schedule {
    /// Slot `slot` of `slots`, which offer `rate` req/s between them from `start`.
    fn new(rate: Option<f64>, start: Instant, slot: usize, slots: usize) -> Self {
        let next = rate.map(|r| {
            let every = Duration::from_secs_f64(slots as f64 / r);
            (start + every.mul_f64(slot as f64 / slots as f64), every)
        });
        Self { next }
    }

    /// Waits for the slot's next turn (at once in a closed loop) and returns
    /// the instant its request is timed from.
    async fn turn(&mut self, prev_done: Instant) -> Instant {
        let Some((at, every)) = self.next else {
            return Instant::now();
        };
        tokio::time::sleep_until(at.into()).await;
        self.next = Some((at + every, every));
        // A request whose turn came while the one before it was still out is
        // timed from its turn (a stall is not hidden). One whose slot was idle
        // is timed from when it is sent: tokio's timer wakes up to a
        // millisecond late, on the client's busy core, and that lag is the
        // client's, not the proxy's.
        if prev_done <= at {
            Instant::now()
        } else {
            at
        }
    }
}

/// HTTP/1.1 keep-alive: `conns` connections each sending requests back to back,
/// or, with `rate`, each on a fixed schedule (a request that waited for the one
/// before it is timed from its scheduled time, so a stall is not hidden by the
/// client waiting: no coordinated omission).
async fn run_h1(t: &Target, conns: usize, work: Work, rate: Option<f64>) -> (Tally, Option<u64>) {
    let cfg = client_config(t, b"http/1.1", false);
    let tls = TlsConnector::from(cfg);
    let mut senders = Vec::new();
    let mut cipher = None;
    for _ in 0..conns {
        match connect_tls(t, &tls, SNI_EC).await {
            Ok(s) => {
                cipher.get_or_insert_with(|| describe(s.get_ref().1));
                match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                    Ok((sender, conn)) => {
                        tokio::spawn(conn);
                        senders.push(sender);
                    }
                    Err(e) => eprintln!("http/1.1 handshake: {e}"),
                }
            }
            Err(e) => eprintln!("connect: {e}"),
        }
    }
    let w = window(t);
    let sampler = cpu_sampler(t.pid, w);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let t = t.clone();
        let tls = tls.clone();
        let work = work.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            let mut schedule = Schedule::new(rate, start, i, conns);
            let mut prev_done = start;
            loop {
                if Instant::now() >= w.end {
                    break;
                }
                let from = schedule.turn(prev_done).await;
                let req = match &work {
                    Work::Get(p) => get(p, SNI_EC, false),
                    Work::Upload(b) => post("/upload", SNI_EC, b.clone()),
                };
                let res = async {
                    sender.ready().await?;
                    let resp = sender.send_request(req).await?;
                    drain(resp).await
                }
                .await;
                prev_done = Instant::now();
                match res {
                    Ok(_) => {
                        tally.record(&w, from, prev_done);
                    }
                    Err(e) => {
                        tally.errors += 1;
                        if tally.errors <= 3 {
                            eprintln!("h1 request: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if let Ok(s) = connect_tls(&t, &tls, SNI_EC).await {
                            if let Ok((s2, conn)) =
                                hyper::client::conn::http1::handshake(TokioIo::new(s)).await
                            {
                                tokio::spawn(conn);
                                sender = s2;
                            }
                        }
                        prev_done = Instant::now();
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::new();
    total.cipher = cipher;
    while let Some(r) = tasks.join_next().await {
        if let Ok(tally) = r {
            total.merge(tally);
        }
    }
    (total, sampler.join().ok().flatten())
}

/// HTTP/2: `conns` connections x `streams` concurrent streams, back to back,
/// or with `rate` (req/s offered in all) each stream on a schedule of its own,
/// timed as `run_h1` times a scheduled request.
async fn run_h2(
    t: &Target,
    conns: usize,
    streams: usize,
    rate: Option<f64>,
) -> (Tally, Option<u64>) {
    let cfg = client_config(t, b"h2", false);
    let tls = TlsConnector::from(cfg);
    let mut senders = Vec::new();
    let mut cipher = None;
    for _ in 0..conns {
        match connect_tls(t, &tls, SNI_EC).await {
            Ok(s) => {
                if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                    eprintln!("the target did not negotiate h2");
                    continue;
                }
                cipher.get_or_insert_with(|| describe(s.get_ref().1));
                match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                    .await
                {
                    Ok((sender, conn)) => {
                        tokio::spawn(conn);
                        senders.push(sender);
                    }
                    Err(e) => eprintln!("h2 handshake: {e}"),
                }
            }
            Err(e) => eprintln!("connect: {e}"),
        }
    }
    let w = window(t);
    let sampler = cpu_sampler(t.pid, w);
    let mut tasks = tokio::task::JoinSet::new();
    let trace_to = std::env::var_os("BENCH_TRACE");
    let tracing = trace_to.is_some();
    let start = Instant::now();
    let slots = senders.len() * streams;
    for (conn, sender) in senders.iter().enumerate() {
        for stream in 0..streams {
            let mut sender = sender.clone();
            let slot = conn * streams + stream;
            tasks.spawn(async move {
                let mut tally = Tally::new();
                let mut trace = Vec::new();
                let mut schedule = Schedule::new(rate, start, slot, slots);
                let mut prev_done = start;
                loop {
                    if Instant::now() >= w.end {
                        break;
                    }
                    let from = schedule.turn(prev_done).await;
                    let res = async {
                        sender.ready().await?;
                        let resp = sender.send_request(get("/", SNI_EC, true)).await?;
                        drain(resp).await
                    }
                    .await;
                    prev_done = Instant::now();
                    match res {
                        Ok(_) => {
                            let done = prev_done;
                            if tally.record(&w, from, done) && tracing {
                                trace.push(Traced {
                                    conn,
                                    done: done - w.warm,
                                    took: done - from,
                                });
                            }
                        }
                        Err(e) => {
                            tally.errors += 1;
                            if tally.errors <= 3 {
                                eprintln!("h2 request: {e}");
                            }
                            if sender.is_closed() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (tally, trace)
            });
        }
    }
    let mut total = Tally::new();
    total.cipher = cipher;
    let mut traced = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok((tally, trace)) = r {
            total.merge(tally);
            traced.extend(trace);
        }
    }
    if let Some(path) = trace_to {
        if let Err(e) = write_trace(Path::new(&path), &traced) {
            eprintln!("BENCH_TRACE: {e}");
        }
    }
    (total, sampler.join().ok().flatten())
}

/// One request of S2, for `BENCH_TRACE`.
struct Traced {
    conn: usize,
    /// When it completed, from the start of the measured window.
    done: Duration,
    /// Its latency.
    took: Duration,
}

/// Appends one run's requests to `path`: a `# LABEL` line, then one line per
/// request, `CONN DONE_US LATENCY_US`, in the order the tasks ended.
/// `benches/waves.py` reads it.
fn write_trace(path: &Path, traced: &[Traced]) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut f = std::io::BufWriter::new(f);
    writeln!(f, "# {}", std::env::var("BENCH_LABEL").unwrap_or_default())?;
    for t in traced {
        writeln!(
            f,
            "{} {} {}",
            t.conn,
            t.done.as_micros(),
            t.took.as_micros()
        )?;
    }
    f.flush()
}

/// A new TLS 1.3 connection per request (`Connection: close`), `concurrency` at once.
async fn run_handshakes(
    t: &Target,
    sni: &'static str,
    resume: bool,
    concurrency: usize,
) -> (Tally, Option<u64>) {
    let tls = TlsConnector::from(client_config(t, b"http/1.1", resume));
    if resume {
        // Prime the ticket cache so the window holds resumptions only.
        for _ in 0..concurrency {
            let _ = one_shot(t, &tls, sni).await;
        }
    }
    let w = window(t);
    let sampler = cpu_sampler(t.pid, w);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let t = t.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            loop {
                let from = Instant::now();
                if from >= w.end {
                    break;
                }
                match one_shot(&t, &tls, sni).await {
                    Ok((resumed, cipher)) => {
                        if tally.record(&w, from, Instant::now()) && resumed {
                            tally.resumed += 1;
                        }
                        tally.cipher.get_or_insert(cipher);
                    }
                    Err(e) => {
                        tally.errors += 1;
                        if tally.errors <= 3 {
                            eprintln!("handshake request: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(tally) = r {
            total.merge(tally);
        }
    }
    (total, sampler.join().ok().flatten())
}

async fn one_shot(
    t: &Target,
    tls: &TlsConnector,
    sni: &'static str,
) -> Result<(bool, String), BoxError> {
    let s = connect_tls(t, tls, sni).await?;
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let cipher = describe(s.get_ref().1);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    let conn = tokio::spawn(conn);
    let mut req = get("/", sni, false);
    req.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    let resp = sender.send_request(req).await?;
    drain(resp).await?;
    drop(sender);
    let _ = conn.await;
    Ok((resumed, cipher))
}

/// Opens `n` TLS connections that complete the handshake and send nothing;
/// the proxy's RSS before and after, in KiB.
async fn run_idle(t: &Target, n: usize) -> (usize, Option<(u64, u64)>, u64) {
    let tls = TlsConnector::from(client_config(t, b"http/1.1", false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(t.pid);
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let t = t.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let r = connect_tls(&t, &tls, SNI_EC).await;
            drop(permit);
            r
        });
    }
    let mut open = Vec::with_capacity(n);
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => open.push(s),
            Ok(Err(e)) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("idle connect: {e}");
                }
            }
            Err(_) => errors += 1,
        }
    }
    // Let the proxy finish its side of the last handshakes.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(t.pid);
    let count = open.len();
    drop(open);
    tokio::time::sleep(Duration::from_millis(500)).await;
    (count, before.zip(after), errors)
}

// ---------------------------------------------------------------- the run

/// Starts portico on a free loopback port, pinned with `taskset` when `pin`.
fn spawn_portico(
    dir: &Path,
    upstream: SocketAddr,
    pin: bool,
) -> Result<(Proxy, SocketAddr), BoxError> {
    let port = free_port();
    let proxy_cpu: usize = env_or("BENCH_PROXY_CPU", 0);
    let exe = env!("CARGO_BIN_EXE_portico");
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", &proxy_cpu.to_string(), exe]);
        c
    } else {
        Command::new(exe)
    };
    let log = std::fs::File::create(dir.join("portico.log"))?;
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &format!("http://{upstream}")])
        .args(["--tls-dir", &dir.join("ec").display().to_string()])
        .args(["--tls-dir", &dir.join("rsa").display().to_string()])
        .args([
            "--workers",
            "1",
            "--access-log",
            "off",
            "--admin-listen",
            "off",
        ])
        .args(["--log-level", "warn", "--ready-check", "none"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // taskset execs portico: the child's pid is portico's.
    let child = cmd.spawn()?;
    Ok((Proxy { child }, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Waits until the target answers a request (15 s at most).
async fn wait_ready(t: &Target, log: &Path) -> Result<(), BoxError> {
    let tls = TlsConnector::from(client_config(t, b"http/1.1", false));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match one_shot(t, &tls, SNI_EC).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(format!("the target at {} never answered: {e}\n{log}", t.addr).into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn run(pin: bool) -> Result<(), BoxError> {
    let warm = Duration::from_secs_f64(env_or("BENCH_WARMUP_SECS", 1.0));
    let secs = Duration::from_secs_f64(env_or("BENCH_SECS", 5.0));
    let label = std::env::var("BENCH_LABEL").unwrap_or_else(|_| "portico".into());
    let wanted: Vec<String> = std::env::var("BENCH_SCENARIOS")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_ascii_uppercase())
                .collect()
        })
        .unwrap_or_else(|_| ALL.iter().map(|s| s.to_string()).collect());
    // "S3" and "S4" select their variants; others match exactly.
    let want = |s: &str| {
        wanted
            .iter()
            .any(|w| w == s || ((w == "S3" || w == "S4") && s.starts_with(w.as_str())))
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;

    // The upstream: in-process on its own thread (same CPU as the client), unless given.
    let upstream_addr: SocketAddr = match std::env::var("BENCH_UPSTREAM_ADDR") {
        Ok(a) => a.parse()?,
        Err(_) => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                rt.block_on(async move {
                    let l = TcpListener::from_std(l).expect("listener");
                    serve_upstream(l).await;
                });
            });
            addr
        }
    };

    // The target: a given proxy, or portico spawned here.
    let mut proxy_child: Option<Proxy> = None;
    let (addr, pid, ca_pem) = match std::env::var("BENCH_TARGET_ADDR") {
        Ok(a) => {
            let pid: u32 = std::env::var("BENCH_TARGET_PID")
                .map_err(|_| "BENCH_TARGET_ADDR needs BENCH_TARGET_PID")?
                .parse()?;
            let ca = std::env::var("BENCH_CA").map_err(|_| "BENCH_TARGET_ADDR needs BENCH_CA")?;
            (a.parse::<SocketAddr>()?, pid, std::fs::read_to_string(ca)?)
        }
        Err(_) => {
            let certs = write_certs(tmp.path())?;
            let (proxy, addr) = spawn_portico(tmp.path(), upstream_addr, pin)?;
            let pid = proxy.child.id();
            proxy_child = Some(proxy);
            (addr, pid, certs.ca_pem)
        }
    };

    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let mut target = Target {
        addr,
        pid,
        roots: Arc::new(roots),
        clk_tck: clk_tck(),
        warm,
        secs,
    };

    rt.block_on(wait_ready(&target, &tmp.path().join("portico.log")))?;

    eprintln!(
        "load bench: target {label} at {addr} (pid {pid}), upstream {upstream_addr}, \
         {:.0}s warm-up + {:.0}s per scenario, CLK_TCK {}",
        warm.as_secs_f64(),
        secs.as_secs_f64(),
        target.clk_tck
    );

    let json_path = std::env::var("BENCH_JSON").ok();
    let mut results = Vec::new();
    let mut emit = |o: Outcome| {
        eprintln!(
            "  {:<4} {:>9.0} req/s  p99 {:>8.2} ms  cpu {:>8.1} {}  ({:.0}% of a core)  errors {}",
            o.scenario,
            o.rps,
            o.p99_us as f64 / 1000.0,
            o.cpu,
            o.unit,
            o.util,
            o.errors
        );
        if let Some(p) = &json_path {
            let line = json_line(&label, &o);
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = writeln!(f, "{line}");
            }
        }
        results.push(o);
    };

    let s1_rate: f64 = env_or("BENCH_S1R_RATE", 2500.0);
    let s2_rate: f64 = env_or("BENCH_S2R_RATE", 20000.0);
    let s3_conc: usize = env_or("BENCH_S3_CONC", 16);
    let big_body = Bytes::from(vec![b'u'; MIB]);
    rt.block_on(async {
        if want("S1") {
            let (tally, ticks) = run_h1(&target, 64, Work::Get("/"), None).await;
            emit(outcome(
                &target,
                "S1",
                tally,
                ticks,
                1.0,
                "µs/req",
                "h1 keep-alive, 64 conns, closed loop".into(),
            ));
        }
        if want("S1R") {
            let (tally, ticks) = run_h1(&target, 64, Work::Get("/"), Some(s1_rate)).await;
            emit(outcome(
                &target,
                "S1R",
                tally,
                ticks,
                1.0,
                "µs/req",
                format!("h1 keep-alive, 64 conns, fixed {s1_rate:.0} req/s offered"),
            ));
        }
        if want("S2") {
            let (tally, ticks) = run_h2(&target, 16, 32, None).await;
            emit(outcome(
                &target,
                "S2",
                tally,
                ticks,
                1.0,
                "µs/req",
                "h2, 16 conns x 32 streams".into(),
            ));
        }
        if want("S2R") {
            let (tally, ticks) = run_h2(&target, 16, 32, Some(s2_rate)).await;
            emit(outcome(
                &target,
                "S2R",
                tally,
                ticks,
                1.0,
                "µs/req",
                format!("h2, 16 conns x 32 streams, fixed {s2_rate:.0} req/s offered"),
            ));
        }
        for (name, sni, resume, what) in [
            (
                "S3E",
                SNI_EC,
                false,
                "new TLS 1.3 conn per request, ECDSA P-256",
            ),
            (
                "S3R",
                SNI_RSA,
                false,
                "new TLS 1.3 conn per request, RSA-2048",
            ),
            (
                "S3T",
                SNI_EC,
                true,
                "new TLS 1.3 conn per request, resumed (ticket), ECDSA",
            ),
        ] {
            if want(name) {
                let (tally, ticks) = run_handshakes(&target, sni, resume, s3_conc).await;
                let mut note = format!("{what}, {s3_conc} at once");
                if resume {
                    let pct = if tally.n > 0 {
                        tally.resumed as f64 * 100.0 / tally.n as f64
                    } else {
                        0.0
                    };
                    let _ = write!(note, ", {pct:.0}% resumed");
                }
                emit(outcome(&target, name, tally, ticks, 1.0, "µs/conn", note));
            }
        }
        if want("S4D") {
            let (tally, ticks) = run_h1(&target, 8, Work::Get("/big"), None).await;
            emit(outcome(
                &target,
                "S4D",
                tally,
                ticks,
                1.0,
                "µs/MiB",
                "1 MiB responses, h1 keep-alive, 8 conns".into(),
            ));
        }
        if want("S4U") {
            let (tally, ticks) = run_h1(&target, 8, Work::Upload(big_body.clone()), None).await;
            emit(outcome(
                &target,
                "S4U",
                tally,
                ticks,
                1.0,
                "µs/MiB",
                "1 MiB uploads, h1 keep-alive, 8 conns".into(),
            ));
        }
        if want("S5") {
            let mut n: usize = env_or("BENCH_IDLE_CONNS", 5000);
            let mut note = String::new();
            if let Some(limit) = nofile_soft() {
                let room = limit.saturating_sub(200) as usize;
                if room < n {
                    let _ = write!(note, "fd limit {limit}: only {room} connections; ");
                    n = room;
                }
            }
            if let Some(old) = proxy_child.take() {
                // A fresh portico: memory freed after S1-S4 would otherwise be reused.
                drop(old);
                match spawn_portico(tmp.path(), upstream_addr, pin) {
                    Ok((proxy, addr)) => {
                        target.pid = proxy.child.id();
                        target.addr = addr;
                        proxy_child = Some(proxy);
                        if let Err(e) = wait_ready(&target, &tmp.path().join("portico.log")).await {
                            eprintln!("S5: {e}");
                        }
                    }
                    Err(e) => eprintln!("S5: cannot restart portico: {e}"),
                }
            }
            let (count, rss, errors) = run_idle(&target, n).await;
            let per = rss
                .filter(|_| count > 0)
                .map(|(b, a)| (a as f64 - b as f64) / count as f64)
                .unwrap_or(f64::NAN);
            let _ = write!(
                note,
                "{count} idle TLS conns; RSS {} -> {} KiB",
                rss.map_or(0, |r| r.0),
                rss.map_or(0, |r| r.1)
            );
            emit(Outcome {
                scenario: "S5",
                n: count as u64,
                rps: 0.0,
                p50_us: 0,
                p99_us: 0,
                p999_us: 0,
                cpu: per,
                unit: "KiB/conn",
                util: 0.0,
                errors,
                note,
            });
        }
    });

    println!("\n### load bench: {label}\n");
    println!("| scenario | requests | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU | unit | proxy core % | errors | notes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|");
    for o in &results {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.0} | {} | {} |",
            o.scenario,
            o.n,
            o.rps,
            o.p50_us as f64 / 1000.0,
            o.p99_us as f64 / 1000.0,
            o.p999_us as f64 / 1000.0,
            o.cpu,
            o.unit,
            o.util,
            o.errors,
            o.note
        );
    }
    println!();
    Ok(())
}

fn json_line(label: &str, o: &Outcome) -> String {
    let num = |v: f64| {
        if v.is_finite() {
            format!("{v:.3}")
        } else {
            "null".into()
        }
    };
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut m = BTreeMap::new();
    m.insert("label", format!("\"{}\"", esc(label)));
    m.insert("scenario", format!("\"{}\"", o.scenario));
    m.insert("n", o.n.to_string());
    m.insert("rps", num(o.rps));
    m.insert("p50_us", o.p50_us.to_string());
    m.insert("p99_us", o.p99_us.to_string());
    m.insert("p999_us", o.p999_us.to_string());
    m.insert("cpu", num(o.cpu));
    m.insert("unit", format!("\"{}\"", o.unit));
    m.insert("util", num(o.util));
    m.insert("errors", o.errors.to_string());
    m.insert("note", format!("\"{}\"", esc(&o.note)));
    let body: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}
