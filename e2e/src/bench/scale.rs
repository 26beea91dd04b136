//! The scale run: N Ingresses of 10 paths each over 100 000 endpoints in all. It times
//! each stage of the pipeline in process (translate, encode, decode, apply), then runs the
//! real binaries on the same objects for resident memory and for the latency from one
//! changed manifest to the proxy serving the change.

use crate::echo::EchoServer;
use crate::harness::Portico;
use crate::kube_api::TestApiServer;
use crate::manifests::{ingress, ingress_class, service_with_endpoints, to_yaml};
use portico_proxy::config::store::SnapshotStore;
use portico_proxy::telemetry::metrics::ProxyMetrics;
use portico_translate::{ClusterState, KubeObject, Options, Translator};
use portico_wire::SnapshotSink;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PATHS_PER_INGRESS: usize = 10;
pub const TOTAL_ENDPOINTS: usize = 100_000;
/// The least time between two changes of the process run: more than the harness's
/// `--debounce-ms` (50), so that each is an isolated change, not part of a burst.
pub const CHANGE_SPACING: Duration = Duration::from_millis(200);
/// Changes timed in process after the first translation; their medians are reported.
pub const CHANGES_IN_PROCESS: usize = 21;

/// The manifests of `n` Ingresses, each with its own Service and EndpointSlice.
pub fn generate(n: usize) -> Vec<Value> {
    let per_service = (TOTAL_ENDPOINTS / n).max(1);
    let mut docs = Vec::with_capacity(n * 3);
    for i in 0..n {
        let svc = format!("svc-{i}");
        let endpoints: Vec<Value> = (0..per_service)
            .map(|e| {
                let k = i * per_service + e;
                json!({"addresses": [format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255)], "conditions": {"ready": true}})
            })
            .collect();
        docs.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }));
        docs.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{svc}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints,
        }));
        let mut ing = ingress(&format!("app-{i}"));
        for p in 0..PATHS_PER_INGRESS {
            ing = ing.path(
                &format!("app{i}.scale.test"),
                "Prefix",
                &format!("/p{p}"),
                &svc,
            );
        }
        docs.push(ing.build());
    }
    docs
}

fn to_objects(docs: &[Value]) -> anyhow::Result<Vec<KubeObject>> {
    docs.iter()
        .map(|d| {
            Ok(match d["kind"].as_str() {
                Some("Service") => KubeObject::Service(serde_json::from_value(d.clone())?),
                Some("EndpointSlice") => {
                    KubeObject::EndpointSlice(serde_json::from_value(d.clone())?)
                }
                Some("Ingress") => KubeObject::Ingress(serde_json::from_value(d.clone())?),
                other => anyhow::bail!("unexpected kind {other:?}"),
            })
        })
        .collect()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, millis(start.elapsed()))
}

#[derive(Debug, Serialize)]
pub struct StageTimes {
    pub ingresses: usize,
    pub routes: usize,
    pub endpoints: usize,
    pub translate_ms: f64,
    pub snapshot_bytes: usize,
    pub encode_ms: f64,
    pub decode_ms: f64,
    /// Decode, validate, compile and swap, as the proxy does on every snapshot.
    pub apply_ms: f64,
    /// After one endpoint of one Service changed (the median of `CHANGES_IN_PROCESS`): translation by the controller's
    /// long-lived translator, which reprocesses only the Ingresses that read that Service.
    pub change_translate_ms: f64,
    pub change_reprocessed: usize,
    /// The delta from the first snapshot, as the controller sends it.
    pub change_encode_ms: f64,
    /// Decode the delta, apply it to the serving snapshot, validate, compile (reusing
    /// unchanged pools and hosts) and swap.
    pub change_apply_ms: f64,
    /// The three together.
    pub endpoint_change_ms: f64,
    /// After one Ingress was re-pointed to another Service, so that its own Service's
    /// backend went (medians): translation, and the delta's apply.
    pub repoint_translate_ms: f64,
    pub repoint_apply_ms: f64,
}

/// Times each stage in this process.
pub fn stage_times(n: usize) -> anyhow::Result<StageTimes> {
    let docs = generate(n);
    let mut state: ClusterState = to_objects(&docs)?.into_iter().collect();
    let opts = Options {
        assume_class_exists: true,
        ..Options::default()
    };
    let mut translator = Translator::new(opts);
    let (translation, translate_ms) =
        timed(|| translator.translate_shared(&Arc::new(state.clone())));
    let mut snapshot = translation.snapshot;
    snapshot.version = 1;
    let first = snapshot.clone();
    let routes = snapshot.virtual_hosts.iter().map(|v| v.routes.len()).sum();
    let endpoints = snapshot.backends.iter().map(|b| b.endpoints.len()).sum();
    let (bytes, encode_ms) = timed(|| snapshot.to_bytes());
    let (decoded, decode_ms) = timed(|| portico_model::Snapshot::from_bytes(&bytes));
    decoded?;
    let store = SnapshotStore::new(Arc::new(ProxyMetrics::new()));
    let snapshot_bytes = bytes.len();
    let ((), apply_ms) = timed(|| store.apply(1, bytes).expect("valid snapshot"));

    // One endpoint of one Service changes, back and forth, each change sent as a delta
    // against the serving snapshot: everything downstream of the state runs again.
    let mut slice = (**state.endpoint_slices.values().next().expect("a slice")).clone();
    let original = slice.endpoints[0].addresses[0].clone();
    let mut changes = Changes {
        translator: &mut translator,
        store: &store,
        base: first,
    };
    let endpoint = changes.time(&mut state, |state, i| {
        slice.endpoints[0].addresses[0] = if i % 2 == 0 {
            "10.255.255.254".into()
        } else {
            original.clone()
        };
        state.insert(KubeObject::EndpointSlice(Arc::new(slice.clone())));
    })?;
    // One Ingress re-pointed to another Service and back: its own Service's backend goes
    // from the snapshot, as the process run's probe does on every change.
    let repointed = |svc: &str| -> anyhow::Result<KubeObject> {
        let mut ing = ingress("app-0");
        for p in 0..PATHS_PER_INGRESS {
            ing = ing.path("app0.scale.test", "Prefix", &format!("/p{p}"), svc);
        }
        Ok(to_objects(&[ing.build()])?.remove(0))
    };
    let (away, back) = (repointed("svc-1")?, repointed("svc-0")?);
    let repoint = changes.time(&mut state, |state, i| {
        state.insert(if i % 2 == 0 {
            away.clone()
        } else {
            back.clone()
        });
    })?;

    Ok(StageTimes {
        ingresses: n,
        routes,
        endpoints,
        translate_ms,
        snapshot_bytes,
        encode_ms,
        decode_ms,
        apply_ms,
        change_translate_ms: endpoint.translate_ms,
        change_reprocessed: endpoint.reprocessed,
        change_encode_ms: endpoint.encode_ms,
        change_apply_ms: endpoint.apply_ms,
        endpoint_change_ms: endpoint.translate_ms + endpoint.encode_ms + endpoint.apply_ms,
        repoint_translate_ms: repoint.translate_ms,
        repoint_apply_ms: repoint.apply_ms,
    })
}

/// The medians of `CHANGES_IN_PROCESS` changes of one kind (one is at the mercy of page
/// faults).
struct ChangeTimes {
    translate_ms: f64,
    reprocessed: usize,
    encode_ms: f64,
    apply_ms: f64,
}

/// Changes made to the state one after another, each translated by the long-lived
/// translator and applied to the proxy's store as the delta from the serving snapshot.
struct Changes<'a> {
    translator: &'a mut Translator,
    store: &'a SnapshotStore,
    base: portico_model::Snapshot,
}

impl Changes<'_> {
    fn time(
        &mut self,
        state: &mut ClusterState,
        mut change: impl FnMut(&mut ClusterState, usize),
    ) -> anyhow::Result<ChangeTimes> {
        let (mut translate, mut encode, mut apply) = (Vec::new(), Vec::new(), Vec::new());
        let mut reprocessed = 0;
        for i in 0..CHANGES_IN_PROCESS {
            change(state, i);
            // As the controller's sources hand states over: a new `Arc` sharing the objects.
            let shared = Arc::new(state.clone());
            let (mut changed, ms) = timed(|| self.translator.translate_shared(&shared).snapshot);
            translate.push(ms);
            reprocessed = self.translator.reprocessed();
            let version = self.base.version + 1;
            changed.version = version;
            let (bytes, ms) = timed(|| {
                changed
                    .delta_from(&self.base)
                    .map(|d| d.to_bytes())
                    .ok_or_else(|| anyhow::anyhow!("translation sorts its lists"))
            });
            encode.push(ms);
            let bytes = bytes?;
            let (applied, ms) = timed(|| self.store.apply_delta(self.base.version, version, bytes));
            applied.map_err(|e| anyhow::anyhow!("the delta is refused: {e}"))?;
            apply.push(ms);
            self.base = changed;
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Ok(ChangeTimes {
            translate_ms: median(translate),
            reprocessed,
            encode_ms: median(encode),
            apply_ms: median(apply),
        })
    }
}

/// Where the binaries' controller reads the objects from in the process run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Feed {
    /// A manifests directory; a change is a rewritten file.
    Files,
    /// The test Kubernetes API server through kube-rs watchers; a change is an update.
    KubeApi,
}

#[derive(Debug, Serialize)]
pub struct ProcessRun {
    pub feed: Feed,
    pub ingresses: usize,
    pub proxy_rss_mib: f64,
    pub controller_rss_mib: f64,
    pub changes: usize,
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub propagation_max_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the binaries on `n` Ingresses from `feed`, then flips a probe route between two
/// live backends `changes` times, timing each flip from the write until it is served.
/// The controller's and proxy's logs, which time every stage of every change, are kept
/// in `logs` (as `scale-<feed>.log`).
pub async fn process_run(
    n: usize,
    changes: usize,
    feed: Feed,
    logs: &std::path::Path,
) -> anyhow::Result<ProcessRun> {
    let a = EchoServer::start("probe-a", "127.0.0.1:0".parse()?).await?;
    let b = EchoServer::start("probe-b", "127.0.0.1:0".parse()?).await?;
    let mut probe_backends = service_with_endpoints("probe-a", &[a.addr]);
    probe_backends.extend(service_with_endpoints("probe-b", &[b.addr]));
    let probe = |target: &str| {
        ingress("probe")
            .path("probe.scale.test", "Prefix", "/", target)
            .build()
    };
    let api;
    let portico = match feed {
        Feed::Files => {
            let mut files: Vec<(String, String)> = generate(n)
                .chunks(300)
                .enumerate()
                .map(|(i, c)| (format!("bulk-{i:04}.yaml"), to_yaml(c)))
                .collect();
            files.push(("probe-backends.yaml".into(), to_yaml(&probe_backends)));
            files.push(("probe.yaml".into(), to_yaml(&[probe("probe-a")])));
            let refs: Vec<(&str, String)> =
                files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
            api = None;
            Portico::start(&refs).await
        }
        Feed::KubeApi => {
            let server = TestApiServer::start().await?;
            server.apply(&ingress_class(
                "portico",
                portico_translate::CONTROLLER_NAME,
                false,
            ));
            server.apply_all(&generate(n));
            server.apply_all(&probe_backends);
            server.apply(&probe("probe-a"));
            let portico = Portico::start_kube(&server, &[], &[]).await;
            api = Some(server);
            portico
        }
    };
    portico
        .wait_until_served_by("the probe route is served", "probe.scale.test", "probe-a")
        .await;
    let proxy_rss = super::procs::usage(portico.proxy_pid()).rss_bytes;
    let controller_rss = super::procs::usage(portico.controller_pid()).rss_bytes;

    let mut latencies = Vec::with_capacity(changes);
    let mut last_write: Option<Instant> = None;
    for i in 0..changes {
        let target = if i.is_multiple_of(2) {
            "probe-b"
        } else {
            "probe-a"
        };
        // Isolated changes: one written within the controller's debounce of the one before
        // is a burst, which waits for quiet by design (decision 0023).
        if let Some(last) = last_write {
            tokio::time::sleep_until((last + CHANGE_SPACING).into()).await;
        }
        let written = Instant::now();
        last_write = Some(written);
        match &api {
            Some(api) => {
                api.apply(&probe(target));
            }
            None => portico.write("probe.yaml", &to_yaml(&[probe(target)])),
        }
        loop {
            let got = portico
                .client
                .get("probe.scale.test", "/")
                .await?
                .answered_by();
            if got == target {
                break;
            }
            anyhow::ensure!(
                written.elapsed() < Duration::from_secs(30),
                "change {i} to {target} not served within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(millis(written.elapsed()));
    }
    let name = match feed {
        Feed::Files => "scale-files.log",
        Feed::KubeApi => "scale-kube.log",
    };
    std::fs::write(logs.join(name), portico.logs())?;
    latencies.sort_by(f64::total_cmp);
    Ok(ProcessRun {
        feed,
        ingresses: n,
        proxy_rss_mib: proxy_rss as f64 / (1 << 20) as f64,
        controller_rss_mib: controller_rss as f64 / (1 << 20) as f64,
        changes,
        propagation_p50_ms: percentile(&latencies, 0.5),
        propagation_p99_ms: percentile(&latencies, 0.99),
        propagation_max_ms: *latencies.last().unwrap_or(&0.0),
    })
}
