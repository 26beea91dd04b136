//! A small OTLP/HTTP trace receiver: takes `POST /v1/traces` in OTLP's JSON encoding,
//! decodes each request, and keeps the spans it held, for tests to look at.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let wanted = req.method() == hyper::Method::POST
                                && req.uri().path() == "/v1/traces";
                            let json = req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = match serde_json::from_slice::<Value>(&body) {
                                Ok(request) if wanted && json => {
                                    kept.lock().expect("spans").extend(spans_of(&request));
                                    200
                                }
                                _ => 400,
                            };
                            let answer = Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(OtlpReceiver { addr, spans, task })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().expect("spans").clone()
    }
}

/// The spans of an `ExportTraceServiceRequest`, each with its resource's `service.name`
/// copied in as `service`.
fn spans_of(request: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .map(|a| a["value"]["stringValue"].clone())
            .unwrap_or(Value::Null);
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let mut span = span.clone();
                span["service"] = service.clone();
                out.push(span);
            }
        }
    }
    out
}

/// The value of a span's attribute, as text (`intValue`s are strings in OTLP JSON).
pub fn attribute(span: &Value, key: &str) -> Option<String> {
    let a = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let v = &a["value"];
    v["stringValue"]
        .as_str()
        .or(v["intValue"].as_str())
        .map(str::to_string)
}
