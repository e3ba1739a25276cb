//! The hypercall page and hypercall decoding.
//!
//! KVM has no in-kernel Hyper-V here, so `vmcall` never reaches us. The hypercall page we
//! write into the guest instead traps with a port write: `endbr64; mov r11, rdx;
//! mov dx, HYPERCALL_PORT; out dx, al; ret`. On that exit the VMM reads RCX (control),
//! R11 (input GPA or fast input 1) and R8 (output GPA or fast input 2), calls
//! [`handle_hypercall`], and puts the result in RAX.

use super::tlfs::*;
use crate::GuestMemory;

/// The port the hypercall page writes to.
pub const HYPERCALL_PORT: u16 = 0x0610;

/// The hypercall page code (placed at offset 0 of the guest's hypercall page).
pub const HYPERCALL_PAGE_CODE: [u8; 13] = [
    0xf3,
    0x0f,
    0x1e,
    0xfa, // endbr64: Linux 6.1 with IBT checks for it at offset 0
    0x49,
    0x89,
    0xd3, // mov r11, rdx (input GPA / fast input 1; r11 is clobberable)
    0x66,
    0xba,
    HYPERCALL_PORT as u8,
    (HYPERCALL_PORT >> 8) as u8, // mov dx, HYPERCALL_PORT
    0xee,                        // out dx, al
    0xc3,                        // ret (unreachable bytes after it stay whatever the page held)
];

/// The registers of a hypercall, as the VMM read them at the port exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallInput {
    /// RCX.
    pub control: u64,
    /// R11 (the page saved RDX there): input GPA, or fast input 1.
    pub param1: u64,
    /// R8: output GPA, or fast input 2.
    pub param2: u64,
}

/// The fields of a hypercall control word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub code: u16,
    pub fast: bool,
    pub var_header_size: u16,
    pub rep_count: u16,
    pub rep_start: u16,
}

impl Control {
    pub fn decode(control: u64) -> Self {
        Self {
            code: control as u16,
            fast: control & HV_HYPERCALL_FAST_BIT != 0,
            var_header_size: ((control >> HV_HYPERCALL_VARHEAD_OFFSET) & 0x3ff) as u16,
            rep_count: ((control >> HV_HYPERCALL_REP_COMP_OFFSET) & 0xfff) as u16,
            rep_start: ((control >> HV_HYPERCALL_REP_START_OFFSET) & 0xfff) as u16,
        }
    }
}

/// Where HvPostMessage and HvSignalEvent go (the VMBus server, once there is one).
pub trait MessageHandler {
    /// A validated HvPostMessage from virtual processor `vp`; returns an `HV_STATUS_*`.
    fn post_message(&mut self, vp: u32, connection_id: u32, message_type: u32, payload: &[u8]) -> u16;
    /// An HvSignalEvent from `vp`; returns an `HV_STATUS_*`.
    fn signal_event(&mut self, vp: u32, connection_id: u32, flag: u16) -> u16;
}

/// No VMBus server: every connection id is unknown. Linux's `vmbus_connect` then gives up
/// quickly (INITIATE_CONTACT fails with `-EINVAL` for each protocol version).
#[derive(Debug, Default)]
pub struct NoConnections;

impl MessageHandler for NoConnections {
    fn post_message(&mut self, _vp: u32, _connection_id: u32, _message_type: u32, _payload: &[u8]) -> u16 {
        HV_STATUS_INVALID_CONNECTION_ID
    }
    fn signal_event(&mut self, _vp: u32, _connection_id: u32, _flag: u16) -> u16 {
        HV_STATUS_INVALID_CONNECTION_ID
    }
}

/// `connection_id` bits 23:0.
const CONNECTION_ID_MASK: u32 = 0x00ff_ffff;

/// Run one hypercall; returns the value for RAX (status in bits 15:0, no reps completed).
pub fn handle_hypercall(
    vp: u32,
    input: HypercallInput,
    mem: &dyn GuestMemory,
    handler: &mut dyn MessageHandler,
) -> u64 {
    let c = Control::decode(input.control);
    let status = match c.code {
        HVCALL_POST_MESSAGE => post_message(vp, c, input, mem, handler),
        HVCALL_SIGNAL_EVENT => signal_event(vp, c, input, mem, handler),
        _ => HV_STATUS_INVALID_HYPERCALL_CODE,
    };
    status as u64
}

fn post_message(
    vp: u32,
    c: Control,
    input: HypercallInput,
    mem: &dyn GuestMemory,
    handler: &mut dyn MessageHandler,
) -> u16 {
    if c.fast || c.rep_count != 0 || c.var_header_size != 0 {
        return HV_STATUS_INVALID_HYPERCALL_INPUT;
    }
    let gpa = input.param1;
    if gpa % 8 != 0 {
        return HV_STATUS_INVALID_ALIGNMENT;
    }
    let mut header = [0u8; HV_POST_MESSAGE_HEADER_SIZE];
    if mem.read(gpa, &mut header).is_err() {
        return HV_STATUS_INVALID_PARAMETER;
    }
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
    let (connection_id, message_type, size) = (word(0) & CONNECTION_ID_MASK, word(8), word(12) as usize);
    // Message types with the high bit set belong to the hypervisor; 0 is "no message".
    if message_type == HVMSG_NONE || message_type & 0x8000_0000 != 0 || size > HV_MESSAGE_PAYLOAD_BYTE_COUNT {
        return HV_STATUS_INVALID_HYPERCALL_INPUT;
    }
    let mut payload = vec![0u8; size];
    if mem.read(gpa + HV_POST_MESSAGE_HEADER_SIZE as u64, &mut payload).is_err() {
        return HV_STATUS_INVALID_PARAMETER;
    }
    handler.post_message(vp, connection_id, message_type, &payload)
}

fn signal_event(
    vp: u32,
    c: Control,
    input: HypercallInput,
    mem: &dyn GuestMemory,
    handler: &mut dyn MessageHandler,
) -> u16 {
    if c.rep_count != 0 || c.var_header_size != 0 {
        return HV_STATUS_INVALID_HYPERCALL_INPUT;
    }
    let word = if c.fast {
        input.param1
    } else {
        if input.param1 % 8 != 0 {
            return HV_STATUS_INVALID_ALIGNMENT;
        }
        let mut b = [0u8; 8];
        if mem.read(input.param1, &mut b).is_err() {
            return HV_STATUS_INVALID_PARAMETER;
        }
        u64::from_le_bytes(b)
    };
    handler.signal_event(vp, word as u32 & CONNECTION_ID_MASK, (word >> 32) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyperv::testing::FakeMem;

    #[derive(Default)]
    struct Recorder {
        posts: Vec<(u32, u32, u32, Vec<u8>)>,
        signals: Vec<(u32, u32, u16)>,
    }

    impl MessageHandler for Recorder {
        fn post_message(&mut self, vp: u32, connection_id: u32, message_type: u32, payload: &[u8]) -> u16 {
            self.posts.push((vp, connection_id, message_type, payload.to_vec()));
            HV_STATUS_SUCCESS
        }
        fn signal_event(&mut self, vp: u32, connection_id: u32, flag: u16) -> u16 {
            self.signals.push((vp, connection_id, flag));
            HV_STATUS_SUCCESS
        }
    }

    fn post_input(mem: &FakeMem, gpa: u64, conn: u32, ty: u32, size: u32, payload: &[u8]) {
        let mut b = Vec::new();
        for w in [conn, 0, ty, size] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(payload);
        mem.write(gpa, &b).unwrap();
    }

    fn call(control: u64, p1: u64, mem: &FakeMem, h: &mut Recorder) -> u64 {
        handle_hypercall(3, HypercallInput { control, param1: p1, param2: 0 }, mem, h)
    }

    #[test]
    fn page_code_traps_on_our_port() {
        assert_eq!(&HYPERCALL_PAGE_CODE[..4], &[0xf3, 0x0f, 0x1e, 0xfa]);
        assert_eq!(u16::from_le_bytes([HYPERCALL_PAGE_CODE[9], HYPERCALL_PAGE_CODE[10]]), HYPERCALL_PORT);
        assert_eq!(*HYPERCALL_PAGE_CODE.last().unwrap(), 0xc3);
    }

    #[test]
    fn decodes_control_words() {
        let c = Control::decode(0x0fff_0002_0001_005d | (5 << 17));
        assert_eq!(c.code, 0x5d);
        assert!(c.fast);
        assert_eq!(c.var_header_size, 5);
        assert_eq!(c.rep_count, 2);
        assert_eq!(c.rep_start, 0xfff);
    }

    #[test]
    fn post_message_reaches_the_handler() {
        let mem = FakeMem::new(0x10000);
        let mut h = Recorder::default();
        post_input(&mem, 0x2000, 0x0100_0004, 1, 3, b"abc");
        assert_eq!(call(0x5c, 0x2000, &mem, &mut h), 0);
        // Connection id bits 23:0 only.
        assert_eq!(h.posts, vec![(3, 4, 1, b"abc".to_vec())]);
    }

    #[test]
    fn hostile_post_message_inputs_get_architectural_errors() {
        let mem = FakeMem::new(0x10000);
        let mut h = Recorder::default();
        post_input(&mem, 0x2000, 4, 1, 241, &[0; 241]);
        assert_eq!(call(0x5c, 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT, "payload over 240");
        post_input(&mem, 0x3000, 4, 0, 1, &[0]);
        assert_eq!(call(0x5c, 0x3000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT, "type 0");
        post_input(&mem, 0x3000, 4, 0x8000_0001, 1, &[0]);
        assert_eq!(call(0x5c, 0x3000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT, "hypervisor type");
        assert_eq!(call(0x5c, 0x2004, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT);
        assert_eq!(call(0x5c, 0x1_0000_0000, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER, "outside RAM");
        assert_eq!(call(0x5c, !7, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER, "wraps");
        // Header inside RAM, payload beyond it.
        post_input(&mem, 0xfff0, 4, 1, 240, &[]);
        assert_eq!(call(0x5c, 0xfff0, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER);
        assert_eq!(call(0x5c | HV_HYPERCALL_FAST_BIT, 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT);
        assert_eq!(call(0x5c | (1 << 32), 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT, "rep");
        assert!(h.posts.is_empty());
    }

    #[test]
    fn signal_event_fast_and_slow() {
        let mem = FakeMem::new(0x10000);
        let mut h = Recorder::default();
        assert_eq!(call(0x5d | HV_HYPERCALL_FAST_BIT, (7 << 32) | 0x18, &mem, &mut h), 0);
        mem.write(0x100, &((2u64 << 32) | 0x19).to_le_bytes()).unwrap();
        assert_eq!(call(0x5d, 0x100, &mem, &mut h), 0);
        assert_eq!(call(0x5d, 0x101, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT);
        assert_eq!(call(0x5d, 0x20_0000, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER);
        assert_eq!(h.signals, vec![(3, 0x18, 7), (3, 0x19, 2)]);
    }

    #[test]
    fn unknown_codes_are_refused() {
        let mem = FakeMem::new(0x1000);
        let mut h = Recorder::default();
        for code in [0u64, 1, 2, 0x46, 0x5b, 0x5e, 0x8001, 0xffff] {
            assert_eq!(call(code, 0, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_CODE, "{code:#x}");
        }
        let mut none = NoConnections;
        post_input(&mem, 0x100, 1, 1, 0, &[]);
        let r = handle_hypercall(0, HypercallInput { control: 0x5c, param1: 0x100, param2: 0 }, &mem, &mut none);
        assert_eq!(r as u16, HV_STATUS_INVALID_CONNECTION_ID);
    }
}
