//! Counts client connections around the proxy application: Pingora 0.9 has no hook for
//! a connection's accept and close, but every connection passes through `process_new`.

use crate::metrics::ProxyMetrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

pub struct CountedConnections<A> {
    pub inner: Arc<A>,
    pub metrics: Arc<ProxyMetrics>,
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
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.metrics.downstream_connections_total.inc();
        self.metrics.downstream_connections.inc();
        let _open = Open(&self.metrics.downstream_connections);
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
