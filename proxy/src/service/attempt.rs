//! Choosing where a request goes and what happens when that fails: the side of a
//! canary, the first endpoint (by affinity cookie or balancer), the `default-backend`
//! when no endpoint is left, and after a failed attempt whether and where to try again
//! (`proxy-next-upstream`).

use super::context::RequestCtx;
use super::respond::Answer;
use super::IngressProxy;
use crate::config::compile::{BackendPool, CompiledSnapshot, Routed, Side};
use crate::routing::request_key::{render, RequestFacts};
use pingora::prelude::*;
use portico_model::RetryPolicy;
use std::time::{Duration, Instant};

/// Why an attempt on an endpoint failed, as `proxy-next-upstream` names the cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Error,
    Timeout,
    /// The endpoint answered with a status `proxy-next-upstream` lists.
    Status(u16),
}

/// How a failed attempt ended, for the backend's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// No connection to the endpoint could be made.
    Connecting,
    /// The endpoint was connected to, and failed while the request was proxied.
    Proxying,
}

impl RequestCtx {
    /// Counts a failed attempt in its backend's metrics: a timeout, a connection that
    /// could not be made, and whether another endpoint is tried.
    pub(super) fn count_failure(&self, failure: Failure, stage: Stage, retried: bool) {
        let Some(series) = self.backend_series() else {
            return;
        };
        match (failure, stage) {
            (Failure::Timeout, _) => series.timeouts.inc(),
            (Failure::Error, Stage::Connecting) => series.connect_errors.inc(),
            _ => {}
        }
        if retried {
            series.retries.inc();
        }
    }

    /// Ends the current attempt, counting a failure against its endpoint's health when
    /// `failed`; returns the endpoint's index.
    pub(super) fn finish_attempt(&mut self, failed: bool) -> Option<usize> {
        let attempt = self.attempt.take()?;
        let index = attempt.index;
        if let Some(pool) = self.pool() {
            pool.balancer.finish(attempt, failed);
        }
        Some(index)
    }

    /// Ends the current attempt as `finish_attempt` does and sets its endpoint aside, so
    /// that a retry picks another.
    pub(super) fn set_attempt_aside(&mut self, failed: bool) {
        if let Some(index) = self.finish_attempt(failed) {
            self.tried.push(index);
        }
    }

    /// Whether a failed attempt (already set aside) may be followed by another.
    pub(super) fn may_retry(&self, failure: Failure) -> bool {
        let Some(pool) = self.pool() else {
            return false;
        };
        let since_first = self.first_attempt.map(|t| t.elapsed());
        retry_allowed(
            &pool.retry,
            failure,
            self.tried.len(),
            pool.balancer.len(),
            since_first,
        )
    }
}

/// Whether an upstream error is the endpoint's fault: it could not be reached, or it
/// did not answer in time. Those count against its health and may be retried.
pub(super) fn endpoint_failure(e: &Error) -> Option<Failure> {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout => Some(Failure::Timeout),
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

/// `proxy-next-upstream`: whether `failure` is one the policy retries, another attempt
/// is left (`tries` counts the first; there are never more attempts than endpoints), and
/// `proxy-next-upstream-timeout` has not run out since the first attempt.
fn retry_allowed(
    policy: &RetryPolicy,
    failure: Failure,
    tried: usize,
    endpoints: usize,
    since_first: Option<Duration>,
) -> bool {
    let wanted = match failure {
        Failure::Error => policy.on_error,
        Failure::Timeout => policy.on_timeout,
        Failure::Status(code) => policy.on_status.contains(&code),
    };
    let attempts_left = (tried as u64) < u64::from(policy.tries).min(endpoints as u64);
    let in_time = policy.timeout_ms == 0
        || since_first.is_some_and(|t| t.as_millis() < u128::from(policy.timeout_ms));
    wanted && attempts_left && in_time
}

/// Whether a request can be sent again without being acted on twice: its method is
/// idempotent and its body (if any) is still held whole for a retry.
pub(super) fn safe_to_repeat(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}

impl IngressProxy {
    /// Whether a request goes to its route's canary. With a sticky canary, a client pinned
    /// to the primary stays there and one pinned to the canary stays there; the canary's
    /// rules decide for everyone else, and for everyone with a legacy canary.
    fn takes_canary(
        &self,
        snapshot: &CompiledSnapshot,
        routed: &Routed,
        req: &RequestHeader,
    ) -> bool {
        let Some(route) = snapshot.matched_route(routed) else {
            return false;
        };
        let Some(canary) = &route.canary else {
            return false;
        };
        if canary.sticky {
            if route.affinity.as_deref().is_some_and(|a| {
                self.sessions
                    .pinned(a, req, route.pool.affinity_parts())
                    .is_some()
            }) {
                return false;
            }
            if canary.affinity.as_ref().is_some_and(|a| {
                self.sessions
                    .pinned(a, req, canary.pool.affinity_parts())
                    .is_some()
            }) {
                return true;
            }
        }
        canary.takes(req)
    }

    /// The first endpoint for a request: by its affinity cookie where the side has
    /// affinity, else by the balancer.
    fn first_endpoint(
        &self,
        snapshot: &CompiledSnapshot,
        pool: &BackendPool,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<usize> {
        match snapshot.affinity(&ctx.routed) {
            None => pool.balancer.pick(&ctx.hash_key, &[]),
            Some(a) => {
                ctx.pin = self.sessions.pinned(a, req, pool.affinity_parts());
                let (index, issue) =
                    self.sessions
                        .choose(a.mode, ctx.pin, &pool.balancer, &ctx.hash_key, &[])?;
                ctx.issue = issue;
                Some(index)
            }
        }
    }

    /// The endpoint for a retry: another one. A client that was given a cookie for the
    /// failed endpoint, or whose route re-pins on failure, is pinned to the new one.
    fn retry_endpoint(
        &self,
        snapshot: &CompiledSnapshot,
        pool: &BackendPool,
        ctx: &mut RequestCtx,
    ) -> Option<usize> {
        match snapshot.affinity(&ctx.routed) {
            None => pool.balancer.pick(&ctx.hash_key, &ctx.tried),
            Some(a) => {
                let (index, _) = self.sessions.choose(
                    a.mode,
                    ctx.pin.or(ctx.issue),
                    &pool.balancer,
                    &ctx.hash_key,
                    &ctx.tried,
                )?;
                if a.change_on_failure || ctx.issue.is_some() {
                    ctx.issue = self
                        .sessions
                        .pin_for(a.mode, &pool.balancer, index)
                        .or(ctx.issue);
                }
                Some(index)
            }
        }
    }

    /// Which side of a canary, and the first endpoint: 404 when nothing routes, 503 when
    /// no endpoint is left.
    pub(super) fn first_attempt(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        snapshot: &CompiledSnapshot,
    ) -> Option<Answer> {
        let req = session.req_header();
        // Gateway API weighted backends: a share by weight; one that points nowhere is
        // answered 500, as the spec asks.
        if let Some(split) = snapshot
            .matched_route(&ctx.routed)
            .and_then(|r| r.split.as_deref())
        {
            let (i, share) = split.pick(fastrand::u64(0..split.total().max(1)));
            if share.unresolved {
                return Some(Answer::page(500));
            }
            ctx.routed.side = Side::Share(i);
        } else if self.takes_canary(snapshot, &ctx.routed, req) {
            ctx.routed.side = Side::Canary;
        }
        let Some(mut pool) = snapshot.pool(&ctx.routed) else {
            return Some(Answer::page(404));
        };
        if let Some(key) = &pool.hash_key {
            let facts = RequestFacts {
                req,
                client: super::peer_ip(session),
                https: ctx.https,
                server_port: super::server_port(session),
            };
            render(key, &facts, &mut ctx.hash_key);
        }
        let mut index = self.first_endpoint(snapshot, pool, req, ctx);
        // `default-backend`: the route's backend has no endpoint to offer.
        if let (None, Some(fallback)) = (
            index,
            snapshot
                .matched_route(&ctx.routed)
                .and_then(|r| r.fallback.as_ref()),
        ) {
            ctx.routed.side = Side::Fallback;
            pool = fallback;
            index = pool.balancer.pick(b"", &[]);
        }
        let Some(index) = index else {
            return Some(Answer::page(503));
        };
        ctx.attempt = Some(pool.balancer.start(index));
        None
    }

    /// The peer of the current attempt, or of a new one after a failure.
    pub(super) fn peer(&self, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        ctx.first_attempt.get_or_insert_with(Instant::now);
        let snapshot = ctx.snapshot.clone();
        let Some((snapshot, pool)) = snapshot
            .as_ref()
            .and_then(|s| Some((s, s.pool(&ctx.routed)?)))
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no backend routed",
            ));
        };
        // A retry: the failed endpoint is in `tried`; pick another.
        let index = match &ctx.attempt {
            Some(a) => a.index,
            None => {
                let index = self.retry_endpoint(snapshot, pool, ctx).ok_or_else(|| {
                    Error::explain(ErrorType::HTTPStatus(503), "no endpoint left")
                })?;
                ctx.attempt = Some(pool.balancer.start(index));
                index
            }
        };
        let addr = pool.balancer.endpoint(index).addr;
        ctx.attempt_started = Some(Instant::now());
        ctx.upstream_addr = Some(addr);
        let mut peer = pool.upstream.peer(addr);
        // `upstream-keepalive-timeout`: idle connections go back to the pool for this long.
        peer.options.idle_timeout = Some(Duration::from_millis(
            snapshot.source.global.upstream_idle_ms,
        ));
        Ok(Box::new(peer))
    }
}

/// No connection could be made: nothing was sent, so any request may go to another
/// endpoint.
pub(super) fn connect_failed(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    let failure = endpoint_failure(&e).unwrap_or(Failure::Error);
    ctx.set_attempt_aside(true);
    let retry = ctx.may_retry(failure);
    ctx.count_failure(failure, Stage::Connecting, retry);
    e.set_retry(retry);
    e
}

/// The attempt failed while proxying. A request that may have been acted on is never
/// sent twice: only one `safe_to_repeat` is retried.
pub(super) fn proxy_failed(
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    safe: bool,
    client_reused: bool,
) -> Box<Error> {
    if ctx.retrying_status {
        // `retry_on_status` already decided, and moved on from that endpoint.
        ctx.retrying_status = false;
        return e;
    }
    let failure = endpoint_failure(&e);
    // A pooled connection the endpoint had already closed says nothing about its
    // health (keep-alive timeouts race with reuse); a fresh connection failing does.
    let stale = client_reused && failure == Some(Failure::Error);
    ctx.set_attempt_aside(failure.is_some() && !stale);
    let retry = failure.is_some_and(|f| safe && ctx.may_retry(f));
    if let Some(f) = failure {
        ctx.count_failure(f, Stage::Proxying, retry);
    }
    match failure {
        Some(_) if retry => e.set_retry(true),
        _ if safe => e.retry.decide_reuse(client_reused),
        _ => e.set_retry(false),
    }
    e
}

/// An upstream answered with a status `proxy-next-upstream` lists: the error that makes
/// Pingora try another endpoint, when the request may be repeated and a try is left.
pub(super) fn retry_on_status(ctx: &mut RequestCtx, status: u16, safe: bool) -> Option<Box<Error>> {
    ctx.set_attempt_aside(true);
    if !(safe && ctx.may_retry(Failure::Status(status))) {
        return None;
    }
    ctx.count_failure(Failure::Status(status), Stage::Proxying, true);
    ctx.retrying_status = true;
    let mut e = Error::explain(
        ErrorType::HTTPStatus(status),
        "upstream status listed in proxy-next-upstream",
    );
    e.set_retry(true);
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        on_error: bool,
        on_timeout: bool,
        on_status: &[u16],
        tries: u32,
        timeout_ms: u64,
    ) -> RetryPolicy {
        RetryPolicy {
            on_error,
            on_timeout,
            on_status: on_status.to_vec(),
            tries,
            timeout_ms,
        }
    }

    /// A name, the policy, the failure, attempts set aside, endpoints, time since the first
    /// attempt, and whether another attempt is expected.
    type RetryCase<'a> = (
        &'a str,
        &'a RetryPolicy,
        Failure,
        usize,
        usize,
        Option<Duration>,
        bool,
    );

    #[test]
    fn retries_follow_proxy_next_upstream() {
        let default = RetryPolicy::default();
        let ms = Duration::from_millis;
        #[rustfmt::skip]
        let cases: &[RetryCase] = &[
            ("an error is retried by default", &default, Failure::Error, 1, 3, Some(ms(1)), true),
            ("a timeout is retried by default", &default, Failure::Timeout, 1, 3, Some(ms(1)), true),
            ("a 502 is not retried by default", &default, Failure::Status(502), 1, 3, Some(ms(1)), false),
            ("a listed status is retried", &policy(false, false, &[502, 503], 3, 0), Failure::Status(503), 1, 3, None, true),
            ("an unlisted status is not", &policy(false, false, &[502], 3, 0), Failure::Status(504), 1, 3, None, false),
            ("errors off", &policy(false, true, &[], 3, 0), Failure::Error, 1, 3, None, false),
            ("timeouts off", &policy(true, false, &[], 3, 0), Failure::Timeout, 1, 3, None, false),
            ("the third try is the last of 3", &default, Failure::Error, 2, 3, None, true),
            ("no fourth try of 3", &default, Failure::Error, 3, 5, None, false),
            ("tries 1 never retries", &policy(true, true, &[], 1, 0), Failure::Error, 1, 3, None, false),
            ("never more attempts than endpoints", &default, Failure::Error, 2, 2, None, false),
            ("a single endpoint is not tried twice", &default, Failure::Error, 1, 1, None, false),
            ("within the timeout", &policy(true, true, &[], 3, 100), Failure::Error, 1, 3, Some(ms(99)), true),
            ("past the timeout", &policy(true, true, &[], 3, 100), Failure::Error, 1, 3, Some(ms(100)), false),
        ];
        for (case, policy, failure, tried, endpoints, since_first, expected) in cases {
            assert_eq!(
                retry_allowed(policy, *failure, *tried, *endpoints, *since_first),
                *expected,
                "{case}"
            );
        }
    }

    #[test]
    fn endpoint_failures_are_told_from_other_errors() {
        assert_eq!(
            endpoint_failure(&Error::new(ErrorType::ConnectTimedout)),
            Some(Failure::Timeout)
        );
        assert_eq!(
            endpoint_failure(&Error::new(ErrorType::ReadTimedout)),
            Some(Failure::Timeout)
        );
        assert_eq!(
            endpoint_failure(&Error::new(ErrorType::ConnectRefused)),
            Some(Failure::Error)
        );
        assert_eq!(
            endpoint_failure(&Error::new_up(ErrorType::InvalidHTTPHeader)),
            Some(Failure::Error)
        );
        assert_eq!(
            endpoint_failure(&Error::new(ErrorType::InvalidHTTPHeader)),
            None
        );
        assert_eq!(
            endpoint_failure(&Error::new(ErrorType::HTTPStatus(413))),
            None
        );
    }
}
