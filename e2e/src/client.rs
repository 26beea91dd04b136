//! A small keep-alive HTTP/1.1 client for talking to the proxy under test.

use crate::echo::Echo;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The echo backend's report, if an echo backend answered.
    pub fn echo(&self) -> Option<Echo> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The name of the backend that answered, or `status:NNN` when none did.
    pub fn answered_by(&self) -> String {
        self.echo()
            .map_or_else(|| format!("status:{}", self.status), |e| e.backend)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
    pub target: SocketAddr,
}

impl HttpClient {
    pub fn new(target: SocketAddr) -> Self {
        Self::build(target, None)
    }

    /// Connects from `source` (another loopback address), to be told apart by the proxy.
    pub fn from_source(target: SocketAddr, source: std::net::IpAddr) -> Self {
        Self::build(target, Some(source))
    }

    fn build(target: SocketAddr, source: Option<std::net::IpAddr>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(source);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient { inner, target }
    }

    /// GET `path_and_query` with the given Host header.
    pub async fn get(&self, host: &str, path_and_query: &str) -> anyhow::Result<Reply> {
        self.request("GET", host, path_and_query, &[]).await
    }

    pub async fn request(
        &self,
        method: &str,
        host: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.target, path_and_query));
        if !host.is_empty() {
            req = req.header(http::header::HOST, host);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.inner.request(req)).await??;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// One GET over HTTP/2 with prior knowledge (h2c) on a fresh connection; the host goes
/// into `:authority`, as HTTP/2 clients send it.
pub async fn h2c_get(target: SocketAddr, host: &str, path: &str) -> anyhow::Result<Reply> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{host}{path}"))
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Sends raw HTTP/1.1 bytes and returns the status of the answer.
pub async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    // The proxy may answer (and close) before taking the whole body.
    let _ = tcp.write_all(request).await;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&got);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A `POST /` of `body` with its length declared.
pub fn post(host: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}
