//! The virtio-mmio transport, version 2 ("modern", virtio 1.x §4.2.2).
//!
//! [`VirtioMmio`] is the 0x200-byte register window of one device: registers at 0x000-0x0ff
//! (32-bit accesses at 4-byte aligned offsets only), the device's configuration space from 0x100
//! (accesses of 1, 2, 4 or 8 bytes). Anything else reads as zero and is ignored on write, with a
//! log line; nothing panics. The registers are decoded onto [`VirtioCommon`] (the handshake,
//! queues and notifications every transport shares), which the window dereferences to.
//!
//! Interrupts: `InterruptStatus` (bit 0, used buffer; bit 1, configuration change).
//! [`VirtioMmio::write`] returns true when a used-buffer notification is due: with an
//! edge-triggered line (an irqfd, a pulse) the VMM triggers it then. A level-triggered line
//! should follow [`VirtioCommon::interrupt_status`] `!= 0` after every write (the driver clears
//! it through `InterruptACK`).
//!
//! Linux finds the device through ACPI (`_HID` [`VIRTIO_MMIO_ACPI_HID`], with a `Memory32Fixed`
//! window of [`VIRTIO_MMIO_WINDOW`] bytes and an `Interrupt` in `_CRS`), or through
//! `virtio_mmio.device=512@<base>:<irq>` on the command line.

use std::ops::{Deref, DerefMut};

use virtio_bindings::virtio_mmio::*;
use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use super::common::{RingHalf, VirtioCommon, VirtioDevice, VirtioError};

/// Size of one device's MMIO window: registers, then configuration space from 0x100.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x200;
/// ACPI hardware id that Linux's `virtio_mmio` driver matches.
pub const VIRTIO_MMIO_ACPI_HID: &str = "LNRO0005";
/// `MagicValue`: "virt" in little-endian.
pub const VIRTIO_MMIO_MAGIC: u32 = 0x7472_6976;
/// `Version` of the modern (virtio 1.x) register layout.
pub const VIRTIO_MMIO_MODERN: u32 = 2;
/// `VendorID`: "CRSH" in little-endian. Drivers do not look at it.
pub const VIRTIO_MMIO_VENDOR: u32 = u32::from_le_bytes(*b"CRSH");

/// Offset of the device configuration space in the window.
const CONFIG_START: u64 = VIRTIO_MMIO_CONFIG as u64;

/// One virtio device behind its virtio-mmio register window.
pub struct VirtioMmio<D> {
    common: VirtioCommon<D>,
}

impl<D> Deref for VirtioMmio<D> {
    type Target = VirtioCommon<D>;
    fn deref(&self) -> &VirtioCommon<D> {
        &self.common
    }
}

impl<D> DerefMut for VirtioMmio<D> {
    fn deref_mut(&mut self) -> &mut VirtioCommon<D> {
        &mut self.common
    }
}

impl<D: VirtioDevice> VirtioMmio<D> {
    /// Wrap `device`; its queues are created from [`VirtioDevice::queue_max_sizes`].
    pub fn new(device: D) -> Result<Self, VirtioError> {
        Ok(Self { common: VirtioCommon::new(device, "virtio-mmio")? })
    }

    /// A guest read of `data.len()` bytes at `offset` within the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let c = &mut self.common;
        if offset >= CONFIG_START {
            if config_access_ok(offset, data.len()) {
                c.device().read_config(offset - CONFIG_START, data);
            } else {
                log::debug!("virtio-mmio: ignored {}-byte config read at {offset:#x}", data.len());
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!("virtio-mmio: ignored {}-byte register read at {offset:#x}", data.len());
            return;
        }
        let value = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => VIRTIO_MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => VIRTIO_MMIO_MODERN,
            VIRTIO_MMIO_DEVICE_ID => c.device().device_type(),
            VIRTIO_MMIO_VENDOR_ID => VIRTIO_MMIO_VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => c.device_features_word(),
            VIRTIO_MMIO_QUEUE_NUM_MAX => c.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => c.selected_queue().is_some_and(|q| q.ready()).into(),
            VIRTIO_MMIO_INTERRUPT_STATUS => c.interrupt_status(),
            VIRTIO_MMIO_STATUS => c.status(),
            // No shared memory regions: their length reads as -1 (§4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            // The configuration space never changes under the driver.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => {
                log::debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` within the window. Returns true when the device
    /// interrupt must be raised (used buffers after a `QueueNotify`).
    pub fn write<M: GuestMemory>(&mut self, offset: u64, data: &[u8], mem: &M) -> bool {
        let c = &mut self.common;
        if offset >= CONFIG_START {
            if config_access_ok(offset, data.len()) {
                c.device_mut().write_config(offset - CONFIG_START, data);
            } else {
                log::debug!("virtio-mmio: ignored {}-byte config write at {offset:#x}", data.len());
            }
            return false;
        }
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => u32::from_le_bytes(bytes),
            _ => {
                log::debug!("virtio-mmio: ignored {}-byte register write at {offset:#x}", data.len());
                return false;
            }
        };
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => c.select_device_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => c.select_driver_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES => c.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => c.select_queue(value),
            VIRTIO_MMIO_QUEUE_NUM => c.write_queue_size(value),
            VIRTIO_MMIO_QUEUE_READY => c.write_queue_ready(value, mem),
            VIRTIO_MMIO_QUEUE_DESC_LOW => c.write_ring_address(RingHalf::DescLow, value),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => c.write_ring_address(RingHalf::DescHigh, value),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => c.write_ring_address(RingHalf::DriverLow, value),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => c.write_ring_address(RingHalf::DriverHigh, value),
            VIRTIO_MMIO_QUEUE_USED_LOW => c.write_ring_address(RingHalf::DeviceLow, value),
            VIRTIO_MMIO_QUEUE_USED_HIGH => c.write_ring_address(RingHalf::DeviceHigh, value),
            VIRTIO_MMIO_QUEUE_NOTIFY => return c.notify_queue(value as usize, mem),
            VIRTIO_MMIO_INTERRUPT_ACK => c.ack_interrupt(value),
            VIRTIO_MMIO_STATUS => c.write_status(value),
            // There are no shared memory regions to select.
            VIRTIO_MMIO_SHM_SEL => {}
            _ => log::debug!("virtio-mmio: write of {value:#x} to read-only or unknown register {offset:#x}"),
        }
        false
    }
}

fn config_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8) && offset.checked_add(len as u64).is_some_and(|end| end <= VIRTIO_MMIO_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::{
        program_queue, read_reg, test_memory, write_reg, AVAIL_RING, DESC_TABLE, QUEUE_SIZE, USED_RING, VERSION_1,
    };
    use virtio_bindings::virtio_config::*;
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;

    /// A device with two queues that counts what the transport calls.
    #[derive(Default)]
    struct Fake {
        activated: Option<u64>,
        resets: u32,
        processed: Vec<usize>,
        /// What `process_queue` returns.
        raise: bool,
        config: [u8; 8],
    }

    const FAKE_FEATURES: u64 = VERSION_1 | 1 << 3 | 1 << 40;

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            FAKE_FEATURES
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[QUEUE_SIZE, 16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = self.config.get_mut(offset as usize + i) {
                    *c = *b;
                }
            }
        }
        fn activate(&mut self, acked_features: u64) {
            self.activated = Some(acked_features);
        }
        fn process_queue<M: GuestMemory>(&mut self, index: usize, _queue: &mut Queue, _mem: &M) -> bool {
            self.processed.push(index);
            self.raise
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = None;
        }
    }

    fn fake() -> VirtioMmio<Fake> {
        VirtioMmio::new(Fake { config: [1, 2, 3, 4, 5, 6, 7, 8], ..Fake::default() }).unwrap()
    }

    fn ack_features(dev: &mut VirtioMmio<Fake>, mem: &GuestMemoryMmap, features: u64) {
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write_reg(dev, mem, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK: ready for queue setup.
    fn to_features_ok(dev: &mut VirtioMmio<Fake>, mem: &GuestMemoryMmap) {
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        ack_features(dev, mem, VERSION_1 | 1 << 3);
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, 0xb);
        assert_eq!(read_reg(dev, VIRTIO_MMIO_STATUS), 0xb);
    }

    fn setup_queue0(dev: &mut VirtioMmio<Fake>, mem: &GuestMemoryMmap) {
        write_reg(dev, mem, VIRTIO_MMIO_QUEUE_SEL, 0);
        program_queue(dev, mem);
    }

    fn live(dev: &mut VirtioMmio<Fake>, mem: &GuestMemoryMmap) {
        to_features_ok(dev, mem);
        setup_queue0(dev, mem);
        write_reg(dev, mem, VIRTIO_MMIO_STATUS, 0xf);
        assert_eq!(read_reg(dev, VIRTIO_MMIO_STATUS), 0xf);
    }

    #[test]
    fn identification_registers() {
        let mut dev = fake();
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_VENDOR_ID), u32::from_le_bytes(*b"CRSH"));
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_CONFIG_GENERATION), 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
    }

    #[test]
    fn device_features_by_word() {
        let mem = test_memory();
        let mut dev = fake();
        write_reg(&mut dev, &mem, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 3);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_DEVICE_FEATURES), 1 | 1 << 8);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_ok_accepts_a_subset_with_version_1() {
        let mem = test_memory();
        let mut dev = fake();
        to_features_ok(&mut dev, &mem);
        assert_eq!(dev.acked_features(), VERSION_1 | 1 << 3);
    }

    #[test]
    fn features_ok_refuses_features_not_offered() {
        let mem = test_memory();
        let mut dev = fake();
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 3);
        ack_features(&mut dev, &mem, VERSION_1 | 1 << 4);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0xb);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 3, "FEATURES_OK must stay clear");
        // Nor can the driver go on to DRIVER_OK.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0x7);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 3);
        assert_eq!(dev.device().activated, None);
        // A word the device has no features in.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 5);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        ack_features(&mut dev, &mem, VERSION_1);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0xb);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0xb);
    }

    #[test]
    fn features_ok_requires_version_1() {
        let mem = test_memory();
        let mut dev = fake();
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 3);
        ack_features(&mut dev, &mem, 1 << 3);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0xb);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 3);
    }

    #[test]
    fn driver_features_are_frozen_after_features_ok() {
        let mem = test_memory();
        let mut dev = fake();
        to_features_ok(&mut dev, &mem);
        ack_features(&mut dev, &mem, VERSION_1 | 1 << 40);
        assert_eq!(dev.acked_features(), VERSION_1 | 1 << 3);
    }

    #[test]
    fn queue_setup_and_driver_ok_activate() {
        let mem = test_memory();
        let mut dev = fake();
        to_features_ok(&mut dev, &mem);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 0);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no queue 2");
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 0);

        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_SEL, 0);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_NUM, 128);
        // Not a power of two, too big: ignored.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_NUM, 100);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_NUM, 512);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_NUM, 0x10080);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC_TABLE as u32);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL_RING as u32);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_USED_LOW, USED_RING as u32);
        // Misaligned used ring: refused.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_USED_LOW, USED_RING as u32 + 2);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 1);
        let q = dev.queue(0).unwrap();
        assert_eq!((q.size(), q.desc_table(), q.avail_ring(), q.used_ring()), (128, DESC_TABLE, AVAIL_RING, USED_RING));
        // A ready queue cannot be reconfigured.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_NUM, 64);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
        let q = dev.queue(0).unwrap();
        assert_eq!((q.size(), q.desc_table()), (128, DESC_TABLE));

        assert_eq!(dev.device().activated, None);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0xf);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0xf);
        assert_eq!(dev.device().activated, Some(VERSION_1 | 1 << 3));
        // Live: queue registers are frozen, even QueueReady.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 1);
    }

    #[test]
    fn queue_registers_need_features_ok() {
        let mem = test_memory();
        let mut dev = fake();
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 3);
        setup_queue0(&mut dev, &mem);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(dev.queue(0).unwrap().desc_table(), 0);
    }

    #[test]
    fn queue_ready_refused_for_rings_outside_memory() {
        let mem = test_memory();
        let mut dev = fake();
        to_features_ok(&mut dev, &mem);
        setup_queue0(&mut dev, &mem);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_SEL, 1);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_USED_LOW, 0);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_USED_HIGH, 0x100);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 0);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_READY, 7);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 0);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 1);
    }

    #[test]
    fn status_bits_cannot_be_cleared_without_reset() {
        let mem = test_memory();
        let mut dev = fake();
        to_features_ok(&mut dev, &mem);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0x3);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0xb);
        // FAILED may be added; NEEDS_RESET is the device's to set.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0xb | VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0xb);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0x8b);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0x8b);
    }

    #[test]
    fn notify_processes_ready_queue_and_raises_interrupt() {
        let mem = test_memory();
        let mut dev = fake();
        live(&mut dev, &mem);
        dev.device_mut().raise = true;
        assert!(dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes(), &mem));
        assert_eq!(dev.device().processed, [0]);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        assert_eq!(dev.interrupt_status(), 1);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(dev.interrupt_status(), 0);

        // Nothing used: no interrupt.
        dev.device_mut().raise = false;
        assert!(!dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes(), &mem));
        assert_eq!(dev.device().processed, [0, 0]);
        assert_eq!(dev.interrupt_status(), 0);
    }

    #[test]
    fn notify_ignored_unless_live_ready_and_existing() {
        let mem = test_memory();
        let mut dev = fake();
        dev.device_mut().raise = true;
        // Before anything.
        assert!(!dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes(), &mem));
        // Queue ready but no DRIVER_OK yet.
        to_features_ok(&mut dev, &mem);
        setup_queue0(&mut dev, &mem);
        assert!(!dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes(), &mem));
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0xf);
        // Queue 1 exists but is not ready; queues 2 and 0xffff do not exist.
        for q in [1u32, 2, 0xffff, u32::MAX] {
            assert!(!dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &q.to_le_bytes(), &mem));
        }
        assert!(dev.device().processed.is_empty());
        assert_eq!(dev.interrupt_status(), 0);
        // After FAILED, nothing is processed either.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0x8f);
        assert!(!dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes(), &mem));
        assert!(dev.device().processed.is_empty());
    }

    #[test]
    fn reset_forgets_everything() {
        let mem = test_memory();
        let mut dev = fake();
        live(&mut dev, &mem);
        dev.device_mut().raise = true;
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(dev.interrupt_status(), 1);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(dev.interrupt_status(), 0);
        assert_eq!(dev.acked_features(), 0);
        assert_eq!(dev.device().resets, 1);
        assert_eq!(dev.device().activated, None);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_READY), 0);
        let q = dev.queue(0).unwrap();
        assert_eq!((q.size(), q.next_avail(), q.next_used()), (QUEUE_SIZE, 0, 0));
        // Linux's teardown after the reset: QueueReady = 0 is harmless.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_QUEUE_READY, 0);
        assert!(!dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes(), &mem));
        assert_eq!(dev.device().processed, [0]);
        // And the device can be brought up again.
        live(&mut dev, &mem);
        assert!(dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes(), &mem));
        assert_eq!(dev.device().processed, [0, 0]);
    }

    #[test]
    fn config_space_accesses() {
        let mem = test_memory();
        let mut dev = fake();
        let mut b = [0u8; 1];
        dev.read(0x101, &mut b);
        assert_eq!(b, [2]);
        let mut w = [0u8; 2];
        dev.read(0x102, &mut w);
        assert_eq!(w, [3, 4]);
        let mut d = [0u8; 4];
        dev.read(0x104, &mut d);
        assert_eq!(d, [5, 6, 7, 8]);
        let mut q = [0u8; 8];
        dev.read(0x100, &mut q);
        assert_eq!(q, [1, 2, 3, 4, 5, 6, 7, 8]);
        // Past the device's config: zeros. Odd sizes and past the window: zeros.
        dev.read(0x108, &mut d);
        assert_eq!(d, [0; 4]);
        let mut three = [0xffu8; 3];
        dev.read(0x100, &mut three);
        assert_eq!(three, [0; 3]);
        d = [0xff; 4];
        dev.read(0x1fe, &mut d);
        assert_eq!(d, [0; 4]);
        d = [0xff; 4];
        dev.read(0x400, &mut d);
        assert_eq!(d, [0; 4]);
        assert!(!dev.write(0x100, &[9], &mem));
        assert!(!dev.write(0x100, &[9, 9, 9], &mem));
        assert!(!dev.write(u64::MAX, &[9], &mem));
        dev.read(0x100, &mut q);
        assert_eq!(q, [9, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn odd_register_accesses_are_ignored() {
        let mem = test_memory();
        let mut dev = fake();
        let mut w = [0xffu8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [0, 0]);
        let mut d = [0xffu8; 4];
        dev.read(2, &mut d);
        assert_eq!(d, [0; 4]);
        let mut q = [0xffu8; 8];
        dev.read(0, &mut q);
        assert_eq!(q, [0; 8]);
        let mut empty = [0u8; 0];
        dev.read(0, &mut empty);
        // Write-only and unknown registers read 0.
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY), 0);
        assert_eq!(read_reg(&mut dev, 0xf0), 0);
        // A 2-byte or unaligned write to Status does nothing.
        assert!(!dev.write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0], &mem));
        assert!(!dev.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0], &mem));
        assert!(!dev.write(u64::from(VIRTIO_MMIO_STATUS), &[], &mem));
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_STATUS), 0);
        // Writes to read-only registers change nothing.
        write_reg(&mut dev, &mem, VIRTIO_MMIO_MAGIC_VALUE, 0);
        write_reg(&mut dev, &mem, VIRTIO_MMIO_INTERRUPT_STATUS, 1);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
        assert_eq!(read_reg(&mut dev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn invalid_device_models_are_refused() {
        struct Bad(u32, [u16; 1]);
        impl VirtioDevice for Bad {
            fn device_type(&self) -> u32 {
                self.0
            }
            fn features(&self) -> u64 {
                VERSION_1
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &self.1
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn write_config(&mut self, _: u64, _: &[u8]) {}
            fn activate(&mut self, _: u64) {}
            fn process_queue<M: GuestMemory>(&mut self, _: usize, _: &mut Queue, _: &M) -> bool {
                false
            }
            fn reset(&mut self) {}
        }
        assert_eq!(VirtioMmio::new(Bad(0, [16])).err(), Some(VirtioError::InvalidDeviceType));
        assert_eq!(VirtioMmio::new(Bad(2, [100])).err(), Some(VirtioError::InvalidQueueSize { index: 0, size: 100 }));
        assert_eq!(VirtioMmio::new(Bad(2, [0])).err(), Some(VirtioError::InvalidQueueSize { index: 0, size: 0 }));
        assert!(VirtioMmio::new(Bad(2, [256])).is_ok());
    }
}
