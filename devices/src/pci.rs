//! A conventional PCI bus 0, as Linux finds it on a PC: configuration mechanism #1 (ports
//! 0xcf8-0xcff, the only one: no MMCONFIG), a host bridge at 00.0, and functions whose one
//! memory BAR lies in a window of the MMIO hole the VMM assigns (as firmware would) and the
//! guest may move.
//!
//! - [`PciConfig`]: a type 0 configuration header (256 bytes) with per-byte write masks, so BAR
//!   sizing (all ones in, the size mask back) and read-only fields need no special cases, and a
//!   capability list.
//! - [`PciFunction`]: what the bus needs from a function: its configuration space and its BAR.
//! - [`PciBus`]: the port device for 0xcf8-0xcff and the MMIO device for the window, which hands
//!   an access to the function whose BAR holds it (while that function decodes memory).
//!
//! Functions reached through ports that hold nothing read as all ones, as on real hardware,
//! which is how Linux's scan finds the slots empty.

use std::sync::{Arc, Mutex};

use crate::bus::MmioDevice;
use crate::{PioDevice, VmRequest};

/// Configuration mechanism #1: `CONFIG_ADDRESS` at 0xcf8, `CONFIG_DATA` at 0xcfc.
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u16 = 8;
/// Slots on bus 0.
pub const PCI_SLOTS: usize = 32;

// Type 0 header offsets and bits (PCI Local Bus 3.0 §6.1; Linux's include/uapi/linux/pci_regs.h).
pub const PCI_VENDOR_ID: usize = 0x00;
pub const PCI_DEVICE_ID: usize = 0x02;
pub const PCI_COMMAND: usize = 0x04;
pub const PCI_STATUS: usize = 0x06;
pub const PCI_REVISION_ID: usize = 0x08;
pub const PCI_CLASS_PROG: usize = 0x09;
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const PCI_SUBSYSTEM_ID: usize = 0x2e;
pub const PCI_CAPABILITY_LIST: usize = 0x34;
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
pub const PCI_COMMAND_IO: u16 = 0x1;
pub const PCI_COMMAND_MEMORY: u16 = 0x2;
pub const PCI_COMMAND_MASTER: u16 = 0x4;
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x400;
pub const PCI_STATUS_CAP_LIST: u16 = 0x10;
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Class codes (base class, subclass, programming interface).
pub const PCI_CLASS_BRIDGE_HOST: u32 = 0x06_00_00;
pub const PCI_CLASS_NETWORK_ETHERNET: u32 = 0x02_00_00;
pub const PCI_CLASS_OTHERS: u32 = 0xff_00_00;
/// The host bridge's id: the one Cloud Hypervisor and Firecracker give theirs (Intel's virtual
/// PCIe host bridge).
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
pub const HOST_BRIDGE_DEVICE: u16 = 0x0d57;
/// Where capabilities start: right after the header.
const CAP_START: usize = 0x40;
const CONFIG_SIZE: usize = 256;

/// A function's type 0 configuration header and capabilities.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    /// Bits the guest may change, per byte.
    writable: [u8; CONFIG_SIZE],
    /// Where the last capability is (its "next" byte links the one added after it).
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfig {
    /// A header for `vendor:device`, `class` (base class, subclass, programming interface) and
    /// `revision`, with the command register's memory, I/O, bus master and INTx-disable bits
    /// and the interrupt line writable.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut c = Self { bytes: [0; CONFIG_SIZE], writable: [0; CONFIG_SIZE], last_cap: None, next_cap: CAP_START };
        c.set_u16(PCI_VENDOR_ID, vendor);
        c.set_u16(PCI_DEVICE_ID, device);
        c.bytes[PCI_REVISION_ID] = revision;
        c.bytes[PCI_CLASS_PROG..PCI_CLASS_PROG + 3].copy_from_slice(&class.to_le_bytes()[..3]);
        let command = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
        c.writable[PCI_COMMAND..PCI_COMMAND + 2].copy_from_slice(&command.to_le_bytes());
        c.writable[PCI_INTERRUPT_LINE] = 0xff;
        c
    }

    /// The subsystem vendor and id.
    pub fn with_subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.set_u16(PCI_SUBSYSTEM_VENDOR_ID, vendor);
        self.set_u16(PCI_SUBSYSTEM_ID, id);
        self
    }

    /// BAR 0: 32-bit, non-prefetchable memory of `size` bytes (a power of two, at least 16),
    /// at `address` (aligned to `size`). Only its address bits are writable, so a write of all
    /// ones reads back the size mask.
    pub fn with_bar0(mut self, address: u32, size: u32) -> Self {
        debug_assert!(size.is_power_of_two() && size >= 16 && address % size == 0);
        self.set_u32(PCI_BASE_ADDRESS_0, address);
        self.writable[PCI_BASE_ADDRESS_0..PCI_BASE_ADDRESS_0 + 4].copy_from_slice(&(!(size - 1)).to_le_bytes());
        self
    }

    /// Add capability `id` with `body` (what follows its id and next bytes) to the list, with
    /// `writable` masks over the body (shorter than it: the rest read-only). Returns the
    /// capability's offset, or `None` when it does not fit in the 256 bytes.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Option<usize> {
        let at = self.next_cap;
        let end = at + 2 + body.len();
        if end > CONFIG_SIZE {
            return None;
        }
        self.bytes[at] = id;
        self.bytes[at + 2..end].copy_from_slice(body);
        self.writable[at + 2..at + 2 + writable.len()].copy_from_slice(writable);
        match self.last_cap {
            Some(last) => self.bytes[last + 1] = at as u8,
            None => {
                self.bytes[PCI_CAPABILITY_LIST] = at as u8;
                let status = self.u16_at(PCI_STATUS) | PCI_STATUS_CAP_LIST;
                self.set_u16(PCI_STATUS, status);
            }
        }
        self.last_cap = Some(at);
        self.next_cap = end.next_multiple_of(4);
        Some(at)
    }

    /// A guest read of `data.len()` bytes at `offset` (past the end reads as all ones).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// A guest write of `data` at `offset`: only writable bits change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(mask) = self.writable.get(offset + i).copied() else { return };
            let old = self.bytes[offset + i];
            self.bytes[offset + i] = old & !mask | b & mask;
        }
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.bytes[offset..offset + 4].try_into().unwrap_or_default())
    }

    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// BAR 0's guest-physical range while the function decodes memory, else `None`.
    pub fn bar0_window(&self) -> Option<(u64, u64)> {
        let size = !self.u32_at_mask(PCI_BASE_ADDRESS_0) as u64 + 1;
        let decodes = self.u16_at(PCI_COMMAND) & PCI_COMMAND_MEMORY != 0;
        let has_bar = self.u32_at_mask(PCI_BASE_ADDRESS_0) != 0;
        (decodes && has_bar).then(|| (u64::from(self.u32_at(PCI_BASE_ADDRESS_0) & !0xf), size))
    }

    fn u32_at_mask(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.writable[offset..offset + 4].try_into().unwrap_or_default())
    }
}

/// A PCI function, as the bus sees it.
pub trait PciFunction: Send {
    /// Fill `data` from configuration space at `offset` (1, 2 or 4 bytes within one dword).
    fn read_config(&mut self, offset: usize, data: &mut [u8]);
    /// A guest write to configuration space at `offset`.
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// BAR 0's guest-physical range while the function decodes memory.
    fn bar_window(&self) -> Option<(u64, u64)>;
    /// A guest read at `offset` within BAR 0.
    fn read_bar(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` within BAR 0.
    fn write_bar(&mut self, offset: u64, data: &[u8]);
}

/// A function shared by the vCPU threads and whoever else drives it.
pub type SharedPciFunction = Arc<Mutex<dyn PciFunction>>;

/// The host bridge at 00.0: a header and nothing behind it.
pub struct HostBridge(PciConfig);

impl Default for HostBridge {
    fn default() -> Self {
        Self(PciConfig::new(HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, PCI_CLASS_BRIDGE_HOST, 0))
    }
}

impl PciFunction for HostBridge {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
    fn bar_window(&self) -> Option<(u64, u64)> {
        None
    }
    fn read_bar(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _: u64, _: &[u8]) {}
}

/// Bus 0: configuration mechanism #1 and the MMIO window its functions' BARs lie in.
pub struct PciBus {
    /// `CONFIG_ADDRESS` as the guest last wrote it.
    address: u32,
    slots: [Option<SharedPciFunction>; PCI_SLOTS],
    /// Where the MMIO window starts (the bus is registered on the MMIO bus there).
    window: u64,
}

impl PciBus {
    /// A bus with the host bridge at slot 0 and an MMIO window from `window`.
    pub fn new(window: u64) -> Self {
        let mut slots: [Option<SharedPciFunction>; PCI_SLOTS] = Default::default();
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::default())));
        Self { address: 0, slots, window }
    }

    /// Put `function` in the first free slot; returns the slot, or `None` when the bus is full.
    pub fn add(&mut self, function: SharedPciFunction) -> Option<usize> {
        let slot = self.slots.iter().position(Option::is_none)?;
        self.slots[slot] = Some(function);
        Some(slot)
    }

    /// The function `CONFIG_ADDRESS` selects and the register offset in it, when it is enabled
    /// (bit 31) and names function 0 of a slot on bus 0 that holds one.
    fn selected(&self, port_offset: u16, len: usize) -> Option<(&SharedPciFunction, usize)> {
        let a = self.address;
        let (enabled, bus, slot, function) = (a >> 31 != 0, (a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7);
        let byte = usize::from(port_offset - 4);
        if !enabled || bus != 0 || function != 0 || byte + len > 4 {
            return None;
        }
        let f = self.slots[slot as usize].as_ref()?;
        Some((f, (a & 0xfc) as usize + byte))
    }

    /// The function whose BAR holds guest-physical `addr`, and the offset in that BAR.
    fn decoding(&self, addr: u64) -> Option<(&SharedPciFunction, u64)> {
        self.slots.iter().flatten().find_map(|f| {
            let (base, len) = lock(f).bar_window()?;
            addr.checked_sub(base).filter(|&off| off < len).map(|off| (f, off))
        })
    }
}

fn lock(f: &SharedPciFunction) -> std::sync::MutexGuard<'_, dyn PciFunction + 'static> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

impl PioDevice for PciBus {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.to_le_bytes());
            }
            return;
        }
        if let Some((f, reg)) = self.selected(offset, data.len()) {
            lock(f).read_config(reg, data);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest> {
        if offset < 4 {
            // Only a dword at 0xcf8 is CONFIG_ADDRESS (Linux's probe also writes a byte to
            // 0xcfb, which selects nothing here).
            if let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
                self.address = u32::from_le_bytes(bytes);
            }
            return None;
        }
        if let Some((f, reg)) = self.selected(offset, data.len()) {
            lock(f).write_config(reg, data);
        }
        None
    }
}

impl MmioDevice for PciBus {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.decoding(self.window + offset) {
            Some((f, off)) => lock(f).read_bar(off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((f, off)) = self.decoding(self.window + offset) {
            lock(f).write_bar(off, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = 0xc000_0000;

    /// A function with a 4 KiB BAR that remembers what was written to it.
    struct Fake {
        config: PciConfig,
        written: Vec<(u64, Vec<u8>)>,
    }

    impl PciFunction for Fake {
        fn read_config(&mut self, offset: usize, data: &mut [u8]) {
            self.config.read(offset, data);
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn bar_window(&self) -> Option<(u64, u64)> {
            self.config.bar0_window()
        }
        fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_bar(&mut self, offset: u64, data: &[u8]) {
            self.written.push((offset, data.to_vec()));
        }
    }

    fn config_read(bus: &mut PciBus, slot: u32, reg: u32, len: usize) -> u32 {
        PioDevice::write(bus, 0, &(1 << 31 | slot << 11 | reg & 0xfc).to_le_bytes());
        let mut b = [0u8; 4];
        PioDevice::read(bus, 4 + (reg & 3) as u16, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn config_write(bus: &mut PciBus, slot: u32, reg: u32, data: &[u8]) {
        PioDevice::write(bus, 0, &(1 << 31 | slot << 11 | reg & 0xfc).to_le_bytes());
        PioDevice::write(bus, 4 + (reg & 3) as u16, data);
    }

    fn bus_with_fake() -> (PciBus, Arc<Mutex<Fake>>) {
        let mut bus = PciBus::new(WINDOW);
        let mut config = PciConfig::new(0x1af4, 0x1041, PCI_CLASS_NETWORK_ETHERNET, 1).with_bar0(0xc000_1000, 0x1000);
        config.write(PCI_COMMAND, &PCI_COMMAND_MEMORY.to_le_bytes());
        config.add_capability(PCI_CAP_ID_VNDR, &[14, 1, 0, 0], &[]).unwrap();
        config.add_capability(PCI_CAP_ID_MSIX, &[2, 0], &[0, 0xc0]).unwrap();
        let fake = Arc::new(Mutex::new(Fake { config, written: Vec::new() }));
        assert_eq!(bus.add(fake.clone()), Some(1));
        (bus, fake)
    }

    /// What Linux's `pci_check_type1` and `pci_sanity_check` do: CONFIG_ADDRESS reads back, and
    /// a host bridge answers at 00.0; empty slots read as all ones.
    #[test]
    fn linux_finds_mechanism_1_and_the_host_bridge() {
        let (mut bus, _) = bus_with_fake();
        PioDevice::write(&mut bus, 3, &[1]);
        PioDevice::write(&mut bus, 0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        PioDevice::read(&mut bus, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        assert_eq!(config_read(&mut bus, 0, 0x0a, 2), 0x0600);
        assert_eq!(config_read(&mut bus, 0, 0, 4), u32::from(HOST_BRIDGE_DEVICE) << 16 | 0x8086);
        assert_eq!(config_read(&mut bus, 1, 0, 4), 0x1041_1af4);
        assert_eq!(config_read(&mut bus, 1, 0x0b, 1), 0x02, "class: network");
        assert_eq!(config_read(&mut bus, 2, 0, 4), u32::MAX, "an empty slot");
        // Function 1, another bus, CONFIG_ADDRESS disabled: nothing.
        PioDevice::write(&mut bus, 0, &(1u32 << 31 | 1 << 11 | 1 << 8).to_le_bytes());
        PioDevice::read(&mut bus, 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), u32::MAX);
        PioDevice::write(&mut bus, 0, &(1u32 << 31 | 1 << 16 | 1 << 11).to_le_bytes());
        PioDevice::read(&mut bus, 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), u32::MAX);
        PioDevice::write(&mut bus, 0, &(1u32 << 11).to_le_bytes());
        PioDevice::read(&mut bus, 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), u32::MAX);
    }

    #[test]
    fn capabilities_are_chained_from_the_header() {
        let (mut bus, _) = bus_with_fake();
        assert_ne!(config_read(&mut bus, 1, PCI_STATUS as u32, 2) & u32::from(PCI_STATUS_CAP_LIST), 0);
        let first = config_read(&mut bus, 1, PCI_CAPABILITY_LIST as u32, 1);
        assert_eq!(first, 0x40);
        assert_eq!(config_read(&mut bus, 1, first, 2), 0x4809, "vendor capability, next at 0x48 (aligned)");
        assert_eq!(config_read(&mut bus, 1, 0x48, 2), 0x0011, "MSI-X, the last");
        // Only its writable bits change.
        config_write(&mut bus, 1, 0x4a, &[0xff, 0xff]);
        assert_eq!(config_read(&mut bus, 1, 0x4a, 2), 0xc002);
        config_write(&mut bus, 1, 0x00, &[0, 0, 0, 0]);
        assert_eq!(config_read(&mut bus, 1, 0, 4), 0x1041_1af4, "ids are read-only");
    }

    /// Sizing (all ones, read back, restore), then a move: the BAR follows, and accesses reach
    /// the function only inside it and only while it decodes memory.
    #[test]
    fn the_bar_is_sized_moved_and_decoded() {
        let (mut bus, fake) = bus_with_fake();
        let bar = PCI_BASE_ADDRESS_0 as u32;
        config_write(&mut bus, 1, bar, &u32::MAX.to_le_bytes());
        assert_eq!(config_read(&mut bus, 1, bar, 4), 0xffff_f000, "4 KiB, 32-bit memory");
        config_write(&mut bus, 1, bar, &0xc000_1000u32.to_le_bytes());
        let mut b = [0u8; 1];
        MmioDevice::read(&mut bus, 0x1004, &mut b);
        assert_eq!(b, [4]);
        MmioDevice::read(&mut bus, 0x2004, &mut b);
        assert_eq!(b, [0xff], "outside the BAR");
        config_write(&mut bus, 1, bar, &0xc000_8000u32.to_le_bytes());
        MmioDevice::write(&mut bus, 0x8010, &[7]);
        MmioDevice::write(&mut bus, 0x1010, &[9]);
        config_write(&mut bus, 1, PCI_COMMAND as u32, &[0, 0]);
        MmioDevice::write(&mut bus, 0x8020, &[8]);
        assert_eq!(lock_fake(&fake).written, vec![(0x10, vec![7])]);
    }

    fn lock_fake(f: &Arc<Mutex<Fake>>) -> std::sync::MutexGuard<'_, Fake> {
        f.lock().unwrap()
    }

    #[test]
    fn odd_accesses_select_nothing() {
        let (mut bus, _) = bus_with_fake();
        PioDevice::write(&mut bus, 0, &(1u32 << 31 | 1 << 11).to_le_bytes());
        let mut b = [0u8; 4];
        // Two bytes at 0xcfe, four at 0xcfd: past the dword.
        PioDevice::read(&mut bus, 6, &mut b[..2]);
        assert_eq!(b[..2], [0x41, 0x10]);
        PioDevice::read(&mut bus, 5, &mut b);
        assert_eq!(b, [0xff; 4]);
        PioDevice::read(&mut bus, 1, &mut b[..2]);
        assert_eq!(b[..2], [0xff; 2]);
    }
}
