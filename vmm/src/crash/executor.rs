//! The executor: carries out the orchestrator's actions (pause, host dump, crash directory),
//! and feeds their results back. Lives across guest resets.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::report::{CrashRecord, GuestInfo, TimedSignal};
use super::vmcore::{self, VmcoreOptions};
use super::{flat, Action, CrashSignal, Orchestrator};
use crate::console::ConsoleTail;
use crate::events::{dump_progress, Event, EventLog};
use crate::exit::VmExit;
use crate::vcpu::ExitContext;

/// How a boot of the guest ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEnd {
    Exit(VmExit),
    Reset,
}

/// How long to wait for the vCPUs to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Crash handling state that outlives a boot.
pub struct CrashHandling {
    pub orchestrator: Orchestrator,
    pub crash_dir: PathBuf,
    pub guest: GuestInfo,
    events: EventLog,
    /// Event-log position where the current crash's events begin.
    events_mark: usize,
    /// Signals of the current boot, with their times.
    signals: Vec<TimedSignal>,
    record: Option<CrashRecord>,
    /// Why the current crash has no directory (it could not be created).
    record_error: Option<String>,
    /// The VM is paused for good (`pause` policies): wait to be stopped.
    pub stay_paused: bool,
    /// The disk the guest's crash kernel writes its dump to.
    pub crash_disk: Option<PathBuf>,
    /// Compute the SHA-256 of host-side vmcores (`--vmcore-sha256`).
    pub vmcore_sha256: bool,
    /// When the crashed kernel kexec'd into its crash kernel.
    kexec_at: Option<Instant>,
    /// The last crash directory written.
    last_dir: Option<PathBuf>,
}

impl CrashHandling {
    pub fn new(orchestrator: Orchestrator, crash_dir: PathBuf, guest: GuestInfo, events: EventLog) -> Self {
        let events_mark = events.mark();
        // Absolute, so that events and reports name crash directories unambiguously.
        let crash_dir = std::path::absolute(&crash_dir).unwrap_or(crash_dir);
        Self {
            orchestrator,
            crash_dir,
            guest,
            events,
            events_mark,
            signals: Vec::new(),
            record: None,
            record_error: None,
            stay_paused: false,
            crash_disk: None,
            vmcore_sha256: false,
            kexec_at: None,
            last_dir: None,
        }
    }

    /// A new boot: forget the previous boot's signals.
    pub fn on_boot(&mut self) {
        self.signals.clear();
        self.stay_paused = false;
        self.kexec_at = None;
        self.orchestrator.on_reset();
    }

    /// The last crash directory written.
    pub fn last_crash_dir(&self) -> Option<&std::path::Path> {
        self.last_dir.as_deref()
    }

    /// Feed a signal to the orchestrator and carry out its decision.
    pub fn signal(&mut self, signal: CrashSignal, ctx: &ExitContext, console: &ConsoleTail) -> Option<BootEnd> {
        log::debug!("crash signal: {signal:?}");
        let timed = TimedSignal { at: Utc::now(), signal };
        if let Some(r) = self.record.as_mut() {
            r.signals.push(timed.clone());
        }
        self.signals.push(timed.clone());
        if let CrashSignal::GuestKexec { .. } = timed.signal {
            self.kexec_at = Some(Instant::now());
        }
        let actions = self.orchestrator.on_signal(&timed.signal, Instant::now());
        self.execute(actions, ctx, console)
    }

    pub fn timer(&mut self, ctx: &ExitContext, console: &ConsoleTail) -> Option<BootEnd> {
        let actions = self.orchestrator.on_timer(Instant::now());
        self.execute(actions, ctx, console)
    }

    /// The VM stopped (its vCPU threads ended): decide and finish.
    pub fn vm_exit(&mut self, exit: VmExit, ctx: &ExitContext, console: &ConsoleTail) -> BootEnd {
        let actions = self.orchestrator.on_vm_exit(exit.clone(), Instant::now());
        // Nothing left to pause once the VM has stopped: `StayPaused` ends here too.
        self.execute(actions, ctx, console).unwrap_or_else(|| BootEnd::Exit(self.orchestrator.final_exit(exit)))
    }

    /// Carry out `actions` in order; stops at the first that ends the boot.
    pub fn execute(&mut self, actions: Vec<Action>, ctx: &ExitContext, console: &ConsoleTail) -> Option<BootEnd> {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            log::debug!("crash action: {action:?}");
            match action {
                Action::BeginCrash { trigger } => self.begin(&trigger),
                Action::Pause => {
                    if !ctx.control.pause_all(&ctx.kicker, PAUSE_TIMEOUT) {
                        log::warn!("not every vCPU stopped within {PAUSE_TIMEOUT:?}; their registers may be missing");
                    }
                }
                Action::Resume => ctx.control.resume(),
                Action::HostDump { reason } => {
                    let error = self.host_dump(&reason, ctx).err();
                    queue.extend(self.orchestrator.on_dump_done(error, Instant::now()));
                }
                Action::CollectKdump => {
                    let result = self.collect_kdump();
                    queue.extend(self.orchestrator.on_kdump_collected(result, Instant::now()));
                }
                Action::FinishCrash { outcome } => self.finish(&outcome, ctx, console),
                Action::Stop(exit) => return Some(BootEnd::Exit(exit)),
                Action::Reset => return Some(BootEnd::Reset),
                Action::InjectNmi => ctx.inject_nmi(&(0..ctx.control.vcpus()).collect::<Vec<_>>()),
                Action::StayPaused => {
                    log::info!("crash handled; the VM stays paused (stop crashvmm with SIGINT or SIGTERM)");
                    self.stay_paused = true;
                }
            }
        }
        None
    }

    fn begin(&mut self, trigger: &str) {
        let n = self.orchestrator.crashes();
        log::warn!("crash {n} detected (trigger {trigger})");
        self.events.emit(Event::CrashDetected { trigger: trigger.to_string() });
        self.record_error = None;
        match CrashRecord::begin(&self.crash_dir, n, trigger) {
            Ok(mut r) => {
                // The signals of this crash so far: from the trigger on.
                let from = self.signals.len().saturating_sub(1);
                r.signals.extend(self.signals[from..].iter().cloned());
                self.record = Some(r);
            }
            Err(e) => {
                log::error!("{e}; this crash gets no crash directory");
                self.record_error = Some(e.to_string());
            }
        }
    }

    fn host_dump(&mut self, reason: &str, ctx: &ExitContext) -> Result<(), String> {
        let Some(record) = self.record.as_mut() else {
            return Err(self.record_error.clone().unwrap_or_else(|| "no crash directory".into()));
        };
        let path = record.vmcore_path();
        let final_path = record.final_dir.join("vmcore");
        let vcpus = ctx.control.snapshots();
        record.vcpus = vcpus.clone();
        let needed = vmcore::required_bytes(&ctx.mem);
        if let Some(free) = free_bytes(&record.tmp_dir) {
            if free < needed {
                log::warn!(
                    "{} has {free} bytes free; the vmcore may need up to {needed} (zero pages are holes)",
                    self.crash_dir.display()
                );
            }
        }
        log::info!("writing host-side vmcore ({reason}) to {}", final_path.display());
        let progress = std::io::stderr().is_terminal();
        let report = dump_progress(&self.events);
        let opts = VmcoreOptions { progress, on_progress: Some(&report), sha256: self.vmcore_sha256 };
        match vmcore::write_vmcore(&ctx.mem, &vcpus, &path, &opts) {
            Ok(s) => {
                log::info!("vmcore: {} bytes ({} allocated) in {:?}", s.bytes, s.allocated_bytes, s.duration);
                record.set_vmcore(&s, reason);
                self.events.emit(Event::VmcoreWritten {
                    path: final_path.display().to_string(),
                    bytes: s.bytes,
                    source: "host".into(),
                    duration_ms: s.duration.as_millis() as u64,
                });
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let free = free_bytes(&record.tmp_dir).map_or(String::new(), |f| format!(" ({f} bytes free)"));
                let reason = format!("{e}{free}");
                log::error!("vmcore not written: {reason}");
                record.vmcore_error = Some(reason.clone());
                self.events.emit(Event::VmcoreFailed { reason: reason.clone() });
                Err(reason)
            }
        }
    }

    /// Take the guest's dump (makedumpfile's flattened format) from the crash disk into the
    /// crash directory as `vmcore.kdump`. `Ok(false)` when there is no crash disk.
    fn collect_kdump(&mut self) -> Result<bool, String> {
        let Some(disk) = self.crash_disk.clone() else { return Ok(false) };
        let Some(record) = self.record.as_mut() else {
            return Err(self.record_error.clone().unwrap_or_else(|| "no crash directory".into()));
        };
        let duration = self.kexec_at.map_or(Duration::ZERO, |t| t.elapsed());
        let file = "vmcore.kdump";
        let out_path = record.tmp_dir.join(file);
        let result = (|| -> Result<u64, String> {
            let input = std::fs::File::open(&disk).map_err(|e| format!("cannot open {}: {e}", disk.display()))?;
            let disk_len = input.metadata().map_err(|e| e.to_string())?.len();
            let out = crate::files::create_private(&out_path)
                .map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
            let len = flat::rearrange(std::io::BufReader::with_capacity(1 << 20, input), &out, disk_len.max(1 << 40))
                .map_err(|e| e.to_string())?;
            out.sync_all().map_err(|e| e.to_string())?;
            Ok(len)
        })();
        match result {
            Ok(bytes) => {
                record.set_guest_vmcore(file, bytes, duration).map_err(|e| e.to_string())?;
                let duration_ms = duration.as_millis() as u64;
                log::info!("kdump: {bytes}-byte dump collected from {}", disk.display());
                self.events.emit(Event::KdumpCompleted { bytes, duration_ms });
                self.events.emit(Event::VmcoreWritten {
                    path: record.final_dir.join(file).display().to_string(),
                    bytes,
                    source: "guest".into(),
                    duration_ms,
                });
                Ok(true)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&out_path);
                log::error!("kdump: no dump collected from {}: {e}", disk.display());
                record.vmcore_error = Some(format!("crash disk: {e}"));
                Err(e)
            }
        }
    }

    fn finish(&mut self, outcome: &str, ctx: &ExitContext, console: &ConsoleTail) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if record.vcpus.is_empty() {
            record.vcpus = ctx.control.snapshots();
        }
        let events = self.events.since(self.events_mark);
        match record.finish(outcome, self.orchestrator.policy(), &self.guest, &events, &console.contents()) {
            Ok(dir) => {
                log::warn!("crash report: {}", dir.display());
                self.events.emit(Event::CrashReport { dir: dir.display().to_string() });
                self.last_dir = Some(dir);
            }
            Err(e) => log::error!("crash directory incomplete: {e}"),
        }
        self.events_mark = self.events.mark();
    }
}

/// Bytes available to an unprivileged writer on the file system of `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data that the call fills; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the duration of the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::vmcore::VcpuState;
    use crate::crash::Policy;
    use crate::vcpu::tests::ctx;

    #[test]
    fn panic_with_unload_then_report_writes_a_crash_directory_with_a_vmcore() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let guest = GuestInfo { kernel: "k".into(), cmdline: "c".into(), memory_bytes: 64 << 20, vcpus: 2 };
        let mut h = CrashHandling::new(Orchestrator::new(Policy::default()), base.path().into(), guest, events.clone());
        let c = ctx(true);
        for id in 0..2 {
            c.control.mark_stopped(id, VcpuState { id, regs: Default::default(), sregs: Default::default() });
        }
        let console = ConsoleTail::default();
        let signals = [
            CrashSignal::PvPanic { vcpu: 1, bits: 1 },
            CrashSignal::UnloadRequested { vcpu: 1, answered: true },
            CrashSignal::UnloadCompleted { vcpu: 0, latency_us: 5 },
        ];
        for s in signals {
            assert_eq!(h.signal(s, &c, &console), None);
        }
        let end = h.signal(CrashSignal::HvCrash { vcpu: 1, params: [0; 5], message: None }, &c, &console);
        assert_eq!(end, Some(BootEnd::Exit(VmExit::GuestPanicked { trigger: "pvpanic".into() })));
        let dirs: Vec<_> = std::fs::read_dir(base.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(dirs.len(), 1);
        assert!(dirs[0].join("vmcore").is_file());
        assert!(dirs[0].join("report.json").is_file());
        let text = events.since(0).concat();
        assert!(text.contains("crash_detected") && text.contains("vmcore_written") && text.contains("crash_report"));
    }
}
