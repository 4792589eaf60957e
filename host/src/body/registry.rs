//! The cells this host serves, one slot per cell id. A slot holds the
//! version that takes new messages; a hot swap replaces what is in it while
//! the subscription stays, so no message falls between two versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cell::{retire, LoadedCell};
use super::dispatch::{dispatch, Pick, Reroute};
use super::pull;
use super::split::{Slot, Versions};
use crate::bus::{BodyBus, Endpoint, Subscription};
use crate::durable::{Consumer, ConsumerSpec, DurableLog, StreamSpec};
use crate::envelope::Envelope;
use crate::outbound::LocalCalls;
use crate::routing::{self, Router};
use crate::stats::CellLoad;
use crate::subjects::trial_subject;

/// A cell being served, with the tasks that take its messages and the
/// signals that stop them.
struct Served {
    slot: Slot,
    /// Core subscriptions: the requests on `cbs.<id>` (first), then the
    /// core `[[subscribe]]` events.
    dispatchers: Vec<(JoinHandle<()>, Arc<Notify>)>,
    /// Pull loops: the `[durable]` consumer and durable `[[subscribe]]`
    /// consumers (on JetStream).
    pullers: Vec<(JoinHandle<()>, CancellationToken)>,
    /// Sharing the cell's load with its other hosts (when routing).
    sharing: Option<JoinHandle<()>>,
    /// The canary's own subject (`cbs.~p.<id>`), while there is one.
    trial: Option<(JoinHandle<()>, Arc<Notify>)>,
    /// Each major's subject (`cbs.~v<major>.<id>`, `crate::majors`): the
    /// current version's, and those of majors kept beside it.
    lanes: BTreeMap<String, Lane>,
}

/// One major of a cell, served on its own subject.
struct Lane {
    /// The cell's slot (its current version's major), or one of its own
    /// (an older major kept serving beside it).
    slot: Slot,
    beside: bool,
    dispatcher: (JoinHandle<()>, Arc<Notify>),
}

/// How long a major's subject may take to finish the messages it was
/// handed when it moves to another version (already delivered only).
const LANE_DRAIN: Duration = Duration::from_secs(5);

/// Stops a dispatcher: no new messages, those delivered finish (up to `grace`).
async fn stop_dispatcher((mut task, stop): (JoinHandle<()>, Arc<Notify>), grace: Duration) {
    stop.notify_one();
    if tokio::time::timeout(grace, &mut task).await.is_err() {
        task.abort();
    }
}

impl Served {
    /// Stops taking new messages and lets the dispatchers take those
    /// already delivered (up to `grace`); returns the versions served.
    /// Durable messages pulled and not yet acknowledged are delivered again.
    async fn stop(self, grace: Duration) -> Vec<Arc<LoadedCell>> {
        if let Some(sharing) = self.sharing {
            sharing.abort();
        }
        let trial = self.trial.into_iter();
        let mut versions: Vec<Arc<LoadedCell>> = Vec::new();
        let lanes = self.lanes.into_values().map(|lane| {
            if lane.beside {
                versions.extend(lane.slot.read().unwrap().all());
            }
            lane.dispatcher
        });
        let lanes: Vec<_> = lanes.collect();
        let pulls = self.pullers.into_iter().map(|(task, token)| {
            token.cancel();
            async move {
                let _ = tokio::time::timeout(grace, task).await;
            }
        });
        futures_util::future::join_all(pulls).await;
        let dispatches =
            self.dispatchers
                .into_iter()
                .chain(trial)
                .chain(lanes)
                .map(|(mut task, stop)| {
                    stop.notify_one();
                    async move {
                        if tokio::time::timeout(grace, &mut task).await.is_err() {
                            task.abort();
                        }
                    }
                });
        futures_util::future::join_all(dispatches).await;
        versions.extend(self.slot.read().unwrap().all());
        versions
    }
}

pub(super) struct Registry {
    bus: Arc<dyn BodyBus>,
    /// Where `[durable]` cells and durable subscriptions are fed from.
    pub(super) durable: Arc<dyn DurableLog>,
    cells: RwLock<BTreeMap<String, Served>>,
    directory: Arc<Directory>,
    /// Routing around full or slow hosts, when on ([`Registry::route`]).
    router: Option<Arc<Router>>,
}

impl Registry {
    pub fn new(bus: Arc<dyn BodyBus>, durable: Arc<dyn DurableLog>) -> Self {
        Self {
            bus,
            durable,
            cells: RwLock::default(),
            directory: Arc::default(),
            router: None,
        }
    }

    pub fn router(&self) -> Option<&Arc<Router>> {
        self.router.as_ref()
    }

    /// Routes requests around full or slow hosts (cells served after).
    pub fn route(&mut self, router: Arc<Router>) {
        self.router = Some(router);
    }

    /// In-process calls to the cells served here.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.clone()
    }

    /// Subscribes a loaded cell on its subject and queue group.
    pub async fn serve(&self, cell: Arc<LoadedCell>) -> anyhow::Result<()> {
        let id = cell.manifest.id.clone();
        if self.cells.read().unwrap().contains_key(&id) {
            bail!("cell {id} is already served by this host");
        }
        let subject = cell.manifest.subject();
        let slot: Slot = Arc::new(RwLock::new(Versions::new(cell.clone())));
        let consumers = self.consumers(&cell).await?;
        let subscription = self
            .bus
            .serve(endpoint(&cell, &slot))
            .await
            .with_context(|| format!("cannot serve cell {id} on {subject}"))?;
        let reroute = self.router.as_ref().map(|router| Reroute {
            router: router.clone(),
            routes: router.cell(&id),
        });
        let mut dispatchers = vec![self.dispatch(subscription, &slot, Pick::Split, reroute)];
        let sharing = match &self.router {
            Some(router) => Some(self.share(router, &slot, &mut dispatchers).await?),
            None => None,
        };
        for event in cell.manifest.subscribe.iter().filter(|s| !s.durable) {
            let queue = event.queue_group(&id);
            let subscription = self
                .bus
                .subscribe(&event.subject, queue.as_deref())
                .await
                .with_context(|| format!("cannot subscribe cell {id} to {}", event.subject))?;
            dispatchers.push(self.dispatch(subscription, &slot, Pick::Split, None));
        }
        let lane = crate::majors::of_version(&cell.manifest.version);
        let mut lanes = BTreeMap::new();
        if let Some(lane) = lane {
            let dispatcher = self.subscribe_lane(&id, &lane, &slot).await?;
            lanes.insert(
                lane,
                Lane {
                    slot: slot.clone(),
                    beside: false,
                    dispatcher,
                },
            );
        }
        self.bus.flush().await?;
        let pullers = consumers
            .into_iter()
            .map(|consumer| {
                let token = CancellationToken::new();
                let log = self.durable.clone();
                let task = tokio::spawn(pull::consume(log, consumer, slot.clone(), token.clone()));
                (task, token)
            })
            .collect::<Vec<_>>();
        tracing::info!(cell = %id, %subject, events = cell.manifest.subscribe.len(), durable = pullers.len(), "serving");
        self.directory.insert(&id, &slot);
        self.cells.write().unwrap().insert(
            id,
            Served {
                slot,
                dispatchers,
                pullers,
                sharing,
                trial: None,
                lanes,
            },
        );
        Ok(())
    }

    fn dispatch(
        &self,
        subscription: Subscription,
        slot: &Slot,
        pick: Pick,
        reroute: Option<Reroute>,
    ) -> (JoinHandle<()>, Arc<Notify>) {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(dispatch(
            self.bus.clone(),
            slot.clone(),
            subscription,
            stop.clone(),
            pick,
            reroute,
        ));
        (task, stop)
    }

    /// Serves the cell on this host's direct subject too (requests there
    /// are handled here, never forwarded) and shares its load with peers.
    async fn share(
        &self,
        router: &Arc<Router>,
        slot: &Slot,
        dispatchers: &mut Vec<(JoinHandle<()>, Arc<Notify>)>,
    ) -> anyhow::Result<JoinHandle<()>> {
        let id = slot.read().unwrap().stable().manifest.id.clone();
        let direct = routing::direct_subject(router.me(), &id);
        let subscription = self.bus.subscribe(&direct, None).await;
        dispatchers.push(self.dispatch(
            subscription.with_context(|| format!("cannot serve cell {id} on {direct}"))?,
            slot,
            Pick::Split,
            None,
        ));
        let reports = self.bus.subscribe(&routing::load_subject(&id), None).await;
        let reports = reports.with_context(|| format!("cannot follow the load of cell {id}"))?;
        let slot = Arc::downgrade(slot);
        let mine = move || {
            slot.upgrade().map_or_else(CellLoad::default, |slot| {
                let cell = slot.read().unwrap().stable().clone();
                cell.load()
            })
        };
        let bus = self.bus.clone();
        Ok(tokio::spawn(routing::load::share(
            bus,
            router.clone(),
            id,
            reports,
            mine,
        )))
    }

    /// The consumers feeding the cell: its `[durable]` stream's and its
    /// durable subscriptions', made when missing.
    async fn consumers(&self, cell: &LoadedCell) -> anyhow::Result<Vec<Box<dyn Consumer>>> {
        let m = &cell.manifest;
        let mut consumers = Vec::new();
        if let Some(spec) = &m.durable {
            let (stream, consumer) = (StreamSpec::of_cell(m, spec), ConsumerSpec::of_cell(m, spec));
            let opened = self.durable.open(&stream, &consumer).await;
            consumers.push(
                opened
                    .with_context(|| format!("cannot open the durable stream of cell {}", m.id))?,
            );
        }
        for event in m.subscribe.iter().filter(|s| s.durable) {
            let stream = StreamSpec::of_subscription(event);
            let consumer = ConsumerSpec::of_subscription(m, event);
            let opened = self.durable.open(&stream, &consumer).await;
            consumers.push(opened.with_context(|| {
                format!(
                    "cannot subscribe cell {} to {} durably",
                    m.id, event.subject
                )
            })?);
        }
        if !consumers.is_empty() {
            tracing::debug!(cell = %m.id, store = self.durable.kind(), "durable consumers open");
        }
        Ok(consumers)
    }

    /// Puts `cell` in the slot of its id and returns the version it
    /// replaced; serves it anew when nothing has that id. A new major moves
    /// the slot's major subject with it.
    pub async fn replace(&self, cell: Arc<LoadedCell>) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        let id = cell.manifest.id.clone();
        let slot = self.cells.read().unwrap().get(&id).map(|s| s.slot.clone());
        let Some(slot) = slot else {
            self.serve(cell).await?;
            return Ok(None);
        };
        let stable = slot.read().unwrap().stable().clone();
        let (from, to) = (
            crate::majors::of_version(&stable.manifest.version),
            crate::majors::of_version(&cell.manifest.version),
        );
        if from == to {
            let old = slot.write().unwrap().replace(cell.clone());
            tracing::info!(cell = %id, from = %old.manifest.version, to = %cell.manifest.version, "swapped");
            return Ok(Some(old));
        }
        // The old major's subject stops first (what it was handed, the old
        // version answers), then the new major's starts on the slot.
        if let Some(from) = from {
            if let Some(lane) = self.take_lane(&id, &from, false) {
                self.directory.remove(&crate::majors::subject(&from, &id));
                stop_dispatcher(lane.dispatcher, LANE_DRAIN).await;
            }
        }
        let old = slot.write().unwrap().replace(cell.clone());
        tracing::info!(cell = %id, from = %old.manifest.version, to = %cell.manifest.version, "swapped to a new major");
        let mut retired = Vec::new();
        if let Some(lane) = to {
            retired = self.own_lane(&id, &lane, &slot).await?;
        }
        for cell in retired {
            tokio::spawn(retire(cell, LANE_DRAIN));
        }
        Ok(Some(old))
    }

    /// Puts `cell` in the slot of its id, and keeps the version it replaces
    /// serving its own major beside it (on `cbs.~v<major>.<id>`, without a
    /// reload or a gap); as [`Registry::replace`] when both are of one major.
    pub async fn replace_keeping(
        &self,
        cell: Arc<LoadedCell>,
    ) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        let id = cell.manifest.id.clone();
        let Some(slot) = self.cells.read().unwrap().get(&id).map(|s| s.slot.clone()) else {
            return self.replace(cell).await;
        };
        let stable = slot.read().unwrap().stable().clone();
        let from = crate::majors::of_version(&stable.manifest.version);
        let to = crate::majors::of_version(&cell.manifest.version);
        let (Some(from), Some(to)) = (from, to) else {
            return self.replace(cell).await;
        };
        if from == to {
            return self.replace(cell).await;
        }
        // The kept major takes its subject in a slot of its own (beside the
        // slot's subscriber, in one queue group), then the slot's lets go.
        let kept: Slot = Arc::new(RwLock::new(Versions::new(stable.clone())));
        let dispatcher = self.subscribe_lane(&id, &from, &kept).await?;
        self.bus.flush().await?;
        let own = self.take_lane(&id, &from, false);
        self.put_lane(
            &id,
            &from,
            Lane {
                slot: kept,
                beside: true,
                dispatcher,
            },
        );
        if let Some(own) = own {
            stop_dispatcher(own.dispatcher, LANE_DRAIN).await;
        }
        let old = slot.write().unwrap().replace(cell.clone());
        tracing::info!(cell = %id, from = %old.manifest.version, to = %cell.manifest.version, "swapped to a new major; the one before keeps serving beside it");
        for cell in self.own_lane(&id, &to, &slot).await? {
            tokio::spawn(retire(cell, LANE_DRAIN));
        }
        Ok(None)
    }

    /// Serves `cell`, a major other than the current one's, beside it on
    /// its major's subject; returns the version of that major it replaced.
    pub async fn serve_beside(
        &self,
        cell: Arc<LoadedCell>,
    ) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        let id = cell.manifest.id.clone();
        let version = cell.manifest.version.clone();
        let lane = crate::majors::of_version(&version).with_context(|| {
            format!("{id} {version} is not a semver version: it has no major to serve beside")
        })?;
        let existing = {
            let cells = self.cells.read().unwrap();
            let served = cells.get(&id).with_context(|| {
                format!("cell {id} is not served here: a major beside it needs it")
            })?;
            served.lanes.get(&lane).map(|l| (l.beside, l.slot.clone()))
        };
        match existing {
            Some((false, _)) => bail!("major {lane} of {id} is its current version's"),
            Some((true, kept)) => {
                let old = kept.write().unwrap().replace(cell);
                Ok(Some(old))
            }
            None => {
                let kept: Slot = Arc::new(RwLock::new(Versions::new(cell)));
                let dispatcher = self.subscribe_lane(&id, &lane, &kept).await?;
                self.bus.flush().await?;
                tracing::info!(cell = %id, %version, "serving beside the current version");
                self.put_lane(
                    &id,
                    &lane,
                    Lane {
                        slot: kept,
                        beside: true,
                        dispatcher,
                    },
                );
                Ok(None)
            }
        }
    }

    /// Stops serving a major kept beside cell `id`; its versions finish
    /// their messages (up to `grace`).
    pub async fn remove_beside(&self, id: &str, lane: &str, grace: Duration) -> bool {
        let Some(kept) = self.take_lane(id, lane, true) else {
            return false;
        };
        self.directory.remove(&crate::majors::subject(lane, id));
        stop_dispatcher(kept.dispatcher, grace).await;
        let versions = kept.slot.read().unwrap().all();
        for cell in versions {
            retire(cell, grace).await;
        }
        tracing::info!(cell = %id, major = %lane, "stopped serving the major beside");
        true
    }

    /// The versions of cell `id` served beside its current one, by major.
    pub fn beside(&self, id: &str) -> BTreeMap<String, Arc<LoadedCell>> {
        let cells = self.cells.read().unwrap();
        let Some(served) = cells.get(id) else {
            return BTreeMap::new();
        };
        served
            .lanes
            .iter()
            .filter(|(_, l)| l.beside)
            .map(|(lane, l)| (lane.clone(), l.slot.read().unwrap().stable().clone()))
            .collect()
    }

    /// The slot's own subscription on major `lane`; a major kept beside on
    /// it gives way (its versions returned, to retire).
    async fn own_lane(
        &self,
        id: &str,
        lane: &str,
        slot: &Slot,
    ) -> anyhow::Result<Vec<Arc<LoadedCell>>> {
        let dispatcher = self.subscribe_lane(id, lane, slot).await?;
        self.bus.flush().await?;
        let mut retired = Vec::new();
        if let Some(kept) = self.take_lane(id, lane, true) {
            stop_dispatcher(kept.dispatcher, LANE_DRAIN).await;
            retired = kept.slot.read().unwrap().all();
        }
        self.directory
            .insert(&crate::majors::subject(lane, id), slot);
        self.put_lane(
            id,
            lane,
            Lane {
                slot: slot.clone(),
                beside: false,
                dispatcher,
            },
        );
        Ok(retired)
    }

    /// Subscribes a dispatcher on the subject of major `lane` of `id`, in
    /// its queue group, for `slot`; in-process calls find it there too.
    async fn subscribe_lane(
        &self,
        id: &str,
        lane: &str,
        slot: &Slot,
    ) -> anyhow::Result<(JoinHandle<()>, Arc<Notify>)> {
        let subject = crate::majors::subject(lane, id);
        let subscription = self
            .bus
            .subscribe(&subject, Some(&subject))
            .await
            .with_context(|| format!("cannot serve cell {id} on {subject}"))?;
        self.directory.insert(&subject, slot);
        Ok(self.dispatch(subscription, slot, Pick::Split, None))
    }

    /// Takes the lane of major `lane` out of cell `id`'s, if it is beside
    /// (or its own, `beside` false).
    fn take_lane(&self, id: &str, lane: &str, beside: bool) -> Option<Lane> {
        let mut cells = self.cells.write().unwrap();
        let lanes = &mut cells.get_mut(id)?.lanes;
        if lanes.get(lane)?.beside != beside {
            return None;
        }
        lanes.remove(lane)
    }

    fn put_lane(&self, id: &str, lane: &str, entry: Lane) {
        let mut cells = self.cells.write().unwrap();
        match cells.get_mut(id) {
            Some(served) => drop(served.lanes.insert(lane.to_owned(), entry)),
            // Removed meanwhile: the subscription goes too.
            None => entry.dispatcher.1.notify_one(),
        }
    }

    /// Stops serving a cell: no new messages; those delivered and in
    /// flight finish (up to `grace`).
    pub async fn remove(&self, id: &str, grace: Duration) -> bool {
        self.directory.remove(id);
        if let Some(router) = &self.router {
            router.forget(id);
        }
        let Some(served) = self.cells.write().unwrap().remove(id) else {
            return true;
        };
        for lane in served.lanes.keys() {
            self.directory.remove(&crate::majors::subject(lane, id));
        }
        let versions = served.stop(grace).await;
        tracing::info!(cell = %id, "removed");
        let retired = versions.into_iter().map(|cell| retire(cell, grace));
        futures_util::future::join_all(retired)
            .await
            .into_iter()
            .all(|finished| finished)
    }

    /// Serves `canary` next to the stable version of its cell, taking
    /// `share` (basis points) of its messages, and alone on its trial
    /// subject (`cbs.~p.<id>`, for tests while it takes little or
    /// nothing); returns a canary it replaced, to retire.
    pub async fn split(
        &self,
        canary: Arc<LoadedCell>,
        share: u32,
    ) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        let id = canary.manifest.id.clone();
        let slot = self.slot(&id)?;
        let has_trial = self
            .cells
            .read()
            .unwrap()
            .get(&id)
            .is_some_and(|s| s.trial.is_some());
        let trial = match has_trial {
            true => None,
            false => {
                let subject = trial_subject(&id);
                let subscription = self.bus.subscribe(&subject, Some(&subject)).await;
                let subscription = subscription
                    .with_context(|| format!("cannot serve the canary of {id} on {subject}"))?;
                self.bus.flush().await?;
                Some(self.dispatch(subscription, &slot, Pick::Canary, None))
            }
        };
        tracing::info!(cell = %id, version = %canary.manifest.version, share, "canary");
        let replaced = slot.write().unwrap().split(canary, share);
        if let Some(trial) = trial {
            match self.cells.write().unwrap().get_mut(&id) {
                Some(served) => served.trial = Some(trial),
                None => trial.1.notify_one(),
            }
        }
        Ok(replaced)
    }

    /// Moves the canary of cell `id` to `share` (basis points).
    pub fn set_share(&self, id: &str, share: u32) -> anyhow::Result<()> {
        if !self.slot(id)?.write().unwrap().set_share(share) {
            bail!("cell {id} has no canary on this host");
        }
        Ok(())
    }

    /// Ends the canary of cell `id`: promoted to stable, or dropped;
    /// returns the version no longer served, to retire.
    pub fn end_canary(&self, id: &str, promote: bool) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        let slot = self.slot(id)?;
        let ended = slot.write().unwrap().end(promote);
        self.end_trial(id);
        Ok(ended)
    }

    /// Blue-green: the canary of cell `id` takes every message at once and
    /// the version it replaces stays warm, marked `generation`; returns a
    /// standby it replaced, to retire.
    pub fn switch(&self, id: &str, generation: u64) -> anyhow::Result<Option<Arc<LoadedCell>>> {
        let slot = self.slot(id)?;
        let (switched, replaced) = slot.write().unwrap().switch(generation);
        if !switched {
            bail!("cell {id} has no new version to switch to on this host");
        }
        self.end_trial(id);
        tracing::info!(cell = %id, "switched; the version before stays warm");
        Ok(replaced)
    }

    /// Switches cell `id` back to its warm standby; false when it has none.
    pub fn swap_standby(&self, id: &str) -> anyhow::Result<bool> {
        let slot = self.slot(id)?;
        if !slot.write().unwrap().swap_standby() {
            return Ok(false);
        }
        tracing::info!(cell = %id, "switched to the warm version");
        Ok(true)
    }

    /// Ends the warm window `generation` of cell `id`: its standby, to
    /// retire, unless a later switch replaced it.
    pub fn drop_standby(&self, id: &str, generation: u64) -> Option<Arc<LoadedCell>> {
        let slot = self.slot(id).ok()?;
        let dropped = slot.write().unwrap().drop_standby(generation);
        dropped
    }

    /// Every version of cell `id` loaded, with its role and share.
    pub fn roles(&self, id: &str) -> Vec<(Arc<LoadedCell>, &'static str, u32)> {
        self.slot(id)
            .map(|s| s.read().unwrap().roles())
            .unwrap_or_default()
    }

    /// The version of cell `id` kept warm, if any.
    pub fn standby(&self, id: &str) -> Option<Arc<LoadedCell>> {
        let slot = self.slot(id).ok()?;
        let standby = slot.read().unwrap().standby().cloned();
        standby
    }

    /// Stops serving the trial subject of cell `id` (no canary left).
    fn end_trial(&self, id: &str) {
        let trial = self
            .cells
            .write()
            .unwrap()
            .get_mut(id)
            .and_then(|s| s.trial.take());
        if let Some((_, stop)) = trial {
            stop.notify_one();
        }
    }

    /// The versions of cell `id`: its stable one and its canary, if any.
    pub fn versions(&self, id: &str) -> Vec<Arc<LoadedCell>> {
        self.slot(id)
            .map(|s| s.read().unwrap().all())
            .unwrap_or_default()
    }

    fn slot(&self, id: &str) -> anyhow::Result<Slot> {
        let cells = self.cells.read().unwrap();
        let served = cells
            .get(id)
            .with_context(|| format!("cell {id} is not served here"))?;
        Ok(served.slot.clone())
    }

    /// Stops taking messages for every cell, takes those already delivered
    /// (up to `grace`), and returns the versions served.
    pub async fn stop_all(&self, grace: Duration) -> Vec<Arc<LoadedCell>> {
        self.directory.clear();
        let served: Vec<Served> = std::mem::take(&mut *self.cells.write().unwrap())
            .into_values()
            .collect();
        let stopping = served.into_iter().map(|s| s.stop(grace));
        futures_util::future::join_all(stopping)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<LoadedCell>> {
        self.cells
            .read()
            .unwrap()
            .get(id)
            .map(|s| s.slot.read().unwrap().stable().clone())
    }

    pub fn list(&self) -> Vec<Arc<LoadedCell>> {
        self.cells
            .read()
            .unwrap()
            .values()
            .map(|s| s.slot.read().unwrap().stable().clone())
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for served in self.cells.get_mut().unwrap().values() {
            for (task, _) in &served.dispatchers {
                task.abort();
            }
            for (task, _) in &served.pullers {
                task.abort();
            }
            if let Some(task) = &served.sharing {
                task.abort();
            }
            for lane in served.lanes.values() {
                lane.dispatcher.0.abort();
            }
        }
    }
}

/// The cells this host serves, for in-process calls between them: their
/// slots, so that a call in process takes the version the split picks (a
/// canary its share of them too). Weak references: cells hold their
/// outbound, which holds this directory.
#[derive(Default)]
pub struct Directory {
    cells: RwLock<HashMap<String, Weak<RwLock<Versions>>>>,
}

impl Directory {
    fn insert(&self, id: &str, slot: &Slot) {
        self.cells
            .write()
            .unwrap()
            .insert(id.to_owned(), Arc::downgrade(slot));
    }

    fn remove(&self, id: &str) {
        self.cells.write().unwrap().remove(id);
    }

    fn clear(&self) {
        self.cells.write().unwrap().clear();
    }
}

#[async_trait]
impl LocalCalls for Directory {
    async fn call(&self, cell_id: &str, envelope: &Envelope, trusted: bool) -> Option<Envelope> {
        let slot = self.cells.read().unwrap().get(cell_id)?.upgrade()?;
        let cell = slot.read().unwrap().next();
        // A cell at its limits is left to the bus: another host may have room.
        let _admitted = cell.try_admit()?;
        Some(
            cell.process_inside(Arc::new(envelope.clone()), Instant::now(), trusted)
                .await,
        )
    }
}

/// How the bus presents a cell to discovery tools. The stats follow the
/// slot, so they describe whichever version serves now.
fn endpoint(cell: &Arc<LoadedCell>, slot: &Slot) -> Endpoint {
    let m = &cell.manifest;
    let mut metadata = HashMap::from([
        ("cell".to_owned(), m.id.clone()),
        ("version".to_owned(), m.version.clone()),
        (
            "runtime".to_owned(),
            format!("{:?}", m.runtime).to_lowercase(),
        ),
    ]);
    for (key, schema) in [("input_schema", &m.input), ("output_schema", &m.output)] {
        if let Some(s) = schema {
            metadata.insert(key.to_owned(), s.id.clone());
        }
    }
    let stats_of = Arc::downgrade(slot);
    Endpoint {
        subject: m.subject(),
        metadata,
        stats: Arc::new(move || {
            stats_of.upgrade().map_or(serde_json::Value::Null, |slot| {
                let (cell, canary, warm) = {
                    let versions = slot.read().unwrap();
                    let canary = versions.canary().map(|(c, share)| (c.clone(), share));
                    let warm = versions.standby().map(|c| c.manifest.version.clone());
                    (versions.stable().clone(), canary, warm)
                };
                let mut stats = cell.stats.to_json();
                // A canary's own counters, to compare with the stable's.
                if let Some((canary, share)) = canary {
                    stats["canary"] = serde_json::json!({
                        "version": canary.manifest.version,
                        "share": share,
                        "stats": canary.stats.to_json(),
                    });
                }
                if let Some(warm) = warm {
                    stats["warm"] = warm.into();
                }
                if let Some(tape) = cell.outbound.tape() {
                    stats["recording"] = tape.recording().id.clone().into();
                }
                if let Some(m) = cell.outbound.membership() {
                    // Gateways of one domain serve its exported cells only.
                    stats["domain"] = serde_json::json!({"name": m.name, "exported": m.exported});
                }
                stats["version"] = cell.manifest.version.clone().into();
                stats["instances"] = cell.runner.instances().into();
                stats["workers"] = serde_json::json!(cell.workers());
                let breakers: serde_json::Map<String, serde_json::Value> = cell
                    .breakers()
                    .into_iter()
                    .map(|(target, b)| (target, serde_json::json!(b)))
                    .collect();
                if !breakers.is_empty() {
                    stats["breakers"] = breakers.into();
                }
                if cell.manifest.durable.is_some() {
                    stats["durable"] = serde_json::json!(cell.stats.durable());
                }
                // Routes follow the version served (gateways read them here).
                if !cell.manifest.http.is_empty() {
                    stats["http"] = serde_json::json!(cell.http_targets());
                }
                stats
            })
        }),
    }
}
