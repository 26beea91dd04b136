//! The answers Portico writes itself (its error pages, redirects and preflights) and the
//! pages it asks an error backend for in place of an upstream's.

pub mod error_pages;
pub mod pages;
