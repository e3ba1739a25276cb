//! `crashvmm report DIR`: a short human summary of a crash directory's `report.json`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

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

/// A value for a person: text with its control characters escaped, `?` for a missing one,
/// anything else as JSON (which escapes control characters itself).
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s).into_owned(),
        Value::Null => "?".into(),
        other => other.to_string(),
    }
}

/// A host-side vmcore's dump level and what it left out.
fn filtered(v: &Value) -> String {
    let Some(level) = v["dump_level"].as_u64() else { return String::new() };
    let f = &v["filter"];
    let (total, written) = (f["total_pages"].as_u64(), f["data_pages"].as_u64().or(f["kept_pages"].as_u64()));
    match (total, written) {
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
/// with its control characters escaped. Indexing a [`Value`] gives `Null` for a missing key or
/// a value of another type, never a panic.
pub fn render(dir: &Path) -> Result<String> {
    let dir = resolve(dir)?;
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let r: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let s = show;
    let mut out = String::new();
    let _ = writeln!(out, "crash report {}", escape(&dir.display().to_string()));
    if !r.is_object() {
        let _ = writeln!(out, "  report.json is not an object: {}", show(&r));
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "  crash        #{} at {}, trigger {}",
        s(&r["crash_number"]),
        s(&r["detected_at"]),
        s(&r["trigger"])
    );
    let _ = writeln!(out, "  outcome      {}", s(&r["outcome"]));
    let sig = &r["signature"];
    if !sig.is_null() {
        let _ = writeln!(out, "  signature    {}  {}", s(&sig["id"]), s(&sig["title"]));
    }
    let g = &r["guest"];
    let release = g["kernel_release"].as_str().map_or("unknown".into(), escape);
    let memory = g["memory_bytes"].as_u64().map_or("?".into(), |b| (b >> 20).to_string());
    let _ = writeln!(out, "  guest        Linux {release}, {} vCPUs, {memory} MiB", s(&g["vcpus"]));
    let p = &r["policy"];
    let _ = writeln!(
        out,
        "  policy       on-panic {}, after-crash {}, host-dump {}",
        s(&p["on_panic"]),
        s(&p["after_crash"]),
        s(&p["host_dump"])
    );
    let pv = &r["pvpanic"];
    if !pv.is_null() {
        let _ = writeln!(out, "  pvpanic      bits {} (vCPU {})", s(&pv["bits"]), s(&pv["vcpu"]));
    }
    let v = &r["vmbus"];
    if !v.is_null() {
        let latency =
            v["unload_latency_us"].as_u64().map_or("not answered".into(), |us| format!("answered in {us} us"));
        let _ = writeln!(out, "  vmbus        UNLOAD {latency}");
    }
    let v = &r["vmcore"];
    if v.is_null() {
        let why = r["vmcore_error"].as_str().map_or("none taken".into(), escape);
        let _ = writeln!(out, "  vmcore       none: {why}");
    } else {
        let file = v["path"].as_str().map_or("?".into(), |p| escape(&dir.join(p).display().to_string()).into_owned());
        let _ = writeln!(
            out,
            "  vmcore       {file} ({} bytes, {} on disk, {} ms){}",
            s(&v["bytes"]),
            s(&v["allocated_bytes"]),
            s(&v["duration_ms"]),
            v["sha256"].as_str().map_or(String::new(), |h| format!(", sha256 {}", escape(h)))
        );
        if let Some(format) = v["format"].as_str() {
            let _ = writeln!(out, "               {}{}", escape(format), filtered(v));
        }
    }
    if let Some(msg) = r["hyperv_crash"]["message"].as_str() {
        let _ = writeln!(out, "  guest's last kernel messages (Hyper-V crash message):");
        let lines: Vec<&str> = msg.lines().filter(|l| !l.trim().is_empty()).collect();
        let panic_at = lines.iter().position(|l| l.contains("Kernel panic")).unwrap_or(lines.len().saturating_sub(8));
        for l in lines.iter().skip(panic_at.saturating_sub(4)).take(8) {
            let _ = writeln!(out, "    {}", escape(l));
        }
    }
    Ok(out)
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
