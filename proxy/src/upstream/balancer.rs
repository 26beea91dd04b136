//! Choosing an endpoint of a backend, and the per-endpoint state choices read: requests
//! in flight, a peak-EWMA of response times, and passive and active health.
//!
//! A [`Balancer`] lives as long as its backend is unchanged (pools are reused across
//! snapshots), so round-robin position, EWMA scores and health survive unrelated changes.
//! All state is atomics: picking takes no lock.

use pingora_ketama::{Bucket, Continuum};
use portico_model::{Backend, Balance};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How fast old response times fade from the EWMA (ingress-nginx's `DECAY_TIME`).
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Ketama points per endpoint, as nginx's `hash ... consistent` uses.
const KETAMA_WEIGHT: u32 = 1;

/// One ready endpoint and what is known about it.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    /// Microseconds, as `f64` bits; 0 until the first response.
    ewma_us: AtomicU64,
    /// When `ewma_us` was last updated, in microseconds since the balancer's epoch.
    ewma_at_us: AtomicU64,
    /// Failures in the current window, and when that window started.
    fails: AtomicU32,
    fail_window_us: AtomicU64,
    /// Skipped until then (microseconds since the epoch).
    down_until_us: AtomicU64,
    /// Active health checks: taken out by failed checks, and the current run of
    /// successes (positive) or failures (negative).
    checked_down: AtomicBool,
    check_streak: std::sync::atomic::AtomicI32,
}

impl EndpointState {
    fn new(addr: SocketAddr) -> Self {
        EndpointState {
            addr,
            in_flight: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0f64.to_bits()),
            ewma_at_us: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            fail_window_us: AtomicU64::new(0),
            down_until_us: AtomicU64::new(0),
            checked_down: AtomicBool::new(false),
            check_streak: std::sync::atomic::AtomicI32::new(0),
        }
    }

    /// Whether active health checks have taken it out.
    pub fn checked_down(&self) -> bool {
        self.checked_down.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The EWMA decayed to `now_us`, as if a zero-cost response arrived now.
    fn ewma_at(&self, now_us: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let elapsed = now_us.saturating_sub(self.ewma_at_us.load(Ordering::Relaxed)) as f64;
        ewma * (-elapsed / EWMA_DECAY.as_micros() as f64).exp()
    }
}

enum Algorithm {
    RoundRobin,
    LeastConn,
    Ewma,
    Random,
    Hash,
    /// Endpoints in subsets of this many, by their order in the snapshot.
    HashSubset(usize),
}

/// Ketama places this many points per unit of weight on the ring (pingora-ketama's V1).
const POINTS_PER_WEIGHT: usize = 160;

/// A Ketama ring over the endpoints, and each endpoint's position by address.
struct Ring {
    continuum: Continuum,
    positions: HashMap<SocketAddr, usize>,
}

impl Ring {
    fn new(endpoints: &[EndpointState]) -> Self {
        let buckets: Vec<Bucket> = endpoints
            .iter()
            .map(|e| Bucket::new(e.addr, KETAMA_WEIGHT))
            .collect();
        Ring {
            continuum: Continuum::new(&buckets),
            positions: endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e.addr, i))
                .collect(),
        }
    }

    /// From the key's point, the first allowed endpoint; the iterator wraps around, so
    /// the walk stops after one turn.
    fn walk(&self, key: &[u8], allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
        let turn = self.positions.len() * POINTS_PER_WEIGHT * KETAMA_WEIGHT as usize;
        self.continuum
            .node_iter(key)
            .take(turn)
            .filter_map(|a| self.positions.get(a).copied())
            .find(|i| allowed(*i))
    }
}

pub struct Balancer {
    endpoints: Box<[EndpointState]>,
    algorithm: Algorithm,
    /// Built on first use: by consistent hashing, and by balanced cookie affinity.
    ring: OnceLock<Ring>,
    next: AtomicUsize,
    max_fails: u32,
    fail_timeout: Duration,
    epoch: Instant,
}

/// What a pick may not return: endpoints a request already tried.
pub type Tried = [usize];

impl Balancer {
    pub fn new(backend: &Backend) -> Self {
        let endpoints: Box<[EndpointState]> = backend
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .map(|e| EndpointState::new(SocketAddr::new(e.address, e.port)))
            .collect();
        let algorithm = match &backend.policy.balance {
            Balance::RoundRobin => Algorithm::RoundRobin,
            Balance::LeastConn => Algorithm::LeastConn,
            Balance::Ewma => Algorithm::Ewma,
            Balance::Random => Algorithm::Random,
            Balance::ConsistentHash(_) => Algorithm::Hash,
            Balance::HashSubset { size, .. } => Algorithm::HashSubset((*size).max(1) as usize),
        };
        Balancer {
            endpoints,
            algorithm,
            ring: OnceLock::new(),
            // Replicas start at different places, so that they do not all hit the first endpoint together.
            next: AtomicUsize::new(fastrand::usize(..)),
            max_fails: backend.policy.max_fails,
            fail_timeout: Duration::from_millis(backend.policy.fail_timeout_ms),
            epoch: Instant::now(),
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoint(&self, index: usize) -> &EndpointState {
        &self.endpoints[index]
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| Ring::new(&self.endpoints))
    }

    /// An endpoint for a request, not one in `tried` and not one health (passive or
    /// active) has taken out, unless nothing else is left: then any (all down still
    /// beats a 503). `key` is the request's hash key, for consistent hashing. `None` when
    /// the backend has no ready endpoint.
    pub fn pick(&self, key: &[u8], tried: &Tried) -> Option<usize> {
        self.pick_by(tried, |allowed| self.choose(key, allowed))
    }

    /// As [`Balancer::pick`], but by the consistent-hash ring whatever the algorithm:
    /// the same key keeps reaching the same endpoint while it is up.
    pub fn pick_on_ring(&self, key: &[u8], tried: &Tried) -> Option<usize> {
        let ring = self.ring();
        self.pick_by(tried, |allowed| ring.walk(key, allowed))
    }

    fn pick_by(
        &self,
        tried: &Tried,
        choose: impl Fn(&dyn Fn(usize) -> bool) -> Option<usize>,
    ) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let fresh = |i: usize| !tried.contains(&i);
        choose(&|i| fresh(i) && self.is_up(i))
            .or_else(|| choose(&fresh))
            .or_else(|| choose(&|_| true))
    }

    /// Neither passive nor active health has taken the endpoint out.
    pub fn is_up(&self, index: usize) -> bool {
        let e = &self.endpoints[index];
        // The clock is read only when the endpoint has been taken out.
        let until = e.down_until_us.load(Ordering::Relaxed);
        !e.checked_down() && (until == 0 || until <= self.now_us())
    }

    /// Records one active health check; returns whether that changed the endpoint's state.
    pub fn record_check(
        &self,
        index: usize,
        healthy: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> bool {
        let e = &self.endpoints[index];
        let streak = e.check_streak.load(Ordering::Relaxed);
        let streak = match (healthy, streak > 0) {
            (true, true) => streak.saturating_add(1),
            (true, false) => 1,
            (false, true) => -1,
            (false, false) => streak.saturating_sub(1),
        };
        e.check_streak.store(streak, Ordering::Relaxed);
        let was_down = e.checked_down();
        let down = if was_down {
            streak < healthy_threshold as i32
        } else {
            streak <= -(unhealthy_threshold as i32)
        };
        if down != was_down {
            e.checked_down.store(down, Ordering::Relaxed);
            tracing::warn!(endpoint = %e.addr, healthy = !down, "active health check changed an endpoint's state");
        }
        down != was_down
    }

    fn choose(&self, key: &[u8], allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        match &self.algorithm {
            Algorithm::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|i| allowed(*i))
            }
            Algorithm::LeastConn => {
                // Ties go round robin, so that an idle backend is not all sent to one endpoint.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| allowed(*i))
                    .min_by_key(|i| self.endpoints[*i].in_flight())
            }
            Algorithm::Random => {
                self.two_choices(allowed, |i| f64::from(self.endpoints[i].in_flight()))
            }
            Algorithm::Ewma => {
                let now = self.now_us();
                self.two_choices(allowed, |i| {
                    let e = &self.endpoints[i];
                    e.ewma_at(now) * f64::from(e.in_flight() + 1)
                })
            }
            Algorithm::Hash => self.ring().walk(key, allowed),
            Algorithm::HashSubset(size) => {
                // The key's subset is that of the endpoint the ring gives it; a request
                // goes to one of its allowed members at random, and when none is allowed
                // (all tried or down) the ring walks on, as plain hashing does.
                let first = self.ring().walk(key, &|_| true)?;
                let start = first / size * size;
                let members = start..(start + size).min(n);
                let allowed_members = members.clone().filter(|i| allowed(*i)).count();
                if allowed_members == 0 {
                    return self.ring().walk(key, allowed);
                }
                members
                    .filter(|i| allowed(*i))
                    .nth(fastrand::usize(..allowed_members))
            }
        }
    }

    /// The lower-scoring of two distinct random allowed endpoints.
    fn two_choices(
        &self,
        allowed: &dyn Fn(usize) -> bool,
        score: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.endpoints.len()).filter(|i| allowed(*i)).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                Some(if score(b) < score(a) { b } else { a })
            }
        }
    }

    /// Counts a request in flight to `index` until the returned guard is dropped.
    pub fn start(&self, index: usize) -> Attempt {
        self.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        // Only EWMA needs the response time; the clock is not read otherwise.
        let started = matches!(self.algorithm, Algorithm::Ewma).then(Instant::now);
        Attempt { index, started }
    }

    /// Ends an attempt: its response time feeds the EWMA, and a failure (could not
    /// connect, or timed out) counts towards taking the endpoint out.
    pub fn finish(&self, attempt: Attempt, failed: bool) {
        let e = &self.endpoints[attempt.index];
        e.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(started) = attempt.started {
            let now = self.now_us();
            let rtt = started.elapsed().as_micros() as f64;
            // Peak EWMA: a slower response counts in full at once; faster ones blend in.
            let decayed = e.ewma_at(now);
            let elapsed = now.saturating_sub(e.ewma_at_us.load(Ordering::Relaxed)) as f64;
            let weight = (-elapsed / EWMA_DECAY.as_micros() as f64).exp();
            let ewma = if rtt > decayed {
                rtt
            } else {
                decayed * weight + rtt * (1.0 - weight)
            };
            e.ewma_us.store(ewma.to_bits(), Ordering::Relaxed);
            e.ewma_at_us.store(now, Ordering::Relaxed);
        }

        if !failed {
            // Read first: a write on every request would bounce the cache line between workers.
            if e.fails.load(Ordering::Relaxed) != 0 {
                e.fails.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.max_fails == 0 {
            return;
        }
        let now = self.now_us();
        let window = self.fail_timeout.as_micros() as u64;
        if now.saturating_sub(e.fail_window_us.load(Ordering::Relaxed)) > window {
            e.fail_window_us.store(now, Ordering::Relaxed);
            e.fails.store(0, Ordering::Relaxed);
        }
        if e.fails.fetch_add(1, Ordering::Relaxed) + 1 >= self.max_fails {
            e.fails.store(0, Ordering::Relaxed);
            e.down_until_us.store(now + window, Ordering::Relaxed);
            tracing::warn!(endpoint = %e.addr, fails = self.max_fails, skipped_for = ?self.fail_timeout, "endpoint failing; skipped for a while");
        }
    }
}

/// One request's use of one endpoint; hand it back to [`Balancer::finish`].
#[derive(Debug)]
#[must_use]
pub struct Attempt {
    pub index: usize,
    /// When it started, for balancers that learn from response times.
    started: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{Endpoint, TrafficPolicy};

    fn backend(last_octets: &[u8], balance: Balance) -> Backend {
        Backend {
            name: "b".into(),
            service: Default::default(),
            endpoints: last_octets
                .iter()
                .map(|l| Endpoint {
                    address: [127, 0, 0, *l].into(),
                    port: 80,
                    ready: *l != 0,
                })
                .collect(),
            upstream: Default::default(),
            policy: TrafficPolicy {
                balance,
                ..Default::default()
            },
        }
    }

    fn ip(b: &Balancer, i: usize) -> u8 {
        match b.endpoint(i).addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            _ => 0,
        }
    }

    #[test]
    fn round_robin_cycles_through_ready_endpoints_and_skips_tried_ones() {
        let b = Balancer::new(&backend(&[1, 0, 3], Balance::RoundRobin));
        let picks: Vec<u8> = (0..4).map(|_| ip(&b, b.pick(b"", &[]).unwrap())).collect();
        assert!(picks == [1, 3, 1, 3] || picks == [3, 1, 3, 1], "{picks:?}");
        let first = b.pick(b"", &[]).unwrap();
        assert_ne!(b.pick(b"", &[first]), Some(first), "a retry goes elsewhere");
        assert_eq!(
            b.pick(b"", &[0, 1]).map(|i| i < 2),
            Some(true),
            "all tried: any endpoint still beats none"
        );
        assert_eq!(
            Balancer::new(&backend(&[0], Balance::RoundRobin)).pick(b"", &[]),
            None
        );
    }

    #[test]
    fn round_robin_over_n_endpoints_gives_each_exactly_k_of_n_times_k_requests() {
        for n in 1..=5u8 {
            let octets: Vec<u8> = (1..=n).collect();
            let b = Balancer::new(&backend(&octets, Balance::RoundRobin));
            let mut counts = [0usize; 6];
            for _ in 0..usize::from(n) * 7 {
                counts[usize::from(ip(&b, b.pick(b"", &[]).unwrap()))] += 1;
            }
            assert!(
                counts[1..=usize::from(n)].iter().all(|c| *c == 7),
                "{n}: {counts:?}"
            );
        }
    }

    #[test]
    fn least_conn_prefers_the_endpoint_with_fewer_requests_in_flight() {
        let b = Balancer::new(&backend(&[1, 2], Balance::LeastConn));
        let busy = b.start(0);
        for _ in 0..10 {
            assert_eq!(b.pick(b"", &[]), Some(1));
        }
        b.finish(busy, false);
    }

    #[test]
    fn ewma_prefers_the_faster_endpoint() {
        let b = Balancer::new(&backend(&[1, 2], Balance::Ewma));
        let slow = b.start(0);
        std::thread::sleep(Duration::from_millis(20));
        b.finish(slow, false);
        let fast = b.start(1);
        b.finish(fast, false);
        assert!((0..20).all(|_| b.pick(b"", &[]) == Some(1)));
    }

    #[test]
    fn failing_endpoints_are_skipped_for_the_fail_timeout_unless_all_are_down() {
        let b = Balancer::new(&backend(&[1, 2], Balance::RoundRobin));
        for _ in 0..3 {
            let a = b.start(0);
            b.finish(a, true);
        }
        assert!(
            (0..10).all(|_| b.pick(b"", &[]) == Some(1)),
            "endpoint 0 is out after 3 failures"
        );
        for _ in 0..3 {
            let a = b.start(1);
            b.finish(a, true);
        }
        assert!(
            b.pick(b"", &[]).is_some(),
            "with every endpoint down, traffic still goes somewhere"
        );
    }

    #[test]
    fn active_checks_take_an_endpoint_out_and_back_after_their_thresholds() {
        let b = Balancer::new(&backend(&[1, 2], Balance::RoundRobin));
        assert!(
            !b.record_check(0, false, 2, 2),
            "one failure is below the threshold"
        );
        assert!(b.record_check(0, false, 2, 2), "the second takes it out");
        assert!((0..10).all(|_| b.pick(b"", &[]) == Some(1)));
        assert!(!b.record_check(0, true, 2, 2));
        assert!(
            !b.record_check(0, false, 2, 2),
            "a failure restarts the run of successes"
        );
        assert!(!b.record_check(0, true, 2, 2));
        assert!(
            b.record_check(0, true, 2, 2),
            "two successes in a row bring it back"
        );
        assert!((0..10).any(|_| b.pick(b"", &[]) == Some(0)));
        b.record_check(1, false, 1, 1);
        b.record_check(0, false, 1, 1);
        assert!(
            b.pick(b"", &[]).is_some(),
            "with every endpoint checked down, traffic still goes somewhere"
        );
    }

    #[test]
    fn the_ring_keeps_a_key_on_one_endpoint_while_it_is_up() {
        let b = Balancer::new(&backend(&[1, 2, 3, 4], Balance::LeastConn));
        let first = b.pick_on_ring(b"session-42", &[]).unwrap();
        assert!((0..20).all(|_| b.pick_on_ring(b"session-42", &[]) == Some(first)));
        let other = b.pick_on_ring(b"session-42", &[first]).unwrap();
        assert_ne!(other, first, "a retry walks on along the ring");
        b.record_check(first, false, 1, 1);
        assert_eq!(
            b.pick_on_ring(b"session-42", &[]),
            Some(other),
            "a checked-down endpoint is walked past to the same next one"
        );
    }

    #[test]
    fn a_hash_subset_spreads_one_key_over_its_subset_only() {
        let key = portico_model::Template::parse("$remote_addr").unwrap();
        let b = Balancer::new(&backend(
            &[1, 2, 3, 4, 5, 6, 7],
            Balance::HashSubset { key, size: 3 },
        ));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            seen.insert(b.pick(b"client-7", &[]).unwrap());
        }
        let subset: Vec<usize> = seen.iter().copied().collect();
        assert!(
            subset == [0, 1, 2] || subset == [3, 4, 5] || subset == [6],
            "one subset, all of it: {subset:?}"
        );
        let other = b.pick(b"client-7", &subset).unwrap();
        assert!(
            !subset.contains(&other),
            "with its subset tried, the ring walks on"
        );
    }

    #[test]
    fn consistent_hashing_moves_only_the_keys_of_a_removed_endpoint() {
        let all: Vec<u8> = (1..=10).collect();
        let before = Balancer::new(&backend(
            &all,
            Balance::ConsistentHash(portico_model::Template::parse("$remote_addr").unwrap()),
        ));
        let after = Balancer::new(&backend(
            &all[..9],
            Balance::ConsistentHash(portico_model::Template::parse("$remote_addr").unwrap()),
        ));
        let keys: Vec<String> = (0..5000).map(|k| format!("client-{k}")).collect();
        let owner = |b: &Balancer, k: &str| ip(b, b.pick(k.as_bytes(), &[]).unwrap());
        let moved = keys
            .iter()
            .filter(|k| owner(&before, k) != owner(&after, k))
            .count();
        let owned_by_removed = keys.iter().filter(|k| owner(&before, k) == 10).count();
        assert_eq!(
            moved, owned_by_removed,
            "only the removed endpoint's keys move"
        );
        assert!(
            moved < keys.len() * 15 / 100,
            "{moved} of {} keys moved",
            keys.len()
        );
        assert!(
            keys.iter().all(|k| owner(&before, k) == owner(&before, k)),
            "a key always maps to one endpoint"
        );
    }
}
