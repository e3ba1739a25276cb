//! `--metrics-file`: crashvmm's metrics in the OpenMetrics text format, for node_exporter's
//! textfile collector and anything else that scrapes files: written to a temporary file beside
//! it and renamed over, so a reader never sees half of one.
//!
//! The numbers are the event log's: every event recorded passes through [`Metrics::observe`]
//! (`EventLog` calls it, whichever thread emits), so the file and `events.jsonl` agree by
//! construction. The exposition is `prometheus-client`'s. A thread of its own (`metrics`, with
//! its own seccomp filter: the vCPU threads that record events may not open files) rewrites the
//! file when a metric changed, woken through a channel that holds at most one wake-up (changes
//! that come while it writes are taken by its next write); `finish` writes the last state and
//! ends it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use thiserror::Error;

use crate::events::{Event, Observer};
use crate::seccomp::{self, ThreadKind};
use crate::sync::lock;

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("cannot write the metrics file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the metrics")]
    Encode(#[source] std::fmt::Error),
    #[error("cannot start the metrics thread")]
    Thread(#[source] std::io::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 MiB to 64 TiB, by 4.
fn byte_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1024.0 * 1024.0, 4.0, 14))
}

/// 10 ms to about 11 h, by 4.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 12))
}

/// 10 µs to about 10 s, by 4.
fn pause_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 11))
}

/// Every metric, registered once.
struct Families {
    crashes: Family<TriggerLabel, Counter>,
    crash_reports: Counter,
    vmcores_written: Family<SourceLabel, Counter>,
    vmcore_bytes: Histograms<SourceLabel>,
    vmcore_duration: Histograms<SourceLabel>,
    vmcores_skipped: Family<ReasonLabel, Counter>,
    vmcores_failed: Counter,
    kdump_collections: Counter,
    kdump_duration: Histogram,
    crash_dirs_removed: Counter,
    crash_dir_removed_bytes: Counter,
    uploads: Family<ResultLabel, Counter>,
    upload_bytes: Counter,
    upload_queue: Gauge,
    live_dump_pause: Histogram,
    guest_boots: Counter,
    guest_boot_time: Gauge<f64, AtomicU64>,
    net_frames: Family<NetLabel, Counter>,
    net_bytes: Family<NetLabel, Counter>,
    net_dropped: Family<NetDropLabel, Counter>,
}

impl Families {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            crashes: Family::default(),
            crash_reports: Counter::default(),
            vmcores_written: Family::default(),
            vmcore_bytes: Family::new_with_constructor(byte_buckets),
            vmcore_duration: Family::new_with_constructor(duration_buckets),
            vmcores_skipped: Family::default(),
            vmcores_failed: Counter::default(),
            kdump_collections: Counter::default(),
            kdump_duration: duration_buckets(),
            crash_dirs_removed: Counter::default(),
            crash_dir_removed_bytes: Counter::default(),
            uploads: Family::default(),
            upload_bytes: Counter::default(),
            upload_queue: Gauge::default(),
            live_dump_pause: pause_buckets(),
            guest_boots: Counter::default(),
            guest_boot_time: Gauge::default(),
            net_frames: Family::default(),
            net_bytes: Family::default(),
            net_dropped: Family::default(),
        };
        let r = registry;
        r.register("crashes", "Crashes detected, by trigger", f.crashes.clone());
        r.register("crash_reports", "Crash directories completed", f.crash_reports.clone());
        r.register(
            "vmcores_written",
            "Vmcores written (host: from guest memory; guest: its kdump)",
            f.vmcores_written.clone(),
        );
        r.register_with_unit("vmcore_size", "Size of each vmcore written", Unit::Bytes, f.vmcore_bytes.clone());
        r.register_with_unit("vmcore_duration", "Time to write each vmcore", Unit::Seconds, f.vmcore_duration.clone());
        r.register("vmcores_skipped", "Vmcores due and not written, by reason", f.vmcores_skipped.clone());
        r.register("vmcores_failed", "Vmcores whose writing failed", f.vmcores_failed.clone());
        r.register("kdump_collections", "Guest kdumps collected from the crash disk", f.kdump_collections.clone());
        r.register_with_unit(
            "kdump_duration",
            "From the guest's kexec to its dump collected",
            Unit::Seconds,
            f.kdump_duration.clone(),
        );
        r.register(
            "crash_dirs_removed",
            "Delivered crash directories removed for --crash-dir-max",
            f.crash_dirs_removed.clone(),
        );
        r.register_with_unit(
            "crash_dir_removed",
            "What those removals freed",
            Unit::Bytes,
            f.crash_dir_removed_bytes.clone(),
        );
        r.register(
            "uploads",
            "Crash directory uploads, by result (completed, failed attempt, abandoned)",
            f.uploads.clone(),
        );
        r.register_with_unit("upload", "Bytes delivered to the store", Unit::Bytes, f.upload_bytes.clone());
        r.register("upload_queue_depth", "Crash directories queued for delivery", f.upload_queue.clone());
        r.register_with_unit(
            "live_dump_pause",
            "The guest's pause for each live dump's snapshot",
            Unit::Seconds,
            f.live_dump_pause.clone(),
        );
        r.register("guest_boots", "Boots of the guest (the first and each reset)", f.guest_boots.clone());
        r.register_with_unit(
            "guest_boot_time",
            "When the guest's current boot started (Unix time; its uptime is now minus this)",
            Unit::Seconds,
            f.guest_boot_time.clone(),
        );
        r.register(
            "net_frames",
            "Frames a network device moved, by device and direction (tx: from the guest), counted at each boot's end",
            f.net_frames.clone(),
        );
        r.register_with_unit("net", "What those frames held", Unit::Bytes, f.net_bytes.clone());
        r.register("net_dropped", "Frames a network device dropped, by device and reason", f.net_dropped.clone());
        f
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetLabel {
    device: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetDropLabel {
    device: String,
    reason: &'static str,
}

/// The metrics, shared by every handle of the event log.
pub struct Metrics {
    registry: Registry,
    f: Families,
    /// Jobs queued for delivery (the gauge, kept from going below zero).
    queued: AtomicI64,
    /// Wakes the writer thread (capacity one: a pending wake-up covers later changes).
    wake: Mutex<Option<SyncSender<()>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics at zero, with `queued` crash directories already waiting for delivery.
    pub fn new(queued: usize) -> Self {
        let mut registry = Registry::with_prefix("crashvmm");
        let f = Families::register(&mut registry);
        f.upload_queue.set(queued as i64);
        Self { registry, f, queued: AtomicI64::new(queued as i64), wake: Mutex::new(None) }
    }
}

impl Observer for Metrics {
    /// Count `event` (recorded at `at`), and wake the writer when a metric changed.
    fn observe(&self, event: &Event, at: DateTime<Utc>) {
        if self.count(event, at) {
            if let Some(wake) = lock(&self.wake).as_ref() {
                // Full: a wake-up is pending, and the write it brings reads this change too.
                if let Err(TrySendError::Disconnected(())) = wake.try_send(()) {
                    log::debug!("the metrics writer has ended");
                }
            }
        }
    }
}

impl Metrics {
    /// Whether a metric changed.
    fn count(&self, event: &Event, at: DateTime<Utc>) -> bool {
        let f = &self.f;
        let seconds = |ms: u64| ms as f64 / 1000.0;
        match event {
            Event::VmStarted { .. } | Event::VmReset { .. } => {
                f.guest_boots.inc();
                f.guest_boot_time.set(at.timestamp_micros() as f64 / 1e6);
            }
            Event::CrashDetected { trigger, .. } => {
                f.crashes.get_or_create(&TriggerLabel { trigger: trigger.to_string() }).inc();
            }
            Event::CrashReport { .. } => {
                f.crash_reports.inc();
            }
            Event::VmcoreWritten { bytes, source, duration_ms, .. } => {
                let label = SourceLabel { source: source.as_str().into() };
                f.vmcores_written.get_or_create(&label).inc();
                f.vmcore_bytes.get_or_create(&label).observe(*bytes as f64);
                f.vmcore_duration.get_or_create(&label).observe(seconds(*duration_ms));
            }
            Event::VmcoreSkipped { reason, .. } => {
                f.vmcores_skipped.get_or_create(&ReasonLabel { reason: reason.as_str().into() }).inc();
            }
            Event::VmcoreFailed { .. } => {
                f.vmcores_failed.inc();
            }
            Event::KdumpCompleted { duration_ms, .. } => {
                f.kdump_collections.inc();
                f.kdump_duration.observe(seconds(*duration_ms));
            }
            Event::CrashDirRemoved { bytes, .. } => {
                f.crash_dirs_removed.inc();
                f.crash_dir_removed_bytes.inc_by(*bytes);
            }
            Event::DumpStarted { pause_us: Some(us), .. } => {
                f.live_dump_pause.observe(*us as f64 / 1e6);
            }
            Event::NetCounters { device, tx_frames, tx_bytes, rx_frames, rx_bytes, dropped, .. } => {
                for (direction, frames, bytes) in [("tx", tx_frames, tx_bytes), ("rx", rx_frames, rx_bytes)] {
                    let label = NetLabel { device: device.clone(), direction };
                    f.net_frames.get_or_create(&label).inc_by(*frames);
                    f.net_bytes.get_or_create(&label).inc_by(*bytes);
                }
                for (reason, n) in dropped.by_reason() {
                    f.net_dropped.get_or_create(&NetDropLabel { device: device.clone(), reason }).inc_by(n);
                }
            }
            Event::UploadQueued { .. } => self.queue(1),
            Event::Upload(d) => {
                use delivery::DeliveryEvent as D;
                let result = match d {
                    D::Completed { bytes, .. } => {
                        f.upload_bytes.inc_by(*bytes);
                        self.queue(-1);
                        "completed"
                    }
                    D::Failed { .. } => "failed",
                    D::Abandoned { .. } => {
                        self.queue(-1);
                        "abandoned"
                    }
                    D::Started { .. } | D::Progress { .. } => return false,
                };
                f.uploads.get_or_create(&ResultLabel { result: result.into() }).inc();
            }
            _ => return false,
        }
        true
    }

    fn queue(&self, by: i64) {
        let now = (self.queued.fetch_add(by, Ordering::Relaxed) + by).max(0);
        self.f.upload_queue.set(now);
    }

    /// The OpenMetrics text of every metric now.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).map_err(MetricsError::Encode)?;
        Ok(text)
    }
}

/// The `metrics` thread and what ends it.
pub struct MetricsWriter {
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsWriter {
    /// Write `path` now (a mistake in it is found before the VM starts), then start the thread
    /// that keeps it current.
    pub fn start(path: &Path, metrics: Arc<Metrics>) -> Result<Self, MetricsError> {
        write_file(path, &metrics.encode()?)?;
        let (wake, woken) = mpsc::sync_channel(1);
        *lock(&metrics.wake) = Some(wake);
        let stop = Arc::new(AtomicBool::new(false));
        let (m, done, path) = (metrics.clone(), stop.clone(), path.to_owned());
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::Metrics) {
                    log::error!("metrics: {}; the file is no longer written", crate::error::Chain(&e));
                    return;
                }
                while woken.recv().is_ok() {
                    // Read after the wake-up: every change before it is in.
                    let last = done.load(Ordering::Acquire);
                    if let Err(e) = m.encode().and_then(|text| write_file(&path, &text)) {
                        log::warn!("{}", crate::error::Chain(&e));
                    }
                    if last {
                        break;
                    }
                }
            })
            .map_err(MetricsError::Thread)?;
        Ok(Self { metrics, stop, thread: Some(thread) })
    }

    /// Write the final state and end the thread.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(wake) = lock(&self.metrics.wake).take() {
            // Full: the pending wake-up's write reads the stop flag set above.
            let _ = wake.try_send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the metrics thread panicked");
            }
        }
    }
}

/// Write `text` to `path` through a temporary file in the same directory, synced and renamed
/// over it.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), MetricsError> {
    let err = |source| MetricsError::Write { path: path.to_owned(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{SkipReason, Trigger, VmcoreSource};

    fn value(text: &str, line_start: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok()))
    }

    #[test]
    fn events_become_metrics() {
        let m = Metrics::new(2);
        let at = Utc::now();
        let events = [
            Event::VmStarted { vcpus: 1, memory_bytes: 1, kernel: "k".into() },
            Event::CrashDetected { trigger: Trigger::Pvpanic, signal_ts: None },
            Event::VmcoreWritten {
                path: "p".into(),
                bytes: 3 << 20,
                source: VmcoreSource::Host,
                duration_ms: 250,
                pause_us: None,
                snapshot: None,
            },
            Event::CrashReport { dir: "d".into(), signature_id: None, title: None },
            Event::UploadQueued { dir: "d".into() },
            Event::VmcoreSkipped {
                reason: SkipReason::DiskBudget,
                needed_bytes: Some(10),
                available_bytes: Some(5),
                signature_id: None,
                count: None,
            },
            Event::Upload(delivery::DeliveryEvent::Completed { dir: "d".into(), url: "u".into(), bytes: 1234 }),
            Event::VmReset { crashes: 1 },
        ];
        // Two boots' counts of one network device add up.
        let net = |frames: u64, held: u64| Event::NetCounters {
            device: "net0".into(),
            tap: "tap0".into(),
            tx_frames: frames,
            tx_bytes: 100 * frames,
            rx_frames: 2 * frames,
            rx_bytes: 200 * frames,
            dropped: crate::events::NetDropped { rx_held: held, tx_malformed: 1, ..Default::default() },
        };
        let events: Vec<Event> = events.into_iter().chain([net(3, 0), net(4, 5)]).collect();
        for e in &events {
            m.observe(e, at);
        }
        // Events that move no metric are not counted as changes.
        assert!(!m.count(&Event::VmPaused, at));
        let text = m.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(value(&text, "crashvmm_crashes_total{trigger=\"pvpanic\"}"), Some(1.0), "{text}");
        assert_eq!(value(&text, "crashvmm_vmcores_written_total{source=\"host\"}"), Some(1.0), "{text}");
        assert_eq!(value(&text, "crashvmm_vmcore_size_bytes_sum{source=\"host\"}"), Some((3 << 20) as f64), "{text}");
        assert_eq!(value(&text, "crashvmm_vmcore_duration_seconds_sum{source=\"host\"}"), Some(0.25), "{text}");
        assert_eq!(value(&text, "crashvmm_vmcores_skipped_total{reason=\"disk_budget\"}"), Some(1.0), "{text}");
        assert_eq!(value(&text, "crashvmm_upload_bytes_total"), Some(1234.0), "{text}");
        assert_eq!(value(&text, "crashvmm_uploads_total{result=\"completed\"}"), Some(1.0), "{text}");
        // 2 waiting at start, one queued, one delivered.
        assert_eq!(value(&text, "crashvmm_upload_queue_depth"), Some(2.0), "{text}");
        assert_eq!(value(&text, "crashvmm_guest_boots_total"), Some(2.0), "{text}");
        let net =
            |name: &str, labels: &str| value(&text, &format!("crashvmm_net_{name}_total{{device=\"net0\",{labels}}}"));
        assert_eq!(net("frames", "direction=\"tx\""), Some(7.0), "{text}");
        assert_eq!(net("frames", "direction=\"rx\""), Some(14.0), "{text}");
        assert_eq!(net("bytes", "direction=\"rx\""), Some(1400.0), "{text}");
        assert_eq!(net("dropped", "reason=\"rx_held\""), Some(5.0), "{text}");
        assert_eq!(net("dropped", "reason=\"tx_malformed\""), Some(2.0), "{text}");
        assert_eq!(net("dropped", "reason=\"rx_offload\""), Some(0.0), "{text}");
        let boot = value(&text, "crashvmm_guest_boot_time_seconds").unwrap();
        assert!((boot - at.timestamp() as f64).abs() < 1.0, "{boot}");
    }

    #[test]
    fn the_writer_keeps_the_file_current_and_writes_the_last_state() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("crashvmm.prom");
        let m = Arc::new(Metrics::new(0));
        let w = MetricsWriter::start(&path, m.clone()).unwrap();
        // Written at start, before any crash.
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.contains("crashvmm_crash_reports_total 0") && first.ends_with("# EOF\n"), "{first}");
        for _ in 0..3 {
            m.observe(&Event::CrashDetected { trigger: Trigger::Pvpanic, signal_ts: None }, Utc::now());
        }
        w.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(value(&text, "crashvmm_crashes_total{trigger=\"pvpanic\"}"), Some(3.0), "{text}");
        // Only the file: no temporary one left beside it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // A directory that is not there is one error, at start.
        let e = MetricsWriter::start(&d.path().join("no/such.prom"), m).err().unwrap();
        assert!(crate::error::chain(&e).starts_with("cannot write the metrics file"), "{}", crate::error::chain(&e));
    }
}
