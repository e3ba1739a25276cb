//! bench-kdump: a Linux 6.1 x86_64 memory layout that a dump filter can classify, for
//! `make bench`'s filtered-dump comparison (crashvmm's kdump-compressed dump against QEMU's
//! `dump-guest-memory` and `makedumpfile -d 31`), then pvpanic PANICKED.
//!
//! What a filter reads, all of it where a 6.1 kernel has it (`Documentation/admin-guide/
//! kdump/vmcoreinfo.rst`, `include/linux/mm_types.h`, `mmzone.h`):
//! - a VMCOREINFO ELF note at the start of a page ([`KD`] + 0x12_0000; OSRELEASE
//!   `6.1.0-57-cloud-amd64`), with the SYMBOL/OFFSET/SIZE/LENGTH/NUMBER entries of a Debian
//!   6.1 kernel (NUMA: `node_data`, `node_online_map`);
//! - 4-level kernel page tables at `init_top_pgt`: the kernel image map (`__START_KERNEL_map`,
//!   phys_base 0, 2 MiB pages), the direct map (`0xffff888000000000`, 1 GiB pages) and the
//!   vmemmap (`0xffffea0000000000`, 2 MiB pages) over the struct page array;
//! - SPARSEMEM_EXTREME `mem_section` roots (128 MiB sections, one per RAM section, marked
//!   present with a mem_map), a `struct page` (64 bytes) for every PFN up to the end of RAM;
//! - node 0's `pglist_data` with its zones (DMA, DMA32, Normal), each with 11 orders of 6
//!   migrate-type free lists; every free block is an order-10 buddy (`_mapcount` -129,
//!   `private` 10) on its zone's MOVABLE list, and `nr_free` counts them: what makedumpfile's
//!   buddy rule and crashvmm's free-page guard check;
//! - `init_uts_ns` with the release.
//!
//! Memory, in 4 MiB chunks (1024 pages) outside the first 16 MiB + the struct pages: of every
//! 60 chunks, 2 are kernel pages (slab and other, a quarter of each random), 3 are free (zero), and 55
//! alternate page cache (`PG_lru`, a mapping) and anonymous user pages (`PG_lru |
//! PG_swapbacked`, mapping | 1), each filled with a per-page 8-byte pattern: about 90% cache
//! and user, 5% free, 5% kernel with the struct pages.
//!
//! Speed: ring 0 is emulated instruction by instruction on the development machines' software
//! KVM, ring 3 runs natively but pays dearly for each first touch of a page. So ring 0 touches
//! every page to be written once (one store per page, unrolled), and ring 3 ([`crate::user`])
//! writes everything else. Lines `TG: bench-kdump: layout start` and `... layout done` let the
//! host time it.

use crate::check::{abort, check, note, verdict};
use crate::cpu::halt_forever;
use crate::global::Global;
use crate::pvpanic::{self, PVPANIC_PANICKED};
use crate::serial::line;
use crate::start_info::{StartInfo, XEN_HVM_MEMMAP_TYPE_RAM};
use crate::user;

/// The kernel's data: page tables, mem_section, node data, uts, VMCOREINFO, pglist_data.
const KD: u64 = 0x0080_0000;
const KPT: u64 = KD;
const KPT_END: u64 = KD + 0x10_0000;
const MS_ROOTS: u64 = KD + 0x10_0000;
const MS_PAGES: u64 = KD + 0x10_4000;
const MS_PAGES_MAX: u64 = 12;
const NODE_DATA: u64 = KD + 0x11_0000;
const NODE_ONLINE_MAP: u64 = KD + 0x11_2000;
const UTS: u64 = KD + 0x11_3000;
const ADDRESS_SPACE: u64 = KD + 0x11_4000;
const ANON_VMA: u64 = KD + 0x11_5000;
const NOTE: u64 = KD + 0x12_0000;
const PGDAT: u64 = KD + 0x14_0000;
/// This guest's own identity map (user-accessible), after the kernel's data.
/// The struct page array (the vmemmap's backing), 2 MiB-aligned.
const MEMMAP_PA: u64 = 0x0100_0000;

const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
const VMEMMAP: u64 = 0xffff_ea00_0000_0000;
const MB2: u64 = 2 << 20;
const GB: u64 = 1 << 30;
const CHUNK_PAGES: u64 = 1024;
const CHUNK: u64 = CHUNK_PAGES * 4096;
const FREE_ORDER: u64 = 10;
const OSRELEASE: &str = "6.1.0-57-cloud-amd64";

// struct page (6.1, 64 bytes).
const SIZE_PAGE: u64 = 64;
const OFF_LRU: u64 = 8;
const OFF_MAPPING: u64 = 24;
const OFF_INDEX: u64 = 32;
const OFF_PRIVATE: u64 = 40;
const OFF_MAPCOUNT: u64 = 48;
const PG_REFERENCED: u64 = 1;
const PG_UPTODATE: u64 = 2;
const PG_LRU: u64 = 4;
const PG_ACTIVE: u64 = 5;
const PG_SLAB: u64 = 9;
const PG_RESERVED: u64 = 12;
const PG_SWAPBACKED: u64 = 19;
const BUDDY: u32 = -129i32 as u32;
// Zones and free areas.
const MAX_NR_ZONES: u64 = 5;
const SIZE_ZONE: u64 = 1536;
const OFF_ZONE_FREE_AREA: u64 = 192;
const OFF_ZONE_SPANNED: u64 = 96;
const OFF_ZONE_VM_STAT: u64 = 1408;
const ORDERS: u64 = 11;
const MIGRATE_TYPES: u64 = 6;
const MIGRATE_MOVABLE: u64 = 1;
const SIZE_FREE_AREA: u64 = MIGRATE_TYPES * 16 + 8;
const OFF_NR_ZONES: u64 = 0x2_9e20;
const OFF_NODE_START_PFN: u64 = 0x2_9e28;
const OFF_NODE_SPANNED: u64 = 0x2_9e38;
const OFF_NODE_ID: u64 = 0x2_9e40;
const SIZE_PGLIST_DATA: u64 = 0x2_b000;
const MAX_NUMNODES: u64 = 1024;
// sparsemem.
const SECTION_SIZE_BITS: u64 = 27;
const MAX_PHYSMEM_BITS: u64 = 46;
const SECTIONS_PER_ROOT: u64 = 4096 / 16;
const NR_SECTION_ROOTS: u64 = (1 << (MAX_PHYSMEM_BITS - SECTION_SIZE_BITS)) / SECTIONS_PER_ROOT;
/// SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP | SECTION_IS_ONLINE | SECTION_IS_EARLY.
const SECTION_FLAGS: u64 = 0xf;

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_PS: u64 = 0x80;
const MAX_RANGES: usize = 8;

fn kva(pa: u64) -> u64 {
    START_KERNEL_MAP + pa
}
fn dva(pa: u64) -> u64 {
    PAGE_OFFSET + pa
}

/// What ring 3 is told and what it reports back.
#[repr(C)]
#[derive(Clone, Copy)]
struct Job {
    ranges: [(u64, u64); MAX_RANGES],
    nr_ranges: usize,
    max_pfn: u64,
    /// PFNs below this are the kernel's own (image, data, struct pages): reserved.
    reserved_end: u64,
    memmap_bytes: u64,
    nr_zones: u64,
    // Out: pages per class.
    reserved: u64,
    kernel: u64,
    cache: u64,
    user: u64,
    free: u64,
    note_len: u64,
}

static JOB: Global<Job> = Global::new(Job {
    ranges: [(0, 0); MAX_RANGES],
    nr_ranges: 0,
    max_pfn: 0,
    reserved_end: 0,
    memmap_bytes: 0,
    nr_zones: 0,
    reserved: 0,
    kernel: 0,
    cache: 0,
    user: 0,
    free: 0,
    note_len: 0,
});

fn w64(pa: u64, v: u64) {
    // SAFETY: identity-mapped RAM this scenario owns (callers stay in the layout above).
    unsafe { core::ptr::write_volatile(pa as *mut u64, v) }
}
fn w32(pa: u64, v: u32) {
    // SAFETY: as `w64`.
    unsafe { core::ptr::write_volatile(pa as *mut u32, v) }
}
fn r64(pa: u64) -> u64 {
    // SAFETY: as `w64`.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// `rep stosq`: `count` quadwords of `value` from `dst` (ring 3: native speed).
fn stosq(dst: u64, value: u64, count: u64) {
    // SAFETY: callers pass identity-mapped RAM of this layout.
    unsafe {
        core::arch::asm!("rep stosq", inout("rdi") dst => _, inout("rcx") count => _, in("rax") value,
            options(nostack, preserves_flags));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Reserved,
    Kernel,
    Free,
    Cache,
    User,
}

/// The class of chunk `c` (PFNs `c * 1024 ..`), whole chunks in RAM above the reserved area.
fn chunk_class(job: &Job, c: u64) -> Class {
    let (start, end) = (c * CHUNK_PAGES, (c + 1) * CHUNK_PAGES);
    let in_ram = job.ranges[..job.nr_ranges].iter().any(|&(s, e)| s >> 12 <= start && end <= e >> 12);
    if !in_ram || start < job.reserved_end {
        return Class::Reserved;
    }
    match c % 60 {
        0 | 30 => Class::Kernel,
        10 | 25 | 45 => Class::Free,
        n if n % 2 == 0 => Class::Cache,
        _ => Class::User,
    }
}

fn zone_of(pfn: u64) -> u64 {
    match pfn << 12 {
        a if a < 16 << 20 => 0,
        a if a < 4 * GB => 1,
        _ => 2,
    }
}

fn free_list_head(zone: u64) -> u64 {
    PGDAT + zone * SIZE_ZONE + OFF_ZONE_FREE_AREA + FREE_ORDER * SIZE_FREE_AREA + MIGRATE_MOVABLE * 16
}

fn page_pa(pfn: u64) -> u64 {
    MEMMAP_PA + pfn * SIZE_PAGE
}

/// One struct page: flags, lru (next, prev), mapping, index, private, _mapcount, _refcount.
#[allow(clippy::too_many_arguments)]
fn set_page(
    pfn: u64,
    flags: u64,
    lru: (u64, u64),
    mapping: u64,
    index: u64,
    private: u64,
    mapcount: u32,
    refcount: u32,
) {
    let p = page_pa(pfn);
    w64(p, flags);
    w64(p + OFF_LRU, lru.0);
    w64(p + OFF_LRU + 8, lru.1);
    w64(p + OFF_MAPPING, mapping);
    w64(p + OFF_INDEX, index);
    w64(p + OFF_PRIVATE, private);
    w64(p + OFF_MAPCOUNT, (refcount as u64) << 32 | mapcount as u64);
    w64(p + 56, 0);
}

fn bits(b: &[u64]) -> u64 {
    b.iter().fold(0, |m, &x| m | 1 << x)
}

/// Ring 3: every struct page, the free lists, page contents, the kernel's tables and notes.
extern "C" fn build(arg: u64) -> ! {
    // SAFETY: `arg` is JOB's address; ring 0 does not touch JOB while ring 3 runs.
    let job = unsafe { &mut *(arg as *mut Job) };
    kernel_tables(job);
    zones_init(job);
    let chunks = job.max_pfn.div_ceil(CHUNK_PAGES);
    let cache_flags = bits(&[PG_REFERENCED, PG_UPTODATE, PG_LRU]);
    let anon_flags = bits(&[PG_UPTODATE, PG_LRU, PG_ACTIVE, PG_SWAPBACKED]);
    // Per zone: the list's last node (kernel VA of its lru) and where its `next` lives.
    let mut tail = [(0u64, 0u64); 3];
    let mut nr_free = [0u64; 3];
    for z in 0..3 {
        let h = free_list_head(z);
        tail[z as usize] = (dva(h), h);
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for c in 0..chunks {
        let class = chunk_class(job, c);
        let first = c * CHUNK_PAGES;
        let last = (first + CHUNK_PAGES).min(job.max_pfn);
        match class {
            Class::Reserved => {
                for pfn in first..last {
                    set_page(pfn, 1 << PG_RESERVED, (0, 0), 0, 0, 0, u32::MAX, 1);
                }
                job.reserved += last - first;
            }
            Class::Kernel => {
                for pfn in first..last {
                    let flags = if pfn % 2 == 0 { 1 << PG_SLAB } else { 0 };
                    set_page(pfn, flags, (0, 0), 0, 0, 0, u32::MAX, 1);
                    // A quarter random (incompressible), the rest pointer-like words: about
                    // the 3-4x that zlib gets from kernel memory.
                    let pa = pfn << 12;
                    for i in 0..128 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        w64(pa + i * 8, rng);
                    }
                    stosq(pa + 1024, 0xffff_8880_0000_0000 | pfn << 6, 384);
                }
                job.kernel += last - first;
            }
            Class::Free => {
                let z = zone_of(first) as usize;
                let lru = VMEMMAP + first * SIZE_PAGE + OFF_LRU;
                let (prev_va, prev_next_pa) = tail[z];
                w64(prev_next_pa, lru);
                set_page(first, 0, (0, prev_va), 0, 0, FREE_ORDER, BUDDY, 0);
                tail[z] = (lru, page_pa(first) + OFF_LRU);
                nr_free[z] += 1;
                for pfn in first + 1..last {
                    set_page(pfn, 0, (0, 0), 0, 0, 0, u32::MAX, 0);
                }
                job.free += last - first;
            }
            Class::Cache | Class::User => {
                let (flags, mapping, mapcount) = if class == Class::Cache {
                    (cache_flags, dva(ADDRESS_SPACE), u32::MAX)
                } else {
                    (anon_flags, dva(ANON_VMA) | 1, 0)
                };
                for pfn in first..last {
                    set_page(pfn, flags, (0, 0), mapping, pfn - first, 0, mapcount, 1);
                    stosq(pfn << 12, pfn.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, 512);
                }
                if class == Class::Cache {
                    job.cache += last - first;
                } else {
                    job.user += last - first;
                }
            }
        }
    }
    for z in 0..3 {
        let h = free_list_head(z);
        let (last_va, last_next_pa) = tail[z as usize];
        w64(last_next_pa, dva(h));
        w64(h + 8, last_va);
        let fa = PGDAT + z * SIZE_ZONE + OFF_ZONE_FREE_AREA + FREE_ORDER * SIZE_FREE_AREA;
        w64(fa + MIGRATE_TYPES * 16, nr_free[z as usize]);
    }
    job.note_len = vmcoreinfo();
    user::exit()
}

/// Kernel page tables (init_top_pgt), mem_section, node data, uts.
fn kernel_tables(job: &Job) {
    stosq(KD, 0, (user::PT_AREA - KD) / 8);
    let mut next = KPT + 0x1000;
    let mut alloc = || {
        let t = next;
        next += 0x1000;
        t
    };
    let root = KPT;
    // Kernel image: 1 GiB of 2 MiB pages from phys 0 (PML4 511, PDPT 510).
    let pdpt_k = alloc();
    let pd_k = alloc();
    w64(root + 511 * 8, pdpt_k | PTE_P | PTE_RW);
    w64(pdpt_k + 510 * 8, pd_k | PTE_P | PTE_RW);
    for i in 0..512 {
        w64(pd_k + i * 8, (i << 21) | PTE_P | PTE_RW | PTE_PS);
    }
    // Direct map: 1 GiB pages over all of RAM (PML4 273).
    let pdpt_d = alloc();
    w64(root + ((PAGE_OFFSET >> 39) & 511) * 8, pdpt_d | PTE_P | PTE_RW);
    for g in 0..job.max_pfn.div_ceil(GB >> 12).min(512) {
        w64(pdpt_d + g * 8, (g << 30) | PTE_P | PTE_RW | PTE_PS);
    }
    // vmemmap: the struct page array, 2 MiB pages (PML4 468).
    let pdpt_v = alloc();
    w64(root + ((VMEMMAP >> 39) & 511) * 8, pdpt_v | PTE_P | PTE_RW);
    let mut off = 0;
    while off < job.memmap_bytes {
        let g = off >> 30;
        let mut pd = r64(pdpt_v + g * 8) & !0xfff;
        if pd == 0 {
            pd = alloc();
            if pd >= KPT_END {
                return;
            }
            w64(pdpt_v + g * 8, pd | PTE_P | PTE_RW);
        }
        w64(pd + ((off >> 21) & 511) * 8, (MEMMAP_PA + off) | PTE_P | PTE_RW | PTE_PS);
        off += MB2;
    }
    // mem_section: roots (direct map), one page of 256 sections per root in use.
    let sections = (job.max_pfn << 12).div_ceil(1 << SECTION_SIZE_BITS);
    for nr in 0..sections {
        let (s, e) = (nr << (SECTION_SIZE_BITS - 12), (nr + 1) << (SECTION_SIZE_BITS - 12));
        let has_ram = job.ranges[..job.nr_ranges].iter().any(|&(rs, re)| rs >> 12 < e && s < re >> 12);
        let root = nr / SECTIONS_PER_ROOT;
        if !has_ram || root >= MS_PAGES_MAX {
            continue;
        }
        let page = MS_PAGES + root * 0x1000;
        w64(MS_ROOTS + root * 8, dva(page));
        // section_mem_map: mem_map - section_start_pfn (the vmemmap base), with the flags.
        w64(page + (nr % SECTIONS_PER_ROOT) * 16, VMEMMAP | SECTION_FLAGS);
    }
    w64(NODE_DATA, dva(PGDAT));
    w64(NODE_ONLINE_MAP, 1);
    let uts: [&[u8]; 6] = [
        b"Linux",
        b"bench-kdump",
        OSRELEASE.as_bytes(),
        b"#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)",
        b"x86_64",
        b"(none)",
    ];
    for (i, s) in uts.iter().enumerate() {
        for (j, &b) in s.iter().enumerate() {
            // SAFETY: UTS is this layout's.
            unsafe { core::ptr::write_volatile((UTS + i as u64 * 65 + j as u64) as *mut u8, b) };
        }
    }
}

/// pglist_data and its zones: every free list empty (pointing at itself), nr_free 0.
fn zones_init(job: &Job) {
    stosq(PGDAT, 0, SIZE_PGLIST_DATA / 8);
    for z in 0..MAX_NR_ZONES {
        let zone = PGDAT + z * SIZE_ZONE;
        for o in 0..ORDERS {
            for mt in 0..MIGRATE_TYPES {
                let h = zone + OFF_ZONE_FREE_AREA + o * SIZE_FREE_AREA + mt * 16;
                w64(h, dva(h));
                w64(h + 8, dva(h));
            }
        }
    }
    let spans = [(0, 16 << 8), (16 << 8, (4 * GB) >> 12), ((4 * GB) >> 12, u64::MAX)];
    for (z, &(s, e)) in spans.iter().enumerate() {
        let span = job.max_pfn.min(e).saturating_sub(s);
        w64(PGDAT + z as u64 * SIZE_ZONE + OFF_ZONE_SPANNED, span);
    }
    w32(PGDAT + OFF_NR_ZONES, job.nr_zones as u32);
    w64(PGDAT + OFF_NODE_START_PFN, 0);
    w64(PGDAT + OFF_NODE_SPANNED, job.max_pfn);
    w32(PGDAT + OFF_NODE_ID, 0);
}

/// Writes text into guest memory at a cursor.
struct Text {
    at: u64,
    start: u64,
}

impl Text {
    fn s(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            // SAFETY: the note page is this layout's; the text stays under 4 KiB.
            unsafe { core::ptr::write_volatile(self.at as *mut u8, b) };
            self.at += 1;
        }
        self
    }
    fn hex(&mut self, v: u64) -> &mut Self {
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            if d != 0 || started || i == 0 {
                started = true;
                let c = if d < 10 { b'0' + d } else { b'a' + d - 10 };
                // SAFETY: as `s`.
                unsafe { core::ptr::write_volatile(self.at as *mut u8, c) };
                self.at += 1;
            }
        }
        self
    }
    fn dec(&mut self, v: i64) -> &mut Self {
        if v < 0 {
            self.s("-");
        }
        let mut u = v.unsigned_abs();
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        for &c in &buf[i..] {
            // SAFETY: as `s`.
            unsafe { core::ptr::write_volatile(self.at as *mut u8, c) };
            self.at += 1;
        }
        self
    }
    fn sym(&mut self, name: &str, va: u64) -> &mut Self {
        self.s("SYMBOL(").s(name).s(")=").hex(va).s("\n")
    }
    fn kv(&mut self, kind: &str, name: &str, v: i64) -> &mut Self {
        self.s(kind).s("(").s(name).s(")=").dec(v).s("\n")
    }
}

/// The VMCOREINFO note (`crash_save_vmcoreinfo_init` and `arch_crash_save_vmcoreinfo` of a
/// Debian 6.1 kernel, CRASHTIME appended as at a panic). Returns the text's length.
fn vmcoreinfo() -> u64 {
    let desc = NOTE + 12 + 12;
    let mut t = Text { at: desc, start: desc };
    t.s("OSRELEASE=").s(OSRELEASE).s("\n");
    t.s("BUILD-ID=5e3c0c2a4b8f8d2e6e1f0a9b7c6d5e4f3a2b1c0d\n");
    t.s("PAGESIZE=4096\n");
    t.sym("init_uts_ns", kva(UTS)).kv("OFFSET", "uts_namespace.name", 0);
    t.sym("node_online_map", kva(NODE_ONLINE_MAP));
    t.sym("swapper_pg_dir", kva(KPT));
    t.sym("_stext", kva(0x100_0000));
    t.sym("vmap_area_list", kva(KD + 0x11_6000));
    t.sym("mem_section", dva(MS_ROOTS));
    t.kv("LENGTH", "mem_section", NR_SECTION_ROOTS as i64).kv("SIZE", "mem_section", 16);
    t.kv("OFFSET", "mem_section.section_mem_map", 0);
    t.kv("NUMBER", "SECTION_SIZE_BITS", SECTION_SIZE_BITS as i64);
    t.kv("NUMBER", "MAX_PHYSMEM_BITS", MAX_PHYSMEM_BITS as i64);
    t.sym("vmemmap", VMEMMAP);
    t.kv("SIZE", "page", SIZE_PAGE as i64).kv("SIZE", "pglist_data", SIZE_PGLIST_DATA as i64);
    t.kv("SIZE", "zone", SIZE_ZONE as i64).kv("SIZE", "free_area", SIZE_FREE_AREA as i64);
    t.kv("SIZE", "list_head", 16).kv("SIZE", "nodemask_t", 128);
    t.kv("OFFSET", "page.flags", 0).kv("OFFSET", "page._refcount", 52);
    t.kv("OFFSET", "page.mapping", OFF_MAPPING as i64).kv("OFFSET", "page.lru", OFF_LRU as i64);
    t.kv("OFFSET", "page._mapcount", OFF_MAPCOUNT as i64).kv("OFFSET", "page.private", OFF_PRIVATE as i64);
    t.kv("OFFSET", "page.compound_dtor", 16).kv("OFFSET", "page.compound_order", 17);
    t.kv("OFFSET", "page.compound_head", 8);
    t.kv("OFFSET", "pglist_data.node_zones", 0).kv("OFFSET", "pglist_data.nr_zones", OFF_NR_ZONES as i64);
    t.kv("OFFSET", "pglist_data.node_start_pfn", OFF_NODE_START_PFN as i64);
    t.kv("OFFSET", "pglist_data.node_spanned_pages", OFF_NODE_SPANNED as i64);
    t.kv("OFFSET", "pglist_data.node_id", OFF_NODE_ID as i64);
    t.kv("OFFSET", "zone.free_area", OFF_ZONE_FREE_AREA as i64).kv("OFFSET", "zone.vm_stat", OFF_ZONE_VM_STAT as i64);
    t.kv("OFFSET", "zone.spanned_pages", OFF_ZONE_SPANNED as i64);
    t.kv("OFFSET", "free_area.free_list", 0).kv("OFFSET", "list_head.next", 0).kv("OFFSET", "list_head.prev", 8);
    t.kv("OFFSET", "vmap_area.va_start", 0).kv("OFFSET", "vmap_area.list", 40);
    t.kv("LENGTH", "zone.free_area", ORDERS as i64);
    t.kv("LENGTH", "free_area.free_list", MIGRATE_TYPES as i64);
    t.kv("NUMBER", "NR_FREE_PAGES", 0).kv("NUMBER", "PG_lru", PG_LRU as i64);
    t.kv("NUMBER", "PG_private", 13).kv("NUMBER", "PG_swapcache", 10);
    t.kv("NUMBER", "PG_swapbacked", PG_SWAPBACKED as i64).kv("NUMBER", "PG_slab", PG_SLAB as i64);
    t.kv("NUMBER", "PG_hwpoison", 23).kv("NUMBER", "PG_head_mask", 1 << 16);
    t.kv("NUMBER", "PAGE_BUDDY_MAPCOUNT_VALUE", -129).kv("NUMBER", "HUGETLB_PAGE_DTOR", 2);
    t.kv("NUMBER", "PAGE_OFFLINE_MAPCOUNT_VALUE", -257);
    t.kv("NUMBER", "phys_base", 0);
    t.sym("init_top_pgt", kva(KPT));
    t.kv("NUMBER", "pgtable_l5_enabled", 0);
    t.sym("node_data", kva(NODE_DATA)).kv("LENGTH", "node_data", MAX_NUMNODES as i64);
    t.s("KERNELOFFSET=0\n");
    t.kv("NUMBER", "KERNEL_IMAGE_SIZE", GB as i64).kv("NUMBER", "sme_mask", 0);
    t.s("CRASHTIME=1764770400\n");
    let len = t.at - t.start;
    // The note header: n_namesz 11 ("VMCOREINFO\0"), n_descsz, n_type 0.
    w32(NOTE, 11);
    w32(NOTE + 4, len as u32);
    w32(NOTE + 8, 0);
    let name = b"VMCOREINFO\0\0";
    for (i, &b) in name.iter().enumerate() {
        // SAFETY: the note page is this layout's.
        unsafe { core::ptr::write_volatile((NOTE + 12 + i as u64) as *mut u8, b) };
    }
    len
}

pub fn bench_kdump(si: &StartInfo) -> ! {
    note("bench-kdump: layout start");
    // SAFETY: ring 3 is not running: JOB is ring 0's.
    let job = unsafe { &mut *JOB.get() };
    for i in 0..si.memmap_entries {
        let e = si.memmap(i);
        if e.kind == XEN_HVM_MEMMAP_TYPE_RAM && e.size > 0 && job.nr_ranges < MAX_RANGES {
            job.ranges[job.nr_ranges] = (e.addr, e.addr + e.size);
            job.nr_ranges += 1;
        }
    }
    let ram_end = si.ram_end();
    job.max_pfn = ram_end >> 12;
    job.memmap_bytes = (job.max_pfn * SIZE_PAGE).next_multiple_of(MB2);
    job.reserved_end = (MEMMAP_PA + job.memmap_bytes).next_multiple_of(CHUNK) >> 12;
    job.nr_zones = if ram_end > 4 * GB { 3 } else { 2 };
    if !si.is_ram(KD, job.reserved_end << 12) {
        abort("the kernel's data and struct pages do not fit in the first RAM range");
    }
    if !user::identity_map(ram_end) {
        abort("too much RAM for the identity map");
    }
    user::init();
    // Ring 0 touches what ring 3 writes: the kernel's data, the struct pages, and the data
    // pages (kernel, cache, user chunks).
    user::touch(KD, user::PT_AREA);
    user::touch(MEMMAP_PA, MEMMAP_PA + job.memmap_bytes);
    note("bench-kdump: touched struct pages");
    let chunks = job.max_pfn.div_ceil(CHUNK_PAGES);
    let written = |c| matches!(chunk_class(job, c), Class::Kernel | Class::Cache | Class::User);
    let mut c = 0;
    while c < chunks {
        let run = c;
        while c < chunks && written(c) {
            c += 1;
        }
        user::touch(run * CHUNK, c * CHUNK);
        c += 1;
    }
    note("bench-kdump: touched");
    user::call(build, JOB.get() as u64);
    let total = job.reserved + job.kernel + job.cache + job.user + job.free;
    line()
        .s("bench-kdump: pages ")
        .dec(total)
        .s(" reserved ")
        .dec(job.reserved)
        .s(" kernel ")
        .dec(job.kernel)
        .s(" cache ")
        .dec(job.cache)
        .s(" user ")
        .dec(job.user)
        .s(" free ")
        .dec(job.free)
        .s(" vmcoreinfo ")
        .dec(job.note_len)
        .s(" bytes at ")
        .hex(NOTE)
        .end();
    check("bench-kdump-layout", total == job.max_pfn && job.note_len > 0 && job.note_len < 4096);
    note("bench-kdump: layout done");
    // The verdict first: crashvmm may stop the VM right at the pvpanic write.
    verdict();
    pvpanic::write_raw(PVPANIC_PANICKED);
    halt_forever()
}
