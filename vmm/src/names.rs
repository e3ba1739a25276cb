//! The closed sets that both crash handling and the event log name: what triggered a crash,
//! who wrote a vmcore, how a live dump took its snapshot. `events` sits below `crash` (crash
//! handling records events), so these live here, below both; `crash` re-exports them
//! (`crash::Trigger`, `crash::VmcoreSource`, `crash::live::SnapshotMethod`). Each one's serde
//! name is its `as_str`, the exact text `report.json` and `events.jsonl` carry.

use serde::Serialize;

/// What set a crash off and who wrote a vmcore: the report's own vocabulary (`crash_report`),
/// so that `report.json`, the event log and crash handling say the same words.
pub use crash_report::{Trigger, VmcoreSource};

/// `--live-dump-snapshot`: how a live dump takes its copy-on-write snapshot (`snapshot` in
/// `vmcore_written` and `dump_started`: `uffd` or `fork`, the method it used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMethod {
    /// userfaultfd write protection where the kernel and permissions allow it, else fork.
    #[default]
    Auto,
    /// userfaultfd write protection (Linux 6.7+; CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1
    /// or access to /dev/userfaultfd); a live dump fails without it.
    Uffd,
    /// fork(): the child process's memory is the snapshot.
    Fork,
}

impl SnapshotMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMethod::Auto => "auto",
            SnapshotMethod::Uffd => "uffd",
            SnapshotMethod::Fork => "fork",
        }
    }
}

/// Why a crash kept no vmcore though one was due (`vmcore_skipped`'s `reason`, the
/// `crashvmm_vmcores_skipped_total` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// `--crash-dir-max` leaves too little room, even without the delivered crash directories.
    DiskBudget,
    /// `--vmcores-per-signature` vmcores of the crash's signature exist already.
    Duplicate,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::DiskBudget => "disk_budget",
            SkipReason::Duplicate => "duplicate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value's serde name is its `as_str` (what the log carried when these were strings).
    #[test]
    fn serde_names_are_as_str() {
        for t in [
            Trigger::Pvpanic,
            Trigger::HvCrash,
            Trigger::TripleFault,
            Trigger::KvmFailure,
            Trigger::GuestHang,
            Trigger::NmiInjection,
            Trigger::CrashKernel,
            Trigger::Operator,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
            assert_eq!(t.to_string(), t.as_str());
        }
        for s in [VmcoreSource::Host, VmcoreSource::Guest] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for m in [SnapshotMethod::Auto, SnapshotMethod::Uffd, SnapshotMethod::Fork] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
            // The command line's name for it too.
            assert_eq!(clap::ValueEnum::to_possible_value(&m).unwrap().get_name(), m.as_str());
        }
    }
}
