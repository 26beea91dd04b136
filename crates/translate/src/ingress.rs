//! The Ingress processor: one admitted Ingress's rules and default backend, merged
//! into the routes collected so far from older Ingresses.

use crate::backend::{self, Resolved};
use crate::cache::ClusterState;
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use portico_model::{Backend, HostMatch, PathMatch, Route};
use std::collections::{BTreeMap, HashMap};

/// Everything collected from the Ingresses processed so far, oldest first.
#[derive(Default)]
pub(crate) struct RouteTable {
    pub hosts: BTreeMap<HostMatch, Vec<Route>>,
    /// Who claimed each host + path, so later claimants can be told.
    owners: HashMap<(HostMatch, PathMatch), String>,
    pub default_backend: Option<(String, String)>,
    /// Backends resolved so far, with the problem each had, shared by every referrer.
    resolved: BTreeMap<String, Resolved>,
}

impl RouteTable {
    pub fn into_backends(self) -> impl Iterator<Item = Backend> {
        self.resolved.into_values().map(|r| r.backend)
    }
}

pub(crate) struct IngressProcessor<'a> {
    state: &'a ClusterState,
    ingress: &'a Ingress,
    namespace: &'a str,
    source: String,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl<'a> IngressProcessor<'a> {
    pub fn new(state: &'a ClusterState, ingress: &'a Ingress, diagnostics: &'a mut Vec<Diagnostic>) -> Self {
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let name = ingress.metadata.name.as_deref().unwrap_or_default();
        IngressProcessor { state, ingress, namespace, source: format!("{namespace}/{name}"), diagnostics }
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
        let Some(spec) = self.ingress.spec.as_ref() else {
            return self.report(Reason::InvalidIngress, "spec is missing".into());
        };
        let rules = spec.rules.as_deref().unwrap_or_default();
        if rules.is_empty() && spec.default_backend.is_none() {
            return self.report(Reason::InvalidIngress, "either spec.defaultBackend or spec.rules must be specified".into());
        }
        if let Some(default) = &spec.default_backend {
            if let Some(name) = self.backend(table, default, "spec.defaultBackend") {
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
            for (j, path) in http.paths.iter().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let matcher = match path_match(path.path_type.as_str(), path.path.as_deref()) {
                    Ok(m) => m,
                    Err(why) => {
                        self.report(Reason::InvalidPath, format!("{field}: {why}"));
                        continue;
                    }
                };
                let Some(backend) = self.backend(table, &path.backend, &format!("{field}.backend")) else { continue };
                let claim = (host.clone(), matcher.clone());
                if let Some(owner) = table.owners.get(&claim) {
                    let msg = format!(
                        "{field}: {} path {:?} on host {:?} is already routed by Ingress {owner}, which is older; ignored",
                        path.path_type,
                        matcher.path(),
                        host.to_string(),
                    );
                    self.report(Reason::PathConflict, msg);
                    continue;
                }
                table.owners.insert(claim, self.source.clone());
                table.hosts.entry(host.clone()).or_default().push(Route { path: matcher, backend, source: self.source.clone() });
            }
        }
    }

    /// Resolves a backend reference, reporting problems; `None` when it cannot be routed at all.
    fn backend(&mut self, table: &mut RouteTable, backend: &IngressBackend, field: &str) -> Option<String> {
        let Some(svc) = backend.service.as_ref() else {
            let what = if backend.resource.is_some() { "resource backends are not supported" } else { "no service is named" };
            self.report(Reason::UnsupportedBackend, format!("{field}: {what}"));
            return None;
        };
        let name = backend::backend_name(self.namespace, svc);
        let resolved = table.resolved.entry(name.clone()).or_insert_with(|| backend::resolve(self.state, self.namespace, svc));
        if let Some((reason, message)) = resolved.problem.clone() {
            self.report(reason, format!("{field}: {message}"));
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
