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
}

/// What the analysis is given.
pub struct Input<'a, M: kdump::PhysMem + ?Sized> {
    pub mem: &'a M,
    pub vmcoreinfo: &'a kdump::VmcoreInfo,
    /// Every vCPU, as crashvmm read them (may be empty).
    pub vcpus: &'a [VcpuRegs],
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

/// Everything that can be read; never fails, never panics, bounded time on any memory.
pub fn analyze<M: kdump::PhysMem + ?Sized>(input: &Input<'_, M>) -> Output {
    let mut a = Analysis::default();
    let kmem = match KernelMem::from_vmcoreinfo(input.mem, input.vmcoreinfo) {
        Ok(k) => k,
        Err(e) => {
            unread(&mut a.unread, "kernel memory", chain(&e));
            return Output { analysis: a, log: Vec::new() };
        }
    };
    let info = input.vmcoreinfo;
    let log = match printk::read_log(&kmem, info) {
        Ok(l) => l,
        Err(e) => {
            unread(&mut a.unread, "kernel log", chain(&e));
            Vec::new()
        }
    };
    a.log_records = log.len() as u64;
    let syms = match kallsyms::Kallsyms::read(&kmem, info) {
        Ok(s) => Some(s),
        Err(e) => {
            unread(&mut a.unread, "kallsyms", chain(&e));
            None
        }
    };
    let (identity, mut why) = identity::read(&kmem, info, syms.as_ref(), &log);
    a.identity = Some(identity);
    a.unread.append(&mut why);
    a.panic = panic::from_log(&log);
    if let Some(syms) = &syms {
        let orc = match orc::Orc::read(&kmem, syms) {
            Ok(o) => Some(o),
            Err(e) => {
                unread(&mut a.unread, "orc", chain(&e));
                None
            }
        };
        let saved = crashnotes::read(&kmem, syms, input.vcpus.len());
        for v in input.vcpus {
            let (regs, source) = match saved.get(v.cpu as usize).copied().flatten() {
                Some(r) => (r, "crash_notes"),
                None => (*v, "vcpu"),
            };
            a.cpus.push(unwind::cpu_stack(&kmem, syms, orc.as_ref(), &regs, source));
        }
        match btf::Btf::read(&kmem, syms) {
            Ok(btf) => match tasks::blocked(&kmem, syms, &btf, orc.as_ref()) {
                Ok(t) => a.blocked_tasks = t,
                Err(e) => unread(&mut a.unread, "blocked tasks", chain(&e)),
            },
            Err(e) => unread(&mut a.unread, "btf", chain(&e)),
        }
    }
    Output { analysis: a, log }
}
