//! L4: the TCP and UDP ports of the snapshot's stream services, on listeners of our own
//! beside Pingora's (which cannot add listeners at run time; docs/design/0021). Each
//! snapshot opens the ports it adds and closes those it removes; a kept port's new
//! settings reach its next sessions through a watch channel, and open sessions never see
//! an unrelated change. A removed port stops accepting at once and its sessions end by
//! themselves or when the drain runs out.

pub mod connect;
pub mod relay;
mod tcp;
mod udp;

use crate::config::compile::{BackendPool, CompiledSnapshot};
use crate::config::store::SnapshotStore;
use crate::listener::forwarded::Cidr;
use crate::telemetry::access_log::{AccessLog, StreamEntry};
use crate::telemetry::metrics::StreamSeries;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use portico_model::{StreamProtocol, StreamService};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What one port serves, as of the latest snapshot.
pub struct PortRoute {
    pub service: StreamService,
    /// `namespace/name:port`, for logs.
    pub service_name: String,
    /// `None` when the snapshot has no such backend (refused by validation, so never).
    pub pool: Option<Arc<BackendPool>>,
    pub series: StreamSeries,
}

/// A port's current route; `None` once the port is removed.
type RouteWatch = watch::Receiver<Option<Arc<PortRoute>>>;

/// What every L4 session of the proxy shares.
pub struct StreamContext {
    pub access_log: Option<Arc<AccessLog>>,
    /// Whose PROXY headers are believed (`--trusted-proxies`).
    pub trusted_proxies: Vec<Cidr>,
    pub proxy_header_timeout: Duration,
    /// How long sessions of a removed port (or a stopping proxy) may go on.
    pub drain: Duration,
}

/// One L4 session's bookkeeping, from [`SessionRecord::begin`] (counted and open) to
/// [`SessionRecord::end`] (closed, its duration observed, its access-log line written).
#[derive(Debug, Clone, Copy)]
pub struct SessionRecord {
    time: SystemTime,
    started: Instant,
}

/// Who a session's log line names.
pub struct SessionPeers<'a> {
    /// `tcp`, `udp` or `tls-passthrough`.
    pub protocol: &'static str,
    pub port: u16,
    pub client: SocketAddr,
    pub upstream: Option<SocketAddr>,
    /// `namespace/name:port` of the Service, or the passthrough host.
    pub service: &'a str,
}

impl SessionRecord {
    pub fn begin(series: &StreamSeries) -> Self {
        series.sessions.inc();
        series.open.inc();
        SessionRecord {
            time: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// The end of a session that moved `received` and `sent` bytes and ended as `end`.
    pub fn end(
        &self,
        series: &StreamSeries,
        context: &StreamContext,
        peers: SessionPeers<'_>,
        (received, sent): (u64, u64),
        end: &str,
    ) {
        series.open.dec();
        series
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(log) = &context.access_log {
            log.write_stream(&StreamEntry {
                time: self.time,
                protocol: peers.protocol,
                port: peers.port,
                client: peers.client,
                upstream_addr: peers.upstream,
                service: peers.service,
                bytes_received: received,
                bytes_sent: sent,
                duration: self.started.elapsed(),
                end,
            });
        }
    }

    /// The end of a relay, or the reason none began (counted as dropped).
    pub fn end_relay(
        &self,
        series: &StreamSeries,
        context: &StreamContext,
        peers: SessionPeers<'_>,
        outcome: Result<relay::Relayed, &'static str>,
    ) {
        let (bytes, end) = match outcome {
            Ok(r) => ((r.received, r.sent), r.end.as_str()),
            Err(why) => {
                series.dropped.inc();
                ((0, 0), why)
            }
        };
        self.end(series, context, peers, bytes, end);
    }
}

/// Resolves once the port is removed or the listeners stop.
async fn draining(mut route: RouteWatch) {
    loop {
        if route.borrow_and_update().is_none() {
            return;
        }
        if route.changed().await.is_err() {
            return;
        }
    }
}

/// The state of each L4 port, for `/streams` and the dashboard.
#[derive(Default)]
pub struct StreamPorts {
    ports: Mutex<BTreeMap<(u16, StreamProtocol), PortState>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PortState {
    pub port: u16,
    pub protocol: &'static str,
    pub service: String,
    /// `listening`, or why not.
    pub state: String,
}

impl StreamPorts {
    pub fn list(&self) -> Vec<PortState> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u16, StreamProtocol), PortState>> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The background service that keeps the L4 listeners in step with the snapshot.
pub struct StreamListeners {
    pub store: Arc<SnapshotStore>,
    /// `--stream-bind`.
    pub bind: IpAddr,
    /// The proxy's own listener ports, which no stream service may take.
    pub own_ports: Vec<u16>,
    pub ports: Arc<StreamPorts>,
    pub context: Arc<StreamContext>,
}

/// An open port: its route's sender (dropping it stops the listener and drains).
struct OpenPort {
    route: watch::Sender<Option<Arc<PortRoute>>>,
}

#[async_trait]
impl BackgroundService for StreamListeners {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut applied = self.store.subscribe();
        let mut open: BTreeMap<(u16, StreamProtocol), OpenPort> = BTreeMap::new();
        loop {
            if let Some(snapshot) = self.store.load() {
                self.reconcile(&snapshot, &mut open).await;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        // Stopping: no new sessions; open ones drain.
        for (_, port) in open {
            port.route.send_replace(None);
        }
    }
}

impl StreamListeners {
    async fn reconcile(
        &self,
        snapshot: &CompiledSnapshot,
        open: &mut BTreeMap<(u16, StreamProtocol), OpenPort>,
    ) {
        let wanted: BTreeMap<_, _> = snapshot
            .stream_services()
            .map(|(s, pool)| ((s.port, s.protocol), (s, pool)))
            .collect();
        let mut states = BTreeMap::new();
        let gone: Vec<_> = open
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(port) = open.remove(&key) {
                port.route.send_replace(None);
                tracing::info!(port = key.0, protocol = key.1.as_str(), "L4 port closed");
            }
        }
        for (&key, &(service, pool)) in &wanted {
            let (port, protocol) = key;
            let service_name = service.service.to_string();
            let state = |state: String| PortState {
                port,
                protocol: protocol.as_str(),
                service: service_name.clone(),
                state,
            };
            if self.own_ports.contains(&port) {
                states.insert(
                    key,
                    state("refused: a port of the proxy's own listeners".into()),
                );
                continue;
            }
            let route = Arc::new(PortRoute {
                service: service.clone(),
                service_name: service_name.clone(),
                pool: pool.cloned(),
                series: snapshot.metrics().streams.series(port, protocol.as_str()),
            });
            if let Some(existing) = open.get(&key) {
                let changed = existing.route.borrow().as_ref().is_none_or(|r| {
                    r.service != route.service || !same_pool(r.pool.as_ref(), route.pool.as_ref())
                });
                if changed {
                    existing.route.send_replace(Some(route));
                }
                states.insert(key, state("listening".into()));
                continue;
            }
            match self.open(key, route).await {
                Ok(port) => {
                    tracing::info!(port = key.0, protocol = protocol.as_str(), service = %service_name, "L4 port open");
                    open.insert(key, port);
                    states.insert(key, state("listening".into()));
                }
                Err(e) => {
                    tracing::error!(port = key.0, protocol = protocol.as_str(), error = %e, "L4 port cannot be opened");
                    states.insert(key, state(format!("cannot listen: {e}")));
                }
            }
        }
        *self.ports.lock() = states;
    }

    async fn open(
        &self,
        (port, protocol): (u16, StreamProtocol),
        route: Arc<PortRoute>,
    ) -> std::io::Result<OpenPort> {
        let addr = SocketAddr::new(self.bind, port);
        let (tx, rx) = watch::channel(Some(route));
        let ctx = self.context.clone();
        match protocol {
            StreamProtocol::Tcp => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                tokio::spawn(tcp::serve(listener, rx, ctx));
            }
            StreamProtocol::Udp => {
                let socket = tokio::net::UdpSocket::bind(addr).await?;
                tokio::spawn(udp::serve(socket, rx, ctx));
            }
        }
        Ok(OpenPort { route: tx })
    }
}

fn same_pool(a: Option<&Arc<BackendPool>>, b: Option<&Arc<BackendPool>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
