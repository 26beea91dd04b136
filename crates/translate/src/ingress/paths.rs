//! The paths of an Ingress's rules, checked as the `networking.k8s.io/v1` API validates
//! them and turned into matchers. `ImplementationSpecific` is matched as `Prefix`; under
//! `use-regex` (or `rewrite-target`) Prefix paths are patterns.

use portico_model::PathMatch;

/// The path type's name, for messages, without keeping a copy per route.
pub(super) fn static_path_type(path_type: &str) -> &'static str {
    match path_type {
        "Exact" => "Exact",
        "Prefix" => "Prefix",
        "ImplementationSpecific" => "ImplementationSpecific",
        _ => "unknown",
    }
}

/// A path of a `use-regex` Ingress: Exact stays exact; the others are patterns that
/// must compile (anchored at the start, case-insensitive, of bounded size).
pub(super) fn regex_path_match(path_type: &str, path: Option<&str>) -> Result<PathMatch, String> {
    let path = path.unwrap_or("");
    match path_type {
        "Exact" => path_match(path_type, Some(path)),
        "Prefix" | "ImplementationSpecific" => {
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must start with '/'"));
            }
            portico_model::pattern::path_regex(path).map_err(|e| {
                format!(
                    "path {path:?} is not a regular expression that compiles: {}",
                    e.to_string().lines().last().unwrap_or("")
                )
            })?;
            Ok(PathMatch::Regex(path.to_string()))
        }
        "" => Err("pathType must be specified".into()),
        other => Err(format!(
            "pathType {other:?} is not one of Exact, Prefix, ImplementationSpecific"
        )),
    }
}

/// Applies the path rules of `networking.k8s.io/v1` validation, then builds the matcher.
/// `ImplementationSpecific` is matched as `Prefix`.
pub(super) fn path_match(path_type: &str, path: Option<&str>) -> Result<PathMatch, String> {
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
            Ok(if path_type == "Exact" {
                PathMatch::Exact(path.to_string())
            } else {
                PathMatch::prefix(path)
            })
        }
        "ImplementationSpecific" if path.is_empty() => Ok(PathMatch::prefix("/")),
        "ImplementationSpecific" if path.starts_with('/') => Ok(PathMatch::prefix(path)),
        "ImplementationSpecific" => Err(format!("path {path:?} must be an absolute path")),
        "" => Err("pathType must be specified".into()),
        other => Err(format!(
            "pathType {other:?} is not one of Exact, Prefix, ImplementationSpecific"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::path_match;
    use portico_model::PathMatch;

    #[test]
    fn path_types_follow_the_api() {
        assert_eq!(
            path_match("Exact", Some("/foo/")),
            Ok(PathMatch::Exact("/foo/".into()))
        );
        assert_eq!(
            path_match("Prefix", Some("/foo/")),
            Ok(PathMatch::Prefix("/foo".into()))
        );
        assert_eq!(
            path_match("ImplementationSpecific", None),
            Ok(PathMatch::Prefix("/".into()))
        );
        assert_eq!(
            path_match("ImplementationSpecific", Some("/a/")),
            Ok(PathMatch::Prefix("/a".into()))
        );
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
