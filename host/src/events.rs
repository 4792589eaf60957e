//! Events: subjects a cell handles besides its requests (`[[subscribe]]` in
//! `cell.toml`), and durable publishing (`[capabilities] publish_durable`).
//!
//! An event is an envelope like a request, published by a cell's
//! `ctx.publish` (a child of the flow: same correlation id, trace context)
//! or by any client. Deliveries:
//!
//! - core NATS, `delivery = "queue"` (the default): one host of the cell
//!   gets each event (queue group `cbs.<cell-id>`); every subscribing cell
//!   gets it (fan-out between cells). At most once.
//! - core NATS, `delivery = "fanout"`: every host serving the cell gets it.
//! - `durable = true`: a JetStream consumer per cell and subject, shared by
//!   the cell's hosts: each event once per cell, at least once, acknowledged
//!   after the cell succeeded, with the retries and dead letters of
//!   [`crate::durable`]. The stream is `stream` (created when missing, with
//!   interest retention: an event is kept until every subscribing cell took
//!   it; see `durable::StreamSpec::of_subscription`), on JetStream or on the
//!   in-process bus's embedded store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::subjects::{check_own_subject, check_stream_name, stream_token};

/// `[[subscribe]]`: one event subject a cell handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// The subject, wildcards allowed (`orders.*`, `orders.>`).
    pub subject: String,
    /// One host of the cell per event (`queue`), or every host (`fanout`).
    #[serde(default)]
    pub delivery: Delivery,
    /// Through a JetStream consumer: at least once, survives host deaths.
    #[serde(default)]
    pub durable: bool,
    /// The stream a durable subscription reads; default
    /// `CBS_EVENTS_<subject>_<hash>` (see [`Subscribe::stream_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    #[default]
    Queue,
    Fanout,
}

impl Subscribe {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        check_own_subject("[[subscribe]] subject", &self.subject)?;
        if let Some(stream) = &self.stream {
            check_stream_name("[[subscribe]] stream", stream)?;
            if !self.durable {
                anyhow::bail!(
                    "[[subscribe]] {}: `stream` is for durable subscriptions; add durable = true",
                    self.subject
                );
            }
        }
        if self.durable && self.delivery == Delivery::Fanout {
            anyhow::bail!(
                "[[subscribe]] {}: a durable subscription delivers each event once per cell; \
                 use delivery = \"queue\" (or durable = false to reach every host)",
                self.subject
            );
        }
        Ok(())
    }

    /// The queue group for core deliveries: `cbs.<cell-id>` when queued,
    /// none for fan-out.
    pub fn queue_group(&self, cell_id: &str) -> Option<String> {
        (self.delivery == Delivery::Queue).then(|| crate::subjects::subject_of(cell_id))
    }

    /// The stream of a durable subscription.
    pub fn stream_name(&self) -> String {
        self.stream.clone().unwrap_or_else(|| {
            let readable: String = self.subject.chars().take(32).collect();
            let readable = stream_token(&readable);
            format!("CBS_EVENTS_{readable}_{}", short_hash(&self.subject))
        })
    }

    /// The durable consumer of `cell_id` on this subscription, shared by
    /// the cell's hosts.
    pub fn consumer_name(&self, cell_id: &str) -> String {
        format!(
            "cbs-{}-{}",
            cell_id.replace('.', "_"),
            short_hash(&self.subject)
        )
    }
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(toml: &str) -> anyhow::Result<Subscribe> {
        let s: Subscribe = toml::from_str(toml)?;
        s.validate().map(|()| s)
    }

    #[test]
    fn subscriptions_are_checked() {
        let queued = sub("subject = \"orders.*\"").unwrap();
        assert_eq!(queued.queue_group("a.b").as_deref(), Some("cbs.a.b"));
        let fanout = sub("subject = \"orders.*\"\ndelivery = \"fanout\"").unwrap();
        assert_eq!(fanout.queue_group("a.b"), None);
        for bad in [
            "subject = \"cbs.logic.greet\"",
            "subject = \"$JS.API.>\"",
            "subject = \"a..b\"",
            "subject = \">\"",
            "subject = \"*.created\"",
            "subject = \"cbs-dlq.>\"",
            "subject = \"cbs-durable.other.cell\"",
            "subject = \"_INBOX.x\"",
            "subject = \"x\"\nstream = \"S\"",
            "subject = \"x\"\ndurable = true\ndelivery = \"fanout\"",
            "subject = \"x\"\ndurable = true\nstream = \"a b\"",
        ] {
            assert!(sub(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let a = sub("subject = \"orders.*\"\ndurable = true").unwrap();
        let b = sub("subject = \"orders.>\"\ndurable = true").unwrap();
        assert!(a.stream_name().starts_with("CBS_EVENTS_ORDERS__"));
        assert_ne!(a.stream_name(), b.stream_name());
        assert_ne!(a.consumer_name("x.y"), b.consumer_name("x.y"));
        assert_ne!(a.consumer_name("x.y"), a.consumer_name("x.z"));
    }
}
