//! GRPCRoute's rules: a method match is a path (`/package.Service/Method`), header
//! matches are conditions, and backends are spoken to in gRPC (HTTP/2 in clear text).
//! Parents, hostnames and backends are the route processor's, as for HTTPRoute.

use super::http_route::{
    add_for_hosts, apply_filters, fragment_route, report_problems, value_conditions, BackendReach,
    ProcessedRoute, RouteHead, RouteProcessor,
};
use super::types::{GrpcMethodMatch, GrpcRoute, GrpcRouteMatch};
use crate::cache::ObjectKey;
use crate::diagnostic::Reason;
use crate::ingress::Fragment;
use portico_model::{
    HostMatch, PathMatch, RequestConditions, SourceKind, Upstream, UpstreamProtocol,
};

impl RouteProcessor<'_> {
    pub fn process_grpc(&self, key: &ObjectKey, route: &GrpcRoute) -> Option<ProcessedRoute> {
        let head = RouteHead {
            kind: SourceKind::GRPCRoute,
            generation: route.metadata.generation,
            parent_refs: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
        };
        self.process(
            key,
            head,
            Box::new(|p, hosts, _, f| p.grpc_rules(key, route, hosts, f)),
        )
    }

    fn grpc_rules(
        &self,
        key: &ObjectKey,
        route: &GrpcRoute,
        hosts: &[HostMatch],
        fragment: &mut Fragment,
    ) -> Result<(), (&'static str, String)> {
        let reach = BackendReach {
            upstream: Upstream {
                protocol: UpstreamProtocol::Grpc,
                ..Upstream::default()
            },
            ..BackendReach::default()
        };
        let mut unresolved = Ok(());
        let mut routes = Vec::new();
        for (i, rule) in route.spec.rules.iter().enumerate() {
            let mut problems: Vec<(Reason, String)> = Vec::new();
            let mut template = self.rule_route(
                key,
                i,
                &rule.backend_refs,
                &reach,
                fragment,
                &mut unresolved,
            );
            let broken = apply_filters(&rule.filters, &mut template, &mut |m| {
                problems.push((Reason::UnsupportedField, format!("spec.rules[{i}].{m}")))
            });
            if let Some(j) = rule.filters.iter().position(|f| f.type_ == "RequestMirror") {
                // Copies are sent over HTTP/1.1, which a gRPC backend does not speak.
                problems.push((
                    Reason::UnsupportedField,
                    format!("spec.rules[{i}].filters[{j}]: RequestMirror is not supported on a GRPCRoute; nothing is copied"),
                ));
            }
            if broken || template.rewrite.is_some() {
                if template.rewrite.is_some() {
                    problems.push((
                        Reason::UnsupportedField,
                        format!("spec.rules[{i}].filters: redirects and rewrites are not GRPCRoute filters"),
                    ));
                }
                self.answer_500(key, &mut template, fragment);
            }
            let any = [GrpcRouteMatch::default()];
            let matches = if rule.matches.is_empty() {
                &any[..]
            } else {
                &rule.matches
            };
            for (j, m) in matches.iter().enumerate() {
                let (path, path_type) = match method_path(m.method.as_ref()) {
                    Ok(p) => p,
                    Err(message) => {
                        problems.push((
                            Reason::InvalidPath,
                            format!("spec.rules[{i}].matches[{j}].method: {message}"),
                        ));
                        continue;
                    }
                };
                let mut r = template.clone();
                r.path = path;
                let conditions = RequestConditions {
                    headers: value_conditions(&m.headers, true),
                    ..RequestConditions::default()
                };
                r.conditions =
                    (conditions != RequestConditions::default()).then(|| Box::new(conditions));
                routes.push(fragment_route(r, i, j, path_type));
            }
            report_problems(fragment, problems);
        }
        add_for_hosts(fragment, hosts, &routes);
        unresolved
    }
}

/// The path a gRPC method match stands for: `/service/method` exactly, the service's
/// prefix, or a pattern.
fn method_path(m: Option<&GrpcMethodMatch>) -> Result<(PathMatch, &'static str), String> {
    let Some(m) = m else {
        return Ok((PathMatch::prefix("/"), "PathPrefix"));
    };
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let name_ok = |s: &str| !s.contains('/') && !s.is_empty();
    match m.type_.as_deref().unwrap_or("Exact") {
        "Exact" => match (service, method) {
            (None, None) => Err("a method match needs a service or a method".into()),
            (Some(s), _) if !name_ok(s) => Err(format!("service {s:?} is not a name")),
            (_, Some(x)) if !name_ok(x) => Err(format!("method {x:?} is not a name")),
            (Some(s), Some(x)) => Ok((PathMatch::Exact(format!("/{s}/{x}")), "Exact")),
            (Some(s), None) => Ok((PathMatch::prefix(&format!("/{s}")), "PathPrefix")),
            (None, Some(x)) => Ok((
                PathMatch::Regex(format!("/[^/]+/{}$", regex_escape(x))),
                "RegularExpression",
            )),
        },
        "RegularExpression" => {
            let pattern = format!(
                "/{}/{}$",
                service.unwrap_or("[^/]+"),
                method.unwrap_or("[^/]+")
            );
            portico_model::pattern::path_regex(&pattern)
                .map_err(|e| format!("{pattern:?} does not compile: {e}"))?;
            Ok((PathMatch::Regex(pattern), "RegularExpression"))
        }
        other => Err(format!("type {other:?} is not a method match type")),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(type_: Option<&str>, service: Option<&str>, method: Option<&str>) -> GrpcMethodMatch {
        GrpcMethodMatch {
            type_: type_.map(Into::into),
            service: service.map(Into::into),
            method: method.map(Into::into),
        }
    }

    #[test]
    fn method_matches_become_paths() {
        let path = |x| method_path(Some(&x)).map(|(p, _)| p);
        assert_eq!(
            path(m(None, Some("pkg.Echo"), Some("Say"))),
            Ok(PathMatch::Exact("/pkg.Echo/Say".into()))
        );
        assert_eq!(
            path(m(None, Some("pkg.Echo"), None)),
            Ok(PathMatch::Prefix("/pkg.Echo".into()))
        );
        assert_eq!(
            path(m(None, None, Some("Say"))),
            Ok(PathMatch::Regex("/[^/]+/Say$".into()))
        );
        assert_eq!(
            path(m(Some("RegularExpression"), Some("pkg\\..*"), None)),
            Ok(PathMatch::Regex("/pkg\\..*/[^/]+$".into()))
        );
        assert!(path(m(None, None, None)).is_err());
        assert!(path(m(None, Some("a/b"), Some("x"))).is_err());
        assert_eq!(method_path(None).unwrap().0, PathMatch::prefix("/"));
    }
}
