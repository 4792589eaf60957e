//! Restoring a backup: every part checked against the manifest first (the
//! damaged one named), then each stream created from its configuration and
//! its messages published again, in order, to the subjects they had — only
//! subjects of the stream itself, which must be the lattice's kind of
//! stream: a backup file is input from outside.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context as _};
use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::{self, stream};
use sha2::{Digest, Sha256};

use super::frames::{Frame, Reader};
use super::{check_name, Manifest, Part, FORMAT, MANIFEST, MANIFEST_SUM};
use crate::bus::subject::Pattern;

/// The largest manifest read.
const MAX_MANIFEST: u64 = 16 << 20;
/// Publishes awaited together.
const WINDOW: usize = 256;

/// What a restore did.
#[derive(Debug, Default)]
pub struct Restored {
    pub streams: usize,
    pub messages: u64,
}

/// Checks every part of the backup at `path` against its manifest: the
/// manifest's own sum, each file's sha256, none missing, none extra.
pub fn verify(path: &Path) -> anyhow::Result<Manifest> {
    let mut archive = open(path)?;
    let mut entries = archive.entries().context("not a CBS backup (not a tar)")?;
    let listed = read_small(entries.next(), MANIFEST)?;
    let sum = read_small(entries.next(), MANIFEST_SUM)?;
    if hex::encode(Sha256::digest(&listed)).as_bytes() != sum.trim_ascii() {
        bail!("{MANIFEST} is damaged: its sha256 is not the one {MANIFEST_SUM} holds");
    }
    let manifest: Manifest =
        serde_json::from_slice(&listed).with_context(|| format!("{MANIFEST} is damaged"))?;
    check_manifest(&manifest)?;
    let mut expected: BTreeMap<&str, &Part> = manifest
        .parts
        .iter()
        .map(|p| (p.file.as_str(), p))
        .collect();
    for entry in entries {
        let mut entry = entry.context("the backup is damaged: a part cannot be read")?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let Some(part) = expected.remove(name.as_str()) else {
            bail!("the backup is damaged: {name} is not in its manifest");
        };
        let mut hasher = Sha256::new();
        std::io::copy(&mut entry, &mut hasher)
            .with_context(|| format!("{name} is damaged: it cannot be read"))?;
        if hex::encode(hasher.finalize()) != part.sha256 {
            bail!(
                "{name} is damaged: its sha256 is not the manifest's (stream {}, {} message(s))",
                part.name,
                part.messages
            );
        }
    }
    if let Some(missing) = expected.keys().next() {
        bail!("the backup is damaged: {missing} is missing");
    }
    Ok(manifest)
}

fn open(path: &Path) -> anyhow::Result<tar::Archive<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(tar::Archive::new(BufReader::new(file)))
}

fn read_small<R: Read>(
    entry: Option<std::io::Result<tar::Entry<'_, R>>>,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    let entry = entry
        .with_context(|| format!("not a CBS backup: no {name}"))?
        .with_context(|| format!("{name} is damaged"))?;
    if entry.path()?.to_string_lossy() != name {
        bail!("not a CBS backup: {name} is not where it belongs");
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_MANIFEST)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{name} is damaged"))?;
    Ok(bytes)
}

fn check_manifest(manifest: &Manifest) -> anyhow::Result<()> {
    if manifest.format != FORMAT {
        bail!(
            "a backup of format {}; this cbs reads format {FORMAT}",
            manifest.format
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for part in &manifest.parts {
        check_name(&part.name)?;
        if part.file != format!("streams/{}.msgs", part.name) || !seen.insert(&part.name) {
            bail!(
                "{MANIFEST} is damaged: stream {} is listed twice or at {}",
                part.name,
                part.file
            );
        }
    }
    Ok(())
}

/// The subjects a restored stream may have: a key-value bucket's or an
/// object store's own, or for any other stream none of NATS's, inboxes or
/// cells' requests. Mirrors and sources are not restored.
fn check_config(part: &Part) -> anyhow::Result<stream::Config> {
    let config: stream::Config = serde_json::from_value(part.config.clone())
        .with_context(|| format!("the configuration of stream {} is damaged", part.name))?;
    if config.name != part.name {
        bail!("stream {} is configured as {}", part.name, config.name);
    }
    if config.mirror.is_some() || config.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        bail!(
            "stream {} is a mirror or has sources: restore the streams it copies instead",
            part.name
        );
    }
    let own = |prefix: &str, kind: &str| {
        part.name
            .strip_prefix(kind)
            .map(|b| format!("{prefix}.{b}."))
    };
    let allowed = |subject: &str| match (own("$KV", "KV_"), own("$O", "OBJ_")) {
        (Some(kv), _) => subject == format!("{kv}>"),
        (_, Some(objects)) => {
            subject == format!("{objects}C.>") || subject == format!("{objects}M.>")
        }
        _ => {
            Pattern::parse(subject).is_ok()
                && !["$", "_", "cbs.", ">", "*"]
                    .iter()
                    .any(|p| subject.starts_with(p))
        }
    };
    if let Some(bad) = config.subjects.iter().find(|s| !allowed(s)) {
        bail!(
            "stream {} would take subject {bad:?}, which a restored stream may not",
            part.name
        );
    }
    Ok(config)
}

/// Publishes the verified backup `manifest` (from `path`) onto the server
/// `client` reaches. A stream already holding messages is refused unless
/// `force` or an earlier run of this restore left it there
/// (`FILE.restored`).
pub async fn restore(
    client: &async_nats::Client,
    path: &Path,
    manifest: &Manifest,
    force: bool,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Restored> {
    let js = jetstream::new(client.clone());
    let record = record_path(path);
    let mut done: BTreeMap<String, u64> = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let configs = manifest
        .parts
        .iter()
        .map(check_config)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut restored = Restored::default();
    for (part, config) in manifest.parts.iter().zip(configs) {
        let already = done.get(&part.name).copied();
        open_stream(&js, part, config, already.is_some() || force).await?;
        let published = publish_part(
            &js,
            path,
            part,
            already.unwrap_or(0),
            &mut |count| {
                done.insert(part.name.clone(), count);
                std::fs::write(&record, serde_json::to_vec(&done).unwrap_or_default())
                    .with_context(|| format!("cannot record the progress in {}", record.display()))
            },
            progress,
        )
        .await?;
        restored.streams += 1;
        restored.messages += published;
        progress(&format!(
            "{}: {} of {} message(s) restored",
            part.name,
            part.messages.min(published + already.unwrap_or(0)),
            part.messages
        ));
    }
    std::fs::remove_file(&record).ok();
    Ok(restored)
}

/// `FILE.restored`: how many messages of each stream a restore published.
pub fn record_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".restored");
    name.into()
}

async fn open_stream(
    js: &jetstream::Context,
    part: &Part,
    config: stream::Config,
    may_hold: bool,
) -> anyhow::Result<()> {
    if let Ok(mut existing) = js.get_stream(&part.name).await {
        let held = existing
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read stream {}: {e}", part.name))?
            .state
            .messages;
        if held > 0 && !may_hold {
            bail!(
                "the server already holds stream {} with {held} message(s): restore onto a fresh server, or pass --force to add the backup's to them",
                part.name
            );
        }
        return Ok(());
    }
    js.create_stream(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", part.name))?;
    Ok(())
}

/// Publishes the part's messages after the first `skip`, each awaited in
/// windows; `record` hears the count published so far after each window.
async fn publish_part(
    js: &jetstream::Context,
    path: &Path,
    part: &Part,
    skip: u64,
    record: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<u64> {
    let config: stream::Config = serde_json::from_value(part.config.clone())?;
    let subjects: Vec<Pattern> = config
        .subjects
        .iter()
        .filter_map(|s| Pattern::parse(s).ok())
        .collect();
    let mut archive = open(path)?;
    let mut entry = None;
    for candidate in archive.entries()? {
        let candidate = candidate?;
        if candidate.path()?.to_string_lossy() == part.file {
            entry = Some(candidate);
            break;
        }
    }
    let entry =
        entry.with_context(|| format!("the backup is damaged: {} is missing", part.file))?;
    let mut reader = Reader::new(entry).with_context(|| format!("{} is damaged", part.file))?;
    let (mut count, mut window, mut said) =
        (0u64, Vec::with_capacity(WINDOW), std::time::Instant::now());
    while let Some(frame) = reader
        .next_frame()
        .with_context(|| format!("{} is damaged", part.file))?
    {
        count += 1;
        if count <= skip {
            continue;
        }
        if !subjects.iter().any(|p| p.matches(&frame.subject)) {
            bail!(
                "{}: a message on {:?}, outside the stream's subjects",
                part.file,
                frame.subject
            );
        }
        window.push(publish(js, &frame).await?);
        if window.len() >= WINDOW {
            settle(&mut window, &part.name).await?;
            record(count)?;
            if said.elapsed() >= std::time::Duration::from_secs(3) {
                progress(&format!(
                    "{}: {count} of {} message(s)",
                    part.name, part.messages
                ));
                said = std::time::Instant::now();
            }
        }
    }
    settle(&mut window, &part.name).await?;
    record(count)?;
    Ok(count.saturating_sub(skip))
}

async fn publish(
    js: &jetstream::Context,
    frame: &Frame,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let headers = headers_of(&frame.headers)?;
    js.publish_with_headers(frame.subject.clone(), headers, frame.payload.clone().into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot publish to {}: {e}", frame.subject))
}

async fn settle(
    window: &mut Vec<jetstream::context::PublishAckFuture>,
    stream: &str,
) -> anyhow::Result<()> {
    for ack in window.drain(..) {
        ack.await
            .map_err(|e| anyhow::anyhow!("stream {stream} did not store a message: {e}"))?;
    }
    Ok(())
}

/// The headers a message is published with again: as stored, but none
/// that would make the server check or drop it (`Nats-Expected-*`,
/// `Nats-Msg-Id`). A name or value NATS cannot carry is an error.
pub fn headers_of(pairs: &[(String, String)]) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("nats-expected") || lower == "nats-msg-id" {
            continue;
        }
        let name = HeaderName::from_str(name)
            .map_err(|e| anyhow::anyhow!("a header name {name:?}: {e}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| anyhow::anyhow!("a header value {value:?}: {e}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, subjects: &[&str]) -> Part {
        Part {
            name: name.into(),
            config: serde_json::to_value(stream::Config {
                name: name.into(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .unwrap(),
            messages: 0,
            bytes: 0,
            last_seq: 0,
            file: format!("streams/{name}.msgs"),
            sha256: String::new(),
        }
    }

    #[test]
    fn a_restored_stream_takes_only_its_own_kind_of_subjects() {
        assert!(check_config(&part("KV_cbs-desired", &["$KV.cbs-desired.>"])).is_ok());
        assert!(check_config(&part(
            "OBJ_cbs-bundles",
            &["$O.cbs-bundles.C.>", "$O.cbs-bundles.M.>"]
        ))
        .is_ok());
        assert!(check_config(&part("CBS_DLQ", &["cbs-dlq.>"])).is_ok());
        for (name, subjects) in [
            ("KV_cbs-desired", &["$KV.other.>"][..]),
            ("KV_x", &["cbs.>"][..]),
            ("CBS_DLQ", &["cbs.logic.greet"][..]),
            ("CBS_DLQ", &["$JS.API.>"][..]),
            ("CBS_DLQ", &[">"][..]),
            ("CBS_DLQ", &["_INBOX.>"][..]),
        ] {
            let err = format!("{:#}", check_config(&part(name, subjects)).unwrap_err());
            assert!(err.contains("may not"), "{name} {subjects:?}: {err}");
        }
        let renamed = Part {
            config: serde_json::json!({"name": "OTHER", "subjects": ["a.>"]}),
            ..part("CBS_DLQ", &[])
        };
        assert!(check_config(&renamed).is_err());
    }

    #[test]
    fn headers_nats_cannot_carry_are_errors_and_checks_are_dropped() {
        let ok = headers_of(&[
            ("KV-Operation".into(), "DEL".into()),
            ("Nats-Expected-Last-Sequence".into(), "4".into()),
            ("Nats-Msg-Id".into(), "x".into()),
        ])
        .unwrap();
        assert_eq!(ok.get("KV-Operation").map(|v| v.as_str()), Some("DEL"));
        assert!(ok.get("Nats-Msg-Id").is_none() && ok.get("Nats-Expected-Last-Sequence").is_none());
        assert!(headers_of(&[("a:b".into(), "x".into())]).is_err());
        assert!(headers_of(&[("a".into(), "x\r\ny: z".into())]).is_err());
    }
}
