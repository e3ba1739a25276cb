//! The Hyper-V CPUID leaves crashvmm presents (guest-protocol §1.5).

use super::tlfs::*;

/// One CPUID leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidLeaf {
    pub function: u32,
    pub index: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// "Microsoft Hv" as EBX:ECX:EDX.
pub const HYPERV_VENDOR: [u32; 3] = [0x7263_694d, 0x666f_736f, 0x7648_2074];
/// "Hv#1".
pub const HYPERV_INTERFACE_HV1: u32 = 0x3123_7648;
/// The highest leaf we describe.
pub const HYPERV_MAX_LEAF: u32 = HYPERV_CPUID_HARDWARE_FEATURES;

/// Partition privileges we grant (CPUID 0x40000003 EAX): SynIC, hypercall page, VP index,
/// frequency MSRs, invariant TSC. No reference counter or TSC page (clock sources that would
/// cost an exit per read), no synthetic timers.
pub const FEATURES_EAX: u32 = HV_MSR_SYNIC_AVAILABLE
    | HV_MSR_HYPERCALL_AVAILABLE
    | HV_MSR_VP_INDEX_AVAILABLE
    | HV_ACCESS_FREQUENCY_MSRS
    | HV_ACCESS_TSC_INVARIANT;
/// High privileges: post messages and signal events, nothing that makes Linux a root partition.
pub const FEATURES_EBX: u32 = HV_POST_MESSAGES | HV_SIGNAL_EVENTS;
/// Misc features: frequency MSRs and the guest crash MSRs.
pub const FEATURES_EDX: u32 = HV_FEATURE_FREQUENCY_MSRS_AVAILABLE | HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE;
/// Recommendations: do not use auto-EOI (KVM's in-kernel LAPIC cannot emulate it).
pub const ENLIGHTENMENTS_EAX: u32 = HV_DEPRECATING_AEOI_RECOMMENDED;

/// What the partition offers beyond the leaves every crashvmm guest sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvOptions {
    /// The APIC MSRs (`HV_X64_MSR_EOI`, `_ICR`, `_TPR`) and the lazy EOI of the VP assist
    /// page: the privilege and the recommendation that make Linux use them
    /// (`hv_apic_eoi_write`: an interrupt whose EOI the hypervisor marked as not needed costs
    /// no exit). Only where the hypervisor serves those MSRs itself (KVM's own Hyper-V code):
    /// nothing in crashvmm can complete an EOI of KVM's in-kernel local APIC.
    pub apic_assist: bool,
}

/// The leaves 0x40000000..=0x40000006 for a partition of `vcpus` virtual processors.
pub fn hyperv_leaves(vcpus: u32, options: HvOptions) -> Vec<CpuidLeaf> {
    let leaf = |function, eax, ebx, ecx, edx| CpuidLeaf { function, index: 0, eax, ebx, ecx, edx };
    let [b, c, d] = HYPERV_VENDOR;
    let (features, hints) = match options.apic_assist {
        true => (FEATURES_EAX | HV_MSR_APIC_ACCESS_AVAILABLE, ENLIGHTENMENTS_EAX | HV_X64_APIC_ACCESS_RECOMMENDED),
        false => (FEATURES_EAX, ENLIGHTENMENTS_EAX),
    };
    vec![
        leaf(HYPERV_CPUID_VENDOR_AND_MAX_FUNCTIONS, HYPERV_MAX_LEAF, b, c, d),
        leaf(HYPERV_CPUID_INTERFACE, HYPERV_INTERFACE_HV1, 0, 0, 0),
        // Build 0x1bbc, version 6.1 (what QEMU reports; Linux only prints it).
        leaf(HYPERV_CPUID_VERSION, 0x1bbc, 0x0006_0001, 0, 0),
        leaf(HYPERV_CPUID_FEATURES, features, FEATURES_EBX, 0, FEATURES_EDX),
        // EBX: spin-lock retry count "never notify" (0xffffffff).
        leaf(HYPERV_CPUID_ENLIGHTMENT_INFO, hints, 0xffff_ffff, 0, 0),
        leaf(HYPERV_CPUID_IMPLEMENT_LIMITS, vcpus, vcpus, 0, 0),
        leaf(HYPERV_CPUID_HARDWARE_FEATURES, 0, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(regs: &[u32]) -> Vec<u8> {
        regs.iter().flat_map(|r| r.to_le_bytes()).collect()
    }

    #[test]
    fn linux_detects_hyperv() {
        let leaves = hyperv_leaves(4, HvOptions::default());
        let l0 = leaves[0];
        assert_eq!(l0.function, 0x4000_0000);
        assert!((0x4000_0005..=0x4000_ffff).contains(&l0.eax));
        assert_eq!(bytes(&[l0.ebx, l0.ecx, l0.edx]), b"Microsoft Hv");
        assert_eq!(bytes(&[leaves[1].eax]), b"Hv#1");
        let f = leaves[3];
        // Mandatory for ms_hyperv_platform(): hypercall and VP index MSRs.
        assert_eq!(f.eax & 0x60, 0x60);
        assert_eq!(f.eax, 0x8864, "the recipe's privilege mask");
        assert_eq!(f.ebx, 0x30);
        assert_eq!(f.edx, 0x500);
        // Root-partition, partition-id, CPU-management, extended-hypercall, isolation: clear.
        assert_eq!(f.ebx & ((1 << 0) | (1 << 1) | (1 << 12) | (1 << 20) | (1 << 22)), 0);
        assert_eq!(leaves[4].eax, 0x200);
        assert_eq!((leaves[5].eax, leaves[5].ebx), (4, 4));
        let functions: Vec<u32> = leaves.iter().map(|l| l.function).collect();
        assert_eq!(functions, (0x4000_0000..=0x4000_0006).collect::<Vec<_>>());
    }

    #[test]
    fn no_kvm_signature() {
        for l in hyperv_leaves(1, HvOptions { apic_assist: true }) {
            let b = bytes(&[l.ebx, l.ecx, l.edx]);
            assert!(!b.windows(3).any(|w| w == b"KVM"), "{l:?}");
        }
    }

    #[test]
    fn apic_assist_adds_its_privilege_and_recommendation_only() {
        let plain = hyperv_leaves(2, HvOptions::default());
        let assist = hyperv_leaves(2, HvOptions { apic_assist: true });
        assert_eq!(plain[3].eax & HV_MSR_APIC_ACCESS_AVAILABLE, 0);
        assert_eq!(plain[4].eax & HV_X64_APIC_ACCESS_RECOMMENDED, 0);
        // Linux's bits: privilege 4 of 0x40000003 EAX, hint 3 of 0x40000004 EAX.
        assert_eq!(assist[3].eax, plain[3].eax | 1 << 4);
        assert_eq!(assist[4].eax, plain[4].eax | 1 << 3);
        for i in [0, 1, 2, 5, 6] {
            assert_eq!(assist[i], plain[i]);
        }
        assert_eq!((assist[3].ebx, assist[3].edx), (plain[3].ebx, plain[3].edx));
    }
}
