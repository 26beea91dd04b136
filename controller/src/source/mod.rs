//! Where cluster state comes from. Each source keeps a [`ClusterState`] current and
//! publishes it whenever it changes; the sync loop does not care which source it is.

mod files;
mod kube;

pub(crate) use files::manifest_files;
pub use files::FileSource;
pub use kube::KubeSource;

use async_trait::async_trait;
use portico_translate::ClusterState;
use std::sync::Arc;
use tokio::sync::watch;

/// The latest complete state. `None` until the source has read everything once, so a
/// snapshot is never built from a partial view.
pub type StateSender = watch::Sender<Option<Arc<ClusterState>>>;

#[async_trait]
pub trait Source: Send {
    /// Runs until cancelled, sending the whole state after each change.
    async fn run(self: Box<Self>, states: StateSender) -> anyhow::Result<()>;
}
