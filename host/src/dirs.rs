//! Where CBS keeps files on this machine: the caches (compiled components,
//! unpacked bundles, Python venvs) and the data folder (state, durable
//! store, served releases), and the check that a folder is this user's
//! alone. One home for them, below every module that uses them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// `$CBS_CACHE_DIR`, else `$XDG_CACHE_HOME/cbs/components`, else
/// `~/.cache/cbs/components`; `None` without any of them.
pub fn components() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CBS_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("cbs").join("components"))
}

/// Unpacked bundles: `~/.cache/cbs/bundles` (or `$CBS_CACHE_DIR/../bundles`);
/// without a home, a folder of this user's in the temp folder.
pub fn bundles() -> PathBuf {
    components()
        .and_then(|d| d.parent().map(|p| p.join("bundles")))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("cbs-bundles-{}", euid())))
}

/// Venvs built from locks, next to the bundles' folder
/// (`~/.cache/cbs/python-venvs`).
pub fn python_venvs() -> PathBuf {
    let bundles = bundles();
    bundles.with_file_name(match bundles.file_name() {
        Some(name) if name == "bundles" => "python-venvs".to_owned(),
        Some(name) => format!("{}-python-venvs", name.to_string_lossy()),
        None => "cbs-python-venvs".to_owned(),
    })
}

/// Where the host keeps cells' state, the embedded durable store and what
/// it served: `$CBS_DATA_DIR`, else `$XDG_DATA_HOME/cbs`, else
/// `~/.local/share/cbs`, else `.cbs`.
pub fn data() -> PathBuf {
    let var = non_empty_var;
    var("CBS_DATA_DIR")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("cbs")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/cbs")))
        .unwrap_or_else(|| PathBuf::from(".cbs"))
}

/// Where `cbs login` keeps the token it got: `$CBS_TOKEN_FILE`, else
/// `$XDG_CONFIG_HOME/cbs/token`, else `~/.config/cbs/token`, else
/// `.cbs-token`.
pub fn token() -> PathBuf {
    let var = non_empty_var;
    var("CBS_TOKEN_FILE")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("cbs/token")))
        .or_else(|| var("HOME").map(|h| h.join(".config/cbs/token")))
        .unwrap_or_else(|| PathBuf::from(".cbs-token"))
}

/// A variable's value as a path, when set and not empty.
fn non_empty_var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (mode 0700) or checks that it is this user's alone: a
/// folder others can write to could be planted with a bundle's contents.
pub(crate) fn private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != euid() {
        bail!(
            "{} must be a folder owned by this user (uid {}) to unpack bundles in",
            dir.display(),
            euid()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}
