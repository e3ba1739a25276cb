//! Operators' budgets with the real crashvmm binary and the test guest: the crash directory's
//! disk budget (`--crash-dir-max`) against delivered and undelivered crash directories, and
//! `--metrics-file` read by a real Prometheus text parser (PyPI prometheus-client's OpenMetrics
//! parser, in the venv of the delivery tests' S3 server).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use vmm::crash::budget::usage;

/// The crashvmm binary and the test guest, or `None` (skip: no `/dev/kvm` and
/// `CRASHVMM_SKIP_KVM_TESTS=1`).
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    integration::testguest_prerequisites("budgets")
}

/// `crashvmm run` of the test guest's `panic` scenario (a host-side vmcore per crash) into
/// `crash_dir`, booted again after each crash up to `crashes`, with `extra` options; its event
/// log is `<crash_dir>.events.jsonl`. Every page is written as it is (dump level 0, no
/// compression), so that each vmcore takes what the budget must reckon with (the guest's
/// 64 MiB), far more than a crash directory's other files. An `s3://` store is one that
/// cannot be reached (a closed loopback port).
fn crashes(bin: &Path, elf: &Path, crash_dir: &Path, crashes: u32, extra: &[&str]) -> Output {
    // Crash directories are named to the second and numbered per run: each run starts in a
    // second of its own, so no two runs name a directory alike.
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(since.subsec_nanos())));
    Command::new(bin)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .args(["run", "--kernel"])
        .arg(elf)
        .args(["--memory", "64M", "--console", "null", "--cmdline", "testguest.scenario=panic"])
        .args(["--after-crash", "reset", "--max-crashes", &crashes.to_string()])
        .args(["--dump-level", "0", "--vmcore-compress", "none"])
        .arg("--crash-dir")
        .arg(crash_dir)
        .arg("--events")
        .arg(crash_dir.with_extension("events.jsonl"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn events(crash_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(crash_dir.with_extension("events.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

/// Every sample of the metrics file as the OpenMetrics parser of PyPI's prometheus-client
/// reads it: `name{label="value",...}` (labels sorted) to value. The parser refuses anything
/// that is not valid OpenMetrics, and so does this.
fn parse_metrics(path: &Path) -> BTreeMap<String, f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../delivery/tests/s3-server.sh");
    let out = Command::new("bash").arg(script).arg("python").output().unwrap();
    assert!(out.status.success(), "s3-server.sh python: {}", String::from_utf8_lossy(&out.stderr));
    let python = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let program = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
print(json.dumps(samples))
"#;
    let out = Command::new(&python).arg("-c").arg(program).arg(path).output().unwrap();
    assert!(out.status.success(), "the OpenMetrics parser: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Crashes of every trigger.
fn crashes_total(m: &BTreeMap<String, f64>) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with("crashvmm_crashes_total{")).map(|(_, v)| v).sum()
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or_else(|| panic!("{name} missing: {m:#?}"))
}

/// A small `--crash-dir-max` and three crashes, after two crashes delivered earlier: the
/// oldest delivered directory goes first, then the next; the two new ones, queued but not
/// delivered (their store cannot be reached), are never removed, so the third crash keeps its
/// report, console and events without a vmcore, and its report says why. The metrics file of
/// each run parses as OpenMetrics and counts what the run's events and directories show.
#[test]
fn a_full_crash_directory_gives_up_its_oldest_delivered_crashes_and_then_the_vmcore() {
    let Some((bin, elf)) = prerequisites() else { return };
    let base = tempfile::tempdir().unwrap();
    let store = base.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let store_url = format!("file://{}", store.display());

    // What a vmcore of this guest may take at most: the budget's own figure, from a crash
    // directory it cannot fit into at all.
    let probe = base.path().join("probe");
    let out = crashes(&bin, &elf, &probe, 1, &["--crash-dir-max", "1M"]);
    let skipped = named(&events(&probe), "vmcore_skipped").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(skipped.len(), 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(skipped[0]["reason"], "disk_budget");
    let needed = skipped[0]["needed_bytes"].as_u64().unwrap();
    assert!(needed >= 64 << 20, "a 64 MiB guest's vmcore may take {needed} bytes");

    // Two crashes, delivered.
    let crash_dir = base.path().join("crashes");
    let metrics1 = base.path().join("run1.prom");
    let out = crashes(
        &bin,
        &elf,
        &crash_dir,
        2,
        &["--upload", &store_url, "--upload-wait", "60s", "--metrics-file", metrics1.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ev1 = events(&crash_dir);
    let delivered = named(&ev1, "upload_completed");
    assert_eq!(delivered.len(), 2, "{stderr}");
    let old = integration::finished_crash_dirs(&crash_dir);
    assert_eq!(old.len(), 2, "{old:?}");
    let m = parse_metrics(&metrics1);
    assert_eq!(crashes_total(&m), 2.0);
    assert_eq!(metric(&m, "crashvmm_crash_reports_total"), named(&ev1, "crash_report").len() as f64);
    assert_eq!(metric(&m, "crashvmm_vmcores_written_total{source=\"host\"}"), 2.0);
    assert_eq!(metric(&m, "crashvmm_vmcore_size_bytes_count{source=\"host\"}"), 2.0);
    let written: u64 = named(&ev1, "vmcore_written").iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert_eq!(metric(&m, "crashvmm_vmcore_size_bytes_sum{source=\"host\"}"), written as f64);
    assert_eq!(metric(&m, "crashvmm_uploads_total{result=\"completed\"}"), 2.0);
    let uploaded: u64 = delivered.iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert_eq!(metric(&m, "crashvmm_upload_bytes_total"), uploaded as f64);
    assert_eq!(metric(&m, "crashvmm_upload_queue_depth"), 0.0);
    assert_eq!(metric(&m, "crashvmm_guest_boots_total"), 2.0);

    // The budget: what the vmcore may take, the younger delivered directory, and half the
    // older one. The first new crash makes room by removing the older; the second, the
    // younger; the third finds only directories not delivered.
    let (c1, c2) = (usage(&old[0]), usage(&old[1]));
    let budget = needed + c2 + c1 / 2;
    let metrics2 = base.path().join("run2.prom");
    // A store that cannot be reached: what this run queues stays queued.
    let out = crashes(
        &bin,
        &elf,
        &crash_dir,
        3,
        &[
            "--upload",
            "s3://crashes/fleet",
            "--upload-wait",
            "1s",
            "--crash-dir-max",
            &budget.to_string(),
            "--metrics-file",
            metrics2.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The event log starts over with each run.
    let ev2 = events(&crash_dir);
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let removed: Vec<String> =
        named(&ev2, "crash_dir_removed").iter().map(|e| name(Path::new(e["dir"].as_str().unwrap()))).collect();
    let old_names: Vec<String> = old.iter().map(|p| name(p)).collect();
    assert_eq!(removed, old_names, "the oldest delivered first: {stderr}");
    assert!(!old[0].exists() && !old[1].exists());
    // The store still has them.
    for d in old_names {
        let found = walk(&store).into_iter().any(|p| p.ends_with(Path::new(&d).join("report.json")));
        assert!(found, "{d} is not in the store");
    }
    let new = integration::finished_crash_dirs(&crash_dir);
    assert_eq!(new.len(), 3, "{new:?} {stderr}");
    for d in &new[..2] {
        assert!(d.join("vmcore").is_file(), "{}: {stderr}", d.display());
    }
    let last = &new[2];
    assert!(!last.join("vmcore").exists() && !last.join("vmcore.partial").exists());
    for file in ["report.json", "console.log", "events.jsonl"] {
        assert!(last.join(file).is_file(), "{file} of the crash without a vmcore");
    }
    let why = report(last)["vmcore_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("--crash-dir-max") && why.contains(&needed.to_string()), "{why}");
    let skipped = named(&ev2, "vmcore_skipped");
    assert_eq!(skipped.len(), 1, "{stderr}");
    assert_eq!(skipped[0]["needed_bytes"].as_u64(), Some(needed));
    // Nothing queued was removed, nor anything else.
    assert_eq!(named(&ev2, "upload_queued").len(), 3);
    assert_eq!(named(&ev2, "upload_completed").len(), 0);

    let m = parse_metrics(&metrics2);
    assert_eq!(crashes_total(&m), named(&ev2, "crash_detected").len() as f64);
    assert_eq!(metric(&m, "crashvmm_crash_reports_total"), 3.0);
    assert_eq!(metric(&m, "crashvmm_vmcores_written_total{source=\"host\"}"), 2.0);
    assert_eq!(metric(&m, "crashvmm_vmcores_skipped_total{reason=\"disk_budget\"}"), 1.0);
    assert_eq!(metric(&m, "crashvmm_crash_dirs_removed_total"), 2.0);
    let freed: u64 = named(&ev2, "crash_dir_removed").iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert_eq!(metric(&m, "crashvmm_crash_dir_removed_bytes_total"), freed as f64);
    assert_eq!(metric(&m, "crashvmm_upload_queue_depth"), 3.0);
    assert_eq!(
        m.get("crashvmm_uploads_total{result=\"failed\"}").copied().unwrap_or(0.0),
        named(&ev2, "upload_failed").len() as f64
    );
    assert_eq!(metric(&m, "crashvmm_guest_boots_total"), 3.0);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A guest that crashes the same way at each boot waits longer each time before it boots
/// again: 200 ms, 400 ms, 800 ms, each wait in the events (`reset_delayed`, then the boot's
/// `vm_reset` no sooner than the wait) and in its crash's report; the last crash
/// (`--max-crashes`) ends crashvmm without a wait.
#[test]
fn a_guest_in_a_crash_loop_waits_longer_before_each_boot() {
    let Some((bin, elf)) = prerequisites() else { return };
    let base = tempfile::tempdir().unwrap();
    let crash_dir = base.path().join("crashes");
    let out = crashes(&bin, &elf, &crash_dir, 4, &["--reset-backoff", "200ms", "--reset-backoff-max", "10s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ev = events(&crash_dir);
    let delays = named(&ev, "reset_delayed");
    let waits: Vec<(u64, u64)> =
        delays.iter().map(|e| (e["wait_ms"].as_u64().unwrap(), e["streak"].as_u64().unwrap())).collect();
    assert_eq!(waits, [(200, 1), (400, 2), (800, 3)], "{stderr}");
    assert!(delays.iter().all(|e| e["signature_id"] == delays[0]["signature_id"] && e["signature_id"].is_string()));
    let ts = |e: &Value| chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap()).unwrap();
    let resets = named(&ev, "vm_reset");
    assert_eq!(resets.len(), 3, "{stderr}");
    for (d, r) in delays.iter().zip(&resets) {
        let waited = (ts(r) - ts(d)).num_milliseconds();
        assert!(waited >= d["wait_ms"].as_i64().unwrap(), "booted again after {waited} ms: {d} {r}");
    }
    let dirs = integration::finished_crash_dirs(&crash_dir);
    assert_eq!(dirs.len(), 4);
    let in_reports: Vec<Option<f64>> = dirs.iter().map(|d| report(d)["reset_wait"]["seconds"].as_f64()).collect();
    assert_eq!(in_reports, [Some(0.2), Some(0.4), Some(0.8), None]);
}
