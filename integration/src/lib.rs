//! Scenario runner: boots a named Linux scenario under crashvmm and collects what it left.
//!
//! Where `/dev/kvm` is hardware virtualization the scenario runs directly. Elsewhere (such as
//! the software KVM of the development machines, which cannot run an unmodified Linux kernel)
//! it runs inside the *software KVM test host*: `qemu-system-x86_64 -accel tcg -cpu max`
//! booting a Debian kernel with `kvm_amd`, which mounts a 9p share holding crashvmm, the guest
//! images and a `run.sh`, runs it, and hands the output files back (see guest-images/README.md).
//!
//! Every run leaves in its output directory: `events.jsonl`, `console.log`, `crashvmm.log`
//! (crashvmm's stderr), `exit-code` (crashvmm's exit status), `mode` (`direct` or `testhost`)
//! and, in the test host, `testhost.log` (the test host's own console).

pub mod bench;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use crash_suite::runner::{self, Mode, RunError, RunSpec, TestHost};
use serde_json::Value;
use thiserror::Error;

/// The line the guest prints in scenario `boot` once its init runs.
pub const BOOT_MARKER: &str = "CRASHTEST: boot: marker";

/// A named Linux scenario: what the guest does comes from `crashtest=<name>` on its command
/// line (guest-images/scenarios/<name>.sh); the rest is how crashvmm runs it.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub memory: &'static str,
    pub vcpus: u32,
    /// Kernel command line; `crashtest=<name>` is appended.
    pub cmdline: &'static str,
    /// crashvmm's exit code when the scenario does what it should.
    pub expected_exit: i32,
    /// The trigger of the first `crash_detected` event; `None`: no crash may be detected.
    pub expected_trigger: Option<&'static str>,
    /// Events that must occur in this order (others may come between), ordered by cause
    /// ([`Outcome::events_by_cause`]): `crash_detected` at the time the guest did what it
    /// reacts to, so that a declaration orders only what the guest or the orchestrator
    /// determines, never which thread got the CPU first.
    pub expected_events: &'static [&'static str],
    /// Events that must not occur.
    pub absent_events: &'static [&'static str],
    /// Lines (substrings) the guest's console must show.
    pub expected_console: &'static [&'static str],
    /// Extra `crashvmm run` options.
    pub vmm_args: &'static [&'static str],
    /// Wall-clock limit in the software KVM test host; direct runs get a quarter of it.
    pub testhost_timeout: Duration,
    /// Put the crash directory on a tmpfs of this size (to test a full disk); needs root.
    pub crash_dir_tmpfs: Option<&'static str>,
    /// Shell commands run beside crashvmm once the console shows the first string: `ctl` is
    /// `crashvmm ctl --api-socket ...` (crashvmm then serves a control socket), `$OUT` the
    /// output directory.
    pub driver: Option<(&'static str, &'static str)>,
    /// A data disk for the guest (`--disk path=data-disk.img,readonly`, its virtio serial
    /// `crashvmm-disk0`): an ext4 image the runner makes, holding `pagecache.bin`, non-zero data
    /// of this percentage of the guest's memory.
    pub data_disk: Option<u32>,
    /// A network device (`--net tap=crashvmm-net0`) whose TAP the runner sets up before crashvmm
    /// starts, with the host side's address and TCP peers: [`net_setup`].
    pub network: bool,
}

/// Every scenario the runner knows.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        description: "boot to the guest's init, print the marker, power off",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        expected_exit: 0,
        expected_trigger: None,
        expected_events: &["vm_started", "vm_exited"],
        absent_events: &["crash_detected"],
        expected_console: &[BOOT_MARKER],
        vmm_args: &[],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "panic",
        description: "Hyper-V on, no crash kernel: load pvpanic-mmio and hv_vmbus, panic with sysrq",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "hyperv_enabled", "vmbus_connected", "pvpanic", "crash_detected", "hv_crash", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &["Hypervisor detected: Microsoft Hyper-V", "hv_vmbus: Vmbus version:"],
        vmm_args: &[],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "panic-kvm",
        description: "as panic, with --hyperv off: a plain KVM guest, pvpanic alone reports",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["hyperv_enabled", "hv_crash"],
        expected_console: &["Hypervisor detected: KVM"],
        vmm_args: &["--hyperv", "off"],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "kdump",
        description:
            "crash kernel loaded with kexec -p, sysrq crash: VMBus UNLOAD, kexec, the crash kernel reconnects, \
                      writes its dump to the crash disk; crashvmm collects it",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1 crashkernel=192M",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "guest_kexec", "crash_kernel_started", "vmbus_connected", "kdump_completed", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &["CRASHTEST: kdump: crash kernel loaded", "CRASHTEST: kdump-capture: marker"],
        vmm_args: &["--crash-disk", "path=crash-disk.img,size=1G"],
        testhost_timeout: Duration::from_secs(420),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "kdump-quiet",
        description: "as kdump, with the kernel's console messages off (loglevel=0): the report comes from guest memory",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 loglevel=0 panic=-1 crashkernel=192M",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "guest_kexec", "crash_kernel_started", "kdump_completed", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &["CRASHTEST: kdump: crash kernel loaded", "CRASHTEST: kdump-capture: marker"],
        vmm_args: &["--crash-disk", "path=crash-disk.img,size=1G"],
        testhost_timeout: Duration::from_secs(420),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "kdump-timeout",
        description: "as kdump, but the crash kernel hangs: after --kdump-timeout (60 s) crashvmm takes a host-side vmcore",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1 crashkernel=192M crashtest.capture=hang",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "guest_kexec", "crash_kernel_started", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["kdump_completed"],
        expected_console: &["CRASHTEST: kdump-hang: hanging"],
        vmm_args: &["--crash-disk", "path=crash-disk.img,size=1G", "--kdump-timeout", "60s"],
        testhost_timeout: Duration::from_secs(420),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "panic-reset",
        description:
            "as panic, with --after-crash reset --max-crashes 2: two crashes, two crash directories, then exit",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "crash_report", "vm_reset", "hyperv_enabled", "pvpanic", "crash_detected", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &[],
        vmm_args: &["--after-crash", "reset", "--max-crashes", "2"],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "panic-fulldisk",
        description: "as panic, with the crash directory on a 4 MiB tmpfs: the vmcore cannot be written",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        expected_exit: CRASH_COLLECTION_FAILED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "vmcore_failed", "crash_report", "vm_exited"],
        absent_events: &["vmcore_written"],
        expected_console: &[],
        vmm_args: &[],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: Some("4m"),
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "nmi",
        description: "as kdump, but the guest sets unknown_nmi_panic and waits; the runner injects an NMI through the control socket",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1 crashkernel=192M crashtest.trigger=nmi",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("nmi_injection"),
        expected_events: &["vm_started", "nmi_injected", "pvpanic", "crash_detected", "guest_kexec", "crash_kernel_started", "kdump_completed", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &["CRASHTEST: kdump: waiting for an NMI"],
        vmm_args: &["--crash-disk", "path=crash-disk.img,size=1G"],
        testhost_timeout: Duration::from_secs(420),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: Some(("CRASHTEST: kdump: waiting for an NMI", "ctl inject-nmi >$OUT/ctl-inject-nmi.json")),
    },
    Scenario {
        name: "hang",
        description: "as kdump, but every CPU spins with interrupts off (a test module); the --watchdog \
                      detects it and injects an NMI, and the guest's kdump runs",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1 crashkernel=192M crashtest.trigger=lockup",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("guest_hang"),
        expected_events: &["vm_started", "guest_hang", "nmi_injected", "pvpanic", "crash_detected", "guest_kexec", "crash_kernel_started", "kdump_completed", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &["CRASHTEST: kdump: hanging with interrupts off"],
        vmm_args: &["--crash-disk", "path=crash-disk.img,size=1G", "--watchdog", "10s", "--on-hang", "nmi"],
        testhost_timeout: Duration::from_secs(420),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: None,
    },
    Scenario {
        name: "wait-ctl",
        description: "the guest idles; the runner drives the control socket: status, a malformed request, \
                      subscribe, pause, resume, dump, reset, shutdown",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        expected_exit: 0,
        expected_trigger: None,
        expected_events: &["vm_started", "vm_paused", "vm_resumed", "dump_started", "vmcore_written", "vm_reset", "vm_exited"],
        absent_events: &["crash_detected"],
        expected_console: &["CRASHTEST: wait: ready"],
        vmm_args: &[],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: Some((
            "CRASHTEST: wait: ready",
            "ctl status >$OUT/ctl-status.json; \
             ctl raw 'this is not json' >$OUT/ctl-malformed.json; \
             (ctl subscribe >$OUT/ctl-subscribe.jsonl &); sleep 3; \
             ctl pause >$OUT/ctl-pause.json; ctl status >$OUT/ctl-status-paused.json; \
             ctl resume >$OUT/ctl-resume.json; ctl dump >$OUT/ctl-dump.json; ctl reset >$OUT/ctl-reset.json; \
             i=0; until [ $(grep -c 'CRASHTEST: wait: ready' $OUT/console.log) -ge 2 ] || [ $i -ge 120 ]; do \
             i=$((i + 1)); sleep 1; done; \
             ctl status >$OUT/ctl-status-reset.json; ctl shutdown >$OUT/ctl-shutdown.json",
        )),
    },
    Scenario {
        name: "wait-sysrq",
        description: "the guest idles with sysrq_always_enabled; the runner sends magic SysRq keys on its serial \
                      console (a break and the key: `crashvmm ctl sysrq 9`, then `c`), and the guest's kernel \
                      sets its console loglevel, then panics; crashvmm collects the crash as any other",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1 sysrq_always_enabled",
        expected_exit: GUEST_PANICKED,
        // The wait scenario loads no pvpanic driver: the Hyper-V crash MSRs report.
        expected_trigger: Some("hv_crash"),
        expected_events: &["vm_started", "sysrq_sent", "sysrq_sent", "hv_crash", "crash_detected", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &[
            "CRASHTEST: wait: ready",
            "sysrq: Loglevel set to 9",
            "sysrq: Trigger a crash",
            "Kernel panic - not syncing: sysrq triggered crash",
        ],
        vmm_args: &[],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: Some((
            "CRASHTEST: wait: ready",
            "ctl sysrq 9 >$OUT/ctl-sysrq-9.json; \
             i=0; until grep -q 'Loglevel set to 9' $OUT/console.log || [ $i -ge 30 ]; do i=$((i + 1)); sleep 1; done; \
             ctl sysrq c >$OUT/ctl-sysrq-c.json",
        )),
    },
    Scenario {
        name: "pagecache",
        description: "a guest that looks like production: it reads a file of 60% of its RAM from a data disk into \
                      the page cache, holds 25% in a process's user pages, panics with sysrq; crashvmm writes \
                      its kdump-compressed vmcore (-d 31) and pauses, the runner takes an unfiltered ELF of \
                      the same memory through the control socket, then shuts it down",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        // The control socket's shutdown ends it (exit code 0, as documented), after the crash.
        expected_exit: 0,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "vmcore_written", "crash_report", "dump_started", "vmcore_written", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &[
            "CRASHTEST: pagecache: read ",
            "CRASHTEST: pagecache: user pages ",
            "CRASHTEST: pagecache: triggering",
        ],
        // zlib, not the default LZO: the test holds this file to `makedumpfile -c`'s, and an LZO
        // file written from the same ELF to `makedumpfile -l`'s.
        vmm_args: &["--after-crash", "pause", "--vmcore-compress", "zlib"],
        // About 110 s in the test host (the file read is most of it).
        testhost_timeout: Duration::from_secs(420),
        crash_dir_tmpfs: None,
        data_disk: Some(60),
        network: false,
        driver: Some((
            "CRASHTEST: pagecache: triggering",
            "i=0; until grep -q '\"event\":\"crash_report\"' $OUT/events.jsonl || [ $i -ge 600 ]; do \
             i=$((i + 1)); sleep 1; done; \
             ctl dump --format elf --dump-level 0 >$OUT/ctl-dump.json; ctl shutdown >$OUT/ctl-shutdown.json",
        )),
    },
    Scenario {
        name: "live",
        description: "the guest runs; the runner takes a live dump (kdump format) through the control socket; \
                      the guest keeps running and powers off by itself",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1",
        expected_exit: 0,
        expected_trigger: None,
        expected_events: &["vm_started", "dump_started", "vmcore_written", "vm_exited"],
        absent_events: &["crash_detected", "vmcore_failed"],
        expected_console: &["CRASHTEST: live: ready", "CRASHTEST: live: still running"],
        vmm_args: &[],
        testhost_timeout: Duration::from_secs(300),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: false,
        driver: Some(("CRASHTEST: live: ready", "ctl dump --live >$OUT/ctl-dump-live.json")),
    },
    Scenario {
        name: "net",
        description: "a guest on the network: eth0 (virtio-net on a TAP) pings the host side and moves 1 MiB \
                      each way over TCP, hashed on both ends; then it panics and its kdump completes",
        memory: "768M",
        vcpus: 2,
        cmdline: "console=ttyS0 panic=-1 crashkernel=192M",
        expected_exit: GUEST_PANICKED,
        expected_trigger: Some("pvpanic"),
        expected_events: &["vm_started", "pvpanic", "crash_detected", "guest_kexec", "crash_kernel_started", "kdump_completed", "vmcore_written", "crash_report", "vm_exited"],
        absent_events: &["vmcore_failed"],
        expected_console: &[
            "CRASHTEST: net: ping ok",
            "CRASHTEST: net: sent ",
            "CRASHTEST: net: received ",
            "CRASHTEST: kdump: crash kernel loaded",
            "CRASHTEST: kdump-capture: marker",
        ],
        vmm_args: &["--crash-disk", "path=crash-disk.img,size=1G"],
        testhost_timeout: Duration::from_secs(480),
        crash_dir_tmpfs: None,
        data_disk: None,
        network: true,
        driver: None,
    },
];

/// The TAP of the `network` scenarios, and the addresses on it (the guest's is set by
/// guest-images/scenarios/net.sh).
pub const NET_TAP: &str = "crashvmm-net0";
pub const NET_HOST_ADDR: &str = "192.168.127.1";
pub const NET_GUEST_ADDR: &str = "192.168.127.2";
/// What the host side sends the guest (beside `run.sh`), and where it keeps what the guest sent
/// (in the output directory).
pub const NET_TO_GUEST: &str = "net-to-guest.bin";
pub const NET_FROM_GUEST: &str = "net-from-guest.bin";
pub const NET_TO_GUEST_BYTES: u64 = 1 << 20;

/// The TAP of a network run (persistent, so that crashvmm or QEMU attaches to it) with the host
/// side's address, up.
pub fn net_tap_setup() -> String {
    format!(
        "modprobe tun 2>/dev/null; \
         busybox tunctl -t {NET_TAP} && \
         busybox ip addr add {NET_HOST_ADDR}/24 dev {NET_TAP} && \
         busybox ip link set {NET_TAP} up"
    )
}

/// The host side of a `network` scenario, run before crashvmm: [`net_tap_setup`], then busybox
/// nc peers: port 5001 keeps what the guest sends in [`NET_FROM_GUEST`], port 5002 sends
/// [`NET_TO_GUEST`]. Each serves one connection.
pub fn net_setup() -> String {
    format!(
        "{} && \
         {{ busybox nc -l -p 5001 -e sh -c \"cat >$OUT/{NET_FROM_GUEST}\" & \
         busybox nc -l -p 5002 -e cat {NET_TO_GUEST} & }}",
        net_tap_setup()
    )
}

/// The data disk's file name beside `run.sh`, and the file it holds.
pub const DATA_DISK: &str = "data-disk.img";
pub const DATA_DISK_FILE: &str = "pagecache.bin";

/// crashvmm's exit code when the guest panicked and its vmcore could not be collected.
pub const CRASH_COLLECTION_FAILED: i32 = 7;

/// crashvmm's exit code for a guest that panicked (see README.md).
pub const GUEST_PANICKED: i32 = 5;

impl Scenario {
    /// The crashvmm run of this scenario on `kernel` and `initrd` (`data_disk`: the data disk's
    /// file, when it has one).
    /// `net_data`: the file the host side sends, for a `network` scenario.
    pub fn run_spec(
        &self,
        kernel: PathBuf,
        initrd: PathBuf,
        data_disk: Option<&Path>,
        net_data: Option<&Path>,
    ) -> RunSpec {
        let cmdline = format!("{} crashtest={}", self.cmdline, self.guest_scenario());
        let mib = parse_mib(self.memory).unwrap_or(1024);
        let mut spec = RunSpec::boot(format!("scenario {}", self.name), kernel, initrd, &cmdline, mib, self.vcpus);
        if let Some(d) = data_disk {
            spec.inputs.push((DATA_DISK.to_string(), d.to_owned()));
            spec.args.extend(["--disk".to_string(), format!("path={DATA_DISK},readonly")]);
        }
        if let Some(d) = net_data {
            spec.inputs.push((NET_TO_GUEST.to_string(), d.to_owned()));
            spec.args.extend(["--net".to_string(), format!("tap={NET_TAP}")]);
            spec.setup = Some(net_setup());
            spec.own_network = true;
        }
        spec.args.extend(self.vmm_args.iter().map(|a| a.to_string()));
        // Extra options for experiments: CRASHVMM_EXTRA_ARGS="--on-panic pause --after-crash exit".
        if let Ok(extra) = std::env::var("CRASHVMM_EXTRA_ARGS") {
            spec.args.extend(extra.split_whitespace().map(str::to_string));
        }
        spec.driver = self.driver.map(|(m, c)| (m.to_string(), c.to_string()));
        spec.crash_dir_tmpfs = self.crash_dir_tmpfs.map(String::from);
        spec
    }

    /// The guest-side script: scenarios that differ only in crashvmm options share one
    /// (`panic-kvm` runs `panic`).
    pub fn guest_scenario(&self) -> &'static str {
        self.name.split_once('-').map_or(self.name, |(base, _)| base)
    }
}

pub fn scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

#[derive(Debug, Error)]
pub enum RunnerError {
    #[error("unknown scenario '{0}' (known: {1})")]
    UnknownScenario(String, String),
    #[error("{what} not found at {path}: {hint}")]
    Missing { what: &'static str, path: PathBuf, hint: &'static str },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the software KVM test host did not run the scenario (test host rc {rc}); see {log}")]
    TestHost { rc: String, log: PathBuf },
    #[error(transparent)]
    Run(#[from] RunError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunnerError {
    let what = what.into();
    move |source| RunnerError::Io { what, source }
}

/// Where scenarios run: [`Mode::detect`], or `CRASHVMM_SCENARIO_MODE=direct|testhost`.
/// Returns the mode and why.
pub fn detect_mode() -> (Mode, String) {
    match std::env::var("CRASHVMM_SCENARIO_MODE").as_deref() {
        Ok("direct") => (Mode::Direct, "CRASHVMM_SCENARIO_MODE=direct".into()),
        Ok("testhost") => (Mode::TestHost, "CRASHVMM_SCENARIO_MODE=testhost".into()),
        _ => Mode::detect(),
    }
}

/// The variable that lets the tests needing `/dev/kvm` skip on a machine without it (a
/// developer's laptop); CI never sets it, so there a missing `/dev/kvm` fails them.
pub const SKIP_KVM_TESTS: &str = "CRASHVMM_SKIP_KVM_TESTS";

/// Whether the tests of `suite` that run crashvmm on `/dev/kvm` can run here: `true` when
/// `/dev/kvm` exists; `false` (skip, said on stderr) only when it is missing and
/// `CRASHVMM_SKIP_KVM_TESTS=1`; otherwise a missing `/dev/kvm` fails the test.
pub fn kvm_available(suite: &str) -> bool {
    kvm_decision(Path::new("/dev/kvm").exists(), std::env::var(SKIP_KVM_TESTS).ok().as_deref(), suite)
        .unwrap_or_else(|why| panic!("{why}"))
}

/// The crashvmm binary and the test guest ELF for the tests of `suite` that run them on
/// `/dev/kvm`, or `None` (skip: [`kvm_available`]). A missing one fails the test with what
/// builds it; `CRASHVMM_TESTGUEST` names another test guest.
pub fn testguest_prerequisites(suite: &str) -> Option<(PathBuf, PathBuf)> {
    if !kvm_available(suite) {
        return None;
    }
    let setup = Setup::from_env();
    assert!(setup.binary.is_file(), "{} is missing: run `make build` (or set CRASHVMM_BIN)", setup.binary.display());
    let elf = std::env::var_os("CRASHVMM_TESTGUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| setup.images.join("testguest/testguest.elf"));
    assert!(elf.is_file(), "{} is missing: run `make testguest` (or set CRASHVMM_TESTGUEST)", elf.display());
    Some((setup.binary, elf))
}

/// The finished crash directories under `crash_dir` (not the spool's `.upload/` nor an
/// unfinished `.tmp-*`), oldest first: their names begin with the crash's time.
pub fn finished_crash_dirs(crash_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        fs::read_dir(crash_dir).map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
    dirs.retain(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')));
    dirs.sort();
    dirs
}

fn kvm_decision(kvm: bool, skip: Option<&str>, suite: &str) -> Result<bool, String> {
    match (kvm, skip) {
        (true, _) => Ok(true),
        (false, Some("1")) => {
            eprintln!("skipping the {suite} tests: /dev/kvm is missing and {SKIP_KVM_TESTS}=1");
            Ok(false)
        }
        (false, _) => Err(format!(
            "the {suite} tests need /dev/kvm, which is missing (set {SKIP_KVM_TESTS}=1 to skip them knowingly)"
        )),
    }
}

/// Where the binary and images are.
#[derive(Debug, Clone)]
pub struct Setup {
    pub root: PathBuf,
    /// A statically linked crashvmm (it must also run inside the test host).
    pub binary: PathBuf,
    pub images: PathBuf,
}

impl Setup {
    /// The repository's build outputs, or `CRASHVMM_BIN` and `CRASHVMM_IMAGES`.
    pub fn from_env() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_owned();
        let binary = std::env::var_os("CRASHVMM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/x86_64-unknown-linux-gnu/release/crashvmm"));
        let images =
            std::env::var_os("CRASHVMM_IMAGES").map(PathBuf::from).unwrap_or_else(|| root.join("build/images"));
        Self { root, binary, images }
    }

    fn require(&self, what: &'static str, path: PathBuf, hint: &'static str) -> Result<PathBuf, RunnerError> {
        if path.is_file() {
            Ok(path)
        } else {
            Err(RunnerError::Missing { what, path, hint })
        }
    }

    fn guest_kernel(&self) -> Result<PathBuf, RunnerError> {
        self.require("guest kernel", self.images.join("guest/vmlinuz"), "run `make images`")
    }

    fn guest_initrd(&self) -> Result<PathBuf, RunnerError> {
        self.require("guest initramfs", self.images.join("guest/initramfs.cpio.gz"), "run `make images`")
    }

    /// The guest kernel's release (`guest/kernel-release`, written by `make images`).
    pub fn guest_kernel_release(&self) -> Result<String, RunnerError> {
        let path =
            self.require("guest kernel release", self.images.join("guest/kernel-release"), "run `make images`")?;
        let rel = fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
        Ok(rel.trim().to_string())
    }

    /// The guest kernel's vmlinux with debug info (`guest/vmlinux-<release>`, extracted by
    /// `make images` from the kernel's -dbg package), for `crash`.
    pub fn guest_vmlinux(&self) -> Result<PathBuf, RunnerError> {
        let rel = self.guest_kernel_release()?;
        self.require(
            "guest vmlinux with debug info",
            self.images.join(format!("guest/vmlinux-{rel}")),
            "run `make images`",
        )
    }

    /// The software KVM test host's image (`host/` of the images).
    pub fn test_host(&self) -> Result<TestHost, RunnerError> {
        Ok(TestHost::in_dir(&self.images.join("host"))?)
    }

    fn crashvmm(&self) -> Result<PathBuf, RunnerError> {
        self.require("crashvmm binary", self.binary.clone(), "run `make build`")
    }
}

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Force a mode instead of detecting it.
    pub mode: Option<Mode>,
    /// Copy the console (and in the test host, its own boot log) to stdout while running.
    pub show_console: bool,
    /// Override the scenario's time limit.
    pub timeout: Option<Duration>,
    /// Override the guest's memory (`768M`, `2G`); a data disk scales with it. For `make bench`,
    /// which runs `pagecache` larger than `make test` does.
    pub memory: Option<&'static str>,
}

/// What a scenario run left behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub mode: Mode,
    pub mode_reason: String,
    /// crashvmm's exit code, when it ran to its end.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub out: PathBuf,
}

impl Outcome {
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.out.join("console.log")).unwrap_or_default()).into_owned()
    }

    /// Where a run stopped, for a failure message: the last line of each of its outputs
    /// (the event log, crashvmm's log, the guest's console, the test host's console), each cut
    /// to 160 characters.
    pub fn last_lines(&self) -> String {
        ["events.jsonl", "crashvmm.log", "console.log", "testhost.log"]
            .iter()
            .map(|name| {
                let text = fs::read(self.out.join(name)).unwrap_or_default();
                let text = String::from_utf8_lossy(&text);
                let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(empty or missing)");
                let last: String = last.chars().filter(|c| !c.is_control()).take(160).collect();
                format!("last line of {name}: {last}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The event log, one JSON value per line; a line that does not parse is an error.
    pub fn events(&self) -> Result<Vec<Value>, String> {
        let text = fs::read_to_string(self.out.join("events.jsonl")).map_err(|e| format!("events.jsonl: {e}"))?;
        text.lines().map(|l| serde_json::from_str(l).map_err(|e| format!("bad event line {l:?}: {e}"))).collect()
    }

    /// The event log in the order of what caused each event: `crash_detected` at its
    /// signal's time (`signal_ts`: when a vCPU thread saw the guest's write), every other
    /// event at its `ts`. The main thread logs `crash_detected` when it gets to the signal,
    /// which on a loaded host can be after the guest went on to its kexec; by cause, the
    /// detection sits right after what the guest did. The sort is stable: events of one
    /// microsecond keep the log's order (a `pvpanic` event before the detection it caused).
    pub fn events_by_cause(&self) -> Result<Vec<Value>, String> {
        fn cause(e: &Value) -> &str {
            e.get("signal_ts").or_else(|| e.get("ts")).and_then(Value::as_str).unwrap_or("")
        }
        let mut events = self.events()?;
        // RFC 3339 in UTC with microseconds: the text sorts as the time does.
        events.sort_by(|a, b| cause(a).cmp(cause(b)));
        Ok(events)
    }

    /// The crash directories crashvmm left, oldest first.
    pub fn crash_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.out.join("crashes"))
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs
    }

    /// A failure of the kind the software KVM test host causes under any VMM
    /// (docs/boot-reliability.md): a triple fault, which no scenario expects, or a run past its
    /// time limit (a vCPU stuck in the nested layer). `None` for direct runs and other outcomes.
    pub fn test_host_fault(&self) -> Option<String> {
        if self.mode != Mode::TestHost || self.verdict().is_ok() {
            return None;
        }
        if self.timed_out {
            return Some("the run timed out in the software KVM test host".into());
        }
        let events = self.events().ok()?;
        let trigger = events.iter().find(|e| e["event"] == "crash_detected")?["trigger"].as_str()?;
        (trigger == "triple_fault").then(|| "a vCPU triple-faulted in the software KVM test host".into())
    }

    /// Whether the run did what its scenario declares (see [`verdict`](Self::verdict)).
    pub fn as_expected(&self) -> bool {
        self.verdict().is_ok()
    }

    /// The run against its scenario's declaration: exit code, the crash trigger, the events in
    /// order, the events that must not occur, the console lines. `Err` says the first
    /// difference.
    pub fn verdict(&self) -> Result<(), String> {
        let s = scenario(self.scenario).ok_or_else(|| format!("'{}' is not a runner scenario", self.scenario))?;
        if self.timed_out {
            return Err(format!("timed out after {:.0} s", self.elapsed.as_secs_f64()));
        }
        if self.exit_code != Some(s.expected_exit) {
            let got = self.exit_code.map_or("none".into(), |c| c.to_string());
            return Err(format!("crashvmm exit code {got}, expected {}", s.expected_exit));
        }
        let events = self.events_by_cause()?;
        let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap_or("?")).collect();
        let trigger =
            events.iter().find(|e| e["event"] == "crash_detected").map(|e| e["trigger"].as_str().unwrap_or("?"));
        match (s.expected_trigger, trigger) {
            (want, got) if want == got => {}
            (None, Some(got)) => return Err(format!("a crash was detected (trigger {got}); none was expected")),
            (Some(want), None) => return Err(format!("no crash was detected; expected trigger {want}")),
            (Some(want), Some(got)) => return Err(format!("crash trigger {got}, expected {want}")),
            (None, None) => {}
        }
        let mut rest = names.iter();
        for want in s.expected_events {
            if !rest.any(|n| n == want) {
                return Err(format!(
                    "event {want} missing or out of order (expected in order: {}); events: {}",
                    s.expected_events.join(" "),
                    names.join(" ")
                ));
            }
        }
        if let Some(bad) = s.absent_events.iter().find(|a| names.contains(a)) {
            return Err(format!("event {bad} occurred; events: {}", names.join(" ")));
        }
        let console = self.console();
        if let Some(line) = s.expected_console.iter().find(|l| !console.contains(*l)) {
            return Err(format!("the console never showed {line:?}"));
        }
        Ok(())
    }
}

/// Run `scenario` and leave its outputs in `out` (created; earlier outputs are replaced).
pub fn run_scenario(setup: &Setup, name: &str, out: &Path, opts: &RunOptions) -> Result<Outcome, RunnerError> {
    let s = scenario(name).ok_or_else(|| {
        RunnerError::UnknownScenario(name.into(), SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "))
    })?;
    let resized;
    let s = match opts.memory {
        Some(memory) => {
            if parse_mib(memory).is_none() {
                return Err(RunnerError::Io {
                    what: "the memory override".into(),
                    source: io::Error::other(format!("'{memory}' is not <N>M or <N>G")),
                });
            }
            resized = Scenario { memory, ..s.clone() };
            &resized
        }
        None => s,
    };
    let (mode, mode_reason) = match opts.mode {
        Some(m) => (m, "chosen by the caller".to_string()),
        None => detect_mode(),
    };
    let (binary, kernel, initrd) = (setup.crashvmm()?, setup.guest_kernel()?, setup.guest_initrd()?);
    let test_host = match mode {
        Mode::TestHost => Some(setup.test_host()?),
        Mode::Direct => None,
    };
    // The data disk is made again for each run, beside the outputs (no need to keep hundreds
    // of MB): dropped with `scratch`.
    fs::create_dir_all(out).map_err(io_err(format!("creating {}", out.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix(".data-disk-")
        .tempdir_in(out)
        .map_err(io_err(format!("creating a directory in {}", out.display())))?;
    let data_disk = match s.data_disk {
        Some(percent) => {
            let path = scratch.path().join(DATA_DISK);
            let mib = parse_mib(s.memory).unwrap_or(1024);
            make_data_disk(&path, (mib << 20) * u64::from(percent) / 100)?;
            Some(path)
        }
        None => None,
    };
    let net_data = if s.network {
        let path = scratch.path().join(NET_TO_GUEST);
        write_data_file(&path, NET_TO_GUEST_BYTES).map_err(io_err(format!("writing {}", path.display())))?;
        Some(path)
    } else {
        None
    };
    let spec = s.run_spec(kernel, initrd, data_disk.as_deref(), net_data.as_deref());
    let limit = opts.timeout.unwrap_or(match mode {
        Mode::Direct => s.testhost_timeout / 4,
        Mode::TestHost => s.testhost_timeout,
    });
    let run = runner::execute(&spec, mode, &binary, test_host.as_ref(), out, limit, opts.show_console)?;
    drop(scratch);
    let out = out.canonicalize().map_err(io_err(format!("resolving {}", out.display())))?;
    if let Some(rc) = run.test_host_failed {
        return Err(RunnerError::TestHost { rc, log: out.join("testhost.log") });
    }
    Ok(Outcome {
        scenario: s.name,
        mode,
        mode_reason,
        exit_code: run.exit_code,
        timed_out: run.timed_out,
        elapsed: run.elapsed,
        out,
    })
}

/// `file_bytes` of non-zero data (the data disk's file, and what the host side of a `network`
/// scenario sends): each 8 bytes one xorshift64 step, so no page is zero and no two pages are
/// alike, as with a real file.
pub fn write_data_file(path: &Path, file_bytes: u64) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = file_bytes;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    w.flush()
}

/// A program of `e2fsprogs` and the like, which live in `/usr/sbin` (not always on `PATH`).
fn sbin_tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).any(|p| p.is_file()))
        .unwrap_or(false);
    if on_path {
        return PathBuf::from(name);
    }
    ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file()).unwrap_or_else(|| name.into())
}

/// Makes a data disk at `path`: an ext4 image without a journal (`mke2fs -d`, which needs no
/// root) holding [`DATA_DISK_FILE`], `file_bytes` of non-zero data.
pub fn make_data_disk(path: &Path, file_bytes: u64) -> Result<(), RunnerError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let src = tempfile::Builder::new()
        .prefix("crashvmm-data-")
        .tempdir_in(parent)
        .map_err(io_err(format!("creating a directory in {}", parent.display())))?;
    let file = src.path().join(DATA_DISK_FILE);
    write_data_file(&file, file_bytes).map_err(io_err(format!("writing {}", file.display())))?;
    // The file, plus room for ext4's metadata (bitmaps, inode tables, extent blocks).
    let kib = file_bytes / 1024 + file_bytes / 1024 / 20 + 16 * 1024;
    let _ = fs::remove_file(path);
    let out = Command::new(sbin_tool("mke2fs"))
        .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-L", "crashvmm-data", "-d"])
        .arg(src.path())
        .arg(path)
        .arg(kib.to_string())
        .output()
        .map_err(io_err("running mke2fs (install e2fsprogs, or run `make deps`)"))?;
    if !out.status.success() {
        return Err(RunnerError::Io {
            what: format!("making the data disk {}", path.display()),
            source: io::Error::other(format!("mke2fs: {}", String::from_utf8_lossy(&out.stderr).trim())),
        });
    }
    Ok(())
}

/// Boots the software KVM test host of `setup` (`host_mib` MiB of RAM) with `share` as its 9p
/// share (see [`runner::boot_testhost`]).
pub fn boot_testhost(
    setup: &Setup,
    share: &Path,
    host_mib: u64,
    log: &Path,
    limit: Duration,
    show: bool,
) -> Result<Option<std::process::ExitStatus>, RunnerError> {
    Ok(runner::boot_testhost(&setup.test_host()?, share, host_mib, log, limit, show)?)
}

/// `768M` / `2G` to MiB (the scenario table only uses these forms).
fn parse_mib(s: &str) -> Option<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "M" => Some(n),
        "G" => Some(n * 1024),
        _ => None,
    }
}

/// First line of `path` that contains `needle`, for messages.
pub fn find_line(path: &Path, needle: &str) -> Option<String> {
    let f = File::open(path).ok()?;
    BufReader::new(f).lines().map_while(Result::ok).find(|l| l.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_dev_kvm_fails_the_kvm_tests_unless_told_to_skip() {
        assert_eq!(kvm_decision(true, None, "t"), Ok(true));
        assert_eq!(kvm_decision(true, Some("1"), "t"), Ok(true));
        assert_eq!(kvm_decision(false, Some("1"), "t"), Ok(false));
        for skip in [None, Some("0"), Some("")] {
            let why = kvm_decision(false, skip, "t").unwrap_err();
            assert!(why.contains("/dev/kvm") && why.contains(SKIP_KVM_TESTS), "{why}");
        }
    }

    #[test]
    fn scenario_table_is_consistent() {
        for s in SCENARIOS {
            assert!(parse_mib(s.memory).is_some(), "{}: memory {}", s.name, s.memory);
            assert_eq!(scenario(s.name).unwrap().name, s.name);
        }
        assert!(scenario("nope").is_none());
    }

    #[test]
    fn a_scenario_runs_crashvmm_on_its_inputs_by_name() {
        let args = scenario("boot").unwrap().run_spec("k".into(), "i".into(), None, None).resolved_args("out");
        assert!(args.windows(2).any(|w| w[0] == "--cmdline" && w[1].ends_with("crashtest=boot")));
        assert!(args.windows(2).any(|w| w[0] == "--events" && w[1] == "out/events.jsonl"));
        assert!(args.windows(2).any(|w| w[0] == "--kernel" && w[1] == "vmlinuz"));
    }

    /// An outcome of `scenario` with these events (names; `crash_detected` with `trigger`) and
    /// this console.
    fn outcome(
        scenario: &'static str,
        exit: i32,
        events: &[&str],
        trigger: &str,
        console: &str,
    ) -> (Outcome, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = events
            .iter()
            .map(|e| match *e {
                "crash_detected" => format!("{{\"event\":\"crash_detected\",\"trigger\":\"{trigger}\"}}\n"),
                e => format!("{{\"event\":\"{e}\"}}\n"),
            })
            .collect();
        fs::write(dir.path().join("events.jsonl"), lines).unwrap();
        fs::write(dir.path().join("console.log"), console).unwrap();
        let o = Outcome {
            scenario,
            mode: Mode::TestHost,
            mode_reason: String::new(),
            exit_code: Some(exit),
            timed_out: false,
            elapsed: Duration::from_secs(1),
            out: dir.path().to_owned(),
        };
        (o, dir)
    }

    /// The `nmi` run that failed under load: the main thread logged `crash_detected` after the
    /// vCPU thread logged the guest's kexec. Ordered by cause it is as declared; a detection
    /// whose cause came after the kexec is still out of order.
    #[test]
    fn events_are_checked_in_the_order_of_their_causes() {
        let nmi = scenario("nmi").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ts = |ms: u32| format!("2026-12-03T03:21:22.{ms:03}000Z");
        let log = |detected_cause: &str| {
            let mut lines = String::new();
            let mut line = |event: &str, t: String, extra: &str| {
                lines += &format!("{{\"ts\":\"{t}\",\"event\":\"{event}\"{extra}}}\n");
            };
            line("vm_started", ts(1), "");
            line("nmi_injected", ts(100), "");
            line("pvpanic", ts(392), "");
            line("guest_kexec", ts(496), "");
            line(
                "crash_detected",
                ts(541),
                &format!(",\"trigger\":\"nmi_injection\",\"signal_ts\":\"{detected_cause}\""),
            );
            for (i, e) in ["crash_kernel_started", "kdump_completed", "vmcore_written", "crash_report", "vm_exited"]
                .iter()
                .enumerate()
            {
                line(e, ts(600 + i as u32), "");
            }
            fs::write(dir.path().join("events.jsonl"), lines).unwrap();
        };
        let console = nmi.expected_console.join("\n");
        fs::write(dir.path().join("console.log"), &console).unwrap();
        let o = Outcome {
            scenario: "nmi",
            mode: Mode::TestHost,
            mode_reason: String::new(),
            exit_code: Some(GUEST_PANICKED),
            timed_out: false,
            elapsed: Duration::from_secs(1),
            out: dir.path().to_owned(),
        };
        log(&ts(392));
        assert_eq!(o.verdict(), Ok(()));
        log(&ts(500));
        assert!(o.verdict().unwrap_err().starts_with("event guest_kexec missing or out of order"), "{:?}", o.verdict());
    }

    #[test]
    fn a_triple_fault_is_not_a_panic_scenario_passing() {
        let panic = scenario("panic").unwrap();
        let console = panic.expected_console.join("\n");
        let (good, _d) = outcome("panic", GUEST_PANICKED, panic.expected_events, "pvpanic", &console);
        assert_eq!(good.verdict(), Ok(()));
        // The run: exit code 5, but a triple fault at boot, no pvpanic.
        let tf = ["vm_started", "crash_detected", "vmcore_written", "crash_report", "vm_exited"];
        let (bad, _d) = outcome("panic", GUEST_PANICKED, &tf, "triple_fault", "smp: Brought up 1 node, 2 CPUs");
        assert_eq!(bad.verdict(), Err("crash trigger triple_fault, expected pvpanic".into()));
        assert!(!bad.as_expected());
        let mut missing: Vec<&str> = panic.expected_events.to_vec();
        missing.retain(|e| *e != "hv_crash");
        let (bad, _d) = outcome("panic", GUEST_PANICKED, &missing, "pvpanic", &console);
        assert!(
            bad.verdict().unwrap_err().starts_with("event hv_crash missing or out of order"),
            "{:?}",
            bad.verdict()
        );
        let (bad, _d) = outcome("panic", GUEST_PANICKED, panic.expected_events, "pvpanic", "no Hyper-V here");
        assert!(bad.verdict().unwrap_err().contains("Hypervisor detected: Microsoft Hyper-V"));
        let (bad, _d) = outcome("panic", 0, panic.expected_events, "pvpanic", &console);
        assert_eq!(bad.verdict(), Err("crashvmm exit code 0, expected 5".into()));
        assert_eq!(bad.test_host_fault(), None, "only the test host's own failures are retried");
        let (tf, _d) = outcome("panic", GUEST_PANICKED, &tf, "triple_fault", "");
        assert!(tf.test_host_fault().is_some());
        assert_eq!(Outcome { mode: Mode::Direct, ..tf.clone() }.test_host_fault(), None);
        assert_eq!(good.test_host_fault(), None);
    }

    #[test]
    fn every_declaration_accepts_itself() {
        for s in SCENARIOS {
            let console = s.expected_console.join("\n");
            let (o, _d) =
                outcome(s.name, s.expected_exit, s.expected_events, s.expected_trigger.unwrap_or(""), &console);
            assert_eq!(o.verdict(), Ok(()), "{}", s.name);
            assert_eq!(s.expected_events.first(), Some(&"vm_started"), "{}", s.name);
            assert_eq!(s.expected_events.last(), Some(&"vm_exited"), "{}", s.name);
            assert_eq!(s.expected_trigger.is_some(), s.expected_events.contains(&"crash_detected"), "{}", s.name);
            assert!(!s.absent_events.iter().any(|a| s.expected_events.contains(a)), "{}", s.name);
        }
    }

    #[test]
    fn the_data_disk_is_an_ext4_image_with_a_non_zero_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join(DATA_DISK);
        make_data_disk(&disk, 3 << 20).unwrap();
        let image = fs::read(&disk).unwrap();
        assert_eq!(image.len() % 512, 0);
        assert_eq!(&image[1080..1082], &[0x53, 0xef], "ext4 superblock magic");
        // The file's data is in the image, and no page of it is zero.
        let data = dir.path().join("data");
        write_data_file(&data, 3 << 20).unwrap();
        let data = fs::read(&data).unwrap();
        assert!(data.chunks(4096).all(|p| p.iter().any(|&b| b != 0)));
        let page = &data[4096 * 5..4096 * 6];
        assert!(image.chunks(4096).any(|p| p == page), "page 5 of the file is in the image");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no scratch left beside the image");
        let spec = scenario("pagecache").unwrap().run_spec("k".into(), "i".into(), Some(&disk), None);
        assert_eq!(spec.inputs[2], (DATA_DISK.to_string(), disk.clone()));
        let args = spec.resolved_args("out");
        assert!(args.windows(2).any(|w| w[0] == "--disk" && w[1] == "path=data-disk.img,readonly"), "{args:?}");
        assert!(!scenario("panic")
            .unwrap()
            .run_spec("k".into(), "i".into(), None, None)
            .args
            .contains(&"--disk".to_string()));
    }

    #[test]
    fn unknown_scenario_names_the_known_ones() {
        let err = run_scenario(&Setup::from_env(), "nope", Path::new("/tmp"), &RunOptions::default()).unwrap_err();
        assert!(err.to_string().contains("boot"), "{err}");
    }
}
