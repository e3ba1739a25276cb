//! Userspace Hyper-V: the synthetic MSRs, the hypercall page, SynIC message delivery and the
//! guest crash MSRs (guest-protocol §1-4), as a state machine the VMM drives from its MSR and
//! port exits. Nothing here touches KVM: guest memory comes in as [`GuestMemory`], and what the
//! VMM must do comes back as [`HvEvent`]s and interrupt vectors.

pub mod cpuid;
pub mod hypercall;
pub mod tlfs;

use std::collections::VecDeque;

use thiserror::Error;

use crate::{GuestMemory, OutOfRange};
use hypercall::HYPERCALL_PAGE_CODE;
use tlfs::*;

/// Messages queued per virtual processor before HvPostMessage answers INSUFFICIENT_BUFFERS.
pub const MAX_QUEUED_MESSAGES: usize = 64;

/// Why a synthetic MSR access gets a #GP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MsrError {
    #[error("unknown synthetic MSR {0:#x}")]
    Unknown(u32),
    #[error("MSR {0:#x} is read-only")]
    ReadOnly(u32),
    #[error("MSR {0:#x} is write-only")]
    WriteOnly(u32),
    #[error("reserved bits set writing {value:#x} to MSR {msr:#x}")]
    Reserved { msr: u32, value: u64 },
    #[error("hypercall page at {gpa:#x} is outside guest RAM")]
    HypercallPage { gpa: u64 },
    #[error("virtual processor {0} does not exist")]
    NoSuchVp(u32),
}

/// What the guest reported through the crash MSRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// CRASH_P0..P4 at the time of the CRASH_CTL write.
    pub params: [u64; 5],
    /// The crash message (the kernel log tail), when CRASH_NOTIFY_MSG was set and readable.
    pub message: Option<String>,
    /// Why the message could not be read, when it was announced but is unusable.
    pub message_error: Option<String>,
}

/// What the VMM must act on after an MSR write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HvEvent {
    /// The guest enabled the hypercall page; crashvmm wrote its code there.
    HypercallEnabled { guest_os_id: u64, gpa: u64 },
    /// The guest wrote CRASH_CTL with CRASH_NOTIFY.
    Crash(CrashReport),
    /// The guest tore Hyper-V down (GUEST_OS_ID zeroed and the hypercall page disabled): what
    /// `hyperv_cleanup()` does right before `machine_kexec()`.
    Teardown,
    /// GUEST_OS_ID was set again after a [`HvEvent::Teardown`]: a new kernel (the crash kernel)
    /// runs and initializes Hyper-V.
    Reinitialized { guest_os_id: u64 },
    /// The SynIC of this VP changed (EOM, SINT unmasked, SIMP or SCONTROL enabled): queued
    /// messages may now be deliverable with [`HvPartition::deliver`].
    SynicChanged,
}

/// Per-virtual-processor state.
#[derive(Debug, Clone)]
struct Vp {
    vp_assist_page: u64,
    scontrol: u64,
    siefp: u64,
    simp: u64,
    sint: [u64; HV_SYNIC_SINT_COUNT],
    queue: VecDeque<Queued>,
}

impl Default for Vp {
    fn default() -> Self {
        Self {
            vp_assist_page: 0,
            scontrol: 0,
            siefp: 0,
            simp: 0,
            // SINTs come out of reset masked.
            sint: [HV_SYNIC_SINT_MASKED; HV_SYNIC_SINT_COUNT],
            queue: VecDeque::new(),
        }
    }
}

/// Static facts the partition reports.
#[derive(Debug, Clone, Copy)]
pub struct HvConfig {
    pub vcpus: u32,
    /// `HV_X64_MSR_TSC_FREQUENCY`, in Hz.
    pub tsc_hz: u64,
    /// `HV_X64_MSR_APIC_FREQUENCY`, in Hz (KVM's LAPIC runs at 1 GHz).
    pub apic_hz: u64,
    /// Advertise CRASH_NOTIFY_MSG so the guest sends its kernel log tail.
    pub crash_message: bool,
}

/// Result of a delivery attempt.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Vectors to inject into the VP, one per message written.
    pub vectors: Vec<u8>,
    /// Tags of the messages written, in order.
    pub delivered: Vec<u64>,
    /// Messages dropped because the SIMP page is outside guest RAM.
    pub dropped: Vec<OutOfRange>,
}

/// A Hyper-V partition: partition-wide MSRs plus every VP's SynIC.
#[derive(Debug)]
pub struct HvPartition {
    config: HvConfig,
    guest_os_id: u64,
    hypercall: u64,
    /// What the hypercall page held before we wrote our code, restored when it is disabled so a
    /// dump of guest memory shows the guest's own bytes.
    saved_page: Option<(u64, Vec<u8>)>,
    /// Hyper-V was enabled since the last teardown.
    active: bool,
    /// A teardown happened and no kernel has set GUEST_OS_ID since.
    torn_down: bool,
    reference_tsc: u64,
    crash_params: [u64; 5],
    vps: Vec<Vp>,
}

/// A queued SynIC message: its SINT, the 256-byte slot image, and the caller's tag.
type Queued = (usize, [u8; HV_MESSAGE_SIZE], u64);

impl HvPartition {
    pub fn new(config: HvConfig) -> Self {
        Self {
            config,
            guest_os_id: 0,
            hypercall: 0,
            saved_page: None,
            active: false,
            torn_down: false,
            reference_tsc: 0,
            crash_params: [0; 5],
            vps: vec![Vp::default(); config.vcpus as usize],
        }
    }

    /// The CRASH_CTL capabilities the guest reads.
    pub fn crash_capabilities(&self) -> u64 {
        HV_CRASH_CTL_CRASH_NOTIFY | if self.config.crash_message { HV_CRASH_CTL_CRASH_NOTIFY_MSG } else { 0 }
    }

    pub fn guest_os_id(&self) -> u64 {
        self.guest_os_id
    }

    fn vp(&self, vp: u32) -> Result<&Vp, MsrError> {
        self.vps.get(vp as usize).ok_or(MsrError::NoSuchVp(vp))
    }

    fn vp_mut(&mut self, vp: u32) -> Result<&mut Vp, MsrError> {
        self.vps.get_mut(vp as usize).ok_or(MsrError::NoSuchVp(vp))
    }

    /// RDMSR of a synthetic MSR by `vp`.
    pub fn read_msr(&self, vp: u32, msr: u32) -> Result<u64, MsrError> {
        let v = self.vp(vp)?;
        Ok(match msr {
            HV_X64_MSR_GUEST_OS_ID => self.guest_os_id,
            HV_X64_MSR_HYPERCALL => self.hypercall,
            HV_X64_MSR_VP_INDEX => vp as u64,
            HV_X64_MSR_REFERENCE_TSC => self.reference_tsc,
            HV_X64_MSR_TSC_FREQUENCY => self.config.tsc_hz,
            HV_X64_MSR_APIC_FREQUENCY => self.config.apic_hz,
            HV_X64_MSR_VP_ASSIST_PAGE => v.vp_assist_page,
            HV_X64_MSR_SCONTROL => v.scontrol,
            HV_X64_MSR_SVERSION => HV_SYNIC_VERSION_1,
            HV_X64_MSR_SIEFP => v.siefp,
            HV_X64_MSR_SIMP => v.simp,
            HV_X64_MSR_EOM => 0,
            HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15 => v.sint[(msr - HV_X64_MSR_SINT0) as usize],
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => self.crash_params[(msr - HV_X64_MSR_CRASH_P0) as usize],
            HV_X64_MSR_CRASH_CTL => self.crash_capabilities(),
            HV_X64_MSR_TSC_INVARIANT_CONTROL => 0,
            _ => return Err(MsrError::Unknown(msr)),
        })
    }

    /// WRMSR of a synthetic MSR by `vp`. Guest memory is needed for the hypercall page and the
    /// crash message.
    pub fn write_msr(
        &mut self,
        vp: u32,
        msr: u32,
        value: u64,
        mem: &dyn GuestMemory,
    ) -> Result<Option<HvEvent>, MsrError> {
        self.vp(vp)?;
        match msr {
            HV_X64_MSR_GUEST_OS_ID => {
                self.guest_os_id = value;
                if value != 0 && self.torn_down {
                    self.torn_down = false;
                    return Ok(Some(HvEvent::Reinitialized { guest_os_id: value }));
                }
                Ok(self.check_teardown())
            }
            HV_X64_MSR_HYPERCALL => self.write_hypercall(value, mem),
            HV_X64_MSR_VP_INDEX | HV_X64_MSR_TSC_FREQUENCY | HV_X64_MSR_APIC_FREQUENCY | HV_X64_MSR_SVERSION => {
                Err(MsrError::ReadOnly(msr))
            }
            HV_X64_MSR_REFERENCE_TSC => {
                // Not advertised; Linux's hyperv_cleanup() still writes enable=0. Keep the value,
                // never enable a TSC page.
                self.reference_tsc = value & !HV_MSR_ENABLE;
                Ok(None)
            }
            HV_X64_MSR_VP_ASSIST_PAGE => {
                self.vp_mut(vp)?.vp_assist_page = value & (HV_MSR_PAGE_MASK | HV_MSR_ENABLE);
                Ok(None)
            }
            HV_X64_MSR_SCONTROL => {
                self.vp_mut(vp)?.scontrol = value & HV_MSR_ENABLE;
                Ok(Some(HvEvent::SynicChanged))
            }
            HV_X64_MSR_SIEFP | HV_X64_MSR_SIMP => {
                let v = self.vp_mut(vp)?;
                *(if msr == HV_X64_MSR_SIMP { &mut v.simp } else { &mut v.siefp }) = value;
                Ok(Some(HvEvent::SynicChanged))
            }
            HV_X64_MSR_EOM => Ok(Some(HvEvent::SynicChanged)),
            HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15 => {
                let valid =
                    HV_SYNIC_SINT_VECTOR_MASK | HV_SYNIC_SINT_MASKED | HV_SYNIC_SINT_AUTO_EOI | HV_SYNIC_SINT_POLLING;
                if value & !valid != 0 {
                    return Err(MsrError::Reserved { msr, value });
                }
                self.vp_mut(vp)?.sint[(msr - HV_X64_MSR_SINT0) as usize] = value;
                Ok(Some(HvEvent::SynicChanged))
            }
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
                self.crash_params[(msr - HV_X64_MSR_CRASH_P0) as usize] = value;
                Ok(None)
            }
            HV_X64_MSR_CRASH_CTL => Ok(self.write_crash_ctl(value, mem)),
            HV_X64_MSR_TSC_INVARIANT_CONTROL => Ok(None),
            _ => Err(MsrError::Unknown(msr)),
        }
    }

    fn write_hypercall(&mut self, value: u64, mem: &dyn GuestMemory) -> Result<Option<HvEvent>, MsrError> {
        let gpa = value & HV_MSR_PAGE_MASK;
        // As on KVM: while GUEST_OS_ID is 0 the hypercall page cannot be enabled.
        let enable = value & HV_MSR_ENABLE != 0 && self.guest_os_id != 0;
        let was = (self.hypercall & HV_MSR_ENABLE != 0).then_some(self.hypercall & HV_MSR_PAGE_MASK);
        if enable && was != Some(gpa) {
            let mut saved = vec![0u8; 4096];
            mem.read(gpa, &mut saved).map_err(|_| MsrError::HypercallPage { gpa })?;
            self.restore_page(mem);
            mem.write(gpa, &HYPERCALL_PAGE_CODE).map_err(|_| MsrError::HypercallPage { gpa })?;
            self.saved_page = Some((gpa, saved));
        } else if !enable {
            self.restore_page(mem);
        }
        self.hypercall = gpa | (value & HV_X64_MSR_HYPERCALL_LOCKED) | u64::from(enable);
        if enable && was.is_none() {
            self.active = true;
            return Ok(Some(HvEvent::HypercallEnabled { guest_os_id: self.guest_os_id, gpa }));
        }
        Ok(self.check_teardown())
    }

    fn restore_page(&mut self, mem: &dyn GuestMemory) {
        if let Some((gpa, bytes)) = self.saved_page.take() {
            // Only our code bytes were changed; put the guest's back.
            let _ = mem.write(gpa, &bytes[..HYPERCALL_PAGE_CODE.len()]);
        }
    }

    fn check_teardown(&mut self) -> Option<HvEvent> {
        if self.active && self.guest_os_id == 0 && self.hypercall & HV_MSR_ENABLE == 0 {
            self.active = false;
            self.torn_down = true;
            return Some(HvEvent::Teardown);
        }
        None
    }

    fn write_crash_ctl(&mut self, value: u64, mem: &dyn GuestMemory) -> Option<HvEvent> {
        if value & HV_CRASH_CTL_CRASH_NOTIFY == 0 {
            return None;
        }
        let params = self.crash_params;
        let (mut message, mut message_error) = (None, None);
        if value & HV_CRASH_CTL_CRASH_NOTIFY_MSG != 0 {
            let (gpa, len) = (params[3], params[4]);
            if len > HV_CRASH_MSG_MAX {
                message_error = Some(format!("message length {len} exceeds {HV_CRASH_MSG_MAX} bytes; truncated"));
            }
            let mut buf = vec![0u8; len.min(HV_CRASH_MSG_MAX) as usize];
            match mem.read(gpa, &mut buf) {
                Ok(()) => message = Some(String::from_utf8_lossy(&buf).into_owned()),
                Err(e) => message_error = Some(format!("crash message unreadable: {e}")),
            }
        }
        Some(HvEvent::Crash(CrashReport { params, message, message_error }))
    }

    /// Queue a SynIC message for `vp` on `sint` (call [`deliver`](Self::deliver) on that VP's
    /// thread afterwards); `tag` comes back in [`Delivery::delivered`]. Fails when the queue is
    /// full, and for `HVMSG_NONE`, which in the slot would read as free.
    pub fn post(&mut self, vp: u32, sint: usize, message_type: u32, payload: &[u8], tag: u64) -> Result<(), u16> {
        if sint >= HV_SYNIC_SINT_COUNT || payload.len() > HV_MESSAGE_PAYLOAD_BYTE_COUNT || message_type == HVMSG_NONE {
            return Err(HV_STATUS_INVALID_PARAMETER);
        }
        let v = self.vps.get_mut(vp as usize).ok_or(HV_STATUS_INVALID_PARAMETER)?;
        if v.queue.len() >= MAX_QUEUED_MESSAGES {
            return Err(HV_STATUS_INSUFFICIENT_BUFFERS);
        }
        let mut msg = [0u8; HV_MESSAGE_SIZE];
        msg[0..4].copy_from_slice(&message_type.to_le_bytes());
        msg[4] = payload.len() as u8;
        msg[HV_MESSAGE_HEADER_SIZE..HV_MESSAGE_HEADER_SIZE + payload.len()].copy_from_slice(payload);
        v.queue.push_back((sint, msg, tag));
        Ok(())
    }

    /// Drop every queued message of every VP.
    pub fn clear_queues(&mut self) {
        self.vps.iter_mut().for_each(|v| v.queue.clear());
    }

    /// Whether every VP's queue can take `n` more messages: a guest message that may cause `n`
    /// replies is refused with HV_STATUS_INSUFFICIENT_BUFFERS otherwise, so no reply is lost.
    pub fn has_room(&self, n: usize) -> bool {
        self.vps.iter().all(|v| v.queue.len() + n <= MAX_QUEUED_MESSAGES)
    }

    /// Messages waiting for `vp`.
    pub fn queued(&self, vp: u32) -> usize {
        self.vps.get(vp as usize).map_or(0, |v| v.queue.len())
    }

    /// Whether `vp` can take messages on `sint` now (never for a VP or SINT that does not exist).
    pub fn sint_ready(&self, vp: u32, sint: usize) -> bool {
        self.vps.get(vp as usize).is_some_and(|v| {
            v.scontrol & HV_MSR_ENABLE != 0
                && v.simp & HV_MSR_ENABLE != 0
                && v.sint.get(sint).is_some_and(|s| s & HV_SYNIC_SINT_MASKED == 0)
        })
    }

    /// Write queued messages of `vp` into free slots of its message page (guest-protocol §4.3).
    /// Must run on `vp`'s own thread while it is out of KVM_RUN, so the guest cannot free a slot
    /// between our check and our write. A busy slot gets `msg_pending` and waits for EOM.
    pub fn deliver(&mut self, vp: u32, mem: &dyn GuestMemory) -> Delivery {
        let mut out = Delivery::default();
        if vp as usize >= self.vps.len() {
            return out;
        }
        let mut i = 0;
        while i < self.vps[vp as usize].queue.len() {
            let v = &self.vps[vp as usize];
            let (sint, msg, tag) = v.queue[i];
            if !self.sint_ready(vp, sint) {
                i += 1;
                continue;
            }
            let slot = (v.simp & HV_MSR_PAGE_MASK) + (sint * HV_MESSAGE_SIZE) as u64;
            let vector = (v.sint[sint] & HV_SYNIC_SINT_VECTOR_MASK) as u8;
            let mut header = [0u8; 8];
            let result = mem.read(slot, &mut header).and_then(|()| {
                if u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) != HVMSG_NONE {
                    // Busy: ask for an EOM and keep the message.
                    mem.write(slot + 5, &[header[5] | HV_MESSAGE_FLAG_PENDING]).map(|()| false)
                } else {
                    // Body first, message type last: the type is what makes the slot valid.
                    mem.write(slot + 4, &msg[4..])?;
                    mem.write(slot, &msg[..4]).map(|()| true)
                }
            });
            match result {
                Ok(true) => {
                    self.vps[vp as usize].queue.remove(i);
                    out.vectors.push(vector);
                    out.delivered.push(tag);
                }
                Ok(false) => i += 1,
                Err(e) => {
                    self.vps[vp as usize].queue.remove(i);
                    out.dropped.push(e);
                }
            }
            // One message per SINT per round: skip the rest of this SINT's queue.
            let v = &self.vps[vp as usize];
            while i < v.queue.len() && v.queue[i].0 == sint {
                i += 1;
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::cell::RefCell;

    use crate::{GuestMemory, OutOfRange};

    /// Guest RAM `[0, size)` in a vector.
    pub struct FakeMem(pub RefCell<Vec<u8>>);

    impl FakeMem {
        pub fn new(size: usize) -> Self {
            Self(RefCell::new(vec![0; size]))
        }

        fn range(&self, gpa: u64, len: usize) -> Result<std::ops::Range<usize>, OutOfRange> {
            let err = OutOfRange { gpa, len };
            let start = usize::try_from(gpa).map_err(|_| err)?;
            let end = start.checked_add(len).ok_or(err)?;
            if end > self.0.borrow().len() {
                return Err(err);
            }
            Ok(start..end)
        }
    }

    impl GuestMemory for FakeMem {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
            let r = self.range(gpa, buf.len())?;
            buf.copy_from_slice(&self.0.borrow()[r]);
            Ok(())
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
            let r = self.range(gpa, data.len())?;
            self.0.borrow_mut()[r].copy_from_slice(data);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::FakeMem;
    use super::*;

    const LINUX_6_1_GUEST_ID: u64 = 0x8100_0006_01c0_0000;

    fn partition(vcpus: u32) -> HvPartition {
        HvPartition::new(HvConfig { vcpus, tsc_hz: 2_500_000_000, apic_hz: 1_000_000_000, crash_message: true })
    }

    #[test]
    fn identity_and_frequency_msrs() {
        let p = partition(4);
        assert_eq!(p.read_msr(2, HV_X64_MSR_VP_INDEX), Ok(2));
        assert_eq!(p.read_msr(0, HV_X64_MSR_TSC_FREQUENCY), Ok(2_500_000_000));
        assert_eq!(p.read_msr(0, HV_X64_MSR_APIC_FREQUENCY), Ok(1_000_000_000));
        assert_eq!(p.read_msr(0, HV_X64_MSR_SVERSION), Ok(1));
        assert_eq!(p.read_msr(0, HV_X64_MSR_CRASH_CTL), Ok(0xc000_0000_0000_0000));
        assert_eq!(p.read_msr(0, HV_X64_MSR_SINT0 + 2), Ok(HV_SYNIC_SINT_MASKED), "SINTs reset masked");
        assert_eq!(p.read_msr(4, HV_X64_MSR_VP_INDEX), Err(MsrError::NoSuchVp(4)));
        let regs_only = HvPartition::new(HvConfig { crash_message: false, ..p.config });
        assert_eq!(regs_only.read_msr(0, HV_X64_MSR_CRASH_CTL), Ok(0x8000_0000_0000_0000));
    }

    #[test]
    fn read_only_unknown_and_reserved_msrs_fault() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        for msr in [HV_X64_MSR_VP_INDEX, HV_X64_MSR_TSC_FREQUENCY, HV_X64_MSR_APIC_FREQUENCY, HV_X64_MSR_SVERSION] {
            assert_eq!(p.write_msr(0, msr, 5, &mem), Err(MsrError::ReadOnly(msr)));
        }
        for msr in [HV_X64_MSR_RESET, HV_X64_MSR_VP_RUNTIME, HV_X64_MSR_TIME_REF_COUNT, 0x4000_00b0, 0x4000_01ff] {
            assert_eq!(p.read_msr(0, msr), Err(MsrError::Unknown(msr)));
            assert_eq!(p.write_msr(0, msr, 0, &mem), Err(MsrError::Unknown(msr)));
        }
        assert!(matches!(p.write_msr(0, HV_X64_MSR_SINT0, 1 << 40, &mem), Err(MsrError::Reserved { .. })));
        // Linux's hyperv_cleanup() writes these even though they are not advertised.
        assert_eq!(p.write_msr(0, HV_X64_MSR_REFERENCE_TSC, 0, &mem), Ok(None));
        assert_eq!(p.write_msr(0, HV_X64_MSR_TSC_INVARIANT_CONTROL, 1, &mem), Ok(None));
    }

    #[test]
    fn hypercall_page_lifecycle_and_teardown() {
        let mut p = partition(2);
        let mem = FakeMem::new(0x10000);
        mem.write(0x3000, &[0xaa; 64]).unwrap();
        // Enabling before GUEST_OS_ID is ignored, as on KVM.
        assert_eq!(p.write_msr(0, HV_X64_MSR_HYPERCALL, 0x3001, &mem), Ok(None));
        assert_eq!(p.read_msr(0, HV_X64_MSR_HYPERCALL), Ok(0x3000));
        p.write_msr(0, HV_X64_MSR_GUEST_OS_ID, LINUX_6_1_GUEST_ID, &mem).unwrap();
        assert_eq!(
            p.write_msr(0, HV_X64_MSR_HYPERCALL, 0x3001, &mem),
            Ok(Some(HvEvent::HypercallEnabled { guest_os_id: LINUX_6_1_GUEST_ID, gpa: 0x3000 }))
        );
        let mut code = [0u8; 13];
        mem.read(0x3000, &mut code).unwrap();
        assert_eq!(code, HYPERCALL_PAGE_CODE);
        assert_eq!(p.read_msr(1, HV_X64_MSR_HYPERCALL), Ok(0x3001), "partition-wide");
        // hyperv_cleanup(): GUEST_OS_ID <- 0, then HYPERCALL enable <- 0.
        assert_eq!(p.write_msr(1, HV_X64_MSR_GUEST_OS_ID, 0, &mem), Ok(None));
        assert_eq!(p.write_msr(1, HV_X64_MSR_HYPERCALL, 0x3000, &mem), Ok(Some(HvEvent::Teardown)));
        mem.read(0x3000, &mut code).unwrap();
        assert_eq!(code, [0xaa; 13], "the guest's bytes are back");
        // Once per enable cycle; the crash kernel enables again at a new page.
        assert_eq!(p.write_msr(0, HV_X64_MSR_HYPERCALL, 0x3000, &mem), Ok(None));
        assert_eq!(
            p.write_msr(0, HV_X64_MSR_GUEST_OS_ID, LINUX_6_1_GUEST_ID, &mem),
            Ok(Some(HvEvent::Reinitialized { guest_os_id: LINUX_6_1_GUEST_ID }))
        );
        assert!(matches!(
            p.write_msr(0, HV_X64_MSR_HYPERCALL, 0x5001, &mem),
            Ok(Some(HvEvent::HypercallEnabled { gpa: 0x5000, .. }))
        ));
    }

    #[test]
    fn hypercall_page_outside_ram_faults() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        p.write_msr(0, HV_X64_MSR_GUEST_OS_ID, LINUX_6_1_GUEST_ID, &mem).unwrap();
        assert_eq!(
            p.write_msr(0, HV_X64_MSR_HYPERCALL, 0x8000_0001, &mem),
            Err(MsrError::HypercallPage { gpa: 0x8000_0000 })
        );
        assert_eq!(p.write_msr(0, HV_X64_MSR_HYPERCALL, 0xf001, &mem).map(|e| e.is_some()), Ok(true));
    }

    #[test]
    fn crash_registers_and_message() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        let text = b"[  1.0] sysrq: Trigger a crash\n[  1.1] Kernel panic - not syncing: sysrq triggered crash\n";
        mem.write(0x4000, text).unwrap();
        for (i, v) in [0, 0, 0, 0x4000, text.len() as u64].into_iter().enumerate() {
            p.write_msr(0, HV_X64_MSR_CRASH_P0 + i as u32, v, &mem).unwrap();
        }
        assert_eq!(p.read_msr(0, HV_X64_MSR_CRASH_P3), Ok(0x4000));
        let Ok(Some(HvEvent::Crash(r))) = p.write_msr(0, HV_X64_MSR_CRASH_CTL, 0xc000_0000_0000_0000, &mem) else {
            panic!("no crash event")
        };
        assert_eq!(r.params, [0, 0, 0, 0x4000, text.len() as u64]);
        assert!(r.message.unwrap().contains("sysrq triggered crash"));
        assert_eq!(r.message_error, None);
        // Registers only.
        let Ok(Some(HvEvent::Crash(r))) = p.write_msr(0, HV_X64_MSR_CRASH_CTL, 1 << 63, &mem) else { panic!() };
        assert_eq!(r.message, None);
        // No notify bit: nothing.
        assert_eq!(p.write_msr(0, HV_X64_MSR_CRASH_CTL, 1 << 62, &mem), Ok(None));
    }

    #[test]
    fn hostile_crash_messages() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        // P3 outside guest memory.
        p.write_msr(0, HV_X64_MSR_CRASH_P3, 0x1_0000_0000, &mem).unwrap();
        p.write_msr(0, HV_X64_MSR_CRASH_P4, 100, &mem).unwrap();
        let Ok(Some(HvEvent::Crash(r))) = p.write_msr(0, HV_X64_MSR_CRASH_CTL, 0xc000_0000_0000_0000, &mem) else {
            panic!()
        };
        assert_eq!(r.message, None);
        assert!(r.message_error.unwrap().contains("outside guest RAM"));
        // P4 larger than 4 KiB: truncated to one page.
        p.write_msr(0, HV_X64_MSR_CRASH_P3, 0x1000, &mem).unwrap();
        p.write_msr(0, HV_X64_MSR_CRASH_P4, u64::MAX, &mem).unwrap();
        let Ok(Some(HvEvent::Crash(r))) = p.write_msr(0, HV_X64_MSR_CRASH_CTL, 0xc000_0000_0000_0000, &mem) else {
            panic!()
        };
        assert_eq!(r.message.unwrap().len(), 4096);
        assert!(r.message_error.unwrap().contains("truncated"));
        // Message running off the end of RAM.
        p.write_msr(0, HV_X64_MSR_CRASH_P3, 0xff00, &mem).unwrap();
        p.write_msr(0, HV_X64_MSR_CRASH_P4, 0x200, &mem).unwrap();
        let Ok(Some(HvEvent::Crash(r))) = p.write_msr(0, HV_X64_MSR_CRASH_CTL, 0xc000_0000_0000_0000, &mem) else {
            panic!()
        };
        assert!(r.message.is_none() && r.message_error.is_some());
    }

    fn enable_synic(p: &mut HvPartition, vp: u32, simp: u64, mem: &FakeMem) {
        p.write_msr(vp, HV_X64_MSR_SIMP, simp | 1, mem).unwrap();
        p.write_msr(vp, HV_X64_MSR_SIEFP, (simp + 0x1000) | 1, mem).unwrap();
        p.write_msr(vp, HV_X64_MSR_SINT0 + 2, 0xf3, mem).unwrap();
        p.write_msr(vp, HV_X64_MSR_SCONTROL, 1, mem).unwrap();
    }

    #[test]
    fn synic_delivery_and_eom_protocol() {
        let mut p = partition(2);
        let mem = FakeMem::new(0x10000);
        p.post(1, 2, 1, b"first", 0).unwrap();
        // Not enabled yet: stays queued, nothing written anywhere.
        assert_eq!(p.deliver(1, &mem), Delivery::default());
        assert_eq!(p.queued(1), 1);
        enable_synic(&mut p, 1, 0x6000, &mem);
        assert_eq!(p.deliver(1, &mem).vectors, vec![0xf3]);
        let slot = 0x6000 + 2 * 256;
        p.post(1, 2, 1, b"tagged", 42).unwrap();
        p.clear_queues();
        assert_eq!(p.queued(1), 0);
        let mut m = [0u8; 32];
        mem.read(slot, &mut m).unwrap();
        assert_eq!(u32::from_le_bytes(m[0..4].try_into().unwrap()), 1);
        assert_eq!(m[4], 5);
        assert_eq!(&m[16..21], b"first");
        // The slot is busy: the next message waits and msg_pending is set.
        p.post(1, 2, 1, b"second", 7).unwrap();
        assert_eq!(p.deliver(1, &mem).vectors, Vec::<u8>::new());
        mem.read(slot, &mut m).unwrap();
        assert_eq!(m[5] & HV_MESSAGE_FLAG_PENDING, 1);
        // Guest frees the slot (cmpxchg type to 0) and writes EOM.
        mem.write(slot, &[0, 0, 0, 0]).unwrap();
        assert_eq!(p.write_msr(1, HV_X64_MSR_EOM, 0, &mem), Ok(Some(HvEvent::SynicChanged)));
        assert_eq!(p.deliver(1, &mem), Delivery { vectors: vec![0xf3], delivered: vec![7], dropped: vec![] });
        mem.read(slot, &mut m).unwrap();
        assert_eq!(&m[16..22], b"second");
        assert_eq!(m[5] & HV_MESSAGE_FLAG_PENDING, 0, "a fresh header clears msg_pending");
        assert_eq!(p.queued(1), 0);
        // VP 0 never enabled its SynIC: its page is never touched.
        p.post(0, 2, 1, b"x", 0).unwrap();
        assert!(p.deliver(0, &mem).vectors.is_empty());
    }

    #[test]
    fn never_delivers_to_disabled_or_masked_pages() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        enable_synic(&mut p, 0, 0x6000, &mem);
        p.write_msr(0, HV_X64_MSR_SINT0 + 2, 0xf3 | HV_SYNIC_SINT_MASKED, &mem).unwrap();
        p.post(0, 2, 1, b"m", 0).unwrap();
        assert!(p.deliver(0, &mem).vectors.is_empty());
        p.write_msr(0, HV_X64_MSR_SINT0 + 2, 0xf3, &mem).unwrap();
        p.write_msr(0, HV_X64_MSR_SIMP, 0x6000, &mem).unwrap(); // disabled (crash teardown)
        assert!(p.deliver(0, &mem).vectors.is_empty());
        let mut m = [0u8; 4];
        mem.read(0x6200, &mut m).unwrap();
        assert_eq!(m, [0; 4]);
        p.write_msr(0, HV_X64_MSR_SIMP, 0x6001, &mem).unwrap();
        assert_eq!(p.deliver(0, &mem).vectors, vec![0xf3]);
    }

    #[test]
    fn simp_outside_memory_drops_the_message() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        enable_synic(&mut p, 0, 0xffff_f000, &mem);
        p.post(0, 2, 1, b"lost", 0).unwrap();
        let d = p.deliver(0, &mem);
        assert!(d.vectors.is_empty());
        assert_eq!(d.dropped.len(), 1);
        assert_eq!(p.queued(0), 0);
    }

    /// Fuzzing finding (crash_message): SINT 16 and up panicked with an index out of bounds.
    #[test]
    fn sint_ready_of_a_sint_that_does_not_exist() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        enable_synic(&mut p, 0, 0x6000, &mem);
        assert!(p.sint_ready(0, VMBUS_MESSAGE_SINT));
        assert!(!p.sint_ready(0, HV_SYNIC_SINT_COUNT));
        assert!(!p.sint_ready(0, 17));
        assert!(!p.sint_ready(0, usize::MAX));
        assert!(!p.sint_ready(1, VMBUS_MESSAGE_SINT));
    }

    /// Fuzzing finding (crash_message): a message of type HVMSG_NONE was queued and reported
    /// delivered, but its slot still read as free, so a later message on that SINT in the same
    /// round (after one on another SINT) overwrote it: two deliveries on one SINT in a round.
    #[test]
    fn message_type_none_is_refused() {
        let mut p = partition(1);
        let mem = FakeMem::new(0x10000);
        enable_synic(&mut p, 0, 0x6000, &mem);
        assert_eq!(p.post(0, 2, HVMSG_NONE, b"lost", 1), Err(HV_STATUS_INVALID_PARAMETER));
        p.post(0, 2, 1, b"first", 2).unwrap();
        p.post(0, 2, 1, b"second", 3).unwrap();
        assert_eq!(p.deliver(0, &mem).delivered, vec![2], "one message per SINT and round");
        let mut m = [0u8; 21];
        mem.read(0x6000 + 2 * 256, &mut m).unwrap();
        assert_eq!((m[0], &m[16..21]), (1, &b"first"[..]));
    }

    #[test]
    fn room_counts_every_vp() {
        let mut p = partition(2);
        assert!(p.has_room(MAX_QUEUED_MESSAGES));
        for i in 0..MAX_QUEUED_MESSAGES - 1 {
            p.post(1, 2, 1, b"x", i as u64).unwrap();
        }
        assert!(p.has_room(1));
        assert!(!p.has_room(2), "VP 1 has room for one more only");
        p.clear_queues();
        assert!(p.has_room(MAX_QUEUED_MESSAGES));
    }

    #[test]
    fn queue_is_bounded_and_checked() {
        let mut p = partition(1);
        for _ in 0..MAX_QUEUED_MESSAGES {
            p.post(0, 2, 1, b"", 0).unwrap();
        }
        assert_eq!(p.post(0, 2, 1, b"", 0), Err(HV_STATUS_INSUFFICIENT_BUFFERS));
        assert_eq!(p.post(0, 16, 1, b"", 0), Err(HV_STATUS_INVALID_PARAMETER));
        assert_eq!(p.post(0, 2, 1, &[0; 241], 0), Err(HV_STATUS_INVALID_PARAMETER));
        assert_eq!(p.post(7, 2, 1, b"", 0), Err(HV_STATUS_INVALID_PARAMETER));
    }
}
