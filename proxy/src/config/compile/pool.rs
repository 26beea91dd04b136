//! Backend pools: one per backend of a snapshot, holding the balancer and its state,
//! the upstream settings and the pool's metrics, taken over by the next snapshot while
//! the backend is defined the same.

use super::{CompileError, CompiledSnapshot, HashMap};
use crate::telemetry::metrics::{BackendSeries, ProxyMetrics};
use crate::upstream::affinity::PoolSessions;
use crate::upstream::balancer::Balancer;
use crate::upstream::peer::UpstreamSettings;
use portico_model::{Backend, HealthCheck, RetryPolicy, ServiceRef, Template};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

/// A backend's endpoints, how to reach them, and what to do when one fails.
/// A backend's endpoints, how to reach them, and what to do when one fails.
pub struct BackendPool {
    pub name: Box<str>,
    /// The Service port the backend stands for, for metrics.
    pub service: ServiceRef,
    /// `service` as `namespace/name:port`, the scope of affinity cookies.
    session_scope: Box<str>,
    pub balancer: Balancer,
    pub upstream: UpstreamSettings,
    /// How to build a request's key, for consistent hashing.
    pub hash_key: Option<Template>,
    pub retry: RetryPolicy,
    /// Affinity cookie tags of the endpoints, built on first use.
    pub sessions: PoolSessions,
    pub health_check: Option<HealthCheck>,
    /// A round of active checks is under way.
    pub checking: AtomicBool,
    /// When the last round of active checks started.
    last_check: std::sync::Mutex<Option<std::time::Instant>>,
    /// Registered on the backend's first request.
    series: OnceLock<Arc<BackendSeries>>,
}

impl BackendPool {
    pub fn new(b: &Backend) -> Result<Self, String> {
        let upstream = UpstreamSettings::new(&b.upstream, &b.policy)?;
        let hash_key = b.policy.balance.hash_key().cloned();
        Ok(BackendPool {
            name: b.name.as_str().into(),
            service: b.service.clone(),
            session_scope: b.service.to_string().into(),
            balancer: Balancer::new(b),
            upstream,
            hash_key,
            retry: b.policy.retry.clone(),
            sessions: PoolSessions::default(),
            health_check: b.policy.health_check.clone(),
            checking: AtomicBool::new(false),
            last_check: std::sync::Mutex::new(None),
            series: OnceLock::new(),
        })
    }

    /// Claims the next round of active checks if one is due (an interval since the last
    /// started) and none is running; the caller runs it and clears `checking`.
    pub fn claim_check_round(&self) -> bool {
        let Some(check) = &self.health_check else {
            return false;
        };
        let Ok(mut last) = self.last_check.lock() else {
            return false;
        };
        let due = last.is_none_or(|at| at.elapsed().as_millis() >= u128::from(check.interval_ms));
        if !due
            || self
                .checking
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }

    /// The pool's metrics series.
    pub fn series(&self, metrics: &Arc<ProxyMetrics>) -> &BackendSeries {
        self.series
            .get_or_init(|| metrics.backend_series(&self.service))
    }

    /// What affinity needs of the pool: the Service port its cookies are scoped to (so
    /// that a policy change does not re-pin every session), its endpoints and its tags.
    pub fn affinity_parts(&self) -> (&str, &Balancer, &PoolSessions) {
        (&self.session_scope, &self.balancer, &self.sessions)
    }
}

/// One pool per backend, taken over from `previous` when the backend is defined the same.
pub(super) fn compile_pools(
    backends: &[Arc<Backend>],
    previous: Option<&CompiledSnapshot>,
) -> Result<Vec<Arc<BackendPool>>, CompileError> {
    let old: HashMap<&str, (&Arc<Backend>, &Arc<BackendPool>)> = previous
        .map(|p| {
            p.source
                .backends
                .iter()
                .zip(&p.pools)
                .map(|(b, pool)| (b.name.as_str(), (b, pool)))
                .collect()
        })
        .unwrap_or_default();
    backends
        .iter()
        .map(|b| match old.get(b.name.as_str()) {
            Some((was, pool)) if *was == b => Ok(Arc::clone(pool)),
            _ => BackendPool::new(b)
                .map(Arc::new)
                .map_err(|what| CompileError::Upstream {
                    backend: b.name.clone(),
                    what,
                }),
        })
        .collect()
}
