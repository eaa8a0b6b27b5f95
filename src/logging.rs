//! Logs go to stderr through tracing: human-readable by default, JSON with
//! `JIT_LOG_FORMAT=json`. `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::{self, EnvFn, LogFormat};

/// `default_level` applies when `RUST_LOG` is unset.
pub fn init(env: EnvFn<'_>, default_level: &str) -> Result<(), String> {
    let format = config::log_format(env).map_err(|e| e.to_string())?;
    let filter = match env("RUST_LOG") {
        Some(directives) => EnvFilter::try_new(&directives)
            .map_err(|e| format!("RUST_LOG `{directives}` is not a valid filter: {e}"))?,
        None => EnvFilter::new(default_level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}
