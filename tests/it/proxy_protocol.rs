//! `--proxy-protocol` and `--proxy-protocol-from`: the real binary behind
//! a hand-written PROXY v1/v2 header on a real socket, a real TLS client after
//! it, a real upstream that records what it was told, the access log and the
//! DEBUG reasons read from portico's JSON log, the counters from `/metrics`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::support::{
    client_config, closed_within, collect, eventually, hello_upstream, metric, plain_get, Bin, Got,
    Pki, Upstream,
};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const FAILED: &str = "portico_tls_handshakes_total{result=\"failed\"}";
const OK: &str = "portico_tls_handshakes_total{result=\"ok\"}";

/// portico as a process, logging JSON at DEBUG into a file.
async fn debug_bin(upstream: &str, extra: &[&str]) -> Bin {
    let mut args = vec!["--access-log", "on", "--log-format", "json"];
    args.extend(["--log-level", "info,portico=debug"]);
    args.extend_from_slice(extra);
    Bin::start(upstream, &args).await
}

/// What these tests read from a `debug_bin`'s JSON log and metrics.
trait Observed {
    fn lines(&self) -> Vec<Value>;
    async fn access(&self, path: &str) -> Value;
    async fn refusal(&self, n: usize) -> String;
    async fn metric(&self, series: &str) -> f64;
    async fn failed(&self, n: f64);
}

impl Observed for Bin {
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The access log line of `path`, once written.
    async fn access(&self, path: &str) -> Value {
        eventually(Duration::from_secs(5), "the access log line", || async {
            self.lines()
                .into_iter()
                .find(|v| v["target"] == "access" && v["path"] == path)
        })
        .await
    }

    /// The reason of the `n`-th (from 1) "PROXY protocol header refused" line.
    async fn refusal(&self, n: usize) -> String {
        eventually(Duration::from_secs(5), "a refusal DEBUG line", || async {
            self.lines()
                .into_iter()
                .filter(|v| v["message"] == "PROXY protocol header refused")
                .nth(n - 1)
                .map(|v| {
                    assert_eq!(v["level"], "DEBUG", "{v}");
                    v["reason"].as_str().unwrap_or_default().to_string()
                })
        })
        .await
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&plain_get(self.admin, "/metrics").await.text(), series).unwrap_or(0.0)
    }

    /// Waits until the failed-handshake counter reaches `n`.
    async fn failed(&self, n: f64) {
        eventually(
            Duration::from_secs(5),
            "failed handshakes counted",
            || async { (self.metric(FAILED).await == n).then_some(()) },
        )
        .await;
    }
}

fn v1(line: &str) -> Vec<u8> {
    line.as_bytes().to_vec()
}

/// A v2 header: `cmd` 0 LOCAL / 1 PROXY, `fam` the family/protocol byte.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn v2_tcp4(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    b.extend_from_slice(&[127, 0, 0, 1]);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b.extend_from_slice(tlvs);
    v2(0x21, 0x11, &b)
}

fn v2_tcp6(src: &str, sport: u16) -> Vec<u8> {
    let mut b = src
        .parse::<std::net::Ipv6Addr>()
        .expect("v6")
        .octets()
        .to_vec();
    b.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    v2(0x21, 0x21, &b)
}

/// A TCP stream whose first write carries `prefix` and the TLS client's
/// first bytes (its ClientHello) in one `write` call: one segment on loopback.
struct Prefixed {
    inner: TcpStream,
    prefix: Option<Vec<u8>>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let Some(prefix) = self.prefix.clone() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let joined = [prefix.as_slice(), buf].concat();
        match Pin::new(&mut self.inner).poll_write(cx, &joined) {
            Poll::Ready(Ok(n)) => {
                // A fresh loopback socket takes a few hundred bytes whole.
                assert_eq!(n, joined.len(), "the joined write was split");
                self.prefix = None;
                Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// TLS and one `GET path` over `io`, which already carries (or will carry) the header.
async fn get_over<IO>(io: IO, roots: rustls::RootCertStore, path: &str) -> std::io::Result<Got>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(roots, &[b"http/1.1"], None)));
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, io).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    Ok(collect(resp).await)
}

/// Writes `header` on its own, then TLS and `GET path`.
async fn get_after(bin: &Bin, header: &[u8], path: &str) -> std::io::Result<Got> {
    let mut tcp = TcpStream::connect(bin.tls).await?;
    tcp.write_all(header).await?;
    get_over(tcp, bin.roots.clone(), path).await
}

fn seen_by(up: &Upstream, path: &str) -> http::HeaderMap {
    up.seen
        .lock()
        .expect("lock")
        .iter()
        .find(|s| s.uri.path() == path)
        .map(|s| s.headers.clone())
        .expect("the request reached the upstream")
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn proxy_protocol_v1_address_is_the_client_in_forwarded_headers_and_the_access_log() {
    let up = hello_upstream().await;
    let bin = debug_bin(&up.url(), &["--proxy-protocol", "on"]).await;
    let g = get_after(
        &bin,
        &v1("PROXY TCP4 203.0.113.7 127.0.0.1 51234 443\r\n"),
        "/v1",
    )
    .await
    .expect("request through a v1 header");
    assert_eq!(g.status, 200);
    let h = seen_by(&up, "/v1");
    assert_eq!(header(&h, "x-forwarded-for"), "203.0.113.7");
    assert!(
        header(&h, "forwarded").starts_with("for=203.0.113.7;proto=https;"),
        "{h:?}"
    );
    assert_eq!(bin.access("/v1").await["client"], "203.0.113.7:51234");

    let g = get_after(
        &bin,
        &v1("PROXY TCP6 2001:db8::7 ::1 4000 443\r\n"),
        "/v1-6",
    )
    .await
    .expect("request through a v1 TCP6 header");
    assert_eq!(g.status, 200);
    let h = seen_by(&up, "/v1-6");
    assert_eq!(header(&h, "x-forwarded-for"), "2001:db8::7");
    assert!(header(&h, "forwarded").starts_with("for=\"[2001:db8::7]\";"));
    assert_eq!(bin.access("/v1-6").await["client"], "[2001:db8::7]:4000");
    assert_eq!(bin.metric(OK).await, 2.0);
    assert_eq!(bin.metric(FAILED).await, 0.0);
}

#[tokio::test]
async fn proxy_protocol_v2_ipv4_with_tlvs_and_ipv6_reach_the_upstream_and_the_access_log() {
    let up = hello_upstream().await;
    let bin = debug_bin(&up.url(), &["--proxy-protocol", "on"]).await;
    // An AWS-style TLV (0xEA, the VPC endpoint id) and a NOOP: skipped.
    let tlvs = [&[0xea, 0, 4][..], b"vpce", &[0x04, 0, 2, 0, 0]].concat();
    let g = get_after(&bin, &v2_tcp4([198, 51, 100, 9], 40000, &tlvs), "/v2-4")
        .await
        .expect("request through a v2 IPv4 header");
    assert_eq!(g.status, 200);
    let h = seen_by(&up, "/v2-4");
    assert_eq!(header(&h, "x-forwarded-for"), "198.51.100.9");
    assert!(header(&h, "forwarded").starts_with("for=198.51.100.9;"));
    assert_eq!(bin.access("/v2-4").await["client"], "198.51.100.9:40000");

    let g = get_after(&bin, &v2_tcp6("2001:db8::42", 443), "/v2-6")
        .await
        .expect("request through a v2 IPv6 header");
    assert_eq!(g.status, 200);
    let h = seen_by(&up, "/v2-6");
    assert_eq!(header(&h, "x-forwarded-for"), "2001:db8::42");
    assert!(header(&h, "forwarded").starts_with("for=\"[2001:db8::42]\";"));
    assert_eq!(bin.access("/v2-6").await["client"], "[2001:db8::42]:443");
}

#[tokio::test]
async fn proxy_protocol_v2_local_and_v1_unknown_keep_the_peer_address() {
    let up = hello_upstream().await;
    let bin = debug_bin(&up.url(), &["--proxy-protocol", "on"]).await;
    let g = get_after(&bin, &v2(0x20, 0x00, &[]), "/local")
        .await
        .expect("request through a v2 LOCAL header");
    assert_eq!(g.status, 200);
    assert_eq!(
        header(&seen_by(&up, "/local"), "x-forwarded-for"),
        "127.0.0.1"
    );
    let client = bin.access("/local").await["client"]
        .as_str()
        .expect("client")
        .to_string();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    let g = get_after(&bin, b"PROXY UNKNOWN\r\n", "/unknown")
        .await
        .expect("request through a v1 UNKNOWN header");
    assert_eq!(g.status, 200);
    assert_eq!(
        header(&seen_by(&up, "/unknown"), "x-forwarded-for"),
        "127.0.0.1"
    );
}

#[tokio::test]
async fn proxy_protocol_v2_and_the_client_hello_in_one_write_reach_rustls_untouched() {
    let up = hello_upstream().await;
    let bin = debug_bin(&up.url(), &["--proxy-protocol", "on"]).await;
    let tcp = TcpStream::connect(bin.tls).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let io = Prefixed {
        inner: tcp,
        prefix: Some(v2_tcp4([192, 0, 2, 77], 1234, &[])),
    };
    let g = get_over(io, bin.roots.clone(), "/joined")
        .await
        .expect("header and ClientHello in one segment");
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "hello from upstream");
    assert_eq!(
        header(&seen_by(&up, "/joined"), "x-forwarded-for"),
        "192.0.2.77"
    );
    // The same for v1, whose end portico finds by its CRLF.
    let tcp = TcpStream::connect(bin.tls).await.expect("connect");
    let io = Prefixed {
        inner: tcp,
        prefix: Some(v1("PROXY TCP4 192.0.2.78 127.0.0.1 9 443\r\n")),
    };
    let g = get_over(io, bin.roots.clone(), "/joined-v1")
        .await
        .expect("v1 header and ClientHello in one segment");
    assert_eq!(g.status, 200);
    assert_eq!(
        header(&seen_by(&up, "/joined-v1"), "x-forwarded-for"),
        "192.0.2.78"
    );
}

#[tokio::test]
async fn proxy_protocol_header_sent_byte_by_byte_is_read_whole() {
    let up = hello_upstream().await;
    let bin = debug_bin(&up.url(), &["--proxy-protocol", "on"]).await;
    for (path, h, want) in [
        (
            "/slow-v1",
            v1("PROXY TCP4 203.0.113.50 127.0.0.1 5 443\r\n"),
            "203.0.113.50",
        ),
        (
            "/slow-v2",
            v2_tcp4([203, 0, 113, 51], 5, &[0xea, 0, 1, b'x']),
            "203.0.113.51",
        ),
    ] {
        let mut tcp = TcpStream::connect(bin.tls).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        for b in &h {
            tcp.write_all(&[*b]).await.expect("one byte");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let g = get_over(tcp, bin.roots.clone(), path)
            .await
            .expect("request after a header sent byte by byte");
        assert_eq!(g.status, 200);
        assert_eq!(header(&seen_by(&up, path), "x-forwarded-for"), want);
    }
    assert_eq!(bin.metric(FAILED).await, 0.0);
}

/// Sends `bytes` and expects portico to close the connection within `limit`.
async fn refused(bin: &Bin, bytes: &[u8], limit: Duration) {
    let mut tcp = TcpStream::connect(bin.tls).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    assert!(
        closed_within(&mut tcp, limit).await.is_some(),
        "portico kept the connection open after {bytes:?}"
    );
}

#[tokio::test]
async fn proxy_protocol_refuses_missing_malformed_and_unknown_v2_headers() {
    let up = hello_upstream().await;
    let bin = debug_bin(&up.url(), &["--proxy-protocol", "on"]).await;

    // No header at all: a plain TLS client.
    let tcp = TcpStream::connect(bin.tls).await.expect("connect");
    assert!(get_over(tcp, bin.roots.clone(), "/none").await.is_err());
    bin.failed(1.0).await;
    assert!(bin.refusal(1).await.contains("no PROXY protocol header"));

    let cases: [(Vec<u8>, &str); 5] = [
        (
            v1("PROXY TCP4 203.0.113.7 127.0.0.1 99999 443\r\n"),
            "malformed PROXY v1 header: a port greater than 65535",
        ),
        (
            v1("PROXY TCP4 2001:db8::1 127.0.0.1 1 443\r\n"),
            "malformed PROXY v1 header: an address",
        ),
        (
            {
                let mut h = v2_tcp4([203, 0, 113, 7], 1, &[]);
                h[12] = 0x11;
                h
            },
            "PROXY v2 header with unknown version 1",
        ),
        (
            v2(0x2f, 0x11, &[0; 12]),
            "PROXY v2 header with unknown command 15",
        ),
        (
            v2(0x21, 0x12, &[0; 12]),
            "malformed PROXY v2 header: not TCP",
        ),
    ];
    for (i, (bytes, why)) in cases.iter().enumerate() {
        refused(&bin, bytes, Duration::from_secs(5)).await;
        bin.failed(2.0 + i as f64).await;
        let got = bin.refusal(2 + i).await;
        assert!(got.starts_with(why), "{got:?} for {bytes:?}");
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    assert_eq!(bin.metric(OK).await, 0.0);
}

#[tokio::test]
async fn proxy_protocol_from_refuses_a_peer_outside_and_serves_one_inside() {
    let up = hello_upstream().await;
    let outside = debug_bin(
        &up.url(),
        &[
            "--proxy-protocol",
            "on",
            "--proxy-protocol-from",
            "192.0.2.0/24",
            "--proxy-protocol-from",
            "10.0.0.0/8",
        ],
    )
    .await;
    let header = v2_tcp4([203, 0, 113, 7], 1, &[]);
    let mut tcp = TcpStream::connect(outside.tls).await.expect("connect");
    tcp.write_all(&header).await.expect("write");
    assert!(closed_within(&mut tcp, Duration::from_secs(5))
        .await
        .is_some());
    outside.failed(1.0).await;
    assert_eq!(
        outside.refusal(1).await,
        "peer is outside --proxy-protocol-from"
    );
    assert_eq!(up.count(), 0);

    let inside = debug_bin(
        &up.url(),
        &[
            "--proxy-protocol",
            "on",
            "--proxy-protocol-from",
            "127.0.0.0/8",
        ],
    )
    .await;
    let g = get_after(&inside, &header, "/inside")
        .await
        .expect("an allowed balancer");
    assert_eq!(g.status, 200);
    assert_eq!(header_of(&up, "/inside", "x-forwarded-for"), "203.0.113.7");
}

fn header_of(up: &Upstream, path: &str, name: &str) -> String {
    header(&seen_by(up, path), name).to_string()
}

#[tokio::test]
async fn proxy_protocol_header_and_handshake_share_one_handshake_timeout() {
    let up = hello_upstream().await;
    let bin = debug_bin(
        &up.url(),
        &["--proxy-protocol", "on", "--handshake-timeout", "1s"],
    )
    .await;
    // Half a header, then nothing: closed at the timeout.
    let h = v1("PROXY TCP4 203.0.113.7 127.0.0.1 1 443\r\n");
    let t0 = Instant::now();
    let mut tcp = TcpStream::connect(bin.tls).await.expect("connect");
    tcp.write_all(&h[..10]).await.expect("write");
    let closed = closed_within(&mut tcp, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "{closed:?}"
    );
    bin.failed(1.0).await;
    assert_eq!(
        bin.refusal(1).await,
        "no complete PROXY header within --handshake-timeout"
    );

    // A header that takes 700 ms of the second, then a ClientHello never
    // sent: closed when the one budget ends, not 1 s after the header.
    let mut tcp = TcpStream::connect(bin.tls).await.expect("connect");
    let t0b = Instant::now();
    tcp.write_all(&h[..10]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(700)).await;
    tcp.write_all(&h[10..]).await.expect("write");
    let _ = closed_within(&mut tcp, Duration::from_secs(5))
        .await
        .expect("closed");
    let took = t0b.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1600),
        "closed after {took:?}: the header and the handshake have one budget"
    );
    bin.failed(2.0).await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn proxy_protocol_off_treats_a_proxy_header_as_garbage() {
    let up = hello_upstream().await;
    let bin = debug_bin(&up.url(), &[]).await;
    let tcp = TcpStream::connect(bin.tls).await.expect("connect");
    let io = Prefixed {
        inner: tcp,
        prefix: Some(v2_tcp4([203, 0, 113, 7], 1, &[])),
    };
    assert!(get_over(io, bin.roots.clone(), "/off").await.is_err());
    let g = get_after(
        &bin,
        &v1("PROXY TCP4 203.0.113.7 127.0.0.1 1 443\r\n"),
        "/off-v1",
    )
    .await;
    assert!(g.is_err(), "{g:?}");
    bin.failed(2.0).await;
    assert_eq!(up.count(), 0, "nothing forwarded");
    // An ordinary client still works and is seen as itself.
    let tcp = TcpStream::connect(bin.tls).await.expect("connect");
    let g = get_over(tcp, bin.roots.clone(), "/plain")
        .await
        .expect("plain TLS");
    assert_eq!(g.status, 200);
    assert_eq!(header_of(&up, "/plain", "x-forwarded-for"), "127.0.0.1");
}

/// `portico check` and its exit codes for the two options, from flags, the
/// environment (commas) and the TOML file.
fn check(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("check")
        .args(["--admin-listen", "off"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run portico check");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn proxy_protocol_options_from_flag_env_and_file_and_their_errors() {
    let (code, out, err) = check(&["--proxy-protocol", "on"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("PROXY protocol header required, from any peer"),
        "{out}"
    );
    let (code, out, err) = check(
        &[],
        &[
            ("PORTICO_PROXY_PROTOCOL", "on"),
            ("PORTICO_PROXY_PROTOCOL_FROM", "10.0.0.0/8,2001:db8::/32"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("PROXY protocol header required, from 10.0.0.0/8, 2001:db8::/32"),
        "{out}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("portico.toml");
    std::fs::write(
        &file,
        "proxy-protocol = true\nproxy-protocol-from = [\"192.0.2.0/24\"]\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let (code, out, err) = check(&["--config", path], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("PROXY protocol header required, from 192.0.2.0/24"),
        "{out}"
    );
    let (code, out, _) = check(&[], &[]);
    assert_eq!(code, Some(0));
    assert!(!out.contains("PROXY"), "{out}");

    for (args, env, option) in [
        (
            &["--proxy-protocol", "yes"][..],
            &[][..],
            "--proxy-protocol",
        ),
        (
            &[
                "--proxy-protocol",
                "on",
                "--proxy-protocol-from",
                "10.0.0.1/8",
            ],
            &[],
            "--proxy-protocol-from",
        ),
        (
            &[],
            &[
                ("PORTICO_PROXY_PROTOCOL", "on"),
                ("PORTICO_PROXY_PROTOCOL_FROM", "10.0.0.0/8,not-a-net"),
            ][..],
            "--proxy-protocol-from (from PORTICO_PROXY_PROTOCOL_FROM)",
        ),
        (
            &["--proxy-protocol-from", "10.0.0.0/8"],
            &[],
            "--proxy-protocol-from",
        ),
    ] {
        let (code, _, err) = check(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(option), "{args:?} {env:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test]
async fn an_allow_san_refusal_is_logged_with_the_client_address_the_header_carried() {
    let up = hello_upstream().await;
    let clients = Pki::new("client CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("clients.pem");
    std::fs::write(&ca, &clients.ca_pem).expect("write CA");
    let bin = debug_bin(
        &up.url(),
        &[
            "--proxy-protocol",
            "on",
            "--client-ca",
            ca.to_str().expect("utf-8"),
            "--allow-san",
            "dns:allowed.example",
        ],
    )
    .await;
    let cert = clients.client("intruder", &["other.example"], &[]);
    let mut tcp = TcpStream::connect(bin.tls).await.expect("connect");
    tcp.write_all(&v1("PROXY TCP4 203.0.113.99 127.0.0.1 7777 443\r\n"))
        .await
        .expect("header");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(
        bin.roots.clone(),
        &[b"http/1.1"],
        Some(&cert),
    )));
    let name = ServerName::try_from("localhost").expect("name");
    // TLS 1.3: the client learns of the refusal on its first read.
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = closed_within(&mut tls, Duration::from_secs(5)).await;
    }
    let line = eventually(
        Duration::from_secs(5),
        "the --allow-san refusal",
        || async {
            bin.lines().into_iter().find(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no --allow-san pattern matches"))
            })
        },
    )
    .await;
    assert_eq!(line["span"]["client"], "203.0.113.99:7777", "{line}");
    assert_eq!(up.count(), 0);
}
