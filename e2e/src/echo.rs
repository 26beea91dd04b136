//! A backend that answers every request with JSON describing it: its own name, and the
//! protocol version, method, path, query, Host and headers it received. It speaks
//! HTTP/1.1 and HTTP/2 with prior knowledge, or both over TLS (ALPN).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use openssl::ssl::SslAcceptor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Milliseconds every answer waits before it is sent (0: none), to play a slow endpoint.
    pub delay_ms: Arc<AtomicU64>,
    /// What `GET /healthz` answers: 200 while true, 503 while false. Other paths are
    /// served either way, as by an application whose health check is failing.
    pub healthy: Arc<AtomicBool>,
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
    pub async fn start_tls(
        name: &str,
        addr: SocketAddr,
        acceptor: SslAcceptor,
    ) -> std::io::Result<EchoServer> {
        Self::start_inner(name, addr, Some(Arc::new(acceptor))).await
    }

    async fn start_inner(
        name: &str,
        addr: SocketAddr,
        tls: Option<Arc<SslAcceptor>>,
    ) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let knobs = Knobs {
            requests: requests.clone(),
            delay_ms: delay_ms.clone(),
            healthy: healthy.clone(),
        };
        let task = tokio::spawn(serve(listener, name.to_string(), knobs, tls));
        Ok(EchoServer {
            name: name.to_string(),
            addr,
            requests,
            delay_ms,
            healthy,
            task,
        })
    }

    /// Makes `GET /healthz` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Makes every later answer wait `delay` first.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

/// What a test can observe and turn on a running echo backend.
#[derive(Clone)]
struct Knobs {
    requests: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
}

async fn serve(listener: TcpListener, name: String, knobs: Knobs, tls: Option<Arc<SslAcceptor>>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        let knobs = knobs.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let over_tls = tls.is_some();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let name = name.clone();
                let delay = knobs.delay_ms.load(Ordering::Relaxed);
                let health_check = req.uri().path() == "/healthz";
                if !health_check {
                    knobs.requests.fetch_add(1, Ordering::Relaxed);
                }
                let healthy = knobs.healthy.load(Ordering::Relaxed);
                async move {
                    if health_check {
                        let status = if healthy { 200 } else { 503 };
                        let response = Response::builder()
                            .status(status)
                            .body(EchoBody::Left(Full::default()))
                            .expect("valid response");
                        return Ok::<_, std::convert::Infallible>(response);
                    }
                    Ok::<_, std::convert::Infallible>(answer(&name, over_tls, delay, req).await)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let Some(stream) = crate::tls::accept(&acceptor, stream).await else {
                        return;
                    };
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// A body of `len` zero bytes, produced 64 KiB at a time and never held whole: for
/// large uploads and downloads that must stream.
pub struct Zeros {
    left: usize,
}

impl Zeros {
    pub fn new(len: usize) -> Self {
        Zeros { left: len }
    }
}

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        static CHUNK: [u8; 65536] = [0; 65536];
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len());
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &CHUNK[..n],
        )))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left as u64)
    }
}

type EchoBody = http_body_util::Either<Full<Bytes>, Zeros>;

/// Answers a WebSocket upgrade and echoes each text message back as `<name>: <message>`.
fn websocket(name: &str, mut req: Request<hyper::body::Incoming>) -> Response<EchoBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return Response::builder()
            .status(400)
            .body(EchoBody::Left(Full::default()))
            .expect("valid response");
    };
    let name = name.to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(&mut req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(text) => Message::text(format!("{name}: {text}")),
                Message::Close(_) => return,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", key)
        .body(EchoBody::Left(Full::default()))
        .expect("valid response")
}

/// The `download=N` query parameter: answer with N bytes instead of the report.
fn download_size(query: Option<&str>) -> Option<usize> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("download="))
        .and_then(|n| n.parse().ok())
}

/// The `sleep_ms=N` query parameter: wait N ms before answering.
fn sleep_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .and_then(|n| n.parse().ok())
}

async fn answer(
    name: &str,
    tls: bool,
    delay_ms: u64,
    req: Request<hyper::body::Incoming>,
) -> Response<EchoBody> {
    let delay = delay_ms.max(sleep_ms(req.uri().query()).unwrap_or(0));
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return websocket(name, req);
    }
    if let Some(len) = download_size(req.uri().query()) {
        return Response::builder()
            .header("content-length", len)
            .header("x-echo-backend", name)
            .body(EchoBody::Right(Zeros::new(len)))
            .expect("valid response");
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| *e = format!("{e}, {v}"))
            .or_insert(v);
    }
    let echo_base = Echo {
        backend: name.to_string(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        host: headers
            .get("host")
            .cloned()
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default(),
        headers,
        body_bytes: 0,
        version: format!("{:?}", req.version()),
        tls,
    };
    // Counted as it arrives, so that a large upload is never held in memory.
    let mut body = req.into_body();
    let mut body_bytes = 0;
    while let Some(Ok(frame)) = body.frame().await {
        body_bytes += frame.data_ref().map_or(0, |d| d.len());
    }
    let echo = Echo {
        body_bytes,
        ..echo_base
    };
    let body = serde_json::to_vec(&echo).expect("serialisable");
    let mut response = Response::builder()
        .header("content-type", "application/json")
        .header("x-echo-backend", name);
    // `status=N` answers with that status; each `header=name:value` adds a response header.
    let params = echo.query.split('&').filter_map(|kv| kv.split_once('='));
    for (key, value) in params {
        let value = percent_decode(value);
        match key {
            "status" => response = response.status(value.parse::<u16>().unwrap_or(200)),
            "header" => {
                if let Some((n, v)) = value.split_once(':') {
                    response = response.header(n.trim(), v.trim());
                }
            }
            _ => {}
        }
    }
    response
        .body(EchoBody::Left(Full::new(Bytes::from(body))))
        .unwrap_or_else(|_| {
            Response::builder()
                .status(500)
                .body(EchoBody::Left(Full::default()))
                .expect("valid response")
        })
}

/// `%XX` escapes decoded (enough for test parameters).
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts one echo backend per name on 127.0.0.1.
pub async fn echo_servers(names: &[&str]) -> Vec<EchoServer> {
    let mut servers = Vec::new();
    for name in names {
        servers.push(
            EchoServer::start(name, "127.0.0.1:0".parse().expect("address"))
                .await
                .expect("echo backend"),
        );
    }
    servers
}

/// Starts one echo backend per service name on 127.0.0.1 and returns the Service and
/// EndpointSlice documents that route to them.
pub async fn backends(names: &[&str]) -> (Vec<EchoServer>, Vec<serde_json::Value>) {
    let servers = echo_servers(names).await;
    let docs = servers
        .iter()
        .flat_map(|s| crate::manifests::service_with_endpoints(&s.name, &[s.addr]))
        .collect();
    (servers, docs)
}
