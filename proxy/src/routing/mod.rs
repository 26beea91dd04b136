//! Which route a request takes: its path in normal form, the host table and path matcher,
//! the conditions beyond the path, the canary split, and the rewrites a route makes.

pub mod canary;
pub mod conditions;
pub mod normalize;
pub mod request_key;
pub mod rewrite;
pub mod router;
