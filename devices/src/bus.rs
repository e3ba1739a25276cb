//! Port-I/O bus: maps guest port ranges to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::{PioDevice, VmRequest};

/// A device shared between the vCPU threads that may access it.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("port range {base:#x}+{len} is empty or wraps past 0xffff")]
    BadRange { base: u16, len: u16 },
    #[error("port range {base:#x}+{len} overlaps the device at {other:#x}")]
    Overlap { base: u16, len: u16, other: u16 },
    #[error("MMIO range {base:#x}+{len:#x} is empty or wraps")]
    BadMmioRange { base: u64, len: u64 },
    #[error("MMIO range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    MmioOverlap { base: u64, len: u64, other: u64 },
}

/// No device decodes the port of a guest access.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("no device at port {port:#x}")]
pub struct NoDevice {
    pub port: u16,
}

#[derive(Clone)]
struct Entry {
    len: u16,
    device: SharedPioDevice,
}

/// The port-I/O bus. Reads from ports with no device return all ones, writes are ignored, as
/// on a PC with nothing decoding that address.
#[derive(Clone, Default)]
pub struct PioBus {
    devices: BTreeMap<u16, Entry>,
}

impl PioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `device` for ports `base..base+len`.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedPioDevice) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::BadRange { base, len });
        }
        let end = base as u32 + len as u32;
        if let Some((&other, _)) =
            self.devices.range(..end as u16).next_back().filter(|(&b, e)| b as u32 + e.len as u32 > base as u32)
        {
            return Err(BusError::Overlap { base, len, other });
        }
        if end <= u16::MAX as u32 {
            if let Some((&other, _)) = self.devices.range(base..end as u16).next() {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &Entry)> {
        self.devices
            .range(..=port)
            .next_back()
            .filter(|(&b, e)| (port as u32) < b as u32 + e.len as u32)
            .map(|(&b, e)| (port - b, e))
    }

    /// Whether some device decodes `port`.
    pub fn contains(&self, port: u16) -> bool {
        self.find(port).is_some()
    }

    /// A guest `IN`. Returns false (and fills `data` with 0xff) when no device is there.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A guest `OUT`: what the device asks the VM to do, or [`NoDevice`].
    pub fn write(&self, port: u16, data: &[u8]) -> Result<Option<VmRequest>, NoDevice> {
        match self.find(port) {
            Some((offset, entry)) => Ok(lock(&entry.device).write(offset, data)),
            None => Err(NoDevice { port }),
        }
    }
}

/// A device in guest physical memory (MMIO). `offset` is relative to its base.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the vCPU threads that may access it.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// The MMIO bus: non-overlapping windows in the MMIO hole.
#[derive(Clone, Default)]
pub struct MmioBus {
    devices: BTreeMap<u64, (u64, SharedMmioDevice)>,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `device` for `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedMmioDevice) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadMmioRange { base, len })?;
        let clash = self.devices.iter().find(|(&b, (l, _))| b < end && base < b + l);
        if let Some((&other, _)) = clash {
            return Err(BusError::MmioOverlap { base, len, other });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedMmioDevice)> {
        self.devices.range(..=addr).next_back().filter(|(&b, (l, _))| addr - b < *l).map(|(&b, (_, d))| (addr - b, d))
    }

    /// A guest read; false (and all ones) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, d)) => {
                d.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A guest write; false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, d)) => {
                d.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, recovering from a poisoned mutex: a vCPU thread that panicked while holding
/// it must not take every other vCPU down with it.
fn lock(device: &SharedPioDevice) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest> {
            self.writes.push((offset, data.to_vec()));
            (offset == 1).then_some(VmRequest::PowerOff)
        }
    }

    #[test]
    fn routes_by_offset_and_misses_read_ones() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(b, [0xff]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(bus.write(0x3f9, &[7]), Ok(Some(VmRequest::PowerOff)));
        assert_eq!(bus.write(0x3f8, &[8]), Ok(None));
        assert_eq!(bus.write(0x500, &[8]), Err(NoDevice { port: 0x500 }));
        assert_eq!(dev.lock().unwrap().writes, vec![(1, vec![7]), (0, vec![8])]);
    }

    #[derive(Default)]
    struct Mem(Vec<(u64, Vec<u8>)>);

    impl MmioDevice for Mem {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn mmio_bus_routes_and_rejects_overlaps() {
        let dev = Arc::new(Mutex::new(Mem::default()));
        let mut bus = MmioBus::new();
        bus.insert(0xd000_0000, 0x200, dev.clone()).unwrap();
        bus.insert(0xd000_1000, 0x200, dev.clone()).unwrap();
        assert!(matches!(bus.insert(0xd000_01ff, 2, dev.clone()), Err(BusError::MmioOverlap { .. })));
        assert!(matches!(bus.insert(0xcfff_ffff, 2, dev.clone()), Err(BusError::MmioOverlap { .. })));
        assert!(matches!(bus.insert(u64::MAX, 2, dev.clone()), Err(BusError::BadMmioRange { .. })));
        assert!(matches!(bus.insert(5, 0, dev.clone()), Err(BusError::BadMmioRange { .. })));
        let mut b = [0u8; 4];
        assert!(bus.read(0xd000_0010, &mut b));
        assert_eq!(b, [0x10; 4]);
        assert!(!bus.read(0xd000_0200, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(bus.write(0xd000_1004, &[1]));
        assert!(!bus.write(0xd000_2000, &[1]));
        assert_eq!(dev.lock().unwrap().0, vec![(4, vec![1])]);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let dev: SharedPioDevice = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::new();
        bus.insert(0x60, 1, dev.clone()).unwrap();
        bus.insert(0x64, 1, dev.clone()).unwrap();
        assert_eq!(bus.insert(0x5f, 2, dev.clone()), Err(BusError::Overlap { base: 0x5f, len: 2, other: 0x60 }));
        assert_eq!(bus.insert(0x63, 4, dev.clone()), Err(BusError::Overlap { base: 0x63, len: 4, other: 0x64 }));
        assert_eq!(bus.insert(0x10, 0, dev.clone()), Err(BusError::BadRange { base: 0x10, len: 0 }));
        assert_eq!(bus.insert(0xfff0, 0x20, dev.clone()), Err(BusError::BadRange { base: 0xfff0, len: 0x20 }));
        bus.insert(0xfff0, 0x10, dev).unwrap();
        assert!(bus.contains(0xffff));
        assert!(bus.contains(0x60) && !bus.contains(0x61));
    }
}
