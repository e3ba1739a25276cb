//! What every virtio transport shares (virtio 1.x §3, §4.1.4.3, §4.2.2): the device model, its
//! split virtqueues (`virtio_queue::Queue`), feature negotiation, the status handshake, queue
//! setup, notifications and the interrupt status. [`VirtioCommon`] holds them; the transports
//! ([`super::VirtioMmio`], [`super::VirtioPci`]) only decode their registers onto it.
//!
//! The handshake follows the specification (§3.1.1): writing 0 to the status resets the device;
//! `FEATURES_OK` is only accepted when the driver acknowledged a subset of the offered features
//! that includes `VIRTIO_F_VERSION_1` (otherwise the bit stays clear, which tells the driver);
//! `DRIVER_OK` needs `FEATURES_OK` and activates the device. Queue registers are writable between
//! `FEATURES_OK` and `DRIVER_OK`, for a queue that is not ready yet. Making a queue ready is
//! refused (it reads back 0) when the rings it describes are not inside guest memory. A queue
//! notification runs the device's queue processing synchronously when the device is live
//! (`DRIVER_OK`, not `FAILED`) and the queue is ready.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::GuestWarnings;

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

/// What [`VirtioCommon::process_with`]'s work says about the driver's interrupt.
pub trait NeedsInterrupt {
    fn needs_interrupt(&self) -> bool;
}

impl NeedsInterrupt for bool {
    fn needs_interrupt(&self) -> bool {
        *self
    }
}

/// Errors building a transport: the device model, not the guest, is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtioError {
    #[error("virtio queue {index}: maximum size {size} is not a power of two in 1..=32768")]
    InvalidQueueSize { index: usize, size: u16 },
    #[error("virtio device type 0 is reserved")]
    InvalidDeviceType,
    #[error("{0} virtio queues need more MSI-X vectors than the transport has room for")]
    TooManyQueues(usize),
}

/// The rings of one queue, as a driver programs them (each address in two 32-bit halves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingHalf {
    DescLow,
    DescHigh,
    DriverLow,
    DriverHigh,
    DeviceLow,
    DeviceHigh,
}

/// One virtio device and the state its transport keeps for it.
pub struct VirtioCommon<D> {
    device: D,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    /// The transport's name, for log lines ("virtio-mmio", "virtio-pci").
    transport: &'static str,
    warnings: GuestWarnings,
}

impl<D: VirtioDevice> VirtioCommon<D> {
    /// Wrap `device` for `transport`; its queues are created from
    /// [`VirtioDevice::queue_max_sizes`].
    pub fn new(device: D, transport: &'static str) -> Result<Self, VirtioError> {
        if device.device_type() == 0 {
            return Err(VirtioError::InvalidDeviceType);
        }
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(index, &size)| Queue::new(size).map_err(|_| VirtioError::InvalidQueueSize { index, size }))
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
            transport,
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

    /// The interrupt status (virtio-mmio's `InterruptStatus`, virtio-pci's ISR): bit 0 = used
    /// buffer notification pending, bit 1 = configuration change. Nonzero means a
    /// level-triggered interrupt line should be asserted.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Queue `index`, if the device has it.
    pub fn queue(&self, index: usize) -> Option<&Queue> {
        self.queues.get(index)
    }

    /// How many queues the device has.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Reset the device as a driver write of 0 to the status does (also usable on a VM reset).
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

    /// The 32 offered feature bits the driver selected.
    pub(crate) fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    pub(crate) fn select_device_features(&mut self, sel: u32) {
        self.device_features_sel = sel;
    }

    pub(crate) fn select_driver_features(&mut self, sel: u32) {
        self.driver_features_sel = sel;
    }

    /// The 32 acknowledged feature bits the driver selected.
    pub(crate) fn driver_features_word(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    pub(crate) fn select_queue(&mut self, sel: u32) {
        self.queue_sel = sel;
    }

    pub(crate) fn queue_sel(&self) -> u32 {
        self.queue_sel
    }

    pub(crate) fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The driver acknowledged `value` in the selected word of features.
    pub(crate) fn write_driver_features(&mut self, value: u32) {
        if self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK) != 0 {
            log::log!(self.warnings.level(), "{}: driver features written after FEATURES_OK, ignored", self.transport);
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            sel if value != 0 => log::log!(
                self.warnings.level(),
                "{}: features {value:#x} acknowledged in word {sel}, refused",
                self.transport
            ),
            _ => {}
        }
    }

    /// The driver set the selected queue's size.
    pub(crate) fn write_queue_size(&mut self, value: u32) {
        self.configure_queue("queue size", |q| {
            let size = u16::try_from(value).map_err(|_| ())?;
            q.try_set_size(size).map_err(|_| ())
        });
    }

    /// The driver wrote half of one of the selected queue's ring addresses.
    pub(crate) fn write_ring_address(&mut self, half: RingHalf, value: u32) {
        self.configure_queue("ring address", |q| {
            let r = match half {
                RingHalf::DescLow => q.try_set_desc_table_address(with_low(q.desc_table(), value)),
                RingHalf::DescHigh => q.try_set_desc_table_address(with_high(q.desc_table(), value)),
                RingHalf::DriverLow => q.try_set_avail_ring_address(with_low(q.avail_ring(), value)),
                RingHalf::DriverHigh => q.try_set_avail_ring_address(with_high(q.avail_ring(), value)),
                RingHalf::DeviceLow => q.try_set_used_ring_address(with_low(q.used_ring(), value)),
                RingHalf::DeviceHigh => q.try_set_used_ring_address(with_high(q.used_ring(), value)),
            };
            r.map_err(|_| ())
        });
    }

    /// One of the selected queue's ring addresses, half of it.
    pub(crate) fn ring_address(&self, half: RingHalf) -> u32 {
        let Some(q) = self.selected_queue() else { return 0 };
        let address = match half {
            RingHalf::DescLow | RingHalf::DescHigh => q.desc_table(),
            RingHalf::DriverLow | RingHalf::DriverHigh => q.avail_ring(),
            RingHalf::DeviceLow | RingHalf::DeviceHigh => q.used_ring(),
        };
        match half {
            RingHalf::DescLow | RingHalf::DriverLow | RingHalf::DeviceLow => address as u32,
            _ => (address >> 32) as u32,
        }
    }

    /// The driver acknowledged the interrupt causes in `value`.
    pub(crate) fn ack_interrupt(&mut self, value: u32) {
        self.interrupt_status &= !value;
    }

    /// The interrupt status, cleared by reading it (virtio-pci's ISR, §4.1.4.5).
    pub(crate) fn take_interrupt_status(&mut self) -> u32 {
        std::mem::take(&mut self.interrupt_status)
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Whether the driver may configure queues now: after `FEATURES_OK`, before `DRIVER_OK`.
    fn queue_setup_allowed(&self, register: &str) -> bool {
        let live = self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) != 0;
        let allowed = self.has(VIRTIO_CONFIG_S_FEATURES_OK) && !live;
        if !allowed {
            // Linux writes the queue registers while tearing queues down after a reset: no warning.
            log::debug!("{}: {register} written in status {:#x}, ignored", self.transport, self.status);
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
                Err(()) => "invalid value (size: a power of two up to the maximum; rings: aligned)",
            },
        };
        log::log!(self.warnings.level(), "{}: {register} write for queue {sel} ignored: {why}", self.transport);
    }

    /// The driver made the selected queue ready (1) or not (0).
    pub(crate) fn write_queue_ready<M: GuestMemory>(&mut self, value: u32, mem: &M) {
        if !self.queue_setup_allowed("queue ready") {
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
        log::log!(self.warnings.level(), "{}: queue {sel} not made ready: {why}", self.transport);
    }

    /// The driver wrote the status register.
    pub(crate) fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::log!(
                self.warnings.level(),
                "{}: status {value:#x} clears bits of {old:#x} without a reset, ignored",
                self.transport
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
                    "{}: FEATURES_OK refused: acknowledged {:#x}, offered {offered:#x} (not offered: \
                     {refused:#x}; VERSION_1 is required)",
                    self.transport,
                    self.driver_features
                );
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if new & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                log::log!(self.warnings.level(), "{}: DRIVER_OK without FEATURES_OK, refused", self.transport);
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

    /// What a notification of queue `index` does (by ioeventfd, or a register write): true when
    /// the driver must be interrupted.
    pub fn notify_queue<M: GuestMemory>(&mut self, index: usize, mem: &M) -> bool {
        let live = self.live();
        let ready = self.queues.get(index).is_some_and(|q| q.ready());
        if !live || !ready {
            log::log!(
                self.warnings.level(),
                "{}: notify for queue {index} ignored (status {:#x}, {} queues, ready: {ready})",
                self.transport,
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

    /// The configuration changed (link state, ...): the interrupt status says so. True when
    /// the driver is live and must be interrupted.
    pub fn config_changed(&mut self) -> bool {
        if !self.live() {
            return false;
        }
        self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
        true
    }

    /// `DRIVER_OK`, and neither `FAILED` nor `NEEDS_RESET`.
    pub fn live(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_DRIVER_OK) && self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) == 0
    }

    /// A level for the guest's log lines about this device.
    pub(crate) fn warning_level(&mut self) -> log::Level {
        self.warnings.level()
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
