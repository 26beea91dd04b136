//! `portico-proxy`: the Pingora data plane. Applies snapshots from the controller and
//! routes HTTP traffic with them.

use anyhow::Context;
use clap::Parser;
use pingora::apps::HttpServerOptions;
use pingora::server::Server;
use portico_proxy::admin;
use portico_proxy::config::{link, store};
use portico_proxy::listener::shutdown::{ShutdownTimeline, Stopping};
use portico_proxy::listener::{connections, forwarded, header_deadline, tls};
use portico_proxy::policy::password_checks::PasswordChecks;
use portico_proxy::service;
use portico_proxy::telemetry::access_log::{AccessLog, AccessLogFormat};
use portico_proxy::telemetry::metrics;
use portico_proxy::telemetry::otlp::{OtlpEndpoint, SpanExporter};
use portico_proxy::upstream::{affinity, health};
use portico_telemetry::{init_logging, LogFormat};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: portico_proxy::allocator::MiMalloc = portico_proxy::allocator::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Portico's proxy: serves the routes the controller sends"
)]
struct Args {
    /// The controller's snapshot socket.
    #[arg(long, default_value = "/var/run/portico/portico.sock")]
    socket: PathBuf,
    /// Plain HTTP listener (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: String,
    /// HTTPS listener (TLS 1.2/1.3, ALPN h2 and http/1.1); empty to turn it off.
    #[arg(long, default_value = "0.0.0.0:8443")]
    https_addr: String,
    /// The port clients reach the HTTPS listener on (the Service's, not the container's):
    /// HTTP→HTTPS redirects point there, and HTTPS requests go upstream with it in
    /// `X-Forwarded-Port`. (`--https-redirect-port` is its older name.)
    #[arg(long, alias = "https-redirect-port", default_value_t = 443)]
    public_https_port: u16,
    /// The port clients reach the HTTP listener on (the Service's): plain-HTTP requests
    /// go upstream with it in `X-Forwarded-Port`.
    #[arg(long, default_value_t = 80)]
    public_http_port: u16,
    /// Admin listener: /healthz, /readyz, /config, /metrics.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_addr: String,
    /// Worker threads for the proxy service (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Peers whose X-Forwarded-* headers (and PROXY protocol headers) are believed, comma-separated CIDRs.
    #[arg(long, default_value = "")]
    trusted_proxies: String,
    /// The header a trusted proxy names the client in (ingress-nginx's
    /// `forwarded-for-header`), e.g. `CF-Connecting-IP` behind Cloudflare.
    #[arg(long, default_value = "X-Forwarded-For", value_parser = header_name)]
    forwarded_for_header: http::HeaderName,
    /// Seconds a client has to send a whole HTTP/1 request header, from its first byte
    /// (from the accept, for a connection's first request); 0 leaves only Pingora's
    /// per-read timeout.
    #[arg(long, default_value_t = 60)]
    client_header_timeout: u64,
    /// Seconds an HTTP/1 connection may wait idle for its next request, and an HTTP/2
    /// connection with no open stream; 0: no limit.
    #[arg(long, default_value_t = 75)]
    client_keepalive_timeout: u64,
    /// Every connection, on both listeners, starts with a PROXY protocol header (v1 or v2);
    /// its client address is used when the sender is in --trusted-proxies.
    #[arg(long)]
    proxy_protocol: bool,
    /// Identifies this proxy to the controller (default: host name and process id).
    #[arg(long)]
    proxy_id: Option<String>,
    /// A file whose bytes key the affinity cookies; give every replica the same one (a
    /// mounted Secret) so that endpoint addresses cannot be guessed from cookies. A path
    /// that does not exist falls back to a built-in key, with a warning.
    #[arg(long)]
    affinity_key_file: Option<PathBuf>,
    /// Keep encoded slashes and backslashes (`%2F`, `%5C`) in request paths rather than
    /// answering 400; some applications (registries, GitLab) put them in resource names.
    /// They are matched as written: `/admin%2Fx` is not under Prefix `/admin/`, so a path
    /// policy on `/admin` does not cover it, while a backend that decodes `%2F` may read
    /// `/admin/x`. Turn it on only where every backend keeps them encoded.
    #[arg(long)]
    allow_encoded_slashes: bool,
    /// The status of answers refused by `limit-rps`, `limit-rpm` or `limit-connections`
    /// (ingress-nginx answers 503).
    #[arg(long, default_value_t = 429, value_parser = clap::value_parser!(u16).range(400..=599))]
    limit_req_status_code: u16,
    /// The largest request header (request line and fields) answered rather than
    /// refused with 431.
    #[arg(long, default_value_t = 32 * 1024)]
    max_request_header_bytes: usize,
    /// The most request header fields answered rather than refused with 431.
    #[arg(long, default_value_t = 100)]
    max_request_headers: usize,
    /// Send no `Server` header, neither Portico's nor an upstream's.
    #[arg(long)]
    hide_server_header: bool,
    /// Offer HTTP/2: by ALPN on the HTTPS listener, and by prior knowledge (h2c) on the
    /// HTTP listener (ingress-nginx's `use-http2`).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    http2: Switch,
    /// Idle upstream connections kept per worker thread, over all backends
    /// (ingress-nginx's `upstream-keepalive-connections`).
    #[arg(long, default_value_t = portico_proxy::DEFAULT_UPSTREAM_KEEPALIVE_CONNECTIONS)]
    upstream_keepalive_connections: usize,
    /// Seconds to keep accepting and serving after SIGTERM, with `/readyz` failing, before
    /// the listeners close.
    #[arg(long, default_value_t = 5)]
    shutdown_grace_seconds: u64,
    /// Seconds in-flight requests have to finish once the listeners have closed; the
    /// process exits after the grace and this.
    #[arg(long, default_value_t = 10)]
    shutdown_drain_seconds: u64,
    /// One line per request on stdout.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    access_log: Switch,
    /// `json`, or `text` for a line like nginx's combined format.
    #[arg(long, value_enum, default_value_t = AccessLogFormat::Json)]
    access_log_format: AccessLogFormat,
    /// Export a span per sampled request to this OTLP/HTTP collector
    /// (`http://host:4318`, JSON encoding), and send upstreams a `traceparent` naming it.
    /// Without it a client's `traceparent` passes through untouched.
    #[arg(long)]
    otlp_endpoint: Option<OtlpEndpoint>,
    /// The share of the traces Portico starts that are sampled (0 to 1); a client's
    /// `traceparent` keeps its own decision.
    #[arg(long, default_value_t = 1.0, value_parser = sample_ratio)]
    trace_sample_ratio: f64,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Relay TLS connections whose SNI names an Ingress with `ssl-passthrough: "true"` to
    /// its backend untouched (ingress-nginx's flag of the same name; off by default).
    #[arg(long)]
    enable_ssl_passthrough: bool,
    /// The address the TCP and UDP services' ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    stream_bind: std::net::IpAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

fn sample_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// How long a connection has to send its PROXY protocol header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let trusted_proxies =
        forwarded::parse_list(&args.trusted_proxies).context("--trusted-proxies")?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let mut server = Server::new_with_opt_and_conf(
        None,
        pingora::server::configuration::ServerConf {
            upstream_keepalive_pool_size: args.upstream_keepalive_connections,
            ..portico_proxy::server_conf(threads, args.shutdown_drain_seconds)
        },
    );
    server.bootstrap();

    let metrics = Arc::new(metrics::ProxyMetrics::new());
    let store = Arc::new(store::SnapshotStore::new(metrics.clone()));

    let affinity_key = match &args.affinity_key_file {
        Some(path) if path.exists() => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading --affinity-key-file {}", path.display()))?;
            anyhow::ensure!(
                bytes.trim_ascii().len() >= 16,
                "--affinity-key-file {}: the key must be at least 16 bytes",
                path.display()
            );
            affinity::AffinityKey::new(bytes.trim_ascii()).context("--affinity-key-file")?
        }
        other => {
            if let Some(path) = other {
                tracing::warn!(path = %path.display(), "--affinity-key-file does not exist; affinity cookies use the built-in key");
            }
            affinity::AffinityKey::built_in()
        }
    };
    let stopping = Stopping::default();
    let proxy_protocol = args.proxy_protocol.then(|| {
        Arc::new(portico_proxy::listener::proxy_protocol::ProxyProtocol {
            trusted: trusted_proxies.clone(),
            timeout: PROXY_HEADER_TIMEOUT,
        })
    });
    let access_log = match args.access_log {
        Switch::On => Some(Arc::new(
            AccessLog::start(args.access_log_format, metrics.access_log_dropped.clone())
                .context("starting the access log")?,
        )),
        Switch::Off => None,
    };
    let stream_context = Arc::new(portico_proxy::stream::StreamContext {
        access_log: access_log.clone(),
        trusted_proxies: trusted_proxies.clone(),
        proxy_header_timeout: PROXY_HEADER_TIMEOUT,
        drain: Duration::from_secs(args.shutdown_drain_seconds),
    });
    let ingress = service::IngressProxy {
        store: store.clone(),
        trusted_proxies,
        forwarded_for_header: args.forwarded_for_header,
        public_ports: service::PublicPorts {
            http: args.public_http_port,
            https: args.public_https_port,
        },
        sessions: affinity::StickySessions::new(affinity_key),
        auth_connector: pingora::connectors::http::Connector::new(None),
        mirrors: portico_proxy::upstream::mirror::RequestMirrors::new(
            metrics.mirror_copies_dropped.clone(),
        ),
        jwks: portico_proxy::policy::jwks::JwksCache::default(),
        // Half the worker threads' worth of cores at most on bcrypt, so that wrong
        // passwords cannot take the proxy's whole CPU; past 128 waiting, 503.
        passwords: PasswordChecks::new(threads / 2, 128),
        allow_encoded_slashes: args.allow_encoded_slashes,
        limit_status: args.limit_req_status_code,
        hide_server_header: args.hide_server_header,
        header_limits: service::HeaderLimits {
            max_bytes: args.max_request_header_bytes,
            max_fields: args.max_request_headers,
        },
        access_log: access_log.clone(),
        spans: match args.otlp_endpoint {
            Some(endpoint) => Some(
                SpanExporter::start(
                    endpoint,
                    metrics.spans_exported.clone(),
                    metrics.spans_dropped.clone(),
                )
                .context("starting the OTLP exporter")?,
            ),
            None => None,
        },
        trace_sample_ratio: args.trace_sample_ratio,
        stopping: stopping.clone(),
    };
    let mut http = pingora::proxy::http_proxy(&server.configuration, ingress);
    let mut options = HttpServerOptions::default();
    options.h2c = args.http2 == Switch::On;
    options.h2_idle_timeout = (args.client_keepalive_timeout > 0)
        .then(|| Duration::from_secs(args.client_keepalive_timeout));
    http.server_options = Some(options);
    let client_timeouts =
        (args.client_header_timeout > 0).then(|| header_deadline::ClientTimeouts {
            header: Duration::from_secs(args.client_header_timeout),
            keepalive: Duration::from_secs(args.client_keepalive_timeout),
        });
    let app = connections::CountedConnections {
        inner: Arc::new(http),
        metrics: metrics.clone(),
        proxy_protocol: proxy_protocol.clone(),
        client_timeouts,
    };
    let mut proxy = pingora::services::listening::Service::new("portico-http".to_string(), app);
    let https_addr: Option<std::net::SocketAddr> = if args.https_addr.is_empty() {
        None
    } else {
        Some(args.https_addr.parse().context("--https-addr")?)
    };
    let passthrough = https_addr
        .filter(|_| args.enable_ssl_passthrough)
        .map(|addr| portico_proxy::listener::pre_tls::Passthrough {
            store: store.clone(),
            hello_timeout: Duration::from_secs(args.client_header_timeout.clamp(1, 60)),
            port: addr.port(),
            context: stream_context.clone(),
        });
    if proxy_protocol.is_some() || passthrough.is_some() {
        proxy.endpoints().set_pre_tls_callback(Arc::new(
            portico_proxy::listener::pre_tls::PreTls {
                proxy_protocol,
                passthrough,
            },
        ));
    }
    proxy.add_tcp(&args.http_addr);
    let mut proxy_addrs = vec![args
        .http_addr
        .parse::<std::net::SocketAddr>()
        .context("--http-addr")?];
    if let Some(addr) = https_addr {
        proxy_addrs.push(addr);
        let fallback = Arc::new(
            tls::ServedCertificate::self_signed()
                .context("generating the self-signed default certificate")?,
        );
        let settings = tls::listener_settings(
            tls::SniCertificates {
                store: store.clone(),
                fallback,
            },
            args.http2 == Switch::On,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("configuring the HTTPS listener")?;
        proxy.add_tls_with_settings(&args.https_addr, None, settings);
    }

    let stream_ports = Arc::new(portico_proxy::stream::StreamPorts::default());
    let admin_addr: std::net::SocketAddr = args.admin_addr.parse().context("--admin-addr")?;
    server.add_service(pingora::services::background::background_service(
        "l4-listeners",
        portico_proxy::stream::StreamListeners {
            store: store.clone(),
            bind: args.stream_bind,
            own_ports: proxy_addrs
                .iter()
                .chain([&admin_addr])
                .map(|a| a.port())
                .collect(),
            ports: stream_ports.clone(),
            context: stream_context,
        },
    ));
    let listeners = admin::ListenerCheck::new(proxy_addrs);
    let mut admin = pingora::services::listening::Service::new(
        "portico-admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(admin::AdminApp {
            store: store.clone(),
            streams: stream_ports,
            listeners,
            stopping: stopping.clone(),
        }),
    );
    admin.add_tcp(&args.admin_addr);
    admin.threads = Some(1);

    server.add_service(pingora::services::background::background_service(
        "health-checks",
        health::HealthChecker {
            store: store.clone(),
        },
    ));
    let link = link::ControllerLink {
        socket: args.socket.clone(),
        proxy_id: args.proxy_id.unwrap_or_else(default_proxy_id),
        store,
    };
    server.add_service(pingora::services::background::background_service(
        "controller-link",
        link,
    ));
    server.add_service(proxy);
    server.add_service(admin);

    tracing::info!(http = %args.http_addr, https = %args.https_addr, admin = %args.admin_addr, threads, socket = %args.socket.display(), "portico-proxy starting");
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(ShutdownTimeline {
            grace: Duration::from_secs(args.shutdown_grace_seconds),
            stopping,
        }),
    });
    tracing::info!("portico-proxy stopped");
    Ok(())
}

fn header_name(text: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("{text:?} is not a header name"))
}
