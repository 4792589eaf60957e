//! The way in over HTTP, driven with the real `curl`: `cbs-host run --http`
//! serves the routes of its cells (`[[http]]`), maps each `BusError` to its
//! status with an RFC 9457 problem, continues or starts the caller's trace,
//! takes a deadline header as the flow's budget, refuses what it must
//! (no token, too large, not JSON, wrong method), speaks HTTP/1.1 and
//! HTTP/2, and drains on SIGTERM. `cbs gateway` serves the routes of the
//! whole lattice and follows deploys.

use std::path::PathBuf;
use std::time::Duration;

use cbs_host::chaos::ChaosSpec;
use cbs_host::http::route::{Auth, HttpRoute, Method};
use cbs_tests::bundles::greet_bundle;
use cbs_tests::cell_toml::CellToml;
use cbs_tests::curl::{curl, Response};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::raw_http;
use cbs_tests::{eventually, greet};
use serde_json::json;

const CALLER_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn route(method: Method, path: &str, auth: Auth) -> HttpRoute {
    HttpRoute {
        method,
        path: path.to_owned(),
        auth,
        summary: None,
    }
}

/// The test component as `test.http`, with routes to misbehave through.
fn faulty_cell(limits: impl FnOnce(&mut cbs_host::manifest::Limits)) -> tempfile::TempDir {
    CellToml::faulty("test.http")
        .limits(limits)
        .http(route(Method::Post, "/faulty", Auth::None))
        .http(route(Method::Post, "/private", Auth::Bearer))
        .write()
}

/// A host serving greet and the faulty cell over HTTP: (host, base URL).
fn host_with(extra: &[&str], cells: &[PathBuf]) -> (HostProcess, String) {
    let args = [&["--http", "127.0.0.1:0"][..], extra].concat();
    let host = HostProcess::local(cells, &args);
    let base = format!("http://{}", host.http_addr());
    (host, base)
}

fn post(url: &str, body: &str, extra: &[&str]) -> Response {
    let args = [
        &["-H", "Content-Type: application/json", "-d", body][..],
        extra,
        &[url],
    ]
    .concat();
    curl(&args)
}

fn assert_problem(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{r:?}"
    );
    let body = r.json();
    assert_eq!(body["status"], status);
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("urn:cbs:problem:{code}"));
}

#[test]
fn post_greet_answers_with_the_cells_reply_as_curl_sends_it() {
    let (_host, base) = host_with(&[], &[greet()]);
    // Exactly as the README shows it: curl's default content type for -d.
    let r = curl(&["-d", r#"{"name":"Ada"}"#, &format!("{base}/greet")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"greeting": "Hello, Ada!"}));
    assert!(r.header("x-correlation-id").is_some_and(|c| !c.is_empty()));
    // HTTP/2 on the same port (cleartext, prior knowledge).
    let r = curl(&[
        "--http2-prior-knowledge",
        "-d",
        r#"{"name":"Bo"}"#,
        &format!("{base}/greet"),
    ]);
    assert_eq!((r.protocol.as_str(), r.status), ("HTTP/2", 200), "{r:?}");
    assert_eq!(r.json()["greeting"], "Hello, Bo!");
}

#[test]
fn each_error_maps_to_its_status_and_a_problem() {
    let cell = faulty_cell(|l| {
        l.timeout_ms = 400;
        l.concurrency = 1;
        l.queue = 0;
    });
    let (_host, base) = host_with(&[], &[greet(), cell.path().to_path_buf()]);
    let greet_url = format!("{base}/greet");
    let faulty = format!("{base}/faulty");

    assert_problem(&post(&greet_url, "{not json", &[]), 400, "invalid_input");
    let r = post(&greet_url, r#"{"name": 5}"#, &[]);
    assert_problem(&r, 422, "contract_violation");
    assert_eq!(
        r.json()["errors"][0]["pointer"],
        "/name",
        "names the pointer"
    );
    assert!(
        r.json()["errors"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("type"),
        "and the rule"
    );
    let r = post(&faulty, r#"{"action": "fail", "message": "no"}"#, &[]);
    assert_problem(&r, 400, "invalid_input");
    assert_problem(
        &post(&faulty, r#"{"action": "panic"}"#, &[]),
        500,
        "cell_failed",
    );
    assert_problem(
        &post(&faulty, r#"{"action": "sleep", "ms": 2000}"#, &[]),
        504,
        "timeout",
    );

    // One message running, no queue: the next is `capacity`, retry later.
    let (busy, slow) = eventually_sync(|| while_one_runs(&faulty));
    assert_problem(&busy, 429, "capacity");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(slow.status, 200, "the message holding the slot: {slow:?}");

    // HTTP-level refusals.
    assert_eq!(curl(&[&format!("{base}/nowhere")]).status, 404);
    let r = curl(&[&greet_url]);
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = curl(&["-H", "Content-Type: text/xml", "-d", "<a/>", &greet_url]);
    assert_eq!(r.status, 415, "{r:?}");
}

#[test]
fn an_injected_failure_is_unavailable_with_retry_after() {
    let cell = CellToml::faulty("test.http")
        .chaos(ChaosSpec {
            error_rate: 1.0,
            ..Default::default()
        })
        .http(route(Method::Post, "/faulty", Auth::None))
        .write();
    let (_host, base) = host_with(&[], &[cell.path().to_path_buf()]);
    let r = post(
        &format!("{base}/faulty"),
        r#"{"action": "echo", "value": 1}"#,
        &[],
    );
    assert_problem(&r, 503, "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
}

/// Starts a 300 ms message on `faulty` and sends echoes while it runs.
/// Gives the first refused echo and the slow message's own response, or
/// `None` when no echo was refused while it ran (the slow one was late to
/// start, or lost the slot to an echo): then the caller tries again.
fn while_one_runs(faulty: &str) -> Option<(Response, Response)> {
    let slow = {
        let faulty = faulty.to_owned();
        std::thread::spawn(move || post(&faulty, r#"{"action": "sleep", "ms": 300}"#, &[]))
    };
    let mut refused = None;
    while refused.is_none() && !slow.is_finished() {
        let r = post(faulty, r#"{"action": "echo", "value": 1}"#, &[]);
        refused = (r.status == 429).then_some(r);
    }
    let slow = slow.join().expect("the slow request's thread");
    Some((refused?, slow))
}

/// Polls `f` (a blocking request) until it gives a value, up to 10 s.
fn eventually_sync<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(cbs_tests::POLL);
    }
}

#[test]
fn trace_and_correlation_headers_are_continued_and_returned() {
    let (_host, base) = host_with(&[], &[greet()]);
    let url = format!("{base}/greet");
    let r = post(
        &url,
        r#"{"name":"Ada"}"#,
        &[
            "-H",
            &format!("traceparent: {CALLER_TRACE}"),
            "-H",
            "X-Correlation-Id: order-42",
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-correlation-id"), Some("order-42"));
    let tp = r.header("traceparent").expect("a traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "the caller's trace: {tp}"
    );
    assert_ne!(tp, CALLER_TRACE, "a hop of its own");
    // A failure carries them too, in the headers and the problem.
    let r = post(
        &url,
        r#"{"name": 5}"#,
        &["-H", "X-Correlation-Id: order-43"],
    );
    assert_eq!(r.json()["correlation_id"], "order-43");
    // No trace from the caller: the gateway starts one.
    let r = post(&url, r#"{"name":"Ada"}"#, &["-H", "traceparent: garbage"]);
    let tp = r.header("traceparent").expect("a new trace");
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(!tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
}

#[test]
fn a_deadline_header_becomes_the_flows_budget() {
    let cell = faulty_cell(|l| l.timeout_ms = 10_000);
    let (_host, base) = host_with(&[], &[cell.path().to_path_buf()]);
    let url = format!("{base}/faulty");
    // The cell would answer after 3 s (within its own 10 s); the caller
    // gives it 200 ms.
    let r = post(
        &url,
        r#"{"action": "sleep", "ms": 3000}"#,
        &["-H", "X-Deadline-Ms: 200"],
    );
    assert_problem(&r, 504, "timeout");
    let r = post(
        &url,
        r#"{"action": "echo", "value": 1}"#,
        &["-H", "X-Deadline-Ms: 5000"],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_bearer_route_refuses_callers_without_an_accepted_token() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "# test tokens\ns3cret\n").unwrap();
    let jwt = cbs_tests::jwt::Issuer::new();
    let cell = faulty_cell(|_| {});
    let extra = [
        "--http-token-file",
        tokens.path().to_str().unwrap(),
        "--http-jwks",
        jwt.jwks_file(),
        "--http-jwt-audience",
        "cbs",
    ];
    let (_host, base) = host_with(&extra, &[cell.path().to_path_buf()]);
    let private = format!("{base}/private");
    let echo = r#"{"action": "echo", "value": 1}"#;
    for bad in [
        vec![],
        vec!["-H", "Authorization: Bearer wrong"],
        vec!["-H", "Authorization: Basic s3cret"],
    ] {
        let r = post(&private, echo, &bad);
        assert_eq!(r.status, 401, "{bad:?}: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let expired = jwt.token("cbs", -60);
    let other_audience = jwt.token("elsewhere", 600);
    for token in [
        expired,
        other_audience,
        format!("{}x", jwt.token("cbs", 600)),
    ] {
        let r = post(
            &private,
            echo,
            &["-H", &format!("Authorization: Bearer {token}")],
        );
        assert_eq!(r.status, 401, "{r:?}");
    }
    let ok = post(&private, echo, &["-H", "Authorization: Bearer s3cret"]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let good = jwt.token("cbs", 600);
    let ok = post(
        &private,
        echo,
        &["-H", &format!("Authorization: Bearer {good}")],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    // A route without auth takes no token.
    assert_eq!(post(&format!("{base}/faulty"), echo, &[]).status, 200);
}

#[test]
fn a_body_over_the_limit_is_refused() {
    let (_host, base) = host_with(&["--http-body-limit-kb", "1"], &[greet()]);
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2048));
    let r = post(&format!("{base}/greet"), &big, &[]);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let r = post(&format!("{base}/greet"), r#"{"name":"Ada"}"#, &[]);
    assert_eq!(r.status, 200, "the server serves on");
}

/// A host whose `/private` route takes JWTs for audience `cbs` from issuer
/// `https://issuer.test`: (host, URL of `/private`, the issuer, the
/// cell's folder).
fn jwt_host(
    extra: &[&str],
) -> (
    HostProcess,
    String,
    cbs_tests::jwt::Issuer,
    tempfile::TempDir,
) {
    let jwt = cbs_tests::jwt::Issuer::new();
    let cell = faulty_cell(|_| {});
    let args = [
        &[
            "--http-jwks",
            jwt.jwks_file(),
            "--http-jwt-audience",
            "cbs",
            "--http-jwt-issuer",
            "https://issuer.test",
        ][..],
        extra,
    ]
    .concat();
    let (host, base) = host_with(&args, &[cell.path().to_path_buf()]);
    (host, format!("{base}/private"), jwt, cell)
}

/// Claims the host of [`jwt_host`] accepts, valid for ten minutes.
fn good_claims() -> serde_json::Value {
    let now = cbs_tests::jwt::now();
    json!({"sub": "tester", "aud": "cbs", "iss": "https://issuer.test", "exp": now + 600})
}

fn with_bearer(url: &str, token: &str) -> Response {
    let auth = format!("Authorization: Bearer {token}");
    post(url, r#"{"action": "echo", "value": 1}"#, &["-H", &auth])
}

/// A 401 problem asking for a bearer token, whose detail names `why`.
fn assert_unauthorized(r: &Response, why: &str) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body = r.json();
    assert_eq!(body["status"], 401, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(why), "{why:?} not in {body}");
}

#[test]
fn a_jwt_without_aud_is_refused_when_an_audience_is_configured() {
    let (_host, private, jwt, _cell) = jwt_host(&[]);
    assert_eq!(with_bearer(&private, &jwt.sign(&good_claims())).status, 200);
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("aud");
    let r = with_bearer(&private, &jwt.sign(&claims));
    assert_unauthorized(&r, "Missing required claim: aud");
}

#[test]
fn a_jwt_without_iss_is_refused_when_an_issuer_is_configured() {
    let (_host, private, jwt, _cell) = jwt_host(&[]);
    assert_eq!(with_bearer(&private, &jwt.sign(&good_claims())).status, 200);
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("iss");
    let r = with_bearer(&private, &jwt.sign(&claims));
    assert_unauthorized(&r, "Missing required claim: iss");
}

#[test]
fn a_jwt_whose_nbf_is_in_the_future_is_refused() {
    let (_host, private, jwt, _cell) = jwt_host(&[]);
    let mut claims = good_claims();
    claims["nbf"] = json!(cbs_tests::jwt::now() - 1);
    assert_eq!(with_bearer(&private, &jwt.sign(&claims)).status, 200);
    claims["nbf"] = json!(cbs_tests::jwt::now() + 300);
    let r = with_bearer(&private, &jwt.sign(&claims));
    assert_unauthorized(&r, "ImmatureSignature");
}

#[test]
fn a_jwt_expired_longer_than_the_default_leeway_is_refused() {
    // The default is a few seconds, not the library's minute.
    let (_host, private, jwt, _cell) = jwt_host(&[]);
    let mut claims = good_claims();
    claims["exp"] = json!(cbs_tests::jwt::now() - 30);
    let r = with_bearer(&private, &jwt.sign(&claims));
    assert_unauthorized(&r, "ExpiredSignature");
}

#[test]
fn a_jwt_expired_within_the_configured_leeway_is_accepted_and_past_it_refused() {
    let (_host, private, jwt, _cell) = jwt_host(&["--http-jwt-leeway-secs", "120"]);
    let mut claims = good_claims();
    claims["exp"] = json!(cbs_tests::jwt::now() - 90);
    let r = with_bearer(&private, &jwt.sign(&claims));
    assert_eq!(r.status, 200, "90 s late, within 120: {r:?}");
    claims["exp"] = json!(cbs_tests::jwt::now() - 150);
    let r = with_bearer(&private, &jwt.sign(&claims));
    assert_unauthorized(&r, "ExpiredSignature");
}

#[test]
fn a_declared_content_length_over_the_limit_is_refused_before_the_body() {
    let (host, _base) = host_with(&["--http-body-limit-kb", "1"], &[greet()]);
    let mut stream = raw_http::connect(&host.http_addr());
    let request = "POST /greet HTTP/1.1\r\nHost: cbs.test\r\n\
                   Content-Type: application/json\r\n\
                   Content-Length: 1000000000000\r\n\r\n";
    let r = raw_http::exchange(&mut stream, request, Duration::from_secs(5))
        .expect("an answer without the body being sent");
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["status"], 413);
}

#[test]
fn a_connection_trickling_a_request_head_is_closed_after_the_header_timeout() {
    let (host, _base) = host_with(&["--http-header-timeout-secs", "2"], &[greet()]);
    let mut stream = raw_http::connect(&host.http_addr());
    let closed = raw_http::trickle_until_closed(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nX-Slow: ",
        b"a",
        Duration::from_secs(15),
    )
    .expect("closed while the head still trickled in");
    assert!(closed < Duration::from_secs(8), "closed after {closed:?}");
}

#[test]
fn a_connection_trickling_the_http2_preface_is_closed_after_the_header_timeout() {
    let (host, _base) = host_with(&["--http-header-timeout-secs", "2"], &[greet()]);
    let mut stream = raw_http::connect(&host.http_addr());
    let closed = raw_http::trickle_until_closed(
        &mut stream,
        b"P",
        b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(15),
    )
    .expect("closed while the preface still trickled in");
    assert!(closed < Duration::from_secs(8), "closed after {closed:?}");
}

#[test]
fn past_the_connection_limit_a_client_waits_until_a_connection_closes() {
    let extra = [
        "--http-max-connections",
        "2",
        "--http-header-timeout-secs",
        "60",
    ];
    let (host, _base) = host_with(&extra, &[greet()]);
    let addr = host.http_addr();
    let served = |stream: &mut std::net::TcpStream, within| {
        raw_http::exchange(stream, &raw_http::get("/healthz"), within).map(|r| r.status)
    };
    let mut held: Vec<_> = (0..2).map(|_| raw_http::connect(&addr)).collect();
    for stream in &mut held {
        assert_eq!(served(stream, Duration::from_secs(5)), Some(200));
    }
    let mut third = raw_http::connect(&addr);
    assert_eq!(
        served(&mut third, Duration::from_secs(2)),
        None,
        "a third connection is not served while two are held"
    );
    drop(held.pop());
    let answer = raw_http::response(&mut third, Duration::from_secs(10));
    assert_eq!(
        answer.map(|r| r.status),
        Some(200),
        "served once one closed"
    );
}

#[test]
fn sigterm_lets_a_request_in_progress_finish() {
    let cell = faulty_cell(|l| l.timeout_ms = 10_000);
    let (mut host, base) = host_with(&[], &[cell.path().to_path_buf()]);
    let url = format!("{base}/faulty");
    let slow = std::thread::spawn(move || post(&url, r#"{"action": "sleep", "ms": 1000}"#, &[]));
    host.wait_for_log("sleeping", Duration::from_secs(10));
    host.terminate();
    assert_eq!(
        slow.join().unwrap().status,
        200,
        "finished during the drain"
    );
    assert!(host.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn cors_preflight_names_the_allowed_origin() {
    let (_host, base) = host_with(&["--http-cors-origin", "https://app.example"], &[greet()]);
    let url = format!("{base}/greet");
    let r = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: POST",
        &url,
    ]);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example"),
        "{r:?}"
    );
    let r = post(
        &url,
        r#"{"name":"Ada"}"#,
        &["-H", "Origin: https://evil.example"],
    );
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
}

#[test]
fn openapi_describes_each_route_with_its_contract() {
    let cell = faulty_cell(|_| {});
    let (_host, base) = host_with(&[], &[greet(), cell.path().to_path_buf()]);
    let doc = curl(&[&format!("{base}/openapi.json")]).json();
    assert_eq!(doc["openapi"], "3.1.0");
    let greet_op = &doc["paths"]["/greet"]["post"];
    let schema = &greet_op["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        schema["required"],
        json!(["name"]),
        "the cell's input schema"
    );
    let reply = &greet_op["responses"]["200"]["content"]["application/json"]["schema"];
    assert!(reply["properties"]["greeting"].is_object(), "{reply}");
    assert!(greet_op["responses"]["422"].is_object());
    assert_eq!(
        doc["paths"]["/private"]["post"]["security"],
        json!([{"bearer": []}])
    );
}

/// A gateway over NATS serves what the lattice serves: a route appears
/// after `cbs deploy` and goes after `cbs undeploy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_deploys() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(dir.path());
    let _host = HostProcess::serve(&url, "h1", &[], &["--watch"]);
    let gateway = cbs_tests::process::Gateway::start(&url);
    let greet_url = format!("{}/greet", gateway.base());
    let status = |body: &str| post(&greet_url, body, &[]).status;
    assert_eq!(status(r#"{"name":"Ada"}"#), 404, "nothing deployed yet");
    let doc = curl(&[&format!("{}/openapi.json", gateway.base())]).json();
    assert_eq!(doc["paths"], json!({}), "no routes yet");

    let out = cbs(&["deploy", bundle.to_str().unwrap(), "--nats", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(20),
        "the route after deploy",
        || async {
            match status(r#"{"name":"Ada"}"#) {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            }
        },
    )
    .await;
    let doc = curl(&[&format!("{}/openapi.json", gateway.base())]).json();
    assert!(doc["paths"]["/greet"]["post"].is_object());

    let out = cbs(&["undeploy", "logic.greet", "--nats", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let openapi = format!("{}/openapi.json", gateway.base());
    eventually(
        Duration::from_secs(20),
        "the route gone after undeploy",
        || async {
            let doc = curl(&[&openapi]).json();
            match doc["paths"].get("/greet") {
                None => Ok(()),
                Some(_) => Err("/greet still in /openapi.json".to_owned()),
            }
        },
    )
    .await;
    // No route now (not a route whose cell stopped answering).
    let r = post(&greet_url, r#"{"name":"Ada"}"#, &[]);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["type"], "about:blank", "{r:?}");
}

/// A route whose cell stopped answering (its host killed, the gateway not
/// yet told) is `not_found`, and an open circuit on a cell's call out is
/// `circuit_open` with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_cell_is_not_found_and_an_open_circuit_is_unavailable() {
    let server = NatsServer::start();
    let url = server.url();
    let caller = CellToml::faulty("test.caller")
        .calls(&["test.flaky"])
        .policy("test.flaky", |p| p.breaker.failures = 1)
        .http(route(Method::Post, "/call", Auth::None))
        .write();
    let flaky = CellToml::faulty("test.flaky").write();
    let cells = [
        greet(),
        caller.path().to_path_buf(),
        flaky.path().to_path_buf(),
    ];
    let mut host = HostProcess::serve(&url, "h-vanish", &cells, &[]);
    // Told once at its start, then not for a minute.
    let gateway = cbs_tests::process::Gateway::refreshing(&url, 60_000);
    let through = |action: serde_json::Value| {
        json!({"action": "call", "cell": "test.flaky", "payload": action}).to_string()
    };
    let greet_url = format!("{}/greet", gateway.base());
    eventually(
        Duration::from_secs(20),
        "the gateway's first look",
        || async {
            match post(&greet_url, r#"{"name":"Ada"}"#, &[]).status {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            }
        },
    )
    .await;
    let call_url = format!("{}/call", gateway.base());
    let r = post(&call_url, &through(json!({"action": "panic"})), &[]);
    assert_problem(&r, 500, "cell_failed");
    let r = post(
        &call_url,
        &through(json!({"action": "echo", "value": 1})),
        &[],
    );
    assert_problem(&r, 503, "circuit_open");
    assert_eq!(r.header("retry-after"), Some("1"));

    host.kill();
    assert_problem(
        &post(&greet_url, r#"{"name":"Ada"}"#, &[]),
        404,
        "not_found",
    );
}

/// SIGTERM on `cbs gateway`: a request in progress through it finishes,
/// then the gateway exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_gateway_request_in_progress_finish() {
    let server = NatsServer::start();
    let url = server.url();
    let cell = faulty_cell(|l| l.timeout_ms = 10_000);
    let host = HostProcess::serve(&url, "h-drain", &[cell.path().to_path_buf()], &[]);
    let mut gateway = cbs_tests::process::Gateway::start(&url);
    let faulty = format!("{}/faulty", gateway.base());
    let echo = r#"{"action": "echo", "value": 1}"#;
    eventually(Duration::from_secs(20), "the gateway's route", || async {
        match post(&faulty, echo, &[]).status {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await;
    let slow = std::thread::spawn(move || post(&faulty, r#"{"action": "sleep", "ms": 1000}"#, &[]));
    host.wait_for_log("sleeping", Duration::from_secs(10));
    gateway.terminate();
    assert_eq!(
        slow.join().unwrap().status,
        200,
        "finished during the drain"
    );
    assert!(gateway.wait_exit(Duration::from_secs(15)).success());
}
