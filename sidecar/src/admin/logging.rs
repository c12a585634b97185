//! The runtime-adjustable log filter behind `/logging`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Levels accepted by `POST /logging?level=...`.
pub const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter {filter:?}: {source}")]
    InvalidFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("unknown log level {0:?}; expected one of trace, debug, info, warn, error, off")]
    UnknownLevel(String),
    #[error("the log filter can no longer be changed: {0}")]
    Reload(#[from] reload::Error),
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Reads and replaces the filter of a subscriber built by [`subscriber`] or
/// [`init`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    /// The current filter directives, e.g. `info,lanemesh_sidecar=debug`.
    pub fn current(&self) -> Result<String, LogError> {
        Ok(self.handle.with_current(ToString::to_string)?)
    }

    /// Replaces the filter with `directives` (`EnvFilter` syntax); returns the
    /// filter now in force.
    pub fn set_filter(&self, directives: &str) -> Result<String, LogError> {
        let filter = parse(directives)?;
        self.handle.reload(filter)?;
        self.current()
    }

    /// Sets one level for everything.
    pub fn set_level(&self, level: &str) -> Result<String, LogError> {
        let level = level.trim().to_ascii_lowercase();
        if !LEVELS.contains(&level.as_str()) {
            return Err(LogError::UnknownLevel(level));
        }
        self.set_filter(&level)
    }
}

fn parse(directives: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::try_new(directives).map_err(|source| LogError::InvalidFilter {
        filter: directives.to_owned(),
        source,
    })
}

/// A subscriber (reloadable filter + text formatter on stderr) and its
/// control, not installed: keep the subscriber alive for the control to work.
pub fn subscriber(
    initial: &str,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, LogControl), LogError> {
    let (filter, handle) = reload::Layer::new(parse(initial)?);
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr));
    Ok((subscriber, LogControl { handle }))
}

/// Builds [`subscriber`] and installs it as the global default (once per process).
pub fn init(initial: &str) -> Result<LogControl, LogError> {
    let (subscriber, control) = subscriber(initial)?;
    subscriber.try_init()?;
    Ok(control)
}
