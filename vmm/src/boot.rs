//! Loading a kernel, its initrd and command line, and the BSP's boot state. Two formats:
//!
//! - A Linux bzImage, by the x86 64-bit boot protocol (Documentation/arch/x86/boot.rst): the
//!   kernel's protected-mode part is loaded at 1 MiB, entered at `+0x200` in long mode with
//!   `%rsi` pointing at the zero page (`boot_params`), with paging on and an identity map
//!   covering the kernel, the zero page and the command line.
//! - An ELF kernel with a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`), by the PVH boot ABI
//!   (xen/include/public/arch-x86/hvm/start_info.h): segments loaded where the ELF says,
//!   entered in 32-bit protected mode with paging off and `%ebx` pointing at `hvm_start_info`
//!   (version 1: command line, memory map, RSDP and the initrd as the one module). The
//!   project's own test guest boots this way; so does a Linux `vmlinux` built with CONFIG_PVH.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// `HdrS` at offset 0x202 of a bzImage.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// 0xAA55 at offset 0x1fe.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "Undefined" boot loader id.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Setup header field offsets inside the bzImage file.
const HDR_MAGIC_OFFSET: u64 = 0x202;
const HDR_VERSION_OFFSET: u64 = 0x206;
const HDR_XLOADFLAGS_OFFSET: u64 = 0x236;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Boot protocol 2.12 introduced `xloadflags`.
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry point from the start of the protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;
/// `loadflags` bit: the heap end pointer is valid.
const CAN_USE_HEAP: u8 = 1 << 7;
/// `ELFMAG`, `ELFCLASS64`, `ELFDATA2LSB` and `EM_X86_64` from the ELF specification.
const ELFMAG: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
/// `XEN_HVM_START_MAGIC_VALUE`: the first field of `hvm_start_info`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// The `hvm_start_info` version crashvmm writes (has the memory map fields).
const HVM_START_INFO_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot read kernel {path}")]
    KernelIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither a bzImage (no 'HdrS' setup header at 0x202) nor an ELF kernel")]
    NotBzImage { path: PathBuf },
    #[error("{path} is an ELF file but not a 64-bit little-endian x86-64 one")]
    NotX86_64Elf { path: PathBuf },
    #[error(
        "{path} is an ELF kernel without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); crashvmm boots \
         ELF kernels through PVH only (give it a bzImage otherwise)"
    )]
    NoPvhEntry { path: PathBuf },
    #[error(
        "{path} has no 64-bit entry point (boot protocol {major}.{minor:02}, \
         xloadflags {xloadflags:#x}); crashvmm needs a 64-bit bzImage, boot protocol 2.12+"
    )]
    Not64Bit { path: PathBuf, major: u8, minor: u8, xloadflags: u16 },
    #[error("cannot load kernel {path}")]
    KernelLoad {
        path: PathBuf,
        #[source]
        source: loader::Error,
    },
    #[error("cannot read initrd {path}")]
    InitrdIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory between the kernel's end \
         ({kernel_end:#x}) and {limit:#x}; give the guest more memory"
    )]
    InitrdTooLarge { path: PathBuf, size: u64, kernel_end: u64, limit: u64 },
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line into guest memory")]
    CmdlineWrite(#[source] loader::Error),
    #[error("cannot write {what} into guest memory")]
    GuestMemory {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
}

/// Facts about a validated bzImage, read from its setup header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageInfo {
    pub protocol: u16,
    pub xloadflags: u16,
}

/// The kernel formats crashvmm boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage(BzImageInfo),
    /// An x86-64 ELF, booted through its PVH entry (checked when it is loaded).
    Elf,
}

/// Check that `path` is a 64-bit bzImage or an x86-64 ELF, with an error an operator can act
/// on otherwise.
pub fn check_kernel(path: &Path) -> Result<KernelFormat, BootError> {
    let io = |source| BootError::KernelIo { path: path.to_owned(), source };
    let mut ident = [0u8; 20];
    let mut f = File::open(path).map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let n = f.read(&mut ident).map_err(io)?;
    if n >= 4 && &ident[..4] == ELFMAG {
        let x86_64 = n == ident.len()
            && ident[4] == ELFCLASS64
            && ident[5] == ELFDATA2LSB
            && u16::from_le_bytes([ident[18], ident[19]]) == EM_X86_64;
        return if x86_64 { Ok(KernelFormat::Elf) } else { Err(BootError::NotX86_64Elf { path: path.to_owned() }) };
    }
    check_bzimage(path).map(KernelFormat::BzImage)
}

/// Check that `path` is a 64-bit bzImage, with an error an operator can act on otherwise.
pub fn check_bzimage(path: &Path) -> Result<BzImageInfo, BootError> {
    let io = |source| BootError::KernelIo { path: path.to_owned(), source };
    let mut f = File::open(path).map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let read_at = |f: &mut File, off: u64, buf: &mut [u8]| -> Result<bool, BootError> {
        f.seek(SeekFrom::Start(off)).map_err(io)?;
        match f.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io(e)),
        }
    };
    let mut magic = [0u8; 4];
    if !read_at(&mut f, HDR_MAGIC_OFFSET, &mut magic)? || u32::from_le_bytes(magic) != KERNEL_HDR_MAGIC {
        return Err(BootError::NotBzImage { path: path.to_owned() });
    }
    let mut v = [0u8; 2];
    let mut x = [0u8; 2];
    let protocol = if read_at(&mut f, HDR_VERSION_OFFSET, &mut v)? { u16::from_le_bytes(v) } else { 0 };
    let xloadflags = if read_at(&mut f, HDR_XLOADFLAGS_OFFSET, &mut x)? { u16::from_le_bytes(x) } else { 0 };
    if protocol < MIN_BOOT_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Not64Bit {
            path: path.to_owned(),
            major: (protocol >> 8) as u8,
            minor: protocol as u8,
            xloadflags,
        });
    }
    Ok(BzImageInfo { protocol, xloadflags })
}

/// How the BSP enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Long mode at `rip`, `%rsi` = the zero page (Linux 64-bit boot protocol).
    Linux64 { rip: u64 },
    /// 32-bit protected mode at `rip`, paging off, `%ebx` = `hvm_start_info` (PVH).
    Pvh { rip: u64, start_info: u64 },
}

impl BootEntry {
    pub fn rip(&self) -> u64 {
        match *self {
            BootEntry::Linux64 { rip } | BootEntry::Pvh { rip, .. } => rip,
        }
    }
}

impl std::fmt::Display for BootEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BootEntry::Linux64 { rip } => write!(f, "64-bit entry {rip:#x}"),
            BootEntry::Pvh { rip, start_info } => write!(f, "PVH entry {rip:#x} (hvm_start_info at {start_info:#x})"),
        }
    }
}

/// Where things ended up in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootLayout {
    pub entry: BootEntry,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
}

/// Load a bzImage or a PVH ELF kernel (see the module docs), its initrd and command line.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<BootLayout, BootError> {
    match check_kernel(kernel)? {
        KernelFormat::BzImage(_) => load_linux(mem, mem_size, kernel, initrd, cmdline, rsdp_addr),
        KernelFormat::Elf => load_pvh(mem, mem_size, kernel, initrd, cmdline, rsdp_addr),
    }
}

/// Load a PVH ELF kernel and write `hvm_start_info`, its memory map and module list.
fn load_pvh(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<BootLayout, BootError> {
    let mut kernel_file =
        File::open(kernel).map_err(|source| BootError::KernelIo { path: kernel.to_owned(), source })?;
    let loaded = Elf::load(mem, None, &mut kernel_file, Some(GuestAddress(HIMEM_START)))
        .map_err(|source| BootError::KernelLoad { path: kernel.to_owned(), source })?;
    let PvhBootCapability::PvhEntryPresent(rip) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhEntry { path: kernel.to_owned() });
    };
    let cmdline_paddr = write_cmdline(mem, CMDLINE_MAX, cmdline)?;
    let kernel_end = loaded.kernel_end;
    let initrd_loc = match initrd {
        Some(path) => Some(load_initrd(mem, mem_size, path, kernel_end, u32::MAX)?),
        None => None,
    };

    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind, reserved: 0 })
        .collect();
    let modules: Vec<hvm_modlist_entry> =
        initrd_loc.map(|(paddr, size)| hvm_modlist_entry { paddr, size, ..Default::default() }).into_iter().collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST_ADDR },
        cmdline_paddr,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_START_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem).map_err(BootError::ZeroPage)?;
    Ok(BootLayout {
        entry: BootEntry::Pvh { rip: rip.raw_value(), start_info: PVH_START_INFO_ADDR },
        kernel_end,
        initrd: initrd_loc,
    })
}

/// Write the command line (at most `max` bytes with its NUL) at [`CMDLINE_ADDR`].
fn write_cmdline(mem: &GuestMemoryMmap, max: usize, cmdline: &str) -> Result<u64, BootError> {
    let max = max.clamp(1, CMDLINE_MAX);
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong { len: cmdline.len(), max: max - 1 });
    }
    let mut cl = Cmdline::new(max).map_err(BootError::Cmdline)?;
    if !cmdline.trim().is_empty() {
        cl.insert_str(cmdline.trim()).map_err(BootError::Cmdline)?;
    }
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl).map_err(BootError::CmdlineWrite)?;
    Ok(CMDLINE_ADDR)
}

/// Load a bzImage ([`check_kernel`] has checked it), its initrd and command line, and write the
/// zero page.
fn load_linux(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp_addr: u64,
) -> Result<BootLayout, BootError> {
    let mut kernel_file =
        File::open(kernel).map_err(|source| BootError::KernelIo { path: kernel.to_owned(), source })?;
    let loaded = BzImage::load(mem, None, &mut kernel_file, Some(GuestAddress(HIMEM_START)))
        .map_err(|source| BootError::KernelLoad { path: kernel.to_owned(), source })?;
    let mut hdr = loaded.setup_header.ok_or_else(|| BootError::NotBzImage { path: kernel.to_owned() })?;

    write_cmdline(mem, hdr.cmdline_size as usize, cmdline)?;

    // Initrd: page-aligned at the top of low RAM, under the kernel's initrd_addr_max.
    let kernel_end = loaded.kernel_end;
    let initrd_loc = match initrd {
        Some(path) => Some(load_initrd(mem, mem_size, path, kernel_end, hdr.initrd_addr_max)?),
        None => None,
    };

    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = (cmdline.trim().len()) as u32;
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = (BOOT_STACK_TOP - 0x200) as u16;
    if let Some((addr, size)) = initrd_loc {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }

    let mut params = boot_params { hdr, acpi_rsdp_addr: rsdp_addr, ..Default::default() };
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(BootError::ZeroPage)?;

    Ok(BootLayout {
        entry: BootEntry::Linux64 { rip: loaded.kernel_load.raw_value() + STARTUP_64_OFFSET },
        kernel_end,
        initrd: initrd_loc,
    })
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    kernel_end: u64,
    initrd_addr_max: u32,
) -> Result<(u64, u64), BootError> {
    let io = |source| BootError::InitrdIo { path: path.to_owned(), source };
    let mut f = File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let size = meta.len();
    let limit = low_ram_end(mem_size).min(initrd_addr_max as u64 + 1);
    let too_large = || BootError::InitrdTooLarge { path: path.to_owned(), size, kernel_end, limit };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.next_multiple_of(4096) {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|source| BootError::GuestMemory { what: "initrd", source })?;
    Ok((addr, size))
}

/// Identity-map the first [`IDENTITY_MAPPED_GIB`] GiB with 2 MiB pages.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let w = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr)).map_err(|source| BootError::GuestMemory { what: "page tables", source })
    };
    // Present | writable.
    w(PML4_ADDR, PDPT_ADDR | 0x3)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_ADDR + gib * 4096;
        w(PDPT_ADDR + gib * 8, pd | 0x3)?;
        for i in 0..512u64 {
            // Present | writable | page size (2 MiB).
            w(pd + i * 8, ((gib << 30) + (i << 21)) | 0x83)?;
        }
    }
    Ok(())
}

/// A GDT entry from flags, base and limit (the classic `GDT_ENTRY` macro).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] =
    [gdt_entry(0, 0, 0), gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)];

/// The GDT a PVH kernel is entered with: null, flat 32-bit code, flat 32-bit data, 32-bit TSS
/// (what the PVH ABI requires of CS, DS/ES/SS and TR).
pub const PVH_GDT: [u64; 4] =
    [gdt_entry(0, 0, 0), gdt_entry(0xc09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x008b, 0, 0x67)];

/// The KVM segment descriptor for GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: (index as u16) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if present == 0 { 1 } else { 0 },
    }
}

/// The GDT for `entry`.
pub fn gdt_for(entry: &BootEntry) -> &'static [u64; 4] {
    match entry {
        BootEntry::Linux64 { .. } => &BOOT_GDT,
        BootEntry::Pvh { .. } => &PVH_GDT,
    }
}

/// Write the GDT for `entry` and an empty IDT into guest memory.
pub fn write_gdt(mem: &GuestMemoryMmap, entry: &BootEntry) -> Result<(), BootError> {
    for (i, e) in gdt_for(entry).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(|source| BootError::GuestMemory { what: "GDT", source })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR)).map_err(|source| BootError::GuestMemory { what: "IDT", source })
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Special registers for the BSP at `entry`, starting from what KVM reported: long mode with
/// the identity map for Linux, 32-bit protected mode with paging off for PVH.
pub fn boot_sregs(mut sregs: kvm_sregs, entry: &BootEntry) -> kvm_sregs {
    let gdt = gdt_for(entry);
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
            sregs.cr4 = 0;
            sregs.efer &= !(EFER_LME | EFER_LMA);
        }
    }
    sregs
}

/// General registers for the BSP at `entry`.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let regs = kvm_regs { rflags: 0x2, rip: entry.rip(), ..Default::default() };
    match *entry {
        BootEntry::Linux64 { .. } => kvm_regs { rsp: BOOT_STACK_TOP, rbp: BOOT_STACK_TOP, rsi: ZERO_PAGE_ADDR, ..regs },
        BootEntry::Pvh { start_info, .. } => kvm_regs { rbx: start_info, ..regs },
    }
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&ram_ranges(size)).unwrap()
    }

    fn fake_bzimage(protocol: u16, xloadflags: u16) -> tempfile::NamedTempFile {
        let mut img = vec![0u8; 0x1000];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&img).unwrap();
        f
    }

    #[test]
    fn rejects_non_bzimages_with_reasons() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\x7fELF not a bzimage").unwrap();
        assert!(matches!(check_bzimage(f.path()), Err(BootError::NotBzImage { .. })));
        let old = fake_bzimage(0x020a, 0);
        let err = check_bzimage(old.path()).unwrap_err();
        assert!(err.to_string().contains("boot protocol 2.10"), "{err}");
        let no64 = fake_bzimage(0x020f, 0);
        assert!(matches!(check_bzimage(no64.path()), Err(BootError::Not64Bit { .. })));
        assert!(matches!(check_bzimage(Path::new("/nonexistent/kernel")), Err(BootError::KernelIo { .. })));
        assert!(matches!(check_bzimage(Path::new("/")), Err(BootError::KernelIo { .. })));
        let ok = fake_bzimage(0x020f, XLF_KERNEL_64);
        assert_eq!(check_bzimage(ok.path()).unwrap().protocol, 0x020f);
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_zero_page() {
        let size = 64 << 20;
        let m = mem(size);
        let kernel = fake_bzimage(0x020f, XLF_KERNEL_64);
        let mut initrd = tempfile::NamedTempFile::new().unwrap();
        initrd.write_all(&[0x5a; 10_000]).unwrap();
        let l = load_kernel(&m, size, kernel.path(), Some(initrd.path()), "console=ttyS0 quiet", 0xe0000).unwrap();
        assert_eq!(l.entry, BootEntry::Linux64 { rip: HIMEM_START + STARTUP_64_OFFSET });
        let (addr, len) = l.initrd.unwrap();
        assert_eq!(len, 10_000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + len <= size && addr >= l.kernel_end);
        assert_eq!(m.read_obj::<u8>(GuestAddress(addr + 9_999)).unwrap(), 0x5a);

        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.ramdisk_image }, addr as u32);
        assert_eq!({ p.hdr.ramdisk_size }, 10_000);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 3);
        let mut cl = [0u8; 20];
        m.read_slice(&mut cl, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&cl, b"console=ttyS0 quiet\0");
    }

    /// A minimal x86-64 ELF: one PT_LOAD of `code` at 1 MiB and, with `pvh`, a PT_NOTE holding
    /// `XEN_ELFNOTE_PHYS32_ENTRY` pointing at it.
    fn fake_elf(pvh: bool, machine: u16) -> tempfile::NamedTempFile {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let code = [0xf4u8; 16]; // hlt
        let mut note = Vec::new();
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes()); // namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&(HIMEM_START as u32).to_le_bytes());
        let phnum = if pvh { 2 } else { 1 };
        let code_off = EHDR + PHDR * phnum;
        let note_off = code_off + code.len();
        let mut img = vec![0u8; EHDR];
        img[..4].copy_from_slice(ELFMAG);
        img[4] = ELFCLASS64;
        img[5] = ELFDATA2LSB;
        img[6] = 1; // EV_CURRENT
        img[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        img[18..20].copy_from_slice(&machine.to_le_bytes());
        img[20..24].copy_from_slice(&1u32.to_le_bytes());
        img[24..32].copy_from_slice(&HIMEM_START.to_le_bytes()); // e_entry
        img[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
        img[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
        img[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
        img[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let phdr = |kind: u32, off: usize, addr: u64, len: usize| {
            let mut p = Vec::with_capacity(PHDR);
            p.extend_from_slice(&kind.to_le_bytes());
            p.extend_from_slice(&5u32.to_le_bytes()); // R|X
            for v in [off as u64, addr, addr, len as u64, len as u64, 4] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            p
        };
        img.extend(phdr(1, code_off, HIMEM_START, code.len())); // PT_LOAD
        if pvh {
            img.extend(phdr(4, note_off, 0, note.len())); // PT_NOTE
        }
        img.extend_from_slice(&code);
        img.extend_from_slice(&note);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&img).unwrap();
        f
    }

    #[test]
    fn loads_pvh_elf_with_start_info_memmap_and_module() {
        let size = 64 << 20;
        let m = mem(size);
        let kernel = fake_elf(true, EM_X86_64);
        assert_eq!(check_kernel(kernel.path()).unwrap(), KernelFormat::Elf);
        let mut initrd = tempfile::NamedTempFile::new().unwrap();
        initrd.write_all(&[0xa5; 5000]).unwrap();
        let l = load_kernel(&m, size, kernel.path(), Some(initrd.path()), "testguest.scenario=boot", 0xe0000).unwrap();
        assert_eq!(l.entry, BootEntry::Pvh { rip: HIMEM_START, start_info: PVH_START_INFO_ADDR });
        assert_eq!(m.read_obj::<u8>(GuestAddress(HIMEM_START)).unwrap(), 0xf4);
        let (addr, len) = l.initrd.unwrap();
        assert_eq!((addr % 4096, len), (0, 5000));

        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_START_INFO_ADDR)).unwrap();
        assert_eq!((info.magic, info.version, info.nr_modules), (XEN_HVM_START_MAGIC_VALUE, 1, 1));
        assert_eq!((info.cmdline_paddr, info.rsdp_paddr), (CMDLINE_ADDR, 0xe0000));
        assert_eq!(info.memmap_entries as usize, e820_map(size).len());
        let last: hvm_memmap_table_entry =
            m.read_obj(GuestAddress(info.memmap_paddr + 24 * (info.memmap_entries as u64 - 1))).unwrap();
        assert_eq!((last.addr, last.size, last.type_), (HIMEM_START, size - HIMEM_START, E820_RAM));
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (addr, 5000));
        let mut cl = [0u8; 24];
        m.read_slice(&mut cl, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&cl, b"testguest.scenario=boot\0");

        let s = boot_sregs(kvm_sregs::default(), &l.entry);
        assert_eq!((s.cr0 & (X86_CR0_PE | X86_CR0_PG), s.efer & EFER_LME, s.cr4), (X86_CR0_PE, 0, 0));
        assert_eq!((s.cs.l, s.cs.db, s.cs.limit, s.tr.type_), (0, 1, 0xffff_ffff, 0xb));
        let r = boot_regs(&l.entry);
        assert_eq!((r.rip, r.rbx, r.rflags), (HIMEM_START, PVH_START_INFO_ADDR, 2));
    }

    #[test]
    fn elf_kernels_without_pvh_or_for_other_machines_are_refused() {
        let m = mem(64 << 20);
        let no_note = fake_elf(false, EM_X86_64);
        let err = load_kernel(&m, 64 << 20, no_note.path(), None, "", 0).unwrap_err();
        assert!(matches!(err, BootError::NoPvhEntry { .. }), "{err}");
        assert!(err.to_string().contains("XEN_ELFNOTE_PHYS32_ENTRY"), "{err}");
        let arm = fake_elf(true, 183); // EM_AARCH64
        assert!(matches!(check_kernel(arm.path()), Err(BootError::NotX86_64Elf { .. })));
        let mut short = tempfile::NamedTempFile::new().unwrap();
        short.write_all(b"\x7fELF").unwrap();
        assert!(matches!(check_kernel(short.path()), Err(BootError::NotX86_64Elf { .. })));
    }

    #[test]
    fn initrd_that_does_not_fit_is_an_error() {
        let size = 32 << 20;
        let m = mem(size);
        let kernel = fake_bzimage(0x020f, XLF_KERNEL_64);
        let initrd = tempfile::NamedTempFile::new().unwrap();
        initrd.as_file().set_len(40 << 20).unwrap();
        let err = load_linux(&m, size, kernel.path(), Some(initrd.path()), "", 0).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
        let long = "x".repeat(5000);
        let err = load_linux(&m, size, kernel.path(), None, &long, 0).unwrap_err();
        assert!(matches!(err, BootError::CmdlineTooLong { .. }), "{err}");
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let m = mem(64 << 20);
        write_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pdpte3: u64 = m.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpte3 & !0xfff, PD_ADDR + 3 * 4096);
        let last: u64 = m.read_obj(GuestAddress(PD_ADDR + 3 * 4096 + 511 * 8)).unwrap();
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
    }

    #[test]
    fn gdt_segments_are_long_mode() {
        let cs = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_, cs.selector), (1, 0, 1, 1, 0xb, 8));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((ds.l, ds.db, ds.type_, ds.selector), (0, 1, 3, 16));
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
        let s = boot_sregs(kvm_sregs::default(), &BootEntry::Linux64 { rip: 0 });
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_ADDR);
    }
}
