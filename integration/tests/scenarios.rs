//! Real Linux scenarios under crashvmm (directly on hardware KVM, or in the software KVM test
//! host): each asserts on the console, the event log and crashvmm's exit code.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use integration::{
    run_scenario, write_data_file, Outcome, RunOptions, RunnerError, Setup, BOOT_MARKER, CRASH_COLLECTION_FAILED,
    GUEST_PANICKED, NET_FROM_GUEST, NET_TO_GUEST_BYTES,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One scenario at a time: each already uses both cores of a CI machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs of one scenario when the software KVM test host fails it (a hang or a triple fault in
/// the emulated layer, `Outcome::test_host_fault`, or the test host itself resetting before
/// crashvmm ended, `RunnerError::TestHost`): CI once lost one scenario to two such faults in a
/// row.
const TEST_HOST_TRIES: u32 = 3;

/// Run `name`; the outputs stay in a kept temporary directory named in every failure message.
fn run(name: &str) -> (Outcome, Vec<Value>, String, PathBuf) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut attempt = 0;
    let (o, out) = loop {
        attempt += 1;
        let out = tempfile::Builder::new().prefix(&format!("crashvmm-{name}-")).tempdir().unwrap().keep();
        let o = match run_scenario(&Setup::from_env(), name, &out, &RunOptions::default()) {
            Ok(o) => o,
            // The test host stopped (reset) before crashvmm ended: no outcome to judge.
            Err(e @ RunnerError::TestHost { .. }) if attempt < TEST_HOST_TRIES => {
                eprintln!("scenario {name}: {e}; running it again (try {} of {TEST_HOST_TRIES})", attempt + 1);
                continue;
            }
            Err(e) => panic!("scenario {name} could not run: {:#}", anyhow::Error::from(e)),
        };
        // The software KVM test host itself fails some boots (docs/boot-reliability.md; more
        // often on a loaded machine, and a scenario that boots twice is exposed twice): such a
        // run gets up to two more tries, the last of which must pass every check.
        match o.test_host_fault() {
            Some(fault) if attempt < TEST_HOST_TRIES => {
                eprintln!(
                    "scenario {name}: {fault} (outputs in {}); running it again (try {} of {TEST_HOST_TRIES})\n{}",
                    out.display(),
                    attempt + 1,
                    o.last_lines()
                )
            }
            _ => break (o, out),
        }
    };
    assert!(
        !o.timed_out,
        "scenario {name} timed out ({}); outputs in {}\n{}",
        o.mode.as_str(),
        out.display(),
        o.last_lines()
    );
    if let Err(why) = o.verdict() {
        panic!("scenario {name} differs from its declaration: {why}; outputs in {}\n{}", out.display(), o.last_lines());
    }
    let events = o.events().unwrap_or_else(|e| panic!("{e}; outputs in {}", out.display()));
    let console = o.console();
    (o, events, console, out)
}

fn names(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["event"].as_str().unwrap_or("?")).collect()
}

fn position(events: &[Value], name: &str) -> Option<usize> {
    events.iter().position(|e| e["event"] == name)
}

/// Common to every run: RFC 3339 UTC timestamps with microseconds, `vm_started` first and
/// `vm_exited` last with crashvmm's exit code.
fn check_frame(o: &Outcome, events: &[Value], expected_exit: i32, out: &Path) {
    assert_eq!(o.exit_code, Some(expected_exit), "exit code; events {:?}; outputs in {}", names(events), out.display());
    assert_eq!(events.first().map(|e| &e["event"]), Some(&Value::from("vm_started")), "{:?}", names(events));
    let last = events.last().unwrap();
    assert_eq!(last["event"], "vm_exited");
    assert_eq!(last["exit_code"], expected_exit);
    for e in events {
        let ts = e["ts"].as_str().expect("ts");
        assert!(ts.len() == 27 && ts.ends_with('Z'), "RFC 3339 UTC with microseconds: {ts}");
        chrono_like(ts);
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn chrono_like(ts: &str) {
    let b = ts.as_bytes();
    for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')] {
        assert_eq!(b[i], c, "{ts}");
    }
}

fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn boot_reaches_init_and_powers_off() {
    let (o, events, console, out) = run("boot");
    assert!(
        console.lines().any(|l| l.trim_end() == BOOT_MARKER),
        "no marker in console.log (outputs in {}):\n{}",
        out.display(),
        tail(&console)
    );
    assert!(console.contains("Linux version 6.1"), "the console shows the guest kernel banner");
    check_frame(&o, &events, 0, &out);
    assert_eq!(events[0]["vcpus"], 2);
    assert_eq!(events[0]["memory_bytes"], 768u64 << 20);
    assert!(events[0]["kernel"].as_str().unwrap().ends_with("vmlinuz"));
    assert_eq!(events.last().unwrap()["reason"], "poweroff");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn panic_is_reported_through_pvpanic_and_the_hyperv_crash_msrs() {
    let (o, events, console, out) = run("panic");
    assert!(
        console.contains("Hypervisor detected: Microsoft Hyper-V"),
        "guest did not select Hyper-V (outputs in {}):\n{}",
        out.display(),
        tail(&console)
    );
    assert!(console.contains("Hyper-V: enabling crash_kexec_post_notifiers"));
    check_frame(&o, &events, GUEST_PANICKED, &out);
    let enabled = position(&events, "hyperv_enabled").expect("hyperv_enabled");
    let connected = position(&events, "vmbus_connected").expect("vmbus_connected");
    let pvpanic = position(&events, "pvpanic").expect("pvpanic");
    assert!(enabled < connected && connected < pvpanic, "order: {:?}", names(&events));
    assert!(console.contains("hv_vmbus: Vmbus version:"), "hv_vmbus connected");
    let hv_crash = position(&events, "hv_crash").expect("hv_crash");
    assert!(enabled < pvpanic && pvpanic < hv_crash, "order: {:?}", names(&events));
    assert!(events[enabled]["guest_os_id"].as_str().unwrap().starts_with("0x81"), "Linux vendor id 0x8100");
    assert_eq!(events[pvpanic]["panicked"], true);
    assert_eq!(events[pvpanic]["crash_loaded"], false);
    assert_eq!(events[pvpanic]["bits"], 1);
    let message = events[hv_crash]["message"].as_str().expect("crash message");
    assert!(message.contains("sysrq triggered crash"), "{message}");
    let params = events[hv_crash]["params"].as_array().unwrap();
    assert_eq!(params.len(), 5);
    // The message path: P3 is the message page, P4 its length.
    let len = u64::from_str_radix(params[4].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(len as usize, message.len());
    assert!(events.last().unwrap()["reason"].as_str().unwrap().starts_with("guest_panicked"));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn hyperv_off_is_a_plain_kvm_guest_and_pvpanic_still_reports() {
    let (o, events, console, out) = run("panic-kvm");
    assert!(console.contains("Hypervisor detected: KVM"), "outputs in {}:\n{}", out.display(), tail(&console));
    assert!(!console.contains("Hyper-V"), "no Hyper-V with --hyperv off");
    check_frame(&o, &events, GUEST_PANICKED, &out);
    let pvpanic = position(&events, "pvpanic").expect("pvpanic");
    assert_eq!(events[pvpanic]["panicked"], true);
    assert!(position(&events, "hv_crash").is_none());
    assert_eq!(o.crash_dirs().len(), 1);
    assert!(position(&events, "hyperv_enabled").is_none());
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn kdump_unloads_vmbus_kexecs_and_the_crash_kernel_reconnects() {
    let (o, events, console, out) = run("kdump");
    let fail =
        |what: &str| format!("{what}; events {:?}; outputs in {}\n{}", names(&events), out.display(), tail(&console));
    assert!(console.contains("CRASHTEST: kdump: crash kernel loaded"), "{}", fail("no crash kernel loaded"));
    assert!(console.contains("CRASHTEST: kdump-capture: marker"), "{}", fail("crash kernel marker missing"));
    assert!(!console.contains("Waiting for VMBus UNLOAD"), "{}", fail("the guest waited for UNLOAD"));
    check_frame(&o, &events, GUEST_PANICKED, &out);
    let at = |name: &str| position(&events, name).unwrap_or_else(|| panic!("{}", fail(&format!("no {name}"))));
    let pvpanic = at("pvpanic");
    assert_eq!(events[pvpanic]["crash_loaded"], true);
    assert_eq!(events[pvpanic]["panicked"], false);
    let (req, done, kexec, started) =
        (at("vmbus_unload_requested"), at("vmbus_unload_completed"), at("guest_kexec"), at("crash_kernel_started"));
    let hv_crash = at("hv_crash");
    // The crash kernel's connection: the last vmbus_connected, after it started.
    let reconnect = events.iter().rposition(|e| e["event"] == "vmbus_connected").unwrap();
    assert!(pvpanic < req && req < done && done < kexec && kexec < started && started < reconnect, "{}", fail("order"));
    // With the crash message page Linux 6.1.143+ reports after the UNLOAD (kmsg dump);
    // either way before the kexec.
    assert!(pvpanic < hv_crash && hv_crash < kexec, "{}", fail("hv_crash order"));
    assert!(events[done]["latency_us"].as_u64().is_some(), "UNLOAD latency reported");
    // The crash kernel runs on the vCPU that panicked and connects from there.
    assert_eq!(events[started]["vcpu"], events[kexec]["vcpu"]);
    assert_eq!(events[reconnect]["target_vcpu"], events[kexec]["vcpu"]);
    // The guest's own kdump ran and crashvmm collected its dump from the crash disk.
    let completed = at("kdump_completed");
    assert!(started < completed, "{}", fail("kdump_completed order"));
    assert!(events[completed]["bytes"].as_u64().unwrap() > 0);
    let written = at("vmcore_written");
    assert_eq!(events[written]["source"], "guest");
    assert!(completed < written, "{}", fail("vmcore_written order"));
    assert!(console.contains("CRASHTEST: kdump: dump written"), "{}", fail("the crash kernel's makedumpfile"));
    let dirs = o.crash_dirs();
    assert_eq!(dirs.len(), 1, "{}", fail("crash directories"));
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert!(report["outcome"].as_str().unwrap().contains("collected from the crash disk"), "{report}");
    assert_eq!(report["pvpanic"]["crash_loaded"], true);
    assert_eq!(report["vmcore"]["source"], "guest");
    assert_eq!(report["vmcore"]["format"], "kdump-compressed");
    assert!(!dirs[0].join("vmcore").exists(), "no host-side vmcore when the guest's kdump worked");
    // makedumpfile reads it back: the crashed kernel's log, with the panic.
    let kdump = dirs[0].join("vmcore.kdump");
    let dmesg = out.join("dmesg.txt");
    let run = std::process::Command::new("makedumpfile")
        .arg("--dump-dmesg")
        .arg(&kdump)
        .arg(&dmesg)
        .output()
        .expect("makedumpfile is installed (make deps)");
    assert!(run.status.success(), "makedumpfile --dump-dmesg: {}", String::from_utf8_lossy(&run.stderr));
    let log = String::from_utf8_lossy(&std::fs::read(&dmesg).unwrap()).into_owned();
    assert!(
        log.contains("sysrq triggered crash"),
        "the crashed kernel's log:\n{}",
        &log[log.len().saturating_sub(2000)..]
    );
    // The analysis read the same log out of guest memory, and the panicking vCPU's stack (its
    // registers from the kernel's crash notes) is crash's `bt` of the panicking task.
    check_analysis(&dirs[0], &kdump, &dmesg, &out, "sysrq triggered crash", &["sysrq_handle_crash"]);
    std::fs::remove_dir_all(&out).ok();
}

/// The text after `prefix` on the console line that starts with it.
fn console_value<'a>(console: &'a str, prefix: &str) -> Option<&'a str> {
    console.lines().find_map(|l| l.trim_end().strip_prefix(prefix))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_linux_guest_on_a_tap_pings_moves_tcp_data_both_ways_then_its_kdump_completes() {
    let (o, events, console, out) = run("net");
    let fail =
        |what: &str| format!("{what}; events {:?}; outputs in {}\n{}", names(&events), out.display(), tail(&console));
    check_frame(&o, &events, GUEST_PANICKED, &out);
    // Linux found the device, with crashvmm's locally administered MAC.
    let mac = console_value(&console, "CRASHTEST: net: eth0 ").unwrap_or_else(|| panic!("{}", fail("no eth0")));
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 0b11, 0b10, "{}", fail(&format!("MAC {mac}: not locally administered unicast")));
    // A PCI function (crashvmm's default transport) on bus 0, its queues on MSI-X vectors of
    // their own.
    let bus = console_value(&console, "CRASHTEST: net: bus ").unwrap_or_else(|| panic!("{}", fail("no bus")));
    assert!(bus.starts_with("0000:00:"), "{}", fail(&format!("eth0 on {bus}, not on PCI bus 0")));
    let vectors: Vec<&str> = console.lines().filter(|l| l.starts_with("CRASHTEST: net: interrupt ")).collect();
    for queue in ["-input.0", "-output.0", "-config"] {
        let msix = vectors.iter().any(|l| l.contains(queue) && l.contains("PCI-MSI"));
        assert!(msix, "{}", fail(&format!("no MSI-X vector for {queue}: {vectors:?}")));
    }
    // What makes an interrupt cheaper: the TSC-deadline timer, and where the host's KVM serves
    // the Hyper-V APIC MSRs (crashvmm's log says whether it does), the guest's lazy EOI.
    assert!(console.contains("TSC deadline timer available"), "{}", fail("no TSC-deadline timer"));
    let log = std::fs::read_to_string(out.join("crashvmm.log")).unwrap_or_default();
    let served = log.contains("hyperv: KVM serves the APIC MSRs");
    assert!(served || log.contains("hyperv: this KVM has no Hyper-V code"), "{}", fail("no word on the APIC MSRs"));
    let enlightened = console.contains("Hyper-V: Using enlightened APIC");
    assert_eq!(enlightened, served, "{}", fail("the guest's APIC MSRs are not what crashvmm offered"));
    let ping = console.lines().find(|l| l.starts_with("CRASHTEST: net: ") && l.contains("packets transmitted"));
    assert!(ping.is_some_and(|l| l.contains(" 3 packets received")), "{}", fail("ping"));
    // Byte for byte both ways: what the guest sent is what the host side kept, what the host
    // side sent is what the guest hashed.
    let sent = console_value(&console, "CRASHTEST: net: sent ").unwrap_or_else(|| panic!("{}", fail("no sent hash")));
    let kept = std::fs::read(out.join(NET_FROM_GUEST)).unwrap_or_else(|e| panic!("{}", fail(&e.to_string())));
    assert_eq!(kept.len(), 1 << 20, "{}", fail("bytes the host side kept"));
    assert_eq!(sha256_hex(&kept), sent, "{}", fail("guest to host"));
    let data = out.join("net-to-guest.expected");
    write_data_file(&data, NET_TO_GUEST_BYTES).unwrap();
    let received =
        console_value(&console, "CRASHTEST: net: received ").unwrap_or_else(|| panic!("{}", fail("no received hash")));
    assert_eq!(received, sha256_hex(&std::fs::read(&data).unwrap()), "{}", fail("host to guest"));
    let counters =
        console_value(&console, "CRASHTEST: net: counters ").unwrap_or_else(|| panic!("{}", fail("counters")));
    // rx_length_errors: a frame the guest saw only part of (its used entries not returned
    // together) or longer than its buffers; each is dropped, in rx_dropped too.
    for zero in ["rx_errors=0", "tx_errors=0", "rx_dropped=0", "rx_length_errors=0"] {
        assert!(counters.split(' ').any(|c| c == zero), "{}", fail(&format!("guest counters {counters}")));
    }
    // The device's counts for the boot: at least the 1 MiB each way, nothing dropped but what
    // came after the crash (held until the crash kernel's driver reset the device).
    let c =
        events.iter().find(|e| e["event"] == "net_counters").unwrap_or_else(|| panic!("{}", fail("no net_counters")));
    assert!(
        c["tx_bytes"].as_u64() > Some(1 << 20) && c["rx_bytes"].as_u64() > Some(1 << 20),
        "{}",
        fail(&c.to_string())
    );
    let dropped = c["dropped"].as_object().unwrap_or_else(|| panic!("{}", fail(&c.to_string())));
    assert!(dropped.iter().all(|(k, v)| k == "rx_held" || v == 0), "{}", fail(&c.to_string()));
    // Then the crash path as without a network: the guest's own kdump, collected.
    let at = |name: &str| position(&events, name).unwrap_or_else(|| panic!("{}", fail(&format!("no {name}"))));
    assert!(at("guest_kexec") < at("crash_kernel_started"), "{}", fail("order"));
    let written = at("vmcore_written");
    assert_eq!(events[written]["source"], "guest", "{}", fail("vmcore source"));
    assert!(console.contains("CRASHTEST: kdump: dump written"), "{}", fail("the crash kernel's makedumpfile"));
    assert_eq!(o.crash_dirs().len(), 1, "{}", fail("crash directories"));
    std::fs::remove_dir_all(&out).ok();
}

/// The crash directory's analysis against the reference tools on the same crash's `vmcore`:
/// `dmesg.txt` is byte for byte `makedumpfile --dump-dmesg`'s (`their_dmesg`); the panic is
/// `panic`'s; the panicking vCPU's stack, function by function, is `crash`'s `bt` of the
/// panicking task with the guest's -dbg vmlinux, and holds `functions`. Returns the report.
fn check_analysis(dir: &Path, vmcore: &Path, their_dmesg: &Path, out: &Path, panic: &str, functions: &[&str]) -> Value {
    let fail = |what: String| format!("{what}; outputs in {}", out.display());
    let ours = std::fs::read(dir.join("dmesg.txt")).unwrap_or_else(|e| panic!("{}", fail(format!("dmesg.txt: {e}"))));
    let theirs = std::fs::read(their_dmesg).unwrap();
    if ours != theirs {
        let (o, t) = (String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        let first = o.lines().zip(t.lines()).position(|(a, b)| a != b);
        panic!(
            "{}",
            fail(format!(
                "dmesg.txt ({} bytes) differs from makedumpfile --dump-dmesg ({} bytes), first at line {first:?}: {:?} vs {:?}",
                ours.len(),
                theirs.len(),
                first.and_then(|i| o.lines().nth(i)),
                first.and_then(|i| t.lines().nth(i))
            ))
        );
    }
    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let a = &report["analysis"];
    assert!(a["panic"]["message"].as_str().is_some_and(|m| m.contains(panic)), "{}", fail(format!("panic: {a}")));
    assert!(a["identity"]["release"].as_str().is_some_and(|r| r.starts_with("6.")), "{}", fail(format!("{a}")));
    assert!(a["duration_us"].as_u64().is_some(), "{a}");
    let cpu = a["panic"]["cpu"].as_u64().unwrap_or_else(|| panic!("{}", fail(format!("no panicking CPU: {a}"))));
    let stack = a["cpus"].as_array().unwrap().iter().find(|c| c["cpu"] == cpu).unwrap();
    let hex = |v: &Value| v.as_str().and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
    // (where on the stack its return address is, function), innermost first; the first frame
    // is the registers' own instruction pointer (no slot).
    let ours: Vec<(Option<u64>, &str)> = stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["reliable"] == true)
        .filter_map(|f| Some((hex(&f["slot"]), f["function"].as_str()?)))
        .collect();
    let names: Vec<&str> = ours.iter().map(|f| f.1).collect();
    for f in functions {
        assert!(names.contains(f), "{}", fail(format!("{f} not in CPU {cpu}'s frames {names:?}")));
    }
    // crash's bt, frame by frame against ours: the same function at the same stack slot, over
    // the stack both cover (crash starts deeper than the registers the kernel saved for its
    // crash kernel, at `machine_kexec`; without registers, a host-side dump of a vCPU KVM had
    // reset, it starts where its search of the task's stack does, and ours deeper, where the
    // vCPU reported the crash). crash also lists stale return addresses left between two real
    // frames (its `bt -o` "potentially stale" entries): those are dropped, and shown. Nothing
    // else may differ: each of our frames in that range is crash's at the same slot, and crash
    // has none past our last.
    let theirs = crash_bt(vmcore, out);
    let slots: Vec<u64> = ours.iter().filter_map(|f| f.0).collect();
    let last = slots.last().copied().unwrap_or(0);
    let lo = slots.first().copied().unwrap_or(0).max(theirs.first().map_or(0, |f| f.0));
    let mine: Vec<(u64, &str)> = ours.iter().filter_map(|f| Some((f.0?, f.1))).filter(|f| f.0 >= lo).collect();
    let mut matched = Vec::new();
    let mut dropped = Vec::new();
    for (slot, func) in &theirs {
        match mine.iter().find(|f| f.0 == *slot) {
            Some(f) => {
                assert_eq!(f.1, func, "{}", fail(format!("slot {slot:#x}: ours {}, crash's {func}", f.1)));
                matched.push((*slot, func.as_str()));
            }
            None if *slot <= last => dropped.push(format!("{func}@{slot:#x}")),
            None => panic!("{}", fail(format!("crash's {func} at {slot:#x} is past our frames {ours:?}"))),
        }
    }
    assert!(mine.len() >= 3, "{}", fail(format!("too few frames in common with crash: {mine:?}")));
    assert_eq!(matched, mine, "{}", fail(format!("CPU {cpu}'s frames (right) against crash's bt (left)")));
    eprintln!(
        "analysis: {} frames as crash's bt has them; crash's entries not frames (deeper, or stale): {dropped:?}",
        mine.len()
    );
    eprintln!("analysis: {} log records, frames {ours:?}, in {} us", a["log_records"], a["duration_us"]);
    report
}

/// `crash`'s `bt` of the panicking task, innermost first: each frame's stack slot (where its
/// return address is) and function.
fn crash_bt(vmcore: &Path, out: &Path) -> Vec<(u64, String)> {
    let vmlinux = Setup::from_env().guest_vmlinux().unwrap_or_else(|e| panic!("{e}"));
    let cmds = out.join("crash-bt-commands");
    std::fs::write(&cmds, "bt\nq\n").unwrap();
    let r =
        tool("crash", &["-s".as_ref(), vmlinux.as_os_str(), vmcore.as_os_str(), "-i".as_ref(), cmds.as_os_str()], 600);
    let text = String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
    std::fs::write(out.join("crash-bt.txt"), &text).unwrap();
    assert!(r.status.success(), "crash failed ({}):\n{text}", r.status);
    // ` #3 [ffffc900001dbd58] sysrq_handle_crash at ffffffff816c3c2a`
    let frames: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let (slot, rest) = l.trim_start().strip_prefix('#')?.split_once(" [")?.1.split_once("] ")?;
            let (func, at) = rest.split_once(' ')?;
            let slot = u64::from_str_radix(slot, 16).ok()?;
            at.starts_with("at ").then(|| (slot, func.to_string()))
        })
        .collect();
    assert!(!frames.is_empty(), "no frames in crash's bt:\n{text}");
    frames
}

#[test]
fn a_full_crash_disk_gives_a_report_that_says_so_and_a_clean_exit_code() {
    let (o, events, _console, out) = run("panic-fulldisk");
    check_frame(&o, &events, CRASH_COLLECTION_FAILED, &out);
    let failed = position(&events, "vmcore_failed").unwrap_or_else(|| panic!("no vmcore_failed: {:?}", names(&events)));
    assert!(events[failed]["reason"].as_str().unwrap().contains("No space left"), "{}", events[failed]);
    assert!(position(&events, "vmcore_written").is_none());
    let dirs = o.crash_dirs();
    assert_eq!(dirs.len(), 1, "the report is kept; outputs in {}", out.display());
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert_eq!(report["vmcore"], Value::Null);
    assert!(report["vmcore_error"].as_str().unwrap().contains("No space left"), "{report}");
    assert!(report["outcome"].as_str().unwrap().contains("failed"), "{report}");
    assert!(!dirs[0].join("vmcore").exists(), "no partial vmcore left behind");
    assert!(events.last().unwrap()["reason"].as_str().unwrap().starts_with("crash_collection_failed"));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn a_hung_crash_kernel_gets_a_host_side_vmcore_after_the_kdump_timeout() {
    let (o, events, console, out) = run("kdump-timeout");
    assert!(console.contains("CRASHTEST: kdump-hang: hanging"), "outputs in {}", out.display());
    check_frame(&o, &events, GUEST_PANICKED, &out);
    let started = position(&events, "crash_kernel_started").expect("crash_kernel_started");
    let written = position(&events, "vmcore_written").expect("vmcore_written");
    assert!(started < written, "{:?}", names(&events));
    assert_eq!(events[written]["source"], "host");
    assert!(position(&events, "kdump_completed").is_none());
    let dirs = o.crash_dirs();
    assert_eq!(dirs.len(), 1);
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert!(report["outcome"].as_str().unwrap().contains("host-side vmcore"), "{report}");
    assert!(report["vmcore"]["reason"].as_str().unwrap().contains("--kdump-timeout 60 s"), "{report}");
    assert!(dirs[0].join("vmcore").is_file());
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn after_crash_reset_boots_again_until_max_crashes() {
    let (o, events, _console, out) = run("panic-reset");
    check_frame(&o, &events, GUEST_PANICKED, &out);
    let count = |n: &str| events.iter().filter(|e| e["event"] == n).count();
    assert_eq!((count("crash_detected"), count("crash_report"), count("vm_reset")), (2, 2, 1), "{:?}", names(&events));
    let reset = position(&events, "vm_reset").unwrap();
    assert_eq!(events[reset]["crashes"], 1);
    // The second boot really booted: Hyper-V enabled again after the reset.
    assert!(events[reset..].iter().any(|e| e["event"] == "hyperv_enabled"), "{:?}", names(&events));
    assert!(events.last().unwrap()["reason"].as_str().unwrap().contains("max-crashes 2"));
    let dirs = o.crash_dirs();
    assert_eq!(dirs.len(), 2, "one crash directory per crash");
    assert!(dirs.iter().all(|d| d.join("vmcore").is_file() && d.join("report.json").is_file()));
    std::fs::remove_dir_all(&out).ok();
}

/// A file the scenario's control-socket driver left, one JSON value per line.
fn ctl_output(out: &Path, name: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}; outputs in {}", out.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {l:?}: {e}"))).collect()
}

#[test]
fn the_control_socket_answers_status_streams_events_and_rejects_malformed_requests() {
    let (o, events, _console, out) = run("wait-ctl");
    check_frame(&o, &events, 0, &out);
    let status = &ctl_output(&out, "ctl-status.json")[0];
    assert_eq!(
        (status["ok"].clone(), status["state"].clone(), status["vcpus"].clone()),
        (true.into(), "running".into(), 2.into())
    );
    assert_eq!(status["crashes"], 0);
    let malformed = &ctl_output(&out, "ctl-malformed.json")[0];
    assert_eq!(malformed["ok"], false);
    assert!(malformed["error"].as_str().unwrap().starts_with("bad request"), "{malformed}");
    assert_eq!(ctl_output(&out, "ctl-status-paused.json")[0]["state"], "paused");
    // The subscription streams the same records as events.jsonl, from the subscription on.
    let stream = ctl_output(&out, "ctl-subscribe.jsonl");
    assert_eq!(stream[0]["ok"], true);
    let progress: Vec<&Value> = stream[1..].iter().filter(|e| e["event"] == "dump_progress").collect();
    let stream: Vec<&Value> = stream[1..].iter().filter(|e| e["event"] != "dump_progress").collect();
    let streamed: Vec<&str> = stream.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let expected = ["vm_paused", "vm_resumed", "dump_started", "vmcore_written", "vm_reset"];
    assert_eq!(&streamed[..5], &expected, "{stream:?}");
    assert_eq!(streamed.last(), Some(&"vm_exited"), "{stream:?}");
    // dump: a host-side vmcore of the running VM, with progress, which then went on.
    let dump = &ctl_output(&out, "ctl-dump.json")[0];
    assert_eq!(dump["ok"], true, "{dump}");
    assert_eq!(dump["bytes"].as_u64(), Some(stream[3]["bytes"].as_u64().unwrap()));
    // Progress counts the guest memory written (before compression), up to its total.
    let total = progress.last().map(|p| p["total"].clone()).unwrap_or_default();
    assert!(!progress.is_empty() && progress.iter().all(|p| p["total"] == total), "{progress:?}");
    assert_eq!(progress.last().map(|p| &p["bytes"]), Some(&total), "{progress:?}");
    // reset: the guest booted again (its init said so a second time) and still answers.
    assert_eq!(ctl_output(&out, "ctl-reset.json")[0]["ok"], true);
    let console = o.console();
    assert_eq!(console.matches("CRASHTEST: wait: ready").count(), 2, "the guest booted twice");
    assert_eq!(ctl_output(&out, "ctl-status-reset.json")[0]["state"], "running");
    let logged: Vec<&Value> =
        events.iter().filter(|e| e["event"] == "vm_paused" || e["event"] == "vm_resumed").collect();
    assert_eq!(logged.len(), 2);
    assert_eq!(stream[0], logged[0], "the same record");
    assert_eq!(events.last().unwrap()["reason"], "shutdown (control socket)");
    std::fs::remove_dir_all(&out).ok();
}

/// `crashvmm ctl sysrq`: a break and a key on the serial console, which the guest's 8250 driver
/// takes for magic SysRq: `9` sets the console loglevel, `c` panics the kernel, whose crash
/// crashvmm notices the usual way (here the Hyper-V crash MSRs: the wait scenario loads no
/// pvpanic driver), after the `sysrq_sent` that triggered it.
#[test]
fn sysrq_keys_sent_from_the_host_reach_the_guest_kernel_and_its_crash_is_collected() {
    let (o, events, console, out) = run("wait-sysrq");
    check_frame(&o, &events, GUEST_PANICKED, &out);
    for (file, key) in [("ctl-sysrq-9.json", "9"), ("ctl-sysrq-c.json", "c")] {
        assert_eq!(ctl_output(&out, file), [serde_json::json!({"ok": true, "key": key})], "{file}");
    }
    let sent: Vec<&Value> = events.iter().filter(|e| e["event"] == "sysrq_sent").collect();
    assert_eq!(sent.iter().map(|e| e["key"].as_str().unwrap()).collect::<Vec<_>>(), ["9", "c"]);
    let loglevel = console.find("sysrq: Loglevel set to 9").expect("the guest took 9");
    let crash = console.find("sysrq: Trigger a crash").expect("the guest took c");
    assert!(loglevel < crash, "{}", tail(&console));
    let c = events.iter().rposition(|e| e["event"] == "sysrq_sent").unwrap();
    let detected = position(&events, "crash_detected").expect("crash_detected");
    assert!(c < detected, "order: {:?}", names(&events));
    assert_eq!(events[detected]["trigger"], "hv_crash");
    let report = events.iter().find(|e| e["event"] == "crash_report").expect("crash_report");
    assert_eq!(report["title"], "kernel panic: sysrq triggered crash");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn an_nmi_injected_through_the_control_socket_is_the_crash_trigger() {
    let (o, events, _console, out) = run("nmi");
    check_frame(&o, &events, GUEST_PANICKED, &out);
    assert_eq!(ctl_output(&out, "ctl-inject-nmi.json")[0]["ok"], true);
    let nmi = position(&events, "nmi_injected").expect("nmi_injected");
    let pvpanic = position(&events, "pvpanic").expect("pvpanic");
    assert!(nmi < pvpanic, "{:?}", names(&events));
    // The detection carries its cause's time: the pvpanic write the NMI's panic made.
    let detected = position(&events, "crash_detected").expect("crash_detected");
    assert_eq!(events[detected]["signal_ts"], events[pvpanic]["ts"], "{:?}", events[detected]);
    assert!(position(&events, "kdump_completed").is_some(), "{:?}", names(&events));
    let dirs = o.crash_dirs();
    assert_eq!(dirs.len(), 1);
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert_eq!(report["trigger"], "nmi_injection", "{report}");
    assert_eq!(report["vmcore"]["source"], "guest");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn a_hang_with_interrupts_off_is_detected_within_the_watchdog_period_and_broken_by_an_nmi() {
    let (o, events, console, out) = run("hang");
    assert!(console.contains("CRASHTEST: kdump: hanging with interrupts off"), "outputs in {}", out.display());
    check_frame(&o, &events, GUEST_PANICKED, &out);
    let hang = position(&events, "guest_hang").unwrap_or_else(|| panic!("no guest_hang: {:?}", names(&events)));
    // --watchdog 10s: reported after 10 s without progress, within a few seconds more.
    let seconds = events[hang]["seconds"].as_f64().unwrap();
    assert!((10.0..15.0).contains(&seconds), "stalled {seconds} s");
    let nmi = position(&events, "nmi_injected").expect("nmi_injected");
    let pvpanic = position(&events, "pvpanic").expect("pvpanic");
    assert!(hang < nmi && nmi < pvpanic, "{:?}", names(&events));
    assert!(position(&events, "kdump_completed").is_some(), "{:?}", names(&events));
    let dirs = o.crash_dirs();
    assert_eq!(dirs.len(), 1);
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    assert_eq!(report["trigger"], "guest_hang", "{report}");
    // Every vCPU spins in the test module's loop: the analysis names it for each, and the
    // signature is the hang's in it.
    let cpus = report["analysis"]["cpus"].as_array().unwrap_or_else(|| panic!("no analysis: {report}"));
    assert_eq!(cpus.len(), 2, "{report}");
    for c in cpus {
        assert_eq!(c["running"], "spin_irqs_off", "CPU {}: {c}; outputs in {}", c["cpu"], out.display());
    }
    assert_eq!(report["signature"]["title"], "hang in spin_irqs_off", "{report}");
    assert_eq!(report["signature"]["kind"], "hang", "{report}");
    std::fs::remove_dir_all(&out).ok();
}

/// The guest's kernel prints nothing on its console (`loglevel=0`): the report still has the
/// panic, the call trace and the signature id of the same crash with the console on (the
/// `kdump` scenario), read from the guest's memory.
#[test]
fn a_guest_with_its_console_off_gets_the_same_report_from_its_memory() {
    let (o, events, console, out) = run("kdump-quiet");
    check_frame(&o, &events, GUEST_PANICKED, &out);
    assert!(!console.contains("Kernel panic"), "the kernel printed on its console; outputs in {}", out.display());
    let dirs = o.crash_dirs();
    assert_eq!(dirs.len(), 1, "outputs in {}", out.display());
    let report: Value = serde_json::from_slice(&std::fs::read(dirs[0].join("report.json")).unwrap()).unwrap();
    let a = &report["analysis"];
    assert!(a["panic"]["message"].as_str().is_some_and(|m| m.contains("sysrq triggered crash")), "{report}");
    let cpu = a["panic"]["cpu"].as_u64().unwrap_or_else(|| panic!("{report}"));
    let stack = a["cpus"].as_array().unwrap().iter().find(|c| c["cpu"] == cpu).unwrap();
    let functions: Vec<&str> =
        stack["frames"].as_array().unwrap().iter().filter_map(|f| f["function"].as_str()).collect();
    assert!(functions.contains(&"sysrq_handle_crash"), "{functions:?}");
    let dmesg = std::fs::read_to_string(dirs[0].join("dmesg.txt")).unwrap();
    assert!(dmesg.contains("Call Trace:") && dmesg.contains("sysrq_handle_crash"), "the log has the call trace");
    // The same crash with the console on.
    let (o2, events2, _, out2) = run("kdump");
    check_frame(&o2, &events2, GUEST_PANICKED, &out2);
    let loud: Value = serde_json::from_slice(&std::fs::read(o2.crash_dirs()[0].join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["signature"]["id"], loud["signature"]["id"],
        "{} against {}",
        report["signature"], loud["signature"]
    );
    assert!(report["signature"]["title"].as_str().is_some_and(|t| t.contains("sysrq triggered crash")), "{report}");
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&out2).ok();
}

/// `KdumpFile` of `path`, with the open file for page reads.
/// crashvmm's level-31 kdump file of an ELF vmcore, LZO-compressed (the kdump crate's writer,
/// which crashvmm's `--vmcore-compress lzo` uses).
fn write_lzo_kdump(elf: &Path, out: &Path) -> kdump::KdumpSummary {
    let mem = kdump::elf::ElfVmcore::open(elf).unwrap_or_else(|e| panic!("{}: {e}", elf.display()));
    let info = mem.vmcoreinfo();
    let cls = kdump::classify(&mem, &mem.ram(), info.as_ref(), 31, &kdump::ClassifyOptions::default()).unwrap();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    let opts =
        kdump::KdumpOptions { compression: kdump::Compression::Lzo, threads: 0, on_progress: None, holds_data: None };
    let notes = kdump::NoteSet::new(&mem.notes, None);
    kdump::write_kdump(&mut w, &mem, &cls, info.as_ref(), &notes, &opts).unwrap()
}

fn open_kdump(path: &Path) -> (kdump::KdumpFile, std::fs::File) {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let k = kdump::KdumpFile::parse(&mut f)
        .unwrap_or_else(|e| panic!("{} is no kdump-compressed file: {e}", path.display()));
    (k, f)
}

/// Run `program args...` (under `timeout`, so a wedged tool fails the test); a program that is
/// not installed fails it too (`make deps` installs them all).
fn tool(program: &str, args: &[&std::ffi::OsStr], limit_s: u32) -> std::process::Output {
    let t = std::time::Instant::now();
    let out = std::process::Command::new("timeout")
        .arg(limit_s.to_string())
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert_ne!(out.status.code(), Some(127), "{program} is not installed (run `make deps`)");
    assert_ne!(out.status.code(), Some(124), "{program} ran past {limit_s} s");
    eprintln!("pagecache: {program} took {:.1} s", t.elapsed().as_secs_f64());
    out
}

/// The number after `key` in a console line such as `MemTotal: 737452 kB`.
fn kb_after(line: &str, key: &str) -> u64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("no {key} in {line:?}")) + key.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key}: {line:?}"))
}

/// The bar, on a guest whose memory is mostly page cache and user pages when it panics
/// (real Linux 6.1, in the test host where there is no hardware KVM):
/// - crashvmm's host-side vmcore is kdump-compressed at level 31 and excludes most pages;
/// - its bitmaps (bitmap1 and bitmap2) equal those `makedumpfile -d 31` keeps from crashvmm's
///   own unfiltered ELF of the same crash (taken through the control socket while the VM stays
///   paused), its pages read the same, and (written with `--vmcore-compress zlib`) it is no
///   larger than `makedumpfile -c`'s file;
/// - `makedumpfile --dump-dmesg` prints the panic from it;
/// - `crash` with the guest kernel's -dbg vmlinux opens it and `bt` shows the panicking task.
#[test]
fn a_production_like_crash_gives_a_kdump_file_that_matches_makedumpfile_and_opens_in_crash() {
    let setup = Setup::from_env();
    let vmlinux = setup.guest_vmlinux().unwrap_or_else(|e| panic!("{e}"));
    let release = setup.guest_kernel_release().unwrap();
    let (o, events, console, out) = run("pagecache");
    let fail = |what: &str| format!("{what}; outputs in {}", out.display());
    check_frame(&o, &events, 0, &out);
    assert_eq!(events.last().unwrap()["reason"], "shutdown (control socket)");

    // The guest filled its memory as it said.
    let line = |marker: &str| {
        console.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("{}", fail(&format!("no {marker:?}"))))
    };
    let mem = line("CRASHTEST: pagecache: memory ");
    let (total, cached, anon) = (kb_after(mem, "MemTotal:"), kb_after(mem, "Cached:"), kb_after(mem, "AnonPages:"));
    assert!(
        (cached + anon) * 10 >= total * 7,
        "{}",
        fail(&format!("page cache + user pages are not most of RAM: {mem}"))
    );
    let read = line("CRASHTEST: pagecache: read ");
    let file_bytes: u64 =
        read.split("read ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    let user_kb = kb_after(line("CRASHTEST: pagecache: user pages "), "user pages");

    // The crash's vmcore: kdump-compressed, level 31, most pages excluded, per class.
    let dirs = o.crash_dirs();
    let crash = dirs
        .iter()
        .find(|d| d.join("report.json").is_file())
        .unwrap_or_else(|| panic!("{}", fail("no crash directory")));
    let report: Value = serde_json::from_slice(&std::fs::read(crash.join("report.json")).unwrap()).unwrap();
    let vmcore = &report["vmcore"];
    assert_eq!(
        (
            vmcore["source"].as_str(),
            vmcore["format"].as_str(),
            vmcore["dump_level"].as_u64(),
            vmcore["compression"].as_str()
        ),
        (Some("host"), Some("kdump-compressed"), Some(31), Some("zlib")),
        "{report}"
    );
    let filter = &vmcore["filter"];
    let n = |k: &str| filter[k].as_u64().unwrap_or_else(|| panic!("filter.{k} missing: {filter}"));
    let total_pages = n("total_pages");
    // Zero pages keep a descriptor (the shared zero page, as makedumpfile writes them): they
    // count among the written pages, not the excluded ones.
    let excluded: u64 =
        ["excluded_cache", "excluded_cache_private", "excluded_user", "excluded_free", "excluded_other"]
            .iter()
            .map(|k| n(k))
            .sum();
    assert_eq!(excluded + n("written_pages"), total_pages, "{filter}");
    assert_eq!(n("written_pages") - n("excluded_zero"), n("data_pages"), "{filter}");
    assert!(excluded * 4 >= total_pages * 3, "fewer than 3/4 of the pages excluded: {filter}");
    assert!(n("excluded_cache") * 4096 * 10 >= file_bytes * 8, "the file's page cache was not excluded: {filter}");
    assert!(n("excluded_user") * 4 * 10 >= user_kb * 9, "the user pages were not excluded: {filter}");
    assert!(n("bytes_after") < n("bytes_before"), "{filter}");
    let ours = crash.join("vmcore");
    let ours_len = std::fs::metadata(&ours).unwrap().len();
    assert_eq!(ours_len, n("file_bytes"), "{filter}");
    let (k_ours, mut f_ours) = open_kdump(&ours);
    assert_eq!(k_ours.dump_level, 31);
    assert_eq!(k_ours.utsname[2], release, "the dump's kernel release");
    assert_eq!(k_ours.dumpable.count(), n("written_pages"), "bitmap2 against report.json");

    // The operator's unfiltered ELF of the same (paused) crash, through the control socket.
    let dump = &ctl_output(&out, "ctl-dump.json")[0];
    assert_eq!(dump["ok"], true, "{dump}");
    assert_eq!(ctl_output(&out, "ctl-shutdown.json")[0]["ok"], true);
    let shown = Path::new(dump["path"].as_str().unwrap());
    let dir = shown.parent().and_then(Path::file_name).unwrap();
    let elf = o.out.join("crashes").join(dir).join("vmcore");
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&elf).unwrap(), &mut magic).unwrap();
    assert_eq!(&magic, b"\x7fELF", "{} is an ELF", elf.display());
    let report_at = position(&events, "crash_report").unwrap();
    let started = events.iter().rposition(|e| e["event"] == "dump_started").unwrap();
    assert!(report_at < started, "the operator's dump comes after the crash report: {:?}", names(&events));

    // makedumpfile -d 31 on that ELF keeps exactly our pages.
    let mdf_c = out.join("mdf-c.kdump");
    let mdf_l = out.join("mdf-l.kdump");
    for (flag, path) in [("-c", &mdf_c), ("-l", &mdf_l)] {
        let _ = std::fs::remove_file(path);
        let r = tool(
            "makedumpfile",
            &[flag.as_ref(), "-d".as_ref(), "31".as_ref(), elf.as_os_str(), path.as_os_str()],
            600,
        );
        assert!(r.status.success(), "makedumpfile {flag} -d 31: {}", String::from_utf8_lossy(&r.stderr));
    }
    let (k_mdf, mut f_mdf) = open_kdump(&mdf_c);
    let (k_lzo, _) = open_kdump(&mdf_l);
    assert_eq!(k_ours.max_mapnr, k_mdf.max_mapnr);
    assert!(k_ours.valid == k_mdf.valid, "bitmap1 differs from makedumpfile's");
    let only_ours: Vec<u64> = k_ours.dumpable.iter_ones().filter(|&p| !k_mdf.dumpable.get(p)).collect();
    let only_mdf: Vec<u64> = k_mdf.dumpable.iter_ones().filter(|&p| !k_ours.dumpable.get(p)).collect();
    assert!(
        only_ours.is_empty() && only_mdf.is_empty(),
        "bitmap2 differs: {} PFNs only in ours (first {:x?}), {} only in makedumpfile -d 31's (first {:x?}); {}",
        only_ours.len(),
        &only_ours[..only_ours.len().min(16)],
        only_mdf.len(),
        &only_mdf[..only_mdf.len().min(16)],
        fail("")
    );
    assert!(k_lzo.dumpable == k_mdf.dumpable, "makedumpfile -l and -c keep the same pages");
    for pfn in k_ours.dumpable.iter_ones().step_by(61) {
        assert_eq!(
            k_ours.read_page(&mut f_ours, pfn).unwrap(),
            k_mdf.read_page(&mut f_mdf, pfn).unwrap(),
            "page {pfn:#x} differs from makedumpfile's"
        );
    }
    let mdf_len = std::fs::metadata(&mdf_c).unwrap().len();
    let lzo_len = std::fs::metadata(&mdf_l).unwrap().len();
    eprintln!(
        "pagecache: {} of {total_pages} pages written; ours {ours_len} bytes, makedumpfile -c {mdf_len}, -l {lzo_len}; ELF {}",
        k_ours.dumpable.count(),
        std::fs::metadata(&elf).unwrap().len()
    );
    assert!(ours_len <= mdf_len, "ours is {ours_len} bytes, makedumpfile -c -d 31's {mdf_len}");

    // `--vmcore-compress lzo` (crashvmm's own LZO1X compressor): the same filter written with
    // it from the same ELF; makedumpfile decodes every page of it with liblzo2 (re-filtering it
    // into a zlib file) and each equals ours; no larger than makedumpfile -l's.
    let ours_lzo = out.join("ours-lzo.kdump");
    let lzo_summary = write_lzo_kdump(&elf, &ours_lzo);
    let (k_ours_lzo, _) = open_kdump(&ours_lzo);
    assert!(k_ours_lzo.dumpable == k_ours.dumpable, "the LZO file keeps other pages than the zlib one");
    let ours_lzo_len = std::fs::metadata(&ours_lzo).unwrap().len();
    assert!(ours_lzo_len <= lzo_len, "ours with LZO is {ours_lzo_len} bytes, makedumpfile -l -d 31's {lzo_len}");
    let relzo = out.join("ours-lzo-refiltered.kdump");
    let _ = std::fs::remove_file(&relzo);
    let r = tool(
        "makedumpfile",
        &["-c".as_ref(), "-d".as_ref(), "31".as_ref(), ours_lzo.as_os_str(), relzo.as_os_str()],
        600,
    );
    assert!(r.status.success(), "makedumpfile -c on our LZO file: {}", String::from_utf8_lossy(&r.stderr));
    let (k_re, mut f_re) = open_kdump(&relzo);
    assert!(k_re.dumpable == k_ours.dumpable, "makedumpfile kept other pages of our LZO file");
    for pfn in k_ours.dumpable.iter_ones() {
        assert_eq!(
            k_re.read_page(&mut f_re, pfn).unwrap(),
            k_ours.read_page(&mut f_ours, pfn).unwrap(),
            "page {pfn:#x} of our LZO file, as liblzo2 decoded it, differs"
        );
    }
    eprintln!(
        "pagecache: ours with LZO {ours_lzo_len} bytes in {:.2} s ({} pages compressed), makedumpfile -l {lzo_len}",
        lzo_summary.duration.as_secs_f64(),
        lzo_summary.compressed_pages
    );

    // makedumpfile reads the crashed kernel's log out of ours.
    let dmesg = out.join("dmesg.txt");
    let _ = std::fs::remove_file(&dmesg);
    let r = tool("makedumpfile", &["--dump-dmesg".as_ref(), ours.as_os_str(), dmesg.as_os_str()], 300);
    assert!(r.status.success(), "makedumpfile --dump-dmesg: {}", String::from_utf8_lossy(&r.stderr));
    let log = String::from_utf8_lossy(&std::fs::read(&dmesg).unwrap()).into_owned();
    assert!(
        log.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "no panic in the log from our file:\n{}",
        &log[log.len().saturating_sub(2000)..]
    );

    // The analysis at the crash read the same log from guest memory, and the stack of the vCPU
    // that panicked (its registers as crashvmm stopped it) is crash's bt.
    check_analysis(crash, &ours, &dmesg, &out, "sysrq triggered crash", &["sysrq_handle_crash"]);

    // crash opens it with the -dbg vmlinux; bt is the panicking task's.
    let cmds = out.join("crash-commands");
    std::fs::write(&cmds, "bt\nsys\nq\n").unwrap();
    let r =
        tool("crash", &["-s".as_ref(), vmlinux.as_os_str(), ours.as_os_str(), "-i".as_ref(), cmds.as_os_str()], 600);
    let text = String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
    std::fs::write(out.join("crash.txt"), &text).unwrap();
    assert!(r.status.success(), "crash failed ({}):\n{text}", r.status);
    for want in [
        "PID:",
        "COMMAND: \"sh\"",
        " panic at ",
        " sysrq_handle_crash at ",
        " write_sysrq_trigger at ",
        "PANIC: \"Kernel panic - not syncing: sysrq triggered crash\"",
        &format!("RELEASE: {release}"),
    ] {
        assert!(text.contains(want), "crash's bt/sys lack {want:?}:\n{text}");
    }
    std::fs::remove_dir_all(&out).ok();
}

/// A live dump of a running Linux guest: the guest paused for its snapshot only, `crash` opens
/// the kdump-format vmcore (`sys` and `ps` of the running kernel), and the guest went on and
/// powered off by itself.
#[test]
fn a_live_dump_of_a_running_guest_opens_in_crash_and_the_guest_powers_off_cleanly() {
    let (o, events, console, out) = run("live");
    check_frame(&o, &events, 0, &out);
    assert_eq!(events.last().unwrap()["reason"], "poweroff", "the guest powered off by itself");
    let dump = &ctl_output(&out, "ctl-dump-live.json")[0];
    assert_eq!((dump["ok"].as_bool(), dump["live"].as_bool()), (Some(true), Some(true)), "{dump}");
    let pause_us = dump["pause_us"].as_u64().unwrap();
    let started = events.iter().find(|e| e["event"] == "dump_started").unwrap();
    assert_eq!(started["pause_us"].as_u64(), Some(pause_us));
    // The test host's kernel decides (`--live-dump-snapshot auto`): Debian 12's 6.1 has no
    // PAGEMAP_SCAN, so fork() there; uffd from 6.7.
    let method = dump["snapshot"].as_str().unwrap_or_default();
    assert!(["uffd", "fork"].contains(&method), "{dump}");
    assert_eq!(started["snapshot"], method);
    eprintln!("live: snapshot by {method}, guest paused {pause_us} us");
    let ready = console.find("CRASHTEST: live: ready").unwrap();
    assert!(console[ready..].contains("CRASHTEST: live: still running"), "the guest ran on after the dump");
    // The vmcore, as seen from here (the path in the answer is the test host's).
    let shown = Path::new(dump["path"].as_str().unwrap());
    let vmcore = o.out.join("crashes").join(shown.parent().and_then(Path::file_name).unwrap()).join("vmcore");
    let mut f = std::fs::File::open(&vmcore).unwrap_or_else(|e| panic!("{}: {e}", vmcore.display()));
    let k = kdump::KdumpFile::parse(&mut f).expect("a kdump-compressed vmcore");
    assert!(k.dumpable.count() < k.valid.count() / 2, "filtered: {} of {} pages", k.dumpable.count(), k.valid.count());
    let setup = integration::Setup::from_env();
    let vmlinux = setup.guest_vmlinux().expect("the guest's vmlinux (make images)");
    let cmds = out.join("crash-commands");
    std::fs::write(&cmds, "sys\nps\nq\n").unwrap();
    let r =
        tool("crash", &["-s".as_ref(), vmlinux.as_os_str(), vmcore.as_os_str(), "-i".as_ref(), cmds.as_os_str()], 600);
    let text = String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "crash failed ({}):\n{text}", r.status);
    for want in ["RELEASE: 6.", "swapper"] {
        assert!(text.contains(want), "crash's sys/ps lack {want:?}:\n{text}");
    }
    std::fs::remove_dir_all(&out).ok();
}
