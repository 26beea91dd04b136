//! What the request path reads: snapshots arrive over the controller link, are compiled
//! into lookup structures, and are published by the store with one atomic swap.

pub mod compile;
pub mod link;
pub mod store;
