//! `crashvmm test` end to end: the smoke suite (suites/smoke.toml) on Debian's cloud kernel,
//! its JUnit file read back by a JUnit parser and its summary by its type; and suite files
//! that must fail at once, before anything runs.

use std::path::PathBuf;
use std::process::Command;

use crash_suite::results::{Status, Summary};
use integration::Setup;

fn root() -> PathBuf {
    Setup::from_env().root
}

/// `crashvmm test ARGS` from the repository root: exit code, stdout, stderr.
fn crashvmm_test(args: &[&str]) -> (i32, String, String) {
    let setup = Setup::from_env();
    let out = Command::new(&setup.binary)
        .arg("test")
        .args(args)
        .current_dir(&setup.root)
        .output()
        .unwrap_or_else(|e| panic!("running {} (make build): {e}", setup.binary.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cache() -> String {
    root().join("build/cache").display().to_string()
}

#[test]
fn the_smoke_suite_passes_and_its_junit_file_reads_back() {
    let out = root().join("build/suite-smoke");
    let _ = std::fs::remove_dir_all(&out);
    let out_s = out.display().to_string();
    let (code, stdout, stderr) = crashvmm_test(&["suites/smoke.toml", "--out", &out_s, "--cache", &cache()]);
    let summary: Summary = serde_json::from_slice(
        &std::fs::read(out.join("summary.json")).unwrap_or_else(|e| panic!("summary.json: {e}\n{stderr}")),
    )
    .expect("summary.json reads back as the type it was written from");
    let failures: Vec<String> = summary
        .cases
        .iter()
        .filter(|c| c.status != Status::Passed)
        .map(|c| {
            format!(
                "{}: {:?} {} (outputs in {})",
                c.name,
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.out_dir.display()
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}\n{stdout}{stderr}", failures.join("\n"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!((summary.passed, summary.failed, summary.skipped), (5, 0, 0), "{stdout}");
    assert!(stdout.contains("smoke: 5 passed, 0 failed, 0 skipped"), "{stdout}");

    // The JUnit file, read back by a JUnit parser: a suite per case, a test per expectation,
    // every one a success.
    let xml = std::fs::read(out.join("junit.xml")).unwrap();
    let junit = junit_parser::from_reader(std::io::Cursor::new(xml)).expect("junit.xml parses as JUnit");
    assert_eq!(junit.suites.len(), 5);
    for suite in &junit.suites {
        let names: Vec<&str> = suite.cases.iter().map(|c| c.original_name.as_str()).collect();
        for want in
            ["trigger set off", "crashvmm exit code", "crash detected", "outcome", "vmcore readable", "signature"]
        {
            assert!(names.contains(&want), "{}: no {want:?} in {names:?}", suite.name);
        }
        assert!(suite.cases.iter().all(|c| c.status.is_success()), "{}: {:?}", suite.name, suite.cases);
        assert_eq!(suite.properties.hashmap.get("kernel").map(String::as_str), Some("cloud"));
    }

    // What each case did and saw.
    let case = |name: &str| summary.cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"));
    let kdump = case("sysrq-c guest-kdump");
    assert_eq!(kdump.observed.panic_path.last().map(String::as_str), Some("crash_kernel_started"));
    assert!(kdump.checks.iter().any(|c| c.name == "panic path" && c.passed));
    // Plain KVM (no Hyper-V, crash_kexec_post_notifiers=0): no pvpanic; the crash is seen at
    // the crash kernel's first write to the crash disk, and its kdump collected.
    let plain = case("sysrq-c guest-kdump hyperv-off");
    assert_eq!(plain.observed.crash_trigger.as_deref(), Some("crash_kernel"));
    assert_eq!(plain.observed.panic_path, ["crash_kernel_started"]);
    let events = std::fs::read_to_string(plain.out_dir.join("events.jsonl")).unwrap();
    assert!(!events.contains("\"event\":\"pvpanic\""), "the kernel kexec'd before its notifiers");
    let written = events.find("\"event\":\"crash_disk_written\"").expect("a crash_disk_written event");
    let collected = events.find("\"event\":\"kdump_completed\"").expect("a kdump_completed event");
    assert!(written < collected, "the write came before the collection");
    let serial = case("serial-sysrq host-dump");
    let ctl = std::fs::read_to_string(serial.out_dir.join("ctl-sysrq.json")).unwrap_or_default();
    assert!(ctl.contains("\"ok\":true"), "the host's sysrq was answered: {ctl}");
    let events = std::fs::read_to_string(serial.out_dir.join("events.jsonl")).unwrap();
    let sent = events.find("\"event\":\"sysrq_sent\"").expect("a sysrq_sent event");
    let panicked = events.find("\"event\":\"pvpanic\"").expect("a pvpanic event");
    assert!(sent < panicked, "the break and key came before the panic");
    for c in &summary.cases {
        let vmcore = c.observed.vmcore.as_ref().unwrap_or_else(|| panic!("{}: no vmcore", c.name));
        assert!(vmcore.is_file(), "{}: {}", c.name, vmcore.display());
        let dmesg = std::fs::read_to_string(c.out_dir.join("vmcore-dmesg.txt")).unwrap_or_default();
        assert!(dmesg.contains("Kernel panic - not syncing"), "{}: the vmcore's kernel log", c.name);
    }
}

/// A suite file `text` in a new directory, kept until the returned guard drops.
fn suite_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// `crashvmm test` on `text` fails at once: exit code 2, one line on stderr with `want`, and
/// no results that could be read as a pass.
fn fails_at_once(text: &str, want: &str) {
    let (dir, path) = suite_file(text);
    let out = dir.path().join("out");
    let (code, stdout, stderr) =
        crashvmm_test(&[path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--cache", &cache()]);
    assert_eq!(code, 2, "{text}\n{stdout}{stderr}");
    let last: Vec<&str> = stderr.lines().filter(|l| l.starts_with("crashvmm: error:")).collect();
    assert_eq!(last.len(), 1, "{stderr}");
    assert!(last[0].contains(want), "{:?} lacks {want:?}", last[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.join("summary.json").exists() && !out.join("junit.xml").exists(), "nothing half-run is reported");
}

const CLOUD: &str = "[kernel]\npackage = \"linux-image-cloud-amd64\"\n";

#[test]
fn a_bad_suite_file_fails_at_once_in_one_line() {
    fails_at_once(&format!("{CLOUD}[[case]]\nname = \"x\"\ntrigger = \"explode\"\n"), "unknown trigger 'explode'");
    fails_at_once(&format!("{CLOUD}[matrix]\ntrigger = \"oops\"\n"), "[matrix] trigger must be a list");
    fails_at_once(
        &format!("{CLOUD}[matrix]\ntrigger = [\"oops\"]\nflavour = [\"x\"]\n"),
        "[matrix] has no axis 'flavour'",
    );
    fails_at_once(
        "[kernel]\nbzimage = \"no-such-bzImage\"\nmodules = \"/tmp\"\n[[case]]\nname = \"x\"\ntrigger = \"oops\"\n",
        "no-such-bzImage does not exist",
    );
    fails_at_once(
        "[kernel]\npackage = \"linux-image-no-such-flavour\"\n[[case]]\nname = \"x\"\ntrigger = \"oops\"\n",
        "linux-image-no-such-flavour",
    );
}

/// The guest kernel's extracted package (`make images`), whose modules a made-up kernel
/// without kexec borrows.
fn extracted_guest_kernel() -> (PathBuf, PathBuf) {
    let release = Setup::from_env().guest_kernel_release().expect("make images");
    let extract = root().join("build/cache/extract");
    for entry in std::fs::read_dir(&extract).expect("build/cache/extract (make images)") {
        let dir = entry.unwrap().path();
        let modules = dir.join("lib/modules").join(&release);
        let bzimage = dir.join("boot").join(format!("vmlinuz-{release}"));
        if modules.is_dir() && bzimage.is_file() {
            return (bzimage, modules);
        }
    }
    panic!("no extracted kernel {release} under {}", extract.display());
}

#[test]
fn a_kernel_without_kexec_fails_a_guest_kdump_case_at_once() {
    let (bzimage, modules) = extracted_guest_kernel();
    let (dir, _) = suite_file("");
    // A build tree whose .config has no kexec: the image build records it, and `crashvmm test`
    // refuses the case that needs a crash kernel before booting anything.
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let config = std::fs::read_to_string(Setup::from_env().images.join("guest/config")).unwrap();
    let config: String = config
        .lines()
        .map(|l| if l.starts_with("CONFIG_KEXEC") || l.starts_with("CONFIG_CRASH_DUMP") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(tree.join(".config"), config + "\n# CONFIG_KEXEC is not set\n").unwrap();
    let text = format!(
        "[kernel]\nname = \"nokexec\"\nbzimage = {:?}\nmodules = {:?}\nbuild_tree = {:?}\n[[case]]\nname = \"x\"\ntrigger = \"sysrq-c\"\ndump = \"guest\"\n",
        bzimage.display().to_string(),
        modules.display().to_string(),
        tree.display().to_string()
    );
    fails_at_once(&text, "kernel nokexec cannot kexec into a crash kernel");
}
