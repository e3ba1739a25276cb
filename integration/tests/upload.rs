//! Delivery to a real S3-protocol server (PyPI moto's standalone server, its own process on the
//! loopback: delivery/tests/s3-server.sh) by the real crashvmm binary, with the test guest.

#[path = "../../delivery/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{S3Server, BUCKET};
use serde_json::Value;

/// The crashvmm binary and the test guest, or `None` (skip: no `/dev/kvm` and
/// `CRASHVMM_SKIP_KVM_TESTS=1`).
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    integration::testguest_prerequisites("upload")
}

/// crashvmm pointed at `server` (the tests of this file run in parallel, each with a server
/// of its own: the environment is per command, not the test process's).
fn crashvmm(bin: &Path, server: &S3Server) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", server.port))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1");
    cmd
}

/// `crashvmm run` of a test-guest scenario that crashes, delivering to `url`.
fn crash(
    server: &S3Server,
    bin: &Path,
    elf: &Path,
    scenario: &str,
    crash_dir: &Path,
    url: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = crashvmm(bin, server);
    cmd.args(["run", "--kernel"])
        .arg(elf)
        .args(["--memory", "64M", "--console", "null", "--cmdline", &format!("testguest.scenario={scenario}")])
        .arg("--crash-dir")
        .arg(crash_dir)
        .arg("--events")
        .arg(crash_dir.with_extension("events.jsonl"))
        .args(["--upload", url, "--upload-wait", "60s"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn crashes_json(server: &S3Server, bin: &Path, url: &str) -> Vec<Value> {
    let out = crashvmm(bin, server).args(["crashes", url, "--json"]).output().unwrap();
    assert!(out.status.success(), "crashvmm crashes: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// Two guests with the same crash and one with another, each delivering as it ends: the store
/// holds three complete crash directories under two signature ids, and `crashvmm crashes`
/// shows two groups with counts 2 and 1.
#[test]
fn crashes_from_three_guests_are_delivered_and_grouped_by_signature() {
    let Some((bin, elf)) = prerequisites() else { return };
    let server = S3Server::start().expect("the S3 server");
    let url = format!("s3://{BUCKET}/fleet");
    let dir = tempfile::tempdir().unwrap();
    for (i, scenario) in ["panic", "panic", "triple-fault"].iter().enumerate() {
        // A crash directory is named to the second and numbered per run, and its store key is
        // SIGNATURE/HOST/DIR: two guests on one host with the same crash in the same second get
        // the same key, and the second is not delivered (a known limitation: the README's
        // `--upload`). Each guest here starts in a second of its own.
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(since.subsec_nanos())));
        let crash_dir = dir.path().join(format!("guest{i}"));
        let out = crash(&server, &bin, &elf, scenario, &crash_dir, &url, &[]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{scenario}: {stderr}");
        let names: Vec<String> = events(&crash_dir.with_extension("events.jsonl"))
            .iter()
            .map(|e| e["event"].as_str().unwrap_or("").to_string())
            .collect();
        let report = names.iter().position(|n| n == "crash_report").expect("crash_report");
        let done = names.iter().position(|n| n == "upload_completed").unwrap_or_else(|| panic!("{names:?} {stderr}"));
        assert!(report < done, "delivered after the crash directory was complete: {names:?}");
    }
    let groups = crashes_json(&server, &bin, &url);
    let counts: Vec<u64> = groups.iter().map(|g| g["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, [2, 1], "{groups:#?}");
    assert_ne!(groups[0]["signature_id"], groups[1]["signature_id"]);
    // Every directory complete: its files, report.json among them; no upload left open.
    let keys = server.keys().unwrap();
    for d in groups.iter().flat_map(|g| g["dirs"].as_array().unwrap()) {
        let name = d["dir"].as_str().unwrap();
        for file in ["report.json", "events.jsonl", "console.log", "vmcore"] {
            assert!(keys.iter().any(|k| k.ends_with(&format!("{name}/{file}"))), "{name}/{file} missing: {keys:?}");
        }
    }
    assert_eq!(server.open_uploads().unwrap(), 0);
}

/// The server goes away in the middle of a vmcore upload and crashvmm is killed; after both
/// start again (`crashvmm deliver`), the upload completes: the stored vmcore is the local file,
/// and no object is there twice or half-written.
#[test]
fn a_delivery_cut_off_by_a_dead_server_and_a_killed_crashvmm_completes_after_restart() {
    let Some((bin, elf)) = prerequisites() else { return };
    let mut server = S3Server::start().expect("the S3 server");
    let url = format!("s3://{BUCKET}/fault");
    let dir = tempfile::tempdir().unwrap();
    let crash_dir = dir.path().join("guest");
    // An unfiltered ELF of 64 MiB, sent at 8 MiB/s: the server dies after the first part.
    let extra = ["--vmcore-format", "elf", "--dump-level", "0", "--upload-max-rate", "8M", "--after-crash", "pause"];
    let mut child = crash(&server, &bin, &elf, "panic", &crash_dir, &url, &extra).spawn().unwrap();
    let events_path = crash_dir.with_extension("events.jsonl");
    let t0 = Instant::now();
    while !events(&events_path).iter().any(|e| e["event"] == "upload_progress" && e["bytes"].as_u64() > Some(0)) {
        assert!(t0.elapsed() < Duration::from_secs(60), "no upload progress: {:?}", events(&events_path));
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let _ = child.kill();
    let _ = child.wait();
    server.restart().unwrap();
    let out = crashvmm(&bin, &server)
        .args(["deliver", "--upload", &url, "--wait", "120s", "--crash-dir"])
        .arg(&crash_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "crashvmm deliver: {}", String::from_utf8_lossy(&out.stderr));
    let groups = crashes_json(&server, &bin, &url);
    assert_eq!(groups.len(), 1, "{groups:#?}");
    let entry = &groups[0]["dirs"][0];
    let fetched = dir.path().join("fetched");
    let out = crashvmm(&bin, &server).args(["fetch", entry["url"].as_str().unwrap()]).arg(&fetched).output().unwrap();
    assert!(out.status.success(), "crashvmm fetch: {}", String::from_utf8_lossy(&out.stderr));
    let local = std::fs::read_dir(&crash_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("report.json").is_file())
        .expect("the local crash directory");
    let got = std::fs::read_dir(&fetched).unwrap().map(|e| e.unwrap().path()).next().expect("the fetched directory");
    assert_eq!(common::sha256(&got.join("vmcore")).unwrap(), common::sha256(&local.join("vmcore")).unwrap());
    let keys = server.keys().unwrap();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
    let (index, files): (Vec<&String>, Vec<&String>) = keys.iter().partition(|k| k.split('/').any(|c| c == ".index"));
    assert_eq!(files.len(), 4, "report.json, events.jsonl, console.log, vmcore: {keys:?}");
    assert_eq!(index.len(), 2, "the vmcore's and the directory's index entries: {keys:?}");
    assert_eq!(server.open_uploads().unwrap(), 0, "nothing half-written");
}

/// `--vmcores-per-signature 1` on two hosts that share a store (two crashvmm processes with
/// different `--upload-host`), the same crash on each: the first host's vmcore is written and
/// delivered; the second asks the store, finds it, and keeps its report without a vmcore,
/// `duplicate_of` naming the first. The store ends with one vmcore for the signature and both
/// reports. With the server stopped, the first host crashes again: its own crash directory's
/// count is used (one vmcore there already), and the report says so and why.
#[test]
fn one_vmcore_per_signature_across_hosts_and_the_local_count_without_the_store() {
    let Some((bin, elf)) = prerequisites() else { return };
    let mut server = S3Server::start().expect("the S3 server");
    let url = format!("s3://{BUCKET}/dups");
    let dir = tempfile::tempdir().unwrap();
    let newest_report = |crash_dir: &Path| -> (PathBuf, Value) {
        let last = integration::finished_crash_dirs(crash_dir).pop().expect("a crash directory");
        let report = serde_json::from_slice(&std::fs::read(last.join("report.json")).unwrap()).unwrap();
        (last, report)
    };
    let limit = ["--vmcores-per-signature", "1"];
    for host in ["host-a", "host-b"] {
        let crash_dir = dir.path().join(host);
        let out =
            crash(&server, &bin, &elf, "panic", &crash_dir, &url, &[&limit[..], &["--upload-host", host]].concat())
                .output()
                .unwrap();
        assert_eq!(out.status.code(), Some(5), "{host}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let keys = server.keys().unwrap();
    let vmcores: Vec<&String> = keys.iter().filter(|k| k.ends_with("/vmcore")).collect();
    let reports: Vec<&String> = keys.iter().filter(|k| k.ends_with("/report.json")).collect();
    assert_eq!(vmcores.len(), 1, "{keys:?}");
    assert!(vmcores[0].contains("/host-a/"), "{keys:?}");
    assert_eq!(reports.len(), 2, "{keys:?}");
    assert!(reports.iter().any(|k| k.contains("/host-b/")), "{keys:?}");
    let (a_dir, a) = newest_report(&dir.path().join("host-a"));
    let signature = a["signature"]["id"].as_str().unwrap().to_owned();
    assert!(a_dir.join("vmcore").is_file());
    assert_eq!(a["vmcore_count"]["count"], 0);
    assert_eq!(a["vmcore_count"]["counted_in"], "store");
    let (b_dir, b) = newest_report(&dir.path().join("host-b"));
    assert!(!b_dir.join("vmcore").exists());
    assert_eq!(b["signature"]["id"], signature.as_str());
    assert_eq!(b["vmcore_count"]["count"], 1, "{b:#}");
    assert_eq!(b["vmcore_count"]["counted_in"], "store");
    let first = format!("{url}/{signature}/host-a/{}", a_dir.file_name().unwrap().to_string_lossy());
    assert_eq!(b["duplicate_of"], first.as_str());
    assert!(b["vmcore_error"].as_str().unwrap().contains("--vmcores-per-signature 1"), "{b:#}");
    let events = events(&dir.path().join("host-b").with_extension("events.jsonl"));
    let skipped: Vec<&Value> = events.iter().filter(|e| e["event"] == "vmcore_skipped").collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["reason"], "duplicate");

    // The store gone: host-a's own count (its first crash kept a vmcore) says no.
    server.kill();
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(since.subsec_nanos())));
    let crash_dir = dir.path().join("host-a");
    let out = crashvmm(&bin, &server)
        .args(["run", "--kernel"])
        .arg(&elf)
        .args(["--memory", "64M", "--console", "null", "--cmdline", "testguest.scenario=panic"])
        .arg("--crash-dir")
        .arg(&crash_dir)
        .args(["--upload", &url, "--upload-wait", "1s", "--upload-host", "host-a"])
        .args(limit)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let (c_dir, c) = newest_report(&crash_dir);
    assert_ne!(c_dir, a_dir);
    assert!(!c_dir.join("vmcore").exists());
    assert_eq!(c["vmcore_count"]["counted_in"], "local", "{c:#}");
    assert_eq!(c["vmcore_count"]["count"], 1, "{c:#}");
    assert!(c["vmcore_count"]["store_error"].is_string(), "{c:#}");
    assert_eq!(c["duplicate_of"], a_dir.display().to_string().as_str());
}
