//! Triage from a crashed Linux guest's memory, host side, sans-IO (no KVM, threads or files):
//! what `crash` and `makedumpfile --dump-dmesg` would say, read at crash time from the same
//! [`PhysMem`] the vmcore writers read, with the guest's own VMCOREINFO as the map.
//!
//! ```text
//! PhysMem + VmcoreInfo -> kmem::KernelMem     kernel virtual addresses (the guest's page tables)
//!   printk::read_log       the lockless printk ring buffer (5.10+) or the older log_buf
//!   identity::read         init_uts_ns, tainted_mask, uptime
//!   panic::from_log        the panic message, its CPU and task, from the log
//!   kallsyms::Kallsyms     the kernel's symbol table, from its kallsyms_* tables in memory
//!   orc::Orc               the ORC unwind tables (found through kallsyms)
//!   unwind::unwind         a vCPU's frames from its registers (ORC; a stack scan without it)
//!   crashnotes::read       every CPU's registers as the kernel saved them for its crash kernel
//!   btf / tasks            the task list and the blocked tasks (the kernel's BTF)
//! ```
//!
//! Guest memory is hostile: every length is bounded, every walk counted, and each part that
//! cannot be done becomes an [`Unread`] with its reason instead of failing the rest.

pub mod btf;
pub mod crashnotes;
pub mod identity;
pub mod kallsyms;
pub mod kmem;
pub mod modules;
pub mod orc;
pub mod panic;
pub mod printk;
pub mod tasks;
pub mod unwind;

pub use crash_report::analysis::{Analysis, CpuStack, Frame, Identity, Panic, Task, Unread};
pub use kdump::elfcore::Regs;
pub use kmem::KernelMem;

/// Why a part of the analysis could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// A read of guest memory or a translation failed.
    #[error("reading guest memory")]
    Memory(#[source] kdump::KdumpError),
    /// VMCOREINFO lacks what the step needs.
    #[error("VMCOREINFO lacks {0}")]
    Missing(String),
    /// A table or structure that does not check out.
    #[error("implausible {0}")]
    Implausible(String),
    /// A symbol the step needs is not in kallsyms.
    #[error("no symbol {0}")]
    NoSymbol(String),
}

impl From<kdump::KdumpError> for AnalysisError {
    fn from(e: kdump::KdumpError) -> Self {
        AnalysisError::Memory(e)
    }
}

/// One vCPU's registers as crashvmm read them at the crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuRegs {
    pub cpu: u32,
    pub regs: Regs,
    /// CS's selector: ring 3 when `cs & 3 == 3`.
    pub cs: u16,
    /// The kernel's GS base (per-CPU area) when the vCPU was in kernel mode.
    pub gs_base: u64,
    /// When they were read, for the report's `registers` (`vcpu` when empty).
    pub source: &'static str,
}

/// What the analysis is given.
pub struct Input<'a, M: kdump::PhysMem + ?Sized> {
    pub mem: &'a M,
    pub vmcoreinfo: &'a kdump::VmcoreInfo,
    /// The vCPUs crashvmm read (may be empty: none were stopped, or a kdump ran since).
    pub vcpus: &'a [VcpuRegs],
    /// How many CPUs the guest has (registers come from `vcpus` or the kernel's crash notes).
    pub ncpus: u32,
}

/// The analysis and the kernel log.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub analysis: Analysis,
    /// The kernel log's records, oldest first.
    pub log: Vec<printk::Record>,
}

impl Output {
    /// `dmesg.txt`: the log as `makedumpfile --dump-dmesg` prints it.
    pub fn dmesg(&self) -> String {
        printk::format_dmesg(&self.log)
    }
}

fn unread(out: &mut Vec<Unread>, what: &str, why: impl std::fmt::Display) {
    out.push(Unread { what: what.to_string(), why: why.to_string() });
}

/// `e` and its sources, one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The most CPUs analyzed.
pub const MAX_CPUS: u32 = 1024;

/// The function a CPU was running: below the NMI (or other exception) that stopped it, where its
/// frames cross from that stack to the one it interrupted; else its innermost frame's.
pub fn running(stack: &CpuStack) -> Option<String> {
    let reliable = || stack.frames.iter().filter(|f| f.reliable);
    // An exception stack (NMI, #DF, #MC, ...): not the task's or the IRQ stack.
    let on_nmi = |f: &Frame| f.stack.as_deref().is_some_and(|s| s != "task" && s != "IRQ");
    if reliable().next().is_some_and(on_nmi) {
        if let Some(f) = reliable().find(|f| !on_nmi(f)) {
            return f.function.clone();
        }
    }
    reliable().next().and_then(|f| f.function.clone())
}

/// The function most vCPUs were running (ties: the lowest CPU's), for a hang's signature.
pub fn hang_function(analysis: &Analysis) -> Option<String> {
    let mut best: Option<(&str, usize)> = None;
    for c in &analysis.cpus {
        let Some(f) = c.running.as_deref() else { continue };
        let n = analysis.cpus.iter().filter(|d| d.running.as_deref() == Some(f)).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((f, n));
        }
    }
    best.map(|(f, _)| f.to_string())
}

/// Everything that can be read; never fails, never panics, bounded time on any memory.
pub fn analyze<M: kdump::PhysMem + ?Sized>(input: &Input<'_, M>) -> Output {
    match KernelMem::from_vmcoreinfo(input.mem, input.vmcoreinfo) {
        Ok(kmem) => analyze_kernel(&kmem, input.vmcoreinfo, input.vcpus, input.ncpus),
        Err(e) => {
            let mut a = Analysis::default();
            unread(&mut a.unread, "kernel memory", chain(&e));
            Output { analysis: a, log: Vec::new() }
        }
    }
}

/// [`analyze`] over kernel memory already mapped (tests and the fuzz target map it linearly).
pub fn analyze_kernel<M: kdump::PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    info: &kdump::VmcoreInfo,
    vcpus: &[VcpuRegs],
    ncpus: u32,
) -> Output {
    let mut a = Analysis::default();
    let log = match printk::read_log(kmem, info) {
        Ok(l) => l,
        Err(e) => {
            unread(&mut a.unread, "kernel log", chain(&e));
            Vec::new()
        }
    };
    a.log_records = log.len() as u64;
    let mut syms = match kallsyms::Kallsyms::read(kmem, info) {
        Ok(s) => Some(s),
        Err(e) => {
            unread(&mut a.unread, "kallsyms", chain(&e));
            None
        }
    };
    let (identity, mut why) = identity::read(kmem, info, syms.as_ref(), &log);
    a.identity = Some(identity);
    a.unread.append(&mut why);
    a.panic = panic::from_log(&log);
    // The kernel's types: task and module layouts.
    let btf = syms
        .as_ref()
        .map(|syms| btf::Btf::read(kmem, syms))
        .and_then(|b| b.map_err(|e| unread(&mut a.unread, "btf", chain(&e))).ok());
    if let (Some(syms), Some(btf)) = (syms.as_mut(), &btf) {
        match modules::Modules::read(kmem, syms, btf) {
            Ok(m) => syms.set_modules(m),
            Err(e) => unread(&mut a.unread, "modules", chain(&e)),
        }
    }
    if let Some(syms) = &syms {
        let orc = match orc::Orc::read(kmem, syms) {
            Ok(o) => Some(o),
            Err(e) => {
                unread(&mut a.unread, "orc", chain(&e));
                None
            }
        };
        let ncpus = ncpus.min(MAX_CPUS);
        let saved = crashnotes::read(kmem, syms, ncpus as usize);
        for cpu in 0..ncpus {
            // The kernel's own record of where a CPU was when it went to its crash kernel wins:
            // the vCPU's registers are the crash kernel's by now (or a halt loop's).
            let saved = saved.get(cpu as usize).copied().flatten().map(|r| (VcpuRegs { cpu, ..r }, "crash_notes"));
            let ours = || {
                vcpus.iter().find(|v| v.cpu == cpu).map(|v| (*v, if v.source.is_empty() { "vcpu" } else { v.source }))
            };
            let mut stack = match saved.or_else(ours) {
                Some((regs, source)) => unwind::cpu_stack(kmem, syms, orc.as_ref(), &regs, source),
                None => CpuStack { cpu, note: Some("no registers".into()), ..Default::default() },
            };
            stack.running = running(&stack);
            if let Some((pid, comm)) = btf.as_ref().and_then(|b| tasks::current(kmem, syms, b, cpu)) {
                stack.pid = Some(pid);
                stack.comm = Some(comm);
            }
            a.cpus.push(stack);
        }
        match &btf {
            Some(btf) => match tasks::blocked(kmem, syms, btf, orc.as_ref()) {
                Ok(t) => a.blocked_tasks = t,
                Err(e) => unread(&mut a.unread, "blocked tasks", chain(&e)),
            },
            None => unread(&mut a.unread, "blocked tasks", "no BTF"),
        }
    }
    Output { analysis: a, log }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, stack: &str, reliable: bool) -> Frame {
        Frame { function: Some(function.into()), stack: Some(stack.into()), reliable, ..Default::default() }
    }

    fn cpu(cpu: u32, frames: Vec<Frame>) -> CpuStack {
        let mut c = CpuStack { cpu, frames, ..Default::default() };
        c.running = running(&c);
        c
    }

    /// Below an NMI, the interrupted function; else the innermost reliable frame's.
    #[test]
    fn the_running_function_is_the_one_the_nmi_interrupted() {
        let nmi = cpu(
            0,
            vec![
                frame("panic", "NMI", true),
                frame("exc_nmi", "NMI", true),
                frame("spin", "IRQ", true),
                frame("handler", "IRQ", true),
            ],
        );
        assert_eq!(nmi.running.as_deref(), Some("spin"));
        let plain = cpu(1, vec![frame("?", "task", false), frame("spin", "task", true), frame("f", "task", true)]);
        assert_eq!(plain.running.as_deref(), Some("spin"));
        let idle = cpu(2, vec![frame("native_safe_halt", "task", true)]);
        let a = Analysis { cpus: vec![nmi, plain, idle], ..Default::default() };
        assert_eq!(hang_function(&a).as_deref(), Some("spin"));
        assert_eq!(hang_function(&Analysis::default()), None);
        assert_eq!(running(&cpu(3, vec![])), None);
    }

    /// Memory with nothing the VMCOREINFO promises: every part says why, nothing panics.
    #[test]
    fn empty_memory_gives_reasons_not_failures() {
        let info = kdump::VmcoreInfo::parse("OSRELEASE=6.1.0\nSYMBOL(prb)=ffffffff81000000\n");
        let ram = [0u8; 4096];
        let mem = kdump::SliceMem::new(vec![(0, &ram[..])]);
        let out = analyze_kernel(&KernelMem::linear(&mem, 0xffff_ffff_8000_0000), &info, &[], 2);
        let what: Vec<&str> = out.analysis.unread.iter().map(|u| u.what.as_str()).collect();
        assert!(what.contains(&"kernel log") && what.contains(&"kallsyms"), "{:?}", out.analysis.unread);
        assert!(out.analysis.unread.iter().all(|u| !u.why.is_empty()));
        assert!(out.log.is_empty() && out.analysis.cpus.is_empty() && out.dmesg().is_empty());
        // Without page tables, the whole analysis is one reason.
        let out = analyze(&Input { mem: &mem, vmcoreinfo: &info, vcpus: &[], ncpus: 1 });
        assert_eq!(out.analysis.unread.len(), 1, "{:?}", out.analysis.unread);
        assert_eq!(out.analysis.unread[0].what, "kernel memory");
    }
}
