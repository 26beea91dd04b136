//! Compiling a validated [`Snapshot`] into what the request path reads: a host table,
//! per-host path matchers, and balancer pools, all indexed by position.

use crate::balancer::RoundRobin;
use crate::metrics::{ProxyMetrics, StatusCounters, ANY_HOST, UNMATCHED_HOST};
use crate::router::{HostTable, PathMatcher};
use portico_model::{HostMatch, Snapshot};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub struct CompiledSnapshot {
    /// What was applied, for `/config` and its version.
    pub source: Snapshot,
    hosts: HostTable,
    vhosts: Vec<CompiledVhost>,
    default_backend: Option<usize>,
    backends: Vec<RoundRobin>,
    unmatched: StatusCounters,
    metrics: Arc<ProxyMetrics>,
}

struct CompiledVhost {
    /// Path to the index of the backend its route forwards to.
    paths: PathMatcher,
    /// The metrics label of this host.
    label: Box<str>,
    /// Registered on the host's first request, so that applying a snapshot of 10 000
    /// hosts does not register 60 000 counters up front.
    counters: OnceLock<StatusCounters>,
}

/// Where routing sent a request, as indexes into the snapshot that routed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// The matched virtual host; `None` when no host matched.
    pub vhost: Option<usize>,
    /// The backend to use; `None` when nothing (not even a default backend) matched.
    pub backend: Option<usize>,
}

impl CompiledSnapshot {
    /// `snapshot` must already be validated: every backend name resolves.
    pub fn compile(snapshot: Snapshot, metrics: &Arc<ProxyMetrics>) -> Self {
        let backends: Vec<RoundRobin> = snapshot.backends.iter().map(RoundRobin::new).collect();
        let by_name: HashMap<&str, usize> = snapshot.backends.iter().enumerate().map(|(i, b)| (b.name.as_str(), i)).collect();

        let mut hosts = HostTable::default();
        let mut vhosts = Vec::with_capacity(snapshot.virtual_hosts.len());
        for (i, vh) in snapshot.virtual_hosts.iter().enumerate() {
            hosts.insert(&vh.host, i);
            let mut paths = PathMatcher::default();
            for route in &vh.routes {
                paths.insert(&route.path, by_name[route.backend.as_str()]);
            }
            let label = match &vh.host {
                HostMatch::Any => ANY_HOST.into(),
                h => h.to_string().into_boxed_str(),
            };
            vhosts.push(CompiledVhost { paths, label, counters: OnceLock::new() });
        }
        let default_backend = snapshot.default_backend.as_deref().map(|n| by_name[n]);
        CompiledSnapshot {
            hosts,
            vhosts,
            default_backend,
            backends,
            unmatched: metrics.status_counters(UNMATCHED_HOST),
            metrics: metrics.clone(),
            source: snapshot,
        }
    }

    /// Routes by host and path; what matches nothing goes to the default backend.
    pub fn route(&self, host: &str, path: &str) -> Routed {
        let vhost = self.hosts.lookup(host);
        let backend = vhost.and_then(|i| self.vhosts[i].paths.lookup(path)).or(self.default_backend);
        Routed { vhost, backend }
    }

    pub fn version(&self) -> u64 {
        self.source.version
    }

    pub fn backend(&self, index: usize) -> &RoundRobin {
        &self.backends[index]
    }

    /// The request counters of a routing result's virtual host.
    pub fn counters(&self, routed: &Routed) -> &StatusCounters {
        match routed.vhost {
            Some(i) => {
                let vh = &self.vhosts[i];
                vh.counters.get_or_init(|| self.metrics.status_counters(&vh.label))
            }
            None => &self.unmatched,
        }
    }
}
