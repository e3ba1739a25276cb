//! The virtio-mmio transport, version 2 ("modern", virtio 1.x §4.2.2).
//!
//! [`VirtioMmio`] is the 0x200-byte register window of one device: registers at 0x000-0x0ff
//! (32-bit accesses at 4-byte aligned offsets only), the device's configuration space from 0x100
//! (accesses of 1, 2, 4 or 8 bytes). Anything else reads as zero and is ignored on write, with a
//! log line; nothing panics.
//!
//! The handshake follows the specification (§3.1.1): writing 0 to `Status` resets the device;
//! `FEATURES_OK` is only accepted when the driver acknowledged a subset of the offered features
//! that includes `VIRTIO_F_VERSION_1` (otherwise the bit stays clear, which tells the driver);
//! `DRIVER_OK` needs `FEATURES_OK` and activates the device. Queue registers are writable between
//! `FEATURES_OK` and `DRIVER_OK`, for a queue that is not ready yet. `QueueReady = 1` is refused
//! (reads back 0) when the rings it describes are not inside guest memory. `QueueNotify` runs the
//! device's queue processing synchronously when the device is live (`DRIVER_OK`, not `FAILED`)
//! and the queue is ready.
//!
//! Interrupts: the transport keeps `InterruptStatus` (bit 0, used buffer; bit 1, configuration
//! change, never set here). [`VirtioMmio::write`] returns true when a used-buffer notification is
//! due: with an edge-triggered line (an irqfd, a pulse) the VMM triggers it then. A
//! level-triggered line should follow [`VirtioMmio::interrupt_status`] `!= 0` after every write
//! (the driver clears it through `InterruptACK`).
//!
//! Linux finds the device through ACPI (`_HID` [`VIRTIO_MMIO_ACPI_HID`], with a `Memory32Fixed`
//! window of [`VIRTIO_MMIO_WINDOW`] bytes and an `Interrupt` in `_CRS`), or through
//! `virtio_mmio.device=512@<base>:<irq>` on the command line.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::GuestWarnings;

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
/// `Status` bits a driver may set.
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_FAILED;

/// A virtio device model, as the transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device id (`VIRTIO_ID_BLOCK` = 2, ...). Must not be 0 (Linux ignores id 0).
    fn device_type(&self) -> u32;
    /// Offered feature bits, including `VIRTIO_F_VERSION_1` (bit 32).
    fn features(&self) -> u64;
    /// Maximum size of each queue (powers of two, at most 32768); the length is the number of
    /// queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Fill `data` from configuration space at `offset` (zeros past its end).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set `DRIVER_OK` having acknowledged `acked_features`.
    fn activate(&mut self, acked_features: u64);
    /// Process queue `index` after a notification (the queue is ready and its rings are inside
    /// `mem`). Returns true when used buffers were added and the driver must be interrupted.
    fn process_queue<M: GuestMemory>(&mut self, index: usize, queue: &mut Queue, mem: &M) -> bool;
    /// The driver reset the device (wrote 0 to `Status`): forget everything negotiated.
    fn reset(&mut self);
}

/// What [`VirtioMmio::process_with`]'s work says about the driver's interrupt.
pub trait NeedsInterrupt {
    fn needs_interrupt(&self) -> bool;
}

impl NeedsInterrupt for bool {
    fn needs_interrupt(&self) -> bool {
        *self
    }
}

/// Errors building a [`VirtioMmio`]: the device model, not the guest, is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtioMmioError {
    #[error("virtio queue {index}: maximum size {size} is not a power of two in 1..=32768")]
    InvalidQueueSize { index: usize, size: u16 },
    #[error("virtio device type 0 is reserved")]
    InvalidDeviceType,
}

/// One virtio device behind its virtio-mmio register window.
pub struct VirtioMmio<D> {
    device: D,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    warnings: GuestWarnings,
}

impl<D: VirtioDevice> VirtioMmio<D> {
    /// Wrap `device`; its queues are created from [`VirtioDevice::queue_max_sizes`].
    pub fn new(device: D) -> Result<Self, VirtioMmioError> {
        if device.device_type() == 0 {
            return Err(VirtioMmioError::InvalidDeviceType);
        }
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(index, &size)| Queue::new(size).map_err(|_| VirtioMmioError::InvalidQueueSize { index, size }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            warnings: GuestWarnings::default(),
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register (`VIRTIO_CONFIG_S_*` bits).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver acknowledged (meaningful once `FEATURES_OK` is set).
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// `InterruptStatus`: bit 0 = used buffer notification pending. Nonzero means a
    /// level-triggered interrupt line should be asserted.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Queue `index`, if the device has it.
    pub fn queue(&self, index: usize) -> Option<&Queue> {
        self.queues.get(index)
    }

    /// Reset the device as a driver write of 0 to `Status` does (also usable on a VM reset).
    pub fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    /// A guest read of `data.len()` bytes at `offset` within the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_START {
            if self.config_access_ok(offset, data.len()) {
                self.device.read_config(offset - CONFIG_START, data);
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
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VIRTIO_MMIO_VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().is_some_and(|q| q.ready()).into(),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
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
        if offset >= CONFIG_START {
            if self.config_access_ok(offset, data.len()) {
                self.device.write_config(offset - CONFIG_START, data);
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
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => self.configure_queue("QueueNum", |q| {
                let size = u16::try_from(value).map_err(|_| ())?;
                q.try_set_size(size).map_err(|_| ())
            }),
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value, mem),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.configure_queue("QueueDescLow", |q| {
                q.try_set_desc_table_address(with_low(q.desc_table(), value)).map_err(|_| ())
            }),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.configure_queue("QueueDescHigh", |q| {
                q.try_set_desc_table_address(with_high(q.desc_table(), value)).map_err(|_| ())
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.configure_queue("QueueDriverLow", |q| {
                q.try_set_avail_ring_address(with_low(q.avail_ring(), value)).map_err(|_| ())
            }),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.configure_queue("QueueDriverHigh", |q| {
                q.try_set_avail_ring_address(with_high(q.avail_ring(), value)).map_err(|_| ())
            }),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.configure_queue("QueueDeviceLow", |q| {
                q.try_set_used_ring_address(with_low(q.used_ring(), value)).map_err(|_| ())
            }),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.configure_queue("QueueDeviceHigh", |q| {
                q.try_set_used_ring_address(with_high(q.used_ring(), value)).map_err(|_| ())
            }),
            VIRTIO_MMIO_QUEUE_NOTIFY => return self.notify(value, mem),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !value,
            VIRTIO_MMIO_STATUS => self.write_status(value),
            // There are no shared memory regions to select.
            VIRTIO_MMIO_SHM_SEL => {}
            _ => log::debug!("virtio-mmio: write of {value:#x} to read-only or unknown register {offset:#x}"),
        }
        false
    }

    fn config_access_ok(&self, offset: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4 | 8) && offset.checked_add(len as u64).is_some_and(|end| end <= VIRTIO_MMIO_WINDOW)
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK) != 0 {
            log::log!(self.warnings.level(), "virtio-mmio: DriverFeatures written after FEATURES_OK, ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            sel if value != 0 => {
                log::log!(self.warnings.level(), "virtio-mmio: features {value:#x} acknowledged in word {sel}, refused")
            }
            _ => {}
        }
    }

    /// Whether the driver may configure queues now: after `FEATURES_OK`, before `DRIVER_OK`.
    fn queue_setup_allowed(&self, register: &str) -> bool {
        let live = self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) != 0;
        let allowed = self.has(VIRTIO_CONFIG_S_FEATURES_OK) && !live;
        if !allowed {
            // Linux writes QueueSel/QueueReady while tearing queues down after a reset: no warning.
            log::debug!("virtio-mmio: {register} written in status {:#x}, ignored", self.status);
        }
        allowed
    }

    /// Apply `f` (which refuses invalid values) to the selected queue, if queue configuration is
    /// allowed now and the queue exists and is not ready.
    fn configure_queue(&mut self, register: &str, f: impl FnOnce(&mut Queue) -> Result<(), ()>) {
        if !self.queue_setup_allowed(register) {
            return;
        }
        let sel = self.queue_sel;
        let why = match self.queues.get_mut(sel as usize) {
            None => "the queue does not exist",
            Some(q) if q.ready() => "the queue is ready",
            Some(q) => match f(q) {
                Ok(()) => return,
                Err(()) => "invalid value (size: a power of two up to QueueNumMax; rings: aligned)",
            },
        };
        log::log!(self.warnings.level(), "virtio-mmio: {register} write for queue {sel} ignored: {why}");
    }

    fn write_queue_ready<M: GuestMemory>(&mut self, value: u32, mem: &M) {
        if !self.queue_setup_allowed("QueueReady") {
            return;
        }
        let sel = self.queue_sel;
        let why = match (self.queues.get_mut(sel as usize), value) {
            (None, _) => "the queue does not exist".to_string(),
            (Some(q), 0) => return q.set_ready(false),
            (Some(q), 1) if rings_inside(q, mem) => return q.set_ready(true),
            (Some(q), 1) => format!(
                "its rings (descriptors {:#x}, available {:#x}, used {:#x}, size {}) are not inside guest memory",
                q.desc_table(),
                q.avail_ring(),
                q.used_ring(),
                q.size()
            ),
            (Some(_), _) => format!("{value} is neither 0 nor 1"),
        };
        log::log!(self.warnings.level(), "virtio-mmio: QueueReady for queue {sel} refused: {why}");
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::log!(
                self.warnings.level(),
                "virtio-mmio: status {value:#x} clears bits of {old:#x} without a reset, ignored"
            );
            return;
        }
        let mut new = value & DRIVER_STATUS_BITS | old & VIRTIO_CONFIG_S_NEEDS_RESET;
        let added = new & !old;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let refused = self.driver_features & !offered;
            if refused != 0 || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                log::log!(
                    self.warnings.level(),
                    "virtio-mmio: FEATURES_OK refused: acknowledged {:#x}, offered {offered:#x} (not offered: \
                     {refused:#x}; VERSION_1 is required)",
                    self.driver_features
                );
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if new & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                log::log!(self.warnings.level(), "virtio-mmio: DRIVER_OK without FEATURES_OK, refused");
                new &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else {
                let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
                for q in &mut self.queues {
                    q.set_event_idx(event_idx);
                }
                self.device.activate(self.driver_features);
            }
        }
        self.status = new;
    }

    /// Work on queue `index` off the register window: an I/O thread's way in (a queue whose
    /// notifications come by ioeventfd, frames arriving from outside). `f` gets the device, the
    /// queue and `mem` when the device is live and the queue ready, and returns whether used
    /// buffers were added and the driver must be interrupted (the interrupt status is set).
    /// `None` when it is not live or not ready.
    pub fn process_with<M: GuestMemory, R>(
        &mut self,
        index: usize,
        mem: &M,
        f: impl FnOnce(&mut D, &mut Queue, &M) -> R,
    ) -> Option<R>
    where
        R: NeedsInterrupt,
    {
        if !self.live() || !self.queues.get(index).is_some_and(|q| q.ready()) {
            return None;
        }
        let r = f(&mut self.device, &mut self.queues[index], mem);
        if r.needs_interrupt() {
            self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
        }
        Some(r)
    }

    /// What a `QueueNotify` write of `index` does, for a queue whose notifications come by
    /// ioeventfd: true when the driver must be interrupted.
    pub fn notify_queue<M: GuestMemory>(&mut self, index: usize, mem: &M) -> bool {
        u32::try_from(index).is_ok_and(|i| self.notify(i, mem))
    }

    /// The configuration changed (link state, ...): the interrupt status says so. True when
    /// the driver is live and must be interrupted.
    pub fn config_changed(&mut self) -> bool {
        if !self.live() {
            return false;
        }
        self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
        true
    }

    fn live(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_DRIVER_OK) && self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) == 0
    }

    fn notify<M: GuestMemory>(&mut self, value: u32, mem: &M) -> bool {
        let live = self.live();
        let index = value as usize;
        let ready = self.queues.get(index).is_some_and(|q| q.ready());
        if !live || !ready {
            log::log!(
                self.warnings.level(),
                "virtio-mmio: notify for queue {value} ignored (status {:#x}, {} queues, ready: {ready})",
                self.status,
                self.queues.len()
            );
            return false;
        }
        if self.device.process_queue(index, &mut self.queues[index], mem) {
            self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
            true
        } else {
            false
        }
    }
}

fn with_low(address: u64, low: u32) -> GuestAddress {
    GuestAddress(address & !0xffff_ffff | u64::from(low))
}

fn with_high(address: u64, high: u32) -> GuestAddress {
    GuestAddress(address & 0xffff_ffff | u64::from(high) << 32)
}

/// The split-ring areas of `q` (virtio 1.x §2.7) all lie in guest memory. (`Queue::is_valid`
/// checks the same but logs every failure at error level, which a guest could use to flood the
/// log.)
fn rings_inside<M: GuestMemory>(q: &Queue, mem: &M) -> bool {
    let size = usize::from(q.size());
    [(q.desc_table(), 16 * size), (q.avail_ring(), 6 + 2 * size), (q.used_ring(), 6 + 8 * size)]
        .into_iter()
        .all(|(start, len)| mem.check_range(GuestAddress(start), len, Permissions::ReadWrite))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::{
        program_queue, read_reg, test_memory, write_reg, AVAIL_RING, DESC_TABLE, QUEUE_SIZE, USED_RING, VERSION_1,
    };
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
        assert_eq!(VirtioMmio::new(Bad(0, [16])).err(), Some(VirtioMmioError::InvalidDeviceType));
        assert_eq!(
            VirtioMmio::new(Bad(2, [100])).err(),
            Some(VirtioMmioError::InvalidQueueSize { index: 0, size: 100 })
        );
        assert_eq!(VirtioMmio::new(Bad(2, [0])).err(), Some(VirtioMmioError::InvalidQueueSize { index: 0, size: 0 }));
        assert!(VirtioMmio::new(Bad(2, [256])).is_ok());
    }
}
