//! What a bundle holds of a cell folder besides `cell.toml` and the
//! schemas, by runtime (docs/adr/0017-bundles-for-every-runtime.md):
//!
//! - wasm: the component;
//! - python (native pool): the handler's `.py` files and the requirements
//!   lock, which must pin every package with hashes;
//! - sidecar: the program when it is a file of the cell folder (a
//!   `command[0]` with a `/`), which makes the bundle native code for the
//!   platform `cbs build` runs on unless `[bundle] platform` says otherwise;
//! - any runtime: the files and folders of `[bundle] files`.
//!
//! Every file is read where it really is, and only if that is inside the
//! cell folder: a symbolic link (to a file or a folder, at any step of a
//! path) that leads out of it is refused, naming the link, so building a
//! folder someone else wrote cannot pack — and sign — the builder's own
//! files. A link that stays inside is read as what it points to (a file's
//! content; a folder named in `[bundle] files` is walked); a link to a
//! folder met while walking one is not followed (it could loop): among
//! `[bundle] files` it fails the build.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::manifest::{CellSpec, Manifest, RuntimeKind};
use crate::platform;
use crate::runtime::python::lock::Lock;

/// Files walked under one folder at most (a bundle is a cell, not a tree).
const MAX_FILES: usize = 10_000;

/// Paths relative to the cell folder, and the platform they need.
pub(super) struct Contents {
    pub files: Vec<PathBuf>,
    pub platform: Option<String>,
}

pub(super) fn of(spec: &CellSpec) -> anyhow::Result<Contents> {
    let m = &spec.manifest;
    let mut files: Vec<PathBuf> = m.component.iter().cloned().collect();
    if m.runtime == RuntimeKind::Python {
        files.extend(python_files(spec)?);
    }
    let program = bundled_program(m);
    files.extend(program.clone());
    for entry in &m.bundle.files {
        files.extend(walk(spec, entry, None)?);
    }
    let platform = m
        .bundle
        .platform
        .clone()
        .or_else(|| program.map(|_| platform::current()));
    Ok(Contents { files, platform })
}

/// A sidecar's program when it is a file of the cell folder.
pub fn bundled_program(m: &Manifest) -> Option<PathBuf> {
    let program = m.sidecar.as_ref()?.command.first()?;
    (m.runtime == RuntimeKind::Sidecar && program.contains('/')).then(|| PathBuf::from(program))
}

/// The handler's `.py` files (not the venv's, caches' or hidden folders')
/// and the lock, checked.
fn python_files(spec: &CellSpec) -> anyhow::Result<Vec<PathBuf>> {
    let m = &spec.manifest;
    let Some(python) = &m.python else {
        return Ok(Vec::new());
    };
    // The venv is the host's to build, never the bundle's: not walked.
    let venv = spec.resolve(&python.venv);
    let mut files: Vec<PathBuf> = walk(spec, &python.path, Some(&venv))?
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "py"))
        .collect();
    if let Some(lock) = &python.requirements {
        let bytes = read(spec, lock)?;
        let text =
            String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", lock.display()))?;
        Lock::parse(&text).with_context(|| {
            format!(
                "cell {}: a bundle's [python] requirements must be a lock: {} is not one",
                m.id,
                lock.display()
            )
        })?;
        files.push(lock.clone());
    }
    Ok(files)
}

/// `entry` if a file, else the files under it (skipping hidden folders,
/// `__pycache__` and the folder `skip`), relative to the cell folder.
fn walk(spec: &CellSpec, entry: &Path, skip: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let path = inside(spec, entry)?;
    let meta =
        std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![entry.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut folders = vec![entry.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let dir = spec.resolve(&folder);
        for item in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let item = item?;
            let name = item.file_name();
            let relative = folder.join(&name);
            if item.file_type()?.is_dir() {
                let name = name.to_string_lossy();
                let skipped = skip.is_some_and(|s| spec.resolve(&relative) == s);
                if !name.starts_with('.') && name != "__pycache__" && !skipped {
                    folders.push(relative);
                }
            } else {
                found.push(relative);
            }
            if found.len() > MAX_FILES {
                bail!("{} holds more than {MAX_FILES} files", path.display());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The file at `relative` in the cell folder, if it really is in it.
pub(super) fn read(spec: &CellSpec, relative: &Path) -> anyhow::Result<Vec<u8>> {
    let path = inside(spec, relative)?;
    if path.is_dir() {
        bail!(
            "{} in cell folder {} is a folder, not a file (a link to a folder met while \
             walking one is not followed: name the folder it points to in [bundle] files)",
            relative.display(),
            spec.dir.display()
        );
    }
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// Where `relative` really is (every link followed), refused unless in
/// the cell folder.
fn inside(spec: &CellSpec, relative: &Path) -> anyhow::Result<PathBuf> {
    let canonical = |path: &Path| {
        path.canonicalize()
            .with_context(|| format!("cannot read {}", path.display()))
    };
    let root = canonical(&spec.dir)?;
    let real = canonical(&spec.resolve(relative))?;
    if real.starts_with(&root) {
        return Ok(real);
    }
    let via = match first_link(spec, relative) {
        Some((link, target)) => format!(
            "{} is a symbolic link to {}, which",
            link.display(),
            target.display()
        ),
        None => format!("{}", relative.display()),
    };
    bail!(
        "{via} is outside the cell folder {}: a bundle holds only the cell folder's own \
         files (copy the file into the folder instead of linking to it)",
        spec.dir.display()
    )
}

/// The first step of `relative` that is a symbolic link, and its target.
fn first_link(spec: &CellSpec, relative: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut step = PathBuf::new();
    for part in relative.components() {
        step.push(part);
        let path = spec.resolve(&step);
        if let Ok(target) = std::fs::read_link(&path) {
            return Some((step, target));
        }
    }
    None
}
