//! Delivery of crash directories to an object store (`--upload URL`, the `delivery` crate): a
//! thread of its own (`upload`, with the only seccomp filter that allows sockets) takes the
//! spool's jobs while the guest runs; the executor queues each crash directory once it is
//! complete, which costs the crash path one small file (and wakes the uploader). When the VM
//! has ended, crashvmm waits up to `--upload-wait` for what is still queued (the uploader ends
//! once the spool is empty, and its thread's end wakes the wait); whatever is left stays in the
//! spool for the next `crashvmm run --upload` or `crashvmm deliver`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use delivery::{DeliveryEvent, Spool, StopSignal, Target, Uploader, UploaderConfig};

use crate::events::{Event, EventLog};
use crate::seccomp::{self, ThreadKind};

/// `--upload-keep-local`, `--upload-max-rate`.
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    pub keep_local: bool,
    /// Bytes per second at most (`None`: as fast as the network goes).
    pub max_rate: Option<u64>,
}

/// The running uploader thread.
pub struct Delivery {
    spool: Spool,
    stop: StopSignal,
    /// Jobs set aside as undeliverable since the start.
    abandoned: Arc<AtomicUsize>,
    /// The uploader itself stopped on an error (the spool could not be read).
    broken: Arc<AtomicBool>,
    /// Disconnected when the upload thread ends (its sender is dropped there).
    ended: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// How a delivery ended (`Delivery::finish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Jobs still queued (for the next run or `crashvmm deliver`).
    pub left: usize,
    /// Jobs set aside in the spool's `failed/` (the reasons are on stderr).
    pub abandoned: usize,
    /// The uploader stopped on an error of its own (on stderr).
    pub broken: bool,
}

impl Finished {
    /// Whether everything queued was delivered.
    pub fn all_delivered(&self) -> bool {
        self.left == 0 && self.abandoned == 0 && !self.broken
    }
}

/// Why the uploader did not start ([`Delivery::start`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {}", path.display())]
    CrashDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spool refused (not crashvmm's, not private) or could not be set up.
    #[error(transparent)]
    Spool(#[from] delivery::DeliveryError),
    #[error("cannot start the upload thread")]
    Thread(#[source] std::io::Error),
}

impl Delivery {
    /// Start the uploader for the spool of `crash_dir`. Called before the vmm thread confines
    /// itself: seccomp filters stack, and the vmm's allows no socket.
    pub fn start(
        target: Target,
        crash_dir: &Path,
        options: &UploadOptions,
        events: EventLog,
    ) -> Result<Self, StartError> {
        crate::files::create_private_dir_all(crash_dir)
            .map_err(|source| StartError::CrashDir { path: crash_dir.to_owned(), source })?;
        let spool = Spool::open(crash_dir)?;
        let config = UploaderConfig {
            keep_local: options.keep_local,
            max_bytes_per_sec: options.max_rate,
            ..Default::default()
        };
        let uploader = Uploader::new(target, spool.clone(), config);
        let stop = StopSignal::new();
        let signal = stop.clone();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let abandoned = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (abandoned_count, broken_flag) = (abandoned.clone(), broken.clone());
        let thread = std::thread::Builder::new()
            .name("upload".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends: that wakes `finish`.
                let _ended = ended_tx;
                if let Err(e) = seccomp::apply(ThreadKind::Upload) {
                    log::error!("upload: {}; crash directories stay in the spool", crate::error::Chain(&e));
                    broken_flag.store(true, Ordering::SeqCst);
                    return;
                }
                let emit = |e: DeliveryEvent| {
                    if matches!(e, DeliveryEvent::Abandoned { .. }) {
                        abandoned_count.fetch_add(1, Ordering::SeqCst);
                    }
                    events.emit(Event::Upload(e));
                };
                if let Err(e) = uploader.run(&signal, &emit) {
                    log::error!("upload: {}; crash directories stay in the spool", crate::error::Chain(&e));
                    broken_flag.store(true, Ordering::SeqCst);
                }
            })
            .map_err(StartError::Thread)?;
        Ok(Self { spool, stop, abandoned, broken, ended, thread: Some(thread) })
    }

    /// The spool the executor queues finished crash directories in.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Wait up to `wait` for the queued crash directories, then stop the uploader. Says how
    /// many are still queued and how many were set aside as undeliverable.
    pub fn finish(mut self, wait: Duration) -> Finished {
        match self.spool.pending() {
            Ok(jobs) if jobs.is_empty() => {}
            Ok(jobs) => log::info!("upload: waiting up to {wait:?} for {} crash directories", jobs.len()),
            Err(e) => log::warn!("upload: {}", crate::error::Chain(&e)),
        }
        // The uploader ends once it finds the spool empty (or cannot read it), or has ended
        // already; either way its thread's end disconnects `ended`.
        self.stop.stop_when_empty();
        let _ = self.ended.recv_timeout(wait);
        let left = self.spool.pending().map_or(0, |l| l.len());
        if left > 0 {
            log::warn!(
                "upload: {left} crash directories not delivered yet; they stay in {} for the next run",
                self.spool.root().display()
            );
        }
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Finished { left, abandoned: self.abandoned.load(Ordering::SeqCst), broken: self.broken.load(Ordering::SeqCst) }
    }
}

/// Asks the store how many vmcores a signature has (`--vmcores-per-signature` with
/// `--upload`), on a thread of its own under the upload filter (the vmm thread has no
/// sockets): one `count_vmcores` listing per question (counting up to the limit asked for),
/// answered on the asker's channel. A
/// question whose answer does not come in time is left to finish on its own; the next waits
/// behind it.
pub struct StoreQuery {
    ask: mpsc::Sender<Question>,
}

/// A signature, the most vmcores worth counting, and where the answer goes.
type Question = (String, usize, mpsc::Sender<Result<delivery::VmcoreCount, String>>);

impl StoreQuery {
    /// Start the `store-query` thread for `target`. Like the uploader, before the vmm thread
    /// confines itself.
    pub fn start(target: Target) -> Result<Self, StartError> {
        let (ask, questions) = mpsc::channel::<Question>();
        std::thread::Builder::new()
            .name("store-query".into())
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::Upload) {
                    log::error!("store query: {}; counts are local", crate::error::Chain(&e));
                    return;
                }
                // Ends when the asker (crash handling) is gone.
                for (signature, at_most, answer) in questions {
                    let count =
                        delivery::count_vmcores(&target, &signature, at_most).map_err(|e| crate::error::chain(&e));
                    let _ = answer.send(count);
                }
            })
            .map_err(StartError::Thread)?;
        Ok(Self { ask })
    }

    /// The store's count for `signature` up to `at_most`, or why there is none within `limit`.
    pub fn count(&self, signature: &str, at_most: usize, limit: Duration) -> Result<delivery::VmcoreCount, String> {
        let (answer, answered) = mpsc::channel();
        self.ask
            .send((signature.to_owned(), at_most, answer))
            .map_err(|_| "the store query thread has ended".to_string())?;
        match answered.recv_timeout(limit) {
            Ok(count) => count,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("the store did not answer within {limit:?}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the store query thread has ended".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

    /// A finished crash directory under `base`.
    fn crash_dir(base: &Path, name: &str) -> R<std::path::PathBuf> {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(delivery::REPORT), br#"{"signature": {"id": "0123456789abcdef"}}"#)?;
        std::fs::write(dir.join("console.log"), b"Kernel panic - not syncing\n")?;
        Ok(dir)
    }

    fn start(base: &Path, target: &str, events: &EventLog) -> R<Delivery> {
        let options = UploadOptions { keep_local: true, max_rate: None };
        Ok(Delivery::start(Target::parse(target)?, base, &options, events.clone())?)
    }

    /// `finish(wait)` on a thread of its own; what it returned, if it did within a minute (far
    /// less than the waits the tests give it when it should return early).
    fn finish(d: Delivery, wait: Duration) -> R<Finished> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(d.finish(wait));
        });
        Ok(rx.recv_timeout(Duration::from_secs(60))?)
    }

    #[test]
    fn finish_returns_once_the_spool_has_drained() -> R {
        let work = tempfile::tempdir()?;
        let events = EventLog::disabled();
        let d = start(work.path(), &format!("file://{}/store", work.path().display()), &events)?;
        let meta =
            delivery::JobMeta { signature_id: "0123456789abcdef".into(), host: "h".into(), kernel_release: None };
        for name in ["20261125T130105Z-001", "20261125T130106Z-002"] {
            d.spool().enqueue(&crash_dir(work.path(), name)?, &meta)?;
        }
        let spool = d.spool().clone();
        let done = finish(d, Duration::from_secs(24 * 3600))?;
        assert_eq!(done, Finished { left: 0, abandoned: 0, broken: false });
        assert_eq!(spool.delivered()?.len(), 2);
        assert!(work.path().join("store/0123456789abcdef/h/20261125T130106Z-002/report.json").is_file());
        // The uploader's events, in the event log as `upload_*` records.
        let lines = events.since(0);
        let completed = lines.iter().filter(|l| l.contains(r#""event":"upload_completed""#)).count();
        assert_eq!(completed, 2, "{lines:?}");
        Ok(())
    }

    #[test]
    fn finish_leaves_what_it_could_not_deliver_in_the_spool() -> R {
        let work = tempfile::tempdir()?;
        // A store under a regular file cannot be created: each attempt fails and is retried.
        std::fs::write(work.path().join("blocker"), b"")?;
        let events = EventLog::disabled();
        let d = start(work.path(), &format!("file://{}/blocker/store", work.path().display()), &events)?;
        let meta =
            delivery::JobMeta { signature_id: "0123456789abcdef".into(), host: "h".into(), kernel_release: None };
        d.spool().enqueue(&crash_dir(work.path(), "20261125T130105Z-001")?, &meta)?;
        let done = finish(d, Duration::from_millis(200))?;
        assert_eq!(done, Finished { left: 1, abandoned: 0, broken: false });
        Ok(())
    }
}
