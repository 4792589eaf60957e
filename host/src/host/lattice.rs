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
        let me = HostInfo {
            id: host_id.to_owned(),
            labels: lattice.labels.clone(),
            memory_mb: lattice.capacity_memory_mb,
            at_ms: 0,
            load: Default::default(),
        };
        let weak = Arc::downgrade(body);
        let load = Arc::new(move || weak.upgrade().map(|b| b.loads()).unwrap_or_default());
        let placer = Placer::new(Store::open(&lattice.client).await?, me).with_load(load);
        let watcher = Arc::new(Watcher::new(
            body.clone(),
            store,
            host_id.to_owned(),
            lattice.labels,
            lattice.grace,
            Record::open(data_dir)?,
        ));
        Ok(Self {
            placing: tokio::spawn(placer.run()),
            watching: tokio::spawn(watcher.clone().run()),
            watcher,
        })
    }

    /// Stops placing and following, and withdraws this host's status.
    pub(super) async fn stop(self) {
        self.placing.abort();
        self.watching.abort();
        self.watcher.clear().await;
    }
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
