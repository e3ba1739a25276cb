//! The Hyper-V partition against any sequence of synthetic MSR reads and writes (crash P0-P4,
//! CRASH_CTL, GUEST_OS_ID, HYPERCALL, the SynIC MSRs, unknown ones, VPs that do not exist),
//! SynIC posts and deliveries and guest writes to its memory. Checked:
//!
//! - a CRASH_CTL write with CRASH_NOTIFY reports P0-P4 as written; the message is read only
//!   with CRASH_NOTIFY_MSG, is exactly guest memory `[P3, P3 + min(P4, 4096))` when all of it is
//!   RAM, and is otherwise absent with a reason (P3 outside RAM, P4 over 4096, wraparound);
//! - only a HYPERCALL write writes guest memory, and only the code bytes of the old and the
//!   new hypercall page; a delivery writes only in that VP's message page;
//! - the teardown and reinitialization events alternate, the hypercall page's enable event
//!   needs GUEST_OS_ID set, and the reads see what was written;
//! - SynIC queues stay bounded, deliveries account for every message, one per SINT a round,
//!   never on a disabled SynIC;
//! - a VP that does not exist gets `NoSuchVp`; read and write agree on which MSRs exist.

#![no_main]

use std::collections::HashMap;
use std::ops::Range;

use crashvmm_fuzz::{within, MsrOp, PartitionInput, VecMem};
use devices::hyperv::hypercall::HYPERCALL_PAGE_CODE;
use devices::hyperv::tlfs::*;
use devices::hyperv::{HvConfig, HvEvent, HvPartition, MsrError, MAX_QUEUED_MESSAGES};
use devices::GuestMemory;
use libfuzzer_sys::fuzz_target;

struct Harness {
    p: HvPartition,
    mem: VecMem,
    vcpus: u32,
    crash_message: bool,
    /// CRASH_P0..P4 as written.
    params: [u64; 5],
    /// A teardown was reported and no reinitialization since.
    torn_down: bool,
    /// Tags of the messages queued per VP, with their SINT.
    queued: Vec<HashMap<u64, usize>>,
    next_tag: u64,
}

/// Whether the write `r` lies within the hypercall code at `page`.
fn in_page_code(r: &Range<usize>, page: Option<u64>) -> bool {
    page.is_some_and(|p| within(r, p, HYPERCALL_PAGE_CODE.len() as u64))
}

impl Harness {
    fn enabled_page(&self, msr: u32) -> Option<u64> {
        let v = self.p.read_msr(0, msr).unwrap();
        (v & HV_MSR_ENABLE != 0).then_some(v & HV_MSR_PAGE_MASK)
    }

    /// The crash report the guest's CRASH_CTL write must produce.
    fn check_crash(&self, value: u64, event: Option<HvEvent>) {
        if value & HV_CRASH_CTL_CRASH_NOTIFY == 0 {
            assert_eq!(event, None);
            return;
        }
        let Some(HvEvent::Crash(r)) = event else { panic!("CRASH_NOTIFY gave {event:?}") };
        assert_eq!(r.params, self.params);
        if value & HV_CRASH_CTL_CRASH_NOTIFY_MSG == 0 {
            assert_eq!((r.message, r.message_error), (None, None));
            return;
        }
        let (gpa, len) = (self.params[3], self.params[4]);
        let readable = self.mem.range(gpa, len.min(HV_CRASH_MSG_MAX) as usize);
        match (&r.message, readable) {
            (Some(m), Some(range)) => {
                assert_eq!(*m, String::from_utf8_lossy(&self.mem.get(range)));
                assert_eq!(r.message_error.is_some(), len > HV_CRASH_MSG_MAX, "{:?}", r.message_error);
            }
            (None, None) => assert!(r.message_error.is_some_and(|e| !e.is_empty())),
            (m, range) => panic!("message {m:?} for P3 {gpa:#x} P4 {len:#x} (RAM: {range:?})"),
        }
    }

    fn write(&mut self, vp: u32, msr: u32, value: u64) {
        self.mem.take_writes();
        let hypercall_before = self.p.read_msr(0, HV_X64_MSR_HYPERCALL).unwrap();
        let old_page = self.enabled_page(HV_X64_MSR_HYPERCALL);
        let r = self.p.write_msr(vp, msr, value, &self.mem);
        let writes = self.mem.take_writes();
        if vp >= self.vcpus {
            assert_eq!(r, Err(MsrError::NoSuchVp(vp)));
            assert_eq!(writes, []);
            return;
        }
        // Read and write agree on which MSRs exist.
        let unknown = matches!(self.p.read_msr(vp, msr), Err(MsrError::Unknown(_)));
        assert_eq!(unknown, r == Err(MsrError::Unknown(msr)), "MSR {msr:#x}: {r:?}");
        if msr == HV_X64_MSR_HYPERCALL {
            let new_page = self.enabled_page(msr);
            assert!(writes.iter().all(|r| in_page_code(r, old_page) || in_page_code(r, new_page)), "{writes:x?}");
            if let (Ok(_), Some(p)) = (&r, new_page.filter(|p| Some(*p) != old_page)) {
                let p = p as usize;
                assert_eq!(self.mem.get(p..p + HYPERCALL_PAGE_CODE.len()), HYPERCALL_PAGE_CODE);
            }
        } else {
            assert_eq!(writes, [], "MSR {msr:#x} wrote guest memory");
        }
        match r {
            Err(MsrError::ReadOnly(m)) => {
                assert_eq!(m, msr);
                let read_only =
                    [HV_X64_MSR_VP_INDEX, HV_X64_MSR_TSC_FREQUENCY, HV_X64_MSR_APIC_FREQUENCY, HV_X64_MSR_SVERSION];
                assert!(read_only.contains(&msr));
            }
            Err(MsrError::Reserved { msr: m, value: v }) => {
                assert!((HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15).contains(&m) && m == msr && v == value);
            }
            Err(MsrError::HypercallPage { gpa }) => {
                assert_eq!((msr, gpa), (HV_X64_MSR_HYPERCALL, value & HV_MSR_PAGE_MASK));
                assert!(self.mem.range(gpa, 4096).is_none(), "the page at {gpa:#x} is RAM");
                assert_eq!(self.p.read_msr(0, msr), Ok(hypercall_before), "a refused page changed the MSR");
            }
            Err(MsrError::Unknown(_)) => {}
            Err(e @ (MsrError::WriteOnly(_) | MsrError::NoSuchVp(_))) => panic!("{e}"),
            Ok(event) => self.check_written(vp, msr, value, old_page, event),
        }
    }

    fn check_written(&mut self, vp: u32, msr: u32, value: u64, old_page: Option<u64>, event: Option<HvEvent>) {
        match msr {
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
                assert_eq!(event, None);
                self.params[(msr - HV_X64_MSR_CRASH_P0) as usize] = value;
            }
            HV_X64_MSR_CRASH_CTL => self.check_crash(value, event),
            HV_X64_MSR_SINT0..=HV_X64_MSR_SINT15 => {
                assert_eq!(self.p.read_msr(vp, msr), Ok(value));
                assert_eq!(event, Some(HvEvent::SynicChanged));
            }
            HV_X64_MSR_SCONTROL | HV_X64_MSR_SIEFP | HV_X64_MSR_SIMP | HV_X64_MSR_EOM => {
                assert_eq!(event, Some(HvEvent::SynicChanged));
            }
            HV_X64_MSR_GUEST_OS_ID | HV_X64_MSR_HYPERCALL => {
                if msr == HV_X64_MSR_GUEST_OS_ID {
                    assert_eq!(self.p.read_msr(vp, msr), Ok(value));
                }
                match event {
                    None => {}
                    Some(HvEvent::HypercallEnabled { guest_os_id, gpa }) => {
                        assert_eq!(msr, HV_X64_MSR_HYPERCALL);
                        assert_eq!(old_page, None);
                        assert!(guest_os_id != 0 && guest_os_id == self.p.guest_os_id());
                        assert_eq!(Some(gpa), self.enabled_page(msr));
                    }
                    Some(HvEvent::Teardown) => {
                        assert!(!self.torn_down, "two teardowns");
                        self.torn_down = true;
                        assert_eq!((self.p.guest_os_id(), self.enabled_page(HV_X64_MSR_HYPERCALL)), (0, None));
                    }
                    Some(HvEvent::Reinitialized { guest_os_id }) => {
                        assert!(self.torn_down, "reinitialized without a teardown");
                        self.torn_down = false;
                        assert!(msr == HV_X64_MSR_GUEST_OS_ID && guest_os_id == value && value != 0);
                    }
                    e => panic!("{msr:#x} gave {e:?}"),
                }
            }
            _ => assert_eq!(event, None, "MSR {msr:#x}"),
        }
    }

    fn read(&self, vp: u32, msr: u32) {
        let r = self.p.read_msr(vp, msr);
        if vp >= self.vcpus {
            assert_eq!(r, Err(MsrError::NoSuchVp(vp)));
            return;
        }
        match msr {
            HV_X64_MSR_CRASH_P0..=HV_X64_MSR_CRASH_P4 => {
                assert_eq!(r, Ok(self.params[(msr - HV_X64_MSR_CRASH_P0) as usize]))
            }
            HV_X64_MSR_CRASH_CTL => {
                let msg = if self.crash_message { HV_CRASH_CTL_CRASH_NOTIFY_MSG } else { 0 };
                assert_eq!(r, Ok(HV_CRASH_CTL_CRASH_NOTIFY | msg));
            }
            HV_X64_MSR_VP_INDEX => assert_eq!(r, Ok(u64::from(vp))),
            _ => {}
        }
    }

    fn post(&mut self, vp: u32, sint: usize, len: usize, message_type: u32) {
        let tag = self.next_tag;
        self.next_tag += 1;
        let queued = self.p.queued(vp);
        let exists = vp < self.vcpus && sint < HV_SYNIC_SINT_COUNT;
        assert!(exists || !self.p.sint_ready(vp, sint), "VP {vp} SINT {sint} does not exist");
        let r = self.p.post(vp, sint, message_type, &vec![0x5a; len], tag);
        // HVMSG_NONE would read as a free slot.
        if !exists || len > HV_MESSAGE_PAYLOAD_BYTE_COUNT || message_type == HVMSG_NONE {
            assert_eq!(r, Err(HV_STATUS_INVALID_PARAMETER));
        } else if queued == MAX_QUEUED_MESSAGES {
            assert_eq!(r, Err(HV_STATUS_INSUFFICIENT_BUFFERS));
        } else {
            assert_eq!(r, Ok(()));
            self.queued[vp as usize].insert(tag, sint);
        }
        assert!(self.p.queued(vp) <= MAX_QUEUED_MESSAGES);
    }

    fn deliver(&mut self, vp: u32) {
        self.mem.take_writes();
        let queued = self.p.queued(vp);
        let d = self.p.deliver(vp, &self.mem);
        let writes = self.mem.take_writes();
        if vp >= self.vcpus {
            assert!(d == Default::default() && writes.is_empty());
            return;
        }
        assert_eq!(d.vectors.len(), d.delivered.len());
        assert_eq!(queued - self.p.queued(vp), d.delivered.len() + d.dropped.len());
        let on = |msr| self.p.read_msr(vp, msr).unwrap() & HV_MSR_ENABLE != 0;
        if !on(HV_X64_MSR_SCONTROL) || !on(HV_X64_MSR_SIMP) {
            assert!(d == Default::default() && writes.is_empty(), "delivered on a disabled SynIC: {d:?}");
            return;
        }
        let page = self.p.read_msr(vp, HV_X64_MSR_SIMP).unwrap() & HV_MSR_PAGE_MASK;
        assert!(writes.iter().all(|r| within(r, page, 4096)), "outside the SIMP: {writes:x?}");
        let mut sints = Vec::new();
        for tag in &d.delivered {
            let sint = self.queued[vp as usize].remove(tag).expect("a message delivered twice or never queued");
            assert!(!sints.contains(&sint), "two messages on SINT {sint} in one round");
            sints.push(sint);
            assert!(self.p.sint_ready(vp, sint));
        }
    }
}

fuzz_target!(|input: PartitionInput| {
    let vcpus = u32::from(input.vcpus);
    let config = HvConfig { vcpus, tsc_hz: 2_500_000_000, apic_hz: 1_000_000_000, crash_message: input.crash_message };
    let mut h = Harness {
        p: HvPartition::new(config),
        mem: input.mem.build(),
        vcpus,
        crash_message: input.crash_message,
        params: [0; 5],
        torn_down: false,
        queued: vec![HashMap::new(); vcpus as usize],
        next_tag: 0,
    };
    // One VP number past the last.
    let vp = |v: u8| u32::from(v) % (vcpus + 1);
    for op in &input.ops {
        match op {
            MsrOp::Write { vp: v, msr, value } => h.write(vp(*v), HV_SYNTHETIC_MSR_BASE + u32::from(*msr), *value),
            MsrOp::Read { vp: v, msr } => h.read(vp(*v), HV_SYNTHETIC_MSR_BASE + u32::from(*msr)),
            MsrOp::Post { vp: v, sint, len, message_type } => {
                h.post(vp(*v), usize::from(*sint % 18), usize::from(*len), *message_type)
            }
            MsrOp::Deliver { vp: v } => h.deliver(vp(*v)),
            MsrOp::ClearQueues => {
                h.p.clear_queues();
                h.queued.iter_mut().for_each(HashMap::clear);
                assert!((0..vcpus).all(|v| h.p.queued(v) == 0));
            }
            MsrOp::GuestWrite { gpa, bytes } => {
                let _ = h.mem.write(u64::from(*gpa), bytes);
            }
        }
    }
});
