//! A suite's results, for people and CI: `summary.json` (this module's types), JUnit XML
//! (quick-junit: one `<testsuite>` per case, one `<testcase>` per expectation) and the table
//! on the terminal.

use std::collections::BTreeMap;
use std::path::PathBuf;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use serde::{Deserialize, Serialize};

use crate::check::{Check, Observed};
use crate::image::Capability;
use crate::runner::Mode;
use crate::spec::DumpMode;
use crate::trigger::Trigger;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
        }
    }
}

/// The settings a case ran with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    pub memory_mib: u64,
    pub vcpus: u32,
    pub hyperv: bool,
    /// `null`: the kernel's default.
    pub crash_kexec_post_notifiers: Option<u8>,
    pub dump: DumpMode,
    /// The guest's whole command line.
    pub cmdline: String,
    pub timeout_s: u64,
}

/// One case's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub name: String,
    pub kernel: String,
    pub kernel_release: Option<String>,
    pub trigger: Trigger,
    /// What was done to set the trigger off.
    pub done: String,
    pub settings: SettingsRecord,
    /// The matrix values that made the case.
    pub axes: BTreeMap<String, String>,
    pub status: Status,
    /// Why it was skipped, or what failed first.
    pub reason: Option<String>,
    /// Why it ran a second time (the software KVM test host broke the first run).
    pub retried: Option<String>,
    pub mode: Option<Mode>,
    pub duration_s: f64,
    pub exit_code: Option<i32>,
    pub checks: Vec<Check>,
    pub observed: Observed,
    /// Its outputs (events.jsonl, console.log, crashvmm.log, crashes/).
    pub out_dir: PathBuf,
}

/// A kernel under test, as built.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelRecord {
    pub name: String,
    pub release: String,
    pub source: String,
    pub kexec: Capability,
    pub module: Capability,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub suite: String,
    pub file: PathBuf,
    pub started_at: String,
    pub duration_s: f64,
    pub mode: Mode,
    pub mode_reason: String,
    pub kernels: Vec<KernelRecord>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cases: Vec<CaseResult>,
}

impl Summary {
    /// Whether the suite passed: every case passed or was skipped, and it ran at least one.
    pub fn passed(&self) -> bool {
        self.failed == 0 && !self.cases.is_empty()
    }

    pub fn count(&mut self) {
        let n = |s: Status| self.cases.iter().filter(|c| c.status == s).count();
        (self.passed, self.failed, self.skipped) = (n(Status::Passed), n(Status::Failed), n(Status::Skipped));
    }

    /// The JUnit XML report.
    pub fn junit(&self) -> Result<String, quick_junit::SerializeError> {
        let mut report = Report::new(&self.suite);
        report.set_time(std::time::Duration::from_secs_f64(self.duration_s));
        for case in &self.cases {
            let mut suite = TestSuite::new(&case.name);
            suite.set_time(std::time::Duration::from_secs_f64(case.duration_s));
            let s = &case.settings;
            let mut props = vec![
                Property::new("kernel", &case.kernel),
                Property::new("kernel_release", case.kernel_release.as_deref().unwrap_or("")),
                Property::new("trigger", case.trigger.as_str()),
                Property::new("done", &case.done),
                Property::new("dump", s.dump.as_str()),
                Property::new("hyperv", if s.hyperv { "on" } else { "off" }),
                Property::new(
                    "crash_kexec_post_notifiers",
                    s.crash_kexec_post_notifiers.map_or("default".to_string(), |p| p.to_string()),
                ),
                Property::new("vcpus", s.vcpus.to_string()),
                Property::new("memory_mib", s.memory_mib.to_string()),
                Property::new("panic_path", case.observed.panic_path.join(",")),
                Property::new("out_dir", case.out_dir.display().to_string()),
            ];
            if let Some(why) = &case.retried {
                props.push(Property::new("retried", why));
            }
            suite.add_properties(props);
            let classname = format!("{}.{}", self.suite, case.name);
            if case.status == Status::Skipped {
                let mut status = TestCaseStatus::skipped();
                status.set_message(case.reason.as_deref().unwrap_or("skipped"));
                let mut tc = TestCase::new("case", status);
                tc.set_classname(&classname);
                suite.add_test_case(tc);
            } else {
                if case.checks.is_empty() || (case.checks.iter().all(|c| c.passed) && case.status == Status::Failed) {
                    // Failed before any expectation could be checked (or for a reason beside them).
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                    status.set_message(case.reason.as_deref().unwrap_or("failed"));
                    let mut tc = TestCase::new("run", status);
                    tc.set_classname(&classname);
                    suite.add_test_case(tc);
                }
                for check in &case.checks {
                    let status = if check.passed {
                        TestCaseStatus::success()
                    } else {
                        let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        s.set_message(&check.detail);
                        s
                    };
                    let mut tc = TestCase::new(&check.name, status);
                    tc.set_classname(&classname);
                    tc.set_system_out(&check.detail);
                    suite.add_test_case(tc);
                }
            }
            report.add_test_suite(suite);
        }
        report.to_string()
    }

    /// The results as Markdown (docs/crash-suites.md): the kernels, a matrix of results with a
    /// row per trigger and a column per kernel and setting, then each case with its panic path.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Crash suite `{}`\n\nWritten by `crashvmm test {} --markdown FILE` (started {}).\n\n",
            self.suite,
            self.file.display(),
            self.started_at
        );
        md += &format!(
            "Suite `{}` (`{}`), {} cases in {:.0} min ({}: {}): **{} passed, {} failed, {} skipped**.\n\n",
            self.suite,
            self.file.display(),
            self.cases.len(),
            self.duration_s / 60.0,
            self.mode.as_str(),
            self.mode_reason,
            self.passed,
            self.failed,
            self.skipped
        );
        md += "| kernel | release | from | kexec | crashtest module |\n|---|---|---|---|---|\n";
        let cap = |c: &Capability| match c {
            Capability::Yes => "yes".to_string(),
            Capability::No(why) => format!("no: {why}"),
            Capability::Unknown => "unknown".to_string(),
        };
        for k in &self.kernels {
            md += &format!("| {} | {} | {} | {} | {} |\n", k.name, k.release, k.source, cap(&k.kexec), cap(&k.module));
        }
        // Columns: every combination of kernel and settings, in the order the cases ran.
        let setting = |c: &CaseResult| {
            let s = &c.settings;
            format!(
                "{} pn={} hv={}",
                c.kernel,
                s.crash_kexec_post_notifiers.map_or("-".to_string(), |p| p.to_string()),
                if s.hyperv { "on" } else { "off" }
            )
        };
        let mut columns: Vec<String> = Vec::new();
        let mut rows: Vec<Trigger> = Vec::new();
        for c in &self.cases {
            if !columns.contains(&setting(c)) {
                columns.push(setting(c));
            }
            if !rows.contains(&c.trigger) {
                rows.push(c.trigger);
            }
        }
        md += "\nResults (pn: `crash_kexec_post_notifiers`, hv: `--hyperv`):\n\n| trigger |";
        for col in &columns {
            md += &format!(" {col} |");
        }
        md += "\n|---|";
        md += &"---|".repeat(columns.len());
        md += "\n";
        for t in &rows {
            md += &format!("| {t} |");
            for col in &columns {
                let cell = self
                    .cases
                    .iter()
                    .filter(|c| c.trigger == *t && setting(c) == *col)
                    .map(|c| match c.status {
                        Status::Passed => "pass",
                        Status::Failed => "**FAIL**",
                        Status::Skipped => "skip",
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                md += &format!(" {cell} |");
            }
            md += "\n";
        }
        md += "\nEach case (the panic path as crashvmm saw it; times from the kernel's first panic-path step):\n\n";
        md += "| trigger | kernel | pn | hv | result | panic path | to kexec | to dump | why |\n|---|---|---|---|---|---|---|---|---|\n";
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        for c in &self.cases {
            let s = &c.settings;
            let why = match c.status {
                Status::Passed => String::new(),
                _ => c.reason.clone().unwrap_or_default().replace('|', "\\|"),
            };
            let retried = c.retried.as_ref().map_or(String::new(), |r| format!(" (retried: {r})"));
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {why}{retried} |\n",
                c.trigger,
                c.kernel,
                s.crash_kexec_post_notifiers.map_or("-".to_string(), |p| p.to_string()),
                if s.hyperv { "on" } else { "off" },
                c.status.as_str(),
                c.observed.panic_path.join(" > "),
                ms(c.observed.panic_to_kexec_ms),
                ms(c.observed.panic_to_dump_ms),
            );
        }
        md
    }

    /// The table for the terminal.
    pub fn table(&self) -> String {
        let width = self.cases.iter().map(|c| c.name.chars().count()).max().unwrap_or(4).clamp(4, 70);
        let mut out = format!("{:<8} {:<width$} {:>6}  PANIC PATH / REASON\n", "RESULT", "CASE", "TIME");
        for c in &self.cases {
            let what = match c.status {
                Status::Passed => c.observed.panic_path.join(" > "),
                _ => c.reason.clone().unwrap_or_default(),
            };
            let retried = if c.retried.is_some() { " (retried)" } else { "" };
            out += &format!("{:<8} {:<width$} {:>5.0}s  {what}{retried}\n", c.status.as_str(), c.name, c.duration_s);
        }
        out += &format!(
            "{}: {} passed, {} failed, {} skipped in {:.0} s ({})\n",
            self.suite,
            self.passed,
            self.failed,
            self.skipped,
            self.duration_s,
            self.mode.as_str()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, status: Status, checks: Vec<Check>) -> CaseResult {
        CaseResult {
            name: name.into(),
            kernel: "cloud".into(),
            kernel_release: Some("6.1.0-57-cloud-amd64".into()),
            trigger: Trigger::SysrqC,
            done: Trigger::SysrqC.what_is_done().into(),
            settings: SettingsRecord {
                memory_mib: 768,
                vcpus: 2,
                hyperv: true,
                crash_kexec_post_notifiers: None,
                dump: DumpMode::Guest,
                cmdline: "console=ttyS0".into(),
                timeout_s: 420,
            },
            axes: BTreeMap::new(),
            status,
            reason: (status != Status::Passed).then(|| "no crashtest module for this kernel".into()),
            retried: None,
            mode: Some(Mode::TestHost),
            duration_s: 61.0,
            exit_code: Some(5),
            checks,
            observed: Observed { panic_path: vec!["pvpanic".into(), "guest_kexec".into()], ..Default::default() },
            out_dir: "/tmp/x".into(),
        }
    }

    fn check(name: &str, passed: bool) -> Check {
        Check { name: name.into(), passed, detail: format!("{name} detail <&>") }
    }

    #[test]
    fn junit_has_a_suite_per_case_and_a_test_per_expectation() {
        let mut s = Summary {
            suite: "smoke".into(),
            file: "s.toml".into(),
            started_at: String::new(),
            duration_s: 200.0,
            mode: Mode::TestHost,
            mode_reason: String::new(),
            kernels: vec![],
            passed: 0,
            failed: 0,
            skipped: 0,
            cases: vec![
                case("ok", Status::Passed, vec![check("outcome", true), check("panic path", true)]),
                case("bad", Status::Failed, vec![check("outcome", false)]),
                case("skip", Status::Skipped, vec![]),
            ],
        };
        s.count();
        assert_eq!((s.passed, s.failed, s.skipped), (1, 1, 1));
        assert!(!s.passed());
        let xml = s.junit().unwrap();
        let report = junit_parser::from_reader(std::io::Cursor::new(xml.as_bytes())).unwrap();
        assert_eq!(report.suites.len(), 3);
        assert_eq!(report.suites[0].cases.len(), 2);
        let names: Vec<&str> = report.suites[0].cases.iter().map(|c| c.original_name.as_str()).collect();
        assert_eq!(names, ["outcome", "panic path"]);
        assert_eq!(report.suites[0].cases[0].classname.as_deref(), Some("smoke.ok"));
        assert!(report.suites[0].cases.iter().all(|c| c.status.is_success()));
        assert!(report.suites[1].cases[0].status.is_failure());
        assert!(report.suites[2].cases[0].status.is_skipped());
        let props = &report.suites[0].properties.hashmap;
        assert_eq!(props.get("panic_path").map(String::as_str), Some("pvpanic,guest_kexec"));
        let md = s.markdown();
        assert!(md.contains("| sysrq-c | pass, **FAIL**, skip |"), "{md}");
        assert!(md.contains("| sysrq-c | cloud | - | on | FAILED | pvpanic > guest_kexec |"), "{md}");
        let table = s.table();
        assert!(table.contains("passed   ok") && table.contains("pvpanic > guest_kexec"), "{table}");
        assert!(table.contains("smoke: 1 passed, 1 failed, 1 skipped"), "{table}");
    }
}
