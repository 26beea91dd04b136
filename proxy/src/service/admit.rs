//! The first phase: whether a request is let on, one step per concern in the order of
//! nginx's phases: size and framing (431, 400), the path in normal form (400), routing,
//! client certificates, redirects, CORS preflights, rate limits, access, body size, and
//! rewrites. Each step either lets the request on or names the answer Portico gives.

use super::context::RequestCtx;
use super::hygiene::{framing_problem, host_problem, repeated_field, target_problem};
use super::respond::Answer;
use super::{IngressProxy, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::config::compile::CompiledSnapshot;
use crate::listener::client_cert::{ConnectionCertificate, Refused};
use crate::policy::access::{CompiledAccess, Verdict};
use crate::policy::cors::CompiledCors;
use crate::policy::external_auth::{AuthAnswer, OriginalRequest};
use crate::policy::jwt;
use crate::policy::rate_limit::Admission;
use crate::routing::normalize::normalize;
use crate::routing::request_key::{request_host, without_port, RequestFacts};
use crate::routing::rewrite::{redirect_location, upstream_path};
use crate::telemetry::metrics::Refusal;
use http::header::{self, HeaderValue};
use pingora::prelude::*;
use portico_model::RedirectPath;
use std::borrow::Cow;

/// cert-manager and other ACME clients answer HTTP-01 challenges here, over plain HTTP.
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The host part of an authority (no port), if it is made only of characters a host
/// name or address literal can hold, so that it is safe to put into a `Location`.
fn redirect_host(authority: &str) -> Option<&str> {
    let host = without_port(authority);
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':');
    (!host.is_empty() && host.len() <= 255 && host.bytes().all(allowed)).then_some(host)
}

/// The whole authority (`$http_host`), if its host passes [`redirect_host`] and what
/// follows it is a port or nothing.
fn redirect_authority(authority: &str) -> Option<&str> {
    let host = redirect_host(authority)?;
    let port = &authority[host.len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    port_ok.then_some(authority)
}

/// `https://host[:port]/path?query` for a plain-HTTP request to `host`. Like
/// ingress-nginx, it drops a trailing slash unless `keep_slash`
/// (`preserve-trailing-slash`); port 443 is left out of the URL. `None` when the host is
/// not fit for a URL.
fn https_location(host: &str, path_and_query: &str, port: u16, keep_slash: bool) -> Option<String> {
    let host = redirect_host(host)?;
    let path = match path_and_query.strip_suffix('/') {
        Some(stripped) if !keep_slash && !stripped.is_empty() => stripped,
        _ => path_and_query,
    };
    Some(match port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    })
}

impl IngressProxy {
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &CompiledSnapshot,
    ) -> Option<Answer> {
        ctx.tls = super::is_tls(session);
        ctx.trusted = self.is_trusted(super::peer_ip(session));
        // A request whose length or path could be read two ways is refused before routing,
        // and its connection closed, so that no other hop can read it the other way.
        if let Some(why) = self.header_limits.exceeded_by(session.req_header()) {
            tracing::debug!(why, "request header refused");
            ctx.refusal = Some(Refusal::BadRequest);
            return Some(Answer::closing(431));
        }
        let raw = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        let framing = framing_problem(session.req_header(), raw.as_deref())
            .or_else(|| target_problem(session.req_header()))
            .or_else(|| repeated_field(session.req_header()))
            .or_else(|| host_problem(session.req_header()));
        if let Some(why) = framing
            .map(str::to_string)
            .or_else(|| self.normalize_path(session).err())
        {
            tracing::debug!(why, "request refused");
            ctx.refusal = Some(Refusal::BadRequest);
            return Some(Answer::closing(400));
        }
        if let Some(block) = snapshot.blocklist() {
            if block.refuses(self.client(session), session.req_header()) {
                ctx.refusal = Some(Refusal::Blocked);
                return Some(Answer::page(403));
            }
        }
        let req = session.req_header();
        ctx.https = ctx.tls
            || (ctx.trusted
                && req
                    .headers
                    .get(X_FORWARDED_PROTO.name())
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
        ctx.routed = snapshot.route(request_host(req), req);
        let matched = snapshot.matched_route(&ctx.routed);
        if !ctx.https && matched.is_some_and(|r| r.https_only) {
            // Attached to HTTPS listeners only: plain HTTP has no such route.
            return Some(Answer::page(404));
        }
        let route_tracing = matched.and_then(|r| r.tracing.as_deref());
        if let Err(e) = self.trace(session, ctx, route_tracing) {
            tracing::debug!(error = %e, "traceparent not set");
        }
        let req = session.req_header();
        let route = snapshot.matched_route(&ctx.routed);
        // Every answer from here on, refusals included, is readable by an allowed origin.
        let cors = route.and_then(|r| r.cors.as_deref());
        ctx.cors_origin = cors.and_then(|c| c.allowed_origin(req));
        // Client certificates are checked before anything but the HTTPS redirect answers.
        if let Some(policy) = snapshot
            .client_auth(&ctx.routed)
            .filter(|_| ctx.https || !ctx.routed.redirect_to_https)
        {
            let connection = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|d| d.extension.get::<ConnectionCertificate>());
            match policy.check(ctx.tls, connection) {
                Ok(headers) => ctx.auth_headers.extend(headers.0),
                Err(refused) => {
                    ctx.refusal = Some(Refusal::ClientCertificate);
                    return Some(match refused {
                        Refused::BadCertificate => Answer::page(400),
                        Refused::Redirect(location) => Answer::Redirect {
                            status: 302,
                            location,
                        },
                        Refused::Forbidden => Answer::page(403),
                        Refused::Misdirected => Answer::page(421),
                    });
                }
            }
        }
        if let Some(answer) = self.redirect(req, super::server_port(session), ctx, snapshot) {
            return Some(answer);
        }
        if ctx.cors_origin.is_some() && CompiledCors::is_preflight(req) {
            return Some(Answer::Preflight);
        }
        if let Some(limiter) = route.and_then(|r| r.rate_limit.as_deref()) {
            match limiter.admit(self.client(session)) {
                Admission::Admit(in_progress) => ctx.in_progress = in_progress,
                Admission::Refuse { retry_after } => {
                    ctx.refusal = Some(Refusal::RateLimit);
                    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                    let headers = vec![(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))];
                    return Some(Answer::Page {
                        status: self.limit_status,
                        headers,
                        close: false,
                    });
                }
            }
        }
        if let Some(access) = route.and_then(|r| r.access.as_deref()) {
            if let Some((answer, why)) = self.check_access(session, ctx, access).await {
                ctx.refusal = Some(why);
                return Some(answer);
            }
        }
        // A body declared larger than the route takes is refused before anything goes upstream.
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared
            .zip(snapshot.max_body_bytes(&ctx.routed))
            .is_some_and(|(declared, limit)| declared > limit)
        {
            ctx.refusal = Some(Refusal::BodyTooLarge);
            return Some(Answer::page(413));
        }
        // Gateway API's `ReplacePrefixMatch`: the matched prefix swapped, the query kept.
        let swapped = route
            .and_then(|r| r.rewrite.as_deref())
            .and_then(|r| r.replace_prefix.as_ref())
            .map(|swap| portico_model::replace_path_prefix(req.uri.path(), swap));
        if let Some((target, log)) = route
            .and_then(|r| r.rewrite.as_deref())
            .and_then(|r| Some((swapped.as_deref().or(r.target.as_deref())?, r.log)))
        {
            let captures = route
                .and_then(|r| r.path_regex.as_ref())
                .and_then(|re| re.captures(req.uri.path()));
            match upstream_path(
                target,
                captures.as_ref(),
                req.uri.query(),
                self.allow_encoded_slashes,
            ) {
                Ok(path_and_query) => {
                    if log {
                        tracing::info!(
                            target: "portico::rewrite",
                            host = request_host(req),
                            from = req.uri.path(),
                            to = path_and_query.as_str(),
                            "rewrite"
                        );
                    }
                    ctx.upstream_path = Some(path_and_query);
                }
                Err(why) => {
                    tracing::debug!(?why, target, "rewritten path refused");
                    ctx.refusal = Some(Refusal::BadRequest);
                    return Some(Answer::page(400));
                }
            }
        }
        self.first_attempt(session, ctx, snapshot)
    }

    /// Puts the request path into its normal form (see `normalize`), in the request
    /// itself, so that the upstream receives what routing saw.
    fn normalize_path(&self, session: &mut Session) -> std::result::Result<(), String> {
        let uri = &session.req_header().uri;
        let normal = match normalize(uri.path(), self.allow_encoded_slashes) {
            Ok(Cow::Borrowed(_)) => return Ok(()),
            Ok(Cow::Owned(p)) => p,
            Err(why) => return Err(format!("path {:?}: {why:?}", uri.path())),
        };
        let path_and_query = match uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|e| format!("normalised path: {e}"))?,
        );
        let uri = http::Uri::from_parts(parts).map_err(|e| format!("normalised path: {e}"))?;
        session.req_header_mut().set_uri(uri);
        Ok(())
    }

    /// HTTP→HTTPS, then the route's own redirects (`permanent-redirect`, `app-root`...),
    /// which answer before access control, as nginx's `return` does. ACME HTTP-01
    /// challenges are never sent to HTTPS.
    fn redirect(
        &self,
        req: &RequestHeader,
        server_port: Option<u16>,
        ctx: &RequestCtx,
        snapshot: &CompiledSnapshot,
    ) -> Option<Answer> {
        let route = snapshot.matched_route(&ctx.routed);
        if ctx.routed.redirect_to_https
            && !ctx.https
            && !req.uri.path().starts_with(ACME_CHALLENGE_PREFIX)
        {
            // A trusted proxy in front names the host the client asked for.
            let forwarded = ctx
                .trusted
                .then(|| {
                    req.headers
                        .get(X_FORWARDED_HOST.name())
                        .and_then(|v| v.to_str().ok())
                })
                .flatten();
            let host = forwarded.unwrap_or_else(|| request_host(req));
            let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let keep_slash = route.is_some_and(|r| r.preserve_trailing_slash);
            let location = https_location(host, path, self.public_ports.https, keep_slash);
            return Some(match location.and_then(|l| HeaderValue::try_from(l).ok()) {
                Some(location) => Answer::Redirect {
                    status: snapshot.https_redirect_code(),
                    location,
                },
                None => Answer::page(400),
            });
        }
        let rw = route?.rewrite.as_ref()?;
        let mut request_uri = Cow::Borrowed(req.uri.path_and_query().map_or("/", |p| p.as_str()));
        let (status, location) = match (&rw.redirect, &rw.app_root) {
            (Some(r), _) => {
                let host = redirect_host(request_host(req)).unwrap_or("");
                let scheme = if ctx.https { "https" } else { "http" };
                // Gateway API's path modifiers: a new path, the query kept.
                if let Some(path) = &r.path {
                    let new = match path {
                        RedirectPath::Full(p) => p.clone(),
                        RedirectPath::Prefix(swap) => {
                            portico_model::replace_path_prefix(req.uri.path(), swap)
                        }
                    };
                    request_uri = Cow::Owned(match req.uri.query() {
                        Some(q) => format!("{new}?{q}"),
                        None => new,
                    });
                }
                let mut location = redirect_location(&r.target, scheme, host, &request_uri);
                // nginx's `absolute_redirect`, and `port_in_redirect` with it.
                if location.starts_with('/') && !location.starts_with("//") && !r.relative {
                    let default_port = if ctx.https { 443 } else { 80 };
                    let port = match server_port {
                        Some(p) if r.with_port && p != default_port => format!(":{p}"),
                        _ => String::new(),
                    };
                    location = format!("{scheme}://{host}{port}{location}");
                }
                (r.code, location)
            }
            // Absolute, as ingress-nginx writes it: `$scheme://$http_host<app-root>`.
            (None, Some(root)) if req.uri.path() == "/" => {
                let Some(authority) = redirect_authority(request_host(req)) else {
                    return Some(Answer::page(400));
                };
                let scheme = if ctx.https { "https" } else { "http" };
                (302, format!("{scheme}://{authority}{root}"))
            }
            _ => return None,
        };
        Some(match HeaderValue::try_from(location) {
            Ok(location) => Answer::Redirect { status, location },
            Err(_) => Answer::page(400),
        })
    }

    /// Source ranges, then credentials: bearer JWTs, basic auth, and the external auth
    /// service. A refusal comes with its reason, for metrics.
    async fn check_access(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        access: &CompiledAccess,
    ) -> Option<(Answer, Refusal)> {
        let req = session.req_header();
        let client = (access.checks_sources() || access.external.is_some())
            .then(|| self.client(session))
            .flatten();
        let verdict = match access.check(client, req) {
            Verdict::VerifyPassword(pending) => match self.passwords.verify(&pending).await {
                Some(matched) => access.check_with_password(client, req, &pending, matched),
                None => return Some((Answer::page(503), Refusal::PolicyUnavailable)),
            },
            decided => decided,
        };
        if let (Verdict::Allow | Verdict::AskExternal, Some(jwt)) = (&verdict, &access.jwt) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let verified = match jwt.jwks_url() {
                None => jwt.verify(req, now),
                Some(url) => match self.jwks.verify(jwt, url, req, now).await {
                    Some(verified) => verified,
                    None => return Some((Answer::page(503), Refusal::PolicyUnavailable)),
                },
            };
            match verified {
                Ok(headers) => ctx.auth_headers.extend(headers),
                Err(why) => {
                    tracing::debug!(why, "bearer token refused");
                    let challenge = vec![(header::WWW_AUTHENTICATE, jwt::challenge(why))];
                    return Some((
                        Answer::Page {
                            status: 401,
                            headers: challenge,
                            close: false,
                        },
                        Refusal::Jwt,
                    ));
                }
            }
        }
        let (status, why) = match (verdict, &access.external) {
            (Verdict::Allow, _) => return None,
            (Verdict::AskExternal, Some(external)) => {
                let original = OriginalRequest {
                    facts: RequestFacts {
                        req,
                        client,
                        https: ctx.https,
                        server_port: super::server_port(session),
                    },
                };
                match external.ask(&self.auth_connector, &original).await {
                    AuthAnswer::Allow {
                        upstream_headers,
                        cookies,
                    } => {
                        ctx.auth_headers.extend(upstream_headers);
                        ctx.auth_cookies = cookies;
                        ctx.auth_cookies_always = external.always_set_cookie();
                        return None;
                    }
                    AuthAnswer::Deny { status, headers } => {
                        return Some((
                            Answer::Page {
                                status,
                                headers,
                                close: false,
                            },
                            Refusal::ExternalAuth,
                        ))
                    }
                    AuthAnswer::Failed => (500, Refusal::ExternalAuth),
                }
            }
            (Verdict::Unauthorized(challenge), _) => {
                let challenge = vec![(header::WWW_AUTHENTICATE, challenge)];
                return Some((
                    Answer::Page {
                        status: 401,
                        headers: challenge,
                        close: false,
                    },
                    Refusal::BasicAuth,
                ));
            }
            (Verdict::Forbidden, _) => (403, Refusal::SourceRange),
            _ => (503, Refusal::PolicyUnavailable),
        };
        Some((Answer::page(status), why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_redirects_name_the_host_path_and_port() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, u16, bool, Option<&str>)] = &[
            ("a.test", "/x?y=1", 443, false, Some("https://a.test/x?y=1")),
            ("a.test:8080", "/x", 443, false, Some("https://a.test/x")),
            ("a.test", "/x", 8443, false, Some("https://a.test:8443/x")),
            ("a.test", "/x/", 443, false, Some("https://a.test/x")),
            ("a.test", "/x/", 443, true, Some("https://a.test/x/")),
            ("a.test", "/", 443, false, Some("https://a.test/")),
            ("[::1]:80", "/", 443, false, Some("https://[::1]/")),
            ("a.test\r\nx", "/", 443, false, None),
            ("a.test/evil", "/", 443, false, None),
            ("", "/", 443, false, None),
        ];
        for (host, path, port, keep_slash, expected) in cases {
            assert_eq!(
                https_location(host, path, *port, *keep_slash).as_deref(),
                *expected,
                "{host} {path}"
            );
        }
    }
}
