//! Framing: turning [`Message`]s into bytes on a stream and back.

use crate::PROTOCOL_VERSION;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Everything either side can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Proxy → controller, first thing on a connection.
    Hello {
        proxy_id: String,
        last_applied_version: u64,
    },
    /// Controller → proxy: a whole snapshot.
    Snapshot { version: u64, payload: Vec<u8> },
    /// Controller → proxy: what turns snapshot `base_version` into `version`. Sent only
    /// to a proxy that was sent `base_version`; one that does not serve it answers with a
    /// `Nack` and is sent the whole snapshot.
    Delta {
        version: u64,
        base_version: u64,
        payload: Vec<u8>,
    },
    /// Proxy → controller: this version now serves.
    Ack { version: u64 },
    /// Proxy → controller: this version was refused; the previous one keeps serving.
    Nack { version: u64, reason: String },
}

const KIND_HELLO: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_NACK: u8 = 4;
const KIND_DELTA: u8 = 5;
const HEADER_LEN: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind} message: {reason}")]
    Malformed {
        kind: &'static str,
        reason: &'static str,
    },
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// True when the stream is still aligned on a frame boundary, so the peer can be
    /// told what was wrong and the connection kept.
    pub fn stream_intact(&self) -> bool {
        matches!(
            self,
            WireError::UnsupportedVersion(_)
                | WireError::UnknownKind(_)
                | WireError::Malformed { .. }
        )
    }
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let (kind, body_len) = match self {
            Message::Hello { proxy_id, .. } => (KIND_HELLO, 8 + proxy_id.len()),
            Message::Snapshot { payload, .. } => (KIND_SNAPSHOT, 8 + payload.len()),
            Message::Ack { .. } => (KIND_ACK, 8),
            Message::Nack { reason, .. } => (KIND_NACK, 8 + reason.len()),
            Message::Delta { payload, .. } => (KIND_DELTA, 16 + payload.len()),
        };
        let frame_len = HEADER_LEN + body_len;
        let mut out = Vec::with_capacity(4 + frame_len);
        out.extend_from_slice(&(frame_len as u32).to_be_bytes());
        out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        out.push(kind);
        match self {
            Message::Hello {
                proxy_id,
                last_applied_version,
            } => {
                out.extend_from_slice(&last_applied_version.to_be_bytes());
                out.extend_from_slice(proxy_id.as_bytes());
            }
            Message::Snapshot { version, payload } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Message::Delta {
                version,
                base_version,
                payload,
            } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&base_version.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Message::Ack { version } => out.extend_from_slice(&version.to_be_bytes()),
            Message::Nack { version, reason } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
        }
        out
    }

    fn decode(frame: Vec<u8>) -> Result<Self, WireError> {
        if frame.len() < HEADER_LEN {
            return Err(WireError::Malformed {
                kind: "frame",
                reason: "shorter than its header",
            });
        }
        let protocol = u16::from_be_bytes([frame[0], frame[1]]);
        if protocol != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(protocol));
        }
        let kind = frame[2];
        let name = match kind {
            KIND_HELLO => "Hello",
            KIND_SNAPSHOT => "Snapshot",
            KIND_ACK => "Ack",
            KIND_NACK => "Nack",
            KIND_DELTA => "Delta",
            other => return Err(WireError::UnknownKind(other)),
        };
        let body = &frame[HEADER_LEN..];
        if body.len() < 8 {
            return Err(WireError::Malformed {
                kind: name,
                reason: "missing version",
            });
        }
        let version = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        let text = |rest: &[u8]| {
            String::from_utf8(rest.to_vec()).map_err(|_| WireError::Malformed {
                kind: name,
                reason: "text is not UTF-8",
            })
        };
        let rest = &body[8..];
        Ok(match kind {
            KIND_HELLO => Message::Hello {
                proxy_id: text(rest)?,
                last_applied_version: version,
            },
            KIND_SNAPSHOT => {
                // Reuse the frame's allocation: snapshots can be tens of megabytes.
                let mut payload = frame;
                payload.drain(..HEADER_LEN + 8);
                Message::Snapshot { version, payload }
            }
            KIND_DELTA => {
                let Some(base) = rest.get(..8) else {
                    return Err(WireError::Malformed {
                        kind: name,
                        reason: "missing base version",
                    });
                };
                let base_version = u64::from_be_bytes(base.try_into().expect("8 bytes"));
                Message::Delta {
                    version,
                    base_version,
                    payload: rest[8..].to_vec(),
                }
            }
            KIND_ACK if rest.is_empty() => Message::Ack { version },
            KIND_ACK => {
                return Err(WireError::Malformed {
                    kind: name,
                    reason: "trailing bytes",
                })
            }
            _ => Message::Nack {
                version,
                reason: text(rest)?,
            },
        })
    }
}

/// Writes one message as one frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), WireError> {
    w.write_all(&msg.encode()).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; a length over `max_frame` is refused before the body is read.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame: usize,
) -> Result<Message, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame {
        return Err(WireError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame).await?;
    Message::decode(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(msg: Message) -> Message {
        let bytes = msg.encode();
        read_message(&mut bytes.as_slice(), 1024).await.unwrap()
    }

    #[tokio::test]
    async fn every_message_round_trips() {
        for msg in [
            Message::Hello {
                proxy_id: "p-1".into(),
                last_applied_version: 9,
            },
            Message::Snapshot {
                version: 3,
                payload: b"{\"x\":1}".to_vec(),
            },
            Message::Delta {
                version: 4,
                base_version: 3,
                payload: b"changes".to_vec(),
            },
            Message::Ack { version: 3 },
            Message::Nack {
                version: 4,
                reason: "bad host".into(),
            },
        ] {
            assert_eq!(round_trip(msg.clone()).await, msg);
        }
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_from_its_length_alone() {
        // Only the length prefix exists: a reader that tried to read the body would hit EOF.
        let prefix = (1_000_000u32).to_be_bytes();
        let err = read_message(&mut prefix.as_slice(), 1024)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::FrameTooLarge {
                    len: 1_000_000,
                    max: 1024
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unknown_version_and_kind_leave_the_stream_usable() {
        let mut bytes = vec![0, 0, 0, 11, 0, 99, KIND_ACK, 0, 0, 0, 0, 0, 0, 0, 1];
        bytes.extend(Message::Ack { version: 5 }.encode());
        let mut r = bytes.as_slice();
        let err = read_message(&mut r, 1024).await.unwrap_err();
        assert!(matches!(err, WireError::UnsupportedVersion(99)) && err.stream_intact());
        assert_eq!(
            read_message(&mut r, 1024).await.unwrap(),
            Message::Ack { version: 5 }
        );

        let bytes = [0, 0, 0, 3, 0, 1, 42];
        assert!(matches!(
            read_message(&mut bytes.as_slice(), 1024).await,
            Err(WireError::UnknownKind(42))
        ));
    }

    #[tokio::test]
    async fn truncated_and_invalid_bodies_are_malformed() {
        let bytes = [0, 0, 0, 5, 0, 1, KIND_ACK, 1, 2];
        assert!(matches!(
            read_message(&mut bytes.as_slice(), 1024).await,
            Err(WireError::Malformed { .. })
        ));
        let mut bytes = vec![0, 0, 0, 13, 0, 1, KIND_NACK, 0, 0, 0, 0, 0, 0, 0, 1];
        bytes.extend([0xff, 0xfe]);
        assert!(matches!(
            read_message(&mut bytes.as_slice(), 1024).await,
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            read_message(&mut [0u8, 0].as_slice(), 1024).await,
            Err(WireError::Closed)
        ));
        let bytes = [0, 0, 0, 11, 0, 1, KIND_DELTA, 0, 0, 0, 0, 0, 0, 0, 2];
        let err = read_message(&mut bytes.as_slice(), 1024).await.unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Malformed {
                    kind: "Delta",
                    reason: "missing base version"
                }
            ),
            "{err}"
        );
    }
}
