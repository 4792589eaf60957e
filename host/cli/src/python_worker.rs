//! `cbs-host python-worker`: one worker process of the native Python pool.
//!
//! In the command-line crate behind its `python` feature, so that the
//! `cbs-host` library and its tests do not link libpython.
//!
//! Which interpreter runs matters: a binary linked against one Python may
//! load another `libpython` of the same soname at run time (Debian's in
//! /usr/lib before pyenv's). So the interpreter is chosen explicitly:
//! the build sets an rpath to the building interpreter's LIBDIR (build.rs),
//! the worker refuses a venv made by another Python minor version, and it
//! initializes CPython with the venv's `python` as `sys.executable`, so
//! CPython reads pyvenv.cfg exactly as when the venv's python runs: the
//! venv is `sys.prefix` and its site-packages are on `sys.path`.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use cbs_host::runtime::python::venv::{minor_of, Venv};
use clap::Args;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;

/// Arguments the pool passes to each worker (see runtime::python).
#[derive(Args)]
pub struct WorkerArgs {
    /// The cell's venv.
    #[arg(long)]
    venv: PathBuf,
    /// The folder the cell's module is in.
    #[arg(long)]
    path: PathBuf,
    /// The module with the handler.
    #[arg(long)]
    module: String,
    /// The handler: a function or a class.
    #[arg(long, default_value = "handle")]
    handler: String,
    /// Messages handled at once (handler threads).
    #[arg(long, default_value_t = 1)]
    threads: u32,
}

/// Runs the worker until the host says `shutdown` or closes stdin. Errors
/// go to stderr, which the host logs under the cell's name.
pub fn run(args: WorkerArgs) -> ExitCode {
    match serve(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("python worker: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: &WorkerArgs) -> anyhow::Result<i32> {
    let venv = Venv::open(&args.venv)?;
    let embedded = embedded_version();
    if minor_of(&embedded) != venv.minor() {
        bail!(
            "the venv {} was made with Python {}, but this cbs-host embeds Python {embedded}: \
             recreate the venv with that interpreter (its `home` is {})",
            venv.dir.display(),
            venv.version,
            venv.home.display()
        );
    }
    initialize(&venv)?;
    let argv = [
        "--module",
        &args.module,
        "--handler",
        &args.handler,
        "--path",
        &args.path.display().to_string(),
        "--threads",
        &args.threads.to_string(),
    ]
    .map(str::to_owned);
    let code = Python::attach(|py| -> PyResult<i32> {
        let worker = py.import("cbs_cell.worker")?;
        worker
            .call_method1("main", (PyList::new(py, argv)?,))?
            .extract()
    });
    match code {
        Ok(code) => Ok(code),
        Err(e) => {
            Python::attach(|py| e.print(py));
            bail!(
                "the cell's Python failed (is the cbs_cell SDK installed in {}? make python-cells installs it)",
                venv.dir.display()
            )
        }
    }
}

/// The version of the libpython this process loaded.
fn embedded_version() -> String {
    // SAFETY: Py_GetVersion returns a static string and may be called
    // before the interpreter is initialized.
    unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }
        .to_string_lossy()
        .into_owned()
}

/// Initializes CPython as the venv's interpreter, isolated from the
/// environment (PYTHONPATH, PYTHONHOME and user site-packages are ignored).
/// Byte code is cached in the venv (`.pycache`), never next to the cell's
/// sources: an unpacked bundle stays exactly the bundle's files, so the
/// next load reuses it instead of unpacking it again, and a `__pycache__`
/// planted beside the sources is never read.
fn initialize(venv: &Venv) -> anyhow::Result<()> {
    let executable = CString::new(venv.python().as_os_str().as_bytes())?;
    let pycache = CString::new(venv.dir.join(".pycache").as_os_str().as_bytes())?;
    // SAFETY: the PyConfig C API, used as documented: init, set, use, clear.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitIsolatedConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        let mut status =
            ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, executable.as_ptr());
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::PyConfig_SetBytesString(
                &mut config,
                &mut config.pycache_prefix,
                pycache.as_ptr(),
            );
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(&config);
        }
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            let why = if status.err_msg.is_null() {
                "unknown error".into()
            } else {
                CStr::from_ptr(status.err_msg).to_string_lossy()
            };
            bail!(
                "cannot initialize Python from {}: {why}",
                venv.dir.display()
            );
        }
        // The main thread holds the GIL after initialization; release it
        // so that pyo3 (and the cell's threads) can take it.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}
