//! Gateway API status: what the translator decided about each GatewayClass, Gateway
//! (its listeners, with the published addresses) and HTTPRoute parent, written by the
//! leader, only where it differs from what the object carries. A condition keeps its
//! `lastTransitionTime` while its status stays the same; route parents of other
//! controllers are left as they are.

use crate::metrics::ControllerMetrics;
use crate::status::Address;
use crate::sync::Outcome;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use portico_translate::gateway::status::{GatewayState, RouteParentState, StatusCondition};
use portico_translate::gateway::types::{
    Gateway, GatewayAddress, GatewayClass, GatewayStatus, GrpcRoute, HttpRoute, ListenerStatus,
    RouteParentStatus, RouteStatus, TcpRoute, TlsRoute, UdpRoute,
};
use portico_translate::gateway::GATEWAY_CONTROLLER_NAME;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// `conditions`, with the transition times of `current` kept where a condition's status
/// did not change, and `now` elsewhere.
pub fn conditions(wanted: &[StatusCondition], current: &[Condition], now: &Time) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" };
            let since = current
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.type_.to_string(),
                status: status.to_string(),
                reason: w.reason.to_string(),
                message: w.message.clone(),
                observed_generation: w.observed_generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Whether two condition lists say the same, transition times aside.
fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// The status a Gateway should carry.
pub fn gateway_status(
    state: &GatewayState,
    current: Option<&GatewayStatus>,
    addresses: &[Address],
    now: &Time,
) -> GatewayStatus {
    let empty = GatewayStatus::default();
    let current = current.unwrap_or(&empty);
    GatewayStatus {
        addresses: addresses
            .iter()
            .map(|a| match (&a.ip, &a.hostname) {
                (Some(ip), _) => GatewayAddress {
                    type_: Some("IPAddress".into()),
                    value: ip.clone(),
                },
                (None, h) => GatewayAddress {
                    type_: Some("Hostname".into()),
                    value: h.clone().unwrap_or_default(),
                },
            })
            .collect(),
        conditions: conditions(&state.conditions, &current.conditions, now),
        listeners: state
            .listeners
            .iter()
            .map(|l| {
                let before = current
                    .listeners
                    .iter()
                    .find(|c| c.name == l.name)
                    .map_or(&[][..], |c| c.conditions.as_slice());
                ListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: l.supported_kinds.clone(),
                    attached_routes: l.attached_routes,
                    conditions: conditions(&l.conditions, before, now),
                }
            })
            .collect(),
    }
}

fn same_gateway_status(a: &GatewayStatus, b: &GatewayStatus) -> bool {
    a.addresses == b.addresses
        && same_conditions(&a.conditions, &b.conditions)
        && a.listeners.len() == b.listeners.len()
        && a.listeners.iter().zip(&b.listeners).all(|(x, y)| {
            x.name == y.name
                && x.supported_kinds == y.supported_kinds
                && x.attached_routes == y.attached_routes
                && same_conditions(&x.conditions, &y.conditions)
        })
}

/// The parents a route should list: Portico's as decided, other controllers' as they are.
pub fn route_status(
    parents: &[RouteParentState],
    current: Option<&RouteStatus>,
    now: &Time,
) -> RouteStatus {
    let empty = RouteStatus::default();
    let current = current.unwrap_or(&empty);
    let mut out: Vec<RouteParentStatus> = current
        .parents
        .iter()
        .filter(|p| p.controller_name != GATEWAY_CONTROLLER_NAME)
        .cloned()
        .collect();
    for p in parents {
        let before = current
            .parents
            .iter()
            .find(|c| c.controller_name == GATEWAY_CONTROLLER_NAME && c.parent_ref == p.parent)
            .map_or(&[][..], |c| c.conditions.as_slice());
        out.push(RouteParentStatus {
            parent_ref: p.parent.clone(),
            controller_name: GATEWAY_CONTROLLER_NAME.to_string(),
            conditions: conditions(&p.conditions, before, now),
        });
    }
    RouteStatus { parents: out }
}

fn same_route_status(a: &RouteStatus, b: &RouteStatus) -> bool {
    a.parents.len() == b.parents.len()
        && a.parents.iter().zip(&b.parents).all(|(x, y)| {
            x.parent_ref == y.parent_ref
                && x.controller_name == y.controller_name
                && same_conditions(&x.conditions, &y.conditions)
        })
}

pub struct GatewayStatusWriter {
    client: Client,
    metrics: Arc<ControllerMetrics>,
    /// What was last written to each object (transition times left out), and the
    /// object's resourceVersion when it was: until the watch brings the object back
    /// changed, the same status is not written again.
    written: HashMap<String, (Option<String>, serde_json::Value)>,
}

/// A status patch without its transition times, to compare what two writes say.
fn fingerprint(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "lastTransitionTime")
            .map(|(k, v)| (k.clone(), fingerprint(v)))
            .collect(),
        serde_json::Value::Array(items) => items.iter().map(fingerprint).collect(),
        other => other.clone(),
    }
}

impl GatewayStatusWriter {
    pub fn new(client: Client, metrics: Arc<ControllerMetrics>) -> Self {
        GatewayStatusWriter {
            client,
            metrics,
            written: HashMap::new(),
        }
    }

    /// Brings the status of every Gateway API object Portico serves in line with
    /// `outcome`; false if a write failed (the caller tries again later).
    pub async fn sync(&mut self, outcome: &Outcome, addresses: &[Address]) -> bool {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let status = &outcome.gateway_status;
        let mut ok = true;
        for (name, wanted) in &status.classes {
            let Some(class) = outcome.state.gateway_classes.get(name) else {
                continue;
            };
            let current = class
                .status
                .as_ref()
                .map_or(&[][..], |s| s.conditions.as_slice());
            let desired = conditions(wanted, current, &now);
            if same_conditions(&desired, current) {
                continue;
            }
            let api: Api<GatewayClass> = Api::all(self.client.clone());
            let patch = json!({"status": {"conditions": desired}});
            let rv = class.metadata.resource_version.as_deref();
            ok &= self
                .write(api, name, &patch, ("GatewayClass", name), rv)
                .await;
        }
        for (key, wanted) in &status.gateways {
            let Some(gateway) = outcome.state.gateways.get(key) else {
                continue;
            };
            let desired = gateway_status(wanted, gateway.status.as_ref(), addresses, &now);
            if gateway
                .status
                .as_ref()
                .is_some_and(|c| same_gateway_status(&desired, c))
            {
                continue;
            }
            let api: Api<Gateway> = Api::namespaced(self.client.clone(), &key.0);
            let patch = json!({"status": desired});
            let object = format!("{}/{}", key.0, key.1);
            let rv = gateway.metadata.resource_version.as_deref();
            ok &= self
                .write(api, &key.1, &patch, ("Gateway", &object), rv)
                .await;
        }
        // Routes of every kind: (namespace and name, kind, parents, current status, metadata).
        let http = status.http_routes.iter().filter_map(|(key, parents)| {
            let r = outcome.state.http_routes.get(key)?;
            Some((
                key.clone(),
                "HTTPRoute",
                parents,
                r.status.as_ref(),
                &r.metadata,
            ))
        });
        let grpc = status.grpc_routes.iter().filter_map(|(key, parents)| {
            let r = outcome.state.grpc_routes.get(key)?;
            Some((
                key.clone(),
                "GRPCRoute",
                parents,
                r.status.as_ref(),
                &r.metadata,
            ))
        });
        let l4 = status.l4_routes.iter().filter_map(|(key, parents)| {
            let r = outcome.state.l4_routes.get(key)?;
            let kind = match key.0.as_str() {
                "TCPRoute" => "TCPRoute",
                "UDPRoute" => "UDPRoute",
                _ => "TLSRoute",
            };
            let object = (key.1.clone(), key.2.clone());
            Some((object, kind, parents, r.status.as_ref(), &r.metadata))
        });
        let routes: Vec<_> = http.chain(grpc).chain(l4).collect();
        for (key, kind, parents, current, meta) in routes {
            let desired = route_status(parents, current, &now);
            if current.is_some_and(|c| same_route_status(&desired, c)) {
                continue;
            }
            let patch = json!({"status": desired});
            let object = format!("{}/{}", key.0, key.1);
            let rv = meta.resource_version.as_deref();
            let (client, ns) = (self.client.clone(), key.0.as_str());
            let at = (kind, object.as_str());
            let written = match kind {
                "HTTPRoute" => {
                    let api: Api<HttpRoute> = Api::namespaced(client, ns);
                    self.write(api, &key.1, &patch, at, rv).await
                }
                "GRPCRoute" => {
                    let api: Api<GrpcRoute> = Api::namespaced(client, ns);
                    self.write(api, &key.1, &patch, at, rv).await
                }
                "TCPRoute" => {
                    let api: Api<TcpRoute> = Api::namespaced(client, ns);
                    self.write(api, &key.1, &patch, at, rv).await
                }
                "UDPRoute" => {
                    let api: Api<UdpRoute> = Api::namespaced(client, ns);
                    self.write(api, &key.1, &patch, at, rv).await
                }
                _ => {
                    let api: Api<TlsRoute> = Api::namespaced(client, ns);
                    self.write(api, &key.1, &patch, at, rv).await
                }
            };
            ok &= written;
        }
        // Objects no longer reported on (deleted, or no longer Portico's) are forgotten.
        let reported: std::collections::HashSet<String> = status
            .classes
            .keys()
            .map(|name| format!("GatewayClass {name}"))
            .chain(
                status
                    .gateways
                    .keys()
                    .map(|(ns, n)| format!("Gateway {ns}/{n}")),
            )
            .chain(
                status
                    .http_routes
                    .keys()
                    .map(|(ns, n)| format!("HTTPRoute {ns}/{n}")),
            )
            .chain(
                status
                    .grpc_routes
                    .keys()
                    .map(|(ns, n)| format!("GRPCRoute {ns}/{n}")),
            )
            .chain(
                status
                    .l4_routes
                    .keys()
                    .map(|(k, ns, n)| format!("{k} {ns}/{n}")),
            )
            .collect();
        self.written.retain(|id, _| reported.contains(id));
        ok
    }

    /// Writes `patch` to the status of `name`, unless it is what was written last and the
    /// object (at resourceVersion `rv`) has not come back from the watch since.
    async fn write<K>(
        &mut self,
        api: Api<K>,
        name: &str,
        patch: &serde_json::Value,
        (kind, object): (&str, &str),
        rv: Option<&str>,
    ) -> bool
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let id = format!("{kind} {object}");
        let said = fingerprint(patch);
        if self
            .written
            .get(&id)
            .is_some_and(|(seen, last)| seen.as_deref() == rv && *last == said)
        {
            return true;
        }
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                self.metrics.status_updates.with_label_values(&["ok"]).inc();
                tracing::info!(kind, object, "status updated");
                self.written.insert(id, (rv.map(String::from), said));
                true
            }
            Err(kube::Error::Api(e)) if e.code == 404 => true,
            Err(e) => {
                self.metrics
                    .status_updates
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(kind, object, error = %e, "status update failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_translate::gateway::types::ParentReference;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn other_controllers_parents_stay_and_unchanged_conditions_keep_their_time() {
        let parent = |name: &str| ParentReference {
            name: name.into(),
            ..Default::default()
        };
        let accepted = |status: &str, at: &str| Condition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: "Accepted".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: time(at),
        };
        let current = RouteStatus {
            parents: vec![
                RouteParentStatus {
                    parent_ref: parent("theirs"),
                    controller_name: "example.com/other".into(),
                    conditions: vec![accepted("False", "2026-01-01T00:00:00Z")],
                },
                RouteParentStatus {
                    parent_ref: parent("ours"),
                    controller_name: GATEWAY_CONTROLLER_NAME.into(),
                    conditions: vec![accepted("True", "2026-02-02T00:00:00Z")],
                },
            ],
        };
        let wanted = vec![RouteParentState {
            parent: parent("ours"),
            conditions: vec![
                StatusCondition::new("Accepted", true, "Accepted", "", Some(2)),
                StatusCondition::new("ResolvedRefs", false, "BackendNotFound", "x", Some(2)),
            ],
        }];
        let now = time("2026-12-04T00:00:00Z");
        let out = route_status(&wanted, Some(&current), &now);
        assert_eq!(out.parents.len(), 2);
        assert_eq!(
            out.parents[0], current.parents[0],
            "another controller's entry is left as it is"
        );
        let ours = &out.parents[1].conditions;
        assert_eq!(
            ours[0].last_transition_time,
            time("2026-02-02T00:00:00Z"),
            "status unchanged: time kept"
        );
        assert_eq!(ours[0].observed_generation, Some(2));
        assert_eq!(
            ours[1].last_transition_time, now,
            "a new condition starts now"
        );
        assert!(!same_route_status(&out, &current));
        assert!(same_route_status(
            &out,
            &route_status(&wanted, Some(&out), &now)
        ));
    }
}
