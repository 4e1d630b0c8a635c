//! Which upstream a request goes to (`--upstream`, `--route`): the longest
//! segment prefix, then the host, else the default; the host routed on is
//! the `Host` (or `:authority`, or the absolute-form target's authority) the
//! upstream then reads, so portico and the upstream never disagree on it.

use crate::support::h2raw::{self, RawH2};
use crate::support::*;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use portico::routing::Route;

/// An upstream that answers with its own name (to tell routes apart).
async fn named(name: &'static str) -> Upstream {
    upstream_with(false, move |_| async move {
        Response::new(Full::new(Bytes::from_static(name.as_bytes())))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_longest_segment_prefix_then_host_else_default_and_keep_the_path() {
    let api = named("api").await;
    let v2 = named("v2").await;
    let exact = named("exact").await;
    let wild = named("wild").await;
    let default = named("default").await;
    let specs = [
        format!("/api={}", api.url()),
        format!("/api/v2={}", v2.url()),
        format!("api.example.com/={}", exact.url()),
        format!("*.example.com/={}", wild.url()),
    ];
    let p = start(&default.url(), |cfg, _, _| {
        cfg.routes = specs
            .iter()
            .map(|s| Route::parse(s).expect("route"))
            .collect();
    })
    .await;
    let mut c = p.h1().await;

    let cases: &[(&str, &str, &str)] = &[
        ("localhost", "/api", "api"),
        ("localhost", "/api/", "api"),
        ("localhost", "/api/x/y?q=1", "api"),
        ("localhost", "/apix", "default"),
        ("localhost", "/apix/y", "default"),
        ("localhost", "/api/v2", "v2"),
        ("localhost", "/api/v2/items?id=3", "v2"),
        ("localhost", "/api/v22", "api"),
        ("localhost", "/", "default"),
        ("localhost", "/other", "default"),
        // Host routes: exact, case and port ignored.
        ("api.example.com", "/x", "exact"),
        ("API.Example.COM:8443", "/x", "exact"),
        // Wildcard: deeper names only.
        ("foo.example.com", "/x", "wild"),
        ("a.b.EXAMPLE.com:9", "/x", "wild"),
        ("example.com", "/x", "default"),
        ("badexample.com", "/x", "default"),
        // A longer path prefix beats a host route.
        ("api.example.com", "/api/x", "api"),
        ("foo.example.com", "/api/v2/x", "v2"),
    ];
    for (host, path, want) in cases {
        let got = send(&mut c, req("GET", path, host, &[], b"")).await;
        assert_eq!(got.status, 200, "{host}{path}");
        assert_eq!(got.text(), *want, "Host {host}, path {path}");
    }
    // Each upstream saw exactly its requests, with the path unchanged.
    let paths = |u: &Upstream| -> Vec<String> {
        u.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.uri.to_string())
            .collect()
    };
    assert_eq!(
        paths(&api),
        ["/api", "/api/", "/api/x/y?q=1", "/api/v22", "/api/x"]
    );
    assert_eq!(paths(&v2), ["/api/v2", "/api/v2/items?id=3", "/api/v2/x"]);
    assert_eq!(paths(&exact), ["/x", "/x"]);
    assert_eq!(paths(&wild), ["/x", "/x"]);
    assert_eq!(
        paths(&default),
        ["/apix", "/apix/y", "/", "/other", "/x", "/x"]
    );
    assert_eq!(
        one(&exact.last().headers, "host"),
        Some("API.Example.COM:8443")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_over_h2_use_the_authority_host() {
    let exact = named("exact").await;
    let default = named("default").await;
    let spec = format!("localhost/only={}", exact.url());
    let p = start(&default.url(), |cfg, _, _| {
        cfg.routes = vec![Route::parse(&spec).expect("route")];
    })
    .await;
    let mut c = p.h2().await;
    for (path, want) in [
        ("/only/x", "exact"),
        ("/onlyx", "default"),
        ("/", "default"),
    ] {
        let r = Request::get(format!("https://LOCALHOST:{}{path}", p.tls_addr.port()))
            .body(Full::new(Bytes::new()))
            .expect("req");
        let got = collect(c.send_request(r).await.expect("resp")).await;
        assert_eq!(got.text(), want, "{path}");
    }
    assert_eq!(exact.last().uri.path(), "/only/x");
}

/// RFC 9112 §3.2.2: with an absolute-form target, the target's authority is
/// the host and `Host` is ignored. portico routes on that authority and the
/// upstream sees it as `Host` (and `X-Forwarded-Host`): what portico routed on
/// and what the upstream reads are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_routes_and_sets_host_by_its_authority() {
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
    assert_eq!(header_values(&headers, "host"), ["other.example"]);
    assert_eq!(
        header_values(&headers, "x-forwarded-host"),
        ["other.example"]
    );

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
    assert_eq!(header_values(&headers, "host"), ["localhost:8443"]);
}

/// RFC 9110 §4.2.4: userinfo in an `http` target is an error. portico routes on
/// the host alone, so forwarding `user@host` as `Host` would make the upstream
/// read a different (invalid) host than the one routed on: it is refused 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_with_userinfo_is_400() {
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

/// RFC 9113 §8.3.1: `:authority` is the target; a `host` header that differs
/// is not what portico routes on, and the upstream sees `Host` set to the
/// `:authority` portico routed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_authority_wins_over_a_different_host_header_for_routing_and_host() {
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
    assert_eq!(header_values(&headers, "host"), ["localhost"]);
}
