//! Merging Ingress fragments into one routing table, oldest Ingress first: for a host
//! and path, a TLS host, or the default backend, the first claim wins and every later
//! one gets a diagnostic naming the field and the owner. The table borrows from the
//! fragments; only assembling the snapshot copies routes.
//!
//! Canary Ingresses are attached after every primary is merged, whatever their age, to
//! the route of the same host and path; a canary with no such route gets no traffic.

use crate::backend::Resolved;
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::ingress::{Fragment, FragmentRoute};
use crate::secret::CheckedCertificate;
use crate::sharing::HostOwnership;
use portico_model::{
    Backend, Canary, ClientAuth, HostMatch, PassthroughHost, PathMatch, RequestConditions, Route,
    SourceRef,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Keys are the fragments' own strings; a fast hash is enough for them.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

#[derive(Default)]
pub(crate) struct RouteTable<'f> {
    pub hosts: BTreeMap<&'f HostMatch, HostRoutes<'f>>,
    /// The default backend and the Ingress that set it (`None`: `--default-backend-service`).
    pub default_backend: Option<(&'f str, Option<&'f SourceRef>)>,
    /// Hosts named in `spec.tls`, with the certificate they present (`None`: the default one).
    pub tls_hosts: BTreeMap<&'f HostMatch, TlsOwner<'f>>,
    backends: FastMap<&'f str, &'f Arc<Resolved>>,
    certificates: FastMap<&'f str, &'f Arc<CheckedCertificate>>,
    /// Canary fragments, oldest first, attached by [`RouteTable::attach_canaries`].
    canaries: Vec<&'f Fragment>,
    /// Fragments with `from-to-www-redirect`, oldest first, attached by [`RouteTable::attach_www_redirects`].
    www_redirects: Vec<&'f Fragment>,
    /// Who may route a host; see [`HostOwnership`].
    ownership: HostOwnership,
    /// The oldest Ingress naming each host, in its rules or its TLS section.
    host_owners: FastMap<&'f HostMatch, &'f SourceRef>,
    /// Each host named in a TLS section, with the namespaces that named it.
    tls_namespaces: BTreeSet<(&'f HostMatch, &'f str)>,
}

pub(crate) struct TlsOwner<'f> {
    pub certificate: Option<&'f str>,
    pub owner: &'f SourceRef,
}

type RouteKey<'f> = (&'f PathMatch, &'f Option<Box<RequestConditions>>);

fn key(route: &Route) -> RouteKey<'_> {
    (&route.path, &route.conditions)
}

/// Up to this many routes, a host finds a path by looking through its routes: most hosts
/// have a handful, and a map per host cost more to build than the search.
const SEARCHED_ROUTES: usize = 16;

/// The routes of one host, and which route claimed each path.
#[derive(Default)]
pub(crate) struct HostRoutes<'f> {
    pub routes: Vec<&'f FragmentRoute>,
    /// Routes are told apart by path and conditions; indexed once there are more than
    /// [`SEARCHED_ROUTES`].
    by_path: FastMap<RouteKey<'f>, usize>,
    /// The canary of a route, by the route's index.
    pub canaries: FastMap<usize, Canary>,
    /// The client certificates the host asks for, and the Ingress that asked first.
    pub client_auth: Option<(&'f ClientAuth, &'f SourceRef)>,
    /// `ssl-ciphers`, and the Ingress that set it first.
    pub ciphers: Option<(&'f String, &'f SourceRef)>,
    /// The oldest Ingress of the host with `ssl-passthrough`.
    pub passthrough: Option<&'f SourceRef>,
    /// The oldest Ingress with `use-regex` or `rewrite-target` among the host's routes:
    /// when set, every path of the host is matched as a regex, longest first.
    pub regex_by: Option<&'f SourceRef>,
    /// Who routes each path text, kept once a route of the host has conditions (until
    /// then, empty): see [`HostRoutes::shares_across_namespaces`].
    path_owners: FastMap<&'f str, PathOwner<'f>>,
}

/// The routes of one path text on a host, whatever their path types.
struct PathOwner<'f> {
    /// The oldest route's Ingress.
    first: &'f SourceRef,
    /// The oldest route's Ingress of another namespace than `first`'s.
    other: Option<&'f SourceRef>,
    /// A route of this text has conditions.
    conditioned: bool,
}

impl<'f> HostRoutes<'f> {
    /// The index of the route that claimed `route`'s path and conditions.
    fn claimed(&self, route: &Route) -> Option<usize> {
        if self.routes.len() <= SEARCHED_ROUTES {
            let wanted = key(route);
            self.routes.iter().position(|r| key(&r.route) == wanted)
        } else {
            self.by_path.get(&key(route)).copied()
        }
    }

    /// Conditions (`portico.io/match-*`) pick among the routes of one path before age
    /// does, so a route with conditions may share its path text (of any path type: on a
    /// regex host they become one pattern) only with routes of its own namespace. Returns
    /// the older Ingress of another namespace that `route` would share its path with.
    fn shares_across_namespaces(&mut self, route: &'f Route) -> Option<&'f SourceRef> {
        if route.conditions.is_some() && self.path_owners.is_empty() {
            for r in &self.routes {
                note_owner(&mut self.path_owners, &r.route);
            }
        }
        let owner = self.path_owners.get(route.path.path())?;
        let foreign = if owner.first.namespace != route.source.namespace {
            Some(owner.first)
        } else {
            owner.other
        };
        foreign.filter(|_| route.conditions.is_some() || owner.conditioned)
    }

    fn claim(&mut self, route: &'f FragmentRoute) {
        if route.regex_host && self.regex_by.is_none() {
            self.regex_by = Some(&route.route.source);
        }
        if route.route.conditions.is_some() || !self.path_owners.is_empty() {
            note_owner(&mut self.path_owners, &route.route);
        }
        self.routes.push(route);
        if self.routes.len() > SEARCHED_ROUTES {
            if self.by_path.is_empty() {
                self.by_path.extend(
                    self.routes
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (key(&r.route), i)),
                );
            } else {
                self.by_path
                    .insert(key(&route.route), self.routes.len() - 1);
            }
        }
    }
}

fn note_owner<'f>(owners: &mut FastMap<&'f str, PathOwner<'f>>, route: &'f Route) {
    let owner = owners.entry(route.path.path()).or_insert(PathOwner {
        first: &route.source,
        other: None,
        conditioned: false,
    });
    if owner.other.is_none() && owner.first.namespace != route.source.namespace {
        owner.other = Some(&route.source);
    }
    owner.conditioned |= route.conditions.is_some();
}

impl<'f> RouteTable<'f> {
    pub fn new(ownership: HostOwnership) -> Self {
        RouteTable {
            ownership,
            ..RouteTable::default()
        }
    }

    /// Whether an Ingress of `namespace` named `host` in its TLS section.
    pub fn tls_claimed_by(&self, host: &'f HostMatch, namespace: &'f str) -> bool {
        self.tls_namespaces.contains(&(host, namespace))
    }

    /// The owner of `host` when `--host-ownership namespace` keeps `source` from it.
    fn refused_owner(
        &mut self,
        host: &'f HostMatch,
        source: &'f SourceRef,
    ) -> Option<&'f SourceRef> {
        if self.ownership == HostOwnership::Shared {
            return None;
        }
        let owner = *self.host_owners.entry(host).or_insert(source);
        (owner.namespace != source.namespace).then_some(owner)
    }

    pub fn merge(&mut self, fragment: &'f Fragment, diagnostics: &mut Vec<Diagnostic>) {
        diagnostics.extend(fragment.diagnostics.iter().cloned());
        if fragment.canary.is_some() {
            self.canaries.push(fragment);
            return;
        }
        if !fragment.www_redirects.is_empty() {
            self.www_redirects.push(fragment);
        }
        let mut report = |reason, message| {
            diagnostics.push(Diagnostic {
                object: fragment.object.clone(),
                reason,
                message,
            })
        };
        for b in &fragment.backends {
            self.backends.entry(&b.backend.name).or_insert(b);
        }
        for c in &fragment.certificates {
            self.certificates.entry(&c.certificate.name).or_insert(c);
        }
        if let Some(name) = &fragment.default_backend {
            match self.default_backend {
                None => self.default_backend = Some((name, Some(&fragment.source))),
                Some((_, owner)) => {
                    let owner = owner.map_or("--default-backend-service".to_string(), |o| {
                        format!("Ingress {o}")
                    });
                    report(
                        Reason::DefaultBackendConflict,
                        format!("spec.defaultBackend ignored: {owner} is older and already sets the default backend"),
                    )
                }
            }
        }
        for claim in &fragment.tls {
            if let Some(owner) = self.refused_owner(&claim.host, &fragment.source) {
                report(Reason::HostConflict, format!(
                    "{}: host {:?} belongs to namespace {:?} ({} is the oldest to name it) and the controller runs with --host-ownership namespace; ignored",
                    claim.field(), claim.host.to_string(), owner.namespace, owner.described()
                ));
                continue;
            }
            self.tls_namespaces
                .insert((&claim.host, &fragment.source.namespace));
            let certificate = claim.certificate.as_deref();
            match self.tls_hosts.get(&claim.host) {
                Some(existing) if existing.certificate != certificate => report(
                    Reason::TLSConflict,
                    format!(
                        "{}: host {:?} already presents the certificate of {}, which is older; ignored",
                        claim.field(),
                        claim.host.to_string(),
                        existing.owner.described()
                    ),
                ),
                Some(_) => {}
                None => {
                    self.tls_hosts.insert(&claim.host, TlsOwner { certificate, owner: &fragment.source });
                }
            }
        }
        for (host, routes) in &fragment.rules {
            if let Some(owner) = self.refused_owner(host, &fragment.source) {
                report(Reason::HostConflict, format!(
                    "host {:?} belongs to namespace {:?} ({} is the oldest to name it) and the controller runs with --host-ownership namespace; this Ingress's routes for it are ignored",
                    host.to_string(), owner.namespace, owner.described()
                ));
                continue;
            }
            let host_routes = self.hosts.entry(host).or_default();
            // Client certificates are asked for in the handshake, before any path is known:
            // one host, one policy. A second one would leave routes less guarded than their
            // Ingress asks, so they are left out.
            match (&fragment.client_auth, host_routes.client_auth) {
                (Some(wanted), None) => host_routes.client_auth = Some((wanted, &fragment.source)),
                (Some(wanted), Some((have, owner))) if wanted != have => {
                    let msg = format!(
                        "host {:?} already asks for the client certificates of {}, which is older; this Ingress's routes for it are ignored",
                        host.to_string(), owner.described()
                    );
                    report(Reason::ClientAuthConflict, msg);
                    continue;
                }
                _ => {}
            }
            // Ciphers are a property of the handshake too, but a second list leaves nothing
            // less guarded: the routes stay, under the older Ingress's list.
            match (&fragment.ciphers, host_routes.ciphers) {
                (Some(wanted), None) => host_routes.ciphers = Some((wanted, &fragment.source)),
                (Some(wanted), Some((have, owner))) if wanted != have => report(
                    Reason::TLSConflict,
                    format!(
                        "host {:?} already offers the ssl-ciphers of Ingress {owner}, which is older; this Ingress's are ignored for it",
                        host.to_string()
                    ),
                ),
                _ => {}
            }
            if fragment.passthrough && host_routes.passthrough.is_none() {
                host_routes.passthrough = Some(&fragment.source);
            }
            host_routes.routes.reserve(routes.len());
            for r in routes {
                let taken = match host_routes.claimed(&r.route) {
                    Some(i) => Some(format!(
                        "is already routed by {}, which is older;",
                        host_routes.routes[i].route.source.described()
                    )),
                    None => host_routes.shares_across_namespaces(&r.route).map(|owner| {
                        format!("is routed by Ingress {owner}, which is older and of another namespace; routes with portico.io/match-* conditions share a path only with Ingresses of their own namespace, so this one is")
                    }),
                };
                if let Some(why) = taken {
                    let msg = format!(
                        "{}: {} path {:?} on host {:?} {why} ignored",
                        r.field(),
                        r.path_type,
                        r.route.path.path(),
                        host.to_string(),
                    );
                    report(Reason::PathConflict, msg);
                    continue;
                }
                host_routes.claim(r);
            }
        }
    }

    /// The default backend when no Ingress set one (`--default-backend-service`).
    pub fn default_backend_if_unset(&mut self, resolved: &'f Arc<Resolved>) {
        if self.default_backend.is_none() {
            self.default_backend = Some((&resolved.backend.name, None));
            self.backends
                .entry(&resolved.backend.name)
                .or_insert(resolved);
        }
    }

    /// Adds the redirect routes of `from-to-www-redirect` where no Ingress routes the same
    /// host and path. Call once, after every fragment is merged.
    pub fn attach_www_redirects(&mut self) {
        for fragment in std::mem::take(&mut self.www_redirects) {
            for (host, routes) in &fragment.www_redirects {
                if self.refused_owner(host, &fragment.source).is_some() {
                    continue;
                }
                let host_routes = self.hosts.entry(host).or_default();
                for r in routes {
                    if host_routes.claimed(&r.route).is_none()
                        && host_routes.shares_across_namespaces(&r.route).is_none()
                    {
                        host_routes.claim(r);
                    }
                }
            }
        }
    }

    /// Tells each Ingress whose plain paths share a host with another Ingress's regex
    /// paths that they are matched as regexes there: a Prefix `/admin` then also takes
    /// `/Administrator`, and ordering by length can differ from Kubernetes' rules.
    pub fn report_regex_hosts(&self, diagnostics: &mut Vec<Diagnostic>) {
        for (host, routes) in &self.hosts {
            let Some(owner) = routes.regex_by else {
                continue;
            };
            let mut told: Vec<&SourceRef> = Vec::new();
            for r in &routes.routes {
                let source = &r.route.source;
                if r.regex_host || told.contains(&source) {
                    continue;
                }
                told.push(source);
                diagnostics.push(Diagnostic {
                    object: ObjectRef::source(source),
                    reason: Reason::RegexHost,
                    message: format!(
                        "host {:?}: Ingress {owner} uses use-regex or rewrite-target there, so this Ingress's paths on the host are matched as ingress-nginx matches them: as case-insensitive regular expressions anchored at the start (Exact and Prefix paths literally), the longest first",
                        host.to_string()
                    ),
                });
            }
        }
    }

    /// Attaches each canary route to the primary route of its host and path. Call once,
    /// after every fragment is merged.
    pub fn attach_canaries(&mut self, diagnostics: &mut Vec<Diagnostic>) {
        for fragment in std::mem::take(&mut self.canaries) {
            let Some(template) = &fragment.canary else {
                continue;
            };
            let mut report = |reason, message| {
                diagnostics.push(Diagnostic {
                    object: fragment.object.clone(),
                    reason,
                    message,
                })
            };
            for (host, routes) in &fragment.rules {
                for r in routes {
                    let field = format!("spec.rules[{}].http.paths[{}]", r.rule, r.path);
                    let what = format!(
                        "path {:?} on host {:?}",
                        r.route.path.path(),
                        host.to_string()
                    );
                    let primary = self
                        .hosts
                        .get_mut(host)
                        .and_then(|h| h.claimed(&r.route).map(|i| (h, i)));
                    let Some((host_routes, index)) = primary else {
                        let msg = format!("{field}: canary for {what}, which no other Ingress routes; it gets no traffic");
                        report(Reason::CanaryWithoutPrimary, msg);
                        continue;
                    };
                    // A canary receives its primary's requests, credentials included: only
                    // the primary's own namespace may split them off.
                    let primary = &host_routes.routes[index].route.source;
                    if primary.namespace != fragment.source.namespace {
                        let msg = format!("{field}: canary for {what}, which Ingress {primary} of another namespace routes; a canary attaches only to an Ingress of its own namespace, so it gets no traffic");
                        report(Reason::CanaryWithoutPrimary, msg);
                        continue;
                    }
                    if let Some(existing) = host_routes.canaries.get(&index) {
                        let msg = format!("{field}: {what} already has the canary of Ingress {}, which is older; ignored", existing.source);
                        report(Reason::CanaryConflict, msg);
                        continue;
                    }
                    // The canary takes its primary's affinity, as in ingress-nginx (its own
                    // when the primary has none); a legacy canary pins nobody.
                    let affinity = host_routes.routes[index]
                        .route
                        .affinity
                        .as_deref()
                        .or(r.route.affinity.as_deref())
                        .filter(|_| template.sticky);
                    let canary = Canary {
                        backend: r.route.backend.clone(),
                        affinity: affinity.cloned(),
                        ..template.clone()
                    };
                    host_routes.canaries.insert(index, canary);
                    if let Some(b) = fragment
                        .backends
                        .iter()
                        .find(|b| b.backend.name == r.route.backend)
                    {
                        self.backends.entry(&b.backend.name).or_insert(b);
                    }
                }
            }
        }
    }

    pub fn certificate(&self, name: &str) -> Option<&'f Arc<CheckedCertificate>> {
        self.certificates.get(name).copied()
    }

    /// The resolved backends, sorted by name so that translation is deterministic.
    /// The hosts whose TLS connections are relayed untouched, each to its `/` route's
    /// backend as in ingress-nginx; a host without one is reported on its Ingress.
    pub fn passthrough_hosts(&self) -> (Vec<PassthroughHost>, Vec<Diagnostic>) {
        let mut hosts = Vec::new();
        let mut problems = Vec::new();
        for (host, h) in &self.hosts {
            let Some(source) = h.passthrough else {
                continue;
            };
            if **host == HostMatch::Any {
                problems.push(Diagnostic {
                    object: ObjectRef::source(source),
                    reason: Reason::InvalidAnnotation,
                    message: "annotation ssl-passthrough: a rule without a host cannot be told apart by SNI; ignored for it".into(),
                });
                continue;
            }
            let root = h
                .routes
                .iter()
                .find(|r| matches!(&r.route.path, PathMatch::Prefix(p) if p == "/"));
            match root {
                Some(r) => hosts.push(PassthroughHost {
                    host: (*host).clone(),
                    backend: r.route.backend.clone(),
                }),
                None => problems.push(Diagnostic {
                    object: ObjectRef::source(source),
                    reason: Reason::InvalidAnnotation,
                    message: format!(
                        "annotation ssl-passthrough: host {:?} has no \"/\" path, whose backend would take its TLS connections; they are terminated by Portico instead",
                        host.to_string()
                    ),
                }),
            }
        }
        hosts.sort_by_cached_key(|p| p.host.to_string());
        (hosts, problems)
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        let mut backends: Vec<Arc<Backend>> =
            self.backends.values().map(|r| r.backend.clone()).collect();
        backends.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        backends
    }
}
