//! Tiered compilation (ADR 34). A component missing from the cache is
//! compiled at load by Winch, a single-pass compiler, and serves at once;
//! one background thread compiles it again with Cranelift, one component
//! at a time and on one core (the other cores stay with the loads and the
//! messages), keeps that code in the cache (so the next start is warm) and
//! switches every pool serving the component to it.
//!
//! The thread starts a compile only once no component was compiled by
//! Winch for [`QUIET`]: a host starting many cells gets all of its cores
//! for them (measured: ten distinct components ready in ~250 ms instead of
//! ~350 ms when the two compete), and optimizes them right after.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use super::bindings::CellPre;
use super::cache::{ComponentCache, Source};
use super::pool::{Code, InstancePool, Tier};
use super::sandbox::Sandbox;

/// The baseline tier: Winch's engine, and the thread replacing its code.
pub struct Tiering {
    engine: Engine,
    linker: Linker<Sandbox>,
    waiting: Arc<Mutex<Waiting>>,
    jobs: Sender<Job>,
}

/// How long loads must pause before a background compile starts.
pub const QUIET: Duration = Duration::from_millis(100);

/// Components served from baseline code, by digest, with their pools: a
/// component loaded twice (a bare component's probe, a canary of the same
/// code) is compiled once by each compiler. And when Winch last compiled.
struct Waiting {
    components: HashMap<String, Baseline>,
    compiled_at: Instant,
}

struct Baseline {
    code: Code,
    pools: Vec<Weak<InstancePool>>,
}

/// One component to optimize.
struct Job {
    cell: String,
    path: PathBuf,
    source: Source,
}

/// What the background thread compiles with and for.
struct Optimizing {
    /// Compiles: like `target`, on one thread.
    compiler: Engine,
    /// Runs the code: the host's engine.
    target: Engine,
    linker: Arc<Linker<Sandbox>>,
    cache: Arc<ComponentCache>,
    waiting: Arc<Mutex<Waiting>>,
}

impl Tiering {
    /// The baseline tier over `baseline` (Winch), optimizing for `target`
    /// with code compiled by `compiler`; the thread ends with the tiering.
    pub fn start(
        baseline: Engine,
        linker: Linker<Sandbox>,
        compiler: Engine,
        target: Engine,
        target_linker: Arc<Linker<Sandbox>>,
        cache: Arc<ComponentCache>,
    ) -> anyhow::Result<Self> {
        let (jobs, queue) = channel();
        let waiting = Arc::new(Mutex::new(Waiting {
            components: HashMap::new(),
            compiled_at: Instant::now(),
        }));
        let work = Optimizing {
            compiler,
            target,
            linker: target_linker,
            cache,
            waiting: Arc::clone(&waiting),
        };
        std::thread::Builder::new()
            .name("cbs-optimize".into())
            .spawn(move || work.run(queue))?;
        Ok(Self {
            engine: baseline,
            linker,
            waiting,
            jobs,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A pool made by `make` from the component's baseline code (compiled
    /// now, unless another pool already waits with it), switched to the
    /// optimized code when it is ready. `None` when Winch cannot compile
    /// the component.
    pub fn pool(
        &self,
        cell: &str,
        path: &Path,
        source: &Source,
        make: impl FnOnce(Code) -> Arc<InstancePool>,
    ) -> anyhow::Result<Option<Arc<InstancePool>>> {
        // Held until the pool is listed, so the thread cannot finish the
        // component between the two and miss the pool.
        let mut waiting = lock(&self.waiting);
        if let Some(baseline) = waiting.components.get_mut(source.digest()) {
            let pool = make(baseline.code.clone());
            baseline.pools.push(Arc::downgrade(&pool));
            return Ok(Some(pool));
        }
        let component = match Component::new(&self.engine, source.bytes()) {
            Ok(component) => component,
            Err(e) => {
                tracing::info!(component = %path.display(), error = %format!("{e:#}"), "the baseline compiler cannot compile it: compiling with Cranelift now");
                return Ok(None);
            }
        };
        let code = super::link(&self.engine, &self.linker, &component, Tier::Baseline, path)?;
        let pool = make(code.clone());
        let pools = vec![Arc::downgrade(&pool)];
        waiting
            .components
            .insert(source.digest().to_owned(), Baseline { code, pools });
        waiting.compiled_at = Instant::now();
        let job = Job {
            cell: cell.to_owned(),
            path: path.to_path_buf(),
            source: source.clone(),
        };
        if self.jobs.send(job).is_err() {
            tracing::warn!(
                cell,
                "the optimizing thread is gone: the cell keeps its baseline code"
            );
        }
        Ok(Some(pool))
    }
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

impl Optimizing {
    fn run(self, queue: Receiver<Job>) {
        lower_priority();
        while let Ok(job) = queue.recv() {
            self.wait_for_quiet();
            self.optimize(job);
        }
    }

    /// Returns once Winch has compiled nothing for [`QUIET`].
    fn wait_for_quiet(&self) {
        loop {
            let since = lock(&self.waiting).compiled_at.elapsed();
            match QUIET.checked_sub(since) {
                Some(left) if !left.is_zero() => std::thread::sleep(left),
                _ => return,
            }
        }
    }

    fn optimize(&self, job: Job) {
        let digest = job.source.digest().to_owned();
        let alive = |b: &Baseline| b.pools.iter().any(|p| p.strong_count() > 0);
        // Components all of whose pools went (a probe, an unloaded cell)
        // need no optimized code now: the next load compiles them again.
        {
            let mut waiting = lock(&self.waiting);
            if !waiting.components.get(&digest).is_some_and(alive) {
                waiting.components.remove(&digest);
                return;
            }
        }
        let started = Instant::now();
        let code = self.compile(&job);
        let Some(baseline) = lock(&self.waiting).components.remove(&digest) else {
            return;
        };
        match code {
            Ok(code) => {
                let pools: Vec<_> = baseline.pools.iter().filter_map(Weak::upgrade).collect();
                for pool in &pools {
                    pool.upgrade(code.clone());
                }
                tracing::info!(cell = %job.cell, component = %job.path.display(), ms = started.elapsed().as_millis() as u64, pools = pools.len(), "optimized code ready: new instances run it");
            }
            Err(e) => {
                tracing::warn!(cell = %job.cell, error = %format!("{e:#}"), "Cranelift cannot compile the component: the cell keeps its baseline code")
            }
        }
    }

    /// Compiled by `compiler`, kept in the cache, loaded into `target`.
    fn compile(&self, job: &Job) -> anyhow::Result<Code> {
        let component =
            self.cache
                .compile_file_with(&self.compiler, &self.target, &job.path, &job.source)?;
        let pre = self.linker.instantiate_pre(&component)?;
        Ok(Code {
            engine: self.target.clone(),
            pre: CellPre::new(pre)?,
            tier: Tier::Optimized,
        })
    }
}

/// Background compiling yields to the loads and messages of the host.
fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    let done = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if done != 0 {
        tracing::debug!("cannot lower the optimizing thread's priority");
    }
}
