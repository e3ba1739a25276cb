//! Host-side vmcore of the guest's physical memory, readable by `crash` and `makedumpfile`, in
//! one of two formats ([`VmcoreFormat`]): the kdump-compressed file makedumpfile writes (the
//! default; `diskdump.rs`, through `kdump::diskdump`) or an ELF64 core file in the shape of
//! QEMU's `dump-guest-memory` (non-paging) output (`kdump::elfcore`). Either way the pages the
//! dump level excludes (`--dump-level`, makedumpfile's classes: zero, cache, private cache,
//! user, free, decided from the guest's VMCOREINFO and struct pages) are left out: holes in an
//! ELF.
//!
//! The formats are encoded in the sans-IO `kdump` crate; this module is the policy and I/O
//! around them: the host mappings of guest RAM ([`host_regions`]), `/proc/self/pagemap`, the
//! scan of guest RAM for the VMCOREINFO note, the file, the hasher thread, progress bars.
//!
//! The guest's VMCOREINFO note (what makedumpfile needs) is found by scanning guest RAM at page
//! boundaries for the note header Linux builds (guest-protocol §8.3;
//! `kdump::vmcoreinfo::parse_note`).
//!
//! Writing: all-zero pages become holes (the file is sparse), runs of non-zero pages go to the
//! file with one `pwrite` each (`kdump::elfcore::write_elf`, reading guest RAM through
//! [`RegionMem`], snapshot-aware), and a second thread computes the SHA-256 of the file as a
//! reader sees it (holes included) from the guest mapping. For private anonymous guest RAM,
//! `/proc/self/pagemap` tells which pages were never touched: those are zero without being read
//! (no page faults, no memory traffic).
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
use kdump::elfcore::{CpuState, ElfCoreError, ElfLayout, ElfWriteOptions};
use kdump::vmcoreinfo::{NOTE_HEADER, VMCOREINFO_BYTES};
use kdump::{KdumpError, RamRange};
use serde::Serialize;
use sha2::{Digest, Sha256};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use super::diskdump::RegionMem;
use super::snapshot::Snapshot;
pub use crate::vcpu_state::VcpuState;

/// Guest page size (x86_64), the granularity of holes and of the VMCOREINFO scan.
const PAGE: usize = 4096;
/// Pages handled per step (pagemap read, VMCOREINFO scan, hashing): 8 MiB.
const BATCH_PAGES: usize = 2048;
/// A zero page run for the hasher: what holes read as.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

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

impl VmcoreInfoNote {
    /// The text's entries, parsed.
    pub fn info(&self) -> kdump::VmcoreInfo {
        kdump::VmcoreInfo::parse(&self.text)
    }
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

fn scan_region(region: &Region<'_>, presence: &mut Presence<'_>) -> Option<VmcoreInfoNote> {
    let bytes = region.bytes;
    let pages = page_count(bytes.len());
    let mut first = 0;
    while first < pages {
        let n = (pages - first).min(BATCH_PAGES);
        let maybe = presence.fill(region, first, n);
        for (i, _) in maybe.iter().enumerate().filter(|(_, &m)| m) {
            let off = (first + i) * PAGE;
            if !bytes.get(off..).is_some_and(kdump::vmcoreinfo::may_start_note) {
                continue;
            }
            let found = match region.snapshot {
                None => kdump::vmcoreinfo::parse_note(&bytes[off..]),
                // Parsed again from the snapshot's bytes.
                Some(_) => {
                    let end = (off + NOTE_HEADER + VMCOREINFO_BYTES).min(bytes.len());
                    let mut copy = vec![0; end - off];
                    region.read_into(off, &mut copy);
                    kdump::vmcoreinfo::parse_note(&copy)
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

/// The register state of `vcpus` for the notes.
pub(super) fn cpu_states(vcpus: &[VcpuState]) -> Vec<CpuState> {
    vcpus.iter().map(VcpuState::cpu_state).collect()
}

/// The guest RAM ranges of `regions`.
pub(super) fn ram(regions: &[Region<'_>]) -> Vec<RamRange> {
    regions.iter().map(|r| RamRange { start: r.gpa, len: r.bytes.len() as u64 }).collect()
}

/// The ELF layout of a vmcore of `regions` with `vcpus`' notes and the VMCOREINFO note.
fn build_layout(
    regions: &[Region<'_>],
    vcpus: &[VcpuState],
    vmcoreinfo: Option<&VmcoreInfoNote>,
) -> Result<ElfLayout, VmcoreError> {
    let notes = kdump::elfcore::notes(&cpu_states(vcpus), vmcoreinfo.map(|n| n.text.as_str()));
    ElfLayout::new(&ram(regions), &notes).map_err(|e| match e {
        ElfCoreError::TooManyRegions(n) => VmcoreError::TooManyRegions(n),
        ElfCoreError::Overflow => VmcoreError::Overflow,
    })
}

/// The largest file [`write_vmcore`] can produce for `mem` (with up to 4096 vCPUs and a
/// VMCOREINFO note), for a free-space check. The file is sparse, so it usually takes much less.
pub fn required_bytes(mem: &GuestMemoryMmap) -> u64 {
    let lens: Vec<u64> = mem.iter().map(|r| r.len()).collect();
    kdump::elfcore::required_bytes(&lens)
}

/// The most bytes a vmcore of `spec`'s format of `mem` with `vcpus` vCPUs can take on disk,
/// whatever the dump level and the data (an ELF core's excluded pages are holes; a kdump
/// file stores an incompressible page as it is): what `--crash-dir-max` sets against its
/// budget before the vmcore is written.
pub fn max_bytes(mem: &GuestMemoryMmap, vcpus: u32, spec: DumpSpec) -> u64 {
    let notes = kdump::elfcore::notes_bound(u64::from(vcpus));
    match spec.format {
        VmcoreFormat::Elf => {
            let lens: Vec<u64> = mem.iter().map(|r| r.len()).collect();
            kdump::elfcore::required_bytes_for(&lens, u64::from(vcpus))
        }
        VmcoreFormat::Kdump => {
            let end = mem.iter().map(|r| r.start_addr().0.saturating_add(r.len())).max().unwrap_or(0);
            let pages = mem.iter().map(|r| r.len().div_ceil(kdump::PAGE_SIZE)).sum();
            kdump::diskdump::required_bytes(notes, end.div_ceil(kdump::PAGE_SIZE), pages)
        }
    }
}

/// The SHA-256 of the file as laid out, read from the guest mapping (never-touched pages of
/// anonymous memory are hashed as zeros without being read). `done` is told how many bytes
/// are hashed; `None` when `cancel` was set.
fn hash_file(
    layout: &ElfLayout,
    regions: &[Region<'_>],
    pagemap: Option<&Pagemap>,
    keep: Option<&Bitmap>,
    done: &dyn Fn(u64),
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
    done(pos);
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
            done(off + ((first * PAGE).min(bytes.len())) as u64);
        }
        pos = off + bytes.len() as u64;
    }
    Some(hasher.finalize().into())
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
                .then(|| {
                    let info = vmcoreinfo.as_ref().map(VmcoreInfoNote::info);
                    super::diskdump::classify(&regions, info.as_ref(), opts.spec.dump_level)
                })
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
    // Pages the host never backed are zero: not read (a read would fault each one in).
    let pfns = layout.ranges.last().map_or(0, |r| r.end().div_ceil(kdump::PAGE_SIZE));
    let holds_data = data_pages(regions, pagemap, pfns);

    let file = crate::files::create_private(path)
        .map_err(|source| VmcoreError::Create { path: path.to_path_buf(), source })?;

    let bar = progress_bar(layout.file_len, opts.progress);
    let hashed = AtomicU64::new(0);
    let written_all = AtomicBool::new(false);
    // The hasher's progress: the bar shows the slower of the two threads, so once the pages
    // are written the hasher moves it on by itself.
    let on_hashed = |pos: u64| {
        hashed.store(pos, Ordering::Relaxed);
        if written_all.load(Ordering::Relaxed) {
            bar.set_position(pos);
        }
    };
    let cancel = AtomicBool::new(false);
    let (digest, written) = std::thread::scope(|scope| {
        let hasher = opts.sha256.then(|| {
            std::thread::Builder::new()
                .name(crate::seccomp::ThreadKind::VmcoreHasher.as_str().into())
                .spawn_scoped(scope, || match crate::seccomp::apply(crate::seccomp::ThreadKind::VmcoreHasher) {
                    Ok(()) => hash_file(&layout, regions, pagemap, keep, &on_hashed, &cancel),
                    Err(e) => {
                        log::error!("vmcore: {}", crate::error::Chain(&e));
                        None
                    }
                })
                .map_err(|e| log::debug!("vmcore: no hashing thread ({e}), hashing after writing"))
        });
        let mut progress = |pos: u64| {
            bar.set_position(if opts.sha256 { pos.min(hashed.load(Ordering::Relaxed)) } else { pos });
            if let Some(report) = opts.on_progress {
                report(pos, layout.file_len);
            }
        };
        let written = kdump::elfcore::write_elf(
            &file,
            &RegionMem::new(regions),
            &layout,
            ElfWriteOptions { keep, holds_data: holds_data.as_ref(), on_progress: Some(&mut progress) },
        );
        if written.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        written_all.store(true, Ordering::Relaxed);
        if opts.sha256 {
            bar.set_position(hashed.load(Ordering::Relaxed));
        }
        let digest = match hasher {
            None => Ok(None),
            Some(Ok(h)) => h.join().map_err(|_| VmcoreError::Hasher).map(Some),
            Some(Err(())) => Ok(Some(hash_file(&layout, regions, pagemap, keep, &on_hashed, &cancel))),
        };
        (digest, written)
    });
    written.map_err(|e| match e {
        KdumpError::Io(source) => write_err(source),
        source => VmcoreError::Kdump { path: path.to_path_buf(), source },
    })?;
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
    use kdump::elfcore::{NT_PRSTATUS, PRSTATUS_REGS, PRSTATUS_SIZE, QEMU_CPU_STATE_SIZE};
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

    /// The budget's bound, per format, for the vCPUs the guest has: above any file of either
    /// format (every page kept; the kdump file's pages stored as they are), below the bound for
    /// 4096 vCPUs.
    #[test]
    fn max_bytes_bounds_every_format() {
        let mem = populated();
        let vcpus = [vcpu(0), vcpu(1)];
        let dir = tempfile::tempdir().unwrap();
        let kdump = DumpSpec { format: VmcoreFormat::Kdump, dump_level: 0, compression: VmcoreCompression::None };
        for spec in [DumpSpec::ELF_ALL, kdump] {
            let path = dir.path().join(format!("vmcore-{}", spec.format.report_name()));
            let summary = write_vmcore(&mem, &vcpus, &path, &VmcoreOptions { spec, ..Default::default() }).unwrap();
            let bound = max_bytes(&mem, 2, spec);
            assert!(summary.bytes <= bound, "{spec:?}: {} > {bound}", summary.bytes);
            assert!(bound < required_bytes(&mem) + (1 << 20), "{spec:?}: {bound}");
        }
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
}
