//! Building a VM from a [`VmConfig`] and running it to its end.
//!
//! The main thread owns the event loop (event-manager): serial input from stdin, host
//! signals, and the notification that a vCPU thread decided the VM must end. Each vCPU runs in
//! its own thread ([`vcpu::run_vcpu`]).

use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
use devices::bus::{BusError, MmioBus, PioBus};
use devices::hyperv::HvConfig;
use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use devices::pvpanic::{PvPanic, PVPANIC_ACPI_HID, PVPANIC_PORT};
use devices::rtc::{Rtc, RTC_ACPI_HID, RTC_BASE, RTC_LEN};
use devices::virtio::{VirtioBlock, VIRTIO_MMIO_ACPI_HID, VIRTIO_MMIO_WINDOW};
use devices::vmbus::ServerConfig;
use devices::{PioDevice, VmRequest};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::acpi::{self, AcpiError, Dsdt};
use crate::api::{self, ApiServer};
use crate::boot::{self, BootError};
use crate::config::{ConfigError, VmConfig};
use crate::config::{CrashDiskConfig, DiskConfig};
use crate::console::{ConsoleError, ConsoleMode, ConsoleOutput, ConsoleTail, EscapeFilter, RawTerminal, SharedConsole};
use crate::cpuid;
use crate::crash::executor::{BootEnd, CrashHandling};
use crate::crash::report::GuestInfo;
use crate::crash::{CrashSignal, Orchestrator, Policy};
use crate::disk::{
    DiskError, FileBackend, VirtioBlockMmio, CRASH_DISK_SERIAL, VIRTIO_GSIS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE,
};
use crate::events::{Event, EventLog, EventLogError};
use crate::exit::VmExit;
use crate::hyperv::{self, HyperV};
use crate::layout::{self, KVM_TSS_ADDR};
use crate::seccomp::{self, ThreadKind};
use crate::sync::lock;
use crate::vcpu::{self, ExitContext, ExitState, Kicker, SignalQueue, VcpuControl, VcpuError};
use crate::vmbus::{self, Deferred};
use crate::watchdog::Watchdog;

/// COM1.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
pub const COM1_GSI: u32 = 4;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    #[error("cannot open {path}: {source} (is KVM available and accessible to this user?)")]
    OpenKvm {
        path: PathBuf,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApi(i32),
    #[error("this KVM lacks {0}, which crashvmm needs")]
    MissingCap(&'static str),
    #[error("{requested} vCPUs requested, this KVM allows at most {max}")]
    TooManyVcpus { requested: u32, max: usize },
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error("cannot allocate {bytes} bytes of guest memory: {source}")]
    GuestMemory {
        bytes: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("device wiring: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Serial interrupt line: an eventfd registered as an irqfd for GSI 4.
struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The 8250 UART on the port bus.
struct SerialDevice(Serial<IrqLine, NoEvents, SharedConsole>);

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest> {
        if let Some(&b) = data.first() {
            if let Err(e) = self.0.write(offset as u8, b) {
                log::warn!("serial: {e:?}");
            }
        }
        None
    }
}

/// Wakes the main loop when a vCPU asked for the VM to end.
struct ExitWatcher(Arc<ExitState>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.notify_fd().read();
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.notify_fd(), EventSet::IN)) {
            log::error!("cannot watch vCPU exits: {e:?}");
        }
    }
}

/// SIGINT/SIGTERM through signal-hook self-pipes.
struct SignalWatcher {
    pipes: Vec<(i32, UnixStream)>,
    state: Arc<ExitState>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let signal = events.data() as i32;
        if let Some((_, pipe)) = self.pipes.iter_mut().find(|(s, _)| *s == signal) {
            let mut buf = [0u8; 16];
            let _ = pipe.read(&mut buf);
        }
        log::info!("received signal {signal}, stopping the VM");
        self.state.request(VmExit::Stopped { signal });
    }
    fn init(&mut self, ops: &mut EventOps) {
        for (signal, pipe) in &self.pipes {
            if let Err(e) = ops.add(Events::with_data(pipe, *signal as u32, EventSet::IN)) {
                log::error!("cannot watch signal {signal}: {e:?}");
            }
        }
    }
}

/// Console input from stdin to the UART.
struct StdinWatcher {
    serial: Arc<Mutex<SerialDevice>>,
    filter: EscapeFilter,
    escape_enabled: bool,
    state: Arc<ExitState>,
}

impl MutEventSubscriber for StdinWatcher {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let capacity = lock(&self.serial).0.fifo_capacity();
        if capacity == 0 {
            // The guest has not drained the FIFO yet; let it catch up.
            std::thread::sleep(Duration::from_millis(2));
            return;
        }
        let mut buf = vec![0u8; capacity];
        match io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                // End of input: stop watching, the guest keeps running.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let (bytes, quit) =
                    if self.escape_enabled { self.filter.feed(&buf[..n]) } else { (buf[..n].to_vec(), false) };
                let mut serial = lock(&self.serial);
                if let Err(e) = serial.0.enqueue_raw_bytes(&bytes) {
                    log::warn!("serial input dropped: {e:?}");
                }
                drop(serial);
                if quit {
                    log::info!("console escape: stopping the VM");
                    self.state.request(VmExit::Stopped { signal: libc::SIGINT });
                }
            }
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null (EPERM): then there is no console input.
        if let Err(e) = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN)) {
            log::debug!("stdin cannot be watched, no console input: {e:?}");
        }
    }
}

/// Describe COM1 in the DSDT. On a hardware-reduced ACPI platform Linux has no legacy PIC and
/// so no built-in ISA IRQ mappings: the serial port's IRQ 4 only gets an IOAPIC route through
/// this `_CRS` (without it, opening /dev/ttyS0 fails and user-space console output is lost).
fn add_com1(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, EISAName, Interrupt, Name, Path, ResourceTemplate, IO};
    dsdt.add(&Device::new(
        Path::new("_SB_.COM1"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(
                Path::new("_CRS"),
                &ResourceTemplate::new(vec![
                    &IO::new(COM1_BASE, COM1_BASE, 1, COM1_LEN as u8),
                    // Consumer, edge-triggered, active-high, exclusive: an ISA interrupt.
                    &Interrupt::new(true, true, false, false, COM1_GSI),
                ]),
            ),
        ],
    ));
}

/// Describe pvpanic as QEMU's ISA device: `QEMU0001` with one I/O port.
fn add_pvpanic(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, Name, Path, ResourceTemplate, IO};
    dsdt.add(&Device::new(
        Path::new("_SB_.PEVT"),
        vec![
            &Name::new(Path::new("_HID"), &PVPANIC_ACPI_HID),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1)])),
        ],
    ));
}

/// Describe the CMOS RTC as `PNP0B00` with its two ports, so that Linux's `rtc_cmos` binds to
/// it through PnP ACPI (a hardware-reduced platform has no other way to announce it). No IRQ:
/// the device raises none, and `rtc_cmos` then runs without alarms.
fn add_rtc(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, EISAName, Name, Path, ResourceTemplate, IO};
    dsdt.add(&Device::new(
        Path::new("_SB_.RTC_"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new(RTC_ACPI_HID)),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&IO::new(RTC_BASE, RTC_BASE, 1, RTC_LEN as u8)])),
        ],
    ));
}

/// The host's clock for the RTC: UTC seconds since the epoch.
fn host_clock() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Which disk a virtio slot holds.
enum Slot<'a> {
    Crash(&'a CrashDiskConfig),
    Disk(&'a DiskConfig, usize),
}

/// A virtio-mmio device: its disk, window and interrupt.
struct DiskSlot<'a> {
    disk: Slot<'a>,
    base: u64,
    gsi: u32,
}

/// The crash disk first (so a crash kernel that knows nothing else sees it as /dev/vda; it is
/// also named by its serial), then the other disks.
fn disk_slots(config: &VmConfig) -> Result<Vec<DiskSlot<'_>>, VmError> {
    let disks =
        config.crash_disk.iter().map(Slot::Crash).chain(config.disks.iter().enumerate().map(|(i, d)| Slot::Disk(d, i)));
    disks
        .enumerate()
        .map(|(i, disk)| {
            let gsi = *VIRTIO_GSIS.get(i).ok_or(DiskError::TooMany)?;
            Ok(DiskSlot { disk, base: VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_STRIDE, gsi })
        })
        .collect()
}

/// A virtio-mmio device for Linux's `virtio_mmio` driver, which matches ACPI `LNRO0005` (the
/// Debian kernels lack `virtio_mmio.device=` on the command line): its register window and its
/// interrupt.
fn add_virtio_mmio(dsdt: &mut Dsdt, index: usize, base: u64, gsi: u32) {
    use acpi_tables::aml::{Device, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate};
    dsdt.add(&Device::new(
        Path::new(&format!("_SB_.VR{index:02}")),
        vec![
            &Name::new(Path::new("_HID"), &VIRTIO_MMIO_ACPI_HID),
            &Name::new(Path::new("_UID"), &(index as u8)),
            &Name::new(
                Path::new("_CRS"),
                &ResourceTemplate::new(vec![
                    &Memory32Fixed::new(true, base as u32, VIRTIO_MMIO_WINDOW as u32),
                    &Interrupt::new(true, true, false, false, gsi),
                ]),
            ),
        ],
    ));
}

/// The VMBus root device `hv_vmbus` probes for (`_HID "VMBus"`); its `_CRS` must exist,
/// empty is fine on x86.
fn add_vmbus(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, Name, Path, ResourceTemplate};
    dsdt.add(&Device::new(
        Path::new("_SB_.VMBS"),
        vec![
            &Name::new(Path::new("_HID"), &"VMBus"),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_DDN"), &"VMBUS"),
            &Name::new(Path::new("_STA"), &0x0fu8),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![])),
        ],
    ));
}

fn check_kvm(kvm: &Kvm, vcpus: u32) -> Result<(), VmError> {
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(VmError::KvmApi(api));
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if vcpus as usize > max {
        return Err(VmError::TooManyVcpus { requested: vcpus, max });
    }
    Ok(())
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| VmError::MissingCap("host mapping of guest memory"))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
        // outlives the VM (the vCPU threads are joined before `mem` is dropped).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// What lives across boots of the guest (a reset builds a fresh VM in the same session).
struct Session<'a> {
    config: &'a VmConfig,
    kvm: Kvm,
    events: EventLog,
    console: SharedConsole,
    signal_pipes: Vec<(i32, UnixStream)>,
    crash: Arc<Mutex<CrashHandling>>,
    escape_enabled: bool,
    /// The control socket, when `--api-socket` was given.
    api: Option<UnixListener>,
    started: Instant,
    /// The CMOS RTC keeps a time the guest set across resets, as a battery-backed one does.
    rtc: Arc<Mutex<Rtc>>,
}

/// Run the VM described by `config` to its end.
pub fn run(config: &VmConfig) -> Result<VmExit, VmError> {
    config.validate()?;
    let events = match &config.events {
        Some(p) => EventLog::create(p)?,
        None => EventLog::disabled(),
    };
    let console = SharedConsole::new(ConsoleOutput::new(&config.console, config.console_log.as_deref())?);

    let open_err = |source| VmError::OpenKvm { path: config.kvm_device.clone(), source };
    let kvm_path = CString::new(config.kvm_device.as_os_str().as_bytes())
        .map_err(|_| open_err(vmm_sys_util::errno::Error::new(libc::EINVAL)))?;
    let kvm = Kvm::new_with_path(kvm_path).map_err(open_err)?;
    check_kvm(&kvm, config.vcpus)?;

    register_signal_handler(SIGRTMIN(), vcpu::kick_handler).map_err(kvm_err("registering the vCPU kick signal"))?;
    let mut signal_pipes = Vec::new();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let (rx, tx) = UnixStream::pair().map_err(io_err("signal pipe"))?;
        rx.set_nonblocking(true).map_err(io_err("signal pipe"))?;
        signal_hook::low_level::pipe::register(signal, tx).map_err(io_err("signal handler"))?;
        signal_pipes.push((signal, rx));
    }
    let policy = Policy { hyperv: config.hyperv, ..config.policy.clone() };
    let guest = GuestInfo {
        kernel: config.kernel.display().to_string(),
        cmdline: config.cmdline.clone(),
        memory_bytes: config.memory_bytes,
        vcpus: config.vcpus,
    };
    let mut handling = CrashHandling::new(Orchestrator::new(policy), config.crash_dir.clone(), guest, events.clone());
    handling.crash_disk = config.crash_disk.as_ref().map(|c| c.path.clone());
    handling.vmcore_sha256 = config.vmcore_sha256;
    let crash = Arc::new(Mutex::new(handling));
    let raw_terminal = match config.console {
        ConsoleMode::Stdio => RawTerminal::enable(),
        _ => None,
    };
    if raw_terminal.is_some() {
        eprintln!("crashvmm: console on this terminal; press Ctrl-A x to stop the VM\r");
    }
    let api = match &config.api_socket {
        Some(path) => Some(api::bind(path).map_err(|source| VmError::Io { what: "control socket", source })?),
        None => None,
    };
    // Confine this thread (the event loop, crash handling) before any guest code runs; the vCPU
    // and vmcore-hasher threads confine themselves further.
    seccomp::init(config.seccomp, events.raw_fd(), config.seccomp_selftest)?;
    seccomp::apply(ThreadKind::Vmm)?;
    let started = Instant::now();
    let session = Session {
        config,
        kvm,
        events: events.clone(),
        console,
        signal_pipes,
        crash: crash.clone(),
        escape_enabled: raw_terminal.is_some(),
        api,
        started,
        rtc: Arc::new(Mutex::new(Rtc::new(host_clock))),
    };

    let mut boots = 0u32;
    let exit = loop {
        match boot(&session, boots)? {
            BootEnd::Exit(exit) => break exit,
            BootEnd::Reset => {
                boots += 1;
                let mut c = lock(&crash);
                let crashes = c.orchestrator.crashes();
                log::warn!("resetting the VM after crash {crashes}");
                events.emit(Event::VmReset { crashes });
                c.on_boot();
            }
        }
    };
    session.console.sync();
    drop(raw_terminal);
    if let Some(path) = &config.api_socket {
        let _ = std::fs::remove_file(path);
    }
    log::info!("VM ended after {:.3} s: {}", started.elapsed().as_secs_f64(), exit.reason());
    events.emit(Event::VmExited { exit_code: exit.exit_code(), reason: exit.reason() });
    events.sync();
    Ok(exit)
}

/// Build a fresh VM, run it until this boot ends, and say how.
fn boot(s: &Session, boot_number: u32) -> Result<BootEnd, VmError> {
    let config = s.config;
    let kvm = &s.kvm;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config::default()).map_err(kvm_err("KVM_CREATE_PIT2"))?;

    let mem = GuestMemoryMmap::from_ranges(&layout::ram_ranges(config.memory_bytes))
        .map_err(|source| VmError::GuestMemory { bytes: config.memory_bytes, source })?;
    register_memory(&vm, &mem)?;

    let mut dsdt = Dsdt::new();
    add_com1(&mut dsdt);
    add_rtc(&mut dsdt);
    if config.pvpanic {
        add_pvpanic(&mut dsdt);
    }
    if config.hyperv {
        add_vmbus(&mut dsdt);
    }
    let disks = disk_slots(config)?;
    for (i, d) in disks.iter().enumerate() {
        add_virtio_mmio(&mut dsdt, i, d.base, d.gsi);
    }
    let rsdp = acpi::write_acpi_tables(&mem, config.vcpus, dsdt)?;
    let layout =
        boot::load_kernel(&mem, config.memory_bytes, &config.kernel, config.initrd.as_deref(), &config.cmdline, rsdp)?;
    boot::write_page_tables(&mem)?;
    boot::write_gdt(&mem, &layout.entry)?;
    log::info!(
        "kernel {}, initrd {:x?}, {} MiB, {} vCPU(s)",
        layout.entry,
        layout.initrd,
        config.memory_bytes >> 20,
        config.vcpus
    );

    // Devices.
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("serial eventfd"))?;
    vm.register_irqfd(&serial_irq, COM1_GSI).map_err(kvm_err("KVM_IRQFD (serial)"))?;
    let serial = Arc::new(Mutex::new(SerialDevice(Serial::new(IrqLine(serial_irq), s.console.clone()))));
    let mut bus = PioBus::new();
    bus.insert(COM1_BASE, COM1_LEN, serial.clone())?;
    bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new())))?;
    bus.insert(ACPI_PM_BASE, ACPI_PM_LEN, Arc::new(Mutex::new(AcpiPm::new())))?;
    bus.insert(RTC_BASE, RTC_LEN, s.rtc.clone())?;

    if config.pvpanic {
        bus.insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic::new(config.pvpanic_events))))?;
    }
    let mut mmio = MmioBus::new();
    for d in &disks {
        let (backend, readonly, serial) = match &d.disk {
            Slot::Crash(c) => (FileBackend::crash_disk(&c.path, c.size)?, false, CRASH_DISK_SERIAL.to_string()),
            Slot::Disk(c, i) => (FileBackend::open(&c.path, c.readonly)?, c.readonly, format!("crashvmm-disk{i}")),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("virtio eventfd"))?;
        vm.register_irqfd(&irq, d.gsi).map_err(kvm_err("KVM_IRQFD (virtio)"))?;
        let block =
            VirtioBlock::new(backend, readonly, serial.as_bytes()).map_err(|e| DiskError::Virtio(e.to_string()))?;
        let dev = Arc::new(Mutex::new(VirtioBlockMmio::new(block, mem.clone(), irq)?));
        mmio.insert(d.base, VIRTIO_MMIO_WINDOW, dev)?;
    }

    // vCPUs.
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let supported = if config.hyperv {
        hyperv::setup_msr_exits(kvm, &vm)?;
        hyperv::hyperv_cpuid(&supported, config.vcpus)?
    } else {
        supported
    };
    let mut vcpu_fds = Vec::new();
    for id in 0..config.vcpus {
        let fd = vm.create_vcpu(id as u64).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let entry = (id == 0).then_some(layout.entry);
        vcpu::configure_vcpu(&fd, id, &cpuid::vcpu_cpuid(&supported, id, config.vcpus), entry)?;
        vcpu_fds.push(fd);
    }
    let hyperv = match config.hyperv {
        true => {
            let tsc_khz = vcpu_fds[0].get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
            Some(HyperV::new(
                HvConfig {
                    vcpus: config.vcpus,
                    tsc_hz: tsc_khz as u64 * 1000,
                    apic_hz: hyperv::APIC_HZ,
                    crash_message: config.hyperv_crash_message,
                },
                ServerConfig {
                    vcpus: config.vcpus,
                    unload_delay: config.vmbus_unload_delay,
                    unload_response: config.vmbus_unload_response,
                },
            ))
        }
        false => None,
    };

    let state = Arc::new(ExitState::new().map_err(io_err("exit eventfd"))?);
    let kicker = Arc::new(Kicker::new(config.vcpus));
    let ctx = Arc::new(ExitContext {
        bus,
        mmio,
        mem,
        hyperv,
        events: s.events.clone(),
        signals: SignalQueue::new().map_err(io_err("crash signal eventfd"))?,
        kicker: kicker.clone(),
        deferred: Deferred::default(),
        control: VcpuControl::new(config.vcpus),
        exits: Default::default(),
    });
    let console = s.console.tail();
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> = EventManager::new()
        .map_err(|e| VmError::Io { what: "event manager", source: io::Error::other(format!("{e:?}")) })?;
    manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(state.clone()))));
    let decided: Arc<Mutex<Option<BootEnd>>> = Arc::default();
    manager.add_subscriber(Arc::new(Mutex::new(CrashWatcher {
        ctx: ctx.clone(),
        crash: s.crash.clone(),
        console: console.clone(),
        decided: decided.clone(),
    })));
    let pipes = s
        .signal_pipes
        .iter()
        .map(|(sig, p)| p.try_clone().map(|p| (*sig, p)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("signal pipe"))?;
    manager.add_subscriber(Arc::new(Mutex::new(SignalWatcher { pipes, state: state.clone() })));
    if let Some(listener) = &s.api {
        let listener = listener.try_clone().map_err(io_err("control socket"))?;
        manager.add_subscriber(Arc::new(Mutex::new(ApiServer::new(
            listener,
            ctx.clone(),
            state.clone(),
            s.crash.clone(),
            s.started,
            decided.clone(),
        ))));
    }
    if config.console == ConsoleMode::Stdio {
        manager.add_subscriber(Arc::new(Mutex::new(StdinWatcher {
            serial: serial.clone(),
            filter: EscapeFilter::default(),
            escape_enabled: s.escape_enabled,
            state: state.clone(),
        })));
    }

    if boot_number == 0 {
        s.events.emit(Event::VmStarted {
            vcpus: config.vcpus,
            memory_bytes: config.memory_bytes,
            kernel: config.kernel.display().to_string(),
        });
    }
    let vm = Arc::new(vm);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (id, fd) in vcpu_fds.into_iter().enumerate() {
        let (vm, ctx, state, kicker) = (vm.clone(), ctx.clone(), state.clone(), kicker.clone());
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || match seccomp::apply(ThreadKind::Vcpu) {
                Ok(()) => vcpu::run_vcpu(id as u32, fd, vm, ctx, state, kicker),
                Err(e) => state.request(VmExit::Error(format!("vCPU {id}: {e}"))),
            })
            .map_err(io_err("spawning a vCPU thread"))?;
        threads.push(t);
    }

    let mut watchdog = config.watchdog.map(|period| (Watchdog::new(period, Instant::now()), Instant::now()));
    // Run until crash handling decides (stop, reset) or the VM ends by itself.
    let decision = loop {
        if let Some(end) = lock(&decided).take() {
            break Some(end);
        }
        if state.get().is_some() {
            break None;
        }
        let tick = watchdog.as_ref().map(|(w, last)| *last + w.tick());
        let deadline =
            [lock(&s.crash).orchestrator.deadline(), ctx.deferred.next_due(), tick].into_iter().flatten().min();
        let timeout_ms = deadline
            .map_or(-1, |d| d.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32);
        if let Err(e) = manager.run_with_timeout(timeout_ms) {
            state.request(VmExit::Error(format!("event loop: {e:?}")));
        }
        vmbus::post_due(&ctx, Instant::now());
        if let Some(end) = lock(&s.crash).timer(&ctx, &console) {
            *lock(&decided) = Some(end);
        }
        if let Some((w, last)) = watchdog.as_mut().filter(|(w, last)| Instant::now() >= *last + w.tick()) {
            let now = Instant::now();
            *last = now;
            let samples = ctx.control.request_samples();
            ctx.kicker.kick_all();
            if let Some(stalled) = w.observe(ctx.exits.load(std::sync::atomic::Ordering::Relaxed), &samples, now) {
                log::warn!("watchdog: the guest made no progress for {:.1} s", stalled.as_secs_f64());
                s.events.emit(Event::GuestHang { seconds: stalled.as_secs_f64() });
                let signal = CrashSignal::GuestHang { stalled_ms: stalled.as_millis() as u64 };
                if let Some(end) = lock(&s.crash).signal(signal, &ctx, &console) {
                    *lock(&decided) = Some(end);
                }
            }
        }
    };
    state.stop();
    stop_vcpus(&threads, &kicker, &ctx.control);
    for t in threads {
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
    if let Some(end) = decision {
        return Ok(end);
    }
    let exit = state.get().unwrap_or(VmExit::Error("no exit reason".into()));
    let mut crash = lock(&s.crash);
    // Signals sent while the VM was ending (a panic just before the guest's own reboot) still
    // count.
    for signal in ctx.signals.drain() {
        if let Some(end) = crash.signal(signal, &ctx, &console) {
            return Ok(end);
        }
    }
    Ok(crash.vm_exit(exit, &ctx, &console))
}

/// Feeds crash signals from the vCPU threads to crash handling.
struct CrashWatcher {
    ctx: Arc<ExitContext>,
    crash: Arc<Mutex<CrashHandling>>,
    console: ConsoleTail,
    /// Set when crash handling ends this boot.
    decided: Arc<Mutex<Option<BootEnd>>>,
}

impl MutEventSubscriber for CrashWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        for signal in self.ctx.signals.drain() {
            if lock(&self.decided).is_some() {
                break;
            }
            let end = lock(&self.crash).signal(signal, &self.ctx, &self.console);
            if end.is_some() {
                *lock(&self.decided) = end;
            }
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.ctx.signals.notify_fd(), EventSet::IN)) {
            log::error!("cannot watch crash signals: {e:?}");
        }
    }
}

/// Kick every vCPU thread out of KVM_RUN until each has seen the stop flag and ended.
fn stop_vcpus(threads: &[JoinHandle<()>], kicker: &Kicker, control: &VcpuControl) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads.iter().any(|t| !t.is_finished()) {
        kicker.kick_all();
        control.wake();
        if Instant::now() > deadline {
            log::error!("vCPU threads did not stop within 5 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[test]
    fn dsdt_describes_the_rtc_with_its_ports_and_no_irq() {
        let mem = GuestMemoryMmap::from_ranges(&layout::ram_ranges(64 << 20)).unwrap();
        let mut dsdt = Dsdt::new();
        add_rtc(&mut dsdt);
        acpi::write_acpi_tables(&mem, 1, dsdt).unwrap();
        let mut tables = vec![0; (layout::ACPI_END - layout::ACPI_START) as usize];
        mem.read_slice(&mut tables, GuestAddress(layout::ACPI_START)).unwrap();
        let has = |bytes: &[u8]| tables.windows(bytes.len()).any(|w| w == bytes);
        // _HID: EISA id PNP0B00 as a DWord constant.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]));
        // _CRS: IO (Decode16, 0x70, 0x70, 1, 2), then the end tag: no interrupt descriptor.
        assert!(has(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x79]));
    }
}
