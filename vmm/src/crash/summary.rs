//! `crashvmm report DIR`: a short human summary of a crash directory's `report.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

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

/// A host-side vmcore's dump level and what it left out.
fn filtered(v: &serde_json::Map<String, Value>) -> String {
    let Some(level) = v.get("dump_level").and_then(Value::as_u64) else { return String::new() };
    let f = v.get("filter").unwrap_or(&Value::Null);
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

/// The summary text for the report at `dir`.
pub fn render(dir: &Path) -> Result<String> {
    let dir = resolve(dir)?;
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let r: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let mut out = String::new();
    let _ = writeln!(out, "crash report {}", dir.display());
    let _ = writeln!(
        out,
        "  crash        #{} at {}, trigger {}",
        r["crash_number"],
        s(&r["detected_at"]),
        s(&r["trigger"])
    );
    let _ = writeln!(out, "  outcome      {}", s(&r["outcome"]));
    if let Some(sig) = r["signature"].as_object() {
        let _ = writeln!(out, "  signature    {}  {}", s(&sig["id"]), s(&sig["title"]));
    }
    let g = &r["guest"];
    let release = g["kernel_release"].as_str().unwrap_or("unknown");
    let _ = writeln!(
        out,
        "  guest        Linux {release}, {} vCPUs, {} MiB",
        g["vcpus"],
        g["memory_bytes"].as_u64().unwrap_or(0) >> 20
    );
    let p = &r["policy"];
    let _ = writeln!(
        out,
        "  policy       on-panic {}, after-crash {}, host-dump {}",
        s(&p["on_panic"]),
        s(&p["after_crash"]),
        s(&p["host_dump"])
    );
    if let Some(pv) = r["pvpanic"].as_object() {
        let _ = writeln!(out, "  pvpanic      bits {} (vCPU {})", pv["bits"], pv["vcpu"]);
    }
    if let Some(v) = r["vmbus"].as_object() {
        let latency =
            v["unload_latency_us"].as_u64().map_or("not answered".into(), |us| format!("answered in {us} us"));
        let _ = writeln!(out, "  vmbus        UNLOAD {latency}");
    }
    match r["vmcore"].as_object() {
        Some(v) => {
            let _ = writeln!(
                out,
                "  vmcore       {} ({} bytes, {} on disk, {} ms){}",
                dir.join(s(&v["path"])).display(),
                v["bytes"],
                v["allocated_bytes"],
                v["duration_ms"],
                v["sha256"].as_str().map_or(String::new(), |h| format!(", sha256 {h}"))
            );
            if let Some(format) = v.get("format").and_then(Value::as_str) {
                let _ = writeln!(out, "               {format}{}", filtered(v));
            }
        }
        None => {
            let why = r["vmcore_error"].as_str().unwrap_or("none taken");
            let _ = writeln!(out, "  vmcore       none: {why}");
        }
    }
    if let Some(msg) = r["hyperv_crash"]["message"].as_str() {
        let _ = writeln!(out, "  guest's last kernel messages (Hyper-V crash message):");
        let lines: Vec<&str> = msg.lines().filter(|l| !l.trim().is_empty()).collect();
        let panic_at = lines.iter().position(|l| l.contains("Kernel panic")).unwrap_or(lines.len().saturating_sub(8));
        for l in lines.iter().skip(panic_at.saturating_sub(4)).take(8) {
            let _ = writeln!(out, "    {l}");
        }
    }
    Ok(out)
}

pub fn print(dir: &Path) -> Result<()> {
    print!("{}", render(dir)?);
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
}
