//! The objects translation reads, indexed the way it looks them up.

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type ObjectKey = (String, String);

/// One object of a kind translation understands.
// Short-lived on the way into a ClusterState; boxing every variant would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum KubeObject {
    IngressClass(IngressClass),
    Ingress(Ingress),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
}

/// The label EndpointSlices carry to name their Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub ingress_classes: BTreeMap<String, IngressClass>,
    pub ingresses: BTreeMap<ObjectKey, Ingress>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub secrets: BTreeMap<ObjectKey, Secret>,
}

fn key(meta: &ObjectMeta) -> ObjectKey {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

impl ClusterState {
    /// Adds or replaces an object, keyed by its namespace and name.
    pub fn insert(&mut self, object: KubeObject) {
        match object {
            KubeObject::IngressClass(o) => {
                self.ingress_classes.insert(o.metadata.name.clone().unwrap_or_default(), o);
            }
            KubeObject::Ingress(o) => {
                self.ingresses.insert(key(&o.metadata), o);
            }
            KubeObject::Service(o) => {
                self.services.insert(key(&o.metadata), o);
            }
            KubeObject::EndpointSlice(o) => {
                self.endpoint_slices.insert(key(&o.metadata), o);
            }
            KubeObject::Secret(o) => {
                self.secrets.insert(key(&o.metadata), o);
            }
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&(namespace.to_string(), name.to_string()))
    }
}

impl FromIterator<KubeObject> for ClusterState {
    fn from_iter<I: IntoIterator<Item = KubeObject>>(iter: I) -> Self {
        let mut state = ClusterState::default();
        for o in iter {
            state.insert(o);
        }
        state
    }
}
