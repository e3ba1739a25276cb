//! A synthetic guest for the unit tests: page tables (4 or 5 levels), a vmemmap of struct
//! pages behind sparsemem (extreme or flat) roots, a node with buddy free lists, and the
//! VMCOREINFO text that describes it all (Linux 6.1's x86_64 layout).

use crate::paging::tests::PtBuilder;
use crate::paging::START_KERNEL_MAP;

pub const RAM: usize = 64 << 20;
pub const PFNS: u64 = (RAM as u64) >> 12;
/// Page tables live at 0x20_0000.., the kernel "image" data at 0x30_0000.., struct pages at
/// 0x40_0000 (1 MiB for 16384 pages).
const TABLES: u64 = 0x20_0000;
const DATA: u64 = 0x30_0000;
const MEMMAP_PA: u64 = 0x40_0000;
pub const SIZE_PAGE: u64 = 64;
pub const OFF_FLAGS: u64 = 0;
pub const OFF_LRU: u64 = 8;
pub const OFF_MAPPING: u64 = 24;
pub const OFF_PRIVATE: u64 = 40;
pub const OFF_MAPCOUNT: u64 = 48;
pub const PG_LRU: u64 = 4;
pub const PG_PRIVATE: u64 = 13;
pub const PG_SWAPCACHE: u64 = 10;
pub const PG_SWAPBACKED: u64 = 19;
pub const PG_SLAB: u64 = 9;
pub const PG_HEAD: u64 = 16;
pub const BUDDY: i32 = -129;
pub const OFFLINE: i32 = -257;
const PGDAT: u64 = DATA + 0x1_0000;
const ZONE_SIZE: u64 = 0x600;
const FREE_AREA: u64 = 0x100;
const FA_SIZE: u64 = 88;
const NR_ZONES_OFF: u64 = 0x3000;

pub struct Guest {
    pub pt: PtBuilder,
    pub vmemmap: u64,
    pub l5: bool,
    pub extreme: bool,
    /// Free blocks (pfn, order) on zone 0's lists.
    free: Vec<(u64, u64)>,
    /// nr_free overrides (order, value).
    pub nr_free_override: Option<(u64, u64)>,
    pub drop_keys: Vec<&'static str>,
}

pub fn kva(pa: u64) -> u64 {
    START_KERNEL_MAP + pa
}

impl Guest {
    pub fn new(l5: bool, extreme: bool) -> Self {
        let mut pt = PtBuilder::new(RAM, TABLES, if l5 { 5 } else { 4 });
        // The kernel image mapping: the first 16 MiB, 2 MiB pages, phys_base 0.
        for i in 0..8 {
            pt.map(START_KERNEL_MAP + i * 0x20_0000, i * 0x20_0000, 21);
        }
        let vmemmap = if l5 { 0xffd4_0000_0000_0000 } else { 0xffff_ea00_0000_0000 };
        pt.map(vmemmap, MEMMAP_PA & !0x1f_ffff, 21);
        let mut g = Guest { pt, vmemmap, l5, extreme, free: Vec::new(), nr_free_override: None, drop_keys: Vec::new() };
        // Every page: _mapcount -1, as the kernel leaves it.
        for pfn in 0..PFNS {
            g.set32(pfn, OFF_MAPCOUNT, -1i32 as u32);
        }
        g
    }

    pub fn page_pa(&self, pfn: u64) -> u64 {
        MEMMAP_PA + pfn * SIZE_PAGE
    }

    pub fn page_va(&self, pfn: u64) -> u64 {
        self.vmemmap + pfn * SIZE_PAGE
    }

    pub fn w64(&mut self, pa: u64, v: u64) {
        self.pt.set(pa, v)
    }

    pub fn set64(&mut self, pfn: u64, off: u64, v: u64) {
        let pa = self.page_pa(pfn) + off;
        self.w64(pa, v)
    }

    pub fn set32(&mut self, pfn: u64, off: u64, v: u32) {
        let pa = (self.page_pa(pfn) + off) as usize;
        self.pt.mem[pa..pa + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn flags(&mut self, pfn: u64, bits: &[u64]) {
        let v = bits.iter().fold(0u64, |m, b| m | (1 << b));
        self.set64(pfn, OFF_FLAGS, v);
    }

    /// A compound page: head flags, order in the first tail's compound_order byte (offset 17 of
    /// the tail, 6.1's `OFFSET(page.compound_order)`), dtor at 16, tails' compound_head.
    pub fn compound(&mut self, head: u64, order: u64, dtor: u8, anon: bool, lru: bool) {
        if lru {
            self.flags(head, &[PG_HEAD, PG_LRU]);
        } else {
            self.flags(head, &[PG_HEAD]);
        }
        if anon {
            self.set64(head, OFF_MAPPING, 0xffff_8880_0123_4001);
        }
        let t = self.page_pa(head + 1) as usize;
        self.pt.mem[t + 16] = dtor;
        self.pt.mem[t + 17] = order as u8;
        for p in head + 1..head + (1 << order) {
            let hv = self.page_va(head) | 1;
            self.set64(p, OFF_LRU, hv);
        }
    }

    pub fn buddy(&mut self, pfn: u64, order: u64) {
        self.set32(pfn, OFF_MAPCOUNT, BUDDY as u32);
        self.set64(pfn, OFF_PRIVATE, order);
        self.free.push((pfn, order));
    }

    fn zone0(&self) -> u64 {
        PGDAT
    }

    /// Links the free lists and writes nr_free; call after every `buddy`.
    pub fn link_free_lists(&mut self) {
        let fa = |order: u64| PGDAT + FREE_AREA + order * FA_SIZE;
        for order in 0..11 {
            for mt in 0..5 {
                let head = fa(order) + mt * 16;
                self.w64(head, kva(head));
                self.w64(head + 8, kva(head));
            }
            let blocks: Vec<u64> = self.free.iter().filter(|f| f.1 == order).map(|f| f.0).collect();
            let head = fa(order);
            let mut prev = kva(head);
            for &pfn in &blocks {
                let lru_va = self.page_va(pfn) + OFF_LRU;
                if prev == kva(head) {
                    self.w64(head, lru_va);
                } else {
                    let prev_pa = prev - self.vmemmap + MEMMAP_PA;
                    self.w64(prev_pa, lru_va);
                }
                self.set64(pfn, OFF_LRU, kva(head));
                self.set64(pfn, OFF_LRU + 8, prev);
                prev = lru_va;
            }
            let nr = match self.nr_free_override {
                Some((o, v)) if o == order => v,
                _ => blocks.len() as u64,
            };
            self.w64(fa(order) + 80, nr);
        }
        let nz = (PGDAT + NR_ZONES_OFF) as usize;
        self.pt.mem[nz..nz + 4].copy_from_slice(&2u32.to_le_bytes());
        // Zone 1: empty lists.
        for order in 0..11 {
            for mt in 0..5 {
                let head = PGDAT + ZONE_SIZE + FREE_AREA + order * FA_SIZE + mt * 16;
                self.w64(head, kva(head));
            }
        }
        let _ = self.zone0();
    }

    /// mem_section: extreme (2048 roots of 256) or flat (4 sections of 16 MiB).
    fn sections(&mut self) -> (u64, u64, u64, u64) {
        let encoded = self.vmemmap | 3; // SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP
        if self.extreme {
            let roots = DATA;
            let sec = DATA + 0x4000;
            self.w64(roots, kva(sec));
            self.w64(sec, encoded);
            (kva(roots), 2048, 27, 46)
        } else {
            let arr = DATA + 0x8000;
            for s in 0..4u64 {
                // Each section's encoded map is mem_map - start_pfn: the vmemmap base.
                self.w64(arr + s * 16, encoded);
            }
            (kva(arr), 4, 24, 26)
        }
    }

    pub fn vmcoreinfo(&mut self) -> String {
        self.link_free_lists();
        let (ms, len, ssb, mpb) = self.sections();
        let mut t = format!(
            "OSRELEASE=6.1.0-test-amd64\nPAGESIZE=4096\nSYMBOL(init_uts_ns)={uts:x}\nOFFSET(uts_namespace.name)=0\n\
SYMBOL(mem_section)={ms:x}\nLENGTH(mem_section)={len}\nSIZE(mem_section)=16\nOFFSET(mem_section.section_mem_map)=0\n\
NUMBER(SECTION_SIZE_BITS)={ssb}\nNUMBER(MAX_PHYSMEM_BITS)={mpb}\nSIZE(page)=64\nSIZE(zone)={ZONE_SIZE}\nSIZE(free_area)={FA_SIZE}\n\
SIZE(list_head)=16\nOFFSET(page.flags)=0\nOFFSET(page._refcount)=52\nOFFSET(page.mapping)=24\nOFFSET(page.lru)=8\n\
OFFSET(page._mapcount)=48\nOFFSET(page.private)=40\nOFFSET(page.compound_dtor)=16\nOFFSET(page.compound_order)=17\n\
OFFSET(page.compound_head)=8\nOFFSET(pglist_data.node_zones)=0\nOFFSET(pglist_data.nr_zones)={NR_ZONES_OFF}\n\
OFFSET(zone.free_area)={FREE_AREA}\nOFFSET(free_area.free_list)=0\nOFFSET(list_head.next)=0\nOFFSET(list_head.prev)=8\n\
LENGTH(zone.free_area)=11\nLENGTH(free_area.free_list)=5\nNUMBER(NR_FREE_PAGES)=0\nNUMBER(PG_lru)=4\nNUMBER(PG_private)=13\n\
NUMBER(PG_swapcache)=10\nNUMBER(PG_swapbacked)=19\nNUMBER(PG_slab)=9\nNUMBER(PG_head_mask)=65536\n\
NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\nNUMBER(HUGETLB_PAGE_DTOR)=2\nNUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257\n\
NUMBER(phys_base)=0\nSYMBOL(init_top_pgt)={pgt:x}\nNUMBER(pgtable_l5_enabled)={l5}\nSYMBOL(contig_page_data)={pgdat:x}\n\
KERNELOFFSET=0\nNUMBER(sme_mask)=0\nCRASHTIME=1700000000\n",
            uts = kva(DATA + 0x2_0000),
            pgt = kva(self.pt.root),
            l5 = u8::from(self.l5),
            pgdat = kva(PGDAT),
        );
        let uts = (DATA + 0x2_0000) as usize;
        self.pt.mem[uts..uts + 6].copy_from_slice(b"Linux\0");
        self.pt.mem[uts + 130..uts + 130 + 15].copy_from_slice(b"6.1.0-test-amd6");
        for k in &self.drop_keys {
            t = t.lines().filter(|l| !l.starts_with(k)).map(|l| format!("{l}\n")).collect();
        }
        t
    }
}

/// The standard population: one page of each class.
pub struct Expect {
    pub cache: Vec<u64>,
    pub cache_private: Vec<u64>,
    pub user: Vec<u64>,
    pub free: Vec<u64>,
    pub offline: Vec<u64>,
    pub kept_special: Vec<u64>,
}

pub fn populate(g: &mut Guest) -> Expect {
    g.flags(100, &[PG_LRU]);
    g.set64(100, OFF_MAPPING, 0xffff_8880_0100_0000);
    g.flags(101, &[PG_LRU, PG_PRIVATE]);
    g.flags(102, &[PG_LRU]);
    g.set64(102, OFF_MAPPING, 0xffff_8880_0200_0001);
    g.flags(103, &[PG_SWAPCACHE, PG_SWAPBACKED]);
    // Slab page whose mapping field has bit 0 set: not anon.
    g.flags(104, &[PG_SLAB]);
    g.set64(104, OFF_MAPPING, 0xffff_8880_0300_0001);
    // Swapcache without swapbacked: not cache.
    g.flags(105, &[PG_SWAPCACHE]);
    // Anon THP of order 3 at 512; hugetlb (file) of order 2 at 1024.
    g.compound(512, 3, 0, true, true);
    g.compound(1024, 2, 2, false, false);
    // Non-anon, non-hugetlb compound at 1536 (file THP on LRU): cache at head only.
    g.compound(1536, 2, 1, false, true);
    g.set64(1536, OFF_MAPPING, 0xffff_8880_0400_0000);
    g.buddy(2048, 4);
    g.buddy(3001, 0);
    g.buddy(8192, 10);
    g.set32(4000, OFF_MAPCOUNT, OFFLINE as u32);
    let r: Vec<u64> = (0..16).map(|i| 2048 + i).chain([3001]).chain(8192..9216).collect();
    Expect {
        cache: [100, 103].into_iter().chain(1536..1540).collect(),
        cache_private: vec![101],
        user: (512..520).chain(1024..1028).chain([102]).collect(),
        free: r,
        offline: vec![4000],
        kept_special: vec![104, 105],
    }
}
