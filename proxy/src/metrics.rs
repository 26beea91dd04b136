//! Prometheus metrics of the proxy. Label values come only from the snapshot (host
//! names an Ingress declared), never from request data, so cardinality stays bounded.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct ProxyMetrics {
    registry: Registry,
    requests: IntCounterVec,
    pub snapshot_version: IntGauge,
    pub snapshot_applies: IntCounterVec,
    pub snapshot_apply_timestamp: IntGauge,
}

/// Label value for requests whose host no virtual host matched.
pub const UNMATCHED_HOST: &str = "_unmatched";
/// Label value for the catch-all virtual host (rules without `host`).
pub const ANY_HOST: &str = "_";

/// Per-host request counters by status class, fetched once per snapshot so a request
/// only touches an atomic.
#[derive(Clone)]
pub struct StatusCounters([IntCounter; 6]);

impl StatusCounters {
    pub fn record(&self, status: u16) {
        let class = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.0[class].inc();
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("portico_requests_total", "Requests answered, by virtual host and status class"),
            &["host", "code"],
        )
        .expect("valid metric");
        let snapshot_version = IntGauge::new("portico_snapshot_version", "Version of the snapshot being served").expect("valid metric");
        let snapshot_applies = IntCounterVec::new(
            Opts::new("portico_snapshot_applies_total", "Snapshots received from the controller, by result"),
            &["result"],
        )
        .expect("valid metric");
        let snapshot_apply_timestamp =
            IntGauge::new("portico_snapshot_last_apply_timestamp_seconds", "Unix time the serving snapshot was applied")
                .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(snapshot_version.clone()),
            Box::new(snapshot_applies.clone()),
            Box::new(snapshot_apply_timestamp.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        ProxyMetrics { registry, requests, snapshot_version, snapshot_applies, snapshot_apply_timestamp }
    }

    pub fn status_counters(&self, host: &str) -> StatusCounters {
        let c = |class: &str| self.requests.with_label_values(&[host, class]);
        StatusCounters([c("other"), c("1xx"), c("2xx"), c("3xx"), c("4xx"), c("5xx")])
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        out
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}
