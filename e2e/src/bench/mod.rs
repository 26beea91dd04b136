//! The slow suites, run by `cargo run --release -p portico-e2e --bin bench -- <run>`:
//! the side-by-side comparison with nginx and HAProxy, the scale run, and the churn run.
//! See docs/performance.md for the commands and the latest figures.

pub mod chart;
pub mod churn;
pub mod compare;
pub mod contenders;
pub mod h2load;
pub mod instructions;
pub mod placement;
pub mod procs;
pub mod scale;
pub mod tcp;
pub mod wrk;
