//! Glue between KVM and the userspace Hyper-V of `devices::hyperv`: CPUID, the MSR filter,
//! guest memory access, and the state shared by the vCPU threads.

use std::sync::Mutex;
use std::time::Instant;

use devices::hyperv::cpuid::{hyperv_leaves, HvOptions};
use devices::hyperv::hypercall::MessageHandler;
use devices::hyperv::tlfs::{
    HV_STATUS_INSUFFICIENT_BUFFERS, HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_INVALID_HYPERCALL_INPUT,
    HV_SYNTHETIC_MSR_BASE, HV_SYNTHETIC_MSR_COUNT, HV_X64_MSR_EOI, HV_X64_MSR_VP_ASSIST_PAGE, HYPERVISOR_CPUID_RANGE,
};
use devices::hyperv::{HvConfig, HvPartition};
use devices::vmbus::messages::VMBUS_SYNIC_MESSAGE_TYPE;
use devices::vmbus::{Output, ServerConfig, VmbusServer};
use devices::{GuestMemory, OutOfRange};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, CpuId, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, Error)]
pub enum HypervError {
    #[error("this KVM lacks {0}, which crashvmm needs")]
    MissingCap(&'static str),
    #[error("{what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
}

/// KVM's LAPIC timer runs at 1 GHz (`APIC_BUS_CYCLE_NS_DEFAULT` = 1).
pub const APIC_HZ: u64 = 1_000_000_000;
/// CPUID 0x80000007 EDX bit 8: invariant TSC (goes with `HV_ACCESS_TSC_INVARIANT`).
const CPUID_80000007_EDX_INVARIANT_TSC: u32 = 1 << 8;

/// Guest RAM as `devices` sees it.
pub struct GuestRam<'a>(pub &'a GuestMemoryMmap);

impl GuestMemory for GuestRam<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        gpa.checked_add(buf.len() as u64).ok_or(OutOfRange { gpa, len: buf.len() })?;
        self.0.read_slice(buf, GuestAddress(gpa)).map_err(|_| OutOfRange { gpa, len: buf.len() })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        gpa.checked_add(data.len() as u64).ok_or(OutOfRange { gpa, len: data.len() })?;
        self.0.write_slice(data, GuestAddress(gpa)).map_err(|_| OutOfRange { gpa, len: data.len() })
    }
}

/// The partition and its VMBus server, behind one lock shared by the vCPU threads.
pub struct HyperV {
    pub partition: HvPartition,
    pub vmbus: VmbusServer,
    /// The VP and time of the UNLOAD being answered, for the completion latency.
    pub unload_started: Option<(u32, Instant)>,
}

impl HyperV {
    pub fn new(config: HvConfig, vmbus: ServerConfig) -> Mutex<Self> {
        Mutex::new(Self { partition: HvPartition::new(config), vmbus: VmbusServer::new(vmbus), unload_started: None })
    }
}

/// Tag of a queued UNLOAD_RESPONSE, so that its delivery can be timed.
pub const TAG_UNLOAD_RESPONSE: u64 = 1;

/// The hypercall layer's view of the VMBus server: collects what the server wants done.
pub struct VmbusPort<'a> {
    pub server: &'a mut VmbusServer,
    pub outputs: Vec<Output>,
    /// Whether the SynIC queues have room for every reply one message can cause.
    pub room: bool,
}

impl<'a> VmbusPort<'a> {
    pub fn new(hv: &'a mut HyperV) -> Self {
        let room = hv.partition.has_room(hv.vmbus.max_replies());
        Self { server: &mut hv.vmbus, outputs: Vec::new(), room }
    }
}

impl MessageHandler for VmbusPort<'_> {
    fn post_message(&mut self, vp: u32, connection_id: u32, message_type: u32, payload: &[u8]) -> u16 {
        if message_type != VMBUS_SYNIC_MESSAGE_TYPE {
            return HV_STATUS_INVALID_HYPERCALL_INPUT;
        }
        if !self.room {
            // The guest has not read its replies: it retries later, nothing is lost (TLFS
            // HvCallPostMessage; Linux's vmbus_post_msg() backs off and retries).
            return HV_STATUS_INSUFFICIENT_BUFFERS;
        }
        let (status, out) = self.server.post_message(vp, connection_id, payload);
        self.outputs.extend(out);
        status
    }

    fn signal_event(&mut self, _vp: u32, _connection_id: u32, _flag: u16) -> u16 {
        // No channel is open, so there is no event connection to signal.
        HV_STATUS_INVALID_CONNECTION_ID
    }
}

/// Replace every hypervisor leaf (KVM's "KVMKVMKVM" ones included) with the Hyper-V leaves, so
/// that Linux selects Hyper-V, and advertise the invariant TSC.
pub fn hyperv_cpuid(cpuid: &CpuId, vcpus: u32, options: HvOptions) -> Result<CpuId, HypervError> {
    let mut entries: Vec<kvm_cpuid_entry2> =
        cpuid.as_slice().iter().filter(|e| !HYPERVISOR_CPUID_RANGE.contains(&e.function)).copied().collect();
    for e in entries.iter_mut().filter(|e| e.function == 0x8000_0007) {
        e.edx |= CPUID_80000007_EDX_INVARIANT_TSC;
    }
    entries.extend(hyperv_leaves(vcpus, options).into_iter().map(|l| kvm_cpuid_entry2 {
        function: l.function,
        index: l.index,
        eax: l.eax,
        ebx: l.ebx,
        ecx: l.ecx,
        edx: l.edx,
        ..Default::default()
    }));
    CpuId::from_entries(&entries).map_err(|_| HypervError::MissingCap("room for the Hyper-V CPUID leaves"))
}

/// The synthetic MSRs KVM serves itself where it has Hyper-V code of its own (`KVM_CAP_HYPERV`):
/// the APIC MSRs (EOI, ICR, TPR) and the VP assist page, whose lazy EOI is KVM's PV EOI on that
/// page. They touch KVM's in-kernel local APIC, which crashvmm cannot reach.
const KVM_APIC_MSRS: std::ops::RangeInclusive<u32> = HV_X64_MSR_EOI..=HV_X64_MSR_VP_ASSIST_PAGE;

/// The MSR filter's bitmap over the synthetic range: a clear bit sends the guest's accesses to
/// crashvmm, a set one leaves them to KVM.
fn synthetic_msr_bitmap(options: HvOptions) -> Vec<u8> {
    let mut bitmap = vec![0u8; (HV_SYNTHETIC_MSR_COUNT / 8) as usize];
    if options.apic_assist {
        for msr in KVM_APIC_MSRS {
            let bit = (msr - HV_SYNTHETIC_MSR_BASE) as usize;
            bitmap[bit / 8] |= 1 << (bit % 8);
        }
    }
    bitmap
}

/// Route the synthetic MSRs (and any MSR KVM does not know) to userspace, but for the APIC MSRs
/// where KVM serves them (then the returned options offer them to the guest).
pub fn setup_msr_exits(kvm: &Kvm, vm: &VmFd) -> Result<HvOptions, HypervError> {
    if !kvm.check_extension(Cap::X86UserSpaceMsr) {
        return Err(HypervError::MissingCap("KVM_CAP_X86_USER_SPACE_MSR"));
    }
    if !kvm.check_extension(Cap::X86MsrFilter) {
        return Err(HypervError::MissingCap("KVM_CAP_X86_MSR_FILTER"));
    }
    let options = HvOptions { apic_assist: kvm.check_extension(Cap::Hyperv) };
    if options.apic_assist {
        log::info!("hyperv: KVM serves the APIC MSRs and the VP assist page's lazy EOI");
    } else {
        log::info!("hyperv: this KVM has no Hyper-V code of its own: no APIC MSRs or lazy EOI for the guest");
    }
    let mut cap = kvm_enable_cap { cap: KVM_CAP_X86_USER_SPACE_MSR, ..Default::default() };
    cap.args[0] = (KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER) as u64;
    vm.enable_cap(&cap).map_err(|source| HypervError::Kvm { what: "KVM_ENABLE_CAP(X86_USER_SPACE_MSR)", source })?;
    // A clear bit denies the MSR in KVM, so each access exits to us, even on hosts whose KVM has
    // Hyper-V emulation of its own.
    let bitmap = synthetic_msr_bitmap(options);
    let range = MsrFilterRange {
        flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
        base: HV_SYNTHETIC_MSR_BASE,
        msr_count: HV_SYNTHETIC_MSR_COUNT,
        bitmap: &bitmap,
    };
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])
        .map_err(|source| HypervError::Kvm { what: "KVM_X86_SET_MSR_FILTER", source })?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ram_ranges;

    #[test]
    fn guest_ram_is_bounds_checked() {
        let mem = GuestMemoryMmap::from_ranges(&ram_ranges(64 << 20)).unwrap();
        let ram = GuestRam(&mem);
        ram.write(0x1000, b"abc").unwrap();
        let mut b = [0u8; 3];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert!(ram.read((64 << 20) - 1, &mut b).is_err());
        assert!(ram.read(u64::MAX - 1, &mut b).is_err());
        assert!(ram.write(0xc000_0000, b"x").is_err());
    }

    #[test]
    fn full_reply_queues_refuse_messages_with_insufficient_buffers() {
        use devices::vmbus::messages::CHANNELMSG_UNLOAD;
        let hv = HyperV::new(
            HvConfig { vcpus: 1, tsc_hz: 1, apic_hz: 1, crash_message: true },
            ServerConfig { vcpus: 1, unload_delay: std::time::Duration::ZERO, unload_response: true },
        );
        let mut hv = hv.lock().unwrap();
        let unload = [CHANNELMSG_UNLOAD.to_le_bytes(), [0; 4]].concat();
        for i in 0..devices::hyperv::MAX_QUEUED_MESSAGES - 1 {
            hv.partition.post(0, 2, VMBUS_SYNIC_MESSAGE_TYPE, b"unread", i as u64).unwrap();
        }
        let mut port = VmbusPort::new(&mut hv);
        let status = port.post_message(0, 1, VMBUS_SYNIC_MESSAGE_TYPE, &unload);
        assert_eq!((status, port.outputs.len()), (HV_STATUS_INSUFFICIENT_BUFFERS, 0), "never seen by the server");
        hv.partition.clear_queues();
        let mut port = VmbusPort::new(&mut hv);
        assert_eq!(port.post_message(0, 1, VMBUS_SYNIC_MESSAGE_TYPE, &unload), 0, "HV_STATUS_SUCCESS");
        assert!(!port.outputs.is_empty());
    }

    #[test]
    fn cpuid_has_hyperv_and_no_kvm_signature() {
        let kvm_leaf = |function, ebx, ecx, edx| kvm_cpuid_entry2 { function, ebx, ecx, edx, ..Default::default() };
        // "KVMKVMKVM\0\0\0" at 0x40000000 and 0x40000100, as KVM_GET_SUPPORTED_CPUID may return.
        let sig = (0x4b4d_564b, 0x564b_4d56, 0x4d);
        let supported = CpuId::from_entries(&[
            kvm_leaf(0, 0, 0, 0),
            kvm_leaf(0x4000_0000, sig.0, sig.1, sig.2),
            kvm_leaf(0x4000_0001, 0, 0, 0),
            kvm_leaf(0x4000_0100, sig.0, sig.1, sig.2),
            kvm_leaf(0x8000_0007, 0, 0, 0),
        ])
        .unwrap();
        let cpuid = hyperv_cpuid(&supported, 2, HvOptions::default()).unwrap();
        let e = cpuid.as_slice();
        assert!(!e.iter().any(|e| e.ebx == sig.0 && HYPERVISOR_CPUID_RANGE.contains(&e.function)));
        let hv0 = e.iter().find(|e| e.function == 0x4000_0000).unwrap();
        assert_eq!(hv0.ebx, 0x7263_694d);
        assert_eq!(e.iter().filter(|e| (0x4000_0000..=0x4000_ffff).contains(&e.function)).count(), 7);
        let ext = e.iter().find(|e| e.function == 0x8000_0007).unwrap();
        assert_ne!(ext.edx & CPUID_80000007_EDX_INVARIANT_TSC, 0);
    }

    #[test]
    fn the_filter_leaves_only_the_apic_msrs_to_kvm_and_only_when_asked() {
        let to_kvm = |options| {
            let bitmap = synthetic_msr_bitmap(options);
            assert_eq!(bitmap.len() * 8, HV_SYNTHETIC_MSR_COUNT as usize);
            (0..HV_SYNTHETIC_MSR_COUNT)
                .filter(|i| bitmap[*i as usize / 8] & (1 << (i % 8)) != 0)
                .map(|i| HV_SYNTHETIC_MSR_BASE + i)
                .collect::<Vec<_>>()
        };
        assert!(to_kvm(HvOptions::default()).is_empty());
        assert_eq!(to_kvm(HvOptions { apic_assist: true }), [0x4000_0070, 0x4000_0071, 0x4000_0072, 0x4000_0073]);
    }
}
