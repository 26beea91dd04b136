//! Per-client request limits (`limit-rps`, `limit-rpm`, `limit-connections`), counted by
//! client address in this replica. Rates are kept as GCRA buckets: one timestamp per
//! client, the time at which its allowance is whole again. Memory is bounded: a full
//! table first forgets clients whose allowance is whole (nothing is lost), then those
//! closest to whole, which grants each at most what it was about to regain.

use crate::listener::forwarded::Cidr;
use portico_model::{RateLimit, SourceRef};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Clients remembered per rate (and per concurrency count) of one limiter.
pub const MAX_CLIENTS: usize = 65_536;
const SHARDS: usize = 16;

type ClientMap<V> = HashMap<IpAddr, V, foldhash::fast::RandomState>;
type Shard<V> = Mutex<ClientMap<V>>;

fn shards<V>() -> Box<[Shard<V>]> {
    (0..SHARDS)
        .map(|_| Mutex::new(HashMap::default()))
        .collect()
}

/// The shard that keeps `ip`, locked. A panic elsewhere while it was held leaves counts,
/// not broken invariants, so the lock is taken over.
fn shard<V>(shards: &[Shard<V>], ip: IpAddr) -> std::sync::MutexGuard<'_, ClientMap<V>> {
    shards[shard_of(ip)]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn shard_of(ip: IpAddr) -> usize {
    let low = match ip {
        IpAddr::V4(v4) => u32::from(v4) as usize,
        IpAddr::V6(v6) => u128::from(v6) as usize,
    };
    // The low bits vary most between clients of one network.
    (low ^ (low >> 8)) % SHARDS
}

/// Nanoseconds on a monotonic clock shared by all limiters.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What a limiter says about one request.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; the permit (when counting requests in progress) is held until the
    /// request ends.
    Admit(Option<InProgress>),
    /// Over a limit: try again after this long.
    Refuse { retry_after: Duration },
}

pub struct RateLimiter {
    /// Which Ingress and limits this serves, so that a new snapshot keeps the counts.
    pub key: (SourceRef, RateLimit),
    exempt: Vec<Cidr>,
    rates: Vec<Rate>,
    concurrent: Option<Arc<ConcurrencyTable>>,
}

impl RateLimiter {
    pub fn new(source: &SourceRef, limit: &RateLimit) -> Self {
        let burst = u64::from(limit.burst_multiplier);
        let rate = |per: Option<u32>, period: Duration| {
            per.map(|n| {
                let interval = (period.as_nanos() as u64 / u64::from(n)).max(1);
                Rate {
                    interval,
                    tolerance: interval.saturating_mul(burst.saturating_mul(u64::from(n))),
                    clients: shards(),
                }
            })
        };
        let rates = [
            rate(limit.per_second, Duration::from_secs(1)),
            rate(limit.per_minute, Duration::from_secs(60)),
        ];
        RateLimiter {
            key: (source.clone(), limit.clone()),
            exempt: limit.exempt.clone(),
            rates: rates.into_iter().flatten().collect(),
            concurrent: limit.concurrent.map(|max| {
                Arc::new(ConcurrencyTable {
                    max,
                    clients: shards(),
                })
            }),
        }
    }

    /// Counts a request from `client`. An unknown client is counted as one shared
    /// client, so that requests whose source cannot be told are limited together.
    pub fn admit(&self, client: Option<IpAddr>) -> Admission {
        if client.is_some_and(|ip| self.exempt.iter().any(|c| c.contains(ip))) {
            return Admission::Admit(None);
        }
        let ip = client.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let now = now_ns();
        for (i, rate) in self.rates.iter().enumerate() {
            if let Err(wait) = rate.take(ip, now) {
                // The rates already counted give the request back.
                self.rates[..i].iter().for_each(|r| r.give_back(ip));
                return Admission::Refuse {
                    retry_after: Duration::from_nanos(wait),
                };
            }
        }
        match &self.concurrent {
            None => Admission::Admit(None),
            Some(table) => match ConcurrencyTable::enter(table, ip) {
                Some(permit) => Admission::Admit(Some(permit)),
                None => {
                    self.rates.iter().for_each(|r| r.give_back(ip));
                    Admission::Refuse {
                        retry_after: Duration::from_secs(1),
                    }
                }
            },
        }
    }
}

/// One rate: a request costs `interval`; a client may run `tolerance` ahead of now.
struct Rate {
    interval: u64,
    tolerance: u64,
    /// When each client's allowance is whole again.
    clients: Box<[Shard<u64>]>,
}

impl Rate {
    /// Takes one request's worth, or says how long until there is one.
    fn take(&self, ip: IpAddr, now: u64) -> Result<(), u64> {
        let mut clients = shard(&self.clients, ip);
        let whole_at = clients.get(&ip).copied().unwrap_or(now).max(now);
        if whole_at - now > self.tolerance {
            return Err(whole_at - now - self.tolerance);
        }
        if !clients.contains_key(&ip) && clients.len() >= MAX_CLIENTS / SHARDS {
            make_room(&mut clients, now);
        }
        clients.insert(ip, whole_at + self.interval);
        Ok(())
    }

    fn give_back(&self, ip: IpAddr) {
        let mut clients = shard(&self.clients, ip);
        if let Some(at) = clients.get_mut(&ip) {
            *at = at.saturating_sub(self.interval);
        }
    }
}

/// Frees an eighth of a full shard at once, so that the scan is paid once per that many
/// new clients: first the clients whose allowance is whole again, then those nearest to it.
fn make_room(clients: &mut ClientMap<u64>, now: u64) {
    clients.retain(|_, at| *at > now);
    let target = MAX_CLIENTS / SHARDS * 7 / 8;
    if clients.len() > target {
        let mut by_time: Vec<(u64, IpAddr)> = clients.iter().map(|(ip, at)| (*at, *ip)).collect();
        let excess = clients.len() - target;
        by_time.select_nth_unstable(excess - 1);
        for (_, ip) in &by_time[..excess] {
            clients.remove(ip);
        }
    }
}

/// Requests in progress per client. Only clients with a request in progress are kept.
struct ConcurrencyTable {
    max: u32,
    clients: Box<[Shard<u32>]>,
}

impl ConcurrencyTable {
    fn enter(table: &Arc<Self>, ip: IpAddr) -> Option<InProgress> {
        let mut clients = shard(&table.clients, ip);
        if !clients.contains_key(&ip) && clients.len() >= MAX_CLIENTS / SHARDS {
            // As many clients as the table holds are all in the middle of requests.
            return None;
        }
        let count = clients.entry(ip).or_insert(0);
        if *count >= table.max {
            return None;
        }
        *count += 1;
        Some(InProgress {
            table: Arc::clone(table),
            ip,
        })
    }
}

/// One request in progress, counted until dropped.
pub struct InProgress {
    table: Arc<ConcurrencyTable>,
    ip: IpAddr,
}

impl std::fmt::Debug for InProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProgress").field("ip", &self.ip).finish()
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut clients = shard(&self.table.clients, self.ip);
        if let Some(count) = clients.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(
        per_second: Option<u32>,
        per_minute: Option<u32>,
        burst_multiplier: u32,
        concurrent: Option<u32>,
    ) -> RateLimit {
        RateLimit {
            per_second,
            per_minute,
            burst_multiplier,
            concurrent,
            exempt: vec![],
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    fn admitted(a: &Admission) -> bool {
        matches!(a, Admission::Admit(_))
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_holds() {
        // 2/s with a multiplier of 5: a burst of 10 beyond the first request.
        let limiter = RateLimiter::new(&SourceRef::new("ns", "a"), &limit(Some(2), None, 5, None));
        let admitted_now = (0..20)
            .filter(|_| admitted(&limiter.admit(ip("10.0.0.1"))))
            .count();
        assert_eq!(admitted_now, 11);
        match limiter.admit(ip("10.0.0.1")) {
            Admission::Refuse { retry_after } => {
                assert!(retry_after <= Duration::from_millis(500), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        // Another client has its own allowance.
        assert!(admitted(&limiter.admit(ip("10.0.0.2"))));
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            admitted(&limiter.admit(ip("10.0.0.1"))),
            "half a second regains one request"
        );
    }

    #[test]
    fn a_refusal_by_one_rate_is_not_counted_by_the_other() {
        // 1/min with multiplier 1: two requests a minute at once; 100/s would allow many.
        let limiter = RateLimiter::new(
            &SourceRef::new("ns", "a"),
            &limit(Some(100), Some(1), 1, None),
        );
        assert!(admitted(&limiter.admit(ip("10.0.0.1"))));
        assert!(admitted(&limiter.admit(ip("10.0.0.1"))));
        for _ in 0..200 {
            assert!(!admitted(&limiter.admit(ip("10.0.0.1"))));
        }
        // The per-second bucket was given back each time, so it is not exhausted.
        let rate = &limiter.rates[0];
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let at = rate.clients[shard_of(client)].lock().unwrap()[&client];
        assert!(at <= now_ns() + 2 * rate.interval);
    }

    #[test]
    fn requests_in_progress_are_counted_until_they_end() {
        let limiter = RateLimiter::new(&SourceRef::new("ns", "a"), &limit(None, None, 5, Some(2)));
        let first = limiter.admit(ip("10.0.0.1"));
        let second = limiter.admit(ip("10.0.0.1"));
        assert!(admitted(&first) && admitted(&second));
        assert!(!admitted(&limiter.admit(ip("10.0.0.1"))));
        drop(first);
        assert!(admitted(&limiter.admit(ip("10.0.0.1"))));
        drop(second);
        let table = limiter.concurrent.as_ref().unwrap();
        assert!(
            table.clients.iter().all(|s| s.lock().unwrap().is_empty()),
            "finished clients are forgotten"
        );
    }

    #[test]
    fn exempt_clients_are_never_limited() {
        let mut l = limit(Some(1), None, 1, Some(1));
        l.exempt = portico_model::cidr::parse_list("10.1.0.0/16").unwrap();
        let limiter = RateLimiter::new(&SourceRef::new("ns", "a"), &l);
        let permits: Vec<_> = (0..50).map(|_| limiter.admit(ip("10.1.2.3"))).collect();
        assert!(permits.iter().all(admitted));
        assert!(admitted(&limiter.admit(ip("10.2.0.1"))));
        assert!(admitted(&limiter.admit(ip("10.2.0.1"))));
        assert!(!admitted(&limiter.admit(ip("10.2.0.1"))));
    }

    #[test]
    fn memory_stays_bounded_however_many_clients() {
        let limiter = RateLimiter::new(&SourceRef::new("ns", "a"), &limit(Some(1), None, 1, None));
        for i in 0..(3 * MAX_CLIENTS as u32) {
            limiter.admit(Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        }
        let kept: usize = limiter.rates[0]
            .clients
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert!(kept <= MAX_CLIENTS, "{kept}");
        // A client that has used its burst is still limited while the table churns.
        let heavy = ip("192.0.2.1");
        while admitted(&limiter.admit(heavy)) {}
        for i in 0..1000u32 {
            limiter.admit(Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i))));
        }
        assert!(!admitted(&limiter.admit(heavy)));
    }
}
