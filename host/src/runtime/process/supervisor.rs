//! Starting, handshaking and restarting one sidecar process slot.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use tokio::process::{Child, Command};

use super::conn::{log_stderr, Conn};
use super::frame::{self, write_frame};
use super::group::ProcessGroup;
use super::protocol::{
    encode, CellRef, Described, FromSidecar, ToSidecar, Versions, PROTOCOL_MAX, PROTOCOL_MIN,
};
use crate::backoff::Backoff;
use crate::manifest::{Manifest, SidecarSpec};
use crate::outbound::Outbound;
use crate::runtime::last_lines::{quoted, LastLines};
use crate::runtime::log_budget::LogBudget;
use crate::telemetry;

/// How long a new process has to answer `hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a live process is pinged.
const PING_EVERY: Duration = Duration::from_secs(10);
/// A process that lived this long resets the restart backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// The host's variables a process gets; nothing else of the host's
/// environment (its NATS credentials are in `CBS_*` variables) reaches a
/// cell. The manifest's `env` and `CBS_CELL_ID`/`CBS_PROTOCOL` are added.
const PASS_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM"];

/// Everything needed to start a process of one sidecar cell.
pub struct Launch {
    pub manifest: Arc<Manifest>,
    /// What the process is, in messages: "sidecar" or "python worker".
    pub kind: &'static str,
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    pub max_frame: usize,
    outbound: Arc<Outbound>,
    /// The cell's share of the host log, across its processes.
    log: Arc<LogBudget>,
}

impl Launch {
    pub fn new(
        dir: &Path,
        manifest: Arc<Manifest>,
        spec: &SidecarSpec,
        outbound: Arc<Outbound>,
        kind: &'static str,
    ) -> anyhow::Result<Self> {
        let Some((program, args)) = spec.command.split_first() else {
            bail!("[sidecar] command is empty");
        };
        // A program with a slash is a path in the cell folder; else it is looked up on PATH.
        let program = if program.contains('/') {
            dir.join(program)
        } else {
            PathBuf::from(program)
        };
        Ok(Self {
            log: LogBudget::new(&manifest.id),
            manifest,
            kind,
            program,
            args: args.to_vec(),
            dir: dir.to_path_buf(),
            env: spec.env.clone(),
            max_frame: (spec.max_frame_kb as usize) << 10,
            outbound,
        })
    }

    /// Starts a process and completes the handshake.
    pub async fn start(&self) -> anyhow::Result<(Arc<Conn>, Process, Described)> {
        let id = &self.manifest.id;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .envs(
                PASS_ENV
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(&self.env)
            .env("CBS_CELL_ID", id)
            .env("CBS_PROTOCOL", PROTOCOL_MAX.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group (ended with it, see `group`), so a
            // Ctrl-C in the host's terminal is the host's alone.
            .process_group(0)
            .kill_on_drop(true);
        let data = u64::from(self.manifest.memory_mb()) << 20;
        let cpu = self.manifest.limits.cpu_seconds;
        // SAFETY: between fork and exec only `setrlimit`, which is
        // async-signal-safe, runs; it touches no memory of the parent's.
        unsafe {
            command.pre_exec(move || apply_limits(data, cpu));
        }
        let mut child = command.spawn().with_context(|| {
            format!(
                "cannot start {} {id}: {} {:?}",
                self.kind,
                self.program.display(),
                self.args
            )
        })?;
        // Guarded before the handshake: what it forks while starting up
        // ends with it too, also when the start fails.
        let group =
            ProcessGroup::of(&child).with_context(|| format!("cannot start {} {id}", self.kind))?;
        let pid = group.id();
        let (mut stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let mut stdout = frame::reader(stdout, self.max_frame);
        let hello = encode(&ToSidecar::Hello {
            protocol: Versions {
                min: PROTOCOL_MIN,
                max: PROTOCOL_MAX,
            },
            max_frame_bytes: self.max_frame,
            cell: CellRef {
                id,
                version: &self.manifest.version,
            },
            log_level: telemetry::level::host(),
        });
        let handshake = async {
            write_frame(&mut stdin, hello.into())
                .await
                .context("cannot send hello")?;
            let body = stdout
                .next()
                .await
                .context("it exited before answering hello")??;
            match FromSidecar::parse(&body) {
                Ok(FromSidecar::Describe { protocol, cell }) => Ok((protocol, cell)),
                Ok(_) => bail!("its first frame was not `describe`"),
                Err(e) => bail!("its first frame is not a protocol frame ({e})"),
            }
        };
        let (protocol, described) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                let said = last_words(&mut child).await;
                bail!("{} {id} failed its handshake: {e:#}{said}", self.kind)
            }
            Err(_) => bail!(
                "{} {id} did not answer hello within {} s",
                self.kind,
                HANDSHAKE_TIMEOUT.as_secs()
            ),
        };
        if !(PROTOCOL_MIN..=PROTOCOL_MAX).contains(&protocol) {
            bail!("{} {id} speaks protocol {protocol}, this host speaks {PROTOCOL_MIN}..{PROTOCOL_MAX}", self.kind);
        }
        if described.id != *id {
            tracing::warn!(manifest = %id, sidecar = %described.id, "the sidecar describes itself with another id; cell.toml wins");
        }
        let stderr = child.stderr.take().unwrap();
        let conn = Conn::start(
            id.clone(),
            self.kind,
            pid,
            Duration::from_millis(self.manifest.limits.timeout_ms),
            stdin,
            stdout,
            self.outbound.clone(),
        );
        tokio::spawn(log_stderr(id.clone(), pid, stderr, self.log.clone()));
        tracing::info!(cell = %id, pid, protocol, "{} process up", self.kind);
        Ok((conn, Process { child, group }, described))
    }
}

/// A started process and its group: dropping it kills both.
pub struct Process {
    child: Child,
    group: ProcessGroup,
}

/// Caps the process's data (heap and private writable mappings) at
/// `data` bytes: past it, allocations fail in the process (Python raises
/// `MemoryError`, C's malloc returns NULL) instead of the host's machine
/// running out of memory. With `cpu` seconds, the kernel sends SIGXCPU
/// when the process has used them (SIGKILL a second later); the
/// supervisor then starts a new one.
fn apply_limits(data: u64, cpu: Option<u64>) -> std::io::Result<()> {
    set_limit(libc::RLIMIT_DATA, data, data)?;
    if let Some(cpu) = cpu {
        set_limit(libc::RLIMIT_CPU, cpu, cpu.saturating_add(1))?;
    }
    Ok(())
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a plain system call with a valid pointer to a local.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a process that failed its handshake wrote to stderr (its last
/// lines, e.g. a Python import error), as "; it wrote: ..." or nothing.
async fn last_words(child: &mut Child) -> String {
    let Some(mut stderr) = child.stderr.take() else {
        return String::new();
    };
    let mut last = LastLines::new(3, 1024);
    // A process that is still running may never close stderr: bounded wait.
    let _ = tokio::time::timeout(Duration::from_millis(500), last.read(&mut stderr)).await;
    quoted(&last.take())
}

/// One process slot: the live process, if any, and why the last start failed.
pub struct Slot {
    launch: Arc<Launch>,
    current: RwLock<Option<Arc<Conn>>>,
    last_failure: Mutex<Option<String>>,
    closing: AtomicBool,
    /// When a message last started or finished here.
    busy_at: Mutex<Instant>,
    /// Messages given to this slot and not finished (counted from before
    /// they reach the process, so a burst sees its own size).
    assigned: AtomicUsize,
}

impl Slot {
    /// A slot serving `conn` from now on: published before any supervisor
    /// task runs, so the first message cannot find the slot empty.
    pub fn new(launch: Arc<Launch>, conn: Arc<Conn>) -> Self {
        Self {
            launch,
            current: RwLock::new(Some(conn)),
            last_failure: Mutex::default(),
            closing: AtomicBool::new(false),
            busy_at: Mutex::new(Instant::now()),
            assigned: AtomicUsize::new(0),
        }
    }

    /// Gives the slot one more message until the guard drops.
    pub fn assign(self: &Arc<Self>) -> Assigned {
        *self.busy_at.lock().unwrap() = Instant::now();
        self.assigned.fetch_add(1, Ordering::AcqRel);
        Assigned(self.clone())
    }

    /// Messages given to this slot and not finished.
    pub fn assigned(&self) -> usize {
        self.assigned.load(Ordering::Acquire)
    }

    /// Whether its process is live with nothing assigned, and has been
    /// for `idle`.
    pub fn idle_for(&self, idle: Duration) -> bool {
        self.conn().is_some()
            && self.assigned() == 0
            && self.busy_at.lock().unwrap().elapsed() >= idle
    }

    /// Closes the slot for good (scaling down): the process is asked to
    /// finish and exit, and ended if it has not within `grace`.
    pub fn retire(self: Arc<Self>, grace: Duration) {
        tokio::spawn(async move {
            let conn = self.conn();
            self.close(grace).await;
            tokio::time::sleep(grace).await;
            if let Some(conn) = conn.filter(|c| c.is_alive()) {
                conn.die("retired when the cell scaled down, and did not exit in time");
            }
        });
    }

    /// The live process, unless it is ending.
    pub fn conn(&self) -> Option<Arc<Conn>> {
        self.current
            .read()
            .unwrap()
            .clone()
            .filter(|c| c.is_alive())
    }

    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().unwrap().clone()
    }

    /// Stops restarting; asks the live process to finish and exit.
    pub async fn close(&self, grace: Duration) {
        self.closing.store(true, Ordering::Relaxed);
        if let Some(conn) = self.conn() {
            conn.shutdown(grace).await;
        }
    }
}

/// A message given to a slot; finishing it (dropping this) marks the slot
/// busy until now.
pub struct Assigned(Arc<Slot>);

impl Drop for Assigned {
    fn drop(&mut self) {
        *self.0.busy_at.lock().unwrap() = Instant::now();
        self.0.assigned.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps a slot's process alive: waits for it to die, fails what was in
/// flight on it, and starts a new one with exponential backoff.
pub async fn supervise(slot: Arc<Slot>, mut conn: Arc<Conn>, mut process: Process) {
    let mut attempt = 0u32;
    loop {
        *slot.current.write().unwrap() = Some(conn.clone());
        *slot.last_failure.lock().unwrap() = None;
        let started = Instant::now();
        // Dropping `process` (this task aborted: the cell dropped) ends
        // the group as well.
        let why = run_until_death(&conn, &mut process.child).await;
        process.group.end();
        *slot.current.write().unwrap() = None;
        conn.fail_all(&why);
        if slot.closing.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!(cell = %conn.cell_id, pid = conn.pid, reason = %why, "{} process ended; restarting", conn.kind);
        if started.elapsed() > HEALTHY_AFTER {
            attempt = 0;
        }
        loop {
            tokio::time::sleep(RESTART.next(attempt)).await;
            attempt = attempt.saturating_add(1);
            if slot.closing.load(Ordering::Relaxed) {
                return;
            }
            match slot.launch.start().await {
                Ok((c, p, _)) => {
                    (conn, process) = (c, p);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "{} restart failed", slot.launch.kind);
                    *slot.last_failure.lock().unwrap() = Some(format!("{e:#}"));
                }
            }
        }
    }
}

/// 100 ms doubling to 5 s, jittered so that the processes of many cells
/// do not restart in lockstep.
const RESTART: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter: 0.2,
};

/// Waits until the process exits or the host ends it; returns why.
async fn run_until_death(conn: &Arc<Conn>, child: &mut Child) -> String {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            status = child.wait() => {
                return conn.reason().unwrap_or_else(|| exited(status.ok()));
            }
            () = conn.death.notified() => {
                let _ = child.kill().await;
                return conn.reason().unwrap_or_else(|| "was ended".to_owned());
            }
            // A process with messages in flight is watched by their
            // deadlines; pings find the idle ones that are wedged. (A
            // worker that handles messages in order answers a ping only
            // between them.)
            _ = ping.tick() => if conn.in_flight() == 0 {
                tokio::spawn(conn.clone().ping());
            }
        }
    }
}

fn exited(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "exited".to_owned();
    };
    match status.signal() {
        Some(libc::SIGXCPU) => {
            "used up its CPU time ([limits] cpu_seconds) and was ended".to_owned()
        }
        Some(signal) => format!("was killed by signal {signal}"),
        None => format!("exited with status {}", status.code().unwrap_or(-1)),
    }
}
