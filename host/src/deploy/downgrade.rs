//! Downgrade protection for hosts that require signed bundles.
//!
//! A signature says who built a bundle, not that it should run *now*: with
//! signatures alone, anyone who can write the desired-state bucket could
//! point every host back at an older signed release with a known bug. So a
//! host with `--trust` moves a cell it serves only forward (a greater
//! semver version); going back, or to another build of the same version,
//! needs a [`RollbackGrant`]: a trusted key's signature over exactly that
//! step (cell, served digest → new digest), made by `cbs rollback --sign`.
//!
//! What "served" means outlives serving: a host compares with the release
//! it last installed of the cell, even after `cbs undeploy` or a restart
//! ([`super::served`]). A host that never served the cell, anywhere in
//! the lattice, takes the desired release as it is.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::bundle::{KeyPair, Trust};

/// A deployer's consent to one step back: from `from` to the release it is
/// attached to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackGrant {
    /// `sha256:<hex>` of the bundle being left.
    pub from: String,
    /// Hex public key.
    pub signer: String,
    /// Hex ed25519 signature of [`message`].
    pub signature: String,
}

impl RollbackGrant {
    /// Signs the step of `cell` from digest `from` to digest `to`.
    pub fn sign(key: &KeyPair, cell: &str, from: &str, to: &str) -> Self {
        Self {
            from: from.to_owned(),
            signer: key.public().to_hex(),
            signature: key.sign(&message(cell, from, to)),
        }
    }
}

/// What a grant signs; the prefix keeps it from ever being a bundle digest.
pub fn message(cell: &str, from: &str, to: &str) -> Vec<u8> {
    format!("cbs-rollback-v1\n{cell}\n{from}\n{to}").into_bytes()
}

/// What a host serves (or served) of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub version: String,
    pub digest: String,
}

/// Checks the step from `served` to the bundle `to` (version, digest): a
/// greater version passes; anything else needs a grant for exactly this
/// step, signed by a trusted key.
pub fn check(
    trust: &Trust,
    cell: &str,
    served: &Served,
    to: &Served,
    grant: Option<&RollbackGrant>,
) -> anyhow::Result<()> {
    if served.digest == to.digest || is_upgrade(&served.version, &to.version) {
        return Ok(());
    }
    let Some(grant) = grant else {
        bail!(
            "refusing to move cell {cell} from {} back to {}: this host requires signed \
             releases (--trust), and going back needs a rollback signed by a trusted key \
             (`cbs rollback {cell} --sign KEY`)",
            served.version,
            to.version
        );
    };
    if grant.from != served.digest {
        bail!(
            "the rollback of cell {cell} is signed for leaving {}, but this host serves {} ({})",
            grant.from,
            served.digest,
            served.version
        );
    }
    trust
        .verify(
            &grant.signer,
            &message(cell, &grant.from, &to.digest),
            &grant.signature,
        )
        .with_context(|| format!("the rollback of cell {cell} is not valid"))
}

/// Whether `to` is a greater semver version than `from`. Versions that are
/// not semver cannot be ordered and never count as an upgrade.
pub(crate) fn is_upgrade(from: &str, to: &str) -> bool {
    match (semver::Version::parse(from), semver::Version::parse(to)) {
        (Ok(from), Ok(to)) => to > from,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(version: &str, digest: &str) -> Served {
        Served {
            version: version.into(),
            digest: digest.into(),
        }
    }

    fn setup() -> (KeyPair, Trust) {
        let key = KeyPair::generate().unwrap();
        let trust = Trust::new(vec![key.public()]);
        (key, trust)
    }

    #[test]
    fn a_greater_version_needs_no_grant() {
        let (_, trust) = setup();
        check(
            &trust,
            "a.b",
            &served("1.2.0", "d1"),
            &served("1.10.0", "d2"),
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_lower_or_equal_or_unordered_version_needs_a_grant() {
        let (_, trust) = setup();
        for (from, to) in [
            ("1.2.0", "1.1.9"),
            ("1.2.0", "1.2.0"),
            ("1", "2"),
            ("1.0.0", "x"),
        ] {
            let err = check(&trust, "a.b", &served(from, "d1"), &served(to, "d2"), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cbs rollback a.b --sign"),
                "{from}→{to}: {err}"
            );
        }
    }

    #[test]
    fn a_grant_allows_exactly_its_step() {
        let (key, trust) = setup();
        let grant = RollbackGrant::sign(&key, "a.b", "d2", "d1");
        let (now, back) = (served("2.0.0", "d2"), served("1.0.0", "d1"));
        check(&trust, "a.b", &now, &back, Some(&grant)).unwrap();
        // Another cell, another target, another starting point: refused.
        assert!(check(&trust, "a.c", &now, &back, Some(&grant)).is_err());
        assert!(check(&trust, "a.b", &now, &served("0.9.0", "d0"), Some(&grant)).is_err());
        assert!(check(&trust, "a.b", &served("3.0.0", "d3"), &back, Some(&grant)).is_err());
    }

    #[test]
    fn a_grant_by_an_untrusted_key_is_refused() {
        let (_, trust) = setup();
        let stranger = KeyPair::generate().unwrap();
        let grant = RollbackGrant::sign(&stranger, "a.b", "d2", "d1");
        let err = check(
            &trust,
            "a.b",
            &served("2.0.0", "d2"),
            &served("1.0.0", "d1"),
            Some(&grant),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("not one this host trusts"),
            "{err:#}"
        );
    }
}
