//! The virtio-net device behind each of its transports (a virtio-mmio window, and a virtio-pci
//! function: BAR 0 and configuration space) against any sequence of register writes,
//! guest memory writes (descriptor tables, rings, frames), notifications, frames from the host
//! side of any size and header, link changes and a backend that refuses frames; every input
//! runs against both. Checked:
//!
//! - nothing panics, and every frame the backend gets has a 12-byte header asking only for
//!   offloads the driver negotiated (a checksum with `CSUM`, a TCP segment with `HOST_TSO4`/`6`
//!   and its checksum request) and is at most `MAX_FRAME` bytes;
//! - a transmit notification accounts for every chain it takes: the transmit counters (sent,
//!   malformed, too large, refused by the backend) grow by the chains the queue moved past;
//! - a received frame is delivered (one more frame received, nothing dropped), left with the
//!   caller with nothing consumed (the queue's position, its used ring and the counters as they
//!   were), or dropped with exactly one reason counted;
//! - a device that is not live, or a queue that is not ready, is not touched;
//! - virtio-pci: an MSI-X message the function says to send is an unmasked entry of its table,
//!   MSI-X enabled and not function-masked.

#![no_main]

use crashvmm_fuzz::{NetInput, NetOp, NET_MEM, NET_RINGS};
use devices::virtio::net::{MAX_FRAME, NET_HDR_LEN, RX_QUEUE, TX_QUEUE};
use devices::virtio::pci::BAR_SIZE;
use devices::virtio::{MsiMessage, NetCounters, Rx, VecNetBackend, VirtioCommon, VirtioMmio, VirtioNet, VirtioPci};
use libfuzzer_sys::fuzz_target;
use std::ops::DerefMut;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Net = VirtioNet<VecNetBackend>;

/// A transport as the driver reaches it.
trait Dev: DerefMut<Target = VirtioCommon<Net>> {
    /// A register write: 4 bytes in the virtio-mmio window (offset modulo 0x200); in BAR 0
    /// (offset modulo its size), 1, 2 or 4 bytes as `value`'s top two bits say.
    fn reg(&mut self, mem: &GuestMemoryMmap, offset: u16, value: u32);
    /// A configuration space write (virtio-pci), its width as in `reg`.
    fn config(&mut self, offset: u8, value: u32);
    /// Bring-up as Linux's driver for the transport does it.
    fn setup(&mut self, mem: &GuestMemoryMmap, wanted: u64, size: u16);
}

impl Dev for VirtioMmio<Net> {
    fn reg(&mut self, mem: &GuestMemoryMmap, offset: u16, value: u32) {
        self.write(u64::from(offset % 0x200), &value.to_le_bytes(), mem);
    }

    fn config(&mut self, _: u8, _: u32) {}

    fn setup(&mut self, mem: &GuestMemoryMmap, wanted: u64, size: u16) {
        let reg = |dev: &mut Self, offset: u64, value: u32| dev.write(offset, &value.to_le_bytes(), mem);
        let read = |dev: &mut Self, offset: u64| {
            let mut b = [0u8; 4];
            dev.read(offset, &mut b);
            u32::from_le_bytes(b)
        };
        reg(self, 0x70, 0);
        reg(self, 0x70, 1);
        reg(self, 0x70, 3);
        reg(self, 0x14, 1);
        let mut offered = u64::from(read(self, 0x10)) << 32;
        reg(self, 0x14, 0);
        offered |= u64::from(read(self, 0x10));
        let acked = offered & wanted;
        reg(self, 0x24, 1);
        reg(self, 0x20, (acked >> 32) as u32);
        reg(self, 0x24, 0);
        reg(self, 0x20, acked as u32);
        reg(self, 0x70, 0xb);
        for (q, (desc, avail, used)) in NET_RINGS.iter().enumerate() {
            reg(self, 0x30, q as u32);
            reg(self, 0x38, u32::from(size));
            for (low, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                reg(self, low, *addr as u32);
                reg(self, low + 4, (*addr >> 32) as u32);
            }
            reg(self, 0x44, 1);
        }
        reg(self, 0x70, 0xf);
    }
}

/// Where the function's MSI-X capability is (after the four virtio capabilities).
const MSIX_CAP: usize = 0x84;

fn width(value: u32) -> usize {
    [1, 2, 4, 4][(value >> 30) as usize]
}

impl Dev for VirtioPci<Net> {
    fn reg(&mut self, mem: &GuestMemoryMmap, offset: u16, value: u32) {
        let messages =
            self.write_bar(u64::from(offset) % u64::from(BAR_SIZE), &value.to_le_bytes()[..width(value)], mem);
        check_messages(self, &messages);
    }

    fn config(&mut self, offset: u8, value: u32) {
        let messages = self.write_config(usize::from(offset), &value.to_le_bytes()[..width(value)]);
        check_messages(self, &messages);
    }

    fn setup(&mut self, mem: &GuestMemoryMmap, wanted: u64, size: u16) {
        let w = |dev: &mut Self, offset: u64, value: u64, len: usize| {
            let m = dev.write_bar(offset, &value.to_le_bytes()[..len], mem);
            check_messages(dev, &m);
        };
        let read = |dev: &mut Self, offset: u64| {
            let mut b = [0u8; 4];
            dev.read_bar(offset, &mut b);
            u64::from(u32::from_le_bytes(b))
        };
        w(self, 20, 0, 1);
        w(self, 20, 3, 1);
        w(self, 0, 1, 4);
        let mut offered = read(self, 4) << 32;
        w(self, 0, 0, 4);
        offered |= read(self, 4);
        let acked = offered & wanted;
        w(self, 8, 1, 4);
        w(self, 12, acked >> 32, 4);
        w(self, 8, 0, 4);
        w(self, 12, acked & 0xffff_ffff, 4);
        w(self, 20, 0xb, 1);
        // MSI-X on, vectors 0 (configuration), 1 and 2 (the queues) unmasked.
        self.write_config(MSIX_CAP + 2, &0x8000u16.to_le_bytes());
        for v in 0..3u64 {
            w(self, 0x4000 + 16 * v, 0xfee0_0000, 4);
            w(self, 0x4008 + 16 * v, 0x30 + v, 4);
            w(self, 0x400c + 16 * v, 0, 4);
        }
        w(self, 16, 0, 2);
        for (q, (desc, avail, used)) in NET_RINGS.iter().enumerate() {
            w(self, 22, q as u64, 2);
            w(self, 24, u64::from(size), 2);
            for (low, addr) in [(32, desc), (40, avail), (48, used)] {
                w(self, low, *addr & 0xffff_ffff, 4);
                w(self, low + 4, *addr >> 32, 4);
            }
            w(self, 26, q as u64 + 1, 2);
        }
        for q in 0..2 {
            w(self, 22, q, 2);
            w(self, 28, 1, 2);
        }
        w(self, 20, 0xf, 1);
    }
}

/// Every message is an unmasked entry of the table, with MSI-X on and no function mask.
fn check_messages(dev: &mut VirtioPci<Net>, messages: &[MsiMessage]) {
    if messages.is_empty() {
        return;
    }
    let mut control = [0u8; 2];
    dev.read_config(MSIX_CAP + 2, &mut control);
    let control = u16::from_le_bytes(control);
    assert!(control & 0x8000 != 0 && control & 0x4000 == 0, "a message with MSI-X control {control:#x}");
    for m in messages {
        let found = (0..3u64).any(|v| {
            let mut e = [0u8; 16];
            for (i, chunk) in e.chunks_mut(4).enumerate() {
                dev.read_bar(0x4000 + 16 * v + 4 * i as u64, chunk);
            }
            let address = u64::from_le_bytes(e[..8].try_into().unwrap());
            let data = u32::from_le_bytes(e[8..12].try_into().unwrap());
            let masked = e[12] & 1 != 0;
            !masked && MsiMessage { address, data } == *m
        });
        assert!(found, "message {m:?} is no unmasked entry of the table");
    }
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
    let net = || VirtioNet::new(VecNetBackend::default(), [2, 0, 0, 0, 0, 1]);
    run(VirtioMmio::new(net()).unwrap(), &input);
    run(VirtioPci::new(net(), 0xc000_0000).unwrap(), &input);
});

fn run<D: Dev>(mut dev: D, input: &NetInput) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), NET_MEM)]).unwrap();
    let mut sent = 0;
    for op in &input.ops {
        let before = dev.device().counters();
        match op {
            NetOp::Reg { offset, value } => dev.reg(&mem, *offset, *value),
            NetOp::Config { offset, value } => dev.config(*offset, *value),
            NetOp::Mem { gpa, bytes } => {
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(*gpa)));
            }
            NetOp::Setup { wanted, size } => dev.setup(&mem, *wanted, *size),
            NetOp::Publish { queue, head } => {
                let (_, avail, _) = NET_RINGS[usize::from(*queue % 2)];
                let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
                let slot = avail + 4 + 2 * u64::from(idx % 256);
                mem.write_obj(*head, GuestAddress(slot)).unwrap();
                mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2)).unwrap();
            }
            NetOp::Notify { queue } => {
                let index = usize::from(*queue % 3);
                let at = |dev: &D| dev.queue(TX_QUEUE).map(|q| q.next_avail());
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
                let queue = |dev: &D| dev.queue(RX_QUEUE).map(|q| q.next_avail());
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
            assert!(
                offloads_negotiated(f, acked),
                "a frame asking for an offload not negotiated went out: {:?}",
                &f[..2]
            );
        }
        sent = dev.device().backend().sent.len();
        // Only transmitting moves the transmit counters.
        if !matches!(op, NetOp::Notify { .. } | NetOp::Reg { .. }) {
            assert_eq!(tx_total(&dev.device().counters()), tx_total(&before));
        }
    }
}
