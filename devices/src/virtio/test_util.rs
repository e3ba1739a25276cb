//! A test driver for virtio-mmio devices: guest memory, the split ring laid out in it, and the
//! register handshake the way Linux's `virtio_mmio` driver does it.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{VirtioDevice, VirtioMmio};

pub const VERSION_1: u64 = 1 << 32;
/// Guest RAM in the tests: `[0, MEM_SIZE)`.
pub const MEM_SIZE: u64 = 0x20_0000;
pub const QUEUE_SIZE: u16 = 256;
pub const DESC_TABLE: u64 = 0x1000;
pub const AVAIL_RING: u64 = 0x3000;
pub const USED_RING: u64 = 0x4000;
/// Where tests put request headers, data and status bytes.
pub const BUFFERS: u64 = 0x10000;

pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

pub fn read_reg<D: VirtioDevice>(dev: &mut VirtioMmio<D>, reg: u32) -> u32 {
    let mut data = [0u8; 4];
    dev.read(reg.into(), &mut data);
    u32::from_le_bytes(data)
}

pub fn write_reg<D: VirtioDevice>(dev: &mut VirtioMmio<D>, mem: &GuestMemoryMmap, reg: u32, value: u32) -> bool {
    dev.write(reg.into(), &value.to_le_bytes(), mem)
}

/// Program the selected queue with the test rings (QUEUE_SIZE entries at DESC_TABLE,
/// AVAIL_RING, USED_RING) and set it ready.
pub fn program_queue<D: VirtioDevice>(dev: &mut VirtioMmio<D>, mem: &GuestMemoryMmap) {
    program_queue_at(dev, mem, rings(0));
}

/// Program the selected queue with QUEUE_SIZE entries at `(desc, avail, used)` and set it ready.
pub fn program_queue_at<D: VirtioDevice>(dev: &mut VirtioMmio<D>, mem: &GuestMemoryMmap, at: (u64, u64, u64)) {
    let (desc, avail, used) = at;
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_NUM, QUEUE_SIZE.into());
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
    write_reg(dev, mem, VIRTIO_MMIO_QUEUE_READY, 1);
}

/// One descriptor of a chain the test builds: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// Device-readable buffer.
pub fn ro(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: false }
}

/// Device-writable buffer.
pub fn wo(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: true }
}

/// Queue `q`'s rings: (descriptor table, available ring, used ring). Queue 0's are the
/// constants above; the others lie above the buffers.
pub fn rings(q: u16) -> (u64, u64, u64) {
    match q {
        0 => (DESC_TABLE, AVAIL_RING, USED_RING),
        _ => {
            let base = 0x10_0000 + 0x8000 * u64::from(q - 1);
            (base, base + 0x2000, base + 0x3000)
        }
    }
}

/// The guest side: memory, the queues' rings, and the device.
pub struct Driver<D: VirtioDevice> {
    pub dev: VirtioMmio<D>,
    pub mem: GuestMemoryMmap,
    /// Per queue.
    avail_idx: Vec<u16>,
}

impl<D: VirtioDevice> Driver<D> {
    /// Bring `device` up as Linux does: reset, ACKNOWLEDGE, DRIVER, read the features, acknowledge
    /// those in `wanted` that are offered, FEATURES_OK (checked), set up queue 0, DRIVER_OK.
    pub fn new(device: D, wanted: u64) -> Self {
        Self::with_queues(device, wanted, 1)
    }

    /// As [`Driver::new`], setting up queues `0..queues`.
    pub fn with_queues(device: D, wanted: u64, queues: u16) -> Self {
        let mut d = Self { dev: VirtioMmio::new(device).unwrap(), mem: test_memory(), avail_idx: Vec::new() };
        d.handshake_queues(wanted, queues);
        d
    }

    pub fn handshake(&mut self, wanted: u64) {
        self.handshake_queues(wanted, 1);
    }

    pub fn handshake_queues(&mut self, wanted: u64, queues: u16) {
        let (dev, mem) = (&mut self.dev, &self.mem);
        assert_eq!(read_reg(dev, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read_reg(dev, VIRTIO_MMIO_VERSION), 2);
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, 0);
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        write_reg(dev, mem, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let mut offered = u64::from(read_reg(dev, VIRTIO_MMIO_DEVICE_FEATURES)) << 32;
        write_reg(dev, mem, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        offered |= u64::from(read_reg(dev, VIRTIO_MMIO_DEVICE_FEATURES));
        let acked = offered & wanted;
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES, (acked >> 32) as u32);
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES, acked as u32);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, s);
        assert_eq!(read_reg(dev, VIRTIO_MMIO_STATUS), s, "FEATURES_OK refused");

        for q in 0..queues {
            write_reg(dev, mem, VIRTIO_MMIO_QUEUE_SEL, q.into());
            assert_eq!(read_reg(dev, VIRTIO_MMIO_QUEUE_READY), 0);
            assert_eq!(read_reg(dev, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
            program_queue_at(dev, mem, rings(q));
            assert_eq!(read_reg(dev, VIRTIO_MMIO_QUEUE_READY), 1);
        }
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(read_reg(dev, VIRTIO_MMIO_STATUS), s | VIRTIO_CONFIG_S_DRIVER_OK);
        // Fresh rings, as a new driver instance allocates them.
        for q in 0..queues {
            let (_, avail, _) = rings(q);
            self.mem.write_slice(&[0; 0x2000], GuestAddress(avail)).unwrap();
        }
        self.avail_idx = vec![0; queues.into()];
    }

    /// Write descriptor `index` of the table as it is, flags and next included.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.set_desc_of(0, index, addr, len, flags, next);
    }

    /// [`Driver::set_desc`] in queue `q`'s table.
    pub fn set_desc_of(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(rings(q as u16).0 + 16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Write `bufs` as a chain in descriptors `first..`; returns the head index.
    pub fn add_chain(&self, first: u16, bufs: &[Buf]) -> u16 {
        self.add_chain_to(0, first, bufs)
    }

    /// [`Driver::add_chain`] in queue `q`'s table.
    pub fn add_chain_to(&self, q: usize, first: u16, bufs: &[Buf]) -> u16 {
        for (i, b) in bufs.iter().enumerate() {
            let index = first + i as u16;
            let mut flags = if b.writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc_of(q, index, b.addr, b.len, flags, index + 1);
        }
        first
    }

    /// Put `head` in the available ring and publish it.
    pub fn publish(&mut self, head: u16) {
        self.publish_to(0, head);
    }

    /// [`Driver::publish`] in queue `q`.
    pub fn publish_to(&mut self, q: usize, head: u16) {
        let (_, avail, _) = rings(q as u16);
        let slot = avail + 4 + 2 * u64::from(self.avail_idx[q] % QUEUE_SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem.write_obj(self.avail_idx[q], GuestAddress(avail + 2)).unwrap();
    }

    /// Write the available ring's `idx` directly.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem.write_obj(idx, GuestAddress(AVAIL_RING + 2)).unwrap();
    }

    /// `QueueNotify` for `queue`; returns whether the device asks for an interrupt.
    pub fn notify(&mut self, queue: u32) -> bool {
        write_reg(&mut self.dev, &self.mem, VIRTIO_MMIO_QUEUE_NOTIFY, queue)
    }

    /// One request in descriptors 0.., published and notified; returns the interrupt flag.
    pub fn submit(&mut self, bufs: &[Buf]) -> bool {
        let head = self.add_chain(0, bufs);
        self.publish(head);
        self.notify(0)
    }

    /// The used ring's `idx`.
    pub fn used_idx(&self) -> u16 {
        self.used_idx_of(0)
    }

    /// Queue `q`'s used ring `idx`.
    pub fn used_idx_of(&self, q: usize) -> u16 {
        self.mem.read_obj(GuestAddress(rings(q as u16).2 + 2)).unwrap()
    }

    /// Used ring element `n` (counting from 0 since the handshake): (descriptor id, length).
    pub fn used(&self, n: u16) -> (u32, u32) {
        self.used_of(0, n)
    }

    /// [`Driver::used`] of queue `q`.
    pub fn used_of(&self, q: usize, n: u16) -> (u32, u32) {
        let at = rings(q as u16).2 + 4 + 8 * u64::from(n % QUEUE_SIZE);
        (self.mem.read_obj(GuestAddress(at)).unwrap(), self.mem.read_obj(GuestAddress(at + 4)).unwrap())
    }

    /// The last used element, asserting there is exactly `count` of them.
    pub fn last_used(&self, count: u16) -> (u32, u32) {
        assert_eq!(self.used_idx(), count, "used ring index");
        self.used(count - 1)
    }

    pub fn read_byte(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn write_bytes(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}
