//! The request path as routing and access control see it, and as the upstream then
//! receives it, so that the two can never disagree: percent-encoded unreserved
//! characters decoded, repeated slashes merged, `.` and `..` segments resolved.
//!
//! What could make a backend see a different path than the one checked is refused
//! with 400: an encoded slash, backslash or NUL (unless `--allow-encoded-slashes`, for
//! the first two), a raw backslash, a malformed escape, and `..` above the root.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    NotAbsolute,
    MalformedEscape,
    EncodedSeparator,
    Nul,
    Backslash,
    AboveRoot,
}

/// The normal form of `path` (without the query); borrowed when already normal.
pub fn normalize(path: &str, allow_encoded_slashes: bool) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    let bytes = path.as_bytes();
    // Fast path: nothing to decode, merge or resolve.
    let suspicious = bytes.iter().any(|b| matches!(b, b'%' | b'\\' | 0))
        || path.contains("//")
        || path.contains("/.");
    if !suspicious {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => return Err(BadPath::Nul),
            b'\\' => return Err(BadPath::Backslash),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(BadPath::MalformedEscape);
                };
                let c = (h * 16 + l) as u8;
                match c {
                    0 => return Err(BadPath::Nul),
                    b'/' | b'\\' if !allow_encoded_slashes => {
                        return Err(BadPath::EncodedSeparator)
                    }
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        decoded.push(c)
                    }
                    // Other escapes stay escaped, in upper case.
                    _ => decoded.extend_from_slice(format!("%{c:02X}").as_bytes()),
                }
                i += 3;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Segments, with empty ones (from `//`) dropped and dot segments resolved.
    let text = String::from_utf8(decoded).map_err(|_| BadPath::MalformedEscape)?;
    let trailing_slash = text.ends_with('/') || text.ends_with("/.") || text.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(BadPath::AboveRoot);
                }
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(text.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if normal.is_empty() || trailing_slash {
        normal.push('/');
    }
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_and_the_rest_resolved() {
        assert!(matches!(
            normalize("/api/v1/items", false),
            Ok(Cow::Borrowed("/api/v1/items"))
        ));
        for (raw, normal) in [
            ("/public/../admin", "/admin"),
            ("/public/%2e%2E/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/..a/", "/..a/"),
        ] {
            assert_eq!(normalize(raw, false).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn what_a_backend_could_read_differently_is_refused() {
        for (raw, why) in [
            ("/admin%2Fx", BadPath::EncodedSeparator),
            ("/admin%5cx", BadPath::EncodedSeparator),
            ("/a\\b", BadPath::Backslash),
            ("/a%00", BadPath::Nul),
            ("/a%zz", BadPath::MalformedEscape),
            ("/a%2", BadPath::MalformedEscape),
            ("/../etc/passwd", BadPath::AboveRoot),
            ("/a/%2e%2e/%2e%2e/x", BadPath::AboveRoot),
            ("admin", BadPath::NotAbsolute),
        ] {
            assert_eq!(normalize(raw, false), Err(why), "{raw}");
        }
        assert_eq!(
            normalize("/repo/a%2Fb", true).as_deref(),
            Ok("/repo/a%2Fb"),
            "allowed when asked for, and kept encoded"
        );
    }

    mod properties {
        use super::super::normalize;
        use proptest::prelude::*;

        /// Paths made mostly of the characters normalisation acts on.
        fn paths() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("/"),
                    Just("."),
                    Just(".."),
                    Just("%"),
                    Just("%2e"),
                    Just("%2E"),
                    Just("%2f"),
                    Just("%5c"),
                    Just("%41"),
                    Just("%00"),
                    Just("\\"),
                    Just("a"),
                    Just("b"),
                    Just(";"),
                    Just("%25"),
                    Just("~"),
                    Just("%7e"),
                    Just("é"),
                ],
                0..24,
            )
            .prop_map(|parts| format!("/{}", parts.concat()))
        }

        proptest! {
            /// A normal path is its own normal form, with no empty, `.` or `..` segment
            /// left, so the upstream receives exactly the path that was routed.
            #[test]
            fn normal_paths_are_fixed_points_without_dot_segments(
                path in paths(),
                allow in any::<bool>(),
            ) {
                if let Ok(normal) = normalize(&path, allow) {
                    prop_assert!(normal.starts_with('/'));
                    prop_assert!(!normal.contains("//"), "{normal}");
                    let segments: Vec<&str> = normal.split('/').skip(1).collect();
                    prop_assert!(!segments.iter().any(|s| *s == "." || *s == ".."), "{normal}");
                    let again = normalize(&normal, allow);
                    prop_assert_eq!(again.as_deref(), Ok(&*normal));
                }
            }

            #[test]
            fn any_text_is_normalised_or_refused_without_panicking(path in ".*", allow in any::<bool>()) {
                let _ = normalize(&path, allow);
            }
        }
    }
}
