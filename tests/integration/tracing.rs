//! Traces across hosts: spans exported over OTLP/HTTP (JSON) to a receiver
//! this test runs, sharing one trace id, linked parent to child across the
//! NATS hop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cbs_host::bus::BodyBus;
use cbs_host::envelope::Envelope;
use cbs_host::outbound::to_message;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::HostProcess;
use cbs_tests::{faulty, greet};
use serde_json::value::RawValue;
use serde_json::{json, Value};

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
async fn a_flow_across_two_hosts_is_one_trace_with_parent_links() {
    let (otlp, bodies) = otlp_receiver();
    let server = NatsServer::start();
    let extra = ["--otlp", otlp.as_str()];
    let mut a = HostProcess::serve(&server.url(), "host-trace-a", &[faulty()], &extra);
    let mut b = HostProcess::serve(&server.url(), "host-trace-b", &[greet()], &extra);
    let client = server.bus().await;
    let payload = json!({"action": "call", "cell": "logic.greet", "payload": {"name": "Ada"}});
    let envelope = Envelope::new(
        "cbs.test.faulty",
        RawValue::from_string(payload.to_string()).unwrap(),
    );
    let reply = client
        .request(to_message(&envelope), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(Envelope::from_slice(&reply.payload)
        .unwrap()
        .error
        .is_none());

    // SIGTERM drains and flushes the exporters.
    for host in [&mut a, &mut b] {
        host.terminate();
        assert!(
            host.wait_exit(Duration::from_secs(15)).success(),
            "{}",
            host.log()
        );
    }
    let spans = spans(&bodies.lock().unwrap());
    let cell_span = |cell: &str| {
        spans
            .iter()
            .find(|s| s.3 == "cell" && s.4 == cell)
            .unwrap_or_else(|| panic!("no span of cell {cell} in {spans:#?}"))
            .clone()
    };
    let caller = cell_span("test.faulty");
    let callee = cell_span("logic.greet");
    assert!(!caller.0.is_empty());
    assert_eq!(caller.0, callee.0, "one trace id across both hosts");
    // The callee's parent is the caller's outbound span, itself a child of
    // the caller's cell span, all in host A's export.
    let outbound = spans.iter().find(|s| s.1 == callee.2).unwrap_or_else(|| {
        panic!(
            "the callee's parent {} was not exported: {spans:#?}",
            callee.2
        )
    });
    assert_eq!(outbound.3, "outbound");
    assert_eq!(
        outbound.2, caller.1,
        "outbound is a child of the caller's cell span"
    );
}
