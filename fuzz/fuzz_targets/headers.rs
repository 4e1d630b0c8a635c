//! The header rules on fuzzed header maps: hop-by-hop removal, the forwarding
//! headers and the request id.
//!
//! Input: one flag byte (bit 0: an upgrade, bit 1: towards h2c, bit 2: an IPv6
//! client), the client IP (4 or 16 bytes), the listener port (2 bytes), then
//! `name: value` lines (those `http` refuses are skipped). The request's
//! `Host` header is passed as the host, as portico does for HTTP/1.1.
//!
//! Invariants: no hop-by-hop header survives (but `Connection: upgrade` and
//! `Upgrade` for an upgrade, `TE: trailers` towards h2c); the headers
//! `Connection` named go (but `Host` and `Content-Length`); every other header
//! is untouched; `X-Forwarded-For` ends with the client IP; the last element of
//! `Forwarded`, read as RFC 7239 says, is portico's own (`for` the client,
//! `proto=https`, `host` the Host as sent); the request id is valid.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico::conn::ClientFor;
use portico::stack::headers::{add_forwarded, request_id, strip_hop_by_hop, valid_request_id};

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// RFC 7239 `Forwarded`: elements split on `,`, pairs on `;`, values a token
/// or a quoted-string (with `\` escapes); `None` if it does not parse.
fn forwarded_elements(v: &str) -> Option<Vec<Vec<(String, String)>>> {
    let b = v.as_bytes();
    let mut i = 0;
    let mut elements = vec![];
    let mut pairs = vec![];
    let ows = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    loop {
        ows(&mut i);
        let start = i;
        while i < b.len() && tchar(b[i]) {
            i += 1;
        }
        let key = v[start..i].to_ascii_lowercase();
        if key.is_empty() || i >= b.len() || b[i] != b'=' {
            return None;
        }
        i += 1;
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut s = String::new();
            loop {
                match b.get(i)? {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        s.push(*b.get(i + 1)? as char);
                        i += 2;
                    }
                    c => {
                        s.push(*c as char);
                        i += 1;
                    }
                }
            }
            s
        } else {
            let start = i;
            while i < b.len() && tchar(b[i]) {
                i += 1;
            }
            v[start..i].to_string()
        };
        pairs.push((key, value));
        ows(&mut i);
        match b.get(i) {
            None => {
                elements.push(pairs);
                return Some(elements);
            }
            Some(b';') => i += 1,
            Some(b',') => {
                elements.push(std::mem::take(&mut pairs));
                i += 1;
            }
            Some(_) => return None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let upgrade = flags & 1 != 0;
    let te_trailers = flags & 2 != 0;
    let (client, rest) = if flags & 4 != 0 {
        let Some((ip, rest)) = rest.split_first_chunk::<16>() else {
            return;
        };
        (IpAddr::V6(Ipv6Addr::from(*ip)), rest)
    } else {
        let Some((ip, rest)) = rest.split_first_chunk::<4>() else {
            return;
        };
        (IpAddr::V4(Ipv4Addr::from(*ip)), rest)
    };
    let Some((port, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let port = u16::from_be_bytes(*port);

    let mut h = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n').take(256) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }

    // The request id.
    let id = request_id(&h);
    assert!(
        valid_request_id(&id),
        "a request id portico uses is valid: {id:?}"
    );
    if let Some(sent) = h.get("x-request-id") {
        if valid_request_id(sent) {
            assert_eq!(&id, sent, "a valid client id is kept");
        }
    }

    // Hop-by-hop removal.
    let before = h.clone();
    let named: Vec<HeaderName> = before
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    strip_hop_by_hop(&mut h, upgrade, te_trailers);
    for n in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        assert!(!h.contains_key(n), "{n} survived");
    }
    if upgrade {
        let c: Vec<_> = h.get_all(header::CONNECTION).iter().collect();
        assert_eq!(c, [&HeaderValue::from_static("upgrade")]);
        assert_eq!(
            h.get_all(header::UPGRADE).iter().collect::<Vec<_>>(),
            before.get_all(header::UPGRADE).iter().collect::<Vec<_>>(),
            "an upgrade keeps Upgrade"
        );
    } else {
        assert!(!h.contains_key(header::CONNECTION), "Connection survived");
        assert!(!h.contains_key(header::UPGRADE), "Upgrade survived");
    }
    let te: Vec<_> = h.get_all(header::TE).iter().collect();
    assert!(
        te.is_empty() || (te_trailers && te == [&HeaderValue::from_static("trailers")]),
        "TE survived: {te:?}"
    );
    for n in &named {
        let kept = *n == header::HOST
            || *n == header::CONTENT_LENGTH
            || (upgrade && (*n == header::UPGRADE || *n == header::CONNECTION));
        if !kept {
            assert!(!h.contains_key(n), "{n}, named by Connection, survived");
        }
    }
    for name in before.keys() {
        if HOP.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        assert_eq!(
            h.get_all(name).iter().collect::<Vec<_>>(),
            before.get_all(name).iter().collect::<Vec<_>>(),
            "{name} changed"
        );
    }

    // Forwarding headers.
    let host = h.get(header::HOST).cloned();
    let mut prior = String::new();
    for v in h.get_all(header::FORWARDED).iter() {
        let Ok(v) = v.to_str() else { continue };
        if !v.trim().is_empty() {
            prior.push_str(v.trim());
            prior.push_str(", ");
        }
    }
    add_forwarded(
        &mut h,
        &ClientFor::new(client),
        host.as_ref(),
        &HeaderValue::from(port),
    );
    let ip = client.to_string();
    let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "one X-Forwarded-For");
    let xff = xff[0].to_str().expect("ascii");
    assert_eq!(
        xff.rsplit(',').next().map(str::trim),
        Some(ip.as_str()),
        "{xff}"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-port"], port.to_string().as_str());
    assert_eq!(h.get("x-forwarded-host"), host.as_ref());

    // What the client sent is kept before portico's element (it may not
    // parse); portico's own element must.
    let fwd: Vec<_> = h.get_all(header::FORWARDED).iter().collect();
    assert_eq!(fwd.len(), 1, "one Forwarded");
    let fwd = fwd[0].to_str().expect("ascii");
    let own = fwd
        .strip_prefix(prior.as_str())
        .unwrap_or_else(|| panic!("{fwd:?} does not keep {prior:?}"));
    let elements = forwarded_elements(own).unwrap_or_else(|| panic!("unparsable: {own:?}"));
    let last = elements.last().expect("an element");
    let want_for = match client {
        IpAddr::V4(_) => ip.clone(),
        IpAddr::V6(_) => format!("[{ip}]"),
    };
    let mut want = vec![
        ("for".to_string(), want_for),
        ("proto".to_string(), "https".to_string()),
    ];
    if let Some(s) = host.as_ref().and_then(|v| v.to_str().ok()) {
        want.push(("host".to_string(), s.to_string()));
    }
    assert_eq!(elements.len(), 1, "{fwd:?}: portico's element was split");
    assert_eq!(last, &want, "{fwd:?}");
});
