//! vCPU setup and the exit-handling path. One thread per vCPU runs [`run_vcpu`]; each exit
//! goes through the free function [`handle_exit`], which unit tests feed with made-up exits.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::bus::PioBus;
use devices::VmRequest;
use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use thiserror::Error;
use vmm_sys_util::errno;

use crate::boot;
use crate::exit::VmExit;

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("vCPU {vcpu}: {what} failed: {source}")]
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
    Stop(VmExit),
}

/// Unhandled-access reporting, limited to the first access of each port or address.
#[derive(Default)]
pub struct UnhandledLog {
    seen: HashSet<u64>,
}

impl UnhandledLog {
    const MAX: usize = 64;
    fn note(&mut self, vcpu: u32, what: &str, addr: u64) {
        if self.seen.len() < Self::MAX && self.seen.insert(addr) {
            log::debug!(
                "vCPU {vcpu}: {what} {addr:#x} has no device (further accesses not logged)"
            );
        }
    }
}

fn request_to_exit(req: VmRequest) -> ExitAction {
    match req {
        VmRequest::PowerOff => ExitAction::Stop(VmExit::PowerOff),
        VmRequest::Reset(src) => ExitAction::Stop(VmExit::Reset(src)),
    }
}

/// Handle one vCPU exit.
pub fn handle_exit(
    vcpu: u32,
    exit: VcpuExit,
    bus: &PioBus,
    unhandled: &mut UnhandledLog,
) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !bus.read(port, data) {
                unhandled.note(vcpu, "port read", port as u64);
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => match bus.write(port, data) {
            Ok(Some(req)) => request_to_exit(req),
            Ok(None) => ExitAction::Continue,
            Err(_) => {
                unhandled.note(vcpu, "port write", port as u64);
                ExitAction::Continue
            }
        },
        VcpuExit::MmioRead(addr, data) => {
            // Nothing decodes this address: a PC reads all ones.
            data.fill(0xff);
            unhandled.note(vcpu, "MMIO read", addr);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, _) => {
            unhandled.note(vcpu, "MMIO write", addr);
            ExitAction::Continue
        }
        // With the in-kernel irqchip KVM handles HLT itself; an exit here just resumes.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Stop(VmExit::TripleFault { vcpu }),
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Stop(VmExit::KvmFailure {
            vcpu,
            detail: format!("VM entry failed (hardware reason {reason:#x}, host cpu {cpu})"),
        }),
        VcpuExit::InternalError => ExitAction::Stop(VmExit::KvmFailure {
            vcpu,
            detail: "KVM internal error (emulation failure or unhandled exit)".into(),
        }),
        other => ExitAction::Stop(VmExit::KvmFailure {
            vcpu,
            detail: format!("unexpected exit {other:?}"),
        }),
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
pub fn configure_vcpu(
    fd: &VcpuFd,
    id: u32,
    cpuid: &CpuId,
    entry: Option<u64>,
) -> Result<(), VcpuError> {
    let kvm = |what| {
        move |source| VcpuError::Kvm {
            vcpu: id,
            what,
            source,
        }
    };
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
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
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
        fd.set_sregs(&boot::long_mode_sregs(sregs))
            .map_err(kvm("KVM_SET_SREGS"))?;
        fd.set_regs(&boot::boot_regs(entry))
            .map_err(kvm("KVM_SET_REGS"))?;
    }
    Ok(())
}

/// The first reason the VM must end, shared by every vCPU thread and the main loop.
pub struct ExitState {
    exit: Mutex<Option<VmExit>>,
    notify: vmm_sys_util::eventfd::EventFd,
    stop: AtomicBool,
}

impl ExitState {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            exit: Mutex::new(None),
            notify: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
        })
    }

    /// Record `exit` if it is the first, and wake the main loop.
    pub fn request(&self, exit: VmExit) {
        let mut slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            log::info!("VM exit requested: {}", exit.reason());
            *slot = Some(exit);
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.notify.write(1) {
            log::error!("cannot wake the main loop: {e}");
        }
    }

    pub fn get(&self) -> Option<VmExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn notify_fd(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.notify
    }
}

/// The vCPU thread body: run until an exit ends the VM or the VM is stopping.
pub fn run_vcpu(id: u32, mut fd: VcpuFd, bus: Arc<PioBus>, state: Arc<ExitState>) {
    let mut unhandled = UnhandledLog::default();
    while !state.stopping() {
        let action = match fd.run() {
            Ok(exit) => handle_exit(id, exit, &bus, &mut unhandled),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => ExitAction::Stop(VmExit::KvmFailure {
                vcpu: id,
                detail: format!("KVM_RUN failed: {e}"),
            }),
        };
        if let ExitAction::Stop(exit) = action {
            if let VmExit::KvmFailure { .. } | VmExit::TripleFault { .. } = exit {
                if let Ok(regs) = fd.get_regs() {
                    log::error!(
                        "vCPU {id}: {} at rip {:#x} rsp {:#x}",
                        exit.reason(),
                        regs.rip,
                        regs.rsp
                    );
                }
            }
            state.request(exit);
            break;
        }
    }
    log::debug!("vCPU {id} thread ends");
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
    use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
    use devices::ResetSource;
    use std::sync::Mutex;

    fn bus() -> PioBus {
        let mut bus = PioBus::new();
        bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042::new())))
            .unwrap();
        bus.insert(
            ACPI_PM_BASE,
            ACPI_PM_LEN,
            Arc::new(Mutex::new(AcpiPm::new())),
        )
        .unwrap();
        bus
    }

    #[test]
    fn reset_and_poweroff_stop_the_vm() {
        let (bus, mut u) = (bus(), UnhandledLog::default());
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x64, &[0xfe]), &bus, &mut u),
            ExitAction::Stop(VmExit::Reset(ResetSource::Keyboard))
        );
        assert_eq!(
            handle_exit(1, VcpuExit::IoOut(0x600, &[0x34]), &bus, &mut u),
            ExitAction::Stop(VmExit::PowerOff)
        );
        assert_eq!(
            handle_exit(1, VcpuExit::IoOut(0x604, &[1]), &bus, &mut u),
            ExitAction::Stop(VmExit::Reset(ResetSource::AcpiResetRegister))
        );
        assert_eq!(
            handle_exit(2, VcpuExit::Shutdown, &bus, &mut u),
            ExitAction::Stop(VmExit::TripleFault { vcpu: 2 })
        );
        assert!(matches!(
            handle_exit(0, VcpuExit::InternalError, &bus, &mut u),
            ExitAction::Stop(VmExit::KvmFailure { vcpu: 0, .. })
        ));
    }

    #[test]
    fn unknown_ports_and_mmio_read_all_ones() {
        let (bus, mut u) = (bus(), UnhandledLog::default());
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(0, VcpuExit::IoIn(0xcfc, &mut data), &bus, &mut u),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 4]);
        let mut data = [0u8; 8];
        assert_eq!(
            handle_exit(0, VcpuExit::MmioRead(0xd000_0000, &mut data), &bus, &mut u),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x80, &[0]), &bus, &mut u),
            ExitAction::Continue
        );
        assert_eq!(
            handle_exit(0, VcpuExit::MmioWrite(0xd000_0000, &[1]), &bus, &mut u),
            ExitAction::Continue
        );
        assert_eq!(
            handle_exit(0, VcpuExit::Hlt, &bus, &mut u),
            ExitAction::Continue
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

    #[test]
    fn first_exit_wins() {
        let s = ExitState::new().unwrap();
        assert!(!s.stopping());
        s.request(VmExit::PowerOff);
        s.request(VmExit::TripleFault { vcpu: 1 });
        assert_eq!(s.get(), Some(VmExit::PowerOff));
        assert!(s.stopping());
    }
}
