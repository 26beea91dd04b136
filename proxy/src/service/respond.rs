//! The answer phase: what Portico says itself (refusals, redirects, preflights, the
//! errors of a failed attempt), what it does with an upstream's answer (retry on a listed
//! status, `custom-http-errors`), and [`IngressProxy::decorate`], the one place every
//! answer passes before it is written, whoever made it.

use super::attempt::{self, safe_to_repeat};
use super::context::RequestCtx;
use super::{IngressProxy, X_REQUEST_ID};
use crate::answer::error_pages;
use crate::answer::pages::{self, error_page, redirect, SERVER};
use crate::answer::rewrites::rewrite_answer;
use crate::policy::header_edits::strip_hop_by_hop;
use crate::routing::request_key::request_host;
use crate::telemetry::trace_context;
use http::header::{self, HeaderValue};
use pingora::prelude::*;
use pingora::protocols::http::date::get_cached_date;

/// An answer Portico gives itself instead of forwarding the request.
pub(super) enum Answer {
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
    pub(super) fn page(status: u16) -> Self {
        Answer::Page {
            status,
            headers: Vec::new(),
            close: false,
        }
    }

    /// A page after which the connection is closed, for a request whose end cannot be
    /// trusted.
    pub(super) fn closing(status: u16) -> Self {
        Answer::Page {
            status,
            headers: Vec::new(),
            close: true,
        }
    }
}

/// Who made an answer, for the few headers only some answers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    /// The upstream (or the error backend in its place): it may get an affinity cookie.
    Upstream,
    /// Portico itself.
    Portico,
    /// Portico, answering a CORS preflight: it gets the preflight's `Access-Control-*`.
    Preflight,
}

impl IngressProxy {
    /// What every answer gets, Portico's own and the upstream's alike: the `Server`
    /// policy, `Date`, the request's `X-Request-ID`, HSTS over HTTPS, CORS for an allowed
    /// origin, the auth service's cookies, an affinity cookie, and last the route's own
    /// response header edits.
    pub(super) fn decorate(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        answer: &mut ResponseHeader,
        made: Made,
    ) -> Result<()> {
        // `X-Request-ID`, and the `Connection` and `Date` Pingora writes.
        answer.reserve_headers(3)?;
        // `allow-backend-server-header`: an upstream's own `Server` stays.
        let upstreams_server = made == Made::Upstream
            && answer.headers.contains_key(header::SERVER)
            && ctx
                .snapshot
                .as_ref()
                .is_some_and(|s| s.source.global.backend_server_header);
        if !upstreams_server || self.hide_server_header {
            apply_server_policy(answer, self.hide_server_header)?;
        }
        if !answer.headers.contains_key(header::DATE) {
            answer.insert_header(header::DATE, get_cached_date())?;
        }
        echo_request_id(req, answer)?;
        if ctx.https {
            if let Some(hsts) = ctx.snapshot.as_ref().and_then(|s| s.hsts()) {
                answer.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
            }
        }
        let route = ctx.route();
        if let (Some(origin), Some(cors)) =
            (&ctx.cors_origin, route.and_then(|r| r.cors.as_deref()))
        {
            cors.apply(answer, req, origin, made == Made::Preflight);
        }
        let success = answer.status.is_success() || answer.status.is_redirection();
        if ctx.auth_cookies_always || success {
            for cookie in &ctx.auth_cookies {
                answer.append_header(header::SET_COOKIE, cookie.clone())?;
            }
        }
        if let (Made::Upstream, Some(pin), Some(snapshot)) = (made, ctx.issue, &ctx.snapshot) {
            let side = snapshot
                .affinity(&ctx.routed)
                .zip(snapshot.pool(&ctx.routed));
            let user_agent = req
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok());
            if let Some(cookie) = side.and_then(|(a, pool)| {
                self.sessions
                    .set_cookie(a, pin, (ctx.https, user_agent), pool.affinity_parts())
            }) {
                answer.append_header(header::SET_COOKIE, cookie)?;
            }
        }
        if let (Made::Upstream, Some(rw)) = (made, route.and_then(|r| r.rewrite.as_deref())) {
            rewrite_answer(rw, answer)?;
        }
        if let Some(edits) = route.and_then(|r| r.headers.as_deref()) {
            edits.response.apply(answer)?;
        }
        Ok(())
    }

    /// Writes Portico's own answer.
    pub(super) async fn send(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: Answer,
    ) -> Result<()> {
        let (mut header, body, made) = match answer {
            Answer::Page {
                status,
                headers,
                close,
            } => {
                if close {
                    session.set_keepalive(None);
                }
                let (mut header, body) = error_page(status);
                for (name, value) in headers {
                    header.append_header(name, value)?;
                }
                (header, Some(body), Made::Portico)
            }
            Answer::Redirect { status, location } => {
                (redirect(status, location), None, Made::Portico)
            }
            Answer::Preflight => (pages::preflight(), None, Made::Preflight),
        };
        self.decorate(session.req_header(), ctx, &mut header, made)?;
        let end = body.is_none();
        session.write_response_header(Box::new(header), end).await?;
        match body {
            Some(body) => session.write_response_body(Some(body), true).await,
            None => Ok(()),
        }
    }

    /// An upstream's response header arrived: time it, and either let it on, try another
    /// endpoint for a status `proxy-next-upstream` lists, or replace it with the error
    /// backend's page.
    pub(super) async fn upstream_answered(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        strip_hop_by_hop(response);
        let status = response.status.as_u16();
        if let Some(elapsed) = ctx.attempt_started.map(|t| t.elapsed()) {
            ctx.upstream_elapsed = Some(elapsed);
            if let Some(series) = ctx.backend_series() {
                series.upstream_duration.observe(elapsed.as_secs_f64());
            }
        }
        if ctx
            .pool()
            .is_some_and(|p| p.retry.on_status.contains(&status))
        {
            if let Some(retry) = attempt::retry_on_status(ctx, status, safe_to_repeat(session)) {
                return Err(retry);
            }
        }
        self.replace_error_page(session, status, ctx).await
    }

    /// `custom-http-errors`: sends the error backend's page for a listed upstream status,
    /// then ends proxying with an error so that the upstream's own answer is dropped.
    /// Without a listed status or a page, the upstream's answer goes on.
    async fn replace_error_page(
        &self,
        session: &mut Session,
        status: u16,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(pages) = ctx
            .route()
            .and_then(|r| r.error_pages.as_deref())
            .filter(|p| p.statuses.contains(&status))
        else {
            return Ok(());
        };
        let req = session.req_header();
        let Some((mut header, body)) =
            error_pages::fetch(&self.auth_connector, pages, status, req, request_host(req)).await
        else {
            return Ok(());
        };
        self.decorate(req, ctx, &mut header, Made::Upstream)?;
        session.set_keepalive(None);
        ctx.error_page_sent = true;
        let head = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(header), head)
            .await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "answered by the error backend",
        ))
    }

    /// Proxying failed: answers with the status the error stands for (0: the client is
    /// gone, nothing to write), and returns that status.
    pub(super) async fn answer_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &RequestCtx,
    ) -> u16 {
        let code = failure_status(e);
        if code > 0 {
            let (mut header, body) = error_page(code);
            if let Err(err) = self.decorate(session.req_header(), ctx, &mut header, Made::Portico) {
                tracing::debug!(error = %err, "could not decorate error response");
            }
            if let Err(err) = session.write_error_response(header, body).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        code
    }
}

/// The answer to a request whose header Pingora could not read (400, or 431 for more
/// fields than its parser holds), before any route or context exists: Pingora's own
/// refusal, with the `Server` policy of every other answer.
pub(super) fn unreadable_request(status: u16, hide_server_header: bool) -> ResponseHeader {
    let mut answer = pingora::protocols::http::ServerSession::generate_error(status);
    // Replacing a field of a built header cannot fail.
    let _ = apply_server_policy(&mut answer, hide_server_header);
    answer
}

/// `Server: portico`, or no `Server` at all with `--hide-server-header`.
fn apply_server_policy(answer: &mut ResponseHeader, hide_server_header: bool) -> Result<()> {
    if hide_server_header {
        answer.remove_header(&header::SERVER);
    } else {
        answer.insert_header(header::SERVER, HeaderValue::from_static(SERVER))?;
    }
    Ok(())
}

/// The status a client is answered with when proxying fails with `e`: the status it
/// names, 504 for an upstream that did not answer in time, 502 for any other upstream
/// failure, 400 for a client that sent something unusable, 0 for a client that is gone.
fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
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
    }
}

/// Gives `answer` the request's `X-Request-ID`. The client may have chosen it, so it is
/// marked here as unique to the request (see `trace_context::unique_per_request`).
fn echo_request_id(req: &RequestHeader, answer: &mut ResponseHeader) -> Result<()> {
    if let Some(id) = req.headers.get(X_REQUEST_ID.name()) {
        answer
            .insert_prepared_header(&X_REQUEST_ID, trace_context::unique_per_request(id.clone()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_answered_with_the_status_they_stand_for() {
        #[rustfmt::skip]
        let cases: &[(&str, Box<Error>, u16)] = &[
            ("a named status", Error::new(ErrorType::HTTPStatus(413)), 413),
            ("an upstream read timeout", Error::new_up(ErrorType::ReadTimedout), 504),
            ("an upstream connect timeout", Error::new_up(ErrorType::ConnectTimedout), 504),
            ("a refused connection", Error::new_up(ErrorType::ConnectRefused), 502),
            ("an upstream's bad header", Error::new_up(ErrorType::InvalidHTTPHeader), 502),
            ("a client's bad header", Error::new_down(ErrorType::InvalidHTTPHeader), 400),
            ("a client that went away", Error::new_down(ErrorType::ConnectionClosed), 0),
            ("a client read error", Error::new_down(ErrorType::ReadError), 0),
            ("a client read timeout", Error::new_down(ErrorType::ReadTimedout), 400),
            ("Portico's own failure", Error::new_in(ErrorType::InternalError), 500),
        ];
        for (case, e, expected) in cases {
            assert_eq!(failure_status(e), *expected, "{case}");
        }
    }
}
