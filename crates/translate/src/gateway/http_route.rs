//! The route processor: a Gateway API route's parents (which listeners take it, with
//! which hostnames), its backends, and an HTTPRoute's rules, as a [`Fragment`] that
//! merges with the Ingresses' (oldest first), with its parents' status. GRPCRoute's
//! rules are in `grpc_route.rs`.
//!
//! Matching follows Gateway API's precedence with what the data plane already does: an
//! Exact path before any prefix, the longest prefix first, and among the rules of one
//! path those with more conditions first (method, then headers, then query parameters:
//! `RequestConditions::weight`). Two routes with the same path and conditions: the
//! older wins, as between Ingresses.

use super::grants::{self, CoreRef};
use super::listeners::{selects, AllowedNamespaces, Protocol, ServedGateway, ServedListener};
use super::status::{RouteParentState, StatusCondition};
use super::types::{
    BackendRef, CorsFilter, HeaderModifier, HttpBackendRef, HttpRoute, HttpRouteFilter,
    HttpRouteMatch, HttpRouteRule, HttpRouteTimeouts, ParentReference, ValueMatch, GROUP,
};
use crate::backend::{self, Resolved, SliceIndex};
use crate::cache::{ClusterState, ObjectKey};
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::ingress::{Fragment, FragmentRoute};
use k8s_openapi::api::networking::v1::{IngressServiceBackend, ServiceBackendPort};
use portico_model::{
    cors_origin_is_valid, Backend, BackendShare, BackendSplit, Cors, CorsRules, HeaderChanges,
    HeaderEdits, HostMatch, Mirror, MirrorFraction, PathMatch, PrefixSwap, Redirect, RedirectPath,
    RequestConditions, Rewrite, Route, ServiceRef, SourceKind, Template, TrafficPolicy, Upstream,
    ValueCondition, ValueRule,
};
use std::sync::Arc;

/// What one HTTPRoute contributes.
pub(crate) struct ProcessedRoute {
    pub fragment: Fragment,
    pub parents: Vec<RouteParentState>,
    /// `(gateway index, listener index)` of each listener the route attached to.
    pub attached: Vec<(usize, usize)>,
}

pub(crate) struct RouteProcessor<'a> {
    pub state: &'a ClusterState,
    pub slices: &'a SliceIndex,
    pub gateways: &'a [ServedGateway],
}

/// Why a parent did not take the route: the `Accepted: False` reason and a message.
pub(crate) type Refusal = (&'static str, String);

/// What every route kind has: its parents and hostnames.
pub(crate) struct RouteHead<'r> {
    pub kind: SourceKind,
    pub generation: Option<i64>,
    pub parent_refs: &'r [ParentReference],
    pub hostnames: &'r [String],
}

/// What a route kind adds for the hostnames it has and the listeners (gateway index,
/// listener index) that took it.
type Rules<'p, 'a> = dyn FnOnce(
        &RouteProcessor<'a>,
        &[HostMatch],
        &[(usize, usize)],
        &mut Fragment,
    ) -> Result<(), Refusal>
    + 'p;

impl<'a> RouteProcessor<'a> {
    pub fn process_http(&self, key: &ObjectKey, route: &HttpRoute) -> Option<ProcessedRoute> {
        let head = RouteHead {
            kind: SourceKind::HTTPRoute,
            generation: route.metadata.generation,
            parent_refs: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
        };
        self.process(
            key,
            head,
            Box::new(|p, hosts, _, f| p.rules(key, route, hosts, f)),
        )
    }

    /// A route of any kind: its parents decided, then `rules` adds its routes for the
    /// hostnames it has on the listeners that took it.
    pub(crate) fn process(
        &self,
        key: &ObjectKey,
        head: RouteHead<'_>,
        rules: Box<Rules<'_, 'a>>,
    ) -> Option<ProcessedRoute> {
        let generation = head.generation;
        let mut fragment = Fragment::of_gateway_api(head.kind, key);
        let object = fragment.object.clone();
        let mut parents = Vec::new();
        let mut attached = Vec::new();
        let mut hosts: Vec<HostMatch> = Vec::new();
        // The hosts the route has on plain-HTTP listeners; the others are HTTPS only.
        let mut http_hosts: Vec<HostMatch> = Vec::new();
        let route_hosts = self.route_hostnames(head.hostnames, &mut fragment.diagnostics, &object);
        for parent in head.parent_refs {
            let Some(g) = self.parent_gateway(key, parent) else {
                continue; // Not one of Portico's Gateways: not ours to report on.
            };
            let accepted = self.attach(key, head.kind, parent, &self.gateways[g], &route_hosts);
            let condition = match accepted {
                Ok(listeners) => {
                    for (l, listener_hosts) in listeners {
                        attached.push((g, l));
                        let plain = self.gateways[g].listeners[l]
                            .as_ref()
                            .is_some_and(|l| l.protocol == Protocol::Http);
                        if plain {
                            http_hosts.extend(listener_hosts.iter().cloned());
                        }
                        for h in listener_hosts {
                            if !hosts.contains(&h) {
                                hosts.push(h);
                            }
                        }
                    }
                    StatusCondition::new("Accepted", true, "Accepted", "", generation)
                }
                Err((reason, message)) => {
                    fragment.diagnostics.push(Diagnostic {
                        object: object.clone(),
                        reason: Reason::NotAccepted,
                        message: format!(
                            "spec.parentRefs: Gateway {}/{}: {message}",
                            self.gateways[g].key.0, self.gateways[g].key.1
                        ),
                    });
                    StatusCondition::new("Accepted", false, reason, message, generation)
                }
            };
            parents.push(RouteParentState {
                parent: parent.clone(),
                conditions: vec![condition],
            });
        }
        if parents.is_empty() {
            return None;
        }
        // Client certificates are asked for per host: an HTTPS listener's frontend
        // validation covers every host the route has.
        fragment.client_auth = attached.iter().find_map(|(g, l)| {
            let listener = self.gateways[*g].listeners[*l].as_ref()?;
            listener.client_auth.clone()
        });
        let resolved = rules(self, &hosts, &attached, &mut fragment);
        for (host, routes) in &mut fragment.rules {
            if !http_hosts.contains(host) {
                routes.iter_mut().for_each(|r| r.route.https_only = true);
            }
        }
        let refs = match resolved {
            Ok(()) => StatusCondition::new("ResolvedRefs", true, "ResolvedRefs", "", generation),
            Err((reason, message)) => {
                StatusCondition::new("ResolvedRefs", false, reason, message, generation)
            }
        };
        for p in &mut parents {
            p.conditions.push(refs.clone());
        }
        Some(ProcessedRoute {
            fragment,
            parents,
            attached,
        })
    }

    /// The route's hostnames, parsed; an invalid one is reported and left out.
    fn route_hostnames(
        &self,
        hostnames: &[String],
        diagnostics: &mut Vec<Diagnostic>,
        object: &ObjectRef,
    ) -> Vec<HostMatch> {
        let mut hosts = Vec::new();
        for (i, h) in hostnames.iter().enumerate() {
            match HostMatch::gateway(h) {
                Ok(HostMatch::Any) | Err(_) => diagnostics.push(Diagnostic {
                    object: object.clone(),
                    reason: Reason::InvalidHost,
                    message: format!("spec.hostnames[{i}] {h:?} is not a host name; ignored"),
                }),
                Ok(host) => hosts.push(host),
            }
        }
        hosts
    }

    /// The index of the Portico Gateway a parent reference names, if it names one.
    fn parent_gateway(&self, key: &ObjectKey, parent: &ParentReference) -> Option<usize> {
        let group = parent.group.as_deref().unwrap_or(GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        if group != GROUP || kind != "Gateway" {
            return None;
        }
        let namespace = parent.namespace.as_deref().unwrap_or(&key.0);
        self.gateways
            .iter()
            .position(|g| g.key.0 == namespace && g.key.1 == parent.name)
    }

    /// The listeners of `gateway` that take the route, each with the hostnames the route
    /// has there; or why none does.
    fn attach(
        &self,
        key: &ObjectKey,
        kind: SourceKind,
        parent: &ParentReference,
        gateway: &ServedGateway,
        route_hosts: &[HostMatch],
    ) -> Result<Vec<(usize, Vec<HostMatch>)>, Refusal> {
        let named: Vec<usize> = (0..gateway.listener_names.len())
            .filter(|i| {
                parent
                    .section_name
                    .as_ref()
                    .is_none_or(|s| *s == gateway.listener_names[*i])
                    && parent.port.is_none_or(|p| p == gateway.listener_ports[*i])
            })
            .collect();
        if named.is_empty() {
            return Err((
                "NoMatchingParent",
                format!(
                    "no listener has the sectionName {:?} and port {:?} the route names",
                    parent.section_name, parent.port
                ),
            ));
        }
        let serving: Vec<&ServedListener> = named
            .iter()
            .filter_map(|i| gateway.listeners[*i].as_ref())
            .collect();
        if serving.is_empty() {
            return Err((
                "NoMatchingParent",
                "the listeners the route names are not valid".into(),
            ));
        }
        let allowed: Vec<&ServedListener> = serving
            .into_iter()
            .filter(|l| self.allows(l, kind, &gateway.key.0, &key.0))
            .collect();
        if allowed.is_empty() {
            return Err((
                "NotAllowedByListeners",
                format!(
                    "no listener the route names takes {}s from namespace {:?}",
                    kind.as_str(),
                    key.0
                ),
            ));
        }
        let attached: Vec<(usize, Vec<HostMatch>)> = allowed
            .into_iter()
            .filter_map(|l| {
                let hosts = intersect(l.hostname.as_ref(), route_hosts);
                (!hosts.is_empty()).then_some((l.index, hosts))
            })
            .collect();
        if attached.is_empty() {
            return Err((
                "NoMatchingListenerHostname",
                "no listener's hostname intersects the route's hostnames".into(),
            ));
        }
        Ok(attached)
    }

    fn allows(
        &self,
        l: &ServedListener,
        kind: SourceKind,
        gateway_namespace: &str,
        namespace: &str,
    ) -> bool {
        let by_namespace = match &l.namespaces {
            AllowedNamespaces::Same => gateway_namespace == namespace,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(selector) => self
                .state
                .namespaces
                .get(namespace)
                .is_some_and(|ns| selects(selector, ns.metadata.labels.as_ref())),
        };
        by_namespace && l.kinds.iter().any(|k| k == kind.as_str())
    }

    /// Adds the route's rules to `fragment` for `hosts`; the first unresolved reference's
    /// reason and message, if any.
    fn rules(
        &self,
        key: &ObjectKey,
        route: &HttpRoute,
        hosts: &[HostMatch],
        fragment: &mut Fragment,
    ) -> Result<(), Refusal> {
        let default_rules = [HttpRouteRule::default()];
        let rules = route.spec.rules.as_deref().unwrap_or(&default_rules);
        let mut unresolved = Ok(());
        let mut routes: Vec<FragmentRoute> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let mut problems: Vec<(Reason, String)> = Vec::new();
            let mut report = |reason, message: String| {
                problems.push((reason, format!("spec.rules[{i}].{message}")))
            };
            let reach = BackendReach {
                upstream: Upstream::default(),
                policy: timeouts_policy(rule.timeouts.as_ref(), &mut |m| {
                    report(Reason::InvalidField, m)
                }),
            };
            let mut template = self.rule_route(
                key,
                i,
                &rule.backend_refs,
                &reach,
                fragment,
                &mut unresolved,
            );
            template.mirror = self
                .mirror(
                    key,
                    i,
                    &rule.filters,
                    fragment,
                    &mut unresolved,
                    &mut report,
                )
                .map(Box::new);
            let broken = apply_filters(&rule.filters, &mut template, &mut |m| {
                report(Reason::UnsupportedField, m)
            });
            if broken {
                self.answer_500(key, &mut template, fragment);
            }
            let default_matches = [HttpRouteMatch::default()];
            let matches = match rule.matches.as_deref() {
                Some(m) if !m.is_empty() => m,
                _ => &default_matches,
            };
            for (j, m) in matches.iter().enumerate() {
                let (path, path_type) = match path_of(m) {
                    Ok(p) => p,
                    Err(message) => {
                        report(Reason::InvalidPath, format!("matches[{j}].path: {message}"));
                        continue;
                    }
                };
                let mut r = template.clone();
                if let Some(rw) = r.rewrite.as_deref_mut() {
                    if !prefix_for_rewrites(rw, &path) {
                        report(
                            Reason::UnsupportedField,
                            format!("matches[{j}]: ReplacePrefixMatch needs a PathPrefix match; the match is left out"),
                        );
                        continue;
                    }
                }
                r.path = path;
                r.conditions = conditions_of(m).map(Box::new);
                routes.push(fragment_route(r, i, j, path_type));
            }
            report_problems(fragment, problems);
        }
        add_for_hosts(fragment, hosts, &routes);
        unresolved
    }

    /// A rule's route before its matches are filled in: its backend references resolved
    /// (through `reach`) into the backend and the weighted split.
    pub(crate) fn rule_route(
        &self,
        key: &ObjectKey,
        rule_index: usize,
        refs: &[HttpBackendRef],
        reach: &BackendReach,
        fragment: &mut Fragment,
        unresolved: &mut Result<(), Refusal>,
    ) -> Route {
        let (backend, split) = self.backends(key, rule_index, refs, reach, fragment, unresolved);
        let mut route = Route::new(PathMatch::prefix("/"), backend);
        route.source = fragment.source.clone();
        route.max_body_bytes = None;
        route.split = split.map(Box::new);
        route
    }

    /// Makes a rule's route answer 500: it asks for something Portico cannot do, and its
    /// requests must not be passed on without it.
    pub(crate) fn answer_500(&self, key: &ObjectKey, route: &mut Route, fragment: &mut Fragment) {
        let (name, split) = self.unresolved_share(key, fragment);
        route.backend = name;
        route.split = Some(Box::new(split));
        route.rewrite = None;
        route.mirror = None;
    }

    /// The backend a rule's routes name, and the split of its weighted backends (`None`
    /// for one resolved backend).
    pub(crate) fn backends(
        &self,
        key: &ObjectKey,
        rule_index: usize,
        refs: &[HttpBackendRef],
        reach: &BackendReach,
        fragment: &mut Fragment,
        unresolved: &mut Result<(), Refusal>,
    ) -> (String, Option<BackendSplit>) {
        let mut shares = Vec::new();
        for (k, r) in refs.iter().enumerate() {
            let weight = r.weight.unwrap_or(1);
            if weight <= 0 {
                continue;
            }
            if !r.filters.is_empty() {
                fragment.diagnostics.push(Diagnostic {
                    object: fragment.object.clone(),
                    reason: Reason::UnsupportedField,
                    message: format!("spec.rules[{rule_index}].backendRefs[{k}].filters: filters on a backend are not applied yet"),
                });
            }
            match self.backend(key, fragment.source.kind, &r.backend, reach) {
                Ok(resolved) => shares.push(BackendShare {
                    backend: keep_backend(fragment, resolved),
                    weight: weight as u32,
                    unresolved: false,
                }),
                Err(refusal) => {
                    let field = format!("spec.rules[{rule_index}].backendRefs[{k}]");
                    let consequence = "its share of requests is answered 500";
                    refused_reference(fragment, unresolved, &field, refusal, consequence);
                    let (name, _) = self.unresolved_share(key, fragment);
                    shares.push(BackendShare {
                        backend: name,
                        weight: weight as u32,
                        unresolved: true,
                    });
                }
            }
        }
        match shares.as_slice() {
            [] => {
                let (name, split) = self.unresolved_share(key, fragment);
                (name, Some(split))
            }
            [one] if !one.unresolved => (one.backend.clone(), None),
            _ => (shares[0].backend.clone(), Some(BackendSplit { shares })),
        }
    }

    /// The copy a rule's `RequestMirror` filter asks for (one per rule), to the endpoints
    /// of its backend; `None` without one, or when its backend does not resolve.
    fn mirror(
        &self,
        key: &ObjectKey,
        rule_index: usize,
        filters: &[HttpRouteFilter],
        fragment: &mut Fragment,
        unresolved: &mut Result<(), Refusal>,
        report: &mut dyn FnMut(Reason, String),
    ) -> Option<Mirror> {
        let mut mirrors = filters
            .iter()
            .enumerate()
            .filter(|(_, f)| f.type_ == "RequestMirror");
        let (i, filter) = mirrors.next()?;
        if let Some((j, _)) = mirrors.next() {
            report(
                Reason::UnsupportedField,
                format!("filters[{j}]: one RequestMirror per rule; copies go to filters[{i}]'s backend only"),
            );
        }
        let Some(m) = &filter.request_mirror else {
            report(
                Reason::InvalidField,
                format!("filters[{i}]: RequestMirror has no settings; nothing is copied"),
            );
            return None;
        };
        let (numerator, denominator) = match (m.percent, &m.fraction) {
            (Some(p), _) => (p, 100),
            (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
            (None, None) => (1, 1),
        };
        if numerator < 0 || denominator <= 0 || numerator > denominator {
            report(
                Reason::InvalidField,
                format!("filters[{i}].requestMirror: {numerator}/{denominator} of requests is not a share; nothing is copied"),
            );
            return None;
        }
        match self.backend(
            key,
            fragment.source.kind,
            &m.backend_ref,
            &BackendReach::default(),
        ) {
            Ok(resolved) => Some(Mirror {
                target: Template::parse("$request_uri").ok()?,
                host: String::new(),
                body: true,
                backend: Some(keep_backend(fragment, resolved)),
                fraction: (numerator < denominator).then_some(MirrorFraction {
                    numerator: numerator as u32,
                    denominator: denominator as u32,
                }),
            }),
            Err(refusal) => {
                refused_reference(
                    fragment,
                    unresolved,
                    &format!("spec.rules[{rule_index}].filters[{i}].requestMirror.backendRef"),
                    refusal,
                    "nothing is copied",
                );
                None
            }
        }
    }

    /// The endpoint-less backend that stands for what a rule cannot reach, and a split
    /// that answers every request 500.
    pub(crate) fn unresolved_share(
        &self,
        key: &ObjectKey,
        fragment: &mut Fragment,
    ) -> (String, BackendSplit) {
        let name = format!(
            "{}:{}/{}|unresolved",
            fragment.source.kind.as_str().to_ascii_lowercase(),
            key.0,
            key.1
        );
        if !fragment.backends.iter().any(|b| b.backend.name == name) {
            fragment.backends.push(Arc::new(Resolved {
                backend: Arc::new(Backend {
                    name: name.clone(),
                    service: ServiceRef {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        port: String::new(),
                    },
                    endpoints: Vec::new(),
                    upstream: Upstream::default(),
                    policy: TrafficPolicy::default(),
                }),
                problem: None,
            }));
        }
        let split = BackendSplit {
            shares: vec![BackendShare {
                backend: name.clone(),
                weight: 1,
                unresolved: true,
            }],
        };
        (name, split)
    }

    /// A Service reference, resolved; or the `ResolvedRefs: False` reason and a message.
    fn backend(
        &self,
        key: &ObjectKey,
        kind: SourceKind,
        r: &BackendRef,
        reach: &BackendReach,
    ) -> Result<Arc<Resolved>, Refusal> {
        let reference = CoreRef::from(r);
        let namespace = grants::core_reference(
            self.state,
            (kind.as_str(), &key.0),
            &reference,
            "Service",
            "InvalidKind",
        )?;
        let Some(port) = r.port else {
            return Err((
                "BackendNotFound",
                format!("Service {namespace}/{}: a port is required", r.name),
            ));
        };
        let service = IngressServiceBackend {
            name: r.name.clone(),
            port: Some(ServiceBackendPort {
                number: Some(port),
                name: None,
            }),
        };
        let resolved = backend::resolve(
            self.state,
            self.slices,
            &namespace,
            &service,
            &reach.upstream,
            &reach.policy,
        );
        match &resolved.problem {
            Some((Reason::ServiceNotFound | Reason::ServicePortNotFound, message)) => {
                Err(("BackendNotFound", message.clone()))
            }
            _ => Ok(Arc::new(resolved)),
        }
    }
}

/// Adds a resolved backend to the fragment (once); its name.
fn keep_backend(fragment: &mut Fragment, resolved: Arc<Resolved>) -> String {
    let name = resolved.backend.name.clone();
    if !fragment.backends.iter().any(|b| b.backend.name == name) {
        fragment.backends.push(resolved);
    }
    name
}

/// Reports a backend reference that did not resolve (`field` names it, `consequence` says
/// what becomes of the traffic), and keeps the first such refusal for the route's status.
fn refused_reference(
    fragment: &mut Fragment,
    unresolved: &mut Result<(), Refusal>,
    field: &str,
    (reason, message): Refusal,
    consequence: &str,
) {
    fragment.diagnostics.push(Diagnostic {
        object: fragment.object.clone(),
        reason: if reason == "RefNotPermitted" {
            Reason::RefNotPermitted
        } else {
            Reason::ServiceNotFound
        },
        message: format!("{field}: {message}; {consequence}"),
    });
    if unresolved.is_ok() {
        *unresolved = Err((reason, message));
    }
}

/// How a rule's backends are spoken to (gRPC for GRPCRoute) and the traffic policy its
/// `timeouts` ask for.
#[derive(Default)]
pub(crate) struct BackendReach {
    pub upstream: Upstream,
    pub policy: TrafficPolicy,
}

/// The traffic policy of a rule's `timeouts`. Portico bounds each wait on the backend
/// (connecting, each write, each read) rather than the whole exchange: `backendRequest`
/// bounds one attempt's waits, `request` bounds them too and starts no retry after it
/// has passed. `0s` turns a timeout off (the proxy's defaults then apply).
fn timeouts_policy(
    timeouts: Option<&HttpRouteTimeouts>,
    report: &mut dyn FnMut(String),
) -> TrafficPolicy {
    let mut policy = TrafficPolicy::default();
    let Some(t) = timeouts else {
        return policy;
    };
    let mut parse = |field: &str, text: Option<&String>| {
        let text = text?;
        match gateway_duration(text) {
            Ok(ms) => ms,
            Err(why) => {
                report(format!(
                    "timeouts.{field}: {text:?} {why}; the default applies"
                ));
                None
            }
        }
    };
    let request = parse("request", t.request.as_ref());
    let backend_request = parse("backendRequest", t.backend_request.as_ref());
    if let (Some(r), Some(b)) = (request, backend_request) {
        if b > r {
            report(format!(
                "timeouts.backendRequest: {b} ms is longer than timeouts.request ({r} ms); the request timeout bounds it"
            ));
        }
    }
    for bound in [backend_request, request].into_iter().flatten() {
        policy.connect_timeout_ms = policy.connect_timeout_ms.min(bound);
        policy.read_timeout_ms = policy.read_timeout_ms.min(bound);
        policy.send_timeout_ms = policy.send_timeout_ms.min(bound);
    }
    if let Some(r) = request {
        policy.retry.timeout_ms = r;
    }
    policy
}

/// A Gateway API duration (GEP-2257: one to four `<number><unit>` parts, units `h`, `m`,
/// `s`, `ms`) in milliseconds; `None` for a zero duration, which means "no timeout".
fn gateway_duration(text: &str) -> Result<Option<u64>, &'static str> {
    let mut rest = text;
    let mut total: u64 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err("is not a duration such as 500ms, 10s or 1h30m");
        }
        let number: u64 = rest[..digits].parse().map_err(|_| "is not a duration")?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err("has a part without a unit of h, m, s or ms");
        };
        rest = &rest[len..];
        total += number * unit_ms;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err("is not a duration such as 500ms, 10s or 1h30m");
    }
    Ok((total > 0).then_some(total))
}

/// A Gateway API rule's route (match `path` of rule `rule`), as merging takes it.
pub(crate) fn fragment_route(
    route: Route,
    rule: usize,
    path: usize,
    path_type: &'static str,
) -> FragmentRoute {
    FragmentRoute {
        route,
        ssl_redirect: false,
        rule,
        path,
        path_type,
        regex_host: false,
    }
}

/// A rule's problems, as diagnostics on the route.
pub(crate) fn report_problems(fragment: &mut Fragment, problems: Vec<(Reason, String)>) {
    let object = &fragment.object;
    fragment
        .diagnostics
        .extend(problems.into_iter().map(|(reason, message)| Diagnostic {
            object: object.clone(),
            reason,
            message,
        }));
}

/// The route's routes, for each hostname it has.
pub(crate) fn add_for_hosts(
    fragment: &mut Fragment,
    hosts: &[HostMatch],
    routes: &[FragmentRoute],
) {
    for host in hosts {
        fragment.rules.push((host.clone(), routes.to_vec()));
    }
}

/// The hostnames a route has on a listener: Gateway API's intersection of the two.
pub(crate) fn intersect(listener: Option<&HostMatch>, route: &[HostMatch]) -> Vec<HostMatch> {
    let Some(listener) = listener else {
        return if route.is_empty() {
            vec![HostMatch::Any]
        } else {
            route.to_vec()
        };
    };
    if route.is_empty() {
        return vec![listener.clone()];
    }
    let mut out = Vec::new();
    for h in route {
        let meet = match (listener, h) {
            (l, h) if l == h => Some(h.clone()),
            (HostMatch::Suffix(_), HostMatch::Exact(name)) if listener.covers(name) => {
                Some(h.clone())
            }
            (HostMatch::Exact(name), HostMatch::Suffix(_)) if h.covers(name) => {
                Some(listener.clone())
            }
            (HostMatch::Suffix(l), HostMatch::Suffix(r)) => {
                if listener.covers(r) {
                    Some(h.clone())
                } else if h.covers(l) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(m) = meet.filter(|m| !out.contains(m)) {
            out.push(m);
        }
    }
    out
}

/// The path of a match, and its type's name.
fn path_of(m: &HttpRouteMatch) -> Result<(PathMatch, &'static str), String> {
    let (kind, value) = match &m.path {
        None => ("PathPrefix", "/"),
        Some(p) => (
            p.type_.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        ),
    };
    let path = match kind {
        "Exact" | "PathPrefix" if !value.starts_with('/') => {
            return Err(format!("value {value:?} must start with '/'"))
        }
        "Exact" => (PathMatch::Exact(value.to_string()), "Exact"),
        "PathPrefix" => (PathMatch::prefix(value), "PathPrefix"),
        "RegularExpression" => {
            portico_model::pattern::path_regex(value)
                .map_err(|e| format!("RegularExpression {value:?} does not compile: {e}"))?;
            (PathMatch::Regex(value.to_string()), "RegularExpression")
        }
        other => return Err(format!("type {other:?} is not a path match type")),
    };
    Ok(path)
}

/// The conditions of a match beyond its path; `None` when there are none.
fn conditions_of(m: &HttpRouteMatch) -> Option<RequestConditions> {
    let conditions = RequestConditions {
        headers: value_conditions(&m.headers, true),
        methods: m.method.iter().map(|x| x.to_ascii_uppercase()).collect(),
        query: value_conditions(&m.query_params, false),
    };
    (conditions != RequestConditions::default()).then_some(conditions)
}

/// Header (lower-cased names) or query parameter matches as conditions.
pub(crate) fn value_conditions(list: &[ValueMatch], lower: bool) -> Vec<ValueCondition> {
    {
        let mut out: Vec<ValueCondition> = Vec::new();
        for v in list {
            let name = if lower {
                v.name.to_ascii_lowercase()
            } else {
                v.name.clone()
            };
            // The first match of a name counts; later ones are ignored, as the spec says.
            if out.iter().any(|c| c.name == name) {
                continue;
            }
            let rule = match v.type_.as_deref() {
                Some("RegularExpression") => ValueRule::Matches(format!("^(?:{})$", v.value)),
                _ => ValueRule::Equals(v.value.clone()),
            };
            out.push(ValueCondition { name, rule });
        }
        out
    }
}

/// Applies a rule's filters to its route; `true` when one cannot be applied.
pub(crate) fn apply_filters(
    filters: &[HttpRouteFilter],
    route: &mut Route,
    report: &mut dyn FnMut(String),
) -> bool {
    let mut broken = false;
    for (i, f) in filters.iter().enumerate() {
        let field = format!("filters[{i}]");
        match f.type_.as_str() {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let request = f.type_ == "RequestHeaderModifier";
                let modifier = if request {
                    f.request_header_modifier.as_ref()
                } else {
                    f.response_header_modifier.as_ref()
                };
                let Some(m) = modifier else {
                    report(format!("{field}: {} has no settings", f.type_));
                    broken = true;
                    continue;
                };
                let edits = route
                    .headers
                    .get_or_insert_with(|| Box::new(HeaderEdits::default()));
                let changes = if request {
                    &mut edits.request
                } else {
                    &mut edits.response
                };
                header_changes(m, changes);
            }
            "RequestRedirect" => {
                let Some(r) = &f.request_redirect else {
                    report(format!("{field}: RequestRedirect has no settings"));
                    broken = true;
                    continue;
                };
                let code = r.status_code.unwrap_or(302);
                if ![301, 302, 303, 307, 308].contains(&code) {
                    report(format!(
                        "{field}: statusCode {code} is not a redirect status"
                    ));
                    broken = true;
                    continue;
                }
                let rw = route
                    .rewrite
                    .get_or_insert_with(|| Box::new(Rewrite::default()));
                rw.redirect = Some(Redirect {
                    code: code as u16,
                    target: redirect_target(r),
                    relative: false,
                    with_port: false,
                    path: r.path.as_ref().and_then(|p| match p.type_.as_str() {
                        "ReplaceFullPath" => Some(RedirectPath::Full(
                            p.replace_full_path.clone().unwrap_or_else(|| "/".into()),
                        )),
                        // The prefix is the match's: filled in per match.
                        "ReplacePrefixMatch" => Some(RedirectPath::Prefix(PrefixSwap {
                            from: String::new(),
                            to: p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
                        })),
                        _ => None,
                    }),
                });
            }
            "CORS" => {
                let Some(c) = &f.cors else {
                    report(format!("{field}: CORS has no settings"));
                    broken = true;
                    continue;
                };
                match cors_of(c) {
                    Ok(cors) => route.cors = Some(Box::new(cors)),
                    Err(why) => {
                        report(format!("{field}.cors.{why}"));
                        broken = true;
                    }
                }
            }
            // Resolved by `RouteProcessor::mirror`, which can reach Services.
            "RequestMirror" => {}
            "URLRewrite" => {
                let Some(u) = &f.url_rewrite else {
                    report(format!("{field}: URLRewrite has no settings"));
                    broken = true;
                    continue;
                };
                let rw = route
                    .rewrite
                    .get_or_insert_with(|| Box::new(Rewrite::default()));
                if let Some(h) = u.hostname.as_ref().filter(|h| !h.is_empty()) {
                    rw.upstream_host = Some(h.clone());
                }
                match u.path.as_ref().map(|p| p.type_.as_str()) {
                    Some("ReplaceFullPath") => {
                        rw.target = u.path.as_ref().and_then(|p| p.replace_full_path.clone());
                    }
                    Some("ReplacePrefixMatch") => {
                        rw.replace_prefix = Some(PrefixSwap {
                            from: String::new(),
                            to: u
                                .path
                                .as_ref()
                                .and_then(|p| p.replace_prefix_match.clone())
                                .unwrap_or_else(|| "/".into()),
                        });
                    }
                    _ => {}
                }
            }
            other => {
                report(format!(
                    "{field}: filter type {other:?} is not supported yet; the rule answers 500"
                ));
                broken = true;
            }
        }
    }
    broken
}

/// The CORS filter's settings under Gateway API's rules; or which field is wrong and why.
fn cors_of(c: &CorsFilter) -> Result<Cors, String> {
    if let Some(bad) = c
        .allow_origins
        .iter()
        .find(|o| *o != "*" && !cors_origin_is_valid(o))
    {
        return Err(format!(
            "allowOrigins: {bad:?} is not an origin such as https://app.example.com"
        ));
    }
    let header_list =
        |field: &str, names: &[String]| match names.iter().find(|n| http_token(n).is_none()) {
            Some(bad) => Err(format!("{field}: {bad:?} is not a header name or method")),
            None => Ok(names.join(", ")),
        };
    Ok(Cors {
        allow_origins: c.allow_origins.clone(),
        allow_methods: header_list("allowMethods", &c.allow_methods)?,
        allow_headers: header_list("allowHeaders", &c.allow_headers)?,
        expose_headers: header_list("exposeHeaders", &c.expose_headers)?,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        max_age_secs: c.max_age.map_or(5, |s| u64::try_from(s).unwrap_or(0)),
        rules: CorsRules::GatewayApi,
    })
}

/// `name` when it is an HTTP token (a header name or a method) or `*`.
fn http_token(name: &str) -> Option<&str> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    (!name.is_empty() && name.bytes().all(tchar)).then_some(name)
}

/// Fills in the matched prefix of `ReplacePrefixMatch` filters; `false` when the match
/// is not a prefix, which such filters need.
fn prefix_for_rewrites(rw: &mut Rewrite, path: &PathMatch) -> bool {
    let needs = rw.replace_prefix.is_some()
        || matches!(
            rw.redirect.as_ref().and_then(|r| r.path.as_ref()),
            Some(RedirectPath::Prefix(_))
        );
    if !needs {
        return true;
    }
    let PathMatch::Prefix(prefix) = path else {
        return false;
    };
    if let Some(swap) = rw.replace_prefix.as_mut() {
        swap.from = prefix.clone();
    }
    if let Some(RedirectPath::Prefix(swap)) = rw.redirect.as_mut().and_then(|r| r.path.as_mut()) {
        swap.from = prefix.clone();
    }
    true
}

fn header_changes(m: &HeaderModifier, changes: &mut HeaderChanges) {
    for h in &m.set {
        changes
            .set
            .push((h.name.to_ascii_lowercase(), h.value.clone()));
    }
    for h in &m.add {
        changes
            .add
            .push((h.name.to_ascii_lowercase(), h.value.clone()));
    }
    for name in &m.remove {
        changes.remove.push(name.to_ascii_lowercase());
    }
}

/// The `Location` template of a redirect: what the filter sets, the request's own
/// scheme, host and path for the rest. Without a scheme or port, the port is the one
/// the request came to, which for Gateway listeners on 80 and 443 is the scheme's own.
fn redirect_target(r: &super::types::RequestRedirect) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("$scheme");
    let host = r.hostname.as_deref().unwrap_or("$host");
    let port = match (r.port, r.scheme.as_deref()) {
        (Some(80), Some("http")) | (Some(443), Some("https")) => String::new(),
        (Some(80), None) | (Some(443), None) => String::new(),
        (Some(p), _) => format!(":{p}"),
        (None, _) => String::new(),
    };
    format!("{scheme}://{host}{port}$request_uri")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<HostMatch> {
        list.iter()
            .map(|h| HostMatch::gateway(h).unwrap())
            .collect()
    }

    #[test]
    fn durations_are_read_as_gep_2257_writes_them() {
        assert_eq!(gateway_duration("500ms"), Ok(Some(500)));
        assert_eq!(gateway_duration("1h30m"), Ok(Some(5_400_000)));
        assert_eq!(gateway_duration("2s250ms"), Ok(Some(2_250)));
        assert_eq!(
            gateway_duration("0s"),
            Ok(None),
            "zero turns the timeout off"
        );
        for bad in [
            "",
            "5",
            "1.5s",
            "10sec",
            "-1s",
            "123456s",
            "1h1m1s1ms1h",
            "1d",
        ] {
            assert!(gateway_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeouts_bound_each_wait_and_the_request_timeout_stops_retries() {
        let problems = std::cell::RefCell::new(Vec::new());
        let mut report = |m: String| problems.borrow_mut().push(m);
        let t = |request: &str, backend: &str| HttpRouteTimeouts {
            request: (!request.is_empty()).then(|| request.to_string()),
            backend_request: (!backend.is_empty()).then(|| backend.to_string()),
        };
        let defaults = TrafficPolicy::default();
        let p = timeouts_policy(Some(&t("500ms", "")), &mut report);
        assert_eq!(
            (p.connect_timeout_ms, p.read_timeout_ms, p.send_timeout_ms),
            (500, 500, 500)
        );
        assert_eq!(p.retry.timeout_ms, 500);
        let p = timeouts_policy(Some(&t("", "2s")), &mut report);
        assert_eq!((p.read_timeout_ms, p.retry.timeout_ms), (2_000, 0));
        assert_eq!(p.connect_timeout_ms, 2_000);
        let p = timeouts_policy(Some(&t("0s", "0s")), &mut report);
        assert_eq!(p, defaults, "0s: no timeout of the route's own");
        assert!(problems.borrow().is_empty(), "{problems:?}");
        let p = timeouts_policy(Some(&t("1s", "3s")), &mut report);
        assert_eq!(p.read_timeout_ms, 1_000);
        let p = timeouts_policy(Some(&t("soon", "")), &mut report);
        assert_eq!(p, defaults);
        let problems = problems.into_inner();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[1].contains("timeouts.request: \"soon\""),
            "{problems:?}"
        );
    }

    #[test]
    fn hostnames_intersect_as_gateway_api_defines() {
        let l = |h: &str| HostMatch::gateway(h).unwrap();
        assert_eq!(intersect(None, &[]), vec![HostMatch::Any]);
        assert_eq!(
            intersect(Some(&l("*.example.com")), &[]),
            hosts(&["*.example.com"])
        );
        assert_eq!(
            intersect(
                Some(&l("*.example.com")),
                &hosts(&[
                    "a.example.com",
                    "b.c.example.com",
                    "example.com",
                    "other.org"
                ])
            ),
            hosts(&["a.example.com", "b.c.example.com"])
        );
        assert_eq!(
            intersect(Some(&l("a.example.com")), &hosts(&["*.example.com"])),
            hosts(&["a.example.com"])
        );
        assert_eq!(
            intersect(
                Some(&l("*.example.com")),
                &hosts(&["*.foo.example.com", "*.org"])
            ),
            hosts(&["*.foo.example.com"])
        );
        assert_eq!(
            intersect(Some(&l("*.foo.example.com")), &hosts(&["*.example.com"])),
            hosts(&["*.foo.example.com"])
        );
        assert!(intersect(Some(&l("a.example.com")), &hosts(&["b.example.com"])).is_empty());
    }

    #[test]
    fn redirect_targets_keep_what_the_filter_leaves_unset() {
        let r = |scheme: Option<&str>, host: Option<&str>, port: Option<i32>| {
            redirect_target(&super::super::types::RequestRedirect {
                scheme: scheme.map(Into::into),
                hostname: host.map(Into::into),
                port,
                ..Default::default()
            })
        };
        assert_eq!(r(None, None, None), "$scheme://$host$request_uri");
        assert_eq!(r(Some("https"), None, None), "https://$host$request_uri");
        assert_eq!(
            r(Some("https"), Some("example.org"), Some(443)),
            "https://example.org$request_uri"
        );
        assert_eq!(
            r(Some("http"), Some("example.org"), Some(8080)),
            "http://example.org:8080$request_uri"
        );
        assert_eq!(
            r(None, Some("example.org"), Some(80)),
            "$scheme://example.org$request_uri"
        );
    }
}
