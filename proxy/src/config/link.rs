//! The proxy's link to the controller, run as a Pingora background service.

use crate::config::store::SnapshotStore;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_wire::SnapshotClient;
use std::path::PathBuf;
use std::sync::Arc;

pub struct ControllerLink {
    pub socket: PathBuf,
    pub proxy_id: String,
    pub store: Arc<SnapshotStore>,
}

#[async_trait]
impl BackgroundService for ControllerLink {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = SnapshotClient::new(self.socket.clone(), self.proxy_id.clone());
        tokio::select! {
            _ = client.run(self.store.as_ref()) => {}
            _ = shutdown.changed() => {}
        }
    }
}
