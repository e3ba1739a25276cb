//! Part 7: the crash analysis (`crash-analysis`, run by crashvmm when a crash directory is
//! finished) against guest size, and against the reference tool.
//!
//! A real Linux crash first: the `kdump` scenario (Debian's cloud kernel, 768 MiB, in the
//! software KVM test host where there is no hardware KVM), whose report gives the analysis time
//! inside that run. Then, on this machine directly, the crashed kernel's memory from that run's
//! vmcore (every page the guest's makedumpfile kept at level 31: the kernel's, with its log,
//! symbol tables, page tables and stacks) is placed at its guest physical addresses in guest
//! RAM of 1, 4 and 16 GiB, and crashvmm's own `vmm::crash::triage::run` analyzes it the two ways
//! a crash does: with the VMCOREINFO a vmcore of the crash holds (a host-side dump, a collected
//! kdump), and with none (a crash without a vmcore), when it scans guest memory for the note.
//! For that scan's worst case the note's page is moved to the top of RAM and a struct-page
//! array's share of RAM (1/64) is touched below it, as a booted kernel of that size touches it.
//! The reference: `makedumpfile --dump-dmesg` reading the same log from the vmcore file.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{progress, Env, GIB};
use crate::{run_scenario, RunOptions};

/// Repetitions per size and way.
const REPS: usize = 7;

/// One guest size.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AnalysisSize {
    pub gib: u64,
    /// Milliseconds, with the vmcore's VMCOREINFO.
    pub with_vmcoreinfo_ms: Vec<f64>,
    /// Milliseconds, scanning guest memory for the VMCOREINFO note.
    pub scan_ms: Vec<f64>,
    pub log_records: u64,
    pub cpus: usize,
    pub frames: usize,
}

/// Part 7's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AnalysisBench {
    /// The analysis inside the Linux kdump run (the test host's emulated CPU), microseconds.
    pub in_run_us: Option<u64>,
    /// crashvmm's pvpanic -> guest_kexec in that run, seconds (the analysis must not delay it:
    /// it runs after the crash kernel's dump is collected).
    pub pvpanic_to_kexec_s: Option<f64>,
    pub sizes: Vec<AnalysisSize>,
    /// `makedumpfile --dump-dmesg` on the run's vmcore, seconds.
    pub makedumpfile_dmesg_s: Vec<f64>,
    /// Whether crashvmm's `dmesg.txt` of the run equals makedumpfile's.
    pub dmesg_equal: Option<bool>,
    pub notes: Vec<String>,
}

pub fn run(env: &Env, sizes: &[u64]) -> AnalysisBench {
    let mut b = AnalysisBench::default();
    if let Err(e) = measure(env, sizes, &mut b) {
        progress(format!("analysis: FAILED: {e}"));
        b.notes.push(e);
    }
    b
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn measure(env: &Env, sizes: &[u64], b: &mut AnalysisBench) -> Result<(), String> {
    progress("analysis: the Linux kdump scenario (about a minute)");
    let out = env.work.join("analysis-kdump");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let o = run_scenario(&env.setup, "kdump", &out, &RunOptions::default()).map_err(|e| e.to_string())?;
    let dir = o.crash_dirs().into_iter().next().ok_or("the kdump scenario left no crash directory")?;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap_or_default())
        .map_err(|e| format!("report.json: {e}"))?;
    b.in_run_us = report["analysis"]["duration_us"].as_u64();
    let events = super::read_events(&dir.join("events.jsonl"));
    let at = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .and_then(|e| e["ts"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| t.timestamp_micros() as f64 / 1e6))
    };
    b.pvpanic_to_kexec_s = at("guest_kexec").zip(at("pvpanic")).map(|(k, p)| k - p);
    let vmcore = dir.join("vmcore.kdump");
    for _ in 0..3 {
        let theirs = out.join("makedumpfile-dmesg.txt");
        let _ = std::fs::remove_file(&theirs);
        let t = Instant::now();
        let r = std::process::Command::new("makedumpfile")
            .arg("--dump-dmesg")
            .arg(&vmcore)
            .arg(&theirs)
            .output()
            .map_err(|e| format!("makedumpfile: {e}"))?;
        b.makedumpfile_dmesg_s.push(t.elapsed().as_secs_f64());
        if !r.status.success() {
            return Err(format!("makedumpfile --dump-dmesg: {}", String::from_utf8_lossy(&r.stderr)));
        }
        b.dmesg_equal = Some(std::fs::read(&theirs).ok() == std::fs::read(dir.join("dmesg.txt")).ok());
    }
    for &gib in sizes {
        b.sizes.push(measure_size(&vmcore, gib, env.quick)?);
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// The crashed kernel's pages of `vmcore` in `gib` GiB of guest RAM, analyzed `REPS` times
/// each way.
fn measure_size(vmcore: &Path, gib: u64, quick: bool) -> Result<AnalysisSize, String> {
    let mut f = std::fs::File::open(vmcore).map_err(|e| format!("{}: {e}", vmcore.display()))?;
    let k = kdump::KdumpFile::parse(&mut f).map_err(|e| format!("{}: {e}", vmcore.display()))?;
    let text = k.vmcoreinfo.clone().ok_or("the vmcore has no VMCOREINFO")?;
    let size = gib * GIB;
    let mem = GuestMemoryMmap::<()>::from_ranges(&vmm::layout::ram_ranges(size)).map_err(|e| e.to_string())?;
    let mut copied = 0u64;
    for pfn in k.dumpable.iter_ones() {
        if let Ok(Some(page)) = k.read_page(&mut f, pfn) {
            if mem.write_slice(&page, GuestAddress(pfn << 12)).is_ok() {
                copied += 1;
            }
        }
    }
    // The scan's worst case: the note on the last page of RAM, a struct-page array's share of
    // RAM touched below it.
    let note = vmm::crash::vmcore::find_vmcoreinfo(&mem).ok_or("no VMCOREINFO note in the crash's memory")?;
    let mut page = vec![0u8; 4096];
    let note_page = note.gpa & !0xfff;
    mem.read_slice(&mut page, GuestAddress(note_page)).map_err(|e| e.to_string())?;
    let top = vmm::layout::ram_ranges(size).last().map(|(a, l)| a.0 + *l as u64).unwrap_or(size);
    let moved = top - 4096;
    mem.write_slice(&page, GuestAddress(moved)).map_err(|e| e.to_string())?;
    mem.write_slice(&[0u8; 4096], GuestAddress(note_page)).map_err(|e| e.to_string())?;
    let memmap_pages = size / 64 / 4096;
    let junk = [0x5au8; 64];
    for i in 1..=memmap_pages {
        let _ = mem.write_slice(&junk, GuestAddress(moved - i * 4096));
    }
    let found = vmm::crash::vmcore::find_vmcoreinfo(&mem).ok_or("the moved note is not found")?;
    if found.gpa & !0xfff != moved {
        return Err(format!("the scan found the note at {:#x}, not at the top ({moved:#x})", found.gpa));
    }
    let reps = if quick { 2 } else { REPS };
    let mut s = AnalysisSize { gib, ..Default::default() };
    for _ in 0..reps {
        let t = Instant::now();
        let r = vmm::crash::triage::run(&mem, &[], &[], 2, Some(&text)).map_err(|e| e.to_string())?;
        s.with_vmcoreinfo_ms.push(ms(t));
        s.log_records = r.analysis.log_records;
        s.cpus = r.analysis.cpus.len();
        s.frames = r.analysis.cpus.iter().map(|c| c.frames.len()).sum();
        let t = Instant::now();
        vmm::crash::triage::run(&mem, &[], &[], 2, None).map_err(|e| e.to_string())?;
        s.scan_ms.push(ms(t));
    }
    progress(format!(
        "analysis: {gib} GiB ({copied} pages of the crash): {:.1} ms with the vmcore's VMCOREINFO, {:.1} ms scanning for it; {} log records, {} frames",
        super::stats::median(&s.with_vmcoreinfo_ms),
        super::stats::median(&s.scan_ms),
        s.log_records,
        s.frames
    ));
    Ok(s)
}

/// The analysis must take under this, at every size.
pub const TARGET_MS: f64 = 50.0;
/// And grow less than this from the smallest guest to the largest.
pub const TARGET_GROWTH: f64 = 2.0;

/// Part 7 of `docs/benchmarks.md`.
pub fn section(m: &mut String, b: &AnalysisBench) {
    use super::stats::{max, median, min};
    use std::fmt::Write as _;
    let _ = writeln!(m, "## 7. Crash analysis from guest memory\n");
    if b.sizes.is_empty() && b.in_run_us.is_none() {
        let _ =
            writeln!(m, "Not measured in this run.{}\n", b.notes.iter().map(|n| format!(" {n}")).collect::<String>());
        return;
    }
    let _ = writeln!(
        m,
        "crashvmm reads the crashed kernel's log, identity, panic and every vCPU's stack out of guest memory \
         when it finishes a crash directory (`vmm/src/crash/triage.rs`, crate `crash-analysis`). The crash: \
         the `kdump` scenario (Debian's cloud kernel, 768 MiB, 2 vCPUs, sysrq crash, the guest's kdump) in the \
         software KVM test host; its kernel memory (the pages of its level-31 vmcore) placed at the same \
         guest physical addresses in 1, 4 and 16 GiB of guest RAM on this machine, and analyzed by crashvmm's \
         own function, median (min-max) of {} runs. \"With the vmcore's VMCOREINFO\": what a crash with a \
         host-side dump or a collected kdump does. \"Scanning\": a crash without a vmcore, which scans guest \
         memory for the VMCOREINFO note: here its worst case, the note on RAM's last page with a struct-page \
         array's share of RAM (1/64) touched below it.\n",
        b.sizes.first().map_or(0, |s| s.with_vmcoreinfo_ms.len())
    );
    let _ = writeln!(
        m,
        "| guest RAM | with the vmcore's VMCOREINFO (ms) | scanning for it (ms) | log records | vCPU stacks | frames |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|");
    let spread = |v: &[f64]| format!("{:.1} ({:.1}-{:.1})", median(v), min(v), max(v));
    for s in &b.sizes {
        let _ = writeln!(
            m,
            "| {} GiB | {} | {} | {} | {} | {} |",
            s.gib,
            spread(&s.with_vmcoreinfo_ms),
            spread(&s.scan_ms),
            s.log_records,
            s.cpus,
            s.frames
        );
    }
    let (first, last) = (b.sizes.first(), b.sizes.last());
    if let (Some(a), Some(z)) = (first, last) {
        let _ = writeln!(m, "\n| target | measured | result |\n|---|---|---|");
        for (what, pick) in [
            (
                "with the vmcore's VMCOREINFO",
                &(|s: &AnalysisSize| median(&s.with_vmcoreinfo_ms)) as &dyn Fn(&AnalysisSize) -> f64,
            ),
            ("scanning for the VMCOREINFO", &|s: &AnalysisSize| median(&s.scan_ms)),
        ] {
            let worst = b.sizes.iter().map(pick).fold(0.0, f64::max);
            let _ = writeln!(
                m,
                "| {what}: under {TARGET_MS} ms at every size | {worst:.1} ms at most | {} |",
                if worst < TARGET_MS { "met" } else { "MISSED" }
            );
            let growth = pick(z) / pick(a);
            let _ = writeln!(
                m,
                "| {what}: within {TARGET_GROWTH}x from {} to {} GiB | {growth:.2}x | {} |",
                a.gib,
                z.gib,
                if growth <= TARGET_GROWTH { "met" } else { "MISSED" }
            );
        }
    }
    let _ = writeln!(m);
    if let Some(us) = b.in_run_us {
        let _ = writeln!(
            m,
            "Inside the Linux run (crashvmm on the test host's emulated CPU): the analysis took {:.1} ms.",
            us as f64 / 1000.0
        );
    }
    if let Some(s) = b.pvpanic_to_kexec_s {
        let _ = writeln!(
            m,
            "That run's pvpanic -> guest kexec: {s:.3} s (the analysis runs after the crash kernel's dump is \
             collected, so nothing on the guest's panic path waits for it; compare part 3's crashvmm column)."
        );
    }
    if !b.makedumpfile_dmesg_s.is_empty() {
        let _ = writeln!(
            m,
            "The reference tool, `makedumpfile --dump-dmesg` on that run's vmcore file: {:.1} ms median; \
             crashvmm's `dmesg.txt` {} its output.",
            median(&b.makedumpfile_dmesg_s) * 1000.0,
            match b.dmesg_equal {
                Some(true) => "equals",
                Some(false) => "DIFFERS from",
                None => "was not compared with",
            }
        );
    }
    for n in &b.notes {
        let _ = writeln!(m, "\nNote: {n}");
    }
    let _ = writeln!(m);
}
