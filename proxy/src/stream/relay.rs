//! Relaying bytes both ways between a client and an upstream until both have closed
//! their side (a half-close is passed on as a shutdown of the other side's writes),
//! nothing has moved either way for the idle timeout, or a drain runs out.

use crate::telemetry::metrics::StreamSeries;
use prometheus::IntCounter;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Each direction starts with a small buffer, as most sessions move little (and a new
/// connection should not cost a large allocation), and doubles it while reads fill it, up
/// to a size at which a bulk transfer makes few system calls a megabyte.
const FIRST_BUFFER_BYTES: usize = 8 * 1024;
const MAX_BUFFER_BYTES: usize = 64 * 1024;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The port was removed (or the proxy is stopping) and the drain ran out.
    Drained,
}

impl RelayEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle",
            RelayEnd::Drained => "drained",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// From the client to the upstream.
    pub received: u64,
    /// From the upstream to the client.
    pub sent: u64,
    pub end: RelayEnd,
}

/// When a relay ends on its own: after `idle` without a byte either way; once `draining`
/// resolves, at the latest `drain` later.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    pub idle: Duration,
    pub drain: Duration,
}

/// Relays until the end; bytes are counted on `series` as they move.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    limits: RelayLimits,
    draining: impl Future<Output = ()>,
    series: &StreamSeries,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let activity = Activity::new();
    let (received, sent) = (AtomicU64::new(0), AtomicU64::new(0));
    let both_ways = async {
        tokio::join!(
            pipe(
                client_read,
                upstream_write,
                Moved {
                    total: &received,
                    counter: &series.bytes_received,
                    activity: &activity,
                }
            ),
            pipe(
                upstream_read,
                client_write,
                Moved {
                    total: &sent,
                    counter: &series.bytes_sent,
                    activity: &activity,
                }
            ),
        )
    };
    let end = tokio::select! {
        _ = both_ways => RelayEnd::Closed,
        end = idle_or_drained(&activity, limits, draining) => end,
    };
    Relayed {
        received: received.load(Ordering::Relaxed),
        sent: sent.load(Ordering::Relaxed),
        end,
    }
}

/// When a session last moved anything, shared by whatever moves its bytes or datagrams.
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last move.
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Something moved just now.
    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the session started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn idle_until(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves when nothing has moved for `limits.idle`, or `limits.drain` after `draining`
/// resolved, whichever comes first.
pub async fn idle_or_drained(
    activity: &Activity,
    limits: RelayLimits,
    draining: impl Future<Output = ()>,
) -> RelayEnd {
    let mut draining = std::pin::pin!(draining);
    let mut drain_until: Option<Instant> = None;
    loop {
        let idle_until = activity.idle_until(limits.idle);
        let until = drain_until.map_or(idle_until, |d| d.min(idle_until));
        tokio::select! {
            () = tokio::time::sleep_until(until) => {
                let now = Instant::now();
                if drain_until.is_some_and(|d| now >= d) {
                    return RelayEnd::Drained;
                }
                if now >= activity.idle_until(limits.idle) {
                    return RelayEnd::Idle;
                }
            }
            () = &mut draining, if drain_until.is_none() => {
                drain_until = Some(Instant::now() + limits.drain);
            }
        }
    }
}

/// Where one direction counts what it moved.
struct Moved<'a> {
    total: &'a AtomicU64,
    counter: &'a IntCounter,
    activity: &'a Activity,
}

/// One direction: reads until the end (or an error), writing what it read, then shuts the
/// writing side down so that the other end sees the half-close.
async fn pipe<R, W>(mut from: R, mut to: W, moved: Moved<'_>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; FIRST_BUFFER_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let filled = n == buf.len();
        // Flushed each time: a buffered writer (Pingora's L4 stream) would otherwise hold
        // the bytes back; on a plain socket it costs nothing.
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
        moved.total.fetch_add(n as u64, Ordering::Relaxed);
        moved.counter.inc_by(n as u64);
        moved.activity.touch();
        if filled && buf.len() < MAX_BUFFER_BYTES {
            buf.resize(buf.len() * 2, 0);
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::ProxyMetrics;
    use tokio::io::duplex;

    fn limits(idle_ms: u64) -> RelayLimits {
        RelayLimits {
            idle: Duration::from_millis(idle_ms),
            drain: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn passes_bytes_and_half_closes_both_ways() {
        let series = ProxyMetrics::new().streams.series(1, "tcp");
        let (client, mut client_end) = duplex(1024);
        let (upstream, mut upstream_end) = duplex(1024);
        let relay = tokio::spawn(async move {
            relay(
                client,
                upstream,
                limits(5_000),
                std::future::pending(),
                &series,
            )
            .await
        });
        client_end.write_all(b"PING").await.unwrap();
        client_end.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_end.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"PING", "the client's half-close reached the upstream");
        // The upstream can still answer after the client's half-close.
        upstream_end.write_all(b"PONG").await.unwrap();
        upstream_end.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_end.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"PONG");
        assert_eq!(
            relay.await.unwrap(),
            Relayed {
                received: 4,
                sent: 4,
                end: RelayEnd::Closed
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ends_when_idle_and_when_a_drain_runs_out() {
        let series = ProxyMetrics::new().streams.series(1, "tcp");
        let (client, _client_end) = duplex(64);
        let (upstream, _upstream_end) = duplex(64);
        let started = Instant::now();
        let r = relay(
            client,
            upstream,
            limits(1_000),
            std::future::pending(),
            &series,
        )
        .await;
        assert_eq!(r.end, RelayEnd::Idle);
        assert!(started.elapsed() >= Duration::from_millis(1_000));

        let (client, _client_end) = duplex(64);
        let (upstream, _upstream_end) = duplex(64);
        let started = Instant::now();
        let r = relay(client, upstream, limits(60_000), async {}, &series).await;
        assert_eq!(r.end, RelayEnd::Drained);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
