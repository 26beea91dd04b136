//! The protocol between `portico-controller` and `portico-proxy` over a Unix socket.
//!
//! Every frame is a big-endian `u32` length followed by that many bytes: a `u16`
//! protocol version, a `u8` message kind, and the kind's payload. The snapshot payload
//! is opaque bytes here; this crate knows nothing of what a snapshot contains.

mod client;
mod codec;
mod server;

pub use client::{Backoff, SnapshotClient, SnapshotSink};
pub use codec::{read_message, write_message, Message, WireError};
pub use server::{AckedVersions, SnapshotPublisher, SnapshotServer};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame accepted unless configured otherwise.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;
