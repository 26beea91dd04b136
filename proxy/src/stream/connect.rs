//! Opening a TCP connection to one of a backend's endpoints for an L4 session: the
//! balancer picks, a failed connect counts against the endpoint (passive health) and the
//! next one is tried, within the backend's tries and `proxy-stream-next-upstream-timeout`.

use crate::config::compile::BackendPool;
use crate::telemetry::metrics::StreamSeries;
use crate::upstream::balancer::Attempt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The backend has no endpoint to try.
    NoEndpoint,
    /// Every endpoint tried failed or timed out.
    Failed,
}

impl ConnectFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::NoEndpoint => "no_endpoint",
            ConnectFailure::Failed => "connect_failed",
        }
    }
}

/// A connected upstream.
pub struct Upstream<'p> {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Held for the session: the endpoint counts it open (least connections) until dropped.
    pub session: OpenSession<'p>,
}

pub struct OpenSession<'p> {
    pool: &'p BackendPool,
    attempt: Option<Attempt>,
}

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.attempt.take() {
            self.pool.balancer.finish(a, false);
        }
    }
}

/// Connects to an endpoint of `pool`. L4 backends have no hash key (their policy is round
/// robin), so the balancer is given none.
pub async fn connect<'p>(
    pool: &'p BackendPool,
    next_upstream_timeout: Option<Duration>,
    series: &StreamSeries,
) -> Result<Upstream<'p>, ConnectFailure> {
    let started = Instant::now();
    let tries = pool.retry.tries.max(1) as usize;
    let timeout = pool.upstream.connect_timeout();
    let mut tried = Vec::new();
    loop {
        let Some(index) = pool.balancer.pick(&[], &tried) else {
            return Err(if tried.is_empty() {
                ConnectFailure::NoEndpoint
            } else {
                ConnectFailure::Failed
            });
        };
        let addr = pool.balancer.endpoint(index).addr;
        let attempt = pool.balancer.start(index);
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(Upstream {
                    stream,
                    addr,
                    session: OpenSession {
                        pool,
                        attempt: Some(attempt),
                    },
                });
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %addr, error = %e, "L4 upstream connect failed");
            }
            Err(_) => tracing::debug!(endpoint = %addr, "L4 upstream connect timed out"),
        }
        pool.balancer.finish(attempt, true);
        series.connect_errors.inc();
        tried.push(index);
        let out_of_time = next_upstream_timeout.is_some_and(|t| started.elapsed() >= t);
        if tried.len() >= tries || out_of_time {
            return Err(ConnectFailure::Failed);
        }
    }
}
