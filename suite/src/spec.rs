//! Suite files: the TOML a person writes, checked and expanded into the cases to run. Every
//! mistake is found here, before anything is built or booted, and said in one line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::trigger::Trigger;

/// What is wrong with a suite file.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("cannot read suite file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", .path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    name: Option<String>,
    /// `[kernel]` or `[[kernel]]`s.
    kernel: Option<toml::Value>,
    #[serde(flatten)]
    defaults: Settings,
    #[serde(default)]
    case: Vec<CaseFile>,
    matrix: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelFile {
    name: Option<String>,
    package: Option<String>,
    bzimage: Option<PathBuf>,
    modules: Option<PathBuf>,
    build_tree: Option<PathBuf>,
}

/// The settings a case has, each optional where written (suite defaults, a case, a matrix).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    memory: Option<String>,
    vcpus: Option<u32>,
    cmdline: Option<String>,
    timeout: Option<String>,
    hyperv: Option<String>,
    crash_kexec_post_notifiers: Option<u8>,
    dump: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    name: String,
    trigger: Option<String>,
    #[serde(flatten)]
    settings: Settings,
    #[serde(default)]
    expect: ExpectFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    trigger: Option<String>,
    outcome: Option<String>,
    panic_path: Option<Vec<String>>,
    vmcore_dmesg: Option<String>,
    signature: Option<String>,
    panic_to_kexec: Option<String>,
    panic_to_dump: Option<String>,
}

/// Where a case's vmcore comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpMode {
    /// The guest loads a crash kernel (`kexec -p`), whose kdump writes to crashvmm's crash disk.
    Guest,
    /// No crash kernel: crashvmm writes the vmcore from guest memory.
    Host,
}

impl DumpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DumpMode::Guest => "guest",
            DumpMode::Host => "host",
        }
    }
}

/// What a case must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The guest's kdump wrote the dump and crashvmm collected it.
    GuestKdump,
    /// crashvmm wrote a host-side vmcore.
    HostVmcore,
    /// No vmcore.
    None,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::GuestKdump => "guest-kdump",
            Outcome::HostVmcore => "host-vmcore",
            Outcome::None => "none",
        }
    }
}

/// A kernel under test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSpec {
    pub name: String,
    pub source: KernelSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelSource {
    /// A Debian kernel image package or metapackage, fetched as `make images` does.
    Package(String),
    /// A bzImage and its `lib/modules/<release>` directory, and where to build the module.
    Files { bzimage: PathBuf, modules: PathBuf, build_tree: Option<PathBuf> },
}

/// The settings one case runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseSettings {
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Added to the guest's command line.
    pub cmdline: String,
    #[serde(with = "as_secs")]
    pub timeout: Duration,
    pub hyperv: bool,
    /// `crash_kexec_post_notifiers=N` on the command line; `None`: the kernel's default.
    pub crash_kexec_post_notifiers: Option<u8>,
    pub dump: DumpMode,
}

mod as_secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// What a case is checked against (see `check.rs`).
#[derive(Debug, Clone)]
pub struct Expect {
    /// `crash_detected`'s trigger; `None`: any.
    pub trigger: Option<crash_report::Trigger>,
    pub outcome: Outcome,
    /// The panic path exactly, when given.
    pub panic_path: Option<Vec<String>>,
    /// What `makedumpfile --dump-dmesg` must find in the vmcore (when there is one).
    pub vmcore_dmesg: String,
    pub signature: Option<Regex>,
    pub panic_to_kexec: Option<Duration>,
    pub panic_to_dump: Option<Duration>,
}

/// One case to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique in the suite; the kernel's name and the matrix values are part of it.
    pub name: String,
    /// Index into [`Suite::kernels`].
    pub kernel: usize,
    pub trigger: Trigger,
    pub settings: CaseSettings,
    pub expect: Expect,
    /// The matrix values that made it, `axis=value`, for the results table.
    pub axes: Vec<(String, String)>,
}

/// A checked suite.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    pub path: PathBuf,
    pub kernels: Vec<KernelSpec>,
    pub cases: Vec<Case>,
}

/// The events a panic path is made of (the kernel's steps as crashvmm sees them), in the
/// names of `events.jsonl`, up to the crash kernel's start (`crash_kernel_started`: Hyper-V set
/// up again after the kexec or, without Hyper-V, the crash kernel's first write to the crash
/// disk during the crash).
pub const PANIC_PATH_EVENTS: &[&str] =
    &["pvpanic", "hv_crash", "vmbus_unload_requested", "vmbus_unload_completed", "guest_kexec", "crash_kernel_started"];

const MATRIX_AXES: &[&str] = &["trigger", "crash_kexec_post_notifiers", "hyperv", "dump", "vcpus", "memory"];

/// The room a crash kernel gets (`crashkernel=`), and the least memory a guest with one needs.
pub const CRASHKERNEL_MIB: u64 = 192;
const MIN_KDUMP_GUEST_MIB: u64 = 512;

impl Suite {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Suite, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_owned(), source })?;
        Suite::parse(path, &text)
    }

    /// Checks a suite file's text (`path` names it in errors and anchors its relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Suite, SpecError> {
        let file: SuiteFile = toml::from_str(text).map_err(|e| syntax(path, text, &e))?;
        let invalid = |message: String| SpecError::Invalid { path: path.to_owned(), message };
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let kernels = kernels(file.kernel, base).map_err(invalid)?;
        let defaults = file.defaults;
        let matrix = matrix(file.matrix.as_ref()).map_err(invalid)?;
        let mut bases = file.case;
        if bases.is_empty() {
            if !matrix.iter().any(|(axis, _)| axis == "trigger") {
                return Err(invalid("no cases: add [[case]] sections, or a [matrix] with a trigger list".into()));
            }
            bases.push(CaseFile {
                name: "case".into(),
                trigger: None,
                settings: Settings::default(),
                expect: Default::default(),
            });
        }
        let mut cases = Vec::new();
        for base_case in &bases {
            for axis in matrix.iter().map(|(a, _)| a.as_str()) {
                let set = match axis {
                    "trigger" => base_case.trigger.is_some(),
                    _ => setting_is_set(&base_case.settings, axis),
                };
                if set {
                    return Err(invalid(format!("case '{}' sets {axis}, which [matrix] varies", base_case.name)));
                }
            }
            for combo in combinations(&matrix) {
                for (k, kernel) in kernels.iter().enumerate() {
                    let case = build_case(&defaults, base_case, &combo, k, kernel, kernels.len() > 1)
                        .map_err(|m| invalid(format!("case '{}': {m}", base_case.name)))?;
                    cases.push(case);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = cases.iter().find(|c| !seen.insert(c.name.clone())) {
            return Err(invalid(format!("two cases are named '{}'", dup.name)));
        }
        let name = file.name.unwrap_or_else(|| {
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "suite".into())
        });
        Ok(Suite { name, path: path.to_owned(), kernels, cases })
    }
}

/// A TOML error in one line: where, and what.
fn syntax(path: &Path, text: &str, e: &toml::de::Error) -> SpecError {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, column)
        }
        None => (0, 0),
    };
    let message = e.message().lines().next().unwrap_or("syntax error").trim().to_string();
    SpecError::Syntax { path: path.to_owned(), line, column, message }
}

fn kernels(kernel: Option<toml::Value>, base: &Path) -> Result<Vec<KernelSpec>, String> {
    let one = |v: toml::Value| KernelFile::deserialize(v).map_err(|e| format!("[kernel]: {}", one_line(e.message())));
    let list = match kernel {
        None => Vec::new(),
        Some(toml::Value::Array(v)) => v.into_iter().map(one).collect::<Result<_, _>>()?,
        Some(v @ toml::Value::Table(_)) => vec![one(v)?],
        Some(_) => return Err("kernel must be a [kernel] table or [[kernel]] tables".into()),
    };
    if list.is_empty() {
        return Err("no [kernel]: name a Debian kernel package (package = ...) or a bzimage and its modules".into());
    }
    let mut out = Vec::new();
    for k in list {
        let resolve = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
        let source = match (&k.package, &k.bzimage, &k.modules) {
            (Some(p), None, None) if k.build_tree.is_none() => {
                if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                    return Err(format!("[kernel] package '{p}' is not a Debian package name"));
                }
                KernelSource::Package(p.clone())
            }
            (None, Some(b), Some(m)) => {
                let (bzimage, modules) = (resolve(b), resolve(m));
                if !bzimage.is_file() {
                    return Err(format!("[kernel] bzimage {} does not exist", bzimage.display()));
                }
                if !modules.is_dir() {
                    return Err(format!("[kernel] modules {} is not a directory", modules.display()));
                }
                let build_tree = k.build_tree.as_ref().map(resolve);
                if let Some(t) = build_tree.as_ref().filter(|t| !t.is_dir()) {
                    return Err(format!("[kernel] build_tree {} is not a directory", t.display()));
                }
                KernelSource::Files { bzimage, modules, build_tree }
            }
            (None, Some(_), None) => return Err("[kernel] bzimage needs modules (its lib/modules/<release>)".into()),
            _ => return Err("[kernel] needs either package, or bzimage and modules (not both)".into()),
        };
        let name = k.name.clone().unwrap_or_else(|| match &source {
            KernelSource::Package(p) => p.clone(),
            KernelSource::Files { modules, .. } => {
                modules.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "kernel".into())
            }
        });
        if out.iter().any(|o: &KernelSpec| o.name == name) {
            return Err(format!("two kernels are named '{name}' (give each a name)"));
        }
        out.push(KernelSpec { name, source });
    }
    Ok(out)
}

/// The matrix's axes in the order written, each with its values as text.
fn matrix(table: Option<&toml::Table>) -> Result<Vec<(String, Vec<String>)>, String> {
    let Some(table) = table else { return Ok(Vec::new()) };
    let mut axes = Vec::new();
    for (axis, values) in table {
        if !MATRIX_AXES.contains(&axis.as_str()) {
            return Err(format!("[matrix] has no axis '{axis}' (axes: {})", MATRIX_AXES.join(", ")));
        }
        let toml::Value::Array(values) = values else {
            return Err(format!("[matrix] {axis} must be a list, e.g. {axis} = [...]"));
        };
        if values.is_empty() {
            return Err(format!("[matrix] {axis} is an empty list"));
        }
        let mut texts = Vec::new();
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => return Err(format!("[matrix] {axis}: {other} is neither a string nor a number")),
            };
            if texts.contains(&text) {
                return Err(format!("[matrix] {axis} lists {text} twice"));
            }
            texts.push(text);
        }
        axes.push((axis.clone(), texts));
    }
    Ok(axes)
}

/// Every combination of the axes' values (one empty combination without a matrix).
fn combinations(axes: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out = vec![Vec::new()];
    for (axis, values) in axes {
        out = out
            .into_iter()
            .flat_map(|combo: Vec<(String, String)>| {
                values.iter().map(move |v| {
                    let mut c = combo.clone();
                    c.push((axis.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    out
}

fn setting_is_set(s: &Settings, axis: &str) -> bool {
    match axis {
        "memory" => s.memory.is_some(),
        "vcpus" => s.vcpus.is_some(),
        "hyperv" => s.hyperv.is_some(),
        "crash_kexec_post_notifiers" => s.crash_kexec_post_notifiers.is_some(),
        "dump" => s.dump.is_some(),
        _ => false,
    }
}

fn parse_memory(text: &str) -> Result<u64, String> {
    let bad = || format!("memory '{text}' is not <N>M or <N>G");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = text[..split].parse().map_err(|_| bad())?;
    let mib = match &text[split..] {
        "M" | "MiB" => n,
        "G" | "GiB" => n * 1024,
        _ => return Err(bad()),
    };
    if !(128..=64 * 1024).contains(&mib) {
        return Err(format!("memory {text} is outside 128M..64G"));
    }
    Ok(mib)
}

fn parse_duration(what: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{what} '{text}' is not a duration like 90s or 5m ({e})"))
}

fn build_case(
    defaults: &Settings,
    base: &CaseFile,
    combo: &[(String, String)],
    kernel: usize,
    kernel_spec: &KernelSpec,
    several_kernels: bool,
) -> Result<Case, String> {
    let axis = |name: &str| combo.iter().find(|(a, _)| a == name).map(|(_, v)| v.clone());
    let s = &base.settings;
    let trigger_text = axis("trigger").or_else(|| base.trigger.clone()).ok_or("no trigger")?;
    let trigger = Trigger::parse(&trigger_text).ok_or_else(|| {
        let known: Vec<&str> = Trigger::ALL.iter().map(|t| t.as_str()).collect();
        format!("unknown trigger '{trigger_text}' (known: {})", known.join(", "))
    })?;
    let memory = axis("memory").or_else(|| s.memory.clone()).or_else(|| defaults.memory.clone());
    let memory_mib = parse_memory(memory.as_deref().unwrap_or("768M"))?;
    let vcpus = match axis("vcpus") {
        Some(v) => v.parse().map_err(|_| format!("vcpus '{v}' is not a number"))?,
        None => s.vcpus.or(defaults.vcpus).unwrap_or(2),
    };
    if !(1..=64).contains(&vcpus) {
        return Err(format!("vcpus {vcpus} is outside 1..64"));
    }
    let hyperv = match axis("hyperv").or_else(|| s.hyperv.clone()).or_else(|| defaults.hyperv.clone()).as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => return Err(format!("hyperv '{other}' is neither on nor off")),
    };
    let post = match axis("crash_kexec_post_notifiers") {
        Some(v) => Some(v.parse::<u8>().map_err(|_| format!("crash_kexec_post_notifiers '{v}' is not 0 or 1"))?),
        None => s.crash_kexec_post_notifiers.or(defaults.crash_kexec_post_notifiers),
    };
    if post.is_some_and(|p| p > 1) {
        return Err(format!("crash_kexec_post_notifiers {} is not 0 or 1", post.unwrap_or(0)));
    }
    let dump = match axis("dump").or_else(|| s.dump.clone()).or_else(|| defaults.dump.clone()).as_deref() {
        None | Some("guest") => DumpMode::Guest,
        Some("host") => DumpMode::Host,
        Some(other) => return Err(format!("dump '{other}' is neither guest (kdump in the guest) nor host")),
    };
    if dump == DumpMode::Guest && memory_mib < MIN_KDUMP_GUEST_MIB {
        return Err(format!(
            "memory {memory_mib}M leaves no room for crashkernel={CRASHKERNEL_MIB}M (dump = guest needs at least {MIN_KDUMP_GUEST_MIB}M)"
        ));
    }
    let timeout = match s.timeout.as_ref().or(defaults.timeout.as_ref()) {
        Some(t) => parse_duration("timeout", t)?,
        None => Duration::from_secs(420),
    };
    let cmdline =
        [defaults.cmdline.as_deref(), s.cmdline.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
    if cmdline.contains("crashtest=") || cmdline.contains("crashtest.") {
        return Err("cmdline must not set crashtest= or crashtest.* (the case does)".into());
    }
    let e = &base.expect;
    let expect_trigger = match e.trigger.as_deref() {
        Some(t) => Some(serde_json::from_value(serde_json::Value::String(t.into())).map_err(|_| {
            format!(
                "expect.trigger '{t}' is not a crashvmm trigger (pvpanic, hv_crash, crash_kernel, nmi_injection, \
                 guest_hang, ...)"
            )
        })?),
        None => trigger.default_crash_trigger(),
    };
    let outcome = match e.outcome.as_deref() {
        None => match dump {
            DumpMode::Guest => Outcome::GuestKdump,
            DumpMode::Host => Outcome::HostVmcore,
        },
        Some("guest-kdump") => Outcome::GuestKdump,
        Some("host-vmcore") => Outcome::HostVmcore,
        Some("none") => Outcome::None,
        Some(other) => return Err(format!("expect.outcome '{other}' is not guest-kdump, host-vmcore or none")),
    };
    if let Some(bad) = e.panic_path.iter().flatten().find(|p| !PANIC_PATH_EVENTS.contains(&p.as_str())) {
        return Err(format!("expect.panic_path: '{bad}' is not a panic-path event ({})", PANIC_PATH_EVENTS.join(", ")));
    }
    let signature = match &e.signature {
        Some(r) => Some(Regex::new(r).map_err(|err| format!("expect.signature: {}", one_line(&err.to_string())))?),
        None => None,
    };
    let dur = |what: &str, v: &Option<String>| v.as_deref().map(|t| parse_duration(what, t)).transpose();
    let expect = Expect {
        trigger: expect_trigger,
        outcome,
        panic_path: e.panic_path.clone(),
        vmcore_dmesg: e.vmcore_dmesg.clone().unwrap_or_else(|| "Kernel panic - not syncing".into()),
        signature,
        panic_to_kexec: dur("expect.panic_to_kexec", &e.panic_to_kexec)?,
        panic_to_dump: dur("expect.panic_to_dump", &e.panic_to_dump)?,
    };
    if expect.panic_to_kexec.is_some() && dump == DumpMode::Host {
        return Err("expect.panic_to_kexec needs dump = guest (no kexec without a crash kernel)".into());
    }
    let mut axes: Vec<(String, String)> = combo.to_vec();
    let mut name = if base.trigger.is_none() && base.name == "case" { String::new() } else { base.name.clone() };
    let mut parts: Vec<String> = combo.iter().map(|(a, v)| format!("{a}={v}")).collect();
    if several_kernels {
        parts.insert(0, format!("kernel={}", kernel_spec.name));
        axes.insert(0, ("kernel".into(), kernel_spec.name.clone()));
    }
    if !parts.is_empty() {
        if !name.is_empty() {
            name.push(' ');
        }
        name.push_str(&parts.join(" "));
    }
    Ok(Case {
        name,
        kernel,
        trigger,
        settings: CaseSettings { memory_mib, vcpus, cmdline, timeout, hyperv, crash_kexec_post_notifiers: post, dump },
        expect,
        axes,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The cases whose name the filter finds (a regular expression).
pub fn filter(cases: &[Case], pattern: Option<&Regex>) -> Vec<Case> {
    cases.iter().filter(|c| pattern.is_none_or(|p| p.is_match(&c.name))).cloned().collect()
}

/// The matrix values of a case as a map, for the results.
pub fn axes_map(case: &Case) -> BTreeMap<String, String> {
    case.axes.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Suite, String> {
        Suite::parse(Path::new("/nonexistent/s.toml"), text).map_err(|e| e.to_string())
    }

    const KERNEL: &str = "[kernel]\npackage = \"linux-image-cloud-amd64\"\n";

    /// The smoke suite (make test) parses, with its plain-KVM kdump case: Hyper-V off,
    /// crash_kexec_post_notifiers=0, the crash seen at the crash kernel's write.
    #[test]
    fn the_smoke_suite_parses_with_its_plain_kvm_kdump_case() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../suites/smoke.toml");
        let s = Suite::load(&path).unwrap();
        assert_eq!(s.cases.len(), 5);
        let c = s.cases.iter().find(|c| c.name == "sysrq-c guest-kdump hyperv-off").unwrap();
        assert_eq!(
            (c.trigger, c.settings.hyperv, c.settings.crash_kexec_post_notifiers),
            (Trigger::SysrqC, false, Some(0))
        );
        assert_eq!((c.settings.dump, c.expect.outcome), (DumpMode::Guest, Outcome::GuestKdump));
        assert_eq!(c.expect.trigger, Some(crash_report::Trigger::CrashKernel));
        assert_eq!(c.expect.panic_path.as_deref().unwrap(), ["crash_kernel_started"]);
    }

    #[test]
    fn cases_take_the_suite_defaults_and_their_own_settings() {
        let s = parse(&format!(
            "memory = \"1G\"\nhyperv = \"off\"\ncmdline = \"quiet\"\n{KERNEL}\
             [[case]]\nname = \"a\"\ntrigger = \"sysrq-c\"\n\
             [[case]]\nname = \"b\"\ntrigger = \"oops\"\ndump = \"host\"\nvcpus = 4\ncmdline = \"loglevel=7\"\n\
             [case.expect]\nsignature = \"^BUG\"\npanic_path = [\"pvpanic\", \"hv_crash\"]\n"
        ))
        .unwrap();
        assert_eq!(s.name, "s");
        assert_eq!(s.cases.len(), 2);
        let (a, b) = (&s.cases[0], &s.cases[1]);
        assert_eq!((a.name.as_str(), a.settings.memory_mib, a.settings.hyperv), ("a", 1024, false));
        assert_eq!((a.settings.dump, a.expect.outcome), (DumpMode::Guest, Outcome::GuestKdump));
        assert_eq!((b.settings.dump, b.expect.outcome, b.settings.vcpus), (DumpMode::Host, Outcome::HostVmcore, 4));
        assert_eq!(b.settings.cmdline, "quiet loglevel=7");
        assert!(b.expect.signature.as_ref().unwrap().is_match("BUG: kernel NULL pointer"));
        assert_eq!(b.expect.panic_path.as_deref().unwrap(), ["pvpanic", "hv_crash"]);
        assert_eq!(a.settings.timeout, Duration::from_secs(420));
    }

    #[test]
    fn a_matrix_expands_every_combination_on_every_kernel() {
        let s = parse(
            "[[kernel]]\nname = \"cloud\"\npackage = \"linux-image-cloud-amd64\"\n\
             [[kernel]]\nname = \"generic\"\npackage = \"linux-image-amd64\"\n\
             [matrix]\ntrigger = [\"sysrq-c\", \"oops\", \"nmi-unknown\"]\ncrash_kexec_post_notifiers = [0, 1]\nhyperv = [\"on\", \"off\"]\n",
        )
        .unwrap();
        assert_eq!(s.cases.len(), 3 * 2 * 2 * 2);
        let names: std::collections::HashSet<_> = s.cases.iter().map(|c| c.name.clone()).collect();
        assert_eq!(names.len(), s.cases.len());
        let c =
            s.cases.iter().find(|c| c.name == "kernel=generic trigger=oops crash_kexec_post_notifiers=1 hyperv=off");
        let c = c.unwrap_or_else(|| panic!("{names:?}"));
        assert_eq!(
            (c.kernel, c.trigger, c.settings.crash_kexec_post_notifiers, c.settings.hyperv),
            (1, Trigger::Oops, Some(1), false)
        );
        let nmi = s.cases.iter().find(|c| c.trigger == Trigger::NmiUnknown).unwrap();
        assert_eq!(nmi.expect.trigger, Some(crash_report::Trigger::NmiInjection));
    }

    #[test]
    fn every_mistake_is_one_line_naming_it() {
        let cases = [
            ("", "no [kernel]"),
            ("[kernel]\npackage = \"linux image\"\n[[case]]\nname=\"a\"\ntrigger=\"oops\"\n", "not a Debian package name"),
            ("[kernel]\nbzimage = \"/no/such/bzImage\"\nmodules = \"/tmp\"\n[[case]]\nname=\"a\"\ntrigger=\"oops\"\n", "bzimage /no/such/bzImage does not exist"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"explode\"\n"), "unknown trigger 'explode' (known: sysrq-c"),
            (&format!("{KERNEL}[matrix]\ncolour = [\"red\"]\n"), "[matrix] has no axis 'colour'"),
            (&format!("{KERNEL}[matrix]\ntrigger = \"oops\"\n"), "[matrix] trigger must be a list"),
            (&format!("{KERNEL}[matrix]\ntrigger = []\n"), "[matrix] trigger is an empty list"),
            (&format!("{KERNEL}[matrix]\ntrigger = [\"oops\"]\nhyperv = [\"on\", \"sideways\"]\n"), "hyperv 'sideways' is neither on nor off"),
            (&format!("{KERNEL}[matrix]\ntrigger = [\"oops\"]\ncrash_kexec_post_notifiers = [0, 2]\n"), "is not 0 or 1"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\n[matrix]\ntrigger = [\"bug\"]\n"), "case 'a' sets trigger, which [matrix] varies"),
            (&format!("hyperv = \"off\"\n{KERNEL}"), "no cases"),
            (&format!("{KERNEL}hyperv = \"off\"\n"), "[kernel]: unknown field `hyperv`"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\nmemory = \"256M\"\n"), "no room for crashkernel=192M"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\n[[case]]\nname = \"a\"\ntrigger = \"bug\"\n"), "two cases are named 'a'"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\nwhatever = 1\n"), "unknown field"),
            (&format!("{KERNEL}[[case]\nname = \"a\"\n"), "/nonexistent/s.toml:3:"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\n[case.expect]\nsignature = \"(\"\n"), "expect.signature"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\n[case.expect]\npanic_path = [\"boom\"]\n"), "'boom' is not a panic-path event"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\n[case.expect]\ntrigger = \"boom\"\n"), "is not a crashvmm trigger"),
            (&format!("{KERNEL}[[case]]\nname = \"a\"\ntrigger = \"oops\"\ndump = \"host\"\n[case.expect]\npanic_to_kexec = \"30s\"\n"), "needs dump = guest"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn a_filter_is_a_regular_expression_on_case_names() {
        let s = parse(&format!("{KERNEL}[matrix]\ntrigger = [\"oops\", \"bug\", \"sysrq-c\"]\n")).unwrap();
        let re = Regex::new("oops|bug").unwrap();
        let names: Vec<String> = filter(&s.cases, Some(&re)).into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["trigger=oops", "trigger=bug"]);
        assert_eq!(filter(&s.cases, None).len(), 3);
    }
}
