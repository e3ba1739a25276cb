//! Shared pieces of crashvmm's fuzz targets (`fuzz_targets/`):
//!
//! - [`VecMem`]: guest RAM `[0, size)` in a vector, bounds-checked like the VMM's `GuestRam`;
//! - the inputs of the targets ([`ServerInput`], [`HypercallInput`], [`PartitionInput`]),
//!   decoded from the fuzzer's bytes with `arbitrary` and encoded back with `to_bytes`, so that
//!   the seed corpora in `fuzz/seeds/` are written as structured values ([`seeds`]) and a test
//!   checks that each decodes to what it says;
//! - [`guest_message`]: the guest side of the VMBus channel messages, written from Linux's
//!   structs independently of `devices::vmbus::messages` (which only parses them), for the
//!   round trip.

use std::cell::RefCell;
use std::ops::Range;

use arbitrary::{Arbitrary, Result, Unstructured};
use devices::vmbus::messages::{
    GuestMessage, CHANNELMSG_INITIATE_CONTACT, CHANNELMSG_REQUESTOFFERS, CHANNELMSG_UNLOAD, HEADER_SIZE,
    INITIATE_CONTACT_SIZE,
};
use devices::{GuestMemory, OutOfRange};

pub mod seeds;

/// Largest guest memory of an input (the targets' pages and messages fit in a few pages).
pub const MAX_MEM: usize = 0x8000;
/// Most operations (messages, MSR accesses, hypercalls) one input runs.
pub const MAX_OPS: usize = 256;
/// Longest raw byte string of an input (a little over the 240-byte SynIC payload).
pub const MAX_RAW: usize = 300;

/// Guest RAM `[0, size)` in a vector, with a log of the writes made to it.
#[derive(Debug)]
pub struct VecMem {
    bytes: RefCell<Vec<u8>>,
    writes: RefCell<Vec<Range<usize>>>,
}

impl VecMem {
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size])
    }

    fn from_vec(bytes: Vec<u8>) -> Self {
        Self { bytes: RefCell::new(bytes), writes: RefCell::new(Vec::new()) }
    }

    pub fn size(&self) -> usize {
        self.bytes.borrow().len()
    }

    /// The bytes of `[gpa, gpa + len)`, when all of them are guest RAM.
    pub fn range(&self, gpa: u64, len: usize) -> Option<Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.size()).then_some(start..end)
    }

    /// A copy of guest RAM `r`.
    pub fn get(&self, r: Range<usize>) -> Vec<u8> {
        self.bytes.borrow()[r].to_vec()
    }

    /// The ranges written since the last call, in order.
    pub fn take_writes(&self) -> Vec<Range<usize>> {
        std::mem::take(&mut self.writes.borrow_mut())
    }
}

impl GuestMemory for VecMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> std::result::Result<(), OutOfRange> {
        let r = self.range(gpa, buf.len()).ok_or(OutOfRange { gpa, len: buf.len() })?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> std::result::Result<(), OutOfRange> {
        let r = self.range(gpa, data.len()).ok_or(OutOfRange { gpa, len: data.len() })?;
        self.bytes.borrow_mut()[r.clone()].copy_from_slice(data);
        self.writes.borrow_mut().push(r);
        Ok(())
    }
}

/// Whether `r` lies within `[start, start + len)`.
pub fn within(r: &Range<usize>, start: u64, len: u64) -> bool {
    let (s, e) = (r.start as u64, r.end as u64);
    start <= s && e <= start.saturating_add(len)
}

// The byte format: fixed-size little-endian fields (zeros once the input has run out) and
// strings of bytes with a u16 length.

fn take<const N: usize>(u: &mut Unstructured) -> [u8; N] {
    let mut b = [0u8; N];
    // Pads with zeros when the data is exhausted; never fails.
    let _ = u.fill_buffer(&mut b);
    b
}

fn get_u8(u: &mut Unstructured) -> u8 {
    take::<1>(u)[0]
}

fn get_u16(u: &mut Unstructured) -> u16 {
    u16::from_le_bytes(take(u))
}

fn get_u32(u: &mut Unstructured) -> u32 {
    u32::from_le_bytes(take(u))
}

fn get_u64(u: &mut Unstructured) -> u64 {
    u64::from_le_bytes(take(u))
}

fn get_bytes(u: &mut Unstructured, max: usize) -> Vec<u8> {
    let n = usize::from(get_u16(u)).min(max).min(u.len());
    u.bytes(n).map(<[u8]>::to_vec).unwrap_or_default()
}

/// The inverse of the `get_*` readers.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u16(b.len() as u16);
        self.0.extend_from_slice(b);
        self
    }
}

/// Guest memory of an input: `size` bytes (at most [`MAX_MEM`]), `init` at address 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemImage {
    pub size: u16,
    pub init: Vec<u8>,
}

impl MemImage {
    fn read(u: &mut Unstructured) -> Self {
        Self { size: get_u16(u), init: get_bytes(u, MAX_MEM) }
    }

    fn write(&self, w: &mut Writer) {
        w.u16(self.size).bytes(&self.init);
    }

    pub fn build(&self) -> VecMem {
        let mut v = self.init.clone();
        v.resize(usize::from(self.size).min(MAX_MEM), 0);
        VecMem::from_vec(v)
    }
}

/// `struct vmbus_channel_message_header`: message type, padding.
fn channel_header(msgtype: u32) -> Vec<u8> {
    let mut v = msgtype.to_le_bytes().to_vec();
    v.resize(HEADER_SIZE, 0);
    v
}

/// The bytes Linux posts for `m` (`drivers/hv/connection.c`, `channel_mgmt.c`), header
/// padding zero.
pub fn guest_message(m: &GuestMessage) -> Vec<u8> {
    match *m {
        GuestMessage::InitiateContact {
            version,
            target_vcpu,
            interrupt_page_or_sint,
            monitor_page1,
            monitor_page2,
        } => {
            // struct vmbus_channel_initiate_contact: header, vmbus_version_requested,
            // target_vcpu, interrupt_page (or msg_sint, msg2_sint, padding), monitor_page1/2.
            let mut v = channel_header(CHANNELMSG_INITIATE_CONTACT);
            v.extend_from_slice(&version.to_le_bytes());
            v.extend_from_slice(&target_vcpu.to_le_bytes());
            v.extend_from_slice(&interrupt_page_or_sint.to_le_bytes());
            v.extend_from_slice(&monitor_page1.to_le_bytes());
            v.extend_from_slice(&monitor_page2.to_le_bytes());
            debug_assert_eq!(v.len(), INITIATE_CONTACT_SIZE);
            v
        }
        // struct vmbus_channel_message_header alone.
        GuestMessage::RequestOffers => channel_header(CHANNELMSG_REQUESTOFFERS),
        GuestMessage::Unload => channel_header(CHANNELMSG_UNLOAD),
        GuestMessage::Unsupported { msgtype } => channel_header(msgtype),
    }
}

/// A message the `vmbus_server` target posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// INITIATE_CONTACT with any version and target, `trailing` zero bytes appended.
    InitiateContact {
        version: u32,
        target_vcpu: u32,
        interrupt_page_or_sint: u64,
        monitor_page1: u64,
        monitor_page2: u64,
        trailing: u8,
    },
    RequestOffers,
    Unload,
    /// A channel message header of any type, zero-filled or cut to `len` bytes.
    Header {
        msgtype: u32,
        len: u8,
    },
    /// Any bytes.
    Raw(Vec<u8>),
}

impl Msg {
    fn read(u: &mut Unstructured) -> Self {
        match get_u8(u) % 5 {
            0 => Msg::InitiateContact {
                version: get_u32(u),
                target_vcpu: get_u32(u),
                interrupt_page_or_sint: get_u64(u),
                monitor_page1: get_u64(u),
                monitor_page2: get_u64(u),
                trailing: get_u8(u),
            },
            1 => Msg::RequestOffers,
            2 => Msg::Unload,
            3 => Msg::Header { msgtype: get_u32(u), len: get_u8(u) },
            _ => Msg::Raw(get_bytes(u, MAX_RAW)),
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Msg::InitiateContact {
                version,
                target_vcpu,
                interrupt_page_or_sint,
                monitor_page1,
                monitor_page2,
                trailing,
            } => {
                w.u8(0)
                    .u32(*version)
                    .u32(*target_vcpu)
                    .u64(*interrupt_page_or_sint)
                    .u64(*monitor_page1)
                    .u64(*monitor_page2)
                    .u8(*trailing);
            }
            Msg::RequestOffers => {
                w.u8(1);
            }
            Msg::Unload => {
                w.u8(2);
            }
            Msg::Header { msgtype, len } => {
                w.u8(3).u32(*msgtype).u8(*len);
            }
            Msg::Raw(b) => {
                w.u8(4).bytes(b);
            }
        }
    }

    /// The payload of the HvPostMessage.
    pub fn payload(&self) -> Vec<u8> {
        match *self {
            Msg::InitiateContact {
                version,
                target_vcpu,
                interrupt_page_or_sint,
                monitor_page1,
                monitor_page2,
                trailing,
            } => {
                let mut v = guest_message(&GuestMessage::InitiateContact {
                    version,
                    target_vcpu,
                    interrupt_page_or_sint,
                    monitor_page1,
                    monitor_page2,
                });
                v.resize(v.len() + usize::from(trailing), 0);
                v
            }
            Msg::RequestOffers => guest_message(&GuestMessage::RequestOffers),
            Msg::Unload => guest_message(&GuestMessage::Unload),
            Msg::Header { msgtype, len } => {
                let mut v = channel_header(msgtype);
                v.resize(usize::from(len), 0);
                v
            }
            Msg::Raw(ref b) => b.clone(),
        }
    }
}

/// One step of the `vmbus_server` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    /// HvPostMessage from VP `vp` (taken modulo the VP count) on `connection_id`.
    Post { vp: u8, connection_id: u32, msg: Msg },
    /// The VMM posted the UNLOAD_RESPONSE it was handed (skipped when none is outstanding:
    /// then the call must do nothing).
    UnloadResponsePosted,
}

/// The input of the `vmbus_server` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInput {
    /// 1 to 8.
    pub vcpus: u8,
    pub unload_response: bool,
    pub unload_delay: bool,
    /// Channels offered, 0 to 3.
    pub offers: u8,
    pub ops: Vec<ServerOp>,
}

impl<'a> Arbitrary<'a> for ServerInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let flags = get_u8(u);
        let vcpus = 1 + get_u8(u) % 8;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(match get_u8(u) % 8 {
                7 => ServerOp::UnloadResponsePosted,
                _ => ServerOp::Post { vp: get_u8(u), connection_id: get_u32(u), msg: Msg::read(u) },
            });
        }
        Ok(Self { vcpus, unload_response: flags & 1 != 0, unload_delay: flags & 2 != 0, offers: (flags >> 2) & 3, ops })
    }
}

impl ServerInput {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(u8::from(self.unload_response) | u8::from(self.unload_delay) << 1 | self.offers << 2).u8(self.vcpus - 1);
        for op in &self.ops {
            match op {
                ServerOp::Post { vp, connection_id, msg } => {
                    w.u8(0).u8(*vp).u32(*connection_id);
                    msg.write(&mut w);
                }
                ServerOp::UnloadResponsePosted => {
                    w.u8(7);
                }
            }
        }
        w.0
    }
}

/// What answers the hypercalls of the `hypercall` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Records the calls and answers each with the status its [`Call::reply`] picks.
    Recorder,
    /// The VMBus server, as the VMM wires it (`vmm::hyperv::VmbusPort`), with 1 to 8 VPs.
    Vmbus { vcpus: u8 },
    /// `devices::hyperv::hypercall::NoConnections`.
    NoConnections,
}

/// One hypercall: the registers the VMM reads at the port exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub vp: u8,
    pub control: u64,
    pub param1: u64,
    pub param2: u64,
    /// Which status the [`Handler::Recorder`] answers.
    pub reply: u8,
}

/// The input of the `hypercall` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypercallInput {
    pub handler: Handler,
    pub mem: MemImage,
    pub calls: Vec<Call>,
}

impl<'a> Arbitrary<'a> for HypercallInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let handler = match (get_u8(u) % 3, get_u8(u)) {
            (0, _) => Handler::Recorder,
            (1, v) => Handler::Vmbus { vcpus: 1 + v % 8 },
            _ => Handler::NoConnections,
        };
        let mem = MemImage::read(u);
        let mut calls = Vec::new();
        while !u.is_empty() && calls.len() < MAX_OPS {
            calls.push(Call {
                vp: get_u8(u),
                control: get_u64(u),
                param1: get_u64(u),
                param2: get_u64(u),
                reply: get_u8(u),
            });
        }
        Ok(Self { handler, mem, calls })
    }
}

impl HypercallInput {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self.handler {
            Handler::Recorder => w.u8(0).u8(0),
            Handler::Vmbus { vcpus } => w.u8(1).u8(vcpus - 1),
            Handler::NoConnections => w.u8(2).u8(0),
        };
        self.mem.write(&mut w);
        for c in &self.calls {
            w.u8(c.vp).u64(c.control).u64(c.param1).u64(c.param2).u8(c.reply);
        }
        w.0
    }
}

/// One step of the `crash_message` target. `vp` is taken modulo the VP count plus one, so
/// that one VP number does not exist; `msr` is an offset from 0x40000000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsrOp {
    Write {
        vp: u8,
        msr: u16,
        value: u64,
    },
    Read {
        vp: u8,
        msr: u16,
    },
    /// The VMBus server's way in: queue a `len`-byte message of `message_type` on `sint`
    /// (modulo 18).
    Post {
        vp: u8,
        sint: u8,
        len: u8,
        message_type: u32,
    },
    /// SynIC delivery on `vp`'s thread.
    Deliver {
        vp: u8,
    },
    ClearQueues,
    /// The guest writes its memory (a crash message, freeing a message slot).
    GuestWrite {
        gpa: u16,
        bytes: Vec<u8>,
    },
}

/// The input of the `crash_message` target: a partition with 1 to 4 VPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInput {
    pub vcpus: u8,
    pub crash_message: bool,
    pub mem: MemImage,
    pub ops: Vec<MsrOp>,
}

impl<'a> Arbitrary<'a> for PartitionInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let flags = get_u8(u);
        let mem = MemImage::read(u);
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(match get_u8(u) % 6 {
                0 => MsrOp::Write { vp: get_u8(u), msr: get_u16(u), value: get_u64(u) },
                1 => MsrOp::Read { vp: get_u8(u), msr: get_u16(u) },
                2 => MsrOp::Post { vp: get_u8(u), sint: get_u8(u), len: get_u8(u), message_type: get_u32(u) },
                3 => MsrOp::Deliver { vp: get_u8(u) },
                4 => MsrOp::ClearQueues,
                _ => MsrOp::GuestWrite { gpa: get_u16(u), bytes: get_bytes(u, MAX_RAW) },
            });
        }
        Ok(Self { vcpus: 1 + (flags & 3), crash_message: flags & 4 != 0, mem, ops })
    }
}

impl PartitionInput {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8((self.vcpus - 1) | u8::from(self.crash_message) << 2);
        self.mem.write(&mut w);
        for op in &self.ops {
            match op {
                MsrOp::Write { vp, msr, value } => w.u8(0).u8(*vp).u16(*msr).u64(*value),
                MsrOp::Read { vp, msr } => w.u8(1).u8(*vp).u16(*msr),
                MsrOp::Post { vp, sint, len, message_type } => w.u8(2).u8(*vp).u8(*sint).u8(*len).u32(*message_type),
                MsrOp::Deliver { vp } => w.u8(3).u8(*vp),
                MsrOp::ClearQueues => w.u8(4),
                MsrOp::GuestWrite { gpa, bytes } => w.u8(5).u16(*gpa).bytes(bytes),
            };
        }
        w.0
    }
}

/// Guest RAM of the `virtio_net` target, and where its [`NetOp::Setup`] puts the rings:
/// receive queue (descriptors, available, used), then transmit queue.
pub const NET_MEM: usize = 0x1_0000;
pub const NET_RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x2000, 0x3000), (0x4000, 0x5000, 0x6000)];
/// Longest frame of a [`NetOp::Receive`].
pub const MAX_NET_FRAME: usize = 4096;

/// One step of the `virtio_net` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetOp {
    /// A register write: 4 bytes in the virtio-mmio window (offset modulo 0x200); in the
    /// virtio-pci function's BAR 0 (offset modulo its size), 1, 2 or 4 bytes as `value`'s top
    /// two bits say.
    Reg {
        offset: u16,
        value: u32,
    },
    /// A write to the virtio-pci function's configuration space (ignored by virtio-mmio), its
    /// width as in `Reg`.
    Config {
        offset: u8,
        value: u32,
    },
    /// The guest writes its memory (descriptors, rings, frames).
    Mem {
        gpa: u16,
        bytes: Vec<u8>,
    },
    /// A driver's bring-up as Linux does it: the features in `wanted` that are offered, both
    /// queues ([`NET_RINGS`], `size` entries), DRIVER_OK.
    Setup {
        wanted: u64,
        size: u16,
    },
    /// Descriptor `head` into queue `queue`'s available ring (its `idx` plus one).
    Publish {
        queue: u8,
        head: u16,
    },
    /// `QueueNotify` of `queue`, as its ioeventfd delivers it.
    Notify {
        queue: u8,
    },
    /// A frame from the host side (header first).
    Receive {
        frame: Vec<u8>,
    },
    /// A frame of `len` bytes (a pattern) with a zero header.
    BigFrame {
        len: u32,
    },
    Link {
        up: bool,
    },
    /// The backend refuses frames (a full or vanished TAP) or takes them again.
    BackendFails {
        fail: bool,
    },
}

/// The input of the `virtio_net` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInput {
    pub ops: Vec<NetOp>,
}

impl<'a> Arbitrary<'a> for NetInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(match get_u8(u) % 10 {
                0 => NetOp::Reg { offset: get_u16(u), value: get_u32(u) },
                1 => NetOp::Mem { gpa: get_u16(u), bytes: get_bytes(u, MAX_RAW) },
                2 => NetOp::Setup { wanted: get_u64(u), size: get_u16(u) },
                3 => NetOp::Publish { queue: get_u8(u), head: get_u16(u) },
                4 => NetOp::Notify { queue: get_u8(u) },
                5 => NetOp::Receive { frame: get_bytes(u, MAX_NET_FRAME) },
                6 => NetOp::BigFrame { len: get_u32(u) },
                7 => NetOp::Link { up: get_u8(u) & 1 != 0 },
                8 => NetOp::BackendFails { fail: get_u8(u) & 1 != 0 },
                _ => NetOp::Config { offset: get_u8(u), value: get_u32(u) },
            });
        }
        Ok(Self { ops })
    }
}

impl NetInput {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for op in &self.ops {
            match op {
                NetOp::Reg { offset, value } => w.u8(0).u16(*offset).u32(*value),
                NetOp::Mem { gpa, bytes } => w.u8(1).u16(*gpa).bytes(bytes),
                NetOp::Setup { wanted, size } => w.u8(2).u64(*wanted).u16(*size),
                NetOp::Publish { queue, head } => w.u8(3).u8(*queue).u16(*head),
                NetOp::Notify { queue } => w.u8(4).u8(*queue),
                NetOp::Receive { frame } => w.u8(5).bytes(frame),
                NetOp::BigFrame { len } => w.u8(6).u32(*len),
                NetOp::Link { up } => w.u8(7).u8(u8::from(*up)),
                NetOp::BackendFails { fail } => w.u8(8).u8(u8::from(*fail)),
                NetOp::Config { offset, value } => w.u8(9).u8(*offset).u32(*value),
            };
        }
        w.0
    }
}

/// A descriptor as the guest writes it into a table: address, length, flags, next.
pub fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = Vec::with_capacity(16);
    d.extend_from_slice(&addr.to_le_bytes());
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}
