//! The route table: which upstream a request goes to, from its host and path.
//! Pure data and matching, no I/O, so every rule in SPEC is a unit test here.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a primary listens and how to speak to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    /// `http://HOST:PORT`: HTTP/1.1 over TCP.
    Http(String),
    /// `h2c://HOST:PORT`: HTTP/2 with prior knowledge over TCP.
    H2c(String),
    /// `unix:/PATH`: HTTP/1.1 over a Unix socket.
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// Parses `http://HOST:PORT`, `h2c://HOST:PORT` or `unix:/PATH`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let authority = |rest: &str, default_port: u16| -> Result<String, String> {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
                return Err(format!(
                    "'{s}' must be SCHEME://HOST:PORT with no path (the request path is forwarded unchanged)"
                ));
            }
            let uri: http::uri::Authority = rest
                .parse()
                .map_err(|_| format!("'{s}' has an invalid host or port"))?;
            if uri.host().is_empty() {
                return Err(format!("'{s}' has no host"));
            }
            // `host:notaport` parses as an authority without a usable port.
            let has_port = rest
                .rsplit_once(':')
                .is_some_and(|(h, _)| !h.ends_with(':') && !rest.ends_with(']'));
            Ok(match uri.port_u16() {
                Some(_) => rest.to_string(),
                None if has_port => return Err(format!("'{s}' has an invalid port")),
                None => format!("{rest}:{default_port}"),
            })
        };
        if let Some(rest) = s.strip_prefix("http://") {
            Ok(Self::Http(authority(rest, 80)?))
        } else if let Some(rest) = s.strip_prefix("h2c://") {
            Ok(Self::H2c(authority(rest, 80)?))
        } else if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.trim_start_matches("//");
            if !path.starts_with('/') {
                return Err(format!("'{s}' must be unix:/ABSOLUTE/PATH"));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "'{s}' is not an upstream URL: use http://HOST:PORT, h2c://HOST:PORT or unix:/PATH"
            ))
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(a) => write!(f, "http://{a}"),
            Self::H2c(a) => write!(f, "h2c://{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The host part of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// No host: any request host.
    Any,
    /// `*.example.com`: any deeper name, stored as `.example.com`.
    Wildcard(String),
    /// An exact name, lower case.
    Exact(String),
}

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

/// One `--route`: its SPEC text (the metrics label), host, path prefix and upstream.
#[derive(Clone, Debug)]
pub struct Route {
    /// Position in the order given; the default route comes last.
    pub id: usize,
    /// The route as given, used as the `route` label.
    pub name: Arc<str>,
    /// Which request hosts it serves.
    pub host: HostMatch,
    /// The path prefix, matched on segment boundaries.
    pub path: String,
    /// Where matching requests go.
    pub upstream: UpstreamAddr,
}

impl Route {
    /// Parses `[HOST]PATH=URL`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (lhs, url) = spec
            .split_once('=')
            .ok_or_else(|| format!("'{spec}' is not [HOST]PATH=URL"))?;
        let slash = lhs
            .find('/')
            .ok_or_else(|| format!("'{spec}' has no path: write [HOST]/PATH=URL"))?;
        let (host, path) = lhs.split_at(slash);
        let host = host.to_ascii_lowercase();
        let host = if host.is_empty() {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("'{spec}' has an invalid wildcard host"));
            }
            HostMatch::Wildcard(format!(".{suffix}"))
        } else if host.contains(['*', ':', ' ']) {
            return Err(format!(
                "'{spec}' has an invalid host (a name, or *.name; ports are ignored when matching)"
            ));
        } else {
            HostMatch::Exact(host)
        };
        if path.contains(['?', '#', ' ']) {
            return Err(format!("'{spec}' has an invalid path"));
        }
        let upstream = UpstreamAddr::parse(url).map_err(|e| format!("'{spec}': {e}"))?;
        Ok(Self {
            id: 0,
            name: Arc::from(spec),
            host,
            path: path.to_string(),
            upstream,
        })
    }

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
    fn upstream_urls() {
        assert_eq!(
            UpstreamAddr::parse("http://127.0.0.1:8080"),
            Ok(UpstreamAddr::Http("127.0.0.1:8080".into()))
        );
        assert_eq!(
            UpstreamAddr::parse("http://localhost"),
            Ok(UpstreamAddr::Http("localhost:80".into()))
        );
        assert_eq!(
            UpstreamAddr::parse("h2c://[::1]:50051"),
            Ok(UpstreamAddr::H2c("[::1]:50051".into()))
        );
        assert_eq!(
            UpstreamAddr::parse("unix:/run/app.sock"),
            Ok(UpstreamAddr::Unix("/run/app.sock".into()))
        );
        assert!(UpstreamAddr::parse("https://x:1").is_err());
        assert!(UpstreamAddr::parse("http://x:1/api").is_err());
        assert!(UpstreamAddr::parse("http://x:notaport").is_err());
        assert!(UpstreamAddr::parse("unix:relative.sock").is_err());
    }

    #[test]
    fn route_specs() {
        let r = Route::parse("api.example.com/=h2c://127.0.0.1:50051").expect("parse");
        assert_eq!(r.host, HostMatch::Exact("api.example.com".into()));
        assert_eq!(r.path, "/");
        let r = Route::parse("*.Example.com/v2=unix:/run/app.sock").expect("parse");
        assert_eq!(r.host, HostMatch::Wildcard(".example.com".into()));
        assert!(Route::parse("/metrics").is_err());
        assert!(Route::parse("metrics=http://a:1").is_err());
        assert!(Route::parse("/x=ftp://a:1").is_err());
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
