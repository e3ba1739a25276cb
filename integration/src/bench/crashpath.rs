//! Part 3: crash path latency.
//!
//! - crashvmm, real Linux: the `kdump` scenario of the scenario runner (the software KVM test
//!   host here, hardware KVM directly where there is one); its event log times the pvpanic
//!   write, the VMBus UNLOAD (`latency_us`: UNLOAD received to UNLOAD_RESPONSE in the guest's
//!   message page), the kexec, the crash kernel's start and its VMBus reconnect.
//! - QEMU, the same guest kernel, initramfs, command line, memory and vCPUs, in the same kind of
//!   test host: `-M pc -cpu host,kvm=off,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash -device
//!   vmbus-bridge -device pvpanic` and the crash disk as virtio-blk-pci, once with QEMU's
//!   default panic action and once with `-action panic=none` (so that the guest's kdump can
//!   run). A driver (this binary, `bench qemu-kdump`, run inside the test host) timestamps the
//!   console lines, keeps the QMP events (timestamped by QEMU) and QEMU's `vmbus_*` trace
//!   (`-msg timestamp=on`), all on the test host's clock.
//! - crashvmm, the test guest's `kdump` scenario on `/dev/kvm` directly at 1, 4 and 16 GiB: the
//!   UNLOAD handling time and panic to crash kernel per guest size. QEMU cannot run it here: its
//!   Hyper-V needs KVM's in-kernel Hyper-V, which this `/dev/kvm` lacks (recorded as measured).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::procs::{self, Guarded};
use super::qmp::{self, Qmp};
use super::vmcore::{event_ts, find_event};
use super::{progress, read_events, Env, QEMU_CPU};
use crate::{run_scenario, scenario, Mode, RunOptions};

/// crashvmm's crash path as its event log shows it; times in seconds after the pvpanic write.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CrashvmmPath {
    pub mode: String,
    pub exit_code: Option<i32>,
    pub pvpanic_bits: Option<u64>,
    /// From `vm_started` to the pvpanic write: the first kernel's boot, `kexec -p`, the crash.
    pub boot_to_panic_s: Option<f64>,
    pub hv_crash_s: Option<f64>,
    pub unload_requested_s: Option<f64>,
    pub unload_answered_s: Option<f64>,
    /// UNLOAD received to UNLOAD_RESPONSE in the guest's message page (host-side handling).
    pub unload_latency_us: Option<u64>,
    pub kexec_s: Option<f64>,
    pub crash_kernel_started_s: Option<f64>,
    pub vmbus_reconnected_s: Option<f64>,
    pub kdump_done_s: Option<f64>,
    pub note: Option<String>,
}

/// Seconds from `t0` to the first event `name` at or after `t0`.
fn after(events: &[Value], name: &str, t0: f64) -> Option<f64> {
    events.iter().filter(|e| e["event"] == name).filter_map(event_ts).find(|&t| t >= t0).map(|t| t - t0)
}

/// The crash path from a crashvmm event log (the first pvpanic write is time 0).
pub fn crashvmm_path(events: &[Value]) -> CrashvmmPath {
    let mut p = CrashvmmPath::default();
    let Some(pv) = find_event(events, "pvpanic") else {
        p.note = Some("no pvpanic event".into());
        return p;
    };
    let Some(t0) = event_ts(pv) else { return p };
    p.pvpanic_bits = pv["bits"].as_u64();
    p.boot_to_panic_s = find_event(events, "vm_started").and_then(event_ts).map(|t| t0 - t);
    p.hv_crash_s = after(events, "hv_crash", t0);
    p.unload_requested_s = after(events, "vmbus_unload_requested", t0);
    p.unload_answered_s = after(events, "vmbus_unload_completed", t0);
    p.unload_latency_us = find_event(events, "vmbus_unload_completed").and_then(|e| e["latency_us"].as_u64());
    p.kexec_s = after(events, "guest_kexec", t0);
    p.crash_kernel_started_s = after(events, "crash_kernel_started", t0);
    // The crash kernel's VMBus connection: the first one after the kexec.
    if let Some(k) = p.kexec_s {
        p.vmbus_reconnected_s = after(events, "vmbus_connected", t0 + k).map(|s| s + k);
    }
    p.kdump_done_s = after(events, "kdump_completed", t0).or_else(|| after(events, "vm_exited", t0));
    p
}

/// What the QEMU driver recorded in one run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct QemuPath {
    pub action: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// QMP events in order (name, seconds after GUEST_CRASHLOADED or the panic line).
    pub qmp_events: Vec<(String, f64)>,
    pub panic_action: Option<String>,
    /// From starting QEMU to GUEST_CRASHLOADED: the first kernel's boot, `kexec -p`, the crash.
    pub boot_to_panic_s: Option<f64>,
    pub crashloaded_s: Option<f64>,
    pub guest_panicked_s: Option<f64>,
    pub unload_received_s: Option<f64>,
    pub unload_answered_s: Option<f64>,
    pub unload_latency_us: Option<u64>,
    pub crash_kernel_first_line_s: Option<f64>,
    pub vmbus_reconnected_s: Option<f64>,
    pub capture_marker_s: Option<f64>,
    pub qemu_exit_s: Option<f64>,
    /// Time 0: GUEST_CRASHLOADED (QEMU's pvpanic event), else the guest's panic line.
    pub anchor: String,
    pub note: Option<String>,
}

/// One line of QEMU's log trace backend with `-msg timestamp=on`: `PID@SEC.USEC:event args`.
pub fn parse_trace_line(line: &str) -> Option<(f64, &str)> {
    let (head, rest) = line.split_once(':')?;
    let (_, ts) = head.split_once('@')?;
    Some((ts.parse().ok()?, rest))
}

/// Builds a [`QemuPath`] from the driver's record and QEMU's trace log.
pub fn qemu_path(record: &Value, trace: &str) -> QemuPath {
    let mut p = QemuPath {
        action: record["action"].as_str().unwrap_or("?").into(),
        exit_code: record["exit_code"].as_i64().map(|c| c as i32),
        timed_out: record["timed_out"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    let events: Vec<Value> = record["qmp"].as_array().cloned().unwrap_or_default();
    let console: Vec<(f64, String)> = record["console"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| Some((l["t"].as_f64()?, l["text"].as_str()?.to_string()))).collect::<Vec<_>>())
        .unwrap_or_default();
    let qmp_t = |name: &str| events.iter().find(|e| e["event"] == name).and_then(qmp::event_time);
    let panic_line = console.iter().find(|(_, l)| l.contains("sysrq: Trigger a crash")).map(|(t, _)| *t);
    let (t0, anchor) = match (qmp_t("GUEST_CRASHLOADED"), panic_line) {
        (Some(t), _) => (t, "GUEST_CRASHLOADED (pvpanic crash-loaded)"),
        (None, Some(t)) => (t, "the guest's panic line"),
        (None, None) => {
            p.note = Some("neither GUEST_CRASHLOADED nor a panic line: the guest did not crash".into());
            return p;
        }
    };
    p.anchor = anchor.into();
    let rel = |t: f64| t - t0;
    p.qmp_events =
        events.iter().filter_map(|e| Some((e["event"].as_str()?.to_string(), rel(qmp::event_time(e)?)))).collect();
    p.crashloaded_s = qmp_t("GUEST_CRASHLOADED").map(rel);
    p.boot_to_panic_s = record["started"].as_f64().map(|s| t0 - s);
    if let Some(e) = events.iter().find(|e| e["event"] == "GUEST_PANICKED") {
        p.guest_panicked_s = qmp::event_time(e).map(rel);
        p.panic_action = e["data"]["action"].as_str().map(str::to_string);
    }
    // VMBus from the trace: the UNLOAD (message type 16) and the post of its response (17).
    let trace: Vec<(f64, &str)> = trace.lines().filter_map(parse_trace_line).collect();
    let recv = trace.iter().find(|(t, l)| *t >= t0 - 5.0 && l.starts_with("vmbus_recv_message type 16 "));
    if let Some(&(tr, _)) = recv {
        p.unload_received_s = Some(rel(tr));
        let posted = trace.iter().position(|(t, l)| *t >= tr && l.starts_with("vmbus_post_msg type 17 "));
        let done = posted.and_then(|i| trace[i..].iter().find(|(_, l)| l.starts_with("vmbus_msg_cb")));
        if let Some(&(td, _)) = done {
            p.unload_answered_s = Some(rel(td));
            p.unload_latency_us = Some(((td - tr) * 1e6).round() as u64);
        }
        p.vmbus_reconnected_s =
            trace.iter().find(|(t, l)| *t > tr && l.starts_with("vmbus_initiate_contact")).map(|(t, _)| rel(*t));
    }
    // The crash kernel's first console line: the second "Linux version" banner.
    p.crash_kernel_first_line_s =
        console.iter().filter(|(_, l)| l.contains("Linux version")).nth(1).map(|(t, _)| rel(*t));
    p.capture_marker_s =
        console.iter().find(|(_, l)| l.contains("CRASHTEST: kdump-capture: marker")).map(|(t, _)| rel(*t));
    p.qemu_exit_s = record["ended"].as_f64().map(rel);
    p
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TestguestUnload {
    pub gib: u64,
    pub rep: usize,
    pub exit_code: Option<i32>,
    pub path: CrashvmmPath,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CrashPath {
    pub mode: String,
    pub mode_reason: String,
    pub crashvmm: Option<CrashvmmPath>,
    pub crashvmm_wall_s: Option<f64>,
    pub qemu: Vec<QemuPath>,
    pub qemu_wall_s: Option<f64>,
    pub testguest: Vec<TestguestUnload>,
    /// What QEMU said when asked for Hyper-V on this `/dev/kvm`.
    pub qemu_hyperv_here: Option<String>,
    pub notes: Vec<String>,
}

pub fn run(env: &Env, sizes: &[u64], linux: bool) -> CrashPath {
    let mut c = CrashPath::default();
    let (mode, why) = crate::detect_mode();
    c.mode = mode.as_str().into();
    c.mode_reason = why;
    if linux {
        linux_crashvmm(env, &mut c);
        linux_qemu(env, mode, &mut c);
    } else {
        c.notes.push("the real-Linux crash path was skipped (--skip-linux)".into());
    }
    testguest_unload(env, sizes, &mut c);
    c
}

fn linux_crashvmm(env: &Env, c: &mut CrashPath) {
    let out = env.work.join("kdump-crashvmm");
    progress(format!("crash path: crashvmm, Linux kdump scenario ({}; about a minute)", c.mode));
    match run_scenario(&env.setup, "kdump", &out, &RunOptions::default()) {
        Ok(o) => {
            c.crashvmm_wall_s = Some(o.elapsed.as_secs_f64());
            match o.events() {
                Ok(ev) => {
                    let mut p = crashvmm_path(&ev);
                    p.mode = o.mode.as_str().into();
                    p.exit_code = o.exit_code;
                    if !o.as_expected() {
                        p.note = Some(format!(
                            "scenario did not end as expected (exit {:?}, timed out {})",
                            o.exit_code, o.timed_out
                        ));
                    }
                    progress(format!(
                        "crash path: crashvmm UNLOAD answered in {} us, crash kernel started {:.2} s after pvpanic",
                        p.unload_latency_us.map_or("?".into(), |v| v.to_string()),
                        p.crash_kernel_started_s.unwrap_or(f64::NAN)
                    ));
                    c.crashvmm = Some(p);
                }
                Err(e) => c.notes.push(format!("crashvmm kdump scenario: {e}")),
            }
        }
        Err(e) => c.notes.push(format!("crashvmm kdump scenario: {e}")),
    }
}

/// Files QEMU needs in the test host: the binary, every library `ldd` lists, and the x86
/// firmware (SeaBIOS, the option ROMs for -kernel). Returns the directory.
pub fn stage_qemu(dir: &Path) -> io::Result<()> {
    let qemu = which(&super::qemu_binary()).ok_or_else(|| io::Error::other("qemu-system-x86_64 not found"))?;
    let lib = dir.join("lib");
    let fw = dir.join("fw");
    fs::create_dir_all(&lib)?;
    fs::create_dir_all(&fw)?;
    fs::copy(&qemu, dir.join("qemu-system-x86_64"))?;
    let ldd = Command::new("ldd").arg(&qemu).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)"
        if let Some((name, rest)) = line.trim().split_once(" => ") {
            if let Some(path) = rest.split_whitespace().next().filter(|p| p.starts_with('/')) {
                fs::copy(path, lib.join(name.trim()))?;
            }
        }
    }
    for d in ["/usr/share/qemu", "/usr/share/seabios"] {
        let Ok(rd) = fs::read_dir(d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let wanted = ["bios", "linuxboot", "kvmvapic", "pvh", "multiboot", "qboot", "vgabios-stdvga"]
                .iter()
                .any(|p| name.starts_with(p));
            if wanted && !fw.join(&name).exists() {
                // fs::copy follows symlinks (Debian links bios-256k.bin into seabios/).
                let _ = fs::copy(e.path(), fw.join(&name));
            }
        }
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// QEMU's actions to compare: its default, and `none` (the guest goes on to its kdump).
const QEMU_ACTIONS: [&str; 2] = ["default", "none"];

fn linux_qemu(env: &Env, mode: Mode, c: &mut CrashPath) {
    // A test host that dies on the way (a loaded machine, a stray signal) gets one more try.
    for attempt in 0..2 {
        let mut tried = CrashPath::default();
        linux_qemu_once(env, mode, &mut tried, attempt);
        let complete = tried.qemu.len() == QEMU_ACTIONS.len();
        if complete || attempt == 1 {
            c.qemu = tried.qemu;
            c.qemu_wall_s = tried.qemu_wall_s;
            c.notes.extend(tried.notes);
            return;
        }
        c.notes.extend(tried.notes.into_iter().map(|n| format!("{n} (first try; tried again)")));
    }
}

fn linux_qemu_once(env: &Env, mode: Mode, c: &mut CrashPath, attempt: u32) {
    let kernel = env.setup.images.join("guest/vmlinuz");
    let initrd = env.setup.images.join("guest/initramfs.cpio.gz");
    let out = env.work.join("kdump-qemu");
    let _ = fs::remove_dir_all(&out);
    if let Err(e) = fs::create_dir_all(&out) {
        c.notes.push(format!("QEMU kdump: {e}"));
        return;
    }
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            c.notes.push(format!("QEMU kdump: cannot find this binary: {e}"));
            return;
        }
    };
    progress(format!(
        "crash path: QEMU, the same Linux guest and kdump scenario ({}; about a minute){}",
        mode.as_str(),
        if attempt > 0 { ", again" } else { "" }
    ));
    let started = Instant::now();
    let result = match mode {
        Mode::Direct => (|| -> Result<(), String> {
            for action in QEMU_ACTIONS {
                let status = Command::new(&me)
                    .args(["qemu-kdump", "--action", action, "--timeout", "200"])
                    .arg("--kernel")
                    .arg(&kernel)
                    .arg("--initrd")
                    .arg(&initrd)
                    .arg("--out")
                    .arg(&out)
                    .status()
                    .map_err(|e| e.to_string())?;
                if !status.success() {
                    return Err(format!("qemu-kdump --action {action}: {status}"));
                }
            }
            Ok(())
        })(),
        Mode::TestHost => (|| -> Result<(), String> {
            let share = tempfile::Builder::new().prefix("crashvmm-bench-").tempdir().map_err(|e| e.to_string())?;
            let sp = share.path();
            stage_qemu(&sp.join("qemu")).map_err(|e| format!("staging QEMU for the test host: {e}"))?;
            for (from, to) in
                [(me.as_path(), "bench"), (kernel.as_path(), "vmlinuz"), (initrd.as_path(), "initramfs.cpio.gz")]
            {
                fs::copy(from, sp.join(to)).map_err(|e| format!("copying {}: {e}", from.display()))?;
            }
            fs::create_dir(sp.join("out")).map_err(|e| e.to_string())?;
            let mut sh = String::from(
                "# Written by crashvmm's bench: QEMU runs the kdump guest in the test host.\n\
                 cd \"$1\" || exit 125\nrc=0\n",
            );
            for action in QEMU_ACTIONS {
                sh += &format!(
                    "echo \"TESTHOST: bench: QEMU kdump, panic action {action}\"\n\
                     ./bench qemu-kdump --action {action} --timeout 200 --qemu ./qemu/qemu-system-x86_64 \
                     --lib ./qemu/lib --fw ./qemu/fw --kernel vmlinuz --initrd initramfs.cpio.gz --out out \
                     --tmp /tmp || rc=$?\n"
                );
            }
            sh += "exit $rc\n";
            fs::write(sp.join("run.sh"), sh).map_err(|e| e.to_string())?;
            let ran = super::run_testhost_script(env, sp, &out.join("testhost.log"), Duration::from_secs(600));
            super::bring_back(&sp.join("out"), &out)?;
            ran
        })(),
    };
    c.qemu_wall_s = Some(started.elapsed().as_secs_f64());
    if let Err(e) = result {
        c.notes.push(format!("QEMU kdump: {e}"));
    }
    for action in QEMU_ACTIONS {
        let record = fs::read_to_string(out.join(format!("qemu-{action}.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let Some(record) = record else {
            c.notes.push(format!("QEMU kdump ({action}): no record"));
            continue;
        };
        let trace = fs::read_to_string(out.join(format!("qemu-{action}-trace.log"))).unwrap_or_default();
        let p = qemu_path(&record, &trace);
        progress(format!(
            "crash path: QEMU ({action}): panic action {}, crash kernel {}",
            p.panic_action.as_deref().unwrap_or("?"),
            p.crash_kernel_first_line_s
                .map_or("never started".into(), |s| format!("first line {s:.2} s after pvpanic"))
        ));
        c.qemu.push(p);
    }
}

/// Arguments of `bench qemu-kdump` (the driver that runs QEMU with the kdump guest).
#[derive(Debug, Clone)]
pub struct DriverArgs {
    pub qemu: String,
    pub lib: Option<PathBuf>,
    pub fw: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `default` (QEMU's own panic action) or an `-action panic=` value.
    pub action: String,
    pub out: PathBuf,
    pub tmp: PathBuf,
    pub timeout: Duration,
}

/// The QEMU command line for the kdump guest, as crashvmm's `kdump` scenario runs it.
pub fn qemu_kdump_command(a: &DriverArgs, sock: &Path, disk: &Path, trace: &Path) -> Command {
    let s = scenario("kdump").expect("the kdump scenario exists");
    let mut c = Command::new(&a.qemu);
    if let Some(lib) = &a.lib {
        c.env("LD_LIBRARY_PATH", lib);
    }
    if let Some(fw) = &a.fw {
        c.arg("-L").arg(fw);
    }
    c.args(["-M", "pc", "-accel", "kvm"]);
    c.args(["-cpu", "host,kvm=off,hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash"]);
    c.args(["-smp", &s.vcpus.to_string(), "-m", s.memory]);
    c.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio"]);
    c.arg("-kernel").arg(&a.kernel).arg("-initrd").arg(&a.initrd);
    c.args(["-append", &format!("{} crashtest={}", s.cmdline, s.guest_scenario())]);
    c.args(["-device", "vmbus-bridge", "-device", "pvpanic"]);
    c.arg("-drive").arg(format!("file={},if=none,id=crashdisk,format=raw", disk.display()));
    c.args(["-device", "virtio-blk-pci,drive=crashdisk,serial=crashvmm-crashdisk"]);
    if a.action != "default" {
        c.args(["-action", &format!("panic={}", a.action)]);
    }
    c.arg("-qmp").arg(format!("unix:{},server=on,wait=off", sock.display()));
    c.args(["-msg", "timestamp=on", "-trace", "vmbus_*", "-d", "guest_errors"]);
    c.arg("-D").arg(trace);
    c
}

/// `bench qemu-kdump`: runs QEMU with the kdump guest and writes `qemu-ACTION.json` (console
/// lines with arrival times, QMP events, exit) and `qemu-ACTION-trace.log` into `out`.
pub fn qemu_kdump_driver(a: &DriverArgs) -> Result<(), String> {
    fs::create_dir_all(&a.out).map_err(|e| e.to_string())?;
    let sock = a.tmp.join(format!("bench-qmp-{}.sock", a.action));
    let disk = a.tmp.join(format!("bench-crash-disk-{}.img", a.action));
    let trace = a.out.join(format!("qemu-{}-trace.log", a.action));
    let _ = fs::remove_file(&sock);
    fs::File::create(&disk).and_then(|f| f.set_len(1 << 30)).map_err(|e| format!("{}: {e}", disk.display()))?;
    let mut cmd = qemu_kdump_command(a, &sock, &disk, &trace);
    let log = a.out.join(format!("qemu-{}.log", a.action));
    let (mut child, console, _, started) =
        procs::spawn_with_console(&mut cmd, &log).map_err(|e| format!("starting {}: {e}", a.qemu))?;
    let deadline = Instant::now() + a.timeout;
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(30)).ok();
    let mut exit = None;
    let mut timed_out = false;
    loop {
        if let Some(q) = qmp.as_mut() {
            q.drain(Duration::from_millis(200));
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Ok(Some(status)) = child.child().try_wait() {
            exit = Some(procs::exit_code(status));
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
    }
    let ended = procs::now_epoch();
    if timed_out {
        child.kill();
    }
    let events = qmp.map(|q| q.events).unwrap_or_default();
    drop(child);
    let lines = console.finish();
    let record = json!({
        "action": a.action,
        "started": started,
        "ended": ended,
        "exit_code": exit,
        "timed_out": timed_out,
        "qmp": events,
        "console": lines.iter().map(|l| json!({"t": l.epoch, "text": l.text})).collect::<Vec<_>>(),
    });
    fs::write(a.out.join(format!("qemu-{}.json", a.action)), serde_json::to_string_pretty(&record).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let _ = fs::remove_file(&disk);
    let _ = fs::remove_file(&sock);
    if timed_out {
        return Err(format!("QEMU ran past {} s", a.timeout.as_secs()));
    }
    Ok(())
}

fn testguest_unload(env: &Env, sizes: &[u64], c: &mut CrashPath) {
    let reps = if env.quick { 1 } else { 3 };
    for &gib in sizes {
        for rep in 0..reps {
            match testguest_kdump_once(env, gib) {
                Ok((code, path)) => {
                    progress(format!(
                        "crash path: test guest kdump {gib} GiB #{rep}: UNLOAD answered in {} us",
                        path.unload_latency_us.map_or("?".into(), |v| v.to_string())
                    ));
                    c.testguest.push(TestguestUnload { gib, rep, exit_code: code, path });
                }
                Err(e) => {
                    progress(format!("crash path: test guest kdump {gib} GiB #{rep} FAILED: {e}"));
                    c.notes.push(format!("test guest kdump, {gib} GiB, run {rep}: {e}"));
                }
            }
        }
    }
    // What QEMU does when asked for the same Hyper-V on this /dev/kvm.
    let mut q = env.qemu_microvm(1, "kdump");
    q.args(["-cpu", &format!("{QEMU_CPU},hv-relaxed,hv-vpindex,hv-synic,hv-time,hv-crash"), "-serial", "null"]);
    if let Ok(out) = q.stdin(std::process::Stdio::null()).output() {
        let msg = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").trim().to_string();
        c.qemu_hyperv_here = Some(if out.status.success() { "started".into() } else { msg });
    }
}

fn testguest_kdump_once(env: &Env, gib: u64) -> Result<(Option<i32>, CrashvmmPath), String> {
    let ev_path = env.work.join("tg-kdump-events.jsonl");
    let crash_dir = env.work.join("tg-kdump-crashes");
    let _ = fs::remove_file(&ev_path);
    let mut cmd = env.crashvmm(gib, "kdump");
    cmd.args(["--console", "null", "--host-dump", "never", "--after-crash", "exit"]);
    cmd.arg("--events").arg(&ev_path).arg("--crash-dir").arg(&crash_dir);
    let log = env.work.join("tg-kdump.log");
    let (mut child, _console, _, _) = procs::spawn_with_console(&mut cmd, &log).map_err(|e| format!("spawn: {e}"))?;
    // Until crashvmm exits, or the crash kernel is up and connected (then a moment more).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut code = None;
    let mut done_at: Option<Instant> = None;
    loop {
        if let Ok(Some(s)) = child.child().try_wait() {
            code = Some(procs::exit_code(s));
            child = Guarded(None);
            break;
        }
        let ev = read_events(&ev_path);
        if done_at.is_none() && crashvmm_path(&ev).vmbus_reconnected_s.is_some() {
            done_at = Some(Instant::now());
        }
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill();
    let ev = read_events(&ev_path);
    let _ = fs::remove_dir_all(&crash_dir);
    let path = crashvmm_path(&ev);
    if path.unload_latency_us.is_none() {
        return Err(format!("no vmbus_unload_completed event (see {})", log.display()));
    }
    Ok((code, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: &str, name: &str, extra: Value) -> Value {
        let mut v = json!({"ts": ts, "event": name});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }

    #[test]
    fn crashvmm_path_from_events() {
        let events = vec![
            ev("2026-01-01T00:00:01.000000Z", "vmbus_connected", json!({})),
            ev("2026-01-01T00:00:10.000000Z", "pvpanic", json!({"bits": 2})),
            ev("2026-01-01T00:00:10.100000Z", "vmbus_unload_requested", json!({})),
            ev("2026-01-01T00:00:10.100200Z", "vmbus_unload_completed", json!({"latency_us": 200})),
            ev("2026-01-01T00:00:10.500000Z", "guest_kexec", json!({})),
            ev("2026-01-01T00:00:12.000000Z", "crash_kernel_started", json!({})),
            ev("2026-01-01T00:00:13.000000Z", "vmbus_connected", json!({})),
            ev("2026-01-01T00:00:20.000000Z", "vm_exited", json!({})),
        ];
        let p = crashvmm_path(&events);
        assert_eq!(p.pvpanic_bits, Some(2));
        assert_eq!(p.unload_latency_us, Some(200));
        assert!((p.unload_answered_s.unwrap() - 0.1002).abs() < 1e-6);
        assert!((p.crash_kernel_started_s.unwrap() - 2.0).abs() < 1e-6);
        assert!((p.vmbus_reconnected_s.unwrap() - 3.0).abs() < 1e-6);
        assert!((p.kdump_done_s.unwrap() - 10.0).abs() < 1e-6);
    }

    #[test]
    fn trace_lines_parse() {
        let (t, rest) = parse_trace_line("1234@1700000000.250000:vmbus_recv_message type 16 size 16").unwrap();
        assert_eq!(t, 1_700_000_000.25);
        assert_eq!(rest, "vmbus_recv_message type 16 size 16");
        assert!(parse_trace_line("HV crash parameters: (0x1 0x2)").is_none());
    }

    #[test]
    fn qemu_path_from_record_and_trace() {
        let record = json!({
            "action": "none",
            "exit_code": 0,
            "ended": 130.0,
            "qmp": [
                {"timestamp": {"seconds": 100, "microseconds": 0}, "event": "GUEST_CRASHLOADED"},
                {"timestamp": {"seconds": 100, "microseconds": 100000}, "event": "GUEST_PANICKED", "data": {"action": "none"}},
            ],
            "console": [
                {"t": 10.0, "text": "[    0.000000] Linux version 6.1"},
                {"t": 99.9, "text": "[   11.0] sysrq: Trigger a crash"},
                {"t": 102.0, "text": "[    0.000000] Linux version 6.1"},
                {"t": 120.0, "text": "CRASHTEST: kdump-capture: marker"},
            ],
        });
        let trace = "1@100.200000:vmbus_recv_message type 16 size 16\n\
                     1@100.200100:vmbus_process_incoming_message type 16\n\
                     1@100.200300:vmbus_post_msg type 17 size 16\n\
                     1@100.200400:vmbus_msg_cb message status 0\n\
                     1@110.000000:vmbus_initiate_contact version 4.0 target vp 0 mon pages 0x0,0x0 int page 0x0\n";
        let p = qemu_path(&record, trace);
        assert_eq!(p.panic_action.as_deref(), Some("none"));
        assert_eq!(p.unload_latency_us, Some(400));
        assert!((p.crash_kernel_first_line_s.unwrap() - 2.0).abs() < 1e-9);
        assert!((p.vmbus_reconnected_s.unwrap() - 10.0).abs() < 1e-9);
        assert!((p.capture_marker_s.unwrap() - 20.0).abs() < 1e-9);
        assert!((p.qemu_exit_s.unwrap() - 30.0).abs() < 1e-9);
    }
}
