//! The Ingress processor: one admitted Ingress's rules and default backend, merged
//! into the routes collected so far from older Ingresses.

use crate::backend::{self, Resolved, SliceIndex};
use crate::cache::ClusterState;
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressServiceBackend};
use portico_model::{Backend, HostMatch, PathMatch, Route};
use std::collections::{BTreeMap, HashMap};

/// Everything collected from the Ingresses processed so far, oldest first.
#[derive(Default)]
pub(crate) struct RouteTable {
    pub hosts: BTreeMap<HostMatch, HostRoutes>,
    pub default_backend: Option<(String, String)>,
    /// Backends resolved so far, with the problem each had, shared by every referrer.
    resolved: HashMap<String, Resolved>,
}

/// The routes of one host, and which route claimed each path, so that a later
/// Ingress claiming the same path can be told who owns it.
#[derive(Default)]
pub(crate) struct HostRoutes {
    pub routes: Vec<Route>,
    by_path: HashMap<PathMatch, usize>,
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
}

impl<'a> IngressProcessor<'a> {
    pub fn new(state: &'a ClusterState, slices: &'a SliceIndex<'a>, ingress: &'a Ingress, diagnostics: &'a mut Vec<Diagnostic>) -> Self {
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let name = ingress.metadata.name.as_deref().unwrap_or_default();
        IngressProcessor { state, slices, ingress, namespace, source: format!("{namespace}/{name}"), diagnostics, last_backend: None }
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
                host_routes.routes.push(Route { path: matcher, backend, source: self.source.clone() });
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
        let name = match &self.last_backend {
            Some((last, name)) if *last == svc => name.clone(),
            _ => {
                let name = backend::backend_name(self.namespace, svc);
                self.last_backend = Some((svc, name.clone()));
                name
            }
        };
        let entry = resolved.entry(name.clone()).or_insert_with(|| backend::resolve(self.state, self.slices, self.namespace, svc));
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
