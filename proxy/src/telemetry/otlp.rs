//! Export of one span per sampled request to an OTLP/HTTP collector (`--otlp-endpoint`),
//! in OTLP's JSON encoding. Spans are queued without waiting and sent in batches by a
//! thread of their own; a full queue or a failed send drops spans and counts them.

use crate::telemetry::trace_context::{hex, TraceContext};
use prometheus::IntCounter;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const QUEUE_SPANS: usize = 8 * 1024;
const BATCH_SPANS: usize = 512;
const BATCH_WAIT: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// One request as a span.
pub struct Span {
    pub context: TraceContext,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attribute)>,
    /// The answer was a server error (5xx).
    pub error: bool,
}

pub enum Attribute {
    Text(String),
    Int(i64),
}

/// Where spans go: `http://host:port/path` (`/v1/traces` when no path is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    authority: String,
    path: String,
}

impl std::str::FromStr for OtlpEndpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// endpoints are supported"))?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: expected http://host:port[/path]"));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let path = if path.is_empty() || path == "/" {
            "/v1/traces".to_string()
        } else {
            path.to_string()
        };
        Ok(OtlpEndpoint { authority, path })
    }
}

pub struct SpanExporter {
    queue: SyncSender<Span>,
    dropped: IntCounter,
}

impl SpanExporter {
    pub fn start(
        endpoint: OtlpEndpoint,
        exported: IntCounter,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        let (queue, spans) = sync_channel(QUEUE_SPANS);
        let thread_dropped = dropped.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(&endpoint, &spans, &exported, &thread_dropped))?;
        Ok(SpanExporter { queue, dropped })
    }

    pub fn export(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

fn export_loop(
    endpoint: &OtlpEndpoint,
    spans: &Receiver<Span>,
    exported: &IntCounter,
    dropped: &IntCounter,
) {
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    loop {
        match spans.recv() {
            Ok(span) => batch.push(span),
            Err(_) => return,
        }
        let deadline = Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_SPANS {
            match spans.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let body = encode(&batch);
        match post(endpoint, &body) {
            Ok(()) => exported.inc_by(batch.len() as u64),
            Err(why) => {
                tracing::warn!(endpoint = %endpoint.authority, spans = batch.len(), %why, "OTLP export failed; spans dropped");
                dropped.inc_by(batch.len() as u64);
            }
        }
        batch.clear();
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// `ExportTraceServiceRequest` in OTLP's JSON encoding: ids as hex, 64-bit integers as strings.
fn encode(spans: &[Span]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<Value> = s
                .attributes
                .iter()
                .map(|(key, value)| match value {
                    Attribute::Text(t) => json!({"key": key, "value": {"stringValue": t}}),
                    Attribute::Int(i) => json!({"key": key, "value": {"intValue": i.to_string()}}),
                })
                .collect();
            let mut span = json!({
                "traceId": hex(&s.context.trace_id),
                "spanId": hex(&s.context.span_id),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": {"code": if s.error { 2 } else { 0 }},
            });
            if let Some(parent) = s.context.parent_id {
                span["parentSpanId"] = json!(hex(&parent));
            }
            span
        })
        .collect();
    let service = json!({"key": "service.name", "value": {"stringValue": "portico-proxy"}});
    let request = json!({"resourceSpans": [{
        "resource": {"attributes": [service]},
        "scopeSpans": [{"scope": {"name": "portico", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]});
    serde_json::to_vec(&request).unwrap_or_default()
}

/// One POST on a fresh connection; at most one a second, so pooling would buy nothing.
fn post(endpoint: &OtlpEndpoint, body: &[u8]) -> Result<(), String> {
    let addr = endpoint
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving: {e}"))?
        .next()
        .ok_or("resolving: no address")?;
    let mut conn =
        TcpStream::connect_timeout(&addr, SEND_TIMEOUT).map_err(|e| format!("connecting: {e}"))?;
    conn.set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(SEND_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len()
    );
    conn.write_all(head.as_bytes())
        .and_then(|()| conn.write_all(body))
        .map_err(|e| format!("sending: {e}"))?;
    let mut status = [0u8; 12];
    conn.read_exact(&mut status)
        .map_err(|e| format!("reading the answer: {e}"))?;
    match &status[9..10] {
        b"2" => Ok(()),
        _ => Err(format!(
            "collector answered {:?}",
            String::from_utf8_lossy(&status[9..12])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_urls() {
        let e: OtlpEndpoint = "http://127.0.0.1:4318".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:4318", "/v1/traces")
        );
        let e: OtlpEndpoint = "http://collector/otlp/v1/traces".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("collector:80", "/otlp/v1/traces")
        );
        assert!("https://collector:4318"
            .parse::<OtlpEndpoint>()
            .unwrap_err()
            .contains("only http://"));
        assert!("http://".parse::<OtlpEndpoint>().is_err());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let context = TraceContext::continue_or_start(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            0.0,
        );
        let span = Span {
            context,
            name: "GET /api".into(),
            start: UNIX_EPOCH + Duration::from_secs(1),
            end: UNIX_EPOCH + Duration::from_secs(2),
            attributes: vec![
                ("http.response.status_code", Attribute::Int(502)),
                ("http.route", Attribute::Text("/api".into())),
            ],
            error: true,
        };
        let v: Value = serde_json::from_slice(&encode(&[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["startTimeUnixNano"], "1000000000");
        assert_eq!(s["attributes"][0]["value"]["intValue"], "502");
        assert_eq!(s["status"]["code"], 2);
    }
}
