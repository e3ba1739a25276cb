//! Hyper-V Top-Level Functional Specification definitions used by crashvmm, with the names of
//! Linux's `hyperv-tlfs.h` / `hvgdk_mini.h`.

// CPUID leaves.
pub const HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS: u32 = 0x4000_0000;
pub const HYPERV_CPUID_INTERFACE: u32 = 0x4000_0001;
pub const HYPERV_CPUID_VERSION: u32 = 0x4000_0002;
pub const HYPERV_CPUID_FEATURES: u32 = 0x4000_0003;
pub const HYPERV_CPUID_ENLIGHTMENT_INFO: u32 = 0x4000_0004;
pub const HYPERV_CPUID_IMPLEMENT_LIMITS: u32 = 0x4000_0005;
pub const HYPERV_CPUID_HARDWARE_FEATURES: u32 = 0x4000_0006;
/// The whole hypervisor CPUID range Linux scans for signatures.
pub const HYPERVISOR_CPUID_RANGE: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_ffff;

// CPUID 0x40000003 EAX: partition privileges (low).
pub const HV_MSR_SYNIC_AVAILABLE: u32 = 1 << 2;
pub const HV_MSR_APIC_ACCESS_AVAILABLE: u32 = 1 << 4;
pub const HV_MSR_HYPERCALL_AVAILABLE: u32 = 1 << 5;
pub const HV_MSR_VP_INDEX_AVAILABLE: u32 = 1 << 6;
pub const HV_ACCESS_FREQUENCY_MSRS: u32 = 1 << 11;
pub const HV_ACCESS_TSC_INVARIANT: u32 = 1 << 15;
// CPUID 0x40000003 EBX: partition privileges (high).
pub const HV_POST_MESSAGES: u32 = 1 << 4;
pub const HV_SIGNAL_EVENTS: u32 = 1 << 5;
// CPUID 0x40000003 EDX: misc features.
pub const HV_FEATURE_FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
pub const HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE: u32 = 1 << 10;
// CPUID 0x40000004 EAX: recommendations.
pub const HV_X64_APIC_ACCESS_RECOMMENDED: u32 = 1 << 3;
pub const HV_DEPRECATING_AEOI_RECOMMENDED: u32 = 1 << 9;

// Synthetic MSRs.
pub const HV_X64_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
pub const HV_X64_MSR_HYPERCALL: u32 = 0x4000_0001;
pub const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;
pub const HV_X64_MSR_RESET: u32 = 0x4000_0003;
pub const HV_X64_MSR_VP_RUNTIME: u32 = 0x4000_0010;
pub const HV_X64_MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
pub const HV_X64_MSR_REFERENCE_TSC: u32 = 0x4000_0021;
pub const HV_X64_MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
pub const HV_X64_MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
pub const HV_X64_MSR_EOI: u32 = 0x4000_0070;
pub const HV_X64_MSR_ICR: u32 = 0x4000_0071;
pub const HV_X64_MSR_TPR: u32 = 0x4000_0072;
pub const HV_X64_MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;
pub const HV_X64_MSR_SCONTROL: u32 = 0x4000_0080;
pub const HV_X64_MSR_SVERSION: u32 = 0x4000_0081;
pub const HV_X64_MSR_SIEFP: u32 = 0x4000_0082;
pub const HV_X64_MSR_SIMP: u32 = 0x4000_0083;
pub const HV_X64_MSR_EOM: u32 = 0x4000_0084;
pub const HV_X64_MSR_SINT0: u32 = 0x4000_0090;
pub const HV_X64_MSR_SINT15: u32 = 0x4000_009f;
pub const HV_X64_MSR_CRASH_P0: u32 = 0x4000_0100;
pub const HV_X64_MSR_CRASH_P3: u32 = 0x4000_0103;
pub const HV_X64_MSR_CRASH_P4: u32 = 0x4000_0104;
pub const HV_X64_MSR_CRASH_CTL: u32 = 0x4000_0105;
pub const HV_X64_MSR_TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;
/// The synthetic MSR range crashvmm takes from KVM with an MSR filter.
pub const HV_SYNTHETIC_MSR_BASE: u32 = 0x4000_0000;
pub const HV_SYNTHETIC_MSR_COUNT: u32 = 0x200;

/// `HV_X64_MSR_HYPERCALL` / `SIMP` / `SIEFP` / `VP_ASSIST_PAGE`: enable bit.
pub const HV_MSR_ENABLE: u64 = 1 << 0;
/// `HV_X64_MSR_HYPERCALL` bit 1: locked.
pub const HV_X64_MSR_HYPERCALL_LOCKED: u64 = 1 << 1;
/// Page frame bits of the page-address MSRs.
pub const HV_MSR_PAGE_MASK: u64 = !0xfff;

/// `SINTx`: vector, masked, auto-EOI, polling.
pub const HV_SYNIC_SINT_VECTOR_MASK: u64 = 0xff;
pub const HV_SYNIC_SINT_MASKED: u64 = 1 << 16;
pub const HV_SYNIC_SINT_AUTO_EOI: u64 = 1 << 17;
pub const HV_SYNIC_SINT_POLLING: u64 = 1 << 18;
pub const HV_SYNIC_SINT_COUNT: usize = 16;
/// The SynIC version `SVERSION` reports.
pub const HV_SYNIC_VERSION_1: u64 = 1;

/// `CRASH_CTL` bits.
pub const HV_CRASH_CTL_CRASH_NOTIFY: u64 = 1 << 63;
pub const HV_CRASH_CTL_CRASH_NOTIFY_MSG: u64 = 1 << 62;
/// Largest crash message Linux writes (one page).
pub const HV_CRASH_MSG_MAX: u64 = 4096;

// Hypercall control word.
pub const HV_HYPERCALL_FAST_BIT: u64 = 1 << 16;
pub const HV_HYPERCALL_VARHEAD_OFFSET: u32 = 17;
pub const HV_HYPERCALL_REP_COMP_OFFSET: u32 = 32;
pub const HV_HYPERCALL_REP_START_OFFSET: u32 = 48;
/// Reserved bits of the hypercall input value (TLFS: 31:27, 47:44, 63:60).
pub const HV_HYPERCALL_RSVD_MASK: u64 = 0xf000_f000_f800_0000;
pub const HVCALL_POST_MESSAGE: u16 = 0x005c;
pub const HVCALL_SIGNAL_EVENT: u16 = 0x005d;

// Hypercall status codes.
pub const HV_STATUS_SUCCESS: u16 = 0;
pub const HV_STATUS_INVALID_HYPERCALL_CODE: u16 = 2;
pub const HV_STATUS_INVALID_HYPERCALL_INPUT: u16 = 3;
pub const HV_STATUS_INVALID_ALIGNMENT: u16 = 4;
pub const HV_STATUS_INVALID_PARAMETER: u16 = 5;
pub const HV_STATUS_ACCESS_DENIED: u16 = 6;
pub const HV_STATUS_INVALID_CONNECTION_ID: u16 = 0x12;
pub const HV_STATUS_INSUFFICIENT_BUFFERS: u16 = 0x13;

/// `struct hv_input_post_message`: connection id, reserved, message type, payload size, payload.
pub const HV_POST_MESSAGE_HEADER_SIZE: usize = 16;
/// The whole input block of HvPostMessage (header and 240-byte payload).
pub const HV_POST_MESSAGE_INPUT_SIZE: usize = 256;
pub const HV_MESSAGE_PAYLOAD_BYTE_COUNT: usize = 240;
/// `struct hv_message`: a SynIC message slot.
pub const HV_MESSAGE_SIZE: usize = 256;
pub const HV_MESSAGE_HEADER_SIZE: usize = 16;
/// `message_flags` bit 0.
pub const HV_MESSAGE_FLAG_PENDING: u8 = 1 << 0;
/// `HVMSG_NONE`: the slot is free.
pub const HVMSG_NONE: u32 = 0;
/// The VMBus SINT.
pub const VMBUS_MESSAGE_SINT: usize = 2;
