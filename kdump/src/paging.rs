//! x86_64 kernel virtual to physical addresses through the guest's own page tables.
//!
//! The root table is `SYMBOL(init_top_pgt)` (`swapper_pg_dir` on older kernels), a kernel-image
//! symbol: its physical address is `va - __START_KERNEL_map + phys_base`, the kernel's own
//! `__pa_symbol` (KASLR included: `phys_base` carries the physical slide). Every other address
//! (direct map, vmemmap, vmalloc) is walked: 4 or 5 levels (`NUMBER(pgtable_l5_enabled)`),
//! 1 GiB and 2 MiB pages, `NUMBER(sme_mask)` cleared from entries. The last translation is
//! cached, which makes walking a vmemmap (2 MiB pages) one table walk per 32768 struct pages.

use std::cell::Cell;

use crate::vmcoreinfo::VmcoreInfo;
use crate::{KdumpError, PhysMem};

/// `__START_KERNEL_map`.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Physical address bits 12-51 of a page table entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1;
const PAGE_PS: u64 = 1 << 7;

pub struct Translator<'m, M: PhysMem + ?Sized> {
    mem: &'m M,
    /// Physical address of the top-level table.
    root: u64,
    levels: u8,
    sme_mask: u64,
    /// (va base, size, pa base) of the last translation.
    last: Cell<Option<(u64, u64, u64)>>,
}

impl<'m, M: PhysMem + ?Sized> Translator<'m, M> {
    /// From VMCOREINFO: `SYMBOL(init_top_pgt)` (or `swapper_pg_dir`), `NUMBER(phys_base)`,
    /// `NUMBER(pgtable_l5_enabled)`, `NUMBER(sme_mask)`.
    pub fn from_vmcoreinfo(mem: &'m M, info: &VmcoreInfo) -> Result<Self, KdumpError> {
        let pgd = info
            .symbol("init_top_pgt")
            .or_else(|| info.symbol("swapper_pg_dir"))
            .ok_or_else(|| KdumpError::Missing("SYMBOL(init_top_pgt)".into()))?;
        let phys_base = info.phys_base().ok_or_else(|| KdumpError::Missing("NUMBER(phys_base)".into()))?;
        let root = kernel_image_pa(pgd, phys_base)
            .ok_or(KdumpError::Translate { vaddr: pgd, reason: "init_top_pgt is not in the kernel image mapping" })?;
        let sme_mask = info.number("sme_mask").unwrap_or(0) as u64;
        Ok(Self::new(mem, root, if info.pgtable_l5() { 5 } else { 4 }, sme_mask))
    }

    /// `root`: physical address of the PML4 (`levels` 4) or PML5 (`levels` 5).
    pub fn new(mem: &'m M, root: u64, levels: u8, sme_mask: u64) -> Self {
        Self { mem, root: root & ADDR_MASK, levels: if levels == 5 { 5 } else { 4 }, sme_mask, last: Cell::new(None) }
    }

    pub fn levels(&self) -> u8 {
        self.levels
    }

    pub fn mem(&self) -> &'m M {
        self.mem
    }

    /// Whether `va` is canonical for the paging mode.
    fn canonical(&self, va: u64) -> bool {
        let bits = if self.levels == 5 { 57 } else { 48 };
        let top = (va as i64) >> (bits - 1);
        top == 0 || top == -1
    }

    pub fn translate(&self, va: u64) -> Result<u64, KdumpError> {
        if let Some((base, size, pa)) = self.last.get() {
            if va.wrapping_sub(base) < size {
                return Ok(pa + (va - base));
            }
        }
        if !self.canonical(va) {
            return Err(KdumpError::Translate { vaddr: va, reason: "not canonical" });
        }
        let shifts: &[u32] = if self.levels == 5 { &[48, 39, 30, 21, 12] } else { &[39, 30, 21, 12] };
        let mut table = self.root;
        for &shift in shifts {
            let idx = (va >> shift) & 0x1ff;
            let entry = self
                .mem
                .read_u64(table + idx * 8)
                .map_err(|_| KdumpError::Translate { vaddr: va, reason: "page table outside guest RAM" })?;
            if entry & PRESENT == 0 {
                return Err(KdumpError::Translate { vaddr: va, reason: "not present" });
            }
            let next = entry & ADDR_MASK & !self.sme_mask;
            if shift == 12 || ((shift == 21 || shift == 30) && entry & PAGE_PS != 0) {
                let size = 1u64 << shift;
                let pa_base = next & !(size - 1);
                let va_base = va & !(size - 1);
                self.last.set(Some((va_base, size, pa_base)));
                return Ok(pa_base | (va & (size - 1)));
            }
            table = next;
        }
        Err(KdumpError::Translate { vaddr: va, reason: "walk did not end" })
    }

    /// Reads `buf.len()` bytes at kernel virtual address `va` (page by page).
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), KdumpError> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va.wrapping_add(done as u64);
            let in_page = (crate::PAGE_SIZE - (cur & (crate::PAGE_SIZE - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            let pa = self.translate(cur)?;
            self.mem.read(pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    pub fn read_u64(&self, va: u64) -> Result<u64, KdumpError> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// `__pa_symbol`: a kernel image address to physical.
pub fn kernel_image_pa(va: u64, phys_base: u64) -> Option<u64> {
    va.checked_sub(START_KERNEL_MAP).map(|off| off.wrapping_add(phys_base))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{OutOfRange, SliceMem};

    /// Builds page tables in a flat buffer: tables are allocated from `next`.
    pub struct PtBuilder {
        pub mem: Vec<u8>,
        pub root: u64,
        pub levels: u8,
        next: u64,
    }

    impl PtBuilder {
        pub fn new(size: usize, table_area: u64, levels: u8) -> Self {
            let mut b = Self { mem: vec![0; size], root: 0, levels, next: table_area };
            b.root = b.alloc();
            b
        }

        fn alloc(&mut self) -> u64 {
            let t = self.next;
            self.next += 4096;
            assert!(self.next as usize <= self.mem.len(), "page table area full");
            t
        }

        pub fn get(&self, pa: u64) -> u64 {
            let o = pa as usize;
            u64::from_le_bytes(self.mem[o..o + 8].try_into().unwrap())
        }

        pub fn set(&mut self, pa: u64, v: u64) {
            let o = pa as usize;
            self.mem[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }

        /// Maps `va` to `pa` with a page of `1 << page_shift` bytes (12, 21 or 30).
        pub fn map(&mut self, va: u64, pa: u64, page_shift: u32) {
            let shifts: Vec<u32> = if self.levels == 5 { vec![48, 39, 30, 21, 12] } else { vec![39, 30, 21, 12] };
            let mut table = self.root;
            for &shift in &shifts {
                let slot = table + ((va >> shift) & 0x1ff) * 8;
                if shift == page_shift {
                    let ps = if shift == 12 { 0 } else { PAGE_PS };
                    self.set(slot, pa | PRESENT | 2 | ps);
                    return;
                }
                let e = self.get(slot);
                table = if e & PRESENT != 0 {
                    e & ADDR_MASK
                } else {
                    let t = self.alloc();
                    self.set(slot, t | PRESENT | 2);
                    t
                };
            }
        }
    }

    #[test]
    fn four_level_walks_with_every_page_size() {
        let mut b = PtBuilder::new(0x80_0000, 0x10_0000, 4);
        b.map(0xffff_8880_0000_0000, 0x0, 30); // 1 GiB direct map
        b.map(0xffff_ea00_0000_0000, 0x40_0000, 21); // vmemmap 2 MiB
        b.map(0xffff_c900_0000_1000, 0x3000, 12);
        let mem = SliceMem::new(vec![(0, &b.mem)]);
        let t = Translator::new(&mem, b.root, 4, 0);
        assert_eq!(t.translate(0xffff_8880_0012_3456).unwrap(), 0x12_3456);
        assert_eq!(t.translate(0xffff_ea00_0001_0008).unwrap(), 0x41_0008);
        assert_eq!(t.translate(0xffff_c900_0000_1ff8).unwrap(), 0x3ff8);
        assert!(matches!(t.translate(0xffff_c900_0000_2000), Err(KdumpError::Translate { reason: "not present", .. })));
        assert!(matches!(
            t.translate(0x0000_8000_0000_0000),
            Err(KdumpError::Translate { reason: "not canonical", .. })
        ));
        // Cached translations stay right.
        assert_eq!(t.translate(0xffff_ea00_001f_fff8).unwrap(), 0x5f_fff8);
        assert_eq!(t.translate(0xffff_8880_0000_0000).unwrap(), 0);
        let mut buf = [0u8; 16];
        t.read(0xffff_8880_0000_0ff8, &mut buf).unwrap();
    }

    #[test]
    fn five_level_walks() {
        let mut b = PtBuilder::new(0x40_0000, 0x10_0000, 5);
        // A 57-bit address: PML5 index 0x1ff-something.
        b.map(0xff11_0000_0000_0000, 0x20_0000, 21);
        b.map(0xffd4_0000_0000_0000, 0x5000, 12);
        let mem = SliceMem::new(vec![(0, &b.mem)]);
        let t = Translator::new(&mem, b.root, 5, 0);
        assert_eq!(t.levels(), 5);
        assert_eq!(t.translate(0xff11_0000_0000_1234).unwrap(), 0x20_1234);
        assert_eq!(t.translate(0xffd4_0000_0000_0042).unwrap(), 0x5042);
        // Not canonical for 5 levels; a 4-level walk of the same tables finds nothing there.
        assert!(t.translate(0xfe00_0000_0000_0000).is_err());
        let t4 = Translator::new(&mem, b.root, 4, 0);
        assert!(t4.translate(0xff11_0000_0000_1234).is_err());
    }

    #[test]
    fn hostile_tables_fail_cleanly() {
        struct Evil;
        impl PhysMem for Evil {
            fn read(&self, _: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
                // Every entry present, pointing far outside RAM.
                buf.fill(0xff);
                Ok(())
            }
        }
        let t = Translator::new(&Evil, 0, 4, 0);
        // A 1 GiB page at the top of the physical address space: translated, reading fails.
        let pa = t.translate(0xffff_8880_0000_0000).unwrap();
        assert!(pa >= 0x000f_ffff_c000_0000);
        let mut b = PtBuilder::new(0x10_0000, 0x1000, 4);
        let root = b.root;
        // A PML4 entry pointing to a table outside memory.
        b.set(root + 0x111 * 8, 0x7fff_0000_0000 | PRESENT);
        let mem = SliceMem::new(vec![(0, &b.mem)]);
        let t = Translator::new(&mem, root, 4, 0);
        assert!(matches!(
            t.translate(0xffff_8880_0000_0000),
            Err(KdumpError::Translate { reason: "page table outside guest RAM", .. })
        ));
        // A self-referencing table: the walk is bounded by the level count.
        b.set(root + 0x1d4 * 8, root | PRESENT);
        let mem = SliceMem::new(vec![(0, &b.mem)]);
        let t = Translator::new(&mem, root, 4, 0);
        let _ = t.translate(0xffff_ea00_0000_0000);
    }

    #[test]
    fn sme_mask_is_cleared() {
        let mut b = PtBuilder::new(0x40_0000, 0x10_0000, 4);
        b.map(0xffff_8880_0000_0000, 0x20_0000 | (1 << 47), 21);
        let mem = SliceMem::new(vec![(0, &b.mem)]);
        let t = Translator::new(&mem, b.root, 4, 1 << 47);
        assert_eq!(t.translate(0xffff_8880_0000_0010).unwrap(), 0x20_0010);
    }

    #[test]
    fn kernel_image_symbols() {
        assert_eq!(kernel_image_pa(0xffff_ffff_8300_0000, 0x1000_0000), Some(0x1300_0000));
        assert_eq!(kernel_image_pa(0xffff_8880_0000_0000, 0), None);
        let info = VmcoreInfo::parse("OSRELEASE=6.1\nSYMBOL(init_top_pgt)=ffffffff82000000\n");
        let mem = SliceMem::new(vec![]);
        assert!(matches!(Translator::from_vmcoreinfo(&mem, &info), Err(KdumpError::Missing(_))));
    }
}
