//! Traces across hosts: spans exported over OTLP/HTTP (JSON) to a receiver
//! this test runs, sharing one trace id, linked parent to child across the
//! NATS hop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs_host, cbs_host_with_env, HostProcess};
use cbs_tests::{cell, greet};
use serde_json::Value;

/// A minimal OTLP/HTTP receiver: keeps every request body (JSON).
fn otlp_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    // Request line and headers, then a Content-Length body.
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    if let Ok(json) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(json);
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
                }
            });
        }
    });
    (url, bodies)
}

/// One exported span, as the OTLP/HTTP JSON export has it.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    kind: u64,
    attributes: BTreeMap<String, String>,
    /// The resource's `service.instance.id`: which host made it.
    instance: String,
}

impl Span {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;
const CONSUMER: u64 = 5;

fn attributes(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let v = &a["value"];
            let value = v["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["intValue"].as_str().map(str::to_owned))
                .or_else(|| v["intValue"].as_i64().map(|n| n.to_string()))
                .unwrap_or_else(|| v.to_string());
            (a["key"].as_str().unwrap_or_default().to_owned(), value)
        })
        .collect()
}

/// Every span of every export.
fn spans(bodies: &[Value]) -> Vec<Span> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&rs["resource"]["attributes"]);
            let instance = resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let text = |k: &str| span[k].as_str().unwrap_or_default().to_owned();
                    out.push(Span {
                        trace: text("traceId"),
                        id: text("spanId"),
                        parent: text("parentSpanId"),
                        name: text("name"),
                        kind: span["kind"].as_u64().unwrap_or(0),
                        attributes: attributes(&span["attributes"]),
                        instance: instance.clone(),
                    });
                }
            }
        }
    }
    out
}

fn find<'a>(spans: &'a [Span], what: &str, pred: impl Fn(&Span) -> bool) -> &'a Span {
    spans
        .iter()
        .find(|s| pred(s))
        .unwrap_or_else(|| panic!("no span {what} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_flow_across_two_hosts_is_one_trace_with_parent_links() {
    let (otlp, bodies) = otlp_receiver();
    let server = NatsServer::start();
    let cells_b = [greet(), cell("cells/io.print_greeting")];
    let mut b = HostProcess::serve(&server.url(), "host-trace-b", &cells_b, &["--otlp", &otlp]);
    // Host A runs the edge cell once and exits, flushing its spans.
    let prompt = cell("cells/io.prompt_name").display().to_string();
    let args = [
        "run",
        "--nats",
        &server.url(),
        "--host-id",
        "host-trace-a",
        "--otlp",
        &otlp,
        "--start",
        "io.prompt_name",
        &prompt,
    ];
    let out = cbs_host(&args, "Ada\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.terminate();
    assert!(
        b.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        b.log()
    );

    let spans = spans(&bodies.lock().unwrap());
    // OpenTelemetry messaging conventions: one `process <subject>`
    // consumer span per message, made by the host that handled it.
    let process = |cell: &str| {
        let name = format!("process cbs.{cell}");
        find(&spans, &name, |s| s.name == name).clone()
    };
    let edge = process("io.prompt_name");
    assert!(!edge.trace.is_empty());
    assert_eq!(edge.kind, CONSUMER);
    assert_eq!(edge.attr("messaging.system"), "nats");
    assert_eq!(
        edge.attr("messaging.destination.name"),
        "cbs.io.prompt_name"
    );
    assert_eq!(edge.instance, "host-trace-a", "the span names its host");
    // Each step of a hop is a child span of the hop.
    for step in ["contract.input", "cell.handle", "contract.output"] {
        find(&spans, step, |s| s.name == step && s.parent == edge.id);
    }
    for callee in ["logic.greet", "io.print_greeting"] {
        let span = process(callee);
        assert_eq!(
            span.trace, edge.trace,
            "{callee}: one trace id across both hosts"
        );
        assert_eq!(span.instance, "host-trace-b");
        // Its parent is host A's client span, inside the edge hop's
        // `cell.handle`.
        let send = find(&spans, "the callee's parent", |s| s.id == span.parent);
        assert_eq!(send.name, format!("send cbs.{callee}"));
        assert_eq!(send.kind, CLIENT);
        assert_eq!(send.instance, "host-trace-a");
        let handle = find(&spans, "the send span's parent", |s| s.id == send.parent);
        assert_eq!(handle.name, "cell.handle");
        assert_eq!(
            handle.parent, edge.id,
            "the cell.handle span is a child of the edge cell's span"
        );
    }
}

/// An HTTP request through `cbs-host run --http` continues the caller's
/// trace: a server span `POST /greet`, its client span, and the cell's
/// `process` span, with the HTTP conventions' attributes.
#[test]
fn an_http_request_continues_the_callers_trace() {
    let (otlp, bodies) = otlp_receiver();
    let args = [
        "--http",
        "127.0.0.1:0",
        "--otlp",
        &otlp,
        "--host-id",
        "host-http",
    ];
    let mut host = HostProcess::local(&[greet()], &args);
    let url = format!("http://{}/greet", host.http_addr());
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = cbs_tests::curl::curl(&[
        "-d",
        r#"{"name":"Ada"}"#,
        "-H",
        &format!("traceparent: {caller}"),
        &url,
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    host.terminate();
    assert!(
        host.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        host.log()
    );

    let spans = spans(&bodies.lock().unwrap());
    let server = find(&spans, "POST /greet", |s| s.name == "POST /greet");
    assert_eq!(server.kind, SERVER);
    assert_eq!(
        server.trace, "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace"
    );
    assert_eq!(
        server.parent, "00f067aa0ba902b7",
        "the caller's span is its parent"
    );
    assert_eq!(server.attr("http.request.method"), "POST");
    assert_eq!(server.attr("http.route"), "/greet");
    assert_eq!(server.attr("http.response.status_code"), "200");
    assert_eq!(server.instance, "host-http");
    let send = find(&spans, "send", |s| s.parent == server.id);
    assert_eq!(
        (send.name.as_str(), send.kind),
        ("send cbs.logic.greet", CLIENT)
    );
    let process = find(&spans, "process", |s| s.parent == send.id);
    assert_eq!(
        (process.name.as_str(), process.kind),
        ("process cbs.logic.greet", CONSUMER)
    );
    assert_eq!(process.attr("messaging.system"), "cbs_in_process");
}

/// `cbs-host run --start logic.greet` with this environment, to completion
/// (which flushes its spans); panics unless it succeeds.
fn greet_flow(env: &[(&str, Option<&str>)]) {
    let greet = greet().display().to_string();
    let args = [
        "run",
        "--start",
        "logic.greet",
        "--input",
        r#"{"name":"Ada"}"#,
        &greet,
    ];
    let out = cbs_host_with_env(&args, "", env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without `--otlp`, `OTEL_EXPORTER_OTLP_ENDPOINT` names where spans go.
#[test]
fn without_otlp_a_host_exports_to_otel_exporter_otlp_endpoint() {
    let (otlp, bodies) = otlp_receiver();
    let greet_spans = || {
        spans(&bodies.lock().unwrap())
            .into_iter()
            .filter(|s| s.name == "process cbs.logic.greet")
            .count()
    };
    greet_flow(&[("OTEL_EXPORTER_OTLP_ENDPOINT", Some(otlp.as_str()))]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while greet_spans() == 0 {
        assert!(
            Instant::now() < deadline,
            "no span of logic.greet reached {otlp}: {:#?}",
            spans(&bodies.lock().unwrap())
        );
        std::thread::sleep(cbs_tests::POLL);
    }
}

/// `make run-polyglot`'s flow crosses every runtime in one trace: Rust
/// component → Python component → native Python with numpy → Rust → a
/// sidecar process → the Dart cell (where `dart` exists) → Rust, each hop
/// checked against its contract (its figures are checked in `python.rs`).
#[test]
fn the_polyglot_flow_crosses_every_runtime_in_one_trace() {
    let (otlp, bodies) = otlp_receiver();
    let dart = cbs_tests::dart_shout();
    let cells: Vec<String> = [
        "io.polyglot",
        "logic.describe",
        "logic.stats",
        "text.headline",
    ]
    .map(|c| cbs_tests::repo().join("cells").join(c))
    .into_iter()
    .chain(dart.clone())
    .map(|c| c.display().to_string())
    .collect();
    let input = r#"{"numbers": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]}"#;
    let args = [
        &[
            "run",
            "--otlp",
            &otlp,
            "--start",
            "io.polyglot",
            "--input",
            input,
        ][..],
        &cells.iter().map(String::as_str).collect::<Vec<_>>(),
    ]
    .concat();
    let out = cbs_host(&args, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.to_lowercase().contains(
            "11 numbers from 1 to 9: mean 4, median 4, standard deviation 2.256 (headline by a sidecar process)"
        ),
        "{stdout}"
    );

    let spans = spans(&bodies.lock().unwrap());
    let edge = find(&spans, "of io.polyglot", |s| {
        s.name == "process cbs.io.polyglot"
    });
    let mut hops = vec![
        ("logic.describe", "a Python component"),
        ("logic.stats", "the native Python pool"),
        ("text.headline", "a sidecar process"),
    ];
    if dart.is_some() {
        hops.push(("logic.shout", "a Dart sidecar"));
    }
    for (cell, runtime) in hops {
        let name = format!("process cbs.{cell}");
        let hop = find(&spans, &name, |s| s.name == name);
        assert_eq!(
            hop.trace, edge.trace,
            "{cell} ({runtime}) is in the flow's trace"
        );
        // Validated on the way in and out.
        for step in ["contract.input", "contract.output"] {
            find(&spans, step, |s| s.name == step && s.parent == hop.id);
        }
    }
}

/// A saga is one trace: each step's call is a `saga step` span of the
/// driving host, and the callee's `process` span its child, all with one
/// trace id (derived from the instance, so a host resuming it continues
/// the same trace); another instance is another trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_saga_is_one_trace_across_its_steps() {
    let (otlp, bodies) = otlp_receiver();
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let steps: String = ["first", "second", "third"]
        .map(|s| format!("      - name: {s}\n        call: logic.greet\n"))
        .concat();
    let spec = dir.path().join("domain.yaml");
    std::fs::write(
        &spec,
        format!(
            "domain: hello\ncells:\n  - folder: {}\nsagas:\n  - name: thrice\n    steps:\n{steps}",
            greet().display()
        ),
    )
    .unwrap();
    let mut host = HostProcess::serve(
        &url,
        "host-saga",
        &[],
        &["--watch", "--sagas", "--otlp", &otlp],
    );
    let run = |args: &[&str]| {
        let out = cbs_tests::process::cbs(&[args, &["--nats", &url]].concat());
        assert!(out.status.success(), "cbs {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    run(&["apply", spec.to_str().unwrap()]);
    let start = || {
        run(&[
            "saga",
            "start",
            "hello",
            "thrice",
            r#"{"name":"Ada"}"#,
            "--wait-ms",
            "0",
        ])
    };
    let (one, two) = (start(), start());
    // Each saga ends before the host flushes its spans on exit.
    cbs_tests::eventually(Duration::from_secs(30), "both sagas complete", || async {
        let listed: Value = serde_json::from_str(&run(&["saga", "ls", "--json"])).unwrap();
        let done = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["state"] == "completed")
            .count();
        match done {
            2 => Ok(()),
            n => Err(format!("{n} completed: {listed}")),
        }
    })
    .await;
    host.terminate();
    assert!(
        host.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        host.log()
    );

    let spans = spans(&bodies.lock().unwrap());
    let trace_of = |id: &str| {
        let steps: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == "saga step" && s.attr("saga.instance") == id)
            .collect();
        assert_eq!(steps.len(), 3, "a span per step of {id}: {spans:#?}");
        let trace = steps[0].trace.clone();
        for step in &steps {
            assert_eq!(step.trace, trace, "one trace across {id}'s steps");
            let callee = find(&spans, "the step's callee", |s| s.parent == step.id);
            assert_eq!(callee.name, "process cbs.logic.greet");
            assert_eq!(callee.trace, trace, "the callee is in the saga's trace");
            assert_eq!(callee.attr("messaging.message.conversation_id"), id);
        }
        trace
    };
    assert_ne!(
        trace_of(&one),
        trace_of(&two),
        "each instance its own trace"
    );
}
