//! `auth-url`: before a request is proxied, the auth service is asked with the client's
//! headers and the original URL. 2xx admits, and the listed response headers are copied
//! onto the upstream request (replacing the client's); 401 and 403 go back to the client
//! (a 401 as a redirect to `auth-signin` when set); anything else, or no answer in time,
//! is a 500. Answers may be cached by a key built from the request.

use crate::routing::request_key::{render, request_host, RequestFacts};
use crate::upstream::fetch::{text, Target, HOP_BY_HOP};
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use portico_model::{ExternalAuth, Template};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many cached answers per route; the cache is emptied when full.
const CACHE_ENTRIES: usize = 10_000;
/// The auth service's body is read and dropped, up to this much.
const MAX_AUTH_BODY: usize = 64 << 10;

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
    pub facts: RequestFacts<'r>,
}

impl OriginalRequest<'_> {
    /// `X-Original-URL`, as ingress-nginx sends it: `$scheme://$http_host$request_uri`.
    fn url(&self) -> String {
        let scheme = if self.facts.https { "https" } else { "http" };
        format!(
            "{scheme}://{}{}",
            self.host(),
            self.facts
                .req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
        )
    }

    /// The host the client asked for, port included (`$http_host`).
    fn host(&self) -> &str {
        request_host(self.facts.req)
    }

    fn render(&self, template: &Template) -> Vec<u8> {
        let mut out = Vec::new();
        render(template, &self.facts, &mut out);
        out
    }
}

pub struct ExternalAuthCheck {
    spec: ExternalAuth,
    /// The target when `auth-url` has no variables; otherwise it is rendered per request.
    fixed_target: Option<Target>,
    response_headers: Vec<HeaderName>,
    cache_key: Option<Template>,
    cache: Mutex<HashMap<Vec<u8>, (Instant, AuthAnswer)>>,
}

impl ExternalAuthCheck {
    pub fn compile(spec: &ExternalAuth) -> Result<Self, String> {
        let fixed_target = spec
            .url
            .as_text()
            .map(|url| Target::parse(url.as_bytes(), false, "auth-url"))
            .transpose()?;
        let response_headers = spec
            .response_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let cache_key = spec.cache.as_ref().map(|c| c.key.clone());
        Ok(ExternalAuthCheck {
            spec: spec.clone(),
            fixed_target,
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
        let key = self.cache_key.as_ref().map(|k| original.render(k));
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
                tracing::warn!(auth_url = %self.spec.url.redacted(), error = %e, "external auth failed");
                AuthAnswer::Failed
            }
            Err(_) => {
                tracing::warn!(auth_url = %self.spec.url.redacted(), timeout_ms = self.spec.timeout_ms, "external auth timed out");
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
        let rendered;
        let target = match &self.fixed_target {
            Some(target) => target,
            None => {
                rendered = Target::parse(&original.render(&self.spec.url), true, "auth-url")?;
                &rendered
            }
        };
        let peer = target.peer().await?;
        let mut req = RequestHeader::build(
            self.spec.method.as_str(),
            target.path_and_query.as_bytes(),
            None,
        )
        .map_err(text)?;
        let original_req = original.facts.req;
        for (name, value) in original_req.headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                req.append_header(name.clone(), value.clone())
                    .map_err(text)?;
            }
        }
        let value = |v: String| HeaderValue::try_from(v).map_err(text);
        req.insert_header(header::HOST, value(target.authority.clone())?)
            .map_err(text)?;
        req.insert_header("x-original-url", value(original.url())?)
            .map_err(text)?;
        req.insert_header("x-original-method", original_req.method.as_str())
            .map_err(text)?;
        let redirect = match &self.spec.request_redirect {
            Some(template) => HeaderValue::from_bytes(&original.render(template)).map_err(text)?,
            None => value(
                original_req
                    .uri
                    .path_and_query()
                    .map_or("/".into(), |p| p.to_string()),
            )?,
        };
        req.insert_header("x-auth-request-redirect", redirect)
            .map_err(text)?;
        req.insert_header("x-forwarded-host", value(original.host().to_string())?)
            .map_err(text)?;
        req.insert_header(
            "x-forwarded-proto",
            if original.facts.https {
                "https"
            } else {
                "http"
            },
        )
        .map_err(text)?;
        if let Some(ip) = original.facts.client {
            req.insert_header("x-forwarded-for", value(ip.to_string())?)
                .map_err(text)?;
            req.insert_header("x-real-ip", value(ip.to_string())?)
                .map_err(text)?;
        }
        req.insert_header(header::CONTENT_LENGTH, "0")
            .map_err(text)?;
        // `auth-proxy-set-headers`, over what the client sent.
        for (name, template) in &self.spec.request_headers {
            let value = HeaderValue::from_bytes(&original.render(template)).map_err(text)?;
            req.insert_header(name.clone(), value).map_err(text)?;
        }

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
        if let Some(idle_ms) = self.spec.keepalive_ms {
            connector
                .release_http_session(session, &peer, Some(Duration::from_millis(idle_ms)))
                .await;
        }
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
                    Some(signin) => match HeaderValue::from_bytes(&original.render(signin)) {
                        Ok(location) => {
                            out.push((header::LOCATION, location));
                            AuthAnswer::Deny {
                                status: 302,
                                headers: out,
                            }
                        }
                        Err(_) => AuthAnswer::Failed,
                    },
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
                tracing::warn!(auth_url = %self.spec.url.redacted(), status = other, "external auth answered neither 2xx, 401 nor 403");
                AuthAnswer::Failed
            }
        }
    }
}
