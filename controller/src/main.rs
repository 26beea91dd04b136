//! `portico-controller`: turns Ingress state into snapshots and serves them to proxies.

mod manifests;
mod source;
mod sync;

use anyhow::{bail, Context};
use clap::Parser;
use portico_telemetry::{init_logging, LogFormat};
use portico_translate::Options;
use portico_wire::SnapshotServer;
use source::{FileSource, Source};
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(version, about = "Portico's controller: Ingress objects in, routing snapshots out")]
struct Args {
    /// Read objects from this directory of manifests (re-read on change) instead of a cluster.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// The IngressClass name to serve.
    #[arg(long, default_value = "portico")]
    ingress_class: String,
    /// The Unix socket proxies connect to.
    #[arg(long, default_value = "/var/run/portico/portico.sock")]
    socket: PathBuf,
    /// Quiet time that ends a burst of changes before a snapshot is built.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// How often the manifests directory is checked for changes.
    #[arg(long, default_value_t = 200)]
    manifests_poll_ms: u64,
    /// The `kubernetes.io/tls` Secret presented for unknown SNI names (default: the proxy's self-signed one).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref)]
    default_ssl_certificate: Option<(String, String)>,
    /// Send Strict-Transport-Security on HTTPS responses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    hsts: bool,
    #[arg(long, default_value_t = 31_536_000)]
    hsts_max_age: u64,
    #[arg(long)]
    hsts_include_subdomains: bool,
    #[arg(long)]
    hsts_preload: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn parse_object_ref(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns.to_string(), name.to_string())),
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);

    let Some(dir) = args.manifests.clone() else {
        bail!("only --manifests DIR is implemented so far; the Kubernetes API source is not built yet");
    };
    if !dir.is_dir() {
        bail!("--manifests {}: not a directory", dir.display());
    }
    let source: Box<dyn Source> = Box::new(FileSource::new(dir, Duration::from_millis(args.manifests_poll_ms)));
    let hsts = args.hsts.then_some(portico_model::Hsts {
        max_age: args.hsts_max_age,
        include_subdomains: args.hsts_include_subdomains,
        preload: args.hsts_preload,
    });
    let options = Options {
        ingress_class: args.ingress_class.clone(),
        assume_class_exists: true,
        default_certificate: args.default_ssl_certificate.clone(),
        hsts,
    };

    let (server, publisher) = SnapshotServer::bind(&args.socket, portico_wire::DEFAULT_MAX_FRAME)
        .with_context(|| format!("binding snapshot socket {}", args.socket.display()))?;
    tracing::info!(socket = %args.socket.display(), "serving snapshots");

    let (states_tx, states_rx) = tokio::sync::watch::channel(None);
    let sync = sync::SyncLoop { options, debounce: Duration::from_millis(args.debounce_ms), ceiling: Duration::from_secs(1), publisher };

    tokio::select! {
        result = source.run(states_tx) => result.context("source failed")?,
        _ = sync.run(states_rx) => {}
        _ = server.serve() => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
