//! A TCP port: each connection is relayed to an endpoint of the port's backend, with the
//! PROXY protocol read from the client and sent upstream when the entry says so.

use super::connect::connect;
use super::relay::{relay, RelayLimits};
use super::{draining, PortRoute, RouteWatch, SessionPeers, SessionRecord, StreamContext};
use crate::listener::forwarded;
use crate::listener::proxy_protocol::{read_header, v1_header, ProxyHeader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Accepts until the port is removed (its route becomes `None`); sessions go on.
pub(super) async fn serve(listener: TcpListener, mut route: RouteWatch, ctx: Arc<StreamContext>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let Some(current) = route.borrow().clone() else { return };
                    tokio::spawn(session(client, peer, current, route.clone(), ctx.clone()));
                }
                Err(e) => {
                    // Out of descriptors, most likely: let some sessions end first.
                    tracing::warn!(error = %e, "L4 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = route.changed() => {
                if changed.is_err() || route.borrow().is_none() {
                    return;
                }
            }
        }
    }
}

async fn session(
    mut client: TcpStream,
    peer: SocketAddr,
    route: Arc<PortRoute>,
    watch: RouteWatch,
    ctx: Arc<StreamContext>,
) {
    let series = &route.series;
    let record = SessionRecord::begin(series);
    let _ = client.set_nodelay(true);
    let service = &route.service;
    let mut source = peer;
    let mut early = Vec::new();
    let mut upstream_addr = None;
    let outcome = async {
        if service.accept_proxy_protocol {
            let (header, after) = read_header(&mut client, ctx.proxy_header_timeout)
                .await
                .map_err(|_| "bad_proxy_header")?;
            // As on the HTTP listener: the address is believed from trusted senders only.
            if let ProxyHeader::Forwarded {
                source: claimed, ..
            } = header
            {
                if forwarded::is_trusted(&ctx.trusted_proxies, peer.ip()) {
                    source = claimed;
                }
            }
            early = after;
        }
        let pool = route.pool.as_deref().ok_or("no_endpoint")?;
        let next_upstream_timeout = (service.timeouts.next_upstream_ms > 0)
            .then(|| Duration::from_millis(service.timeouts.next_upstream_ms));
        let mut upstream = connect(pool, next_upstream_timeout, series)
            .await
            .map_err(|f| f.as_str())?;
        upstream_addr = Some(upstream.addr);
        if service.send_proxy_protocol {
            let local = client.local_addr().unwrap_or(peer);
            upstream
                .stream
                .write_all(v1_header(source, local).as_bytes())
                .await
                .map_err(|_| "connect_failed")?;
        }
        if !early.is_empty() {
            upstream
                .stream
                .write_all(&early)
                .await
                .map_err(|_| "connect_failed")?;
        }
        let limits = RelayLimits {
            idle: Duration::from_millis(service.timeouts.idle_ms),
            drain: ctx.drain,
        };
        let relayed = relay(client, upstream.stream, limits, draining(watch), series).await;
        drop(upstream.session);
        Ok(relayed)
    }
    .await;
    let peers = SessionPeers {
        protocol: "tcp",
        port: service.port,
        client: source,
        upstream: upstream_addr,
        service: &route.service_name,
    };
    record.end_relay(series, &ctx, peers, outcome);
}
