//! A bundle as OCI artifacts, and back (docs/adr/0030-cells-in-oci-registries.md).
//!
//! A wasm cell is first of all a standard Wasm artifact (CNCF TAG-Runtime:
//! config `application/vnd.wasm.config.v0+json`, one `application/wasm`
//! layer), so that any Wasm tool pulls its component. The rest of the
//! bundle — `MANIFEST.json`, `SIGNATURE.json`, `cell.toml`, the schemas —
//! is a second artifact of type `application/vnd.cbs.bundle.v1` whose
//! `subject` is the first (an OCI referrer). A Python or sidecar cell has
//! no component: its one artifact is the CBS bundle, every file a layer.
//! Each layer is one bundle file, titled by its path; pulling puts the
//! files back together and checks them as a bundle file is checked.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::oci::{self, Descriptor, ImageManifest};
use crate::bundle::{Bundle, MANIFEST, MAX_BYTES, SIGNATURE};
use crate::manifest::{Manifest, RuntimeKind};

/// One manifest and the blobs it names (config included).
pub struct Upload {
    pub manifest: ImageManifest,
    pub bytes: Vec<u8>,
    pub blobs: Vec<(Descriptor, Vec<u8>)>,
}

impl Upload {
    fn new(manifest: ImageManifest, blobs: Vec<(Descriptor, Vec<u8>)>) -> anyhow::Result<Self> {
        let bytes = serde_json::to_vec(&manifest)?;
        Ok(Self {
            manifest,
            bytes,
            blobs,
        })
    }

    pub fn digest(&self) -> String {
        oci::digest_of(&self.bytes)
    }

    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::of(oci::MANIFEST, &self.bytes);
        d.artifact_type = self.manifest.artifact_type.clone();
        d.annotations = self.manifest.annotations.clone();
        d
    }
}

/// What a push writes: the cell's artifact, and for a wasm cell the
/// bundle artifact that refers to it.
pub struct Artifacts {
    pub cell: Upload,
    pub referrer: Option<Upload>,
}

/// The config of a Wasm artifact (the fields the CNCF layout requires).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig<'a> {
    created: &'a str,
    architecture: &'static str,
    os: &'static str,
    layer_digests: Vec<&'a str>,
}

/// The artifacts of `bundle`; `source` is where its code lives, if said.
pub fn of(bundle: &Bundle, source: Option<&str>) -> anyhow::Result<Artifacts> {
    let cell = bundle.cell_manifest()?;
    let created = now_rfc3339();
    let annotations = annotations(bundle, &cell, &created, source);
    let mut layers = bundle_layers(bundle)?;
    let component = cell
        .component
        .as_ref()
        .filter(|_| cell.runtime == RuntimeKind::Wasm)
        .map(|p| p.to_string_lossy().replace('\\', "/"));
    let Some(component) = component else {
        let mut manifest = ImageManifest::new(
            Descriptor::of(oci::EMPTY, oci::EMPTY_BYTES),
            layers.iter().map(|(d, _)| d.clone()).collect(),
        );
        manifest.artifact_type = Some(oci::CBS_BUNDLE.to_owned());
        manifest.annotations = annotations;
        layers.insert(0, (manifest.config.clone(), oci::EMPTY_BYTES.to_vec()));
        return Ok(Artifacts {
            cell: Upload::new(manifest, layers)?,
            referrer: None,
        });
    };
    let at = layers
        .iter()
        .position(|(d, _)| d.title() == Some(&component))
        .with_context(|| format!("the bundle holds no {component}"))?;
    let (mut wasm, bytes) = layers.remove(at);
    wasm.media_type = oci::WASM_LAYER.to_owned();
    let config = serde_json::to_vec(&WasmConfig {
        created: &created,
        architecture: "wasm",
        os: "wasip2",
        layer_digests: vec![&wasm.digest],
    })?;
    let config_descriptor = Descriptor::of(oci::WASM_CONFIG, &config);
    let mut primary = ImageManifest::new(config_descriptor.clone(), vec![wasm.clone()]);
    primary.annotations = annotations.clone();
    let cell_upload = Upload::new(primary, vec![(config_descriptor, config), (wasm, bytes)])?;
    let mut rest = ImageManifest::new(
        Descriptor::of(oci::EMPTY, oci::EMPTY_BYTES),
        layers.iter().map(|(d, _)| d.clone()).collect(),
    );
    rest.artifact_type = Some(oci::CBS_BUNDLE.to_owned());
    rest.subject = Some(Descriptor::of(oci::MANIFEST, &cell_upload.bytes));
    rest.annotations = annotations;
    layers.insert(0, (rest.config.clone(), oci::EMPTY_BYTES.to_vec()));
    Ok(Artifacts {
        cell: cell_upload,
        referrer: Some(Upload::new(rest, layers)?),
    })
}

/// Each bundle file as a layer titled by its path: the manifest, the
/// signature, then the cell's files.
fn bundle_layers(bundle: &Bundle) -> anyhow::Result<Vec<(Descriptor, Vec<u8>)>> {
    let mut layers = vec![layer(
        MANIFEST,
        oci::CBS_BUNDLE_MANIFEST,
        bundle.manifest_bytes().to_vec(),
    )];
    if let Some(sig) = bundle.signature_bytes()? {
        layers.push(layer(SIGNATURE, oci::CBS_SIGNATURE, sig));
    }
    for (path, bytes) in bundle.files() {
        let media_type = if path == crate::manifest::FILE_NAME {
            oci::TOML
        } else if path.ends_with(".json") {
            oci::JSON_SCHEMA
        } else {
            oci::OCTET_STREAM
        };
        layers.push(layer(path, media_type, bytes.clone()));
    }
    Ok(layers)
}

fn layer(title: &str, media_type: &str, bytes: Vec<u8>) -> (Descriptor, Vec<u8>) {
    let mut d = Descriptor::of(media_type, &bytes);
    d.annotations
        .insert(oci::TITLE.to_owned(), title.to_owned());
    (d, bytes)
}

/// What the cell's artifact says of it, for `cbs search` and other tools.
fn annotations(
    bundle: &Bundle,
    cell: &Manifest,
    created: &str,
    source: Option<&str>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        a.insert(k.to_owned(), v.to_owned());
    };
    put(oci::TITLE, &cell.id);
    put(oci::VERSION, &cell.version);
    put(oci::CREATED, created);
    put(oci::CELL, &cell.id);
    put(oci::RUNTIME, &cell.runtime.to_string());
    put(oci::BUNDLE_DIGEST, &bundle.digest());
    if let Some(source) = source {
        put(oci::SOURCE, source);
    }
    if let Some(signer) = bundle.signer() {
        put(oci::SIGNER, signer);
    }
    if let Some(input) = &cell.input {
        put(oci::CONTRACT_INPUT, &input.id);
    }
    if let Some(output) = &cell.output {
        put(oci::CONTRACT_OUTPUT, &output.id);
    }
    if !cell.capabilities.calls.is_empty() {
        put(
            oci::CALLS,
            &crate::manifest::list_calls(&cell.capabilities.calls, ","),
        );
    }
    a
}

/// Checks a manifest's layers before any is fetched: a title per layer,
/// no path twice, no more bytes in all than a bundle may hold.
pub fn check_layers(layers: &[&Descriptor]) -> anyhow::Result<()> {
    let mut total: u64 = 0;
    let mut seen = std::collections::BTreeSet::new();
    for d in layers {
        let title = d
            .title()
            .with_context(|| format!("layer {} has no {} annotation", d.digest, oci::TITLE))?;
        if !seen.insert(title) {
            bail!("two layers are titled {title}");
        }
        total = total.saturating_add(d.size);
    }
    if total > MAX_BYTES {
        bail!(
            "the layers hold {} MiB, more than the {} MiB a bundle may",
            total >> 20,
            MAX_BYTES >> 20
        );
    }
    Ok(())
}

/// The bundle from its layers' bytes (each already checked against its
/// descriptor), every file then checked against `MANIFEST.json`.
pub fn bundle_from(layers: Vec<(Descriptor, Vec<u8>)>) -> anyhow::Result<Bundle> {
    let mut files = BTreeMap::new();
    for (d, bytes) in layers {
        let title = d.title().context("a layer has no title")?.to_owned();
        files.insert(title, bytes);
    }
    Bundle::from_files(files).context("the pulled layers are not a valid CBS bundle")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}
