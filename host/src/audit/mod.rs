//! The audit trail: every deploy, rollback and undeploy, and every watching
//! host's trust list, as an event in the JetStream stream `CBS_AUDIT`
//! (subject `cbs-audit.<action>.<cell>`), listed by `cbs audit`.
//!
//! An event names the NATS identity the writer used (`user`), its
//! connection (`client`), and the key that signed the bundle or the
//! rollback (`key`). What a writer says is only claimed; [`proof`] makes
//! it verifiable: the writer signs the event with its NATS user's nkey,
//! the release key's own signature comes along, and the server's time of
//! storing it is what `cbs audit` shows. Grant publishing on `cbs-audit.>`
//! to deployers and hosts only (docs/security.md).

mod change;
pub mod proof;

pub use change::{record, Change};

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

pub const STREAM: &str = "CBS_AUDIT";
const SUBJECTS: &str = "cbs-audit.>";
/// Events are kept a year.
const MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What was done.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Action {
    Deploy,
    Rollback,
    Undeploy,
    /// A host started following the desired state with this trust list.
    Trust,
    /// Dead letters published again (from the console).
    Replay,
    /// A canary promoted or reverted, with why.
    Canary,
    /// A release refused by the lattice policy (by the deployer or a
    /// host), with the rules it breaks.
    Refuse,
    /// A release let past a gate or the policy by a second key's
    /// signature (`cbs deploy --force --force-key`).
    Force,
    /// A lattice policy set, or adopted or ignored by a host.
    Policy,
}

/// One audited change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub action: Action,
    /// The cell, or `*` for a host-wide change (trust).
    pub cell: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `sha256:<hex>` of the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The NATS identity the writer connected with: a user name, an nkey
    /// or a JWT's public key, or `anonymous`.
    pub user: String,
    /// The connection as the server named it: `<client id>@<address>`.
    pub client: String,
    /// The key that signed what was deployed or rolled back to (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Free text: the trust list, the version left, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A rollback's digest left (what its grant signs, with `digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A deploy's contract against the release before it (older events
    /// have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<crate::contract::diff::ContractDiff>,
    /// `key`'s signature (hex) over what was deployed: the bundle digest,
    /// or a rollback grant's step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// The writer's signature over the rest of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<proof::WriterSignature>,
}

/// An event as the stream holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub event: Event,
    /// When the server stored it (ms since the Unix epoch): no writer
    /// chooses this.
    pub stored_ms: u64,
}

impl Event {
    fn subject(&self) -> String {
        let cell = if self.cell == "*" { "all" } else { &self.cell };
        format!("cbs-audit.{}.{cell}", self.action)
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub action: Option<Action>,
    pub cell: Option<String>,
}

impl Filter {
    fn subject(&self) -> String {
        let action = self.action.map_or("*".to_owned(), |a| a.to_string());
        let cell = self.cell.as_deref().unwrap_or(">");
        format!("cbs-audit.{action}.{cell}")
    }
}

/// The audit stream.
pub struct Audit {
    js: jetstream::Context,
    stream: stream::Stream,
}

impl Audit {
    /// Opens the stream, creating it when missing.
    pub async fn open(client: &async_nats::Client) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECTS.to_owned()],
            max_age: MAX_AGE,
            // An audit trail is appended to, never edited.
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        let stream = js.get_or_create_stream(config).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot open the audit stream {STREAM}: {e}; is JetStream enabled on the server (`nats-server -js`)?"
            )
        })?;
        Ok(Self { js, stream })
    }

    /// Appends an event and waits until JetStream stored it.
    pub async fn record(&self, event: &Event) -> anyhow::Result<()> {
        let ack = self
            .js
            .publish(event.subject(), serde_json::to_vec(event)?.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the audit event: {e}"))?;
        ack.await
            .map_err(|e| anyhow::anyhow!("the audit event was not stored: {e}"))?;
        Ok(())
    }

    /// Every event that matches `filter`, oldest first.
    pub async fn list(&self, filter: &Filter) -> anyhow::Result<Vec<Stored>> {
        let consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.subject(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the audit stream: {e}"))?;
        let pending = consumer.cached_info().num_pending;
        let mut events = Vec::new();
        let mut left = pending;
        while left > 0 {
            let mut batch = consumer
                .fetch()
                .max_messages(left.min(1000) as usize)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("cannot read the audit stream: {e}"))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message =
                    message.map_err(|e| anyhow::anyhow!("cannot read the audit stream: {e}"))?;
                got += 1;
                let stored_ms = message.info().map_or(0, |info| {
                    u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
                });
                match serde_json::from_slice(&message.payload) {
                    Ok(event) => events.push(Stored { event, stored_ms }),
                    Err(e) => {
                        tracing::warn!(subject = %message.subject, error = %e, "ignoring an invalid audit event")
                    }
                }
            }
            if got == 0 {
                break;
            }
            left = left.saturating_sub(got);
        }
        Ok(events)
    }
}

/// `<client id>@<address>` of a connection, as its server reported it.
pub fn client_of(client: &async_nats::Client) -> String {
    let info = client.server_info();
    format!("{}@{}", info.client_id, info.client_ip)
}
