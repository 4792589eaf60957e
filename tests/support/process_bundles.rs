//! Bundles of process cells for tests: the native Python cell whose
//! dependency comes from its lock (`tests/cells/py-locked`, installed from
//! the fixture wheel with pip offline), and a sidecar whose program travels
//! in its bundle (the reference sidecar behind a `bin/run` script).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::{bin, repo};

pub const LOCKED: &str = "test.py_locked";
pub const SIDECAR: &str = "test.reference";

/// pip settings for every venv a test's host builds: the fixture wheels
/// only, no index, no user configuration.
pub fn offline_pip() -> &'static [(&'static str, Option<&'static str>)] {
    static ENV: OnceLock<Vec<(&'static str, Option<&'static str>)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let wheels = repo().join("tests/fixtures/wheels").display().to_string();
        vec![
            ("PIP_NO_INDEX", Some("1")),
            ("PIP_FIND_LINKS", Some(Box::leak(wheels.into_boxed_str()))),
            ("PIP_CONFIG_FILE", Some("/dev/null")),
        ]
    })
}

/// `cbs ARGS` in `dir` with `env` set.
pub fn cbs_with_env(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut command = Command::new(bin("cbs"));
    command.args(args).current_dir(dir).env("NO_COLOR", "1");
    crate::process::set_env(&mut command, env);
    command.output().expect("cbs runs")
}

/// Copies the files of `from` (recursively) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `tests/cells/py-locked` as `version` (which its replies carry), in
/// `<tmp>/py-locked-<version>`.
pub fn locked_python_cell(tmp: &Path, version: &str) -> PathBuf {
    let dir = tmp.join(format!("py-locked-{version}"));
    copy_dir(&repo().join("tests/cells/py-locked"), &dir);
    let _ = std::fs::remove_dir_all(dir.join("__pycache__"));
    crate::bundles::edit(
        &dir.join("cell.toml"),
        "version = \"0.1.0\"",
        &format!("version = \"{version}\""),
    );
    crate::bundles::edit(
        &dir.join("words.py"),
        "\"0.1.0\"",
        &format!("\"{version}\""),
    );
    dir
}

/// The reference sidecar run by a program of its folder, `bin/run`, with
/// `RELEASE=<release>` in its environment (the `env` action shows it),
/// version `0.<release>.0`, and `[bundle] platform` when given.
pub fn bundled_sidecar(tmp: &Path, release: u32, platform: Option<&str>) -> PathBuf {
    let dir = tmp.join(format!("sidecar-{release}"));
    let reference = repo().join("tests/sidecars/reference");
    copy_dir(&reference.join("schemas"), &dir.join("schemas"));
    std::fs::copy(reference.join("reference.py"), dir.join("reference.py")).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    // Written without an executable mode: the bundle carries bytes only.
    std::fs::write(
        dir.join("bin/run"),
        "#!/bin/sh\nexec python3 reference.py \"$@\"\n",
    )
    .unwrap();
    let toml = std::fs::read_to_string(reference.join("cell.toml")).unwrap();
    let toml = toml
        .replace(
            "version = \"0.1.0\"",
            &format!("version = \"0.{release}.0\""),
        )
        .replace(
            "command = [\"python3\", \"reference.py\"]",
            &format!("command = [\"bin/run\"]\nenv = {{ RELEASE = \"{release}\" }}"),
        );
    let platform = platform.map_or(String::new(), |p| format!("platform = \"{p}\"\n"));
    let toml = format!("{toml}\n[bundle]\nfiles = [\"reference.py\"]\n{platform}");
    std::fs::write(dir.join("cell.toml"), toml).unwrap();
    dir
}
