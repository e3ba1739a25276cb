//! An ELF vmcore (crashvmm's host-side one, QEMU's `dump-guest-memory`, the kernel's
//! `/proc/vmcore`) as guest physical memory: its PT_LOADs are the RAM ranges, read with
//! `pread`; its PT_NOTE notes (NT_PRSTATUS per vCPU, VMCOREINFO) are kept for a kdump file's
//! sub-header. For the converter example and the tests against makedumpfile.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PT_LOAD, PT_NOTE};

use crate::{KdumpError, OutOfRange, PhysMem, RamRange};

/// Longest note segment read (crashvmm's and the kernel's are a few KiB per vCPU).
const MAX_NOTES: u64 = 64 << 20;

pub struct ElfVmcore {
    file: File,
    /// (paddr, len, file offset) per PT_LOAD.
    loads: Vec<(u64, u64, u64)>,
    /// The notes of every PT_NOTE, in order.
    pub notes: Vec<u8>,
}

fn bad(what: impl std::fmt::Display) -> KdumpError {
    KdumpError::Format(format!("ELF vmcore: {what}"))
}

impl ElfVmcore {
    pub fn open(path: &Path) -> Result<Self, KdumpError> {
        let file = File::open(path)?;
        let mut head = [0u8; 64];
        file.read_exact_at(&mut head, 0)?;
        let hdr = goblin::elf::Elf::parse_header(&head).map_err(bad)?;
        if hdr.e_ident[goblin::elf::header::EI_CLASS] != goblin::elf::header::ELFCLASS64
            || hdr.e_machine != goblin::elf::header::EM_X86_64
            || hdr.e_type != goblin::elf::header::ET_CORE
        {
            return Err(bad("not an x86_64 ELF core file"));
        }
        let mut ph = vec![0u8; usize::from(hdr.e_phnum) * usize::from(hdr.e_phentsize)];
        file.read_exact_at(&mut ph, hdr.e_phoff)?;
        let ctx = Ctx::new(Container::Big, Endian::Little);
        let phdrs = ProgramHeader::parse(&ph, 0, usize::from(hdr.e_phnum), ctx).map_err(bad)?;
        let mut notes = Vec::new();
        let mut loads = Vec::new();
        for p in &phdrs {
            if p.p_type == PT_NOTE && p.p_filesz > 0 {
                if p.p_filesz > MAX_NOTES {
                    return Err(bad(format!("a note segment of {} bytes", p.p_filesz)));
                }
                let mut n = vec![0u8; p.p_filesz as usize];
                file.read_exact_at(&mut n, p.p_offset)?;
                notes.extend_from_slice(&n);
            } else if p.p_type == PT_LOAD {
                loads.push((p.p_paddr, p.p_filesz, p.p_offset));
            }
        }
        Ok(Self { file, loads, notes })
    }

    pub fn ram(&self) -> Vec<RamRange> {
        self.loads.iter().map(|&(start, len, _)| RamRange { start, len }).collect()
    }

    /// The guest's VMCOREINFO, from the notes.
    pub fn vmcoreinfo(&self) -> Option<crate::VmcoreInfo> {
        crate::vmcoreinfo::find_vmcoreinfo_note(&self.notes).map(crate::VmcoreInfo::parse_bytes)
    }
}

impl PhysMem for ElfVmcore {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let err = OutOfRange { paddr, len: buf.len() };
        let end = paddr.checked_add(buf.len() as u64).ok_or(err)?;
        let &(start, _, off) = self.loads.iter().find(|(s, l, _)| *s <= paddr && end <= s + l).ok_or(err)?;
        self.file.read_exact_at(buf, off + (paddr - start)).map_err(|_| err)
    }
}
