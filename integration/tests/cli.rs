//! Bad input to `crashvmm run` gets a one-line error and a non-zero exit, never a panic; the
//! other commands print guest text safely and end quietly when their reader goes away.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    assert_one_line_error_code(args, 1, needle);
}

fn assert_one_line_error_code(args: &[&str], expected: i32, needle: &str) {
    let (code, stderr) = run(args);
    assert_eq!(code, expected, "exit code for {args:?}; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected for {args:?}, got: {stderr}");
    let prefix = if expected == 2 { "error: " } else { "crashvmm: error: " };
    assert!(lines[0].starts_with(prefix), "{}", lines[0]);
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
    // The crash directory is made before KVM is opened: not in the working directory.
    let dir = tempfile::tempdir().unwrap();
    let crash_dir = dir.path().join("crashes");
    let k = guest_kernel();
    assert_one_line_error(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--kvm-device",
            "/nonexistent/kvm",
            "--console",
            "null",
            "--crash-dir",
            crash_dir.to_str().unwrap(),
        ],
        "cannot open /nonexistent/kvm",
    );
    assert!(crash_dir.is_dir());
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
    let dir = tempfile::tempdir().unwrap();
    let crash_dir = dir.path().join("crashes");
    assert_one_line_error(
        &[
            "--kernel",
            guest_kernel().to_str().unwrap(),
            "--events",
            "/nonexistent/dir/events.jsonl",
            "--crash-dir",
            crash_dir.to_str().unwrap(),
        ],
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

/// The test guest, copied into `dir` (so that a test may see whether it was overwritten); its
/// `boot` scenario powers off at once.
fn test_guest_in(dir: &Path) -> PathBuf {
    let elf = Setup::from_env().images.join("testguest/testguest.elf");
    assert!(elf.is_file(), "{} is missing: run `make testguest`", elf.display());
    let k = dir.join("testguest.elf");
    std::fs::copy(&elf, &k).unwrap();
    k
}

/// Arguments that boot the test guest to a power-off (`--console` and `--crash-dir` left to the
/// test).
fn boot_args(kernel: &Path) -> Vec<String> {
    ["--kernel", kernel.to_str().unwrap(), "--memory", "64M", "--cmdline", "testguest.scenario=boot"]
        .map(String::from)
        .to_vec()
}

fn with<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().map(String::as_str).chain(more.iter().copied()).collect()
}

#[test]
fn crash_directory_that_cannot_take_a_crash_is_refused_before_boot() {
    let dir = tempfile::tempdir().unwrap();
    let k = test_guest_in(dir.path());
    let mut base = boot_args(&k);
    base.extend(["--console".into(), "null".into()]);
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let sub = file.join("sub");
    for (crash_dir, needle) in [
        (file.to_str().unwrap(), "is not a directory"),
        (sub.to_str().unwrap(), "cannot be created"),
        ("/proc/1", "crash directory /proc/1 is not writable"),
    ] {
        assert_one_line_error(&with(&base, &["--crash-dir", crash_dir]), needle);
    }
    // One that does not exist yet is made.
    let (code, stderr) = run(&with(&base, &["--crash-dir", dir.path().join("crashes").to_str().unwrap()]));
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.path().join("crashes").is_dir());
}

#[test]
fn outputs_never_overwrite_inputs_or_files_that_are_not_crashvmms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = test_guest_in(d);
    let kernel_bytes = std::fs::read(&k).unwrap();
    let mut base = boot_args(&k);
    base.extend(["--crash-dir".into(), d.join("crashes").display().to_string()]);
    let mut null = base.clone();
    null.extend(["--console".into(), "null".into()]);
    let ks = k.to_str().unwrap();
    let data = d.join("d.img");
    std::fs::write(&data, vec![0xa5u8; 1 << 20]).unwrap();
    let ds = data.to_str().unwrap();
    let link = d.join("kernel-link");
    std::os::unix::fs::symlink(&k, &link).unwrap();
    let notes = d.join("notes.txt");
    std::fs::write(&notes, "the operator's notes\n").unwrap();
    let ns = notes.to_str().unwrap();
    let crash_disk_kernel = format!("path={ks},size=1M");
    let crash_disk_data = format!("path={ds},size=1M");
    let crash_disk_notes = format!("path={ns},size=1M");
    let (disk_arg, console_arg) = (format!("path={ds}"), format!("file:{ns}"));
    let cases: [(Vec<&str>, &str); 7] = [
        (vec!["--crash-disk", &crash_disk_kernel], "is the same file as --kernel"),
        (vec!["--disk", &disk_arg, "--crash-disk", &crash_disk_data], "is the same file as --disk"),
        (vec!["--events", link.to_str().unwrap(), "--overwrite"], "is the same file as --kernel"),
        (vec!["--console-log", ks], "is the same file as --kernel"),
        (vec!["--events", ns], "give --overwrite"),
        (vec!["--crash-disk", &crash_disk_notes], "give --overwrite"),
        (vec!["--console", &console_arg, "--console-log", ns, "--overwrite"], "are the same file"),
    ];
    for (more, needle) in cases {
        let console = if more.contains(&"--console") { &[][..] } else { &["--console", "null"][..] };
        assert_one_line_error(&with(&base, &[console, &more].concat()), needle);
    }
    assert_eq!(std::fs::read(&k).unwrap(), kernel_bytes, "the kernel is intact");
    assert_eq!(std::fs::read(&data).unwrap(), vec![0xa5u8; 1 << 20], "the data disk is intact");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "the operator's notes\n");
    // crashvmm's own outputs are overwritten by the next run; another file with --overwrite.
    let events = d.join("events.jsonl");
    let console = d.join("console.log");
    let crash_disk = format!("path={},size=1M", d.join("crash.img").display());
    let own = with(
        &null,
        &[
            "--events",
            events.to_str().unwrap(),
            "--console-log",
            console.to_str().unwrap(),
            "--crash-disk",
            &crash_disk,
        ],
    );
    for _ in 0..2 {
        let (code, stderr) = run(&own);
        assert_eq!(code, 0, "{stderr}");
    }
    assert!(std::fs::read_to_string(&events).unwrap().contains("\"event\":\"vm_exited\""));
    let (code, stderr) = run(&with(&null, &["--events", ns, "--overwrite"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(std::fs::read_to_string(&notes).unwrap().contains("\"event\":\"vm_started\""));
}

#[test]
fn zero_periods_and_rates_are_usage_errors() {
    let k = guest_kernel();
    let k = k.to_str().unwrap();
    for (option, value) in [("--watchdog", "0s"), ("--kdump-timeout", "0s"), ("--upload-max-rate", "0")] {
        assert_one_line_error_code(&["--kernel", k, option, value], 2, "must be more than 0");
    }
}

#[test]
fn memory_that_is_not_whole_pages() {
    let k = guest_kernel();
    assert_one_line_error(&["--kernel", k.to_str().unwrap(), "--memory", "67109376"], "not a multiple of 4 KiB");
}

#[test]
fn crash_disk_too_large_for_a_file_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("crash.img");
    let arg = format!("path={},size=8E", disk.display());
    let k = guest_kernel();
    assert_one_line_error_code(
        &["--kernel", k.to_str().unwrap(), "--crash-disk", &arg],
        2,
        "more than a file can hold",
    );
    assert!(!disk.exists(), "no file is left");
}

/// `crashvmm report` on a report whose objects lack keys or are of other types shows what is
/// there, and the guest's text reaches the terminal escaped.
#[test]
fn report_of_any_content_never_panics_and_escapes_guest_text() {
    for report in [
        r#"{"pvpanic":{},"signature":{},"vmbus":{},"vmcore":{}}"#,
        r#"{"pvpanic":1,"signature":"x","vmbus":[],"vmcore":true,"guest":3}"#,
        "[1,2]",
        "null",
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.json"), report).unwrap();
        let out = Command::new(crashvmm()).arg("report").arg(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{report}: {stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("crash report "), "{report}");
    }
    let dir = tempfile::tempdir().unwrap();
    let report = r#"{"trigger":"pvpanic","signature":{"id":"ab","title":"BUG: \u001b]0;owned\u0007"},
        "hyperv_crash":{"message":"Kernel panic - not syncing: \u001b[2J\u009b31m\r\n"}}"#;
    std::fs::write(dir.path().join("report.json"), report).unwrap();
    let out = Command::new(crashvmm()).arg("report").arg(dir.path()).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains(['\u{1b}', '\u{7}', '\u{9b}', '\r']), "{text:?}");
    assert!(text.contains(r"BUG: \u{1b}]0;owned\u{7}"), "{text}");
    assert!(text.contains(r"Kernel panic - not syncing: \u{1b}[2J\u{9b}31m"), "{text}");
}

/// `crashvmm crashes` prints a store's titles, hosts and kernel releases escaped.
#[test]
fn crashes_escapes_what_the_store_holds() {
    let store = tempfile::tempdir().unwrap();
    let crash = store.path().join("0123456789abcdef/host1/20261125T000000Z-001");
    std::fs::create_dir_all(&crash).unwrap();
    let report = r#"{"signature":{"title":"BUG: \u001b[2Jgone"}}"#;
    std::fs::write(crash.join("report.json"), report).unwrap();
    let release = Some("6.1\u{1b}]0;x\u{7}");
    index_entry(store.path(), "0123456789abcdef", "20261125T000000Z-001", "host1", release);
    let url = format!("file://{}", store.path().display());
    for args in [vec!["crashes", &url], vec!["crashes", &url, "--signature", "0123456789abcdef"]] {
        let out = Command::new(crashvmm()).args(&args).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains(['\u{1b}', '\u{7}']), "{text:?}");
        assert!(text.contains(r"BUG: \u{1b}[2Jgone"), "{text}");
        assert!(text.contains(r"6.1\u{1b}]0;x\u{7}"), "{text}");
    }
}

/// A control socket that accepts connections and hands each to `serve`.
fn fake_server(serve: fn(std::os::unix::net::UnixStream)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    (dir, path)
}

/// `crashvmm ctl subscribe | head -1`: the reader goes away, crashvmm ends quietly.
#[test]
fn ctl_subscribe_into_a_closed_pipe_ends_quietly() {
    let (_dir, socket) = fake_server(|conn| {
        let mut request = String::new();
        BufReader::new(&conn).read_line(&mut request).unwrap();
        let mut conn = &conn;
        let _ = conn.write_all(b"{\"ok\":true}\n");
        // Events until the client is gone.
        while conn.write_all(b"{\"ts\":\"t\",\"event\":\"vm_paused\"}\n").is_ok() {}
    });
    let mut child = Command::new(crashvmm())
        .args(["ctl", "--api-socket", socket.to_str().unwrap(), "subscribe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, "{\"ok\":true}\n");
    // The reader was dropped: the pipe is closed.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

/// A server that accepts and never answers: `ctl` gives up after its timeout, with one line.
#[test]
fn ctl_gives_up_on_a_server_that_never_answers() {
    let (_dir, socket) = fake_server(|conn| {
        let mut request = String::new();
        let _ = BufReader::new(&conn).read_line(&mut request);
        // Hold the connection open, never answering, until the client leaves.
        let _ = std::io::Read::read(&mut &conn, &mut [0u8; 1]);
    });
    let out = Command::new(crashvmm())
        .args(["ctl", "--api-socket", socket.to_str().unwrap(), "--timeout", "1s", "status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no answer from the control socket") && stderr.contains("within 1s"), "{stderr}");
    let out = Command::new(crashvmm())
        .args(["ctl", "--api-socket", socket.to_str().unwrap(), "--timeout", "0s", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
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

/// A crash directory's entry in a `file://` store's index, as the uploader puts it.
fn index_entry(store: &Path, sig: &str, dir: &str, host: &str, release: Option<&str>) {
    let entry = store.join(delivery::index::crash_key(sig, dir, host, release));
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    std::fs::write(entry, "").unwrap();
}

/// `crashvmm crashes` on a store with one unreadable report.json lists its group without a
/// title, with one warning naming it; a command rejected after its `file://` URL was parsed
/// created nothing.
#[test]
fn crashes_lists_a_group_whose_report_json_is_bad_without_a_title_and_parsing_a_file_url_creates_nothing() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    for (sig, text) in [("aaaaaaaaaaaaaaaa", r#"{"signature":{"title":"BUG: a"}}"#), ("bbbbbbbbbbbbbbbb", "{ not json")]
    {
        let d = store.join(format!("{sig}/h/20261125T000000Z-001"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("report.json"), text).unwrap();
        index_entry(&store, sig, "20261125T000000Z-001", "h", None);
    }
    let out = Command::new(crashvmm())
        .args(["crashes", &format!("file://{}", store.display()), "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<_> =
        groups.as_array().unwrap().iter().map(|g| (g["signature_id"].clone(), g["title"].clone())).collect();
    assert_eq!(
        got,
        [("aaaaaaaaaaaaaaaa".into(), "BUG: a".into()), ("bbbbbbbbbbbbbbbb".into(), serde_json::Value::Null)]
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("bbbbbbbbbbbbbbbb/h/20261125T000000Z-001/report.json"), "{stderr}");

    let new = work.path().join("new/store");
    let out = Command::new(crashvmm())
        .args(["deliver", "--upload", &format!("file://{}", new.display()), "--no-such-option"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!work.path().join("new").exists(), "parsing the URL created it");
}
