//! What the host's machine says about itself: its 1-minute load average
//! (Linux's `/proc/loadavg`), as discovery and the console show it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reading serves: discovery asks once per cell and question,
/// and the kernel updates the figure every 5 s.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The last reading and when it was taken.
static LAST: Mutex<Option<(Instant, Option<f64>)>> = Mutex::new(None);

/// The machine's 1-minute load average (runnable and waiting tasks), or
/// `None` where `/proc/loadavg` cannot be read or parsed.
pub fn load_average_1m() -> Option<f64> {
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, value)) = *last {
        if at.elapsed() < FRESH_FOR {
            return value;
        }
    }
    let value = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| parse_loadavg(&text));
    *last = Some((Instant::now(), value));
    value
}

/// The first field of `/proc/loadavg` (`0.42 0.30 0.25 1/123 4567`): a
/// finite, non-negative number, else `None`.
fn parse_loadavg(text: &str) -> Option<f64> {
    let first = text.split_ascii_whitespace().next()?;
    let value: f64 = first.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_first_field_and_refuses_anything_else() {
        assert_eq!(parse_loadavg("0.42 0.30 0.25 1/123 4567\n"), Some(0.42));
        assert_eq!(parse_loadavg("12.00 1 1 1/1 1"), Some(12.0));
        for bad in ["", "   \n", "load 1 2", "-1.0 0 0", "NaN 0 0", "inf 0 0"] {
            assert_eq!(parse_loadavg(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_this_machine_where_it_is_linux() {
        if std::path::Path::new("/proc/loadavg").is_file() {
            let value = load_average_1m().expect("a load average");
            assert!(value >= 0.0, "{value}");
        }
    }
}
