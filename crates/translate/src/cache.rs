//! The objects translation reads, indexed the way it looks them up. Objects are shared
//! (`Arc`), as kube-rs reflectors hand them out: taking a copy of the state for one
//! translation copies pointers, not objects, and an unchanged object keeps its address.

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type ObjectKey = (String, String);

/// One object of a kind translation understands.
#[derive(Debug, Clone)]
pub enum KubeObject {
    IngressClass(Arc<IngressClass>),
    Ingress(Arc<Ingress>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<Secret>),
}

/// The label EndpointSlices carry to name their Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub ingress_classes: BTreeMap<String, Arc<IngressClass>>,
    pub ingresses: BTreeMap<ObjectKey, Arc<Ingress>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<ObjectKey, Arc<Secret>>,
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
        self.services.get(&(namespace.to_string(), name.to_string())).map(|s| &**s)
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
