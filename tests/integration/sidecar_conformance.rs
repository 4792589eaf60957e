//! The sidecar protocol's conformance suite: the cases of
//! `tests/sidecars/conformance/cases.toml`, played by a fake host over
//! real pipes against every implementation that runs here — the Python
//! reference sidecar and the Python SDK's worker — and the Dart SDK where
//! `dart` is installed (reported as skipped elsewhere).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use cbs_tests::repo;
use serde::Deserialize;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The hello's `log_level`.
    #[serde(default = "info")]
    log_level: String,
    /// The hello's `max_frame_bytes`.
    #[serde(default = "max_frame_bytes")]
    max_frame_bytes: u32,
    steps: Vec<Step>,
}

fn info() -> String {
    "info".into()
}

fn max_frame_bytes() -> u32 {
    65536
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    send: Option<Value>,
    send_raw: Option<String>,
    /// Sends a frame one byte over the hello's `max_frame_bytes`.
    send_oversize: Option<bool>,
    expect: Option<Value>,
    logs: Option<Vec<String>>,
    answer: Option<Value>,
    answer_error: Option<Value>,
    expect_exit: Option<bool>,
}

/// How to start one implementation.
struct Implementation {
    name: &'static str,
    command: Vec<String>,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

/// One running sidecar, seen from the host's side of its pipes.
struct Session {
    child: Child,
    stdin: ChildStdin,
    frames: Receiver<Value>,
}

impl Session {
    fn start(imp: &Implementation) -> Self {
        let mut child = Command::new(&imp.command[0])
            .args(&imp.command[1..])
            .current_dir(&imp.dir)
            .envs(imp.env.iter().map(|(k, v)| (k, v)))
            .env("CBS_CELL_ID", "test.conformance")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start {:?}: {e}", imp.name, imp.command));
        let mut stdout = child.stdout.take().unwrap();
        let (tx, frames) = channel();
        std::thread::spawn(move || loop {
            let mut head = [0u8; 4];
            if stdout.read_exact(&mut head).is_err() {
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
            if stdout.read_exact(&mut body).is_err() {
                return;
            }
            let frame = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if tx.send(frame).is_err() {
                return;
            }
        });
        let stdin = child.stdin.take().unwrap();
        Self {
            child,
            stdin,
            frames,
        }
    }

    fn send_bytes(&mut self, body: &[u8]) {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        let _ = self.stdin.write_all(&bytes);
        let _ = self.stdin.flush();
    }

    fn send(&mut self, frame: &Value) {
        self.send_bytes(frame.to_string().as_bytes());
    }

    /// The next frame that is not a log line.
    fn next(&self) -> Result<Value, String> {
        Ok(self.next_with_logs()?.1)
    }

    /// The levels of the log frames before the next other frame, and it.
    fn next_with_logs(&self) -> Result<(Vec<String>, Value), String> {
        let mut levels = Vec::new();
        loop {
            let frame = self
                .frames
                .recv_timeout(WAIT)
                .map_err(|_| "no frame within 10 s".to_owned())?;
            if frame["type"] != "log" {
                return Ok((levels, frame));
            }
            levels.push(frame["level"].as_str().unwrap_or("?").to_owned());
        }
    }

    fn exited(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            std::thread::sleep(cbs_tests::POLL);
        }
        Err("the process did not exit within 10 s".into())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `actual` has every field of `expected` (recursively).
fn has(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            e.iter().all(|(k, v)| a.get(k).is_some_and(|av| has(av, v)))
        }
        _ => actual == expected,
    }
}

fn play(imp: &Implementation, case: &Case) -> Result<(), String> {
    let mut s = Session::start(imp);
    s.send(&json!({"type": "hello", "protocol": {"min": 1, "max": 1},
        "max_frame_bytes": case.max_frame_bytes,
        "cell": {"id": "test.conformance", "version": "0.1.0"}, "log_level": case.log_level}));
    let described = s.next()?;
    if !has(&described, &json!({"type": "describe", "protocol": 1})) {
        return Err(format!("the handshake answered {described}"));
    }
    for step in &case.steps {
        if let Some(frame) = &step.send {
            s.send(frame);
        }
        if let Some(text) = &step.send_raw {
            s.send_bytes(text.as_bytes());
        }
        if step.send_oversize == Some(true) {
            let mut body = vec![b' '; case.max_frame_bytes as usize + 1];
            body[0] = b'{';
            body[case.max_frame_bytes as usize] = b'}';
            s.send_bytes(&body);
        }
        if let Some(expected) = &step.expect {
            let (levels, got) = s.next_with_logs()?;
            if !has(&got, expected) {
                return Err(format!("expected {expected}, got {got}"));
            }
            if step.logs.as_ref().is_some_and(|want| *want != levels) {
                return Err(format!(
                    "expected logs {:?} before it, got {levels:?}",
                    step.logs
                ));
            }
        }
        for (answer, field) in [(&step.answer, "payload"), (&step.answer_error, "error")] {
            if let Some(answer) = answer {
                let request = s.next()?;
                if request["type"] != "request" {
                    return Err(format!("expected a request, got {request}"));
                }
                s.send(&json!({"type": "response", "id": request["id"], field: answer}));
            }
        }
        if step.expect_exit == Some(true) {
            s.exited()?;
        }
    }
    Ok(())
}

fn implementations() -> Vec<Implementation> {
    let sidecars = repo().join("tests/sidecars");
    let sdk = repo().join("guest-sdk/python").display().to_string();
    let mut all = vec![
        Implementation {
            name: "the Python reference sidecar",
            command: vec!["python3".into(), "reference.py".into()],
            dir: sidecars.join("reference"),
            env: vec![],
        },
        Implementation {
            name: "the Python SDK's worker",
            command: [
                "python3",
                "-m",
                "cbs_cell.worker",
                "--module",
                "conformance",
                "--threads",
                "4",
            ]
            .map(String::from)
            .to_vec(),
            dir: sidecars.join("conformance"),
            env: vec![("PYTHONPATH", sdk)],
        },
    ];
    let dart = sidecars.join("conformance/dart");
    if Command::new("dart").arg("--version").output().is_err() {
        cbs_tests::skips::skipped("the Dart SDK's conformance run", "dart is not on PATH");
        return all;
    }
    for args in [
        &["pub", "get"][..],
        &["compile", "exe", "bin/main.dart", "-o", "bin/conformance"],
    ] {
        let status = Command::new("dart")
            .args(args)
            .current_dir(&dart)
            .status()
            .unwrap();
        assert!(status.success(), "dart {args:?} in {}", dart.display());
    }
    all.push(Implementation {
        name: "the Dart SDK",
        command: vec![dart.join("bin/conformance").display().to_string()],
        dir: dart,
        env: vec![],
    });
    all
}

#[test]
fn every_sidecar_implementation_passes_every_case() {
    let text =
        std::fs::read_to_string(repo().join("tests/sidecars/conformance/cases.toml")).unwrap();
    let cases: Cases = toml::from_str(&text).expect("cases.toml parses");
    assert!(cases.case.len() >= 17, "the suite has its cases");
    let mut failures = Vec::new();
    for imp in implementations() {
        for case in &cases.case {
            if let Err(why) = play(&imp, case) {
                failures.push(format!("{}: {}: {why}", imp.name, case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
