//! Bundles end to end, as a user drives them: `cbs new` → `cargo test` →
//! `cbs build` → `cbs-host load/run`; signatures and tampering; bare
//! components; `cbs contract check`; bundles of native Python cells (code
//! and a hashed lock) and of sidecars (their program, for a platform).

use cbs_host::bundle::{Bundle, KeyPair};
use cbs_host::manifest::CellSpec;
use cbs_tests::bundles::{
    assert_ok, cargo_test, cbs_in, edit, faulty_as, prebuilt_greet, releases, UPPER,
};
use cbs_tests::greet;
use cbs_tests::process::{cbs, cbs_host, cbs_host_with_env};
use cbs_tests::process_bundles::{
    bundled_sidecar, cbs_with_env, locked_python_cell, offline_pip, LOCKED, SIDECAR,
};
use serde_json::{json, Value};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn new_cell_tests_builds_and_loads() {
    let releases = releases();
    // `releases()` ran the new cell's tests as made; v2 changed the reply
    // and its test together.
    assert_ok("cargo test in the edited cell", &cargo_test(&releases.dir));

    let load = cbs_host(&["load", "--json", releases.v1.to_str().unwrap()], "");
    assert_ok("cbs-host load v1.cbs", &load);
    let info: Value = serde_json::from_slice(&load.stdout).unwrap();
    assert_eq!(info["id"], UPPER);
    assert_eq!(info["describe"]["version"], "0.1.0");
    assert_eq!(info["input"]["id"], "text.upper/request@1");

    let run = cbs_host(
        &[
            "run",
            "--log-level",
            "info",
            "--start",
            UPPER,
            "--input",
            r#"{"text":"hi"}"#,
            releases.v2.to_str().unwrap(),
        ],
        "",
    );
    assert_ok("cbs-host run v2.cbs", &run);
    assert!(
        stderr(&run).contains(r#"{"text":"HI!","length":2}"#),
        "{}",
        stderr(&run)
    );

    // The bundle's schema is enforced like a folder's.
    let bad = cbs_host(
        &[
            "run",
            "--start",
            UPPER,
            "--input",
            r#"{"txt":"hi"}"#,
            releases.v1.to_str().unwrap(),
        ],
        "",
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("contract_violation"),
        "{}",
        stderr(&bad)
    );
}

/// `cbs new --lang python` makes a cell whose unit tests pass, which
/// `cbs build` turns into a component bundle, and which runs as made.
#[test]
fn a_new_python_cell_tests_builds_and_runs_as_made() {
    let tmp = tempfile::tempdir().unwrap();
    assert_ok(
        "cbs new --lang python",
        &cbs_in(tmp.path(), &["new", "text.shout", "--lang", "python"]),
    );
    let cell = tmp.path().join("text.shout");
    let test = std::process::Command::new("python3")
        .args(["-m", "unittest", "-v"])
        .current_dir(&cell)
        .output()
        .unwrap();
    assert_ok("python3 -m unittest in the new cell", &test);
    assert!(String::from_utf8_lossy(&test.stderr).contains("Ran 2 tests"));
    let bundle = tmp.path().join("shout.cbs");
    assert_ok(
        "cbs build",
        &cbs_in(&cell, &["build", ".", "-o", bundle.to_str().unwrap()]),
    );
    let run = start_with_hi("text.shout", bundle.to_str().unwrap());
    assert_ok("cbs-host run the bundle", &run);
    assert!(
        stderr(&run).contains(r#"{"text": "HI", "length": 2}"#),
        "{}",
        stderr(&run)
    );
}

/// `cbs new --lang dart` makes a sidecar cell folder; where `dart` is
/// installed its tests pass, `cbs build` compiles and bundles it, and both
/// the folder and the bundle run as made.
#[test]
fn a_new_dart_cell_is_made_and_where_dart_exists_tests_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    assert_ok(
        "cbs new --lang dart",
        &cbs_in(tmp.path(), &["new", "text.loud", "--lang", "dart"]),
    );
    let cell = tmp.path().join("text.loud");
    for file in [
        "pubspec.yaml",
        "lib/text_loud.dart",
        "bin/main.dart",
        "test/cell_test.dart",
        "cell.toml",
    ] {
        assert!(cell.join(file).is_file(), "{file} missing");
    }
    let spec = cbs_host::manifest::CellSpec::from_dir(&cell).expect("a valid cell.toml");
    assert_eq!(spec.manifest.sidecar.unwrap().command, ["bin/text_loud"]);
    let has_dart = std::process::Command::new("dart")
        .arg("--version")
        .output()
        .is_ok();
    let bundle = tmp.path().join("loud.cbs");
    let build = cbs_in(
        tmp.path(),
        &[
            "build",
            cell.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    if !has_dart {
        assert!(!build.status.success());
        assert!(
            stderr(&build).contains("install the Dart SDK"),
            "{}",
            stderr(&build)
        );
        cbs_tests::skips::skipped(
            "building and running the new Dart cell",
            "dart is not on PATH",
        );
        return;
    }
    // `cbs build` compiled it with `dart compile exe`; the bundle runs.
    assert_ok("cbs build the Dart cell", &build);
    let cache = tmp.path().join("cache");
    let run = run_process_bundle(&cache, "text.loud", r#"{"text":"hi"}"#, &bundle);
    assert_ok("cbs-host run the Dart cell's bundle", &run);
    assert!(stderr(&run).contains(r#""length":2"#), "{}", stderr(&run));
    let dart = |args: &[&str]| {
        let out = std::process::Command::new("dart")
            .args(args)
            .current_dir(&cell)
            .output()
            .unwrap();
        assert_ok(&format!("dart {args:?}"), &out);
    };
    dart(&["pub", "get"]);
    dart(&["test"]);
    dart(&["compile", "exe", "bin/main.dart", "-o", "bin/text_loud"]);
    let run = start_with_hi("text.loud", cell.to_str().unwrap());
    assert_ok("cbs-host run the Dart cell", &run);
    assert!(stderr(&run).contains(r#""length":2"#), "{}", stderr(&run));
}

/// `cbs-host run --start CELL --input {"text":"hi"} TARGET`.
fn start_with_hi(cell: &str, target: &str) -> std::process::Output {
    let args = [
        "run",
        "--log-level",
        "info",
        "--start",
        cell,
        "--input",
        r#"{"text":"hi"}"#,
        target,
    ];
    cbs_host(&args, "")
}

#[test]
fn new_refuses_what_it_cannot_make() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cbs_in(tmp.path(), &["new", "Bad.Id"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid cell id"), "{}", stderr(&out));
    let out = cbs_in(tmp.path(), &["new", "x.y", "--lang", "cobol"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rust, python, dart"),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir(tmp.path().join("x.y")).unwrap();
    let out = cbs_in(tmp.path(), &["new", "x.y"]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn signed_bundles_only_under_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    prebuilt_greet(&tmp.path().join("greet"));
    assert_ok("cbs keygen", &cbs(&["keygen", &t("key")]));
    assert_ok("cbs keygen other", &cbs(&["keygen", &t("other")]));
    assert_ok(
        "cbs build --sign",
        &cbs_in(
            tmp.path(),
            &[
                "build",
                &t("greet"),
                "-o",
                &t("signed.cbs"),
                "--sign",
                &t("key"),
            ],
        ),
    );
    assert_ok(
        "cbs build unsigned",
        &cbs_in(
            tmp.path(),
            &["build", &t("greet"), "-o", &t("unsigned.cbs")],
        ),
    );
    assert_ok(
        "cbs build --sign other",
        &cbs_in(
            tmp.path(),
            &[
                "build",
                &t("greet"),
                "-o",
                &t("other.cbs"),
                "--sign",
                &t("other"),
            ],
        ),
    );
    let trust = t("key.pub");
    let load = |bundle: &str| cbs_host(&["load", "--trust", &trust, bundle], "");

    assert_ok("load the signed bundle", &load(&t("signed.cbs")));
    let refused = [
        (t("unsigned.cbs"), "is not signed"),
        (t("other.cbs"), "not one this host trusts"),
        (t("greet"), "is not a bundle"),
    ];
    for (path, why) in refused {
        let out = load(&path);
        assert_eq!(out.status.code(), Some(2), "{path} must be refused");
        assert!(stderr(&out).contains(why), "{path}: {}", stderr(&out));
    }
    // A signature of the right key over other content does not verify.
    let mut bundle = Bundle::read(&tmp.path().join("signed.cbs")).unwrap();
    let manifest = std::fs::read_to_string(tmp.path().join("greet/cell.toml")).unwrap();
    std::fs::write(
        tmp.path().join("greet/cell.toml"),
        manifest.replace("version = \"0.1.0\"", "version = \"0.1.1\""),
    )
    .unwrap();
    let changed = Bundle::pack(&CellSpec::from_dir(&tmp.path().join("greet")).unwrap()).unwrap();
    assert_ne!(changed.digest(), bundle.digest());
    let key = KeyPair::read(&tmp.path().join("key")).unwrap();
    bundle.sign(&key);
    let forged = forge(&changed, &bundle);
    std::fs::write(tmp.path().join("forged.cbs"), forged).unwrap();
    let out = load(&t("forged.cbs"));
    assert_eq!(
        out.status.code(),
        Some(2),
        "a forged bundle must be refused"
    );
    assert!(
        stderr(&out).contains("does not match its digest"),
        "{}",
        stderr(&out)
    );
}

/// `content`'s files with `signed`'s signature (an attacker's splice).
fn forge(content: &Bundle, signed: &Bundle) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(std::io::Cursor::new(content.to_bytes().unwrap()));
    let signed_bytes = signed.to_bytes().unwrap();
    let mut signed_archive = tar::Archive::new(std::io::Cursor::new(signed_bytes));
    let signature = signed_archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some("SIGNATURE.json"))
        .map(|mut e| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            v
        })
        .unwrap();
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, name, data).unwrap();
    };
    add("SIGNATURE.json", &signature);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        add(&name, &data);
    }
    out.into_inner().unwrap()
}

#[test]
fn tampered_and_corrupt_bundles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = Bundle::pack(&CellSpec::from_dir(&greet()).unwrap()).unwrap();
    let bytes = bundle.to_bytes().unwrap();
    // One byte changed in the middle of the component.
    let wasm = std::fs::read(greet().join("logic_greet.wasm")).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &wasm[wasm.len() / 2..wasm.len() / 2 + 64])
        .expect("the component is stored as is");
    let mut tampered = bytes.clone();
    tampered[at + 10] ^= 0x01;
    let path = tmp.path().join("tampered.cbs");
    std::fs::write(&path, &tampered).unwrap();
    let out = cbs_host(&["load", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("logic_greet.wasm has sha256"),
        "{}",
        stderr(&out)
    );

    let path = tmp.path().join("garbage.cbs");
    std::fs::write(&path, b"this is not a tar archive at all, just text.......").unwrap();
    let out = cbs_host(&["load", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("corrupt or not a CBS bundle"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bare_component_loads_with_its_describe() {
    let wasm = greet().join("logic_greet.wasm");
    let out = cbs_host(&["load", "--json", wasm.to_str().unwrap()], "");
    assert_ok("cbs-host load logic_greet.wasm", &out);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["id"], "logic.greet");
    assert_eq!(info["version"], "0.1.0");
    assert_eq!(info["input"], Value::Null, "no schema to check");
    let run = cbs_host(
        &[
            "run",
            "--log-level",
            "info",
            "--start",
            "logic.greet",
            "--input",
            r#"{"name":"Ada"}"#,
            wasm.to_str().unwrap(),
        ],
        "",
    );
    assert_ok("cbs-host run logic_greet.wasm", &run);
    assert!(stderr(&run).contains("Hello, Ada!"), "{}", stderr(&run));
}

fn check(old: &Value, new: &Value) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("old.json"), tmp.path().join("new.json"));
    std::fs::write(&a, old.to_string()).unwrap();
    std::fs::write(&b, new.to_string()).unwrap();
    let out = cbs(&[
        "contract",
        "check",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn contract_check_names_each_breaking_change() {
    let old = json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "number"},
            "mood": {"enum": ["happy", "sad"]}
        }
    });
    let mut optional = old.clone();
    optional["properties"]["email"] = json!({"type": "string"});
    let (ok, out) = check(&old, &optional);
    assert!(ok, "an added optional field is compatible: {out}");

    let mut required = optional.clone();
    required["required"] = json!(["name", "email"]);
    let (ok, out) = check(&old, &required);
    assert!(!ok);
    assert!(
        out.contains("/email") && out.contains("(required)"),
        "{out}"
    );

    let mut narrowed = old.clone();
    narrowed["properties"]["age"]["type"] = json!("integer");
    let (ok, out) = check(&old, &narrowed);
    assert!(!ok);
    assert!(out.contains("/age") && out.contains("(type)"), "{out}");

    let mut removed = old.clone();
    removed["properties"]["mood"]["enum"] = json!(["happy"]);
    let (ok, out) = check(&old, &removed);
    assert!(!ok);
    assert!(out.contains("/mood") && out.contains("\"sad\""), "{out}");
    assert!(out.starts_with("1 breaking change"), "{out}");
}

/// `cbs contract test` on a cell whose reply breaks its output schema for
/// one value of an enum: that branch fails, shrunk to the smallest input
/// that still fails and is still valid (`minProperties`, which only the
/// host's validator enforces, keeps `value`), every other case passes, and
/// the same seed gives the same report; a cell that keeps its contract
/// passes every case.
#[test]
fn a_generated_contract_test_finds_the_enum_branch_whose_reply_breaks_the_output_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.json");
    let output = tmp.path().join("output.json");
    let request = json!({
        "type": "object",
        "required": ["action"],
        "minProperties": 2,
        "properties": {
            "action": {"enum": ["echo", "count", "bad_output"]},
            "value": {"type": "string", "maxLength": 5}
        },
        "additionalProperties": false
    });
    std::fs::write(&input, request.to_string()).unwrap();
    let reply =
        json!({"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}});
    std::fs::write(&output, reply.to_string()).unwrap();
    let cell = cbs_tests::CellToml::faulty("test.contract")
        .input("test.contract/request@1", &input)
        .output("test.contract/reply@1", &output)
        .write();
    let dir = cell.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = cbs(&[&["contract", "test", dir, "--seed", "3"], args].concat());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), stdout)
    };
    let (ok, report) = run(&["--json"]);
    assert!(!ok, "the broken branch fails the run: {report}");
    let outcomes: Vec<Value> = serde_json::from_str(&report).unwrap();
    let failed: Vec<&Value> = outcomes.iter().filter(|o| o["passed"] == false).collect();
    assert!(!failed.is_empty(), "{report}");
    for o in &failed {
        assert_eq!(
            o["input"]["action"], "bad_output",
            "only that branch fails: {o}"
        );
        assert!(
            o["detail"]
                .as_str()
                .unwrap()
                .contains("breaks the output schema"),
            "{o}"
        );
        let smallest = o.get("shrunk").unwrap_or(&o["input"]);
        assert_eq!(
            smallest,
            &json!({"action": "bad_output", "value": ""}),
            "{o}"
        );
    }
    assert!(failed.iter().any(|o| o.get("shrunk").is_some()), "{report}");
    for action in ["echo", "count"] {
        assert!(
            outcomes
                .iter()
                .any(|o| o["input"]["action"] == action && o["passed"] == true),
            "the {action} branch is tested and passes: {report}"
        );
    }
    assert!(
        outcomes
            .iter()
            .any(|o| o["kind"] == "invalid" && o["passed"] == true),
        "invalid inputs are refused as they should be: {report}"
    );
    let (_, again) = run(&["--json"]);
    assert_eq!(report, again, "the same seed, the same cases and results");

    let good = cbs(&["contract", "test", greet().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{text}");
    assert!(text.contains(" 0 failed"), "{text}");
}

#[test]
fn build_refuses_a_component_or_schema_that_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("greet");
    prebuilt_greet(&dir);
    let not_a_cell = cbs_tests::repo().join("tests/cells/not-a-cell/not_a_cell.wasm");
    std::fs::copy(&not_a_cell, dir.join("logic_greet.wasm")).unwrap();
    let out = cbs_in(tmp.path(), &["build", dir.to_str().unwrap(), "-o", "x.cbs"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not implement the cbs:cell world"),
        "{}",
        stderr(&out)
    );

    prebuilt_greet(&dir);
    std::fs::write(dir.join("schemas/input.json"), r#"{"type": 12}"#).unwrap();
    let out = cbs_in(tmp.path(), &["build", dir.to_str().unwrap(), "-o", "x.cbs"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not compile"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("x.cbs").exists(), "no bundle is written");
}

#[test]
fn a_python_component_bundles_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cbs_tests::repo().join("cells/logic.describe");
    let out = tmp.path().join("describe.cbs");
    assert_ok(
        "cbs build cells/logic.describe",
        &cbs_in(
            tmp.path(),
            &["build", dir.to_str().unwrap(), "-o", out.to_str().unwrap()],
        ),
    );
    let load = cbs_host(&["load", "--json", out.to_str().unwrap()], "");
    assert_ok("cbs-host load describe.cbs", &load);
    let info: Value = serde_json::from_slice(&load.stdout).unwrap();
    assert_eq!(info["id"], "logic.describe");
    assert_eq!(
        info["describe"]["id"], "logic.describe",
        "describe() of the Python component"
    );
}

/// The venvs built under a cache folder: complete ones, and leftovers of
/// builds (`.build-*`).
fn venvs_in(cache: &std::path::Path) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(cache.join("python-venvs")) else {
        return (0, 0);
    };
    let names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let leftovers = names.iter().filter(|n| n.starts_with(".build-")).count();
    let ready = names
        .iter()
        .filter(|n| {
            cache
                .join("python-venvs")
                .join(n)
                .join(".cbs-ready")
                .is_file()
        })
        .count();
    (ready, leftovers)
}

/// `cbs-host run --allow-process-bundles --start CELL --input INPUT BUNDLE`
/// with the test's cache folder and offline pip.
fn run_process_bundle(
    cache: &std::path::Path,
    cell: &str,
    input: &str,
    bundle: &std::path::Path,
) -> std::process::Output {
    let args = [
        "run",
        "--log-level",
        "info",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--allow-process-bundles",
        "--start",
        cell,
        "--input",
        input,
        bundle.to_str().unwrap(),
    ];
    cbs_host_with_env(&args, "", offline_pip())
}

#[test]
fn a_native_python_cell_bundles_its_code_and_lock_and_runs_on_a_venv_built_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("locked.cbs");
    let cell = cbs_tests::repo().join("tests/cells/py-locked");
    let build = cbs_with_env(
        tmp.path(),
        &[
            "build",
            cell.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        offline_pip(),
    );
    assert_ok("cbs build tests/cells/py-locked", &build);
    assert!(
        stderr(&build).contains("starting the cell from its bundle"),
        "{}",
        stderr(&build)
    );
    let bundle = Bundle::read(&out).unwrap();
    let files: Vec<&str> = bundle.manifest.files.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        [
            "cell.toml",
            "requirements.lock",
            "schemas/input.json",
            "schemas/output.json",
            "words.py"
        ],
        "the code and the lock, no venv or caches"
    );
    assert_eq!(bundle.manifest.platform, None, "Python code runs anywhere");
    assert_eq!(venvs_in(&cache), (1, 0), "cbs build built the lock's venv");

    let run = run_process_bundle(&cache, LOCKED, r#"{"word":"ada"}"#, &out);
    assert_ok("cbs-host run locked.cbs", &run);
    assert!(
        stderr(&run).contains(r#""shout": "ADA!""#),
        "{}",
        stderr(&run)
    );
    assert!(
        !stderr(&run).contains("building the Python venv"),
        "the host reuses the venv of the same lock: {}",
        stderr(&run)
    );
    assert_eq!(venvs_in(&cache), (1, 0));
    // Python wrote no byte code into the unpacked bundle, so running it
    // again reuses the folder as it is.
    let unpacked = cache
        .join("bundles")
        .join(bundle.digest().trim_start_matches("sha256:"));
    assert!(unpacked.join("words.py").is_file());
    assert!(!unpacked.join("__pycache__").exists());
    let again = run_process_bundle(&cache, LOCKED, r#"{"word":"bo"}"#, &out);
    assert_ok("cbs-host run locked.cbs again", &again);
    assert!(
        !stderr(&again).contains("differs from its bundle"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_host_refuses_a_bundled_lock_whose_hashes_do_not_match() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = locked_python_cell(tmp.path(), "0.1.0");
    // A well-formed lock naming another file's hash: the fixture wheel is
    // not what the lock says.
    let lock = dir.join("requirements.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    let real = text.split("sha256:").nth(1).unwrap()[..64].to_owned();
    std::fs::write(&lock, text.replace(&real, &"0".repeat(64))).unwrap();
    let out = tmp.path().join("forged.cbs");
    let bundle = Bundle::pack(&CellSpec::from_dir(&dir).unwrap()).unwrap();
    std::fs::write(&out, bundle.to_bytes().unwrap()).unwrap();

    let run = run_process_bundle(&cache, LOCKED, r#"{"word":"ada"}"#, &out);
    assert!(
        !run.status.success(),
        "the host ran a lock that does not match"
    );
    assert!(
        stderr(&run).contains("does not match the lock's hashes"),
        "{}",
        stderr(&run)
    );
    assert_eq!(
        venvs_in(&cache),
        (0, 0),
        "no venv, not even half of one, is left"
    );
}

#[test]
fn cbs_build_refuses_python_requirements_that_are_not_a_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = locked_python_cell(tmp.path(), "0.1.0");
    std::fs::write(dir.join("requirements.lock"), "cbs-fixture-words>=1\n").unwrap();
    let out = cbs_in(tmp.path(), &["build", dir.to_str().unwrap(), "-o", "x.cbs"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("must be a lock") && err.contains("not pinned with =="),
        "{err}"
    );
    assert!(
        err.contains("pip-compile --generate-hashes"),
        "says how to make one: {err}"
    );
    assert!(!tmp.path().join("x.cbs").exists());
}

/// What a builder keeps beside the cell folder it builds.
const BUILDERS_SECRET: &str = "the builder's own secret, 7f3a9c";

/// `cbs build` of a sidecar folder holding `link` → `target` (named in
/// `[bundle] files`), with `outside/secret.txt` beside the folder; the
/// build must fail and no file it wrote may hold the secret. Its stderr.
fn build_through_a_link(tmp: &std::path::Path, link: &str, target: &str) -> String {
    std::fs::create_dir(tmp.join("outside")).unwrap();
    std::fs::write(tmp.join("outside/secret.txt"), BUILDERS_SECRET).unwrap();
    // For another platform: built and checked, not started.
    let dir = bundled_sidecar(tmp, 1, Some("plan9-mips"));
    std::os::unix::fs::symlink(target, dir.join(link)).unwrap();
    edit(
        &dir.join("cell.toml"),
        "files = [\"reference.py\"]",
        &format!("files = [\"reference.py\", \"{link}\"]"),
    );
    let out = cbs_in(tmp, &["build", dir.to_str().unwrap(), "-o", "linked.cbs"]);
    assert!(
        !out.status.success(),
        "cbs build packed a link out of the cell folder"
    );
    assert_no_file_holds_the_secret(tmp);
    stderr(&out)
}

/// Every file under `dir` but the secret itself (links not followed).
fn assert_no_file_holds_the_secret(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let path = entry.path();
        if kind.is_dir() {
            assert_no_file_holds_the_secret(&path);
        } else if kind.is_file() && !path.ends_with("outside/secret.txt") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(BUILDERS_SECRET.len())
                    .any(|w| w == BUILDERS_SECRET.as_bytes()),
                "{} holds the builder's secret",
                path.display()
            );
        }
    }
}

#[test]
fn cbs_build_refuses_a_file_link_out_of_the_cell_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = build_through_a_link(tmp.path(), "notes.txt", "../outside/secret.txt");
    assert!(
        err.contains("notes.txt is a symbolic link to ../outside/secret.txt")
            && err.contains("outside the cell folder"),
        "{err}"
    );
}

#[test]
fn cbs_build_refuses_a_folder_link_out_of_the_cell_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = build_through_a_link(tmp.path(), "data", "../outside");
    assert!(
        err.contains("data is a symbolic link to ../outside")
            && err.contains("outside the cell folder"),
        "{err}"
    );
}

#[test]
fn a_sidecar_bundle_carries_its_program_and_runs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = bundled_sidecar(tmp.path(), 1, None);
    let out = tmp.path().join("sidecar.cbs");
    let build = cbs_in(
        tmp.path(),
        &[
            "build",
            dir.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    assert_ok("cbs build the sidecar", &build);
    let bundle = Bundle::read(&out).unwrap();
    assert!(
        bundle.manifest.files.contains_key("bin/run"),
        "{:?}",
        bundle.manifest.files
    );
    assert!(
        bundle.manifest.files.contains_key("reference.py"),
        "[bundle] files"
    );
    assert_eq!(
        bundle.manifest.platform.as_deref(),
        Some(cbs_host::platform::current().as_str()),
        "a bundled program is native code for the machine that built it"
    );
    // The program was never executable in the cell folder: the host makes
    // it so when it unpacks the bundle.
    let run = run_process_bundle(&cache, SIDECAR, r#"{"action":"env"}"#, &out);
    assert_ok("cbs-host run sidecar.cbs", &run);
    assert!(
        stderr(&run).contains(r#""RELEASE": "1""#),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_sidecar_bundle_for_another_platform_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = bundled_sidecar(tmp.path(), 1, Some("plan9-mips"));
    let out = tmp.path().join("elsewhere.cbs");
    let build = cbs_in(
        tmp.path(),
        &["build", dir.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    assert_ok("cbs build for another platform", &build);
    assert!(
        stderr(&build).contains("not started here"),
        "{}",
        stderr(&build)
    );
    assert_eq!(
        Bundle::read(&out).unwrap().manifest.platform.as_deref(),
        Some("plan9-mips")
    );

    let run = run_process_bundle(&cache, SIDECAR, r#"{"action":"env"}"#, &out);
    assert!(!run.status.success());
    let err = stderr(&run);
    let here = cbs_host::platform::current();
    assert!(
        err.contains(&format!(
            "holds native code for plan9-mips, and this host is {here}"
        )),
        "{err}"
    );
    assert!(
        !cache.join("bundles").exists()
            || std::fs::read_dir(cache.join("bundles")).unwrap().count() == 0,
        "refused before unpacking"
    );
}

/// Unpacked bundles are bounded: past the bound, loading another removes
/// the least recently used folders, but never one a loaded cell runs from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpacked_bundles_past_their_bound_go_unless_a_cell_runs_from_them() {
    use cbs_host::body::Sources;
    use cbs_host::bus::local::LocalBus;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut sources = Sources::in_dir(&cache, Default::default(), false);
    sources.unpack_max_bytes = 1; // room for none but those in use
    let builder = cbs_tests::builder(std::sync::Arc::new(LocalBus::new())).sources(sources);
    let host = cbs_tests::TestHost::start(builder, &[]).await;
    let body = host.body();
    let [a, b, c] = ["test.a", "test.b", "test.c"].map(|id| {
        Bundle::pack(&CellSpec::from_dir(&faulty_as(tmp.path(), id, "")).unwrap()).unwrap()
    });
    let unpacked = |bundle: &Bundle| {
        cache
            .join("bundles")
            .join(bundle.digest().trim_start_matches("sha256:"))
    };

    let cell_a = body.load_bundle(&a).await.unwrap();
    let _cell_b = body.load_bundle(&b).await.unwrap();
    assert!(unpacked(&a).is_dir(), "a loaded cell runs from it");
    assert!(unpacked(&b).is_dir());
    drop(cell_a);
    let _cell_c = body.load_bundle(&c).await.unwrap();
    assert!(!unpacked(&a).exists(), "no cell runs from it: removed");
    assert!(unpacked(&b).is_dir() && unpacked(&c).is_dir());
    // Loaded again, it is unpacked again.
    let _cell_a = body.load_bundle(&a).await.unwrap();
    assert!(unpacked(&a).join("test_faulty.wasm").is_file());
}
