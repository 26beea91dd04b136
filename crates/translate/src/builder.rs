//! Runs the processors in order and assembles the snapshot. A [`Translator`] keeps each
//! Ingress's fragment between translations and reprocesses only the Ingresses whose own
//! object, or an object they read, changed; merging and assembly run every time.

use crate::backend::{self, SliceIndex};
use crate::cache::{ClusterState, ObjectKey, ResolvedNames, StateChanges};
use crate::class::{Admission, ClassFilter};
use crate::controller_config::ControllerConfig;
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::gateway::status::GatewayApiStatus;
use crate::gateway::{AgedFragment, GatewayOptions};
use crate::ingress::{Fragment, FragmentRoute, IngressProcessor, Lookups};
use crate::merge::{HostRoutes, RouteTable};
use crate::secret;
use crate::sharing::HostOwnership;
use crate::streams::StreamOptions;
use k8s_openapi::api::networking::v1::Ingress;
use portico_model::{
    Backend, Canary, Certificate, ClientAuth, HostMatch, Hsts, Snapshot, Streams, TlsHost,
    TlsPolicy, VirtualHost,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Options {
    /// The IngressClass name Portico serves (`--ingress-class`).
    pub ingress_class: String,
    /// Treat the class as existing when no IngressClass object defines it (manifests mode).
    pub assume_class_exists: bool,
    /// The Secret presented for unknown SNI names (`--default-ssl-certificate`); without
    /// one the proxy presents a self-signed certificate of its own.
    pub default_certificate: Option<ObjectKey>,
    /// `Strict-Transport-Security` for HTTPS responses.
    pub hsts: Option<Hsts>,
    /// The Service (on its first port) that takes requests no route matches, unless an
    /// Ingress's `spec.defaultBackend` does (`--default-backend-service`).
    pub default_backend_service: Option<ObjectKey>,
    /// Who may route a host (`--host-ownership`).
    pub host_ownership: HostOwnership,
    /// ingress-nginx's controller ConfigMap (`--configmap`).
    pub controller_config: Option<ObjectKey>,
    /// TCP and UDP services.
    pub streams: StreamOptions,
    /// Where Gateway listeners are served.
    pub gateway: GatewayOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ingress_class: "portico".into(),
            assume_class_exists: false,
            default_certificate: None,
            hsts: Some(Hsts {
                max_age: 31_536_000,
                include_subdomains: false,
                preload: false,
            }),
            default_backend_service: None,
            host_ownership: HostOwnership::Shared,
            controller_config: None,
            streams: StreamOptions::default(),
            gateway: GatewayOptions::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Translation {
    /// Version 0: the publisher stamps the version.
    pub snapshot: Snapshot,
    /// Sorted and without duplicates.
    pub diagnostics: Vec<Diagnostic>,
    /// The Ingresses this controller serves, whether or not all their rules applied; sorted.
    pub admitted: Vec<ObjectKey>,
    /// The status of the Gateway API objects Portico serves.
    pub gateway_status: GatewayApiStatus,
}

/// Translates cluster state into a snapshot. Deterministic: the same state always gives
/// the same snapshot, byte for byte, whatever order objects arrived in.
pub fn translate(state: &ClusterState, opts: &Options) -> Translation {
    Translator::new(opts.clone()).translate(state)
}

/// Translation with memory: the same results as [`translate`], at a cost that follows
/// what changed rather than the size of the cluster, for the parts that are per Ingress.
pub struct Translator {
    opts: Options,
    /// The fragment of each Ingress admitted by the last translation, updated in place.
    fragments: HashMap<ObjectKey, Arc<Fragment>>,
    /// The Gateway API fragments of the last translation, made again every time; kept
    /// alive as the Ingresses' are, for `BuiltHosts`.
    gateway_fragments: Vec<Arc<Fragment>>,
    /// The virtual hosts built from `fragments`, whose routes they point into.
    hosts: BuiltHosts,
    /// The controller ConfigMap's settings the fragments were made with.
    config: ControllerConfig,
    /// What the controller's resolver found for ExternalName Services' names.
    names: Arc<ResolvedNames>,
    /// The state of the last [`Translator::translate_shared`] and its EndpointSlices by
    /// Service, which the next one updates with what changed instead of building anew.
    last: Option<(Arc<ClusterState>, SliceIndex)>,
    reprocessed: usize,
}

impl Translator {
    pub fn new(opts: Options) -> Self {
        Translator {
            opts,
            fragments: HashMap::new(),
            gateway_fragments: Vec::new(),
            hosts: BuiltHosts::default(),
            config: ControllerConfig::default(),
            names: Arc::default(),
            last: None,
            reprocessed: 0,
        }
    }

    /// The names of ExternalName Services as the resolver last found them, for the next
    /// translations.
    pub fn set_resolved_names(&mut self, names: Arc<ResolvedNames>) {
        self.names = names;
    }

    /// How many Ingresses the last translation processed again rather than reused.
    pub fn reprocessed(&self) -> usize {
        self.reprocessed
    }

    /// How many virtual hosts the last translation built again rather than reused.
    pub fn rebuilt_hosts(&self) -> usize {
        self.hosts.rebuilt
    }

    /// How many Ingresses' fragments the translator keeps for the next translation: one
    /// for each admitted Ingress of the last.
    pub fn kept_fragments(&self) -> usize {
        self.fragments.len()
    }

    pub fn translate(&mut self, state: &ClusterState) -> Translation {
        self.last = None;
        let slices = SliceIndex::with_names(state, Arc::clone(&self.names));
        self.translate_with(state, &slices, None)
    }

    /// [`Translator::translate`] for a state the caller shares: the translator keeps it,
    /// and the next call finds what changed by comparing the two (by address, in one pass)
    /// rather than looking up every object each kept fragment read.
    pub fn translate_shared(&mut self, state: &Arc<ClusterState>) -> Translation {
        let (slices, changes) = match self.last.take() {
            Some((old, mut slices)) if Arc::ptr_eq(&slices.names, &self.names) => {
                let changes = StateChanges::between(&old, state, &mut slices);
                (slices, Some(changes))
            }
            _ => (SliceIndex::with_names(state, Arc::clone(&self.names)), None),
        };
        let translation = self.translate_with(state, &slices, changes.as_ref());
        self.last = Some((Arc::clone(state), slices));
        translation
    }

    fn translate_with(
        &mut self,
        state: &ClusterState,
        slices: &SliceIndex,
        changes: Option<&StateChanges>,
    ) -> Translation {
        let opts = &self.opts;
        let mut diagnostics = Vec::new();
        let classes = ClassFilter::new(state, opts);
        let mut admitted: Vec<(&ObjectKey, &Arc<Ingress>)> = Vec::new();
        for (key, ingress) in &state.ingresses {
            match classes.admit(state, ingress) {
                Admission::Admitted => admitted.push((key, ingress)),
                Admission::Ignored => {}
                Admission::UnknownClass(class) => diagnostics.push(Diagnostic {
                    object: ObjectRef {
                        kind: "Ingress",
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                    },
                    reason: Reason::UnknownIngressClass,
                    message: format!(
                        "spec.ingressClassName {class:?}: no IngressClass of that name exists"
                    ),
                }),
            }
        }
        // In key order, as the state keeps them, and each once: what the translation lists
        // as admitted.
        let admitted_keys: Vec<ObjectKey> = admitted.iter().map(|(k, _)| (*k).clone()).collect();
        // Oldest first, so that on a conflict the oldest Ingress wins.
        admitted.sort_by(|(ka, a), (kb, b)| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then_with(|| ka.cmp(kb))
        });

        let config = ControllerConfig::read(
            state,
            opts.controller_config.as_ref(),
            &self.config,
            &mut diagnostics,
        );
        // Every Ingress reads the ConfigMap's settings: when they change, no fragment stands.
        let config_changed = config != self.config;
        self.config = config;
        let mut lookups = Lookups {
            state,
            config: &self.config,
            slices,
            resolved: HashMap::new(),
            secrets: HashMap::new(),
        };
        self.reprocessed = 0;
        // The fragments replaced or dropped stay alive until the snapshot is assembled:
        // `BuiltHosts` knows routes by address, and no new fragment may be allocated where
        // one of them was.
        let mut retired = Vec::new();
        let mut current = Vec::with_capacity(admitted.len());
        for (key, ingress) in &admitted {
            let kept = self.fragments.get_mut(*key);
            current.push(match kept {
                Some(f) if !config_changed && f.is_current(ingress, state, slices, changes) => {
                    f.clone()
                }
                kept => {
                    self.reprocessed += 1;
                    let made = Arc::new(IngressProcessor::new(&mut lookups, ingress).process());
                    match kept {
                        Some(slot) => retired.push(std::mem::replace(slot, made.clone())),
                        None => {
                            self.fragments.insert((*key).clone(), made.clone());
                        }
                    }
                    made
                }
            });
        }
        // Every admitted Ingress has its fragment now; any other is of an Ingress that went.
        if self.fragments.len() > admitted.len() {
            let admitted: HashSet<&ObjectKey> = admitted.iter().map(|(k, _)| *k).collect();
            let gone = self.fragments.extract_if(|k, _| !admitted.contains(k));
            retired.extend(gone.map(|(_, f)| f));
        }
        let global_default = opts
            .default_backend_service
            .as_ref()
            .and_then(|(namespace, name)| {
                let resolved = backend::resolve_first_port(state, slices, namespace, name);
                if let Some((reason, message)) = &resolved.problem {
                    let object = ObjectRef {
                        kind: "Service",
                        namespace: namespace.clone(),
                        name: name.clone(),
                    };
                    diagnostics.push(Diagnostic {
                        object,
                        reason: *reason,
                        message: format!("--default-backend-service: {message}"),
                    });
                }
                // A Service that is not there (or has no port) leaves 404 for unmatched requests.
                (resolved.problem.as_ref().map(|(r, _)| *r) != Some(Reason::ServiceNotFound))
                    .then(|| Arc::new(resolved))
            });
        let gateway_options = GatewayOptions {
            reserved_ports: opts.streams.reserved_ports.clone(),
            ..opts.gateway.clone()
        };
        let gateway = crate::gateway::process(state, slices, &gateway_options, &mut diagnostics);
        let previous_gateway = std::mem::take(&mut self.gateway_fragments);
        let mut table = RouteTable::new(opts.host_ownership);
        for fragment in by_age(&admitted, &current, &gateway.fragments) {
            table.merge(fragment, &mut diagnostics);
        }
        if let Some(resolved) = &global_default {
            table.default_backend_if_unset(resolved);
        }
        table.attach_canaries(&mut diagnostics);
        table.attach_www_redirects();
        table.report_regex_hosts(&mut diagnostics);
        crate::sharing::report_shadowing(&table, &mut diagnostics);
        let (streams, stream_backends) = crate::streams::streams(
            state,
            slices,
            &opts.streams,
            &self.config.streams,
            &table,
            &mut diagnostics,
        );
        let mut streams = streams;
        add_gateway_streams(&mut streams, &gateway.fragments, &mut diagnostics);
        let (hosts, virtual_hosts) = BuiltHosts::build(&mut table, std::mem::take(&mut self.hosts));
        let mut translation = assemble(
            state,
            opts,
            &self.config,
            table,
            Served {
                virtual_hosts,
                streams,
                stream_backends,
            },
            diagnostics,
            admitted_keys,
        );
        translation.gateway_status = gateway.status;
        self.hosts = hosts;
        self.gateway_fragments = gateway.fragments.into_iter().map(|f| f.fragment).collect();
        drop(previous_gateway);
        drop(retired);
        translation
    }
}

/// The ports of TCPRoutes and UDPRoutes and the hosts of TLSRoutes, after the TCP/UDP
/// services ConfigMaps' and the Ingresses' (which keep a port or host they name), oldest
/// route first.
fn add_gateway_streams(
    streams: &mut Streams,
    fragments: &[AgedFragment],
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut aged: Vec<&AgedFragment> = fragments
        .iter()
        .filter(|a| !a.fragment.streams.is_empty() || !a.fragment.passthrough_hosts.is_empty())
        .collect();
    if aged.is_empty() {
        return;
    }
    aged.sort_by(|a, b| (a.created.as_ref(), &a.key).cmp(&(b.created.as_ref(), &b.key)));
    for a in aged {
        let f = &a.fragment;
        let mut report = |message: String| {
            diagnostics.push(Diagnostic {
                object: f.object.clone(),
                reason: Reason::PathConflict,
                message,
            })
        };
        for s in &f.streams {
            if streams
                .services
                .iter()
                .any(|t| t.port == s.port && t.protocol == s.protocol)
            {
                report(format!(
                    "{} port {} is already served (by the services ConfigMap or an older route); ignored",
                    s.protocol.as_str().to_uppercase(),
                    s.port
                ));
            } else {
                streams.services.push(s.clone());
            }
        }
        for p in &f.passthrough_hosts {
            if streams.passthrough.iter().any(|t| t.host == p.host) {
                report(format!(
                    "host {:?} is already passed through (by ssl-passthrough or an older route); ignored",
                    p.host.to_string()
                ));
            } else {
                streams.passthrough.push(p.clone());
            }
        }
    }
    streams.services.sort_by_key(|s| (s.port, s.protocol));
    streams.passthrough.sort_by(|a, b| a.host.cmp(&b.host));
}

/// The Ingresses' fragments (in age order already) and the Gateway API ones, merged in
/// one order: oldest first, then by kind, namespace and name.
fn by_age<'f>(
    admitted: &[(&ObjectKey, &Arc<Ingress>)],
    ingresses: &'f [Arc<Fragment>],
    gateway: &'f [AgedFragment],
) -> Vec<&'f Arc<Fragment>> {
    if gateway.is_empty() {
        return ingresses.iter().collect();
    }
    let mut gateway: Vec<&AgedFragment> = gateway.iter().collect();
    gateway.sort_by(|a, b| {
        (a.created.as_ref(), a.fragment.source.kind, &a.key).cmp(&(
            b.created.as_ref(),
            b.fragment.source.kind,
            &b.key,
        ))
    });
    let mut out = Vec::with_capacity(ingresses.len() + gateway.len());
    let mut g = gateway.into_iter().peekable();
    for ((_, ingress), fragment) in admitted.iter().zip(ingresses) {
        let created = ingress.metadata.creation_timestamp.as_ref();
        while let Some(next) = g.next_if(|a| a.created.as_ref() < created) {
            out.push(&next.fragment);
        }
        out.push(fragment);
    }
    out.extend(g.map(|a| &a.fragment));
    out
}

/// The virtual hosts of one translation, each with what it was built from, so that the
/// next translation can reuse every host whose inputs did not change (and comparing the
/// two snapshots skips it by pointer).
#[derive(Default)]
struct BuiltHosts {
    by_host: HashMap<HostMatch, BuiltHost>,
    /// How many hosts this translation built rather than reused.
    rebuilt: usize,
}

struct BuiltHost {
    inputs: HostInputs,
    host: Arc<VirtualHost>,
}

/// Everything a virtual host is built from. Routes, the client-certificate policy and ciphers are
/// known by address: they live in fragments, which never change once made, and the
/// translator keeps the fragments these addresses came from alive until the next
/// translation has compared against them, so an equal address is the same route.
struct HostInputs {
    routes: Vec<usize>,
    tls: bool,
    /// Sorted by route index.
    canaries: Vec<(usize, Canary)>,
    client_auth: Option<usize>,
    ciphers: Option<usize>,
}

impl BuiltHosts {
    /// The virtual hosts of the merged table, in host order, reusing those of `previous`
    /// that were built from the same inputs.
    fn build(
        table: &mut RouteTable,
        mut previous: BuiltHosts,
    ) -> (BuiltHosts, Vec<Arc<VirtualHost>>) {
        let hosts = std::mem::take(&mut table.hosts);
        let mut built = BuiltHosts {
            by_host: HashMap::with_capacity(hosts.len()),
            rebuilt: 0,
        };
        let mut virtual_hosts = Vec::with_capacity(hosts.len());
        // A host whose every path was invalid or taken has no routes and is left out.
        for (host, h) in hosts.into_iter().filter(|(_, h)| !h.routes.is_empty()) {
            // `ssl-redirect` (on unless turned off) applies where the host has a TLS section.
            let tls = has_tls(&table.tls_hosts, host);
            let (key, entry) = match previous.by_host.remove_entry(host) {
                Some((key, b)) if b.inputs.are_of(&h, tls) => (key, b),
                _ => {
                    built.rebuilt += 1;
                    let host_built = Arc::new(build_host(host, &h, tls));
                    (
                        host.clone(),
                        BuiltHost {
                            inputs: HostInputs::of(&h, tls),
                            host: host_built,
                        },
                    )
                }
            };
            virtual_hosts.push(entry.host.clone());
            built.by_host.insert(key, entry);
        }
        (built, virtual_hosts)
    }
}

fn address<T>(r: &T) -> usize {
    std::ptr::from_ref::<T>(r) as usize
}

impl HostInputs {
    fn of(h: &HostRoutes, tls: bool) -> Self {
        let mut canaries: Vec<(usize, Canary)> =
            h.canaries.iter().map(|(i, c)| (*i, c.clone())).collect();
        canaries.sort_unstable_by_key(|(i, _)| *i);
        HostInputs {
            routes: h
                .routes
                .iter()
                .map(|r| address::<FragmentRoute>(r))
                .collect(),
            tls,
            canaries,
            client_auth: h.client_auth.map(|(c, _)| address::<ClientAuth>(c)),
            ciphers: h.ciphers.map(|(c, _)| address::<String>(c)),
        }
    }

    /// Whether `h` with `tls` is what these inputs were taken from; allocates nothing.
    fn are_of(&self, h: &HostRoutes, tls: bool) -> bool {
        self.tls == tls
            && self.client_auth == h.client_auth.map(|(c, _)| address::<ClientAuth>(c))
            && self.ciphers == h.ciphers.map(|(c, _)| address::<String>(c))
            && self.routes.len() == h.routes.len()
            && self
                .routes
                .iter()
                .zip(&h.routes)
                .all(|(a, r)| *a == address::<FragmentRoute>(r))
            && self.canaries.len() == h.canaries.len()
            && self
                .canaries
                .iter()
                .all(|(i, c)| h.canaries.get(i) == Some(c))
    }
}

fn build_host(host: &HostMatch, h: &HostRoutes, tls: bool) -> VirtualHost {
    let routes = h
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut route = r.route.clone();
            if h.regex_by.is_some() {
                route.path = route.path.on_regex_host();
            }
            route.redirect_to_https |= tls && r.ssl_redirect;
            route.canary = h.canaries.get(&i).cloned().map(Box::new);
            route
        })
        .collect();
    let mut vh = VirtualHost::new(host.clone(), routes);
    vh.client_auth = h.client_auth.map(|(c, _)| c.clone());
    vh.ciphers = h.ciphers.map(|(c, _)| c.clone());
    vh
}

/// What the snapshot serves beside the merged table's certificates and backends.
struct Served {
    virtual_hosts: Vec<Arc<VirtualHost>>,
    streams: Streams,
    /// The backends of the stream services, which no route names.
    stream_backends: Vec<Arc<Backend>>,
}

/// Builds the snapshot from the merged table, its virtual hosts and the listener-wide options.
fn assemble(
    state: &ClusterState,
    opts: &Options,
    config: &ControllerConfig,
    mut table: RouteTable,
    Served {
        virtual_hosts,
        streams,
        stream_backends,
    }: Served,
    mut diagnostics: Vec<Diagnostic>,
    // Sorted, each once.
    admitted: Vec<ObjectKey>,
) -> Translation {
    let tls_hosts = std::mem::take(&mut table.tls_hosts);

    let mut certificates: BTreeMap<String, Certificate> = BTreeMap::new();
    let mut tls = TlsPolicy {
        default_certificate: None,
        hsts: config.hsts(opts.hsts),
        versions: config.tls_versions,
        ciphers: config.ciphers.clone(),
    };
    if let Some((namespace, name)) = &opts.default_certificate {
        let object = ObjectRef {
            kind: "Secret",
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let full = format!("{namespace}/{name}");
        let checked = secret::tls_certificate_of(
            &full,
            state
                .secrets
                .get(&(namespace.clone(), name.clone()))
                .map(|s| &**s),
        )
        .map_err(|(reason, message)| (reason, format!("--default-ssl-certificate: {message}")));
        match checked {
            Ok(c) => {
                if let Some(w) = c.warning {
                    diagnostics.push(Diagnostic {
                        object,
                        reason: Reason::CertificateExpired,
                        message: w,
                    });
                }
                tls.default_certificate = Some(c.certificate.name.clone());
                certificates.insert(c.certificate.name.clone(), c.certificate);
            }
            Err((reason, message)) => diagnostics.push(Diagnostic {
                object,
                reason,
                message: format!(
                    "{message}; the proxy's self-signed certificate is presented instead"
                ),
            }),
        }
    }
    let mut tls_bindings = Vec::new();
    for (host, claim) in tls_hosts {
        let Some(name) = claim.certificate else {
            continue;
        };
        if let Some(c) = table.certificate(name) {
            certificates
                .entry(name.to_string())
                .or_insert_with(|| c.certificate.clone());
            tls_bindings.push(TlsHost {
                host: host.clone(),
                certificate: name.to_string(),
            });
        }
    }

    let default_backend = table
        .default_backend
        .take()
        .map(|(name, _)| name.to_string());
    let snapshot = Snapshot {
        version: 0,
        virtual_hosts,
        default_backend,
        backends: {
            let mut backends = table.backends();
            backends.extend(stream_backends);
            backends.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            backends
        },
        certificates: certificates.into_values().collect(),
        tls_hosts: tls_bindings,
        tls,
        global: config.global.clone(),
        streams,
        // The controller adds these for the proxy's dashboard when it publishes.
        diagnostics: Vec::new(),
    };
    diagnostics.sort();
    diagnostics.dedup();
    Translation {
        snapshot,
        diagnostics,
        admitted,
        gateway_status: GatewayApiStatus::default(),
    }
}

/// Whether a TLS section covers `host`: named exactly, or by a wildcard one label up.
fn has_tls<V>(tls_hosts: &BTreeMap<&HostMatch, V>, host: &HostMatch) -> bool {
    if tls_hosts.contains_key(host) {
        return true;
    }
    match host {
        HostMatch::Exact(name) => name.split_once('.').is_some_and(|(_, suffix)| {
            tls_hosts.contains_key(&HostMatch::Wildcard(suffix.to_string()))
        }),
        _ => false,
    }
}
