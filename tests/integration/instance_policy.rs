//! `pooled` reuses warm instances and retires them after a trap or N
//! messages; `fresh` gives every message a new instance.

use cbs_host::manifest::{Policy, Scale};
use std::time::Duration;

use cbs_tests::{eventually, faulty, faulty_fresh, holds_for, CellToml, TestHost};
use serde_json::json;

async fn count(host: &TestHost, cell: &str) -> u64 {
    let reply = host.call(cell, json!({"action": "count"})).await.unwrap();
    reply["count"].as_u64().unwrap()
}

#[tokio::test]
async fn pooled_reuses_a_warm_instance_and_discards_it_after_a_trap() {
    let host = TestHost::local(&[faulty()]).await;
    // describe() at load ran on the first warm instance, without counting.
    assert_eq!(count(&host, "test.faulty").await, 1);
    assert_eq!(
        count(&host, "test.faulty").await,
        2,
        "the warm instance kept its state"
    );
    host.call("test.faulty", json!({"action": "panic"}))
        .await
        .unwrap_err();
    assert_eq!(
        count(&host, "test.faulty").await,
        1,
        "the trapped instance was retired: no stale state"
    );
}

#[tokio::test]
async fn pooled_retires_after_max_messages() {
    let dir = CellToml::faulty("test.short_lived")
        .instances(Policy::Pooled, 2)
        .write();
    let host = TestHost::local(&[dir.path().to_path_buf()]).await;
    // describe() at load is not a message: each instance handles exactly 2.
    assert_eq!(count(&host, "test.short_lived").await, 1);
    assert_eq!(count(&host, "test.short_lived").await, 2);
    assert_eq!(
        count(&host, "test.short_lived").await,
        1,
        "retired after 2 messages"
    );
    assert_eq!(count(&host, "test.short_lived").await, 2);
}

#[tokio::test]
async fn fresh_never_sees_the_previous_message() {
    let host = TestHost::local(&[faulty_fresh()]).await;
    for _ in 0..3 {
        assert_eq!(count(&host, "test.faulty_fresh").await, 1);
    }
    assert_eq!(host.cell("test.faulty_fresh").info().id, "test.faulty");
}

async fn wait_for_instances(host: &TestHost, cell: &str, want: usize) {
    let what = format!("{cell} to have {want} instances");
    eventually(Duration::from_secs(10), &what, || async {
        let live = host.cell(cell).runner.instances();
        (live == want)
            .then_some(())
            .ok_or(format!("{live} instances"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cell_scales_to_zero_and_the_first_message_brings_one_back() {
    let dir = CellToml::faulty("test.to_zero")
        .scale(Scale {
            min: Some(0),
            max: None,
            idle_ms: 500,
        })
        .write();
    let host = TestHost::local(&[dir.path().to_path_buf()]).await;
    wait_for_instances(&host, "test.to_zero", 0).await;
    assert_eq!(
        count(&host, "test.to_zero").await,
        1,
        "a new instance served it"
    );
    assert_eq!(
        host.cell("test.to_zero").runner.instances(),
        1,
        "kept warm for now"
    );
    wait_for_instances(&host, "test.to_zero", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instances_stay_between_min_and_max() {
    let dir = CellToml::faulty("test.scaled")
        .scale(Scale {
            min: Some(3),
            max: Some(4),
            idle_ms: 100,
        })
        .limits(|l| {
            l.concurrency = 8;
            l.timeout_ms = 5_000;
        })
        .write();
    let host = std::sync::Arc::new(TestHost::local(&[dir.path().to_path_buf()]).await);
    assert_eq!(
        host.cell("test.scaled").runner.instances(),
        3,
        "min made at load"
    );
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                host.call("test.scaled", json!({"action": "sleep", "ms": 200}))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for call in burst {
        call.await.unwrap();
    }
    let after = host.cell("test.scaled").runner.instances();
    assert!(
        (3..=4).contains(&after),
        "{after} warm after the burst: at most max are kept"
    );
    // Idle: back down to min, never below.
    wait_for_instances(&host, "test.scaled", 3).await;
    let min = || host.cell("test.scaled").runner.instances() == 3;
    holds_for(Duration::from_millis(300), "3 warm instances (min)", min).await;
}
