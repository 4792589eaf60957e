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

mod contents;
mod signing;

pub use contents::bundled_program;
pub use signing::{KeyPair, PublicKey, Trust};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component as PathPart, Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{CellSpec, Manifest, FILE_NAME};
use crate::platform;

/// The file extension of bundles.
pub const EXTENSION: &str = "cbs";
const MANIFEST: &str = "MANIFEST.json";
const SIGNATURE: &str = "SIGNATURE.json";
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
        self.check_confined(&manifest)?;
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
    ///
    /// `root` is made private to this user (0700). A folder already there
    /// for this digest is used only when its files are the bundle's, byte
    /// for byte; otherwise it is unpacked anew.
    pub fn unpack(&self, root: &Path) -> anyhow::Result<CellSpec> {
        crate::dirs::private(root)?;
        let dir = root.join(self.digest().trim_start_matches("sha256:"));
        if dir.exists() && !self.unpacked_in(&dir) {
            tracing::warn!(dir = %dir.display(), "an unpacked bundle differs from its bundle; unpacking it again");
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
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
        let spec = CellSpec::from_dir(&dir)?;
        make_program_executable(&spec)?;
        Ok(spec)
    }

    /// Refuses a bundle whose native code is for another platform.
    pub fn check_platform(&self) -> anyhow::Result<()> {
        let Some(wanted) = &self.manifest.platform else {
            return Ok(());
        };
        platform::check(wanted).context("in the bundle's MANIFEST.json")?;
        if !platform::runs_here(wanted) {
            bail!(
                "the bundle of {} {} holds native code for {wanted}, and this host is {}: \
                 build the bundle on (or for) {} (`[bundle] platform` in cell.toml)",
                self.manifest.cell,
                self.manifest.version,
                platform::current(),
                platform::current()
            );
        }
        Ok(())
    }

    /// Whether `dir` holds exactly this bundle's files.
    fn unpacked_in(&self, dir: &Path) -> bool {
        let same = |name: &String, bytes: &Vec<u8>| {
            std::fs::read(dir.join(name)).is_ok_and(|on_disk| on_disk == *bytes)
        };
        walk_files(dir).is_ok_and(|n| n == self.files.len())
            && self.files.iter().all(|(n, b)| same(n, b))
    }

    /// `~/.cache/cbs/bundles` (or `$CBS_CACHE_DIR/../bundles`); without a
    /// home, a folder of this user's in the temp folder.
    pub fn default_unpack_dir() -> PathBuf {
        crate::dirs::bundles()
    }
}

/// A bundle holds bytes, not modes: a sidecar's bundled program becomes
/// executable (by this user only) once unpacked.
fn make_program_executable(spec: &CellSpec) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(program) = contents::bundled_program(&spec.manifest) else {
        return Ok(());
    };
    let path = spec.resolve(&program);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// How many files are under `dir`, recursively.
fn walk_files(dir: &Path) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        count += if entry.file_type()?.is_dir() {
            walk_files(&entry.path())?
        } else {
            1
        };
    }
    Ok(count)
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

    #[test]
    fn a_bundle_for_another_platform_is_refused_and_its_own_runs() {
        let mut bundle = sample();
        bundle.check_platform().unwrap();
        bundle.manifest.platform = Some(platform::current());
        bundle.check_platform().unwrap();
        bundle.manifest.platform = Some("plan9-mips".into());
        let err = format!("{:#}", bundle.check_platform().unwrap_err());
        assert!(err.contains("holds native code for plan9-mips"), "{err}");
        bundle.manifest.platform = Some("../x".into());
        let err = format!("{:#}", bundle.check_platform().unwrap_err());
        assert!(err.contains("is not `any`"), "{err}");
    }

    /// Regression: a folder planted (or changed) where a bundle unpacks was
    /// used as if it were the signed bundle's contents.
    #[test]
    fn a_planted_unpack_folder_is_replaced_by_the_bundles_files() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let root = root.path().join("bundles");
        let bundle = sample();
        let spec = bundle.unpack(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the unpack folder is private");
        std::fs::write(spec.dir.join("a.wasm"), b"planted").unwrap();
        std::fs::write(spec.dir.join("extra"), b"planted").unwrap();
        let again = bundle.unpack(&root).unwrap();
        assert_eq!(
            std::fs::read(again.dir.join("a.wasm")).unwrap(),
            b"\0asm fake"
        );
        assert!(!again.dir.join("extra").exists());
        // An unchanged folder is reused as it is.
        let third = bundle.unpack(&root).unwrap();
        assert_eq!(third.dir, again.dir);
    }

    #[test]
    fn an_unpack_root_open_to_others_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        sample().unpack(root.path()).unwrap();
        let mode = std::fs::metadata(root.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
