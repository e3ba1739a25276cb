//! Crash directories: one per crash, written atomically (built under a temporary name, every
//! file fsynced, then renamed), never overwriting an earlier one. An operator's dump
//! (`ctl dump`) gets a directory of its own, built the same way.
//!
//! ```text
//! <crash-dir>/20261125T130105Z-001/
//!   report.json   what happened, decided and collected
//!   events.jsonl  the event log of this crash (from the guest's boot or the previous crash)
//!   console.log   the console up to the crash
//!   vmcore        host-side ELF vmcore, when one was taken
//! <crash-dir>/20261125T130512.345Z-dump/
//!   report.json   kind `operator_dump`: when, why, the vmcore
//!   vmcore
//! ```
//!
//! While one is written it is `<crash-dir>/.tmp-<final name>-<pid>/`, and nothing in it has its
//! final name before it is complete: `report.json` is written first (`state` says how far the
//! crash got: `recording`, `writing_vmcore` with `vmcore_pending`, `collecting_kdump`) and
//! replaced atomically (a temporary file, fsynced, renamed over it) as it goes, until it says
//! `complete`; a vmcore is written as `<name>.partial` and renamed once complete and fsynced.
//! So a crashvmm killed at any point leaves either a complete directory under its final name or
//! a `.tmp-*` one whose report.json says what it was doing. The next start reports such a
//! leftover ([`find_leftovers`]) and keeps it: it may hold the only (half) vmcore of a crash.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use crash_report as cr;
use thiserror::Error;

use super::live::LiveStats;
use super::vmcore::{FilterSummary, VcpuState, VmcoreCompression, VmcoreFormat, VmcoreSummary};
use super::{AfterCrash, CrashSignal, DumpReason, HostDump, OnPanic, Outcome, Policy, Trigger, VmcoreSource};
use crate::events::{hex, ts};
use crate::files;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot {what} {path}")]
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

/// How a directory under construction starts its name: `.tmp-<final name>-<pid>`.
pub const TMP_PREFIX: &str = ".tmp-";
/// What a vmcore's name ends in while it is written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// How far the recording of a crash (or an operator's dump) got: `state` in `report.json`.
pub use crash_report::State as ReportState;

/// The vmcore `name` is about to be written (as `<name>.partial`) for `reason`.
fn pending_vmcore(name: &str, reason: String) -> cr::VmcorePending {
    cr::VmcorePending { file: format!("{name}{PARTIAL_SUFFIX}"), reason, since: ts(Utc::now()) }
}

/// `<dir>/<name>.partial`: where `name` is written.
fn partial(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{PARTIAL_SUFFIX}"))
}

/// `.tmp-<name of final>-<our pid>` next to `final_dir`.
fn tmp_name(base: &Path, final_dir: &Path) -> PathBuf {
    let name = final_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    base.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()))
}

pub use crate::signal::TimedSignal;

/// What the report says about the vmcore.
#[derive(Debug, Clone)]
pub struct VmcoreEntry {
    pub path: String,
    /// `kdump-compressed` (the guest's makedumpfile, or crashvmm's default) or `elf`.
    pub format: VmcoreFormat,
    /// A host-side vmcore's dump level (makedumpfile's `-d`).
    pub dump_level: Option<u8>,
    /// A host-side kdump-format vmcore's page compression.
    pub compression: Option<VmcoreCompression>,
    /// What the dump level left out: pages per class, excluded, written, bytes before and after
    /// compression, and why a level was not applied.
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
#[derive(Debug, Clone)]
pub struct GuestInfo {
    pub kernel: String,
    pub cmdline: String,
    pub memory_bytes: u64,
    pub vcpus: u32,
}

impl GuestInfo {
    /// What `report.json` says of the machine.
    fn machine(&self) -> cr::Machine {
        cr::Machine {
            kernel: Some(self.kernel.clone()),
            cmdline: Some(self.cmdline.clone()),
            memory_bytes: Some(self.memory_bytes),
            vcpus: Some(self.vcpus),
        }
    }
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
    /// The crashed kernel's VMCOREINFO, as the vmcore written or collected holds it.
    pub vmcoreinfo: Option<String>,
    /// What was read out of guest memory ([`super::triage`]): `analysis` and `dmesg.txt`.
    pub triage: Option<super::triage::Triage>,
    /// Why there is no analysis at all.
    pub triage_error: Option<String>,
    /// The directory being written (temporary name until [`CrashRecord::finish`]).
    pub tmp_dir: PathBuf,
    /// Its name once finished (chosen up front, so events can name it).
    pub final_dir: PathBuf,
    /// How far it got (`state` in report.json).
    pub state: ReportState,
    /// The vmcore being written or collected, until it is.
    pub pending: Option<cr::VmcorePending>,
    /// The wait before the guest boots again (`--reset-backoff`).
    pub reset_wait: Option<cr::ResetWait>,
    /// `--vmcores-per-signature`: the count when this crash's vmcore was due, and the first
    /// directory of the signature where the vmcore was refused for it.
    pub vmcore_count: Option<cr::VmcoreCount>,
    pub duplicate_of: Option<String>,
    base: PathBuf,
}

impl CrashRecord {
    /// Start crash number `number` under `base` (created if needed).
    pub fn begin(base: &Path, number: u32, trigger: Trigger) -> Result<Self, ReportError> {
        files::create_private_dir_all(base).map_err(io("create crash directory", base))?;
        let detected_at = Utc::now();
        let final_dir = unused_name(base, &crash_stem(&detected_at, number));
        let tmp_dir = tmp_name(base, &final_dir);
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
            vmcoreinfo: None,
            triage: None,
            triage_error: None,
            reset_wait: None,
            vmcore_count: None,
            duplicate_of: None,
            tmp_dir,
            state: ReportState::Recording,
            pending: None,
            base: base.to_owned(),
        })
    }

    /// Signals of one kind (pvpanic writes of any value, crash reports, ...) a report lists:
    /// the first ones, which are what began the crash; whatever a guest sends after them is
    /// counted in `signals_dropped`, so the report stays small however long the guest goes on.
    pub const SAME_KIND_MAX: usize = 32;

    /// Write `report.json` as far as the crash got (`state`, what is pending), replacing the
    /// previous one atomically: the record a crashvmm killed from now on leaves behind.
    pub fn progress(&mut self, state: ReportState, policy: &Policy, guest: &GuestInfo) -> Result<(), ReportError> {
        self.state = state;
        self.pending = match state {
            ReportState::WritingVmcore | ReportState::CollectingKdump => self.pending.take(),
            ReportState::Recording | ReportState::Complete => None,
        };
        let report = cr::to_vec_pretty(&self.build_report(None, policy, guest)).unwrap_or_default();
        replace_synced(&self.tmp_dir.join(REPORT), &report)?;
        sync_dir(&self.tmp_dir)
    }

    /// A host-side vmcore for `reason` is about to be written to [`Self::vmcore_partial_path`].
    pub fn writing_vmcore(
        &mut self,
        reason: &DumpReason,
        policy: &Policy,
        guest: &GuestInfo,
    ) -> Result<(), ReportError> {
        self.pending = Some(pending_vmcore(VMCORE, reason.to_string()));
        self.progress(ReportState::WritingVmcore, policy, guest)
    }

    /// The guest's dump is about to be collected into [`Self::partial_path`]`(file)`.
    pub fn collecting_kdump(&mut self, file: &str, policy: &Policy, guest: &GuestInfo) -> Result<(), ReportError> {
        let reason = "the guest's kdump (makedumpfile in its crash kernel)".to_string();
        self.pending = Some(pending_vmcore(file, reason));
        self.progress(ReportState::CollectingKdump, policy, guest)
    }

    /// Where `file` is written in the directory until it is complete.
    pub fn partial_path(&self, file: &str) -> PathBuf {
        partial(&self.tmp_dir, file)
    }

    /// `file`, written and fsynced at [`Self::partial_path`], is complete: give it its name.
    pub fn commit(&self, file: &str) -> Result<(), ReportError> {
        let to = self.tmp_dir.join(file);
        fs::rename(self.partial_path(file), &to).map_err(io("rename vmcore to", &to))?;
        sync_dir(&self.tmp_dir)
    }

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

    /// Where the host-side vmcore is written (renamed `vmcore` by [`Self::set_vmcore`]).
    pub fn vmcore_partial_path(&self) -> PathBuf {
        self.partial_path(VMCORE)
    }

    /// The host-side vmcore at [`Self::vmcore_partial_path`] is written: give it its name and
    /// record it.
    pub fn set_vmcore(&mut self, s: &VmcoreSummary, reason: &DumpReason) -> Result<(), ReportError> {
        self.commit(VMCORE)?;
        self.pending = None;
        if let Some(release) = s.vmcoreinfo.as_ref().and_then(|n| n.info().osrelease().map(str::to_string)) {
            self.kernel_release = Some(release);
        }
        self.vmcoreinfo = s.vmcoreinfo.as_ref().map(|n| n.text.clone());
        self.vmcore = Some(host_entry(s, reason.to_string()));
        Ok(())
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
        // The crashed kernel's VMCOREINFO, from the dump's header (the analysis's map).
        self.vmcoreinfo =
            File::open(&path).ok().and_then(|mut f| kdump::KdumpFile::parse(&mut f).ok()).and_then(|k| k.vmcoreinfo);
        self.pending = None;
        self.vmcore = Some(VmcoreEntry {
            path: file.into(),
            format: VmcoreFormat::Kdump,
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

    /// The crash's signature, from the best source there is: a hang the watchdog found is named
    /// for the function its vCPUs spin in; else the kernel log read from guest memory (it has
    /// everything the console and the Hyper-V crash message have, call traces included); else the
    /// Hyper-V crash message (the console for the oops a panic in it names as its cause when
    /// the message begins after it), else the console, else what the trigger says (a hang, a
    /// triple fault, a crash without a report).
    pub fn find_signature(&self, console: &[u8]) -> Option<signature::Signature> {
        let analysis = self.triage.as_ref().map(|t| &t.analysis);
        if self.trigger == Trigger::GuestHang {
            if let Some(f) = analysis.and_then(crash_analysis::hang_function) {
                return Some(signature::Signature::hang_in(&f));
            }
        }
        let log = self.triage.as_ref().map(|t| t.dmesg.as_str()).filter(|d| !d.is_empty());
        if let Some(s) = log.and_then(signature::from_text) {
            return Some(s);
        }
        let hv_message = self.signals.iter().rev().find_map(|t| match &t.signal {
            CrashSignal::HvCrash { message: Some(m), .. } => Some(m.clone()),
            _ => None,
        });
        signature::from_message_and_console(
            hv_message.as_ref().map(|m| m.as_bytes()),
            &String::from_utf8_lossy(console),
        )
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

    /// The report's `analysis`: what the triage read, or why there is none.
    fn analysis_entry(&self) -> Option<cr::analysis::Analysis> {
        match (&self.triage, &self.triage_error) {
            (Some(t), _) => Some(t.analysis.clone()),
            (None, Some(why)) => Some(cr::analysis::Analysis {
                unread: vec![cr::analysis::Unread { what: "analysis".into(), why: why.clone() }],
                ..Default::default()
            }),
            (None, None) => None,
        }
    }

    /// The complete report.
    pub fn report(&self, outcome: &Outcome, policy: &Policy, guest: &GuestInfo) -> cr::Report {
        self.build_report(Some(outcome), policy, guest)
    }

    /// The report: complete with the `outcome`, else as far as [`Self::state`].
    fn build_report(&self, outcome: Option<&Outcome>, policy: &Policy, guest: &GuestInfo) -> cr::Report {
        let state = if outcome.is_some() { ReportState::Complete } else { self.state };
        let last = |f: &dyn Fn(&CrashSignal) -> bool| self.signals.iter().rev().find(|t| f(&t.signal));
        let pvpanic = last(&|s| matches!(s, CrashSignal::PvPanic { .. })).and_then(|t| match &t.signal {
            CrashSignal::PvPanic { vcpu, bits } => {
                let e = devices::pvpanic::PvPanicEvents::from_bits(*bits);
                Some(cr::Pvpanic {
                    vcpu: Some(*vcpu),
                    bits: Some(*bits),
                    panicked: Some(e.panicked),
                    crash_loaded: Some(e.crash_loaded),
                    shutdown: Some(e.shutdown),
                    at: Some(ts(t.at)),
                })
            }
            _ => None,
        });
        let hyperv_crash = last(&|s| matches!(s, CrashSignal::HvCrash { .. })).and_then(|t| match &t.signal {
            CrashSignal::HvCrash { vcpu, params, message } => Some(cr::HypervCrash {
                vcpu: Some(*vcpu),
                params: Some(params.map(hex).to_vec()),
                message: message.clone(),
                at: Some(ts(t.at)),
            }),
            _ => None,
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
            cr::Vmbus {
                unload_requested_at: Some(ts(r.at)),
                answered: Some(answered),
                unload_completed_at: unload_done.map(|d| ts(d.at)),
                unload_latency_us: latency,
            }
        });
        cr::Report {
            schema: cr::SCHEMA_VERSION,
            crashvmm_version: Some(env!("CARGO_PKG_VERSION").into()),
            kind: Some(cr::Kind::Crash),
            state: Some(state),
            crash_number: Some(self.number),
            trigger: Some(self.trigger),
            detected_at: Some(ts(self.detected_at)),
            finished_at: outcome.map(|_| ts(Utc::now())),
            outcome: outcome.map(|o| o.to_string()),
            policy: Some(policy_entry(policy)),
            guest: Some(cr::Guest { machine: guest.machine(), kernel_release: self.kernel_release.clone() }),
            signals: self.signals.iter().map(signal_entry).collect(),
            signals_dropped: self.signals_dropped,
            pvpanic,
            hyperv_crash,
            vmbus,
            vcpu_registers: self.vcpus.iter().map(vcpu_registers).collect(),
            vmcore: self.vmcore.as_ref().map(VmcoreEntry::to_report),
            vmcore_error: self.vmcore_error.clone(),
            signature: self.signature.as_ref().map(signature_entry),
            analysis: self.analysis_entry(),
            vmcore_pending: self.pending.clone().filter(|_| outcome.is_none()),
            reset_wait: self.reset_wait.clone(),
            vmcore_count: self.vmcore_count.clone(),
            duplicate_of: self.duplicate_of.clone(),
        }
    }

    /// Write report, events and console, fsync everything, and rename the directory to its
    /// final name. Returns that name and the report written there.
    pub fn finish(
        &mut self,
        outcome: &Outcome,
        policy: &Policy,
        guest: &GuestInfo,
        events: &[String],
        console: &[u8],
    ) -> Result<(PathBuf, cr::Report), ReportError> {
        if self.kernel_release.is_none() {
            self.kernel_release = kernel_release_from_console(console);
        }
        write_synced(&self.tmp_dir.join("events.jsonl"), events.concat().as_bytes())?;
        write_synced(&self.tmp_dir.join("console.log"), console)?;
        if let Some(t) = self.triage.as_ref().filter(|t| !t.dmesg.is_empty()) {
            write_synced(&self.tmp_dir.join(DMESG), t.dmesg.as_bytes())?;
        }
        if let Some(f) = self.vmcore.as_ref().map(|v| self.tmp_dir.join(&v.path)) {
            File::open(&f).and_then(|f| f.sync_all()).map_err(io("sync", &f))?;
        }
        // The complete report last: `complete` means every other file is there.
        let report = self.report(outcome, policy, guest);
        replace_synced(&self.tmp_dir.join(REPORT), &cr::to_vec_pretty(&report).unwrap_or_default())?;
        self.state = ReportState::Complete;
        self.pending = None;
        // The name was chosen at the start; taken meanwhile (another crashvmm on the same
        // directory), the next one.
        let stem = crash_stem(&self.detected_at, self.number);
        let dir = rename_into_place(&self.tmp_dir, &self.final_dir, &self.base, &stem)?;
        self.tmp_dir = dir.clone();
        Ok((dir, report))
    }
}

/// An operator's dump (`ctl dump`): `<crash-dir>/<UTC time, ms>-dump/` with `report.json` and
/// `vmcore`, built under a temporary name like a crash directory (the module's text). It is no
/// crash: never queued for delivery, and `crashvmm report` passes it by.
#[derive(Debug)]
pub struct DumpRecord {
    /// The directory being written (temporary name until [`DumpRecord::finish`]).
    pub tmp_dir: PathBuf,
    /// Its name once finished (chosen up front: the answer and the events name it).
    pub final_dir: PathBuf,
    base: PathBuf,
    requested_at: DateTime<Utc>,
    stem: String,
    reason: String,
    live: bool,
    guest: GuestInfo,
    pending: Option<cr::VmcorePending>,
}

impl DumpRecord {
    /// Start an operator's dump under `base` (created if needed): its temporary directory with
    /// a first `report.json` saying the vmcore is being written.
    pub fn begin(base: &Path, reason: &DumpReason, live: bool, guest: &GuestInfo) -> Result<Self, ReportError> {
        files::create_private_dir_all(base).map_err(io("create", base))?;
        let requested_at = Utc::now();
        let stem = format!("{}-dump", requested_at.format("%Y%m%dT%H%M%S%.3fZ"));
        let final_dir = unused_name(base, &stem);
        let tmp_dir = tmp_name(base, &final_dir);
        files::create_private_dir(&tmp_dir).map_err(io("create", &tmp_dir))?;
        let record = Self {
            tmp_dir,
            final_dir,
            base: base.to_owned(),
            requested_at,
            stem,
            reason: reason.to_string(),
            live,
            guest: guest.clone(),
            pending: Some(pending_vmcore(VMCORE, reason.to_string())),
        };
        match record.write_report(None, None) {
            Ok(()) => Ok(record),
            Err(e) => {
                record.abandon();
                Err(e)
            }
        }
    }

    /// Where the vmcore is written until it is complete.
    pub fn vmcore_partial_path(&self) -> PathBuf {
        partial(&self.tmp_dir, VMCORE)
    }

    /// Where the vmcore is once the dump is finished.
    pub fn final_vmcore_path(&self) -> PathBuf {
        self.final_dir.join(VMCORE)
    }

    fn write_report(&self, vmcore: Option<&VmcoreEntry>, live: Option<&LiveStats>) -> Result<(), ReportError> {
        let complete = vmcore.is_some();
        let report = cr::DumpReport {
            schema: cr::SCHEMA_VERSION,
            crashvmm_version: Some(env!("CARGO_PKG_VERSION").into()),
            kind: Some(cr::Kind::OperatorDump),
            state: Some(if complete { ReportState::Complete } else { ReportState::WritingVmcore }),
            trigger: Some(cr::Trigger::Operator),
            reason: Some(self.reason.clone()),
            requested_at: Some(ts(self.requested_at)),
            finished_at: complete.then(|| ts(Utc::now())),
            live: Some(self.live),
            live_stats: live.map(|l| cr::LiveStats {
                snapshot: l.snapshot.as_str().into(),
                pause_us: l.pause_us,
                copied_bytes: l.copied_bytes,
                paused_for_rest: l.paused_for_rest,
            }),
            guest: Some(self.guest.machine()),
            vmcore: vmcore.map(VmcoreEntry::to_report),
            vmcore_pending: self.pending.clone().filter(|_| !complete),
        };
        let data = cr::to_vec_pretty(&report).unwrap_or_default();
        replace_synced(&self.tmp_dir.join(REPORT), &data)?;
        sync_dir(&self.tmp_dir)
    }

    /// The vmcore at [`Self::vmcore_partial_path`] is written: name it, complete the report and
    /// rename the directory into place. Returns the vmcore's final path.
    pub fn finish(&mut self, s: &VmcoreSummary, live: Option<&LiveStats>) -> Result<PathBuf, ReportError> {
        let to = self.tmp_dir.join(VMCORE);
        fs::rename(self.vmcore_partial_path(), &to).map_err(io("rename vmcore to", &to))?;
        let entry = host_entry(s, self.reason.clone());
        self.write_report(Some(&entry), live)?;
        let dir = rename_into_place(&self.tmp_dir, &self.final_dir, &self.base, &self.stem)?;
        self.tmp_dir = dir.clone();
        self.final_dir = dir.clone();
        Ok(dir.join(VMCORE))
    }

    /// The dump failed (its vmcore is removed already): remove the directory, which holds
    /// nothing but the first report.
    pub fn abandon(self) {
        if let Err(e) = fs::remove_dir_all(&self.tmp_dir) {
            log::warn!("cannot remove {}: {e}", self.tmp_dir.display());
        }
    }
}

const REPORT: &str = "report.json";
const VMCORE: &str = "vmcore";
/// The crashed kernel's log, read from its memory (as `makedumpfile --dump-dmesg` prints it).
pub const DMESG: &str = "dmesg.txt";

/// The report's entry for a host-side vmcore.
fn host_entry(s: &VmcoreSummary, reason: String) -> VmcoreEntry {
    VmcoreEntry {
        path: VMCORE.into(),
        format: s.spec.format,
        dump_level: Some(s.spec.dump_level),
        compression: (s.spec.format == VmcoreFormat::Kdump).then_some(s.spec.compression),
        filter: s.filter.clone(),
        bytes: s.bytes,
        allocated_bytes: s.allocated_bytes,
        sha256: s.sha256.clone(),
        source: VmcoreSource::Host,
        duration_ms: s.duration.as_millis() as u64,
        reason,
    }
}

/// Rename the complete, fsynced `tmp` to `wanted` (or, taken meanwhile by another crashvmm on
/// the same directory, the next unused name for `stem`) and fsync `base`. Returns the name.
fn rename_into_place(tmp: &Path, wanted: &Path, base: &Path, stem: &str) -> Result<PathBuf, ReportError> {
    sync_dir(tmp)?;
    // rename(2) would replace an empty directory of that name: check first.
    let dir = if wanted.exists() { unused_name(base, stem) } else { wanted.to_owned() };
    fs::rename(tmp, &dir).map_err(io("rename directory to", &dir))?;
    sync_dir(base)?;
    Ok(dir)
}

/// A crash directory's name without its `.N`: `<UTC time>-<number>`.
fn crash_stem(at: &DateTime<Utc>, number: u32) -> String {
    format!("{}-{number:03}", at.format("%Y%m%dT%H%M%SZ"))
}

/// `<base>/<stem>`, with `.N` appended while that exists.
fn unused_name(base: &Path, stem: &str) -> PathBuf {
    (0..)
        .map(|n| match n {
            0 => base.join(stem),
            _ => base.join(format!("{stem}.{n}")),
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| base.join(stem))
}

/// A temporary directory under the crash directory that a crashvmm no longer running left: a
/// crash directory or operator's dump it did not finish (`report.json` says how far it got).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    /// The crashvmm that wrote it (from its name).
    pub pid: u32,
    /// What its files hold, and the disk space they take (a half vmcore is sparse).
    pub bytes: u64,
    pub allocated_bytes: u64,
    /// From its `report.json`: `crash` or `operator_dump`, the trigger, how far it got, and
    /// when it began (`detected_at` or `requested_at`).
    pub kind: Option<String>,
    pub trigger: Option<String>,
    pub state: Option<String>,
    pub started_at: Option<String>,
    /// Why there is nothing from its report.json (missing, unreadable).
    pub report_error: Option<String>,
}

/// The `.tmp-*-<pid>` entries of `base` whose crashvmm is no longer running (not this
/// process, and no process with that pid), oldest name first. Nothing is removed.
pub fn find_leftovers(base: &Path) -> Vec<Leftover> {
    find_leftovers_with(base, |pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

fn find_leftovers_with(base: &Path, alive: impl Fn(u32) -> bool) -> Vec<Leftover> {
    let Ok(entries) = fs::read_dir(base) else { return Vec::new() };
    let mut found: Vec<Leftover> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(TMP_PREFIX)?.rsplit_once('-')?.1.parse::<u32>().ok()?;
            (!alive(pid)).then(|| leftover(e.path(), pid))
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

fn leftover(path: PathBuf, pid: u32) -> Leftover {
    let (bytes, allocated_bytes) = disk_usage(&path);
    let mut l = Leftover {
        pid,
        bytes,
        allocated_bytes,
        kind: None,
        trigger: None,
        state: None,
        started_at: None,
        report_error: None,
        path,
    };
    let report = l.path.join(REPORT);
    let parsed = fs::read(&report).map_err(|e| format!("cannot read {}: {e}", report.display())).and_then(|t| {
        cr::from_slice::<cr::ReportHead>(&t).map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => format!("{} {e}: {cause}", report.display()),
            None => format!("{} {e}", report.display()),
        })
    });
    match parsed {
        Ok(r) => {
            l.kind = r.kind.map(|k| k.as_str().into());
            l.trigger = r.trigger.map(|t| t.as_str().into());
            l.state = r.state.map(|s| s.as_str().into());
            l.started_at = r.started_at().map(str::to_string);
        }
        Err(e) => l.report_error = Some(e),
    }
    l
}

/// The bytes of the files under `path` (a file or a directory tree), and the space they take.
fn disk_usage(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else { return (0, 0) };
    if !meta.is_dir() {
        return (meta.len(), meta.blocks() * 512);
    }
    fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| disk_usage(&e.path())).fold((0, 0), |(b, a), (eb, ea)| (b + eb, a + ea))
        })
        .unwrap_or((0, 0))
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

/// Replace `path` with `data` atomically: written to `.<name>.tmp` beside it, fsynced, renamed
/// over it (the caller fsyncs the directory).
fn replace_synced(path: &Path, data: &[u8]) -> Result<(), ReportError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_synced(&tmp, data)?;
    fs::rename(&tmp, path).map_err(io("rename to", path))
}

fn sync_dir(dir: &Path) -> Result<(), ReportError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))
}

/// The release from the kernel's "Linux version X (...)" banner.
pub fn kernel_release_from_console(console: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(console);
    let at = text.find("Linux version ")?;
    text[at + 14..].split_whitespace().next().map(str::to_string)
}

fn signal_entry(t: &TimedSignal) -> cr::TimedSignal {
    let signal = match &t.signal {
        CrashSignal::PvPanic { vcpu, bits } => cr::Signal::Pvpanic { vcpu: *vcpu, bits: *bits },
        CrashSignal::HvCrash { vcpu, params, .. } => {
            cr::Signal::HvCrash { vcpu: *vcpu, params: params.map(hex).to_vec() }
        }
        CrashSignal::GuestKexec { vcpu } => cr::Signal::GuestKexec { vcpu: *vcpu },
        CrashSignal::CrashKernelStarted { vcpu } => cr::Signal::CrashKernelStarted { vcpu: *vcpu },
        CrashSignal::CrashDiskWritten { vcpu } => cr::Signal::CrashDiskWritten { vcpu: *vcpu },
        CrashSignal::TripleFault { vcpu } => cr::Signal::TripleFault { vcpu: *vcpu },
        CrashSignal::KvmFailure { vcpu, detail } => cr::Signal::KvmFailure { vcpu: *vcpu, detail: detail.clone() },
        CrashSignal::UnloadRequested { vcpu, answered } => {
            cr::Signal::UnloadRequested { vcpu: *vcpu, answered: *answered }
        }
        CrashSignal::NmiInjected => cr::Signal::NmiInjected,
        CrashSignal::GuestHang { stalled_ms } => cr::Signal::GuestHang { stalled_ms: *stalled_ms },
        CrashSignal::UnloadCompleted { vcpu, latency_us } => {
            cr::Signal::UnloadCompleted { vcpu: *vcpu, latency_us: *latency_us }
        }
    };
    cr::TimedSignal { at: ts(t.at), signal }
}

fn vcpu_registers(v: &VcpuState) -> cr::VcpuRegisters {
    let r = &v.regs;
    let s = &v.sregs;
    let reset = v.is_reset_state();
    cr::VcpuRegisters {
        id: v.id,
        rip: hex(r.rip),
        rsp: hex(r.rsp),
        rbp: hex(r.rbp),
        rflags: hex(r.rflags),
        rax: hex(r.rax),
        rbx: hex(r.rbx),
        rcx: hex(r.rcx),
        rdx: hex(r.rdx),
        rsi: hex(r.rsi),
        rdi: hex(r.rdi),
        r8: hex(r.r8),
        r9: hex(r.r9),
        r10: hex(r.r10),
        r11: hex(r.r11),
        r12: hex(r.r12),
        r13: hex(r.r13),
        r14: hex(r.r14),
        r15: hex(r.r15),
        cs: hex(s.cs.selector as u64),
        ss: hex(s.ss.selector as u64),
        cr0: hex(s.cr0),
        cr2: hex(s.cr2),
        cr3: hex(s.cr3),
        cr4: hex(s.cr4),
        efer: hex(s.efer),
        fs_base: hex(s.fs.base),
        gs_base: hex(s.gs.base),
        registers_reset: reset.then_some(true),
        note: reset.then(|| RESET_NOTE.to_string()),
    }
}

fn policy_entry(p: &Policy) -> cr::Policy {
    cr::Policy {
        on_panic: Some(match p.on_panic {
            OnPanic::Auto => cr::OnPanic::Auto,
            OnPanic::Kdump => cr::OnPanic::Kdump,
            OnPanic::HostDump => cr::OnPanic::HostDump,
            OnPanic::Pause => cr::OnPanic::Pause,
            OnPanic::Ignore => cr::OnPanic::Ignore,
        }),
        after_crash: Some(match p.after_crash {
            AfterCrash::Exit => cr::AfterCrash::Exit,
            AfterCrash::Reset => cr::AfterCrash::Reset,
            AfterCrash::Pause => cr::AfterCrash::Pause,
        }),
        kdump_timeout: Some(p.kdump_timeout.as_secs_f64()),
        host_dump: Some(match p.host_dump {
            HostDump::Never => cr::HostDump::Never,
            HostDump::Fallback => cr::HostDump::Fallback,
            HostDump::Always => cr::HostDump::Always,
        }),
        max_crashes: Some(p.max_crashes),
        hyperv: Some(p.hyperv),
        on_hang: Some(p.on_hang.to_string()),
    }
}

fn signature_entry(s: &signature::Signature) -> cr::Signature {
    cr::Signature {
        title: Some(s.title.clone()),
        frames: Some(s.frames.clone()),
        id: Some(s.id.clone()),
        // The kind's serde name (`page_fault`, ...).
        kind: match serde_json::to_value(s.kind) {
            Ok(serde_json::Value::String(k)) => Some(k),
            _ => None,
        },
    }
}

impl VmcoreEntry {
    /// The report's words for it.
    fn to_report(&self) -> cr::Vmcore {
        cr::Vmcore {
            path: Some(self.path.clone()),
            format: Some(match self.format {
                VmcoreFormat::Kdump => cr::VmcoreFormat::KdumpCompressed,
                VmcoreFormat::Elf => cr::VmcoreFormat::Elf,
            }),
            dump_level: self.dump_level,
            compression: self.compression.map(|c| match c {
                VmcoreCompression::Zlib => cr::Compression::Zlib,
                VmcoreCompression::Lzo => cr::Compression::Lzo,
                VmcoreCompression::None => cr::Compression::None,
            }),
            // The writer's account as it serializes it (the kdump crate's types), with the page
            // counts a reader needs typed.
            filter: self.filter.as_ref().and_then(|f| {
                serde_json::to_value(f)
                    .and_then(serde_json::from_value)
                    .map_err(|e| log::warn!("vmcore filter: {e}"))
                    .ok()
            }),
            bytes: Some(self.bytes),
            allocated_bytes: Some(self.allocated_bytes),
            sha256: self.sha256.clone(),
            source: Some(self.source),
            duration_ms: Some(self.duration_ms),
            reason: Some(self.reason.clone()),
        }
    }
}

/// Why a vCPU's registers may be its reset state (report.json, crashvmm's log).
pub const RESET_NOTE: &str = "these are the registers of a CPU just reset (KVM reinitializes a vCPU that \
                              shut down on AMD), not where the guest was";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
        let (dir, written) =
            first.finish(&Outcome::HostVmcoreWritten, &Policy::default(), &guest(), &events, console).unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with("-001") && name.len() == "20261125T130105Z-001".len(), "{name}");
        let text = fs::read(dir.join("report.json")).unwrap();
        // The report returned is the one written.
        assert_eq!(cr::from_slice::<cr::Report>(&text).unwrap(), written);
        let report: Value = serde_json::from_slice(&text).unwrap();
        // The keys report.json always had (a `null` written, not left out), and `schema`.
        let keys: Vec<&str> = report.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "crash_number",
                "crashvmm_version",
                "detected_at",
                "finished_at",
                "guest",
                "hyperv_crash",
                "kind",
                "outcome",
                "policy",
                "pvpanic",
                "schema",
                "signals",
                "signals_dropped",
                "signature",
                "state",
                "trigger",
                "vcpu_registers",
                "vmbus",
                "vmcore",
                "vmcore_error"
            ]
        );
        assert_eq!(report["schema"], cr::SCHEMA_VERSION);
        assert_eq!(report["signals"][1]["params"][3], "0x1000");
        assert_eq!(
            report["signals"][3],
            serde_json::json!({"at": report["vmbus"]["unload_completed_at"],
            "signal": "vmbus_unload_completed", "vcpu": 0, "latency_us": 42})
        );
        assert_eq!(report["policy"]["kdump_timeout"], 600.0);
        assert_eq!(report["policy"]["on_hang"], "nmi");
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
        let (dir2, _) = again.finish(&Outcome::KdumpCollected, &Policy::default(), &guest(), &[], b"").unwrap();
        assert_ne!(dir, dir2);
        assert!(dir.join("report.json").exists());
    }

    fn read_report(dir: &Path) -> Value {
        serde_json::from_slice(&fs::read(dir.join("report.json")).unwrap()).unwrap()
    }

    fn names(base: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            fs::read_dir(base).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn a_crash_directory_says_how_far_it_got_until_it_is_complete_under_its_name() {
        let base = tempfile::tempdir().unwrap();
        let policy = Policy::default();
        let mut r = CrashRecord::begin(base.path(), 1, Trigger::Pvpanic).unwrap();
        r.record(&CrashSignal::PvPanic { vcpu: 0, bits: 1 });
        r.progress(ReportState::Recording, &policy, &guest()).unwrap();
        let first = read_report(&r.tmp_dir);
        assert_eq!((first["state"].as_str(), first["trigger"].as_str()), (Some("recording"), Some("pvpanic")));
        assert_eq!((first["outcome"].clone(), first["kind"].as_str()), (Value::Null, Some("crash")));
        r.writing_vmcore(&DumpReason::HvCrashReport, &policy, &guest()).unwrap();
        let p = r.vmcore_partial_path();
        assert_eq!(p, r.tmp_dir.join("vmcore.partial"));
        fs::write(&p, b"half a vmcore").unwrap();
        // Killed here: no final name, one leftover that says what it was doing.
        assert!(!r.final_dir.exists());
        let left = find_leftovers_with(base.path(), |_| false);
        assert_eq!(left.len(), 1, "{left:?}");
        let l = &left[0];
        assert_eq!(l.path, r.tmp_dir);
        assert_eq!(l.pid, std::process::id());
        assert!(l.bytes > 13, "the vmcore and the report: {l:?}");
        assert_eq!(
            (l.kind.as_deref(), l.trigger.as_deref(), l.state.as_deref()),
            (Some("crash"), Some("pvpanic"), Some("writing_vmcore"))
        );
        assert_eq!(l.started_at.as_deref(), Some(ts(r.detected_at).as_str()));
        let pending = &read_report(&r.tmp_dir)["vmcore_pending"];
        assert_eq!(pending["file"], "vmcore.partial");
        assert_eq!(pending["reason"], "Hyper-V crash report");
        // Written: named `vmcore`, then the directory is complete under its final name.
        r.commit("vmcore").unwrap();
        assert!(!p.exists() && r.tmp_dir.join("vmcore").is_file());
        let (dir, _) = r.finish(&Outcome::HostVmcoreWritten, &policy, &guest(), &[], b"").unwrap();
        let report = read_report(&dir);
        assert_eq!(report["state"], "complete");
        assert!(report.get("vmcore_pending").is_none(), "{report}");
        assert_eq!(names(&dir), ["console.log", "events.jsonl", "report.json", "vmcore"]);
        assert_eq!(names(base.path()), [dir.file_name().unwrap().to_string_lossy().into_owned()]);
        assert!(find_leftovers_with(base.path(), |_| false).is_empty());
    }

    fn summary(path: PathBuf, bytes: u64) -> VmcoreSummary {
        VmcoreSummary {
            path,
            bytes,
            allocated_bytes: 4096,
            sha256: None,
            duration: std::time::Duration::from_millis(3),
            vmcoreinfo: None,
            spec: Default::default(),
            filter: None,
        }
    }

    #[test]
    fn an_operator_dump_is_built_under_a_temporary_name() {
        let base = tempfile::tempdir().unwrap();
        let mut d = DumpRecord::begin(base.path(), &DumpReason::Operator, false, &guest()).unwrap();
        let name = d.final_dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with("Z-dump") && name.len() == "20261125T130105.123Z-dump".len(), "{name}");
        assert_eq!(
            d.tmp_dir.file_name().unwrap().to_string_lossy(),
            format!(".tmp-{name}-{}", std::process::id()).as_str()
        );
        assert!(!d.final_dir.exists());
        assert_eq!(d.final_vmcore_path(), d.final_dir.join("vmcore"));
        let first = read_report(&d.tmp_dir);
        assert_eq!(
            (first["kind"].as_str(), first["state"].as_str(), first["trigger"].as_str()),
            (Some("operator_dump"), Some("writing_vmcore"), Some("operator"))
        );
        assert_eq!(first["vmcore_pending"]["file"], "vmcore.partial");
        assert_eq!(first["vmcore"], Value::Null);
        // This process wrote it: at a start that can only be a killed run's (the pid reused).
        let left = find_leftovers(base.path());
        assert_eq!(left.iter().map(|l| l.state.as_deref()).collect::<Vec<_>>(), [Some("writing_vmcore")]);
        assert!(find_leftovers_with(base.path(), |_| true).is_empty(), "a live crashvmm's is its own");
        fs::write(d.vmcore_partial_path(), b"a whole vmcore").unwrap();
        let vmcore = d.finish(&summary(d.vmcore_partial_path(), 14), None).unwrap();
        assert_eq!(vmcore, base.path().join(&name).join("vmcore"));
        assert_eq!(fs::read(&vmcore).unwrap(), b"a whole vmcore");
        let report = read_report(vmcore.parent().unwrap());
        assert_eq!((report["state"].as_str(), report["vmcore"]["bytes"].as_u64()), (Some("complete"), Some(14)));
        assert!(report.get("vmcore_pending").is_none(), "{report}");
        assert_eq!(names(base.path()), std::slice::from_ref(&name));
        assert_eq!(names(vmcore.parent().unwrap()), ["report.json", "vmcore"]);
        // A failed one leaves nothing.
        let failed = DumpRecord::begin(base.path(), &DumpReason::Operator, true, &guest()).unwrap();
        failed.abandon();
        assert_eq!(names(base.path()), [name]);
    }

    #[test]
    fn leftovers_are_the_temporaries_of_dead_runs_only() {
        let base = tempfile::tempdir().unwrap();
        for d in ["20261125T130105Z-001", ".upload", ".tmp-no-pid", ".tmp-20261125T130105Z-002-41", ".tmp-x-42"] {
            fs::create_dir(base.path().join(d)).unwrap();
        }
        fs::write(base.path().join(".tmp-20261125T130105Z-002-41/report.json"), b"{not json").unwrap();
        let left = find_leftovers_with(base.path(), |pid| pid == 42);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!((left[0].pid, left[0].kind.as_ref()), (41, None));
        assert!(left[0].report_error.as_deref().unwrap_or_default().contains("is not JSON"), "{left:?}");
        let none = find_leftovers_with(base.path(), |pid| pid == 41)[0].clone();
        assert!(none.report_error.unwrap().contains("cannot read"), "x-42 has no report.json");
        assert!(find_leftovers(Path::new("/nonexistent/crashvmm")).is_empty());
    }

    #[test]
    fn reset_registers_of_a_shut_down_vcpu_are_flagged() {
        let mut v = VcpuState { id: 1, regs: Default::default(), sregs: Default::default() };
        v.regs.rip = 0x1089be;
        v.sregs.cr0 = 0xe000_0011;
        assert_eq!((vcpu_registers(&v).registers_reset, vcpu_registers(&v).note), (None, None));
        // What KVM on AMD leaves after a SHUTDOWN intercept: the INIT state.
        v.regs.rip = 0xfff0;
        v.sregs.cs.base = 0xffff_0000;
        v.sregs.cs.selector = 0xf000;
        v.sregs.cr0 = 0x6000_0010;
        let j = serde_json::to_value(vcpu_registers(&v)).unwrap();
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
        let (dir, _) =
            r.finish(&Outcome::HostVmcoreWritten, &Policy::default(), &guest(), &[], console.as_bytes()).unwrap();
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
        assert_eq!(kernel_release_from_console(b"no banner"), None);
    }
}
