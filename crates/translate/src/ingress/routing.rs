//! What an Ingress's annotations change about routing itself: rewrites and redirects
//! (`use-regex`, `rewrite-target`, `app-root`, the redirects, `upstream-vhost`,
//! `x-forwarded-prefix`), the request conditions (`match-*`) and `server-alias`.

use super::fragment::{Fragment, FragmentRoute, TlsClaim};
use crate::annotations::Annotations;
use crate::diagnostic::{Problem, Problems};
use portico_model::{HostMatch, PrefixSwap, Redirect, RequestConditions, Rewrite};

/// The rewrites of an Ingress's routes, and whether its Prefix paths are patterns.
pub(super) struct Rewrites {
    pub rewrite: Option<Rewrite>,
    /// `use-regex`, or `rewrite-target` (which implies it).
    pub regex_paths: bool,
}

/// A target that cannot be used is reported and left out.
pub(super) fn rewrites(a: &Annotations<'_>, problems: &mut Problems) -> Rewrites {
    let mut rw = Rewrite {
        target: problems.take(a.rewrite_target("rewrite-target")),
        app_root: problems.take(a.abs_path("app-root")),
        redirect: None,
        upstream_host: problems.take(a.attribute("upstream-vhost")),
        forwarded_prefix: problems.take(a.abs_path("x-forwarded-prefix")),
        location: location_swap(a, problems),
        cookie_domain: cookie_swap(a, "proxy-cookie-domain", problems),
        cookie_path: cookie_swap(a, "proxy-cookie-path", problems),
        log: false,
        replace_prefix: None,
    };
    // Only a rewrite has something to log; alone, the switch would make an empty rewrite.
    if rw.target.is_some() {
        rw.log = problems.take(a.bool("enable-rewrite-log")).unwrap_or(false);
    }
    // As in ingress-nginx, a temporal redirect wins over a permanent one.
    for (name, code_name, default_code) in [
        ("temporal-redirect", "temporal-redirect-code", 302),
        ("permanent-redirect", "permanent-redirect-code", 301),
    ] {
        if rw.redirect.is_some() {
            break;
        }
        if let Some(target) = problems.take(a.redirect_target(name)) {
            let code = problems
                .take(a.redirect_code(code_name))
                .unwrap_or(default_code);
            rw.redirect = Some(Redirect {
                code,
                target,
                relative: problems.take(a.bool("relative-redirects")).unwrap_or(false),
                with_port: problems
                    .take(a.bool("use-port-in-redirects"))
                    .unwrap_or(false),
                path: None,
            });
        }
    }
    let regex_paths = problems.take(a.bool("use-regex")).unwrap_or(false) || rw.target.is_some();
    Rewrites {
        rewrite: (rw != Rewrite::default()).then_some(rw),
        regex_paths,
    }
}

/// `proxy-redirect-from` and `proxy-redirect-to`, as nginx's `proxy_redirect from to`;
/// `off` (the default) rewrites nothing.
fn location_swap(a: &Annotations<'_>, problems: &mut Problems) -> Option<PrefixSwap> {
    let (key, from) = a.get("proxy-redirect-from")?;
    let from = from.trim();
    if from == "off" {
        return None;
    }
    let swap = a.get("proxy-redirect-to").map(|(_, to)| PrefixSwap {
        from: from.to_string(),
        to: to.trim().to_string(),
    });
    match swap {
        _ if from == "default" => problems.push(Problem::invalid(format!(
            "annotation {key}: \"default\" is not supported (Portico's upstreams are addresses, not the URL nginx would name); set the prefix to replace"
        ))),
        Some(swap) if swap.is_usable() => return Some(swap),
        Some(PrefixSwap { to, .. }) => problems.push(Problem::invalid(format!(
            "annotation {key}: {from:?} to {to:?} is not a pair of URL prefixes"
        ))),
        None => problems.push(Problem::invalid(format!(
            "annotation {key} needs proxy-redirect-to"
        ))),
    }
    None
}

/// `proxy-cookie-domain` or `proxy-cookie-path`: `off` (the default), or `FROM TO`.
fn cookie_swap(a: &Annotations<'_>, name: &str, problems: &mut Problems) -> Option<PrefixSwap> {
    let (key, value) = a.get(name)?;
    let value = value.trim();
    if value == "off" {
        return None;
    }
    let mut words = value.split_whitespace();
    let swap = match (words.next(), words.next(), words.next()) {
        (Some(from), Some(to), None) if !from.starts_with('~') => Some(PrefixSwap {
            from: from.to_string(),
            to: to.to_string(),
        }),
        _ => None,
    };
    match swap.filter(PrefixSwap::is_usable) {
        Some(swap) => Some(swap),
        None => {
            problems.push(Problem::invalid(format!(
                "annotation {key}: value {value:?} is not \"off\" or \"FROM TO\" (regular expressions are not supported)"
            )));
            None
        }
    }
}

/// `match-headers`, `match-methods` and `match-query`; `None` when none is set. A
/// condition that does not parse is an error for the whole Ingress, since without its
/// conditions a route would take traffic meant for others.
pub(super) fn conditions(a: &Annotations<'_>) -> Result<Option<RequestConditions>, Vec<Problem>> {
    let headers = a.value_conditions("match-headers", true);
    let query = a.value_conditions("match-query", false);
    let methods = a.methods("match-methods");
    match (headers, methods, query) {
        (Ok(headers), Ok(methods), Ok(query)) => {
            let c = RequestConditions {
                headers: headers.unwrap_or_default(),
                methods: methods.unwrap_or_default(),
                query: query.unwrap_or_default(),
            };
            Ok((c != RequestConditions::default()).then_some(c))
        }
        (headers, methods, query) => Err([headers.err(), query.err(), methods.err()]
            .into_iter()
            .flatten()
            .map(|e| {
                Problem::new(
                    e.reason(),
                    format!("{}; the Ingress's routes are skipped", e.message()),
                )
            })
            .collect()),
    }
}

/// `server-alias`: the other names that serve the routes of the Ingress's named hosts.
/// A name that is not a host name (or is a catch-all) is reported and ignored.
pub(super) fn aliases(a: &Annotations<'_>, problems: &mut Problems) -> Vec<HostMatch> {
    let Some((key, value)) = a.get("server-alias") else {
        return Vec::new();
    };
    let mut aliases = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.parse::<HostMatch>() {
            Ok(h @ (HostMatch::Exact(_) | HostMatch::Wildcard(_))) => aliases.push(h),
            Ok(HostMatch::Any | HostMatch::Suffix(_)) | Err(_) => problems.push(Problem::invalid(
                format!("annotation {key}: {name:?} is not a host name; ignored"),
            )),
        }
    }
    aliases
}

/// `from-to-www-redirect`: `www.example.com` for `example.com` and the other way
/// round, each path answering 308 to the same URL on the named host; a name the Ingress
/// routes itself is left alone.
pub(super) fn www_redirects(
    rules: &[(HostMatch, Vec<FragmentRoute>)],
) -> Vec<(HostMatch, Vec<FragmentRoute>)> {
    let mut redirects = Vec::new();
    for (host, routes) in rules {
        let HostMatch::Exact(name) = host else {
            continue;
        };
        let other = match name.strip_prefix("www.") {
            Some(bare) => bare.to_string(),
            None => format!("www.{name}"),
        };
        let Ok(other) = other.parse::<HostMatch>() else {
            continue;
        };
        if rules.iter().any(|(h, _)| *h == other) {
            continue;
        }
        let target = format!("$scheme://{name}$request_uri");
        let routes = routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                let rewrite = Rewrite {
                    redirect: Some(Redirect {
                        code: 308,
                        target: target.clone(),
                        relative: false,
                        with_port: false,
                        path: None,
                    }),
                    ..Rewrite::default()
                };
                r.route.rewrite = Some(Box::new(rewrite));
                r
            })
            .collect();
        redirects.push((other, routes));
    }
    redirects
}

/// `server-alias`: each alias serves the routes (and TLS) of the Ingress's named hosts;
/// an alias the Ingress names as a host itself is left alone.
pub(super) fn add_aliases(fragment: &mut Fragment, aliases: Vec<HostMatch>) {
    let named: Vec<(HostMatch, Vec<FragmentRoute>)> = fragment
        .rules
        .iter()
        .filter(|(h, _)| *h != HostMatch::Any)
        .map(|(h, r)| (h.clone(), r.clone()))
        .collect();
    for alias in aliases {
        if named.iter().any(|(h, _)| *h == alias) {
            continue;
        }
        let routes: Vec<FragmentRoute> =
            named.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
        if let Some(claim) = fragment
            .tls
            .iter()
            .find(|c| named.iter().any(|(h, _)| *h == c.host))
        {
            let claim = TlsClaim {
                host: alias.clone(),
                certificate: claim.certificate.clone(),
                entry: claim.entry,
                listener: false,
            };
            fragment.tls.push(claim);
        }
        fragment.rules.push((alias, routes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::nginx_annotations as annotations;

    #[test]
    fn a_rewrite_target_makes_paths_patterns_and_temporal_beats_permanent() {
        let mut problems = Problems::default();
        let map = annotations(&[
            ("rewrite-target", "/$2"),
            ("permanent-redirect", "https://a.test"),
            ("temporal-redirect", "https://b.test"),
        ]);
        let r = rewrites(&Annotations::new(Some(&map)), &mut problems);
        assert!(r.regex_paths);
        let rw = r.rewrite.unwrap();
        assert_eq!(rw.target.as_deref(), Some("/$2"));
        assert_eq!(
            rw.redirect,
            Some(Redirect {
                code: 302,
                target: "https://b.test".into(),
                relative: false,
                with_port: false,
                path: None,
            })
        );
        let plain = rewrites(&Annotations::new(None), &mut problems);
        assert!(!plain.regex_paths && plain.rewrite.is_none());
        assert!(problems.0.is_empty(), "{:?}", problems.0);
    }

    #[test]
    fn conditions_that_do_not_parse_skip_the_ingress() {
        let map = annotations(&[
            ("match-methods", "GET, POST"),
            ("match-headers", "x-env=staging"),
        ]);
        let c = conditions(&Annotations::new(Some(&map))).unwrap().unwrap();
        assert_eq!(c.methods, vec!["GET".to_string(), "POST".to_string()]);
        assert_eq!(conditions(&Annotations::new(None)), Ok(None));
        let bad = annotations(&[("match-headers", "x-env~=(")]);
        let problems = conditions(&Annotations::new(Some(&bad))).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .ends_with("; the Ingress's routes are skipped"),
            "{problems:?}"
        );
    }

    #[test]
    fn aliases_must_be_host_names() {
        let mut problems = Problems::default();
        let map = annotations(&[("server-alias", "a.test, *.b.test, *, bad host")]);
        let found = aliases(&Annotations::new(Some(&map)), &mut problems);
        assert_eq!(
            found,
            vec!["a.test".parse().unwrap(), "*.b.test".parse().unwrap()]
        );
        assert_eq!(problems.0.len(), 2);
    }
}
