// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Portico's addition: the idle upstream connections of a `TransportConnector`, kept
//! without a task per connection.
//!
//! `pingora_pool::ConnectionPool` spawns a task for every connection released to it, which
//! watches the socket until the connection is taken again; taking it signals that task and
//! waits for it to let go. On a keep-alive upstream that is a task spawned, scheduled and
//! finished, two channels, a timer and a lock hand-off for every proxied request. Here a
//! released connection is only put in a list. A connection the server closed, or that was
//! idle past its timeout, is found in two ways: by the non-blocking check made before any
//! reuse (as before), and by one sweep task per pool that checks the idle connections once a
//! second while there are any, so that closed sockets do not linger.

use super::test_reusable_stream;
use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the sweep task looks for closed and expired idle connections.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
    /// Release order across all groups, for evicting the least recently released.
    seq: u64,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

#[derive(Default)]
struct Groups {
    /// Idle connections by reuse key, oldest first.
    by_key: HashMap<u64, Vec<Idle>>,
    count: usize,
    next_seq: u64,
    /// Whether a sweep task is running; read and written under the lock.
    sweeping: bool,
}

impl Groups {
    /// Removes the least recently released connection of any group.
    fn evict_oldest(&mut self) -> Option<Idle> {
        let key = *self
            .by_key
            .iter()
            .filter_map(|(k, list)| list.first().map(|i| (k, i.seq)))
            .min_by_key(|(_, seq)| *seq)?
            .0;
        let list = self.by_key.get_mut(&key)?;
        let oldest = list.remove(0);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(oldest)
    }
}

pub(crate) struct IdlePool {
    capacity: usize,
    groups: Mutex<Groups>,
}

impl IdlePool {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(IdlePool {
            capacity,
            groups: Mutex::new(Groups::default()),
        })
    }

    /// Keeps `stream` for reuse under `key`. Returns how long the connection it pushed out
    /// had been idle, when the pool was full, and whether the caller must start the sweep
    /// task (see [`Self::sweep_until_empty`]).
    pub(crate) fn put(
        &self,
        key: u64,
        stream: Stream,
        timeout: Option<Duration>,
    ) -> (Option<Duration>, bool) {
        if self.capacity == 0 {
            return (None, false);
        }
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let evicted = if groups.count >= self.capacity {
            groups.evict_oldest()
        } else {
            None
        };
        let seq = groups.next_seq;
        groups.next_seq += 1;
        groups.by_key.entry(key).or_default().push(Idle {
            stream,
            since: now,
            timeout,
            seq,
        });
        groups.count += 1;
        let start_sweep = !groups.sweeping;
        groups.sweeping = true;
        drop(groups);
        // Dropped outside the lock: closing a socket is a system call.
        (evicted.map(|e| now.saturating_duration_since(e.since)), start_sweep)
    }

    /// The most recently released connection under `key` that is still open and within its
    /// idle timeout (the most recent, so that the others reach their timeout and close when
    /// fewer connections are needed).
    pub(crate) fn take(&self, key: u64, unexpected_data: &AtomicU64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let mut idle = {
                let mut groups = self.groups.lock();
                let list = groups.by_key.get_mut(&key)?;
                let idle = list.pop()?;
                if list.is_empty() {
                    groups.by_key.remove(&key);
                }
                groups.count -= 1;
                idle
            };
            if !idle.expired(now) && test_reusable_stream(&mut idle.stream, unexpected_data) {
                return Some(idle.stream);
            }
        }
    }

    /// Drops the idle connections that were closed or have expired; returns how many remain.
    fn sweep(&self, now: Instant, unexpected_data: &AtomicU64) -> usize {
        let mut closed = Vec::new();
        let mut groups = self.groups.lock();
        groups.by_key.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                let idle = &mut list[i];
                if idle.expired(now) || !test_reusable_stream(&mut idle.stream, unexpected_data) {
                    closed.push(list.remove(i));
                } else {
                    i += 1;
                }
            }
            !list.is_empty()
        });
        groups.count -= closed.len();
        let remaining = groups.count;
        if remaining == 0 {
            // Under the lock, so that a `put` either sees this and starts a new sweep, or
            // was counted above.
            groups.sweeping = false;
        }
        remaining
    }

    /// The sweep task: every [`SWEEP_INTERVAL`] while the pool holds idle connections. It
    /// holds the pool weakly, so it ends with the connector, and it ends when the pool is
    /// empty; the next `put` starts another.
    pub(crate) async fn sweep_until_empty(pool: Weak<Self>, unexpected_data: Arc<AtomicU64>) {
        /// Lets the next `put` start a sweep if this task is dropped (its runtime stopping).
        struct Running(Weak<IdlePool>);
        impl Drop for Running {
            fn drop(&mut self) {
                if let Some(pool) = self.0.upgrade() {
                    pool.groups.lock().sweeping = false;
                }
            }
        }
        let mut running = Running(pool);
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            let Some(pool) = running.0.upgrade() else {
                return;
            };
            if pool.sweep(Instant::now(), &unexpected_data) == 0 {
                // `sweep` cleared the flag under the lock, and a `put` since may have set it
                // and started another task: leave the flag alone.
                running.0 = Weak::new();
                return;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.lock().count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::l4::stream::Stream as L4Stream;
    use std::io::Write;
    use tokio::net::TcpStream;

    /// A connected pair: the pool's side (a Pingora stream) and the server's.
    async fn connection(listener: &std::net::TcpListener) -> (Stream, std::net::TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        (Box::new(L4Stream::from(client)), server)
    }

    fn loopback() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[tokio::test]
    async fn takes_the_most_recent_connection_of_the_key() {
        let listener = loopback();
        let pool = IdlePool::new(8);
        let unexpected = AtomicU64::new(0);
        let (a, _sa) = connection(&listener).await;
        let (b, _sb) = connection(&listener).await;
        let (c, _sc) = connection(&listener).await;
        let (a_id, b_id) = (a.id(), b.id());
        assert!(pool.put(1, a, None).1, "the first put starts the sweep");
        assert!(!pool.put(1, b, None).1);
        pool.put(2, c, None);
        assert_eq!(pool.take(1, &unexpected).map(|s| s.id()), Some(b_id));
        assert_eq!(pool.take(1, &unexpected).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1, &unexpected).is_none());
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn a_full_pool_drops_the_least_recently_released() {
        let listener = loopback();
        let pool = IdlePool::new(2);
        let unexpected = AtomicU64::new(0);
        let (a, _sa) = connection(&listener).await;
        let (b, _sb) = connection(&listener).await;
        let (c, _sc) = connection(&listener).await;
        let c_id = c.id();
        pool.put(1, a, None);
        pool.put(2, b, None);
        let (evicted, _) = pool.put(2, c, None);
        assert!(evicted.is_some());
        assert_eq!(pool.len(), 2);
        assert!(pool.take(1, &unexpected).is_none(), "key 1's only connection went");
        assert_eq!(pool.take(2, &unexpected).map(|s| s.id()), Some(c_id));
    }

    #[tokio::test]
    async fn closed_and_expired_connections_are_never_handed_out() {
        let listener = loopback();
        let pool = IdlePool::new(8);
        let unexpected = AtomicU64::new(0);
        let (open, _keep) = connection(&listener).await;
        let (closed, server) = connection(&listener).await;
        let (chatty, mut chatty_server) = connection(&listener).await;
        let (expiring, _keep2) = connection(&listener).await;
        let open_id = open.id();
        pool.put(1, open, None);
        pool.put(1, closed, None);
        pool.put(1, chatty, None);
        pool.put(1, expiring, Some(Duration::from_millis(1)));
        drop(server);
        chatty_server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.take(1, &unexpected).map(|s| s.id()), Some(open_id));
        assert_eq!(pool.len(), 0);
        assert_eq!(unexpected.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_sweep_closes_what_the_server_closed_and_stops_when_empty() {
        let listener = loopback();
        let pool = IdlePool::new(8);
        let unexpected = Arc::new(AtomicU64::new(0));
        let (closed, server) = connection(&listener).await;
        let (open, _keep) = connection(&listener).await;
        pool.put(1, closed, None);
        pool.put(2, open, Some(SWEEP_INTERVAL * 2));
        drop(server);
        let sweep = tokio::spawn(IdlePool::sweep_until_empty(
            Arc::downgrade(&pool),
            unexpected.clone(),
        ));
        tokio::time::sleep(SWEEP_INTERVAL + Duration::from_millis(300)).await;
        assert_eq!(pool.len(), 1, "the closed connection went at the first sweep");
        tokio::time::timeout(SWEEP_INTERVAL * 3, sweep)
            .await
            .expect("the sweep ends once the expired connection went")
            .unwrap();
        assert_eq!(pool.len(), 0);
        let (again, _s) = connection(&listener).await;
        assert!(pool.put(1, again, None).1, "a put after the sweep ended starts another");
    }
}
