//! The `crashvmm` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use env_logger::WriteStyle;
use vmm::config::{
    parse_crash_disk, parse_disk, parse_memory, parse_net, CrashDiskConfig, DiskConfig, NetConfig, VmConfig,
};
use vmm::console::ConsoleMode;
use vmm::crash::vmcore::{DumpSpec, VmcoreCompression, VmcoreFormat};
use vmm::crash::{AfterCrash, HostDump, OnHang, OnPanic, Policy};
use vmm::exit::code;
use vmm::printable::escape;
use vmm::seccomp::{SeccompMode, ThreadKind};

#[derive(Parser)]
#[command(name = "crashvmm", version, about = "A KVM VMM for the moment a guest kernel dies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a Linux bzImage (or a PVH ELF kernel) and run it until it powers off, resets or fails.
    ///
    /// Exit codes: 0 guest powered off, 1 crashvmm error, 2 usage error, 3 guest reset,
    /// 4 triple fault, 5 guest panicked, 6 KVM failure, 7 guest panicked and its vmcore could
    /// not be collected, 128+N stopped by signal N (159: a seccomp violation).
    Run(Box<RunArgs>),
    /// Talk to a running crashvmm through its control socket.
    Ctl {
        /// The `--api-socket` of the running crashvmm.
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        /// How long to wait for the answer (`none`: no limit). Default: 10s; for `dump`, which
        /// is answered once its vmcore is written, 1h; `subscribe` waits this long for its
        /// first answer, then streams without limit.
        #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Option<Timeout>,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Summarize a crash directory (or the newest one under a --crash-dir) for a person.
    Report {
        /// A crash directory, or a directory of crash directories.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// What an object store holds (`--upload`'s URL): crashes grouped by signature, with their
    /// count, hosts, first and last seen and kernel releases, from the store's index.
    Crashes {
        #[arg(value_name = "URL", value_parser = parse_upload)]
        url: delivery::Target,
        /// Only this signature's group, with its crash directories.
        #[arg(long, value_name = "ID")]
        signature: Option<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Download one crash directory (URL/SIGNATURE-ID/HOST/DIR) from an object store.
    Fetch {
        #[arg(value_name = "URL")]
        url: String,
        /// Where to put it (default: the current directory).
        #[arg(value_name = "DEST", default_value = ".")]
        dest: PathBuf,
    },
    /// Deliver what a crash directory's spool still holds (after a restart, an outage), then exit.
    Deliver {
        #[arg(long, value_name = "URL", value_parser = parse_upload)]
        upload: delivery::Target,
        #[arg(long, value_name = "DIR", default_value = "crashes")]
        crash_dir: PathBuf,
        #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
        upload_keep_local: bool,
        #[arg(long, value_name = "SIZE", value_parser = nonzero_size_text)]
        upload_max_rate: Option<String>,
        /// Give up (leaving the rest in the spool) after this long.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Run a crash-injection suite (a TOML file): every case boots the kernel under test under
    /// crashvmm, kills it as the case says and checks what crashvmm saw (docs/crash-suites.md).
    ///
    /// Exit codes: 0 every case passed or was skipped, 1 a case failed, 2 a bad suite file or
    /// option (one line; nothing is run).
    Test(Box<TestArgs>),
}

#[derive(clap::Args)]
struct TestArgs {
    /// The suite file.
    #[arg(value_name = "SUITE")]
    suite: PathBuf,
    /// Where each case's outputs, summary.json and junit.xml go.
    #[arg(long, value_name = "DIR", default_value = "crashvmm-test")]
    out: PathBuf,
    /// The JUnit XML report (default: OUT/junit.xml).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Cases run at once.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,
    /// Only the cases whose name this regular expression finds.
    #[arg(long, value_name = "PATTERN", value_parser = parse_regex)]
    filter: Option<regex::Regex>,
    /// Where kernels, crash-test images and the crashtest module are kept between runs
    /// (default: $XDG_CACHE_HOME/crashvmm, else ~/.cache/crashvmm).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Where the cases run: auto (directly on hardware KVM, else in the software KVM test
    /// host), direct or test-host.
    #[arg(long = "where", value_name = "PLACE", default_value = "auto", value_parser = parse_where)]
    place: crash_suite::Where,
    /// The software KVM test host's image directory (vmlinuz, initramfs.cpio.gz; `make images`
    /// builds it into build/images/host).
    #[arg(long, value_name = "DIR", default_value = "build/images/host")]
    test_host: PathBuf,
    /// Check the suite and build the images, run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also write the results as Markdown (a matrix of trigger by kernel and setting, and each
    /// case's panic path) to this file.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
}

fn parse_where(s: &str) -> Result<crash_suite::Where, String> {
    match s {
        "auto" => Ok(crash_suite::Where::Auto),
        "direct" => Ok(crash_suite::Where::Direct),
        "test-host" => Ok(crash_suite::Where::TestHost),
        _ => Err(format!("'{s}' is not auto, direct or test-host")),
    }
}

/// `crashvmm test`: exit code 0 when every case passed or was skipped, 1 when one failed, 2 when
/// the suite could not be run (its one-line reason on stderr).
fn test(args: TestArgs) -> anyhow::Result<i32> {
    let cache = args.cache.unwrap_or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("crashvmm")
    });
    let opts = crash_suite::Options {
        suite: args.suite,
        out: args.out,
        junit: args.junit,
        jobs: args.jobs as usize,
        filter: args.filter,
        cache,
        crashvmm: std::env::current_exe()?,
        place: args.place,
        test_host: Some(args.test_host),
        dry_run: args.dry_run,
        markdown: args.markdown,
    };
    let summary = match crash_suite::run(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crashvmm: error: {}", vmm::error::Chain(&e));
            return Ok(code::USAGE);
        }
    };
    print!("{}", summary.table());
    eprintln!(
        "results: {}/summary.json, {}",
        opts.out.display(),
        opts.junit.unwrap_or(opts.out.join("junit.xml")).display()
    );
    Ok(if summary.passed() || (opts.dry_run && summary.failed == 0) { 0 } else { 1 })
}

/// `crashvmm crashes`: the store's crashes grouped by signature.
fn crashes(url: &delivery::Target, signature: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let mut groups = delivery::list_crashes(url)?;
    if let Some(id) = signature {
        groups.retain(|g| g.signature_id == id);
        if groups.is_empty() {
            anyhow::bail!("no crashes with signature {id} in {}", url.url);
        }
    }
    if json {
        // JSON escapes control characters itself.
        writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&groups)?)?;
        return Ok(0);
    }
    // What the store holds came from guests (titles, kernel releases) and whoever writes to it:
    // printed with its control characters escaped.
    let e = |s: &str| escape(s).into_owned();
    let mut out = std::io::stdout().lock();
    for g in &groups {
        writeln!(
            out,
            "{}  {:>4} crash{}  {} host{}  {} .. {}  {}  {}",
            e(&g.signature_id),
            g.count,
            if g.count == 1 { "" } else { "es" },
            g.hosts.len(),
            if g.hosts.len() == 1 { "" } else { "s" },
            e(g.first_seen.as_deref().unwrap_or("?")),
            e(g.last_seen.as_deref().unwrap_or("?")),
            e(&g.kernel_releases.join(",")),
            e(g.title.as_deref().unwrap_or("(no title)"))
        )?;
        if signature.is_some() {
            for d in &g.dirs {
                let detected = d.detected_at.as_deref().unwrap_or("?");
                writeln!(out, "  {}  {}  {}", e(detected), e(&d.host), e(&d.url))?;
            }
        }
    }
    out.flush()?;
    Ok(0)
}

/// `crashvmm deliver`: send what the spool holds; exit code 1 when some is left or a job was
/// set aside as undeliverable (the reasons are on stderr).
fn deliver(
    target: delivery::Target,
    crash_dir: &std::path::Path,
    keep_local: bool,
    max_rate: Option<&str>,
    wait: std::time::Duration,
) -> anyhow::Result<i32> {
    let options = vmm::upload::UploadOptions { keep_local, max_rate: max_rate.map(parse_memory).transpose()? };
    vmm::seccomp::init(SeccompMode::On, None, None)?;
    let d = vmm::upload::Delivery::start(target, crash_dir, &options, vmm::events::EventLog::disabled())?;
    Ok(i32::from(!d.finish(wait).all_delivered()))
}

/// `ctl --timeout`: a duration, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timeout {
    After(std::time::Duration),
    Never,
}

fn parse_timeout(s: &str) -> Result<Timeout, String> {
    if s == "none" {
        return Ok(Timeout::Never);
    }
    nonzero_duration(s).map(Timeout::After)
}

/// A duration that must be more than zero (`--watchdog`, `--kdump-timeout`): zero would fire at
/// once.
fn nonzero_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A size that must be more than zero (`--upload-max-rate`: 0 bytes per second sends nothing).
fn nonzero_size(s: &str) -> Result<u64, String> {
    match parse_memory(s) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a size such as 50M or 1G".into()),
    }
}

/// One path component of an object key.
fn parse_host_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a host name is letters, digits, '.', '_', '-' and ':' (and not . or ..)".into())
    }
}

fn nonzero_size_text(s: &str) -> Result<String, String> {
    nonzero_size(s).map(|_| s.to_owned())
}

fn parse_upload(s: &str) -> Result<delivery::Target, String> {
    delivery::Target::parse(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum CtlCommand {
    /// The control socket's requests, one subcommand each.
    #[command(flatten)]
    Request(vmm::api::Request),
    /// Send one raw request line (for tests and scripts).
    Raw { json: String },
}

impl CtlCommand {
    /// The request line: the control socket's own `Request`, serialized.
    fn request(&self) -> String {
        match self {
            CtlCommand::Request(req) => serde_json::to_string(req).unwrap_or_default(),
            CtlCommand::Raw { json } => json.clone(),
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Linux bzImage (64-bit boot protocol 2.12 or later), or an x86-64 ELF kernel with a PVH
    /// entry note (such as the project's test guest); its initrd becomes the PVH module.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initramfs to load with the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0")]
    cmdline: String,
    /// Guest memory, e.g. 512M or 2G (binary units).
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u32,
    /// Where the COM1 console goes: stdio, file:PATH or null.
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    console: ConsoleMode,
    /// Also copy all console output to this file.
    #[arg(long, value_name = "PATH")]
    console_log: Option<PathBuf>,
    /// Write the JSON Lines event log here.
    #[arg(long, value_name = "PATH")]
    events: Option<PathBuf>,
    /// The KVM device node.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// Userspace Hyper-V enlightenments: synthetic crash MSRs with the crash message page,
    /// SynIC and hypercall page. `off` presents a plain KVM guest.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    hyperv: bool,
    /// The pvpanic ISA device at port 0x505 (ACPI QEMU0001).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pvpanic: bool,
    /// pvpanic events to advertise: all, a comma list of panicked, crash-loaded, shutdown, or
    /// a bitmask.
    #[arg(long, value_name = "EVENTS", default_value = "all", value_parser = devices::pvpanic::parse_events)]
    pvpanic_events: u8,
    /// Offer the crash message page (CRASH_CTL bit 62): the guest then sends its kernel log tail
    /// with the crash report. Linux sends that report after the VMBus UNLOAD; with `off` it
    /// reports registers only, before the UNLOAD.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    hyperv_crash_message: bool,
    /// Answer the guest's VMBus UNLOAD this late, e.g. 2s or 500ms (test knob).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    vmbus_unload_delay: std::time::Duration,
    /// Answer the guest's VMBus UNLOAD at all; `off` tests the guest's 100 s fallback.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    vmbus_unload_response: bool,
    /// What to do when the guest panics: auto (the guest's kdump when it announced one, else a
    /// host-side vmcore), kdump, host-dump, pause or ignore.
    #[arg(long, value_name = "POLICY", default_value = "auto", value_enum)]
    on_panic: OnPanic,
    /// What happens once crash collection ends: exit, reset (boot the guest again) or pause.
    #[arg(long, value_name = "ACTION", default_value = "exit", value_enum)]
    after_crash: AfterCrash,
    /// How long the guest's crash kernel may take before crashvmm takes a host-side vmcore.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = nonzero_duration)]
    kdump_timeout: std::time::Duration,
    /// When crashvmm writes a vmcore from guest memory: never, fallback (no guest kdump, or it
    /// failed or timed out) or always (also a snapshot at the guest's kexec).
    #[arg(long, value_name = "WHEN", default_value = "fallback", value_enum)]
    host_dump: HostDump,
    /// Also compute the SHA-256 of each host-side vmcore for report.json. It reads the whole
    /// file, holes included, so it costs about a second per 1.8 GB of guest memory on top of
    /// writing the touched pages.
    #[arg(long, value_name = "on|off", default_value = "off", value_parser = on_off, action = clap::ArgAction::Set)]
    vmcore_sha256: bool,
    /// Format of host-side vmcores: `kdump` (the kdump-compressed file of `makedumpfile -c`,
    /// filtered by --dump-level) or `elf` (excluded pages are holes).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "kdump")]
    vmcore_format: VmcoreFormat,
    /// Pages host-side vmcores leave out, as makedumpfile's -d: the sum of 1 (zero pages), 2 (page
    /// cache), 4 (private page cache), 8 (user pages), 16 (free pages), decided from the guest's
    /// VMCOREINFO and struct pages. A level that cannot be verified on the guest's kernel is not
    /// applied (report.json says why).
    #[arg(long, value_name = "N", default_value_t = DumpSpec::MAX_LEVEL,
          value_parser = clap::value_parser!(u8).range(0..=DumpSpec::MAX_LEVEL as i64))]
    dump_level: u8,
    /// Page compression of kdump-format vmcores (what both Debian's crash and makedumpfile read):
    /// `lzo` (makedumpfile -l, several times faster), `zlib` (makedumpfile -c, a smaller file,
    /// several times slower; the guest stays paused while it is written) or `none`.
    #[arg(long, value_enum, value_name = "CODEC", default_value = "lzo")]
    vmcore_compress: VmcoreCompression,
    /// Guest memory a live dump (`ctl dump --live`, the snapshot at kexec with --host-dump
    /// always, --on-hang host-dump) may have copied on write while the guest runs; past it the
    /// guest is paused for the rest of the dump.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    live_dump_max_copy: String,
    /// How a live dump snapshots guest memory: userfaultfd write protection (a pause of about
    /// a millisecond per 4 GiB of guest RAM), fork() (a pause that grows with resident memory),
    /// or auto: uffd where the kernel (6.7+) and permissions allow it, else fork.
    #[arg(long, value_enum, value_name = "METHOD", default_value = "auto")]
    live_dump_snapshot: vmm::crash::live::SnapshotMethod,
    /// With --after-crash reset, exit after this many crashes (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_crashes: u32,
    /// With --after-crash reset, wait this long before the guest boots again after a crash
    /// (e.g. 10s; 0s: boot again at once), twice as long after each further crash of the same
    /// signature, up to --reset-backoff-max.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    reset_backoff: std::time::Duration,
    /// The longest wait of --reset-backoff; a boot that lasts this long before it crashes ends
    /// the crash loop (the next crash waits --reset-backoff again).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = nonzero_duration)]
    reset_backoff_max: std::time::Duration,
    /// Where crash directories go (one per crash).
    #[arg(long, value_name = "DIR", default_value = "crashes")]
    crash_dir: PathBuf,
    /// The most the crash directory may hold on disk, e.g. 20G. Before a vmcore is written,
    /// the oldest crash directories the store has confirmed (--upload) go to make room for the
    /// most it can take; where that is not enough the crash keeps its report, kernel log and
    /// console without a vmcore, and report.json says why.
    #[arg(long, value_name = "SIZE", value_parser = nonzero_size)]
    crash_dir_max: Option<u64>,
    /// Keep at most this many vmcores of one crash signature (0: no limit): a later crash with
    /// that signature keeps its report, kernel log and console, and `duplicate_of` names the
    /// first. With --upload the count is the store's (PREFIX/SIGNATURE-ID/, asked within 5 s;
    /// this host's local count when it cannot be asked, and the report says so).
    #[arg(long, value_name = "N", default_value_t = 0)]
    vmcores_per_signature: u32,
    /// This host's name in the store's keys (PREFIX/SIGNATURE-ID/HOST/DIR/; default: the
    /// kernel's host name): letters, digits, '.', '_', '-', ':'.
    #[arg(long, value_name = "NAME", value_parser = parse_host_name)]
    upload_host: Option<String>,
    /// Keep crashvmm's metrics in this file, in the OpenMetrics text format (written to a
    /// temporary file and renamed over, as node_exporter's textfile collector wants).
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    /// Deliver each finished crash directory to an object store: s3://BUCKET/PREFIX (also
    /// gs://, az://, file:///PATH), under PREFIX/SIGNATURE-ID/HOST/DIR/. Credentials and the
    /// endpoint (AWS_ENDPOINT_URL for S3-compatible servers) come from the environment.
    #[arg(long, value_name = "URL", value_parser = parse_upload)]
    upload: Option<delivery::Target>,
    /// Keep a crash directory on disk once the store has confirmed every file of it.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    upload_keep_local: bool,
    /// Upload at most this many bytes per second (e.g. 50M), leaving the host's network to its
    /// other work.
    #[arg(long, value_name = "SIZE", value_parser = nonzero_size)]
    upload_max_rate: Option<u64>,
    /// Once the VM has ended, wait this long for deliveries still queued (what is left is sent
    /// by the next run, or `crashvmm deliver`).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    upload_wait: std::time::Duration,
    /// A virtio-blk disk (virtio-mmio, ACPI LNRO0005): path=FILE[,readonly]. Repeatable.
    #[arg(long, value_name = "path=FILE[,readonly]", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,
    /// The disk the guest's crash kernel writes its dump to (created sparse, emptied at start;
    /// serial "crashvmm-crashdisk"): path=FILE,size=SIZE.
    #[arg(long, value_name = "path=FILE,size=SIZE", value_parser = parse_crash_disk)]
    crash_disk: Option<CrashDiskConfig>,
    /// A virtio-net device on a TAP interface: an existing one this user may use, or one
    /// crashvmm creates (with CAP_NET_ADMIN) for its lifetime. transport=pci (the default: a
    /// PCI function with MSI-X) or mmio (virtio-mmio, ACPI LNRO0005, an IOAPIC pin).
    /// tap=NAME[,mac=MAC][,transport=pci|mmio]. Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,transport=pci|mmio]", value_parser = parse_net)]
    net: Vec<NetConfig>,
    /// Report a hang when the guest makes no progress for this long (no vCPU exits, and every
    /// vCPU spinning with interrupts disabled), e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = nonzero_duration)]
    watchdog: Option<std::time::Duration>,
    /// What to do about a hang: nmi (inject an NMI; with kernel.unknown_nmi_panic=1 the guest
    /// panics and its crash handling follows), reset, host-dump (a live vmcore of the hung
    /// guest, which runs on), or host-dump,nmi / host-dump,reset (the live vmcore, then the NMI
    /// or the reset).
    #[arg(long, value_name = "ACTION", default_value = "nmi")]
    on_hang: OnHang,
    /// Overwrite output files (--events, --console file:, --console-log, --crash-disk) that
    /// exist, hold data and are not crashvmm's. Without it crashvmm refuses to start.
    #[arg(long)]
    overwrite: bool,
    /// Serve the control socket here (owner-only; see `crashvmm ctl`).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Per-thread seccomp filters: on (a forbidden system call ends crashvmm with exit code 159
    /// and a report naming the thread and the call), log (the kernel logs it and lets it
    /// through) or off.
    #[arg(long, value_name = "on|log|off", default_value = "on", value_enum)]
    seccomp: SeccompMode,
    /// Test knob: a thread of this kind (vmm, vcpu, vmcore-writer, vmcore-hasher) opens an IPv4
    /// socket, which its filter forbids, as soon as it is confined.
    #[arg(long, value_name = "KIND", value_enum, hide = true)]
    seccomp_selftest: Option<ThreadKind>,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A value its parser refused is one line (clap's hint to try --help left out).
        Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation => {
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or_default());
            return ExitCode::from(code::USAGE as u8);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { code::USAGE as u8 } else { 0 });
        }
    };
    // Whether stderr is a terminal is decided here, once: env_logger's own stderr target asks
    // again (ioctl TCGETS) for every record it writes in colour, which the confined threads'
    // seccomp filters forbid. A pipe target with a fixed style asks nothing.
    let style = if std::io::stderr().is_terminal() { WriteStyle::Always } else { WriteStyle::Never };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .target(env_logger::Target::Pipe(Box::new(std::io::stderr())))
        .write_style(style)
        .init();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Test(args) => test(*args),
        Command::Report { dir } => vmm::crash::summary::print(&dir).map(|()| 0),
        Command::Crashes { url, signature, json } => crashes(&url, signature.as_deref(), json),
        Command::Fetch { url, dest } => delivery::fetch(&url, &dest).map_err(anyhow::Error::from).map(|dir| {
            println!("{}", dir.display());
            0
        }),
        Command::Deliver { upload, crash_dir, upload_keep_local, upload_max_rate, wait } => {
            deliver(upload, &crash_dir, upload_keep_local, upload_max_rate.as_deref(), wait)
        }
        Command::Ctl { api_socket, timeout, command } => {
            let timeout = match timeout {
                Some(Timeout::After(d)) => Some(d),
                Some(Timeout::Never) => None,
                None => vmm::api::default_timeout(&command.request()),
            };
            vmm::api::client(&api_socket, &command.request(), timeout)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        // A reader that went away (`crashvmm ctl subscribe | head -1`) ends us quietly.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crashvmm: error: {}", vmm::error::Chain(e.as_ref()));
            ExitCode::from(code::ERROR as u8)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    let config = VmConfig {
        memory_bytes: parse_memory(&args.memory)?,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        vcpus: args.vcpus,
        console: args.console,
        console_log: args.console_log,
        events: args.events,
        kvm_device: args.kvm_device,
        hyperv: args.hyperv,
        pvpanic: args.pvpanic,
        pvpanic_events: args.pvpanic_events,
        hyperv_crash_message: args.hyperv_crash_message,
        vmbus_unload_delay: args.vmbus_unload_delay,
        vmbus_unload_response: args.vmbus_unload_response,
        policy: Policy {
            on_panic: args.on_panic,
            after_crash: args.after_crash,
            kdump_timeout: args.kdump_timeout,
            host_dump: args.host_dump,
            max_crashes: args.max_crashes,
            hyperv: args.hyperv,
            on_hang: args.on_hang,
            reset_backoff: vmm::crash::ResetBackoff { initial: args.reset_backoff, max: args.reset_backoff_max },
        },
        watchdog: args.watchdog,
        crash_dir: args.crash_dir,
        crash_dir_max: args.crash_dir_max,
        metrics_file: args.metrics_file,
        vmcores_per_signature: args.vmcores_per_signature,
        upload_host: args.upload_host,
        upload: args.upload,
        upload_options: vmm::upload::UploadOptions {
            keep_local: args.upload_keep_local,
            max_rate: args.upload_max_rate,
        },
        upload_wait: args.upload_wait,
        vmcore_sha256: args.vmcore_sha256,
        dump: DumpSpec { format: args.vmcore_format, dump_level: args.dump_level, compression: args.vmcore_compress },
        live_dump_max_copy: parse_memory(&args.live_dump_max_copy)?,
        live_dump_snapshot: args.live_dump_snapshot,
        disks: args.disk,
        crash_disk: args.crash_disk,
        nets: args.net,
        api_socket: args.api_socket,
        seccomp: args.seccomp,
        seccomp_selftest: args.seccomp_selftest,
        overwrite: args.overwrite,
    };
    Ok(vmm::vm::run(&config)?.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `crashvmm ctl` command line gives a request line the control socket accepts as the
    /// request it names.
    #[test]
    fn every_ctl_command_is_a_valid_api_request() {
        use vmm::api::SysrqKey;
        use vmm::api::{parse, Request};
        let key = |k: &str| k.parse::<SysrqKey>().unwrap();
        let cases: [(&[&str], Request); 13] = [
            (&["status"], Request::Status),
            (&["inject-nmi"], Request::InjectNmi { vcpu: None }),
            (&["inject-nmi", "--vcpu", "1"], Request::InjectNmi { vcpu: Some(1) }),
            (&["pause"], Request::Pause),
            (&["resume"], Request::Resume),
            (&["dump"], Request::Dump { format: None, dump_level: None, live: false }),
            (&["dump", "--live"], Request::Dump { format: None, dump_level: None, live: true }),
            (
                &["dump", "--format", "elf", "--dump-level", "0"],
                Request::Dump { format: Some(vmm::crash::vmcore::VmcoreFormat::Elf), dump_level: Some(0), live: false },
            ),
            (&["reset"], Request::Reset),
            (&["shutdown"], Request::Shutdown),
            (&["subscribe"], Request::Subscribe),
            (&["sysrq", "c"], Request::Sysrq { key: key("c") }),
            (&["sysrq", "9"], Request::Sysrq { key: key("9") }),
        ];
        for (args, expected) in cases {
            let argv = ["crashvmm", "ctl", "--api-socket", "/s"].iter().chain(args);
            let Command::Ctl { command: cmd, .. } = Cli::try_parse_from(argv).unwrap().command else {
                panic!("{args:?} is not a ctl command");
            };
            assert_eq!(parse(&cmd.request()), Ok(expected));
        }
        // A key that is not one letter or digit is refused before anything is sent.
        for bad in [&["sysrq"][..], &["sysrq", "cc"], &["sysrq", "-"], &["sysrq", "c", "d"]] {
            let argv = ["crashvmm", "ctl", "--api-socket", "/s"].iter().chain(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let argv = ["crashvmm", "ctl", "--api-socket", "/s", "sysrq", "cc"];
        let e = Cli::try_parse_from(argv).err().unwrap().to_string();
        assert!(e.contains("a sysrq key is one ASCII letter or digit, not \"cc\""), "{e}");
    }
}
