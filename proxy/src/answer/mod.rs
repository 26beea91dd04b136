//! The answers Portico writes itself (its error pages, redirects and preflights), the
//! pages it asks an error backend for in place of an upstream's, and what it rewrites in
//! an upstream's answer.

pub mod compression;
pub mod error_pages;
pub mod pages;
pub mod rewrites;
