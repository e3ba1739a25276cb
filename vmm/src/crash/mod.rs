//! Crash handling: every way a guest dies becomes one [`CrashSignal`]; the [`Orchestrator`]
//! (a pure state machine, driven by the main thread) decides what happens next.
//!
//! Devices and vCPU threads record what they saw in the event log where they see it (so the
//! log keeps the guest's order) and send the signal here; the orchestrator only decides.

pub mod vmcore;

use std::time::{Duration, Instant};

use crate::exit::VmExit;

/// Everything that tells crashvmm the guest is dying or about to start its crash kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashSignal {
    /// The guest wrote `bits` to pvpanic.
    PvPanic { vcpu: u32, bits: u8 },
    /// The guest wrote CRASH_CTL with CRASH_NOTIFY.
    HvCrash {
        vcpu: u32,
        params: [u64; 5],
        message: Option<String>,
    },
    /// The crashed kernel tore Hyper-V down: kexec into the crash kernel is imminent.
    GuestKexec { vcpu: u32 },
    /// After a `GuestKexec`, a kernel (the crash kernel) set up Hyper-V again.
    CrashKernelStarted { vcpu: u32 },
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u32 },
}

/// What the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// End the VM.
    Stop(VmExit),
}

/// How long to wait after a pvpanic PANICKED for the Hyper-V crash report (which Linux sends
/// from a later panic notifier and the kmsg dumper) before ending the VM anyway.
pub const HV_CRASH_GRACE: Duration = Duration::from_secs(5);

/// The crash state machine.
#[derive(Debug)]
pub struct Orchestrator {
    /// The guest can report through the Hyper-V crash MSRs.
    hyperv: bool,
    /// First panic signal seen, as a trigger name.
    panicked: Option<&'static str>,
    /// The guest announced its own crash kernel (pvpanic CRASH_LOADED).
    crash_loaded: bool,
    deadline: Option<Instant>,
}

impl Orchestrator {
    pub fn new(hyperv: bool) -> Self {
        Self {
            hyperv,
            panicked: None,
            crash_loaded: false,
            deadline: None,
        }
    }

    /// When [`on_timer`](Self::on_timer) wants to run next.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the guest has panicked.
    pub fn panicked(&self) -> bool {
        self.panicked.is_some()
    }

    fn panic_exit(&self, trigger: &'static str) -> Action {
        Action::Stop(VmExit::GuestPanicked {
            trigger: self.panicked.unwrap_or(trigger).to_string(),
        })
    }

    pub fn on_signal(&mut self, signal: &CrashSignal, now: Instant) -> Vec<Action> {
        match *signal {
            CrashSignal::PvPanic { bits, .. } => {
                use devices::pvpanic::{PVPANIC_CRASH_LOADED, PVPANIC_PANICKED};
                if bits & PVPANIC_CRASH_LOADED != 0 {
                    // The guest runs its own kdump: record, do not disturb it.
                    self.crash_loaded = true;
                    self.panicked.get_or_insert("pvpanic");
                    return vec![];
                }
                if bits & PVPANIC_PANICKED == 0 {
                    return vec![];
                }
                self.panicked.get_or_insert("pvpanic");
                if self.hyperv {
                    // The Hyper-V report follows from later panic notifiers: wait for it.
                    self.deadline.get_or_insert(now + HV_CRASH_GRACE);
                    vec![]
                } else {
                    vec![self.panic_exit("pvpanic")]
                }
            }
            CrashSignal::HvCrash { .. } => {
                self.panicked.get_or_insert("hv_crash");
                if self.crash_loaded {
                    vec![]
                } else {
                    vec![self.panic_exit("hv_crash")]
                }
            }
            CrashSignal::GuestKexec { .. } | CrashSignal::CrashKernelStarted { .. } => vec![],
            CrashSignal::TripleFault { vcpu } => match self.panicked {
                Some(_) => vec![self.panic_exit("triple_fault")],
                None => vec![Action::Stop(VmExit::TripleFault { vcpu })],
            },
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.deadline {
            Some(d) if now >= d => {
                self.deadline = None;
                vec![self.panic_exit("pvpanic")]
            }
            _ => vec![],
        }
    }

    /// The VM ended for `exit`. A guest that panicked stays a panicked guest whatever it did
    /// next: reset itself (`panic=N`), triple-faulted, or powered off after its kdump.
    pub fn final_exit(&self, exit: VmExit) -> VmExit {
        match (&exit, self.panicked) {
            (VmExit::Reset(_) | VmExit::TripleFault { .. } | VmExit::PowerOff, Some(trigger)) => {
                VmExit::GuestPanicked {
                    trigger: trigger.to_string(),
                }
            }
            _ => exit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::ResetSource;

    fn stop_panicked(trigger: &str) -> Vec<Action> {
        vec![Action::Stop(VmExit::GuestPanicked {
            trigger: trigger.into(),
        })]
    }

    #[test]
    fn table() {
        let t0 = Instant::now();
        let pv = |bits| CrashSignal::PvPanic { vcpu: 0, bits };
        let hv = CrashSignal::HvCrash {
            vcpu: 1,
            params: [0; 5],
            message: None,
        };
        // (hyperv, signals, expected actions after the last signal)
        let cases: Vec<(bool, Vec<CrashSignal>, Vec<Action>)> = vec![
            (false, vec![pv(1)], stop_panicked("pvpanic")),
            (true, vec![pv(1)], vec![]),
            (true, vec![pv(1), hv.clone()], stop_panicked("pvpanic")),
            (true, vec![hv.clone()], stop_panicked("hv_crash")),
            (true, vec![pv(2)], vec![]),
            (true, vec![pv(2), hv.clone()], vec![]),
            (true, vec![pv(4)], vec![]),
            (true, vec![pv(0)], vec![]),
            (
                true,
                vec![CrashSignal::TripleFault { vcpu: 3 }],
                vec![Action::Stop(VmExit::TripleFault { vcpu: 3 })],
            ),
            (
                true,
                vec![pv(1), CrashSignal::TripleFault { vcpu: 0 }],
                stop_panicked("pvpanic"),
            ),
            (true, vec![CrashSignal::GuestKexec { vcpu: 0 }], vec![]),
        ];
        for (hyperv, signals, expected) in cases {
            let mut o = Orchestrator::new(hyperv);
            let mut last = vec![];
            for s in &signals {
                last = o.on_signal(s, t0);
            }
            assert_eq!(last, expected, "hyperv={hyperv} signals={signals:?}");
        }
    }

    #[test]
    fn pvpanic_alone_stops_after_the_grace_period() {
        let t0 = Instant::now();
        let mut o = Orchestrator::new(true);
        assert!(o
            .on_signal(&CrashSignal::PvPanic { vcpu: 0, bits: 1 }, t0)
            .is_empty());
        assert_eq!(o.deadline(), Some(t0 + HV_CRASH_GRACE));
        assert!(o.on_timer(t0 + HV_CRASH_GRACE / 2).is_empty());
        assert_eq!(o.on_timer(t0 + HV_CRASH_GRACE), stop_panicked("pvpanic"));
        assert_eq!(o.deadline(), None);
    }

    #[test]
    fn reset_after_panic_is_a_panic() {
        let mut o = Orchestrator::new(true);
        let reset = VmExit::Reset(ResetSource::AcpiResetRegister);
        assert_eq!(o.final_exit(reset.clone()), reset);
        o.on_signal(
            &CrashSignal::HvCrash {
                vcpu: 0,
                params: [0; 5],
                message: None,
            },
            Instant::now(),
        );
        assert_eq!(
            o.final_exit(reset),
            VmExit::GuestPanicked {
                trigger: "hv_crash".into()
            }
        );
        assert_eq!(
            o.final_exit(VmExit::PowerOff),
            VmExit::GuestPanicked {
                trigger: "hv_crash".into()
            }
        );
        assert_eq!(
            o.final_exit(VmExit::Stopped { signal: 15 }),
            VmExit::Stopped { signal: 15 }
        );
        assert_eq!(
            Orchestrator::new(true).final_exit(VmExit::PowerOff),
            VmExit::PowerOff
        );
    }
}
