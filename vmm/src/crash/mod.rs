//! Crash handling: every way a guest dies becomes one [`CrashSignal`]; the [`Orchestrator`]
//! (a pure state machine, driven by the main thread) decides what happens next.
//!
//! Devices and vCPU threads record what they saw in the event log where they see it (so the
//! log keeps the guest's order) and send the signal here; the orchestrator only decides.

pub mod budget;
mod diskdump;
pub mod executor;
pub use kdump::flat;
pub mod live;
pub mod report;
pub mod snapshot;
pub mod summary;
pub mod triage;
pub mod vmcore;
mod vocabulary;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use devices::pvpanic::PvPanicEvents;

use crate::exit::VmExit;
pub use crate::signal::CrashSignal;
use report::TimedSignal;
pub use vocabulary::{Command, DumpOverride, DumpReason, NmiTargets, Outcome, Trigger, VmcoreSource};

/// What `--on-hang` does to the hung guest itself (after its live dump, with `host-dump,...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangAction {
    /// Inject an NMI into every vCPU: a guest with `kernel.unknown_nmi_panic=1` (or
    /// `panic_on_unrecovered_nmi`) panics, and its crash handling follows.
    Nmi,
    /// Record the hang and boot the guest again.
    Reset,
}

impl HangAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HangAction::Nmi => "nmi",
            HangAction::Reset => "reset",
        }
    }
}

/// `--on-hang`: what to do when the watchdog finds the guest hung: `nmi`, `reset`,
/// `host-dump` (a live host-side vmcore; the guest runs on), or `host-dump,nmi` and
/// `host-dump,reset` (the live vmcore first, then the NMI or the reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnHang {
    /// First take a live host-side vmcore of the hung guest (into the hang's crash directory).
    pub host_dump: bool,
    /// Then this; `None` only with `host_dump`: the guest runs on.
    pub then: Option<HangAction>,
}

/// A `--on-hang` value that is none of the accepted ones.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnHangError {
    #[error("'{0}' is not an --on-hang action: nmi, reset, host-dump, host-dump,nmi or host-dump,reset")]
    Unknown(String),
}

impl OnHang {
    pub const NMI: OnHang = OnHang { host_dump: false, then: Some(HangAction::Nmi) };
    pub const RESET: OnHang = OnHang { host_dump: false, then: Some(HangAction::Reset) };
    pub const HOST_DUMP: OnHang = OnHang { host_dump: true, then: None };
    pub const HOST_DUMP_NMI: OnHang = OnHang { host_dump: true, then: Some(HangAction::Nmi) };
    pub const HOST_DUMP_RESET: OnHang = OnHang { host_dump: true, then: Some(HangAction::Reset) };
}

impl std::str::FromStr for OnHang {
    type Err = OnHangError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split(',').map(str::trim).collect();
        match words.as_slice() {
            ["nmi"] => Ok(OnHang::NMI),
            ["reset"] => Ok(OnHang::RESET),
            ["host-dump"] => Ok(OnHang::HOST_DUMP),
            ["host-dump", "nmi"] => Ok(OnHang::HOST_DUMP_NMI),
            ["host-dump", "reset"] => Ok(OnHang::HOST_DUMP_RESET),
            _ => Err(OnHangError::Unknown(s.to_string())),
        }
    }
}

impl std::fmt::Display for OnHang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.host_dump, self.then) {
            (true, Some(a)) => write!(f, "host-dump,{}", a.as_str()),
            (true, None) => f.write_str("host-dump"),
            (false, Some(a)) => f.write_str(a.as_str()),
            (false, None) => f.write_str("none"),
        }
    }
}

/// As `report.json`'s policy says it: the command-line text.
impl serde::Serialize for OnHang {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `--on-panic`: what to do when the guest panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnPanic {
    /// Let the guest's kdump run when it announced one, else take a host-side vmcore.
    Auto,
    /// Let the guest's kdump run; never take a host-side vmcore unless it fails.
    Kdump,
    /// Take a host-side vmcore at once (the guest's kdump does not run).
    HostDump,
    /// Pause the VM for inspection.
    Pause,
    /// Record the crash and let the guest go on.
    Ignore,
}

/// `--after-crash`: what happens once collection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterCrash {
    Exit,
    Reset,
    Pause,
}

/// `--host-dump`: when crashvmm writes a vmcore from guest memory itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostDump {
    /// Never.
    Never,
    /// When there is no guest kdump, or it fails or times out.
    Fallback,
    /// Also snapshot at `guest_kexec`, before the crash kernel runs.
    Always,
}

/// `--reset-backoff` and `--reset-backoff-max`: with `--after-crash reset`, how long a guest
/// that keeps crashing the same way waits before it boots again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetBackoff {
    /// The wait after the first crash of a signature (zero: none, the guest boots again at
    /// once).
    pub initial: Duration,
    /// The longest wait. A boot that lasted this long before it crashed ends the loop: the
    /// next crash waits `initial` again.
    pub max: Duration,
}

impl Default for ResetBackoff {
    fn default() -> Self {
        Self { initial: Duration::ZERO, max: Duration::from_secs(600) }
    }
}

/// Crashes in a row of one signature, each after a short boot.
#[derive(Debug, Default)]
struct CrashLoop {
    signature: Option<String>,
    streak: u32,
}

/// The crash policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Policy {
    pub on_panic: OnPanic,
    pub after_crash: AfterCrash,
    #[serde(serialize_with = "serialize_secs")]
    pub kdump_timeout: Duration,
    pub host_dump: HostDump,
    /// With `after_crash: reset`, exit instead once this many crashes happened (0: no limit).
    pub max_crashes: u32,
    /// The guest can report through the Hyper-V crash MSRs (so a pvpanic PANICKED is followed
    /// by a Hyper-V report worth waiting for).
    pub hyperv: bool,
    pub on_hang: OnHang,
    #[serde(skip)]
    pub reset_backoff: ResetBackoff,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            on_panic: OnPanic::Auto,
            after_crash: AfterCrash::Exit,
            kdump_timeout: Duration::from_secs(600),
            host_dump: HostDump::Fallback,
            max_crashes: 0,
            hyperv: true,
            on_hang: OnHang::NMI,
            reset_backoff: ResetBackoff::default(),
        }
    }
}

/// What the executor must do, in order. The executor carries out every action it is handed,
/// in order; what must wait (for a dump, for an UNLOAD's answer) the orchestrator holds back
/// itself (`Deferred`), and nothing follows a `Stop` or a `Reset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A crash signal is decided now (having waited for a dump, perhaps; `seen` is when it
    /// arrived): add it to the current crash's record. The actions it brings follow.
    RecordSignal { signal: TimedSignal, seen: Instant },
    /// A new crash: record `crash_detected` and start its crash directory.
    BeginCrash { trigger: Trigger },
    /// Stop every vCPU (and save its registers).
    Pause,
    /// Let the vCPUs run again.
    Resume,
    /// Write a host-side vmcore (vCPUs paused, or a live dump: [`DumpReason::is_live`], the
    /// operator's `live`): tell [`Orchestrator::on_dump_started`], and once it is written (or
    /// could not be started) [`Orchestrator::on_dump_done`], which hands out what follows.
    /// Always the last action of a batch.
    HostDump { reason: DumpReason },
    /// The guest's kdump finished: take its dump from the crash disk, then call
    /// [`Orchestrator::on_kdump_collected`].
    CollectKdump,
    /// Write the crash directory (report, events, console, vmcore).
    FinishCrash { outcome: Outcome },
    /// End the VM.
    Stop(VmExit),
    /// Boot the guest again.
    Reset,
    /// Keep the VM paused until crashvmm is stopped from outside.
    StayPaused,
    /// Inject an NMI.
    InjectNmi(NmiTargets),
    /// The crash kernel's first write to the crash disk (by `vcpu`, the signal just recorded)
    /// is the first sign that it runs: record `crash_kernel_started` (the event, at that
    /// write's time, and the report's signal), as Hyper-V's set-up again says it where the
    /// guest has Hyper-V.
    CrashKernelStarted { vcpu: u32 },
}

/// A crash this soon after crashvmm injected an NMI has the injection as its trigger.
pub const NMI_BLAME: Duration = Duration::from_secs(60);
/// The same for a crash first seen when its crash kernel began writing the crash disk: the
/// crash came before that kernel booted, so the window is longer by the crash kernel's boot
/// (seconds on hardware, tens of seconds in a software KVM host).
pub const CRASH_KERNEL_BLAME: Duration = Duration::from_secs(180);

/// How long to wait after a pvpanic PANICKED for the Hyper-V crash report (which Linux sends
/// from a later panic notifier and the kmsg dumper) before collecting anyway.
pub const HV_CRASH_GRACE: Duration = Duration::from_secs(5);
/// After a Hyper-V crash report without pvpanic, how long to wait for a kexec (a guest whose
/// pvpanic is off may still run kdump).
pub const KEXEC_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A PANICKED arrived; the Hyper-V report should follow.
    AwaitReport { deadline: Instant },
    /// A Hyper-V report arrived without pvpanic; a kexec may follow.
    AwaitKexec { deadline: Instant },
    /// The guest runs its kdump; it must power off before the deadline.
    AwaitKdump { deadline: Instant },
    /// A host dump is being written; `resume` when the guest goes on afterwards.
    Dumping { resume: bool },
    /// The guest's kdump finished; its dump is being taken from the crash disk.
    Collecting,
    /// Collection ended.
    Finished,
}

/// A host-side vmcore being written (off the main thread): what for, whether the guest runs
/// meanwhile (a live dump), since when. One at a time: while it is written, the operator's
/// commands are refused with it, deadlines wait, and crash signals wait (`Deferred`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInProgress {
    pub reason: DumpReason,
    pub live: bool,
    pub since: Instant,
}

#[derive(Debug)]
struct Crash {
    trigger: Trigger,
    phase: Phase,
    kexec_seen: bool,
    crash_kernel_started: bool,
    dump_failed: Option<String>,
}

/// Work the orchestrator holds back, all of it here. Two things hold work, and each releases
/// it at one point only:
/// - an UNLOAD in flight that crashvmm will answer (the guest busy-waits for the answer, so
///   its vCPUs must not be paused): the actions from the first pause or dump on, released by
///   the UNLOAD's completion (or the VM's end);
/// - a host-side vmcore handed out and not yet written: the actions after its `HostDump`, then
///   the signals that arrived meanwhile, in order, released by [`Orchestrator::on_dump_done`]
///   as if the dump had blocked the main thread.
#[derive(Debug, Default)]
struct Deferred {
    unload: Vec<Action>,
    dump: Option<DumpWait>,
}

/// A host-side vmcore handed out ([`Action::HostDump`]) and not done yet.
#[derive(Debug)]
struct DumpWait {
    reason: DumpReason,
    /// Since the executor began writing it ([`Orchestrator::on_dump_started`]).
    started: Option<DumpInProgress>,
    /// The actions after its `HostDump`.
    rest: Vec<Action>,
    /// Crash signals that arrived meanwhile, with their arrival.
    signals: VecDeque<(TimedSignal, Instant)>,
}

/// The crash state machine. Pure: time comes in as arguments, decisions go out as actions.
#[derive(Debug)]
pub struct Orchestrator {
    policy: Policy,
    crash: Option<Crash>,
    crashes: u32,
    unload_in_flight: bool,
    /// What waits for an UNLOAD's answer or for a dump.
    deferred: Deferred,
    /// The boot's end (`Stop` or `Reset`) was handed out: no signal is decided any more.
    ended: bool,
    /// What a crash that follows soon is blamed on: crashvmm's NMI, or the hang it broke.
    blame: Option<(Instant, Trigger)>,
    /// A hang whose vmcore could not be written (why), for the session's exit code: the guest
    /// may run on and power off, but crashvmm does not end as if nothing was lost.
    lost_hang: Option<String>,
    /// The crash loop the guest is in, for `--reset-backoff`.
    crash_loop: CrashLoop,
}

impl Orchestrator {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            crash: None,
            crashes: 0,
            unload_in_flight: false,
            deferred: Deferred::default(),
            ended: false,
            blame: None,
            lost_hang: None,
            crash_loop: CrashLoop::default(),
        }
    }

    /// The crash being finished has `signature` and came `uptime` into its boot: how long the
    /// guest waits before it boots again, and the crash's place in its loop (1 for the first).
    /// The wait doubles with each crash of the same signature, up to the maximum; a crash of
    /// another signature, or after a boot that lasted the maximum, starts over. `None` without
    /// `--reset-backoff`, or when the guest will not boot again.
    pub fn reset_wait(&mut self, signature: Option<&str>, uptime: Duration) -> Option<(Duration, u32)> {
        let b = self.policy.reset_backoff;
        if b.initial.is_zero() || self.after_crash() != [Action::Reset] {
            return None;
        }
        let l = &mut self.crash_loop;
        if uptime >= b.max || l.signature.as_deref() != signature || l.streak == 0 {
            *l = CrashLoop { signature: signature.map(str::to_owned), streak: 0 };
        }
        l.streak += 1;
        let wait = b.initial.saturating_mul(1u32 << (l.streak - 1).min(31)).min(b.max.max(b.initial));
        Some((wait, l.streak))
    }

    /// The host-side vmcore being written, if any.
    pub fn dump_in_progress(&self) -> Option<&DumpInProgress> {
        self.deferred.dump.as_ref().and_then(|w| w.started.as_ref())
    }

    /// The executor began writing the vmcore of the [`Action::HostDump`] it was handed (`live`:
    /// the guest runs meanwhile). Until [`Self::on_dump_done`], commands are refused, deadlines
    /// wait, and crash signals wait.
    pub fn on_dump_started(&mut self, reason: &DumpReason, live: bool, now: Instant) {
        if let Some(w) = self.deferred.dump.as_mut() {
            w.started = Some(DumpInProgress { reason: reason.clone(), live, since: now });
        }
    }

    /// Hand `actions` out to the executor: up to and including a `HostDump` (the rest waits
    /// for its [`Self::on_dump_done`]), and nothing after a `Stop` or a `Reset` (the boot ends).
    fn hand_out(&mut self, actions: Vec<Action>, out: &mut Vec<Action>) {
        let mut actions = actions.into_iter();
        while let Some(action) = actions.next() {
            match &action {
                Action::HostDump { reason } => {
                    self.deferred.dump = Some(DumpWait {
                        reason: reason.clone(),
                        started: None,
                        rest: actions.collect(),
                        signals: VecDeque::new(),
                    });
                    out.push(action);
                    return;
                }
                Action::Stop(_) | Action::Reset => {
                    self.ended = true;
                    out.push(action);
                    return;
                }
                _ => out.push(action),
            }
        }
    }

    /// [`Self::hand_out`] into a new list.
    fn handed_out(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let mut out = Vec::new();
        self.hand_out(actions, &mut out);
        out
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Crashes so far.
    pub fn crashes(&self) -> u32 {
        self.crashes
    }

    /// When [`on_timer`](Self::on_timer) wants to run next (not while a dump is written: its
    /// deadlines wait for it).
    pub fn deadline(&self) -> Option<Instant> {
        if self.deferred.dump.is_some() {
            return None;
        }
        match self.crash.as_ref()?.phase {
            Phase::AwaitReport { deadline } | Phase::AwaitKexec { deadline } | Phase::AwaitKdump { deadline } => {
                Some(deadline)
            }
            _ => None,
        }
    }

    /// Whether a crash is being handled or was handled in this boot of the guest.
    pub fn panicked(&self) -> bool {
        self.crash.is_some()
    }

    fn begin(&mut self, trigger: Trigger, phase: Phase, now: Instant) -> Vec<Action> {
        self.begin_blaming_within(trigger, phase, now, NMI_BLAME)
    }

    /// [`Self::begin`], blaming crashvmm's NMI (or the hang it broke) for a crash within
    /// `window` of it.
    fn begin_blaming_within(&mut self, trigger: Trigger, phase: Phase, now: Instant, window: Duration) -> Vec<Action> {
        // A crash within the window of an injected NMI is the injection's doing.
        let trigger = match self.blame.take() {
            Some((t, why)) if now.saturating_duration_since(t) <= window => why,
            _ => trigger,
        };
        self.crashes += 1;
        self.crash = Some(Crash { trigger, phase, kexec_seen: false, crash_kernel_started: false, dump_failed: None });
        vec![Action::BeginCrash { trigger }]
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(c) = self.crash.as_mut() {
            c.phase = phase;
        }
    }

    /// The current crash's trigger, as `VmExit` names it.
    fn trigger(&self) -> String {
        self.crash.as_ref().map_or_else(|| "unknown".into(), |c| c.trigger.to_string())
    }

    /// The guest will not handle this crash itself: collect per `--on-panic`.
    fn collect(&mut self, reason: DumpReason) -> Vec<Action> {
        match self.policy.on_panic {
            OnPanic::Auto | OnPanic::HostDump if self.policy.host_dump != HostDump::Never => {
                self.set_phase(Phase::Dumping { resume: false });
                vec![Action::Pause, Action::HostDump { reason }]
            }
            OnPanic::Auto | OnPanic::HostDump | OnPanic::Kdump => self.finish(Outcome::NoVmcore(reason)),
            OnPanic::Pause => {
                self.set_phase(Phase::Finished);
                vec![Action::Pause, Action::FinishCrash { outcome: Outcome::Paused(reason) }, Action::StayPaused]
            }
            OnPanic::Ignore => {
                self.set_phase(Phase::Finished);
                vec![Action::FinishCrash { outcome: Outcome::Ignored(reason) }]
            }
        }
    }

    /// The guest's kdump did not deliver: take a host-side vmcore if allowed.
    fn fallback(&mut self, reason: DumpReason) -> Vec<Action> {
        if self.policy.host_dump == HostDump::Never {
            return self.finish(Outcome::NoVmcoreHostDumpNever(reason));
        }
        self.set_phase(Phase::Dumping { resume: false });
        vec![Action::Pause, Action::HostDump { reason }]
    }

    /// Write the crash directory, then do what `--after-crash` says.
    fn finish(&mut self, outcome: Outcome) -> Vec<Action> {
        self.set_phase(Phase::Finished);
        let mut out = vec![Action::FinishCrash { outcome }];
        out.extend(self.after_crash());
        out
    }

    fn after_crash(&self) -> Vec<Action> {
        match self.policy.after_crash {
            AfterCrash::Exit => vec![Action::Stop(self.panic_exit())],
            AfterCrash::Reset if self.policy.max_crashes > 0 && self.crashes >= self.policy.max_crashes => {
                vec![Action::Stop(VmExit::GuestPanicked {
                    trigger: format!(
                        "{} (crash {} of --max-crashes {})",
                        self.trigger(),
                        self.crashes,
                        self.policy.max_crashes
                    ),
                })]
            }
            AfterCrash::Reset => vec![Action::Reset],
            AfterCrash::Pause => vec![Action::Pause, Action::StayPaused],
        }
    }

    fn panic_exit(&self) -> VmExit {
        match self.crash.as_ref().and_then(|c| c.dump_failed.clone()) {
            Some(reason) => VmExit::CrashCollectionFailed { trigger: self.trigger(), reason },
            None => VmExit::GuestPanicked { trigger: self.trigger() },
        }
    }

    fn kdump_phase(&mut self, now: Instant) -> Vec<Action> {
        self.set_phase(Phase::AwaitKdump { deadline: now + self.policy.kdump_timeout });
        if self.policy.host_dump == HostDump::Always && self.crash.as_ref().is_some_and(|c| c.kexec_seen) {
            // A live dump: paused for the snapshot only, the crash kernel starts at once.
            self.set_phase(Phase::Dumping { resume: true });
            return vec![Action::HostDump { reason: DumpReason::KexecSnapshot }];
        }
        vec![]
    }

    /// A crash signal arrived (`seen`: when). Decided now, with a [`Action::RecordSignal`]
    /// before what it brings; or, while a dump is written, once it is ([`Self::on_dump_done`]);
    /// or never, once the boot's end was handed out.
    pub fn on_signal(&mut self, signal: TimedSignal, seen: Instant) -> Vec<Action> {
        if self.ended {
            return vec![];
        }
        if let Some(w) = self.deferred.dump.as_mut() {
            w.signals.push_back((signal, seen));
            return vec![];
        }
        let decided = self.decide(&signal.signal, seen);
        let decided = self.hold_while_unloading(decided);
        let mut out = vec![Action::RecordSignal { signal, seen }];
        self.hand_out(decided, &mut out);
        out
    }

    fn decide(&mut self, signal: &CrashSignal, now: Instant) -> Vec<Action> {
        let phase = self.crash.as_ref().map(|c| c.phase);
        let in_crash_kernel = self.crash.as_ref().is_some_and(|c| c.crash_kernel_started);
        match signal {
            CrashSignal::UnloadRequested { answered, .. } => {
                self.unload_in_flight = *answered;
                vec![]
            }
            CrashSignal::UnloadCompleted { .. } => {
                self.unload_in_flight = false;
                std::mem::take(&mut self.deferred.unload)
            }
            CrashSignal::NmiInjected => {
                self.blame = Some((now, Trigger::NmiInjection));
                vec![]
            }
            CrashSignal::GuestHang { stalled_ms } => {
                if self.crash.is_some() {
                    // A crash being handled (say a crash kernel at work) is not a hang of its own;
                    // the kdump timeout covers it.
                    return vec![];
                }
                let stalled_ms = *stalled_ms;
                let on_hang = self.policy.on_hang;
                if on_hang.host_dump {
                    let mut out = self.begin(Trigger::GuestHang, Phase::Finished, now);
                    if self.policy.host_dump == HostDump::Never {
                        let outcome = Outcome::NoVmcoreHostDumpNever(DumpReason::Hang { stalled_ms });
                        out.extend(self.after_hang(outcome, now));
                        return out;
                    }
                    // A live dump: the hung guest runs on while it is written, and what
                    // `--on-hang` says next follows once it is (`on_dump_done`).
                    self.set_phase(Phase::Dumping { resume: false });
                    out.push(Action::HostDump { reason: DumpReason::Hang { stalled_ms } });
                    return out;
                }
                match on_hang.then {
                    Some(HangAction::Nmi) => {
                        self.blame = Some((now, Trigger::GuestHang));
                        vec![Action::InjectNmi(NmiTargets::All)]
                    }
                    Some(HangAction::Reset) => {
                        let mut out = self.begin(Trigger::GuestHang, Phase::Finished, now);
                        out.push(Action::FinishCrash { outcome: Outcome::HangReset { stalled_ms } });
                        out.push(Action::Reset);
                        out
                    }
                    None => vec![],
                }
            }
            CrashSignal::PvPanic { bits, .. } if !PvPanicEvents::from_bits(*bits).is_crash() => vec![],
            CrashSignal::PvPanic { bits, .. } => match phase {
                None if PvPanicEvents::from_bits(*bits).crash_loaded => {
                    let mut out = self.begin(Trigger::Pvpanic, Phase::Finished, now);
                    out.extend(match self.policy.on_panic {
                        OnPanic::Auto | OnPanic::Kdump => self.kdump_phase(now),
                        // Collect once the guest is quiet: at its kexec, or after the grace time.
                        OnPanic::HostDump | OnPanic::Pause => {
                            self.set_phase(Phase::AwaitKexec { deadline: now + HV_CRASH_GRACE });
                            vec![]
                        }
                        OnPanic::Ignore => self.collect(DumpReason::PvpanicCrashLoaded),
                    });
                    out
                }
                None => {
                    if self.policy.hyperv {
                        self.begin(Trigger::Pvpanic, Phase::AwaitReport { deadline: now + HV_CRASH_GRACE }, now)
                    } else {
                        let mut out = self.begin(Trigger::Pvpanic, Phase::Finished, now);
                        out.extend(self.collect(DumpReason::PvpanicPanicked));
                        out
                    }
                }
                Some(Phase::AwaitKdump { .. }) if in_crash_kernel => self.fallback(DumpReason::CrashKernelPanicked),
                _ => vec![],
            },
            CrashSignal::HvCrash { .. } => match phase {
                None => self.begin(Trigger::HvCrash, Phase::AwaitKexec { deadline: now + KEXEC_GRACE }, now),
                Some(Phase::AwaitReport { .. }) => self.collect(DumpReason::HvCrashReport),
                Some(Phase::AwaitKdump { .. }) if in_crash_kernel => self.fallback(DumpReason::CrashKernelPanicked),
                _ => vec![],
            },
            CrashSignal::GuestKexec { .. } => {
                let Some(c) = self.crash.as_mut() else {
                    // A kexec without a crash (kexec -e) is no crash.
                    return vec![];
                };
                c.kexec_seen = true;
                match phase {
                    Some(Phase::AwaitReport { .. } | Phase::AwaitKexec { .. }) => match self.policy.on_panic {
                        OnPanic::Auto | OnPanic::Kdump => self.kdump_phase(now),
                        _ => self.collect(DumpReason::GuestKexec),
                    },
                    Some(Phase::AwaitKdump { .. }) => self.kdump_phase(now),
                    _ => vec![],
                }
            }
            CrashSignal::CrashKernelStarted { .. } => {
                if let Some(c) = self.crash.as_mut() {
                    c.crash_kernel_started = true;
                }
                vec![]
            }
            CrashSignal::CrashDiskWritten { vcpu } => self.crash_disk_written(*vcpu, now),
            CrashSignal::TripleFault { .. } | CrashSignal::KvmFailure { .. } => {
                let trigger = if matches!(signal, CrashSignal::TripleFault { .. }) {
                    Trigger::TripleFault
                } else {
                    Trigger::KvmFailure
                };
                let mut out = match phase {
                    None => {
                        let mut out = self.begin(trigger, Phase::Finished, now);
                        out.extend(self.collect(DumpReason::Crash(trigger)));
                        out
                    }
                    Some(Phase::AwaitKdump { .. }) => self.fallback(DumpReason::DuringKdump(trigger)),
                    Some(Phase::AwaitReport { .. } | Phase::AwaitKexec { .. }) => {
                        self.collect(DumpReason::Crash(trigger))
                    }
                    _ => vec![],
                };
                // A triple-faulted vCPU never runs again (the machine shuts down): when nothing
                // above ends or holds the VM (`--on-panic ignore`, or a crash already handled),
                // it ends here, instead of waiting forever for a guest that cannot go on.
                if let CrashSignal::TripleFault { vcpu } = signal {
                    let ends = out.iter().any(|a| {
                        matches!(a, Action::Stop(_) | Action::Reset | Action::Pause | Action::HostDump { .. })
                    });
                    if !ends {
                        out.push(Action::Stop(VmExit::TripleFault { vcpu: *vcpu }));
                    }
                }
                out
            }
        }
    }

    /// The guest's first write to the crash disk in this boot: its crash kernel runs and has
    /// begun writing a dump (nothing else writes that disk: `disk::CrashDiskWatch`).
    ///
    /// - No crash in progress: the crashed kernel gave no notice (it kexec'd before its panic
    ///   notifiers, `crash_kexec_post_notifiers=0`, plain KVM's default, so no pvpanic), and
    ///   this is the first crashvmm hears of it: a crash with the trigger `crash_kernel` (or
    ///   crashvmm's NMI or hang, within [`CRASH_KERNEL_BLAME`] of it), in the kdump phase: the
    ///   kdump timeout applies, the dump is collected from the crash disk at the power-off, a
    ///   crash-kernel panic falls back to a host-side vmcore.
    /// - A crash in progress (pvpanic without Hyper-V, `crash_kexec_post_notifiers=1`): the
    ///   crash kernel is marked started, where Hyper-V's set-up again has not done so already,
    ///   and a crash still waiting for a report or a kexec goes on to the kdump phase.
    ///
    /// Either way `crash_kernel_started` is recorded once, so the panic path shows the crash
    /// kernel's start without Hyper-V too.
    ///
    /// `--on-panic host-dump` and `pause` let this kdump finish: the guest chose its own dump
    /// before crashvmm knew of the crash, and stopping it now would leave a half-written dump
    /// on the crash disk and take vCPU registers that are the crash kernel's, not the crashed
    /// kernel's (whose memory the crash kernel leaves intact, and whose registers are in the
    /// kdump's ELF notes). `--on-panic ignore` records the crash and lets the guest go on, as
    /// with pvpanic. `--host-dump always` takes no snapshot: its moment, the kexec, is past;
    /// a host-side vmcore remains the fallback if the kdump fails or times out.
    fn crash_disk_written(&mut self, vcpu: u32, now: Instant) -> Vec<Action> {
        let started = Action::CrashKernelStarted { vcpu };
        let Some(c) = self.crash.as_mut() else {
            let mut out = self.begin_blaming_within(Trigger::CrashKernel, Phase::Finished, now, CRASH_KERNEL_BLAME);
            if let Some(c) = self.crash.as_mut() {
                c.crash_kernel_started = true;
            }
            out.push(started);
            out.extend(self.crash_kernel_writes(now));
            return out;
        };
        if c.crash_kernel_started {
            // Hyper-V said so first (its set-up again comes before any write).
            return vec![];
        }
        c.crash_kernel_started = true;
        let mut out = vec![started];
        if let Phase::AwaitReport { .. } | Phase::AwaitKexec { .. } = c.phase {
            // The kexec these wait for has happened, unseen (no Hyper-V to tear down).
            out.extend(self.crash_kernel_writes(now));
        }
        out
    }

    /// The crash kernel writes its dump: let it, or (`--on-panic ignore`) record the crash.
    fn crash_kernel_writes(&mut self, now: Instant) -> Vec<Action> {
        match self.policy.on_panic {
            OnPanic::Ignore => self.collect(DumpReason::CrashDiskWritten),
            OnPanic::Auto | OnPanic::Kdump | OnPanic::HostDump | OnPanic::Pause => self.kdump_phase(now),
        }
    }

    /// The hang's crash directory is written (`outcome`); then what `--on-hang` says after the
    /// dump: the guest runs on (the hang is no crash in progress any more: a later crash is
    /// one of its own), gets an NMI (and the crash that follows is blamed on the hang), or is
    /// reset.
    fn after_hang(&mut self, outcome: Outcome, now: Instant) -> Vec<Action> {
        self.set_phase(Phase::Finished);
        let mut out = vec![Action::FinishCrash { outcome }];
        match self.policy.on_hang.then {
            Some(HangAction::Reset) => out.push(Action::Reset),
            Some(HangAction::Nmi) => {
                self.crash = None;
                self.blame = Some((now, Trigger::GuestHang));
                out.push(Action::InjectNmi(NmiTargets::All));
            }
            None => self.crash = None,
        }
        out
    }

    /// Never pause the vCPUs while the guest busy-waits for an UNLOAD_RESPONSE we will send:
    /// hold a pause (and everything after it) until the UNLOAD completed.
    fn hold_while_unloading(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let held = &mut self.deferred.unload;
        if !self.unload_in_flight && held.is_empty() {
            return actions;
        }
        let mut out = Vec::new();
        for a in actions {
            if self.unload_in_flight && (!held.is_empty() || matches!(a, Action::Pause | Action::HostDump { .. })) {
                held.push(a);
            } else {
                out.push(a);
            }
        }
        out
    }

    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        if self.deadline().is_none_or(|d| now < d) {
            // (Also while a dump is written: `deadline` is none then.)
            return vec![];
        }
        let actions = match self.crash.as_ref().map(|c| c.phase) {
            Some(Phase::AwaitReport { .. }) => self.collect(DumpReason::NoHvReport),
            Some(Phase::AwaitKexec { .. }) => self.collect(DumpReason::NoKexec),
            Some(Phase::AwaitKdump { .. }) => self.fallback(DumpReason::KdumpTimeout(self.policy.kdump_timeout)),
            _ => vec![],
        };
        let actions = self.hold_while_unloading(actions);
        self.handed_out(actions)
    }

    /// The host dump for `reason` finished (`error` when it failed, or could not be started):
    /// the one point where what waited for it is released, in order: the actions after its
    /// `HostDump`, what its outcome brings, then the signals that arrived meanwhile (until one
    /// starts another dump, the rest waiting for that one, or the boot ends). An operator's dump
    /// is not a crash's: its outcome brings nothing.
    pub fn on_dump_done(
        &mut self,
        reason: &DumpReason,
        error: Option<&dyn std::fmt::Display>,
        now: Instant,
    ) -> Vec<Action> {
        let (mut actions, signals) = match self.deferred.dump.take() {
            Some(w) => (w.rest, w.signals),
            None => (Vec::new(), VecDeque::new()),
        };
        actions.extend(self.dump_outcome(reason, error, now));
        let mut out = self.handed_out(actions);
        for (signal, seen) in signals {
            out.extend(self.on_signal(signal, seen));
        }
        out
    }

    /// The crash's vmcore was not written on purpose, `why` (`--crash-dir-max`,
    /// `--vmcores-per-signature`): for `reason`, the `HostDump` handed out, or for the guest's
    /// kdump (`None`), its collection. The crash is finished without a vmcore and without
    /// counting as a failed collection; nothing else is tried (another vmcore of the same crash
    /// would be refused the same way). A hang's live dump, or the snapshot at kexec, goes on as
    /// after a failed dump.
    pub fn on_vmcore_skipped(
        &mut self,
        reason: Option<&DumpReason>,
        why: &dyn std::fmt::Display,
        now: Instant,
    ) -> Vec<Action> {
        let Some(reason) = reason else {
            let actions = self.finish(Outcome::VmcoreSkipped(why.to_string()));
            return self.handed_out(actions);
        };
        let plain = !matches!(reason, DumpReason::Hang { .. })
            && !matches!(self.crash.as_ref().map(|c| c.phase), Some(Phase::Dumping { resume: true }));
        if !reason.is_crash() || !plain {
            return self.on_dump_done(reason, Some(why), now);
        }
        let (mut actions, signals) = match self.deferred.dump.take() {
            Some(w) => (w.rest, w.signals),
            None => (Vec::new(), VecDeque::new()),
        };
        actions.extend(self.finish(Outcome::VmcoreSkipped(why.to_string())));
        let mut out = self.handed_out(actions);
        for (signal, seen) in signals {
            out.extend(self.on_signal(signal, seen));
        }
        out
    }

    /// What a finished dump brings.
    fn dump_outcome(
        &mut self,
        reason: &DumpReason,
        error: Option<&dyn std::fmt::Display>,
        now: Instant,
    ) -> Vec<Action> {
        if !reason.is_crash() {
            return vec![];
        }
        if let DumpReason::Hang { stalled_ms } = *reason {
            if let Some(e) = error {
                self.lost_hang = Some(e.to_string());
            }
            let outcome = Outcome::HangDumped {
                stalled_ms,
                error: error.map(ToString::to_string),
                then: self.policy.on_hang.then,
            };
            return self.after_hang(outcome, now);
        }
        let resume = matches!(self.crash.as_ref().map(|c| c.phase), Some(Phase::Dumping { resume: true }));
        let error = error.map(ToString::to_string);
        if let (Some(c), Some(e)) = (self.crash.as_mut(), error.as_ref()) {
            c.dump_failed = Some(e.clone());
        }
        if resume {
            // The kdump snapshot is taken; the crash kernel goes on.
            self.set_phase(Phase::AwaitKdump { deadline: now + self.policy.kdump_timeout });
            return vec![Action::Resume];
        }
        match error {
            None => self.finish(Outcome::HostVmcoreWritten),
            Some(e) => self.finish(Outcome::HostVmcoreFailed(e)),
        }
    }

    /// The guest's dump was taken from the crash disk (`Ok(true)`), there was no crash disk to
    /// take it from (`Ok(false)`), or it could not be read (`Err`).
    pub fn on_kdump_collected(&mut self, result: Result<bool, &dyn std::fmt::Display>, now: Instant) -> Vec<Action> {
        let _ = now;
        let actions = match result {
            Ok(true) => self.finish(Outcome::KdumpCollected),
            Ok(false) => self.finish(Outcome::KdumpNoCrashDisk),
            Err(e) => self.fallback(DumpReason::KdumpNoDump(e.to_string())),
        };
        self.handed_out(actions)
    }

    /// The operator's request (control socket); `paused` says whether the vCPUs are paused
    /// now. Not held while an UNLOAD is in flight: the operator asked for it now. Refused while
    /// a dump is being written (one dump at a time; pause, resume, NMI, reset and shutdown
    /// would change the VM under it): the error says which dump.
    pub fn on_command(&mut self, command: Command, paused: bool, now: Instant) -> Result<Vec<Action>, DumpInProgress> {
        if let Some(w) = &self.deferred.dump {
            let handed_out = || DumpInProgress { reason: w.reason.clone(), live: w.reason.is_live(), since: now };
            return Err(w.started.clone().unwrap_or_else(handed_out));
        }
        let actions = match command {
            Command::InjectNmi(targets) => {
                let mut out = self.decide(&CrashSignal::NmiInjected, now);
                out.push(Action::InjectNmi(targets));
                out
            }
            Command::Pause => vec![Action::Pause],
            Command::Resume => vec![Action::Resume],
            // A live dump pauses the guest for its snapshot itself.
            Command::Dump(DumpOverride { live: true, .. }) => vec![Action::HostDump { reason: DumpReason::Operator }],
            Command::Dump(_) => {
                let mut out = vec![Action::Pause, Action::HostDump { reason: DumpReason::Operator }];
                out.extend((!paused).then_some(Action::Resume));
                out
            }
            Command::Reset => vec![Action::Reset],
            // As if the VM had ended by itself: a crash in progress is collected first.
            Command::Shutdown => return Ok(self.on_vm_exit(VmExit::HostShutdown, now)),
        };
        Ok(self.handed_out(actions))
    }

    /// The VM stopped by itself (power-off, reset, triple fault, ...) or was stopped from
    /// outside: what now.
    pub fn on_vm_exit(&mut self, exit: VmExit, now: Instant) -> Vec<Action> {
        let _ = now;
        let phase = self.crash.as_ref().map(|c| c.phase);
        let actions = match (phase, &exit) {
            (None, _) => vec![Action::Stop(self.final_exit(exit))],
            (_, VmExit::Stopped { .. } | VmExit::Error(_)) => {
                let mut out = Vec::new();
                if phase != Some(Phase::Finished) {
                    out.push(Action::FinishCrash { outcome: Outcome::Interrupted(exit.reason()) });
                }
                out.push(Action::Stop(exit));
                out
            }
            (Some(Phase::AwaitKdump { .. }), VmExit::PowerOff) => {
                self.set_phase(Phase::Collecting);
                vec![Action::CollectKdump]
            }
            (Some(Phase::AwaitKdump { .. }), _) => self.fallback(DumpReason::KdumpEnded(exit.reason())),
            (Some(Phase::AwaitReport { .. } | Phase::AwaitKexec { .. }), _) => {
                // Memory is intact: collect from it now.
                self.collect(DumpReason::ExitAfterPanic(exit.reason()))
            }
            (Some(Phase::Finished), VmExit::Reset(_)) if self.policy.after_crash == AfterCrash::Reset => {
                self.after_crash()
            }
            (Some(_), _) => vec![Action::Stop(self.final_exit(exit))],
        };
        // The VM no longer runs, so nothing waits for an UNLOAD.
        self.unload_in_flight = false;
        let mut out = std::mem::take(&mut self.deferred.unload);
        out.extend(actions);
        self.handed_out(out)
    }

    /// The guest booted again after [`Action::Reset`]: nothing of the last boot waits.
    pub fn on_reset(&mut self) {
        self.crash = None;
        self.unload_in_flight = false;
        self.deferred = Deferred::default();
        self.ended = false;
    }

    /// A guest that panicked stays a panicked guest whatever it did next: reset itself
    /// (`panic=N`), triple-faulted, or powered off after its kdump. A hang whose vmcore could
    /// not be written is not forgotten: an end that would say all went well (power-off, reset,
    /// `shutdown`) says the crash could not be collected instead.
    pub fn final_exit(&self, exit: VmExit) -> VmExit {
        let exit = match (&exit, &self.crash) {
            (VmExit::Reset(_) | VmExit::TripleFault { .. } | VmExit::PowerOff, Some(_)) => self.panic_exit(),
            _ => exit,
        };
        match (exit, &self.lost_hang) {
            (VmExit::PowerOff | VmExit::Reset(_) | VmExit::HostShutdown, Some(reason)) => {
                VmExit::CrashCollectionFailed { trigger: Trigger::GuestHang.to_string(), reason: reason.clone() }
            }
            (exit, _) => exit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::ResetSource;

    const PANICKED: u8 = 1;
    /// What `shape` puts in place of reasons and outcomes.
    const ANY_REASON: DumpReason = DumpReason::GuestKexec;
    const ANY_OUTCOME: Outcome = Outcome::HostVmcoreWritten;
    const CRASH_LOADED: u8 = 2;

    fn pv(bits: u8) -> CrashSignal {
        CrashSignal::PvPanic { vcpu: 1, bits }
    }
    fn hv() -> CrashSignal {
        CrashSignal::HvCrash { vcpu: 1, params: [0; 5], message: Some("sysrq triggered crash".into()) }
    }
    fn kexec() -> CrashSignal {
        CrashSignal::GuestKexec { vcpu: 1 }
    }
    fn started() -> CrashSignal {
        CrashSignal::CrashKernelStarted { vcpu: 1 }
    }
    fn disk() -> CrashSignal {
        CrashSignal::CrashDiskWritten { vcpu: 1 }
    }
    fn disk_started() -> Action {
        Action::CrashKernelStarted { vcpu: 1 }
    }
    fn begin(t: &str) -> Action {
        let trigger = [
            Trigger::Pvpanic,
            Trigger::HvCrash,
            Trigger::TripleFault,
            Trigger::KvmFailure,
            Trigger::GuestHang,
            Trigger::NmiInjection,
            Trigger::CrashKernel,
        ]
        .into_iter()
        .find(|x| x.as_str() == t)
        .unwrap();
        Action::BeginCrash { trigger }
    }
    fn dump() -> Vec<Action> {
        vec![Action::Pause, Action::HostDump { reason: ANY_REASON }]
    }
    fn stop_panicked(t: &str) -> Action {
        Action::Stop(VmExit::GuestPanicked { trigger: t.into() })
    }

    /// Compare ignoring free-text reasons and outcomes.
    fn shape(actions: &[Action]) -> Vec<Action> {
        actions
            .iter()
            .map(|a| match a {
                Action::HostDump { .. } => Action::HostDump { reason: ANY_REASON },
                Action::FinishCrash { .. } => Action::FinishCrash { outcome: ANY_OUTCOME },
                other => other.clone(),
            })
            .collect()
    }

    fn policy(on_panic: OnPanic, after_crash: AfterCrash, host_dump: HostDump) -> Policy {
        Policy {
            on_panic,
            after_crash,
            host_dump,
            kdump_timeout: Duration::from_secs(60),
            max_crashes: 0,
            hyperv: true,
            on_hang: OnHang::NMI,
            reset_backoff: ResetBackoff::default(),
        }
    }

    /// Feed signals; return every action in order.
    fn run(p: Policy, signals: &[CrashSignal]) -> (Orchestrator, Vec<Action>) {
        run_at(p, signals, Instant::now())
    }

    fn run_at(p: Policy, signals: &[CrashSignal], t0: Instant) -> (Orchestrator, Vec<Action>) {
        let mut o = Orchestrator::new(p);
        let mut out = vec![];
        for s in signals {
            out.extend(o.signal(s, t0));
        }
        (o, shape(&out))
    }

    fn finish() -> Action {
        Action::FinishCrash { outcome: ANY_OUTCOME }
    }

    /// `signal` as the vCPU threads send it (observed at a fixed time).
    fn timed(signal: &CrashSignal) -> TimedSignal {
        TimedSignal { at: chrono::DateTime::UNIX_EPOCH, signal: signal.clone() }
    }

    /// The decision of `signal`, seen at `seen`, as the orchestrator hands it out.
    fn rec(signal: &CrashSignal, seen: Instant) -> Action {
        Action::RecordSignal { signal: timed(signal), seen }
    }

    /// Most tests feed bare signals and look at the decisions only, without the
    /// `RecordSignal` each decided signal begins with.
    trait Feed {
        fn signal(&mut self, signal: &CrashSignal, now: Instant) -> Vec<Action>;
    }

    impl Feed for Orchestrator {
        fn signal(&mut self, signal: &CrashSignal, now: Instant) -> Vec<Action> {
            let out = self.on_signal(timed(signal), now);
            out.into_iter().filter(|a| !matches!(a, Action::RecordSignal { .. })).collect()
        }
    }

    #[test]
    fn final_panic_table() {
        use AfterCrash as A;
        use HostDump as H;
        use OnPanic as P;
        // (policy, signals, expected actions)
        let cases: Vec<(Policy, Vec<CrashSignal>, Vec<Action>)> = vec![
            // No Hyper-V: pvpanic alone decides.
            (
                Policy { hyperv: false, ..policy(P::Auto, A::Exit, H::Fallback) },
                vec![pv(PANICKED)],
                [vec![begin("pvpanic")], dump()].concat(),
            ),
            // Hyper-V: wait for its report, then dump.
            (policy(P::Auto, A::Exit, H::Fallback), vec![pv(PANICKED)], vec![begin("pvpanic")]),
            (
                policy(P::Auto, A::Exit, H::Fallback),
                vec![pv(PANICKED), hv()],
                [vec![begin("pvpanic")], dump()].concat(),
            ),
            (
                policy(P::HostDump, A::Exit, H::Fallback),
                vec![pv(PANICKED), hv()],
                [vec![begin("pvpanic")], dump()].concat(),
            ),
            // No host dump allowed: report only, then after-crash.
            (
                policy(P::Auto, A::Exit, H::Never),
                vec![pv(PANICKED), hv()],
                vec![begin("pvpanic"), finish(), stop_panicked("pvpanic")],
            ),
            (
                policy(P::Kdump, A::Reset, H::Fallback),
                vec![pv(PANICKED), hv()],
                vec![begin("pvpanic"), finish(), Action::Reset],
            ),
            (
                policy(P::Pause, A::Exit, H::Fallback),
                vec![pv(PANICKED), hv()],
                vec![begin("pvpanic"), Action::Pause, finish(), Action::StayPaused],
            ),
            (policy(P::Ignore, A::Exit, H::Fallback), vec![pv(PANICKED), hv()], vec![begin("pvpanic"), finish()]),
            // Duplicates change nothing.
            (
                policy(P::Auto, A::Exit, H::Fallback),
                vec![pv(PANICKED), pv(PANICKED), hv(), hv(), pv(PANICKED)],
                [vec![begin("pvpanic")], dump()].concat(),
            ),
            // Not crashes.
            (policy(P::Auto, A::Exit, H::Fallback), vec![pv(4), pv(0), kexec(), started()], vec![]),
            // A triple fault is a crash of its own.
            (
                policy(P::Auto, A::Exit, H::Fallback),
                vec![CrashSignal::TripleFault { vcpu: 0 }],
                [vec![begin("triple_fault")], dump()].concat(),
            ),
            (
                policy(P::Auto, A::Exit, H::Fallback),
                vec![CrashSignal::KvmFailure { vcpu: 0, detail: "x".into() }],
                [vec![begin("kvm_failure")], dump()].concat(),
            ),
            // Hyper-V report without pvpanic: wait for a kexec first.
            (policy(P::Auto, A::Exit, H::Fallback), vec![hv()], vec![begin("hv_crash")]),
        ];
        for (p, signals, expected) in cases {
            let desc = format!("{p:?} {signals:?}");
            assert_eq!(run(p, &signals).1, expected, "{desc}");
        }
    }

    #[test]
    fn an_ignored_triple_fault_ends_the_vm() {
        use AfterCrash as A;
        use HostDump as H;
        use OnPanic as P;
        let tf = CrashSignal::TripleFault { vcpu: 0 };
        let stop_tf = Action::Stop(VmExit::TripleFault { vcpu: 0 });
        // Ignored: recorded, then the VM ends as a triple fault (exit code 4).
        let (_, out) = run(policy(P::Ignore, A::Exit, H::Fallback), std::slice::from_ref(&tf));
        assert_eq!(out, vec![begin("triple_fault"), finish(), stop_tf.clone()]);
        // After a crash that was ignored and let the guest go on.
        let (_, out) = run(policy(P::Ignore, A::Exit, H::Fallback), &[pv(PANICKED), hv(), tf.clone()]);
        assert_eq!(out, vec![begin("pvpanic"), finish(), stop_tf]);
        // Collected or paused as before.
        let (_, out) = run(policy(P::Auto, A::Exit, H::Fallback), std::slice::from_ref(&tf));
        assert_eq!(out, [vec![begin("triple_fault")], dump()].concat());
        let (_, out) = run(policy(P::Pause, A::Exit, H::Fallback), &[tf]);
        assert_eq!(out, vec![begin("triple_fault"), Action::Pause, finish(), Action::StayPaused]);
    }

    #[test]
    fn kdump_table() {
        use AfterCrash as A;
        use HostDump as H;
        use OnPanic as P;
        let seq = [pv(CRASH_LOADED), hv(), kexec(), started()];
        let cases: Vec<(Policy, Vec<Action>)> = vec![
            (policy(P::Auto, A::Exit, H::Fallback), vec![begin("pvpanic")]),
            (policy(P::Kdump, A::Exit, H::Fallback), vec![begin("pvpanic")]),
            // --host-dump always: snapshot at guest_kexec, then the crash kernel goes on.
            // A live dump, which pauses for its snapshot only.
            (policy(P::Auto, A::Exit, H::Always), vec![begin("pvpanic"), Action::HostDump { reason: ANY_REASON }]),
            // host-dump policy: the guest's kdump does not run; dump once it is quiet (kexec).
            (policy(P::HostDump, A::Exit, H::Fallback), [vec![begin("pvpanic")], dump()].concat()),
            (
                policy(P::Pause, A::Exit, H::Fallback),
                vec![begin("pvpanic"), Action::Pause, finish(), Action::StayPaused],
            ),
            (policy(P::Ignore, A::Exit, H::Fallback), vec![begin("pvpanic"), finish()]),
        ];
        for (p, expected) in cases {
            let desc = format!("{p:?}");
            assert_eq!(run(p, &seq).1, expected, "{desc}");
        }
        // A kexec after a Hyper-V report without pvpanic is a kdump too.
        let (o, _) = run(policy(P::Auto, A::Exit, H::Fallback), &[hv(), kexec()]);
        assert!(matches!(o.crash.unwrap().phase, Phase::AwaitKdump { .. }));
    }

    #[test]
    fn kdump_completion_and_timeout() {
        let t0 = Instant::now();
        let p = policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback);
        let (mut o, _) = run(p.clone(), &[pv(CRASH_LOADED), hv(), kexec(), started()]);
        assert_eq!(o.deadline().map(|d| d > t0), Some(true));
        // The crash kernel powered off: kdump done; its dump is collected.
        assert_eq!(o.on_vm_exit(VmExit::PowerOff, t0), vec![Action::CollectKdump]);
        assert_eq!(shape(&o.on_kdump_collected(Ok(true), t0)), vec![finish(), stop_panicked("pvpanic")]);
        // No usable dump on the crash disk: a host-side vmcore instead.
        let (mut o2, _) = run(p.clone(), &[pv(CRASH_LOADED), kexec(), started()]);
        o2.on_vm_exit(VmExit::PowerOff, t0);
        let out = o2.on_kdump_collected(Err(&"no makedumpfile signature"), t0);
        assert!(
            matches!(&out[1], Action::HostDump { reason } if reason.to_string().contains("no usable dump")),
            "{out:?}"
        );
        // Timeout: host-side vmcore instead, with the reason.
        let (mut o, _) = run(p.clone(), &[pv(CRASH_LOADED), kexec(), started()]);
        assert!(o.on_timer(t0).is_empty());
        let out = o.on_timer(t0 + Duration::from_secs(61));
        assert!(
            matches!(&out[1], Action::HostDump { reason } if reason.to_string().contains("--kdump-timeout 60")),
            "{out:?}"
        );
        assert_eq!(shape(&o.on_dump_done(&DumpReason::NoHvReport, None, t0)), vec![finish(), stop_panicked("pvpanic")]);
        // With --host-dump never the timeout gives a report without vmcore.
        let (mut o, _) = run(policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Never), &[pv(CRASH_LOADED), kexec()]);
        assert_eq!(shape(&o.on_timer(t0 + Duration::from_secs(61))), vec![finish(), stop_panicked("pvpanic")]);
        // The crash kernel itself panics: fallback.
        let (_, out) = run(p, &[pv(CRASH_LOADED), kexec(), started(), pv(PANICKED)]);
        assert_eq!(out, [vec![begin("pvpanic")], dump()].concat());
    }

    /// Without Hyper-V and with `crash_kexec_post_notifiers=0` the crashed kernel kexecs
    /// before any panic notifier: the crash kernel's first write to the crash disk is the first
    /// crashvmm hears of the crash. A crash of its own, in the kdump phase, whatever
    /// `--on-panic` says but `ignore`.
    #[test]
    fn the_crash_disk_s_first_write_begins_a_crash_in_the_kdump_phase() {
        use AfterCrash as A;
        use HostDump as H;
        use OnPanic as P;
        let t0 = Instant::now();
        let no_hv = |on_panic, host_dump| Policy { hyperv: false, ..policy(on_panic, A::Exit, host_dump) };
        let kdump = vec![begin("crash_kernel"), disk_started()];
        // (policy, actions): the guest's kdump goes on (no pause, no dump, no snapshot: the
        // kexec is past), or the crash is recorded and ignored.
        let cases: Vec<(Policy, Vec<Action>)> = vec![
            (no_hv(P::Auto, H::Fallback), kdump.clone()),
            (no_hv(P::Kdump, H::Fallback), kdump.clone()),
            (no_hv(P::Auto, H::Always), kdump.clone()),
            (no_hv(P::HostDump, H::Fallback), kdump.clone()),
            (no_hv(P::Pause, H::Fallback), kdump.clone()),
            (policy(P::Auto, A::Exit, H::Fallback), kdump.clone()),
            (no_hv(P::Ignore, H::Fallback), [kdump.clone(), vec![finish()]].concat()),
        ];
        for (p, want) in cases {
            let desc = format!("{p:?}");
            let (o, out) = run_at(p.clone(), &[disk(), disk()], t0);
            assert_eq!(out, want, "{desc}");
            let c = o.crash.as_ref().unwrap();
            assert!(c.crash_kernel_started, "{desc}");
            if p.on_panic != P::Ignore {
                assert_eq!(c.phase, Phase::AwaitKdump { deadline: t0 + p.kdump_timeout }, "{desc}");
            }
        }
        // The power-off after the kdump: its dump is collected from the crash disk.
        let p = no_hv(P::Auto, H::Fallback);
        let (mut o, _) = run_at(p.clone(), &[disk()], t0);
        assert_eq!(o.on_vm_exit(VmExit::PowerOff, t0), vec![Action::CollectKdump]);
        assert_eq!(shape(&o.on_kdump_collected(Ok(true), t0)), vec![finish(), stop_panicked("crash_kernel")]);
        // The kdump timeout applies.
        let (mut o, _) = run_at(p.clone(), &[disk()], t0);
        assert!(o.on_timer(t0 + Duration::from_secs(59)).is_empty());
        let out = o.on_timer(t0 + Duration::from_secs(61));
        assert!(matches!(&out[1], Action::HostDump { reason: DumpReason::KdumpTimeout(_) }), "{out:?}");
        // The crash kernel panics: a host-side vmcore instead.
        let (_, out) = run_at(p.clone(), &[disk(), pv(PANICKED)], t0);
        assert_eq!(out, [kdump.clone(), dump()].concat());
        let out = run_at(p, &[disk()], t0).0.signal(&CrashSignal::TripleFault { vcpu: 0 }, t0);
        assert!(matches!(&out[1], Action::HostDump { reason: DumpReason::DuringKdump(_) }), "{out:?}");
        // The decision follows the write's record, and the crash_kernel_started its own.
        let mut o = Orchestrator::new(Policy::default());
        let out = o.on_signal(timed(&disk()), t0);
        assert_eq!(out, vec![rec(&disk(), t0), begin("crash_kernel"), disk_started()]);
        // A new boot: a first write again is a new crash.
        o.on_reset();
        assert_eq!(o.signal(&disk(), t0), kdump);
        assert_eq!(o.crashes(), 2);
    }

    /// A crash kernel that begins writing a crash already in progress (pvpanic without
    /// Hyper-V, `crash_kexec_post_notifiers=1`) is marked started: the panic path shows its
    /// start, and a panic of its own falls back to a host-side vmcore. Where Hyper-V said so
    /// first, the write adds nothing.
    #[test]
    fn the_crash_disk_s_first_write_marks_the_crash_kernel_of_a_crash_in_progress_started() {
        use AfterCrash as A;
        use HostDump as H;
        use OnPanic as P;
        let t0 = Instant::now();
        let no_hv = Policy { hyperv: false, ..policy(P::Auto, A::Exit, H::Fallback) };
        let cases: Vec<(&str, Policy, Vec<CrashSignal>, Vec<Action>)> = vec![
            (
                "pvpanic CRASH_LOADED, then the write",
                no_hv.clone(),
                vec![pv(CRASH_LOADED), disk(), disk()],
                vec![begin("pvpanic"), disk_started()],
            ),
            (
                "the crash kernel, marked started by its write, panics: fallback",
                no_hv.clone(),
                vec![pv(CRASH_LOADED), disk(), pv(PANICKED)],
                [vec![begin("pvpanic"), disk_started()], dump()].concat(),
            ),
            (
                "not marked (no write), a second pvpanic changes nothing, as before",
                no_hv.clone(),
                vec![pv(CRASH_LOADED), pv(PANICKED)],
                vec![begin("pvpanic")],
            ),
            (
                "Hyper-V said it first: the write adds nothing",
                policy(P::Auto, A::Exit, H::Fallback),
                vec![pv(CRASH_LOADED), hv(), kexec(), started(), disk()],
                vec![begin("pvpanic")],
            ),
            (
                "a crash waiting for Hyper-V's report: the unseen kexec happened, the kdump goes on",
                policy(P::Auto, A::Exit, H::Fallback),
                vec![pv(PANICKED), disk()],
                vec![begin("pvpanic"), disk_started()],
            ),
            (
                "--on-panic host-dump waiting for the kexec: the kdump goes on",
                Policy { hyperv: false, ..policy(P::HostDump, A::Exit, H::Fallback) },
                vec![pv(CRASH_LOADED), disk()],
                vec![begin("pvpanic"), disk_started()],
            ),
            (
                "a crash already ignored: marked, nothing more",
                Policy { hyperv: false, ..policy(P::Ignore, A::Exit, H::Fallback) },
                vec![pv(CRASH_LOADED), disk()],
                vec![begin("pvpanic"), finish(), disk_started()],
            ),
        ];
        for (what, p, signals, want) in cases {
            let (o, out) = run_at(p, &signals, t0);
            assert_eq!(out, want, "{what}");
            if signals.contains(&disk()) {
                assert!(o.crash.as_ref().unwrap().crash_kernel_started, "{what}");
            }
        }
        // The waiting crash's phase is the kdump's now: collected at the power-off.
        let (mut o, _) = run_at(policy(P::Auto, A::Exit, H::Fallback), &[pv(PANICKED), disk()], t0);
        assert_eq!(o.deadline(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(o.on_vm_exit(VmExit::PowerOff, t0), vec![Action::CollectKdump]);
    }

    /// crashvmm's NMI (the operator's, or the hang's) is blamed for a crash first seen at the
    /// crash kernel's write within CRASH_KERNEL_BLAME: the crash came before that kernel booted.
    #[test]
    fn an_injected_nmi_is_blamed_for_a_crash_first_seen_at_the_crash_kernel_s_write() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        for (after, want) in
            [(secs(90), "nmi_injection"), (CRASH_KERNEL_BLAME, "nmi_injection"), (secs(181), "crash_kernel")]
        {
            let mut o = Orchestrator::new(Policy::default());
            o.on_command(Command::InjectNmi(NmiTargets::All), false, t0).unwrap();
            assert_eq!(o.signal(&disk(), t0 + after)[0], begin(want), "{after:?} after the NMI");
        }
        for (after, want) in [(secs(90), "guest_hang"), (secs(181), "crash_kernel")] {
            let mut o = Orchestrator::new(Policy::default());
            assert_eq!(o.signal(&CrashSignal::GuestHang { stalled_ms: 1 }, t0), [Action::InjectNmi(NmiTargets::All)]);
            assert_eq!(o.signal(&disk(), t0 + after)[0], begin(want), "{after:?} after the hang's NMI");
        }
    }

    #[test]
    fn snapshot_then_resume_with_host_dump_always() {
        let t0 = Instant::now();
        let (mut o, _) = run(policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Always), &[pv(CRASH_LOADED), kexec()]);
        assert_eq!(o.on_dump_done(&DumpReason::KexecSnapshot, None, t0), vec![Action::Resume]);
        assert!(o.deadline().is_some(), "back to waiting for kdump");
        assert_eq!(o.on_vm_exit(VmExit::PowerOff, t0), vec![Action::CollectKdump]);
        assert_eq!(shape(&o.on_kdump_collected(Ok(false), t0)), vec![finish(), stop_panicked("pvpanic")]);
    }

    #[test]
    fn report_grace_period() {
        let t0 = Instant::now();
        let (mut o, _) = run_at(policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback), &[pv(PANICKED)], t0);
        assert_eq!(o.deadline(), Some(t0 + HV_CRASH_GRACE));
        assert!(o.on_timer(t0 + HV_CRASH_GRACE / 2).is_empty());
        assert_eq!(shape(&o.on_timer(t0 + HV_CRASH_GRACE)), dump());
        // The guest reset itself before the report came: collect from memory anyway.
        let (mut o, _) = run(policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback), &[pv(PANICKED)]);
        assert_eq!(shape(&o.on_vm_exit(VmExit::Reset(ResetSource::AcpiResetRegister), t0)), dump());
    }

    #[test]
    fn never_pauses_while_unload_is_in_flight() {
        let t0 = Instant::now();
        let p = policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback);
        let unload = CrashSignal::UnloadRequested { vcpu: 1, answered: true };
        let done = CrashSignal::UnloadCompleted { vcpu: 0, latency_us: 1 };
        let (mut o, out) = run(p.clone(), &[pv(PANICKED), unload.clone(), hv()]);
        assert_eq!(out, vec![begin("pvpanic")], "pause held back");
        assert_eq!(shape(&o.signal(&done, t0)), dump(), "released by the UNLOAD_RESPONSE");
        // An UNLOAD that will never be answered does not hold anything.
        let (_, out) = run(p.clone(), &[pv(PANICKED), CrashSignal::UnloadRequested { vcpu: 1, answered: false }, hv()]);
        assert_eq!(out, [vec![begin("pvpanic")], dump()].concat());
        // The timer path is held too.
        let (mut o, _) = run_at(p, &[pv(PANICKED), unload], t0);
        assert!(o.on_timer(t0 + HV_CRASH_GRACE).is_empty());
        assert_eq!(shape(&o.signal(&done, t0)), dump());
    }

    #[test]
    fn hangs_follow_on_hang() {
        let t0 = Instant::now();
        let hang = CrashSignal::GuestHang { stalled_ms: 30_000 };
        let hang_dump = Action::HostDump { reason: DumpReason::Hang { stalled_ms: 30_000 } };
        let base = policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback);
        let with = |on_hang| Orchestrator::new(Policy { on_hang, ..base.clone() });
        // nmi: inject, and the crash that follows is the hang's.
        let mut o = with(OnHang::NMI);
        assert_eq!(o.signal(&hang, t0), vec![Action::InjectNmi(NmiTargets::All)]);
        assert_eq!(o.signal(&pv(CRASH_LOADED), t0)[0], begin("guest_hang"));
        // reset: the hang's crash directory, then the guest boots again.
        let (_, out) = run(Policy { on_hang: OnHang::RESET, ..base.clone() }, std::slice::from_ref(&hang));
        assert_eq!(out, vec![begin("guest_hang"), finish(), Action::Reset]);
        // host-dump: a live dump (no pause around it), into the hang's crash directory; the
        // guest runs on, and a later crash is one of its own.
        let mut o = with(OnHang::HOST_DUMP);
        assert_eq!(o.signal(&hang, t0), vec![begin("guest_hang"), hang_dump.clone()]);
        assert!(o.panicked());
        let out = o.on_dump_done(&DumpReason::Hang { stalled_ms: 30_000 }, None, t0);
        let outcome = Outcome::HangDumped { stalled_ms: 30_000, error: None, then: None };
        assert_eq!(out, vec![Action::FinishCrash { outcome }]);
        assert!(!o.panicked(), "the guest runs on");
        assert_eq!(o.signal(&pv(CRASH_LOADED), t0)[0], begin("pvpanic"));
        assert_eq!(o.crashes(), 2);
        // host-dump,nmi: the live dump first, then the NMI; the crash it brings is the hang's.
        let mut o = with(OnHang::HOST_DUMP_NMI);
        assert_eq!(o.signal(&hang, t0), vec![begin("guest_hang"), hang_dump.clone()]);
        let out = o.on_dump_done(&DumpReason::Hang { stalled_ms: 30_000 }, None, t0);
        assert_eq!(shape(&out), vec![finish(), Action::InjectNmi(NmiTargets::All)]);
        assert!(
            matches!(&out[0], Action::FinishCrash { outcome } if outcome.to_string().ends_with("written; NMI injected"))
        );
        assert_eq!(o.signal(&pv(CRASH_LOADED), t0)[0], begin("guest_hang"));
        // A dump that failed still lets the follow-up happen, and says why.
        let mut o = with(OnHang::HOST_DUMP_RESET);
        o.signal(&hang, t0);
        let out = o.on_dump_done(&DumpReason::Hang { stalled_ms: 30_000 }, Some(&"no space left"), t0);
        assert_eq!(shape(&out), vec![finish(), Action::Reset]);
        assert!(
            matches!(&out[0], Action::FinishCrash { outcome } if outcome.to_string().contains("failed: no space left; reset")),
            "{out:?}"
        );
        // --host-dump never: no dump; the follow-up at once.
        let p = Policy { on_hang: OnHang::HOST_DUMP_NMI, ..policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Never) };
        let (_, out) = run(p, std::slice::from_ref(&hang));
        assert_eq!(out, vec![begin("guest_hang"), finish(), Action::InjectNmi(NmiTargets::All)]);
        // While a crash is being handled, a stall is not a new hang.
        let (_, out) = run(base, &[pv(CRASH_LOADED), hang]);
        assert_eq!(out, vec![begin("pvpanic")]);
    }

    #[test]
    fn on_hang_parses_its_combinations() {
        for (text, want) in [
            ("nmi", OnHang::NMI),
            ("reset", OnHang::RESET),
            ("host-dump", OnHang::HOST_DUMP),
            ("host-dump,nmi", OnHang::HOST_DUMP_NMI),
            ("host-dump,reset", OnHang::HOST_DUMP_RESET),
        ] {
            assert_eq!(text.parse::<OnHang>(), Ok(want));
            assert_eq!(want.to_string(), text);
            assert_eq!(serde_json::to_value(want).unwrap(), text);
        }
        for bad in ["", "nmi,host-dump", "host-dump,nmi,reset", "nmi,reset", "host-dump,host-dump", "panic"] {
            let e = bad.parse::<OnHang>().unwrap_err();
            assert!(e.to_string().contains("host-dump,reset"), "{bad}: {e}");
        }
    }

    /// One dump at a time: while a dump is written (the operator's, live or not, or a crash's),
    /// every command is refused with it, and deadlines wait; afterwards all works again.
    #[test]
    fn while_a_dump_is_written_commands_are_refused_and_deadlines_wait() {
        let t0 = Instant::now();
        let op = |live| Command::Dump(DumpOverride { live, ..Default::default() });
        let all = [
            op(false),
            op(true),
            Command::Pause,
            Command::Resume,
            Command::InjectNmi(NmiTargets::All),
            Command::Reset,
            Command::Shutdown,
        ];
        for live in [false, true] {
            let mut o = Orchestrator::new(Policy::default());
            assert!(o.on_command(op(live), false, t0).is_ok());
            o.on_dump_started(&DumpReason::Operator, live, t0);
            for c in all {
                let busy = o.on_command(c, false, t0).unwrap_err();
                assert_eq!(busy, DumpInProgress { reason: DumpReason::Operator, live, since: t0 }, "{c:?}");
            }
            // What followed the dump: the guest resumed, unless the dump was live.
            let resume = if live { vec![] } else { vec![Action::Resume] };
            assert_eq!(o.on_dump_done(&DumpReason::Operator, None, t0), resume);
            assert_eq!(o.dump_in_progress(), None);
            assert_eq!(o.on_command(Command::Pause, false, t0).unwrap(), vec![Action::Pause]);
        }
        // During a crash: its grace deadline waits for the operator's dump.
        let mut o = Orchestrator::new(Policy::default());
        o.signal(&pv(PANICKED), t0);
        assert_eq!(o.deadline(), Some(t0 + HV_CRASH_GRACE));
        let op_dump = Action::HostDump { reason: DumpReason::Operator };
        assert_eq!(o.on_command(op(false), false, t0).unwrap(), [Action::Pause, op_dump]);
        o.on_dump_started(&DumpReason::Operator, false, t0);
        assert_eq!(o.deadline(), None);
        assert!(o.on_timer(t0 + HV_CRASH_GRACE).is_empty(), "no second dump while one is written");
        assert_eq!(o.on_dump_done(&DumpReason::Operator, None, t0), [Action::Resume]);
        assert_eq!(shape(&o.on_timer(t0 + HV_CRASH_GRACE)), dump());
        // The crash's own dump refuses the operator's.
        o.on_dump_started(&DumpReason::NoHvReport, false, t0);
        let busy = o.on_command(op(true), false, t0).unwrap_err();
        assert_eq!((busy.reason, busy.live), (DumpReason::NoHvReport, false));
        // So does a hang's live dump.
        let mut o = Orchestrator::new(Policy { on_hang: OnHang::HOST_DUMP_NMI, ..Policy::default() });
        let out = o.signal(&CrashSignal::GuestHang { stalled_ms: 1 }, t0);
        assert!(matches!(&out[1], Action::HostDump { reason } if reason.is_live()), "{out:?}");
        o.on_dump_started(&DumpReason::Hang { stalled_ms: 1 }, true, t0);
        assert!(o.on_command(Command::InjectNmi(NmiTargets::All), false, t0).is_err());
        // A new boot forgets it.
        o.on_reset();
        assert_eq!(o.dump_in_progress(), None);
    }

    /// The wait doubles with each crash of one signature after a short boot, up to the
    /// maximum; another signature or a boot that lasted starts over; none without the option,
    /// or when the guest does not boot again.
    #[test]
    fn crash_loops_wait_longer_each_time_the_same_crash_comes_back() {
        let s = Duration::from_secs;
        let backoff = ResetBackoff { initial: s(1), max: s(10) };
        let reset = Policy { reset_backoff: backoff, ..policy(OnPanic::Auto, AfterCrash::Reset, HostDump::Fallback) };
        let mut o = Orchestrator::new(reset.clone());
        let waits: Vec<_> = (0..6).map(|_| o.reset_wait(Some("a"), s(3))).collect();
        let expected = [(1, 1), (2, 2), (4, 3), (8, 4), (10, 5), (10, 6)].map(|(w, n)| Some((s(w), n)));
        assert_eq!(waits, expected);
        // Another signature starts over; so does a crash after a boot of the maximum.
        assert_eq!(o.reset_wait(Some("b"), s(3)), Some((s(1), 1)));
        assert_eq!(o.reset_wait(Some("b"), s(3)), Some((s(2), 2)));
        assert_eq!(o.reset_wait(Some("b"), s(10)), Some((s(1), 1)));
        assert_eq!(o.reset_wait(None, s(1)), Some((s(1), 1)));
        assert_eq!(o.reset_wait(None, s(1)), Some((s(2), 2)));
        // No back-off asked for, the guest not booted again, or its last crash: no wait.
        let mut none = Orchestrator::new(policy(OnPanic::Auto, AfterCrash::Reset, HostDump::Fallback));
        assert_eq!(none.reset_wait(Some("a"), s(1)), None);
        let mut exit = Orchestrator::new(Policy { after_crash: AfterCrash::Exit, ..reset.clone() });
        assert_eq!(exit.reset_wait(Some("a"), s(1)), None);
        let mut last = Orchestrator::new(Policy { max_crashes: 1, ..reset });
        last.signal(&pv(PANICKED), Instant::now());
        assert_eq!(last.reset_wait(Some("a"), s(1)), None);
    }

    /// A vmcore left out on purpose (budget, duplicates) finishes the crash as a panic, not as a
    /// failed collection, and nothing else is tried for it; a failed one is still a failure.
    #[test]
    fn a_vmcore_left_out_on_purpose_is_no_failed_collection() {
        let t0 = Instant::now();
        let p = policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback);
        let mut o = Orchestrator::new(p.clone());
        o.signal(&pv(PANICKED), t0);
        o.signal(&hv(), t0);
        let out = o.on_vmcore_skipped(Some(&DumpReason::HvCrashReport), &"over budget", t0);
        assert!(
            matches!(&out[..], [Action::FinishCrash { outcome: Outcome::VmcoreSkipped(w) }, Action::Stop(VmExit::GuestPanicked { .. })] if w == "over budget"),
            "{out:?}"
        );
        // The guest's kdump: its collection left out, no host-side vmcore after it.
        let mut o = Orchestrator::new(p.clone());
        o.signal(&pv(PANICKED), t0);
        let out = o.on_vmcore_skipped(None, &"duplicate", t0);
        assert!(
            matches!(
                &out[..],
                [
                    Action::FinishCrash { outcome: Outcome::VmcoreSkipped(_) },
                    Action::Stop(VmExit::GuestPanicked { .. })
                ]
            ),
            "{out:?}"
        );
        let mut o = Orchestrator::new(p);
        o.signal(&pv(PANICKED), t0);
        o.signal(&hv(), t0);
        let out = o.on_dump_done(&DumpReason::HvCrashReport, Some(&"disk full"), t0);
        assert!(matches!(&out[1], Action::Stop(VmExit::CrashCollectionFailed { .. })), "{out:?}");
    }

    #[test]
    fn crash_loops_stop_at_max_crashes() {
        let t0 = Instant::now();
        let p = Policy { max_crashes: 2, ..policy(OnPanic::Auto, AfterCrash::Reset, HostDump::Fallback) };
        let mut o = Orchestrator::new(p);
        for n in 1..=2u32 {
            o.signal(&pv(PANICKED), t0);
            o.signal(&hv(), t0);
            let out = shape(&o.on_dump_done(&DumpReason::HvCrashReport, None, t0));
            if n == 1 {
                assert_eq!(out, vec![finish(), Action::Reset]);
                o.on_reset();
            } else {
                assert!(
                    matches!(&out[1], Action::Stop(VmExit::GuestPanicked { trigger }) if trigger.contains("max-crashes 2")),
                    "{out:?}"
                );
            }
        }
        assert_eq!(o.crashes(), 2);
    }

    #[test]
    fn failed_dump_gives_its_own_exit() {
        let t0 = Instant::now();
        let (mut o, _) = run(policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback), &[pv(PANICKED), hv()]);
        let out = o.on_dump_done(&DumpReason::HvCrashReport, Some(&"no space left on device"), t0);
        assert!(
            matches!(&out[1], Action::Stop(VmExit::CrashCollectionFailed { reason, .. }) if reason.contains("no space"))
        );
    }

    /// A hang whose vmcore failed: the guest goes on (here, the NMI), but crashvmm's end says
    /// a crash was lost however the guest ends later; a hang dumped is no such thing.
    #[test]
    fn a_hang_whose_vmcore_failed_is_not_forgotten_at_the_end() {
        let t0 = Instant::now();
        let hang = CrashSignal::GuestHang { stalled_ms: 2_000 };
        let base =
            Policy { on_hang: OnHang::HOST_DUMP_NMI, ..policy(OnPanic::Auto, AfterCrash::Exit, HostDump::Fallback) };
        for error in [None, Some("pipe: Too many open files")] {
            let mut o = Orchestrator::new(base.clone());
            o.signal(&hang, t0);
            let out = o.on_dump_done(&DumpReason::Hang { stalled_ms: 2_000 }, error.as_ref().map(|e| e as _), t0);
            assert_eq!(shape(&out), vec![finish(), Action::InjectNmi(NmiTargets::All)]);
            for end in [VmExit::PowerOff, VmExit::HostShutdown, VmExit::Reset(ResetSource::AcpiResetRegister)] {
                let want = match error {
                    None => end.clone(),
                    Some(e) => VmExit::CrashCollectionFailed { trigger: "guest_hang".into(), reason: e.into() },
                };
                assert_eq!(o.on_vm_exit(end, t0), vec![Action::Stop(want)]);
            }
            // A stop from outside keeps its own code.
            assert_eq!(o.final_exit(VmExit::Stopped { signal: 15 }), VmExit::Stopped { signal: 15 });
        }
    }

    #[test]
    fn exits_without_a_crash_pass_through_and_user_stops_finish_the_report() {
        let t0 = Instant::now();
        let mut o = Orchestrator::new(Policy::default());
        assert_eq!(o.on_vm_exit(VmExit::PowerOff, t0), vec![Action::Stop(VmExit::PowerOff)]);
        assert!(o.signal(&pv(CRASH_LOADED), t0).is_empty(), "the boot has ended");
        let mut o = Orchestrator::new(Policy::default());
        o.signal(&pv(CRASH_LOADED), t0);
        let out = shape(&o.on_vm_exit(VmExit::Stopped { signal: 15 }, t0));
        assert_eq!(out, vec![finish(), Action::Stop(VmExit::Stopped { signal: 15 })]);
        let o = Orchestrator::new(Policy::default());
        assert_eq!(o.final_exit(VmExit::PowerOff), VmExit::PowerOff);
    }

    #[test]
    fn operator_commands() {
        let t0 = Instant::now();
        let mut o = Orchestrator::new(Policy::default());
        let op_dump = Action::HostDump { reason: DumpReason::Operator };
        // The resume follows once the vmcore is written.
        assert_eq!(
            o.on_command(Command::Dump(DumpOverride::default()), false, t0).unwrap(),
            vec![Action::Pause, op_dump.clone()]
        );
        assert_eq!(o.on_dump_done(&DumpReason::Operator, None, t0), vec![Action::Resume], "not a crash");
        assert_eq!(
            o.on_command(Command::Dump(DumpOverride::default()), true, t0).unwrap(),
            vec![Action::Pause, op_dump]
        );
        assert!(o.on_dump_done(&DumpReason::Operator, None, t0).is_empty(), "paused before: paused after");
        let live = DumpOverride { live: true, ..Default::default() };
        assert_eq!(
            o.on_command(Command::Dump(live), false, t0).unwrap(),
            vec![Action::HostDump { reason: DumpReason::Operator }]
        );
        assert_eq!(o.crashes(), 0);
        assert!(o.on_dump_done(&DumpReason::Operator, None, t0).is_empty());
        assert_eq!(o.on_command(Command::Reset, false, t0).unwrap(), vec![Action::Reset]);
        o.on_reset();
        assert_eq!(o.on_command(Command::Shutdown, false, t0).unwrap(), vec![Action::Stop(VmExit::HostShutdown)]);
        o.on_reset();
        // An injected NMI gets the blame for the crash that follows.
        assert_eq!(
            o.on_command(Command::InjectNmi(NmiTargets::One(1)), false, t0).unwrap(),
            vec![Action::InjectNmi(NmiTargets::One(1))]
        );
        assert_eq!(o.signal(&pv(CRASH_LOADED), t0)[0], begin("nmi_injection"));
        // A shutdown while the guest's kdump runs takes a host-side vmcore first.
        assert_eq!(shape(&o.on_command(Command::Shutdown, false, t0).unwrap()), dump());
    }

    /// A crash within NMI_BLAME of crashvmm's NMI (the operator's, or the one that broke a
    /// hang) is blamed on it; a later one is the guest's own.
    #[test]
    fn an_injected_nmi_is_blamed_for_a_crash_within_nmi_blame_only() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        for (after, want) in [(secs(59), "nmi_injection"), (NMI_BLAME, "nmi_injection"), (secs(61), "pvpanic")] {
            let mut o = Orchestrator::new(Policy::default());
            o.on_command(Command::InjectNmi(NmiTargets::All), false, t0).unwrap();
            assert_eq!(o.signal(&pv(CRASH_LOADED), t0 + after)[0], begin(want), "{after:?} after the NMI");
        }
        for (after, want) in [(secs(59), "guest_hang"), (secs(61), "pvpanic")] {
            let mut o = Orchestrator::new(Policy::default());
            assert_eq!(o.signal(&CrashSignal::GuestHang { stalled_ms: 1 }, t0), [Action::InjectNmi(NmiTargets::All)]);
            assert_eq!(o.signal(&pv(CRASH_LOADED), t0 + after)[0], begin(want), "{after:?} after the hang's NMI");
        }
    }

    /// One input of a scripted run, as the executor feeds them.
    enum Step {
        Signal(CrashSignal),
        /// The operator's command, the vCPUs running.
        Command(Command),
        /// The vmcore being written is done.
        DumpDone,
        /// The main loop's timer, this long after the start.
        Timer(Duration),
    }

    /// Feed `steps` (all at `t0` but the timers), each dump handed out started at once, as the
    /// executor does; every action handed out, in order (reasons and outcomes shaped).
    fn script(p: Policy, steps: Vec<Step>, t0: Instant) -> Vec<Action> {
        let mut o = Orchestrator::new(p);
        let mut dumping: Option<DumpReason> = None;
        let mut out = Vec::new();
        for step in steps {
            let got = match step {
                Step::Signal(s) => o.on_signal(timed(&s), t0),
                Step::Command(c) => o.on_command(c, false, t0).unwrap_or_else(|busy| panic!("refused: {busy:?}")),
                Step::DumpDone => o.on_dump_done(&dumping.take().expect("a dump in progress"), None, t0),
                Step::Timer(after) => o.on_timer(t0 + after),
            };
            let dumps = got.iter().filter(|a| matches!(a, Action::HostDump { .. })).count();
            if let Some(Action::HostDump { reason }) = got.last() {
                assert!(dumping.is_none(), "one dump at a time: {got:?}");
                o.on_dump_started(reason, reason.is_live(), t0);
                dumping = Some(reason.clone());
            } else {
                assert_eq!(dumps, 0, "a dump is the last action handed out: {got:?}");
            }
            out.extend(got);
        }
        shape(&out)
    }

    /// What waits (for a dump, for an UNLOAD's answer) is handed out in one order, at one point:
    /// the actions after the dump, what its outcome brings, then the signals that came meanwhile
    /// (until one starts another dump, or the boot ends).
    #[test]
    fn deferred_work_is_handed_out_in_order() {
        use AfterCrash as A;
        use HostDump as H;
        use OnPanic as P;
        use Step::*;
        let t0 = Instant::now();
        let r = |s: CrashSignal| rec(&s, t0);
        let hd = Action::HostDump { reason: ANY_REASON };
        let op = || Command(super::Command::Dump(DumpOverride::default()));
        let tf = CrashSignal::TripleFault { vcpu: 0 };
        let unload = CrashSignal::UnloadRequested { vcpu: 1, answered: true };
        let answered = CrashSignal::UnloadCompleted { vcpu: 0, latency_us: 1 };
        let hang = CrashSignal::GuestHang { stalled_ms: 1 };
        let base = policy(P::Auto, A::Exit, H::Fallback);
        let cases: Vec<(&str, Policy, Vec<Step>, Vec<Action>)> = vec![
            (
                "a panic during the operator's dump is decided after it, after the resume",
                base.clone(),
                vec![op(), Signal(pv(PANICKED)), DumpDone],
                vec![Action::Pause, hd.clone(), Action::Resume, r(pv(PANICKED)), begin("pvpanic")],
            ),
            (
                "the crash's dump ends the boot: what waited for it is dropped",
                base.clone(),
                vec![Signal(pv(PANICKED)), Signal(hv()), Signal(tf.clone()), DumpDone, Signal(pv(CRASH_LOADED))],
                vec![
                    r(pv(PANICKED)),
                    begin("pvpanic"),
                    r(hv()),
                    Action::Pause,
                    hd.clone(),
                    finish(),
                    stop_panicked("pvpanic"),
                ],
            ),
            (
                "the crash's dump, then a reset: what waited for it is dropped",
                policy(P::Auto, A::Reset, H::Fallback),
                vec![Signal(pv(PANICKED)), Signal(hv()), Signal(tf.clone()), DumpDone],
                vec![r(pv(PANICKED)), begin("pvpanic"), r(hv()), Action::Pause, hd.clone(), finish(), Action::Reset],
            ),
            (
                "UNLOAD in flight and the operator's dump: the crash's pause waits for the UNLOAD's \
                 answer, which waits for the dump",
                base.clone(),
                vec![
                    Signal(pv(PANICKED)),
                    Signal(unload.clone()),
                    Signal(hv()),
                    op(),
                    Signal(answered.clone()),
                    DumpDone,
                    DumpDone,
                ],
                vec![
                    r(pv(PANICKED)),
                    begin("pvpanic"),
                    r(unload),
                    r(hv()),
                    Action::Pause,
                    hd.clone(),
                    Action::Resume,
                    r(answered),
                    Action::Pause,
                    hd.clone(),
                    finish(),
                    stop_panicked("pvpanic"),
                ],
            ),
            (
                "the operator's dump while the guest's kdump runs: the kdump timeout waits for it",
                base.clone(),
                vec![
                    Signal(pv(CRASH_LOADED)),
                    op(),
                    Timer(Duration::from_secs(61)),
                    DumpDone,
                    Timer(Duration::from_secs(61)),
                    DumpDone,
                ],
                vec![
                    r(pv(CRASH_LOADED)),
                    begin("pvpanic"),
                    Action::Pause,
                    hd.clone(),
                    Action::Resume,
                    Action::Pause,
                    hd.clone(),
                    finish(),
                    stop_panicked("pvpanic"),
                ],
            ),
            (
                "signals that waited are decided in order; one that starts a dump makes the rest wait \
                 for that one",
                policy(P::Auto, A::Pause, H::Fallback),
                vec![op(), Signal(tf.clone()), Signal(pv(PANICKED)), DumpDone, DumpDone],
                vec![
                    Action::Pause,
                    hd.clone(),
                    Action::Resume,
                    r(tf),
                    begin("triple_fault"),
                    Action::Pause,
                    hd.clone(),
                    finish(),
                    Action::Pause,
                    Action::StayPaused,
                    r(pv(PANICKED)),
                ],
            ),
            (
                "the kexec snapshot (live): the crash kernel's start is decided after it, after the resume",
                policy(P::Auto, A::Exit, H::Always),
                vec![Signal(pv(CRASH_LOADED)), Signal(kexec()), Signal(started()), DumpDone],
                vec![r(pv(CRASH_LOADED)), begin("pvpanic"), r(kexec()), hd.clone(), Action::Resume, r(started())],
            ),
            (
                "a hang's live dump, then the NMI; a panic meanwhile is decided after, blamed on the hang",
                Policy { on_hang: OnHang::HOST_DUMP_NMI, ..base.clone() },
                vec![Signal(hang.clone()), Signal(pv(CRASH_LOADED)), DumpDone],
                vec![
                    r(hang),
                    begin("guest_hang"),
                    hd.clone(),
                    finish(),
                    Action::InjectNmi(NmiTargets::All),
                    r(pv(CRASH_LOADED)),
                    begin("guest_hang"),
                ],
            ),
            (
                "a shutdown while the guest's kdump runs: its dump first, then the end",
                base,
                vec![Signal(pv(CRASH_LOADED)), Command(super::Command::Shutdown), DumpDone],
                vec![r(pv(CRASH_LOADED)), begin("pvpanic"), Action::Pause, hd, finish(), stop_panicked("pvpanic")],
            ),
        ];
        for (what, p, steps, want) in cases {
            assert_eq!(script(p, steps, t0), want, "{what}");
        }
    }
}
