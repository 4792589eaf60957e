//! One store's state: the WASI context built from the cell's grants (deny by
//! default), the message being handled and its deadline, the memory limit
//! (`memory_limit`) and the guest's captured output (`guest_output`). The
//! host side of the imports is in `imports` and `keyvalue`.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::clocks::{CoarseMonotonic, CoarseWall};
use super::guest_output::GuestOutput;
use super::memory_limit::MemoryLimit;
use crate::manifest::Manifest;
use crate::outbound::{Flow, Outbound};
use crate::runtime::log_budget::LogBudget;

/// Per-store state of one cell instance.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryLimit,
    pub(super) outbound: Arc<Outbound>,
    /// The message being handled (none between messages).
    pub(super) flow: Option<Flow>,
    /// When the current call must end; read by the epoch callback.
    pub(super) deadline: Instant,
    /// Last lines the guest wrote to stderr (panic messages), when stdio is
    /// not inherited.
    pub(super) stderr: GuestOutput,
}

impl Sandbox {
    /// A new sandbox for one instance: WASI with nothing the manifest does
    /// not grant (no sockets; only granted folders and variables; coarse
    /// clocks). File grants must already be absolute (see `body::load`).
    pub fn new(
        manifest: &Manifest,
        outbound: Arc<Outbound>,
        log: Arc<LogBudget>,
    ) -> wasmtime::Result<Self> {
        let cell: Arc<str> = manifest.id.as_str().into();
        let stderr = GuestOutput::new(cell.clone(), "stderr", log.clone());
        let grants = &manifest.capabilities;
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if manifest.capabilities.stdio {
            wasi.inherit_stdin().inherit_stdout().inherit_stderr();
        } else {
            wasi.stdout(GuestOutput::new(cell, "stdout", log))
                .stderr(stderr.clone());
        }
        for grant in &grants.files {
            let perms = if grant.write {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            if let Err(e) = wasi.preopened_dir(&grant.host, &grant.guest, perms) {
                wasmtime::bail!("cannot open {} for the cell: {e}", grant.host.display());
            }
        }
        for (name, value) in &grants.env {
            wasi.env(name, value);
        }
        if !grants.precise_clocks {
            wasi.wall_clock(CoarseWall)
                .monotonic_clock(CoarseMonotonic::new());
        }
        Ok(Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory: MemoryLimit::new((manifest.memory_mb() as usize) << 20),
            outbound,
            flow: None,
            deadline: Instant::now(),
            stderr,
        })
    }

    pub(super) fn correlation_id(&self) -> &str {
        self.flow
            .as_ref()
            .map_or("", |f| f.parent.correlation_id.as_str())
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
