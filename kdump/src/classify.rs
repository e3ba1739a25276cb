//! Per-PFN dump-level decisions, as makedumpfile's `__exclude_unnecessary_pages` makes them
//! (its rules as of 1.7.9, which cover Linux 6.1 through 7.0; our own code), and a guard per
//! level.
//!
//! | level | class | rule (struct page fields from VMCOREINFO) |
//! | --- | --- | --- |
//! | 1 | zero | page content all zero: decided while writing ([`crate::diskdump`]) |
//! | 2 | cache | `PG_lru`, or `PG_swapcache` with `PG_swapbacked`; not `PG_private`; not anon |
//! | 4 | private cache | the same with `PG_private` |
//! | 8 | user | anon (`mapping & 1`, not slab) or a hugetlb folio (compound dtor / page type) |
//! | 16 | free | buddy head (`_mapcount == PAGE_BUDDY_MAPCOUNT_VALUE`, not slab): `1 << private` pages; unaccepted pages |
//!
//! The first matching rule wins, in makedumpfile's order: compound tails are never excluded one
//! by one, free, cache, private cache, user; then hwpoison (`PG_hwpoison`) and logically
//! offline pages (`PAGE_OFFLINE_MAPCOUNT_VALUE`, balloon), which hold nothing readable and are
//! excluded whenever the struct pages are walked (any of levels 2-16). Page types are compared
//! whole (`_mapcount == NUMBER(PAGE_*_MAPCOUNT_VALUE)`), which is right before and after Linux
//! 6.12's one-type-per-page change; slab is `PG_slab` before 6.10 and
//! `PAGE_SLAB_MAPCOUNT_VALUE` after; the compound order is `_flags_1 & 0xff` from 6.6
//! (`PG_hugetlb` or `PAGE_HUGETLB_MAPCOUNT_VALUE` present), else `OFFSET(page.compound_order)`
//! or `OFFSET(folio._folio_order)`.
//!
//! Guards, per level, before anything is dropped:
//! - every VMCOREINFO entry the level's rule reads must be there (else "unavailable");
//! - free (16): the buddy pages counted from the struct pages must equal the buddy allocator's
//!   own totals read from the same memory (`zone.free_area[order].nr_free << order`, summed over
//!   every zone of every online node), and the free lists walked (bounded, cycle-checked) must
//!   lead to struct pages that say buddy with that order; else "unverified";
//! - cache, private cache, user (2, 4, 8): the struct page layout is what the free-list walk
//!   proved (every free-list entry is a struct page saying buddy of that order, and they add up
//!   to the buddy pages found in the struct pages; so they need the free lists too), free pages carry none of the flags these rules test (the
//!   kernel's own check at allocation), and the kernel is one whose rules we know (up to 7.0:
//!   7.1 renamed `compound_head`).
//!
//! A level that is unavailable or unverified is not filtered, and the report says why.

use std::collections::HashSet;

use serde::Serialize;

use crate::memmap::MemMap;
use crate::paging::Translator;
use crate::vmcoreinfo::VmcoreInfo;
use crate::{KdumpError, PhysMem, RamRange, PAGE_SHIFT, PAGE_SIZE};

pub const DL_ZERO: u8 = 1;
pub const DL_CACHE: u8 = 2;
pub const DL_CACHE_PRIVATE: u8 = 4;
pub const DL_USER: u8 = 8;
pub const DL_FREE: u8 = 16;
/// makedumpfile's `PGMM_CACHED`: it reads struct pages 512 at a time and does not look at the
/// compound order of the last page of a batch; we do the same, for the same bitmap.
const PGMM_CACHED: u64 = 512;
/// The newest kernel whose rules are known (major, minor).
const NEWEST_KNOWN: (u32, u32) = (7, 0);

/// A bit per PFN, LSB first within each byte (the kdump file's own layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u64>,
    len: u64,
}

impl Bitmap {
    pub fn new(len: u64) -> Self {
        Self { bits: vec![0; len.div_ceil(64) as usize], len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub fn set(&mut self, i: u64, v: bool) {
        if i < self.len {
            let w = &mut self.bits[(i / 64) as usize];
            if v {
                *w |= 1 << (i % 64)
            } else {
                *w &= !(1 << (i % 64))
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Indices of set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let b = w.trailing_zeros();
                    w &= w - 1;
                    wi as u64 * 64 + u64::from(b)
                })
            })
        })
    }

    pub fn words(&self) -> &[u64] {
        &self.bits
    }

    /// The bytes, LSB-first, `ceil(len / 8)` of them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.bits.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.len.div_ceil(8) as usize);
        out
    }

    pub fn from_bytes(bytes: &[u8], len: u64) -> Self {
        let mut b = Self::new(len);
        for (i, chunk) in bytes.chunks(8).enumerate().take(b.bits.len()) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            b.bits[i] = u64::from_le_bytes(w);
        }
        if len % 64 != 0 {
            if let Some(last) = b.bits.last_mut() {
                *last &= (1u64 << (len % 64)) - 1;
            }
        }
        b
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelState {
    /// Not asked for.
    NotRequested,
    /// Filtered.
    Applied,
    /// VMCOREINFO (or guest memory) lacks what the rule needs: not filtered.
    Unavailable,
    /// The guard could not confirm the rule on this kernel: not filtered.
    Unverified,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LevelStatus {
    /// 1, 2, 4, 8 or 16.
    pub level: u8,
    pub name: &'static str,
    pub state: LevelState,
    /// Pages this level excluded (level 1: filled in by the writer).
    pub excluded_pages: u64,
    /// Why, when not applied.
    pub reason: Option<String>,
}

/// What the free-page guard read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FreeGuard {
    /// Buddy pages found by the struct page rule (`1 << order` per head).
    pub memmap_free_pages: u64,
    /// Sum of `nr_free << order` over every zone and order, when `nr_free` could be located.
    pub nr_free_pages: Option<u64>,
    /// Pages on the free lists walked.
    pub free_list_pages: Option<u64>,
    pub zones: u32,
    pub passed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExcludedCounts {
    pub cache: u64,
    pub cache_private: u64,
    pub user: u64,
    pub free: u64,
    pub hwpoison: u64,
    pub offline: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassifyReport {
    pub requested_level: u8,
    /// The levels filtered (level 1 included when requested: always decidable).
    pub effective_level: u8,
    pub levels: Vec<LevelStatus>,
    pub kernel: Option<String>,
    pub max_mapnr: u64,
    /// PFNs in guest RAM.
    pub total_pages: u64,
    /// PFNs in RAM whose struct page could be read.
    pub pages_with_struct_page: u64,
    pub excluded: ExcludedCounts,
    /// PFNs left for the writer (before zero pages).
    pub kept_pages: u64,
    pub free_guard: Option<FreeGuard>,
    /// Human-readable: what was decided and why.
    pub notes: Vec<String>,
}

impl ClassifyReport {
    pub fn level(&self, level: u8) -> Option<&LevelStatus> {
        self.levels.iter().find(|l| l.level == level)
    }
}

#[derive(Debug, Clone)]
pub struct Classification {
    /// bitmap1: PFNs in guest RAM.
    pub valid: Bitmap,
    /// bitmap2: PFNs to write (zero pages still in: the writer shares one page for them).
    pub dumpable: Bitmap,
    pub report: ClassifyReport,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ClassifyOptions {
    /// Filter levels 2/4/8 on kernels newer than the rules known here.
    pub trust_newer_kernels: bool,
}

/// The struct page rule's inputs, all from VMCOREINFO.
#[derive(Debug, Clone)]
struct Rules {
    size: usize,
    flags: usize,
    mapping: usize,
    mapcount: Option<usize>,
    private: Option<usize>,
    compound_head: Option<usize>,
    pg_lru: Option<u32>,
    pg_private: Option<u32>,
    pg_swapcache: Option<u32>,
    pg_swapbacked: Option<u32>,
    pg_slab: Option<u32>,
    pg_hwpoison: Option<u32>,
    pg_head_mask: Option<u64>,
    pg_hugetlb: Option<u32>,
    buddy_value: Option<i32>,
    slab_value: Option<i32>,
    offline_value: Option<i32>,
    hugetlb_value: Option<i32>,
    unaccepted_value: Option<i32>,
    hugetlb_dtor: Option<u64>,
    free_huge_page: Option<u64>,
    /// Offset of the order / dtor bytes from the head page (in the first tail page or beyond).
    order_offset: Option<usize>,
    dtor_offset: Option<usize>,
    max_order: Option<u64>,
}

fn bit(v: Option<i64>) -> Option<u32> {
    v.and_then(|b| u32::try_from(b).ok()).filter(|&b| b < 64)
}

impl Rules {
    fn from(info: &VmcoreInfo) -> Result<Self, String> {
        let size = info.size("page").ok_or("SIZE(page)")? as usize;
        let field = |name: &str| {
            info.offset(name).map(|o| o as usize).filter(|&o| o + 8 <= size.max(8) || name.ends_with("_mapcount"))
        };
        let flags = field("page.flags").ok_or("OFFSET(page.flags)")?;
        let mapping = field("page.mapping").ok_or("OFFSET(page.mapping)")?;
        let v32 = |n: &str| info.number(n).map(|v| v as i32);
        let order_offset = if let Some(o) = info.offset("folio._folio_order") {
            o.checked_sub(size as u64).map(|o| o as usize + size)
        } else {
            info.offset("page.compound_order").map(|o| o as usize + size)
        };
        let dtor_offset = if let Some(o) = info.offset("folio._folio_dtor") {
            o.checked_sub(size as u64).map(|o| o as usize + size)
        } else {
            info.offset("page.compound_dtor").map(|o| o as usize + size)
        };
        Ok(Self {
            size,
            flags,
            mapping,
            mapcount: info.offset("page._mapcount").map(|o| o as usize).filter(|&o| o + 4 <= size),
            private: field("page.private"),
            compound_head: field("page.compound_head"),
            pg_lru: bit(info.number("PG_lru")),
            pg_private: bit(info.number("PG_private")),
            pg_swapcache: bit(info.number("PG_swapcache")),
            pg_swapbacked: bit(info.number("PG_swapbacked")),
            pg_slab: bit(info.number("PG_slab")),
            pg_hwpoison: bit(info.number("PG_hwpoison")),
            pg_head_mask: info.number("PG_head_mask").map(|v| v as u64),
            pg_hugetlb: bit(info.number("PG_hugetlb")),
            buddy_value: v32("PAGE_BUDDY_MAPCOUNT_VALUE"),
            slab_value: v32("PAGE_SLAB_MAPCOUNT_VALUE"),
            offline_value: v32("PAGE_OFFLINE_MAPCOUNT_VALUE"),
            hugetlb_value: v32("PAGE_HUGETLB_MAPCOUNT_VALUE"),
            unaccepted_value: v32("PAGE_UNACCEPTED_MAPCOUNT_VALUE"),
            hugetlb_dtor: info.number("HUGETLB_PAGE_DTOR").map(|v| v as u64),
            free_huge_page: info.symbol("free_huge_page"),
            order_offset: order_offset.filter(|&o| o < 2 * size),
            dtor_offset: dtor_offset.filter(|&o| o < 2 * size),
            max_order: info.length("zone.free_area"),
        })
    }

    /// What each level's rule lacks (empty: decidable).
    fn missing(&self, level: u8) -> Vec<&'static str> {
        let mut m = Vec::new();
        let mut need = |ok: bool, what: &'static str| {
            if !ok {
                m.push(what)
            }
        };
        // Every rule needs to tell compound tails and slab pages.
        need(self.compound_head.is_some(), "OFFSET(page.compound_head)");
        need(
            self.pg_slab.is_some() || self.slab_value.is_some(),
            "NUMBER(PG_slab) or NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)",
        );
        match level {
            DL_CACHE | DL_CACHE_PRIVATE => {
                need(self.pg_lru.is_some(), "NUMBER(PG_lru)");
                need(self.pg_swapcache.is_some(), "NUMBER(PG_swapcache)");
                need(self.pg_private.is_some(), "NUMBER(PG_private)");
                if self.slab_value.is_some() {
                    need(self.mapcount.is_some(), "OFFSET(page._mapcount)");
                }
            }
            DL_USER => {
                need(self.pg_head_mask.is_some(), "NUMBER(PG_head_mask)");
                need(
                    self.hugetlb_value.is_some()
                        || self.pg_hugetlb.is_some()
                        || (self.dtor_offset.is_some() && (self.hugetlb_dtor.is_some() || self.free_huge_page.is_some())),
                    "a hugetlb marker (NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE), NUMBER(PG_hugetlb) or OFFSET(page.compound_dtor) with NUMBER(HUGETLB_PAGE_DTOR))",
                );
                if self.slab_value.is_some() || self.hugetlb_value.is_some() {
                    need(self.mapcount.is_some(), "OFFSET(page._mapcount)");
                }
            }
            DL_FREE => {
                need(self.buddy_value.is_some(), "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)");
                need(self.mapcount.is_some(), "OFFSET(page._mapcount)");
                need(self.private.is_some(), "OFFSET(page.private)");
            }
            _ => {}
        }
        m
    }

    fn is_slab(&self, flags: u64, mapcount: i32) -> bool {
        if self.slab_value == Some(mapcount) {
            return true;
        }
        self.pg_slab.is_some_and(|b| flags & (1 << b) != 0)
    }

    fn test(flags: u64, b: Option<u32>) -> bool {
        b.is_some_and(|b| flags & (1 << b) != 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Keep,
    Free,
    Cache,
    CachePrivate,
    User,
    HwPoison,
    Offline,
}

/// One struct page's fields.
struct PageView<'b> {
    bytes: &'b [u8],
    /// The next struct page, when in the same batch.
    next: Option<&'b [u8]>,
}

fn rd64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}
fn rd32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

/// The decision for one PFN: (class, pages it covers from this one). As in makedumpfile, a
/// compound head takes its whole folio (`1 << order`) with it whatever its class; a buddy
/// head its `1 << private` pages.
fn decide(r: &Rules, level: u8, pfn: u64, p: &PageView<'_>, buddy_ok: bool) -> (Class, u64) {
    let flags = rd64(p.bytes, r.flags);
    let mapping = rd64(p.bytes, r.mapping);
    let mapcount = r.mapcount.map_or(0, |o| rd32(p.bytes, o) as i32);
    let private = r.private.map_or(0, |o| rd64(p.bytes, o));
    let compound_head = r.compound_head.map_or(0, |o| rd64(p.bytes, o));
    let mut order = 0u64;
    let mut hugetlb = false;
    if pfn % PGMM_CACHED != PGMM_CACHED - 1 && r.pg_head_mask.is_some_and(|m| flags & m != 0) {
        if let Some(next) = p.next {
            if r.hugetlb_value.is_some() || r.pg_hugetlb.is_some() {
                let flags1 = rd64(next, r.flags);
                order = flags1 & 0xff;
                hugetlb = if r.hugetlb_value.is_some() {
                    r.hugetlb_value == Some(mapcount)
                } else {
                    Rules::test(flags1, r.pg_hugetlb)
                };
            } else {
                let both: Vec<u8> = [p.bytes, next].concat();
                if let Some(o) = r.order_offset {
                    order = u64::from(both.get(o).copied().unwrap_or(0));
                }
                if let Some(o) = r.dtor_offset {
                    let dtor = u64::from(both.get(o).copied().unwrap_or(0));
                    hugetlb = r.hugetlb_dtor == Some(dtor) || r.free_huge_page == Some(dtor);
                }
            }
            if order >= 64 || pfn & ((1u64 << order.min(63)) - 1) != 0 {
                order = 0;
            }
        }
    }
    let anon = mapping & 1 != 0 && !r.is_slab(flags, mapcount);
    let cache = Rules::test(flags, r.pg_lru)
        || ((r.pg_swapbacked.is_none() || Rules::test(flags, r.pg_swapbacked)) && Rules::test(flags, r.pg_swapcache));
    let is_private = Rules::test(flags, r.pg_private);
    if compound_head & 1 != 0 {
        return (Class::Keep, 1);
    }
    if level & DL_FREE != 0 && buddy_ok && !r.is_slab(flags, mapcount) && r.buddy_value == Some(mapcount) {
        if r.max_order.is_some_and(|m| private >= m) || private >= 64 {
            return (Class::Keep, 1);
        }
        return (Class::Free, 1 << private);
    }
    if level & DL_FREE != 0 && r.unaccepted_value == Some(mapcount) {
        if let Some(m) = r.max_order.filter(|&m| (1..64).contains(&m)) {
            return (Class::Free, 1 << (m - 1));
        }
    }
    if level & DL_CACHE != 0 && cache && !is_private && !anon {
        return (Class::Cache, 1 << order);
    }
    if level & DL_CACHE_PRIVATE != 0 && cache && !anon {
        return (if is_private { Class::CachePrivate } else { Class::Cache }, 1 << order);
    }
    if level & DL_USER != 0 && (anon || hugetlb) {
        return (Class::User, 1 << order);
    }
    if Rules::test(flags, r.pg_hwpoison) {
        return (Class::HwPoison, 1 << order);
    }
    if r.offline_value.is_some() && !r.is_slab(flags, mapcount) && r.offline_value == Some(mapcount) {
        return (Class::Offline, 1 << order);
    }
    (Class::Keep, 1)
}

/// Result of one pass over the struct pages.
struct Pass {
    dumpable: Bitmap,
    excluded: ExcludedCounts,
    /// Buddy pages the rule saw (whether or not level 16 was applied).
    buddy_pages: u64,
    /// Flags seen on buddy heads that free pages must not carry.
    buddy_bad_flags: u64,
    with_struct_page: u64,
}

fn pass<M: PhysMem + ?Sized>(
    tr: &Translator<'_, M>,
    mm: &MemMap,
    rules: &Rules,
    valid: &Bitmap,
    level: u8,
    buddy_ok: bool,
) -> Pass {
    let mut out = Pass {
        dumpable: valid.clone(),
        excluded: ExcludedCounts::default(),
        buddy_pages: 0,
        buddy_bad_flags: 0,
        with_struct_page: 0,
    };
    let max = valid.len();
    let size = rules.size;
    let bad_mask = [rules.pg_lru, rules.pg_private, rules.pg_swapcache, rules.pg_slab]
        .iter()
        .flatten()
        .fold(0u64, |m, &b| m | (1 << b))
        | rules.pg_head_mask.unwrap_or(0);
    let mut skip_until = 0u64;
    let mut buf = vec![0u8; PGMM_CACHED as usize * size];
    for range in &mm.ranges {
        let mut batch_start = range.pfn_start;
        while batch_start < range.pfn_end.min(max) {
            // Batches end at multiples of PGMM_CACHED, as makedumpfile's reads do.
            let batch_end = ((batch_start / PGMM_CACHED + 1) * PGMM_CACHED).min(range.pfn_end).min(max);
            let n = (batch_end - batch_start) as usize;
            let this = batch_start;
            batch_start = batch_end;
            if this + n as u64 <= skip_until || (this..this + n as u64).all(|p| !valid.get(p)) {
                continue;
            }
            let va = range.mem_map.wrapping_add((this - range.pfn_start) * size as u64);
            let mut ok = vec![true; n];
            if tr.read(va, &mut buf[..n * size]).is_err() {
                // Page by page: keep what we cannot read.
                for (i, slot) in ok.iter_mut().enumerate() {
                    let o = i * size;
                    *slot = tr.read(va.wrapping_add(o as u64), &mut buf[o..o + size]).is_ok();
                }
            }
            for i in 0..n {
                let pfn = this + i as u64;
                if pfn < skip_until || !valid.get(pfn) || !ok[i] {
                    continue;
                }
                out.with_struct_page += 1;
                let bytes = &buf[i * size..(i + 1) * size];
                let next = (i + 1 < n && ok[i + 1]).then(|| &buf[(i + 1) * size..(i + 2) * size]);
                let view = PageView { bytes, next };
                // The guard's count: the buddy rule alone, whatever the level.
                let (probe, probe_n) = decide(rules, DL_FREE, pfn, &view, buddy_ok);
                if probe == Class::Free && rules.buddy_value == rules.mapcount.map(|o| rd32(bytes, o) as i32) {
                    out.buddy_pages += probe_n;
                    if rd64(bytes, rules.flags) & bad_mask != 0 {
                        out.buddy_bad_flags += 1;
                    }
                }
                let (class, nr) = decide(rules, level, pfn, &view, buddy_ok);
                let counter = match class {
                    Class::Keep => continue,
                    Class::Free => &mut out.excluded.free,
                    Class::Cache => &mut out.excluded.cache,
                    Class::CachePrivate => &mut out.excluded.cache_private,
                    Class::User => &mut out.excluded.user,
                    Class::HwPoison => &mut out.excluded.hwpoison,
                    Class::Offline => &mut out.excluded.offline,
                };
                let end = pfn.saturating_add(nr).min(max);
                for p in pfn..end {
                    if out.dumpable.get(p) {
                        out.dumpable.set(p, false);
                        *counter += 1;
                    }
                }
                if nr > 1 {
                    skip_until = end;
                }
            }
        }
    }
    out
}

/// The buddy allocator's own view: `nr_free` totals and the free lists.
fn free_area_totals<M: PhysMem + ?Sized>(
    tr: &Translator<'_, M>,
    info: &VmcoreInfo,
    mm: &MemMap,
    rules: &Rules,
    max_pfn: u64,
    notes: &mut Vec<String>,
) -> Result<FreeGuard, String> {
    let need = |k: &str, v: Option<u64>| v.ok_or_else(|| format!("VMCOREINFO lacks {k}"));
    let zones_off = need("OFFSET(pglist_data.node_zones)", info.offset("pglist_data.node_zones"))?;
    let nr_zones_off = info.offset("pglist_data.nr_zones");
    let zone_size = need("SIZE(zone)", info.size("zone"))?;
    let fa_off = need("OFFSET(zone.free_area)", info.offset("zone.free_area"))?;
    let fa_size = need("SIZE(free_area)", info.size("free_area"))?;
    let fl_off = need("OFFSET(free_area.free_list)", info.offset("free_area.free_list"))?;
    let mig_types = need("LENGTH(free_area.free_list)", info.length("free_area.free_list"))?;
    let orders = need("LENGTH(zone.free_area)", info.length("zone.free_area"))?;
    let lh_size = info.size("list_head").unwrap_or(16);
    let next_off = info.offset("list_head.next").unwrap_or(0);
    let lru_off = need("OFFSET(page.lru)", info.offset("page.lru"))?;
    if orders > 64 || mig_types > 16 || zone_size > 1 << 20 || fa_size > 4096 {
        return Err(format!("implausible free_area sizes ({orders} orders, {mig_types} migrate types)"));
    }
    // nr_free follows free_list[MIGRATE_TYPES] in struct free_area.
    let nr_free_off = fl_off + mig_types * lh_size;
    let has_nr_free = nr_free_off + 8 <= fa_size;
    // Nodes: node_data[] (NUMA) filtered by node_online_map, or contig_page_data.
    let mut pgdats = Vec::new();
    if let Some(nd) = info.symbol("node_data") {
        let n = info.length("node_data").unwrap_or(1).min(4096);
        let online = info.symbol("node_online_map");
        let mask_bytes = info.size("nodemask_t").unwrap_or(n.div_ceil(8)).min(512);
        let mut mask = vec![0xffu8; mask_bytes as usize];
        if let Some(o) = online {
            tr.read(o, &mut mask).map_err(|e| format!("node_online_map: {e}"))?;
        }
        for nid in 0..n {
            let byte = mask.get((nid / 8) as usize).copied().unwrap_or(0);
            if byte & (1 << (nid % 8)) == 0 {
                continue;
            }
            let p = tr.read_u64(nd + nid * 8).map_err(|e| format!("node_data[{nid}]: {e}"))?;
            if p != 0 {
                pgdats.push(p);
            }
        }
    } else if let Some(c) = info.symbol("contig_page_data") {
        pgdats.push(c);
    } else {
        return Err("VMCOREINFO lacks SYMBOL(node_data) and SYMBOL(contig_page_data)".into());
    }
    if pgdats.is_empty() {
        return Err("no online node".into());
    }
    let mut g = FreeGuard::default();
    let mut nr_free_total = 0u64;
    let mut walked = 0u64;
    let mut walk_ok = true;
    // Every entry of every list, together bounded by the page count.
    let mut budget = max_pfn.saturating_add(1);
    let mut seen = HashSet::new();
    for pgdat in pgdats {
        let nr_zones = match nr_zones_off {
            Some(o) => {
                let mut b = [0u8; 4];
                tr.read(pgdat + o, &mut b).map_err(|e| format!("pglist_data.nr_zones: {e}"))?;
                u64::from(u32::from_le_bytes(b))
            }
            None => 5,
        };
        if nr_zones > 8 {
            return Err(format!("implausible nr_zones {nr_zones}"));
        }
        for z in 0..nr_zones {
            let zone = pgdat + zones_off + z * zone_size;
            g.zones += 1;
            for order in 0..orders {
                let fa = zone + fa_off + order * fa_size;
                let mut entries = 0u64;
                for mt in 0..mig_types {
                    let head = fa + fl_off + mt * lh_size;
                    let mut cur = tr.read_u64(head + next_off).map_err(|e| format!("free list head: {e}"))?;
                    while cur != head && walk_ok {
                        if budget == 0 || !seen.insert(cur) {
                            notes.push(format!("free list (zone {zone:#x}, order {order}) loops or is too long"));
                            walk_ok = false;
                            break;
                        }
                        budget -= 1;
                        let page = cur.wrapping_sub(lru_off);
                        let Some(pfn) = mm.pfn_of(page) else {
                            notes.push(format!("free list entry {cur:#x} is not a struct page"));
                            walk_ok = false;
                            break;
                        };
                        let mut sp = vec![0u8; rules.size];
                        if tr.read(page, &mut sp).is_err() {
                            walk_ok = false;
                            break;
                        }
                        let mc = rules.mapcount.map(|o| rd32(&sp, o) as i32);
                        let pv = rules.private.map(|o| rd64(&sp, o));
                        if mc != rules.buddy_value || pv != Some(order) {
                            notes.push(format!(
                                "free list page pfn {pfn:#x} does not say buddy of order {order} (mapcount {mc:?}, private {pv:?})"
                            ));
                            walk_ok = false;
                            break;
                        }
                        entries += 1;
                        walked += 1 << order;
                        cur = match tr.read_u64(cur + next_off) {
                            Ok(n) => n,
                            Err(_) => {
                                walk_ok = false;
                                break;
                            }
                        };
                    }
                }
                if has_nr_free {
                    let nr = tr.read_u64(fa + nr_free_off).map_err(|e| format!("free_area.nr_free: {e}"))?;
                    if nr > max_pfn {
                        return Err(format!("implausible nr_free {nr}"));
                    }
                    if walk_ok && nr != entries {
                        notes.push(format!("zone {zone:#x} order {order}: nr_free {nr}, {entries} on the free lists"));
                    }
                    nr_free_total += nr << order;
                }
            }
        }
    }
    g.nr_free_pages = has_nr_free.then_some(nr_free_total);
    g.free_list_pages = walk_ok.then_some(walked);
    Ok(g)
}

/// Classifies every PFN of `ram` for `level` (0-31).
///
/// `info` is the guest's VMCOREINFO (None: only level 1 can be decided, by the writer).
pub fn classify<M: PhysMem + ?Sized>(
    mem: &M,
    ram: &[RamRange],
    info: Option<&VmcoreInfo>,
    level: u8,
    opts: &ClassifyOptions,
) -> Result<Classification, KdumpError> {
    if level > 31 {
        return Err(KdumpError::BadLevel(level));
    }
    let max_pfn = ram.iter().map(|r| r.end().div_ceil(PAGE_SIZE)).max().unwrap_or(0);
    if max_pfn > 1 << 40 {
        return Err(KdumpError::Implausible(format!("{max_pfn} page frames")));
    }
    let mut valid = Bitmap::new(max_pfn);
    for r in ram {
        for pfn in (r.start >> PAGE_SHIFT)..r.end().div_ceil(PAGE_SIZE) {
            valid.set(pfn, true);
        }
    }
    let mut notes = Vec::new();
    let names = [
        (DL_ZERO, "zero"),
        (DL_CACHE, "cache"),
        (DL_CACHE_PRIVATE, "private cache"),
        (DL_USER, "user"),
        (DL_FREE, "free"),
    ];
    let mut levels: Vec<LevelStatus> = names
        .iter()
        .map(|&(l, name)| LevelStatus {
            level: l,
            name,
            state: if level & l != 0 { LevelState::Applied } else { LevelState::NotRequested },
            excluded_pages: 0,
            reason: None,
        })
        .collect();
    let total = valid.count();
    let mut report = ClassifyReport {
        requested_level: level,
        effective_level: level & DL_ZERO,
        levels: Vec::new(),
        kernel: info.and_then(|i| i.osrelease().map(str::to_string)),
        max_mapnr: max_pfn,
        total_pages: total,
        pages_with_struct_page: 0,
        excluded: ExcludedCounts::default(),
        kept_pages: total,
        free_guard: None,
        notes: Vec::new(),
    };
    let struct_levels = level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER | DL_FREE);
    let refuse = |levels: &mut Vec<LevelStatus>, mask: u8, state: LevelState, why: &str| {
        for l in levels.iter_mut().filter(|l| l.level & mask != 0 && l.state == LevelState::Applied) {
            l.state = state;
            l.reason = Some(why.to_string());
        }
    };
    let finish = |mut report: ClassifyReport, levels: Vec<LevelStatus>, notes: Vec<String>, dumpable: Bitmap| {
        report.levels = levels;
        report.notes = notes;
        report.kept_pages = dumpable.count();
        Classification { valid: valid.clone(), dumpable, report }
    };
    if struct_levels == 0 {
        return Ok(finish(report, levels, notes, valid.clone()));
    }
    let Some(info) = info else {
        let why = "no VMCOREINFO: struct pages cannot be found";
        refuse(&mut levels, struct_levels, LevelState::Unavailable, why);
        notes.push(format!("{why}; only zero pages are filtered"));
        return Ok(finish(report, levels, notes, valid.clone()));
    };
    if info.page_size().is_some_and(|p| p != PAGE_SIZE) {
        let why = "PAGESIZE is not 4096";
        refuse(&mut levels, struct_levels, LevelState::Unavailable, why);
        notes.push(why.into());
        return Ok(finish(report, levels, notes, valid.clone()));
    }
    let setup = (|| -> Result<(Translator<'_, M>, MemMap, Rules), String> {
        let tr = Translator::from_vmcoreinfo(mem, info).map_err(|e| e.to_string())?;
        let mm = MemMap::build(&tr, info, ram, max_pfn).map_err(|e| e.to_string())?;
        let rules = Rules::from(info).map_err(|m| format!("VMCOREINFO lacks {m}"))?;
        Ok((tr, mm, rules))
    })();
    let (tr, mm, rules) = match setup {
        Ok(s) => s,
        Err(why) => {
            refuse(&mut levels, struct_levels, LevelState::Unavailable, &why);
            notes.push(format!("struct pages unavailable: {why}; only zero pages are filtered"));
            return Ok(finish(report, levels, notes, valid.clone()));
        }
    };
    for l in [DL_CACHE, DL_CACHE_PRIVATE, DL_USER, DL_FREE] {
        let missing = rules.missing(l);
        if level & l != 0 && !missing.is_empty() {
            let why = format!("VMCOREINFO lacks {}", missing.join(", "));
            notes.push(format!("level {l} not filtered: {why}"));
            refuse(&mut levels, l, LevelState::Unavailable, &why);
        }
    }
    // Kernel version window for the flag rules.
    match info.kernel_version() {
        Some((maj, min, _)) if (maj, min) > NEWEST_KNOWN && !opts.trust_newer_kernels => {
            let why = format!(
                "kernel {maj}.{min} is newer than the rules known here ({}.{})",
                NEWEST_KNOWN.0, NEWEST_KNOWN.1
            );
            notes.push(format!("levels 2, 4, 8 not filtered: {why}"));
            refuse(&mut levels, DL_CACHE | DL_CACHE_PRIVATE | DL_USER, LevelState::Unverified, &why);
        }
        None => notes.push("OSRELEASE missing or unparsable: kernel version unknown".into()),
        _ => {}
    }
    let buddy_ok = rules.missing(DL_FREE).is_empty();
    let applied = |levels: &Vec<LevelStatus>| {
        levels.iter().filter(|l| l.state == LevelState::Applied && l.level != DL_ZERO).fold(0u8, |m, l| m | l.level)
    };
    // The guard: the buddy allocator's totals against the struct pages.
    let guard = if buddy_ok {
        match free_area_totals(&tr, info, &mm, &rules, max_pfn, &mut notes) {
            Ok(g) => Some(g),
            Err(why) => {
                notes.push(format!("free-page guard: {why}"));
                None
            }
        }
    } else {
        None
    };
    let mut p = pass(&tr, &mm, &rules, &valid, applied(&levels), buddy_ok);
    report.pages_with_struct_page = p.with_struct_page;
    let mut walk_ok = false;
    let free_ok = match guard.clone() {
        Some(mut g) => {
            g.memmap_free_pages = p.buddy_pages;
            let walk_matches = g.free_list_pages.is_some_and(|w| w == p.buddy_pages);
            walk_ok = walk_matches;
            let nr_matches = g.nr_free_pages.is_none_or(|n| n == p.buddy_pages);
            g.passed = walk_matches && nr_matches;
            if !g.passed {
                notes.push(format!(
                    "free-page guard failed: {} buddy pages in the struct pages, nr_free totals {:?}, free lists {:?}",
                    p.buddy_pages, g.nr_free_pages, g.free_list_pages
                ));
            } else {
                notes.push(format!(
                    "free-page guard passed: {} free pages in {} zones (struct pages, nr_free and free lists agree)",
                    p.buddy_pages, g.zones
                ));
            }
            let passed = g.passed;
            report.free_guard = Some(g);
            passed
        }
        None => false,
    };
    if !free_ok {
        let why = if report.free_guard.is_some() {
            "the buddy allocator's totals do not match the free pages found in the struct pages"
        } else {
            "the buddy allocator's free lists could not be read to check the struct page layout"
        };
        refuse(&mut levels, DL_FREE, LevelState::Unverified, why);
    }
    if !walk_ok {
        refuse(
            &mut levels,
            DL_CACHE | DL_CACHE_PRIVATE | DL_USER,
            LevelState::Unverified,
            "struct page layout not verified: the free lists do not lead to the buddy pages found in the struct pages",
        );
    } else if p.buddy_bad_flags > 0 {
        let why =
            format!("{} free pages carry LRU/private/swapcache/slab/head flags: flag numbers wrong", p.buddy_bad_flags);
        notes.push(why.clone());
        refuse(&mut levels, DL_CACHE | DL_CACHE_PRIVATE | DL_USER, LevelState::Unverified, &why);
    }
    let eff = applied(&levels);
    if eff != struct_levels {
        // Some level was refused: walk again with what is left (the rules' order matters).
        p = if eff == 0 {
            Pass {
                dumpable: valid.clone(),
                excluded: ExcludedCounts::default(),
                buddy_pages: p.buddy_pages,
                buddy_bad_flags: p.buddy_bad_flags,
                with_struct_page: p.with_struct_page,
            }
        } else {
            pass(&tr, &mm, &rules, &valid, eff, buddy_ok)
        };
    }
    for l in levels.iter_mut() {
        l.excluded_pages = match l.level {
            DL_CACHE => p.excluded.cache,
            DL_CACHE_PRIVATE => p.excluded.cache_private,
            DL_USER => p.excluded.user,
            DL_FREE => p.excluded.free,
            _ => 0,
        };
    }
    if p.excluded.hwpoison + p.excluded.offline > 0 {
        notes.push(format!(
            "{} hwpoison and {} offline pages excluded (no readable data)",
            p.excluded.hwpoison, p.excluded.offline
        ));
    }
    report.effective_level = eff | (level & DL_ZERO);
    report.excluded = p.excluded;
    Ok(finish(report, levels, notes, p.dumpable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::SliceMem;

    fn run(g: &mut Guest, level: u8) -> Classification {
        let text = g.vmcoreinfo();
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        classify(&mem, &mem.ranges(), Some(&info), level, &ClassifyOptions::default()).unwrap()
    }

    fn excluded(c: &Classification) -> Vec<u64> {
        (0..c.valid.len()).filter(|&p| c.valid.get(p) && !c.dumpable.get(p)).collect()
    }

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort();
        v
    }

    #[test]
    fn every_level_excludes_exactly_its_pages() {
        for (l5, extreme) in [(false, true), (true, true), (false, false), (true, false)] {
            for level in [0u8, 1, 2, 4, 6, 8, 16, 31] {
                let mut g = Guest::new(l5, extreme);
                let e = populate(&mut g);
                let c = run(&mut g, level);
                let mut want = Vec::new();
                if level & DL_FREE != 0 {
                    want.extend(&e.free);
                }
                if level & (DL_CACHE | DL_CACHE_PRIVATE) != 0 {
                    want.extend(&e.cache);
                }
                if level & DL_CACHE_PRIVATE != 0 {
                    want.extend(&e.cache_private);
                }
                if level & DL_USER != 0 {
                    want.extend(&e.user);
                }
                if level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER | DL_FREE) != 0 {
                    want.extend(&e.offline);
                }
                assert_eq!(excluded(&c), sorted(want), "level {level} l5 {l5} extreme {extreme}: {:?}", c.report.notes);
                for p in &e.kept_special {
                    assert!(c.dumpable.get(*p), "pfn {p} kept");
                }
                let r = &c.report;
                assert_eq!(r.total_pages, PFNS);
                assert_eq!(r.effective_level, level, "{:?}", r.notes);
                assert_eq!(r.kept_pages, c.dumpable.count());
                if level & !DL_ZERO != 0 {
                    assert!(r.free_guard.as_ref().unwrap().passed);
                    assert_eq!(r.free_guard.as_ref().unwrap().memmap_free_pages, e.free.len() as u64);
                }
                if level == 31 {
                    assert_eq!(r.excluded.free, e.free.len() as u64);
                    assert_eq!(r.excluded.cache, e.cache.len() as u64);
                    assert_eq!(r.excluded.cache_private, 1);
                    assert_eq!(r.excluded.user, e.user.len() as u64);
                    assert_eq!(r.excluded.offline, 1);
                    assert!(r.levels.iter().all(|l| l.state == LevelState::Applied));
                    assert_eq!(r.level(DL_FREE).unwrap().excluded_pages, e.free.len() as u64);
                    // serde for report.json
                    let j = serde_json::to_value(r).unwrap();
                    assert_eq!(j["levels"][4]["state"], "applied");
                }
            }
        }
    }

    #[test]
    fn guard_refuses_free_level_when_nr_free_disagrees() {
        let mut g = Guest::new(false, true);
        let e = populate(&mut g);
        g.nr_free_override = Some((4, 2));
        let c = run(&mut g, 31);
        let r = &c.report;
        let free = r.level(DL_FREE).unwrap();
        assert_eq!(free.state, LevelState::Unverified);
        assert!(free.reason.as_ref().unwrap().contains("totals"));
        assert_eq!(r.effective_level, 15);
        // No free page dropped; the other levels still applied (the free lists prove the layout).
        for p in &e.free {
            assert!(c.dumpable.get(*p), "free pfn {p} must be kept");
        }
        assert!(!c.dumpable.get(100) && !c.dumpable.get(512));
        let guard = r.free_guard.as_ref().unwrap();
        assert!(!guard.passed);
        assert_eq!(guard.nr_free_pages, Some(e.free.len() as u64 + 16));
        assert!(r.notes.iter().any(|n| n.contains("guard failed")), "{:?}", r.notes);
    }

    #[test]
    fn a_buddy_page_off_the_free_lists_fails_the_guard() {
        let mut g = Guest::new(false, true);
        populate(&mut g);
        let _ = g.vmcoreinfo();
        // Marked buddy in its struct page but on no list.
        g.set32(6000, OFF_MAPCOUNT, BUDDY as u32);
        let text = g.vmcoreinfo();
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.level(DL_FREE).unwrap().state, LevelState::Unverified);
        assert_eq!(c.report.level(DL_CACHE).unwrap().state, LevelState::Unverified);
        assert_eq!(c.report.effective_level, 1, "zero pages only");
        assert_eq!(c.dumpable, c.valid, "nothing dropped");
    }

    #[test]
    fn missing_entries_fall_back_per_level() {
        // No VMCOREINFO at all: only zero pages (the writer's) remain.
        let mut g = Guest::new(false, true);
        populate(&mut g);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), None, 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.effective_level, 1);
        assert_eq!(c.dumpable, c.valid);
        assert!(c.report.levels.iter().skip(1).all(|l| l.state == LevelState::Unavailable));

        // No PG_lru: levels 2 and 4 unavailable, 8 and 16 applied.
        let mut g = Guest::new(false, true);
        let e = populate(&mut g);
        g.drop_keys = vec!["NUMBER(PG_lru)"];
        let c = run(&mut g, 31);
        assert_eq!(c.report.effective_level, 1 | 8 | 16, "{:?}", c.report.notes);
        assert_eq!(c.report.level(DL_CACHE).unwrap().state, LevelState::Unavailable);
        assert!(c.report.level(DL_CACHE).unwrap().reason.as_ref().unwrap().contains("PG_lru"));
        assert!(c.dumpable.get(100) && !c.dumpable.get(102));
        assert!(!c.dumpable.get(e.free[0]));

        // No PAGE_BUDDY_MAPCOUNT_VALUE: free unavailable, and without the free lists'
        // check of the layout, 2/4/8 unverified.
        let mut g = Guest::new(false, true);
        populate(&mut g);
        g.drop_keys = vec!["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"];
        let c = run(&mut g, 31);
        assert_eq!(c.report.level(DL_FREE).unwrap().state, LevelState::Unavailable);
        assert_eq!(c.report.level(DL_USER).unwrap().state, LevelState::Unverified);
        assert_eq!(c.dumpable, c.valid);

        // No mem_section: nothing but zero pages.
        let mut g = Guest::new(false, true);
        populate(&mut g);
        g.drop_keys = vec!["SYMBOL(mem_section)"];
        let c = run(&mut g, 31);
        assert_eq!(c.report.effective_level, 1);
        assert!(c.report.notes[0].contains("mem_section"), "{:?}", c.report.notes);
    }

    #[test]
    fn newer_kernels_are_not_trusted_for_flag_levels() {
        let mut g = Guest::new(false, true);
        populate(&mut g);
        let text = g.vmcoreinfo().replace("OSRELEASE=6.1.0-test-amd64", "OSRELEASE=7.3.0");
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.effective_level, 1 | 16);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions { trust_newer_kernels: true }).unwrap();
        assert_eq!(c.report.effective_level, 31);
    }

    #[test]
    fn hostile_free_lists_and_sections() {
        // A free list that loops back on an entry (not the head).
        let mut g = Guest::new(false, true);
        populate(&mut g);
        let text = g.vmcoreinfo();
        let lru = g.page_va(2048) + OFF_LRU;
        g.set64(2048, OFF_LRU, lru);
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.level(DL_FREE).unwrap().state, LevelState::Unverified);
        assert!(c.report.notes.iter().any(|n| n.contains("loops")), "{:?}", c.report.notes);
        assert_eq!(c.dumpable, c.valid);

        // A free list entry pointing outside every struct page.
        let mut g = Guest::new(false, true);
        populate(&mut g);
        let text = g.vmcoreinfo();
        g.set64(2048, OFF_LRU, 0xffff_8880_dead_0000);
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.level(DL_FREE).unwrap().state, LevelState::Unverified);

        // Absurd buddy order and a section map pointing nowhere: pages kept, no panic.
        let mut g = Guest::new(false, true);
        populate(&mut g);
        g.set64(3001, OFF_PRIVATE, 200);
        let c = run(&mut g, 31);
        assert!(c.dumpable.get(3001));
        let mut g = Guest::new(false, true);
        populate(&mut g);
        let text = g.vmcoreinfo();
        // The extreme root now points at unmapped kernel memory.
        g.w64(0x30_0000, 0xffff_ffff_f000_0000);
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.pages_with_struct_page, 0);
        assert_eq!(c.dumpable, c.valid);
        // Implausible geometry is refused, not looped over.
        let mut g = Guest::new(false, true);
        populate(&mut g);
        let text = g.vmcoreinfo().replace("NUMBER(MAX_PHYSMEM_BITS)=46", "NUMBER(MAX_PHYSMEM_BITS)=64");
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.effective_level, 1);
        assert!(classify(&mem, &mem.ranges(), Some(&info), 32, &ClassifyOptions::default()).is_err());
    }

    #[test]
    fn page_types_compare_whole_values_as_since_6_12() {
        // 6.10+: slab is a page type, no PG_slab; 6.12 values are top-byte types.
        let mut g = Guest::new(false, true);
        let e = populate(&mut g);
        let slab = 0xf500_0000u32 as i32;
        g.set64(104, OFF_FLAGS, 0);
        g.set32(104, OFF_MAPCOUNT, slab as u32);
        let text = g
            .vmcoreinfo()
            .replace("NUMBER(PG_slab)=9\n", &format!("NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)={slab}\n"))
            .replace("OSRELEASE=6.1.0-test-amd64", "OSRELEASE=6.12.0-test");
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let c = classify(&mem, &mem.ranges(), Some(&info), 31, &ClassifyOptions::default()).unwrap();
        assert_eq!(c.report.effective_level, 31, "{:?}", c.report.notes);
        assert!(c.dumpable.get(104), "slab page with mapping bit 0 is not anon");
        assert_eq!(c.report.excluded.free, e.free.len() as u64);
    }

    /// The VMCOREINFO of a real Debian 6.12 guest (linux-image-6.12.118+deb12-cloud-amd64,
    /// bookworm-security; crashvmm's host-side ELF of the `panic` scenario).
    const VMCOREINFO_6_12: &str = include_str!("../tests/fixtures/vmcoreinfo-6.12.118+deb12-cloud-amd64.txt");

    #[test]
    fn debian_6_12_vmcoreinfo_gives_the_expected_rule_inputs() {
        let info = VmcoreInfo::parse(VMCOREINFO_6_12);
        assert_eq!(info.osrelease(), Some("6.12.118+deb12-cloud-amd64"));
        let v = info.kernel_version().unwrap();
        assert_eq!(v, (6, 12, 118));
        assert!((v.0, v.1) <= NEWEST_KNOWN, "6.12 is within the rules known here");
        assert_eq!(info.page_size(), Some(4096));
        assert!(info.pgtable_l5(), "the guest ran with 5-level paging");
        assert_eq!(info.kernel_offset(), Some(0xe40_0000));
        assert_eq!(info.phys_base(), Some(-159_383_552i64 as u64), "phys_base is negative here");

        let r = Rules::from(&info).unwrap();
        // struct page: unchanged from 6.1.
        assert_eq!((r.size, r.flags, r.mapping), (64, 0, 24));
        assert_eq!((r.mapcount, r.private, r.compound_head), (Some(48), Some(40), Some(8)));
        // Page flags: renumbered against 6.1 (PG_lru 4 -> 5, PG_private 13 -> 14, PG_head 16 -> 6).
        assert_eq!(r.pg_lru, Some(5));
        assert_eq!(r.pg_private, Some(14));
        assert_eq!(r.pg_swapcache, Some(10));
        assert_eq!(r.pg_swapbacked, Some(17));
        assert_eq!(r.pg_hwpoison, Some(20));
        assert_eq!(r.pg_head_mask, Some(1 << 6));
        // No PG_slab since 6.10, no PG_hugetlb (a page type since 6.9).
        assert_eq!((r.pg_slab, r.pg_hugetlb), (None, None));
        // Page types are whole top-byte values since 6.12 (4ffca5a96678c): PGTY_buddy 0xf0,
        // PGTY_offline 0xf1, PGTY_hugetlb 0xf4, PGTY_slab 0xf5, nothing in the low 24 bits.
        assert_eq!(r.buddy_value, Some(0xf000_0000u32 as i32));
        assert_eq!(r.offline_value, Some(0xf100_0000u32 as i32));
        assert_eq!(r.hugetlb_value, Some(0xf400_0000u32 as i32));
        assert_eq!(r.slab_value, Some(0xf500_0000u32 as i32));
        assert_eq!(r.unaccepted_value, None, "unaccepted pages came with 6.16");
        // No compound_order/_folio_order/dtor entries: the order is `_flags_1 & 0xff`.
        assert_eq!((r.order_offset, r.dtor_offset, r.hugetlb_dtor, r.free_huge_page), (None, None, None, None));
        assert_eq!(r.max_order, Some(11));
        for l in [DL_CACHE, DL_CACHE_PRIVATE, DL_USER, DL_FREE] {
            assert!(r.missing(l).is_empty(), "level {l}: {:?}", r.missing(l));
        }
        // makedumpfile before 1.7.7 derived a flag from the slab value
        // (`(_mapcount & (0xf0000000 | ~SLAB)) == 0xf0000000`): on 6.12 that calls a buddy page
        // slab. Compared whole, it is not.
        let buddy = r.buddy_value.unwrap() as u32;
        let old_slab_rule = buddy & (0xf000_0000 | !(r.slab_value.unwrap() as u32)) == 0xf000_0000;
        assert!(old_slab_rule, "the pre-1.7.7 rule misreads 6.12 buddy pages");
        assert!(!r.is_slab(0, buddy as i32));
        assert!(r.is_slab(0, r.slab_value.unwrap()));
        // The free-page guard's inputs are all there.
        for k in [
            "OFFSET(pglist_data.node_zones)",
            "OFFSET(pglist_data.nr_zones)",
            "SIZE(zone)",
            "OFFSET(zone.free_area)",
            "SIZE(free_area)",
            "OFFSET(free_area.free_list)",
            "LENGTH(free_area.free_list)",
            "OFFSET(page.lru)",
            "SYMBOL(node_data)",
            "SYMBOL(node_online_map)",
        ] {
            assert!(info.has(k), "{k}");
        }
    }

    /// One struct page in the 6.12 layout (flags at 0, compound_head/lru at 8, mapping 24,
    /// private 40, _mapcount 48).
    fn page_6_12(flags: u64, compound_head: u64, mapping: u64, private: u64, mapcount: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&compound_head.to_le_bytes());
        b[24..32].copy_from_slice(&mapping.to_le_bytes());
        b[40..48].copy_from_slice(&private.to_le_bytes());
        b[48..52].copy_from_slice(&mapcount.to_le_bytes());
        b
    }

    #[test]
    fn debian_6_12_struct_pages_classify_as_makedumpfile_1_7_9() {
        let r = Rules::from(&VmcoreInfo::parse(VMCOREINFO_6_12)).unwrap();
        let none = u32::MAX; // _mapcount -1: no type, not mapped
        let (lru, private, swapcache, swapbacked, head) = (1 << 5, 1 << 14, 1 << 10, 1 << 17, 1 << 6);
        let (buddy, slab, hugetlb, offline) = (0xf000_0000u32, 0xf500_0000u32, 0xf400_0000u32, 0xf100_0000u32);
        let anon_map = 0xff30_56c1_0000_1001u64; // an anon_vma pointer | PAGE_MAPPING_ANON
        let file_map = 0xff30_56c1_0000_2000u64;
        let d = |level: u8, pfn: u64, page: &[u8], next: Option<&[u8]>| {
            decide(&r, level, pfn, &PageView { bytes: page, next }, true)
        };
        // Buddy head of order 3.
        assert_eq!(d(31, 1024, &page_6_12(0, 0, 0, 3, buddy), None), (Class::Free, 8));
        assert_eq!(d(15, 1024, &page_6_12(0, 0, 0, 3, buddy), None), (Class::Keep, 1));
        // A slab page whose mapping word has bit 0 set (slab fields overlay it): not anon.
        assert_eq!(d(31, 7, &page_6_12(0, 0, anon_map, 0, slab), None), (Class::Keep, 1));
        // Anon page; anon in the swap cache is user, not cache.
        assert_eq!(d(31, 8, &page_6_12(lru | swapbacked, 0, anon_map, 0, none), None), (Class::User, 1));
        assert_eq!(d(2, 8, &page_6_12(lru | swapcache | swapbacked, 0, anon_map, 0, none), None), (Class::Keep, 1));
        // Page cache, with and without PG_private.
        assert_eq!(d(2, 9, &page_6_12(lru, 0, file_map, 0, none), None), (Class::Cache, 1));
        assert_eq!(d(2, 9, &page_6_12(lru | private, 0, file_map, 0, none), None), (Class::Keep, 1));
        assert_eq!(d(4, 9, &page_6_12(lru | private, 0, file_map, 0, none), None), (Class::CachePrivate, 1));
        // A hugetlb folio of order 9: the type on the head, the order in _flags_1's low byte.
        let tail1 = page_6_12(9, 1024 * 64 + 1, 0, 0, none);
        assert_eq!(d(8, 1024, &page_6_12(head, 0, 0, 0, hugetlb), Some(&tail1)), (Class::User, 512));
        assert_eq!(d(2, 1024, &page_6_12(head, 0, 0, 0, hugetlb), Some(&tail1)), (Class::Keep, 1));
        // A large anon folio (mTHP, order 4) and a large page-cache folio (order 2).
        let tail4 = page_6_12(4, 1, 0, 0, none);
        assert_eq!(
            d(8, 2048, &page_6_12(head | lru | swapbacked, 0, anon_map, 0, none), Some(&tail4)),
            (Class::User, 16)
        );
        let tail2 = page_6_12(2, 1, 0, 0, none);
        assert_eq!(d(2, 4096, &page_6_12(head | lru, 0, file_map, 0, none), Some(&tail2)), (Class::Cache, 4));
        // A compound tail is never excluded by itself; an offline (ballooned) page always is.
        assert_eq!(d(31, 4097, &page_6_12(lru, 4096 * 64 + 1, file_map, 0, none), None), (Class::Keep, 1));
        assert_eq!(d(2, 10, &page_6_12(0, 0, 0, 0, offline), None), (Class::Offline, 1));
    }

    #[test]
    fn bitmap_bytes_round_trip() {
        let mut b = Bitmap::new(77);
        for i in [0, 7, 8, 63, 64, 76, 77, 1000] {
            b.set(i, true);
        }
        assert_eq!(b.count(), 6);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 7, 8, 63, 64, 76]);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 10);
        assert_eq!(bytes[0], 0x81);
        assert_eq!(Bitmap::from_bytes(&bytes, 77), b);
        assert_eq!(Bitmap::from_bytes(&[0xff; 10], 77).count(), 77);
    }
}
