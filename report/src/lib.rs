//! `report.json`: what a crash directory says about its crash ([`Report`]), and what an
//! operator's dump says about itself ([`DumpReport`]), as typed values. crashvmm writes them;
//! `crashvmm report`, the upload spool and the fleet view read them back through the same types.
//! Their JSON Schema is `docs/report.schema.json` ([`json_schema`]).
//!
//! The JSON is what crashvmm always wrote (tools and scenario tests read it): the same keys, the
//! same value shapes, the keys of every object in alphabetical order ([`to_vec_pretty`]), plus
//! `schema` ([`SCHEMA_VERSION`]). A key written as `null` (a vmcore not taken, a crash not
//! finished) is always there; one that only some reports have (`vmcore_pending`, a host-side
//! vmcore's `dump_level`) is left out where it does not apply.
//!
//! Reading is lenient, as the readers always were: unknown keys are ignored, and a key that is
//! missing, `null` or of another type than this version writes reads as absent (`None`, or empty)
//! instead of failing the whole report, so a report of an older or newer crashvmm, or a damaged
//! one, still gives whatever it has. Only text that is not JSON, or JSON that is not an object,
//! is an error.

pub mod analysis;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The version of the report's layout, `schema` in `report.json`. Reports written before it
/// existed have none and read as version 0.
pub const SCHEMA_VERSION: u32 = 1;

/// The file name of a report in its directory.
pub const FILE_NAME: &str = "report.json";

/// A field that is missing, `null` or of another type reads as its default (`None`, empty)
/// rather than failing the report it is in.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(T::deserialize(v).unwrap_or_default())
}

/// What a report is of: `kind` in `report.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A guest crash: a crash directory.
    Crash,
    /// An operator's dump (`ctl dump`): no crash, never delivered.
    OperatorDump,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::OperatorDump => "operator_dump",
        }
    }
}

/// How far the recording of a crash (or an operator's dump) got: `state` in `report.json`.
/// Only `complete` is ever seen under a final name; the others are what a crashvmm killed
/// meanwhile left in its temporary directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The crash is detected; nothing is collected yet.
    Recording,
    /// A host-side vmcore is being written (`vmcore_pending` says which file and why).
    WritingVmcore,
    /// The guest's kdump dump is being read from the crash disk.
    CollectingKdump,
    /// Everything is written.
    Complete,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Recording => "recording",
            State::WritingVmcore => "writing_vmcore",
            State::CollectingKdump => "collecting_kdump",
            State::Complete => "complete",
        }
    }
}

/// What set a crash off (`trigger`, also in the event log's `crash_detected`); an operator's
/// dump says `operator`. The VMM's crash handling uses this one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// pvpanic PANICKED or CRASH_LOADED.
    Pvpanic,
    /// The Hyper-V crash MSRs (CRASH_CTL with CRASH_NOTIFY).
    HvCrash,
    /// A vCPU triple-faulted.
    TripleFault,
    /// KVM could not run a vCPU.
    KvmFailure,
    /// The watchdog found the guest hung.
    GuestHang,
    /// A crash soon after crashvmm injected an NMI (control socket).
    NmiInjection,
    /// The guest's crash kernel began writing a dump to the crash disk; the crashed kernel
    /// gave no notice (no pvpanic, no Hyper-V report: it kexec'd before its panic notifiers,
    /// `crash_kexec_post_notifiers=0`).
    CrashKernel,
    /// The operator's dump (control socket), not a crash.
    Operator,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Pvpanic => "pvpanic",
            Trigger::HvCrash => "hv_crash",
            Trigger::TripleFault => "triple_fault",
            Trigger::KvmFailure => "kvm_failure",
            Trigger::GuestHang => "guest_hang",
            Trigger::NmiInjection => "nmi_injection",
            Trigger::CrashKernel => "crash_kernel",
            Trigger::Operator => "operator",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--on-panic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnPanic {
    Auto,
    Kdump,
    HostDump,
    Pause,
    Ignore,
}

impl OnPanic {
    pub fn as_str(self) -> &'static str {
        match self {
            OnPanic::Auto => "auto",
            OnPanic::Kdump => "kdump",
            OnPanic::HostDump => "host-dump",
            OnPanic::Pause => "pause",
            OnPanic::Ignore => "ignore",
        }
    }
}

/// `--after-crash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AfterCrash {
    Exit,
    Reset,
    Pause,
}

impl AfterCrash {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterCrash::Exit => "exit",
            AfterCrash::Reset => "reset",
            AfterCrash::Pause => "pause",
        }
    }
}

/// `--host-dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostDump {
    Never,
    Fallback,
    Always,
}

impl HostDump {
    pub fn as_str(self) -> &'static str {
        match self {
            HostDump::Never => "never",
            HostDump::Fallback => "fallback",
            HostDump::Always => "always",
        }
    }
}

/// The crash policy in force, as the command line says it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Policy {
    #[serde(default, deserialize_with = "lenient")]
    pub on_panic: Option<OnPanic>,
    #[serde(default, deserialize_with = "lenient")]
    pub after_crash: Option<AfterCrash>,
    /// `--kdump-timeout`, seconds.
    #[serde(default, deserialize_with = "lenient")]
    pub kdump_timeout: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    pub host_dump: Option<HostDump>,
    /// With `after_crash: reset`, exit instead once this many crashes happened (0: no limit).
    #[serde(default, deserialize_with = "lenient")]
    pub max_crashes: Option<u32>,
    /// The guest can report through the Hyper-V crash MSRs.
    #[serde(default, deserialize_with = "lenient")]
    pub hyperv: Option<bool>,
    /// `--on-hang` as given: `nmi`, `reset`, `host-dump`, `host-dump,nmi`, `host-dump,reset`.
    #[serde(default, deserialize_with = "lenient")]
    pub on_hang: Option<String>,
}

/// The guest of a crash: the machine as booted, and the kernel that ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Guest {
    #[serde(flatten)]
    pub machine: Machine,
    /// From the vmcore's VMCOREINFO, else the console's `Linux version` banner; `null` when
    /// neither said.
    #[serde(default, deserialize_with = "lenient")]
    pub kernel_release: Option<String>,
}

/// The machine crashvmm booted (an operator's dump says only this of its guest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Machine {
    /// The kernel image crashvmm booted.
    #[serde(default, deserialize_with = "lenient")]
    pub kernel: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub cmdline: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub memory_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub vcpus: Option<u32>,
}

/// One crash signal the guest (or crashvmm) gave, with when it was observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TimedSignal {
    /// RFC 3339, UTC, microseconds.
    pub at: String,
    #[serde(flatten)]
    pub signal: Signal,
}

/// A crash signal (`signal` names it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    /// A write to the pvpanic device: its event bits.
    Pvpanic {
        vcpu: u32,
        bits: u8,
    },
    /// The Hyper-V crash MSRs: the five parameters, hex.
    HvCrash {
        vcpu: u32,
        params: Vec<String>,
    },
    GuestKexec {
        vcpu: u32,
    },
    /// The crash kernel runs: after a `guest_kexec` it set Hyper-V up again, or, where that
    /// was not seen first, it began writing the crash disk during a crash.
    CrashKernelStarted {
        vcpu: u32,
    },
    /// The guest's first write to the crash disk in this boot: its crash kernel began writing
    /// a dump (nothing else writes that disk).
    CrashDiskWritten {
        vcpu: u32,
    },
    TripleFault {
        vcpu: u32,
    },
    KvmFailure {
        vcpu: u32,
        detail: String,
    },
    /// The guest asked the VMBus host to unload (`answered`: crashvmm answered it).
    #[serde(rename = "vmbus_unload_requested")]
    UnloadRequested {
        vcpu: u32,
        answered: bool,
    },
    #[serde(rename = "vmbus_unload_completed")]
    UnloadCompleted {
        vcpu: u32,
        latency_us: u64,
    },
    NmiInjected,
    GuestHang {
        stalled_ms: u64,
    },
}

/// The last pvpanic write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Pvpanic {
    #[serde(default, deserialize_with = "lenient")]
    pub vcpu: Option<u32>,
    #[serde(default, deserialize_with = "lenient")]
    pub bits: Option<u8>,
    #[serde(default, deserialize_with = "lenient")]
    pub panicked: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub crash_loaded: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub shutdown: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub at: Option<String>,
}

/// The last Hyper-V crash report (the crash MSRs and the message the guest left).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HypervCrash {
    #[serde(default, deserialize_with = "lenient")]
    pub vcpu: Option<u32>,
    /// The five parameters, hex (`0x...`).
    #[serde(default, deserialize_with = "lenient")]
    pub params: Option<Vec<String>>,
    /// The guest kernel's log at the panic, when it sent one.
    #[serde(default, deserialize_with = "lenient")]
    pub message: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub at: Option<String>,
}

/// The VMBus UNLOAD the crash kernel asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Vmbus {
    #[serde(default, deserialize_with = "lenient")]
    pub unload_requested_at: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub answered: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub unload_completed_at: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub unload_latency_us: Option<u64>,
}

/// One vCPU's registers at the crash, hex (`0x...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct VcpuRegisters {
    pub id: u32,
    pub rip: String,
    pub rsp: String,
    pub rbp: String,
    pub rflags: String,
    pub rax: String,
    pub rbx: String,
    pub rcx: String,
    pub rdx: String,
    pub rsi: String,
    pub rdi: String,
    pub r8: String,
    pub r9: String,
    pub r10: String,
    pub r11: String,
    pub r12: String,
    pub r13: String,
    pub r14: String,
    pub r15: String,
    pub cs: String,
    pub ss: String,
    pub cr0: String,
    pub cr2: String,
    pub cr3: String,
    pub cr4: String,
    pub efer: String,
    pub fs_base: String,
    pub gs_base: String,
    /// These are the registers of a CPU just reset, not where the guest was (`note` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registers_reset: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A vmcore's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VmcoreFormat {
    /// makedumpfile's kdump-compressed (diskdump) format.
    #[serde(rename = "kdump-compressed")]
    KdumpCompressed,
    /// An ELF core file.
    #[serde(rename = "elf")]
    Elf,
}

impl VmcoreFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            VmcoreFormat::KdumpCompressed => "kdump-compressed",
            VmcoreFormat::Elf => "elf",
        }
    }
}

/// A kdump-format vmcore's page compression (`--vmcore-compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    Zlib,
    Lzo,
    None,
}

/// Who wrote a vmcore (`source`, also in the event log's `vmcore_written`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmcoreSource {
    /// crashvmm, from guest memory.
    Host,
    /// The guest's kdump (makedumpfile in its crash kernel).
    Guest,
}

impl VmcoreSource {
    pub fn as_str(self) -> &'static str {
        match self {
            VmcoreSource::Host => "host",
            VmcoreSource::Guest => "guest",
        }
    }
}

/// What a host-side vmcore's dump level left out. The writer's full account (pages per class,
/// bytes before and after compression, why a level was not applied) is kept as it is in
/// `other`; the page counts a reader needs are typed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VmcoreFilter {
    /// PFNs in guest RAM.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub total_pages: Option<u64>,
    /// Pages written with their data (a kdump-format file).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub data_pages: Option<u64>,
    /// Pages the classification kept (an ELF file filtered beyond zero pages).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub kept_pages: Option<u64>,
    /// Everything else the writer said.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl VmcoreFilter {
    /// The pages written with their data: `data_pages`, or for an ELF file the pages kept.
    pub fn written_pages(&self) -> Option<u64> {
        self.data_pages.or(self.kept_pages)
    }
}

/// The vmcore of a crash or an operator's dump.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Vmcore {
    /// Its file name in the directory.
    #[serde(default, deserialize_with = "lenient")]
    pub path: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub format: Option<VmcoreFormat>,
    /// A host-side vmcore's dump level (makedumpfile's `-d`).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub dump_level: Option<u8>,
    /// A host-side kdump-format vmcore's page compression.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// What a host-side vmcore's dump level left out.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub filter: Option<VmcoreFilter>,
    #[serde(default, deserialize_with = "lenient")]
    pub bytes: Option<u64>,
    /// The disk space it takes (a vmcore is sparse).
    #[serde(default, deserialize_with = "lenient")]
    pub allocated_bytes: Option<u64>,
    /// Of the whole file, hex; `null` for a host-side vmcore without `--vmcore-sha256`.
    #[serde(default, deserialize_with = "lenient")]
    pub sha256: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub source: Option<VmcoreSource>,
    #[serde(default, deserialize_with = "lenient")]
    pub duration_ms: Option<u64>,
    /// Why it was taken.
    #[serde(default, deserialize_with = "lenient")]
    pub reason: Option<String>,
}

/// A vmcore being written, until it is complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct VmcorePending {
    /// The file it is written to, in the directory (`<name>.partial`, renamed once complete).
    pub file: String,
    pub reason: String,
    pub since: String,
}

/// What crashed, as kernel developers name it, and its stable id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signature {
    /// syzkaller style (`general protection fault in FUNC`).
    #[serde(default, deserialize_with = "lenient")]
    pub title: Option<String>,
    /// Call-trace function names, innermost first.
    #[serde(default, deserialize_with = "lenient")]
    pub frames: Option<Vec<String>>,
    /// 16 hex digits: the same bug gives the same id across guests, boots and builds.
    #[serde(default, deserialize_with = "lenient")]
    pub id: Option<String>,
    /// The kind of crash (`panic`, `page_fault`, `null_deref`, `hang`, ...).
    #[serde(default, deserialize_with = "lenient")]
    pub kind: Option<String>,
}

/// The `report.json` of a crash directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    /// The layout's version ([`SCHEMA_VERSION`]); 0 for reports written before it was.
    #[serde(default, deserialize_with = "lenient")]
    pub schema: u32,
    #[serde(default, deserialize_with = "lenient")]
    pub crashvmm_version: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub kind: Option<Kind>,
    #[serde(default, deserialize_with = "lenient")]
    pub state: Option<State>,
    /// The crash's number in this crashvmm run, from 1.
    #[serde(default, deserialize_with = "lenient")]
    pub crash_number: Option<u32>,
    #[serde(default, deserialize_with = "lenient")]
    pub trigger: Option<Trigger>,
    #[serde(default, deserialize_with = "lenient")]
    pub detected_at: Option<String>,
    /// When the directory was complete; `null` until it is.
    #[serde(default, deserialize_with = "lenient")]
    pub finished_at: Option<String>,
    /// How its handling ended, in words; `null` until it did.
    #[serde(default, deserialize_with = "lenient")]
    pub outcome: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub policy: Option<Policy>,
    #[serde(default, deserialize_with = "lenient")]
    pub guest: Option<Guest>,
    /// The crash's signals, oldest first, at most 32 of each kind.
    #[serde(default, deserialize_with = "lenient")]
    pub signals: Vec<TimedSignal>,
    /// Signals left out of `signals` (a guest that repeats itself).
    #[serde(default, deserialize_with = "lenient")]
    pub signals_dropped: u64,
    #[serde(default, deserialize_with = "lenient")]
    pub pvpanic: Option<Pvpanic>,
    #[serde(default, deserialize_with = "lenient")]
    pub hyperv_crash: Option<HypervCrash>,
    #[serde(default, deserialize_with = "lenient")]
    pub vmbus: Option<Vmbus>,
    #[serde(default, deserialize_with = "lenient")]
    pub vcpu_registers: Vec<VcpuRegisters>,
    #[serde(default, deserialize_with = "lenient")]
    pub vmcore: Option<Vmcore>,
    /// Why there is no vmcore.
    #[serde(default, deserialize_with = "lenient")]
    pub vmcore_error: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub signature: Option<Signature>,
    /// What was read out of the guest's memory at the crash.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub analysis: Option<analysis::Analysis>,
    /// The vmcore being written or collected (until the report is complete).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub vmcore_pending: Option<VmcorePending>,
    /// `--vmcores-per-signature`: the vmcores of this crash's signature there were when its own
    /// was due, and where they were counted.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub vmcore_count: Option<VmcoreCount>,
    /// A crash that kept no vmcore for being one more of its signature: the first crash
    /// directory of that signature with a vmcore (its URL in the store, or its local path).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// With `--after-crash reset` and `--reset-backoff`: how long the guest waits before it
    /// boots again.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub reset_wait: Option<ResetWait>,
}

/// How many crash directories of a signature held a vmcore when a crash's own was due
/// (`--vmcores-per-signature`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct VmcoreCount {
    pub signature_id: String,
    /// Crash directories of the signature with a vmcore; the store's are counted up to `limit`.
    pub count: u64,
    /// `--vmcores-per-signature`.
    pub limit: u32,
    /// `store`: the store's directories (`--upload`) and this host's not yet delivered;
    /// `local`: this host's crash directory alone (no `--upload`, or the store could not be
    /// asked: `store_error` says why).
    pub counted_in: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

/// The wait before a crashed guest boots again (`--reset-backoff`): it doubles with each crash
/// of the same signature after a short boot, up to `--reset-backoff-max`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ResetWait {
    pub seconds: f64,
    /// This crash's place in the loop: 1 for the first crash of its signature (or the first
    /// after a boot that lasted), 2 for the next, ...
    pub streak: u32,
}

/// What a live dump cost the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct LiveStats {
    /// How the snapshot was taken: `uffd` or `fork`.
    pub snapshot: String,
    pub pause_us: u64,
    pub copied_bytes: u64,
    pub paused_for_rest: bool,
}

/// The `report.json` of an operator's dump (`kind` `operator_dump`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DumpReport {
    #[serde(default, deserialize_with = "lenient")]
    pub schema: u32,
    #[serde(default, deserialize_with = "lenient")]
    pub crashvmm_version: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub kind: Option<Kind>,
    #[serde(default, deserialize_with = "lenient")]
    pub state: Option<State>,
    /// `operator`.
    #[serde(default, deserialize_with = "lenient")]
    pub trigger: Option<Trigger>,
    #[serde(default, deserialize_with = "lenient")]
    pub reason: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub requested_at: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub finished_at: Option<String>,
    /// Taken while the guest ran on.
    #[serde(default, deserialize_with = "lenient")]
    pub live: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub live_stats: Option<LiveStats>,
    #[serde(default, deserialize_with = "lenient")]
    pub guest: Option<Machine>,
    #[serde(default, deserialize_with = "lenient")]
    pub vmcore: Option<Vmcore>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub vmcore_pending: Option<VmcorePending>,
}

/// What any report says about itself: a crash's or an operator's dump's, complete or left by a
/// crashvmm killed while writing it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ReportHead {
    #[serde(default, deserialize_with = "lenient")]
    pub kind: Option<Kind>,
    #[serde(default, deserialize_with = "lenient")]
    pub trigger: Option<Trigger>,
    #[serde(default, deserialize_with = "lenient")]
    pub state: Option<State>,
    #[serde(default, deserialize_with = "lenient")]
    pub detected_at: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub requested_at: Option<String>,
}

impl ReportHead {
    /// When it began: a crash's `detected_at`, a dump's `requested_at`.
    pub fn started_at(&self) -> Option<&str> {
        self.detected_at.as_deref().or(self.requested_at.as_deref())
    }
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The text is not JSON.
    #[error("is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an object: the value it is.
    #[error("is not a JSON object")]
    NotAnObject(Value),
    /// An object this version cannot read (no field of it can fail: not expected).
    #[error("is not a report")]
    NotAReport(#[source] serde_json::Error),
}

/// Read a report (any of [`Report`], [`DumpReport`], [`ReportHead`]) from its JSON text: every
/// object gives one, with what it has (the module's text on leniency).
pub fn from_slice<T: DeserializeOwned>(text: &[u8]) -> Result<T, ReportError> {
    let value: Value = serde_json::from_slice(text).map_err(ReportError::NotJson)?;
    if !value.is_object() {
        return Err(ReportError::NotAnObject(value));
    }
    // Every field reads leniently: an object cannot fail.
    T::deserialize(value).map_err(ReportError::NotAReport)
}

/// The JSON text of a report as crashvmm writes it: pretty, with the keys of every object in
/// alphabetical order (as report.json always had them).
pub fn to_vec_pretty<T: Serialize>(report: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec_pretty(&serde_json::to_value(report)?)
}

/// The JSON Schema of `report.json` (`docs/report.schema.json`): a crash's [`Report`] or an
/// operator's [`DumpReport`].
pub fn json_schema() -> schemars::Schema {
    #[derive(JsonSchema)]
    #[schemars(title = "crashvmm report.json")]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum AnyReport {
        Crash(Box<Report>),
        OperatorDump(Box<DumpReport>),
    }
    schemars::schema_for!(AnyReport)
}

#[cfg(test)]
mod tests;
