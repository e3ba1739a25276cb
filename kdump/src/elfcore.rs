//! Writing an ELF64 core file of guest physical memory in the shape of QEMU's
//! `dump-guest-memory` (non-paging) output: crashvmm's `--vmcore-format elf`.
//!
//! ```text
//! offset 0      Elf64_Ehdr (ET_CORE, EM_X86_64)
//!        64     Elf64_Phdr PT_NOTE, then one PT_LOAD per guest RAM range (p_paddr = GPA)
//!               notes: NT_PRSTATUS "CORE" per vCPU, "QEMU" CPU state per vCPU, "VMCOREINFO"
//!        page   range 0 bytes, range 1 bytes (each at a page-aligned offset) ...
//! ```
//!
//! As QEMU does without paging, `p_vaddr` is 0 in every program header: we know no virtual
//! mapping, and 0 is the value makedumpfile and crash treat as "no kernel virtual address" (they
//! find the kernel through VMCOREINFO's `KERNELOFFSET`, `phys_base` and `init_top_pgt`, or
//! crash through the QEMU notes' CR3/IDTR). `p_align` is 0 too, as in QEMU's output and the
//! kernel's `/proc/vmcore`: crash takes an ELF core whose first PT_LOAD has a page-aligned offset
//! and a non-zero `p_align` for an old netdump core and then ignores its VMCOREINFO.
//!
//! [`ElfLayout`] is the header (with the notes) and where each range's bytes go; [`write_elf`]
//! writes a file of that layout from a [`PhysMem`] to a [`WriteAt`] sink, leaving all-zero
//! pages and the pages a dump level excludes as holes. [`CpuState`] is the register state the
//! notes hold (what `KVM_GET_REGS`/`KVM_GET_SREGS` return, without a KVM dependency).

use crate::classify::Bitmap;
use crate::diskdump::is_zero;
use crate::vmcoreinfo::{NOTE_HEADER, VMCOREINFO_BYTES, VMCOREINFO_NOTE_NAME};
use crate::{KdumpError, PhysMem, RamRange, WriteAt, PAGE_SIZE};

/// Guest page size as a `usize`: the granularity of holes.
const PAGE: usize = PAGE_SIZE as usize;
/// Pages handled per progress report: 8 MiB.
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
/// The note type of a `struct elf_prstatus`.
pub const NT_PRSTATUS: u32 = 1;
/// ELF's `PN_XNUM`: more program headers than this need an extension we do not write.
const PN_XNUM: usize = 0xffff;

/// `sizeof(struct elf_prstatus)` on x86_64.
pub const PRSTATUS_SIZE: usize = 336;
/// `offsetof(struct elf_prstatus, pr_pid)`.
pub const PRSTATUS_PID: usize = 32;
/// `offsetof(struct elf_prstatus, pr_reg)`.
pub const PRSTATUS_REGS: usize = 112;
/// QEMU's `QEMUCPUState` version 1 without the optional trailing `kernel_gs_base` (we do not
/// have that MSR; readers check `size` for it).
pub const QEMU_CPU_STATE_SIZE: usize = 432;

/// vCPU count assumed by [`required_bytes`] for the notes (KVM's x86 maximum).
const MAX_VCPUS_FOR_ESTIMATE: u64 = 4096;

const PRSTATUS_NOTE_SIZE: usize = 12 + 8 + PRSTATUS_SIZE;
const QEMU_NOTE_SIZE: usize = 12 + 8 + QEMU_CPU_STATE_SIZE;
const VMCOREINFO_NOTE_MAX: usize = NOTE_HEADER + VMCOREINFO_BYTES;

/// A layout that cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ElfCoreError {
    #[error("{0} guest memory regions: too many program headers for an ELF core")]
    TooManyRegions(usize),
    #[error("vmcore layout overflows 64 bits")]
    Overflow,
}

/// The general-purpose registers (KVM's `kvm_regs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its descriptor's attributes (KVM's `kvm_segment`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
}

/// A descriptor table register (KVM's `kvm_dtable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescTable {
    pub base: u64,
    pub limit: u16,
}

/// The segment, descriptor table and control registers the notes hold (of KVM's `kvm_sregs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescTable,
    pub idt: DescTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
}

/// One vCPU's registers, for its NT_PRSTATUS and QEMU notes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuState {
    /// The vCPU index (`pr_pid` is `id + 1`, as QEMU writes it).
    pub id: u32,
    pub regs: Regs,
    pub sregs: SRegs,
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

/// Appends an ELF note (4-byte aligned name and descriptor); `name` includes its NUL.
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
pub fn prstatus(cpu: &CpuState) -> Vec<u8> {
    let r = &cpu.regs;
    let s = &cpu.sregs;
    let mut d = vec![0u8; PRSTATUS_REGS];
    d[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&cpu.id.wrapping_add(1).to_le_bytes());
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
fn put_qemu_segment(d: &mut Vec<u8>, seg: &Segment) {
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

fn put_qemu_dtable(d: &mut Vec<u8>, t: &DescTable) {
    put_u32(d, 0);
    put_u32(d, u32::from(t.limit));
    put_u32(d, 0);
    put_u32(d, 0);
    put_u64(d, t.base);
}

/// QEMU's `QEMUCPUState` (version 1), which crash uses for CR3/IDTR (KASLR detection without
/// VMCOREINFO) and register display.
pub fn qemu_cpu_state(cpu: &CpuState) -> Vec<u8> {
    let r = &cpu.regs;
    let s = &cpu.sregs;
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

/// The ELF notes of a vmcore: NT_PRSTATUS per vCPU, QEMU CPU state per vCPU, then the
/// VMCOREINFO note of `vmcoreinfo` (the text) if given.
pub fn notes(cpus: &[CpuState], vmcoreinfo: Option<&str>) -> Vec<u8> {
    let mut n = Vec::with_capacity(cpus.len() * (PRSTATUS_NOTE_SIZE + QEMU_NOTE_SIZE) + 4200);
    for c in cpus {
        put_note(&mut n, b"CORE\0", NT_PRSTATUS, &prstatus(c));
    }
    for c in cpus {
        put_note(&mut n, b"QEMU\0", 0, &qemu_cpu_state(c));
    }
    if let Some(text) = vmcoreinfo {
        put_note(&mut n, VMCOREINFO_NOTE_NAME, 0, text.as_bytes());
    }
    n
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? / align * align)
}

/// File offsets of ranges of `lens` bytes after `header_len` bytes (each page-aligned), and the
/// file length.
fn place(header_len: u64, lens: &[u64]) -> Result<(Vec<u64>, u64), ElfCoreError> {
    let mut offsets = Vec::with_capacity(lens.len());
    let mut end = header_len;
    for &len in lens {
        let off = align_up(end, PAGE_SIZE).ok_or(ElfCoreError::Overflow)?;
        offsets.push(off);
        end = off.checked_add(len).ok_or(ElfCoreError::Overflow)?;
    }
    Ok((offsets, end))
}

/// Where everything goes in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfLayout {
    /// ELF header, program headers and notes: the file's first bytes.
    pub header: Vec<u8>,
    /// The guest RAM ranges, one PT_LOAD each, in file order.
    pub ranges: Vec<RamRange>,
    /// File offset of each range's bytes (page-aligned), in `ranges` order.
    pub offsets: Vec<u64>,
    /// File length.
    pub file_len: u64,
}

impl ElfLayout {
    /// The layout of a core of `ranges` (ascending guest physical addresses) with `notes` (see
    /// [`notes`]) in its PT_NOTE.
    pub fn new(ranges: &[RamRange], notes: &[u8]) -> Result<Self, ElfCoreError> {
        if ranges.len() >= PN_XNUM - 1 {
            return Err(ElfCoreError::TooManyRegions(ranges.len()));
        }
        let phnum = ranges.len() + 1;
        let header_len = (EHDR_SIZE + PHDR_SIZE * phnum + notes.len()) as u64;
        let lens: Vec<u64> = ranges.iter().map(|r| r.len).collect();
        let (offsets, file_len) = place(header_len, &lens)?;

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
        for (r, &off) in ranges.iter().zip(&offsets) {
            put_u32(&mut h, PT_LOAD);
            put_u32(&mut h, PF_R | PF_W | PF_X);
            put_u64(&mut h, off);
            put_u64(&mut h, 0); // p_vaddr: unknown without paging, as QEMU writes it
            put_u64(&mut h, r.start); // p_paddr
            put_u64(&mut h, r.len);
            put_u64(&mut h, r.len);
            // p_align 0, as QEMU and the kernel's /proc/vmcore write it: crash takes an ELF core
            // with page-aligned offsets and a non-zero p_align for an old netdump core, not kdump.
            put_u64(&mut h, 0);
        }
        h.extend_from_slice(notes);
        Ok(Self { header: h, ranges: ranges.to_vec(), offsets, file_len })
    }
}

/// The largest ELF core of ranges of `lens` bytes (with up to 4096 vCPUs and a VMCOREINFO
/// note), for a free-space check; `u64::MAX` when it overflows.
pub fn required_bytes(lens: &[u64]) -> u64 {
    required_bytes_for(lens, MAX_VCPUS_FOR_ESTIMATE)
}

/// [`required_bytes`] for a guest of `vcpus` vCPUs.
pub fn required_bytes_for(lens: &[u64], vcpus: u64) -> u64 {
    let header = (EHDR_SIZE + PHDR_SIZE * (lens.len() + 1)) as u64 + notes_bound(vcpus);
    match place(header, lens) {
        Ok((_, len)) => len,
        Err(_) => u64::MAX,
    }
}

/// The most bytes of ELF notes a vmcore of `vcpus` vCPUs carries: NT_PRSTATUS and QEMU's CPU
/// state per vCPU, and the VMCOREINFO note.
pub fn notes_bound(vcpus: u64) -> u64 {
    vcpus.saturating_mul((PRSTATUS_NOTE_SIZE + QEMU_NOTE_SIZE) as u64).saturating_add(VMCOREINFO_NOTE_MAX as u64)
}

/// Which pages [`write_elf`] reads, and whom it tells how far it got.
#[derive(Default)]
pub struct ElfWriteOptions<'a> {
    /// A bit per guest PFN the dump level keeps; `None`: every page.
    pub keep: Option<&'a Bitmap>,
    /// A bit per guest PFN that may hold data; a clear bit is a page that reads as zero and is
    /// not read (`None`: every page is read).
    pub holds_data: Option<&'a Bitmap>,
    /// Called with the file offset reached, every 2048 pages and at the end of each range.
    pub on_progress: Option<&'a mut dyn FnMut(u64)>,
}

/// Writes the ELF core of `layout` from `mem` to `out`: the header, then each range's pages
/// that are kept, may hold data and are not all zero (one write per run of them, up to 16 MiB),
/// then the file length. Everything else is a hole.
pub fn write_elf<W: WriteAt, M: PhysMem + ?Sized>(
    mut out: W,
    mem: &M,
    layout: &ElfLayout,
    opts: ElfWriteOptions<'_>,
) -> Result<(), KdumpError> {
    let ElfWriteOptions { keep, holds_data, mut on_progress } = opts;
    out.write_all_at(&layout.header, 0)?;
    // The pending run of non-zero pages, as offsets in its range; its bytes are in `buf` unless
    // the memory lends the range in place (then they are written from there, not copied).
    let mut buf: Vec<u8> = Vec::new();
    for (range, &base) in layout.ranges.iter().zip(&layout.offsets) {
        let len = usize::try_from(range.len).map_err(|_| KdumpError::Overflow)?;
        let whole = mem.slice(range.start, len);
        let pages = len.div_ceil(PAGE);
        let first_pfn = range.start / PAGE_SIZE;
        let mut run: Option<(usize, usize)> = None;
        let mut flush = |run: &mut Option<(usize, usize)>, buf: &mut Vec<u8>| -> Result<(), KdumpError> {
            if let Some((start, end)) = run.take() {
                out.write_all_at(whole.map_or(&buf[..], |w| &w[start..end]), base + start as u64)?;
                buf.clear();
            }
            Ok(())
        };
        for page in 0..pages {
            let start = page * PAGE;
            let end = (start + PAGE).min(len);
            let pfn = first_pfn + page as u64;
            let wanted = keep.is_none_or(|k| k.get(pfn)) && holds_data.is_none_or(|h| h.get(pfn));
            if !wanted {
                flush(&mut run, &mut buf)?;
            } else {
                if run.is_some_and(|(s, _)| end - s > MAX_RUN) {
                    flush(&mut run, &mut buf)?;
                }
                let zero = match whole {
                    Some(w) => is_zero(&w[start..end]),
                    None => {
                        let at = buf.len();
                        buf.resize(at + (end - start), 0);
                        mem.read(range.start + start as u64, &mut buf[at..])?;
                        let zero = is_zero(&buf[at..]);
                        if zero {
                            buf.truncate(at);
                        }
                        zero
                    }
                };
                if zero {
                    flush(&mut run, &mut buf)?;
                } else {
                    run = Some((run.map_or(start, |(s, _)| s), end));
                }
            }
            if (page + 1) % BATCH_PAGES == 0 || page + 1 == pages {
                if let Some(report) = on_progress.as_mut() {
                    report(base + end as u64);
                }
            }
        }
        flush(&mut run, &mut buf)?;
    }
    out.set_len(layout.file_len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SliceMem;
    use goblin::elf::{header, program_header, Elf};

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn cpu(id: u32) -> CpuState {
        let mut v = CpuState { id, ..Default::default() };
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

    #[test]
    fn prstatus_layout_matches_the_kernel() {
        let v = cpu(4);
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

    const TEXT: &str = "OSRELEASE=6.1.0-test\nPAGESIZE=4096\n";

    /// Two ranges (the second not a page multiple) with data, zero pages and a marker.
    fn memory() -> (Vec<u8>, Vec<u8>) {
        let mut low = vec![0u8; 64 * PAGE];
        for (i, b) in low[PAGE..4 * PAGE].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        low[40 * PAGE + 7] = 0x40;
        let mut high = vec![0u8; 3 * PAGE + 17];
        high[3 * PAGE + 16] = 0x77;
        (low, high)
    }

    #[test]
    fn writes_a_valid_elf_core_with_holes() {
        let (low, high) = memory();
        let mem = SliceMem::new(vec![(0, &low), (0x1_0000_0000, &high)]);
        let cpus = [cpu(0), cpu(1), cpu(2)];
        let layout = ElfLayout::new(&mem.ranges(), &notes(&cpus, Some(TEXT))).unwrap();
        let mut file = Vec::new();
        let mut reports = Vec::new();
        let mut progress = |pos| reports.push(pos);
        write_elf(&mut file, &mem, &layout, ElfWriteOptions { on_progress: Some(&mut progress), ..Default::default() })
            .unwrap();
        assert_eq!(file.len() as u64, layout.file_len);
        assert!(file.len() as u64 <= required_bytes(&[low.len() as u64, high.len() as u64]));
        assert_eq!(
            reports,
            layout.offsets.iter().zip([&low, &high]).map(|(o, b)| o + b.len() as u64).collect::<Vec<_>>()
        );

        let elf = Elf::parse(&file).unwrap();
        assert_eq!(elf.header.e_type, header::ET_CORE);
        assert_eq!(elf.header.e_machine, header::EM_X86_64);
        let ph = &elf.program_headers;
        assert_eq!(ph.len(), 3);
        assert_eq!(ph[0].p_type, program_header::PT_NOTE);
        for (p, (gpa, bytes)) in ph[1..].iter().zip([(0u64, &low), (0x1_0000_0000, &high)]) {
            assert_eq!((p.p_type, p.p_paddr, p.p_vaddr, p.p_align), (program_header::PT_LOAD, gpa, 0, 0));
            assert_eq!((p.p_filesz, p.p_memsz), (bytes.len() as u64, bytes.len() as u64));
            assert_eq!(p.p_offset % PAGE_SIZE, 0);
            assert!(file[p.p_offset as usize..][..bytes.len()] == bytes[..], "range at {gpa:#x}");
        }
        assert_eq!(file.last(), Some(&0x77));

        let notes: Vec<_> = elf.iter_note_headers(&file).unwrap().collect::<Result<_, _>>().unwrap();
        let prs: Vec<_> = notes.iter().filter(|n| n.name == "CORE" && n.n_type == NT_PRSTATUS).collect();
        assert_eq!(prs.len(), cpus.len());
        for (n, v) in prs.iter().zip(&cpus) {
            assert_eq!(&n.desc[32..36], &(v.id + 1).to_le_bytes());
            let reg = |i: usize| u64_at(n.desc, PRSTATUS_REGS + 8 * i);
            assert_eq!((reg(0), reg(10), reg(16), reg(17)), (0xf15, v.regs.rax, v.regs.rip, 0x10));
            assert_eq!((reg(18), reg(19), reg(20), reg(22)), (0x246, v.regs.rsp, 0x18, v.sregs.gs.base));
        }
        let qemu: Vec<_> = notes.iter().filter(|n| n.name == "QEMU").collect();
        assert_eq!(qemu.len(), cpus.len());
        for (n, v) in qemu.iter().zip(&cpus) {
            assert_eq!(n.desc.len(), QEMU_CPU_STATE_SIZE);
            assert_eq!(u64_at(n.desc, 8 + 16 * 8), v.regs.rip);
            assert_eq!(u64_at(n.desc, 8 + 144 + 240 + 3 * 8), 0x1234_5000); // cr3
                                                                            // cs flags: type 0xb, S, P, L, G
            assert_eq!(u32::from_le_bytes(n.desc[152 + 8..152 + 12].try_into().unwrap()), 0x00a0_9b00);
        }
        let vmci: Vec<_> = notes.iter().filter(|n| n.name == "VMCOREINFO").collect();
        assert_eq!((vmci.len(), vmci[0].n_type, vmci[0].desc), (1, 0, TEXT.as_bytes()));
    }

    /// What the dump level excludes and what cannot hold data are holes, never read.
    #[test]
    fn excluded_and_empty_pages_are_not_written() {
        let (low, high) = memory();
        let mem = SliceMem::new(vec![(0, &low), (0x1_0000_0000, &high)]);
        let layout = ElfLayout::new(&mem.ranges(), &notes(&[], None)).unwrap();
        let pfns = 0x1_0000_0000 / PAGE_SIZE + 4;
        let mut keep = Bitmap::new(pfns);
        let mut holds = Bitmap::new(pfns);
        for pfn in 0..pfns {
            keep.set(pfn, pfn != 2);
            holds.set(pfn, pfn != 40);
        }
        let mut file = vec![0xeeu8; 8]; // truncated by set_len, overwritten by the header
        let opts = ElfWriteOptions { keep: Some(&keep), holds_data: Some(&holds), on_progress: None };
        write_elf(&mut file, &mem, &layout, opts).unwrap();
        let low_file = &file[layout.offsets[0] as usize..][..low.len()];
        assert_eq!(low_file[PAGE..2 * PAGE], low[PAGE..2 * PAGE]);
        assert!(low_file[2 * PAGE..3 * PAGE].iter().all(|&b| b == 0), "excluded");
        assert_eq!(low_file[3 * PAGE..4 * PAGE], low[3 * PAGE..4 * PAGE]);
        assert_eq!(low_file[40 * PAGE + 7], 0, "never read");
        assert_eq!(file.last(), Some(&0x77));
        // Reading outside the memory is an error, not a panic.
        let layout = ElfLayout::new(&[RamRange { start: 0, len: 65 * PAGE_SIZE }], &[]).unwrap();
        assert!(matches!(
            write_elf(Vec::new(), &mem, &layout, ElfWriteOptions::default()),
            Err(KdumpError::OutOfRange(_))
        ));
    }

    #[test]
    fn layouts_that_cannot_be_written() {
        let many = vec![RamRange { start: 0, len: 1 }; PN_XNUM - 1];
        assert_eq!(ElfLayout::new(&many, &[]), Err(ElfCoreError::TooManyRegions(PN_XNUM - 1)));
        let huge = [RamRange { start: 0, len: u64::MAX - 100 }];
        assert_eq!(ElfLayout::new(&huge, &[]), Err(ElfCoreError::Overflow));
        assert_eq!(required_bytes(&[u64::MAX]), u64::MAX);
    }

    #[test]
    fn a_long_run_is_written_in_pieces_with_the_same_bytes() {
        let big: Vec<u8> = (0..(MAX_RUN + 3 * PAGE)).map(|i| (i % 253) as u8 + 1).collect();
        let mem = SliceMem::new(vec![(0x10_0000, &big)]);
        let layout = ElfLayout::new(&mem.ranges(), &[]).unwrap();
        let mut file = Vec::new();
        write_elf(&mut file, &mem, &layout, ElfWriteOptions::default()).unwrap();
        assert!(file[layout.offsets[0] as usize..] == big[..]);
    }

    /// Memory that only reads (no [`PhysMem::slice`]): the writer copies each page first.
    struct ReadOnly<'a>(&'a SliceMem<'a>);

    impl PhysMem for ReadOnly<'_> {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), crate::OutOfRange> {
            self.0.read(paddr, buf)
        }
    }

    /// Writing from memory lent in place and from memory read page by page gives the same
    /// file: with holes, excluded pages, pages without data and a run longer than `MAX_RUN`.
    #[test]
    fn lent_and_read_memory_give_the_same_file() {
        let (mut low, high) = memory();
        let big: Vec<u8> = (0..(MAX_RUN + 3 * PAGE)).map(|i| (i % 251) as u8 + 1).collect();
        low[5 * PAGE..6 * PAGE].fill(0);
        let mem = SliceMem::new(vec![(0, &low), (0x1_0000_0000, &high), (0x2_0000_0000, &big)]);
        assert!(mem.slice(0, low.len()).is_some() && ReadOnly(&mem).slice(0, low.len()).is_none());
        let layout = ElfLayout::new(&mem.ranges(), &notes(&[cpu(0)], Some(TEXT))).unwrap();
        let pfns = 0x2_0000_0000 / PAGE_SIZE + big.len() as u64 / PAGE_SIZE;
        let (mut keep, mut holds) = (Bitmap::new(pfns), Bitmap::new(pfns));
        for pfn in 0..pfns {
            keep.set(pfn, pfn % 7 != 3);
            holds.set(pfn, pfn % 11 != 4);
        }
        for (keep, holds) in [(None, None), (Some(&keep), Some(&holds))] {
            let write = |m: &dyn PhysMem| {
                let mut file = Vec::new();
                write_elf(&mut file, m, &layout, ElfWriteOptions { keep, holds_data: holds, on_progress: None })
                    .unwrap();
                file
            };
            let (lent, read) = (write(&mem), write(&ReadOnly(&mem)));
            assert_eq!(lent.len(), read.len());
            assert!(lent == read, "keep/holds given: {}", keep.is_some());
        }
    }
}
