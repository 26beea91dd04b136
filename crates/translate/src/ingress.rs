//! The Ingress processor: one admitted Ingress's rules and default backend, merged
//! into the routes collected so far from older Ingresses.

use crate::annotations::{Annotations, InvalidAnnotation};
use crate::backend::{self, Resolved, SliceIndex};
use crate::cache::{ClusterState, ObjectKey};
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::secret::{self, CheckedCertificate};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressServiceBackend};
use portico_model::{Backend, HostMatch, PathMatch, Route, Upstream};
use std::collections::{BTreeMap, HashMap};

/// Everything collected from the Ingresses processed so far, oldest first.
#[derive(Default)]
pub(crate) struct RouteTable {
    pub hosts: BTreeMap<HostMatch, HostRoutes>,
    pub default_backend: Option<(String, String)>,
    /// Backends resolved so far, with the problem each had, shared by every referrer.
    resolved: HashMap<String, Resolved>,
    /// Hosts named in `spec.tls`, with the certificate they present (`None`: the
    /// default one) and the Ingress that claimed them first.
    pub tls_hosts: BTreeMap<HostMatch, TlsClaim>,
    /// TLS Secrets checked so far, by `(namespace, name)`.
    pub secrets: HashMap<ObjectKey, Result<CheckedCertificate, (Reason, String)>>,
}

pub(crate) struct TlsClaim {
    pub certificate: Option<String>,
    pub owner: String,
}

/// The routes of one host, and which route claimed each path, so that a later
/// Ingress claiming the same path can be told who owns it.
#[derive(Default)]
pub(crate) struct HostRoutes {
    pub routes: Vec<Route>,
    /// Per route: whether `ssl-redirect` leaves it on, which takes effect when the host has TLS.
    pub ssl_redirect: Vec<bool>,
    by_path: HashMap<PathMatch, usize>,
}

/// What an Ingress's annotations say about all of its routes.
struct RoutePolicy {
    ssl_redirect: bool,
    force_ssl_redirect: bool,
    upstream: Upstream,
}

impl RouteTable {
    /// The resolved backends, sorted by name so that translation is deterministic.
    pub fn into_backends(self) -> Vec<Backend> {
        let mut backends: Vec<Backend> = self.resolved.into_values().map(|r| r.backend).collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        backends
    }
}

pub(crate) struct IngressProcessor<'a> {
    state: &'a ClusterState,
    slices: &'a SliceIndex<'a>,
    ingress: &'a Ingress,
    namespace: &'a str,
    source: String,
    diagnostics: &'a mut Vec<Diagnostic>,
    /// The last service backend named and its backend name.
    last_backend: Option<(&'a IngressServiceBackend, String)>,
    policy: RoutePolicy,
}

impl<'a> IngressProcessor<'a> {
    pub fn new(state: &'a ClusterState, slices: &'a SliceIndex<'a>, ingress: &'a Ingress, diagnostics: &'a mut Vec<Diagnostic>) -> Self {
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let name = ingress.metadata.name.as_deref().unwrap_or_default();
        let policy = RoutePolicy { ssl_redirect: true, force_ssl_redirect: false, upstream: Upstream::default() };
        IngressProcessor {
            state,
            slices,
            ingress,
            namespace,
            source: format!("{namespace}/{name}"),
            diagnostics,
            last_backend: None,
            policy,
        }
    }

    /// A bad annotation is reported and its default kept.
    fn annotation<T>(&mut self, parsed: Result<Option<T>, InvalidAnnotation>) -> Option<T> {
        parsed.unwrap_or_else(|e| {
            self.report(e.reason(), e.message());
            None
        })
    }

    fn read_annotations(&mut self) {
        let a = Annotations::new(self.ingress.metadata.annotations.as_ref());
        self.policy.ssl_redirect = self.annotation(a.bool("ssl-redirect")).unwrap_or(true);
        self.policy.force_ssl_redirect = self.annotation(a.bool("force-ssl-redirect")).unwrap_or(false);
        let protocol = self.annotation(a.backend_protocol()).unwrap_or_default();
        let mut upstream = Upstream { protocol, ..Upstream::default() };
        if protocol.uses_tls() {
            upstream.verify = self.annotation(a.on_off("proxy-ssl-verify")).unwrap_or(false);
            let send_sni = self.annotation(a.on_off("proxy-ssl-server-name")).unwrap_or(false);
            upstream.server_name = self.annotation(a.server_name("proxy-ssl-name"));
            if let Some(secret_ref) = self.annotation(a.secret_ref("proxy-ssl-secret", self.namespace)) {
                upstream.ca_pem = Some(self.ca_bundle(secret_ref));
            }
            // Verification needs a name; the Service's cluster DNS name is the one its certificate carries.
            if upstream.server_name.is_none() && (upstream.verify || send_sni) {
                upstream.server_name = Some(String::new()); // filled per Service in `backend`
            }
        }
        self.policy.upstream = upstream;
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
        match self.state.secrets.get(&(namespace.clone(), name.clone())) {
            None => {
                self.report(Reason::SecretNotFound, format!("annotation proxy-ssl-secret: secret {namespace}/{name} does not exist"));
                String::new()
            }
            Some(s) => secret::ca_bundle(&format!("{namespace}/{name}"), s).unwrap_or_else(|e| {
                self.report(Reason::InvalidSecret, format!("annotation proxy-ssl-secret: {e}"));
                String::new()
            }),
        }
    }

    /// Binds the hosts of each `spec.tls` entry to its Secret's certificate; the oldest
    /// Ingress to name a host decides its certificate.
    fn process_tls(&mut self, table: &mut RouteTable) {
        let Some(spec) = self.ingress.spec.as_ref() else { return };
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let certificate = match tls.secret_name.as_deref() {
                None | Some("") => None,
                Some(name) => self.certificate(table, i, name),
            };
            // An entry without hosts covers the hosts of this Ingress's rules.
            let hosts: Vec<&str> = match tls.hosts.as_deref() {
                Some(h) if !h.is_empty() => h.iter().map(String::as_str).collect(),
                _ => spec.rules.iter().flatten().filter_map(|r| r.host.as_deref()).collect(),
            };
            for (j, text) in hosts.into_iter().enumerate() {
                let host: HostMatch = match text.parse() {
                    Ok(h) => h,
                    Err(e) => {
                        self.report(Reason::InvalidHost, format!("spec.tls[{i}].hosts[{j}] {text:?}: {}", e.reason));
                        continue;
                    }
                };
                match table.tls_hosts.get(&host) {
                    Some(claim) if claim.certificate != certificate => {
                        let msg = format!(
                            "spec.tls[{i}]: host {text:?} already presents the certificate of Ingress {}, which is older; ignored",
                            claim.owner
                        );
                        self.report(Reason::TLSConflict, msg);
                    }
                    Some(_) => {}
                    None => {
                        table.tls_hosts.insert(host, TlsClaim { certificate: certificate.clone(), owner: self.source.clone() });
                    }
                }
            }
        }
    }

    /// The certificate name of Secret `name` in this namespace, `None` when it cannot be used.
    fn certificate(&mut self, table: &mut RouteTable, i: usize, name: &str) -> Option<String> {
        let key = (self.namespace.to_string(), name.to_string());
        let state = self.state;
        let checked = table.secrets.entry(key.clone()).or_insert_with(|| {
            let full = format!("{}/{name}", key.0);
            match state.secrets.get(&key) {
                None => Err((Reason::SecretNotFound, format!("secret {full} does not exist"))),
                Some(s) => secret::tls_certificate(&full, s).map_err(|e| (Reason::InvalidSecret, e)),
            }
        });
        match checked {
            Ok(c) => {
                let (name, warning) = (c.certificate.name.clone(), c.warning.clone());
                if let Some(w) = warning {
                    self.report(Reason::CertificateExpired, format!("spec.tls[{i}].secretName: {w}"));
                }
                Some(name)
            }
            Err((reason, message)) => {
                let msg = format!("spec.tls[{i}].secretName: {message}; its hosts get the default certificate");
                let reason = *reason;
                self.report(reason, msg);
                None
            }
        }
    }

    fn report(&mut self, reason: Reason, message: String) {
        let object = ObjectRef {
            kind: "Ingress",
            namespace: self.namespace.to_string(),
            name: self.ingress.metadata.name.clone().unwrap_or_default(),
        };
        self.diagnostics.push(Diagnostic { object, reason, message });
    }

    pub fn process(mut self, table: &mut RouteTable) {
        let ingress = self.ingress;
        let Some(spec) = ingress.spec.as_ref() else {
            return self.report(Reason::InvalidIngress, "spec is missing".into());
        };
        let rules = spec.rules.as_deref().unwrap_or_default();
        if rules.is_empty() && spec.default_backend.is_none() {
            return self.report(Reason::InvalidIngress, "either spec.defaultBackend or spec.rules must be specified".into());
        }
        self.read_annotations();
        self.process_tls(table);
        if let Some(default) = &spec.default_backend {
            if let Some(name) = self.backend(&mut table.resolved, default, || "spec.defaultBackend".into()) {
                match &table.default_backend {
                    None => table.default_backend = Some((name, self.source.clone())),
                    Some((_, owner)) => {
                        let msg = format!("spec.defaultBackend ignored: Ingress {owner} is older and already sets the default backend");
                        self.report(Reason::DefaultBackendConflict, msg);
                    }
                }
            }
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
            let host_routes = table.hosts.entry(host.clone()).or_default();
            for (j, path) in http.paths.iter().enumerate() {
                let matcher = match path_match(path.path_type.as_str(), path.path.as_deref()) {
                    Ok(m) => m,
                    Err(why) => {
                        self.report(Reason::InvalidPath, format!("{}: {why}", field(j)));
                        continue;
                    }
                };
                let Some(backend) = self.backend(&mut table.resolved, &path.backend, || format!("{}.backend", field(j))) else { continue };
                if let Some(owner) = host_routes.by_path.get(&matcher).map(|r| &host_routes.routes[*r].source) {
                    let msg = format!(
                        "{}: {} path {:?} on host {:?} is already routed by Ingress {owner}, which is older; ignored",
                        field(j),
                        path.path_type,
                        matcher.path(),
                        host.to_string(),
                    );
                    self.report(Reason::PathConflict, msg);
                    continue;
                }
                host_routes.by_path.insert(matcher.clone(), host_routes.routes.len());
                host_routes.ssl_redirect.push(self.policy.ssl_redirect);
                let redirect_to_https = self.policy.force_ssl_redirect;
                host_routes.routes.push(Route { path: matcher, backend, source: self.source.clone(), redirect_to_https });
            }
        }
    }

    /// Resolves a backend reference, reporting problems; `None` when it cannot be routed at all.
    fn backend(
        &mut self,
        resolved: &mut HashMap<String, Resolved>,
        backend: &'a IngressBackend,
        field: impl Fn() -> String,
    ) -> Option<String> {
        let Some(svc) = backend.service.as_ref() else {
            let what = if backend.resource.is_some() { "resource backends are not supported" } else { "no service is named" };
            self.report(Reason::UnsupportedBackend, format!("{}: {what}", field()));
            return None;
        };
        // The paths of one Ingress mostly name the same Service: reuse the last name.
        let mut upstream = self.policy.upstream.clone();
        if upstream.server_name.as_deref() == Some("") {
            upstream.server_name = Some(format!("{}.{}.svc", svc.name, self.namespace));
        }
        let name = match &self.last_backend {
            Some((last, name)) if *last == svc => name.clone(),
            _ => {
                let name = backend::backend_name(self.namespace, svc, &upstream);
                self.last_backend = Some((svc, name.clone()));
                name
            }
        };
        let entry =
            resolved.entry(name.clone()).or_insert_with(|| backend::resolve(self.state, self.slices, self.namespace, svc, &upstream));
        if let Some((reason, message)) = entry.problem.clone() {
            self.report(reason, format!("{}: {message}", field()));
        }
        Some(name)
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
