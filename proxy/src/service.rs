//! The Pingora proxy service: route each request on the snapshot it started with, send
//! plain HTTP to HTTPS where the route asks for it, pick an endpoint, forward with the
//! usual `X-Forwarded-*` headers, and count the answer.

use crate::compile::{CompiledSnapshot, Routed};
use crate::forwarded::Cidr;
use crate::pages::{error_page, redirect, SERVER};
use crate::store::SnapshotStore;
use async_trait::async_trait;
use http::header::{self, HeaderValue};
use pingora::prelude::*;
use pingora::protocols::http::date::get_cached_date;
use pingora::proxy::FailToProxy;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub struct IngressProxy {
    pub store: Arc<SnapshotStore>,
    pub trusted_proxies: Vec<Cidr>,
    /// The port HTTP→HTTPS redirects name; 443 is left out of the URL.
    pub https_redirect_port: u16,
}

/// Per-request state: the snapshot loaded once at the start, and what it decided.
#[derive(Default)]
pub struct RequestCtx {
    snapshot: Option<Arc<CompiledSnapshot>>,
    routed: Routed,
    upstream: Option<SocketAddr>,
    /// The client reached us over TLS, or a trusted proxy in front says it did.
    https: bool,
    /// This connection is TLS to us.
    tls: bool,
    /// The peer is in `--trusted-proxies`.
    trusted: bool,
}

/// cert-manager and other ACME clients answer HTTP-01 challenges here, over plain HTTP.
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_PORT: &str = "x-forwarded-port";
const X_REAL_IP: &str = "x-real-ip";

impl IngressProxy {
    fn is_trusted(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted_proxies.iter().any(|c| c.contains(ip)))
    }

    /// `https://host[:port]/path?query` for a plain-HTTP request; the host is the one a
    /// trusted proxy names in `X-Forwarded-Host`, else the request's own. `None` when the
    /// host is not fit for a URL.
    fn https_location(&self, req: &RequestHeader, trusted: bool) -> Option<HeaderValue> {
        let forwarded = trusted.then(|| req.headers.get(X_FORWARDED_HOST).and_then(|v| v.to_str().ok())).flatten();
        let host = redirect_host(forwarded.unwrap_or_else(|| request_host(req)))?;
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = match self.https_redirect_port {
            443 => format!("https://{host}{path}"),
            port => format!("https://{host}:{port}{path}"),
        };
        HeaderValue::try_from(location).ok()
    }
}

fn request_host(req: &RequestHeader) -> &str {
    req.uri.authority().map(|a| a.as_str()).or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("")
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The host part of an authority (no port), if it is made only of characters a host
/// name or address literal can hold, so that it is safe to put into a `Location`.
fn redirect_host(authority: &str) -> Option<&str> {
    let host = if authority.starts_with('[') {
        &authority[..=authority.find(']')?]
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':');
    (!host.is_empty() && host.len() <= 255 && host.bytes().all(allowed)).then_some(host)
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

/// Formats an address into a header value without an intermediate `String`.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}"); // 45 bytes is the longest IPv6 text form
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static(""))
}

async fn respond(session: &mut Session, status: u16) -> Result<()> {
    let (header, body) = error_page(status);
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl ProxyHttp for IngressProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(snapshot) = self.store.load() else {
            respond(session, 503).await?;
            return Ok(true);
        };
        ctx.tls = is_tls(session);
        ctx.trusted = self.is_trusted(peer_ip(session));
        let req = session.req_header();
        ctx.https =
            ctx.tls || (ctx.trusted && req.headers.get(X_FORWARDED_PROTO).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
        ctx.routed = snapshot.route(request_host(req), req.uri.path());
        if ctx.routed.redirect_to_https && !ctx.https && !req.uri.path().starts_with(ACME_CHALLENGE_PREFIX) {
            ctx.snapshot = Some(snapshot);
            match self.https_location(req, ctx.trusted) {
                Some(location) => session.write_response_header(Box::new(redirect(308, location)), true).await?,
                None => respond(session, 400).await?,
            }
            return Ok(true);
        }
        let status = match snapshot.pool(&ctx.routed).map(|p| p.balancer.pick()) {
            None => Some(404),
            Some(None) => Some(503),
            Some(Some(addr)) => {
                ctx.upstream = Some(addr);
                None
            }
        };
        ctx.snapshot = Some(snapshot);
        match status {
            Some(code) => {
                respond(session, code).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let pool = ctx.snapshot.as_ref().and_then(|s| s.pool(&ctx.routed));
        let (Some(addr), Some(pool)) = (ctx.upstream, pool) else {
            return Err(Error::explain(ErrorType::InternalError, "no upstream chosen"));
        };
        Ok(Box::new(pool.upstream.peer(addr)))
    }

    async fn upstream_request_filter(&self, session: &mut Session, upstream: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
        let peer = peer_ip(session);
        let trusted = ctx.trusted;
        let peer_value = peer.map_or(HeaderValue::from_static(""), ip_header_value);

        let forwarded_for = match upstream.headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) if trusted && !prior.is_empty() => HeaderValue::try_from(format!("{prior}, {}", peer_value.to_str().unwrap_or("")))
                .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?,
            _ => peer_value.clone(),
        };
        upstream.insert_header(X_FORWARDED_FOR, forwarded_for)?;
        upstream.insert_header(X_REAL_IP, peer_value)?;

        // From a trusted proxy, what it says about the original request stands.
        let keep = |upstream: &RequestHeader, name: &str| trusted && upstream.headers.contains_key(name);
        if !keep(upstream, X_FORWARDED_PROTO) {
            upstream.insert_header(X_FORWARDED_PROTO, if ctx.tls { "https" } else { "http" })?;
        }
        if !keep(upstream, X_FORWARDED_HOST) {
            // HTTP/2 carries the host in `:authority`, HTTP/1.1 in `Host`, whose value is
            // shared rather than copied.
            let req = session.req_header();
            let host = match req.uri.authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
                None => req.headers.get(header::HOST).cloned(),
            };
            match host {
                Some(host) if !host.is_empty() => upstream.insert_header(X_FORWARDED_HOST, host)?,
                _ => {
                    upstream.remove_header(X_FORWARDED_HOST);
                }
            }
        }
        if !keep(upstream, X_FORWARDED_PORT) {
            if let Some(port) = session.server_addr().and_then(|a| a.as_inet()).map(|a| a.port()) {
                upstream.insert_header(X_FORWARDED_PORT, port)?;
            }
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, response: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        response.insert_header(header::SERVER, HeaderValue::from_static(SERVER))?;
        if !response.headers.contains_key(header::DATE) {
            response.insert_header(header::DATE, get_cached_date())?;
        }
        if ctx.https {
            if let Some(hsts) = ctx.snapshot.as_ref().and_then(|s| s.hsts()) {
                response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut RequestCtx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let (header, body) = error_page(code);
            if let Err(err) = session.write_error_response(header, body).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(snapshot) = &ctx.snapshot {
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            snapshot.counters(&ctx.routed).record(status);
        }
    }
}
