//! Choosing an endpoint of a backend.

use portico_model::Backend;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Round robin over a backend's ready endpoints.
#[derive(Debug)]
pub struct RoundRobin {
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(backend: &Backend) -> Self {
        let endpoints = backend.endpoints.iter().filter(|e| e.ready).map(|e| SocketAddr::new(e.address, e.port)).collect();
        RoundRobin { endpoints, next: AtomicUsize::new(0) }
    }

    /// `None` when the backend has no ready endpoint.
    pub fn pick(&self) -> Option<SocketAddr> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(self.endpoints[0]),
            n => Some(self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::Endpoint;

    #[test]
    fn cycles_through_ready_endpoints_only() {
        let ep = |last: u8, ready| Endpoint { address: [127, 0, 0, last].into(), port: 80, ready };
        let rr = RoundRobin::new(&Backend {
            name: "b".into(),
            endpoints: vec![ep(1, true), ep(2, false), ep(3, true)],
            upstream: Default::default(),
        });
        let picks: Vec<_> = (0..4).map(|_| rr.pick().unwrap().ip().to_string()).collect();
        assert_eq!(picks, ["127.0.0.1", "127.0.0.3", "127.0.0.1", "127.0.0.3"]);
        let empty = RoundRobin::new(&Backend { name: "e".into(), endpoints: vec![ep(1, false)], upstream: Default::default() });
        assert_eq!(empty.pick(), None);
    }
}
