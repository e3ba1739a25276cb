//! The virtio-net device behind its virtio-mmio window against any sequence of register writes,
//! guest memory writes (descriptor tables, rings, frames), notifications, frames from the host
//! side of any size and header, link changes and a backend that refuses frames. Checked:
//!
//! - nothing panics, and every frame the backend gets has a 12-byte header asking only for
//!   offloads the driver negotiated (a checksum with `CSUM`, a TCP segment with `HOST_TSO4`/`6`
//!   and its checksum request) and is at most `MAX_FRAME` bytes;
//! - a transmit notification accounts for every chain it takes: the transmit counters (sent,
//!   malformed, too large, refused by the backend) grow by the chains the queue moved past;
//! - a received frame is delivered (one more frame received, nothing dropped), left with the
//!   caller with nothing consumed (the queue's position, its used ring and the counters as they
//!   were), or dropped with exactly one reason counted;
//! - a device that is not live, or a queue that is not ready, is not touched.

#![no_main]

use crashvmm_fuzz::{NetInput, NetOp, NET_MEM, NET_RINGS};
use devices::virtio::net::{MAX_FRAME, NET_HDR_LEN, RX_QUEUE, TX_QUEUE};
use devices::virtio::{NetCounters, Rx, VecNetBackend, VirtioMmio, VirtioNet};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Dev = VirtioMmio<VirtioNet<VecNetBackend>>;

fn reg(dev: &mut Dev, mem: &GuestMemoryMmap, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes(), mem);
}

fn read_reg(dev: &mut Dev, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Bring-up as Linux's virtio_mmio driver does it.
fn setup(dev: &mut Dev, mem: &GuestMemoryMmap, wanted: u64, size: u16) {
    reg(dev, mem, 0x70, 0);
    reg(dev, mem, 0x70, 1);
    reg(dev, mem, 0x70, 3);
    reg(dev, mem, 0x14, 1);
    let mut offered = u64::from(read_reg(dev, 0x10)) << 32;
    reg(dev, mem, 0x14, 0);
    offered |= u64::from(read_reg(dev, 0x10));
    let acked = offered & wanted;
    reg(dev, mem, 0x24, 1);
    reg(dev, mem, 0x20, (acked >> 32) as u32);
    reg(dev, mem, 0x24, 0);
    reg(dev, mem, 0x20, acked as u32);
    reg(dev, mem, 0x70, 0xb);
    for (q, (desc, avail, used)) in NET_RINGS.iter().enumerate() {
        reg(dev, mem, 0x30, q as u32);
        reg(dev, mem, 0x38, u32::from(size));
        for (low, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            reg(dev, mem, low, *addr as u32);
            reg(dev, mem, low + 4, (*addr >> 32) as u32);
        }
        reg(dev, mem, 0x44, 1);
    }
    reg(dev, mem, 0x70, 0xf);
}

fn tx_total(c: &NetCounters) -> u64 {
    c.tx_frames + c.tx_malformed + c.tx_too_large + c.tx_backend
}

fn rx_drops(c: &NetCounters) -> u64 {
    c.rx_malformed + c.rx_too_large + c.rx_offload + c.rx_held
}

/// Whether a sent frame's header asks only for what `acked` allows.
fn offloads_negotiated(header: &[u8], acked: u64) -> bool {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let (flags, gso) = (u32::from(header[0]), u32::from(header[1]));
    let csum = flags == VIRTIO_NET_HDR_F_NEEDS_CSUM && has(VIRTIO_NET_F_CSUM);
    (flags == 0 || csum)
        && match gso {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => csum && has(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => csum && has(VIRTIO_NET_F_HOST_TSO6),
            _ => false,
        }
}

fuzz_target!(|input: NetInput| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), NET_MEM)]).unwrap();
    let mut dev = VirtioMmio::new(VirtioNet::new(VecNetBackend::default(), [2, 0, 0, 0, 0, 1])).unwrap();
    let mut sent = 0;
    for op in &input.ops {
        let before = dev.device().counters();
        match op {
            NetOp::Reg { offset, value } => reg(&mut dev, &mem, u64::from(*offset % 0x200), *value),
            NetOp::Mem { gpa, bytes } => {
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(*gpa)));
            }
            NetOp::Setup { wanted, size } => setup(&mut dev, &mem, *wanted, *size),
            NetOp::Publish { queue, head } => {
                let (_, avail, _) = NET_RINGS[usize::from(*queue % 2)];
                let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
                let slot = avail + 4 + 2 * u64::from(idx % 256);
                mem.write_obj(*head, GuestAddress(slot)).unwrap();
                mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2)).unwrap();
            }
            NetOp::Notify { queue } => {
                let index = usize::from(*queue % 3);
                let at = |dev: &Dev| dev.queue(TX_QUEUE).map(|q| q.next_avail());
                let start = at(&dev);
                dev.notify_queue(index, &mem);
                if index == TX_QUEUE {
                    let moved = u64::from(at(&dev).unwrap_or(0).wrapping_sub(start.unwrap_or(0)));
                    assert_eq!(tx_total(&dev.device().counters()) - tx_total(&before), moved);
                } else {
                    assert_eq!(dev.device().counters(), before);
                }
            }
            NetOp::Receive { .. } | NetOp::BigFrame { .. } => {
                let frame = match op {
                    NetOp::Receive { frame } => frame.clone(),
                    NetOp::BigFrame { len } => {
                        let len = (*len as usize) % (MAX_FRAME + 64);
                        (0..len).map(|i| if i < NET_HDR_LEN { 0 } else { i as u8 }).collect()
                    }
                    _ => unreachable!(),
                };
                let queue = |dev: &Dev| dev.queue(RX_QUEUE).map(|q| q.next_avail());
                let used = |mem: &GuestMemoryMmap| mem.read_obj::<u16>(GuestAddress(NET_RINGS[0].2 + 2)).unwrap();
                let (start, used_before) = (queue(&dev), used(&mem));
                let r = dev.process_with(RX_QUEUE, &mem, |net, q, mem| net.receive(q, mem, &frame));
                let after = dev.device().counters();
                match r {
                    None => assert_eq!(after, before),
                    Some(Rx::Delivered { .. }) => {
                        assert_eq!((after.rx_frames, rx_drops(&after)), (before.rx_frames + 1, rx_drops(&before)));
                        assert!(frame.len() >= NET_HDR_LEN && frame.len() <= MAX_FRAME);
                    }
                    Some(Rx::NoBuffers) => {
                        assert_eq!(after, before);
                        assert_eq!((queue(&dev), used(&mem)), (start, used_before), "consumed");
                    }
                    Some(Rx::Dropped { .. }) => {
                        assert_eq!((after.rx_frames, rx_drops(&after)), (before.rx_frames, rx_drops(&before) + 1));
                    }
                }
            }
            NetOp::Link { up } => {
                if dev.device_mut().set_link(*up) {
                    dev.config_changed();
                }
            }
            NetOp::BackendFails { fail } => {
                dev.device_mut().backend_mut().fail = fail.then_some(std::io::ErrorKind::WouldBlock);
            }
        }
        let acked = dev.acked_features();
        for f in &dev.device().backend().sent[sent..] {
            assert!(f.len() >= NET_HDR_LEN && f.len() <= MAX_FRAME, "a {}-byte frame went out", f.len());
            assert!(offloads_negotiated(f, acked), "a frame asking for an offload not negotiated went out: {:?}", &f[..2]);
        }
        sent = dev.device().backend().sent.len();
        // Only transmitting moves the transmit counters.
        if !matches!(op, NetOp::Notify { .. } | NetOp::Reg { .. }) {
            assert_eq!(tx_total(&dev.device().counters()), tx_total(&before));
        }
    }
});
