//! The controller's Prometheus metrics and the small HTTP listener that serves them
//! (`--metrics-addr`): what it built, what it found wrong, who it serves, whether it leads.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use portico_translate::Diagnostic;
use portico_wire::AckedVersions;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct ControllerMetrics {
    registry: Registry,
    pub translations: IntCounter,
    pub snapshots_published: IntCounter,
    pub build_seconds: Histogram,
    pub snapshot_bytes: IntGauge,
    connected_proxies: IntGauge,
    acked_version: IntGaugeVec,
    diagnostics: IntGaugeVec,
    pub watch_restarts: IntCounterVec,
    pub leader: IntGauge,
    pub status_updates: IntCounterVec,
    pub events: IntCounterVec,
    acked: AckedVersions,
}

impl ControllerMetrics {
    pub fn new(acked: AckedVersions) -> Arc<ControllerMetrics> {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let build_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Arc::new(ControllerMetrics {
            translations: reg(
                &registry,
                IntCounter::new(
                    "portico_controller_translations_total",
                    "Translations of cluster state run",
                )
                .expect("valid"),
            ),
            snapshots_published: reg(
                &registry,
                IntCounter::new(
                    "portico_controller_snapshot_builds_total",
                    "Snapshots built and published (translation changed)",
                )
                .expect("valid"),
            ),
            build_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "portico_controller_snapshot_build_duration_seconds",
                        "Time from a settled change to a published snapshot (translate and encode)",
                    )
                    .buckets(build_buckets),
                )
                .expect("valid"),
            ),
            snapshot_bytes: reg(
                &registry,
                IntGauge::new(
                    "portico_controller_snapshot_bytes",
                    "Size of the last snapshot encoded whole (after a delta, when a proxy first needs it)",
                )
                .expect("valid"),
            ),
            connected_proxies: reg(
                &registry,
                IntGauge::new(
                    "portico_controller_connected_proxies",
                    "Proxies connected to the snapshot socket",
                )
                .expect("valid"),
            ),
            acked_version: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portico_controller_proxy_acknowledged_version",
                        "Last snapshot version each connected proxy applied",
                    ),
                    &["proxy"],
                )
                .expect("valid"),
            ),
            diagnostics: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portico_controller_diagnostics",
                        "Current configuration problems by reason",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            watch_restarts: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "portico_controller_watch_restarts_total",
                        "Watch errors after which a watcher resumed or relisted",
                    ),
                    &["kind"],
                )
                .expect("valid"),
            ),
            leader: reg(
                &registry,
                IntGauge::new(
                    "portico_controller_leader",
                    "1 while this controller holds the lease",
                )
                .expect("valid"),
            ),
            status_updates: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "portico_controller_status_updates_total",
                        "Ingress status writes",
                    ),
                    &["result"],
                )
                .expect("valid"),
            ),
            events: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "portico_controller_events_total",
                        "Kubernetes Events emitted",
                    ),
                    &["type"],
                )
                .expect("valid"),
            ),
            registry,
            acked,
        })
    }

    /// Sets the per-reason gauges to the current diagnostics; reasons that went away
    /// are dropped rather than kept at zero.
    pub fn set_diagnostics(&self, diagnostics: &[Diagnostic]) {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for d in diagnostics {
            *counts.entry(d.reason.as_str()).or_default() += 1;
        }
        self.diagnostics.reset();
        for (reason, n) in counts {
            self.diagnostics.with_label_values(&[reason]).set(n);
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let proxies = self.acked.all();
        self.connected_proxies.set(proxies.len() as i64);
        self.acked_version.reset();
        for (proxy, version) in &proxies {
            self.acked_version
                .with_label_values(&[proxy.as_str()])
                .set(*version as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory");
        out
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<ControllerMetrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding --metrics-addr {addr}: {e}"))?;
    tracing::info!(%addr, "serving metrics");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = match req.uri().path() {
                        "/metrics" => Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(metrics.render()))),
                        "/healthz" => {
                            Response::builder().body(Full::new(Bytes::from_static(b"ok\n")))
                        }
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found\n"))),
                    };
                    Ok::<_, Infallible>(response.expect("valid response"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
