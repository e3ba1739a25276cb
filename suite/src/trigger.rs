//! The ways a case makes its kernel die, and what each needs from the guest image and from
//! crashvmm. The guest side is `guest-images/scenarios/case.sh` (`crashtest=case
//! crashtest.trigger=NAME`); its console lines are the constants below.

use serde::{Deserialize, Serialize};

/// A case's trigger, by the name a suite file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// `echo c > /proc/sysrq-trigger` in the guest.
    SysrqC,
    /// `vm.panic_on_oom=1` and a memory hog.
    Oom,
    /// A writer blocked on a frozen file system, `kernel.hung_task_panic=1`.
    HungTask,
    /// The guest sets `kernel.unknown_nmi_panic`; crashvmm injects the NMI.
    NmiUnknown,
    /// crashvmm sends a UART break and `c` on the serial console (`CONFIG_MAGIC_SYSRQ_SERIAL`).
    SerialSysrq,
    /// A NULL write in the crashtest module, `kernel.panic_on_oops=1`.
    Oops,
    /// `BUG()` in the crashtest module.
    Bug,
    /// `WARN()` in the crashtest module, `kernel.panic_on_warn=1`.
    Warn,
    /// The crashtest module spins with preemption off, `kernel.softlockup_panic=1`.
    Softlockup,
    /// Every CPU spins with interrupts off (the crashtest module); crashvmm's watchdog finds
    /// the hang and injects an NMI.
    Hardlockup,
}

/// What crashvmm does for a trigger, beside running the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    /// `crashvmm ctl inject-nmi` once the guest waits for it.
    InjectNmi,
    /// `crashvmm ctl sysrq KEY` once the guest waits for it.
    Sysrq(char),
    /// `--watchdog` with `--on-hang nmi`.
    Watchdog,
}

/// The guest's line right before it does what kills it.
pub const TRIGGERING: &str = "CRASHTEST: case: triggering ";
/// The guest's line when it waits for the host's trigger (`... (NAME)`).
pub const WAITING: &str = "CRASHTEST: case: waiting for the host ";
/// The guest's line when its kernel cannot have the trigger: the case is skipped.
pub const SKIP: &str = "CRASHTEST: case: skip: ";
/// The guest's line when the case could not be set up.
pub const ERROR: &str = "CRASHTEST: case: error: ";

impl Trigger {
    pub const ALL: [Trigger; 10] = [
        Trigger::SysrqC,
        Trigger::Oom,
        Trigger::HungTask,
        Trigger::NmiUnknown,
        Trigger::SerialSysrq,
        Trigger::Oops,
        Trigger::Bug,
        Trigger::Warn,
        Trigger::Softlockup,
        Trigger::Hardlockup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::SysrqC => "sysrq-c",
            Trigger::Oom => "oom",
            Trigger::HungTask => "hung-task",
            Trigger::NmiUnknown => "nmi-unknown",
            Trigger::SerialSysrq => "serial-sysrq",
            Trigger::Oops => "oops",
            Trigger::Bug => "bug",
            Trigger::Warn => "warn",
            Trigger::Softlockup => "softlockup",
            Trigger::Hardlockup => "hardlockup",
        }
    }

    pub fn parse(name: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether it needs the crashtest module (built against the kernel's headers).
    pub fn needs_module(self) -> bool {
        matches!(self, Trigger::Oops | Trigger::Bug | Trigger::Warn | Trigger::Softlockup | Trigger::Hardlockup)
    }

    pub fn host_action(self) -> Option<HostAction> {
        match self {
            Trigger::NmiUnknown => Some(HostAction::InjectNmi),
            Trigger::SerialSysrq => Some(HostAction::Sysrq('c')),
            Trigger::Hardlockup => Some(HostAction::Watchdog),
            _ => None,
        }
    }

    /// The console line that shows the trigger was set off: the guest's own, or, for a
    /// trigger the host sets off, the guest's line that it waits for it.
    pub fn console_marker(self) -> String {
        match self.host_action() {
            Some(HostAction::InjectNmi | HostAction::Sysrq(_)) | Some(HostAction::Watchdog) => {
                format!("{WAITING}({})", self.as_str())
            }
            None => format!("{TRIGGERING}{}", self.as_str()),
        }
    }

    /// What was done, in words, for the case's report.
    pub fn what_is_done(self) -> &'static str {
        match self {
            Trigger::SysrqC => "guest: echo c > /proc/sysrq-trigger",
            Trigger::Oom => "guest: vm.panic_on_oom=1, a memory hog",
            Trigger::HungTask => "guest: hung_task_panic=1, a writer blocked on a frozen file system",
            Trigger::NmiUnknown => "guest: unknown_nmi_panic=1; host: crashvmm ctl inject-nmi",
            Trigger::SerialSysrq => "guest: kernel.sysrq=1; host: crashvmm ctl sysrq c (UART break, then c)",
            Trigger::Oops => "guest: panic_on_oops=1, crashtest.ko action=oops (NULL write)",
            Trigger::Bug => "guest: panic_on_oops=1, crashtest.ko action=bug (BUG())",
            Trigger::Warn => "guest: panic_on_warn=1, crashtest.ko action=warn (WARN())",
            Trigger::Softlockup => "guest: softlockup_panic=1, crashtest.ko action=softlockup",
            Trigger::Hardlockup => {
                "guest: unknown_nmi_panic=1, crashtest.ko action=hardlockup (every CPU, interrupts off); \
                 host: --watchdog finds the hang and injects an NMI"
            }
        }
    }

    /// The `crash_detected` trigger crashvmm must report when the suite names none: the
    /// host's own for the triggers the host sets off through crashvmm's crash handling (also
    /// where the crash is first seen at the crash kernel's write to the crash disk), otherwise
    /// any (which of pvpanic, the Hyper-V crash MSRs or, where the kernel kexecs before its
    /// panic notifiers, the crash kernel's write to the crash disk (`crash_kernel`) is seen
    /// first is the kernel's panic path, which the case records).
    pub fn default_crash_trigger(self) -> Option<crash_report::Trigger> {
        match self {
            Trigger::NmiUnknown => Some(crash_report::Trigger::NmiInjection),
            Trigger::Hardlockup => Some(crash_report::Trigger::GuestHang),
            _ => None,
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_agree_with_serde() {
        for t in Trigger::ALL {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!(Trigger::parse("sysrq_c"), None);
    }

    #[test]
    fn host_triggers_wait_in_the_guest() {
        assert_eq!(Trigger::SerialSysrq.console_marker(), "CRASHTEST: case: waiting for the host (serial-sysrq)");
        assert_eq!(Trigger::Oops.console_marker(), "CRASHTEST: case: triggering oops");
        assert!(Trigger::Hardlockup.needs_module() && !Trigger::SysrqC.needs_module());
    }
}
