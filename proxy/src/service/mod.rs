//! The Pingora proxy service. Each request runs on the snapshot it loaded when it
//! arrived, through one module per phase: `admit` (framing, routing, redirects, policy),
//! `attempt` (the canary side, the endpoint, retries), `forward` (what the upstream
//! receives), `respond` (Portico's own answers, the upstream's, and what every answer
//! gets) and `report` (access log and span). The `ProxyHttp` impl below only calls them
//! in the order Pingora runs its hooks.

mod admit;
mod attempt;
mod context;
mod forward;
mod hygiene;
mod mirror;
mod report;
mod respond;

pub use context::RequestCtx;
pub use hygiene::HeaderLimits;

use crate::answer::compression::AnswerCompression;
use crate::config::store::SnapshotStore;
use crate::listener::forwarded::{self, Cidr};
use crate::listener::shutdown::Stopping;
use crate::policy::jwks::JwksCache;
use crate::policy::password_checks::PasswordChecks;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::otlp::SpanExporter;
use crate::upstream::affinity::StickySessions;
use crate::upstream::mirror::RequestMirrors;
use async_trait::async_trait;
use bytes::Bytes;
use context::InFlight;
use pingora::http::PreparedHeaderName;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use respond::Made;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The ports clients reach the listeners on (a Service's, usually 80 and 443), which
/// the containers' own ports are not: HTTP→HTTPS redirects name the HTTPS one (443 is left
/// out of the URL), and `X-Forwarded-Port` says which one a request came to.
#[derive(Debug, Clone, Copy)]
pub struct PublicPorts {
    pub http: u16,
    pub https: u16,
}

pub struct IngressProxy {
    pub store: Arc<SnapshotStore>,
    pub trusted_proxies: Vec<Cidr>,
    /// Where a trusted proxy names the client (`--forwarded-for-header`).
    pub forwarded_for_header: http::HeaderName,
    /// The ports clients reach the listeners on, behind the Service.
    pub public_ports: PublicPorts,
    pub sessions: StickySessions,
    /// Connections to external auth services, pooled.
    pub auth_connector: pingora::connectors::http::Connector,
    /// The key sets of `auth-jwt-jwks-url`.
    pub jwks: JwksCache,
    /// Basic auth's bcrypt comparisons, off the worker threads.
    pub passwords: PasswordChecks,
    /// Keep `%2F` and `%5C` in paths rather than refusing them (`--allow-encoded-slashes`).
    pub allow_encoded_slashes: bool,
    /// The status of requests over a rate limit (`--limit-req-status-code`).
    pub limit_status: u16,
    /// Send no `Server` header, neither Portico's nor an upstream's (`--hide-server-header`).
    pub hide_server_header: bool,
    pub header_limits: HeaderLimits,
    /// `--access-log`: one line per request, unless off.
    pub access_log: Option<Arc<AccessLog>>,
    /// `--otlp-endpoint`: a span per sampled request.
    pub spans: Option<SpanExporter>,
    /// `--trace-sample-ratio`: the share of traces Portico starts that are sampled.
    pub trace_sample_ratio: f64,
    /// `mirror-target`'s copies, sent in the background.
    pub mirrors: RequestMirrors,
    /// Set on SIGTERM: from then on every HTTP/1 answer says `Connection: close`, so that
    /// clients move to new connections while the listeners still accept.
    pub stopping: Stopping,
}

// The headers Portico adds to every request (and `X-Request-ID` to every answer), parsed
// once: inserting or looking up a name given as a string parses it each time.
static X_FORWARDED_FOR: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: PreparedHeaderName = PreparedHeaderName::from_static("x-forwarded-port");
static X_REAL_IP: PreparedHeaderName = PreparedHeaderName::from_static("x-real-ip");
static X_REQUEST_ID: PreparedHeaderName = PreparedHeaderName::from_static("x-request-id");
static TRACEPARENT: PreparedHeaderName = PreparedHeaderName::from_static("traceparent");

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The port the request came in on.
fn server_port(session: &Session) -> Option<u16> {
    session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port())
}

impl IngressProxy {
    fn is_trusted(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| forwarded::is_trusted(&self.trusted_proxies, ip))
    }

    /// The client's address, as `forwarded::client_address` tells it.
    fn client(&self, session: &Session) -> Option<IpAddr> {
        let forwarded_for = session
            .req_header()
            .headers
            .get(&self.forwarded_for_header)
            .and_then(|v| v.to_str().ok());
        forwarded::client_address(peer_ip(session), forwarded_for, &self.trusted_proxies)
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
        if self.stopping.is_set() {
            session.set_keepalive(None);
        } else {
            // RFC 9112, 9.3.2, as nginx: requests pipelined behind this one are answered in
            // order, each as if it came alone. (Pingora's default closes after this one.)
            session.set_pipelining_enabled(true);
        }
        ctx.in_flight = Some(InFlight::new(&self.store.metrics().requests_in_flight));
        let loaded = self.store.load();
        let request_ids = loaded.as_ref().is_none_or(|s| s.generates_request_ids());
        self.identify(session, ctx, request_ids)?;
        let Some(snapshot) = loaded else {
            self.send(session, ctx, respond::Answer::page(503)).await?;
            return Ok(true);
        };
        ctx.snapshot = Some(Arc::clone(&snapshot));
        match self.admit(session, ctx, &snapshot).await {
            None => {
                self.start_mirror(session, ctx);
                ctx.compression = AnswerCompression::for_request(
                    &snapshot.source.global.compression,
                    session.req_header(),
                );
                Ok(false)
            }
            Some(answer) => {
                self.send(session, ctx, answer).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        self.peer(ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        attempt::connect_failed(ctx, e)
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
            let used = if reused {
                &series.reused_connections
            } else {
                &series.new_connections
            };
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
        let e = e.more_context(format!("Peer: {peer}"));
        attempt::proxy_failed(ctx, e, attempt::safe_to_repeat(session), client_reused)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.upstream_answered(session, response, ctx).await
    }

    /// A request stops counting against `limit-connections` before its last bytes are
    /// sent, so that a client that has its answer can be admitted again at once.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            ctx.in_progress = None;
        }
        if let Some(encoder) = ctx.compression.as_mut() {
            if let Some(compressed) = encoder.chunk(body.as_ref(), end_of_stream) {
                *body = Some(compressed);
            }
        }
        let rate = ctx.route().and_then(|r| r.response_rate);
        Ok(match (body.as_ref(), rate) {
            (Some(chunk), Some(rate)) => {
                let (began, sent) = ctx.body_sent.get_or_insert_with(|| (Instant::now(), 0));
                *sent += chunk.len() as u64;
                rate.delay(*sent, began.elapsed())
            }
            _ => None,
        })
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.mirror.is_some() {
            self.mirror_body(body.as_deref(), end, ctx);
        }
        if let (Some(chunk), Some(limit)) = (
            body.as_ref(),
            ctx.snapshot
                .as_ref()
                .and_then(|s| s.max_body_bytes(&ctx.routed)),
        ) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > limit {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than the route allows",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.forward(session, upstream, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A request in flight when SIGTERM came.
        if self.stopping.is_set() {
            session.set_keepalive(None);
        }
        if let Some(encoder) = ctx.compression.as_mut() {
            if !encoder.start(response) {
                ctx.compression = None;
            }
        }
        self.decorate(session.req_header(), ctx, response, Made::Upstream)
    }

    /// Ending a request with the error backend's page is not a failure.
    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        ctx.error_page_sent
    }

    fn request_error_response(&self, status: u16) -> ResponseHeader {
        respond::unreadable_request(status, self.hide_server_header)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        if ctx.error_page_sent {
            // The client has its whole answer; only this connection's state is unknown.
            return FailToProxy {
                error_code: session.response_written().map_or(0, |r| r.status.as_u16()),
                can_reuse_downstream: false,
            };
        }
        let error_code = self.answer_failure(session, e, ctx).await;
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.finish_attempt(e.and_then(attempt::endpoint_failure).is_some());
        let Some(snapshot) = ctx.snapshot.clone() else {
            return;
        };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let series = snapshot.series(&ctx.routed);
        let elapsed = ctx.started.map_or(Duration::ZERO, |(t, _)| t.elapsed());
        series.record(
            status,
            elapsed,
            session.body_bytes_read(),
            session.body_bytes_sent(),
        );
        if let Some(why) = ctx.refusal {
            series.refused(why);
        }
        let logged = !snapshot
            .matched_route(&ctx.routed)
            .is_some_and(|r| r.no_access_log);
        self.report(session, ctx, status, series.labels(), logged);
    }
}
