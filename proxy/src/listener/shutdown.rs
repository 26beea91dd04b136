//! What SIGTERM starts. Kubernetes removes a terminating pod from its Service's endpoints
//! while the pod is already stopping, so connections keep arriving for a while: the
//! listeners keep accepting and serving for the grace period while `/readyz` fails, and only
//! then does Pingora stop accepting, end idle keep-alive connections (HTTP/2 with GOAWAY),
//! answer in-flight HTTP/1 requests with `Connection: close`, and give them the drain period
//! before the process exits.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Whether the proxy has been told to stop; `/readyz` fails from then on.
#[derive(Debug, Clone, Default)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The signals and the grace period, handed to Pingora in place of its own signal watch
/// (which stops accepting at once on SIGTERM).
pub struct ShutdownTimeline {
    pub grace: Duration,
    pub stopping: Stopping,
}

fn listen(kind: SignalKind) -> Option<Signal> {
    signal(kind)
        .map_err(|e| tracing::error!(error = %e, ?kind, "cannot listen for the signal"))
        .ok()
}

async fn received(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownTimeline {
    async fn recv(&self) -> ShutdownSignal {
        let mut terminate = listen(SignalKind::terminate());
        let mut interrupt = listen(SignalKind::interrupt());
        // SIGQUIT is Pingora's graceful upgrade, which Portico does not use: it stops as
        // SIGTERM does.
        let mut quit = listen(SignalKind::quit());
        tokio::select! {
            _ = received(&mut interrupt) => return ShutdownSignal::FastShutdown,
            _ = received(&mut terminate) => {}
            _ = received(&mut quit) => {}
        }
        self.stopping.set();
        tracing::info!(
            grace_seconds = self.grace.as_secs(),
            "stopping: /readyz fails, and the listeners keep serving for the grace period"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.grace) => {}
            // A second SIGTERM ends the grace early; SIGINT stops at once.
            _ = received(&mut terminate) => {}
            _ = received(&mut interrupt) => return ShutdownSignal::FastShutdown,
        }
        tracing::info!("grace period over: listeners close and in-flight requests drain");
        ShutdownSignal::GracefulTerminate
    }
}
