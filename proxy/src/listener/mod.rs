//! Where a request starts: accepted connections and what each one proves before any
//! request is read (the PROXY protocol header, the TLS handshake and its client
//! certificate), the deadlines on its header bytes, which peers may speak for a client,
//! and when the listeners stop.

pub mod client_cert;
pub mod client_hello;
pub mod connections;
pub mod forwarded;
pub mod header_deadline;
pub mod pre_tls;
pub mod proxy_protocol;
pub mod shutdown;
pub mod tls;
