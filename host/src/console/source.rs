//! Where the console's views come from: a lattice over NATS, or one host's
//! body in process. Both give the same view types.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::deployer::Deployer;
use super::view::{
    CellDetail, DeadLetters, Flows, Host, HostPolicy, HostServing, Lattice, Letter, Release,
    Releases, Served, VersionRow,
};
use crate::body::{Body, LoadedCell};
use crate::bus::nats::NatsBus;
use crate::bus::BodyBus;
use crate::deploy::Store;
use crate::discovery;
use crate::durable::jetstream::JetStreamLog;

/// What the console reads.
#[async_trait]
pub trait Source: Send + Sync {
    async fn lattice(&self) -> anyhow::Result<Lattice>;

    /// One cell, or `None` when nothing serves it or wants it.
    async fn cell(&self, id: &str) -> anyhow::Result<Option<CellDetail>>;

    /// A durable cell's dead letters, the newest [`MAX_LETTERS`].
    async fn dead_letters(&self, cell: &str) -> anyhow::Result<DeadLetters>;

    /// One flow's hops, or (`None`) the latest failed hops, from every
    /// host's memory of recent flows.
    async fn flows(&self, correlation_id: Option<&str>) -> anyhow::Result<Flows>;

    /// The newest [`MAX_RELEASES`] audited changes (none in process: the
    /// audit trail is on NATS).
    async fn releases(&self) -> anyhow::Result<Releases>;

    /// What changes releases (deploy, rollback, undeploy): a lattice only.
    fn deployer(&self) -> Option<&super::deployer::Deployer> {
        None
    }

    /// Publishes dead letters of `cell` again (`None`: all, at most
    /// [`super::actions::MAX_REPLAY`]) as `user` asked, recording it in
    /// the audit trail; the sequences replayed.
    async fn replay(
        &self,
        cell: &str,
        seqs: Option<Vec<u64>>,
        user: &str,
    ) -> anyhow::Result<Vec<u64>>;
}

/// The most dead letters a view shows.
pub const MAX_LETTERS: usize = 500;
/// The most audit events a view shows.
pub const MAX_RELEASES: usize = 200;

/// The most failed hops the flows view lists.
pub const MAX_FAILED_SHOWN: usize = 100;

/// Asks every host on `bus` for a flow, or for the latest failures.
async fn ask_flows(bus: &dyn BodyBus, correlation_id: Option<&str>) -> anyhow::Result<Flows> {
    let query = crate::flows::Query {
        correlation_id: correlation_id.map(str::to_owned),
        failed: correlation_id.is_none(),
        limit: correlation_id.is_none().then_some(MAX_FAILED_SHOWN),
        ..Default::default()
    };
    let mut hops = crate::flows::query(bus, &query, QUIET, LIMIT).await?;
    if correlation_id.is_none() {
        // The newest first, the newest hundred.
        hops.reverse();
        hops.truncate(MAX_FAILED_SHOWN);
    }
    Ok(Flows {
        at_ms: crate::unix_time::now_ms(),
        correlation_id: correlation_id.map(str::to_owned),
        hops,
    })
}

/// Replays dead letters `seqs` of `cell` (`None`: all, at most
/// [`super::actions::MAX_REPLAY`]) in order, stopping at the first that
/// fails: the sequences replayed, and that failure.
async fn replay_each(
    log: &dyn crate::durable::DurableLog,
    cell: &str,
    seqs: Option<Vec<u64>>,
) -> anyhow::Result<(Vec<u64>, Option<anyhow::Error>)> {
    let seqs = match seqs {
        Some(seqs) => seqs,
        None => log
            .dead_letters(cell)
            .await?
            .into_iter()
            .map(|(seq, _)| seq)
            .take(super::actions::MAX_REPLAY)
            .collect(),
    };
    let mut replayed = Vec::new();
    for seq in seqs {
        if let Err(e) = log.replay(cell, seq).await {
            return Ok((
                replayed,
                Some(e.context(format!("dead letter {seq} of {cell}"))),
            ));
        }
        replayed.push(seq);
    }
    Ok((replayed, None))
}

fn letters(cell: &str, all: Vec<(u64, crate::durable::DeadLetter)>) -> DeadLetters {
    let skip = all.len().saturating_sub(MAX_LETTERS);
    DeadLetters {
        at_ms: crate::unix_time::now_ms(),
        cell: cell.to_owned(),
        letters: all
            .into_iter()
            .skip(skip)
            .map(|(seq, letter)| Letter { seq, letter })
            .collect(),
    }
}

/// One host, in process (`cbs-host run --console`).
pub struct Local {
    host: String,
    body: Weak<Body>,
    /// When the host started (built its console), ms since the epoch.
    started_ms: u64,
}

impl Local {
    pub fn new(host: &str, body: &Arc<Body>) -> Self {
        Self {
            host: host.to_owned(),
            body: Arc::downgrade(body),
            started_ms: crate::unix_time::now_ms(),
        }
    }

    fn body(&self) -> anyhow::Result<Arc<Body>> {
        self.body
            .upgrade()
            .ok_or_else(|| anyhow::anyhow!("the host is shutting down"))
    }
}

#[async_trait]
impl Source for Local {
    async fn lattice(&self) -> anyhow::Result<Lattice> {
        let body = self.body()?;
        let hosts = vec![Host {
            id: self.host.clone(),
            started_ms: Some(self.started_ms),
            load_avg_1m: crate::machine::load_average_1m(),
            cells: body.cells().iter().map(|c| served(c)).collect(),
            ..Host::default()
        }];
        Ok(Lattice {
            at_ms: crate::unix_time::now_ms(),
            source: "in-process",
            cells: Lattice::cells_from(&hosts, BTreeMap::new()),
            hosts,
        })
    }

    async fn cell(&self, id: &str) -> anyhow::Result<Option<CellDetail>> {
        let Some(cell) = self.body()?.cell(id) else {
            return Ok(None);
        };
        let schema = |s: &Option<crate::contract::Schema>| s.as_ref().map(|s| s.value().clone());
        Ok(Some(CellDetail {
            at_ms: crate::unix_time::now_ms(),
            id: id.to_owned(),
            desired: None,
            hosts: vec![HostServing {
                host: self.host.clone(),
                served: served(&cell),
                latency: Some(cell.stats.latency_counts()),
            }],
            input: schema(&cell.contract.input),
            output: schema(&cell.contract.output),
            history: Vec::new(),
            rollout: None,
        }))
    }

    async fn dead_letters(&self, cell: &str) -> anyhow::Result<DeadLetters> {
        let all = self.body()?.durable().dead_letters(cell).await?;
        Ok(letters(cell, all))
    }

    async fn flows(&self, correlation_id: Option<&str>) -> anyhow::Result<Flows> {
        ask_flows(self.body()?.bus().as_ref(), correlation_id).await
    }

    /// One host has no audit trail: its log says who replayed what.
    async fn replay(
        &self,
        cell: &str,
        seqs: Option<Vec<u64>>,
        user: &str,
    ) -> anyhow::Result<Vec<u64>> {
        let log = self.body()?.durable().clone();
        let (replayed, failed) = replay_each(log.as_ref(), cell, seqs).await?;
        if !replayed.is_empty() {
            tracing::info!(%cell, %user, seqs = ?replayed, "dead letters replayed from the console");
        }
        failed.map_or(Ok(replayed), Err)
    }

    async fn releases(&self) -> anyhow::Result<Releases> {
        Ok(Releases {
            at_ms: crate::unix_time::now_ms(),
            ..Releases::default()
        })
    }
}

fn served(cell: &LoadedCell) -> Served {
    Served {
        cell: cell.manifest.id.clone(),
        version: cell.manifest.version.clone(),
        requests: cell.stats.requests(),
        errors: cell.stats.errors(),
        errors_by_code: cell
            .stats
            .errors_by_code()
            .map(|(code, n)| (code.as_str().to_owned(), n))
            .collect(),
        latency_us: cell.stats.recent_latency_us(),
        instances: cell.runner.instances() as u64,
        durable: cell.manifest.durable.as_ref().map(|_| cell.stats.durable()),
        workers: Some(cell.workers()),
        breakers: cell.breakers().into_iter().collect(),
        // A canary and a warm version come from the desired state of a
        // lattice.
        canary: None,
        warm: None,
        recording: cell.recording(),
    }
}

/// How long a discovery question waits: for quiet, and in all.
const QUIET: Duration = Duration::from_millis(150);
const LIMIT: Duration = Duration::from_secs(2);

/// A lattice over NATS (`cbs console`): the hosts' discovery answers,
/// the desired state, their recent flows and the audit trail.
pub struct Nats {
    bus: Arc<dyn BodyBus>,
    client: async_nats::Client,
    store: Store,
    /// The identity actions are audited as (the console's NATS user).
    writer: Option<crate::bus::nats::NatsOptions>,
    deployer: Deployer,
}

impl Nats {
    /// A lattice's console over `bus`; actions are audited as `writer`,
    /// and rollbacks signed with `rollback_key` when given.
    pub async fn connect(
        bus: NatsBus,
        writer: Option<crate::bus::nats::NatsOptions>,
        rollback_key: Option<crate::bundle::KeyPair>,
    ) -> anyhow::Result<Self> {
        let client = bus.client().clone();
        let store = Store::open(&client).await?;
        let deployer = Deployer::new(client.clone(), store.clone(), writer.clone(), rollback_key);
        Ok(Self {
            bus: Arc::new(bus),
            client,
            store,
            writer,
            deployer,
        })
    }

    /// Checks deployed consumers' expectations in `trial` before a deploy
    /// from the page.
    pub fn with_trial(mut self, trial: Arc<dyn crate::deploy::rollout::Trial>) -> Self {
        self.deployer = self.deployer.with_trial(trial);
        self
    }

    async fn hosts(&self) -> anyhow::Result<Vec<Host>> {
        let views = discovery::list(&self.client, QUIET, LIMIT).await?;
        Ok(views
            .into_iter()
            .map(|view| Host {
                labels: view.labels,
                watching: view.watching,
                started_ms: view.started_ms,
                nats_server: view.nats_server,
                load_avg_1m: view.load_avg_1m,
                cells: view.cells.iter().map(served_remote).collect(),
                id: view.host,
            })
            .collect())
    }

    /// Puts a replay from the console in the audit trail, with who asked.
    async fn audit_replay(&self, cell: &str, replayed: &[u64], user: &str) {
        let list: Vec<String> = replayed.iter().map(u64::to_string).collect();
        let change = crate::audit::Change {
            action: crate::audit::Action::Replay,
            cell,
            version: None,
            digest: None,
            key: None,
            proof: None,
            from: None,
            detail: format!(
                "{user} in the console replayed dead letter(s) {}",
                list.join(", ")
            ),
            contract: None,
        };
        crate::audit::record(&self.client, self.writer.as_ref(), change).await;
    }

    /// cell → (desired version, replicas wanted, why some are unplaced).
    async fn desired(
        &self,
    ) -> anyhow::Result<BTreeMap<String, (String, Option<u32>, Option<String>)>> {
        let mut desired: BTreeMap<_, _> = self
            .store
            .all_desired()
            .await?
            .into_iter()
            .map(|d| (d.cell, (d.current.version, d.current.replicas, None)))
            .collect();
        for placement in self.store.placements().await? {
            if let Some(row) = desired.get_mut(&placement.cell) {
                row.2 = placement.unplaced;
            }
        }
        Ok(desired)
    }
}

#[async_trait]
impl Source for Nats {
    fn deployer(&self) -> Option<&Deployer> {
        Some(&self.deployer)
    }

    async fn lattice(&self) -> anyhow::Result<Lattice> {
        let hosts = self.hosts().await?;
        Ok(Lattice {
            at_ms: crate::unix_time::now_ms(),
            source: "nats",
            cells: Lattice::cells_from(&hosts, self.desired().await?),
            hosts,
        })
    }

    async fn cell(&self, id: &str) -> anyhow::Result<Option<CellDetail>> {
        let views = discovery::list(&self.client, QUIET, LIMIT).await?;
        let desired = self.store.desired(id).await?;
        let mut detail = CellDetail {
            at_ms: crate::unix_time::now_ms(),
            id: id.to_owned(),
            history: desired.as_ref().map(history).unwrap_or_default(),
            rollout: desired.as_ref().and_then(|d| d.rollout_note()),
            desired: desired.map(|d| d.current.version),
            ..CellDetail::default()
        };
        for view in views {
            let Some(cell) = view.cells.iter().find(|c| c.id == id) else {
                continue;
            };
            // A route carries the schemas themselves; else their ids.
            let route = cell.http.first();
            detail.input = route
                .and_then(|r| r.input.clone())
                .or_else(|| cell.input_schema.clone().map(Into::into));
            detail.output = route
                .and_then(|r| r.output.clone())
                .or_else(|| cell.output_schema.clone().map(Into::into));
            detail.hosts.push(HostServing {
                host: view.host.clone(),
                served: served_remote(cell),
                latency: cell.latency.clone(),
            });
        }
        let known = !detail.hosts.is_empty() || detail.desired.is_some();
        Ok(known.then_some(detail))
    }

    async fn dead_letters(&self, cell: &str) -> anyhow::Result<DeadLetters> {
        let js = async_nats::jetstream::new(self.client.clone());
        Ok(letters(
            cell,
            crate::durable::dead_letters(&js, cell).await?,
        ))
    }

    async fn flows(&self, correlation_id: Option<&str>) -> anyhow::Result<Flows> {
        ask_flows(self.bus.as_ref(), correlation_id).await
    }

    async fn replay(
        &self,
        cell: &str,
        seqs: Option<Vec<u64>>,
        user: &str,
    ) -> anyhow::Result<Vec<u64>> {
        let log = JetStreamLog::new(async_nats::jetstream::new(self.client.clone()));
        let (replayed, failed) = replay_each(&log, cell, seqs).await?;
        // What was replayed is audited, also when a later one failed.
        if !replayed.is_empty() {
            self.audit_replay(cell, &replayed, user).await;
        }
        failed.map_or(Ok(replayed), Err)
    }

    async fn releases(&self) -> anyhow::Result<Releases> {
        let audit = crate::audit::Audit::open(&self.client).await?;
        let stored = audit.list(&crate::audit::Filter::default()).await?;
        let hosts: Vec<HostPolicy> = discovery::list(&self.client, QUIET, LIMIT)
            .await?
            .into_iter()
            .map(|view| HostPolicy {
                host: view.host,
                watching: view.watching,
                policy: view.policy,
            })
            .collect();
        // A release key is checked against the keys the lattice's hosts trust.
        let trust = crate::bundle::Trust::new(
            hosts
                .iter()
                .flat_map(|h| &h.policy.trusted_keys)
                .filter_map(|k| crate::bundle::PublicKey::from_hex(k).ok())
                .collect(),
        );
        let skip = stored.len().saturating_sub(MAX_RELEASES);
        let events = stored
            .into_iter()
            .skip(skip)
            .rev()
            .map(|s| {
                let check = crate::audit::proof::check(&s.event, s.stored_ms, &trust);
                Release {
                    stored_ms: s.stored_ms,
                    check: check.name(),
                    problems: check.problems().to_vec(),
                    event: s.event,
                }
            })
            .collect();
        Ok(Releases {
            at_ms: crate::unix_time::now_ms(),
            events,
            hosts,
        })
    }
}

/// A cell's releases, the desired one first.
fn history(desired: &crate::deploy::Desired) -> Vec<VersionRow> {
    let row = |release: &crate::deploy::Release, current| VersionRow {
        version: release.version.clone(),
        digest: release.digest.clone(),
        signer: release.signer.clone(),
        deployed_at_ms: release.deployed_at_ms,
        replicas: release.replicas,
        current,
    };
    std::iter::once(row(&desired.current, true))
        .chain(desired.history.iter().map(|r| row(r, false)))
        .collect()
}

fn served_remote(cell: &discovery::CellView) -> Served {
    Served {
        cell: cell.id.clone(),
        version: cell.version.clone(),
        requests: cell.requests,
        errors: cell.errors,
        errors_by_code: cell.errors_by_code.clone(),
        latency_us: cell.latency_us,
        instances: cell.instances,
        durable: cell.durable,
        workers: cell.workers,
        breakers: cell.breakers.clone(),
        canary: cell.canary.clone(),
        warm: cell.warm.clone(),
        recording: cell.recording.is_some(),
    }
}
