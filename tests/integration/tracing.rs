//! Traces across hosts: spans exported over OTLP/HTTP (JSON) to a receiver
//! this test runs, sharing one trace id, linked parent to child across the
//! NATS hop.

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

/// (trace id, span id, parent span id, name, cell attribute) of every span.
fn spans(bodies: &[Value]) -> Vec<(String, String, String, String, String)> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let cell = span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "cell")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default();
                    let text = |k: &str| span[k].as_str().unwrap_or_default().to_owned();
                    out.push((
                        text("traceId"),
                        text("spanId"),
                        text("parentSpanId"),
                        text("name"),
                        cell.to_owned(),
                    ));
                }
            }
        }
    }
    out
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
    let cell_span = |cell: &str| {
        spans
            .iter()
            .find(|s| s.3 == "cell" && s.4 == cell)
            .unwrap_or_else(|| panic!("no span of cell {cell} in {spans:#?}"))
            .clone()
    };
    let edge = cell_span("io.prompt_name");
    assert!(!edge.0.is_empty());
    // Each step of a hop is a child span of the hop.
    for step in ["contract.input", "run", "contract.output"] {
        assert!(
            spans.iter().any(|s| s.3 == step && s.2 == edge.1),
            "no {step} span under the edge hop: {spans:#?}"
        );
    }
    for callee in ["logic.greet", "io.print_greeting"] {
        let span = cell_span(callee);
        assert_eq!(span.0, edge.0, "{callee}: one trace id across both hosts");
        // Its parent is an outbound span of host A, inside the edge hop.
        let outbound = spans
            .iter()
            .find(|s| s.1 == span.2)
            .unwrap_or_else(|| panic!("{callee}'s parent {} was not exported: {spans:#?}", span.2));
        assert_eq!(outbound.3, "outbound");
        // outbound → the edge hop's `run` span → the edge hop's `cell` span.
        let run = spans
            .iter()
            .find(|s| s.1 == outbound.2)
            .expect("the outbound span's parent");
        assert_eq!(run.3, "run");
        assert_eq!(
            run.2, edge.1,
            "the run span is a child of the edge cell's span"
        );
    }
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
            .filter(|s| s.3 == "cell" && s.4 == "logic.greet")
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
