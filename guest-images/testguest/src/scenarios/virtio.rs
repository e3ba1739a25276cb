//! virtio-net: a frame each way over crashvmm's network device, with hostile chains and an
//! oversized frame in between; then hostile requests to the disk. The host side (the
//! integration test) watches the TAP: it must see frames A and B, byte for byte, and nothing
//! else; it sends frame C once the guest says `virtio-net: ready`, then deletes the TAP: the
//! guest sees its link go down (a configuration change interrupt) and sends frame D, which
//! crashvmm drops.

use crate::check::{abort, check, check_eq, finish, note};
use crate::serial::line;
use crate::start_info::StartInfo;
use crate::time::wait_until;
use crate::virtio::{Desc, Device, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_ID_NET, VRING_DESC_F_NEXT};

const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// `status` in the configuration space: the link is up.
const VIRTIO_NET_S_LINK_UP: u8 = 1;
/// `InterruptStatus`: the configuration changed.
const VIRTIO_MMIO_INT_CONFIG: u32 = 2;
const NET_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_STATUS;
/// `virtio_net_hdr_v1`.
const NET_HDR: u64 = 12;
/// An EtherType for local experiments (IEEE 802), what the host side listens for.
const ETH_P_TEST: u16 = 0x88b5;
/// Payload bytes of a test frame.
pub const PAYLOAD: u64 = 1000;

const TX_BUF: u64 = 0x0290_0000;
const HOSTILE_BUF: u64 = 0x0291_0000;
const RX_BUFS: u64 = 0x02a0_0000;
const RX_BUF_LEN: u32 = 2048;
const RX_COUNT: u16 = 8;
const BLK_BUF: u64 = 0x02b0_0000;

fn write8(addr: u64, v: u8) {
    // SAFETY: the scenario's buffers are RAM it owns.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

fn read8(addr: u64) -> u8 {
    // SAFETY: as in `write8`.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Test frame `tag` from `mac` at `at`, header first: broadcast destination, the test
/// EtherType, payload byte i = tag ^ (7 i). Returns its length with the header. The host test
/// builds the same bytes.
fn test_frame(at: u64, tag: u8, mac: &[u8; 6]) -> u32 {
    for i in 0..NET_HDR {
        write8(at + i, 0);
    }
    let eth = at + NET_HDR;
    for i in 0..6 {
        write8(eth + i, 0xff);
        write8(eth + 6 + i, mac[i as usize]);
    }
    write8(eth + 12, (ETH_P_TEST >> 8) as u8);
    write8(eth + 13, ETH_P_TEST as u8);
    for i in 0..PAYLOAD {
        write8(eth + 14 + i, tag ^ (i as u8).wrapping_mul(7));
    }
    (NET_HDR + 14 + PAYLOAD) as u32
}

pub fn virtio_net(_si: &StartInfo) -> ! {
    let Some(dev) = Device::find(VIRTIO_ID_NET) else { abort("no virtio-net device (crashvmm --net)") };
    check("net-features-ok", dev.negotiate(NET_FEATURES) == Some(NET_FEATURES));
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = dev.config_byte(i as u64);
    }
    let packed = mac.iter().fold(0u64, |v, &b| v << 8 | u64::from(b));
    line().s("virtio-net: mac ").hex(packed).end();
    let status = u64::from(dev.config_byte(6)) | u64::from(dev.config_byte(7)) << 8;
    check_eq("net-link-up", status & 1, 1);
    let (Some(mut rx), Some(mut tx)) = (dev.queue(0, 0), dev.queue(1, 1)) else { abort("virtio-net queues refused") };
    dev.driver_ok();
    for i in 0..RX_COUNT {
        rx.chain(i, &[(RX_BUFS + 0x1000 * u64::from(i), RX_BUF_LEN, true)]);
        rx.publish(i);
    }
    rx.notify();

    // Frame A, header and frame in two descriptors.
    let len = test_frame(TX_BUF, b'A', &mac);
    tx.chain(0, &[(TX_BUF, NET_HDR as u32, false), (TX_BUF + NET_HDR, len - NET_HDR as u32, false)]);
    tx.publish(0);
    tx.notify();
    check("net-frame-a-returned", tx.next_used(5000) == Some((0, 0)));

    // Hostile chains, each given back with length 0 and nothing sent: a loop, a
    // device-writable buffer, a buffer outside RAM, 70,000 bytes, a header asking for TCP
    // segmentation (not negotiated); and an available entry naming a descriptor past the table,
    // skipped.
    tx.set_desc(10, Desc { addr: TX_BUF, len: 64, flags: VRING_DESC_F_NEXT, next: 10 });
    tx.publish(10);
    tx.chain(12, &[(TX_BUF, len, true)]);
    tx.publish(12);
    tx.chain(14, &[(0xfff0_0000, len, false)]);
    tx.publish(14);
    tx.chain(16, &[(TX_BUF, 40_000, false), (TX_BUF, 30_000, false)]);
    tx.publish(16);
    test_frame(HOSTILE_BUF, b'X', &mac);
    write8(HOSTILE_BUF + 1, 1);
    tx.chain(18, &[(HOSTILE_BUF, len, false)]);
    tx.publish(18);
    tx.publish(200);
    tx.notify();
    for head in [10u32, 12, 14, 16, 18] {
        check("net-hostile-chain-returned", tx.next_used(5000) == Some((head, 0)));
    }

    // The device still works: frame B.
    test_frame(TX_BUF, b'B', &mac);
    tx.chain(20, &[(TX_BUF, len, false)]);
    tx.publish(20);
    tx.notify();
    check("net-frame-b-returned", tx.next_used(5000) == Some((20, 0)));
    check_eq("net-nothing-else-returned", u64::from(tx.pending_used()), 0);

    // Frame C from the host.
    note("virtio-net: ready");
    let mut received = false;
    for _ in 0..RX_COUNT {
        let Some((id, got)) = rx.next_used(30_000) else { break };
        let at = RX_BUFS + 0x1000 * u64::from(id);
        let eth = at + NET_HDR;
        let ethertype = u16::from(read8(eth + 12)) << 8 | u16::from(read8(eth + 13));
        if ethertype != ETH_P_TEST {
            continue;
        }
        line().s("virtio-net: received ").dec(u64::from(got)).s(" bytes").end();
        check_eq("net-frame-c-num-buffers", u64::from(read8(at + 10)), 1);
        check_eq("net-frame-c-length", u64::from(got), NET_HDR + 14 + PAYLOAD);
        check("net-frame-c-to-us", (0..6).all(|i| read8(eth + i) == mac[i as usize]));
        check("net-frame-c-payload", (0..PAYLOAD).all(|i| read8(eth + 14 + i) == b'C' ^ (i as u8).wrapping_mul(7)));
        received = true;
        break;
    }
    check("net-frame-c-received", received);

    // The host deletes the TAP: the link goes down, with a configuration change interrupt, and
    // a frame sent then comes back (dropped, counted by crashvmm).
    note("virtio-net: waiting for the link to go down");
    wait_until(30_000, || dev.config_byte(6) & VIRTIO_NET_S_LINK_UP == 0);
    check_eq("net-link-down", u64::from(dev.config_byte(6) & VIRTIO_NET_S_LINK_UP), 0);
    check("net-config-interrupt", dev.ack_interrupts() & VIRTIO_MMIO_INT_CONFIG != 0);
    note("virtio-net: link down");
    test_frame(TX_BUF, b'D', &mac);
    tx.chain(22, &[(TX_BUF, len, false)]);
    tx.publish(22);
    tx.notify();
    check("net-frame-d-returned", tx.next_used(5000) == Some((22, 0)));

    if let Some(blk) = Device::find(VIRTIO_ID_BLOCK) {
        hostile_disk(blk);
    }
    finish()
}

/// A virtio-blk request header: type, reserved, sector.
fn blk_header(at: u64, kind: u32, sector: u64) {
    // SAFETY: the scenario's buffers are RAM it owns.
    unsafe {
        core::ptr::write_volatile(at as *mut u32, kind);
        core::ptr::write_volatile((at + 4) as *mut u32, 0);
        core::ptr::write_volatile((at + 8) as *mut u64, sector);
    }
}

/// The disk: a looping chain and a status byte the device may not write (both given back
/// without a status), a sector past the end (IOERR), then GET_ID still answers.
fn hostile_disk(blk: Device) {
    check("blk-features-ok", blk.negotiate(VIRTIO_F_VERSION_1) == Some(VIRTIO_F_VERSION_1));
    let Some(mut q) = blk.queue(0, 2) else { abort("virtio-blk queue refused") };
    blk.driver_ok();
    let (hdr, data, status) = (BLK_BUF, BLK_BUF + 0x100, BLK_BUF + 0x80);
    blk_header(hdr, 0, 0);
    q.set_desc(0, Desc { addr: hdr, len: 16, flags: VRING_DESC_F_NEXT, next: 0 });
    q.publish(0);
    q.chain(2, &[(hdr, 16, false), (data, 512, true), (status, 1, false)]);
    q.publish(2);
    q.notify();
    check("blk-loop-returned", q.next_used(5000) == Some((0, 0)));
    check("blk-readonly-status-returned", q.next_used(5000) == Some((2, 0)));
    blk_header(hdr, 0, u64::MAX / 512);
    write8(status, 0xee);
    q.chain(6, &[(hdr, 16, false), (data, 512, true), (status, 1, true)]);
    q.publish(6);
    q.notify();
    check("blk-past-the-end-answered", q.next_used(5000).is_some());
    check_eq("blk-past-the-end-ioerr", u64::from(read8(status)), 1);
    blk_header(hdr, 8, 0);
    write8(status, 0xee);
    q.chain(10, &[(hdr, 16, false), (data, 20, true), (status, 1, true)]);
    q.publish(10);
    q.notify();
    check("blk-get-id-answered", q.next_used(5000).is_some());
    check_eq("blk-get-id-ok", u64::from(read8(status)), 0);
    let serial = b"crashvmm-disk0";
    check("blk-get-id-serial", (0..serial.len()).all(|i| read8(data + i as u64) == serial[i]));
}
