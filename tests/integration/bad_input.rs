//! Bad input of every kind gets a precise, typed error — and the host keeps
//! serving its other cells afterwards.

use std::path::Path;
use std::sync::Arc;

use cbs_host::envelope::ErrorCode;
use cbs_tests::{faulty, greet, literal_cell, request_raw, CellToml, TestHost};
use serde_json::json;

async fn host() -> TestHost {
    TestHost::local(&[greet(), faulty()]).await
}

/// The other cell still answers, and so does the failing one.
async fn assert_still_serving(host: &TestHost) {
    let reply = host
        .call("logic.greet", json!({"name": "Ada"}))
        .await
        .unwrap();
    assert_eq!(reply["greeting"], "Hello, Ada!");
    let echo = host
        .call("test.faulty", json!({"action": "echo", "value": 1}))
        .await
        .unwrap();
    assert_eq!(echo["value"], 1);
}

#[tokio::test]
async fn malformed_envelope_json() {
    let host = host().await;
    for bad in [&b"{not json"[..], br#"{"v":1,"id":"x"}"#, br#"[1,2]"#] {
        let reply = request_raw(host.bus().as_ref(), "cbs.logic.greet", bad).await;
        let err = reply.error.expect("an error reply");
        assert_eq!(err.code, ErrorCode::InvalidInput, "{err}");
        assert!(err.message.contains("not a CBS envelope"), "{err}");
    }
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn payload_breaking_the_input_schema_names_the_pointer() {
    let host = host().await;
    let err = host
        .call("logic.greet", json!({"name": 42}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation);
    assert!(err.message.contains("at /name"), "{err}");
    assert!(err.message.contains("logic.greet/request@1"), "{err}");
    assert_eq!(
        err.details.unwrap()["errors"][0]["rule"],
        "/properties/name/type"
    );

    // Every violation is listed: the unknown property and the missing one.
    let err = host
        .call("logic.greet", json!({"nom": "Ada"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation);
    let details = err.details.clone().unwrap();
    let rules: Vec<&str> = details["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"/required"), "{rules:?}");
    assert!(rules.contains(&"/additionalProperties"), "{rules:?}");
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn reply_breaking_the_output_schema_is_caught() {
    let host = host().await;
    let err = host
        .call("test.faulty", json!({"action": "bad_output"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation);
    assert!(err.message.contains("output payload"), "{err}");
    assert!(err.message.contains("at /ok"), "{err}");
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn a_panicking_cell_traps_and_says_why() {
    let host = host().await;
    let err = host
        .call("test.faulty", json!({"action": "panic"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed);
    assert!(err.message.contains("trapped"), "{err}");
    assert!(
        err.message.contains("asked to panic"),
        "the panic message is reported: {err}"
    );
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn a_looping_cell_is_stopped_at_its_deadline_while_others_serve() {
    let host = Arc::new(host().await);
    let looping = {
        let host = host.clone();
        tokio::spawn(async move { host.call("test.faulty", json!({"action": "loop"})).await })
    };
    // While it spins, the other cell answers.
    let reply = host
        .call("logic.greet", json!({"name": "Ada"}))
        .await
        .unwrap();
    assert_eq!(reply["greeting"], "Hello, Ada!");
    assert!(
        !looping.is_finished(),
        "the loop should still be running (deadline 300 ms)"
    );

    let err = looping.await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout);
    assert!(err.message.contains("deadline"), "{err}");
    assert!(err.message.contains("300 ms"), "{err}");
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn memory_past_the_limit_fails_the_cell_not_the_host() {
    let host = host().await;
    let ok = host
        .call("test.faulty", json!({"action": "alloc", "mb": 4}))
        .await
        .unwrap();
    assert_eq!(ok["value"], 4 << 20, "an allocation within the limit works");
    let err = host
        .call("test.faulty", json!({"action": "alloc", "mb": 64}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CellFailed);
    assert!(err.message.contains("memory limit of 32 MiB"), "{err}");
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn a_typed_error_from_the_cell_passes_through() {
    let host = host().await;
    let err = host
        .call(
            "test.faulty",
            json!({"action": "fail", "message": "no such user"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
    assert_eq!(err.message, "no such user");
}

#[tokio::test]
async fn calling_a_cell_not_granted_is_refused() {
    let host = TestHost::local(&[
        greet(),
        faulty(),
        cbs_tests::cell("cells/io.print_greeting"),
    ])
    .await;
    let request =
        json!({"action": "call", "cell": "io.print_greeting", "payload": {"greeting": "x"}});
    let err = host.call("test.faulty", request).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ContractViolation);
    assert!(
        err.message.contains("may not call io.print_greeting"),
        "{err}"
    );
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn a_request_to_a_missing_cell_is_not_found() {
    let host = host().await;
    let request = json!({"action": "call", "cell": "logic.greet", "payload": {"name": "x"}});
    let lonely = TestHost::local(&[faulty()]).await;
    let err = lonely.call("test.faulty", request).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("cbs.logic.greet"), "{err}");
    assert_still_serving(&host).await;
}

#[tokio::test]
async fn a_full_queue_answers_capacity() {
    let dir = CellToml::faulty("test.narrow")
        .limits(|l| {
            l.timeout_ms = 2000;
            l.concurrency = 1;
            l.queue = 0;
        })
        .write();
    let host = Arc::new(TestHost::local(&[greet(), dir.path().to_path_buf()]).await);
    let busy = {
        let host = host.clone();
        tokio::spawn(async move { host.call("test.narrow", json!({"action": "loop"})).await })
    };
    cbs_tests::wait_until(
        std::time::Duration::from_secs(5),
        "the loop to start",
        || host.cell("test.narrow").stats.requests() == 1,
    )
    .await;
    let err = host
        .call("test.narrow", json!({"action": "echo", "value": 1}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Capacity, "{err}");
    assert!(err.message.contains("1 running and 0 queued"), "{err}");
    assert_eq!(busy.await.unwrap().unwrap_err().code, ErrorCode::Timeout);
    host.call("test.narrow", json!({"action": "echo", "value": 1}))
        .await
        .unwrap();
}

/// Why the cell folder `dir` does not load.
async fn load_error(dir: &Path) -> String {
    let host = TestHost::idle(None).await;
    match host.body().load(dir).await {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// Why `cell.toml` text does not load.
async fn text_load_error(manifest: &str) -> String {
    load_error(literal_cell(manifest).path()).await
}

/// These manifests are text on purpose: a typed builder cannot write an
/// unknown field or leave out a required one, and the parser is under test.
#[tokio::test]
async fn cell_toml_with_an_unknown_or_missing_field() {
    let err =
        text_load_error("id = \"a.b\"\nversion = \"1\"\ncomponent = \"x.wasm\"\nmemory = 3\n")
            .await;
    assert!(err.contains("unknown field `memory`"), "{err}");
    let err = text_load_error("id = \"a.b\"\ncomponent = \"x.wasm\"\n").await;
    assert!(err.contains("missing field `version`"), "{err}");
    let err = text_load_error(
        "id = \"a.b\"\nversion = \"1\"\ncomponent = \"x.wasm\"\n[limits]\ntimeout = 1\n",
    )
    .await;
    assert!(err.contains("unknown field `timeout`"), "{err}");
}

#[tokio::test]
async fn a_core_module_is_not_a_component() {
    let dir = CellToml::wasm("a.b", "core.wasm").write();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = load_error(dir.path()).await;
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
    assert!(
        err.contains("wasm32-wasip2"),
        "the error says what to do: {err}"
    );
}

#[tokio::test]
async fn a_component_of_another_world_is_refused() {
    let wasm = cbs_tests::repo().join("tests/cells/not-a-cell/not_a_cell.wasm");
    assert!(wasm.is_file(), "run `make cells` first");
    let err = load_error(CellToml::wasm("a.b", wasm).write().path()).await;
    assert!(
        err.contains("does not implement the cbs:cell world"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_component_says_how_to_build_it() {
    let err = load_error(CellToml::wasm("a.b", "nowhere.wasm").write().path()).await;
    assert!(err.contains("make build"), "{err}");
}
