//! A case's expectations, each checked on its own against what its run left: crashvmm's exit
//! code, the event log, the console, the crash directory's `report.json` and the vmcore
//! (read back by `makedumpfile --dump-dmesg`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::spec::{Case, Outcome, PANIC_PATH_EVENTS};
use crate::trigger::{ERROR, SKIP};

/// crashvmm's exit code for a guest that panicked (README.md).
pub const GUEST_PANICKED: i32 = 5;

/// One expectation's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was expected, in a few words (`crash trigger`, `panic path`...).
    pub name: String,
    pub passed: bool,
    /// What was seen, or why it failed.
    pub detail: String,
}

/// What a run showed, beside the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The kernel's panic path as crashvmm saw it ([`PANIC_PATH_EVENTS`], in the guest's order).
    pub panic_path: Vec<String>,
    /// `crash_detected`'s trigger.
    pub crash_trigger: Option<String>,
    pub vmcore: Option<PathBuf>,
    /// The crash signature's title.
    pub signature: Option<String>,
    pub panic_to_kexec_ms: Option<u64>,
    pub panic_to_dump_ms: Option<u64>,
}

/// The lines of `events.jsonl` a case reads (typed; other fields are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct EventLine {
    #[serde(default)]
    pub(crate) event: String,
    #[serde(default)]
    ts: Option<String>,
    /// `crash_detected`: when its cause was seen.
    #[serde(default)]
    signal_ts: Option<String>,
    #[serde(default)]
    pub(crate) trigger: Option<String>,
}

impl EventLine {
    fn time(&self) -> Option<DateTime<FixedOffset>> {
        DateTime::parse_from_rfc3339(self.ts.as_deref()?).ok()
    }
}

/// How the guest side ended the case before its trigger, if it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestVerdict {
    /// `CRASHTEST: case: skip: REASON`.
    Skip(String),
    /// `CRASHTEST: case: error: REASON`.
    Error(String),
}

/// The guest's own skip or error line, if its console has one.
pub fn guest_verdict(console: &str) -> Option<GuestVerdict> {
    console.lines().find_map(|l| {
        if let Some(i) = l.find(SKIP) {
            Some(GuestVerdict::Skip(l[i + SKIP.len()..].trim().to_string()))
        } else {
            l.find(ERROR).map(|i| GuestVerdict::Error(l[i + ERROR.len()..].trim().to_string()))
        }
    })
}

pub(crate) fn read_events(out: &Path) -> Result<Vec<EventLine>, String> {
    let text = std::fs::read_to_string(out.join("events.jsonl")).map_err(|e| format!("events.jsonl: {e}"))?;
    let mut events: Vec<EventLine> =
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_default()).collect();
    // In the order of their causes: RFC 3339 in UTC with microseconds sorts as the time does;
    // a detection at its signal's time (the main thread may log it late). Stable for ties.
    events.sort_by(|a, b| {
        let key = |e: &EventLine| e.signal_ts.clone().or_else(|| e.ts.clone()).unwrap_or_default();
        key(a).cmp(&key(b))
    });
    Ok(events)
}

fn ms_between(a: DateTime<FixedOffset>, b: DateTime<FixedOffset>) -> u64 {
    (b - a).num_milliseconds().max(0) as u64
}

/// The newest crash directory's report, if any.
fn crash_report(out: &Path) -> Option<(PathBuf, crash_report::Report)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out.join("crashes"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join("report.json").is_file())
        .collect();
    dirs.sort();
    let dir = dirs.pop()?;
    let bytes = std::fs::read(dir.join("report.json")).ok()?;
    let report: crash_report::Report = crash_report::from_slice(&bytes).ok()?;
    Some((dir, report))
}

/// Checks `case`'s expectations against the run in `out` that ended with `exit_code` and
/// left `console` (its `console.log`).
pub fn check(case: &Case, out: &Path, exit_code: Option<i32>, console: &str) -> (Vec<Check>, Observed) {
    let mut checks = Vec::new();
    let mut seen = Observed::default();
    let mut add = |name: &str, passed: bool, detail: String| checks.push(Check { name: name.into(), passed, detail });
    let e = &case.expect;

    let marker = case.trigger.console_marker();
    let set_off = console.contains(&marker);
    add(
        "trigger set off",
        set_off,
        if set_off {
            format!("{} (console: {marker:?})", case.trigger.what_is_done())
        } else {
            format!("the console never showed {marker:?}")
        },
    );

    let want_exit = match e.outcome {
        Outcome::None => None,
        _ => Some(GUEST_PANICKED),
    };
    if let Some(want) = want_exit {
        let got = exit_code.map_or("none".to_string(), |c| c.to_string());
        add(
            "crashvmm exit code",
            exit_code == Some(want),
            format!("{got} (expected {want}: guest panicked, vmcore collected)"),
        );
    }

    let events = match read_events(out) {
        Ok(ev) => ev,
        Err(why) => {
            add("event log", false, why);
            return (checks, seen);
        }
    };
    let first = |name: &str| events.iter().find(|ev| ev.event == name);

    // The crash, as crashvmm detected it.
    let detected = first("crash_detected");
    seen.crash_trigger = detected.and_then(|d| d.trigger.clone());
    match (detected, e.trigger) {
        (None, _) => add("crash detected", false, "crashvmm detected no crash".into()),
        (Some(_), None) => {
            add("crash detected", true, format!("trigger {}", seen.crash_trigger.as_deref().unwrap_or("?")))
        }
        (Some(_), Some(want)) => {
            let got = seen.crash_trigger.as_deref().unwrap_or("?");
            add("crash detected", got == want.as_str(), format!("trigger {got} (expected {want})"))
        }
    }

    // The panic path: the kernel's steps, in the guest's order, up to the crash kernel's start.
    let mut path = Vec::new();
    for ev in &events {
        if PANIC_PATH_EVENTS.contains(&ev.event.as_str()) {
            path.push(ev.event.clone());
            if ev.event == "crash_kernel_started" {
                break;
            }
        }
    }
    seen.panic_path = path.clone();
    if let Some(want) = &e.panic_path {
        add("panic path", &path == want, format!("{} (expected {})", words(&path), words(want)));
    }

    // Outcome.
    let report = crash_report(out);
    let kdump = first("kdump_completed").is_some();
    let vmcore = report.as_ref().and_then(|(dir, r)| {
        let v = r.vmcore.as_ref()?;
        Some((dir.join(v.path.as_deref()?), v.source))
    });
    let (ok, detail) = match (e.outcome, &vmcore) {
        (Outcome::GuestKdump, Some((p, Some(crash_report::VmcoreSource::Guest)))) if kdump => {
            (true, format!("the guest's kdump, collected as {}", p.display()))
        }
        (Outcome::HostVmcore, Some((p, Some(crash_report::VmcoreSource::Host)))) if !kdump => {
            (true, format!("crashvmm's host-side vmcore {}", p.display()))
        }
        (Outcome::None, None) => (true, "no vmcore".into()),
        (want, got) => {
            let got = match got {
                Some((p, src)) => format!(
                    "a vmcore from {} ({})",
                    src.map_or("?", |s| s.as_str()),
                    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                ),
                None => report
                    .as_ref()
                    .and_then(|(_, r)| r.vmcore_error.clone())
                    .map_or("no vmcore".into(), |e| format!("no vmcore: {e}")),
            };
            (false, format!("{got}{} (expected {})", if kdump { ", kdump_completed" } else { "" }, want.as_str()))
        }
    };
    add("outcome", ok, detail);
    seen.vmcore = vmcore.as_ref().map(|(p, _)| p.clone());

    // The vmcore readable by the reference tool.
    if let Some((path, _)) = &vmcore {
        let (ok, detail) = dmesg_finds(path, &out.join("vmcore-dmesg.txt"), &e.vmcore_dmesg);
        add("vmcore readable", ok, detail);
    }

    // The signature.
    seen.signature = report.as_ref().and_then(|(_, r)| r.signature.as_ref()?.title.clone());
    if let Some(re) = &e.signature {
        let title = seen.signature.as_deref().unwrap_or("");
        add("signature", re.is_match(title), format!("{title:?} (expected /{}/)", re.as_str()));
    }

    // Times.
    let panic_at = events.iter().filter(|ev| PANIC_PATH_EVENTS.contains(&ev.event.as_str())).find_map(EventLine::time);
    let kexec_at = first("guest_kexec").and_then(EventLine::time);
    let dump_at = if kdump { first("kdump_completed") } else { first("vmcore_written") }.and_then(EventLine::time);
    seen.panic_to_kexec_ms = panic_at.zip(kexec_at).map(|(a, b)| ms_between(a, b));
    seen.panic_to_dump_ms = panic_at.zip(dump_at).map(|(a, b)| ms_between(a, b));
    for (name, limit, got) in [
        ("panic to kexec", e.panic_to_kexec, seen.panic_to_kexec_ms),
        ("panic to dump collected", e.panic_to_dump, seen.panic_to_dump_ms),
    ] {
        if let Some(limit) = limit {
            let (ok, detail) = match got {
                Some(ms) => (
                    Duration::from_millis(ms) <= limit,
                    format!("{ms} ms (limit {})", humantime::format_duration(limit)),
                ),
                None => (false, "not seen".into()),
            };
            add(name, ok, detail);
        }
    }
    (checks, seen)
}

fn words(v: &[String]) -> String {
    if v.is_empty() {
        "(nothing)".into()
    } else {
        v.join(", ")
    }
}

/// Whether `makedumpfile --dump-dmesg` reads the kernel log out of `vmcore` and it has `want`.
fn dmesg_finds(vmcore: &Path, to: &Path, want: &str) -> (bool, String) {
    let _ = std::fs::remove_file(to);
    let out = match Command::new("makedumpfile").arg("--dump-dmesg").arg(vmcore).arg(to).output() {
        Ok(o) => o,
        Err(e) => return (false, format!("cannot run makedumpfile (package makedumpfile): {e}")),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return (false, format!("makedumpfile --dump-dmesg failed ({}): {last}", out.status));
    }
    let log = String::from_utf8_lossy(&std::fs::read(to).unwrap_or_default()).into_owned();
    match log.lines().find(|l| l.contains(want)) {
        Some(line) => (true, format!("makedumpfile --dump-dmesg: {}", line.trim())),
        None => (false, format!("makedumpfile --dump-dmesg read {} lines, none with {want:?}", log.lines().count())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Suite;

    fn case(extra: &str) -> Case {
        let text = format!(
            "[kernel]\npackage = \"linux-image-cloud-amd64\"\n[[case]]\nname = \"a\"\ntrigger = \"sysrq-c\"\n{extra}"
        );
        Suite::parse(Path::new("s.toml"), &text).unwrap().cases.remove(0)
    }

    fn console_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("console.log")).unwrap()
    }

    fn ts(ms: u32) -> String {
        format!("2026-12-05T10:00:{:02}.{:03}000Z", ms / 1000, ms % 1000)
    }

    /// A run's outputs: events (name, ms, extra fields), the console, a report.
    fn run(events: &[(&str, u32, &str)], console: &str, report: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = events
            .iter()
            .map(|(e, ms, extra)| format!("{{\"ts\":\"{}\",\"event\":\"{e}\"{extra}}}\n", ts(*ms)))
            .collect();
        std::fs::write(dir.path().join("events.jsonl"), lines).unwrap();
        std::fs::write(dir.path().join("console.log"), console).unwrap();
        if let Some(r) = report {
            let crash = dir.path().join("crashes/2026-12-05T10-00-00-crash1");
            std::fs::create_dir_all(&crash).unwrap();
            std::fs::write(crash.join("report.json"), r).unwrap();
        }
        dir
    }

    const KDUMP_EVENTS: &[(&str, u32, &str)] = &[
        ("vm_started", 0, ""),
        ("pvpanic", 1000, ""),
        ("hv_crash", 1001, ""),
        ("crash_detected", 1500, ",\"trigger\":\"pvpanic\",\"signal_ts\":\"2026-12-05T10:00:01.000000Z\""),
        ("vmbus_unload_requested", 1100, ""),
        ("vmbus_unload_completed", 1101, ""),
        ("guest_kexec", 1200, ""),
        ("crash_kernel_started", 1300, ""),
        ("pvpanic", 1400, ""),
        ("kdump_completed", 9000, ""),
        ("vmcore_written", 9100, ""),
    ];

    #[test]
    fn a_kdump_case_records_its_panic_path_and_times_and_checks_each_expectation() {
        let c = case(
            "[case.expect]\npanic_path = [\"pvpanic\", \"hv_crash\", \"vmbus_unload_requested\", \"vmbus_unload_completed\", \"guest_kexec\", \"crash_kernel_started\"]\n\
             panic_to_kexec = \"1s\"\npanic_to_dump = \"5s\"\nsignature = \"sysrq\"\n",
        );
        let report = r#"{"schema":1,"trigger":"pvpanic","signature":{"title":"sysrq triggered crash"},
            "vmcore":{"path":"vmcore.kdump","source":"guest"}}"#;
        let dir = run(KDUMP_EVENTS, "CRASHTEST: case: triggering sysrq-c\n", Some(report));
        let (checks, seen) = check(&c, dir.path(), Some(GUEST_PANICKED), &console_of(dir.path()));
        let by = |n: &str| checks.iter().find(|c| c.name == n).unwrap_or_else(|| panic!("{n}: {checks:?}")).clone();
        assert_eq!(seen.panic_path.len(), 6, "the crash kernel's own pvpanic is not in it: {seen:?}");
        assert!(by("panic path").passed && by("trigger set off").passed && by("crashvmm exit code").passed);
        assert!(by("crash detected").passed && by("outcome").passed && by("signature").passed, "{checks:?}");
        assert_eq!(seen.panic_to_kexec_ms, Some(200));
        assert!(by("panic to kexec").passed);
        assert!(!by("panic to dump collected").passed, "8 s is past 5 s: {checks:?}");
        // The vmcore is checked with the reference tool: here there is no file.
        assert!(!by("vmcore readable").passed);
    }

    #[test]
    fn a_different_order_or_a_missing_step_fails_the_panic_path() {
        let c = case("[case.expect]\npanic_path = [\"guest_kexec\", \"crash_kernel_started\"]\n");
        let dir = run(KDUMP_EVENTS, "", None);
        let (checks, _) = check(&c, dir.path(), Some(1), &console_of(dir.path()));
        let failed: Vec<&str> = checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        assert_eq!(failed, ["trigger set off", "crashvmm exit code", "panic path", "outcome"], "{checks:?}");
        let path = checks.iter().find(|c| c.name == "panic path").unwrap();
        assert!(path.detail.starts_with("pvpanic, hv_crash,"), "{path:?}");
    }

    #[test]
    fn a_host_dump_is_not_a_guest_kdump() {
        let c = case("dump = \"host\"\n");
        let host =
            [("pvpanic", 1000, ""), ("crash_detected", 1000, ",\"trigger\":\"pvpanic\""), ("vmcore_written", 3000, "")];
        let report = r#"{"vmcore":{"path":"vmcore","source":"host"}}"#;
        let dir = run(&host, "CRASHTEST: case: triggering sysrq-c", Some(report));
        let (checks, seen) = check(&c, dir.path(), Some(5), &console_of(dir.path()));
        assert!(checks.iter().find(|c| c.name == "outcome").unwrap().passed, "{checks:?}");
        assert_eq!(seen.panic_to_dump_ms, Some(2000));
        let guest = case("");
        let (checks, _) = check(&guest, dir.path(), Some(5), &console_of(dir.path()));
        let outcome = checks.iter().find(|c| c.name == "outcome").unwrap();
        assert!(!outcome.passed && outcome.detail.contains("expected guest-kdump"), "{outcome:?}");
    }

    #[test]
    fn the_guest_says_when_a_case_cannot_run() {
        assert_eq!(
            guest_verdict("x\nCRASHTEST: case: skip: no crashtest module for this kernel\n"),
            Some(GuestVerdict::Skip("no crashtest module for this kernel".into()))
        );
        assert_eq!(
            guest_verdict("[  1.0] CRASHTEST: case: error: no crashkernel= reservation"),
            Some(GuestVerdict::Error("no crashkernel= reservation".into()))
        );
        assert_eq!(guest_verdict("CRASHTEST: case: triggering oops"), None);
    }
}
