//! L4 in the snapshot: TCP and UDP ports relayed to a backend's endpoints (ingress-nginx's
//! `--tcp-services-configmap` and `--udp-services-configmap`), and the hosts whose TLS
//! connections the HTTPS listener relays untouched (`ssl-passthrough`).

use crate::{HostMatch, ServiceRef};
use serde::{Deserialize, Serialize};

/// Everything the proxy serves below HTTP. Small, so a delta carries it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Streams {
    /// At most one per port and protocol, sorted by port then protocol.
    #[serde(default)]
    pub services: Vec<StreamService>,
    /// At most one per host, sorted by host.
    #[serde(default)]
    pub passthrough: Vec<PassthroughHost>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StreamProtocol {
    Tcp,
    Udp,
}

impl StreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamProtocol::Tcp => "tcp",
            StreamProtocol::Udp => "udp",
        }
    }
}

/// One exposed port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamService {
    pub port: u16,
    pub protocol: StreamProtocol,
    /// The [`crate::Backend::name`] whose endpoints take the sessions; its policy's connect
    /// timeout and retry tries apply to TCP connects.
    pub backend: String,
    /// What the ConfigMap named, for logs, metrics and `/config`.
    pub service: ServiceRef,
    /// Clients send a PROXY protocol header first (TCP only).
    #[serde(default)]
    pub accept_proxy_protocol: bool,
    /// Portico sends a PROXY protocol (v1) header to the upstream first (TCP only).
    #[serde(default)]
    pub send_proxy_protocol: bool,
    pub timeouts: StreamTimeouts,
    /// UDP: the datagrams an upstream answers each client datagram with, after which the
    /// session ends (`proxy-stream-responses`); 0 waits for the idle timeout.
    #[serde(default)]
    pub udp_responses: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTimeouts {
    /// A session with nothing sent either way for this long is closed
    /// (`proxy-stream-timeout`).
    pub idle_ms: u64,
    /// Trying further endpoints after a failed connect stops after this long in all
    /// (`proxy-stream-next-upstream-timeout`); 0 is no limit.
    pub next_upstream_ms: u64,
}

impl Default for StreamTimeouts {
    /// ingress-nginx's: 600 s idle, no limit on trying the next endpoint.
    fn default() -> Self {
        StreamTimeouts {
            idle_ms: 600_000,
            next_upstream_ms: 0,
        }
    }
}

/// A host whose TLS connections are relayed as they are, the backend terminating TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassthroughHost {
    pub host: HostMatch,
    /// The [`crate::Backend::name`] of the host's `/` path.
    pub backend: String,
}
