//! Backends: the endpoints of one Service port, how the proxy reaches them, and how it
//! spreads requests over them and handles their failures.

use crate::Template;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A named set of endpoints, usually one port of one Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Unique within the snapshot, e.g. `default/web:80`.
    pub name: String,
    /// The Service port the backend stands for: what metrics and people call it.
    #[serde(default)]
    pub service: ServiceRef,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How the proxy talks to the endpoints.
    #[serde(default)]
    pub upstream: Upstream,
    /// How the proxy picks among them and when it gives up on one.
    #[serde(default)]
    pub policy: TrafficPolicy,
}

/// A port of a Service: `port` is its number or name as the Ingress wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl std::fmt::Display for ServiceRef {
    /// `namespace/name:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// How requests are spread over a backend's endpoints, and how failures are handled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrafficPolicy {
    pub balance: Balance,
    pub connect_timeout_ms: u64,
    /// Longest wait for the next read from the endpoint (the response head or body).
    pub read_timeout_ms: u64,
    /// Longest wait for the endpoint to take the next write of the request.
    pub send_timeout_ms: u64,
    pub retry: RetryPolicy,
    /// Passive health: an endpoint that fails (cannot be connected, or times out)
    /// `max_fails` times within `fail_timeout_ms` is skipped for `fail_timeout_ms`.
    /// `max_fails` 0 turns this off.
    pub max_fails: u32,
    pub fail_timeout_ms: u64,
    /// Active health checks, opt-in.
    pub health_check: Option<HealthCheck>,
    /// `service-upstream`: the controller gave the Service's cluster IP and port as the
    /// one endpoint, so that the cluster (or a service mesh) balances.
    #[serde(default)]
    pub service_upstream: bool,
}

/// Probing each endpoint with `GET path`: a 2xx or 3xx answer is a success. An endpoint
/// is taken out after `unhealthy_threshold` failures in a row and back in after
/// `healthy_threshold` successes in a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for TrafficPolicy {
    /// ingress-nginx's defaults.
    fn default() -> Self {
        TrafficPolicy {
            balance: Balance::RoundRobin,
            connect_timeout_ms: 5_000,
            read_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            retry: RetryPolicy::default(),
            max_fails: 3,
            fail_timeout_ms: 10_000,
            health_check: None,
            service_upstream: false,
        }
    }
}

/// The `load-balance` algorithms, and consistent hashing (`upstream-hash-by`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastConn,
    /// Peak-EWMA of response time, times requests in flight; the lower of two random picks.
    Ewma,
    /// The less loaded of two random picks.
    Random,
    /// Ketama over a key built from the request by this template (ingress-nginx's
    /// variable syntax: `$remote_addr`, `$host`, `$http_x_user`, ...).
    ConsistentHash(Template),
    /// `upstream-hash-by-subset`: the key picks a subset of `size` endpoints (by the ring,
    /// as [`Balance::ConsistentHash`] picks one), and each request one of them at random.
    HashSubset { key: Template, size: u32 },
}

impl Balance {
    /// The template of the request's hash key, for the hashing algorithms.
    pub fn hash_key(&self) -> Option<&Template> {
        match self {
            Balance::ConsistentHash(key) | Balance::HashSubset { key, .. } => Some(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Ewma => "ewma",
            Balance::Random => "random",
            Balance::ConsistentHash(_) => "hash",
            Balance::HashSubset { .. } => "hash_subset",
        }
    }
}

/// When a failed attempt is tried again on another endpoint (`proxy-next-upstream`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Connection failures, and resets before any response byte arrived.
    pub on_error: bool,
    pub on_timeout: bool,
    /// Upstream answers with these statuses (502, 503, 504) are tried again.
    pub on_status: Vec<u16>,
    /// Attempts in all, the first included (`proxy-next-upstream-tries`); 1 never retries.
    pub tries: u32,
    /// No new attempt starts this long after the first (`proxy-next-upstream-timeout`); 0: no limit.
    pub timeout_ms: u64,
}

impl Default for RetryPolicy {
    /// ingress-nginx's `proxy-next-upstream: error timeout`, 3 tries.
    fn default() -> Self {
        RetryPolicy {
            on_error: true,
            on_timeout: true,
            on_status: Vec::new(),
            tries: 3,
            timeout_ms: 0,
        }
    }
}

/// The protocol spoken to a backend's endpoints, and how TLS to them is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Upstream {
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Verify the endpoint's certificate (TLS protocols only).
    #[serde(default)]
    pub verify: bool,
    /// Trusted CAs (PEM) for verification; `None` uses the system store.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// SNI and the name verified; `None` sends no SNI.
    #[serde(default)]
    pub server_name: Option<String>,
    /// `proxy-http-version: "1.0"`: requests go upstream as HTTP/1.0.
    #[serde(default)]
    pub http10: bool,
    /// `connection-proxy-header: close`: requests go upstream with `Connection: close`,
    /// and their connections are not reused.
    #[serde(default)]
    pub close_connections: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 in clear text.
    #[default]
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// gRPC: HTTP/2 in clear text.
    Grpc,
    /// gRPC over TLS (HTTP/2 negotiated by ALPN).
    Grpcs,
    /// HTTP/2 in clear text with prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    pub fn uses_tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::Grpcs)
    }

    pub fn is_http2(self) -> bool {
        matches!(
            self,
            UpstreamProtocol::Grpc | UpstreamProtocol::Grpcs | UpstreamProtocol::H2c
        )
    }

    /// The `backend-protocol` annotation's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http => "HTTP",
            UpstreamProtocol::Https => "HTTPS",
            UpstreamProtocol::Grpc => "GRPC",
            UpstreamProtocol::Grpcs => "GRPCS",
            UpstreamProtocol::H2c => "H2C",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    pub ready: bool,
}
