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
            Action::Call { cell, payload } => {
                let value: Value = ctx.request(&cell, &payload)?;
                Ok(reply(Some(value)))
            }
        }
    }
}

cbs_cell::export_cell!(Faulty);
