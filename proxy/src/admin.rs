//! The admin listener: liveness, readiness, the applied snapshot, and metrics.

use crate::store::SnapshotStore;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    pub store: Arc<SnapshotStore>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::SERVER, crate::pages::SERVER)
        .body(body)
        .expect("valid response")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        const TEXT: &str = "text/plain; charset=utf-8";
        const JSON: &str = "application/json";
        match session.req_header().uri.path() {
            "/healthz" => reply(StatusCode::OK, TEXT, b"ok\n".to_vec()),
            "/readyz" => match self.store.load() {
                Some(s) => reply(StatusCode::OK, TEXT, format!("ready: snapshot {}\n", s.version()).into_bytes()),
                None => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, b"no snapshot applied yet\n".to_vec()),
            },
            "/config" => match self.store.load() {
                Some(s) => reply(StatusCode::OK, JSON, s.source.redacted().to_json_pretty().into_bytes()),
                None => reply(StatusCode::SERVICE_UNAVAILABLE, JSON, br#"{"error":"no snapshot applied yet"}"#.to_vec()),
            },
            "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", self.store.metrics().render()),
            _ => reply(StatusCode::NOT_FOUND, TEXT, b"not found: try /healthz, /readyz, /config or /metrics\n".to_vec()),
        }
    }
}
