//! The one place the serving snapshot lives: validated, compiled, then published with a
//! single atomic swap. Requests in flight keep the snapshot they loaded.

use crate::config::compile::CompiledSnapshot;
use crate::telemetry::metrics::ProxyMetrics;
use arc_swap::ArcSwapOption;
use portico_model::{Snapshot, SnapshotDelta};
use portico_wire::SnapshotSink;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct SnapshotStore {
    current: ArcSwapOption<CompiledSnapshot>,
    metrics: Arc<ProxyMetrics>,
    /// Since when the controller link has been down, and why; `/readyz` tells it.
    link_down: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// The next snapshot is the first of a new connection: it may be older than the serving one.
    session_start: std::sync::atomic::AtomicBool,
    /// Why the last snapshot the controller sent was refused, while no later one applied.
    last_refusal: std::sync::Mutex<Option<String>>,
    /// The version of each snapshot swapped in, for what follows the serving snapshot
    /// rather than reading it per request (the L4 listeners).
    applied: tokio::sync::watch::Sender<u64>,
}

impl SnapshotStore {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Self {
        SnapshotStore {
            current: ArcSwapOption::empty(),
            metrics,
            link_down: std::sync::Mutex::new(None),
            session_start: std::sync::atomic::AtomicBool::new(false),
            last_refusal: std::sync::Mutex::new(None),
            applied: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Told the version of every snapshot swapped in from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Why the latest snapshot was refused, while no later one has applied.
    pub fn last_refusal(&self) -> Option<String> {
        self.last_refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long the controller link has been down and why, if it is.
    pub fn link_down(&self) -> Option<(std::time::Duration, String)> {
        let down = self.link_down.lock().unwrap_or_else(|p| p.into_inner());
        down.as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// The serving snapshot, `None` before the first apply.
    pub fn load(&self) -> Option<Arc<CompiledSnapshot>> {
        self.current.load_full()
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    fn refuse(&self, reason: String) -> Result<(), String> {
        self.metrics
            .snapshot_applies
            .with_label_values(&["refused"])
            .inc();
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        Err(reason)
    }
}

impl SnapshotSink for SnapshotStore {
    fn new_session(&self) {
        self.session_start
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn link_down(&self, why: Option<String>) {
        let mut down = self.link_down.lock().unwrap_or_else(|p| p.into_inner());
        match (why, down.as_mut()) {
            (None, _) => *down = None,
            (Some(why), Some((_, was))) => *was = why,
            (Some(why), None) => *down = Some((std::time::Instant::now(), why)),
        }
    }

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
            return self.refuse(format!(
                "frame says version {version} but the snapshot says {}",
                snapshot.version
            ));
        }
        self.install(snapshot, started, None)
    }

    fn apply_delta(&self, base_version: u64, version: u64, payload: Vec<u8>) -> Result<(), String> {
        let started = Instant::now();
        let delta = match SnapshotDelta::from_bytes(&payload) {
            Ok(d) => d,
            Err(e) => return self.refuse(format!("delta {version} does not decode: {e}")),
        };
        if delta.version != version {
            return self.refuse(format!(
                "frame says version {version} but the delta says {}",
                delta.version
            ));
        }
        let Some(base) = self
            .current
            .load_full()
            .filter(|c| c.version() == base_version)
        else {
            return self.refuse(format!(
                "delta {version} is against version {base_version}, which is not serving"
            ));
        };
        match base.source.with_delta(delta) {
            Ok(snapshot) => self.install(snapshot, started, Some(&base.source)),
            Err(e) => self.refuse(format!(
                "delta {version} does not fit version {base_version}: {e}"
            )),
        }
    }
}

impl SnapshotStore {
    /// Validates, compiles against the serving snapshot, and swaps. `delta_base` is the
    /// snapshot a delta was applied to, which was validated.
    fn install(
        &self,
        snapshot: Snapshot,
        started: Instant,
        delta_base: Option<&Snapshot>,
    ) -> Result<(), String> {
        let sent_as = if delta_base.is_some() {
            "delta"
        } else {
            "whole"
        };
        let version = snapshot.version;
        let current = self.last_applied();
        let first_of_session = self
            .session_start
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if version < current {
            if !first_of_session {
                return self.refuse(format!(
                    "snapshot {version} is older than the serving {current}"
                ));
            }
            tracing::warn!(version, serving = current, "the controller's first snapshot is older than the serving one; it is the controller's current state, so it applies");
        }
        let decoded = started.elapsed();
        let validated = match delta_base {
            Some(base) => snapshot.validate_from(base),
            None => snapshot.validate(),
        };
        if let Err(e) = validated {
            return self.refuse(format!("snapshot {version} is invalid: {e}"));
        }
        let validated = started.elapsed();
        let previous = self.current.load_full();
        let compiled = match CompiledSnapshot::compile(snapshot, &self.metrics, previous.as_deref())
        {
            Ok(c) => Arc::new(c),
            Err(e) => return self.refuse(format!("snapshot {version} cannot be compiled: {e}")),
        };
        self.current.store(Some(compiled.clone()));
        self.applied.send_replace(version);
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let serving = started.elapsed();
        self.metrics
            .snapshot_applies
            .with_label_values(&["applied"])
            .inc();
        self.metrics
            .snapshot_apply_duration
            .observe(serving.as_secs_f64());
        self.metrics.snapshot_version.set(version as i64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics.snapshot_apply_timestamp.set(now as i64);
        // Bookkeeping after the swap, off the path to serving the new snapshot.
        let (reused_pools, reused_hosts) =
            previous.as_deref().map_or((0, 0), |p| compiled.reused(p));
        let (pools, hosts) = (
            compiled.source.backends.len(),
            compiled.source.virtual_hosts.len(),
        );
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            version,
            sent_as,
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
            virtual_hosts: vec![Arc::new(VirtualHost::new(
                "a.com".parse().unwrap(),
                vec![Route::new(PathMatch::prefix("/"), backend)],
            ))],
            backends: vec![Arc::new(Backend {
                name: "b".into(),
                service: Default::default(),
                endpoints: vec![Endpoint {
                    address: [127, 0, 0, 1].into(),
                    port: 9,
                    ready: true,
                }],
                upstream: Default::default(),
                policy: Default::default(),
            })],
            ..Snapshot::default()
        }
    }

    #[test]
    fn refuses_bad_snapshots_and_keeps_the_last_good_one() {
        let store = SnapshotStore::new(Arc::new(ProxyMetrics::new()));
        assert!(store.load().is_none());
        store.apply(5, snapshot(5, "b").to_bytes()).unwrap();

        let err = store
            .apply(6, snapshot(6, "missing").to_bytes())
            .unwrap_err();
        assert!(err.contains("unknown backend \"missing\""), "{err}");
        assert!(store
            .apply(7, b"{not json".to_vec())
            .unwrap_err()
            .contains("does not decode"));
        assert!(store
            .apply(8, snapshot(9, "b").to_bytes())
            .unwrap_err()
            .contains("says 9"));
        assert!(store
            .apply(4, snapshot(4, "b").to_bytes())
            .unwrap_err()
            .contains("older"));
        assert!(store.last_refusal().unwrap().contains("older"));
        let mut unparsable = snapshot(10, "b");
        unparsable.certificates.push(portico_model::Certificate {
            name: "ns/c".into(),
            chain_pem: "junk".into(),
            key_pem: "junk".into(),
        });
        let err = store.apply(10, unparsable.to_bytes()).unwrap_err();
        assert!(
            err.contains("cannot be compiled") && err.contains("ns/c"),
            "{err}"
        );

        assert_eq!(store.last_applied(), 5);
        let serving = store.load().unwrap();
        let req = http::Request::get("/x").body(()).unwrap().into_parts().0;
        assert!(serving.route("a.com", &req).is_routed());
        assert!(!serving.route("b.com", &req).is_routed());
        let metrics = String::from_utf8(store.metrics().render()).unwrap();
        assert!(
            metrics.contains("portico_snapshot_applies_total{result=\"refused\"} 5"),
            "{metrics}"
        );
    }

    #[test]
    fn a_new_connection_may_go_back_in_versions_once() {
        let store = SnapshotStore::new(Arc::new(ProxyMetrics::new()));
        store.apply(500, snapshot(500, "b").to_bytes()).unwrap();
        assert!(store.apply(100, snapshot(100, "b").to_bytes()).is_err());
        // A controller restarted with its clock stepped back: its first snapshot applies,
        // and from then on versions must grow again.
        store.new_session();
        store.apply(100, snapshot(100, "b").to_bytes()).unwrap();
        assert_eq!((store.last_applied(), store.last_refusal()), (100, None));
        assert!(store.apply(99, snapshot(99, "b").to_bytes()).is_err());
        store.apply(101, snapshot(101, "b").to_bytes()).unwrap();
    }

    #[test]
    fn applies_deltas_against_the_serving_snapshot_and_refuses_those_that_do_not_fit() {
        let store = SnapshotStore::new(Arc::new(ProxyMetrics::new()));
        let mut base = snapshot(5, "b");
        base.virtual_hosts.push(Arc::new(VirtualHost::new(
            "c.com".parse().unwrap(),
            vec![Route::new(PathMatch::prefix("/c"), "b")],
        )));
        store.apply(5, base.to_bytes()).unwrap();
        let req = |path: &str| http::Request::get(path).body(()).unwrap().into_parts().0;

        // c.com moves its route from /c to /d; a.com is untouched.
        let mut next = base.clone();
        next.version = 6;
        next.virtual_hosts[1] = Arc::new(VirtualHost::new(
            "c.com".parse().unwrap(),
            vec![Route::new(PathMatch::prefix("/d"), "b")],
        ));
        let delta = next.delta_from(&base).unwrap();
        assert_eq!(delta.hosts.len(), 1);
        store.apply_delta(5, 6, delta.to_bytes()).unwrap();
        let serving = store.load().unwrap();
        assert_eq!(serving.version(), 6);
        assert!(serving.route("c.com", &req("/d")).is_routed());
        assert!(!serving.route("c.com", &req("/c")).is_routed());
        assert!(serving.route("a.com", &req("/x")).is_routed());
        assert_eq!(serving.source, next);

        // Against a version that is not serving; not decodable; removing a host that is not there;
        // giving a result that does not validate: each is refused, and version 6 keeps serving.
        let mut later = next.clone();
        later.version = 7;
        later.virtual_hosts.pop();
        let err = store
            .apply_delta(5, 7, later.delta_from(&next).unwrap().to_bytes())
            .unwrap_err();
        assert!(err.contains("against version 5"), "{err}");
        assert!(store
            .apply_delta(6, 7, b"junk".to_vec())
            .unwrap_err()
            .contains("does not decode"));
        let mut elsewhere = next.clone();
        elsewhere
            .virtual_hosts
            .push(Arc::new(VirtualHost::new("z.com".parse().unwrap(), vec![])));
        let err = store
            .apply_delta(6, 7, later.delta_from(&elsewhere).unwrap().to_bytes())
            .unwrap_err();
        assert!(
            err.contains("does not fit version 6") && err.contains("z.com"),
            "{err}"
        );
        let mut broken = next.clone();
        broken.version = 7;
        broken.virtual_hosts[0] = Arc::new(VirtualHost::new(
            "a.com".parse().unwrap(),
            vec![Route::new(PathMatch::prefix("/"), "gone")],
        ));
        let err = store
            .apply_delta(6, 7, broken.delta_from(&next).unwrap().to_bytes())
            .unwrap_err();
        assert!(err.contains("unknown backend \"gone\""), "{err}");
        assert_eq!(store.last_applied(), 6);

        store
            .apply_delta(6, 7, later.delta_from(&next).unwrap().to_bytes())
            .unwrap();
        let serving = store.load().unwrap();
        assert!(!serving.route("c.com", &req("/d")).is_routed());
        assert!(serving.route("a.com", &req("/x")).is_routed());
    }
}
