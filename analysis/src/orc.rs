//! The kernel's ORC unwind tables (CONFIG_UNWINDER_ORC), found through kallsyms:
//! `__start_orc_unwind_ip`..`__stop_orc_unwind_ip` (`int` offsets, each relative to its own
//! address), `__start_orc_unwind` (the parallel `struct orc_entry` array), and the fast lookup
//! table `orc_lookup`..`orc_lookup_end` (one `unsigned int` per 256-byte block of
//! `_stext.._etext`), as arch/x86/kernel/unwind_orc.c (v6.1) sorts and reads them
//! (`unwind_init`, `orc_find`, `__orc_find`).
//!
//! `struct orc_entry` (arch/x86/include/asm/orc_types.h) is 6 packed bytes: `s16 sp_offset`,
//! `s16 bp_offset`, then little-endian bitfields. v6.1: `sp_reg:4 bp_reg:4 type:2 end:1`
//! (types CALL 0, REGS 1, REGS_IRET 2 — objtool's UNWIND_HINT_TYPE_REGS_PARTIAL; `end` with an
//! undefined SP register marks the end of the stack). v6.3 and later: `sp_reg:4 bp_reg:4
//! type:3 signal:1` (types UNDEFINED 0, END_OF_STACK 1, CALL 2, REGS 3, REGS_PARTIAL 4); that
//! layout is told apart by its `signal` bit, which 6.1 never sets.

use kdump::PhysMem;

use crate::kallsyms::Kallsyms;
use crate::{AnalysisError, KernelMem};

/// The most ORC entries accepted (a distribution kernel has ~300k).
pub const MAX_ENTRIES: usize = 4 << 20;
/// `LOOKUP_BLOCK_SIZE` (arch/x86/include/asm/orc_lookup.h).
pub const LOOKUP_BLOCK_SIZE: u64 = 256;

/// `ORC_REG_*` (orc_types.h).
pub mod reg {
    pub const UNDEFINED: u8 = 0;
    pub const PREV_SP: u8 = 1;
    pub const DX: u8 = 2;
    pub const DI: u8 = 3;
    pub const BP: u8 = 4;
    pub const SP: u8 = 5;
    pub const R10: u8 = 6;
    pub const R13: u8 = 7;
    pub const BP_INDIRECT: u8 = 8;
    pub const SP_INDIRECT: u8 = 9;
}

/// What kind of frame an entry describes, in one enum for both layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcType {
    /// A normal function frame: the return address is below the previous SP.
    Call,
    /// A full `pt_regs` at the computed SP.
    Regs,
    /// Only the hardware IRET frame at the computed SP (`pt_regs` minus its first 128 bytes).
    RegsPartial,
    /// No unwind information (6.3+ ORC_TYPE_UNDEFINED; 6.1: undefined SP without `end`).
    Undefined,
    /// The end of the stack (6.3+ END_OF_STACK; 6.1: undefined SP with `end`).
    End,
}

/// One decoded `struct orc_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrcEntry {
    pub sp_offset: i16,
    pub bp_offset: i16,
    pub sp_reg: u8,
    pub bp_reg: u8,
    pub kind: OrcType,
    /// 6.3+'s `signal`: the IP is not a return address (REGS frames, some hints).
    pub signal: bool,
}

impl OrcEntry {
    /// The 6.1 layout (`type:2 end:1`) or, with `new_layout`, 6.3's (`type:3 signal:1`).
    pub fn decode(b: [u8; 6], new_layout: bool) -> Self {
        let sp_offset = i16::from_le_bytes([b[0], b[1]]);
        let bp_offset = i16::from_le_bytes([b[2], b[3]]);
        let w = u16::from_le_bytes([b[4], b[5]]);
        let sp_reg = (w & 0xf) as u8;
        let bp_reg = ((w >> 4) & 0xf) as u8;
        let (kind, signal) = if new_layout {
            let kind = match (w >> 8) & 7 {
                0 => OrcType::Undefined,
                1 => OrcType::End,
                2 => OrcType::Call,
                3 => OrcType::Regs,
                4 => OrcType::RegsPartial,
                _ => OrcType::Undefined,
            };
            (kind, (w >> 11) & 1 != 0)
        } else {
            let end = (w >> 10) & 1 != 0;
            let kind = if sp_reg == reg::UNDEFINED {
                if end {
                    OrcType::End
                } else {
                    OrcType::Undefined
                }
            } else {
                match (w >> 8) & 3 {
                    0 => OrcType::Call,
                    1 => OrcType::Regs,
                    2 => OrcType::RegsPartial,
                    _ => OrcType::Undefined,
                }
            };
            (kind, matches!(kind, OrcType::Regs | OrcType::RegsPartial))
        };
        OrcEntry { sp_offset, bp_offset, sp_reg, bp_reg, kind, signal }
    }

    /// `null_orc_entry`: for IP 0 (a call through a NULL pointer), the return address is at SP.
    pub const NULL: OrcEntry = OrcEntry {
        sp_offset: 8,
        bp_offset: 0,
        sp_reg: reg::SP,
        bp_reg: reg::UNDEFINED,
        kind: OrcType::Call,
        signal: false,
    };
}

/// The vmlinux ORC tables (modules' are not read).
pub struct Orc {
    /// `__start_orc_unwind_ip`'s address.
    ip_table_va: u64,
    /// The raw `int` offsets.
    ips: Vec<i32>,
    /// The raw 6-byte entries.
    entries: Vec<[u8; 6]>,
    /// `orc_lookup`, `lookup_num_blocks` entries.
    lookup: Vec<u32>,
    stext: u64,
    etext: u64,
    sinittext: u64,
    einittext: u64,
    new_layout: bool,
}

fn need(syms: &Kallsyms, name: &str) -> Result<u64, AnalysisError> {
    syms.lookup(name).ok_or_else(|| AnalysisError::NoSymbol(name.into()))
}

fn read_big<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, va: u64, len: usize) -> Result<Vec<u8>, AnalysisError> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(crate::kmem::MAX_READ);
        out.extend_from_slice(&kmem.bytes(va.wrapping_add(out.len() as u64), n)?);
    }
    Ok(out)
}

impl Orc {
    /// Reads the tables: each in one bounded read.
    pub fn read<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, syms: &Kallsyms) -> Result<Self, AnalysisError> {
        let start_ip = need(syms, "__start_orc_unwind_ip")?;
        let stop_ip = need(syms, "__stop_orc_unwind_ip")?;
        let start = need(syms, "__start_orc_unwind")?;
        let lookup_va = need(syms, "orc_lookup")?;
        let lookup_end = need(syms, "orc_lookup_end")?;
        let (stext, etext) = syms.text();
        let bad = |what: String| AnalysisError::Implausible(what);
        let ip_bytes = stop_ip.checked_sub(start_ip).ok_or_else(|| bad("ORC ip table bounds".into()))?;
        if ip_bytes == 0 || ip_bytes % 4 != 0 || ip_bytes / 4 > MAX_ENTRIES as u64 {
            return Err(bad(format!("ORC ip table of {ip_bytes} bytes")));
        }
        let num = (ip_bytes / 4) as usize;
        let blocks_bytes = lookup_end.checked_sub(lookup_va).ok_or_else(|| bad("orc_lookup bounds".into()))?;
        let blocks = (blocks_bytes / 4) as usize;
        let text_blocks = etext.saturating_sub(stext) / LOOKUP_BLOCK_SIZE + 2;
        if blocks < 2 || blocks as u64 > text_blocks + 1024 {
            return Err(bad(format!("orc_lookup of {blocks} blocks")));
        }
        let ips: Vec<i32> = read_big(kmem, start_ip, num * 4)?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let entries: Vec<[u8; 6]> =
            read_big(kmem, start, num * 6)?.chunks_exact(6).map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]]).collect();
        let lookup: Vec<u32> = read_big(kmem, lookup_va, blocks * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let new_layout = entries.iter().any(|e| e[5] & 0x08 != 0);
        Ok(Orc {
            ip_table_va: start_ip,
            ips,
            entries,
            lookup,
            stext,
            etext,
            sinittext: syms.lookup("_sinittext").unwrap_or(0),
            einittext: syms.lookup("_einittext").unwrap_or(0),
            new_layout,
        })
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// Whether the entries are in the 6.3+ layout.
    pub fn new_layout(&self) -> bool {
        self.new_layout
    }

    /// `orc_ip`: entry `i`'s address (`(unsigned long)ip + *ip`).
    fn ip(&self, i: usize) -> Option<u64> {
        let off = *self.ips.get(i)?;
        Some(self.ip_table_va.wrapping_add(4 * i as u64).wrapping_add(off as i64 as u64))
    }

    /// `__orc_find` over entries `[first, first + num)`: the rightmost entry at or below `ip`.
    fn find_in(&self, first: usize, num: usize, ip: u64) -> Option<usize> {
        if num == 0 {
            return None;
        }
        let (mut lo, mut hi) = (first as i64, (first + num) as i64 - 1);
        let mut found = first;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            if self.ip(mid as usize)? <= ip {
                found = mid as usize;
                lo = mid + 1;
            } else {
                hi = mid - 1;
            }
        }
        Some(found)
    }

    /// `orc_find`: the entry for `ip` (core kernel text and init text only).
    pub fn find(&self, ip: u64) -> Option<OrcEntry> {
        if ip == 0 {
            return Some(OrcEntry::NULL);
        }
        let i = if ip >= self.stext && ip < self.etext {
            let idx = usize::try_from((ip - self.stext) / LOOKUP_BLOCK_SIZE).ok()?;
            if idx >= self.lookup.len().saturating_sub(1) {
                return None;
            }
            let start = *self.lookup.get(idx)? as usize;
            let stop = (*self.lookup.get(idx + 1)? as usize).checked_add(1)?;
            if start >= self.entries.len() || stop > self.entries.len() || stop < start {
                return None;
            }
            self.find_in(start, stop - start, ip)?
        } else if ip >= self.sinittext && ip < self.einittext {
            self.find_in(0, self.ips.len(), ip)?
        } else {
            return None;
        };
        Some(OrcEntry::decode(*self.entries.get(i)?, self.new_layout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 6.1 entry's bytes.
    pub fn entry(sp_reg: u8, sp_off: i16, bp_reg: u8, bp_off: i16, ty: u8, end: bool) -> [u8; 6] {
        let w: u16 = sp_reg as u16 | (bp_reg as u16) << 4 | (ty as u16) << 8 | (end as u16) << 10;
        let a = sp_off.to_le_bytes();
        let b = bp_off.to_le_bytes();
        let c = w.to_le_bytes();
        [a[0], a[1], b[0], b[1], c[0], c[1]]
    }

    #[test]
    fn decodes_both_layouts() {
        let e = OrcEntry::decode(entry(reg::SP, 16, reg::PREV_SP, -16, 0, false), false);
        assert_eq!(
            (e.sp_reg, e.sp_offset, e.bp_reg, e.bp_offset, e.kind),
            (reg::SP, 16, reg::PREV_SP, -16, OrcType::Call)
        );
        assert_eq!(OrcEntry::decode(entry(0, 0, 0, 0, 0, true), false).kind, OrcType::End);
        assert_eq!(OrcEntry::decode(entry(0, 0, 0, 0, 0, false), false).kind, OrcType::Undefined);
        assert_eq!(OrcEntry::decode(entry(reg::SP, 0, 0, 0, 2, false), false).kind, OrcType::RegsPartial);
        // 6.3: type 3 = REGS, signal bit.
        let w: u16 = reg::SP as u16 | 3 << 8 | 1 << 11;
        let c = w.to_le_bytes();
        let e = OrcEntry::decode([0, 0, 0, 0, c[0], c[1]], true);
        assert_eq!(e.kind, OrcType::Regs);
        assert!(e.signal);
    }
}
