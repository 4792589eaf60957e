//! `test.faulty`: a cell that misbehaves on request, for the host's
//! bad-input and isolation tests. Never deploy it.

use std::sync::atomic::{AtomicU64, Ordering};

use cbs_cell::{Cell, CellError, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Reply with the given value.
    Echo { value: Value },
    /// Reply with how many messages this instance has handled.
    Count,
    /// Panic: the instance traps.
    Panic,
    /// Spin forever: only the deadline stops it.
    Loop,
    /// Allocate and touch `mb` MiB of memory.
    Alloc { mb: usize },
    /// Reply with a payload that breaks the output schema.
    BadOutput,
    /// Fail with a typed error.
    Fail { message: String },
    /// Log "sleeping", then sleep `ms` milliseconds and reply.
    Sleep { ms: u64 },
    /// Request another cell and return its reply.
    Call { cell: String, payload: Value },
    /// Reply with a string of `bytes` bytes: a small request, a big reply.
    Big { bytes: usize },
    /// Read a file: its text, or `{"denied": why}`.
    ReadFile { path: String },
    /// Write "x" to a file: `true`, or `{"denied": why}`.
    WriteFile { path: String },
    /// An environment variable's value, or null.
    Env { name: String },
    /// Open a TCP connection: `true`, or `{"denied": why}`.
    Connect { addr: String },
    /// Send one UDP datagram to `addr`: `true`, or `{"denied": why}`.
    Udp { addr: String },
    /// Resolve a host name: its addresses, or `{"denied": why}`.
    Lookup { name: String },
    /// Ten readings of each clock: the wall clock's sub-second nanoseconds
    /// and the monotonic clock's step between two readings.
    Clocks,
    /// Set a state key to a text value.
    StateSet { key: String, value: String },
    /// A state key's text value, or null.
    StateGet { key: String },
    /// Delete a state key.
    StateDelete { key: String },
    /// Open the `wasi:keyvalue` store `store` and read `key` from it:
    /// the value, or `{"denied": why}`.
    StateOpen { store: String, key: String },
    /// Every state key.
    StateKeys,
    /// A sink that dedups on envelope id: counts in state how many times
    /// each message id was handled (one key per id, so hosts never
    /// contend for a key).
    Record,
    /// As `record`, and keep the message's correlation id and traceparent
    /// under `ctx/<message id>`.
    RecordEvent,
    /// Publish `payload` to `subject`.
    Publish { subject: String, payload: Value },
}

#[derive(Serialize)]
pub struct Reply {
    ok: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);

struct Faulty;

impl Cell for Faulty {
    const ID: &'static str = "test.faulty";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Input = Action;
    type Output = Reply;

    fn handle(action: Action, ctx: &Context) -> Result<Reply, CellError> {
        let count = HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
        let reply = |value| Reply {
            ok: Value::Bool(true),
            count: None,
            value,
        };
        match action {
            Action::Echo { value } => Ok(reply(Some(value))),
            Action::Count => Ok(Reply {
                count: Some(count),
                ..reply(None)
            }),
            Action::Panic => panic!("test.faulty was asked to panic"),
            Action::Loop => {
                let mut spins = 0u64;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            Action::Alloc { mb } => {
                let block = vec![1u8; mb << 20];
                Ok(reply(Some(Value::from(
                    block.iter().map(|&b| b as u64).sum::<u64>(),
                ))))
            }
            Action::BadOutput => Ok(Reply {
                ok: Value::from("not a boolean"),
                count: None,
                value: None,
            }),
            Action::Fail { message } => Err(CellError::invalid_input(message)),
            Action::Sleep { ms } => {
                ctx.info("sleeping");
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(reply(Some(Value::from(ms))))
            }
            Action::Big { bytes } => Ok(reply(Some(Value::from("x".repeat(bytes))))),
            Action::ReadFile { path } => Ok(reply(Some(outcome(std::fs::read_to_string(path))))),
            Action::WriteFile { path } => Ok(reply(Some(outcome(
                std::fs::write(path, "x").map(|()| true),
            )))),
            Action::Env { name } => Ok(reply(Some(Value::from(std::env::var(name).ok())))),
            Action::Connect { addr } => {
                let connected = std::net::TcpStream::connect(addr).map(|_| true);
                Ok(reply(Some(outcome(connected))))
            }
            Action::Udp { addr } => {
                let sent = std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|socket| socket.send_to(b"x", addr))
                    .map(|_| true);
                Ok(reply(Some(outcome(sent))))
            }
            Action::Lookup { name } => {
                use std::net::ToSocketAddrs;
                let found = (name.as_str(), 0)
                    .to_socket_addrs()
                    .map(|addrs| addrs.map(|a| a.ip().to_string()).collect::<Vec<_>>());
                Ok(reply(Some(outcome(found))))
            }
            Action::Clocks => Ok(reply(Some(clocks()))),
            Action::StateSet { key, value } => {
                ctx.state()?.set(&key, value.as_bytes())?;
                Ok(reply(None))
            }
            Action::StateGet { key } => {
                let value = ctx.state()?.get(&key)?;
                let text = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                Ok(reply(Some(Value::from(text))))
            }
            Action::StateDelete { key } => {
                ctx.state()?.delete(&key)?;
                Ok(reply(None))
            }
            Action::StateOpen { store, key } => Ok(reply(Some(open_store(&store, &key)))),
            Action::StateKeys => Ok(reply(Some(Value::from(ctx.state()?.keys()?)))),
            Action::Record => {
                let times = ctx.state()?.increment(ctx.message_id(), 1)?;
                Ok(reply(Some(Value::from(times))))
            }
            Action::RecordEvent => {
                let state = ctx.state()?;
                let times = state.increment(ctx.message_id(), 1)?;
                let seen = serde_json::json!({
                    "correlation_id": ctx.correlation_id(),
                    "traceparent": ctx.header("traceparent"),
                });
                state.set_json(&format!("ctx/{}", ctx.message_id()), &seen)?;
                Ok(reply(Some(Value::from(times))))
            }
            Action::Publish { subject, payload } => {
                ctx.publish(&subject, &payload)?;
                Ok(reply(None))
            }
            Action::Call { cell, payload } => {
                let value: Value = ctx.request(&cell, &payload)?;
                Ok(reply(Some(value)))
            }
        }
    }
}

/// Opens a store by name, bypassing the SDK, as a guessing cell would.
fn open_store(name: &str, key: &str) -> Value {
    use cbs_cell::bindings::wasi::keyvalue::store;
    let denied = |e: store::Error| serde_json::json!({ "denied": format!("{e:?}") });
    match store::open(name) {
        Ok(bucket) => match bucket.get(key) {
            Ok(value) => Value::from(value.map(|v| String::from_utf8_lossy(&v).into_owned())),
            Err(e) => denied(e),
        },
        Err(e) => denied(e),
    }
}

/// A value, or `{"denied": why}`.
fn outcome<T: Into<Value>>(result: std::io::Result<T>) -> Value {
    match result {
        Ok(v) => v.into(),
        Err(e) => serde_json::json!({ "denied": e.to_string() }),
    }
}

fn clocks() -> Value {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    let wall: Vec<u32> = (0..10)
        .map(|_| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            now.subsec_nanos()
        })
        .collect();
    let steps: Vec<u64> = (0..10)
        .map(|_| {
            let a = Instant::now();
            let b = Instant::now();
            b.duration_since(a).as_nanos() as u64
        })
        .collect();
    serde_json::json!({ "wall_subsec_ns": wall, "monotonic_steps_ns": steps })
}

cbs_cell::export_cell!(Faulty);
