//! The data path end to end (docs/reference.md, "What the upstream
//! receives"): one request over each protocol, methods, paths and bodies
//! unchanged, the header rules both ways, h2c with trailers, `unix:`
//! upstreams, WebSocket and other upgrades, streaming 1 GiB each way through
//! the real binary without buffering, and upstream keep-alive. Real sockets,
//! real TLS, real upstream servers.

use crate::support::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A UUID in its 36-character hyphenated form.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Serves HTTP/1.1 with `svc` on every connection `listener` accepts, counting them.
fn serve_h1_counting<S, B>(
    listener: TcpListener,
    accepted: Arc<AtomicUsize>,
    svc: S,
) -> tokio::task::JoinHandle<()>
where
    S: Fn(
            Request<Incoming>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<B>> + Send>>
        + Send
        + Sync
        + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = Arc::new(svc);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let svc = svc.clone();
            tokio::spawn(async move {
                let s = hyper::service::service_fn(move |r| {
                    let f = svc(r);
                    async move { Ok::<_, Infallible>(f.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), s)
                    .await;
            });
        }
    })
}

/// Aborts a spawned server task when the test ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------
// What the upstream receives

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_and_h2_through_tls_reach_the_upstream() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let got = p.get("/hello").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello from upstream");
    assert_eq!(up.last().uri.path(), "/hello");
    let mut c = p.h2().await;
    let req = http::Request::get(format!("https://localhost:{}/h2path", p.tls_addr.port()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    let got = collect(c.send_request(req).await.expect("resp")).await;
    assert_eq!(got.status, 200);
    assert_eq!(up.last().uri.path(), "/h2path");
    assert_eq!(up.last().version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_receives_method_path_query_and_body_unchanged_over_h1_and_h2() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let body = noise(300_000, 7);

    let mut c = p.h1().await;
    let got = send(
        &mut c,
        req(
            "PATCH",
            "/a/b%20c/./d?x=1&y=two%20three&x=&z",
            "localhost",
            &[],
            &body,
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello from upstream");
    let s = up.last();
    assert_eq!(s.method, http::Method::PATCH);
    assert_eq!(s.uri.path(), "/a/b%20c/./d");
    assert_eq!(s.uri.query(), Some("x=1&y=two%20three&x=&z"));
    assert_eq!(s.version, Version::HTTP_11);
    assert_eq!(s.body.len(), body.len());
    assert!(
        s.body == body,
        "request body differs from what the client sent"
    );
    assert_eq!(one(&s.headers, "content-length"), Some("300000"));

    // The same over HTTP/2 from the client: HTTP/1.1 upstream, body intact.
    let mut c = p.h2().await;
    let r = Request::builder()
        .method("PUT")
        .uri(format!(
            "https://localhost:{}/h2/path?q=%2F&r",
            p.tls_addr.port()
        ))
        .body(Full::new(Bytes::from(body.clone())))
        .expect("req");
    let got = collect(c.send_request(r).await.expect("resp")).await;
    assert_eq!(got.status, 200);
    let s = up.last();
    assert_eq!(s.method, http::Method::PUT);
    assert_eq!(s.uri.path(), "/h2/path");
    assert_eq!(s.uri.query(), Some("q=%2F&r"));
    assert_eq!(s.version, Version::HTTP_11);
    assert!(
        s.body == body,
        "h2 request body differs from what the client sent"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_removed_before_the_upstream() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut c = p.h1().await;
    let got = send(
        &mut c,
        req(
            "POST",
            "/hop",
            "localhost",
            &[
                ("connection", "keep-alive, X-Hop-Req, X-Other-Hop"),
                ("x-hop-req", "secret"),
                ("x-other-hop", "secret too"),
                ("keep-alive", "timeout=5, max=100"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers, deflate"),
                // User-set: hyper sends the body chunked with exactly this value.
                ("transfer-encoding", "gzip, chunked"),
                // No `upgrade` token in Connection: not an upgrade, so removed.
                ("upgrade", "h2c"),
                ("x-end-to-end", "kept"),
            ],
            b"streamed body",
        ),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let s = up.last();
    for h in [
        "connection",
        "x-hop-req",
        "x-other-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            s.headers.get(h).is_none(),
            "upstream received hop-by-hop {h}: {:?}",
            s.headers.get(h)
        );
    }
    // portico frames the body itself: the client's `gzip, chunked` must not pass.
    let te = all(&s.headers, "transfer-encoding");
    assert!(
        te.is_empty() || te == ["chunked"],
        "upstream saw transfer-encoding {te:?}"
    );
    assert_eq!(one(&s.headers, "x-end-to-end"), Some("kept"));
    assert_eq!(&s.body[..], b"streamed body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_removed_before_the_client() {
    let up = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\n\
          Connection: keep-alive, X-Hop-Resp\r\n\
          X-Hop-Resp: secret\r\n\
          Keep-Alive: timeout=5, max=100\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers\r\n\
          Upgrade: h2c\r\n\
          Transfer-Encoding: gzip, chunked\r\n\
          X-End-To-End: kept\r\n\
          \r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;

    // Over HTTP/1.1, where every one of these could be written on the wire.
    let mut c = p.h1().await;
    for round in 0..2 {
        let got = send(&mut c, req("GET", "/resp", "localhost", &[], b"")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "hello world", "round {round}");
        for h in [
            "connection",
            "x-hop-resp",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ] {
            assert!(
                got.headers.get(h).is_none(),
                "client received hop-by-hop {h}: {:?}",
                got.headers.get(h)
            );
        }
        // The upstream's `gzip, chunked` is not passed on; portico's own framing may be chunked.
        let te = all(&got.headers, "transfer-encoding");
        assert!(
            te.is_empty() || te == ["chunked"],
            "client saw transfer-encoding {te:?}"
        );
        assert_eq!(got.header("x-end-to-end"), Some("kept"));
    }

    // Over HTTP/2 as well (where they would be a protocol error).
    let mut c = p.h2().await;
    let r = Request::get(format!("https://localhost:{}/resp", p.tls_addr.port()))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let got = collect(c.send_request(r).await.expect("h2 response")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello world");
    assert_eq!(got.header("x-end-to-end"), Some("kept"));
    assert!(got.headers.get("x-hop-resp").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_appends_client_ip_without_port() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut c = p.h1().await;

    send(
        &mut c,
        req(
            "GET",
            "/",
            "localhost",
            &[("x-forwarded-for", "203.0.113.9")],
            b"",
        ),
    )
    .await;
    assert_eq!(
        all(&up.last().headers, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );

    // Two header lines: both kept in order, the client appended once.
    let r = Request::get("/")
        .header("host", "localhost")
        .header("x-forwarded-for", "203.0.113.9, 198.51.100.2")
        .header("x-forwarded-for", "192.0.2.1")
        .body(Full::new(Bytes::new()))
        .expect("req");
    send(&mut c, r).await;
    assert_eq!(
        all(&up.last().headers, "x-forwarded-for"),
        ["203.0.113.9, 198.51.100.2, 192.0.2.1, 127.0.0.1"]
    );

    send(&mut c, req("GET", "/", "localhost", &[], b"")).await;
    assert_eq!(all(&up.last().headers, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_host_and_port_replace_what_the_client_sent() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let port = p.tls_addr.port();
    let host = format!("localhost:{port}");
    let mut c = p.h1().await;
    send(
        &mut c,
        req(
            "GET",
            "/",
            &host,
            &[
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-port", "80"),
            ],
            b"",
        ),
    )
    .await;
    let h = up.last().headers;
    assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
    assert_eq!(all(&h, "x-forwarded-host"), [host.as_str()]);
    assert_eq!(all(&h, "x-forwarded-port"), [port.to_string()]);

    // Host without a port: X-Forwarded-Host as sent, X-Forwarded-Port still the listener's.
    send(&mut c, req("GET", "/", "App.Example.com", &[], b"")).await;
    let h = up.last().headers;
    assert_eq!(all(&h, "x-forwarded-host"), ["App.Example.com"]);
    assert_eq!(all(&h, "x-forwarded-port"), [port.to_string()]);
    assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_element_is_appended_with_host_quoted_when_it_has_a_port() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let port = p.tls_addr.port();
    let host = format!("localhost:{port}");
    let mut c = p.h1().await;

    send(
        &mut c,
        req(
            "GET",
            "/",
            &host,
            &[("forwarded", "for=198.51.100.2;proto=http")],
            b"",
        ),
    )
    .await;
    assert_eq!(
        all(&up.last().headers, "forwarded"),
        [format!(
            "for=198.51.100.2;proto=http, for=127.0.0.1;proto=https;host=\"localhost:{port}\""
        )]
    );

    send(&mut c, req("GET", "/", &host, &[], b"")).await;
    assert_eq!(
        all(&up.last().headers, "forwarded"),
        [format!(
            "for=127.0.0.1;proto=https;host=\"localhost:{port}\""
        )]
    );

    // No ':' in the host: not quoted.
    send(&mut c, req("GET", "/", "localhost", &[], b"")).await;
    assert_eq!(
        all(&up.last().headers, "forwarded"),
        ["for=127.0.0.1;proto=https;host=localhost"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_kept_when_valid_else_fresh_uuid_and_echoed_in_response() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut c = p.h1().await;

    // Valid: 128 visible ASCII characters, every one from 0x21 to 0x7E used.
    let valid: String = (0x21u8..=0x7e).cycle().take(128).map(char::from).collect();
    let got = send(
        &mut c,
        req("GET", "/", "localhost", &[("x-request-id", &valid)], b""),
    )
    .await;
    assert_eq!(all(&up.last().headers, "x-request-id"), [valid.as_str()]);
    assert_eq!(all(&got.headers, "x-request-id"), [valid]);

    let short = send(
        &mut c,
        req("GET", "/", "localhost", &[("x-request-id", "a")], b""),
    )
    .await;
    assert_eq!(short.header("x-request-id"), Some("a"));
    assert_eq!(one(&up.last().headers, "x-request-id"), Some("a"));

    // Invalid (129 characters, a space) or absent: a fresh UUID, the same both ways.
    let too_long = "r".repeat(129);
    let mut fresh = Vec::new();
    for sent in [Some(too_long.as_str()), Some("has space"), None] {
        let headers: Vec<(&str, &str)> = sent.map(|v| ("x-request-id", v)).into_iter().collect();
        let got = send(&mut c, req("GET", "/", "localhost", &headers, b"")).await;
        let upstream_saw = all(&up.last().headers, "x-request-id");
        assert_eq!(upstream_saw.len(), 1, "sent {sent:?}");
        let id = upstream_saw[0].clone();
        assert!(is_uuid(&id), "sent {sent:?}, upstream saw {id:?}");
        assert_eq!(
            all(&got.headers, "x-request-id"),
            [id.as_str()],
            "sent {sent:?}"
        );
        fresh.push(id);
    }
    fresh.sort();
    fresh.dedup();
    assert_eq!(fresh.len(), 3, "each fresh id is new");
}

/// portico's `X-Request-Id` on h2 responses is sent as a never-indexed HPACK
/// literal (a new value each time would only churn the table): over one
/// connection, with the table in use, every response still carries its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_echoed_on_every_h2_response_of_one_connection() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut c = p.h2().await;
    let mut fresh = Vec::new();
    for i in 0..60 {
        let mut r = Request::get(format!("https://localhost:{}/n{i}", p.tls_addr.port()));
        let given = format!("given-{i}");
        if i % 2 == 0 {
            r = r.header("x-request-id", given.as_str());
        }
        let r = r.body(Full::new(Bytes::new())).expect("req");
        c.ready().await.expect("h2 ready");
        let got = collect(c.send_request(r).await.expect("resp")).await;
        assert_eq!(got.status, 200, "request {i}");
        let echoed = all(&got.headers, "x-request-id");
        assert_eq!(echoed.len(), 1, "request {i}: {echoed:?}");
        if i % 2 == 0 {
            assert_eq!(echoed[0], given, "request {i}");
        } else {
            assert!(is_uuid(&echoed[0]), "request {i}: {:?}", echoed[0]);
            fresh.push(echoed[0].clone());
        }
        // The response's other headers, indexed in the table once sent,
        // still decode, and so does the body.
        assert_eq!(got.header("content-length"), Some("19"), "request {i}");
        assert_eq!(&got.body[..], b"hello from upstream", "request {i}");
    }
    fresh.sort();
    fresh.dedup();
    assert_eq!(fresh.len(), 30, "each fresh id is new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_x_forwarded_client_cert_is_always_removed() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut c = p.h1().await;
    let r = Request::get("/")
        .header("host", "localhost")
        .header(
            "x-forwarded-client-cert",
            "Hash=forged;Subject=\"CN=admin\"",
        )
        .header("X-Forwarded-Client-Cert", "By=spiffe://evil")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let got = send(&mut c, r).await;
    assert_eq!(got.status, 200);
    assert!(up.last().headers.get("x-forwarded-client-cert").is_none());

    let mut c = p.h2().await;
    let r = Request::get(format!("https://localhost:{}/", p.tls_addr.port()))
        .header("x-forwarded-client-cert", "Hash=forged")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let got = collect(c.send_request(r).await.expect("resp")).await;
    assert_eq!(got.status, 200);
    assert!(up.last().headers.get("x-forwarded-client-cert").is_none());
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_the_clients_host_over_h1_and_authority_over_h2() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let port = p.tls_addr.port();

    let mut c = p.h1().await;
    send(&mut c, req("GET", "/h1", "App.Example.com:8443", &[], b"")).await;
    let s = up.last();
    assert_eq!(all(&s.headers, "host"), ["App.Example.com:8443"]);
    assert_eq!(
        all(&s.headers, "x-forwarded-host"),
        ["App.Example.com:8443"]
    );

    let mut c = p.h2().await;
    let r = Request::get(format!("https://localhost:{port}/h2"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let got = collect(c.send_request(r).await.expect("resp")).await;
    assert_eq!(got.status, 200);
    let s = up.last();
    assert_eq!(s.uri.path(), "/h2");
    assert_eq!(s.version, Version::HTTP_11);
    assert_eq!(all(&s.headers, "host"), [format!("localhost:{port}")]);
    assert_eq!(
        all(&s.headers, "x-forwarded-host"),
        [format!("localhost:{port}")]
    );
    assert_eq!(
        all(&s.headers, "forwarded"),
        [format!(
            "for=127.0.0.1;proto=https;host=\"localhost:{port}\""
        )]
    );
}

// ---------------------------------------------------------------------------
// h2c upstream: gRPC with trailers

type TrailerBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_grpc_call_passes_te_trailers_and_response_trailers() {
    // A gRPC-style h2c server: answers one message, then trailers grpc-status 7.
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen2 = seen.clone();
    let _srv = AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = r.into_parts();
                        let body = body.collect().await.expect("request body").to_bytes();
                        *seen.lock().expect("lock") = Some(Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        });
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "7".parse().expect("v"));
                        trailers.insert("grpc-message", "denied".parse().expect("v"));
                        let frames = vec![
                            Ok(Frame::data(Bytes::from_static(
                                b"\x00\x00\x00\x00\x05reply",
                            ))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body: TrailerBody = StreamBody::new(futures_util::stream::iter(frames));
                        let resp = Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .expect("resp");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }));

    let p = start(&format!("h2c://{addr}"), |_, _, _| {}).await;
    let mut c = p.h2().await;
    let message = b"\x00\x00\x00\x00\x07request";
    let r = Request::post(format!(
        "https://localhost:{}/pkg.Greeter/SayHello",
        p.tls_addr.port()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "5S")
    .body(Full::new(Bytes::from_static(message)))
    .expect("req");
    let got = collect(c.send_request(r).await.expect("response")).await;

    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/grpc"));
    assert_eq!(&got.body[..], b"\x00\x00\x00\x00\x05reply");
    let trailers = got.trailers.expect("the client receives trailers");
    assert_eq!(one(&trailers, "grpc-status"), Some("7"));
    assert_eq!(one(&trailers, "grpc-message"), Some("denied"));

    let s = seen
        .lock()
        .expect("lock")
        .clone()
        .expect("the upstream got the call");
    assert_eq!(s.version, Version::HTTP_2);
    assert_eq!(s.method, http::Method::POST);
    assert_eq!(s.uri.path(), "/pkg.Greeter/SayHello");
    assert_eq!(all(&s.headers, "te"), ["trailers"]);
    assert_eq!(one(&s.headers, "content-type"), Some("application/grpc"));
    assert_eq!(one(&s.headers, "grpc-timeout"), Some("5S"));
    assert_eq!(&s.body[..], message);
}

// ---------------------------------------------------------------------------
// unix: upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_upstream_serves_http1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("app.sock");
    let l = tokio::net::UnixListener::bind(&sock).expect("bind unix socket");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let _srv = AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = r.into_parts();
                        let body = body.collect().await.expect("body").to_bytes();
                        let answer = format!("unix saw {} bytes", body.len());
                        seen.lock().expect("lock").push(Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    }));

    let p = start(&format!("unix:{}", sock.display()), |_, _, _| {}).await;
    let mut c = p.h1().await;
    let got = send(
        &mut c,
        req("POST", "/over/unix?x=1", "localhost", &[], b"0123456789"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "unix saw 10 bytes");
    let s = seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a request");
    assert_eq!(s.uri.to_string(), "/over/unix?x=1");
    assert_eq!(s.version, Version::HTTP_11);
    assert_eq!(one(&s.headers, "host"), Some("localhost"));
    assert_eq!(one(&s.headers, "x-forwarded-proto"), Some("https"));
    assert_eq!(&s.body[..], b"0123456789");
}

// ---------------------------------------------------------------------------
// WebSocket and other upgrades

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_over_h1_echoes_both_ways_until_close() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let handshake: Arc<Mutex<Option<(String, HeaderMap)>>> = Arc::default();
    let h2 = handshake.clone();
    let _srv = AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let hs = h2.clone();
            tokio::spawn(async move {
                // tungstenite fixes the callback's error type.
                #[allow(clippy::result_large_err)]
                let cb = move |r: &tokio_tungstenite::tungstenite::handshake::server::Request,
                               resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    *hs.lock().expect("lock") = Some((r.uri().to_string(), r.headers().clone()));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    }));

    let p = start(&format!("http://{addr}"), |_, _, _| {}).await;
    let tls = raw_tls(&p).await;
    let url = format!("wss://localhost:{}/chat?room=1", p.tls_addr.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), tls)
        .await
        .expect("ws handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().get("x-request-id").is_some());

    for text in ["one", "two", "three ✓"] {
        ws.send(Message::text(text)).await.expect("send");
        let m = ws.next().await.expect("an echo").expect("ok");
        assert_eq!(m, Message::text(text));
    }
    let bin: Vec<u8> = (0u8..=255).cycle().take(70_000).collect();
    ws.send(Message::binary(bin.clone()))
        .await
        .expect("send binary");
    match ws.next().await.expect("an echo").expect("ok") {
        Message::Binary(b) => assert!(b[..] == bin[..], "binary echo differs"),
        other => panic!("expected binary echo, got {other:?}"),
    }

    ws.close(None).await.expect("close");
    // The upstream's close reply comes back, then the stream ends.
    let mut got_close = false;
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Close(_)) => got_close = true,
            Ok(other) => panic!("unexpected after close: {other:?}"),
            Err(_) => break,
        }
    }
    assert!(
        got_close,
        "the upstream's Close frame came back through portico"
    );

    let (uri, h) = handshake
        .lock()
        .expect("lock")
        .clone()
        .expect("upstream saw the handshake");
    assert_eq!(uri, "/chat?room=1");
    assert_eq!(
        one(&h, "upgrade").map(str::to_ascii_lowercase).as_deref(),
        Some("websocket")
    );
    assert!(one(&h, "connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    assert_eq!(one(&h, "x-forwarded-proto"), Some("https"));
    assert_eq!(
        one(&h, "host"),
        Some(format!("localhost:{}", p.tls_addr.port()).as_str())
    );
}

/// An upgraded connection is a tunnel: when the upstream ends its side first,
/// the client gets the end of the stream and what it still sends reaches the
/// upstream, every byte (the close of the client's side does not linger over
/// bytes that belong to the tunnel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnel_carries_the_client_bytes_after_the_upstream_half_closes() {
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    // The connection that sends a head (readiness probes send none).
    let up = RawUpstream::after_head(move |mut tcp| {
        let tx = tx.clone();
        async move {
            let _ = tcp
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\nbye")
                .await;
            let _ = tcp.shutdown().await;
            // Read late: the client's bytes then wait in portico, which must
            // not take them for the close's.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut got = Vec::new();
            let _ = tcp.read_to_end(&mut got).await;
            if let Some(tx) = tx.lock().expect("lock").take() {
                let _ = tx.send(got);
            }
        }
    })
    .await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut tls = raw_tls(&p).await;
    tls.write_all(
        b"GET /tunnel HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n",
    )
    .await
    .expect("request");
    let mut from_upstream = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut from_upstream))
        .await
        .expect("the upstream's end reaches the client")
        .expect("read");
    let text = String::from_utf8_lossy(&from_upstream);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.ends_with("\r\n\r\nbye"), "{text}");
    let sent: Vec<u8> = (0u8..=250).cycle().take(16 << 20).collect();
    tls.write_all(&sent).await.expect("the client sends on");
    tls.shutdown().await.expect("client's end");
    let got = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the upstream sees the client's end")
        .expect("upstream");
    assert_eq!(
        got.len(),
        sent.len(),
        "bytes through the half-closed tunnel"
    );
    assert!(got == sent, "the bytes differ");
}

// ---------------------------------------------------------------------------
// Streaming 1 GiB each way through the binary without buffering

const GIB: u64 = 1 << 30;

const CHUNK: usize = 64 * 1024;

/// Not a multiple of CHUNK, so a lost, doubled or swapped chunk shows.
const PERIOD: usize = 65_537;

/// Two periods of the pattern; chunk k is a zero-copy slice of it.
fn pattern() -> Bytes {
    let one = noise(PERIOD, 0x9e37_79b9_7f4a_7c15);
    let mut two = one.clone();
    two.extend_from_slice(&one);
    Bytes::from(two)
}

fn chunk_at(pat: &Bytes, k: u64) -> Bytes {
    let off = ((k * CHUNK as u64) % PERIOD as u64) as usize;
    pat.slice(off..off + CHUNK)
}

/// Checks a byte stream against the pattern as it passes: nothing is kept.
struct Checker {
    pat: Bytes,
    pos: u64,
    first_bad: Option<u64>,
}

impl Checker {
    fn new(pat: Bytes) -> Self {
        Self {
            pat,
            pos: 0,
            first_bad: None,
        }
    }
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let off = (self.pos % PERIOD as u64) as usize;
            let n = data.len().min(PERIOD);
            if self.first_bad.is_none() && data[..n] != self.pat[off..off + n] {
                self.first_bad = Some(self.pos);
            }
            self.pos += n as u64;
            data = &data[n..];
        }
    }
}

type ChunkStream = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

fn pattern_body(pat: Bytes, len: u64) -> StreamBody<ChunkStream> {
    let chunks = len / CHUNK as u64;
    assert_eq!(chunks * CHUNK as u64, len);
    StreamBody::new(
        futures_util::stream::iter((0..chunks).map(move |k| Ok(Frame::data(chunk_at(&pat, k)))))
            .boxed(),
    )
}

/// The streaming upstream: `POST /upload` checks and counts, `GET /download?n=N` generates.
async fn streaming_upstream(pat: Bytes) -> (SocketAddr, AbortOnDrop) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = serve_h1_counting(l, Arc::default(), move |r: Request<Incoming>| {
        let pat = pat.clone();
        Box::pin(async move {
            if r.uri().path() == "/upload" {
                let mut body = r.into_body();
                let mut check = Checker::new(pat);
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => {
                            if let Some(d) = f.data_ref() {
                                check.feed(d);
                            }
                        }
                        Err(e) => {
                            return Response::builder()
                                .status(500)
                                .body(pattern_or_text(format!("body error {e}")))
                                .expect("resp")
                        }
                    }
                }
                let text = format!("count={} first_bad={:?}", check.pos, check.first_bad);
                Response::new(pattern_or_text(text))
            } else {
                let n: u64 = r
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("n="))
                    .and_then(|n| n.parse().ok())
                    .expect("n=");
                Response::builder()
                    .header("content-length", n)
                    .body(pattern_body(pat, n))
                    .expect("resp")
            }
        })
    });
    (addr, AbortOnDrop(task))
}

fn pattern_or_text(s: String) -> StreamBody<ChunkStream> {
    StreamBody::new(futures_util::stream::iter([Ok(Frame::data(Bytes::from(s)))]).boxed())
}

type StreamSender = hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>,
>;

async fn streaming_client(addr: SocketAddr, roots: rustls::RootCertStore) -> StreamSender {
    let tls = tls_connect(
        addr,
        "localhost",
        client_config(roots, &[b"http/1.1"], None),
    )
    .await
    .expect("tls");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}

async fn upload(c: &mut StreamSender, pat: &Bytes, n: u64) -> String {
    let r = Request::post("/upload")
        .header("host", "localhost")
        .header("content-length", n)
        .body(BodyExt::boxed_unsync(pattern_body(pat.clone(), n)))
        .expect("req");
    c.ready().await.expect("client connection ready");
    let resp = c.send_request(r).await.expect("upload response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

async fn download(c: &mut StreamSender, pat: &Bytes, n: u64) -> (u64, Option<u64>) {
    let r = Request::get(format!("/download?n={n}"))
        .header("host", "localhost")
        .body(http_body_util::Empty::new().boxed_unsync())
        .expect("req");
    c.ready().await.expect("client connection ready");
    let resp = c.send_request(r).await.expect("download response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut check = Checker::new(pat.clone());
    while let Some(f) = body.frame().await {
        if let Some(d) = f.expect("download frame").data_ref() {
            check.feed(d);
        }
    }
    (check.pos, check.first_bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_streams_1gib_each_way_without_buffering_whole_bodies() {
    // Its upstream and client move 2 GiB through this process: no test that
    // measures the process runs meanwhile.
    let _shared = shared().await;
    init();
    let pat = pattern();
    let (up, _srv) = streaming_upstream(pat.clone()).await;
    let pki = Pki::new("portico stream CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pki.server(&["localhost"]).write_to(dir.path());
    let log = dir.path().join("stderr");
    let stderr = std::fs::File::create(&log).expect("stderr file");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "off", "--access-log", "off"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--upstream")
        .arg(format!("http://{up}"))
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    let mut child = Child(cmd.spawn().expect("spawn portico"));
    let pid = child.0.id();
    let (addr, _) = wait_serving(
        &log,
        || child.0.try_wait().expect("try_wait"),
        Duration::from_secs(30),
    );
    let roots = pki.roots();

    let mut c = streaming_client(addr, roots).await;
    // Warm-up: pools, buffers and allocator arenas reach their working size.
    let warm = 64 * CHUNK as u64 * 16;
    assert_eq!(
        upload(&mut c, &pat, warm).await,
        format!("count={warm} first_bad=None")
    );
    assert_eq!(download(&mut c, &pat, warm).await, (warm, None));
    let baseline = vm_rss_kib(pid);

    let max = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (max, stop) = (max.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max.fetch_max(vm_rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let t = Instant::now();
    let up_answer = upload(&mut c, &pat, GIB).await;
    let up_time = t.elapsed();
    let t = Instant::now();
    let down = download(&mut c, &pat, GIB).await;
    let down_time = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = max.load(Ordering::Relaxed);
    eprintln!(
        "1 GiB upload {up_time:?}, download {down_time:?}; VmRSS baseline {baseline} KiB, peak {peak} KiB (+{} KiB)",
        peak - baseline
    );

    assert_eq!(up_answer, "count=1073741824 first_bad=None");
    assert_eq!(down, (1_073_741_824, None));
    assert!(
        peak - baseline < 32 * 1024,
        "portico's VmRSS rose by {} KiB (baseline {baseline} KiB, peak {peak} KiB)",
        peak - baseline
    );
    drop(child);
}

// ---------------------------------------------------------------------------
// Upstream keep-alive

/// A connection goes back to the pool when its response body ends, also when
/// there is none (HEAD, 204), so sequential requests share one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let served2 = served.clone();
    let _srv = AbortOnDrop(serve_h1_counting(l, accepted.clone(), move |r| {
        let n = served2.fetch_add(1, Ordering::SeqCst) + 1;
        let empty = r.uri().path() == "/empty";
        Box::pin(async move {
            let mut resp = Response::new(Full::new(if empty {
                Bytes::new()
            } else {
                Bytes::from(format!("answer {n}"))
            }));
            if empty {
                *resp.status_mut() = StatusCode::NO_CONTENT;
            }
            resp
        })
    }));
    // No admin server, so no readiness probe connects: every accept is the pool's.
    let p = start(&format!("http://{addr}"), |cfg, _, _| {
        cfg.admin_listen = None;
        cfg.ready_check = portico::config::ReadyCheck::None;
    })
    .await;
    let mut c = p.h1().await;
    for i in 1..=24 {
        let (method, path) = match i % 4 {
            1 => ("HEAD", format!("/r/{i}")),
            2 => ("GET", "/empty".to_string()),
            _ => ("GET", format!("/r/{i}")),
        };
        let got = send(&mut c, req(method, &path, "localhost", &[], b"")).await;
        match (method, path.as_str()) {
            (_, "/empty") => assert_eq!((got.status.as_u16(), got.text()), (204, String::new())),
            ("HEAD", _) => assert_eq!((got.status.as_u16(), got.text()), (200, String::new())),
            _ => assert_eq!(
                (got.status.as_u16(), got.text()),
                (200, format!("answer {i}"))
            ),
        }
    }
    assert_eq!(served.load(Ordering::SeqCst), 24);
    let n = accepted.load(Ordering::SeqCst);
    assert_eq!(
        n, 1,
        "24 sequential requests opened {n} upstream connections"
    );
}

/// A primary may answer before it has read the request body (a 413, a
/// redirect). Its connection is busy until the upload ends, so while a slow
/// client is still uploading, the next request goes on another connection
/// instead of waiting behind that upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_after_an_early_answer_does_not_wait_behind_the_unfinished_upload() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let accepted2 = accepted.clone();
    let up = RawUpstream::start(move |mut s| {
        accepted2.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                seen.extend_from_slice(&buf[..n]);
                // Answer each head at once; body bytes are read and ignored.
                while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                    seen.drain(..end + 4);
                    let answer: &[u8] = if head.starts_with("post") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
                seen.clear();
            }
        }
    })
    .await;
    let p = start(&up.url(), |cfg, _, _| {
        cfg.admin_listen = None;
        cfg.ready_check = portico::config::ReadyCheck::None;
    })
    .await;

    // A client that sends 10 of the 100,000 bytes it announced, then waits.
    let mut slow = raw_tls(&p).await;
    slow.write_all(
        b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100000\r\n\r\n0123456789",
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"early") {
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
            .await
            .expect("early answer within 5 s")
            .expect("read");
        assert_ne!(
            n,
            0,
            "closed before the early answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    let mut c = p.h1().await;
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        send(&mut c, req("GET", "/next", "localhost", &[], b"")),
    )
    .await
    .expect("the next request is answered while the upload is still unfinished");
    assert_eq!(
        (answer.status.as_u16(), answer.text()),
        (200, "fresh".to_string())
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(slow);
}
