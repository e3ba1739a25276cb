//! Guest CPUID: what KVM supports, adjusted per vCPU for topology and with the hypervisor bit.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31, "running under a hypervisor".
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24, the local APIC timer's TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28, HTT: EBX[23:16] is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0xB/0x1F level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` items.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjust one entry for vCPU `id` of `count` (one socket, one thread per core).
pub fn patch_entry(e: &mut kvm_cpuid_entry2, id: u32, count: u32) {
    match e.function {
        0x1 => {
            e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (count.min(255) << 16);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            e.edx |= LEAF1_EDX_HTT;
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            let cores = (count.min(64) - 1) << 26;
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { (count.min(4096) - 1) << 14 } else { 0 };
            e.eax = (e.eax & 0x3fff) | cores | sharing;
        }
        0xb | 0x1f => {
            e.edx = id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(count);
                    e.ebx = count;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        // No architectural PMU: counters are not virtualized for every host we run on.
        0xa => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        _ => {}
    }
}

/// Offer the TSC-deadline timer, which KVM emulates but leaves out of its supported CPUID
/// (`KVM_CAP_TSC_DEADLINE_TIMER` says it has it): the guest then arms its timer with one
/// `IA32_TSC_DEADLINE` write instead of the one-shot mode's count register.
pub fn add_tsc_deadline_timer(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 0x1) {
        e.ecx |= LEAF1_ECX_TSC_DEADLINE;
    }
}

/// The CPUID of vCPU `id` of `count`, from KVM's supported CPUID.
pub fn vcpu_cpuid(supported: &CpuId, id: u32, count: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        patch_entry(e, id, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax: 0x1, ebx: 0xdead_beef, ecx: 0, edx: 0, ..Default::default() }
    }

    #[test]
    fn leaf1_has_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xbeef);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn extended_topology_numbers_cores() {
        for (id, count, bits) in [(0, 1, 0), (1, 2, 1), (2, 3, 2), (5, 8, 3)] {
            let mut smt = entry(0xb, 0);
            let mut core = entry(0xb, 1);
            let mut end = entry(0xb, 2);
            for e in [&mut smt, &mut core, &mut end] {
                patch_entry(e, id, count);
                assert_eq!(e.edx, id);
            }
            assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8), (0, 1, LEVEL_TYPE_SMT));
            assert_eq!((core.eax, core.ebx, core.ecx >> 8), (bits, count, LEVEL_TYPE_CORE));
            assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
        }
    }

    #[test]
    fn pmu_is_hidden() {
        let mut e = entry(0xa, 0);
        patch_entry(&mut e, 0, 1);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
    }

    #[test]
    fn the_tsc_deadline_timer_is_offered_in_leaf_1_only() {
        let mut cpuid = CpuId::from_entries(&[entry(0, 0), entry(1, 0), entry(0xb, 0)]).unwrap();
        add_tsc_deadline_timer(&mut cpuid);
        let ecx: Vec<u32> = cpuid.as_slice().iter().map(|e| e.ecx).collect();
        assert_eq!(ecx, [0, 1 << 24, 0]);
    }
}
