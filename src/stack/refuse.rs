//! The checks a request must pass before anything of it is sent upstream.

use http::{header, Request};

use super::headers;
use crate::error::Refusal;

/// Why a request must not be forwarded as it is, before anything is sent:
/// `max_header_bytes` is `--max-header-bytes`, `max_body` is
/// `--max-request-body` (0: no limit).
pub(super) fn refuse<B>(
    req: &Request<B>,
    max_header_bytes: usize,
    max_body: u64,
) -> Option<Refusal> {
    // Userinfo in the target or :authority is an error (RFC 9110 §4.2.4, RFC
    // 9113 §8.3.1). Routing reads only the host, so forwarding `user@host` as
    // `Host` would let the upstream read another host than the one routed on.
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Some(Refusal::Userinfo);
    }
    // Ambiguous HTTP/1 framing never gets here: hyper's parser refuses two
    // different Content-Lengths (its plain 400) and, for Content-Length with
    // Transfer-Encoding, drops the length, reads the chunked body and closes
    // the connection after the answer (RFC 9112 §6.3). portico re-frames every
    // request towards the upstream itself, so the upstream cannot read it
    // differently. HTTP/2 carries no such headers (h2 refuses them).
    let h = req.headers();
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 11;
    if headers::head_size(h, line) > max_header_bytes {
        return Some(Refusal::HeadersTooLarge);
    }
    if max_body > 0 {
        let declared = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Some(Refusal::BodyTooLarge);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method("POST").uri(target);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn userinfo_in_the_authority_is_a_bad_request() {
        let r = req("http://user@a.example/x", &[]);
        assert_eq!(refuse(&r, 1 << 16, 0), Some(Refusal::Userinfo));
        let r = req("http://a.example/x?u=user@b", &[]);
        assert_eq!(refuse(&r, 1 << 16, 0), None);
    }

    #[test]
    fn a_head_over_max_header_bytes_is_refused_and_one_at_it_is_not() {
        // "POST" + "/x" + 11 for the rest of the request line; each field
        // counts its name, value and 4 (": " and CRLF); 2 for the last CRLF.
        let r = req("/x", &[("a", "bbbb")]);
        let size = 4 + 2 + 11 + (1 + 4 + 4) + 2;
        assert_eq!(refuse(&r, size, 0), None);
        assert_eq!(refuse(&r, size - 1, 0), Some(Refusal::HeadersTooLarge));
    }

    #[test]
    fn a_declared_length_over_max_request_body_is_refused_before_sending() {
        let r = req("/x", &[("content-length", "101")]);
        assert_eq!(refuse(&r, 1 << 16, 100), Some(Refusal::BodyTooLarge));
        assert_eq!(refuse(&r, 1 << 16, 101), None);
        // 0 is no limit; a length that is not a number is hyper's to refuse.
        assert_eq!(refuse(&r, 1 << 16, 0), None);
        let r = req("/x", &[("content-length", "lots")]);
        assert_eq!(refuse(&r, 1 << 16, 100), None);
    }
}
