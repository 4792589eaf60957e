//! Component tests: the demo cells as real components in the real engine,
//! served on the in-process bus.

use cbs_host::envelope::ErrorCode;
use cbs_host::runtime::wasm::CacheOutcome;
use cbs_tests::{faulty, greet, CellToml, TestHost};
use serde_json::json;

#[tokio::test]
async fn every_demo_cell_loads_and_describes_itself() {
    let cells = [
        "cells/io.prompt_name",
        "cells/logic.greet",
        "cells/io.print_greeting",
    ];
    let host = TestHost::local(&cells.map(cbs_tests::cell)).await;
    for dir in cells {
        let id = dir.trim_start_matches("cells/");
        let cell = host.cell(id);
        assert_eq!(cell.info().id, id);
        assert_eq!(cell.info().version, cell.manifest.version);
        assert_eq!(
            cell.info().input_schema.as_deref(),
            cell.manifest.input.as_ref().map(|s| s.id.as_str())
        );
        assert_eq!(
            cell.info().output_schema.as_deref(),
            cell.manifest.output.as_ref().map(|s| s.id.as_str())
        );
    }
}

#[tokio::test]
async fn greet_replies_with_a_typed_envelope() {
    let host = TestHost::local(&[greet()]).await;
    let reply = host.envelope("logic.greet", json!({"name": "Ada"})).await;
    assert!(reply.error.is_none(), "{:?}", reply.error);
    assert_eq!(reply.payload.get(), r#"{"greeting":"Hello, Ada!"}"#);
    assert_eq!(reply.schema.as_deref(), Some("logic.greet/reply@1"));
    assert!(
        reply.causation_id.is_some(),
        "a reply names the message that caused it"
    );
}

#[tokio::test]
async fn a_cell_calls_another_through_the_host_in_one_flow() {
    let host = TestHost::local(&[greet(), faulty()]).await;
    let request = json!({"action": "call", "cell": "logic.greet", "payload": {"name": "Grace"}});
    let reply = host.call("test.faulty", request).await.unwrap();
    assert_eq!(reply["value"], json!({"greeting": "Hello, Grace!"}));
}

#[tokio::test]
async fn calls_keep_the_callees_contract() {
    let host = TestHost::local(&[greet(), faulty()]).await;
    let request = json!({"action": "call", "cell": "logic.greet", "payload": {"name": 7}});
    let err = host.call("test.faulty", request).await.unwrap_err();
    // The callee's contract violation travels back through the caller.
    assert_eq!(err.code, ErrorCode::ContractViolation, "{err}");
    assert!(err.message.contains("/name"), "{err}");
}

#[tokio::test]
async fn second_load_comes_from_the_precompiled_cache() {
    let cache = tempfile::tempdir().unwrap();
    let load = || async {
        let host = TestHost::idle(Some(cache.path().to_path_buf())).await;
        host.body().load(&greet()).await.unwrap().cache
    };
    assert_eq!(load().await, Some(CacheOutcome::Compiled));
    assert_eq!(load().await, Some(CacheOutcome::Hit));
    let entries = std::fs::read_dir(cache.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("cwasm".as_ref()))
        .count();
    assert_eq!(entries, 1, "one entry per component and engine");
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let host = || TestHost::idle(Some(cache.path().to_path_buf()));
    host().await.body().load(&greet()).await.unwrap();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() == Some("cwasm".as_ref()) {
            std::fs::write(path, b"garbage").unwrap();
        }
    }
    let cell = host().await.body().load(&greet()).await.unwrap();
    assert_eq!(cell.cache, Some(CacheOutcome::Compiled));
}

/// The cache remembers each component file's digest by the file's identity;
/// a file replaced in place must not be served from the old entry.
#[tokio::test]
async fn a_changed_component_file_is_not_served_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cell = tempfile::tempdir().unwrap();
    let wasm = cell.path().join("cell.wasm");
    CellToml::wasm("logic.greet", "cell.wasm").write_to(cell.path());
    let load = || async {
        let host = TestHost::idle(Some(cache.path().to_path_buf())).await;
        let loaded = host.body().load(cell.path()).await.unwrap();
        (loaded.cache, loaded.info().id.clone())
    };
    std::fs::copy(greet().join("logic_greet.wasm"), &wasm).unwrap();
    assert_eq!(load().await.0, Some(CacheOutcome::Compiled));
    assert_eq!(load().await.0, Some(CacheOutcome::Hit));
    std::fs::copy(faulty().join("test_faulty.wasm"), &wasm).unwrap();
    let (outcome, described) = load().await;
    assert_eq!(outcome, Some(CacheOutcome::Compiled));
    assert_eq!(described, "test.faulty", "the new component runs");
    assert_eq!(load().await.0, Some(CacheOutcome::Hit));
}
