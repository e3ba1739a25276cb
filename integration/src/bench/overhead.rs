//! Part 2: VMM overhead.
//!
//! - Start: from just before spawning the VMM to the first byte of the test guest's serial
//!   output (scenario `boot`), on a pipe: the first three instructions of the guest's PVH entry
//!   write a newline to COM1, so this is the start to the first guest instruction; for crashvmm
//!   also to its `vm_started` event (the vCPUs are about to run). Several runs, median.
//! - Resident memory: the test guest at its `bench-panic` halt (crashvmm `--on-panic pause`,
//!   QEMU `-action panic=pause`); `Rss` of `/proc/PID/smaps_rollup` minus the `Rss` of the guest
//!   RAM mappings, which are the anonymous mappings of 256 MiB or more in `/proc/PID/smaps`
//!   (no VMM allocates anything that large for itself; each is listed in the raw data).

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::procs::{self, Mapping};
use super::{progress, Env, MIB};

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vmm {
    #[serde(rename = "crashvmm")]
    Crashvmm,
    #[serde(rename = "qemu")]
    Qemu,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Crashvmm => "crashvmm",
            Vmm::Qemu => "QEMU microvm",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRun {
    pub vmm: Vmm,
    pub gib: u64,
    pub rep: usize,
    /// Spawn to the first serial byte, ms.
    pub first_byte_ms: f64,
    /// crashvmm: spawn to its `vm_started` event, ms.
    pub vm_started_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssRun {
    pub vmm: Vmm,
    pub gib: u64,
    pub rep: usize,
    pub total_kib: u64,
    pub guest_ram_kib: u64,
    /// `total_kib - guest_ram_kib`.
    pub vmm_kib: u64,
    pub guest_maps: Vec<Mapping>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Overhead {
    pub start: Vec<StartRun>,
    pub rss: Vec<RssRun>,
    pub notes: Vec<String>,
}

/// Guest RAM mappings are anonymous and at least this large.
const GUEST_MAP_MIN_KIB: u64 = 256 * 1024;

/// Splits a process's resident memory into guest RAM and the VMM's own.
pub fn split_rss(total_kib: u64, maps: &[Mapping]) -> (u64, u64, Vec<Mapping>) {
    let guest: Vec<Mapping> =
        maps.iter().filter(|m| m.anonymous() && m.size_kib >= GUEST_MAP_MIN_KIB).cloned().collect();
    let guest_kib: u64 = guest.iter().map(|m| m.rss_kib).sum();
    (guest_kib, total_kib.saturating_sub(guest_kib), guest)
}

fn command(env: &Env, vmm: Vmm, gib: u64, scenario: &str) -> Command {
    match vmm {
        Vmm::Crashvmm => {
            let mut c = env.crashvmm(gib, scenario);
            c.args(["--console", "stdio", "--on-panic", "pause"]);
            c
        }
        Vmm::Qemu => {
            let mut c = env.qemu_microvm(gib, scenario);
            c.args(["-serial", "stdio", "-action", "panic=pause"]);
            c
        }
    }
}

pub fn run(env: &Env, sizes: &[u64]) -> Overhead {
    let mut o = Overhead::default();
    for &gib in sizes {
        let reps = match (env.quick, gib >= 16) {
            (true, _) => 3,
            (false, false) => 15,
            (false, true) => 7,
        };
        for vmm in [Vmm::Crashvmm, Vmm::Qemu] {
            let mut ok = Vec::new();
            for rep in 0..reps {
                match start_once(env, vmm, gib, rep) {
                    Ok(r) => ok.push(r),
                    Err(e) => o.notes.push(format!("{} start, {gib} GiB, run {rep}: {e}", vmm.name())),
                }
            }
            let ms: Vec<f64> = ok.iter().map(|r| r.first_byte_ms).collect();
            progress(format!(
                "start {gib} GiB: {} median {:.1} ms to the first serial byte ({} runs)",
                vmm.name(),
                super::stats::median(&ms),
                ms.len()
            ));
            o.start.extend(ok);
        }
        for vmm in [Vmm::Crashvmm, Vmm::Qemu] {
            for rep in 0..if env.quick { 1 } else { 3 } {
                match rss_once(env, vmm, gib, rep) {
                    Ok(r) => {
                        progress(format!(
                            "rss {gib} GiB: {} {:.1} MiB of its own beside {:.1} MiB of guest RAM",
                            vmm.name(),
                            r.vmm_kib as f64 / 1024.0,
                            r.guest_ram_kib as f64 / 1024.0
                        ));
                        o.rss.push(r);
                    }
                    Err(e) => {
                        progress(format!("rss {gib} GiB: {} FAILED: {e}", vmm.name()));
                        o.notes.push(format!("{} resident memory, {gib} GiB, run {rep}: {e}", vmm.name()));
                    }
                }
            }
        }
    }
    o
}

fn start_once(env: &Env, vmm: Vmm, gib: u64, rep: usize) -> Result<StartRun, String> {
    let events = env.work.join("start-events.jsonl");
    let _ = std::fs::remove_file(&events);
    let mut cmd = command(env, vmm, gib, "boot");
    if vmm == Vmm::Crashvmm {
        cmd.arg("--events").arg(&events);
    }
    let log = env.work.join(format!("start-{}.log", vmm.name().replace(' ', "-")));
    let (mut child, console, t0, e0) = procs::spawn_with_console(&mut cmd, &log).map_err(|e| format!("spawn: {e}"))?;
    let first = console.wait_first_byte(Duration::from_secs(30));
    // The boot scenario powers off by itself; do not wait long for it.
    if child.wait_or_kill(Duration::from_secs(1)).is_none() {
        child.kill();
    }
    let first = first.ok_or_else(|| format!("no serial output within 30 s (see {})", log.display()))?;
    let vm_started_ms = if vmm == Vmm::Crashvmm {
        super::read_events(&events)
            .into_iter()
            .find(|e| e["event"] == "vm_started")
            .and_then(|e| super::vmcore::event_ts(&e))
            .map(|t| (t - e0) * 1000.0)
    } else {
        None
    };
    let _ = std::fs::remove_file(&events);
    Ok(StartRun { vmm, gib, rep, first_byte_ms: (first - t0).as_secs_f64() * 1000.0, vm_started_ms })
}

fn rss_once(env: &Env, vmm: Vmm, gib: u64, rep: usize) -> Result<RssRun, String> {
    let mut cmd = command(env, vmm, gib, "bench-panic");
    if vmm == Vmm::Crashvmm {
        cmd.args(["--crash-dir"]).arg(env.work.join("rss-crashes"));
    }
    let log = env.work.join(format!("rss-{}.log", vmm.name().replace(' ', "-")));
    let (mut child, console, _, _) = procs::spawn_with_console(&mut cmd, &log).map_err(|e| format!("spawn: {e}"))?;
    let ready = console.wait_for("TG: READY", Duration::from_secs(60));
    let result = (|| {
        ready.ok_or_else(|| format!("no 'TG: READY' within 60 s (see {})", log.display()))?;
        // Let the VMM handle the pvpanic write and settle at the halt.
        std::thread::sleep(Duration::from_millis(500));
        let pid = child.id();
        let total = procs::rollup_rss_kib(pid).map_err(|e| format!("smaps_rollup: {e}"))?;
        let maps = procs::smaps(pid).map_err(|e| format!("smaps: {e}"))?;
        let (guest_kib, vmm_kib, guest_maps) = split_rss(total, &maps);
        if guest_maps.is_empty() {
            return Err(format!("no guest RAM mapping of {} MiB or more found", GUEST_MAP_MIN_KIB / 1024));
        }
        Ok(RssRun { vmm, gib, rep, total_kib: total, guest_ram_kib: guest_kib, vmm_kib, guest_maps })
    })();
    child.terminate();
    let _ = std::fs::remove_dir_all(env.work.join("rss-crashes"));
    result
}

/// Bytes as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 * 1024.0 / MIB as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(name: &str, size_kib: u64, rss_kib: u64) -> Mapping {
        Mapping { range: "0-1".into(), perms: "rw-p".into(), name: name.into(), size_kib, rss_kib }
    }

    #[test]
    fn guest_ram_is_the_large_anonymous_mappings() {
        let maps = [
            map("", 1 << 20, 200),              // 1 GiB guest RAM
            map("[heap]", 2048, 1500),          // the VMM's heap
            map("", 65536, 300),                // a malloc arena
            map("/usr/bin/qemu", 1 << 20, 900), // a big file mapping is not guest RAM
        ];
        let (guest, vmm, picked) = split_rss(3000, &maps);
        assert_eq!(guest, 200);
        assert_eq!(vmm, 2800);
        assert_eq!(picked.len(), 1);
    }
}
