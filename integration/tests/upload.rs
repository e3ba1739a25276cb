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
    assert_eq!(keys.len(), 4, "report.json, events.jsonl, console.log, vmcore: {keys:?}");
    assert_eq!(server.open_uploads().unwrap(), 0, "nothing half-written");
}
