//! What only the leader does after each translation: Events for what changed, and Ingress
//! status brought in line with the published addresses. Followers wait; a follower that
//! becomes leader catches up with the latest translation at once.

use crate::events::EventReporter;
use crate::gateway_status::GatewayStatusWriter;
use crate::status::{service_addresses, Address, PublishSource, StatusWriter};
use crate::sync::Outcome;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// After a failed status write, how long until the next attempt.
const RETRY: Duration = Duration::from_secs(5);

/// The addresses to publish: `None` until known (the publish Service not yet listed).
pub type Addresses = watch::Receiver<Option<Vec<Address>>>;

pub struct LeaderDuties {
    pub events: EventReporter,
    /// With no `--publish-*` flag, Ingress status is not written at all.
    pub status: Option<(StatusWriter, Addresses)>,
    /// Gateway API status is written whatever the flags (with no addresses without them).
    pub gateway_status: GatewayStatusWriter,
}

impl LeaderDuties {
    pub async fn run(
        mut self,
        mut leading: watch::Receiver<bool>,
        mut outcomes: watch::Receiver<Option<Arc<Outcome>>>,
    ) {
        let mut retry_at: Option<Instant> = None;
        loop {
            let addresses_changed = async {
                match self.status.as_mut() {
                    Some((_, addresses)) => addresses.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = leading.changed() => if r.is_err() { return },
                r = outcomes.changed() => if r.is_err() { return },
                ok = addresses_changed => if !ok { return },
                _ = retry => {}
            }
            retry_at = None;
            if !*leading.borrow_and_update() {
                self.events.reset();
                continue;
            }
            let Some(outcome) = outcomes.borrow_and_update().clone() else {
                continue;
            };
            self.events.report(&outcome).await;
            let mut written = true;
            let mut published = Some(Vec::new());
            if let Some((writer, addresses)) = self.status.as_mut() {
                published = addresses.borrow_and_update().clone();
                if let Some(desired) = &published {
                    written &= writer.sync(&outcome, desired).await;
                }
            }
            // Until the publish Service is listed, Gateways wait for their addresses.
            if let Some(desired) = &published {
                written &= self.gateway_status.sync(&outcome, desired).await;
            }
            if !written {
                retry_at = Some(Instant::now() + RETRY);
            }
        }
    }
}

/// The published addresses for `source`: fixed ones at once, or those of the publish
/// Service, kept current by a watch of that one Service (the task runs until dropped).
pub fn publish_addresses(
    client: &Client,
    source: &PublishSource,
) -> (Addresses, Option<tokio::task::JoinHandle<()>>) {
    match source {
        PublishSource::Addresses(list) => {
            let mut addresses: Vec<Address> = list.iter().map(|a| Address::parse(a)).collect();
            addresses.sort();
            addresses.dedup();
            let (tx, rx) = watch::channel(Some(addresses));
            // Keep the sender alive so the receiver never reports a closed channel.
            let task = tokio::spawn(async move {
                tx.closed().await;
            });
            (rx, Some(task))
        }
        PublishSource::Service((namespace, name)) => {
            let (tx, rx) = watch::channel(None);
            let api: Api<Service> = Api::namespaced(client.clone(), namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let target = format!("{namespace}/{name}");
            let task = tokio::spawn(async move {
                let mut events = watcher(api, config).default_backoff().boxed();
                let mut listing: Option<Service> = None;
                let mut current: Option<Service>;
                while let Some(event) = events.next().await {
                    match event {
                        // Nothing is sent until the list is complete.
                        Ok(watcher::Event::Init) => {
                            listing = None;
                            continue;
                        }
                        Ok(watcher::Event::InitApply(s)) => {
                            listing = Some(s);
                            continue;
                        }
                        Ok(watcher::Event::InitDone) => {
                            current = listing.take();
                            if current.is_none() {
                                tracing::warn!(service = %target, "--publish-service does not exist; Ingress status will be empty");
                            }
                        }
                        Ok(watcher::Event::Apply(s)) => current = Some(s),
                        Ok(watcher::Event::Delete(_)) => current = None,
                        Err(e) => {
                            tracing::warn!(service = %target, error = %e, "watching the publish Service failed; resuming");
                            continue;
                        }
                    }
                    tx.send_if_modified(|old| {
                        let new = Some(service_addresses(current.as_ref()));
                        let changed = *old != new;
                        *old = new;
                        changed
                    });
                }
            });
            (rx, Some(task))
        }
    }
}
