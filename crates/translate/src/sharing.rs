//! How Ingresses of different namespaces share a host. Under ingress-nginx's rules (the
//! default, `--host-ownership shared`) another namespace can take part of a host's traffic:
//! an Exact path inside someone's Prefix, a longer Prefix, a TLS section that turns
//! someone's plain routes into redirects to its certificate. Those stay allowed, and each
//! is a `CrossNamespaceShadowing` warning on both Ingresses, naming the other. With
//! `--host-ownership namespace` the namespace of the oldest Ingress on a host owns it and
//! other namespaces' rules and TLS sections for it are refused.

use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::merge::RouteTable;
use portico_model::{PathMatch, SourceRef};
use std::collections::{BTreeMap, HashMap};

/// Who may route a host (`--host-ownership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostOwnership {
    /// Any namespace, as ingress-nginx: the oldest Ingress wins each path.
    #[default]
    Shared,
    /// Only the namespace of the oldest Ingress naming the host.
    Namespace,
}

/// What one Ingress takes from another's, aggregated per pair and host so that a
/// catch-all beside a hundred paths is one warning each way, not a hundred.
struct Shadowing<'f> {
    example: (&'f PathMatch, &'f PathMatch),
    count: usize,
}

/// Reports every place where a route of one namespace is matched ahead of another
/// namespace's route for part of that route's requests, and every TLS section that
/// redirects another namespace's routes. Hosts whose paths are regexes are left to the
/// `RegexHost` warning: there, any longer pattern may come first.
pub(crate) fn report_shadowing(table: &RouteTable<'_>, diagnostics: &mut Vec<Diagnostic>) {
    for (host, routes) in &table.hosts {
        let Some(first) = routes.routes.first() else {
            continue;
        };
        let namespace = &first.route.source.namespace;
        if routes
            .routes
            .iter()
            .all(|r| &r.route.source.namespace == namespace)
        {
            continue;
        }
        let host_text = host.to_string();
        if let Some(tls) = table.tls_hosts.get(host) {
            let mut told: Vec<&SourceRef> = Vec::new();
            for r in &routes.routes {
                let source = &r.route.source;
                if source.namespace == tls.owner.namespace
                    || table.tls_claimed_by(host, &source.namespace)
                    || !r.ssl_redirect
                    || told.contains(&source)
                {
                    continue;
                }
                told.push(source);
                warn(diagnostics, tls.owner, format!(
                    "host {host_text:?}: this Ingress's TLS section also redirects the routes of Ingress {source}, of another namespace, to HTTPS with this Ingress's certificate"
                ));
                warn(diagnostics, source, format!(
                    "host {host_text:?}: the TLS section of Ingress {}, of another namespace, redirects this Ingress's routes to HTTPS with its certificate",
                    tls.owner
                ));
            }
        }
        if routes.regex_by.is_some() {
            continue;
        }
        let prefixes: HashMap<&str, Vec<usize>> =
            routes
                .routes
                .iter()
                .enumerate()
                .fold(HashMap::new(), |mut m, (i, r)| {
                    if let PathMatch::Prefix(p) = &r.route.path {
                        m.entry(p.as_str()).or_default().push(i);
                    }
                    m
                });
        let mut found: BTreeMap<(&SourceRef, &SourceRef), Shadowing<'_>> = BTreeMap::new();
        for r in &routes.routes {
            let (path, exact) = match &r.route.path {
                PathMatch::Exact(p) => (p.as_str(), true),
                PathMatch::Prefix(p) => (p.as_str(), false),
                PathMatch::Regex(_) => continue,
            };
            // Every Prefix this path lies within is matched after it for its requests:
            // the path itself (an Exact is tried first) and each shorter run of segments.
            for within in enclosing_prefixes(path, exact) {
                for &i in prefixes.get(within).into_iter().flatten() {
                    let other = &routes.routes[i].route;
                    if other.source.namespace == r.route.source.namespace {
                        continue;
                    }
                    found
                        .entry((&r.route.source, &other.source))
                        .and_modify(|s| s.count += 1)
                        .or_insert(Shadowing {
                            example: (&r.route.path, &other.path),
                            count: 1,
                        });
                }
            }
        }
        for ((taker, taken), s) in found {
            let (mine, theirs) = s.example;
            let more = match s.count {
                1 => String::new(),
                n => format!(" (and {} more such paths)", n - 1),
            };
            warn(diagnostics, taker, format!(
                "host {host_text:?}: {} path {:?} of this Ingress takes requests from {} path {:?} of Ingress {taken}, of another namespace{more}",
                mine.kind(), mine.path(), theirs.kind(), theirs.path()
            ));
            warn(diagnostics, taken, format!(
                "host {host_text:?}: {} path {:?} of Ingress {taker}, of another namespace, takes requests from this Ingress's {} path {:?}{more}",
                mine.kind(), mine.path(), theirs.kind(), theirs.path()
            ));
        }
    }
}

fn warn(diagnostics: &mut Vec<Diagnostic>, about: &SourceRef, message: String) {
    diagnostics.push(Diagnostic {
        object: ObjectRef::source(about),
        reason: Reason::CrossNamespaceShadowing,
        message,
    });
}

/// The Prefix paths matched after `path` for some of its requests: for an Exact path,
/// the path itself and each shorter run of whole segments; for a Prefix, the shorter runs.
fn enclosing_prefixes(path: &str, exact: bool) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    let own = exact.then_some(if trimmed.is_empty() { "/" } else { trimmed });
    let mut rest = trimmed;
    let shorter = std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.rfind('/')?;
        rest = &rest[..cut];
        Some(if rest.is_empty() { "/" } else { rest })
    });
    own.into_iter().chain(shorter)
}

#[cfg(test)]
mod tests {
    use super::enclosing_prefixes;

    #[test]
    fn the_prefixes_around_a_path_are_its_shorter_runs_of_segments() {
        let of = |p, exact| enclosing_prefixes(p, exact).collect::<Vec<_>>();
        assert_eq!(of("/a/b/c", false), ["/a/b", "/a", "/"]);
        assert_eq!(of("/a/b", true), ["/a/b", "/a", "/"]);
        assert_eq!(of("/a/", true), ["/a", "/"]);
        assert_eq!(of("/", false), Vec::<&str>::new());
        assert_eq!(of("/", true), ["/"]);
    }
}
