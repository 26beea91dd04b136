//! The Kubernetes API source: one kube-rs watcher per kind (per watched namespace with
//! `--watch-namespace`), folded into one [`ClusterState`].
//!
//! A watcher's initial list, and every relist after a `410 Gone`, is buffered and
//! swapped in whole at `InitDone`, so translation never sees a partial list: nothing is
//! sent until every watcher has finished its first list, and a relist replaces its
//! kind's objects in one step.
//!
//! What is kept is what translation reads. `managedFields` and the
//! `last-applied-configuration` annotation are dropped from every object. Of Secrets,
//! only `kubernetes.io/tls` and `Opaque` ones are kept (TLS certificates, CA bundles and,
//! later, auth files): the bulk of a big cluster's Secret bytes is Helm release and
//! service-account token Secrets, which this drops without the extra API calls and the
//! watch races that fetching "only referenced Secrets" on demand would bring.
//! ConfigMaps are watched for `custom-headers`.

use super::{Source, StateSender};
use crate::metrics::ControllerMetrics;
use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt};
use futures_util::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use portico_translate::gateway::types::{
    Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute, TlsRoute, UdpRoute,
};
use portico_translate::{ClusterState, KubeObject, ObjectKind};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Secret types translation can use.
const KEPT_SECRET_TYPES: &[&str] = &["kubernetes.io/tls", "Opaque"];

pub struct KubeSource {
    client: Client,
    /// Empty: every namespace.
    namespaces: Vec<String>,
    /// The namespaces of the ConfigMaps the controller reads (`--configmap`,
    /// `--tcp-services-configmap`, `--udp-services-configmap`), whose ConfigMaps are watched
    /// even when `namespaces` leaves them out.
    config_namespaces: Vec<String>,
    metrics: Arc<ControllerMetrics>,
}

impl KubeSource {
    pub fn new(
        client: Client,
        namespaces: Vec<String>,
        config_namespaces: Vec<String>,
        metrics: Arc<ControllerMetrics>,
    ) -> Self {
        KubeSource {
            client,
            namespaces,
            config_namespaces,
            metrics,
        }
    }
}

/// One watcher: the kind it watches and the namespace it is limited to.
#[derive(Debug, Clone)]
struct Scope {
    kind: ObjectKind,
    namespace: Option<String>,
}

type Update = (usize, Result<watcher::Event<KubeObject>, watcher::Error>);

fn strip(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

fn keep_secret(secret: &Secret) -> bool {
    KEPT_SECRET_TYPES.contains(&secret.type_.as_deref().unwrap_or("Opaque"))
}

/// A watcher of `api` whose objects become [`KubeObject`]s, tagged with `index`.
fn watch<K>(
    api: Api<K>,
    index: usize,
    keep: fn(&K) -> bool,
    wrap: fn(Arc<K>) -> KubeObject,
) -> BoxStream<'static, Update>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    use watcher::Event;
    let convert = move |mut o: K| -> Option<KubeObject> {
        if !keep(&o) {
            return None;
        }
        strip(o.meta_mut());
        Some(wrap(Arc::new(o)))
    };
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |result| {
            let update = match result {
                Ok(Event::Init) => Some(Ok(Event::Init)),
                Ok(Event::InitDone) => Some(Ok(Event::InitDone)),
                Ok(Event::InitApply(o)) => convert(o).map(|o| Ok(Event::InitApply(o))),
                Ok(Event::Apply(o)) => convert(o).map(|o| Ok(Event::Apply(o))),
                Ok(Event::Delete(o)) => convert(o).map(|o| Ok(Event::Delete(o))),
                Err(e) => Some(Err(e)),
            };
            std::future::ready(update.map(|u| (index, u)))
        })
        .boxed()
}

/// Whether the API server serves Gateway API (its CRDs are installed and Portico may
/// list them); when it does not, its kinds are not watched, said once in the log.
async fn gateway_api_served(client: &Client) -> bool {
    let probe = Api::<GatewayClass>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await;
    match probe {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(error = %e, "Gateway API is not served here (its CRDs are not installed, or Portico may not list them); GatewayClasses, Gateways, HTTPRoutes and ReferenceGrants are not watched");
            false
        }
    }
}

/// Whether the API server serves the (namespaced) kind `K`: one list call, and a log
/// line when it does not.
async fn kind_served<K>(client: &Client) -> bool
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let probe = Api::<K>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await;
    if let Err(e) = &probe {
        tracing::info!(kind = %K::kind(&()), error = %e, "not served here (its CRD is not installed, or Portico may not list it); not watched");
    }
    probe.is_ok()
}

/// `K` in `ns`, or in every namespace.
fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
    client: &Client,
    ns: &Option<String>,
) -> Api<K>
where
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The watched state, and each watcher's progress through its (re)list.
struct Reflection {
    state: ClusterState,
    scopes: Vec<Scope>,
    /// A watcher's objects while it lists; swapped into `state` at `InitDone`.
    listing: Vec<Option<Vec<KubeObject>>>,
    listed: Vec<bool>,
}

impl Reflection {
    /// Applies one update; true when `state` changed.
    fn apply(&mut self, (index, update): Update, metrics: &ControllerMetrics) -> bool {
        use watcher::Event;
        let scope = &self.scopes[index];
        match update {
            Ok(Event::Init) => {
                self.listing[index] = Some(Vec::new());
                false
            }
            Ok(Event::InitApply(o)) => {
                self.listing[index].get_or_insert_with(Vec::new).push(o);
                false
            }
            Ok(Event::InitDone) => {
                let objects = self.listing[index].take().unwrap_or_default();
                tracing::info!(
                    kind = scope.kind.as_str(),
                    namespace = scope.namespace.as_deref().unwrap_or("*"),
                    objects = objects.len(),
                    "listed"
                );
                self.state
                    .replace_all(scope.kind, scope.namespace.as_deref(), objects);
                self.listed[index] = true;
                true
            }
            Ok(Event::Apply(o)) => {
                self.state.insert(o);
                true
            }
            Ok(Event::Delete(o)) => {
                self.state.remove(&o);
                true
            }
            Err(e) => {
                metrics
                    .watch_restarts
                    .with_label_values(&[scope.kind.as_str()])
                    .inc();
                tracing::warn!(kind = scope.kind.as_str(), error = %e, "watch failed; resuming");
                false
            }
        }
    }

    fn complete(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }
}

#[async_trait]
impl Source for KubeSource {
    async fn run(self: Box<Self>, states: StateSender) -> anyhow::Result<()> {
        let mut scopes = vec![Scope {
            kind: ObjectKind::IngressClass,
            namespace: None,
        }];
        let mut streams = vec![watch(
            Api::<IngressClass>::all(self.client.clone()),
            0,
            |_| true,
            KubeObject::IngressClass,
        )];
        let namespaces: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        for ns in namespaces {
            let client = &self.client;
            type Apis = (
                Api<Ingress>,
                Api<Service>,
                Api<EndpointSlice>,
                Api<Secret>,
                Api<ConfigMap>,
            );
            let (ingresses, services, slices, secrets, config_maps): Apis = match &ns {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                ),
            };
            for kind in [
                ObjectKind::Ingress,
                ObjectKind::Service,
                ObjectKind::EndpointSlice,
                ObjectKind::Secret,
                ObjectKind::ConfigMap,
            ] {
                scopes.push(Scope {
                    kind,
                    namespace: ns.clone(),
                });
            }
            let n = streams.len();
            streams.push(watch(ingresses, n, |_| true, KubeObject::Ingress));
            streams.push(watch(services, n + 1, |_| true, KubeObject::Service));
            streams.push(watch(slices, n + 2, |_| true, KubeObject::EndpointSlice));
            streams.push(watch(secrets, n + 3, keep_secret, KubeObject::Secret));
            streams.push(watch(config_maps, n + 4, |_| true, KubeObject::ConfigMap));
        }
        if gateway_api_served(&self.client).await {
            scopes.push(Scope {
                kind: ObjectKind::GatewayClass,
                namespace: None,
            });
            streams.push(watch(
                Api::<GatewayClass>::all(self.client.clone()),
                streams.len(),
                |_| true,
                KubeObject::GatewayClass,
            ));
            scopes.push(Scope {
                kind: ObjectKind::Namespace,
                namespace: None,
            });
            streams.push(watch(
                Api::<Namespace>::all(self.client.clone()),
                streams.len(),
                |_| true,
                KubeObject::Namespace,
            ));
            let namespaces: Vec<Option<String>> = if self.namespaces.is_empty() {
                vec![None]
            } else {
                self.namespaces.iter().cloned().map(Some).collect()
            };
            // The L4 routes are in Gateway API's experimental channel: each may be missing.
            let tcp = kind_served::<TcpRoute>(&self.client).await;
            let udp = kind_served::<UdpRoute>(&self.client).await;
            let tls = kind_served::<TlsRoute>(&self.client).await;
            for ns in namespaces {
                let client = &self.client;
                for (served, kind) in [
                    (tcp, ObjectKind::TcpRoute),
                    (udp, ObjectKind::UdpRoute),
                    (tls, ObjectKind::TlsRoute),
                ] {
                    if !served {
                        continue;
                    }
                    scopes.push(Scope {
                        kind,
                        namespace: ns.clone(),
                    });
                    let n = streams.len();
                    streams.push(match kind {
                        ObjectKind::TcpRoute => watch(
                            api::<TcpRoute>(client, &ns),
                            n,
                            |_| true,
                            |o| KubeObject::L4Route(Arc::new((*o).clone().into())),
                        ),
                        ObjectKind::UdpRoute => watch(
                            api::<UdpRoute>(client, &ns),
                            n,
                            |_| true,
                            |o| KubeObject::L4Route(Arc::new((*o).clone().into())),
                        ),
                        _ => watch(
                            api::<TlsRoute>(client, &ns),
                            n,
                            |_| true,
                            |o| KubeObject::L4Route(Arc::new((*o).clone().into())),
                        ),
                    });
                }
                for kind in [
                    ObjectKind::Gateway,
                    ObjectKind::HttpRoute,
                    ObjectKind::GrpcRoute,
                    ObjectKind::ReferenceGrant,
                ] {
                    scopes.push(Scope {
                        kind,
                        namespace: ns.clone(),
                    });
                }
                let n = streams.len();
                let gateways = api::<Gateway>(client, &ns);
                streams.push(watch(gateways, n, |_| true, KubeObject::Gateway));
                let routes = api::<HttpRoute>(client, &ns);
                streams.push(watch(routes, n + 1, |_| true, KubeObject::HttpRoute));
                let grpc = api::<GrpcRoute>(client, &ns);
                streams.push(watch(grpc, n + 2, |_| true, KubeObject::GrpcRoute));
                let grants = api::<ReferenceGrant>(client, &ns);
                streams.push(watch(grants, n + 3, |_| true, KubeObject::ReferenceGrant));
            }
        }
        let mut extra: Vec<&String> = self
            .config_namespaces
            .iter()
            .filter(|ns| !self.namespaces.is_empty() && !self.namespaces.contains(ns))
            .collect();
        extra.sort();
        extra.dedup();
        for ns in extra {
            scopes.push(Scope {
                kind: ObjectKind::ConfigMap,
                namespace: Some(ns.clone()),
            });
            let config_maps = Api::<ConfigMap>::namespaced(self.client.clone(), ns);
            let n = streams.len();
            streams.push(watch(config_maps, n, |_| true, KubeObject::ConfigMap));
        }

        let count = scopes.len();
        let mut reflection = Reflection {
            state: ClusterState::default(),
            scopes,
            listing: vec![None; count],
            listed: vec![false; count],
        };
        let mut updates = futures_util::stream::select_all(streams);
        let mut announced = false;
        while let Some(update) = updates.next().await {
            let mut changed = reflection.apply(update, &self.metrics);
            // Take whatever else is already waiting, so a burst becomes one state.
            while let Some(Some(update)) = updates.next().now_or_never() {
                changed |= reflection.apply(update, &self.metrics);
            }
            if changed && reflection.complete() {
                if !announced {
                    tracing::info!(
                        ingresses = reflection.state.ingresses.len(),
                        services = reflection.state.services.len(),
                        endpoint_slices = reflection.state.endpoint_slices.len(),
                        secrets = reflection.state.secrets.len(),
                        "every watcher has listed; building the first snapshot"
                    );
                    announced = true;
                }
                states.send_replace(Some(Arc::new(reflection.state.clone())));
            }
        }
        anyhow::bail!("the watch streams ended")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use watcher::Event;

    fn service(ns: &str, name: &str) -> KubeObject {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        KubeObject::Service(Arc::new(s))
    }

    fn names(r: &Reflection) -> Vec<String> {
        r.state
            .services
            .keys()
            .map(|(ns, n)| format!("{ns}/{n}"))
            .collect()
    }

    #[test]
    fn a_relist_replaces_its_scope_at_init_done_and_not_before() {
        let metrics = ControllerMetrics::new(Default::default());
        let scopes = vec![
            Scope {
                kind: ObjectKind::Service,
                namespace: Some("a".into()),
            },
            Scope {
                kind: ObjectKind::Service,
                namespace: Some("b".into()),
            },
        ];
        let mut r = Reflection {
            state: ClusterState::default(),
            scopes,
            listing: vec![None, None],
            listed: vec![false, false],
        };
        for (i, ns) in [(0, "a"), (1, "b")] {
            r.apply((i, Ok(Event::Init)), &metrics);
            r.apply((i, Ok(Event::InitApply(service(ns, "old")))), &metrics);
            assert!(!r.complete());
            r.apply((i, Ok(Event::InitDone)), &metrics);
        }
        assert!(r.complete());
        assert_eq!(names(&r), ["a/old", "b/old"]);

        // Namespace a relists (after a 410): old stays served until the list is complete.
        r.apply((0, Ok(Event::Init)), &metrics);
        r.apply((0, Ok(Event::InitApply(service("a", "new")))), &metrics);
        assert_eq!(names(&r), ["a/old", "b/old"]);
        assert!(r.apply((0, Ok(Event::InitDone)), &metrics));
        assert_eq!(
            names(&r),
            ["a/new", "b/old"],
            "only namespace a's objects are replaced"
        );

        assert!(r.apply((1, Ok(Event::Delete(service("b", "old")))), &metrics));
        assert_eq!(names(&r), ["a/new"]);
    }

    #[test]
    fn only_tls_and_opaque_secrets_are_kept_and_metadata_is_trimmed() {
        let secret = |t: Option<&str>| Secret {
            type_: t.map(String::from),
            ..Default::default()
        };
        assert!(keep_secret(&secret(Some("kubernetes.io/tls"))));
        assert!(keep_secret(&secret(Some("Opaque"))));
        assert!(
            keep_secret(&secret(None)),
            "a Secret without a type is Opaque"
        );
        assert!(!keep_secret(&secret(Some("helm.sh/release.v1"))));
        assert!(!keep_secret(&secret(Some(
            "kubernetes.io/service-account-token"
        ))));

        let mut meta = ObjectMeta {
            annotations: Some(
                [
                    (LAST_APPLIED.to_string(), "{...}".to_string()),
                    ("keep".to_string(), "me".to_string()),
                ]
                .into(),
            ),
            managed_fields: Some(vec![Default::default()]),
            ..Default::default()
        };
        strip(&mut meta);
        assert!(meta.managed_fields.is_none());
        assert_eq!(
            meta.annotations.unwrap().keys().collect::<Vec<_>>(),
            ["keep"]
        );
    }
}
