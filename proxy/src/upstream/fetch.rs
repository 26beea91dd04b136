//! One request and its whole answer over Pingora's pooled connector, for what the proxy
//! asks of other services itself (error pages, JWKS documents, external auth, mirrors),
//! and the URLs those services are named by.

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use portico_model::redact_userinfo;
use std::time::Duration;

/// Headers that describe the client's connection (or are set anew) and are not copied
/// onto the proxy's own requests about it (auth checks, mirror copies).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// How long a connection stays pooled after a fetch.
const IDLE: Duration = Duration::from_secs(60);

/// Sends `req` with `body` (none: an empty one) and reads the answer, failing if its body
/// is larger than `max_body` bytes. The connection goes back to the pool.
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<Bytes>,
    max_body: usize,
) -> Result<(ResponseHeader, Bytes), String> {
    let (mut session, _reused) = connector.get_http_session(peer).await.map_err(text)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(text)?;
    if let Some(body) = body {
        session
            .write_request_body(body, false)
            .await
            .map_err(text)?;
    }
    session.finish_request_body().await.map_err(text)?;
    session.read_response_header().await.map_err(text)?;
    let header = session
        .response_header()
        .ok_or("no response header")?
        .clone();
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await.map_err(text)? {
        if body.len() + chunk.len() > max_body {
            return Err(format!("answer larger than {max_body} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, peer, Some(IDLE))
        .await;
    Ok((header, body.freeze()))
}

/// Where a request of the proxy's own goes: an absolute `http` or `https` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// As written, port included: the `Host` header.
    pub authority: String,
    pub path_and_query: String,
}

impl Target {
    /// `what` names the URL in errors (`auth-url`). `rendered`: the URL was rendered from
    /// a request, and its host part may hold only what a DNS name or address can, so that
    /// a request cannot add credentials or otherwise steer it.
    pub fn parse(url: &[u8], rendered: bool, what: &str) -> Result<Target, String> {
        let lossy = String::from_utf8_lossy(url);
        let shown = redact_userinfo(&lossy);
        let uri = http::Uri::try_from(url).map_err(|e| format!("{what} {shown:?}: {e}"))?;
        let tls = uri.scheme_str() == Some("https");
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{what} {shown:?} names no host"))?;
        let host_text = |b: u8| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b);
        if rendered && !authority.as_str().bytes().all(host_text) {
            return Err(format!("{what} {shown:?}: the host part is not a host"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Target {
            tls,
            host,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.to_string(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string()),
        })
    }

    /// The peer to connect to, its name resolved now (off the request path: callers are
    /// an auth check a request waits for anyway, or a background task).
    pub async fn peer(&self) -> Result<HttpPeer, String> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("resolving {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))?;
        Ok(HttpPeer::new(addr, self.tls, self.host.clone()))
    }
}

/// An error as the text these fetches report.
pub fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_auth_url_cannot_carry_credentials_or_a_strange_host() {
        let target = Target::parse(b"http://a.test:8080/check?x=1", true, "auth-url").unwrap();
        assert_eq!(
            (
                target.host.as_str(),
                target.port,
                target.path_and_query.as_str()
            ),
            ("a.test", 8080, "/check?x=1")
        );
        assert!(
            Target::parse(b"https://svc:pw@auth.test/check", false, "auth-url").is_ok(),
            "credentials the Ingress wrote are its own"
        );
        let refused =
            Target::parse(b"http://svc:s3cret@auth.test/check", true, "auth-url").unwrap_err();
        assert!(refused.contains("not a host"), "{refused}");
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}
