//! The executor: the one place that carries out the orchestrator's actions (pause, resume, NMI,
//! host dump, kdump collection, crash directory) and the one writer of how a boot ends. Every
//! input that can change the VM's course comes through it: crash signals, the orchestrator's
//! deadlines, the VM's end, and the operator's commands (control socket). It lives across
//! guest resets.
//!
//! It reaches the VM only through [`VmControl`] (pause, resume, NMI, registers, memory), so its
//! tests use a fake VM and construct no device.
//!
//! Host-side vmcores are written by a `vmcore-writer` thread, one at a time, while the main
//! thread goes on serving its event loop: the control socket answers at once (a second dump,
//! or any other command, is refused with the dump in progress: [`Orchestrator::on_command`]),
//! and crash signals wait in the orchestrator. The thread says it is done on an eventfd
//! ([`CrashHandling::dump_notifier`]) that the main loop watches; the main loop then calls
//! [`CrashHandling::dump_done`], and the orchestrator hands out what waited for the dump
//! ([`Orchestrator::on_dump_done`]).

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::budget;
use super::live::{self, LiveOptions, LiveStats};
use super::report::{self, CrashRecord, DumpRecord, GuestInfo, ReportError, ReportState, TimedSignal};
use super::vmcore::{self, DumpSpec, VcpuState, VmcoreError, VmcoreOptions, VmcoreSummary};
use super::{
    flat, Action, Command, CrashSignal, DumpInProgress, DumpReason, NmiTargets, Orchestrator, Outcome, Policy, Trigger,
    VmcoreSource,
};
use crate::console::ConsoleTail;
use crate::events::{dump_progress, Event, EventLog};
use crate::exit::VmExit;
use crate::names::SkipReason;
use crate::seccomp::{self, SeccompError, ThreadKind};

/// How a boot of the guest ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEnd {
    Exit(VmExit),
    /// Boot the guest again after `wait` (`--reset-backoff`).
    Reset {
        wait: Duration,
    },
}

/// What the executor needs of the running VM.
pub trait VmControl {
    fn memory(&self) -> &GuestMemoryMmap;
    fn vcpus(&self) -> u32;
    /// Stop every vCPU (each saves its registers); false when some did not stop in `timeout`.
    fn pause(&self, timeout: Duration) -> bool;
    fn paused(&self) -> bool;
    fn resume(&self);
    /// Inject an NMI into `vcpu` (before it runs again).
    fn inject_nmi(&self, vcpu: u32);
    /// The registers of the stopped vCPUs, in vCPU order.
    fn snapshots(&self) -> Vec<VcpuState>;
    /// The registers of the vCPUs that reported a crash (pvpanic, the Hyper-V crash MSRs), as
    /// each read them at its report.
    fn reported(&self) -> Vec<VcpuState>;
    /// Stop the network devices writing received frames into guest memory until their drivers
    /// reset them ([`devices::virtio::VirtioNet::hold_rx`]).
    fn hold_network(&self);
}

/// The VM as the executor holds it: shared with the thread that writes a vmcore.
pub type SharedVm = Arc<dyn VmControl + Send + Sync>;

/// Who asked for a command, and gets its reply: called once, at once, or for a dump once the
/// vmcore is written (the control socket writes it to the connection that asked).
pub type Answer = Box<dyn FnOnce(Result<CommandReply, CommandError>) + Send>;

/// Why a vmcore was not written or collected.
#[derive(Debug, Error)]
pub enum DumpError {
    /// The crash has no directory to write into (its creation failed, with this reason).
    #[error("{0}")]
    NoCrashDirectory(String),
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vmcore not written{}", free.map_or(String::new(), |f| format!(" ({f} bytes free)")))]
    Write {
        #[source]
        source: VmcoreError,
        /// Bytes free where the vmcore was written, when known.
        free: Option<u64>,
    },
    #[error("cannot open {}", path.display())]
    CrashDiskOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    CrashDiskIo(std::io::Error),
    #[error(transparent)]
    CrashDiskFormat(#[from] flat::FlatError),
    #[error(transparent)]
    Record(#[from] ReportError),
    #[error("cannot start the vmcore writer thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot confine the vmcore writer thread")]
    Confine(#[source] SeccompError),
    #[error("the vmcore writer thread panicked")]
    WriterPanicked,
    /// `--crash-dir-max` leaves too little room, even without the delivered crash directories.
    #[error(
        "vmcore not written: the crash directory's budget (--crash-dir-max {max} bytes) leaves {available} bytes, \
         and the vmcore may take up to {needed}"
    )]
    OverBudget { max: u64, available: u64, needed: u64 },
    /// `--vmcores-per-signature` vmcores of the crash's signature exist already (a skip, not a
    /// failure: [`DumpError::is_skip`]).
    #[error(
        "vmcore not written: {count} crash directories of signature {signature} hold one already \
         (--vmcores-per-signature {limit}; {counted_in} count)"
    )]
    Duplicate { signature: String, count: u64, limit: u32, counted_in: &'static str },
}

impl DumpError {
    /// A vmcore left out on purpose (`--crash-dir-max`, `--vmcores-per-signature`): the crash
    /// is finished without one, and that is no failure to collect it.
    pub fn is_skip(&self) -> bool {
        matches!(self, DumpError::OverBudget { .. } | DumpError::Duplicate { .. })
    }
}

/// Why an operator's command was refused or failed.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error("no vCPU {vcpu} (the VM has {vcpus})")]
    NoSuchVcpu { vcpu: u32, vcpus: u32 },
    #[error("dump failed")]
    Dump(#[from] DumpError),
    #[error("this boot of the guest is ending; try again once it runs")]
    Ending,
    #[error("dump level {0} is out of range (0-31)")]
    BadDumpLevel(u8),
    /// One dump at a time: `what` is being written since `since` (UTC).
    #[error("a dump is in progress ({what}, since {since}); try again once it is written")]
    DumpInProgress { what: String, since: String },
}

/// A host-side vmcore written for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorDump {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub duration_ms: u64,
    /// A live dump: the guest's pause, the memory copied on write, whether the copy limit
    /// paused it for the rest.
    pub live: Option<LiveStats>,
}

/// The dump being written, as `status` and the refusal of a command say it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DumpStatus {
    /// Why (`requested on the control socket`, or the crash's reason).
    pub reason: String,
    /// A live dump: the guest runs meanwhile.
    pub live: bool,
    /// When it began (UTC, RFC 3339).
    pub since: String,
    /// The vmcore being written, as events name it.
    pub path: String,
}

/// A host-side vmcore being written by the `vmcore-writer` thread.
struct DumpJob {
    reason: DumpReason,
    status: DumpStatus,
    /// What the thread wrote, sent as its last act (before it signals the eventfd). Nothing
    /// sent and the sender gone: the thread panicked.
    result: mpsc::Receiver<Result<Written, DumpError>>,
    thread: JoinHandle<()>,
}

/// The operator's dump (the control socket's `dump`), from the command to its answer.
struct OperatorDumpJob {
    /// Its format and level.
    spec: DumpSpec,
    /// A live dump: the guest runs meanwhile.
    live: bool,
    /// Who asked.
    answer: Answer,
    /// Its directory while the vmcore is written (the answer names the final one).
    record: Option<DumpRecord>,
    /// What it gave, until it is answered.
    result: Option<Result<OperatorDump, DumpError>>,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandReply {
    NmiInjected {
        vcpus: Vec<u32>,
    },
    /// `all_stopped`: every vCPU stopped in time (their registers are saved).
    Paused {
        all_stopped: bool,
    },
    Resumed,
    Dumped(OperatorDump),
    /// The boot ends (reset or shutdown); the reply is all the operator gets.
    Ending,
}

/// How long to wait for the vCPUs to stop.
pub(super) const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `--live-dump-max-copy` unless given: 1 GiB.
pub const DEFAULT_LIVE_MAX_COPY: u64 = 1 << 30;

/// For tests only: with this set to `progress` in crashvmm's environment, the thread that
/// writes a host-side vmcore stops for good right after its first `dump_progress` event (a
/// tenth of the file), so that a test can kill crashvmm in the middle of a dump at a point it
/// can observe. Nothing but SIGKILL ends such a crashvmm.
pub const TEST_HOLD_DUMP_ENV: &str = "CRASHVMM_TEST_HOLD_DUMP";

/// Everything crash handling is given at start (`vm.rs` builds it from the `VmConfig`).
pub struct CrashHandlingConfig {
    pub policy: Policy,
    /// Where crash directories (and the operator's dumps) go.
    pub crash_dir: PathBuf,
    pub guest: GuestInfo,
    /// The disk the guest's crash kernel writes its dump to.
    pub crash_disk: Option<PathBuf>,
    /// Compute the SHA-256 of host-side vmcores (`--vmcore-sha256`).
    pub vmcore_sha256: bool,
    /// Format, dump level and compression of host-side vmcores.
    pub dump_spec: DumpSpec,
    /// `--live-dump-max-copy` (guest memory a live dump may have copied on write before it
    /// pauses the guest for the rest) and `--live-dump-snapshot`.
    pub live: LiveOptions,
    /// `--upload`: the spool each finished crash directory is queued in.
    pub upload_spool: Option<delivery::Spool>,
    /// `--crash-dir-max`: bytes the crash directory may hold (see `budget`).
    pub crash_dir_max: Option<u64>,
    /// `--vmcores-per-signature` (0: no limit), and the store's count (`--upload`).
    pub vmcores_per_signature: u32,
    pub store_query: Option<crate::upload::StoreQuery>,
    /// `--upload-host`: this host's name in the store's keys (default: the kernel's).
    pub upload_host: Option<String>,
    pub events: EventLog,
    /// The console's tail, for crash reports and signatures.
    pub console: ConsoleTail,
}

/// Crash handling state that outlives a boot.
pub struct CrashHandling {
    pub orchestrator: Orchestrator,
    pub crash_dir: PathBuf,
    pub guest: GuestInfo,
    events: EventLog,
    console: ConsoleTail,
    /// Event-log position where the current crash's events begin.
    events_mark: usize,
    /// The current boot's last signal (the one that begins a crash, when one does).
    last_signal: Option<TimedSignal>,
    record: Option<CrashRecord>,
    /// Why the current crash has no directory (it could not be created).
    record_error: Option<String>,
    /// The VM is paused for good (`pause` policies): wait to be stopped.
    pub stay_paused: bool,
    /// The disk the guest's crash kernel writes its dump to.
    crash_disk: Option<PathBuf>,
    /// Compute the SHA-256 of host-side vmcores (`--vmcore-sha256`).
    vmcore_sha256: bool,
    /// Format, dump level and compression of host-side vmcores.
    dump_spec: DumpSpec,
    /// `--live-dump-max-copy` and `--live-dump-snapshot`.
    live: LiveOptions,
    /// `--upload`: the spool each finished crash directory is queued in.
    upload_spool: Option<delivery::Spool>,
    /// `--crash-dir-max`.
    crash_dir_max: Option<u64>,
    /// `--vmcores-per-signature`, the store's count, its answers of the last
    /// [`STORE_COUNT_TTL`] (signature id -> when asked, count), `--upload-host`.
    vmcores_per_signature: u32,
    store_query: Option<crate::upload::StoreQuery>,
    store_counts: std::collections::HashMap<String, (Instant, delivery::VmcoreCount)>,
    upload_host: Option<String>,
    /// The current crash's vmcore was refused for being a duplicate already.
    duplicate: bool,
    /// The current crash's vmcore was refused for the budget already (a host-side vmcore after
    /// a kdump collection the budget refused is refused without a second event).
    over_budget: bool,
    /// When the crashed kernel kexec'd into its crash kernel.
    kexec_at: Option<Instant>,
    /// When this boot started, and when its crash was detected (the crash loop's measure).
    boot_started: Instant,
    crash_at: Option<Instant>,
    /// The wait decided for the boot that follows this crash (`--reset-backoff`).
    reset_wait: Duration,
    /// The last crash directory written.
    last_dir: Option<PathBuf>,
    /// How this boot ends, once decided. Written by [`Self::execute`] and [`Self::vm_exit`] only.
    end: Option<BootEnd>,
    /// The last pause stopped every vCPU in time.
    pause_ok: bool,
    /// The operator's dump being carried out, until it is answered.
    operator: Option<OperatorDumpJob>,
    /// The vmcore being written, if any.
    job: Option<DumpJob>,
    /// Signalled by the `vmcore-writer` thread when it is done (the main loop watches it).
    dump_notify: Arc<EventFd>,
}

impl CrashHandling {
    pub fn new(config: CrashHandlingConfig) -> std::io::Result<Self> {
        let CrashHandlingConfig {
            policy,
            crash_dir,
            guest,
            crash_disk,
            vmcore_sha256,
            dump_spec,
            live,
            upload_spool,
            crash_dir_max,
            vmcores_per_signature,
            store_query,
            upload_host,
            events,
            console,
        } = config;
        Ok(Self {
            orchestrator: Orchestrator::new(policy),
            crash_dir: absolute(crash_dir),
            guest,
            events,
            console,
            // The first crash's events are the session's, from its start.
            events_mark: 0,
            last_signal: None,
            record: None,
            record_error: None,
            stay_paused: false,
            crash_disk,
            vmcore_sha256,
            dump_spec,
            live,
            upload_spool,
            crash_dir_max,
            vmcores_per_signature,
            store_query,
            store_counts: Default::default(),
            upload_host,
            duplicate: false,
            over_budget: false,
            kexec_at: None,
            boot_started: Instant::now(),
            crash_at: None,
            reset_wait: Duration::ZERO,
            last_dir: None,
            end: None,
            pause_ok: true,
            operator: None,
            job: None,
            dump_notify: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// The eventfd the `vmcore-writer` thread signals when it is done: the main loop watches
    /// it and then calls [`Self::dump_done`].
    pub fn dump_notifier(&self) -> Arc<EventFd> {
        self.dump_notify.clone()
    }

    /// A new boot: forget the previous boot's signals and end.
    pub fn on_boot(&mut self) {
        self.last_signal = None;
        self.stay_paused = false;
        self.kexec_at = None;
        self.end = None;
        self.boot_started = Instant::now();
        self.crash_at = None;
        self.reset_wait = Duration::ZERO;
        self.orchestrator.on_reset();
    }

    /// How this boot ends, once decided.
    pub fn end(&self) -> Option<BootEnd> {
        self.end.clone()
    }

    /// The last crash directory written.
    pub fn last_crash_dir(&self) -> Option<&Path> {
        self.last_dir.as_deref()
    }

    /// At start, before crash handling (and the uploader): say what killed crashvmms left under
    /// `crash_dir` (crash directories and operator's dumps they did not finish), in the log and
    /// as `stale_temporary` events. They are kept: one may hold the only vmcore of a crash, if
    /// half of it.
    pub fn report_leftovers(crash_dir: &Path, events: &EventLog) {
        for l in report::find_leftovers(&absolute(crash_dir.to_path_buf())) {
            let said = match (&l.report_error, &l.state) {
                (Some(e), _) => e.clone(),
                (None, state) => format!(
                    "its report.json says {} {}, trigger {}, begun {}",
                    l.kind.as_deref().unwrap_or("(no kind)"),
                    state.as_deref().unwrap_or("(no state)"),
                    l.trigger.as_deref().unwrap_or("(none)"),
                    l.started_at.as_deref().unwrap_or("(unknown)")
                ),
            };
            log::warn!(
                "{}: left unfinished by crashvmm {}, which is no longer running ({} bytes, {} on disk); {said}; \
                 kept (remove it with rm -r once its contents are of no use)",
                l.path.display(),
                l.pid,
                l.bytes,
                l.allocated_bytes
            );
            events.emit(Event::StaleTemporary {
                path: l.path.display().to_string(),
                pid: l.pid,
                bytes: l.bytes,
                allocated_bytes: l.allocated_bytes,
                kind: l.kind,
                trigger: l.trigger,
                state: l.state,
                started_at: l.started_at,
                report_error: l.report_error,
            });
        }
    }

    fn record_signal(&mut self, timed: TimedSignal, now: Instant) {
        if let Some(r) = self.record.as_mut() {
            r.add_signal(timed.clone());
        }
        if let CrashSignal::GuestKexec { .. } = timed.signal {
            self.kexec_at = Some(now);
        }
        self.last_signal = Some(timed);
    }

    /// A crash signal crashvmm itself observed now (the watchdog's hang).
    pub fn signal(&mut self, signal: CrashSignal, vm: &SharedVm) {
        self.observed(TimedSignal { at: Utc::now(), signal }, Instant::now(), vm);
    }

    /// A crash signal from the VM, observed at `timed.at` and queued at `seen`. Decided now, or
    /// (while a vmcore is written) once it is: the orchestrator holds it.
    pub fn observed(&mut self, timed: TimedSignal, seen: Instant, vm: &SharedVm) {
        if self.end.is_some() {
            return;
        }
        log::debug!("crash signal: {timed:?}");
        let actions = self.orchestrator.on_signal(timed, seen);
        self.execute(actions, vm);
    }

    /// The orchestrator's deadline may have passed.
    pub fn timer(&mut self, vm: &SharedVm) {
        if self.end.is_some() {
            return;
        }
        let actions = self.orchestrator.on_timer(Instant::now());
        self.execute(actions, vm);
    }

    /// When the main loop must call [`Self::timer`] next: none while a vmcore is written (its
    /// end wakes the main loop through [`Self::dump_notifier`]).
    pub fn deadline(&self) -> Option<Instant> {
        self.orchestrator.deadline()
    }

    /// The dump being written, if any.
    pub fn dump_in_progress(&self) -> Option<&DumpStatus> {
        self.job.as_ref().map(|j| &j.status)
    }

    /// The `vmcore-writer` thread signalled [`Self::dump_notifier`]: if the vmcore being
    /// written is done, record it, carry out what waited for it, and answer the operator.
    /// (A signal left over from a dump already waited for changes nothing.)
    pub fn dump_done(&mut self, vm: &SharedVm) {
        let Some(job) = self.job.as_ref() else { return };
        let written = match job.result.try_recv() {
            Ok(written) => written,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err(DumpError::WriterPanicked),
        };
        self.complete_dump(written, vm);
    }

    /// Wait for the vmcore being written (and for any dump what follows it starts): the VM is
    /// about to end.
    pub fn wait_dump(&mut self, vm: &SharedVm) {
        while let Some(job) = self.job.as_ref() {
            let written = job.result.recv().unwrap_or(Err(DumpError::WriterPanicked));
            self.complete_dump(written, vm);
        }
    }

    /// The VM stopped (its vCPU threads ended): decide and finish. Always decides the boot's
    /// end.
    pub fn vm_exit(&mut self, exit: VmExit, vm: &SharedVm) -> BootEnd {
        self.wait_dump(vm);
        if self.end.is_none() {
            let actions = self.orchestrator.on_vm_exit(exit.clone(), Instant::now());
            self.execute(actions, vm);
            self.wait_dump(vm);
        }
        if matches!(self.end, Some(BootEnd::Reset { .. })) && matches!(exit, VmExit::Stopped { .. }) {
            // Stopped from outside (SIGINT, SIGTERM, the console escape) while a reset was
            // decided, say during the dump before it: the stop wins (the crash is recorded).
            self.end = None;
        }
        self.ended_with(exit)
    }

    /// The VM ends with `exit` unless the actions decided otherwise: nothing is left to pause
    /// once it has stopped, so `StayPaused` ends here too.
    fn ended_with(&mut self, exit: VmExit) -> BootEnd {
        self.end.get_or_insert_with(|| BootEnd::Exit(self.orchestrator.final_exit(exit))).clone()
    }

    /// The operator's command (control socket); `answer` gets the reply, at once, or for a
    /// dump once its vmcore is written.
    pub fn command(&mut self, command: Command, vm: &SharedVm, answer: Answer) {
        if let Err(e) = self.check(command, vm.as_ref()) {
            return answer(Err(e));
        }
        let actions = match self.orchestrator.on_command(command, vm.paused(), Instant::now()) {
            Ok(actions) => actions,
            Err(busy) => return answer(Err(self.busy(&busy))),
        };
        if let Command::InjectNmi(_) = command {
            self.record_signal(TimedSignal { at: Utc::now(), signal: CrashSignal::NmiInjected }, Instant::now());
        }
        if let Command::Dump(o) = command {
            let level = o.dump_level.unwrap_or(self.dump_spec.dump_level);
            let format = o.format.unwrap_or(self.dump_spec.format);
            let spec = DumpSpec { format, dump_level: level, ..self.dump_spec };
            self.operator = Some(OperatorDumpJob { spec, live: o.live, answer, record: None, result: None });
            self.execute(actions, vm);
            if self.job.is_none() {
                // Not started, or it failed at once: say so now.
                self.answer_operator();
                if let Some(op) = self.operator.take() {
                    (op.answer)(Err(CommandError::Ending));
                }
            }
            return;
        }
        self.execute(actions, vm);
        answer(Ok(match command {
            Command::InjectNmi(targets) => CommandReply::NmiInjected { vcpus: targets_of(targets, vm.as_ref()) },
            Command::Pause => {
                self.events.emit(Event::VmPaused);
                CommandReply::Paused { all_stopped: self.pause_ok }
            }
            Command::Resume => {
                self.events.emit(Event::VmResumed);
                CommandReply::Resumed
            }
            Command::Reset => CommandReply::Ending,
            Command::Shutdown => {
                self.ended_with(VmExit::HostShutdown);
                CommandReply::Ending
            }
            Command::Dump(_) => unreachable!("answered above"),
        }))
    }

    /// Whether the operator's input to the guest (`sysrq`, which is no command) is taken now:
    /// as a command would be, not while this boot ends nor while a vmcore is being written.
    pub fn check_input(&self) -> Result<(), CommandError> {
        if self.end.is_some() {
            return Err(CommandError::Ending);
        }
        match self.orchestrator.dump_in_progress() {
            Some(busy) => Err(self.busy(busy)),
            None => Ok(()),
        }
    }

    /// What makes a command wrong whatever the VM does: a boot that ends, a vCPU or a dump level
    /// that does not exist.
    fn check(&self, command: Command, vm: &dyn VmControl) -> Result<(), CommandError> {
        if self.end.is_some() {
            return Err(CommandError::Ending);
        }
        match command {
            Command::InjectNmi(NmiTargets::One(vcpu)) if vcpu >= vm.vcpus() => {
                Err(CommandError::NoSuchVcpu { vcpu, vcpus: vm.vcpus() })
            }
            Command::Dump(o) if o.dump_level.is_some_and(|l| l > DumpSpec::MAX_LEVEL) => {
                Err(CommandError::BadDumpLevel(o.dump_level.unwrap_or_default()))
            }
            _ => Ok(()),
        }
    }

    /// The refusal of a command while `busy` is being written.
    fn busy(&self, busy: &DumpInProgress) -> CommandError {
        let status = self.dump_in_progress();
        let reason = status.map_or_else(|| busy.reason.to_string(), |s| s.reason.clone());
        CommandError::DumpInProgress {
            what: if busy.live { format!("live, {reason}") } else { reason },
            since: status.map_or_else(|| "a moment ago".into(), |s| s.since.clone()),
        }
    }

    /// Answer the operator's dump, once it is done.
    fn answer_operator(&mut self) {
        if self.operator.as_ref().is_some_and(|op| op.result.is_some()) {
            if let Some(OperatorDumpJob { answer, result: Some(result), .. }) = self.operator.take() {
                answer(result.map(CommandReply::Dumped).map_err(CommandError::from));
            }
        }
    }

    /// Carry out the orchestrator's `actions`, in order (and what a dump that fails at once,
    /// or a kdump collection, brings right after it).
    fn execute(&mut self, actions: Vec<Action>, vm: &SharedVm) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            log::debug!("crash action: {action:?}");
            match action {
                Action::RecordSignal { signal, seen } => self.record_signal(signal, seen),
                Action::BeginCrash { trigger } => {
                    // The crashed kernel's memory is what the crash is read from: frames that
                    // arrive from now on do not land in it.
                    vm.hold_network();
                    self.begin(trigger)
                }
                Action::Pause => {
                    self.pause_ok = vm.pause(PAUSE_TIMEOUT);
                    if !self.pause_ok {
                        log::warn!("not every vCPU stopped within {PAUSE_TIMEOUT:?}; their registers may be missing");
                    }
                }
                Action::Resume => vm.resume(),
                Action::HostDump { reason } => match self.start_dump(&reason, vm) {
                    Ok(job) => {
                        // What follows is handed out once the vmcore is written (`dump_done`).
                        self.orchestrator.on_dump_started(&reason, job.status.live, Instant::now());
                        self.job = Some(job);
                    }
                    Err(e) => {
                        let skipped = e.is_skip();
                        let error = self.dump_result(&reason, Err(e));
                        let error = error.as_ref().map(|e| crate::error::Chain(e));
                        let error = error.as_ref().map(|e| e as &dyn Display);
                        queue.extend(match error {
                            Some(why) if skipped => {
                                self.orchestrator.on_vmcore_skipped(Some(&reason), why, Instant::now())
                            }
                            _ => self.orchestrator.on_dump_done(&reason, error, Instant::now()),
                        });
                    }
                },
                Action::CollectKdump => {
                    let result = self.collect_kdump(vm.as_ref());
                    let skipped = result.as_ref().is_err_and(DumpError::is_skip);
                    let result = result.as_ref().map(|c| *c).map_err(|e| crate::error::Chain(e));
                    let result = result.as_ref().map(|c| *c).map_err(|e| e as &dyn Display);
                    queue.extend(match result {
                        Err(why) if skipped => self.orchestrator.on_vmcore_skipped(None, why, Instant::now()),
                        result => self.orchestrator.on_kdump_collected(result, Instant::now()),
                    });
                }
                Action::FinishCrash { outcome } => self.finish(&outcome, vm.as_ref()),
                Action::Stop(exit) => self.end = Some(BootEnd::Exit(exit)),
                Action::Reset => self.end = Some(BootEnd::Reset { wait: self.reset_wait }),
                Action::InjectNmi(targets) => {
                    for vcpu in targets_of(targets, vm.as_ref()) {
                        // Logged before the vCPU can take it: the panic it causes comes after.
                        self.events.emit(Event::NmiInjected { vcpu });
                        vm.inject_nmi(vcpu);
                    }
                }
                Action::CrashKernelStarted { vcpu } => self.crash_kernel_started(vcpu, Instant::now()),
                Action::StayPaused => {
                    log::info!("crash handled; the VM stays paused (stop crashvmm with SIGINT or SIGTERM)");
                    self.stay_paused = true;
                }
            }
        }
    }

    /// The crash disk's first write (the signal just recorded) is the first sign of the crash
    /// kernel: `crash_kernel_started` at that write's time, in the event log and the report, as
    /// the vCPU thread records it when Hyper-V is set up again. The kdump's duration counts from
    /// here where no kexec was seen.
    fn crash_kernel_started(&mut self, vcpu: u32, now: Instant) {
        let at = self.last_signal.as_ref().map_or_else(Utc::now, |t| t.at);
        if self.events.emit_at(Event::CrashKernelStarted { vcpu }, at) {
            log::info!("vCPU {vcpu}: the crash kernel is running (it writes the crash disk)");
        }
        self.kexec_at.get_or_insert(now);
        self.record_signal(TimedSignal { at, signal: CrashSignal::CrashKernelStarted { vcpu } }, now);
    }

    fn begin(&mut self, trigger: Trigger) {
        let n = self.orchestrator.crashes();
        log::warn!("crash {n} detected (trigger {trigger})");
        self.crash_at = Some(Instant::now());
        self.over_budget = false;
        self.duplicate = false;
        // Its cause's time, observed where the guest did it: the main thread may get to this
        // line long after the guest went on (to its kexec, say).
        let signal_ts = self.last_signal.as_ref().map(|t| crate::events::ts(t.at));
        self.events.emit(Event::CrashDetected { trigger, signal_ts });
        self.record_error = None;
        match CrashRecord::begin(&self.crash_dir, n, trigger) {
            Ok(mut r) => {
                // The signals of this crash so far: from the trigger on.
                if let Some(t) = self.last_signal.clone() {
                    r.add_signal(t);
                }
                // The first record, should crashvmm be killed before the directory is complete.
                if let Err(e) = r.progress(ReportState::Recording, self.orchestrator.policy(), &self.guest) {
                    log::warn!("{}", crate::error::Chain(&e));
                }
                self.record = Some(r);
            }
            Err(e) => {
                log::error!("{}; this crash gets no crash directory", crate::error::Chain(&e));
                self.record_error = Some(crate::error::chain(&e));
            }
        }
    }

    fn no_crash_directory(&self) -> DumpError {
        DumpError::NoCrashDirectory(self.record_error.clone().unwrap_or_else(|| "no crash directory".into()))
    }

    /// Start writing the vmcore of a `HostDump`: a crash's into its crash directory, the
    /// operator's into a directory of its own next to the crash directories. The
    /// `vmcore-writer` thread writes it with [`DumpTarget::write`], which writes every
    /// host-side vmcore (a live one through a forked process).
    ///
    /// Either is written as `vmcore.partial` in a temporary directory whose `report.json` says
    /// so first; `complete_dump` names it `vmcore`, and the directory gets its final name once
    /// complete (the operator's then, a crash's at `FinishCrash`).
    fn start_dump(&mut self, reason: &DumpReason, vm: &SharedVm) -> Result<DumpJob, DumpError> {
        let hold = std::env::var_os(TEST_HOLD_DUMP_ENV).is_some_and(|v| v == "progress");
        let (target, spec, progress, live) = if reason.is_crash() {
            let no_dir = self.no_crash_directory();
            if self.record.is_none() {
                return Err(no_dir);
            }
            self.check_duplicates(vm.as_ref())?;
            self.make_room(vmcore::max_bytes(vm.memory(), vm.vcpus(), self.dump_spec))?;
            let Some(record) = self.record.as_mut() else { return Err(no_dir) };
            if let Err(e) = record.writing_vmcore(reason, self.orchestrator.policy(), &self.guest) {
                log::warn!("{}", crate::error::Chain(&e));
            }
            let target =
                DumpTarget { path: record.vmcore_partial_path(), shown: record.final_dir.join("vmcore"), hold };
            (target, self.dump_spec, std::io::stderr().is_terminal(), reason.is_live())
        } else {
            let no_op = || DumpError::NoCrashDirectory("no operator's dump was asked for".into());
            let op = self.operator.as_mut().ok_or_else(no_op)?;
            let record = DumpRecord::begin(&self.crash_dir, reason, op.live, &self.guest)?;
            let target = DumpTarget { path: record.vmcore_partial_path(), shown: record.final_vmcore_path(), hold };
            op.record = Some(record);
            (target, op.spec, false, op.live)
        };
        let operator = !reason.is_crash();
        let shown = target.shown.display().to_string();
        let status = DumpStatus {
            reason: reason.to_string(),
            live,
            since: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            path: shown.clone(),
        };
        if operator && !live {
            self.events.emit(Event::DumpStarted { path: shown.clone(), pause_us: None, snapshot: None });
        }
        let opts = self.vmcore_options(spec, progress);
        let live = live.then_some(self.live);
        let (events, vm, why) = (self.events.clone(), vm.clone(), reason.clone());
        let (sender, result) = mpsc::channel();
        let notify = NotifyOnDrop(self.dump_notify.clone());
        let thread = std::thread::Builder::new()
            .name("vmcore-writer".into())
            .spawn(move || {
                // Wakes the main loop when this thread ends, however it does: after its result
                // is sent, or when it panicked (and the sender is gone).
                let _notify = notify;
                let written = (|| {
                    seccomp::apply(ThreadKind::VmcoreWriter).map_err(DumpError::Confine)?;
                    // A live dump says it started once its snapshot is taken, with the guest's
                    // pause.
                    let started = |l: &LiveStats| {
                        events.emit(Event::DumpStarted {
                            path: shown.clone(),
                            pause_us: Some(l.pause_us),
                            snapshot: Some(l.snapshot),
                        })
                    };
                    target.write(&events, vm.as_ref(), &why, opts, live, &started)
                })();
                // The main thread may have gone (crashvmm ends): nobody to tell.
                let _ = sender.send(written);
            })
            .map_err(DumpError::Thread)?;
        Ok(DumpJob { reason: reason.clone(), status, result, thread })
    }

    /// The vmcore being written is done (`written`): record it, carry out what the
    /// orchestrator hands out now, answer the operator.
    fn complete_dump(&mut self, written: Result<Written, DumpError>, vm: &SharedVm) {
        let Some(job) = self.job.take() else { return };
        // It has sent its result: it ends at once.
        if job.thread.join().is_err() {
            log::error!("the vmcore writer thread panicked");
        }
        let error = self.dump_result(&job.reason, written);
        let error = error.as_ref().map(|e| crate::error::Chain(e));
        let error = error.as_ref().map(|e| e as &dyn Display);
        let actions = self.orchestrator.on_dump_done(&job.reason, error, Instant::now());
        self.execute(actions, vm);
        self.answer_operator();
    }

    /// Where a written (or failed) vmcore goes: a crash's into its record (its error, for the
    /// orchestrator, is returned), the operator's into the answer.
    fn dump_result(&mut self, reason: &DumpReason, written: Result<Written, DumpError>) -> Option<DumpError> {
        if !reason.is_crash() {
            let Some(op) = self.operator.as_mut() else {
                log::debug!("operator dump done, nobody to answer: {:?}", written.map(|w| w.summary));
                return None;
            };
            op.result = Some(match (written, op.record.take()) {
                (Ok(w), Some(mut record)) => match record.finish(&w.summary, w.live.as_ref()) {
                    Ok(path) => Ok(OperatorDump {
                        path,
                        bytes: w.summary.bytes,
                        sha256: w.summary.sha256,
                        duration_ms: w.summary.duration.as_millis() as u64,
                        live: w.live,
                    }),
                    Err(e) => {
                        // The vmcore stays where it is; the next start reports the directory.
                        log::error!("operator dump left in {}: {}", record.tmp_dir.display(), crate::error::Chain(&e));
                        Err(DumpError::Record(e))
                    }
                },
                (Ok(_), None) => Err(DumpError::NoCrashDirectory("the operator's dump has no directory".into())),
                (Err(e), record) => {
                    if let Some(record) = record {
                        record.abandon();
                    }
                    Err(e)
                }
            });
            return None;
        }
        let record = self.record.as_mut();
        match (written, record) {
            (Ok(w), Some(record)) => {
                record.vcpus = w.vcpus;
                match record.set_vmcore(&w.summary, reason) {
                    Ok(()) => None,
                    Err(e) => {
                        log::error!(
                            "vmcore left as {}: {}",
                            record.vmcore_partial_path().display(),
                            crate::error::Chain(&e)
                        );
                        record.vmcore_error = Some(crate::error::chain(&e));
                        Some(DumpError::Record(e))
                    }
                }
            }
            (Ok(_), None) => Some(self.no_crash_directory()),
            (Err(e), record) => {
                if let Some(record) = record {
                    record.vmcore_error = Some(crate::error::chain(&e));
                }
                Some(e)
            }
        }
    }

    fn vmcore_options(&self, spec: DumpSpec, progress: bool) -> VmcoreOptions<'static> {
        VmcoreOptions { spec, progress, on_progress: None, sha256: self.vmcore_sha256 }
    }

    /// Take the guest's dump (makedumpfile's flattened format) from the crash disk into the
    /// crash directory as `vmcore.kdump`. `Ok(false)` when there is no crash disk.
    fn collect_kdump(&mut self, vm: &dyn VmControl) -> Result<bool, DumpError> {
        let Some(disk) = self.crash_disk.clone() else { return Ok(false) };
        let no_dir = self.no_crash_directory();
        if self.record.is_none() {
            return Err(no_dir);
        }
        // What the crash kernel wrote bounds what it becomes here.
        if let Err(e) = self.check_duplicates(vm).and_then(|()| self.make_room(budget::usage(&disk))) {
            if let Some(record) = self.record.as_mut() {
                record.vmcore_error = Some(crate::error::chain(&e));
            }
            return Err(e);
        }
        let Some(record) = self.record.as_mut() else { return Err(no_dir) };
        let duration = self.kexec_at.map_or(Duration::ZERO, |t| t.elapsed());
        let file = "vmcore.kdump";
        if let Err(e) = record.collecting_kdump(file, self.orchestrator.policy(), &self.guest) {
            log::warn!("{}", crate::error::Chain(&e));
        }
        let out_path = record.partial_path(file);
        let result = (|| -> Result<u64, DumpError> {
            let input =
                std::fs::File::open(&disk).map_err(|source| DumpError::CrashDiskOpen { path: disk.clone(), source })?;
            let disk_len = input.metadata().map_err(DumpError::CrashDiskIo)?.len();
            let out = crate::files::create_private(&out_path)
                .map_err(|source| DumpError::CreateDir { path: out_path.clone(), source })?;
            let len = flat::rearrange(std::io::BufReader::with_capacity(1 << 20, input), &out, disk_len.max(1 << 40))?;
            out.sync_all().map_err(DumpError::CrashDiskIo)?;
            record.commit(file)?;
            Ok(len)
        })();
        match result {
            Ok(bytes) => {
                record.set_guest_vmcore(file, bytes, duration)?;
                let duration_ms = duration.as_millis() as u64;
                log::info!("kdump: {bytes}-byte dump collected from {}", disk.display());
                self.events.emit(Event::KdumpCompleted { bytes, duration_ms });
                self.events.emit(Event::VmcoreWritten {
                    path: record.final_dir.join(file).display().to_string(),
                    bytes,
                    source: VmcoreSource::Guest,
                    duration_ms,
                    pause_us: None,
                    snapshot: None,
                });
                Ok(true)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&out_path);
                let why = crate::error::Chain(&e);
                log::error!("kdump: no dump collected from {}: {why}", disk.display());
                record.vmcore_error = Some(format!("crash disk: {why}"));
                Err(e)
            }
        }
    }

    /// `--vmcores-per-signature`: refuse the crash's vmcore once that many crash directories of
    /// its signature hold one. The signature is taken now, from guest memory and the console
    /// (the analysis runs again with the vmcore's VMCOREINFO when the crash is finished). With
    /// `--upload`, the count is the store's (asked within [`STORE_COUNT_LIMIT`], its answers
    /// kept [`STORE_COUNT_TTL`]) plus this host's directories not delivered yet; without, or
    /// when the store cannot be asked, this host's crash directory's (the report says which).
    fn check_duplicates(&mut self, vm: &dyn VmControl) -> Result<(), DumpError> {
        let limit = self.vmcores_per_signature;
        if limit == 0 || self.record.is_none() {
            return Ok(());
        }
        let console = self.console.contents();
        let Some(record) = self.record.as_mut() else { return Ok(()) };
        if record.vmcore_count.is_none() {
            if record.triage.is_none() {
                analyze(record, vm);
            }
            record.signature = record.find_signature(&console);
        }
        let Some(signature) = record.signature.as_ref().map(|s| s.id.clone()) else { return Ok(()) };
        let delivered: Vec<PathBuf> = match &self.upload_spool {
            Some(spool) => spool.delivered().map(|jobs| jobs.into_iter().map(|j| j.path).collect()).unwrap_or_default(),
            None => Vec::new(),
        };
        let local = local_vmcores(&self.crash_dir, &signature, &delivered);
        let store = self.store_query.as_ref().map(|q| {
            match self.store_counts.get(&signature).filter(|(at, _)| at.elapsed() < STORE_COUNT_TTL) {
                Some((_, c)) => Ok(c.clone()),
                None => q.count(&signature, limit as usize, STORE_COUNT_LIMIT).inspect(|c| {
                    self.store_counts.insert(signature.clone(), (Instant::now(), c.clone()));
                }),
            }
        });
        let (count, counted_in, store_error, first) = match store {
            Some(Ok(s)) => (s.count as u64 + local.undelivered, "store", None, s.first.or(local.first)),
            Some(Err(e)) => {
                log::warn!("vmcores per signature: the store's count: {e}; counting this host's crash directory");
                (local.count, "local", Some(e), local.first)
            }
            None => (local.count, "local", None, local.first),
        };
        let Some(record) = self.record.as_mut() else { return Ok(()) };
        if record.vmcore_count.is_none() {
            record.vmcore_count = Some(crash_report::VmcoreCount {
                signature_id: signature.clone(),
                count,
                limit,
                counted_in: counted_in.into(),
                store_error,
            });
        }
        if count < u64::from(limit) {
            return Ok(());
        }
        let e = DumpError::Duplicate { signature: signature.clone(), count, limit, counted_in };
        if std::mem::replace(&mut self.duplicate, true) {
            return Err(e);
        }
        log::warn!("{e}");
        record.duplicate_of = first;
        self.events.emit(Event::VmcoreSkipped {
            reason: SkipReason::Duplicate,
            needed_bytes: None,
            available_bytes: None,
            signature_id: Some(signature),
            count: Some(count),
        });
        Err(e)
    }

    /// Keep the crash directory within `--crash-dir-max` with a vmcore of up to `needed` bytes
    /// about to be written into it: remove the oldest delivered crash directories that make
    /// room (never the crash being handled, which is not delivered), or, where even all of
    /// them would not, none, and refuse the vmcore.
    fn make_room(&mut self, needed: u64) -> Result<(), DumpError> {
        let Some(max) = self.crash_dir_max else { return Ok(()) };
        let used = budget::usage(&self.crash_dir);
        let delivered = match &self.upload_spool {
            Some(spool) => spool.delivered().unwrap_or_else(|e| {
                log::warn!("crash directory budget: {}; no delivered directory can go", crate::error::Chain(&e));
                Vec::new()
            }),
            None => Vec::new(),
        };
        let current = self.record.as_ref().map(|r| r.final_dir.clone());
        let jobs: Vec<delivery::Job> =
            delivered.into_iter().filter(|j| j.path.is_dir() && Some(&j.path) != current.as_ref()).collect();
        let candidates: Vec<budget::Candidate> =
            jobs.iter().map(|j| budget::Candidate { path: j.path.clone(), bytes: budget::usage(&j.path) }).collect();
        let remove = match budget::plan(max, used, needed, &candidates) {
            Ok(n) => n,
            Err(short) => {
                let e = DumpError::OverBudget { max, available: short.available, needed };
                if std::mem::replace(&mut self.over_budget, true) {
                    return Err(e);
                }
                log::warn!("{e}");
                self.events.emit(Event::VmcoreSkipped {
                    reason: SkipReason::DiskBudget,
                    needed_bytes: Some(needed),
                    available_bytes: Some(short.available),
                    signature_id: None,
                    count: None,
                });
                return Err(e);
            }
        };
        for (job, c) in jobs.iter().zip(&candidates).take(remove) {
            match std::fs::remove_dir_all(&c.path) {
                Ok(()) => {
                    log::warn!(
                        "crash directory budget: removed {} ({} bytes; delivered to {})",
                        c.path.display(),
                        c.bytes,
                        job.url.as_deref().unwrap_or("the store")
                    );
                    self.events.emit(Event::CrashDirRemoved { dir: c.path.display().to_string(), bytes: c.bytes });
                    if let Some(spool) = &self.upload_spool {
                        if let Err(e) = spool.forget_delivered(job) {
                            log::warn!("{}", crate::error::Chain(&e));
                        }
                    }
                }
                Err(e) => log::error!("crash directory budget: cannot remove {}: {e}", c.path.display()),
            }
        }
        Ok(())
    }

    fn finish(&mut self, outcome: &Outcome, vm: &dyn VmControl) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if record.vcpus.is_empty() {
            record.vcpus = vm.snapshots();
        }
        analyze(&mut record, vm);
        // A vmcore of a signature the store was asked about: that answer is out of date (this
        // vmcore counts here until it is delivered, then in the store, which is asked again).
        if let (Some(_), Some(c)) = (&record.vmcore, &record.vmcore_count) {
            self.store_counts.remove(&c.signature_id);
        }
        // What the guest's flood left out so far is counted in this crash's own events.
        self.events.flush_suppressed();
        let events = self.events.since(self.events_mark);
        let console = self.console.contents();
        record.signature = record.find_signature(&console);
        if let Some(s) = &record.signature {
            log::warn!("crash signature {}: {}", s.id, s.title);
        }
        let uptime = self.crash_at.unwrap_or_else(Instant::now).saturating_duration_since(self.boot_started);
        let signature_id = record.signature.as_ref().map(|s| s.id.clone());
        if let Some((wait, streak)) = self.orchestrator.reset_wait(signature_id.as_deref(), uptime) {
            log::warn!("crash loop: crash {streak} in a row of its signature; the guest boots again in {wait:?}");
            self.events.emit(Event::ResetDelayed { wait_ms: wait.as_millis() as u64, streak, signature_id });
            record.reset_wait = Some(crash_report::ResetWait { seconds: wait.as_secs_f64(), streak });
            self.reset_wait = wait;
        }
        match record.finish(outcome, self.orchestrator.policy(), &self.guest, &events, &console) {
            Ok((dir, report)) => {
                log::warn!("crash report: {}", dir.display());
                self.events.emit(Event::CrashReport {
                    dir: dir.display().to_string(),
                    signature_id: record.signature.as_ref().map(|s| s.id.clone()),
                    title: record.signature.as_ref().map(|s| s.title.clone()),
                });
                if let Some(spool) = &self.upload_spool {
                    // One small job file; the upload thread does the rest.
                    let mut meta = delivery::JobMeta::from_report(&report);
                    if let Some(host) = &self.upload_host {
                        meta.host = host.clone();
                    }
                    match spool.enqueue(&dir, &meta) {
                        Ok(_) => {
                            log::info!("upload: {} queued", dir.display());
                            self.events.emit(Event::UploadQueued { dir: dir.display().to_string() });
                        }
                        Err(e) => log::error!("upload: {} not queued: {}", dir.display(), crate::error::Chain(&e)),
                    }
                }
                self.last_dir = Some(dir);
            }
            Err(e) => log::error!("crash directory incomplete: {}", crate::error::Chain(&e)),
        }
        self.events_mark = self.events.mark();
    }
}

/// How long the store may take to count a signature's vmcores before the local count is used.
const STORE_COUNT_LIMIT: Duration = Duration::from_secs(5);
/// How long the store's count of a signature is used again without asking.
const STORE_COUNT_TTL: Duration = Duration::from_secs(30);

/// Read the crashed kernel out of guest memory into `record` (`triage`, or why not).
fn analyze(record: &mut CrashRecord, vm: &dyn VmControl) {
    match super::triage::run(vm.memory(), &record.vcpus, &vm.reported(), vm.vcpus(), record.vmcoreinfo.as_deref()) {
        Ok(t) => {
            log::info!(
                "analysis: {} log records, {} vCPU stacks, {} parts unread, in {} us",
                t.analysis.log_records,
                t.analysis.cpus.len(),
                t.analysis.unread.len(),
                t.analysis.duration_us
            );
            record.triage = Some(t);
            record.triage_error = None;
        }
        Err(e) => {
            log::warn!("analysis: {}", crate::error::Chain(&e));
            record.triage_error = Some(crate::error::chain(&e));
        }
    }
}

/// This host's crash directories of one signature that hold a vmcore.
#[derive(Debug, Default, PartialEq, Eq)]
struct LocalVmcores {
    count: u64,
    /// Those not delivered to the store (yet).
    undelivered: u64,
    /// The oldest.
    first: Option<String>,
}

/// The crash directories under `crash_dir` whose report.json has `signature` and that hold a
/// vmcore (`vmcore` or `vmcore.kdump`); `delivered` are those the store has.
fn local_vmcores(crash_dir: &Path, signature: &str, delivered: &[PathBuf]) -> LocalVmcores {
    let Ok(entries) = std::fs::read_dir(crash_dir) else { return LocalVmcores::default() };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
        .filter(|p| p.join("vmcore").is_file() || p.join("vmcore.kdump").is_file())
        .filter(|p| {
            std::fs::read(p.join(delivery::REPORT))
                .ok()
                .and_then(|b| crash_report::from_slice::<crash_report::Report>(&b).ok())
                .and_then(|r| r.signature?.id)
                .is_some_and(|id| id == signature)
        })
        .collect();
    dirs.sort();
    // Delivered jobs name their directories canonically: one resolution per directory.
    let undelivered =
        dirs.iter().filter(|d| std::fs::canonicalize(d).map_or(true, |c| !delivered.contains(&c))).count() as u64;
    LocalVmcores { count: dirs.len() as u64, undelivered, first: dirs.first().map(|d| d.display().to_string()) }
}

fn targets_of(targets: NmiTargets, vm: &dyn VmControl) -> Vec<u32> {
    match targets {
        NmiTargets::All => (0..vm.vcpus()).collect(),
        NmiTargets::One(v) => vec![v],
    }
}

/// Where a host-side vmcore goes: `path` while it is written, `shown` in events and logs (the
/// name it has once its directory is complete).
struct DumpTarget {
    path: PathBuf,
    shown: PathBuf,
    /// [`TEST_HOLD_DUMP_ENV`]: stop for good at the first progress report.
    hold: bool,
}

/// A vmcore written, with the registers it holds and, for a live dump, what it cost the guest.
struct Written {
    summary: VmcoreSummary,
    vcpus: Vec<VcpuState>,
    live: Option<LiveStats>,
}

impl DumpTarget {
    /// Write the vmcore, with progress events and `vmcore_written` or `vmcore_failed`; a failed
    /// file is removed. The vCPUs are paused already, or, for a live dump (`live`: the copy
    /// limit), paused here for the snapshot only (`on_snapshot` is called once they run again).
    fn write(
        &self,
        events: &EventLog,
        vm: &dyn VmControl,
        reason: &DumpReason,
        opts: VmcoreOptions<'_>,
        live: Option<LiveOptions>,
        on_snapshot: &dyn Fn(&LiveStats),
    ) -> Result<Written, DumpError> {
        let mem = vm.memory();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let needed = vmcore::required_bytes(mem);
        if let Some(free) = free_bytes(dir).filter(|&f| f < needed) {
            log::warn!(
                "{} has {free} bytes free; the vmcore may need up to {needed} (zero pages are holes)",
                dir.display()
            );
        }
        let spec = opts.spec;
        log::info!(
            "writing {}host-side vmcore ({reason}) to {}: {}, dump level {}",
            if live.is_some() { "live " } else { "" },
            self.shown.display(),
            spec.format.report_name(),
            spec.dump_level
        );
        let progress = dump_progress(events);
        let report = |done: u64, total: u64| {
            progress(done, total);
            // Where `dump_progress` recorded its first event.
            if self.hold && done >= crate::events::progress_step(total) {
                log::warn!("{TEST_HOLD_DUMP_ENV}: the vmcore writer stops here ({} of {total} bytes)", done);
                loop {
                    std::thread::park();
                }
            }
        };
        let opts = VmcoreOptions { on_progress: Some(&report), ..opts };
        let written = match live {
            Some(live) => live::live_dump(vm, &self.path, &opts, live, on_snapshot)
                .map(|(summary, vcpus, stats)| Written { summary, vcpus, live: Some(stats) }),
            None => {
                let vcpus = vm.snapshots();
                vmcore::write_vmcore(mem, &vcpus, &self.path, &opts).map(|summary| Written {
                    summary,
                    vcpus,
                    live: None,
                })
            }
        };
        match written {
            Ok(w) => {
                let s = &w.summary;
                log::info!("vmcore: {} bytes ({} allocated) in {:?}", s.bytes, s.allocated_bytes, s.duration);
                if let Some(l) = &w.live {
                    log::info!(
                        "live dump ({} snapshot): guest paused {} us; {} bytes copied on write{}",
                        l.snapshot.as_str(),
                        l.pause_us,
                        l.copied_bytes,
                        if l.paused_for_rest { "; paused for the rest (copy limit)" } else { "" }
                    );
                }
                events.emit(Event::VmcoreWritten {
                    path: self.shown.display().to_string(),
                    bytes: s.bytes,
                    source: VmcoreSource::Host,
                    duration_ms: s.duration.as_millis() as u64,
                    pause_us: w.live.map(|l| l.pause_us),
                    snapshot: w.live.map(|l| l.snapshot),
                });
                Ok(w)
            }
            Err(source) => {
                let _ = std::fs::remove_file(&self.path);
                let e = DumpError::Write { source, free: free_bytes(dir) };
                log::error!("{}", crate::error::Chain(&e));
                events.emit(Event::VmcoreFailed { reason: crate::error::chain(&e) });
                Err(e)
            }
        }
    }
}

/// `path` made absolute, so that events and reports name crash directories unambiguously.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// Signals its eventfd when dropped (a thread's end wakes the main loop).
struct NotifyOnDrop(Arc<EventFd>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.write(1) {
            log::error!("cannot wake the main loop for the vmcore written: {e}");
        }
    }
}

/// Bytes available to an unprivileged writer on the file system of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
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
    use std::sync::Mutex;

    use vm_memory::Bytes;

    use super::*;
    use crate::layout::ram_ranges;
    use crate::sync::lock;

    /// A VM that records what the executor asked of it.
    struct FakeVm {
        mem: GuestMemoryMmap,
        paused: Mutex<bool>,
        calls: Mutex<Vec<String>>,
        /// `hold_network` calls (kept out of `calls`: every crash makes one).
        network_held: Mutex<u32>,
        /// While set, reading the registers (which every dump does first) waits: a dump that
        /// takes as long as the test wants.
        hold: Mutex<bool>,
        released: std::sync::Condvar,
    }

    impl FakeVm {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                mem: GuestMemoryMmap::from_ranges(&ram_ranges(64 << 20)).unwrap(),
                paused: Mutex::new(false),
                network_held: Mutex::new(0),
                calls: Mutex::new(Vec::new()),
                hold: Mutex::new(false),
                released: std::sync::Condvar::new(),
            })
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *lock(&self.calls))
        }
        fn hold(&self, on: bool) {
            *lock(&self.hold) = on;
            self.released.notify_all();
        }
    }

    impl VmControl for FakeVm {
        fn memory(&self) -> &GuestMemoryMmap {
            &self.mem
        }
        fn vcpus(&self) -> u32 {
            2
        }
        fn pause(&self, _: Duration) -> bool {
            *lock(&self.paused) = true;
            lock(&self.calls).push("pause".into());
            true
        }
        fn paused(&self) -> bool {
            *lock(&self.paused)
        }
        fn resume(&self) {
            *lock(&self.paused) = false;
            lock(&self.calls).push("resume".into());
        }
        fn inject_nmi(&self, vcpu: u32) {
            lock(&self.calls).push(format!("nmi {vcpu}"));
        }
        fn hold_network(&self) {
            *lock(&self.network_held) += 1;
        }
        fn snapshots(&self) -> Vec<VcpuState> {
            let mut held = lock(&self.hold);
            while *held {
                held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
            }
            drop(held);
            let paused = self.paused();
            (0..2)
                .filter(|_| paused)
                .map(|id| VcpuState { id, regs: Default::default(), sregs: Default::default() })
                .collect()
        }

        fn reported(&self) -> Vec<VcpuState> {
            Vec::new()
        }
    }

    fn sh(vm: &Arc<FakeVm>) -> SharedVm {
        vm.clone()
    }

    /// The tests drive the executor an input at a time, each with the vmcore it started written.
    trait Drive {
        fn signal_done(&mut self, signal: CrashSignal, vm: &SharedVm);
        fn command_done(&mut self, command: Command, vm: &SharedVm) -> Result<CommandReply, CommandError>;
    }

    impl Drive for CrashHandling {
        fn signal_done(&mut self, signal: CrashSignal, vm: &SharedVm) {
            self.signal(signal, vm);
            self.wait_dump(vm);
        }
        fn command_done(&mut self, command: Command, vm: &SharedVm) -> Result<CommandReply, CommandError> {
            let got = Arc::new(Mutex::new(None));
            let g = got.clone();
            self.command(command, vm, Box::new(move |r| *lock(&g) = Some(r)));
            self.wait_dump(vm);
            let answer = lock(&got).take();
            answer.expect("every command is answered")
        }
    }

    fn handling(base: &Path, events: &EventLog) -> CrashHandling {
        handling_with(Policy::default(), base, events)
    }

    fn handling_with(policy: Policy, base: &Path, events: &EventLog) -> CrashHandling {
        let guest = GuestInfo { kernel: "k".into(), cmdline: "c".into(), memory_bytes: 64 << 20, vcpus: 2 };
        CrashHandling::new(CrashHandlingConfig {
            policy,
            crash_dir: base.into(),
            guest,
            crash_disk: None,
            vmcore_sha256: false,
            dump_spec: DumpSpec::default(),
            live: LiveOptions { max_copy: DEFAULT_LIVE_MAX_COPY, method: Default::default() },
            upload_spool: None,
            crash_dir_max: None,
            vmcores_per_signature: 0,
            store_query: None,
            upload_host: None,
            events: events.clone(),
            console: ConsoleTail::default(),
        })
        .unwrap()
    }

    fn events_of(events: &EventLog) -> Vec<String> {
        events
            .since(0)
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string())
            .filter(|e| e != "dump_progress")
            .collect()
    }

    fn dirs(base: &Path) -> Vec<PathBuf> {
        let mut d: Vec<_> = std::fs::read_dir(base).unwrap().map(|e| e.unwrap().path()).collect();
        d.sort();
        d
    }

    /// The crash's detection names when its cause was observed, not when the executor got to
    /// it; a guest repeating a signal leaves a report with a bounded list and a count.
    #[test]
    fn detection_carries_its_cause_time_and_repeats_are_counted() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let mut h = handling(base.path(), &events);
        let vm = FakeVm::new();
        let cause = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:00.123456Z").unwrap().with_timezone(&Utc);
        // crash_loaded and panicked: the guest's kdump is awaited, the guest goes on writing.
        let pvpanic = |bits, at| TimedSignal { at, signal: CrashSignal::PvPanic { vcpu: 0, bits } };
        h.observed(pvpanic(3, cause), Instant::now(), &sh(&vm));
        for i in 0..1000u32 {
            h.observed(pvpanic(i as u8, Utc::now()), Instant::now(), &sh(&vm));
        }
        h.signal_done(CrashSignal::TripleFault { vcpu: 0 }, &sh(&vm));
        let all: Vec<serde_json::Value> = events.since(0).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let detected: Vec<&serde_json::Value> = all.iter().filter(|e| e["event"] == "crash_detected").collect();
        assert_eq!(detected.len(), 1);
        assert_eq!(detected[0]["signal_ts"], "2026-12-05T10:00:00.123456Z");
        let d = dirs(base.path());
        assert_eq!(d.len(), 1);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d[0].join("report.json")).unwrap()).unwrap();
        let listed = report["signals"].as_array().unwrap();
        let pvpanics = listed.iter().filter(|s| s["signal"] == "pvpanic").count();
        assert_eq!(pvpanics, CrashRecord::SAME_KIND_MAX);
        assert_eq!(report["signals_dropped"], 1001 - CrashRecord::SAME_KIND_MAX as u64);
        // The triple fault is listed: a flood of one kind does not crowd out another.
        assert!(listed.iter().any(|s| s["signal"] == "triple_fault"), "{listed:?}");
        assert_eq!(listed[0]["at"], "2026-12-05T10:00:00.123456Z");
    }

    #[test]
    fn panic_with_unload_then_report_writes_a_crash_directory_with_a_vmcore() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let mut h = handling(base.path(), &events);
        let vm = FakeVm::new();
        let signals = [
            CrashSignal::PvPanic { vcpu: 1, bits: 1 },
            CrashSignal::UnloadRequested { vcpu: 1, answered: true },
            CrashSignal::UnloadCompleted { vcpu: 0, latency_us: 5 },
        ];
        for s in signals {
            h.signal_done(s, &sh(&vm));
            assert_eq!(h.end(), None);
        }
        assert!(vm.calls().is_empty(), "nothing paused while the Hyper-V report is awaited");
        assert_eq!(*lock(&vm.network_held), 1, "receiving held from the crash's detection");
        h.signal_done(CrashSignal::HvCrash { vcpu: 1, params: [0; 5], message: None }, &sh(&vm));
        assert_eq!(h.end(), Some(BootEnd::Exit(VmExit::GuestPanicked { trigger: "pvpanic".into() })));
        assert_eq!(vm.calls(), ["pause"]);
        assert_eq!(*lock(&vm.network_held), 1, "once per crash");
        let d = dirs(base.path());
        assert_eq!(d.len(), 1);
        assert!(d[0].join("vmcore").is_file());
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d[0].join("report.json")).unwrap()).unwrap();
        assert_eq!(report["trigger"], "pvpanic");
        assert_eq!(report["outcome"], "host-side vmcore written");
        assert_eq!(report["vmcore"]["source"], "host");
        assert_eq!(report["vmcore"]["reason"], "Hyper-V crash report");
        assert_eq!(report["vcpu_registers"].as_array().unwrap().len(), 2);
        assert_eq!(report["signals"].as_array().unwrap().len(), 4);
        assert_eq!(events_of(&events), ["crash_detected", "vmcore_written", "crash_report"]);
        // The boot's end is decided: later inputs of this boot change nothing.
        h.signal_done(CrashSignal::TripleFault { vcpu: 0 }, &sh(&vm));
        assert!(matches!(h.command_done(Command::Pause, &sh(&vm)), Err(CommandError::Ending)));
        assert_eq!(
            h.vm_exit(VmExit::PowerOff, &sh(&vm)),
            BootEnd::Exit(VmExit::GuestPanicked { trigger: "pvpanic".into() })
        );
        assert_eq!(dirs(base.path()).len(), 1);
    }

    #[test]
    fn an_operator_dump_leaves_the_vm_as_it_was_and_is_no_crash() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let mut h = handling(base.path(), &events);
        let vm = FakeVm::new();
        let CommandReply::Dumped(d) = h.command_done(Command::Dump(Default::default()), &sh(&vm)).unwrap() else {
            panic!("not a dump")
        };
        assert_eq!(vm.calls(), ["pause", "resume"]);
        assert!(d.path.is_file() && d.path.starts_with(base.path()) && d.bytes > 0);
        let dir = d.path.parent().unwrap();
        assert!(dir.file_name().unwrap().to_str().unwrap().ends_with("-dump"));
        assert_eq!(dirs(base.path()), [dir], "no temporary left");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!((report["kind"].as_str(), report["state"].as_str()), (Some("operator_dump"), Some("complete")));
        assert_eq!(report["vmcore"]["bytes"].as_u64(), Some(d.bytes));
        assert_eq!(events_of(&events), ["dump_started", "vmcore_written"]);
        // The events name the final path the answer names.
        let started: serde_json::Value = serde_json::from_str(&events.since(0)[0]).unwrap();
        assert_eq!(started["path"].as_str(), d.path.to_str());
        // Paused before: paused after.
        assert_eq!(h.command_done(Command::Pause, &sh(&vm)).unwrap(), CommandReply::Paused { all_stopped: true });
        vm.calls();
        assert!(matches!(h.command_done(Command::Dump(Default::default()), &sh(&vm)), Ok(CommandReply::Dumped(_))));
        assert_eq!(vm.calls(), ["pause"]);
        assert_eq!(h.orchestrator.crashes(), 0);
        assert_eq!(h.end(), None);
        assert!(h.last_crash_dir().is_none());
    }

    #[test]
    fn a_live_dump_pauses_the_vm_for_its_snapshot_only() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let mut h = handling(base.path(), &events);
        let vm = FakeVm::new();
        vm.mem.write_slice(b"live and well", vm_memory::GuestAddress(0x5000)).unwrap();
        let live = crate::crash::DumpOverride { live: true, ..Default::default() };
        let CommandReply::Dumped(d) = h.command_done(Command::Dump(live), &sh(&vm)).unwrap() else {
            panic!("not a dump")
        };
        // Paused for the fork, running again before the child wrote anything.
        assert_eq!(vm.calls(), ["pause", "resume"]);
        let stats = d.live.expect("a live dump");
        assert!(stats.pause_us > 0 && !stats.paused_for_rest, "{stats:?}");
        let mut f = std::fs::File::open(&d.path).unwrap();
        let k = kdump::diskdump::KdumpFile::parse(&mut f).unwrap();
        assert_eq!(&k.read_page(&mut f, 5).unwrap().unwrap()[..13], b"live and well");
        assert_eq!(k.nr_cpus, 2, "the registers of the snapshot");
        let written: Vec<serde_json::Value> =
            events.since(0).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let started = written.iter().find(|e| e["event"] == "dump_started").unwrap();
        assert_eq!(started["pause_us"].as_u64(), Some(stats.pause_us));
        let done = written.iter().find(|e| e["event"] == "vmcore_written").unwrap();
        assert_eq!(done["pause_us"].as_u64(), Some(stats.pause_us));
    }

    #[test]
    fn an_operator_dump_that_cannot_be_written_is_an_error_and_the_vm_runs_on() {
        let events = EventLog::disabled();
        let mut h = handling(Path::new("/proc/crashvmm-no-such-dir"), &events);
        let vm = FakeVm::new();
        let e = h.command_done(Command::Dump(Default::default()), &sh(&vm)).unwrap_err();
        // What failed, then each cause once.
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(crate::error::chain(&e), format!("dump failed: cannot create /proc/crashvmm-no-such-dir: {enoent}"));
        assert_eq!(vm.calls(), ["pause", "resume"]);
        assert_eq!(h.end(), None);
    }

    #[test]
    fn commands_reset_shutdown_and_nmi() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let mut h = handling(base.path(), &events);
        let vm = FakeVm::new();
        assert!(matches!(
            h.command_done(Command::InjectNmi(NmiTargets::One(2)), &sh(&vm)),
            Err(CommandError::NoSuchVcpu { vcpu: 2, vcpus: 2 })
        ));
        assert_eq!(
            h.command_done(Command::InjectNmi(NmiTargets::All), &sh(&vm)).unwrap(),
            CommandReply::NmiInjected { vcpus: vec![0, 1] }
        );
        assert_eq!(vm.calls(), ["nmi 0", "nmi 1"]);
        assert_eq!(events_of(&events), ["nmi_injected", "nmi_injected"]);
        assert_eq!(h.command_done(Command::Reset, &sh(&vm)).unwrap(), CommandReply::Ending);
        assert_eq!(h.end(), Some(BootEnd::Reset { wait: Duration::ZERO }));
        assert!(matches!(h.check_input(), Err(CommandError::Ending)), "no sysrq into a boot that ends");
        h.on_boot();
        assert_eq!(h.end(), None);
        h.check_input().unwrap();
        assert_eq!(h.command_done(Command::Shutdown, &sh(&vm)).unwrap(), CommandReply::Ending);
        assert_eq!(h.end(), Some(BootEnd::Exit(VmExit::HostShutdown)));
    }

    /// Where a test finds what `command` answered, if it did yet.
    type Slot = Arc<Mutex<Option<Result<CommandReply, CommandError>>>>;

    /// What `command` answered so far, for a test that looks before the dump is done.
    fn answer_slot() -> (Slot, Answer) {
        let slot = Arc::new(Mutex::new(None));
        let s = slot.clone();
        (slot, Box::new(move |r| *lock(&s) = Some(r)))
    }

    #[test]
    fn one_dump_at_a_time_others_are_refused_at_once_and_signals_wait_for_it() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let mut h = handling(base.path(), &events);
        let vm = FakeVm::new();
        for live in [true, false] {
            vm.hold(true);
            let (first, answer) = answer_slot();
            h.command(Command::Dump(crate::crash::DumpOverride { live, ..Default::default() }), &sh(&vm), answer);
            assert!(lock(&first).is_none(), "answered when the vmcore is written");
            let status = h.dump_in_progress().cloned().expect("a dump in progress");
            assert_eq!((status.reason.as_str(), status.live), ("requested on the control socket", live));
            assert!(status.path.ends_with("-dump/vmcore"), "{status:?}");
            // A second dump, and every other command, are answered at once.
            for c in [Command::Dump(Default::default()), Command::Pause, Command::Resume, Command::Shutdown] {
                let (second, answer) = answer_slot();
                h.command(c, &sh(&vm), answer);
                let e = lock(&second).take().expect("answered at once").unwrap_err();
                let want = format!(
                    "a dump is in progress ({}requested on the control socket, since {}); try again once it is written",
                    if live { "live, " } else { "" },
                    status.since
                );
                assert_eq!(e.to_string(), want, "{c:?}");
                assert_eq!(h.check_input().unwrap_err().to_string(), want, "sysrq too");
            }
            // The guest panics meanwhile: decided once the dump is written.
            h.signal(CrashSignal::PvPanic { vcpu: 0, bits: 1 }, &sh(&vm));
            assert!(!h.orchestrator.panicked());
            h.dump_done(&sh(&vm));
            assert!(h.dump_in_progress().is_some(), "still held");
            vm.hold(false);
            h.wait_dump(&sh(&vm));
            assert!(h.dump_in_progress().is_none());
            let answered = lock(&first).take().expect("answered");
            assert!(matches!(&answered, Ok(CommandReply::Dumped(d)) if d.path.is_file()), "{answered:?}");
            assert!(h.orchestrator.panicked(), "the signal that waited was decided");
            assert_eq!(h.end(), None);
            h.on_boot();
        }
        assert_eq!(
            events_of(&events),
            ["dump_started", "vmcore_written", "crash_detected", "dump_started", "vmcore_written", "crash_detected"]
        );
    }

    #[test]
    fn a_hang_gets_a_live_dump_then_the_nmi() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let policy = Policy { on_hang: crate::crash::OnHang::HOST_DUMP_NMI, ..Policy::default() };
        let mut h = handling_with(policy, base.path(), &events);
        let vm = FakeVm::new();
        h.signal(CrashSignal::GuestHang { stalled_ms: 2_500 }, &sh(&vm));
        // The hung guest runs on while its vmcore is written.
        assert_eq!(h.dump_in_progress().map(|d| d.live), Some(true));
        h.wait_dump(&sh(&vm));
        assert_eq!(vm.calls(), ["pause", "resume", "nmi 0", "nmi 1"], "paused for the snapshot, then the NMI");
        assert_eq!(h.end(), None, "the guest runs on");
        assert!(!h.orchestrator.panicked());
        assert_eq!(
            events_of(&events),
            ["crash_detected", "dump_started", "vmcore_written", "crash_report", "nmi_injected", "nmi_injected"]
        );
        let written: Vec<serde_json::Value> =
            events.since(0).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let pause = written.iter().find(|e| e["event"] == "vmcore_written").unwrap()["pause_us"].as_u64();
        assert!(pause.is_some_and(|p| p > 0), "{written:?}");
        let d = dirs(base.path());
        assert_eq!(d.len(), 1);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d[0].join("report.json")).unwrap()).unwrap();
        assert_eq!(report["trigger"], "guest_hang");
        assert_eq!(report["policy"]["on_hang"], "host-dump,nmi");
        assert_eq!(
            report["outcome"],
            "the guest made no progress for 2.5 s; live host-side vmcore written; NMI injected"
        );
        assert_eq!(report["vmcore"]["reason"], "the guest made no progress for 2.5 s");
        assert!(d[0].join("vmcore").is_file());
        // The NMI's panic is a crash of its own, blamed on the hang.
        h.signal_done(CrashSignal::PvPanic { vcpu: 0, bits: 2 }, &sh(&vm));
        assert_eq!(h.orchestrator.crashes(), 2);
        let last = events.since(0).last().cloned().unwrap_or_default();
        assert!(last.contains("crash_detected") && last.contains("guest_hang"), "{last}");
    }

    #[test]
    fn a_stop_from_outside_wins_over_a_reset_decided_meanwhile() {
        let base = tempfile::tempdir().unwrap();
        let events = EventLog::disabled();
        let mut h = handling(base.path(), &events);
        let vm = FakeVm::new();
        assert_eq!(h.command_done(Command::Reset, &sh(&vm)).unwrap(), CommandReply::Ending);
        assert_eq!(h.vm_exit(VmExit::Stopped { signal: 15 }, &sh(&vm)), BootEnd::Exit(VmExit::Stopped { signal: 15 }));
        h.on_boot();
        h.command_done(Command::Reset, &sh(&vm)).unwrap();
        assert_eq!(
            h.vm_exit(VmExit::PowerOff, &sh(&vm)),
            BootEnd::Reset { wait: Duration::ZERO },
            "only a stop from outside"
        );
    }

    #[test]
    fn a_crash_without_a_directory_still_ends_the_boot_with_the_reason() {
        let events = EventLog::disabled();
        let mut h = handling(Path::new("/proc/crashvmm-no-such-dir"), &events);
        let vm = FakeVm::new();
        h.signal_done(CrashSignal::TripleFault { vcpu: 0 }, &sh(&vm));
        let Some(BootEnd::Exit(VmExit::CrashCollectionFailed { trigger, reason })) = h.end() else {
            panic!("{:?}", h.end())
        };
        assert_eq!(trigger, "triple_fault");
        assert!(reason.contains("/proc/crashvmm-no-such-dir"), "{reason}");
    }
}
