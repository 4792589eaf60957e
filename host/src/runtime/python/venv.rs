//! A cell's venv: the interpreter and packages a native Python cell runs
//! with, read from its `pyvenv.cfg`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::retention::Lease;

/// A Python virtual environment.
#[derive(Debug, Clone)]
pub struct Venv {
    pub dir: PathBuf,
    /// The base interpreter's folder (`home` in pyvenv.cfg).
    pub home: PathBuf,
    /// The base interpreter's version, e.g. `3.11.7`.
    pub version: String,
    /// Keeps a cached venv on disk while this (or a clone) lives.
    pub lease: Option<Lease>,
}

impl Venv {
    /// Reads `<dir>/pyvenv.cfg`; a missing venv says how to make one.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let cfg = dir.join("pyvenv.cfg");
        let text = std::fs::read_to_string(&cfg).with_context(|| {
            format!(
                "no Python venv at {}: run `make python-cells` (or `.venv/bin/python scripts/build-python-cell <cell folder>`) to create it",
                dir.display()
            )
        })?;
        let value = |key: &str| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once('=')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let Some(home) = value("home") else {
            bail!("{} has no `home`", cfg.display());
        };
        // Python ≥ 3.11 writes `version`; older venvs wrote `version_info`.
        let Some(version) = value("version").or_else(|| value("version_info")) else {
            bail!("{} has no `version`", cfg.display());
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            home: PathBuf::from(home),
            version,
            lease: None,
        })
    }

    /// This venv, held by `lease`.
    pub fn leased(self, lease: Lease) -> Self {
        Self {
            lease: Some(lease),
            ..self
        }
    }

    /// The venv's `python` (a link to the base interpreter): as
    /// `sys.executable` it makes CPython find pyvenv.cfg, so `sys.prefix`
    /// is the venv and its site-packages are on `sys.path`.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    /// `major.minor`, e.g. `3.11`.
    pub fn minor(&self) -> &str {
        minor_of(&self.version)
    }
}

/// `3.11` of `3.11.7` (or of `3.11.7 (main, ...)`).
pub fn minor_of(version: &str) -> &str {
    let version = version.split_whitespace().next().unwrap_or("");
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pyvenv_cfg() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pyvenv.cfg"),
            "home = /opt/py/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n",
        )
        .unwrap();
        let venv = Venv::open(dir.path()).unwrap();
        assert_eq!(venv.home, PathBuf::from("/opt/py/bin"));
        assert_eq!(venv.minor(), "3.11");
        assert_eq!(minor_of("3.12.1 (main, Jan 1 2024)"), "3.12");
        let err = format!("{:#}", Venv::open(&dir.path().join("nope")).unwrap_err());
        assert!(err.contains("make python-cells"), "{err}");
    }
}
