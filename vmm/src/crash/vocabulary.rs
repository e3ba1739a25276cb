//! The closed sets crash handling talks in: what triggered a crash, why a vmcore is taken, how
//! a crash ended, where its vmcore came from, what the operator asked for. Each is an enum;
//! its `Display` (or serde name) is the exact text `report.json` and `events.jsonl` carry.
//! `Trigger` and `VmcoreSource`, which events carry too, are `crate::names`'s (re-exported).

use std::fmt;
use std::time::Duration;

pub use crate::names::{Trigger, VmcoreSource};

/// Why crashvmm collects a crash from guest memory itself (the host-side vmcore's `reason`,
/// and the first half of an outcome when no vmcore is taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpReason {
    /// pvpanic CRASH_LOADED with `--on-panic ignore`.
    PvpanicCrashLoaded,
    /// pvpanic PANICKED on a guest without Hyper-V.
    PvpanicPanicked,
    /// The Hyper-V crash report after a PANICKED.
    HvCrashReport,
    /// The crashed kernel kexec'd and the policy does not let its kdump run.
    GuestKexec,
    /// The crash kernel began writing the crash disk, the crashed kernel having given no
    /// notice (with `--on-panic ignore`).
    CrashDiskWritten,
    /// A crash of its own (triple fault, KVM failure) with no crash being handled.
    Crash(super::Trigger),
    /// A PANICKED, and no Hyper-V report within the grace time.
    NoHvReport,
    /// A Hyper-V report, and no kexec within the grace time.
    NoKexec,
    /// The guest panicked, then the VM ended (`VmExit::reason`).
    ExitAfterPanic(String),
    /// `--on-hang host-dump[,nmi|,reset]`: a live dump of the hung guest.
    Hang { stalled_ms: u64 },
    /// The crash kernel panicked too.
    CrashKernelPanicked,
    /// A triple fault or KVM failure while the guest's kdump ran.
    DuringKdump(super::Trigger),
    /// The guest's kdump did not finish within `--kdump-timeout`.
    KdumpTimeout(Duration),
    /// The guest's kdump finished, but its dump could not be collected.
    KdumpNoDump(String),
    /// The VM ended (`VmExit::reason`) while the guest's kdump ran.
    KdumpEnded(String),
    /// `--host-dump always`: the snapshot at kexec, before the crash kernel runs.
    KexecSnapshot,
    /// `dump` on the control socket: not a crash.
    Operator,
}

impl DumpReason {
    /// Whether this dump belongs to a crash (its crash directory) or is the operator's.
    pub fn is_crash(&self) -> bool {
        *self != DumpReason::Operator
    }

    /// Whether the guest goes on while this crash's dump is written (a live dump): the
    /// snapshot at kexec, so that the crash kernel starts at once, and a hang's, so that the
    /// NMI or reset `--on-hang` names can follow (and a guest left running is not stopped).
    pub fn is_live(&self) -> bool {
        matches!(self, DumpReason::KexecSnapshot | DumpReason::Hang { .. })
    }
}

/// `stalled_ms` as the report words it.
fn stalled(stalled_ms: u64) -> String {
    format!("the guest made no progress for {:.1} s", stalled_ms as f64 / 1000.0)
}

impl fmt::Display for DumpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpReason::PvpanicCrashLoaded => f.write_str("pvpanic crash-loaded"),
            DumpReason::PvpanicPanicked => f.write_str("pvpanic panicked"),
            DumpReason::HvCrashReport => f.write_str("Hyper-V crash report"),
            DumpReason::GuestKexec => f.write_str("guest kexec"),
            DumpReason::CrashDiskWritten => f.write_str("the crash kernel began writing the crash disk"),
            DumpReason::Crash(t) => write!(f, "{t}"),
            DumpReason::NoHvReport => f.write_str("pvpanic; no Hyper-V report followed"),
            DumpReason::NoKexec => f.write_str("no kexec followed the crash report"),
            DumpReason::ExitAfterPanic(exit) => write!(f, "guest panicked, then {exit}"),
            DumpReason::Hang { stalled_ms } => f.write_str(&stalled(*stalled_ms)),
            DumpReason::CrashKernelPanicked => f.write_str("the crash kernel panicked"),
            DumpReason::DuringKdump(t) => write!(f, "{t} during kdump"),
            DumpReason::KdumpTimeout(d) => {
                write!(f, "kdump did not finish within --kdump-timeout {} s", d.as_secs_f64())
            }
            DumpReason::KdumpNoDump(e) => write!(f, "the guest's kdump left no usable dump: {e}"),
            DumpReason::KdumpEnded(exit) => write!(f, "kdump ended with {exit}"),
            DumpReason::KexecSnapshot => f.write_str("snapshot at guest_kexec (--host-dump always)"),
            DumpReason::Operator => f.write_str("requested on the control socket"),
        }
    }
}

/// How a crash's handling ended (`outcome` in `report.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to dump with (`--on-panic kdump` without a kdump, or no host dump allowed).
    NoVmcore(DumpReason),
    /// The guest's kdump did not deliver and `--host-dump never`.
    NoVmcoreHostDumpNever(DumpReason),
    /// `--on-panic pause`.
    Paused(DumpReason),
    /// `--on-panic ignore`.
    Ignored(DumpReason),
    /// `--on-hang reset`.
    HangReset {
        stalled_ms: u64,
    },
    /// `--on-hang host-dump[,nmi|,reset]`: the hung guest's live vmcore was written (or not:
    /// `error`), then `then` followed (`None`: the guest runs on).
    HangDumped {
        stalled_ms: u64,
        error: Option<String>,
        then: Option<super::HangAction>,
    },
    HostVmcoreWritten,
    HostVmcoreFailed(String),
    /// No vmcore kept, on purpose (`--crash-dir-max`, `--vmcores-per-signature`): why.
    VmcoreSkipped(String),
    /// The guest's kdump ran; its dump was taken from the crash disk.
    KdumpCollected,
    /// The guest's kdump ran and powered off, with no crash disk to take a dump from.
    KdumpNoCrashDisk,
    /// crashvmm was stopped, or failed, during the crash (`VmExit::reason`).
    Interrupted(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::NoVmcore(r) => write!(f, "{r}; no vmcore taken"),
            Outcome::NoVmcoreHostDumpNever(r) => write!(f, "{r}; no vmcore taken (--host-dump never)"),
            Outcome::Paused(r) => write!(f, "{r}; VM paused"),
            Outcome::Ignored(r) => write!(f, "{r}; ignored"),
            Outcome::HangReset { stalled_ms } => write!(f, "{}; reset", stalled(*stalled_ms)),
            Outcome::HangDumped { stalled_ms, error, then } => {
                write!(f, "{}; ", stalled(*stalled_ms))?;
                match error {
                    None => f.write_str("live host-side vmcore written")?,
                    Some(e) => write!(f, "live host-side vmcore failed: {e}")?,
                }
                f.write_str(match then {
                    None => "; the guest runs on",
                    Some(super::HangAction::Nmi) => "; NMI injected",
                    Some(super::HangAction::Reset) => "; reset",
                })
            }
            Outcome::HostVmcoreWritten => f.write_str("host-side vmcore written"),
            Outcome::HostVmcoreFailed(e) => write!(f, "host-side vmcore failed: {e}"),
            Outcome::VmcoreSkipped(why) => write!(f, "no vmcore kept: {why}"),
            Outcome::KdumpCollected => {
                f.write_str("the guest's kdump ran; its vmcore was collected from the crash disk")
            }
            Outcome::KdumpNoCrashDisk => {
                f.write_str("the guest's kdump ran and powered off (no crash disk to collect from)")
            }
            Outcome::Interrupted(exit) => write!(f, "interrupted: {exit}"),
        }
    }
}

/// Which vCPUs an NMI goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NmiTargets {
    All,
    One(u32),
}

/// The operator's choice of format and dump level for one dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpOverride {
    pub format: Option<super::vmcore::VmcoreFormat>,
    pub dump_level: Option<u8>,
    /// Pause the guest only for a copy-on-write snapshot, not for the write.
    pub live: bool,
}

/// What the operator asks of the VM (the control socket), as the orchestrator takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    InjectNmi(NmiTargets),
    Pause,
    Resume,
    /// A host-side vmcore of the VM as it is (paused for the write, then as it was before),
    /// in the session's format and dump level unless the operator chose others.
    Dump(DumpOverride),
    /// Boot the guest again.
    Reset,
    /// End the VM now (exit code 0).
    Shutdown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_the_reports_words() {
        assert_eq!(serde_json::to_value(Trigger::NmiInjection).unwrap(), "nmi_injection");
        assert_eq!(Trigger::HvCrash.to_string(), "hv_crash");
        assert_eq!(
            DumpReason::KdumpTimeout(Duration::from_secs(60)).to_string(),
            "kdump did not finish within --kdump-timeout 60 s"
        );
        assert_eq!(DumpReason::DuringKdump(Trigger::TripleFault).to_string(), "triple_fault during kdump");
        assert_eq!(
            Outcome::HangReset { stalled_ms: 30_040 }.to_string(),
            "the guest made no progress for 30.0 s; reset"
        );
        assert_eq!(Outcome::NoVmcore(DumpReason::HvCrashReport).to_string(), "Hyper-V crash report; no vmcore taken");
        assert_eq!(
            Outcome::HangDumped { stalled_ms: 2_000, error: None, then: Some(super::super::HangAction::Nmi) }
                .to_string(),
            "the guest made no progress for 2.0 s; live host-side vmcore written; NMI injected"
        );
        assert_eq!(
            Outcome::HangDumped { stalled_ms: 2_000, error: Some("disk full".into()), then: None }.to_string(),
            "the guest made no progress for 2.0 s; live host-side vmcore failed: disk full; the guest runs on"
        );
        assert!(DumpReason::Hang { stalled_ms: 1 }.is_live() && DumpReason::KexecSnapshot.is_live());
        assert!(!DumpReason::Operator.is_live() && !DumpReason::HvCrashReport.is_live());
    }
}
