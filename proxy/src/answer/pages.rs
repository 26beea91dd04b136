//! Portico's own responses (404, 503, 502...): small, plain text, all the same shape.
//! `Server`, `Date` and the rest are added where every answer gets them, by
//! `service::respond`'s `decorate`.

use bytes::Bytes;
use pingora::http::ResponseHeader;

pub const SERVER: &str = "portico";

/// An answer without a body, with `name: value` set.
fn empty(status: u16, name: http::HeaderName, value: http::HeaderValue) -> ResponseHeader {
    let mut header = ResponseHeader::build(status, Some(2)).expect("valid status");
    // Inserting well-known names with valid values cannot fail.
    let _ = header.insert_header(name, value);
    let _ = header.insert_header(http::header::CONTENT_LENGTH, 0);
    header
}

/// A redirect with an empty body.
pub fn redirect(status: u16, location: http::HeaderValue) -> ResponseHeader {
    empty(status, http::header::LOCATION, location)
}

/// The answer to a CORS preflight, before its `Access-Control-*` headers.
pub fn preflight() -> ResponseHeader {
    empty(
        204,
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    )
}

/// A complete response Portico answers itself.
pub fn error_page(status: u16) -> (ResponseHeader, Bytes) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = Bytes::from(format!("{status} {reason}\n"));
    let mut header = ResponseHeader::build(status, Some(3)).expect("valid status");
    // Inserting well-known names with valid values cannot fail.
    let _ = header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
    let _ = header.insert_header(http::header::CACHE_CONTROL, "no-store");
    (header, body)
}
