//! Every watching host beats its heart into `cbs-hosts` and takes turns
//! placing: one host at a time holds the lease in `cbs-placer`, and while
//! it does it writes `cbs-placement` from the desired state and the live
//! hosts ([`super::placement::place`]).
//!
//! Liveness and the lease are judged by arrivals, not by timestamps: the
//! host holding the lease follows the heartbeats as they come, and a host
//! is live while its beats keep arriving (by the follower's own monotonic
//! clock, [`DEAD_AFTER`]); the lease lapses when its revision has not
//! changed for [`LEASE_LAPSES_AFTER`], and another host takes it with a
//! compare-and-set on that revision, so two hosts never both win. Clocks of
//! different machines never meet.
//!
//! Only the holder follows the heartbeats: were every host to follow them,
//! each beat would be delivered to every host and the lattice's control
//! traffic would grow with the square of its hosts (measured:
//! docs/performance.md, "Lattice"). A host taking the lease reads the last
//! beat of each host first and dates each by its age against the newest
//! one — the server stamped both, so one clock — and places only once it
//! has read them all: a host that died with the old holder is dead to the
//! new one at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;

use super::placement::{self, HostInfo, Placement};
use super::{RequestLoad, Store, HOSTS, PLACEMENT};
use crate::stats::CellLoad;
use crate::unix_time::now_ms;

/// How often a watching host beats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// A host whose heartbeat did not change for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(2_500);
/// The lease lapses when its holder has not renewed it for this long.
pub const LEASE_LAPSES_AFTER: Duration = Duration::from_millis(2_500);
/// How often the placer looks again (and the holder renews).
const TICK: Duration = Duration::from_millis(500);
const LEASE_KEY: &str = "lease";

pub struct Placer {
    store: Store,
    me: HostInfo,
    /// Heartbeats as they come (every host follows them, so a new lease
    /// holder already knows who stopped beating): host key → when its
    /// last beat was seen, and what it said.
    seen: Arc<Mutex<Seen>>,
    /// The lease's revision last seen, and since when.
    lease_seen: Option<(u64, Instant)>,
    holding: bool,
    /// Autoscaled cells: the count set, and when it last changed.
    scaled: HashMap<String, (u32, Instant)>,
    /// Request cells: the `capacity` replies their hosts had counted.
    refused: HashMap<String, u64>,
    /// This host's load per cell, for its heartbeat.
    load: Option<LoadFn>,
    /// The policy this host holds, for its heartbeat.
    policy: Option<Arc<crate::policy::Enforcer>>,
}

/// What a host reports of its cells' load in each heartbeat.
pub type LoadFn = Arc<dyn Fn() -> BTreeMap<String, CellLoad> + Send + Sync>;

impl Placer {
    /// `me`: this host's id, labels and the memory it offers.
    pub fn new(store: Store, me: HostInfo) -> Self {
        Self {
            store,
            me,
            seen: Arc::default(),
            lease_seen: None,
            holding: false,
            scaled: HashMap::new(),
            refused: HashMap::new(),
            load: None,
            policy: None,
        }
    }

    /// Reports the policy `enforcer` holds in every heartbeat.
    pub fn with_policy(mut self, enforcer: Arc<crate::policy::Enforcer>) -> Self {
        self.policy = Some(enforcer);
        self
    }

    /// Reports `load` in every heartbeat (request cells autoscale on it).
    pub fn with_load(mut self, load: LoadFn) -> Self {
        self.load = Some(load);
        self
    }

    /// Beats and, when holding the lease, follows the heartbeats and
    /// places; until the task is dropped.
    pub async fn run(mut self) {
        let mut following: Option<Following> = None;
        let mut beat_at: Option<Instant> = None;
        loop {
            if beat_at.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
                self.beat().await;
                beat_at = Some(Instant::now());
            }
            let holding = self.hold_lease().await;
            if holding != self.holding {
                tracing::info!(host = %self.me.id, holding, "placer lease {}", if holding { "taken" } else { "lost" });
                self.holding = holding;
                following = holding.then(|| self.follow());
            }
            let caught_up = following.as_ref().is_some_and(Following::caught_up);
            if holding && caught_up {
                if let Err(e) = self.place().await {
                    tracing::warn!(error = %e, "cannot place replicas; trying again");
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Starts following the heartbeats, from a clean table.
    fn follow(&self) -> Following {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let caught_up = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(follow_heartbeats(
            self.store.hosts.clone(),
            self.seen.clone(),
            caught_up.clone(),
        ));
        Following {
            _task: AbortOnDrop(task),
            caught_up,
            since: Instant::now(),
        }
    }

    async fn beat(&self) {
        let info = HostInfo {
            at_ms: now_ms(),
            load: self.load.as_ref().map(|f| f()).unwrap_or_default(),
            policy: self.policy.as_ref().and_then(|p| p.mark()),
            ..self.me.clone()
        };
        let bytes = match serde_json::to_vec(&info) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "cannot encode the heartbeat"),
        };
        if let Err(e) = self
            .store
            .hosts
            .put(host_key(&self.me.id), bytes.into())
            .await
        {
            tracing::warn!(error = %e, "cannot write the heartbeat to {HOSTS}");
        }
    }

    /// Takes, keeps or observes the lease; true while this host holds it.
    async fn hold_lease(&mut self) -> bool {
        let lease = &self.store.placer;
        let me = self.me.id.clone();
        let entry = match lease.entry(LEASE_KEY).await {
            Ok(entry) => entry.filter(|e| e.operation == Operation::Put),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the placer lease");
                return false;
            }
        };
        let Some(entry) = entry else {
            return lease
                .create(LEASE_KEY, me.into_bytes().into())
                .await
                .is_ok();
        };
        if entry.value == me.as_bytes() {
            return lease
                .update(LEASE_KEY, me.into_bytes().into(), entry.revision)
                .await
                .is_ok();
        }
        // Someone else's: it lapses when its revision stops changing.
        let since = match self.lease_seen {
            Some((revision, since)) if revision == entry.revision => since,
            _ => {
                self.lease_seen = Some((entry.revision, Instant::now()));
                return false;
            }
        };
        if since.elapsed() < LEASE_LAPSES_AFTER {
            return false;
        }
        let taken = lease
            .update(LEASE_KEY, me.into_bytes().into(), entry.revision)
            .await;
        taken.is_ok()
    }

    /// Hosts whose heartbeat came within [`DEAD_AFTER`] (this one always).
    fn live_hosts(&self) -> Vec<HostInfo> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let others = seen
            .values()
            .filter(|(at, info)| at.elapsed() < DEAD_AFTER && info.id != self.me.id)
            .map(|(_, info)| info.clone());
        std::iter::once(self.me.clone()).chain(others).collect()
    }

    async fn place(&mut self) -> anyhow::Result<()> {
        let mut desired = self.store.all_desired().await?;
        let live = self.live_hosts();
        let current: BTreeMap<String, Placement> = self
            .store
            .placements()
            .await?
            .into_iter()
            .map(|p| (p.cell.clone(), p))
            .collect();
        for d in &mut desired {
            let placed = current.get(&d.cell);
            if let Some(count) = self.autoscaled(d, placed).await {
                d.current.replicas = Some(count);
            }
        }
        self.scaled
            .retain(|cell, _| desired.iter().any(|d| d.cell == *cell));
        self.forget_dead().await?;
        let next = placement::place(&desired, &live, &current);
        for (cell, p) in &next {
            if current.get(cell) == Some(p) {
                continue;
            }
            match &p.unplaced {
                Some(why) => tracing::warn!(%cell, hosts = ?p.hosts, "{why}"),
                None => tracing::info!(%cell, hosts = ?p.hosts, "placed"),
            }
            self.store
                .placement
                .put(cell, serde_json::to_vec(p)?.into())
                .await
                .map_err(|e| anyhow::anyhow!("cannot write {PLACEMENT}/{cell}: {e}"))?;
        }
        for cell in current.keys().filter(|c| !next.contains_key(*c)) {
            self.store
                .placement
                .delete(cell)
                .await
                .map_err(|e| anyhow::anyhow!("cannot delete {PLACEMENT}/{cell}: {e}"))?;
        }
        Ok(())
    }
}

impl Placer {
    /// The replica count of an autoscaled release: up at once to what the
    /// load needs (a durable cell's lag, a request cell's `capacity`
    /// replies and busyness), down one replica at a time, each after the
    /// load allowed fewer for `scale_down_after_ms`. None for other
    /// releases.
    ///
    /// `placed`: the count of the placement so far (a new lease holder
    /// starts from it, not from the floor).
    async fn autoscaled(&mut self, d: &super::Desired, placed: Option<&Placement>) -> Option<u32> {
        let scale = d.current.autoscale.as_ref()?;
        let start = placed
            .map(|p| p.replicas)
            .or(d.current.replicas)
            .unwrap_or(scale.min_replicas);
        let (now, since) = self
            .scaled
            .get(&d.cell)
            .copied()
            .unwrap_or((start, Instant::now()));
        let wanted = match (&scale.stream, &scale.consumer) {
            (Some(stream), Some(consumer)) => match self.lag(stream, consumer).await {
                Ok(lag) => scale.wanted(lag),
                Err(e) => {
                    tracing::debug!(cell = %d.cell, error = %e, "cannot read the consumer lag; the count stays");
                    return Some(now);
                }
            },
            _ => {
                let hosts = placed.map_or(&[][..], |p| &p.hosts[..]);
                let load = self.load_of(&d.cell, hosts);
                scale.wanted_for_load(now, load)
            }
        };
        let down_after = Duration::from_millis(scale.scale_down_after_ms);
        // `since`: how long the lag has allowed fewer replicas, unbroken.
        let (next, since) = if wanted > now {
            (wanted, Instant::now())
        } else if wanted == now {
            (now, Instant::now())
        } else if since.elapsed() >= down_after {
            (now - 1, Instant::now())
        } else {
            (now, since)
        };
        let next = next.clamp(
            scale.min_replicas,
            scale.max_replicas.max(scale.min_replicas),
        );
        if next != now {
            tracing::info!(cell = %d.cell, from = now, to = next, "autoscaling");
        }
        self.scaled.insert(d.cell.clone(), (next, since));
        Some(next)
    }

    /// Withdraws the status reports of hosts that stopped beating (a
    /// killed host cannot withdraw its own), so `cbs ls` shows what runs.
    async fn forget_dead(&mut self) -> anyhow::Result<()> {
        let dead: Vec<String> = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let dead: Vec<(String, String)> = seen
                .iter()
                .filter(|(_, (at, _))| at.elapsed() >= DEAD_AFTER)
                .map(|(key, (_, info))| (key.clone(), info.id.clone()))
                .collect();
            for (key, _) in &dead {
                seen.remove(key);
            }
            dead.into_iter().map(|(_, id)| id).collect()
        };
        if dead.is_empty() {
            return Ok(());
        }
        for status in self.store.statuses().await? {
            if dead.contains(&status.host) {
                self.store.clear_status(&status.cell, &status.host).await?;
            }
        }
        tracing::info!(hosts = ?dead, "hosts stopped beating; their status reports withdrawn");
        Ok(())
    }

    /// Messages of the consumer not yet acknowledged: waiting or held.
    async fn lag(&self, stream: &str, consumer: &str) -> anyhow::Result<u64> {
        let stream = self.store.js.get_stream(stream).await?;
        let info = stream.consumer_info(consumer).await?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Whether `hosts` answered `capacity` for `cell` since the last look,
    /// how busy they are (running or queued over what they run at once)
    /// and how long messages waited, from their latest heartbeats.
    fn load_of(&mut self, cell: &str, hosts: &[String]) -> RequestLoad {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // By key, so a round costs the replicas, not hosts × replicas.
        let loads: Vec<CellLoad> = hosts
            .iter()
            .filter_map(|host| {
                let (_, info) = seen.get(&host_key(host))?;
                (info.id == *host).then(|| info.load.get(cell).copied())?
            })
            .collect();
        drop(seen);
        let before = self.refused.get(cell).copied();
        let (load, refused) = placement::request_load(&loads, before);
        self.refused.insert(cell.to_owned(), refused);
        load
    }
}

/// A host id as a key: the characters keys allow.
pub fn host_key(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The holder's following of the heartbeats, stopped when dropped.
struct Following {
    _task: AbortOnDrop,
    caught_up: Arc<AtomicBool>,
    since: Instant,
}

impl Following {
    /// Whether every host's last beat was read (or, should the end of the
    /// replay never be seen, beats arrived for [`DEAD_AFTER`]).
    fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire) || self.since.elapsed() >= DEAD_AFTER
    }
}

/// Records each heartbeat as it comes, by this host's clock; the last
/// beats already in the bucket are dated by their age against the newest
/// of them (server stamps, one clock). Watches again when the watch ends.
async fn follow_heartbeats(hosts: kv::Store, seen: Arc<Mutex<Seen>>, caught_up: Arc<AtomicBool>) {
    loop {
        match hosts.watch_with_history(">").await {
            Ok(mut watch) => {
                let mut replay = Replay::default();
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { continue };
                    if !replay.done {
                        if replay.add(entry, &seen) {
                            caught_up.store(true, Ordering::Release);
                        }
                        continue;
                    }
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    record(&mut seen, entry, Instant::now());
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch {HOSTS}; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The beats a new watch delivers first: the last of each host.
#[derive(Default)]
struct Replay {
    entries: Vec<kv::Entry>,
    done: bool,
}

impl Replay {
    /// Takes one replayed entry; at the last (nothing pending), records them
    /// all, each seen as long ago as it is older than the newest, and
    /// returns true.
    fn add(&mut self, entry: kv::Entry, seen: &Mutex<Seen>) -> bool {
        let last = entry.delta == 0;
        self.entries.push(entry);
        if !last {
            return false;
        }
        self.done = true;
        let newest = self.entries.iter().map(|e| e.created).max();
        let now = Instant::now();
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        for entry in self.entries.drain(..) {
            let age = newest
                .and_then(|n| Duration::try_from(n - entry.created).ok())
                .unwrap_or_default();
            record(&mut seen, entry, now.checked_sub(age).unwrap_or(now));
        }
        true
    }
}

/// One heartbeat (or its deletion) seen at `at`.
fn record(seen: &mut Seen, entry: kv::Entry, at: Instant) {
    if entry.operation != Operation::Put {
        seen.remove(&entry.key);
        return;
    }
    // The bucket is outside input: a bad heartbeat is skipped.
    match HostInfo::from_heartbeat(&entry.value) {
        Ok(info) => remember(seen, entry.key, info, at),
        Err(e) => {
            tracing::debug!(key = %entry.key, error = %e, "ignoring an invalid heartbeat")
        }
    }
}

/// The last heartbeat of each host, by key, with when it was seen.
type Seen = HashMap<String, (Instant, HostInfo)>;

/// The most hosts whose heartbeats are remembered: past it, those not
/// heard from for [`FORGET_AFTER`] go, and a new host is ignored while
/// the table is still full.
pub use super::placement::MAX_HOSTS;
/// How long a silent host's last heartbeat is remembered at most: as long
/// as the bucket keeps it. Expiry there sends no delete, and only the
/// placer holding the lease forgets dead hosts at once.
const FORGET_AFTER: Duration = super::store::HOST_HEARTBEAT_KEPT;

fn remember(seen: &mut Seen, key: String, info: HostInfo, now: Instant) {
    if seen.len() >= MAX_HOSTS && !seen.contains_key(&key) {
        seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < FORGET_AFTER);
        if seen.len() >= MAX_HOSTS {
            tracing::debug!(%key, "ignoring a heartbeat: {MAX_HOSTS} hosts are remembered");
            return;
        }
    }
    seen.insert(key, (now, info));
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> HostInfo {
        HostInfo {
            id: id.to_owned(),
            labels: BTreeMap::new(),
            ..Default::default()
        }
    }

    #[test]
    fn remembered_hosts_are_bounded_and_silent_ones_make_room() {
        let mut seen = Seen::new();
        let then = Instant::now();
        for i in 0..MAX_HOSTS {
            remember(&mut seen, format!("h{i}"), info("h"), then);
        }
        remember(&mut seen, "new".into(), info("new"), then);
        assert_eq!(seen.len(), MAX_HOSTS);
        assert!(
            !seen.contains_key("new"),
            "ignored while every host is fresh"
        );
        remember(&mut seen, "h1".into(), info("h1"), then);
        assert_eq!(seen["h1"].1.id, "h1", "a known host still updates");
        let later = then + FORGET_AFTER;
        remember(&mut seen, "new".into(), info("new"), later);
        assert_eq!(seen.len(), 1, "the silent hosts went");
        assert!(seen.contains_key("new"));
    }

    fn beat(id: &str, created: time::OffsetDateTime, delta: u64) -> kv::Entry {
        kv::Entry {
            bucket: HOSTS.to_owned(),
            key: host_key(id),
            value: serde_json::to_vec(&info(id)).unwrap().into(),
            revision: 1,
            delta,
            created,
            operation: Operation::Put,
            seen_current: delta == 0,
        }
    }

    /// A new holder reads the last beats first: one 5 s older than the
    /// newest was seen 5 s ago (dead at once), the newest just now.
    #[test]
    fn replayed_beats_are_dated_by_their_age_against_the_newest() {
        let seen = Mutex::new(Seen::new());
        let newest = time::OffsetDateTime::now_utc();
        let mut replay = Replay::default();
        assert!(!replay.add(beat("gone", newest - time::Duration::seconds(5), 1), &seen));
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing recorded before the end"
        );
        assert!(replay.add(beat("live", newest, 0), &seen));
        let seen = seen.lock().unwrap();
        assert!(
            seen["gone"].0.elapsed() >= Duration::from_secs(5),
            "dated back"
        );
        assert!(seen["gone"].0.elapsed() >= DEAD_AFTER, "so dead at once");
        assert!(seen["live"].0.elapsed() < DEAD_AFTER, "the newest is live");
    }
}
