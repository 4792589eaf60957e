//! Bundles: one file holding a cell — `cell.toml`, its component and its
//! schemas — with a manifest of sha256 digests and an optional ed25519
//! signature over the bundle digest (docs/adr/0008-bundles.md).
//!
//! The container is a plain (uncompressed) tar, so a changed byte in any
//! file is caught by that file's digest and named in the error. Layout:
//!
//! ```text
//! MANIFEST.json    {"format":1,"cell":..,"version":..,"files":{path: sha256}}
//! SIGNATURE.json   {"key": <public key hex>, "signature": <hex>}  (optional)
//! cell.toml, <component>.wasm, schemas/...
//! ```
//!
//! The bundle digest is the sha256 of `MANIFEST.json`: it covers every file.

mod signing;

pub use signing::{KeyPair, PublicKey, Trust};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component as PathPart, Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{CellSpec, Manifest, FILE_NAME};

/// The file extension of bundles.
pub const EXTENSION: &str = "cbs";
const MANIFEST: &str = "MANIFEST.json";
const SIGNATURE: &str = "SIGNATURE.json";
const FORMAT: u32 = 1;
/// Refuse bundles larger than this when reading (a Python component is ~32 MB).
const MAX_BYTES: u64 = 512 << 20;

/// What `MANIFEST.json` says: the cell and the digest of each file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    pub cell: String,
    pub version: String,
    /// Path inside the bundle → sha256 (hex).
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    key: String,
    signature: String,
}

/// A bundle in memory, its digests checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: BundleManifest,
    manifest_bytes: Vec<u8>,
    files: BTreeMap<String, Vec<u8>>,
    signature: Option<SignatureFile>,
}

impl Bundle {
    /// Packs a cell folder: `cell.toml`, the component and the schemas it
    /// names (the component must have been built).
    pub fn pack(spec: &CellSpec) -> anyhow::Result<Self> {
        Self::pack_files(spec, true)
    }

    /// `cell.toml` and the schemas only: enough to compare contracts.
    pub fn pack_contract(spec: &CellSpec) -> anyhow::Result<Self> {
        Self::pack_files(spec, false)
    }

    fn pack_files(spec: &CellSpec, with_component: bool) -> anyhow::Result<Self> {
        let m = &spec.manifest;
        let mut paths = vec![PathBuf::from(FILE_NAME)];
        if with_component {
            paths.extend(m.component.clone());
        }
        paths.extend(m.input.iter().chain(&m.output).map(|s| s.schema.clone()));
        let mut files = BTreeMap::new();
        for path in paths {
            let name = inner_path(&path)
                .with_context(|| format!("cell {} names {}", m.id, path.display()))?;
            let bytes = std::fs::read(spec.resolve(&path))
                .with_context(|| format!("cannot read {}", spec.resolve(&path).display()))?;
            files.insert(name, bytes);
        }
        let manifest = BundleManifest {
            format: FORMAT,
            cell: m.id.clone(),
            version: m.version.clone(),
            files: files
                .iter()
                .map(|(k, v)| (k.clone(), sha256_hex(v)))
                .collect(),
        };
        let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
        Ok(Self {
            manifest,
            manifest_bytes,
            files,
            signature: None,
        })
    }

    /// `sha256:<hex>` of `MANIFEST.json`, which lists every file's digest.
    pub fn digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.manifest_bytes))
    }

    /// Signs the bundle digest.
    pub fn sign(&mut self, key: &KeyPair) {
        self.signature = Some(SignatureFile {
            key: key.public().to_hex(),
            signature: key.sign(self.digest().as_bytes()),
        });
    }

    /// The key that signed the bundle, when signed.
    pub fn signer(&self) -> Option<&str> {
        self.signature.as_ref().map(|s| s.key.as_str())
    }

    /// Refuses the bundle unless `trust` accepts its signature.
    pub fn verify(&self, trust: &Trust) -> anyhow::Result<()> {
        if trust.is_empty() {
            return Ok(());
        }
        let what = format!("bundle of {} {}", self.manifest.cell, self.manifest.version);
        let Some(sig) = &self.signature else {
            bail!(
                "{what} is not signed, and this host only runs bundles signed by a --trust key: \
                 sign it with `cbs build --sign KEY`"
            );
        };
        trust
            .verify(&sig.key, self.digest().as_bytes(), &sig.signature)
            .with_context(|| format!("{what} is refused"))
    }

    /// The bundle as a tar archive.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes)
        };
        add(MANIFEST, &self.manifest_bytes)?;
        if let Some(sig) = &self.signature {
            add(SIGNATURE, &serde_json::to_vec_pretty(sig)?)?;
        }
        for (name, bytes) in &self.files {
            add(name, bytes)?;
        }
        Ok(tar.into_inner()?)
    }

    /// Reads and checks a bundle: every file present with the digest the
    /// manifest gives, nothing unlisted. (Signatures: [`Bundle::verify`].)
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        let corrupt = "the bundle is corrupt or not a CBS bundle";
        check_size(bytes.len() as u64)?;
        let mut entries = BTreeMap::new();
        let mut archive = tar::Archive::new(bytes);
        for entry in archive.entries().context(corrupt)? {
            let mut entry = entry.context(corrupt)?;
            let name = entry
                .path()
                .context(corrupt)?
                .to_string_lossy()
                .into_owned();
            inner_path(Path::new(&name)).context(corrupt)?;
            // The header's size is untrusted: never reserve more than the
            // archive itself holds.
            let mut data = Vec::with_capacity((entry.size() as usize).min(bytes.len()));
            entry.read_to_end(&mut data).context(corrupt)?;
            entries.insert(name, data);
        }
        let manifest_bytes = entries
            .remove(MANIFEST)
            .with_context(|| format!("{corrupt}: it has no {MANIFEST}"))?;
        let manifest: BundleManifest = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("{corrupt}: {MANIFEST} is not valid"))?;
        if manifest.format != FORMAT {
            bail!(
                "bundle format {} is not supported by this host (it reads format {FORMAT}): upgrade cbs-host",
                manifest.format
            );
        }
        let signature = match entries.remove(SIGNATURE) {
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{corrupt}: {SIGNATURE} is not valid"))?,
            ),
            None => None,
        };
        check_files(&manifest, &entries)?;
        Ok(Self {
            manifest,
            manifest_bytes,
            files: entries,
            signature,
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read bundle {}", path.display()))?
            .len();
        check_size(size).with_context(|| format!("in {}", path.display()))?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read bundle {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("in {}", path.display()))
    }

    /// The bundle's `cell.toml`.
    pub fn cell_manifest(&self) -> anyhow::Result<Manifest> {
        let text = std::str::from_utf8(&self.files[FILE_NAME]).context("cell.toml is not UTF-8")?;
        let manifest = Manifest::parse(text).context("in the bundle's cell.toml")?;
        if manifest.id != self.manifest.cell || manifest.version != self.manifest.version {
            bail!(
                "the bundle's {MANIFEST} says {} {} but its cell.toml says {} {}",
                self.manifest.cell,
                self.manifest.version,
                manifest.id,
                manifest.version
            );
        }
        Ok(manifest)
    }

    /// The input and output JSON Schemas the bundle's cell.toml names.
    pub fn schemas(
        &self,
    ) -> anyhow::Result<(Option<serde_json::Value>, Option<serde_json::Value>)> {
        let manifest = self.cell_manifest()?;
        let load = |r: &Option<crate::manifest::SchemaRef>| -> anyhow::Result<_> {
            let Some(r) = r else { return Ok(None) };
            let name = inner_path(&r.schema)?;
            let bytes = self
                .files
                .get(&name)
                .with_context(|| format!("the bundle has no {name}"))?;
            Ok(Some(
                serde_json::from_slice(bytes).with_context(|| format!("{name} is not JSON"))?,
            ))
        };
        Ok((load(&manifest.input)?, load(&manifest.output)?))
    }

    /// Writes the files into `<root>/<digest hex>/` (once: the folder is
    /// content-addressed) and returns the cell folder.
    pub fn unpack(&self, root: &Path) -> anyhow::Result<CellSpec> {
        let dir = root.join(self.digest().trim_start_matches("sha256:"));
        if !dir.join(FILE_NAME).is_file() {
            let tmp = root.join(format!(".unpack-{}", uuid::Uuid::now_v7()));
            for (name, bytes) in &self.files {
                let path = tmp.join(name);
                std::fs::create_dir_all(path.parent().unwrap_or(&tmp))?;
                std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                // Another host process unpacked the same bundle first.
                let _ = std::fs::remove_dir_all(&tmp);
                if !dir.join(FILE_NAME).is_file() {
                    return Err(e).with_context(|| format!("cannot write {}", dir.display()));
                }
            }
        }
        CellSpec::from_dir(&dir)
    }

    /// `~/.cache/cbs/bundles` (or `$CBS_CACHE_DIR/../bundles`).
    pub fn default_unpack_dir() -> PathBuf {
        crate::runtime::wasm::ComponentCache::default_dir()
            .and_then(|d| d.parent().map(|p| p.join("bundles")))
            .unwrap_or_else(|| std::env::temp_dir().join("cbs-bundles"))
    }
}

fn check_size(size: u64) -> anyhow::Result<()> {
    if size > MAX_BYTES {
        bail!(
            "the bundle is {} MiB, more than the {} MiB a host reads",
            size >> 20,
            MAX_BYTES >> 20
        );
    }
    Ok(())
}

fn check_files(
    manifest: &BundleManifest,
    entries: &BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<()> {
    if !manifest.files.contains_key(FILE_NAME) {
        bail!("the bundle has no {FILE_NAME}");
    }
    for (name, expected) in &manifest.files {
        let Some(bytes) = entries.get(name) else {
            bail!("the bundle is corrupt: {MANIFEST} lists {name}, which is missing");
        };
        let actual = sha256_hex(bytes);
        if &actual != expected {
            bail!(
                "the bundle is corrupt: {name} has sha256 {actual} but {MANIFEST} says {expected} \
                 (the file changed after the bundle was built)"
            );
        }
    }
    if let Some(extra) = entries.keys().find(|k| !manifest.files.contains_key(*k)) {
        bail!("the bundle is corrupt: {extra} is not listed in {MANIFEST}");
    }
    Ok(())
}

/// A relative path with no `..`, as a `/`-separated string.
fn inner_path(path: &Path) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for part in path.components() {
        match part {
            PathPart::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            PathPart::CurDir => {}
            _ => bail!(
                "{} must be a path inside the cell folder (no `..`, not absolute)",
                path.display()
            ),
        }
    }
    if parts.is_empty() {
        bail!("empty path");
    }
    Ok(parts.join("/"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schemas")).unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "id = \"a.b\"\nversion = \"1.0.0\"\ncomponent = \"a.wasm\"\n\
             [input]\nid = \"a.b/in@1\"\nschema = \"schemas/in.json\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm fake").unwrap();
        std::fs::write(dir.path().join("schemas/in.json"), b"{}").unwrap();
        Bundle::pack(&CellSpec::from_dir(dir.path()).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_keeps_digest_and_files() {
        let bundle = sample();
        let back = Bundle::from_bytes(&bundle.to_bytes().unwrap()).unwrap();
        assert_eq!(back.digest(), bundle.digest());
        assert_eq!(
            back.manifest.files.keys().collect::<Vec<_>>(),
            ["a.wasm", "cell.toml", "schemas/in.json"]
        );
        assert_eq!(back.cell_manifest().unwrap().id, "a.b");
    }

    #[test]
    fn a_changed_byte_is_named() {
        let bytes = sample().to_bytes().unwrap();
        let at = bytes.windows(4).position(|w| w == b"fake").unwrap();
        let mut tampered = bytes.clone();
        tampered[at] ^= 1;
        let err = format!("{:#}", Bundle::from_bytes(&tampered).unwrap_err());
        assert!(err.contains("a.wasm has sha256"), "{err}");
    }

    #[test]
    fn signatures_are_required_and_checked() {
        let key = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let mut bundle = sample();
        let trust = Trust::new(vec![key.public()]);
        let err = format!("{:#}", bundle.verify(&trust).unwrap_err());
        assert!(err.contains("not signed"), "{err}");
        bundle.sign(&other);
        let err = format!("{:#}", bundle.verify(&trust).unwrap_err());
        assert!(err.contains("not one this host trusts"), "{err}");
        bundle.sign(&key);
        let back = Bundle::from_bytes(&bundle.to_bytes().unwrap()).unwrap();
        back.verify(&trust).unwrap();
        back.verify(&Trust::default()).unwrap();
    }

    #[test]
    fn a_lying_size_header_is_an_error_not_an_allocation() {
        let mut bytes = sample().to_bytes().unwrap();
        // The first header claims an entry of isize::MAX bytes, checksum right.
        let mut header = tar::Header::from_byte_slice(&bytes[..512]).clone();
        header.set_size(isize::MAX as u64);
        header.set_cksum();
        bytes[..512].copy_from_slice(header.as_bytes());
        assert!(Bundle::from_bytes(&bytes).is_err());
    }

    #[test]
    fn paths_stay_inside() {
        assert!(inner_path(Path::new("../x")).is_err());
        assert!(inner_path(Path::new("/etc/passwd")).is_err());
        assert_eq!(
            inner_path(Path::new("./schemas/a.json")).unwrap(),
            "schemas/a.json"
        );
    }
}
