//! How Portico's binaries log: through `tracing`, to stderr, as text or JSON
//! (`--log-format`), filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

/// The `--log-format` flag of every binary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber; call once, first thing in `main`. Colours only when
/// stderr is a terminal, so log files and collectors get plain text.
pub fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
