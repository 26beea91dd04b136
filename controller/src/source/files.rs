//! The manifests-directory source: every `*.yaml`, `*.yml` and `*.json` below a
//! directory, re-read when any of them changes.
//!
//! Changes are found by comparing each file's size, modification time and inode, which works
//! the same on every filesystem, including ConfigMap volumes whose files are swapped by
//! symlink. The comparison runs every poll interval, and at once when inotify reports
//! activity in the directory, so a change is picked up in milliseconds where inotify
//! works and within the interval where it does not. Only files that changed are parsed again.

use super::{Source, StateSender};
use crate::manifests;
use async_trait::async_trait;
use portico_translate::{ClusterState, KubeObject, ObjectKind};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct FileSource {
    dir: PathBuf,
    poll: Duration,
}

/// What a file held when it was last read, keyed by what identifies that version of it.
struct ParsedFile {
    len: u64,
    modified: Option<SystemTime>,
    /// A file replaced by a rename (as editors, `kubectl cp` and ConfigMap volumes do) is a
    /// new inode even when its size and coarse modification time are the old one's.
    inode: u64,
    /// The objects of each document, as served: a document that did not parse keeps
    /// those it last held.
    documents: Vec<Vec<KubeObject>>,
}

/// Parsed files by path; a change re-reads only the files that changed, and changes the
/// state by their objects alone unless an object they held or hold is also defined
/// elsewhere (then the state is built again from every file, in path order, the last
/// definition winning).
#[derive(Default)]
struct FileCache {
    files: BTreeMap<PathBuf, ParsedFile>,
    state: ClusterState,
    /// How many documents define each object.
    definitions: HashMap<ObjectId, usize>,
}

/// What identifies an object in the state: its kind, namespace and name.
type ObjectId = (ObjectKind, String, String);

fn id(o: &KubeObject) -> ObjectId {
    let meta = o.metadata();
    (
        o.kind(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl FileCache {
    /// Brings the cache up to date with the directory; true when anything changed.
    fn refresh(&mut self, dir: &Path) -> anyhow::Result<bool> {
        let paths = manifest_files(dir)?;
        let mut gone = Vec::new();
        self.files.retain(|p, f| {
            let keep = paths.binary_search(p).is_ok();
            if !keep {
                gone.push(std::mem::take(&mut f.documents));
            }
            keep
        });
        let mut changed = !gone.is_empty();
        let mut rebuild = false;
        for documents in &gone {
            rebuild |= self.forget(documents);
        }
        for path in paths {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let inode = meta.as_ref().map_or(0, std::os::unix::fs::MetadataExt::ino);
            let modified = meta.and_then(|m| m.modified().ok());
            if self
                .files
                .get(&path)
                .is_some_and(|f| f.len == len && f.modified == modified && f.inode == inode)
            {
                continue;
            }
            let last = self
                .files
                .remove(&path)
                .map(|f| f.documents)
                .unwrap_or_default();
            let documents = read_manifest(&path, &last);
            rebuild |= self.forget(&last);
            rebuild |= self.learn(&documents);
            self.files.insert(
                path,
                ParsedFile {
                    len,
                    modified,
                    inode,
                    documents,
                },
            );
            changed = true;
        }
        if rebuild {
            self.state = self
                .files
                .values()
                .flat_map(|f| f.documents.iter().flatten().cloned())
                .collect();
        }
        Ok(changed)
    }

    /// Takes a file's objects out of the state; true when one was defined elsewhere too.
    fn forget(&mut self, documents: &[Vec<KubeObject>]) -> bool {
        let mut shared = false;
        for o in documents.iter().flatten() {
            let id = id(o);
            match self.definitions.get_mut(&id) {
                Some(1) | None => {
                    self.definitions.remove(&id);
                    self.state.remove(o);
                }
                Some(n) => {
                    *n -= 1;
                    shared = true;
                }
            }
        }
        shared
    }

    /// Puts a file's objects into the state; true when one is defined elsewhere too.
    fn learn(&mut self, documents: &[Vec<KubeObject>]) -> bool {
        let mut shared = false;
        for o in documents.iter().flatten() {
            let n = self.definitions.entry(id(o)).or_insert(0);
            *n += 1;
            shared |= *n > 1;
            self.state.insert(o.clone());
        }
        shared
    }

    fn state(&self) -> ClusterState {
        self.state.clone()
    }
}

/// Parses one file whose documents last held `last`. What cannot be read keeps what it
/// last held, with the error logged, until it parses again: a file caught half-written,
/// or saved with a typo, must not take down the routes it served. A document that never
/// parsed serves what of it could be read.
fn read_manifest(path: &Path, last: &[Vec<KubeObject>]) -> Vec<Vec<KubeObject>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "manifest file cannot be read; its last good objects are kept");
            return last.to_vec();
        }
    };
    let parsed = manifests::documents(&text);
    let mut served = Vec::with_capacity(parsed.documents.len().max(last.len()));
    for (i, document) in parsed.documents.into_iter().enumerate() {
        match (document.error, last.get(i)) {
            (None, _) => served.push(document.objects),
            (Some(reason), Some(kept)) => {
                tracing::warn!(file = %path.display(), document = i, %reason, "manifest document unusable; its last good objects are kept");
                served.push(kept.clone());
            }
            (Some(reason), None) => {
                tracing::warn!(file = %path.display(), document = i, %reason, "manifest document unusable; what of it could be read is used");
                served.push(document.objects);
            }
        }
    }
    if !parsed.complete && last.len() > served.len() {
        tracing::warn!(file = %path.display(), documents = last.len() - served.len(), "manifest documents after a syntax error cannot be read; their last good objects are kept");
        served.extend_from_slice(&last[served.len()..]);
    }
    served
}

impl FileSource {
    pub fn new(dir: PathBuf, poll: Duration) -> Self {
        FileSource { dir, poll }
    }
}

pub(crate) fn manifest_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| anyhow::anyhow!("reading manifests directory {}: {e}", d.display()))?;
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
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Wakes `wake` when something below `dir` may have changed; `None` (polling only) when
/// the platform or the filesystem does not support watching.
fn watch(dir: &Path, wake: Arc<tokio::sync::Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error (a full event queue, say) may hide a change, so it wakes too.
        if event.map_or(true, |e| may_change(&e.kind)) {
            wake.notify_one();
        }
    })
    .map_err(|e| tracing::info!(error = %e, "cannot watch the manifests directory; polling only"))
    .ok()?;
    match watcher.watch(dir, notify::RecursiveMode::Recursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::info!(dir = %dir.display(), error = %e, "cannot watch the manifests directory; polling only");
            None
        }
    }
}

/// Whether an event can mean a changed manifest. Opening and reading files and the
/// directory are events too, and the refresh that a wake-up starts does exactly that:
/// waking on them re-read the directory in a loop, hundreds of times a second.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, states: StateSender) -> anyhow::Result<()> {
        let mut cache = FileCache::default();
        let mut first = true;
        let wake = Arc::new(tokio::sync::Notify::new());
        let _watcher = watch(&self.dir, wake.clone());
        loop {
            // Reading and parsing are blocking file work; keep them off the async workers.
            let dir = self.dir.clone();
            let started = std::time::Instant::now();
            let (returned, refreshed) = tokio::task::spawn_blocking(move || {
                let refreshed = cache
                    .refresh(&dir)
                    .map(|changed| changed.then(|| cache.state()));
                (cache, refreshed)
            })
            .await?;
            cache = returned;
            match refreshed {
                Ok(Some(state)) => {
                    let read_ms = started.elapsed().as_secs_f64() * 1e3;
                    tracing::info!(dir = %self.dir.display(), ingresses = state.ingresses.len(), read_ms, "manifests read");
                    states.send_replace(Some(Arc::new(state)));
                }
                // An empty directory is a valid, empty configuration.
                Ok(None) if first => {
                    states.send_replace(Some(Arc::new(ClusterState::default())));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "manifests directory unreadable; keeping the last state")
                }
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n")
    }

    fn names(cache: &FileCache) -> Vec<String> {
        cache
            .state()
            .services
            .keys()
            .map(|(_, n)| n.clone())
            .collect()
    }

    #[tokio::test]
    async fn reading_the_manifests_does_not_wake_the_watch_but_writing_one_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service("a")).unwrap();
        let wake = Arc::new(tokio::sync::Notify::new());
        let _watcher = watch(dir.path(), wake.clone()).expect("inotify on this machine");
        let woken = |within| tokio::time::timeout(Duration::from_millis(within), wake.notified());
        let _ = woken(200).await; // whatever setting up the watch reported

        let mut cache = FileCache::default();
        assert!(cache.refresh(dir.path()).unwrap());
        assert!(
            woken(300).await.is_err(),
            "reading the directory and its files woke the watch"
        );

        std::fs::write(dir.path().join("b.yaml"), service("b")).unwrap();
        assert!(
            woken(5000).await.is_ok(),
            "a new manifest did not wake the watch"
        );
    }

    #[test]
    fn a_document_that_stops_parsing_keeps_what_it_last_held_until_it_parses_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.yaml");
        let three = [service("a"), service("b"), service("c")].join("---\n");
        std::fs::write(&file, &three).unwrap();
        let mut cache = FileCache::default();
        cache.refresh(dir.path()).unwrap();
        assert_eq!(names(&cache), ["a", "b", "c"]);

        // Cut in the middle of the second document, as a half-finished write leaves it:
        // the third cannot be read at all.
        let cut = three.find("name: b").unwrap() + 5;
        std::fs::write(&file, &three[..cut]).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["a", "b", "c"]);

        // A document that parses as YAML but not as an object keeps its last objects too;
        // the good documents around it apply.
        let edited = [
            service("a2"),
            "apiVersion: v1\nmetadata: {name: b2}\n".into(),
            service("c2"),
        ];
        std::fs::write(&file, edited.join("---\n")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["a2", "b", "c2"]);

        // Fixed: it applies; and a document removed on purpose goes.
        std::fs::write(&file, [service("a2"), service("b2")].join("---\n")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["a2", "b2"]);

        // A file that never parsed has nothing to keep.
        std::fs::write(dir.path().join("new.yaml"), "kind: [").unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["a2", "b2"]);
    }

    #[test]
    fn an_object_defined_in_two_files_is_the_later_files_until_that_one_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let labelled = |file: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, labels: {{from: {file}}}}}\n")
        };
        let from = |cache: &FileCache| {
            let state = cache.state();
            let web = state
                .services
                .iter()
                .find(|((_, name), _)| name == "web")
                .map(|(_, s)| s)
                .map(|s| s.metadata.labels.as_ref().unwrap()["from"].clone());
            (state.services.len(), web)
        };
        let mut cache = FileCache::default();
        std::fs::write(dir.path().join("a.yaml"), labelled("a")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), labelled("b")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(from(&cache), (1, Some("b".into())));
        std::fs::write(dir.path().join("b.yaml"), service("other")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["other", "web"]);
        assert_eq!(from(&cache).1.as_deref(), Some("a"));
        std::fs::write(dir.path().join("b.yaml"), labelled("b")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(from(&cache), (1, Some("b".into())));
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(from(&cache), (1, Some("b".into())));
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(from(&cache), (0, None));
    }

    #[test]
    fn a_file_replaced_within_one_clock_tick_by_one_of_the_same_size_is_read_again() {
        // The kernel stamps files with a coarse clock: two writes a few milliseconds apart
        // can carry the same modification time.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, service("v1")).unwrap();
        let mut cache = FileCache::default();
        assert!(cache.refresh(dir.path()).unwrap());
        let stamp = std::fs::metadata(&path).unwrap().modified().unwrap();
        let tmp = dir.path().join(".a.yaml.tmp");
        std::fs::write(&tmp, service("v2")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["v2"]);
    }

    #[test]
    fn refresh_follows_additions_edits_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = FileCache::default();
        assert!(
            !cache.refresh(dir.path()).unwrap(),
            "an empty directory is no change"
        );

        std::fs::write(dir.path().join("a.yaml"), service("a")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.yml"), service("b")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), service("ignored")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["a", "b"]);
        assert!(!cache.refresh(dir.path()).unwrap(), "nothing changed since");

        std::fs::write(
            dir.path().join("a.yaml"),
            service("a2") + "---\n" + &service("a3"),
        )
        .unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["a2", "a3", "b"]);

        std::fs::remove_file(dir.path().join("sub/b.yml")).unwrap();
        assert!(cache.refresh(dir.path()).unwrap());
        assert_eq!(names(&cache), ["a2", "a3"]);
    }
}
