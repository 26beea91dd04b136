//! Values taken from a request by name, as ingress-nginx's variables name them: the
//! keys of consistent hashing and of the external-auth cache, and the URLs of external
//! auth.

use http::header;
use pingora::http::RequestHeader;
use portico_model::{escape_uri_component, Template, TemplatePart};
use std::net::IpAddr;

/// The request's host: `:authority` for HTTP/2, else the `Host` header.
pub fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// What a template's variables are read from: the request and its connection.
pub struct RequestFacts<'r> {
    pub req: &'r RequestHeader,
    /// The client (`$remote_addr`).
    pub client: Option<IpAddr>,
    pub https: bool,
    /// The port the request came in on (`$server_port`).
    pub server_port: Option<u16>,
}

/// The host part of an authority: `[::1]` of `[::1]:80`, `a.test` of `a.test:80`.
pub fn without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    }
}

/// Appends `template` rendered for one request to `out`. A variable the request does not
/// have (a missing header, cookie or parameter) renders empty, as in nginx.
pub fn render(template: &Template, facts: &RequestFacts<'_>, out: &mut Vec<u8>) {
    use std::io::Write;
    let req = facts.req;
    let request_uri = || req.uri.path_and_query().map_or("/", |p| p.as_str());
    for part in &template.parts {
        match part {
            TemplatePart::Text(t) => out.extend_from_slice(t.as_bytes()),
            TemplatePart::RemoteAddr => {
                if let Some(ip) = facts.client {
                    let _ = write!(out, "{ip}");
                }
            }
            TemplatePart::Host => {
                let host = without_port(request_host(req));
                out.extend(host.bytes().map(|b| b.to_ascii_lowercase()));
            }
            TemplatePart::HttpHost => out.extend_from_slice(request_host(req).as_bytes()),
            TemplatePart::Scheme => {
                out.extend_from_slice(if facts.https { b"https" } else { b"http" })
            }
            TemplatePart::ServerPort => {
                if let Some(port) = facts.server_port {
                    let _ = write!(out, "{port}");
                }
            }
            TemplatePart::Uri => out.extend_from_slice(req.uri.path().as_bytes()),
            TemplatePart::Method => out.extend_from_slice(req.method.as_str().as_bytes()),
            TemplatePart::RequestUri => out.extend_from_slice(request_uri().as_bytes()),
            TemplatePart::EscapedRequestUri => escape_uri_component(request_uri(), out),
            TemplatePart::Header(name) => {
                if let Some(v) = req.headers.get(name.as_str()) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            TemplatePart::Cookie(name) => {
                out.extend_from_slice(cookie(req, name).unwrap_or("").as_bytes())
            }
            TemplatePart::Arg(name) => {
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
