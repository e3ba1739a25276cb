//! Part 1: host-side vmcore throughput.
//!
//! For each guest size, a file of incompressible random bytes of 10% of the guest's memory is
//! the initrd of both VMMs, so both guests have the same pages touched. The test guest's
//! `bench-panic` scenario then writes pvpanic PANICKED and halts.
//! - crashvmm (`--on-panic host-dump`) writes its vmcore; the time is its own `vmcore_written`
//!   `duration_ms` (find VMCOREINFO, write, SHA-256, fsync), and the wall time from the
//!   `pvpanic` event to `vmcore_written`.
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
use super::{progress, Env, GIB};

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
    /// crashvmm: report.json's sha256 of the file.
    pub sha256: Option<String>,
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
    pub crashvmm: Vec<DumpRun>,
    pub qemu: Vec<DumpRun>,
    pub copy: Vec<CopyRun>,
    /// Why something was not measured.
    pub notes: Vec<String>,
}

/// The size of the random initrd: 10% of guest memory, whole pages.
pub fn touched_bytes(gib: u64) -> u64 {
    (gib * GIB / 10) & !4095
}

fn reps_for(env: &Env, gib: u64) -> usize {
    match (env.quick, gib) {
        (true, _) => 1,
        (false, g) if g >= 16 => 2,
        _ => 3,
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
    for rep in 0..reps_for(env, gib) {
        match crashvmm_dump(env, gib, &initrd, rep) {
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
        if qemu_fits {
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
    let _ = fs::remove_file(&initrd);
    r
}

fn events(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The first event named `name`.
pub fn find_event<'a>(events: &'a [Value], name: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"] == name)
}

/// The time of an event-log record, seconds since the epoch.
pub fn event_ts(ev: &Value) -> Option<f64> {
    procs::parse_ts(ev["ts"].as_str()?)
}

fn crashvmm_dump(env: &Env, gib: u64, initrd: &Path, rep: usize) -> Result<DumpRun, String> {
    let crash_dir = env.work.join("crashvmm-crashes");
    let _ = fs::remove_dir_all(&crash_dir);
    let ev_path = env.work.join("crashvmm-events.jsonl");
    let mut cmd = env.crashvmm(gib, "bench-panic");
    cmd.arg("--initrd").arg(initrd);
    // The bench-panic guest makes no Hyper-V crash report: without Hyper-V crashvmm does not
    // wait for one before dumping.
    cmd.args(["--hyperv", "off", "--on-panic", "host-dump", "--after-crash", "exit", "--console", "null"]);
    cmd.arg("--events").arg(&ev_path).arg("--crash-dir").arg(&crash_dir);
    procs::sync_all();
    let (mut child, _console, _, _) =
        procs::spawn_with_console(&mut cmd, &env.work.join("crashvmm.log")).map_err(|e| format!("spawn: {e}"))?;
    let code = child.wait_or_kill(Duration::from_secs(600));
    let ev = events(&ev_path);
    let written = find_event(&ev, "vmcore_written").ok_or_else(|| {
        format!("no vmcore_written event (exit code {code:?}; see {})", env.work.join("crashvmm.log").display())
    })?;
    let panic_ts = find_event(&ev, "pvpanic").and_then(event_ts).ok_or("no pvpanic event")?;
    let written_ts = event_ts(written).ok_or("bad vmcore_written ts")?;
    let path = PathBuf::from(written["path"].as_str().ok_or("vmcore_written without a path")?);
    let (apparent, allocated) = procs::file_sizes(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report: Value = path
        .parent()
        .and_then(|d| fs::read_to_string(d.join("report.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let sha256 = report["vmcore"]["sha256"].as_str().map(str::to_string);
    let _ = fs::remove_dir_all(&crash_dir);
    let _ = fs::remove_file(&ev_path);
    Ok(DumpRun {
        rep,
        dump_s: written["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        fsync_s: None,
        wall_s: written_ts - panic_ts,
        apparent_bytes: apparent,
        allocated_bytes: allocated,
        sha256,
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
        };
        assert_eq!(d.durable_s(), 1.5);
    }
}
