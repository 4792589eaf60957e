//! `[python]`: a Python cell's handler and, in the native pool
//! (`runtime = "python"`), its venv and workers. Read by
//! `runtime::python`.

use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::bounds::{self, within};
use super::{Lang, RuntimeKind};

/// A Python cell: where its handler is and, in the native pool
/// (`runtime = "python"`), which venv runs it on how many workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// The module holding the handler (`stats` for `stats.py`).
    pub module: String,
    /// A function `handle(payload, ctx)` or a class with such a method.
    #[serde(default = "default_handler")]
    pub handler: String,
    /// The folder the module is in, relative to the cell folder.
    #[serde(default = "dot")]
    pub path: PathBuf,
    /// pip requirements installed into the venv (by `make`).
    pub requirements: Option<PathBuf>,
    /// The venv whose interpreter and packages run the cell.
    #[serde(default = "default_venv")]
    pub venv: PathBuf,
    /// Worker processes.
    #[serde(default = "one")]
    pub workers: u32,
    /// Messages one worker handles at once (its handler threads).
    #[serde(default = "one")]
    pub max_concurrency: u32,
}

fn default_handler() -> String {
    "handle".to_owned()
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

fn default_venv() -> PathBuf {
    PathBuf::from(".venv")
}

fn one() -> u32 {
    1
}

/// A `[python]` table is needed by `runtime = "python"` and by `lang =
/// "python"`; in the pool, its workers are bounded.
pub(super) fn validate(
    python: Option<&PythonSpec>,
    runtime: RuntimeKind,
    lang: Option<Lang>,
) -> anyhow::Result<()> {
    if runtime == RuntimeKind::Python {
        match python {
            None => bail!(
                "runtime \"python\" needs a [python] table with `module = \"...\"` (the handler's module)"
            ),
            Some(p) if p.workers == 0 || p.max_concurrency == 0 => {
                bail!("[python] workers and max_concurrency must be greater than 0")
            }
            Some(p) => {
                within("[python] workers", p.workers.into(), bounds::PROCESSES.into())?;
                within(
                    "[python] max_concurrency",
                    p.max_concurrency.into(),
                    bounds::CONCURRENCY.into(),
                )?;
            }
        }
    }
    if lang == Some(Lang::Python) && python.is_none() {
        bail!("lang \"python\" needs a [python] table with `module = \"...\"`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::manifest::{Lang, Manifest, MINIMAL};

    #[test]
    fn python_cells() {
        let native = Manifest::parse(
            "id = \"a.b\"\nversion = \"1\"\nruntime = \"python\"\n[python]\nmodule = \"m\"\nworkers = 3",
        )
        .unwrap();
        let py = native.python.unwrap();
        assert_eq!(
            (py.handler.as_str(), py.workers, py.max_concurrency),
            ("handle", 3, 1)
        );
        assert_eq!(py.venv, PathBuf::from(".venv"));
        let err =
            Manifest::parse("id = \"a.b\"\nversion = \"1\"\nruntime = \"python\"").unwrap_err();
        assert!(format!("{err:#}").contains("[python] table"), "{err:#}");
        let component = Manifest::parse(&format!(
            "{MINIMAL}\nlang = \"python\"\n[python]\nmodule = \"m\""
        ))
        .unwrap();
        assert_eq!(component.lang, Some(Lang::Python));
    }
}
