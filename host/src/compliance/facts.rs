//! What the compliance checks look at, read from the lattice once: the
//! policy, the live hosts' heartbeats, every desired release with its
//! bundle and its hosts' reports, the audit stream's settings and the
//! dead letters.

use async_nats::jetstream;

use crate::bundle::Bundle;
use crate::deploy::placement::HostInfo;
use crate::deploy::{Release, Status, Store};
use crate::manifest::Manifest;
use crate::policy::store::PolicyStore;
use crate::policy::SignedPolicy;
use crate::unix_time::now_ms;

/// A heartbeat at most this old is a live host's (they beat every 500 ms).
const LIVE_MS: u64 = 5_000;

pub struct Facts {
    /// The stored policy (or why it is unreadable), if any.
    pub policy: Option<Result<SignedPolicy, String>>,
    /// Live hosts, by id.
    pub hosts: Vec<HostInfo>,
    pub releases: Vec<Served>,
    /// The audit stream's settings, or why there are none.
    pub audit: Result<jetstream::stream::Config, String>,
    /// Dead letters kept, if the stream exists.
    pub dead_letters: Option<DeadLetters>,
}

/// A release the desired state asks for.
pub struct Served {
    pub cell: String,
    /// `current`, `canary` or `kept major`.
    pub role: &'static str,
    pub release: Release,
    /// Its bundle's `cell.toml` and the bundle, or why they are unreadable.
    pub bundle: Result<(Bundle, Manifest), String>,
    /// Its hosts' reports on the cell.
    pub statuses: Vec<Status>,
}

pub struct DeadLetters {
    pub messages: u64,
    /// When the oldest was stored, ms since the Unix epoch.
    pub oldest_ms: u64,
}

impl Facts {
    pub async fn read(client: &async_nats::Client) -> anyhow::Result<Self> {
        let store = Store::open(client).await?;
        let policy = PolicyStore::open(client)
            .await?
            .get()
            .await?
            .map(|s| s.policy);
        let now = now_ms();
        let mut hosts: Vec<HostInfo> = store
            .heartbeats()
            .await?
            .into_iter()
            .filter(|h| now.saturating_sub(h.at_ms) <= LIVE_MS)
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        let statuses = store.statuses().await?;
        let mut releases = Vec::new();
        for desired in store.all_desired().await? {
            let of_cell: Vec<Status> = statuses
                .iter()
                .filter(|s| s.cell == desired.cell)
                .cloned()
                .collect();
            let mut wanted = vec![("current", desired.current.clone())];
            wanted.extend(desired.canary.iter().map(|c| ("canary", c.release.clone())));
            wanted.extend(desired.beside.iter().map(|r| ("kept major", r.clone())));
            for (role, release) in wanted {
                releases.push(Served {
                    cell: desired.cell.clone(),
                    role,
                    bundle: bundle_of(&store, &release).await,
                    release,
                    statuses: of_cell.clone(),
                });
            }
        }
        let js = jetstream::new(client.clone());
        Ok(Self {
            policy,
            hosts,
            releases,
            audit: stream_config(&js, crate::audit::STREAM).await,
            dead_letters: dead_letters(&js).await,
        })
    }
}

async fn bundle_of(store: &Store, release: &Release) -> Result<(Bundle, Manifest), String> {
    let bundle = store
        .get_bundle(release)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let manifest = bundle.cell_manifest().map_err(|e| format!("{e:#}"))?;
    Ok((bundle, manifest))
}

async fn stream_config(
    js: &jetstream::Context,
    name: &str,
) -> Result<jetstream::stream::Config, String> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("no stream {name}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    Ok(info.config.clone())
}

async fn dead_letters(js: &jetstream::Context) -> Option<DeadLetters> {
    let mut stream = js.get_stream(crate::durable::DLQ_STREAM).await.ok()?;
    let state = &stream.info().await.ok()?.state;
    let oldest_ms =
        u64::try_from(state.first_timestamp.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    Some(DeadLetters {
        messages: state.messages,
        oldest_ms,
    })
}
