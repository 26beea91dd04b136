//! The proxy's half: stay connected to the controller, apply what it sends, and say
//! whether it was applied.

use crate::codec::{read_message, write_message, Message, WireError};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

/// Whatever applies snapshots on the proxy side.
pub trait SnapshotSink: Send + Sync {
    /// The version currently serving, 0 before the first.
    fn last_applied(&self) -> u64;
    /// Validates and applies; on error the previous snapshot must keep serving.
    fn apply(&self, version: u64, payload: Vec<u8>) -> Result<(), String>;
    /// As [`SnapshotSink::apply`], for a delta against the serving snapshot, which is
    /// `base_version`.
    fn apply_delta(&self, base_version: u64, version: u64, payload: Vec<u8>) -> Result<(), String>;
    /// The link to the controller: `Some(why)` while it is down, `None` once connected.
    fn link_down(&self, _why: Option<String>) {}
    /// A connection to the controller starts: what it sends first is the controller's
    /// current state, to be applied even when its version is older than the serving one
    /// (a restarted controller whose clock stepped back, or a version from elsewhere).
    fn new_session(&self) {}
}

/// How often a link that stays down is logged again.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(60);

/// Capped exponential backoff with jitter: each delay is drawn from the upper half of
/// the current step, so a fleet of proxies does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

pub struct SnapshotClient {
    pub socket: PathBuf,
    pub proxy_id: String,
    pub max_frame: usize,
    pub backoff: Backoff,
}

impl SnapshotClient {
    pub fn new(socket: PathBuf, proxy_id: String) -> Self {
        SnapshotClient {
            socket,
            proxy_id,
            max_frame: crate::DEFAULT_MAX_FRAME,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Connects, applies, and reconnects forever; cancel by dropping the future.
    pub async fn run(mut self, sink: &dyn SnapshotSink) {
        // Since when the link is down, and when that was last logged.
        let mut down: Option<(Instant, Instant)> = None;
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => {
                    tracing::info!(socket = %self.socket.display(), "connected to controller");
                    down = None;
                    sink.link_down(None);
                    sink.new_session();
                    let outcome = self.session(stream, sink).await;
                    if outcome.received_any {
                        self.backoff.reset();
                    }
                    tracing::warn!(error = %outcome.end, "controller connection ended; serving the last good snapshot");
                    sink.link_down(Some(outcome.end.to_string()));
                }
                Err(e) => {
                    let now = Instant::now();
                    match down {
                        Some((since, logged)) if now - logged < DOWN_LOG_EVERY => {
                            tracing::debug!(socket = %self.socket.display(), error = %e, down_secs = (now - since).as_secs(), "controller not reachable");
                        }
                        _ => {
                            let since = down.map_or(now, |(since, _)| since);
                            tracing::warn!(socket = %self.socket.display(), error = %e, down_secs = (now - since).as_secs(), "controller not reachable; serving the last good snapshot");
                            down = Some((since, now));
                        }
                    }
                    sink.link_down(Some(format!("{}: {e}", self.socket.display())));
                }
            }
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    async fn session(&self, stream: UnixStream, sink: &dyn SnapshotSink) -> SessionEnd {
        let (mut reader, mut writer) = stream.into_split();
        let mut received_any = false;
        let hello = Message::Hello {
            proxy_id: self.proxy_id.clone(),
            last_applied_version: sink.last_applied(),
        };
        if let Err(end) = write_message(&mut writer, &hello).await {
            return SessionEnd { end, received_any };
        }
        loop {
            let reply = match read_message(&mut reader, self.max_frame).await {
                Ok(Message::Snapshot { version, payload }) => {
                    received_any = true;
                    if version == sink.last_applied() {
                        Message::Ack { version }
                    } else {
                        reply(version, sink.apply(version, payload))
                    }
                }
                Ok(Message::Delta {
                    version,
                    base_version,
                    payload,
                }) => {
                    received_any = true;
                    let serving = sink.last_applied();
                    if version == serving {
                        Message::Ack { version }
                    } else if base_version != serving {
                        // The controller answers this by sending the latest snapshot whole.
                        let reason = format!("delta {version} is against version {base_version}, but {serving} serves");
                        tracing::info!(version, %reason, "delta not applicable; asking for the whole snapshot");
                        Message::Nack { version, reason }
                    } else {
                        reply(version, sink.apply_delta(base_version, version, payload))
                    }
                }
                Ok(other) => {
                    tracing::warn!(?other, "unexpected message from controller");
                    continue;
                }
                Err(e) if e.stream_intact() => {
                    tracing::warn!(error = %e, "malformed message from controller");
                    Message::Nack {
                        version: 0,
                        reason: e.to_string(),
                    }
                }
                Err(end) => {
                    if let WireError::FrameTooLarge { .. } = end {
                        // The stream is no longer aligned, but the controller should still hear why.
                        let _ = write_message(
                            &mut writer,
                            &Message::Nack {
                                version: 0,
                                reason: end.to_string(),
                            },
                        )
                        .await;
                    }
                    return SessionEnd { end, received_any };
                }
            };
            if let Err(end) = write_message(&mut writer, &reply).await {
                return SessionEnd { end, received_any };
            }
        }
    }
}

fn reply(version: u64, applied: Result<(), String>) -> Message {
    match applied {
        Ok(()) => Message::Ack { version },
        Err(reason) => {
            tracing::warn!(version, %reason, "snapshot refused; the last good one keeps serving");
            Message::Nack { version, reason }
        }
    }
}

struct SessionEnd {
    end: WireError,
    received_any: bool,
}
