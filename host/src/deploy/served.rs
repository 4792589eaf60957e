//! What a host has served of each cell, remembered past `cbs undeploy` and
//! restarts: without it, a host with `--trust` that stopped serving a cell
//! would take an older signed release as if new (downgrade protection only
//! compared with what is served *now*).
//!
//! Kept twice: in the host's data folder (`<data>/served.json`) and in
//! the lattice (bucket [`super::SERVED`], written by hosts, never by
//! undeploy), so a host with a fresh data folder knows it too. The release
//! a cell may not go back from is the higher of the two ([`higher`]): a
//! lattice value someone lowered does not lower the local one.
//!
//! The record is what was installed last, so it moves forward with each
//! release and back only by a signed rollback (every install passed
//! [`super::downgrade::check`]).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::downgrade::{is_upgrade, Served};

/// The local file; larger ones are refused rather than read.
const FILE: &str = "served.json";
const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The served record in a data folder.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    cells: BTreeMap<String, Served>,
}

impl Record {
    /// Reads `<data_dir>/served.json` (none yet: an empty record).
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(FILE);
        let cells = match std::fs::File::open(&path) {
            Ok(file) => read(file, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { path, cells })
    }

    pub fn get(&self, cell: &str) -> Option<&Served> {
        self.cells.get(cell)
    }

    /// Records that `cell` is served at `served`, on disk when this
    /// returns (written aside, then renamed over the old file).
    pub fn set(&mut self, cell: &str, served: Served) -> anyhow::Result<()> {
        if self.cells.get(cell) == Some(&served) {
            return Ok(());
        }
        self.cells.insert(cell.to_owned(), served);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // One aside file per process: hosts may share a data folder.
        let aside = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&aside)?;
            serde_json::to_writer(&mut file, &self.cells)?;
            file.sync_all()?;
            std::fs::rename(&aside, &self.path)
        };
        write().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn read(file: std::fs::File, path: &Path) -> anyhow::Result<BTreeMap<String, Served>> {
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        anyhow::bail!("{} is over {MAX_BYTES} bytes", path.display());
    }
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not valid (it records what this host served, for downgrade protection)",
            path.display()
        )
    })
}

/// The higher release of two records: `theirs` only when it is a greater
/// version than `ours` (versions that cannot be ordered keep `ours`).
pub fn higher(ours: Option<Served>, theirs: Option<Served>) -> Option<Served> {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if is_upgrade(&ours.version, &theirs.version) => Some(theirs),
        (Some(ours), _) => Some(ours),
        (None, theirs) => theirs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(version: &str) -> Served {
        Served {
            version: version.into(),
            digest: format!("d{version}"),
        }
    }

    #[test]
    fn a_record_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::open(dir.path()).unwrap();
        assert_eq!(record.get("a.b"), None);
        record.set("a.b", served("2.0.0")).unwrap();
        let again = Record::open(dir.path()).unwrap();
        assert_eq!(again.get("a.b"), Some(&served("2.0.0")));
    }

    #[test]
    fn the_lattice_record_only_raises_the_local_one() {
        let (low, high) = (Some(served("1.0.0")), Some(served("2.0.0")));
        assert_eq!(higher(high.clone(), low.clone()), high);
        assert_eq!(higher(low.clone(), high.clone()), high);
        assert_eq!(higher(None, low.clone()), low);
        assert_eq!(higher(low.clone(), None), low);
        assert_eq!(higher(low.clone(), Some(served("x"))), low);
    }

    #[test]
    fn an_invalid_file_is_an_error_not_an_empty_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not json").unwrap();
        assert!(Record::open(dir.path()).is_err());
    }
}
