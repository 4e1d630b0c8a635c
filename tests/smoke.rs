//! Smoke test: one request over HTTP/1.1 and one over HTTP/2 through portico.
mod support;
use support::*;

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
