//! Bad input to `crashvmm run` gets a one-line error and a non-zero exit, never a panic.

use std::path::PathBuf;
use std::process::Command;

use integration::Setup;

fn crashvmm() -> PathBuf {
    let bin = Setup::from_env().binary;
    assert!(bin.is_file(), "{} is missing: run `make build` (or set CRASHVMM_BIN)", bin.display());
    bin
}

fn guest_kernel() -> PathBuf {
    let k = Setup::from_env().images.join("guest/vmlinuz");
    assert!(k.is_file(), "{} is missing: run `make images`", k.display());
    k
}

/// Run `crashvmm run ARGS`; return its exit code and stderr, checking the error is one line.
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(crashvmm()).arg("run").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked at"), "crashvmm panicked: {stderr}");
    (out.status.code().expect("exited normally"), stderr)
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, stderr) = run(args);
    assert_eq!(code, 1, "exit code for {args:?}; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected for {args:?}, got: {stderr}");
    assert!(lines[0].starts_with("crashvmm: error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "{:?} does not mention {needle:?}", lines[0]);
}

#[test]
fn missing_kernel() {
    assert_one_line_error(&["--kernel", "/nonexistent", "--memory", "256M"], "cannot read kernel /nonexistent");
}

#[test]
fn kernel_that_is_not_a_bzimage() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), vec![0x7fu8; 4096]).unwrap();
    assert_one_line_error(&["--kernel", f.path().to_str().unwrap()], "is neither a bzImage");
    std::fs::write(f.path(), b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x03\0").unwrap();
    assert_one_line_error(&["--kernel", f.path().to_str().unwrap()], "not a 64-bit little-endian x86-64");
    assert_one_line_error(&["--kernel", "/"], "not a regular file");
}

#[test]
fn memory_out_of_range_or_malformed() {
    let k = guest_kernel();
    let k = k.to_str().unwrap();
    assert_one_line_error(&["--kernel", k, "--memory", "1M"], "below the minimum");
    assert_one_line_error(&["--kernel", k, "--memory", "100T"], "more than this host has");
    assert_one_line_error(&["--kernel", k, "--memory", "lots"], "invalid memory size 'lots'");
}

#[test]
fn zero_vcpus() {
    assert_one_line_error(
        &["--kernel", guest_kernel().to_str().unwrap(), "--vcpus", "0"],
        "--vcpus must be between 1 and 255, got 0",
    );
}

#[test]
fn unreadable_initrd() {
    let k = guest_kernel();
    let k = k.to_str().unwrap();
    assert_one_line_error(
        &["--kernel", k, "--initrd", "/nonexistent/initrd"],
        "cannot read initrd /nonexistent/initrd",
    );
    assert_one_line_error(&["--kernel", k, "--initrd", "/"], "not a regular file");
}

#[test]
fn no_kvm_device() {
    assert_one_line_error(
        &["--kernel", guest_kernel().to_str().unwrap(), "--kvm-device", "/nonexistent/kvm", "--console", "null"],
        "cannot open /nonexistent/kvm",
    );
}

#[test]
fn bad_console_and_unknown_options_are_usage_errors() {
    let (code, stderr) = run(&["--kernel", "/k", "--console", "tty"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("stdio, file:PATH, null"), "{stderr}");
    let (code, _) = run(&["--kernel", "/k", "--frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn unwritable_event_log() {
    assert_one_line_error(
        &["--kernel", guest_kernel().to_str().unwrap(), "--events", "/nonexistent/dir/events.jsonl"],
        "cannot create event log /nonexistent/dir/events.jsonl",
    );
}

#[test]
fn hyperv_and_pvpanic_switches_are_validated() {
    let k = guest_kernel();
    let k = k.to_str().unwrap();
    let (code, stderr) = run(&["--kernel", k, "--hyperv", "maybe"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not on or off"), "{stderr}");
    let (code, stderr) = run(&["--kernel", k, "--pvpanic-events", "panicked,bogus"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown pvpanic event 'bogus'"), "{stderr}");
    let (code, stderr) = run(&["--kernel", k, "--pvpanic-events", "0x10"]);
    assert_eq!(code, 2, "{stderr}");
}

/// `crashvmm deliver` with a spool that holds a corrupt job file and a job whose crash
/// directory is gone: both are set aside in `failed/` with the reason on stderr, and the exit
/// code says not everything was delivered.
#[test]
fn deliver_sets_aside_corrupt_and_undeliverable_jobs_and_exits_non_zero() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let crashes = work.path().join("crashes");
    let jobs = crashes.join(".upload/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    for d in [crashes.join(".upload"), jobs.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let corrupt = jobs.join("00000000000000001-x.json");
    std::fs::write(&corrupt, "{ not json").unwrap();
    let gone = jobs.join("00000000000000002-gone.json");
    let job = r#"{"id":"00000000000000002-gone","dir":"gone","name":"gone","signature_id":"s","host":"h",
        "enqueued_at":"2026-11-25T13:01:05Z"}"#;
    std::fs::write(&gone, job).unwrap();
    for f in [&corrupt, &gone] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let store = work.path().join("store");
    let out = Command::new(crashvmm())
        .args(["deliver", "--wait", "60s", "--upload", &format!("file://{}", store.display()), "--crash-dir"])
        .arg(&crashes)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked at"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("00000000000000001-x.json") && stderr.contains("not a job file"), "{stderr}");
    assert!(stderr.contains("crashes/gone") && stderr.contains("not retried"), "{stderr}");
    assert_eq!(std::fs::read_dir(&jobs).unwrap().count(), 0, "{stderr}");
    for name in ["00000000000000001-x.json", "00000000000000002-gone.json"] {
        assert!(crashes.join(".upload/failed").join(name).is_file(), "{name} not set aside: {stderr}");
    }
}

/// `crashvmm crashes` on a store with one unreadable report.json lists the rest, with one
/// warning naming it; a command rejected after its `file://` URL was parsed created nothing.
#[test]
fn crashes_skips_a_bad_report_json_and_parsing_a_file_url_creates_nothing() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for (sig, text) in [("aaaaaaaaaaaaaaaa", r#"{"signature":{"title":"BUG: a"}}"#), ("bbbbbbbbbbbbbbbb", "{ not json")]
    {
        let d = store.join(format!("{sig}/h/d"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("report.json"), text).unwrap();
    }
    let out = Command::new(crashvmm())
        .args(["crashes", &format!("file://{}", store.display()), "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    assert_eq!(groups[0]["signature_id"], "aaaaaaaaaaaaaaaa");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("bbbbbbbbbbbbbbbb/h/d/report.json"), "{stderr}");

    let new = work.path().join("new/store");
    let out = Command::new(crashvmm())
        .args(["deliver", "--upload", &format!("file://{}", new.display()), "--no-such-option"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!work.path().join("new").exists(), "parsing the URL created it");
}
