//! kdump: the crash path of a Linux guest with a crash kernel loaded, in Linux's order
//! (guest-protocol §6.3): pvpanic CRASH_LOADED, VMBus UNLOAD polled to its response, the
//! kmsg crash report, `hv_crash_handler()` + `hyperv_cleanup()`, kexec. The second half runs
//! in the copy (the "crash kernel"): Hyper-V and VMBus again, then power off.

use super::{crash_ctl_capabilities, hyperv_up, vmbus_up};
use crate::boot;
use crate::check::{abort, check, check_eq, check_with, failures, finish, note};
use crate::cpu;
use crate::hyperv::{self, page_gpa, report_crash_message, Which, HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL};
use crate::kexec;
use crate::pvpanic::{self, PVPANIC_CRASH_LOADED};
use crate::serial::line;
use crate::start_info::StartInfo;
use crate::vmbus;

/// How long the test guest waits for UNLOAD_RESPONSE (Linux: 100 s; crashvmm answers at once).
pub const UNLOAD_WAIT_MS: u64 = 5_000;
/// int3: what the crash kernel fills the first stage's code with.
const INT3: u8 = 0xcc;

pub fn kdump(si: &StartInfo) -> ! {
    let region = match kexec::region(si.cmdline()) {
        Some(r) => r,
        None => abort("testguest.crashkernel= is not SIZE@ADDR"),
    };
    let valid = kexec::validate(&region, si);
    check_with("crash-kernel-region", valid.is_ok(), |l| l.s(valid.err().unwrap_or("")));
    if valid.is_err() {
        abort("no usable crash kernel region");
    }
    line().s("crash kernel region ").hex(region.base).s(" size ").hex(region.size).end();

    let hv = hyperv_up();
    crash_ctl_capabilities();
    let conn = vmbus_up(&hv);

    note("Kernel panic - not syncing: testguest: kdump scenario");
    // panic(): pvpanic first (priority INT_MAX): a crash kernel is loaded.
    check("pvpanic-crash-loaded-sent", pvpanic::send_event(PVPANIC_CRASH_LOADED));
    // hv_panic_vmbus_unload(): UNLOAD, then poll for the response with interrupts off.
    let status = vmbus::send_unload(&conn);
    check_eq("unload-posted", status, 0);
    let (answered, others) = vmbus::wait_for_unload(UNLOAD_WAIT_MS);
    check("unload-response", answered);
    check_eq("unload-no-other-messages", others as u64, 0);
    // kmsg_dump(KMSG_DUMP_PANIC): the crash report with the log tail.
    report_crash_message(b"testguest: kdump scenario\nKernel panic - not syncing: testguest: kdump scenario\n");
    // __crash_kexec() -> machine_crash_shutdown(): hv_crash_handler() disables this CPU's
    // SynIC, hyperv_cleanup() zeroes GUEST_OS_ID and disables the hypercall page.
    hyperv::synic_disable();
    hyperv::cleanup();
    check_eq("hypercall-disabled", cpu::rdmsr(HV_X64_MSR_HYPERCALL) & 1, 0);
    line().s("kexec: jumping to the crash kernel at ").hex(region.base + boot::stage2_entry_offset()).end();
    kexec::kexec(&region, si.paddr, failures())
}

/// The crash kernel: runs from the copy. Proves it (RIP, and the first stage's code is
/// overwritten with int3), sets Hyper-V up again with pages of its own, reconnects VMBus.
pub fn crash_kernel(si: &StartInfo, old_base: u64, bad_relocs: u32, stage1_failures: u32) -> ! {
    let (start, end) = boot::image_extent();
    let rip = cpu::rip();
    line().s("crash kernel running at ").hex(rip).s(" (image ").hex(start).s("..").hex(end).s(")").end();
    check_eq("crash-kernel-relocations", bad_relocs as u64, 0);
    check_with("crash-kernel-runs-from-copy", rip >= start && rip < end && start != old_base, |l| {
        l.s("rip ").hex(rip).s(" image ").hex(start).s(" first stage ").hex(old_base)
    });
    check_eq("first-stage-failures", stage1_failures as u64, 0);
    let (text_start, text_end) = boot::text_range();
    // SAFETY: the first stage's code is dead (this stage never calls it, its IDT and page
    // tables are replaced); overwriting it proves nothing here depends on it.
    unsafe { core::ptr::write_bytes(old_base as *mut u8, INT3, (text_end - text_start) as usize) };
    check_eq("guest-os-id-zero-after-kexec", cpu::rdmsr(HV_X64_MSR_GUEST_OS_ID), 0);

    let hv = hyperv_up();
    check_with("crash-kernel-hypercall-page-in-region", hv.hypercall_gpa >= start && hv.hypercall_gpa < end, |l| {
        l.s("hypercall page ").hex(hv.hypercall_gpa)
    });
    check("crash-kernel-simp-in-region", page_gpa(Which::Simp) >= start && page_gpa(Which::Simp) < end);
    crash_ctl_capabilities();
    vmbus_up(&hv);
    note("crash kernel: VMBus reconnected; capture done, powering off");
    let _ = si;
    finish()
}
