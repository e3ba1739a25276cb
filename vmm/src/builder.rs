//! Building a VM from a [`VmConfig`]: guest memory, ACPI tables, the kernel, devices and
//! vCPUs configured but not yet running. Running it is `vm.rs`'s business (as Firecracker's
//! `builder.rs` builds what its VMM runs).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
use devices::bus::{BusError, MmioBus, PioBus};
use devices::hyperv::HvConfig;
use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use devices::pci::{PciBus, PCI_CONFIG_IO_LEN, PCI_CONFIG_IO_PORT};
use devices::pvpanic::{PvPanic, PVPANIC_PORT};
use devices::rtc::{Rtc, RTC_BASE, RTC_LEN};
use devices::virtio::net::{RX_QUEUE, TX_QUEUE};
use devices::virtio::pci::BAR_SIZE;
use devices::virtio::{VirtioBlock, VIRTIO_MMIO_WINDOW};
use devices::vmbus::ServerConfig;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiError, Dsdt};
use crate::boot::{self, BootError};
use crate::config::{ConfigError, CrashDiskConfig, DiskConfig, Transport, VmConfig};
use crate::console::{ConsoleError, SharedConsole};
use crate::control::{Kicker, SignalQueue, VcpuControl};
use crate::cpuid;
use crate::disk::{
    CrashDiskWatch, DiskError, FileBackend, VirtioBlockMmio, CRASH_DISK_SERIAL, VIRTIO_GSIS, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_STRIDE,
};
use crate::events::{EventLog, EventLogError};
use crate::hyperv::{self, HyperV, HypervError};
use crate::layout::{self, COM1_BASE, COM1_GSI, COM1_LEN, KVM_TSS_ADDR, PCI_MMIO_SIZE, PCI_MMIO_START};
use crate::net::{self, NetDevice, NetError, NetIrq, NetSlot, Tap};
use crate::serial::{IrqLine, SerialDevice};
use crate::vcpu::{self, ExitContext, VcpuError};
use crate::vmbus::Deferred;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    #[error("cannot open {path} (is KVM available and accessible to this user?)")]
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
    #[error("{what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error("cannot allocate {bytes} bytes of guest memory")]
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
    #[error("device wiring")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Hyperv(#[from] HypervError),
    #[error(transparent)]
    ApiSocket(#[from] crate::api::BindError),
    #[error("cannot start the upload")]
    Upload(#[source] crate::upload::StartError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// What a boot needs from the session: the event log, the console, and the devices whose
/// state outlives a reset.
pub struct Shared<'a> {
    pub events: &'a EventLog,
    pub console: &'a SharedConsole,
    /// The CMOS RTC keeps a time the guest set across resets, as a battery-backed one does.
    pub rtc: &'a Arc<Mutex<Rtc>>,
    /// `--net`'s TAP interfaces, opened once for the session, in order.
    pub taps: &'a [Arc<Tap>],
}

/// A VM built and ready to run: its vCPUs are configured and no thread runs them yet.
pub struct Machine {
    /// Shared with the network devices, which raise their interrupts on it.
    pub vm: Arc<VmFd>,
    pub vcpus: Vec<VcpuFd>,
    /// What the exit handlers and the executor share.
    pub ctx: Arc<ExitContext>,
    /// COM1, for console input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The network devices, each with its TAP, for their threads.
    pub nets: Vec<NetSlot>,
}

/// Build a fresh VM for one boot of the guest.
pub fn build(config: &VmConfig, kvm: &Kvm, shared: &Shared<'_>) -> Result<Machine, VmError> {
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
    vm.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config::default()).map_err(kvm_err("KVM_CREATE_PIT2"))?;

    let mem = GuestMemoryMmap::from_ranges(&layout::ram_ranges(config.memory_bytes))
        .map_err(|source| VmError::GuestMemory { bytes: config.memory_bytes, source })?;
    huge_pages(&mem);
    register_memory(&vm, &mem)?;

    let disks = disk_slots(config)?;
    let places = net_places(config, disks.len());
    let rsdp = acpi::write_acpi_tables(&mem, config.vcpus, dsdt(config, &disks, &places))?;
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

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("serial eventfd"))?;
    vm.register_irqfd(&serial_irq, COM1_GSI).map_err(kvm_err("KVM_IRQFD (serial)"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(IrqLine(serial_irq), shared.console.clone())));
    let mut bus = port_bus(config, &serial, shared.rtc)?;
    // This boot's: a new boot's first write to the crash disk counts again.
    let crash_disk = config.crash_disk.as_ref().map(|_| CrashDiskWatch::new());
    let (mmio, nets, pci) = mmio_bus(&vm, &mem, &disks, crash_disk.as_ref(), config, &places, shared.taps)?;
    if let Some(pci) = pci {
        bus.insert(PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_LEN, pci)?;
    }

    let mut supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        cpuid::add_tsc_deadline_timer(&mut supported);
    }
    let supported = if config.hyperv {
        let options = hyperv::setup_msr_exits(kvm, &vm)?;
        hyperv::hyperv_cpuid(&supported, config.vcpus, options)?
    } else {
        supported
    };
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let fd = vm.create_vcpu(id as u64).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let entry = (id == 0).then_some(layout.entry);
        vcpu::configure_vcpu(&fd, id, &cpuid::vcpu_cpuid(&supported, id, config.vcpus), entry)?;
        vcpus.push(fd);
    }
    let hyperv = match config.hyperv {
        true => {
            let tsc_khz = vcpus[0].get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
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
    let ctx = Arc::new(ExitContext {
        bus,
        mmio,
        mem,
        hyperv,
        events: shared.events.clone(),
        signals: SignalQueue::new().map_err(io_err("crash signal eventfd"))?,
        kicker: Kicker::new(config.vcpus),
        deferred: Deferred::default(),
        control: VcpuControl::new(config.vcpus),
        exits: Default::default(),
        crash_disk,
        nets: nets.iter().map(|(dev, _)| dev.clone()).collect(),
    });
    Ok(Machine { vm, vcpus, ctx, serial, nets })
}

/// The DSDT: every device the guest must find through ACPI (the network devices at `places`).
fn dsdt(config: &VmConfig, disks: &[DiskSlot<'_>], places: &[NetPlace]) -> Dsdt {
    let mut dsdt = Dsdt::new();
    acpi::add_com1(&mut dsdt);
    acpi::add_rtc(&mut dsdt);
    if config.pvpanic {
        acpi::add_pvpanic(&mut dsdt);
    }
    if config.hyperv {
        acpi::add_vmbus(&mut dsdt);
    }
    for (i, d) in disks.iter().enumerate() {
        acpi::add_virtio_mmio(&mut dsdt, i, d.base, d.gsi);
    }
    for (i, place) in places.iter().enumerate() {
        if let NetPlace::Mmio { base, gsi } = *place {
            acpi::add_virtio_mmio(&mut dsdt, disks.len() + i, base, gsi);
        }
    }
    if places.iter().any(|p| matches!(p, NetPlace::Pci { .. })) {
        acpi::add_pci_root(&mut dsdt, PCI_MMIO_START, PCI_MMIO_SIZE);
    }
    dsdt
}

/// The port-I/O devices: COM1, the i8042 reset line, ACPI PM, the RTC, pvpanic.
fn port_bus(config: &VmConfig, serial: &Arc<Mutex<SerialDevice>>, rtc: &Arc<Mutex<Rtc>>) -> Result<PioBus, VmError> {
    let mut bus = PioBus::new();
    bus.insert(COM1_BASE, COM1_LEN, serial.clone())?;
    bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new())))?;
    bus.insert(ACPI_PM_BASE, ACPI_PM_LEN, Arc::new(Mutex::new(AcpiPm::new())))?;
    bus.insert(RTC_BASE, RTC_LEN, rtc.clone())?;
    if config.pvpanic {
        bus.insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic::new(config.pvpanic_events))))?;
    }
    Ok(bus)
}

/// PCI bus 0, on the port bus (configuration) and the MMIO bus (its window).
type SharedPciBus = Arc<Mutex<PciBus>>;

/// Where a network device is: a virtio-mmio window and its line, or BAR 0 of a PCI function.
#[derive(Debug, Clone, Copy)]
enum NetPlace {
    Mmio { base: u64, gsi: u32 },
    Pci { bar: u32 },
}

/// Each network device's place: virtio-mmio ones after the disks' windows and lines
/// ([`disk_slots`] checked they fit), virtio-pci ones in the PCI window, one BAR each.
fn net_places(config: &VmConfig, disks: usize) -> Vec<NetPlace> {
    let (mut mmio, mut pci) = (disks, 0u64);
    config
        .nets
        .iter()
        .map(|n| match n.transport {
            Transport::Mmio => {
                let (base, gsi) = virtio_slot(mmio).expect("disk_slots checked the device count");
                mmio += 1;
                NetPlace::Mmio { base, gsi }
            }
            Transport::Pci => {
                let bar = PCI_MMIO_START + pci * u64::from(BAR_SIZE);
                pci += 1;
                NetPlace::Pci { bar: bar as u32 }
            }
        })
        .collect()
}

/// The virtio-mmio devices: the block devices, each with its irqfd (the crash disk's writes
/// watched by `watch`); then the network devices (after the disks), whose queue notifications
/// are ioeventfds for their threads and which raise their interrupts themselves
/// ([`NetIrq::Kvm`]), each on the MMIO bus or on PCI bus 0 (returned when there is one, for
/// the port bus: its configuration ports).
fn mmio_bus(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    disks: &[DiskSlot<'_>],
    watch: Option<&CrashDiskWatch>,
    config: &VmConfig,
    places: &[NetPlace],
    taps: &[Arc<Tap>],
) -> Result<(MmioBus, Vec<NetSlot>, Option<SharedPciBus>), VmError> {
    let mut mmio = MmioBus::new();
    for d in disks {
        let (backend, readonly, serial) = match &d.disk {
            Slot::Crash(c) => {
                let watch = watch.cloned().unwrap_or_default();
                (FileBackend::crash_disk(&c.path, c.size, watch)?, false, CRASH_DISK_SERIAL.to_string())
            }
            Slot::Disk(c, i) => (FileBackend::open(&c.path, c.readonly)?, c.readonly, format!("crashvmm-disk{i}")),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("virtio eventfd"))?;
        vm.register_irqfd(&irq, d.gsi).map_err(kvm_err("KVM_IRQFD (virtio)"))?;
        let block = VirtioBlock::new(backend, readonly, serial.as_bytes()).map_err(DiskError::Block)?;
        let dev = Arc::new(Mutex::new(VirtioBlockMmio::new(block, mem.clone(), irq)?));
        mmio.insert(d.base, VIRTIO_MMIO_WINDOW, dev)?;
    }
    let mut nets = Vec::new();
    let mut pci: Option<PciBus> = None;
    for (i, ((net, tap), place)) in config.nets.iter().zip(taps).zip(places.iter().copied()).enumerate() {
        // A queue's notification: an eventfd the net thread waits on, signalled by KVM
        // (ioeventfd) without an exit. Without that the write exits to the vCPU thread, whose
        // handler kicks the same eventfd: slower, never wrong.
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("virtio-net eventfd"));
        let kicks = [eventfd()?, eventfd()?];
        let mac = net.mac.unwrap_or_else(|| net::default_mac(&net.tap, i));
        let dev = match place {
            NetPlace::Mmio { base, gsi } => {
                let notify = IoEventAddress::Mmio(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
                for (queue, kick) in [RX_QUEUE, TX_QUEUE].into_iter().zip(&kicks) {
                    if let Err(e) = vm.register_ioevent(kick, &notify, queue as u32) {
                        log::info!(
                            "virtio-net: no ioeventfd for queue {queue} ({e}): its notifications exit to the vCPU"
                        );
                    }
                }
                let irq = NetIrq::Kvm(vm.clone());
                let dev = NetDevice::mmio(tap.clone(), mac, mem.clone(), irq, gsi, kicks)?;
                let dev = Arc::new(Mutex::new(dev));
                mmio.insert(base, VIRTIO_MMIO_WINDOW, dev.clone())?;
                dev
            }
            NetPlace::Pci { bar } => {
                let irq = NetIrq::Kvm(vm.clone());
                let dev = Arc::new(Mutex::new(NetDevice::pci(tap.clone(), mac, mem.clone(), irq, bar, kicks)?));
                let bus = pci.get_or_insert_with(|| PciBus::new(PCI_MMIO_START));
                let slot = bus.add(dev.clone()).ok_or(NetError::PciFull)?;
                log::info!("net{i}: virtio-pci at 00:{slot:02x}.0, BAR 0 at {bar:#x}");
                dev
            }
        };
        nets.push((dev, tap.clone()));
    }
    let pci = pci.map(|bus| Arc::new(Mutex::new(bus)));
    if let Some(bus) = &pci {
        mmio.insert(PCI_MMIO_START, PCI_MMIO_SIZE, bus.clone())?;
    }
    Ok((mmio, nets, pci))
}

/// The window and interrupt line of virtio-mmio device `index` (disks first, then networks).
fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    VIRTIO_GSIS.get(index).map(|&gsi| (VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_STRIDE, gsi))
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
    let slots: Vec<DiskSlot<'_>> = disks
        .enumerate()
        .map(|(i, disk)| {
            let (base, gsi) = virtio_slot(i).ok_or(DiskError::TooMany)?;
            Ok::<_, DiskError>(DiskSlot { disk, base, gsi })
        })
        .collect::<Result<_, _>>()?;
    // virtio-mmio network devices come after the disks, in the same windows and lines.
    let mmio_nets = config.nets.iter().filter(|n| n.transport == Transport::Mmio).count();
    if slots.len() + mmio_nets > VIRTIO_GSIS.len() {
        return Err(DiskError::TooMany.into());
    }
    Ok(slots)
}

pub fn check_kvm(kvm: &Kvm, vcpus: u32) -> Result<(), VmError> {
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

/// Ask for transparent huge pages on guest RAM (as QEMU does): fewer page-table entries, so a
/// live dump's `fork()` copies ~512 times fewer of them (docs/live-dump.md), and fewer TLB
/// misses. Advice only: without THP the guest runs the same.
fn huge_pages(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else { continue };
        // SAFETY: madvise on a mapping this process owns, for its whole length; MADV_HUGEPAGE
        // changes no contents and no permissions.
        if unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) } != 0 {
            log::debug!("MADV_HUGEPAGE on guest RAM: {}", io::Error::last_os_error());
        }
    }
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
