//! Virtual hosts and routes as the request path reads them: a host's path matcher and
//! route groups, and each route's compiled policies.

use super::{BackendPool, CompileError, HashMap};
use crate::listener::client_cert::ClientCertificates;
use crate::policy::access::CompiledAccess;
use crate::policy::cors::CompiledCors;
use crate::policy::header_edits::CompiledHeaderEdits;
use crate::policy::rate_limit::RateLimiter;
use crate::routing::canary::CompiledCanary;
use crate::routing::conditions::CompiledConditions;
use crate::routing::router::PathMatcher;
use crate::telemetry::metrics::RouteSeries;
use http::HeaderValue;
use portico_model::{PathMatch, RateLimit, SessionAffinity, SourceRef, VirtualHost};
use std::sync::{Arc, OnceLock};

pub(super) struct CompiledVhost {
    /// Path to the index of its group in `groups`.
    pub(super) paths: PathMatcher,
    /// The routes of one path, by index in `routes`: those with conditions first (the
    /// most specific first), then the plain one.
    pub(super) groups: Vec<Box<[usize]>>,
    pub(super) routes: Vec<CompiledRoute>,
    /// The series of requests for this host that no route took: unrouted, and to the
    /// default backend.
    pub(super) unrouted: [OnceLock<Arc<RouteSeries>>; 2],
    /// `auth-tls-*`: what handshakes for this host ask for, and its requests need.
    pub(super) client_auth: Option<Arc<ClientCertificates>>,
    /// Every pool the routes hold, by the name they found it under, so that the next
    /// snapshot can tell whether this host may serve it unchanged without visiting each route.
    held: Box<[(Box<str>, Arc<BackendPool>)]>,
    /// The default backend's pool as error pages without a backend of their own found it;
    /// `None` when no route has such error pages.
    held_default: Option<Option<Arc<BackendPool>>>,
}

impl CompiledVhost {
    /// Whether every pool this host's routes hold is still the one of its name (and the
    /// default backend the same), so that a host whose definition did not change can
    /// serve the new snapshot as compiled.
    pub(super) fn holds_pools_of(
        &self,
        by_name: &HashMap<&str, &Arc<BackendPool>>,
        default: Option<&Arc<BackendPool>>,
    ) -> bool {
        self.held
            .iter()
            .all(|(name, pool)| by_name.get(&**name).is_some_and(|p| Arc::ptr_eq(p, pool)))
            && self
                .held_default
                .as_ref()
                .is_none_or(|held| match (held, default) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
    }
}

/// As in the model's `Route`, what few routes have is boxed, to keep 100 000 routes small.
pub struct CompiledRoute {
    pub pool: Arc<BackendPool>,
    pub(super) redirect_to_https: bool,
    pub(super) max_body_bytes: Option<u64>,
    pub affinity: Option<Box<SessionAffinity>>,
    pub canary: Option<Box<CompiledCanary>>,
    pub access: Option<Box<CompiledAccess>>,
    pub rewrite: Option<Box<portico_model::Rewrite>>,
    /// The compiled pattern of a regex route, for the captures of `rewrite.target`.
    pub path_regex: Option<regex::Regex>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub cors: Option<Box<CompiledCors>>,
    pub(super) conditions: Option<Box<CompiledConditions>>,
    pub headers: Option<Box<CompiledHeaderEdits>>,
    /// `default-backend`: takes the request when `pool` has no endpoint to offer.
    pub fallback: Option<Arc<BackendPool>>,
    /// What the fallback is told of the route it stands in for (see [`origin_headers`]).
    pub fallback_headers: Option<Box<OriginHeaders>>,
    pub error_pages: Option<Box<CompiledErrorPages>>,
    pub preserve_trailing_slash: bool,
    pub no_access_log: bool,
    pub https_only: bool,
    pub response_rate: Option<portico_model::ResponseRate>,
    pub tracing: Option<Box<portico_model::RouteTracing>>,
    pub mirror: Option<Box<CompiledMirror>>,
    /// Metrics series of the primary, canary and fallback sides, registered on the
    /// side's first request, so that applying 100 000 routes registers nothing up front.
    pub(super) series: [OnceLock<Arc<RouteSeries>>; 3],
    /// Gateway API weighted backends: each request takes one share.
    pub split: Option<Box<CompiledSplit>>,
}

/// A route's weighted backends, as the request path picks among them.
pub struct CompiledSplit {
    shares: Vec<CompiledShare>,
    total: u64,
}

pub struct CompiledShare {
    pub pool: Arc<BackendPool>,
    /// The sum of the weights up to and including this share's.
    upto: u64,
    /// The reference did not resolve: requests are answered 500.
    pub unresolved: bool,
    pub(super) series: OnceLock<Arc<RouteSeries>>,
}

impl CompiledSplit {
    fn compile(
        split: &portico_model::BackendSplit,
        by_name: &HashMap<&str, &Arc<BackendPool>>,
    ) -> Self {
        let mut upto = 0;
        let shares = split
            .shares
            .iter()
            .map(|s| {
                upto += u64::from(s.weight);
                CompiledShare {
                    pool: Arc::clone(by_name[s.backend.as_str()]),
                    upto,
                    unresolved: s.unresolved,
                    series: OnceLock::new(),
                }
            })
            .collect();
        CompiledSplit {
            shares,
            total: upto,
        }
    }

    /// The share a request takes, by weight: `roll` is uniform in `0..total()`.
    pub fn pick(&self, roll: u64) -> (u16, &CompiledShare) {
        let i = self.shares.partition_point(|s| s.upto <= roll);
        let i = i.min(self.shares.len() - 1);
        (i as u16, &self.shares[i])
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn share(&self, i: u16) -> Option<&CompiledShare> {
        self.shares.get(usize::from(i))
    }
}

/// Where a route's request copies go: a URL, or (Gateway API) an endpoint of `pool`.
pub struct CompiledMirror {
    pub mirror: portico_model::Mirror,
    pub pool: Option<Arc<BackendPool>>,
}

impl CompiledMirror {
    /// Whether this request is one of the share copied.
    pub fn samples(&self, roll: impl FnOnce(u32) -> u32) -> bool {
        self.mirror
            .fraction
            .is_none_or(|f| roll(f.denominator) < f.numerator)
    }
}

/// `custom-http-errors` of a route: which upstream statuses the error backend answers
/// instead, and the headers that tell it about the original request.
pub struct CompiledErrorPages {
    pub statuses: Vec<u16>,
    pub pool: Arc<BackendPool>,
    pub headers: OriginHeaders,
}

/// `X-Namespace`, `X-Ingress-Name`, `X-Service-Name` and `X-Service-Port`: what
/// ingress-nginx tells an error or default backend about the route it answers for.
pub type OriginHeaders = [(&'static str, HeaderValue); 4];

fn origin_headers(namespace: &str, ingress: &str, service: &str, port: &str) -> OriginHeaders {
    let value = |v: &str| HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""));
    [
        ("x-namespace", value(namespace)),
        ("x-ingress-name", value(ingress)),
        ("x-service-name", value(service)),
        ("x-service-port", value(port)),
    ]
}

pub(super) type Limiters = HashMap<(SourceRef, RateLimit), Arc<RateLimiter>>;

pub(super) fn compile_vhost(
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
            let key = (route.source.clone(), limit.clone());
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
            Some(CompiledErrorPages {
                statuses: e.statuses.clone(),
                pool: Arc::clone(pool),
                headers: origin_headers(&e.namespace, &e.ingress, &e.service, &e.service_port),
            })
        });
        let primary = by_name[route.backend.as_str()];
        let fallback_headers = fallback.as_ref().map(|_| {
            let service = &primary.service;
            Box::new(origin_headers(
                &route.source.namespace,
                &route.source.name,
                &service.name,
                &service.port,
            ))
        });
        routes.push(CompiledRoute {
            pool: Arc::clone(primary),
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
            fallback_headers,
            error_pages: error_pages.map(Box::new),
            preserve_trailing_slash: route.preserve_trailing_slash,
            no_access_log: route.no_access_log,
            https_only: route.https_only,
            response_rate: route.response_rate.as_deref().copied(),
            tracing: route.tracing.clone(),
            mirror: route.mirror.as_deref().map(|m| {
                Box::new(CompiledMirror {
                    mirror: m.clone(),
                    pool: m.backend.as_deref().map(|b| Arc::clone(by_name[b])),
                })
            }),
            series: Default::default(),
            split: route
                .split
                .as_deref()
                .map(|s| Box::new(CompiledSplit::compile(s, by_name))),
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
    let mut held: Vec<(Box<str>, Arc<BackendPool>)> = Vec::new();
    for name in vh.routes.iter().flat_map(|r| r.named_backends()) {
        if !held.iter().any(|(n, _)| **n == *name) {
            held.push((name.into(), Arc::clone(by_name[name])));
        }
    }
    let held_default = vh
        .routes
        .iter()
        .any(|r| r.error_pages.as_ref().is_some_and(|e| e.backend.is_none()))
        .then(|| default_backend.cloned());
    Ok(CompiledVhost {
        paths,
        groups,
        routes,
        unrouted: Default::default(),
        client_auth,
        held: held.into_boxed_slice(),
        held_default,
    })
}
