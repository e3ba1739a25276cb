//! A static the guest mutates: one CPU, interrupts off, so no two users ever overlap.

use core::cell::UnsafeCell;

/// A `static` with interior mutability for this single-CPU guest.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: the guest runs on one CPU with interrupts disabled (exception handlers touch no
// Global), so accesses never happen concurrently.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }

    /// A raw pointer to the value (for addresses, and for memory another agent writes).
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}
