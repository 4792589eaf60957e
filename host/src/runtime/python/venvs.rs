//! The venvs a host builds for bundled native Python cells, from each
//! bundle's requirements lock ([`super::lock`]), cached by digest.
//!
//! A venv's key is the sha256 of the lock, the base interpreter's version
//! and the built-in SDK ([`super::sdk`]), so one lock builds once per host
//! however many cells and versions share it: a hot swap that keeps the lock
//! reuses the venv. Builds happen in a temporary folder renamed into place
//! when complete (another host process on the machine may race; a crash
//! leaves no half venv), one at a time per key within this process.
//!
//! The cache is bounded ([`VenvCache::with_max_bytes`]): after a build,
//! the least recently used venvs no running cell holds are removed until
//! the rest fit ([`crate::retention`]).
//!
//! pip runs with `--require-hashes` (a download whose hash is not in the
//! lock is refused) and `--only-binary :all:` (wheels only: installing
//! never runs a package's build code on the host). It reads the lock the
//! host re-wrote from the checked pins ([`Lock::render`]), never the
//! bundle's text, and an environment cleared of all but what pip needs
//! ([`PIP_ENV`]): the host's own pip configuration (`PIP_*`, proxies, CA
//! files), never the host's `CBS_*` settings or other secrets. Its
//! progress goes to the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::lock::{self, Lock};
use super::sdk;
use super::venv::{minor_of, Venv};
use crate::retention;
use crate::runtime::last_lines::LastLines;

/// How long one venv build may take (downloads included).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Marks a complete venv.
const READY: &str = ".cbs-ready";
/// pip output lines logged per build, and bytes per line.
const LOG_LINES: usize = 1_000;
const LINE_BYTES: usize = 300;
/// pip error lines kept for the error message.
const ERROR_LINES: usize = 12;

/// What the venvs of one cache may take on disk unless told
/// (`cbs-host --venv-cache-max-mb`).
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// Venvs by lock digest under one folder.
pub struct VenvCache {
    root: PathBuf,
    /// Past this, the least recently used venvs not in use are removed.
    max_bytes: u64,
    /// One build at a time per key.
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The interpreter's version, asked once.
    version: tokio::sync::OnceCell<String>,
}

impl VenvCache {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            max_bytes: DEFAULT_MAX_BYTES,
            building: Mutex::default(),
            version: tokio::sync::OnceCell::new(),
        }
    }

    /// Next to the bundles' folder (`~/.cache/cbs/python-venvs`).
    pub fn default_dir() -> PathBuf {
        crate::dirs::python_venvs()
    }

    /// Keeps the venvs within `bytes` (those in use are never removed).
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The venv for `lock` (a file in an unpacked bundle, or none: the SDK
    /// alone), built now unless this host has it.
    pub async fn ensure(&self, cell: &str, lock: Option<&Path>) -> anyhow::Result<Venv> {
        let text = match lock {
            Some(path) => read_lock(path)?,
            None => String::new(),
        };
        let parsed = Lock::parse(&text).with_context(|| format!("cell {cell}"))?;
        let python = interpreter();
        let version = self
            .version
            .get_or_try_init(|| python_version(&python))
            .await?;
        let key = key(&text, version);
        let dir = self.root.join(&key);
        if let Some(lease) = retention::take(&dir, READY) {
            tracing::debug!(cell, venv = %dir.display(), "reusing the venv of this lock");
            return Ok(Venv::open(&dir)?.leased(lease));
        }
        let gate = self.gate(&key);
        let _one_build = gate.lock().await;
        let lease = match retention::take(&dir, READY) {
            Some(lease) => lease,
            None => {
                self.build(cell, &python, &parsed, &dir).await?;
                let lease = retention::take(&dir, READY).with_context(|| {
                    format!(
                        "the venv {} was removed as soon as it was built (another host \
                             process trimming {}?): load the cell again",
                        dir.display(),
                        self.root.display()
                    )
                })?;
                self.evict(&dir).await;
                lease
            }
        };
        Ok(Venv::open(&dir)?.leased(lease))
    }

    /// Brings the cache within its bound, keeping `built`.
    async fn evict(&self, built: &Path) {
        let (root, built, max) = (self.root.clone(), built.to_path_buf(), self.max_bytes);
        let evicting =
            tokio::task::spawn_blocking(move || retention::evict(&root, READY, max, &built));
        if let Err(e) = evicting.await {
            tracing::warn!(error = %e, "the venv cache could not be trimmed");
        }
    }

    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        building.entry(key.to_owned()).or_default().clone()
    }

    async fn build(
        &self,
        cell: &str,
        python: &Path,
        lock: &Lock,
        dir: &Path,
    ) -> anyhow::Result<()> {
        crate::dirs::private(&self.root)?;
        let started = Instant::now();
        tracing::info!(
            cell,
            packages = lock.packages.len(),
            venv = %dir.display(),
            "building the Python venv of this requirements lock (once per host)"
        );
        let tmp = self.root.join(format!(".build-{}", uuid::Uuid::now_v7()));
        let result = build_in(cell, python, lock, &tmp).await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process on this machine built the same venv first.
            if !dir.join(READY).is_file() {
                return Err(e)
                    .with_context(|| format!("cannot move the venv to {}", dir.display()));
            }
        }
        tracing::info!(cell, seconds = started.elapsed().as_secs_f32(), venv = %dir.display(), "the Python venv is ready");
        Ok(())
    }
}

/// venv, packages, SDK, ready mark — in `tmp`.
async fn build_in(cell: &str, python: &Path, lock: &Lock, tmp: &Path) -> anyhow::Result<()> {
    let mut venv = Command::new(python);
    venv.args(["-m", "venv"]);
    if lock.packages.is_empty() {
        venv.arg("--without-pip");
    }
    run(cell, venv.arg(tmp), "python -m venv").await?;
    if !lock.packages.is_empty() {
        install(cell, tmp, lock).await?;
    }
    let version = Venv::open(tmp)?.version;
    let site = tmp
        .join("lib")
        .join(format!("python{}", minor_of(&version)))
        .join("site-packages");
    sdk::install(&site)?;
    std::fs::write(tmp.join(READY), b"")?;
    Ok(())
}

/// pip installs the lock into the venv `dir`: the host's rewrite of it,
/// written into the venv being built (the host's own folder), with pip's
/// environment confined to [`PIP_ENV`].
async fn install(cell: &str, dir: &Path, lock: &Lock) -> anyhow::Result<()> {
    let lock_file = dir.join("requirements.lock");
    std::fs::write(&lock_file, lock.render())
        .with_context(|| format!("cannot write {}", lock_file.display()))?;
    let mut pip = Command::new(dir.join("bin").join("python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--require-hashes",
        "--only-binary",
        ":all:",
    ])
    .args([
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
    ])
    .arg("-r")
    .arg(&lock_file)
    .env_clear()
    .envs(std::env::vars_os().filter(|(name, _)| pip_needs(name)))
    .env("PYTHONNOUSERSITE", "1");
    run(cell, &mut pip, "pip install").await
}

/// The host's variables pip is given: where programs and the user's pip
/// configuration and cache are, the locale, the temp folder, and the
/// host's settings for reaching its index (`PIP_*`, proxies, CA files).
pub const PIP_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
];

fn pip_needs(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|name| name.starts_with("PIP_") || PIP_ENV.contains(&name))
}

/// Runs a build step, its stdout into the log, and fails with the end of
/// its stderr.
async fn run(cell: &str, command: &mut Command, what: &str) -> anyhow::Result<()> {
    // The host's own settings (NATS credentials among them) stay with it.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CBS_") {
            command.env_remove(name);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {what} for cell {cell}"))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        bail!("{what}: no pipes");
    };
    let mut errors = LastLines::new(ERROR_LINES, LINE_BYTES);
    let work = async {
        let (_, _, status) = tokio::join!(
            log_lines(cell, stdout),
            errors.read(&mut stderr),
            child.wait()
        );
        status
    };
    let Ok(status) = tokio::time::timeout(BUILD_TIMEOUT, work).await else {
        bail!(
            "{what} for cell {cell} took more than {} s",
            BUILD_TIMEOUT.as_secs()
        );
    };
    let status = status?;
    if !status.success() {
        let tail = errors.take().join("\n");
        let why = if tail.contains("DO NOT MATCH THE HASHES") {
            "a downloaded package does not match the lock's hashes, so it is refused"
        } else {
            "it failed"
        };
        bail!("{what} for the requirements lock of cell {cell}: {why} ({status}):\n{tail}");
    }
    Ok(())
}

async fn log_lines(cell: &str, out: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(out).lines();
    let mut logged = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if logged < LOG_LINES && !line.trim().is_empty() {
            tracing::info!(cell, "venv: {}", clip(&line));
            logged += 1;
        }
    }
}

/// At most [`LINE_BYTES`] of a line (on a char boundary).
fn clip(line: &str) -> &str {
    let mut end = line.len().min(LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

fn read_lock(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > lock::MAX_BYTES as u64 {
        bail!(
            "{} is {size} bytes, more than a lock may be ({})",
            path.display(),
            lock::MAX_BYTES
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The interpreter venvs are made with: `$CBS_PYTHON`, else `python3`. It
/// must be the Python version the host embeds (the worker checks).
pub fn interpreter() -> PathBuf {
    std::env::var_os("CBS_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

async fn python_version(python: &Path) -> anyhow::Result<String> {
    let out = Command::new(python)
        .args(["-c", "import platform; print(platform.python_version())"])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| {
            format!(
                "cannot run {} to build a venv: install Python (the version cbs-host embeds) \
                 or set CBS_PYTHON",
                python.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --version failed: {}", python.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The cache key: lock, interpreter version and SDK.
fn key(lock: &str, version: &str) -> String {
    let mut hash = Sha256::new();
    for part in [lock, version, &sdk::digest()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_changes_with_the_lock_and_the_python() {
        let a = key("numpy==2 --hash=sha256:00", "3.11.7");
        assert_eq!(a, key("numpy==2 --hash=sha256:00", "3.11.7"));
        assert_ne!(a, key("numpy==2 --hash=sha256:01", "3.11.7"));
        assert_ne!(a, key("numpy==2 --hash=sha256:00", "3.12.1"));
    }

    /// Real venvs (the SDK alone: locks of comments name no package).
    #[tokio::test]
    async fn past_its_bound_the_cache_removes_venvs_no_cell_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = |name: &str| {
            let path = tmp.path().join(format!("{name}.lock"));
            std::fs::write(&path, format!("# {name}\n")).unwrap();
            path
        };
        let probe = VenvCache::new(tmp.path().join("probe"));
        let one = retention::size_of(&probe.ensure("probe", None).await.unwrap().dir);
        let cache = VenvCache::new(tmp.path().join("venvs")).with_max_bytes(one * 3 / 2);

        let a = cache.ensure("a", Some(&lock("a"))).await.unwrap();
        let a_dir = a.dir.clone();
        let b = cache.ensure("b", Some(&lock("b"))).await.unwrap();
        assert!(a_dir.exists(), "a cell holds it: kept over the bound");
        drop(a);
        let c = cache.ensure("c", Some(&lock("c"))).await.unwrap();
        assert!(!a_dir.exists(), "released and least recently used: removed");
        assert!(b.dir.exists() && c.dir.exists(), "held, and just built");
        let again = cache.ensure("b2", Some(&lock("b"))).await.unwrap();
        assert_eq!(again.dir, b.dir, "the same lock reuses its venv");
    }

    /// A venv whose `python` records what pip would be given: its
    /// environment (`env.txt`) and the lock its `-r` names (`lock.txt`).
    fn recording_venv() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let python = dir.path().join("bin/python");
        std::fs::write(
            &python,
            "#!/bin/sh\nout=\"$(dirname \"$0\")/..\"\nenv > \"$out/env.txt\"\n\
             while [ $# -gt 0 ]; do [ \"$1\" = -r ] && cp \"$2\" \"$out/lock.txt\"; shift; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    const H: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn pip_is_handed_the_host_s_rewrite_of_the_lock() {
        let venv = recording_venv();
        let text = format!(
            "# pip-compile\r\nnumpy==2.1.3 \\\r\n    --hash={H}  # pinned\r\n\
             Rich[jupyter] === 13.0.0 --hash {H}\x0c"
        );
        let lock = Lock::parse(&text).unwrap();
        install("t", venv.path(), &lock).await.unwrap();
        let handed = std::fs::read_to_string(venv.path().join("lock.txt")).unwrap();
        assert_eq!(
            handed,
            format!("numpy==2.1.3 --hash={H}\nRich==13.0.0 --hash={H}\n")
        );
    }

    #[tokio::test]
    async fn pip_s_environment_holds_no_host_variable_but_what_pip_needs() {
        // Names no other test reads; set before any pip runs in this test.
        std::env::set_var("CBS_TEST_PIP_SECRET", "cbs-secret-value");
        std::env::set_var("HOST_TEST_PIP_SECRET", "host-secret-value");
        std::env::set_var("PIP_TEST_SETTING_OF_THE_HOST", "kept");
        let venv = recording_venv();
        let lock = Lock::parse(&format!("a==1 --hash={H}")).unwrap();
        install("t", venv.path(), &lock).await.unwrap();
        let env = std::fs::read_to_string(venv.path().join("env.txt")).unwrap();
        assert!(!env.contains("secret-value"), "{env}");
        for line in env.lines() {
            let name = line.split('=').next().unwrap_or_default();
            assert!(
                pip_needs(name.as_ref())
                    || ["PYTHONNOUSERSITE", "PWD", "SHLVL", "_"].contains(&name),
                "pip was given {name}"
            );
        }
        assert!(env.contains("PIP_TEST_SETTING_OF_THE_HOST=kept"), "{env}");
        assert!(
            env.contains("PYTHONNOUSERSITE=1") && env.contains("PATH="),
            "{env}"
        );
    }

    #[test]
    fn a_build_in_progress_is_never_taken_for_a_leftover() {
        assert!(retention::LEFTOVER_AGE >= BUILD_TIMEOUT * 2);
    }

    #[test]
    fn clips_long_lines_on_char_boundaries() {
        let line = "é".repeat(LINE_BYTES);
        assert!(clip(&line).len() <= LINE_BYTES);
        assert_eq!(clip("short"), "short");
    }
}
