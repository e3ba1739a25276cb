//! Live dumps: a consistent vmcore of a running guest, which is paused only for the snapshot.
//!
//! The vCPUs are paused (each saves its registers), guest memory is snapshotted copy-on-write,
//! the vCPUs run on, and the vmcore is written from the snapshot, in the same format and at the
//! same dump level as any host-side vmcore. Two ways to take the snapshot (`--live-dump-snapshot`,
//! `docs/live-dump.md` has the measurements behind the default):
//!
//! - **uffd** (the default where the kernel allows it): guest RAM is write-protected with a
//!   userfaultfd (`snapshot.rs`); a page the guest writes is copied by our copier thread first.
//!   The pause is the protection (about a millisecond per 4 GiB of guest RAM, mostly KVM
//!   dropping its mappings); the vmcore is written by a thread of this process, as a pausing
//!   dump's is.
//! - **fork**: crashvmm `fork()`s and the child's view of guest memory (private anonymous, so
//!   copy-on-write) is the snapshot; the child writes the vmcore under its own seccomp filter
//!   (`live-dump-writer`) and reports through a pipe. The pause grows with resident memory (the
//!   kernel copies the page tables), which is why it is the fallback.
//!
//! Cost is bounded: every page the guest writes during the dump is copied once. Past
//! `max_copy` bytes the guest is paused until the vmcore is written, and the log says so.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::executor::{VmControl, PAUSE_TIMEOUT};
use super::snapshot::{pipe, Snapshot};
use super::vmcore::{self, FilterSummary, VcpuState, VmcoreError, VmcoreInfoNote, VmcoreOptions, VmcoreSummary};
pub use crate::names::SnapshotMethod;
use crate::seccomp::{self, ThreadKind};

/// How often a fork snapshot's dump looks at the copy-on-write cost. The kernel copies those
/// pages and tells nobody: this process's `smaps_rollup` is the only measure, and reading it
/// walks the page tables, so it is read this often rather than at every page. (A userfaultfd
/// snapshot's copier counts each copy and wakes the dump when the limit is passed.)
const LOOK: Duration = Duration::from_millis(250);

/// What the waiting dump is woken with, through its pipe (uffd): the writer thread ended.
const WRITER_DONE: u8 = b'd';
/// The copier passed the copy limit.
const PAST_LIMIT: u8 = b'c';

/// How live dumps are taken: the copy limit and the snapshot's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOptions {
    /// `--live-dump-max-copy`.
    pub max_copy: u64,
    pub method: SnapshotMethod,
}

/// What a live dump cost the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LiveStats {
    /// How the snapshot was taken (`uffd` or `fork`).
    pub snapshot: SnapshotMethod,
    /// From the pause request until the vCPUs ran again.
    pub pause_us: u64,
    /// Guest memory copied because the guest wrote it during the dump (as far as seen).
    pub copied_bytes: u64,
    /// The copy limit was reached: the guest was paused for the rest of the dump.
    pub paused_for_rest: bool,
}

impl LiveStats {
    /// Past the copy limit, pause the guest (once) for the rest of the dump, and say so.
    fn check_limit(&mut self, vm: &dyn VmControl, copied: u64, max_copy: u64, was_paused: bool) {
        if copied > max_copy && !self.paused_for_rest && !was_paused {
            log::warn!(
                "live dump: the guest rewrote {copied} bytes (more than --live-dump-max-copy {max_copy}); \
                 pausing it for the rest of the dump"
            );
            self.paused_for_rest = true;
            vm.pause(PAUSE_TIMEOUT);
        }
    }
}

/// The vCPUs stopped for a snapshot, with their registers.
struct Paused {
    /// They were paused already (by the operator): they stay paused.
    was_paused: bool,
    started: Instant,
    vcpus: Vec<VcpuState>,
    stopped_in: Duration,
}

impl Paused {
    fn now(vm: &dyn VmControl) -> Self {
        let was_paused = vm.paused();
        let started = Instant::now();
        if !was_paused && !vm.pause(PAUSE_TIMEOUT) {
            log::warn!("live dump: not every vCPU stopped; their registers may be missing");
        }
        let vcpus = vm.snapshots();
        Self { was_paused, started, vcpus, stopped_in: started.elapsed() }
    }

    /// The snapshot is taken: let the vCPUs run again (unless they were paused before) and
    /// say how long they were stopped.
    fn resume(&self, vm: &dyn VmControl, snapshot: SnapshotMethod) -> LiveStats {
        if !self.was_paused {
            vm.resume();
        }
        LiveStats { snapshot, pause_us: self.started.elapsed().as_micros() as u64, ..Default::default() }
    }
}

/// The child's report, through the pipe.
#[derive(Serialize, Deserialize)]
struct Wire {
    error: Option<String>,
    bytes: u64,
    allocated_bytes: u64,
    sha256: Option<String>,
    duration_us: u64,
    vmcoreinfo: Option<(u64, String)>,
    filter: Option<serde_json::Value>,
}

type Dumped = (VmcoreSummary, Vec<VcpuState>, LiveStats);

/// Write a vmcore of the running VM to `path` with the guest paused only for the snapshot.
/// Returns the summary, the registers of the snapshot and what it cost the guest.
pub fn live_dump(
    vm: &dyn VmControl,
    path: &Path,
    opts: &VmcoreOptions,
    live: LiveOptions,
    on_snapshot: &dyn Fn(&LiveStats),
) -> Result<Dumped, VmcoreError> {
    let snapshot = match live.method {
        SnapshotMethod::Fork => return fork_dump(vm, path, opts, live.max_copy, on_snapshot),
        SnapshotMethod::Uffd => Snapshot::new(vm.memory()).map_err(|e| VmcoreError::Live(crate::error::chain(&e)))?,
        SnapshotMethod::Auto => match Snapshot::new(vm.memory()) {
            Ok(s) => s,
            Err(e) => {
                log::info!("live dump: {}; the snapshot is taken by fork() instead", crate::error::Chain(&e));
                return fork_dump(vm, path, opts, live.max_copy, on_snapshot);
            }
        },
    };
    uffd_dump(vm, snapshot, path, opts, live.max_copy, on_snapshot)
}

/// The snapshot by userfaultfd write protection; the vmcore is written by a thread of ours.
fn uffd_dump(
    vm: &dyn VmControl,
    mut snapshot: Snapshot<'_>,
    path: &Path,
    opts: &VmcoreOptions,
    max_copy: u64,
    on_snapshot: &dyn Fn(&LiveStats),
) -> Result<Dumped, VmcoreError> {
    let err = |what: &str, e: std::io::Error| VmcoreError::Live(format!("{what}: {e}"));
    // The dump sleeps until the writer ends or the copies pass the limit; each says so here.
    let (wake, waker) = pipe().map_err(|e| err("pipe", e))?;
    let copier_waker = waker.try_clone().map_err(|e| err("pipe", e))?;
    snapshot.wake_past(max_copy, move || {
        // One byte into an empty pipe: it cannot block. Should it fail, the writer's end still
        // wakes the dump.
        let _ = (&copier_waker).write_all(&[PAST_LIMIT]);
    });
    let paused = Paused::now(vm);
    let protected = snapshot.protect();
    let mut stats = paused.resume(vm, SnapshotMethod::Uffd);
    let Paused { was_paused, vcpus, stopped_in: paused_at, .. } = paused;
    protected.map_err(|e| VmcoreError::Live(crate::error::chain(&e)))?;
    log::debug!(
        "live dump: vCPUs stopped in {paused_at:?}, guest RAM write-protected and running again after {} us",
        stats.pause_us
    );
    on_snapshot(&stats);
    let mem = vm.memory();
    let written = std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("live-dump-writer".into())
            .spawn_scoped(scope, || {
                // Says so however the thread ends (a panic included).
                let _done = Done(&waker);
                // The vmcore writer's filter again (it has it already): a forbidden call is then
                // reported with this thread's name.
                seccomp::apply(ThreadKind::VmcoreWriter).map_err(|e| VmcoreError::Live(crate::error::chain(&e)))?;
                vmcore::write_vmcore_of_snapshot(&snapshot, mem, &vcpus, path, opts)
            })
            .map_err(|e| VmcoreError::Live(format!("cannot start the writer thread: {e}")))?;
        let mut buf = [0u8; 16];
        loop {
            match read_when_ready(&wake, &mut buf, None) {
                Ok(Ready::Data(n)) if buf[..n].contains(&WRITER_DONE) => break,
                Ok(Ready::Data(_)) => stats.check_limit(vm, snapshot.copied_bytes(), max_copy, was_paused),
                Ok(Ready::Eof | Ready::TimedOut) => break,
                Err(e) => {
                    // Not expected; the join below still waits for the writer (without the
                    // copy limit's pause).
                    log::warn!("live dump: waiting for the writer: {e}");
                    break;
                }
            }
        }
        writer.join().map_err(|_| VmcoreError::Live("the writer thread panicked".into()))?
    });
    stats.copied_bytes = snapshot.copied_bytes();
    // Lifts the write protection.
    drop(snapshot);
    if stats.paused_for_rest {
        vm.resume();
    }
    Ok((written?, vcpus, stats))
}

/// The snapshot by `fork()`; the child writes the vmcore.
fn fork_dump(
    vm: &dyn VmControl,
    path: &Path,
    opts: &VmcoreOptions,
    max_copy: u64,
    on_snapshot: &dyn Fn(&LiveStats),
) -> Result<Dumped, VmcoreError> {
    let err = |what: &str, e: std::io::Error| VmcoreError::Live(format!("{what}: {e}"));
    let (mut rx, tx) = pipe().map_err(|e| err("pipe", e))?;
    let paused = Paused::now(vm);
    // SAFETY: the child only writes the vmcore (memory reads, file writes, its own threads) and
    // leaves with _exit; it takes no lock another thread may hold: logging is off, and glibc's
    // fork resets malloc's locks.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(rx);
        child(vm, &paused.vcpus, path, opts, tx);
    }
    drop(tx);
    let fork_error = (pid < 0).then(std::io::Error::last_os_error);
    let mut stats = paused.resume(vm, SnapshotMethod::Fork);
    if let Some(e) = fork_error {
        return Err(err("fork", e));
    }
    let Paused { was_paused, vcpus, stopped_in: paused_at, .. } = paused;
    log::debug!("live dump: vCPUs stopped in {paused_at:?}, forked and running again after {} us", stats.pause_us);
    // After the fork the snapshot's pages are shared, no longer private: what grows from here
    // is what the running guest rewrote.
    let baseline = private_dirty();
    on_snapshot(&stats);
    // The dump sleeps until the child's report comes through the pipe, or its end (the pipe's
    // end), or the next look at the cost (`LOOK`: nothing tells of the kernel's copies).
    let mut last_look = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let status = loop {
        match read_when_ready(&rx, &mut buf, Some(LOOK.saturating_sub(last_look.elapsed()))) {
            Ok(Ready::Data(n)) => {
                out.extend_from_slice(&buf[..n]);
                continue;
            }
            // The child is gone, or going: it closes its end when it leaves.
            Ok(Ready::Eof) => break reap(pid, 0).map_err(|e| err("waitpid", e)),
            Ok(Ready::TimedOut) => {}
            Err(e) => {
                let _ = reap(pid, 0);
                break Err(err("reading the writer's report", e));
            }
        }
        last_look = Instant::now();
        let copied = private_dirty().saturating_sub(baseline);
        // A child that ended while we read gave its pages back: they are ours alone again and
        // read as private, copied or not. Only a reading with the child still there counts.
        match reap(pid, libc::WNOHANG) {
            Ok(None) => {}
            r => break r.map_err(|e| err("waitpid", e)),
        }
        stats.copied_bytes = stats.copied_bytes.max(copied);
        stats.check_limit(vm, copied, max_copy, was_paused);
    };
    if stats.paused_for_rest {
        vm.resume();
    }
    let status = status?.unwrap_or_default();
    // The rest of the report (the child has ended: its end is closed).
    rx.read_to_end(&mut out).map_err(|e| err("reading the writer's report", e))?;
    let wire: Wire = serde_json::from_slice(&out).map_err(|_| {
        VmcoreError::Live(format!("the writer process ended without a report (wait status {status:#x})"))
    })?;
    if let Some(e) = wire.error {
        return Err(VmcoreError::Live(e));
    }
    let summary = VmcoreSummary {
        path: path.to_path_buf(),
        bytes: wire.bytes,
        allocated_bytes: wire.allocated_bytes,
        sha256: wire.sha256,
        duration: Duration::from_micros(wire.duration_us),
        vmcoreinfo: wire.vmcoreinfo.map(|(gpa, text)| VmcoreInfoNote { gpa, text }),
        spec: opts.spec,
        filter: wire.filter.map(FilterSummary::Decoded),
    };
    Ok((summary, vcpus, stats))
}

/// The writer process: write, report, leave.
fn child(vm: &dyn VmControl, vcpus: &[VcpuState], path: &Path, opts: &VmcoreOptions, tx: File) -> ! {
    log::set_max_level(log::LevelFilter::Off);
    let result = seccomp::apply(ThreadKind::LiveDumpWriter).map_err(|e| crate::error::chain(&e)).and_then(|()| {
        let opts = VmcoreOptions { progress: false, on_progress: None, ..*opts };
        vmcore::write_vmcore(vm.memory(), vcpus, path, &opts).map_err(|e| crate::error::chain(&e))
    });
    let wire = match result {
        Ok(s) => Wire {
            error: None,
            bytes: s.bytes,
            allocated_bytes: s.allocated_bytes,
            sha256: s.sha256,
            duration_us: s.duration.as_micros() as u64,
            vmcoreinfo: s.vmcoreinfo.map(|n| (n.gpa, n.text)),
            filter: s.filter.and_then(|f| serde_json::to_value(f).ok()),
        },
        Err(e) => Wire {
            error: Some(e),
            bytes: 0,
            allocated_bytes: 0,
            sha256: None,
            duration_us: 0,
            vmcoreinfo: None,
            filter: None,
        },
    };
    let code = match serde_json::to_vec(&wire) {
        Ok(bytes) => {
            let mut f = tx;
            i32::from(f.write_all(&bytes).is_err())
        }
        Err(_) => 1,
    };
    // SAFETY: leaves the child at once, running no destructor or exit handler of the parent's.
    unsafe { libc::_exit(code) }
}

/// Writes [`WRITER_DONE`] when dropped: the writer thread's end, however it ends.
struct Done<'a>(&'a File);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        // Should it fail, the dump waits for the writer in `join` instead.
        let _ = self.0.write_all(&[WRITER_DONE]);
    }
}

/// What [`read_when_ready`] found.
enum Ready {
    /// This many bytes were read.
    Data(usize),
    /// Every write end is closed.
    Eof,
    TimedOut,
}

/// Sleep until `fd` has something to read (or for `timeout` at most; `None`: no limit), then
/// read what is there into `buf`.
fn read_when_ready(mut fd: &File, buf: &mut [u8], timeout: Option<Duration>) -> std::io::Result<Ready> {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    loop {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the call's duration.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(Ready::TimedOut);
        }
        // Readable or hung up: this read does not block.
        return match fd.read(buf) {
            Ok(0) => Ok(Ready::Eof),
            Ok(n) => Ok(Ready::Data(n)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// `waitpid` for our child `pid`: its wait status once it has ended (`None`: still running,
/// with `WNOHANG`).
fn reap(pid: libc::pid_t, flags: libc::c_int) -> std::io::Result<Option<libc::c_int>> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid place for its status.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        return match r {
            0 => Ok(None),
            r if r == pid => Ok(Some(status)),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                Err(e)
            }
        };
    }
}

/// This process's private dirty memory (`/proc/self/smaps_rollup`): what copy-on-write adds to
/// while the child holds the snapshot.
fn private_dirty() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
