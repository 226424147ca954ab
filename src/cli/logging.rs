//! The daemon's log: `tracing` to stderr as plain text (ANSI colours only when stderr is a
//! terminal, so a file or journald gets no escape codes) or one JSON object per line, under a
//! filter that a reload (SIGHUP) can replace.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// Replaces the filter of the log installed by `init`.
pub struct LogFilter(Option<reload::Handle<EnvFilter, Registry>>);

impl LogFilter {
    /// Puts `filter` (validated by `config`) in force.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let Some(handle) = &self.0 else {
            return Err("the log was set up before tenantd serve started".into());
        };
        let filter = EnvFilter::try_new(filter).map_err(|e| format!("'{filter}': {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot replace the log filter: {e}"))
    }
}

/// Installs the process's log: `filter` (a `tracing` filter, validated by `config`) and
/// `format`. When a log is installed already (tests calling `serve` twice), that one stays
/// and `LogFilter::set` reports it cannot change it.
pub fn init(filter: &str, format: LogFormat) -> LogFilter {
    let (filter, handle) =
        reload::Layer::new(EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()));
    let out = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let out = match format {
        LogFormat::Text => out.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => out
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(out)
        .try_init()
        .is_ok();
    LogFilter(installed.then_some(handle))
}
