//! Wall-clock time as CBS writes it into records: milliseconds since the
//! Unix epoch (releases, status reports, heartbeats, audit events, the
//! embedded durable store's timestamps).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
