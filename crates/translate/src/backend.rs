//! Resolving an Ingress's service backend to endpoints: Service port (by number or
//! name) → EndpointSlice port (by the Service port's name) → ready addresses.

use crate::cache::{
    external_name, ClusterState, NameResolution, ResolvedNames, SERVICE_NAME_LABEL,
};
use crate::diagnostic::Reason;
use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{IngressServiceBackend, ServiceBackendPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_model::{Backend, Endpoint, ServiceRef, TrafficPolicy, Upstream, UpstreamProtocol};
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A resolved backend, with the problem found on the way, if any. A problem still
/// yields a backend (possibly without endpoints) so its routes answer 503, not 404.
pub(crate) struct Resolved {
    pub backend: Arc<Backend>,
    pub problem: Option<(Reason, String)>,
}

/// Where Services' endpoints come from: EndpointSlices grouped by the Service they belong
/// to (their `kubernetes.io/service-name` label, namespace then Service name, each group in
/// slice-name order), so that resolving a backend does not scan them all; and, for
/// ExternalName Services, what the controller's resolver found for their names. The
/// [`Translator`](crate::Translator) keeps it between translations and updates it with the
/// slices that changed.
pub(crate) struct SliceIndex {
    slices: SliceMap<SliceMap<Vec<Arc<EndpointSlice>>>>,
    pub names: Arc<ResolvedNames>,
}

/// Keys are namespaces and names of objects in the cluster: a fast seeded hash is enough.
type SliceMap<V> = HashMap<String, V, foldhash::quality::RandomState>;

fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

impl SliceIndex {
    pub fn new(state: &ClusterState) -> Self {
        Self::with_names(state, Arc::default())
    }

    pub fn with_names(state: &ClusterState, names: Arc<ResolvedNames>) -> Self {
        let mut index = SliceIndex {
            slices: SliceMap::default(),
            names,
        };
        // In key order, so each group is in slice-name order.
        for ((namespace, _), slice) in &state.endpoint_slices {
            if let Some(service) = service_of(slice) {
                index.group(namespace, service).push(Arc::clone(slice));
            }
        }
        index
    }

    fn group(&mut self, namespace: &str, service: &str) -> &mut Vec<Arc<EndpointSlice>> {
        if !self.slices.contains_key(namespace) {
            self.slices
                .insert(namespace.to_string(), SliceMap::default());
        }
        let services = self.slices.get_mut(namespace).expect("just inserted");
        if !services.contains_key(service) {
            services.insert(service.to_string(), Vec::new());
        }
        services.get_mut(service).expect("just inserted")
    }

    /// Replaces the slice `key` was (`old`) with what it is now (`new`), either possibly
    /// absent; returns the Services whose slices this changed.
    pub fn replace(
        &mut self,
        key: &crate::cache::ObjectKey,
        old: Option<&Arc<EndpointSlice>>,
        new: Option<&Arc<EndpointSlice>>,
    ) -> Vec<crate::cache::ObjectKey> {
        let namespace = key.0.as_str();
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        let was = old.and_then(|s| Some((service_of(s)?.to_string(), name(s))));
        if let Some((service, slice_name)) = &was {
            if let Some(services) = self.slices.get_mut(namespace) {
                if let Some(group) = services.get_mut(service.as_str()) {
                    group.retain(|s| s.metadata.name.as_deref() != Some(slice_name.as_str()));
                    // Services come and go: keep no empty group behind.
                    if group.is_empty() {
                        services.remove(service.as_str());
                    }
                }
                if services.is_empty() {
                    self.slices.remove(namespace);
                }
            }
        }
        let now = new.and_then(|s| Some((service_of(s)?.to_string(), Arc::clone(s))));
        let mut touched = Vec::with_capacity(2);
        if let Some((service, slice)) = now {
            let group = self.group(namespace, &service);
            let at = group.partition_point(|s| s.metadata.name < slice.metadata.name);
            group.insert(at, slice);
            touched.push((namespace.to_string(), service));
        }
        if let Some((service, _)) = was {
            if !touched.iter().any(|(_, s)| *s == service) {
                touched.push((namespace.to_string(), service));
            }
        }
        touched
    }

    pub fn of(&self, namespace: &str, service: &str) -> &[Arc<EndpointSlice>] {
        self.slices
            .get(namespace)
            .and_then(|services| services.get(service))
            .map_or(&[], Vec::as_slice)
    }
}

/// `namespace/service:port`, with the protocol (and verification) appended when the
/// backend is not plain HTTP, so that two Ingresses reaching one Service port in
/// different ways get two backends.
pub(crate) fn backend_name(
    namespace: &str,
    svc: &IngressServiceBackend,
    upstream: &Upstream,
    policy: &TrafficPolicy,
) -> String {
    let mut name = format!("{namespace}/{}:{}", svc.name, port_text(svc.port.as_ref()));
    if upstream.protocol != UpstreamProtocol::Http {
        name.push('|');
        name.push_str(upstream.protocol.as_str());
    }
    if upstream.http10 {
        name.push_str("|http1.0");
    }
    if upstream.close_connections {
        name.push_str("|close");
    }
    if upstream.verify || upstream.server_name.is_some() || upstream.ca_pem.is_some() {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        upstream.hash(&mut h);
        name.push_str(&format!("|tls-{:016x}", h.finish()));
    }
    if *policy != TrafficPolicy::default() {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        policy.hash(&mut h);
        name.push_str(&format!("|{}-{:016x}", policy.balance.as_str(), h.finish()));
    }
    name
}

pub(crate) fn port_text(port: Option<&ServiceBackendPort>) -> String {
    match port {
        Some(ServiceBackendPort {
            number: Some(n), ..
        }) => n.to_string(),
        Some(ServiceBackendPort { name: Some(n), .. }) => n.clone(),
        _ => String::new(),
    }
}

pub(crate) fn resolve(
    state: &ClusterState,
    slices: &SliceIndex,
    namespace: &str,
    svc: &IngressServiceBackend,
    upstream: &Upstream,
    policy: &TrafficPolicy,
) -> Resolved {
    let name = backend_name(namespace, svc, upstream, policy);
    let service_ref = ServiceRef {
        namespace: namespace.to_string(),
        name: svc.name.clone(),
        port: port_text(svc.port.as_ref()),
    };
    let resolved = |endpoints: Vec<Endpoint>, problem: Option<(Reason, String)>| Resolved {
        backend: Arc::new(Backend {
            name: name.clone(),
            service: service_ref.clone(),
            endpoints,
            upstream: upstream.clone(),
            policy: policy.clone(),
        }),
        problem,
    };
    let unresolved = |reason, message| resolved(Vec::new(), Some((reason, message)));

    let Some(service) = state.service(namespace, &svc.name) else {
        return unresolved(
            Reason::ServiceNotFound,
            format!("service {namespace}/{} does not exist", svc.name),
        );
    };
    let spec = service.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    if let Some(host) = external_name(service) {
        // As ingress-nginx: the Service port the Ingress names, by its `targetPort` when
        // that is a number; without such a Service port, the number the Ingress gives.
        let port = match find_port(ports, svc.port.as_ref()) {
            Some(p) => match &p.target_port {
                Some(IntOrString::Int(target)) if *target != 0 => Some(*target),
                _ => Some(p.port),
            },
            None => svc.port.as_ref().and_then(|p| p.number),
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
            return unresolved(
                Reason::ServicePortNotFound,
                format!(
                    "service {namespace}/{} (ExternalName {host}) has no port {:?}",
                    svc.name,
                    port_text(svc.port.as_ref())
                ),
            );
        };
        let addresses = match slices.names.get(&host) {
            Some(NameResolution::Addresses(a)) if !a.is_empty() => a,
            Some(NameResolution::Addresses(_)) | None => {
                return unresolved(
                    Reason::NoReadyEndpoints,
                    format!(
                        "service {namespace}/{} (ExternalName {host}) is not resolved yet",
                        svc.name
                    ),
                )
            }
            Some(NameResolution::Failed(why)) => {
                return unresolved(
                    Reason::NoReadyEndpoints,
                    format!(
                        "service {namespace}/{} (ExternalName {host}): {why}",
                        svc.name
                    ),
                )
            }
        };
        let endpoints = addresses
            .iter()
            .map(|&address| Endpoint {
                address,
                port,
                ready: true,
            })
            .collect();
        return resolved(endpoints, None);
    }
    let Some(service_port) = find_port(ports, svc.port.as_ref()) else {
        return unresolved(
            Reason::ServicePortNotFound,
            format!(
                "service {namespace}/{} has no port {:?}",
                svc.name,
                port_text(svc.port.as_ref())
            ),
        );
    };

    let endpoints = if policy.service_upstream {
        let cluster_ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let port = u16::try_from(service_port.port).ok().filter(|p| *p != 0);
        let (Some(address), Some(port)) = (cluster_ip, port) else {
            return unresolved(
                Reason::UnsupportedBackend,
                format!(
                    "annotation service-upstream: service {namespace}/{} has no cluster IP (a headless Service has none)",
                    svc.name
                ),
            );
        };
        vec![Endpoint {
            address,
            port,
            ready: true,
        }]
    } else {
        slice_endpoints(slices.of(namespace, &svc.name), service_port)
    };
    let problem = (!endpoints.iter().any(|e| e.ready)).then(|| {
        (
            Reason::NoReadyEndpoints,
            format!(
                "service {namespace}/{} port {:?} has no ready endpoints",
                svc.name,
                port_text(svc.port.as_ref())
            ),
        )
    });
    resolved(endpoints, problem)
}

/// The endpoints the EndpointSlices give for `service_port`, ready or not, in order.
fn slice_endpoints(slices: &[Arc<EndpointSlice>], service_port: &ServicePort) -> Vec<Endpoint> {
    let mut endpoints = BTreeSet::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        // A slice port matches the Service port of the same name (both unnamed counts).
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == service_port.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            for address in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                endpoints.insert(Endpoint {
                    address,
                    port,
                    ready,
                });
            }
        }
    }
    endpoints.into_iter().collect()
}

/// A Service as a plain HTTP backend on its first port (`--default-backend-service`).
pub(crate) fn resolve_first_port(
    state: &ClusterState,
    slices: &SliceIndex,
    namespace: &str,
    name: &str,
) -> Resolved {
    let port = first_port(state, namespace, name).map(|number| ServiceBackendPort {
        number: Some(number),
        name: None,
    });
    let svc = IngressServiceBackend {
        name: name.to_string(),
        port,
    };
    resolve(
        state,
        slices,
        namespace,
        &svc,
        &Upstream::default(),
        &TrafficPolicy::default(),
    )
}

/// The number of a Service's first port.
pub(crate) fn first_port(state: &ClusterState, namespace: &str, name: &str) -> Option<i32> {
    state
        .service(namespace, name)?
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .first()
        .map(|p| p.port)
}

fn find_port<'a>(
    ports: &'a [ServicePort],
    wanted: Option<&ServiceBackendPort>,
) -> Option<&'a ServicePort> {
    match wanted? {
        ServiceBackendPort {
            number: Some(n), ..
        } => ports.iter().find(|p| p.port == *n),
        ServiceBackendPort {
            name: Some(name), ..
        } => ports.iter().find(|p| p.name.as_deref() == Some(name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, service: &str) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4", "endpoints": [],
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_index_follows_slices_that_come_move_and_go_and_keeps_no_empty_group() {
        let mut index = SliceIndex::new(&ClusterState::default());
        let key = |n: &str| ("ns".to_string(), n.to_string());
        let (a1, b1) = (slice("web-b", "web"), slice("web-a", "web"));
        let touched = index.replace(&key("web-b"), None, Some(&a1));
        assert_eq!(touched, [key("web")]);
        index.replace(&key("web-a"), None, Some(&b1));
        let names = |index: &SliceIndex, svc: &str| {
            index
                .of("ns", svc)
                .iter()
                .map(|s| s.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&index, "web"),
            ["web-a", "web-b"],
            "in slice-name order"
        );
        // web-b moves to another Service: both are touched.
        let moved = slice("web-b", "api");
        let mut touched = index.replace(&key("web-b"), Some(&a1), Some(&moved));
        touched.sort();
        assert_eq!(touched, [key("api"), key("web")]);
        assert_eq!(names(&index, "web"), ["web-a"]);
        index.replace(&key("web-b"), Some(&moved), None);
        index.replace(&key("web-a"), Some(&b1), None);
        assert!(index.of("ns", "web").is_empty());
        assert!(index.slices.is_empty(), "no group left behind");
    }
}
