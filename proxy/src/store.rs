//! The one place the serving snapshot lives: validated, compiled, then published with a
//! single atomic swap. Requests in flight keep the snapshot they loaded.

use crate::compile::CompiledSnapshot;
use crate::metrics::ProxyMetrics;
use arc_swap::ArcSwapOption;
use portico_model::Snapshot;
use portico_wire::SnapshotSink;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct SnapshotStore {
    current: ArcSwapOption<CompiledSnapshot>,
    metrics: Arc<ProxyMetrics>,
}

impl SnapshotStore {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Self {
        SnapshotStore { current: ArcSwapOption::empty(), metrics }
    }

    /// The serving snapshot, `None` before the first apply.
    pub fn load(&self) -> Option<Arc<CompiledSnapshot>> {
        self.current.load_full()
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    fn refuse(&self, reason: String) -> Result<(), String> {
        self.metrics.snapshot_applies.with_label_values(&["refused"]).inc();
        Err(reason)
    }
}

impl SnapshotSink for SnapshotStore {
    fn last_applied(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |s| s.version())
    }

    fn apply(&self, version: u64, payload: Vec<u8>) -> Result<(), String> {
        let started = Instant::now();
        let snapshot = match Snapshot::from_bytes(&payload) {
            Ok(s) => s,
            Err(e) => return self.refuse(format!("snapshot {version} does not decode: {e}")),
        };
        if snapshot.version != version {
            return self.refuse(format!("frame says version {version} but the snapshot says {}", snapshot.version));
        }
        let current = self.last_applied();
        if version < current {
            return self.refuse(format!("snapshot {version} is older than the serving {current}"));
        }
        let decoded = started.elapsed();
        if let Err(e) = snapshot.validate() {
            return self.refuse(format!("snapshot {version} is invalid: {e}"));
        }
        let validated = started.elapsed();
        let previous = self.current.load_full();
        let compiled = match CompiledSnapshot::compile(snapshot, &self.metrics, previous.as_deref()) {
            Ok(c) => Arc::new(c),
            Err(e) => return self.refuse(format!("snapshot {version} cannot be compiled: {e}")),
        };
        self.current.store(Some(compiled.clone()));
        let serving = started.elapsed();
        self.metrics.snapshot_applies.with_label_values(&["applied"]).inc();
        self.metrics.snapshot_apply_duration.observe(serving.as_secs_f64());
        self.metrics.snapshot_version.set(version as i64);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.metrics.snapshot_apply_timestamp.set(now as i64);
        // Bookkeeping after the swap, off the path to serving the new snapshot.
        let (reused_pools, reused_hosts) = previous.as_deref().map_or((0, 0), |p| compiled.reused(p));
        let (pools, hosts) = (compiled.source.backends.len(), compiled.source.virtual_hosts.len());
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            version,
            decode_ms = ms(decoded),
            validate_ms = ms(validated - decoded),
            compile_ms = ms(serving - validated),
            serving_after_ms = ms(serving),
            pools,
            reused_pools,
            hosts,
            reused_hosts,
            "snapshot applied"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{Backend, Endpoint, PathMatch, Route, VirtualHost};

    fn snapshot(version: u64, backend: &str) -> Snapshot {
        Snapshot {
            version,
            virtual_hosts: vec![VirtualHost::new("a.com".parse().unwrap(), vec![Route::new(PathMatch::prefix("/"), backend)])],
            backends: vec![Backend {
                name: "b".into(),
                endpoints: vec![Endpoint { address: [127, 0, 0, 1].into(), port: 9, ready: true }],
                upstream: Default::default(),
                policy: Default::default(),
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn refuses_bad_snapshots_and_keeps_the_last_good_one() {
        let store = SnapshotStore::new(Arc::new(ProxyMetrics::new()));
        assert!(store.load().is_none());
        store.apply(5, snapshot(5, "b").to_bytes()).unwrap();

        let err = store.apply(6, snapshot(6, "missing").to_bytes()).unwrap_err();
        assert!(err.contains("unknown backend \"missing\""), "{err}");
        assert!(store.apply(7, b"{not json".to_vec()).unwrap_err().contains("does not decode"));
        assert!(store.apply(8, snapshot(9, "b").to_bytes()).unwrap_err().contains("says 9"));
        assert!(store.apply(4, snapshot(4, "b").to_bytes()).unwrap_err().contains("older"));
        let mut unparsable = snapshot(10, "b");
        unparsable.certificates.push(portico_model::Certificate { name: "ns/c".into(), chain_pem: "junk".into(), key_pem: "junk".into() });
        let err = store.apply(10, unparsable.to_bytes()).unwrap_err();
        assert!(err.contains("cannot be compiled") && err.contains("ns/c"), "{err}");

        assert_eq!(store.last_applied(), 5);
        let serving = store.load().unwrap();
        let req = http::Request::get("/x").body(()).unwrap().into_parts().0;
        assert!(serving.route("a.com", &req).is_routed());
        assert!(!serving.route("b.com", &req).is_routed());
        let metrics = String::from_utf8(store.metrics().render()).unwrap();
        assert!(metrics.contains("portico_snapshot_applies_total{result=\"refused\"} 5"), "{metrics}");
    }
}
