//! Compiling a validated [`Snapshot`] into what the request path reads: a host table,
//! per-host path matchers and routes, balancer pools with their upstream settings, and
//! the TLS certificate table.
//!
//! Compiling reuses what did not change since the previous snapshot: a backend whose
//! definition is the same keeps its pool (and the pool's state), and a virtual host whose
//! routes and backends are the same keeps its matcher and counters. An endpoint change
//! therefore rebuilds one pool and the hosts that use it, not the whole table.

mod pool;
mod route;

pub use pool::BackendPool;
pub use route::{CompiledErrorPages, CompiledRoute, OriginHeaders};

use pool::compile_pools;
use route::{compile_vhost, CompiledVhost, Limiters};

use crate::listener::client_cert::ClientCertificates;
use crate::listener::tls::{CertificateError, CertificateTable};
use crate::policy::blocklist::CompiledBlocklist;
use crate::policy::rate_limit::RateLimiter;
use crate::routing::router::HostTable;
use crate::telemetry::metrics::{
    host_label, ProxyMetrics, RouteLabels, RouteSeries, UNMATCHED_HOST,
};
use http::HeaderValue;
use portico_model::{HostMatch, SessionAffinity, Snapshot, SourceRef, VirtualHost};
use std::sync::{Arc, OnceLock};

/// Keys are names from the snapshot being compiled; a fast seeded hash is enough.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::quality::RandomState>;

pub struct CompiledSnapshot {
    /// What was applied, for `/config` and its version.
    pub source: Snapshot,
    /// Shared with the previous snapshot when the host list is the same.
    hosts: Arc<HostTable>,
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
    /// `ssl-passthrough` hosts, and each one's name and pool, by index.
    passthrough: (HostTable, Vec<PassthroughTarget>),
    /// The pool of each of `source.streams.services`, in their order.
    stream_pools: Vec<Option<Arc<BackendPool>>>,
    /// `None` when nothing is blocked.
    blocklist: Option<CompiledBlocklist>,
    /// The series of requests no virtual host matched: unrouted, and to the default backend.
    unmatched: [OnceLock<Arc<RouteSeries>>; 2],
    metrics: Arc<ProxyMetrics>,
}

/// The previous snapshot's hosts, for compiling the next: when the host list is the same
/// (as after most changes), its host table is reused and each host's previous version is
/// found at the same position; otherwise they are found by name.
enum PreviousHosts<'p> {
    None,
    Aligned(&'p CompiledSnapshot),
    ByName(HashMap<&'p HostMatch, (&'p Arc<VirtualHost>, &'p Arc<CompiledVhost>)>),
}

impl<'p> PreviousHosts<'p> {
    /// The host table for `snapshot`, and where its hosts' previous versions are.
    fn of(snapshot: &Snapshot, previous: Option<&'p CompiledSnapshot>) -> (Arc<HostTable>, Self) {
        let Some(p) = previous else {
            return (Arc::new(HostTable::of(&snapshot.virtual_hosts)), Self::None);
        };
        let (old, new) = (&p.source.virtual_hosts, &snapshot.virtual_hosts);
        let aligned = old.len() == new.len()
            && old
                .iter()
                .zip(new)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.host == b.host);
        if aligned {
            return (Arc::clone(&p.hosts), Self::Aligned(p));
        }
        // `previous` was validated: its hosts are unique.
        let by_name = old
            .iter()
            .zip(&p.vhosts)
            .map(|(vh, c)| (&vh.host, (vh, c)))
            .collect();
        (Arc::new(HostTable::of(new)), Self::ByName(by_name))
    }

    /// The previous version of the host at `i` in the new snapshot, named `host`.
    fn get(
        &self,
        i: usize,
        host: &HostMatch,
    ) -> Option<(&'p Arc<VirtualHost>, &'p Arc<CompiledVhost>)> {
        match self {
            Self::None => None,
            Self::Aligned(p) => Some((&p.source.virtual_hosts[i], &p.vhosts[i])),
            Self::ByName(by_name) => by_name.get(host).copied(),
        }
    }
}

/// A passthrough host's name, and the pool of its `/` path's backend.
pub type PassthroughTarget = (String, Option<Arc<BackendPool>>);

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
    /// A share of the route's weighted backends (Gateway API), by index.
    Share(u16),
}

impl Side {
    /// The side's slot in per-side arrays (metrics series); shares have their own.
    fn slot(self) -> usize {
        match self {
            Side::Primary | Side::Share(_) => 0,
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
    #[error("global block list: {0}")]
    Blocklist(#[from] regex::Error),
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
        let default_backend = snapshot
            .default_backend
            .as_deref()
            .map(|n| Arc::clone(by_name[n]));
        // Counts survive a new snapshot while the Ingress and its limits stay the same.
        let mut limiters: Limiters = previous
            .map(|p| {
                p.limiters
                    .iter()
                    .map(|l| (l.key.clone(), Arc::clone(l)))
                    .collect()
            })
            .unwrap_or_default();
        let (hosts, was) = PreviousHosts::of(&snapshot, previous);
        let mut vhosts = Vec::with_capacity(snapshot.virtual_hosts.len());
        for (i, vh) in snapshot.virtual_hosts.iter().enumerate() {
            // `Arc<VirtualHost>`'s `==` is true at once for a host shared with the previous snapshot.
            let reusable = was.get(i, &vh.host).filter(|(old, compiled)| {
                *old == vh && compiled.holds_pools_of(&by_name, default_backend.as_ref())
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
        let blocklist = CompiledBlocklist::new(&snapshot.global.block)?;
        let pool_of = |name: &str| by_name.get(name).map(|p| Arc::clone(p));
        let mut passthrough = (HostTable::default(), Vec::new());
        for (i, p) in snapshot.streams.passthrough.iter().enumerate() {
            passthrough.0.insert(&p.host, i);
            passthrough
                .1
                .push((p.host.to_string(), pool_of(&p.backend)));
        }
        let stream_pools = snapshot
            .streams
            .services
            .iter()
            .map(|s| pool_of(&s.backend))
            .collect();
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
            passthrough,
            stream_pools,
            blocklist,
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

    /// The TLS 1.2 ciphers a handshake with this SNI name offers (the host's `ssl-ciphers`,
    /// else the ConfigMap's); `None` keeps the listener's own list.
    pub fn ciphers_for_sni(&self, sni: Option<&str>) -> Option<&str> {
        sni.and_then(|s| self.hosts.lookup(s))
            .and_then(|i| self.source.virtual_hosts[i].ciphers.as_deref())
            .or(self.source.tls.ciphers.as_deref())
    }

    /// The TLS versions a handshake may negotiate.
    pub fn tls_versions(&self) -> portico_model::TlsVersions {
        self.source.tls.versions
    }

    /// Whether any host's TLS is passed through, so that ClientHellos are worth reading.
    pub fn has_passthrough(&self) -> bool {
        !self.passthrough.1.is_empty()
    }

    /// The passthrough host an SNI name selects, and its backend's pool.
    pub fn passthrough_for_sni(&self, sni: &str) -> Option<&PassthroughTarget> {
        self.passthrough.1.get(self.passthrough.0.lookup(sni)?)
    }

    /// The TCP and UDP services, each with its backend's pool.
    pub fn stream_services(
        &self,
    ) -> impl Iterator<Item = (&portico_model::StreamService, Option<&Arc<BackendPool>>)> {
        self.source
            .streams
            .services
            .iter()
            .zip(&self.stream_pools)
            .map(|(s, p)| (s, p.as_ref()))
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
                    (Side::Share(i), _, _) => route
                        .split
                        .as_ref()
                        .and_then(|s| s.share(i))
                        .map_or(&*route.pool, |s| &*s.pool),
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

    /// The clients refused before routing, if any.
    pub fn blocklist(&self) -> Option<&CompiledBlocklist> {
        self.blocklist.as_ref()
    }

    /// The status of HTTP→HTTPS redirects (`http-redirect-code`).
    pub fn https_redirect_code(&self) -> u16 {
        self.source.global.https_redirect_code
    }

    /// Whether a request without a usable `X-Request-ID` is given one.
    pub fn generates_request_ids(&self) -> bool {
        self.source.global.generate_request_id
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
        let new = |source: Option<&SourceRef>, path: &str| {
            let host =
                declared.map_or_else(|| UNMATCHED_HOST.to_string(), |vh| host_label(&vh.host));
            self.metrics.route_series(RouteLabels::new(
                source,
                &host,
                path,
                pool.map(|p| &p.service),
            ))
        };
        let compiled = routed.vhost.map(|v| &*self.vhosts[v]);
        match (routed.target, compiled, declared) {
            (Target::Route(r), Some(vh), Some(declared)) => {
                let route = &declared.routes[r];
                let compiled = &vh.routes[r];
                let slot = match (routed.side, compiled.split.as_ref()) {
                    (Side::Share(i), Some(split)) => split.share(i).map(|s| &s.series),
                    _ => None,
                };
                slot.unwrap_or(&compiled.series[routed.side.slot()])
                    .get_or_init(|| new(Some(&route.source), route.path.path()))
            }
            (target, vh, _) => {
                let slots = vh.map_or(&self.unmatched, |v| &v.unrouted);
                slots[usize::from(target == Target::DefaultBackend)].get_or_init(|| new(None, ""))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::BackendLabels;
    use portico_model::{
        Backend, Balance, Endpoint, PathMatch, RequestConditions, Route, ServiceRef, TrafficPolicy,
        ValueCondition, ValueRule,
    };

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
                service: Default::default(),
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
    fn pools_of_one_service_port_share_their_cookie_scope_whatever_their_policy() {
        let backend = |name: &str, balance: Balance| Backend {
            name: name.into(),
            service: ServiceRef {
                namespace: "ns".into(),
                name: "web".into(),
                port: "80".into(),
            },
            endpoints: Vec::new(),
            upstream: Default::default(),
            policy: TrafficPolicy {
                balance,
                ..TrafficPolicy::default()
            },
        };
        let plain = BackendPool::new(&backend("ns/web:80", Balance::RoundRobin)).unwrap();
        let ewma = BackendPool::new(&backend("ns/web:80|ewma-99", Balance::Ewma)).unwrap();
        assert_eq!(plain.affinity_parts().0, "ns/web:80");
        assert_eq!(ewma.affinity_parts().0, plain.affinity_parts().0);
        assert_eq!(
            BackendLabels::of(&ewma.service),
            BackendLabels::of(&plain.service)
        );
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
    fn a_host_left_as_it_was_takes_up_the_new_pools_it_names_only_indirectly() {
        // h0's route names b1 as its fallback and has error pages from the default
        // backend; the host itself is the same `Arc` in both snapshots.
        let mut first = snapshot(1, 3, 1);
        first.default_backend = Some("b2".into());
        let host = Arc::make_mut(&mut first.virtual_hosts[0]);
        host.routes[0].fallback_backend = Some("b1".into());
        host.routes[0].error_pages = Some(Box::new(portico_model::ErrorPages {
            statuses: vec![503],
            backend: None,
            namespace: "ns".into(),
            ingress: "i".into(),
            service: "s".into(),
            service_port: "80".into(),
        }));
        first.validate().unwrap();
        let metrics = Arc::new(ProxyMetrics::new());
        // First the default backend becomes b0; then b1's endpoint moves.
        let mut second = first.clone();
        second.version = 2;
        second.default_backend = Some("b0".into());
        second.validate_from(&first).unwrap();
        let mut third = second.clone();
        third.version = 3;
        Arc::make_mut(&mut third.backends[1]).endpoints[0].address = [127, 9, 9, 9].into();
        third.validate_from(&second).unwrap();
        let first = CompiledSnapshot::compile(first, &metrics, None).unwrap();
        let second = CompiledSnapshot::compile(second, &metrics, Some(&first)).unwrap();
        let third = CompiledSnapshot::compile(third, &metrics, Some(&second)).unwrap();
        let route = |s: &CompiledSnapshot| {
            let r = &s.vhosts[0].routes[0];
            let fallback = r.fallback.as_ref().unwrap().balancer.endpoint(0).addr;
            let errors = r.error_pages.as_ref().unwrap().pool.name.to_string();
            (fallback.ip().to_string(), errors)
        };
        assert_eq!(route(&first), ("127.0.1.1".into(), "b2".into()));
        assert_eq!(route(&second), ("127.0.1.1".into(), "b0".into()));
        assert_eq!(route(&third), ("127.9.9.9".into(), "b0".into()));
        // The hosts whose pools did not change are served as compiled.
        assert!(Arc::ptr_eq(&first.vhosts[2], &third.vhosts[2]));
        assert!(Arc::ptr_eq(&first.hosts, &third.hosts));
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A snapshot using most of what a route can hold, encoded as the controller sends it.
        fn encoded() -> Vec<u8> {
            let mut s = snapshot(1, 3, 1);
            let host = Arc::make_mut(&mut s.virtual_hosts[0]);
            let mut regex = Route::new(PathMatch::Regex("/api/(v[0-9]+)/.*".into()), "b1");
            regex.conditions = Some(Box::new(RequestConditions {
                methods: vec!["GET".into()],
                headers: vec![ValueCondition {
                    name: "x-env".into(),
                    rule: ValueRule::Matches("^beta$".into()),
                }],
                query: vec![],
            }));
            host.routes.push(regex);
            host.routes
                .push(Route::new(PathMatch::Exact("/x".into()), "b2"));
            s.to_bytes()
        }

        proptest! {
            /// Snapshot bytes changed at random either fail to decode, fail validation, or
            /// compile into something the proxy can serve; none of it panics.
            #[test]
            fn damaged_snapshots_are_refused_or_served_never_a_panic(
                changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                cut in proptest::option::of(any::<prop::sample::Index>()),
            ) {
                let mut bytes = encoded();
                for (at, byte) in changes {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                let Ok(snapshot) = Snapshot::from_bytes(&bytes) else {
                    return Ok(());
                };
                if snapshot.validate().is_ok() {
                    let metrics = Arc::new(ProxyMetrics::new());
                    if let Ok(compiled) = CompiledSnapshot::compile(snapshot, &metrics, None) {
                        let parts = get("/api/v1/x");
                        let _ = compiled.route("h0.test", &parts);
                    }
                }
            }
        }
    }
}
