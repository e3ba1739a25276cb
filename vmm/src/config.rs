//! A validated VM configuration. Everything a user can get wrong is checked here, before KVM
//! is touched, and reported as one line.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::MetadataExt;
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
    #[error("cannot read initrd {path}")]
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
    #[error("memory size {0} bytes is not a multiple of 4 KiB (the page size)")]
    MemoryAlignment(u64),
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    #[error("crash directory {path} cannot be created")]
    CrashDirCreate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("crash directory {0} is not a directory")]
    CrashDirNotDir(PathBuf),
    #[error("crash directory {path} is not writable")]
    CrashDirNotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot check {what} {path}")]
    OutputCheck {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} is the same file as {input} {input_path}: an output must not overwrite an input")]
    OutputIsInput { what: &'static str, path: PathBuf, input: &'static str, input_path: PathBuf },
    #[error("{what} {path} and {other} {other_path} are the same file")]
    SameOutput { what: &'static str, path: PathBuf, other: &'static str, other_path: PathBuf },
    #[error(
        "{what} {path} exists, is not empty and is not crashvmm's: choose another path, remove it, or give --overwrite"
    )]
    NotOurs { what: &'static str, path: PathBuf },
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
    /// `--crash-dir-max`: bytes the crash directory may hold.
    pub crash_dir_max: Option<u64>,
    /// `--metrics-file`: the OpenMetrics text file kept up to date.
    pub metrics_file: Option<PathBuf>,
    /// `--vmcores-per-signature` (0: no limit).
    pub vmcores_per_signature: u32,
    /// `--upload-host`: this host's name in the store's keys.
    pub upload_host: Option<String>,
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
    /// virtio-net devices on TAP interfaces.
    pub nets: Vec<NetConfig>,
    /// The control socket.
    pub api_socket: Option<PathBuf>,
    /// Hang detection period.
    pub watchdog: Option<std::time::Duration>,
    /// The threads' seccomp filters.
    pub seccomp: crate::seccomp::SeccompMode,
    /// Test knob: a thread of this kind makes a forbidden system call once confined.
    pub seccomp_selftest: Option<crate::seccomp::ThreadKind>,
    /// Overwrite existing output files that are not crashvmm's (`--overwrite`).
    pub overwrite: bool,
}

/// Largest crash disk: a file's length is an `off_t`.
pub const MAX_CRASH_DISK: u64 = i64::MAX as u64 & !511;

/// Guest memory comes in pages.
pub const PAGE_SIZE: u64 = 4096;

/// `--disk path=FILE[,readonly]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
}

/// `--net tap=NAME[,mac=MAC][,transport=pci|mmio]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    /// The guest's MAC address (default: derived from the TAP's name, locally administered).
    pub mac: Option<[u8; 6]>,
    pub transport: Transport,
}

/// How the guest reaches a virtio device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// A virtio-pci function with MSI-X on PCI bus 0 (interrupts without an exit to the VMM).
    #[default]
    Pci,
    /// A virtio-mmio window described in the DSDT, on an IOAPIC pin (each interrupt costs the
    /// guest two exits to the VMM: its status read and acknowledgement).
    Mmio,
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

/// Parse `--net tap=NAME[,mac=MAC][,transport=pci|mmio]`.
pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    let (mut tap, mut mac, mut transport) = (None, None, Transport::default());
    for (k, v) in options(s) {
        match (k, v) {
            ("tap", v) if !v.is_empty() => tap = Some(v.to_owned()),
            ("mac", v) => mac = Some(parse_mac(v)?),
            ("transport", "pci") => transport = Transport::Pci,
            ("transport", "mmio") => transport = Transport::Mmio,
            ("transport", v) => return Err(format!("unknown net transport '{v}' (use pci or mmio)")),
            _ => return Err(format!("unknown net option '{k}' (use tap=NAME[,mac=MAC][,transport=pci|mmio])")),
        }
    }
    let tap = tap.ok_or("a network device needs tap=NAME")?;
    let valid = tap.len() < 16 && tap.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(format!("TAP interface name '{tap}': 1 to 15 letters, digits, '-', '_' or '.'"));
    }
    Ok(NetConfig { tap, mac, transport })
}

/// A unicast MAC address, `52:54:00:12:34:56`.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("invalid MAC address '{s}' (use six hex bytes, e.g. 52:54:00:12:34:56)");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC address '{s}' is a multicast address"));
    }
    Ok(mac)
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
    if size > MAX_CRASH_DISK {
        return Err(format!(
            "crash disk size {size} is more than a file can hold (at most {MAX_CRASH_DISK} bytes, 8 EiB)"
        ));
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
    if requested % PAGE_SIZE != 0 {
        return Err(ConfigError::MemoryAlignment(requested));
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
        self.check_outputs()?;
        check_crash_dir(&self.crash_dir)
    }

    /// The files crashvmm reads: the kernel, the initrd, every `--disk`.
    fn inputs(&self) -> Vec<(&'static str, &Path)> {
        let mut inputs = vec![("--kernel", self.kernel.as_path())];
        inputs.extend(self.initrd.as_deref().map(|p| ("--initrd", p)));
        inputs.extend(self.disks.iter().map(|d| ("--disk", d.path.as_path())));
        inputs
    }

    /// The files and directory crashvmm writes, with what each is.
    fn outputs(&self) -> Vec<(Output, &Path)> {
        let mut outputs = Vec::new();
        outputs.extend(self.crash_disk.as_ref().map(|c| (Output::CrashDisk { size: c.size }, c.path.as_path())));
        outputs.extend(self.events.as_deref().map(|p| (Output::Events, p)));
        if let ConsoleMode::File(p) = &self.console {
            outputs.push((Output::Console, p.as_path()));
        }
        outputs.extend(self.console_log.as_deref().map(|p| (Output::ConsoleLog, p)));
        outputs.extend(self.metrics_file.as_deref().map(|p| (Output::Metrics, p)));
        outputs.push((Output::CrashDir, self.crash_dir.as_path()));
        outputs
    }

    /// No output is an input or another output (by the file's identity, symlinks followed),
    /// and none would truncate a file with data that crashvmm did not write, unless
    /// `--overwrite`. Nothing is opened for writing.
    fn check_outputs(&self) -> Result<(), ConfigError> {
        let mut inputs = Vec::new();
        for (name, path) in self.inputs() {
            // A missing disk is reported when it is opened; it cannot be an output's file.
            if let Ok(m) = std::fs::metadata(path) {
                inputs.push((name, path, FileId::Existing(m.dev(), m.ino())));
            }
        }
        let mut seen: Vec<(&'static str, &Path, FileId)> = Vec::new();
        for (output, path) in self.outputs() {
            let what = output.option();
            let check_err = |source| ConfigError::OutputCheck { what, path: path.to_owned(), source };
            let id = match file_id(path) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                // check_crash_dir says what is wrong with a crash directory.
                Err(_) if output == Output::CrashDir => continue,
                Err(e) => return Err(check_err(e)),
            };
            if let Some((input, input_path, _)) = inputs.iter().find(|(_, _, i)| *i == id) {
                return Err(ConfigError::OutputIsInput {
                    what,
                    path: path.to_owned(),
                    input,
                    input_path: input_path.to_path_buf(),
                });
            }
            if let Some((other, other_path, _)) = seen.iter().find(|(_, _, i)| *i == id) {
                return Err(ConfigError::SameOutput {
                    what,
                    path: path.to_owned(),
                    other,
                    other_path: other_path.to_path_buf(),
                });
            }
            seen.push((what, path, id));
            if !self.overwrite && output != Output::CrashDir && !may_overwrite(path, output).map_err(check_err)? {
                return Err(ConfigError::NotOurs { what, path: path.to_owned() });
            }
        }
        Ok(())
    }
}

/// What crashvmm writes, for [`VmConfig::check_outputs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    CrashDisk { size: u64 },
    Events,
    Console,
    ConsoleLog,
    Metrics,
    CrashDir,
}

impl Output {
    fn option(self) -> &'static str {
        match self {
            Output::CrashDisk { .. } => "--crash-disk",
            Output::Events => "--events",
            Output::Console => "--console",
            Output::ConsoleLog => "--console-log",
            Output::Metrics => "--metrics-file",
            Output::CrashDir => "--crash-dir",
        }
    }
}

/// A file's identity: an existing one's device and inode, or for one still to be created its
/// directory's and its name.
#[derive(Debug, PartialEq, Eq)]
enum FileId {
    Existing(u64, u64),
    New(u64, u64, OsString),
}

/// The identity of the file a write to `path` would reach (symlinks followed, dangling ones
/// too); `None` when its directory does not exist either (creating it will fail, and say so).
fn file_id(path: &Path) -> io::Result<Option<FileId>> {
    let mut path = path.to_owned();
    for _ in 0..40 {
        match std::fs::metadata(&path) {
            Ok(m) => return Ok(Some(FileId::Existing(m.dev(), m.ino()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // A dangling symlink: creating the file creates its target.
        if let Ok(target) = std::fs::read_link(&path) {
            path = path.parent().unwrap_or(Path::new("")).join(target);
            continue;
        }
        let Some(name) = path.file_name() else { return Ok(None) };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Ok(std::fs::metadata(dir).ok().map(|d| FileId::New(d.dev(), d.ino(), name.to_owned())));
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Whether writing `output` at `path` loses nothing crashvmm did not write: the file is missing,
/// empty, not a regular file (a device, a pipe), holds only holes, or is crashvmm's own (the
/// [`crate::files::OUTPUT_XATTR`] mark, or where the file system keeps no user xattrs: an event
/// log whose first line is a crashvmm event, a crash disk of the size asked for that holds a
/// makedumpfile flattened dump).
fn may_overwrite(path: &Path, output: Output) -> io::Result<bool> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || meta.len() == 0 {
        return Ok(true);
    }
    let file = File::open(path)?;
    if crate::files::is_marked_output(&file) || crate::files::holds_no_data(&file) {
        return Ok(true);
    }
    Ok(match output {
        Output::Events => is_event_log(&file),
        Output::Metrics => is_metrics_file(&file),
        Output::CrashDisk { size } => meta.len() == size && holds_flattened_dump(&file),
        Output::Console | Output::ConsoleLog | Output::CrashDir => false,
    })
}

/// Whether the first line of `file` is a crashvmm event record (`ts` and `event`).
fn is_event_log(file: &File) -> bool {
    let mut line = Vec::new();
    let mut reader = io::BufReader::new(file).take(64 * 1024);
    if reader.read_until(b'\n', &mut line).is_err() {
        return false;
    }
    let Ok(serde_json::Value::Object(record)) = serde_json::from_slice(&line) else { return false };
    record.get("ts").is_some_and(serde_json::Value::is_string)
        && record.get("event").is_some_and(serde_json::Value::is_string)
}

/// Whether `file` is crashvmm's metrics text (it is replaced whole at each write, so it
/// carries no mark of its own: its first line is a crashvmm metric's).
fn is_metrics_file(file: &File) -> bool {
    let mut line = Vec::new();
    let mut reader = io::BufReader::new(file).take(4096);
    reader.read_until(b'\n', &mut line).is_ok() && line.starts_with(b"# HELP crashvmm_")
}

/// Whether `file` starts with makedumpfile's flattened-format signature (what the guest's
/// crash kernel writes to the crash disk).
fn holds_flattened_dump(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let sig = crate::crash::flat::MAKEDUMPFILE_SIGNATURE;
    let mut head = vec![0; sig.len()];
    file.read_exact_at(&mut head, 0).is_ok() && head == sig
}

/// The crash directory exists or can be made, is a directory, and a file can be created in it
/// (and removed): else a crash would be lost.
fn check_crash_dir(dir: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(ConfigError::CrashDirNotDir(dir.to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => crate::files::create_private_dir_all(dir)
            .map_err(|source| ConfigError::CrashDirCreate { path: dir.to_owned(), source })?,
        Err(source) => return Err(ConfigError::CrashDirCreate { path: dir.to_owned(), source }),
    }
    let probe = dir.join(format!(".crashvmm-write-test-{}", std::process::id()));
    let not_writable = |source| ConfigError::CrashDirNotWritable { path: dir.to_owned(), source };
    File::options().write(true).create_new(true).open(&probe).map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)
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
        let dir = tempfile::tempdir().unwrap();
        let base = VmConfig { kernel: "/nonexistent".into(), vcpus: 0, ..config_for(dir.path()) };
        assert!(matches!(base.validate(), Err(ConfigError::Vcpus(0))));
        let err = VmConfig { vcpus: 1, ..base.clone() }.validate().unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
        assert!(check_initrd(Path::new("/nonexistent/initrd")).is_err());
        assert!(check_initrd(Path::new("/")).is_err());
    }

    fn config_for(dir: &Path) -> VmConfig {
        let kernel = dir.join("kernel");
        std::fs::write(&kernel, b"kernel").unwrap();
        VmConfig {
            kernel,
            initrd: None,
            cmdline: String::new(),
            memory_bytes: 64 << 20,
            vcpus: 1,
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
            crash_dir: dir.join("crashes"),
            crash_dir_max: None,
            metrics_file: None,
            vmcores_per_signature: 0,
            upload_host: None,
            vmcore_sha256: false,
            dump: Default::default(),
            live_dump_max_copy: crate::crash::executor::DEFAULT_LIVE_MAX_COPY,
            live_dump_snapshot: Default::default(),
            upload: None,
            upload_options: crate::upload::UploadOptions { keep_local: true, max_rate: None },
            upload_wait: std::time::Duration::from_secs(600),
            disks: vec![],
            crash_disk: None,
            nets: vec![],
            api_socket: None,
            watchdog: None,
            seccomp: Default::default(),
            seccomp_selftest: None,
            overwrite: false,
        }
    }

    #[test]
    fn net_options() {
        assert_eq!(parse_net("tap=tap0"), Ok(NetConfig { tap: "tap0".into(), mac: None, transport: Transport::Pci }));
        assert_eq!(
            parse_net("tap=ct0,mac=52:54:00:AB:cd:01,transport=mmio"),
            Ok(NetConfig { tap: "ct0".into(), mac: Some([0x52, 0x54, 0, 0xab, 0xcd, 1]), transport: Transport::Mmio })
        );
        for bad in [
            "",
            "mac=52:54:00:12:34:56",
            "tap=",
            "tap=0123456789abcdef",
            "tap=a/b",
            "tap=t,mac=01:00:5e:00:00:01",
            "tap=t,mac=52:54:00:12:34",
            "tap=t,mac=52:54:00:12:34:5g",
            "tap=t,mac=525:4:00:12:34:56",
            "tap=t,queues=2",
            "tap=t,transport=vhost",
            "tap=t,transport",
        ] {
            let e = parse_net(bad).unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_must_be_whole_pages() {
        assert!(matches!(check_memory((64 << 20) + 1, None), Err(ConfigError::MemoryAlignment(_))));
        assert!(matches!(check_memory((64 << 20) + 512, None), Err(ConfigError::MemoryAlignment(_))));
        assert!(check_memory((64 << 20) + 4096, None).is_ok());
    }

    #[test]
    fn crash_disk_size_is_checked_before_anything_is_created() {
        let err = parse_crash_disk("path=/c,size=8E").unwrap_err();
        assert!(err.contains("more than a file can hold"), "{err}");
        assert!(parse_crash_disk("path=/c,size=7E").is_ok());
    }

    /// Outputs are compared with inputs and with each other by identity, not by name.
    #[test]
    fn an_output_is_never_an_input_or_another_output() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = config_for(d);
        let disk = d.join("data.img");
        std::fs::write(&disk, vec![1u8; 4096]).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&base.kernel, &link).unwrap();
        let crash_disk = |p: &Path| Some(CrashDiskConfig { path: p.to_owned(), size: 1 << 20 });
        let cases = [
            VmConfig { crash_disk: crash_disk(&base.kernel), ..base.clone() },
            VmConfig { crash_disk: crash_disk(&link), ..base.clone() },
            VmConfig { events: Some(d.join(".").join("kernel")), ..base.clone() },
            VmConfig { console_log: Some(link.clone()), overwrite: true, ..base.clone() },
            VmConfig {
                disks: vec![DiskConfig { path: disk.clone(), readonly: false }],
                crash_disk: crash_disk(&disk),
                overwrite: true,
                ..base.clone()
            },
        ];
        for c in cases {
            let err = c.check_outputs().unwrap_err();
            assert!(matches!(err, ConfigError::OutputIsInput { .. }), "{err}");
        }
        assert_eq!(std::fs::read(&base.kernel).unwrap(), b"kernel", "the kernel was not touched");
        // Two outputs, one of them not there yet, named two ways.
        let c = VmConfig {
            events: Some(d.join("out.log")),
            console_log: Some(d.join("crashes/../out.log")),
            ..base.clone()
        };
        std::fs::create_dir(d.join("crashes")).unwrap();
        assert!(matches!(c.check_outputs(), Err(ConfigError::SameOutput { .. })), "{:?}", c.check_outputs());
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("target.log"), &dangling).unwrap();
        let c =
            VmConfig { console: ConsoleMode::File(dangling), console_log: Some(d.join("target.log")), ..base.clone() };
        assert!(matches!(c.check_outputs(), Err(ConfigError::SameOutput { .. })), "{:?}", c.check_outputs());
        VmConfig { events: Some(d.join("events")), console_log: Some(d.join("console")), ..base }
            .check_outputs()
            .unwrap();
    }

    /// A non-empty file crashvmm did not write is refused unless --overwrite; crashvmm's own
    /// outputs are recognized.
    #[test]
    fn only_crashvmms_own_files_are_overwritten_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = config_for(d);
        let notes = d.join("notes.txt");
        std::fs::write(&notes, "precious\n").unwrap();
        for c in [
            VmConfig { events: Some(notes.clone()), ..base.clone() },
            VmConfig { console: ConsoleMode::File(notes.clone()), ..base.clone() },
            VmConfig { console_log: Some(notes.clone()), ..base.clone() },
            VmConfig { metrics_file: Some(notes.clone()), ..base.clone() },
            VmConfig { crash_disk: Some(CrashDiskConfig { path: notes.clone(), size: 1 << 20 }), ..base.clone() },
        ] {
            assert!(matches!(c.check_outputs(), Err(ConfigError::NotOurs { .. })), "{:?}", c.check_outputs());
            VmConfig { overwrite: true, ..c }.check_outputs().unwrap();
        }
        assert_eq!(std::fs::read(&notes).unwrap(), b"precious\n");
        // An event log by its first line, a crash disk holding a flattened dump at its size or
        // nothing at all, any output by crashvmm's mark.
        let events = d.join("events.jsonl");
        std::fs::write(&events, "{\"ts\":\"2026-11-25T12:29:57.359307Z\",\"event\":\"vm_started\"}\n").unwrap();
        VmConfig { events: Some(events), ..base.clone() }.check_outputs().unwrap();
        let disk = d.join("crash.img");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(2 << 20).unwrap();
        let cd = |size| Some(CrashDiskConfig { path: disk.clone(), size });
        VmConfig { crash_disk: cd(1 << 20), ..base.clone() }.check_outputs().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, crate::crash::flat::MAKEDUMPFILE_SIGNATURE, 0).unwrap();
        VmConfig { crash_disk: cd(2 << 20), ..base.clone() }.check_outputs().unwrap();
        let err = VmConfig { crash_disk: cd(1 << 20), ..base.clone() }.check_outputs().unwrap_err();
        assert!(err.to_string().contains("give --overwrite"), "{err}");
        let console = d.join("console.log");
        drop(crate::files::create_output(&console, "console").unwrap());
        std::fs::write(&console, "guest output\n").unwrap();
        VmConfig { console_log: Some(console), ..base.clone() }.check_outputs().unwrap();
        // A metrics file by its first line (it is renamed over at each write: no mark).
        let prom = d.join("crashvmm.prom");
        std::fs::write(&prom, crate::metrics::Metrics::new(0).encode().unwrap()).unwrap();
        VmConfig { metrics_file: Some(prom), ..base }.check_outputs().unwrap();
    }

    #[test]
    fn the_crash_directory_must_be_a_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("a/b");
        check_crash_dir(&made).unwrap();
        assert!(made.is_dir());
        assert_eq!(std::fs::read_dir(&made).unwrap().count(), 0, "the write test leaves nothing");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        for (crash_dir, expected) in [
            (file.clone(), "is not a directory"),
            (file.join("sub"), "cannot be created"),
            ("/proc/1".into(), "is not writable"),
        ] {
            let err = check_crash_dir(&crash_dir).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
