//! Request framing and syntax: heads whose framing an upstream could read
//! differently (Content-Length with Transfer-Encoding, repeated lengths,
//! invalid chunk sizes, obs-fold, bare CR or LF) and HTTP/2 headers carrying
//! HTTP/1 syntax are refused or re-framed, so that no request is smuggled:
//! checked against an upstream that records the exact bytes it got.

use crate::support::h2raw::{self, RawH2, PROTOCOL_ERROR};
use crate::support::*;

use tokio::io::AsyncWriteExt;

/// Heads whose framing or syntax an upstream could read differently
/// are refused with 400 and a closed connection, and not one byte of them
/// reaches the upstream. (hyper's parser refuses them before portico sees
/// them: its plain 400, which the reference accepts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_h1_heads_get_400_close_and_never_reach_the_upstream() {
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

/// Bare LF line endings are tolerated by hyper's parser (RFC 9112
/// §2.2 allows it); the request is forwarded once, re-framed with CRLF, its
/// body by a single Content-Length, and what followed it is a second request
/// the client sent on its own connection, not bytes smuggled into the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_head_is_forwarded_once_in_crlf_form() {
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
    assert_eq!(header_values(&headers, "content-length"), ["5"]);
    assert_eq!(
        header_values(&headers, "transfer-encoding"),
        Vec::<&str>::new()
    );
    assert_eq!(header_values(&headers, "host"), ["localhost"]);
    assert_eq!(body, b"hello");
    assert_eq!(rec.request_lines(), ["POST /lf HTTP/1.1"]);
}

/// Chunked bodies with an invalid chunk size (not hex, negative,
/// overflowing 64 bits, a bare-LF size line) are cut: the client gets 400 and a
/// closed connection, the upstream at most the head and the valid chunks
/// before the bad one, and never the request hidden after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_sizes_cut_the_request_and_smuggle_nothing() {
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

/// `Content-Length` repeated: in list form (`5, 5`) hyper's parser refuses it
/// (400, nothing forwarded); as two equal lines it is forwarded as one plain
/// value, so the upstream never has to pick between readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_length_is_refused_or_forwarded_as_one_value() {
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
    assert_eq!(
        header_values(&headers, "content-length"),
        ["5"],
        "{headers:?}"
    );
    assert_eq!(body, b"hello");
    assert_eq!(rec.request_lines().len(), 1);
}

const CL_AND_TE: [&str; 2] = [
    "POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST /smuggle HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
];

/// `Content-Length` with `Transfer-Encoding` is read by its
/// chunked framing (hyper's parser drops the length, RFC 9112 §6.3) and the
/// client connection closes after the answer, so no smuggling is possible. The chunked framing wins, the upstream gets one
/// request without `Content-Length` carrying exactly the chunked body, and the
/// client connection is closed after the answer, so no bytes left by the other
/// framing can be read as a next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_forwarded_as_chunked() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    for (i, head) in CL_AND_TE.iter().enumerate() {
        let mut tls = raw_tls(&p).await;
        tls.write_all(head.as_bytes()).await.expect("head");
        // Under Content-Length: 5 framing, `GET /smuggled` would be a second request.
        tls.write_all(b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("body");
        let resp = read_response(&mut tls).await.expect("a response");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
        assert!(
            closed_within(&mut tls, MS(2000)).await.is_some(),
            "connection closed"
        );
        assert_eq!(up.count(), i + 1, "exactly one request forwarded");
        let seen = up.last();
        assert_eq!(seen.uri.path(), "/smuggle");
        assert_eq!(seen.headers.get("content-length"), None);
        assert_eq!(&seen.body[..], b"hello");
    }
}

/// Two different `Content-Length` values cannot be forwarded safely.
/// hyper's HTTP/1 parser refuses this head before portico sees it: its plain
/// 400 (no `Portico-Error`) and a closed connection, which the reference accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_content_lengths_are_refused_by_the_parser() {
    let up = hello_upstream().await;
    let p = start(&up.url(), |_, _, _| {}).await;
    let mut tls = raw_tls(&p).await;
    tls.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        .await
        .expect("write");
    let resp = read_response(&mut tls).await.expect("a response");
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.header("portico-error"), None, "hyper's own 400");
    assert!(
        closed_within(&mut tls, MS(2000)).await.is_some(),
        "connection closed"
    );
    assert_eq!(up.count(), 0);
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
