//! Hang detection (`--watchdog DURATION`). What counts as progress, per watchdog tick:
//!
//! - any vCPU exit to crashvmm (port or MMIO I/O, MSRs, hypercalls, console output...), other
//!   than the watchdog's own kicks;
//! - any vCPU found halted (an idle guest waits in HLT) or running with interrupts enabled
//!   (a busy guest still takes its timer interrupts).
//!
//! A guest whose every vCPU spins with interrupts disabled shows none of these: after
//! `DURATION` without progress the watchdog reports a hang (once, until progress resumes).
//! A hang of some vCPUs while others idle is not detected.

use std::time::{Duration, Instant};

/// What a vCPU looked like when sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub interrupts_enabled: bool,
    pub halted: bool,
}

impl Sample {
    fn shows_progress(self) -> bool {
        self.interrupts_enabled || self.halted
    }
}

/// The detector; time and observations come in as arguments.
#[derive(Debug)]
pub struct Watchdog {
    period: Duration,
    last_progress: Instant,
    last_exits: u64,
    fired: bool,
}

impl Watchdog {
    pub fn new(period: Duration, now: Instant) -> Self {
        Self { period, last_progress: now, last_exits: 0, fired: false }
    }

    /// How often to sample: a quarter of the period, between 100 ms and 1 s.
    pub fn tick(&self) -> Duration {
        (self.period / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// A tick during which the guest could not be judged (its vCPUs paused, or its vmcore being
    /// written): the `elapsed` time does not count as a stall. A hang already reported stays
    /// reported.
    pub fn hold(&mut self, elapsed: Duration) {
        self.last_progress += elapsed;
    }

    /// One tick: the exit counter and the latest samples. Returns how long the guest has made no
    /// progress when that is a (new) hang.
    pub fn observe(&mut self, exits: u64, samples: &[Option<Sample>], now: Instant) -> Option<Duration> {
        let progress = exits != self.last_exits || samples.iter().flatten().any(|s| s.shows_progress());
        self.last_exits = exits;
        if progress {
            self.last_progress = now;
            self.fired = false;
            return None;
        }
        let stalled = now.saturating_duration_since(self.last_progress);
        if stalled >= self.period && !self.fired {
            self.fired = true;
            return Some(stalled);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPIN: Sample = Sample { interrupts_enabled: false, halted: false };
    const IDLE: Sample = Sample { interrupts_enabled: true, halted: true };
    const BUSY: Sample = Sample { interrupts_enabled: true, halted: false };

    #[test]
    fn spinning_with_interrupts_off_is_a_hang_once() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::from_secs(10), t0);
        let s = [Some(SPIN), Some(SPIN)];
        assert_eq!(w.observe(0, &s, t0 + Duration::from_secs(5)), None);
        assert_eq!(w.observe(0, &s, t0 + Duration::from_secs(10)), Some(Duration::from_secs(10)));
        assert_eq!(w.observe(0, &s, t0 + Duration::from_secs(20)), None, "reported once");
        // Progress re-arms it.
        assert_eq!(w.observe(1, &s, t0 + Duration::from_secs(21)), None);
        assert_eq!(w.observe(1, &s, t0 + Duration::from_secs(31)), Some(Duration::from_secs(10)));
    }

    #[test]
    fn time_held_is_not_a_stall_and_a_reported_hang_stays_reported() {
        let t0 = Instant::now();
        let s = [Some(SPIN)];
        let mut w = Watchdog::new(Duration::from_secs(10), t0);
        assert_eq!(w.observe(0, &s, t0 + Duration::from_secs(5)), None);
        // Paused (or dumping) from 5 s to 25 s.
        w.hold(Duration::from_secs(20));
        assert_eq!(w.observe(0, &s, t0 + Duration::from_secs(26)), None, "6 s of stall, not 26");
        assert_eq!(w.observe(0, &s, t0 + Duration::from_secs(30)), Some(Duration::from_secs(10)));
        w.hold(Duration::from_secs(60));
        assert_eq!(w.observe(0, &s, t0 + Duration::from_secs(200)), None, "reported once");
    }

    #[test]
    fn idle_busy_or_exiting_guests_are_not_hung() {
        let t0 = Instant::now();
        for samples in [[Some(IDLE), Some(SPIN)], [Some(BUSY), Some(SPIN)]] {
            let mut w = Watchdog::new(Duration::from_secs(1), t0);
            for s in 1..100 {
                assert_eq!(w.observe(0, &samples, t0 + Duration::from_secs(s)), None, "{samples:?}");
            }
        }
        let mut w = Watchdog::new(Duration::from_secs(1), t0);
        for s in 1..100 {
            assert_eq!(w.observe(s, &[Some(SPIN)], t0 + Duration::from_secs(s)), None, "exits are progress");
        }
        // No samples yet (vCPUs not kicked): only the clock counts.
        let mut w = Watchdog::new(Duration::from_secs(2), t0);
        assert!(w.observe(0, &[None, None], t0 + Duration::from_secs(2)).is_some());
        assert_eq!(Watchdog::new(Duration::from_secs(60), t0).tick(), Duration::from_secs(1));
        assert_eq!(Watchdog::new(Duration::from_millis(100), t0).tick(), Duration::from_millis(100));
    }
}
