//! boot, connect, panic, bench-panic, triple-fault, idle, counter.

use super::{crash_ctl_capabilities, hyperv_up, vmbus_up};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::check::{abort, check, check_eq, finish, note, verdict};
use crate::cpu::halt_forever;
use crate::hyperv::report_crash_message;
use crate::idt;
use crate::pvpanic::{self, PVPANIC_PANICKED};
use crate::serial::line;
use crate::smp;
use crate::start_info::{StartInfo, XEN_HVM_MEMMAP_TYPE_RAM};

/// `RSD PTR ` (ACPI RSDP signature).
const RSDP_SIGNATURE: [u8; 8] = *b"RSD PTR ";

/// Print what the loader handed over and power off.
pub fn boot(si: &StartInfo) -> ! {
    line().s("start_info at ").hex(si.paddr).s(" version ").dec(si.version as u64).end();
    line().s("cmdline: ").bytes(si.cmdline()).end();
    check("start-info-version", si.version >= 1);
    check("cmdline-names-scenario", si.cmdline().windows(23).any(|w| w == b"testguest.scenario=boot"));
    line().s("memmap: ").dec(si.memmap_entries as u64).s(" entries at ").hex(si.memmap_paddr).end();
    for i in 0..si.memmap_entries.min(32) {
        let e = si.memmap(i);
        line().s("  ").hex(e.addr).s(" size ").hex(e.size).s(" type ").dec(e.kind as u64).end();
    }
    let ram = si.ram_total();
    line().s("memory: ").dec(ram >> 20).s(" MiB RAM").end();
    check("memmap-has-ram", si.memmap_entries > 0 && ram > 0);
    check("memmap-ram-below-image", si.is_ram(crate::boot::LINK_BASE, 0x10_0000));
    // Types 1-5 (RAM, reserved, ACPI, NVS, unusable); QEMU appends an empty entry.
    let known = |i| {
        let e = si.memmap(i);
        e.size == 0 || (XEN_HVM_MEMMAP_TYPE_RAM..=5).contains(&e.kind)
    };
    check("memmap-types-known", (0..si.memmap_entries).all(known));
    line().s("modules: ").dec(si.nr_modules as u64).end();
    for i in 0..si.nr_modules.min(8) {
        let (addr, size) = si.module(i);
        line().s("  module ").dec(i as u64).s(" at ").hex(addr).s(" size ").hex(size).end();
    }
    line().s("rsdp: ").hex(si.rsdp_paddr).end();
    if si.rsdp_paddr != 0 {
        // SAFETY: the loader says an RSDP is there; 8 bytes are read.
        let sig = unsafe { core::ptr::read_unaligned(si.rsdp_paddr as *const [u8; 8]) };
        check("rsdp-signature", sig == RSDP_SIGNATURE);
    }
    match crate::acpi::sleep_control_reg() {
        Some((space, addr)) => {
            line().s("acpi: sleep control register ").hex(addr).s(" in space ").dec(space as u64).end()
        }
        None => line().s("acpi: no hardware-reduced FADT; power-off through port 0x600").end(),
    }
    finish()
}

/// Hyper-V, SynIC, VMBus connect and offers; power off.
pub fn connect(_si: &StartInfo) -> ! {
    let hv = hyperv_up();
    crash_ctl_capabilities();
    vmbus_up(&hv);
    finish()
}

/// The Linux panic path without a crash kernel: pvpanic PANICKED (the notifier with the
/// highest priority), then the kmsg dumper's crash-MSR report with the message page; halt.
pub fn panic(_si: &StartInfo) -> ! {
    let hv = hyperv_up();
    crash_ctl_capabilities();
    vmbus_up(&hv);
    let cap = pvpanic::capability();
    check_eq("pvpanic-capability", cap as u64, pvpanic::DRIVER_BITS as u64);
    note("Kernel panic - not syncing: testguest: panic scenario");
    check("pvpanic-panicked-sent", pvpanic::send_event(PVPANIC_PANICKED));
    // The verdict before the report: crashvmm may stop the VM as soon as it has it.
    verdict();
    report_crash_message(b"testguest: panic scenario\nKernel panic - not syncing: testguest: panic scenario\n");
    halt_forever()
}

/// Hyper-V and VMBus up, then `TG: idle: ready` and a spin for up to 30 s (for tests that drive
/// crashvmm's control socket while the guest runs; they end it with `shutdown`); then power off.
pub fn idle(_si: &StartInfo) -> ! {
    let hv = hyperv_up();
    crash_ctl_capabilities();
    vmbus_up(&hv);
    note("idle: ready");
    crate::time::wait_ms(30_000);
    note("idle: nobody stopped the VM within 30 s");
    finish()
}

/// For the benchmark: READY, then only the pvpanic write; halt. The verdict comes first:
/// crashvmm may stop the VM right at the write.
pub fn bench_panic(_si: &StartInfo) -> ! {
    verdict();
    note("READY");
    pvpanic::write_raw(PVPANIC_PANICKED);
    halt_forever()
}

/// An empty IDT and a fault: #UD cannot be delivered, nor the #GP, nor the #DF: a triple
/// fault. The verdict comes first (nothing prints afterwards); crashvmm must exit with 4.
pub fn triple_fault(_si: &StartInfo) -> ! {
    note("triple-fault: loading an empty IDT and executing UD2");
    verdict();
    idt::load(0, 0);
    // SAFETY: the point of the scenario: UD2 with no IDT shuts the CPU down.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// Where `counter` keeps its counters: one page per vCPU, `COUNTER_GPA + APIC id * 0x1000`,
/// of RAM nothing else uses (the guest is 64 MiB in the tests; the image sits at 1 MiB).
pub const COUNTER_GPA: u64 = 0x300_0000;
/// The APs' stacks: one page per APIC id, above the counter pages.
pub const AP_STACKS_GPA: u64 = COUNTER_GPA + 0x10_0000;
/// Bytes per counter page and per AP stack.
const COUNTER_PAGE: u64 = 0x1000;
/// vCPUs the counter scenario starts at most (8-bit xAPIC ids; 0xff is the broadcast).
const MAX_CPUS: usize = 255;

/// APs in their counting loop.
static APS_COUNTING: AtomicU32 = AtomicU32::new(0);

/// For live dumps: every vCPU increments its own counter in a tight loop, forever, keeping it
/// in r12 too (`inc r12; mov [page], r12`), so that wherever a vCPU stops, its page holds r12 or
/// r12 - 1. The BSP starts every other local APIC of the MADT (smp.rs) and waits until each
/// AP is in its loop before `TG: counter: ready at 0x3000000, N vCPUs` (`1 vCPU` alone); then it
/// counts too. Whoever runs it stops the VM.
pub fn counter(si: &StartInfo) -> ! {
    let mut ids = [0u8; MAX_CPUS];
    let (lapic_base, n) = crate::acpi::local_apics(&mut ids).unwrap_or((smp::DEFAULT_LAPIC_BASE, 0));
    let lapic = smp::Lapic::new(lapic_base);
    let me = lapic.id();
    let ids = &ids[..n];
    let pages = |base: u64| ids.iter().chain([&me]).all(|&id| si.is_ram(base + id as u64 * COUNTER_PAGE, COUNTER_PAGE));
    check("counter-page-is-ram", pages(COUNTER_GPA));
    let aps = ids.iter().filter(|&&id| id != me).count() as u32;
    if aps > 0 {
        if !check("counter-ap-stacks-are-ram", pages(AP_STACKS_GPA)) {
            abort("the APs' stacks are not RAM");
        }
        if let Err(e) = smp::install(si) {
            abort(e);
        }
        for &id in ids.iter().filter(|&&id| id != me) {
            let stack_top = AP_STACKS_GPA + (id as u64 + 1) * COUNTER_PAGE;
            if !smp::start_ap(&lapic, id, counter_ap, id as u64, stack_top) {
                line().s("counter: AP with APIC id ").dec(id as u64).s(" did not start").end();
                abort("an AP did not start");
            }
        }
        if !crate::time::wait_until(2000, || APS_COUNTING.load(Ordering::SeqCst) == aps) {
            abort("the APs started but not all of them reached their loop");
        }
    }
    let vcpus = aps as u64 + 1;
    line()
        .s("counter: ready at ")
        .hex(COUNTER_GPA)
        .s(", ")
        .dec(vcpus)
        .s(if vcpus == 1 { " vCPU" } else { " vCPUs" })
        .end();
    count(COUNTER_GPA + me as u64 * COUNTER_PAGE)
}

/// An AP of `counter`: the IDT, then its own loop on its page (`apic_id` is its APIC id).
extern "C" fn counter_ap(apic_id: u64) -> ! {
    idt::load_filled();
    APS_COUNTING.fetch_add(1, Ordering::SeqCst);
    count(COUNTER_GPA + apic_id * COUNTER_PAGE)
}

/// `r12 = 0; loop { r12 += 1; *page = r12 }`.
fn count(page: u64) -> ! {
    // SAFETY: `page` is identity-mapped RAM that only this vCPU writes; the loop never returns
    // and touches only r12 and that page.
    unsafe {
        core::arch::asm!(
            "xor r12, r12",
            "2:",
            "inc r12",
            "mov qword ptr [{p}], r12",
            "jmp 2b",
            p = in(reg) page,
            options(noreturn, nostack),
        )
    }
}
