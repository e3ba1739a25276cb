//! Time from the TSC, for bounding waits. The frequency comes from
//! `HV_X64_MSR_TSC_FREQUENCY` once Hyper-V is detected; before that (or without Hyper-V) a
//! guess of 1 GHz. Every wait is also bounded by an iteration count.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::rdtsc;

/// The TSC frequency; 0 until known (then [`GUESS_HZ`]). Zero-initialized, so it lives in
/// .bss and a copied image starts without the first stage's value.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
const GUESS_HZ: u64 = 1_000_000_000;

/// Upper bound on the iterations of any polling loop, whatever the TSC says.
pub const MAX_POLLS: u64 = 20_000_000;

pub fn set_tsc_hz(hz: u64) {
    if hz != 0 {
        TSC_HZ.store(hz, Ordering::Relaxed);
    }
}

pub fn tsc_hz() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => GUESS_HZ,
        hz => hz,
    }
}

/// A point in TSC time.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    pub fn after_ms(ms: u64) -> Self {
        Deadline(rdtsc().saturating_add(tsc_hz() / 1000 * ms))
    }
    pub fn passed(&self) -> bool {
        rdtsc() >= self.0
    }
}

/// Spin until `done()` says so, for at most `ms` (and [`MAX_POLLS`] turns); whether it did.
pub fn wait_until(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let d = Deadline::after_ms(ms);
    for _ in 0..MAX_POLLS {
        if done() {
            return true;
        }
        if d.passed() {
            break;
        }
        crate::cpu::pause();
    }
    done()
}

/// Spin for `ms` (at most [`MAX_POLLS`] turns).
pub fn wait_ms(ms: u64) {
    wait_until(ms, || false);
}

/// Milliseconds since `start` (a TSC value).
pub fn ms_since(start: u64) -> u64 {
    rdtsc().wrapping_sub(start) / (tsc_hz() / 1000).max(1)
}
