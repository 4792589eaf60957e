//! What the lattice keeps of each domain (bucket `cbs-domains`, key = the
//! domain's name): the revision applied now — each cell's release, the
//! exports and uses — and the revisions before it, for `cbs rollback
//! --domain`.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use super::spec::Use;
use crate::bus::kv::{self as bucket, Limits};
use crate::deploy::Release;

/// The bucket of domains.
pub const DOMAINS: &str = "cbs-domains";
/// Revisions kept per domain for rollback.
const HISTORY: usize = 10;

/// One applied state of a domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// Counts up from 1 with each apply or rollback.
    pub revision: u64,
    /// The spec's `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub applied_at_ms: u64,
    /// Each cell's release, by cell id.
    pub cells: BTreeMap<String, Release>,
    #[serde(default)]
    pub exports: Vec<String>,
    #[serde(default)]
    pub uses: Vec<Use>,
    /// The spec's `trust_inside`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_inside: bool,
    /// Its sagas as of this revision (instances started on it keep them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sagas: Vec<crate::saga::def::Saga>,
}

/// A domain: its revision now and those before it, most recent first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    pub current: Revision,
    #[serde(default)]
    pub history: Vec<Revision>,
}

impl Domain {
    /// `revision` becomes current (numbered after the current one), the
    /// current one goes first in history.
    pub fn advance(previous: Option<Domain>, name: &str, mut revision: Revision) -> Self {
        let (number, history) = match previous {
            Some(p) => (
                p.current.revision + 1,
                std::iter::once(p.current)
                    .chain(p.history)
                    .take(HISTORY)
                    .collect(),
            ),
            None => (1, Vec::new()),
        };
        revision.revision = number;
        Self {
            name: name.to_owned(),
            current: revision,
            history,
        }
    }
}

/// The domains bucket, opened by deployers (hosts read it for the
/// boundaries).
#[derive(Clone)]
pub struct Domains {
    kv: kv::Store,
}

impl Domains {
    pub async fn open(client: &async_nats::Client) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        Ok(Self {
            kv: bucket::open(&js, DOMAINS, Limits::history(1)).await?,
        })
    }

    pub async fn get(&self, name: &str) -> anyhow::Result<Option<Domain>> {
        bucket::get_json(&self.kv, DOMAINS, name).await
    }

    pub async fn put(&self, domain: &Domain) -> anyhow::Result<()> {
        bucket::put_json(&self.kv, DOMAINS, &domain.name, domain).await
    }

    /// Every domain (an invalid entry is skipped with a warning).
    pub async fn all(&self) -> anyhow::Result<Vec<Domain>> {
        bucket::values(&self.kv).await
    }
}

#[async_trait::async_trait]
impl crate::saga::worker::Catalog for Domains {
    /// The saga in the domain's current revision.
    async fn saga(
        &self,
        domain: &str,
        saga: &str,
    ) -> anyhow::Result<Option<(u64, crate::saga::def::Saga)>> {
        let Some(d) = self.get(domain).await? else {
            return Ok(None);
        };
        let found = d.current.sagas.iter().find(|s| s.name == saga).cloned();
        Ok(found.map(|s| (d.current.revision, s)))
    }
}
