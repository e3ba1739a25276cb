//! Locking shared state.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, also when a thread panicked while holding it: crashvmm's shared state stays usable
/// (a crash must still be recorded when some thread failed), so poisoning is not an error.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
