//! What one request carries from phase to phase: the snapshot it loaded once at the
//! start, where routing sent it, the attempt in progress, and what policy decided.

use crate::answer::compression::AnswerCompression;
use crate::config::compile::{BackendPool, CompiledRoute, CompiledSnapshot, Routed};
use crate::policy::rate_limit::InProgress;
use crate::telemetry::metrics::{BackendSeries, Refusal};
use crate::telemetry::trace_context::TraceContext;
use crate::upstream::affinity::Pin;
use crate::upstream::balancer::Attempt;
use crate::upstream::mirror::MirrorCopy;
use http::header::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Per-request state, created by `new_ctx` and dropped when the request ends.
#[derive(Default)]
pub struct RequestCtx {
    pub(super) snapshot: Option<Arc<CompiledSnapshot>>,
    pub(super) routed: Routed,
    /// The endpoint the current attempt uses.
    pub(super) attempt: Option<Attempt>,
    /// Endpoints earlier attempts failed on; empty (and unallocated) unless retrying.
    pub(super) tried: Vec<usize>,
    /// When the first attempt started, for `proxy-next-upstream-timeout`.
    pub(super) first_attempt: Option<Instant>,
    /// The request's consistent-hash key, when its backend hashes.
    pub(super) hash_key: Vec<u8>,
    /// Where the client's affinity cookie pinned it, when it had a valid one.
    pub(super) pin: Option<Pin>,
    /// A new pin to send the client in an affinity cookie.
    pub(super) issue: Option<Pin>,
    /// What external auth admitted the request with: headers for the upstream request
    /// (`None` removes), and cookies for the client.
    pub(super) auth_headers: Vec<(http::HeaderName, Option<HeaderValue>)>,
    pub(super) auth_cookies: Vec<HeaderValue>,
    /// `auth-always-set-cookie`: the auth service's cookies go on every answer, not only
    /// on successes and redirects.
    pub(super) auth_cookies_always: bool,
    /// The path and query `rewrite-target` made, sent upstream instead of the request's.
    pub(super) upstream_path: Option<String>,
    /// Request body bytes seen so far, against the route's limit.
    pub(super) body_bytes: u64,
    /// The upstream's answer is being replaced by another attempt.
    pub(super) retrying_status: bool,
    /// The client reached us over TLS, or a trusted proxy in front says it did.
    pub(super) https: bool,
    /// This connection is TLS to us.
    pub(super) tls: bool,
    /// The peer is in `--trusted-proxies`.
    pub(super) trusted: bool,
    /// The `Access-Control-Allow-Origin` for an allowed origin of a CORS route.
    pub(super) cors_origin: Option<HeaderValue>,
    /// Counts this request against `limit-connections` until it ends.
    pub(super) in_progress: Option<InProgress>,
    /// The error backend's page was sent in place of the upstream's answer.
    pub(super) error_page_sent: bool,
    /// When the request's header had been read.
    pub(super) started: Option<(Instant, SystemTime)>,
    /// Counts the request in `portico_requests_in_flight` until it ends.
    pub(super) in_flight: Option<InFlight>,
    /// The request's place in its trace. (Its `X-Request-ID` is in the request itself.)
    pub(super) trace: Option<TraceContext>,
    /// When the current attempt chose its endpoint, and how long the endpoint took to
    /// send its response header.
    pub(super) attempt_started: Option<Instant>,
    pub(super) upstream_elapsed: Option<Duration>,
    pub(super) upstream_addr: Option<SocketAddr>,
    /// Why Portico answered the request itself, when it refused it.
    pub(super) refusal: Option<Refusal>,
    /// When the answer's body began and how much of it has gone, for `limit-rate`.
    pub(super) body_sent: Option<(Instant, u64)>,
    /// `mirror-target`: the copy waiting for the request body to pass.
    pub(super) mirror: Option<MirrorCopy>,
    /// `use-gzip`/`enable-brotli`: the upstream answer's encoder, for a client that accepts one.
    pub(super) compression: Option<Box<AnswerCompression>>,
}

/// Lowers the in-flight gauge when the request's context goes.
pub(super) struct InFlight(prometheus::IntGauge);

impl InFlight {
    pub(super) fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestCtx {
    /// The route that took the request, when a route (not the default backend) did.
    pub(super) fn route(&self) -> Option<&CompiledRoute> {
        self.snapshot.as_ref()?.matched_route(&self.routed)
    }

    /// The backend the request goes to, on the side routing and the canary chose.
    pub(super) fn pool(&self) -> Option<&BackendPool> {
        self.snapshot.as_ref()?.pool(&self.routed)
    }

    pub(super) fn backend_series(&self) -> Option<&BackendSeries> {
        let snapshot = self.snapshot.as_ref()?;
        Some(snapshot.pool(&self.routed)?.series(snapshot.metrics()))
    }
}
