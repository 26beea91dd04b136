//! What the HTTPS listener does with a connection before its TLS handshake: read the
//! PROXY header (`--proxy-protocol`), then, with `--enable-ssl-passthrough`, read the
//! ClientHello without consuming it and relay the connection untouched to the backend of
//! an `ssl-passthrough` host its SNI names. Every other connection goes on to Portico's own
//! TLS termination. The relay runs on a task of its own, so it outlives Pingora's bound
//! on a handshake (vendor/pingora-core/PORTICO.md, change 6).

use crate::config::store::SnapshotStore;
use crate::listener::client_hello::{server_name, Hello};
use crate::listener::proxy_protocol::ProxyProtocol;
use crate::stream::connect::connect;
use crate::stream::relay::{relay, RelayLimits};
use crate::stream::{SessionPeers, SessionRecord, StreamContext};
use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// How long a passed-through connection may carry nothing either way, as a TCP service's
/// default `proxy-stream-timeout`.
const PASSTHROUGH_IDLE: Duration = Duration::from_secs(600);

pub struct PreTls {
    pub proxy_protocol: Option<Arc<ProxyProtocol>>,
    pub passthrough: Option<Passthrough>,
}

/// `--enable-ssl-passthrough`.
pub struct Passthrough {
    pub store: Arc<SnapshotStore>,
    /// How long a client has to send its whole ClientHello.
    pub hello_timeout: Duration,
    /// The HTTPS listener's port, for metrics and logs.
    pub port: u16,
    pub context: Arc<StreamContext>,
}

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        match &self.proxy_protocol {
            Some(p) => p.process(stream).await,
            None => Ok(()),
        }
    }

    async fn claim(&self, stream: L4Stream) -> Option<L4Stream> {
        match &self.passthrough {
            Some(p) => p.claim(stream).await,
            None => Some(stream),
        }
    }
}

impl Passthrough {
    async fn claim(&self, mut stream: L4Stream) -> Option<L4Stream> {
        if !self.store.load().is_some_and(|s| s.has_passthrough()) {
            return Some(stream);
        }
        let deadline = Instant::now() + self.hello_timeout;
        let mut read = Vec::with_capacity(2048);
        let mut chunk = [0u8; 4096];
        let sni = loop {
            match server_name(&read) {
                Hello::NeedMore => {}
                Hello::NotTls => {
                    stream.rewind(&read);
                    return Some(stream);
                }
                Hello::Parsed(sni) => break sni,
            }
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => read.extend_from_slice(&chunk[..n]),
                // Gone, or never finished its hello: nothing to hand to TLS either.
                _ => return None,
            }
        };
        // Either way the handshake, here or at the backend, starts from the first byte.
        stream.rewind(&read);
        let Some(sni) = sni else {
            return Some(stream);
        };
        let snapshot = self.store.load()?;
        let Some((host, pool)) = snapshot.passthrough_for_sni(&sni).cloned() else {
            return Some(stream);
        };
        let series = snapshot
            .metrics()
            .streams
            .series(self.port, "tls-passthrough");
        let context = self.context.clone();
        let port = self.port;
        tokio::spawn(async move {
            let record = SessionRecord::begin(&series);
            let client = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            let mut upstream_addr = None;
            let outcome = async {
                let pool = pool.as_deref().ok_or("no_endpoint")?;
                let upstream = connect(pool, None, &series).await.map_err(|f| f.as_str())?;
                upstream_addr = Some(upstream.addr);
                let limits = RelayLimits {
                    idle: PASSTHROUGH_IDLE,
                    drain: context.drain,
                };
                let relayed = relay(
                    stream,
                    upstream.stream,
                    limits,
                    std::future::pending(),
                    &series,
                )
                .await;
                drop(upstream.session);
                Ok(relayed)
            }
            .await;
            let peers = SessionPeers {
                protocol: "tls-passthrough",
                port,
                client,
                upstream: upstream_addr,
                service: &host,
            };
            record.end_relay(&series, &context, peers, outcome);
        });
        None
    }
}
