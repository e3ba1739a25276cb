//! `docs/benchmarks.md` and its plot from one run's results.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::crashpath::{CrashPath, QemuPath};
use super::kdump::{Counts, KdumpSize, Run};
use super::machine::Machine;
use super::overhead::{mib, Overhead, Vmm};
use super::plot::{self, Panel, Series};
use super::stats::{max, median, min, ratio};
use super::vmcore::{DumpRun, Phases, SizeResult};
use super::GIB;
use plotters::prelude::SeriesLabelPosition;

/// Targets from the issue.
pub const TARGET_VS_QEMU: f64 = 3.0;
pub const TARGET_VS_COPY: f64 = 2.0;
pub const TARGET_START_MS: f64 = 20.0;
pub const TARGET_RSS_MIB: f64 = 10.0;
/// Filtered dumps at the largest size: QEMU ELF / crashvmm, QEMU `-z` / crashvmm; and at every
/// size, makedumpfile -d 31 -c / crashvmm.
pub const TARGET_KDUMP_VS_QEMU_ELF: f64 = 20.0;
pub const TARGET_KDUMP_VS_QEMU_Z: f64 = 5.0;
pub const TARGET_KDUMP_VS_MAKEDUMPFILE: f64 = 3.0;

/// Everything one `make bench` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub sha256_gbps: f64,
    pub sizes: Vec<u64>,
    pub vmcore: Vec<SizeResult>,
    pub overhead: Overhead,
    pub crash: CrashPath,
    /// Part 5: filtered dumps (absent from results.json files written before it).
    #[serde(default)]
    pub kdump: Vec<KdumpSize>,
    /// Part 6: live dumps (absent from results.json files written before it).
    #[serde(default)]
    pub live: Vec<super::live::LiveCase>,
    /// Part 7: the crash analysis (absent from results.json files written before it).
    #[serde(default)]
    pub analysis: super::analysis::AnalysisBench,
    /// Part 8: a fleet's store (absent from results.json files written before it).
    #[serde(default)]
    pub fleet: super::fleet::FleetBench,
    /// Part 9: the network (absent from results.json files written before it).
    #[serde(default)]
    pub net: super::net::NetBench,
    pub wall_s: f64,
    pub quick: bool,
}

/// A number, or "n/a".
fn f(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "n/a".into()
    }
}

/// A number with its unit ("0.64 s"), or "n/a".
fn unit(v: f64, prec: usize, unit: &str) -> String {
    if v.is_finite() {
        format!("{v:.prec$} {unit}")
    } else {
        "n/a".into()
    }
}

fn fo(v: Option<f64>, prec: usize) -> String {
    f(v.unwrap_or(f64::NAN), prec)
}

/// "median (min-max)" of seconds or whatever unit.
fn spread(v: &[f64], prec: usize) -> String {
    match v.len() {
        0 => "n/a".into(),
        1 => f(v[0], prec),
        _ => format!("{} ({}-{})", f(median(v), prec), f(min(v), prec), f(max(v), prec)),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

fn mib_b(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A ratio as "2.5x", or "n/a".
fn times(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}x")
    } else {
        "n/a".into()
    }
}

/// A ratio as "2.51x", or "n/a".
pub(super) fn xs(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "n/a".into()
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

/// Per-size medians used in several places. `crashvmm_*` is crashvmm's default mode (no hash).
pub struct SizeSummary {
    pub gib: u64,
    pub crashvmm_s: f64,
    /// crashvmm with `--vmcore-sha256 on`.
    pub crashvmm_sha256_s: f64,
    /// crashvmm's own split of `crashvmm_s` (its debug log): VMCOREINFO scan, write, fsync.
    pub scan_s: f64,
    pub write_s: f64,
    pub fsync_s: f64,
    /// The same split with `--vmcore-sha256 on` (write: until the hash is done too).
    pub sha256_write_s: f64,
    pub qemu_dump_s: f64,
    pub qemu_durable_s: f64,
    pub copy_s: f64,
    pub crashvmm_alloc: f64,
    pub crashvmm_apparent: f64,
    pub qemu_alloc: f64,
    pub qemu_apparent: f64,
}

impl SizeSummary {
    pub fn of(r: &SizeResult) -> Self {
        let med = |v: Vec<f64>| median(&v);
        let phase = |runs: &[DumpRun], g: fn(&Phases) -> f64| {
            med(runs.iter().filter_map(|d| d.phases.as_ref()).map(g).collect())
        };
        // The file is the same with or without the hash: sizes from whichever runs there are.
        let files = if r.crashvmm.is_empty() { &r.crashvmm_sha256 } else { &r.crashvmm };
        Self {
            gib: r.gib,
            crashvmm_s: med(r.crashvmm.iter().map(|d| d.dump_s).collect()),
            crashvmm_sha256_s: med(r.crashvmm_sha256.iter().map(|d| d.dump_s).collect()),
            scan_s: phase(&r.crashvmm, |p| p.scan_s),
            write_s: phase(&r.crashvmm, |p| p.write_s),
            fsync_s: phase(&r.crashvmm, |p| p.fsync_s),
            sha256_write_s: phase(&r.crashvmm_sha256, |p| p.write_s),
            qemu_dump_s: med(r.qemu.iter().map(|d| d.dump_s).collect()),
            qemu_durable_s: med(r.qemu.iter().map(|d| d.durable_s()).collect()),
            copy_s: med(r.copy.iter().map(|c| c.seconds).collect()),
            crashvmm_alloc: med(files.iter().map(|d| d.allocated_bytes as f64).collect()),
            crashvmm_apparent: med(files.iter().map(|d| d.apparent_bytes as f64).collect()),
            qemu_alloc: med(r.qemu.iter().map(|d| d.allocated_bytes as f64).collect()),
            qemu_apparent: med(r.qemu.iter().map(|d| d.apparent_bytes as f64).collect()),
        }
    }

    /// QEMU (dump + fsync) / crashvmm: both to data on disk.
    pub fn speedup(&self) -> f64 {
        ratio(self.qemu_durable_s, self.crashvmm_s)
    }

    pub fn speedup_vs_dump_only(&self) -> f64 {
        ratio(self.qemu_dump_s, self.crashvmm_s)
    }

    pub fn vs_copy(&self) -> f64 {
        ratio(self.crashvmm_s, self.copy_s)
    }

    /// What `--vmcore-sha256 on` adds to the default's time.
    pub fn hash_adds_s(&self) -> f64 {
        if self.crashvmm_sha256_s.is_finite() && self.crashvmm_s.is_finite() {
            self.crashvmm_sha256_s - self.crashvmm_s
        } else {
            f64::NAN
        }
    }
}

fn gbps(bytes: u64, s: f64) -> f64 {
    ratio(bytes as f64 / 1e9, s)
}

fn start_ms(o: &Overhead, vmm: Vmm, gib: u64) -> Vec<f64> {
    o.start.iter().filter(|r| r.vmm == vmm && r.gib == gib).map(|r| r.first_byte_ms).collect()
}

fn vm_started_ms(o: &Overhead, gib: u64) -> Vec<f64> {
    o.start.iter().filter(|r| r.vmm == Vmm::Crashvmm && r.gib == gib).filter_map(|r| r.vm_started_ms).collect()
}

fn rss_mib(o: &Overhead, vmm: Vmm, gib: u64) -> Vec<f64> {
    o.rss.iter().filter(|r| r.vmm == vmm && r.gib == gib).map(|r| mib(r.vmm_kib)).collect()
}

fn guest_rss_mib(o: &Overhead, vmm: Vmm, gib: u64) -> Vec<f64> {
    o.rss.iter().filter(|r| r.vmm == vmm && r.gib == gib).map(|r| mib(r.guest_ram_kib)).collect()
}

fn unload_us(c: &CrashPath, gib: u64) -> Vec<f64> {
    c.testguest.iter().filter(|t| t.gib == gib).filter_map(|t| t.path.unload_latency_us).map(|v| v as f64).collect()
}

fn tg_crash_kernel_s(c: &CrashPath, gib: u64) -> Vec<f64> {
    c.testguest.iter().filter(|t| t.gib == gib).filter_map(|t| t.path.crash_kernel_started_s).collect()
}

/// Writes `doc` (markdown) and `png` next to it.
pub fn write(r: &Results, doc: &Path, png: &Path) -> Result<(), String> {
    let png_name = png.file_name().and_then(|n| n.to_str()).unwrap_or("benchmarks.png");
    for p in [doc, png] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    draw(r, png)?;
    let md = markdown(r, png_name);
    std::fs::write(doc, md).map_err(|e| format!("{}: {e}", doc.display()))
}

fn draw(r: &Results, png: &Path) -> Result<(), String> {
    let sums: Vec<SizeSummary> = r.vmcore.iter().map(SizeSummary::of).collect();
    let pts = |g: &dyn Fn(&SizeSummary) -> f64| sums.iter().map(|s| (s.gib as f64, g(s))).collect::<Vec<_>>();
    let series = |name: &str, points, color, dashed| Series { name: name.into(), points, color, dashed };
    let vmcore = Panel {
        title: "Host-side vmcore, 10% of memory touched (s, to disk)".into(),
        y_label: "seconds".into(),
        series: vec![
            series("crashvmm", pts(&|s| s.crashvmm_s), plot::CRASHVMM, false),
            series("crashvmm --vmcore-sha256 on", pts(&|s| s.crashvmm_sha256_s), plot::CRASHVMM_LIGHT, true),
            series("QEMU dump-guest-memory + fsync", pts(&|s| s.qemu_durable_s), plot::QEMU, false),
            series("QEMU dump-guest-memory alone", pts(&|s| s.qemu_dump_s), plot::QEMU_LIGHT, true),
            series("sequential copy of the touched bytes", pts(&|s| s.copy_s), plot::COPY, true),
        ],
        target: None,
        log_y: true,
        legend: SeriesLabelPosition::UpperLeft,
    };
    let o = &r.overhead;
    let by_size =
        |g: &dyn Fn(u64) -> f64| -> Vec<(f64, f64)> { r.overhead_sizes().iter().map(|&s| (s as f64, g(s))).collect() };
    let rss = Panel {
        title: "VMM resident memory beside guest RAM (MiB)".into(),
        y_label: "MiB".into(),
        series: vec![
            series("crashvmm", by_size(&|g| median(&rss_mib(o, Vmm::Crashvmm, g))), plot::CRASHVMM, false),
            series("QEMU microvm", by_size(&|g| median(&rss_mib(o, Vmm::Qemu, g))), plot::QEMU, false),
        ],
        target: Some((TARGET_RSS_MIB, "target 10 MiB".into())),
        log_y: false,
        legend: SeriesLabelPosition::UpperLeft,
    };
    let start = Panel {
        title: "Process start to the guest's first instruction (ms, median)".into(),
        y_label: "ms".into(),
        series: vec![
            series("crashvmm", by_size(&|g| median(&start_ms(o, Vmm::Crashvmm, g))), plot::CRASHVMM, false),
            series("QEMU microvm", by_size(&|g| median(&start_ms(o, Vmm::Qemu, g))), plot::QEMU, false),
        ],
        target: Some((TARGET_START_MS, "target 20 ms".into())),
        log_y: false,
        legend: SeriesLabelPosition::UpperLeft,
    };
    let tg_sizes: Vec<u64> = {
        let mut v: Vec<u64> = r.crash.testguest.iter().map(|t| t.gib).collect();
        v.dedup();
        v
    };
    let mut unload_series = vec![series(
        "crashvmm, test guest on /dev/kvm",
        tg_sizes.iter().map(|&g| (g as f64, median(&unload_us(&r.crash, g)))).collect(),
        plot::CRASHVMM,
        false,
    )];
    let linux_sz = 0.75;
    if let Some(us) = r.crash.crashvmm.as_ref().and_then(|p| p.unload_latency_us) {
        unload_series.push(series(
            "crashvmm, Linux (768 MiB) in the test host",
            vec![(linux_sz, us as f64)],
            plot::COPY,
            false,
        ));
    }
    if let Some(us) = r.crash.qemu.iter().find_map(|p| p.unload_latency_us) {
        unload_series.push(series(
            "QEMU, Linux (768 MiB) in the test host",
            vec![(linux_sz, us as f64)],
            plot::QEMU,
            false,
        ));
    }
    let unload = Panel {
        title: "VMBus UNLOAD handling per message (us)".into(),
        y_label: "microseconds".into(),
        series: unload_series,
        target: None,
        log_y: true,
        legend: SeriesLabelPosition::UpperRight,
    };
    let mut panels = vec![vmcore, rss, start, unload];
    if !r.kdump.is_empty() {
        let k = |g: &dyn Fn(&KdumpSize) -> f64| r.kdump.iter().map(|s| (s.gib as f64, g(s))).collect::<Vec<_>>();
        panels.push(Panel {
            title: "Filtered dump, 90% cache and user pages (s, to disk)".into(),
            y_label: "seconds".into(),
            series: vec![
                series("crashvmm kdump -d 31 (zlib)", k(&|s| med_s(&s.crashvmm)), plot::CRASHVMM, false),
                series("crashvmm kdump -d 31 (lzo)", k(&|s| med_s(&s.crashvmm_lzo)), plot::CRASHVMM, true),
                series("makedumpfile -d 31 -c on an ELF", k(&|s| med_s(&s.makedumpfile)), plot::COPY, false),
                series("makedumpfile -d 31 -l on an ELF", k(&|s| med_s(&s.makedumpfile_lzo)), plot::COPY, true),
                series("QEMU dump-guest-memory ELF", k(&|s| med_s(&s.qemu_elf)), plot::QEMU, false),
                series("QEMU dump-guest-memory kdump-zlib", k(&|s| med_s(&s.qemu_z)), plot::QEMU_LIGHT, true),
            ],
            target: None,
            log_y: true,
            legend: SeriesLabelPosition::UpperLeft,
        });
    }
    plot::draw(png, "crashvmm vs QEMU (make bench)", &panels)
}

impl Results {
    fn overhead_sizes(&self) -> Vec<u64> {
        let mut v: Vec<u64> =
            self.overhead.start.iter().map(|s| s.gib).chain(self.overhead.rss.iter().map(|s| s.gib)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn markdown(r: &Results, png_name: &str) -> String {
    let mut m = String::new();
    let sums: Vec<SizeSummary> = r.vmcore.iter().map(SizeSummary::of).collect();
    let o = &r.overhead;
    let small = r.sizes.first().copied().unwrap_or(1);
    let large = r.sizes.last().copied().unwrap_or(16);
    let _ = writeln!(m, "# Benchmarks\n");
    let _ = writeln!(
        m,
        "Written by `make bench` (`integration/src/bench/`) on {}; the run took {:.1} minutes{}. Every figure \
         below comes from that one run, QEMU's included (the baseline is rerun each time){}. Regenerate \
         with `make bench` on a quiet machine.\n",
        r.machine.date_utc,
        r.wall_s / 60.0,
        if r.quick { " (`--quick`: fewer sizes and repetitions, not for publishing)" } else { "" },
        merged_parts(r)
    );

    // ---- Targets ----------------------------------------------------------------------------
    let _ = writeln!(m, "## Targets\n");
    let _ = writeln!(m, "| target | crashvmm | QEMU | result |\n|---|---|---|---|");
    let mut missed: Vec<String> = Vec::new();
    let mut unmeasured = 0;
    for s in &sums {
        let sp = s.speedup();
        let ok = sp >= TARGET_VS_QEMU;
        let _ = writeln!(
            m,
            "| vmcore at {} GiB: at least {TARGET_VS_QEMU}x faster than QEMU (both to data on disk) | {} | {} | {} |",
            s.gib,
            unit(s.crashvmm_s, 2, "s"),
            unit(s.qemu_durable_s, 2, "s"),
            if sp.is_finite() {
                format!(
                    "{} ({}x; {}x against QEMU without its fsync)",
                    met(ok),
                    f(sp, 1),
                    f(s.speedup_vs_dump_only(), 1)
                )
            } else {
                "not measured".into()
            }
        );
        if !ok && sp.is_finite() {
            missed.push(format!("vmcore-qemu-{}", s.gib));
        }
        unmeasured += usize::from(!sp.is_finite());
    }
    for s in &sums {
        let v = s.vs_copy();
        let ok = v <= TARGET_VS_COPY;
        let _ = writeln!(
            m,
            "| vmcore at {} GiB: within {TARGET_VS_COPY}x of a sequential copy of the touched bytes ({}) | {} | | {} |",
            s.gib,
            unit(s.copy_s, 2, "s"),
            unit(s.crashvmm_s, 2, "s"),
            if v.is_finite() { format!("{} ({}x the copy)", met(ok), f(v, 2)) } else { "not measured".into() }
        );
        if !ok && v.is_finite() {
            missed.push(format!("vmcore-copy-{}", s.gib));
        }
        unmeasured += usize::from(!v.is_finite());
    }
    let st = median(&start_ms(o, Vmm::Crashvmm, small));
    let _ = writeln!(
        m,
        "| start to first guest instruction under {TARGET_START_MS} ms ({small} GiB guest; the first serial byte, written by the guest's first instructions) | {} | {} | {} |",
        unit(st, 1, "ms"),
        unit(median(&start_ms(o, Vmm::Qemu, small)), 1, "ms"),
        if st.is_finite() { met(st < TARGET_START_MS) } else { "not measured" }
    );
    if st >= TARGET_START_MS {
        missed.push("start".into());
    }
    unmeasured += usize::from(!st.is_finite());
    let rs = median(&rss_mib(o, Vmm::Crashvmm, small));
    let _ = writeln!(
        m,
        "| VMM resident memory under {TARGET_RSS_MIB} MiB beside a {small} GiB guest | {} | {} | {} |",
        unit(rs, 1, "MiB"),
        unit(median(&rss_mib(o, Vmm::Qemu, small)), 1, "MiB"),
        if rs.is_finite() { met(rs < TARGET_RSS_MIB) } else { "not measured" }
    );
    if rs >= TARGET_RSS_MIB {
        missed.push("rss".into());
    }
    unmeasured += usize::from(!rs.is_finite());
    let _ = writeln!(
        m,
        "\ncrashvmm's vmcore figures in parts 1 and 4 are its ELF file (`--vmcore-format elf`, QEMU's format; \
         part 5 measures the default kdump-compressed one), without the opt-in whole-file SHA-256; part 1 shows \
         `--vmcore-sha256 on` beside them.\n"
    );
    notes_on_missed(&mut m, r, &sums, &missed, unmeasured);

    // ---- Machine ----------------------------------------------------------------------------
    let mc = &r.machine;
    let _ = writeln!(m, "## Machine\n");
    let _ = writeln!(m, "| | |\n|---|---|");
    let _ = writeln!(m, "| CPU | {} ({} CPUs) |", mc.cpu_model, mc.cpus);
    let _ = writeln!(m, "| memory | {:.1} GiB |", mc.mem_total_gib);
    let _ = writeln!(m, "| OS, kernel | {}, {} |", mc.os, mc.kernel);
    let _ = writeln!(m, "| disk (dumps, copies) | {} |", mc.disk);
    let _ = writeln!(m, "| KVM | {} |", mc.kvm);
    let _ = writeln!(m, "| SHA-256, one core (sha2 crate) | {} GB/s |", f(r.sha256_gbps, 2));
    let _ = writeln!(m, "| QEMU | {} |", mc.qemu_version);
    let _ = writeln!(m, "| crashvmm | {} (commit {}) |", mc.crashvmm_version, mc.git_commit);
    let _ = writeln!(m, "| load average before / after | {} / {} |", mc.load_before, mc.load_after);
    let _ = writeln!(m);

    // ---- Method -----------------------------------------------------------------------------
    let _ = writeln!(m, "## Method\n");
    let _ = writeln!(
        m,
        "One VMM runs at a time. The guest for parts 1, 2 and 4 is the project's test guest \
         (`build/images/testguest/testguest.elf`, a PVH ELF), booted by crashvmm \
         (`crashvmm run --kernel testguest.elf --cmdline testguest.scenario=...`, one vCPU) and by QEMU \
         (`qemu-system-x86_64 -M microvm -accel kvm -cpu {cpu} -smp 1 -nodefaults -no-user-config -display none \
         -kernel testguest.elf -append testguest.scenario=... -device pvpanic`), both on this machine's \
         `/dev/kvm`. (`-arch-capabilities`: this `/dev/kvm` refuses that MSR and plain `-cpu host` aborts.)\n",
        cpu = super::QEMU_CPU
    );
    let _ = writeln!(
        m,
        "1. **vmcore.** A file of incompressible pseudo-random bytes of 10% of the guest's memory is the \
         initrd of both VMMs, so both guests have the same pages touched; the guest's `bench-panic` scenario \
         writes pvpanic PANICKED and halts. crashvmm: `--hyperv off --on-panic host-dump --after-crash exit` \
         `--vmcore-format elf` (without Hyper-V crashvmm does not first wait for a Hyper-V crash report), without \
         the hash (`report.json`'s `vmcore.sha256` is `null`, which the harness checks). Its time is the \
         `duration_ms` of its `vmcore_written` event (VMCOREINFO scan, writing the non-zero pages, fsync), \
         split into those three by its debug log line (`RUST_LOG={rust_log}`). Once per size it runs again \
         with `--vmcore-sha256 on` (a second thread computes the SHA-256 of the whole file, holes included, \
         while the pages are written): what the opt-in hash costs, not part of the targets. QEMU: \
         `-action panic=pause` and a QMP socket; at `GUEST_PANICKED`, `dump-guest-memory` (ELF, `paging: false`, `detach: false`) is timed to its answer, then the `fsync` of its file \
         separately (QEMU returns before its data is on disk; crashvmm's time includes its fsync, so \
         \"to disk\" compares both at the same point). The sequential copy is `dd bs=16M conv=fsync` of the \
         random file from the page cache: the same touched bytes, written once, the practical limit of \
         this disk. `sync` runs before every measurement; every file is deleted right after it is measured. \
         Runs per size, interleaved: crashvmm's default and the copy {reps}, QEMU {qreps} ({qreps_large} from \
         16 GiB on; `--quick`: 1 each). \
         GB/s is guest memory size / time (decimal GB). Sizes on disk: apparent size and allocated blocks.\n\
         2. **Overhead.** crashvmm with its defaults (Hyper-V on), QEMU as above. Start: from just before \
         `spawn` to the first byte of the guest's serial output on a pipe (scenario `boot`), median of several \
         runs: the first instructions of the test guest's 32-bit PVH entry write a newline to COM1 (`mov`, \
         `mov`, `out`; its `TG: ` lines follow), so this is the VMM's start to the guest's first instruction \
         plus that one port write reaching the pipe (QEMU's includes its firmware, qboot, which loads the \
         kernel through fw_cfg and jumps to that entry); for crashvmm also to its `vm_started` event (vCPUs \
         about to run). Resident memory: at the `bench-panic` halt (crashvmm `--on-panic pause`, QEMU \
         `-action panic=pause`), `Rss` of `/proc/PID/smaps_rollup` minus the `Rss` of the guest RAM \
         mappings (the anonymous mappings of 256 MiB or more in `/proc/PID/smaps`, listed in the raw data).\n\
         3. **Crash path, real Linux.** crashvmm: the `kdump` scenario of the scenario runner (Debian 6.1 \
         cloud kernel, 768 MiB, 2 vCPUs, `crashkernel=192M`, a crash kernel loaded with `kexec -p`, sysrq \
         crash); times from its event log. QEMU: the same kernel, initramfs, command line, memory and vCPUs \
         with `-M pc -accel kvm -cpu host,kvm=off,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash -device \
         vmbus-bridge -device pvpanic`, the crash disk as `virtio-blk-pci`, once with QEMU's default panic \
         action and once with `-action panic=none`; a driver timestamps its console lines and keeps its QMP \
         events and its `vmbus_*` trace (`-trace vmbus_* -msg timestamp=on`), all on one clock. Time 0 is the \
         guest's pvpanic write (crashvmm's `pvpanic` event, QEMU's `GUEST_CRASHLOADED`). UNLOAD handling: \
         crashvmm's `latency_us` (UNLOAD received to UNLOAD_RESPONSE in the guest's message page); QEMU's \
         `vmbus_recv_message type 16` to the `vmbus_msg_cb` of its `vmbus_post_msg type 17`. {where_}\n\
         4. **Growth.** Each figure at {large} GiB divided by the same figure at {small} GiB.\n",
        rust_log = super::vmcore::CRASHVMM_RUST_LOG,
        reps = super::vmcore::REPS,
        qreps = super::vmcore::QEMU_REPS,
        qreps_large = super::vmcore::QEMU_REPS_LARGE,
        where_ = match r.crash.mode.as_str() {
            "testhost" =>
                "Here both ran in the software KVM test host (`qemu-system-x86_64 -accel tcg -cpu max` \
                           with nested `kvm_amd`), whose guests run under emulation: its absolute times are \
                           many times those of hardware KVM, so compare crashvmm and QEMU as ratios, not as \
                           absolute speeds.",
            "direct" => "Here both ran directly on hardware KVM.",
            _ => "This run did not measure it.",
        }
    );

    // ---- 1. vmcore --------------------------------------------------------------------------
    let _ = writeln!(m, "## 1. Host-side vmcore throughput\n");
    let _ = writeln!(
        m,
        "Medians of the runs (min-max in brackets). crashvmm writes its ELF file without the hash (`report.json`'s \
         `vmcore.sha256` is `null`). QEMU/crashvmm is the speed-up of crashvmm, both to data on disk. The last \
         two columns are crashvmm with `--vmcore-sha256 on` (one run per size) and what it adds to the \
         default's median: that hash reads the whole file, holes included, at about {} GB/s on one core \
         here, i.e. {} s per GiB of guest memory.\n",
        f(r.sha256_gbps, 2),
        f(ratio(GIB as f64 / 1e9, r.sha256_gbps), 2)
    );
    let _ = writeln!(
        m,
        "| guest | touched | crashvmm s | crashvmm GB/s | QEMU dump s | QEMU + fsync s | QEMU GB/s (to disk) | QEMU / crashvmm | sequential copy s | crashvmm / copy | crashvmm `--vmcore-sha256 on` s | the hash adds s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (res, s) in r.vmcore.iter().zip(&sums) {
        let _ = writeln!(
            m,
            "| {} GiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            res.gib,
            mib_b(res.touched_bytes),
            spread(&res.crashvmm.iter().map(|d| d.dump_s).collect::<Vec<_>>(), 2),
            f(gbps(res.guest_bytes, s.crashvmm_s), 2),
            spread(&res.qemu.iter().map(|d| d.dump_s).collect::<Vec<_>>(), 2),
            spread(&res.qemu.iter().map(|d| d.durable_s()).collect::<Vec<_>>(), 2),
            f(gbps(res.guest_bytes, s.qemu_durable_s), 2),
            times(s.speedup()),
            spread(&res.copy.iter().map(|c| c.seconds).collect::<Vec<_>>(), 2),
            xs(s.vs_copy()),
            spread(&res.crashvmm_sha256.iter().map(|d| d.dump_s).collect::<Vec<_>>(), 2),
            f(s.hash_adds_s(), 2)
        );
    }
    let _ = writeln!(
        m,
        "\nWhere crashvmm's time goes (medians of its own split, from its `vmm::crash::vmcore` debug log line): \
         the VMCOREINFO scan, writing the non-zero pages (pagemap, zero-page checks, `pwrite`s into the page \
         cache), the fsync. With `--vmcore-sha256 on` a second thread hashes while the pages are written, so \
         \"write\" lasts until both are done.\n"
    );
    let _ = writeln!(
        m,
        "| guest | scan s | write s | fsync s | total s | write, `--vmcore-sha256 on` s | sequential copy s |\n|---|---|---|---|---|---|---|"
    );
    for s in &sums {
        let _ = writeln!(
            m,
            "| {} GiB | {} | {} | {} | {} | {} | {} |",
            s.gib,
            f(s.scan_s, 3),
            f(s.write_s, 3),
            f(s.fsync_s, 3),
            f(s.crashvmm_s, 3),
            f(s.sha256_write_s, 3),
            f(s.copy_s, 3)
        );
    }
    let _ = writeln!(m, "\nFiles on disk (apparent size / allocated):\n");
    let _ = writeln!(m, "| guest | crashvmm vmcore | QEMU vmcore |\n|---|---|---|");
    for s in &sums {
        let _ = writeln!(
            m,
            "| {} GiB | {} / {} | {} / {} |",
            s.gib,
            gib(s.crashvmm_apparent as u64),
            mib_b(s.crashvmm_alloc as u64),
            gib(s.qemu_apparent as u64),
            gib(s.qemu_alloc as u64)
        );
    }
    for res in &r.vmcore {
        for n in &res.notes {
            let _ = writeln!(m, "\n- {} GiB: {n}", res.gib);
        }
    }
    let _ = writeln!(m);

    // ---- 2. overhead ------------------------------------------------------------------------
    let _ = writeln!(m, "## 2. VMM overhead\n");
    let _ = writeln!(
        m,
        "| guest | start, crashvmm ms | crashvmm to `vm_started` ms | start, QEMU microvm ms | crashvmm own RSS MiB | QEMU own RSS MiB | guest RAM resident (crashvmm / QEMU) MiB |\n|---|---|---|---|---|---|---|"
    );
    for g in r.overhead_sizes() {
        let _ = writeln!(
            m,
            "| {g} GiB | {} | {} | {} | {} | {} | {} / {} |",
            spread(&start_ms(o, Vmm::Crashvmm, g), 1),
            spread(&vm_started_ms(o, g), 1),
            spread(&start_ms(o, Vmm::Qemu, g), 1),
            spread(&rss_mib(o, Vmm::Crashvmm, g), 1),
            spread(&rss_mib(o, Vmm::Qemu, g), 1),
            f(median(&guest_rss_mib(o, Vmm::Crashvmm, g)), 1),
            f(median(&guest_rss_mib(o, Vmm::Qemu, g)), 1)
        );
    }
    for n in &o.notes {
        let _ = writeln!(m, "\n- {n}");
    }
    let _ = writeln!(m);

    // ---- 3. crash path ----------------------------------------------------------------------
    crash_section(&mut m, r);

    // ---- 4. growth --------------------------------------------------------------------------
    growth_section(&mut m, r, &sums, small, large);

    // ---- 5. filtered dumps ------------------------------------------------------------------
    kdump_section(&mut m, r);

    // ---- 6. live dumps ----------------------------------------------------------------------
    super::live::section(&mut m, &r.live);

    // ---- 7. crash analysis ------------------------------------------------------------------
    super::analysis::section(&mut m, &r.analysis);

    // ---- 8. a fleet's store -----------------------------------------------------------------
    super::fleet::section(&mut m, &r.fleet);

    // ---- 9. the network ---------------------------------------------------------------------
    super::net::section(&mut m, &r.net);

    let _ = writeln!(m, "## Plot\n\n![crashvmm vs QEMU]({png_name})\n");
    raw_section(&mut m, r);
    m
}

/// The parts merged in from runs of their own (`--only PART`, then `--from-json`), for the
/// header: ", but part 8's: measured on its own (`--only fleet`) on DATE".
fn merged_parts(r: &Results) -> String {
    let parts: Vec<String> = [
        (8, "fleet", r.fleet.alone && !r.fleet.crashes_s.is_empty(), &r.fleet.measured_at),
        (9, "net", r.net.alone && !r.net.runs.is_empty(), &r.net.measured_at),
    ]
    .into_iter()
    .filter(|(_, _, alone, _)| *alone)
    .map(|(n, name, _, at)| {
        format!("part {n}'s: measured on its own (`--only {name}`) on {}", at.as_deref().unwrap_or("?"))
    })
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(", but {}", parts.join("; "))
    }
}

fn med_s(runs: &[Run]) -> f64 {
    median(&runs.iter().map(|d| d.seconds).collect::<Vec<_>>())
}

fn med_bytes(runs: &[Run]) -> f64 {
    median(&runs.iter().map(|d| d.file_bytes as f64).collect::<Vec<_>>())
}

fn counts_row(m: &mut String, who: &str, gib: u64, c: &Counts) {
    let _ = writeln!(
        m,
        "| {gib} GiB | {who} | {} | {} | {} | {} | {} | {} | {} |",
        c.total, c.zero, c.cache, c.cache_private, c.user, c.free, c.kept
    );
}

/// One VMM's (or codec's) runs of a size.
type RunsOf = fn(&KdumpSize) -> &[Run];

/// QEMU's pause: its dump, to the command's answer (the fsync after it is not a pause).
fn med_pause_s(runs: &[Run]) -> f64 {
    median(&runs.iter().map(|d| d.seconds - d.fsync_s.unwrap_or(0.0)).collect::<Vec<_>>())
}

/// A codec's name in part 5, "lzo, the default" for crashvmm's default.
fn codec_label(k: &KdumpSize, codec: &str) -> String {
    if k.default_codec == codec {
        format!("{codec}, the default")
    } else {
        codec.to_string()
    }
}

/// A verdict where both sides were measured.
fn judged(ok: bool, measured: bool) -> &'static str {
    if measured {
        met(ok)
    } else {
        "not measured"
    }
}

/// Part 5's targets: (what, measured, verdict), one row each.
pub fn kdump_targets(sizes: &[KdumpSize]) -> Vec<(String, String, &'static str)> {
    let mut rows = Vec::new();
    let ratio_row = |what: String, x: f64, target: f64| (what, times(x), judged(x >= target, x.is_finite()));
    // Issue 24: the default dump is never slower than QEMU's ELF, nor pauses the guest longer.
    for k in sizes {
        let (ours, codec) = (med_s(k.default_runs()), &k.default_codec);
        let (q_total, q_pause) = (med_s(&k.qemu_elf), med_pause_s(&k.qemu_elf));
        let both = ours.is_finite() && q_total.is_finite();
        rows.push((
            format!("the default dump ({codec}) at {} GiB finishes sooner than QEMU ELF (both to data on disk)", k.gib),
            format!("{} against {}", unit(ours, 2, "s"), unit(q_total, 2, "s")),
            judged(ours < q_total, both),
        ));
        rows.push((
            format!(
                "the default dump ({codec}) at {} GiB pauses the guest for less than QEMU ELF (crashvmm: the whole \
                 dump; QEMU: to its answer)",
                k.gib
            ),
            format!("{} against {}", unit(ours, 2, "s"), unit(q_pause, 2, "s")),
            judged(ours < q_pause, both),
        ));
    }
    if let Some(big) = sizes.iter().max_by_key(|k| k.gib) {
        let ours = med_bytes(big.default_runs());
        let theirs = med_bytes(big.makedumpfile_default_codec());
        let flag = if big.default_codec == "lzo" { "-l" } else { "-c" };
        rows.push((
            format!(
                "the default dump's file ({}) at {} GiB no larger than makedumpfile -d 31 {flag}'s (the same codec)",
                big.default_codec, big.gib
            ),
            format!("{} against {}", mib_b(ours as u64), mib_b(theirs as u64)),
            judged(ours <= theirs, ours.is_finite() && theirs.is_finite()),
        ));
        for codec in ["zlib", "lzo"] {
            let ours = med_s(big.runs(codec));
            for (what, theirs, target) in [
                ("QEMU ELF", med_s(&big.qemu_elf), TARGET_KDUMP_VS_QEMU_ELF),
                ("QEMU -z", med_s(&big.qemu_z), TARGET_KDUMP_VS_QEMU_Z),
            ] {
                let what = format!(
                    "crashvmm ({}) at {} GiB at least {target}x faster than {what}",
                    codec_label(big, codec),
                    big.gib
                );
                rows.push(ratio_row(what, ratio(theirs, ours), target));
            }
        }
    }
    for codec in ["zlib", "lzo"] {
        for k in sizes {
            let what = format!(
                "crashvmm ({}) at {} GiB at least {TARGET_KDUMP_VS_MAKEDUMPFILE}x faster than makedumpfile -d 31 -c",
                codec_label(k, codec),
                k.gib
            );
            rows.push(ratio_row(
                what,
                ratio(med_s(&k.makedumpfile), med_s(k.runs(codec))),
                TARGET_KDUMP_VS_MAKEDUMPFILE,
            ));
        }
    }
    rows
}

/// Part 5: crashvmm's filtered kdump dump against QEMU and makedumpfile.
fn kdump_section(m: &mut String, r: &Results) {
    if r.kdump.is_empty() {
        return;
    }
    let default = r.kdump.first().map_or("zlib", |k| k.default_codec.as_str());
    let _ = writeln!(
        m,
        "## 5. Filtered dumps: crashvmm's kdump-compressed `-d 31` against QEMU and makedumpfile
"
    );
    let _ = writeln!(
        m,
        "The test guest's `bench-kdump` scenario (`guest-images/testguest/src/scenarios/bench_kdump.rs`) builds \
         what a dump filter reads on Linux 6.1 x86_64: a VMCOREINFO note (OSRELEASE 6.1.0-57-cloud-amd64), \
         4-level kernel page tables (kernel image, direct map, vmemmap), SPARSEMEM_EXTREME mem_section, a \
         `struct page` for every PFN, node 0's zones with buddy free lists and nr_free. About 90% of the pages \
         are page cache and anonymous user pages, each filled with a per-page pattern, 5% are kernel pages \
         (struct pages, and data a quarter random) and 5% free; then pvpanic. Each run boots the guest afresh \
         on `/dev/kvm` (one VMM at a time). crashvmm: `--vmcore-format kdump --dump-level 31` with each codec, \
         `--vmcore-compress zlib` (level 6) and `lzo` (its own LZO1X compressor); {default}, its default, is run \
         without the option. Its time is its `vmcore_written` `duration_ms` (find VMCOREINFO, classify, compress \
         on all cores, write, fsync); the guest is paused throughout, so that is also its pause. QEMU: \
         `dump-guest-memory` (`paging: false`) as ELF and as `kdump-zlib` (its `-z`), to the command's answer \
         (the guest's pause) plus the fsync of the file. makedumpfile: `makedumpfile -d 31 -c` and `-l` \
         (Debian's, zlib level 1 and LZO, one thread) on the ELF crashvmm writes with `--vmcore-format elf \
         --dump-level 0`, from its start to its output fsynced (the ELF is read from the page cache as far as it \
         holds it).\n"
    );
    let lbl = |codec: &str| if codec == default { format!("{codec} (default)") } else { codec.to_string() };
    let _ = writeln!(
        m,
        "| guest | guest layout | crashvmm -d 31 {} | crashvmm -d 31 {} | makedumpfile -d 31 -c | makedumpfile -d 31 -l | QEMU ELF (its pause) | QEMU -z | QEMU ELF / crashvmm (zlib, lzo) | QEMU -z / crashvmm (zlib, lzo) | makedumpfile -c / crashvmm (zlib, lzo) | file: crashvmm zlib / lzo / makedumpfile -c / -l / QEMU -z / QEMU ELF |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
        lbl("zlib"),
        lbl("lzo")
    );
    for k in &r.kdump {
        let (zl, lz) = (med_s(&k.crashvmm), med_s(&k.crashvmm_lzo));
        let both = |theirs: f64| format!("{}, {}", times(ratio(theirs, zl)), times(ratio(theirs, lz)));
        let setup: Vec<f64> = k.crashvmm.iter().chain(&k.crashvmm_lzo).filter_map(|d| d.guest_setup_s).collect();
        let _ = writeln!(
            m,
            "| {} GiB | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} / {} / {} / {} / {} / {} |",
            k.gib,
            unit(median(&setup), 1, "s"),
            unit(zl, 2, "s"),
            unit(lz, 2, "s"),
            unit(med_s(&k.makedumpfile), 2, "s"),
            unit(med_s(&k.makedumpfile_lzo), 2, "s"),
            unit(med_s(&k.qemu_elf), 2, "s"),
            unit(med_pause_s(&k.qemu_elf), 2, "s"),
            unit(med_s(&k.qemu_z), 2, "s"),
            both(med_s(&k.qemu_elf)),
            both(med_s(&k.qemu_z)),
            both(med_s(&k.makedumpfile)),
            mib_b(med_bytes(&k.crashvmm) as u64),
            mib_b(med_bytes(&k.crashvmm_lzo) as u64),
            mib_b(med_bytes(&k.makedumpfile) as u64),
            mib_b(med_bytes(&k.makedumpfile_lzo) as u64),
            mib_b(med_bytes(&k.qemu_z) as u64),
            mib_b(med_bytes(&k.qemu_elf) as u64),
        );
    }
    // Every run of one VMM, per size: "1 GiB [0.79, 0.81], 4 GiB [...]".
    let every = |runs: RunsOf| {
        r.kdump
            .iter()
            .map(|k| {
                format!("{} GiB [{}]", k.gib, runs(k).iter().map(|d| f(d.seconds, 2)).collect::<Vec<_>>().join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        m,
        "\nEvery run (seconds): crashvmm {} {}; crashvmm {} {}; makedumpfile -c {}; makedumpfile -l {}; QEMU ELF {}; \
         QEMU -z {}.\n",
        lbl("zlib"),
        every(|k| &k.crashvmm),
        lbl("lzo"),
        every(|k| &k.crashvmm_lzo),
        every(|k| &k.makedumpfile),
        every(|k| &k.makedumpfile_lzo),
        every(|k| &k.qemu_elf),
        every(|k| &k.qemu_z)
    );
    let _ = writeln!(m, "| target | measured | result |\n|---|---|---|");
    for (what, measured, verdict) in kdump_targets(&r.kdump) {
        let _ = writeln!(m, "| {what} | {measured} | {verdict} |");
    }
    if let (Some(small), Some(big)) = (r.kdump.iter().min_by_key(|k| k.gib), r.kdump.iter().max_by_key(|k| k.gib)) {
        if big.gib > small.gib {
            let kept = |k: &KdumpSize| {
                median(&k.crashvmm.iter().filter_map(|d| d.counts.as_ref()).map(|c| c.kept as f64).collect::<Vec<_>>())
            };
            let _ = writeln!(
                m,
                "\nGrowth: crashvmm's time at {} GiB / {} GiB is **{}** (zlib) and **{}** (lzo) for a guest {}x larger, \
                 whose kernel pages (the pages written with data) grew {}: the time follows the pages kept, not the \
                 guest's size.\n",
                big.gib,
                small.gib,
                xs(ratio(med_s(&big.crashvmm), med_s(&small.crashvmm))),
                xs(ratio(med_s(&big.crashvmm_lzo), med_s(&small.crashvmm_lzo))),
                big.gib / small.gib.max(1),
                xs(ratio(kept(big), kept(small))),
            );
        }
    }
    let _ = writeln!(
        m,
        "Pages per class, as each filter counted them (the guest's struct pages say which; makedumpfile's from its \
         `--message-level 23` report). crashvmm's free-page guard (struct pages, `nr_free` and the free lists \
         agree) and its effective level are in the last column.\n"
    );
    let _ = writeln!(m, "| guest | filter | pages | zero | cache | private cache | user | free | written with data |\n|---|---|---|---|---|---|---|---|---|");
    for k in &r.kdump {
        if let Some(d) = k.crashvmm.first() {
            if let Some(c) = &d.counts {
                let who = format!(
                    "crashvmm (effective level {}, free guard {})",
                    d.effective_level.map_or("?".into(), |l| l.to_string()),
                    match d.free_guard_passed {
                        Some(true) => "passed",
                        Some(false) => "failed",
                        None => "n/a",
                    }
                );
                counts_row(m, &who, k.gib, c);
            }
        }
        if let Some(c) = k.makedumpfile.first().and_then(|d| d.counts.as_ref()) {
            counts_row(m, "makedumpfile 1.7.2", k.gib, c);
        }
    }
    for k in &r.kdump {
        for n in &k.notes {
            let _ = writeln!(m, "\n- {} GiB: {n}", k.gib);
        }
    }
    let _ = writeln!(m);
}

fn notes_on_missed(m: &mut String, r: &Results, sums: &[SizeSummary], missed: &[String], unmeasured: usize) {
    if missed.is_empty() {
        if unmeasured == 0 {
            let _ = writeln!(m, "Every target was met in this run.\n");
        } else {
            let _ = writeln!(m, "Every target measured in this run was met ({unmeasured} not measured).\n");
        }
        return;
    }
    let _ = writeln!(m, "### Why a target was missed, and what would close it\n");
    for (res, s) in r.vmcore.iter().zip(sums) {
        let vs_qemu = missed.iter().any(|x| x == &format!("vmcore-qemu-{}", s.gib));
        let vs_copy = missed.iter().any(|x| x == &format!("vmcore-copy-{}", s.gib));
        if vs_qemu || vs_copy {
            vmcore_note(m, r, res, s, vs_qemu, vs_copy);
        }
    }
    if missed.iter().any(|x| x == "start") {
        let _ = writeln!(
            m,
            "- **start**: the first serial byte comes from the guest's first instructions, so the time is the \
             VMM's own start (process, KVM VM, guest memory, loading the kernel) and the pipe; see the \
             `vm_started` column for crashvmm's part up to its vCPUs running."
        );
    }
    if missed.iter().any(|x| x == "rss") {
        let _ = writeln!(
            m,
            "- **resident memory**: see the raw mappings below for what the VMM keeps resident beside guest RAM."
        );
    }
    let _ = writeln!(m);
}

/// Why crashvmm's default vmcore missed a target at one size: its split against the copy, and
/// whether even its fastest run misses (the method) or only the median (this machine's noise).
fn vmcore_note(m: &mut String, r: &Results, res: &SizeResult, s: &SizeSummary, vs_qemu: bool, vs_copy: bool) {
    let dumps: Vec<f64> = res.crashvmm.iter().map(|d| d.dump_s).collect();
    let writes: Vec<f64> = res.crashvmm.iter().filter_map(|d| d.phases).map(|p| p.write_s).collect();
    let copies: Vec<f64> = res.copy.iter().map(|c| c.seconds).collect();
    let range = |v: &[f64]| format!("{}-{}", f(min(v), 3), f(max(v), 3));
    let mut text = format!(
        "- **vmcore, {} GiB** ({}). crashvmm's default (no hash) took {} s (runs {} s): VMCOREINFO scan {} s, \
         write {} s (runs {} s; the {} touched: the pagemap of all {} GiB, zero-page checks, `pwrite`s into \
         the page cache), fsync {} s (medians). The sequential copy of the same bytes took {} s (runs {} s).",
        s.gib,
        match (vs_qemu, vs_copy) {
            (true, true) => "against QEMU and against the copy",
            (true, false) => "against QEMU",
            _ => "against the copy",
        },
        f(s.crashvmm_s, 3),
        range(&dumps),
        f(s.scan_s, 3),
        f(s.write_s, 3),
        range(&writes),
        mib_b(res.touched_bytes),
        s.gib,
        f(s.fsync_s, 3),
        f(s.copy_s, 3),
        range(&copies)
    );
    if vs_qemu {
        let _ = write!(
            text,
            " QEMU took {} s to disk, {}x crashvmm's time, short of {TARGET_VS_QEMU}x.",
            f(s.qemu_durable_s, 2),
            f(s.speedup(), 1)
        );
    }
    let best = ratio(min(&dumps), min(&copies));
    if vs_copy && best <= TARGET_VS_COPY {
        let _ = write!(
            text,
            " Its fastest run was {} the fastest copy, within {TARGET_VS_COPY}x: the median misses through \
             run-to-run variation of this machine, in crashvmm's page-cache writes and in the copy alike, not \
             through the method. What would close it: a quieter machine (or more repetitions).",
            xs(best)
        );
    } else if vs_copy {
        let _ = write!(
            text,
            " Even its fastest run was {} the fastest copy. What would close it: the part of crashvmm's write \
             that the copy does not do (walking the pagemap of the whole guest, checking pages for zeros, more \
             and smaller writes), which the scan and write times above bound.",
            xs(best)
        );
    }
    if res.crashvmm_sha256.iter().any(|d| d.dump_s.is_finite()) {
        let _ = write!(
            text,
            " With `--vmcore-sha256 on` it took {} s: hashing {} GiB at {} GB/s alone takes {} s.",
            f(s.crashvmm_sha256_s, 2),
            s.gib,
            f(r.sha256_gbps, 2),
            f(ratio(s.gib as f64 * GIB as f64 / 1e9, r.sha256_gbps), 2)
        );
    }
    let _ = writeln!(m, "{text}");
}

fn row(m: &mut String, name: &str, a: Option<f64>, b: &[Option<f64>], prec: usize) {
    let bs: Vec<String> = b.iter().map(|v| fo(*v, prec)).collect();
    let _ = writeln!(m, "| {name} | {} | {} |", fo(a, prec), bs.join(" | "));
}

fn crash_section(m: &mut String, r: &Results) {
    let c = &r.crash;
    let _ = writeln!(m, "## 3. Crash path latency\n");
    let _ = writeln!(
        m,
        "### Real Linux ({})\n\nSeconds after the guest's pvpanic write (crashvmm's `pvpanic` event, QEMU's \
         `GUEST_CRASHLOADED`){}.\n",
        if c.mode == "testhost" { "software KVM test host, TCG: ratios, not absolute speeds" } else { "hardware KVM" },
        if c.mode == "testhost" {
            "; the test host emulates everything, so these are many times hardware times"
        } else {
            ""
        }
    );
    let cv = c.crashvmm.clone().unwrap_or_default();
    let none = c.qemu.iter().find(|q| q.action == "none").cloned().unwrap_or_default();
    let dflt = c.qemu.iter().find(|q| q.action == "default").cloned().unwrap_or_default();
    let _ =
        writeln!(m, "| step | crashvmm | QEMU, `-action panic=none` | QEMU, default panic action |\n|---|---|---|---|");
    let us = |v: Option<u64>| v.map(|x| x as f64);
    let _ = writeln!(m, "| **both VMMs, the same point** | | | |");
    row(
        m,
        "VMM start -> pvpanic write (first kernel's boot, `kexec -p`, crash)",
        cv.boot_to_panic_s,
        &[none.boot_to_panic_s, dflt.boot_to_panic_s],
        2,
    );
    let _ = writeln!(
        m,
        "| VMBus UNLOAD handling, host side (us) | {} | {} | {} |",
        fo(us(cv.unload_latency_us), 0),
        fo(us(none.unload_latency_us), 0),
        fo(us(dflt.unload_latency_us), 0)
    );
    row(
        m,
        "pvpanic -> Hyper-V crash report (crash MSRs)",
        cv.hv_crash_s,
        &[none.guest_panicked_s, dflt.guest_panicked_s],
        3,
    );
    row(m, "pvpanic -> UNLOAD received", cv.unload_requested_s, &[none.unload_received_s, dflt.unload_received_s], 3);
    row(m, "pvpanic -> UNLOAD answered", cv.unload_answered_s, &[none.unload_answered_s, dflt.unload_answered_s], 3);
    row(
        m,
        "pvpanic -> crash kernel's VMBus reconnect",
        cv.vmbus_reconnected_s,
        &[none.vmbus_reconnected_s, dflt.vmbus_reconnected_s],
        2,
    );
    row(m, "pvpanic -> kdump done, VM ended", cv.kdump_done_s, &[none.qemu_exit_s, dflt.qemu_exit_s], 2);
    let _ = writeln!(m, "| **seen by one VMM only** | | | |");
    row(m, "pvpanic -> kexec (Hyper-V torn down; crashvmm)", cv.kexec_s, &[None, None], 3);
    row(m, "pvpanic -> crash kernel sets Hyper-V up again (crashvmm)", cv.crash_kernel_started_s, &[None, None], 2);
    row(
        m,
        "pvpanic -> crash kernel's first console line (QEMU's driver)",
        None,
        &[none.crash_kernel_first_line_s, dflt.crash_kernel_first_line_s],
        2,
    );
    let _ = writeln!(m);
    let _ = writeln!(m, "What QEMU did with the same panic:\n");
    for q in [&dflt, &none] {
        describe_qemu(m, q);
    }
    if let Some(s) = c.crashvmm_wall_s {
        let _ = writeln!(
            m,
            "- crashvmm: pvpanic bits {}, exit code {}{}; the scenario took {:.0} s wall.",
            cv.pvpanic_bits.map_or("?".into(), |b| format!("{b:#x}")),
            cv.exit_code.map_or("?".into(), |c| c.to_string()),
            cv.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            s
        );
    }
    for n in &c.notes {
        let _ = writeln!(m, "- {n}");
    }
    let _ = writeln!(m);

    let _ = writeln!(
        m,
        "### Test guest on `/dev/kvm` directly: UNLOAD handling per guest size (crashvmm)\n\n\
         The test guest's `kdump` scenario (pvpanic CRASH_LOADED, VMBus UNLOAD, Hyper-V teardown, a \
         second-stage kernel that sets Hyper-V up again and reconnects), `--host-dump never`, one vCPU.\n"
    );
    let _ =
        writeln!(m, "| guest | UNLOAD handling, us | pvpanic -> crash kernel started, ms | runs |\n|---|---|---|---|");
    let mut sizes: Vec<u64> = c.testguest.iter().map(|t| t.gib).collect();
    sizes.dedup();
    for g in sizes {
        let ms: Vec<f64> = tg_crash_kernel_s(c, g).iter().map(|s| s * 1000.0).collect();
        let _ = writeln!(
            m,
            "| {g} GiB | {} | {} | {} |",
            spread(&unload_us(c, g), 0),
            spread(&ms, 2),
            unload_us(c, g).len()
        );
    }
    let _ = writeln!(
        m,
        "\nQEMU cannot run this: asked for the same Hyper-V (`hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash`) on \
         this `/dev/kvm` it answers: `{}`. QEMU's Hyper-V is KVM's in-kernel one, which this `/dev/kvm` lacks \
         (`KVM_CAP_HYPERV` is 0); crashvmm's is in userspace.\n",
        c.qemu_hyperv_here.as_deref().unwrap_or("n/a")
    );
}

fn describe_qemu(m: &mut String, q: &QemuPath) {
    if q.action.is_empty() {
        return;
    }
    let events: Vec<String> = q.qmp_events.iter().map(|(n, t)| format!("{n} at {t:+.3} s")).collect();
    let fate = if q.crash_kernel_first_line_s.is_some() {
        "the crash kernel booted".to_string()
    } else {
        "the crash kernel never ran".to_string()
    };
    let _ = writeln!(
        m,
        "- QEMU, {}: QMP events {}; panic action `{}`; {}; QEMU {} (exit code {}).{}",
        if q.action == "default" {
            "default panic action".to_string()
        } else {
            format!("`-action panic={}`", q.action)
        },
        if events.is_empty() { "none".into() } else { events.join(", ") },
        q.panic_action.as_deref().unwrap_or("?"),
        fate,
        q.qemu_exit_s.map_or("did not exit".into(), |t| format!("exited {t:.2} s after the pvpanic write")),
        q.exit_code.map_or("?".into(), |c| c.to_string()),
        q.note.as_deref().map(|n| format!(" {n}")).unwrap_or_default()
    );
}

fn growth_section(m: &mut String, r: &Results, sums: &[SizeSummary], small: u64, large: u64) {
    let _ = writeln!(m, "## 4. Growth with guest size ({small} -> {large} GiB)\n");
    let _ = writeln!(m, "| figure | crashvmm {small} GiB | crashvmm {large} GiB | ratio | QEMU {small} GiB | QEMU {large} GiB | ratio |\n|---|---|---|---|---|---|---|");
    let (a, b) = (sums.iter().find(|s| s.gib == small), sums.iter().find(|s| s.gib == large));
    let line = |m: &mut String, name: &str, c1: f64, c2: f64, q1: f64, q2: f64, prec: usize| {
        let _ = writeln!(
            m,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            f(c1, prec),
            f(c2, prec),
            times(ratio(c2, c1)),
            f(q1, prec),
            f(q2, prec),
            times(ratio(q2, q1))
        );
    };
    if let (Some(a), Some(b)) = (a, b) {
        line(m, "vmcore time, s (QEMU: + fsync)", a.crashvmm_s, b.crashvmm_s, a.qemu_durable_s, b.qemu_durable_s, 2);
        line(
            m,
            "vmcore time with `--vmcore-sha256 on`, s",
            a.crashvmm_sha256_s,
            b.crashvmm_sha256_s,
            f64::NAN,
            f64::NAN,
            2,
        );
        let mb = |v: f64| v / (1 << 20) as f64;
        line(
            m,
            "vmcore on disk, MiB",
            mb(a.crashvmm_alloc),
            mb(b.crashvmm_alloc),
            mb(a.qemu_alloc),
            mb(b.qemu_alloc),
            0,
        );
        line(
            m,
            "vmcore apparent size, MiB",
            mb(a.crashvmm_apparent),
            mb(b.crashvmm_apparent),
            mb(a.qemu_apparent),
            mb(b.qemu_apparent),
            0,
        );
        line(m, "sequential copy of the touched bytes, s", a.copy_s, b.copy_s, f64::NAN, f64::NAN, 2);
    }
    let o = &r.overhead;
    line(
        m,
        "start to the first guest instruction, ms",
        median(&start_ms(o, Vmm::Crashvmm, small)),
        median(&start_ms(o, Vmm::Crashvmm, large)),
        median(&start_ms(o, Vmm::Qemu, small)),
        median(&start_ms(o, Vmm::Qemu, large)),
        1,
    );
    line(
        m,
        "VMM resident memory (own), MiB",
        median(&rss_mib(o, Vmm::Crashvmm, small)),
        median(&rss_mib(o, Vmm::Crashvmm, large)),
        median(&rss_mib(o, Vmm::Qemu, small)),
        median(&rss_mib(o, Vmm::Qemu, large)),
        1,
    );
    line(
        m,
        "UNLOAD handling (test guest), us",
        median(&unload_us(&r.crash, small)),
        median(&unload_us(&r.crash, large)),
        f64::NAN,
        f64::NAN,
        0,
    );
    line(
        m,
        "pvpanic -> crash kernel started (test guest), ms",
        median(&tg_crash_kernel_s(&r.crash, small)) * 1000.0,
        median(&tg_crash_kernel_s(&r.crash, large)) * 1000.0,
        f64::NAN,
        f64::NAN,
        2,
    );
    let _ = writeln!(
        m,
        "\nThe real-Linux crash path ran at one size (768 MiB): in the test host a larger Linux guest costs \
         minutes of emulation per run, and QEMU has no Hyper-V on this `/dev/kvm` for the test guest (n/a \
         above).\n"
    );
}

fn raw_section(m: &mut String, r: &Results) {
    let _ = writeln!(m, "## Raw data\n");
    let _ = writeln!(m, "### vmcore runs\n");
    let _ = writeln!(
        m,
        "crashvmm's fsync is inside its dump time (its split: scan / write / fsync); QEMU's is measured after \
         its dump. sha256: `report.json`'s `vmcore.sha256`, `null` (empty here) unless `--vmcore-sha256 on`.\n"
    );
    let _ = writeln!(m, "| guest | VMM | run | dump s | fsync s | crashvmm scan / write / fsync s | panic -> on disk s | apparent bytes | allocated bytes | sha256 (report.json) |\n|---|---|---|---|---|---|---|---|---|---|");
    for res in &r.vmcore {
        for (name, runs) in
            [("crashvmm", &res.crashvmm), ("crashvmm `--vmcore-sha256 on`", &res.crashvmm_sha256), ("QEMU", &res.qemu)]
        {
            for d in runs.iter() {
                let _ = writeln!(
                    m,
                    "| {} GiB | {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    res.gib,
                    d.rep,
                    f(d.dump_s, 3),
                    fo(d.fsync_s, 3),
                    d.phases.map_or(String::new(), |p| format!(
                        "{} / {} / {}",
                        f(p.scan_s, 3),
                        f(p.write_s, 3),
                        f(p.fsync_s, 3)
                    )),
                    f(d.wall_s, 3),
                    d.apparent_bytes,
                    d.allocated_bytes,
                    d.sha256.as_deref().map(|s| format!("`{}...`", &s[..s.len().min(16)])).unwrap_or_default()
                );
            }
        }
        for c in &res.copy {
            let _ = writeln!(
                m,
                "| {} GiB | dd copy ({} bytes) | {} | {} | | | | | | |",
                res.gib,
                c.bytes,
                c.rep,
                f(c.seconds, 3)
            );
        }
    }
    let _ = writeln!(m, "\n### Start runs (ms)\n");
    let _ = writeln!(
        m,
        "| guest | VMM | first serial byte, each run | crashvmm `vm_started`, each run |\n|---|---|---|---|"
    );
    for g in r.overhead_sizes() {
        for vmm in [Vmm::Crashvmm, Vmm::Qemu] {
            let v: Vec<String> = start_ms(&r.overhead, vmm, g).iter().map(|x| f(*x, 1)).collect();
            let w: Vec<String> = if vmm == Vmm::Crashvmm {
                vm_started_ms(&r.overhead, g).iter().map(|x| f(*x, 1)).collect()
            } else {
                vec![]
            };
            let _ = writeln!(m, "| {g} GiB | {} | {} | {} |", vmm.name(), v.join(", "), w.join(", "));
        }
    }
    let _ = writeln!(m, "\n### Resident memory runs\n");
    let _ = writeln!(m, "| guest | VMM | run | total Rss KiB | guest RAM Rss KiB | VMM own KiB | guest RAM mappings (size KiB / Rss KiB) |\n|---|---|---|---|---|---|---|");
    for x in &r.overhead.rss {
        let maps: Vec<String> =
            x.guest_maps.iter().map(|g| format!("{} {} / {}", g.range, g.size_kib, g.rss_kib)).collect();
        let _ = writeln!(
            m,
            "| {} GiB | {} | {} | {} | {} | {} | {} |",
            x.gib,
            x.vmm.name(),
            x.rep,
            x.total_kib,
            x.guest_ram_kib,
            x.vmm_kib,
            maps.join("; ")
        );
    }
    let _ = writeln!(m, "\n### Crash path records\n");
    let _ = writeln!(m, "```json");
    let _ = writeln!(m, "{}", serde_json::to_string_pretty(&r.crash).unwrap_or_default());
    let _ = writeln!(m, "```");
}

#[cfg(test)]
mod tests {
    use super::super::crashpath::{CrashvmmPath, TestguestUnload};
    use super::super::overhead::{RssRun, StartRun};
    use super::super::vmcore::{CopyRun, DumpRun};
    use super::*;

    fn dump(s: f64, fsync: Option<f64>, alloc: u64, apparent: u64) -> DumpRun {
        DumpRun {
            rep: 0,
            dump_s: s,
            fsync_s: fsync,
            wall_s: s,
            apparent_bytes: apparent,
            allocated_bytes: alloc,
            sha256: None,
            phases: fsync.is_none().then_some(Phases { scan_s: 0.01, write_s: s - 0.11, fsync_s: 0.1 }),
        }
    }

    /// crashvmm with `--vmcore-sha256 on`.
    fn hashed(s: f64, alloc: u64, apparent: u64) -> DumpRun {
        DumpRun { sha256: Some("cd".repeat(32)), ..dump(s, None, alloc, apparent) }
    }

    fn sample() -> Results {
        let size = |g: u64, cv: f64, q: f64| SizeResult {
            gib: g,
            guest_bytes: g * GIB,
            touched_bytes: g * GIB / 10,
            crashvmm: vec![dump(cv, None, g * GIB / 10, g * GIB)],
            crashvmm_sha256: vec![hashed(cv + g as f64 * 0.6, g * GIB / 10, g * GIB)],
            qemu: vec![dump(q, Some(0.5), g * GIB, g * GIB)],
            copy: vec![CopyRun { rep: 0, bytes: g * GIB / 10, seconds: cv / 1.5 }],
            notes: vec![],
        };
        let mut o = Overhead::default();
        for (vmm, ms, kib) in [(Vmm::Crashvmm, 5.0, 3000), (Vmm::Qemu, 60.0, 40000)] {
            for g in [1, 16] {
                o.start.push(StartRun { vmm, gib: g, rep: 0, first_byte_ms: ms, vm_started_ms: Some(ms / 2.0) });
                o.rss.push(RssRun {
                    vmm,
                    gib: g,
                    rep: 0,
                    total_kib: kib + 100,
                    guest_ram_kib: 100,
                    vmm_kib: kib,
                    guest_maps: vec![],
                });
            }
        }
        let mut crash = CrashPath { mode: "testhost".into(), ..Default::default() };
        for g in [1, 16] {
            crash.testguest.push(TestguestUnload {
                gib: g,
                rep: 0,
                exit_code: Some(5),
                path: CrashvmmPath {
                    unload_latency_us: Some(150),
                    crash_kernel_started_s: Some(0.01),
                    ..Default::default()
                },
            });
        }
        crash.qemu.push(QemuPath {
            action: "default".into(),
            panic_action: Some("shutdown".into()),
            ..Default::default()
        });
        Results {
            machine: Machine::default(),
            sha256_gbps: 1.7,
            sizes: vec![1, 16],
            vmcore: vec![size(1, 0.6, 1.0), size(16, 10.0, 52.0)],
            overhead: o,
            crash,
            kdump: [(1u64, 0.2), (16, 1.5)]
                .iter()
                .map(|&(g, ours)| {
                    let run = |s: f64, counts: Option<Counts>| Run {
                        rep: 0,
                        seconds: s,
                        fsync_s: None,
                        file_bytes: g << 24,
                        allocated_bytes: g << 24,
                        counts,
                        guest_setup_s: Some(2.0 * g as f64),
                        effective_level: Some(31),
                        free_guard_passed: Some(true),
                    };
                    let c = Counts {
                        total: g << 18,
                        zero: 1,
                        cache: g << 17,
                        cache_private: 0,
                        user: g << 16,
                        free: g << 12,
                        kept: g << 12,
                    };
                    KdumpSize {
                        gib: g,
                        default_codec: "lzo".into(),
                        crashvmm: vec![run(ours, Some(c.clone()))],
                        crashvmm_lzo: vec![run(ours / 5.0, Some(c.clone()))],
                        makedumpfile: vec![run(ours * 4.0, Some(c.clone()))],
                        makedumpfile_lzo: vec![run(ours * 3.0, Some(c))],
                        elf_for_makedumpfile: vec![run(ours * 3.0, None)],
                        qemu_elf: vec![run(ours * 30.0, None)],
                        qemu_z: vec![run(ours * 4.0, None)],
                        notes: Vec::new(),
                    }
                })
                .collect(),
            live: Vec::new(),
            analysis: super::super::analysis::AnalysisBench {
                sizes: [1u64, 16]
                    .iter()
                    .map(|&gib| super::super::analysis::AnalysisSize {
                        gib,
                        with_vmcoreinfo_ms: vec![4.0, 5.0],
                        scan_ms: vec![9.0, 30.0],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            fleet: Default::default(),
            net: Default::default(),
            wall_s: 600.0,
            quick: false,
        }
    }

    #[test]
    fn markdown_has_every_section_and_judges_targets() {
        let md = markdown(&sample(), "benchmarks.png");
        assert!(md.contains("## 5. Filtered dumps"), "{md}");
        for (codec, elf, z, z_met) in
            [("zlib", "30.0x", "4.0x", "missed"), ("lzo, the default", "150.0x", "20.0x", "met")]
        {
            let row = format!("| crashvmm ({codec}) at 16 GiB at least 20x faster than QEMU ELF | {elf} | **met** |");
            assert!(md.contains(&row), "{row} not in {md}");
            let row = format!("| crashvmm ({codec}) at 16 GiB at least 5x faster than QEMU -z | {z} | **{z_met}** |");
            assert!(md.contains(&row), "{row} not in {md}");
        }
        assert!(md.contains("16 GiB / 1 GiB is **7.50x** (zlib) and **7.50x** (lzo)"), "{md}");
        for h in [
            "## Targets",
            "## Machine",
            "## Method",
            "## 1. Host-side",
            "## 2. VMM overhead",
            "## 3. Crash path",
            "## 4. Growth",
            "## 7. Crash analysis",
            "## Raw data",
            "benchmarks.png",
        ] {
            assert!(md.contains(h), "missing {h}");
        }
        // 1 GiB: QEMU 1.5 s to disk vs 0.6 s: 2.5x, missed; 16 GiB: 52.5 / 10: met.
        assert!(md.contains("| vmcore at 1 GiB: at least 3x faster than QEMU (both to data on disk) | 0.60 s | 1.50 s | **missed** (2.5x"), "{md}");
        assert!(md.contains("| vmcore at 16 GiB: at least 3x faster than QEMU (both to data on disk) | 10.00 s | 52.50 s | **met** (5.2x"), "{md}");
        assert!(md.contains("### Why a target was missed"));
        assert!(md.contains("- **vmcore, 1 GiB** (against QEMU). crashvmm's default (no hash) took 0.600 s"), "{md}");
        assert!(md.contains("QEMU took 1.50 s to disk, 2.5x crashvmm's time, short of 3x."), "{md}");
        assert!(!md.contains("**vmcore, 16 GiB**"), "{md}");
        // The opt-in hash: its own columns and rows, its digest only on its own runs.
        assert!(md.contains("| crashvmm `--vmcore-sha256 on` s | the hash adds s |"), "{md}");
        assert!(
            md.contains("| 1 GiB | 102.4 MiB | 0.60 | 1.79 | 1.00 | 1.50 | 0.72 | 2.5x | 0.40 | 1.50x | 1.20 | 0.60 |"),
            "{md}"
        );
        assert!(!md.contains("SHA-256 of the whole file for `report.json`"), "{md}");
        assert!(
            md.contains("| 16 GiB | crashvmm `--vmcore-sha256 on` | 0 | 19.600 | n/a | 0.010 / 19.490 / 0.100 |"),
            "{md}"
        );
        assert!(md.contains("| 16 GiB | crashvmm | 0 | 10.000 | n/a | 0.010 / 9.890 / 0.100 | 10.000 | 17179869184 | 1717986918 |  |"), "{md}");
        assert!(md.contains("| vmcore time with `--vmcore-sha256 on`, s | 1.20 | 19.60 | 16.3x |"), "{md}");
        assert!(
            md.contains("| VMM resident memory under 10 MiB beside a 1 GiB guest | 2.9 MiB | 39.1 MiB | **met** |"),
            "{md}"
        );
    }

    #[test]
    fn part_5_judges_the_default_dump_against_qemu_and_makedumpfile_l() {
        let run = |seconds: f64, fsync_s: Option<f64>, mib: u64| Run {
            rep: 0,
            seconds,
            fsync_s,
            file_bytes: mib << 20,
            allocated_bytes: mib << 20,
            counts: None,
            guest_setup_s: None,
            effective_level: Some(31),
            free_guard_passed: Some(true),
        };
        let size = |gib: u64, lzo: f64, qemu: f64, qemu_fsync: f64, mdf_l_mib: u64| KdumpSize {
            gib,
            default_codec: "lzo".into(),
            crashvmm: vec![run(lzo * 7.0, None, 90)],
            crashvmm_lzo: vec![run(lzo, None, 100), run(lzo * 3.0, None, 100), run(lzo / 2.0, None, 100)],
            makedumpfile: vec![run(lzo * 10.0, Some(0.1), 95)],
            makedumpfile_lzo: vec![run(lzo * 5.0, Some(0.1), mdf_l_mib)],
            qemu_elf: vec![run(qemu, Some(qemu_fsync), 1024 * gib)],
            ..Default::default()
        };
        let row = |rows: &[(String, String, &str)], what: &str| {
            rows.iter()
                .find(|r| r.0 == what)
                .map(|r| format!("{} | {}", r.1, r.2))
                .unwrap_or_else(|| panic!("no row {what:?} in {rows:#?}"))
        };
        // 1 GiB: 0.05 s against QEMU's 1.0 s to disk, 0.6 s of pause: both met. 16 GiB: 2 s
        // against 30 s to disk (15x: short of 20x) but a QEMU pause of 1 s: missed.
        let rows = kdump_targets(&[size(1, 0.05, 1.0, 0.4, 120), size(16, 2.0, 30.0, 29.0, 120)]);
        let sooner =
            |g: u64| format!("the default dump (lzo) at {g} GiB finishes sooner than QEMU ELF (both to data on disk)");
        let shorter = |g: u64| {
            format!(
                "the default dump (lzo) at {g} GiB pauses the guest for less than QEMU ELF (crashvmm: the whole dump; \
                 QEMU: to its answer)"
            )
        };
        assert_eq!(row(&rows, &sooner(1)), "0.05 s against 1.00 s | **met**");
        assert_eq!(row(&rows, &shorter(1)), "0.05 s against 0.60 s | **met**");
        assert_eq!(row(&rows, &sooner(16)), "2.00 s against 30.00 s | **met**");
        assert_eq!(row(&rows, &shorter(16)), "2.00 s against 1.00 s | **missed**");
        assert_eq!(
            row(&rows, "crashvmm (lzo, the default) at 16 GiB at least 20x faster than QEMU ELF"),
            "15.0x | **missed**"
        );
        let file = "the default dump's file (lzo) at 16 GiB no larger than makedumpfile -d 31 -l's (the same codec)";
        assert_eq!(row(&rows, file), "100.0 MiB against 120.0 MiB | **met**");
        assert!(!rows.iter().any(|r| r.0.contains("file (lzo) at 1 GiB")), "the file is judged at the largest size");
        // A larger file than makedumpfile -l's is missed; no QEMU run is not measured.
        let mut big = size(16, 2.0, 30.0, 29.0, 99);
        big.qemu_elf.clear();
        let rows = kdump_targets(&[big]);
        assert_eq!(row(&rows, file), "100.0 MiB against 99.0 MiB | **missed**");
        assert_eq!(row(&rows, &sooner(16)), "2.00 s against n/a | not measured");
        // An old results.json: zlib was the default, held to makedumpfile -c.
        let mut old = size(16, 2.0, 30.0, 29.0, 120);
        old.default_codec = "zlib".into();
        let rows = kdump_targets(&[old]);
        assert_eq!(row(&rows, &sooner(16).replace("lzo", "zlib")), "14.00 s against 30.00 s | **met**");
        assert_eq!(
            row(
                &rows,
                "the default dump's file (zlib) at 16 GiB no larger than makedumpfile -d 31 -c's (the same codec)"
            ),
            "90.0 MiB against 95.0 MiB | **met**"
        );
    }

    #[test]
    fn a_missed_copy_target_says_whether_the_method_or_the_machine_missed_it() {
        let mut r = sample();
        let size = &mut r.vmcore[0];
        // Median 0.6 s against copies of 0.1 s (6x), but the fastest run was 0.15 s (1.5x).
        size.crashvmm = [0.6, 0.15, 0.6].map(|s| dump(s, None, GIB / 10, GIB)).to_vec();
        size.copy = (0..3).map(|rep| CopyRun { rep, bytes: GIB / 10, seconds: 0.1 }).collect();
        let md = markdown(&r, "b.png");
        assert!(md.contains("**missed** (6.00x the copy)"), "{md}");
        assert!(md.contains("(against QEMU and against the copy)"), "{md}");
        assert!(md.contains("Its fastest run was 1.50x the fastest copy, within 2x"), "{md}");
        assert!(md.contains("With `--vmcore-sha256 on` it took 1.20 s"), "{md}");
        // Every run 6x the copy: the method.
        r.vmcore[0].crashvmm = vec![dump(0.6, None, GIB / 10, GIB)];
        let md = markdown(&r, "b.png");
        assert!(md.contains("Even its fastest run was 6.00x the fastest copy."), "{md}");
    }

    #[test]
    fn an_old_results_json_is_not_drawn_as_the_default_mode() {
        let mut r = sample();
        for size in &mut r.vmcore {
            size.crashvmm = std::mem::take(&mut size.crashvmm_sha256);
            size.sort_out_hashed_runs();
        }
        let md = markdown(&r, "b.png");
        assert!(
            md.contains("| vmcore at 1 GiB: at least 3x faster than QEMU (both to data on disk) | n/a | 1.50 s | not measured |"),
            "{md}"
        );
        assert!(md.contains("Every target measured in this run was met (4 not measured)."), "{md}");
        assert!(md.contains("| 1 GiB | crashvmm `--vmcore-sha256 on` | 0 | 1.200 |"), "{md}");
        assert!(md.contains("| 1 GiB | 1.00 GiB / 102.4 MiB |"), "file sizes from the hashed runs: {md}");
    }

    #[test]
    fn writes_the_plot() {
        if !Path::new(plot::FONT).exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write(&sample(), &dir.path().join("b.md"), &dir.path().join("b.png")).unwrap();
        assert!(std::fs::read(dir.path().join("b.png")).unwrap().starts_with(b"\x89PNG"));
    }
}
