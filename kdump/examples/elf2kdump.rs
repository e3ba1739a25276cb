//! elf2kdump: an ELF vmcore (crashvmm's host-side one, or /proc/vmcore's shape) to a filtered
//! kdump-compressed file.
//!
//!   cargo run --release -p kdump --example elf2kdump -- VMCORE OUT [-d LEVEL] [-c zlib|lzo|none]
//!       [--zlib-level N] [--threads N] [--json]
//!
//! PT_LOADs are the RAM ranges (p_paddr), read with pread; the PT_NOTE notes (NT_PRSTATUS per
//! vCPU, VMCOREINFO) go into the sub-header.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::Header;
use goblin::elf::program_header::{ProgramHeader, PT_LOAD, PT_NOTE};
use kdump::{
    classify, write_kdump, ClassifyOptions, Compression, KdumpOptions, NoteSet, OutOfRange, PhysMem, RamRange,
};

struct ElfMem {
    file: File,
    /// (paddr, len, file offset)
    loads: Vec<(u64, u64, u64)>,
}

impl PhysMem for ElfMem {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let err = OutOfRange { paddr, len: buf.len() };
        let end = paddr.checked_add(buf.len() as u64).ok_or(err)?;
        let &(start, _, off) = self.loads.iter().find(|(s, l, _)| *s <= paddr && end <= s + l).ok_or(err)?;
        self.file.read_exact_at(buf, off + (paddr - start)).map_err(|_| err)
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pos = Vec::new();
    let (mut level, mut comp, mut zlevel, mut threads, mut json) = (31u8, "zlib".to_string(), 6u32, 0usize, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "-d" => level = val()?.parse().map_err(|e| format!("-d: {e}"))?,
            "-c" => comp = val()?,
            "--zlib-level" => zlevel = val()?.parse().map_err(|e| format!("--zlib-level: {e}"))?,
            "--threads" => threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--json" => json = true,
            _ => pos.push(a.clone()),
        }
    }
    let [input, output] = pos.as_slice() else {
        return Err(
            "usage: elf2kdump VMCORE OUT [-d LEVEL] [-c zlib|lzo|none] [--zlib-level N] [--threads N] [--json]".into(),
        );
    };
    let compression = match comp.as_str() {
        "zlib" => Compression::Zlib { level: zlevel },
        "lzo" => Compression::Lzo,
        "none" => Compression::None,
        other => return Err(format!("unknown compression {other}")),
    };
    let file = File::open(input).map_err(|e| format!("{input}: {e}"))?;
    let mut head = vec![0u8; 64];
    file.read_exact_at(&mut head, 0).map_err(|e| e.to_string())?;
    let hdr: Header = *plain_header(&head)?;
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let mut ph_bytes = vec![0u8; usize::from(hdr.e_phnum) * usize::from(hdr.e_phentsize)];
    file.read_exact_at(&mut ph_bytes, hdr.e_phoff).map_err(|e| e.to_string())?;
    let phdrs = ProgramHeader::parse(&ph_bytes, 0, usize::from(hdr.e_phnum), ctx).map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    let mut loads = Vec::new();
    for ph in &phdrs {
        if ph.p_type == PT_NOTE && ph.p_filesz > 0 {
            let mut n = vec![0u8; ph.p_filesz as usize];
            file.read_exact_at(&mut n, ph.p_offset).map_err(|e| e.to_string())?;
            notes.extend_from_slice(&n);
        } else if ph.p_type == PT_LOAD {
            loads.push((ph.p_paddr, ph.p_filesz, ph.p_offset));
        }
    }
    let ram: Vec<RamRange> = loads.iter().map(|&(s, l, _)| RamRange { start: s, len: l }).collect();
    let mem = ElfMem { file, loads };
    let info = kdump::vmcoreinfo::find_vmcoreinfo_note(&notes).map(kdump::VmcoreInfo::parse_bytes);
    let t0 = std::time::Instant::now();
    let cls = classify(&mem, &ram, info.as_ref(), level, &ClassifyOptions::default()).map_err(|e| e.to_string())?;
    let t_classify = t0.elapsed();
    let note_set = NoteSet::new(&notes, None);
    let mut out =
        std::io::BufWriter::with_capacity(1 << 20, File::create(output).map_err(|e| format!("{output}: {e}"))?);
    let opts = KdumpOptions { compression, threads, on_progress: None };
    let summary = write_kdump(&mut out, &mem, &cls, info.as_ref(), &note_set, &opts).map_err(|e| e.to_string())?;
    drop(out);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?);
    } else {
        for n in &cls.report.notes {
            eprintln!("note: {n}");
        }
        println!(
            "{output}: kdump, level {} (effective {}), {}: {} pages, excluded zero {} cache {} private {} user {} free {} other {}, written {} ({} with data), {} -> {} bytes, file {} bytes, classify {:.2}s, write {:.2}s ({} threads)",
            summary.requested_level,
            summary.effective_level,
            summary.compression.name(),
            summary.total_pages,
            summary.excluded_zero,
            summary.excluded_cache,
            summary.excluded_cache_private,
            summary.excluded_user,
            summary.excluded_free,
            summary.excluded_other,
            summary.written_pages,
            summary.data_pages,
            summary.bytes_before,
            summary.bytes_after,
            summary.file_bytes,
            t_classify.as_secs_f64(),
            summary.duration.as_secs_f64(),
            summary.threads
        );
    }
    Ok(())
}

fn plain_header(b: &[u8]) -> Result<Box<Header>, String> {
    let h = goblin::elf::Elf::parse_header(b).map_err(|e| e.to_string())?;
    if h.e_machine != goblin::elf::header::EM_X86_64 || h.e_type != goblin::elf::header::ET_CORE {
        return Err("not an x86_64 ELF core".into());
    }
    Ok(Box::new(h))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("elf2kdump: {e}");
            ExitCode::FAILURE
        }
    }
}
