//! End to end through the `cbs-host` binary, as a user runs it.

use std::collections::{BTreeSet, HashSet};

use cbs_tests::cell;
use cbs_tests::process::cbs_host;
use clap::CommandFactory;
use serde_json::Value;

const DEMO: [&str; 3] = [
    "cells/io.prompt_name",
    "cells/logic.greet",
    "cells/io.print_greeting",
];

fn demo_args<'a>(extra: &[&'a str], dirs: &'a [String]) -> Vec<&'a str> {
    let mut args = extra.to_vec();
    args.extend(dirs.iter().map(String::as_str));
    args
}

fn demo_dirs() -> Vec<String> {
    DEMO.iter().map(|d| cell(d).display().to_string()).collect()
}

#[test]
fn the_greeting_flow_prints_hello_with_one_correlation_id_across_hops() {
    let dirs = demo_dirs();
    let args = demo_args(
        &[
            "run",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--start",
            "io.prompt_name",
        ],
        &dirs,
    );
    let out = cbs_host(&args, "Ada\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, Ada!\n");

    // Every hop logs "handled" inside a span carrying cell and correlation_id.
    let mut cells = BTreeSet::new();
    let mut correlation_ids = HashSet::new();
    for line in stderr.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if event["message"] == "handled" {
            let span = &event["span"];
            cells.insert(span["cell"].as_str().unwrap().to_owned());
            correlation_ids.insert(span["correlation_id"].as_str().unwrap().to_owned());
        }
    }
    let expected: BTreeSet<String> = ["io.prompt_name", "logic.greet", "io.print_greeting"]
        .map(String::from)
        .into();
    assert_eq!(
        cells, expected,
        "each of the three hops was handled\n{stderr}"
    );
    assert_eq!(
        correlation_ids.len(),
        1,
        "one correlation id across all hops: {correlation_ids:?}"
    );
}

#[test]
fn an_empty_stdin_fails_the_flow_with_a_clear_error() {
    let dirs = demo_dirs();
    let out = cbs_host(&demo_args(&["run", "--start", "io.prompt_name"], &dirs), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid_input"), "{stderr}");
    assert!(stderr.contains("no name on stdin"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn load_prints_id_version_schemas_and_capabilities() {
    let dir = cell("cells/logic.greet").display().to_string();
    let out = cbs_host(&["load", &dir], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "logic.greet 0.1.0",
        "logic.greet/request@1",
        "logic.greet/reply@1",
        "cbs.logic.greet",
        "stdio: no",
        "memory 16 MiB",
        "pooled",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }

    let dir = cell("cells/io.prompt_name").display().to_string();
    let out = cbs_host(&["load", "--json", &dir], "");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["id"], "io.prompt_name");
    assert_eq!(json["capabilities"]["stdio"], true);
    assert_eq!(
        json["capabilities"]["calls"],
        serde_json::json!(["logic.greet", "io.print_greeting"])
    );
    assert_eq!(json["describe"]["input_schema"], "io.prompt_name/start@1");
}

#[test]
fn load_of_a_broken_manifest_exits_non_zero_naming_the_field() {
    // Text on purpose: a misspelt field is what the parser must catch.
    let dir = cbs_tests::literal_cell("id = \"a.b\"\nversion = \"1\"\nruntim = \"wasm\"\n");
    let out = cbs_host(&["load", dir.path().to_str().unwrap()], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `runtim`"), "{stderr}");
}

/// Every subcommand of both binaries, found by walking their clap
/// definitions: its `--help` runs, says what it does, and documents each of
/// its flags and arguments.
#[test]
fn help_documents_every_command() {
    let binaries = [
        ("cbs-host", cbs_cli::app::HostCli::command()),
        ("cbs", cbs_cli::app::CbsCli::command()),
    ];
    let mut checked = 0;
    for (bin, command) in binaries {
        for path in subcommand_paths(&command, Vec::new()) {
            let sub = path
                .iter()
                .fold(&command, |c, name| c.find_subcommand(name).unwrap());
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let out = std::process::Command::new(cbs_tests::bin(bin))
                .args(&args)
                .output()
                .unwrap();
            let help = String::from_utf8_lossy(&out.stdout);
            let shown = format!("`{bin} {}`:\n{help}", args.join(" "));
            assert!(out.status.success(), "{shown}");
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(!about.is_empty(), "{bin} {path:?} has no description");
            assert!(help.contains(&about), "{shown}");
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{bin} {path:?}: {id} has no help text"
                );
                let name = match (arg.get_long(), arg.get_value_names()) {
                    (Some(long), _) => format!("--{long}"),
                    (None, Some([value, ..])) => value.to_string(),
                    (None, _) => id.to_uppercase(),
                };
                assert!(
                    help.to_uppercase().contains(&name.to_uppercase()),
                    "{name} missing from {shown}"
                );
            }
            checked += 1;
        }
    }
    // run, load; new, build, keygen, deploy, rollback, undeploy, ls,
    // contract, contract check, call, ps, bench — and the top levels.
    assert!(checked >= 16, "only {checked} commands found");
}

/// The paths of `command`'s visible subcommands, itself first.
fn subcommand_paths(command: &clap::Command, path: Vec<String>) -> Vec<Vec<String>> {
    let mut paths = vec![path.clone()];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut next = path.clone();
        next.push(sub.get_name().to_owned());
        paths.extend(subcommand_paths(sub, next));
    }
    paths
}
