//! boot, connect, panic, bench-panic, triple-fault, idle, counter.

use super::{crash_ctl_capabilities, hyperv_up, vmbus_up};
use crate::check::{check, check_eq, finish, note, verdict};
use crate::cpu::halt_forever;
use crate::hyperv::report_crash_message;
use crate::idt;
use crate::pvpanic::{self, PVPANIC_PANICKED};
use crate::serial::line;
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
    let d = crate::time::Deadline::after_ms(30_000);
    for _ in 0..crate::time::MAX_POLLS {
        if d.passed() {
            break;
        }
        crate::cpu::pause();
    }
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

/// Where `counter` keeps its counter: a page of RAM nothing else uses (the guest is 64 MiB in
/// the tests; the image sits at 1 MiB).
pub const COUNTER_GPA: u64 = 0x300_0000;

/// For live dumps: the BSP increments a counter in a tight loop, forever, keeping it in r12 too
/// (`inc r12; mov [COUNTER_GPA], r12`), so that wherever the vCPU stops, the page holds r12 or
/// r12 - 1. Whoever runs it stops the VM.
pub fn counter(si: &StartInfo) -> ! {
    check("counter-page-is-ram", si.is_ram(COUNTER_GPA, 0x1000));
    line().s("TG: counter: ready at ").hex(COUNTER_GPA).end();
    // SAFETY: COUNTER_GPA is identity-mapped RAM no other code uses; the loop never returns
    // and touches only r12 and that page.
    unsafe {
        core::arch::asm!(
            "xor r12, r12",
            "2:",
            "inc r12",
            "mov qword ptr [{p}], r12",
            "jmp 2b",
            p = in(reg) COUNTER_GPA,
            options(noreturn, nostack),
        )
    }
}
