//! `--upstream` and `--route` as configured: where a primary listens, and which
//! requests a route takes. The route table (`routing.rs`) matches them.

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

/// One `--route`: its text as given (the metrics label), host, path prefix and upstream.
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
