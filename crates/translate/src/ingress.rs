//! The Ingress processor: one admitted Ingress's rules, TLS entries and default backend,
//! as a [`Fragment`] that depends on nothing but that Ingress and the objects it names.
//! Fragments are merged (oldest first, conflicts resolved) by `merge.rs`, and reused
//! across translations while none of the objects they read changed.

use crate::annotations::{Annotations, InvalidAnnotation};
use crate::backend::{self, Resolved, SliceIndex};
use crate::cache::{ClusterState, ObjectKey};
use crate::credentials::{self, SecretLayout};
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::secret::{self, CheckedCertificate};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressServiceBackend, ServiceBackendPort};
use portico_model::{
    AccessPolicy, AffinityMode, AuthCache, Balance, BasicAuth, Canary, CanaryHeader, ClientAuth, ClientVerify, Cors, ErrorPages,
    ExternalAuth, HeaderEdits, HeaderRule, HealthCheck, HostMatch, JwtAuth, PathMatch, RateLimit, Redirect, RequestConditions, Rewrite,
    Route, SessionAffinity, SessionCookie, TrafficPolicy, Upstream,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Work shared by the Ingresses processed in one translation: each Service port and
/// Secret is resolved once, whoever names it.
pub(crate) struct Lookups<'a> {
    pub state: &'a ClusterState,
    pub slices: &'a SliceIndex<'a>,
    pub resolved: HashMap<String, Arc<Resolved>>,
    pub secrets: HashMap<ObjectKey, Result<Arc<CheckedCertificate>, (Reason, String)>>,
}

/// An object a fragment read, held so that "unchanged" can be told by identity (the
/// `Arc`s are kept alive, so their addresses cannot be reused by other objects).
enum Dependency {
    Service { key: ObjectKey, service: Option<Arc<Service>>, slices: Vec<Arc<EndpointSlice>> },
    Secret { key: ObjectKey, secret: Option<Arc<Secret>> },
    ConfigMap { key: ObjectKey, config_map: Option<Arc<ConfigMap>> },
}

fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Dependency {
    fn unchanged(&self, state: &ClusterState, slices: &SliceIndex<'_>) -> bool {
        match self {
            Dependency::Service { key, service, slices: seen } => {
                let now = slices.of(&key.0, &key.1);
                same(state.services.get(key), service.as_ref())
                    && now.len() == seen.len()
                    && now.iter().zip(seen).all(|(a, b)| Arc::ptr_eq(a, b))
            }
            Dependency::Secret { key, secret } => same(state.secrets.get(key), secret.as_ref()),
            Dependency::ConfigMap { key, config_map } => same(state.config_maps.get(key), config_map.as_ref()),
        }
    }
}

/// One route as an Ingress states it, before merging with other Ingresses.
#[derive(Clone)]
pub(crate) struct FragmentRoute {
    pub route: Route,
    /// Whether `ssl-redirect` leaves it on (it takes effect where the host has TLS).
    pub ssl_redirect: bool,
    /// `spec.rules[rule].http.paths[path]`, for conflict messages.
    pub rule: usize,
    pub path: usize,
    pub path_type: &'static str,
}

/// One host of a `spec.tls` entry, with the certificate it asks for (`None`: the default).
pub(crate) struct TlsClaim {
    pub host: HostMatch,
    pub certificate: Option<String>,
    /// Index of the `spec.tls` entry.
    pub entry: usize,
}

/// Everything one Ingress contributes, and what it was computed from.
pub(crate) struct Fragment {
    ingress: Arc<Ingress>,
    dependencies: Vec<Dependency>,
    pub source: String,
    pub object: ObjectRef,
    pub default_backend: Option<String>,
    /// The routes of each rule, with the rule's host.
    pub rules: Vec<(HostMatch, Vec<FragmentRoute>)>,
    pub tls: Vec<TlsClaim>,
    /// Set on a `canary: "true"` Ingress: its routes split a primary's traffic rather
    /// than route on their own. `backend`, `source` and `affinity` are filled per route.
    pub canary: Option<Canary>,
    /// `from-to-www-redirect`: the other name of each host, with routes that redirect to
    /// the host. They yield to any Ingress that routes that name itself.
    pub www_redirects: Vec<(HostMatch, Vec<FragmentRoute>)>,
    pub diagnostics: Vec<Diagnostic>,
    pub backends: Vec<Arc<Resolved>>,
    pub certificates: Vec<Arc<CheckedCertificate>>,
    /// `auth-tls-*`: the client certificates the Ingress's hosts ask for.
    pub client_auth: Option<ClientAuth>,
}

impl Fragment {
    /// Still what processing `ingress` would give: the same object, and nothing it read changed.
    pub fn is_current(&self, ingress: &Arc<Ingress>, state: &ClusterState, slices: &SliceIndex<'_>) -> bool {
        Arc::ptr_eq(&self.ingress, ingress) && self.dependencies.iter().all(|d| d.unchanged(state, slices))
    }
}

/// A Secret and its `namespace/name`.
type NamedSecret = (String, Arc<Secret>);

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
    /// `from-to-www-redirect`.
    www_redirect: bool,
}

/// ingress-nginx's `auth-tls-verify-depth` default.
const DEFAULT_CLIENT_VERIFY_DEPTH: u32 = 1;

/// The key of an `auth-jwt-jwks-secret` Secret that holds the JWKS.
const JWKS_KEY: &str = "jwks.json";
/// The signature algorithms a JWT may use; the default is all of them.
const JWT_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA"];

/// How long the auth service has to answer before the request gets a 500.
const EXTERNAL_AUTH_TIMEOUT_MS: u64 = 5_000;

/// The realm a basic-auth challenge names when `auth-realm` does not.
const DEFAULT_REALM: &str = "Authentication Required";

/// ingress-nginx's `session-cookie-name` default.
const DEFAULT_AFFINITY_COOKIE: &str = "INGRESSCOOKIE";
/// Active health check defaults, when `health-check-path` turns them on.
const DEFAULT_HEALTH_INTERVAL_MS: u64 = 5_000;
const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 2_000;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// ingress-nginx's `limit-burst-multiplier` default.
const DEFAULT_BURST_MULTIPLIER: u32 = 5;

/// ingress-nginx's `proxy-body-size` default.
const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

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
        let policy = RoutePolicy {
            ssl_redirect: true,
            force_ssl_redirect: false,
            upstream: Upstream::default(),
            server_name_from_service: false,
            traffic: TrafficPolicy::default(),
            max_body_bytes: Some(DEFAULT_MAX_BODY_BYTES),
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
            www_redirect: false,
        };
        let fragment = Fragment {
            ingress: ingress.clone(),
            dependencies: Vec::new(),
            source: format!("{namespace}/{name}"),
            object: ObjectRef { kind: "Ingress", namespace: namespace.to_string(), name: name.to_string() },
            default_backend: None,
            rules: Vec::new(),
            tls: Vec::new(),
            canary: None,
            www_redirects: Vec::new(),
            diagnostics: Vec::new(),
            backends: Vec::new(),
            certificates: Vec::new(),
            client_auth: None,
        };
        IngressProcessor { lookups, ingress, namespace, last_backend: None, policy, fragment }
    }

    /// Messages may quote annotations; a URL's credentials are not repeated in Events and logs.
    fn report(&mut self, reason: Reason, message: String) {
        let message = portico_model::redact_userinfo(&message).into_owned();
        self.fragment.diagnostics.push(Diagnostic { object: self.fragment.object.clone(), reason, message });
    }

    fn observe_secret(&mut self, key: &ObjectKey) -> Option<Arc<Secret>> {
        let secret = self.lookups.state.secrets.get(key).cloned();
        self.fragment.dependencies.push(Dependency::Secret { key: key.clone(), secret: secret.clone() });
        secret
    }

    fn observe_service(&mut self, name: &str) {
        let key = (self.namespace.to_string(), name.to_string());
        if self.fragment.dependencies.iter().any(|d| matches!(d, Dependency::Service { key: k, .. } if *k == key)) {
            return;
        }
        let service = self.lookups.state.services.get(&key).cloned();
        let slices = self.lookups.slices.of(self.namespace, name).iter().map(|s| Arc::clone(s)).collect();
        self.fragment.dependencies.push(Dependency::Service { key, service, slices });
    }
    /// A bad annotation is reported and its default kept.
    fn annotation<T>(&mut self, parsed: Result<Option<T>, InvalidAnnotation>) -> Option<T> {
        parsed.unwrap_or_else(|e| {
            self.report(e.reason(), e.message());
            None
        })
    }

    fn read_annotations(&mut self) {
        for message in crate::compat::ignored(self.ingress.metadata.annotations.as_ref()) {
            self.report(Reason::UnsupportedAnnotation, message);
        }
        let a = Annotations::new(self.ingress.metadata.annotations.as_ref());
        self.policy.ssl_redirect = self.annotation(a.bool("ssl-redirect")).unwrap_or(true);
        self.policy.force_ssl_redirect = self.annotation(a.bool("force-ssl-redirect")).unwrap_or(false);
        let protocol = self.annotation(a.backend_protocol()).unwrap_or_default();
        let mut upstream = Upstream { protocol, ..Upstream::default() };
        if protocol.uses_tls() {
            upstream.verify = self.annotation(a.on_off("proxy-ssl-verify")).unwrap_or(false);
            let send_sni = self.annotation(a.on_off("proxy-ssl-server-name")).unwrap_or(false);
            upstream.server_name = self.annotation(a.server_name("proxy-ssl-name"));
            if let Some(object_ref) = self.annotation(a.object_ref("proxy-ssl-secret", self.namespace)) {
                upstream.ca_pem = Some(self.ca_bundle(object_ref));
            }
            // Verification needs a name; the Service's cluster DNS name is the one its certificate carries.
            self.policy.server_name_from_service = upstream.server_name.is_none() && (upstream.verify || send_sni);
        }
        self.policy.upstream = upstream;
        self.read_traffic_annotations(&a);
        self.policy.affinity = self.read_affinity(&a);
        self.policy.access = self.read_access(&a);
        self.policy.cors = self.read_cors(&a);
        self.read_rewrites(&a);
        self.read_routing_annotations(&a);
        if self.annotation(a.bool("canary")) == Some(true) {
            self.fragment.canary = Some(self.read_canary(&a));
        }
    }

    /// `use-regex`, `rewrite-target`, `app-root`, the redirects, `upstream-vhost` and
    /// `x-forwarded-prefix`. A target that cannot be used is reported and left out.
    fn read_rewrites(&mut self, a: &Annotations<'_>) {
        let mut rw = Rewrite {
            target: self.annotation(a.rewrite_target("rewrite-target")),
            app_root: self.annotation(a.abs_path("app-root")),
            redirect: None,
            upstream_host: self.annotation(a.attribute("upstream-vhost")),
            forwarded_prefix: self.annotation(a.abs_path("x-forwarded-prefix")),
        };
        // As in ingress-nginx, a temporal redirect wins over a permanent one.
        for (name, code_name, default_code) in
            [("temporal-redirect", "temporal-redirect-code", 302), ("permanent-redirect", "permanent-redirect-code", 301)]
        {
            if rw.redirect.is_some() {
                break;
            }
            if let Some(target) = self.annotation(a.redirect_target(name)) {
                let code = self.annotation(a.redirect_code(code_name)).unwrap_or(default_code);
                rw.redirect = Some(Redirect { code, target });
            }
        }
        self.policy.regex_paths = self.annotation(a.bool("use-regex")).unwrap_or(false) || rw.target.is_some();
        self.policy.rewrite = (rw != Rewrite::default()).then_some(rw);
    }

    /// `match-*`, header edits, `default-backend`, `custom-http-errors`,
    /// `preserve-trailing-slash` and `from-to-www-redirect`.
    fn read_routing_annotations(&mut self, a: &Annotations<'_>) {
        let headers = a.value_conditions("match-headers", true);
        let query = a.value_conditions("match-query", false);
        let methods = a.methods("match-methods");
        self.policy.conditions = match (headers, methods, query) {
            (Ok(headers), Ok(methods), Ok(query)) => {
                let c = RequestConditions {
                    headers: headers.unwrap_or_default(),
                    methods: methods.unwrap_or_default(),
                    query: query.unwrap_or_default(),
                };
                Ok((c != RequestConditions::default()).then_some(c))
            }
            (headers, methods, query) => {
                for e in [headers.err(), query.err(), methods.err()].into_iter().flatten() {
                    self.report(e.reason(), format!("{}; the Ingress's routes are skipped", e.message()));
                }
                Err(())
            }
        };
        let mut edits = HeaderEdits::default();
        edits.response.set = self.custom_headers(a);
        for (changes, side) in [(&mut edits.request, "request"), (&mut edits.response, "response")] {
            let remove = a.header_names(&format!("{side}-headers-remove"));
            changes.remove = self.annotation(remove).unwrap_or_default();
            changes.set.extend(self.annotation(a.header_lines(&format!("{side}-headers-set"))).unwrap_or_default());
            changes.add = self.annotation(a.header_lines(&format!("{side}-headers-add"))).unwrap_or_default();
        }
        self.policy.headers = (edits != HeaderEdits::default()).then_some(edits);
        if let Some((service, port)) = self.annotation(a.service_ref("default-backend")) {
            self.policy.fallback_backend = self.fallback_backend(&service, port);
        }
        self.policy.error_statuses = self.annotation(a.error_statuses("custom-http-errors"));
        self.policy.preserve_trailing_slash = self.annotation(a.bool("preserve-trailing-slash")).unwrap_or(false);
        self.policy.www_redirect = self.annotation(a.bool("from-to-www-redirect")).unwrap_or(false);
    }

    /// `custom-headers`: the entries of a ConfigMap of the Ingress's namespace, set on
    /// every response. An entry that is not a header is reported and left out.
    fn custom_headers(&mut self, a: &Annotations<'_>) -> Vec<(String, String)> {
        let Some((namespace, name)) = self.annotation(a.object_ref("custom-headers", self.namespace)) else { return Vec::new() };
        let key = a.get("custom-headers").map(|(k, _)| k).unwrap_or_default();
        if namespace != self.namespace {
            let msg = format!("annotation {key}: ConfigMap {namespace}/{name} is in another namespace; only the Ingress's own is read");
            self.report(Reason::InvalidAnnotation, msg);
            return Vec::new();
        }
        let object_key = (namespace, name);
        let config_map = self.lookups.state.config_maps.get(&object_key).cloned();
        self.fragment.dependencies.push(Dependency::ConfigMap { key: object_key.clone(), config_map: config_map.clone() });
        let Some(config_map) = config_map else {
            let msg = format!("annotation {key}: ConfigMap {}/{} does not exist", object_key.0, object_key.1);
            self.report(Reason::ConfigMapNotFound, msg);
            return Vec::new();
        };
        let mut headers = Vec::new();
        for (entry, value) in config_map.data.iter().flatten() {
            let parsed = http::HeaderName::from_bytes(entry.as_bytes()).ok().zip(http::HeaderValue::from_str(value.trim()).ok());
            match parsed {
                Some((header, _)) => headers.push((header.as_str().to_string(), value.trim().to_string())),
                None => {
                    let msg = format!(
                        "annotation {key}: ConfigMap {}/{} entry {entry:?} is not a header name and value; left out",
                        object_key.0, object_key.1
                    );
                    self.report(Reason::InvalidAnnotation, msg);
                }
            }
        }
        headers
    }

    /// The `default-backend` Service as a plain HTTP backend; without a port, its first.
    fn fallback_backend(&mut self, service: &str, port: Option<String>) -> Option<String> {
        let port = match port {
            Some(p) => match p.parse::<i32>() {
                Ok(number) => ServiceBackendPort { number: Some(number), name: None },
                Err(_) => ServiceBackendPort { number: None, name: Some(p) },
            },
            None => match backend::first_port(self.lookups.state, self.namespace, service) {
                Some(number) => ServiceBackendPort { number: Some(number), name: None },
                None => {
                    self.observe_service(service);
                    let msg = format!("annotation default-backend: service {}/{service} does not exist or has no port", self.namespace);
                    self.report(Reason::ServiceNotFound, msg);
                    return None;
                }
            },
        };
        let svc = IngressServiceBackend { name: service.to_string(), port: Some(port) };
        self.observe_service(service);
        let (upstream, traffic) = (Upstream::default(), TrafficPolicy::default());
        let name = backend::backend_name(self.namespace, &svc, &upstream, &traffic);
        let resolved = self.resolved(name.clone(), &svc, &upstream, &traffic);
        if let Some((reason, message)) = resolved.problem.clone() {
            self.report(reason, format!("annotation default-backend: {message}"));
        }
        Some(name)
    }

    /// Source ranges and basic auth. Unlike tuning, a security annotation that cannot be
    /// used does not fall back to a default: the routes refuse every request (503).
    fn read_access(&mut self, a: &Annotations<'_>) -> Option<AccessPolicy> {
        let mut access = AccessPolicy::default();
        let mut refusals = Vec::new();
        let mut refuse = |this: &mut Self, reason: Reason, message: String| {
            let message = portico_model::redact_userinfo(&message).into_owned();
            this.report(reason, format!("{message}; its routes answer 503"));
            refusals.push(message);
        };
        let mut any = false;
        if a.get("auth-tls-secret").is_some() || a.get("auth-tls-verify-client").is_some() {
            match self.client_auth(a) {
                Ok(client_auth) => self.fragment.client_auth = client_auth,
                Err((reason, message)) => {
                    any = true;
                    refuse(self, reason, message);
                }
            }
        }
        let allow = if a.get("allowlist-source-range").is_some() { "allowlist-source-range" } else { "whitelist-source-range" };
        for (name, field) in [(allow, &mut access.allow_sources), ("denylist-source-range", &mut access.deny_sources)] {
            match a.cidr_list(name) {
                Ok(None) => {}
                Ok(Some(list)) => {
                    any = true;
                    *field = list;
                }
                Err(e) => {
                    any = true;
                    refuse(self, e.reason(), e.message());
                }
            }
        }
        match a.get("auth-type") {
            None => {}
            Some((_, v)) if v.trim().eq_ignore_ascii_case("basic") => {
                any = true;
                match self.basic_auth(a) {
                    Ok(auth) => access.basic_auth = Some(auth),
                    Err((reason, message)) => refuse(self, reason, message),
                }
            }
            Some((key, v)) => {
                any = true;
                refuse(
                    self,
                    Reason::InvalidAnnotation,
                    format!("annotation {key}: value {v:?} is not \"basic\" (digest is not supported)"),
                );
            }
        }
        if a.get("auth-url").is_some() {
            any = true;
            match self.external_auth(a) {
                Ok(auth) => access.external_auth = Some(auth),
                Err(e) => refuse(self, e.reason(), e.message()),
            }
        }
        if a.get("auth-jwt-jwks-secret").is_some() || a.get("auth-jwt-jwks-url").is_some() {
            any = true;
            match self.jwt_auth(a) {
                Ok(jwt) => access.jwt = Some(jwt),
                Err((reason, message)) => refuse(self, reason, message),
            }
        }
        match self.read_rate_limit(a) {
            Ok(limit) => self.policy.rate_limit = limit,
            Err(e) => {
                any = true;
                refuse(self, e.reason(), e.message());
            }
        }
        match a.get("satisfy") {
            None => {}
            Some((_, v)) if v.trim() == "any" => access.satisfy_any = true,
            Some((_, v)) if v.trim() == "all" => {}
            Some((key, v)) => refuse(self, Reason::InvalidAnnotation, format!("annotation {key}: value {v:?} is not \"any\" or \"all\"")),
        }
        if !refusals.is_empty() {
            access.refuse = Some(refusals.join("; "));
        }
        any.then_some(access)
    }

    /// The Secret an annotation names, with its `namespace/name`: only one in the
    /// Ingress's own namespace is read. `None` when the annotation is not set.
    fn own_secret(&mut self, a: &Annotations<'_>, annotation: &str) -> Result<Option<NamedSecret>, (Reason, String)> {
        let Some((namespace, name)) = a.object_ref(annotation, self.namespace).map_err(|e| (e.reason(), e.message()))? else {
            return Ok(None);
        };
        let full = format!("{namespace}/{name}");
        if namespace != self.namespace {
            let msg = format!("annotation {annotation}: secret {full} is in another namespace; only {} is read", self.namespace);
            return Err((Reason::InvalidAnnotation, msg));
        }
        let secret = self
            .observe_secret(&(namespace, name))
            .ok_or_else(|| (Reason::SecretNotFound, format!("annotation {annotation}: secret {full} does not exist")))?;
        Ok(Some((full, secret)))
    }

    /// `auth-tls-*`; `None` when `auth-tls-verify-client` is `off`. Unlike ingress-nginx,
    /// which then verifies nothing, a verification mode without a CA bundle is refused.
    fn client_auth(&mut self, a: &Annotations<'_>) -> Result<Option<ClientAuth>, (Reason, String)> {
        let invalid = |e: InvalidAnnotation| (e.reason(), e.message());
        let verify = match a.get("auth-tls-verify-client") {
            None => ClientVerify::On,
            Some((key, v)) => match v.trim() {
                "on" => ClientVerify::On,
                "optional" => ClientVerify::Optional,
                "optional_no_ca" => ClientVerify::OptionalNoCa,
                "off" => return Ok(None),
                _ => {
                    let msg = format!("annotation {key}: value {v:?} is not one of on, optional, optional_no_ca, off");
                    return Err((Reason::InvalidAnnotation, msg));
                }
            },
        };
        let Some((name, secret)) = self.own_secret(a, "auth-tls-secret")? else {
            let (key, _) = a.get("auth-tls-verify-client").unwrap_or_default();
            return Err((
                Reason::InvalidAnnotation,
                format!("annotation {key} is set without auth-tls-secret, the CA bundle to verify against"),
            ));
        };
        let ca_pem = secret::ca_bundle(&name, &secret).map_err(|e| (Reason::InvalidSecret, format!("annotation auth-tls-secret: {e}")))?;
        let match_subject = a.regex("auth-tls-match-cn").map_err(invalid)?;
        Ok(Some(ClientAuth {
            ca_pem,
            verify,
            depth: a.count("auth-tls-verify-depth").map_err(invalid)?.unwrap_or(DEFAULT_CLIENT_VERIFY_DEPTH),
            pass_certificate: a.bool("auth-tls-pass-certificate-to-upstream").map_err(invalid)?.unwrap_or(false),
            error_page: a.url("auth-tls-error-page").map_err(invalid)?,
            match_subject,
        }))
    }

    /// `auth-jwt-jwks-secret` or `auth-jwt-jwks-url`, and their companions.
    fn jwt_auth(&mut self, a: &Annotations<'_>) -> Result<JwtAuth, (Reason, String)> {
        let invalid = |e: InvalidAnnotation| (e.reason(), e.message());
        let jwks_url = a.url("auth-jwt-jwks-url").map_err(invalid)?;
        let jwks = match (&jwks_url, a.get("auth-jwt-jwks-secret")) {
            (Some(_), Some((key, _))) => {
                return Err((Reason::InvalidAnnotation, format!("annotation {key}: set either a JWKS Secret or a JWKS URL, not both")));
            }
            (Some(_), None) => String::new(),
            (None, _) => self.jwks_from_secret(a)?,
        };
        let algorithms = match a.token_list("auth-jwt-algorithms").map_err(invalid)? {
            None => JWT_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                let list: Vec<String> = list.split(", ").map(str::to_string).collect();
                if let Some(other) = list.iter().find(|alg| !JWT_ALGORITHMS.contains(&alg.as_str())) {
                    let (key, _) = a.get("auth-jwt-algorithms").unwrap_or_default();
                    let msg = format!("annotation {key}: algorithm {other:?} is not one of RS256, ES256, EdDSA");
                    return Err((Reason::InvalidAnnotation, msg));
                }
                list
            }
        };
        let claims_to_headers = match a.get("auth-jwt-claims-to-headers") {
            None => Vec::new(),
            Some((key, v)) => v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (claim, header) = pair.split_once(':').map(|(c, h)| (c.trim(), h.trim())).unwrap_or(("", ""));
                    let header = http::HeaderName::from_bytes(header.as_bytes()).ok().filter(|_| !claim.is_empty());
                    header
                        .map(|h| (claim.to_string(), h.as_str().to_string()))
                        .ok_or_else(|| (Reason::InvalidAnnotation, format!("annotation {key}: {pair:?} is not claim:Header-Name")))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(JwtAuth {
            jwks,
            jwks_url,
            issuer: a.attribute("auth-jwt-issuer").map_err(invalid)?,
            audiences: a
                .get("auth-jwt-audience")
                .map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            algorithms,
            leeway_secs: a.duration_ms("auth-jwt-leeway", true).map_err(invalid)?.unwrap_or(0) / 1000,
            claims_to_headers,
        })
    }

    /// The JWKS of `auth-jwt-jwks-secret`: a JSON object with a non-empty `keys` array;
    /// the proxy reads the keys themselves.
    fn jwks_from_secret(&mut self, a: &Annotations<'_>) -> Result<String, (Reason, String)> {
        let Some((full, secret)) = self.own_secret(a, "auth-jwt-jwks-secret")? else {
            return Err((Reason::InvalidAnnotation, "annotation auth-jwt-jwks-secret is empty".to_string()));
        };
        let bad = |why: &str| (Reason::InvalidSecret, format!("annotation auth-jwt-jwks-secret: secret {full}: key {JWKS_KEY:?} {why}"));
        let jwks = crate::secret::value(&secret, JWKS_KEY).ok_or_else(|| bad("is missing"))?;
        let jwks = std::str::from_utf8(jwks).map_err(|_| bad("is not text"))?;
        let parsed: serde_json::Value = serde_json::from_str(jwks).map_err(|e| bad(&format!("is not JSON: {e}")))?;
        if parsed.get("keys").and_then(|k| k.as_array()).is_none_or(|k| k.is_empty()) {
            return Err(bad("has no \"keys\" array with a key in it"));
        }
        Ok(jwks.to_string())
    }

    /// `limit-rps`, `limit-rpm`, `limit-connections` and their companions; `None` when
    /// no limit is set.
    fn read_rate_limit(&mut self, a: &Annotations<'_>) -> Result<Option<RateLimit>, InvalidAnnotation> {
        let positive = |v: Option<u32>| v.filter(|n| *n > 0);
        let per_second = positive(a.count("limit-rps")?);
        let per_minute = positive(a.count("limit-rpm")?);
        let concurrent = positive(a.count("limit-connections")?);
        if per_second.is_none() && per_minute.is_none() && concurrent.is_none() {
            return Ok(None);
        }
        let burst_multiplier = a.count("limit-burst-multiplier")?.filter(|m| *m > 0).unwrap_or(DEFAULT_BURST_MULTIPLIER);
        let exempt = a.cidr_list("limit-allowlist")?.unwrap_or_default();
        Ok(Some(RateLimit { per_second, per_minute, burst_multiplier, concurrent, exempt }))
    }

    /// `enable-cors` and the `cors-*` annotations. A value that cannot be used is reported
    /// and CORS stays off, so that browsers keep refusing cross-origin reads.
    fn read_cors(&mut self, a: &Annotations<'_>) -> Option<Cors> {
        if self.annotation(a.bool("enable-cors")) != Some(true) {
            return None;
        }
        let read = || -> Result<Cors, InvalidAnnotation> {
            let mut cors = Cors::default();
            if let Some(origins) = a.origin_list("cors-allow-origin")? {
                cors.allow_origins = origins;
            }
            if let Some(methods) = a.token_list("cors-allow-methods")? {
                cors.allow_methods = methods;
            }
            if let Some(headers) = a.token_list("cors-allow-headers")? {
                cors.allow_headers = headers;
            }
            if let Some(headers) = a.token_list("cors-expose-headers")? {
                cors.expose_headers = headers;
            }
            if let Some(credentials) = a.bool("cors-allow-credentials")? {
                cors.allow_credentials = credentials;
            }
            if let Some(max_age) = a.count("cors-max-age")? {
                cors.max_age_secs = u64::from(max_age);
            }
            Ok(cors)
        };
        match read() {
            Ok(cors) => Some(cors),
            Err(e) => {
                self.report(e.reason(), format!("{}; CORS stays off", e.message()));
                None
            }
        }
    }

    /// `auth-url` and its companions. The URLs must be usable (or the routes refuse);
    /// a bad cache setting only turns the cache off.
    fn external_auth(&mut self, a: &Annotations<'_>) -> Result<ExternalAuth, InvalidAnnotation> {
        let url = a.url("auth-url")?.unwrap_or_default();
        let signin = a.url("auth-signin")?;
        let method = a.method("auth-method")?.unwrap_or_else(|| "GET".to_string());
        let signin_redirect_param = self.annotation(a.token("auth-signin-redirect-param")).unwrap_or_else(|| "rd".to_string());
        let response_headers = self.annotation(a.header_names("auth-response-headers")).unwrap_or_default();
        let always_set_cookie = self.annotation(a.bool("auth-always-set-cookie")).unwrap_or(false);
        if let Some((key, _)) = a.get("auth-proxy-set-headers") {
            self.report(
                Reason::UnsupportedAnnotation,
                format!("annotation {key} is not supported yet; the auth request carries the client's headers only"),
            );
        }
        let cache = match (self.annotation(a.hash_key_named("auth-cache-key")), self.annotation(a.cache_duration("auth-cache-duration"))) {
            (Some(key), duration) => {
                let (statuses, duration_ms) = duration.unwrap_or_else(|| (vec![200, 202, 401], 0));
                (duration_ms > 0).then_some(AuthCache { key, statuses, duration_ms })
            }
            (None, _) => None,
        };
        Ok(ExternalAuth {
            url,
            method,
            signin,
            signin_redirect_param,
            response_headers,
            always_set_cookie,
            cache,
            timeout_ms: EXTERNAL_AUTH_TIMEOUT_MS,
        })
    }

    /// `auth-secret` (own namespace only), `auth-secret-type` and `auth-realm`.
    fn basic_auth(&mut self, a: &Annotations<'_>) -> Result<BasicAuth, (Reason, String)> {
        let invalid = |e: InvalidAnnotation| (e.reason(), e.message());
        let layout = match a.get("auth-secret-type") {
            None => SecretLayout::File,
            Some((_, v)) if v.trim() == "auth-file" => SecretLayout::File,
            Some((_, v)) if v.trim() == "auth-map" => SecretLayout::Map,
            Some((key, v)) => {
                return Err((Reason::InvalidAnnotation, format!("annotation {key}: value {v:?} is not auth-file or auth-map")))
            }
        };
        let (full, secret) = self
            .own_secret(a, "auth-secret")?
            .ok_or_else(|| (Reason::InvalidAnnotation, "auth-type basic needs annotation auth-secret".to_string()))?;
        let (users, rejected) =
            credentials::read(&full, &secret, layout).map_err(|e| (Reason::InvalidSecret, format!("annotation auth-secret: {e}")))?;
        for r in rejected {
            self.report(Reason::InvalidSecret, format!("annotation auth-secret: {r}; that user cannot sign in"));
        }
        let realm = a.realm("auth-realm").map_err(invalid)?.unwrap_or_else(|| DEFAULT_REALM.to_string());
        Ok(BasicAuth { realm, users })
    }

    /// `affinity: cookie` and the `session-cookie-*` attributes.
    fn read_affinity(&mut self, a: &Annotations<'_>) -> Option<SessionAffinity> {
        self.annotation(a.affinity())?;
        let cookie = SessionCookie {
            name: self.annotation(a.token("session-cookie-name")).unwrap_or_else(|| DEFAULT_AFFINITY_COOKIE.to_string()),
            path: self.annotation(a.abs_path("session-cookie-path")).unwrap_or_default(),
            domain: self.annotation(a.attribute("session-cookie-domain")),
            max_age_secs: self.annotation(a.duration_ms("session-cookie-max-age", false)).map(|ms| ms / 1000),
            expires_secs: self.annotation(a.duration_ms("session-cookie-expires", false)).map(|ms| ms / 1000),
            same_site: self.annotation(a.same_site()),
            secure: self.annotation(a.bool("session-cookie-secure")).unwrap_or(false),
        };
        Some(SessionAffinity {
            mode: self.annotation(a.affinity_mode()).unwrap_or(AffinityMode::Balanced),
            cookie,
            change_on_failure: self.annotation(a.bool("session-cookie-change-on-failure")).unwrap_or(false),
        })
    }

    /// The `canary-*` rules. A bad rule is reported and left out, so the canary gets
    /// less traffic, never more.
    fn read_canary(&mut self, a: &Annotations<'_>) -> Canary {
        let header = self.annotation(a.token("canary-by-header")).map(|name| {
            let rule =
                match (self.annotation(a.header_value("canary-by-header-value")), self.annotation(a.regex("canary-by-header-pattern"))) {
                    (Some(value), _) => HeaderRule::Equals(value),
                    (None, Some(pattern)) => HeaderRule::Matches(pattern),
                    (None, None) => HeaderRule::AlwaysNever,
                };
            CanaryHeader { name: name.to_ascii_lowercase(), rule }
        });
        let weight_total = self.annotation(a.count("canary-weight-total")).filter(|t| *t > 0).unwrap_or(100);
        let weight = match self.annotation(a.count("canary-weight")) {
            Some(w) if w > weight_total => {
                let msg = format!(
                    "annotation canary-weight: {w} is more than canary-weight-total {weight_total}; all traffic goes to the canary"
                );
                self.report(Reason::InvalidAnnotation, msg);
                weight_total
            }
            w => w.unwrap_or(0),
        };
        Canary {
            backend: String::new(),
            source: self.fragment.source.clone(),
            header,
            cookie: self.annotation(a.token("canary-by-cookie")),
            weight,
            weight_total,
            affinity: None,
            sticky: self.annotation(a.canary_sticky()).unwrap_or(true),
        }
    }

    /// Balancing, timeouts, retries, passive health and the body limit. Invalid values
    /// are tuning, not security: reported, and the default applies.
    fn read_traffic_annotations(&mut self, a: &Annotations<'_>) {
        let t = &mut TrafficPolicy::default();
        if let Some(balance) = self.annotation(a.load_balance()) {
            t.balance = balance;
        }
        // As in ingress-nginx, a hash key overrides the algorithm.
        if let Some(key) = self.annotation(a.hash_key()) {
            t.balance = Balance::ConsistentHash(key);
        }
        for (name, field) in [
            ("proxy-connect-timeout", &mut t.connect_timeout_ms),
            ("proxy-read-timeout", &mut t.read_timeout_ms),
            ("proxy-send-timeout", &mut t.send_timeout_ms),
            ("upstream-fail-timeout", &mut t.fail_timeout_ms),
        ] {
            if let Some(ms) = self.annotation(a.duration_ms(name, false)) {
                *field = ms;
            }
        }
        if let Some(when) = self.annotation(a.next_upstream()) {
            t.retry.on_error = when.error;
            t.retry.on_timeout = when.timeout;
            t.retry.on_status = when.statuses;
        }
        if let Some(tries) = self.annotation(a.count("proxy-next-upstream-tries")) {
            // 0 is nginx's "no limit": every endpoint once.
            t.retry.tries = if tries == 0 { u32::MAX } else { tries };
        }
        if !t.retry.on_error && !t.retry.on_timeout && t.retry.on_status.is_empty() {
            t.retry.tries = 1;
        }
        if let Some(ms) = self.annotation(a.duration_ms("proxy-next-upstream-timeout", true)) {
            t.retry.timeout_ms = ms;
        }
        if let Some(n) = self.annotation(a.count("upstream-max-fails")) {
            t.max_fails = n;
        }
        if let Some(path) = self.annotation(a.abs_path("health-check-path")) {
            let positive = |n: Option<u32>, default| n.filter(|n| *n > 0).unwrap_or(default);
            t.health_check = Some(HealthCheck {
                path,
                interval_ms: self.annotation(a.duration_ms("health-check-interval", false)).unwrap_or(DEFAULT_HEALTH_INTERVAL_MS),
                timeout_ms: self.annotation(a.duration_ms("health-check-timeout", false)).unwrap_or(DEFAULT_HEALTH_TIMEOUT_MS),
                healthy_threshold: positive(self.annotation(a.count("health-check-healthy-threshold")), DEFAULT_HEALTHY_THRESHOLD),
                unhealthy_threshold: positive(self.annotation(a.count("health-check-unhealthy-threshold")), DEFAULT_UNHEALTHY_THRESHOLD),
            });
        }
        if t.health_check.is_some() && self.policy.upstream.protocol.is_http2() {
            let msg = format!(
                "annotation health-check-path: health checks speak HTTP/1.1, which a {} backend does not; no active checks",
                self.policy.upstream.protocol.as_str()
            );
            self.report(Reason::InvalidAnnotation, msg);
            t.health_check = None;
        }
        self.policy.traffic = t.clone();
        if let Some(bytes) = self.annotation(a.size_bytes("proxy-body-size")) {
            self.policy.max_body_bytes = (bytes > 0).then_some(bytes);
        }
    }

    /// The CA bundle of `proxy-ssl-secret`. A Secret that cannot be used yields a bundle
    /// that trusts nothing, so verification fails closed rather than trusting everyone.
    fn ca_bundle(&mut self, (namespace, name): (String, String)) -> String {
        if namespace != self.namespace {
            let msg =
                format!("annotation proxy-ssl-secret: secret {namespace}/{name} is in another namespace; only {} is read", self.namespace);
            self.report(Reason::InvalidAnnotation, msg);
            return String::new();
        }
        let key = (namespace, name);
        match self.observe_secret(&key) {
            None => {
                self.report(Reason::SecretNotFound, format!("annotation proxy-ssl-secret: secret {}/{} does not exist", key.0, key.1));
                String::new()
            }
            Some(s) => secret::ca_bundle(&format!("{}/{}", key.0, key.1), &s).unwrap_or_else(|e| {
                self.report(Reason::InvalidSecret, format!("annotation proxy-ssl-secret: {e}"));
                String::new()
            }),
        }
    }

    /// Records which certificate each host of each `spec.tls` entry asks for.
    fn process_tls(&mut self) {
        let Some(spec) = self.ingress.spec.as_ref() else { return };
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let certificate = match tls.secret_name.as_deref() {
                None | Some("") => None,
                Some(name) => self.certificate(i, name),
            };
            // An entry without hosts covers the hosts of this Ingress's rules.
            let hosts: Vec<&str> = match tls.hosts.as_deref() {
                Some(h) if !h.is_empty() => h.iter().map(String::as_str).collect(),
                _ => spec.rules.iter().flatten().filter_map(|r| r.host.as_deref()).collect(),
            };
            for (j, text) in hosts.into_iter().enumerate() {
                match text.parse::<HostMatch>() {
                    Ok(host) => self.fragment.tls.push(TlsClaim { host, certificate: certificate.clone(), entry: i }),
                    Err(e) => self.report(Reason::InvalidHost, format!("spec.tls[{i}].hosts[{j}] {text:?}: {}", e.reason)),
                }
            }
        }
    }

    /// The certificate name of Secret `name` in this namespace, `None` when it cannot be used.
    fn certificate(&mut self, i: usize, name: &str) -> Option<String> {
        let key = (self.namespace.to_string(), name.to_string());
        let secret = self.observe_secret(&key);
        let checked = self
            .lookups
            .secrets
            .entry(key.clone())
            .or_insert_with(|| secret::tls_certificate_of(&format!("{}/{name}", key.0), secret.as_deref()).map(Arc::new))
            .clone();
        match checked {
            Ok(c) => {
                if let Some(w) = &c.warning {
                    self.report(Reason::CertificateExpired, format!("spec.tls[{i}].secretName: {w}"));
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
            self.report(Reason::InvalidIngress, "either spec.defaultBackend or spec.rules must be specified".into());
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
                    self.report(Reason::InvalidHost, format!("spec.rules[{i}].host {host_text:?}: {}", e.reason));
                    continue;
                }
            };
            let Some(http) = rule.http.as_ref() else { continue };
            // Field names are only formatted when something is wrong with the field.
            let field = |j: usize| format!("spec.rules[{i}].http.paths[{j}]");
            let mut routes = Vec::with_capacity(http.paths.len());
            for (j, path) in http.paths.iter().enumerate() {
                let matched = if self.policy.regex_paths {
                    regex_path_match(path.path_type.as_str(), path.path.as_deref())
                } else {
                    path_match(path.path_type.as_str(), path.path.as_deref())
                };
                let matcher = match matched {
                    Ok(m) => m,
                    Err(why) => {
                        self.report(Reason::InvalidPath, format!("{}: {why}", field(j)));
                        continue;
                    }
                };
                let Some(backend) = self.backend(&path.backend, || format!("{}.backend", field(j))) else { continue };
                let affinity = self.policy.affinity.clone().map(|mut a| {
                    if a.cookie.path.is_empty() {
                        a.cookie.path = matcher.path().to_string();
                    }
                    a
                });
                let route = Route {
                    path: matcher,
                    backend,
                    source: self.fragment.source.clone(),
                    redirect_to_https: self.policy.force_ssl_redirect,
                    max_body_bytes: self.policy.max_body_bytes,
                    affinity: affinity.map(Box::new),
                    canary: None,
                    access: self.policy.access.clone().map(Box::new),
                    rewrite: self.policy.rewrite.clone().map(Box::new),
                    rate_limit: self.policy.rate_limit.clone().map(Box::new),
                    cors: self.policy.cors.clone().map(Box::new),
                    conditions: self.policy.conditions.clone().unwrap_or_default().map(Box::new),
                    headers: self.policy.headers.clone().map(Box::new),
                    fallback_backend: self.policy.fallback_backend.clone(),
                    error_pages: self.error_pages(&path.backend).map(Box::new),
                    preserve_trailing_slash: self.policy.preserve_trailing_slash,
                };
                routes.push(FragmentRoute {
                    route,
                    ssl_redirect: self.policy.ssl_redirect,
                    rule: i,
                    path: j,
                    path_type: static_path_type(&path.path_type),
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

    /// `from-to-www-redirect`: `www.example.com` for `example.com` and the other way
    /// round, each path answering 308 to the same URL on the named host.
    fn add_www_redirects(&mut self) {
        let mut redirects = Vec::new();
        for (host, routes) in &self.fragment.rules {
            let HostMatch::Exact(name) = host else { continue };
            let other = match name.strip_prefix("www.") {
                Some(bare) => bare.to_string(),
                None => format!("www.{name}"),
            };
            let Ok(other) = other.parse::<HostMatch>() else { continue };
            if self.fragment.rules.iter().any(|(h, _)| *h == other) {
                continue;
            }
            let target = format!("$scheme://{name}$request_uri");
            let routes = routes
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    let rewrite = Rewrite { redirect: Some(Redirect { code: 308, target: target.clone() }), ..Rewrite::default() };
                    r.route.rewrite = Some(Box::new(rewrite));
                    r
                })
                .collect();
            redirects.push((other, routes));
        }
        self.fragment.www_redirects = redirects;
    }

    /// `server-alias`: each alias serves the routes (and TLS) of the Ingress's named hosts.
    fn add_aliases(&mut self) {
        let a = Annotations::new(self.ingress.metadata.annotations.as_ref());
        let Some((key, value)) = a.get("server-alias") else { return };
        let mut aliases = Vec::new();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.parse::<HostMatch>() {
                Ok(h @ (HostMatch::Exact(_) | HostMatch::Wildcard(_))) => aliases.push(h),
                Ok(HostMatch::Any) | Err(_) => {
                    self.report(Reason::InvalidAnnotation, format!("annotation {key}: {name:?} is not a host name; ignored"))
                }
            }
        }
        let named: Vec<(HostMatch, Vec<FragmentRoute>)> =
            self.fragment.rules.iter().filter(|(h, _)| *h != HostMatch::Any).map(|(h, r)| (h.clone(), r.clone())).collect();
        for alias in aliases {
            if named.iter().any(|(h, _)| *h == alias) {
                continue;
            }
            let routes: Vec<FragmentRoute> = named.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
            if let Some(claim) = self.fragment.tls.iter().find(|c| named.iter().any(|(h, _)| *h == c.host)) {
                let claim = TlsClaim { host: alias.clone(), certificate: claim.certificate.clone(), entry: claim.entry };
                self.fragment.tls.push(claim);
            }
            self.fragment.rules.push((alias, routes));
        }
    }

    /// Resolves a backend reference, reporting problems; `None` when it cannot be routed at all.
    fn backend(&mut self, backend: &'a IngressBackend, field: impl Fn() -> String) -> Option<String> {
        let Some(svc) = backend.service.as_ref() else {
            let what = if backend.resource.is_some() { "resource backends are not supported" } else { "no service is named" };
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
                self.observe_service(&svc.name);
                let name = backend::backend_name(self.namespace, svc, &upstream, &self.policy.traffic);
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
    fn resolved(&mut self, name: String, svc: &IngressServiceBackend, upstream: &Upstream, traffic: &TrafficPolicy) -> Arc<Resolved> {
        let lookups = &mut *self.lookups;
        let namespace = self.namespace;
        let resolved = lookups
            .resolved
            .entry(name)
            .or_insert_with(|| Arc::new(backend::resolve(lookups.state, lookups.slices, namespace, svc, upstream, traffic)))
            .clone();
        if !self.fragment.backends.iter().any(|b| Arc::ptr_eq(b, &resolved)) {
            self.fragment.backends.push(Arc::clone(&resolved));
        }
        resolved
    }
}

/// The path type's name, for messages, without keeping a copy per route.
fn static_path_type(path_type: &str) -> &'static str {
    match path_type {
        "Exact" => "Exact",
        "Prefix" => "Prefix",
        "ImplementationSpecific" => "ImplementationSpecific",
        _ => "unknown",
    }
}

/// A path of a `use-regex` Ingress: Exact stays exact; the others are patterns that
/// must compile (anchored at the start, case-insensitive, of bounded size).
fn regex_path_match(path_type: &str, path: Option<&str>) -> Result<PathMatch, String> {
    let path = path.unwrap_or("");
    match path_type {
        "Exact" => path_match(path_type, Some(path)),
        "Prefix" | "ImplementationSpecific" => {
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must start with '/'"));
            }
            regex::RegexBuilder::new(&format!("^(?:{path})"))
                .case_insensitive(true)
                .size_limit(crate::annotations::REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    format!("path {path:?} is not a regular expression that compiles: {}", e.to_string().lines().last().unwrap_or(""))
                })?;
            Ok(PathMatch::Regex(path.to_string()))
        }
        "" => Err("pathType must be specified".into()),
        other => Err(format!("pathType {other:?} is not one of Exact, Prefix, ImplementationSpecific")),
    }
}

/// Applies the path rules of `networking.k8s.io/v1` validation, then builds the matcher.
/// `ImplementationSpecific` is matched as `Prefix`.
fn path_match(path_type: &str, path: Option<&str>) -> Result<PathMatch, String> {
    let path = path.unwrap_or("");
    match path_type {
        "Exact" | "Prefix" => {
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must be an absolute path"));
            }
            for bad in ["//", "/./", "/../", "%2f", "%2F"] {
                if path.contains(bad) {
                    return Err(format!("path {path:?} must not contain {bad:?}"));
                }
            }
            if path.ends_with("/..") || path.ends_with("/.") {
                return Err(format!("path {path:?} must not end with '/..' or '/.'"));
            }
            Ok(if path_type == "Exact" { PathMatch::Exact(path.to_string()) } else { PathMatch::prefix(path) })
        }
        "ImplementationSpecific" if path.is_empty() => Ok(PathMatch::prefix("/")),
        "ImplementationSpecific" if path.starts_with('/') => Ok(PathMatch::prefix(path)),
        "ImplementationSpecific" => Err(format!("path {path:?} must be an absolute path")),
        "" => Err("pathType must be specified".into()),
        other => Err(format!("pathType {other:?} is not one of Exact, Prefix, ImplementationSpecific")),
    }
}

#[cfg(test)]
mod tests {
    use super::path_match;
    use portico_model::PathMatch;

    #[test]
    fn path_types_follow_the_api() {
        assert_eq!(path_match("Exact", Some("/foo/")), Ok(PathMatch::Exact("/foo/".into())));
        assert_eq!(path_match("Prefix", Some("/foo/")), Ok(PathMatch::Prefix("/foo".into())));
        assert_eq!(path_match("ImplementationSpecific", None), Ok(PathMatch::Prefix("/".into())));
        assert_eq!(path_match("ImplementationSpecific", Some("/a/")), Ok(PathMatch::Prefix("/a".into())));
        for (t, p) in [
            ("Prefix", "foo"),
            ("Exact", "/a//b"),
            ("Prefix", "/a/../b"),
            ("Exact", "/a%2Fb"),
            ("Prefix", "/a/.."),
            ("Regex", "/a"),
            ("", "/a"),
        ] {
            let err = path_match(t, Some(p)).unwrap_err();
            assert!(!err.is_empty(), "{t} {p}");
        }
        assert!(path_match("Prefix", None).unwrap_err().contains("absolute"));
    }
}
