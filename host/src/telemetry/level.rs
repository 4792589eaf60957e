//! Log levels by name, as the sidecar protocol and the SDKs spell them
//! (`trace`, `debug`, `info`, `warn`, `error`; `off` for none), and the
//! host's `tracing` levels: one mapping both ways, and a cell's own log line
//! written at its level.

use tracing::level_filters::LevelFilter;
use tracing::Level;

/// The level `name` stands for; a name outside the set is `info`.
pub fn parse(name: &str) -> Level {
    match name {
        "trace" => Level::TRACE,
        "debug" => Level::DEBUG,
        "warn" => Level::WARN,
        "error" => Level::ERROR,
        _ => Level::INFO,
    }
}

/// The name of the least severe level `filter` lets through (`off`: none).
pub fn name(filter: LevelFilter) -> &'static str {
    match filter.into_level() {
        Some(Level::TRACE) => "trace",
        Some(Level::DEBUG) => "debug",
        Some(Level::INFO) => "info",
        Some(Level::WARN) => "warn",
        Some(_) => "error",
        None => "off",
    }
}

/// The least severe level the host's log shows now, by name.
pub fn host() -> &'static str {
    name(LevelFilter::current())
}

/// A line a cell logged, at its level, tagged with the cell and the
/// correlation id of the message it was handling (empty between messages).
pub fn cell_line(level: Level, cell: &str, correlation_id: &str, message: &str) {
    match level {
        Level::TRACE => tracing::trace!(cell, correlation_id, "{message}"),
        Level::DEBUG => tracing::debug!(cell, correlation_id, "{message}"),
        Level::INFO => tracing::info!(cell, correlation_id, "{message}"),
        Level::WARN => tracing::warn!(cell, correlation_id, "{message}"),
        _ => tracing::error!(cell, correlation_id, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_levels_and_back() {
        for name in ["trace", "debug", "info", "warn", "error"] {
            let level = parse(name);
            assert_eq!(super::name(LevelFilter::from_level(level)), name);
        }
        assert_eq!(parse("loud"), Level::INFO);
        assert_eq!(super::name(LevelFilter::OFF), "off");
    }
}
