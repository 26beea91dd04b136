//! Values taken from a request by name, as ingress-nginx's variables name them: the
//! keys of consistent hashing and of the external-auth cache.

use http::header;
use pingora::http::RequestHeader;
use portico_model::{HashKey, KeyPart};
use std::net::IpAddr;

/// The request's host: `:authority` for HTTP/2, else the `Host` header.
pub fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// Builds a request's consistent-hash key from `key`'s parts.
pub fn build_hash_key(key: &HashKey, req: &RequestHeader, peer: Option<IpAddr>, out: &mut Vec<u8>) {
    use std::io::Write;
    for part in &key.parts {
        match part {
            KeyPart::Text(t) => out.extend_from_slice(t.as_bytes()),
            KeyPart::RemoteAddr => {
                if let Some(ip) = peer {
                    let _ = write!(out, "{ip}");
                }
            }
            KeyPart::Host => out.extend_from_slice(request_host(req).as_bytes()),
            KeyPart::Uri => out.extend_from_slice(req.uri.path().as_bytes()),
            KeyPart::RequestUri => out.extend_from_slice(
                req.uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
            ),
            KeyPart::Header(name) => {
                if let Some(v) = req.headers.get(name.as_str()) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            KeyPart::Cookie(name) => {
                out.extend_from_slice(cookie(req, name).unwrap_or("").as_bytes())
            }
            KeyPart::Arg(name) => {
                let query = req.uri.query().unwrap_or("");
                let value = query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                });
                out.extend_from_slice(value.unwrap_or("").as_bytes());
            }
        }
    }
}

/// The value of the first cookie named `name`.
pub fn cookie<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r str> {
    req.headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|c| c.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v.trim())
        })
}
