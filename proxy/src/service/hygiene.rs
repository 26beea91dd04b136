//! Why a request is refused before it is routed: the checks on its header alone (size,
//! framing, repeated fields, the request-target's form, the Host), answered 400 or 431
//! with the connection closed. They are pure functions of the header, tested here.

use http::header;
use pingora::http::RequestHeader;

/// How large a request header may be (`--max-request-header-bytes`,
/// `--max-request-headers`); a larger one is answered 431. Pingora's own bounds (1 MiB,
/// 256 fields) sit above these.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_bytes: usize,
    pub max_fields: usize,
}

impl HeaderLimits {
    /// What is too large about `req`, if anything. Bytes are counted as on the wire:
    /// the request line, and each field's name, value and separators.
    pub(super) fn exceeded_by(&self, req: &RequestHeader) -> Option<&'static str> {
        if req.headers.len() > self.max_fields {
            return Some("too many header fields");
        }
        let line = req.uri.path_and_query().map_or(1, |p| p.as_str().len())
            + req.method.as_str().len()
            + 11;
        let fields: usize = req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        (line + fields > self.max_bytes).then_some("request header larger than the limit")
    }
}

/// Why an HTTP/1 request could be read two ways, if it could: a line ended by a bare LF
/// (`raw` is the header as received), several or malformed `Content-Length`s, or
/// `Transfer-Encoding` beside one, or other than `chunked`.
pub(super) fn framing_problem(req: &RequestHeader, raw: Option<&[u8]>) -> Option<&'static str> {
    if req.version == http::Version::HTTP_2 {
        return None;
    }
    if raw.is_some_and(has_bare_lf) {
        return Some("a line ended by a bare LF");
    }
    let mut lengths = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Some("several Content-Length headers");
    }
    if length.is_some_and(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit)) {
        return Some("a Content-Length that is not a number");
    }
    let mut codings = req.headers.get_all(header::TRANSFER_ENCODING).iter();
    let coding = codings.next()?;
    if length.is_some() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if codings.next().is_some()
        || !coding
            .to_str()
            .is_ok_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
    {
        return Some("a Transfer-Encoding other than chunked");
    }
    if req.version == http::Version::HTTP_10 {
        return Some("Transfer-Encoding on HTTP/1.0");
    }
    None
}

/// Which field a request carries more than once that nginx takes only once (and answers
/// 400 for): with two `Authorization` fields basic auth would check one while the backend
/// may read the other; with two `Host` fields routing and the backend could disagree.
pub(super) fn repeated_field(req: &RequestHeader) -> Option<&'static str> {
    let twice = |name: header::HeaderName| req.headers.get_all(name).iter().nth(1).is_some();
    if twice(header::AUTHORIZATION) {
        return Some("several Authorization headers");
    }
    if twice(header::HOST) {
        return Some("several Host headers");
    }
    None
}

/// Why a request-target is in none of the forms HTTP allows for its method (RFC 9112
/// §3.2), if it is not: origin-form (`/path`), absolute-form (`http://host/path`),
/// asterisk-form (`*`, OPTIONS only) or authority-form (`host:port`, CONNECT only). A
/// target such as `%2fadmin` or `\admin` would otherwise be routed as `/` and reach the
/// upstream as sent, where a server may read it as `/admin`.
pub(super) fn target_problem(req: &RequestHeader) -> Option<&'static str> {
    let target = req.raw_path();
    let absolute = |scheme: &[u8]| {
        target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme)
    };
    match target {
        [b'/', ..] => None,
        b"*" if req.method == http::Method::OPTIONS => None,
        _ if absolute(b"http://") || absolute(b"https://") => None,
        _ if req.method == http::Method::CONNECT => None,
        _ => Some("a request-target in no form HTTP allows for its method"),
    }
}

/// Why the request names its host in a way RFC 9110 and RFC 3986 do not allow, if it
/// does: an HTTP/1.1 request without `Host`, or a `Host` (or absolute-form authority) that
/// is not `host[:port]` (`h.test:abc`, `h.test/admin`, `h.test admin`, `h.test:80:80`).
/// Routing reads the host one way; a backend or a log must not read it another.
pub(super) fn host_problem(req: &RequestHeader) -> Option<&'static str> {
    let host = req.headers.get(header::HOST);
    if host.is_none() && req.version == http::Version::HTTP_11 {
        return Some("an HTTP/1.1 request without Host");
    }
    let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
    let valid = |a: &[u8]| a.is_empty() || is_authority(a);
    if !host.is_none_or(|h| valid(h.as_bytes())) || !authority.is_none_or(valid) {
        return Some("a Host that is not host[:port]");
    }
    None
}

/// `host [":" port]` with `host` an IP literal in brackets or a registered name (or IPv4
/// address) of unreserved, sub-delimiter and percent-encoded characters, and `port` digits.
fn is_authority(authority: &[u8]) -> bool {
    let (host, port) = match authority.strip_prefix(b"[") {
        Some(literal) => match memchr::memchr(b']', literal) {
            Some(end) => {
                let inside = &literal[..end];
                let ip = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                if !ip {
                    return false;
                }
                let after = &literal[end + 1..];
                let port = if after.is_empty() {
                    Some(&b""[..])
                } else {
                    after.strip_prefix(b":")
                };
                (&b""[..], port)
            }
            None => return false,
        },
        None => match memchr::memrchr(b':', authority) {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, Some(&b""[..])),
        },
    };
    let Some(port) = port else {
        return false;
    };
    let name = host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    name && port.iter().all(u8::is_ascii_digit)
}

/// Whether a line of `raw` ends in LF without CR.
pub(super) fn has_bare_lf(raw: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', raw).any(|at| at == 0 || raw[at - 1] != b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_lf_is_found_wherever_it_ends_a_line() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!has_bare_lf(b""));
        assert!(has_bare_lf(b"\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\n\r\n"));
    }

    fn request(version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.set_version(version);
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    /// A name, the request's version and headers, and the problem expected.
    type FramingCase<'a> = (
        &'a str,
        http::Version,
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
    );

    #[test]
    fn requests_that_could_be_framed_two_ways_are_found() {
        use http::Version;
        #[rustfmt::skip]
        let cases: &[FramingCase] = &[
            ("no body", Version::HTTP_11, &[], None),
            ("one length", Version::HTTP_11, &[("content-length", "12")], None),
            ("chunked", Version::HTTP_11, &[("transfer-encoding", "chunked")], None),
            ("chunked in capitals", Version::HTTP_11, &[("transfer-encoding", " Chunked ")], None),
            ("two lengths", Version::HTTP_11, &[("content-length", "1"), ("content-length", "1")], Some("several Content-Length headers")),
            ("a signed length", Version::HTTP_11, &[("content-length", "+1")], Some("a Content-Length that is not a number")),
            ("an empty length", Version::HTTP_11, &[("content-length", "")], Some("a Content-Length that is not a number")),
            ("length and chunked", Version::HTTP_11, &[("content-length", "1"), ("transfer-encoding", "chunked")], Some("both Content-Length and Transfer-Encoding")),
            ("gzip", Version::HTTP_11, &[("transfer-encoding", "gzip")], Some("a Transfer-Encoding other than chunked")),
            ("chunked twice", Version::HTTP_11, &[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")], Some("a Transfer-Encoding other than chunked")),
            ("chunked on 1.0", Version::HTTP_10, &[("transfer-encoding", "chunked")], Some("Transfer-Encoding on HTTP/1.0")),
            ("h2 frames its own", Version::HTTP_2, &[("content-length", "1"), ("content-length", "2")], None),
        ];
        for (case, version, headers, expected) in cases {
            assert_eq!(
                framing_problem(&request(*version, headers), None),
                *expected,
                "{case}"
            );
        }
        let bare = request(http::Version::HTTP_11, &[]);
        assert_eq!(
            framing_problem(&bare, Some(b"GET / HTTP/1.1\nHost: a\r\n\r\n")),
            Some("a line ended by a bare LF")
        );
    }

    #[test]
    fn fields_nginx_takes_once_may_not_come_twice() {
        use http::Version;
        #[rustfmt::skip]
        let cases: &[FramingCase] = &[
            ("one of each", Version::HTTP_11, &[("host", "a"), ("authorization", "Basic YTpi")], None),
            ("two credentials", Version::HTTP_11, &[("authorization", "Basic YTpi"), ("authorization", "Basic Yzpk")], Some("several Authorization headers")),
            ("two empty credentials", Version::HTTP_2, &[("authorization", ""), ("authorization", "")], Some("several Authorization headers")),
            ("two hosts", Version::HTTP_11, &[("host", "a"), ("host", "b")], Some("several Host headers")),
            ("other fields repeat freely", Version::HTTP_11, &[("accept", "a"), ("accept", "b"), ("cookie", "a=1"), ("cookie", "b=2")], None),
        ];
        for (case, version, headers, expected) in cases {
            assert_eq!(
                repeated_field(&request(*version, headers)),
                *expected,
                "{case}"
            );
        }
    }

    #[test]
    fn request_targets_must_be_in_a_form_their_method_allows() {
        #[rustfmt::skip]
        let cases: &[(&str, &[u8], bool)] = &[
            ("GET", b"/admin", true),
            ("GET", b"/", true),
            ("GET", b"http://a.test/admin", true),
            ("GET", b"HTTPS://a.test/", true),
            ("OPTIONS", b"*", true),
            ("CONNECT", b"a.test:443", true),
            ("GET", b"%2fadmin", false),
            ("GET", b"\\admin", false),
            ("GET", b"..\\admin", false),
            ("GET", b"admin/x", false),
            ("GET", b"*", false),
            ("GET", b"a.test:80", false),
            ("GET", b"http://", false),
        ];
        for (method, target, allowed) in cases {
            let mut req = RequestHeader::build(*method, b"/", None).unwrap();
            req.set_raw_path(target).unwrap();
            assert_eq!(
                target_problem(&req).is_none(),
                *allowed,
                "{method} {}",
                String::from_utf8_lossy(target)
            );
        }
    }

    #[test]
    fn hosts_must_be_a_host_and_an_optional_port() {
        use http::Version;
        #[rustfmt::skip]
        let cases: &[FramingCase] = &[
            ("a name", Version::HTTP_11, &[("host", "h.test")], None),
            ("a name and port", Version::HTTP_11, &[("host", "h.test:8080")], None),
            ("an empty port", Version::HTTP_11, &[("host", "h.test:")], None),
            ("an address", Version::HTTP_11, &[("host", "127.0.0.1:80")], None),
            ("an IPv6 literal", Version::HTTP_11, &[("host", "[::1]:8443")], None),
            ("an IPv6 literal alone", Version::HTTP_11, &[("host", "[::1]")], None),
            ("empty", Version::HTTP_11, &[("host", "")], None),
            ("no Host on 1.0", Version::HTTP_10, &[], None),
            ("no Host on 1.1", Version::HTTP_11, &[], Some("an HTTP/1.1 request without Host")),
            ("a port that is no number", Version::HTTP_11, &[("host", "h.test:abc")], Some("a Host that is not host[:port]")),
            ("a path", Version::HTTP_11, &[("host", "h.test/admin")], Some("a Host that is not host[:port]")),
            ("a space", Version::HTTP_11, &[("host", "h.test admin")], Some("a Host that is not host[:port]")),
            ("two ports", Version::HTTP_11, &[("host", "h.test:80:80")], Some("a Host that is not host[:port]")),
            ("credentials", Version::HTTP_11, &[("host", "user@h.test")], Some("a Host that is not host[:port]")),
            ("a bad literal", Version::HTTP_11, &[("host", "[::1")], Some("a Host that is not host[:port]")),
            ("text after a literal", Version::HTTP_11, &[("host", "[::1]x")], Some("a Host that is not host[:port]")),
        ];
        for (case, version, headers, expected) in cases {
            assert_eq!(
                host_problem(&request(*version, headers)),
                *expected,
                "{case}"
            );
        }
    }

    #[test]
    fn header_limits_count_the_line_and_every_field() {
        let limits = HeaderLimits {
            max_bytes: 64,
            max_fields: 2,
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("a", "1").unwrap();
        req.append_header("b", "2").unwrap();
        assert_eq!(limits.exceeded_by(&req), None);
        req.append_header("c", "3").unwrap();
        assert_eq!(limits.exceeded_by(&req), Some("too many header fields"));
        let mut long = RequestHeader::build("GET", b"/", None).unwrap();
        long.append_header("a", "x".repeat(60)).unwrap();
        assert_eq!(
            limits.exceeded_by(&long),
            Some("request header larger than the limit")
        );
    }
}
