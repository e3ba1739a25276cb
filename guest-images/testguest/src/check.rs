//! Expectations and the scenario's verdict: `TG: check <name> ... ok|FAIL <got vs expected>`,
//! then exactly one `TG: PASS <scenario>` or `TG: FAIL <scenario>: <reason>`.

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::cpu;
use crate::serial::{line, puts, Line};

static FAILED: AtomicU32 = AtomicU32::new(0);
static FIRST_FAILED: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static FIRST_FAILED_LEN: AtomicUsize = AtomicUsize::new(0);
static SCENARIO: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static SCENARIO_LEN: AtomicUsize = AtomicUsize::new(0);

fn load(p: &AtomicPtr<u8>, len: &AtomicUsize) -> &'static str {
    let (p, n) = (p.load(Ordering::Relaxed), len.load(Ordering::Relaxed));
    if p.is_null() {
        return "";
    }
    // SAFETY: only `store` writes these, from a `&'static str`.
    unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(p, n)) }
}

fn store(p: &AtomicPtr<u8>, len: &AtomicUsize, s: &'static str) {
    len.store(s.len(), Ordering::Relaxed);
    p.store(s.as_ptr() as *mut u8, Ordering::Relaxed);
}

pub fn set_scenario(name: &'static str) {
    store(&SCENARIO, &SCENARIO_LEN, name);
}

pub fn scenario() -> &'static str {
    load(&SCENARIO, &SCENARIO_LEN)
}

fn failed(name: &'static str) {
    if FAILED.fetch_add(1, Ordering::Relaxed) == 0 {
        store(&FIRST_FAILED, &FIRST_FAILED_LEN, name);
    }
}

fn start(name: &str) -> Line {
    line().s("check ").s(name).s(" ... ")
}

/// A yes/no expectation.
pub fn check(name: &'static str, ok: bool) -> bool {
    if ok {
        start(name).s("ok").end();
    } else {
        failed(name);
        start(name).s("FAIL").end();
    }
    ok
}

/// `got == expected`, both printed in hex on failure.
pub fn check_eq(name: &'static str, got: u64, expected: u64) -> bool {
    if got == expected {
        start(name).s("ok").end();
        true
    } else {
        failed(name);
        start(name).s("FAIL got ").hex(got).s(" expected ").hex(expected).end();
        false
    }
}

/// An expectation whose failure explains itself: `detail` continues the FAIL line.
pub fn check_with(name: &'static str, ok: bool, detail: impl FnOnce(Line) -> Line) -> bool {
    if ok {
        start(name).s("ok").end();
    } else {
        failed(name);
        detail(start(name).s("FAIL ")).end();
    }
    ok
}

/// How many checks failed so far.
pub fn failures() -> u32 {
    FAILED.load(Ordering::Relaxed)
}

/// Print the verdict line: PASS when no check failed.
pub fn verdict() {
    let n = failures();
    if n == 0 {
        line().s("PASS ").s(scenario()).end();
    } else {
        line()
            .s("FAIL ")
            .s(scenario())
            .s(": ")
            .dec(n as u64)
            .s(" check(s) failed, first: ")
            .s(load(&FIRST_FAILED, &FIRST_FAILED_LEN))
            .end();
    }
}

/// Give up on the scenario: the verdict with `reason`, then power off (so that the run ends).
pub fn abort(reason: &str) -> ! {
    line().s("FAIL ").s(scenario()).s(": ").s(reason).end();
    cpu::power_off()
}

/// Print the verdict and power off.
pub fn finish() -> ! {
    verdict();
    cpu::power_off()
}

/// Print a plain `TG: ` line.
pub fn note(s: &str) {
    puts("TG: ");
    puts(s);
    puts("\n");
}
