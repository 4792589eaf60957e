//! Parts of tests skipped because a tool is missing. A passing test's
//! stderr is hidden by cargo, so each skip is also appended as a line to
//! the file `CBS_TEST_SKIPS` names; `make test` prints them at the end.

use std::io::Write;

/// The variable naming the file skips are appended to.
pub const FILE_VAR: &str = "CBS_TEST_SKIPS";

/// Reports that `part` was skipped and why: on stderr, and as one line
/// (naming the test) in the file `CBS_TEST_SKIPS` names, when it is set.
pub fn skipped(part: &str, why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    let line = format!("SKIPPED: {part}: {why} ({test})");
    eprintln!("{line}");
    let Some(path) = std::env::var_os(FILE_VAR) else {
        return;
    };
    // One short write in append mode: lines of parallel tests do not mix.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
    }
}
