//! Active health checks, run as a Pingora background service: every pool with a
//! `health_check` has each endpoint probed with `GET path` every interval, and the
//! balancer skips the endpoints that fail. The state lives in the pool, so it survives
//! snapshots that keep the pool.

use crate::config::compile::BackendPool;
use crate::config::store::SnapshotStore;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How often due rounds are looked for; intervals are rounded up to this.
const TICK: Duration = Duration::from_millis(100);

pub struct HealthChecker {
    pub store: Arc<SnapshotStore>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Some(snapshot) = self.store.load() else {
                continue;
            };
            for pool in snapshot
                .health_checked()
                .iter()
                .filter(|p| p.claim_check_round())
            {
                tokio::spawn(check_round(pool.clone()));
            }
        }
    }
}

/// Probes every endpoint of a pool at once and records the results.
async fn check_round(pool: Arc<BackendPool>) {
    let Some(check) = pool.health_check.clone() else {
        return;
    };
    let timeout = Duration::from_millis(check.timeout_ms);
    let probes = (0..pool.balancer.len()).map(|i| {
        let addr = pool.balancer.endpoint(i).addr;
        let tls = pool.upstream.uses_tls();
        let path = check.path.clone();
        tokio::spawn(async move {
            tokio::time::timeout(timeout, probe(addr, &path, tls))
                .await
                .unwrap_or(Err("timed out".into()))
        })
    });
    let probes: Vec<_> = probes.collect();
    for (i, probe) in probes.into_iter().enumerate() {
        let result = probe.await.unwrap_or_else(|e| Err(e.to_string()));
        if let Err(why) = &result {
            tracing::debug!(endpoint = %pool.balancer.endpoint(i).addr, backend = %pool.name, why, "health check failed");
        }
        pool.balancer.record_check(
            i,
            result.is_ok(),
            check.healthy_threshold,
            check.unhealthy_threshold,
        );
    }
    pool.checking.store(false, Ordering::Relaxed);
}

/// One `GET`: a 2xx or 3xx status is healthy.
async fn probe(addr: SocketAddr, path: &str, tls: bool) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: portico-health-check\r\nConnection: close\r\n\r\n");
    let status = if tls {
        // The check asks whether the endpoint serves, not who it is: no verification.
        let mut connector = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
            .map_err(|e| e.to_string())?;
        connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let ssl = connector
            .build()
            .configure()
            .and_then(|c| c.verify_hostname(false).into_ssl("health-check"))
            .map_err(|e| e.to_string())?;
        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        std::pin::Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(&mut stream, &request).await?
    } else {
        let mut tcp = tcp;
        exchange(&mut tcp, &request).await?
    };
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Sends the request and reads the status code of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> Result<u16, String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            line.lines().next().unwrap_or("")
        )),
    }
}
