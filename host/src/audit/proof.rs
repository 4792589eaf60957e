//! What makes an audit event verifiable rather than claimed.
//!
//! Anyone allowed to publish on `cbs-audit.>` can write any event, so
//! `cbs audit` believes only what a writer cannot make up:
//!
//! - **when**: the time the server stored the event. An event whose own
//!   time is further than [`MAX_SKEW`] from it (back-dated) is flagged.
//! - **who**: the writer signs the event with the nkey its NATS user
//!   authenticates with (`--nats-nkey`, or the seed in `--nats-creds`), and
//!   the event's `user` must name that key. Password, token and anonymous
//!   users have no key: their events are only claimed.
//! - **what**: a deploy carries the release key's signature over the
//!   bundle digest, a rollback its grant's signature over the step; with
//!   a trust list, the key must be on it.

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{Action, Event};
use crate::bundle::{PublicKey, Trust};

/// How far an event's own time may be from the server's time of storing
/// it (clocks of different machines differ a little).
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// The writer's nkey signature over the event without this field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterSignature {
    /// The nkey's public key (`U…`).
    pub key: String,
    /// Hex ed25519 signature.
    pub signature: String,
}

/// Signs `event` as the NATS user whose nkey seed is `seed`.
pub fn sign_as_writer(event: &mut Event, seed: &str) -> anyhow::Result<()> {
    let key = nkeys::KeyPair::from_seed(seed).context("the NATS nkey seed is not valid")?;
    event.writer = None;
    let signature = key
        .sign(&serde_json::to_vec(event)?)
        .context("cannot sign the audit event")?;
    event.writer = Some(WriterSignature {
        key: key.public_key(),
        signature: hex::encode(signature),
    });
    Ok(())
}

/// How an event checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Its writer, time and release signature all verify.
    Verified,
    /// Nothing contradicts it, but its writer did not sign it: `user` and
    /// `client` are what the writer says.
    Claimed,
    /// Something in it does not verify: a forgery, or a tampered event.
    Bad(Vec<String>),
}

impl Check {
    pub fn name(&self) -> &'static str {
        match self {
            Check::Verified => "verified",
            Check::Claimed => "claimed",
            Check::Bad(_) => "bad",
        }
    }

    pub fn is_bad(&self) -> bool {
        matches!(self, Check::Bad(_))
    }

    pub fn problems(&self) -> &[String] {
        match self {
            Check::Bad(problems) => problems,
            _ => &[],
        }
    }
}

/// Checks `event`, stored by the server at `stored_ms`; with a non-empty
/// `trust`, its release key must be on it.
pub fn check(event: &Event, stored_ms: u64, trust: &Trust) -> Check {
    let mut problems = Vec::new();
    let skew = event.at_ms.abs_diff(stored_ms);
    if skew > MAX_SKEW.as_millis() as u64 {
        problems.push(format!(
            "it says it happened {} s {} the server stored it",
            skew / 1000,
            if event.at_ms < stored_ms {
                "before"
            } else {
                "after"
            }
        ));
    }
    problems.extend(writer_problem(event));
    problems.extend(release_problem(event, trust));
    if !problems.is_empty() {
        Check::Bad(problems)
    } else if event.writer.is_some() {
        Check::Verified
    } else {
        Check::Claimed
    }
}

fn writer_problem(event: &Event) -> Option<String> {
    let writer = event.writer.as_ref()?;
    let mut unsigned = event.clone();
    unsigned.writer = None;
    let verified = (|| {
        let key = nkeys::KeyPair::from_public_key(&writer.key).ok()?;
        let signature = hex::decode(&writer.signature).ok()?;
        let bytes = serde_json::to_vec(&unsigned).ok()?;
        key.verify(&bytes, &signature).ok()
    })();
    if verified.is_none() {
        return Some(format!(
            "its writer signature (key {}) does not match it",
            writer.key
        ));
    }
    if !event.user.contains(&writer.key) {
        return Some(format!(
            "it is signed by {} but names the user {:?}",
            writer.key, event.user
        ));
    }
    None
}

/// What `key` should have signed for this event.
fn signed_message(event: &Event) -> Option<Vec<u8>> {
    let digest = event.digest.as_deref()?;
    match event.action {
        // A refusal or a forced release names the bundle as a deploy does.
        Action::Deploy | Action::Refuse | Action::Force => Some(digest.as_bytes().to_vec()),
        Action::Rollback => Some(crate::deploy::downgrade::message(
            &event.cell,
            event.from.as_deref()?,
            digest,
        )),
        Action::Undeploy | Action::Trust | Action::Replay | Action::Canary | Action::Policy => None,
    }
}

fn release_problem(event: &Event, trust: &Trust) -> Option<String> {
    let key = event.key.as_deref()?;
    let Ok(public) = PublicKey::from_hex(key) else {
        return Some(format!("its key {key:?} is not an ed25519 public key"));
    };
    if !trust.is_empty() && !trust.contains(&public) {
        return Some(format!("its key {key} is not one of --trust"));
    }
    let Some(message) = signed_message(event) else {
        return Some(format!(
            "it names key {key} but not what that key signed (digest, and for a rollback the digest left)"
        ));
    };
    let Some(proof) = event.proof.as_deref() else {
        return Some(format!("it names key {key} without that key's signature"));
    };
    public
        .verify(&message, proof)
        .err()
        .map(|_| format!("key {key} did not sign what it names"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::KeyPair;

    fn deploy(key: &KeyPair) -> Event {
        let digest = "sha256:abc".to_owned();
        Event {
            at_ms: 1_000_000,
            action: Action::Deploy,
            cell: "text.upper".into(),
            version: Some("1.0.0".into()),
            proof: Some(key.sign(digest.as_bytes())),
            digest: Some(digest),
            user: String::new(),
            client: "7@127.0.0.1".into(),
            key: Some(key.public().to_hex()),
            detail: None,
            from: None,
            contract: None,
            writer: None,
        }
    }

    fn signed(mut event: Event) -> Event {
        let user = nkeys::KeyPair::new_user();
        event.user = format!("nkey {}", user.public_key());
        sign_as_writer(&mut event, &user.seed().unwrap()).unwrap();
        event
    }

    #[test]
    fn an_event_signed_by_its_writer_and_its_release_key_verifies() {
        let key = KeyPair::generate().unwrap();
        let event = signed(deploy(&key));
        assert_eq!(check(&event, 1_000_500, &Trust::default()), Check::Verified);
        let trust = Trust::new(vec![key.public()]);
        assert_eq!(check(&event, 1_000_500, &trust), Check::Verified);
    }

    #[test]
    fn an_unsigned_writer_is_only_claimed() {
        let key = KeyPair::generate().unwrap();
        let event = deploy(&key);
        assert_eq!(check(&event, 1_000_500, &Trust::default()), Check::Claimed);
    }

    /// Regression (#26, 8): a deployer's made-up event (another client, a
    /// trusted key's id, a back-dated time) was listed like a genuine one.
    #[test]
    fn a_forged_event_does_not_verify() {
        let trusted = KeyPair::generate().unwrap();
        let mut forged = deploy(&trusted);
        forged.digest = Some("sha256:other".into());
        forged.at_ms = 1_000;
        let Check::Bad(problems) = check(&forged, 1_000_000_000, &Trust::default()) else {
            panic!("a forgery verified");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("before the server stored it"),
            "{problems:?}"
        );
        assert!(problems[1].contains("did not sign"), "{problems:?}");
    }

    #[test]
    fn a_changed_field_breaks_the_writer_signature() {
        let key = KeyPair::generate().unwrap();
        let mut event = signed(deploy(&key));
        event.client = "4242@10.66.66.66".into();
        let Check::Bad(problems) = check(&event, 1_000_000, &Trust::default()) else {
            panic!("a tampered event verified");
        };
        assert!(problems[0].contains("writer signature"), "{problems:?}");
    }

    #[test]
    fn a_signature_by_someone_else_than_the_named_user_is_bad() {
        let key = KeyPair::generate().unwrap();
        let mut event = signed(deploy(&key));
        event.user = "user admin".into();
        let other = nkeys::KeyPair::new_user();
        sign_as_writer(&mut event, &other.seed().unwrap()).unwrap();
        assert!(matches!(
            check(&event, 1_000_000, &Trust::default()),
            Check::Bad(_)
        ));
    }

    #[test]
    fn a_release_key_outside_the_trust_list_is_bad() {
        let key = KeyPair::generate().unwrap();
        let event = signed(deploy(&key));
        let trust = Trust::new(vec![KeyPair::generate().unwrap().public()]);
        assert!(matches!(check(&event, 1_000_000, &trust), Check::Bad(_)));
    }
}
