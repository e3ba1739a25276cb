//! Host-side vmcore of the guest's physical memory, readable by `crash` and `makedumpfile`, in
//! one of two formats ([`VmcoreFormat`]): the kdump-compressed file makedumpfile writes (the
//! default; `diskdump.rs`, through the `kdump` crate) or an ELF64 core file in the shape of
//! QEMU's `dump-guest-memory` (non-paging) output (this file). Either way the pages the dump
//! level excludes (`--dump-level`, makedumpfile's classes: zero, cache, private cache, user,
//! free, decided from the guest's VMCOREINFO and struct pages) are left out: holes in an ELF.
//!
//! The ELF layout:
//!
//! ```text
//! offset 0      Elf64_Ehdr (ET_CORE, EM_X86_64)
//!        64     Elf64_Phdr PT_NOTE, then one PT_LOAD per guest RAM region (p_paddr = GPA)
//!               notes: NT_PRSTATUS "CORE" per vCPU, "QEMU" CPU state per vCPU, "VMCOREINFO"
//!        page   region 0 bytes, region 1 bytes (each at a page-aligned offset) ...
//! ```
//!
//! As QEMU does without paging, `p_vaddr` is 0 in every program header: we know no virtual
//! mapping, and 0 is the value makedumpfile and crash treat as "no kernel virtual address" (they
//! find the kernel through VMCOREINFO's `KERNELOFFSET`, `phys_base` and `init_top_pgt`, or
//! crash through the QEMU notes' CR3/IDTR). `p_align` is 0 too, as in QEMU's output and the
//! kernel's `/proc/vmcore`: crash takes an ELF core whose first PT_LOAD has a page-aligned offset
//! and a non-zero `p_align` for an old netdump core and then ignores its VMCOREINFO.
//!
//! The guest's VMCOREINFO note (what makedumpfile needs) is found by scanning guest RAM at page
//! boundaries for the note header Linux builds (guest-protocol §8.3).
//!
//! Writing: all-zero pages become holes (the file is sparse), runs of non-zero pages go to the
//! file with one `pwrite` each straight from the guest mapping, and a second thread computes the
//! SHA-256 of the file as a reader sees it (holes included) from the same mapping. For private
//! anonymous guest RAM, `/proc/self/pagemap` tells which pages were never touched: those are
//! zero without being read (no page faults, no memory traffic).
//!
//! The guest must not run while its memory is dumped (the vCPUs are stopped): otherwise the
//! dump is torn and its hash may not match the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kdump::classify::{Bitmap, ClassifyReport};
use kdump::diskdump::KdumpSummary;
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};
use serde::Serialize;
use sha2::{Digest, Sha256};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use super::snapshot::Snapshot;

/// Guest page size (x86_64), the granularity of holes and of the VMCOREINFO scan.
const PAGE: usize = 4096;
/// Pages handled per step (pagemap read, zero checks, progress update): 8 MiB.
const BATCH_PAGES: usize = 2048;
/// Largest single write of consecutive non-zero pages.
const MAX_RUN: usize = 16 << 20;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const NT_PRSTATUS: u32 = 1;
/// ELF's `PN_XNUM`: more program headers than this need an extension we do not write.
const PN_XNUM: usize = 0xffff;

/// `sizeof(struct elf_prstatus)` on x86_64.
const PRSTATUS_SIZE: usize = 336;
/// `offsetof(struct elf_prstatus, pr_pid)`.
const PRSTATUS_PID: usize = 32;
/// `offsetof(struct elf_prstatus, pr_reg)`.
const PRSTATUS_REGS: usize = 112;
/// QEMU's `QEMUCPUState` version 1 without the optional trailing `kernel_gs_base` (we do not
/// have that MSR; readers check `size` for it).
const QEMU_CPU_STATE_SIZE: usize = 432;

/// The VMCOREINFO note: `n_namesz = 11`, `n_descsz`, `n_type = 0`, `"VMCOREINFO\0"` padded to
/// 12 bytes, then the text.
const VMCOREINFO_NAME: &[u8; 11] = b"VMCOREINFO\0";
const VMCOREINFO_HEADER: usize = 24;
/// Linux's `VMCOREINFO_BYTES` (one page).
const VMCOREINFO_MAX_DESC: usize = 4096;
const VMCOREINFO_PREFIX: &[u8] = b"OSRELEASE=";

/// vCPU count assumed by [`required_bytes`] for the notes (KVM's x86 maximum).
const MAX_VCPUS_FOR_ESTIMATE: u64 = 4096;

const PRSTATUS_NOTE_SIZE: usize = 12 + 8 + PRSTATUS_SIZE;
const QEMU_NOTE_SIZE: usize = 12 + 8 + QEMU_CPU_STATE_SIZE;
const VMCOREINFO_NOTE_MAX: usize = VMCOREINFO_HEADER + VMCOREINFO_MAX_DESC;

/// A zero page run for the hasher: what holes read as.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// One vCPU's registers, as `KVM_GET_REGS`/`KVM_GET_SREGS` returned them.
#[derive(Debug, Clone, Copy, Default)]
pub struct VcpuState {
    pub id: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
}

/// Where an x86 CPU starts after RESET or INIT: CS.base + RIP = 0xfffffff0.
const RESET_RIP: u64 = 0xfff0;
const RESET_CS_BASE: u64 = 0xffff_0000;

impl VcpuState {
    /// Whether these are the registers of a CPU just reset. On AMD, KVM reinitializes a vCPU
    /// that shut down (triple fault) before it reports the exit, because the VMCB is undefined
    /// after a SHUTDOWN intercept: its registers then say nothing about where the guest was.
    pub fn is_reset_state(&self) -> bool {
        self.regs.rip == RESET_RIP && self.sregs.cs.base == RESET_CS_BASE && self.sregs.cr0 & 1 == 0
    }
}

/// `--vmcore-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmcoreFormat {
    /// The kdump-compressed (diskdump) file of `makedumpfile -c`: filtered, compressed.
    #[default]
    Kdump,
    /// An ELF core file (QEMU `dump-guest-memory` layout); excluded pages are holes.
    Elf,
}

impl VmcoreFormat {
    /// The name `report.json` gives the format.
    pub fn report_name(self) -> &'static str {
        match self {
            VmcoreFormat::Kdump => "kdump-compressed",
            VmcoreFormat::Elf => "elf",
        }
    }
}

/// `--vmcore-compress`: page compression of a kdump-format vmcore. zlib and LZO are what both
/// Debian's `makedumpfile` 1.7.2 and `crash` 8.0.2 read. LZO is the default: the guest is paused
/// while its vmcore is written, and zlib level 6 compresses at ~150 MB/s a core against LZO's
/// GB/s, for a file only 1.05-1.4x smaller (README, `--vmcore-compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmcoreCompression {
    /// zlib, as `makedumpfile -c` (the smallest file, several times slower than LZO).
    Zlib,
    /// LZO1X, as `makedumpfile -l` (Fedora's and RHEL's kdump default).
    #[default]
    Lzo,
    /// Pages stored as they are.
    None,
}

/// What a host-side vmcore holds and how: format, dump level, compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DumpSpec {
    pub format: VmcoreFormat,
    /// makedumpfile's dump level (0-31): 1 zero, 2 cache, 4 private cache, 8 user, 16 free.
    pub dump_level: u8,
    pub compression: VmcoreCompression,
}

impl DumpSpec {
    /// Every page of guest RAM in an ELF file (zero pages as holes): what `--dump-level 0
    /// --vmcore-format elf` asks for.
    pub const ELF_ALL: DumpSpec =
        DumpSpec { format: VmcoreFormat::Elf, dump_level: 0, compression: VmcoreCompression::None };
    /// The highest dump level.
    pub const MAX_LEVEL: u8 = 31;
}

impl Default for DumpSpec {
    /// `makedumpfile -d 31 -l`.
    fn default() -> Self {
        Self { format: VmcoreFormat::Kdump, dump_level: Self::MAX_LEVEL, compression: VmcoreCompression::Lzo }
    }
}

/// What the dump level left out, for `report.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum FilterSummary {
    /// A kdump-format file: its pages per class, written, bytes before and after compression.
    Kdump(Box<KdumpSummary>),
    /// An ELF file filtered beyond zero pages: the classification.
    Elf(Box<ClassifyReport>),
    /// Either, as the live dump's writer process reported it.
    Decoded(serde_json::Value),
}

/// How to write the vmcore.
#[derive(Clone, Copy, Default)]
pub struct VmcoreOptions<'a> {
    pub spec: DumpSpec,
    /// Show a progress bar (bytes) on stderr.
    pub progress: bool,
    /// Called as the file is written, with (bytes done, file length); often, so throttle.
    pub on_progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
    /// Also compute the SHA-256 of the file (in a second thread, holes hashed as zeros): it
    /// reads the guest's whole memory size, so it, not the write, then sets the time.
    pub sha256: bool,
}

impl std::fmt::Debug for VmcoreOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmcoreOptions")
            .field("spec", &self.spec)
            .field("progress", &self.progress)
            .field("on_progress", &self.on_progress.is_some())
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// What [`write_vmcore`] wrote.
#[derive(Debug, Clone)]
pub struct VmcoreSummary {
    pub path: PathBuf,
    /// File length.
    pub bytes: u64,
    /// Disk space the file takes (`st_blocks * 512`): much less than `bytes` when the guest's
    /// memory is mostly zero.
    pub allocated_bytes: u64,
    /// SHA-256 of the file contents (holes read as zeros), lowercase hex, when asked for.
    pub sha256: Option<String>,
    pub duration: Duration,
    /// The guest's VMCOREINFO note, copied into the dump, if one was found.
    pub vmcoreinfo: Option<VmcoreInfoNote>,
    pub spec: DumpSpec,
    /// What the dump level excluded (none for an unfiltered ELF).
    pub filter: Option<FilterSummary>,
}

/// The guest kernel's VMCOREINFO ELF note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmcoreInfoNote {
    /// Guest physical address of the note header.
    pub gpa: u64,
    /// The note's descriptor: `KEY=value` lines, starting with `OSRELEASE=`.
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VmcoreError {
    #[error("cannot create vmcore {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write vmcore {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot flush vmcore {path} to disk")]
    Sync { path: PathBuf, source: io::Error },
    #[error("guest memory region at {gpa:#x} has no host mapping")]
    NoHostMapping { gpa: u64 },
    #[error("{0} guest memory regions: too many program headers for an ELF core")]
    TooManyRegions(usize),
    #[error("vmcore layout overflows 64 bits")]
    Overflow,
    #[error("the vmcore hashing thread failed")]
    Hasher,
    #[error("cannot write the kdump-format vmcore {path}")]
    Kdump { path: PathBuf, source: kdump::KdumpError },
    #[error("live dump: {0}")]
    Live(String),
}

/// One guest RAM region, mapped in this process.
pub(super) struct Region<'a> {
    pub(super) gpa: u64,
    /// The guest's bytes. See [`host_regions`] for why a shared slice is sound here.
    pub(super) bytes: &'a [u8],
    /// Whether `/proc/self/pagemap` may be used to skip never-touched pages.
    pagemap_ok: bool,
    /// A live dump's write-protect snapshot: `bytes` is the running guest's memory, and a page
    /// it wrote since the snapshot is read from the snapshot's copy instead.
    pub(super) snapshot: Option<&'a Snapshot<'a>>,
}

impl Region<'_> {
    /// `bytes[off..off + buf.len()]` (which must be in range) into `buf`, as of the snapshot if
    /// there is one; pages that held no data then are not read (reading maps zero pages).
    pub(super) fn read_into(&self, off: usize, buf: &mut [u8]) {
        let host = self.bytes.as_ptr().addr() + off;
        let first = host & !(PAGE - 1);
        if self.snapshot.is_some_and(|s| (first..host + buf.len()).step_by(PAGE).all(|p| !s.had_data(p))) {
            buf.fill(0);
            return;
        }
        buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
        if let Some(s) = self.snapshot {
            s.patch(host, buf);
        }
    }
}

/// Every region of `mem`, in ascending GPA order, read through `snapshot` if there is one.
pub(super) fn host_regions<'a>(
    mem: &'a GuestMemoryMmap,
    snapshot: Option<&'a Snapshot<'a>>,
) -> Result<Vec<Region<'a>>, VmcoreError> {
    let mut regions = Vec::new();
    for r in mem.iter() {
        let gpa = r.start_addr().0;
        let len = usize::try_from(r.len()).map_err(|_| VmcoreError::Overflow)?;
        let ptr = r.get_host_address(MemoryRegionAddress(0)).map_err(|_| VmcoreError::NoHostMapping { gpa })?;
        if ptr.is_null() || len > isize::MAX as usize {
            return Err(VmcoreError::NoHostMapping { gpa });
        }
        // SAFETY: `ptr` is the start of this region's mapping, which is `len` bytes long,
        // readable, and stays mapped while `mem` is borrowed (the slice borrows `mem`). The
        // bytes are plain data with no invalid values. The guest (the only other writer) is
        // stopped while a dump is taken, as this module's contract requires, or, with a
        // snapshot, write-protected until a page's copy is saved: what is read of a page that
        // changes meanwhile is discarded for the copy (`crash/snapshot.rs`). vm-memory hands
        // out these same host addresses for KVM memslots and I/O.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
        // Only a private anonymous mapping we own has "never touched" == "reads as zero".
        let private_anon = r.flags() & libc::MAP_ANONYMOUS != 0
            && r.flags() & (libc::MAP_SHARED | libc::MAP_PRIVATE) == libc::MAP_PRIVATE;
        let pagemap_ok = private_anon && r.file_offset().is_none() && r.owned() && bytes.as_ptr().addr() % PAGE == 0;
        regions.push(Region { gpa, bytes, pagemap_ok, snapshot });
    }
    regions.sort_by_key(|r| r.gpa);
    Ok(regions)
}

/// `/proc/self/pagemap`: which pages of a private anonymous mapping may hold data.
pub(super) struct Pagemap {
    file: File,
}

impl Pagemap {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;

    pub(super) fn open() -> Option<Self> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let host_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if host_page != PAGE as libc::c_long {
            return None;
        }
        let pagemap = Self { file: File::open("/proc/self/pagemap").ok()? };
        // Trust it only if it reports a page we have just written as present (some sandboxes
        // serve a pagemap of zeros, which would turn the whole dump into holes).
        let probe = std::hint::black_box(vec![1u8; 2 * PAGE]);
        let page = probe.as_ptr().addr().div_ceil(PAGE);
        let mut entry = [0u8; 8];
        pagemap.file.read_exact_at(&mut entry, page as u64 * 8).ok()?;
        (u64::from_ne_bytes(entry) & Self::PRESENT != 0).then_some(pagemap)
    }
}

/// Per-batch page classification: `maybe_data[i]` is false only for a page known to be zero
/// without reading it, or one the dump level excludes (`keep`: bit per guest PFN).
struct Presence<'p> {
    pagemap: Option<&'p Pagemap>,
    keep: Option<&'p Bitmap>,
    raw: Vec<u8>,
    maybe_data: Vec<bool>,
}

impl<'p> Presence<'p> {
    fn new(pagemap: Option<&'p Pagemap>, keep: Option<&'p Bitmap>) -> Self {
        Self { pagemap, keep, raw: vec![0; BATCH_PAGES * 8], maybe_data: vec![true; BATCH_PAGES] }
    }

    /// Classifies the `n` pages (`n <= BATCH_PAGES`) at `region.bytes[first_page * PAGE..]`.
    fn fill(&mut self, region: &Region<'_>, first_page: usize, n: usize) -> &[bool] {
        let n = n.min(BATCH_PAGES);
        match self.keep {
            Some(keep) => {
                let pfn = region.gpa / PAGE as u64 + first_page as u64;
                for (i, m) in self.maybe_data[..n].iter_mut().enumerate() {
                    *m = keep.get(pfn + i as u64);
                }
            }
            None => self.maybe_data[..n].fill(true),
        }
        // A snapshot says which pages held data when it was taken.
        if let Some(s) = region.snapshot {
            let host = region.bytes.as_ptr().addr() + first_page * PAGE;
            for (i, m) in self.maybe_data[..n].iter_mut().enumerate() {
                *m &= s.had_data(host + i * PAGE);
            }
            return &self.maybe_data[..n];
        }
        let Some(pagemap) = self.pagemap.filter(|_| region.pagemap_ok) else {
            return &self.maybe_data[..n];
        };
        let vpage = region.bytes.as_ptr().addr() / PAGE + first_page;
        let raw = &mut self.raw[..n * 8];
        if pagemap.file.read_exact_at(raw, vpage as u64 * 8).is_err() {
            return &self.maybe_data[..n];
        }
        for (flag, entry) in self.maybe_data[..n].iter_mut().zip(raw.chunks_exact(8)) {
            let mut e = [0u8; 8];
            e.copy_from_slice(entry);
            *flag &= u64::from_ne_bytes(e) & (Pagemap::PRESENT | Pagemap::SWAPPED) != 0;
        }
        &self.maybe_data[..n]
    }

    /// Whether the dump level keeps page `page` of `region`.
    fn kept(&self, region: &Region<'_>, page: usize) -> bool {
        self.keep.is_none_or(|keep| keep.get(region.gpa / PAGE as u64 + page as u64))
    }
}

/// A bit per guest PFN (`pfns` of them) for each page that may hold data, as the snapshot or
/// `/proc/self/pagemap` tells ([`Presence`]); a clear bit is a page that reads as zero. `None`
/// when neither can tell for any region (every page must then be read).
pub(super) fn data_pages(regions: &[Region<'_>], pagemap: Option<&Pagemap>, pfns: u64) -> Option<Bitmap> {
    if !regions.iter().any(|r| r.snapshot.is_some() || (r.pagemap_ok && pagemap.is_some())) {
        return None;
    }
    let mut bits = Bitmap::new(pfns);
    let mut presence = Presence::new(pagemap, None);
    for r in regions {
        let (base, n) = (r.gpa / PAGE as u64, page_count(r.bytes.len()));
        for first in (0..n).step_by(BATCH_PAGES) {
            for (i, &maybe) in presence.fill(r, first, n - first).iter().enumerate() {
                if maybe {
                    bits.set(base + (first + i) as u64, true);
                }
            }
        }
    }
    Some(bits)
}

fn page_count(len: usize) -> usize {
    len.div_ceil(PAGE)
}

/// The byte range of page `page` in a region of `len` bytes (the last page may be short).
fn page_range(page: usize, len: usize) -> std::ops::Range<usize> {
    let start = page * PAGE;
    start..(start + PAGE).min(len)
}

fn parse_vmcoreinfo_at(bytes: &[u8], off: usize) -> Option<String> {
    let head = bytes.get(off..off.checked_add(VMCOREINFO_HEADER)?)?;
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) != 11 || word(8) != 0 || head[12..23] != VMCOREINFO_NAME[..] {
        return None;
    }
    let descsz = word(4) as usize;
    if !(VMCOREINFO_PREFIX.len()..=VMCOREINFO_MAX_DESC).contains(&descsz) {
        return None;
    }
    let start = off + VMCOREINFO_HEADER;
    let desc = bytes.get(start..start.checked_add(descsz)?)?;
    if !desc.starts_with(VMCOREINFO_PREFIX) {
        return None;
    }
    String::from_utf8(desc.to_vec()).ok()
}

/// The first 16 bytes of a VMCOREINFO note, minus `n_descsz`: `n_namesz = 11` and
/// `n_type = 0 | "VMCO"`.
const NOTE_WORD0_LOW: u64 = 11;
const NOTE_WORD1: u64 = u64::from_le_bytes(*b"\0\0\0\0VMCO");

fn scan_region(region: &Region<'_>, presence: &mut Presence<'_>) -> Option<VmcoreInfoNote> {
    let bytes = region.bytes;
    let pages = page_count(bytes.len());
    let mut first = 0;
    while first < pages {
        let n = (pages - first).min(BATCH_PAGES);
        let maybe = presence.fill(region, first, n);
        for (i, _) in maybe.iter().enumerate().filter(|(_, &m)| m) {
            let off = (first + i) * PAGE;
            let Some(head) = bytes.get(off..off + 16) else {
                continue;
            };
            let mut w0 = [0u8; 8];
            let mut w1 = [0u8; 8];
            w0.copy_from_slice(&head[..8]);
            w1.copy_from_slice(&head[8..]);
            if u64::from_le_bytes(w0) & 0xffff_ffff != NOTE_WORD0_LOW || u64::from_le_bytes(w1) != NOTE_WORD1 {
                continue;
            }
            let found = match region.snapshot {
                None => parse_vmcoreinfo_at(bytes, off),
                // Parsed again from the snapshot's bytes.
                Some(_) => {
                    let end = (off + VMCOREINFO_HEADER + VMCOREINFO_MAX_DESC).min(bytes.len());
                    let mut copy = vec![0; end - off];
                    region.read_into(off, &mut copy);
                    parse_vmcoreinfo_at(&copy, 0)
                }
            };
            if let Some(text) = found {
                return Some(VmcoreInfoNote { gpa: region.gpa + off as u64, text });
            }
        }
        first += n;
    }
    None
}

pub(super) fn find_in(regions: &[Region<'_>], pagemap: Option<&Pagemap>) -> Option<VmcoreInfoNote> {
    let mut presence = Presence::new(pagemap, None);
    regions.iter().find_map(|r| scan_region(r, &mut presence))
}

/// Finds the guest kernel's VMCOREINFO note: the first page (lowest GPA) that starts with a
/// note named "VMCOREINFO" of type 0, at most 4096 bytes of text, starting with `OSRELEASE=`.
pub fn find_vmcoreinfo(mem: &GuestMemoryMmap) -> Option<VmcoreInfoNote> {
    let regions = host_regions(mem, None).ok()?;
    let pagemap = Pagemap::open();
    find_in(&regions, pagemap.as_ref())
}

/// Where everything goes in the file.
struct Layout {
    /// ELF header, program headers and notes.
    header: Vec<u8>,
    /// File offset of each region's bytes (page-aligned), in `regions` order.
    offsets: Vec<u64>,
    file_len: u64,
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? / align * align)
}

/// File offsets of the regions after `header_len` bytes, and the file length.
fn place(header_len: u64, lens: &[u64]) -> Result<(Vec<u64>, u64), VmcoreError> {
    let mut offsets = Vec::with_capacity(lens.len());
    let mut end = header_len;
    for &len in lens {
        let off = align_up(end, PAGE as u64).ok_or(VmcoreError::Overflow)?;
        offsets.push(off);
        end = off.checked_add(len).ok_or(VmcoreError::Overflow)?;
    }
    Ok((offsets, end))
}

fn headers_len(regions: usize, notes_len: usize) -> Result<u64, VmcoreError> {
    if regions >= PN_XNUM - 1 {
        return Err(VmcoreError::TooManyRegions(regions));
    }
    Ok((EHDR_SIZE + PHDR_SIZE * (regions + 1) + notes_len) as u64)
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends an ELF note (4-byte aligned name and descriptor).
fn put_note(buf: &mut Vec<u8>, name: &[u8], n_type: u32, desc: &[u8]) {
    put_u32(buf, name.len() as u32);
    put_u32(buf, desc.len() as u32);
    put_u32(buf, n_type);
    buf.extend_from_slice(name);
    buf.resize(buf.len().next_multiple_of(4), 0);
    buf.extend_from_slice(desc);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// x86_64 `struct elf_prstatus` with `pr_pid` and `pr_reg` (`user_regs_struct`) filled in, as
/// QEMU writes it (`orig_rax` 0).
fn prstatus(vcpu: &VcpuState) -> Vec<u8> {
    let r = &vcpu.regs;
    let s = &vcpu.sregs;
    let mut d = vec![0u8; PRSTATUS_REGS];
    d[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&vcpu.id.wrapping_add(1).to_le_bytes());
    for v in [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        0, // orig_rax
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ] {
        put_u64(&mut d, v);
    }
    d.resize(PRSTATUS_SIZE, 0); // pr_fpvalid and padding
    d
}

/// A segment in QEMU's `QEMUCPUSegment` form; `flags` as QEMU's KVM code builds them from a
/// `kvm_segment` (descriptor attribute bits 8-23).
fn put_qemu_segment(d: &mut Vec<u8>, seg: &kvm_segment) {
    let present = u32::from(seg.present != 0 && seg.unusable == 0);
    let flags = (u32::from(seg.type_ & 0xf) << 8)
        | (u32::from(seg.s & 1) << 12)
        | (u32::from(seg.dpl & 3) << 13)
        | (present << 15)
        | (u32::from(seg.avl & 1) << 20)
        | (u32::from(seg.l & 1) << 21)
        | (u32::from(seg.db & 1) << 22)
        | (u32::from(seg.g & 1) << 23);
    put_u32(d, u32::from(seg.selector));
    put_u32(d, seg.limit);
    put_u32(d, flags);
    put_u32(d, 0);
    put_u64(d, seg.base);
}

fn put_qemu_dtable(d: &mut Vec<u8>, t: &kvm_dtable) {
    put_u32(d, 0);
    put_u32(d, u32::from(t.limit));
    put_u32(d, 0);
    put_u32(d, 0);
    put_u64(d, t.base);
}

/// QEMU's `QEMUCPUState` (version 1), which crash uses for CR3/IDTR (KASLR detection without
/// VMCOREINFO) and register display.
fn qemu_cpu_state(vcpu: &VcpuState) -> Vec<u8> {
    let r = &vcpu.regs;
    let s = &vcpu.sregs;
    let mut d = Vec::with_capacity(QEMU_CPU_STATE_SIZE);
    put_u32(&mut d, 1);
    put_u32(&mut d, QEMU_CPU_STATE_SIZE as u32);
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
        r.rip, r.rflags,
    ] {
        put_u64(&mut d, v);
    }
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        put_qemu_segment(&mut d, seg);
    }
    put_qemu_dtable(&mut d, &s.gdt);
    put_qemu_dtable(&mut d, &s.idt);
    for cr in [s.cr0, 0, s.cr2, s.cr3, s.cr4] {
        put_u64(&mut d, cr);
    }
    d
}

/// The ELF notes of a vmcore: NT_PRSTATUS and QEMU CPU state per vCPU, then VMCOREINFO.
pub(super) fn notes(vcpus: &[VcpuState], vmcoreinfo: Option<&VmcoreInfoNote>) -> Vec<u8> {
    let mut n = Vec::with_capacity(vcpus.len() * (PRSTATUS_NOTE_SIZE + QEMU_NOTE_SIZE) + 4200);
    for v in vcpus {
        put_note(&mut n, b"CORE\0", NT_PRSTATUS, &prstatus(v));
    }
    for v in vcpus {
        put_note(&mut n, b"QEMU\0", 0, &qemu_cpu_state(v));
    }
    if let Some(info) = vmcoreinfo {
        put_note(&mut n, VMCOREINFO_NAME, 0, info.text.as_bytes());
    }
    n
}

fn build_layout(
    regions: &[Region<'_>],
    vcpus: &[VcpuState],
    vmcoreinfo: Option<&VmcoreInfoNote>,
) -> Result<Layout, VmcoreError> {
    let notes = notes(vcpus, vmcoreinfo);
    let lens: Vec<u64> = regions.iter().map(|r| r.bytes.len() as u64).collect();
    let header_len = headers_len(regions.len(), notes.len())?;
    let (offsets, file_len) = place(header_len, &lens)?;
    let phnum = regions.len() + 1;

    let mut h = Vec::with_capacity(header_len as usize);
    h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]); // ELFCLASS64, LSB, EV_CURRENT
    h.resize(16, 0); // ELFOSABI_NONE, padding
    put_u16(&mut h, ET_CORE);
    put_u16(&mut h, EM_X86_64);
    put_u32(&mut h, 1); // e_version
    put_u64(&mut h, 0); // e_entry
    put_u64(&mut h, EHDR_SIZE as u64); // e_phoff
    put_u64(&mut h, 0); // e_shoff
    put_u32(&mut h, 0); // e_flags
    put_u16(&mut h, EHDR_SIZE as u16);
    put_u16(&mut h, PHDR_SIZE as u16);
    put_u16(&mut h, phnum as u16);
    put_u16(&mut h, 0); // e_shentsize
    put_u16(&mut h, 0); // e_shnum
    put_u16(&mut h, 0); // e_shstrndx

    let notes_off = (EHDR_SIZE + PHDR_SIZE * phnum) as u64;
    // PT_NOTE
    put_u32(&mut h, PT_NOTE);
    put_u32(&mut h, 0);
    put_u64(&mut h, notes_off);
    put_u64(&mut h, 0); // p_vaddr
    put_u64(&mut h, 0); // p_paddr
    put_u64(&mut h, notes.len() as u64);
    put_u64(&mut h, notes.len() as u64);
    put_u64(&mut h, 0); // p_align (notes are 4-byte aligned)
    for (r, &off) in regions.iter().zip(&offsets) {
        put_u32(&mut h, PT_LOAD);
        put_u32(&mut h, PF_R | PF_W | PF_X);
        put_u64(&mut h, off);
        put_u64(&mut h, 0); // p_vaddr: unknown without paging, as QEMU writes it
        put_u64(&mut h, r.gpa); // p_paddr
        put_u64(&mut h, r.bytes.len() as u64);
        put_u64(&mut h, r.bytes.len() as u64);
        // p_align 0, as QEMU and the kernel's /proc/vmcore write it: crash takes an ELF core
        // with page-aligned offsets and a non-zero p_align for an old netdump core, not kdump.
        put_u64(&mut h, 0);
    }
    h.extend_from_slice(&notes);
    Ok(Layout { header: h, offsets, file_len })
}

/// The largest file [`write_vmcore`] can produce for `mem` (with up to 4096 vCPUs and a
/// VMCOREINFO note), for a free-space check. The file is sparse, so it usually takes much less.
pub fn required_bytes(mem: &GuestMemoryMmap) -> u64 {
    let lens: Vec<u64> = mem.iter().map(|r| r.len()).collect();
    let notes = MAX_VCPUS_FOR_ESTIMATE * (PRSTATUS_NOTE_SIZE + QEMU_NOTE_SIZE) as u64 + VMCOREINFO_NOTE_MAX as u64;
    let header = (EHDR_SIZE + PHDR_SIZE * (lens.len() + 1)) as u64 + notes;
    match place(header, &lens) {
        Ok((_, len)) => len,
        Err(_) => u64::MAX,
    }
}

/// The SHA-256 of the file as laid out, read from the guest mapping (never-touched pages of
/// anonymous memory are hashed as zeros without being read). `done` counts hashed bytes;
/// `None` when `cancel` was set.
fn hash_file(
    layout: &Layout,
    regions: &[Region<'_>],
    pagemap: Option<&Pagemap>,
    keep: Option<&Bitmap>,
    done: &AtomicU64,
    cancel: &AtomicBool,
) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut pos = 0u64;
    let zeros = |hasher: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            hasher.update(&ZEROS[..k]);
            n -= k as u64;
        }
    };
    hasher.update(&layout.header);
    pos += layout.header.len() as u64;
    done.store(pos, Ordering::Relaxed);
    let mut presence = Presence::new(pagemap, keep);
    let mut patched = Vec::new();
    for (region, &off) in regions.iter().zip(&layout.offsets) {
        zeros(&mut hasher, off.saturating_sub(pos));
        let bytes = region.bytes;
        let pages = page_count(bytes.len());
        let mut first = 0;
        while first < pages {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let n = (pages - first).min(BATCH_PAGES);
            let maybe = presence.fill(region, first, n);
            // Hash maximal runs of same-class pages in one call each.
            let mut i = 0;
            while i < n {
                let class = maybe[i];
                let mut j = i + 1;
                while j < n && maybe[j] == class {
                    j += 1;
                }
                let start = (first + i) * PAGE;
                let end = ((first + j) * PAGE).min(bytes.len());
                if class && region.snapshot.is_some() {
                    patched.resize(end - start, 0);
                    region.read_into(start, &mut patched);
                    hasher.update(&patched);
                } else if class {
                    hasher.update(&bytes[start..end]);
                } else {
                    zeros(&mut hasher, (end - start) as u64);
                }
                i = j;
            }
            first += n;
            done.store(off + ((first * PAGE).min(bytes.len())) as u64, Ordering::Relaxed);
        }
        pos = off + bytes.len() as u64;
    }
    Some(hasher.finalize().into())
}

/// Writes the non-zero pages of `region` at file offset `base`, one `pwrite` per run.
fn write_region(
    file: &File,
    region: &Region<'_>,
    base: u64,
    presence: &mut Presence<'_>,
    mut progress: impl FnMut(u64),
) -> io::Result<()> {
    let bytes = region.bytes;
    let pages = page_count(bytes.len());
    let mut run: Option<usize> = None; // start offset of the pending run of non-zero pages
    let flush = |start: usize, end: usize| file.write_all_at(&bytes[start..end], base + start as u64);
    let mut first = 0;
    while first < pages {
        let n = (pages - first).min(BATCH_PAGES);
        let maybe = presence.fill(region, first, n);
        for (i, &m) in maybe.iter().enumerate() {
            let range = page_range(first + i, bytes.len());
            let data = m && !kdump::diskdump::is_zero(&bytes[range.clone()]);
            match (data, run) {
                (true, None) => run = Some(range.start),
                (true, Some(start)) if range.end - start > MAX_RUN => {
                    flush(start, range.start)?;
                    run = Some(range.start);
                }
                (false, Some(start)) => {
                    flush(start, range.start)?;
                    run = None;
                }
                _ => {}
            }
        }
        first += n;
        progress((first * PAGE).min(bytes.len()) as u64);
    }
    if let Some(start) = run {
        flush(start, bytes.len())?;
    }
    // With a snapshot: the pages the guest wrote since, as they were (those it wrote before
    // they were read above are what this puts right).
    if let Some(s) = region.snapshot {
        for (off, page) in s.copied_pages(bytes.as_ptr().addr(), bytes.len()) {
            if presence.kept(region, off / PAGE) {
                file.write_all_at(&page[..PAGE.min(bytes.len() - off)], base + off as u64)?;
            }
        }
    }
    Ok(())
}

/// Writes the header, then every region's non-zero pages, then sets the file length.
fn write_file(
    file: &File,
    layout: &Layout,
    regions: &[Region<'_>],
    pagemap: Option<&Pagemap>,
    keep: Option<&Bitmap>,
    mut progress: impl FnMut(u64),
) -> io::Result<()> {
    file.write_all_at(&layout.header, 0)?;
    let mut presence = Presence::new(pagemap, keep);
    for (region, &off) in regions.iter().zip(&layout.offsets) {
        write_region(file, region, off, &mut presence, |done| progress(off + done))?;
    }
    file.set_len(layout.file_len)
}

pub(super) fn progress_bar(total: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("vmcore {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Writes a vmcore of `mem` with one NT_PRSTATUS per entry of `vcpus` to `path` (created or
/// truncated, mode 0600: it holds the guest's memory) in the format and at the dump level of
/// `opts.spec`, and `fsync`s it. The guest must be stopped.
pub fn write_vmcore(
    mem: &GuestMemoryMmap,
    vcpus: &[VcpuState],
    path: &Path,
    opts: &VmcoreOptions,
) -> Result<VmcoreSummary, VmcoreError> {
    write_vmcore_of(mem, None, vcpus, path, opts)
}

/// [`write_vmcore`] of the running guest's `snapshot` of `mem` (a live dump).
pub fn write_vmcore_of_snapshot(
    snapshot: &Snapshot<'_>,
    mem: &GuestMemoryMmap,
    vcpus: &[VcpuState],
    path: &Path,
    opts: &VmcoreOptions,
) -> Result<VmcoreSummary, VmcoreError> {
    write_vmcore_of(mem, Some(snapshot), vcpus, path, opts)
}

fn write_vmcore_of<'a>(
    mem: &'a GuestMemoryMmap,
    snapshot: Option<&'a Snapshot<'a>>,
    vcpus: &[VcpuState],
    path: &Path,
    opts: &VmcoreOptions,
) -> Result<VmcoreSummary, VmcoreError> {
    let started = Instant::now();
    let regions = host_regions(mem, snapshot)?;
    let pagemap = Pagemap::open();
    let pagemap = pagemap.as_ref();
    let vmcoreinfo = find_in(&regions, pagemap);
    match opts.spec.format {
        VmcoreFormat::Kdump => super::diskdump::write(&regions, pagemap, vcpus, vmcoreinfo, path, opts, started),
        VmcoreFormat::Elf => {
            // Zero pages are holes anyway; other levels need the classification.
            let filter = opts.spec.dump_level & !kdump::classify::DL_ZERO != 0;
            let classification = filter
                .then(|| super::diskdump::classify(&regions, vmcoreinfo.as_ref(), opts.spec.dump_level))
                .transpose()
                .map_err(|source| VmcoreError::Kdump { path: path.to_path_buf(), source })?;
            write_elf(&regions, pagemap, vcpus, vmcoreinfo, classification, path, opts, started)
        }
    }
}

/// The ELF vmcore: all-zero pages and the pages `classification` excludes become holes.
#[allow(clippy::too_many_arguments)]
fn write_elf(
    regions: &[Region<'_>],
    pagemap: Option<&Pagemap>,
    vcpus: &[VcpuState],
    vmcoreinfo: Option<VmcoreInfoNote>,
    classification: Option<kdump::classify::Classification>,
    path: &Path,
    opts: &VmcoreOptions,
    started: Instant,
) -> Result<VmcoreSummary, VmcoreError> {
    let write_err = |source| VmcoreError::Write { path: path.to_path_buf(), source };
    let keep = classification.as_ref().map(|c| &c.dumpable);
    let scanned = started.elapsed();
    let layout = build_layout(regions, vcpus, vmcoreinfo.as_ref())?;

    let file = crate::files::create_private(path)
        .map_err(|source| VmcoreError::Create { path: path.to_path_buf(), source })?;

    let bar = progress_bar(layout.file_len, opts.progress);
    let hashed = AtomicU64::new(0);
    let cancel = AtomicBool::new(false);
    let (digest, written) = std::thread::scope(|scope| {
        let hasher = opts.sha256.then(|| {
            std::thread::Builder::new()
                .name("vmcore-sha256".into())
                .spawn_scoped(scope, || match crate::seccomp::apply(crate::seccomp::ThreadKind::VmcoreHasher) {
                    Ok(()) => hash_file(&layout, regions, pagemap, keep, &hashed, &cancel),
                    Err(e) => {
                        log::error!("vmcore: {}", crate::error::Chain(&e));
                        None
                    }
                })
                .map_err(|e| log::debug!("vmcore: no hashing thread ({e}), hashing after writing"))
        });
        let written = write_file(&file, &layout, regions, pagemap, keep, |pos| {
            // With the hash, the bar shows the slower of the two threads.
            bar.set_position(if opts.sha256 { pos.min(hashed.load(Ordering::Relaxed)) } else { pos });
            if let Some(report) = opts.on_progress {
                report(pos, layout.file_len);
            }
        });
        if written.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        let digest = match hasher {
            None => Ok(None),
            Some(Ok(h)) => {
                while opts.progress && !h.is_finished() {
                    bar.set_position(hashed.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(5));
                }
                h.join().map_err(|_| VmcoreError::Hasher).map(Some)
            }
            Some(Err(())) => Ok(Some(hash_file(&layout, regions, pagemap, keep, &hashed, &cancel))),
        };
        (digest, written)
    });
    written.map_err(write_err)?;
    let digest = match digest? {
        None => None,
        Some(d) => Some(d.ok_or(VmcoreError::Hasher)?),
    };
    let wrote = started.elapsed();
    bar.set_position(layout.file_len);

    file.sync_all().map_err(|source| VmcoreError::Sync { path: path.to_path_buf(), source })?;
    let meta = file.metadata().map_err(write_err)?;
    bar.finish_and_clear();
    let duration = started.elapsed();
    log::debug!(
        "vmcore {}: {} bytes ({} allocated); scan {:?}, write+hash {:?}, fsync {:?}",
        path.display(),
        meta.len(),
        meta.blocks().saturating_mul(512),
        scanned,
        wrote.saturating_sub(scanned),
        duration.saturating_sub(wrote)
    );
    Ok(VmcoreSummary {
        path: path.to_path_buf(),
        bytes: meta.len(),
        allocated_bytes: meta.blocks().saturating_mul(512),
        sha256: digest.map(hex::encode),
        duration,
        vmcoreinfo,
        spec: opts.spec,
        filter: classification.map(|c| FilterSummary::Elf(Box::new(c.report))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::{header, program_header, Elf};
    use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MmapRegion};

    const LOW: u64 = 8 << 20;
    const HIGH_BASE: u64 = 4 << 30;
    const HIGH: u64 = 4 << 20;
    const VMCOREINFO_TEXT: &str = "OSRELEASE=6.1.0-test\nPAGESIZE=4096\nSYMBOL(init_uts_ns)=ffffffff82a13400\nNUMBER(phys_base)=0\nKERNELOFFSET=0\n";

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LOW as usize), (GuestAddress(HIGH_BASE), HIGH as usize)])
            .unwrap()
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

    fn plant_vmcoreinfo(mem: &GuestMemoryMmap, gpa: u64, text: &str) {
        let note = note_bytes(11, text.len() as u32, 0, b"VMCOREINFO\0", text.as_bytes());
        mem.write_slice(&note, GuestAddress(gpa)).unwrap();
    }

    fn vcpu(id: u32) -> VcpuState {
        let mut v = VcpuState { id, ..Default::default() };
        v.regs.rip = 0xffff_ffff_8100_0000 + u64::from(id) * 0x10;
        v.regs.rsp = 0xffff_c900_0000_8000 + u64::from(id) * 0x1000;
        v.regs.rax = 0x1111 * u64::from(id + 1);
        v.regs.r15 = 0xf15;
        v.regs.rflags = 0x246;
        v.sregs.cs.selector = 0x10;
        v.sregs.ss.selector = 0x18;
        v.sregs.gs.base = 0xffff_8880_7fc0_0000 + u64::from(id);
        v.sregs.cr3 = 0x1234_5000;
        v.sregs.cs.type_ = 0xb;
        v.sregs.cs.s = 1;
        v.sregs.cs.present = 1;
        v.sregs.cs.l = 1;
        v.sregs.cs.g = 1;
        v
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// Non-zero data in both regions, a VMCOREINFO note, a marker, a page written then zeroed.
    fn populated() -> GuestMemoryMmap {
        let mem = two_regions();
        let pattern: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8 + 1).collect();
        mem.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"CRASHVMM-MARKER-LOW", GuestAddress(0x7f_f000 + 123)).unwrap();
        mem.write_slice(b"CRASHVMM-MARKER-HIGH", GuestAddress(HIGH_BASE + 0x20_0000 + 4000)).unwrap();
        // The very last byte of memory, and a touched page that holds only zeros.
        mem.write_obj(0xa5u8, GuestAddress(HIGH_BASE + HIGH - 1)).unwrap();
        mem.write_slice(&[0u8; PAGE], GuestAddress(0x10_0000)).unwrap();
        plant_vmcoreinfo(&mem, 0x30_0000, VMCOREINFO_TEXT);
        mem
    }

    #[test]
    fn vmcore_is_a_valid_elf_core_of_guest_memory() {
        let mem = populated();
        let vcpus = [vcpu(0), vcpu(1), vcpu(2)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmcore");
        let summary = write_vmcore(
            &mem,
            &vcpus,
            &path,
            &VmcoreOptions { spec: DumpSpec::ELF_ALL, sha256: true, ..Default::default() },
        )
        .unwrap();
        let data = std::fs::read(&path).unwrap();

        assert_eq!(summary.path, path);
        assert_eq!(summary.bytes, data.len() as u64);
        assert_eq!(summary.sha256, Some(sha256_hex(&data)));
        assert!(summary.bytes <= required_bytes(&mem));
        let info = summary.vmcoreinfo.clone().unwrap();
        assert_eq!(info.gpa, 0x30_0000);
        assert_eq!(info.text, VMCOREINFO_TEXT);

        let elf = Elf::parse(&data).unwrap();
        assert_eq!(elf.header.e_type, header::ET_CORE);
        assert_eq!(elf.header.e_machine, header::EM_X86_64);
        assert!(elf.is_64 && elf.little_endian);
        let phdrs = &elf.program_headers;
        assert_eq!(phdrs.len(), 3);
        assert_eq!(phdrs[0].p_type, program_header::PT_NOTE);
        let loads: Vec<_> = phdrs[1..].iter().collect();
        let expected = [(0u64, LOW), (HIGH_BASE, HIGH)];
        for (ph, &(gpa, len)) in loads.iter().zip(&expected) {
            assert_eq!(ph.p_type, program_header::PT_LOAD);
            assert_eq!(ph.p_paddr, gpa);
            assert_eq!(ph.p_vaddr, 0);
            assert_eq!(ph.p_filesz, len);
            assert_eq!(ph.p_memsz, len);
            assert_eq!(ph.p_offset % PAGE as u64, 0);
            // The segment's bytes are the guest's memory.
            let mut guest = vec![0u8; len as usize];
            mem.read_slice(&mut guest, GuestAddress(gpa)).unwrap();
            let off = ph.p_offset as usize;
            assert!(data[off..off + len as usize] == guest[..], "segment at {gpa:#x}");
        }
        let low = &data[loads[0].p_offset as usize..];
        assert_eq!(&low[0x7f_f000 + 123..][..19], b"CRASHVMM-MARKER-LOW");
        let high = &data[loads[1].p_offset as usize..];
        assert_eq!(&high[0x20_0000 + 4000..][..20], b"CRASHVMM-MARKER-HIGH");
        assert_eq!(data.last(), Some(&0xa5));

        // Notes: NT_PRSTATUS per vCPU, QEMU CPU state per vCPU, VMCOREINFO.
        let notes: Vec<_> = elf.iter_note_headers(&data).unwrap().collect::<Result<_, _>>().unwrap();
        let prstatus: Vec<_> = notes.iter().filter(|n| n.name == "CORE" && n.n_type == NT_PRSTATUS).collect();
        assert_eq!(prstatus.len(), vcpus.len());
        for (n, v) in prstatus.iter().zip(&vcpus) {
            assert_eq!(n.desc.len(), PRSTATUS_SIZE);
            assert_eq!(&n.desc[32..36], &(v.id + 1).to_le_bytes());
            let reg = |i: usize| u64_at(n.desc, PRSTATUS_REGS + 8 * i);
            assert_eq!(reg(0), 0xf15); // r15
            assert_eq!(reg(10), v.regs.rax);
            assert_eq!(reg(16), v.regs.rip);
            assert_eq!(reg(17), 0x10); // cs
            assert_eq!(reg(18), 0x246); // eflags
            assert_eq!(reg(19), v.regs.rsp);
            assert_eq!(reg(20), 0x18); // ss
            assert_eq!(reg(22), v.sregs.gs.base);
        }
        let qemu: Vec<_> = notes.iter().filter(|n| n.name == "QEMU").collect();
        assert_eq!(qemu.len(), vcpus.len());
        for (n, v) in qemu.iter().zip(&vcpus) {
            assert_eq!(n.desc.len(), QEMU_CPU_STATE_SIZE);
            assert_eq!(u64_at(n.desc, 8 + 16 * 8), v.regs.rip);
            assert_eq!(u64_at(n.desc, 8 + 144 + 240 + 3 * 8), 0x1234_5000); // cr3
                                                                            // cs flags: type 0xb, S, P, L, G
            let cs_flags = u32::from_le_bytes(n.desc[152 + 8..152 + 12].try_into().unwrap());
            assert_eq!(cs_flags, 0x00a0_9b00);
        }
        let vmci: Vec<_> = notes.iter().filter(|n| n.name == "VMCOREINFO").collect();
        assert_eq!(vmci.len(), 1);
        assert_eq!(vmci[0].n_type, 0);
        assert_eq!(vmci[0].desc, VMCOREINFO_TEXT.as_bytes());

        // Mostly zero memory: a sparse file.
        assert!(
            summary.allocated_bytes < summary.bytes / 8,
            "allocated {} of {}",
            summary.allocated_bytes,
            summary.bytes
        );
    }

    #[test]
    fn non_anonymous_memory_is_dumped_without_pagemap() {
        // A shared mapping: "not present" says nothing about its contents, so every page is
        // read (and zero pages still become holes).
        let size = 2 << 20;
        let region =
            MmapRegion::build(None, size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_ANONYMOUS | libc::MAP_SHARED)
                .unwrap();
        let region = GuestRegionMmap::new(region, GuestAddress(0x10_0000)).unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        assert!(!host_regions(&mem, None).unwrap()[0].pagemap_ok);
        assert!(host_regions(&two_regions(), None).unwrap()[0].pagemap_ok);
        mem.write_slice(b"shared", GuestAddress(0x18_0000)).unwrap();
        plant_vmcoreinfo(&mem, 0x1f_f000, VMCOREINFO_TEXT);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmcore");
        let s = write_vmcore(
            &mem,
            &[vcpu(0)],
            &path,
            &VmcoreOptions { spec: DumpSpec::ELF_ALL, progress: true, on_progress: None, sha256: true },
        )
        .unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(s.sha256, Some(sha256_hex(&data)));
        assert_eq!(s.vmcoreinfo.unwrap().gpa, 0x1f_f000);
        let elf = Elf::parse(&data).unwrap();
        let ph = &elf.program_headers[1];
        assert_eq!((ph.p_paddr, ph.p_filesz), (0x10_0000, size as u64));
        assert_eq!(&data[ph.p_offset as usize + 0x8_0000..][..6], b"shared");
        assert!(s.allocated_bytes < s.bytes / 4);
    }

    #[test]
    fn odd_sized_regions_and_no_vcpus() {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xa0000 - 100), (GuestAddress(0xc0000), 3 * PAGE + 17)])
                .unwrap();
        mem.write_obj(0x5au8, GuestAddress(0xa0000 - 101)).unwrap();
        mem.write_obj(0x77u8, GuestAddress(0xc0000 + 3 * PAGE as u64 + 16)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmcore");
        let s =
            write_vmcore(&mem, &[], &path, &VmcoreOptions { spec: DumpSpec::ELF_ALL, ..Default::default() }).unwrap();
        assert_eq!(s.sha256, None, "only when asked for");
        let data = std::fs::read(&path).unwrap();
        let s2 = write_vmcore(
            &mem,
            &[],
            &path,
            &VmcoreOptions { spec: DumpSpec::ELF_ALL, sha256: true, ..Default::default() },
        )
        .unwrap();
        assert_eq!(s2.sha256, Some(sha256_hex(&data)), "and then of the same bytes");
        assert!(s.vmcoreinfo.is_none());
        let elf = Elf::parse(&data).unwrap();
        assert_eq!(elf.program_headers.len(), 3);
        assert_eq!(elf.program_headers[0].p_filesz, 0);
        let (a, b) = (&elf.program_headers[1], &elf.program_headers[2]);
        assert_eq!(data[a.p_offset as usize + 0xa0000 - 101], 0x5a);
        assert_eq!(b.p_offset % PAGE as u64, 0);
        assert_eq!(b.p_filesz, 3 * PAGE as u64 + 17);
        assert_eq!(data.len() as u64, b.p_offset + b.p_filesz);
        assert_eq!(data.last(), Some(&0x77));
    }

    #[test]
    fn finds_a_planted_vmcoreinfo_note() {
        let mem = two_regions();
        assert_eq!(find_vmcoreinfo(&mem), None);
        plant_vmcoreinfo(&mem, HIGH_BASE + 0x1000, VMCOREINFO_TEXT);
        let found = find_vmcoreinfo(&mem).unwrap();
        assert_eq!(found.gpa, HIGH_BASE + 0x1000);
        assert_eq!(found.text, VMCOREINFO_TEXT);
        // The lowest GPA wins.
        plant_vmcoreinfo(&mem, 0x5000, "OSRELEASE=first\n");
        assert_eq!(find_vmcoreinfo(&mem).unwrap().gpa, 0x5000);
        assert_eq!(find_vmcoreinfo(&mem).unwrap().text, "OSRELEASE=first\n");
    }

    #[test]
    fn rejects_bogus_vmcoreinfo_headers() {
        let text = VMCOREINFO_TEXT.as_bytes();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("descsz too big", note_bytes(11, 4097, 0, b"VMCOREINFO\0", text)),
            ("descsz zero", note_bytes(11, 0, 0, b"VMCOREINFO\0", text)),
            ("no OSRELEASE=", note_bytes(11, 20, 0, b"VMCOREINFO\0", b"PAGESIZE=4096\nABCDEF")),
            ("wrong namesz", note_bytes(12, text.len() as u32, 0, b"VMCOREINFO\0", text)),
            ("wrong type", note_bytes(11, text.len() as u32, 1, b"VMCOREINFO\0", text)),
            ("wrong name", note_bytes(11, text.len() as u32, 0, b"VMCOREINFX\0", text)),
        ];
        for (what, note) in cases {
            let mem = two_regions();
            mem.write_slice(&note, GuestAddress(0x2000)).unwrap();
            assert_eq!(find_vmcoreinfo(&mem), None, "{what}");
        }
        // Not at a page boundary.
        let mem = two_regions();
        plant_vmcoreinfo(&mem, 0x2008, VMCOREINFO_TEXT);
        assert_eq!(find_vmcoreinfo(&mem), None);
        // Running off the end of guest memory.
        let mem = two_regions();
        let note = note_bytes(11, 4096, 0, b"VMCOREINFO\0", b"OSRELEASE=x");
        mem.write_slice(&note, GuestAddress(HIGH_BASE + HIGH - PAGE as u64)).unwrap();
        assert_eq!(find_vmcoreinfo(&mem), None);
        // Not UTF-8.
        let mem = two_regions();
        let note = note_bytes(11, 12, 0, b"VMCOREINFO\0", b"OSRELEASE=\xff\xfe");
        mem.write_slice(&note, GuestAddress(0x2000)).unwrap();
        assert_eq!(find_vmcoreinfo(&mem), None);
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let mem = two_regions();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/vmcore");
        let err = write_vmcore(&mem, &[vcpu(0)], &missing, &VmcoreOptions::default());
        assert!(matches!(err, Err(VmcoreError::Create { .. })), "{err:?}");
        // A directory is not a file either.
        let err = write_vmcore(&mem, &[vcpu(0)], dir.path(), &VmcoreOptions::default());
        assert!(matches!(err, Err(VmcoreError::Create { .. })), "{err:?}");
        assert!(err.unwrap_err().to_string().contains("cannot create vmcore"));
    }

    /// A live dump's snapshot: the guest's writes after it (data rewritten, a data page zeroed,
    /// a never-touched page and the VMCOREINFO note written) are not in either format's file.
    #[test]
    fn a_snapshot_is_written_as_it_was_when_taken() {
        let mem = populated();
        // Read from a copy: reading `mem` would map the zero page on its untouched pages.
        let reference = populated();
        let before: Vec<(u64, Vec<u8>)> = reference
            .iter()
            .map(|r| {
                let mut b = vec![0u8; r.len() as usize];
                reference.read_slice(&mut b, r.start_addr()).unwrap();
                (r.start_addr().0, b)
            })
            .collect();
        let mut snapshot = match Snapshot::new(&mem) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        snapshot.protect().unwrap();
        // The copier thread saves each page before this thread's write goes on.
        mem.write_slice(&[0xee; PAGE], GuestAddress(0x2000)).unwrap();
        mem.write_slice(&[0u8; PAGE], GuestAddress(0x7f_f000)).unwrap();
        mem.write_slice(b"WRITTEN-AFTER", GuestAddress(0x50_0000)).unwrap();
        mem.write_slice(b"OSRELEASE=9.9", GuestAddress(0x30_0000 + 24)).unwrap();
        mem.write_obj(0u8, GuestAddress(HIGH_BASE + HIGH - 1)).unwrap();
        // 0x50_0000 held no data at the snapshot: not protected, not copied, zero in the files.
        assert_eq!(snapshot.copied_bytes(), 4 * PAGE as u64);
        let dir = tempfile::tempdir().unwrap();
        let vcpus = [vcpu(0)];

        let path = dir.path().join("elf");
        let opts = VmcoreOptions { spec: DumpSpec::ELF_ALL, sha256: true, ..Default::default() };
        let summary = write_vmcore_of_snapshot(&snapshot, &mem, &vcpus, &path, &opts).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(summary.sha256, Some(sha256_hex(&data)));
        assert_eq!(summary.vmcoreinfo.unwrap().text, VMCOREINFO_TEXT);
        let elf = Elf::parse(&data).unwrap();
        let loads: Vec<_> = elf.program_headers.iter().filter(|p| p.p_type == program_header::PT_LOAD).collect();
        assert_eq!(loads.len(), before.len());
        for (p, (gpa, bytes)) in loads.iter().zip(&before) {
            assert_eq!(p.p_paddr, *gpa);
            let file = &data[p.p_offset as usize..(p.p_offset + p.p_filesz) as usize];
            assert!(file == &bytes[..], "the region at {gpa:#x} as it was at the snapshot");
        }

        let path = dir.path().join("kdump");
        let opts = VmcoreOptions { spec: DumpSpec { dump_level: 0, ..DumpSpec::default() }, ..Default::default() };
        write_vmcore_of_snapshot(&snapshot, &mem, &vcpus, &path, &opts).unwrap();
        let mut f = File::open(&path).unwrap();
        let k = kdump::diskdump::KdumpFile::parse(&mut f).unwrap();
        assert_eq!(k.vmcoreinfo.as_deref(), Some(VMCOREINFO_TEXT));
        for gpa in [0x2000u64, 0x7f_f000, 0x50_0000, 0x30_0000, HIGH_BASE + HIGH - PAGE as u64] {
            let (base, bytes) = before.iter().rev().find(|(b, _)| *b <= gpa).unwrap();
            let off = (gpa - base) as usize;
            let page = k.read_page(&mut f, gpa / PAGE as u64).unwrap().unwrap();
            assert!(page == bytes[off..off + PAGE], "page {gpa:#x} as it was at the snapshot");
        }
    }

    #[test]
    fn the_default_vmcore_is_a_kdump_file_with_the_guests_pages_and_notes() {
        let mem = populated();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmcore");
        let s = write_vmcore(&mem, &[vcpu(0), vcpu(1)], &path, &VmcoreOptions { sha256: true, ..Default::default() })
            .unwrap();
        assert_eq!(s.spec, DumpSpec::default());
        let mut f = File::open(&path).unwrap();
        let k = kdump::diskdump::KdumpFile::parse(&mut f).unwrap();
        assert_eq!(k.nr_cpus, 2);
        assert_eq!(k.vmcoreinfo.as_deref(), Some(VMCOREINFO_TEXT));
        // Bytes of the guest, page by page; zero pages are not stored.
        let pattern: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8 + 1).collect();
        for i in 0..3 {
            let page = k.read_page(&mut f, 1 + i as u64).unwrap().unwrap();
            assert_eq!(page, pattern[i * PAGE..(i + 1) * PAGE]);
        }
        let high = k.read_page(&mut f, (HIGH_BASE + 0x20_0000) / PAGE as u64).unwrap().unwrap();
        assert_eq!(&high[4000..4020], b"CRASHVMM-MARKER-HIGH");
        // A zero page shares the one zero page's data, as in makedumpfile's files.
        assert_eq!(k.read_page(&mut f, 0x10_0000 / PAGE as u64).unwrap().unwrap(), vec![0; PAGE]);
        // No struct pages here: only the zero-page level could be applied, and the report says so.
        let Some(FilterSummary::Kdump(summary)) = &s.filter else { panic!("{:?}", s.filter) };
        assert_eq!((summary.requested_level, summary.effective_level), (31, 1));
        assert!(summary.excluded_zero > 0 && summary.data_pages < summary.written_pages);
        assert_eq!(s.sha256, Some(sha256_hex(&std::fs::read(&path).unwrap())));
    }

    #[test]
    fn a_failing_write_is_an_error() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let mem = populated();
        let err =
            write_vmcore(&mem, &[vcpu(0)], full, &VmcoreOptions { spec: DumpSpec::ELF_ALL, ..Default::default() });
        match err {
            Err(VmcoreError::Write { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
            }
            other => panic!("expected a write error, got {other:?}"),
        }
        // The kdump format too.
        let err = write_vmcore(&mem, &[vcpu(0)], full, &VmcoreOptions::default()).unwrap_err();
        assert!(crate::error::chain(&err).contains("No space left on device"), "{err:?}");
    }

    #[test]
    fn required_bytes_bounds_the_file() {
        let mem = two_regions();
        let need = required_bytes(&mem);
        assert!(need >= LOW + HIGH);
        assert!(need < LOW + HIGH + (8 << 20));
    }

    #[test]
    fn pagemap_tells_touched_pages_from_untouched_ones() {
        let Some(pagemap) = Pagemap::open() else {
            eprintln!("no usable /proc/self/pagemap here: every page is read");
            return;
        };
        let mem = two_regions();
        mem.write_obj(1u8, GuestAddress(5 * PAGE as u64 + 7)).unwrap();
        let regions = host_regions(&mem, None).unwrap();
        let mut presence = Presence::new(Some(&pagemap), None);
        let maybe = presence.fill(&regions[0], 0, 16).to_vec();
        assert!(maybe[5]);
        assert_eq!(maybe.iter().filter(|&&m| m).count(), 1, "{maybe:?}");
        // Without a pagemap every page may hold data.
        let mut blind = Presence::new(None, None);
        assert!(blind.fill(&regions[0], 0, 16).iter().all(|&m| m));
    }

    #[test]
    fn data_pages_marks_the_touched_pages_by_guest_pfn() {
        let mem = two_regions();
        let high_pfn = HIGH_BASE / PAGE as u64;
        mem.write_obj(1u8, GuestAddress(5 * PAGE as u64 + 7)).unwrap();
        mem.write_obj(2u8, GuestAddress(HIGH_BASE + 3 * PAGE as u64)).unwrap();
        let regions = host_regions(&mem, None).unwrap();
        let pfns = high_pfn + HIGH / PAGE as u64;
        assert!(data_pages(&regions, None, pfns).is_none(), "no pagemap: every page must be read");
        let Some(pagemap) = Pagemap::open() else {
            eprintln!("no usable /proc/self/pagemap here");
            return;
        };
        let bits = data_pages(&regions, Some(&pagemap), pfns).unwrap();
        assert_eq!(bits.len(), pfns);
        assert!(bits.get(5) && bits.get(high_pfn + 3));
        assert_eq!(bits.count(), 2, "{:?}", bits.iter_ones().collect::<Vec<_>>());
    }

    #[test]
    fn prstatus_layout_matches_the_kernel() {
        let v = vcpu(4);
        let d = prstatus(&v);
        assert_eq!(d.len(), PRSTATUS_SIZE);
        assert_eq!(u32::from_le_bytes(d[32..36].try_into().unwrap()), 5);
        // user_regs_struct order: ... rip(16) cs(17) eflags(18) rsp(19) ss(20) fs_base gs_base
        assert_eq!(u64_at(&d, 112 + 16 * 8), v.regs.rip);
        assert_eq!(u64_at(&d, 112 + 19 * 8), v.regs.rsp);
        assert_eq!(u64_at(&d, 112 + 15 * 8), 0); // orig_rax
        assert_eq!(&d[328..], &[0u8; 8]); // pr_fpvalid + padding
        assert_eq!(qemu_cpu_state(&v).len(), QEMU_CPU_STATE_SIZE);
    }
}
