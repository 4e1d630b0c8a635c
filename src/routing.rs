//! The route table: which upstream a request goes to, from its host and path.
//! Pure data and matching, no I/O, so every rule of the reference is a unit
//! test here. A route as configured, and its parser, are configuration
//! (`config/route.rs`).

use std::sync::Arc;

pub use crate::config::route::{HostMatch, Route, UpstreamAddr};

impl HostMatch {
    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (Self::Any, _) => true,
            (_, None) => false,
            (Self::Exact(h), Some(req)) => req.eq_ignore_ascii_case(h),
            (Self::Wildcard(suffix), Some(req)) => {
                req.len() > suffix.len()
                    && req.is_char_boundary(req.len() - suffix.len())
                    && req[req.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::Any => 0,
            Self::Wildcard(_) => 1,
            Self::Exact(_) => 2,
        }
    }
}

impl Route {
    fn matches_path(&self, path: &str) -> bool {
        let p = self.path.as_str();
        if p == "/" {
            return true;
        }
        match path.strip_prefix(p) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || p.ends_with('/'),
            None => false,
        }
    }
}

/// The routes in match order, and the default upstream.
#[derive(Clone, Debug)]
pub struct RouteTable {
    /// Sorted: longest path first, then exact host, wildcard host, no host, then given order.
    routes: Vec<(usize, Route)>,
    default: Route,
}

/// The name of the default route, as the `route` label.
pub const DEFAULT_ROUTE: &str = "default";

impl RouteTable {
    /// Builds the table; `routes` in the order given on the command line.
    pub fn new(default: UpstreamAddr, routes: Vec<Route>) -> Self {
        let n = routes.len();
        let mut routes: Vec<(usize, Route)> = routes
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.id = i;
                (i, r)
            })
            .collect();
        routes.sort_by(|(ia, a), (ib, b)| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then(b.host.rank().cmp(&a.host.rank()))
                .then(ia.cmp(ib))
        });
        Self {
            routes,
            default: Route {
                id: n,
                name: Arc::from(DEFAULT_ROUTE),
                host: HostMatch::Any,
                path: "/".to_string(),
                upstream: default,
            },
        }
    }

    /// The route for a request; `host` without its port.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> &Route {
        self.routes
            .iter()
            .map(|(_, r)| r)
            .find(|r| r.host.matches(host) && r.matches_path(path))
            .unwrap_or(&self.default)
    }

    /// The default route (`--upstream`).
    pub fn default_route(&self) -> &Route {
        &self.default
    }

    /// Every route in the order given, then the default.
    pub fn all(&self) -> Vec<&Route> {
        let mut v: Vec<&(usize, Route)> = self.routes.iter().collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter()
            .map(|(_, r)| r)
            .chain(std::iter::once(&self.default))
            .collect()
    }
}

/// Strips the port from a `Host` value (`example.com:8443`, `[::1]:8443`).
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &rest[..end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[&str]) -> RouteTable {
        RouteTable::new(
            UpstreamAddr::parse("http://127.0.0.1:8080").expect("default"),
            routes
                .iter()
                .map(|r| Route::parse(r).expect("route"))
                .collect(),
        )
    }

    fn pick<'a>(t: &'a RouteTable, host: Option<&str>, path: &str) -> &'a str {
        &t.lookup(host, path).name
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(&["/api=http://a:1", "/api/v2=http://b:1"]);
        assert_eq!(pick(&t, None, "/api"), "/api=http://a:1");
        assert_eq!(pick(&t, None, "/api/x"), "/api=http://a:1");
        assert_eq!(pick(&t, None, "/api/v2"), "/api/v2=http://b:1");
        assert_eq!(pick(&t, None, "/api/v2/y"), "/api/v2=http://b:1");
        assert_eq!(pick(&t, None, "/api/v22"), "/api=http://a:1");
        assert_eq!(pick(&t, None, "/apix"), DEFAULT_ROUTE);
        assert_eq!(pick(&t, None, "/"), DEFAULT_ROUTE);
    }

    #[test]
    fn trailing_slash_prefix() {
        let t = table(&["/static/=http://a:1"]);
        assert_eq!(pick(&t, None, "/static/app.js"), "/static/=http://a:1");
        assert_eq!(pick(&t, None, "/static"), DEFAULT_ROUTE);
    }

    #[test]
    fn host_matching_ignores_case_and_port() {
        let t = table(&["api.example.com/=http://a:1"]);
        assert_eq!(
            pick(&t, Some(host_without_port("API.Example.COM:8443")), "/x"),
            "api.example.com/=http://a:1"
        );
        assert_eq!(pick(&t, Some("other.example.com"), "/x"), DEFAULT_ROUTE);
        assert_eq!(pick(&t, None, "/x"), DEFAULT_ROUTE);
    }

    #[test]
    fn wildcard_matches_deeper_names_only() {
        let t = table(&["*.example.com/=http://a:1"]);
        assert_eq!(
            pick(&t, Some("a.example.com"), "/"),
            "*.example.com/=http://a:1"
        );
        assert_eq!(
            pick(&t, Some("a.b.example.com"), "/"),
            "*.example.com/=http://a:1"
        );
        assert_eq!(pick(&t, Some("example.com"), "/"), DEFAULT_ROUTE);
        assert_eq!(pick(&t, Some("badexample.com"), "/"), DEFAULT_ROUTE);
    }

    #[test]
    fn ties_host_beats_none_exact_beats_wildcard_then_first() {
        let t = table(&[
            "/api=http://none:1",
            "*.example.com/api=http://wild:1",
            "a.example.com/api=http://exact:1",
            "a.example.com/api=http://exact2:1",
        ]);
        assert_eq!(
            pick(&t, Some("a.example.com"), "/api"),
            "a.example.com/api=http://exact:1"
        );
        assert_eq!(
            pick(&t, Some("b.example.com"), "/api"),
            "*.example.com/api=http://wild:1"
        );
        assert_eq!(pick(&t, Some("other.org"), "/api"), "/api=http://none:1");
    }

    #[test]
    fn longer_path_beats_host() {
        let t = table(&["a.example.com/=http://host:1", "/api=http://path:1"]);
        assert_eq!(
            pick(&t, Some("a.example.com"), "/api/x"),
            "/api=http://path:1"
        );
        assert_eq!(
            pick(&t, Some("a.example.com"), "/other"),
            "a.example.com/=http://host:1"
        );
    }

    #[test]
    fn strip_port() {
        assert_eq!(host_without_port("example.com:8443"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:8443"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
    }
}
