//! The project's own test guest (guest-images/testguest) under the real crashvmm binary on
//! `/dev/kvm` directly, one test per scenario: the guest's `TG: PASS` verdict, crashvmm's exit
//! code, and the events crashvmm logged, in order.
//!
//! Needs `make build` and `make testguest` (both part of `make integration`) and `/dev/kvm`:
//! without it every test fails, unless `CRASHVMM_SKIP_KVM_TESTS=1` says to skip them (CI never
//! sets it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::{Mode, Outcome};
use serde_json::Value;
use wait_timeout::ChildExt;

/// Every scenario ends in well under a second; this only catches a hang.
const LIMIT: Duration = Duration::from_secs(60);
/// Guest memory: small, so that host-side vmcores are quick; the kdump scenario's crash
/// kernel region (4 MiB at 16 MiB) fits.
const MEMORY: &str = "64M";
/// The crash kernel region's base (guest-images/testguest/src/kexec.rs).
const CRASH_KERNEL_BASE: u64 = 16 << 20;
/// `--on-hang host-dump,nmi`'s events, in order.
const HANG_DUMP_THEN_NMI: [&str; 7] =
    ["guest_hang", "crash_detected", "dump_started", "vmcore_written", "crash_report", "nmi_injected", "vm_exited"];
/// crashvmm's exit codes (README.md).
const EXIT_POWER_OFF: i32 = 0;
const EXIT_TRIPLE_FAULT: i32 = 4;
const EXIT_GUEST_PANICKED: i32 = 5;

/// The crashvmm binary and the test guest ELF, or `None` (skip: no `/dev/kvm` and
/// `CRASHVMM_SKIP_KVM_TESTS=1`).
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    integration::testguest_prerequisites("test guest")
}

/// One run of crashvmm with the test guest: its outputs live as long as this.
struct Run {
    outcome: Outcome,
    _dir: tempfile::TempDir,
}

impl Run {
    fn code(&self) -> i32 {
        self.outcome.exit_code.expect("crashvmm exited")
    }

    fn console(&self) -> String {
        self.outcome.console()
    }

    fn events(&self) -> Vec<Value> {
        self.outcome.events().unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(&self) -> Vec<String> {
        self.events().iter().map(|e| e["event"].as_str().unwrap_or("").to_string()).collect()
    }

    /// The events called `name`, in order.
    fn all(&self, name: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == name).collect()
    }

    fn one(&self, name: &str) -> Value {
        let all = self.all(name);
        assert_eq!(all.len(), 1, "exactly one {name} event expected; events: {:?}", self.names());
        all.into_iter().next().unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.outcome.out.join("crashvmm.log")).unwrap_or_default()
    }

    fn context(&self) -> String {
        format!("\n--- console ---\n{}\n--- crashvmm stderr ---\n{}", self.console(), self.stderr())
    }

    /// One `TG: PASS <scenario>` line, no FAIL anywhere, crashvmm never panicked.
    fn assert_pass(&self, scenario: &str) {
        let console = self.console();
        let verdicts: Vec<&str> =
            console.lines().filter(|l| l.starts_with("TG: PASS ") || l.starts_with("TG: FAIL ")).collect();
        assert_eq!(verdicts, vec![format!("TG: PASS {scenario}")], "verdict{}", self.context());
        assert!(!console.lines().any(|l| l.starts_with("TG: check ") && l.contains(" ... FAIL")), "{}", self.context());
        assert!(!self.stderr().contains("panicked at"), "crashvmm panicked{}", self.context());
    }

    fn assert_exit(&self, code: i32, reason: &str) {
        assert_eq!(self.code(), code, "exit code{}", self.context());
        let exited = self.one("vm_exited");
        assert_eq!(exited["exit_code"], code);
        assert_eq!(exited["reason"], reason);
    }

    /// `expected` occurs in the event log in this order (other events may come between).
    fn assert_in_order(&self, expected: &[&str]) {
        let names = self.names();
        let mut it = names.iter();
        for want in expected {
            assert!(it.any(|n| n == want), "{want} missing or out of order in {expected:?}; events: {names:?}");
        }
    }
}

/// crashvmm running the test guest.
struct Running {
    child: Child,
    scenario: String,
    binary: PathBuf,
    out: PathBuf,
    dir: tempfile::TempDir,
    start: Instant,
}

/// crashvmm's process, killed (and reaped) if it still runs when this goes: a test that fails
/// while its guest runs leaves no guest spinning beside the tests after it.
struct Child(std::process::Child);

impl std::ops::Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Child {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start `scenario` with extra `crashvmm run` options (`OUT/` in them is the run's output
/// directory) and `umask` for crashvmm, if given.
fn start(scenario: &str, extra: &[&str], umask: Option<libc::mode_t>) -> Option<Running> {
    start_with(scenario, extra, Launch { umask, ..Launch::default() })
}

/// How crashvmm is started besides its options.
#[derive(Default)]
struct Launch<'a> {
    /// crashvmm's umask.
    umask: Option<libc::mode_t>,
    /// RLIMIT_NOFILE (soft and hard), as `prlimit --nofile=N:N` would set it.
    nofile: Option<libc::rlim_t>,
    /// Added to crashvmm's environment.
    env: &'a [(&'a str, &'a str)],
    /// Run it under `/usr/bin/time`, which records its peak resident memory in `PEAK_RSS_FILE`
    /// ([`Running::wait_with_peak_rss`]). Not this process's own `wait4`: a child's `ru_maxrss`
    /// includes the memory of the process it was forked from at its `exec` (here the test
    /// binary, with whatever the tests running beside it hold), while the child of a small
    /// process that waits for it (`time`) starts its count at its own `exec`.
    peak_rss: bool,
}

/// Where `/usr/bin/time` leaves crashvmm's peak resident memory, in the run's directory.
const PEAK_RSS_FILE: &str = "peak-rss";

/// [`start`], launched as `launch` says.
fn start_with(scenario: &str, extra: &[&str], launch: Launch<'_>) -> Option<Running> {
    let Launch { umask, nofile, env, peak_rss } = launch;
    let (binary, elf) = prerequisites()?;
    let dir = tempfile::Builder::new().prefix("crashvmm-testguest-").tempdir().expect("temporary directory");
    let out = dir.path().to_owned();
    let stderr = std::fs::File::create(out.join("crashvmm.log")).expect("crashvmm.log");
    let console = format!("file:{}", out.join("console.log").display());
    let mut cmd = if peak_rss {
        let mut time = Command::new("/usr/bin/time");
        time.args(["--format", "%M", "--output"]).arg(out.join(PEAK_RSS_FILE)).arg(&binary);
        time
    } else {
        Command::new(&binary)
    };
    cmd.arg("run")
        .arg("--kernel")
        .arg(&elf)
        .args(["--cmdline", &format!("testguest.scenario={scenario}"), "--console", &console])
        // A test that needs more memory says so in `extra`.
        .args(if extra.contains(&"--memory") { &[][..] } else { &["--memory", MEMORY][..] })
        .arg("--events")
        .arg(out.join("events.jsonl"))
        // A test that reuses another run's crash directory says so in `extra`.
        .args(if extra.contains(&"--crash-dir") { vec![] } else { vec!["--crash-dir".into(), out.join("crashes")] })
        .args(extra.iter().map(|a| a.replace("OUT/", &format!("{}/", out.display()))))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(mask) = umask {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask(2) is async-signal-safe, as a pre_exec hook must be.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            })
        };
    }
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
        // SAFETY: setrlimit(2) is async-signal-safe, as a pre_exec hook must be; `limit` is
        // moved into the hook and outlives the call.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    let child = cmd.spawn().expect("starting crashvmm");
    Some(Running { child: Child(child), scenario: scenario.into(), binary, out, dir, start: Instant::now() })
}

impl Running {
    /// Wait (up to `LIMIT`) for the console to show `line`.
    fn wait_for_console(&mut self, line: &str) {
        let deadline = Instant::now() + LIMIT;
        while !std::fs::read_to_string(self.out.join("console.log")).unwrap_or_default().contains(line) {
            assert!(self.child.try_wait().unwrap().is_none(), "crashvmm exited before the console showed {line:?}");
            assert!(Instant::now() < deadline, "no {line:?} on the console within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `crashvmm ctl ARGS` against this run's `--api-socket` (which must be `OUT/api.sock`), run.
    fn ctl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .arg("ctl")
            .arg("--api-socket")
            .arg(self.out.join("api.sock"))
            .args(args)
            .output()
            .expect("running crashvmm ctl")
    }

    /// `crashvmm ctl ARGS`: its answer.
    fn ctl(&self, args: &[&str]) -> Value {
        let out = self.ctl_output(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ctl {args:?}: not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The `Seccomp:` mode of each of crashvmm's threads, by thread name.
    fn seccomp_modes(&self) -> Vec<(String, String)> {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let mut modes: Vec<(String, String)> = std::fs::read_dir(&tasks)
            .expect("crashvmm's /proc task list")
            .flatten()
            .filter_map(|t| {
                let status = std::fs::read_to_string(t.path().join("status")).ok()?;
                let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
                Some((field("Name:")?, field("Seccomp:")?))
            })
            .collect();
        modes.sort();
        modes
    }

    fn wait(mut self) -> Run {
        let status = self.child.wait_timeout(LIMIT).expect("waiting for crashvmm");
        let timed_out = status.is_none();
        if timed_out {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let code = status.and_then(|s| s.code());
        self.finish(code, timed_out)
    }

    /// Wait as [`Self::wait`] does, with crashvmm's peak resident memory (bytes), as
    /// `/usr/bin/time` measured it (started with [`Launch::peak_rss`]).
    fn wait_with_peak_rss(self) -> (Run, u64) {
        let file = self.out.join(PEAK_RSS_FILE);
        let run = self.wait();
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (is /usr/bin/time installed?){}", file.display(), run.context()));
        // Its last line is the figure (KiB); a line before it may say how the command ended.
        let kib: u64 = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no peak RSS in {text:?}", file.display()));
        (run, kib * 1024)
    }

    fn finish(self, exit_code: Option<i32>, timed_out: bool) -> Run {
        let outcome = Outcome {
            scenario: "testguest",
            mode: Mode::Direct,
            mode_reason: "the test guest runs on /dev/kvm directly".into(),
            exit_code,
            timed_out,
            elapsed: self.start.elapsed(),
            out: self.out,
        };
        let run = Run { outcome, _dir: self.dir };
        assert!(!timed_out, "crashvmm ran past {LIMIT:?} with scenario {}{}", self.scenario, run.context());
        eprintln!("testguest {}: exit {} in {:.2} s", self.scenario, run.code(), run.outcome.elapsed.as_secs_f64());
        run
    }
}

/// Run `scenario` with extra `crashvmm run` options.
fn run(scenario: &str, extra: &[&str]) -> Option<Run> {
    Some(start(scenario, extra, None)?.wait())
}

fn hex(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_default();
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("not a hex string: {v}"))
}

#[test]
fn boot_prints_the_start_info_and_powers_off() {
    let Some(r) = run("boot", &[]) else { return };
    r.assert_pass("boot");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    assert_eq!(r.names(), ["vm_started", "vm_exited"]);
    let console = r.console();
    assert!(console.contains("TG: cmdline: testguest.scenario=boot"), "{console}");
    assert!(console.contains("TG: memory: 63 MiB RAM"), "{console}");
}

#[test]
fn unknown_scenario_is_named() {
    let Some(r) = run("nope", &[]) else { return };
    assert!(r.console().contains("TG: FAIL nope: unknown scenario"), "{}", r.context());
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
}

#[test]
fn connect_negotiates_vmbus_5_3() {
    let Some(r) = run("connect", &[]) else { return };
    r.assert_pass("connect");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    assert_eq!(r.names(), ["vm_started", "hyperv_enabled", "vmbus_connected", "vm_exited"]);
    let hv = r.one("hyperv_enabled");
    // Linux's id format: vendor 0x8100, LINUX_VERSION_CODE 6.1.0.
    assert_eq!(hv["guest_os_id"], "0x8100000601000000");
    let c = r.one("vmbus_connected");
    assert_eq!((c["version"].as_str(), c["target_vcpu"].as_u64()), (Some("5.3"), Some(0)));
}

#[test]
fn panic_without_kdump_gets_a_host_vmcore() {
    let Some(r) = run("panic", &[]) else { return };
    r.assert_pass("panic");
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (pvpanic)");
    r.assert_in_order(&[
        "hyperv_enabled",
        "vmbus_connected",
        "pvpanic",
        "hv_crash",
        "vmcore_written",
        "crash_report",
        "vm_exited",
    ]);
    assert_eq!(r.one("pvpanic")["bits"], 1);
    assert_eq!(r.one("crash_detected")["trigger"], "pvpanic");
    let crash = r.one("hv_crash");
    assert!(crash["message"].as_str().unwrap_or("").starts_with("testguest: panic scenario\n"), "{crash}");
    assert_eq!(r.one("vmcore_written")["source"], "host");
    let dirs = r.outcome.crash_dirs();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("vmcore").is_file() && dirs[0].join("report.json").is_file());
    // By default a kdump-compressed file with every vCPU's registers; this guest has no
    // VMCOREINFO, so only zero pages could be left out, and report.json says so.
    let mut f = std::fs::File::open(dirs[0].join("vmcore")).unwrap();
    let k = kdump::diskdump::KdumpFile::parse(&mut f).expect("a kdump-compressed vmcore");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert_eq!(u64::try_from(k.nr_cpus).ok(), report["guest"]["vcpus"].as_u64(), "one NT_PRSTATUS per vCPU");
    let v = &report["vmcore"];
    assert_eq!(
        (v["format"].as_str(), v["dump_level"].as_u64(), v["compression"].as_str()),
        (Some("kdump-compressed"), Some(31), Some("lzo"))
    );
    assert_eq!(v["filter"]["effective_level"], 1, "{v}");
    assert!(v["filter"]["data_pages"].as_u64().unwrap() < v["filter"]["total_pages"].as_u64().unwrap() / 2, "{v}");
}

#[test]
fn an_elf_vmcore_on_request() {
    let Some(r) = run("panic", &["--vmcore-format", "elf", "--dump-level", "0"]) else { return };
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (pvpanic)");
    let dirs = r.outcome.crash_dirs();
    let data = std::fs::read(dirs[0].join("vmcore")).unwrap();
    let elf = goblin::elf::Elf::parse(&data).expect("an ELF vmcore");
    assert_eq!(elf.header.e_type, goblin::elf::header::ET_CORE);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert_eq!((report["vmcore"]["format"].as_str(), report["vmcore"]["dump_level"].as_u64()), (Some("elf"), Some(0)));
    assert!(report["vmcore"].get("compression").is_none(), "{report}");
}

#[test]
fn kdump_unloads_kexecs_and_the_crash_kernel_reconnects() {
    let disk = tempfile::NamedTempFile::new().expect("crash disk path");
    let disk_arg = format!("path={},size=16M", disk.path().display());
    let Some(r) = run("kdump", &["--crash-disk", &disk_arg]) else { return };
    r.assert_pass("kdump");
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (pvpanic)");
    r.assert_in_order(&[
        "hyperv_enabled",
        "vmbus_connected",
        "pvpanic",
        "vmbus_unload_requested",
        "vmbus_unload_completed",
        "hv_crash",
        "guest_kexec",
        "crash_kernel_started",
        "hyperv_enabled",
        "vmbus_connected",
        // The crash kernel wrote no dump to the crash disk: crashvmm falls back to its own.
        "vmcore_written",
        "crash_report",
        "vm_exited",
    ]);
    assert_eq!(r.one("pvpanic")["bits"], 2);
    let crash = r.one("hv_crash");
    assert!(crash["message"].as_str().unwrap_or("").starts_with("testguest: kdump scenario\n"), "{crash}");
    // The crash kernel's hypercall page is its own, in the region it was copied to.
    let enabled = r.all("hyperv_enabled");
    assert_eq!(enabled.len(), 2);
    assert!(hex(&enabled[0]["hypercall_gpa"]) < CRASH_KERNEL_BASE);
    assert!(hex(&enabled[1]["hypercall_gpa"]) >= CRASH_KERNEL_BASE);
    assert_eq!(r.all("vmbus_connected").len(), 2);
    assert!(r.console().contains("TG: crash kernel running at 0x10"), "{}", r.context());
    assert_eq!(r.one("vmcore_written")["source"], "host");
}

#[test]
fn bench_panic_writes_pvpanic_only() {
    // Without Hyper-V crashvmm does not wait for a crash report that never comes.
    let Some(r) = run("bench-panic", &["--hyperv", "off"]) else { return };
    r.assert_pass("bench-panic");
    assert!(r.console().lines().any(|l| l == "TG: READY"), "{}", r.context());
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (pvpanic)");
    assert_eq!(r.one("pvpanic")["bits"], 1);
    assert!(r.all("hyperv_enabled").is_empty() && r.all("hv_crash").is_empty());
}

#[test]
fn bench_kdump_builds_a_layout_the_filter_classifies() {
    // The guest's Linux-like layout (make bench, part 5), small: every level of -d 31 applies,
    // the free-page guard passes, and the classes add up to what the guest says it built.
    let Some(r) = run("bench-kdump", &["--hyperv", "off", "--on-panic", "host-dump"]) else { return };
    r.assert_pass("bench-kdump");
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (pvpanic)");
    let console = r.console();
    let line = console.lines().find(|l| l.starts_with("TG: bench-kdump: pages ")).expect("the guest's page counts");
    let words: Vec<&str> = line.split_whitespace().collect();
    let count = |name: &str| -> u64 {
        let i = words.iter().position(|w| *w == name).unwrap_or_else(|| panic!("no {name} in {line}"));
        words[i + 1].parse().unwrap()
    };
    let dirs = r.outcome.crash_dirs();
    assert_eq!(dirs.len(), 1);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    let f = &report["vmcore"]["filter"];
    assert_eq!(f["effective_level"], 31, "{f}");
    assert_eq!(f["classification"]["kernel"], "6.1.0-57-cloud-amd64");
    assert_eq!(f["classification"]["free_guard"]["passed"], true, "{f}");
    assert_eq!(f["excluded_cache"].as_u64(), Some(count("cache")), "{f}");
    assert_eq!(f["excluded_user"].as_u64(), Some(count("user")), "{f}");
    assert_eq!(f["excluded_free"].as_u64(), Some(count("free")), "{f}");
    assert!(count("cache") > 0 && count("user") > 0 && count("free") > 0, "{line}");
}

#[test]
fn hostile_hypercalls_get_tlfs_status_codes() {
    let Some(r) = run("hostile-hypercall", &[]) else { return };
    r.assert_pass("hostile-hypercall");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    assert_eq!(r.names(), ["vm_started", "hyperv_enabled", "vmbus_connected", "vm_exited"]);
}

#[test]
fn hostile_synic_pages_drop_messages_and_fault_the_hypercall_page() {
    let Some(r) = run("hostile-synic", &[]) else { return };
    r.assert_pass("hostile-synic");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    // Three contacts answered into pages outside RAM, then the good connect.
    assert_eq!(r.all("vmbus_connected").len(), 4);
    assert_eq!(r.stderr().matches("SynIC message dropped").count(), 3, "{}", r.stderr());
}

#[test]
fn hostile_crash_messages_are_reported_with_their_errors() {
    let Some(r) = run("hostile-crash-message", &["--on-panic", "ignore"]) else { return };
    r.assert_pass("hostile-crash-message");
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (hv_crash)");
    let crashes = r.all("hv_crash");
    assert_eq!(crashes.len(), 5, "{crashes:?}");
    let error = |i: usize| crashes[i]["message_error"].as_str().unwrap_or("").to_string();
    assert!(error(0).contains("outside guest RAM") && crashes[0]["message"].is_null(), "{}", crashes[0]);
    assert!(error(1).contains("exceeds 4096 bytes"), "{}", crashes[1]);
    assert_eq!(crashes[1]["message"].as_str().map(str::len), Some(4096));
    assert!(error(2).contains("outside guest RAM"), "{}", crashes[2]);
    assert!(error(3).contains("outside guest RAM"), "{}", crashes[3]);
    assert!(crashes[4]["message"].is_null() && crashes[4]["message_error"].is_null(), "{}", crashes[4]);
    assert_eq!(r.one("crash_detected")["trigger"], "hv_crash");
}

#[test]
fn hostile_msrs_fault() {
    let Some(r) = run("hostile-msr", &[]) else { return };
    r.assert_pass("hostile-msr");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    assert!(r.stderr().contains("injecting #GP"), "{}", r.stderr());
}

/// The events of `source` the guest caused: those recorded in full, and those counted in
/// `events_suppressed` summaries.
fn recorded_and_counted(r: &Run, name: &str) -> (u64, u64) {
    let full = r.all(name).len() as u64;
    let counted = r
        .all("events_suppressed")
        .iter()
        .filter(|e| e["source"] == name)
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum();
    (full, counted)
}

#[test]
fn every_pvpanic_byte_is_recorded_or_counted() {
    let Some(r) = run("pvpanic-bytes", &["--on-panic", "ignore"]) else { return };
    r.assert_pass("pvpanic-bytes");
    // The guest powered off after a crash crashvmm recorded and ignored.
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (pvpanic)");
    // The first ones in full (in the guest's order), the rest counted.
    let bits: Vec<u64> = r.all("pvpanic").iter().map(|e| e["bits"].as_u64().unwrap_or(999)).collect();
    assert_eq!(bits, (0..bits.len() as u64).collect::<Vec<u64>>());
    assert_eq!(recorded_and_counted(&r, "pvpanic"), (32, 256 - 32));
    assert_eq!(r.one("crash_detected")["trigger"], "pvpanic");
    // Detected on the first PANICKED write (byte 1), whose event has the detection's cause time.
    assert_eq!(r.one("crash_detected")["signal_ts"], r.all("pvpanic")[1]["ts"]);
}

#[test]
fn vmbus_flood_is_bounded_and_a_clean_connect_follows() {
    let Some(r) = run("vmbus-flood", &[]) else { return };
    r.assert_pass("vmbus-flood");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    assert_eq!(recorded_and_counted(&r, "vmbus_message_rejected"), (32, 240 - 32));
    assert_eq!(r.all("vmbus_connected").len(), 2);
}

/// Issue 24's bar: a guest that floods pvpanic (every byte value) and rejected VMBus messages
/// for 10 s leaves an event log, a stderr and a report under 1 MB each, with every write
/// recorded or counted, crashvmm's peak RSS stays under 64 MiB, and its crash (a triple fault
/// while crashvmm awaited its kdump) is still collected.
#[test]
fn a_guest_flooding_for_10_s_is_recorded_within_bounds_and_its_crash_collected() {
    let Some(running) = start_with("guest-flood", &[], Launch { peak_rss: true, ..Launch::default() }) else {
        return;
    };
    let (r, peak_rss) = running.wait_with_peak_rss();
    r.assert_pass("guest-flood");
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (pvpanic)");
    let console = r.console();
    let writes: u64 = console
        .lines()
        .find_map(|l| l.split("guest-flood: ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no write count on the console{}", r.context()));
    assert!(writes > 10_000, "the flood was no flood: {writes} writes");
    let size = |p: PathBuf| std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).len();
    let events_bytes = size(r.outcome.out.join("events.jsonl"));
    let stderr_bytes = size(r.outcome.out.join("crashvmm.log"));
    eprintln!("guest-flood: {writes} writes of each kind; peak RSS {} KiB; events.jsonl {events_bytes} B, stderr {stderr_bytes} B", peak_rss / 1024);
    assert!(events_bytes < 1 << 20, "events.jsonl: {events_bytes} bytes");
    assert!(stderr_bytes < 1 << 20, "stderr: {stderr_bytes} bytes");
    assert!(peak_rss < 64 << 20, "peak RSS {peak_rss} bytes");
    // Every write is in the log, in full or counted (the first one announced the kdump).
    assert_eq!(recorded_and_counted(&r, "pvpanic").0 + recorded_and_counted(&r, "pvpanic").1, writes + 1);
    let (full, counted) = recorded_and_counted(&r, "vmbus_message_rejected");
    assert_eq!(full + counted, writes);
    // The crash: detected on the announcement, collected after the triple fault.
    assert_eq!(r.one("crash_detected")["trigger"], "pvpanic");
    assert_eq!(r.one("crash_detected")["signal_ts"], r.all("pvpanic")[0]["ts"]);
    r.assert_in_order(&["pvpanic", "crash_detected", "vmcore_written", "crash_report", "vm_exited"]);
    let dirs = r.outcome.crash_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let report_bytes = size(dirs[0].join("report.json"));
    assert!(report_bytes < 1 << 20, "report.json: {report_bytes} bytes");
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert!(report["signals_dropped"].as_u64().unwrap_or(0) > 0, "{}", report["signals_dropped"]);
    assert_eq!(report["vmcore"]["reason"], "triple_fault during kdump", "{}", report["vmcore"]);
}

#[test]
fn contact_during_unload_is_answered_after_the_unload() {
    let Some(r) = run("contact-during-unload", &["--vmbus-unload-delay", "500ms"]) else { return };
    r.assert_pass("contact-during-unload");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    r.assert_in_order(&["vmbus_connected", "vmbus_unload_requested", "vmbus_unload_completed", "vm_exited"]);
    assert_eq!(r.all("vmbus_connected").len(), 2);
    let latency = r.one("vmbus_unload_completed")["latency_us"].as_u64().unwrap_or(0);
    assert!(latency >= 500_000, "UNLOAD answered after {latency} us, the delay is 500 ms");
}

#[test]
fn unload_without_connect_is_answered() {
    let Some(r) = run("unload-without-connect", &[]) else { return };
    r.assert_pass("unload-without-connect");
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    r.assert_in_order(&[
        "hyperv_enabled",
        "vmbus_unload_requested",
        "vmbus_unload_completed",
        "vmbus_message_rejected",
        "vmbus_connected",
    ]);
    assert_eq!(r.one("vmbus_message_rejected")["reason"], "REQUESTOFFERS without a connection");
}

#[test]
fn triple_fault_is_a_crash() {
    let Some(r) = run("triple-fault", &[]) else { return };
    r.assert_pass("triple-fault");
    r.assert_exit(EXIT_GUEST_PANICKED, "guest_panicked (triple_fault)");
    assert_eq!(r.one("crash_detected")["trigger"], "triple_fault");
    r.assert_in_order(&["crash_detected", "vmcore_written", "crash_report", "vm_exited"]);
    assert!(r.stderr().contains("triple fault at rip"), "{}", r.stderr());
}

#[test]
fn ignored_triple_fault_ends_the_vm_with_exit_code_4() {
    let Some(r) = run("triple-fault", &["--on-panic", "ignore"]) else { return };
    r.assert_pass("triple-fault");
    r.assert_exit(EXIT_TRIPLE_FAULT, "triple_fault (vcpu 0)");
    assert_eq!(r.one("crash_detected")["trigger"], "triple_fault");
    assert!(r.all("vmcore_written").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Seccomp and file modes

/// crashvmm's exit code after a seccomp violation (128 + SIGSYS).
const EXIT_SECCOMP: i32 = 159;

/// While the guest runs, every thread of crashvmm has a filter (`Seccomp: 2`), and the control
/// socket's requests (a dump with the hashing thread among them) all work under the filters.
#[test]
fn every_thread_is_confined_and_the_control_socket_works_under_the_filters() {
    let args = ["--vcpus", "2", "--api-socket", "OUT/api.sock", "--vmcore-sha256", "on"];
    let Some(mut r) = start("idle", &args, None) else { return };
    r.wait_for_console("TG: idle: ready");
    let modes = r.seccomp_modes();
    assert!(modes.len() >= 3, "the vmm thread and two vCPU threads at least: {modes:?}");
    assert!(modes.iter().any(|(n, _)| n == "vcpu1"), "{modes:?}");
    assert!(modes.iter().all(|(_, m)| m == "2"), "every thread filtered: {modes:?}");
    assert_eq!(r.ctl(&["status"])["state"], "running");
    assert_eq!(r.ctl(&["pause"])["ok"], true);
    assert_eq!(r.ctl(&["status"])["state"], "paused");
    assert_eq!(r.ctl(&["resume"])["ok"], true);
    // A break and a key on COM1 (the test guest reads no input: they only wait in the FIFO).
    assert_eq!(r.ctl(&["sysrq", "h"]), serde_json::json!({"ok": true, "key": "h"}));
    let bad = r.ctl_output(&["raw", r#"{"command":"sysrq","key":"hh"}"#]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("a sysrq key is one ASCII letter or digit"), "{bad:?}");
    let dump = r.ctl(&["dump"]);
    assert_eq!(dump["ok"], true, "{dump}");
    assert_eq!(dump["sha256"].as_str().map(str::len), Some(64), "{dump}");
    let vmcore = PathBuf::from(dump["path"].as_str().unwrap());
    assert_eq!(mode_of(&vmcore), 0o600);
    assert_eq!(mode_of(vmcore.parent().unwrap()), 0o700);
    // A live dump: the guest paused for the snapshot only (userfaultfd write protection, a
    // copier thread under its own filter), the vmcore written while the guest runs on.
    let live = r.ctl(&["dump", "--live", "--format", "elf", "--dump-level", "0"]);
    assert_eq!((live["ok"].as_bool(), live["live"].as_bool()), (Some(true), Some(true)), "{live}");
    let pause_us = live["pause_us"].as_u64().unwrap();
    assert!(pause_us > 0 && pause_us < 5_000_000, "{live}");
    let data = std::fs::read(live["path"].as_str().unwrap()).unwrap();
    let elf = goblin::elf::Elf::parse(&data).expect("an ELF vmcore");
    let notes = elf.iter_note_headers(&data).into_iter().flatten().flatten();
    assert_eq!(notes.filter(|n| n.name == "CORE" && n.n_type == 1).count(), 2, "NT_PRSTATUS per vCPU");
    assert_eq!(r.ctl(&["status"])["state"], "running");
    assert_eq!(r.ctl(&["shutdown"])["ok"], true);
    let r = r.wait();
    assert_eq!(r.code(), EXIT_POWER_OFF, "{}", r.context());
    assert!(!r.stderr().contains("seccomp"), "{}", r.stderr());
    r.assert_in_order(&[
        "vm_paused",
        "vm_resumed",
        "sysrq_sent",
        "dump_started",
        "vmcore_written",
        "dump_started",
        "vmcore_written",
        "vm_exited",
    ]);
    let written = r.all("vmcore_written");
    assert_eq!(written[1]["pause_us"].as_u64(), Some(pause_us));
    assert!(written[0].get("pause_us").is_none(), "a pausing dump has no pause_us");
    assert_eq!(r.one("sysrq_sent")["key"], "h");
}

/// The bar of live dumps: every vCPU of the guest increments its own counter in a tight loop
/// (in r12 and in its page, COUNTER_GPA + APIC id * 0x1000; the APIC id is crashvmm's vCPU
/// index, NT_PRSTATUS pr_pid - 1); each live dump holds one consistent value per vCPU (its page
/// is r12 or r12 - 1 of its NT_PRSTATUS), and every vCPU kept counting between the dumps. Both
/// snapshot methods: userfaultfd write protection (the test host's kernel has it, so `uffd`
/// must work here) and fork().
#[test]
fn a_live_dump_of_a_counting_guest_is_consistent_and_the_guest_counts_on() {
    for (vcpus, method) in [(2, "uffd"), (4, "uffd"), (2, "fork")] {
        if live_dumps_of_a_counting_guest(vcpus, method).is_none() {
            return;
        }
    }
}

/// Two live dumps of the counter scenario on `vcpus` vCPUs with the snapshot by `method`,
/// checked (`None`: no prerequisites).
fn live_dumps_of_a_counting_guest(vcpus: u64, method: &str) -> Option<()> {
    const COUNTER_GPA: u64 = 0x300_0000;
    const COUNTER_PAGE: u64 = 0x1000;
    const PRSTATUS_PID: usize = 32;
    const PR_REG: usize = 112;
    const R12: usize = 3;
    let n = vcpus.to_string();
    let args = ["--api-socket", "OUT/api.sock", "--hyperv", "off", "--vcpus", &n, "--live-dump-snapshot", method];
    let mut r = start("counter", &args, None)?;
    r.wait_for_console(&format!("TG: counter: ready at 0x3000000, {vcpus} vCPUs\n"));
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for _ in 0..2 {
        let live = r.ctl(&["dump", "--live", "--format", "elf", "--dump-level", "0"]);
        assert_eq!(live["live"], true, "{live}");
        assert_eq!(live["snapshot"], method, "{live}");
        if method == "uffd" {
            // Pages the guest wrote during the dump were copied first (whole pages). How many
            // depends on which vCPU threads the host ran in the dump's millisecond (four vCPUs
            // on two cores may not all run), so no count is asserted here; the copy itself is
            // held to its bytes by `crash::snapshot`'s unit test, where the writer waits on the
            // fault, and to consistency by the check below.
            let copied = live["copied_bytes"].as_u64().unwrap();
            assert_eq!(copied % COUNTER_PAGE, 0, "{live}");
            eprintln!("live dump ({vcpus} vCPUs, uffd): {copied} bytes copied while it was written");
        }
        let data = std::fs::read(live["path"].as_str().unwrap()).unwrap();
        let elf = goblin::elf::Elf::parse(&data).expect("an ELF vmcore");
        let page = |gpa: u64| {
            let load = elf
                .program_headers
                .iter()
                .find(|p| {
                    p.p_type == goblin::elf::program_header::PT_LOAD
                        && (p.p_paddr..p.p_paddr + p.p_filesz).contains(&gpa)
                })
                .unwrap_or_else(|| panic!("the counter page {gpa:#x} is in a PT_LOAD"));
            let at = (load.p_offset + gpa - load.p_paddr) as usize;
            u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
        };
        let mut counters = vec![None; vcpus as usize];
        for note in elf.iter_note_headers(&data).into_iter().flatten().flatten() {
            if note.name != "CORE" || note.n_type != 1 {
                continue;
            }
            let pid = u32::from_le_bytes(note.desc[PRSTATUS_PID..PRSTATUS_PID + 4].try_into().unwrap()) as u64;
            assert!((1..=vcpus).contains(&pid), "NT_PRSTATUS pr_pid {pid} with {vcpus} vCPUs");
            let o = PR_REG + R12 * 8;
            let r12 = u64::from_le_bytes(note.desc[o..o + 8].try_into().unwrap());
            let memory = page(COUNTER_GPA + (pid - 1) * COUNTER_PAGE);
            assert!(
                memory == r12 || memory + 1 == r12,
                "vCPU {}: page {memory}, r12 {r12}: not one consistent snapshot",
                pid - 1
            );
            assert!(memory > 0, "vCPU {} counted", pid - 1);
            assert!(counters[(pid - 1) as usize].replace(memory).is_none(), "two NT_PRSTATUS with pr_pid {pid}");
        }
        let counters: Vec<u64> = counters
            .iter()
            .enumerate()
            .map(|(i, c)| c.unwrap_or_else(|| panic!("no NT_PRSTATUS for vCPU {i}")))
            .collect();
        seen.push(counters);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (i, (a, b)) in seen[0].iter().zip(&seen[1]).enumerate() {
        assert!(b > a, "vCPU {i} counted on between the dumps: {seen:?}");
    }
    assert_eq!(r.ctl(&["status"])["state"], "running");
    assert_eq!(r.ctl(&["shutdown"])["ok"], true);
    let r = r.wait();
    assert_eq!(r.code(), EXIT_POWER_OFF, "{}", r.context());
    Some(())
}

/// `--live-dump-max-copy`: a guest that writes more than the limit during a live dump is paused
/// for the rest of it, which the answer and the log say; the vmcore is still consistent and the
/// guest runs on afterwards. (Two vCPUs writing their counter pages pass a 4 KiB limit at once.)
/// Its vmcore's consistency is the counter test's; here, what the limit does.
#[test]
fn a_live_dump_past_its_copy_limit_pauses_the_guest_for_the_rest() {
    let args = ["--api-socket", "OUT/api.sock", "--hyperv", "off", "--vcpus", "2", "--memory", "1G"];
    // A dump that takes a while: 1 GiB to read and hash.
    let dump = ["--vmcore-sha256", "on", "--live-dump-snapshot", "uffd", "--live-dump-max-copy", "4K"];
    let args = [&args[..], &dump[..]].concat();
    let Some(mut r) = start("counter", &args, None) else { return };
    r.wait_for_console("TG: counter: ready at 0x3000000, 2 vCPUs\n");
    let live = r.ctl(&["dump", "--live", "--format", "elf", "--dump-level", "0"]);
    assert_eq!((live["ok"].as_bool(), live["paused_for_rest"].as_bool()), (Some(true), Some(true)), "{live}");
    assert!(live["copied_bytes"].as_u64().unwrap() > 4096, "{live}");
    assert_eq!(r.ctl(&["status"])["state"], "running", "resumed once the vmcore was written");
    assert_eq!(r.ctl(&["shutdown"])["ok"], true);
    let r = r.wait();
    assert_eq!(r.code(), EXIT_POWER_OFF, "{}", r.context());
    assert!(
        r.stderr().contains("more than --live-dump-max-copy 4096); pausing it for the rest of the dump"),
        "{}",
        r.stderr()
    );
}

/// On a terminal (as `make run` in a shell): the log is coloured and no confined thread asks
/// whether stderr is a terminal per record (an ioctl their filters forbid). `script` (util-linux,
/// in every Debian) gives crashvmm a pseudo-terminal; the guest panics, the vmcore is written
/// with its progress bar, and crashvmm ends with the panic's exit code.
#[test]
fn on_a_terminal_the_crash_path_logs_in_colour_under_the_filters() {
    let Some((bin, elf)) = prerequisites() else { return };
    let dir = tempfile::tempdir().unwrap();
    let typescript = dir.path().join("typescript");
    let cmd = format!(
        "{} run --kernel {} --cmdline testguest.scenario=panic --memory 256M --after-crash exit --crash-dir {}",
        bin.display(),
        elf.display(),
        dir.path().join("crashes").display()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &cmd])
        .arg(&typescript)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) runs");
    let status = child.wait_timeout(LIMIT).unwrap().unwrap_or_else(|| {
        let _ = child.kill();
        panic!("crashvmm on a terminal did not end");
    });
    let text = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert_eq!(status.code(), Some(EXIT_GUEST_PANICKED), "{text}");
    assert!(!text.contains("seccomp"), "{text}");
    assert!(text.contains("\x1b[32mINFO"), "no coloured log on a terminal: {text}");
    assert!(text.contains("crash report: "), "{text}");
}

/// The same check sees unfiltered threads when the filters are off.
#[test]
fn without_filters_no_thread_is_confined() {
    let Some(mut r) = start("idle", &["--seccomp", "off", "--api-socket", "OUT/api.sock"], None) else { return };
    r.wait_for_console("TG: idle: ready");
    let modes = r.seccomp_modes();
    assert!(modes.iter().all(|(_, m)| m == "0"), "{modes:?}");
    assert_eq!(r.ctl(&["shutdown"])["ok"], true);
    assert_eq!(r.wait().code(), EXIT_POWER_OFF);
}

/// A thread of each kind opens an IPv4 socket once confined (`--seccomp-selftest`): crashvmm
/// ends with 159, names the thread and the call on stderr and in the event log's last line.
#[test]
fn a_forbidden_system_call_from_each_thread_kind_ends_crashvmm_with_a_report() {
    let metrics_dir = tempfile::tempdir().unwrap();
    let metrics = metrics_dir.path().join("crashvmm.prom");
    let metrics = metrics.to_str().unwrap();
    // Created by crashvmm (CAP_NET_ADMIN), gone when it ends.
    let tap = format!("tap=cvst{}", std::process::id() % 100_000);
    for (kind, scenario, extra, thread) in [
        ("vmm", "boot", &[][..], "vmm"),
        ("vcpu", "boot", &[][..], "vcpu0"),
        // Every host-side vmcore is written by the vmcore writer thread.
        ("vmcore-writer", "panic", &[][..], "vmcore-writer"),
        // The hasher thread hashes an ELF vmcore as it is written (a kdump file is hashed after).
        ("vmcore-hasher", "panic", &["--vmcore-sha256", "on", "--vmcore-format", "elf"][..], "vmcore-hasher"),
        // A hang's live dump: its snapshot's copier thread.
        (
            "snapshot-copier",
            "counter",
            &["--hyperv", "off", "--watchdog", "1s", "--on-hang", "host-dump"][..],
            "snapshot-copier",
        ),
        // The metrics file's writer.
        ("metrics", "boot", &["--metrics-file", metrics][..], "metrics"),
        // A network device's thread (its TAP created for the run).
        ("net", "boot", &["--net", &tap][..], "net0"),
    ] {
        let args: Vec<&str> = ["--seccomp-selftest", kind].into_iter().chain(extra.iter().copied()).collect();
        let Some(r) = run(scenario, &args) else { return };
        assert_eq!(r.code(), EXIT_SECCOMP, "{kind}{}", r.context());
        let said = format!("crashvmm: seccomp: thread {thread} made a forbidden system call 41 (socket)");
        assert!(r.stderr().contains(&said), "{kind}: {said:?} not in{}", r.context());
        let events = r.events();
        let last = events.last().expect("events");
        assert_eq!(last["event"], "seccomp_violation", "{kind}: {last}");
        assert_eq!(
            (last["thread"].as_str(), last["syscall"].as_i64(), last["name"].as_str()),
            (Some(thread), Some(41), Some("socket"))
        );
        chrono::DateTime::parse_from_rfc3339(last["ts"].as_str().unwrap()).expect("an RFC 3339 timestamp");
    }
}

/// `--seccomp log` lets the forbidden call through (the kernel logs it); `off` has no filter:
/// in both the self-test's socket opens and the guest runs to its end.
#[test]
fn logging_or_no_filter_lets_the_forbidden_call_through() {
    for mode in ["log", "off"] {
        let Some(r) = run("boot", &["--seccomp", mode, "--seccomp-selftest", "vcpu"]) else { return };
        r.assert_pass("boot");
        assert_eq!(r.code(), EXIT_POWER_OFF, "--seccomp {mode}{}", r.context());
        assert!(r.stderr().contains("opened an IPv4 socket"), "--seccomp {mode}{}", r.context());
    }
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o777
}

/// With umask 000, the crash directory, its files, the event log and the console log are still
/// owner-only: they hold the guest's memory and output.
#[test]
fn crash_files_are_owner_only_whatever_the_umask() {
    let Some(run) = start("panic", &[], Some(0)) else { return };
    let r = run.wait();
    assert_eq!(r.code(), EXIT_GUEST_PANICKED, "{}", r.context());
    let out = &r.outcome.out;
    assert_eq!(mode_of(&out.join("crashes")), 0o700);
    let dirs = r.outcome.crash_dirs();
    assert_eq!(dirs.len(), 1);
    assert_eq!(mode_of(&dirs[0]), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&dirs[0]).unwrap().flatten().map(|e| e.path()).collect();
    assert!(files.len() >= 4, "{files:?}");
    for f in files.iter().chain([out.join("events.jsonl"), out.join("console.log")].iter()) {
        assert_eq!(mode_of(f), 0o600, "{}", f.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Dumps: one at a time, and the live dump of a hang

impl Running {
    /// `crashvmm ctl ARGS`: its exit code, its answer (`Null` when it printed none) and stderr.
    fn ctl_full(&self, args: &[&str]) -> (i32, Value, String) {
        let out = self.ctl_output(args);
        let answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), answer, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The events crashvmm logged so far called `name`.
    fn events_now(&self, name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.out.join("events.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|e| e["event"] == name).collect()
    }
}

/// One dump at a time: while a slow dump is written (a 512 MiB guest, 20% of it touched, as a
/// kdump file at dump level 0: about a second here), a second dump request is answered at once
/// with the dump in progress (and `ctl` exits 1 saying so), so is `pause`; `status` answers at
/// once and names the dump; the first dump completes and reads back. Both ways round: a live
/// dump first, then a pausing one.
#[test]
fn a_dump_request_during_a_dump_is_refused_at_once_and_the_first_completes() {
    let args = ["--memory", "512M", "--hyperv", "off", "--api-socket", "OUT/api.sock"];
    let Some(mut r) = start("bench-live testguest.touch=20", &args, None) else { return };
    r.wait_for_console("TG: bench-live: ready");
    let slow = ["--format", "kdump", "--dump-level", "0"];
    for (live, second) in [(true, &["dump"][..]), (false, &["dump", "--live"][..])] {
        let first_args: Vec<&str> = ["dump"].into_iter().chain(live.then_some("--live")).chain(slow).collect();
        let before = r.events_now("dump_started").len();
        let first = Command::new(&r.binary)
            .arg("ctl")
            .arg("--api-socket")
            .arg(r.out.join("api.sock"))
            .args(&first_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running crashvmm ctl");
        // Under way once it says so (a live dump: once its snapshot is taken).
        let deadline = Instant::now() + LIMIT;
        while r.events_now("dump_started").len() == before {
            assert!(Instant::now() < deadline, "the first dump (live: {live}) never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let asked = Instant::now();
        let (code, answer, stderr) = r.ctl_full(second);
        let took = asked.elapsed();
        let error = answer["error"].as_str().unwrap_or_default().to_string();
        assert_eq!((code, answer["ok"].as_bool()), (1, Some(false)), "{answer} {stderr}");
        assert!(error.starts_with("a dump is in progress ("), "{answer}");
        assert!(error.contains("requested on the control socket, since "), "{answer}");
        assert_eq!(error.contains("(live, "), live, "{answer}");
        assert!(stderr.contains(&error), "ctl says it on stderr too: {stderr:?}");
        let (code, status, _) = r.ctl_full(&["status"]);
        assert_eq!((code, status["ok"].as_bool()), (0, Some(true)), "{status}");
        assert_eq!(status["dump_in_progress"]["live"].as_bool(), Some(live), "{status}");
        assert_eq!(status["state"], if live { "running" } else { "paused" }, "{status}");
        let (code, paused, _) = r.ctl_full(&["pause"]);
        assert_eq!(code, 1, "{paused}");
        assert!(paused["error"].as_str().unwrap_or_default().starts_with("a dump is in progress"), "{paused}");
        let mut first = first;
        assert!(
            first.try_wait().unwrap().is_none(),
            "the refusal ({took:?}) and status came while the first dump was still being written"
        );
        // The first dump completes, and its vmcore reads back.
        let out = first.wait_with_output().unwrap();
        let done: Value = serde_json::from_slice(&out.stdout).expect("the first dump's answer");
        assert_eq!((out.status.code(), done["ok"].as_bool()), (Some(0), Some(true)), "{done}");
        assert_eq!(done["live"].as_bool().unwrap_or(false), live, "{done}");
        let mut f = std::fs::File::open(done["path"].as_str().unwrap()).unwrap();
        let k = kdump::diskdump::KdumpFile::parse(&mut f).expect("a kdump-compressed vmcore");
        assert_eq!(k.nr_cpus, 1);
        let touched = (16 << 20) / 4096..(512 << 20) / 4096;
        assert!(
            touched
                .step_by(1024)
                .any(|pfn| k.read_page(&mut f, pfn).unwrap().is_some_and(|p| p.iter().any(|&b| b != 0))),
            "no touched page in the vmcore"
        );
        assert_eq!(r.ctl(&["status"])["dump_in_progress"], Value::Null);
    }
    assert_eq!(r.ctl(&["shutdown"])["ok"], true);
    let r = r.wait();
    assert_eq!(r.code(), EXIT_POWER_OFF, "{}", r.context());
    r.assert_in_order(&["dump_started", "vmcore_written", "dump_started", "vmcore_written", "vm_exited"]);
    assert_eq!(r.all("dump_started").len(), 2, "the refused requests started nothing");
    assert!(r.all("vmcore_failed").is_empty());
}

/// `--on-hang host-dump,nmi`: the counting guest spins with interrupts off, which the watchdog
/// takes for a hang. crashvmm takes a live dump of it (paused for the snapshot only: `status`
/// says running while the vmcore is written, and the pause is a small part of the dump), writes
/// the hang's crash directory, then injects the NMI, which the test guest takes as an
/// unexpected exception 2 before it powers off.
#[test]
fn a_hang_gets_a_live_dump_then_the_nmi() {
    const COUNTER_GPA: u64 = 0x300_0000;
    const PR_REG: usize = 112;
    const R12: usize = 3;
    let args = [
        "--memory",
        "1G",
        "--hyperv",
        "off",
        "--watchdog",
        "1s",
        "--on-hang",
        "host-dump,nmi",
        // A dump that takes a while (1 GiB to read and hash), so that it is seen in progress.
        "--vmcore-format",
        "elf",
        "--dump-level",
        "0",
        "--vmcore-sha256",
        "on",
        "--api-socket",
        "OUT/api.sock",
    ];
    let Some(mut r) = start("counter", &args, None) else { return };
    r.wait_for_console("TG: counter: ready at 0x3000000");
    // What `status` says while the hang's vmcore is written (the guest is paused for the
    // snapshot at its start, a millisecond or so).
    let deadline = Instant::now() + LIMIT;
    let mut during = Vec::new();
    while r.events_now("nmi_injected").is_empty() {
        assert!(Instant::now() < deadline, "no hang handled within {LIMIT:?}");
        let (_, status, _) = r.ctl_full(&["status"]);
        if !status["dump_in_progress"].is_null() {
            assert_eq!(status["dump_in_progress"]["live"], true, "{status}");
            assert_eq!(status["crash_in_progress"], true, "{status}");
            during.push(status["state"].as_str().unwrap_or_default().to_string());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(during.iter().any(|s| s == "running"), "the hung guest runs while its vmcore is written: {during:?}");
    let r = r.wait();
    assert_eq!(r.code(), EXIT_POWER_OFF, "the guest powered off after the NMI{}", r.context());
    r.assert_in_order(&HANG_DUMP_THEN_NMI);
    assert_eq!(r.one("crash_detected")["trigger"], "guest_hang");
    let written = r.one("vmcore_written");
    let pause_us = written["pause_us"].as_u64().expect("a live dump's pause");
    assert_eq!(r.one("dump_started")["pause_us"].as_u64(), Some(pause_us));
    let duration_ms = written["duration_ms"].as_u64().unwrap();
    assert!(pause_us < duration_ms * 1000 / 4, "paused {pause_us} us of a {duration_ms} ms dump");
    assert!(r.console().contains("TG: exception 2 "), "the NMI reached the guest{}", r.context());
    // The hang's crash directory: its report and the live vmcore, one consistent snapshot.
    let dirs = r.outcome.crash_dirs();
    assert_eq!(dirs.len(), 1);
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert_eq!(report["trigger"], "guest_hang");
    assert_eq!(report["policy"]["on_hang"], "host-dump,nmi");
    let outcome = report["outcome"].as_str().unwrap_or_default();
    assert!(outcome.ends_with("; live host-side vmcore written; NMI injected"), "{outcome}");
    assert!(report["vmcore"]["reason"].as_str().unwrap_or_default().starts_with("the guest made no progress"));
    assert_eq!(report["vmcore"]["sha256"].as_str().map(str::len), Some(64), "{}", report["vmcore"]);
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(dirs[0].join("vmcore")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    let n = f.read(&mut head).unwrap();
    head.truncate(n);
    let elf = goblin::elf::Elf::parse(&head).expect("an ELF vmcore");
    let load = elf
        .program_headers
        .iter()
        .find(|p| {
            p.p_type == goblin::elf::program_header::PT_LOAD
                && (p.p_paddr..p.p_paddr + p.p_filesz).contains(&COUNTER_GPA)
        })
        .expect("the counter's page is in a PT_LOAD");
    let mut word = [0u8; 8];
    f.seek(SeekFrom::Start(load.p_offset + COUNTER_GPA - load.p_paddr)).unwrap();
    f.read_exact(&mut word).unwrap();
    let memory = u64::from_le_bytes(word);
    let prstatus = elf.iter_note_headers(&head).into_iter().flatten().flatten().find(|n| n.n_type == 1).unwrap();
    let o = PR_REG + R12 * 8;
    let r12 = u64::from_le_bytes(prstatus.desc[o..o + 8].try_into().unwrap());
    assert!(memory > 0 && (memory == r12 || memory + 1 == r12), "page {memory}, r12 {r12}: not one snapshot");
}

// ---------------------------------------------------------------------------------------------
// The control socket under pressure: a flood of connections, no descriptors left, a second
// crashvmm on the same socket

impl Running {
    /// CPU time (user + system) crashvmm's main thread has used so far, or `None` once it
    /// has exited (`/proc/PID/task/PID/stat`, fields 14 and 15, in clock ticks).
    fn main_thread_cpu(&self) -> Option<Duration> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat")).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf(3) only reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    fn connect(&self) -> std::os::unix::net::UnixStream {
        std::os::unix::net::UnixStream::connect(self.out.join("api.sock")).expect("connecting to the control socket")
    }
}

/// All a connection got until crashvmm closed it (or `LIMIT` passed).
fn read_all(mut stream: std::os::unix::net::UnixStream) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// The bar of a connection flood: under RLIMIT_NOFILE 64, 100 idle control-socket
/// connections while the guest hangs. crashvmm takes the connections it has descriptors to
/// spare for and refuses the rest at once, each with one JSON error line (said once in its log,
/// not per connection); the hang is collected completely (the live vmcore and the crash
/// directory, then the NMI), with either snapshot method, and the main thread never spins.
#[test]
fn a_connection_flood_under_a_low_descriptor_limit_costs_no_hang_dump() {
    const NOFILE: libc::rlim_t = 64;
    const CONNECTIONS: usize = 100;
    for method in ["uffd", "fork"] {
        let args = [
            "--hyperv",
            "off",
            "--watchdog",
            "2s",
            "--on-hang",
            "host-dump,nmi",
            "--live-dump-snapshot",
            method,
            "--api-socket",
            "OUT/api.sock",
        ];
        let Some(mut r) = start_with("counter", &args, Launch { nofile: Some(NOFILE), ..Launch::default() }) else {
            return;
        };
        r.wait_for_console("TG: counter: ready at 0x3000000");
        let streams: Vec<_> = (0..CONNECTIONS).map(|_| r.connect()).collect();
        // Until the hang is handled (the guest powers off after the NMI): the main thread's CPU
        // time, last read while crashvmm ran.
        let deadline = Instant::now() + LIMIT;
        let mut cpu = Duration::ZERO;
        while r.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{method}: crashvmm did not end within {LIMIT:?}");
            cpu = r.main_thread_cpu().unwrap_or(cpu);
            std::thread::sleep(Duration::from_millis(20));
        }
        let answers: Vec<String> = streams.into_iter().map(read_all).collect();
        let r = r.wait();
        assert_eq!(r.code(), EXIT_POWER_OFF, "{method}: the guest powered off after the NMI{}", r.context());
        r.assert_in_order(&HANG_DUMP_THEN_NMI);
        assert!(r.all("vmcore_failed").is_empty(), "{method}{}", r.context());
        assert_eq!(r.one("vmcore_written")["snapshot"], method);
        let dirs = r.outcome.crash_dirs();
        assert_eq!(dirs.len(), 1, "{method}: {dirs:?}");
        let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
        let outcome = report["outcome"].as_str().unwrap_or_default();
        assert!(outcome.ends_with("; live host-side vmcore written; NMI injected"), "{method}: {outcome}");
        let mut f = std::fs::File::open(dirs[0].join("vmcore")).unwrap();
        kdump::diskdump::KdumpFile::parse(&mut f).expect("a kdump-compressed vmcore");
        // Some connections were taken, the rest refused with one error line each.
        let refused: Vec<&String> = answers.iter().filter(|a| !a.is_empty()).collect();
        assert!(!refused.is_empty() && refused.len() < CONNECTIONS, "{method}: {} refused", refused.len());
        for a in &refused {
            let v: Value = serde_json::from_str(a.trim_end()).unwrap_or_else(|e| panic!("{a:?}: {e}"));
            assert_eq!(a.lines().count(), 1, "{a:?}");
            assert_eq!(v["ok"], false, "{a}");
            let error = v["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("too many control-socket connections ("), "{a}");
            assert!(error.contains("RLIMIT_NOFILE 64"), "{a}");
        }
        eprintln!("{method}: {} of {CONNECTIONS} connections refused; main thread CPU {cpu:?}", refused.len());
        let log = r.stderr();
        assert_eq!(log.matches("refusing new ones").count(), 1, "said once{}", r.context());
        assert!(!log.contains("Too many open files"), "{method}{}", r.context());
        assert!(log.len() < 64 << 10, "{method}: {} bytes of log", log.len());
        // Serving 100 connections and a 64 MiB dump's bookkeeping is a few tens of
        // milliseconds; a spinning accept loop takes a core for the whole run.
        assert!(cpu < Duration::from_millis(1500), "{method}: the main thread used {cpu:?} of CPU");
    }
}

/// Descriptors run out under the control socket (its RLIMIT_NOFILE lowered from outside to
/// what it has open): each new connection is taken off the queue with the spare descriptor and
/// refused with one error line, the log says so once, not per connection; once descriptors are
/// free again (the limit raised back) the socket serves again.
#[test]
fn out_of_descriptors_connections_are_refused_without_spinning_and_served_again_after() {
    let Some(mut r) = start("idle", &["--api-socket", "OUT/api.sock"], None) else { return };
    r.wait_for_console("TG: idle: ready");
    let pid = r.child.id() as libc::pid_t;
    // The lowest descriptor number free: as the soft limit, it leaves crashvmm none (it may
    // hold descriptors numbered above, inherited).
    let open: Vec<libc::rlim_t> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let mut was = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit(2) reads `new` (when not null) and writes the limit it replaces into
    // `was`; both outlive the call.
    let limit = |new: Option<&libc::rlimit>, was: &mut libc::rlimit| unsafe {
        libc::prlimit(pid, libc::RLIMIT_NOFILE, new.map_or(std::ptr::null(), |n| n as *const _), was)
    };
    assert_eq!(limit(None, &mut was), 0);
    let low = libc::rlimit { rlim_cur: lowest_free, rlim_max: was.rlim_max };
    assert_eq!(limit(Some(&low), &mut was), 0, "{}", std::io::Error::last_os_error());
    for _ in 0..20 {
        let answer = read_all(r.connect());
        let v: Value = serde_json::from_str(answer.trim_end()).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
        assert_eq!(v["error"], "crashvmm is out of file descriptors; try again later", "{answer}");
    }
    let cpu = r.main_thread_cpu().unwrap();
    assert_eq!(limit(Some(&was), &mut libc::rlimit { rlim_cur: 0, rlim_max: 0 }), 0);
    assert_eq!(r.ctl(&["status"])["state"], "running");
    assert_eq!(r.ctl(&["shutdown"])["ok"], true);
    let r = r.wait();
    assert_eq!(r.code(), EXIT_POWER_OFF, "{}", r.context());
    let log = r.stderr();
    assert_eq!(log.matches("Too many open files").count(), 1, "said once{}", r.context());
    assert!(log.contains("descriptors free again (20 connections refused meanwhile)"), "{}", r.context());
    assert!(cpu < Duration::from_secs(2), "the main thread used {cpu:?} of CPU");
}

/// A second crashvmm on a control socket a first one serves refuses to start (exit code 1,
/// one line saying so, nothing created); the first keeps its socket, and `shutdown` reaches it.
#[test]
fn a_second_crashvmm_on_a_served_socket_refuses_to_start() {
    let Some(mut first) = start("idle", &["--api-socket", "OUT/api.sock"], None) else { return };
    first.wait_for_console("TG: idle: ready");
    let socket = first.out.join("api.sock");
    let Some(second) = run("boot", &["--api-socket", socket.to_str().unwrap()]) else { return };
    assert_eq!(second.code(), 1, "{}", second.context());
    let said = format!("crashvmm: error: another crashvmm is serving {}\n", socket.display());
    assert_eq!(second.stderr(), said);
    assert!(!second.outcome.out.join("events.jsonl").exists(), "nothing created before the refusal");
    assert!(!second.outcome.out.join("console.log").exists(), "nothing created before the refusal");
    assert_eq!(first.ctl(&["status"])["state"], "running");
    assert_eq!(first.ctl(&["shutdown"])["ok"], true);
    let first = first.wait();
    assert_eq!(first.code(), EXIT_POWER_OFF, "{}", first.context());
    assert!(!socket.exists(), "the socket goes with its crashvmm");
}

// Dumps killed half-way: nothing under a final name, the leftover reported at the next start

impl Running {
    /// Wait (up to `LIMIT`) for the first event called `name`.
    fn wait_for_event(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(e) = self.events_now(name).into_iter().next() {
                return e;
            }
            assert!(self.child.try_wait().unwrap().is_none(), "crashvmm exited before its {name} event");
            assert!(Instant::now() < deadline, "no {name} event within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL crashvmm; its output directory lives on in what is returned.
    fn kill(mut self) -> (tempfile::TempDir, u32) {
        let pid = self.child.id();
        self.child.kill().expect("SIGKILL crashvmm");
        let status = self.child.wait().expect("waiting for crashvmm");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        (self.dir, pid)
    }
}

/// SIGKILLs a held crashvmm (which nothing else ends) should the test fail before it does.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the pid of our own child, not yet waited for (so not reused).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn report_of(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json")).expect("JSON")
}

/// What a killed run left in `crashes`: exactly one temporary directory, `.tmp-<final>-<pid>`
/// (`final` being the name the vmcore's events gave it), nothing under a final name, no
/// `vmcore` in it but a `vmcore.partial`, and a first report.json that says the vmcore is
/// being written. Returns the temporary's path and its report.
fn assert_only_a_temporary(crashes: &Path, vmcore: &str, pid: u32) -> (PathBuf, Value) {
    let vmcore = PathBuf::from(vmcore);
    let final_dir = vmcore.parent().expect("the vmcore's directory");
    assert_eq!(final_dir.parent(), Some(crashes), "{}", vmcore.display());
    let name = final_dir.file_name().unwrap().to_string_lossy().into_owned();
    let tmp_name = format!(".tmp-{name}-{pid}");
    assert_eq!(entries(crashes), std::slice::from_ref(&tmp_name), "nothing under a final name");
    let tmp = crashes.join(&tmp_name);
    assert_eq!(entries(&tmp), ["report.json", "vmcore.partial"]);
    let report = report_of(&tmp);
    assert_eq!(report["state"], "writing_vmcore", "{report}");
    assert_eq!(report["vmcore_pending"]["file"], "vmcore.partial", "{report}");
    assert_eq!(report["vmcore"], Value::Null, "{report}");
    (tmp, report)
}

/// crashvmm started again on the crash directory `crashes` reports `leftover` (the temporary a
/// run with `pid` left) with its size and what its report.json says, in its log and as a
/// `stale_temporary` event, and keeps it. Returns the event.
fn assert_reported(r: &Run, leftover: &Path, pid: u32) -> Value {
    let e = r.one("stale_temporary");
    assert_eq!(e["path"].as_str(), leftover.to_str(), "{e}");
    assert_eq!(e["pid"].as_u64(), Some(u64::from(pid)), "{e}");
    let bytes: u64 = ["report.json", "vmcore.partial"]
        .iter()
        .map(|f| std::fs::metadata(leftover.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert_eq!(e["bytes"].as_u64(), Some(bytes), "{e}");
    assert_eq!(e["state"], "writing_vmcore", "{e}");
    assert!(leftover.join("vmcore.partial").is_file(), "kept, not removed");
    let log = r.stderr();
    let line = log.lines().find(|l| l.contains(leftover.to_str().unwrap())).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("WARN") && line.contains(&format!("crashvmm {pid}, which is no longer running")), "{line}");
    assert!(line.contains("writing_vmcore"), "{line}");
    e
}

/// The idle guest with a control socket (and `extra` options), and an operator's `dump` asked
/// of it with the writer held after its first progress report (`CRASHVMM_TEST_HOLD_DUMP`): the
/// run, its kill guard and the waiting `ctl dump`.
fn start_a_held_operator_dump(extra: &[&str]) -> Option<(Running, KillOnDrop, std::process::Child)> {
    let args = [&["--api-socket", "OUT/api.sock"], extra].concat();
    let hold = [("CRASHVMM_TEST_HOLD_DUMP", "progress")];
    let mut r = start_with("idle", &args, Launch { env: &hold, ..Launch::default() })?;
    let guard = KillOnDrop(Some(r.child.id()));
    r.wait_for_console("TG: idle: ready");
    let asked = Command::new(&r.binary)
        .arg("ctl")
        .arg("--api-socket")
        .arg(r.out.join("api.sock"))
        .arg("dump")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running crashvmm ctl");
    Some((r, guard, asked))
}

/// `ctl dump` killed while its vmcore is written (the test-only knob stops the writer at its
/// first progress report, after the `dump_progress` event): no `<time>-dump` directory, only its
/// temporary, whose report.json says the vmcore was being written; the next start reports it
/// (event and log) and keeps it, and its own `dump` answers with the final path, where a
/// complete vmcore and report are.
#[test]
fn an_operator_dump_killed_mid_write_leaves_only_a_temporary_that_the_next_start_reports() {
    let Some((mut r, mut guard, mut asked)) = start_a_held_operator_dump(&[]) else { return };
    let started = r.wait_for_event("dump_started");
    r.wait_for_event("dump_progress");
    let crashes = r.out.join("crashes");
    guard.0 = None;
    let (first_out, pid) = r.kill();
    let _ = asked.kill();
    let _ = asked.wait();
    let vmcore = started["path"].as_str().expect("dump_started names the vmcore");
    assert!(vmcore.ends_with("-dump/vmcore"), "{started}");
    let (tmp, report) = assert_only_a_temporary(&crashes, vmcore, pid);
    assert_eq!((report["kind"].as_str(), report["trigger"].as_str()), (Some("operator_dump"), Some("operator")));
    assert_eq!(report["reason"], "requested on the control socket");

    // The next start on the same crash directory.
    let crash_dir = crashes.to_str().unwrap();
    let args = ["--api-socket", "OUT/api.sock", "--crash-dir", crash_dir];
    let Some(mut r) = start("idle", &args, None) else { return };
    r.wait_for_console("TG: idle: ready");
    let dump = r.ctl(&["dump"]);
    assert_eq!(dump["ok"], true, "{dump}");
    let path = PathBuf::from(dump["path"].as_str().unwrap());
    let dir = path.parent().unwrap();
    assert_eq!((path.file_name().unwrap(), dir.parent()), (std::ffi::OsStr::new("vmcore"), Some(crashes.as_path())));
    assert!(dir.file_name().unwrap().to_string_lossy().ends_with("-dump"), "{dump}");
    assert_eq!(entries(dir), ["report.json", "vmcore"]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), dump["bytes"].as_u64().unwrap());
    let done = report_of(dir);
    assert_eq!((done["state"].as_str(), done["kind"].as_str()), (Some("complete"), Some("operator_dump")));
    assert_eq!(done["vmcore"]["bytes"], dump["bytes"]);
    kdump::diskdump::KdumpFile::parse(&mut std::fs::File::open(&path).unwrap()).expect("a complete vmcore");
    assert_eq!(r.ctl(&["shutdown"])["ok"], true);
    let r = r.wait();
    assert_eq!(r.code(), EXIT_POWER_OFF, "{}", r.context());
    let e = assert_reported(&r, &tmp, pid);
    assert_eq!((e["kind"].as_str(), e["trigger"].as_str()), (Some("operator_dump"), Some("operator")), "{e}");
    assert_eq!(r.one("vmcore_written")["path"], dump["path"], "the events name the final path too");
    let mut names = entries(&crashes);
    names.retain(|n| n.starts_with(".tmp-"));
    assert_eq!(names, [tmp.file_name().unwrap().to_string_lossy().into_owned()], "only the old leftover");
    drop(first_out);
}

/// A crash's host-side vmcore killed while it is written: no crash directory under its final
/// name, only its temporary, whose first report.json names the crash (trigger, time, the
/// vmcore's reason); the next start reports it.
#[test]
fn a_crash_dump_killed_mid_write_leaves_only_a_temporary_that_the_next_start_reports() {
    let hold = [("CRASHVMM_TEST_HOLD_DUMP", "progress")];
    let Some(mut r) = start_with("panic", &[], Launch { env: &hold, ..Launch::default() }) else { return };
    let mut guard = KillOnDrop(Some(r.child.id()));
    r.wait_for_event("dump_progress");
    let crashes = r.out.join("crashes");
    let detected = r.events_now("crash_detected");
    guard.0 = None;
    let (first_out, pid) = r.kill();
    assert_eq!(detected.len(), 1);
    let tmp = entries(&crashes);
    assert_eq!(tmp.len(), 1, "{tmp:?}");
    // `.tmp-<time>-001-<pid>`: the crash directory would have been `<time>-001`.
    let name = tmp[0].strip_prefix(".tmp-").and_then(|n| n.strip_suffix(&format!("-{pid}"))).expect("a temporary");
    let vmcore = crashes.join(name).join("vmcore");
    let (tmp, report) = assert_only_a_temporary(&crashes, vmcore.to_str().unwrap(), pid);
    assert!(name.ends_with("-001"), "{name}");
    assert_eq!((report["kind"].as_str(), report["trigger"].as_str()), (Some("crash"), Some("pvpanic")));
    assert_eq!(report["vmcore_pending"]["reason"], "Hyper-V crash report", "{report}");
    assert_eq!(report["outcome"], Value::Null, "{report}");
    assert!(report["detected_at"].is_string(), "{report}");

    let Some(r) = run("boot", &["--crash-dir", crashes.to_str().unwrap()]) else { return };
    r.assert_exit(EXIT_POWER_OFF, "poweroff");
    let e = assert_reported(&r, &tmp, pid);
    assert_eq!((e["kind"].as_str(), e["trigger"].as_str()), (Some("crash"), Some("pvpanic")), "{e}");
    assert_eq!(e["started_at"], report["detected_at"], "{e}");
    assert_eq!(r.names(), ["stale_temporary", "vm_started", "vm_exited"]);
    drop(first_out);
}

// ---------------------------------------------------------------------------------------------
// The main thread while a dump is written

impl Running {
    /// The context switches (voluntary and not) of crashvmm's main thread so far: each time it
    /// slept and woke, or was preempted (`/proc/PID/task/PID/status`).
    fn main_thread_switches(&self) -> u64 {
        let pid = self.child.id();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).expect("the main thread's status");
        ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
            .iter()
            .map(|k| {
                let v = status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_else(|| panic!("no {k} in {status}"));
                v.trim().parse::<u64>().expect("a count")
            })
            .sum()
    }
}

/// While a vmcore is written, crashvmm's main thread sleeps until the writer says it is done:
/// it does not poll for the dump's end, nor wake for the watchdog (which does not judge the
/// guest meanwhile). Counted over 2 s of an operator's dump held in progress (the test knob
/// stops the writer after its first progress report), with a watchdog ticking every 250 ms
/// otherwise: a 2 ms poll made about a thousand wake-ups in that time.
#[test]
fn the_main_thread_sleeps_while_a_dump_is_written() {
    let Some((mut r, mut guard, mut asked)) = start_a_held_operator_dump(&["--watchdog", "1s"]) else { return };
    // The writer has stopped for good: the dump stays in progress.
    r.wait_for_event("dump_progress");
    let before = r.main_thread_switches();
    std::thread::sleep(Duration::from_secs(2));
    let woke = r.main_thread_switches() - before;
    let _ = asked.kill();
    let _ = asked.wait();
    guard.0 = None;
    let (_out, _) = r.kill();
    eprintln!("the main thread woke {woke} times in 2 s of a dump in progress");
    assert!(woke <= 6, "the main thread woke {woke} times in 2 s while the dump was in progress");
}

/// An EtherType for local experiments (IEEE 802): what the `virtio-net` scenario's frames use.
const ETH_P_TEST: u16 = 0x88b5;

/// A TAP interface made for one test (no IPv6 on it: only the test's frames), deleted after.
struct TestTap(String);

impl TestTap {
    fn create(name: &str) -> Self {
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("running ip");
            assert!(st.success(), "ip {args:?} (the test needs CAP_NET_ADMIN)");
        };
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = TestTap(name.to_owned());
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", name, "up"]);
        tap
    }

    /// A raw packet socket on it for the test EtherType.
    fn packet_socket(&self) -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let name = std::ffi::CString::new(self.0.clone()).unwrap();
        // SAFETY: a NUL-terminated name that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {}", self.0);
        let proto = ETH_P_TEST.to_be();
        // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket (needs CAP_NET_RAW): {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are then set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: bind(2) reads `len` bytes of `addr`, which outlives the call.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), len) };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// The next frame on `fd` from `src` within `ms`.
fn frame_from(fd: &std::os::fd::OwnedFd, src: &[u8; 6], ms: i32) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + Duration::from_millis(ms as u64);
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).as_millis() as i32;
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that outlives the call.
        if left <= 0 || unsafe { libc::poll(&mut p, 1, left) } != 1 {
            return None;
        }
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 14 && buf[6..12] == src[..] {
            return Some(buf[..n as usize].to_vec());
        }
    }
}

/// The `virtio-net` scenario's test frame `tag` (without its virtio-net header).
fn test_frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_P_TEST.to_be_bytes());
    f.extend((0..1000u32).map(|i| tag ^ (i as u8).wrapping_mul(7)));
    f
}

/// virtio-net on a real TAP, with the test guest's driver: frames A and B come out of the TAP
/// byte for byte, and nothing of the hostile chains between them (a loop, a device-writable
/// buffer, a buffer outside RAM, a 70,000-byte frame, a segmentation header not negotiated, a
/// head past the table), each of which the guest gets back; frame C from the host side reaches
/// the guest; its hostile disk requests are answered and GET_ID still works; the guest powers
/// off. Needs CAP_NET_ADMIN and CAP_NET_RAW (the test host and CI run as root).
#[test]
fn a_guest_on_a_tap_moves_frames_both_ways_and_its_hostile_chains_stop_nothing() {
    use std::os::fd::AsRawFd;
    let name = format!("cvtg{}", std::process::id() % 100_000);
    let tap = TestTap::create(&name);
    let sock = tap.packet_socket();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // The test guest's driver speaks virtio-mmio.
    let net = format!("tap={name},transport=mmio");
    let disk = format!("path={}", disk.display());
    let Some(mut r) = start("virtio-net", &["--net", &net, "--disk", &disk], None) else { return };
    r.wait_for_console("TG: virtio-net: mac ");
    let console = std::fs::read_to_string(r.out.join("console.log")).unwrap();
    let mac = console
        .lines()
        .find_map(|l| l.strip_prefix("TG: virtio-net: mac 0x"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .expect("the guest's MAC on the console");
    let mac: [u8; 6] = mac.to_be_bytes()[2..].try_into().unwrap();
    for tag in [b'A', b'B'] {
        let got = frame_from(&sock, &mac, 10_000).unwrap_or_else(|| panic!("no frame {}", tag as char));
        assert_eq!(got, test_frame([0xff; 6], mac, tag), "frame {}", tag as char);
    }
    r.wait_for_console("TG: virtio-net: ready");
    let c = test_frame(mac, [0x02, 0, 0, 0, 0, 1], b'C');
    // SAFETY: send(2) reads `c`, which outlives the call.
    let sent = unsafe { libc::send(sock.as_raw_fd(), c.as_ptr().cast(), c.len(), 0) };
    assert_eq!(sent, c.len() as isize, "{}", std::io::Error::last_os_error());
    r.wait_for_console("TG: virtio-net: waiting for the link to go down");
    assert_eq!(frame_from(&sock, &mac, 200), None, "a frame after B");
    // The TAP goes away under crashvmm: the guest's link goes down, and it goes on.
    drop(sock);
    drop(tap);
    let run = r.wait();
    run.assert_pass("virtio-net");
    run.assert_exit(EXIT_POWER_OFF, "poweroff");
    assert!(run.console().contains("TG: virtio-net: received 1026 bytes"), "{}", run.context());
    assert!(run.console().contains("TG: virtio-net: link down"), "{}", run.context());
    // The device's counts for the boot, as the event log and the metrics have them: frames A
    // and B sent; of the hostile chains, the 70,000-byte one too large, the loop, the
    // device-writable buffer, the buffer outside RAM, the unrequested segmentation and the
    // descriptor past the table malformed; frame C (at least) received; frame D refused by the
    // TAP that was gone.
    let c = run.one("net_counters");
    assert_eq!((c["device"].as_str(), c["tap"].as_str()), (Some("net0"), Some(name.as_str())), "{c}");
    assert_eq!(c["tx_frames"], 2, "{c}");
    assert_eq!(c["tx_bytes"], 2 * (1026 - 12), "{c}");
    assert!(c["rx_frames"].as_u64() >= Some(1), "{c}");
    let dropped = |reason: &str| c["dropped"][reason].as_u64();
    let drops = [dropped("tx_malformed"), dropped("tx_too_large"), dropped("tx_backend")];
    assert_eq!(drops, [Some(5), Some(1), Some(1)], "{c}");
    assert!(run.stderr().contains("link down"), "{}", run.context());
}
