//! The machine-readable event log: JSON Lines, one object per line, each with `ts` (UTC,
//! RFC 3339 with microseconds) and `event`, then the event's own fields.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::names::{SkipReason, SnapshotMethod, Trigger, VmcoreSource};
use crate::sync::lock;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use thiserror::Error;

/// The frames a network device dropped in one boot, by reason (`net_counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetDropped {
    /// Transmit chains that were broken, device-writable, shorter than the header or outside
    /// guest memory.
    pub tx_malformed: u64,
    /// Frames to send larger than a 64 KiB packet.
    pub tx_too_large: u64,
    /// Frames the TAP refused.
    pub tx_backend: u64,
    /// Received frames whose receive chain was malformed, or that were shorter than a header.
    pub rx_malformed: u64,
    /// Received frames larger than their buffers could ever hold.
    pub rx_too_large: u64,
    /// Received frames with an offload the driver did not accept.
    pub rx_offload: u64,
    /// Received frames dropped after a crash until the driver reset the device.
    pub rx_held: u64,
}

impl NetDropped {
    /// Each reason's name (its field's) and count.
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("tx_malformed", self.tx_malformed),
            ("tx_too_large", self.tx_too_large),
            ("tx_backend", self.tx_backend),
            ("rx_malformed", self.rx_malformed),
            ("rx_too_large", self.rx_too_large),
            ("rx_offload", self.rx_offload),
            ("rx_held", self.rx_held),
        ]
    }
}

/// Every event crashvmm records.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The VM is set up and its vCPUs are about to run.
    VmStarted {
        vcpus: u32,
        memory_bytes: u64,
        kernel: String,
    },
    /// The VM ended; `exit_code` is crashvmm's process exit code.
    VmExited {
        exit_code: i32,
        reason: String,
    },
    /// The guest wrote to pvpanic.
    Pvpanic {
        vcpu: u32,
        bits: u8,
        panicked: bool,
        crash_loaded: bool,
        shutdown: bool,
    },
    /// The guest enabled its Hyper-V hypercall page (64-bit values as hex strings).
    HypervEnabled {
        vcpu: u32,
        guest_os_id: String,
        hypercall_gpa: String,
    },
    /// The guest reported a crash through the Hyper-V crash MSRs: P0..P4 as hex strings and,
    /// when it sent one, the crash message (its kernel log tail).
    HvCrash {
        vcpu: u32,
        params: [String; 5],
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_error: Option<String>,
    },
    /// The crashed kernel tore Hyper-V down (GUEST_OS_ID zeroed, hypercall page disabled):
    /// it is about to kexec into its crash kernel.
    GuestKexec {
        vcpu: u32,
    },
    /// The crash kernel runs: after a `guest_kexec`, a kernel set up Hyper-V again (written by
    /// the vCPU thread that saw it), or, during a crash where that was not seen first, the
    /// crash kernel began writing the crash disk (written by crash handling, stamped with the
    /// `crash_disk_written` event's time).
    CrashKernelStarted {
        vcpu: u32,
    },
    /// The guest's first write to the crash disk in this boot (`offset` and `bytes` of that
    /// write; `vcpu` notified the queue): its crash kernel began writing a dump.
    CrashDiskWritten {
        vcpu: u32,
        offset: u64,
        bytes: u64,
    },
    /// VMBus version negotiation succeeded; `vcpu` sent INITIATE_CONTACT, replies go to
    /// `target_vcpu`.
    VmbusConnected {
        vcpu: u32,
        version: String,
        target_vcpu: u32,
    },
    /// The guest sent UNLOAD (on the crash path: right before kexec).
    VmbusUnloadRequested {
        vcpu: u32,
    },
    /// UNLOAD_RESPONSE reached the guest's message page, `latency_us` after the UNLOAD.
    VmbusUnloadCompleted {
        vcpu: u32,
        latency_us: u64,
    },
    /// A VMBus message crashvmm refused (truncated, unknown, out of order).
    VmbusMessageRejected {
        vcpu: u32,
        reason: String,
    },
    /// A crash began (`trigger`: the first signal of it). `signal_ts` is when the signal
    /// that began it was observed (by the vCPU thread that saw the guest's write; for a
    /// `pvpanic` trigger the `ts` of its `pvpanic` event): order a crash's detection by it, not
    /// by this line's `ts`, which is when the main thread got to it.
    CrashDetected {
        trigger: Trigger,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal_ts: Option<String>,
    },
    /// A vmcore was written (`source`: "host" for one crashvmm took from guest memory).
    VmcoreWritten {
        path: String,
        bytes: u64,
        source: VmcoreSource,
        duration_ms: u64,
        /// A live dump: how long the guest was paused for its snapshot.
        #[serde(skip_serializing_if = "Option::is_none")]
        pause_us: Option<u64>,
        /// A live dump: how the snapshot was taken (`uffd` or `fork`).
        #[serde(skip_serializing_if = "Option::is_none")]
        snapshot: Option<SnapshotMethod>,
    },
    /// Writing a vmcore failed; the report says so too.
    VmcoreFailed {
        reason: String,
    },
    /// A vmcore was due and not written, for `reason`; the report says so too. For
    /// `disk_budget`: the most the vmcore could take, and what the budget left; for
    /// `duplicate`: the signature and how many of its vmcores there are.
    VmcoreSkipped {
        reason: SkipReason,
        #[serde(skip_serializing_if = "Option::is_none")]
        needed_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        available_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    },
    /// A delivered crash directory was removed to keep the crash directory within
    /// `--crash-dir-max`.
    CrashDirRemoved {
        dir: String,
        bytes: u64,
    },
    /// The guest's kdump finished and its dump was taken from the crash disk.
    KdumpCompleted {
        bytes: u64,
        duration_ms: u64,
    },
    /// A complete crash directory was queued for delivery (`--upload`); the `upload_*` events
    /// follow.
    UploadQueued {
        dir: String,
    },
    /// A crash directory is complete.
    CrashReport {
        dir: String,
        /// The crash's signature (`report.json` has its frames and kind): the same id for the
        /// same bug across guests, boots and builds of one kernel release.
        #[serde(skip_serializing_if = "Option::is_none")]
        signature_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// The control socket's `dump` started writing a vmcore of the running VM.
    DumpStarted {
        path: String,
        /// A live dump: emitted once the snapshot is taken, with the guest's pause.
        #[serde(skip_serializing_if = "Option::is_none")]
        pause_us: Option<u64>,
        /// A live dump: how the snapshot was taken (`uffd` or `fork`).
        #[serde(skip_serializing_if = "Option::is_none")]
        snapshot: Option<SnapshotMethod>,
    },
    /// At start: a temporary directory under the crash directory that a crashvmm no longer
    /// running (`pid`) left: a crash directory or operator's dump it did not finish. Kept, not
    /// removed. `kind`, `trigger`, `state` (how far it got) and `started_at` are what its
    /// `report.json` says; `report_error` why there is none.
    StaleTemporary {
        path: String,
        pid: u32,
        bytes: u64,
        allocated_bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        trigger: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        started_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        report_error: Option<String>,
    },
    /// The watchdog found the guest making no progress for `seconds`.
    GuestHang {
        seconds: f64,
    },
    /// A vmcore being written: `bytes` of `total` done (every tenth or so).
    DumpProgress {
        bytes: u64,
        total: u64,
    },
    /// An NMI was injected into `vcpu` (control socket `inject-nmi`, or `--on-hang nmi`).
    NmiInjected {
        vcpu: u32,
    },
    /// The vCPUs were paused / resumed from the control socket.
    VmPaused,
    VmResumed,
    /// The control socket's `sysrq`: a break and `key` are queued on the serial console (the
    /// host's trigger; what the guest does with it follows in its own events).
    SysrqSent {
        key: String,
    },
    /// A crash loop (`--reset-backoff`): the guest boots again only after `wait_ms`, this
    /// crash being number `streak` in a row of its signature.
    ResetDelayed {
        wait_ms: u64,
        streak: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature_id: Option<String>,
    },
    /// The VM was reset after a crash (`--after-crash reset`) and boots again.
    VmReset {
        crashes: u32,
    },
    /// A network device's counts for the boot that ended (once its thread has stopped):
    /// frames and bytes moved each way, and the frames dropped, by reason.
    NetCounters {
        device: String,
        tap: String,
        tx_frames: u64,
        tx_bytes: u64,
        rx_frames: u64,
        rx_bytes: u64,
        dropped: NetDropped,
    },
    /// Records of `source` (an event the guest causes at will: `pvpanic`,
    /// `vmbus_message_rejected`, ...) that were left out of the event log and stderr since the
    /// last one recorded in full or the last summary: a guest that repeats itself is recorded
    /// [`GUEST_BURST`] times in full, then about once a second, with this count.
    EventsSuppressed {
        source: String,
        count: u64,
    },
    /// A crashvmm thread made a system call its seccomp filter forbids; crashvmm ends (exit code
    /// 159). Written by the SIGSYS handler itself (see `seccomp`), so it is the log's last line.
    SeccompViolation {
        thread: String,
        syscall: i64,
        name: String,
    },
    /// Delivery to the object store (`--upload`): the `upload_*` events (started, progress,
    /// completed, failed, abandoned), recorded as the delivery crate names and fills them.
    /// Untagged: the inner event carries its own `event` name. Keep it last (serde wants
    /// untagged variants at the end).
    #[serde(untagged)]
    Upload(delivery::DeliveryEvent),
}

impl Event {
    /// The throttling source of an event the guest can cause as often as it likes (one per
    /// write to a port or MSR, one per hypercall), `None` for crashvmm's own events.
    pub fn guest_source(&self) -> Option<&'static str> {
        Some(match self {
            Event::Pvpanic { .. } => "pvpanic",
            Event::HypervEnabled { .. } => "hyperv_enabled",
            Event::HvCrash { .. } => "hv_crash",
            Event::GuestKexec { .. } => "guest_kexec",
            Event::CrashKernelStarted { .. } => "crash_kernel_started",
            Event::CrashDiskWritten { .. } => "crash_disk_written",
            Event::VmbusConnected { .. } => "vmbus_connected",
            Event::VmbusUnloadRequested { .. } => "vmbus_unload_requested",
            Event::VmbusUnloadCompleted { .. } => "vmbus_unload_completed",
            Event::VmbusMessageRejected { .. } => "vmbus_message_rejected",
            _ => return None,
        })
    }
}

/// Records of one source a guest may make in a row before they are throttled.
pub const GUEST_BURST: u32 = 32;
/// Then one record of that source in full per this much time (the budget refills at this
/// rate, up to [`GUEST_BURST`]) ...
const GUEST_REFILL: Duration = Duration::from_secs(1);
/// ... and at most one `events_suppressed` summary per source per this much time.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// Per-source budgets for guest-caused records (events and their log lines): a token bucket
/// of [`GUEST_BURST`] refilled once per [`GUEST_REFILL`], and a count of what was left out,
/// reported at most once per [`SUMMARY_EVERY`]. Pure: the caller passes the time.
#[derive(Default)]
pub struct Throttle {
    sources: HashMap<&'static str, Budget>,
}

struct Budget {
    tokens: u32,
    refilled: Instant,
    /// Left out since the last record or summary.
    suppressed: u64,
    last_summary: Instant,
}

/// What to do with one record of a throttled source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// Record it in full.
    pub record: bool,
    /// First record a summary: this many of the source were left out before it.
    pub summary: Option<u64>,
}

impl Throttle {
    pub fn admit(&mut self, source: &'static str, now: Instant) -> Admit {
        let b = self.sources.entry(source).or_insert(Budget {
            tokens: GUEST_BURST,
            refilled: now,
            suppressed: 0,
            last_summary: now,
        });
        // Whole refill periods since the last refill (capped: a full bucket is full).
        let elapsed = now.saturating_duration_since(b.refilled).as_nanos() / GUEST_REFILL.as_nanos();
        let periods = u32::try_from(elapsed.min(u128::from(GUEST_BURST))).unwrap_or(GUEST_BURST);
        if periods > 0 {
            b.tokens = (b.tokens + periods).min(GUEST_BURST);
            b.refilled = if b.tokens == GUEST_BURST { now } else { b.refilled + GUEST_REFILL * periods };
        }
        if b.tokens > 0 {
            b.tokens -= 1;
            let summary = (b.suppressed > 0).then_some(b.suppressed);
            b.suppressed = 0;
            if summary.is_some() {
                b.last_summary = now;
            }
            return Admit { record: true, summary };
        }
        b.suppressed += 1;
        if now.saturating_duration_since(b.last_summary) >= SUMMARY_EVERY {
            b.last_summary = now;
            let count = std::mem::take(&mut b.suppressed);
            return Admit { record: false, summary: Some(count) };
        }
        Admit { record: false, summary: None }
    }

    /// Every source's count still unreported (taken: the counts start again from zero).
    pub fn take_pending(&mut self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<_> = self
            .sources
            .iter_mut()
            .filter(|(_, b)| b.suppressed > 0)
            .map(|(s, b)| (*s, std::mem::take(&mut b.suppressed)))
            .collect();
        out.sort();
        out
    }
}

/// Bytes between two `dump_progress` events of a vmcore of `total` bytes: a tenth.
pub fn progress_step(total: u64) -> u64 {
    (total / 10).max(1)
}

/// A progress callback for the vmcore writer that records `dump_progress` events at every
/// tenth of the file.
pub fn dump_progress(events: &EventLog) -> impl Fn(u64, u64) + Sync + '_ {
    let last = std::sync::atomic::AtomicU64::new(0);
    move |bytes, total| {
        let tenth = bytes / progress_step(total);
        if tenth > last.load(std::sync::atomic::Ordering::Relaxed) {
            last.store(tenth, std::sync::atomic::Ordering::Relaxed);
            events.emit(Event::DumpProgress { bytes, total });
        }
    }
}

/// A time as the event log writes it: RFC 3339, UTC, microseconds.
pub fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A 64-bit value as the event log writes it.
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

#[derive(Serialize)]
struct Record<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event,
}

#[derive(Debug, Error)]
pub enum EventLogError {
    #[error("cannot create event log {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Lines kept in memory for crash directories.
const MEMORY_LINES: usize = 100_000;

/// A cheap-to-clone handle on the event log. Writes are whole lines, so a reader (or a crash
/// of crashvmm itself) never sees half a record. Every line is also kept in memory (the last
/// [`MEMORY_LINES`]) so that each crash directory gets its own `events.jsonl`.
#[derive(Clone, Default)]
pub struct EventLog {
    file: Option<Arc<Mutex<File>>>,
    memory: Arc<Mutex<Memory>>,
    /// Control-socket subscribers (non-blocking; dropped when they cannot keep up).
    subscribers: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
    /// Budgets of the records a guest causes at will.
    throttle: Arc<Mutex<Throttle>>,
    /// Told of every record (`--metrics-file`'s metrics).
    observer: Option<Arc<dyn Observer>>,
}

/// What is told of every event recorded, by whichever thread records it.
pub trait Observer: Send + Sync {
    fn observe(&self, event: &Event, at: DateTime<Utc>);
}

#[derive(Default)]
struct Memory {
    /// Sequence number of `lines[0]`.
    first: usize,
    lines: std::collections::VecDeque<String>,
}

impl EventLog {
    /// An event log that records nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn create(path: &Path) -> Result<Self, EventLogError> {
        let file = crate::files::create_output(path, "events")
            .map_err(|source| EventLogError::Create { path: path.to_owned(), source })?;
        Ok(Self { file: Some(Arc::new(Mutex::new(file))), ..Self::default() })
    }

    /// The same log, with `observer` told of every record from now on (set before the log is
    /// handed out: clones made earlier do not tell it).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The log file's descriptor (for the seccomp violation report), if there is a file.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.file.as_ref().map(|f| lock(f).as_raw_fd())
    }

    /// Serialize one record (with the current time) as a line ending in `\n`.
    pub fn format(event: &Event) -> String {
        Self::format_at(event, Utc::now())
    }

    fn format_at(event: &Event, at: DateTime<Utc>) -> String {
        let record = Record { ts: ts(at), event };
        // Serializing plain strings and numbers cannot fail.
        let mut line = serde_json::to_string(&record).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Record an event now. A write error is logged, never fatal: the VM matters more.
    pub fn emit(&self, event: Event) {
        self.emit_at(event, Utc::now());
    }

    /// Record an event the guest caused now; whether it was recorded in full. An event the
    /// guest causes at will ([`Event::guest_source`]) is throttled, and its caller logs it
    /// only when it was recorded.
    pub fn emit_guest(&self, event: Event) -> bool {
        self.emit_at(event, Utc::now())
    }

    /// Record an event observed at `at` (the time its `ts` says); whether it was recorded in
    /// full (see [`Self::emit_guest`]).
    pub fn emit_at(&self, event: Event, at: DateTime<Utc>) -> bool {
        if let Some(source) = event.guest_source() {
            if !self.admit(source, at) {
                return false;
            }
        }
        self.write(&event, at);
        true
    }

    /// Whether a guest-caused record of `source` without an event of its own (a log line)
    /// is within its budget; a summary of what was left out is recorded first when due.
    pub fn admit(&self, source: &'static str, at: DateTime<Utc>) -> bool {
        let admit = lock(&self.throttle).admit(source, Instant::now());
        if let Some(count) = admit.summary {
            self.suppressed(source, count, at);
        }
        admit.record
    }

    /// Record the counts of throttled records not yet reported (before a crash directory is
    /// written and when the VM ends, so that no count is lost).
    pub fn flush_suppressed(&self) {
        let pending = lock(&self.throttle).take_pending();
        for (source, count) in pending {
            self.suppressed(source, count, Utc::now());
        }
    }

    fn suppressed(&self, source: &str, count: u64, at: DateTime<Utc>) {
        log::warn!("the guest repeats itself: {count} more {source} records left out of the log (rate-limited)");
        self.write(&Event::EventsSuppressed { source: source.to_string(), count }, at);
    }

    fn write(&self, event: &Event, at: DateTime<Utc>) {
        log::debug!("event: {event:?}");
        let line = Self::format_at(event, at);
        {
            let mut m = lock(&self.memory);
            m.lines.push_back(line.clone());
            if m.lines.len() > MEMORY_LINES {
                m.lines.pop_front();
                m.first += 1;
            }
        }
        // Nothing after the SIGSYS handler's last line (`sync::EVENT_LOG`).
        if let Some(file) = self.file.as_ref().filter(|_| crate::sync::EVENT_LOG.enter()) {
            let mut f = lock(file);
            if let Err(e) = f.write_all(line.as_bytes()) {
                log::error!("cannot write to the event log: {e}");
            }
            drop(f);
            crate::sync::EVENT_LOG.leave();
        }
        // A subscriber that cannot take the whole line now is dropped: it never blocks the VM.
        lock(&self.subscribers).retain_mut(|s| s.write_all(line.as_bytes()).is_ok());
        if let Some(o) = &self.observer {
            o.observe(event, at);
        }
    }

    /// Stream every later record to `stream` (set non-blocking here).
    pub fn subscribe(&self, stream: std::os::unix::net::UnixStream) {
        if stream.set_nonblocking(true).is_ok() {
            lock(&self.subscribers).push(stream);
        }
    }

    /// Subscribers now (each holds a descriptor; one that went away is dropped at the next
    /// record).
    pub fn subscribers(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// A mark for [`since`](Self::since): the sequence number of the next line.
    pub fn mark(&self) -> usize {
        let m = lock(&self.memory);
        m.first + m.lines.len()
    }

    /// The lines recorded since `mark` (those still in memory).
    pub fn since(&self, mark: usize) -> Vec<String> {
        let m = lock(&self.memory);
        m.lines.iter().skip(mark.saturating_sub(m.first)).cloned().collect()
    }

    /// Flush the log to stable storage.
    pub fn sync(&self) {
        if let Some(file) = &self.file {
            let f = lock(file);
            if let Err(e) = f.sync_all() {
                log::warn!("cannot sync the event log: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_with_ts_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::create(&path).unwrap();
        log.emit(Event::VmStarted { vcpus: 2, memory_bytes: 1 << 30, kernel: "/k".into() });
        log.clone().emit(Event::VmExited { exit_code: 0, reason: "poweroff".into() });
        log.sync();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert!(text.lines().all(|l| l.starts_with("{\"ts\":\"")));
        assert_eq!(lines[0]["event"], "vm_started");
        assert_eq!(lines[0]["vcpus"], 2);
        assert_eq!(lines[0]["memory_bytes"], 1u64 << 30);
        assert_eq!(lines[1]["event"], "vm_exited");
        assert_eq!(lines[1]["exit_code"], 0);
        let mark = log.mark();
        log.emit(Event::CrashDetected { trigger: Trigger::Pvpanic, signal_ts: None });
        assert_eq!(log.since(mark).len(), 1);
        assert!(log.since(mark)[0].contains("crash_detected"));
        assert_eq!(log.since(0).len(), 3);
        let ts = lines[0]["ts"].as_str().unwrap();
        // 2026-11-25T12:34:56.123456Z
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z'));
        chrono::DateTime::parse_from_rfc3339(ts).unwrap();
    }

    /// The vocabulary's enums serialize to the very strings the log carried when these fields
    /// were strings: a reader of `events.jsonl` sees the same lines.
    #[test]
    fn vocabulary_fields_are_written_as_their_names() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-05T01:02:03.456789Z").unwrap().with_timezone(&Utc);
        let line = |e: Event| EventLog::format_at(&e, at);
        assert_eq!(
            line(Event::SysrqSent { key: "c".into() }),
            "{\"ts\":\"2026-12-05T01:02:03.456789Z\",\"event\":\"sysrq_sent\",\"key\":\"c\"}\n"
        );
        assert_eq!(
            line(Event::CrashDetected { trigger: Trigger::HvCrash, signal_ts: None }),
            "{\"ts\":\"2026-12-05T01:02:03.456789Z\",\"event\":\"crash_detected\",\"trigger\":\"hv_crash\"}\n"
        );
        assert_eq!(
            line(Event::VmcoreWritten {
                path: "/c/vmcore".into(),
                bytes: 10,
                source: VmcoreSource::Host,
                duration_ms: 3,
                pause_us: Some(7),
                snapshot: Some(SnapshotMethod::Uffd),
            }),
            "{\"ts\":\"2026-12-05T01:02:03.456789Z\",\"event\":\"vmcore_written\",\"path\":\"/c/vmcore\",\
             \"bytes\":10,\"source\":\"host\",\"duration_ms\":3,\"pause_us\":7,\"snapshot\":\"uffd\"}\n"
        );
        assert_eq!(
            line(Event::VmcoreWritten {
                path: "/c/vmcore".into(),
                bytes: 10,
                source: VmcoreSource::Guest,
                duration_ms: 3,
                pause_us: None,
                snapshot: None,
            }),
            "{\"ts\":\"2026-12-05T01:02:03.456789Z\",\"event\":\"vmcore_written\",\"path\":\"/c/vmcore\",\
             \"bytes\":10,\"source\":\"guest\",\"duration_ms\":3}\n"
        );
        assert_eq!(
            line(Event::DumpStarted { path: "/d".into(), pause_us: Some(1), snapshot: Some(SnapshotMethod::Fork) }),
            "{\"ts\":\"2026-12-05T01:02:03.456789Z\",\"event\":\"dump_started\",\"path\":\"/d\",\"pause_us\":1,\
             \"snapshot\":\"fork\"}\n"
        );
    }

    #[test]
    fn dump_progress_reports_each_tenth_once() {
        let log = EventLog::disabled();
        let report = dump_progress(&log);
        for done in (0..=1000u64).step_by(7) {
            report(done, 1000);
        }
        report(1000, 1000);
        let lines = log.since(0);
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert!(lines.iter().all(|l| l.contains("dump_progress") && l.contains("\"total\":1000")));
    }

    /// A source within its burst is recorded in full; past it, one record per refill period,
    /// and the count of what was left out at most once per summary period.
    #[test]
    fn a_guest_flood_is_recorded_in_full_then_counted() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..GUEST_BURST {
            assert_eq!(t.admit("pvpanic", t0), Admit { record: true, summary: None });
        }
        // The burst is spent: 1000 more in the same instant are counted, not recorded.
        for _ in 0..1000 {
            assert_eq!(t.admit("pvpanic", t0), Admit { record: false, summary: None });
        }
        // Another source has a budget of its own.
        assert_eq!(t.admit("vmbus_message_rejected", t0), Admit { record: true, summary: None });
        // A second later: one token back, and the count comes with the record it lets through.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.admit("pvpanic", t1), Admit { record: true, summary: Some(1000) });
        assert_eq!(t.admit("pvpanic", t1), Admit { record: false, summary: None });
        // Nothing pending but that one; taking it resets it.
        assert_eq!(t.take_pending(), vec![("pvpanic", 1)]);
        assert_eq!(t.take_pending(), vec![]);
        // A flood of a million writes over 100 s gives ~100 full records and ~100 summaries.
        let (mut full, mut summaries, mut counted) = (0u64, 0u64, 0u64);
        for i in 0..1_000_000u64 {
            let a = t.admit("pvpanic", t1 + Duration::from_micros(i * 100));
            full += u64::from(a.record);
            summaries += u64::from(a.summary.is_some());
            counted += a.summary.unwrap_or(0);
        }
        counted += t.take_pending().iter().map(|(_, n)| n).sum::<u64>();
        assert!((99..=101).contains(&full), "{full}");
        assert!((99..=101).contains(&summaries), "{summaries}");
        assert_eq!(full + counted, 1_000_000);
        // Quiet for long enough, the whole burst is back.
        let later = t1 + Duration::from_secs(1000);
        for _ in 0..GUEST_BURST {
            assert!(t.admit("pvpanic", later).record);
        }
        assert!(!t.admit("pvpanic", later).record);
    }

    #[test]
    fn guest_events_past_their_budget_become_one_summary() {
        let log = EventLog::disabled();
        let pvpanic = || Event::Pvpanic { vcpu: 0, bits: 1, panicked: true, crash_loaded: false, shutdown: false };
        let recorded = (0..500).filter(|_| log.emit_guest(pvpanic())).count();
        assert_eq!(recorded, GUEST_BURST as usize);
        // crashvmm's own events are never throttled.
        for _ in 0..500 {
            assert!(log.emit_guest(Event::VmPaused));
        }
        log.flush_suppressed();
        let lines = log.since(0);
        assert_eq!(lines.iter().filter(|l| l.contains("\"event\":\"pvpanic\"")).count(), GUEST_BURST as usize);
        let summary: Vec<&String> = lines.iter().filter(|l| l.contains("events_suppressed")).collect();
        assert_eq!(summary.len(), 1, "{summary:?}");
        let v: serde_json::Value = serde_json::from_str(summary[0]).unwrap();
        assert_eq!(v["source"], "pvpanic");
        assert_eq!(v["count"], 500 - GUEST_BURST as u64);
    }

    #[test]
    fn upload_events_are_recorded_as_the_upload_variants_recorded_them() {
        use delivery::DeliveryEvent as D;
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-05T01:02:03.456789Z").unwrap().with_timezone(&Utc);
        let ts = "{\"ts\":\"2026-12-05T01:02:03.456789Z\",";
        let cases = [
            (
                D::Started { dir: "/c/d".into(), url: "s3://b/p/d".into() },
                r#""event":"upload_started","dir":"/c/d","url":"s3://b/p/d"}"#,
            ),
            (
                D::Progress { dir: "/c/d".into(), bytes: 5, total: 9 },
                r#""event":"upload_progress","dir":"/c/d","bytes":5,"total":9}"#,
            ),
            (
                D::Completed { dir: "/c/d".into(), url: "s3://b/p/d".into(), bytes: 9 },
                r#""event":"upload_completed","dir":"/c/d","url":"s3://b/p/d","bytes":9}"#,
            ),
            (
                D::Failed { dir: "/c/d".into(), error: "503".into(), retry_in_s: 2.0 },
                r#""event":"upload_failed","dir":"/c/d","error":"503","retry_in_s":2.0}"#,
            ),
            (
                D::Abandoned { dir: Some("/c/d".into()), error: "403".into(), job: "/c/.upload/failed/j.json".into() },
                r#""event":"upload_abandoned","dir":"/c/d","error":"403","job":"/c/.upload/failed/j.json"}"#,
            ),
            (
                D::Abandoned { dir: None, error: "not a job file".into(), job: "/c/.upload/failed/x.json".into() },
                r#""event":"upload_abandoned","error":"not a job file","job":"/c/.upload/failed/x.json"}"#,
            ),
        ];
        for (event, rest) in cases {
            assert_eq!(EventLog::format_at(&Event::Upload(event), at), format!("{ts}{rest}\n"));
        }
        // A path that is not UTF-8 is recorded lossily, as before, not left out.
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/c/\xff");
        let line = EventLog::format_at(&Event::Upload(D::Progress { dir: odd.into(), bytes: 0, total: 0 }), at);
        assert!(line.contains("\"dir\":\"/c/\u{fffd}\""), "{line}");
    }

    #[test]
    fn emit_at_stamps_the_given_time() {
        let log = EventLog::disabled();
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-05T01:02:03.456789Z").unwrap().with_timezone(&Utc);
        log.emit_at(Event::VmPaused, at);
        assert!(log.since(0)[0].starts_with("{\"ts\":\"2026-12-05T01:02:03.456789Z\""), "{:?}", log.since(0));
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let err = EventLog::create(Path::new("/nonexistent/dir/events.jsonl")).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/dir/events.jsonl"));
    }
}
