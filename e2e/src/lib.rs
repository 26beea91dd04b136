//! End-to-end support: echo backends, manifest builders, an HTTP client, and a harness
//! that runs the real `portico-controller` and `portico-proxy` binaries on loopback.

pub mod bench;
pub mod browser;
pub mod client;
pub mod echo;
pub mod grpc;
pub mod harness;
pub mod kube_api;
pub mod l4;
pub mod load;
pub mod manifests;
pub mod otlp_receiver;
pub mod tls;
