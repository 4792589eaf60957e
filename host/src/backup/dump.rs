//! Taking a backup: each selected stream copied to `FILE.parts/` up to its
//! last sequence, then the parts packed into the file with their manifest.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::frames::{Frame, Writer};
use super::{backup_rank, check_name, restore_rank, selected, Manifest, Part, FORMAT};
use super::{MANIFEST, MANIFEST_SUM};

/// Messages fetched per request.
const BATCH: usize = 1_000;

/// Writes a backup of the lattice `client` reaches to `path`; `all_streams`
/// copies every stream but the live ones. `progress` hears a line per
/// stream, and every few seconds on a long one.
pub async fn backup(
    client: &async_nats::Client,
    path: &Path,
    all_streams: bool,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Manifest> {
    let js = jetstream::new(client.clone());
    let mut names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the streams: {e}"))?;
    names.retain(|n| selected(n, all_streams) && check_name(n).is_ok());
    names.sort_by_key(|n| (backup_rank(n), n.clone()));
    let parts_dir = parts_dir(path);
    std::fs::create_dir_all(&parts_dir)
        .with_context(|| format!("cannot create {}", parts_dir.display()))?;
    let mut parts = Vec::new();
    for name in names {
        parts.push(copy_stream(&js, &parts_dir, &name, progress).await?);
    }
    parts.sort_by_key(|p| (restore_rank(&p.name), p.name.clone()));
    let info = client.server_info();
    let manifest = Manifest {
        format: FORMAT,
        created_ms: crate::unix_time::now_ms(),
        source: format!("{} (nats-server {})", info.server_name, info.version),
        parts,
    };
    pack(path, &parts_dir, &manifest)?;
    std::fs::remove_dir_all(&parts_dir).ok();
    Ok(manifest)
}

/// Where a backup keeps the streams it finished until it is packed.
pub fn parts_dir(path: &Path) -> PathBuf {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".parts");
    dir.into()
}

/// One stream into `<dir>/<name>.msgs`, described in `<dir>/<name>.json`;
/// a stream finished by an earlier run is taken as it is.
async fn copy_stream(
    js: &jetstream::Context,
    dir: &Path,
    name: &str,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Part> {
    let (file, described) = (
        dir.join(format!("{name}.msgs")),
        dir.join(format!("{name}.json")),
    );
    if let Ok(bytes) = std::fs::read(&described) {
        if let Ok(part) = serde_json::from_slice::<Part>(&bytes) {
            progress(&format!(
                "{name}: {} message(s), copied by an earlier run",
                part.messages
            ));
            return Ok(part);
        }
    }
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {name}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?
        .clone();
    let last_seq = info.state.last_sequence;
    let partial = file.with_extension("msgs.partial");
    let out =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut writer = Writer::new(BufWriter::new(out))?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    if info.state.messages > 0 {
        let mut on_frame = |frame: &Frame| -> anyhow::Result<()> {
            writer.write(frame)?;
            messages += 1;
            bytes += frame.bytes();
            Ok(())
        };
        read_messages(&stream, name, last_seq, &mut on_frame, progress).await?;
    }
    writer.finish()?;
    std::fs::rename(&partial, &file)?;
    let part = Part {
        name: name.to_owned(),
        config: serde_json::to_value(&info.config)?,
        messages,
        bytes,
        last_seq,
        file: format!("streams/{name}.msgs"),
        sha256: sha256_of(&file)?,
    };
    std::fs::write(&described, serde_json::to_vec_pretty(&part)?)?;
    progress(&format!("{name}: {messages} message(s), {bytes} bytes"));
    Ok(part)
}

/// Every message of `stream` up to `last_seq`, oldest first.
async fn read_messages(
    stream: &jetstream::stream::Stream,
    name: &str,
    last_seq: u64,
    on_frame: &mut dyn FnMut(&Frame) -> anyhow::Result<()>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?;
    let pending = consumer.cached_info().num_pending;
    let (mut delivered, mut said) = (0u64, std::time::Instant::now());
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?;
            let seq = message
                .info()
                .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?
                .stream_sequence;
            if seq > last_seq {
                return Ok(());
            }
            on_frame(&frame_of(seq, &message))?;
            (got, delivered) = (got + 1, delivered + 1);
            if seq == last_seq || delivered >= pending {
                return Ok(());
            }
        }
        if got == 0 {
            return Ok(());
        }
        if said.elapsed() >= Duration::from_secs(3) {
            progress(&format!("{name}: {delivered} of {pending} message(s)"));
            said = std::time::Instant::now();
        }
    }
}

fn frame_of(seq: u64, message: &jetstream::Message) -> Frame {
    let headers = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    Frame {
        seq,
        subject: message.subject.to_string(),
        headers,
        payload: message.payload.to_vec(),
    }
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The tar: manifest, its sum, then each stream's file; written beside
/// `path` and renamed into place.
fn pack(path: &Path, dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let out =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(out));
    let listed = serde_json::to_vec_pretty(manifest)?;
    let sum = hex::encode(Sha256::digest(&listed));
    append(&mut tar, MANIFEST, &listed)?;
    append(&mut tar, MANIFEST_SUM, sum.as_bytes())?;
    for part in &manifest.parts {
        let file = dir.join(format!("{}.msgs", part.name));
        tar.append_path_with_name(&file, &part.file)
            .with_context(|| format!("cannot pack {}", file.display()))?;
    }
    tar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

fn append<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes)?;
    Ok(())
}
