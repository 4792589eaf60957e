//! One running sidecar process: its frame writer and reader, the messages
//! in flight on it, and how it dies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::Encoder;

use super::frame::{FrameCodec, FrameError, FrameReader};
use super::protocol::{encode, FromSidecar, StateOp, ToSidecar};
use crate::envelope::{BusError, Envelope, ErrorCode};
use crate::outbound::{Flow, Outbound};
use crate::runtime::log_budget::LogBudget;
use crate::runtime::{Deadline, Reply};
use crate::state::CellState;
use crate::telemetry;

/// Frames queued for one process before senders wait.
const WRITE_QUEUE: usize = 1024;
/// Queued frames are written together up to about this many bytes: at many
/// messages in flight one system call carries many frames.
const WRITE_BATCH: usize = 64 << 10;
/// How long a process has to answer a ping.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(5);

type Pending = oneshot::Sender<Result<Reply, BusError>>;

pub struct Conn {
    pub cell_id: String,
    /// What the process is, in messages: "sidecar" or "python worker".
    pub kind: &'static str,
    pub pid: u32,
    /// The cell's own time per message (`timeout_ms`): a process is killed
    /// only for missing this, never for a caller's shorter budget.
    timeout: Duration,
    writer: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Envelopes of in-flight messages, for the sidecar's outbound calls.
    parents: Mutex<HashMap<u64, Flow>>,
    pongs: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU64,
    /// Why the host ended the process (first reason wins).
    reason: Mutex<Option<String>>,
    /// Set once the process is known to be ending: take no new messages.
    dead: AtomicBool,
    pub(super) death: Notify,
}

impl Conn {
    /// Starts the IO tasks of a process that has completed its handshake
    /// (its stderr is read by [`log_stderr`]).
    pub fn start(
        cell_id: String,
        kind: &'static str,
        pid: u32,
        timeout: Duration,
        stdin: ChildStdin,
        stdout: FrameReader<ChildStdout>,
        outbound: Arc<Outbound>,
    ) -> Arc<Self> {
        let (writer, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Self {
            cell_id,
            kind,
            pid,
            timeout,
            writer,
            pending: Mutex::default(),
            parents: Mutex::default(),
            pongs: Mutex::default(),
            next_id: AtomicU64::new(1),
            reason: Mutex::default(),
            dead: AtomicBool::new(false),
            death: Notify::new(),
        });
        tokio::spawn(write_loop(conn.clone(), stdin, rx));
        tokio::spawn(read_loop(conn.clone(), stdout, outbound));
        conn
    }

    /// Sends one message and waits for its reply until `deadline`. A
    /// process that misses the deadline is ended: it may be stuck.
    pub async fn handle(
        self: &Arc<Self>,
        envelope: Arc<Envelope>,
        deadline: Deadline,
    ) -> Result<Reply, BusError> {
        let Deadline {
            reply_by: deadline,
            cell_limit: kill_at,
        } = deadline;
        let sent = Instant::now();
        let remaining = deadline.saturating_duration_since(sent);
        if remaining.is_zero() {
            return Err(BusError::new(
                ErrorCode::Timeout,
                format!(
                    "the message's deadline passed before it reached {} {}",
                    self.kind, self.cell_id
                ),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&ToSidecar::Handle {
            id,
            deadline_ms: remaining.as_millis() as u64,
            envelope: &envelope,
        });
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.parents.lock().unwrap().insert(
            id,
            Flow {
                parent: envelope,
                deadline,
            },
        );
        if self.writer.send(frame).await.is_err() {
            self.forget(id);
            return Err(self.failed("is gone"));
        }
        let outcome = tokio::time::timeout_at(deadline.min(kill_at).into(), &mut rx).await;
        self.parents.lock().unwrap().remove(&id);
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.failed("ended")),
            // Only the caller's budget ran out: abandon this message and
            // keep the process, unless it overruns the cell's own limit.
            Err(_) if deadline < kill_at => {
                tokio::spawn(self.clone().watch(id, rx, kill_at));
                Err(BusError::new(
                    ErrorCode::Timeout,
                    format!(
                        "no reply from {} {} within the caller's budget of {} ms; the message was abandoned",
                        self.kind,
                        self.cell_id,
                        remaining.as_millis()
                    ),
                ))
            }
            Err(_) => Err(self.overran(id)),
        }
    }

    /// Waits for an abandoned message's reply until the cell's own limit,
    /// then kills the process: it may be stuck.
    async fn watch(
        self: Arc<Self>,
        id: u64,
        rx: oneshot::Receiver<Result<Reply, BusError>>,
        kill_at: Instant,
    ) {
        if tokio::time::timeout_at(kill_at.into(), rx).await.is_err() {
            self.overran(id);
        }
    }

    /// Kills the process for missing the cell's own time per message.
    fn overran(&self, id: u64) -> BusError {
        self.forget(id);
        let limit = self.timeout.as_millis();
        self.die(format!(
            "did not reply within the cell's timeout ({limit} ms) and was killed"
        ));
        BusError::new(
            ErrorCode::Timeout,
            format!(
                "{} {} did not reply within {limit} ms; its process was killed and is being restarted",
                self.kind, self.cell_id
            ),
        )
    }

    /// Pings the process; ends it when no pong comes in time.
    pub async fn ping(self: Arc<Self>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pongs.lock().unwrap().insert(id, tx);
        if self
            .writer
            .send(encode(&ToSidecar::Ping { id }))
            .await
            .is_err()
        {
            return;
        }
        if tokio::time::timeout(PONG_TIMEOUT, rx).await.is_err() {
            self.pongs.lock().unwrap().remove(&id);
            self.die(format!(
                "did not answer a ping within {} s",
                PONG_TIMEOUT.as_secs()
            ));
        }
    }

    /// Asks the process to finish in-flight messages and exit.
    pub async fn shutdown(&self, grace: Duration) {
        let frame = encode(&ToSidecar::Shutdown {
            grace_ms: grace.as_millis() as u64,
        });
        let _ = self.writer.send(frame).await;
    }

    /// False once the process is ending.
    pub fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Relaxed)
    }

    /// Messages in flight on this process.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    /// Ends the process (the supervisor kills it); the first reason wins.
    pub fn die(&self, reason: impl Into<String>) {
        self.dead.store(true, Ordering::Relaxed);
        let mut slot = self.reason.lock().unwrap();
        if slot.is_none() {
            *slot = Some(reason.into());
            tracing::warn!(cell = %self.cell_id, pid = self.pid, reason = slot.as_deref(), "ending {} process", self.kind);
        }
        drop(slot);
        self.death.notify_one();
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap().clone()
    }

    /// Fails every message still in flight: the process is gone.
    pub fn fail_all(&self, why: &str) {
        self.dead.store(true, Ordering::Relaxed);
        let pending: Vec<Pending> = self
            .pending
            .lock()
            .unwrap()
            .drain()
            .map(|(_, tx)| tx)
            .collect();
        for tx in pending {
            let _ = tx.send(Err(self.failed(why)));
        }
        self.pongs.lock().unwrap().clear();
    }

    fn forget(&self, id: u64) {
        self.pending.lock().unwrap().remove(&id);
        self.parents.lock().unwrap().remove(&id);
    }

    fn failed(&self, why: &str) -> BusError {
        BusError::new(
            ErrorCode::CellFailed,
            format!(
                "{} {} (pid {}) {why} while handling this message; it is being restarted",
                self.kind, self.cell_id, self.pid
            ),
        )
    }

    async fn send(&self, frame: &ToSidecar<'_>) {
        let _ = self.writer.send(encode(frame)).await;
    }

    fn dispatch(self: &Arc<Self>, frame: FromSidecar, outbound: &Arc<Outbound>) {
        match frame {
            FromSidecar::Reply {
                id,
                payload,
                schema,
                headers,
                error,
            } => {
                let Some(tx) = self.pending.lock().unwrap().remove(&id) else {
                    return; // timed out already
                };
                let result = match (error, payload) {
                    (Some(e), _) => Err(e.into()),
                    (None, Some(p)) => Ok(Reply {
                        payload: String::from(Box::<str>::from(p)),
                        schema,
                        headers: headers.into_iter().collect(),
                    }),
                    (None, None) => Err(BusError::new(
                        ErrorCode::ContractViolation,
                        format!(
                            "{} {} sent a reply with neither payload nor error",
                            self.kind, self.cell_id
                        ),
                    )),
                };
                let _ = tx.send(result);
            }
            FromSidecar::Request {
                id,
                parent,
                cell,
                payload,
                timeout_ms,
            } => {
                let outbound = outbound.clone();
                self.answer(id, parent, move |flow| async move {
                    let timeout = timeout_ms.map(Duration::from_millis);
                    let reply = outbound.request(&flow, &cell, payload.get().to_owned(), timeout);
                    reply.await.map(Some)
                });
            }
            FromSidecar::Publish {
                id,
                parent,
                subject,
                payload,
            } => {
                let outbound = outbound.clone();
                self.answer(id, parent, move |flow| async move {
                    let published = outbound.publish(&flow, &subject, payload.get().to_owned());
                    published.await.map(|()| None)
                });
            }
            FromSidecar::State { id, parent, op } => {
                let outbound = outbound.clone();
                self.answer(id, parent, move |flow| async move {
                    let state = outbound.state()?;
                    let left = flow.deadline.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, run_state(state, op))
                        .await
                        .map_err(|_| {
                            BusError::new(
                                ErrorCode::Timeout,
                                "the message's deadline passed during a state operation",
                            )
                        })?
                        .map(Some)
                });
            }
            FromSidecar::Refused { id, message } => {
                let conn = self.clone();
                tokio::spawn(async move {
                    let error = BusError::new(ErrorCode::InvalidInput, message);
                    let response = ToSidecar::Response {
                        id,
                        payload: None,
                        error: Some(&error),
                    };
                    conn.send(&response).await;
                });
            }
            FromSidecar::Pong { id } => {
                if let Some(tx) = self.pongs.lock().unwrap().remove(&id) {
                    let _ = tx.send(());
                }
            }
            FromSidecar::Log {
                level,
                message,
                parent,
            } => {
                let correlation_id = parent
                    .and_then(|p| self.flow(p).ok())
                    .map(|f| f.parent.correlation_id.clone())
                    .unwrap_or_default();
                let level = telemetry::level::parse(&level);
                telemetry::level::cell_line(level, &self.cell_id, &correlation_id, &message);
            }
            FromSidecar::Describe { .. } | FromSidecar::Unknown => {}
        }
    }

    /// Runs a sidecar's outbound call in its own task, in the context of
    /// its parent message, and answers it with a `response` frame.
    fn answer<F, Fut>(self: &Arc<Self>, id: u64, parent: u64, call: F)
    where
        F: FnOnce(Flow) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Option<String>, BusError>> + Send,
    {
        let conn = self.clone();
        tokio::spawn(async move {
            let result = match conn.flow(parent) {
                Ok(flow) => call(flow).await,
                Err(e) => Err(e),
            };
            let (payload, error) = match result {
                Ok(text) => (text.and_then(|t| RawValue::from_string(t).ok()), None),
                Err(e) => (None, Some(e)),
            };
            let response = ToSidecar::Response {
                id,
                payload: payload.as_deref(),
                error: error.as_ref(),
            };
            conn.send(&response).await;
        });
    }

    fn flow(&self, parent: u64) -> Result<Flow, BusError> {
        self.parents
            .lock()
            .unwrap()
            .get(&parent)
            .cloned()
            .ok_or_else(|| {
                BusError::new(
                    ErrorCode::InvalidInput,
                    format!("parent {parent} is not a message in flight on this process"),
                )
            })
    }
}

/// Runs a `state` frame's operation; the response payload is JSON text.
async fn run_state(state: &CellState, op: StateOp) -> Result<String, BusError> {
    use serde_json::json;
    let payload = match op {
        StateOp::Get { key } => {
            let value = state.get(&key).await?;
            json!({ "value": value.map(|v| data_encoding::BASE64.encode(&v)) })
        }
        StateOp::Set { key, value } => {
            state.set(&key, value).await?;
            json!({})
        }
        StateOp::Delete { key } => {
            state.delete(&key).await?;
            json!({})
        }
        StateOp::Exists { key } => json!({ "exists": state.exists(&key).await? }),
        StateOp::Keys { cursor } => {
            let (keys, cursor) = state.keys(cursor).await?;
            json!({ "keys": keys, "cursor": cursor })
        }
        StateOp::Increment { key, delta } => json!({ "value": state.increment(&key, delta).await? }),
        StateOp::Unknown(op) => {
            return Err(BusError::new(
                ErrorCode::InvalidInput,
                format!("unknown state op {op:?}: this host knows get, set, delete, exists, keys and increment"),
            ))
        }
    };
    Ok(payload.to_string())
}

async fn write_loop(conn: Arc<Conn>, mut stdin: ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    use tokio::io::AsyncWriteExt;
    // Hold only a weak link so that the queue closes when the process is gone.
    let weak = Arc::downgrade(&conn);
    drop(conn);
    let mut codec = FrameCodec::new(usize::MAX);
    let mut batch = BytesMut::with_capacity(WRITE_BATCH);
    while let Some(frame) = rx.recv().await {
        // Let the other tasks that are ready queue their frames first: under
        // load one write (and one wake-up of the process) carries many.
        tokio::task::yield_now().await;
        batch.clear();
        let mut pushed = codec.encode(Bytes::from(frame), &mut batch);
        while pushed.is_ok() && batch.len() < WRITE_BATCH {
            let Ok(more) = rx.try_recv() else { break };
            pushed = codec.encode(Bytes::from(more), &mut batch);
        }
        let written = match pushed {
            Ok(()) => stdin
                .write_all(&batch)
                .await
                .and(stdin.flush().await)
                .map_err(FrameError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            if let Some(conn) = weak.upgrade() {
                conn.die(format!("closed its stdin ({e})"));
            }
            return;
        }
    }
}

async fn read_loop(conn: Arc<Conn>, mut stdout: FrameReader<ChildStdout>, outbound: Arc<Outbound>) {
    loop {
        match stdout.next().await {
            Some(Ok(body)) => match FromSidecar::parse(&body) {
                Ok(frame) => conn.dispatch(frame, &outbound),
                Err(e) => return conn.die(format!("sent a malformed frame ({e})")),
            },
            // The supervisor sees the exit and reports its status.
            None => return,
            Some(Err(e)) => return conn.die(format!("sent a malformed frame: {e}")),
        }
    }
}

/// The longest stderr line logged as one; longer ones are logged in pieces.
const MAX_LOG_LINE: u64 = 16 << 10;

/// Logs a process's stderr line by line, whatever it writes: memory is
/// bounded by [`MAX_LOG_LINE`], and bytes that are not UTF-8 are shown as
/// replacement characters (the pipe stays open, so the process never gets
/// EPIPE for writing them).
/// Lines past the cell's `budget` are counted, not logged.
pub async fn log_stderr(cell: String, pid: u32, stderr: ChildStderr, budget: Arc<LogBudget>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LOG_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if budget.admit() {
                    tracing::info!(cell = %cell, pid, stream = "stderr", "{text}");
                }
            }
        }
    }
}
