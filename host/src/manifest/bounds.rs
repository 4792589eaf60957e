//! Upper bounds of the manifest's numbers. A manifest comes from outside
//! (a bundle, a deploy) and each of these sizes something the host
//! allocates or waits for; every sum and product of them fits in a u32.

use anyhow::bail;

/// wasm32 memories end at 4 GiB.
pub const MEMORY_MB: u32 = 4_096;
/// One hour.
pub const TIMEOUT_MS: u64 = 3_600_000;
pub const CONCURRENCY: u32 = 10_000;
pub const QUEUE: u32 = 1_000_000;
/// Sidecar processes or Python workers of one cell.
pub const PROCESSES: u32 = 256;
/// 64 MiB.
pub const FRAME_KB: u32 = 65_536;
/// Deliveries of one durable message.
pub const MAX_DELIVER: u64 = 1_000;
/// A day.
pub const DEDUP_WINDOW_MS: u64 = 86_400_000;
/// A year of CPU time.
pub const CPU_SECONDS: u64 = 31_536_000;
/// `[[capabilities.files]]` entries.
pub const FILE_GRANTS: usize = 16;
/// `[capabilities.env]` entries, and bytes per name or value.
pub const ENV_VARS: usize = 64;
pub const ENV_BYTES: usize = 4_096;
/// `[[subscribe]]` entries.
pub const SUBSCRIPTIONS: usize = 16;
/// `[[http]]` routes of one cell.
pub const HTTP_ROUTES: usize = 32;
/// 1 MiB, NATS's default `max_payload`.
pub const STATE_VALUE_BYTES: u64 = 1 << 20;
/// 1 GiB.
pub const STATE_BYTES: u64 = 1 << 30;
/// `[bundle] files` entries (each may be a folder).
pub const BUNDLE_FILES: usize = 256;

/// `value` of the field `name`, refused above `max`.
pub(crate) fn within(name: &str, value: u64, max: u64) -> anyhow::Result<()> {
    if value > max {
        bail!("{name} = {value} is above the largest this host accepts, {max}");
    }
    Ok(())
}
