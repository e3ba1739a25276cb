//! Kernel virtual memory of the crashed guest: reads through its own page tables, bounded.

use kdump::paging::Translator;
use kdump::{KdumpError, PhysMem, VmcoreInfo};

/// The largest single read the analysis makes (a ring buffer's data area is read in pieces).
pub const MAX_READ: usize = 16 << 20;

/// Reads kernel virtual addresses of the crashed guest.
pub struct KernelMem<'m, M: PhysMem + ?Sized> {
    map: Map<'m, M>,
}

enum Map<'m, M: PhysMem + ?Sized> {
    /// The guest's page tables.
    Paged(Translator<'m, M>),
    /// `pa = va - base` for every address (tests and fuzz targets: no page tables to build).
    Linear { mem: &'m M, base: u64 },
}

impl<'m, M: PhysMem + ?Sized> KernelMem<'m, M> {
    pub fn from_vmcoreinfo(mem: &'m M, info: &VmcoreInfo) -> Result<Self, KdumpError> {
        Ok(Self::new(Translator::from_vmcoreinfo(mem, info)?))
    }

    pub fn new(tr: Translator<'m, M>) -> Self {
        Self { map: Map::Paged(tr) }
    }

    /// Kernel address `va` is guest physical `va - base` (wrapping), for tests and fuzzing.
    pub fn linear(mem: &'m M, base: u64) -> Self {
        Self { map: Map::Linear { mem, base } }
    }

    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), KdumpError> {
        if buf.len() > MAX_READ {
            return Err(KdumpError::Implausible(format!("a read of {} bytes", buf.len())));
        }
        match &self.map {
            Map::Paged(tr) => tr.read(va, buf),
            Map::Linear { mem, base } => Ok(mem.read(va.wrapping_sub(*base), buf)?),
        }
    }

    pub fn bytes(&self, va: u64, len: usize) -> Result<Vec<u8>, KdumpError> {
        if len > MAX_READ {
            return Err(KdumpError::Implausible(format!("a read of {len} bytes at {va:#x}")));
        }
        let mut v = vec![0u8; len];
        self.read(va, &mut v)?;
        Ok(v)
    }

    pub fn u64(&self, va: u64) -> Result<u64, KdumpError> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, va: u64) -> Result<u32, KdumpError> {
        let mut b = [0u8; 4];
        self.read(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u16(&self, va: u64) -> Result<u16, KdumpError> {
        let mut b = [0u8; 2];
        self.read(va, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn u8(&self, va: u64) -> Result<u8, KdumpError> {
        let mut b = [0u8; 1];
        self.read(va, &mut b)?;
        Ok(b[0])
    }

    /// A NUL-terminated string of at most `max` bytes (lossy UTF-8).
    pub fn cstr(&self, va: u64, max: usize) -> Result<String, KdumpError> {
        let b = self.bytes(va, max)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }
}
