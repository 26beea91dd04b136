//! The Pingora proxy service: route each request on the snapshot it started with, send
//! plain HTTP to HTTPS where the route asks for it, pick an endpoint, forward with the
//! usual `X-Forwarded-*` headers, and count the answer. A route with a canary sends the
//! request to one side first; a side with cookie affinity pins the client to an endpoint.

use crate::access::{CompiledAccess, Verdict};
use crate::access_log::{self, AccessLog};
use crate::affinity::{Pin, StickySessions};
use crate::balancer::Attempt;
use crate::client_cert::{ConnectionCertificate, Refused};
use crate::compile::{BackendPool, CompiledSnapshot, Routed};
use crate::cors::CompiledCors;
use crate::error_pages;
use crate::external_auth::{AuthAnswer, OriginalRequest};
use crate::forwarded::{self, Cidr};
use crate::header_edits::strip_hop_by_hop;
use crate::jwks::JwksCache;
use crate::jwt;
use crate::metrics::Refusal;
use crate::normalize::normalize;
use crate::otlp::{Attribute, Span, SpanExporter};
use crate::pages::{self, error_page, redirect, SERVER};
use crate::rate_limit::{Admission, InProgress};
use crate::request_key::{build_hash_key, request_host};
use crate::rewrite::{redirect_location, upstream_path};
use crate::store::SnapshotStore;
use crate::trace_context::{self, TraceContext};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::PreparedHeaderName;
use pingora::prelude::*;
use pingora::protocols::http::date::get_cached_date;
use pingora::proxy::FailToProxy;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub struct IngressProxy {
    pub store: Arc<SnapshotStore>,
    pub trusted_proxies: Vec<Cidr>,
    /// The port HTTP→HTTPS redirects name; 443 is left out of the URL.
    pub https_redirect_port: u16,
    pub sessions: StickySessions,
    /// Connections to external auth services, pooled.
    pub auth_connector: pingora::connectors::http::Connector,
    /// The key sets of `auth-jwt-jwks-url`.
    pub jwks: JwksCache,
    /// Keep `%2F` and `%5C` in paths rather than refusing them (`--allow-encoded-slashes`).
    pub allow_encoded_slashes: bool,
    /// The status of requests over a rate limit (`--limit-req-status-code`).
    pub limit_status: u16,
    /// Send no `Server` header, neither Portico's nor an upstream's (`--hide-server-header`).
    pub hide_server_header: bool,
    pub header_limits: HeaderLimits,
    /// `--access-log`: one line per request, unless off.
    pub access_log: Option<AccessLog>,
    /// `--otlp-endpoint`: a span per sampled request.
    pub spans: Option<SpanExporter>,
    /// `--trace-sample-ratio`: the share of traces Portico starts that are sampled.
    pub trace_sample_ratio: f64,
}

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
    fn exceeded_by(&self, req: &RequestHeader) -> Option<&'static str> {
        if req.headers.len() > self.max_fields {
            return Some("too many header fields");
        }
        let line = req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + req.method.as_str().len() + 11;
        let fields: usize = req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        (line + fields > self.max_bytes).then_some("request header larger than the limit")
    }
}

/// Per-request state: the snapshot loaded once at the start, and what it decided.
#[derive(Default)]
pub struct RequestCtx {
    snapshot: Option<Arc<CompiledSnapshot>>,
    routed: Routed,
    /// The endpoint the current attempt uses.
    attempt: Option<Attempt>,
    /// Endpoints earlier attempts failed on; empty (and unallocated) unless retrying.
    tried: Vec<usize>,
    /// When the first attempt started, for `proxy-next-upstream-timeout`.
    first_attempt: Option<Instant>,
    /// The request's consistent-hash key, when its backend hashes.
    hash_key: Vec<u8>,
    /// Where the client's affinity cookie pinned it, when it had a valid one.
    pin: Option<Pin>,
    /// A new pin to send the client in an affinity cookie.
    issue: Option<Pin>,
    /// What external auth admitted the request with: headers for the upstream request
    /// (`None` removes), and cookies for the client (on every answer when `always`).
    auth_headers: Vec<(http::HeaderName, Option<HeaderValue>)>,
    auth_cookies: Vec<HeaderValue>,
    auth_cookies_always: bool,
    /// The path and query `rewrite-target` made, sent upstream instead of the request's.
    upstream_path: Option<String>,
    /// Request body bytes seen so far, against the route's limit.
    body_bytes: u64,
    /// The upstream's answer is being replaced by another attempt.
    retrying_status: bool,
    /// The client reached us over TLS, or a trusted proxy in front says it did.
    https: bool,
    /// This connection is TLS to us.
    tls: bool,
    /// The peer is in `--trusted-proxies`.
    trusted: bool,
    /// The `Access-Control-Allow-Origin` for an allowed origin of a CORS route.
    cors_origin: Option<HeaderValue>,
    /// Counts this request against `limit-connections` until it ends.
    in_progress: Option<InProgress>,
    /// The error backend's page was sent in place of the upstream's answer.
    error_page_sent: bool,
    /// When the request's header had been read.
    started: Option<(Instant, SystemTime)>,
    /// Counts the request in `portico_requests_in_flight` until it ends.
    in_flight: Option<InFlight>,
    /// The request's place in its trace. (Its `X-Request-ID` is in the request itself.)
    trace: Option<TraceContext>,
    /// When the current attempt chose its endpoint, and how long the endpoint took to
    /// send its response header.
    attempt_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    upstream_addr: Option<SocketAddr>,
    /// Why Portico answered the request itself, when it refused it.
    refusal: Option<Refusal>,
}

/// Lowers the in-flight gauge when the request's context goes.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// cert-manager and other ACME clients answer HTTP-01 challenges here, over plain HTTP.
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

// The headers Portico adds to every request (and `X-Request-ID` to every answer), parsed
// once: inserting or looking up a name given as a string parses it each time.
static X_FORWARDED_FOR: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-port");
static X_REAL_IP: PreparedHeaderName = PreparedHeaderName::from_static("x-real-ip");
static X_REQUEST_ID: PreparedHeaderName = PreparedHeaderName::from_static("x-request-id");
static TRACEPARENT: PreparedHeaderName = PreparedHeaderName::from_static("traceparent");
/// How many of those `upstream_request_filter` may add, so that the maps grow once.
const FORWARDING_HEADERS: usize = 5;

/// Why an HTTP/1 request could be read two ways, if it could: a line ended by a bare LF
/// (`raw` is the header as received), several or malformed `Content-Length`s, or
/// `Transfer-Encoding` beside one, or other than `chunked`.
fn framing_problem(req: &RequestHeader, raw: Option<&[u8]>) -> Option<&'static str> {
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
    if codings.next().is_some() || !coding.to_str().is_ok_and(|c| c.trim().eq_ignore_ascii_case("chunked")) {
        return Some("a Transfer-Encoding other than chunked");
    }
    if req.version == http::Version::HTTP_10 {
        return Some("Transfer-Encoding on HTTP/1.0");
    }
    None
}

/// Gives `answer` the request's `X-Request-ID`. The client may have chosen it, so it is
/// marked here as unique to the request (see `trace_context::unique_per_request`).
fn echo_request_id(req: &RequestHeader, answer: &mut ResponseHeader) -> Result<()> {
    if let Some(id) = req.headers.get(X_REQUEST_ID.name()) {
        answer.insert_prepared_header(&X_REQUEST_ID, trace_context::unique_per_request(id.clone()))?;
    }
    Ok(())
}

/// Whether a line of `raw` ends in LF without CR.
fn has_bare_lf(raw: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', raw).any(|at| at == 0 || raw[at - 1] != b'\r')
}

impl IngressProxy {
    /// Puts the request path into its normal form (see `normalize`), in the request
    /// itself, so that the upstream receives what routing saw.
    fn normalize_path(&self, session: &mut Session) -> std::result::Result<(), String> {
        let uri = &session.req_header().uri;
        let normal = match normalize(uri.path(), self.allow_encoded_slashes) {
            Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
            Ok(std::borrow::Cow::Owned(p)) => p,
            Err(why) => return Err(format!("path {:?}: {why:?}", uri.path())),
        };
        let path_and_query = match uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().map_err(|e| format!("normalised path: {e}"))?);
        let uri = http::Uri::from_parts(parts).map_err(|e| format!("normalised path: {e}"))?;
        session.req_header_mut().set_uri(uri);
        Ok(())
    }

    /// Whether a request goes to its route's canary: a client pinned to the primary stays
    /// there, one pinned to a sticky canary stays there, and the canary's rules decide
    /// for everyone else.
    fn takes_canary(&self, snapshot: &CompiledSnapshot, routed: &Routed, req: &RequestHeader) -> bool {
        let Some(route) = snapshot.matched_route(routed) else { return false };
        let Some(canary) = &route.canary else { return false };
        if route.affinity.as_deref().is_some_and(|a| self.sessions.pinned(a, req, route.pool.affinity_parts()).is_some()) {
            return false;
        }
        if canary.sticky && canary.affinity.as_ref().is_some_and(|a| self.sessions.pinned(a, req, canary.pool.affinity_parts()).is_some()) {
            return true;
        }
        canary.takes(req)
    }

    /// The first endpoint for a request: by its affinity cookie where the side has
    /// affinity, else by the balancer.
    fn first_endpoint(&self, snapshot: &CompiledSnapshot, pool: &BackendPool, req: &RequestHeader, ctx: &mut RequestCtx) -> Option<usize> {
        match snapshot.affinity(&ctx.routed) {
            None => pool.balancer.pick(&ctx.hash_key, &[]),
            Some(a) => {
                ctx.pin = self.sessions.pinned(a, req, pool.affinity_parts());
                let (index, issue) = self.sessions.choose(a.mode, ctx.pin, &pool.balancer, &ctx.hash_key, &[])?;
                ctx.issue = issue;
                Some(index)
            }
        }
    }

    /// The endpoint for a retry: another one. A client that was given a cookie for the
    /// failed endpoint, or whose route re-pins on failure, is pinned to the new one.
    fn retry_endpoint(&self, snapshot: &CompiledSnapshot, pool: &BackendPool, ctx: &mut RequestCtx) -> Option<usize> {
        match snapshot.affinity(&ctx.routed) {
            None => pool.balancer.pick(&ctx.hash_key, &ctx.tried),
            Some(a) => {
                let (index, _) = self.sessions.choose(a.mode, ctx.pin.or(ctx.issue), &pool.balancer, &ctx.hash_key, &ctx.tried)?;
                if a.change_on_failure || ctx.issue.is_some() {
                    ctx.issue = self.sessions.pin_for(a.mode, &pool.balancer, index).or(ctx.issue);
                }
                Some(index)
            }
        }
    }

    fn is_trusted(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| forwarded::is_trusted(&self.trusted_proxies, ip))
    }

    /// `https://host[:port]/path?query` for a plain-HTTP request; the host is the one a
    /// trusted proxy names in `X-Forwarded-Host`, else the request's own. `None` when the
    /// host is not fit for a URL.
    /// Like ingress-nginx, it drops a trailing slash unless `keep_slash`
    /// (`preserve-trailing-slash`).
    fn https_location(&self, req: &RequestHeader, trusted: bool, keep_slash: bool) -> Option<HeaderValue> {
        let forwarded = trusted.then(|| req.headers.get(X_FORWARDED_HOST.name()).and_then(|v| v.to_str().ok())).flatten();
        let host = redirect_host(forwarded.unwrap_or_else(|| request_host(req)))?;
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = match path.strip_suffix('/') {
            Some(stripped) if !keep_slash && !stripped.is_empty() => stripped,
            _ => path,
        };
        let location = match self.https_redirect_port {
            443 => format!("https://{host}{path}"),
            port => format!("https://{host}:{port}{path}"),
        };
        HeaderValue::try_from(location).ok()
    }
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
    let len = match ip {
        IpAddr::V4(v4) => write_ipv4(v4, &mut buf),
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}"); // 45 bytes is the longest IPv6 text form
            cursor.position() as usize
        }
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static(""))
}

/// Dotted decimal, as `Ipv4Addr`'s `Display` writes it, without the formatting machinery
/// (a tenth of its cost, on every request).
fn write_ipv4(ip: std::net::Ipv4Addr, buf: &mut [u8; 48]) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// Whether an upstream error is the endpoint's fault: it could not be reached, or it
/// did not answer in time. Those count against its health and may be retried.
fn endpoint_failure(e: &Error) -> Option<Failure> {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Some(Failure::Timeout)
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::ConnectionClosed
        | ErrorType::TLSHandshakeFailure
        | ErrorType::ConnectProxyFailure => Some(Failure::Error),
        _ if e.esource() == &ErrorSource::Upstream => Some(Failure::Error),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Error,
    Timeout,
    /// The endpoint answered with a status `proxy-next-upstream` lists.
    Status(u16),
}

impl RequestCtx {
    fn pool(&self) -> Option<&BackendPool> {
        self.snapshot.as_ref().and_then(|s| s.pool(&self.routed))
    }

    fn backend_series(&self) -> Option<&crate::metrics::BackendSeries> {
        let snapshot = self.snapshot.as_ref()?;
        Some(snapshot.pool(&self.routed)?.series(snapshot.metrics()))
    }

    /// Counts a failed attempt in its backend's metrics: a timeout, a connection that
    /// could not be made (`connecting`), and whether another endpoint is tried.
    fn count_failure(&self, failure: Failure, connecting: bool, retried: bool) {
        let Some(series) = self.backend_series() else { return };
        match failure {
            Failure::Timeout => series.timeouts.inc(),
            Failure::Error if connecting => series.connect_errors.inc(),
            _ => {}
        }
        if retried {
            series.retries.inc();
        }
    }

    /// Ends the current attempt, counting a failure against its endpoint; returns the
    /// endpoint's index.
    fn finish_attempt(&mut self, failed: bool) -> Option<usize> {
        let attempt = self.attempt.take()?;
        let index = attempt.index;
        if let Some(pool) = self.pool() {
            pool.balancer.finish(attempt, failed);
        }
        Some(index)
    }

    /// Whether a failed attempt (already in `tried`) may be followed by another.
    fn may_retry(&self, failure: Failure) -> bool {
        let Some(pool) = self.pool() else { return false };
        let retry = &pool.retry;
        let wanted = match failure {
            Failure::Error => retry.on_error,
            Failure::Timeout => retry.on_timeout,
            Failure::Status(code) => retry.on_status.contains(&code),
        };
        let attempts = self.tried.len() as u64;
        let in_time = retry.timeout_ms == 0 || self.first_attempt.is_some_and(|t| t.elapsed().as_millis() < u128::from(retry.timeout_ms));
        wanted && attempts < u64::from(retry.tries).min(pool.balancer.len() as u64) && in_time
    }
}

async fn respond(session: &mut Session, status: u16) -> Result<()> {
    let (header, body) = error_page(status);
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await
}

/// An answer Portico gives itself instead of forwarding the request.
enum Answer {
    /// Portico's page for this status, with these headers; `close` ends the connection.
    Page {
        status: u16,
        headers: Vec<(http::HeaderName, HeaderValue)>,
        close: bool,
    },
    Redirect {
        status: u16,
        location: HeaderValue,
    },
    /// A CORS preflight from an allowed origin: 204.
    Preflight,
}

impl Answer {
    fn page(status: u16) -> Self {
        Answer::Page { status, headers: Vec::new(), close: false }
    }
}

/// The request path, one step per concern, in the order of nginx's phases: framing and
/// path (400), redirects, CORS preflights, rate limits, access, body size, rewrites, and
/// the choice of endpoint. Each step either lets the request on or answers it.
impl IngressProxy {
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx, snapshot: &CompiledSnapshot) -> Option<Answer> {
        ctx.tls = is_tls(session);
        ctx.trusted = self.is_trusted(peer_ip(session));
        // A request whose length or path could be read two ways is refused before routing,
        // and its connection closed, so that no other hop can read it the other way.
        if let Some(why) = self.header_limits.exceeded_by(session.req_header()) {
            tracing::debug!(why, "request header refused");
            ctx.refusal = Some(Refusal::BadRequest);
            return Some(Answer::Page { status: 431, headers: Vec::new(), close: true });
        }
        let raw = session.as_downstream().as_http1().map(|h1| h1.get_headers_raw_bytes());
        let framing = framing_problem(session.req_header(), raw.as_deref());
        if let Some(why) = framing.map(str::to_string).or_else(|| self.normalize_path(session).err()) {
            tracing::debug!(why, "request refused");
            ctx.refusal = Some(Refusal::BadRequest);
            return Some(Answer::Page { status: 400, headers: Vec::new(), close: true });
        }
        let req = session.req_header();
        ctx.https = ctx.tls
            || (ctx.trusted && req.headers.get(X_FORWARDED_PROTO.name()).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
        ctx.routed = snapshot.route(request_host(req), req);
        // Client certificates are checked before anything but the HTTPS redirect answers.
        if let Some(policy) = snapshot.client_auth(&ctx.routed).filter(|_| ctx.https || !ctx.routed.redirect_to_https) {
            let connection = session.digest().and_then(|d| d.ssl_digest.as_ref()).and_then(|d| d.extension.get::<ConnectionCertificate>());
            match policy.check(ctx.tls, connection) {
                Ok(headers) => ctx.auth_headers.extend(headers.0),
                Err(refused) => {
                    ctx.refusal = Some(Refusal::ClientCertificate);
                    return Some(match refused {
                        Refused::BadCertificate => Answer::page(400),
                        Refused::Redirect(location) => Answer::Redirect { status: 302, location },
                        Refused::Forbidden => Answer::page(403),
                        Refused::Misdirected => Answer::page(421),
                    });
                }
            }
        }
        if let Some(answer) = self.redirect(req, ctx, snapshot) {
            return Some(answer);
        }
        let route = snapshot.matched_route(&ctx.routed);
        if let Some(cors) = route.and_then(|r| r.cors.as_deref()) {
            ctx.cors_origin = cors.allowed_origin(req);
            if ctx.cors_origin.is_some() && CompiledCors::is_preflight(req) {
                return Some(Answer::Preflight);
            }
        }
        if let Some(limiter) = route.and_then(|r| r.rate_limit.as_deref()) {
            match limiter.admit(self.client(session)) {
                Admission::Admit(in_progress) => ctx.in_progress = in_progress,
                Admission::Refuse { retry_after } => {
                    ctx.refusal = Some(Refusal::RateLimit);
                    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                    let headers = vec![(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))];
                    return Some(Answer::Page { status: self.limit_status, headers, close: false });
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
        let declared = req.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.zip(snapshot.max_body_bytes(&ctx.routed)).is_some_and(|(declared, limit)| declared > limit) {
            ctx.refusal = Some(Refusal::BodyTooLarge);
            return Some(Answer::page(413));
        }
        if let Some(target) = route.and_then(|r| r.rewrite.as_deref()).and_then(|r| r.target.as_deref()) {
            let captures = route.and_then(|r| r.path_regex.as_ref()).and_then(|re| re.captures(req.uri.path()));
            match upstream_path(target, captures.as_ref(), req.uri.query(), self.allow_encoded_slashes) {
                Ok(path_and_query) => ctx.upstream_path = Some(path_and_query),
                Err(why) => {
                    tracing::debug!(?why, target, "rewritten path refused");
                    ctx.refusal = Some(Refusal::BadRequest);
                    return Some(Answer::page(400));
                }
            }
        }
        self.first_attempt(session, ctx, snapshot)
    }

    /// HTTP→HTTPS, then the route's own redirects (`permanent-redirect`, `app-root`...),
    /// which answer before access control, as nginx's `return` does. ACME HTTP-01
    /// challenges are never sent to HTTPS.
    fn redirect(&self, req: &RequestHeader, ctx: &RequestCtx, snapshot: &CompiledSnapshot) -> Option<Answer> {
        if ctx.routed.redirect_to_https && !ctx.https && !req.uri.path().starts_with(ACME_CHALLENGE_PREFIX) {
            let keep_slash = snapshot.matched_route(&ctx.routed).is_some_and(|r| r.preserve_trailing_slash);
            return Some(match self.https_location(req, ctx.trusted, keep_slash) {
                Some(location) => Answer::Redirect { status: 308, location },
                None => Answer::page(400),
            });
        }
        let rw = snapshot.matched_route(&ctx.routed)?.rewrite.as_ref()?;
        let request_uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let (status, location) = match (&rw.redirect, &rw.app_root) {
            (Some(r), _) => {
                let host = redirect_host(request_host(req)).unwrap_or("");
                (r.code, redirect_location(&r.target, if ctx.https { "https" } else { "http" }, host, request_uri))
            }
            (None, Some(root)) if req.uri.path() == "/" => (302, root.clone()),
            _ => return None,
        };
        Some(match HeaderValue::try_from(location) {
            Ok(location) => Answer::Redirect { status, location },
            Err(_) => Answer::page(400),
        })
    }

    /// Source ranges, then credentials: basic auth, and the external auth service. A
    /// refusal comes with its reason, for metrics.
    async fn check_access(&self, session: &Session, ctx: &mut RequestCtx, access: &CompiledAccess) -> Option<(Answer, Refusal)> {
        let req = session.req_header();
        let client = (access.checks_sources() || access.external.is_some()).then(|| self.client(session)).flatten();
        let verdict = access.check(client, req);
        if let (Verdict::Allow | Verdict::AskExternal, Some(jwt)) = (&verdict, &access.jwt) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
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
                    return Some((Answer::Page { status: 401, headers: challenge, close: false }, Refusal::Jwt));
                }
            }
        }
        let (status, why) = match (verdict, &access.external) {
            (Verdict::Allow, _) => return None,
            (Verdict::AskExternal, Some(external)) => {
                let original = OriginalRequest { req, host: request_host(req), https: ctx.https, client };
                match external.ask(&self.auth_connector, &original).await {
                    AuthAnswer::Allow { upstream_headers, cookies } => {
                        ctx.auth_headers.extend(upstream_headers);
                        ctx.auth_cookies = cookies;
                        ctx.auth_cookies_always = external.always_set_cookie();
                        return None;
                    }
                    AuthAnswer::Deny { status, headers } => {
                        return Some((Answer::Page { status, headers, close: false }, Refusal::ExternalAuth))
                    }
                    AuthAnswer::Failed => (500, Refusal::ExternalAuth),
                }
            }
            (Verdict::Unauthorized(challenge), _) => {
                let challenge = vec![(header::WWW_AUTHENTICATE, challenge)];
                return Some((Answer::Page { status: 401, headers: challenge, close: false }, Refusal::BasicAuth));
            }
            (Verdict::Forbidden, _) => (403, Refusal::SourceRange),
            _ => (503, Refusal::PolicyUnavailable),
        };
        Some((Answer::page(status), why))
    }

    /// Which side of a canary, and the first endpoint: 404 when nothing routes, 503 when
    /// no endpoint is left.
    fn first_attempt(&self, session: &Session, ctx: &mut RequestCtx, snapshot: &CompiledSnapshot) -> Option<Answer> {
        let req = session.req_header();
        ctx.routed.canary = self.takes_canary(snapshot, &ctx.routed, req);
        let Some(mut pool) = snapshot.pool(&ctx.routed) else { return Some(Answer::page(404)) };
        if let Some(key) = &pool.hash_key {
            build_hash_key(key, req, peer_ip(session), &mut ctx.hash_key);
        }
        let mut index = self.first_endpoint(snapshot, pool, req, ctx);
        // `default-backend`: the route's backend has no endpoint to offer.
        if let (None, Some(fallback)) = (index, snapshot.matched_route(&ctx.routed).and_then(|r| r.fallback.as_ref())) {
            ctx.routed.fallback = true;
            pool = fallback;
            index = pool.balancer.pick(b"", &[]);
        }
        let Some(index) = index else { return Some(Answer::page(503)) };
        ctx.attempt = Some(pool.balancer.start(index));
        None
    }

    /// `custom-http-errors`: sends the error backend's page for a listed upstream status,
    /// then ends proxying with an error so that the upstream's own answer is dropped.
    /// Without a listed status or a page, the upstream's answer goes on.
    async fn replace_error_page(&self, session: &mut Session, status: u16, ctx: &mut Box<RequestCtx>) -> Result<()> {
        let snapshot = ctx.snapshot.clone();
        let Some(pages) = snapshot.as_ref().and_then(|s| s.matched_route(&ctx.routed)).and_then(|r| r.error_pages.as_deref()) else {
            return Ok(());
        };
        if !pages.statuses.contains(&status) {
            return Ok(());
        }
        let req = session.req_header();
        let Some((mut header, body)) = error_pages::fetch(&self.auth_connector, pages, status, req, request_host(req)).await else {
            return Ok(());
        };
        // Portico's headers (Server, HSTS, CORS, the route's own) as on any upstream answer.
        self.response_filter(session, &mut header, ctx).await?;
        session.set_keepalive(None);
        ctx.error_page_sent = true;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(header), head).await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        Err(Error::explain(ErrorType::HTTPStatus(status), "answered by the error backend"))
    }

    /// Gives the request its id and its place in a trace, in the request itself, so that
    /// the upstream, the auth service and the error backend all see the same.
    fn identify(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let req = session.req_header_mut();
        req.reserve_headers(2)?;
        if !trace_context::usable_request_id(req.headers.get(X_REQUEST_ID.name())) {
            req.insert_prepared_header(&X_REQUEST_ID, trace_context::new_request_id())?;
        }
        let trace =
            TraceContext::continue_or_start(req.headers.get(TRACEPARENT.name()).map(HeaderValue::as_bytes), self.trace_sample_ratio);
        req.insert_prepared_header(&TRACEPARENT, trace.traceparent())?;
        ctx.trace = Some(trace);
        Ok(())
    }

    /// Writes the request's access log line and exports its span, when those are on.
    fn report(&self, session: &Session, ctx: &RequestCtx, status: u16, labels: &crate::metrics::RouteLabels) {
        let Some((started, started_at)) = ctx.started else { return };
        let sampled = ctx.trace.filter(|t| t.sampled && self.spans.is_some());
        if self.access_log.is_none() && sampled.is_none() {
            return;
        }
        let req = session.req_header();
        let header = |name: header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        let protocol = match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        };
        let elapsed = started.elapsed();
        let client = self.client(session);
        let request_id = req.headers.get(X_REQUEST_ID.name()).and_then(|v| v.to_str().ok()).unwrap_or("");
        if let Some(log) = &self.access_log {
            let trace_id = ctx.trace.map(|t| t.trace_id_hex()).unwrap_or_default();
            log.write(&access_log::Entry {
                time: started_at,
                client,
                method: req.method.as_str(),
                host: request_host(req),
                path: req.uri.path(),
                query: req.uri.query().unwrap_or(""),
                protocol,
                status,
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                duration: access_log::seconds(elapsed),
                upstream_addr: ctx.upstream_addr,
                upstream_duration: ctx.upstream_elapsed.map(access_log::seconds),
                namespace: labels.namespace(),
                ingress: labels.ingress(),
                service: labels.service(),
                request_id,
                trace_id: &trace_id,
                user_agent: header(header::USER_AGENT),
                referer: header(header::REFERER),
                tls_version: session.digest().and_then(|d| d.ssl_digest.as_ref()).map_or("", |d| &d.version),
            });
        }
        if let (Some(exporter), Some(context)) = (&self.spans, sampled) {
            let route = labels.path();
            let mut attributes = vec![
                ("http.request.method", Attribute::Text(req.method.to_string())),
                ("url.path", Attribute::Text(req.uri.path().to_string())),
                ("server.address", Attribute::Text(request_host(req).to_string())),
                ("network.protocol.version", Attribute::Text(protocol.trim_start_matches("HTTP/").to_string())),
                ("http.response.status_code", Attribute::Int(i64::from(status))),
            ];
            if let Some(client) = client {
                attributes.push(("client.address", Attribute::Text(client.to_string())));
            }
            if !route.is_empty() {
                attributes.push(("http.route", Attribute::Text(route.to_string())));
                attributes.push(("portico.ingress", Attribute::Text(format!("{}/{}", labels.namespace(), labels.ingress()))));
            }
            if !labels.service().is_empty() {
                attributes.push(("portico.service", Attribute::Text(labels.service().to_string())));
            }
            if let Some(addr) = ctx.upstream_addr {
                attributes.push(("portico.upstream.address", Attribute::Text(addr.to_string())));
            }
            if !request_id.is_empty() {
                attributes.push(("portico.request_id", Attribute::Text(request_id.to_string())));
            }
            let name = if route.is_empty() { req.method.to_string() } else { format!("{} {route}", req.method) };
            exporter.export(Span { context, name, start: started_at, end: started_at + elapsed, attributes, error: status >= 500 });
        }
    }

    /// The client's address, as `forwarded::client_address` tells it.
    fn client(&self, session: &Session) -> Option<IpAddr> {
        let forwarded_for = session.req_header().headers.get(X_FORWARDED_FOR.name()).and_then(|v| v.to_str().ok());
        forwarded::client_address(peer_ip(session), forwarded_for, &self.trusted_proxies)
    }

    /// Writes Portico's own answer, with the CORS headers of an allowed origin.
    async fn send(&self, session: &mut Session, ctx: &RequestCtx, snapshot: &CompiledSnapshot, answer: Answer) -> Result<()> {
        let cors = ctx.cors_origin.as_ref().zip(snapshot.matched_route(&ctx.routed).and_then(|r| r.cors.as_deref()));
        let preflight = matches!(answer, Answer::Preflight);
        let (mut header, body) = match answer {
            Answer::Page { status, headers, close } => {
                if close {
                    session.set_keepalive(None);
                }
                let (mut header, body) = error_page(status);
                for (name, value) in headers {
                    header.append_header(name, value)?;
                }
                (header, Some(body))
            }
            Answer::Redirect { status, location } => (redirect(status, location), None),
            Answer::Preflight => (pages::preflight(), None),
        };
        if let Some((origin, cors)) = cors {
            cors.apply(&mut header, origin, preflight);
        }
        if let Some(edits) = snapshot.matched_route(&ctx.routed).and_then(|r| r.headers.as_deref()) {
            edits.response.apply(&mut header)?;
        }
        if self.hide_server_header {
            header.remove_header(&header::SERVER);
        }
        echo_request_id(session.req_header(), &mut header)?;
        let end = body.is_none();
        session.write_response_header(Box::new(header), end).await?;
        match body {
            Some(body) => session.write_response_body(Some(body), true).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl ProxyHttp for IngressProxy {
    // Boxed: Pingora keeps the context in each request's future, which it moves into a new
    // allocation for every request on a connection, so an inline context is copied whole.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.started = Some((Instant::now(), SystemTime::now()));
        ctx.in_flight = Some(InFlight::new(&self.store.metrics().requests_in_flight));
        self.identify(session, ctx)?;
        let Some(snapshot) = self.store.load() else {
            respond(session, 503).await?;
            return Ok(true);
        };
        ctx.snapshot = Some(Arc::clone(&snapshot));
        match self.admit(session, ctx, &snapshot).await {
            None => Ok(false),
            Some(answer) => {
                self.send(session, ctx, &snapshot, answer).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        ctx.first_attempt.get_or_insert_with(Instant::now);
        let snapshot = ctx.snapshot.clone();
        let Some((snapshot, pool)) = snapshot.as_ref().and_then(|s| Some((s, s.pool(&ctx.routed)?))) else {
            return Err(Error::explain(ErrorType::InternalError, "no backend routed"));
        };
        // A retry: the failed endpoint is in `tried`; pick another.
        let index = match &ctx.attempt {
            Some(a) => a.index,
            None => {
                let index = self
                    .retry_endpoint(snapshot, pool, ctx)
                    .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no endpoint left"))?;
                ctx.attempt = Some(pool.balancer.start(index));
                index
            }
        };
        let addr = pool.balancer.endpoint(index).addr;
        ctx.attempt_started = Some(Instant::now());
        ctx.upstream_addr = Some(addr);
        Ok(Box::new(pool.upstream.peer(addr)))
    }

    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, ctx: &mut Self::CTX, mut e: Box<Error>) -> Box<Error> {
        // Nothing was sent: any request may go to another endpoint.
        let failure = endpoint_failure(&e).unwrap_or(Failure::Error);
        if let Some(index) = ctx.finish_attempt(true) {
            ctx.tried.push(index);
        }
        let retry = ctx.may_retry(failure);
        ctx.count_failure(failure, true, retry);
        e.set_retry(retry);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(series) = ctx.backend_series() {
            let used = if reused { &series.reused_connections } else { &series.new_connections };
            used.inc();
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.retrying_status {
            // `upstream_response_filter` already decided, and moved on from that endpoint.
            ctx.retrying_status = false;
            return e;
        }
        let failure = endpoint_failure(&e);
        // A pooled connection the endpoint had already closed says nothing about its
        // health (keep-alive timeouts race with reuse); a fresh connection failing does.
        let stale = client_reused && failure == Some(Failure::Error);
        if let Some(index) = ctx.finish_attempt(failure.is_some() && !stale) {
            ctx.tried.push(index);
        }
        // A request that may have been acted on is never sent twice: only idempotent
        // methods whose body (if any) is still held for a retry.
        let safe = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        let retry = failure.is_some_and(|f| safe && ctx.may_retry(f));
        if let Some(f) = failure {
            ctx.count_failure(f, false, retry);
        }
        match failure {
            Some(_) if retry => e.set_retry(true),
            _ if safe => e.retry.decide_reuse(client_reused),
            _ => e.set_retry(false),
        }
        e
    }

    async fn upstream_response_filter(&self, session: &mut Session, response: &mut ResponseHeader, ctx: &mut Self::CTX) -> Result<()> {
        strip_hop_by_hop(response);
        let status = response.status.as_u16();
        if let Some(elapsed) = ctx.attempt_started.map(|t| t.elapsed()) {
            ctx.upstream_elapsed = Some(elapsed);
            if let Some(series) = ctx.backend_series() {
                series.upstream_duration.observe(elapsed.as_secs_f64());
            }
        }
        let listed = ctx.pool().is_some_and(|p| p.retry.on_status.contains(&status));
        if !listed {
            return self.replace_error_page(session, status, ctx).await;
        }
        // As for errors: only a request that cannot have been acted on twice is sent again.
        let safe = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        if let Some(index) = ctx.finish_attempt(true) {
            ctx.tried.push(index);
        }
        if safe && ctx.may_retry(Failure::Status(status)) {
            ctx.count_failure(Failure::Status(status), false, true);
            ctx.retrying_status = true;
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "upstream status listed in proxy-next-upstream");
            e.set_retry(true);
            return Err(e);
        }
        self.replace_error_page(session, status, ctx).await
    }

    /// A request stops counting against `limit-connections` before its last bytes are
    /// sent, so that a client that has its answer can be admitted again at once.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            ctx.in_progress = None;
        }
        Ok(None)
    }

    async fn request_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, _end: bool, ctx: &mut Self::CTX) -> Result<()> {
        if let (Some(chunk), Some(limit)) = (body.as_ref(), ctx.snapshot.as_ref().and_then(|s| s.max_body_bytes(&ctx.routed))) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > limit {
                return Err(Error::explain(ErrorType::HTTPStatus(413), "request body larger than the route allows"));
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(&self, session: &mut Session, upstream: &mut RequestHeader, ctx: &mut Self::CTX) -> Result<()> {
        let peer = peer_ip(session);
        let trusted = ctx.trusted;
        let peer_value = peer.map_or(HeaderValue::from_static(""), ip_header_value);

        upstream.reserve_headers(FORWARDING_HEADERS)?;
        let forwarded_for = match upstream.headers.get(X_FORWARDED_FOR.name()).and_then(|v| v.to_str().ok()) {
            Some(prior) if trusted && !prior.is_empty() => HeaderValue::try_from(format!("{prior}, {}", peer_value.to_str().unwrap_or("")))
                .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?,
            _ => peer_value.clone(),
        };
        upstream.insert_prepared_header(&X_FORWARDED_FOR, forwarded_for)?;
        upstream.insert_prepared_header(&X_REAL_IP, peer_value)?;

        // From a trusted proxy, what it says about the original request stands.
        let keep = |upstream: &RequestHeader, name: &PreparedHeaderName| trusted && upstream.headers.contains_key(name.name());
        if !keep(upstream, &X_FORWARDED_PROTO) {
            upstream.insert_prepared_header(&X_FORWARDED_PROTO, HeaderValue::from_static(if ctx.tls { "https" } else { "http" }))?;
        }
        if !keep(upstream, &X_FORWARDED_HOST) {
            // HTTP/2 carries the host in `:authority`, HTTP/1.1 in `Host`, whose value is
            // shared rather than copied.
            let req = session.req_header();
            let host = match req.uri.authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
                None => req.headers.get(header::HOST).cloned(),
            };
            match host {
                Some(host) if !host.is_empty() => upstream.insert_prepared_header(&X_FORWARDED_HOST, host)?,
                _ => {
                    upstream.remove_header(X_FORWARDED_HOST.name());
                }
            }
        }
        if let Some(path_and_query) = &ctx.upstream_path {
            let mut parts = upstream.uri.clone().into_parts();
            parts.path_and_query = Some(path_and_query.parse().map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?);
            upstream.set_uri(http::Uri::from_parts(parts).map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?);
        }
        if let Some(rw) = ctx.snapshot.as_ref().and_then(|s| s.matched_route(&ctx.routed)).and_then(|r| r.rewrite.as_deref()) {
            if let Some(host) = &rw.upstream_host {
                upstream.insert_header(header::HOST, host.as_str())?;
            }
            if let Some(prefix) = &rw.forwarded_prefix {
                upstream.insert_header("x-forwarded-prefix", prefix.as_str())?;
            }
        }
        if let Some(edits) = ctx.snapshot.as_ref().and_then(|s| s.matched_route(&ctx.routed)).and_then(|r| r.headers.as_deref()) {
            edits.request.apply(upstream)?;
        }
        // What the auth service vouched for replaces whatever the client sent.
        for (name, value) in &ctx.auth_headers {
            match value {
                Some(v) => upstream.insert_header(name.clone(), v.clone())?,
                None => {
                    upstream.remove_header(name);
                }
            }
        }
        if !keep(upstream, &X_FORWARDED_PORT) {
            if let Some(port) = session.server_addr().and_then(|a| a.as_inet()).map(|a| a.port()) {
                upstream.insert_prepared_header(&X_FORWARDED_PORT, HeaderValue::from(port))?;
            }
        }
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, response: &mut ResponseHeader, ctx: &mut Self::CTX) -> Result<()> {
        // `X-Request-ID`, and the `Connection` and `Date` Pingora writes.
        response.reserve_headers(3)?;
        if self.hide_server_header {
            response.remove_header(&header::SERVER);
        } else {
            response.insert_header(header::SERVER, HeaderValue::from_static(SERVER))?;
        }
        if !response.headers.contains_key(header::DATE) {
            response.insert_header(header::DATE, get_cached_date())?;
        }
        echo_request_id(session.req_header(), response)?;
        if ctx.https {
            if let Some(hsts) = ctx.snapshot.as_ref().and_then(|s| s.hsts()) {
                response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
            }
        }
        if let Some(origin) = &ctx.cors_origin {
            if let Some(cors) = ctx.snapshot.as_ref().and_then(|s| s.matched_route(&ctx.routed)).and_then(|r| r.cors.as_deref()) {
                cors.apply(response, origin, false);
            }
        }
        let success = response.status.is_success() || response.status.is_redirection();
        if ctx.auth_cookies_always || success {
            for cookie in &ctx.auth_cookies {
                response.append_header(header::SET_COOKIE, cookie.clone())?;
            }
        }
        if let (Some(pin), Some(snapshot)) = (ctx.issue, &ctx.snapshot) {
            let side = snapshot.affinity(&ctx.routed).zip(snapshot.pool(&ctx.routed));
            if let Some(cookie) = side.and_then(|(a, pool)| self.sessions.set_cookie(a, pin, ctx.https, pool.affinity_parts())) {
                response.append_header(header::SET_COOKIE, cookie)?;
            }
        }
        if let Some(edits) = ctx.snapshot.as_ref().and_then(|s| s.matched_route(&ctx.routed)).and_then(|r| r.headers.as_deref()) {
            edits.response.apply(response)?;
        }
        Ok(())
    }

    /// Ending a request with the error backend's page is not a failure.
    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        ctx.error_page_sent
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Self::CTX) -> FailToProxy {
        if ctx.error_page_sent {
            // The client has its whole answer; only this connection's state is unknown.
            return FailToProxy { error_code: session.response_written().map_or(0, |r| r.status.as_u16()), can_reuse_downstream: false };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
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

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.finish_attempt(e.and_then(endpoint_failure).is_some());
        let Some(snapshot) = ctx.snapshot.clone() else { return };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let series = snapshot.series(&ctx.routed);
        let elapsed = ctx.started.map_or(Duration::ZERO, |(t, _)| t.elapsed());
        series.record(status, elapsed, session.body_bytes_read(), session.body_bytes_sent());
        if let Some(why) = ctx.refusal {
            series.refused(why);
        }
        self.report(session, ctx, status, series.labels());
    }
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

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "127.0.0.1",
            "10.0.100.9",
            "1.20.3.45",
            "192.168.10.200",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip), ip.to_string().as_str());
        }
    }
}
