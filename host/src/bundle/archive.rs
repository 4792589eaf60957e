//! The bundle file: a plain tar of `MANIFEST.json`, the optional
//! `SIGNATURE.json` and the cell's files, written with fixed modes and
//! times, and read back with every file checked against its digest and
//! nothing unlisted. A bundle is outside input: sizes are bounded
//! ([`MAX_BYTES`]), whatever its headers claim.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context as _};

use super::{
    inner_path, sha256_hex, Bundle, BundleManifest, FORMAT, MANIFEST, MAX_BYTES, SIGNATURE,
};
use crate::manifest::FILE_NAME;

impl Bundle {
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
        Self::from_files(entries)
    }

    /// A bundle from its files by path (`MANIFEST.json`, the optional
    /// `SIGNATURE.json` and the cell's files), checked as a bundle file is.
    pub fn from_files(mut entries: BTreeMap<String, Vec<u8>>) -> anyhow::Result<Self> {
        let corrupt = "the bundle is corrupt or not a CBS bundle";
        for name in entries.keys() {
            inner_path(Path::new(name)).context(corrupt)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::sample;

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
    fn a_lying_size_header_is_an_error_not_an_allocation() {
        let mut bytes = sample().to_bytes().unwrap();
        // The first header claims an entry of isize::MAX bytes, checksum right.
        let mut header = tar::Header::from_byte_slice(&bytes[..512]).clone();
        header.set_size(isize::MAX as u64);
        header.set_cksum();
        bytes[..512].copy_from_slice(header.as_bytes());
        assert!(Bundle::from_bytes(&bytes).is_err());
    }
}
