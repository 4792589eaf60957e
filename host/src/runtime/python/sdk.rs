//! The Python SDK (`cbs_cell`) this host speaks the worker protocol with,
//! built into the binary: venvs the host makes from a bundle's lock get
//! this copy, so the protocol's two sides always come from one source
//! tree, and a host needs no checkout of `guest-sdk/`.

use std::path::Path;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

macro_rules! sdk_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../../guest-sdk/python/cbs_cell/", $name)))),*]
    };
}

/// `cbs_cell`'s files: name → text.
const FILES: &[(&str, &str)] = sdk_files!(
    "__init__.py",
    "cell.py",
    "component.py",
    "context.py",
    "errors.py",
    "testing.py",
    "worker.py",
    "py.typed",
);

/// sha256 (hex) over every file's name and text: part of a venv's cache
/// key, so a host with another SDK builds its own venv.
pub fn digest() -> String {
    let mut hash = Sha256::new();
    for (name, text) in FILES {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

/// Writes the package into `site_packages/cbs_cell/`.
pub fn install(site_packages: &Path) -> anyhow::Result<()> {
    let dir = site_packages.join("cbs_cell");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module of the source tree's package is built in.
    #[test]
    fn holds_every_file_of_the_package() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/python/cbs_cell");
        let mut on_disk: Vec<String> = std::fs::read_dir(&source)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in, "add the new file to sdk::FILES");
    }
}
