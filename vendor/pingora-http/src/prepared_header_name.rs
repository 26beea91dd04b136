// Portico's addition to pingora-http 0.9.1; see PORTICO.md beside Cargo.toml.

//! A header name parsed once, for a proxy that inserts the same names into every request.
//!
//! [`crate::RequestHeader::insert_header`] parses its name from bytes on every call (and
//! copies a name that is not one of `http`'s standard headers into a new allocation) before
//! inserting it into the value map and, for HTTP/1, the case map. A name prepared here is
//! parsed at compile time and cloned without allocating.

use crate::case_header_name::CaseHeaderName;
use http::header::HeaderName;

/// A header name with the form it is written in on HTTP/1, ready to insert.
#[derive(Debug, Clone)]
pub struct PreparedHeaderName {
    name: HeaderName,
    case: CaseHeaderName,
}

impl PreparedHeaderName {
    /// A name written on the wire as given. Like [`HeaderName::from_static`], it must be
    /// a valid lowercase header name, or this panics (at compile time in a `static`).
    pub const fn from_static(name: &'static str) -> Self {
        PreparedHeaderName {
            name: HeaderName::from_static(name),
            case: CaseHeaderName::from_static(name),
        }
    }

    /// The parsed name, for lookups that should not parse it again.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    pub(crate) fn parts(&self) -> (HeaderName, CaseHeaderName) {
        (self.name.clone(), self.case.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaseMap, RequestHeader, ResponseHeader};

    static X_FORWARDED_FOR: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-for");

    fn wire(req: &RequestHeader) -> String {
        let mut buf = vec![];
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_prepared_insert_replaces_like_insert_header_and_keeps_the_case_map_in_step() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("Host", "a.test").unwrap();
        req.append_header("X-Forwarded-For", "10.0.0.1").unwrap();
        req.append_header("x-forwarded-for", "10.0.0.2").unwrap();
        req.append_header("Accept", "*/*").unwrap();

        req.insert_prepared_header(&X_FORWARDED_FOR, "192.0.2.1".try_into().unwrap())
            .unwrap();

        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(req.headers["x-forwarded-for"], "192.0.2.1");
        assert_eq!(
            wire(&req),
            "Host: a.test\r\nx-forwarded-for: 192.0.2.1\r\nAccept: */*\r\n"
        );
    }

    #[test]
    fn a_message_built_for_its_parsed_headers_takes_eight_more_without_growing() {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"].map(PreparedHeaderName::from_static);
        let mut req = RequestHeader::build("GET", b"/", Some(1)).unwrap();
        let mut resp = ResponseHeader::build(200, Some(1)).unwrap();
        req.append_header("Host", "a.test").unwrap();
        resp.append_header("Server", "b").unwrap();
        let capacity = |h: &http::HeaderMap, c: Option<&CaseMap>| (h.capacity(), c.map(|c| c.capacity()));
        let req_before = capacity(&req.headers, req.header_name_map.as_ref());
        let resp_before = capacity(&resp.headers, resp.header_name_map.as_ref());
        for (i, name) in names.iter().enumerate() {
            req.insert_prepared_header(name, i.into()).unwrap();
            resp.insert_prepared_header(name, i.into()).unwrap();
        }
        assert_eq!(req.headers.len(), 9);
        assert_eq!(capacity(&req.headers, req.header_name_map.as_ref()), req_before);
        assert_eq!(capacity(&resp.headers, resp.header_name_map.as_ref()), resp_before);
    }

    #[test]
    fn reserved_room_takes_the_inserts_that_follow() {
        let mut req = RequestHeader::build("GET", b"/", Some(1)).unwrap();
        req.append_header("Host", "a.test").unwrap();
        req.reserve_headers(8).unwrap();
        assert!(req.headers.capacity() >= 9);
        for i in 0..8 {
            let name = PreparedHeaderName::from_static(
                ["a", "b", "c", "d", "e", "f", "g", "h"][i],
            );
            req.insert_prepared_header(&name, i.into()).unwrap();
        }
        assert_eq!(req.headers.len(), 9);
        assert!(wire(&req).starts_with("Host: a.test\r\na: 0\r\nb: 1\r\n"));
    }

    #[test]
    fn a_response_takes_prepared_names_too() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("Server", "x").unwrap();
        resp.insert_prepared_header(&X_FORWARDED_FOR, "v".try_into().unwrap())
            .unwrap();
        resp.insert_prepared_header(&X_FORWARDED_FOR, "w".try_into().unwrap())
            .unwrap();
        let mut buf = vec![];
        resp.header_to_h1_wire(&mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "Server: x\r\nx-forwarded-for: w\r\n"
        );
    }
}
