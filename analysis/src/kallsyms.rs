//! The kernel's symbol table from its kallsyms tables in guest memory, found through
//! VMCOREINFO's `SYMBOL(kallsyms_*)` (kernel/crash_core.c, 6.0+).
//!
//! The tables are those scripts/kallsyms.c (v6.1) writes and kernel/kallsyms.c reads:
//! - `kallsyms_num_syms` (`unsigned int`);
//! - `kallsyms_names`: per symbol a length (one byte; 6.1: when its high bit is set, a second
//!   byte holds bits 7..14) and that many token indexes; the tokens' concatenation is the
//!   type character followed by the name (`kallsyms_expand_symbol`, `kallsyms_get_symbol_type`);
//! - `kallsyms_token_table` (256 NUL-terminated tokens) and `kallsyms_token_index` (256 `u16`
//!   offsets into it);
//! - `kallsyms_offsets` (`int`) and `kallsyms_relative_base` (`unsigned long`) with
//!   CONFIG_KALLSYMS_BASE_RELATIVE, else `kallsyms_addresses` (`unsigned long`); the address is
//!   `kallsyms_sym_address`'s.

use kdump::{PhysMem, VmcoreInfo};

use crate::{AnalysisError, KernelMem};

/// The most symbols accepted (a distribution kernel has ~150k; `allyesconfig` under 1M).
pub const MAX_SYMS: u32 = 1 << 22;
/// The most bytes of `kallsyms_names` read (a distribution kernel's is ~1.5 MiB).
pub const MAX_NAMES_BYTES: usize = 32 << 20;
/// `KSYM_NAME_LEN` (include/linux/kallsyms.h, 6.1): names are shorter.
pub const KSYM_NAME_LEN: usize = 512;
/// The token table's size, at most (256 tokens of a few bytes each).
const MAX_TOKEN_TABLE: usize = 64 << 10;
/// The size of the pieces large tables are read in.
const CHUNK: usize = 1 << 20;

/// A symbolized address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// The module the address is in, for module addresses.
    pub module: Option<String>,
}

impl Symbol {
    /// `function+0xoff/0xsize`, as the kernel prints it.
    pub fn display(&self) -> String {
        format!("{}+{:#x}/{:#x}", self.name, self.offset, self.size)
    }
}

/// The kernel's symbols, sorted by address as scripts/kallsyms.c sorts them.
pub struct Kallsyms {
    /// Every name, concatenated.
    names: String,
    /// Per symbol, the end of its name in `names` (the start is the previous one's end).
    ends: Vec<u32>,
    addrs: Vec<u64>,
    /// `kallsyms_get_symbol_type`'s character.
    types: Vec<u8>,
    /// `_stext`, `_etext`, `_sinittext`, `_einittext`, `_end`, where found.
    stext: u64,
    etext: u64,
    sinittext: u64,
    einittext: u64,
    end: u64,
    /// Whether data symbols are in the table (CONFIG_KALLSYMS_ALL): `is_ksym_addr` then takes
    /// everything in `[_stext, _end)`.
    all: bool,
    /// The loaded modules' symbols, for addresses outside the kernel image.
    modules: Option<crate::modules::Modules>,
}

/// `len` bytes at `va`, read in pieces; with `partial`, a failing piece ends the read early
/// (the bytes before it are returned).
fn read_table<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    va: u64,
    len: usize,
    partial: bool,
) -> Result<Vec<u8>, AnalysisError> {
    let mut out = Vec::with_capacity(len.min(CHUNK * 4));
    while out.len() < len {
        let n = (len - out.len()).min(CHUNK);
        let at = va.wrapping_add(out.len() as u64);
        match kmem.bytes(at, n) {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) if !partial => return Err(e.into()),
            Err(e) => {
                // Page by page up to the failing page.
                let mut got = false;
                let mut off = 0usize;
                while off < n {
                    let page = (4096 - (at.wrapping_add(off as u64) % 4096) as usize).min(n - off);
                    match kmem.bytes(at.wrapping_add(off as u64), page) {
                        Ok(b) => {
                            out.extend_from_slice(&b);
                            got = true;
                        }
                        Err(_) => break,
                    }
                    off += page;
                }
                if !got && out.is_empty() {
                    return Err(e.into());
                }
                break;
            }
        }
    }
    Ok(out)
}

fn sym(info: &VmcoreInfo, name: &str) -> Result<u64, AnalysisError> {
    info.symbol(name).ok_or_else(|| AnalysisError::Missing(format!("SYMBOL({name})")))
}

impl Kallsyms {
    /// Reads and decodes the whole table (bounded: [`MAX_SYMS`], [`MAX_NAMES_BYTES`]).
    pub fn read<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, info: &VmcoreInfo) -> Result<Self, AnalysisError> {
        let names_va = sym(info, "kallsyms_names")?;
        let num_va = sym(info, "kallsyms_num_syms")?;
        let table_va = sym(info, "kallsyms_token_table")?;
        let index_va = sym(info, "kallsyms_token_index")?;
        let num = kmem.u32(num_va)?;
        if num == 0 || num > MAX_SYMS {
            return Err(AnalysisError::Implausible(format!("kallsyms_num_syms {num}")));
        }
        let n = num as usize;

        // The token table: up to the index when it follows it (scripts/kallsyms.c's order).
        let tlen = match index_va.checked_sub(table_va) {
            Some(d) if d > 0 && d <= MAX_TOKEN_TABLE as u64 => d as usize,
            _ => MAX_TOKEN_TABLE,
        };
        let ttable = read_table(kmem, table_va, tlen, true)?;
        let tindex = kmem.bytes(index_va, 512)?;
        let mut tokens: Vec<&[u8]> = Vec::with_capacity(256);
        for i in 0..256 {
            let start = tindex
                .get(2 * i..2 * i + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or_else(|| AnalysisError::Implausible("kallsyms_token_index".into()))?;
            let rest = ttable
                .get(start..)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| AnalysisError::Implausible(format!("kallsyms token {i} at {start}")))?;
            let len = rest
                .iter()
                .position(|&c| c == 0)
                .ok_or_else(|| AnalysisError::Implausible(format!("kallsyms token {i} unterminated")))?;
            tokens.push(&rest[..len]);
        }

        // The names: up to the token table when it follows them, else as much as is mapped.
        let nlen = match table_va.checked_sub(names_va) {
            Some(d) if d > 0 && d <= MAX_NAMES_BYTES as u64 => d as usize,
            _ => MAX_NAMES_BYTES.min(n.saturating_mul(2 + 255)),
        };
        let data = read_table(kmem, names_va, nlen, true)?;
        let mut names = String::with_capacity(n * 16);
        let mut ends = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut off = 0usize;
        let mut buf: Vec<u8> = Vec::with_capacity(KSYM_NAME_LEN);
        let short = || AnalysisError::Implausible("kallsyms_names ends early".into());
        for _ in 0..n {
            let b0 = *data.get(off).ok_or_else(short)? as usize;
            off += 1;
            let len = if b0 & 0x80 != 0 {
                let b1 = *data.get(off).ok_or_else(short)? as usize;
                off += 1;
                (b0 & 0x7f) | (b1 << 7)
            } else {
                b0
            };
            let toks = data.get(off..off + len).ok_or_else(short)?;
            off += len;
            buf.clear();
            for &t in toks {
                // `tokens` has 256 entries: every byte indexes it.
                if let Some(tok) = tokens.get(t as usize) {
                    buf.extend_from_slice(tok);
                }
                if buf.len() > KSYM_NAME_LEN {
                    return Err(AnalysisError::Implausible(format!("a kallsyms name over {KSYM_NAME_LEN} bytes")));
                }
            }
            let (ty, name) = buf.split_first().map(|(t, r)| (*t, r)).unwrap_or((b'?', &[][..]));
            types.push(ty);
            names.push_str(&String::from_utf8_lossy(name));
            let end = u32::try_from(names.len())
                .map_err(|_| AnalysisError::Implausible("kallsyms names over 4 GiB".into()))?;
            ends.push(end);
        }

        let addrs = if let Some(offs_va) = info.symbol("kallsyms_offsets") {
            let base = kmem.u64(sym(info, "kallsyms_relative_base")?)?;
            let raw = read_table(kmem, offs_va, n * 4, false)?;
            let offs: Vec<i32> = raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            // CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86_64 SMP): scripts/kallsyms.c then stores every
            // relative symbol as `relative_base - addr - 1`, a negative number; without it every
            // offset is `addr - relative_base`, never past 2 GiB. So: any negative offset means it.
            let absolute_percpu = offs.iter().any(|&o| o < 0);
            offs.iter()
                .map(|&o| {
                    if !absolute_percpu {
                        base.wrapping_add(o as u32 as u64)
                    } else if o >= 0 {
                        o as u64
                    } else {
                        base.wrapping_sub(1).wrapping_sub(o as i64 as u64)
                    }
                })
                .collect()
        } else {
            let va = sym(info, "kallsyms_addresses")?;
            let raw = read_table(kmem, va, n * 8, false)?;
            raw.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect()
        };

        let mut k = Kallsyms {
            names,
            ends,
            addrs,
            types,
            stext: 0,
            etext: 0,
            sinittext: 0,
            einittext: 0,
            end: 0,
            all: false,
            modules: None,
        };
        k.stext = k.lookup("_stext").unwrap_or(0);
        k.etext = k.lookup("_etext").unwrap_or(0);
        k.sinittext = k.lookup("_sinittext").unwrap_or(0);
        k.einittext = k.lookup("_einittext").unwrap_or(0);
        k.end = k.lookup("_end").unwrap_or(0);
        k.all = k.types.iter().any(|t| matches!(t, b'd' | b'D' | b'b' | b'B'));
        if let Some(want) = info.symbol("_stext") {
            if k.stext != want {
                return Err(AnalysisError::Implausible(format!(
                    "kallsyms: _stext at {:#x}, VMCOREINFO says {want:#x}",
                    k.stext
                )));
            }
        }
        if k.stext == 0 || k.etext <= k.stext {
            return Err(AnalysisError::Implausible("kallsyms: no _stext.._etext".into()));
        }
        Ok(k)
    }

    /// How many symbols.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Symbol `i`'s name.
    pub fn name(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = match i.checked_sub(1) {
            Some(p) => *self.ends.get(p)? as usize,
            None => 0,
        };
        self.names.get(start..end)
    }

    /// Symbol `i`'s type character (`t`, `T`, `d`, ...).
    pub fn sym_type(&self, i: usize) -> Option<u8> {
        self.types.get(i).copied()
    }

    /// Symbol `i`'s address.
    pub fn address(&self, i: usize) -> Option<u64> {
        self.addrs.get(i).copied()
    }

    /// `[_stext, _etext)`: the kernel's core text (`is_kernel_text`).
    pub fn text(&self) -> (u64, u64) {
        (self.stext, self.etext)
    }

    /// `is_kernel_text(addr) || is_kernel_inittext(addr)` (include/asm-generic/sections.h).
    pub fn is_kernel_text(&self, addr: u64) -> bool {
        (addr >= self.stext && addr < self.etext) || self.is_inittext(addr)
    }

    fn is_inittext(&self, addr: u64) -> bool {
        addr >= self.sinittext && addr < self.einittext
    }

    /// `is_ksym_addr` (kernel/kallsyms.c).
    pub fn is_ksym_addr(&self, addr: u64) -> bool {
        if self.all {
            addr >= self.stext && addr < self.end
        } else {
            self.is_kernel_text(addr)
        }
    }

    /// The address of a symbol: the first of that name, as `kallsyms_lookup_name` (6.1: a
    /// linear scan in table order).
    pub fn lookup(&self, name: &str) -> Option<u64> {
        let want = name.as_bytes();
        let bytes = self.names.as_bytes();
        let mut start = 0usize;
        for (i, &end) in self.ends.iter().enumerate() {
            let end = end as usize;
            if end - start == want.len() && bytes.get(start..end) == Some(want) {
                return self.addrs.get(i).copied();
            }
            start = end;
        }
        None
    }

    /// The index of the symbol `addr` is in: `get_symbol_pos`'s binary search, then the first
    /// of the aliases at that address.
    fn pos(&self, addr: u64) -> Option<usize> {
        let a = &self.addrs;
        let mut low = 0usize;
        let mut high = a.len();
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if *a.get(mid)? <= addr {
                low = mid;
            } else {
                high = mid;
            }
        }
        while low > 0 && a.get(low - 1) == a.get(low) {
            low -= 1;
        }
        Some(low)
    }

    /// The symbol an address is in, as `kallsyms_lookup_size_offset` computes it for the core
    /// kernel (`is_ksym_addr`; the size runs to the next symbol with a higher address, or to
    /// `_einittext`/`_end`/`_etext` after the last one). Module addresses: `None`.
    pub fn symbolize(&self, addr: u64) -> Option<Symbol> {
        if !self.is_ksym_addr(addr) {
            return self.modules.as_ref().and_then(|m| m.symbolize(addr));
        }
        let i = self.pos(addr)?;
        let start = *self.addrs.get(i)?;
        if start > addr {
            return None;
        }
        let next = self.addrs.get(i + 1..)?.iter().copied().find(|&x| x > start);
        let end = match next {
            Some(e) => e,
            None if self.is_inittext(addr) => self.einittext,
            None if self.all => self.end,
            None => self.etext,
        };
        Some(Symbol {
            name: self.name(i)?.to_string(),
            offset: addr - start,
            size: end.saturating_sub(start),
            module: None,
        })
    }

    /// Symbolize module addresses too, from now on.
    pub fn set_modules(&mut self, modules: crate::modules::Modules) {
        self.modules = Some(modules);
    }

    /// Whether `addr` is in a loaded module's text.
    pub fn is_module_text(&self, addr: u64) -> bool {
        self.modules.as_ref().is_some_and(|m| m.is_text(addr))
    }

    /// The symbol's type character at `addr` (of the first alias), for core kernel addresses.
    pub fn type_at(&self, addr: u64) -> Option<u8> {
        if !self.is_ksym_addr(addr) {
            return None;
        }
        self.sym_type(self.pos(addr)?)
    }

    /// Whether `addr` is kernel text as the stack scan takes it: in `_stext.._etext` or the
    /// init text, and in a `t`/`T` symbol.
    pub fn is_text_addr(&self, addr: u64) -> bool {
        (self.is_kernel_text(addr) && matches!(self.type_at(addr), Some(b't' | b'T'))) || self.is_module_text(addr)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kdump::SliceMem;

    /// Test kernel addresses map to physical `va - BASE`.
    pub const BASE: u64 = 0xffff_ffff_8000_0000;

    /// Where the tables go in the test image (physical offsets).
    pub struct Layout {
        pub offsets: u64,
        pub base: u64,
        pub num: u64,
        pub names: u64,
        pub table: u64,
        pub index: u64,
    }

    /// A small kallsyms encoder: tokens are single characters plus a few pairs, as a toy
    /// scripts/kallsyms.c would make; relative (absolute-percpu) offsets.
    pub fn encode(syms: &[(&str, u8, u64)], relative_base: u64, mem: &mut [u8], at: u64) -> (Layout, String) {
        let mut tokens: Vec<Vec<u8>> = (0..256u32).map(|c| vec![c as u8]).collect();
        // Some multi-byte tokens in unused slots.
        tokens[1] = b"ab".to_vec();
        tokens[2] = b"_s".to_vec();
        tokens[3] = b"text".to_vec();
        let mut table = Vec::new();
        let mut index = Vec::new();
        for t in &tokens {
            index.extend_from_slice(&(table.len() as u16).to_le_bytes());
            table.extend_from_slice(t);
            table.push(0);
        }
        let mut names = Vec::new();
        for (name, ty, _) in syms {
            let mut enc = vec![*ty];
            let b = name.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i..].starts_with(b"text") {
                    enc.push(3);
                    i += 4;
                } else if b[i..].starts_with(b"_s") {
                    enc.push(2);
                    i += 2;
                } else if b[i..].starts_with(b"ab") {
                    enc.push(1);
                    i += 2;
                } else {
                    enc.push(b[i]);
                    i += 1;
                }
            }
            if enc.len() < 128 {
                names.push(enc.len() as u8);
            } else {
                names.push((enc.len() & 0x7f) as u8 | 0x80);
                names.push((enc.len() >> 7) as u8);
            }
            names.extend_from_slice(&enc);
        }
        let mut offs = Vec::new();
        for (_, _, addr) in syms {
            let o: i32 = if *addr < 0x1_0000_0000 {
                *addr as i32
            } else {
                (relative_base.wrapping_sub(*addr).wrapping_sub(1)) as i64 as i32
            };
            offs.extend_from_slice(&o.to_le_bytes());
        }
        let mut p = at;
        let mut put = |bytes: &[u8], align: u64| -> u64 {
            p = p.next_multiple_of(align);
            let s = p as usize;
            mem[s..s + bytes.len()].copy_from_slice(bytes);
            let r = p;
            p += bytes.len() as u64;
            r
        };
        let offsets = put(&offs, 8);
        let base = put(&relative_base.to_le_bytes(), 8);
        let num = put(&(syms.len() as u32).to_le_bytes(), 8);
        let names = put(&names, 8);
        let table = put(&table, 8);
        let index = put(&index, 8);
        let l = Layout { offsets, base, num, names, table, index };
        let info = format!(
            "SYMBOL(kallsyms_names)={:x}\nSYMBOL(kallsyms_num_syms)={:x}\nSYMBOL(kallsyms_token_table)={:x}\n\
             SYMBOL(kallsyms_token_index)={:x}\nSYMBOL(kallsyms_offsets)={:x}\nSYMBOL(kallsyms_relative_base)={:x}\n",
            l.names + BASE,
            l.num + BASE,
            l.table + BASE,
            l.index + BASE,
            l.offsets + BASE,
            l.base + BASE
        );
        (l, info)
    }

    pub const TEXT: u64 = BASE + 0x100000;

    pub fn sample_syms() -> Vec<(String, u8, u64)> {
        let mut v = vec![
            ("fixed_percpu_data".to_string(), b'A', 0u64),
            ("cpu_number".to_string(), b'D', 0x20),
            ("_stext".to_string(), b'T', TEXT),
            ("_text".to_string(), b'T', TEXT),
            ("start_kernel".to_string(), b'T', TEXT + 0x10),
            ("abababtext_helper".to_string(), b't', TEXT + 0x100),
            ("x".repeat(200), b't', TEXT + 0x180),
            ("do_thing".to_string(), b'T', TEXT + 0x200),
            ("caller_fn".to_string(), b'T', TEXT + 0x300),
            ("outer_fn".to_string(), b'T', TEXT + 0x400),
            ("_etext".to_string(), b'T', TEXT + 0x1000),
            ("jiffies".to_string(), b'D', TEXT + 0x2000),
            ("_end".to_string(), b'B', TEXT + 0x3000),
        ];
        v.sort_by_key(|s| s.2);
        v
    }

    pub fn build(syms: &[(String, u8, u64)], mem: &mut [u8], at: u64) -> String {
        let s: Vec<(&str, u8, u64)> = syms.iter().map(|(n, t, a)| (n.as_str(), *t, *a)).collect();
        let (_, info) = encode(&s, TEXT, mem, at);
        info
    }

    #[test]
    fn decodes_and_symbolizes() {
        let mut mem = vec![0u8; 0x10000];
        let syms = sample_syms();
        let info = build(&syms, &mut mem, 0x1000);
        let info = VmcoreInfo::parse(&format!("{info}SYMBOL(_stext)={TEXT:x}\n"));
        let sm = SliceMem::new(vec![(0, &mem[..])]);
        let kmem = KernelMem::linear(&sm, BASE);
        let k = Kallsyms::read(&kmem, &info).unwrap();
        assert_eq!(k.len(), syms.len());
        for (i, (name, ty, addr)) in syms.iter().enumerate() {
            assert_eq!(k.name(i), Some(name.as_str()));
            assert_eq!(k.sym_type(i), Some(*ty));
            assert_eq!(k.address(i), Some(*addr), "{name}");
        }
        assert_eq!(k.lookup("do_thing"), Some(TEXT + 0x200));
        assert_eq!(k.lookup("do_thin"), None);
        let s = k.symbolize(TEXT + 0x234).unwrap();
        assert_eq!(s.display(), "do_thing+0x34/0x100");
        // Aliases: the first one in table order.
        assert_eq!(k.symbolize(TEXT + 4).unwrap().name, "_stext");
        // The big (two-byte length) symbol.
        assert_eq!(k.symbolize(TEXT + 0x181).unwrap().name, "x".repeat(200));
        // KALLSYMS_ALL: data symbols too; the last one runs to _end.
        assert_eq!(k.symbolize(TEXT + 0x2010).unwrap().display(), "jiffies+0x10/0x1000");
        assert_eq!(k.symbolize(TEXT + 0x3000), None);
        assert_eq!(k.symbolize(0x20), None);
        assert!(k.is_text_addr(TEXT + 0x300));
        assert!(!k.is_text_addr(TEXT + 0x2000));
    }

    #[test]
    fn hostile_tables_fail_quickly() {
        let mut mem = vec![0u8; 0x10000];
        let syms = sample_syms();
        let info = build(&syms, &mut mem, 0x1000);
        let vi = VmcoreInfo::parse(&info);
        // num_syms huge.
        let num = vi.symbol("kallsyms_num_syms").unwrap() - BASE;
        let mut m2 = mem.clone();
        m2[num as usize..num as usize + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let sm = SliceMem::new(vec![(0, &m2[..])]);
        assert!(Kallsyms::read(&KernelMem::linear(&sm, BASE), &vi).is_err());
        // num_syms large but allowed: the names run out.
        m2[num as usize..num as usize + 4].copy_from_slice(&(MAX_SYMS).to_le_bytes());
        let sm = SliceMem::new(vec![(0, &m2[..])]);
        let t = std::time::Instant::now();
        assert!(Kallsyms::read(&KernelMem::linear(&sm, BASE), &vi).is_err());
        assert!(t.elapsed().as_secs() < 2);
        // A token index out of range.
        let idx = vi.symbol("kallsyms_token_index").unwrap() - BASE;
        let mut m3 = mem.clone();
        m3[idx as usize + 20..idx as usize + 22].copy_from_slice(&0xfff0u16.to_le_bytes());
        let sm = SliceMem::new(vec![(0, &m3[..])]);
        assert!(Kallsyms::read(&KernelMem::linear(&sm, BASE), &vi).is_err());
        // Garbage everywhere: no panic.
        let mut m4 = mem.clone();
        let mut x = 0x1234_5678u32;
        for b in m4.iter_mut().skip(0x1000) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let sm = SliceMem::new(vec![(0, &m4[..])]);
        let _ = Kallsyms::read(&KernelMem::linear(&sm, BASE), &vi);
        // Unmapped tables.
        let sm = SliceMem::new(vec![(0, &mem[..0x100])]);
        assert!(Kallsyms::read(&KernelMem::linear(&sm, BASE), &vi).is_err());
    }
}
