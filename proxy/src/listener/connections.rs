//! Counts client connections around the proxy application: Pingora 0.9 has no hook for
//! a connection's accept and close, but every connection passes through `process_new`.
//! Each connection also gets its per-connection layers here: plain-HTTP ones read their
//! PROXY protocol header (TLS ones did before their handshake), and HTTP/1 ones get the
//! header and keep-alive deadlines of `header_deadline`.

use crate::listener::header_deadline::{self, ClientTimeouts};
use crate::listener::proxy_protocol::ProxyProtocol;
use crate::telemetry::metrics::ProxyMetrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

pub struct CountedConnections<A> {
    pub inner: Arc<A>,
    pub metrics: Arc<ProxyMetrics>,
    pub proxy_protocol: Option<Arc<ProxyProtocol>>,
    /// `--client-header-timeout` and `--client-keepalive-timeout`; `None` leaves Pingora's own.
    pub client_timeouts: Option<ClientTimeouts>,
}

/// Lowers the open-connections gauge however the connection ends.
struct Open<'a>(&'a prometheus::IntGauge);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CountedConnections<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.metrics.downstream_connections_total.inc();
        self.metrics.downstream_connections.inc();
        let _open = Open(&self.metrics.downstream_connections);
        let stream = match &self.proxy_protocol {
            Some(p) if stream.get_ssl().is_none() => p.accept_plain(stream).await?,
            _ => stream,
        };
        let stream = match self.client_timeouts {
            Some(timeouts) => header_deadline::guard(stream, timeouts),
            None => stream,
        };
        // What Pingora's own loop does with a kept-alive connection, here so that the
        // connection is counted once for all its requests.
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
