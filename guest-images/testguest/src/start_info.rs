//! `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h), its memory map and
//! module list, and the `testguest.*` command-line parameters.

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// Largest command line read.
pub const CMDLINE_MAX: usize = 4096;

// Offsets in struct hvm_start_info.
const MAGIC: u64 = 0;
const VERSION: u64 = 4;
const NR_MODULES: u64 = 12;
const MODLIST_PADDR: u64 = 16;
const CMDLINE_PADDR: u64 = 24;
const RSDP_PADDR: u64 = 32;
const MEMMAP_PADDR: u64 = 40;
const MEMMAP_ENTRIES: u64 = 48;
/// `struct hvm_memmap_table_entry`: u64 addr, u64 size, u32 type, u32 reserved.
const MEMMAP_ENTRY_SIZE: u64 = 24;
/// `struct hvm_modlist_entry`: u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved.
const MODLIST_ENTRY_SIZE: u64 = 32;

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the loader put the structures at these identity-mapped physical addresses; the
    // reads are unaligned-safe.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// One memory map entry.
#[derive(Clone, Copy)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The start-of-day information, read from guest memory.
#[derive(Clone, Copy)]
pub struct StartInfo {
    pub paddr: u64,
    pub magic: u32,
    pub version: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

impl StartInfo {
    pub fn read(paddr: u64) -> Self {
        let version = read::<u32>(paddr + VERSION);
        let v1 = version >= 1;
        StartInfo {
            paddr,
            magic: read(paddr + MAGIC),
            version,
            nr_modules: read(paddr + NR_MODULES),
            modlist_paddr: read(paddr + MODLIST_PADDR),
            cmdline_paddr: read(paddr + CMDLINE_PADDR),
            rsdp_paddr: read(paddr + RSDP_PADDR),
            memmap_paddr: if v1 { read(paddr + MEMMAP_PADDR) } else { 0 },
            memmap_entries: if v1 { read(paddr + MEMMAP_ENTRIES) } else { 0 },
        }
    }

    pub fn valid(&self) -> bool {
        self.magic == XEN_HVM_START_MAGIC_VALUE
    }

    /// The command line (NUL-terminated in guest memory), empty when there is none.
    pub fn cmdline(&self) -> &'static [u8] {
        if self.cmdline_paddr == 0 {
            return &[];
        }
        let p = self.cmdline_paddr as *const u8;
        let mut len = 0;
        // SAFETY: the loader wrote a NUL-terminated string at cmdline_paddr; the scan is
        // bounded by CMDLINE_MAX.
        unsafe {
            while len < CMDLINE_MAX && *p.add(len) != 0 {
                len += 1;
            }
            core::slice::from_raw_parts(p, len)
        }
    }

    pub fn memmap(&self, i: u32) -> MemEntry {
        let e = self.memmap_paddr + i as u64 * MEMMAP_ENTRY_SIZE;
        MemEntry { addr: read(e), size: read(e + 8), kind: read(e + 16) }
    }

    /// Bytes of RAM in the memory map.
    pub fn ram_total(&self) -> u64 {
        (0..self.memmap_entries)
            .map(|i| self.memmap(i))
            .filter(|e| e.kind == XEN_HVM_MEMMAP_TYPE_RAM)
            .map(|e| e.size)
            .sum()
    }

    /// Whether `[addr, addr + len)` lies inside one RAM entry of the memory map.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        (0..self.memmap_entries)
            .map(|i| self.memmap(i))
            .any(|e| e.kind == XEN_HVM_MEMMAP_TYPE_RAM && addr >= e.addr && addr + len <= e.addr + e.size)
    }

    /// Module `i`: (paddr, size).
    pub fn module(&self, i: u32) -> (u64, u64) {
        let e = self.modlist_paddr + i as u64 * MODLIST_ENTRY_SIZE;
        (read(e), read(e + 8))
    }

    /// The end of the highest RAM entry.
    pub fn ram_end(&self) -> u64 {
        (0..self.memmap_entries)
            .map(|i| self.memmap(i))
            .filter(|e| e.kind == XEN_HVM_MEMMAP_TYPE_RAM)
            .map(|e| e.addr + e.size)
            .max()
            .unwrap_or(0)
    }
}

/// The value of `key=value` on a command line (the first occurrence), as bytes.
pub fn param<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a [u8]> {
    cmdline.split(|&b| b == b' ').find_map(|word| {
        let rest = word.strip_prefix(key.as_bytes())?;
        rest.strip_prefix(b"=")
    })
}

/// A number: decimal, or hexadecimal with `0x`; `K`/`M` suffixes.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (s, mult) = match s.last() {
        Some(b'K') | Some(b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M') | Some(b'm') => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    let (digits, radix) = match s.strip_prefix(b"0x") {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    v.checked_mul(mult)
}
