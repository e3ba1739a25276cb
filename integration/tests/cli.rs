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
