//! The scenarios, by name (a contract with crashvmm's integration tests and benchmark), and
//! the steps they share.

pub mod basic;
pub mod bench_kdump;
pub mod bench_live;
pub mod hostile;
pub mod kdump;
pub mod virtio;
pub mod vmbus_stress;

use crate::check::{abort, check, check_eq, check_with};
use crate::cpu::rdmsr;
use crate::hyperv::{self, *};
use crate::serial::line;
use crate::start_info::StartInfo;
use crate::time;
use crate::vmbus::{self, Connection, VERSION_WIN10_V5_3, VMBUS_MESSAGE_CONNECTION_ID};

/// A scenario: its name and its body (which never returns: it powers off, halts or jumps).
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&StartInfo) -> !,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "boot", run: basic::boot },
    Scenario { name: "connect", run: basic::connect },
    Scenario { name: "panic", run: basic::panic },
    Scenario { name: "kdump", run: kdump::kdump },
    Scenario { name: "bench-panic", run: basic::bench_panic },
    Scenario { name: "bench-kdump", run: bench_kdump::bench_kdump },
    Scenario { name: "bench-live", run: bench_live::bench_live },
    Scenario { name: "hostile-hypercall", run: hostile::hypercall },
    Scenario { name: "hostile-synic", run: hostile::synic },
    Scenario { name: "hostile-crash-message", run: hostile::crash_message },
    Scenario { name: "hostile-msr", run: hostile::msr },
    Scenario { name: "pvpanic-bytes", run: hostile::pvpanic_bytes },
    Scenario { name: "vmbus-flood", run: vmbus_stress::flood },
    Scenario { name: "guest-flood", run: vmbus_stress::guest_flood },
    Scenario { name: "contact-during-unload", run: vmbus_stress::contact_during_unload },
    Scenario { name: "unload-without-connect", run: vmbus_stress::unload_without_connect },
    Scenario { name: "triple-fault", run: basic::triple_fault },
    Scenario { name: "idle", run: basic::idle },
    Scenario { name: "counter", run: basic::counter },
    Scenario { name: "virtio-net", run: virtio::virtio_net },
];

/// For the "unknown scenario" message.
pub const NAMES: &str = "boot connect panic kdump bench-panic bench-kdump bench-live hostile-hypercall hostile-synic \
                         hostile-crash-message hostile-msr pvpanic-bytes vmbus-flood guest-flood contact-during-unload \
                         unload-without-connect triple-fault idle counter virtio-net";

pub fn find(name: &[u8]) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name.as_bytes() == name)
}

/// What `hyperv_init()` learned.
#[derive(Clone, Copy)]
pub struct Hv {
    pub vp_index: u32,
    pub hypercall_gpa: u64,
}

/// Detect Hyper-V and enable it as `hyperv_init()` does: GUEST_OS_ID, hypercall page; read
/// the frequency MSRs and the VP index; SynIC on. Aborts the scenario when there is no
/// Hyper-V.
pub fn hyperv_up() -> Hv {
    let d = hyperv::detect();
    let detected = check_with("hyperv-detected", d.is_hyperv(), |l| {
        l.s("max leaf ")
            .hex(d.max_leaf as u64)
            .s(" signature ok ")
            .dec(d.signature_ok as u64)
            .s(" features ")
            .hex(d.features_eax as u64)
    });
    if !detected {
        abort("no Hyper-V (CPUID 0x40000000 is not \"Microsoft Hv\" with hypercall and VP index MSRs)");
    }
    check_eq("hyperv-interface", d.interface as u64, HYPERV_INTERFACE_HV1 as u64);
    check("hyperv-crash-msr-feature", d.features_edx & HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE != 0);
    check("hyperv-synic-feature", d.features_eax & HV_MSR_SYNIC_AVAILABLE != 0);
    check("hyperv-post-messages", d.features_ebx & HV_POST_MESSAGES != 0);
    check("hyperv-no-auto-eoi-hint", d.hints_eax & HV_DEPRECATING_AEOI_RECOMMENDED != 0);
    let tsc_hz = rdmsr(HV_X64_MSR_TSC_FREQUENCY);
    check("tsc-frequency", tsc_hz > 0);
    time::set_tsc_hz(tsc_hz);
    let vp_index = rdmsr(HV_X64_MSR_VP_INDEX) as u32;
    let hypercall_gpa = init_hypercall_page();
    let msr = rdmsr(HV_X64_MSR_HYPERCALL);
    check_eq("hypercall-msr", msr & !0xffe, hypercall_gpa | HV_MSR_ENABLE);
    let head = hyperv::hypercall_page_head();
    check_with("hypercall-page-written", head != [0; 4], |l| l.s("page still zero"));
    synic_enable();
    check_eq("synic-simp", rdmsr(HV_X64_MSR_SIMP), page_gpa(Which::Simp) | HV_MSR_ENABLE);
    check_eq("synic-sint2", rdmsr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT), HYPERVISOR_CALLBACK_VECTOR);
    Hv { vp_index, hypercall_gpa }
}

/// VMBus connect (5.3 expected) and the offers. Aborts when it fails.
pub fn vmbus_up(hv: &Hv) -> Connection {
    let c = match vmbus::connect(hv.vp_index) {
        Ok(c) => c,
        Err(e) => abort(e),
    };
    check_eq("vmbus-version", c.version as u64, VERSION_WIN10_V5_3 as u64);
    check_eq("vmbus-msg-conn-id", c.msg_conn_id as u64, VMBUS_MESSAGE_CONNECTION_ID as u64);
    match vmbus::request_offers(&c) {
        Ok(n) => {
            line().s("vmbus: ").dec(n as u64).s(" offer(s)").end();
            check("vmbus-all-offers-delivered", true);
        }
        Err(e) => {
            check("vmbus-all-offers-delivered", false);
            abort(e)
        }
    }
    c
}

/// The crash capabilities as Linux reads them at init (CRASH_CTL).
pub fn crash_ctl_capabilities() -> u64 {
    let ctl = rdmsr(HV_X64_MSR_CRASH_CTL);
    check_eq("crash-ctl-capabilities", ctl, HV_CRASH_CTL_CRASH_NOTIFY | HV_CRASH_CTL_CRASH_NOTIFY_MSG);
    ctl
}
