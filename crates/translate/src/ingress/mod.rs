//! The Ingress processor: one admitted Ingress's rules, TLS entries and default backend,
//! as a [`Fragment`] that depends on nothing but that Ingress and the objects it names.
//! Fragments are merged (oldest first, conflicts resolved) by `merge.rs`, and reused
//! across translations while none of the objects they read changed (`fragment.rs`).
//!
//! The annotations are read by group, each a function from annotations (and the objects
//! they name) to typed policy: `auth`, `traffic`, `routing`, `headers`, `upstream`. This
//! file composes them into the policy every route of the Ingress gets, and builds the
//! routes from the rules and paths (`paths`).

mod auth;
mod fragment;
mod headers;
mod paths;
mod routing;
mod tls;
mod traffic;
mod upstream;

pub(crate) use fragment::{Fragment, FragmentRoute, TlsClaim};

/// Annotations under ingress-nginx's prefix, as the readers' tests write them.
#[cfg(test)]
fn nginx_annotations(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), v.to_string()))
        .collect()
}

use crate::annotations::{Annotations, NGINX_PREFIX};
use crate::backend::{self, Resolved, SliceIndex};
use crate::cache::{ClusterState, ObjectKey};
use crate::controller_config::ControllerConfig;
use crate::diagnostic::{Diagnostic, ObjectRef, Problem, Problems, Reason};
use crate::secret::{self, CheckedCertificate};
use fragment::ObjectReads;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressBackend, IngressServiceBackend, ServiceBackendPort,
};
use portico_model::{
    AccessPolicy, ClientAuth, Cors, ErrorPages, HeaderEdits, HostMatch, RateLimit,
    RequestConditions, ResponseRate, Rewrite, Route, SessionAffinity, Template, TrafficPolicy,
    Upstream,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Work shared by the Ingresses processed in one translation: each Service port and
/// Secret is resolved once, whoever names it.
pub(crate) struct Lookups<'a> {
    pub state: &'a ClusterState,
    /// The controller ConfigMap's settings.
    pub config: &'a ControllerConfig,
    pub slices: &'a SliceIndex,
    pub resolved: HashMap<String, Arc<Resolved>>,
    pub secrets: HashMap<ObjectKey, Result<Arc<CheckedCertificate>, (Reason, String)>>,
}

/// What an Ingress's annotations say about all of its routes.
struct RoutePolicy {
    ssl_redirect: bool,
    force_ssl_redirect: bool,
    upstream: Upstream,
    /// Verify (or send SNI) with each Service's cluster DNS name, as no name was given.
    server_name_from_service: bool,
    traffic: TrafficPolicy,
    max_body_bytes: Option<u64>,
    /// Cookie affinity; an empty cookie path stands for each route's own path.
    affinity: Option<SessionAffinity>,
    access: Option<AccessPolicy>,
    /// `use-regex`, or `rewrite-target` (which implies it): Prefix paths are patterns.
    regex_paths: bool,
    rewrite: Option<Rewrite>,
    rate_limit: Option<RateLimit>,
    cors: Option<Cors>,
    /// `match-*`. `Err` when one did not parse: the Ingress then routes nothing, since
    /// without its conditions a route would take traffic meant for others.
    conditions: Result<Option<RequestConditions>, ()>,
    headers: Option<HeaderEdits>,
    /// `default-backend`, resolved.
    fallback_backend: Option<String>,
    /// `custom-http-errors`.
    error_statuses: Option<Vec<u16>>,
    preserve_trailing_slash: bool,
    /// `enable-access-log: "false"`.
    no_access_log: bool,
    response_rate: Option<ResponseRate>,
    /// `from-to-www-redirect`.
    www_redirect: bool,
    tracing: Option<traffic::TracingPolicy>,
    mirror: Option<portico_model::Mirror>,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            ssl_redirect: true,
            force_ssl_redirect: false,
            upstream: Upstream::default(),
            server_name_from_service: false,
            traffic: TrafficPolicy::default(),
            max_body_bytes: Some(traffic::DEFAULT_MAX_BODY_BYTES),
            affinity: None,
            access: None,
            regex_paths: false,
            rewrite: None,
            rate_limit: None,
            cors: None,
            conditions: Ok(None),
            headers: None,
            fallback_backend: None,
            error_statuses: None,
            preserve_trailing_slash: false,
            no_access_log: false,
            response_rate: None,
            www_redirect: false,
            tracing: None,
            mirror: None,
        }
    }
}

/// The problems that make an Ingress's access controls unusable. Each is reported, and
/// together they make every route of the Ingress answer 503.
#[derive(Default)]
struct Refusals(Vec<Problem>);

impl Refusals {
    /// The value, or `None` with the problem kept.
    fn check<T, E: Into<Problem>>(&mut self, read: Result<T, E>) -> Option<T> {
        read.map_err(|e| self.0.push(e.into())).ok()
    }
}

pub(crate) struct IngressProcessor<'a, 'b> {
    lookups: &'b mut Lookups<'a>,
    ingress: &'a Arc<Ingress>,
    namespace: &'a str,
    /// The last service backend named and its backend name.
    last_backend: Option<(&'a IngressServiceBackend, String)>,
    policy: RoutePolicy,
    fragment: Fragment,
}

impl<'a, 'b> IngressProcessor<'a, 'b> {
    pub fn new(lookups: &'b mut Lookups<'a>, ingress: &'a Arc<Ingress>) -> Self {
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let name = ingress.metadata.name.as_deref().unwrap_or_default();
        let object = ObjectRef {
            kind: "Ingress",
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let fragment = Fragment::new(ingress, object);
        IngressProcessor {
            lookups,
            ingress,
            namespace,
            last_backend: None,
            policy: RoutePolicy::default(),
            fragment,
        }
    }

    /// Messages may quote annotations; a URL's credentials are not repeated in Events and logs.
    fn report(&mut self, reason: Reason, message: String) {
        let message = portico_model::redact_userinfo(&message).into_owned();
        self.fragment.diagnostics.push(Diagnostic {
            object: self.fragment.object.clone(),
            reason,
            message,
        });
    }

    fn report_all(&mut self, problems: Problems) {
        for p in problems.0 {
            self.report(p.reason, p.message);
        }
    }

    /// The objects of the Ingress's namespace, read as dependencies of its fragment.
    fn reads(&mut self) -> ObjectReads<'_> {
        ObjectReads::new(
            self.lookups.state,
            self.lookups.slices,
            self.namespace,
            &mut self.fragment.dependencies,
        )
    }

    fn read_annotations(&mut self) {
        for message in crate::compat::ignored(self.ingress.metadata.annotations.as_ref()) {
            self.report(Reason::UnsupportedAnnotation, message);
        }
        let config = self.lookups.config;
        let a = Annotations::with_defaults(
            self.ingress.metadata.annotations.as_ref(),
            &config.annotation_defaults,
        );
        let mut problems = Problems::default();
        self.policy.ssl_redirect = problems.take(a.bool("ssl-redirect")).unwrap_or(true);
        self.policy.force_ssl_redirect =
            problems.take(a.bool("force-ssl-redirect")).unwrap_or(false);
        let upstream = upstream::upstream(&a, &mut self.reads(), &mut problems);
        self.policy.traffic = traffic::traffic(&a, upstream.upstream.protocol, &mut problems);
        (self.policy.upstream, self.policy.server_name_from_service) =
            (upstream.upstream, upstream.server_name_from_service);
        self.policy.max_body_bytes = traffic::max_body_bytes(&a, &mut problems);
        traffic::buffering(&a, &mut problems);
        self.policy.affinity = traffic::affinity(&a, &mut problems);
        self.read_access_controls(&a, &mut problems);
        self.fragment.ciphers = tls::ciphers(&a, &mut problems);
        self.fragment.passthrough = problems.take(a.bool("ssl-passthrough")) == Some(true);
        self.policy.cors = headers::cors(&a, &mut problems);
        let rewrites = routing::rewrites(&a, &mut problems);
        (self.policy.rewrite, self.policy.regex_paths) = (rewrites.rewrite, rewrites.regex_paths);
        self.policy.conditions =
            routing::conditions(&a).map_err(|errors| problems.0.extend(errors));
        self.policy.headers = headers::header_edits(&a, &mut self.reads(), &mut problems);
        self.policy.headers = headers::over_global(self.policy.headers.take(), &config.headers);
        if let Some((service, port)) = problems.take(a.service_ref("default-backend")) {
            self.policy.fallback_backend = self.fallback_backend(&service, port, &mut problems);
        }
        self.policy.error_statuses = problems.take(a.error_statuses("custom-http-errors"));
        // ingress-nginx's `proxy_intercept_errors off`: the upstream's error answers stand.
        if problems.take(a.bool("disable-proxy-intercept-errors")) == Some(true) {
            self.policy.error_statuses = None;
        }
        self.policy.no_access_log = problems.take(a.bool("enable-access-log")) == Some(false);
        self.policy.response_rate = traffic::response_rate(&a, &mut problems);
        self.policy.tracing = traffic::tracing(&a, &mut problems);
        self.policy.mirror = traffic::mirror(&a, &mut problems);
        self.policy.preserve_trailing_slash = problems
            .take(a.bool("preserve-trailing-slash"))
            .unwrap_or(false);
        self.policy.www_redirect = problems
            .take(a.bool("from-to-www-redirect"))
            .unwrap_or(false);
        if problems.take(a.bool("canary")) == Some(true) {
            self.fragment.canary = Some(traffic::canary(&a, &self.fragment.source, &mut problems));
        }
        self.report_all(problems);
    }

    /// Client certificates, source ranges, credentials and rate limits. Unlike tuning, a
    /// control that cannot be used does not fall back to a default: the routes refuse
    /// every request (503).
    fn read_access_controls(&mut self, a: &Annotations<'_>, problems: &mut Problems) {
        let mut refusals = Refusals::default();
        let client_auth: Option<ClientAuth> = refusals
            .check(auth::client_certificates(a, &mut self.reads()))
            .flatten();
        let sources = refusals.check(auth::source_ranges(a));
        let basic = refusals
            .check(auth::basic(a, &mut self.reads(), problems))
            .flatten();
        let every_rule_has_host = self.ingress.spec.as_ref().is_some_and(|spec| {
            spec.default_backend.is_none()
                && spec
                    .rules
                    .iter()
                    .flatten()
                    .all(|r| r.host.as_deref().is_some_and(|h| !h.is_empty()))
        });
        let external = if a.get("auth-url").is_none() && !self.lookups.config.global_auth.is_empty()
        {
            // The controller ConfigMap's, unless the Ingress turns it off. Its warnings
            // were reported on the ConfigMap; only a refusal concerns this Ingress.
            if problems.take(a.bool("enable-global-auth")) == Some(false) {
                None
            } else {
                let global = &self.lookups.config.global_auth;
                let read =
                    global_external_auth(global, every_rule_has_host, &mut Problems::default());
                refusals
                    .check(read.map_err(|p| {
                        Problem::new(p.reason, format!("controller ConfigMap: {}", p.message))
                    }))
                    .flatten()
            }
        } else {
            refusals
                .check(auth::external(a, every_rule_has_host, problems))
                .flatten()
                .map(|mut external| {
                    external.request_headers =
                        auth::proxy_set_headers(a, &mut self.reads(), problems);
                    external
                })
        };
        let jwt = refusals.check(auth::jwt(a, &mut self.reads())).flatten();
        self.policy.rate_limit = refusals.check(traffic::rate_limit(a)).flatten();
        let satisfy_any = refusals.check(auth::satisfy_any(a)).unwrap_or(false);
        self.fragment.client_auth = client_auth;
        let (allow, deny) = sources.map_or((None, None), |s| (s.allow, s.deny));
        let controlled = allow.is_some()
            || deny.is_some()
            || basic.is_some()
            || external.is_some()
            || jwt.is_some();
        if !controlled && refusals.0.is_empty() {
            return;
        }
        let mut reasons = Vec::new();
        for p in refusals.0 {
            let message = portico_model::redact_userinfo(&p.message).into_owned();
            problems.push(Problem::new(
                p.reason,
                format!("{message}; its routes answer 503"),
            ));
            reasons.push(message);
        }
        self.policy.access = Some(AccessPolicy {
            allow_sources: allow.unwrap_or_default(),
            deny_sources: deny.unwrap_or_default(),
            basic_auth: basic,
            external_auth: external,
            jwt,
            satisfy_any,
            refuse: (!reasons.is_empty()).then(|| reasons.join("; ")),
        });
    }

    /// The `default-backend` Service as a plain HTTP backend; without a port, its first.
    fn fallback_backend(
        &mut self,
        service: &str,
        port: Option<String>,
        problems: &mut Problems,
    ) -> Option<String> {
        let port = match port {
            Some(p) => match p.parse::<i32>() {
                Ok(number) => ServiceBackendPort {
                    number: Some(number),
                    name: None,
                },
                Err(_) => ServiceBackendPort {
                    number: None,
                    name: Some(p),
                },
            },
            None => match backend::first_port(self.lookups.state, self.namespace, service) {
                Some(number) => ServiceBackendPort {
                    number: Some(number),
                    name: None,
                },
                None => {
                    self.reads().service(service);
                    let msg = format!("annotation default-backend: service {}/{service} does not exist or has no port", self.namespace);
                    problems.push(Problem::new(Reason::ServiceNotFound, msg));
                    return None;
                }
            },
        };
        let svc = IngressServiceBackend {
            name: service.to_string(),
            port: Some(port),
        };
        self.reads().service(service);
        let (upstream, traffic) = (Upstream::default(), TrafficPolicy::default());
        let name = backend::backend_name(self.namespace, &svc, &upstream, &traffic);
        let resolved = self.resolved(name.clone(), &svc, &upstream, &traffic);
        if let Some((reason, message)) = resolved.problem.clone() {
            problems.push(Problem::new(
                reason,
                format!("annotation default-backend: {message}"),
            ));
        }
        Some(name)
    }

    /// Records which certificate each host of each `spec.tls` entry asks for.
    fn process_tls(&mut self) {
        let Some(spec) = self.ingress.spec.as_ref() else {
            return;
        };
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let certificate = match tls.secret_name.as_deref() {
                None | Some("") => None,
                Some(name) => self.certificate(i, name),
            };
            // An entry without hosts covers the hosts of this Ingress's rules.
            let hosts: Vec<&str> = match tls.hosts.as_deref() {
                Some(h) if !h.is_empty() => h.iter().map(String::as_str).collect(),
                _ => spec
                    .rules
                    .iter()
                    .flatten()
                    .filter_map(|r| r.host.as_deref())
                    .collect(),
            };
            for (j, text) in hosts.into_iter().enumerate() {
                match text.parse::<HostMatch>() {
                    Ok(host) => self.fragment.tls.push(TlsClaim {
                        host,
                        certificate: certificate.clone(),
                        entry: i,
                        listener: false,
                    }),
                    Err(e) => self.report(
                        Reason::InvalidHost,
                        format!("spec.tls[{i}].hosts[{j}] {text:?}: {}", e.reason),
                    ),
                }
            }
        }
    }

    /// The certificate name of Secret `name` in this namespace, `None` when it cannot be used.
    fn certificate(&mut self, i: usize, name: &str) -> Option<String> {
        let key = (self.namespace.to_string(), name.to_string());
        let secret = self.reads().secret(name);
        let checked = self
            .lookups
            .secrets
            .entry(key.clone())
            .or_insert_with(|| {
                secret::tls_certificate_of(&format!("{}/{name}", key.0), secret.as_deref())
                    .map(Arc::new)
            })
            .clone();
        match checked {
            Ok(c) => {
                if let Some(w) = &c.warning {
                    self.report(
                        Reason::CertificateExpired,
                        format!("spec.tls[{i}].secretName: {w}"),
                    );
                }
                let name = c.certificate.name.clone();
                self.fragment.certificates.push(c);
                Some(name)
            }
            Err((reason, message)) => {
                self.report(reason, format!("spec.tls[{i}].secretName: {message}; its hosts get the default certificate"));
                None
            }
        }
    }

    pub fn process(mut self) -> Fragment {
        let ingress = self.ingress;
        let Some(spec) = ingress.spec.as_ref() else {
            self.report(Reason::InvalidIngress, "spec is missing".into());
            return self.fragment;
        };
        let rules = spec.rules.as_deref().unwrap_or_default();
        if rules.is_empty() && spec.default_backend.is_none() {
            self.report(
                Reason::InvalidIngress,
                "either spec.defaultBackend or spec.rules must be specified".into(),
            );
            return self.fragment;
        }
        if let Some((key, word)) = self
            .lookups
            .config
            .blocked_word(ingress.metadata.annotations.as_ref())
        {
            let message = format!("annotation {key} contains {word:?}, a word the controller ConfigMap's annotation-value-word-blocklist refuses; the Ingress is skipped");
            self.report(Reason::InvalidAnnotation, message);
            return self.fragment;
        }
        self.read_annotations();
        self.process_tls();
        if let Some(default) = &spec.default_backend {
            self.fragment.default_backend = self.backend(default, || "spec.defaultBackend".into());
        }
        if self.policy.conditions.is_err() {
            return self.fragment;
        }
        for (i, rule) in rules.iter().enumerate() {
            let host_text = rule.host.as_deref().unwrap_or("");
            let host: HostMatch = match host_text.parse() {
                Ok(h) => h,
                Err(e) => {
                    self.report(
                        Reason::InvalidHost,
                        format!("spec.rules[{i}].host {host_text:?}: {}", e.reason),
                    );
                    continue;
                }
            };
            let Some(http) = rule.http.as_ref() else {
                continue;
            };
            // Field names are only formatted when something is wrong with the field.
            let field = |j: usize| format!("spec.rules[{i}].http.paths[{j}]");
            let mut routes = Vec::with_capacity(http.paths.len());
            for (j, path) in http.paths.iter().enumerate() {
                let matched = if self.policy.regex_paths {
                    paths::regex_path_match(path.path_type.as_str(), path.path.as_deref())
                } else {
                    paths::path_match(path.path_type.as_str(), path.path.as_deref())
                };
                let matcher = match matched {
                    Ok(m) => m,
                    Err(why) => {
                        self.report(Reason::InvalidPath, format!("{}: {why}", field(j)));
                        continue;
                    }
                };
                let Some(backend) = self.backend(&path.backend, || format!("{}.backend", field(j)))
                else {
                    continue;
                };
                let affinity = self.policy.affinity.clone().map(|mut a| {
                    if a.cookie.path.is_empty() {
                        a.cookie.path = matcher.path().to_string();
                    }
                    a
                });
                let access =
                    self.policy
                        .access
                        .as_ref()
                        .and_then(|access| match path.path.as_deref() {
                            Some(p) if self.lookups.config.is_no_auth_location(p) => {
                                auth::without_external_auth(access)
                            }
                            _ => Some(access.clone()),
                        });
                let route = Route {
                    path: matcher,
                    backend,
                    source: self.fragment.source.clone(),
                    redirect_to_https: self.policy.force_ssl_redirect,
                    max_body_bytes: self.policy.max_body_bytes,
                    affinity: affinity.map(Box::new),
                    canary: None,
                    access: access.map(Box::new),
                    rewrite: self.policy.rewrite.clone().map(Box::new),
                    rate_limit: self.policy.rate_limit.clone().map(Box::new),
                    cors: self.policy.cors.clone().map(Box::new),
                    conditions: self
                        .policy
                        .conditions
                        .clone()
                        .unwrap_or_default()
                        .map(Box::new),
                    headers: self.policy.headers.clone().map(Box::new),
                    fallback_backend: self.policy.fallback_backend.clone(),
                    error_pages: self.error_pages(&path.backend).map(Box::new),
                    preserve_trailing_slash: self.policy.preserve_trailing_slash,
                    no_access_log: self.policy.no_access_log,
                    https_only: false,
                    response_rate: self.policy.response_rate.map(Box::new),
                    tracing: self.route_tracing(&path.backend, path.path.as_deref().unwrap_or("/")),
                    mirror: self.policy.mirror.clone().map(Box::new),
                    split: None,
                };
                routes.push(FragmentRoute {
                    route,
                    ssl_redirect: self.policy.ssl_redirect,
                    rule: i,
                    path: j,
                    path_type: paths::static_path_type(&path.path_type),
                    regex_host: self.policy.regex_paths,
                });
            }
            self.fragment.rules.push((host, routes));
        }
        self.add_aliases();
        if self.policy.www_redirect {
            self.add_www_redirects();
        }
        self.fragment
    }

    /// The Ingress's tracing policy for one route, its variables (`$service_name`...) filled in.
    fn route_tracing(
        &self,
        backend: &IngressBackend,
        location_path: &str,
    ) -> Option<Box<portico_model::RouteTracing>> {
        let policy = self.policy.tracing.as_ref()?;
        let service = backend.service.as_ref();
        let known = |name: &str| {
            Some(match name {
                "namespace" => self.namespace.to_string(),
                "ingress_name" => self.fragment.object.name.clone(),
                "service_name" => service.map(|s| s.name.clone()).unwrap_or_default(),
                "service_port" => backend::port_text(service.and_then(|s| s.port.as_ref())),
                "location_path" => location_path.to_string(),
                _ => return None,
            })
        };
        let operation_name = policy
            .operation_name
            .as_deref()
            .and_then(|text| Template::parse_with(text, known).ok());
        Some(Box::new(portico_model::RouteTracing {
            enabled: policy.enabled,
            trust_incoming: policy.trust_incoming,
            operation_name,
        }))
    }

    /// `custom-http-errors` for a route to `backend`: the pages come from `default-backend`
    /// or, without it, from the default backend of the snapshot.
    fn error_pages(&self, backend: &IngressBackend) -> Option<ErrorPages> {
        let statuses = self.policy.error_statuses.clone()?;
        let service = backend.service.as_ref()?;
        Some(ErrorPages {
            statuses,
            backend: self.policy.fallback_backend.clone(),
            namespace: self.namespace.to_string(),
            ingress: self.fragment.object.name.clone(),
            service: service.name.clone(),
            service_port: backend::port_text(service.port.as_ref()),
        })
    }

    /// `from-to-www-redirect`: see [`routing::www_redirects`].
    fn add_www_redirects(&mut self) {
        self.fragment.www_redirects = routing::www_redirects(&self.fragment.rules);
    }

    /// `server-alias`: each alias serves the routes (and TLS) of the Ingress's named hosts.
    fn add_aliases(&mut self) {
        let a = Annotations::new(self.ingress.metadata.annotations.as_ref());
        let mut problems = Problems::default();
        let aliases = routing::aliases(&a, &mut problems);
        self.report_all(problems);
        if aliases.is_empty() {
            return;
        }
        routing::add_aliases(&mut self.fragment, aliases);
    }

    /// Resolves a backend reference, reporting problems; `None` when it cannot be routed at all.
    fn backend(
        &mut self,
        backend: &'a IngressBackend,
        field: impl Fn() -> String,
    ) -> Option<String> {
        let Some(svc) = backend.service.as_ref() else {
            let what = if backend.resource.is_some() {
                "resource backends are not supported"
            } else {
                "no service is named"
            };
            self.report(Reason::UnsupportedBackend, format!("{}: {what}", field()));
            return None;
        };
        let mut upstream = self.policy.upstream.clone();
        if self.policy.server_name_from_service {
            upstream.server_name = Some(format!("{}.{}.svc", svc.name, self.namespace));
        }
        // The paths of one Ingress mostly name the same Service: reuse the last name.
        let name = match &self.last_backend {
            Some((last, name)) if *last == svc => name.clone(),
            _ => {
                self.reads().service(&svc.name);
                let name =
                    backend::backend_name(self.namespace, svc, &upstream, &self.policy.traffic);
                self.last_backend = Some((svc, name.clone()));
                name
            }
        };
        let traffic = self.policy.traffic.clone();
        let resolved = self.resolved(name.clone(), svc, &upstream, &traffic);
        if let Some((reason, message)) = resolved.problem.clone() {
            self.report(reason, format!("{}: {message}", field()));
        }
        Some(name)
    }

    /// The backend `name` of a Service port, resolved once per translation and listed
    /// among the fragment's backends.
    fn resolved(
        &mut self,
        name: String,
        svc: &IngressServiceBackend,
        upstream: &Upstream,
        traffic: &TrafficPolicy,
    ) -> Arc<Resolved> {
        let lookups = &mut *self.lookups;
        let namespace = self.namespace;
        let resolved = lookups
            .resolved
            .entry(name)
            .or_insert_with(|| {
                Arc::new(backend::resolve(
                    lookups.state,
                    lookups.slices,
                    namespace,
                    svc,
                    upstream,
                    traffic,
                ))
            })
            .clone();
        if !self
            .fragment
            .backends
            .iter()
            .any(|b| Arc::ptr_eq(b, &resolved))
        {
            self.fragment.backends.push(Arc::clone(&resolved));
        }
        resolved
    }
}

/// External auth from the controller ConfigMap's `global-auth-*` keys, read as the
/// `auth-*` annotations they stand for.
pub(crate) fn global_external_auth(
    keys: &std::collections::BTreeMap<String, String>,
    every_rule_has_host: bool,
    problems: &mut Problems,
) -> Result<Option<portico_model::ExternalAuth>, Problem> {
    auth::external(
        &Annotations::global_auth(keys),
        every_rule_has_host,
        problems,
    )
}

/// Whether `value` is one the annotation `name` accepts, checked the way every annotation
/// is: by processing an Ingress that sets it. `Err` holds the first problem's message.
pub(crate) fn check_annotation_default(name: &str, value: &str) -> Result<(), String> {
    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, IngressRule, IngressSpec,
    };
    let key = format!("{NGINX_PREFIX}{name}");
    let mut ingress = Ingress::default();
    ingress.metadata.namespace = Some("check".into());
    ingress.metadata.name = Some("check".into());
    ingress.metadata.annotations = Some([(key.clone(), value.to_string())].into());
    ingress.spec = Some(IngressSpec {
        rules: Some(vec![IngressRule {
            host: Some("check.invalid".into()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some("/".into()),
                    path_type: "Prefix".into(),
                    backend: IngressBackend {
                        service: Some(IngressServiceBackend {
                            name: "check".into(),
                            port: Some(ServiceBackendPort {
                                number: Some(80),
                                name: None,
                            }),
                        }),
                        resource: None,
                    },
                }],
            }),
        }]),
        ..Default::default()
    });
    let ingress = Arc::new(ingress);
    let state = ClusterState::default();
    let slices = SliceIndex::new(&state);
    let config = ControllerConfig::default();
    let mut lookups = Lookups {
        state: &state,
        config: &config,
        slices: &slices,
        resolved: HashMap::new(),
        secrets: HashMap::new(),
    };
    let fragment = IngressProcessor::new(&mut lookups, &ingress).process();
    match fragment
        .diagnostics
        .iter()
        .find(|d| d.message.contains(&key))
    {
        Some(d) => Err(d.message.clone()),
        None => Ok(()),
    }
}
