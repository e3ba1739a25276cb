//! VMBus control-channel abuse: a flood of messages (malformed ones too) with the replies
//! left unread, INITIATE_CONTACT while an UNLOAD is in flight, UNLOAD without a connection.

use super::{hyperv_up, vmbus_up};
use crate::check::{check, check_eq, check_with, finish};
use crate::cpu::rdtsc;
use crate::hyperv::{
    self, HV_STATUS_INSUFFICIENT_BUFFERS, HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_INVALID_PARAMETER,
    HV_STATUS_SUCCESS,
};
use crate::serial::line;
use crate::start_info::StartInfo;
use crate::time::ms_since;
use crate::vmbus::{self, *};

/// How long `guest-flood` floods crashvmm (guest TSC time).
pub const GUEST_FLOOD_MS: u64 = 10_000;

/// Messages of the flood's second and first waves.
pub const FLOOD_VALID: u32 = 200;
pub const FLOOD_MALFORMED: u32 = 240;
/// Wait for an UNLOAD answer crashvmm was told to delay (`--vmbus-unload-delay`).
pub const DELAYED_REPLY_MS: u64 = 10_000;

fn malformed(i: u32, buf: &mut [u8; 240]) -> usize {
    buf.fill(0);
    let t = |buf: &mut [u8; 240], v: u32| buf[0..4].copy_from_slice(&v.to_le_bytes());
    match i % 6 {
        // INITIATE_CONTACT cut short.
        0 => {
            t(buf, CHANNELMSG_INITIATE_CONTACT);
            20
        }
        // A message type past CHANNELMSG_COUNT.
        1 => {
            t(buf, 99);
            8
        }
        // Message type 0 (CHANNELMSG_INVALID).
        2 => 8,
        // Shorter than the header.
        3 => {
            t(buf, CHANNELMSG_REQUESTOFFERS);
            4
        }
        // OPENCHANNEL: no channel is offered.
        4 => {
            t(buf, 5);
            32
        }
        // All ones.
        _ => {
            buf.fill(0xff);
            240
        }
    }
}

pub fn flood(_si: &StartInfo) -> ! {
    let hv = hyperv_up();
    let conn = vmbus_up(&hv);
    // Wave 1: malformed messages, each refused with INVALID_PARAMETER (while crashvmm has
    // room for replies; a full queue answers INSUFFICIENT_BUFFERS before looking at a message).
    let mut buf = [0u8; 240];
    let mut refused = 0;
    for i in 0..FLOOD_MALFORMED {
        let n = malformed(i, &mut buf);
        if hyperv::post_message(conn.msg_conn_id, &buf[..n]) == HV_STATUS_INVALID_PARAMETER {
            refused += 1;
        }
    }
    check_eq("flood-malformed-refused", refused as u64, FLOOD_MALFORMED as u64);
    // Wave 2: valid REQUESTOFFERS, replies left in crashvmm's queue (the slot stays full).
    let (mut ok, mut busy, mut other) = (0u32, 0u32, 0u32);
    let req = header(CHANNELMSG_REQUESTOFFERS);
    for _ in 0..FLOOD_VALID {
        match hyperv::post_message(conn.msg_conn_id, &req) {
            HV_STATUS_SUCCESS => ok += 1,
            HV_STATUS_INSUFFICIENT_BUFFERS => busy += 1,
            _ => other += 1,
        }
    }
    line().s("flood: ").dec(ok as u64).s(" accepted, ").dec(busy as u64).s(" insufficient buffers").end();
    check_eq("flood-valid-statuses", other as u64, 0);
    // Now read what arrived: at most what crashvmm keeps queued, all ALLOFFERS_DELIVERED.
    let before = vmbus::taken();
    let drained = vmbus::drain(200);
    line().s("flood: ").dec(drained as u64).s(" replies read, ").dec(vmbus::eoms() as u64).s(" EOMs").end();
    // crashvmm refuses what it could not answer (INSUFFICIENT_BUFFERS), so every accepted
    // request is answered.
    check("flood-backpressure", busy > 0);
    check_with("flood-every-accepted-answered", drained == ok, |l| {
        l.s("read ").dec(drained as u64).s(" of ").dec(ok as u64)
    });
    check("flood-replies-counted", vmbus::taken() - before == drained);
    // A clean connect still works.
    vmbus_up(&hv);
    finish()
}

pub fn contact_during_unload(_si: &StartInfo) -> ! {
    let hv = hyperv_up();
    let conn = vmbus_up(&hv);
    let t0 = rdtsc();
    check_eq("unload-posted", send_unload(&conn), HV_STATUS_SUCCESS);
    // The crash kernel's INITIATE_CONTACT, before the UNLOAD was answered.
    let st = post(contact_connection_id(VERSION_WIN10_V5_3), &initiate_contact(VERSION_WIN10_V5_3, hv.vp_index));
    check_eq("contact-during-unload-posted", st, HV_STATUS_SUCCESS);
    let first = next_message(DELAYED_REPLY_MS);
    let ms = ms_since(t0);
    check_with("unload-response-first", first.is_some_and(|m| m.msgtype() == CHANNELMSG_UNLOAD_RESPONSE), |l| {
        l.s("got type ").dec(first.map_or(0, |m| m.msgtype()) as u64)
    });
    line().s("UNLOAD answered after ").dec(ms).s(" ms").end();
    let second = next_message(DELAYED_REPLY_MS);
    check_with(
        "version-response-after-unload",
        second.is_some_and(|m| m.msgtype() == CHANNELMSG_VERSION_RESPONSE && m.payload[8] == 1),
        |l| l.s("got type ").dec(second.map_or(0, |m| m.msgtype()) as u64),
    );
    let offers = request_offers(&Connection { version: VERSION_WIN10_V5_3, msg_conn_id: VMBUS_MESSAGE_CONNECTION_ID });
    check("offers-after-reconnect", offers.is_ok());
    finish()
}

pub fn unload_without_connect(_si: &StartInfo) -> ! {
    let hv = hyperv_up();
    // UNLOAD only goes to connection 1; on 4 (INITIATE_CONTACT's port for 5.0+) it is refused.
    check_eq(
        "unload-on-connection-4-refused",
        hyperv::post_message(VMBUS_MESSAGE_CONNECTION_ID_4, &header(CHANNELMSG_UNLOAD)),
        HV_STATUS_INVALID_CONNECTION_ID,
    );
    let c = Connection { version: VERSION_WIN10_V5_3, msg_conn_id: VMBUS_MESSAGE_CONNECTION_ID };
    check_eq("unload-without-connect-posted", send_unload(&c), HV_STATUS_SUCCESS);
    let (answered, others) = wait_for_unload(DELAYED_REPLY_MS);
    check("unload-without-connect-answered", answered);
    check_eq("unload-without-connect-no-other-messages", others as u64, 0);
    // REQUESTOFFERS without a connection is refused; a connect afterwards works.
    check_eq(
        "requestoffers-without-connect-refused",
        hyperv::post_message(VMBUS_MESSAGE_CONNECTION_ID, &header(CHANNELMSG_REQUESTOFFERS)),
        HV_STATUS_INVALID_PARAMETER,
    );
    vmbus_up(&hv);
    finish()
}

/// A guest that floods crashvmm with what it must record: it announces its kdump
/// (`crash_loaded | panicked`: crashvmm waits for the crash kernel), then for
/// [`GUEST_FLOOD_MS`] writes every pvpanic byte over and over, each followed by a malformed
/// VMBus message, then triple-faults: crashvmm must still collect the crash (a crash during
/// kdump), with its records bounded.
pub fn guest_flood(si: &StartInfo) -> ! {
    let hv = hyperv_up();
    let conn = vmbus_up(&hv);
    crate::pvpanic::write_raw(crate::pvpanic::PVPANIC_PANICKED | crate::pvpanic::PVPANIC_CRASH_LOADED);
    let deadline = crate::time::Deadline::after_ms(GUEST_FLOOD_MS);
    let mut buf = [0u8; 240];
    let (mut writes, mut refused) = (0u64, 0u64);
    while !deadline.passed() {
        crate::pvpanic::write_raw(writes as u8);
        let n = malformed(writes as u32, &mut buf);
        if hyperv::post_message(conn.msg_conn_id, &buf[..n]) == HV_STATUS_INVALID_PARAMETER {
            refused += 1;
        }
        writes += 1;
    }
    line().s("guest-flood: ").dec(writes).s(" pvpanic writes, ").dec(refused).s(" VMBus messages refused").end();
    check_eq("guest-flood-every-message-refused", refused, writes);
    super::basic::triple_fault(si)
}
