//! A process cell's process group: whatever the process forks ends with
//! it, and with the host however the host ends (a signal it handles, a
//! SIGKILL, a crash).
//!
//! Each process starts as the leader of a group of its own. Next to it the
//! host starts a *guard*: a POSIX shell in the same group that blocks
//! reading a pipe only the host holds open for writing, and kills the
//! whole group when that read ends. The kernel closes the pipe when the
//! host exits in any way, so a SIGKILLed host leaves nothing behind; while
//! the guard lives the group exists, so its id cannot be reused by an
//! unrelated group before the host kills it. `PR_SET_PDEATHSIG` alone
//! would end only the direct child (not what it forked), and fires when
//! the spawning *thread* exits; PID namespaces need privileges the host
//! may not have (docs/adr/0020-process-groups-end-with-the-host.md).

use std::process::Stdio;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// The guard's script: signals sent to the group do not stop it before
/// the group's end (`kill 0` signals the caller's own group).
const GUARD: &str = "trap '' HUP INT TERM QUIT PIPE; read _; kill -KILL 0";

/// A process group, killed (SIGKILL) when dropped or when the host exits.
pub struct ProcessGroup {
    pgid: libc::pid_t,
    /// The guard; its stdin is the pipe whose end kills the group.
    _guard: Child,
    ended: bool,
}

impl ProcessGroup {
    /// Takes charge of the group that `leader` (started with
    /// `process_group(0)`) leads, by starting its guard.
    pub fn of(leader: &Child) -> anyhow::Result<Self> {
        let pgid = leader
            .id()
            .and_then(|pid| libc::pid_t::try_from(pid).ok())
            .context("the process ended before its group could be guarded")?;
        let guard = Command::new("/bin/sh")
            .arg0("cbs-guard")
            .args(["-c", GUARD])
            .env_clear()
            .current_dir("/")
            .process_group(pgid)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the guard of its process group (/bin/sh)")?;
        Ok(Self {
            pgid,
            _guard: guard,
            ended: false,
        })
    }

    /// The group's id: its leader's process id.
    pub fn id(&self) -> u32 {
        self.pgid.unsigned_abs()
    }

    /// Kills every process of the group, the guard included; once.
    pub fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        // SAFETY: killpg only sends a signal. The guard, a member, keeps
        // the group (and so its id) alive until this kill ends it.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.end();
    }
}
