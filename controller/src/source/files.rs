//! The manifests-directory source: every `*.yaml`, `*.yml` and `*.json` below a
//! directory, re-read when any of them changes.
//!
//! Changes are found by polling a fingerprint (path, size, modification time) rather than
//! with inotify: it works the same on every filesystem, including ConfigMap volumes whose
//! files are swapped by symlink, and a directory of manifests is small.

use super::{Source, StateSender};
use crate::manifests;
use async_trait::async_trait;
use portico_translate::ClusterState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct FileSource {
    dir: PathBuf,
    poll: Duration,
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

impl FileSource {
    pub fn new(dir: PathBuf, poll: Duration) -> Self {
        FileSource { dir, poll }
    }

    /// Reads every manifest once, reporting unusable files and documents.
    pub fn load(dir: &Path) -> anyhow::Result<ClusterState> {
        let mut state = ClusterState::default();
        for path in manifest_files(dir)? {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "manifest file skipped: cannot be read");
                    continue;
                }
            };
            let (objects, errors) = manifests::parse(&text);
            for e in errors {
                tracing::warn!(file = %path.display(), document = e.document, reason = %e.reason, "manifest document skipped");
            }
            for o in objects {
                state.insert(o);
            }
        }
        Ok(state)
    }
}

fn manifest_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| anyhow::anyhow!("reading manifests directory {}: {e}", d.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // Follows symlinks, so Kubernetes ConfigMap volumes (..data links) work.
            // Hidden directories, such as a ConfigMap volume's timestamped ..2026_01_01 one,
            // are skipped: their files are visible through the links beside them.
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() && !hidden => pending.push(path),
                Ok(m) if m.is_file() && is_manifest(&path) => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    Ok(files)
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn fingerprint(dir: &Path) -> anyhow::Result<Fingerprint> {
    Ok(manifest_files(dir)?
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect())
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, states: StateSender) -> anyhow::Result<()> {
        let mut seen: Option<Fingerprint> = None;
        loop {
            match fingerprint(&self.dir) {
                Ok(now) if seen.as_ref() != Some(&now) => {
                    let dir = self.dir.clone();
                    let state = tokio::task::spawn_blocking(move || FileSource::load(&dir)).await??;
                    tracing::info!(dir = %self.dir.display(), ingresses = state.ingresses.len(), "manifests read");
                    states.send_replace(Some(Arc::new(state)));
                    seen = Some(now);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "manifests directory unreadable; keeping the last state"),
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
