//! A backend that answers every request with JSON describing it: its own name, and the
//! protocol version, method, path, query, Host and headers it received. It speaks
//! HTTP/1.1 and HTTP/2 with prior knowledge, or both over TLS (ALPN).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use openssl::ssl::{Ssl, SslAcceptor};
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
    /// `HTTP/1.1` or `HTTP/2.0`.
    #[serde(default)]
    pub version: String,
    /// Whether the request reached the backend over TLS.
    #[serde(default)]
    pub tls: bool,
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
        Self::start_inner(name, addr, None).await
    }

    /// Serves over TLS with `acceptor`'s certificate (ALPN `h2`, `http/1.1`).
    pub async fn start_tls(name: &str, addr: SocketAddr, acceptor: SslAcceptor) -> std::io::Result<EchoServer> {
        Self::start_inner(name, addr, Some(Arc::new(acceptor))).await
    }

    async fn start_inner(name: &str, addr: SocketAddr, tls: Option<Arc<SslAcceptor>>) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, name.to_string(), requests.clone(), tls));
        Ok(EchoServer { name: name.to_string(), addr, requests, task })
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn serve(listener: TcpListener, name: String, requests: Arc<AtomicU64>, tls: Option<Arc<SslAcceptor>>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let name = name.clone();
        let requests = requests.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let over_tls = tls.is_some();
            let service = service_fn(move |req| {
                let name = name.clone();
                let requests = requests.clone();
                async move {
                    requests.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(answer(&name, over_tls, req).await)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    let Ok(ssl) = Ssl::new(acceptor.context()) else { return };
                    let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, stream) else { return };
                    if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                        return;
                    }
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn answer(name: &str, tls: bool, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
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
        host: headers.get("host").cloned().or_else(|| req.uri().authority().map(|a| a.to_string())).unwrap_or_default(),
        headers,
        body_bytes: 0,
        version: format!("{:?}", req.version()),
        tls,
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

/// Starts one echo backend per service name on 127.0.0.1 and returns the Service and
/// EndpointSlice documents that route to them.
pub async fn backends(names: &[&str]) -> (Vec<EchoServer>, Vec<serde_json::Value>) {
    let mut servers = Vec::new();
    let mut docs = Vec::new();
    for name in names {
        let server = EchoServer::start(name, "127.0.0.1:0".parse().expect("address")).await.expect("echo backend");
        docs.extend(crate::manifests::service_with_endpoints(name, &[server.addr]));
        servers.push(server);
    }
    (servers, docs)
}
