//! The end-to-end suite: the real release binaries on loopback, driven as users drive them.
//! One test binary, so that the whole stack is linked once; its modules follow the sections
//! of `docs/annotations.md` and the README, so that a behaviour's test sits where its
//! documentation does. Run one module with
//! `cargo test --release -p portico-e2e --test suite -- tls::`.

// Ingress semantics (README, "Ingress semantics").
mod routing;
// TLS and redirects; upstream protocol and TLS to the backend.
mod tls;
// Paths, rewrites and redirects.
mod rewrites;
// Matching on headers, methods and query parameters.
mod matching;
// Header control.
mod headers;
// Error pages and default backends.
mod error_pages;
// Balancing; timeouts, retries, limits, health.
mod traffic;
// Cookie affinity; canaries.
mod sessions;
// Access control: credentials and source ranges, bearer JWTs, client certificates.
mod access;
// Rate limits; CORS.
mod limits;
// Request hygiene: what is refused, deadlines on slow clients, the PROXY protocol.
mod hygiene;
// HTTP/2, gRPC, WebSockets and streamed bodies.
mod protocols;
// Running it: the Kubernetes controller, `--check`, metrics and logs, the dashboard.
mod check;
mod controller_config;
// TCP and UDP services, TLS passthrough.
mod dashboard;
mod gateway_api;
mod kube;
mod l4;
mod observability;
// Stopping (README, "Deploy to a cluster").
mod shutdown;
// Faults: broken manifests, exhausted descriptors (docs/security.md).
mod faults;
