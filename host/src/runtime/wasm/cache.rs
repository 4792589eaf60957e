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

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

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
}

pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ComponentCache {
    /// A cache in `dir`; `None` compiles every time.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// `$CBS_CACHE_DIR`, else `$XDG_CACHE_HOME/cbs/components`, else
    /// `~/.cache/cbs/components`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CBS_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("cbs").join("components"))
    }

    /// The compiled component of the file at `path`, from the cache without
    /// reading the file when it is unchanged since its digest was
    /// remembered; else read, checked with `check` and loaded by content.
    pub fn load_file(
        &self,
        engine: &Engine,
        path: &Path,
        check: impl FnOnce(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        if let Some(component) = self.known_file(engine, path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let bytes = std::fs::read(path)?;
        check(&bytes)?;
        let loaded = self.load(engine, &bytes)?;
        if let (Some(dir), Some(identity)) = (&self.dir, FileIdentity::of(path)) {
            let digest = hex::encode(Sha256::digest(&bytes));
            let memo = format!("{identity} {digest}");
            if let Err(e) = store(&dir.join("files"), &memo_path(dir, path), memo.as_bytes()) {
                tracing::debug!(error = %e, "cannot remember a component's digest");
            }
        }
        Ok(loaded)
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
        // SAFETY: as in `load`: entries are written whole by this module.
        unsafe { Component::deserialize_file(engine, &entry) }.ok()
    }

    /// The compiled component for `bytes`, from the cache when possible.
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Compiled));
        };
        let digest = hex::encode(Sha256::digest(bytes));
        let path = dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        if path.is_file() {
            // SAFETY: entries are written only by this module, whole (via
            // rename), for this engine's compatibility key.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unusable cache entry; recompiling")
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = store(dir, &path, &compiled) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the component cache");
        }
        // SAFETY: `compiled` was produced by this engine just now.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Compiled))
    }
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

/// Writes an entry atomically: a reader sees all of it or nothing.
fn store(dir: &Path, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, path)
}
