//! What every request leaves behind: metrics, an access log line, its request id and trace
//! context, and a span for an OTLP collector.

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod trace_context;
