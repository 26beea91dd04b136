//! What a route demands of a request before it is forwarded (source ranges, basic, JWT and
//! external auth, rate limits, CORS), and the header edits it makes both ways.

pub mod access;
pub mod blocklist;
pub mod cors;
pub mod external_auth;
pub mod header_edits;
pub mod jwks;
pub mod jwt;
pub mod password_checks;
pub mod rate_limit;
