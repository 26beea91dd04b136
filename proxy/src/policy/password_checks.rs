//! bcrypt comparisons off the proxy's worker threads. A comparison takes milliseconds to a
//! quarter of a second by design (cost 12 is the most translation accepts, record 0012);
//! run on a worker it would hold every other request of that thread. They run on tokio's
//! blocking threads, a few at once; past a bounded queue a request is answered 503 rather
//! than let a flood of wrong passwords grow the queue without end.

use crate::policy::access::PendingPassword;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct PasswordChecks {
    running: Arc<Semaphore>,
    /// Comparisons waiting for or holding a permit.
    admitted: AtomicUsize,
    max_admitted: usize,
}

impl PasswordChecks {
    /// At most `concurrent` comparisons at once, and `queue` more waiting.
    pub fn new(concurrent: usize, queue: usize) -> Self {
        let concurrent = concurrent.max(1);
        PasswordChecks {
            running: Arc::new(Semaphore::new(concurrent)),
            admitted: AtomicUsize::new(0),
            max_admitted: concurrent + queue,
        }
    }

    /// Whether the password matches the hash; `None` when the queue is full.
    pub async fn verify(&self, pending: &PendingPassword) -> Option<bool> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.max_admitted {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        /// Gives the place back however the request ends (a client gone mid-wait too).
        struct Admitted<'a>(&'a AtomicUsize);
        impl Drop for Admitted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _admitted = Admitted(&self.admitted);
        let permit = Arc::clone(&self.running).acquire_owned().await.ok()?;
        let (password, hash) = (pending.password.clone(), pending.hash.clone());
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        Some(matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::access::PendingPassword;

    fn pending(password: &str, hash: &str) -> PendingPassword {
        PendingPassword::for_test(password, hash)
    }

    #[tokio::test]
    async fn compares_off_the_worker_and_refuses_past_the_queue() {
        let hash = bcrypt::hash_with_salt("right", 4, [1u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let checks = PasswordChecks::new(1, 1);
        assert_eq!(checks.verify(&pending("right", &hash)).await, Some(true));
        assert_eq!(checks.verify(&pending("wrong", &hash)).await, Some(false));

        // Hold the one running place and the one queued place: a third is refused.
        let slow = bcrypt::hash_with_salt("x", 10, [2u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let (a, b) = (pending("x", &slow), pending("y", &slow));
        let first = checks.verify(&a);
        let second = checks.verify(&b);
        let third = async {
            tokio::task::yield_now().await;
            checks.verify(&pending("right", &hash)).await
        };
        let (first, second, third) = tokio::join!(first, second, third);
        assert_eq!((first, second, third), (Some(true), Some(false), None));
        assert_eq!(
            checks.verify(&pending("right", &hash)).await,
            Some(true),
            "places are given back"
        );
    }
}
