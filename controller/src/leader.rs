//! Leader election on a `coordination.k8s.io` Lease, as client-go's leaderelection does
//! it: the holder renews the Lease every retry period; another controller takes it over
//! once it has seen the same record, unrenewed, for longer than the lease duration (by its
//! own clock, so clock skew between nodes does not matter). Every write carries the
//! resourceVersion it read, so of two controllers racing for one Lease exactly one wins
//! (the other gets 409 Conflict).
//!
//! Only the leader writes Ingress status and Events; every replica serves snapshots.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;

/// What a Lease says about who holds it: the holder and its last renewal.
type LeaseRecord = (Option<String>, Option<MicroTime>);

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The last holder and renew time seen, and when this controller first saw it.
    observed: Option<(LeaseRecord, Instant)>,
}

fn now() -> MicroTime {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(micros).expect("a time after 1970"))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, name: String, identity: String, duration: Duration) -> Self {
        LeaderElection {
            api,
            name,
            identity,
            duration,
            observed: None,
        }
    }

    /// How often the leader renews and followers look: a fifth of the lease duration.
    fn retry_period(&self) -> Duration {
        self.duration / 5
    }

    /// Leads, or follows, until the task is dropped; `leading` says which, at all times.
    pub async fn run(&mut self, leading: &watch::Sender<bool>) {
        // A leader that cannot renew for this long stops acting as one, before anyone
        // else may take the Lease over (at `duration`).
        let renew_deadline = self.duration * 2 / 3;
        let mut last_renewal: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = Some(Instant::now());
                    if !*leading.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became the leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!(identity = %self.identity, "lost the lease to another controller");
                    }
                    leading.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election: lease request failed");
                    if *leading.borrow()
                        && last_renewal.is_none_or(|t| t.elapsed() > renew_deadline)
                    {
                        tracing::warn!(identity = %self.identity, "could not renew the lease in time; no longer leading");
                        leading.send_replace(false);
                    }
                }
            }
            let jitter = Duration::from_millis(fastrand::u64(
                0..=self.retry_period().as_millis() as u64 / 5,
            ));
            tokio::time::sleep(self.retry_period() + jitter).await;
        }
    }

    /// One round: true when this controller holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        let seen_since = match &self.observed {
            Some((r, since)) if *r == record => *since,
            _ => {
                let since = Instant::now();
                self.observed = Some((record, since));
                since
            }
        };
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let held_for =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(0) as u64);
        let expired = holder.is_none() || seen_since.elapsed() > held_for;
        if !ours && !expired {
            return Ok(false);
        }
        let mut renewed = lease;
        let transitions = spec.lease_transitions.unwrap_or(0);
        renewed.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if ours { spec.acquire_time } else { Some(now()) },
            renew_time: Some(now()),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &renewed)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, so another controller takes over at once instead of after
    /// the lease duration. Used on a clean shutdown.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "releasing the lease failed"),
        }
    }
}
