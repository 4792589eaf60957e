//! The subjects and stream names CBS uses and accepts: where a cell is
//! served (`cbs.<cell-id>`), which subjects a manifest may claim for its
//! streams and subscriptions, and JetStream stream names.

use anyhow::{bail, Context};

/// `cbs.<cell-id>`: where a cell is served.
pub fn subject_of(cell_id: &str) -> String {
    format!("cbs.{cell_id}")
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

fn check_first_token(what: &str, subject: &str, durable_feeds: bool) -> anyhow::Result<()> {
    crate::bus::subject::check(subject, true).with_context(|| format!("in {what}"))?;
    let first = subject.split('.').next().unwrap_or_default();
    let reserved = first == "*"
        || first == ">"
        || first == "cbs"
        || (first.starts_with("cbs-") && !(durable_feeds && first == "cbs-durable"))
        || first.starts_with('$')
        || first.starts_with('_');
    if reserved {
        bail!(
            "{what}: {subject:?} would take requests, other cells' streams or system traffic; \
             use a subject of its own, such as \"orders.>\""
        );
    }
    Ok(())
}
