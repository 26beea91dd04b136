//! Ingress status: the addresses clients reach the proxies at, written to
//! `status.loadBalancer.ingress` of every admitted Ingress, and cleared from Ingresses
//! that stop being admitted. Only the leader writes, and only what differs.

use crate::metrics::ControllerMetrics;
use crate::sync::Outcome;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use portico_translate::ObjectKey;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Where the published addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishSource {
    /// `--publish-status-address`: IPs or host names, as given.
    Addresses(Vec<String>),
    /// `--publish-service NS/NAME`: that Service's load-balancer ingress, else its external IPs.
    Service(ObjectKey),
}

/// One published address, in the form compared and written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    pub ip: Option<String>,
    pub hostname: Option<String>,
}

impl Address {
    /// An IP if `text` parses as one, else a host name.
    pub fn parse(text: &str) -> Address {
        match text.parse::<IpAddr>() {
            Ok(ip) => Address {
                ip: Some(ip.to_string()),
                hostname: None,
            },
            Err(_) => Address {
                ip: None,
                hostname: Some(text.to_string()),
            },
        }
    }
}

/// Sorted, distinct addresses from a load-balancer status list (a Service's and an
/// Ingress's have different types with the same two fields), skipping empty entries.
fn balancer_addresses<T>(
    list: Option<&Vec<T>>,
    fields: impl Fn(&T) -> (&Option<String>, &Option<String>),
) -> Vec<Address> {
    let mut addresses: Vec<Address> = list
        .into_iter()
        .flatten()
        .map(fields)
        .filter(|(ip, hostname)| ip.is_some() || hostname.is_some())
        .map(|(ip, hostname)| Address {
            ip: ip.clone(),
            hostname: hostname.clone(),
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The addresses of the publish Service (`None` when it does not exist).
pub fn service_addresses(service: Option<&Service>) -> Vec<Address> {
    let Some(service) = service else {
        return Vec::new();
    };
    let list = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let balancer = balancer_addresses(list, |i| (&i.ip, &i.hostname));
    if !balancer.is_empty() {
        return balancer;
    }
    let mut external: Vec<Address> = service
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| Address::parse(ip))
        .collect();
    external.sort();
    external.dedup();
    external
}

fn current_addresses(ingress: &Ingress) -> Vec<Address> {
    let list = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    balancer_addresses(list, |i| (&i.ip, &i.hostname))
}

/// What status an Ingress should have, if it should change: `Some(addresses)` to write
/// (empty clears), `None` to leave it.
pub fn status_change(
    ingress: &Ingress,
    admitted: bool,
    wrote_before: bool,
    desired: &[Address],
) -> Option<Vec<Address>> {
    let current = current_addresses(ingress);
    let wanted = if admitted {
        desired.to_vec()
    } else if wrote_before || (!current.is_empty() && current == desired) {
        // Ours, and no longer admitted: clear what we published.
        Vec::new()
    } else {
        return None;
    };
    (current != wanted).then_some(wanted)
}

pub struct StatusWriter {
    client: Client,
    metrics: std::sync::Arc<ControllerMetrics>,
    /// Ingresses this process gave a status to, so it clears only its own.
    written: BTreeSet<ObjectKey>,
}

impl StatusWriter {
    pub fn new(client: Client, metrics: std::sync::Arc<ControllerMetrics>) -> Self {
        StatusWriter {
            client,
            metrics,
            written: BTreeSet::new(),
        }
    }

    /// Brings every Ingress's status in line with `outcome`; false if a write failed
    /// (the caller tries again later).
    pub async fn sync(&mut self, outcome: &Outcome, desired: &[Address]) -> bool {
        let mut ok = true;
        for (key, ingress) in &outcome.state.ingresses {
            let admitted = outcome.admitted.binary_search(key).is_ok();
            let Some(wanted) =
                status_change(ingress, admitted, self.written.contains(key), desired)
            else {
                if admitted {
                    self.written.insert(key.clone());
                }
                continue;
            };
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &key.0);
            let list: Vec<IngressLoadBalancerIngress> = wanted
                .iter()
                .map(|a| IngressLoadBalancerIngress {
                    ip: a.ip.clone(),
                    hostname: a.hostname.clone(),
                    ports: None,
                })
                .collect();
            let value = if list.is_empty() {
                serde_json::Value::Null
            } else {
                json!(list)
            };
            let patch = json!({"status": {"loadBalancer": {"ingress": value}}});
            match api
                .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.metrics.status_updates.with_label_values(&["ok"]).inc();
                    tracing::info!(ingress = %format!("{}/{}", key.0, key.1), addresses = ?wanted, "status updated");
                    if admitted {
                        self.written.insert(key.clone());
                    } else {
                        self.written.remove(key);
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    self.metrics
                        .status_updates
                        .with_label_values(&["error"])
                        .inc();
                    tracing::warn!(ingress = %format!("{}/{}", key.0, key.1), error = %e, "status update failed");
                    ok = false;
                }
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerStatus, IngressStatus};

    fn ingress_with(addresses: &[&str]) -> Ingress {
        let list = addresses
            .iter()
            .map(|a| {
                let a = Address::parse(a);
                IngressLoadBalancerIngress {
                    ip: a.ip,
                    hostname: a.hostname,
                    ports: None,
                }
            })
            .collect::<Vec<_>>();
        Ingress {
            status: (!list.is_empty()).then_some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(list),
                }),
            }),
            ..Default::default()
        }
    }

    fn addrs(list: &[&str]) -> Vec<Address> {
        let mut v: Vec<Address> = list.iter().map(|a| Address::parse(a)).collect();
        v.sort();
        v
    }

    #[test]
    fn writes_only_what_differs_and_clears_only_its_own() {
        let ours = addrs(&["10.0.0.1", "lb.example.com"]);
        // Admitted: written when it differs, left alone when already right.
        assert_eq!(
            status_change(&ingress_with(&[]), true, false, &ours),
            Some(ours.clone())
        );
        assert_eq!(
            status_change(
                &ingress_with(&["lb.example.com", "10.0.0.1"]),
                true,
                false,
                &ours
            ),
            None
        );
        assert_eq!(
            status_change(&ingress_with(&["10.9.9.9"]), true, false, &ours),
            Some(ours.clone())
        );
        // No longer admitted: cleared if it carries our addresses or we wrote it.
        assert_eq!(
            status_change(
                &ingress_with(&["10.0.0.1", "lb.example.com"]),
                false,
                false,
                &ours
            ),
            Some(vec![])
        );
        assert_eq!(
            status_change(&ingress_with(&["10.0.0.7"]), false, true, &ours),
            Some(vec![])
        );
        // Another controller's Ingress is never touched.
        assert_eq!(
            status_change(&ingress_with(&["10.0.0.7"]), false, false, &ours),
            None
        );
        assert_eq!(status_change(&ingress_with(&[]), false, false, &ours), None);
    }

    #[test]
    fn a_publish_service_gives_its_balancer_addresses_else_its_external_ips() {
        let mut service = Service {
            spec: Some(ServiceSpec {
                external_ips: Some(vec!["192.0.2.9".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(service_addresses(Some(&service)), addrs(&["192.0.2.9"]));
        service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        hostname: Some("a.elb.example".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("203.0.113.5".into()),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        });
        assert_eq!(
            service_addresses(Some(&service)),
            addrs(&["203.0.113.5", "a.elb.example"])
        );
        assert_eq!(service_addresses(None), vec![]);
    }
}
