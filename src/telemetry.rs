//! Logs and metrics: the tracing subscriber (text or JSON) and the Prometheus
//! registry with every metric docs/reference.md lists. Off the data path except for the
//! handles the stack updates.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::config::LogFormat;
use crate::error::ErrorKind;

/// Installs the global subscriber. `directives` as `--log-level` takes them.
pub fn init_logging(format: LogFormat, directives: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A status code as a label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Code(pub u16);

impl EncodeLabelValue for Code {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, e)
    }
}

/// `{route, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    /// The route's `--route` text, or `default`.
    pub route: Arc<str>,
    /// The status code.
    pub code: Code,
}

/// `{route}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's `--route` text, or `default`.
    pub route: Arc<str>,
}

/// `{route, kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteKind {
    /// The route's `--route` text, or `default`.
    pub route: Arc<str>,
    /// The error kind (`Portico-Error` value).
    pub kind: &'static str,
}

/// `{result}`: `ok` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// `{name}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// A certificate's first DNS name, or its CN.
    pub name: String,
}

/// `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// The crate version.
    pub version: &'static str,
}

/// One route's `portico_requests_total` series, by status code, resolved once:
/// counting a request is then an index and an atomic add, not a lock and a hash.
#[derive(Debug)]
pub struct CodeCounters {
    route: Arc<str>,
    by_code: Box<[OnceLock<Counter>]>,
}

impl CodeCounters {
    /// Empty slots for status codes 100 to 599.
    pub fn new(route: Arc<str>) -> Self {
        Self {
            route,
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one answer with `code`.
    pub fn inc(&self, family: &Family<RouteCode, Counter>, code: u16) {
        let series = || {
            family
                .get_or_create(&RouteCode {
                    route: self.route.clone(),
                    code: Code(code),
                })
                .clone()
        };
        match code
            .checked_sub(100)
            .and_then(|i| self.by_code.get(usize::from(i)))
        {
            Some(slot) => slot.get_or_init(series).inc(),
            None => series().inc(),
        };
    }
}

/// Latency buckets for a proxy: sub-millisecond through a minute.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Every metric, and the registry that prints them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `portico_requests_total{route,code}`.
    pub requests: Family<RouteCode, Counter>,
    /// `portico_request_duration_seconds{route}`.
    pub duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// `portico_upstream_errors_total{route,kind}`.
    pub upstream_errors: Family<RouteKind, Counter>,
    /// `portico_connections_open`.
    pub connections_open: Gauge,
    /// `portico_connections_total`.
    pub connections_total: Counter,
    /// `portico_tls_handshakes_total{result}`.
    pub handshakes: Family<ResultLabel, Counter>,
    /// `portico_certificate_not_after_seconds{name}`.
    pub cert_not_after: Family<NameLabel, Gauge>,
    /// `portico_certificate_reloads_total{result}`.
    pub cert_reloads: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `portico_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portico");
        let requests = Family::<RouteCode, Counter>::default();
        let duration = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            (|| Histogram::new(BUCKETS)) as fn() -> Histogram,
        );
        let upstream_errors = Family::<RouteKind, Counter>::default();
        let connections_open = Gauge::default();
        let connections_total = Counter::default();
        let handshakes = Family::<ResultLabel, Counter>::default();
        let cert_not_after = Family::<NameLabel, Gauge>::default();
        let cert_reloads = Family::<ResultLabel, Counter>::default();
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        for result in ["ok", "failed"] {
            let _ = handshakes.get_or_create(&ResultLabel { result });
            let _ = cert_reloads.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request head to response head, by route",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests portico answered because the upstream failed, by route and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "connections_open",
            "TLS client connections open now",
            connections_open.clone(),
        );
        registry.register(
            "connections",
            "TLS client connections accepted",
            connections_total.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes, by result",
            handshakes.clone(),
        );
        registry.register_with_unit(
            "certificate_not_after",
            "Expiry of each certificate in service, unix time",
            Unit::Seconds,
            cert_not_after.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Certificate reloads, by result",
            cert_reloads.clone(),
        );
        registry.register("build_info", "portico's version", build_info);
        Self {
            registry,
            requests,
            duration,
            upstream_errors,
            connections_open,
            connections_total,
            handshakes,
            cert_not_after,
            cert_reloads,
        }
    }

    /// Pre-creates a route's series, so they show at zero before traffic.
    pub fn register_route(&self, route: &Arc<str>) -> Histogram {
        for kind in ErrorKind::ALL.iter().filter(|k| k.is_upstream()) {
            let _ = self.upstream_errors.get_or_create(&RouteKind {
                route: route.clone(),
                kind: kind.as_str(),
            });
        }
        self.duration
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a handshake result.
    pub fn handshake(&self, ok: bool) {
        self.handshakes
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Counts a certificate reload result.
    pub fn reload(&self, ok: bool) {
        self.cert_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }
}
