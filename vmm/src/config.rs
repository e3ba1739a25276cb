//! A validated VM configuration. Everything a user can get wrong is checked here, before KVM
//! is touched, and reported as one line.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::boot::{self, BootError};
use crate::console::ConsoleMode;
use crate::layout::MIN_MEMORY;

/// Most vCPUs we describe (8-bit xAPIC ids in the MADT).
pub const MAX_VCPUS: u32 = 255;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Kernel(#[from] BootError),
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid memory size '{0}': use bytes or a suffix such as 512M or 2G")]
    MemorySyntax(String),
    #[error("memory size {requested} bytes is below the minimum of {MIN_MEMORY} bytes (32 MiB)")]
    MemoryTooSmall { requested: u64 },
    #[error("memory size {requested} bytes is more than this host has ({host} bytes)")]
    MemoryTooLarge { requested: u64, host: u64 },
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
}

/// Everything needed to start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_bytes: u64,
    pub vcpus: u32,
    pub console: ConsoleMode,
    pub console_log: Option<PathBuf>,
    pub events: Option<PathBuf>,
    /// The KVM device node (normally `/dev/kvm`).
    pub kvm_device: PathBuf,
    /// Present the userspace Hyper-V enlightenments (crash MSRs, SynIC, hypercall page).
    pub hyperv: bool,
    /// Present the pvpanic device, advertising these events.
    pub pvpanic: bool,
    pub pvpanic_events: u8,
    /// Advertise CRASH_NOTIFY_MSG, so the guest sends its kernel log tail with the crash.
    pub hyperv_crash_message: bool,
    /// Answer VMBus UNLOAD this late.
    pub vmbus_unload_delay: std::time::Duration,
    /// Answer VMBus UNLOAD at all.
    pub vmbus_unload_response: bool,
    /// What to do when the guest crashes.
    pub policy: crate::crash::Policy,
    /// Where crash directories go.
    pub crash_dir: PathBuf,
    /// Compute the SHA-256 of host-side vmcores.
    pub vmcore_sha256: bool,
    /// Format, dump level and compression of host-side vmcores.
    pub dump: crate::crash::vmcore::DumpSpec,
    /// Guest memory a live dump may have copied on write before it pauses the guest.
    pub live_dump_max_copy: u64,
    /// How a live dump takes its copy-on-write snapshot.
    pub live_dump_snapshot: crate::crash::live::SnapshotMethod,
    /// Where finished crash directories are delivered (`--upload`), if anywhere.
    pub upload: Option<delivery::Target>,
    /// Keep a crash directory once the store confirmed it; the upload's bandwidth cap.
    pub upload_options: crate::upload::UploadOptions,
    /// How long crashvmm waits, once the VM has ended, for deliveries still queued.
    pub upload_wait: std::time::Duration,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// The disk the guest's crash kernel writes its dump to.
    pub crash_disk: Option<CrashDiskConfig>,
    /// The control socket.
    pub api_socket: Option<PathBuf>,
    /// Hang detection period.
    pub watchdog: Option<std::time::Duration>,
    /// The threads' seccomp filters.
    pub seccomp: crate::seccomp::SeccompMode,
    /// Test knob: a thread of this kind makes a forbidden system call once confined.
    pub seccomp_selftest: Option<crate::seccomp::ThreadKind>,
}

/// `--disk path=FILE[,readonly]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
}

/// `--crash-disk path=FILE,size=SIZE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashDiskConfig {
    pub path: PathBuf,
    pub size: u64,
}

/// Split `key=value,flag,...` into pairs (a flag has an empty value).
fn options(s: &str) -> Vec<(&str, &str)> {
    s.split(',').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect()
}

/// Parse `--disk path=FILE[,readonly]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let (mut path, mut readonly) = (None, false);
    for (k, v) in options(s) {
        match (k, v) {
            ("path", p) if !p.is_empty() => path = Some(PathBuf::from(p)),
            ("readonly" | "ro", "") => readonly = true,
            _ => return Err(format!("unknown disk option '{k}' (use path=FILE[,readonly])")),
        }
    }
    Ok(DiskConfig { path: path.ok_or("a disk needs path=FILE")?, readonly })
}

/// Parse `--crash-disk path=FILE,size=SIZE`.
pub fn parse_crash_disk(s: &str) -> Result<CrashDiskConfig, String> {
    let (mut path, mut size) = (None, None);
    for (k, v) in options(s) {
        match k {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "size" => size = Some(parse_memory(v).map_err(|_| format!("invalid crash disk size '{v}'"))?),
            _ => return Err(format!("unknown crash disk option '{k}' (use path=FILE,size=SIZE)")),
        }
    }
    let size = size.ok_or("a crash disk needs size=SIZE (e.g. 2G)")?;
    if size < 1 << 20 || size % 512 != 0 {
        return Err(format!("crash disk size {size} must be at least 1 MiB and a multiple of 512"));
    }
    Ok(CrashDiskConfig { path: path.ok_or("a crash disk needs path=FILE")?, size })
}

/// Parse a size such as `512M`, `2G`, `1GiB` or `1073741824` (binary multiples).
pub fn parse_memory(s: &str) -> Result<u64, ConfigError> {
    parse_size::Config::new().with_binary().parse_size(s).map_err(|_| ConfigError::MemorySyntax(s.to_owned()))
}

/// Total RAM of this host, from `/proc/meminfo`.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn check_memory(requested: u64, host: Option<u64>) -> Result<(), ConfigError> {
    if requested < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall { requested });
    }
    match host {
        Some(host) if requested > host => Err(ConfigError::MemoryTooLarge { requested, host }),
        _ => Ok(()),
    }
}

fn check_initrd(path: &Path) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Initrd { path: path.to_owned(), source };
    let f = std::fs::File::open(path).map_err(err)?;
    if !f.metadata().map_err(err)?.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    Ok(())
}

impl VmConfig {
    /// Check the kernel, initrd, memory and vCPU count.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        check_memory(self.memory_bytes, host_memory_bytes())?;
        boot::check_kernel(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_initrd(initrd)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options() {
        assert_eq!(parse_disk("path=/d.img"), Ok(DiskConfig { path: "/d.img".into(), readonly: false }));
        assert_eq!(parse_disk("path=/d.img,readonly"), Ok(DiskConfig { path: "/d.img".into(), readonly: true }));
        assert!(parse_disk("readonly").is_err());
        assert!(parse_disk("path=/d,bogus=1").is_err());
        assert_eq!(
            parse_crash_disk("path=/c.img,size=1G"),
            Ok(CrashDiskConfig { path: "/c.img".into(), size: 1 << 30 })
        );
        assert!(parse_crash_disk("path=/c.img").unwrap_err().contains("size"));
        assert!(parse_crash_disk("size=1G").unwrap_err().contains("path"));
        assert!(parse_crash_disk("path=/c,size=1000").is_err());
        assert!(parse_crash_disk("path=/c,size=lots").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert!(matches!(parse_memory("lots"), Err(ConfigError::MemorySyntax(_))));
        assert!(matches!(parse_memory("-1G"), Err(ConfigError::MemorySyntax(_))));
        assert!(matches!(check_memory(1 << 20, None), Err(ConfigError::MemoryTooSmall { .. })));
        assert!(matches!(check_memory(8 << 30, Some(4 << 30)), Err(ConfigError::MemoryTooLarge { .. })));
        assert!(check_memory(1 << 30, Some(4 << 30)).is_ok());
        assert!(host_memory_bytes().unwrap() > 0);
    }

    #[test]
    fn vcpus_and_initrd_are_checked_before_the_kernel_runs() {
        let base = VmConfig {
            kernel: "/nonexistent".into(),
            initrd: None,
            cmdline: String::new(),
            memory_bytes: 64 << 20,
            vcpus: 0,
            console: ConsoleMode::Null,
            console_log: None,
            events: None,
            kvm_device: "/dev/kvm".into(),
            hyperv: true,
            pvpanic: true,
            pvpanic_events: devices::pvpanic::PVPANIC_ALL,
            hyperv_crash_message: true,
            vmbus_unload_delay: std::time::Duration::ZERO,
            vmbus_unload_response: true,
            policy: Default::default(),
            crash_dir: "crashes".into(),
            vmcore_sha256: false,
            dump: Default::default(),
            live_dump_max_copy: crate::crash::executor::DEFAULT_LIVE_MAX_COPY,
            live_dump_snapshot: Default::default(),
            upload: None,
            upload_options: crate::upload::UploadOptions { keep_local: true, max_rate: None },
            upload_wait: std::time::Duration::from_secs(600),
            disks: vec![],
            crash_disk: None,
            api_socket: None,
            watchdog: None,
            seccomp: Default::default(),
            seccomp_selftest: None,
        };
        assert!(matches!(base.validate(), Err(ConfigError::Vcpus(0))));
        let err = VmConfig { vcpus: 1, ..base.clone() }.validate().unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
        assert!(check_initrd(Path::new("/nonexistent/initrd")).is_err());
        assert!(check_initrd(Path::new("/")).is_err());
    }
}
