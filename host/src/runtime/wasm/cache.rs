//! Precompiled components on disk, keyed by the component's sha256 and the
//! engine's compatibility hash, so a host compiles each component once per
//! machine and then loads it in milliseconds.
//!
//! Loading a cache entry maps native code into the host, so the cache
//! folder must be writable only by the user running the host (it is created
//! under the user's cache folder by default).
//!
//! Hashing a big component (a Python one is ~20 MB) costs more than loading
//! its entry, so the digest of each component file is remembered under
//! `files/`, keyed by the file's path and checked against its identity
//! (device, inode, size, mtime and ctime, in nanoseconds): an unchanged
//! file is not even read again.
//!
//! Every version a host ever loaded would stay otherwise, so the entries
//! are bounded: a hit marks its entry used (its mtime), and after each new
//! entry the least recently used go until the rest take at most
//! `--cache-max-mb` (`EngineOptions::cache_max_mb`). Entries of other
//! wasmtime versions are never used again and go first.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Loaded from a precompiled cache entry.
    Hit,
    /// Compiled now (and stored when the cache is on).
    Compiled,
    /// Compiled now by the baseline compiler, serving at once; the
    /// optimized code is compiled in the background (and then stored).
    Baseline,
}

pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
    max_bytes: u64,
}

impl ComponentCache {
    /// A cache in `dir` of at most `max_bytes` of entries; `None` compiles
    /// every time.
    pub fn new(engine: &Engine, dir: Option<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir,
            engine_key: engine_key(engine),
            max_bytes,
        }
    }

    /// `$CBS_CACHE_DIR`, else `$XDG_CACHE_HOME/cbs/components`, else
    /// `~/.cache/cbs/components`.
    pub fn default_dir() -> Option<PathBuf> {
        crate::dirs::components()
    }

    /// The compiled component of the file at `path`, from the cache without
    /// reading the file when it is unchanged since its digest was
    /// remembered; else read, checked with `check` and looked up by content.
    pub fn lookup_file(
        &self,
        engine: &Engine,
        path: &Path,
        check: impl FnOnce(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<Lookup> {
        if let Some(component) = self.known_file(engine, path) {
            return Ok(Lookup::Hit(component));
        }
        let bytes = std::fs::read(path)?;
        check(&bytes)?;
        let source = Source::new(bytes);
        match self.cached(engine, &source.digest) {
            Some(component) => {
                self.remember(path, &source.digest);
                Ok(Lookup::Hit(component))
            }
            None => Ok(Lookup::Miss(source)),
        }
    }

    /// Compiles the component read from the file at `path` with `engine`,
    /// keeps the code in the cache and remembers the file's digest.
    pub fn compile_file(
        &self,
        engine: &Engine,
        path: &Path,
        source: &Source,
    ) -> anyhow::Result<Component> {
        self.compile_file_with(engine, engine, path, source)
    }

    /// [`compile_file`](Self::compile_file) with code compiled by
    /// `compiler` (an engine of the same compatibility hash, e.g. one that
    /// compiles on one thread) for `target`.
    pub fn compile_file_with(
        &self,
        compiler: &Engine,
        target: &Engine,
        path: &Path,
        source: &Source,
    ) -> anyhow::Result<Component> {
        let component = self.compile(compiler, target, source)?;
        self.remember(path, &source.digest);
        Ok(component)
    }

    /// [`lookup_file`](Self::lookup_file), compiling on a miss.
    pub fn load_file(
        &self,
        engine: &Engine,
        path: &Path,
        check: impl FnOnce(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        match self.lookup_file(engine, path, check)? {
            Lookup::Hit(component) => Ok((component, CacheOutcome::Hit)),
            Lookup::Miss(source) => Ok((
                self.compile_file(engine, path, &source)?,
                CacheOutcome::Compiled,
            )),
        }
    }

    /// Remembers the digest of the file at `path`, by the file's identity.
    fn remember(&self, path: &Path, digest: &str) {
        if let (Some(dir), Some(identity)) = (&self.dir, FileIdentity::of(path)) {
            let memo = format!("{identity} {digest}");
            if let Err(e) = store(&dir.join("files"), &memo_path(dir, path), memo.as_bytes()) {
                tracing::debug!(error = %e, "cannot remember a component's digest");
            }
        }
    }

    /// The cached component of an unchanged, remembered file.
    fn known_file(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let dir = self.dir.as_ref()?;
        let memo = std::fs::read_to_string(memo_path(dir, path)).ok()?;
        let (identity, digest) = memo.rsplit_once(' ')?;
        if identity != FileIdentity::of(path)?.to_string() {
            return None;
        }
        let entry = dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        // SAFETY: as in `cached`: entries are written whole by this module.
        let component = unsafe { Component::deserialize_file(engine, &entry) }.ok()?;
        mark_used(&entry);
        Some(component)
    }

    /// The compiled component for `bytes`, from the cache when possible.
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let source = Source::new(bytes.to_vec());
        match self.cached(engine, &source.digest) {
            Some(component) => Ok((component, CacheOutcome::Hit)),
            None => Ok((
                self.compile(engine, engine, &source)?,
                CacheOutcome::Compiled,
            )),
        }
    }

    fn entry(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{digest}-{}.cwasm", self.engine_key)))
    }

    /// The cache entry of the component with `digest`, when there is a
    /// usable one.
    fn cached(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.entry(digest).filter(|p| p.is_file())?;
        // SAFETY: entries are written only by this module, whole (via
        // rename), for this engine's compatibility key.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                mark_used(&path);
                Some(component)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable cache entry; recompiling");
                None
            }
        }
    }

    /// Compiles `source` with `compiler` for `target` and keeps the code in
    /// the cache (when on).
    fn compile(
        &self,
        compiler: &Engine,
        target: &Engine,
        source: &Source,
    ) -> anyhow::Result<Component> {
        let compiled = compiler.precompile_component(&source.bytes)?;
        if let (Some(dir), Some(path)) = (&self.dir, self.entry(&source.digest)) {
            match store(dir, &path, &compiled) {
                Ok(()) => evict(dir, self.max_bytes, &path),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot write the component cache")
                }
            }
        }
        // SAFETY: `compiled` was produced just now by an engine of the
        // target's compatibility hash (checked where the two are paired).
        Ok(unsafe { Component::deserialize(target, &compiled) }?)
    }
}

/// A component's bytes, read and checked, with their sha256.
#[derive(Clone)]
pub struct Source {
    bytes: Arc<[u8]>,
    digest: String,
}

impl Source {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: hex::encode(Sha256::digest(&bytes)),
            bytes: bytes.into(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// What the cache holds for a component file.
pub enum Lookup {
    /// Its compiled code, for the engine asked.
    Hit(Component),
    /// Nothing: its bytes, to compile.
    Miss(Source),
}

/// What a compiled component's code depends on of its engine (compiler
/// settings, tunables, features, wasmtime's version).
pub fn engine_key(engine: &Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Where the digest of the component file at `path` is remembered.
fn memo_path(dir: &Path, path: &Path) -> PathBuf {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let key = Sha256::digest(path.as_os_str().as_encoded_bytes());
    dir.join("files").join(hex::encode(&key[..16]))
}

/// What changes whenever a file's content may have changed.
struct FileIdentity(String);

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self(format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )))
    }
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Marks an entry used now, for [`evict`]. Best effort: an entry that
/// cannot be marked only looks older than it is.
fn mark_used(entry: &Path) {
    let marked = std::fs::File::options()
        .write(true)
        .open(entry)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = marked {
        tracing::debug!(path = %entry.display(), error = %e, "cannot mark a cache entry used");
    }
}

/// Removes the least recently used entries of `dir` until the rest take at
/// most `max_bytes`; never `keep` (the entry just written). Another host
/// sharing the folder and loading a removed entry recompiles it.
fn evict(dir: &Path, max_bytes: u64, keep: &Path) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let entries: Vec<(SystemTime, u64, PathBuf)> = read
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().unwrap_or(UNIX_EPOCH), meta.len(), e.path()))
        })
        .collect();
    let (removed, total) = crate::retention::trim(entries, max_bytes, keep, |path| {
        std::fs::remove_file(path).is_ok()
    });
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, left_bytes = total, max_bytes, "removed least recently used component cache entries");
    }
}

/// Writes an entry atomically: a reader sees all of it or nothing.
fn store(dir: &Path, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(dir: &Path, name: &str, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, [0u8; 100]).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_s);
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(when).unwrap();
        path
    }

    #[test]
    fn eviction_removes_the_least_recently_used_entries_down_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = entry(dir.path(), "a-e.cwasm", 400);
        let old = entry(dir.path(), "b-e.cwasm", 300);
        let newer = entry(dir.path(), "c-e.cwasm", 200);
        let newest = entry(dir.path(), "d-e.cwasm", 100);
        let memo = entry(dir.path(), "not-an-entry", 500);

        // 400 bytes of entries, at most 250 kept; the oldest was just written.
        evict(dir.path(), 250, &oldest);
        assert!(oldest.exists(), "the entry just written stays");
        assert!(
            !old.exists() && !newer.exists(),
            "the least recently used go"
        );
        assert!(newest.exists(), "the most recently used stays");
        assert!(memo.exists(), "only entries are removed");

        // Under the bound: nothing goes.
        evict(dir.path(), 250, &newest);
        assert!(oldest.exists() && newest.exists());
    }

    /// The smallest components: empty, and empty with a custom section
    /// (other bytes, so another entry).
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";
    const EMPTY_NAMED: &[u8] = b"\0asm\x0d\0\x01\0\x00\x02\x01x";

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_hit_marks_its_entry_used() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(&engine, Some(dir.path().into()), u64::MAX);
        assert_eq!(
            cache.load(&engine, EMPTY).unwrap().1,
            CacheOutcome::Compiled
        );
        let [path] = entries(dir.path()).try_into().unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(hour_ago).unwrap();

        assert_eq!(cache.load(&engine, EMPTY).unwrap().1, CacheOutcome::Hit);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(
            modified > hour_ago + Duration::from_secs(3000),
            "{modified:?}"
        );
    }

    #[test]
    fn a_new_entry_past_the_bound_removes_the_least_recently_used() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let mut cache = ComponentCache::new(&engine, Some(dir.path().into()), u64::MAX);
        cache.load(&engine, EMPTY).unwrap();
        let [first] = entries(dir.path()).try_into().unwrap();
        // Room for one entry (both are about the same size) but not two.
        cache.max_bytes = std::fs::metadata(&first).unwrap().len() + 64;

        assert_eq!(
            cache.load(&engine, EMPTY_NAMED).unwrap().1,
            CacheOutcome::Compiled
        );
        let [second] = entries(dir.path()).try_into().unwrap();
        assert_ne!(first, second, "the older entry went, the new one stayed");
        assert_eq!(
            cache.load(&engine, EMPTY).unwrap().1,
            CacheOutcome::Compiled
        );
        assert_eq!(entries(dir.path()).len(), 1);
    }
}
