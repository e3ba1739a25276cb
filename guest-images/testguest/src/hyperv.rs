//! The Hyper-V guest side, done as Linux does it (guest-protocol §1-4): detection through
//! CPUID, GUEST_OS_ID, the hypercall page, the SynIC, the crash MSRs, and the teardown of
//! `hv_crash_handler()` / `hyperv_cleanup()` before a kexec.

use core::arch::asm;

use crate::cpu::{cpuid, rdmsr, wrmsr};
use crate::global::Global;

// CPUID leaves and bits.
pub const HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS: u32 = 0x4000_0000;
pub const HYPERV_CPUID_INTERFACE: u32 = 0x4000_0001;
pub const HYPERV_CPUID_FEATURES: u32 = 0x4000_0003;
pub const HYPERV_CPUID_ENLIGHTMENT_INFO: u32 = 0x4000_0004;
pub const HYPERV_CPUID_MIN: u32 = 0x4000_0005;
pub const HYPERV_CPUID_MAX: u32 = 0x4000_ffff;
/// CPUID.1:ECX bit 31.
pub const X86_FEATURE_HYPERVISOR: u32 = 1 << 31;
pub const HV_MSR_SYNIC_AVAILABLE: u32 = 1 << 2;
pub const HV_MSR_HYPERCALL_AVAILABLE: u32 = 1 << 5;
pub const HV_MSR_VP_INDEX_AVAILABLE: u32 = 1 << 6;
pub const HV_POST_MESSAGES: u32 = 1 << 4;
pub const HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE: u32 = 1 << 10;
pub const HV_DEPRECATING_AEOI_RECOMMENDED: u32 = 1 << 9;
/// "Microsoft Hv" in EBX, ECX, EDX.
pub const HYPERV_SIGNATURE: [u32; 3] = [0x7263_694d, 0x666f_736f, 0x7648_2074];
/// "Hv#1".
pub const HYPERV_INTERFACE_HV1: u32 = 0x3123_7648;

// Synthetic MSRs.
pub const HV_X64_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
pub const HV_X64_MSR_HYPERCALL: u32 = 0x4000_0001;
pub const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;
pub const HV_X64_MSR_RESET: u32 = 0x4000_0003;
pub const HV_X64_MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
pub const HV_X64_MSR_REFERENCE_TSC: u32 = 0x4000_0021;
pub const HV_X64_MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
pub const HV_X64_MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
pub const HV_X64_MSR_SCONTROL: u32 = 0x4000_0080;
pub const HV_X64_MSR_SVERSION: u32 = 0x4000_0081;
pub const HV_X64_MSR_SIEFP: u32 = 0x4000_0082;
pub const HV_X64_MSR_SIMP: u32 = 0x4000_0083;
pub const HV_X64_MSR_EOM: u32 = 0x4000_0084;
pub const HV_X64_MSR_SINT0: u32 = 0x4000_0090;
pub const HV_X64_MSR_STIMER0_CONFIG: u32 = 0x4000_00b0;
pub const HV_X64_MSR_CRASH_P0: u32 = 0x4000_0100;
pub const HV_X64_MSR_CRASH_P1: u32 = 0x4000_0101;
pub const HV_X64_MSR_CRASH_P2: u32 = 0x4000_0102;
pub const HV_X64_MSR_CRASH_P3: u32 = 0x4000_0103;
pub const HV_X64_MSR_CRASH_P4: u32 = 0x4000_0104;
pub const HV_X64_MSR_CRASH_CTL: u32 = 0x4000_0105;
/// The last MSR of the synthetic range crashvmm takes from KVM.
pub const HV_SYNTHETIC_MSR_LAST: u32 = 0x4000_01ff;

pub const HV_MSR_ENABLE: u64 = 1 << 0;
pub const HV_SYNIC_SINT_MASKED: u64 = 1 << 16;
pub const HV_CRASH_CTL_CRASH_NOTIFY: u64 = 1 << 63;
pub const HV_CRASH_CTL_CRASH_NOTIFY_MSG: u64 = 1 << 62;
/// `HYPERVISOR_CALLBACK_VECTOR`, what Linux programs into SINT2.
pub const HYPERVISOR_CALLBACK_VECTOR: u64 = 0xf3;
pub const VMBUS_MESSAGE_SINT: u32 = 2;

/// `HV_LINUX_VENDOR_ID`.
pub const HV_LINUX_VENDOR_ID: u64 = 0x8100;
/// The kernel version the test guest claims in GUEST_OS_ID: 6.1.0.
pub const GUEST_KERNEL_VERSION: u64 = (6 << 16) | (1 << 8);

/// `hv_generate_guest_id()`: vendor 0x8100 in bits 63:48, LINUX_VERSION_CODE in bits 47:16.
pub const fn hv_generate_guest_id(version_code: u64) -> u64 {
    HV_LINUX_VENDOR_ID << 48 | version_code << 16
}

// Hypercalls.
pub const HVCALL_POST_MESSAGE: u64 = 0x005c;
pub const HVCALL_SIGNAL_EVENT: u64 = 0x005d;
pub const HV_HYPERCALL_FAST_BIT: u64 = 1 << 16;
pub const HV_HYPERCALL_REP_COMP_1: u64 = 1 << 32;
pub const HV_STATUS_SUCCESS: u64 = 0;
pub const HV_STATUS_INVALID_HYPERCALL_CODE: u64 = 2;
pub const HV_STATUS_INVALID_HYPERCALL_INPUT: u64 = 3;
pub const HV_STATUS_INVALID_ALIGNMENT: u64 = 4;
pub const HV_STATUS_INVALID_PARAMETER: u64 = 5;
pub const HV_STATUS_INVALID_CONNECTION_ID: u64 = 0x12;
pub const HV_STATUS_INSUFFICIENT_BUFFERS: u64 = 0x13;
/// `hv_result()`: the status is the low 16 bits.
pub const fn hv_result(status: u64) -> u64 {
    status & 0xffff
}

/// `struct hv_input_post_message` and `struct hv_message`.
pub const HV_MESSAGE_SIZE: usize = 256;
pub const HV_MESSAGE_PAYLOAD_BYTE_COUNT: usize = 240;
pub const HV_MESSAGE_FLAG_PENDING: u8 = 1 << 0;
pub const HVMSG_NONE: u32 = 0;
/// The SynIC message type of VMBus messages (Linux always posts 1).
pub const HVMSG_VMBUS: u32 = 1;

/// A 4 KiB, page-aligned buffer.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

impl Page {
    pub const fn zeroed() -> Self {
        Page([0; 4096])
    }
    pub fn gpa(&self) -> u64 {
        self.0.as_ptr() as u64
    }
}

/// The pages Hyper-V needs, in this image's .bss (so a copied image has its own).
pub struct Pages {
    pub hypercall: Page,
    pub simp: Page,
    pub siefp: Page,
    /// The per-CPU HvPostMessage input buffer (`hyperv_pcpu_input_arg`).
    pub input: Page,
    /// The crash message page (`hv_panic_page`).
    pub panic: Page,
    /// The VMBus interrupt page (protocol < 5.0) and the two monitor pages.
    pub int_page: Page,
    pub monitor1: Page,
    pub monitor2: Page,
}

static PAGES: Global<Pages> = Global::new(Pages {
    hypercall: Page::zeroed(),
    simp: Page::zeroed(),
    siefp: Page::zeroed(),
    input: Page::zeroed(),
    panic: Page::zeroed(),
    int_page: Page::zeroed(),
    monitor1: Page::zeroed(),
    monitor2: Page::zeroed(),
});

/// The pages the guest itself writes (post-message input, panic message). Only the BSP, no
/// interrupts: callers take the reference, use it and drop it.
pub fn pages() -> &'static mut Pages {
    // SAFETY: only the BSP runs Hyper-V code, interrupts off, and no caller keeps the reference
    // across another call of `pages`. Pages the hypervisor writes (hypercall, SIMP) are only
    // reached through raw pointers (`page_gpa`, `vmbus_slot`).
    unsafe { &mut *PAGES.get() }
}

/// Which of the Hyper-V pages.
#[derive(Clone, Copy)]
pub enum Which {
    Hypercall,
    Simp,
    Siefp,
    IntPage,
    Monitor1,
    Monitor2,
}

/// The GPA (= address, identity mapped) of one of the Hyper-V pages, without a reference.
pub fn page_gpa(which: Which) -> u64 {
    let p = PAGES.get();
    // SAFETY: only field addresses are computed; nothing is read or written.
    unsafe {
        (match which {
            Which::Hypercall => &raw mut (*p).hypercall,
            Which::Simp => &raw mut (*p).simp,
            Which::Siefp => &raw mut (*p).siefp,
            Which::IntPage => &raw mut (*p).int_page,
            Which::Monitor1 => &raw mut (*p).monitor1,
            Which::Monitor2 => &raw mut (*p).monitor2,
        }) as u64
    }
}

/// What CPUID says about the hypervisor.
#[derive(Clone, Copy)]
pub struct Detected {
    pub max_leaf: u32,
    pub signature_ok: bool,
    pub interface: u32,
    pub features_eax: u32,
    pub features_ebx: u32,
    pub features_edx: u32,
    pub hints_eax: u32,
}

impl Detected {
    /// `ms_hyperv_platform()`: the hypervisor bit, the leaf range, the signature, and the
    /// HYPERCALL and VP_INDEX MSRs.
    pub fn is_hyperv(&self) -> bool {
        let need = HV_MSR_HYPERCALL_AVAILABLE | HV_MSR_VP_INDEX_AVAILABLE;
        self.signature_ok
            && (HYPERV_CPUID_MIN..=HYPERV_CPUID_MAX).contains(&self.max_leaf)
            && self.features_eax & need == need
    }
}

/// Read the hypervisor CPUID leaves (guest-protocol §1.1).
pub fn detect() -> Detected {
    let hypervisor = cpuid(1)[2] & X86_FEATURE_HYPERVISOR != 0;
    let l0 = cpuid(HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS);
    let f = cpuid(HYPERV_CPUID_FEATURES);
    Detected {
        max_leaf: l0[0],
        signature_ok: hypervisor && [l0[1], l0[2], l0[3]] == HYPERV_SIGNATURE,
        interface: cpuid(HYPERV_CPUID_INTERFACE)[0],
        features_eax: f[0],
        features_ebx: f[1],
        features_edx: f[3],
        hints_eax: cpuid(HYPERV_CPUID_ENLIGHTMENT_INFO)[0],
    }
}

/// `hyperv_init()`: GUEST_OS_ID, then the hypercall page (read-modify-write of the MSR).
/// Returns the page's GPA.
pub fn init_hypercall_page() -> u64 {
    wrmsr(HV_X64_MSR_GUEST_OS_ID, hv_generate_guest_id(GUEST_KERNEL_VERSION));
    let gpa = page_gpa(Which::Hypercall);
    let old = rdmsr(HV_X64_MSR_HYPERCALL);
    wrmsr(HV_X64_MSR_HYPERCALL, (old & 0xfff) | gpa | HV_MSR_ENABLE);
    gpa
}

/// A hypercall through the page: RCX = control, RDX = input GPA (or fast input 1), R8 =
/// output GPA (or fast input 2); status in RAX. The page may clobber RCX, RDX, R8-R11.
pub fn hypercall(control: u64, input: u64, output: u64) -> u64 {
    let page = page_gpa(Which::Hypercall);
    let status: u64;
    // SAFETY: the page holds the hypervisor's hypercall code (enabled by
    // init_hypercall_page); it follows the x64 hypercall ABI above and returns with RET.
    unsafe {
        asm!(
            "call {page}",
            page = in(reg) page,
            inout("rcx") control => _,
            inout("rdx") input => _,
            inout("r8") output => _,
            out("rax") status,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        )
    }
    status
}

/// HvPostMessage with an arbitrary input GPA (the hostile scenarios name bad ones).
pub fn post_message_at(input_gpa: u64) -> u64 {
    hv_result(hypercall(HVCALL_POST_MESSAGE, input_gpa, 0))
}

/// Fill the input page as `hv_post_message()` does: connection id, reserved 0, message type,
/// payload size, payload. Returns its GPA.
pub fn fill_post_input(connection_id: u32, message_type: u32, payload_size: u32, payload: &[u8]) -> u64 {
    let input = &mut pages().input.0;
    input[0..4].copy_from_slice(&connection_id.to_le_bytes());
    input[4..8].copy_from_slice(&0u32.to_le_bytes());
    input[8..12].copy_from_slice(&message_type.to_le_bytes());
    input[12..16].copy_from_slice(&payload_size.to_le_bytes());
    let n = payload.len().min(HV_MESSAGE_PAYLOAD_BYTE_COUNT);
    input[16..16 + n].copy_from_slice(&payload[..n]);
    input.as_ptr() as u64
}

/// `hv_post_message(connection_id, 1, payload)`: the HV status.
pub fn post_message(connection_id: u32, payload: &[u8]) -> u64 {
    let gpa = fill_post_input(connection_id, HVMSG_VMBUS, payload.len() as u32, payload);
    post_message_at(gpa)
}

/// `hv_synic_enable_regs()`: SIMP, SIEFP, SINT2 (vector 0xF3, no auto-EOI because of hint
/// bit 9), SCONTROL. Each a read-modify-write, as Linux does.
pub fn synic_enable() {
    let (simp, siefp) = (page_gpa(Which::Simp), page_gpa(Which::Siefp));
    let v = rdmsr(HV_X64_MSR_SIMP);
    wrmsr(HV_X64_MSR_SIMP, (v & 0xffe) | simp | HV_MSR_ENABLE);
    let v = rdmsr(HV_X64_MSR_SIEFP);
    wrmsr(HV_X64_MSR_SIEFP, (v & 0xffe) | siefp | HV_MSR_ENABLE);
    let sint2 = HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT;
    let v = rdmsr(sint2);
    wrmsr(sint2, (v & !(0xff | HV_SYNIC_SINT_MASKED | (1 << 17))) | HYPERVISOR_CALLBACK_VECTOR);
    let v = rdmsr(HV_X64_MSR_SCONTROL);
    wrmsr(HV_X64_MSR_SCONTROL, v | HV_MSR_ENABLE);
}

/// `hv_synic_disable_regs()` of `hv_crash_handler()`: SINT2 masked, SIMP and SIEFP disabled
/// (GPA 0), SCONTROL disabled.
pub fn synic_disable() {
    let sint2 = HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT;
    wrmsr(sint2, rdmsr(sint2) | HV_SYNIC_SINT_MASKED);
    wrmsr(HV_X64_MSR_SIMP, rdmsr(HV_X64_MSR_SIMP) & 0xffe);
    wrmsr(HV_X64_MSR_SIEFP, rdmsr(HV_X64_MSR_SIEFP) & 0xffe);
    wrmsr(HV_X64_MSR_SCONTROL, rdmsr(HV_X64_MSR_SCONTROL) & !HV_MSR_ENABLE);
}

/// `hyperv_cleanup()`: GUEST_OS_ID 0, hypercall page disabled, reference TSC disabled.
pub fn cleanup() {
    wrmsr(HV_X64_MSR_GUEST_OS_ID, 0);
    wrmsr(HV_X64_MSR_HYPERCALL, rdmsr(HV_X64_MSR_HYPERCALL) & !HV_MSR_ENABLE);
    wrmsr(HV_X64_MSR_REFERENCE_TSC, rdmsr(HV_X64_MSR_REFERENCE_TSC) & !HV_MSR_ENABLE);
}

/// `hv_kmsg_dump()`: P0-P2 zero, P3 the message page's GPA, P4 its length, then CRASH_CTL
/// with NOTIFY | NOTIFY_MSG. The message goes into the panic page first.
pub fn report_crash_message(text: &[u8]) {
    let page = &mut pages().panic;
    let n = text.len().min(page.0.len());
    page.0[..n].copy_from_slice(&text[..n]);
    report_crash_raw(page.gpa(), n as u64);
}

/// The crash-MSR sequence with any P3/P4 (hostile scenarios pass bad ones).
pub fn report_crash_raw(p3: u64, p4: u64) {
    wrmsr(HV_X64_MSR_CRASH_P0, 0);
    wrmsr(HV_X64_MSR_CRASH_P1, 0);
    wrmsr(HV_X64_MSR_CRASH_P2, 0);
    wrmsr(HV_X64_MSR_CRASH_P3, p3);
    wrmsr(HV_X64_MSR_CRASH_P4, p4);
    wrmsr(HV_X64_MSR_CRASH_CTL, HV_CRASH_CTL_CRASH_NOTIFY | HV_CRASH_CTL_CRASH_NOTIFY_MSG);
}

/// The VMBus SynIC slot (SINT 2) of this CPU's message page.
pub fn vmbus_slot() -> *mut u8 {
    (page_gpa(Which::Simp) + VMBUS_MESSAGE_SINT as u64 * HV_MESSAGE_SIZE as u64) as *mut u8
}

/// The first bytes of the hypercall page (what the hypervisor wrote there).
pub fn hypercall_page_head() -> [u8; 4] {
    // SAFETY: the page is this image's own, identity mapped; read volatile because the
    // hypervisor wrote it.
    unsafe { core::ptr::read_volatile(page_gpa(Which::Hypercall) as *const [u8; 4]) }
}
