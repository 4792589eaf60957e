//! `pooled` reuses warm instances and retires them after a trap or N
//! messages; `fresh` gives every message a new instance.

use cbs_host::manifest::Policy;
use cbs_tests::{faulty, faulty_fresh, CellToml, TestHost};
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
