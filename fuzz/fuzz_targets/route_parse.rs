//! `--route` and `--upstream` parsing and the route table.
//!
//! Input: lines. Every line but the last two is a `--route` value (also tried as an
//! upstream URL); the second-to-last is the request host (empty: none, a port
//! is stripped as portico does), the last is the request path.
//!
//! Never a panic, and the table agrees with a model of the reference's rules: among
//! routes whose host and path match, the longest path prefix wins, then an
//! exact host, a wildcard, no host, then the first given; no match: default.
//! Each parsed route also wins (or ties with a better route) for its own path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::routing::{host_without_port, HostMatch, Route, RouteTable, UpstreamAddr};

fn host_matches(h: &HostMatch, host: Option<&str>) -> bool {
    match (h, host) {
        (HostMatch::Any, _) => true,
        (_, None) => false,
        (HostMatch::Exact(e), Some(r)) => r.to_ascii_lowercase() == e.to_ascii_lowercase(),
        (HostMatch::Wildcard(s), Some(r)) => {
            r.len() > s.len() && r.to_ascii_lowercase().ends_with(&s.to_ascii_lowercase())
        }
    }
}

fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

fn rank(h: &HostMatch) -> u8 {
    match h {
        HostMatch::Any => 0,
        HostMatch::Wildcard(_) => 1,
        HostMatch::Exact(_) => 2,
    }
}

/// The model: the id of the route the reference says wins, `routes.len()` for the default.
fn expected(routes: &[Route], host: Option<&str>, path: &str) -> usize {
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| host_matches(&r.host, host) && path_matches(&r.path, path))
        .max_by(|(ia, a), (ib, b)| {
            a.path
                .len()
                .cmp(&b.path.len())
                .then(rank(&a.host).cmp(&rank(&b.host)))
                .then(ib.cmp(ia))
        })
        .map_or(routes.len(), |(i, _)| i)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let (specs, query) = if lines.len() >= 2 {
        lines.split_at(lines.len() - 2)
    } else {
        (&lines[..0], &lines[..])
    };
    let mut routes = Vec::new();
    for spec in specs.iter().take(64) {
        let _ = UpstreamAddr::parse(spec);
        if let Ok(r) = Route::parse(spec) {
            assert_eq!(&*r.name, *spec, "the route label is the --route text");
            assert!(r.path.starts_with('/'), "a route path starts with '/'");
            if let HostMatch::Wildcard(s) = &r.host {
                assert!(s.starts_with('.') && s.len() > 1);
            }
            routes.push(r);
        }
    }
    let raw_host = query.first().copied().unwrap_or("");
    let path = query.get(1).copied().unwrap_or("/");
    let host = (!raw_host.is_empty()).then(|| host_without_port(raw_host));
    if let Some(h) = host {
        assert!(
            raw_host.contains(h),
            "host_without_port returns a part of its input"
        );
    }

    let default = UpstreamAddr::parse("http://127.0.0.1:8080").expect("default");
    let table = RouteTable::new(default, routes.clone());
    assert_eq!(table.all().len(), routes.len() + 1);
    assert_eq!(table.default_route().id, routes.len());

    let got = table.lookup(host, path);
    assert_eq!(
        got.id,
        expected(&routes, host, path),
        "lookup({host:?}, {path:?}) picked {:?}",
        got.name
    );
    // Deterministic.
    assert_eq!(table.lookup(host, path).id, got.id);

    // Each route, asked for its own path with a host it matches, is picked
    // unless a route at least as specific wins.
    for (i, r) in routes.iter().enumerate() {
        let h = match &r.host {
            HostMatch::Any => None,
            HostMatch::Exact(e) => Some(e.clone()),
            HostMatch::Wildcard(s) => Some(format!("x{s}")),
        };
        let w = table.lookup(h.as_deref(), &r.path);
        assert_ne!(w.id, routes.len(), "route {:?} lost to the default", r.name);
        let wr = &routes[w.id];
        assert!(
            (wr.path.len(), rank(&wr.host)) >= (r.path.len(), rank(&r.host)),
            "{:?} lost to a less specific {:?}",
            r.name,
            wr.name
        );
        if w.id != i && (wr.path.len(), rank(&wr.host)) == (r.path.len(), rank(&r.host)) {
            assert!(w.id < i, "at a tie the first given wins");
        }
    }
});
