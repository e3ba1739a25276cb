//! `analysis`: what crashvmm read out of the crashed guest's memory (crate `crash-analysis`):
//! the kernel's identity, the panic, every vCPU's symbolized stack, the blocked tasks, and what
//! could not be read and why. The kernel log itself is `dmesg.txt` beside the report.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::lenient;

/// The analysis of one crash.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Analysis {
    #[serde(default, deserialize_with = "lenient")]
    pub identity: Option<Identity>,
    #[serde(default, deserialize_with = "lenient")]
    pub panic: Option<Panic>,
    /// Every vCPU's stack, by CPU number.
    #[serde(default, deserialize_with = "lenient")]
    pub cpus: Vec<CpuStack>,
    /// Tasks in uninterruptible sleep (D state), with their stacks (needs the kernel's BTF).
    #[serde(default, deserialize_with = "lenient")]
    pub blocked_tasks: Vec<Task>,
    /// Records read from the kernel log (`dmesg.txt`).
    #[serde(default, deserialize_with = "lenient")]
    pub log_records: u64,
    /// What could not be read, and why.
    #[serde(default, deserialize_with = "lenient")]
    pub unread: Vec<Unread>,
    /// How long the analysis took, in microseconds.
    #[serde(default, deserialize_with = "lenient")]
    pub duration_us: u64,
}

/// The crashed kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Identity {
    /// `uname -r`.
    pub release: Option<String>,
    /// `uname -v`.
    pub version: Option<String>,
    pub hostname: Option<String>,
    pub machine: Option<String>,
    /// `tainted_mask`'s flags as the kernel prints them (`G      D W`), and the mask.
    pub taint: Option<String>,
    pub tainted_mask: Option<u64>,
    /// Seconds since boot at the crash (the last log record's time, or the clock).
    pub uptime_s: Option<f64>,
}

/// The panic, from the kernel log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Panic {
    /// `Kernel panic - not syncing: ...`'s message (or the oops line where the log ends in one).
    pub message: Option<String>,
    /// The first line of the report that led to it (`BUG: ...`, `Oops: ...`), when there is one.
    pub cause: Option<String>,
    pub cpu: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The log time of the panic line, seconds since boot.
    pub time_s: Option<f64>,
}

/// One vCPU's stack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct CpuStack {
    pub cpu: u32,
    /// Where its registers came from: `crash_notes` (saved by the kernel for its crash kernel,
    /// on the way to it or when it stopped the other CPUs), `vcpu_at_report` (read by crashvmm
    /// when this vCPU reported the crash: pvpanic, the Hyper-V crash MSRs) or `vcpu` (read when
    /// crashvmm stopped it).
    pub registers: String,
    /// The instruction pointer, hex.
    pub ip: String,
    /// `function+0xoff/0xsize [module]` of the instruction pointer.
    pub symbol: Option<String>,
    /// The task running on it, where known.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The function it was running: below the NMI or exception that stopped it (a hang's
    /// spinning function), else its innermost frame's.
    pub running: Option<String>,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// How the frames were found: `orc`, `frame-pointer`, `scan` (every kernel text address on
    /// the stack, unreliable ones marked), or `none` (user mode, or nothing readable).
    pub unwinder: String,
    pub note: Option<String>,
}

/// One frame of a stack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Frame {
    /// The return (or instruction) address, hex.
    pub address: String,
    /// `function+0xoff/0xsize`.
    pub symbol: Option<String>,
    pub function: Option<String>,
    pub module: Option<String>,
    /// False for a stack scan's guess (the kernel prints it with `?`).
    pub reliable: bool,
    /// The stack it is on: `task`, `irq`, `nmi`, `exception`, ... where known.
    pub stack: Option<String>,
    /// Where on the stack its return address was read, hex (what `crash`'s `bt` shows in
    /// brackets); none for an instruction pointer from registers.
    pub slot: Option<String>,
}

/// A task, for hangs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Task {
    pub pid: u32,
    pub comm: String,
    /// `D`, `R`, `S`, ... as `ps` shows it.
    pub state: String,
    pub frames: Vec<Frame>,
}

/// A part of the analysis that could not be done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Unread {
    /// `kernel log`, `kallsyms`, `orc`, `cpu 1 stack`, ...
    pub what: String,
    pub why: String,
}
