//! The virtio-pci transport, modern only (virtio 1.x §4.1), with MSI-X.
//!
//! [`VirtioPci`] is one PCI function: device id `0x1040 + device type`, revision 1, its
//! capabilities in configuration space pointing into BAR 0 (32-bit memory, [`BAR_SIZE`]
//! bytes):
//!
//! ```text
//! 0x0000  common configuration (virtio_pci_common_cfg)     VIRTIO_PCI_CAP_COMMON_CFG
//! 0x1000  ISR status (one byte, cleared by reading it)      VIRTIO_PCI_CAP_ISR_CFG
//! 0x2000  device configuration space                        VIRTIO_PCI_CAP_DEVICE_CFG
//! 0x3000  queue notifications, queue N at 0x3000 + 4 N      VIRTIO_PCI_CAP_NOTIFY_CFG
//! 0x4000  MSI-X table (one vector per queue, one for configuration changes)
//! 0x5000  MSI-X pending bits
//! ```
//!
//! The common configuration is decoded onto [`VirtioCommon`] (the handshake, queues and
//! notifications every transport shares), which the function dereferences to; registers are
//! accessed at their own width only (64-bit addresses as two 32-bit halves, as Linux writes
//! them), anything else reads as zero and is ignored on write, with a log line.
//!
//! Interrupts are MSI-X only (the interrupt pin is 0: no INTx): a queue's used buffers signal
//! the vector the driver wrote to its `queue_msix_vector`, a configuration change
//! `msix_config`'s. [`VirtioPci::queue_interrupt`] and [`VirtioPci::config_interrupt`] say what
//! message to send, or none: MSI-X disabled, no vector, or the vector masked (then its pending
//! bit is set, and the message comes back from the write that unmasks it). The VMM delivers a
//! message with `KVM_SIGNAL_MSI`. A device reset sets every vector back to
//! [`VIRTIO_MSI_NO_VECTOR`]; the MSI-X table is the function's and survives it.

use std::ops::{Deref, DerefMut};

use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use super::common::{RingHalf, VirtioCommon, VirtioDevice, VirtioError};
use crate::pci::{PciConfig, PCI_CAP_ID_MSIX, PCI_CAP_ID_VNDR, PCI_CLASS_NETWORK_ETHERNET, PCI_CLASS_OTHERS};

/// Red Hat's vendor id, which virtio devices use.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// A modern device's PCI device id is this plus its virtio device type.
pub const VIRTIO_PCI_MODERN_DEVICE_BASE: u16 = 0x1040;
/// The subsystem id QEMU gives its modern devices.
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// Capability types (`cfg_type`, include/uapi/linux/virtio_pci.h).
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// "No vector" in `msix_config` and `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

// struct virtio_pci_common_cfg's fields (VIRTIO_PCI_COMMON_*, include/uapi/linux/virtio_pci.h).
pub const VIRTIO_PCI_COMMON_DFSELECT: u64 = 0;
pub const VIRTIO_PCI_COMMON_DF: u64 = 4;
pub const VIRTIO_PCI_COMMON_GFSELECT: u64 = 8;
pub const VIRTIO_PCI_COMMON_GF: u64 = 12;
pub const VIRTIO_PCI_COMMON_MSIX: u64 = 16;
pub const VIRTIO_PCI_COMMON_NUMQ: u64 = 18;
pub const VIRTIO_PCI_COMMON_STATUS: u64 = 20;
pub const VIRTIO_PCI_COMMON_CFGGENERATION: u64 = 21;
pub const VIRTIO_PCI_COMMON_Q_SELECT: u64 = 22;
pub const VIRTIO_PCI_COMMON_Q_SIZE: u64 = 24;
pub const VIRTIO_PCI_COMMON_Q_MSIX: u64 = 26;
pub const VIRTIO_PCI_COMMON_Q_ENABLE: u64 = 28;
pub const VIRTIO_PCI_COMMON_Q_NOFF: u64 = 30;
pub const VIRTIO_PCI_COMMON_Q_DESCLO: u64 = 32;
pub const VIRTIO_PCI_COMMON_Q_DESCHI: u64 = 36;
pub const VIRTIO_PCI_COMMON_Q_AVAILLO: u64 = 40;
pub const VIRTIO_PCI_COMMON_Q_AVAILHI: u64 = 44;
pub const VIRTIO_PCI_COMMON_Q_USEDLO: u64 = 48;
pub const VIRTIO_PCI_COMMON_Q_USEDHI: u64 = 52;
/// `sizeof(struct virtio_pci_common_cfg)`.
const COMMON_CFG_LEN: u64 = 56;

/// BAR 0's layout.
pub const BAR_SIZE: u32 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`: queue N's notification address is 4 N bytes into the region.
const NOTIFY_MULTIPLIER: u64 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_LEN: u64 = 0x1000;
/// MSI-X entry size, and the Message Control bits (PCI 3.0 §6.8.2).
const MSIX_ENTRY_SIZE: u64 = 16;
const PCI_MSIX_FLAGS_ENABLE: u16 = 1 << 15;
const PCI_MSIX_FLAGS_MASKALL: u16 = 1 << 14;
const PCI_MSIX_ENTRY_CTRL_MASKBIT: u32 = 1;

/// An MSI message: what the VMM writes to the guest's interrupt controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// One MSI-X table entry.
#[derive(Debug, Clone, Copy)]
struct MsixEntry {
    address: u64,
    data: u32,
    control: u32,
}

impl Default for MsixEntry {
    /// Masked, as after a reset (PCI 3.0 §6.8.2.9).
    fn default() -> Self {
        Self { address: 0, data: 0, control: PCI_MSIX_ENTRY_CTRL_MASKBIT }
    }
}

impl MsixEntry {
    /// The entry as the table holds it: address, data, vector control.
    fn to_bytes(self) -> [u8; MSIX_ENTRY_SIZE as usize] {
        let mut bytes = [0u8; MSIX_ENTRY_SIZE as usize];
        bytes[..8].copy_from_slice(&self.address.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.data.to_le_bytes());
        bytes[12..].copy_from_slice(&self.control.to_le_bytes());
        bytes
    }

    /// The entry from its bytes; only the mask bit of vector control is defined.
    fn from_bytes(bytes: &[u8; MSIX_ENTRY_SIZE as usize]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        Self {
            address: u64::from(u32_at(0)) | u64::from(u32_at(4)) << 32,
            data: u32_at(8),
            control: u32_at(12) & PCI_MSIX_ENTRY_CTRL_MASKBIT,
        }
    }
}

/// One virtio device as a PCI function.
pub struct VirtioPci<D> {
    common: VirtioCommon<D>,
    config: PciConfig,
    /// Where the MSI-X capability is in configuration space.
    msix_cap: usize,
    table: Vec<MsixEntry>,
    pending: Vec<bool>,
    msix_config: u16,
    queue_vectors: Vec<u16>,
}

impl<D> Deref for VirtioPci<D> {
    type Target = VirtioCommon<D>;
    fn deref(&self) -> &VirtioCommon<D> {
        &self.common
    }
}

impl<D> DerefMut for VirtioPci<D> {
    fn deref_mut(&mut self) -> &mut VirtioCommon<D> {
        &mut self.common
    }
}

/// A `virtio_pci_cap` body (after its id and next bytes) for `cfg_type` at `offset` in BAR 0.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![(16 + extra.len()) as u8, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// Wrap `device` as a function whose BAR 0 is at `bar` (aligned to [`BAR_SIZE`]) and
    /// decodes memory, as firmware would leave it.
    pub fn new(device: D, bar: u32) -> Result<Self, VirtioError> {
        let common = VirtioCommon::new(device, "virtio-pci")?;
        let kind = common.device().device_type();
        let class = match kind {
            1 => PCI_CLASS_NETWORK_ETHERNET,
            _ => PCI_CLASS_OTHERS,
        };
        let id = VIRTIO_PCI_MODERN_DEVICE_BASE.wrapping_add(kind as u16);
        let mut config = PciConfig::new(VIRTIO_PCI_VENDOR_ID, id, class, 1)
            .with_subsystem(VIRTIO_PCI_VENDOR_ID, VIRTIO_PCI_SUBSYSTEM_ID)
            .with_bar0(bar, BAR_SIZE);
        config.write(crate::pci::PCI_COMMAND, &crate::pci::PCI_COMMAND_MEMORY.to_le_bytes());
        let queues = common.num_queues();
        let vectors = queues + 1;
        let notify_len = NOTIFY_MULTIPLIER * queues.max(1) as u64;
        let caps = [
            virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_CFG_LEN, &[]),
            virtio_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, notify_len, &(NOTIFY_MULTIPLIER as u32).to_le_bytes()),
            virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
            virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, DEVICE_LEN, &[]),
        ];
        for cap in caps {
            config.add_capability(PCI_CAP_ID_VNDR, &cap, &[]).expect("four virtio capabilities fit");
        }
        let mut msix = ((vectors - 1) as u16).to_le_bytes().to_vec();
        msix.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        msix.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        // Only Message Control's enable and function mask bits are the driver's.
        let msix_cap = config.add_capability(PCI_CAP_ID_MSIX, &msix, &[0, 0xc0]).expect("MSI-X fits");
        if vectors as u64 * MSIX_ENTRY_SIZE > REGION_LEN {
            return Err(VirtioError::TooManyQueues(queues));
        }
        Ok(Self {
            common,
            config,
            msix_cap,
            table: vec![MsixEntry::default(); vectors],
            pending: vec![false; vectors],
            msix_config: VIRTIO_MSI_NO_VECTOR,
            queue_vectors: vec![VIRTIO_MSI_NO_VECTOR; queues],
        })
    }

    /// Where queue `index`'s notifications are written, as an offset in BAR 0.
    pub fn notify_offset(index: usize) -> u64 {
        NOTIFY_OFFSET + NOTIFY_MULTIPLIER * index as u64
    }

    /// The queue a write of `len` bytes at `offset` in BAR 0 notifies, if it is a notification.
    pub fn notified_queue(&self, offset: u64, len: usize) -> Option<usize> {
        let rel = offset.checked_sub(NOTIFY_OFFSET)?;
        let index = (rel / NOTIFY_MULTIPLIER) as usize;
        (rel % NOTIFY_MULTIPLIER == 0 && len == 2 && index < self.common.num_queues()).then_some(index)
    }

    /// BAR 0's guest-physical range while the function decodes memory.
    pub fn bar_window(&self) -> Option<(u64, u64)> {
        self.config.bar0_window()
    }

    /// A guest read of configuration space.
    pub fn read_config(&self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    /// A guest write to configuration space; returns the messages of vectors it unmasked (by
    /// enabling MSI-X or clearing its function mask) that were pending.
    pub fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<MsiMessage> {
        self.config.write(offset, data);
        self.release_pending()
    }

    /// A guest read of `data.len()` bytes at `offset` in BAR 0.
    pub fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + COMMON_CFG_LEN => self.read_common(o - COMMON_OFFSET, data),
            o if o == ISR_OFFSET && data.len() == 1 => data[0] = self.common.take_interrupt_status() as u8,
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                if o + data.len() as u64 <= DEVICE_OFFSET + DEVICE_LEN {
                    self.common.device().read_config(o - DEVICE_OFFSET, data);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self.read_table(o - MSIX_TABLE_OFFSET, data),
            o if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + REGION_LEN).contains(&o) => {
                self.read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => log::debug!("virtio-pci: ignored {}-byte read at {offset:#x}", data.len()),
        }
    }

    /// A guest write of `data` at `offset` in BAR 0; returns the messages to send (used
    /// buffers after a notification handled here, a pending vector the write unmasked).
    pub fn write_bar<M: GuestMemory>(&mut self, offset: u64, data: &[u8], mem: &M) -> Vec<MsiMessage> {
        if let Some(index) = self.notified_queue(offset, data.len()) {
            return match self.common.notify_queue(index, mem) {
                true => self.queue_interrupt(index).into_iter().collect(),
                false => Vec::new(),
            };
        }
        match offset {
            o if o < COMMON_OFFSET + COMMON_CFG_LEN => self.write_common(o - COMMON_OFFSET, data, mem),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                if o + data.len() as u64 <= DEVICE_OFFSET + DEVICE_LEN {
                    self.common.device_mut().write_config(o - DEVICE_OFFSET, data);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.write_table(o - MSIX_TABLE_OFFSET, data);
                return self.release_pending();
            }
            _ => log::debug!("virtio-pci: ignored {}-byte write at {offset:#x}", data.len()),
        }
        Vec::new()
    }

    /// The message for queue `index`'s used buffers (the common state already says the
    /// driver must be interrupted), or none (see the module docs).
    pub fn queue_interrupt(&mut self, index: usize) -> Option<MsiMessage> {
        let vector = self.queue_vectors.get(index).copied().unwrap_or(VIRTIO_MSI_NO_VECTOR);
        self.signal(vector)
    }

    /// The message for a configuration change, or none.
    pub fn config_interrupt(&mut self) -> Option<MsiMessage> {
        self.signal(self.msix_config)
    }

    /// Reset the device and its vectors, as the driver's write of 0 to the status does.
    pub fn reset(&mut self) {
        self.common.reset();
        self.reset_vectors();
    }

    fn reset_vectors(&mut self) {
        self.msix_config = VIRTIO_MSI_NO_VECTOR;
        self.queue_vectors.fill(VIRTIO_MSI_NO_VECTOR);
    }

    fn msix_control(&self) -> u16 {
        self.config.u16_at(self.msix_cap + 2)
    }

    /// `vector`'s message if it can be sent now; if it is masked, its pending bit is set.
    fn signal(&mut self, vector: u16) -> Option<MsiMessage> {
        let v = usize::from(vector);
        let control = self.msix_control();
        if control & PCI_MSIX_FLAGS_ENABLE == 0 || v >= self.table.len() {
            return None;
        }
        let entry = self.table[v];
        if control & PCI_MSIX_FLAGS_MASKALL != 0 || entry.control & PCI_MSIX_ENTRY_CTRL_MASKBIT != 0 {
            self.pending[v] = true;
            return None;
        }
        Some(MsiMessage { address: entry.address, data: entry.data })
    }

    /// The messages of pending vectors that are no longer masked (their pending bits cleared).
    fn release_pending(&mut self) -> Vec<MsiMessage> {
        let control = self.msix_control();
        if control & PCI_MSIX_FLAGS_ENABLE == 0 || control & PCI_MSIX_FLAGS_MASKALL != 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (entry, pending) in self.table.iter().zip(&mut self.pending) {
            if *pending && entry.control & PCI_MSIX_ENTRY_CTRL_MASKBIT == 0 {
                *pending = false;
                out.push(MsiMessage { address: entry.address, data: entry.data });
            }
        }
        out
    }

    /// A table access: aligned dwords, or a qword at an entry's address.
    fn table_field(&self, offset: u64, len: usize) -> Option<(usize, u64)> {
        let (index, field) = ((offset / MSIX_ENTRY_SIZE) as usize, offset % MSIX_ENTRY_SIZE);
        let ok = index < self.table.len() && (len == 4 && field % 4 == 0 || len == 8 && field == 0);
        ok.then_some((index, field))
    }

    fn read_table(&self, offset: u64, data: &mut [u8]) {
        let Some((index, field)) = self.table_field(offset, data.len()) else {
            log::debug!("virtio-pci: ignored {}-byte MSI-X table read at {offset:#x}", data.len());
            return;
        };
        let bytes = self.table[index].to_bytes();
        data.copy_from_slice(&bytes[field as usize..field as usize + data.len()]);
    }

    fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((index, field)) = self.table_field(offset, data.len()) else {
            log::debug!("virtio-pci: ignored {}-byte MSI-X table write at {offset:#x}", data.len());
            return;
        };
        let mut bytes = self.table[index].to_bytes();
        bytes[field as usize..field as usize + data.len()].copy_from_slice(data);
        self.table[index] = MsixEntry::from_bytes(&bytes);
    }

    fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *b = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0, |b, bit| b | 1 << bit);
        }
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let c = &self.common;
        let sel = c.queue_sel() as usize;
        let value: u32 = match (offset, data.len()) {
            (VIRTIO_PCI_COMMON_DFSELECT | VIRTIO_PCI_COMMON_GFSELECT, 4) => {
                log::debug!("virtio-pci: feature select read back as 0");
                0
            }
            (VIRTIO_PCI_COMMON_DF, 4) => c.device_features_word(),
            (VIRTIO_PCI_COMMON_GF, 4) => c.driver_features_word(),
            (VIRTIO_PCI_COMMON_MSIX, 2) => self.msix_config.into(),
            (VIRTIO_PCI_COMMON_NUMQ, 2) => c.num_queues() as u32,
            (VIRTIO_PCI_COMMON_STATUS, 1) => c.status(),
            // The configuration space never changes under the driver.
            (VIRTIO_PCI_COMMON_CFGGENERATION, 1) => 0,
            (VIRTIO_PCI_COMMON_Q_SELECT, 2) => c.queue_sel(),
            (VIRTIO_PCI_COMMON_Q_SIZE, 2) => c.selected_queue().map_or(0, |q| q.size().into()),
            (VIRTIO_PCI_COMMON_Q_MSIX, 2) => {
                self.queue_vectors.get(sel).copied().unwrap_or(VIRTIO_MSI_NO_VECTOR).into()
            }
            (VIRTIO_PCI_COMMON_Q_ENABLE, 2) => c.selected_queue().is_some_and(|q| q.ready()).into(),
            (VIRTIO_PCI_COMMON_Q_NOFF, 2) => sel as u32,
            (VIRTIO_PCI_COMMON_Q_DESCLO, 4) => c.ring_address(RingHalf::DescLow),
            (VIRTIO_PCI_COMMON_Q_DESCHI, 4) => c.ring_address(RingHalf::DescHigh),
            (VIRTIO_PCI_COMMON_Q_AVAILLO, 4) => c.ring_address(RingHalf::DriverLow),
            (VIRTIO_PCI_COMMON_Q_AVAILHI, 4) => c.ring_address(RingHalf::DriverHigh),
            (VIRTIO_PCI_COMMON_Q_USEDLO, 4) => c.ring_address(RingHalf::DeviceLow),
            (VIRTIO_PCI_COMMON_Q_USEDHI, 4) => c.ring_address(RingHalf::DeviceHigh),
            _ => {
                log::debug!("virtio-pci: ignored {}-byte common configuration read at {offset:#x}", data.len());
                return;
            }
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn write_common<M: GuestMemory>(&mut self, offset: u64, data: &[u8], mem: &M) {
        let mut bytes = [0u8; 4];
        if data.len() <= 4 {
            bytes[..data.len()].copy_from_slice(data);
        }
        let value = u32::from_le_bytes(bytes);
        let sel = self.common.queue_sel() as usize;
        let c = &mut self.common;
        match (offset, data.len()) {
            (VIRTIO_PCI_COMMON_DFSELECT, 4) => c.select_device_features(value),
            (VIRTIO_PCI_COMMON_GFSELECT, 4) => c.select_driver_features(value),
            (VIRTIO_PCI_COMMON_GF, 4) => c.write_driver_features(value),
            (VIRTIO_PCI_COMMON_MSIX, 2) => self.msix_config = self.vector(value as u16),
            (VIRTIO_PCI_COMMON_STATUS, 1) => {
                c.write_status(value);
                if value == 0 {
                    self.reset_vectors();
                }
            }
            (VIRTIO_PCI_COMMON_Q_SELECT, 2) => c.select_queue(value),
            (VIRTIO_PCI_COMMON_Q_SIZE, 2) => c.write_queue_size(value),
            (VIRTIO_PCI_COMMON_Q_MSIX, 2) => {
                let vector = self.vector(value as u16);
                match self.queue_vectors.get_mut(sel) {
                    Some(v) => *v = vector,
                    None => log::debug!("virtio-pci: vector for missing queue {sel} ignored"),
                }
            }
            (VIRTIO_PCI_COMMON_Q_ENABLE, 2) => c.write_queue_ready(value, mem),
            (VIRTIO_PCI_COMMON_Q_DESCLO, 4) => c.write_ring_address(RingHalf::DescLow, value),
            (VIRTIO_PCI_COMMON_Q_DESCHI, 4) => c.write_ring_address(RingHalf::DescHigh, value),
            (VIRTIO_PCI_COMMON_Q_AVAILLO, 4) => c.write_ring_address(RingHalf::DriverLow, value),
            (VIRTIO_PCI_COMMON_Q_AVAILHI, 4) => c.write_ring_address(RingHalf::DriverHigh, value),
            (VIRTIO_PCI_COMMON_Q_USEDLO, 4) => c.write_ring_address(RingHalf::DeviceLow, value),
            (VIRTIO_PCI_COMMON_Q_USEDHI, 4) => c.write_ring_address(RingHalf::DeviceHigh, value),
            _ => log::debug!("virtio-pci: ignored {}-byte common configuration write at {offset:#x}", data.len()),
        }
    }

    /// A vector the driver asks for: itself if the table has it, else "no vector" (which the
    /// driver reads back and takes as a refusal, §4.1.5.1.2).
    fn vector(&mut self, vector: u16) -> u16 {
        if usize::from(vector) < self.table.len() || vector == VIRTIO_MSI_NO_VECTOR {
            vector
        } else {
            log::log!(
                self.common.warning_level(),
                "virtio-pci: vector {vector} refused: the table has {}",
                self.table.len()
            );
            VIRTIO_MSI_NO_VECTOR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{PCI_CAPABILITY_LIST, PCI_CLASS_PROG, PCI_DEVICE_ID, PCI_REVISION_ID, PCI_SUBSYSTEM_ID};
    use crate::virtio::test_util::{rings, test_memory, QUEUE_SIZE, VERSION_1};
    use virtio_bindings::virtio_config::*;
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;

    const BAR: u32 = 0xc000_0000;
    const FEATURES: u64 = VERSION_1 | 1 << 5;

    /// A device with two queues whose processing always wants an interrupt.
    #[derive(Default)]
    struct Fake {
        processed: Vec<usize>,
        resets: u32,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            1
        }
        fn features(&self) -> u64 {
            FEATURES
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[QUEUE_SIZE, QUEUE_SIZE]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.iter_mut().enumerate().for_each(|(i, b)| *b = 0xa0 + (offset as u8) + i as u8);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: u64) {}
        fn process_queue<M: GuestMemory>(&mut self, index: usize, _: &mut Queue, _: &M) -> bool {
            self.processed.push(index);
            true
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn cfg(dev: &VirtioPci<Fake>, offset: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        dev.read_config(offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn rd(dev: &mut VirtioPci<Fake>, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        dev.read_bar(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn wr(dev: &mut VirtioPci<Fake>, mem: &GuestMemoryMmap, offset: u64, value: u64, len: usize) -> Vec<MsiMessage> {
        dev.write_bar(offset, &value.to_le_bytes()[..len], mem)
    }

    /// MSI-X on with no function mask, as Linux leaves it, and vector `v`'s entry unmasked.
    fn enable_msix(dev: &mut VirtioPci<Fake>, mem: &GuestMemoryMmap, v: u64) -> MsiMessage {
        let control = dev.msix_cap + 2;
        dev.write_config(control, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes());
        let entry = MSIX_TABLE_OFFSET + v * MSIX_ENTRY_SIZE;
        let m = MsiMessage { address: 0xfee0_1000, data: 0x40 + v as u32 };
        wr(dev, mem, entry, m.address, 4);
        wr(dev, mem, entry + 4, 0, 4);
        wr(dev, mem, entry + 8, m.data.into(), 4);
        wr(dev, mem, entry + 12, 0, 4);
        m
    }

    /// What Linux's virtio_pci_modern does, through BAR 0: reset, features, both queues (with
    /// their vectors), DRIVER_OK.
    fn bring_up(dev: &mut VirtioPci<Fake>, mem: &GuestMemoryMmap) {
        wr(dev, mem, VIRTIO_PCI_COMMON_STATUS, 0, 1);
        assert_eq!(rd(dev, VIRTIO_PCI_COMMON_STATUS, 1), 0);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        wr(dev, mem, VIRTIO_PCI_COMMON_STATUS, s.into(), 1);
        let mut offered = 0;
        for word in [0u64, 1] {
            wr(dev, mem, VIRTIO_PCI_COMMON_DFSELECT, word, 4);
            offered |= rd(dev, VIRTIO_PCI_COMMON_DF, 4) << (32 * word);
        }
        assert_eq!(offered, FEATURES);
        for word in [0u64, 1] {
            wr(dev, mem, VIRTIO_PCI_COMMON_GFSELECT, word, 4);
            wr(dev, mem, VIRTIO_PCI_COMMON_GF, offered >> (32 * word) & 0xffff_ffff, 4);
        }
        let s = s | VIRTIO_CONFIG_S_FEATURES_OK;
        wr(dev, mem, VIRTIO_PCI_COMMON_STATUS, s.into(), 1);
        assert_eq!(rd(dev, VIRTIO_PCI_COMMON_STATUS, 1), u64::from(s), "FEATURES_OK refused");
        assert_eq!(rd(dev, VIRTIO_PCI_COMMON_NUMQ, 2), 2);
        wr(dev, mem, VIRTIO_PCI_COMMON_MSIX, 0, 2);
        assert_eq!(rd(dev, VIRTIO_PCI_COMMON_MSIX, 2), 0);
        for q in 0..2u64 {
            wr(dev, mem, VIRTIO_PCI_COMMON_Q_SELECT, q, 2);
            assert_eq!(rd(dev, VIRTIO_PCI_COMMON_Q_SIZE, 2), u64::from(QUEUE_SIZE));
            assert_eq!(rd(dev, VIRTIO_PCI_COMMON_Q_ENABLE, 2), 0);
            assert_eq!(rd(dev, VIRTIO_PCI_COMMON_Q_NOFF, 2), q);
            let (desc, avail, used) = rings(q as u16);
            for (lo, addr) in [
                (VIRTIO_PCI_COMMON_Q_DESCLO, desc),
                (VIRTIO_PCI_COMMON_Q_AVAILLO, avail),
                (VIRTIO_PCI_COMMON_Q_USEDLO, used),
            ] {
                wr(dev, mem, lo, addr & 0xffff_ffff, 4);
                wr(dev, mem, lo + 4, addr >> 32, 4);
                assert_eq!(rd(dev, lo, 4), addr & 0xffff_ffff);
            }
            wr(dev, mem, VIRTIO_PCI_COMMON_Q_MSIX, q + 1, 2);
            assert_eq!(rd(dev, VIRTIO_PCI_COMMON_Q_MSIX, 2), q + 1);
        }
        for q in 0..2u64 {
            wr(dev, mem, VIRTIO_PCI_COMMON_Q_SELECT, q, 2);
            wr(dev, mem, VIRTIO_PCI_COMMON_Q_ENABLE, 1, 2);
            assert_eq!(rd(dev, VIRTIO_PCI_COMMON_Q_ENABLE, 2), 1, "queue {q} enabled");
        }
        wr(dev, mem, VIRTIO_PCI_COMMON_STATUS, (s | VIRTIO_CONFIG_S_DRIVER_OK).into(), 1);
        assert!(dev.live());
    }

    fn device() -> VirtioPci<Fake> {
        VirtioPci::new(Fake::default(), BAR).unwrap()
    }

    /// The header and capabilities Linux's virtio_pci_modern probes for, walked as it walks
    /// them.
    #[test]
    fn linux_finds_a_modern_function_and_its_capabilities() {
        let dev = device();
        assert_eq!(cfg(&dev, 0, 2), 0x1af4);
        assert_eq!(cfg(&dev, PCI_DEVICE_ID, 2), 0x1041, "0x1040 + the device type");
        assert_eq!(cfg(&dev, PCI_REVISION_ID, 1), 1, "modern only");
        assert_eq!(cfg(&dev, PCI_CLASS_PROG, 4) >> 8, 0x0200, "network, Ethernet");
        assert_eq!(cfg(&dev, PCI_SUBSYSTEM_ID, 2), 0x1100);
        assert_eq!(dev.bar_window(), Some((u64::from(BAR), u64::from(BAR_SIZE))));
        let mut found = Vec::new();
        let mut at = cfg(&dev, PCI_CAPABILITY_LIST, 1) as usize;
        while at != 0 {
            let id = cfg(&dev, at, 1) as u8;
            if id == PCI_CAP_ID_VNDR {
                let (len, kind, bar) = (cfg(&dev, at + 2, 1), cfg(&dev, at + 3, 1) as u8, cfg(&dev, at + 4, 1));
                let (offset, length) = (cfg(&dev, at + 8, 4), cfg(&dev, at + 12, 4));
                assert_eq!(bar, 0);
                let extra = (kind == VIRTIO_PCI_CAP_NOTIFY_CFG).then(|| cfg(&dev, at + 16, 4));
                found.push((kind, len, offset, length, extra));
            } else {
                assert_eq!(id, PCI_CAP_ID_MSIX);
                assert_eq!(cfg(&dev, at + 2, 2) & 0x7ff, 2, "three vectors: two queues and the configuration");
                assert_eq!(cfg(&dev, at + 4, 4), MSIX_TABLE_OFFSET as u32, "BIR 0");
                assert_eq!(cfg(&dev, at + 8, 4), MSIX_PBA_OFFSET as u32, "BIR 0");
                found.push((0, 12, 0, 0, None));
            }
            at = cfg(&dev, at + 1, 1) as usize;
        }
        assert_eq!(
            found,
            [
                (VIRTIO_PCI_CAP_COMMON_CFG, 16, 0, 56, None),
                (VIRTIO_PCI_CAP_NOTIFY_CFG, 20, 0x3000, 8, Some(4)),
                (VIRTIO_PCI_CAP_ISR_CFG, 16, 0x1000, 1, None),
                (VIRTIO_PCI_CAP_DEVICE_CFG, 16, 0x2000, 0x1000, None),
                (0, 12, 0, 0, None),
            ]
        );
        // The device configuration, at any width.
        let mut dev = dev;
        assert_eq!(rd(&mut dev, 0x2004, 2), 0xa5a4);
    }

    /// A notification processes the queue and signals the queue's own vector, once MSI-X is on;
    /// before that, nothing is sent.
    #[test]
    fn notifications_signal_the_queues_vectors() {
        let mem = test_memory();
        let mut dev = device();
        bring_up(&mut dev, &mem);
        assert_eq!(dev.notified_queue(VirtioPci::<Fake>::notify_offset(1), 2), Some(1));
        assert_eq!(dev.notified_queue(VirtioPci::<Fake>::notify_offset(2), 2), None, "no queue 2");
        assert_eq!(dev.notified_queue(VirtioPci::<Fake>::notify_offset(1) + 1, 1), None);
        assert_eq!(wr(&mut dev, &mem, VirtioPci::<Fake>::notify_offset(1), 1, 2), [], "MSI-X is off");
        let m = enable_msix(&mut dev, &mem, 2);
        assert_eq!(wr(&mut dev, &mem, VirtioPci::<Fake>::notify_offset(1), 1, 2), [m]);
        assert_eq!(dev.device().processed, [1, 1]);
        // Queue 0's vector (1) is still masked: pending, sent when it is unmasked.
        assert_eq!(dev.queue_interrupt(0), None);
        assert_eq!(rd(&mut dev, MSIX_PBA_OFFSET, 1), 0b010);
        let m1 = enable_msix(&mut dev, &mem, 1);
        assert_eq!(rd(&mut dev, MSIX_PBA_OFFSET, 1), 0);
        assert_eq!(dev.queue_interrupt(0), Some(m1));
        assert_eq!(dev.config_interrupt(), None, "vector 0 is masked");
    }

    #[test]
    fn the_function_mask_holds_every_vector_until_it_is_cleared() {
        let mem = test_memory();
        let mut dev = device();
        bring_up(&mut dev, &mem);
        let m = enable_msix(&mut dev, &mem, 0);
        let control = dev.msix_cap + 2;
        let masked = PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL;
        assert_eq!(dev.write_config(control, &masked.to_le_bytes()), []);
        assert_eq!(dev.config_interrupt(), None);
        assert_eq!(dev.write_config(control, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes()), [m]);
        assert_eq!(dev.write_config(control, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes()), [], "sent once");
        // The table reads back what was written; only the mask bit of its control sticks.
        let entry = MSIX_TABLE_OFFSET;
        assert_eq!(rd(&mut dev, entry, 8), m.address);
        wr(&mut dev, &mem, entry + 12, 0xffff_fffe, 4);
        assert_eq!(rd(&mut dev, entry + 12, 4), 0);
    }

    #[test]
    fn vectors_beyond_the_table_are_refused_and_a_reset_clears_them() {
        let mem = test_memory();
        let mut dev = device();
        bring_up(&mut dev, &mem);
        wr(&mut dev, &mem, VIRTIO_PCI_COMMON_Q_SELECT, 0, 2);
        wr(&mut dev, &mem, VIRTIO_PCI_COMMON_Q_MSIX, 3, 2);
        assert_eq!(rd(&mut dev, VIRTIO_PCI_COMMON_Q_MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        enable_msix(&mut dev, &mem, 0);
        wr(&mut dev, &mem, VIRTIO_PCI_COMMON_STATUS, 0, 1);
        assert_eq!(dev.device().resets, 2, "bring_up's, then this one");
        assert_eq!(rd(&mut dev, VIRTIO_PCI_COMMON_MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        assert_eq!(rd(&mut dev, VIRTIO_PCI_COMMON_Q_MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        assert!(!dev.live());
        // The table is the function's: it survives the device's reset.
        assert_eq!(rd(&mut dev, MSIX_TABLE_OFFSET + 8, 4), 0x40);
        // A crash kernel's driver brings it up again from scratch.
        bring_up(&mut dev, &mem);
    }

    #[test]
    fn the_isr_is_cleared_by_reading_it() {
        let mem = test_memory();
        let mut dev = device();
        bring_up(&mut dev, &mem);
        wr(&mut dev, &mem, VirtioPci::<Fake>::notify_offset(0), 0, 2);
        assert!(dev.config_changed());
        assert_eq!(rd(&mut dev, ISR_OFFSET, 1), 0b11);
        assert_eq!(rd(&mut dev, ISR_OFFSET, 1), 0);
    }

    /// Wrong widths and places read as zero and change nothing; nothing panics.
    #[test]
    fn odd_accesses_are_ignored() {
        let mem = test_memory();
        let mut dev = device();
        bring_up(&mut dev, &mem);
        let status = rd(&mut dev, VIRTIO_PCI_COMMON_STATUS, 1);
        wr(&mut dev, &mem, VIRTIO_PCI_COMMON_STATUS, 0, 4);
        wr(&mut dev, &mem, VIRTIO_PCI_COMMON_STATUS - 1, 0, 2);
        assert_eq!(rd(&mut dev, VIRTIO_PCI_COMMON_STATUS, 1), status);
        assert_eq!(rd(&mut dev, VIRTIO_PCI_COMMON_DF, 8), 0);
        assert_eq!(rd(&mut dev, VIRTIO_PCI_COMMON_Q_SIZE, 1), 0);
        for (offset, len) in [(0x2ffe, 4), (0x3003, 1), (0x4001, 4), (0x4000 + 3 * 16, 4), (0x7fff, 1), (0x9000, 8)] {
            assert_eq!(wr(&mut dev, &mem, offset, u64::MAX, len), [], "{offset:#x}");
            rd(&mut dev, offset, len);
        }
        assert_eq!(rd(&mut dev, 0x2ffe, 4), 0, "past the device configuration");
        assert!(dev.live());
    }
}
