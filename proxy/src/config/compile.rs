//! Compiling a validated [`Snapshot`] into what the request path reads: a host table,
//! per-host path matchers and routes, balancer pools with their upstream settings, and
//! the TLS certificate table.
//!
//! Compiling reuses what did not change since the previous snapshot: a backend whose
//! definition is the same keeps its pool (and the pool's state), and a virtual host whose
//! routes and backends are the same keeps its matcher and counters. An endpoint change
//! therefore rebuilds one pool and the hosts that use it, not the whole table.

use crate::listener::client_cert::ClientCertificates;
use crate::listener::tls::{CertificateError, CertificateTable};
use crate::policy::access::CompiledAccess;
use crate::policy::cors::CompiledCors;
use crate::policy::header_edits::CompiledHeaderEdits;
use crate::policy::rate_limit::RateLimiter;
use crate::routing::canary::CompiledCanary;
use crate::routing::conditions::CompiledConditions;
use crate::routing::router::{HostTable, PathMatcher};
use crate::telemetry::metrics::{
    host_label, BackendSeries, ProxyMetrics, RouteLabels, RouteSeries, UNMATCHED_HOST,
};
use crate::upstream::affinity::PoolSessions;
use crate::upstream::balancer::Balancer;
use crate::upstream::peer::UpstreamSettings;
use http::HeaderValue;
use portico_model::{
    Backend, Balance, HashKey, HealthCheck, HostMatch, PathMatch, RateLimit, RetryPolicy,
    SessionAffinity, Snapshot, VirtualHost,
};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

/// Keys are names from the snapshot being compiled; a fast seeded hash is enough.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::quality::RandomState>;

pub struct CompiledSnapshot {
    /// What was applied, for `/config` and its version.
    pub source: Snapshot,
    hosts: HostTable,
    /// In the order of `source.virtual_hosts`.
    vhosts: Vec<Arc<CompiledVhost>>,
    /// In the order of `source.backends`.
    pools: Vec<Arc<BackendPool>>,
    default_backend: Option<Arc<BackendPool>>,
    /// The pools with active health checks.
    health_checked: Vec<Arc<BackendPool>>,
    /// The rate limiters of the routes, for the next snapshot to take over.
    limiters: Vec<Arc<RateLimiter>>,
    certificates: CertificateTable,
    hsts: Option<HeaderValue>,
    /// The series of requests no virtual host matched: unrouted, and to the default backend.
    unmatched: [OnceLock<Arc<RouteSeries>>; 2],
    metrics: Arc<ProxyMetrics>,
}

/// A backend's endpoints, how to reach them, and what to do when one fails.
pub struct BackendPool {
    pub name: Box<str>,
    pub balancer: Balancer,
    pub upstream: UpstreamSettings,
    /// How to build a request's key, for consistent hashing.
    pub hash_key: Option<HashKey>,
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
        let hash_key = match &b.policy.balance {
            Balance::ConsistentHash(template) => {
                Some(HashKey::parse(template).map_err(|v| format!("hash key: unknown {v}"))?)
            }
            _ => None,
        };
        Ok(BackendPool {
            name: b.name.as_str().into(),
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
            .get_or_init(|| metrics.backend_series(&self.name))
    }

    /// What affinity needs of the pool.
    pub fn affinity_parts(&self) -> (&str, &Balancer, &PoolSessions) {
        (&self.name, &self.balancer, &self.sessions)
    }
}

struct CompiledVhost {
    /// Path to the index of its group in `groups`.
    paths: PathMatcher,
    /// The routes of one path, by index in `routes`: those with conditions first (the
    /// most specific first), then the plain one.
    groups: Vec<Box<[usize]>>,
    routes: Vec<CompiledRoute>,
    /// The series of requests for this host that no route took: unrouted, and to the
    /// default backend.
    unrouted: [OnceLock<Arc<RouteSeries>>; 2],
    /// `auth-tls-*`: what handshakes for this host ask for, and its requests need.
    client_auth: Option<Arc<ClientCertificates>>,
}

/// As in the model's `Route`, what few routes have is boxed, to keep 100 000 routes small.
pub struct CompiledRoute {
    pub pool: Arc<BackendPool>,
    redirect_to_https: bool,
    max_body_bytes: Option<u64>,
    pub affinity: Option<Box<SessionAffinity>>,
    pub canary: Option<Box<CompiledCanary>>,
    pub access: Option<Box<CompiledAccess>>,
    pub rewrite: Option<Box<portico_model::Rewrite>>,
    /// The compiled pattern of a regex route, for the captures of `rewrite.target`.
    pub path_regex: Option<regex::Regex>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub cors: Option<Box<CompiledCors>>,
    conditions: Option<Box<CompiledConditions>>,
    pub headers: Option<Box<CompiledHeaderEdits>>,
    /// `default-backend`: takes the request when `pool` has no endpoint to offer.
    pub fallback: Option<Arc<BackendPool>>,
    pub error_pages: Option<Box<CompiledErrorPages>>,
    pub preserve_trailing_slash: bool,
    /// Metrics series of the primary, canary and fallback sides, registered on the
    /// side's first request, so that applying 100 000 routes registers nothing up front.
    series: [OnceLock<Arc<RouteSeries>>; 3],
}

impl CompiledRoute {
    /// Whether every pool this route holds is the one `route` names in the new snapshot,
    /// so that the compiled route can serve it unchanged.
    fn uses_pools_of(
        &self,
        route: &portico_model::Route,
        by_name: &HashMap<&str, &Arc<BackendPool>>,
        default: Option<&Arc<BackendPool>>,
    ) -> bool {
        let same =
            |held: Option<&Arc<BackendPool>>, named: Option<&Arc<BackendPool>>| match (held, named)
            {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
        let error_pool = route
            .error_pages
            .as_deref()
            .and_then(|e| e.backend.as_deref().map(|b| by_name[b]).or(default));
        Arc::ptr_eq(&self.pool, by_name[route.backend.as_str()])
            && same(
                self.canary.as_ref().map(|c| &c.pool),
                route.canary.as_deref().map(|c| by_name[c.backend.as_str()]),
            )
            && same(
                self.fallback.as_ref(),
                route.fallback_backend.as_deref().map(|b| by_name[b]),
            )
            && same(self.error_pages.as_ref().map(|e| &e.pool), error_pool)
    }
}

/// `custom-http-errors` of a route: which upstream statuses the error backend answers
/// instead, and the headers that tell it about the original request.
pub struct CompiledErrorPages {
    pub statuses: Vec<u16>,
    pub pool: Arc<BackendPool>,
    /// `X-Namespace`, `X-Ingress-Name`, `X-Service-Name` and `X-Service-Port`.
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// Where routing sent a request, as positions in the snapshot that routed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// The matched virtual host; `None` when no host matched.
    pub vhost: Option<usize>,
    target: Target,
    /// The matched route sends plain-HTTP requests to HTTPS.
    pub redirect_to_https: bool,
    /// Which of the matched route's backends takes the request.
    pub side: Side,
}

/// The backends of one route a request can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// The route's own backend.
    #[default]
    Primary,
    /// The backend of the route's canary.
    Canary,
    /// The route's `default-backend`, as the side first chosen has no endpoint to offer.
    Fallback,
}

impl Side {
    /// The side's slot in per-side arrays (metrics series).
    fn slot(self) -> usize {
        match self {
            Side::Primary => 0,
            Side::Canary => 1,
            Side::Fallback => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Target {
    #[default]
    Nothing,
    /// A route of the matched virtual host, by position.
    Route(usize),
    DefaultBackend,
}

impl Routed {
    /// Whether a backend (a route's, or the default one) takes the request.
    pub fn is_routed(&self) -> bool {
        self.target != Target::Nothing
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("backend {backend:?}: {what}")]
    Upstream { backend: String, what: String },
    #[error("host {host:?}: route {path:?}: {what}")]
    Route {
        host: String,
        path: String,
        what: String,
    },
    #[error("host {host:?}: client certificates: {what}")]
    ClientAuth { host: String, what: String },
}

impl CompiledSnapshot {
    /// `snapshot` must already be validated: every name it uses resolves.
    pub fn compile(
        snapshot: Snapshot,
        metrics: &Arc<ProxyMetrics>,
        previous: Option<&CompiledSnapshot>,
    ) -> Result<Self, CompileError> {
        let certificates =
            CertificateTable::compile(&snapshot, previous.map(|p| (&p.source, &p.certificates)))?;
        let pools = compile_pools(&snapshot.backends, previous)?;
        let by_name: HashMap<&str, &Arc<BackendPool>> = snapshot
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .zip(&pools)
            .collect();
        // `previous` was validated: its hosts are unique.

        // `Arc<VirtualHost>`'s `==` is true at once for a host shared with the previous snapshot.
        let old_vhosts: HashMap<&HostMatch, (&Arc<VirtualHost>, &Arc<CompiledVhost>)> = previous
            .map(|p| {
                p.source
                    .virtual_hosts
                    .iter()
                    .zip(&p.vhosts)
                    .map(|(vh, c)| (&vh.host, (vh, c)))
                    .collect()
            })
            .unwrap_or_default();
        // Counts survive a new snapshot while the Ingress and its limits stay the same.
        let mut limiters: Limiters = previous
            .map(|p| {
                p.limiters
                    .iter()
                    .map(|l| (l.key.clone(), Arc::clone(l)))
                    .collect()
            })
            .unwrap_or_default();
        let default_backend = snapshot
            .default_backend
            .as_deref()
            .map(|n| Arc::clone(by_name[n]));
        let mut hosts = HostTable::default();
        let mut vhosts = Vec::with_capacity(snapshot.virtual_hosts.len());
        for (i, vh) in snapshot.virtual_hosts.iter().enumerate() {
            hosts.insert(&vh.host, i);
            let reusable = old_vhosts.get(&vh.host).filter(|(old, compiled)| {
                *old == vh
                    && compiled
                        .routes
                        .iter()
                        .zip(&vh.routes)
                        .all(|(c, r)| c.uses_pools_of(r, &by_name, default_backend.as_ref()))
            });
            vhosts.push(match reusable {
                Some((_, compiled)) => Arc::clone(compiled),
                None => Arc::new(compile_vhost(
                    vh,
                    &by_name,
                    default_backend.as_ref(),
                    &mut limiters,
                )?),
            });
        }
        let hsts = snapshot
            .tls
            .hsts
            .and_then(|h| HeaderValue::try_from(h.header_value()).ok());
        let health_checked = pools
            .iter()
            .filter(|p| p.health_check.is_some())
            .cloned()
            .collect();
        let mut limiters: Vec<Arc<RateLimiter>> = vhosts
            .iter()
            .flat_map(|v| &v.routes)
            .filter_map(|r| r.rate_limit.clone())
            .collect();
        limiters.sort_by_key(|l| Arc::as_ptr(l) as usize);
        limiters.dedup_by(|a, b| Arc::ptr_eq(a, b));
        Ok(CompiledSnapshot {
            hosts,
            vhosts,
            pools,
            default_backend,
            health_checked,
            limiters,
            certificates,
            hsts,
            unmatched: Default::default(),
            metrics: metrics.clone(),
            source: snapshot,
        })
    }

    /// Routes by host, path and the route's conditions; what matches nothing goes to the
    /// default backend.
    pub fn route(&self, host: &str, req: &http::request::Parts) -> Routed {
        let vhost = self.hosts.lookup(host);
        let matched = vhost.and_then(|i| {
            let vh = &self.vhosts[i];
            let mut found = None;
            vh.paths.lookup_by(req.uri.path(), |group| {
                found = vh.groups[group].iter().copied().find(|r| {
                    vh.routes[*r]
                        .conditions
                        .as_ref()
                        .is_none_or(|c| c.admit(req))
                });
                found.is_some()
            });
            found.map(|r| (r, vh.routes[r].redirect_to_https))
        });
        let routed = Routed {
            vhost,
            ..Routed::default()
        };
        match matched {
            Some((r, redirect_to_https)) => Routed {
                target: Target::Route(r),
                redirect_to_https,
                ..routed
            },
            None if self.default_backend.is_some() => Routed {
                target: Target::DefaultBackend,
                ..routed
            },
            None => routed,
        }
    }

    /// The client certificates of the host a routing result matched.
    pub fn client_auth(&self, routed: &Routed) -> Option<&Arc<ClientCertificates>> {
        self.vhosts[routed.vhost?].client_auth.as_ref()
    }

    /// The client certificates a handshake with this SNI name asks for.
    pub fn client_auth_for_sni(&self, sni: &str) -> Option<&Arc<ClientCertificates>> {
        self.vhosts[self.hosts.lookup(sni)?].client_auth.as_ref()
    }

    /// The snapshot's default backend, if any.
    pub fn default_backend(&self) -> Option<&Arc<BackendPool>> {
        self.default_backend.as_ref()
    }

    /// The matched route, when a route (not the default backend) took the request.
    pub fn matched_route(&self, routed: &Routed) -> Option<&CompiledRoute> {
        match routed.target {
            Target::Route(r) => routed.vhost.map(|v| &self.vhosts[v].routes[r]),
            _ => None,
        }
    }

    /// The cookie affinity of the side the request goes to. The fallback has none: it
    /// only takes requests while the side chosen first has no endpoint.
    pub fn affinity(&self, routed: &Routed) -> Option<&SessionAffinity> {
        let route = self.matched_route(routed)?;
        match (routed.side, &route.canary) {
            (Side::Canary, Some(canary)) => canary.affinity.as_ref(),
            (Side::Fallback, _) => None,
            _ => route.affinity.as_deref(),
        }
    }

    /// The pools whose endpoints are actively health checked.
    pub fn health_checked(&self) -> &[Arc<BackendPool>] {
        &self.health_checked
    }

    /// The largest request body the matched route takes (`None`: no limit).
    pub fn max_body_bytes(&self, routed: &Routed) -> Option<u64> {
        match routed.target {
            Target::Route(r) => routed
                .vhost
                .and_then(|v| self.vhosts[v].routes[r].max_body_bytes),
            _ => None,
        }
    }

    /// The backend a routing result sends the request to.
    pub fn pool(&self, routed: &Routed) -> Option<&BackendPool> {
        match routed.target {
            Target::Nothing => None,
            Target::Route(r) => routed.vhost.map(|v| {
                let route = &self.vhosts[v].routes[r];
                match (routed.side, &route.canary, &route.fallback) {
                    (Side::Fallback, _, Some(fallback)) => &**fallback,
                    (Side::Canary, Some(canary), _) => &*canary.pool,
                    _ => &*route.pool,
                }
            }),
            Target::DefaultBackend => self.default_backend.as_deref(),
        }
    }

    pub fn version(&self) -> u64 {
        self.source.version
    }

    /// The pools, in the order of `source.backends`.
    pub fn pools(&self) -> &[Arc<BackendPool>] {
        &self.pools
    }

    pub fn certificates(&self) -> &CertificateTable {
        &self.certificates
    }

    /// The `Strict-Transport-Security` value for HTTPS responses, if any.
    pub fn hsts(&self) -> Option<&HeaderValue> {
        self.hsts.as_ref()
    }

    /// The metrics series a routing result's requests count in. Its labels are read from
    /// `source`, whose routes a compiled host holds in the same order.
    pub fn series(&self, routed: &Routed) -> &RouteSeries {
        let declared = routed.vhost.map(|v| &self.source.virtual_hosts[v]);
        let pool = self.pool(routed);
        let new = |source: &str, path: &str| {
            let host =
                declared.map_or_else(|| UNMATCHED_HOST.to_string(), |vh| host_label(&vh.host));
            self.metrics.route_series(RouteLabels::new(
                source,
                &host,
                path,
                pool.map(|p| &*p.name),
            ))
        };
        let compiled = routed.vhost.map(|v| &*self.vhosts[v]);
        match (routed.target, compiled, declared) {
            (Target::Route(r), Some(vh), Some(declared)) => {
                let route = &declared.routes[r];
                vh.routes[r].series[routed.side.slot()]
                    .get_or_init(|| new(&route.source, route.path.path()))
            }
            (target, vh, _) => {
                let slots = vh.map_or(&self.unmatched, |v| &v.unrouted);
                slots[usize::from(target == Target::DefaultBackend)].get_or_init(|| new("", ""))
            }
        }
    }

    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
    }

    /// How many pools and virtual hosts this snapshot took over from the previous one.
    pub fn reused(&self, previous: &CompiledSnapshot) -> (usize, usize) {
        let old_pools: HashSet<*const BackendPool> =
            previous.pools.iter().map(Arc::as_ptr).collect();
        let old_vhosts: HashSet<*const CompiledVhost> =
            previous.vhosts.iter().map(Arc::as_ptr).collect();
        let pools = self
            .pools
            .iter()
            .filter(|p| old_pools.contains(&Arc::as_ptr(p)))
            .count();
        let vhosts = self
            .vhosts
            .iter()
            .filter(|v| old_vhosts.contains(&Arc::as_ptr(v)))
            .count();
        (pools, vhosts)
    }
}

/// One pool per backend, taken over from `previous` when the backend is defined the same.
fn compile_pools(
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

type Limiters = HashMap<(Box<str>, RateLimit), Arc<RateLimiter>>;

fn compile_vhost(
    vh: &VirtualHost,
    by_name: &HashMap<&str, &Arc<BackendPool>>,
    default_backend: Option<&Arc<BackendPool>>,
    limiters: &mut Limiters,
) -> Result<CompiledVhost, CompileError> {
    let mut paths = PathMatcher::default();
    let mut routes = Vec::with_capacity(vh.routes.len());
    let mut group_of: HashMap<&PathMatch, usize> = HashMap::default();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for route in &vh.routes {
        let failed = |what: String| CompileError::Route {
            host: vh.host.to_string(),
            path: route.path.path().to_string(),
            what,
        };
        // Compiled once per path, for the matcher and for the captures of `rewrite-target`.
        let path_regex = match &route.path {
            PathMatch::Regex(p) => Some(
                portico_model::pattern::path_regex(p)
                    .map_err(|e| failed(format!("path pattern: {e}")))?,
            ),
            _ => None,
        };
        let group = *group_of.entry(&route.path).or_insert_with(|| {
            paths.insert(&route.path, path_regex.as_ref(), groups.len());
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(routes.len());
        let canary = route
            .canary
            .as_deref()
            .map(|c| CompiledCanary::compile(c, Arc::clone(by_name[c.backend.as_str()])))
            .transpose();
        let canary = canary.map_err(failed)?;
        let access = route
            .access
            .as_deref()
            .map(CompiledAccess::compile)
            .transpose()
            .map_err(failed)?;
        let cors = route
            .cors
            .as_deref()
            .map(CompiledCors::compile)
            .transpose()
            .map_err(failed)?;
        let rate_limit = route.rate_limit.as_deref().map(|limit| {
            let key = (Box::from(route.source.as_str()), limit.clone());
            Arc::clone(
                limiters
                    .entry(key)
                    .or_insert_with(|| Arc::new(RateLimiter::new(&route.source, limit))),
            )
        });
        let conditions = route
            .conditions
            .as_deref()
            .map(CompiledConditions::compile)
            .transpose()
            .map_err(failed)?;
        let headers = route
            .headers
            .as_deref()
            .map(CompiledHeaderEdits::compile)
            .transpose()
            .map_err(failed)?;
        let fallback = route
            .fallback_backend
            .as_deref()
            .map(|b| Arc::clone(by_name[b]));
        let error_pages = route.error_pages.as_deref().and_then(|e| {
            let pool = e
                .backend
                .as_deref()
                .map(|b| by_name[b])
                .or(default_backend)?;
            let value =
                |v: &str| HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""));
            Some(CompiledErrorPages {
                statuses: e.statuses.clone(),
                pool: Arc::clone(pool),
                headers: vec![
                    ("x-namespace", value(&e.namespace)),
                    ("x-ingress-name", value(&e.ingress)),
                    ("x-service-name", value(&e.service)),
                    ("x-service-port", value(&e.service_port)),
                ],
            })
        });
        routes.push(CompiledRoute {
            pool: Arc::clone(by_name[route.backend.as_str()]),
            redirect_to_https: route.redirect_to_https,
            max_body_bytes: route.max_body_bytes,
            affinity: route.affinity.clone(),
            canary: canary.map(Box::new),
            access: access.map(Box::new),
            rewrite: route.rewrite.clone(),
            path_regex,
            rate_limit,
            cors: cors.map(Box::new),
            conditions: conditions.map(Box::new),
            headers: headers.map(Box::new),
            fallback,
            error_pages: error_pages.map(Box::new),
            preserve_trailing_slash: route.preserve_trailing_slash,
            series: Default::default(),
        });
    }
    // Most conditions first; the plain route (weight 0) last. Stable: among equals, snapshot order.
    let weight = |r: &usize| {
        std::cmp::Reverse(
            vh.routes[*r]
                .conditions
                .as_ref()
                .map_or(0, |c| c.weight() + 1),
        )
    };
    let groups = groups
        .into_iter()
        .map(|mut g| {
            g.sort_by_key(weight);
            g.into_boxed_slice()
        })
        .collect();
    let client_auth = match &vh.client_auth {
        None => None,
        Some(c) => Some(Arc::new(ClientCertificates::compile(c).map_err(
            |what| CompileError::ClientAuth {
                host: vh.host.to_string(),
                what,
            },
        )?)),
    };
    Ok(CompiledVhost {
        paths,
        groups,
        routes,
        unrouted: Default::default(),
        client_auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{Endpoint, RequestConditions, Route, ValueCondition, ValueRule};

    /// As the model's `Route`: 100 000 compiled routes must not pay for policies they lack.
    #[test]
    fn a_compiled_route_without_policies_stays_small() {
        assert!(
            std::mem::size_of::<CompiledRoute>() <= 256,
            "CompiledRoute is {} bytes",
            std::mem::size_of::<CompiledRoute>()
        );
    }

    fn get(path: &str) -> http::request::Parts {
        http::Request::get(path).body(()).unwrap().into_parts().0
    }

    fn snapshot(version: u64, hosts: usize, endpoint_of_b0: u8) -> Snapshot {
        let mut s = Snapshot {
            version,
            ..Snapshot::default()
        };
        for i in 0..hosts {
            let name = format!("b{i}");
            let last = if i == 0 { endpoint_of_b0 } else { 1 };
            s.backends.push(Arc::new(Backend {
                name: name.clone(),
                endpoints: vec![Endpoint {
                    address: [127, 0, i as u8, last].into(),
                    port: 80,
                    ready: true,
                }],
                upstream: Default::default(),
                policy: Default::default(),
            }));
            let route = Route::new(PathMatch::prefix("/"), name);
            s.virtual_hosts.push(Arc::new(VirtualHost::new(
                format!("h{i}.test").parse().unwrap(),
                vec![route],
            )));
        }
        s
    }

    #[test]
    fn an_endpoint_change_rebuilds_only_its_pool_and_hosts() {
        let metrics = Arc::new(ProxyMetrics::new());
        let first = CompiledSnapshot::compile(snapshot(1, 10, 1), &metrics, None).unwrap();
        let second = CompiledSnapshot::compile(snapshot(2, 10, 2), &metrics, Some(&first)).unwrap();
        assert_eq!(
            second.reused(&first),
            (9, 9),
            "one backend changed: its pool and its one host are new"
        );
        let routed = second.route("h0.test", &get("/x"));
        let addr = |s: &CompiledSnapshot, r: &Routed| {
            let b = &s.pool(r).unwrap().balancer;
            b.endpoint(b.pick(b"", &[]).unwrap()).addr.ip().to_string()
        };
        assert_eq!(
            addr(&second, &routed),
            "127.0.0.2",
            "the new endpoint serves"
        );
        let same = second.route("h5.test", &get("/"));
        assert_eq!(addr(&second, &same), "127.0.5.1");

        // A host added in front shifts every position; what is unchanged is still reused.
        let mut shifted = snapshot(3, 10, 2);
        shifted.virtual_hosts.insert(
            0,
            Arc::new(VirtualHost::new("a-first.test".parse().unwrap(), vec![])),
        );
        let third = CompiledSnapshot::compile(shifted, &metrics, Some(&second)).unwrap();
        assert_eq!(third.reused(&second), (10, 10));
        let routed = third.route("h3.test", &get("/"));
        assert_eq!(addr(&third, &routed), "127.0.3.1");
    }

    #[test]
    fn conditions_pick_among_routes_of_a_path_and_fall_through() {
        let mut s = snapshot(1, 4, 1);
        let when = |headers: Vec<ValueCondition>, methods: Vec<&str>| {
            Some(RequestConditions {
                headers,
                methods: methods.into_iter().map(String::from).collect(),
                query: vec![],
            })
        };
        let beta = ValueCondition {
            name: "x-env".into(),
            rule: ValueRule::Equals("beta".into()),
        };
        let mut routes = vec![
            Route::new(PathMatch::prefix("/"), "b0"),
            Route::new(PathMatch::prefix("/api"), "b1"),
        ];
        routes.push(Route {
            conditions: when(vec![beta.clone()], vec![]).map(Box::new),
            ..Route::new(PathMatch::prefix("/api"), "b2")
        });
        // More conditions: tried first, though it comes later.
        routes.push(Route {
            conditions: when(vec![beta], vec!["POST"]).map(Box::new),
            ..Route::new(PathMatch::prefix("/api"), "b3")
        });
        routes.push(Route {
            conditions: when(vec![], vec!["DELETE"]).map(Box::new),
            ..Route::new(PathMatch::prefix("/admin"), "b3")
        });
        s.virtual_hosts = vec![Arc::new(VirtualHost::new(
            "h.test".parse().unwrap(),
            routes,
        ))];
        s.validate().unwrap();
        let metrics = Arc::new(ProxyMetrics::new());
        let compiled = CompiledSnapshot::compile(s, &metrics, None).unwrap();
        let backend = |method: &str, path: &str, env: Option<&str>| {
            let mut b = http::Request::builder().method(method).uri(path);
            if let Some(env) = env {
                b = b.header("x-env", env);
            }
            let req = b.body(()).unwrap().into_parts().0;
            compiled
                .pool(&compiled.route("h.test", &req))
                .map(|p| p.name.to_string())
        };
        assert_eq!(
            backend("GET", "/api/x", None).as_deref(),
            Some("b1"),
            "no header: the plain route"
        );
        assert_eq!(
            backend("GET", "/api/x", Some("beta")).as_deref(),
            Some("b2")
        );
        assert_eq!(
            backend("POST", "/api/x", Some("beta")).as_deref(),
            Some("b3"),
            "the more specific route"
        );
        assert_eq!(backend("DELETE", "/admin/x", None).as_deref(), Some("b3"));
        assert_eq!(
            backend("GET", "/admin/x", None).as_deref(),
            Some("b0"),
            "no route of /admin admits: the shorter path"
        );
    }
}
