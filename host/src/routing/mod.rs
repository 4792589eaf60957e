//! Routing around trouble: a host that cannot admit a request, or that has
//! become far slower than its peers for a cell, sends the request to a peer
//! serving the same cell instead of refusing it or queueing it behind the
//! slow one (ADR 0015).
//!
//! NATS queue groups spread requests evenly and know nothing of load, so
//! every host also serves each cell on a subject of its own,
//! [`direct_subject`], and shares its load for the cell on
//! [`load_subject`] ([`load`]). A request that arrives on a direct subject
//! is always handled where it arrived, so a request is forwarded at most once.

pub mod load;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::load::Peers;
use crate::random::{fresh_seed, Seeded};
use crate::stats::CellLoad;

/// How often a host shares each cell's load.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// A peer's report is acted on for this long after it arrived.
pub const FRESH_FOR: Duration = Duration::from_millis(1_000);
/// A host is slow for a cell when its recent latency is this many times
/// the median of its peers'…
pub const SLOW_FACTOR: u64 = 3;
/// …and at least this much above it (microseconds), so that tiny absolute
/// differences never move traffic.
pub const SLOW_MARGIN_US: u64 = 2_000;
/// While slow, a host still handles one request per period itself, so its
/// own latency keeps being measured and it takes traffic back once well.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Forwarded requests waiting for a peer's reply, per host: past it a host
/// handles requests itself (or refuses them) rather than grow without bound.
pub const MAX_RELAYS: usize = 1_024;

/// `cbs.~h.<host>.<cell>`: one host's own subject for a cell. `~` is in no
/// cell id, so it never meets `cbs.<cell-id>`.
pub fn direct_subject(host: &str, cell_id: &str) -> String {
    format!("cbs.~h.{host}.{cell_id}")
}

/// `cbs.~l.<cell>`: where the hosts serving a cell share its load.
pub fn load_subject(cell_id: &str) -> String {
    format!("cbs.~l.{cell_id}")
}

/// A host id as one subject token: letters, digits, `_` and `-` (others
/// become `_`), at most 64 characters.
pub fn host_token(host_id: &str) -> String {
    let token: String = host_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "host".to_owned()
    } else {
        token
    }
}

/// Whether `token` could be a [`host_token`]: peers' reports name hosts,
/// and those names go into subjects this host publishes on.
pub fn is_host_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// This host's routing: its token and what it knows of its peers, per cell.
pub struct Router {
    me: String,
    cells: RwLock<HashMap<String, Arc<CellRoutes>>>,
    relays: Arc<Semaphore>,
    draws: Seeded,
}

impl Router {
    pub fn new(host_id: &str) -> Arc<Self> {
        Arc::new(Self {
            me: host_token(host_id),
            cells: RwLock::default(),
            relays: Arc::new(Semaphore::new(MAX_RELAYS)),
            draws: Seeded::new(fresh_seed()),
        })
    }

    /// This host's token in subjects.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The routes of a cell served here (made on first use).
    pub fn cell(&self, cell_id: &str) -> Arc<CellRoutes> {
        if let Some(routes) = self.cells.read().unwrap().get(cell_id) {
            return routes.clone();
        }
        self.cells
            .write()
            .unwrap()
            .entry(cell_id.to_owned())
            .or_default()
            .clone()
    }

    /// The peers serving `cell_id` whose reports are fresh, with their load.
    pub fn peers(&self, cell_id: &str) -> Vec<(String, CellLoad)> {
        let Some(routes) = self.cells.read().unwrap().get(cell_id).cloned() else {
            return Vec::new();
        };
        let peers = routes.peers.lock().unwrap();
        let mut fresh: Vec<_> = peers
            .fresh(Instant::now())
            .map(|(host, load)| (host.to_owned(), *load))
            .collect();
        fresh.sort_by(|a, b| a.0.cmp(&b.0));
        fresh
    }

    /// Forgets a cell no longer served here.
    pub fn forget(&self, cell_id: &str) {
        self.cells.write().unwrap().remove(cell_id);
    }

    /// A slot for one forwarded request, or `None` when [`MAX_RELAYS`] wait.
    pub fn relay_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.relays.clone().try_acquire_owned().ok()
    }

    /// Where a request this host could admit should go: a faster peer
    /// while this host is slow for the cell (except for a probe now and
    /// then), else `None` (here).
    pub fn around_slowness(&self, routes: &CellRoutes) -> Option<String> {
        let faster = routes.faster.read().unwrap();
        if faster.is_empty() || routes.probe_due() {
            return None;
        }
        let pick = (self.draws.next_unit() * faster.len() as f64) as usize;
        faster.get(pick.min(faster.len() - 1)).cloned()
    }

    /// Where a request this host cannot admit should go: the fresh peer
    /// with the most room, or `None` when none has any.
    pub fn around_capacity(&self, routes: &CellRoutes) -> Option<String> {
        let peers = routes.peers.lock().unwrap();
        peers
            .fresh(Instant::now())
            .filter(|(_, load)| load.room > 0)
            .max_by_key(|(_, load)| load.room)
            .map(|(host, _)| host.to_owned())
    }
}

/// What this host knows of one cell's peers, and what it concluded.
#[derive(Default)]
pub struct CellRoutes {
    peers: Mutex<Peers>,
    /// Peers to send requests to while this host is slow for the cell
    /// (empty: handle here). Recomputed on every report, read per message.
    faster: RwLock<Vec<String>>,
    /// When this host last kept a request while slow.
    probed: Mutex<Option<Instant>>,
}

impl CellRoutes {
    /// Takes a peer's report and this host's own load, and decides again
    /// which peers (if any) requests should go to.
    pub(crate) fn observe(&self, peer: Option<(String, CellLoad)>, mine: CellLoad) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap();
        if let Some((host, load)) = peer {
            peers.insert(host, load, now);
        }
        let faster = faster_peers(mine, peers.fresh(now));
        *self.faster.write().unwrap() = faster;
    }

    /// Whether this host should keep the next request to measure itself.
    fn probe_due(&self) -> bool {
        let mut probed = self.probed.lock().unwrap();
        let due = probed.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if due {
            *probed = Some(Instant::now());
        }
        due
    }
}

/// The peers to use while this host is slow: when its recent latency is
/// [`SLOW_FACTOR`] times the median of its peers' and [`SLOW_MARGIN_US`]
/// above it, those peers with room that are not slow themselves.
fn faster_peers<'a>(
    mine: CellLoad,
    peers: impl Iterator<Item = (&'a str, &'a CellLoad)>,
) -> Vec<String> {
    let measured: Vec<(&str, &CellLoad)> = peers.filter(|(_, l)| l.latency_us > 0).collect();
    if mine.latency_us == 0 || measured.is_empty() {
        return Vec::new();
    }
    let mut latencies: Vec<u64> = measured.iter().map(|(_, l)| l.latency_us).collect();
    latencies.sort_unstable();
    let median = latencies[latencies.len() / 2];
    let slow = mine.latency_us >= median.saturating_mul(SLOW_FACTOR)
        && mine.latency_us >= median.saturating_add(SLOW_MARGIN_US);
    if !slow {
        return Vec::new();
    }
    measured
        .into_iter()
        .filter(|(_, l)| l.room > 0 && l.latency_us.saturating_mul(SLOW_FACTOR) <= mine.latency_us)
        .map(|(host, _)| host.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(latency_us: u64, room: u32) -> CellLoad {
        CellLoad {
            latency_us,
            room,
            ..CellLoad::default()
        }
    }

    fn faster(mine: CellLoad, peers: &[(&str, CellLoad)]) -> Vec<String> {
        faster_peers(mine, peers.iter().map(|(h, l)| (*h, l)))
    }

    #[test]
    fn a_slow_host_sends_to_its_faster_peers_with_room() {
        let peers = [
            ("b", load(400, 8)),
            ("c", load(500, 0)),
            ("d", load(450, 3)),
        ];
        assert_eq!(faster(load(20_000, 8), &peers), ["b", "d"]);
    }

    #[test]
    fn a_host_near_its_peers_keeps_its_requests() {
        // Twice as slow: not far enough.
        assert!(faster(load(900, 8), &[("b", load(450, 8))]).is_empty());
        // Three times as slow but by less than the margin: noise.
        assert!(faster(load(1_500, 8), &[("b", load(400, 8))]).is_empty());
        // Nothing measured yet, here or there.
        assert!(faster(load(0, 8), &[("b", load(400, 8))]).is_empty());
        assert!(faster(load(9_000, 8), &[("b", load(0, 8))]).is_empty());
    }

    #[test]
    fn slowness_is_judged_against_the_median_peer() {
        // One slow peer among fast ones does not make the median slow.
        let peers = [
            ("b", load(300, 8)),
            ("c", load(350, 8)),
            ("d", load(90_000, 8)),
        ];
        assert_eq!(faster(load(30_000, 8), &peers), ["b", "c"]);
    }

    #[test]
    fn host_tokens_are_one_subject_token() {
        assert_eq!(host_token("web-1.example.com-42"), "web-1_example_com-42");
        assert_eq!(host_token(""), "host");
        assert_eq!(host_token(&"x".repeat(100)).len(), 64);
        for bad in ["", "a.b", "a*", ">", "a b", &"x".repeat(65)] {
            assert!(!is_host_token(bad), "{bad:?}");
        }
        assert!(is_host_token("web-1_example_com-42"));
    }

    #[test]
    fn a_slow_host_still_probes_now_and_then() {
        let router = Router::new("a");
        let routes = router.cell("logic.greet");
        routes.observe(Some(("b".into(), load(300, 8))), load(40_000, 8));
        // The first request is a probe; the next ones go to the peer.
        assert_eq!(router.around_slowness(&routes), None);
        for _ in 0..10 {
            assert_eq!(router.around_slowness(&routes).as_deref(), Some("b"));
        }
    }

    #[test]
    fn capacity_goes_to_the_peer_with_most_room() {
        let router = Router::new("a");
        let routes = router.cell("logic.greet");
        assert_eq!(router.around_capacity(&routes), None);
        routes.observe(Some(("b".into(), load(300, 2))), load(300, 0));
        routes.observe(Some(("c".into(), load(900, 5))), load(300, 0));
        routes.observe(Some(("d".into(), load(100, 0))), load(300, 0));
        assert_eq!(router.around_capacity(&routes).as_deref(), Some("c"));
    }
}
