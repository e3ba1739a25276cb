//! Triage at the crash: the `crash-analysis` crate run over the guest's memory (the kernel log
//! for `dmesg.txt`, the kernel's identity, the panic, every vCPU's symbolized stack), for every
//! crash, whether or not a vmcore is written.
//!
//! It runs when the crash directory is finished: the crashed kernel's memory is still as it
//! left it then (a crash kernel runs in its own reserved memory; a reset reloads the guest only
//! after), and by then the kernel has saved every CPU's registers in its crash notes on its way
//! to a crash kernel, so nothing on the guest's panic path waits for it. The VMCOREINFO that
//! maps the memory comes from the vmcore just written or collected when there is one (it holds
//! a copy), else from a scan of guest memory.

use std::time::Instant;

use crash_analysis::{Analysis, Input, VcpuRegs};
use kdump::VmcoreInfo;
use vm_memory::GuestMemoryMmap;

use super::diskdump::RegionMem;
use super::vmcore::{self, VcpuState};

/// What the analysis found: the report's `analysis` and `dmesg.txt`.
#[derive(Debug, Clone)]
pub struct Triage {
    pub analysis: Analysis,
    /// The kernel log as `makedumpfile --dump-dmesg` prints it (empty when unread).
    pub dmesg: String,
}

/// Why there is no analysis at all (each part that fails on its own is in `analysis.unread`).
#[derive(Debug, thiserror::Error)]
pub enum TriageError {
    #[error("no VMCOREINFO in guest memory (not a Linux guest, or one that had not set it up yet)")]
    NoVmcoreInfo,
    #[error("guest memory has no host mapping")]
    Memory(#[source] vmcore::VmcoreError),
}

/// The registers the analysis uses, per vCPU (the kernel's own crash notes win over these, in
/// the analysis): those a vCPU read when it reported the crash (`reported`: where the panic
/// path was), else those it stopped with (`stopped`), unless KVM had reset it.
pub fn vcpu_regs(stopped: &[VcpuState], reported: &[VcpuState]) -> Vec<VcpuRegs> {
    let regs = |v: &VcpuState, source: &'static str| {
        let c = v.cpu_state();
        VcpuRegs { cpu: v.id, regs: c.regs, cs: c.sregs.cs.selector, gs_base: c.sregs.gs.base, source }
    };
    let mut out: Vec<VcpuRegs> =
        reported.iter().filter(|v| !v.is_reset_state()).map(|v| regs(v, "vcpu_at_report")).collect();
    for v in stopped.iter().filter(|v| !v.is_reset_state()) {
        if !out.iter().any(|r| r.cpu == v.id) {
            out.push(regs(v, "vcpu"));
        }
    }
    out
}

/// Analyzes the crashed kernel in `mem`. `vmcoreinfo`: the text a vmcore of this crash holds,
/// when there is one (saves scanning guest memory for it).
pub fn run(
    mem: &GuestMemoryMmap,
    stopped: &[VcpuState],
    reported: &[VcpuState],
    ncpus: u32,
    vmcoreinfo: Option<&str>,
) -> Result<Triage, TriageError> {
    let started = Instant::now();
    let info = match vmcoreinfo {
        Some(text) => VmcoreInfo::parse(text),
        None => vmcore::find_vmcoreinfo(mem).ok_or(TriageError::NoVmcoreInfo)?.info(),
    };
    let regions = vmcore::host_regions(mem, None).map_err(TriageError::Memory)?;
    let regs = vcpu_regs(stopped, reported);
    let out =
        crash_analysis::analyze(&Input { mem: &RegionMem::new(&regions), vmcoreinfo: &info, vcpus: &regs, ncpus });
    let mut analysis = out.analysis.clone();
    let dmesg = out.dmesg();
    analysis.duration_us = started.elapsed().as_micros() as u64;
    Ok(Triage { analysis, dmesg })
}
