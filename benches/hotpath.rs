//! Criterion micro-benches for the per-request work portico owns: the route
//! lookup and the header rules (hop-by-hop removal, forwarding headers, request
//! id). Run: `cargo bench --bench hotpath` (add a filter, e.g. `-- routing`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use portico::conn::ClientFor;
use portico::routing::{host_without_port, Route, RouteTable, UpstreamAddr};
use portico::stack::headers::{add_forwarded, request_id, strip_hop_by_hop, X_REQUEST_ID};

const ROUTES: &[&str] = &[
    "/metrics=http://127.0.0.1:9090",
    "/api=http://127.0.0.1:8081",
    "/api/v2=http://127.0.0.1:8082",
    "/api/v2/admin=http://127.0.0.1:8083",
    "/static/=http://127.0.0.1:8084",
    "api.example.com/=h2c://127.0.0.1:50051",
    "api.example.com/v3=http://127.0.0.1:8085",
    "*.example.com/v2=unix:/run/app.sock",
    "*.internal.example.com/=http://127.0.0.1:8086",
    "shop.example.org/cart=http://127.0.0.1:8087",
];

fn table() -> RouteTable {
    RouteTable::new(
        UpstreamAddr::parse("http://127.0.0.1:8080").expect("default upstream"),
        ROUTES
            .iter()
            .map(|r| Route::parse(r).expect("route"))
            .collect(),
    )
}

fn routing(c: &mut Criterion) {
    let t = table();
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("default", Some("app.example.net:8443"), "/index.html"),
        ("longest_prefix", None, "/api/v2/admin/users/42"),
        (
            "exact_host",
            Some("API.example.com:8443"),
            "/v3/orders?page=2",
        ),
        ("wildcard_host", Some("a.b.example.com"), "/v2/items"),
        ("no_host", None, "/healthz"),
    ];
    let mut g = c.benchmark_group("routing");
    for (name, host, path) in cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let host = black_box(*host).map(host_without_port);
                black_box(t.lookup(host, black_box(path)).id)
            })
        });
    }
    g.finish();
}

/// What a browser-ish client sends through a load balancer.
fn realistic_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com:8443"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "session=3f9a1c0e7b2d4a5f8e6c; theme=dark; _ga=GA1.2.123456789.1700000000"),
        ("connection", "keep-alive, x-debug"),
        ("keep-alive", "timeout=5"),
        ("x-debug", "1"),
        ("te", "trailers"),
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-forwarded-proto", "http"),
        ("cache-control", "no-cache"),
        ("referer", "https://app.example.com/dashboard"),
    ] {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn headers(c: &mut Criterion) {
    let base = realistic_headers();
    // Built once per connection, as portico does.
    let client = ClientFor::new("192.0.2.7".parse().expect("ip"));
    let client6 = ClientFor::new("2001:db8::7".parse().expect("ip"));
    let host = HeaderValue::from_static("app.example.com:8443");
    let port = HeaderValue::from(8443u16);
    let mut with_id = base.clone();
    with_id.insert(
        &X_REQUEST_ID,
        HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
    );

    let mut g = c.benchmark_group("headers");
    g.bench_function("clone_only_baseline", |b| {
        b.iter(|| black_box(base.clone()))
    });
    g.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| strip_hop_by_hop(h, false, false),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("add_forwarded_v4", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| add_forwarded(h, &client, Some(&host), &port),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("add_forwarded_v6", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| add_forwarded(h, &client6, Some(&host), &port),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("request_id_fresh", |b| {
        b.iter(|| black_box(request_id(black_box(&base))))
    });
    g.bench_function("request_id_kept", |b| {
        b.iter(|| black_box(request_id(black_box(&with_id))))
    });
    g.bench_function("all_rules", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                let id = request_id(h);
                strip_hop_by_hop(h, false, false);
                add_forwarded(h, &client, Some(&host), &port);
                h.insert(&X_REQUEST_ID, id);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    routing(&mut c);
    headers(&mut c);
    c.final_summary();
}
