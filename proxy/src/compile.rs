//! Compiling a validated [`Snapshot`] into what the request path reads: a host table,
//! per-host path matchers, routes, balancer pools with their upstream settings, and the
//! TLS certificate table, all indexed by position.

use crate::balancer::RoundRobin;
use crate::metrics::{ProxyMetrics, StatusCounters, ANY_HOST, UNMATCHED_HOST};
use crate::router::{HostTable, PathMatcher};
use crate::tls::{CertificateError, CertificateTable};
use crate::upstream::UpstreamSettings;
use http::HeaderValue;
use portico_model::{HostMatch, Snapshot};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub struct CompiledSnapshot {
    /// What was applied, for `/config` and its version.
    pub source: Snapshot,
    hosts: HostTable,
    vhosts: Vec<CompiledVhost>,
    routes: Vec<CompiledRoute>,
    default_backend: Option<usize>,
    backends: Vec<RoundRobin>,
    upstreams: Vec<UpstreamSettings>,
    certificates: CertificateTable,
    hsts: Option<HeaderValue>,
    unmatched: StatusCounters,
    metrics: Arc<ProxyMetrics>,
}

struct CompiledVhost {
    /// Path to the index of its route in [`CompiledSnapshot::routes`].
    paths: PathMatcher,
    /// The metrics label of this host.
    label: Box<str>,
    /// Registered on the host's first request, so that applying a snapshot of 10 000
    /// hosts does not register 60 000 counters up front.
    counters: OnceLock<StatusCounters>,
}

struct CompiledRoute {
    backend: usize,
    redirect_to_https: bool,
}

/// Where routing sent a request, as indexes into the snapshot that routed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// The matched virtual host; `None` when no host matched.
    pub vhost: Option<usize>,
    /// The backend to use; `None` when nothing (not even a default backend) matched.
    pub backend: Option<usize>,
    /// The matched route sends plain-HTTP requests to HTTPS.
    pub redirect_to_https: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("backend {backend:?}: {what}")]
    Upstream { backend: String, what: String },
}

impl CompiledSnapshot {
    /// `snapshot` must already be validated: every name it uses resolves. What can be
    /// reused from `previous` (parsed certificates) is.
    pub fn compile(snapshot: Snapshot, metrics: &Arc<ProxyMetrics>, previous: Option<&CompiledSnapshot>) -> Result<Self, CompileError> {
        let certificates = CertificateTable::compile(&snapshot, previous.map(|p| (&p.source, &p.certificates)))?;
        let backends: Vec<RoundRobin> = snapshot.backends.iter().map(RoundRobin::new).collect();
        let upstreams = snapshot
            .backends
            .iter()
            .map(|b| UpstreamSettings::new(&b.upstream).map_err(|what| CompileError::Upstream { backend: b.name.clone(), what }))
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<&str, usize> = snapshot.backends.iter().enumerate().map(|(i, b)| (b.name.as_str(), i)).collect();

        let mut hosts = HostTable::default();
        let mut vhosts = Vec::with_capacity(snapshot.virtual_hosts.len());
        let mut routes = Vec::new();
        for (i, vh) in snapshot.virtual_hosts.iter().enumerate() {
            hosts.insert(&vh.host, i);
            let mut paths = PathMatcher::default();
            for route in &vh.routes {
                paths.insert(&route.path, routes.len());
                routes.push(CompiledRoute { backend: by_name[route.backend.as_str()], redirect_to_https: route.redirect_to_https });
            }
            let label = match &vh.host {
                HostMatch::Any => ANY_HOST.into(),
                h => h.to_string().into_boxed_str(),
            };
            vhosts.push(CompiledVhost { paths, label, counters: OnceLock::new() });
        }
        let default_backend = snapshot.default_backend.as_deref().map(|n| by_name[n]);
        let hsts = snapshot.tls.hsts.and_then(|h| HeaderValue::try_from(h.header_value()).ok());
        Ok(CompiledSnapshot {
            hosts,
            vhosts,
            routes,
            default_backend,
            backends,
            upstreams,
            certificates,
            hsts,
            unmatched: metrics.status_counters(UNMATCHED_HOST),
            metrics: metrics.clone(),
            source: snapshot,
        })
    }

    /// Routes by host and path; what matches nothing goes to the default backend.
    pub fn route(&self, host: &str, path: &str) -> Routed {
        let vhost = self.hosts.lookup(host);
        match vhost.and_then(|i| self.vhosts[i].paths.lookup(path)).map(|r| &self.routes[r]) {
            Some(route) => Routed { vhost, backend: Some(route.backend), redirect_to_https: route.redirect_to_https },
            None => Routed { vhost, backend: self.default_backend, redirect_to_https: false },
        }
    }

    pub fn version(&self) -> u64 {
        self.source.version
    }

    pub fn backend(&self, index: usize) -> &RoundRobin {
        &self.backends[index]
    }

    pub fn upstream(&self, index: usize) -> &UpstreamSettings {
        &self.upstreams[index]
    }

    pub fn certificates(&self) -> &CertificateTable {
        &self.certificates
    }

    /// The `Strict-Transport-Security` value for HTTPS responses, if any.
    pub fn hsts(&self) -> Option<&HeaderValue> {
        self.hsts.as_ref()
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
