//! Request hygiene (`docs/annotations.md`, "Request hygiene"), and the connection-level
//! defences beside it.

mod bypass;
mod proxy_protocol;
mod slow_clients;
