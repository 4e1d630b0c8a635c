//! Upgrades (WebSocket and the like) on HTTP/1.1: when the upstream answers
//! `101`, the client's and the upstream's connections are joined byte for
//! byte until either side closes. The join counts towards the drain, so a
//! graceful shutdown waits for it as for a request.

use std::sync::Arc;

use http::{header, Request};
use hyper::upgrade::OnUpgrade;

use crate::shutdown::Drain;

/// Whether the request asks to switch protocols (`Upgrade` with `Connection:
/// upgrade`).
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Joins the two upgraded connections in a task of its own, once hyper has
/// handed both over.
pub(super) fn join(client: OnUpgrade, upstream: OnUpgrade, drain: &Arc<Drain>) {
    let guard = drain.track();
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let mut c = hyper_util::rt::TokioIo::new(c);
                let mut u = hyper_util::rt::TokioIo::new(u);
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/chat");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn an_upgrade_needs_both_the_header_and_the_connection_token() {
        assert!(is_upgrade(&req(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
        ])));
        assert!(is_upgrade(&req(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
        ])));
        assert!(!is_upgrade(&req(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&req(&[("connection", "upgrade")])));
        assert!(!is_upgrade(&req(&[
            ("upgrade", "websocket"),
            ("connection", "upgraded"),
        ])));
    }
}
