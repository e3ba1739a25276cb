//! The VMBus control channel, client side, as `drivers/hv/connection.c` and
//! `channel_mgmt.c` do it: INITIATE_CONTACT newest version first, REQUESTOFFERS, UNLOAD with
//! `vmbus_wait_for_unload()`'s polling of the message page. Messages are taken by polling the
//! SINT 2 slot with interrupts off; each one is acknowledged like `vmbus_signal_eom()`.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::cpu::{pause, wrmsr};
use crate::hyperv::{
    self, page_gpa, Which, HVMSG_NONE, HVMSG_VMBUS, HV_MESSAGE_FLAG_PENDING, HV_MESSAGE_PAYLOAD_BYTE_COUNT,
    HV_STATUS_INSUFFICIENT_BUFFERS, HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_SUCCESS, HV_X64_MSR_EOM,
    VMBUS_MESSAGE_SINT,
};
use crate::time::{wait_until, Deadline, MAX_POLLS};

pub const VMBUS_MESSAGE_CONNECTION_ID: u32 = 1;
pub const VMBUS_MESSAGE_CONNECTION_ID_4: u32 = 4;

pub const CHANNELMSG_OFFERCHANNEL: u32 = 1;
pub const CHANNELMSG_REQUESTOFFERS: u32 = 3;
pub const CHANNELMSG_ALLOFFERS_DELIVERED: u32 = 4;
pub const CHANNELMSG_INITIATE_CONTACT: u32 = 14;
pub const CHANNELMSG_VERSION_RESPONSE: u32 = 15;
pub const CHANNELMSG_UNLOAD: u32 = 16;
pub const CHANNELMSG_UNLOAD_RESPONSE: u32 = 17;

pub const VERSION_WIN8: u32 = 0x0002_0004;
pub const VERSION_WIN8_1: u32 = 0x0003_0000;
pub const VERSION_WIN10: u32 = 0x0004_0000;
pub const VERSION_WIN10_V4_1: u32 = 0x0004_0001;
pub const VERSION_WIN10_V5: u32 = 0x0005_0000;
pub const VERSION_WIN10_V5_1: u32 = 0x0005_0001;
pub const VERSION_WIN10_V5_2: u32 = 0x0005_0002;
pub const VERSION_WIN10_V5_3: u32 = 0x0005_0003;
/// `vmbus_versions[]`, newest first.
pub const VMBUS_VERSIONS: [u32; 8] = [
    VERSION_WIN10_V5_3,
    VERSION_WIN10_V5_2,
    VERSION_WIN10_V5_1,
    VERSION_WIN10_V5,
    VERSION_WIN10_V4_1,
    VERSION_WIN10,
    VERSION_WIN8_1,
    VERSION_WIN8,
];

/// `struct vmbus_channel_initiate_contact`.
pub const INITIATE_CONTACT_SIZE: usize = 40;
/// `struct vmbus_channel_version_response`.
pub const VERSION_RESPONSE_SIZE: usize = 16;
/// `struct vmbus_channel_message_header`.
pub const HEADER_SIZE: usize = 8;
/// Tries of `vmbus_post_msg()` while the host answers "insufficient buffers".
pub const POST_RETRIES: u32 = 100;

/// How long the guest waits for an answer (crashvmm answers at once unless told to delay).
pub const REPLY_TIMEOUT_MS: u64 = 5_000;

/// A message taken from the slot.
#[derive(Clone, Copy)]
pub struct Message {
    /// SynIC `message_type` (1 for VMBus).
    pub synic_type: u32,
    pub payload_size: u8,
    pub payload: [u8; HV_MESSAGE_PAYLOAD_BYTE_COUNT],
}

impl Message {
    /// The VMBus `msgtype` (first word of the payload).
    pub fn msgtype(&self) -> u32 {
        self.u32_at(0)
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes([self.payload[off], self.payload[off + 1], self.payload[off + 2], self.payload[off + 3]])
    }
}

/// Messages taken since boot, and EOMs written (the flood scenario reports them).
static TAKEN: AtomicU32 = AtomicU32::new(0);
static EOMS: AtomicU32 = AtomicU32::new(0);

pub fn taken() -> u32 {
    TAKEN.load(Ordering::Relaxed)
}

pub fn eoms() -> u32 {
    EOMS.load(Ordering::Relaxed)
}

fn slot_type() -> &'static AtomicU32 {
    // SAFETY: the slot's first word is 4-byte aligned inside the SIMP page, which lives as
    // long as the image; the hypervisor writes it only while this CPU is out of the guest.
    unsafe { AtomicU32::from_ptr(hyperv::vmbus_slot() as *mut u32) }
}

/// Whether a message sits in the slot.
pub fn slot_busy() -> bool {
    slot_type().load(Ordering::Acquire) != HVMSG_NONE
}

/// `vmbus_signal_eom()`: free the slot (cmpxchg of the type to NONE), then EOM if the
/// hypervisor flagged more messages pending.
pub fn signal_eom(old_type: u32) {
    let _ = slot_type().compare_exchange(old_type, HVMSG_NONE, Ordering::AcqRel, Ordering::Acquire);
    // SAFETY: byte 5 of the slot is message_flags.
    let flags = unsafe { core::ptr::read_volatile(hyperv::vmbus_slot().add(5)) };
    if flags & HV_MESSAGE_FLAG_PENDING != 0 {
        wrmsr(HV_X64_MSR_EOM, 0);
        EOMS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copy the message out of the slot and acknowledge it.
fn take() -> Message {
    let slot = hyperv::vmbus_slot();
    let synic_type = slot_type().load(Ordering::Acquire);
    // SAFETY: header byte 4 of the slot: payload size.
    let size = unsafe { core::ptr::read_volatile(slot.add(4)) };
    let mut m = Message { synic_type, payload_size: size, payload: [0; HV_MESSAGE_PAYLOAD_BYTE_COUNT] };
    let n = (size as usize).min(HV_MESSAGE_PAYLOAD_BYTE_COUNT);
    // SAFETY: the payload is bytes 16..256 of the slot; n <= 240.
    unsafe { core::ptr::copy_nonoverlapping(slot.add(16), m.payload.as_mut_ptr(), n) };
    signal_eom(synic_type);
    TAKEN.fetch_add(1, Ordering::Relaxed);
    m
}

/// Wait for the next message, up to `timeout_ms`.
pub fn next_message(timeout_ms: u64) -> Option<Message> {
    wait_until(timeout_ms, slot_busy).then(take)
}

/// Wait for a message of VMBus type `msgtype`, dropping others (counted in `skipped`).
pub fn wait_for(msgtype: u32, timeout_ms: u64, skipped: &mut u32) -> Option<Message> {
    let deadline = Deadline::after_ms(timeout_ms);
    loop {
        let m = next_message(timeout_ms)?;
        if m.msgtype() == msgtype {
            return Some(m);
        }
        *skipped += 1;
        if deadline.passed() {
            return None;
        }
    }
}

/// Drop whatever arrives within `ms` (bounded); returns how many.
pub fn drain(ms: u64) -> u32 {
    let mut n = 0;
    while next_message(ms).is_some() {
        n += 1;
        if n >= 10_000 {
            break;
        }
    }
    n
}

/// `vmbus_post_msg()`: HvPostMessage, retried while the host has no buffers.
pub fn post(connection_id: u32, payload: &[u8]) -> u64 {
    let mut status = HV_STATUS_SUCCESS;
    for _ in 0..POST_RETRIES {
        status = hyperv::post_message(connection_id, payload);
        if status != HV_STATUS_INSUFFICIENT_BUFFERS {
            break;
        }
        // Make room the way a guest would: take what is waiting.
        drain(1);
    }
    status
}

/// The header-only message `msgtype`.
pub fn header(msgtype: u32) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    b[0..4].copy_from_slice(&msgtype.to_le_bytes());
    b
}

/// `struct vmbus_channel_initiate_contact` for `version`: target VP, then `msg_sint` 2
/// (5.0+) or the interrupt page GPA, and the two monitor pages.
pub fn initiate_contact(version: u32, target_vcpu: u32) -> [u8; INITIATE_CONTACT_SIZE] {
    let mut b = [0u8; INITIATE_CONTACT_SIZE];
    b[0..4].copy_from_slice(&CHANNELMSG_INITIATE_CONTACT.to_le_bytes());
    b[8..12].copy_from_slice(&version.to_le_bytes());
    b[12..16].copy_from_slice(&target_vcpu.to_le_bytes());
    if version >= VERSION_WIN10_V5 {
        b[16] = VMBUS_MESSAGE_SINT as u8;
    } else {
        b[16..24].copy_from_slice(&page_gpa(Which::IntPage).to_le_bytes());
    }
    b[24..32].copy_from_slice(&page_gpa(Which::Monitor1).to_le_bytes());
    b[32..40].copy_from_slice(&page_gpa(Which::Monitor2).to_le_bytes());
    b
}

/// The connection id INITIATE_CONTACT of `version` goes to.
pub fn contact_connection_id(version: u32) -> u32 {
    if version >= VERSION_WIN10_V5 {
        VMBUS_MESSAGE_CONNECTION_ID_4
    } else {
        VMBUS_MESSAGE_CONNECTION_ID
    }
}

/// A negotiated connection.
#[derive(Clone, Copy)]
pub struct Connection {
    pub version: u32,
    /// Where later messages go (VERSION_RESPONSE's `msg_conn_id` for 5.0+).
    pub msg_conn_id: u32,
}

/// Why connecting failed.
pub type Error = &'static str;

/// `vmbus_negotiate_version()` for one version: Ok(Some) connected, Ok(None) declined.
pub fn negotiate(version: u32, target_vcpu: u32) -> Result<Option<Connection>, Error> {
    let status = post(contact_connection_id(version), &initiate_contact(version, target_vcpu));
    if status == HV_STATUS_INVALID_CONNECTION_ID {
        return Ok(None);
    }
    if status != HV_STATUS_SUCCESS {
        return Err("INITIATE_CONTACT: HvPostMessage failed");
    }
    let mut skipped = 0;
    let m = wait_for(CHANNELMSG_VERSION_RESPONSE, REPLY_TIMEOUT_MS, &mut skipped)
        .ok_or("no VERSION_RESPONSE to INITIATE_CONTACT")?;
    if m.synic_type != HVMSG_VMBUS || (m.payload_size as usize) < VERSION_RESPONSE_SIZE {
        return Err("VERSION_RESPONSE: not a VMBus SynIC message of 16 bytes or more");
    }
    if m.payload[8] == 0 {
        return Ok(None);
    }
    let msg_conn_id = if version >= VERSION_WIN10_V5 { m.u32_at(12) } else { VMBUS_MESSAGE_CONNECTION_ID };
    Ok(Some(Connection { version, msg_conn_id }))
}

/// `vmbus_connect()`: newest version first.
pub fn connect(target_vcpu: u32) -> Result<Connection, Error> {
    for v in VMBUS_VERSIONS {
        if let Some(c) = negotiate(v, target_vcpu)? {
            return Ok(c);
        }
    }
    Err("no VMBus protocol version accepted")
}

/// `vmbus_request_offers()` and the wait for ALLOFFERS_DELIVERED: the number of offers.
pub fn request_offers(c: &Connection) -> Result<u32, Error> {
    if post(c.msg_conn_id, &header(CHANNELMSG_REQUESTOFFERS)) != HV_STATUS_SUCCESS {
        return Err("REQUESTOFFERS: HvPostMessage failed");
    }
    let mut offers = 0;
    loop {
        let m = next_message(REPLY_TIMEOUT_MS).ok_or("no ALLOFFERS_DELIVERED")?;
        match m.msgtype() {
            CHANNELMSG_OFFERCHANNEL => offers += 1,
            CHANNELMSG_ALLOFFERS_DELIVERED => return Ok(offers),
            _ => return Err("unexpected message before ALLOFFERS_DELIVERED"),
        }
    }
}

/// Post UNLOAD (the result is ignored, as in `vmbus_initiate_unload()`).
pub fn send_unload(c: &Connection) -> u64 {
    post(c.msg_conn_id, &header(CHANNELMSG_UNLOAD))
}

/// `vmbus_wait_for_unload()`: poll the slot with interrupts off; any message is
/// acknowledged, UNLOAD_RESPONSE ends the wait; at the end the slot is cleared (no EOM).
/// Returns (answered, other messages seen).
pub fn wait_for_unload(timeout_ms: u64) -> (bool, u32) {
    let deadline = Deadline::after_ms(timeout_ms);
    let mut others = 0;
    let mut answered = false;
    for i in 0..MAX_POLLS {
        if slot_busy() {
            let m = take();
            if m.msgtype() == CHANNELMSG_UNLOAD_RESPONSE {
                answered = true;
                break;
            }
            others += 1;
        }
        if i % 16 == 0 && deadline.passed() {
            break;
        }
        pause();
    }
    slot_type().store(HVMSG_NONE, Ordering::Release);
    (answered, others)
}
