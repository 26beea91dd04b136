//! What the upstream receives: the request's id and trace context (given when the
//! request arrives, so that auth services and error backends see them too), the
//! `X-Forwarded-*` headers, the rewritten path and host, the route's header edits, and
//! what external auth vouched for.

use super::context::RequestCtx;
use super::{
    IngressProxy, TRACEPARENT, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT,
    X_FORWARDED_PROTO, X_REAL_IP, X_REQUEST_ID,
};
use crate::answer::error_pages::tell_what_went_wrong;
use crate::config::compile::Side;
use crate::telemetry::trace_context::{self, TraceContext};
use http::header::{self, HeaderValue};
use pingora::http::PreparedHeaderName;
use pingora::prelude::*;
use portico_model::RouteTracing;
use std::net::IpAddr;

/// How many headers `forward` may add, so that the maps grow once.
const FORWARDING_HEADERS: usize = 5;

impl IngressProxy {
    /// Gives the request its id and, when spans are exported, its place in a trace, in
    /// the context (the `traceparent` is put in the request once routing has said whether
    /// the route is traced: `trace`). `request_ids`: the controller ConfigMap's
    /// `generate-request-id`.
    pub(super) fn identify(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request_ids: bool,
    ) -> Result<()> {
        let req = session.req_header_mut();
        if request_ids && !trace_context::usable_request_id(req.headers.get(X_REQUEST_ID.name())) {
            req.insert_prepared_header(&X_REQUEST_ID, trace_context::new_request_id())?;
        }
        if self.spans.is_some() {
            let incoming = req.headers.get(TRACEPARENT.name());
            ctx.trace = Some(TraceContext::continue_or_start(
                incoming.map(HeaderValue::as_bytes),
                self.trace_sample_ratio,
            ));
        }
        Ok(())
    }

    /// Applies the routed route's tracing policy and gives the request the `traceparent`
    /// of its span, so that auth services, error backends and the upstream continue it.
    /// Without `--otlp-endpoint`, or on a route with `enable-opentelemetry: "false"`, a
    /// client's `traceparent` passes through untouched and none is added, as in
    /// ingress-nginx without OpenTelemetry (issue #25).
    pub(super) fn trace(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: Option<&RouteTracing>,
    ) -> Result<()> {
        let Some(trace) = ctx.trace.as_mut() else {
            return Ok(());
        };
        if let Some(policy) = policy {
            if !policy.enabled {
                ctx.trace = None;
                return Ok(());
            }
            if !policy.trust_incoming && trace.parent_id.is_some() {
                *trace = TraceContext::continue_or_start(None, self.trace_sample_ratio);
            }
        }
        let traceparent = trace.traceparent();
        session
            .req_header_mut()
            .insert_prepared_header(&TRACEPARENT, traceparent)
    }

    /// Turns the request Pingora copied for the upstream into the one Portico sends.
    pub(super) fn forward(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let peer = super::peer_ip(session);
        let trusted = ctx.trusted;
        let peer_value = peer.map_or(HeaderValue::from_static(""), ip_header_value);

        upstream.reserve_headers(FORWARDING_HEADERS)?;
        let forwarded_for = match upstream
            .headers
            .get(X_FORWARDED_FOR.name())
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) if trusted && !prior.is_empty() => {
                HeaderValue::try_from(format!("{prior}, {}", peer_value.to_str().unwrap_or("")))
                    .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?
            }
            _ => peer_value.clone(),
        };
        upstream.insert_prepared_header(&X_FORWARDED_FOR, forwarded_for)?;
        // The address allowlists and rate limits used: behind a trusted proxy, the client it
        // vouches for rather than the proxy.
        let real_ip = if trusted {
            self.client(session).map(ip_header_value)
        } else {
            None
        };
        upstream.insert_prepared_header(&X_REAL_IP, real_ip.unwrap_or(peer_value))?;

        // From a trusted proxy, what it says about the original request stands.
        let keep = |upstream: &RequestHeader, name: &PreparedHeaderName| {
            trusted && upstream.headers.contains_key(name.name())
        };
        if !keep(upstream, &X_FORWARDED_PROTO) {
            upstream.insert_prepared_header(
                &X_FORWARDED_PROTO,
                HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
            )?;
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
                Some(host) if !host.is_empty() => {
                    upstream.insert_prepared_header(&X_FORWARDED_HOST, host)?
                }
                _ => {
                    upstream.remove_header(X_FORWARDED_HOST.name());
                }
            }
        }
        if let Some(path_and_query) = &ctx.upstream_path {
            let mut parts = upstream.uri.clone().into_parts();
            parts.path_and_query = Some(
                path_and_query
                    .parse()
                    .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?,
            );
            upstream.set_uri(
                http::Uri::from_parts(parts)
                    .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?,
            );
        }
        let route = ctx.route();
        if let Some(rw) = route.and_then(|r| r.rewrite.as_deref()) {
            if let Some(host) = &rw.upstream_host {
                upstream.insert_header(header::HOST, host.as_str())?;
            }
            if let Some(prefix) = &rw.forwarded_prefix {
                upstream.insert_header("x-forwarded-prefix", prefix.as_str())?;
            }
        }
        if let Some(edits) = route.and_then(|r| r.headers.as_deref()) {
            edits.request.apply(upstream)?;
        }
        // `default-backend` standing in for a route without endpoints is told so as
        // ingress-nginx tells it: the custom-error headers, with code 503.
        if let (Side::Fallback, Some(origin)) = (
            ctx.routed.side,
            route.and_then(|r| r.fallback_headers.as_deref()),
        ) {
            tell_what_went_wrong(upstream, 503, session.req_header(), origin)?;
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
        if let Some(pool) = ctx.pool() {
            if pool.upstream.http10 {
                upstream.set_version(http::Version::HTTP_10);
            }
            if pool.upstream.close_connections {
                upstream.insert_header(header::CONNECTION, HeaderValue::from_static("close"))?;
            }
        }
        if !keep(upstream, &X_FORWARDED_PORT) {
            let ports = self.public_ports;
            let port = if ctx.tls { ports.https } else { ports.http };
            upstream.insert_prepared_header(&X_FORWARDED_PORT, HeaderValue::from(port))?;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
