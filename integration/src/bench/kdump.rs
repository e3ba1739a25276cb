//! Part 5: filtered dumps of a Linux-like guest.
//!
//! The test guest's `bench-kdump` scenario builds, in a guest of N GiB, what a dump filter
//! reads on Linux 6.1 (VMCOREINFO note, kernel page tables, mem_section, a struct page per
//! PFN, node 0's zones and buddy free lists) with about 90% of the pages page cache and user
//! pages (each filled with a per-page pattern), 5% kernel pages and 5% free; then pvpanic.
//! For each size, one at a time:
//! - crashvmm `--vmcore-format kdump --dump-level 31` with each codec, `--vmcore-compress zlib`
//!   (level 6) and `lzo`, the default one ([`DEFAULT_CODEC`]) run without the option (so that it
//!   is crashvmm's default that is measured; report.json must name that codec): its
//!   `vmcore_written` `duration_ms` (find VMCOREINFO, classify, compress and write, fsync; the
//!   guest is paused throughout, so it is also the pause), with report.json's filter counts;
//! - QEMU `dump-guest-memory` of the same guest, ELF and `kdump-zlib` (QEMU's `-z`), each
//!   timed to its answer (the guest's pause) plus the fsync of the file;
//! - `makedumpfile -d 31 -c` and `-l` (zlib and LZO, the same codecs as crashvmm's) on an ELF of
//!   the same guest (crashvmm `--vmcore-format elf --dump-level 0`), timed from its start to its
//!   output fsynced; its own page counts (`--message-level`) are kept beside crashvmm's, so the
//!   two filters can be compared.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::procs;
use super::qmp::Qmp;
use super::vmcore::find_event;
use super::{progress, read_events, Env, GIB};

/// The scenario.
pub const SCENARIO: &str = "bench-kdump";
/// crashvmm's default `--vmcore-compress` (vmm/src/main.rs), measured without the option.
pub const DEFAULT_CODEC: &str = "lzo";

/// Pages per class, as a filter counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub zero: u64,
    pub cache: u64,
    pub cache_private: u64,
    pub user: u64,
    pub free: u64,
    /// Pages written with data (not excluded, not zero).
    pub kept: u64,
}

/// One timed dump.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub rep: usize,
    /// To data on disk (crashvmm: `duration_ms`; QEMU: command + fsync; makedumpfile: start to
    /// output fsynced).
    pub seconds: f64,
    /// Of which an fsync after the tool finished (QEMU, makedumpfile).
    pub fsync_s: Option<f64>,
    pub file_bytes: u64,
    pub allocated_bytes: u64,
    pub counts: Option<Counts>,
    /// The guest's layout time (its `layout start` to `layout done` lines), crashvmm runs.
    pub guest_setup_s: Option<f64>,
    /// crashvmm: report.json's effective level and free-page guard.
    pub effective_level: Option<u64>,
    pub free_guard_passed: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct KdumpSize {
    pub gib: u64,
    /// crashvmm's default codec when this ran (results.json files from before the field: zlib).
    #[serde(default = "zlib")]
    pub default_codec: String,
    /// crashvmm `--vmcore-compress zlib` (level 6).
    pub crashvmm: Vec<Run>,
    /// crashvmm `--vmcore-compress lzo`.
    #[serde(default)]
    pub crashvmm_lzo: Vec<Run>,
    pub qemu_elf: Vec<Run>,
    pub qemu_z: Vec<Run>,
    /// makedumpfile -d 31 -c on crashvmm's ELF.
    pub makedumpfile: Vec<Run>,
    /// makedumpfile -d 31 -l on the same ELF.
    #[serde(default)]
    pub makedumpfile_lzo: Vec<Run>,
    /// The ELF makedumpfile read (crashvmm `--vmcore-format elf --dump-level 0`).
    pub elf_for_makedumpfile: Vec<Run>,
    pub notes: Vec<String>,
}

fn zlib() -> String {
    "zlib".into()
}

impl KdumpSize {
    /// crashvmm's runs with `codec` ("zlib" or "lzo").
    pub fn runs(&self, codec: &str) -> &[Run] {
        if codec == "lzo" {
            &self.crashvmm_lzo
        } else {
            &self.crashvmm
        }
    }

    /// crashvmm's runs with its default codec.
    pub fn default_runs(&self) -> &[Run] {
        self.runs(&self.default_codec)
    }

    /// makedumpfile's runs with crashvmm's default codec (`-l` for LZO, `-c` for zlib).
    pub fn makedumpfile_default_codec(&self) -> &[Run] {
        if self.default_codec == "lzo" {
            &self.makedumpfile_lzo
        } else {
            &self.makedumpfile
        }
    }
}

fn reps(env: &Env, gib: u64) -> usize {
    if env.quick || gib >= 16 {
        1
    } else {
        2
    }
}

pub fn run(env: &Env, sizes: &[u64]) -> Vec<KdumpSize> {
    sizes.iter().map(|&g| run_size(env, g)).collect()
}

fn run_size(env: &Env, gib: u64) -> KdumpSize {
    let mut r = KdumpSize { gib, default_codec: DEFAULT_CODEC.into(), ..Default::default() };
    let need = gib * GIB + 2 * GIB;
    let free = procs::free_bytes(&env.work).unwrap_or(0);
    let qemu_fits = free >= need;
    if !qemu_fits {
        r.notes.push(format!(
            "QEMU skipped: its ELF dump needs {} GiB free, {} GiB are",
            need.div_ceil(GIB),
            free / GIB
        ));
    }
    for rep in 0..reps(env, gib) {
        let tag = format!("kdump {gib} GiB #{rep}");
        for (codec, out) in [("zlib", &mut r.crashvmm), ("lzo", &mut r.crashvmm_lzo)] {
            let default = codec == DEFAULT_CODEC;
            match crashvmm_dump(env, gib, rep, "kdump", 31, (!default).then_some(codec)) {
                Ok((d, _)) => {
                    progress(format!(
                        "{tag}: crashvmm kdump -d 31 {codec}{} {:.2} s, {:.1} MiB (guest layout {:.1} s)",
                        if default { " (the default)" } else { "" },
                        d.seconds,
                        d.file_bytes as f64 / (1 << 20) as f64,
                        d.guest_setup_s.unwrap_or(f64::NAN)
                    ));
                    out.push(d);
                }
                Err(e) => {
                    progress(format!("{tag}: crashvmm {codec} FAILED: {e}"));
                    r.notes.push(format!("crashvmm {codec} run {rep}: {e}"));
                }
            }
        }
        match crashvmm_dump(env, gib, rep, "elf", 0, Some("none")) {
            Ok((d, path)) => {
                progress(format!("{tag}: crashvmm ELF -d 0 {:.2} s (for makedumpfile)", d.seconds));
                r.elf_for_makedumpfile.push(d);
                for (flag, out) in [("-c", &mut r.makedumpfile), ("-l", &mut r.makedumpfile_lzo)] {
                    match makedumpfile(env, &path, rep, flag) {
                        Ok(m) => {
                            progress(format!(
                                "{tag}: makedumpfile -d 31 {flag} {:.2} s, {:.1} MiB",
                                m.seconds,
                                m.file_bytes as f64 / (1 << 20) as f64
                            ));
                            out.push(m);
                        }
                        Err(e) => {
                            progress(format!("{tag}: makedumpfile {flag} FAILED: {e}"));
                            r.notes.push(format!("makedumpfile {flag} run {rep}: {e}"));
                        }
                    }
                }
                if let Some(dir) = path.parent() {
                    let _ = fs::remove_dir_all(dir);
                }
            }
            Err(e) => {
                progress(format!("{tag}: crashvmm ELF FAILED: {e}"));
                r.notes.push(format!("crashvmm ELF run {rep}: {e}"));
            }
        }
        if qemu_fits {
            for (format, out) in [("elf", &mut r.qemu_elf), ("kdump-zlib", &mut r.qemu_z)] {
                match qemu_dump(env, gib, rep, format) {
                    Ok(d) => {
                        progress(format!(
                            "{tag}: QEMU dump-guest-memory {format} {:.2} s (fsync {:.2} s), {:.1} MiB",
                            d.seconds,
                            d.fsync_s.unwrap_or(0.0),
                            d.file_bytes as f64 / (1 << 20) as f64
                        ));
                        out.push(d);
                    }
                    Err(e) => {
                        progress(format!("{tag}: QEMU {format} FAILED: {e}"));
                        r.notes.push(format!("QEMU {format} run {rep}: {e}"));
                    }
                }
            }
        }
    }
    r
}

/// The guest's layout time from its console lines.
fn layout_seconds(lines: &[procs::ConsoleLine]) -> Option<f64> {
    let at = |needle: &str| lines.iter().find(|l| l.text.contains(needle)).map(|l| l.at);
    let (s, e) = (at("bench-kdump: layout start")?, at("bench-kdump: layout done")?);
    Some(e.checked_duration_since(s)?.as_secs_f64())
}

/// Pages per class from crashvmm's report.json (`vmcore.filter`).
fn crashvmm_counts(f: &Value) -> Option<Counts> {
    let n = |k: &str| f[k].as_u64();
    Some(Counts {
        total: n("total_pages")?,
        zero: n("excluded_zero")?,
        cache: n("excluded_cache")?,
        cache_private: n("excluded_cache_private")?,
        user: n("excluded_user")?,
        free: n("excluded_free")?,
        kept: n("data_pages")?,
    })
}

/// One crashvmm run of the scenario with a host-side vmcore of `format` at `level`, with
/// `--vmcore-compress codec` (`None`: crashvmm's default, which report.json must say is
/// [`DEFAULT_CODEC`]). Returns the run and the vmcore's path (the caller deletes the crash
/// directory).
fn crashvmm_dump(
    env: &Env,
    gib: u64,
    rep: usize,
    format: &str,
    level: u8,
    codec: Option<&str>,
) -> Result<(Run, PathBuf), String> {
    let crash_dir = env.work.join(format!("kdump-crashes-{format}"));
    let _ = fs::remove_dir_all(&crash_dir);
    let ev_path = env.work.join("kdump-events.jsonl");
    let _ = fs::remove_file(&ev_path);
    let mut cmd = env.crashvmm(gib, SCENARIO);
    cmd.args(["--hyperv", "off", "--on-panic", "host-dump", "--after-crash", "exit", "--console", "stdio"]);
    cmd.args(["--vmcore-format", format, "--dump-level", &level.to_string()]);
    if let Some(codec) = codec {
        cmd.args(["--vmcore-compress", codec]);
    }
    cmd.arg("--events").arg(&ev_path).arg("--crash-dir").arg(&crash_dir);
    let log = env.work.join(format!("kdump-crashvmm-{format}.log"));
    procs::sync_all();
    let (mut child, console, _, _) = procs::spawn_with_console(&mut cmd, &log).map_err(|e| format!("spawn: {e}"))?;
    let code = child.wait_or_kill(Duration::from_secs(900));
    let lines = console.finish();
    let ev = read_events(&ev_path);
    let _ = fs::remove_file(&ev_path);
    let written = find_event(&ev, "vmcore_written")
        .ok_or_else(|| format!("no vmcore_written event (exit code {code:?}; see {})", log.display()))?;
    let path = PathBuf::from(written["path"].as_str().ok_or("vmcore_written without a path")?);
    let (apparent, allocated) = procs::file_sizes(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report: Value = path
        .parent()
        .and_then(|d| fs::read_to_string(d.join("report.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let v = &report["vmcore"];
    let filter = &v["filter"];
    if format == "kdump" && v["format"].as_str() != Some("kdump-compressed") {
        let _ = fs::remove_dir_all(&crash_dir);
        return Err(format!("report.json's vmcore format is {}, not kdump-compressed", v["format"]));
    }
    if format == "kdump" && codec.is_none() && v["compression"].as_str() != Some(DEFAULT_CODEC) {
        let _ = fs::remove_dir_all(&crash_dir);
        return Err(format!("crashvmm's default compression is {}, not {DEFAULT_CODEC}", v["compression"]));
    }
    let run = Run {
        rep,
        seconds: written["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        fsync_s: None,
        file_bytes: apparent,
        allocated_bytes: allocated,
        counts: crashvmm_counts(filter),
        guest_setup_s: layout_seconds(&lines),
        effective_level: filter["effective_level"].as_u64(),
        free_guard_passed: filter["classification"]["free_guard"]["passed"].as_bool(),
    };
    if format != "elf" {
        let _ = fs::remove_dir_all(&crash_dir);
    }
    Ok((run, path))
}

/// makedumpfile's report lines: `    Pages filled with zero  : 0x...`.
pub fn parse_makedumpfile_counts(text: &str) -> Option<Counts> {
    let hex = |label: &str| {
        text.lines().find(|l| l.trim_start().starts_with(label)).and_then(|l| {
            let v = l.rsplit(':').next()?.trim();
            u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
        })
    };
    Some(Counts {
        total: hex("Original pages")?,
        zero: hex("Pages filled with zero")?,
        cache: hex("Non-private cache pages")?,
        cache_private: hex("Private cache pages")?,
        user: hex("User process data pages")?,
        free: hex("Free pages")?,
        kept: hex("Remaining pages")?,
    })
}

/// `makedumpfile -d 31 FLAG` (`-c`: zlib, `-l`: LZO) on `elf`.
fn makedumpfile(env: &Env, elf: &Path, rep: usize, flag: &str) -> Result<Run, String> {
    let out = env.work.join("makedumpfile.out");
    let _ = fs::remove_file(&out);
    procs::sync_all();
    let t0 = Instant::now();
    let o = Command::new("makedumpfile")
        .args(["-d", "31", flag, "--message-level", "23"])
        .arg(elf)
        .arg(&out)
        .output()
        .map_err(|e| format!("makedumpfile: {e} (apt-get install makedumpfile)"))?;
    let run_s = t0.elapsed().as_secs_f64();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        return Err(format!("exited with {}: {}", o.status, tail.into_iter().rev().collect::<Vec<_>>().join(" / ")));
    }
    let fsync_s = procs::fsync_file(&out).map_err(|e| format!("fsync: {e}"))?.as_secs_f64();
    let (apparent, allocated) = procs::file_sizes(&out).map_err(|e| e.to_string())?;
    let _ = fs::remove_file(&out);
    Ok(Run {
        rep,
        seconds: run_s + fsync_s,
        fsync_s: Some(fsync_s),
        file_bytes: apparent,
        allocated_bytes: allocated,
        counts: parse_makedumpfile_counts(&text),
        guest_setup_s: None,
        effective_level: None,
        free_guard_passed: None,
    })
}

fn qemu_dump(env: &Env, gib: u64, rep: usize, format: &str) -> Result<Run, String> {
    let sock = env.work.join("kdump-qmp.sock");
    let dump = env.work.join("kdump-qemu-vmcore");
    let _ = fs::remove_file(&sock);
    let _ = fs::remove_file(&dump);
    let mut cmd = env.qemu_microvm(gib, SCENARIO);
    cmd.args(["-serial", "null", "-action", "panic=pause"]);
    cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", sock.display()));
    let log = env.work.join("kdump-qemu.log");
    procs::sync_all();
    let (mut child, _console, _, _) = procs::spawn_with_console(&mut cmd, &log).map_err(|e| format!("spawn: {e}"))?;
    let result = (|| -> Result<Run, String> {
        let mut q = Qmp::connect(&sock, Duration::from_secs(30)).map_err(|e| format!("QMP: {e}"))?;
        q.wait_event("GUEST_PANICKED", Duration::from_secs(900))
            .map_err(|e| format!("QMP: {e}"))?
            .ok_or("no GUEST_PANICKED within 900 s")?;
        procs::sync_all();
        let t0 = Instant::now();
        q.execute(
            "dump-guest-memory",
            json!({"paging": false, "protocol": format!("file:{}", dump.display()), "detach": false, "format": format}),
            Duration::from_secs(3600),
        )
        .map_err(|e| format!("dump-guest-memory: {e}"))?;
        let dump_s = t0.elapsed().as_secs_f64();
        let fsync_s = procs::fsync_file(&dump).map_err(|e| format!("fsync: {e}"))?.as_secs_f64();
        let (apparent, allocated) = procs::file_sizes(&dump).map_err(|e| format!("{}: {e}", dump.display()))?;
        let _ = q.execute("quit", json!({}), Duration::from_secs(10));
        Ok(Run {
            rep,
            seconds: dump_s + fsync_s,
            fsync_s: Some(fsync_s),
            file_bytes: apparent,
            allocated_bytes: allocated,
            counts: None,
            guest_setup_s: None,
            effective_level: None,
            free_guard_passed: None,
        })
    })();
    if child.wait_or_kill(Duration::from_secs(10)).is_none() {
        child.kill();
    }
    let _ = fs::remove_file(&dump);
    let _ = fs::remove_file(&sock);
    result.map_err(|e| format!("{e} (see {})", log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makedumpfile_counts_parse() {
        let text = "Original pages  : 0x0000000000040000\n  Excluded pages   : 0x000000000003cfcc\n\
                    \x20   Pages filled with zero  : 0x0000000000000fcc\n    Non-private cache pages : 0x000000000001bc00\n\
                    \x20   Private cache pages     : 0x0000000000000000\n    User process data pages : 0x000000000001d000\n\
                    \x20   Free pages              : 0x0000000000003400\n  Remaining pages  : 0x0000000000003034\n";
        let c = parse_makedumpfile_counts(text).unwrap();
        assert_eq!(c.total, 0x40000);
        assert_eq!((c.zero, c.cache, c.user, c.free, c.kept), (0xfcc, 0x1bc00, 0x1d000, 0x3400, 0x3034));
        assert!(parse_makedumpfile_counts("nothing").is_none());
    }
}
