//! `boot-reliability`: boot the same Debian guest many times under crashvmm and under QEMU in
//! the same software KVM test host and count the boots that do not reach the guest's init.
//!
//! Not part of `make test` (57 minutes for 3 x 50 boots here, most of it QEMU's slower and hanging boots); `make boot-reliability`
//! runs it and writes `docs/boot-reliability.md`. Each configuration runs in one test-host
//! session (booted once, the guest booted `--runs` times in a loop inside it):
//!
//! - `crashvmm`: `crashvmm run` of the `boot` scenario (2 vCPUs, 768 MiB, Hyper-V on);
//! - `qemu`: QEMU 7.2 with `-cpu host,kvm=off,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash`,
//!   `vmbus-bridge` and `pvpanic`, as `make bench` runs it;
//! - `crashvmm-nohv`: crashvmm with `--hyperv off`.
//!
//! A boot succeeds when the console shows the boot marker and the VMM exits 0. A failure keeps
//! its console, crashvmm's log and event log under `OUT/<config>/fail-<n>/`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use integration::bench::crashpath::stage_qemu;
use integration::{boot_testhost, scenario, Setup, BOOT_MARKER};

#[derive(Parser)]
#[command(about = "Boot the Debian guest N times under crashvmm and QEMU in the test host; count failures")]
struct Args {
    /// Boots per configuration.
    #[arg(long, default_value_t = 50)]
    runs: u32,
    /// Configurations to run (default: all three).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Config>,
    /// Scratch and per-failure outputs.
    #[arg(long, default_value = "build/boot-reliability")]
    out: PathBuf,
    /// The Markdown report to write.
    #[arg(long)]
    doc: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Config {
    Crashvmm,
    Qemu,
    CrashvmmNohv,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Crashvmm => "crashvmm",
            Config::Qemu => "qemu",
            Config::CrashvmmNohv => "crashvmm-nohv",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Config::Crashvmm => "crashvmm, Hyper-V on (the default)",
            Config::Qemu => "QEMU, `hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash`, vmbus-bridge, pvpanic",
            Config::CrashvmmNohv => "crashvmm `--hyperv off`",
        }
    }

    /// The command that boots the guest once inside the test host, console to `$con`.
    fn command(self, cmdline: &str, mem: &str, vcpus: u32) -> String {
        match self {
            Config::Crashvmm | Config::CrashvmmNohv => format!(
                "./crashvmm run --kernel vmlinuz --initrd initramfs.cpio.gz --cmdline '{cmdline}' --memory {mem} \
                 --vcpus {vcpus} --console null --console-log \"$con\" --events \"$dir/events.jsonl\" \
                 --crash-dir \"$dir/crashes\"{} 2>\"$dir/crashvmm.log\"",
                if self == Config::CrashvmmNohv { " --hyperv off" } else { "" }
            ),
            Config::Qemu => format!(
                "env LD_LIBRARY_PATH=./qemu/lib ./qemu/qemu-system-x86_64 -L ./qemu/fw -M pc -accel kvm \
                 -cpu host,kvm=off,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash -smp {vcpus} -m {mem} \
                 -nodefaults -no-user-config -display none -no-reboot -serial file:\"$con\" \
                 -kernel vmlinuz -initrd initramfs.cpio.gz -append '{cmdline}' -device vmbus-bridge -device pvpanic \
                 -d cpu_reset,guest_errors -D \"$dir/qemu.log\" 2>\"$dir/qemu-stderr.log\""
            ),
        }
    }
}

/// A boot still running after this long is a hang: its threads' kernel stacks are saved
/// (`hung-threads.txt`), then it is killed. A good boot takes 15-30 s in the test host.
const HANG_S: u32 = 150;

/// The result of one boot.
struct Boot {
    n: u32,
    rc: i32,
    secs: f64,
    marker: bool,
}

fn run_config(setup: &Setup, c: Config, runs: u32, out: &Path) -> Result<Vec<Boot>, String> {
    let s = scenario("boot").ok_or("no boot scenario")?;
    let share = tempfile::Builder::new().prefix("crashvmm-bootrel-").tempdir().map_err(|e| e.to_string())?;
    let sp = share.path();
    let copies = [
        (setup.binary.clone(), "crashvmm"),
        (setup.images.join("guest/vmlinuz"), "vmlinuz"),
        (setup.images.join("guest/initramfs.cpio.gz"), "initramfs.cpio.gz"),
    ];
    for (from, to) in copies {
        fs::copy(&from, sp.join(to))
            .map_err(|e| format!("copying {}: {e} (run `make build images`)", from.display()))?;
    }
    if c == Config::Qemu {
        stage_qemu(&sp.join("qemu")).map_err(|e| format!("staging QEMU: {e}"))?;
    }
    let cmdline = format!("{} crashtest={}", s.cmdline, s.guest_scenario());
    // Each boot: its own directory; the VMM's exit status, time and whether the marker showed
    // go to results (one line a boot); directories of good boots are removed.
    let sh = format!(
        "# Written by boot-reliability: {name} boots the guest {runs} times.\n\
         cd \"$1\" || exit 125\nmkdir -p out\n: >out/results\n\
         i=1\nwhile [ $i -le {runs} ]; do\n\
         dir=out/boot-$i; con=$dir/console.log; mkdir -p $dir\n\
         t0=$(cut -d' ' -f1 /proc/uptime)\n\
         {cmd} &\npid=$!\nn=0\n\
         while kill -0 $pid 2>/dev/null && [ $n -lt {HANG_S} ]; do sleep 1; n=$((n + 1)); done\n\
         if kill -0 $pid 2>/dev/null; then\n\
         echo \"TESTHOST: {name} boot $i: still running after {HANG_S} s; its threads:\"\n\
         for t in /proc/$pid/task/*; do echo \"== $t $(cat $t/comm) state $(cut -d' ' -f3 $t/stat) \
         wchan $(cat $t/wchan) syscall $(cat $t/syscall)\"; cat $t/stack; done >$dir/hung-threads.txt 2>&1\n\
         cat $dir/hung-threads.txt; dmesg | tail -n 40 >$dir/dmesg.txt\n\
         kill -TERM $pid; sleep 5; kill -KILL $pid 2>/dev/null\nfi\n\
         wait $pid\nrc=$?\n\
         ms=$(awk -v a=$t0 -v b=$(cut -d' ' -f1 /proc/uptime) 'BEGIN {{ printf \"%d\", (b - a) * 1000 }}')\n\
         if grep -qF '{BOOT_MARKER}' \"$con\"; then m=1; else m=0; fi\n\
         echo \"$i $rc $ms $m\" >>out/results\n\
         echo \"TESTHOST: {name} boot $i: rc $rc marker $m\"\n\
         if [ $rc -eq 0 ] && [ $m -eq 1 ]; then rm -rf $dir; else \
         for r in $dir/crashes/*/report.json; do [ -f \"$r\" ] && cp \"$r\" $dir/report.json; done; rm -rf $dir/crashes; fi\n\
         i=$((i + 1))\ndone\n",
        name = c.name(),
        cmd = c.command(&cmdline, s.memory, s.vcpus),
    );
    fs::write(sp.join("run.sh"), sh).map_err(|e| e.to_string())?;
    let dir = out.join(c.name());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(60 + u64::from(runs) * 250);
    let guest_mib = 768;
    boot_testhost(setup, sp, guest_mib + 1280, &dir.join("testhost.log"), limit, false).map_err(|e| e.to_string())?;
    let results =
        fs::read_to_string(sp.join("out/results")).map_err(|e| format!("no results from the test host: {e}"))?;
    let boots: Vec<Boot> = results
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Boot {
                n: f.first()?.parse().ok()?,
                rc: f.get(1)?.parse().ok()?,
                secs: f.get(2)?.parse::<f64>().ok()? / 1000.0,
                marker: f.get(3)? == &"1",
            })
        })
        .collect();
    // Keep what the failed boots left.
    for b in boots.iter().filter(|b| !b.ok()) {
        let from = sp.join(format!("out/boot-{}", b.n));
        let to = dir.join(format!("fail-{}", b.n));
        let _ = fs::create_dir_all(&to);
        for f in [
            "console.log",
            "crashvmm.log",
            "events.jsonl",
            "report.json",
            "qemu.log",
            "qemu-stderr.log",
            "hung-threads.txt",
            "dmesg.txt",
        ] {
            let _ = fs::copy(from.join(f), to.join(f));
        }
    }
    Ok(boots)
}

impl Boot {
    fn ok(&self) -> bool {
        self.rc == 0 && self.marker
    }
}

/// The last console line of a failed boot, for the table.
fn last_console_line(dir: &Path) -> String {
    let con = fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    con.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(empty console)").trim().chars().take(100).collect()
}

/// Where each thread of a hung VMM was (`hung-threads.txt`): `name state wchan`, e.g. `vcpu0 R
/// running` (in KVM_RUN, the guest executing) or `vcpu1 S kvm_vcpu_block` (halted).
fn hung_threads(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("hung-threads.txt")).ok()?;
    let threads: Vec<String> = text
        .lines()
        .filter_map(|l| {
            // "== /proc/P/task/T NAME state S wchan W syscall ..."
            let f: Vec<&str> = l.strip_prefix("== ")?.split_whitespace().collect();
            let at = |k: &str| f.iter().position(|w| *w == k).and_then(|i| f.get(i + 1)).copied().unwrap_or("?");
            Some(format!("{} {} {}", f.get(1)?, at("state"), at("wchan")))
        })
        .collect();
    Some(threads.join(", "))
}

/// The hand-written part of an existing report (from `## Analysis` on), kept when the
/// measured part is written again.
fn kept_analysis(path: &Path) -> Option<String> {
    let old = fs::read_to_string(path).ok()?;
    old.find("\n## Analysis").map(|i| old[i..].to_string())
}

/// What crashvmm's log says about the failure (its first error or warning line).
fn crashvmm_says(dir: &Path) -> Option<String> {
    let log = fs::read_to_string(dir.join("crashvmm.log")).ok()?;
    log.lines().find(|l| l.contains("triple fault") || l.contains("ERROR") || l.contains("WARN")).map(|l| l.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let setup = Setup::from_env();
    let configs = if args.only.is_empty() {
        vec![Config::Crashvmm, Config::Qemu, Config::CrashvmmNohv]
    } else {
        args.only.clone()
    };
    let started = Instant::now();
    let mut doc = String::new();
    let mut table = String::new();
    let mut details = String::new();
    let mut any_error = false;
    for c in configs {
        eprintln!("boot-reliability: {} x {} boots in the test host", c.name(), args.runs);
        let t = Instant::now();
        match run_config(&setup, c, args.runs, &args.out) {
            Ok(boots) => {
                let failed: Vec<&Boot> = boots.iter().filter(|b| !b.ok()).collect();
                let mut secs: Vec<f64> = boots.iter().filter(|b| b.ok()).map(|b| b.secs).collect();
                secs.sort_by(f64::total_cmp);
                let median = secs.get(secs.len() / 2).copied().unwrap_or(f64::NAN);
                eprintln!(
                    "boot-reliability: {}: {} of {} boots failed ({:.0} s)",
                    c.name(),
                    failed.len(),
                    boots.len(),
                    t.elapsed().as_secs_f64()
                );
                let _ = writeln!(
                    table,
                    "| {} | {} | {} | {} | {median:.1} s |",
                    c.describe(),
                    boots.len(),
                    failed.len(),
                    if failed.is_empty() {
                        "-".to_string()
                    } else {
                        failed.iter().map(|b| b.n.to_string()).collect::<Vec<_>>().join(", ")
                    },
                );
                for b in failed {
                    let dir = args.out.join(c.name()).join(format!("fail-{}", b.n));
                    let _ = writeln!(
                        details,
                        "- {} boot {}: exit status {}, marker {}, after {:.1} s; last console line `{}`{}",
                        c.name(),
                        b.n,
                        b.rc,
                        if b.marker { "seen" } else { "not seen" },
                        b.secs,
                        last_console_line(&dir),
                        crashvmm_says(&dir).map(|l| format!("; crashvmm: `{l}`")).unwrap_or_default()
                    );
                    if let Some(t) = hung_threads(&dir) {
                        let _ = writeln!(details, "  - its threads after {HANG_S} s: {t}");
                    }
                }
                if boots.len() < args.runs as usize {
                    let _ = writeln!(
                        details,
                        "- {}: only {} of {} boots ran (test host limit?)",
                        c.name(),
                        boots.len(),
                        args.runs
                    );
                }
            }
            Err(e) => {
                any_error = true;
                eprintln!("boot-reliability: {}: error: {e}", c.name());
                let _ = writeln!(table, "| {} | - | - | error: {e} | - |", c.describe());
            }
        }
    }
    let _ = writeln!(
        doc,
        "# Boot reliability: crashvmm and QEMU in the software KVM test host\n\n\
         Written by `make boot-reliability` (integration/src/bin/boot_reliability.rs) on {}, {:.0} min.\n\n\
         The Debian guest of the `boot` scenario (kernel {}, 2 vCPUs, 768 MiB, `{}`) is booted {} times per \
         configuration, one configuration at a time, each in one session of the software KVM test host \
         (`qemu-system-x86_64 -accel tcg -cpu max`, nested `kvm_amd`). A boot succeeds when the guest's console \
         shows `{BOOT_MARKER}` and the VMM exits 0; anything else (a triple fault, a hang past {HANG_S} s, a panic) \
         is a failure.\n\n\
         | configuration | boots | failed | failed boots | median boot (s) |\n|---|---|---|---|---|\n{table}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        started.elapsed().as_secs_f64() / 60.0,
        fs::read_to_string(setup.images.join("guest/kernel-release")).unwrap_or_default().trim(),
        scenario("boot").map(|s| s.cmdline).unwrap_or_default(),
        args.runs
    );
    if !details.is_empty() {
        let _ = writeln!(doc, "\n## Failures\n\n{details}");
    }
    print!("{doc}");
    if let Some(path) = &args.doc {
        if let Some(analysis) = kept_analysis(path) {
            doc = format!("{}\n{}", doc.trim_end(), analysis);
        }
        if let Err(e) = fs::write(path, &doc) {
            eprintln!("boot-reliability: error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if any_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
