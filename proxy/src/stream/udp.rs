//! A UDP port: a session per client address and port, each with its own socket connected
//! to one endpoint, so the endpoint's answers go back to that client. A session ends when
//! the upstream has sent `proxy-stream-responses` datagrams for each the client sent, or
//! after the idle timeout; at most [`MAX_SESSIONS`] are open per port.

use super::relay::{idle_or_drained, Activity, RelayLimits};
use super::{draining, PortRoute, RouteWatch, SessionPeers, SessionRecord, StreamContext};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Sessions open at once on one port; datagrams from further clients are dropped.
pub const MAX_SESSIONS: usize = 10_000;

/// The largest UDP payload.
const DATAGRAM_BYTES: usize = 65_535;

struct Session {
    upstream: UdpSocket,
    upstream_addr: SocketAddr,
    /// Datagrams from the client, and answers from the upstream.
    received: AtomicU64,
    sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// The last datagram either way, for the idle timeout.
    activity: Activity,
    record: SessionRecord,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

/// Receives until the port is removed; open sessions then drain.
pub(super) async fn serve(socket: UdpSocket, mut route: RouteWatch, ctx: Arc<StreamContext>) {
    let socket = Arc::new(socket);
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, client)) = received else { continue };
                let Some(current) = route.borrow().clone() else { return };
                forward(&buf[..n], client, &current, &socket, &sessions, &route, &ctx).await;
            }
            changed = route.changed() => {
                if changed.is_err() || route.borrow().is_none() {
                    return;
                }
            }
        }
    }
}

async fn forward(
    datagram: &[u8],
    client: SocketAddr,
    route: &Arc<PortRoute>,
    socket: &Arc<UdpSocket>,
    sessions: &Sessions,
    watch: &RouteWatch,
    ctx: &Arc<StreamContext>,
) {
    let series = &route.series;
    series.datagrams_received.inc();
    let existing = sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&client)
        .cloned();
    let session = match existing {
        Some(s) => s,
        None => match open(client, route, sessions).await {
            Ok(s) => {
                tokio::spawn(answer(
                    client,
                    s.clone(),
                    route.clone(),
                    socket.clone(),
                    sessions.clone(),
                    watch.clone(),
                    ctx.clone(),
                ));
                s
            }
            Err(end) => {
                series.dropped.inc();
                tracing::debug!(%client, port = route.service.port, end, "UDP datagram dropped");
                return;
            }
        },
    };
    // Counted before it goes, so an answer never finds itself unexpected.
    session.received.fetch_add(1, Ordering::Relaxed);
    session
        .bytes_received
        .fetch_add(datagram.len() as u64, Ordering::Relaxed);
    session.activity.touch();
    series.bytes_received.inc_by(datagram.len() as u64);
    let _ = session.upstream.send(datagram).await;
}

/// A new session: a socket connected to an endpoint the balancer picks.
async fn open(
    client: SocketAddr,
    route: &PortRoute,
    sessions: &Sessions,
) -> Result<Arc<Session>, &'static str> {
    if sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len()
        >= MAX_SESSIONS
    {
        return Err("too_many_sessions");
    }
    let pool = route.pool.as_deref().ok_or("no_endpoint")?;
    // Round robin, as every L4 backend: no hash key.
    let index = pool.balancer.pick(&[], &[]).ok_or("no_endpoint")?;
    let upstream_addr = pool.balancer.endpoint(index).addr;
    let local: IpAddr = match upstream_addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let upstream = UdpSocket::bind((local, 0))
        .await
        .map_err(|_| "connect_failed")?;
    upstream
        .connect(upstream_addr)
        .await
        .map_err(|_| "connect_failed")?;
    let session = Arc::new(Session {
        upstream,
        upstream_addr,
        received: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        bytes_received: AtomicU64::new(0),
        bytes_sent: AtomicU64::new(0),
        activity: Activity::new(),
        record: SessionRecord::begin(&route.series),
    });
    sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(client, session.clone());
    Ok(session)
}

/// Sends the upstream's answers to the client until the session ends, then forgets it.
async fn answer(
    client: SocketAddr,
    session: Arc<Session>,
    route: Arc<PortRoute>,
    socket: Arc<UdpSocket>,
    sessions: Sessions,
    watch: RouteWatch,
    ctx: Arc<StreamContext>,
) {
    let series = &route.series;
    let limits = RelayLimits {
        idle: Duration::from_millis(route.service.timeouts.idle_ms),
        drain: ctx.drain,
    };
    let responses = u64::from(route.service.udp_responses);
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    let mut ended = std::pin::pin!(idle_or_drained(&session.activity, limits, draining(watch)));
    let end = loop {
        tokio::select! {
            answered = session.upstream.recv(&mut buf) => {
                let Ok(n) = answered else {
                    // ICMP unreachable on a connected socket: the endpoint is not listening.
                    series.connect_errors.inc();
                    break "connect_failed";
                };
                let _ = socket.send_to(&buf[..n], client).await;
                series.datagrams_sent.inc();
                series.bytes_sent.inc_by(n as u64);
                session.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                let sent = session.sent.fetch_add(1, Ordering::Relaxed) + 1;
                session.activity.touch();
                if responses > 0 && sent >= responses * session.received.load(Ordering::Relaxed) {
                    break "closed";
                }
            }
            end = &mut ended => break end.as_str(),
        }
    };
    {
        let mut open = sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if open.get(&client).is_some_and(|s| Arc::ptr_eq(s, &session)) {
            open.remove(&client);
        }
    }
    let peers = SessionPeers {
        protocol: "udp",
        port: route.service.port,
        client,
        upstream: Some(session.upstream_addr),
        service: &route.service_name,
    };
    let bytes = (
        session.bytes_received.load(Ordering::Relaxed),
        session.bytes_sent.load(Ordering::Relaxed),
    );
    session.record.end(series, &ctx, peers, bytes, end);
}
