//! Steady client load for fault tests: requests in a loop on the harness's client while
//! something is broken around the proxy, counting the answers that did not come from the
//! expected backend.

use crate::harness::Portico;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Requests in a loop from a task until stopped, counting those not answered by `expected`.
pub struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    pub fn start(portico: &Portico, hosts: Vec<String>, expected: &'static str) -> Load {
        let (stop, failures) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (client, stop2, failures2) = (portico.client.clone(), stop.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let host = &hosts[n as usize % hosts.len()];
                if !client
                    .get(host, "/")
                    .await
                    .is_ok_and(|r| r.answered_by() == expected)
                {
                    failures2.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            n
        });
        Load {
            stop,
            failures,
            task,
        }
    }

    /// Stops it: (requests, failures).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let requests = self.task.await.expect("load task");
        (requests, self.failures.load(Ordering::Relaxed))
    }
}
