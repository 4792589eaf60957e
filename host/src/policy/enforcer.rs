//! A watching host's copy of the lattice policy, and its check before it
//! serves a release. The host adopts a policy only when a key it trusts
//! for policies signed it and its version is above the one it holds; it
//! keeps the one it adopted in its data folder, so a restart, or a
//! deleted or replaced bucket value, never leaves it without one. What
//! belongs in the audit trail (refusals, releases let pass by a second
//! signature, policies adopted or ignored) it hands to a [`Notify`] the
//! host gives it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::check::{self, Candidate};
use super::store::PolicyStore;
use super::{Policy, SignedPolicy, Waiver};
use crate::bundle::Trust;

/// File in the data folder that keeps the adopted policy.
const KEPT: &str = "policy.json";

/// Which policy a host holds, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: u64,
    /// `sha256:<hex>` of the policy's text.
    pub digest: String,
    pub signer: String,
}

/// What the enforcer did that belongs in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noticed {
    /// A release refused.
    Refused,
    /// A release that breaks the policy let pass by a second signature.
    Forced,
    /// A policy adopted or ignored.
    Policy,
}

/// One thing for the audit trail: of a release (`bundle` is its cell,
/// version, digest, signer and signature) or of the host (`bundle` none).
pub struct Notice {
    pub what: Noticed,
    pub bundle: Option<Named>,
    pub detail: String,
}

/// The release a notice is about, as its bundle names it.
pub struct Named {
    pub cell: String,
    pub version: String,
    pub digest: String,
    pub signer: Option<String>,
    pub signature: Option<String>,
}

/// Where notices go; waited for, so a refusal is recorded before the
/// host reports it.
pub type Notify = Arc<dyn Fn(Notice) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct Enforcer {
    /// Keys a policy must be signed by.
    trust: Trust,
    kept: Option<PathBuf>,
    held: RwLock<Option<Held>>,
    notify: Option<Notify>,
    /// This host's tenant rate buckets, set from each policy adopted.
    tenants: Option<Arc<crate::quota::Tenants>>,
}

#[derive(Clone)]
struct Held {
    policy: Arc<Policy>,
    signed: SignedPolicy,
}

impl Enforcer {
    /// Trusts policies signed by `trust`; keeps the adopted one in
    /// `data_dir` (and starts from the one kept there, checked again).
    pub fn new(trust: Trust, data_dir: Option<PathBuf>, notify: Option<Notify>) -> Self {
        let kept = data_dir.map(|d| d.join(KEPT));
        let held = kept.as_ref().and_then(|path| read_kept(path, &trust));
        Self {
            trust,
            kept,
            held: RwLock::new(held),
            notify,
            tenants: None,
        }
    }

    /// Sets `tenants`' rates from the policy held, and from each adopted.
    pub fn with_tenants(mut self, tenants: Arc<crate::quota::Tenants>) -> Self {
        if let Some(held) = self.held.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            tenants.set(held.policy.rate_limits());
        }
        self.tenants = Some(tenants);
        self
    }

    /// Whether any key is trusted for policies.
    pub fn trusts_any(&self) -> bool {
        !self.trust.is_empty()
    }

    /// The policy held, if any.
    pub fn mark(&self) -> Option<Mark> {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.as_ref().map(|h| Mark {
            version: h.signed.version,
            digest: h.signed.digest(),
            signer: h.signed.signer.clone(),
        })
    }

    /// Adopts `signed` when it is trusted and newer than the policy held;
    /// `Ok(false)` when it is the one held; why not otherwise.
    pub fn offer(&self, signed: &SignedPolicy) -> anyhow::Result<bool> {
        let policy = signed.verify(&self.trust)?;
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = held.as_ref() {
            if now.signed.version == signed.version && now.signed.digest() == signed.digest() {
                return Ok(false);
            }
            if now.signed.version >= signed.version {
                anyhow::bail!(
                    "policy v{} is not newer than v{} held: a host never goes back to an older policy",
                    signed.version,
                    now.signed.version
                );
            }
        }
        if let Some(path) = &self.kept {
            keep(path, signed)?;
        }
        if let Some(tenants) = &self.tenants {
            tenants.set(policy.rate_limits());
        }
        *held = Some(Held {
            policy: Arc::new(policy),
            signed: signed.clone(),
        });
        Ok(true)
    }

    /// Refuses a release the policy held forbids, unless a `[force]`
    /// signer other than its author waived it; audits each refusal.
    pub async fn admit(&self, c: &Candidate<'_>, waiver: Option<&Waiver>) -> anyhow::Result<()> {
        let Some(held) = self.held.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let broken = check::violations(&held.policy, c);
        if broken.is_empty() {
            return Ok(());
        }
        let (cell, digest) = (&c.manifest.id, c.bundle.digest());
        let listed: Vec<String> = broken.iter().map(ToString::to_string).collect();
        let what = format!(
            "refused by the lattice policy v{}: {}",
            held.signed.version,
            listed.join("; ")
        );
        let waived = waiver.map(|w| w.check(&held.policy, cell, &digest, c.bundle.signer()));
        match waived {
            Some(Ok(())) => {
                let by = waiver.map_or("", |w| w.signer.as_str());
                self.notice(
                    Noticed::Forced,
                    c,
                    format!("{what}; passed by the --force signature of {by}"),
                )
                .await;
                Ok(())
            }
            Some(Err(e)) => {
                let what = format!("{what}; {e:#}");
                self.notice(Noticed::Refused, c, what.clone()).await;
                Err(anyhow::anyhow!(what))
            }
            None => {
                self.notice(Noticed::Refused, c, what.clone()).await;
                Err(anyhow::anyhow!(what))
            }
        }
    }

    async fn notice(&self, what: Noticed, c: &Candidate<'_>, detail: String) {
        let Some(notify) = &self.notify else { return };
        let bundle = Named {
            cell: c.manifest.id.clone(),
            version: c.manifest.version.clone(),
            digest: c.bundle.digest(),
            signer: c.bundle.signer().map(str::to_owned),
            signature: c.bundle.signature().map(str::to_owned),
        };
        notify(Notice {
            what,
            bundle: Some(bundle),
            detail,
        })
        .await;
    }

    /// Follows the lattice's policy until the task is dropped: adopts each
    /// trusted newer one, logs and audits the others once each.
    pub async fn follow(self: Arc<Self>, store: PolicyStore) {
        loop {
            match store.watch().await {
                Ok(mut changes) => {
                    while let Some(entry) = changes.next().await {
                        match entry {
                            Ok(entry)
                                if entry.operation == async_nats::jetstream::kv::Operation::Put =>
                            {
                                self.consider(SignedPolicy::from_slice(&entry.value)).await
                            }
                            Ok(_) => tracing::warn!(
                                "the lattice policy was deleted; this host keeps the one it holds"
                            ),
                            Err(e) => tracing::warn!(error = %e, "policy watch error"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the lattice policy; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Adopts the lattice's policy as it is now: before the host serves
    /// anything, so no release is checked against none while it is read.
    pub async fn catch_up(&self, store: &PolicyStore) {
        match store.get().await {
            Ok(Some(stored)) => {
                self.consider(stored.policy.map_err(anyhow::Error::msg))
                    .await
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the lattice policy; following it")
            }
        }
    }

    async fn consider(&self, offered: anyhow::Result<SignedPolicy>) {
        let offered = offered.and_then(|signed| {
            let adopted = self.offer(&signed)?;
            Ok((signed, adopted))
        });
        match offered {
            Ok((signed, true)) => {
                tracing::info!(version = signed.version, signer = %check::short(&signed.signer), "lattice policy adopted");
                self.note(format!(
                    "adopted policy v{} ({})",
                    signed.version,
                    signed.digest()
                ))
                .await;
            }
            Ok((_, false)) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "lattice policy ignored");
                self.note(format!("ignored a policy: {e:#}")).await;
            }
        }
    }

    async fn note(&self, detail: String) {
        let Some(notify) = &self.notify else { return };
        notify(Notice {
            what: Noticed::Policy,
            bundle: None,
            detail,
        })
        .await;
    }
}

/// The policy kept in the data folder, if it is still trusted.
fn read_kept(path: &std::path::Path, trust: &Trust) -> Option<Held> {
    let bytes = std::fs::read(path).ok()?;
    let kept = SignedPolicy::from_slice(&bytes).and_then(|signed| {
        let policy = signed.verify(trust)?;
        Ok(Held {
            policy: Arc::new(policy),
            signed,
        })
    });
    match kept {
        Ok(held) => Some(held),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "the kept policy is not trusted; waiting for the lattice's");
            None
        }
    }
}

fn keep(path: &std::path::Path, signed: &SignedPolicy) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(signed)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::KeyPair;

    #[test]
    fn a_host_adopts_only_trusted_newer_policies_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let platform = KeyPair::generate().unwrap();
        let trust = Trust::new(vec![platform.public()]);
        let enforcer = Enforcer::new(trust.clone(), Some(dir.path().into()), None);
        let v2 = SignedPolicy::sign("version = 2\n", &platform).unwrap();
        assert!(enforcer.offer(&v2).unwrap());
        assert!(!enforcer.offer(&v2).unwrap(), "the same one again");
        let v1 = SignedPolicy::sign("version = 1\n", &platform).unwrap();
        let err = format!("{:#}", enforcer.offer(&v1).unwrap_err());
        assert!(err.contains("not newer"), "{err}");
        let stranger = SignedPolicy::sign("version = 3\n", &KeyPair::generate().unwrap()).unwrap();
        assert!(enforcer.offer(&stranger).is_err());
        assert_eq!(enforcer.mark().unwrap().version, 2);
        let restarted = Enforcer::new(trust, Some(dir.path().into()), None);
        assert_eq!(
            restarted.mark().unwrap().version,
            2,
            "kept in the data folder"
        );
        let distrusting = Enforcer::new(Trust::default(), Some(dir.path().into()), None);
        assert!(distrusting.mark().is_none());
    }
}
