//! `portico-controller --check DIR`: what a directory of manifests would make, printed
//! for a person or a CI pipeline to read before `kubectl apply`, and whether anything in
//! it is an error (the exit status).

use crate::manifests;
use crate::source::manifest_files;
use portico_translate::{translate, ClusterState, Options, Reason};
use std::fmt::Write;
use std::path::Path;

/// Problems that are wrong in the manifests themselves. The others (a Service, Secret or
/// endpoints the directory does not hold, an expired certificate, an annotation Portico
/// ignores) depend on the cluster the manifests go to, and are warnings.
fn is_error(reason: Reason) -> bool {
    !matches!(
        reason,
        Reason::ServiceNotFound
            | Reason::ServicePortNotFound
            | Reason::NoReadyEndpoints
            | Reason::SecretNotFound
            | Reason::ConfigMapNotFound
            | Reason::CertificateExpired
            | Reason::CanaryWithoutPrimary
            | Reason::UnsupportedAnnotation
            | Reason::UnsupportedSetting
            | Reason::RegexHost
            | Reason::CrossNamespaceShadowing
    )
}

/// The report on `dir`, and whether it holds no error.
pub fn report(dir: &Path, options: &Options) -> anyhow::Result<(String, bool)> {
    let mut out = String::new();
    let mut errors = 0;
    let mut objects = Vec::new();
    for path in manifest_files(dir)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (parsed, problems) = manifests::parse(&text);
        objects.extend(parsed);
        for p in problems {
            errors += 1;
            writeln!(out, "error    {}: {p}", path.display())?;
        }
    }
    let state: ClusterState = objects.into_iter().collect();
    let t = translate(&state, options);
    let mut warnings = 0;
    for d in &t.diagnostics {
        let error = is_error(d.reason);
        errors += usize::from(error);
        warnings += usize::from(!error);
        writeln!(out, "{}  {d}", if error { "error  " } else { "warning" })?;
    }
    writeln!(out, "admitted Ingresses: {}", t.admitted.len())?;
    for (namespace, name) in &t.admitted {
        writeln!(out, "  {namespace}/{name}")?;
    }
    let gateways = &t.gateway_status;
    if !gateways.gateways.is_empty() {
        writeln!(out, "Gateways: {}", gateways.gateways.len())?;
        for ((namespace, name), g) in &gateways.gateways {
            for l in &g.listeners {
                let accepted = l.conditions.iter().all(|c| match c.type_ {
                    "Conflicted" => !c.status,
                    _ => c.status,
                });
                let state = if accepted { "serving" } else { "not serving" };
                writeln!(
                    out,
                    "  {namespace}/{name} listener {:?}: {state}, {} routes attached",
                    l.name, l.attached_routes
                )?;
            }
        }
    }
    for (kind, routes) in [
        ("HTTPRoute", &gateways.http_routes),
        ("GRPCRoute", &gateways.grpc_routes),
    ] {
        for ((namespace, name), parents) in routes {
            let holds = |type_: &str| {
                parents
                    .iter()
                    .filter(|p| p.conditions.iter().any(|c| c.type_ == type_ && c.status))
                    .count()
            };
            let refs = if holds("ResolvedRefs") == parents.len() {
                "every reference resolved"
            } else {
                "some references unresolved"
            };
            writeln!(
                out,
                "  {kind} {namespace}/{name}: accepted by {} of {} parents, {refs}",
                holds("Accepted"),
                parents.len()
            )?;
        }
    }
    let endpoints = |backend: &str| {
        t.snapshot
            .backends
            .iter()
            .find(|b| b.name == backend)
            .map_or(0, |b| b.endpoints.len())
    };
    let routes: usize = t
        .snapshot
        .virtual_hosts
        .iter()
        .map(|v| v.routes.len())
        .sum();
    writeln!(out, "routes: {routes}")?;
    for vh in &t.snapshot.virtual_hosts {
        for r in &vh.routes {
            let matched = format!("{} {}", r.path.kind(), r.path.path());
            let conditions = if r.conditions.is_some() {
                " (with conditions)"
            } else {
                ""
            };
            writeln!(
                out,
                "  {} {matched}{conditions} -> {} ({} endpoints) from {}",
                vh.host,
                r.backend,
                endpoints(&r.backend),
                r.source.described()
            )?;
        }
    }
    if let Some(default) = &t.snapshot.default_backend {
        writeln!(out, "default backend: {default}")?;
    }
    writeln!(out, "{errors} errors, {warnings} warnings")?;
    Ok((out, errors == 0))
}
