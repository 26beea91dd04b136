//! Portico's data plane: applies snapshots from the controller and routes HTTP with them.
//!
//! The folders follow a request: `listener` accepts the connection, `service` runs the
//! request's phases against the snapshot `config` published, `routing` picks the route,
//! `policy` admits it, `upstream` picks the endpoint and reaches it, `answer` writes what
//! Portico says itself, and `telemetry` records it. `admin` serves the admin listener.

pub mod admin;
pub mod allocator;
pub mod answer;
pub mod config;
pub mod listener;
pub mod policy;
pub mod routing;
pub mod service;
pub mod stream;
pub mod telemetry;
pub mod upstream;

use pingora::server::configuration::ServerConf;

/// Pingora runtime settings for the proxy service. Benchmarks build their Pingora
/// baseline from the same settings, so comparisons measure Portico's own layers.
/// `drain_seconds` is how long in-flight requests have once the listeners have closed.
pub fn server_conf(threads: usize, drain_seconds: u64) -> ServerConf {
    ServerConf {
        threads,
        work_stealing: false,
        // Pingora's grace period starts when it stops accepting; Portico's own grace, while
        // it still accepts, comes before (`listener::shutdown`).
        grace_period_seconds: Some(drain_seconds),
        graceful_shutdown_timeout_seconds: Some(10),
        // Timeouts of a second or more (the upstream read and send timeouts, 60 s by
        // default) use tokio's timer rather than Pingora's shared fast-timeout map: each
        // worker is its own single-threaded runtime, so tokio's timer is uncontended, and
        // these timeouts are nearly always cancelled, which tokio cleans up at once while
        // Pingora's map keeps them until their deadline.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        upstream_keepalive_pool_size: DEFAULT_UPSTREAM_KEEPALIVE_CONNECTIONS,
        ..ServerConf::default()
    }
}

/// Idle upstream connections kept per worker thread, over all backends: ingress-nginx's
/// `upstream-keepalive-connections` default (Pingora's is 128).
pub const DEFAULT_UPSTREAM_KEEPALIVE_CONNECTIONS: usize = 320;
