//! vCPU setup and the exit-handling path. One thread per vCPU runs [`run_vcpu`]; each exit
//! goes through the free function [`handle_exit`], which unit tests feed with made-up exits.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use devices::bus::{MmioBus, PioBus};
use devices::hyperv::hypercall::{handle_hypercall, HypercallInput, HYPERCALL_PORT};
use devices::hyperv::tlfs::{HV_SYNTHETIC_MSR_BASE, HV_SYNTHETIC_MSR_COUNT};
use devices::hyperv::{HvEvent, MsrError};
use devices::VmRequest;
use kvm_bindings::{kvm_msi, kvm_msr_entry, kvm_run, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::errno;

use crate::boot;
use crate::control::{ExitState, Kicker, SignalQueue, VcpuControl};
use crate::crash::executor::VmControl;
use crate::crash::CrashSignal;
use crate::disk::CrashDiskWatch;
use crate::events::{hex, Event, EventLog};
use crate::exit::VmExit;
use crate::hyperv::{GuestRam, HyperV, VmbusPort};
use crate::net::NetDevice;
use crate::sync::lock;
use crate::vcpu_state::VcpuState;
use crate::vmbus::{self, Deferred, VmbusLink};
use crate::watchdog::Sample;

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("vCPU {vcpu}: {what} failed")]
    Kvm {
        vcpu: u32,
        what: &'static str,
        #[source]
        source: errno::Error,
    },
}

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    Continue,
    /// The VM must end.
    Stop(VmExit),
    /// This vCPU cannot run on (triple fault): stop running it, the orchestrator decides.
    Park,
    /// The guest called the hypercall page: read the registers, run it, write RAX.
    Hypercall,
    /// This VP's SynIC changed: deliver its queued messages.
    Deliver,
    /// The guest reported a crash (pvpanic, the Hyper-V crash MSRs; its event is recorded, at
    /// `at`): read this vCPU's registers (where the kernel's panic path is), then send it.
    Report {
        signal: CrashSignal,
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// Rate-limited reporting of accesses nothing handles: debug for ports and MMIO (first access
/// of each address), warnings for synthetic MSRs (first few of each).
#[derive(Default)]
pub struct UnhandledLog {
    seen: HashSet<u64>,
    warnings: usize,
}

impl UnhandledLog {
    const MAX: usize = 64;
    const MAX_WARNINGS: usize = 16;

    fn note(&mut self, vcpu: u32, what: &str, addr: u64) {
        if self.seen.len() < Self::MAX && self.seen.insert(addr) {
            log::debug!("vCPU {vcpu}: {what} {addr:#x} has no device (further accesses not logged)");
        }
    }

    fn warn(&mut self, vcpu: u32, what: std::fmt::Arguments) {
        self.warnings += 1;
        if self.warnings <= Self::MAX_WARNINGS {
            log::warn!("vCPU {vcpu}: {what}");
            if self.warnings == Self::MAX_WARNINGS {
                log::warn!("vCPU {vcpu}: further warnings of this kind are suppressed");
            }
        }
    }
}

/// What the exit handler works with; shared by all vCPU threads.
pub struct ExitContext {
    pub bus: PioBus,
    pub mmio: MmioBus,
    pub mem: GuestMemoryMmap,
    pub hyperv: Option<Mutex<HyperV>>,
    pub events: EventLog,
    pub signals: SignalQueue,
    pub kicker: Kicker,
    /// VMBus replies to post later (the UNLOAD-delay knob).
    pub deferred: Deferred,
    /// Pausing the vCPUs and their saved registers.
    pub control: VcpuControl,
    /// vCPU exits handled (watchdog progress).
    pub exits: std::sync::atomic::AtomicU64,
    /// The crash disk's first write in this boot (when there is a crash disk).
    pub crash_disk: Option<CrashDiskWatch>,
    /// The network devices (their receiving is held after a crash).
    pub nets: Vec<Arc<Mutex<NetDevice>>>,
}

/// The executor's view of the VM: pause, resume, NMI, registers, memory.
impl VmControl for ExitContext {
    fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    fn vcpus(&self) -> u32 {
        self.control.vcpus()
    }

    fn pause(&self, timeout: Duration) -> bool {
        self.control.pause_all(&self.kicker, timeout)
    }

    fn paused(&self) -> bool {
        self.control.paused()
    }

    fn resume(&self) {
        self.control.resume();
    }

    fn hold_network(&self) {
        for (i, net) in self.nets.iter().enumerate() {
            lock(net).transport.device_mut().hold_rx();
            log::info!("net{i}: received frames are dropped until the guest resets the device (a crash)");
        }
    }

    /// Done by the vCPU's own thread before it runs again.
    fn inject_nmi(&self, vcpu: u32) {
        self.control.request_nmi(vcpu);
        self.kicker.kick(vcpu);
    }

    fn snapshots(&self) -> Vec<VcpuState> {
        self.control.snapshots()
    }

    fn reported(&self) -> Vec<VcpuState> {
        self.control.reported()
    }
}

impl ExitContext {
    fn hyperv(&self) -> Option<MutexGuard<'_, HyperV>> {
        self.hyperv.as_ref().map(|h| lock(h))
    }

    /// What the VMBus glue reports to.
    fn vmbus_link(&self) -> VmbusLink<'_> {
        VmbusLink { events: &self.events, signals: &self.signals, deferred: &self.deferred }
    }

    /// Post the deferred VMBus replies that are due (the main thread, from its timer).
    pub fn post_due(&self, now: Instant) {
        let Some(mut hv) = self.hyperv() else { return };
        let kick = vmbus::post_due(&self.vmbus_link(), &mut hv, now);
        drop(hv);
        kick.into_iter().for_each(|vp| self.kicker.kick(vp));
    }

    /// One time for the event and the signal: the crash's detection says when its cause was
    /// seen, which is this event's `ts`. The signal goes out from the vCPU loop
    /// ([`ExitAction::Report`]), with the registers read first.
    fn pvpanic(&self, vcpu: u32, bits: u8) -> ExitAction {
        let at = chrono::Utc::now();
        let e = devices::pvpanic::PvPanicEvents::from_bits(bits);
        let event =
            Event::Pvpanic { vcpu, bits, panicked: e.panicked, crash_loaded: e.crash_loaded, shutdown: e.shutdown };
        if self.events.emit_at(event, at) {
            log::warn!("vCPU {vcpu}: pvpanic event {bits:#x}");
        }
        ExitAction::Report { signal: CrashSignal::PvPanic { vcpu, bits }, at }
    }

    /// Send a crash report the vCPU loop holds ([`ExitAction::Report`]).
    fn report(&self, signal: CrashSignal, at: chrono::DateTime<chrono::Utc>) {
        self.signals.send_at(signal, at);
    }

    /// After an MMIO write (which may have notified the crash disk's queue, processed on this
    /// thread): the crash disk's first write in this boot, if that was it, becomes its event
    /// and signal, with one time for both.
    fn crash_disk_written(&self, vcpu: u32) {
        let Some(first) = self.crash_disk.as_ref().and_then(CrashDiskWatch::take) else { return };
        let at = chrono::Utc::now();
        let event = Event::CrashDiskWritten { vcpu, offset: first.offset, bytes: first.bytes };
        if self.events.emit_at(event, at) {
            log::warn!(
                "vCPU {vcpu}: first write to the crash disk ({} bytes at {:#x}): a crash kernel is writing a dump",
                first.bytes,
                first.offset
            );
        }
        self.signals.send_at(CrashSignal::CrashDiskWritten { vcpu }, at);
    }

    fn rdmsr(&self, vcpu: u32, index: u32, unhandled: &mut UnhandledLog) -> Option<u64> {
        let result = match self.hyperv() {
            Some(hv) if is_synthetic(index) => hv.partition.read_msr(vcpu, index),
            _ => Err(MsrError::Unknown(index)),
        };
        result.map_err(|e| self.msr_fault(vcpu, "RDMSR", index, &e, unhandled)).ok()
    }

    fn wrmsr(&self, vcpu: u32, index: u32, value: u64, unhandled: &mut UnhandledLog) -> Result<ExitAction, ()> {
        let result = match self.hyperv() {
            Some(mut hv) if is_synthetic(index) => hv.partition.write_msr(vcpu, index, value, &GuestRam(&self.mem)),
            _ => Err(MsrError::Unknown(index)),
        };
        match result {
            Ok(Some(event)) => Ok(self.hv_event(vcpu, event)),
            Ok(None) => Ok(ExitAction::Continue),
            Err(e) => {
                self.msr_fault(vcpu, "WRMSR", index, &e, unhandled);
                Err(())
            }
        }
    }

    fn msr_fault(&self, vcpu: u32, op: &str, index: u32, e: &MsrError, unhandled: &mut UnhandledLog) {
        if is_synthetic(index) {
            unhandled.warn(vcpu, format_args!("{op} {index:#x}: {e}; injecting #GP"));
        } else {
            unhandled.note(vcpu, "MSR", index as u64);
        }
    }

    fn hv_event(&self, vcpu: u32, event: HvEvent) -> ExitAction {
        match event {
            HvEvent::HypercallEnabled { guest_os_id, gpa } => {
                let event = Event::HypervEnabled { vcpu, guest_os_id: hex(guest_os_id), hypercall_gpa: hex(gpa) };
                if self.events.emit_guest(event) {
                    log::info!("vCPU {vcpu}: Hyper-V enabled (guest OS id {guest_os_id:#x}, hypercall page {gpa:#x})");
                }
                ExitAction::Continue
            }
            HvEvent::Crash(report) => {
                let at = chrono::Utc::now();
                let event = Event::HvCrash {
                    vcpu,
                    params: report.params.map(hex),
                    message: report.message.clone(),
                    message_error: report.message_error.clone(),
                };
                if self.events.emit_at(event, at) {
                    log::warn!("vCPU {vcpu}: Hyper-V crash report, P0-P4 {:x?}", report.params);
                    if let Some(e) = &report.message_error {
                        log::warn!("vCPU {vcpu}: crash message: {e}");
                    }
                }
                ExitAction::Report {
                    signal: CrashSignal::HvCrash { vcpu, params: report.params, message: report.message },
                    at,
                }
            }
            HvEvent::Teardown => {
                // Whatever is still queued was meant for the kernel that is going away.
                if let Some(mut hv) = self.hyperv() {
                    hv.partition.clear_queues();
                }
                let at = chrono::Utc::now();
                if self.events.emit_at(Event::GuestKexec { vcpu }, at) {
                    log::info!("vCPU {vcpu}: guest tore Hyper-V down (kexec imminent)");
                }
                self.signals.send_at(CrashSignal::GuestKexec { vcpu }, at);
                ExitAction::Continue
            }
            HvEvent::Reinitialized { guest_os_id } => {
                let at = chrono::Utc::now();
                if self.events.emit_at(Event::CrashKernelStarted { vcpu }, at) {
                    log::info!(
                        "vCPU {vcpu}: Hyper-V set up again (guest OS id {guest_os_id:#x}): crash kernel running"
                    );
                }
                self.signals.send_at(CrashSignal::CrashKernelStarted { vcpu }, at);
                ExitAction::Continue
            }
            HvEvent::SynicChanged => ExitAction::Deliver,
        }
    }
}

fn is_synthetic(index: u32) -> bool {
    (HV_SYNTHETIC_MSR_BASE..HV_SYNTHETIC_MSR_BASE + HV_SYNTHETIC_MSR_COUNT).contains(&index)
}

fn request_to_action(ctx: &ExitContext, vcpu: u32, req: VmRequest) -> ExitAction {
    match req {
        VmRequest::PowerOff => ExitAction::Stop(VmExit::PowerOff),
        VmRequest::Reset(src) => ExitAction::Stop(VmExit::Reset(src)),
        VmRequest::PvPanic { bits } => ctx.pvpanic(vcpu, bits),
    }
}

/// Handle one vCPU exit.
pub fn handle_exit(vcpu: u32, exit: VcpuExit, ctx: &ExitContext, unhandled: &mut UnhandledLog) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.bus.read(port, data) {
                unhandled.note(vcpu, "port read", port as u64);
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(HYPERCALL_PORT, _) if ctx.hyperv.is_some() => ExitAction::Hypercall,
        VcpuExit::IoOut(port, data) => match ctx.bus.write(port, data) {
            Ok(Some(req)) => request_to_action(ctx, vcpu, req),
            Ok(None) => ExitAction::Continue,
            Err(_) => {
                unhandled.note(vcpu, "port write", port as u64);
                ExitAction::Continue
            }
        },
        VcpuExit::X86Rdmsr(exit) => {
            match ctx.rdmsr(vcpu, exit.index, unhandled) {
                Some(v) => *exit.data = v,
                None => *exit.error = 1,
            }
            ExitAction::Continue
        }
        VcpuExit::X86Wrmsr(exit) => match ctx.wrmsr(vcpu, exit.index, exit.data, unhandled) {
            Ok(action) => action,
            Err(()) => {
                *exit.error = 1;
                ExitAction::Continue
            }
        },
        VcpuExit::MmioRead(addr, data) => {
            // Where nothing decodes the address, a PC reads all ones.
            if !ctx.mmio.read(addr, data) {
                unhandled.note(vcpu, "MMIO read", addr);
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                unhandled.note(vcpu, "MMIO write", addr);
            }
            ctx.crash_disk_written(vcpu);
            ExitAction::Continue
        }
        // With the in-kernel irqchip KVM handles HLT itself; an exit here just resumes.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitAction::Continue,
        VcpuExit::Shutdown => {
            ctx.signals.send(CrashSignal::TripleFault { vcpu });
            ExitAction::Park
        }
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Stop(VmExit::KvmFailure {
            vcpu,
            detail: format!("VM entry failed (hardware reason {reason:#x}, host cpu {cpu})"),
        }),
        VcpuExit::InternalError => ExitAction::Stop(VmExit::KvmFailure {
            vcpu,
            detail: "KVM internal error (emulation failure or unhandled exit)".into(),
        }),
        other => ExitAction::Stop(VmExit::KvmFailure { vcpu, detail: format!("unexpected exit {other:?}") }),
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;

/// APIC local vector table registers and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_lvt_mode(regs: &mut [i8], offset: usize, mode: u32) {
    let mut v = [0u8; 4];
    for (d, s) in v.iter_mut().zip(&regs[offset..offset + 4]) {
        *d = *s as u8;
    }
    let val = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
    for (d, s) in regs[offset..offset + 4].iter_mut().zip(val.to_le_bytes()) {
        *d = s as i8;
    }
}

/// Configure a vCPU's CPUID, MSRs and local APIC; the BSP (`entry` given) also gets the
/// long-mode registers at the kernel entry point.
pub fn configure_vcpu(fd: &VcpuFd, id: u32, cpuid: &CpuId, entry: Option<boot::BootEntry>) -> Result<(), VcpuError> {
    let kvm = |what| move |source| VcpuError::Kvm { vcpu: id, what, source };
    fd.set_cpuid2(cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Kvm {
        vcpu: id,
        what: "building the MSR list",
        source: errno::Error::new(libc::EINVAL),
    })?;
    let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n != entries.len() {
        log::debug!("vCPU {id}: KVM accepted {n} of {} boot MSRs", entries.len());
    }
    let mut lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    fd.set_fpu(&boot::boot_fpu()).map_err(kvm("KVM_SET_FPU"))?;
    if let Some(entry) = entry {
        let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        fd.set_sregs(&boot::boot_sregs(sregs, &entry)).map_err(kvm("KVM_SET_SREGS"))?;
        fd.set_regs(&boot::boot_regs(&entry)).map_err(kvm("KVM_SET_REGS"))?;
    }
    Ok(())
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal's handler: make the interrupted (or the next) KVM_RUN of this thread return
/// at once. Setting `immediate_exit` closes the race of a signal that lands just before the
/// thread enters KVM_RUN.
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set before the first
            // KVM_RUN and valid for as long as the thread runs the vCPU; a byte store is
            // async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// Run a hypercall for `vcpu`: read the registers the hypercall page left, run it, put the
/// status in RAX. RIP is left alone, so KVM completes the port write and the page returns.
fn hypercall(vcpu: u32, fd: &VcpuFd, ctx: &ExitContext) -> Result<(), errno::Error> {
    let mut regs = fd.get_regs()?;
    let input = HypercallInput { control: regs.rcx, param1: regs.r11, param2: regs.r8 };
    let Some(mut hv) = ctx.hyperv() else {
        return Ok(());
    };
    let mut port = VmbusPort::new(&mut hv);
    regs.rax = handle_hypercall(vcpu, input, &GuestRam(&ctx.mem), &mut port);
    let outputs = port.outputs;
    let kick = vmbus::apply(&ctx.vmbus_link(), &mut hv, outputs, Instant::now());
    drop(hv);
    // This vCPU delivers its own messages before it re-enters the guest; others need a kick.
    kick.into_iter().filter(|&vp| vp != vcpu).for_each(|vp| ctx.kicker.kick(vp));
    fd.set_regs(&regs)
}

/// Deliver `vcpu`'s queued SynIC messages and raise their vectors on its LAPIC.
fn deliver(vcpu: u32, vm: &VmFd, ctx: &ExitContext) {
    let Some(mut hv) = ctx.hyperv() else { return };
    if hv.partition.queued(vcpu) == 0 {
        return;
    }
    let d = hv.partition.deliver(vcpu, &GuestRam(&ctx.mem));
    vmbus::delivered(&ctx.vmbus_link(), &mut hv, vcpu, &d.delivered);
    drop(hv);
    for e in d.dropped {
        log::warn!("vCPU {vcpu}: SynIC message dropped: {e}");
    }
    for vector in d.vectors {
        // Fixed delivery, edge, physical destination = this vCPU's APIC id (= its index).
        let msi = kvm_msi { address_lo: 0xfee0_0000 | (vcpu << 12), data: vector as u32, ..Default::default() };
        if let Err(e) = vm.signal_msi(msi) {
            log::warn!("vCPU {vcpu}: cannot inject SynIC vector {vector:#x}: {e}");
        }
    }
}

/// The vCPU thread body: run until an exit ends the VM or the VM is stopping.
pub fn run_vcpu(id: u32, mut fd: VcpuFd, vm: Arc<VmFd>, ctx: Arc<ExitContext>, state: Arc<ExitState>) {
    KVM_RUN.with(|p| p.set(fd.get_kvm_run()));
    ctx.kicker.register(id);
    let mut unhandled = UnhandledLog::default();
    while !state.stopping() {
        if ctx.control.pause_requested() {
            ctx.control.park(id, vcpu_state(id, &fd), &state);
        }
        if state.stopping() {
            break;
        }
        deliver(id, &vm, &ctx);
        if ctx.control.take_sample_request(id) {
            ctx.control.put_sample(id, sample(&fd));
        }
        if ctx.control.take_nmi(id) {
            if let Err(e) = fd.nmi() {
                log::warn!("vCPU {id}: KVM_NMI failed: {e}");
            }
        }
        let action = match fd.run() {
            Ok(exit) => {
                ctx.exits.fetch_add(1, Ordering::Relaxed);
                handle_exit(id, exit, &ctx, &mut unhandled)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                ExitAction::Continue
            }
            Err(e) => ExitAction::Stop(VmExit::KvmFailure { vcpu: id, detail: format!("KVM_RUN failed: {e}") }),
        };
        match action {
            ExitAction::Continue => {}
            ExitAction::Deliver => deliver(id, &vm, &ctx),
            ExitAction::Report { signal, at } => {
                // Where the guest's panic path is, before anything acts on the report (the
                // crash analysis's registers for this vCPU when the kernel saves none itself).
                ctx.control.put_reported(id, vcpu_state(id, &fd));
                ctx.report(signal, at);
            }
            ExitAction::Hypercall => {
                if let Err(e) = hypercall(id, &fd, &ctx) {
                    state.request(VmExit::KvmFailure { vcpu: id, detail: format!("hypercall registers: {e}") });
                }
            }
            ExitAction::Park => {
                log_regs(id, &fd, "triple fault");
                break;
            }
            ExitAction::Stop(exit) => {
                if let VmExit::KvmFailure { .. } = exit {
                    log_regs(id, &fd, &exit.reason());
                }
                state.request(exit);
                break;
            }
        }
    }
    ctx.control.mark_stopped(id, vcpu_state(id, &fd));
    ctx.kicker.unregister(id);
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    log::debug!("vCPU {id} thread ends");
}

/// The registers vCPU `id` stops with (zeros, and a warning, when KVM cannot read them).
fn vcpu_state(id: u32, fd: &VcpuFd) -> VcpuState {
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(regs), Ok(sregs)) => VcpuState { id, regs, sregs },
        (r, s) => {
            log::warn!("vCPU {id}: cannot read registers: {:?} {:?}", r.err(), s.err());
            VcpuState { id, regs: Default::default(), sregs: Default::default() }
        }
    }
}

/// The watchdog's sample of this vCPU (progress assumed where KVM cannot tell).
fn sample(fd: &VcpuFd) -> Sample {
    const RFLAGS_IF: u64 = 1 << 9;
    let interrupts_enabled = fd.get_regs().map(|r| r.rflags & RFLAGS_IF != 0).unwrap_or(true);
    let halted = fd.get_mp_state().map(|m| m.mp_state == kvm_bindings::KVM_MP_STATE_HALTED).unwrap_or(true);
    Sample { interrupts_enabled, halted }
}

fn log_regs(id: u32, fd: &VcpuFd, what: &str) {
    let (Ok(regs), Ok(sregs)) = (fd.get_regs(), fd.get_sregs()) else { return };
    if (VcpuState { id, regs, sregs }).is_reset_state() {
        log::error!(
            "vCPU {id}: {what}; rip {:#x} rsp {:#x}, but {}",
            regs.rip,
            regs.rsp,
            crate::crash::report::RESET_NOTE
        );
    } else {
        log::error!("vCPU {id}: {what} at rip {:#x} rsp {:#x}", regs.rip, regs.rsp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ram_ranges;
    use devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
    use devices::hyperv::tlfs::*;
    use devices::hyperv::HvConfig;
    use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
    use devices::pvpanic::{PvPanic, PVPANIC_ALL, PVPANIC_PORT};
    use devices::ResetSource;
    use kvm_ioctls::{MsrExitReason, ReadMsrExit, WriteMsrExit};
    use vm_memory::Bytes;

    fn ctx(hyperv: bool) -> ExitContext {
        let mut bus = PioBus::new();
        bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new()))).unwrap();
        bus.insert(ACPI_PM_BASE, ACPI_PM_LEN, Arc::new(Mutex::new(AcpiPm::new()))).unwrap();
        bus.insert(PVPANIC_PORT, 1, Arc::new(Mutex::new(PvPanic::new(PVPANIC_ALL)))).unwrap();
        ExitContext {
            bus,
            mmio: MmioBus::new(),
            mem: GuestMemoryMmap::from_ranges(&ram_ranges(64 << 20)).unwrap(),
            hyperv: hyperv.then(|| {
                HyperV::new(
                    HvConfig { vcpus: 2, tsc_hz: 1_000_000, apic_hz: 1_000_000_000, crash_message: true },
                    devices::vmbus::ServerConfig {
                        vcpus: 2,
                        unload_delay: std::time::Duration::ZERO,
                        unload_response: true,
                    },
                )
            }),
            events: EventLog::disabled(),
            signals: SignalQueue::new().unwrap(),
            kicker: Kicker::new(2),
            deferred: Deferred::default(),
            control: VcpuControl::new(2),
            exits: Default::default(),
            crash_disk: None,
            nets: Vec::new(),
        }
    }

    fn rdmsr(ctx: &ExitContext, vcpu: u32, index: u32) -> Result<u64, u8> {
        let (mut error, mut data) = (0u8, 0u64);
        let exit = VcpuExit::X86Rdmsr(ReadMsrExit {
            error: &mut error,
            reason: MsrExitReason::Filter,
            index,
            data: &mut data,
        });
        assert_eq!(handle_exit(vcpu, exit, ctx, &mut UnhandledLog::default()), ExitAction::Continue);
        if error == 0 {
            Ok(data)
        } else {
            Err(error)
        }
    }

    fn wrmsr(ctx: &ExitContext, vcpu: u32, index: u32, data: u64) -> (ExitAction, u8) {
        let mut error = 0u8;
        let exit = VcpuExit::X86Wrmsr(WriteMsrExit { error: &mut error, reason: MsrExitReason::Filter, index, data });
        let action = handled(vcpu, exit, ctx);
        (action, error)
    }

    #[test]
    fn reset_and_poweroff_stop_the_vm() {
        let (c, mut u) = (ctx(false), UnhandledLog::default());
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x64, &[0xfe]), &c, &mut u),
            ExitAction::Stop(VmExit::Reset(ResetSource::Keyboard))
        );
        assert_eq!(handle_exit(1, VcpuExit::IoOut(0x600, &[0x34]), &c, &mut u), ExitAction::Stop(VmExit::PowerOff));
        assert_eq!(
            handle_exit(1, VcpuExit::IoOut(0x604, &[1]), &c, &mut u),
            ExitAction::Stop(VmExit::Reset(ResetSource::AcpiResetRegister))
        );
        assert!(matches!(
            handle_exit(0, VcpuExit::InternalError, &c, &mut u),
            ExitAction::Stop(VmExit::KvmFailure { vcpu: 0, .. })
        ));
    }

    #[test]
    fn triple_fault_parks_the_vcpu_and_signals() {
        let c = ctx(false);
        assert_eq!(handle_exit(2, VcpuExit::Shutdown, &c, &mut UnhandledLog::default()), ExitAction::Park);
        assert_eq!(drained(&c), vec![CrashSignal::TripleFault { vcpu: 2 }]);
    }

    /// `handle_exit`, and a report sent as the vCPU loop sends it (no registers here).
    fn handled(vcpu: u32, exit: VcpuExit, c: &ExitContext) -> ExitAction {
        let action = handle_exit(vcpu, exit, c, &mut UnhandledLog::default());
        if let ExitAction::Report { signal, at } = &action {
            c.report(signal.clone(), *at);
        }
        action
    }

    /// The queued signals without their times.
    fn drained(c: &ExitContext) -> Vec<CrashSignal> {
        c.signals.drain().into_iter().map(|(t, _)| t.signal).collect()
    }

    #[test]
    fn pvpanic_write_becomes_a_signal() {
        let c = ctx(false);
        assert!(matches!(
            handled(1, VcpuExit::IoOut(0x505, &[2]), &c),
            ExitAction::Report { signal: CrashSignal::PvPanic { vcpu: 1, bits: 2 }, .. }
        ));
        let signals = c.signals.drain();
        assert_eq!(
            signals.iter().map(|(t, _)| t.signal.clone()).collect::<Vec<_>>(),
            vec![CrashSignal::PvPanic { vcpu: 1, bits: 2 }]
        );
        // The signal carries the time of the event that recorded the write.
        let event: serde_json::Value = serde_json::from_str(&c.events.since(0)[0]).unwrap();
        assert_eq!(event["event"], "pvpanic");
        assert_eq!(event["ts"], crate::events::ts(signals[0].0.at));
        let mut b = [0u8];
        handle_exit(0, VcpuExit::IoIn(0x505, &mut b), &c, &mut UnhandledLog::default());
        assert_eq!(b, [7]);
    }

    /// A guest writing every pvpanic byte over and over: a bounded number of events (the
    /// burst, then one summary when the VM's events are flushed) and of signals (each value
    /// `SAME_SIGNAL_MAX` times).
    #[test]
    fn a_pvpanic_flood_is_bounded() {
        let c = ctx(false);
        for i in 0..100_000u32 {
            handled(0, VcpuExit::IoOut(0x505, &[i as u8]), &c);
        }
        c.events.flush_suppressed();
        let lines = c.events.since(0);
        let pvpanic = lines.iter().filter(|l| l.contains("\"event\":\"pvpanic\"")).count();
        assert_eq!(pvpanic, crate::events::GUEST_BURST as usize, "the burst (this runs in well under a second)");
        let counted: u64 = lines
            .iter()
            .filter(|l| l.contains("events_suppressed"))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["count"].as_u64().unwrap())
            .sum();
        assert_eq!(pvpanic as u64 + counted, 100_000, "every write recorded or counted");
        let signals = drained(&c);
        assert_eq!(signals.len(), 256 * SignalQueue::SAME_SIGNAL_MAX as usize);
        assert_eq!(c.signals.dropped(), 100_000 - signals.len() as u64);
        // The first of each value got through, in the guest's order.
        assert_eq!(signals[..256], (0..=255u8).map(|bits| CrashSignal::PvPanic { vcpu: 0, bits }).collect::<Vec<_>>());
    }

    #[test]
    fn unknown_ports_and_mmio_read_all_ones() {
        let (c, mut u) = (ctx(false), UnhandledLog::default());
        let mut data = [0u8; 4];
        assert_eq!(handle_exit(0, VcpuExit::IoIn(0xcfc, &mut data), &c, &mut u), ExitAction::Continue);
        assert_eq!(data, [0xff; 4]);
        let mut data = [0u8; 8];
        assert_eq!(handle_exit(0, VcpuExit::MmioRead(0xd000_0000, &mut data), &c, &mut u), ExitAction::Continue);
        assert_eq!(data, [0xff; 8]);
        assert_eq!(handle_exit(0, VcpuExit::IoOut(0x80, &[0]), &c, &mut u), ExitAction::Continue);
        assert_eq!(handle_exit(0, VcpuExit::MmioWrite(0xd000_0000, &[1]), &c, &mut u), ExitAction::Continue);
        assert_eq!(handle_exit(0, VcpuExit::Hlt, &c, &mut u), ExitAction::Continue);
        // Without Hyper-V, the hypercall port is just another unclaimed port.
        assert_eq!(handle_exit(0, VcpuExit::IoOut(HYPERCALL_PORT, &[0]), &c, &mut u), ExitAction::Continue);
    }

    /// The crash disk's first write (made while this vCPU's MMIO write notified its queue)
    /// becomes one `crash_disk_written` event and one signal with this vCPU's number.
    #[test]
    fn the_crash_disk_s_first_write_is_signalled_by_the_vcpu_that_made_it() {
        use devices::virtio::BlockBackend;
        let dir = tempfile::tempdir().unwrap();
        let watch = CrashDiskWatch::new();
        let mut disk = crate::disk::FileBackend::crash_disk(&dir.path().join("c.img"), 1 << 20, watch.clone()).unwrap();
        let log = dir.path().join("events.jsonl");
        let c = ExitContext { crash_disk: Some(watch), events: EventLog::create(&log).unwrap(), ..ctx(false) };
        let mut u = UnhandledLog::default();
        let notify = || VcpuExit::MmioWrite(0xd000_0050, &[0; 4]);
        disk.read_at(0, &mut [0; 512]).unwrap();
        assert_eq!(handle_exit(1, notify(), &c, &mut u), ExitAction::Continue);
        assert!(drained(&c).is_empty(), "a read is no write");
        disk.write_at(0, &[1; 4096]).unwrap();
        assert_eq!(handle_exit(1, notify(), &c, &mut u), ExitAction::Continue);
        disk.write_at(4096, &[1; 4096]).unwrap();
        assert_eq!(handle_exit(0, notify(), &c, &mut u), ExitAction::Continue);
        assert_eq!(drained(&c), vec![CrashSignal::CrashDiskWritten { vcpu: 1 }]);
        let events = std::fs::read_to_string(&log).unwrap();
        assert_eq!(events.matches("\"event\":\"crash_disk_written\"").count(), 1, "{events}");
        assert!(events.contains("\"vcpu\":1,\"offset\":0,\"bytes\":4096"), "{events}");
    }

    #[test]
    fn msrs_without_hyperv_fault() {
        let c = ctx(false);
        assert_eq!(rdmsr(&c, 0, HV_X64_MSR_VP_INDEX), Err(1));
        assert_eq!(wrmsr(&c, 0, HV_X64_MSR_GUEST_OS_ID, 1), (ExitAction::Continue, 1));
        assert_eq!(rdmsr(&c, 0, 0xc001_0140), Err(1), "unknown non-synthetic MSR");
    }

    #[test]
    fn synthetic_msrs_and_hyperv_lifecycle() {
        let c = ctx(true);
        assert_eq!(rdmsr(&c, 1, HV_X64_MSR_VP_INDEX), Ok(1));
        assert_eq!(rdmsr(&c, 0, HV_X64_MSR_CRASH_CTL), Ok(0xc000_0000_0000_0000));
        assert_eq!(wrmsr(&c, 0, HV_X64_MSR_VP_INDEX, 3).1, 1, "read-only");
        assert_eq!(rdmsr(&c, 0, 0x4000_00b0), Err(1), "stimer: not offered");
        assert_eq!(rdmsr(&c, 0, 0x1b).map(|_| ()), Err(1), "non-synthetic MSRs are not ours");
        assert_eq!(wrmsr(&c, 0, HV_X64_MSR_GUEST_OS_ID, 0x8100_0006_01c0_0000), (ExitAction::Continue, 0));
        assert_eq!(wrmsr(&c, 0, HV_X64_MSR_HYPERCALL, 0x5001), (ExitAction::Continue, 0));
        assert_eq!(wrmsr(&c, 1, HV_X64_MSR_SIMP, 0x6001), (ExitAction::Deliver, 0));
        // The crash report with its message.
        c.mem
            .write_slice(b"Kernel panic - not syncing: sysrq triggered crash", vm_memory::GuestAddress(0x7000))
            .unwrap();
        wrmsr(&c, 0, HV_X64_MSR_CRASH_P3, 0x7000);
        wrmsr(&c, 0, HV_X64_MSR_CRASH_P4, 49);
        assert_eq!(wrmsr(&c, 0, HV_X64_MSR_CRASH_CTL, 0xc000_0000_0000_0000).1, 0);
        wrmsr(&c, 1, HV_X64_MSR_GUEST_OS_ID, 0);
        wrmsr(&c, 1, HV_X64_MSR_HYPERCALL, 0);
        let signals = drained(&c);
        assert!(
            matches!(&signals[0], CrashSignal::HvCrash { vcpu: 0, message: Some(m), .. } if m.ends_with("sysrq triggered crash"))
        );
        assert_eq!(signals[1], CrashSignal::GuestKexec { vcpu: 1 });
        assert_eq!(signals.len(), 2);
    }

    #[test]
    fn hypercall_port_exits_need_registers() {
        let c = ctx(true);
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(HYPERCALL_PORT, &[0]), &c, &mut UnhandledLog::default()),
            ExitAction::Hypercall
        );
    }

    #[test]
    fn lvt_mode_keeps_other_bits() {
        let mut regs = [0i8; 1024];
        regs[APIC_LVT0] = 0x30; // vector
        regs[APIC_LVT0 + 2] = 0x01; // mask bit 16
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
