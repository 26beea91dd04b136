//! The controller's half: a Unix socket that hands every connected proxy the latest
//! snapshot on connect and each newer one as it is published: as a delta when the
//! proxy was sent the delta's base, else whole (encoded when first needed).

use crate::codec::{read_message, write_message, Message, WireError};
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

/// A snapshot as it travels: its version and its serialised bytes, whole and, when the
/// controller had a base for it, as a delta. With a delta, the whole is encoded only when a
/// proxy needs it (one that connects, or lacks the base): encoding 100 000 endpoints takes
/// longer than the proxies holding the base take to apply the delta, and on a busy node it
/// would compete with them for the CPU.
#[derive(Debug)]
struct Published {
    version: u64,
    whole: Whole,
    delta: Option<Delta>,
}

#[derive(Debug)]
struct Delta {
    base_version: u64,
    payload: Vec<u8>,
}

type Encoder = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// A whole snapshot's bytes, encoded on first need.
struct Whole {
    bytes: std::sync::OnceLock<Vec<u8>>,
    encode: Mutex<Option<Encoder>>,
}

impl Whole {
    fn ready(bytes: Vec<u8>) -> Self {
        Whole {
            bytes: std::sync::OnceLock::from(bytes),
            encode: Mutex::new(None),
        }
    }

    fn on_demand(encode: Encoder) -> Self {
        Whole {
            bytes: std::sync::OnceLock::new(),
            encode: Mutex::new(Some(encode)),
        }
    }

    /// The bytes, encoding them now if no one has yet (callers at the same time wait).
    fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| {
            let encode = self.encode.lock().unwrap_or_else(|p| p.into_inner()).take();
            encode.map_or_else(Vec::new, |encode| encode())
        })
    }
}

impl std::fmt::Debug for Whole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.bytes.get() {
            Some(b) => write!(f, "Whole({} bytes)", b.len()),
            None => f.write_str("Whole(not encoded yet)"),
        }
    }
}

type Latest = Option<Arc<Published>>;

/// Hands snapshots to the server; cloneable, cheap.
#[derive(Clone)]
pub struct SnapshotPublisher {
    tx: Arc<watch::Sender<Latest>>,
}

impl SnapshotPublisher {
    /// Makes `payload` the snapshot every connected and future proxy receives.
    pub fn publish(&self, version: u64, payload: Vec<u8>) {
        self.tx.send_replace(Some(Arc::new(Published {
            version,
            whole: Whole::ready(payload),
            delta: None,
        })));
    }

    /// Sends `delta` to the proxies that were last sent `base_version`; `encode` makes the
    /// whole snapshot for the others, when the first of them needs it (once).
    pub fn publish_delta(
        &self,
        version: u64,
        base_version: u64,
        delta: Vec<u8>,
        encode: impl FnOnce() -> Vec<u8> + Send + 'static,
    ) {
        self.tx.send_replace(Some(Arc::new(Published {
            version,
            whole: Whole::on_demand(Box::new(encode)),
            delta: Some(Delta {
                base_version,
                payload: delta,
            }),
        })));
    }
}

/// The last version each connected proxy acknowledged, by proxy id.
#[derive(Clone, Default)]
pub struct AckedVersions(Arc<Mutex<BTreeMap<String, u64>>>);

impl AckedVersions {
    pub fn get(&self, proxy_id: &str) -> Option<u64> {
        self.lock().get(proxy_id).copied()
    }

    /// Every connected proxy with the last version it acknowledged (or said it had
    /// applied when it connected).
    pub fn all(&self) -> BTreeMap<String, u64> {
        self.lock().clone()
    }

    fn set(&self, proxy_id: &str, version: u64) {
        self.lock().insert(proxy_id.to_string(), version);
    }

    fn remove(&self, proxy_id: &str) {
        self.lock().remove(proxy_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct SnapshotServer {
    listener: UnixListener,
    path: PathBuf,
    /// The inode of the socket file this server bound, to tell it from a replacement.
    inode: u64,
    rx: watch::Receiver<Latest>,
    max_frame: usize,
    acked: AckedVersions,
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

impl SnapshotServer {
    /// Binds `path` with mode 0600, replacing a stale socket file. Refuses to replace a
    /// socket another process is still serving, and anything that is not a socket.
    pub fn bind(path: &Path, max_frame: usize) -> io::Result<(SnapshotServer, SnapshotPublisher)> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let (listener, inode) = listen(path)?;
        let (tx, rx) = watch::channel(None);
        let server = SnapshotServer {
            listener,
            path: path.to_path_buf(),
            inode,
            rx,
            max_frame,
            acked: AckedVersions::default(),
        };
        Ok((server, SnapshotPublisher { tx: Arc::new(tx) }))
    }

    pub fn acked_versions(&self) -> AckedVersions {
        self.acked.clone()
    }

    /// Accepts proxies until the task is dropped. A socket file deleted from under it (a
    /// cleanup script, an `rm` in the shared volume) is noticed within a second and bound
    /// again, so proxies that reconnect find it.
    pub async fn serve(mut self) {
        let mut check = tokio::time::interval(SOCKET_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut replaced_told = false;
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = check.tick() => {
                    match std::fs::symlink_metadata(&self.path) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => match listen(&self.path) {
                            Ok((listener, inode)) => {
                                tracing::warn!(socket = %self.path.display(), "the socket file was deleted; bound it again");
                                (self.listener, self.inode) = (listener, inode);
                                replaced_told = false;
                            }
                            Err(e) => tracing::error!(socket = %self.path.display(), error = %e, "the socket file was deleted and cannot be bound again"),
                        },
                        Ok(meta) if meta.ino() != self.inode && !replaced_told => {
                            replaced_told = true;
                            tracing::error!(socket = %self.path.display(), "the socket path now names another file; proxies connecting to it do not reach this controller");
                        }
                        _ => {}
                    }
                    continue;
                }
            };
            match accepted {
                Ok((stream, _)) => {
                    let conn = Connection {
                        rx: self.rx.clone(),
                        max_frame: self.max_frame,
                        acked: self.acked.clone(),
                    };
                    tokio::spawn(conn.run(stream));
                }
                Err(e) => {
                    tracing::warn!(socket = %self.path.display(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// How often the socket file is checked for deletion.
const SOCKET_CHECK: Duration = Duration::from_secs(1);

/// Binds `path` with mode 0600; the listener and the socket file's inode.
fn listen(path: &Path) -> io::Result<(UnixListener, u64)> {
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, std::fs::symlink_metadata(path)?.ino()))
}

struct Connection {
    rx: watch::Receiver<Latest>,
    max_frame: usize,
    acked: AckedVersions,
}

impl Connection {
    async fn run(mut self, stream: UnixStream) {
        let (mut reader, mut writer) = stream.into_split();
        let (proxy_id, last_applied) = match tokio::time::timeout(
            HELLO_TIMEOUT,
            read_message(&mut reader, self.max_frame),
        )
        .await
        {
            Ok(Ok(Message::Hello {
                proxy_id,
                last_applied_version,
            })) => (proxy_id, last_applied_version),
            Ok(Ok(other)) => {
                return tracing::warn!(message = ?kind_of(&other), "proxy did not start with Hello; closing")
            }
            Ok(Err(e)) => return tracing::warn!(error = %e, "reading Hello failed; closing"),
            Err(_) => return tracing::warn!("no Hello within {HELLO_TIMEOUT:?}; closing"),
        };
        tracing::info!(proxy = %proxy_id, last_applied, "proxy connected");
        self.acked.set(&proxy_id, last_applied);

        let (replies_tx, mut replies) = mpsc::unbounded_channel();
        let mut read_loop = tokio::spawn(read_replies(
            reader,
            self.max_frame,
            proxy_id.clone(),
            self.acked.clone(),
            replies_tx,
        ));
        let mut sent = last_applied;
        // Versions sent as deltas and not yet answered, and whether the proxy refused one:
        // it then does not serve the base of the next, so the latest goes whole.
        let mut deltas_unanswered = std::collections::BTreeSet::new();
        let mut send_whole = false;
        loop {
            let latest = self.rx.borrow_and_update().clone();
            let latest = latest.filter(|p| p.version != sent || send_whole);
            let msg = match latest {
                None => None,
                Some(p) => Some(match &p.delta {
                    Some(d) if d.base_version == sent && !send_whole => {
                        deltas_unanswered.insert(p.version);
                        Message::Delta {
                            version: p.version,
                            base_version: d.base_version,
                            payload: d.payload.clone(),
                        }
                    }
                    _ => {
                        let version = p.version;
                        // Encoding is CPU work of milliseconds per 10 000 hosts.
                        let whole = tokio::task::spawn_blocking(move || p.whole.bytes().to_vec());
                        let Ok(payload) = whole.await else {
                            break;
                        };
                        Message::Snapshot { version, payload }
                    }
                }),
            };
            if let Some(msg) = msg {
                if let Err(e) = write_message(&mut writer, &msg).await {
                    tracing::info!(proxy = %proxy_id, error = %e, "sending snapshot failed; dropping connection");
                    break;
                }
                if let Message::Snapshot { version, .. } | Message::Delta { version, .. } = msg {
                    sent = version;
                }
                send_whole &= matches!(msg, Message::Delta { .. });
            }
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { break },
                Some(Reply { version, applied }) = replies.recv() => {
                    // Replies come in the order snapshots were sent.
                    let refused_delta = deltas_unanswered.remove(&version) && !applied;
                    deltas_unanswered.retain(|v| *v > version);
                    if refused_delta {
                        tracing::info!(proxy = %proxy_id, version, "proxy refused a delta; sending the latest snapshot whole");
                        send_whole = true;
                    }
                }
                _ = &mut read_loop => break,
            }
        }
        read_loop.abort();
        self.acked.remove(&proxy_id);
        tracing::info!(proxy = %proxy_id, "proxy disconnected");
    }
}

/// A proxy's answer to one snapshot or delta.
struct Reply {
    version: u64,
    applied: bool,
}

async fn read_replies(
    mut reader: tokio::net::unix::OwnedReadHalf,
    max_frame: usize,
    proxy_id: String,
    acked: AckedVersions,
    replies: mpsc::UnboundedSender<Reply>,
) {
    loop {
        match read_message(&mut reader, max_frame).await {
            Ok(Message::Ack { version }) => {
                tracing::debug!(proxy = %proxy_id, version, "snapshot acknowledged");
                acked.set(&proxy_id, version);
                let _ = replies.send(Reply {
                    version,
                    applied: true,
                });
            }
            Ok(Message::Nack { version, reason }) => {
                tracing::warn!(proxy = %proxy_id, version, %reason, "proxy refused snapshot");
                let _ = replies.send(Reply {
                    version,
                    applied: false,
                });
            }
            Ok(other) => {
                tracing::warn!(proxy = %proxy_id, message = ?kind_of(&other), "unexpected message from proxy")
            }
            Err(WireError::Closed) => return,
            Err(e) if e.stream_intact() => {
                tracing::warn!(proxy = %proxy_id, error = %e, "bad message from proxy")
            }
            Err(e) => {
                return tracing::warn!(proxy = %proxy_id, error = %e, "reading from proxy failed")
            }
        }
    }
}

fn kind_of(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "Hello",
        Message::Snapshot { .. } => "Snapshot",
        Message::Delta { .. } => "Delta",
        Message::Ack { .. } => "Ack",
        Message::Nack { .. } => "Nack",
    }
}
