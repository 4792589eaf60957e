//! Writing one change to the audit trail, as the deploy commands and a
//! watching host do: the writer's NATS identity, its connection, and, when
//! it connects with an nkey, its signature over the event.

use super::{client_of, proof, Action, Audit, Event};
use crate::bus::nats::NatsOptions;

/// What changed, as the writer knows it.
pub struct Change<'a> {
    pub action: Action,
    pub cell: &'a str,
    pub version: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub key: Option<&'a str>,
    /// `key`'s signature over what it signed (see [`proof`]).
    pub proof: Option<&'a str>,
    /// A rollback's digest left.
    pub from: Option<&'a str>,
    pub detail: String,
    /// A deploy's contract diff.
    pub contract: Option<crate::contract::diff::ContractDiff>,
}

/// Appends `change` to the audit trail over `client`, the connection made
/// with `writer` (`None`: an anonymous one). A change that happened but
/// could not be audited is logged as a warning, not undone.
pub async fn record(client: &async_nats::Client, writer: Option<&NatsOptions>, change: Change<'_>) {
    let mut event = Event {
        at_ms: crate::unix_time::now_ms(),
        action: change.action,
        cell: change.cell.to_owned(),
        version: change.version.map(str::to_owned),
        digest: change.digest.map(str::to_owned),
        user: writer.map_or_else(|| "anonymous".to_owned(), NatsOptions::identity),
        client: client_of(client),
        key: change.key.map(str::to_owned),
        detail: Some(change.detail).filter(|d| !d.is_empty()),
        from: change.from.map(str::to_owned),
        contract: change.contract,
        proof: change.proof.map(str::to_owned),
        writer: None,
    };
    if let Some(seed) = writer.and_then(NatsOptions::user_seed) {
        if let Err(e) = proof::sign_as_writer(&mut event, &seed) {
            tracing::warn!("the audit event is not signed: {e:#}");
        }
    }
    let stored = match Audit::open(client).await {
        Ok(audit) => audit.record(&event).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        tracing::warn!(
            "the {} of {} is not in the audit trail: {e:#}",
            change.action,
            change.cell
        );
    }
}
