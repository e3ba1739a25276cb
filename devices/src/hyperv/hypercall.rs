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

/// Whether the input block `[gpa, gpa + len)` starts 8-byte aligned and stays in one page.
/// TLFS (hypercall status codes): an input GPA not aligned to 8 bytes, an input parameter
/// list that spans pages, and an input GPA outside the GPA space all give
/// HV_STATUS_INVALID_ALIGNMENT.
fn input_block_ok(gpa: u64, len: u64) -> bool {
    gpa % 8 == 0 && (gpa & 0xfff) + len <= 0x1000
}

/// Read an input block; a GPA that is not guest RAM is "not within the bounds of the GPA
/// space": HV_STATUS_INVALID_ALIGNMENT.
fn read_input(mem: &dyn GuestMemory, gpa: u64, buf: &mut [u8]) -> Result<(), u16> {
    if !input_block_ok(gpa, buf.len() as u64) {
        return Err(HV_STATUS_INVALID_ALIGNMENT);
    }
    mem.read(gpa, buf).map_err(|_| HV_STATUS_INVALID_ALIGNMENT)
}

/// Run one hypercall; returns the value for RAX (status in bits 15:0, no reps completed).
pub fn handle_hypercall(
    vp: u32,
    input: HypercallInput,
    mem: &dyn GuestMemory,
    handler: &mut dyn MessageHandler,
) -> u64 {
    let c = Control::decode(input.control);
    let status = match c.code {
        HVCALL_POST_MESSAGE | HVCALL_SIGNAL_EVENT if input.control & HV_HYPERCALL_RSVD_MASK != 0 => {
            // TLFS: a reserved bit of the hypercall input value is set.
            HV_STATUS_INVALID_HYPERCALL_INPUT
        }
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
    // The whole `struct hv_input_post_message` (256 bytes) is the input block.
    let mut block = [0u8; HV_POST_MESSAGE_INPUT_SIZE];
    if let Err(status) = read_input(mem, input.param1, &mut block) {
        return status;
    }
    let word = |i: usize| u32::from_le_bytes([block[i], block[i + 1], block[i + 2], block[i + 3]]);
    let (connection_id, message_type, size) = (word(0) & CONNECTION_ID_MASK, word(8), word(12) as usize);
    // TLFS HvCallPostMessage: HV_STATUS_INVALID_PARAMETER when the message type is 0 or has
    // its most significant bit set (those belong to the hypervisor), or the payload size
    // exceeds 240 bytes.
    if message_type == HVMSG_NONE || message_type & 0x8000_0000 != 0 || size > HV_MESSAGE_PAYLOAD_BYTE_COUNT {
        return HV_STATUS_INVALID_PARAMETER;
    }
    let payload = &block[HV_POST_MESSAGE_HEADER_SIZE..HV_POST_MESSAGE_HEADER_SIZE + size];
    handler.post_message(vp, connection_id, message_type, payload)
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
        let mut b = [0u8; 8];
        if let Err(status) = read_input(mem, input.param1, &mut b) {
            return status;
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
        // HvCallPostMessage's own: INVALID_PARAMETER for the message type and payload size.
        post_input(&mem, 0x2000, 4, 1, 241, &[0; 241]);
        assert_eq!(call(0x5c, 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER, "payload over 240");
        post_input(&mem, 0x2000, 4, 1, u32::MAX, &[]);
        assert_eq!(call(0x5c, 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER, "payload 4 GiB");
        post_input(&mem, 0x3000, 4, 0, 1, &[0]);
        assert_eq!(call(0x5c, 0x3000, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER, "type 0");
        post_input(&mem, 0x3000, 4, 0x8000_0001, 1, &[0]);
        assert_eq!(call(0x5c, 0x3000, &mem, &mut h) as u16, HV_STATUS_INVALID_PARAMETER, "hypervisor type");
        // The common codes: INVALID_ALIGNMENT for a misaligned input, an input spanning pages,
        // an input outside the GPA space.
        assert_eq!(call(0x5c, 0x2004, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT);
        assert_eq!(call(0x5c, 0x1_0000_0000, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT, "outside RAM");
        assert_eq!(call(0x5c, !7, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT, "wraps");
        post_input(&mem, 0x2ff8, 4, 1, 0, &[]);
        assert_eq!(call(0x5c, 0x2ff8, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT, "spans pages");
        // The last input block of RAM is fine; one past it is not.
        post_input(&mem, 0xff00, 4, 1, 0, &[]);
        assert_eq!(call(0x5c, 0xff00, &mem, &mut h) as u16, HV_STATUS_SUCCESS);
        assert_eq!(call(0x5c, 0x10000, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT);
        assert_eq!(call(0x5c | HV_HYPERCALL_FAST_BIT, 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT);
        assert_eq!(call(0x5c | (1 << 32), 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT, "rep");
        for reserved in [1 << 27, 1 << 31, 1 << 44, 1 << 63] {
            assert_eq!(call(0x5c | reserved, 0x2000, &mem, &mut h) as u16, HV_STATUS_INVALID_HYPERCALL_INPUT);
        }
        assert_eq!(h.posts, vec![(3, 4, 1, vec![])], "only the last block of RAM");
    }

    #[test]
    fn signal_event_fast_and_slow() {
        let mem = FakeMem::new(0x10000);
        let mut h = Recorder::default();
        assert_eq!(call(0x5d | HV_HYPERCALL_FAST_BIT, (7 << 32) | 0x18, &mem, &mut h), 0);
        mem.write(0x100, &((2u64 << 32) | 0x19).to_le_bytes()).unwrap();
        assert_eq!(call(0x5d, 0x100, &mem, &mut h), 0);
        assert_eq!(call(0x5d, 0x101, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT);
        assert_eq!(call(0x5d, 0x20_0000, &mem, &mut h) as u16, HV_STATUS_INVALID_ALIGNMENT, "outside RAM");
        assert_eq!(call(0x5d | HV_HYPERCALL_FAST_BIT | (1 << 60), 0x18, &mem, &mut h) as u16, 3, "reserved bit");
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
