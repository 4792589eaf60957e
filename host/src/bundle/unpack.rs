//! A bundle onto this machine: refused when its native code is for another
//! platform, and its files written into a content-addressed folder of the
//! unpack root (private to this user), reused only when it holds exactly
//! the bundle's files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::{contents, Bundle};
use crate::manifest::{CellSpec, FILE_NAME};
use crate::platform;

impl Bundle {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::sample;

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
