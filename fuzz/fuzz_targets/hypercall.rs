//! Hypercall decoding and dispatch with any control word, parameters and guest memory, the
//! handler being a recorder, the VMBus server (wired as the VMM wires it) or no connections:
//! every call returns a TLFS status and no rep count, never writes guest memory, reaches the
//! handler at most once and only with inputs the TLFS allows (the message or event as guest
//! memory holds it), always for a well-formed call, and never succeeds without it.

#![no_main]

use crashvmm_fuzz::{Call, Handler, HypercallInput, VecMem};
use devices::hyperv::hypercall::{handle_hypercall, Control, HypercallInput as Regs, MessageHandler, NoConnections};
use devices::hyperv::tlfs::*;
use devices::vmbus::messages::VMBUS_SYNIC_MESSAGE_TYPE;
use devices::vmbus::{Output, ServerConfig, VmbusServer};
use libfuzzer_sys::fuzz_target;

/// The statuses a hypercall can return here.
const STATUSES: [u16; 8] = [
    HV_STATUS_SUCCESS,
    HV_STATUS_INVALID_HYPERCALL_CODE,
    HV_STATUS_INVALID_HYPERCALL_INPUT,
    HV_STATUS_INVALID_ALIGNMENT,
    HV_STATUS_INVALID_PARAMETER,
    HV_STATUS_ACCESS_DENIED,
    HV_STATUS_INVALID_CONNECTION_ID,
    HV_STATUS_INSUFFICIENT_BUFFERS,
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reached {
    Post { vp: u32, connection_id: u32, message_type: u32, payload: Vec<u8> },
    Signal { vp: u32, connection_id: u32, flag: u16 },
}

/// What the handler must see when a call reaches it; `None` when the TLFS refuses the call's
/// control word or input (a misaligned or unreadable input, a message type of 0 or with its
/// top bit set, a payload over 240 bytes, a fast post, reps, a variable header).
fn admissible(vp: u32, regs: &Regs, mem: &VecMem) -> Option<Reached> {
    let c = Control::decode(regs.control);
    let read = |gpa: u64, len: usize| mem.range(gpa, len).map(|r| mem.get(r));
    let word = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    if c.rep_count != 0 || c.var_header_size != 0 {
        return None;
    }
    match c.code {
        HVCALL_POST_MESSAGE => {
            if c.fast || !regs.param1.is_multiple_of(8) {
                return None;
            }
            // struct hv_input_post_message.
            let h = read(regs.param1, HV_POST_MESSAGE_HEADER_SIZE)?;
            let (message_type, size) = (word(&h, 8), word(&h, 12) as usize);
            if message_type == HVMSG_NONE || message_type >= 0x8000_0000 || size > HV_MESSAGE_PAYLOAD_BYTE_COUNT {
                return None;
            }
            let payload = read(regs.param1 + HV_POST_MESSAGE_HEADER_SIZE as u64, size)?;
            Some(Reached::Post { vp, connection_id: word(&h, 0) & 0xff_ffff, message_type, payload })
        }
        HVCALL_SIGNAL_EVENT => {
            let w = if c.fast {
                regs.param1
            } else if !regs.param1.is_multiple_of(8) {
                return None;
            } else {
                u64::from_le_bytes(read(regs.param1, 8)?.try_into().unwrap())
            };
            Some(Reached::Signal { vp, connection_id: w as u32 & 0xff_ffff, flag: (w >> 32) as u16 })
        }
        _ => None,
    }
}

/// Whether the call is one the TLFS must accept: a clean control word (the code, and the fast
/// bit for HvSignalEvent), an aligned input block of RAM within one page (all 256 bytes of
/// `hv_input_post_message`), a valid message.
fn must_reach(vp: u32, regs: &Regs, mem: &VecMem) -> bool {
    let c = Control::decode(regs.control);
    let clean = regs.control & !(0xffff | HV_HYPERCALL_FAST_BIT) == 0;
    let block = |len: u64| {
        regs.param1.is_multiple_of(8)
            && (regs.param1 & 0xfff) + len <= 0x1000
            && mem.range(regs.param1, len as usize).is_some()
    };
    clean
        && admissible(vp, regs, mem).is_some()
        && match c.code {
            HVCALL_POST_MESSAGE => block(256),
            HVCALL_SIGNAL_EVENT => c.fast || block(8),
            _ => false,
        }
}

enum Inner {
    Recorder,
    Vmbus { server: VmbusServer, vcpus: u32 },
    NoConnections(NoConnections),
}

/// Records what reaches the handler behind it.
struct Probe {
    inner: Inner,
    reply: u16,
    reached: Vec<(Reached, u16)>,
}

impl MessageHandler for Probe {
    fn post_message(&mut self, vp: u32, connection_id: u32, message_type: u32, payload: &[u8]) -> u16 {
        let status = match &mut self.inner {
            Inner::Recorder => self.reply,
            // vmm::hyperv::VmbusPort.
            Inner::Vmbus { server, vcpus } => {
                if message_type != VMBUS_SYNIC_MESSAGE_TYPE {
                    HV_STATUS_INVALID_HYPERCALL_INPUT
                } else {
                    let (status, out) = server.post_message(vp, connection_id, payload);
                    for o in out {
                        if let Output::Send { vp, .. } = o {
                            assert!(vp < *vcpus, "reply to VP {vp}");
                        }
                    }
                    status
                }
            }
            Inner::NoConnections(n) => n.post_message(vp, connection_id, message_type, payload),
        };
        self.reached.push((Reached::Post { vp, connection_id, message_type, payload: payload.to_vec() }, status));
        status
    }

    fn signal_event(&mut self, vp: u32, connection_id: u32, flag: u16) -> u16 {
        let status = match &mut self.inner {
            Inner::Recorder => self.reply,
            Inner::Vmbus { .. } => HV_STATUS_INVALID_CONNECTION_ID,
            Inner::NoConnections(n) => n.signal_event(vp, connection_id, flag),
        };
        self.reached.push((Reached::Signal { vp, connection_id, flag }, status));
        status
    }
}

fuzz_target!(|input: HypercallInput| {
    let mem = input.mem.build();
    let (inner, vcpus) = match input.handler {
        Handler::Recorder => (Inner::Recorder, 256),
        Handler::Vmbus { vcpus } => {
            let vcpus = u32::from(vcpus);
            let config = ServerConfig { vcpus, unload_delay: std::time::Duration::ZERO, unload_response: true };
            (Inner::Vmbus { server: VmbusServer::new(config), vcpus }, vcpus)
        }
        Handler::NoConnections => (Inner::NoConnections(NoConnections), 256),
    };
    let mut probe = Probe { inner, reply: 0, reached: Vec::new() };
    for &Call { vp, control, param1, param2, reply } in &input.calls {
        let vp = u32::from(vp) % vcpus;
        let regs = Regs { control, param1, param2 };
        probe.reply = STATUSES[usize::from(reply) % STATUSES.len()];
        probe.reached.clear();
        mem.take_writes();
        let rax = handle_hypercall(vp, regs, &mem, &mut probe);
        assert_eq!(rax >> 16, 0, "reps completed or reserved bits in {rax:#x}");
        let status = rax as u16;
        assert!(STATUSES.contains(&status), "status {status:#x} for {regs:x?}");
        assert_eq!(mem.take_writes(), [], "a hypercall wrote guest memory");
        match probe.reached.pop() {
            Some((reached, handler_status)) => {
                assert!(probe.reached.is_empty(), "{regs:x?} reached the handler twice");
                let want = admissible(vp, &regs, &mem);
                assert_eq!(Some(reached), want, "{regs:x?} reached the handler");
                assert_eq!(status, handler_status, "the handler's status is the result");
            }
            None => {
                assert!(!must_reach(vp, &regs, &mem), "{regs:x?} refused with {status:#x}");
                assert_ne!(status, HV_STATUS_SUCCESS, "{regs:x?} succeeded without the handler");
                let code = Control::decode(control).code;
                if code != HVCALL_POST_MESSAGE && code != HVCALL_SIGNAL_EVENT {
                    assert_eq!(status, HV_STATUS_INVALID_HYPERCALL_CODE);
                }
            }
        }
    }
});
