//! Instructions per request (#33 item 2): a measure that does not move
//! with the machine's load, next to `overhead`'s timings. `make
//! bench-instructions` runs this program under valgrind's callgrind twice
//! per path, with `CBS_INSTR_N` requests and with five times more, and
//! divides the difference in instructions by the difference in requests:
//! start-up, loading and warm-up cancel out.
//!
//! Paths (`CBS_INSTR_PATH`): `local`, logic.greet pooled on the in-process
//! bus; `nats`, the same over a real nats-server (whose own instructions
//! are not counted: valgrind follows this process only). One request in
//! flight, the same payload as `overhead`.

use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::local::LocalBus;
use cbs_host::bus::BodyBus;
use cbs_tests::nats::NatsServer;
use cbs_tests::{call_json, greet, TestHost};
use serde_json::json;

/// The allocator `cbs-host` runs with (ADR 18): its instructions are
/// the ones the host spends.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP: usize = 50;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("CBS_INSTR_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let path = std::env::var("CBS_INSTR_PATH").unwrap_or_else(|_| "local".into());
    let server = (path == "nats").then(NatsServer::start);
    let (host_bus, client): (Arc<dyn BodyBus>, Arc<dyn BodyBus>) = match &server {
        Some(server) => (Arc::new(server.bus().await), Arc::new(server.bus().await)),
        None => {
            let bus: Arc<dyn BodyBus> = Arc::new(LocalBus::new());
            (bus.clone(), bus)
        }
    };
    let _host = TestHost::on(host_bus, &[greet()]).await;
    let payload = json!({"name": "Ada"});
    for i in 0..WARMUP + n {
        let reply = call_json(
            client.as_ref(),
            "logic.greet",
            payload.clone(),
            Duration::from_secs(30),
        )
        .await;
        if let Err(e) = reply {
            panic!("request {i} failed: {e}");
        }
    }
    println!("{path}: {n} requests after {WARMUP} to warm up");
}
