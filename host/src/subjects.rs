//! The subjects and stream names CBS uses and accepts: where a cell is
//! served (`cbs.<cell-id>`), which subjects a manifest may claim for its
//! streams and subscriptions, and JetStream stream names.

use anyhow::{bail, Context};

/// `cbs.<cell-id>`: where a cell is served.
pub fn subject_of(cell_id: &str) -> String {
    format!("cbs.{cell_id}")
}

/// `cbs.~p.<cell-id>`: where the version on trial (a canary, or a
/// blue-green release before its switch) is served alone, for tests. `~`
/// is in no cell id, so no cell's own subject can be this one.
pub fn trial_subject(cell_id: &str) -> String {
    format!("cbs.~p.{cell_id}")
}

/// `text` as part of a stream name: letters and digits upper-cased,
/// anything else `_`.
pub(crate) fn stream_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A JetStream stream name a manifest gives.
pub(crate) fn check_stream_name(what: &str, stream: &str) -> anyhow::Result<()> {
    let ok = !stream.is_empty()
        && stream.len() <= 64
        && stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        bail!("{what} = {stream:?}: use up to 64 letters, digits, '_' and '-'");
    }
    Ok(())
}

/// A subject (wildcards allowed) a stream or subscription may take: its
/// first token is a name of its own, never a wildcard (`>` would take
/// everything), the requests to cells (`cbs`), the host's own streams
/// (`cbs-…`: other cells' durable messages, dead letters) or system
/// traffic (`$…`, `_…`).
pub(crate) fn check_own_subject(what: &str, subject: &str) -> anyhow::Result<()> {
    check_first_token(what, subject, false)
}

/// A subject a cell may publish to durably: as [`check_own_subject`], and
/// also a durable cell's stream (`cbs-durable.<cell-id>`), which is how
/// cells feed one another durably.
pub(crate) fn check_durable_publish(what: &str, subject: &str) -> anyhow::Result<()> {
    check_first_token(what, subject, true)
}

/// A subject a `[capabilities] publish` grant may name: as
/// [`check_own_subject`]. A grant of `$KV.>` or `$JS.API.>` would let the
/// cell write or purge other cells' state, the desired state and the audit
/// stream with the host's credentials; `cbs.>` would call cells past the
/// `calls` grants; `_INBOX.>` would answer other callers' requests.
pub(crate) fn check_publish(what: &str, subject: &str) -> anyhow::Result<()> {
    crate::bus::subject::check(subject, true).with_context(|| format!("in {what}"))?;
    if reserved(subject, false) {
        bail!(
            "{what}: {subject:?} would reach other cells' requests or state, the host's streams \
             or NATS's own subjects ($JS, $KV, $O, $SYS, _INBOX); call cells with `calls` and \
             publish events on a subject of their own, such as \"orders.>\""
        );
    }
    Ok(())
}

/// Whether a concrete subject belongs to NATS or the host rather than to
/// cells' events: checked again when a cell publishes, whatever its
/// grants say. `durable_feed` allows a durable cell's stream
/// (`cbs-durable.…`), which a `publish_durable` grant may name.
pub(crate) fn reserved(subject: &str, durable_feed: bool) -> bool {
    let first = subject.split('.').next().unwrap_or_default();
    first == "*"
        || first == ">"
        || first == "cbs"
        || (first.starts_with("cbs-") && !(durable_feed && first == "cbs-durable"))
        || first.starts_with('$')
        || first.starts_with('_')
}

fn check_first_token(what: &str, subject: &str, durable_feeds: bool) -> anyhow::Result<()> {
    crate::bus::subject::check(subject, true).with_context(|| format!("in {what}"))?;
    if reserved(subject, durable_feeds) {
        bail!(
            "{what}: {subject:?} would take requests, other cells' streams or system traffic; \
             use a subject of its own, such as \"orders.>\""
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_grant_cannot_reach_nats_or_host_subjects() {
        for subject in [
            "$KV.>",
            "$KV.CBS_STATE_other.key",
            "$JS.API.>",
            "$JS.API.STREAM.PURGE.KV_CBS_STATE_X",
            "$O.>",
            "$SYS.>",
            "$SRV.>",
            "_INBOX.>",
            "cbs.>",
            "cbs.logic.greet",
            "cbs.~l.logic.greet",
            "cbs-desired.x",
            "cbs-durable.orders",
            ">",
            "*.x",
        ] {
            let err = check_publish("[capabilities] publish", subject)
                .expect_err(subject)
                .to_string();
            assert!(err.contains("calls"), "{subject}: {err}");
        }
        for subject in ["events.>", "orders.created", "billing.*.paid"] {
            check_publish("[capabilities] publish", subject).expect(subject);
        }
    }

    #[test]
    fn only_a_durable_feed_may_name_a_durable_cells_stream() {
        assert!(reserved("cbs-durable.orders", false));
        assert!(!reserved("cbs-durable.orders", true));
        assert!(reserved("cbs-dlq.orders", true));
        assert!(reserved("$JS.API.STREAM.DELETE.CBS_AUDIT", true));
    }
}
