//! A host following the desired state (`cbs-host run --watch`): on each
//! change it fetches the bundle, verifies it (digest, signature when the
//! host requires one), loads it (compile from cache, `describe()` as a
//! smoke call) and swaps it in — the new version takes new messages from
//! that instant, the old one finishes what it has. A release that fails to
//! load leaves the old version serving and is reported as `failed`.
//!
//! A release with `replicas` is served only by the hosts its placement
//! (`cbs-placement`, written by the placer) names: the watcher follows the
//! placement too, loading the cell when this host is placed and removing
//! it when it no longer is. A release every watching host serves (no
//! `replicas`) is still served only by hosts with the labels it asks for:
//! native code runs only where its platform label matches.
//!
//! Each release installed is remembered ([`super::served`]): with `--trust`,
//! a host goes back from it only by a signed rollback, also after the cell
//! was undeployed or the host restarted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Entry, Operation};
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::downgrade::{self, Served};
use super::placement::Placement;
use super::served::{higher, Record};
use super::{Canary, Desired, Release, State, Status, Store};
use crate::body::{retire, Body, LoadedCell};
use crate::unix_time::now_ms;

pub struct Watcher {
    body: Arc<Body>,
    store: Store,
    host: String,
    /// This host's labels (`--label`, and its platform).
    labels: BTreeMap<String, String>,
    /// How long a replaced version may take to finish its messages.
    grace: Duration,
    /// Cells this watcher installed, and what it serves of each.
    installed: Mutex<HashMap<String, Served>>,
    /// The canary served next to a cell's current release, by cell.
    canaries: Mutex<HashMap<String, Canary>>,
    /// The version kept warm after a blue-green switch, by cell.
    warm: Arc<std::sync::Mutex<HashMap<String, Warm>>>,
    /// Numbers warm windows, so one's end never drops a later standby.
    generations: std::sync::atomic::AtomicU64,
    /// What this host last installed of each cell, kept in its data folder.
    record: std::sync::Mutex<Record>,
    /// The desired state and placement last seen, per cell.
    view: Mutex<View>,
    /// The lattice policy this host holds, checked before it serves.
    policy: Arc<crate::policy::Enforcer>,
}

/// A version kept warm: what it is, and its window's number.
#[derive(Clone)]
struct Warm {
    served: Served,
    generation: u64,
}

#[derive(Default)]
struct View {
    desired: HashMap<String, Desired>,
    placed: HashMap<String, Placement>,
}

impl Watcher {
    pub fn new(
        body: Arc<Body>,
        store: Store,
        host: String,
        labels: BTreeMap<String, String>,
        grace: Duration,
        record: Record,
        policy: Arc<crate::policy::Enforcer>,
    ) -> Self {
        Self {
            body,
            store,
            host,
            labels,
            grace,
            installed: Mutex::default(),
            canaries: Mutex::default(),
            warm: Arc::default(),
            generations: Default::default(),
            record: std::sync::Mutex::new(record),
            view: Mutex::default(),
            policy,
        }
    }

    /// Follows the desired state and the placement until the task is
    /// dropped; watches again after a lost watch.
    pub async fn run(self: Arc<Self>) {
        loop {
            match (
                self.store.watch_desired().await,
                self.store.watch_placement().await,
            ) {
                (Ok(mut desired), Ok(mut placement)) => {
                    tracing::info!(host = %self.host, "watching the desired state ({}) and placement ({})", super::DESIRED, super::PLACEMENT);
                    loop {
                        let (entry, placed) = tokio::select! {
                            e = desired.next() => (e, false),
                            e = placement.next() => (e, true),
                        };
                        match entry {
                            Some(Ok(entry)) => self.apply(entry, placed).await,
                            Some(Err(e)) => tracing::warn!(error = %e, "watch error"),
                            None => break,
                        }
                    }
                    tracing::warn!("a watch ended; watching again");
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot watch the desired state; retrying")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Records a change of the desired state (or, `placed`, of the
    /// placement) and brings this host's copy of the cell in line.
    async fn apply(&self, entry: Entry, placed: bool) {
        let cell = entry.key.clone();
        {
            let mut view = self.view.lock().await;
            let put = entry.operation == Operation::Put;
            let invalid = |e: serde_json::Error| {
                tracing::warn!(key = %entry.key, error = %e, "ignoring an invalid entry");
            };
            match (placed, put) {
                (false, true) => match serde_json::from_slice::<Desired>(&entry.value) {
                    Ok(d) => {
                        // Every cell's domain, also of cells served elsewhere:
                        // this host's cells may call them.
                        self.body.boundaries().set(&cell, d.current.domain.clone());
                        drop(view.desired.insert(cell.clone(), d));
                    }
                    Err(e) => return invalid(e),
                },
                (true, true) => match serde_json::from_slice::<Placement>(&entry.value) {
                    Ok(p) => drop(view.placed.insert(cell.clone(), p)),
                    Err(e) => return invalid(e),
                },
                (false, false) => {
                    self.body.boundaries().set(&cell, None);
                    drop(view.desired.remove(&cell));
                }
                (true, false) => drop(view.placed.remove(&cell)),
            }
        }
        self.reconcile(&cell).await;
    }

    /// Serves `cell` when it is desired and, if it has replicas, placed
    /// here, or else this host has the labels it asks for; removes it
    /// otherwise.
    async fn reconcile(&self, cell: &str) {
        let wanted = {
            let view = self.view.lock().await;
            view.desired
                .get(cell)
                .cloned()
                .filter(|d| match d.current.replicas {
                    None => d.current.admits(&self.labels),
                    Some(_) => view
                        .placed
                        .get(cell)
                        .is_some_and(|p| p.hosts.contains(&self.host)),
                })
        };
        match wanted {
            Some(desired) => self.install(desired).await,
            None => self.uninstall(cell).await,
        }
    }

    /// Serves the desired release, and its canary next to it.
    async fn install(&self, desired: Desired) {
        if !self.promote(&desired).await {
            self.install_current(&desired).await;
        }
        self.follow_canary(&desired).await;
        self.follow_beside(&desired).await;
        self.body.record(&desired.cell, desired.recording.as_ref());
    }

    /// Makes the canary served here the stable version when the desired
    /// release is that canary's (a promotion): no reload, no gap.
    async fn promote(&self, desired: &Desired) -> bool {
        let release = &desired.current;
        let mut canaries = self.canaries.lock().await;
        let promoted = canaries
            .get(&desired.cell)
            .is_some_and(|c| c.release.digest == release.digest);
        if !promoted {
            return false;
        }
        let ended = match release.warm_ms {
            Some(ms) => self.switch(&desired.cell, ms).await,
            None => self.body.end_canary(&desired.cell, true, self.grace).await,
        };
        if let Err(e) = ended {
            tracing::warn!(cell = %desired.cell, error = %e, "cannot promote the canary; loading the release");
            canaries.remove(&desired.cell);
            return false;
        }
        canaries.remove(&desired.cell);
        let now = Served {
            version: release.version.clone(),
            digest: release.digest.clone(),
        };
        self.remember(&desired.cell, &now).await;
        self.installed
            .lock()
            .await
            .insert(desired.cell.clone(), now);
        tracing::info!(cell = %desired.cell, version = %release.version, "canary promoted: serving");
        let status = self.status(release, &desired.cell, State::Serving, None);
        self.publish(&status).await;
        true
    }

    /// Blue-green: every message to the canary at once; the version it
    /// replaces stays warm for `warm_ms` (bounded), then goes.
    async fn switch(&self, cell: &str, warm_ms: u64) -> anyhow::Result<()> {
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.body.switch(cell, generation, self.grace).await?;
        if let Some(served) = self.installed.lock().await.get(cell).cloned() {
            let warm = Warm { served, generation };
            self.warm.lock().unwrap().insert(cell.to_owned(), warm);
        }
        let window = Duration::from_millis(warm_ms.min(super::desired::MAX_WARM_MS));
        let (body, warm, cell, grace) = (
            self.body.clone(),
            self.warm.clone(),
            cell.to_owned(),
            self.grace,
        );
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            {
                let mut kept = warm.lock().unwrap();
                if kept.get(&cell).is_some_and(|w| w.generation == generation) {
                    kept.remove(&cell);
                }
            }
            body.drop_standby(&cell, generation, grace).await;
        });
        Ok(())
    }

    /// Switches back to the version kept warm when it is `release`'s (a
    /// rollback within the warm window): no load. With `--trust`, only as
    /// a load would: a step forward from `floor` or a signed rollback.
    fn switch_back(
        &self,
        cell: &str,
        release: &Release,
        serving: Option<&Served>,
        floor: Option<&Served>,
    ) -> Option<anyhow::Result<Served>> {
        let warm = self.warm.lock().unwrap().get(cell).cloned()?;
        if warm.served.digest != release.digest {
            return None;
        }
        let trust = self.body.trust();
        if let (Some(from), false) = (floor, trust.is_empty()) {
            let checked =
                downgrade::check(trust, cell, from, &warm.served, release.rollback.as_ref());
            if let Err(e) = checked {
                return Some(Err(e));
            }
        }
        match self.body.swap_standby(cell) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        // The version switched away from is the one kept warm now.
        let mut kept = self.warm.lock().unwrap();
        match serving {
            Some(served) => drop(kept.insert(
                cell.to_owned(),
                Warm {
                    served: served.clone(),
                    generation: warm.generation,
                },
            )),
            None => drop(kept.remove(cell)),
        }
        Some(Ok(warm.served))
    }

    /// Serves the desired canary next to the current release at its share,
    /// moves its share, or ends a canary no longer desired.
    async fn follow_canary(&self, desired: &Desired) {
        let cell = &desired.cell;
        let mut canaries = self.canaries.lock().await;
        match (&desired.canary, canaries.get(cell)) {
            (Some(want), Some(have)) if want.release.digest == have.release.digest => {
                let moved = match want.share == have.share {
                    true => Ok(()),
                    false => self.body.set_share(cell, want.share),
                };
                // The canary's report is the last word on this cell here
                // (the current release's was just confirmed).
                let status = match moved {
                    Ok(()) => {
                        canaries.insert(cell.clone(), want.clone());
                        self.status(&want.release, cell, State::Serving, None)
                    }
                    Err(e) => {
                        let error = format!("cannot move the canary's share: {e:#}");
                        self.status(&want.release, cell, State::Failed, Some(error))
                    }
                };
                self.publish(&status).await;
            }
            (Some(want), _) => {
                let served = self.installed.lock().await.get(cell).cloned();
                let floor = self.floor(cell, served).await;
                let loaded = match self.load(cell, &want.release, floor.as_ref()).await {
                    Ok(canary) => self.body.split(canary, want.share, self.grace).await,
                    Err(e) => Err(e),
                };
                let status = match loaded {
                    Ok(()) => {
                        canaries.insert(cell.clone(), want.clone());
                        tracing::info!(%cell, version = %want.release.version, share = want.share, "canary serving");
                        self.status(&want.release, cell, State::Serving, None)
                    }
                    Err(e) => {
                        let error = format!("{e:#}");
                        tracing::error!(%cell, version = %want.release.version, %error, "cannot serve the canary");
                        self.status(&want.release, cell, State::Failed, Some(error))
                    }
                };
                self.publish(&status).await;
            }
            (None, Some(_)) => {
                canaries.remove(cell);
                if let Err(e) = self.body.end_canary(cell, false, self.grace).await {
                    tracing::warn!(%cell, error = %e, "cannot end the canary");
                }
                tracing::info!(%cell, "canary ended");
                let status = self.status(&desired.current, cell, State::Serving, None);
                self.publish(&status).await;
            }
            (None, None) => {}
        }
    }

    /// Serves the majors the desired state keeps beside the current
    /// release, and stops those it no longer keeps.
    async fn follow_beside(&self, desired: &Desired) {
        let cell = &desired.cell;
        let serving = self.body.beside(cell);
        let kept = |lane: &str| {
            desired
                .beside
                .iter()
                .find(|r| crate::majors::of_version(&r.version).as_deref() == Some(lane))
        };
        for lane in serving.keys().filter(|lane| kept(lane).is_none()) {
            self.body.remove_beside(cell, lane, self.grace).await;
        }
        for release in &desired.beside {
            let Some(lane) = crate::majors::of_version(&release.version) else {
                continue;
            };
            if serving
                .get(&lane)
                .is_some_and(|c| c.manifest.version == release.version)
            {
                continue;
            }
            let served = match self.load(cell, release, None).await {
                Ok(loaded) => self.body.serve_beside(loaded).await,
                Err(e) => Err(e),
            };
            match served {
                Ok(old) => {
                    tracing::info!(%cell, version = %release.version, "serving beside the current release");
                    if let Some(old) = old {
                        tokio::spawn(retire(old, self.grace));
                    }
                }
                Err(e) => {
                    tracing::warn!(%cell, version = %release.version, error = %format!("{e:#}"), "cannot serve the major kept beside")
                }
            }
        }
    }

    async fn install_current(&self, desired: &Desired) {
        let release = &desired.current;
        let mut installed = self.installed.lock().await;
        let started = Instant::now();
        let served = installed.get(&desired.cell).cloned();
        if served.as_ref().is_some_and(|s| s.digest == release.digest) {
            // Already serving these bytes (a redeploy): confirm only.
            let status = self.status(release, &desired.cell, State::Serving, None);
            return self.publish(&status).await;
        }
        let floor = self.floor(&desired.cell, served.clone()).await;
        let back = self.switch_back(&desired.cell, release, served.as_ref(), floor.as_ref());
        if let Some(back) = back {
            return self
                .switched_back(desired, back, &mut installed, started)
                .await;
        }
        let outcome = match self.load(&desired.cell, release, floor.as_ref()).await {
            Ok(cell) => {
                // The bundle's signed version, not the release's copy of it.
                let now = Served {
                    version: cell.manifest.version.clone(),
                    digest: release.digest.clone(),
                };
                // The version replaced keeps its major beside the new one
                // when the desired state keeps it (no reload, no gap).
                let keep = served
                    .as_ref()
                    .is_some_and(|s| desired.beside.iter().any(|r| r.digest == s.digest));
                let swapped = match keep {
                    true => self.body.replace_keeping(cell).await,
                    false => self.body.replace(cell).await,
                };
                swapped.map(|old| (old, now))
            }
            Err(e) => Err(e),
        };
        let status = match outcome {
            Ok((old, now)) => {
                self.remember(&desired.cell, &now).await;
                installed.insert(desired.cell.clone(), now);
                tracing::info!(cell = %desired.cell, version = %release.version, digest = %release.digest, elapsed_ms = started.elapsed().as_millis() as u64, "deployed: serving");
                if let Some(old) = old {
                    tokio::spawn(retire(old, self.grace));
                }
                self.status(release, &desired.cell, State::Serving, None)
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(cell = %desired.cell, version = %release.version, %error, "cannot deploy; the version served before (if any) keeps serving");
                self.status(release, &desired.cell, State::Failed, Some(error))
            }
        };
        self.publish(&status).await;
    }

    /// Records and reports a switch back to the warm version.
    async fn switched_back(
        &self,
        desired: &Desired,
        back: anyhow::Result<Served>,
        installed: &mut HashMap<String, Served>,
        started: Instant,
    ) {
        let (cell, release) = (&desired.cell, &desired.current);
        let status = match back {
            Ok(now) => {
                self.remember(cell, &now).await;
                installed.insert(cell.clone(), now);
                tracing::info!(%cell, version = %release.version, elapsed_us = started.elapsed().as_micros() as u64, "switched back to the warm version: serving");
                Status {
                    warm: true,
                    ..self.status(release, cell, State::Serving, None)
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(%cell, version = %release.version, %error, "cannot switch back; the version served keeps serving");
                self.status(release, cell, State::Failed, Some(error))
            }
        };
        self.publish(&status).await;
    }

    /// The release `cell` may not go back from: the higher of what is
    /// `served`, what this host last installed, and what the lattice says
    /// hosts last installed (which cannot lower the others).
    async fn floor(&self, cell: &str, served: Option<Served>) -> Option<Served> {
        let local = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cell)
            .cloned();
        let lattice = self.store.served(cell).await.unwrap_or_else(|e| {
            tracing::warn!(%cell, error = %e, "cannot read what the lattice served; using this host's record");
            None
        });
        higher(higher(served, local), lattice)
    }

    /// Records an installed release, here and in the lattice. Every
    /// install passed the downgrade check, so this is a step forward or a
    /// signed step back.
    async fn remember(&self, cell: &str, now: &Served) {
        let kept = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(cell, now.clone());
        if let Err(e) = kept {
            tracing::warn!(%cell, error = %e, "cannot record the release served in the data folder");
        }
        if let Err(e) = self.store.record_served(cell, now).await {
            tracing::warn!(%cell, error = %e, "cannot record the release served in the lattice");
        }
    }

    async fn publish(&self, status: &Status) {
        if let Err(e) = self.store.report(status).await {
            tracing::warn!(error = %e, "cannot report the deployment status");
        }
    }

    /// Fetches, checks and loads a release; with `--trust`, only a step
    /// forward from `floor` (see [`Watcher::floor`]), or a signed rollback.
    async fn load(
        &self,
        cell: &str,
        release: &Release,
        floor: Option<&Served>,
    ) -> anyhow::Result<Arc<LoadedCell>> {
        let bundle = self.store.get_bundle(release).await?;
        if bundle.manifest.cell != cell {
            anyhow::bail!("the bundle is cell {}, not {cell}", bundle.manifest.cell);
        }
        let trust = self.body.trust();
        if let (Some(served), false) = (floor, trust.is_empty()) {
            // The bundle's own (signed) version, never the release's copy.
            let to = Served {
                version: bundle.manifest.version.clone(),
                digest: bundle.digest(),
            };
            downgrade::check(trust, cell, served, &to, release.rollback.as_ref())?;
        }
        self.admit(&bundle, release).await?;
        self.body.load_bundle(&bundle).await
    }

    /// The policy's check, by this host, of what the bundle itself says
    /// (signed) and of the release's placement, domain and origin.
    async fn admit(&self, bundle: &crate::bundle::Bundle, release: &Release) -> anyhow::Result<()> {
        let manifest = bundle.cell_manifest()?;
        let desired: Vec<Desired> = self.view.lock().await.desired.values().cloned().collect();
        let usage = super::rollout::deployed(&desired);
        let candidate = crate::policy::Candidate {
            bundle,
            manifest: &manifest,
            replicas: release.most_replicas(),
            domain: release.domain.as_ref().map(|d| d.name.as_str()),
            origin: release.origin.as_deref(),
            usage: &usage,
        };
        self.policy.admit(&candidate, release.waiver.as_ref()).await
    }

    fn status(&self, release: &Release, cell: &str, state: State, error: Option<String>) -> Status {
        Status {
            host: self.host.clone(),
            cell: cell.to_owned(),
            state,
            release: release.id.clone(),
            version: release.version.clone(),
            digest: release.digest.clone(),
            error,
            serving: self.body.cell(cell).map(|c| c.manifest.version.clone()),
            warm: false,
            at_ms: now_ms(),
        }
    }

    async fn uninstall(&self, cell: &str) {
        self.canaries.lock().await.remove(cell);
        self.warm.lock().unwrap().remove(cell);
        if self.installed.lock().await.remove(cell).is_none() {
            return;
        }
        self.body.remove(cell, self.grace).await;
        if let Err(e) = self.store.clear_status(cell, &self.host).await {
            tracing::warn!(error = %e, "cannot clear the deployment status");
        }
    }

    /// Withdraws this host's status reports (at shutdown).
    pub async fn clear(&self) {
        for cell in self.installed.lock().await.keys() {
            if let Err(e) = self.store.clear_status(cell, &self.host).await {
                tracing::warn!(%cell, error = %e, "cannot withdraw the deployment status");
            }
        }
    }
}
