//! `auth-url`: before a request is proxied, the auth service is asked with the client's
//! headers and the original URL. 2xx admits, and the listed response headers are copied
//! onto the upstream request (replacing the client's); 401 and 403 go back to the client
//! (a 401 as a redirect to `auth-signin` when set); anything else, or no answer in time,
//! is a 500. Answers may be cached by a key built from the request.

use crate::routing::request_key::build_hash_key;
use crate::upstream::fetch::text;
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use portico_model::redact_userinfo;
use portico_model::{ExternalAuth, HashKey};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many cached answers per route; the cache is emptied when full.
const CACHE_ENTRIES: usize = 10_000;
/// The auth service's body is read and dropped, up to this much.
const MAX_AUTH_BODY: usize = 64 << 10;

/// Headers that describe one connection and are never copied onto the auth request.
const HOP_BY_HOP: &[&str] = &[
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

/// The auth service's decision, as the proxy acts on it.
#[derive(Debug, Clone)]
pub enum AuthAnswer {
    /// Admit; set (or, for `None`, remove) these headers on the upstream request, and
    /// send these cookies to the client.
    Allow {
        upstream_headers: Vec<(HeaderName, Option<HeaderValue>)>,
        cookies: Vec<HeaderValue>,
    },
    /// Answer the client with this status and headers.
    Deny {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// The auth service failed: 500.
    Failed,
}

/// What the proxy knows of the request that the auth service is told.
pub struct OriginalRequest<'r> {
    pub req: &'r RequestHeader,
    pub host: &'r str,
    pub https: bool,
    pub client: Option<IpAddr>,
}

impl OriginalRequest<'_> {
    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!(
            "{scheme}://{}{}",
            self.host,
            self.req.uri.path_and_query().map_or("/", |p| p.as_str())
        )
    }
}

pub struct ExternalAuthCheck {
    spec: ExternalAuth,
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
    response_headers: Vec<HeaderName>,
    cache_key: Option<HashKey>,
    cache: Mutex<HashMap<Vec<u8>, (Instant, AuthAnswer)>>,
}

impl ExternalAuthCheck {
    pub fn compile(spec: &ExternalAuth) -> Result<Self, String> {
        let uri: http::Uri = spec
            .url
            .parse()
            .map_err(|e| format!("auth-url {:?}: {e}", spec.url))?;
        let tls = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| format!("auth-url {:?} names no host", spec.url))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let path_and_query = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let response_headers = spec
            .response_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let cache_key = spec.cache.as_ref().map(|c| c.key.clone());
        Ok(ExternalAuthCheck {
            spec: spec.clone(),
            tls,
            host,
            port,
            authority,
            path_and_query,
            response_headers,
            cache_key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the auth service's cookies go to the client on every answer.
    pub fn always_set_cookie(&self) -> bool {
        self.spec.always_set_cookie
    }

    /// Asks the auth service (or the cache) about `original`.
    pub async fn ask(&self, connector: &Connector, original: &OriginalRequest<'_>) -> AuthAnswer {
        let key = self.cache_key.as_ref().map(|k| {
            let mut key = Vec::new();
            build_hash_key(k, original.req, original.client, &mut key);
            key
        });
        if let Some(key) = &key {
            if let Some((expires, answer)) =
                self.cache.lock().ok().and_then(|c| c.get(key).cloned())
            {
                if expires > Instant::now() {
                    return answer;
                }
            }
        }
        let timeout = Duration::from_millis(self.spec.timeout_ms);
        let answer = match tokio::time::timeout(timeout, self.exchange(connector, original)).await {
            Ok(Ok((status, headers))) => self.decide(status, &headers, original),
            Ok(Err(e)) => {
                tracing::warn!(auth_url = %redact_userinfo(&self.spec.url), error = %e, "external auth failed");
                AuthAnswer::Failed
            }
            Err(_) => {
                tracing::warn!(auth_url = %redact_userinfo(&self.spec.url), timeout_ms = self.spec.timeout_ms, "external auth timed out");
                AuthAnswer::Failed
            }
        };
        if let (Some(key), Some(cache)) = (key, &self.spec.cache) {
            let status = match &answer {
                AuthAnswer::Allow { .. } => Some(200),
                AuthAnswer::Deny { status, .. } => Some(*status),
                AuthAnswer::Failed => None,
            };
            // A 2xx is cached as 200; the statuses listed say which answers may be kept.
            let cacheable = status.is_some_and(|s| {
                cache.statuses.contains(&s)
                    || (s == 200 && cache.statuses.iter().any(|c| (200..300).contains(c)))
            });
            if cacheable {
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() >= CACHE_ENTRIES {
                        c.clear();
                    }
                    c.insert(
                        key,
                        (
                            Instant::now() + Duration::from_millis(cache.duration_ms),
                            answer.clone(),
                        ),
                    );
                }
            }
        }
        answer
    }

    /// Sends the auth request and reads the answer's status and headers.
    async fn exchange(
        &self,
        connector: &Connector,
        original: &OriginalRequest<'_>,
    ) -> Result<(u16, http::HeaderMap), String> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("resolving {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))?;
        let peer = HttpPeer::new(addr, self.tls, self.host.clone());
        let mut req = RequestHeader::build(
            self.spec.method.as_str(),
            self.path_and_query.as_bytes(),
            None,
        )
        .map_err(text)?;
        for (name, value) in original.req.headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                req.append_header(name.clone(), value.clone())
                    .map_err(text)?;
            }
        }
        let value = |v: String| HeaderValue::try_from(v).map_err(text);
        req.insert_header(header::HOST, value(self.authority.clone())?)
            .map_err(text)?;
        req.insert_header("x-original-url", value(original.url())?)
            .map_err(text)?;
        req.insert_header("x-original-method", original.req.method.as_str())
            .map_err(text)?;
        req.insert_header(
            "x-auth-request-redirect",
            value(
                original
                    .req
                    .uri
                    .path_and_query()
                    .map_or("/".into(), |p| p.to_string()),
            )?,
        )
        .map_err(text)?;
        req.insert_header("x-forwarded-host", value(original.host.to_string())?)
            .map_err(text)?;
        req.insert_header(
            "x-forwarded-proto",
            if original.https { "https" } else { "http" },
        )
        .map_err(text)?;
        if let Some(ip) = original.client {
            req.insert_header("x-forwarded-for", value(ip.to_string())?)
                .map_err(text)?;
            req.insert_header("x-real-ip", value(ip.to_string())?)
                .map_err(text)?;
        }
        req.insert_header(header::CONTENT_LENGTH, "0")
            .map_err(text)?;

        let (mut session, _reused) = connector.get_http_session(&peer).await.map_err(text)?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(text)?;
        session.finish_request_body().await.map_err(text)?;
        session.read_response_header().await.map_err(text)?;
        let (status, headers) = match session.response_header() {
            Some(h) => (h.status.as_u16(), h.headers.clone()),
            None => return Err("no response header".into()),
        };
        let mut read = 0;
        while let Some(chunk) = session.read_response_body().await.map_err(text)? {
            read += chunk.len();
            if read > MAX_AUTH_BODY {
                return Ok((status, headers));
            }
        }
        connector
            .release_http_session(session, &peer, Some(Duration::from_secs(60)))
            .await;
        Ok((status, headers))
    }

    fn decide(
        &self,
        status: u16,
        headers: &http::HeaderMap,
        original: &OriginalRequest<'_>,
    ) -> AuthAnswer {
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        match status {
            200..=299 => AuthAnswer::Allow {
                upstream_headers: self
                    .response_headers
                    .iter()
                    .map(|n| (n.clone(), headers.get(n).cloned()))
                    .collect(),
                cookies,
            },
            401 => {
                let mut out: Vec<(HeaderName, HeaderValue)> = cookies
                    .into_iter()
                    .map(|c| (header::SET_COOKIE, c))
                    .collect();
                match &self.spec.signin {
                    Some(signin) => {
                        let separator = if signin.contains('?') { '&' } else { '?' };
                        let target = format!(
                            "{signin}{separator}{}={}",
                            self.spec.signin_redirect_param,
                            percent_encode(&original.url())
                        );
                        match HeaderValue::try_from(target) {
                            Ok(location) => {
                                out.push((header::LOCATION, location));
                                AuthAnswer::Deny {
                                    status: 302,
                                    headers: out,
                                }
                            }
                            Err(_) => AuthAnswer::Failed,
                        }
                    }
                    None => {
                        out.extend(
                            headers
                                .get_all(header::WWW_AUTHENTICATE)
                                .iter()
                                .map(|v| (header::WWW_AUTHENTICATE, v.clone())),
                        );
                        AuthAnswer::Deny {
                            status: 401,
                            headers: out,
                        }
                    }
                }
            }
            403 => {
                let mut out: Vec<(HeaderName, HeaderValue)> = headers
                    .get(header::LOCATION)
                    .map(|l| (header::LOCATION, l.clone()))
                    .into_iter()
                    .collect();
                out.extend(cookies.into_iter().map(|c| (header::SET_COOKIE, c)));
                AuthAnswer::Deny {
                    status: 403,
                    headers: out,
                }
            }
            other => {
                tracing::warn!(auth_url = %redact_userinfo(&self.spec.url), status = other, "external auth answered neither 2xx, 401 nor 403");
                AuthAnswer::Failed
            }
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_url_is_encoded_whole_into_the_signin_redirect() {
        assert_eq!(
            percent_encode("https://a.test/p?x=1&y=2"),
            "https%3A%2F%2Fa.test%2Fp%3Fx%3D1%26y%3D2"
        );
    }
}
