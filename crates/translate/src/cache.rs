//! The objects translation reads, indexed the way it looks them up. Objects are shared
//! (`Arc`), as kube-rs reflectors hand them out: taking a copy of the state for one
//! translation copies pointers, not objects, and an unchanged object keeps its address.

use crate::gateway::types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, L4Route, ReferenceGrant};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
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
    /// Read for `custom-headers`.
    ConfigMap(Arc<ConfigMap>),
    GatewayClass(Arc<GatewayClass>),
    Gateway(Arc<Gateway>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    /// A TCPRoute, UDPRoute or TLSRoute.
    L4Route(Arc<L4Route>),
    ReferenceGrant(Arc<ReferenceGrant>),
    /// Read for its labels, which a Gateway listener's `allowedRoutes` may select.
    Namespace(Arc<Namespace>),
}

/// The kinds of [`KubeObject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    IngressClass,
    Ingress,
    Service,
    EndpointSlice,
    Secret,
    ConfigMap,
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    UdpRoute,
    TlsRoute,
    ReferenceGrant,
    Namespace,
}

impl ObjectKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectKind::IngressClass => "IngressClass",
            ObjectKind::Ingress => "Ingress",
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Secret => "Secret",
            ObjectKind::ConfigMap => "ConfigMap",
            ObjectKind::GatewayClass => "GatewayClass",
            ObjectKind::Gateway => "Gateway",
            ObjectKind::HttpRoute => "HTTPRoute",
            ObjectKind::GrpcRoute => "GRPCRoute",
            ObjectKind::TcpRoute => "TCPRoute",
            ObjectKind::UdpRoute => "UDPRoute",
            ObjectKind::TlsRoute => "TLSRoute",
            ObjectKind::ReferenceGrant => "ReferenceGrant",
            ObjectKind::Namespace => "Namespace",
        }
    }
}

impl KubeObject {
    pub fn kind(&self) -> ObjectKind {
        match self {
            KubeObject::IngressClass(_) => ObjectKind::IngressClass,
            KubeObject::Ingress(_) => ObjectKind::Ingress,
            KubeObject::Service(_) => ObjectKind::Service,
            KubeObject::EndpointSlice(_) => ObjectKind::EndpointSlice,
            KubeObject::Secret(_) => ObjectKind::Secret,
            KubeObject::ConfigMap(_) => ObjectKind::ConfigMap,
            KubeObject::GatewayClass(_) => ObjectKind::GatewayClass,
            KubeObject::Gateway(_) => ObjectKind::Gateway,
            KubeObject::HttpRoute(_) => ObjectKind::HttpRoute,
            KubeObject::GrpcRoute(_) => ObjectKind::GrpcRoute,
            KubeObject::L4Route(o) => match o.kind.as_str() {
                "TCPRoute" => ObjectKind::TcpRoute,
                "UDPRoute" => ObjectKind::UdpRoute,
                _ => ObjectKind::TlsRoute,
            },
            KubeObject::ReferenceGrant(_) => ObjectKind::ReferenceGrant,
            KubeObject::Namespace(_) => ObjectKind::Namespace,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            KubeObject::IngressClass(o) => &o.metadata,
            KubeObject::Ingress(o) => &o.metadata,
            KubeObject::Service(o) => &o.metadata,
            KubeObject::EndpointSlice(o) => &o.metadata,
            KubeObject::Secret(o) => &o.metadata,
            KubeObject::ConfigMap(o) => &o.metadata,
            KubeObject::GatewayClass(o) => &o.metadata,
            KubeObject::Gateway(o) => &o.metadata,
            KubeObject::HttpRoute(o) => &o.metadata,
            KubeObject::GrpcRoute(o) => &o.metadata,
            KubeObject::L4Route(o) => &o.metadata,
            KubeObject::ReferenceGrant(o) => &o.metadata,
            KubeObject::Namespace(o) => &o.metadata,
        }
    }
}

/// What the controller's resolver found for the name of an ExternalName Service
/// (`docs/design/0019`): the addresses it may route to, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameResolution {
    Addresses(Vec<std::net::IpAddr>),
    Failed(String),
}

/// The names of ExternalName Services, resolved (by [`external_name`]).
pub type ResolvedNames = BTreeMap<String, NameResolution>;

/// The DNS name (or address) an ExternalName Service points at, normalised: lower case,
/// without a trailing dot. `None` for a Service of another type.
pub fn external_name(service: &Service) -> Option<String> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    let name = spec.external_name.as_deref()?.trim().trim_end_matches('.');
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
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
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    /// By name (cluster-scoped).
    pub gateway_classes: BTreeMap<String, Arc<GatewayClass>>,
    pub gateways: BTreeMap<ObjectKey, Arc<Gateway>>,
    pub http_routes: BTreeMap<ObjectKey, Arc<HttpRoute>>,
    pub grpc_routes: BTreeMap<ObjectKey, Arc<GrpcRoute>>,
    /// By kind (`TCPRoute`, `UDPRoute`, `TLSRoute`), namespace and name.
    pub l4_routes: BTreeMap<(String, String, String), Arc<L4Route>>,
    pub reference_grants: BTreeMap<ObjectKey, Arc<ReferenceGrant>>,
    /// By name (cluster-scoped).
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
}

fn key(meta: &ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl ClusterState {
    /// Adds or replaces an object, keyed by its namespace and name.
    pub fn insert(&mut self, object: KubeObject) {
        match object {
            KubeObject::IngressClass(o) => {
                self.ingress_classes
                    .insert(o.metadata.name.clone().unwrap_or_default(), o);
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
            KubeObject::ConfigMap(o) => {
                self.config_maps.insert(key(&o.metadata), o);
            }
            KubeObject::GatewayClass(o) => {
                self.gateway_classes
                    .insert(o.metadata.name.clone().unwrap_or_default(), o);
            }
            KubeObject::Gateway(o) => {
                self.gateways.insert(key(&o.metadata), o);
            }
            KubeObject::HttpRoute(o) => {
                self.http_routes.insert(key(&o.metadata), o);
            }
            KubeObject::GrpcRoute(o) => {
                self.grpc_routes.insert(key(&o.metadata), o);
            }
            KubeObject::L4Route(o) => {
                let (ns, name) = key(&o.metadata);
                self.l4_routes.insert((o.kind.clone(), ns, name), o);
            }
            KubeObject::ReferenceGrant(o) => {
                self.reference_grants.insert(key(&o.metadata), o);
            }
            KubeObject::Namespace(o) => {
                self.namespaces
                    .insert(o.metadata.name.clone().unwrap_or_default(), o);
            }
        }
    }

    /// Removes the object of `object`'s kind, namespace and name, if present.
    pub fn remove(&mut self, object: &KubeObject) {
        let k = key(object.metadata());
        if let KubeObject::L4Route(o) = object {
            self.l4_routes.remove(&(o.kind.clone(), k.0, k.1));
            return;
        }
        match object.kind() {
            ObjectKind::IngressClass => {
                self.ingress_classes.remove(&k.1);
            }
            ObjectKind::Ingress => {
                self.ingresses.remove(&k);
            }
            ObjectKind::Service => {
                self.services.remove(&k);
            }
            ObjectKind::EndpointSlice => {
                self.endpoint_slices.remove(&k);
            }
            ObjectKind::Secret => {
                self.secrets.remove(&k);
            }
            ObjectKind::ConfigMap => {
                self.config_maps.remove(&k);
            }
            ObjectKind::GatewayClass => {
                self.gateway_classes.remove(&k.1);
            }
            ObjectKind::Gateway => {
                self.gateways.remove(&k);
            }
            ObjectKind::HttpRoute => {
                self.http_routes.remove(&k);
            }
            ObjectKind::GrpcRoute => {
                self.grpc_routes.remove(&k);
            }
            ObjectKind::TcpRoute | ObjectKind::UdpRoute | ObjectKind::TlsRoute => {}
            ObjectKind::ReferenceGrant => {
                self.reference_grants.remove(&k);
            }
            ObjectKind::Namespace => {
                self.namespaces.remove(&k.1);
            }
        }
    }

    /// Replaces every object of `kind` in `namespace` (in all, when `None`) with
    /// `objects`: what a watcher's complete relist means.
    pub fn replace_all(
        &mut self,
        kind: ObjectKind,
        namespace: Option<&str>,
        objects: Vec<KubeObject>,
    ) {
        let keep = |k: &ObjectKey| namespace.is_some_and(|ns| k.0 != ns);
        match kind {
            ObjectKind::IngressClass => self.ingress_classes.clear(),
            ObjectKind::Ingress => self.ingresses.retain(|k, _| keep(k)),
            ObjectKind::Service => self.services.retain(|k, _| keep(k)),
            ObjectKind::EndpointSlice => self.endpoint_slices.retain(|k, _| keep(k)),
            ObjectKind::Secret => self.secrets.retain(|k, _| keep(k)),
            ObjectKind::ConfigMap => self.config_maps.retain(|k, _| keep(k)),
            ObjectKind::GatewayClass => self.gateway_classes.clear(),
            ObjectKind::Gateway => self.gateways.retain(|k, _| keep(k)),
            ObjectKind::HttpRoute => self.http_routes.retain(|k, _| keep(k)),
            ObjectKind::GrpcRoute => self.grpc_routes.retain(|k, _| keep(k)),
            ObjectKind::TcpRoute | ObjectKind::UdpRoute | ObjectKind::TlsRoute => {
                let wanted = kind.as_str();
                self.l4_routes
                    .retain(|(k, ns, name), _| k != wanted || keep(&(ns.clone(), name.clone())))
            }
            ObjectKind::ReferenceGrant => self.reference_grants.retain(|k, _| keep(k)),
            ObjectKind::Namespace => self.namespaces.clear(),
        }
        for o in objects.into_iter().filter(|o| o.kind() == kind) {
            self.insert(o);
        }
    }

    /// The uid of an object, for references to it (Events).
    pub fn uid(&self, kind: &str, namespace: &str, name: &str) -> Option<String> {
        let k = (namespace.to_string(), name.to_string());
        let meta = match kind {
            "IngressClass" => &self.ingress_classes.get(name)?.metadata,
            "Ingress" => &self.ingresses.get(&k)?.metadata,
            "Service" => &self.services.get(&k)?.metadata,
            "EndpointSlice" => &self.endpoint_slices.get(&k)?.metadata,
            "Secret" => &self.secrets.get(&k)?.metadata,
            "ConfigMap" => &self.config_maps.get(&k)?.metadata,
            "GatewayClass" => &self.gateway_classes.get(name)?.metadata,
            "Gateway" => &self.gateways.get(&k)?.metadata,
            "HTTPRoute" => &self.http_routes.get(&k)?.metadata,
            "GRPCRoute" => &self.grpc_routes.get(&k)?.metadata,
            "ReferenceGrant" => &self.reference_grants.get(&k)?.metadata,
            _ => return None,
        };
        meta.uid.clone()
    }

    /// The names every ExternalName Service points at, for the resolver.
    pub fn external_names(&self) -> std::collections::BTreeSet<String> {
        self.services
            .values()
            .filter_map(|s| external_name(s))
            .collect()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| &**s)
    }
}

/// What changed between two states a translator read one after the other, for the kinds
/// an Ingress's fragment depends on. Objects are told apart by address (`Arc`), so an
/// object replaced by an equal copy counts as changed, as it does for the fragments.
#[derive(Debug, Default)]
pub(crate) struct StateChanges {
    /// Services changed, and Services whose EndpointSlices changed.
    pub services: std::collections::HashSet<ObjectKey>,
    pub secrets: std::collections::HashSet<ObjectKey>,
    pub config_maps: std::collections::HashSet<ObjectKey>,
}

/// A key, and its object before and after (`None`: absent).
pub(crate) type Changed<'m, K, V> = (&'m K, Option<&'m Arc<V>>, Option<&'m Arc<V>>);

/// The keys whose object differs between `old` and `new` (added, removed or replaced),
/// with the object before and after; one pass over both, comparing addresses.
pub(crate) fn changed_objects<'m, K: Ord, V>(
    old: &'m BTreeMap<K, Arc<V>>,
    new: &'m BTreeMap<K, Arc<V>>,
) -> Vec<Changed<'m, K, V>> {
    use std::cmp::Ordering;
    let mut changed = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return changed,
            (Some((k, v)), None) => {
                changed.push((*k, Some(*v), None));
                a.next();
            }
            (None, Some((k, v))) => {
                changed.push((*k, None, Some(*v)));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                Ordering::Less => {
                    changed.push((*ka, Some(*va), None));
                    a.next();
                }
                Ordering::Greater => {
                    changed.push((*kb, None, Some(*vb)));
                    b.next();
                }
                Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) {
                        changed.push((*ka, Some(*va), Some(*vb)));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

impl StateChanges {
    pub(crate) fn is_empty(&self) -> bool {
        self.services.is_empty() && self.secrets.is_empty() && self.config_maps.is_empty()
    }

    /// What changed from `old` to `new`; brings `slices` (built for `old`) up to date with `new`.
    pub(crate) fn between(
        old: &ClusterState,
        new: &ClusterState,
        slices: &mut crate::backend::SliceIndex,
    ) -> Self {
        fn keys<V>(
            old: &BTreeMap<ObjectKey, Arc<V>>,
            new: &BTreeMap<ObjectKey, Arc<V>>,
        ) -> std::collections::HashSet<ObjectKey> {
            changed_objects(old, new)
                .into_iter()
                .map(|(k, _, _)| k.clone())
                .collect()
        }
        let mut services = keys(&old.services, &new.services);
        for (key, was, now) in changed_objects(&old.endpoint_slices, &new.endpoint_slices) {
            services.extend(slices.replace(key, was, now));
        }
        StateChanges {
            services,
            secrets: keys(&old.secrets, &new.secrets),
            config_maps: keys(&old.config_maps, &new.config_maps),
        }
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
