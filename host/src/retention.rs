//! Which cached folders stay on disk: the venvs built for bundled Python
//! cells and the unpacked bundles cells run from. Each is a folder named by
//! a sha256 digest under one root, complete once its mark file exists. A
//! loaded cell holds a [`Lease`] on its folders (a shared lock on the mark)
//! for as long as it lives; past the root's bound, the least recently used
//! folders that no cell holds — in this host or in another on the machine
//! sharing the root — are removed.
//!
//! The kernel releases a process's locks when it ends, so a crashed host
//! holds nothing. Removal takes the lock exclusively and moves the folder
//! aside before deleting it: no cell starts from half a folder, and a host
//! that opened the mark just before sees it gone and makes it again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cell's hold on a folder: while any clone of it lives, the folder stays.
#[derive(Debug, Clone)]
pub struct Lease(#[allow(dead_code)] Arc<File>);

/// Folders a build, an unpack or a removal left when its process died
/// (names starting with `.`) are removed once older than this, twice the
/// longest a venv build may take (a test in `venvs` keeps it so).
pub const LEFTOVER_AGE: Duration = Duration::from_secs(30 * 60);

/// A lease on the complete folder `dir` (its mark file is `mark`), marking
/// it used now; none when it is not complete: absent, or being removed.
pub fn take(dir: &Path, mark: &str) -> Option<Lease> {
    let path = dir.join(mark);
    let file = File::open(&path).ok()?;
    file.try_lock_shared().ok()?;
    // Removed between the open and the lock: the mark went with its folder.
    if !same_file(&file, &path) {
        return None;
    }
    // Its time orders removal (least recently used first).
    let _ = file.set_modified(SystemTime::now());
    Some(Lease(Arc::new(file)))
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Removes the least recently used folders under `root` that no one holds
/// until the rest fit in `max_bytes`, never `keep` (the one just made), and
/// old leftovers of dead builds. Other entries (not named by a digest) are
/// left alone. Returns how many folders went.
pub fn evict(root: &Path, mark: &str, max_bytes: u64, keep: &Path) -> usize {
    let Ok(read) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut venvs = Vec::new();
    for entry in read.filter_map(Result::ok) {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            remove_if_left_over(&path);
        } else if !is_digest(&entry.file_name().to_string_lossy()) {
            continue;
        } else if let Ok(meta) = std::fs::metadata(path.join(mark)) {
            let used = meta.modified().unwrap_or(UNIX_EPOCH);
            venvs.push((used, size_of(&path), path));
        }
    }
    let (removed, total) = trim(venvs, max_bytes, keep, |path| {
        remove_unheld(root, path, mark)
    });
    if removed > 0 {
        tracing::info!(root = %root.display(), removed, left_bytes = total, max_bytes, "removed the least recently used cached folders");
    }
    if total > max_bytes {
        tracing::warn!(root = %root.display(), left_bytes = total, max_bytes, "the cached folders cells use now take more than their bound");
    }
    removed
}

/// Cache entries as (last used, bytes, path): the least recently used go
/// through `remove` (which says whether it removed) until the rest fit in
/// `max_bytes`; `keep` never goes. Gives how many went and the bytes left.
/// The component cache trims its files with it too.
pub fn trim(
    mut entries: Vec<(SystemTime, u64, PathBuf)>,
    max_bytes: u64,
    keep: &Path,
    mut remove: impl FnMut(&Path) -> bool,
) -> (usize, u64) {
    let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
    entries.sort();
    let mut removed = 0;
    for (_, size, path) in entries {
        if total <= max_bytes {
            break;
        }
        if path != keep && remove(&path) {
            total -= size;
            removed += 1;
        }
    }
    (removed, total)
}

/// 64 lower-case hex digits: a sha256, as cached folders are named.
fn is_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Removes the folder `dir` unless a lease holds it.
fn remove_unheld(root: &Path, dir: &Path, mark: &str) -> bool {
    let Ok(file) = File::open(dir.join(mark)) else {
        return false;
    };
    if file.try_lock().is_err() {
        return false;
    }
    let aside = root.join(format!(".removing-{}", uuid::Uuid::now_v7()));
    if std::fs::rename(dir, &aside).is_err() {
        return false;
    }
    drop(file);
    if let Err(e) = std::fs::remove_dir_all(&aside) {
        tracing::warn!(folder = %aside.display(), error = %e, "cannot remove a cached folder; it is retried later");
    }
    true
}

fn remove_if_left_over(path: &Path) {
    let age = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if age.is_some_and(|age| age > LEFTOVER_AGE) {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Bytes of the files under `dir` (links are not followed).
pub fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(read) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in read.filter_map(Result::ok) {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => folders.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    const MARK: &str = ".ready";

    /// A cached folder named by the digest of `name`: `bytes` bytes and
    /// its mark, used `age_s` seconds ago.
    fn venv(root: &Path, name: &str, bytes: usize, age_s: u64) -> std::path::PathBuf {
        let digest = sha2::Sha256::digest(name.as_bytes());
        let dir = root.join(hex::encode(digest));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib/code.py"), vec![b'#'; bytes]).unwrap();
        std::fs::write(dir.join(MARK), b"").unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_s);
        File::open(dir.join(MARK))
            .unwrap()
            .set_modified(when)
            .unwrap();
        dir
    }

    #[test]
    fn the_least_recently_used_unheld_venvs_go_down_to_the_bound() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let held = venv(root, "held", 100, 0);
        let just_built = venv(root, "built", 100, 600);
        let oldest = venv(root, "oldest", 100, 400);
        let old = venv(root, "old", 100, 300);
        let newest = venv(root, "newest", 100, 100);
        let not_cached = root.join("wasm-component");
        std::fs::create_dir_all(&not_cached).unwrap();
        std::fs::write(not_cached.join(MARK), vec![b'#'; 1000]).unwrap();
        let lease = take(&held, MARK).expect("a ready venv");
        // A cell that took it long ago and still runs.
        let long_ago = SystemTime::now() - Duration::from_secs(700);
        File::open(held.join(MARK))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();

        // 500 bytes, at most 250 kept: the least recently used go, but not
        // one a cell holds nor the one just built.
        assert_eq!(evict(root, MARK, 250, &just_built), 3);
        assert!(held.exists() && just_built.exists());
        assert!(!oldest.exists() && !old.exists() && !newest.exists());

        // Released, it may go.
        drop(lease);
        assert_eq!(evict(root, MARK, 100, &just_built), 1);
        assert!(!held.exists() && just_built.exists());
        assert!(
            not_cached.exists(),
            "not named by a digest: not the cache's"
        );
        let left: Vec<_> = std::fs::read_dir(root).unwrap().collect();
        assert_eq!(left.len(), 2, "nothing set aside stays: {left:?}");
    }

    #[test]
    fn a_venv_being_removed_cannot_be_taken() {
        let root = tempfile::tempdir().unwrap();
        let dir = venv(root.path(), "v", 10, 0);
        let remover = File::open(dir.join(MARK)).unwrap();
        remover.try_lock().unwrap();
        assert!(take(&dir, MARK).is_none(), "locked for removal");
        drop(remover);
        let opened = File::open(dir.join(MARK)).unwrap();
        std::fs::rename(&dir, root.path().join(".removing-x")).unwrap();
        assert!(!same_file(&opened, &dir.join(MARK)), "moved away");
        assert!(take(&dir, MARK).is_none(), "gone");
    }

    #[test]
    fn leftovers_of_dead_builds_go_once_old() {
        let root = tempfile::tempdir().unwrap();
        let stale = root.path().join(".build-stale");
        let fresh = root.path().join(".build-fresh");
        for dir in [&stale, &fresh] {
            std::fs::create_dir_all(dir.join("bin")).unwrap();
        }
        let long_ago = SystemTime::now() - LEFTOVER_AGE - Duration::from_secs(60);
        File::open(&stale).unwrap().set_modified(long_ago).unwrap();
        evict(root.path(), MARK, u64::MAX, Path::new(""));
        assert!(!stale.exists(), "a build dead long ago");
        assert!(fresh.exists(), "maybe a build running now");
    }
}
