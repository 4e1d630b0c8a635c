//! The request as the upstream gets it: hop-by-hop headers gone, the
//! forwarding headers and the client certificate's XFCC set by portico alone,
//! `Host` from the target's authority, the target in origin form (authority
//! form for CONNECT) and the version the upstream speaks.

use http::request::Parts;
use http::{header, Method, Uri, Version};

use super::body::ReqBody;
use super::headers;
use crate::conn::ConnInfo;
use crate::upstream::Upstream;

/// Rewrites `parts` for `upstream`; `upgrade` keeps the headers an upgrade
/// needs.
pub(super) fn for_upstream(
    parts: &mut Parts,
    conn: &ConnInfo,
    upstream: &Upstream<ReqBody>,
    upgrade: bool,
) {
    let host = match parts.uri.authority() {
        Some(a) => conn.client_for.host(a.as_str()),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // Room for the forwarding headers and Host in one growth of the table,
    // not one per header that crosses its load limit.
    parts.headers.reserve(6);
    headers::strip_hop_by_hop(&mut parts.headers, upgrade, upstream.h2());
    match &conn.xfcc {
        Some(x) => parts.headers.insert(&headers::XFCC, x.clone()),
        None => parts.headers.remove(&headers::XFCC),
    };
    headers::add_forwarded(
        &mut parts.headers,
        &conn.client_for,
        host.as_ref(),
        &conn.port,
    );
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h);
    }
    // hyper writes the target as given: origin form, or authority form for
    // CONNECT. The h2c client adds scheme and authority itself.
    parts.uri = match parts.uri.path_and_query() {
        _ if parts.method == Method::CONNECT => Uri::from(upstream.base.clone()),
        Some(p) => Uri::from(p.clone()),
        None => Uri::from_static("/"),
    };
    parts.version = if upstream.h2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
}
