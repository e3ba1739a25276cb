//! A static the guest mutates: only the BSP touches one, interrupts off, so no two users ever
//! overlap (the counter scenario's APs use atomics and their own pages only).

use core::cell::UnsafeCell;

/// A `static` with interior mutability for what only the BSP uses.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: only the BSP accesses a Global (an AP takes at most its address: idt::load_filled),
// with interrupts disabled (exception handlers touch no Global), so accesses never happen
// concurrently.
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
