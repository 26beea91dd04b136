//! What one Ingress contributes to a snapshot, and what it was computed from. A fragment
//! holds the `Arc` of every object it read, so that it can be reused across translations
//! while the Ingress and each of those objects is the same allocation
//! (`docs/design/0002-reuse-across-snapshots.md`).

use crate::backend::{Resolved, SliceIndex};
use crate::cache::{external_name, ClusterState, NameResolution, ObjectKey, StateChanges};
use crate::diagnostic::{Diagnostic, ObjectRef};
use crate::secret::CheckedCertificate;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use portico_model::{
    Canary, ClientAuth, HostMatch, PassthroughHost, Route, SourceKind, SourceRef, StreamService,
};
use std::sync::Arc;

/// An object a fragment read, held so that "unchanged" can be told by identity (the
/// `Arc`s are kept alive, so their addresses cannot be reused by other objects).
pub(crate) enum Dependency {
    Service {
        key: ObjectKey,
        service: Option<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
        /// An ExternalName Service's name and what it resolved to.
        resolved: Option<(String, Option<NameResolution>)>,
    },
    Secret {
        key: ObjectKey,
        secret: Option<Arc<Secret>>,
    },
    ConfigMap {
        key: ObjectKey,
        config_map: Option<Arc<ConfigMap>>,
    },
}

fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Dependency {
    /// Whether one of `changes` is this object.
    fn changed_in(&self, changes: &StateChanges) -> bool {
        match self {
            Dependency::Service { key, .. } => changes.services.contains(key),
            Dependency::Secret { key, .. } => changes.secrets.contains(key),
            Dependency::ConfigMap { key, .. } => changes.config_maps.contains(key),
        }
    }

    fn unchanged(&self, state: &ClusterState, slices: &SliceIndex) -> bool {
        match self {
            Dependency::Service {
                key,
                service,
                slices: seen,
                resolved,
            } => {
                let now = slices.of(&key.0, &key.1);
                same(state.services.get(key), service.as_ref())
                    && now.len() == seen.len()
                    && now.iter().zip(seen).all(|(a, b)| Arc::ptr_eq(a, b))
                    && resolved
                        .as_ref()
                        .is_none_or(|(name, was)| slices.names.get(name) == was.as_ref())
            }
            Dependency::Secret { key, secret } => same(state.secrets.get(key), secret.as_ref()),
            Dependency::ConfigMap { key, config_map } => {
                same(state.config_maps.get(key), config_map.as_ref())
            }
        }
    }
}

/// The objects of one namespace that an Ingress reads, each recorded as a dependency of
/// its fragment as it is read.
pub(crate) struct ObjectReads<'r> {
    state: &'r ClusterState,
    slices: &'r SliceIndex,
    pub namespace: &'r str,
    dependencies: &'r mut Vec<Dependency>,
}

impl<'r> ObjectReads<'r> {
    pub fn new(
        state: &'r ClusterState,
        slices: &'r SliceIndex,
        namespace: &'r str,
        dependencies: &'r mut Vec<Dependency>,
    ) -> Self {
        ObjectReads {
            state,
            slices,
            namespace,
            dependencies,
        }
    }

    /// Secret `name` of the namespace.
    pub fn secret(&mut self, name: &str) -> Option<Arc<Secret>> {
        let key = (self.namespace.to_string(), name.to_string());
        let secret = self.state.secrets.get(&key).cloned();
        self.dependencies.push(Dependency::Secret {
            key,
            secret: secret.clone(),
        });
        secret
    }

    /// ConfigMap `name` of the namespace.
    pub fn config_map(&mut self, name: &str) -> Option<Arc<ConfigMap>> {
        let key = (self.namespace.to_string(), name.to_string());
        let config_map = self.state.config_maps.get(&key).cloned();
        self.dependencies.push(Dependency::ConfigMap {
            key,
            config_map: config_map.clone(),
        });
        config_map
    }

    /// Service `name` of the namespace and its EndpointSlices, once however often it is named.
    pub fn service(&mut self, name: &str) {
        let key = (self.namespace.to_string(), name.to_string());
        if self
            .dependencies
            .iter()
            .any(|d| matches!(d, Dependency::Service { key: k, .. } if *k == key))
        {
            return;
        }
        let service = self.state.services.get(&key).cloned();
        let resolved = service.as_deref().and_then(external_name).map(|name| {
            let now = self.slices.names.get(&name).cloned();
            (name, now)
        });
        let slices = self
            .slices
            .of(self.namespace, name)
            .iter()
            .map(Arc::clone)
            .collect();
        self.dependencies.push(Dependency::Service {
            key,
            service,
            slices,
            resolved,
        });
    }
}

/// One route as an Ingress (or a Gateway API route) states it, before merging with others.
#[derive(Clone)]
pub(crate) struct FragmentRoute {
    pub route: Route,
    /// Whether `ssl-redirect` leaves it on (it takes effect where the host has TLS).
    pub ssl_redirect: bool,
    /// `spec.rules[rule].http.paths[path]` (or `.matches[path]` of a Gateway API rule),
    /// for conflict messages.
    pub rule: usize,
    pub path: usize,
    pub path_type: &'static str,
    /// The Ingress has `use-regex` or `rewrite-target`: every path of the route's host is
    /// then matched as a regular expression, longest first, as ingress-nginx does.
    pub regex_host: bool,
}

impl FragmentRoute {
    /// The field the route was stated in.
    pub fn field(&self) -> String {
        match self.route.source.kind {
            SourceKind::Ingress => format!("spec.rules[{}].http.paths[{}]", self.rule, self.path),
            _ => format!("spec.rules[{}].matches[{}]", self.rule, self.path),
        }
    }
}

/// One host of a `spec.tls` entry (or of a Gateway's HTTPS listener), with the
/// certificate it asks for (`None`: the default).
pub(crate) struct TlsClaim {
    pub host: HostMatch,
    pub certificate: Option<String>,
    /// Index of the `spec.tls` entry (or of the listener).
    pub entry: usize,
    /// Stated by a Gateway listener rather than an Ingress's TLS section.
    pub listener: bool,
}

impl TlsClaim {
    pub fn field(&self) -> String {
        if self.listener {
            format!("spec.listeners[{}]", self.entry)
        } else {
            format!("spec.tls[{}]", self.entry)
        }
    }
}

/// Everything one Ingress contributes, and what it was computed from.
pub(crate) struct Fragment {
    /// `None` for a Gateway API route's fragment, which is made again each translation.
    pub(super) ingress: Option<Arc<Ingress>>,
    pub(super) dependencies: Vec<Dependency>,
    pub source: SourceRef,
    pub object: ObjectRef,
    pub default_backend: Option<String>,
    /// The routes of each rule, with the rule's host.
    pub rules: Vec<(HostMatch, Vec<FragmentRoute>)>,
    pub tls: Vec<TlsClaim>,
    /// Set on a `canary: "true"` Ingress: its routes split a primary's traffic rather
    /// than route on their own. `backend`, `source` and `affinity` are filled per route.
    pub canary: Option<Canary>,
    /// `from-to-www-redirect`: the other name of each host, with routes that redirect to
    /// the host. They yield to any Ingress that routes that name itself.
    pub www_redirects: Vec<(HostMatch, Vec<FragmentRoute>)>,
    pub diagnostics: Vec<Diagnostic>,
    pub backends: Vec<Arc<Resolved>>,
    pub certificates: Vec<Arc<CheckedCertificate>>,
    /// `auth-tls-*`: the client certificates the Ingress's hosts ask for.
    pub client_auth: Option<ClientAuth>,
    /// `ssl-ciphers`: the TLS 1.2 ciphers the Ingress's hosts offer.
    pub ciphers: Option<String>,
    /// `ssl-passthrough`: TLS connections for the Ingress's hosts go to their `/` backend
    /// untouched.
    pub passthrough: bool,
    /// A TCPRoute's or UDPRoute's ports.
    pub streams: Vec<StreamService>,
    /// A TLSRoute's hosts, passed through.
    pub passthrough_hosts: Vec<PassthroughHost>,
}

impl Fragment {
    pub(super) fn new(ingress: &Arc<Ingress>, object: ObjectRef) -> Self {
        let source = SourceRef::new(&object.namespace, &object.name);
        Fragment {
            ingress: Some(ingress.clone()),
            object,
            ..Fragment::of(source)
        }
    }

    /// What a Gateway API object (`namespace`, `name`) contributes.
    pub(crate) fn of_gateway_api(kind: SourceKind, (namespace, name): &ObjectKey) -> Self {
        Fragment::of(SourceRef {
            namespace: namespace.clone(),
            name: name.clone(),
            kind,
        })
    }

    fn of(source: SourceRef) -> Self {
        let object = ObjectRef::source(&source);
        Fragment {
            ingress: None,
            dependencies: Vec::new(),
            source,
            object,
            default_backend: None,
            rules: Vec::new(),
            tls: Vec::new(),
            canary: None,
            www_redirects: Vec::new(),
            diagnostics: Vec::new(),
            backends: Vec::new(),
            certificates: Vec::new(),
            client_auth: None,
            ciphers: None,
            passthrough: false,
            streams: Vec::new(),
            passthrough_hosts: Vec::new(),
        }
    }

    /// Still what processing `ingress` would give: the same object, and nothing it read
    /// changed. `changes`, when known, are those since the state this fragment was last
    /// found current in; without them each object read is looked up again.
    pub fn is_current(
        &self,
        ingress: &Arc<Ingress>,
        state: &ClusterState,
        slices: &SliceIndex,
        changes: Option<&StateChanges>,
    ) -> bool {
        self.ingress
            .as_ref()
            .is_some_and(|i| Arc::ptr_eq(i, ingress))
            && match changes {
                Some(c) => c.is_empty() || !self.dependencies.iter().any(|d| d.changed_in(c)),
                None => self.dependencies.iter().all(|d| d.unchanged(state, slices)),
            }
    }
}
