//! An HTTP/1.1 backend that answers every request with JSON describing it: its own
//! name, and the method, path, query, Host and headers it received.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// What an echo backend saw, as it reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Echo {
    pub backend: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub host: String,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body_bytes: usize,
}

/// A running echo backend; stops when dropped.
pub struct EchoServer {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    /// Binds `addr` (port 0 picks one) and serves until dropped.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, name.to_string(), requests.clone()));
        Ok(EchoServer { name: name.to_string(), addr, requests, task })
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn serve(listener: TcpListener, name: String, requests: Arc<AtomicU64>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let name = name.clone();
        let requests = requests.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                let requests = requests.clone();
                async move {
                    requests.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(answer(&name, req).await)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(name: &str, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers.entry(k.as_str().to_string()).and_modify(|e| *e = format!("{e}, {v}")).or_insert(v);
    }
    let echo_base = Echo {
        backend: name.to_string(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        host: headers.get("host").cloned().unwrap_or_default(),
        headers,
        body_bytes: 0,
    };
    let body_bytes = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let echo = Echo { body_bytes, ..echo_base };
    let body = serde_json::to_vec(&echo).expect("serialisable");
    Response::builder()
        .header("content-type", "application/json")
        .header("x-echo-backend", name)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
