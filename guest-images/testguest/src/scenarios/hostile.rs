//! Hostile input: crashvmm must stay up and answer with the architectural error.
//!
//! Hypercall status codes follow the TLFS: the common codes (INVALID_HYPERCALL_CODE for an
//! unknown call code; INVALID_HYPERCALL_INPUT for a rep count on a simple call or a reserved
//! control bit; INVALID_ALIGNMENT for an input GPA not 8-byte aligned, an input block that
//! spans pages, or a GPA outside the guest physical address space) and HvPostMessage's own
//! (INVALID_PARAMETER for a message type of 0 or with bit 31 set, or a payload over 240
//! bytes; INVALID_CONNECTION_ID for an unknown connection).

use super::{hyperv_up, vmbus_up};
use crate::check::{check, check_eq, check_with, finish, note};
use crate::cpu::{rdmsr, wrmsr};
use crate::hyperv::{self, *};
use crate::idt::{rdmsr_checked, wrmsr_checked};
use crate::pvpanic;
use crate::serial::line;
use crate::start_info::StartInfo;
use crate::vmbus::{self, CHANNELMSG_REQUESTOFFERS, VERSION_WIN10_V5_3};

/// A GPA far outside any guest's RAM (but a canonical, 52-bit physical address).
const GPA_OUTSIDE: u64 = 0x000f_ff00_0000_0000;
/// The LAPIC page: inside the GPA space, not RAM.
const GPA_LAPIC: u64 = 0xfee0_0000;
/// Reserved bits of the hypercall control word (TLFS: 31:27, 47:44, 63:60).
const CONTROL_RESERVED_BIT: u64 = 1 << 27;

fn status(name: &'static str, got: u64, expected: u64) -> bool {
    check_eq(name, hv_result(got), expected)
}

/// The first address past the end of RAM (rounded to a page).
fn past_ram(si: &StartInfo) -> u64 {
    (si.ram_end() + 0xfff) & !0xfff
}

pub fn hypercall(si: &StartInfo) -> ! {
    let hv = hyperv_up();
    let conn = vmbus_up(&hv);
    let header = vmbus::header(CHANNELMSG_REQUESTOFFERS);
    let good = fill_post_input(conn.msg_conn_id, HVMSG_VMBUS, header.len() as u32, &header);

    status("post-gpa-past-ram", post_message_at(past_ram(si)), HV_STATUS_INVALID_ALIGNMENT);
    status("post-gpa-outside-gpa-space", post_message_at(GPA_OUTSIDE), HV_STATUS_INVALID_ALIGNMENT);
    status("post-gpa-lapic", post_message_at(GPA_LAPIC), HV_STATUS_INVALID_ALIGNMENT);
    status("post-gpa-wraps", post_message_at(!7), HV_STATUS_INVALID_ALIGNMENT);
    status("post-gpa-misaligned", post_message_at(good + 4), HV_STATUS_INVALID_ALIGNMENT);
    // An 8-byte aligned input whose 256 bytes cross into the next page.
    status("post-input-spans-pages", post_message_at(good + 4096 - 8), HV_STATUS_INVALID_ALIGNMENT);

    let g = fill_post_input(conn.msg_conn_id, HVMSG_VMBUS, 241, &[0; 240]);
    status("post-payload-241", post_message_at(g), HV_STATUS_INVALID_PARAMETER);
    let g = fill_post_input(conn.msg_conn_id, HVMSG_VMBUS, u32::MAX, &[0; 240]);
    status("post-payload-4g", post_message_at(g), HV_STATUS_INVALID_PARAMETER);
    let g = fill_post_input(conn.msg_conn_id, HVMSG_NONE, 8, &header);
    status("post-message-type-0", post_message_at(g), HV_STATUS_INVALID_PARAMETER);
    let g = fill_post_input(conn.msg_conn_id, 0x8000_0001, 8, &header);
    status("post-message-type-bit31", post_message_at(g), HV_STATUS_INVALID_PARAMETER);
    let g = fill_post_input(0x00ab_cdef, HVMSG_VMBUS, 8, &header);
    status("post-unknown-connection", post_message_at(g), HV_STATUS_INVALID_CONNECTION_ID);

    for code in [0u64, 1, 0x46, 0x5b, 0x5e, 0x8001, 0xffff] {
        status("unknown-hypercall-code", hyperv::hypercall(code, good, 0), HV_STATUS_INVALID_HYPERCALL_CODE);
    }
    status("post-rep-count", hyperv::hypercall(HVCALL_POST_MESSAGE | HV_HYPERCALL_REP_COMP_1, good, 0), 3);
    status(
        "post-reserved-control-bit",
        hyperv::hypercall(HVCALL_POST_MESSAGE | CONTROL_RESERVED_BIT, good, 0),
        HV_STATUS_INVALID_HYPERCALL_INPUT,
    );
    status(
        "post-fast",
        hyperv::hypercall(HVCALL_POST_MESSAGE | HV_HYPERCALL_FAST_BIT, good, 0),
        HV_STATUS_INVALID_HYPERCALL_INPUT,
    );

    // HvSignalEvent: no channel is offered, so no event connection exists.
    let fast_signal = HVCALL_SIGNAL_EVENT | HV_HYPERCALL_FAST_BIT;
    status(
        "signal-unknown-connection",
        hyperv::hypercall(fast_signal, 0x00ff_ffff, 0),
        HV_STATUS_INVALID_CONNECTION_ID,
    );
    status(
        "signal-flag-65535",
        hyperv::hypercall(fast_signal, 0xffff << 32 | 0x18, 0),
        HV_STATUS_INVALID_CONNECTION_ID,
    );
    status("signal-reserved-bits", hyperv::hypercall(fast_signal, u64::MAX, 0), HV_STATUS_INVALID_CONNECTION_ID);
    status("signal-slow-misaligned", hyperv::hypercall(HVCALL_SIGNAL_EVENT, good + 1, 0), HV_STATUS_INVALID_ALIGNMENT);
    status("signal-slow-outside", hyperv::hypercall(HVCALL_SIGNAL_EVENT, GPA_OUTSIDE, 0), HV_STATUS_INVALID_ALIGNMENT);
    status("signal-rep-count", hyperv::hypercall(fast_signal | HV_HYPERCALL_REP_COMP_1, 0x18, 0), 3);

    // The connection survived all of it.
    let offers = vmbus::request_offers(&conn);
    check("vmbus-still-serves-offers", offers.is_ok());
    finish()
}

pub fn synic(si: &StartInfo) -> ! {
    let hv = hyperv_up();
    let simp_ok = rdmsr(HV_X64_MSR_SIMP);
    // SIMP and SIEFP pointing outside RAM: accepted as registers (Hyper-V overlays them on the
    // GPA space), and messages for them are dropped, never written anywhere.
    for (name, gpa) in
        [("simp-past-ram", past_ram(si)), ("simp-outside-gpa-space", GPA_OUTSIDE), ("simp-lapic", GPA_LAPIC)]
    {
        let ok = wrmsr_checked(HV_X64_MSR_SIMP, gpa | HV_MSR_ENABLE);
        check_with(name, ok && rdmsr(HV_X64_MSR_SIMP) == gpa | HV_MSR_ENABLE, |l| {
            l.s("write faulted: ").dec(!ok as u64)
        });
        let st = vmbus::post(
            vmbus::contact_connection_id(VERSION_WIN10_V5_3),
            &vmbus::initiate_contact(VERSION_WIN10_V5_3, hv.vp_index),
        );
        check_eq("contact-posted-with-bad-simp", st, HV_STATUS_SUCCESS);
    }
    for (name, gpa) in [("siefp-past-ram", past_ram(si)), ("siefp-outside-gpa-space", GPA_OUTSIDE)] {
        let ok = wrmsr_checked(HV_X64_MSR_SIEFP, gpa | HV_MSR_ENABLE);
        check(name, ok && rdmsr(HV_X64_MSR_SIEFP) == gpa | HV_MSR_ENABLE);
    }
    // The hypercall page outside RAM: KVM's answer is #GP, and the old page stays.
    let hc = rdmsr(HV_X64_MSR_HYPERCALL);
    check("hypercall-page-outside-ram-faults", !wrmsr_checked(HV_X64_MSR_HYPERCALL, past_ram(si) | HV_MSR_ENABLE));
    check_eq("hypercall-msr-unchanged", rdmsr(HV_X64_MSR_HYPERCALL), hc);
    // Back to good pages: the messages for the bad ones were dropped; connect works.
    wrmsr(HV_X64_MSR_SIMP, simp_ok);
    wrmsr(HV_X64_MSR_SIEFP, page_gpa(Which::Siefp) | HV_MSR_ENABLE);
    let stale = vmbus::drain(100);
    line().s("messages after the SIMP came back: ").dec(stale as u64).end();
    vmbus_up(&hv);
    finish()
}

pub fn crash_message(si: &StartInfo) -> ! {
    hyperv_up();
    super::crash_ctl_capabilities();
    note("crash message outside RAM");
    report_crash_raw(GPA_OUTSIDE, 100);
    note("crash message of 8192 bytes");
    let page = pages().panic.gpa();
    pages().panic.0[..17].copy_from_slice(b"testguest: hostil");
    report_crash_raw(page, 8192);
    note("crash message running off the end of RAM");
    report_crash_raw(past_ram(si) - 16, 64);
    note("crash message of u64::MAX bytes at a wrapping address");
    report_crash_raw(u64::MAX - 8, u64::MAX);
    note("crash notify without the message bit");
    wrmsr(HV_X64_MSR_CRASH_CTL, HV_CRASH_CTL_CRASH_NOTIFY);
    note("crash message bit without notify (no report)");
    wrmsr(HV_X64_MSR_CRASH_CTL, HV_CRASH_CTL_CRASH_NOTIFY_MSG);
    check("crashvmm-still-answers", rdmsr(HV_X64_MSR_CRASH_CTL) & HV_CRASH_CTL_CRASH_NOTIFY != 0);
    finish()
}

pub fn msr(_si: &StartInfo) -> ! {
    hyperv_up();
    // Not implemented: reads and writes #GP.
    for m in
        [HV_X64_MSR_RESET, HV_X64_MSR_TIME_REF_COUNT, HV_X64_MSR_STIMER0_CONFIG, 0x4000_0106, HV_SYNTHETIC_MSR_LAST]
    {
        check("unknown-msr-read-faults", rdmsr_checked(m).is_none());
        check("unknown-msr-write-faults", !wrmsr_checked(m, 0x1234));
    }
    // Read-only: writes #GP, reads still work.
    for m in [HV_X64_MSR_VP_INDEX, HV_X64_MSR_TSC_FREQUENCY, HV_X64_MSR_APIC_FREQUENCY, HV_X64_MSR_SVERSION] {
        let before = rdmsr(m);
        check("read-only-msr-write-faults", !wrmsr_checked(m, before ^ 1));
        check_eq("read-only-msr-unchanged", rdmsr(m), before);
    }
    // Reserved SINT bits.
    let sint2 = HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT;
    let before = rdmsr(sint2);
    check("sint-reserved-bits-fault", !wrmsr_checked(sint2, before | 1 << 40));
    check_eq("sint-unchanged", rdmsr(sint2), before);
    // An MSR just outside the synthetic range that KVM does not know either.
    check("msr-past-synthetic-range-faults", rdmsr_checked(HV_SYNTHETIC_MSR_LAST + 1).is_none());
    // The synthetic MSRs still work.
    check_eq("vp-index-still-readable", rdmsr(HV_X64_MSR_VP_INDEX), 0);
    check("guest-os-id-kept", rdmsr(HV_X64_MSR_GUEST_OS_ID) == hv_generate_guest_id(GUEST_KERNEL_VERSION));
    finish()
}

/// Every byte value to pvpanic (crashvmm runs with `--on-panic ignore`); then the device
/// still reads back its capabilities.
pub fn pvpanic_bytes(_si: &StartInfo) -> ! {
    let before = crate::cpu::inb(pvpanic::PVPANIC_PORT);
    for v in 0..=255u8 {
        pvpanic::write_raw(v);
    }
    check_eq("pvpanic-still-reads-capabilities", crate::cpu::inb(pvpanic::PVPANIC_PORT) as u64, before as u64);
    check_eq("pvpanic-capabilities-all", before as u64, 0x7);
    finish()
}
