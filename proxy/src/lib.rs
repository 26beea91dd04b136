//! Portico's data plane: applies snapshots from the controller and routes HTTP with them.
//!
//! `store` holds the serving snapshot, `compile` turns a snapshot into the lookup
//! structures of `router` and `balancer`, and `service` is the Pingora proxy that reads
//! them on every request. The binary in `main.rs` wires these into a Pingora server.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod balancer;
pub mod canary;
pub mod client_cert;
pub mod compile;
pub mod conditions;
pub mod connections;
pub mod cors;
pub mod dashboard;
pub mod error_pages;
pub mod external_auth;
pub mod forwarded;
pub mod header_deadline;
pub mod header_edits;
pub mod health;
pub mod http_fetch;
pub mod jwks;
pub mod jwt;
pub mod link;
pub mod metrics;
pub mod normalize;
pub mod otlp;
pub mod pages;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod request_key;
pub mod rewrite;
pub mod router;
pub mod service;
pub mod store;
pub mod tls;
pub mod trace_context;
pub mod upstream;

use pingora::server::configuration::ServerConf;

/// Pingora runtime settings for the proxy service. Benchmarks build their Pingora
/// baseline from the same settings, so comparisons measure Portico's own layers.
pub fn server_conf(threads: usize, shutdown_grace_seconds: u64) -> ServerConf {
    ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(shutdown_grace_seconds),
        graceful_shutdown_timeout_seconds: Some(10),
        // Timeouts of a second or more (the upstream read and send timeouts, 60 s by
        // default) use tokio's timer rather than Pingora's shared fast-timeout map: each
        // worker is its own single-threaded runtime, so tokio's timer is uncontended, and
        // these timeouts are nearly always cancelled, which tokio cleans up at once while
        // Pingora's map keeps them until their deadline.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    }
}
