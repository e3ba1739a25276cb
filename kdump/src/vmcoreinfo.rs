//! The VMCOREINFO text: `KEY=value` lines the kernel builds in `crash_save_vmcoreinfo_init`
//! (kernel/vmcore_info.c, crash_core.c before 6.7) and `arch_crash_save_vmcoreinfo`.
//!
//! `SYMBOL(x)` and `KERNELOFFSET` are hex without `0x`; `OFFSET(a.b)`, `SIZE(x)`, `LENGTH(a.b)`
//! and `NUMBER(x)` are decimal (`NUMBER` may be negative: `PAGE_BUDDY_MAPCOUNT_VALUE=-129`).

use std::collections::BTreeMap;

/// The largest VMCOREINFO text accepted (Linux's is one page; crash-kernel notes can be a bit
/// larger in some distributions).
pub const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    text: String,
    entries: BTreeMap<String, String>,
}

fn parse_dec(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).ok().map(|u| u as i64);
    }
    v.parse::<i64>().ok().or_else(|| v.parse::<u64>().ok().map(|u| u as i64))
}

fn parse_hex(v: &str) -> Option<u64> {
    let v = v.trim();
    u64::from_str_radix(v.strip_prefix("0x").unwrap_or(v), 16).ok()
}

impl VmcoreInfo {
    /// Parses the text (a NUL ends it; lines without `=` are ignored; the first of duplicate keys
    /// wins, as in makedumpfile's `read_vmcoreinfo_*`).
    pub fn parse(text: &str) -> Self {
        let text = text.split('\0').next().unwrap_or("");
        let text = if text.len() > MAX_TEXT {
            let mut end = MAX_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            &text[..end]
        } else {
            text
        };
        let mut entries = BTreeMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                entries.entry(k.trim().to_string()).or_insert_with(|| v.trim().to_string());
            }
        }
        Self { text: text.to_string(), entries }
    }

    /// Parses raw note descriptor bytes (lossy for non-UTF-8 bytes).
    pub fn parse_bytes(bytes: &[u8]) -> Self {
        Self::parse(&String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TEXT)]))
    }

    /// The text as parsed (up to a NUL).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn raw(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn symbol(&self, name: &str) -> Option<u64> {
        parse_hex(self.raw(&format!("SYMBOL({name})"))?)
    }

    pub fn offset(&self, name: &str) -> Option<u64> {
        u64::try_from(parse_dec(self.raw(&format!("OFFSET({name})"))?)?).ok()
    }

    pub fn size(&self, name: &str) -> Option<u64> {
        u64::try_from(parse_dec(self.raw(&format!("SIZE({name})"))?)?).ok()
    }

    pub fn length(&self, name: &str) -> Option<u64> {
        u64::try_from(parse_dec(self.raw(&format!("LENGTH({name})"))?)?).ok()
    }

    pub fn number(&self, name: &str) -> Option<i64> {
        parse_dec(self.raw(&format!("NUMBER({name})"))?)
    }

    pub fn osrelease(&self) -> Option<&str> {
        self.raw("OSRELEASE")
    }

    pub fn page_size(&self) -> Option<u64> {
        u64::try_from(parse_dec(self.raw("PAGESIZE")?)?).ok()
    }

    pub fn kernel_offset(&self) -> Option<u64> {
        parse_hex(self.raw("KERNELOFFSET")?)
    }

    /// `CRASHTIME` (seconds since the epoch), present once the kernel crashed.
    pub fn crash_time(&self) -> Option<i64> {
        parse_dec(self.raw("CRASHTIME")?)
    }

    /// `phys_base` (x86_64: `NUMBER(phys_base)`, decimal, as `%ld`).
    pub fn phys_base(&self) -> Option<u64> {
        self.number("phys_base").map(|v| v as u64)
    }

    /// Whether the kernel runs with 5-level paging (`NUMBER(pgtable_l5_enabled)`; absent on
    /// kernels before 4.14's LA57 support: 4 levels).
    pub fn pgtable_l5(&self) -> bool {
        self.number("pgtable_l5_enabled").unwrap_or(0) != 0
    }

    /// (major, minor, patch) from `OSRELEASE` ("6.1.0-57-cloud-amd64" -> (6, 1, 0)).
    pub fn kernel_version(&self) -> Option<(u32, u32, u32)> {
        let rel = self.osrelease()?;
        let mut it = rel.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some((major, minor, patch))
    }
}

/// The VMCOREINFO note's name with its NUL (`n_namesz` 11).
pub const VMCOREINFO_NOTE_NAME: &[u8; 11] = b"VMCOREINFO\0";
/// Bytes before a VMCOREINFO note's descriptor: `n_namesz`, `n_descsz`, `n_type`, the name
/// padded to 12 bytes.
pub const NOTE_HEADER: usize = 24;
/// Linux's `VMCOREINFO_BYTES` (one page): the longest text in a kernel's note.
pub const VMCOREINFO_BYTES: usize = 4096;
/// What the kernel's text starts with.
const TEXT_PREFIX: &[u8] = b"OSRELEASE=";
/// The first 16 bytes of a VMCOREINFO note, minus `n_descsz`: `n_namesz = 11` and
/// `n_type = 0 | "VMCO"`.
const NOTE_WORD0_LOW: u64 = 11;
const NOTE_WORD1: u64 = u64::from_le_bytes(*b"\0\0\0\0VMCO");

/// Whether `head` (at least 16 bytes) may start the kernel's VMCOREINFO note: the cheap check a
/// scan of guest RAM makes at each page before [`parse_note`].
pub fn may_start_note(head: &[u8]) -> bool {
    let word = |i: usize| head.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    word(0).is_some_and(|w| w & 0xffff_ffff == NOTE_WORD0_LOW) && word(8) == Some(NOTE_WORD1)
}

/// The text of the VMCOREINFO note the kernel builds (guest-protocol §8.3) at the start of
/// `bytes`: `n_namesz` 11, `n_type` 0, named "VMCOREINFO", with 10 to [`VMCOREINFO_BYTES`]
/// bytes of UTF-8 text starting with `OSRELEASE=`. `None` for anything else.
pub fn parse_note(bytes: &[u8]) -> Option<String> {
    let head = bytes.get(..NOTE_HEADER)?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) != 11 || word(8) != 0 || head[12..23] != VMCOREINFO_NOTE_NAME[..] {
        return None;
    }
    let descsz = word(4) as usize;
    if !(TEXT_PREFIX.len()..=VMCOREINFO_BYTES).contains(&descsz) {
        return None;
    }
    let desc = bytes.get(NOTE_HEADER..NOTE_HEADER + descsz)?;
    if !desc.starts_with(TEXT_PREFIX) {
        return None;
    }
    String::from_utf8(desc.to_vec()).ok()
}

/// Finds the "VMCOREINFO" note in a buffer of ELF notes (an ELF core's PT_NOTE contents) and
/// returns its descriptor (the text).
pub fn find_vmcoreinfo_note(notes: &[u8]) -> Option<&[u8]> {
    iter_notes(notes).find(|n| n.name == b"VMCOREINFO" && n.n_type == 0).map(|n| n.desc)
}

/// One ELF note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// The name without its NUL.
    pub name: &'a [u8],
    pub n_type: u32,
    pub desc: &'a [u8],
    /// The whole note, header and padding included.
    pub raw: &'a [u8],
}

/// Iterates over 4-byte aligned ELF notes; stops at the first malformed one.
pub fn iter_notes(buf: &[u8]) -> impl Iterator<Item = Note<'_>> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let word = |o: usize| -> Option<u32> { Some(u32::from_le_bytes(buf.get(o..o + 4)?.try_into().ok()?)) };
        let namesz = word(off)? as usize;
        let descsz = word(off + 4)? as usize;
        let n_type = word(off + 8)?;
        let name_start = off + 12;
        let desc_start = name_start.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let end = desc_start.checked_add(descsz.checked_next_multiple_of(4)?)?;
        let name = buf.get(name_start..name_start + namesz)?;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        let desc = buf.get(desc_start..desc_start + descsz)?;
        let raw = buf.get(off..end.min(buf.len()))?;
        off = end;
        Some(Note { name, n_type, desc, raw })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "OSRELEASE=6.1.0-57-cloud-amd64\nPAGESIZE=4096\nSYMBOL(init_top_pgt)=ffffffff9b60a000\n\
OFFSET(page.flags)=0\nSIZE(page)=64\nLENGTH(zone.free_area)=11\nNUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n\
NUMBER(phys_base)=-1593835520\nKERNELOFFSET=1a000000\nNUMBER(pgtable_l5_enabled)=0\nCRASHTIME=1700000000\n\
SIZE(page)=99\ngarbage line\n";

    #[test]
    fn parses_every_kind_of_entry() {
        let v = VmcoreInfo::parse(TEXT);
        assert_eq!(v.osrelease(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(v.kernel_version(), Some((6, 1, 0)));
        assert_eq!(v.page_size(), Some(4096));
        assert_eq!(v.symbol("init_top_pgt"), Some(0xffff_ffff_9b60_a000));
        assert_eq!(v.offset("page.flags"), Some(0));
        assert_eq!(v.size("page"), Some(64), "first one wins");
        assert_eq!(v.length("zone.free_area"), Some(11));
        assert_eq!(v.number("PAGE_BUDDY_MAPCOUNT_VALUE"), Some(-129));
        assert_eq!(v.phys_base(), Some((-1593835520i64) as u64));
        assert_eq!(v.kernel_offset(), Some(0x1a00_0000));
        assert!(!v.pgtable_l5());
        assert_eq!(v.crash_time(), Some(1_700_000_000));
        assert_eq!(v.symbol("nothing"), None);
        assert_eq!(v.offset("page.mapping"), None);
    }

    #[test]
    fn stops_at_nul_and_tolerates_junk() {
        let v = VmcoreInfo::parse("OSRELEASE=x\nSIZE(page)=12\0SIZE(zone)=5\n");
        assert_eq!(v.size("zone"), None);
        let v = VmcoreInfo::parse_bytes(b"SIZE(page)=abc\nSYMBOL(x)=zz\nOFFSET(a.b)=-5\n\xff\xfe");
        assert_eq!(v.size("page"), None);
        assert_eq!(v.symbol("x"), None);
        assert_eq!(v.offset("a.b"), None);
        assert_eq!(v.kernel_version(), None);
    }

    fn note_bytes(namesz: u32, descsz: u32, n_type: u32, name: &[u8], text: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&namesz.to_le_bytes());
        v.extend_from_slice(&descsz.to_le_bytes());
        v.extend_from_slice(&n_type.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(24, 0);
        v.extend_from_slice(text);
        v
    }

    #[test]
    fn parses_the_kernels_note_and_nothing_else() {
        let text = TEXT.as_bytes();
        let good = note_bytes(11, text.len() as u32, 0, b"VMCOREINFO\0", text);
        assert!(may_start_note(&good));
        assert_eq!(parse_note(&good).as_deref(), Some(TEXT));
        // Trailing bytes after the descriptor are not part of it.
        assert_eq!(parse_note(&[good.clone(), vec![b'x'; 100]].concat()).as_deref(), Some(TEXT));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("descsz too big", note_bytes(11, 4097, 0, b"VMCOREINFO\0", &[b'O'; 4097])),
            ("descsz zero", note_bytes(11, 0, 0, b"VMCOREINFO\0", text)),
            ("no OSRELEASE=", note_bytes(11, 20, 0, b"VMCOREINFO\0", b"PAGESIZE=4096\nABCDEF")),
            ("wrong namesz", note_bytes(12, text.len() as u32, 0, b"VMCOREINFO\0", text)),
            ("wrong type", note_bytes(11, text.len() as u32, 1, b"VMCOREINFO\0", text)),
            ("wrong name", note_bytes(11, text.len() as u32, 0, b"VMCOREINFX\0", text)),
            ("not UTF-8", note_bytes(11, 12, 0, b"VMCOREINFO\0", b"OSRELEASE=\xff\xfe")),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("header only", good[..20].to_vec()),
        ];
        for (what, note) in cases {
            assert_eq!(parse_note(&note), None, "{what}");
        }
        assert!(!may_start_note(&note_bytes(11, 5, 1, b"VMCOREINFO\0", b"")));
        assert!(!may_start_note(&note_bytes(11, 5, 0, b"XMCOREINFO\0", b"")));
        assert!(!may_start_note(&good[..15]));
    }

    #[test]
    fn finds_the_note_among_others() {
        let mut notes = Vec::new();
        for (name, ty, desc) in [(&b"CORE\0"[..], 1u32, &[7u8; 336][..]), (b"VMCOREINFO\0", 0, b"OSRELEASE=6.1\n")] {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&ty.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend_from_slice(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        assert_eq!(iter_notes(&notes).count(), 2);
        assert_eq!(find_vmcoreinfo_note(&notes), Some(&b"OSRELEASE=6.1\n"[..]));
        // Truncated: the iterator stops, no panic.
        for cut in 0..notes.len() {
            let _ = iter_notes(&notes[..cut]).count();
        }
        let mut bad = notes.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(iter_notes(&bad).count(), 0);
    }
}
