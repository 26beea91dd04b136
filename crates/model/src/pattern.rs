//! Regular expressions from annotations (paths, header and cookie values, canary
//! patterns), built by one function per use with one size limit, so that translation
//! accepts exactly what the proxy compiles.

use regex::{Regex, RegexBuilder};

/// The largest compiled program a pattern from an annotation may make.
pub const SIZE_LIMIT: usize = 1 << 20;

/// A route's path pattern as it is matched: anchored at the start, case-insensitive.
pub fn path_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})"))
        .case_insensitive(true)
        .size_limit(SIZE_LIMIT)
        .build()
}

/// A pattern a value (a header, a cookie, a certificate subject) is searched with, as
/// written.
pub fn value_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(SIZE_LIMIT).build()
}

/// `pattern` searched regardless of case when `ignore_case`.
pub fn case_flag(pattern: &str, ignore_case: bool) -> std::borrow::Cow<'_, str> {
    if ignore_case {
        std::borrow::Cow::Owned(format!("(?i:{pattern})"))
    } else {
        std::borrow::Cow::Borrowed(pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_from_the_start_whatever_the_case() {
        let re = path_regex("/api/v[0-9]+").unwrap();
        assert!(re.is_match("/API/v2/x"));
        assert!(!re.is_match("/x/api/v2"));
        assert!(value_regex("v[0-9]+").unwrap().is_match("x-v2"));
    }

    #[test]
    fn patterns_that_compile_too_large_are_refused() {
        assert!(path_regex("(a{1000}){1000}").is_err());
        assert!(value_regex("(a{1000}){1000}").is_err());
        assert!(path_regex("(").is_err());
    }
}
