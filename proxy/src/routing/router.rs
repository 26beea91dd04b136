//! Lookup structures built once per snapshot so that routing a request costs a few
//! hash lookups and no allocation: [`HostTable`] picks the virtual host, [`PathMatcher`]
//! the route inside it.

use portico_model::{HostMatch, PathMatch, VirtualHost};
use std::sync::Arc;

/// Keys come from the snapshot, never from requests, so a fast non-keyed hash cannot be
/// pushed into collisions by clients; requests only look up.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// Maps a request's host to the index of the most specific virtual host:
/// exact name, then a wildcard covering exactly one label, then the Gateway API wildcard
/// of the longest suffix, then the catch-all.
#[derive(Debug, Default)]
pub struct HostTable {
    exact: HashMap<Box<str>, usize>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, usize>,
    /// Keyed by the suffix after `**.` (any number of labels in front).
    suffix: HashMap<Box<str>, usize>,
    any: Option<usize>,
}

impl HostTable {
    /// The table of `hosts`, each at its position.
    pub fn of(hosts: &[Arc<VirtualHost>]) -> Self {
        let mut table = HostTable::default();
        for (i, vh) in hosts.iter().enumerate() {
            table.insert(&vh.host, i);
        }
        table
    }

    pub fn insert(&mut self, host: &HostMatch, index: usize) {
        match host {
            HostMatch::Any => self.any = Some(index),
            HostMatch::Exact(h) => {
                self.exact.insert(h.as_str().into(), index);
            }
            HostMatch::Wildcard(s) => {
                self.wildcard.insert(s.as_str().into(), index);
            }
            HostMatch::Suffix(s) => {
                self.suffix.insert(s.as_str().into(), index);
            }
        }
    }

    /// `authority` is a Host header value or URI authority, in any case, with or
    /// without a port.
    pub fn lookup(&self, authority: &str) -> Option<usize> {
        let mut buf = [0u8; 256];
        let Some(host) = normalise_host(authority, &mut buf) else {
            return self.any;
        };
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        if !self.wildcard.is_empty() {
            if let Some((_, suffix)) = host.split_once('.') {
                if let Some(i) = self.wildcard.get(suffix) {
                    return Some(*i);
                }
            }
        }
        if !self.suffix.is_empty() {
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(i) = self.suffix.get(suffix) {
                    return Some(*i);
                }
                rest = suffix;
            }
        }
        self.any
    }
}

/// Strips the port and a trailing dot and lower-cases, into `buf` when needed.
/// `None` for a host that cannot name a virtual host (empty, too long, an IPv6 literal).
fn normalise_host<'a>(authority: &'a str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    if authority.starts_with('[') {
        return None;
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Maps a request path to a value (the compiler stores backend indexes) with Kubernetes precedence: the longest match
/// wins, and Exact beats Prefix at equal length. Prefix matching is element-wise.
///
/// Regular-expression routes (`use-regex`) sit between the two, as in ingress-nginx
/// (nginx's `location ~*` beats a plain prefix): Exact, then the first regex that
/// matches, longest pattern first, then the longest prefix.
#[derive(Debug, Default)]
pub struct PathMatcher {
    exact: HashMap<Box<str>, usize>,
    /// Keyed by the normalised prefix (no trailing slash; the root is `/`).
    prefix: HashMap<Box<str>, usize>,
    /// Longest pattern first; among equal lengths, in insertion order.
    regex: Vec<(regex::Regex, usize)>,
}

impl PathMatcher {
    /// A regex path is inserted with its compiled form (`portico_model::pattern::path_regex`),
    /// which the caller keeps too, for the route's captures; without it, it matches nothing.
    pub fn insert(&mut self, path: &PathMatch, compiled: Option<&regex::Regex>, index: usize) {
        match path {
            PathMatch::Exact(p) => {
                self.exact.entry(p.as_str().into()).or_insert(index);
            }
            PathMatch::Prefix(p) => {
                self.prefix.entry(p.as_str().into()).or_insert(index);
            }
            PathMatch::Regex(_) => {
                if let Some(re) = compiled.cloned() {
                    let at = self
                        .regex
                        .partition_point(|(r, _)| r.as_str().len() >= re.as_str().len());
                    self.regex.insert(at, (re, index));
                }
            }
        }
    }

    pub fn lookup(&self, path: &str) -> Option<usize> {
        self.lookup_by(path, |_| true)
    }

    /// Like [`PathMatcher::lookup`], but a value `accept` refuses does not match, and the
    /// next best match is tried: this is how a request that meets no route's conditions
    /// on one path falls through to a shorter one.
    pub fn lookup_by(&self, path: &str, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
        // An exact match is as long as the request path, so nothing can beat it.
        if let Some(i) = self.exact.get(path).copied().filter(|i| accept(*i)) {
            return Some(i);
        }
        if let Some((_, i)) = self
            .regex
            .iter()
            .find(|(r, i)| r.is_match(path) && accept(*i))
        {
            return Some(*i);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Try the path, then each shorter run of whole segments, longest first.
        let mut candidate = path.trim_end_matches('/');
        loop {
            if candidate.is_empty() {
                return self.prefix.get("/").copied().filter(|i| accept(*i));
            }
            if let Some(i) = self.prefix.get(candidate).copied().filter(|i| accept(*i)) {
                return Some(i);
            }
            match candidate.rfind('/') {
                Some(cut) => candidate = &candidate[..cut],
                None => return self.prefix.get("/").copied().filter(|i| accept(*i)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a matcher from `(type, path)` rules; route indexes follow the list.
    fn matcher(rules: &[(&str, &str)]) -> PathMatcher {
        let mut m = PathMatcher::default();
        for (i, (kind, path)) in rules.iter().enumerate() {
            let pm = match *kind {
                "Exact" => PathMatch::Exact(path.to_string()),
                "Regex" => PathMatch::Regex(path.to_string()),
                _ => PathMatch::prefix(path),
            };
            let compiled = portico_model::pattern::path_regex(path)
                .ok()
                .filter(|_| *kind == "Regex");
            m.insert(&pm, compiled.as_ref(), i);
        }
        m
    }

    #[test]
    fn regex_routes_come_after_exact_and_before_prefix_longest_pattern_first() {
        let m = matcher(&[
            ("Prefix", "/"),
            ("Regex", "/api/v[0-9]+/.*"),
            ("Regex", "/api/.*"),
            ("Exact", "/api/v1/x"),
            ("Prefix", "/api/v1"),
        ]);
        assert_eq!(m.lookup("/api/v1/x"), Some(3), "Exact first");
        assert_eq!(
            m.lookup("/api/v1/y"),
            Some(1),
            "the longer pattern before the shorter, and both before the prefix"
        );
        assert_eq!(m.lookup("/API/other"), Some(2), "case-insensitive");
        assert_eq!(m.lookup("/x/api/other"), Some(0), "anchored at the start");
    }

    /// A table row: number, `(type, path)` rules, requests, and the rule index they reach.
    type Row = (
        u32,
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        Option<usize>,
    );

    /// Rows of the Kubernetes documentation's examples table, expanded in
    /// `shared/reference/k8s-ingress-matching.md` §3 (row number in each message).
    #[test]
    fn kubernetes_path_matching_table() {
        let cases: &[Row] = &[
            (
                1,
                &[("Prefix", "/")],
                &["/", "/anything", "/a/b/c", "/foo"],
                Some(0),
            ),
            (2, &[("Exact", "/foo")], &["/foo"], Some(0)),
            (3, &[("Exact", "/foo")], &["/bar"], None),
            (4, &[("Exact", "/foo")], &["/foo/"], None),
            (5, &[("Exact", "/foo")], &["/FOO"], None),
            (6, &[("Exact", "/foo/")], &["/foo"], None),
            (7, &[("Exact", "/foo/")], &["/foo/"], Some(0)),
            (8, &[("Prefix", "/foo")], &["/foo"], Some(0)),
            (9, &[("Prefix", "/foo")], &["/foo/"], Some(0)),
            (10, &[("Prefix", "/foo")], &["/foo/bar"], Some(0)),
            (11, &[("Prefix", "/foo")], &["/foobar", "/fo", "/Foo"], None),
            (12, &[("Prefix", "/foo/")], &["/foo"], Some(0)),
            (13, &[("Prefix", "/foo/")], &["/foo/"], Some(0)),
            (14, &[("Prefix", "/aaa/bb")], &["/aaa/bbb"], None),
            (15, &[("Prefix", "/aaa/bbb")], &["/aaa/bbb"], Some(0)),
            (16, &[("Prefix", "/aaa/bbb/")], &["/aaa/bbb"], Some(0)),
            (17, &[("Prefix", "/aaa/bbb")], &["/aaa/bbb/"], Some(0)),
            (18, &[("Prefix", "/aaa/bbb")], &["/aaa/bbb/ccc"], Some(0)),
            (19, &[("Prefix", "/aaa/bbb")], &["/aaa/bbbxyz"], None),
            (
                20,
                &[("Prefix", "/"), ("Prefix", "/aaa")],
                &["/aaa/ccc"],
                Some(1),
            ),
            (
                21,
                &[("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")],
                &["/aaa/bbb"],
                Some(2),
            ),
            (
                22,
                &[("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")],
                &["/ccc"],
                Some(0),
            ),
            (
                23,
                &[("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")],
                &["/aaa", "/aaa/", "/aaa/bbbx"],
                Some(1),
            ),
            (24, &[("Prefix", "/aaa")], &["/ccc"], None),
            (
                25,
                &[("Prefix", "/foo"), ("Exact", "/foo")],
                &["/foo"],
                Some(1),
            ),
            (
                26,
                &[("Prefix", "/foo"), ("Exact", "/foo")],
                &["/foo/", "/foo/x"],
                Some(0),
            ),
            (
                28,
                &[
                    ("Prefix", "/foo"),
                    ("Exact", "/foo/bar"),
                    ("Prefix", "/foo/bar"),
                ],
                &["/foo/bar"],
                Some(1),
            ),
            (
                29,
                &[
                    ("Prefix", "/foo"),
                    ("Exact", "/foo/bar"),
                    ("Prefix", "/foo/bar"),
                ],
                &["/foo/bar/", "/foo/bar/baz"],
                Some(2),
            ),
            (
                30,
                &[("Exact", "/foo/bar"), ("Prefix", "/foo")],
                &["/foo/bar/"],
                Some(1),
            ),
        ];
        for (row, rules, requests, expected) in cases {
            let m = matcher(rules);
            for req in *requests {
                assert_eq!(
                    m.lookup(req),
                    *expected,
                    "row {row}: rules {rules:?}, request {req}"
                );
            }
        }
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let mut t = HostTable::default();
        t.insert(&"foo.bar.com".parse().unwrap(), 0);
        t.insert(&"*.foo.com".parse().unwrap(), 1);
        t.insert(&"bar.foo.com".parse().unwrap(), 2);
        assert_eq!(t.lookup("foo.bar.com"), Some(0));
        assert_eq!(t.lookup("FOO.Bar.com:8080"), Some(0));
        assert_eq!(t.lookup("foo.bar.com."), Some(0));
        assert_eq!(t.lookup("baz.foo.com"), Some(1));
        assert_eq!(t.lookup("bar.foo.com"), Some(2), "exact beats wildcard");
        assert_eq!(
            t.lookup("baz.bar.foo.com"),
            None,
            "wildcard covers one label only"
        );
        assert_eq!(t.lookup("foo.com"), None, "wildcard needs one label");
        assert_eq!(t.lookup(""), None);
        t.insert(&HostMatch::Any, 3);
        assert_eq!(t.lookup("third.bar.com"), Some(3));
        assert_eq!(t.lookup("127.0.0.1:8080"), Some(3));
        assert_eq!(t.lookup("[::1]:8080"), Some(3));
        assert_eq!(t.lookup(&"a".repeat(300)), Some(3));
    }

    #[test]
    fn gateway_wildcards_cover_many_labels_and_the_longest_suffix_wins() {
        let mut t = HostTable::default();
        t.insert(&HostMatch::gateway("*.example.com").unwrap(), 0);
        t.insert(&HostMatch::gateway("*.api.example.com").unwrap(), 1);
        t.insert(&"*.api.example.com".parse().unwrap(), 2);
        t.insert(&"v1.api.example.com".parse().unwrap(), 3);
        assert_eq!(t.lookup("www.example.com"), Some(0));
        assert_eq!(t.lookup("a.b.c.example.com"), Some(0));
        assert_eq!(t.lookup("x.y.api.example.com"), Some(1), "longest suffix");
        assert_eq!(
            t.lookup("x.api.example.com"),
            Some(2),
            "one label: Ingress's"
        );
        assert_eq!(t.lookup("v1.api.example.com"), Some(3), "exact first");
        assert_eq!(t.lookup("example.com"), None, "at least one label");
    }
}
