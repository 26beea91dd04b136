//! Rewrites and redirects: the upstream path a `rewrite-target` makes from the route's
//! regex captures, and the `Location` a configured redirect names.

use crate::routing::normalize::{normalize, BadPath};

/// `$1`..`$9` and `${1}`..`${9}` replaced by the captures (absent ones by nothing).
fn expand_captures(template: &str, captures: Option<&regex::Captures<'_>>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let (digit, len) = match (bytes.get(i + 1), bytes.get(i + 2), bytes.get(i + 3)) {
                (Some(b'{'), Some(d), Some(b'}')) if d.is_ascii_digit() => (Some(d - b'0'), 4),
                (Some(d), _, _) if d.is_ascii_digit() => (Some(d - b'0'), 2),
                _ => (None, 1),
            };
            if let Some(n) = digit {
                if let Some(m) = captures.and_then(|c| c.get(n as usize)) {
                    out.push_str(m.as_str());
                }
                i += len;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// The path and query sent upstream for `target`: the captures filled in, the result
/// normalised like any request path, and the request's query appended (after the
/// target's own, as nginx's `rewrite` does).
pub fn upstream_path(
    target: &str,
    captures: Option<&regex::Captures<'_>>,
    query: Option<&str>,
    allow_encoded_slashes: bool,
) -> Result<String, BadPath> {
    let expanded = expand_captures(target, captures);
    let (path, own_query) = match expanded.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (expanded, None),
    };
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let mut out = normalize(&path, allow_encoded_slashes)?.into_owned();
    let queries: Vec<&str> = [own_query.as_deref(), query]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    if !queries.is_empty() {
        out.push('?');
        out.push_str(&queries.join("&"));
    }
    Ok(out)
}

/// A redirect target with `$scheme`, `$host` and `$request_uri` filled in.
pub fn redirect_location(target: &str, scheme: &str, host: &str, request_uri: &str) -> String {
    target
        .replace("$request_uri", request_uri)
        .replace("$scheme", scheme)
        .replace("$host", host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_groups_fill_the_target_and_the_query_follows() {
        let re = portico_model::pattern::path_regex("/something(/|$)(.*)").unwrap();
        let caps = re.captures("/something/new/path").unwrap();
        assert_eq!(
            upstream_path("/$2", Some(&caps), Some("a=1"), false).as_deref(),
            Ok("/new/path?a=1")
        );
        let caps = re.captures("/something").unwrap();
        assert_eq!(
            upstream_path("/$2", Some(&caps), None, false).as_deref(),
            Ok("/")
        );
        assert_eq!(
            upstream_path(
                "/v2/${2}?x=y",
                Some(&re.captures("/SOMETHING/a").unwrap()),
                Some("q=1"),
                false
            )
            .as_deref(),
            Ok("/v2/a?x=y&q=1")
        );
        assert_eq!(
            upstream_path("/fixed", None, None, false).as_deref(),
            Ok("/fixed")
        );
        assert_eq!(
            upstream_path("$1", None, None, false).as_deref(),
            Ok("/"),
            "an absent capture is empty"
        );
        let dots = portico_model::pattern::path_regex("/x(.*)").unwrap();
        assert!(
            upstream_path(
                "/$1/../../etc",
                Some(&dots.captures("/x..").unwrap()),
                None,
                false
            )
            .is_err(),
            "a rewrite cannot climb above the root"
        );
    }

    #[test]
    fn redirect_targets_take_the_request_values() {
        assert_eq!(
            redirect_location(
                "https://new.example$request_uri",
                "http",
                "a.test",
                "/p?q=1"
            ),
            "https://new.example/p?q=1"
        );
        assert_eq!(
            redirect_location("$scheme://www.$host/", "https", "a.test", "/"),
            "https://www.a.test/"
        );
    }
}
