//! Part 9: the network. The same Linux guest (Debian's cloud kernel, `crashtest=netbench`:
//! guest-images/scenarios/netbench.sh) on a TAP, under crashvmm (`--net`, virtio-pci) and under
//! QEMU (`-netdev tap` with `virtio-net-pci`, QEMU's usual virtio-net, vhost off as the test host
//! has no vhost-net), one after the other in the same place: the software KVM test host here,
//! directly on hardware KVM (in a network namespace of its own) elsewhere.
//!
//! The host side is `bench net-peer` ([`peer`]): it binds its ports, then starts the VMM, so the
//! guest can only find them listening, and times on the host's clock:
//! - guest to host: the guest writes `mib` MiB into a TCP connection; accept to EOF;
//! - host to guest: the peer writes `mib` MiB and closes its side; accept to the guest's close
//!   (after it read everything);
//! - round trips: 1-byte request/response exchanges with the guest's echo server (`nc -e cat`),
//!   with `TCP_NODELAY`, as netperf's TCP_RR; after some to warm up, each one timed.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wait_timeout::ChildExt;

use super::crashpath::stage_qemu;
use super::stats::{max, median, min, ratio};
use super::{progress, Env};
use crate::runner::{sh_quote, RunSpec};
use crate::{detect_mode, net_tap_setup, Mode, NET_GUEST_ADDR, NET_HOST_ADDR, NET_TAP};

/// The guest's ports (netbench.sh).
const TO_HOST_PORT: u16 = 5001;
const TO_GUEST_PORT: u16 = 5002;
const ECHO_PORT: u16 = 5003;
/// MiB each way per run, and round trips timed per run (after [`RR_WARMUP`]).
pub const MIB: u64 = 16;
pub const RR: usize = 500;
const RR_WARMUP: usize = 20;
/// Runs per VMM, alternating (runs of one VMM in the test host differ by up to 2.6x).
const ROUNDS: usize = 7;
/// One VMM run: boot, transfers, power-off.
const RUN_LIMIT: Duration = Duration::from_secs(300);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(120);

/// What runs, in each round's order.
pub const VMMS: [&str; 2] = ["crashvmm", "qemu"];

/// The targets: at least QEMU's throughput both ways, and a lower round-trip time.
pub const TARGET_THROUGHPUT_VS_QEMU: f64 = 1.0;
/// A ratio this close to 1.0 is a tie: runs of one VMM differ by far more.
const NOISE: f64 = 0.05;

/// What `bench net-peer` measured in one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerRecord {
    pub to_host_bytes: u64,
    pub to_host_s: f64,
    pub to_guest_bytes: u64,
    pub to_guest_s: f64,
    /// Each timed round trip, microseconds.
    pub rr_us: Vec<f64>,
    /// The VMM's exit code (`None`: killed past its limit).
    pub vmm_exit: Option<i32>,
    pub vmm_wall_s: f64,
    /// The guest's exits over the timed round trips (`None`: KVM's statistics were not there
    /// to read: no debugfs, or not root).
    #[serde(default)]
    pub rr_exits: Option<KvmExits>,
}

/// KVM's counts for one VM, summed over its vCPUs (`/sys/kernel/debug/kvm/PID-FD/`): what the
/// guest's round trips cost it, counted rather than timed (so they vary far less between runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KvmExits {
    /// Every exit from the guest.
    pub exits: u64,
    /// Exits to the VMM (userspace) for MMIO: with crashvmm's virtio-mmio, the driver's
    /// interrupt status reads and acknowledgements.
    pub mmio_exits: u64,
    /// Exits to the VMM for port I/O.
    pub io_exits: u64,
    /// Instructions KVM emulated (each MMIO access is one).
    pub insn_emulation: u64,
    /// Interrupts injected.
    pub irq_injections: u64,
}

impl KvmExits {
    const FILES: [&'static str; 5] = ["exits", "mmio_exits", "io_exits", "insn_emulation", "irq_injections"];

    /// The counts of the VM that process `pid` has (a VMM has one at a time: a VM's directory
    /// goes when the VM does).
    pub fn of_process(pid: u32) -> Option<Self> {
        let prefix = format!("{pid}-");
        let dir = fs::read_dir("/sys/kernel/debug/kvm")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))?;
        Self::read(&dir)
    }

    fn read(dir: &Path) -> Option<Self> {
        let mut v = [0u64; 5];
        for (slot, f) in v.iter_mut().zip(Self::FILES) {
            *slot = fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok()?;
        }
        let [exits, mmio_exits, io_exits, insn_emulation, irq_injections] = v;
        Some(Self { exits, mmio_exits, io_exits, insn_emulation, irq_injections })
    }

    /// What was counted from `before` to `self`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            exits: self.exits.saturating_sub(before.exits),
            mmio_exits: self.mmio_exits.saturating_sub(before.mmio_exits),
            io_exits: self.io_exits.saturating_sub(before.io_exits),
            insn_emulation: self.insn_emulation.saturating_sub(before.insn_emulation),
            irq_injections: self.irq_injections.saturating_sub(before.irq_injections),
        }
    }
}

impl PeerRecord {
    pub fn to_host_mbps(&self) -> f64 {
        ratio(self.to_host_bytes as f64 * 8.0 / 1e6, self.to_host_s)
    }

    pub fn to_guest_mbps(&self) -> f64 {
        ratio(self.to_guest_bytes as f64 * 8.0 / 1e6, self.to_guest_s)
    }

    pub fn rr_median_us(&self) -> f64 {
        median(&self.rr_us)
    }

    /// Per timed round trip: the guest's exits, and those of them to the VMM (MMIO and port
    /// I/O); `None` where not counted.
    pub fn rr_exits_each(&self) -> Option<(f64, f64)> {
        let e = self.rr_exits?;
        let n = self.rr_us.len() as f64;
        Some((ratio(e.exits as f64, n), ratio((e.mmio_exits + e.io_exits) as f64, n)))
    }
}

/// One VMM's run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetRun {
    /// `crashvmm` or `qemu`.
    pub vmm: String,
    pub round: usize,
    pub record: Option<PeerRecord>,
    pub error: Option<String>,
}

/// Part 9's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetBench {
    pub measured_at: Option<String>,
    /// Measured by a run of its own (`--only net`), to be merged into a full run's results.
    #[serde(default)]
    pub alone: bool,
    /// `direct` or `testhost`.
    pub mode: Option<String>,
    pub mib: u64,
    pub runs: Vec<NetRun>,
    pub notes: Vec<String>,
}

impl NetBench {
    fn of(&self, vmm: &str, g: impl Fn(&PeerRecord) -> f64) -> Vec<f64> {
        self.runs.iter().filter(|r| r.vmm == vmm).filter_map(|r| r.record.as_ref()).map(g).collect()
    }

    /// The largest ratio between two runs of one VMM in one measure (fastest over slowest).
    pub fn spread(&self) -> f64 {
        let measures: [fn(&PeerRecord) -> f64; 3] =
            [PeerRecord::to_host_mbps, PeerRecord::to_guest_mbps, PeerRecord::rr_median_us];
        VMMS.iter()
            .flat_map(|vmm| measures.map(|g| self.of(vmm, g)))
            .map(|v| ratio(max(&v), min(&v)))
            .filter(|r| r.is_finite())
            .fold(1.0, f64::max)
    }

    /// Medians over the runs of `vmm` that counted them: the guest's exits per round trip, and
    /// those to the VMM; `None` where no run did.
    pub fn exit_medians(&self, vmm: &str) -> Option<(f64, f64)> {
        let each: Vec<(f64, f64)> =
            self.runs.iter().filter(|r| r.vmm == vmm).filter_map(|r| r.record.as_ref()?.rr_exits_each()).collect();
        (!each.is_empty()).then(|| {
            (
                median(&each.iter().map(|e| e.0).collect::<Vec<_>>()),
                median(&each.iter().map(|e| e.1).collect::<Vec<_>>()),
            )
        })
    }

    /// Medians over the runs of `vmm`: guest to host, host to guest (Mbit/s), round trip (µs).
    pub fn medians(&self, vmm: &str) -> (f64, f64, f64) {
        (
            median(&self.of(vmm, PeerRecord::to_host_mbps)),
            median(&self.of(vmm, PeerRecord::to_guest_mbps)),
            median(&self.of(vmm, PeerRecord::rr_median_us)),
        )
    }
}

/// Arguments of `bench net-peer`.
#[derive(Debug, Clone)]
pub struct PeerArgs {
    pub out: PathBuf,
    pub mib: u64,
    pub rr: usize,
    /// The VMM and its arguments, started once the ports listen.
    pub vmm: Vec<String>,
    /// Where the VMM's stdout and stderr go.
    pub vmm_log: PathBuf,
}

fn ctx(what: &'static str) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// `bench net-peer`: binds the host's ports, starts the VMM, measures, waits for the VMM, and
/// writes the [`PeerRecord`] to `out`.
pub fn peer(a: &PeerArgs) -> Result<(), String> {
    let host: Ipv4Addr = NET_HOST_ADDR.parse().map_err(|e| format!("{NET_HOST_ADDR}: {e}"))?;
    let guest: Ipv4Addr = NET_GUEST_ADDR.parse().map_err(|e| format!("{NET_GUEST_ADDR}: {e}"))?;
    let sink = TcpListener::bind((host, TO_HOST_PORT)).map_err(ctx("binding the guest-to-host port"))?;
    let source = TcpListener::bind((host, TO_GUEST_PORT)).map_err(ctx("binding the host-to-guest port"))?;
    let (program, args) = a.vmm.split_first().ok_or("no VMM command")?;
    let log = fs::File::create(&a.vmm_log).map_err(ctx("creating the VMM's log"))?;
    let mut vmm = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(ctx("the VMM's log"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    let started = Instant::now();
    // The exchanges on a thread of their own: a VMM that ends first (it failed, or its guest
    // did) must not leave the peer waiting for a connection.
    let (tx, rx) = std::sync::mpsc::channel();
    let (bytes, rr, pid) = (a.mib << 20, a.rr, vmm.id());
    std::thread::spawn(move || {
        let counts = || KvmExits::of_process(pid);
        let _ = tx.send(exchange(&sink, &source, SocketAddr::from((guest, ECHO_PORT)), bytes, rr, counts));
    });
    let status = vmm.wait_timeout(RUN_LIMIT).map_err(ctx("waiting for the VMM"))?;
    if status.is_none() {
        let _ = vmm.kill();
        let _ = vmm.wait();
    }
    // The guest powers off after the last exchange, so its result is there by now (the grace
    // covers the thread's last steps on a loaded machine).
    let measured = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        let how = status
            .map_or("killed past its limit".to_string(), |st| format!("exit code {}", super::procs::exit_code(st)));
        Err(format!("the VMM ended ({how}) before the exchanges did; see {}", a.vmm_log.display()))
    });
    let mut record = measured?;
    record.vmm_exit = status.map(super::procs::exit_code);
    record.vmm_wall_s = started.elapsed().as_secs_f64();
    fs::write(&a.out, serde_json::to_string_pretty(&record).unwrap_or_default()).map_err(ctx("writing the record"))
}

/// The three measurements, in the guest's order; `echo`: the guest's echo server; `counts`:
/// KVM's counts for the guest, read before and after the timed round trips.
fn exchange(
    sink: &TcpListener,
    source: &TcpListener,
    echo: SocketAddr,
    bytes: u64,
    rr: usize,
    counts: impl Fn() -> Option<KvmExits>,
) -> Result<PeerRecord, String> {
    let mut r = PeerRecord::default();
    let mut buf = vec![0u8; 1 << 16];

    let (mut s, _) = sink.accept().map_err(ctx("accepting the guest's upload"))?;
    let t = Instant::now();
    s.set_read_timeout(Some(SOCKET_TIMEOUT)).map_err(ctx("SO_RCVTIMEO"))?;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => r.to_host_bytes += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the guest's upload: {e}")),
        }
    }
    r.to_host_s = t.elapsed().as_secs_f64();
    if r.to_host_bytes != bytes {
        return Err(format!("the guest sent {} bytes, not {bytes}", r.to_host_bytes));
    }

    let (mut s, _) = source.accept().map_err(ctx("accepting the guest's download"))?;
    let t = Instant::now();
    s.set_read_timeout(Some(SOCKET_TIMEOUT)).map_err(ctx("SO_RCVTIMEO"))?;
    s.set_write_timeout(Some(SOCKET_TIMEOUT)).map_err(ctx("SO_SNDTIMEO"))?;
    buf.fill(0);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).map_err(ctx("sending to the guest"))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(ctx("closing the download"))?;
    // The guest closes once it has read everything.
    while s.read(&mut buf).map_err(ctx("waiting for the guest's close"))? > 0 {}
    r.to_guest_s = t.elapsed().as_secs_f64();
    r.to_guest_bytes = bytes;

    let mut s = TcpStream::connect_timeout(&echo, SOCKET_TIMEOUT).map_err(ctx("connecting to the guest's echo"))?;
    s.set_nodelay(true).map_err(ctx("TCP_NODELAY"))?;
    s.set_read_timeout(Some(SOCKET_TIMEOUT)).map_err(ctx("SO_RCVTIMEO"))?;
    let mut byte = [0u8; 1];
    let mut before = None;
    for i in 0..RR_WARMUP + rr {
        if i == RR_WARMUP {
            before = counts();
        }
        let t = Instant::now();
        s.write_all(b"x").map_err(ctx("a round trip's request"))?;
        s.read_exact(&mut byte).map_err(ctx("a round trip's response"))?;
        if i >= RR_WARMUP {
            r.rr_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    r.rr_exits = before.zip(counts()).map(|(b, a)| a.since(&b));
    Ok(r)
}

/// The guest's kernel command line (both VMMs).
fn cmdline(mib: u64) -> String {
    format!("console=ttyS0 panic=-1 crashtest=netbench crashtest.net_mib={mib}")
}

/// The run script: the TAP with the host's address, then each round's crashvmm and QEMU runs,
/// each under its own `bench net-peer`. `qemu` is the command that starts QEMU (with its
/// library path when staged); paths are relative to the script's directory. crashvmm runs as
/// the scenarios run it (`RunSpec::boot`: its console, events and crash directory in
/// `out/crashvmm-ROUND/`), with `--net`.
fn script(qemu: &str, mib: u64, rounds: usize) -> String {
    let mut spec = RunSpec::boot(String::new(), "vmlinuz".into(), "initramfs.cpio.gz".into(), &cmdline(mib), 768, 2);
    spec.args.extend(["--net".to_string(), format!("tap={NET_TAP},transport=pci")]);
    let qemu_args = [
        "-M",
        "pc",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-smp",
        "2",
        "-m",
        "768M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "file:out/console-qemu-ROUND.log",
        "-kernel",
        "vmlinuz",
        "-initrd",
        "initramfs.cpio.gz",
        "-append",
        &cmdline(mib),
        "-netdev",
        &format!("tap,id=n0,ifname={NET_TAP},script=no,downscript=no,vhost=off"),
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ]
    .map(sh_quote)
    .join(" ");
    let mut sh = format!(
        "# Written by crashvmm's bench (part 9): crashvmm and QEMU on the same TAP, in turn.\n\
         cd \"$1\" || exit 125\n\
         {{ {} ; }} >/dev/null || {{ echo \"TESTHOST: bench: cannot set up {NET_TAP}\"; exit 125; }}\n\
         rc=0\n",
        net_tap_setup()
    );
    for round in 1..=rounds {
        let out = format!("out/crashvmm-{round}");
        let crashvmm: Vec<String> = spec.resolved_args(&out).iter().map(|a| sh_quote(a)).collect();
        let crashvmm = format!("./crashvmm {}", crashvmm.join(" "));
        sh += &format!("mkdir -p {out}\n");
        for (vmm, command) in [(VMMS[0], crashvmm), (VMMS[1], format!("{qemu} {qemu_args}"))] {
            let command = command.replace("ROUND", &round.to_string());
            sh += &format!(
                "echo \"TESTHOST: bench: net: {vmm}, run {round} of {rounds}\"\n\
                 ./bench net-peer --mib {mib} --rr {RR} --out out/peer-{vmm}-{round}.json \
                 --vmm-log out/vmm-{vmm}-{round}.log -- {command} 2>out/peer-{vmm}-{round}.err || rc=1\n"
            );
        }
    }
    sh += "exit $rc\n";
    sh
}

pub fn run(env: &Env) -> NetBench {
    let mut b = NetBench {
        measured_at: Some(chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()),
        mib: if env.quick { 4 } else { MIB },
        ..Default::default()
    };
    let rounds = if env.quick { 1 } else { ROUNDS };
    let (mode, _) = detect_mode();
    b.mode = Some(mode.as_str().to_string());
    let out = env.work.join("net");
    let _ = fs::remove_dir_all(&out);
    progress(format!(
        "network: crashvmm and QEMU on a TAP, {rounds} run(s) each, {} MiB each way ({}; a few minutes)",
        b.mib,
        mode.as_str()
    ));
    if let Err(e) = run_in_share(env, mode, &out, b.mib, rounds) {
        b.notes.push(e);
    }
    for round in 1..=rounds {
        for vmm in VMMS {
            let mut r = NetRun { vmm: vmm.into(), round, ..Default::default() };
            match fs::read_to_string(out.join(format!("peer-{vmm}-{round}.json"))) {
                Ok(t) => match serde_json::from_str::<PeerRecord>(&t) {
                    Ok(p) if p.vmm_exit == Some(0) => r.record = Some(p),
                    Ok(p) => r.error = Some(format!("the VMM exited with {:?}", p.vmm_exit)),
                    Err(e) => r.error = Some(format!("bad record: {e}")),
                },
                Err(_) => {
                    let err = fs::read_to_string(out.join(format!("peer-{vmm}-{round}.err"))).unwrap_or_default();
                    r.error = Some(format!("no record: {}", err.lines().last().unwrap_or("the run did not end")));
                }
            }
            match (&r.record, &r.error) {
                (Some(p), _) => progress(format!(
                    "network: {vmm} run {round}: to host {:.0} Mbit/s, to guest {:.0} Mbit/s, round trip {:.0} us",
                    p.to_host_mbps(),
                    p.to_guest_mbps(),
                    p.rr_median_us()
                )),
                (None, Some(e)) => progress(format!("network: {vmm} run {round}: {e}")),
                (None, None) => {}
            }
            b.runs.push(r);
        }
    }
    b
}

/// Stage crashvmm, this binary, QEMU and the guest in a share and run the script there.
fn run_in_share(env: &Env, mode: Mode, out: &Path, mib: u64, rounds: usize) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let share = tempfile::Builder::new().prefix("crashvmm-bench-net-").tempdir().map_err(|e| e.to_string())?;
    let sp = share.path();
    let images = env.setup.images.join("guest");
    for (from, to) in [
        (me.as_path(), "bench"),
        (env.setup.binary.as_path(), "crashvmm"),
        (&images.join("vmlinuz"), "vmlinuz"),
        (&images.join("initramfs.cpio.gz"), "initramfs.cpio.gz"),
    ] {
        fs::copy(from, sp.join(to)).map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    fs::create_dir(sp.join("out")).map_err(|e| e.to_string())?;
    let qemu = match mode {
        Mode::TestHost => {
            stage_qemu(&sp.join("qemu")).map_err(|e| format!("staging QEMU for the test host: {e}"))?;
            "env LD_LIBRARY_PATH=qemu/lib ./qemu/qemu-system-x86_64 -L qemu/fw".to_string()
        }
        Mode::Direct => sh_quote(&super::qemu_binary()),
    };
    fs::write(sp.join("run.sh"), script(&qemu, mib, rounds)).map_err(|e| e.to_string())?;
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let limit = RUN_LIMIT * (VMMS.len() * rounds) as u32 + Duration::from_secs(60);
    let result = match mode {
        Mode::TestHost => super::run_testhost_script(env, sp, &out.join("testhost.log"), limit),
        // A network namespace of its own: the TAP and its address touch no real network.
        Mode::Direct => {
            let mut child = Command::new("unshare")
                .args(["--net", "sh"])
                .arg(sp.join("run.sh"))
                .arg(sp)
                .spawn()
                .map_err(|e| format!("unshare --net: {e}"))?;
            match child.wait_timeout(limit).map_err(|e| e.to_string())? {
                Some(st) if st.success() => Ok(()),
                Some(st) => Err(format!("the run script ended with {st}")),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err("the run script timed out".into())
                }
            }
        }
    };
    // The records, logs and each crashvmm run's directory come back.
    super::bring_back(&sp.join("out"), out)?;
    result
}

/// The part's section of docs/benchmarks.md.
pub fn section(m: &mut String, b: &NetBench) {
    use std::fmt::Write as _;
    let _ = writeln!(m, "## 9. Network: virtio-net on a TAP\n");
    let measured = |vmm: &str| b.runs.iter().filter(|r| r.vmm == vmm && r.record.is_some()).count();
    if measured(VMMS[0]) == 0 || measured(VMMS[1]) == 0 {
        let _ = writeln!(
            m,
            "Not measured in this run.{}\n",
            b.notes
                .iter()
                .chain(b.runs.iter().filter_map(|r| r.error.as_ref()))
                .map(|n| format!(" {n}"))
                .collect::<String>()
        );
        return;
    }
    let _ = writeln!(
        m,
        "Measured {} (`make bench` part 9; `--only net` runs it alone), {}. The same Linux guest \
         (Debian's cloud kernel, 768 MiB, 2 vCPUs, `crashtest=netbench`) on the same TAP, under crashvmm \
         (`--net ...,transport=pci`: a virtio-pci function whose queues signal MSI-X vectors of their own; \
         checksum and TCP segmentation offloads both ways, `EVENT_IDX`) and under QEMU \
         (`-netdev tap,vhost=off` with `virtio-net-pci`: MSI-X, its default features, the same offloads \
         among them), {} run(s) each, in turn. \
         `bench net-peer` on the host side times each run: {} MiB guest to host (accept to EOF) and host to \
         guest (accept to the guest's close), and {} round trips of 1 byte each way over TCP with \
         `TCP_NODELAY` (netperf's TCP_RR; the median of each run). Medians over the runs.{}\n",
        b.measured_at.as_deref().unwrap_or("?"),
        match b.mode.as_deref() {
            Some("testhost") =>
                "in the software KVM test host (everything emulated: compare the ratios, not the figures)",
            _ => "directly on hardware KVM",
        },
        measured(VMMS[0]),
        b.mib,
        RR,
        if b.runs.iter().all(|r| r.record.is_some()) { "" } else { " Some runs failed (below)." }
    );
    let (c_up, c_down, c_rr) = b.medians(VMMS[0]);
    let (q_up, q_down, q_rr) = b.medians(VMMS[1]);
    let met = |ok: bool| if ok { "**met**" } else { "**missed**" };
    let _ = writeln!(m, "| what | crashvmm | QEMU | crashvmm / QEMU | target |\n|---|---|---|---|---|");
    for (what, c, q, higher_better) in [
        ("guest to host, Mbit/s", c_up, q_up, true),
        ("host to guest, Mbit/s", c_down, q_down, true),
        ("round trip, µs", c_rr, q_rr, false),
    ] {
        let r = ratio(c, q);
        let mut target = if higher_better {
            format!("at least {TARGET_THROUGHPUT_VS_QEMU:.1}x: {}", met(r >= TARGET_THROUGHPUT_VS_QEMU))
        } else {
            format!("under 1.0x: {}", met(r < 1.0))
        };
        if (r - 1.0).abs() < NOISE {
            // Runs of one VMM differ by more than that: such a ratio shows neither ahead.
            target += &format!(" (within {:.0}% of 1.0x: a tie)", NOISE * 100.0);
        }
        let _ = writeln!(m, "| {what} | {c:.1} | {q:.1} | {r:.2}x | {target} |");
    }
    if let (Some(c), Some(q)) = (b.exit_medians(VMMS[0]), b.exit_medians(VMMS[1])) {
        let _ = writeln!(
            m,
            "| the guest's exits per round trip | {:.1} | {:.1} | {:.2}x | (counted, no target) |\n\
             | of them to the VMM (MMIO, port I/O) | {:.1} | {:.1} | | |",
            c.0,
            q.0,
            ratio(c.0, q.0),
            c.1,
            q.1
        );
    }
    let _ = writeln!(
        m,
        "\nHow the two move frames: both send a frame to the TAP with one `writev` straight from the \
         guest's buffers, and both receive one through a buffer of their own (the TAP's `read` into it, \
         then into the guest's buffers); both guests skip most EOI exits (QEMU's with KVM's PV EOI, \
         crashvmm's with the lazy EOI of Hyper-V's VP assist page, which KVM serves) and arm their timers \
         by TSC deadline; both interrupts are MSI-X messages delivered within the call that raises them \
         (QEMU's irqfd from the eventfd's wakeup, crashvmm's `KVM_SIGNAL_MSI` from its net thread), so \
         neither costs the guest an exit to its VMM (crashvmm's virtio-mmio transport, \
         `transport=mmio`, costs two per interrupt: reading the interrupt status, acknowledging it). A \
         round trip takes two interrupts, one each way. The exits are KVM's own \
         counts for the guest (`/sys/kernel/debug/kvm/PID-FD/`: `exits`, `mmio_exits`, `io_exits`), which \
         `bench net-peer` reads before and after the timed round trips: they vary far less between runs \
         than the times (a slower round trip sees more timer interrupts, so a little). In the test host \
         every exit and copy is emulated, and runs of the same VMM differ by up to {:.1}x (below).",
        b.spread()
    );
    let _ = writeln!(
        m,
        "\n| run | VMM | to host Mbit/s | to guest Mbit/s | round trip µs (median) | exits per round trip (to the VMM) | VMM wall s |\n\
         |---|---|---|---|---|---|---|"
    );
    for r in &b.runs {
        match (&r.record, &r.error) {
            (Some(p), _) => {
                let exits =
                    p.rr_exits_each().map_or("not counted".to_string(), |(all, vmm)| format!("{all:.1} ({vmm:.1})"));
                let _ = writeln!(
                    m,
                    "| {} | {} | {:.1} | {:.1} | {:.0} | {exits} | {:.1} |",
                    r.round,
                    r.vmm,
                    p.to_host_mbps(),
                    p.to_guest_mbps(),
                    p.rr_median_us(),
                    p.vmm_wall_s
                );
            }
            (None, e) => {
                let _ = writeln!(m, "| {} | {} | failed: {} | | | | |", r.round, r.vmm, e.as_deref().unwrap_or("?"));
            }
        }
    }
    for n in &b.notes {
        let _ = writeln!(m, "\n{n}");
    }
    let _ = writeln!(m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_each_vmm_under_its_own_peer_on_the_tap() {
        let sh = script("env LD_LIBRARY_PATH=qemu/lib ./qemu/qemu-system-x86_64 -L qemu/fw", 16, 2);
        assert!(sh.contains("busybox tunctl -t crashvmm-net0"), "{sh}");
        for round in [1, 2] {
            for vmm in VMMS {
                assert!(sh.contains(&format!("--out out/peer-{vmm}-{round}.json")), "{sh}");
            }
        }
        assert!(sh.contains("'--net' 'tap=crashvmm-net0,transport=pci'"), "{sh}");
        assert!(sh.contains("mkdir -p out/crashvmm-2\n"), "{sh}");
        assert!(sh.contains("'--console-log' 'out/crashvmm-2/console.log'"), "{sh}");
        assert!(sh.contains("'tap,id=n0,ifname=crashvmm-net0,script=no,downscript=no,vhost=off'"), "{sh}");
        assert!(sh.contains("'console=ttyS0 panic=-1 crashtest=netbench crashtest.net_mib=16'"), "{sh}");
        assert!(sh.contains("out/console-qemu-2.log"), "{sh}");
    }

    /// The peer against a local stand-in for the guest: the same three exchanges, measured.
    #[test]
    fn the_peer_measures_a_guest_that_does_its_part() {
        let host = Ipv4Addr::LOCALHOST;
        let sink = TcpListener::bind((host, 0)).unwrap();
        let source = TcpListener::bind((host, 0)).unwrap();
        let echo = TcpListener::bind((host, 0)).unwrap();
        let (up, down, echo_port) =
            (sink.local_addr().unwrap(), source.local_addr().unwrap(), echo.local_addr().unwrap().port());
        let guest = std::thread::spawn(move || {
            let mut s = TcpStream::connect(up).unwrap();
            s.write_all(&vec![0u8; 3 << 20]).unwrap();
            drop(s);
            let mut s = TcpStream::connect(down).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            drop(s);
            let (mut e, _) = echo.accept().unwrap();
            let mut b = [0u8; 1];
            while e.read(&mut b).unwrap() == 1 {
                e.write_all(&b).unwrap();
            }
            got.len()
        });
        // A stand-in for KVM's counts: 4 exits for each read, so 4 over the round trips.
        let reads = std::cell::Cell::new(0u64);
        let counts = || {
            reads.set(reads.get() + 1);
            Some(KvmExits { exits: 4 * reads.get(), mmio_exits: reads.get(), ..Default::default() })
        };
        let r = exchange(&sink, &source, SocketAddr::from((host, echo_port)), 3 << 20, 50, counts).unwrap();
        assert_eq!(guest.join().unwrap(), 3 << 20);
        assert_eq!((r.to_host_bytes, r.to_guest_bytes, r.rr_us.len()), (3 << 20, 3 << 20, 50));
        assert_eq!(r.rr_exits, Some(KvmExits { exits: 4, mmio_exits: 1, ..Default::default() }));
        assert_eq!(r.rr_exits_each(), Some((4.0 / 50.0, 1.0 / 50.0)));
        assert!(r.to_host_mbps() > 0.0 && r.to_guest_mbps() > 0.0 && r.rr_median_us() > 0.0);
    }

    #[test]
    fn kvm_counts_are_read_from_a_vm_s_directory_and_differenced() {
        let dir = tempfile::tempdir().unwrap();
        for (f, v) in KvmExits::FILES.iter().zip(["100", "7", "1", "30", "12"]) {
            fs::write(dir.path().join(f), format!("{v}\n")).unwrap();
        }
        let after = KvmExits::read(dir.path()).unwrap();
        let want = KvmExits { exits: 100, mmio_exits: 7, io_exits: 1, insn_emulation: 30, irq_injections: 12 };
        assert_eq!(after, want);
        let before = KvmExits { exits: 40, mmio_exits: 1, ..Default::default() };
        assert_eq!(after.since(&before), KvmExits { exits: 60, mmio_exits: 6, ..want });
        fs::remove_file(dir.path().join("io_exits")).unwrap();
        assert_eq!(KvmExits::read(dir.path()), None, "a count missing");
        assert_eq!(KvmExits::of_process(u32::MAX), None, "no such VM");
    }

    #[test]
    fn the_section_judges_both_directions_and_the_round_trip() {
        let rec = |up: f64, rr: f64| PeerRecord {
            to_host_bytes: 1 << 20,
            to_host_s: 8.0 * 1.048576 / up,
            to_guest_bytes: 1 << 20,
            to_guest_s: 8.0 * 1.048576 / up,
            rr_us: vec![rr],
            vmm_exit: Some(0),
            vmm_wall_s: 20.0,
            rr_exits: Some(KvmExits {
                exits: (rr / 25.0) as u64,
                mmio_exits: (rr / 100.0) as u64,
                ..Default::default()
            }),
        };
        let b = NetBench {
            mode: Some("testhost".into()),
            mib: 1,
            runs: vec![
                NetRun { vmm: "crashvmm".into(), round: 1, record: Some(rec(200.0, 300.0)), error: None },
                NetRun { vmm: "qemu".into(), round: 1, record: Some(rec(100.0, 400.0)), error: None },
            ],
            ..Default::default()
        };
        let mut m = String::new();
        section(&mut m, &b);
        assert!(m.contains("| guest to host, Mbit/s | 200.0 | 100.0 | 2.00x | at least 1.0x: **met** |"), "{m}");
        assert!(m.contains("| round trip, µs | 300.0 | 400.0 | 0.75x | under 1.0x: **met** |"), "{m}");
        assert!(m.contains("| the guest's exits per round trip | 12.0 | 16.0 | 0.75x | (counted, no target) |"), "{m}");
        assert!(m.contains("| of them to the VMM (MMIO, port I/O) | 3.0 | 4.0 | | |"), "{m}");
        assert!(m.contains("| 1 | crashvmm | 200.0 | 200.0 | 300 | 12.0 (3.0) | 20.0 |"), "{m}");
        assert!(m.contains("differ by up to 1.0x"), "one run each: {m}");
        let close = NetBench {
            runs: vec![
                NetRun { vmm: "crashvmm".into(), round: 1, record: Some(rec(100.0, 396.0)), error: None },
                NetRun { vmm: "qemu".into(), round: 1, record: Some(rec(100.0, 400.0)), error: None },
            ],
            ..b.clone()
        };
        let mut m = String::new();
        section(&mut m, &close);
        assert!(m.contains("| 0.99x | under 1.0x: **met** (within 5% of 1.0x: a tie) |"), "{m}");
        assert!(m.contains("| 1.00x | at least 1.0x: **met** (within 5% of 1.0x: a tie) |"), "{m}");
        let mut none = String::new();
        section(&mut none, &NetBench::default());
        assert!(none.contains("Not measured in this run."), "{none}");
    }
}
