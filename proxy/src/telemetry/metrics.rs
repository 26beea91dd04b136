//! Prometheus metrics of the proxy. Label values come only from the snapshot (the
//! Ingress, host, path rule and Service a route was declared with), never from request
//! data, so cardinality stays bounded: a request for an unknown host counts under
//! [`UNMATCHED_HOST`], and no request path or client address is ever a label.
//!
//! Series of a route or backend are registered on their first request and removed when
//! no compiled snapshot holds them any more, so a deleted Ingress leaves no series behind.

use portico_model::{HostMatch, ServiceRef, SourceRef};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Label value for requests whose host no virtual host matched.
pub const UNMATCHED_HOST: &str = "_unmatched";
/// Label value for the catch-all virtual host (rules without `host`).
pub const ANY_HOST: &str = "_";

/// The `host` label of a virtual host.
pub fn host_label(host: &HostMatch) -> String {
    match host {
        HostMatch::Any => ANY_HOST.to_string(),
        h => h.to_string(),
    }
}

/// Latency buckets from 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const ROUTE_LABELS: [&str; 5] = ["namespace", "ingress", "host", "path", "service"];
const BACKEND_LABELS: [&str; 3] = ["namespace", "service", "port"];

/// Why Portico answered a request itself instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Framing, path or header problems: 400 and 431.
    BadRequest,
    RateLimit,
    SourceRange,
    BasicAuth,
    Jwt,
    ExternalAuth,
    /// A security annotation could not be read: 503.
    PolicyUnavailable,
    BodyTooLarge,
    /// `auth-tls-*`: no certificate, a bad one, another subject, or another host's handshake.
    ClientCertificate,
    /// The controller ConfigMap's `block-cidrs`, `block-user-agents`, `block-referers`.
    Blocked,
}

impl Refusal {
    const ALL: [Refusal; 10] = [
        Refusal::BadRequest,
        Refusal::RateLimit,
        Refusal::SourceRange,
        Refusal::BasicAuth,
        Refusal::Jwt,
        Refusal::ExternalAuth,
        Refusal::PolicyUnavailable,
        Refusal::BodyTooLarge,
        Refusal::ClientCertificate,
        Refusal::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::RateLimit => "rate_limit",
            Refusal::SourceRange => "source_range",
            Refusal::BasicAuth => "basic_auth",
            Refusal::Jwt => "jwt",
            Refusal::ExternalAuth => "external_auth",
            Refusal::PolicyUnavailable => "policy_unavailable",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::ClientCertificate => "client_certificate",
            Refusal::Blocked => "blocked",
        }
    }
}

/// What a route's series are labelled with: `namespace`, `ingress`, `host`, `path`, `service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RouteLabels(pub [Box<str>; 5]);

impl RouteLabels {
    /// `source` is the object the route came from; `service` the Service its backend stands for.
    pub fn new(
        source: Option<&SourceRef>,
        host: &str,
        path: &str,
        service: Option<&ServiceRef>,
    ) -> Self {
        let service = service.map_or("", |s| s.name.as_str());
        RouteLabels([
            source.map_or("", |s| s.namespace.as_str()).into(),
            source.map_or("", |s| s.name.as_str()).into(),
            host.into(),
            path.into(),
            service.into(),
        ])
    }

    fn values(&self) -> [&str; 5] {
        self.0.each_ref().map(|v| &**v)
    }

    pub fn namespace(&self) -> &str {
        &self.0[0]
    }

    pub fn ingress(&self) -> &str {
        &self.0[1]
    }

    pub fn path(&self) -> &str {
        &self.0[3]
    }

    pub fn service(&self) -> &str {
        &self.0[4]
    }
}

/// What a backend's series are labelled with: `namespace`, `service`, `port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendLabels(pub [Box<str>; 3]);

impl BackendLabels {
    pub fn of(service: &ServiceRef) -> Self {
        BackendLabels([
            service.namespace.as_str().into(),
            service.name.as_str().into(),
            service.port.as_str().into(),
        ])
    }

    fn values(&self) -> [&str; 3] {
        self.0.each_ref().map(|v| &**v)
    }
}

/// The series one route (or one side of it) counts its requests in.
pub struct RouteSeries {
    labels: RouteLabels,
    codes: [IntCounter; 6],
    duration: Histogram,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    metrics: Arc<ProxyMetrics>,
}

impl RouteSeries {
    /// Counts a finished request: its status (0 when none was sent), how long it took,
    /// and the body bytes read from and sent to the client.
    pub fn record(&self, status: u16, elapsed: Duration, bytes_in: usize, bytes_out: usize) {
        let class = match status {
            100..=599 => (status / 100) as usize,
            _ => 0,
        };
        self.codes[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
        self.request_bytes.inc_by(bytes_in as u64);
        self.response_bytes.inc_by(bytes_out as u64);
    }

    pub fn labels(&self) -> &RouteLabels {
        &self.labels
    }

    pub fn refused(&self, why: Refusal) {
        let [n, i, h, p, s] = self.labels.values();
        self.metrics
            .refusals
            .with_label_values(&[n, i, h, p, s, why.as_str()])
            .inc();
    }
}

impl Drop for RouteSeries {
    fn drop(&mut self) {
        let (m, values) = (&self.metrics, self.labels.values());
        forget_if_unheld(&m.live_routes, &self.labels, || {
            let [n, i, h, p, s] = values;
            for code in CODE_CLASSES {
                let _ = m.requests.remove_label_values(&[n, i, h, p, s, code]);
            }
            for why in Refusal::ALL {
                let _ = m
                    .refusals
                    .remove_label_values(&[n, i, h, p, s, why.as_str()]);
            }
            let _ = m.request_duration.remove_label_values(&values);
            let _ = m.request_bytes.remove_label_values(&values);
            let _ = m.response_bytes.remove_label_values(&values);
        });
    }
}

/// When no series holds `labels` any more, forgets them and runs `remove` (which takes
/// their series out of the registry), under the lock that registering takes, so that no
/// new holder can pick up a series being removed. Another snapshot may have registered
/// the same labels again since the dropped handle's last holder let go: those stay.
fn forget_if_unheld<L: Eq + std::hash::Hash, T>(
    live: &Mutex<HashMap<L, Weak<T>>>,
    labels: &L,
    remove: impl FnOnce(),
) {
    let Ok(mut live) = live.lock() else { return };
    if live.get(labels).is_some_and(|w| w.strong_count() == 0) {
        live.remove(labels);
        remove();
    }
}

const CODE_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The series of one backend: how its endpoints answered.
pub struct BackendSeries {
    labels: BackendLabels,
    pub upstream_duration: Histogram,
    pub connect_errors: IntCounter,
    pub timeouts: IntCounter,
    pub retries: IntCounter,
    pub new_connections: IntCounter,
    pub reused_connections: IntCounter,
    metrics: Arc<ProxyMetrics>,
}

impl Drop for BackendSeries {
    fn drop(&mut self) {
        let (m, values) = (&self.metrics, self.labels.values());
        forget_if_unheld(&m.live_backends, &self.labels, || {
            let _ = m.upstream_duration.remove_label_values(&values);
            let _ = m.upstream_connect_errors.remove_label_values(&values);
            let _ = m.upstream_timeouts.remove_label_values(&values);
            let _ = m.upstream_retries.remove_label_values(&values);
            let [n, s, p] = values;
            let _ = m
                .upstream_connections
                .remove_label_values(&[n, s, p, "true"]);
            let _ = m
                .upstream_connections
                .remove_label_values(&[n, s, p, "false"]);
        });
    }
}

pub struct ProxyMetrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    refusals: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_connect_errors: IntCounterVec,
    upstream_timeouts: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_connections: IntCounterVec,
    live_routes: Mutex<HashMap<RouteLabels, Weak<RouteSeries>>>,
    live_backends: Mutex<HashMap<BackendLabels, Weak<BackendSeries>>>,
    pub requests_in_flight: IntGauge,
    pub downstream_connections: IntGauge,
    pub downstream_connections_total: IntCounter,
    tls_handshakes: IntCounterVec,
    pub tls_client_hellos: IntCounter,
    pub snapshot_version: IntGauge,
    pub snapshot_applies: IntCounterVec,
    pub snapshot_apply_timestamp: IntGauge,
    pub snapshot_apply_duration: Histogram,
    pub access_log_dropped: IntCounter,
    pub spans_exported: IntCounter,
    pub spans_dropped: IntCounter,
    pub mirror_copies_dropped: IntCounter,
    pub streams: StreamMetrics,
}

/// TCP and UDP services, by port and protocol.
pub struct StreamMetrics {
    sessions: IntCounterVec,
    open: prometheus::IntGaugeVec,
    bytes: IntCounterVec,
    duration: HistogramVec,
    connect_errors: IntCounterVec,
    datagrams: IntCounterVec,
    dropped: IntCounterVec,
}

/// One port's series, fetched once per listener.
#[derive(Clone)]
pub struct StreamSeries {
    pub sessions: IntCounter,
    pub open: IntGauge,
    /// From clients to upstreams, and back.
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub duration: Histogram,
    pub connect_errors: IntCounter,
    pub datagrams_received: IntCounter,
    pub datagrams_sent: IntCounter,
    /// Connections or datagrams turned away (no endpoint, too many sessions, bad PROXY header).
    pub dropped: IntCounter,
}

const STREAM_LABELS: [&str; 2] = ["port", "protocol"];

impl StreamMetrics {
    fn new() -> Self {
        let with = |extra: &'static str| [&STREAM_LABELS[..], &[extra]].concat();
        StreamMetrics {
            sessions: counter_vec("portico_stream_sessions_total", "TCP connections and UDP sessions accepted on L4 ports", &STREAM_LABELS),
            open: prometheus::IntGaugeVec::new(
                Opts::new("portico_stream_sessions_open", "TCP connections and UDP sessions open on L4 ports"),
                &STREAM_LABELS,
            )
            .expect("valid metric"),
            bytes: counter_vec(
                "portico_stream_bytes_total",
                "Bytes relayed on L4 ports: received from clients, sent to clients",
                &with("direction"),
            ),
            duration: HistogramVec::new(
                HistogramOpts::new("portico_stream_session_duration_seconds", "How long L4 sessions lasted")
                    .buckets(vec![0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0]),
                &STREAM_LABELS,
            )
            .expect("valid metric"),
            connect_errors: counter_vec(
                "portico_stream_upstream_connect_errors_total",
                "Connections to L4 upstreams that could not be made",
                &STREAM_LABELS,
            ),
            datagrams: counter_vec(
                "portico_stream_datagrams_total",
                "UDP datagrams relayed: received from clients, sent to clients",
                &with("direction"),
            ),
            dropped: counter_vec(
                "portico_stream_dropped_total",
                "L4 connections or datagrams turned away: no endpoint, too many sessions, a bad PROXY header",
                &STREAM_LABELS,
            ),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.sessions.clone()),
            Box::new(self.open.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.connect_errors.clone()),
            Box::new(self.datagrams.clone()),
            Box::new(self.dropped.clone()),
        ]
    }

    pub fn series(&self, port: u16, protocol: &str) -> StreamSeries {
        let port = port.to_string();
        let labels = [port.as_str(), protocol];
        let with = |d: &'static str| [port.as_str(), protocol, d];
        StreamSeries {
            sessions: self.sessions.with_label_values(&labels),
            open: self.open.with_label_values(&labels),
            bytes_received: self.bytes.with_label_values(&with("received")),
            bytes_sent: self.bytes.with_label_values(&with("sent")),
            duration: self.duration.with_label_values(&labels),
            connect_errors: self.connect_errors.with_label_values(&labels),
            datagrams_received: self.datagrams.with_label_values(&with("received")),
            datagrams_sent: self.datagrams.with_label_values(&with("sent")),
            dropped: self.dropped.with_label_values(&labels),
        }
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric")
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let route_and_code = [&ROUTE_LABELS[..], &["code"]].concat();
        let route_and_reason = [&ROUTE_LABELS[..], &["reason"]].concat();
        let m = ProxyMetrics {
            registry: Registry::new(),
            requests: counter_vec("portico_requests_total", "Requests answered, by route and status class", &route_and_code),
            request_duration: histogram_vec(
                "portico_request_duration_seconds",
                "Time from the request's arrival to the end of its answer",
                &ROUTE_LABELS,
            ),
            request_bytes: counter_vec("portico_request_bytes_total", "Request body bytes read from clients", &ROUTE_LABELS),
            response_bytes: counter_vec("portico_response_bytes_total", "Response body bytes sent to clients", &ROUTE_LABELS),
            refusals: counter_vec(
                "portico_refusals_total",
                "Requests Portico answered itself rather than forward (auth, rate limits, bad requests), by reason",
                &route_and_reason,
            ),
            upstream_duration: histogram_vec(
                "portico_upstream_response_duration_seconds",
                "Time from choosing an endpoint to its response header",
                &BACKEND_LABELS,
            ),
            upstream_connect_errors: counter_vec(
                "portico_upstream_connect_errors_total",
                "Connections to endpoints that could not be made",
                &BACKEND_LABELS,
            ),
            upstream_timeouts: counter_vec(
                "portico_upstream_timeouts_total",
                "Endpoint attempts that timed out (connect, read or write)",
                &BACKEND_LABELS,
            ),
            upstream_retries: counter_vec(
                "portico_upstream_retries_total",
                "Requests sent again to another endpoint after a failure",
                &BACKEND_LABELS,
            ),
            upstream_connections: counter_vec(
                "portico_upstream_connections_total",
                "Upstream connections used, by whether they came from the keep-alive pool",
                &[&BACKEND_LABELS[..], &["reused"]].concat(),
            ),
            live_routes: Mutex::default(),
            live_backends: Mutex::default(),
            requests_in_flight: IntGauge::new("portico_requests_in_flight", "Requests being answered").expect("valid metric"),
            downstream_connections: IntGauge::new("portico_downstream_connections", "Client connections open").expect("valid metric"),
            downstream_connections_total: IntCounter::new("portico_downstream_connections_total", "Client connections accepted")
                .expect("valid metric"),
            tls_handshakes: counter_vec("portico_tls_handshakes_total", "TLS handshakes completed, by protocol version", &["protocol"]),
            tls_client_hellos: IntCounter::new(
                "portico_tls_client_hellos_total",
                "TLS handshakes started (ClientHellos given a certificate); those not completed failed",
            )
            .expect("valid metric"),
            snapshot_version: IntGauge::new("portico_snapshot_version", "Version of the snapshot being served").expect("valid metric"),
            snapshot_applies: counter_vec(
                "portico_snapshot_applies_total",
                "Snapshots received from the controller, by result",
                &["result"],
            ),
            snapshot_apply_timestamp: IntGauge::new(
                "portico_snapshot_last_apply_timestamp_seconds",
                "Unix time the serving snapshot was applied",
            )
            .expect("valid metric"),
            snapshot_apply_duration: Histogram::with_opts(
                HistogramOpts::new("portico_snapshot_apply_duration_seconds", "Time to decode, validate, compile and swap in a snapshot")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            access_log_dropped: IntCounter::new(
                "portico_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            )
            .expect("valid metric"),
            spans_exported: IntCounter::new("portico_trace_spans_exported_total", "Spans sent to the OTLP endpoint").expect("valid metric"),
            spans_dropped: IntCounter::new(
                "portico_trace_spans_dropped_total",
                "Spans dropped: the export queue was full or the OTLP endpoint failed",
            )
            .expect("valid metric"),
            mirror_copies_dropped: IntCounter::new(
                "portico_mirror_copies_dropped_total",
                "mirror-target copies not sent (too many in flight, a body too large) or not answered",
            )
            .expect("valid metric"),
            streams: StreamMetrics::new(),
        };
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.request_bytes.clone()),
            Box::new(m.response_bytes.clone()),
            Box::new(m.refusals.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.upstream_connect_errors.clone()),
            Box::new(m.upstream_timeouts.clone()),
            Box::new(m.upstream_retries.clone()),
            Box::new(m.upstream_connections.clone()),
            Box::new(m.requests_in_flight.clone()),
            Box::new(m.downstream_connections.clone()),
            Box::new(m.downstream_connections_total.clone()),
            Box::new(m.tls_handshakes.clone()),
            Box::new(m.tls_client_hellos.clone()),
            Box::new(m.snapshot_version.clone()),
            Box::new(m.snapshot_applies.clone()),
            Box::new(m.snapshot_apply_timestamp.clone()),
            Box::new(m.snapshot_apply_duration.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.spans_exported.clone()),
            Box::new(m.spans_dropped.clone()),
            Box::new(m.mirror_copies_dropped.clone()),
        ];
        collectors.extend(m.streams.collectors());
        for c in collectors {
            m.registry.register(c).expect("metric registered once");
        }
        m
    }

    /// The series of a route, shared by every compiled route with the same labels.
    pub fn route_series(self: &Arc<Self>, labels: RouteLabels) -> Arc<RouteSeries> {
        let mut live = self.live_routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = live.get(&labels).and_then(Weak::upgrade) {
            return series;
        }
        let values = labels.values();
        let [n, i, h, p, s] = values;
        let codes =
            CODE_CLASSES.map(|code| self.requests.with_label_values(&[n, i, h, p, s, code]));
        let series = Arc::new(RouteSeries {
            codes,
            duration: self.request_duration.with_label_values(&values),
            request_bytes: self.request_bytes.with_label_values(&values),
            response_bytes: self.response_bytes.with_label_values(&values),
            labels: labels.clone(),
            metrics: Arc::clone(self),
        });
        live.insert(labels, Arc::downgrade(&series));
        series
    }

    /// The series of a backend, by the Service port it stands for.
    pub fn backend_series(self: &Arc<Self>, service: &ServiceRef) -> Arc<BackendSeries> {
        let labels = BackendLabels::of(service);
        let mut live = self.live_backends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = live.get(&labels).and_then(Weak::upgrade) {
            return series;
        }
        let values = labels.values();
        let [n, s, p] = values;
        let series = Arc::new(BackendSeries {
            upstream_duration: self.upstream_duration.with_label_values(&values),
            connect_errors: self.upstream_connect_errors.with_label_values(&values),
            timeouts: self.upstream_timeouts.with_label_values(&values),
            retries: self.upstream_retries.with_label_values(&values),
            new_connections: self
                .upstream_connections
                .with_label_values(&[n, s, p, "false"]),
            reused_connections: self
                .upstream_connections
                .with_label_values(&[n, s, p, "true"]),
            labels: labels.clone(),
            metrics: Arc::clone(self),
        });
        live.insert(labels, Arc::downgrade(&series));
        series
    }

    /// Counts a completed TLS handshake by its protocol (`TLSv1.3`...).
    pub fn tls_handshake(&self, protocol: &str) {
        // OpenSSL names a handful of versions; anything else is one label value.
        let protocol = match protocol {
            "TLSv1.3" | "TLSv1.2" | "TLSv1.1" | "TLSv1" => protocol,
            _ => "other",
        };
        self.tls_handshakes.with_label_values(&[protocol]).inc();
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &ProxyMetrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    fn service(namespace: &str, name: &str, port: &str) -> ServiceRef {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
        }
    }

    #[test]
    fn labels_come_from_the_route_and_its_backend() {
        let api = service("shop", "api", "http");
        let l = RouteLabels::new(
            Some(&SourceRef::new("shop", "web")),
            "shop.example",
            "/api",
            Some(&api),
        );
        assert_eq!(l.values(), ["shop", "web", "shop.example", "/api", "api"]);
        assert_eq!(BackendLabels::of(&api).values(), ["shop", "api", "http"]);
        let none = RouteLabels::new(None, "", "", None);
        assert_eq!(none.values(), ["", "", "", "", ""]);
    }

    #[test]
    fn series_live_while_a_snapshot_holds_them() {
        let m = Arc::new(ProxyMetrics::new());
        let svc = service("ns", "svc", "80");
        let labels = RouteLabels::new(
            Some(&SourceRef::new("ns", "ing")),
            "a.test",
            "/",
            Some(&svc),
        );
        let first = m.route_series(labels.clone());
        first.record(200, Duration::from_millis(3), 10, 20);
        let second = m.route_series(labels.clone());
        assert!(Arc::ptr_eq(&first, &second), "same labels, same series");
        second.refused(Refusal::RateLimit);
        drop(first);
        let t = text(&m);
        assert!(
            t.contains(r#"portico_requests_total{code="2xx",host="a.test",ingress="ing",namespace="ns",path="/",service="svc"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"reason="rate_limit""#), "{t}");
        assert!(t.contains(r#"portico_response_bytes_total{host="a.test",ingress="ing",namespace="ns",path="/",service="svc"} 20"#), "{t}");
        drop(second);
        let t = text(&m);
        assert!(
            !t.contains("a.test"),
            "the last holder gone, the series are removed:\n{t}"
        );

        let b = m.backend_series(&svc);
        b.retries.inc();
        assert!(text(&m).contains(
            r#"portico_upstream_retries_total{namespace="ns",port="80",service="svc"} 1"#
        ));
        drop(b);
        assert!(!text(&m).contains("upstream_retries_total{"));
    }
}
