//! Bundles: one file holding a cell — `cell.toml`, its component and its
//! schemas — with a manifest of sha256 digests and an optional ed25519
//! signature over the bundle digest (docs/adr/0008-bundles-and-deploy.md).
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
//!
//! Here: packing a cell folder, signing, and what the bundled `cell.toml`
//! may name; the file itself in `archive`, putting it on this machine in
//! `unpack`, what each runtime's bundle holds in `contents`.

mod archive;
mod contents;
mod signing;
mod unpack;

pub use contents::bundled_program;
pub use signing::{KeyPair, PublicKey, Trust};

use std::collections::BTreeMap;
use std::path::{Component as PathPart, Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{CellSpec, Manifest, FILE_NAME};

/// The file extension of bundles.
pub const EXTENSION: &str = "cbs";
/// The bundle's own files: its manifest and its signature.
pub const MANIFEST: &str = "MANIFEST.json";
pub const SIGNATURE: &str = "SIGNATURE.json";
const FORMAT: u32 = 1;
/// Refuse bundles larger than this when reading (a Python component is ~32 MB).
pub const MAX_BYTES: u64 = 512 << 20;

/// What `MANIFEST.json` says: the cell and the digest of each file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    pub cell: String,
    pub version: String,
    /// Path inside the bundle → sha256 (hex).
    pub files: BTreeMap<String, String>,
    /// What native code in the bundle runs on (`<os>-<arch>`, or `any`);
    /// absent when the bundle holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
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
        let mut platform = None;
        if with_component {
            let contents = contents::of(spec)?;
            paths.extend(contents.files);
            platform = contents.platform;
        }
        paths.extend(m.input.iter().chain(&m.output).map(|s| s.schema.clone()));
        let mut files = BTreeMap::new();
        for path in paths {
            let name = inner_path(&path)
                .with_context(|| format!("cell {} names {}", m.id, path.display()))?;
            let bytes = contents::read(spec, &path)?;
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
            platform,
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

    /// The cell's files by path in the bundle (`cell.toml`, the
    /// component, schemas, ...).
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// `MANIFEST.json` as the bundle holds it.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// `SIGNATURE.json` as the bundle file holds it, when signed.
    pub fn signature_bytes(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.signature
            .as_ref()
            .map(|s| Ok(serde_json::to_vec_pretty(s)?))
            .transpose()
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

    /// The signer's signature over [`Bundle::digest`] (hex), when signed.
    pub fn signature(&self) -> Option<&str> {
        self.signature.as_ref().map(|s| s.signature.as_str())
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

    /// The bundle's `cell.toml`, every file it names held by the bundle.
    pub fn cell_manifest(&self) -> anyhow::Result<Manifest> {
        let manifest = self.parsed_manifest()?;
        self.check_confined(&manifest)?;
        Ok(manifest)
    }

    /// The bundle's `cell.toml` as it says, matching the bundle's manifest
    /// (a contract-only bundle holds no component).
    fn parsed_manifest(&self) -> anyhow::Result<Manifest> {
        let bytes = self
            .files
            .get(FILE_NAME)
            .with_context(|| format!("the bundle has no {FILE_NAME}"))?;
        let text = std::str::from_utf8(bytes).context("cell.toml is not UTF-8")?;
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

    /// Every file the bundled `cell.toml` names is one of the bundle's own
    /// (signed) files: an absolute or `..` path would load something from
    /// outside it.
    fn check_confined(&self, m: &Manifest) -> anyhow::Result<()> {
        if !m.capabilities.files.is_empty() {
            bail!(
                "the bundle's cell.toml grants host folders ([[capabilities.files]]): a bundle \
                 runs on machines it cannot name folders of; load such a cell from its folder"
            );
        }
        let schemas = m.input.iter().chain(&m.output).map(|s| &s.schema);
        let program = contents::bundled_program(m);
        let lock = m.python.as_ref().and_then(|p| p.requirements.as_ref());
        for path in m
            .component
            .iter()
            .chain(schemas)
            .chain(&program)
            .chain(lock)
        {
            let name = inner_path(path).context("in the bundle's cell.toml")?;
            if !self.files.contains_key(&name) {
                bail!("the bundle's cell.toml names {name}, which the bundle does not hold");
            }
        }
        for entry in &m.bundle.files {
            let name = inner_path(entry).context("in the bundle's cell.toml [bundle] files")?;
            let prefix = format!("{name}/");
            if !self
                .files
                .keys()
                .any(|f| *f == name || f.starts_with(&prefix))
            {
                bail!("the bundle's cell.toml [bundle] files names {name}, which the bundle does not hold");
            }
        }
        if let Some(python) = &m.python {
            for (what, path) in [("path", &python.path), ("venv", &python.venv)] {
                if path != Path::new(".") {
                    inner_path(path)
                        .with_context(|| format!("in the bundle's cell.toml [python] {what}"))?;
                }
            }
        }
        Ok(())
    }

    /// The input and output JSON Schemas the bundle's cell.toml names.
    pub fn schemas(
        &self,
    ) -> anyhow::Result<(Option<serde_json::Value>, Option<serde_json::Value>)> {
        let manifest = self.parsed_manifest()?;
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

    pub(super) fn sample() -> Bundle {
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

    /// A cell folder whose schema `schemas/in.json` is, or is reached
    /// through, `link` → `target`; beside it `outside/in.json`.
    fn linked_schema(link: &str, target: &str) -> (tempfile::TempDir, anyhow::Result<Bundle>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cell");
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/in.json"), b"{\"secret\": 1}").unwrap();
        std::fs::create_dir(&dir).unwrap();
        if link != "schemas" {
            std::fs::create_dir(dir.join("schemas")).unwrap();
        }
        std::fs::write(dir.join("in.json"), b"{}").unwrap();
        std::fs::write(
            dir.join(FILE_NAME),
            "id = \"a.b\"\nversion = \"1.0.0\"\n\
             [input]\nid = \"a.b/in@1\"\nschema = \"schemas/in.json\"\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(target, dir.join(link)).unwrap();
        let packed = Bundle::pack_contract(&CellSpec::from_dir(&dir).unwrap());
        (tmp, packed)
    }

    #[test]
    fn a_link_inside_the_cell_folder_is_packed_as_its_file() {
        let (_tmp, packed) = linked_schema("schemas/in.json", "../in.json");
        assert_eq!(packed.unwrap().files["schemas/in.json"], b"{}");
    }

    #[test]
    fn a_link_out_of_the_cell_folder_is_refused_at_any_step_of_a_path() {
        for (link, target) in [
            ("schemas/in.json", "../../outside/in.json"),
            ("schemas", "../outside"),
        ] {
            let (_tmp, packed) = linked_schema(link, target);
            let err = format!("{:#}", packed.unwrap_err());
            assert!(
                err.contains(&format!(
                    "{link} is a symbolic link to {target}, which is outside the cell folder"
                )),
                "{err}"
            );
        }
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
    fn paths_stay_inside() {
        assert!(inner_path(Path::new("../x")).is_err());
        assert!(inner_path(Path::new("/etc/passwd")).is_err());
        assert_eq!(
            inner_path(Path::new("./schemas/a.json")).unwrap(),
            "schemas/a.json"
        );
    }

    /// `sample()` with its cell.toml replaced (digests and manifest redone):
    /// a bundle an attacker packed by hand and signed.
    fn with_cell_toml(text: &str) -> Bundle {
        let mut files = sample().files;
        files.insert(FILE_NAME.to_owned(), text.as_bytes().to_vec());
        let manifest = BundleManifest {
            format: FORMAT,
            cell: "a.b".into(),
            version: "1.0.0".into(),
            files: files
                .iter()
                .map(|(k, v)| (k.clone(), sha256_hex(v)))
                .collect(),
            platform: None,
        };
        Bundle {
            manifest_bytes: serde_json::to_vec(&manifest).unwrap(),
            manifest,
            files,
            signature: None,
        }
    }

    /// Regression: a bundled cell.toml could name a component or schema
    /// outside the bundle (absolute or `..`), which the host then loaded.
    #[test]
    fn a_bundled_manifest_cannot_name_files_outside_the_bundle() {
        let base = "id = \"a.b\"\nversion = \"1.0.0\"\n";
        for (line, why) in [
            ("component = \"/etc/passwd\"", "inside the cell folder"),
            ("component = \"../../a.wasm\"", "inside the cell folder"),
            ("component = \"other.wasm\"", "does not hold"),
            (
                "component = \"a.wasm\"\n[input]\nid = \"a.b/in@1\"\nschema = \"/tmp/x.json\"",
                "inside the cell folder",
            ),
            (
                "component = \"a.wasm\"\n[[capabilities.files]]\nhost = \"/\"\nguest = \"/host\"",
                "grants host folders",
            ),
            (
                "component = \"a.wasm\"\n[bundle]\nfiles = [\"../../etc\"]",
                "inside the cell folder",
            ),
            (
                "component = \"a.wasm\"\n[bundle]\nfiles = [\"data\"]",
                "does not hold",
            ),
            (
                "runtime = \"sidecar\"\n[sidecar]\ncommand = [\"/bin/sh\", \"-c\", \"x\"]",
                "inside the cell folder",
            ),
            (
                "runtime = \"sidecar\"\n[sidecar]\ncommand = [\"bin/planted\"]",
                "does not hold",
            ),
            (
                "runtime = \"python\"\n[python]\nmodule = \"m\"\nrequirements = \"/etc/lock\"",
                "inside the cell folder",
            ),
        ] {
            let bundle = with_cell_toml(&format!("{base}{line}\n"));
            let err = format!("{:#}", bundle.cell_manifest().unwrap_err());
            assert!(err.contains(why), "{line}: {err}");
        }
        let fine = with_cell_toml(&format!("{base}component = \"./a.wasm\"\n"));
        fine.cell_manifest().unwrap();
    }
}
