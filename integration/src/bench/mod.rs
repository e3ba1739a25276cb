//! `make bench`: crashvmm against QEMU on the same machine, in one run, written up as
//! `docs/benchmarks.md` with a PNG plot.
//!
//! 1. [`vmcore`]: host-side vmcore throughput (1, 4, 16 GiB guests with 10% of memory touched),
//!    crashvmm's default beside QEMU's `dump-guest-memory` and a plain sequential copy, and what
//!    crashvmm's opt-in `--vmcore-sha256 on` costs.
//! 2. [`overhead`]: process start to the guest's first instruction (its first serial byte), and
//!    the VMM's own resident memory.
//! 3. [`crashpath`]: the Linux crash path (pvpanic, VMBus UNLOAD, crash kernel) against QEMU with
//!    `hv-crash` and pvpanic, plus the test guest's UNLOAD handling time per guest size.
//! 4. Growth with guest size, computed by [`report`] from the above.
//! 5. [`kdump`]: filtered dumps of a Linux-like layout (the test guest's `bench-kdump`):
//!    crashvmm's kdump-compressed `-d 31` against QEMU's ELF and `kdump-zlib` dumps and
//!    `makedumpfile -d 31 -c`.
//! 6. [`live`]: the guest's pause for a live dump (`ctl dump --live`) against crashvmm's pausing
//!    dump and QEMU's `dump-guest-memory` (1, 4, 16 GiB; 10% and 90% touched), and total times.
//! 7. [`analysis`]: the crash analysis from guest memory at 1, 4, 16 GiB, and
//!    `makedumpfile --dump-dmesg` on the same crash.
//! 8. [`fleet`]: a store of 10,000 crash directories (moto): the per-signature vmcore count and
//!    `crashvmm crashes`, against listing every object and reading every report.json.
//!
//! Every VMM runs alone (one at a time); files are deleted right after they are measured.

pub mod analysis;
pub mod crashpath;
pub mod fleet;
pub mod kdump;
pub mod live;
pub mod machine;
pub mod net;
pub mod overhead;
pub mod plot;
pub mod procs;
pub mod qmp;
pub mod report;
pub mod stats;
pub mod vmcore;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use crate::Setup;

/// The QEMU binary (`CRASHVMM_BENCH_QEMU` overrides).
pub fn qemu_binary() -> String {
    std::env::var("CRASHVMM_BENCH_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// `-cpu` for QEMU on `/dev/kvm`: the host CPU, without IA32_ARCH_CAPABILITIES, which the
/// development machines' software KVM refuses to set (QEMU then aborts at start).
pub const QEMU_CPU: &str = "host,-arch-capabilities";

/// The test guest's command line for one of its scenarios.
pub fn testguest_cmdline(scenario: &str) -> String {
    format!("testguest.scenario={scenario}")
}

/// Where things are, and how much to do.
#[derive(Debug, Clone)]
pub struct Env {
    pub setup: Setup,
    /// The test guest (a PVH ELF).
    pub testguest: PathBuf,
    /// Scratch space for dumps and copies (deleted as the run goes).
    pub work: PathBuf,
    /// Fewer repetitions and sizes, for trying the harness out.
    pub quick: bool,
}

impl Env {
    pub fn new(setup: Setup, work: PathBuf, quick: bool) -> Self {
        let testguest = std::env::var_os("CRASHVMM_TESTGUEST")
            .map(PathBuf::from)
            .unwrap_or_else(|| setup.root.join("build/images/testguest/testguest.elf"));
        Self { setup, testguest, work, quick }
    }

    /// `crashvmm run` booting the test guest with `scenario`, `mem_gib` GiB and one vCPU.
    pub fn crashvmm(&self, mem_gib: u64, scenario: &str) -> Command {
        let mut c = Command::new(&self.setup.binary);
        c.arg("run").arg("--kernel").arg(&self.testguest);
        c.args(["--cmdline", &testguest_cmdline(scenario), "--memory", &format!("{mem_gib}G"), "--vcpus", "1"]);
        c
    }

    /// QEMU `-M microvm` on `/dev/kvm` booting the test guest with `scenario`, `mem_gib` GiB,
    /// one vCPU, no default devices, the ISA pvpanic device (port 0x505); the serial port is
    /// left to the caller (`-serial ...`).
    pub fn qemu_microvm(&self, mem_gib: u64, scenario: &str) -> Command {
        let mut c = Command::new(qemu_binary());
        c.args(["-M", "microvm", "-accel", "kvm", "-cpu", QEMU_CPU, "-smp", "1"]);
        c.args(["-m", &format!("{mem_gib}G"), "-nodefaults", "-no-user-config", "-display", "none"]);
        c.arg("-kernel").arg(&self.testguest);
        c.args(["-append", &testguest_cmdline(scenario), "-device", "pvpanic"]);
        c
    }
}

/// Boot the software KVM test host (2 GiB) on `share` until its `run.sh` ends or `limit`
/// passes, its console in `log`: `Ok` when the script exited 0, else why not.
pub fn run_testhost_script(
    env: &Env,
    share: &std::path::Path,
    log: &std::path::Path,
    limit: std::time::Duration,
) -> Result<(), String> {
    let status = crate::boot_testhost(&env.setup, share, 2048, log, limit, false).map_err(|e| e.to_string())?;
    match status {
        None => Err(format!("the test host timed out (see {})", log.display())),
        Some(st) => match std::fs::read_to_string(share.join("testhost-rc")).map(|s| s.trim().to_string()) {
            Ok(rc) if rc == "0" => Ok(()),
            Ok(rc) => Err(format!("test host rc {rc} (see {})", log.display())),
            Err(_) => Err(format!("the test host ended ({st}) without finishing its run.sh (see {})", log.display())),
        },
    }
}

/// Bring a run's `out/` (`from`, in the share it ran in) back into `to`: its files, and those of
/// each directory in it (one level: a crashvmm run's own). A file that cannot be copied is left
/// behind; an `out/` that cannot be read is an error.
pub fn bring_back(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    for e in std::fs::read_dir(from).map_err(|e| e.to_string())?.flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            let _ = std::fs::create_dir_all(&dest);
            for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten().filter(|f| f.path().is_file()) {
                let _ = std::fs::copy(f.path(), dest.join(f.file_name()));
            }
        } else {
            let _ = std::fs::copy(e.path(), dest);
        }
    }
    Ok(())
}

static START: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the run (for progress lines).
pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// A progress line: `bench [mm:ss] message`.
/// The records of an `events.jsonl` crashvmm wrote (unreadable lines skipped; none if the file
/// is missing: the caller reports the event it did not find).
pub fn read_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn progress(msg: impl AsRef<str>) {
    let s = START.get_or_init(Instant::now).elapsed().as_secs();
    println!("bench [{:02}:{:02}] {}", s / 60, s % 60, msg.as_ref());
}

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;
