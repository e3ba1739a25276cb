//! crashvmm's own test guest: a small PVH kernel that exercises, the way Linux does, every
//! protocol crashvmm serves for crash handling (pvpanic, the Hyper-V crash MSRs, the SynIC and
//! the VMBus control channel, the kexec into a crash kernel) and feeds it hostile input.
//!
//! It prints `TG: ` lines on COM1: one `TG: check <name> ... ok|FAIL ...` per expectation and
//! one `TG: PASS <scenario>` or `TG: FAIL <scenario>: <reason>` at the end. The scenario comes
//! from `testguest.scenario=<name>` on the command line (default `boot`).
//!
//! Every instruction of kernel code costs about 1.4 µs on the software virtualization of the
//! development machines: no `core::fmt`, no large copies, every wait bounded.

#![no_std]
#![no_main]

mod acpi;
mod boot;
mod check;
mod cpu;
mod global;
mod hyperv;
mod idt;
mod kexec;
mod pvpanic;
mod scenarios;
mod serial;
mod smp;
mod start_info;
mod time;
mod user;
mod virtio;
mod vmbus;

use serial::line;
use start_info::StartInfo;

/// The first stage's Rust entry, from boot.rs with the `hvm_start_info` address and the
/// number of relocations it could not apply.
#[no_mangle]
extern "C" fn tg_main(start_info: u64, bad_relocs: u32) -> ! {
    idt::init();
    let si = StartInfo::read(start_info);
    if si.valid() {
        acpi::set_rsdp(si.rsdp_paddr);
    }
    let cmdline = if si.valid() { si.cmdline() } else { &[] };
    let name = start_info::param(cmdline, "testguest.scenario").unwrap_or(b"boot");
    let Some(scenario) = scenarios::find(name) else {
        line().s("FAIL ").bytes(name).s(": unknown scenario (known: ").s(scenarios::NAMES).s(")").end();
        cpu::power_off()
    };
    check::set_scenario(scenario.name);
    line().s("testguest ").s(scenario.name).s(" at ").hex(cpu::rip()).end();
    if !si.valid() {
        check::abort("no hvm_start_info (EBX does not point at XEN_HVM_START_MAGIC_VALUE)");
    }
    if bad_relocs != 0 {
        check::abort("relocations other than R_X86_64_RELATIVE");
    }
    (scenario.run)(&si)
}

/// The copied image's Rust entry (the kdump scenario's "crash kernel").
#[no_mangle]
extern "C" fn tg_stage2_main(start_info: u64, old_base: u64, bad_relocs: u32, stage1_failures: u32) -> ! {
    idt::init();
    check::set_scenario("kdump");
    let si = StartInfo::read(start_info);
    acpi::set_rsdp(si.rsdp_paddr);
    scenarios::kdump::crash_kernel(&si, old_base, bad_relocs, stage1_failures)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let l = line().s("rust panic");
    match info.location() {
        Some(loc) => l.s(" at ").s(loc.file()).s(":").dec(loc.line() as u64).end(),
        None => l.end(),
    }
    check::abort("rust panic")
}
