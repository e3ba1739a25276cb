//! `crashvmm report DIR`: a short human summary of a crash directory's `report.json`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use crash_report as cr;

use crate::printable::escape;

/// The crash directory at `dir`, or the newest one inside it.
fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join("report.json").is_file() {
        return Ok(dir.to_owned());
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("report.json").is_file())
        // Not a temporary a killed crashvmm left (`.tmp-*`), nor an operator's dump (`*-dump`).
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.') && !n.to_string_lossy().contains("-dump"))
        })
        .collect();
    dirs.sort();
    match dirs.pop() {
        Some(d) => Ok(d),
        None => bail!("{} holds no crash report (no report.json)", dir.display()),
    }
}

/// A value for a person: text with its control characters escaped, `?` for a missing one.
fn show(v: Option<&str>) -> String {
    v.map_or("?".into(), |s| escape(s).into_owned())
}

/// A number (or anything else shown as it is) for a person, `?` for a missing one.
fn num(v: Option<impl std::fmt::Display>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// A host-side vmcore's dump level and what it left out.
fn filtered(v: &cr::Vmcore) -> String {
    let Some(level) = v.dump_level else { return String::new() };
    let f = v.filter.as_ref();
    match (f.and_then(|f| f.total_pages), f.and_then(cr::VmcoreFilter::written_pages)) {
        (Some(t), Some(w)) if t > 0 => {
            format!(
                ", dump level {level}: {} of {t} pages written with their data ({:.0}% left out)",
                w,
                100.0 - w as f64 * 100.0 / t as f64
            )
        }
        _ => format!(", dump level {level}"),
    }
}

/// The summary text for the report at `dir`. Whatever `report.json` holds (missing keys, other
/// types, not an object), what is there is shown, and text that came from the guest is printed
/// with its control characters escaped: a key missing or of another type reads as absent
/// ([`crash_report`]) and shows as `?`.
pub fn render(dir: &Path) -> Result<String> {
    let dir = resolve(dir)?;
    let path = dir.join("report.json");
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = String::new();
    let _ = writeln!(out, "crash report {}", escape(&dir.display().to_string()));
    let r: cr::Report = match cr::from_slice(&text) {
        Ok(r) => r,
        Err(cr::ReportError::NotAnObject(v)) => {
            let v = match v {
                serde_json::Value::String(s) => escape(&s).into_owned(),
                serde_json::Value::Null => "?".into(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "  report.json is not an object: {v}");
            return Ok(out);
        }
        Err(e) => return Err(e).with_context(|| format!("{} is not a crash report", path.display())),
    };
    let _ = writeln!(
        out,
        "  crash        #{} at {}, trigger {}",
        num(r.crash_number),
        show(r.detected_at.as_deref()),
        show(r.trigger.map(cr::Trigger::as_str))
    );
    let _ = writeln!(out, "  outcome      {}", show(r.outcome.as_deref()));
    if let Some(sig) = &r.signature {
        let _ = writeln!(out, "  signature    {}  {}", show(sig.id.as_deref()), show(sig.title.as_deref()));
    }
    let g = r.guest.unwrap_or_default();
    let release = g.kernel_release.as_deref().map_or("unknown".into(), escape);
    let memory = num(g.machine.memory_bytes.map(|b| b >> 20));
    let _ = writeln!(out, "  guest        Linux {release}, {} vCPUs, {memory} MiB", num(g.machine.vcpus));
    let p = r.policy.unwrap_or_default();
    let _ = writeln!(
        out,
        "  policy       on-panic {}, after-crash {}, host-dump {}",
        show(p.on_panic.map(|v| v.as_str())),
        show(p.after_crash.map(|v| v.as_str())),
        show(p.host_dump.map(|v| v.as_str()))
    );
    if let Some(pv) = &r.pvpanic {
        let _ = writeln!(out, "  pvpanic      bits {} (vCPU {})", num(pv.bits), num(pv.vcpu));
    }
    if let Some(v) = &r.vmbus {
        let latency = v.unload_latency_us.map_or("not answered".into(), |us| format!("answered in {us} us"));
        let _ = writeln!(out, "  vmbus        UNLOAD {latency}");
    }
    match &r.vmcore {
        None => {
            let why = r.vmcore_error.as_deref().map_or("none taken".into(), escape);
            let _ = writeln!(out, "  vmcore       none: {why}");
        }
        Some(v) => {
            let file =
                v.path.as_deref().map_or("?".into(), |p| escape(&dir.join(p).display().to_string()).into_owned());
            let _ = writeln!(
                out,
                "  vmcore       {file} ({} bytes, {} on disk, {} ms){}",
                num(v.bytes),
                num(v.allocated_bytes),
                num(v.duration_ms),
                v.sha256.as_deref().map_or(String::new(), |h| format!(", sha256 {}", escape(h)))
            );
            if let Some(format) = v.format {
                let _ = writeln!(out, "               {}{}", format.as_str(), filtered(v));
            }
        }
    }
    if let Some(a) = &r.analysis {
        analysis(&mut out, a, &dir);
    }
    // The Hyper-V crash message, when the guest's memory gave no panic of its own.
    let panic_shown = r.analysis.as_ref().is_some_and(|a| a.panic.is_some());
    if let Some(msg) = r.hyperv_crash.as_ref().and_then(|h| h.message.as_deref()).filter(|_| !panic_shown) {
        let _ = writeln!(out, "  guest's last kernel messages (Hyper-V crash message):");
        let lines: Vec<&str> = msg.lines().filter(|l| !l.trim().is_empty()).collect();
        let panic_at = lines.iter().position(|l| l.contains("Kernel panic")).unwrap_or(lines.len().saturating_sub(8));
        for l in lines.iter().skip(panic_at.saturating_sub(4)).take(8) {
            let _ = writeln!(out, "    {}", escape(l));
        }
    }
    Ok(out)
}

/// Most frames shown of the panicking vCPU's stack.
const FRAMES_SHOWN: usize = 16;

/// What the analysis read from guest memory: the kernel, the panic and its task, and the
/// stack of the vCPU that panicked (or, for a hang, what each vCPU runs).
fn analysis(out: &mut String, a: &cr::analysis::Analysis, dir: &Path) {
    if let Some(id) = &a.identity {
        let _ = writeln!(
            out,
            "  kernel       {} {} on {}{}",
            show(id.release.as_deref()),
            show(id.version.as_deref()),
            show(id.hostname.as_deref()),
            id.taint.as_deref().map_or(String::new(), |t| format!(", tainted {}", escape(t)))
        );
    }
    let p = a.panic.as_ref();
    if let Some(p) = p {
        let _ = writeln!(out, "  panic        {}", show(p.message.as_deref()));
        if let Some(c) = p.cause.as_deref().filter(|c| Some(*c) != p.message.as_deref()) {
            let _ = writeln!(out, "  cause        {}", escape(c));
        }
        let _ = writeln!(out, "  task         {} (pid {}) on CPU {}", show(p.comm.as_deref()), num(p.pid), num(p.cpu));
    }
    // The panicking CPU's stack; without a panic, every CPU's top (a hang).
    match p.and_then(|p| p.cpu).and_then(|c| a.cpus.iter().find(|s| s.cpu == c)) {
        Some(s) => {
            let _ = writeln!(out, "  stack        CPU {} ({}, registers from {}):", s.cpu, s.unwinder, s.registers);
            for f in s.frames.iter().take(FRAMES_SHOWN) {
                let sym =
                    f.symbol.as_deref().map_or_else(|| escape(&f.address).into_owned(), |s| escape(s).into_owned());
                let module = f.module.as_deref().map_or(String::new(), |m| format!(" [{}]", escape(m)));
                let _ = writeln!(out, "    {}{sym}{module}", if f.reliable { "" } else { "? " });
            }
            if s.frames.len() > FRAMES_SHOWN {
                let _ = writeln!(out, "    ... {} more in report.json", s.frames.len() - FRAMES_SHOWN);
            }
        }
        None => {
            for s in &a.cpus {
                let _ = writeln!(out, "  CPU {:<8} running {}", s.cpu, show(s.running.as_deref()));
            }
        }
    }
    if !a.blocked_tasks.is_empty() {
        let _ = writeln!(out, "  blocked      {} tasks in D state (report.json)", a.blocked_tasks.len());
    }
    for u in &a.unread {
        let _ = writeln!(out, "  unread       {}: {}", escape(&u.what), escape(&u.why));
    }
    if dir.join(super::report::DMESG).is_file() {
        let _ = writeln!(
            out,
            "  kernel log   {} ({} records)",
            escape(&dir.join(super::report::DMESG).display().to_string()),
            a.log_records
        );
    }
}

/// Print the summary; a closed stdout (`crashvmm report DIR | head -1`) is a `BrokenPipe` error,
/// which `main` takes for a quiet end.
pub fn print(dir: &Path) -> Result<()> {
    let text = render(dir)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_the_newest_report() {
        let base = tempfile::tempdir().unwrap();
        for (name, trigger) in [("20261125T000000Z-001", "old"), ("20261125T000001Z-002", "pvpanic")] {
            let d = base.path().join(name);
            std::fs::create_dir(&d).unwrap();
            let r = serde_json::json!({
                "crash_number": 2, "detected_at": "t", "trigger": trigger, "outcome": "host-side vmcore written",
                "guest": {"kernel_release": "6.1.0-56-cloud-amd64", "vcpus": 2, "memory_bytes": 805306368u64},
                "policy": {"on_panic": "auto", "after_crash": "exit", "host_dump": "fallback"},
                "pvpanic": {"bits": 1, "vcpu": 1}, "vmbus": {"unload_latency_us": 812},
                "vmcore": {"path": "vmcore", "bytes": 10, "allocated_bytes": 4, "duration_ms": 3, "sha256": "ab",
                           "format": "kdump-compressed", "dump_level": 31,
                           "filter": {"total_pages": 200, "data_pages": 20}},
                "signature": {"id": "0123456789abcdef", "title": "kernel panic: sysrq triggered crash"},
                "hyperv_crash": {"message": "[1] a\\n[2] Kernel panic - not syncing: sysrq triggered crash\\n[3] b\\n"},
            });
            std::fs::write(d.join("report.json"), r.to_string()).unwrap();
        }
        // Newer, but no crash directories: an operator's dump and a killed run's temporary.
        for name in ["20261125T000002.000Z-dump", ".tmp-20261125T000003Z-003-42"] {
            std::fs::create_dir(base.path().join(name)).unwrap();
            std::fs::write(base.path().join(name).join("report.json"), r#"{"trigger": "operator"}"#).unwrap();
        }
        let text = render(base.path()).unwrap();
        assert!(text.contains("trigger pvpanic"), "{text}");
        assert!(text.contains("Linux 6.1.0-56-cloud-amd64, 2 vCPUs, 768 MiB"), "{text}");
        assert!(text.contains("UNLOAD answered in 812 us"), "{text}");
        assert!(text.contains("sysrq triggered crash"), "{text}");
        assert!(text.contains("signature    0123456789abcdef  kernel panic: sysrq triggered crash"), "{text}");
        assert!(
            text.contains("kdump-compressed, dump level 31: 20 of 200 pages written with their data (90% left out)"),
            "{text}"
        );
        assert!(render(&base.path().join("nope")).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(render(empty.path()).unwrap_err().to_string().contains("no crash report"));
    }

    /// Whatever report.json holds, the summary shows what is there and never panics; the
    /// guest's text reaches the terminal with its control characters escaped.
    #[test]
    fn any_report_content_is_summarized_without_panic_or_terminal_escapes() {
        let reports = [
            serde_json::json!({"pvpanic": {}, "signature": {}, "vmbus": {}, "vmcore": {}}),
            serde_json::json!({"pvpanic": 1, "signature": "x", "vmbus": [], "vmcore": true, "guest": 3,
                               "policy": null, "hyperv_crash": {"message": 7}, "filter": "x"}),
            serde_json::json!({"vmcore": {"format": 5, "dump_level": "31", "filter": {"total_pages": 0}}}),
            serde_json::json!([1, 2]),
            serde_json::json!("report"),
            serde_json::json!(null),
            serde_json::json!({}),
        ];
        for r in reports {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("report.json"), r.to_string()).unwrap();
            let text = render(d.path()).unwrap();
            assert!(text.starts_with("crash report "), "{r}: {text}");
        }
        let d = tempfile::tempdir().unwrap();
        let r = serde_json::json!({
            "trigger": "pvpanic", "outcome": "done\u{1b}[2J",
            "signature": {"id": "ab", "title": "BUG: \u{1b}]0;pwned\u{7}title"},
            "guest": {"kernel_release": "6.1\u{9b}31m"},
            "vmcore_error": "no\rspace",
            "hyperv_crash": {"message": "[1] Kernel panic - not syncing: \u{1b}[31mred\n[2] next\r\n"},
        });
        std::fs::write(d.path().join("report.json"), r.to_string()).unwrap();
        let text = render(d.path()).unwrap();
        assert!(!text.contains(['\u{1b}', '\u{7}', '\u{9b}', '\r']), "{text:?}");
        assert!(text.contains("signature    ab  BUG: \\u{1b}]0;pwned\\u{7}title"), "{text}");
        assert!(text.contains("Linux 6.1\\u{9b}31m"), "{text}");
        assert!(text.contains("none: no\\rspace"), "{text}");
        assert!(text.contains("    [1] Kernel panic - not syncing: \\u{1b}[31mred\n    [2] next\n"), "{text}");
    }
}
