//! Component tests: the demo cells as real components in the real engine,
//! served on the in-process bus.

use cbs_host::envelope::ErrorCode;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::local::LocalBus;
use cbs_host::runtime::wasm::{CacheOutcome, Compiler, EngineOptions, Tier, WasmRuntime};
use cbs_tests::{eventually, faulty, greet, CellToml, TestHost};
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

/// A component missing from the cache serves at once from Winch's code,
/// switches to Cranelift's when the background compile is done, and that
/// code is what the cache keeps: the next host loads it optimized.
#[tokio::test]
async fn a_cold_component_serves_baseline_code_then_optimized_code_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let cold = TestHost::idle(Some(cache.path().to_path_buf())).await;
    let cell = cold.body().start(&greet()).await.unwrap();
    assert_eq!(cell.cache, Some(CacheOutcome::Baseline));
    assert_eq!(cell.runner.tier(), Some(Tier::Baseline));
    let hello = json!({"name": "Ada"});
    let baseline = cold.call("logic.greet", hello.clone()).await.unwrap();
    eventually(Duration::from_secs(60), "the optimized code", || async {
        match cell.runner.tier() {
            Some(Tier::Optimized) => Ok(()),
            other => Err(format!("tier {other:?}")),
        }
    })
    .await;
    let optimized = cold.call("logic.greet", hello.clone()).await.unwrap();
    assert_eq!(optimized, baseline, "both tiers answer alike");

    let warm = TestHost::idle(Some(cache.path().to_path_buf())).await;
    let cell = warm.body().start(&greet()).await.unwrap();
    assert_eq!(cell.cache, Some(CacheOutcome::Hit));
    assert_eq!(cell.runner.tier(), Some(Tier::Optimized));
    let entries = std::fs::read_dir(cache.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("cwasm".as_ref()))
        .count();
    assert_eq!(entries, 1, "one entry per component and engine");
}

/// A host that compiles with Cranelift at load (`--compiler optimized`),
/// caching in `cache`.
async fn optimizing(cache: &Path) -> TestHost {
    let options = EngineOptions {
        max_instances: 50,
        compiler: Compiler::Optimized,
        ..EngineOptions::default()
    };
    let runtime = Arc::new(WasmRuntime::new(&options, Some(cache.into())).unwrap());
    TestHost::start(
        cbs_tests::builder(Arc::new(LocalBus::new())).runtime(runtime),
        &[],
    )
    .await
}

/// `--compiler optimized`: Cranelift at load, nothing left to switch.
#[tokio::test]
async fn the_optimized_compiler_compiles_before_serving() {
    let cache = tempfile::tempdir().unwrap();
    let host = optimizing(cache.path()).await;
    let cell = host.body().start(&greet()).await.unwrap();
    assert_eq!(cell.cache, Some(CacheOutcome::Compiled));
    assert_eq!(cell.runner.tier(), Some(Tier::Optimized));
    host.call("logic.greet", json!({"name": "Ada"}))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_corrupt_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let host = || optimizing(cache.path());
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
        let host = optimizing(cache.path()).await;
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

/// Six cells on a host whose engine holds four instances: loading the last
/// two takes idle instances of the first; with all four busy, a message
/// that cannot get one before its deadline is refused with a typed
/// `capacity` error carrying a retry hint, never the engine's own error;
/// once the busy ones finish, every cell serves again.
#[tokio::test]
async fn a_host_at_its_instance_limit_lends_idle_instances_and_refuses_with_capacity() {
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids: Vec<String> = (0..6).map(|i| format!("test.limit{i}")).collect();
    for (i, dir) in dirs.iter().enumerate() {
        // The first four hold instances for long; the last two give up soon.
        let timeout_ms = if i < 4 { 5_000 } else { 300 };
        CellToml::faulty(&ids[i])
            .limits(|l| l.timeout_ms = timeout_ms)
            .write_to(dir.path());
    }
    let options = EngineOptions {
        max_instances: 4,
        ..EngineOptions::default()
    };
    let runtime = Arc::new(WasmRuntime::new(&options, Some(cbs_tests::shared_cache())).unwrap());
    let builder = cbs_tests::builder(Arc::new(LocalBus::new())).runtime(runtime);
    let cells: Vec<_> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
    let host = Arc::new(TestHost::start(builder, &cells).await);
    for id in &ids {
        let reply = host.call(id, json!({"action": "count"})).await;
        assert!(reply.is_ok(), "{id} serves: {reply:?}");
    }

    let holders: Vec<_> = ids[..4]
        .iter()
        .map(|id| {
            let (host, id) = (host.clone(), id.clone());
            tokio::spawn(async move {
                host.call(&id, json!({"action": "sleep", "ms": 1_500}))
                    .await
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "four busy instances", || async {
        let live = |id: &str| host.body().cell(id).unwrap().runner.instances();
        let busy = |id: &str| host.body().cell(id).unwrap().workers().busy;
        let state: Vec<(usize, u32)> = ids.iter().map(|id| (live(id), busy(id))).collect();
        let holding = state[..4].iter().all(|s| *s == (1, 1));
        let none_left = state[4..].iter().all(|(live, _)| *live == 0);
        if holding && none_left {
            Ok(())
        } else {
            Err(format!("(live, busy) per cell: {state:?}"))
        }
    })
    .await;

    let err = host
        .call(&ids[4], json!({"action": "count"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Capacity, "{err}");
    assert!(err.message.contains("instance limit"), "{err}");
    assert!(
        !err.message.contains("maximum concurrent"),
        "not the engine's error: {err}"
    );
    assert_eq!(
        err.details.as_ref().unwrap()["retry_after_ms"],
        100,
        "{err:?}"
    );

    for holder in holders {
        let reply = holder.await.unwrap();
        assert!(reply.is_ok(), "a holder finished: {reply:?}");
    }
    for id in &ids {
        let reply = host.call(id, json!({"action": "count"})).await;
        assert!(reply.is_ok(), "{id} serves again: {reply:?}");
    }
}

/// A cell warming up to more instances than the engine's pool holds takes
/// none of its own warm ones to make the next (which would never end): its
/// load fails, saying why, once the warm-up's deadline passes.
#[tokio::test]
async fn a_cell_wanting_more_warm_instances_than_the_pool_holds_fails_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let scale = cbs_host::manifest::Scale {
        min: Some(3),
        ..Default::default()
    };
    CellToml::faulty("test.greedy")
        .scale(scale)
        .write_to(dir.path());
    let options = EngineOptions {
        max_instances: 2,
        ..EngineOptions::default()
    };
    let runtime = Arc::new(WasmRuntime::new(&options, Some(cbs_tests::shared_cache())).unwrap());
    let host = TestHost::start(
        cbs_tests::builder(Arc::new(LocalBus::new())).runtime(runtime),
        &[],
    )
    .await;
    let load = tokio::time::timeout(Duration::from_secs(90), host.body().load(dir.path()));
    let err = match load.await {
        Ok(Err(e)) => format!("{e:#}"),
        Ok(Ok(_)) => panic!("three warm instances in a pool of two"),
        Err(_) => panic!("the warm-up never ended"),
    };
    assert!(err.contains("min warm instances"), "{err}");
}
