//! `cbs backup` and `cbs restore` (docs/adr/0033-backup-as-stream-copies.md):
//! the lattice's JetStream streams — desired state, placements, what hosts
//! served, expectations, domains, the policy, the bundles, the audit
//! trail, every cell's state bucket, and with `--streams` the durable,
//! event and saga streams and the dead letters — copied message by
//! message into one file, and published again, in order, onto another
//! server.
//!
//! Every stream is copied up to its last sequence at the moment its copy
//! starts: each is a point in time of its own, and writes that come later
//! wait for the next backup. The desired state is copied first and the
//! bundles after it, so every release a backup names has its bundle in
//! it; a restore publishes the bundles first and the desired state last,
//! so hosts watching the new server never see a release whose bundle is
//! not there yet.
//!
//! The file is a tar: `MANIFEST.json` (each stream's configuration, count,
//! bytes and sha256), `MANIFEST.sha256`, then one `streams/<name>.msgs` per
//! stream ([`frames`]). A restore checks every part before it writes
//! anything and names the damaged one. Both are restartable: a backup
//! keeps each stream it finished in `FILE.parts/` and copies only the rest
//! when run again; a restore records in `FILE.restored` how far each
//! stream got and goes on from there.

pub mod dump;
pub mod frames;
pub mod load;

use serde::{Deserialize, Serialize};

/// Version of the file's layout.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "MANIFEST.json";
pub const MANIFEST_SUM: &str = "MANIFEST.sha256";

/// Streams never copied: what live hosts rewrite every moment (status
/// reports, heartbeats, the placer's lease).
const LIVE: &[&str] = &["KV_cbs-status", "KV_cbs-hosts", "KV_cbs-placer"];

/// The lattice's own streams, copied always.
const LATTICE: &[&str] = &[
    "KV_cbs-desired",
    "KV_cbs-placement",
    "KV_cbs-served",
    "KV_cbs-expects",
    "KV_cbs-domains",
    "KV_cbs-policy",
    "OBJ_cbs-bundles",
    crate::audit::STREAM,
];

/// Cell state buckets (`KV_CBS_STATE_<cell>_<hash>`), copied always.
const STATE_PREFIX: &str = "KV_CBS_STATE_";

/// What a backup holds of one stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    /// The stream's configuration, as the server reported it.
    pub config: serde_json::Value,
    pub messages: u64,
    /// Payload and header bytes.
    pub bytes: u64,
    /// The stream's last sequence when its copy started.
    pub last_seq: u64,
    /// `streams/<name>.msgs` in the file.
    pub file: String,
    /// sha256 (hex) of that file.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_ms: u64,
    /// The server's name and version it was taken from.
    pub source: String,
    /// In the order a restore publishes them.
    pub parts: Vec<Part>,
}

/// Whether `stream` is copied: the lattice's own and state buckets always,
/// any other stream but the live ones with `all_streams`.
pub fn selected(stream: &str, all_streams: bool) -> bool {
    if LIVE.contains(&stream) {
        return false;
    }
    LATTICE.contains(&stream) || stream.starts_with(STATE_PREFIX) || all_streams
}

/// The order streams are copied in: the desired state first, then the
/// rest, the bundles last (every release copied has its bundle).
pub fn backup_rank(stream: &str) -> u8 {
    match stream {
        "KV_cbs-desired" => 0,
        "OBJ_cbs-bundles" => 2,
        _ => 1,
    }
}

/// The order a restore publishes them in: bundles, the policy and cell
/// state first, the desired state last (hosts act on it).
pub fn restore_rank(stream: &str) -> u8 {
    match stream {
        "OBJ_cbs-bundles" => 0,
        "KV_cbs-policy" => 1,
        s if s.starts_with(STATE_PREFIX) => 2,
        "KV_cbs-desired" => 4,
        _ => 3,
    }
}

/// A stream name fit for a file name and a NATS API subject.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !fine {
        anyhow::bail!("{name:?} is not a stream name a backup holds");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_buckets_are_never_copied_and_streams_only_when_asked() {
        assert!(!selected("KV_cbs-hosts", true));
        assert!(selected("KV_cbs-desired", false));
        assert!(selected("KV_CBS_STATE_shop_cart_1a2b", false));
        assert!(!selected("CBS_DLQ", false));
        assert!(selected("CBS_DLQ", true));
        assert!(restore_rank("OBJ_cbs-bundles") < restore_rank("KV_cbs-desired"));
        assert!(backup_rank("KV_cbs-desired") < backup_rank("OBJ_cbs-bundles"));
        for bad in ["", "../x", "a/b", "a b", "a.b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
