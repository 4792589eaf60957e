//! Cells in OCI registries: `cbs push`, `cbs pull`, `cbs deploy REF`,
//! `cbs search`, `cbs show` (docs/adr/0030-cells-in-oci-registries.md).
//!
//! Only the command line talks to registries: it verifies what it pulls
//! (every layer's digest, the bundle's files, its signature) once, and
//! hands hosts the bundle through the lattice's object store, so hosts hold
//! no registry credentials. Here: push and pull of a bundle and the
//! registry's listings; the layout in `artifact`, the documents in `oci`,
//! the HTTP API in `client`, credentials in `credentials`, names in
//! `reference`.

pub mod artifact;
pub mod client;
pub mod credentials;
pub mod oci;
pub mod reference;

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};

use crate::bundle::Bundle;
pub use client::{Client, Options};
pub use reference::Reference;

use oci::{Descriptor, ImageManifest};

/// The most repositories `search` looks into.
const MAX_SEARCHED: usize = 1000;

/// Where a push put the cell.
#[derive(Debug)]
pub struct Pushed {
    /// The cell's artifact, by tag.
    pub reference: Reference,
    /// Its manifest digest.
    pub digest: String,
    /// The bundle artifact referring to it (wasm cells).
    pub referrer: Option<String>,
}

/// Pushes `bundle` to `target` (tagged with the cell's version when the
/// reference has no tag).
pub async fn push(
    client: &Client,
    bundle: &Bundle,
    target: &Reference,
    source: Option<&str>,
) -> anyhow::Result<Pushed> {
    if target.digest.is_some() {
        bail!("push to a tag, not a digest: the digest comes from the contents");
    }
    let version = &bundle.manifest.version;
    let tagged = match &target.tag {
        Some(_) => target.clone(),
        None => target.with_tag(version).with_context(|| {
            format!("version {version} is not a valid tag: name one, e.g. {target}:TAG")
        })?,
    };
    let repo = &tagged.repository;
    let artifacts = artifact::of(bundle, source)?;
    upload(client, repo, &artifacts.cell).await?;
    let tag = tagged.tag.as_deref().unwrap_or(version);
    let digest = artifacts.cell.digest();
    let referrer = match &artifacts.referrer {
        Some(rest) => {
            // The referrer goes first: a tag never points at a cell whose
            // bundle is not there yet.
            upload(client, repo, rest).await?;
            let indexed = client
                .put_manifest(repo, &rest.digest(), oci::MANIFEST, &rest.bytes)
                .await?;
            if !indexed {
                add_referrer(client, repo, &digest, rest.descriptor()).await?;
            }
            Some(rest.digest())
        }
        None => None,
    };
    client
        .put_manifest(repo, tag, oci::MANIFEST, &artifacts.cell.bytes)
        .await?;
    Ok(Pushed {
        reference: tagged.at_digest(&digest),
        digest,
        referrer,
    })
}

async fn upload(client: &Client, repo: &str, upload: &artifact::Upload) -> anyhow::Result<()> {
    for (descriptor, bytes) in &upload.blobs {
        client.push_blob(repo, descriptor, bytes).await?;
    }
    Ok(())
}

/// Lists `referrer` under the fallback tag of `subject` (registries
/// without the referrers API).
async fn add_referrer(
    client: &Client,
    repo: &str,
    subject: &str,
    referrer: Descriptor,
) -> anyhow::Result<()> {
    let tag = oci::referrers_tag(subject);
    let mut index = match client.manifest(repo, &tag).await? {
        Some(f) => serde_json::from_slice(&f.bytes).unwrap_or_else(|_| oci::Index::empty()),
        None => oci::Index::empty(),
    };
    index.manifests.retain(|d| d.digest != referrer.digest);
    index.manifests.push(referrer);
    let bytes = serde_json::to_vec(&index)?;
    client.put_manifest(repo, &tag, oci::INDEX, &bytes).await?;
    Ok(())
}

/// A cell's artifact as found: the reference resolved to a digest, its
/// manifest, and the bundle files fetched.
pub struct Found {
    pub reference: Reference,
    pub manifest: ImageManifest,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Found {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.manifest.annotations.get(key).map(String::as_str)
    }
}

/// Pulls a bundle: every layer checked against its digest, the files
/// against the bundle's manifest, the bundle digest against the one pushed.
/// (Its signature: `Bundle::verify`.)
pub async fn pull(client: &Client, reference: &Reference) -> anyhow::Result<(Reference, Bundle)> {
    let found = fetch(client, reference, true).await?;
    let bundle = Bundle::from_files(found.files)
        .with_context(|| format!("{} is not a valid CBS bundle", found.reference))?;
    if let Some(pushed) = found.manifest.annotations.get(oci::BUNDLE_DIGEST) {
        if *pushed != bundle.digest() {
            bail!(
                "{}: the bundle pulled has digest {} but its artifact says {pushed}",
                found.reference,
                bundle.digest()
            );
        }
    }
    Ok((found.reference, bundle))
}

/// The cell's artifact and its files; without the component unless
/// `component` (enough to read its contract).
pub async fn fetch(
    client: &Client,
    reference: &Reference,
    component: bool,
) -> anyhow::Result<Found> {
    let reference = resolve(client, reference, None).await?;
    let (reference, manifest) = cell_manifest(client, &reference).await?;
    let repo = &reference.repository;
    let mut layers: Vec<Descriptor> = Vec::new();
    if manifest.kind() == oci::CBS_BUNDLE {
        layers.extend(manifest.layers.iter().cloned());
    } else if manifest.config.media_type == oci::WASM_CONFIG {
        let [wasm] = manifest.layers.as_slice() else {
            bail!(
                "{reference}: a Wasm artifact has one layer, this one {}",
                manifest.layers.len()
            );
        };
        let rest = bundle_referrer(client, &reference, &manifest).await?;
        layers.extend(rest.layers);
        if component {
            layers.push(wasm.clone());
        }
    } else {
        bail!(
            "{reference} is not a CBS cell (its artifact is {})",
            manifest.kind()
        );
    }
    artifact::check_layers(&layers.iter().collect::<Vec<_>>())
        .with_context(|| format!("in {reference}"))?;
    let mut files = BTreeMap::new();
    for d in &layers {
        let bytes = client.blob(repo, d).await?;
        files.insert(d.title().unwrap_or_default().to_owned(), bytes);
    }
    Ok(Found {
        reference,
        manifest,
        files,
    })
}

/// The image manifest at `reference`, and the reference pinned to its digest.
pub async fn cell_manifest(
    client: &Client,
    reference: &Reference,
) -> anyhow::Result<(Reference, ImageManifest)> {
    let at = reference.manifest_ref().context("name a tag or digest")?;
    let fetched = client
        .manifest(&reference.repository, at)
        .await?
        .with_context(|| format!("{reference} is not in the registry"))?;
    if fetched.media_type.starts_with(oci::INDEX) {
        bail!("{reference} is an image index, not a cell");
    }
    let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
        .with_context(|| format!("{reference}: the manifest is not an OCI image manifest"))?;
    Ok((reference.at_digest(&fetched.digest), manifest))
}

/// The CBS bundle artifact that refers to a Wasm artifact (the one pushed
/// with it: same bundle digest).
async fn bundle_referrer(
    client: &Client,
    reference: &Reference,
    cell: &ImageManifest,
) -> anyhow::Result<ImageManifest> {
    let repo = &reference.repository;
    let digest = reference.digest.as_deref().unwrap_or_default();
    let wanted = cell.annotations.get(oci::BUNDLE_DIGEST);
    let candidates: Vec<Descriptor> = client
        .referrers(repo, digest)
        .await?
        .into_iter()
        .filter(|d| d.artifact_type.as_deref() == Some(oci::CBS_BUNDLE))
        .filter(|d| wanted.is_none() || d.annotations.get(oci::BUNDLE_DIGEST) == wanted)
        .collect();
    let Some(pick) = candidates.first() else {
        bail!(
            "{reference} is a Wasm component but not a CBS cell: no CBS bundle refers to it \
             (push cells with `cbs push`)"
        );
    };
    let (_, rest) = cell_manifest(client, &reference.at_digest(&pick.digest)).await?;
    if rest.subject.as_ref().map(|s| s.digest.as_str()) != Some(digest) {
        bail!("{reference}: the bundle listed as its referrer refers to something else");
    }
    if rest.kind() != oci::CBS_BUNDLE {
        bail!("{reference}: its referrer is not a CBS bundle");
    }
    Ok(rest)
}

/// `reference` with a tag: as given, or the highest version among the
/// repository's tags (matching `range`, if given).
pub async fn resolve(
    client: &Client,
    reference: &Reference,
    range: Option<&semver::VersionReq>,
) -> anyhow::Result<Reference> {
    if reference.manifest_ref().is_some() && range.is_none() {
        return Ok(reference.clone());
    }
    let versions = versions(client, &reference.repository).await?;
    let best = versions
        .iter()
        .rev()
        .find(|v| range.is_none_or(|r| r.matches(v)));
    match best {
        Some(v) => reference.with_tag(&v.to_string()),
        None if versions.is_empty() => bail!("{reference} has no versioned tags in the registry"),
        None => bail!(
            "no version of {reference} matches {} (it has {})",
            range.map(|r| r.to_string()).unwrap_or_default(),
            versions
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A repository's tags that are versions, lowest first.
pub async fn versions(client: &Client, repository: &str) -> anyhow::Result<Vec<semver::Version>> {
    let mut versions: Vec<semver::Version> = client
        .tags(repository)
        .await?
        .iter()
        .filter_map(|t| semver::Version::parse(t).ok())
        .collect();
    versions.sort();
    Ok(versions)
}

/// A cell in a registry, as `cbs search` lists it.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    pub repository: String,
    pub versions: Vec<String>,
    /// The annotations of its highest version.
    pub annotations: BTreeMap<String, String>,
}

/// The registry's cells whose repository, cell id or contract ids hold
/// `term` (every cell without one).
pub async fn search(client: &Client, term: Option<&str>) -> anyhow::Result<Vec<Listed>> {
    let term = term.map(str::to_lowercase);
    let mut out = Vec::new();
    for repository in client.catalog(MAX_SEARCHED).await? {
        let versions = versions(client, &repository).await?;
        let Some(latest) = versions.last() else {
            continue;
        };
        let reference = Reference {
            registry: client.registry().to_owned(),
            repository: repository.clone(),
            tag: Some(latest.to_string()),
            digest: None,
        };
        let Ok((_, manifest)) = cell_manifest(client, &reference).await else {
            continue;
        };
        if !manifest.annotations.contains_key(oci::CELL) {
            continue;
        }
        let haystack = [oci::CELL, oci::CONTRACT_INPUT, oci::CONTRACT_OUTPUT]
            .iter()
            .filter_map(|k| manifest.annotations.get(*k))
            .chain(std::iter::once(&repository))
            .map(|s| s.to_lowercase())
            .collect::<Vec<_>>();
        if let Some(term) = &term {
            if !haystack.iter().any(|h| h.contains(term.as_str())) {
                continue;
            }
        }
        out.push(Listed {
            repository,
            versions: versions.iter().map(|v| v.to_string()).collect(),
            annotations: manifest.annotations,
        });
    }
    Ok(out)
}
