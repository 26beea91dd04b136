//! Access control (`docs/annotations.md`, "Access control").

mod client_certificates;
mod credentials;
