//! Bundles made the way a user makes them: `cbs new` a Rust cell, `cbs
//! build` it (cargo, wasm32-wasip2), edit it, build again. Built once per
//! test process; cargo's output is cached in the target dir across runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use cbs_host::bundle::Bundle;
use cbs_host::manifest::CellSpec;

use crate::{bin, greet, shared_cache};

/// The scaffolded cell's id; `{"text": "hi"}` → v1 `"HI"`, v2 `"HI!"`.
pub const UPPER: &str = "text.upper";

/// Two releases of one cell, same contract, different replies.
pub struct Releases {
    /// The scaffolded folder (as built for v2).
    pub dir: PathBuf,
    pub v1: PathBuf,
    pub v2: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Where the scaffolded cells' cargo builds go: kept between runs.
pub fn scaffold_target() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("scaffold-target")
}

/// `cbs` with the scaffold's cargo target dir and the shared component cache.
pub fn cbs_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("cbs"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .env("CBS_CACHE_DIR", shared_cache())
        .env("NO_COLOR", "1")
        .output()
        .expect("cbs runs")
}

/// Panics with the command's output unless it succeeded.
pub fn assert_ok(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// v1 and v2 of `text.upper`, built once per process.
pub fn releases() -> &'static Releases {
    static RELEASES: OnceLock<Releases> = OnceLock::new();
    RELEASES.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(UPPER);
        assert_ok(
            "cbs new",
            &cbs_in(tmp.path(), &["new", UPPER, "--dir", dir.to_str().unwrap()]),
        );
        // As made, the cell's unit tests pass.
        assert_ok("cargo test in the new cell", &cargo_test(&dir));
        let v1 = tmp.path().join("v1.cbs");
        assert_ok(
            "cbs build v1",
            &cbs_in(&dir, &["build", ".", "-o", v1.to_str().unwrap()]),
        );
        edit(
            &dir.join("src/lib.rs"),
            "text: \"HELLO\".into()",
            "text: \"HELLO!\".into()",
        );
        edit(
            &dir.join("src/lib.rs"),
            "text: input.text.to_uppercase(),",
            "text: format!(\"{}!\", input.text.to_uppercase()),",
        );
        bump(&dir, "0.1.0", "0.2.0");
        let v2 = tmp.path().join("v2.cbs");
        assert_ok(
            "cbs build v2",
            &cbs_in(&dir, &["build", ".", "-o", v2.to_str().unwrap()]),
        );
        Releases {
            dir,
            v1,
            v2,
            _tmp: tmp,
        }
    })
}

/// The scaffolded cell in `dir` from version `from` to `to` (its crate and
/// its cell.toml).
fn bump(dir: &Path, from: &str, to: &str) {
    for file in ["Cargo.toml", "cell.toml"] {
        edit(
            &dir.join(file),
            &format!("version = \"{from}\""),
            &format!("version = \"{to}\""),
        );
    }
}

/// Release 0.3.0 of [`UPPER`]: v2 with its reply's `length` renamed to
/// `size` (and its output schema with it). Built once per test process.
pub fn renamed() -> &'static Path {
    static RENAMED: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, bundle) = RENAMED.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(UPPER);
        let from = &releases().dir;
        for file in [
            "Cargo.toml",
            "cell.toml",
            "src/lib.rs",
            "schemas/input.json",
            "schemas/output.json",
        ] {
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::copy(from.join(file), dir.join(file)).unwrap();
        }
        edit(
            &dir.join("src/lib.rs"),
            "pub length: usize,",
            "pub size: usize,",
        );
        edit(
            &dir.join("src/lib.rs"),
            "length: input.text",
            "size: input.text",
        );
        let schema = dir.join("schemas/output.json");
        edit(&schema, "[\"text\", \"length\"]", "[\"text\", \"size\"]");
        edit(&schema, "\"length\": {", "\"size\": {");
        edit(
            &dir.join("Cargo.toml"),
            "version = \"0.2.0\"",
            "version = \"0.3.0\"",
        );
        edit(
            &dir.join("cell.toml"),
            "version = \"0.2.0\"",
            "version = \"0.3.0\"",
        );
        let bundle = tmp.path().join("renamed.cbs");
        assert_ok(
            "cbs build renamed",
            &cbs_in(&dir, &["build", ".", "-o", bundle.to_str().unwrap()]),
        );
        (tmp, bundle)
    });
    bundle
}

/// Replaces `from` (which must be there) by `to` in a file.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// `cargo test` in a scaffolded cell (host target, shared target dir).
pub fn cargo_test(dir: &Path) -> Output {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .output()
        .unwrap()
}

/// A copy of the greet cell without its crate: `cbs build` bundles the
/// component as it is (no compile).
pub fn prebuilt_greet(dir: &Path) {
    let src = greet();
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    for file in [
        "cell.toml",
        "logic_greet.wasm",
        "schemas/input.json",
        "schemas/output.json",
    ] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
}

/// `cbs build CELL -o OUT`, which must succeed; OUT.
pub fn build_bundle(cell: &Path, out: &Path) -> PathBuf {
    let args = ["build", cell.to_str().unwrap(), "-o", out.to_str().unwrap()];
    assert_ok("cbs build", &cbs_in(cell, &args));
    out.to_path_buf()
}

/// A folder `dir/id` of the test component as cell `id`, with `tables`
/// (TOML) after its manifest's first lines.
pub fn faulty_as(dir: &Path, id: &str, tables: &str) -> PathBuf {
    let cell = dir.join(id);
    std::fs::create_dir_all(&cell).unwrap();
    let wasm = crate::faulty().join("test_faulty.wasm");
    std::fs::copy(wasm, cell.join("test_faulty.wasm")).unwrap();
    let manifest =
        format!("id = \"{id}\"\nversion = \"0.1.0\"\ncomponent = \"test_faulty.wasm\"\n{tables}");
    std::fs::write(cell.join("cell.toml"), manifest).unwrap();
    cell
}

/// [`faulty_as`] at `version`, in `dir/<id>`, packed as a bundle
/// (`dir/<id up to its first dot>.cbs`: one per `dir`).
pub fn faulty_bundle(dir: &Path, id: &str, version: &str, tables: &str) -> PathBuf {
    let cell = faulty_as(dir, id, tables);
    edit(
        &cell.join("cell.toml"),
        "version = \"0.1.0\"",
        &format!("version = \"{version}\""),
    );
    pack(&cell)
}

/// A bundle of `logic.greet` in `dir` (the prebuilt component, no compile).
pub fn greet_bundle(dir: &Path) -> PathBuf {
    let cell = dir.join("greet");
    prebuilt_greet(&cell);
    build_bundle(&cell, &dir.join("greet.cbs"))
}

/// A variant of the built cell in `<tmp>/<name>`: its cell.toml (as
/// `version`), schemas and component (or `component` bytes instead).
pub fn variant(tmp: &Path, name: &str, version: &str, component: Option<&[u8]>) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    for file in [
        "cell.toml",
        "schemas/input.json",
        "schemas/output.json",
        "text_upper.wasm",
    ] {
        std::fs::copy(releases().dir.join(file), dir.join(file)).unwrap();
    }
    if let Some(bytes) = component {
        std::fs::write(dir.join("text_upper.wasm"), bytes).unwrap();
    }
    let version = format!("version = \"{version}\"");
    edit(&dir.join("cell.toml"), "version = \"0.2.0\"", &version);
    dir
}

/// Packs a cell folder into `<folder>.cbs`.
pub fn pack(dir: &Path) -> PathBuf {
    let bundle = Bundle::pack(&CellSpec::from_dir(dir).unwrap()).unwrap();
    let path = dir.with_extension("cbs");
    std::fs::write(&path, bundle.to_bytes().unwrap()).unwrap();
    path
}

/// v1's component with a new required input field, as `version`.
pub fn breaking_release(tmp: &Path, version: &str) -> PathBuf {
    let dir = variant(tmp, &format!("breaking-{version}"), version, None);
    edit(
        &dir.join("schemas/input.json"),
        "\"required\": [\"text\"]",
        "\"required\": [\"text\", \"lang\"]",
    );
    pack(&dir)
}
