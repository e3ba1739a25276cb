//! Filtered vmcores of a Linux x86_64 guest, host side, sans-IO (apart from the compression
//! threads of [`diskdump::write_kdump`]).
//!
//! ```text
//! guest RAM (PhysMem) + RAM ranges + VMCOREINFO text
//!   -> vmcoreinfo::VmcoreInfo   the KEY=value entries
//!   -> paging::Translator       kernel VA -> PA with the guest's own page tables
//!   -> memmap::MemMap           where each PFN's struct page is (mem_section / vmemmap / mem_map)
//!   -> classify::classify       per-PFN dump-level decisions as makedumpfile makes them,
//!                               with a guard per level (ClassifyReport says what was filtered)
//!   -> diskdump::write_kdump    the kdump-compressed file (header, sub-header + notes, bitmaps,
//!                               page descriptors, pages compressed on all cores)
//!   or elfcore::write_elf       an ELF core (QEMU dump-guest-memory layout: PT_NOTE with
//!                               NT_PRSTATUS/QEMU notes per CpuState and VMCOREINFO, a
//!                               PT_LOAD per RAM range; excluded and zero pages are holes)
//!
//! flat::rearrange               makedumpfile -F's flattened stream -> the kdump file
//! vmcoreinfo::parse_note        the kernel's VMCOREINFO note at a page of guest RAM
//! ```
//!
//! Files are written at offsets through [`WriteAt`] (a `&File`, or a `Vec<u8>` in tests).
//!
//! Guest memory is hostile: every read goes through [`PhysMem::read`], which must bounds-check;
//! every walk here (page tables, mem_section roots, free lists) is bounded and cycle-checked, and
//! nothing indexes without a check.

pub mod classify;
pub mod diskdump;
pub mod elf;
pub mod elfcore;
pub mod flat;
pub mod lzo;
pub mod memmap;
pub mod paging;
#[cfg(test)]
mod testutil;
pub mod vmcoreinfo;

pub use classify::{classify, Bitmap, Classification, ClassifyOptions, ClassifyReport, LevelState, LevelStatus};
pub use diskdump::{write_kdump, Compression, KdumpFile, KdumpOptions, KdumpSummary, NoteSet};
pub use elfcore::{CpuState, ElfLayout};
pub use vmcoreinfo::VmcoreInfo;

/// x86_64 page size: the only one handled.
pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;

/// A read outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest physical range {paddr:#x}+{len:#x} is outside guest RAM")]
pub struct OutOfRange {
    pub paddr: u64,
    pub len: usize,
}

/// The guest's physical memory, read-only. Implementations must bounds-check every read and
/// return [`OutOfRange`] for any byte outside RAM (never panic).
pub trait PhysMem {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), OutOfRange>;

    /// `[paddr, paddr + len)` in place, where the memory can lend it as it is (no snapshot to
    /// patch it with): writers then write from it instead of copying it first. `None` (the
    /// default) means "use [`read`](Self::read)".
    fn slice(&self, _paddr: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    fn read_u64(&self, paddr: u64) -> Result<u64, OutOfRange> {
        let mut b = [0u8; 8];
        self.read(paddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

impl<T: PhysMem + ?Sized> PhysMem for &T {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        (**self).read(paddr, buf)
    }

    fn slice(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        (**self).slice(paddr, len)
    }
}

/// One range of guest RAM: `[start, start + len)`, guest physical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RamRange {
    pub start: u64,
    pub len: u64,
}

impl RamRange {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// A [`PhysMem`] over byte slices at guest physical addresses (tests, small tools).
#[derive(Debug, Default, Clone)]
pub struct SliceMem<'a> {
    regions: Vec<(u64, &'a [u8])>,
}

impl<'a> SliceMem<'a> {
    pub fn new(mut regions: Vec<(u64, &'a [u8])>) -> Self {
        regions.sort_by_key(|r| r.0);
        Self { regions }
    }

    pub fn ranges(&self) -> Vec<RamRange> {
        self.regions.iter().map(|(s, b)| RamRange { start: *s, len: b.len() as u64 }).collect()
    }
}

impl PhysMem for SliceMem<'_> {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let err = OutOfRange { paddr, len: buf.len() };
        let idx = self.regions.partition_point(|r| r.0 <= paddr);
        let (start, bytes) = *idx.checked_sub(1).and_then(|i| self.regions.get(i)).ok_or(err)?;
        let off = usize::try_from(paddr - start).map_err(|_| err)?;
        let src = bytes.get(off..off.checked_add(buf.len()).ok_or(err)?).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn slice(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        let (start, bytes) = *self.regions.get(self.regions.partition_point(|r| r.0 <= paddr).checked_sub(1)?)?;
        let off = usize::try_from(paddr - start).ok()?;
        bytes.get(off..off.checked_add(len)?)
    }
}

/// Where a file is written at offsets (`pwrite`): a file, or a buffer in tests and tools.
pub trait WriteAt {
    /// Writes all of `buf` at `offset` (past the end: the gap reads as zeros).
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Sets the length (truncates or extends with zeros).
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
}

impl WriteAt for Vec<u8> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start.checked_add(buf.len()).ok_or_else(|| std::io::Error::other("offset overflows"))?;
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.resize(usize::try_from(len).map_err(std::io::Error::other)?, 0);
        Ok(())
    }
}

impl WriteAt for &std::fs::File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(*self, buf, offset)
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        std::fs::File::set_len(self, len)
    }
}

impl<T: WriteAt + ?Sized> WriteAt for &mut T {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        (**self).write_all_at(buf, offset)
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        (**self).set_len(len)
    }
}

/// Everything that can go wrong here.
#[derive(Debug, thiserror::Error)]
pub enum KdumpError {
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    #[error("cannot translate kernel address {vaddr:#x}: {reason}")]
    Translate { vaddr: u64, reason: &'static str },
    #[error("VMCOREINFO lacks {0}")]
    Missing(String),
    #[error("implausible guest data: {0}")]
    Implausible(String),
    #[error("invalid dump level {0} (0-31)")]
    BadLevel(u8),
    #[error("not a kdump-compressed file: {0}")]
    Format(String),
    #[error("compression failed: {0}")]
    Compress(String),
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// A page's compressed data the codec refused.
    #[error("cannot decompress page {pfn:#x}")]
    DecompressPage {
        pfn: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("layout overflows 64 bits")]
    Overflow,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_mem_bounds() {
        let a = [1u8; 16];
        let b = [2u8; 8];
        let m = SliceMem::new(vec![(0x1000, &b), (0, &a)]);
        let mut buf = [0u8; 4];
        m.read(12, &mut buf).unwrap();
        assert_eq!(buf, [1; 4]);
        assert!(m.read(13, &mut buf).is_err());
        assert!(m.read(0x1004, &mut buf).is_ok());
        assert!(m.read(0x1005, &mut buf).is_err());
        assert!(m.read(u64::MAX, &mut buf).is_err());
        assert!(m.read(0x800, &mut buf).is_err());
        assert_eq!(m.ranges()[1], RamRange { start: 0x1000, len: 8 });
    }
}
