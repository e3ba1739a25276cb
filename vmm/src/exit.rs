//! Why a VM ended, and the process exit code that says so.

use devices::ResetSource;

/// Documented process exit codes of `crashvmm run` (see README.md).
pub mod code {
    /// The guest powered off (ACPI S5).
    pub const POWER_OFF: i32 = 0;
    /// crashvmm failed: bad input, setup or KVM error.
    pub const ERROR: i32 = 1;
    /// Command-line usage error (unknown option, missing value).
    pub const USAGE: i32 = 2;
    /// The guest asked for a reset (i8042 0xFE or the ACPI reset register).
    pub const RESET: i32 = 3;
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    pub const TRIPLE_FAULT: i32 = 4;
    /// The guest panicked (pvpanic or the Hyper-V crash MSRs) and ran no crash kernel.
    pub const GUEST_PANICKED: i32 = 5;
    /// KVM could not run the guest: internal error, emulation failure, failed VM entry.
    pub const KVM_FAILURE: i32 = 6;
    /// The guest panicked and its vmcore could not be collected (the report says why).
    pub const CRASH_COLLECTION_FAILED: i32 = 7;
    /// Stopped by a signal: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    pub const SIGNAL_BASE: i32 = 128;
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    PowerOff,
    Reset(ResetSource),
    TripleFault {
        vcpu: u32,
    },
    KvmFailure {
        vcpu: u32,
        detail: String,
    },
    /// The user stopped crashvmm (SIGINT, SIGTERM, or the console escape).
    Stopped {
        signal: i32,
    },
    /// The guest panicked (and is not running its own crash kernel); `trigger` names the
    /// first signal that said so.
    GuestPanicked {
        trigger: String,
    },
    /// The guest panicked and crashvmm could not collect its vmcore (for example the disk of
    /// the crash directory is full).
    CrashCollectionFailed {
        trigger: String,
        reason: String,
    },
    /// Stopped through the control socket (`shutdown`).
    HostShutdown,
    /// crashvmm itself failed while the VM ran.
    Error(String),
}

impl VmExit {
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff | VmExit::HostShutdown => code::POWER_OFF,
            VmExit::Reset(_) => code::RESET,
            VmExit::TripleFault { .. } => code::TRIPLE_FAULT,
            VmExit::KvmFailure { .. } => code::KVM_FAILURE,
            VmExit::Stopped { signal } => code::SIGNAL_BASE + signal,
            VmExit::GuestPanicked { .. } => code::GUEST_PANICKED,
            VmExit::CrashCollectionFailed { .. } => code::CRASH_COLLECTION_FAILED,
            VmExit::Error(_) => code::ERROR,
        }
    }

    /// Stable short reason for the event log.
    pub fn reason(&self) -> String {
        match self {
            VmExit::PowerOff => "poweroff".into(),
            VmExit::HostShutdown => "shutdown (control socket)".into(),
            VmExit::Reset(src) => format!("reset ({})", src.as_str()),
            VmExit::TripleFault { vcpu } => format!("triple_fault (vcpu {vcpu})"),
            VmExit::KvmFailure { vcpu, detail } => format!("kvm_failure (vcpu {vcpu}): {detail}"),
            VmExit::Stopped { signal } => format!("stopped (signal {signal})"),
            VmExit::GuestPanicked { trigger } => format!("guest_panicked ({trigger})"),
            VmExit::CrashCollectionFailed { trigger, reason } => {
                format!("crash_collection_failed ({trigger}): {reason}")
            }
            VmExit::Error(e) => format!("error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let all = [
            VmExit::PowerOff,
            VmExit::Reset(ResetSource::Keyboard),
            VmExit::TripleFault { vcpu: 0 },
            VmExit::KvmFailure { vcpu: 0, detail: String::new() },
            VmExit::Stopped { signal: 15 },
            VmExit::GuestPanicked { trigger: String::new() },
            VmExit::Error(String::new()),
        ];
        let mut codes: Vec<i32> = all.iter().map(VmExit::exit_code).collect();
        codes.push(code::USAGE);
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert_eq!(VmExit::Reset(ResetSource::AcpiResetRegister).exit_code(), code::RESET);
        assert_eq!(VmExit::Stopped { signal: 2 }.exit_code(), 130);
    }
}
