//! portico's HTTP/1.1 response decoder (`upstream::h1`) on fuzzed responses
//! from a primary.
//!
//! Input: one flag byte (bit 0: the request was `HEAD`), one byte for the
//! size of the reads the response arrives in (1 to 256 bytes), then the bytes
//! the primary sends before it closes.
//!
//! Invariants: where the reads split the response changes nothing (the
//! result, the body and the trailers are those of a single read); a body
//! framed by `Content-Length` is exactly that long; a connection is reusable
//! only if the response said how long it was, did not ask to close, and left
//! no byte behind; a status is a final one (not 1xx but 101).
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use portico::upstream::h1::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&piece, input)) = rest.split_first() else {
        return;
    };
    let method = if flags & 1 != 0 {
        Method::HEAD
    } else {
        Method::GET
    };
    let piece = usize::from(piece) + 1;
    let whole = decode(input, &method, input.len().max(1));
    let split = decode(input, &method, piece);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "reads of {piece} bytes decoded otherwise"),
        (Err(_), Err(_)) => {}
        _ => panic!("reads of {piece} bytes: {split:?}; one read: {whole:?}"),
    }
    let Ok(d) = whole else { return };
    assert!(
        d.status >= 200 || d.status == 101,
        "an interim status {} was final",
        d.status
    );
    let bodiless = method == Method::HEAD || matches!(d.status, 101 | 204 | 304);
    if bodiless {
        assert!(d.body.is_empty(), "a {} answer to {method} had a body", d.status);
    }
    let te = d.headers.contains_key("transfer-encoding");
    if !bodiless && !te {
        if let Some(len) = d.headers.get("content-length") {
            let first = len
                .as_bytes()
                .split(|&b| b == b',')
                .next()
                .map(|v| v.trim_ascii());
            let n: u64 = std::str::from_utf8(first.unwrap_or_default())
                .expect("a length that was taken is ASCII")
                .parse()
                .expect("a length that was taken is a number");
            assert_eq!(d.body.len() as u64, n, "body against Content-Length");
        }
    }
    if d.reusable {
        let close = d.headers.get_all("connection").iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
        assert!(!close, "reusable although the primary said close");
        assert!(
            bodiless || te || d.headers.contains_key("content-length"),
            "reusable without a length"
        );
        assert!(d.status != 101, "reusable after a 101");
    }
});
