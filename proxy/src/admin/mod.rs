//! The admin listener: liveness, readiness, the applied snapshot, metrics, and the
//! dashboard.

pub mod dashboard;

use crate::config::store::SnapshotStore;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct AdminApp {
    pub store: Arc<SnapshotStore>,
    /// The L4 ports and whether they listen.
    pub streams: Arc<crate::stream::StreamPorts>,
    pub listeners: ListenerCheck,
    /// Set on SIGTERM: `/readyz` fails so that probes take the proxy out of rotation.
    pub stopping: crate::listener::shutdown::Stopping,
}

/// Whether the proxy's own listeners accept connections yet. Pingora binds each service's
/// listeners on that service's thread, so a snapshot can be applied before traffic could
/// reach it; `/readyz` waits for both. Once every listener has accepted, it is not asked again.
pub struct ListenerCheck {
    addrs: Vec<SocketAddr>,
    accepted: AtomicBool,
}

impl ListenerCheck {
    /// `addrs` as configured; an unspecified address (`0.0.0.0`, `::`) is checked on loopback.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let addrs = addrs
            .into_iter()
            .map(|a| match a.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
                }
                IpAddr::V6(ip) if ip.is_unspecified() => {
                    SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
                }
                _ => a,
            })
            .collect();
        ListenerCheck {
            addrs,
            accepted: AtomicBool::new(false),
        }
    }

    async fn all_accept(&self) -> bool {
        if self.accepted.load(Ordering::Relaxed) {
            return true;
        }
        // Where the kernel lists sockets, read it: a connection of our own would reach the
        // HTTPS listener as a handshake that never comes, logged as an error.
        if let Some(listening) = listening_ports() {
            let all = self.addrs.iter().all(|a| listening.contains(&a.port()));
            self.accepted.store(all, Ordering::Relaxed);
            return all;
        }
        for addr in &self.addrs {
            let connect = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            );
            if !matches!(connect.await, Ok(Ok(_))) {
                return false;
            }
        }
        self.accepted.store(true, Ordering::Relaxed);
        true
    }
}

impl AdminApp {
    /// `; controller link down for N s: why` and `; last snapshot refused: why`, or nothing.
    fn link_text(&self) -> String {
        let mut text = self
            .store
            .link_down()
            .map_or_else(String::new, |(for_how_long, why)| {
                format!(
                    "; controller link down for {} s: {why}",
                    for_how_long.as_secs()
                )
            });
        if let Some(why) = self.store.last_refusal() {
            text.push_str(&format!("; last snapshot refused: {why}"));
        }
        text
    }
}

/// The local ports of listening TCP sockets, from `/proc/net/tcp` and `tcp6`; `None` where
/// they cannot be read.
fn listening_ports() -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        ports.extend(text.lines().skip(1).filter_map(listening_port));
    }
    read_any.then_some(ports)
}

/// The local port of a `/proc/net/tcp` line (`sl local rem st …`) whose state is LISTEN.
fn listening_port(line: &str) -> Option<u16> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    let (_, port) = local.rsplit_once(':')?;
    (state == "0A").then(|| u16::from_str_radix(port, 16).ok())?
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::SERVER, crate::answer::pages::SERVER)
        .body(body)
        .expect("valid response")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        const TEXT: &str = "text/plain; charset=utf-8";
        const JSON: &str = "application/json";
        match session.req_header().uri.path() {
            "/healthz" => reply(StatusCode::OK, TEXT, b"ok\n".to_vec()),
            "/readyz" => match self.store.load() {
                _ if self.stopping.is_set() => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    b"stopping: the listeners close after the grace period\n".to_vec(),
                ),
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("no snapshot applied yet{}\n", self.link_text()).into_bytes(),
                ),
                Some(_) if !self.listeners.all_accept().await => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    b"proxy listeners not accepting yet\n".to_vec(),
                ),
                // Serving the last good snapshot is ready even with the controller away.
                Some(s) => reply(
                    StatusCode::OK,
                    TEXT,
                    format!("ready: snapshot {}{}\n", s.version(), self.link_text()).into_bytes(),
                ),
            },
            "/config" => match self.store.load() {
                Some(s) => reply(
                    StatusCode::OK,
                    JSON,
                    s.source.redacted().to_json_pretty().into_bytes(),
                ),
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    JSON,
                    br#"{"error":"no snapshot applied yet"}"#.to_vec(),
                ),
            },
            "/streams" => reply(
                StatusCode::OK,
                JSON,
                serde_json::to_vec_pretty(&self.streams.list()).unwrap_or_default(),
            ),
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.store.metrics().render(),
            ),
            "/" => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::admin::dashboard::PAGE.as_bytes().to_vec(),
            ),
            // `null` rather than an error before the first snapshot, so the page has nothing to report.
            "/api/state" => {
                let applied_at = self.store.metrics().snapshot_apply_timestamp.get();
                let state = self
                    .store
                    .load()
                    .map(|s| crate::admin::dashboard::state(&s, applied_at, &self.streams.list()));
                reply(
                    StatusCode::OK,
                    JSON,
                    serde_json::to_vec(&state).unwrap_or_default(),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                b"not found: try /, /healthz, /readyz, /config or /metrics\n".to_vec(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_the_kernel_table() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue";
        assert_eq!(listening_port(header), None);
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1";
        assert_eq!(listening_port(listen), Some(8080));
        let established = "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1";
        assert_eq!(listening_port(established), None);
        let v6 = "   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000";
        assert_eq!(listening_port(v6), Some(8443));
    }

    #[tokio::test]
    async fn listeners_count_once_they_accept() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(
            !ListenerCheck::new([open, closed]).all_accept().await,
            "one listener is not there"
        );
        let unspecified: SocketAddr = format!("0.0.0.0:{}", open.port()).parse().unwrap();
        let check = ListenerCheck::new([unspecified]);
        assert!(check.all_accept().await, "0.0.0.0 is checked on loopback");
        drop(listener);
        assert!(check.all_accept().await, "once accepted, not asked again");
    }
}
