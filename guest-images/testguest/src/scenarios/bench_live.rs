//! bench-live: a guest with a share of its RAM touched that then runs without writing memory,
//! for `make bench`'s live-dump comparison (part 6: a live dump's pause against a pausing dump
//! and QEMU's `dump-guest-memory`).
//!
//! `testguest.touch=PCT` (default 10, at most 100): PCT% of the 4 MiB chunks of RAM above the
//! first 16 MiB (spread evenly: chunk `c` is touched when `c * PCT / 100` steps) get a per-page
//! 8-byte pattern in every quadword. As in bench-kdump, ring 0 (emulated instruction by
//! instruction on the development machines' software KVM) stores once per page, so that the
//! host's first-touch faults are taken there, and ring 3 ([`crate::user`], native) fills the
//! pages. 4 MiB chunks: with transparent huge pages on the host, any touch faults in 2 MiB.
//!
//! Lines: `TG: bench-live: touching N of M MiB`, `TG: bench-live: touched`, then
//! `TG: bench-live: ready` and the verdict; then the vCPU halts (interrupts off, HLT), as an
//! idle guest does, or with `testguest.idle=spin` spins (PAUSE) in ring 3 forever, busy on its
//! host CPU; either way no memory is written, so copy-on-write costs nothing. Whoever runs it
//! stops the VM.

use crate::check::{abort, note, verdict};
use crate::global::Global;
use crate::serial::line;
use crate::start_info::{param, parse_u64, StartInfo, XEN_HVM_MEMMAP_TYPE_RAM};
use crate::user;

const CHUNK: u64 = 4 << 20;
/// Nothing below this is touched (the image at 1 MiB, the page tables below).
const LOW: u64 = 16 << 20;
/// This scenario's identity map (user-accessible).
const MAX_RANGES: usize = 8;

/// What ring 3 fills: whole chunks `[start, end)` of each range that are touched.
#[repr(C)]
#[derive(Clone, Copy)]
struct Job {
    ranges: [(u64, u64); MAX_RANGES],
    nr_ranges: usize,
    pct: u64,
}

static JOB: Global<Job> = Global::new(Job { ranges: [(0, 0); MAX_RANGES], nr_ranges: 0, pct: 0 });

/// Whether chunk `c` (physical address `c * CHUNK`) is touched at `pct`%.
fn touched(c: u64, pct: u64) -> bool {
    (c + 1) * pct / 100 != c * pct / 100
}

/// Calls `f(start, end)` for each run of touched chunks of the job's ranges.
fn for_each_run(job: &Job, mut f: impl FnMut(u64, u64)) {
    for &(lo, hi) in &job.ranges[..job.nr_ranges] {
        let (first, last) = (lo.max(LOW).div_ceil(CHUNK), hi / CHUNK);
        let mut c = first;
        while c < last {
            if !touched(c, job.pct) {
                c += 1;
                continue;
            }
            let run = c;
            while c < last && touched(c, job.pct) {
                c += 1;
            }
            f(run * CHUNK, c * CHUNK);
        }
    }
}

/// Ring 3: every quadword of every touched page gets the page's pattern; then back.
extern "C" fn fill(arg: u64) -> ! {
    // SAFETY: `arg` is JOB, which ring 0 does not touch while ring 3 runs.
    let job = unsafe { &*(arg as *const Job) };
    for_each_run(job, |start, end| {
        let mut pa = start;
        while pa < end {
            let v = (pa >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            // SAFETY: identity-mapped RAM of a touched chunk.
            unsafe {
                core::arch::asm!("rep stosq", inout("rdi") pa => _, inout("rcx") 512u64 => _, in("rax") v,
                    options(nostack, preserves_flags));
            }
            pa += 4096;
        }
    });
    user::exit()
}

/// Ring 3, forever: PAUSE in a loop, no memory written.
extern "C" fn spin(_: u64) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

pub fn bench_live(si: &StartInfo) -> ! {
    let pct = param(si.cmdline(), "testguest.touch").and_then(parse_u64).unwrap_or(10).min(100);
    // SAFETY: ring 3 is not running: JOB is ring 0's.
    let job = unsafe { &mut *JOB.get() };
    job.pct = pct;
    for i in 0..si.memmap_entries {
        let e = si.memmap(i);
        if e.kind == XEN_HVM_MEMMAP_TYPE_RAM && e.size > 0 && job.nr_ranges < MAX_RANGES {
            job.ranges[job.nr_ranges] = (e.addr, e.addr + e.size);
            job.nr_ranges += 1;
        }
    }
    if !user::identity_map(si.ram_end()) {
        abort("too much RAM for the identity map");
    }
    let mut bytes = 0;
    for_each_run(job, |s, e| bytes += e - s);
    line()
        .s("bench-live: touching ")
        .dec(bytes >> 20)
        .s(" of ")
        .dec(si.ram_total() >> 20)
        .s(" MiB (")
        .dec(pct)
        .s("% of the chunks above 16 MiB)")
        .end();
    for_each_run(job, user::touch);
    user::init();
    user::call(fill, JOB.get() as u64);
    note("bench-live: touched");
    let spin_it = param(si.cmdline(), "testguest.idle") == Some(b"spin");
    note("bench-live: ready");
    verdict();
    if spin_it {
        user::call(spin, 0);
    }
    crate::cpu::halt_forever()
}
