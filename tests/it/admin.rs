//! The plain-HTTP listeners beside the TLS path. The admin server as an
//! exposed surface (docs/reference.md, "Admin server"): `/healthz`, `/readyz`
//! and its upstream checks, `POST /shutdown` only from a loopback peer
//! (127.0.0.1, `::1`; a non-loopback peer from another network namespace over
//! a veth pair, as a Pod's neighbour reaches the Pod IP), other methods, an
//! oversized head, a slow or silent client, and the admin port's own
//! connection cap. And `--redirect-listen`: its 308s and its own cap.

use crate::support::*;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use portico::admin::{HEADER_TIMEOUT, MAX_CONNECTIONS};
use portico::shutdown::Phase;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn post_shutdown_from_127_0_0_1_is_accepted_and_drains() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let admin = p.admin_addr.expect("admin on");
    let g = plain_request(admin, http::Method::POST, "/shutdown").await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (202, "draining\n"));
    assert_ne!(p.drain.phase(), Phase::Running);
}

#[tokio::test]
async fn post_shutdown_from_ipv6_loopback_is_accepted() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.admin_listen = Some("[::1]:0".parse().expect("addr"));
    })
    .await;
    let admin = p.admin_addr.expect("admin on");
    assert!(admin.is_ipv6());
    let g = plain_request(admin, http::Method::POST, "/shutdown").await;
    assert_eq!(g.status, 202);
    assert_ne!(p.drain.phase(), Phase::Running);
}

/// This machine's first non-loopback IPv4 address, if it has one: the source
/// address the kernel picks towards a documentation prefix (no packet is sent).
fn non_loopback_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("198.51.100.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn post_shutdown_from_a_non_loopback_address_is_403_and_changes_nothing() {
    let Some(ip) = non_loopback_address() else {
        eprintln!("SKIPPED: this machine has no non-loopback address (the netns test covers it)");
        return;
    };
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.admin_listen = Some("0.0.0.0:0".parse().expect("addr"));
    })
    .await;
    let port = p.admin_addr.expect("admin on").port();
    let admin = SocketAddr::new(ip, port);
    // Ready first (the ready check's first run comes after start), so that
    // "still ready" below says the refused request changed nothing.
    eventually(Duration::from_secs(5), "portico ready", || async {
        (plain_get(admin, "/readyz").await.status == 200).then_some(())
    })
    .await;
    let g = plain_request(admin, http::Method::POST, "/shutdown").await;
    assert_eq!(g.status, 403, "{}", g.text());
    assert!(g.text().contains("only from loopback"), "{}", g.text());
    assert_eq!(p.drain.phase(), Phase::Running);
    let r = plain_get(admin, "/readyz").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ready\n"));
    assert_eq!(
        p.get("/").await.status,
        200,
        "the TLS listener still serves"
    );
}

#[tokio::test]
async fn other_methods_and_paths_answer_404_or_405_and_change_nothing() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let admin = p.admin_addr.expect("admin on");
    for (method, path, status) in [
        (http::Method::GET, "/shutdown", 405),
        (http::Method::PUT, "/shutdown", 405),
        (http::Method::DELETE, "/shutdown", 405),
        (http::Method::POST, "/healthz", 405),
        (http::Method::POST, "/readyz", 405),
        (http::Method::DELETE, "/metrics", 405),
        (http::Method::POST, "/shutdown/", 404),
        (http::Method::POST, "/SHUTDOWN", 404),
        (http::Method::GET, "/debug", 404),
        (http::Method::OPTIONS, "/", 404),
    ] {
        let g = plain_request(admin, method.clone(), path).await;
        assert_eq!(g.status.as_u16(), status, "{method} {path}");
        assert_eq!(p.drain.phase(), Phase::Running, "{method} {path}");
    }
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_changes_nothing() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let admin = p.admin_addr.expect("admin on");
    let mut tcp = TcpStream::connect(admin).await.expect("connect");
    let big = "a".repeat(64 * 1024);
    let req = format!("POST /shutdown HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // portico may close while the head is still being written.
    let _ = tcp.write_all(req.as_bytes()).await;
    let r = read_response(&mut tcp).await.expect("an answer");
    assert_eq!(r.status, 431);
    assert_eq!(p.drain.phase(), Phase::Running);
    assert!(closed_within(&mut tcp, Duration::from_secs(2))
        .await
        .is_some());
}

#[tokio::test]
async fn a_silent_or_slow_admin_client_is_cut_at_the_header_timeout() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let admin = p.admin_addr.expect("admin on");
    let mut silent = TcpStream::connect(admin).await.expect("connect");
    let mut slow = TcpStream::connect(admin).await.expect("connect");
    let writer = tokio::spawn(async move {
        // One byte of a head every 300 ms: never a complete head.
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        slow
    });
    let limit = HEADER_TIMEOUT + Duration::from_secs(2);
    let took = closed_within(&mut silent, limit)
        .await
        .expect("a silent client is closed");
    assert!(
        took >= HEADER_TIMEOUT - Duration::from_millis(200),
        "{took:?}"
    );
    let mut slow = writer.await.expect("writer");
    // The writer stops at the first failed write, or after ~18 s of bytes.
    assert!(
        closed_within(&mut slow, Duration::from_secs(1))
            .await
            .is_some(),
        "a head sent byte by byte is cut"
    );
    assert_eq!(p.drain.phase(), Phase::Running);
}

#[tokio::test]
async fn the_admin_port_holds_at_most_its_own_cap_of_connections() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let admin = p.admin_addr.expect("admin on");
    let t0 = Instant::now();
    let (r, _idle) = answered_once_a_slot_frees(
        admin,
        MAX_CONNECTIONS,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        t0.elapsed() < HEADER_TIMEOUT,
        "the idle connections must still be open for this to mean anything"
    );
    // The TLS listener is unaffected by the admin port's cap.
    assert_eq!(p.get("/").await.status, 200);
}

// ---- a non-loopback peer from another network namespace ----

/// `curl` inside namespace `ns`: status code and body.
fn curl(ns: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[test]
fn post_shutdown_from_a_neighbour_pod_over_veth_is_403_and_from_the_pods_loopback_drains() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed (.ci/run installs it)");
        return;
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let mut ns = match Netns::pair("portico-adm", &tag, "198.51.100") {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot make network namespaces here ({e}); needs root and iproute2"
            );
            return;
        }
    };
    let pki = Pki::new("admin netns CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki.server(&["localhost"]).write_to(&dir.path().join("tls"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.pod, env!("CARGO_BIN_EXE_portico")])
        .args(["--listen", "0.0.0.0:8443", "--admin-listen", "0.0.0.0:9901"])
        .args(["--ready-check", "none", "--access-log", "off"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let portico = cmd.spawn().expect("portico");
    ns.children.push(portico);
    let pod = ns.pod.clone();
    let nb = ns.peer.clone();

    // The neighbour reaches the admin port on the Pod IP, as the kubelet does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = curl(&nb, &["http://198.51.100.1:9901/readyz"]);
        if code == "200" {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "portico never became ready: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = curl(&nb, &["-X", "POST", "http://198.51.100.1:9901/shutdown"]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("only from loopback"), "{body}");
    // Nothing changed: still ready, still running.
    let (code, body) = curl(&nb, &["http://198.51.100.1:9901/readyz"]);
    assert_eq!((code.as_str(), body.as_str()), ("200", "ready\n"));
    assert!(
        ns.children[0].try_wait().expect("try_wait").is_none(),
        "portico must still run"
    );

    // From inside the Pod (its loopback) the same request drains it.
    let (code, body) = curl(&pod, &["-X", "POST", "http://127.0.0.1:9901/shutdown"]);
    assert_eq!((code.as_str(), body.as_str()), ("202", "draining\n"));
    let child = ns.children.pop().expect("portico");
    let out = child.wait_with_output().expect("portico exits");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_redirect_listener_holds_at_most_max_connections_of_its_own() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
        cfg.max_connections = 3;
    })
    .await;
    let redirect = p.redirect_addr.expect("redirect on");
    let (r, _idle) =
        answered_once_a_slot_frees(redirect, 3, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await;
    assert_eq!(r.status, 308);
    // The TLS listener's own 3 are not taken by the redirect listener's.
    assert_eq!(p.get("/").await.status, 200);
}

/// Holds `cap` idle connections to `addr`, then sends `request` on one more:
/// the kernel completes its handshake from the backlog, but portico does not
/// accept it while its cap is taken, so it is not answered within 700 ms; once
/// one idle connection closes, it is answered within 2 s. Returns that answer
/// and the connections still held.
async fn answered_once_a_slot_frees(
    addr: std::net::SocketAddr,
    cap: usize,
    request: &[u8],
) -> (RawResp, Vec<TcpStream>) {
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    extra.write_all(request).await.expect("write");
    let waited = tokio::time::timeout(Duration::from_millis(700), read_response(&mut extra)).await;
    assert!(waited.is_err(), "answered past the cap: {waited:?}");
    drop(idle.pop());
    let r = tokio::time::timeout(Duration::from_secs(2), read_response(&mut extra))
        .await
        .expect("answered once a slot frees")
        .expect("a response");
    (r, idle)
}

// ---------------------------------------------------------------------------
// /healthz and /readyz

/// `/readyz` until it answers `status` with `body`.
async fn ready_becomes(addr: SocketAddr, within: Duration, status: u16, body: &str) {
    let what = format!("/readyz answers {status} {body:?}");
    eventually(within, &what, || async {
        let g = readyz(addr).await;
        (g.status == status && g.text() == body).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_200_ok_and_unknown_admin_paths_are_404() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let g = plain_get(admin(&p), "/healthz").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text().trim_end(), "ok");
    let g = plain_get(admin(&p), "/nope").await;
    assert_eq!(g.status, 404);
    let g = plain_get(admin(&p), "/healthzz").await;
    assert_eq!(g.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_ready_with_a_live_upstream_and_tcp_check() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.ready_check = portico::config::ReadyCheck::Tcp;
    })
    .await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_naming_a_refused_upstream() {
    let (dead, _hold) = dead_port().await;
    let url = format!("http://{dead}");
    let p = start(&url, |_, _, _| {}).await;
    let want = format!(
        "upstream http://127.0.0.1:{}: connection refused\n",
        dead.port()
    );
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;
    // Liveness is unaffected.
    assert_eq!(plain_get(admin(&p), "/healthz").await.status, 200);
}

/// Accepts TCP connections on `addr` and answers any request `200` (HTTP/1.1).
async fn listener_on(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let l = eventually(Duration::from_secs(2), "re-bind the same port", || async {
        TcpListener::bind(addr).await.ok()
    })
    .await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"up"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_upstream_going_down_and_coming_back_within_2s() {
    let up = hello_upstream().await;
    let addr = up.addr;
    let p = start(&up.url(), |_, _, _| {}).await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;

    drop(up);
    let t = Instant::now();
    let want = format!("upstream http://{addr}: connection refused\n");
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;
    println!("went down after {:?}", t.elapsed());

    let back = listener_on(addr).await;
    let t = Instant::now();
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
    println!("came back after {:?}", t.elapsed());

    back.abort();
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_http_check_needs_a_2xx_from_its_path() {
    let status = Arc::new(AtomicU16::new(200));
    let s2 = status.clone();
    let up = upstream_with(false, move |seen| {
        let code = if seen.uri.path() == "/health" {
            s2.load(Ordering::SeqCst)
        } else {
            404
        };
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"health")));
            *r.status_mut() = StatusCode::from_u16(code).expect("status");
            r
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.ready_check = portico::config::ReadyCheck::Http("/health".into());
    })
    .await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
    let last = up.last();
    assert_eq!(last.uri.path(), "/health");
    assert_eq!(last.method, http::Method::GET);

    status.store(500, Ordering::SeqCst);
    let want = format!(
        "upstream {}: GET /health answered 500 Internal Server Error\n",
        up.url()
    );
    ready_becomes(admin(&p), Duration::from_secs(2), 503, &want).await;

    status.store(204, Ordering::SeqCst);
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_none_check_is_ready_even_with_a_dead_upstream() {
    let (dead, _hold) = dead_port().await;
    let p = start(&format!("http://{dead}"), |cfg, _, _| {
        cfg.ready_check = portico::config::ReadyCheck::None;
    })
    .await;
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "ready\n"));
    // It stays so: no check runs behind it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "ready\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_draining_once_a_drain_begins_while_healthz_stays_200() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.drain_delay = Duration::from_secs(2);
    })
    .await;
    ready_becomes(admin(&p), Duration::from_secs(2), 200, "ready\n").await;
    p.drain.advance(Phase::Draining);
    // At once, not at the next check.
    let g = readyz(admin(&p)).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (503, "draining\n"));
    assert_eq!(plain_get(admin(&p), "/healthz").await.status, 200);
}

// ---------------------------------------------------------------------------
// --redirect-listen

/// One request on a fresh plain connection and its response, within 5 s.
async fn raw_exchange(addr: SocketAddr, request: &str) -> RawResp {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    read_response_within(&mut tcp, Duration::from_secs(5))
        .await
        .expect("a complete head")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listener_answers_308_to_https_with_the_tls_port_path_and_query() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.redirect_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let r = p.redirect_addr.expect("redirect on");
    let port = p.tls_addr.port();
    let got = raw_exchange(
        r,
        "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 308);
    assert_eq!(
        got.header("location"),
        Some(format!("https://example.com:{port}/a/b?x=1").as_str())
    );

    let got =
        raw_exchange(r, "POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(got.status, 308, "every method");
    assert_eq!(
        got.header("location"),
        Some(format!("https://example.com:{port}/form").as_str())
    );

    let got = raw_exchange(
        r,
        "GET /v6 HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 308);
    assert_eq!(
        got.header("location"),
        Some(format!("https://[::1]:{port}/v6").as_str())
    );

    let got = raw_exchange(r, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(got.status, 400, "no Host: {got:?}");
    assert_eq!(got.header("location"), None);
}

/// `redirect_location` takes a hyper `Request<Incoming>`, which only a server
/// makes: serve one on loopback and call it with the TLS port set to 443.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_location_omits_the_port_when_the_tls_listener_is_on_443() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let loc = portico::admin::redirect_location(&req, 443)
                            .unwrap_or_else(|| "none".into());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            loc,
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    for (host, path, want) in [
        (
            "example.com:8080",
            "/a/b?x=1",
            "https://example.com/a/b?x=1",
        ),
        ("example.com", "/", "https://example.com/"),
        ("[::1]:80", "/p", "https://[::1]/p"),
    ] {
        let got = raw_exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(String::from_utf8_lossy(&got.body), want, "Host: {host}");
    }
    let got = raw_exchange(addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        "none",
        "no Host, no location"
    );
}
