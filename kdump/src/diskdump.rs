//! The kdump-compressed ("diskdump") format, as makedumpfile writes it and crash reads it
//! (makedumpfile's diskdump_mod.h; header_version 6).
//!
//! ```text
//! block 0                      struct disk_dump_header ("KDUMP   ", version 6, utsname, ...)
//! block 1                      struct kdump_sub_header (104 bytes), then the ELF notes
//!                              (NT_PRSTATUS per vCPU, VMCOREINFO), sub_hdr_size blocks in all
//! block 1 + sub_hdr_size       bitmap1 (PFNs in RAM), then bitmap2 (PFNs written), each a whole
//!                              number of blocks; bitmap_blocks covers both
//! block 1 + sub + bitmap       page_desc_t per bitmap2 PFN, in PFN order (24 bytes each)
//! after them                   the shared zero page (level 1), then each page's data
//! ```
//!
//! A page is stored compressed only when that makes it smaller than a page, as makedumpfile
//! does; all-zero pages share one descriptor's data when level 1 is asked for. Pages are
//! compressed on all cores in chunks of consecutive PFNs while the calling thread writes the
//! finished chunks in order, so the file is the same whatever the thread count.
//!
//! Compression: Debian's makedumpfile 1.7.2 is built with zlib and lzo (not snappy, not zstd)
//! and crash 8.0.2 with zlib, lzo, snappy and zstd, so zlib and LZO are the two both read.
//! [`Compression::Lzo`] (`DUMP_DH_COMPRESSED_LZO`, `makedumpfile -l`, this crate's own LZO1X
//! compressor, [`crate::lzo`]) is the default: GB/s per core against zlib level 6's ~150 MB/s,
//! for files 1.05-1.4x as large, and a VMM's guest waits for the dump. zlib
//! (`DUMP_DH_COMPRESSED_ZLIB`, `makedumpfile -c`) is there for the smallest file.
//!
//! Pages the caller knows to be zero without reading them ([`KdumpOptions::holds_data`]: a
//! VMM's guest RAM the host never backed) are not read at all; every other page is checked for
//! zero bytes a 64-byte block at a time before it is compressed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::classify::{Bitmap, Classification, ClassifyReport};
use crate::paging::Translator;
use crate::vmcoreinfo::VmcoreInfo;
use crate::{KdumpError, PhysMem, PAGE_SIZE};

pub const SIGNATURE: &[u8; 8] = b"KDUMP   ";
pub const HEADER_VERSION: i32 = 6;
const BLOCK: u64 = PAGE_SIZE;
const HEADER_SIZE: usize = 464;
const SUB_HEADER_SIZE: usize = 104;
const PAGE_DESC_SIZE: u64 = 24;
const UTS_FIELD: usize = 65;
pub const DUMP_DH_COMPRESSED_ZLIB: u32 = 0x1;
pub const DUMP_DH_COMPRESSED_LZO: u32 = 0x2;
pub const DUMP_DH_COMPRESSED_SNAPPY: u32 = 0x4;
pub const DUMP_DH_COMPRESSED_ZSTD: u32 = 0x20;
/// Pages per chunk: the unit a compression thread takes (4 MiB of guest memory).
const CHUNK_PAGES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    /// zlib stream (RFC 1950), level 0-9 (makedumpfile -c uses 1).
    Zlib {
        level: u32,
    },
    /// LZO1X (makedumpfile -l).
    Lzo,
}

impl Default for Compression {
    /// LZO, as `makedumpfile -l` (Fedora's and RHEL's kdump default): see the module's notes.
    fn default() -> Self {
        Compression::Lzo
    }
}

impl Compression {
    fn flag(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Zlib { .. } => DUMP_DH_COMPRESSED_ZLIB,
            Compression::Lzo => DUMP_DH_COMPRESSED_LZO,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zlib { .. } => "zlib",
            Compression::Lzo => "lzo",
        }
    }

    /// Compressed bytes if smaller than the page.
    fn compress(self, page: &[u8], st: &mut CodecState, out: &mut Vec<u8>) -> Option<usize> {
        out.clear();
        match self {
            Compression::None => None,
            Compression::Zlib { level } => {
                if incompressible(page, st, out) {
                    return None;
                }
                out.clear();
                let c =
                    st.zlib.get_or_insert_with(|| flate2::Compress::new(flate2::Compression::new(level.min(9)), true));
                c.reset();
                out.reserve(page.len() + 64);
                let status = c.compress_vec(page, out, flate2::FlushCompress::Finish).ok()?;
                (status == flate2::Status::StreamEnd && out.len() < page.len()).then_some(out.len())
            }
            Compression::Lzo => {
                st.lzo.compress(page, out);
                (out.len() < page.len()).then_some(out.len())
            }
        }
    }
}

/// Bits per byte above which a page's byte histogram leaves deflate's Huffman stage nothing
/// worth having (at 7.8 at most 2.5% of the page).
const FLAT_ENTROPY: f64 = 7.8;

/// Whether deflate cannot shrink `page`: its bytes are nearly uniform (random, encrypted or
/// already compressed data) and LZO finds no repeats in it either. Such a page costs zlib
/// level 6 tens of microseconds to store as it is; these checks take a few, so a guest full of
/// random data is dumped at memory speed. `scratch` is clobbered.
fn incompressible(page: &[u8], st: &mut CodecState, scratch: &mut Vec<u8>) -> bool {
    let mut hist = [0u32; 256];
    for &b in page {
        hist[usize::from(b)] += 1;
    }
    let n = page.len() as f64;
    let entropy: f64 = hist.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum();
    if entropy < FLAT_ENTROPY {
        return false;
    }
    scratch.clear();
    st.lzo.compress(page, scratch);
    scratch.len() >= page.len()
}

/// A compression thread's codec state, reused from page to page.
#[derive(Default)]
struct CodecState {
    zlib: Option<flate2::Compress>,
    lzo: crate::lzo::Lzo1x,
}

/// The ELF notes for the sub-header: the caller's NT_PRSTATUS notes (raw ELF note bytes, one
/// per vCPU, as in the ELF vmcore) and the VMCOREINFO note built from its text.
#[derive(Debug, Clone, Default)]
pub struct NoteSet {
    bytes: Vec<u8>,
    /// (offset in `bytes`, length) of the VMCOREINFO descriptor.
    vmcoreinfo: Option<(usize, usize)>,
    nr_prstatus: u32,
}

fn put_note(buf: &mut Vec<u8>, name: &[u8], n_type: u32, desc: &[u8]) -> usize {
    buf.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    buf.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    buf.extend_from_slice(&n_type.to_le_bytes());
    buf.extend_from_slice(name);
    buf.push(0);
    buf.resize(buf.len().next_multiple_of(4), 0);
    let at = buf.len();
    buf.extend_from_slice(desc);
    buf.resize(buf.len().next_multiple_of(4), 0);
    at
}

impl NoteSet {
    /// `notes`: raw ELF notes (any; NT_PRSTATUS "CORE" ones are counted as CPUs; a VMCOREINFO
    /// note among them is dropped when `vmcoreinfo` is given, else kept and used).
    pub fn new(notes: &[u8], vmcoreinfo: Option<&str>) -> Self {
        let mut set = NoteSet::default();
        for n in crate::vmcoreinfo::iter_notes(notes) {
            if n.name == b"VMCOREINFO" {
                if vmcoreinfo.is_none() && set.vmcoreinfo.is_none() {
                    let at = put_note(&mut set.bytes, b"VMCOREINFO", 0, n.desc);
                    set.vmcoreinfo = Some((at, n.desc.len()));
                }
                continue;
            }
            if n.name == b"CORE" && n.n_type == 1 {
                set.nr_prstatus += 1;
            }
            set.bytes.extend_from_slice(n.raw);
            set.bytes.resize(set.bytes.len().next_multiple_of(4), 0);
        }
        if let Some(text) = vmcoreinfo {
            let at = put_note(&mut set.bytes, b"VMCOREINFO", 0, text.as_bytes());
            set.vmcoreinfo = Some((at, text.len()));
        }
        set
    }

    /// One NT_PRSTATUS note from a `struct elf_prstatus` (336 bytes on x86_64).
    pub fn prstatus_note(desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_note(&mut v, b"CORE", 1, desc);
        v
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn nr_cpus(&self) -> u32 {
        self.nr_prstatus
    }
}

#[derive(Default)]
pub struct KdumpOptions<'a> {
    pub compression: Compression,
    /// Compression threads; 0: one per core.
    pub threads: usize,
    /// Called with (input bytes done, input bytes total) after each window of pages.
    pub on_progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
    /// PFNs that may hold data, where the caller knows (a VMM: the pages of guest RAM its host
    /// ever backed, from `/proc/self/pagemap`). A PFN whose bit is clear reads as zero and is
    /// not read: in a guest that touched 10% of its RAM, reading the rest costs more than
    /// compressing what it holds. `None`: every page is read.
    pub holds_data: Option<&'a Bitmap>,
}

impl std::fmt::Debug for KdumpOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdumpOptions")
            .field("compression", &self.compression)
            .field("threads", &self.threads)
            .field("on_progress", &self.on_progress.is_some())
            .field("holds_data", &self.holds_data.map(Bitmap::count))
            .finish()
    }
}

/// What [`write_kdump`] wrote, for report.json.
#[derive(Debug, Clone, Serialize)]
pub struct KdumpSummary {
    pub format: &'static str,
    pub compression: Compression,
    pub requested_level: u8,
    pub effective_level: u8,
    /// PFNs in guest RAM.
    pub total_pages: u64,
    pub excluded_zero: u64,
    pub excluded_cache: u64,
    pub excluded_cache_private: u64,
    pub excluded_user: u64,
    pub excluded_free: u64,
    pub excluded_other: u64,
    /// Pages with a descriptor (bitmap2), zero pages included.
    pub written_pages: u64,
    /// Pages whose data is in the file (written minus zero pages).
    pub data_pages: u64,
    pub compressed_pages: u64,
    /// Bytes of the pages written, before compression (data pages * 4096).
    pub bytes_before: u64,
    /// Page data bytes after compression.
    pub bytes_after: u64,
    pub file_bytes: u64,
    pub threads: usize,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    pub classification: ClassifyReport,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn put_fixed(buf: &mut [u8], at: usize, s: &[u8], len: usize) {
    let n = s.len().min(len - 1);
    buf[at..at + n].copy_from_slice(&s[..n]);
}

/// `struct new_utsname` from `SYMBOL(init_uts_ns)` + `OFFSET(uts_namespace.name)`, or built
/// from `OSRELEASE`.
fn utsname<M: PhysMem + ?Sized>(mem: &M, info: Option<&VmcoreInfo>) -> [u8; 6 * UTS_FIELD] {
    let mut u = [0u8; 6 * UTS_FIELD];
    if let Some(info) = info {
        if let (Some(sym), Ok(tr)) = (info.symbol("init_uts_ns"), Translator::from_vmcoreinfo(mem, info)) {
            let at = sym.wrapping_add(info.offset("uts_namespace.name").unwrap_or(0));
            let mut read = [0u8; 6 * UTS_FIELD];
            if tr.read(at, &mut read).is_ok() && read.starts_with(b"Linux\0") {
                return read;
            }
        }
    }
    put_fixed(&mut u, 0, b"Linux", UTS_FIELD);
    if let Some(rel) = info.and_then(|i| i.osrelease()) {
        put_fixed(&mut u, 2 * UTS_FIELD, rel.as_bytes(), UTS_FIELD);
    }
    put_fixed(&mut u, 4 * UTS_FIELD, b"x86_64", UTS_FIELD);
    u
}

struct Layout {
    sub_hdr_blocks: u64,
    bitmap_bytes: u64,
    desc_offset: u64,
    data_offset: u64,
}

fn layout(notes_len: usize, max_mapnr: u64, written: u64) -> Result<Layout, KdumpError> {
    let sub_hdr_blocks = ((SUB_HEADER_SIZE + notes_len) as u64).div_ceil(BLOCK);
    let bitmap_bytes = max_mapnr.div_ceil(8).div_ceil(BLOCK).max(1) * BLOCK;
    let desc_offset = (1 + sub_hdr_blocks + 2 * bitmap_bytes / BLOCK).checked_mul(BLOCK).ok_or(KdumpError::Overflow)?;
    let data_offset =
        written.checked_mul(PAGE_DESC_SIZE).and_then(|d| d.checked_add(desc_offset)).ok_or(KdumpError::Overflow)?;
    if 2 * bitmap_bytes / BLOCK > u64::from(u32::MAX) {
        return Err(KdumpError::Overflow);
    }
    Ok(Layout { sub_hdr_blocks, bitmap_bytes, desc_offset, data_offset })
}

/// The largest kdump-compressed file of a guest with `max_mapnr` page frames, `pages` of them
/// RAM, and `notes_len` bytes of ELF notes: every page kept and stored as it is (an
/// incompressible page is), and the one shared zero page; for a disk budget. `u64::MAX` when
/// it overflows.
pub fn required_bytes(notes_len: u64, max_mapnr: u64, pages: u64) -> u64 {
    let Ok(notes_len) = usize::try_from(notes_len) else { return u64::MAX };
    layout(notes_len, max_mapnr, pages)
        .ok()
        .and_then(|l| pages.checked_add(1)?.checked_mul(BLOCK)?.checked_add(l.data_offset))
        .unwrap_or(u64::MAX)
}

/// One compressed window: per page (flags, data length) and the data, back to back.
#[derive(Default)]
struct Chunk {
    pages: Vec<(u32, u32)>,
    data: Vec<u8>,
    zero: u64,
    compressed: u64,
    err: Option<KdumpError>,
}

const ZERO_MARK: u32 = u32::MAX;

fn compress_chunk<M: PhysMem + ?Sized>(
    mem: &M,
    pfns: &[u64],
    c: Compression,
    zero_level: bool,
    holds_data: Option<&Bitmap>,
    st: &mut CodecState,
) -> Chunk {
    let mut ch = Chunk { pages: Vec::with_capacity(pfns.len()), ..Default::default() };
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut out = Vec::new();
    for &pfn in pfns {
        let known_zero = holds_data.is_some_and(|b| !b.get(pfn));
        if known_zero {
            page.fill(0);
        } else if let Err(e) = mem.read(pfn * PAGE_SIZE, &mut page) {
            ch.err = Some(e.into());
            return ch;
        }
        if zero_level && (known_zero || is_zero(&page)) {
            ch.pages.push((ZERO_MARK, 0));
            ch.zero += 1;
            continue;
        }
        match c.compress(&page, st, &mut out) {
            Some(n) => {
                ch.pages.push((c.flag(), n as u32));
                ch.data.extend_from_slice(&out[..n]);
                ch.compressed += 1;
            }
            None => {
                ch.pages.push((0, PAGE_SIZE as u32));
                ch.data.extend_from_slice(&page);
            }
        }
    }
    ch
}

/// Whether `page` is all zero bytes: ORs of 64-byte blocks, which vectorize (a byte-at-a-time
/// check with an early exit does not, and cost more than LZO compressing a page of data).
pub fn is_zero(page: &[u8]) -> bool {
    let mut blocks = page.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Writes the kdump-compressed file of `cls` (what to write) to `out`.
///
/// `mem` is read for every page bitmap2 keeps (and for the utsname); `info` supplies the
/// header's utsname, timestamp and `phys_base`.
pub fn write_kdump<M, W>(
    out: &mut W,
    mem: &M,
    cls: &Classification,
    info: Option<&VmcoreInfo>,
    notes: &NoteSet,
    opts: &KdumpOptions<'_>,
) -> Result<KdumpSummary, KdumpError>
where
    M: PhysMem + Sync + ?Sized,
    W: Write + Seek,
{
    let start = Instant::now();
    let max_mapnr = cls.valid.len();
    let written = cls.dumpable.count();
    let lay = layout(notes.bytes.len(), max_mapnr, written)?;
    let zero_level = cls.report.requested_level & crate::classify::DL_ZERO != 0;
    let threads =
        if opts.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { opts.threads }
            .clamp(1, 256);

    // Header.
    let mut h = vec![0u8; BLOCK as usize];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&HEADER_VERSION.to_le_bytes());
    h[12..12 + 6 * UTS_FIELD].copy_from_slice(&utsname(mem, info));
    let crash_time = info.and_then(|i| i.crash_time()).unwrap_or(0);
    h[408..416].copy_from_slice(&crash_time.to_le_bytes());
    let mut put32 = |at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(424, opts.compression.flag());
    put32(428, BLOCK as u32);
    put32(432, lay.sub_hdr_blocks as u32);
    put32(436, (2 * lay.bitmap_bytes / BLOCK) as u32);
    put32(440, max_mapnr.min(u64::from(u32::MAX)) as u32);
    put32(460, notes.nr_cpus().max(1));
    debug_assert!(HEADER_SIZE <= h.len());
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&h)?;

    // Sub-header and notes.
    let mut s = vec![0u8; (lay.sub_hdr_blocks * BLOCK) as usize];
    let note_off = BLOCK + SUB_HEADER_SIZE as u64;
    let mut put64 = |at: usize, v: u64| s[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put64(0, info.and_then(|i| i.phys_base()).unwrap_or(0));
    let eff = cls.report.effective_level;
    put64(8, u64::from(eff)); // dump_level (int) + split (int) 0
    if let Some((at, len)) = notes.vmcoreinfo {
        put64(32, note_off + at as u64);
        put64(40, len as u64);
    }
    if !notes.bytes.is_empty() {
        put64(48, note_off);
        put64(56, notes.bytes.len() as u64);
    }
    put64(96, max_mapnr);
    s[SUB_HEADER_SIZE..SUB_HEADER_SIZE + notes.bytes.len()].copy_from_slice(&notes.bytes);
    out.write_all(&s)?;

    // Bitmaps.
    for bm in [&cls.valid, &cls.dumpable] {
        let mut b = bm.to_bytes();
        b.resize(lay.bitmap_bytes as usize, 0);
        out.write_all(&b)?;
    }

    // Pages, then their descriptors.
    out.seek(SeekFrom::Start(lay.data_offset))?;
    let mut data_pos = lay.data_offset;
    let zero_desc_offset = data_pos;
    if zero_level {
        out.write_all(&[0u8; PAGE_SIZE as usize])?;
        data_pos += PAGE_SIZE;
    }
    let mut descs = Vec::with_capacity((written * PAGE_DESC_SIZE) as usize);
    let pfns: Vec<u64> = cls.dumpable.iter_ones().collect();
    let total_bytes = written * PAGE_SIZE;
    let (mut zero, mut compressed, mut bytes_after) = (0u64, 0u64, 0u64);
    let mut done = 0u64;
    // Compression threads take every `threads`-th chunk of CHUNK_PAGES pages, each with a queue
    // of two; this thread writes the chunks in order as they come, so the writes overlap the
    // compression and at most 3 chunks per thread are in memory.
    let chunks: Vec<&[u64]> = pfns.chunks(CHUNK_PAGES).collect();
    let mut failed: Option<KdumpError> = None;
    std::thread::scope(|sc| {
        let queues: Vec<std::sync::mpsc::Receiver<Chunk>> = (0..threads)
            .map(|t| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(2);
                let chunks = &chunks;
                sc.spawn(move || {
                    let mut st = CodecState::default();
                    for part in chunks.iter().skip(t).step_by(threads) {
                        let ch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            compress_chunk(mem, part, opts.compression, zero_level, opts.holds_data, &mut st)
                        }))
                        .unwrap_or_else(|_| Chunk {
                            err: Some(KdumpError::Compress("a compression thread panicked".into())),
                            ..Default::default()
                        });
                        let stop = ch.err.is_some();
                        if tx.send(ch).is_err() || stop {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        for (k, part) in chunks.iter().enumerate() {
            let Ok(ch) = queues[k % threads].recv() else {
                failed = Some(KdumpError::Compress("a compression thread ended early".into()));
                return;
            };
            if let Some(e) = ch.err {
                failed = Some(e);
                return;
            }
            if let Err(e) = out.write_all(&ch.data) {
                failed = Some(e.into());
                return;
            }
            for (flags, size) in ch.pages {
                let (off, size, flags) = if flags == ZERO_MARK {
                    (zero_desc_offset, PAGE_SIZE as u32, 0)
                } else {
                    let at = data_pos;
                    data_pos += u64::from(size);
                    (at, size, flags)
                };
                descs.extend_from_slice(&off.to_le_bytes());
                descs.extend_from_slice(&size.to_le_bytes());
                descs.extend_from_slice(&flags.to_le_bytes());
                descs.extend_from_slice(&0u64.to_le_bytes());
            }
            zero += ch.zero;
            compressed += ch.compressed;
            bytes_after += ch.data.len() as u64;
            done += part.len() as u64 * PAGE_SIZE;
            if let Some(cb) = opts.on_progress {
                cb(done, total_bytes);
            }
        }
        // Leaving the scope drops the queues: a thread still sending (after an error) stops.
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let file_bytes = data_pos;
    out.seek(SeekFrom::Start(lay.desc_offset))?;
    out.write_all(&descs)?;
    out.seek(SeekFrom::Start(file_bytes))?;
    out.flush()?;
    let r = &cls.report;
    Ok(KdumpSummary {
        format: "kdump",
        compression: opts.compression,
        requested_level: r.requested_level,
        effective_level: eff,
        total_pages: r.total_pages,
        excluded_zero: zero,
        excluded_cache: r.excluded.cache,
        excluded_cache_private: r.excluded.cache_private,
        excluded_user: r.excluded.user,
        excluded_free: r.excluded.free,
        excluded_other: r.excluded.hwpoison + r.excluded.offline,
        written_pages: written,
        data_pages: written - zero,
        compressed_pages: compressed,
        bytes_before: (written - zero) * PAGE_SIZE,
        bytes_after,
        file_bytes,
        threads,
        duration: start.elapsed(),
        classification: r.clone(),
    })
}

/// One page descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageDesc {
    pub offset: u64,
    pub size: u32,
    pub flags: u32,
    pub page_flags: u64,
}

/// A kdump-compressed file's metadata, read back (tests, vmm's own checks).
#[derive(Debug, Clone)]
pub struct KdumpFile {
    pub header_version: i32,
    /// utsname fields: sysname, nodename, release, version, machine, domainname.
    pub utsname: [String; 6],
    pub timestamp: i64,
    pub status: u32,
    pub block_size: u32,
    pub nr_cpus: i32,
    pub phys_base: u64,
    pub dump_level: i32,
    pub max_mapnr: u64,
    pub notes: Vec<u8>,
    pub vmcoreinfo: Option<String>,
    /// bitmap1.
    pub valid: Bitmap,
    /// bitmap2.
    pub dumpable: Bitmap,
    desc_offset: u64,
    /// Set bits of bitmap2 before each 64-bit word.
    rank: Vec<u64>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Largest metadata read (notes, bitmaps) accepted from a file.
const MAX_META: u64 = 1 << 32;

impl KdumpFile {
    pub fn parse<R: Read + Seek>(r: &mut R) -> Result<Self, KdumpError> {
        let bad = |s: &str| KdumpError::Format(s.to_string());
        let mut h = vec![0u8; HEADER_SIZE];
        r.seek(SeekFrom::Start(0))?;
        r.read_exact(&mut h)?;
        if &h[0..8] != SIGNATURE {
            return Err(bad("no KDUMP signature"));
        }
        let header_version = le32(&h, 8) as i32;
        let block_size = le32(&h, 428);
        if block_size != BLOCK as u32 {
            return Err(bad("block size is not 4096"));
        }
        let uts = |i: usize| {
            let f = &h[12 + i * UTS_FIELD..12 + (i + 1) * UTS_FIELD];
            String::from_utf8_lossy(f.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()
        };
        let utsname = [uts(0), uts(1), uts(2), uts(3), uts(4), uts(5)];
        let sub_blocks = u64::from(le32(&h, 432));
        let bitmap_blocks = u64::from(le32(&h, 436));
        let mut s = vec![0u8; SUB_HEADER_SIZE];
        r.seek(SeekFrom::Start(BLOCK))?;
        r.read_exact(&mut s)?;
        let max_mapnr = if header_version >= 6 { le64(&s, 96) } else { u64::from(le32(&h, 440)) };
        let read_at = |r: &mut R, off: u64, len: u64| -> Result<Vec<u8>, KdumpError> {
            if len > MAX_META {
                return Err(bad("metadata too large"));
            }
            let mut v = vec![0u8; len as usize];
            r.seek(SeekFrom::Start(off))?;
            r.read_exact(&mut v)?;
            Ok(v)
        };
        let notes = if le64(&s, 56) > 0 { read_at(r, le64(&s, 48), le64(&s, 56))? } else { Vec::new() };
        let vmcoreinfo = if le64(&s, 40) > 0 {
            Some(String::from_utf8_lossy(&read_at(r, le64(&s, 32), le64(&s, 40))?).into_owned())
        } else {
            None
        };
        let bm_off = (1 + sub_blocks) * BLOCK;
        let bm_len = bitmap_blocks * BLOCK / 2;
        if max_mapnr.div_ceil(8) > bm_len {
            return Err(bad("bitmaps shorter than max_mapnr"));
        }
        let valid = Bitmap::from_bytes(&read_at(r, bm_off, bm_len)?, max_mapnr);
        let dumpable = Bitmap::from_bytes(&read_at(r, bm_off + bm_len, bm_len)?, max_mapnr);
        let mut rank = Vec::with_capacity(dumpable.words().len());
        let mut acc = 0u64;
        for w in dumpable.words() {
            rank.push(acc);
            acc += u64::from(w.count_ones());
        }
        Ok(Self {
            header_version,
            utsname,
            timestamp: le64(&h, 408) as i64,
            status: le32(&h, 424),
            block_size,
            nr_cpus: le32(&h, 460) as i32,
            phys_base: le64(&s, 0),
            dump_level: le32(&s, 8) as i32,
            max_mapnr,
            notes,
            vmcoreinfo,
            valid,
            dumpable,
            desc_offset: bm_off + bitmap_blocks * BLOCK,
            rank,
        })
    }

    /// The descriptor of `pfn`, if bitmap2 has it.
    pub fn page_desc<R: Read + Seek>(&self, r: &mut R, pfn: u64) -> Result<Option<PageDesc>, KdumpError> {
        if !self.dumpable.get(pfn) {
            return Ok(None);
        }
        let w = (pfn / 64) as usize;
        let below = self.dumpable.words().get(w).map_or(0, |word| (word & ((1u64 << (pfn % 64)) - 1)).count_ones());
        let idx = self.rank.get(w).copied().unwrap_or(0) + u64::from(below);
        let mut d = [0u8; PAGE_DESC_SIZE as usize];
        r.seek(SeekFrom::Start(self.desc_offset + idx * PAGE_DESC_SIZE))?;
        r.read_exact(&mut d)?;
        Ok(Some(PageDesc { offset: le64(&d, 0), size: le32(&d, 8), flags: le32(&d, 12), page_flags: le64(&d, 16) }))
    }

    /// The 4096 bytes of `pfn`, decompressed; None if not in the file.
    pub fn read_page<R: Read + Seek>(&self, r: &mut R, pfn: u64) -> Result<Option<Vec<u8>>, KdumpError> {
        let Some(d) = self.page_desc(r, pfn)? else { return Ok(None) };
        if d.size as u64 > 2 * PAGE_SIZE {
            return Err(KdumpError::Format(format!("page {pfn:#x}: size {}", d.size)));
        }
        let mut raw = vec![0u8; d.size as usize];
        r.seek(SeekFrom::Start(d.offset))?;
        r.read_exact(&mut raw)?;
        let page = match d.flags {
            0 => raw,
            DUMP_DH_COMPRESSED_ZLIB => {
                let mut out = Vec::with_capacity(PAGE_SIZE as usize);
                flate2::read::ZlibDecoder::new(&raw[..])
                    .take(PAGE_SIZE + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| KdumpError::DecompressPage { pfn, source: e.into() })?;
                out
            }
            DUMP_DH_COMPRESSED_LZO => lzokay_native::decompress_all(&raw, Some(PAGE_SIZE as usize))
                .map_err(|e| KdumpError::DecompressPage { pfn, source: e.into() })?,
            f => return Err(KdumpError::Decompress(format!("unsupported page flags {f:#x}"))),
        };
        if page.len() != PAGE_SIZE as usize {
            return Err(KdumpError::Decompress(format!("page {pfn:#x} is {} bytes", page.len())));
        }
        Ok(Some(page))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::classify::{classify, ClassifyOptions};
    use crate::testutil::*;
    use crate::SliceMem;

    fn guest() -> (Guest, String) {
        let mut g = Guest::new(true, true);
        populate(&mut g);
        let text = g.vmcoreinfo();
        // Data in some kept pages (compressible text, and random bytes that are not).
        for pfn in [2000u64, 2001, 5000] {
            let at = (pfn * PAGE_SIZE) as usize;
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for (i, b) in g.pt.mem[at..at + PAGE_SIZE as usize].iter_mut().enumerate() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = if pfn == 5000 { x as u8 } else { b"crashvmm "[i % 9] };
            }
        }
        (g, text)
    }

    fn write(
        g: &Guest,
        text: &str,
        level: u8,
        c: Compression,
        threads: usize,
    ) -> (Vec<u8>, KdumpSummary, Classification) {
        let info = VmcoreInfo::parse(text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let cls = classify(&mem, &mem.ranges(), Some(&info), level, &ClassifyOptions::default()).unwrap();
        let prstatus = [NoteSet::prstatus_note(&[1u8; 336]), NoteSet::prstatus_note(&[2u8; 336])].concat();
        let notes = NoteSet::new(&prstatus, Some(text));
        assert_eq!(notes.nr_cpus(), 2);
        let calls = AtomicU64::new(0);
        let cb = |done: u64, total: u64| {
            assert!(done <= total);
            calls.fetch_add(1, Ordering::Relaxed);
        };
        let mut out = Cursor::new(Vec::new());
        let opts = KdumpOptions { compression: c, threads, on_progress: Some(&cb), holds_data: None };
        let s = write_kdump(&mut out, &mem, &cls, Some(&info), &notes, &opts).unwrap();
        assert!(calls.load(Ordering::Relaxed) >= 1);
        (out.into_inner(), s, cls)
    }

    #[test]
    fn round_trip_with_every_codec() {
        let (g, text) = guest();
        for c in [Compression::Zlib { level: 1 }, Compression::Zlib { level: 6 }, Compression::Lzo, Compression::None] {
            let (file, s, cls) = write(&g, &text, 31, c, 3);
            assert_eq!(s.file_bytes, file.len() as u64);
            let mut r = Cursor::new(&file);
            let k = KdumpFile::parse(&mut r).unwrap();
            assert_eq!(k.header_version, 6);
            assert_eq!(k.utsname[0], "Linux");
            assert_eq!(k.utsname[2], "6.1.0-test-amd6");
            assert_eq!(k.timestamp, 1_700_000_000);
            assert_eq!(k.status, c.flag());
            assert_eq!(k.nr_cpus, 2);
            assert_eq!(k.dump_level, 31);
            assert_eq!(k.max_mapnr, PFNS);
            assert_eq!(k.vmcoreinfo.as_deref(), Some(text.as_str()));
            assert_eq!(crate::vmcoreinfo::iter_notes(&k.notes).count(), 3);
            assert_eq!(k.valid, cls.valid);
            assert_eq!(k.dumpable, cls.dumpable);
            // Every page written reads back as guest memory; excluded ones are absent.
            for pfn in 0..PFNS {
                let got = k.read_page(&mut r, pfn).unwrap();
                let want = &g.pt.mem[(pfn * PAGE_SIZE) as usize..][..PAGE_SIZE as usize];
                match got {
                    Some(p) => assert_eq!(p, want, "pfn {pfn} {c:?}"),
                    None => assert!(!cls.dumpable.get(pfn)),
                }
            }
            // Zero pages share one descriptor's data; random data is stored raw.
            let z1 = k.page_desc(&mut r, 10).unwrap().unwrap();
            let z2 = k.page_desc(&mut r, 11).unwrap().unwrap();
            assert_eq!(z1, z2);
            assert_eq!(z1.flags, 0);
            let rnd = k.page_desc(&mut r, 5000).unwrap().unwrap();
            assert_eq!((rnd.flags, rnd.size), (0, 4096));
            let txt = k.page_desc(&mut r, 2000).unwrap().unwrap();
            if c == Compression::None {
                assert_eq!(txt.flags, 0);
            } else {
                assert_eq!(txt.flags, c.flag());
                assert!(txt.size < 200, "{c:?}: {}", txt.size);
            }
            assert_eq!(s.written_pages, cls.dumpable.count());
            assert!(s.excluded_zero > 10_000);
            assert_eq!(s.data_pages + s.excluded_zero, s.written_pages);
            assert!(s.bytes_after <= s.bytes_before);
            let j = serde_json::to_value(&s).unwrap();
            assert_eq!(j["format"], "kdump");
        }
    }

    #[test]
    fn output_does_not_depend_on_thread_count_and_level_1_off_keeps_zero_pages() {
        let (g, text) = guest();
        let (a, _, _) = write(&g, &text, 31, Compression::Zlib { level: 6 }, 1);
        let (b, _, _) = write(&g, &text, 31, Compression::Zlib { level: 6 }, 4);
        assert!(a == b);
        let (f, s, _) = write(&g, &text, 30, Compression::Lzo, 2);
        assert_eq!(s.excluded_zero, 0);
        let mut r = Cursor::new(&f);
        let k = KdumpFile::parse(&mut r).unwrap();
        let d = k.page_desc(&mut r, 10).unwrap().unwrap();
        assert_eq!(d.flags, DUMP_DH_COMPRESSED_LZO);
        assert_eq!(k.read_page(&mut r, 10).unwrap().unwrap(), vec![0u8; 4096]);
    }

    /// Every page kept and none compressible (or no codec): the file stays within the bound,
    /// and the bound is the file's size give or take its notes and a page.
    #[test]
    fn required_bytes_bounds_every_file() {
        let (g, text) = guest();
        for c in [Compression::None, Compression::Lzo] {
            let (f, _, _) = write(&g, &text, 0, c, 2);
            let mut r = Cursor::new(&f);
            let notes = KdumpFile::parse(&mut r).unwrap().notes.len() as u64;
            let bound = required_bytes(notes, PFNS, PFNS);
            assert!(f.len() as u64 <= bound, "{c:?}: {} > {bound}", f.len());
            if c == Compression::None {
                assert!(bound - f.len() as u64 <= 2 * BLOCK, "{c:?}: {} vs {bound}", f.len());
            }
        }
        assert_eq!(required_bytes(0, u64::MAX, u64::MAX), u64::MAX);
    }

    trait PhysMemSync: PhysMem + Sync {}
    impl<T: PhysMem + Sync> PhysMemSync for T {}

    /// Guest memory that fails the read of any page outside `readable`.
    struct OnlyData<'a> {
        mem: SliceMem<'a>,
        readable: &'a Bitmap,
    }

    impl PhysMem for OnlyData<'_> {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), crate::OutOfRange> {
            if buf.len() == PAGE_SIZE as usize && !self.readable.get(paddr / PAGE_SIZE) {
                return Err(crate::OutOfRange { paddr, len: buf.len() });
            }
            self.mem.read(paddr, buf)
        }
    }

    #[test]
    fn pages_known_to_hold_no_data_are_not_read_and_come_out_zero() {
        let (g, text) = guest();
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let mut holds = Bitmap::new(PFNS);
        for pfn in 0..PFNS {
            let page = &g.pt.mem[(pfn * PAGE_SIZE) as usize..][..PAGE_SIZE as usize];
            holds.set(pfn, page.iter().any(|&b| b != 0));
        }
        assert!(holds.count() > 0 && holds.count() < PFNS / 2, "{} of {PFNS}", holds.count());
        let notes = NoteSet::new(&[], Some(&text));
        let only = OnlyData { mem: SliceMem::new(vec![(0, &g.pt.mem)]), readable: &holds };
        for level in [31, 30] {
            let cls = classify(&mem, &mem.ranges(), Some(&info), level, &ClassifyOptions::default()).unwrap();
            let dump = |m: &dyn PhysMemSync, holds_data: Option<&Bitmap>| {
                let mut out = Cursor::new(Vec::new());
                let opts = KdumpOptions { compression: Compression::Lzo, threads: 2, on_progress: None, holds_data };
                let r = write_kdump(&mut out, m, &cls, Some(&info), &notes, &opts);
                r.map(|s| (out.into_inner(), s))
            };
            let (plain, ps) = dump(&mem, None).unwrap();
            // Without the bitmap every kept page is read: the first zero one fails.
            assert!(matches!(dump(&only, None), Err(KdumpError::OutOfRange(_))));
            // With it no such page is read, and the file is the same.
            let (skipped, ss) = dump(&only, Some(&holds)).unwrap();
            assert!(plain == skipped, "level {level}");
            assert_eq!((ps.excluded_zero, ps.data_pages), (ss.excluded_zero, ss.data_pages));
            if level == 30 {
                let mut r = Cursor::new(&skipped);
                let k = KdumpFile::parse(&mut r).unwrap();
                let zero = (0..PFNS).find(|&p| cls.dumpable.get(p) && !holds.get(p)).unwrap();
                assert_eq!(k.read_page(&mut r, zero).unwrap().unwrap(), vec![0u8; 4096]);
            } else {
                assert!(ss.excluded_zero > 0);
            }
        }
    }

    #[test]
    fn the_zero_check_sees_a_byte_anywhere() {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        assert!(is_zero(&page));
        for at in [0, 63, 64, 2047, 4095] {
            page[at] = 0x80;
            assert!(!is_zero(&page), "byte {at}");
            page[at] = 0;
        }
        assert!(is_zero(&page[..100]) && !is_zero(&[0, 0, 1]));
    }

    #[test]
    fn only_pages_deflate_cannot_shrink_skip_it() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut random = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let noise: Vec<u8> = (0..4096).map(|_| random() as u8).collect();
        let twice = [&noise[..2048], &noise[..2048]].concat();
        let hex: Vec<u8> = (0..4096).map(|_| b"0123456789abcdef"[(random() % 16) as usize]).collect();
        let (mut st, mut out) = (CodecState::default(), Vec::new());
        let z = Compression::Zlib { level: 6 };
        assert!(incompressible(&noise, &mut st, &mut out), "random bytes");
        assert_eq!(z.compress(&noise, &mut st, &mut out), None);
        // High entropy but repeated: LZO sees the repeat, deflate halves it.
        assert!(!incompressible(&twice, &mut st, &mut out));
        assert!(z.compress(&twice, &mut st, &mut out).is_some_and(|n| n < 2200));
        // No repeats worth having but 4 bits a byte: deflate's Huffman stage halves it.
        assert!(!incompressible(&hex, &mut st, &mut out));
        assert!(z.compress(&hex, &mut st, &mut out).is_some_and(|n| n < 2400));
    }

    #[test]
    fn many_chunks_come_out_in_order_whatever_the_thread_count() {
        // Level 30 keeps the zero pages too: several chunks of CHUNK_PAGES.
        let (g, text) = guest();
        for c in [Compression::Lzo, Compression::Zlib { level: 1 }] {
            let (one, s, _) = write(&g, &text, 30, c, 1);
            assert!(s.written_pages > 3 * CHUNK_PAGES as u64, "{}", s.written_pages);
            for threads in [2, 3, 7] {
                assert!(write(&g, &text, 30, c, threads).0 == one, "{c:?}, {threads} threads");
            }
        }
    }

    /// A file that takes `room` bytes, then fails every write as a full disk does.
    struct FullDisk {
        inner: Cursor<Vec<u8>>,
        room: u64,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let end = self.inner.position() + buf.len() as u64;
            if end > self.room {
                return Err(std::io::Error::from_raw_os_error(ENOSPC));
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(to)
        }
    }

    /// Linux's ENOSPC.
    const ENOSPC: i32 = 28;

    /// Guest memory whose page `bad` cannot be read.
    struct Holed<'a> {
        mem: SliceMem<'a>,
        bad: u64,
    }

    impl PhysMem for Holed<'_> {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), crate::OutOfRange> {
            if paddr / PAGE_SIZE == self.bad {
                return Err(crate::OutOfRange { paddr, len: buf.len() });
            }
            self.mem.read(paddr, buf)
        }
    }

    #[test]
    fn a_full_disk_or_an_unreadable_page_ends_the_dump_with_an_error() {
        let (g, text) = guest();
        let info = VmcoreInfo::parse(&text);
        let mem = SliceMem::new(vec![(0, &g.pt.mem)]);
        let cls = classify(&mem, &mem.ranges(), Some(&info), 30, &ClassifyOptions::default()).unwrap();
        let notes = NoteSet::new(&[], Some(&text));
        let opts = KdumpOptions { compression: Compression::Lzo, threads: 3, on_progress: None, holds_data: None };
        let (full, _, _) = write(&g, &text, 30, Compression::Lzo, 3);
        // Failing in the header, the bitmaps, the first chunk, a later one, the descriptors.
        for room in [100u64, 9000, full.len() as u64 / 3, full.len() as u64 * 2 / 3, full.len() as u64 - 10] {
            let mut out = FullDisk { inner: Cursor::new(Vec::new()), room };
            let e = write_kdump(&mut out, &mem, &cls, Some(&info), &notes, &opts).unwrap_err();
            assert!(matches!(&e, KdumpError::Io(io) if io.raw_os_error() == Some(ENOSPC)), "room {room}: {e}");
        }
        for bad in [cls.dumpable.iter_ones().next().unwrap(), cls.dumpable.iter_ones().nth(3000).unwrap()] {
            let holed = Holed { mem: SliceMem::new(vec![(0, &g.pt.mem)]), bad };
            let mut out = Cursor::new(Vec::new());
            let e = write_kdump(&mut out, &holed, &cls, Some(&info), &notes, &opts).unwrap_err();
            assert!(matches!(e, KdumpError::OutOfRange(r) if r.paddr == bad * PAGE_SIZE), "pfn {bad}");
        }
    }

    #[test]
    fn reader_rejects_garbage() {
        let mut r = Cursor::new(vec![0u8; 8192]);
        assert!(matches!(KdumpFile::parse(&mut r), Err(KdumpError::Format(_))));
        let (g, text) = guest();
        let (mut f, _, _) = write(&g, &text, 31, Compression::Lzo, 2);
        // A bitmap_blocks that does not cover max_mapnr.
        f[436..440].copy_from_slice(&0u32.to_le_bytes());
        assert!(KdumpFile::parse(&mut Cursor::new(&f)).is_err());
        let mut r = Cursor::new(vec![0u8; 10]);
        assert!(KdumpFile::parse(&mut r).is_err());
    }
}
