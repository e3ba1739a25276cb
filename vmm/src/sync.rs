//! Locking shared state.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, also when a thread panicked while holding it: crashvmm's shared state stays usable
/// (a crash must still be recorded when some thread failed), so poisoning is not an error.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file only one last writer may end: the event log, whose last line is the SIGSYS
/// handler's `seccomp_violation` (`seccomp`). Every other write to it happens between
/// [`enter`](Self::enter) and [`leave`](Self::leave); [`close`](Self::close) refuses later
/// writes and waits for those under way, so none lands after the last line.
pub struct LastWriter {
    closed: std::sync::atomic::AtomicBool,
    writers: std::sync::atomic::AtomicUsize,
}

/// The event log's.
pub static EVENT_LOG: LastWriter = LastWriter::new();

impl Default for LastWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl LastWriter {
    pub const fn new() -> Self {
        Self { closed: std::sync::atomic::AtomicBool::new(false), writers: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// A write may start (then [`leave`](Self::leave) after it), or the file is closed.
    pub fn enter(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.writers.fetch_add(1, SeqCst);
        if self.closed.load(SeqCst) {
            self.writers.fetch_sub(1, SeqCst);
            return false;
        }
        true
    }

    pub fn leave(&self) {
        self.writers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuse every later write and wait, up to a second (the caller may itself be a writer),
    /// for those under way. Async-signal-safe: atomics, `clock_gettime` and `sched_yield` only.
    pub fn close(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.closed.store(true, SeqCst);
        let now = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime writes the timespec it is given; async-signal-safe.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let deadline = now() + 1_000_000_000;
        while self.writers.load(SeqCst) != 0 && now() < deadline {
            // SAFETY: sched_yield takes no arguments and is async-signal-safe.
            unsafe { libc::sched_yield() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_file_takes_no_more_writes_and_close_waits_for_those_under_way() {
        let w = std::sync::Arc::new(LastWriter::new());
        assert!(w.enter());
        let (w2, done) = (w.clone(), std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let d2 = done.clone();
        let closer = std::thread::spawn(move || {
            w2.close();
            d2.load(std::sync::atomic::Ordering::SeqCst)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        w.leave();
        assert!(closer.join().unwrap(), "close returned before the write under way ended");
        assert!(!w.enter());
    }
}
