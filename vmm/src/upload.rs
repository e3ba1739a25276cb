//! Delivery of crash directories to an object store (`--upload URL`, the `delivery` crate): a
//! thread of its own (`upload`, with the only seccomp filter that allows sockets) takes the
//! spool's jobs while the guest runs; the executor queues each crash directory once it is
//! complete, which costs the crash path one small file. When the VM has ended, crashvmm waits
//! up to `--upload-wait` for what is still queued; whatever is left stays in the spool for the
//! next `crashvmm run --upload` or `crashvmm deliver`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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
    thread: Option<JoinHandle<()>>,
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
    }
}

impl Delivery {
    /// Start the uploader for the spool of `crash_dir`. Called before the vmm thread confines
    /// itself: seccomp filters stack, and the vmm's allows no socket.
    pub fn start(target: Target, crash_dir: &Path, options: &UploadOptions, events: EventLog) -> Result<Self, String> {
        crate::files::create_private_dir_all(crash_dir)
            .map_err(|e| format!("cannot create {}: {e}", crash_dir.display()))?;
        let spool = Spool::open(crash_dir).map_err(|e| e.to_string())?;
        let config = UploaderConfig {
            keep_local: options.keep_local,
            max_bytes_per_sec: options.max_rate,
            ..Default::default()
        };
        let uploader = Uploader::new(target, spool.clone(), config);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("upload".into())
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::Upload) {
                    log::error!("upload: {e}; crash directories stay in the spool");
                    return;
                }
                let emit = |e: DeliveryEvent| events.emit(event(e));
                if let Err(e) = uploader.run(&flag, &emit) {
                    log::error!("upload: {e}; crash directories stay in the spool");
                }
            })
            .map_err(|e| format!("cannot start the upload thread: {e}"))?;
        Ok(Self { spool, stop, thread: Some(thread) })
    }

    /// The spool the executor queues finished crash directories in.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Wait up to `wait` for the queued crash directories, then stop the uploader. Returns how
    /// many are still queued.
    pub fn finish(mut self, wait: Duration) -> usize {
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
        left
    }
}
