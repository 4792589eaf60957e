//! What the console changes in a lattice's releases: deploy an uploaded
//! bundle (after showing the contract gate's verdict), roll a cell back,
//! undeploy it. Each goes through the same rollout as the command line
//! (`deploy::rollout`), with the console's NATS credentials, and each goes
//! to the audit trail with the signed-in user who asked.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::audit::{self, Action, Change};
use crate::bundle::{Bundle, KeyPair};
use crate::bus::nats::NatsOptions;
use crate::contract::diff::ContractDiff;
use crate::deploy::rollout::{self, Consent, HostOutcome, Preview, Rolled, Trial};
use crate::deploy::Store;

/// How long an action waits for the hosts to confirm it.
pub const WAIT: Duration = Duration::from_secs(60);

/// The largest bundle the console takes as an upload. Bundles of native
/// or Python cells can be larger: deploy those with `cbs deploy`.
pub const MAX_UPLOAD: usize = 64 << 20;

/// An action's outcome, host by host, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Acted {
    /// `deploy`, `rollback` or `undeploy`.
    pub action: Action,
    pub cell: String,
    /// The version deployed, rolled back to, or undeployed.
    pub version: String,
    /// `serving`, `failed`, `timed_out`, `unplaced`; `stopped` or
    /// `pending` for an undeploy.
    pub result: &'static str,
    pub summary: String,
    pub hosts: Vec<HostOutcome>,
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractDiff>,
    pub by: String,
}

/// Deploys, rolls back and undeploys as the console's NATS identity.
pub struct Deployer {
    client: async_nats::Client,
    store: Store,
    writer: Option<NatsOptions>,
    /// Signs rollbacks, for hosts that require signed releases.
    key: Option<KeyPair>,
    /// Where consumers' expectations meet a new release before it goes out.
    trial: Option<Arc<dyn Trial>>,
}

impl Deployer {
    pub fn new(
        client: async_nats::Client,
        store: Store,
        writer: Option<NatsOptions>,
        key: Option<KeyPair>,
    ) -> Self {
        Self {
            client,
            store,
            writer,
            key,
            trial: None,
        }
    }

    /// Checks deployed consumers' expectations in `trial` before a deploy.
    pub fn with_trial(mut self, trial: Arc<dyn Trial>) -> Self {
        self.trial = Some(trial);
        self
    }

    /// What deploying `bytes` would meet: its cell, version, signer and the
    /// contract gate's verdict against what is deployed.
    pub async fn preview(&self, bytes: &[u8]) -> anyhow::Result<Preview> {
        rollout::preview(&self.store, &Bundle::from_bytes(bytes)?).await
    }

    /// Deploys `bytes` with the scale its cell has now (every watching host
    /// for a new cell); `force` lets a contract break within the major
    /// version through.
    pub async fn deploy(&self, bytes: &[u8], force: bool, user: &str) -> anyhow::Result<Acted> {
        let bundle = Bundle::from_bytes(bytes)?;
        let scale = match self.store.desired(&bundle.manifest.cell).await? {
            Some(current) => rollout::scale_of(&current.current),
            None => rollout::Scale::default(),
        };
        let consent = Consent {
            force,
            rollback: None,
            trial: self.trial.as_deref(),
            waiver: None,
            origin: None,
        };
        let rolled = rollout::deploy(
            &self.client,
            &self.store,
            &bundle,
            bytes,
            scale,
            consent,
            Some(WAIT),
        )
        .await?;
        let proof = (bundle.signer(), bundle.signature());
        let cell = &bundle.manifest.cell;
        Ok(self
            .audited(Action::Deploy, cell, rolled, proof, user)
            .await)
    }

    /// Makes the release before the current one of `cell` current again.
    pub async fn rollback(&self, cell: &str, user: &str) -> anyhow::Result<Acted> {
        let rolled = rollout::rollback(
            &self.client,
            &self.store,
            cell,
            self.key.as_ref(),
            Some(WAIT),
        )
        .await?;
        let grant = rolled.release.rollback.clone();
        let proof = grant
            .as_ref()
            .map(|g| (g.signer.as_str(), g.signature.as_str()));
        let proof = (proof.map(|p| p.0), proof.map(|p| p.1));
        Ok(self
            .audited(Action::Rollback, cell, rolled, proof, user)
            .await)
    }

    /// Stops `cell` on every host, waiting for each to confirm.
    pub async fn undeploy(&self, cell: &str, user: &str) -> anyhow::Result<Acted> {
        let Some(stopped) = rollout::undeploy(&self.store, cell, WAIT).await? else {
            anyhow::bail!("{cell} is not deployed");
        };
        let summary = rollout::stopped_summary(&stopped);
        let release = &stopped.release;
        self.record(Change {
            action: Action::Undeploy,
            cell,
            version: Some(&release.version),
            digest: Some(&release.digest),
            key: None,
            proof: None,
            from: None,
            detail: format!("{user} in the console: {summary}"),
            contract: None,
        })
        .await;
        let host = |host: &String, outcome| HostOutcome {
            host: host.clone(),
            outcome,
            error: None,
        };
        Ok(Acted {
            action: Action::Undeploy,
            cell: cell.to_owned(),
            version: release.version.clone(),
            result: if stopped.pending.is_empty() {
                "stopped"
            } else {
                "pending"
            },
            summary,
            hosts: (stopped.stopped.iter().map(|h| host(h, "stopped")))
                .chain(stopped.pending.iter().map(|h| host(h, "no_report")))
                .collect(),
            notes: Vec::new(),
            contract: None,
            by: user.to_owned(),
        })
    }

    /// Records a rollout in the audit trail with who asked, and says how
    /// it went on each host.
    async fn audited(
        &self,
        action: Action,
        cell: &str,
        rolled: Rolled,
        (key, proof): (Option<&str>, Option<&str>),
        user: &str,
    ) -> Acted {
        let Rolled {
            release,
            outcome,
            contract,
            notes,
        } = rolled;
        let summary = outcome.summary();
        self.record(Change {
            action,
            cell,
            version: Some(&release.version),
            digest: Some(&release.digest),
            key,
            proof,
            from: release.rollback.as_ref().map(|g| g.from.as_str()),
            detail: format!("{user} in the console: {summary}"),
            contract: contract.clone(),
        })
        .await;
        Acted {
            action,
            cell: cell.to_owned(),
            version: release.version,
            result: outcome.name(),
            summary,
            hosts: outcome.hosts(),
            notes,
            contract,
            by: user.to_owned(),
        }
    }

    async fn record(&self, change: Change<'_>) {
        audit::record(&self.client, self.writer.as_ref(), change).await;
    }
}
