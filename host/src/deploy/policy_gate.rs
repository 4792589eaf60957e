//! The deployer's check of a release against the lattice policy, before
//! anything is written. Hosts check again before they serve
//! ([`crate::policy::enforcer`]); this check saves a round trip and says
//! why in the deployer's terminal.

use std::fmt;

use crate::policy::check::{self, Candidate, Finding};
use crate::policy::store::PolicyStore;
use crate::policy::Waiver;

/// A release the lattice policy refuses: the rules it breaks.
#[derive(Debug)]
pub struct Refusal {
    pub cell: String,
    pub policy_version: u64,
    pub broken: Vec<Finding>,
    /// Why `--force` did not help, when it was given.
    pub force: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is refused by the lattice policy v{}:",
            self.cell, self.policy_version
        )?;
        for finding in &self.broken {
            write!(f, "\n  {finding}")?;
        }
        match &self.force {
            Some(why) => write!(f, "\n{why}"),
            None => write!(f, "\nchange the cell, or ask a [force] signer of the policy for a second signature (--force --force-key KEY)"),
        }
    }
}

impl std::error::Error for Refusal {}

/// What the policy says of a deploy: nothing when there is none, notes
/// when it holds but was passed by a second signature or is not validly
/// signed (hosts then ignore it too), a [`Refusal`] when it forbids it.
/// `force` and `waiver` are the deployer's `--force` and `--force-key`.
pub async fn check(
    policies: &PolicyStore,
    candidate: &Candidate<'_>,
    force: bool,
    waiver: Option<&Waiver>,
) -> anyhow::Result<Vec<String>> {
    let (bundle, manifest) = (candidate.bundle, candidate.manifest);
    let Some(stored) = policies.get().await? else {
        return Ok(Vec::new());
    };
    let verified = stored
        .policy
        .map_err(anyhow::Error::msg)
        .and_then(|signed| signed.verify_signature());
    let policy = match verified {
        Ok(policy) => policy,
        Err(e) => {
            return Ok(vec![format!(
                "the lattice policy is not validly signed, so hosts ignore it and it was not checked: {e:#}"
            )])
        }
    };
    let (cell, digest) = (&manifest.id, bundle.digest());
    let waived = waiver.map(|w| w.check(&policy, cell, &digest, bundle.signer()));
    let refuse = |broken, force| Refusal {
        cell: cell.clone(),
        policy_version: policy.version,
        broken,
        force,
    };
    match (&waived, force) {
        (Some(Err(e)), _) => return Err(refuse(Vec::new(), Some(format!("{e:#}"))).into()),
        (None, true) => {
            return Err(refuse(
                Vec::new(),
                Some(format!(
                    "--force needs a second signature while policy v{} holds: add --force-key KEY (a [force] signer other than the bundle's)",
                    policy.version
                )),
            )
            .into())
        }
        _ => {}
    }
    let broken = check::violations(&policy, candidate);
    match (broken.is_empty(), waived) {
        (true, _) => Ok(Vec::new()),
        (false, Some(Ok(()))) => {
            let list: Vec<String> = broken.iter().map(ToString::to_string).collect();
            Ok(vec![format!(
                "passes policy v{} only by the --force signature: {}",
                policy.version,
                list.join("; ")
            )])
        }
        (false, _) => Err(refuse(broken, None).into()),
    }
}
