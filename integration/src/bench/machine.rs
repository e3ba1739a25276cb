//! The machine the benchmarks ran on.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::{Mode, Setup};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Machine {
    pub date_utc: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub os: String,
    pub disk: String,
    pub kvm: String,
    pub qemu_version: String,
    pub crashvmm_version: String,
    pub git_commit: String,
    pub load_before: String,
    pub load_after: String,
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The disk holding `path`: device, file system, size, and what the kernel says of the device.
fn disk(path: &Path) -> String {
    let df = Command::new("df")
        .args(["-h", "--output=source,fstype,size,avail"])
        .arg(path)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let dev = df.split_whitespace().next().unwrap_or("").trim_start_matches("/dev/").to_string();
    let base: String = dev.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
    let sys = Path::new("/sys/block").join(&base);
    let rot = fs::read_to_string(sys.join("queue/rotational")).map(|s| s.trim() == "1").ok();
    let model = fs::read_to_string(sys.join("device/model")).map(|s| s.trim().to_string()).unwrap_or_default();
    let kind = if base.starts_with("vd") {
        "virtio block device (a virtual machine's disk)".to_string()
    } else if base.starts_with("nvme") {
        "NVMe".to_string()
    } else {
        model
    };
    let parts: Vec<String> = [
        Some(format!("`{df}` (device, file system, size, free)")),
        (!kind.is_empty()).then_some(kind),
        rot.map(|r| if r { "rotational".into() } else { "non-rotational".into() }),
    ]
    .into_iter()
    .flatten()
    .collect();
    parts.join(", ")
}

pub fn describe(setup: &Setup, work: &Path) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let mem_kib: f64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0);
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default();
    let (mode, why) = crate::detect_mode();
    let kvm = match mode {
        Mode::Direct => format!("hardware virtualization: {why}"),
        Mode::TestHost => format!(
            "`/dev/kvm` without hardware virtualization ({why}): a software layer that runs guest user mode \
             natively and emulates guest kernel mode instruction by instruction; real Linux runs in the \
             software KVM test host (QEMU TCG, nested kvm_amd)"
        ),
    };
    let git_commit = {
        let c = first_line(Command::new("git").arg("-C").arg(&setup.root).args(["rev-parse", "--short", "HEAD"]));
        let dirty = Command::new("git")
            .arg("-C")
            .arg(&setup.root)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            format!("{c} (with uncommitted changes)")
        } else {
            c
        }
    };
    Machine {
        date_utc: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        cpu_model,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_total_gib: mem_kib / (1024.0 * 1024.0),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        os,
        disk: disk(work),
        kvm,
        qemu_version: first_line(Command::new(super::qemu_binary()).arg("--version")),
        crashvmm_version: first_line(Command::new(&setup.binary).arg("--version")),
        git_commit,
        load_before: loadavg(),
        load_after: String::new(),
    }
}

/// SHA-256 throughput of one core here (GB/s), hashing 1 GiB of zeros as crashvmm's vmcore
/// writer hashes holes.
pub fn sha256_gbps() -> f64 {
    use sha2::{Digest, Sha256};
    let zeros = vec![0u8; 64 * 1024];
    let total: u64 = 1 << 30;
    let t = std::time::Instant::now();
    let mut h = Sha256::new();
    for _ in 0..total / zeros.len() as u64 {
        h.update(&zeros);
    }
    std::hint::black_box(h.finalize());
    total as f64 / t.elapsed().as_secs_f64() / 1e9
}
