//! Crash directories: one per crash, written atomically (built under a temporary name, every
//! file fsynced, then renamed), never overwriting an earlier one.
//!
//! ```text
//! <crash-dir>/20261125T130105Z-001/
//!   report.json   what happened, decided and collected
//!   events.jsonl  the event log of this crash (from the guest's boot or the previous crash)
//!   console.log   the console up to the crash
//!   vmcore        host-side ELF vmcore, when one was taken
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use thiserror::Error;

use super::vmcore::{FilterSummary, VcpuState, VmcoreCompression, VmcoreFormat, VmcoreSummary};
use super::{CrashSignal, DumpReason, Outcome, Policy, Trigger, VmcoreSource};
use crate::events::hex;
use crate::files;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ReportError + 'a {
    move |source| ReportError::Io { what, path: path.to_owned(), source }
}

/// A signal with when it was observed (the vCPU thread's clock for the guest's signals).
#[derive(Debug, Clone)]
pub struct TimedSignal {
    pub at: DateTime<Utc>,
    pub signal: CrashSignal,
}

/// What the report says about the vmcore.
#[derive(Debug, Clone, Serialize)]
pub struct VmcoreEntry {
    pub path: String,
    /// `kdump-compressed` (the guest's makedumpfile, or crashvmm's default) or `elf`.
    pub format: &'static str,
    /// A host-side vmcore's dump level (makedumpfile's `-d`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump_level: Option<u8>,
    /// A host-side kdump-format vmcore's page compression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<VmcoreCompression>,
    /// What the dump level left out: pages per class, excluded, written, bytes before and after
    /// compression, and why a level was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSummary>,
    pub bytes: u64,
    pub allocated_bytes: u64,
    /// Of the whole file; `None` for a host-side vmcore without `--vmcore-sha256`.
    pub sha256: Option<String>,
    pub source: VmcoreSource,
    pub duration_ms: u64,
    pub reason: String,
}

/// Facts about the guest the report repeats.
#[derive(Debug, Clone, Serialize)]
pub struct GuestInfo {
    pub kernel: String,
    pub cmdline: String,
    pub memory_bytes: u64,
    pub vcpus: u32,
}

/// One crash being recorded.
#[derive(Debug)]
pub struct CrashRecord {
    pub number: u32,
    pub trigger: Trigger,
    pub detected_at: DateTime<Utc>,
    /// The crash's signals, at most [`Self::SAME_KIND_MAX`] of each kind ([`add_signal`]).
    ///
    /// [`add_signal`]: Self::add_signal
    pub signals: Vec<TimedSignal>,
    /// Signals left out of `signals` (a guest that repeats itself).
    pub signals_dropped: u64,
    pub vcpus: Vec<VcpuState>,
    pub vmcore: Option<VmcoreEntry>,
    pub vmcore_error: Option<String>,
    pub kernel_release: Option<String>,
    /// What crashed, as kernel developers name it, and its stable id.
    pub signature: Option<signature::Signature>,
    /// The directory being written (temporary name until [`CrashRecord::finish`]).
    pub tmp_dir: PathBuf,
    /// Its name once finished (chosen up front, so events can name it).
    pub final_dir: PathBuf,
    base: PathBuf,
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl CrashRecord {
    /// Start crash number `number` under `base` (created if needed).
    pub fn begin(base: &Path, number: u32, trigger: Trigger) -> Result<Self, ReportError> {
        files::create_private_dir_all(base).map_err(io("create crash directory", base))?;
        let detected_at = Utc::now();
        let final_dir = unused_name(base, &detected_at, number);
        let name = final_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp_dir = base.join(format!(".tmp-{name}-{}", std::process::id()));
        files::create_private_dir(&tmp_dir).map_err(io("create", &tmp_dir))?;
        Ok(Self {
            final_dir,
            number,
            trigger,
            detected_at,
            signals: Vec::new(),
            signals_dropped: 0,
            vcpus: Vec::new(),
            vmcore: None,
            vmcore_error: None,
            kernel_release: None,
            signature: None,
            tmp_dir,
            base: base.to_owned(),
        })
    }

    /// Signals of one kind (pvpanic writes of any value, crash reports, ...) a report lists:
    /// the first ones, which are what began the crash; whatever a guest sends after them is
    /// counted in `signals_dropped`, so the report stays small however long the guest goes on.
    pub const SAME_KIND_MAX: usize = 32;

    pub fn record(&mut self, signal: &CrashSignal) {
        self.add_signal(TimedSignal { at: Utc::now(), signal: signal.clone() });
    }

    /// Record a signal of this crash, within [`Self::SAME_KIND_MAX`] of its kind.
    pub fn add_signal(&mut self, timed: TimedSignal) {
        let kind = timed.signal.repeat_key().0;
        if self.signals.iter().filter(|t| t.signal.repeat_key().0 == kind).count() >= Self::SAME_KIND_MAX {
            self.signals_dropped += 1;
        } else {
            self.signals.push(timed);
        }
    }

    /// Where the vmcore goes while the directory is being written.
    pub fn vmcore_path(&self) -> PathBuf {
        self.tmp_dir.join("vmcore")
    }

    pub fn set_vmcore(&mut self, s: &VmcoreSummary, reason: &DumpReason) {
        if let Some(release) = s.vmcoreinfo.as_ref().and_then(|n| vmcoreinfo_value(&n.text, "OSRELEASE")) {
            self.kernel_release = Some(release);
        }
        self.vmcore = Some(VmcoreEntry {
            path: "vmcore".into(),
            format: s.spec.format.report_name(),
            dump_level: Some(s.spec.dump_level),
            compression: (s.spec.format == VmcoreFormat::Kdump).then_some(s.spec.compression),
            filter: s.filter.clone(),
            bytes: s.bytes,
            allocated_bytes: s.allocated_bytes,
            sha256: s.sha256.clone(),
            source: VmcoreSource::Host,
            duration_ms: s.duration.as_millis() as u64,
            reason: reason.to_string(),
        });
    }

    /// Record the dump the guest's kdump wrote (already at `file` in the crash directory).
    pub fn set_guest_vmcore(
        &mut self,
        file: &str,
        bytes: u64,
        duration: std::time::Duration,
    ) -> Result<(), ReportError> {
        let path = self.tmp_dir.join(file);
        let meta = fs::metadata(&path).map_err(io("stat", &path))?;
        let sha256 = sha256_file(&path)?;
        self.vmcore = Some(VmcoreEntry {
            path: file.into(),
            format: VmcoreFormat::Kdump.report_name(),
            dump_level: None,
            compression: None,
            filter: None,
            bytes,
            allocated_bytes: std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
            sha256: Some(sha256),
            source: VmcoreSource::Guest,
            duration_ms: duration.as_millis() as u64,
            reason: "the guest's kdump (makedumpfile in its crash kernel)".into(),
        });
        Ok(())
    }

    /// The crash's signature, from the best source there is: the Hyper-V crash message (the
    /// guest's own kernel log at the panic), else the console, else what the trigger says (a
    /// hang, a triple fault, a crash without a report).
    pub fn find_signature(&self, console: &[u8]) -> Option<signature::Signature> {
        let hv_message = self.signals.iter().rev().find_map(|t| match &t.signal {
            CrashSignal::HvCrash { message: Some(m), .. } => Some(m.clone()),
            _ => None,
        });
        hv_message
            .and_then(|m| signature::Signature::from_hyperv_message(m.as_bytes()).ok())
            .or_else(|| signature::from_text(&String::from_utf8_lossy(console)))
            .or_else(|| {
                Some(match self.trigger {
                    Trigger::TripleFault => signature::Signature::triple_fault(),
                    Trigger::GuestHang => signature::Signature::hang(),
                    // Nothing says more than the trigger: one group per trigger.
                    t => signature::Signature::new(
                        signature::Kind::Panic,
                        &format!("guest crash without a crash report ({t})"),
                        Vec::new(),
                    ),
                })
            })
    }

    /// The report as JSON.
    pub fn report(&self, outcome: &Outcome, policy: &Policy, guest: &GuestInfo) -> Value {
        let signals: Vec<Value> = self.signals.iter().map(signal_json).collect();
        let last = |f: &dyn Fn(&CrashSignal) -> bool| self.signals.iter().rev().find(|t| f(&t.signal));
        let pvpanic = last(&|s| matches!(s, CrashSignal::PvPanic { .. })).map(|t| match &t.signal {
            CrashSignal::PvPanic { vcpu, bits } => {
                let e = devices::pvpanic::PvPanicEvents::from_bits(*bits);
                json!({"vcpu": vcpu, "bits": bits, "panicked": e.panicked, "crash_loaded": e.crash_loaded,
                       "shutdown": e.shutdown, "at": ts(&t.at)})
            }
            _ => Value::Null,
        });
        let hyperv = last(&|s| matches!(s, CrashSignal::HvCrash { .. })).map(|t| match &t.signal {
            CrashSignal::HvCrash { vcpu, params, message } => json!({
                "vcpu": vcpu, "params": params.map(hex), "message": message, "at": ts(&t.at)
            }),
            _ => Value::Null,
        });
        let unload_req = last(&|s| matches!(s, CrashSignal::UnloadRequested { .. }));
        let unload_done = last(&|s| matches!(s, CrashSignal::UnloadCompleted { .. }));
        let vmbus = unload_req.map(|r| {
            let (answered, latency) = match (&r.signal, unload_done.map(|d| &d.signal)) {
                (
                    CrashSignal::UnloadRequested { answered, .. },
                    Some(CrashSignal::UnloadCompleted { latency_us, .. }),
                ) => (*answered, Some(*latency_us)),
                (CrashSignal::UnloadRequested { answered, .. }, _) => (*answered, None),
                _ => (false, None),
            };
            json!({"unload_requested_at": ts(&r.at), "answered": answered,
                   "unload_completed_at": unload_done.map(|d| ts(&d.at)), "unload_latency_us": latency})
        });
        let vcpus: Vec<Value> = self.vcpus.iter().map(vcpu_json).collect();
        json!({
            "crashvmm_version": env!("CARGO_PKG_VERSION"),
            "crash_number": self.number,
            "trigger": self.trigger,
            "detected_at": ts(&self.detected_at),
            "finished_at": ts(&Utc::now()),
            "outcome": outcome.to_string(),
            "policy": policy,
            "guest": {
                "kernel": guest.kernel, "cmdline": guest.cmdline, "memory_bytes": guest.memory_bytes,
                "vcpus": guest.vcpus, "kernel_release": self.kernel_release,
            },
            "signals": signals,
            "signals_dropped": self.signals_dropped,
            "pvpanic": pvpanic,
            "hyperv_crash": hyperv,
            "vmbus": vmbus,
            "vcpu_registers": vcpus,
            "vmcore": self.vmcore,
            "vmcore_error": self.vmcore_error,
            "signature": self.signature,
        })
    }

    /// Write report, events and console, fsync everything, and rename the directory to its
    /// final name. Returns that name.
    pub fn finish(
        &mut self,
        outcome: &Outcome,
        policy: &Policy,
        guest: &GuestInfo,
        events: &[String],
        console: &[u8],
    ) -> Result<PathBuf, ReportError> {
        if self.kernel_release.is_none() {
            self.kernel_release = kernel_release_from_console(console);
        }
        let report = serde_json::to_vec_pretty(&self.report(outcome, policy, guest)).unwrap_or_default();
        write_synced(&self.tmp_dir.join("report.json"), &report)?;
        write_synced(&self.tmp_dir.join("events.jsonl"), events.concat().as_bytes())?;
        write_synced(&self.tmp_dir.join("console.log"), console)?;
        if let Some(f) = self.vmcore.as_ref().map(|v| self.tmp_dir.join(&v.path)) {
            File::open(&f).and_then(|f| f.sync_all()).map_err(io("sync", &f))?;
        }
        sync_dir(&self.tmp_dir)?;
        // Chosen at the start; taken meanwhile (another crashvmm on the same directory)?
        let dir = if self.final_dir.exists() {
            unused_name(&self.base, &self.detected_at, self.number)
        } else {
            self.final_dir.clone()
        };
        fs::rename(&self.tmp_dir, &dir).map_err(io("rename crash directory to", &dir))?;
        sync_dir(&self.base)?;
        self.tmp_dir = dir.clone();
        Ok(dir)
    }
}

/// `<base>/<UTC time>-<number>`, with `.N` appended while that exists.
fn unused_name(base: &Path, at: &DateTime<Utc>, number: u32) -> PathBuf {
    let stamp = at.format("%Y%m%dT%H%M%SZ");
    (0..)
        .map(|n| match n {
            0 => base.join(format!("{stamp}-{number:03}")),
            _ => base.join(format!("{stamp}-{number:03}.{n}")),
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| base.join(format!("{stamp}-{number:03}")))
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, ReportError> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io("read", path))?;
    Ok(hex::encode(h.finalize()))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), ReportError> {
    let mut f = files::create_private(path).map_err(io("create", path))?;
    f.write_all(data).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

fn sync_dir(dir: &Path) -> Result<(), ReportError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))
}

/// `KEY=value` from VMCOREINFO text.
pub fn vmcoreinfo_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_string)
}

/// The release from the kernel's "Linux version X (...)" banner.
pub fn kernel_release_from_console(console: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(console);
    let at = text.find("Linux version ")?;
    text[at + 14..].split_whitespace().next().map(str::to_string)
}

fn signal_json(t: &TimedSignal) -> Value {
    let at = ts(&t.at);
    match &t.signal {
        CrashSignal::PvPanic { vcpu, bits } => {
            json!({"at": at, "signal": "pvpanic", "vcpu": vcpu, "bits": bits})
        }
        CrashSignal::HvCrash { vcpu, params, .. } => {
            json!({"at": at, "signal": "hv_crash", "vcpu": vcpu, "params": params.map(hex)})
        }
        CrashSignal::GuestKexec { vcpu } => {
            json!({"at": at, "signal": "guest_kexec", "vcpu": vcpu})
        }
        CrashSignal::CrashKernelStarted { vcpu } => {
            json!({"at": at, "signal": "crash_kernel_started", "vcpu": vcpu})
        }
        CrashSignal::TripleFault { vcpu } => {
            json!({"at": at, "signal": "triple_fault", "vcpu": vcpu})
        }
        CrashSignal::KvmFailure { vcpu, detail } => {
            json!({"at": at, "signal": "kvm_failure", "vcpu": vcpu, "detail": detail})
        }
        CrashSignal::UnloadRequested { vcpu, answered } => {
            json!({"at": at, "signal": "vmbus_unload_requested", "vcpu": vcpu, "answered": answered})
        }
        CrashSignal::NmiInjected => json!({"at": at, "signal": "nmi_injected"}),
        CrashSignal::GuestHang { stalled_ms } => json!({"at": at, "signal": "guest_hang", "stalled_ms": stalled_ms}),
        CrashSignal::UnloadCompleted { vcpu, latency_us } => {
            json!({"at": at, "signal": "vmbus_unload_completed", "vcpu": vcpu, "latency_us": latency_us})
        }
    }
}

fn vcpu_json(v: &VcpuState) -> Value {
    let r = &v.regs;
    let s = &v.sregs;
    let mut j = json!({
        "id": v.id,
        "rip": hex(r.rip), "rsp": hex(r.rsp), "rbp": hex(r.rbp), "rflags": hex(r.rflags),
        "rax": hex(r.rax), "rbx": hex(r.rbx), "rcx": hex(r.rcx), "rdx": hex(r.rdx),
        "rsi": hex(r.rsi), "rdi": hex(r.rdi), "r8": hex(r.r8), "r9": hex(r.r9), "r10": hex(r.r10),
        "r11": hex(r.r11), "r12": hex(r.r12), "r13": hex(r.r13), "r14": hex(r.r14), "r15": hex(r.r15),
        "cs": hex(s.cs.selector as u64), "ss": hex(s.ss.selector as u64),
        "cr0": hex(s.cr0), "cr2": hex(s.cr2), "cr3": hex(s.cr3), "cr4": hex(s.cr4), "efer": hex(s.efer),
        "fs_base": hex(s.fs.base), "gs_base": hex(s.gs.base),
    });
    if v.is_reset_state() {
        j["registers_reset"] = json!(true);
        j["note"] = json!(RESET_NOTE);
    }
    j
}

/// Why a vCPU's registers may be its reset state (report.json, crashvmm's log).
pub const RESET_NOTE: &str = "these are the registers of a CPU just reset (KVM reinitializes a vCPU that \
                              shut down on AMD), not where the guest was";

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestInfo {
        GuestInfo { kernel: "/k".into(), cmdline: "console=ttyS0".into(), memory_bytes: 1 << 30, vcpus: 2 }
    }

    #[test]
    fn directory_is_atomic_and_never_overwritten() {
        let base = tempfile::tempdir().unwrap();
        let mut first = CrashRecord::begin(base.path(), 1, Trigger::Pvpanic).unwrap();
        assert!(first.tmp_dir.file_name().unwrap().to_str().unwrap().starts_with(".tmp-"));
        first.record(&CrashSignal::PvPanic { vcpu: 1, bits: 1 });
        first.record(&CrashSignal::HvCrash { vcpu: 1, params: [0, 0, 0, 0x1000, 3], message: Some("oops".into()) });
        first.record(&CrashSignal::UnloadRequested { vcpu: 1, answered: true });
        first.record(&CrashSignal::UnloadCompleted { vcpu: 0, latency_us: 42 });
        let console = b"[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP\n";
        let events = vec!["{\"event\":\"a\"}\n".to_string(), "{\"event\":\"b\"}\n".to_string()];
        let dir = first.finish(&Outcome::HostVmcoreWritten, &Policy::default(), &guest(), &events, console).unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with("-001") && name.len() == "20261125T130105Z-001".len(), "{name}");
        let report: Value = serde_json::from_slice(&fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["trigger"], "pvpanic");
        assert_eq!(report["outcome"], "host-side vmcore written");
        assert_eq!(report["pvpanic"]["panicked"], true);
        assert_eq!(report["hyperv_crash"]["message"], "oops");
        assert_eq!(report["hyperv_crash"]["params"][3], "0x1000");
        assert_eq!(report["vmbus"]["unload_latency_us"], 42);
        assert_eq!(report["guest"]["kernel_release"], "6.1.0-56-cloud-amd64");
        assert_eq!(report["policy"]["on_panic"], "auto");
        assert_eq!(report["signals"].as_array().unwrap().len(), 4);
        assert_eq!(report["vmcore"], Value::Null);
        assert_eq!(fs::read_to_string(dir.join("events.jsonl")).unwrap().lines().count(), 2);
        assert_eq!(fs::read(dir.join("console.log")).unwrap(), console);
        // No temporary directory left behind.
        let leftovers: Vec<_> = fs::read_dir(base.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1);
        // The same second and number again: a new name, the first stays.
        let mut again = CrashRecord::begin(base.path(), 1, Trigger::Pvpanic).unwrap();
        again.detected_at = first.detected_at;
        again.final_dir = dir.clone();
        let dir2 = again.finish(&Outcome::KdumpCollected, &Policy::default(), &guest(), &[], b"").unwrap();
        assert_ne!(dir, dir2);
        assert!(dir.join("report.json").exists());
    }

    #[test]
    fn reset_registers_of_a_shut_down_vcpu_are_flagged() {
        let mut v = VcpuState { id: 1, regs: Default::default(), sregs: Default::default() };
        v.regs.rip = 0x1089be;
        v.sregs.cr0 = 0xe000_0011;
        assert!(vcpu_json(&v).get("registers_reset").is_none());
        // What KVM on AMD leaves after a SHUTDOWN intercept: the INIT state.
        v.regs.rip = 0xfff0;
        v.sregs.cs.base = 0xffff_0000;
        v.sregs.cs.selector = 0xf000;
        v.sregs.cr0 = 0x6000_0010;
        let j = vcpu_json(&v);
        assert_eq!(j["registers_reset"], true);
        assert_eq!(j["rip"], "0xfff0");
        assert!(j["note"].as_str().unwrap().contains("not where the guest was"));
    }

    #[test]
    fn the_signature_comes_from_the_console_or_the_trigger() {
        let base = tempfile::tempdir().unwrap();
        let console = include_str!("../../../signature/tests/fixtures/debian61-sysrq-panic-boot1.txt");
        let mut r = CrashRecord::begin(base.path(), 1, Trigger::Pvpanic).unwrap();
        let s = r.find_signature(console.as_bytes()).expect("a signature");
        assert_eq!(s.title, "kernel panic: sysrq triggered crash");
        assert_eq!(s.frames.first().map(String::as_str), Some("sysrq_handle_crash"));
        r.signature = Some(s.clone());
        let dir = r.finish(&Outcome::HostVmcoreWritten, &Policy::default(), &guest(), &[], console.as_bytes()).unwrap();
        let report: Value = serde_json::from_slice(&fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["signature"]["id"], s.id.as_str());
        // No crash text at all: the trigger names it, or nothing does.
        let t = CrashRecord::begin(base.path(), 2, Trigger::TripleFault).unwrap();
        assert_eq!(
            t.find_signature(b"TG: nothing to see").map(|s| s.title),
            Some(signature::Signature::triple_fault().title)
        );
        let p = CrashRecord::begin(base.path(), 3, Trigger::Pvpanic).unwrap();
        let s = p.find_signature(b"TG: nothing to see").unwrap();
        assert_eq!(s.title, "guest crash without a crash report (pvpanic)");
    }

    #[test]
    fn unwritable_base_is_an_error() {
        assert!(CrashRecord::begin(Path::new("/proc/crashvmm-no"), 1, Trigger::Pvpanic).is_err());
    }

    #[test]
    fn parses_release_and_vmcoreinfo() {
        assert_eq!(vmcoreinfo_value("OSRELEASE=6.1.0\nPAGESIZE=4096\n", "PAGESIZE").as_deref(), Some("4096"));
        assert_eq!(vmcoreinfo_value("OSRELEASE=6.1.0\n", "OSRELEASEX"), None);
        assert_eq!(kernel_release_from_console(b"no banner"), None);
    }
}
