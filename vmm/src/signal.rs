//! Crash signals: everything that tells crashvmm the guest is dying, as the vCPU threads and
//! the watchdog send them to the main thread (`control::SignalQueue`) and the orchestrator
//! decides on them. A leaf: it uses no other module of this crate.

use chrono::{DateTime, Utc};

/// Everything that tells crashvmm the guest is dying, or how its own crash handling goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashSignal {
    /// The guest wrote `bits` to pvpanic.
    PvPanic { vcpu: u32, bits: u8 },
    /// The guest wrote CRASH_CTL with CRASH_NOTIFY.
    HvCrash { vcpu: u32, params: [u64; 5], message: Option<String> },
    /// The crashed kernel tore Hyper-V down: kexec into the crash kernel is imminent.
    GuestKexec { vcpu: u32 },
    /// After a `GuestKexec`, a kernel (the crash kernel) set up Hyper-V again.
    CrashKernelStarted { vcpu: u32 },
    /// The guest's first write to the crash disk in this boot (`vcpu` notified the queue): its
    /// crash kernel began writing a dump. Nothing else writes that disk, so this says a crash
    /// happened even when the crashed kernel gave no notice (kexec before the panic notifiers).
    CrashDiskWritten { vcpu: u32 },
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u32 },
    /// KVM could not run a vCPU (internal error, emulation failure, failed entry).
    KvmFailure { vcpu: u32, detail: String },
    /// The guest sent VMBus UNLOAD; `answered` when crashvmm will answer it.
    UnloadRequested { vcpu: u32, answered: bool },
    /// The UNLOAD_RESPONSE reached the guest, `latency_us` after the UNLOAD.
    UnloadCompleted { vcpu: u32, latency_us: u64 },
    /// crashvmm injected an NMI (control socket): a crash that follows soon is its doing.
    /// Recorded by the executor when it carries out [`Command::InjectNmi`].
    NmiInjected,
    /// The watchdog saw no progress for `stalled_ms`.
    GuestHang { stalled_ms: u64 },
}

impl CrashSignal {
    /// What makes two signals the same for the signal queue's bound on repeats (`control.rs`):
    /// the kind, and pvpanic's byte or the vCPU that triple-faulted.
    pub fn repeat_key(&self) -> (u8, u64) {
        match self {
            CrashSignal::PvPanic { bits, .. } => (0, u64::from(*bits)),
            CrashSignal::HvCrash { .. } => (1, 0),
            CrashSignal::GuestKexec { .. } => (2, 0),
            CrashSignal::CrashKernelStarted { .. } => (3, 0),
            CrashSignal::TripleFault { vcpu } => (4, u64::from(*vcpu)),
            CrashSignal::KvmFailure { vcpu, .. } => (5, u64::from(*vcpu)),
            CrashSignal::UnloadRequested { .. } => (6, 0),
            CrashSignal::UnloadCompleted { .. } => (7, 0),
            CrashSignal::NmiInjected => (8, 0),
            CrashSignal::GuestHang { .. } => (9, 0),
            CrashSignal::CrashDiskWritten { .. } => (10, 0),
        }
    }
}

/// A signal with when it was observed (the vCPU thread's clock for the guest's signals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedSignal {
    pub at: DateTime<Utc>,
    pub signal: CrashSignal,
}
