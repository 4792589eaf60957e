//! Domain rows: one host in process serving three domains, and the same
//! nested call made three ways: `orders.front` calls `orders.back` inside
//! domain orders, which trusts its cells' calls (`trust_inside`: the
//! callee's contract is not checked, ADR 0029); `billing.front` calls
//! `billing.back` inside domain billing, which checks them; `shop.front`
//! (domain shop, which uses orders' export) calls `orders.back` across
//! domains, always checked. Every cell is the same test component; each
//! `back` checks an order of 20 lines in (`{"action":"echo","value":
//! order}`) and out (`{"value": order}`). Ratio: to the cross-domain row.

use std::path::Path;
use std::sync::Arc;

use cbs_host::bus::local::LocalBus;
use cbs_host::bus::BodyBus;
use cbs_tests::TestHost;
use serde_json::{json, Value};

use super::{measure, Row, CONCURRENCY};

/// An order: id, customer, address and 20 lines.
fn order() -> Value {
    let lines: Vec<Value> = (0..20)
        .map(|i| json!({"sku": format!("SKU-{i:05}"), "qty": i % 5 + 1, "price_cents": 199 + i * 10}))
        .collect();
    json!({
        "id": "ord-000123",
        "customer": {"id": "cus-42", "email": "ada@example.org"},
        "address": {"street": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH"},
        "lines": lines,
    })
}

fn order_schema() -> Value {
    let text = |pattern: &str| json!({"type": "string", "pattern": pattern});
    json!({
        "type": "object",
        "required": ["id", "customer", "address", "lines"],
        "additionalProperties": false,
        "properties": {
            "id": text("^ord-[0-9]{6}$"),
            "customer": {"type": "object", "required": ["id", "email"], "properties": {
                "id": text("^cus-"), "email": {"type": "string", "format": "email"}}},
            "address": {"type": "object", "required": ["street", "city", "postcode"], "properties": {
                "street": {"type": "string", "minLength": 1}, "city": {"type": "string", "minLength": 1},
                "postcode": {"type": "string", "maxLength": 10}}},
            "lines": {"type": "array", "minItems": 1, "maxItems": 100, "items": {
                "type": "object", "required": ["sku", "qty", "price_cents"], "additionalProperties": false,
                "properties": {"sku": text("^SKU-[0-9]{5}$"), "qty": {"type": "integer", "minimum": 1},
                    "price_cents": {"type": "integer", "minimum": 0}}}}
        }
    })
}

fn write(dir: &Path, name: &str, schema: &Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, schema.to_string()).unwrap();
    path
}

/// The host of `cbs_tests::domains::three`, each `back` checking an order
/// in and out.
async fn host(dir: &Path) -> (TestHost, Arc<dyn BodyBus>) {
    let bus: Arc<dyn BodyBus> = Arc::new(LocalBus::new());
    let builder = cbs_tests::domains::three(dir, bus.clone(), |toml, folder| {
        let input = json!({"type": "object", "required": ["action", "value"],
            "properties": {"action": {"const": "echo"}, "value": order_schema()}});
        let output = json!({"type": "object", "required": ["value"], "properties": {"value": order_schema()}});
        toml.input("bench/order-in@1", &write(folder, "in.json", &input))
            .output("bench/order-out@1", &write(folder, "out.json", &output))
    });
    (TestHost::start(builder, &[]).await, bus)
}

/// The three rows at each concurrency.
pub async fn domain_rows() -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let (_host, bus) = host(dir.path()).await;
    let call = |back: &str| {
        json!({"action": "call", "cell": back, "payload": {"action": "echo", "value": order()}})
            .to_string()
    };
    let (orders, billing) = (call("orders.back"), call("billing.back"));
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        let trusted = measure(&bus, "cbs.orders.front", &orders, concurrency).await;
        let checked = measure(&bus, "cbs.billing.front", &billing, concurrency).await;
        let across = measure(&bus, "cbs.shop.front", &orders, concurrency).await;
        let errors = trusted.errors + checked.errors + across.errors;
        assert_eq!(errors, 0, "the calls failed");
        let floor = across.rps;
        for (name, report) in [
            ("in-domain call, trust_inside", &trusted),
            ("in-domain call, checked", &checked),
            ("cross-domain call", &across),
        ] {
            rows.push(Row::of(name, "domain", concurrency, report, floor));
        }
    }
    rows
}
