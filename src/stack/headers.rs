//! Header rules on the way through: hop-by-hop removal (RFC 9110 §7.6.1), the
//! forwarding headers, the request id, and the client-certificate header.
//! Plain functions over a `HeaderMap`, so each rule is tested alone.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::conn::ClientFor;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-Client-Cert`.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XF_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XF_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static XF_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers. `upgrade` keeps `Upgrade` and `Connection: upgrade`
/// (a WebSocket handshake); `te_trailers` keeps `TE: trailers` (towards h2c).
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool, te_trailers: bool) {
    // Most messages carry none: one pass over the names (no hashing) instead
    // of a removal, each hashing its name, per hop-by-hop header.
    if !upgrade && !h.keys().any(is_hop_by_hop) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            // The framing and the target are portico's to decide, not the client's.
            .filter(|n| *n != header::HOST && *n != header::CONTENT_LENGTH)
            .filter(|n| !(upgrade && *n == header::UPGRADE))
            .collect();
        for n in named {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    if let Some(te) = h.remove(header::TE) {
        let wants_trailers = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if te_trailers && wants_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// Whether `n` is one of the hop-by-hop headers portico always looks for
/// (headers named in `Connection` go only with `Connection` itself).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == header::TRANSFER_ENCODING
        || *n == header::TE
        || *n == header::UPGRADE
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
}

/// Sets `X-Forwarded-*` and appends to `X-Forwarded-For` and `Forwarded`.
pub fn add_forwarded(
    h: &mut HeaderMap,
    client: &ClientFor,
    host: Option<&HeaderValue>,
    port: &HeaderValue,
) {
    // This runs for every request: values without an earlier hop's are the
    // connection's, shared (cloning them allocates nothing); a joined value is
    // built once and handed to its HeaderValue uncopied.
    let xff = if h.contains_key(&XFF) {
        let ip = client.xff().as_bytes();
        let mut joined = existing(h, &XFF, ip.len());
        joined.push_str(std::str::from_utf8(ip).unwrap_or_default());
        owned_value(joined).ok()
    } else {
        Some(client.xff().clone())
    };
    if let Some(v) = xff {
        h.insert(&XFF, v);
    }
    h.insert(&XF_PROTO, HeaderValue::from_static("https"));
    match host {
        Some(v) => {
            h.insert(&XF_HOST, v.clone());
        }
        None => {
            h.remove(&XF_HOST);
        }
    }
    h.insert(&XF_PORT, port.clone());

    let earlier = h.contains_key(header::FORWARDED);
    let host_value = host;
    if let (false, Some(v), Some((first, fwd))) = (earlier, host_value, client.first_host()) {
        if v.as_bytes() == first.as_bytes() {
            h.insert(header::FORWARDED, fwd.clone());
            return;
        }
    }
    let host = host_value.and_then(|v| v.to_str().ok());
    if host.is_none() && !earlier {
        h.insert(header::FORWARDED, client.forwarded().clone());
        return;
    }
    let element = std::str::from_utf8(client.forwarded().as_bytes()).unwrap_or_default();
    let mut fwd = if earlier {
        existing(
            h,
            &header::FORWARDED,
            element.len() + host.map_or(0, str::len) + 16,
        )
    } else {
        String::with_capacity(element.len() + host.map_or(0, str::len) + 16)
    };
    fwd.push_str(element);
    if let Some(host) = host {
        // RFC 7239: a token, or else a quoted-string. Quoting (with `"` and `\`
        // escaped) also keeps a client's Host of `x,for=1.2.3.4` or `x;for=…`
        // from adding a forged element or parameter after portico's own.
        let token = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token {
            fwd.push_str(";host=");
            fwd.push_str(host);
        } else {
            fwd.push_str(";host=\"");
            for c in host.chars() {
                if c == '"' || c == '\\' {
                    fwd.push('\\');
                }
                fwd.push(c);
            }
            fwd.push('"');
        }
    }
    if let Ok(v) = owned_value(fwd) {
        // Only a value made from the host alone is the connection's to keep.
        if let (false, Some(hv)) = (earlier, host_value) {
            client.keep_first_host(hv.clone(), v.clone());
        }
        h.insert(header::FORWARDED, v);
    }
}

/// Every value already there, each followed by `, `, with room for `more`.
fn existing(h: &HeaderMap, name: &HeaderName, more: usize) -> String {
    let mut out = String::new();
    for v in h.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() {
            out.reserve(v.len() + 2 + more);
            out.push_str(v);
            out.push_str(", ");
        }
    }
    out.reserve(more);
    out
}

/// A header value that takes the string's buffer instead of copying it.
fn owned_value(s: String) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
}

/// Whether a client's `X-Request-Id` may be kept: 1 to 128 visible ASCII characters.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A fresh request id (UUID v4).
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(random_16())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    // Owned by a shared `Bytes` from the start: the id is cloned into the
    // request, the response and the log line, and a copied value would
    // allocate again on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Ids drawn from one fill of the per-thread pool.
const POOLED_IDS: usize = 128;

/// 16 random bytes from aws-lc-rs's generator, already there for TLS, rather
/// than a second RNG crate (uuid's `fast-rng` is rand's ChaCha). One call to
/// it costs about as much as a proxied request's header work (compare
/// `request_id_fresh` with the header benches in `benches/hotpath.rs`), so
/// each thread draws 128 ids' worth at a time.
fn random_16() -> [u8; 16] {
    thread_local! {
        static POOL: std::cell::RefCell<([u8; 16 * POOLED_IDS], usize)> =
            const { std::cell::RefCell::new(([0; 16 * POOLED_IDS], 16 * POOLED_IDS)) };
    }
    POOL.with_borrow_mut(|(pool, at)| {
        if *at == pool.len() {
            // Fails only when the OS gives no entropy at all; the ids are then
            // not unique, which the log says, and nothing secret depends on them.
            if aws_lc_rs::rand::fill(pool).is_err() {
                tracing::error!("no random bytes for request ids");
            }
            *at = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&pool[*at..*at + 16]);
        *at += 16;
        out
    })
}

/// The request id to use: the client's if valid, else a fresh one.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    match h.get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

/// An estimate of the request head's size on the wire, for `--max-header-bytes`.
pub fn head_size(h: &HeaderMap, request_line: usize) -> usize {
    h.iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + request_line
        + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_named_headers_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn connection_cannot_remove_host_or_length() {
        let mut h = map(&[
            ("connection", "host, content-length"),
            ("host", "a"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h, false, false);
        assert_eq!(h["host"], "a");
        assert_eq!(h["content-length"], "3");
    }

    #[test]
    fn upgrade_kept_for_websocket() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn te_trailers_only_towards_h2c() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false, false);
        assert!(h.get("te").is_none());
    }

    #[test]
    fn forwarded_headers_v4() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "80"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        let host = HeaderValue::from_static("app.example.com:8443");
        add_forwarded(
            &mut h,
            &ClientFor::new("192.0.2.7".parse().expect("ip")),
            Some(&host),
            &HeaderValue::from_static("8443"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example.com:8443");
        assert_eq!(h["x-forwarded-port"], "8443");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=192.0.2.7;proto=https;host=\"app.example.com:8443\""
        );
    }

    #[test]
    fn forwarded_headers_v6_no_host() {
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &ClientFor::new("::1".parse().expect("ip")),
            None,
            &HeaderValue::from_static("443"),
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https");
        let host = HeaderValue::from_static("example.com");
        add_forwarded(
            &mut h,
            &ClientFor::new("::1".parse().expect("ip")),
            Some(&host),
            &HeaderValue::from_static("443"),
        );
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https, for=\"[::1]\";proto=https;host=example.com"
        );
    }

    /// A connection's `Forwarded` value is built once for its first host and
    /// reused for that host only: never for another host, never when an
    /// earlier hop's element is joined, and a joined value is never kept.
    #[test]
    fn forwarded_value_reused_for_the_connections_first_host_only() {
        let port = HeaderValue::from_static("443");
        let fwd = |client: &ClientFor, earlier: Option<&str>, host: &str| {
            let mut h = HeaderMap::new();
            if let Some(e) = earlier {
                h.insert(header::FORWARDED, HeaderValue::from_str(e).expect("value"));
            }
            let host = HeaderValue::from_str(host).expect("host");
            add_forwarded(&mut h, client, Some(&host), &port);
            h[header::FORWARDED].to_str().expect("text").to_owned()
        };
        let a = "for=192.0.2.7;proto=https;host=a.example";
        let client = ClientFor::new("192.0.2.7".parse().expect("ip"));
        assert_eq!(fwd(&client, None, "a.example"), a);
        assert_eq!(
            fwd(&client, None, "b.example:8443"),
            "for=192.0.2.7;proto=https;host=\"b.example:8443\""
        );
        assert_eq!(fwd(&client, None, "a.example"), a);
        assert_eq!(
            fwd(&client, Some("for=10.0.0.1"), "a.example"),
            format!("for=10.0.0.1, {a}")
        );
        assert_eq!(fwd(&client, None, "a.example"), a);

        // A first request with an earlier hop's element leaves nothing behind.
        let fresh = ClientFor::new("192.0.2.7".parse().expect("ip"));
        assert_eq!(
            fwd(&fresh, Some("for=10.0.0.1"), "a.example"),
            format!("for=10.0.0.1, {a}")
        );
        assert_eq!(fwd(&fresh, None, "a.example"), a);

        // The Host value for an authority: the first host's, or a new one.
        assert_eq!(client.host("a.example").expect("valid"), "a.example");
        assert_eq!(client.host("b.example").expect("valid"), "b.example");
        assert_eq!(client.host("bad\nhost"), None);
    }

    /// Found by `fuzz/` (headers): a Host that is not an RFC 7239 token went
    /// out unquoted, so `x,for=6.6.6.6` forged an element after portico's own.
    #[test]
    fn forwarded_host_that_is_not_a_token_is_quoted() {
        let cases = [
            ("x,for=6.6.6.6", r#"host="x,for=6.6.6.6""#),
            ("x;for=6.6.6.6", r#"host="x;for=6.6.6.6""#),
            (r#"a"b\c"#, r#"host="a\"b\\c""#),
            ("a b", r#"host="a b""#),
            ("api.example.)om", r#"host="api.example.)om""#),
        ];
        for (sent, want) in cases {
            let mut h = HeaderMap::new();
            let host = HeaderValue::from_str(sent).expect("value");
            add_forwarded(
                &mut h,
                &ClientFor::new("192.0.2.7".parse().expect("ip")),
                Some(&host),
                &HeaderValue::from_static("443"),
            );
            assert_eq!(
                h["forwarded"],
                format!("for=192.0.2.7;proto=https;{want}").as_str(),
                "Host: {sent}"
            );
            assert_eq!(h["x-forwarded-host"], sent);
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        let long = "a".repeat(129);
        assert!(!valid_request_id(&HeaderValue::from_str(&long).expect("v")));
        assert!(valid_request_id(
            &HeaderValue::from_str(&long[..128]).expect("v")
        ));
        let fresh = new_request_id();
        assert_eq!(fresh.len(), 36);
        assert!(valid_request_id(&fresh));
    }

    #[test]
    fn fresh_request_ids_are_distinct_uuid_v4s_across_pool_refills() {
        let ids: std::collections::HashSet<String> = (0..3 * POOLED_IDS + 5)
            .map(|_| {
                let id = new_request_id().to_str().expect("ascii").to_string();
                let b = id.as_bytes();
                assert_eq!(
                    (b[8], b[13], b[14], b[18], b[23]),
                    (b'-', b'-', b'4', b'-', b'-'),
                    "{id}"
                );
                assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{id}");
                id
            })
            .collect();
        assert_eq!(ids.len(), 3 * POOLED_IDS + 5);
    }
}
