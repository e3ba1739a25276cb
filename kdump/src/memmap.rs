//! Where each page frame's `struct page` is: the memory model from VMCOREINFO.
//!
//! - SPARSEMEM (`SYMBOL(mem_section)`, `LENGTH(mem_section)`, `SIZE(mem_section)`,
//!   `OFFSET(mem_section.section_mem_map)`, `NUMBER(SECTION_SIZE_BITS)`,
//!   `NUMBER(MAX_PHYSMEM_BITS)`): with SPARSEMEM_EXTREME, `SYMBOL(mem_section)` is the value of
//!   the `mem_section` pointer (the root array, `VMCOREINFO_SYMBOL_ARRAY`) and each root points
//!   to a page of `struct mem_section`; without it the array is flat. `section_mem_map` holds
//!   `mem_map - section_start_pfn` (encoded) with flag bits below bit 5; only sections
//!   `SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP` have struct pages.
//! - `SYMBOL(vmemmap)`: one virtual array indexed by PFN, over the RAM ranges.
//! - FLATMEM `SYMBOL(mem_map)`: the address of the `mem_map` pointer, over the RAM ranges.

use serde::Serialize;

use crate::paging::Translator;
use crate::vmcoreinfo::VmcoreInfo;
use crate::{KdumpError, PhysMem, RamRange, PAGE_SHIFT};

const SECTION_MARKED_PRESENT: u64 = 1 << 0;
const SECTION_HAS_MEM_MAP: u64 = 1 << 1;
/// `SECTION_MAP_LAST_BIT` is 5 since Linux 4.13 (bits 0-4 flags); the encoded pointer is at
/// least 32-byte aligned.
const SECTION_MAP_MASK: u64 = !((1 << 5) - 1);
/// Most sections accepted (2^25: 52-bit physical space in 128 MiB sections).
const MAX_SECTIONS: u64 = 1 << 25;

/// PFNs `[pfn_start, pfn_end)` whose struct pages are consecutive from `mem_map` (kernel VA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemMapRange {
    pub pfn_start: u64,
    pub pfn_end: u64,
    pub mem_map: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Model {
    SparsememExtreme,
    Sparsemem,
    Vmemmap,
    Flatmem,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemMap {
    pub model: Model,
    /// Sorted by PFN, not overlapping.
    pub ranges: Vec<MemMapRange>,
    pub page_size: u64,
}

impl MemMap {
    /// Builds the map, reading mem_section through `tr`. `max_pfn` bounds every range.
    pub fn build<M: PhysMem + ?Sized>(
        tr: &Translator<'_, M>,
        info: &VmcoreInfo,
        ram: &[RamRange],
        max_pfn: u64,
    ) -> Result<Self, KdumpError> {
        let page_size = info
            .size("page")
            .filter(|&s| (8..=1024).contains(&s))
            .ok_or_else(|| KdumpError::Missing("SIZE(page)".into()))?;
        if let Some(ms) = info.symbol("mem_section") {
            return Self::sparsemem(tr, info, ms, page_size, max_pfn);
        }
        let over_ram = |base: u64, model| {
            let mut ranges: Vec<MemMapRange> = ram
                .iter()
                .filter_map(|r| {
                    let s = r.start >> PAGE_SHIFT;
                    let e = (r.end().div_ceil(crate::PAGE_SIZE)).min(max_pfn);
                    (s < e).then(|| MemMapRange { pfn_start: s, pfn_end: e, mem_map: base.wrapping_add(s * page_size) })
                })
                .collect();
            ranges.sort_by_key(|r| r.pfn_start);
            MemMap { model, ranges, page_size }
        };
        if let Some(vmemmap) = info.symbol("vmemmap") {
            return Ok(over_ram(vmemmap, Model::Vmemmap));
        }
        if let Some(mem_map) = info.symbol("mem_map") {
            let base = tr.read_u64(mem_map)?;
            return Ok(over_ram(base, Model::Flatmem));
        }
        Err(KdumpError::Missing("SYMBOL(mem_section), SYMBOL(vmemmap) or SYMBOL(mem_map)".into()))
    }

    fn sparsemem<M: PhysMem + ?Sized>(
        tr: &Translator<'_, M>,
        info: &VmcoreInfo,
        ms: u64,
        page_size: u64,
        max_pfn: u64,
    ) -> Result<Self, KdumpError> {
        let need = |k: &str, v: Option<u64>| v.ok_or_else(|| KdumpError::Missing(k.to_string()));
        let section_bits = need("NUMBER(SECTION_SIZE_BITS)", info.number("SECTION_SIZE_BITS").map(|v| v as u64))?;
        let physmem_bits =
            info.number("MAX_PHYSMEM_BITS").map(|v| v as u64).unwrap_or(if info.pgtable_l5() { 52 } else { 46 });
        let ms_size = need("SIZE(mem_section)", info.size("mem_section"))?;
        let map_off = need("OFFSET(mem_section.section_mem_map)", info.offset("mem_section.section_mem_map"))?;
        let roots = need("LENGTH(mem_section)", info.length("mem_section"))?;
        if !(PAGE_SHIFT as u64..=physmem_bits).contains(&section_bits)
            || physmem_bits > 52
            || !(8..=4096).contains(&ms_size)
            || map_off + 8 > ms_size
        {
            return Err(KdumpError::Implausible(format!(
                "sparsemem: SECTION_SIZE_BITS {section_bits}, MAX_PHYSMEM_BITS {physmem_bits}, SIZE(mem_section) {ms_size}"
            )));
        }
        let nr_sections = 1u64 << (physmem_bits - section_bits);
        if nr_sections > MAX_SECTIONS || roots == 0 || roots > nr_sections {
            return Err(KdumpError::Implausible(format!("{roots} mem_section roots for {nr_sections} sections")));
        }
        let pfn_shift = section_bits - PAGE_SHIFT as u64;
        let extreme = roots != nr_sections;
        let per_root = if extreme { crate::PAGE_SIZE / ms_size } else { 1 };
        let mut ranges = Vec::new();
        let mut buf = vec![0u8; (per_root * ms_size) as usize];
        for root in 0..roots {
            let (array, first_nr) = if extreme {
                let p = tr.read_u64(ms.wrapping_add(root * 8))?;
                if p == 0 {
                    continue;
                }
                (p, root * per_root)
            } else {
                (ms.wrapping_add(root * ms_size), root)
            };
            if tr.read(array, &mut buf).is_err() {
                // A root we cannot read: its sections have no usable struct pages.
                continue;
            }
            for (i, chunk) in buf.chunks_exact(ms_size as usize).enumerate() {
                let nr = first_nr + i as u64;
                let o = map_off as usize;
                let Some(word) = chunk.get(o..o + 8) else { continue };
                let map = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
                if map & (SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP)
                    != (SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP)
                {
                    continue;
                }
                let start = nr << pfn_shift;
                if start >= max_pfn {
                    continue;
                }
                let end = (start + (1 << pfn_shift)).min(max_pfn);
                let decoded = map & SECTION_MAP_MASK;
                let mem_map = decoded.wrapping_add(start.wrapping_mul(page_size));
                // Adjacent sections with consecutive struct pages merge (vmemmap).
                match ranges.last_mut() {
                    Some(MemMapRange { pfn_end, mem_map: m, pfn_start })
                        if *pfn_end == start && m.wrapping_add((start - *pfn_start) * page_size) == mem_map =>
                    {
                        *pfn_end = end
                    }
                    _ => ranges.push(MemMapRange { pfn_start: start, pfn_end: end, mem_map }),
                }
            }
        }
        Ok(MemMap { model: if extreme { Model::SparsememExtreme } else { Model::Sparsemem }, ranges, page_size })
    }

    /// The kernel VA of PFN `pfn`'s struct page, if it has one.
    pub fn page_va(&self, pfn: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.pfn_end <= pfn);
        let r = self.ranges.get(i)?;
        (r.pfn_start <= pfn).then(|| r.mem_map.wrapping_add((pfn - r.pfn_start) * self.page_size))
    }

    /// The PFN whose struct page starts at `va`.
    pub fn pfn_of(&self, va: u64) -> Option<u64> {
        self.ranges.iter().find_map(|r| {
            let off = va.wrapping_sub(r.mem_map);
            let idx = off / self.page_size;
            (off % self.page_size == 0 && idx < r.pfn_end - r.pfn_start).then_some(r.pfn_start + idx)
        })
    }
}
