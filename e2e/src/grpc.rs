//! A gRPC echo backend and client on tonic, without generated code: messages are raw
//! bytes (a tiny codec), so no protobuf compiler is needed, while the framing, headers,
//! trailers and deadlines on the wire are tonic's own.
//!
//! `/portico.test.Echo/Unary` answers `backend=<name> tls=<bool> timeout=<grpc-timeout> msg=<request>`;
//! a request `fail` answers NOT_FOUND with an `x-detail` trailer, and `sleep:<ms>` waits
//! before answering, for deadlines. `/portico.test.Echo/Count` streams `0`..`n-1`.

use crate::tls::ClientOptions;
use bytes::{Buf, BufMut, Bytes};
use openssl::ssl::SslAcceptor;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

pub const UNARY: &str = "/portico.test.Echo/Unary";
pub const COUNT: &str = "/portico.test.Echo/Count";

/// Messages as they are: bytes in, bytes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A plain or TLS connection, for either end.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for MaybeTls {
    type ConnectInfo = bool;
    fn connect_info(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

/// The echo service, as tonic's generated code would write it.
#[derive(Clone)]
pub struct EchoService {
    name: Arc<str>,
    tls: bool,
}

impl NamedService for EchoService {
    const NAME: &'static str = "portico.test.Echo";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Unary(EchoService);

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let timeout = request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            let message = String::from_utf8_lossy(request.get_ref()).into_owned();
            if message == "fail" {
                let mut status = Status::new(Code::NotFound, "no such thing");
                status
                    .metadata_mut()
                    .insert("x-detail", "trailer intact".parse().expect("ascii"));
                return Err(status);
            }
            if let Some(ms) = message.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut response = Response::new(Bytes::from(format!(
                "backend={} tls={} timeout={timeout} msg={message}",
                svc.name, svc.tls
            )));
            response.metadata_mut().insert(
                "x-backend",
                svc.name.parse().map_err(|_| Status::internal("name"))?,
            );
            Ok(response)
        })
    }
}

struct Count;

impl tonic::server::ServerStreamingService<Bytes> for Count {
    type Response = Bytes;
    type ResponseStream = tokio_stream::Iter<std::vec::IntoIter<Result<Bytes, Status>>>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let n: usize = String::from_utf8_lossy(request.get_ref())
            .parse()
            .unwrap_or(0);
        let items: Vec<Result<Bytes, Status>> =
            (0..n).map(|i| Ok(Bytes::from(i.to_string()))).collect();
        Box::pin(async move { Ok(Response::new(tokio_stream::iter(items))) })
    }
}

impl<B> Service<http::Request<B>> for EchoService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        match req.uri().path() {
            UNARY => Box::pin(async move {
                Ok(tonic::server::Grpc::new(RawCodec)
                    .unary(Unary(svc), req)
                    .await)
            }),
            COUNT => Box::pin(async move {
                Ok(tonic::server::Grpc::new(RawCodec)
                    .server_streaming(Count, req)
                    .await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A running gRPC echo backend; stops when dropped.
pub struct GrpcServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcServer {
    /// Serves h2c, or h2 over TLS with `tls`'s certificate.
    pub async fn start(
        name: &str,
        addr: SocketAddr,
        tls: Option<SslAcceptor>,
    ) -> io::Result<GrpcServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let service = EchoService {
            name: name.into(),
            tls: tls.is_some(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<MaybeTls>>(16);
        let tls = tls.map(Arc::new);
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let conn = match tls {
                        None => MaybeTls::Plain(tcp),
                        Some(acceptor) => match crate::tls::accept(&acceptor, tcp).await {
                            Some(stream) => MaybeTls::Tls(Box::new(stream)),
                            None => return,
                        },
                    };
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        });
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(service, incoming)
                .await;
            acceptor.abort();
        });
        Ok(GrpcServer { addr, task })
    }
}

/// Connects every channel to one address (the proxy), whatever the URI's authority says,
/// so that the authority can name the virtual host.
#[derive(Clone)]
struct FixedConnector {
    target: SocketAddr,
    tls_sni: Option<String>,
}

impl Service<http::Uri> for FixedConnector {
    type Response = hyper_util::rt::TokioIo<MaybeTls>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let conn = match this.tls_sni {
                None => MaybeTls::Plain(TcpStream::connect(this.target).await?),
                Some(sni) => {
                    let opts = ClientOptions {
                        sni: Some(&sni),
                        alpn: &["h2"],
                        ..ClientOptions::default()
                    };
                    let (stream, handshake) = crate::tls::connect(this.target, opts).await?;
                    if handshake.alpn.as_deref() != Some("h2") {
                        return Err("the server did not select h2".into());
                    }
                    MaybeTls::Tls(Box::new(stream))
                }
            };
            Ok(hyper_util::rt::TokioIo::new(conn))
        })
    }
}

/// A gRPC client that reaches virtual host `host` through `target`, over h2c or TLS.
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl GrpcClient {
    pub async fn connect(target: SocketAddr, host: &str, tls: bool) -> anyhow::Result<GrpcClient> {
        let scheme = if tls { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{host}"))?;
        let connector = FixedConnector {
            target,
            tls_sni: tls.then(|| host.to_string()),
        };
        let channel = endpoint.connect_with_connector(connector).await?;
        Ok(GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn unary(
        &mut self,
        message: &str,
        deadline: Option<Duration>,
    ) -> Result<Response<Bytes>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut request = Request::new(Bytes::from(message.to_string()));
        if let Some(d) = deadline {
            request.set_timeout(d);
        }
        self.grpc
            .unary(
                request,
                http::uri::PathAndQuery::from_static(UNARY),
                RawCodec,
            )
            .await
    }

    /// The streamed messages, in order.
    pub async fn count(&mut self, n: usize) -> Result<Vec<String>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = Request::new(Bytes::from(n.to_string()));
        let mut stream = self
            .grpc
            .server_streaming(
                request,
                http::uri::PathAndQuery::from_static(COUNT),
                RawCodec,
            )
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.message().await? {
            out.push(String::from_utf8_lossy(&m).into_owned());
        }
        Ok(out)
    }
}
