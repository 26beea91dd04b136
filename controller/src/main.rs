//! `portico-controller`: turns Ingress state into snapshots and serves them to proxies.

mod check;
mod duties;
mod events;
mod external_names;
mod gateway_status;
mod leader;
mod manifests;
mod metrics;
mod source;
mod status;
mod sync;

use anyhow::{bail, Context};
use clap::Parser;
use portico_telemetry::{init_logging, LogFormat};
use portico_translate::{HostOwnership, Options};
use portico_wire::SnapshotServer;
use source::{FileSource, KubeSource, Source};
use status::PublishSource;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Portico's controller: Ingress objects in, routing snapshots out"
)]
struct Args {
    /// Read objects from this directory of manifests (re-read on change) instead of a cluster.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Print what this directory of manifests would produce (admitted Ingresses, routes,
    /// diagnostics) and exit: 0 without errors, 1 with.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["manifests", "kubeconfig"])]
    check: Option<PathBuf>,
    /// The kubeconfig to reach the cluster with (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (repeatable; default: every namespace).
    #[arg(long = "watch-namespace", value_name = "NS")]
    watch_namespaces: Vec<String>,
    /// Publish this Service's load-balancer addresses (else its external IPs) as Ingress status.
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref, conflicts_with = "publish_status_address")]
    publish_service: Option<(String, String)>,
    /// Publish these IPs or host names (comma separated) as Ingress status.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    publish_status_address: Vec<String>,
    /// Prometheus metrics on http://ADDR/metrics (empty: off).
    #[arg(long, default_value = "0.0.0.0:10254")]
    metrics_addr: String,
    /// The name of the Lease replicas elect a leader with.
    #[arg(long, default_value = "portico-leader")]
    election_id: String,
    /// The namespace of that Lease (default: the controller's own, from its service account or kubeconfig).
    #[arg(long)]
    election_namespace: Option<String>,
    /// How long a leader's Lease lasts unrenewed before another replica takes over.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// The IngressClass name to serve.
    #[arg(long, default_value = "portico")]
    ingress_class: String,
    /// The port of Gateway listeners (protocol HTTP) that the proxy's HTTP listener serves;
    /// HTTP listeners on other ports are reported PortUnavailable.
    #[arg(long, default_value_t = 80)]
    gateway_http_port: i32,
    /// The port of Gateway listeners (protocol HTTPS) that the proxy's HTTPS listener serves.
    #[arg(long, default_value_t = 443)]
    gateway_https_port: i32,
    /// The Unix socket proxies connect to.
    #[arg(long, default_value = "/var/run/portico/portico.sock")]
    socket: PathBuf,
    /// A change within this time of the one before it waits until changes stop for this long (others are translated at once).
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// How often the manifests directory is checked for changes.
    #[arg(long, default_value_t = 200)]
    manifests_poll_ms: u64,
    /// The `kubernetes.io/tls` Secret presented for unknown SNI names (default: the proxy's self-signed one).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref)]
    default_ssl_certificate: Option<(String, String)>,
    /// The Service (its first port) that answers requests no Ingress routes, unless an
    /// Ingress's `spec.defaultBackend` does (default: Portico's own 404).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref)]
    default_backend_service: Option<(String, String)>,
    /// Send Strict-Transport-Security on HTTPS responses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    hsts: bool,
    #[arg(long, default_value_t = 31_536_000)]
    hsts_max_age: u64,
    #[arg(long)]
    hsts_include_subdomains: bool,
    #[arg(long)]
    hsts_preload: bool,
    /// Who may route a host: `shared` (any namespace, the oldest Ingress winning each
    /// path, as ingress-nginx; shadowing across namespaces is a warning) or `namespace`
    /// (the namespace of the oldest Ingress naming a host owns it; other namespaces' rules
    /// and TLS sections for it are refused).
    #[arg(long, value_enum, default_value_t = HostOwnershipArg::Shared)]
    host_ownership: HostOwnershipArg,
    /// ingress-nginx's controller ConfigMap: its keys set global behaviour and the
    /// defaults of annotations (see docs/ingress-nginx-migration.md).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref)]
    configmap: Option<(String, String)>,
    /// ingress-nginx's TCP services ConfigMap: each key a port the proxy exposes, each value
    /// `namespace/service:port[:PROXY][:PROXY]`.
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref)]
    tcp_services_configmap: Option<(String, String)>,
    /// ingress-nginx's UDP services ConfigMap, in the same format (without PROXY).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref)]
    udp_services_configmap: Option<(String, String)>,
    /// Ports a TCP or UDP service may not take: the proxy's own listeners.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "80,443,8080,8443,9901,10254"
    )]
    reserved_ports: Vec<u16>,
    /// Let ExternalName Services reach loopback, link-local and cloud-metadata addresses,
    /// which they are refused by default so that an Ingress is no way into the node.
    #[arg(long)]
    external_name_allow_local: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HostOwnershipArg {
    Shared,
    Namespace,
}

impl From<HostOwnershipArg> for HostOwnership {
    fn from(arg: HostOwnershipArg) -> Self {
        match arg {
            HostOwnershipArg::Shared => HostOwnership::Shared,
            HostOwnershipArg::Namespace => HostOwnership::Namespace,
        }
    }
}

fn parse_object_ref(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);

    let hsts = args.hsts.then_some(portico_model::Hsts {
        max_age: args.hsts_max_age,
        include_subdomains: args.hsts_include_subdomains,
        preload: args.hsts_preload,
    });
    let options = Options {
        ingress_class: args.ingress_class.clone(),
        // Without a cluster there may be no IngressClass object; in a cluster one must exist.
        assume_class_exists: args.manifests.is_some(),
        default_certificate: args.default_ssl_certificate.clone(),
        default_backend_service: args.default_backend_service.clone(),
        host_ownership: args.host_ownership.into(),
        hsts,
        controller_config: args.configmap.clone(),
        streams: portico_translate::StreamOptions {
            tcp_services: args.tcp_services_configmap.clone(),
            udp_services: args.udp_services_configmap.clone(),
            reserved_ports: args.reserved_ports.clone(),
        },
        gateway: portico_translate::gateway::GatewayOptions {
            http_port: args.gateway_http_port,
            https_port: args.gateway_https_port,
            reserved_ports: Vec::new(),
        },
    };

    if let Some(dir) = &args.check {
        let check_options = Options {
            assume_class_exists: true,
            ..options
        };
        let (report, ok) = check::report(dir, &check_options)
            .with_context(|| format!("--check {}", dir.display()))?;
        print!("{report}");
        std::process::exit(if ok { 0 } else { 1 });
    }

    let (server, publisher) =
        SnapshotServer::bind(&args.socket, portico_wire::DEFAULT_MAX_FRAME)
            .with_context(|| format!("binding snapshot socket {}", args.socket.display()))?;
    tracing::info!(socket = %args.socket.display(), "serving snapshots");
    let metrics = metrics::ControllerMetrics::new(server.acked_versions());
    let metrics_server = async {
        match args.metrics_addr.as_str() {
            "" => std::future::pending().await,
            addr => {
                let addr: SocketAddr = addr
                    .parse()
                    .with_context(|| format!("--metrics-addr {addr:?}"))?;
                metrics::serve(addr, metrics.clone()).await
            }
        }
    };

    let (states_tx, states_rx) = tokio::sync::watch::channel(None);
    let (outcomes_tx, outcomes_rx) = tokio::sync::watch::channel(None);
    let (names_tx, names_rx) = tokio::sync::watch::channel(std::sync::Arc::default());
    let resolve_names = {
        let states = states_rx.clone();
        let allow_local = args.external_name_allow_local;
        async move {
            match external_names::NameResolver::from_system(allow_local) {
                Ok(resolver) => resolver.run(states, names_tx).await,
                Err(e) => {
                    tracing::warn!(error = %e, "no DNS resolver: ExternalName Services stay unresolved");
                    drop(names_tx);
                    std::future::pending().await
                }
            }
        }
    };
    let sync = sync::SyncLoop {
        options,
        debounce: Duration::from_millis(args.debounce_ms),
        ceiling: Duration::from_secs(1),
        publisher,
        outcomes: outcomes_tx,
        metrics: metrics.clone(),
    };

    let cluster = match &args.manifests {
        Some(dir) => {
            if !dir.is_dir() {
                bail!("--manifests {}: not a directory", dir.display());
            }
            None
        }
        None => Some(Cluster::connect(&args).await?),
    };
    let source: Box<dyn Source> = match (&args.manifests, &cluster) {
        (Some(dir), _) => Box::new(FileSource::new(
            dir.clone(),
            Duration::from_millis(args.manifests_poll_ms),
        )),
        (None, Some(c)) => Box::new(KubeSource::new(
            c.client.clone(),
            args.watch_namespaces.clone(),
            [
                &args.configmap,
                &args.tcp_services_configmap,
                &args.udp_services_configmap,
            ]
            .into_iter()
            .flatten()
            .map(|(ns, _)| ns.clone())
            .collect(),
            metrics.clone(),
        )),
        (None, None) => unreachable!("a cluster is connected when there are no manifests"),
    };
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(false);
    let mut election = cluster.as_ref().map(|c| c.election(&args));
    let elect = async {
        match election.as_mut() {
            Some(e) => e.run(&leading_tx).await,
            None => std::future::pending().await,
        }
    };
    let mut publish_task = None;
    let duties = cluster.as_ref().map(|c| {
        let status = c.publish_source(&args).map(|source| {
            let (addresses, task) = duties::publish_addresses(&c.client, &source);
            publish_task = task;
            (
                status::StatusWriter::new(c.client.clone(), metrics.clone()),
                addresses,
            )
        });
        if status.is_none() {
            tracing::info!(
                "no --publish-service or --publish-status-address: Ingress status is not written"
            );
        }
        duties::LeaderDuties {
            events: events::EventReporter::new(
                c.client.clone(),
                c.identity.clone(),
                metrics.clone(),
            ),
            status,
            gateway_status: gateway_status::GatewayStatusWriter::new(
                c.client.clone(),
                metrics.clone(),
            ),
        }
    });
    let duties_run = async {
        match duties {
            Some(d) => d.run(leading_rx, outcomes_rx).await,
            None => std::future::pending().await,
        }
    };
    let leader_gauge = async {
        let mut rx = leading_tx.subscribe();
        while rx.changed().await.is_ok() {
            metrics.leader.set(i64::from(*rx.borrow_and_update()));
        }
    };

    tokio::select! {
        result = source.run(states_tx) => result.context("source failed")?,
        result = metrics_server => result?,
        _ = sync.run(states_rx, names_rx) => {}
        _ = resolve_names => {}
        _ = server.serve() => {}
        _ = elect => {}
        _ = duties_run => {}
        _ = leader_gauge => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    if let Some(task) = publish_task {
        task.abort();
    }
    if let Some(e) = election.as_ref().filter(|_| *leading_tx.borrow()) {
        // Bounded: an unreachable API server must not hold up the shutdown.
        if tokio::time::timeout(Duration::from_secs(2), e.release())
            .await
            .is_err()
        {
            tracing::warn!(
                "releasing the lease timed out; another replica takes over when it expires"
            );
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// A connection to the Kubernetes API and who this controller is to it.
struct Cluster {
    client: kube::Client,
    identity: String,
}

impl Cluster {
    async fn connect(args: &Args) -> anyhow::Result<Cluster> {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("--kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .with_context(|| format!("--kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer().await.context(
                "finding Kubernetes credentials (in-cluster, $KUBECONFIG or ~/.kube/config)",
            )?,
        };
        tracing::info!(server = %config.cluster_url, "connecting to the Kubernetes API");
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        // The pod name is unique among replicas; outside a pod, host name and process id are.
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            });
        Ok(Cluster { client, identity })
    }

    fn election(&self, args: &Args) -> leader::LeaderElection {
        let namespace = args
            .election_namespace
            .clone()
            .unwrap_or_else(|| self.client.default_namespace().to_string());
        tracing::info!(lease = %format!("{namespace}/{}", args.election_id), identity = %self.identity, "taking part in leader election");
        leader::LeaderElection::new(
            kube::Api::namespaced(self.client.clone(), &namespace),
            args.election_id.clone(),
            self.identity.clone(),
            Duration::from_secs(args.lease_duration_secs.max(1)),
        )
    }

    fn publish_source(&self, args: &Args) -> Option<PublishSource> {
        if let Some(service) = &args.publish_service {
            return Some(PublishSource::Service(service.clone()));
        }
        let addresses: Vec<String> = args
            .publish_status_address
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        (!addresses.is_empty()).then_some(PublishSource::Addresses(addresses))
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
