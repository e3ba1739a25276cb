//! The loaded modules and their symbols, for the addresses in module text that the kernel's
//! own kallsyms tables do not cover, through the layout of `struct module` from BTF.
//!
//! Followed (Linux v6.1): `include/linux/module.h` (`struct module`: `state`, `list`, `name`,
//! `core_layout`/`init_layout` (`struct module_layout`: `base`, `size`, `text_size`) before
//! 6.4, `mem[MOD_TEXT]`/`mem[MOD_INIT_TEXT]` (`struct module_memory`) from 6.4, and
//! `kallsyms`, a `struct mod_kallsyms`: `symtab` (`Elf64_Sym`), `num_symtab`, `strtab`),
//! `kernel/module/main.c` (the `modules` list; `MODULE_STATE_UNFORMED` modules are skipped)
//! and `kernel/module/kallsyms.c` (`find_kallsyms_symbol`: the closest symbol at or below the
//! address, ignoring undefined, unnamed and mapping symbols; its size runs to the next symbol
//! above the address, or to the end of the text: that is the `/0x...` the kernel prints).
//!
//! While a module is loading its `kallsyms` is the whole symbol table (init symbols too);
//! once it is live, the core symbols only. Bounded: [`MAX_MODULES`], [`MAX_SYMBOLS`].

use std::collections::HashSet;

use kdump::PhysMem;

use crate::btf::Btf;
use crate::kallsyms::{Kallsyms, Symbol};
use crate::{AnalysisError, KernelMem};

/// The most modules read.
pub const MAX_MODULES: usize = 4096;
/// The most symbols read from one module.
pub const MAX_SYMBOLS: usize = 200_000;
/// The most string table bytes read from one module in one piece.
const MAX_STRTAB: usize = 8 << 20;
/// `KSYM_NAME_LEN`.
const KSYM_NAME_LEN: usize = 128;
/// `sizeof(Elf64_Sym)`.
const SYM_LEN: usize = 24;
/// `SHN_UNDEF`.
const SHN_UNDEF: u16 = 0;
/// `MODULE_STATE_UNFORMED`.
const MODULE_STATE_UNFORMED: u64 = 3;
/// `enum mod_mem_type`: `MOD_TEXT`, `MOD_INIT_TEXT` (6.4+).
const MOD_TEXT: usize = 0;
const MOD_INIT_TEXT: usize = 4;

/// One module's symbol: its address and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModSymbol {
    pub value: u64,
    pub name: String,
}

/// A memory range of a module: `[base, base + size)`, its text `[base, base + text_size)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    pub text_size: u64,
}

impl Region {
    fn contains(&self, addr: u64) -> bool {
        self.base != 0 && addr.wrapping_sub(self.base) < self.size
    }

    fn text_contains(&self, addr: u64) -> bool {
        self.base != 0 && addr.wrapping_sub(self.base) < self.text_size.min(self.size)
    }
}

/// A loaded module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// The module struct's address.
    pub address: u64,
    pub core: Region,
    /// Its init memory (freed once it is live: then `base` is 0).
    pub init: Region,
    /// Defined, named symbols, by address.
    pub symbols: Vec<ModSymbol>,
}

/// The loaded modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modules {
    pub modules: Vec<Module>,
}

/// Where `struct module`'s fields are, from BTF.
#[derive(Debug, Clone, Copy)]
struct Layout {
    list: u64,
    name: u64,
    name_len: u64,
    state: Option<(u64, u64)>,
    /// `(base, size member offset and size, text_size member offset and size)` of core and init.
    core: RegionLayout,
    init: Option<RegionLayout>,
    kallsyms: u64,
    symtab: u64,
    num_symtab: (u64, u64),
    strtab: u64,
}

#[derive(Debug, Clone, Copy)]
struct RegionLayout {
    base: u64,
    size: (u64, u64),
    text_size: Option<(u64, u64)>,
}

impl Layout {
    fn new(btf: &Btf) -> Result<Self, AnalysisError> {
        let m = "module";
        let at = |path: &str| btf.member(m, path).map(|x| (x.offset, x.size));
        let region = |prefix: &str, text: bool| -> Result<RegionLayout, AnalysisError> {
            Ok(RegionLayout {
                base: btf.offset(m, &format!("{prefix}.base"))?,
                size: at(&format!("{prefix}.size"))?,
                text_size: if text { Some(at(&format!("{prefix}.text_size"))?) } else { None },
            })
        };
        // 6.1: core_layout/init_layout; 6.4+: mem[MOD_TEXT], mem[MOD_INIT_TEXT], all text.
        let (core, init) = match region("core_layout", true) {
            Ok(core) => (core, region("init_layout", true).ok()),
            Err(_) => {
                (region(&format!("mem[{MOD_TEXT}]"), false)?, region(&format!("mem[{MOD_INIT_TEXT}]"), false).ok())
            }
        };
        let name = btf.member(m, "name")?;
        let k = "mod_kallsyms";
        Ok(Self {
            list: btf.offset(m, "list")?,
            name: name.offset,
            name_len: name.size.min(256),
            state: at("state").ok(),
            core,
            init,
            kallsyms: btf.offset(m, "kallsyms")?,
            symtab: btf.offset(k, "symtab")?,
            num_symtab: btf.member(k, "num_symtab").map(|x| (x.offset, x.size))?,
            strtab: btf.offset(k, "strtab")?,
        })
    }
}

/// An unsigned integer of 1, 2, 4 or 8 bytes.
fn uint<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, va: u64, size: u64) -> Result<u64, AnalysisError> {
    Ok(match size {
        1 => u64::from(kmem.u8(va)?),
        2 => u64::from(kmem.u16(va)?),
        4 => u64::from(kmem.u32(va)?),
        8 => kmem.u64(va)?,
        n => return Err(AnalysisError::Implausible(format!("an integer of {n} bytes"))),
    })
}

fn read_region<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    module: u64,
    l: &RegionLayout,
) -> Result<Region, AnalysisError> {
    let base = kmem.u64(module.wrapping_add(l.base))?;
    let size = uint(kmem, module.wrapping_add(l.size.0), l.size.1)?;
    let text_size = match l.text_size {
        Some((off, n)) => uint(kmem, module.wrapping_add(off), n)?.min(size),
        None => size,
    };
    Ok(Region { base, size, text_size })
}

/// `is_mapping_symbol` (`include/linux/module_symbol.h`, `kernel/module/kallsyms.c` in 6.1):
/// ARM-style `$a`/`$d`/`$t`/`$x` and `.L` local labels.
fn is_mapping_symbol(name: &[u8]) -> bool {
    match name {
        [b'.', b'L', ..] => true,
        [b'L', b'0', ..] => true,
        [b'$', c, rest @ ..] => b"axtd".contains(c) && (rest.is_empty() || rest.first() == Some(&b'.')),
        _ => false,
    }
}

/// A module's defined, named symbols, sorted by address.
fn read_symbols<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    module: u64,
    l: &Layout,
) -> Result<Vec<ModSymbol>, AnalysisError> {
    let ks = kmem.u64(module.wrapping_add(l.kallsyms))?;
    if ks == 0 {
        return Ok(Vec::new());
    }
    let symtab = kmem.u64(ks.wrapping_add(l.symtab))?;
    let num = uint(kmem, ks.wrapping_add(l.num_symtab.0), l.num_symtab.1)? as usize;
    let strtab = kmem.u64(ks.wrapping_add(l.strtab))?;
    if num > MAX_SYMBOLS {
        return Err(AnalysisError::Implausible(format!("a module with {num} symbols")));
    }
    let table = kmem.bytes(symtab, num * SYM_LEN)?;
    let mut raw = Vec::new();
    // ELF starts real symbols at 1.
    for e in table.chunks_exact(SYM_LEN).skip(1) {
        let st_name = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let st_shndx = u16::from_le_bytes([e[6], e[7]]);
        let value = u64::from_le_bytes(e[8..16].try_into().unwrap_or_default());
        if st_shndx != SHN_UNDEF && value != 0 {
            raw.push((st_name as usize, value));
        }
    }
    // The string table in one piece where it reads, else a name at a time.
    let need = raw.iter().map(|r| r.0).max().unwrap_or(0).saturating_add(KSYM_NAME_LEN).min(MAX_STRTAB);
    let strings = kmem.bytes(strtab, need).ok();
    let mut out = Vec::with_capacity(raw.len());
    for (st_name, value) in raw {
        let name = match &strings {
            Some(s) => {
                let s = s.get(st_name..).unwrap_or_default();
                let s = &s[..s.len().min(KSYM_NAME_LEN)];
                String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]).into_owned()
            }
            None => kmem.cstr(strtab.wrapping_add(st_name as u64), KSYM_NAME_LEN).unwrap_or_default(),
        };
        if name.is_empty() || is_mapping_symbol(name.as_bytes()) {
            continue;
        }
        out.push(ModSymbol { value, name });
    }
    out.sort_by_key(|s| s.value);
    Ok(out)
}

impl Modules {
    /// The modules on kallsyms' `modules` list.
    pub fn read<M: PhysMem + ?Sized>(
        kmem: &KernelMem<'_, M>,
        syms: &Kallsyms,
        btf: &Btf,
    ) -> Result<Self, AnalysisError> {
        let head = syms.lookup("modules").ok_or_else(|| AnalysisError::NoSymbol("modules".into()))?;
        Self::read_at(kmem, btf, head)
    }

    /// The modules on the list at `head` (`modules`' address). A module whose symbols cannot
    /// be read is listed without them; the list ends where it cannot be read or loops.
    pub fn read_at<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, btf: &Btf, head: u64) -> Result<Self, AnalysisError> {
        let l = Layout::new(btf)?;
        let mut modules = Vec::new();
        let mut seen = HashSet::new();
        let mut node = kmem.u64(head)?;
        while node != head && node != 0 && modules.len() < MAX_MODULES && seen.insert(node) {
            let m = node.wrapping_sub(l.list);
            let Ok(next) = kmem.u64(node) else { break };
            node = next;
            if let Some((off, size)) = l.state {
                if uint(kmem, m.wrapping_add(off), size).ok() == Some(MODULE_STATE_UNFORMED) {
                    continue;
                }
            }
            let Ok(name) = kmem.cstr(m.wrapping_add(l.name), l.name_len as usize) else { continue };
            let Ok(core) = read_region(kmem, m, &l.core) else { continue };
            let init = l.init.and_then(|i| read_region(kmem, m, &i).ok()).unwrap_or_default();
            let symbols = read_symbols(kmem, m, &l).unwrap_or_default();
            modules.push(Module { name, address: m, core, init, symbols });
        }
        Ok(Self { modules })
    }

    /// The module `addr` is in.
    pub fn module_of(&self, addr: u64) -> Option<&Module> {
        self.modules.iter().find(|m| m.core.contains(addr) || m.init.contains(addr))
    }

    /// `addr`'s symbol in a module, as the kernel's `find_kallsyms_symbol` finds it.
    /// Whether `addr` is in a module's text (core or init).
    pub fn is_text(&self, addr: u64) -> bool {
        self.modules.iter().any(|m| m.core.text_contains(addr) || m.init.text_contains(addr))
    }

    pub fn symbolize(&self, addr: u64) -> Option<Symbol> {
        let m = self.module_of(addr)?;
        let region = if m.init.contains(addr) { m.init } else { m.core };
        // The kernel's bound is the end of the text; past it (data), the end of the region.
        let text_end = region.base.wrapping_add(region.text_size);
        let mut nextval = if addr < text_end { text_end } else { region.base.wrapping_add(region.size) };
        let i = m.symbols.partition_point(|s| s.value <= addr);
        let bestval = m.symbols.get(i.checked_sub(1)?)?.value;
        // Of aliases, the first in the symbol table (the sort is stable), as the kernel's.
        let best = m.symbols.get(m.symbols.partition_point(|s| s.value < bestval))?;
        if let Some(next) = m.symbols.get(i..)?.iter().find(|s| s.value > addr) {
            nextval = nextval.min(next.value);
        }
        Some(Symbol {
            name: best.name.clone(),
            offset: addr - best.value,
            size: nextval.saturating_sub(best.value),
            module: Some(m.name.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::Enc;
    use kdump::SliceMem;

    const BASE: u64 = 0xffff_ffff_c000_0000;

    fn btf() -> Btf {
        let mut e = Enc::new();
        let int = e.int("int", 4);
        let uint = e.int("unsigned int", 4);
        let ulong = e.int("long unsigned int", 8);
        let ch = e.int("char", 1);
        let name = e.array(ch, int, 56);
        let list = e.record(false, "list_head", 16, &[("next", ulong, 0), ("prev", ulong, 8)]);
        let layout = e.record(
            false,
            "module_layout",
            64,
            &[("base", ulong, 0), ("size", uint, 8), ("text_size", uint, 12), ("ro_size", uint, 16)],
        );
        let mk = e.record(
            false,
            "mod_kallsyms",
            32,
            &[("symtab", ulong, 0), ("num_symtab", uint, 8), ("strtab", ulong, 16)],
        );
        let mkp = e.ptr(mk);
        e.record(
            false,
            "module",
            0x200,
            &[
                ("state", int, 0),
                ("list", list, 8),
                ("name", name, 24),
                ("core_layout", layout, 0x80),
                ("init_layout", layout, 0xc0),
                ("kallsyms", mkp, 0x100),
            ],
        );
        Btf::parse(&e.blob()).unwrap()
    }

    struct Img(Vec<u8>);

    impl Img {
        fn put(&mut self, va: u64, b: &[u8]) {
            let o = (va - BASE) as usize;
            self.0[o..o + b.len()].copy_from_slice(b);
        }
        fn put64(&mut self, va: u64, v: u64) {
            self.put(va, &v.to_le_bytes());
        }
        fn put32(&mut self, va: u64, v: u32) {
            self.put(va, &v.to_le_bytes());
        }
        /// A module at `m` with text at `text` and `(name, offset)` symbols.
        fn module(&mut self, m: u64, name: &str, text: u64, syms: &[(&str, u64, u16)]) {
            self.put(m + 24, name.as_bytes());
            self.put64(m + 0x80, text);
            self.put32(m + 0x88, 0x3000);
            self.put32(m + 0x8c, 0x1000);
            let ks = m + 0x180;
            let symtab = m + 0x400;
            let strtab = m + 0xc00;
            self.put64(m + 0x100, ks);
            self.put64(ks, symtab);
            self.put32(ks + 8, syms.len() as u32 + 1);
            self.put64(ks + 16, strtab);
            let mut str_off = 1usize;
            for (i, (n, off, shndx)) in syms.iter().enumerate() {
                let e = symtab + 24 * (i as u64 + 1);
                self.put32(e, str_off as u32);
                self.put(e + 6, &shndx.to_le_bytes());
                self.put64(e + 8, text + off);
                self.put64(e + 16, 0x10);
                self.put(strtab + str_off as u64, n.as_bytes());
                str_off += n.len() + 1;
            }
        }
    }

    fn image() -> Img {
        let mut img = Img(vec![0u8; 0x10000]);
        let head = BASE + 0x10;
        let (a, b) = (BASE + 0x1000, BASE + 0x2000);
        img.module(
            a,
            "crashtest",
            BASE + 0x8000,
            &[("crashtest_init", 0x0, 1), ("helper", 0x40, 1), ("alias", 0x40, 1), ("$x", 0x50, 1), ("ext", 0x60, 0)],
        );
        img.module(b, "other", BASE + 0xc000, &[("other_fn", 0x10, 1), ("other_data", 0x2000, 2)]);
        for (node, next, prev) in [(head, a + 8, b + 8), (a + 8, b + 8, head), (b + 8, head, a + 8)] {
            img.put64(node, next);
            img.put64(node + 8, prev);
        }
        img
    }

    #[test]
    fn read_and_symbolize() {
        let img = image();
        let mem = SliceMem::new(vec![(0, &img.0[..])]);
        let kmem = KernelMem::linear(&mem, BASE);
        let m = Modules::read_at(&kmem, &btf(), BASE + 0x10).unwrap();
        let names: Vec<&str> = m.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["crashtest", "other"]);
        // `$x` (a mapping symbol) and `ext` (undefined) are not symbols.
        assert_eq!(m.modules[0].symbols.len(), 3);
        let s = m.symbolize(BASE + 0x8033).unwrap();
        assert_eq!(
            (s.name.as_str(), s.offset, s.size, s.module.as_deref()),
            ("crashtest_init", 0x33, 0x40, Some("crashtest"))
        );
        // The last symbol runs to the end of the text; of aliases, the first is the name.
        let s = m.symbolize(BASE + 0x8050).unwrap();
        assert_eq!((s.name.as_str(), s.offset, s.size), ("helper", 0x10, 0x1000 - 0x40));
        assert_eq!(m.symbolize(BASE + 0xc020).unwrap().display(), "other_fn+0x10/0xff0");
        // Past the text, a symbol's size runs to the end of the module's memory.
        assert_eq!(m.symbolize(BASE + 0xe008).unwrap().display(), "other_data+0x8/0x1000");
        // Before the first symbol, outside every module.
        assert_eq!(m.symbolize(BASE + 0xc000), None);
        assert_eq!(m.symbolize(BASE + 0xf000), None);
    }

    #[test]
    fn hostile() {
        let mut img = image();
        let (a, b) = (BASE + 0x1000, BASE + 0x2000);
        // A list that loops short of its head, an absurd symbol count.
        img.put64(b + 8, a + 8);
        img.put32(a + 0x180 + 8, u32::MAX);
        let mem = SliceMem::new(vec![(0, &img.0[..])]);
        let kmem = KernelMem::linear(&mem, BASE);
        let m = Modules::read_at(&kmem, &btf(), BASE + 0x10).unwrap();
        assert_eq!(m.modules.len(), 2);
        assert!(m.modules[0].symbols.is_empty());
        assert!(Modules::read_at(&kmem, &btf(), BASE + 0x100_0000).is_err());
        let mut e = Enc::new();
        e.record(false, "module", 8, &[]);
        assert!(Modules::read_at(&kmem, &Btf::parse(&e.blob()).unwrap(), BASE + 0x10).is_err());
    }

    #[test]
    fn mapping_symbols() {
        for (n, m) in [("$x", true), ("$d.1", true), ("$y", false), (".Ltmp", true), ("L0x", true), ("foo", false)] {
            assert_eq!(is_mapping_symbol(n.as_bytes()), m, "{n}");
        }
    }
}
