//! elf2kdump: an ELF vmcore (crashvmm's host-side one, or /proc/vmcore's shape) to a filtered
//! kdump-compressed file.
//!
//!   cargo run --release -p kdump --example elf2kdump -- VMCORE OUT [-d LEVEL] [-c zlib|lzo|none]
//!       [--zlib-level N] [--threads N] [--json]
//!
//! PT_LOADs are the RAM ranges (p_paddr), read with pread; the PT_NOTE notes (NT_PRSTATUS per
//! vCPU, VMCOREINFO) go into the sub-header.

use std::fs::File;
use std::path::Path;
use std::process::ExitCode;

use kdump::elf::ElfVmcore;
use kdump::{classify, write_kdump, ClassifyOptions, Compression, KdumpOptions, NoteSet};

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
    let mem = ElfVmcore::open(Path::new(input)).map_err(|e| format!("{input}: {e}"))?;
    let (ram, notes) = (mem.ram(), mem.notes.clone());
    let info = mem.vmcoreinfo();
    let t0 = std::time::Instant::now();
    let cls = classify(&mem, &ram, info.as_ref(), level, &ClassifyOptions::default()).map_err(|e| e.to_string())?;
    let t_classify = t0.elapsed();
    let note_set = NoteSet::new(&notes, None);
    let mut out =
        std::io::BufWriter::with_capacity(1 << 20, File::create(output).map_err(|e| format!("{output}: {e}"))?);
    let opts = KdumpOptions { compression, threads, on_progress: None, holds_data: None };
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

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("elf2kdump: {e}");
            ExitCode::FAILURE
        }
    }
}
