//! Where a request goes after policy: the endpoint chosen by the balancer or an affinity
//! cookie, the endpoints' health, and how a peer is reached.

pub mod affinity;
pub mod balancer;
pub mod fetch;
pub mod health;
pub mod mirror;
pub mod peer;
