//! Following the lattice's desired state: the placer (heartbeats, leases,
//! which replicas this host takes) and the watcher (serving and swapping
//! what is placed here), started and stopped together.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::audit::{self, Action, Change};
use crate::body::Body;
use crate::bus::nats::NatsOptions;
use crate::deploy::placement::HostInfo;
use crate::deploy::placer::Placer;
use crate::deploy::served::Record;
use crate::deploy::watcher::Watcher;
use crate::deploy::Store;
use crate::policy::enforcer::{Notice, Noticed, Notify};
use crate::policy::store::PolicyStore;
use crate::policy::Enforcer;

/// How a host takes part in a lattice (`cbs-host run --watch`).
pub struct Lattice {
    /// The host's NATS connection, with JetStream.
    pub client: async_nats::Client,
    /// Labels replicas are placed by; see [`labels`].
    pub labels: BTreeMap<String, String>,
    /// Memory offered to placed replicas, MiB (`None`: unbounded).
    pub capacity_memory_mb: Option<u64>,
    /// How long a replaced or removed version's messages may take.
    pub grace: Duration,
    /// The identity the host's audit events are written as.
    pub writer: Option<NatsOptions>,
    /// Runs the domains' sagas (`--sagas`).
    pub sagas: bool,
    /// Keys a lattice policy must be signed by for this host to enforce it
    /// (`--policy-key`); empty: the keys it runs bundles from (`--trust`).
    pub policy_keys: crate::bundle::Trust,
}

/// `given` labels, and `platform=<this machine's>` unless one is given:
/// replicas of bundles with native code are placed by it.
pub fn labels(given: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<_, _> = given.into_iter().collect();
    labels
        .entry(crate::platform::LABEL.to_owned())
        .or_insert_with(crate::platform::current);
    labels
}

/// The placer and watcher of a running host.
pub(super) struct Following {
    watcher: Arc<Watcher>,
    policing: JoinHandle<()>,
    watching: JoinHandle<()>,
    placing: JoinHandle<()>,
}

impl Following {
    /// Records the host's trust list in the audit trail, then places and
    /// serves what the desired state asks of it. `data_dir` keeps the
    /// release last installed of each cell.
    pub(super) async fn start(
        body: &Arc<Body>,
        host_id: &str,
        data_dir: &Path,
        lattice: Lattice,
    ) -> anyhow::Result<Self> {
        let store = Store::open(&lattice.client).await?;
        record_trust(body, host_id, &lattice).await;
        let policy = enforcer(body, host_id, data_dir, &lattice);
        let policies = PolicyStore::open(&lattice.client).await?;
        policy.catch_up(&policies).await;
        let me = HostInfo {
            id: host_id.to_owned(),
            labels: lattice.labels.clone(),
            memory_mb: lattice.capacity_memory_mb,
            trust: body.trust().keys_hex(),
            nats_tls: uses_tls(&lattice),
            ..Default::default()
        };
        let weak = Arc::downgrade(body);
        let load = Arc::new(move || weak.upgrade().map(|b| b.loads()).unwrap_or_default());
        let placer = Placer::new(Store::open(&lattice.client).await?, me)
            .with_load(load)
            .with_policy(policy.clone());
        let watcher = Arc::new(Watcher::new(
            body.clone(),
            store,
            host_id.to_owned(),
            lattice.labels,
            lattice.grace,
            Record::open(data_dir)?,
            policy.clone(),
        ));
        Ok(Self {
            policing: tokio::spawn(policy.follow(policies)),
            placing: tokio::spawn(placer.run()),
            watching: tokio::spawn(watcher.clone().run()),
            watcher,
        })
    }

    /// Stops placing and following, and withdraws this host's status.
    pub(super) async fn stop(self) {
        self.policing.abort();
        self.placing.abort();
        self.watching.abort();
        self.watcher.clear().await;
    }
}

/// The host's copy of the lattice policy: trusted by `--policy-key`, else
/// by `--trust`; kept in the data folder; refusals audited as the host.
fn enforcer(body: &Body, host_id: &str, data_dir: &Path, lattice: &Lattice) -> Arc<Enforcer> {
    let trust = match lattice.policy_keys.is_empty() {
        true => body.trust().clone(),
        false => lattice.policy_keys.clone(),
    };
    if trust.is_empty() {
        tracing::warn!("no key is trusted for lattice policies (--policy-key or --trust): this host enforces none");
    }
    let (client, writer, host) = (
        lattice.client.clone(),
        lattice.writer.clone(),
        host_id.to_owned(),
    );
    let notify: Notify = Arc::new(move |notice: Notice| {
        let (client, writer, host) = (client.clone(), writer.clone(), host.clone());
        Box::pin(async move { audit_notice(&client, writer.as_ref(), &host, notice).await })
    });
    let enforcer = Enforcer::new(trust, Some(data_dir.to_owned()), Some(notify));
    Arc::new(enforcer.with_tenants(body.tenants().clone()))
}

/// Records what the host's policy check did, as the host.
async fn audit_notice(
    client: &async_nats::Client,
    writer: Option<&NatsOptions>,
    host: &str,
    notice: Notice,
) {
    let action = match notice.what {
        Noticed::Refused => Action::Refuse,
        Noticed::Forced => Action::Force,
        Noticed::Policy => Action::Policy,
    };
    let named = notice.bundle.as_ref();
    let change = Change {
        action,
        cell: named.map_or("*", |b| b.cell.as_str()),
        version: named.map(|b| b.version.as_str()),
        digest: named.map(|b| b.digest.as_str()),
        key: named.and_then(|b| b.signer.as_deref()),
        proof: named.and_then(|b| b.signature.as_deref()),
        from: None,
        detail: format!("host {host}: {}", notice.detail),
        contract: None,
    };
    audit::record(client, writer, change).await;
}

/// Whether the host's NATS connection is TLS: the server requires it, or
/// the host asked for it.
fn uses_tls(lattice: &Lattice) -> bool {
    let asked = lattice.writer.as_ref().is_some_and(|o| {
        o.tls_required
            || o.tls_ca.is_some()
            || o.urls.split(',').any(|u| u.trim().starts_with("tls://"))
    });
    asked || lattice.client.server_info().tls_required
}

/// Puts what this host will run in the audit trail: its trust list (or
/// that it has none) and whether bundles may start processes.
async fn record_trust(body: &Body, host_id: &str, lattice: &Lattice) {
    let keys = body.trust().keys_hex();
    let trusts = if keys.is_empty() {
        "no --trust: runs any deployer's bundle".to_owned()
    } else {
        format!("trusts {}", keys.join(", "))
    };
    let processes = if body.allows_process_bundles() {
        "process bundles allowed"
    } else {
        "wasm bundles only"
    };
    let change = Change {
        action: Action::Trust,
        cell: "*",
        version: None,
        digest: None,
        key: None,
        proof: None,
        from: None,
        detail: format!("host {host_id}: {trusts}; {processes}"),
        contract: None,
    };
    audit::record(&lattice.client, lattice.writer.as_ref(), change).await;
}
