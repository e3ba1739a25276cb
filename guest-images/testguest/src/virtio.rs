//! A small virtio-mmio driver (virtio 1.x §4.2.2, split virtqueues §2.7), written from the
//! specification and on purpose not sharing crashvmm's `devices` code: enough to bring a
//! device up the way Linux's `virtio_mmio` does, hand it descriptor chains (well-formed or
//! hostile) and see what comes back in the used ring.
//!
//! Devices are found by probing crashvmm's windows (0xd0000000 + n * 0x1000, identity-mapped);
//! queue memory is fixed guest-physical RAM at [`QUEUE_MEMORY`] (the scenarios using this run
//! with at least 64 MiB).

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::time::wait_until;

const WINDOWS: u64 = 0xd000_0000;
const WINDOW_STRIDE: u64 = 0x1000;
const MAX_WINDOWS: u64 = 8;

const MAGIC_VALUE: u64 = 0x00;
const VERSION: u64 = 0x04;
const DEVICE_ID: u64 = 0x08;
const DEVICE_FEATURES: u64 = 0x10;
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM_MAX: u64 = 0x34;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const QUEUE_NOTIFY: u64 = 0x50;
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_AVAIL_LOW: u64 = 0x90;
const QUEUE_USED_LOW: u64 = 0xa0;
const CONFIG: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;

pub const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// Where the queues' rings go: 64 KiB per queue, above the crash kernel's default place.
pub const QUEUE_MEMORY: u64 = 0x0280_0000;
const QUEUE_SPAN: u64 = 0x1_0000;
/// Entries per queue this driver uses.
pub const QUEUE_SIZE: u16 = 64;

/// One virtio-mmio window.
#[derive(Clone, Copy)]
pub struct Device {
    base: u64,
}

impl Device {
    /// The first window holding a device of type `id`.
    pub fn find(id: u32) -> Option<Device> {
        (0..MAX_WINDOWS)
            .map(|i| Device { base: WINDOWS + i * WINDOW_STRIDE })
            .find(|d| d.read(MAGIC_VALUE) == 0x7472_6976 && d.read(VERSION) == 2 && d.read(DEVICE_ID) == id)
    }

    pub fn read(&self, reg: u64) -> u32 {
        // SAFETY: a register of a virtio-mmio window, identity-mapped MMIO.
        unsafe { read_volatile((self.base + reg) as *const u32) }
    }

    pub fn write(&self, reg: u64, value: u32) {
        // SAFETY: as in `read`.
        unsafe { write_volatile((self.base + reg) as *mut u32, value) }
    }

    /// Configuration space byte `offset`, read as Linux reads a MAC address.
    pub fn config_byte(&self, offset: u64) -> u8 {
        // SAFETY: as in `read`; one byte.
        unsafe { read_volatile((self.base + CONFIG + offset) as *const u8) }
    }

    /// Reset, ACKNOWLEDGE, DRIVER, the offered features in `wanted`, FEATURES_OK; the
    /// features acknowledged, or `None` when the device refused them.
    pub fn negotiate(&self, wanted: u64) -> Option<u64> {
        self.write(STATUS, 0);
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 1);
        let mut offered = u64::from(self.read(DEVICE_FEATURES)) << 32;
        self.write(DEVICE_FEATURES_SEL, 0);
        offered |= u64::from(self.read(DEVICE_FEATURES));
        let acked = offered & wanted;
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (acked >> 32) as u32);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, acked as u32);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(STATUS, s);
        (self.read(STATUS) & STATUS_FEATURES_OK != 0).then_some(acked)
    }

    /// Set up queue `index` (its rings in `QUEUE_MEMORY`, slot `slot`); `None` when the
    /// device has no such queue or refuses it.
    pub fn queue(&self, index: u32, slot: u64) -> Option<Queue> {
        self.write(QUEUE_SEL, index);
        if self.read(QUEUE_NUM_MAX) < u32::from(QUEUE_SIZE) || self.read(QUEUE_READY) != 0 {
            return None;
        }
        let base = QUEUE_MEMORY + slot * QUEUE_SPAN;
        // SAFETY: QUEUE_SPAN bytes of RAM this driver owns.
        unsafe { core::ptr::write_bytes(base as *mut u8, 0, QUEUE_SPAN as usize) };
        let q = Queue {
            dev: *self,
            index,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            used_seen: 0,
        };
        self.write(QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (low, addr) in [(QUEUE_DESC_LOW, q.desc), (QUEUE_AVAIL_LOW, q.avail), (QUEUE_USED_LOW, q.used)] {
            self.write(low, addr as u32);
            self.write(low + 4, (addr >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
        (self.read(QUEUE_READY) == 1).then_some(q)
    }

    pub fn driver_ok(&self) {
        self.write(STATUS, self.read(STATUS) | STATUS_DRIVER_OK);
    }

    /// Acknowledge whatever interrupt is pending (the driver polls the used rings).
    pub fn ack_interrupts(&self) -> u32 {
        let s = self.read(INTERRUPT_STATUS);
        self.write(INTERRUPT_ACK, s);
        s
    }
}

/// One descriptor as the driver writes it.
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// A split virtqueue this driver set up.
pub struct Queue {
    dev: Device,
    index: u32,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
}

impl Queue {
    /// Write descriptor `i` as it is (flags and next included: hostile chains too).
    pub fn set_desc(&self, i: u16, d: Desc) {
        let at = self.desc + 16 * u64::from(i % QUEUE_SIZE);
        // SAFETY: the descriptor table is RAM this driver owns.
        unsafe {
            write_volatile(at as *mut u64, d.addr);
            write_volatile((at + 8) as *mut u32, d.len);
            write_volatile((at + 12) as *mut u16, d.flags);
            write_volatile((at + 14) as *mut u16, d.next);
        }
    }

    /// Write `bufs` as a chain in descriptors `first..` (NEXT set on all but the last).
    pub fn chain(&self, first: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = i as u16;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if usize::from(i) + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.set_desc(first + i, Desc { addr, len, flags, next: first + i + 1 });
        }
        first
    }

    /// Put `head` in the available ring (any value: hostile heads too) and publish it.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: the available ring is RAM this driver owns.
        unsafe {
            write_volatile(slot as *mut u16, head);
            fence(Ordering::SeqCst);
            write_volatile((self.avail + 2) as *mut u16, self.avail_idx);
        }
        fence(Ordering::SeqCst);
    }

    pub fn notify(&self) {
        self.dev.write(QUEUE_NOTIFY, self.index);
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        // SAFETY: the used ring is RAM this driver owns (the device writes it).
        unsafe { read_volatile((self.used + 2) as *const u16) }
    }

    /// The next used element not yet seen, waiting up to `ms`: (descriptor id, length).
    pub fn next_used(&mut self, ms: u64) -> Option<(u32, u32)> {
        if !wait_until(ms, || self.used_idx() != self.used_seen) {
            return None;
        }
        fence(Ordering::SeqCst);
        let at = self.used + 4 + 8 * u64::from(self.used_seen % QUEUE_SIZE);
        self.used_seen = self.used_seen.wrapping_add(1);
        self.dev.ack_interrupts();
        // SAFETY: as in `used_idx`.
        Some(unsafe { (read_volatile(at as *const u32), read_volatile((at + 4) as *const u32)) })
    }

    /// Used elements not yet seen.
    pub fn pending_used(&self) -> u16 {
        self.used_idx().wrapping_sub(self.used_seen)
    }
}
