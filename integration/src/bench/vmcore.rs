//! Part 1: host-side vmcore throughput.
//!
//! For each guest size, a file of incompressible random bytes of 10% of the guest's memory is
//! the initrd of both VMMs, so both guests have the same pages touched. The test guest's
//! `bench-panic` scenario then writes pvpanic PANICKED and halts.
//! - crashvmm (`--on-panic host-dump --vmcore-format elf`: the same ELF file as QEMU's; part 5
//!   measures the default kdump-compressed format) writes its vmcore without the SHA-256
//!   (`report.json`'s `vmcore.sha256` must be `null`); the time is its own `vmcore_written`
//!   `duration_ms` (find VMCOREINFO, write the non-zero pages, fsync), and the wall time from
//!   the `pvpanic` event to `vmcore_written`. Its debug log line splits that time into scan,
//!   write and fsync ([`Phases`]).
//! - Once per size crashvmm also runs with `--vmcore-sha256 on` (the whole-file SHA-256, holes
//!   included, computed beside the writing): what the opt-in hash costs.
//! - QEMU (`-action panic=pause`, QMP) stops at `GUEST_PANICKED`; then `dump-guest-memory`
//!   (ELF, `paging: false`, `detach: false`) is timed to its answer, and the fsync of the file
//!   after it separately (crashvmm's time includes its fsync).
//! - A sequential copy of the touched bytes (`dd bs=16M conv=fsync` of the random file, from
//!   the page cache) is the practical limit of this disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::procs;
use super::qmp::{self, Qmp};
use super::{progress, read_events, Env, GIB};

/// One dump.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpRun {
    pub rep: usize,
    /// The dump itself: crashvmm's `duration_ms` (fsync included), QEMU's command time.
    pub dump_s: f64,
    /// QEMU: the fsync of the finished file (crashvmm: included in `dump_s`).
    pub fsync_s: Option<f64>,
    /// From the panic signal (pvpanic event / GUEST_PANICKED) to the dump on disk.
    pub wall_s: f64,
    pub apparent_bytes: u64,
    pub allocated_bytes: u64,
    /// crashvmm: report.json's sha256 of the file (`null` unless `--vmcore-sha256 on`).
    pub sha256: Option<String>,
    /// crashvmm: its own split of `dump_s`, from its debug log (absent when not found).
    #[serde(default)]
    pub phases: Option<Phases>,
}

/// crashvmm's split of a vmcore's time, from the debug line of `vmm::crash::vmcore`:
/// `vmcore PATH: N bytes (M allocated); scan D, write+hash D, fsync D`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Finding the guest's VMCOREINFO note (and the layout).
    pub scan_s: f64,
    /// Writing the non-zero pages (with `--vmcore-sha256 on`: until the hash is done too).
    pub write_s: f64,
    /// The fsync of the file.
    pub fsync_s: f64,
}

/// What crashvmm logs about each vmcore at debug level (and only there).
pub const CRASHVMM_RUST_LOG: &str = "info,vmm::crash::vmcore=debug";

/// The last [`Phases`] line in a crashvmm log.
pub fn parse_phases(log: &str) -> Option<Phases> {
    let line = log.lines().rev().find(|l| l.contains("vmm::crash::vmcore") && l.contains("; scan "))?;
    let tail = &line[line.find("; scan ")? + 2..];
    let (mut scan, mut write, mut fsync) = (None, None, None);
    for part in tail.split(", ") {
        let (key, value) = part.trim().split_once(' ')?;
        let v = parse_debug_duration(value)?;
        match key {
            "scan" => scan = Some(v),
            "write+hash" | "write" => write = Some(v),
            "fsync" => fsync = Some(v),
            _ => {}
        }
    }
    Some(Phases { scan_s: scan?, write_s: write?, fsync_s: fsync? })
}

/// A `std::time::Duration` as its `Debug` prints it (`1.5s`, `2.27ms`, `812.4µs`, `0ns`), in
/// seconds.
pub fn parse_debug_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let at = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(at);
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * scale)
}

impl DumpRun {
    /// Dump time to data on disk (QEMU: dump plus fsync).
    pub fn durable_s(&self) -> f64 {
        self.dump_s + self.fsync_s.unwrap_or(0.0)
    }
}

/// One sequential copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRun {
    pub rep: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Everything measured at one guest size.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SizeResult {
    pub gib: u64,
    pub guest_bytes: u64,
    pub touched_bytes: u64,
    /// crashvmm in its default mode (no SHA-256).
    pub crashvmm: Vec<DumpRun>,
    /// crashvmm with `--vmcore-sha256 on` (one run per size).
    #[serde(default)]
    pub crashvmm_sha256: Vec<DumpRun>,
    pub qemu: Vec<DumpRun>,
    pub copy: Vec<CopyRun>,
    /// Why something was not measured.
    pub notes: Vec<String>,
}

impl SizeResult {
    /// A results.json written before `--vmcore-sha256` existed (commit 8fd1879) has crashvmm
    /// runs that all hashed the whole file: they have a sha256, which a default-mode run never
    /// has. Moves those to [`Self::crashvmm_sha256`] so that they are not shown as the default.
    pub fn sort_out_hashed_runs(&mut self) {
        if self.crashvmm.iter().all(|d| d.sha256.is_none()) {
            return;
        }
        let (hashed, plain): (Vec<DumpRun>, Vec<DumpRun>) =
            std::mem::take(&mut self.crashvmm).into_iter().partition(|d| d.sha256.is_some());
        self.notes.push(format!(
            "{} crashvmm run(s) of this results.json have a sha256: a crashvmm that hashed every vmcore \
             (before `--vmcore-sha256`); they are shown as `--vmcore-sha256 on` runs",
            hashed.len()
        ));
        self.crashvmm = plain;
        self.crashvmm_sha256.extend(hashed);
    }
}

/// The size of the random initrd: 10% of guest memory, whole pages.
pub fn touched_bytes(gib: u64) -> u64 {
    (gib * GIB / 10) & !4095
}

/// Repetitions of QEMU's dump per size (tens of seconds at 16 GiB)...
pub const QEMU_REPS: usize = 3;
/// ... and from 16 GiB on.
pub const QEMU_REPS_LARGE: usize = 2;
/// Repetitions of crashvmm's default dump and of the copy per size: both take seconds at most,
/// and writes into the page cache vary several-fold from run to run on a virtual machine, so
/// their medians get more runs than QEMU's.
pub const REPS: usize = 5;

fn qemu_reps(env: &Env, gib: u64) -> usize {
    match (env.quick, gib) {
        (true, _) => 1,
        (false, g) if g >= 16 => QEMU_REPS_LARGE,
        _ => QEMU_REPS,
    }
}

fn reps(env: &Env) -> usize {
    if env.quick {
        1
    } else {
        REPS
    }
}

pub fn run(env: &Env, sizes: &[u64]) -> Vec<SizeResult> {
    let mut out = Vec::new();
    for &gib in sizes {
        out.push(run_size(env, gib));
    }
    out
}

fn run_size(env: &Env, gib: u64) -> SizeResult {
    let touched = touched_bytes(gib);
    let mut r = SizeResult { gib, guest_bytes: gib * GIB, touched_bytes: touched, ..Default::default() };
    let initrd = env.work.join(format!("touched-{gib}g.bin"));
    progress(format!("vmcore {gib} GiB: writing {} MiB of random bytes for the initrd", touched >> 20));
    if let Err(e) = procs::write_random(&initrd, touched, 0x5eed ^ gib) {
        r.notes.push(format!("cannot write the random initrd: {e}"));
        return r;
    }
    // QEMU's ELF dump is not sparse: it needs the whole guest size on disk.
    let need = gib * GIB + touched + 2 * GIB;
    let free = procs::free_bytes(&env.work).unwrap_or(0);
    let qemu_fits = free >= need;
    if !qemu_fits {
        r.notes.push(format!("QEMU skipped: its dump needs {} GiB free, {} GiB are", need.div_ceil(GIB), free / GIB));
    }
    let qemu_reps = qemu_reps(env, gib);
    for rep in 0..reps(env).max(qemu_reps) {
        match crashvmm_dump(env, gib, &initrd, rep, false) {
            Ok(d) => {
                progress(format!(
                    "vmcore {gib} GiB #{rep}: crashvmm {:.2} s ({:.0} MiB on disk)",
                    d.dump_s,
                    d.allocated_bytes as f64 / (1 << 20) as f64
                ));
                r.crashvmm.push(d);
            }
            Err(e) => {
                progress(format!("vmcore {gib} GiB #{rep}: crashvmm FAILED: {e}"));
                r.notes.push(format!("crashvmm run {rep}: {e}"));
            }
        }
        if qemu_fits && rep < qemu_reps {
            match qemu_dump(env, gib, &initrd, rep) {
                Ok(d) => {
                    progress(format!(
                        "vmcore {gib} GiB #{rep}: QEMU {:.2} s + fsync {:.2} s ({:.0} MiB on disk)",
                        d.dump_s,
                        d.fsync_s.unwrap_or(0.0),
                        d.allocated_bytes as f64 / (1 << 20) as f64
                    ));
                    r.qemu.push(d);
                }
                Err(e) => {
                    progress(format!("vmcore {gib} GiB #{rep}: QEMU FAILED: {e}"));
                    r.notes.push(format!("QEMU run {rep}: {e}"));
                }
            }
        }
        match copy(env, &initrd, rep) {
            Ok(c) => {
                progress(format!("vmcore {gib} GiB #{rep}: sequential copy {:.2} s", c.seconds));
                r.copy.push(c);
            }
            Err(e) => r.notes.push(format!("copy {rep}: {e}")),
        }
    }
    // What the opt-in whole-file hash costs: one run is enough (it is CPU-bound and steady).
    match crashvmm_dump(env, gib, &initrd, 0, true) {
        Ok(d) => {
            progress(format!("vmcore {gib} GiB: crashvmm --vmcore-sha256 on {:.2} s", d.dump_s));
            r.crashvmm_sha256.push(d);
        }
        Err(e) => {
            progress(format!("vmcore {gib} GiB: crashvmm --vmcore-sha256 on FAILED: {e}"));
            r.notes.push(format!("crashvmm --vmcore-sha256 on: {e}"));
        }
    }
    let _ = fs::remove_file(&initrd);
    r
}

/// The first event named `name`.
pub fn find_event<'a>(events: &'a [Value], name: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"] == name)
}

/// The time of an event-log record, seconds since the epoch.
pub fn event_ts(ev: &Value) -> Option<f64> {
    procs::parse_ts(ev["ts"].as_str()?)
}

/// One crashvmm dump: its default mode, or with `--vmcore-sha256 on` when `sha256`.
fn crashvmm_dump(env: &Env, gib: u64, initrd: &Path, rep: usize, sha256: bool) -> Result<DumpRun, String> {
    let crash_dir = env.work.join("crashvmm-crashes");
    let _ = fs::remove_dir_all(&crash_dir);
    let ev_path = env.work.join("crashvmm-events.jsonl");
    let mut cmd = env.crashvmm(gib, "bench-panic");
    cmd.arg("--initrd").arg(initrd);
    // The bench-panic guest makes no Hyper-V crash report: without Hyper-V crashvmm does not
    // wait for one before dumping.
    cmd.args(["--hyperv", "off", "--on-panic", "host-dump", "--after-crash", "exit", "--console", "null"]);
    // The ELF file, as QEMU's: part 5 measures the default kdump-compressed format.
    cmd.args(["--vmcore-format", "elf"]);
    if sha256 {
        cmd.args(["--vmcore-sha256", "on"]);
    }
    cmd.arg("--events").arg(&ev_path).arg("--crash-dir").arg(&crash_dir);
    cmd.env("RUST_LOG", CRASHVMM_RUST_LOG);
    let log = env.work.join("crashvmm.log");
    procs::sync_all();
    let (mut child, _console, _, _) = procs::spawn_with_console(&mut cmd, &log).map_err(|e| format!("spawn: {e}"))?;
    let code = child.wait_or_kill(Duration::from_secs(600));
    let ev = read_events(&ev_path);
    let written = find_event(&ev, "vmcore_written")
        .ok_or_else(|| format!("no vmcore_written event (exit code {code:?}; see {})", log.display()))?;
    let panic_ts = find_event(&ev, "pvpanic").and_then(event_ts).ok_or("no pvpanic event")?;
    let written_ts = event_ts(written).ok_or("bad vmcore_written ts")?;
    let path = PathBuf::from(written["path"].as_str().ok_or("vmcore_written without a path")?);
    let (apparent, allocated) = procs::file_sizes(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report: Value = path
        .parent()
        .and_then(|d| fs::read_to_string(d.join("report.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let digest = report["vmcore"]["sha256"].as_str().map(str::to_string);
    let _ = fs::remove_dir_all(&crash_dir);
    let _ = fs::remove_file(&ev_path);
    match (sha256, &digest) {
        (false, Some(_)) => {
            return Err("report.json has a vmcore sha256 without --vmcore-sha256 on: a crashvmm from before \
                        the opt-in hash? (run `make build`)"
                .into())
        }
        (true, None) => return Err("report.json has no vmcore sha256 with --vmcore-sha256 on".into()),
        _ => {}
    }
    let phases = parse_phases(&fs::read_to_string(&log).unwrap_or_default());
    Ok(DumpRun {
        rep,
        dump_s: written["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        fsync_s: None,
        wall_s: written_ts - panic_ts,
        apparent_bytes: apparent,
        allocated_bytes: allocated,
        sha256: digest,
        phases,
    })
}

fn qemu_dump(env: &Env, gib: u64, initrd: &Path, rep: usize) -> Result<DumpRun, String> {
    let sock = env.work.join("qmp.sock");
    let dump = env.work.join("qemu-vmcore");
    let _ = fs::remove_file(&sock);
    let _ = fs::remove_file(&dump);
    let mut cmd = env.qemu_microvm(gib, "bench-panic");
    cmd.arg("-initrd").arg(initrd);
    cmd.args(["-serial", "null", "-action", "panic=pause"]);
    cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", sock.display()));
    procs::sync_all();
    let (mut child, _console, _, _) =
        procs::spawn_with_console(&mut cmd, &env.work.join("qemu.log")).map_err(|e| format!("spawn: {e}"))?;
    let result = (|| -> Result<DumpRun, String> {
        let mut q = Qmp::connect(&sock, Duration::from_secs(30)).map_err(|e| format!("QMP: {e}"))?;
        let panicked = q
            .wait_event("GUEST_PANICKED", Duration::from_secs(600))
            .map_err(|e| format!("QMP: {e}"))?
            .ok_or("no GUEST_PANICKED within 600 s")?;
        let panic_t = qmp::event_time(&panicked).unwrap_or(f64::NAN);
        procs::sync_all();
        let t0 = Instant::now();
        q.execute(
            "dump-guest-memory",
            json!({"paging": false, "protocol": format!("file:{}", dump.display()), "detach": false}),
            Duration::from_secs(1800),
        )
        .map_err(|e| format!("dump-guest-memory: {e}"))?;
        let dump_s = t0.elapsed().as_secs_f64();
        let fsync_s = procs::fsync_file(&dump).map_err(|e| format!("fsync: {e}"))?.as_secs_f64();
        let wall_s = procs::now_epoch() - panic_t;
        let (apparent, allocated) = procs::file_sizes(&dump).map_err(|e| format!("{}: {e}", dump.display()))?;
        let _ = q.execute("quit", json!({}), Duration::from_secs(10));
        Ok(DumpRun {
            rep,
            dump_s,
            fsync_s: Some(fsync_s),
            wall_s,
            apparent_bytes: apparent,
            allocated_bytes: allocated,
            sha256: None,
            phases: None,
        })
    })();
    if child.wait_or_kill(Duration::from_secs(10)).is_none() {
        child.kill();
    }
    let _ = fs::remove_file(&dump);
    let _ = fs::remove_file(&sock);
    result.map_err(|e| format!("{e} (see {})", env.work.join("qemu.log").display()))
}

fn copy(env: &Env, src: &Path, rep: usize) -> Result<CopyRun, String> {
    let dst = env.work.join("copy.bin");
    let _ = fs::remove_file(&dst);
    procs::warm(src).map_err(|e| e.to_string())?;
    procs::sync_all();
    let took = procs::dd_copy(src, &dst).map_err(|e| e.to_string());
    let _ = fs::remove_file(&dst);
    let bytes = fs::metadata(src).map(|m| m.len()).unwrap_or(0);
    Ok(CopyRun { rep, bytes, seconds: took?.as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_is_a_tenth_in_whole_pages() {
        assert_eq!(touched_bytes(1) % 4096, 0);
        assert!(touched_bytes(16) <= 16 * GIB / 10);
        assert!(touched_bytes(16) > 16 * GIB / 10 - 4096);
    }

    #[test]
    fn durable_time_adds_the_fsync() {
        let d = DumpRun {
            rep: 0,
            dump_s: 1.0,
            fsync_s: Some(0.5),
            wall_s: 2.0,
            apparent_bytes: 0,
            allocated_bytes: 0,
            sha256: None,
            phases: None,
        };
        assert_eq!(d.durable_s(), 1.5);
    }

    #[test]
    fn crashvmm_phases_come_from_its_debug_line() {
        let log = "[2026-11-25T16:03:46.142807Z INFO  vmm::crash::executor] writing host-side vmcore\n\
                   [2026-11-25T16:03:46.294047Z DEBUG vmm::crash::vmcore] vmcore /tmp/x/vmcore: 1073745920 bytes \
                   (50118656 allocated); scan 2.270314ms, write+hash 1.5s, fsync 37.5µs\n\
                   [2026-11-25T16:03:46.294110Z INFO  vmm::crash::executor] vmcore: 1073745920 bytes\n";
        let p = parse_phases(log).unwrap();
        assert!((p.scan_s - 0.002270314).abs() < 1e-12, "{p:?}");
        assert_eq!(p.write_s, 1.5);
        assert!((p.fsync_s - 37.5e-6).abs() < 1e-12, "{p:?}");
        assert_eq!(parse_phases("[.. INFO  vmm::crash::executor] vmcore: 1 bytes"), None);
        assert_eq!(parse_debug_duration("0ns"), Some(0.0));
        assert_eq!(parse_debug_duration("12"), None);
        assert_eq!(parse_debug_duration("3min"), None);
    }

    #[test]
    fn hashed_runs_of_an_old_results_json_are_not_the_default() {
        let run = |sha: Option<&str>| DumpRun {
            rep: 0,
            dump_s: 1.0,
            fsync_s: None,
            wall_s: 1.0,
            apparent_bytes: 0,
            allocated_bytes: 0,
            sha256: sha.map(str::to_string),
            phases: None,
        };
        let mut old = SizeResult { crashvmm: vec![run(Some("ab")), run(Some("ab"))], ..Default::default() };
        old.sort_out_hashed_runs();
        assert!(old.crashvmm.is_empty());
        assert_eq!(old.crashvmm_sha256.len(), 2);
        assert_eq!(old.notes.len(), 1);
        let mut new =
            SizeResult { crashvmm: vec![run(None)], crashvmm_sha256: vec![run(Some("ab"))], ..Default::default() };
        new.sort_out_hashed_runs();
        assert_eq!((new.crashvmm.len(), new.crashvmm_sha256.len(), new.notes.len()), (1, 1, 0));
    }
}
