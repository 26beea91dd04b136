//! The sync loop: waits for state changes, coalesces bursts, translates, and publishes a
//! new snapshot only when the translation result actually changed.

use crate::metrics::ControllerMetrics;
use portico_model::Snapshot;
use portico_translate::{ClusterState, Diagnostic, ObjectKey, Options, ResolvedNames, Translator};
use portico_wire::SnapshotPublisher;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;

/// Snapshot versions that keep increasing across controller restarts: milliseconds since
/// the epoch, or one more than the last if the clock has not moved on.
#[derive(Debug, Default)]
pub struct VersionClock {
    last: u64,
}

impl VersionClock {
    pub fn next(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last = now.max(self.last + 1);
        self.last
    }
}

/// What one translation decided about the objects it read, for status and Events.
#[derive(Debug)]
pub struct Outcome {
    pub state: Arc<ClusterState>,
    /// Sorted.
    pub admitted: Vec<ObjectKey>,
    pub diagnostics: Vec<Diagnostic>,
    /// What Portico says of the Gateway API objects it serves.
    pub gateway_status: portico_translate::gateway::status::GatewayApiStatus,
}

pub struct SyncLoop {
    pub options: Options,
    /// Quiet time that ends a burst of changes (see [`Holdoff`]).
    pub debounce: Duration,
    /// Longest a continuous stream of changes may delay a snapshot.
    pub ceiling: Duration,
    pub publisher: SnapshotPublisher,
    pub outcomes: watch::Sender<Option<Arc<Outcome>>>,
    pub metrics: Arc<ControllerMetrics>,
}

impl SyncLoop {
    /// Translates each settled state, and again whenever the ExternalName Services' names
    /// resolve differently (`names`).
    pub async fn run(
        self,
        mut states: watch::Receiver<Option<Arc<ClusterState>>>,
        mut names: watch::Receiver<Arc<ResolvedNames>>,
    ) {
        let mut clock = VersionClock::default();
        let mut translator = Translator::new(self.options.clone());
        // The last snapshot published, unstamped so that the next translation compares
        // equal when nothing changed, and its version.
        let mut last: Option<(Snapshot, u64)> = None;
        let mut reported = BTreeSet::new();
        let mut resolving = true;
        let mut holdoff = Holdoff::new(self.debounce, self.ceiling);
        loop {
            tokio::select! {
                changed = states.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    holdoff.wait(&mut states).await;
                }
                changed = names.changed(), if resolving => {
                    // No resolver (it stopped): translations go on with the last names.
                    resolving = changed.is_ok();
                    if !resolving {
                        continue;
                    }
                }
            }
            translator.set_resolved_names(names.borrow_and_update().clone());
            let Some(state) = states.borrow_and_update().clone() else {
                continue;
            };

            let started = Instant::now();
            // Translation is CPU work of up to a few hundred milliseconds on big clusters:
            // let the runtime move the socket writers and the source to another worker meanwhile.
            let translation = tokio::task::block_in_place(|| translator.translate_shared(&state));
            let translated = started.elapsed();
            self.metrics.translations.inc();
            self.metrics.set_diagnostics(&translation.diagnostics);
            report_diagnostics(&mut reported, &translation.diagnostics);
            self.outcomes.send_replace(Some(Arc::new(Outcome {
                state: state.clone(),
                admitted: translation.admitted.clone(),
                diagnostics: translation.diagnostics.clone(),
                gateway_status: translation.gateway_status.clone(),
            })));
            let mut translation = translation;
            translation.snapshot.diagnostics = dashboard_diagnostics(&translation.diagnostics);
            let comparing = started.elapsed();
            if last
                .as_ref()
                .is_some_and(|(s, _)| *s == translation.snapshot)
            {
                tracing::debug!("translation unchanged; no new snapshot");
                continue;
            }
            let compared = started.elapsed();
            // Stamp; publish the delta from the last snapshot, with the whole one encoded
            // when a proxy that connects or lacks the base needs it, or (without a base)
            // the whole one now; keep the unstamped snapshot to compare the next one with.
            let mut snapshot = translation.snapshot;
            snapshot.version = clock.next();
            let version = snapshot.version;
            let delta = tokio::task::block_in_place(|| {
                last.as_ref().and_then(|(base, base_version)| {
                    Some((*base_version, snapshot.delta_from(base)?.to_bytes()))
                })
            });
            let delta_bytes = delta.as_ref().map(|(_, d)| d.len());
            let bytes = match delta {
                Some((base_version, delta)) => {
                    let whole = snapshot.clone();
                    let metrics = self.metrics.clone();
                    self.publisher
                        .publish_delta(version, base_version, delta, move || {
                            let payload = whole.to_bytes();
                            metrics.snapshot_bytes.set(payload.len() as i64);
                            payload
                        });
                    None
                }
                None => {
                    let payload = tokio::task::block_in_place(|| snapshot.to_bytes());
                    self.metrics.snapshot_bytes.set(payload.len() as i64);
                    let bytes = payload.len();
                    self.publisher.publish(version, payload);
                    Some(bytes)
                }
            };
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            tracing::info!(
                version = snapshot.version,
                bytes,
                delta_bytes,
                hosts = snapshot.virtual_hosts.len(),
                admitted = translation.admitted.len(),
                diagnostics = translation.diagnostics.len(),
                reprocessed = translator.reprocessed(),
                translate_ms = ms(translated),
                compare_ms = ms(compared - comparing),
                publish_ms = ms(started.elapsed() - compared),
                build_ms = ms(started.elapsed()),
                "snapshot published"
            );
            self.metrics.snapshots_published.inc();
            self.metrics
                .build_seconds
                .observe(started.elapsed().as_secs_f64());
            snapshot.version = 0;
            last = Some((snapshot, version));
        }
    }
}

/// When a change is translated (decision record 0023): at once, unless the change before
/// it came less than `debounce` earlier. Then the two are taken as a burst, which waits
/// until no change arrived for `debounce` (or `ceiling` passed), so that a burst becomes
/// two snapshots (its first change's, and the rest's) rather than one per object, while an
/// isolated change reaches the proxies without waiting.
pub(crate) struct Holdoff {
    debounce: Duration,
    ceiling: Duration,
    /// When the last change was seen.
    last_change: Option<Instant>,
}

impl Holdoff {
    pub fn new(debounce: Duration, ceiling: Duration) -> Self {
        Holdoff {
            debounce,
            ceiling,
            last_change: None,
        }
    }

    /// Called when a change arrived: returns when it should be translated.
    pub async fn wait<T>(&mut self, changes: &mut watch::Receiver<T>) {
        let now = Instant::now();
        let burst = self.last_change.is_some_and(|t| now - t < self.debounce);
        self.last_change = Some(if burst {
            settle(changes, self.debounce, self.ceiling).await
        } else {
            now
        });
    }
}

/// Waits until no change arrived for `debounce`, or `ceiling` passed since the wait began
/// (a change had arrived just before it), so that a burst of changes becomes one snapshot.
/// Returns when the last change was seen (the wait's start if none came).
async fn settle<T>(
    changes: &mut watch::Receiver<T>,
    debounce: Duration,
    ceiling: Duration,
) -> Instant {
    let started = Instant::now();
    let deadline = started + ceiling;
    let mut last = started;
    loop {
        let quiet_until = (Instant::now() + debounce).min(deadline);
        match tokio::time::timeout_at(quiet_until, changes.changed()).await {
            Ok(Ok(())) => {
                last = Instant::now();
                if last >= deadline {
                    return last;
                }
            }
            _ => return last,
        }
    }
}

/// Logs diagnostics that appeared or went away, so a steady state stays quiet.
fn report_diagnostics(reported: &mut BTreeSet<Diagnostic>, current: &[Diagnostic]) {
    let current: BTreeSet<Diagnostic> = current.iter().cloned().collect();
    for d in current.difference(reported) {
        tracing::warn!(object = %d.object, reason = %d.reason, message = %d.message, "configuration problem");
    }
    for d in reported.difference(&current) {
        tracing::info!(object = %d.object, reason = %d.reason, "configuration problem resolved");
    }
    *reported = current;
}

/// The most diagnostics a snapshot carries to the proxy's dashboard; the controller's
/// log, Events and `--check` have them all.
const DASHBOARD_DIAGNOSTICS: usize = 1_000;

fn dashboard_diagnostics(diagnostics: &[Diagnostic]) -> Vec<portico_model::Diagnostic> {
    diagnostics
        .iter()
        .take(DASHBOARD_DIAGNOSTICS)
        .map(|d| portico_model::Diagnostic {
            object: d.object.to_string(),
            reason: d.reason.to_string(),
            message: d.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(100);
    const CEILING: Duration = Duration::from_secs(1);

    /// A channel that receives a change at each of these offsets (ms) from now, and the
    /// task sending them (abort it when done).
    fn changes_at(offsets: &[u64]) -> (watch::Receiver<u64>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(0u64);
        let start = Instant::now();
        let offsets = offsets.to_vec();
        let sender = tokio::spawn(async move {
            for (i, at) in offsets.into_iter().enumerate() {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                tx.send_replace(i as u64);
            }
            // Keep the sender, so the channel stays open until the task is aborted.
            std::future::pending::<()>().await;
        });
        (rx, sender)
    }

    /// How long `settle` waits when changes arrive at these offsets (ms) after it begins;
    /// the clock is tokio's, paused, so the answer is exact.
    async fn settled_after(offsets: &[u64]) -> Duration {
        let start = Instant::now();
        let (mut rx, sender) = changes_at(offsets);
        settle(&mut rx, DEBOUNCE, CEILING).await;
        sender.abort();
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_debounce_ends_the_wait() {
        assert_eq!(settled_after(&[]).await, DEBOUNCE);
    }

    #[tokio::test(start_paused = true)]
    async fn each_change_in_a_burst_starts_the_quiet_time_again() {
        let ms = Duration::from_millis;
        assert_eq!(settled_after(&[50]).await, ms(150));
        assert_eq!(settled_after(&[50, 120, 210]).await, ms(310));
        // A change just after the quiet time is the next burst's.
        assert_eq!(settled_after(&[150]).await, DEBOUNCE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_continuous_stream_of_changes_waits_no_longer_than_the_ceiling() {
        let every_50_ms: Vec<u64> = (1..=100).map(|i| i * 50).collect();
        assert_eq!(settled_after(&every_50_ms).await, CEILING);
    }

    /// How long `holdoff` holds a change that arrives now, with more at `more_at` (ms).
    async fn held(holdoff: &mut Holdoff, more_at: &[u64]) -> Duration {
        let change = Instant::now();
        let (mut rx, sender) = changes_at(more_at);
        holdoff.wait(&mut rx).await;
        sender.abort();
        change.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn an_isolated_change_is_translated_at_once() {
        let mut holdoff = Holdoff::new(DEBOUNCE, CEILING);
        // The first change, even with a burst behind it (the burst makes the next snapshot).
        assert_eq!(held(&mut holdoff, &[10, 20]).await, Duration::ZERO);
        tokio::time::sleep(DEBOUNCE).await;
        assert_eq!(held(&mut holdoff, &[]).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_close_behind_another_waits_for_their_burst_to_go_quiet() {
        let ms = Duration::from_millis;
        let mut holdoff = Holdoff::new(DEBOUNCE, CEILING);
        assert_eq!(held(&mut holdoff, &[]).await, Duration::ZERO);
        tokio::time::sleep(ms(30)).await;
        assert_eq!(held(&mut holdoff, &[]).await, DEBOUNCE);
        // The burst went quiet a debounce ago: the next change 10 ms later is not part of it.
        tokio::time::sleep(ms(10)).await;
        assert_eq!(held(&mut holdoff, &[]).await, Duration::ZERO);
        // Still bursting: the changes at 50 and 120 ms keep it going.
        tokio::time::sleep(ms(30)).await;
        assert_eq!(held(&mut holdoff, &[50, 120]).await, ms(220));
    }

    #[test]
    fn versions_increase_even_within_one_millisecond() {
        let mut c = VersionClock::default();
        let a = c.next();
        let b = c.next();
        let d = c.next();
        assert!(a > 1_600_000_000_000 && b > a && d > b);
    }
}
