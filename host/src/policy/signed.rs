//! A policy as the lattice holds it: its text, signed (`cbs policy set
//! --key`), and the second signature that lets one release past the
//! policy and the deploy gates (`cbs deploy --force --force-key`).

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::Policy;
use crate::bundle::{sha256_hex, KeyPair, PublicKey, Trust};

/// The policy in `cbs-policy`: its text as written, and who signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPolicy {
    /// The `policy.toml` itself (comments kept).
    pub text: String,
    /// The text's `version`, so a reader need not parse to order them.
    pub version: u64,
    /// Hex ed25519 public key.
    pub signer: String,
    /// Hex signature of [`message`] of the text.
    pub signature: String,
    /// When it was signed, ms since the Unix epoch.
    pub signed_at_ms: u64,
}

/// What a policy signature signs; the prefix keeps it from ever being a
/// bundle digest or a rollback grant.
fn message(text: &str) -> Vec<u8> {
    format!("cbs-policy-v1\n{text}").into_bytes()
}

impl SignedPolicy {
    /// Checks and signs `text`.
    pub fn sign(text: &str, key: &KeyPair) -> anyhow::Result<Self> {
        let policy = Policy::parse(text)?;
        Ok(Self {
            text: text.to_owned(),
            version: policy.version,
            signer: key.public().to_hex(),
            signature: key.sign(&message(text)),
            signed_at_ms: crate::unix_time::now_ms(),
        })
    }

    /// A stored value; bounded before it is parsed.
    pub fn from_slice(bytes: &[u8]) -> anyhow::Result<Self> {
        if bytes.len() > 2 * super::MAX_BYTES {
            bail!("a stored policy of {} bytes is too large", bytes.len());
        }
        serde_json::from_slice(bytes).context("not a stored policy")
    }

    /// `sha256:<hex>` of the text: which policy a host holds.
    pub fn digest(&self) -> String {
        format!("sha256:{}", sha256_hex(self.text.as_bytes()))
    }

    /// The policy, when a key of `trust` signed this text and its version
    /// is the one it says.
    pub fn verify(&self, trust: &Trust) -> anyhow::Result<Policy> {
        if trust.is_empty() {
            bail!("no key is trusted for policies");
        }
        trust
            .verify(&self.signer, &message(&self.text), &self.signature)
            .map_err(|e| anyhow::anyhow!("policy v{}: {e:#}", self.version))?;
        self.parsed()
    }

    /// The policy, when its own signer signed this text (the deployer's
    /// view: hosts decide which signers they trust).
    pub fn verify_signature(&self) -> anyhow::Result<Policy> {
        let key = PublicKey::from_hex(&self.signer).context("the policy names an invalid key")?;
        key.verify(&message(&self.text), &self.signature)
            .with_context(|| format!("policy v{} is not signed by its key", self.version))?;
        self.parsed()
    }

    fn parsed(&self) -> anyhow::Result<Policy> {
        let policy = Policy::parse(&self.text)?;
        if policy.version != self.version {
            bail!(
                "the policy says version {} but is stored as {}",
                policy.version,
                self.version
            );
        }
        Ok(policy)
    }
}

/// A second key's consent to one release passing a gate or the policy:
/// signed for exactly this cell and bundle digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiver {
    /// Hex public key.
    pub signer: String,
    /// Hex signature of [`waiver_message`].
    pub signature: String,
}

fn waiver_message(cell: &str, digest: &str) -> Vec<u8> {
    format!("cbs-force-v1\n{cell}\n{digest}").into_bytes()
}

impl Waiver {
    pub fn sign(key: &KeyPair, cell: &str, digest: &str) -> Self {
        Self {
            signer: key.public().to_hex(),
            signature: key.sign(&waiver_message(cell, digest)),
        }
    }

    /// Accepts the waiver when a `[force] signers` key of `policy` other
    /// than the bundle's signer signed it for this cell and digest.
    pub fn check(
        &self,
        policy: &Policy,
        cell: &str,
        digest: &str,
        bundle_signer: Option<&str>,
    ) -> anyhow::Result<()> {
        if bundle_signer == Some(self.signer.as_str()) {
            bail!("the --force key is the key that signed the bundle: a second person's key is needed");
        }
        let keys = policy
            .force
            .signers
            .iter()
            .filter_map(|k| PublicKey::from_hex(k).ok())
            .collect();
        if policy.force.signers.is_empty() {
            bail!(
                "policy v{} lets no key force a release ([force] signers is empty)",
                policy.version
            );
        }
        Trust::new(keys)
            .verify(&self.signer, &waiver_message(cell, digest), &self.signature)
            .map_err(|e| anyhow::anyhow!("the --force signature is refused: {e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(key: &KeyPair) -> Trust {
        Trust::new(vec![key.public()])
    }

    #[test]
    fn a_policy_verifies_only_with_its_text_and_a_trusted_key() {
        let (platform, other) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let signed = SignedPolicy::sign("version = 2\n", &platform).unwrap();
        assert_eq!(signed.verify(&trust(&platform)).unwrap().version, 2);
        assert!(signed.verify_signature().is_ok());
        let err = format!("{:#}", signed.verify(&trust(&other)).unwrap_err());
        assert!(err.contains("not one this host trusts"), "{err}");
        assert!(signed.verify(&Trust::default()).is_err());
        let edited = SignedPolicy {
            text: "version = 2\ncontracts = false\n".into(),
            ..signed.clone()
        };
        assert!(edited.verify(&trust(&platform)).is_err());
        assert!(edited.verify_signature().is_err());
        let relabelled = SignedPolicy {
            version: 9,
            ..signed
        };
        let err = format!("{:#}", relabelled.verify(&trust(&platform)).unwrap_err());
        assert!(err.contains("stored as 9"), "{err}");
    }

    #[test]
    fn a_waiver_needs_a_force_signer_other_than_the_bundles() {
        let (second, author) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let policy = Policy::parse(&format!(
            "version = 1\n[force]\nsigners = [\"{}\", \"{}\"]",
            second.public().to_hex(),
            author.public().to_hex()
        ))
        .unwrap();
        let waiver = Waiver::sign(&second, "a.b", "sha256:1");
        let author_hex = author.public().to_hex();
        assert!(waiver
            .check(&policy, "a.b", "sha256:1", Some(&author_hex))
            .is_ok());
        assert!(waiver
            .check(&policy, "a.b", "sha256:2", Some(&author_hex))
            .is_err());
        assert!(waiver.check(&policy, "a.c", "sha256:1", None).is_err());
        let own = Waiver::sign(&author, "a.b", "sha256:1");
        let err = format!(
            "{:#}",
            own.check(&policy, "a.b", "sha256:1", Some(&author_hex))
                .unwrap_err()
        );
        assert!(err.contains("second person"), "{err}");
        let none = Policy::parse("version = 1").unwrap();
        assert!(waiver.check(&none, "a.b", "sha256:1", None).is_err());
    }
}
