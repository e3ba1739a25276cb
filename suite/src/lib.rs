//! `crashvmm test`: crash-injection suites for any kernel.
//!
//! A suite file (TOML, [`spec`]) names the kernels under test and the cases; each kernel gets a
//! crash-test image ([`image`]: `guest-images/crashtest-image.sh`, built into this crate); each
//! case is one crashvmm run ([`runner`], directly on hardware KVM or inside the software KVM
//! test host) whose outputs are checked against its expectations ([`check`]); the results go
//! to `summary.json`, JUnit XML and a table ([`results`]).

pub mod check;
pub mod image;
pub mod results;
pub mod runner;
pub mod spec;
pub mod trigger;

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use regex::Regex;
use thiserror::Error;

use crate::check::GuestVerdict;
use crate::image::{Capability, Image};
use crate::results::{CaseResult, KernelRecord, SettingsRecord, Status, Summary};
use crate::runner::{Mode, Run, RunSpec, TestHost};
use crate::spec::{Case, DumpMode, Suite, CRASHKERNEL_MIB};
use crate::trigger::HostAction;

/// Why a suite could not be run at all (a case that fails is a result, not this).
#[derive(Debug, Error)]
pub enum SuiteError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("--filter {pattern:?} matches none of the suite's {total} cases")]
    NoCase { pattern: String, total: usize },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("kernel {kernel} cannot kexec into a crash kernel ({why}); case '{case}' needs one (dump = guest)")]
    NoKexec { kernel: String, why: String, case: String },
    #[error(transparent)]
    Runner(#[from] runner::RunError),
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the JUnit report")]
    Junit(#[source] quick_junit::SerializeError),
}

/// Where the cases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// Directly on hardware KVM, else in the software KVM test host.
    Auto,
    Direct,
    TestHost,
}

/// `crashvmm test`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    pub suite: PathBuf,
    pub out: PathBuf,
    /// Default: `OUT/junit.xml`.
    pub junit: Option<PathBuf>,
    pub jobs: usize,
    pub filter: Option<Regex>,
    /// Where kernels, images and the crashtest module are kept between runs.
    pub cache: PathBuf,
    /// The crashvmm binary the cases run (this one).
    pub crashvmm: PathBuf,
    pub place: Where,
    /// The software KVM test host's image directory (`vmlinuz`, `initramfs.cpio.gz`).
    pub test_host: Option<PathBuf>,
    /// Only check the suite file and build the images.
    pub dry_run: bool,
    /// Also write the results as Markdown here.
    pub markdown: Option<PathBuf>,
}

/// A test-host fault earns a case one more run.
const TRIES: usize = 2;

/// The guest's command line and crashvmm's arguments for `case` on `image`.
pub fn run_spec(case: &Case, image: &Image) -> RunSpec {
    let s = &case.settings;
    let kdump = s.dump == DumpMode::Guest;
    let mut cmdline = vec!["console=ttyS0".to_string(), "panic=-1".to_string()];
    if kdump {
        cmdline.push(format!("crashkernel={CRASHKERNEL_MIB}M"));
    }
    if let Some(p) = s.crash_kexec_post_notifiers {
        cmdline.push(format!("crash_kexec_post_notifiers={p}"));
    }
    cmdline.push("crashtest=case".into());
    cmdline.push(format!("crashtest.trigger={}", case.trigger));
    cmdline.push(format!("crashtest.kdump={}", u8::from(kdump)));
    if !s.cmdline.is_empty() {
        cmdline.push(s.cmdline.clone());
    }
    let mut spec = RunSpec::boot(
        format!("case {}", case.name),
        image.vmlinuz(),
        image.initramfs(),
        &cmdline.join(" "),
        s.memory_mib,
        s.vcpus,
    );
    let args = &mut spec.args;
    args.extend(["--hyperv".into(), if s.hyperv { "on" } else { "off" }.into()]);
    if kdump {
        args.extend(["--crash-disk".into(), "path=crash-disk.img,size=1G".into()]);
    }
    let marker = case.trigger.console_marker();
    let driver = match case.trigger.host_action() {
        Some(HostAction::InjectNmi) => Some((marker, "ctl inject-nmi >$OUT/ctl-inject-nmi.json".to_string())),
        Some(HostAction::Sysrq(key)) => Some((marker, format!("ctl sysrq {key} >$OUT/ctl-sysrq.json"))),
        Some(HostAction::Watchdog) => {
            args.extend(["--watchdog", "10s", "--on-hang", "nmi"].map(String::from));
            None
        }
        None => None,
    };
    spec.driver = driver;
    spec
}

/// A run the software KVM test host broke (docs/boot-reliability.md), not the case: a time
/// limit passed, the test host reset before crashvmm ended, or a vCPU triple-faulted.
fn test_host_fault(run: &Run, out: &Path) -> Option<String> {
    if run.mode != Mode::TestHost {
        return None;
    }
    if run.timed_out {
        return Some(format!(
            "the run timed out after {:.0} s in the software KVM test host",
            run.elapsed.as_secs_f64()
        ));
    }
    if let Some(rc) = &run.test_host_failed {
        return Some(format!("the software KVM test host ended before crashvmm did (test host rc {rc})"));
    }
    check::read_events(out)
        .ok()?
        .iter()
        .any(|e| e.event == "crash_detected" && e.trigger.as_deref() == Some("triple_fault"))
        .then(|| "a vCPU triple-faulted in the software KVM test host".to_string())
}

fn settings_record(case: &Case, spec: &RunSpec) -> SettingsRecord {
    let s = &case.settings;
    let cmdline = spec.args.iter().position(|a| a == "--cmdline").and_then(|i| spec.args.get(i + 1)).cloned();
    SettingsRecord {
        memory_mib: s.memory_mib,
        vcpus: s.vcpus,
        hyperv: s.hyperv,
        crash_kexec_post_notifiers: s.crash_kexec_post_notifiers,
        dump: s.dump,
        cmdline: cmdline.unwrap_or_default(),
        timeout_s: s.timeout.as_secs(),
    }
}

/// Runs one case, with one more run when the test host broke the first.
fn run_case(case: &Case, image: &Image, ctx: &Context, out: &Path) -> CaseResult {
    let started = Instant::now();
    let spec = run_spec(case, image);
    let mut result = CaseResult {
        name: case.name.clone(),
        kernel: image.kernel.clone(),
        kernel_release: Some(image.release.clone()),
        trigger: case.trigger,
        done: case.trigger.what_is_done().into(),
        settings: settings_record(case, &spec),
        axes: spec::axes_map(case),
        status: Status::Failed,
        reason: None,
        retried: None,
        mode: Some(ctx.mode),
        duration_s: 0.0,
        exit_code: None,
        checks: Vec::new(),
        observed: Default::default(),
        out_dir: out.to_owned(),
    };
    if case.trigger.needs_module() {
        if let Capability::No(why) = &image.module {
            result.status = Status::Skipped;
            result.reason = Some(format!("{} needs the crashtest module: {why}", case.trigger));
            return result;
        }
    }
    for attempt in 1..=TRIES {
        let run = match runner::execute(
            &spec,
            ctx.mode,
            &ctx.crashvmm,
            ctx.test_host.as_ref(),
            out,
            case.settings.timeout,
            false,
        ) {
            Ok(run) => run,
            Err(e) => {
                result.reason = Some(error_line(&e));
                break;
            }
        };
        if let Some(fault) = test_host_fault(&run, out) {
            if attempt < TRIES {
                result.retried = Some(fault);
                continue;
            }
            result.reason = Some(match &result.retried {
                Some(first) => format!("{fault} (and on the first run: {first})"),
                None => fault,
            });
        }
        result.exit_code = run.exit_code;
        let console = String::from_utf8_lossy(&std::fs::read(out.join("console.log")).unwrap_or_default()).into_owned();
        match check::guest_verdict(&console) {
            Some(GuestVerdict::Skip(why)) => {
                result.status = Status::Skipped;
                result.reason = Some(why);
                break;
            }
            Some(GuestVerdict::Error(why)) => result.reason = Some(format!("the guest: {why}")),
            None => {}
        }
        let (checks, observed) = check::check(case, out, run.exit_code, &console);
        result.checks = checks;
        result.observed = observed;
        if result.reason.is_none() {
            if let Some(first) = result.checks.iter().find(|c| !c.passed) {
                result.reason = Some(format!("{}: {}", first.name, first.detail));
            }
        }
        result.status = if result.reason.is_none() { Status::Passed } else { Status::Failed };
        break;
    }
    result.duration_s = started.elapsed().as_secs_f64();
    result
}

/// An error and its causes on one line.
fn error_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

struct Context {
    mode: Mode,
    crashvmm: PathBuf,
    test_host: Option<TestHost>,
}

/// The case's directory under `--out`: its number and a file-name-safe form of its name.
fn case_dir(out: &Path, index: usize, case: &Case) -> PathBuf {
    let mut slug: String =
        case.name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    slug.truncate(100);
    out.join(format!("{:03}-{slug}", index + 1))
}

/// Checks the suite, builds each kernel's image, runs the cases and writes the results,
/// saying how it goes on stderr (a progress bar on a terminal).
pub fn run(opts: &Options) -> Result<Summary, SuiteError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let suite = Suite::load(&opts.suite)?;
    let cases = spec::filter(&suite.cases, opts.filter.as_ref());
    if cases.is_empty() {
        let pattern = opts.filter.as_ref().map_or(String::new(), |r| r.as_str().to_string());
        return Err(SuiteError::NoCase { pattern, total: suite.cases.len() });
    }
    let (mode, mode_reason) = match opts.place {
        Where::Auto => Mode::detect(),
        Where::Direct => (Mode::Direct, "--where direct".into()),
        Where::TestHost => (Mode::TestHost, "--where test-host".into()),
    };
    let test_host = match mode {
        Mode::TestHost => Some(TestHost::in_dir(opts.test_host.as_deref().unwrap_or(Path::new("build/images/host")))?),
        Mode::Direct => None,
    };
    let progress = Progress::new(cases.len());
    progress.say(&format!("suite {}: {} cases, {} ({mode_reason})", suite.name, cases.len(), mode.as_str()));

    // Every kernel's image first, and every case checked against it, before anything runs.
    let mut images: BTreeMap<usize, Image> = BTreeMap::new();
    for case in &cases {
        if images.contains_key(&case.kernel) {
            continue;
        }
        let kernel = &suite.kernels[case.kernel];
        progress.say(&format!("image for kernel {}", kernel.name));
        let image = image::build(kernel, &opts.cache, &mut |line| progress.detail(line))?;
        progress.say(&format!(
            "kernel {}: {} (kexec {:?}, module {:?})",
            kernel.name, image.release, image.kexec, image.module
        ));
        images.insert(case.kernel, image);
    }
    for case in &cases {
        let image = &images[&case.kernel];
        if let (DumpMode::Guest, Capability::No(why)) = (case.settings.dump, &image.kexec) {
            return Err(SuiteError::NoKexec {
                kernel: image.kernel.clone(),
                why: why.clone(),
                case: case.name.clone(),
            });
        }
    }
    let kernels = images
        .values()
        .map(|i| KernelRecord {
            name: i.kernel.clone(),
            release: i.release.clone(),
            source: i.source.clone(),
            kexec: i.kexec.clone(),
            module: i.module.clone(),
        })
        .collect();
    let mut summary = Summary {
        suite: suite.name.clone(),
        file: opts.suite.clone(),
        started_at,
        duration_s: 0.0,
        mode,
        mode_reason,
        kernels,
        passed: 0,
        failed: 0,
        skipped: 0,
        cases: Vec::new(),
    };
    std::fs::create_dir_all(&opts.out).map_err(|source| SuiteError::Write { path: opts.out.clone(), source })?;
    if opts.dry_run {
        for case in &cases {
            let s = &case.settings;
            progress.say(&format!(
                "would run {:?}: kernel {}, trigger {}, dump {}, hyperv {}, crash_kexec_post_notifiers {}, {} vCPUs, {} MiB",
                case.name,
                suite.kernels[case.kernel].name,
                case.trigger,
                s.dump.as_str(),
                if s.hyperv { "on" } else { "off" },
                s.crash_kexec_post_notifiers.map_or("default".to_string(), |p| p.to_string()),
                s.vcpus,
                s.memory_mib
            ));
        }
    } else {
        let ctx = Arc::new(Context { mode, crashvmm: opts.crashvmm.clone(), test_host });
        let queue: Arc<Mutex<VecDeque<(usize, Case)>>> =
            Arc::new(Mutex::new(cases.iter().cloned().enumerate().collect()));
        let images = Arc::new(images);
        let (tx, rx) = mpsc::channel();
        let workers: Vec<_> = (0..opts.jobs.clamp(1, cases.len()))
            .map(|_| {
                let (queue, images, ctx, tx, out) =
                    (queue.clone(), images.clone(), ctx.clone(), tx.clone(), opts.out.clone());
                let progress = progress.clone();
                std::thread::spawn(move || loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some((i, case)) = next else { break };
                    progress.start(&case.name);
                    let result = run_case(&case, &images[&case.kernel], &ctx, &case_dir(&out, i, &case));
                    progress.done(&result);
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                })
            })
            .collect();
        drop(tx);
        let mut results: Vec<(usize, CaseResult)> = rx.iter().collect();
        for w in workers {
            let _ = w.join();
        }
        results.sort_by_key(|(i, _)| *i);
        summary.cases = results.into_iter().map(|(_, r)| r).collect();
    }
    progress.finish();
    summary.count();
    summary.duration_s = started.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&summary).expect("the summary serializes");
    let path = opts.out.join("summary.json");
    std::fs::write(&path, json + "\n").map_err(|source| SuiteError::Write { path, source })?;
    let junit = opts.junit.clone().unwrap_or_else(|| opts.out.join("junit.xml"));
    let xml = summary.junit().map_err(SuiteError::Junit)?;
    std::fs::write(&junit, xml).map_err(|source| SuiteError::Write { path: junit, source })?;
    if let Some(path) = &opts.markdown {
        std::fs::write(path, summary.markdown()).map_err(|source| SuiteError::Write { path: path.clone(), source })?;
    }
    Ok(summary)
}

/// Progress on the terminal: a bar with the running cases where stderr is one, else a line
/// per event.
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    running: Arc<Mutex<Vec<String>>>,
    total: usize,
    finished: Arc<Mutex<usize>>,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        });
        Progress { bar, running: Default::default(), total, finished: Default::default() }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("crashvmm test: {line}")),
            None => eprintln!("crashvmm test: {line}"),
        }
    }

    /// A detail (the image build's lines): on the bar only.
    fn detail(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(line.to_string()),
            None => log::debug!("{line}"),
        }
    }

    fn start(&self, name: &str) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.push(name.to_string());
        match &self.bar {
            Some(bar) => bar.set_message(format!("running: {}", running.join(", "))),
            None => eprintln!("crashvmm test: running {name}"),
        }
    }

    fn done(&self, r: &CaseResult) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|n| n != &r.name);
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        *finished += 1;
        let why = r.reason.as_deref().map_or(String::new(), |w| format!(": {w}"));
        let retried = if r.retried.is_some() { " (retried)" } else { "" };
        let line = format!(
            "[{}/{}] {} {} ({:.0} s){retried}{why}",
            *finished,
            self.total,
            r.status.as_str(),
            r.name,
            r.duration_s
        );
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.println(format!("crashvmm test: {line}"));
                bar.set_message(format!("running: {}", running.join(", ")));
            }
            None => eprintln!("crashvmm test: {line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            kernel: "cloud".into(),
            dir: "/img".into(),
            release: "6.1.0-57-cloud-amd64".into(),
            source: String::new(),
            kexec: Capability::Yes,
            module: Capability::No("no headers".into()),
            hyperv: true,
            pvpanic: true,
        }
    }

    fn suite(body: &str) -> Vec<Case> {
        let text = format!("[kernel]\npackage = \"linux-image-cloud-amd64\"\n{body}");
        Suite::parse(Path::new("s.toml"), &text).unwrap().cases
    }

    #[test]
    fn a_case_becomes_a_crashvmm_run_with_its_settings_on_the_command_line() {
        let cases = suite(
            "[[case]]\nname = \"k\"\ntrigger = \"serial-sysrq\"\ncrash_kexec_post_notifiers = 1\nhyperv = \"off\"\ncmdline = \"loglevel=8\"\n\
             [[case]]\nname = \"h\"\ntrigger = \"hardlockup\"\ndump = \"host\"\nvcpus = 4\n",
        );
        let k = run_spec(&cases[0], &image());
        let arg = |spec: &RunSpec, opt: &str| spec.args.iter().position(|a| a == opt).map(|i| spec.args[i + 1].clone());
        assert_eq!(
            arg(&k, "--cmdline").unwrap(),
            "console=ttyS0 panic=-1 crashkernel=192M crash_kexec_post_notifiers=1 crashtest=case crashtest.trigger=serial-sysrq crashtest.kdump=1 loglevel=8"
        );
        assert_eq!(arg(&k, "--hyperv").as_deref(), Some("off"));
        assert_eq!(arg(&k, "--crash-disk").as_deref(), Some("path=crash-disk.img,size=1G"));
        let (marker, cmd) = k.driver.clone().unwrap();
        assert_eq!(
            (marker.as_str(), cmd.as_str()),
            ("CRASHTEST: case: waiting for the host (serial-sysrq)", "ctl sysrq c >$OUT/ctl-sysrq.json")
        );
        let h = run_spec(&cases[1], &image());
        assert!(!arg(&h, "--cmdline").unwrap().contains("crashkernel="));
        assert_eq!(arg(&h, "--crash-disk"), None);
        assert_eq!((arg(&h, "--watchdog").as_deref(), arg(&h, "--on-hang").as_deref()), (Some("10s"), Some("nmi")));
        assert_eq!(arg(&h, "--vcpus").as_deref(), Some("4"));
        assert!(h.driver.is_none());
    }

    #[test]
    fn a_module_trigger_without_the_module_is_skipped_with_the_reason() {
        let case = suite("[[case]]\nname = \"o\"\ntrigger = \"oops\"\n").remove(0);
        let ctx = Context { mode: Mode::Direct, crashvmm: "/nonexistent".into(), test_host: None };
        let dir = tempfile::tempdir().unwrap();
        let r = run_case(&case, &image(), &ctx, dir.path());
        assert_eq!(r.status, Status::Skipped);
        assert_eq!(r.reason.as_deref(), Some("oops needs the crashtest module: no headers"));
    }

    #[test]
    fn only_the_test_hosts_own_failures_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let run = |mode, timed_out, failed: Option<&str>| Run {
            mode,
            exit_code: None,
            timed_out,
            test_host_failed: failed.map(String::from),
            elapsed: Duration::from_secs(420),
        };
        assert!(test_host_fault(&run(Mode::TestHost, true, None), dir.path()).unwrap().contains("timed out"));
        assert!(test_host_fault(&run(Mode::TestHost, false, Some("missing")), dir.path())
            .unwrap()
            .contains("rc missing"));
        assert_eq!(test_host_fault(&run(Mode::Direct, true, None), dir.path()), None);
        assert_eq!(test_host_fault(&run(Mode::TestHost, false, None), dir.path()), None);
        std::fs::write(
            dir.path().join("events.jsonl"),
            "{\"event\":\"crash_detected\",\"trigger\":\"triple_fault\"}\n",
        )
        .unwrap();
        assert!(test_host_fault(&run(Mode::TestHost, false, None), dir.path()).unwrap().contains("triple"));
    }
}
