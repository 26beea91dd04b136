//! The report phase: what a finished request leaves behind besides its metrics, an
//! access log line and a span, when those are on.

use super::context::RequestCtx;
use super::{IngressProxy, X_REQUEST_ID};
use crate::routing::request_key::{render, request_host, RequestFacts};
use crate::telemetry::access_log;
use crate::telemetry::metrics::RouteLabels;
use crate::telemetry::otlp::{Attribute, Span};
use http::header;
use pingora::prelude::*;

impl IngressProxy {
    /// Writes the request's access log line (unless its route turned the log off) and
    /// exports its span, when those are on.
    pub(super) fn report(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        status: u16,
        labels: &RouteLabels,
        logged: bool,
    ) {
        let Some((started, started_at)) = ctx.started else {
            return;
        };
        // A trace context exists only when spans are exported (`identify`).
        let sampled = ctx.trace.filter(|t| t.sampled);
        let access_log = self.access_log.as_ref().filter(|_| logged);
        if access_log.is_none() && sampled.is_none() {
            return;
        }
        let req = session.req_header();
        let header = |name: header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let protocol = match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        };
        let elapsed = started.elapsed();
        let client = self.client(session);
        let request_id = req
            .headers
            .get(X_REQUEST_ID.name())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(log) = access_log {
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
                duration: elapsed,
                upstream_addr: ctx.upstream_addr,
                upstream_duration: ctx.upstream_elapsed,
                namespace: labels.namespace(),
                ingress: labels.ingress(),
                service: labels.service(),
                request_id,
                trace_id: &trace_id,
                user_agent: header(header::USER_AGENT),
                referer: header(header::REFERER),
                tls_version: session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .map_or("", |d| &d.version),
            });
        }
        if let (Some(exporter), Some(context)) = (&self.spans, sampled) {
            let route = labels.path();
            let mut attributes = vec![
                (
                    "http.request.method",
                    Attribute::Text(req.method.to_string()),
                ),
                ("url.path", Attribute::Text(req.uri.path().to_string())),
                (
                    "server.address",
                    Attribute::Text(request_host(req).to_string()),
                ),
                (
                    "network.protocol.version",
                    Attribute::Text(protocol.trim_start_matches("HTTP/").to_string()),
                ),
                (
                    "http.response.status_code",
                    Attribute::Int(i64::from(status)),
                ),
            ];
            if let Some(client) = client {
                attributes.push(("client.address", Attribute::Text(client.to_string())));
            }
            if !route.is_empty() {
                attributes.push(("http.route", Attribute::Text(route.to_string())));
                attributes.push((
                    "portico.ingress",
                    Attribute::Text(format!("{}/{}", labels.namespace(), labels.ingress())),
                ));
            }
            if !labels.service().is_empty() {
                attributes.push((
                    "portico.service",
                    Attribute::Text(labels.service().to_string()),
                ));
            }
            if let Some(addr) = ctx.upstream_addr {
                attributes.push((
                    "portico.upstream.address",
                    Attribute::Text(addr.to_string()),
                ));
            }
            if !request_id.is_empty() {
                attributes.push((
                    "portico.request_id",
                    Attribute::Text(request_id.to_string()),
                ));
            }
            let operation_name = ctx
                .snapshot
                .as_ref()
                .and_then(|s| s.matched_route(&ctx.routed))
                .and_then(|r| r.tracing.as_ref()?.operation_name.as_ref());
            let name = match operation_name {
                Some(template) => {
                    let facts = RequestFacts {
                        req,
                        client,
                        https: ctx.https,
                        server_port: super::server_port(session),
                    };
                    let mut out = Vec::new();
                    render(template, &facts, &mut out);
                    String::from_utf8_lossy(&out).into_owned()
                }
                None if route.is_empty() => req.method.to_string(),
                None => format!("{} {route}", req.method),
            };
            exporter.export(Span {
                context,
                name,
                start: started_at,
                end: started_at + elapsed,
                attributes,
                error: status >= 500,
            });
        }
    }
}
