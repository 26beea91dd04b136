//! Where a request starts: accepted connections and what each one proves before any
//! request is read (the PROXY protocol header, the TLS handshake and its client
//! certificate), the deadlines on its header bytes, and which peers may speak for a client.

pub mod client_cert;
pub mod connections;
pub mod forwarded;
pub mod header_deadline;
pub mod proxy_protocol;
pub mod tls;
