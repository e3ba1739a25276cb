//! Delivery of crash directories to an object store (`--upload URL`, the `delivery` crate): a
//! thread of its own (`upload`, with the only seccomp filter that allows sockets) takes the
//! spool's jobs while the guest runs; the executor queues each crash directory once it is
//! complete, which costs the crash path one small file. When the VM has ended, crashvmm waits
//! up to `--upload-wait` for what is still queued; whatever is left stays in the spool for the
//! next `crashvmm run --upload` or `crashvmm deliver`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use delivery::{DeliveryEvent, Spool, Target, Uploader, UploaderConfig};

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
    stop: Arc<AtomicBool>,
    /// Jobs set aside as undeliverable since the start.
    abandoned: Arc<AtomicUsize>,
    /// The uploader itself stopped on an error (the spool could not be read).
    broken: Arc<AtomicBool>,
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

/// The uploader's events as the event log's.
pub fn event(e: DeliveryEvent) -> Event {
    match e {
        DeliveryEvent::Started { dir, url } => Event::UploadStarted { dir: dir.display().to_string(), url },
        DeliveryEvent::Progress { dir, bytes, total } => {
            Event::UploadProgress { dir: dir.display().to_string(), bytes, total }
        }
        DeliveryEvent::Completed { dir, url, bytes } => {
            Event::UploadCompleted { dir: dir.display().to_string(), url, bytes }
        }
        DeliveryEvent::Failed { dir, error, retry_in_s } => {
            Event::UploadFailed { dir: dir.display().to_string(), error, retry_in_s }
        }
        DeliveryEvent::Abandoned { dir, error, job } => {
            Event::UploadAbandoned { dir: dir.map(|d| d.display().to_string()), error, job: job.display().to_string() }
        }
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
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let abandoned = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (abandoned_count, broken_flag) = (abandoned.clone(), broken.clone());
        let thread = std::thread::Builder::new()
            .name("upload".into())
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::Upload) {
                    log::error!("upload: {}; crash directories stay in the spool", crate::error::Chain(&e));
                    broken_flag.store(true, Ordering::SeqCst);
                    return;
                }
                let emit = |e: DeliveryEvent| {
                    if matches!(e, DeliveryEvent::Abandoned { .. }) {
                        abandoned_count.fetch_add(1, Ordering::SeqCst);
                    }
                    events.emit(event(e));
                };
                if let Err(e) = uploader.run(&flag, &emit) {
                    log::error!("upload: {}; crash directories stay in the spool", crate::error::Chain(&e));
                    broken_flag.store(true, Ordering::SeqCst);
                }
            })
            .map_err(StartError::Thread)?;
        Ok(Self { spool, stop, abandoned, broken, thread: Some(thread) })
    }

    /// The spool the executor queues finished crash directories in.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Wait up to `wait` for the queued crash directories, then stop the uploader. Says how
    /// many are still queued and how many were set aside as undeliverable.
    pub fn finish(mut self, wait: Duration) -> Finished {
        let deadline = Instant::now() + wait;
        let mut said = false;
        while Instant::now() < deadline {
            match self.spool.pending() {
                Ok(jobs) if jobs.is_empty() => break,
                Ok(jobs) => {
                    if !said {
                        log::info!("upload: waiting up to {wait:?} for {} crash directories", jobs.len());
                        said = true;
                    }
                }
                Err(e) => {
                    log::warn!("upload: {e}");
                    break;
                }
            }
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = self.spool.pending().map_or(0, |l| l.len());
        if left > 0 {
            log::warn!(
                "upload: {left} crash directories not delivered yet; they stay in {} for the next run",
                self.spool.root().display()
            );
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Finished { left, abandoned: self.abandoned.load(Ordering::SeqCst), broken: self.broken.load(Ordering::SeqCst) }
    }
}
