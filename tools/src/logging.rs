//! Logs: `tracing` to stderr. Daemons log at INFO by default (one line per lifecycle event),
//! other commands at WARN; `SPATE_LOG` overrides (e.g. `SPATE_LOG=debug`,
//! `SPATE_LOG=spate_scheduler=debug,info`). No ANSI colours unless stderr is a terminal.
//! `--log-format json` (or `SPATE_LOG_FORMAT=json`) prints one JSON object per line.

use std::io::IsTerminal as _;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: time, level, the span (e.g. `daemon{node=printer}`), message, fields.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, `span`, ...).
    Json,
}

/// Installs the global subscriber. `daemon` selects INFO as the default level.
pub fn init(format: LogFormat, daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
