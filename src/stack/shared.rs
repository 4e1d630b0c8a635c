//! The state every connection's stack shares: configuration, routes, one
//! upstream client per distinct address, per-route metrics, the drain and the
//! in-flight permits.

use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;

use super::body::ReqBody;
use crate::config::Config;
use crate::routing::RouteTable;
use crate::shutdown::Drain;
use crate::telemetry::{CodeCounters, Metrics};
use crate::upstream::Upstream;

/// Everything the stack shares across connections.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// The route table.
    pub routes: RouteTable,
    /// Upstream clients by route id (the default route last).
    pub upstreams: Vec<Arc<Upstream<ReqBody>>>,
    /// Route names by route id.
    pub route_names: Vec<Arc<str>>,
    /// Latency histograms by route id.
    pub route_hist: Vec<Histogram>,
    /// Request counters by route id.
    pub route_codes: Vec<CodeCounters>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Drain state and counts.
    pub drain: Arc<Drain>,
    /// Permits for `--max-requests-in-flight`.
    pub in_flight: Arc<Semaphore>,
}

impl Shared {
    /// Builds the shared state: one upstream client per distinct address.
    pub fn new(cfg: Config, metrics: Arc<Metrics>, drain: Arc<Drain>) -> Self {
        let routes = RouteTable::new(cfg.upstream.clone(), cfg.routes.clone());
        let mut by_addr: Vec<Arc<Upstream<ReqBody>>> = Vec::new();
        let mut upstreams = Vec::new();
        let mut route_names = Vec::new();
        let mut route_hist = Vec::new();
        let mut route_codes = Vec::new();
        for r in routes.all() {
            let up = match by_addr.iter().find(|u| u.addr == r.upstream) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(Upstream::new(&r.upstream, cfg.connect_timeout));
                    by_addr.push(u.clone());
                    u
                }
            };
            upstreams.push(up);
            route_names.push(r.name.clone());
            route_hist.push(metrics.register_route(&r.name));
            route_codes.push(CodeCounters::new(r.name.clone()));
        }
        let in_flight = Arc::new(Semaphore::new(cfg.max_requests_in_flight));
        Self {
            cfg,
            routes,
            upstreams,
            route_names,
            route_hist,
            route_codes,
            metrics,
            drain,
            in_flight,
        }
    }
}
