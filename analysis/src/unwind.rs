//! A vCPU's frames from its registers: ORC as arch/x86/kernel/unwind_orc.c (v6.1)
//! `unwind_next_frame` walks it, or, without ORC, a stack scan as
//! arch/x86/kernel/dumpstack.c `show_trace_log_lvl` prints unreliable (`?`) entries.
//!
//! The kernel checks each stack access against the CPU's stacks (`get_stack_info`,
//! arch/x86/kernel/dumpstack_64.c); here the stacks are only named where known (the IRQ stack
//! from `hardirq_stack_ptr`, the exception stacks from `cea_exception_stacks`), and instead of
//! bounds the walk requires progress: on one stack the stack pointer must grow, a switch of
//! stacks is allowed a few times, and the frames are capped.

use kdump::elfcore::Regs;
use kdump::PhysMem;

use crate::kallsyms::Kallsyms;
use crate::orc::{reg, Orc, OrcType};
use crate::{CpuStack, Frame, KernelMem, VcpuRegs};

/// The most frames returned.
pub const MAX_FRAMES: usize = 64;
/// The most switches between stacks (task, IRQ, exception stacks) in one walk.
pub const MAX_STACK_SWITCHES: usize = 4;
/// `THREAD_SIZE` (x86_64 without KASAN, arch/x86/include/asm/page_64_types.h).
pub const THREAD_SIZE: u64 = 16 << 10;
/// `IRQ_STACK_SIZE`.
const IRQ_STACK_SIZE: u64 = 16 << 10;
/// `EXCEPTION_STKSZ` (`PAGE_SIZE << EXCEPTION_STACK_ORDER`, order 1).
const EXCEPTION_STKSZ: u64 = 8 << 10;
/// The guard page before each exception stack in `struct cea_exception_stacks`.
const GUARD: u64 = 4 << 10;
/// The exception stacks in `struct cea_exception_stacks` order (asm/cpu_entry_area.h
/// `ESTACKS_MEMBERS`, and dumpstack_64.c `exception_stack_names`).
const ESTACKS: [&str; 6] = ["#DF", "NMI", "#DB", "#MC", "#VC", "#VC2"];

/// `struct pt_regs` offsets (arch/x86/include/asm/ptrace.h, x86_64).
mod pt {
    pub const R13: u64 = 16;
    pub const BP: u64 = 32;
    pub const R10: u64 = 56;
    pub const DX: u64 = 96;
    pub const DI: u64 = 112;
    pub const IP: u64 = 128;
    pub const CS: u64 = 136;
    pub const SP: u64 = 152;
    /// `IRET_FRAME_OFFSET`: the hardware frame starts at `ip`.
    pub const IRET_FRAME_OFFSET: u64 = IP;
}

/// Whether `addr` is in the kernel half of the address space (5-level paging's: from
/// `0xff00_0000_0000_0000`; 4-level kernels' start higher, at `0xffff_8000_0000_0000`).
pub fn is_kernel_addr(addr: u64) -> bool {
    addr >= 0xff00_0000_0000_0000
}

/// The frames, the unwinder that found them, and what stopped it where that is worth saying.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unwound {
    pub frames: Vec<Frame>,
    pub unwinder: &'static str,
    pub note: Option<String>,
}

/// The named stacks of one CPU.
#[derive(Debug, Clone, Default)]
struct Stacks {
    /// `[start, end)` and name.
    ranges: Vec<(u64, u64, &'static str)>,
}

impl Stacks {
    /// The CPU's IRQ stack (6.1: the per-CPU `hardirq_stack_ptr`, the top of stack minus 8,
    /// arch/x86/kernel/irq_64.c) and exception stacks (the per-CPU `cea_exception_stacks`).
    fn of_cpu<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, syms: &Kallsyms, cpu: Option<u32>) -> Self {
        let mut ranges = Vec::new();
        let Some(cpu) = cpu else { return Stacks { ranges } };
        let Some(pcpu) = syms.lookup("__per_cpu_offset") else { return Stacks { ranges } };
        let Ok(off) = kmem.u64(pcpu.wrapping_add(8 * cpu as u64)) else { return Stacks { ranges } };
        if let Some(v) = syms.lookup("hardirq_stack_ptr") {
            if let Ok(p) = kmem.u64(v.wrapping_add(off)) {
                if is_kernel_addr(p) {
                    let top = p.wrapping_add(8);
                    ranges.push((top.wrapping_sub(IRQ_STACK_SIZE), top, "IRQ"));
                }
            }
        }
        if let Some(v) = syms.lookup("cea_exception_stacks") {
            if let Ok(base) = kmem.u64(v.wrapping_add(off)) {
                if is_kernel_addr(base) {
                    for (i, name) in ESTACKS.iter().enumerate() {
                        let s = base.wrapping_add(GUARD + i as u64 * (GUARD + EXCEPTION_STKSZ));
                        ranges.push((s, s.wrapping_add(EXCEPTION_STKSZ), name));
                    }
                }
            }
        }
        Stacks { ranges }
    }

    fn known(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// The stack `sp` is on: a named one, else the task's where the CPU's stacks are known.
    fn label(&self, sp: u64) -> Option<&'static str> {
        if !self.known() {
            return None;
        }
        Some(self.ranges.iter().find(|r| sp >= r.0 && sp < r.1).map(|r| r.2).unwrap_or("task"))
    }

    /// Which stack `sp` is on, for the progress check: the named range, else its
    /// THREAD_SIZE-aligned block (a task stack is THREAD_SIZE-aligned).
    fn id(&self, sp: u64) -> u64 {
        match self.ranges.iter().find(|r| sp >= r.0 && sp < r.1) {
            Some(r) => r.0,
            None => sp & !(THREAD_SIZE - 1),
        }
    }
}

/// Where the registers an ORC entry may name (R10, R13, DI, DX, BP) are.
#[derive(Debug, Clone, Copy)]
enum RegsAt {
    None,
    /// The starting registers (`__unwind_start` with `regs`: full).
    Initial,
    /// A `pt_regs` on the stack; `full` unless only its IRET frame is valid.
    Stack {
        addr: u64,
        full: bool,
    },
}

/// The starting registers' value at `pt_regs` offset `off` (those ORC may name).
fn initial_reg(regs: &Regs, off: u64) -> u64 {
    match off {
        pt::R13 => regs.r13,
        pt::BP => regs.rbp,
        pt::R10 => regs.r10,
        pt::DX => regs.rdx,
        pt::DI => regs.rdi,
        _ => 0,
    }
}

/// The bytes from `start` to `top`, page by page, up to the first page that cannot be read
/// (a guard page after an 8 KiB exception stack, say).
fn read_stack<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, start: u64, top: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut at = start;
    while at < top {
        let n = (4096 - at % 4096).min(top - at);
        match kmem.bytes(at, n as usize) {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) if out.is_empty() => return Err(format!("reading the stack at {at:#x}: {e}")),
            Err(_) => break,
        }
        at += n;
    }
    Ok(out)
}

/// `slot`: where on the stack a return address was read (none for a register's IP).
fn frame(syms: &Kallsyms, addr: u64, signal: bool, reliable: bool, stack: Option<&str>, slot: Option<u64>) -> Frame {
    // A return address is printed as `%pB` (its call's symbol: `addr - 1`), an interrupted IP
    // as `%pS` (lib/vsprintf.c `symbol_string`, kernel/kallsyms.c `sprint_backtrace`).
    let sym = if signal {
        syms.symbolize(addr)
    } else {
        syms.symbolize(addr.wrapping_sub(1)).map(|mut s| {
            s.offset += 1;
            s
        })
    };
    Frame {
        address: format!("{addr:#x}"),
        symbol: sym.as_ref().map(|s| s.display()),
        function: sym.as_ref().map(|s| s.name.clone()),
        module: sym.and_then(|s| s.module),
        reliable,
        stack: stack.map(str::to_string),
        slot: slot.map(|a| format!("{a:#x}")),
    }
}

/// `frames` with the reason the walk stopped early.
pub fn unwind<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    syms: &Kallsyms,
    orc: Option<&Orc>,
    regs: &Regs,
    cpu: Option<u32>,
) -> Unwound {
    if !is_kernel_addr(regs.rip) || !is_kernel_addr(regs.rsp) {
        return Unwound {
            frames: Vec::new(),
            unwinder: "none",
            note: Some(format!("user-mode registers (rip {:#x})", regs.rip)),
        };
    }
    let stacks = Stacks::of_cpu(kmem, syms, cpu);
    if let Some(orc) = orc {
        match orc_walk(kmem, syms, orc, regs, &stacks) {
            Ok(u) => return u,
            Err(why) => {
                let mut u = scan(kmem, syms, regs, &stacks);
                u.note = Some(format!("ORC: {why}; a stack scan instead"));
                return u;
            }
        }
    }
    let mut u = scan(kmem, syms, regs, &stacks);
    u.note = Some("no ORC tables: a stack scan".into());
    u
}

/// The frames from a register state (a vCPU's, or a sleeping task's `inactive_task_frame`
/// turned into registers), innermost first, and the unwinder that found them (`orc`,
/// `frame-pointer`, `scan`, `none`). `cpu`: the CPU whose IRQ/exception stacks may be crossed.
pub fn frames<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    syms: &Kallsyms,
    orc: Option<&Orc>,
    regs: &Regs,
    cpu: Option<u32>,
) -> (Vec<Frame>, &'static str) {
    let u = unwind(kmem, syms, orc, regs, cpu);
    (u.frames, u.unwinder)
}

/// One ORC step's result: IP, SP, BP, the pt_regs, the previous full pt_regs, `signal`.
type Step = (u64, u64, u64, RegsAt, RegsAt, bool);

/// The ORC walk: `Err` when it cannot take its first step (the caller then scans).
fn orc_walk<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    syms: &Kallsyms,
    orc: &Orc,
    regs: &Regs,
    stacks: &Stacks,
) -> Result<Unwound, String> {
    let mut ip = regs.rip;
    let mut sp = regs.rsp;
    let mut bp = regs.rbp;
    let mut at = RegsAt::Initial;
    let mut signal = true;
    let mut frames = vec![frame(syms, ip, true, true, stacks.label(sp), None)];
    let mut switches = 0usize;
    let mut resumes = 0usize;
    let mut note = None;
    let read = |a: u64| kmem.u64(a).map_err(|e| format!("reading the stack at {a:#x}: {e}"));
    // unwind_orc.c `get_reg`: from the full pt_regs (or the starting registers), else from the
    // full pt_regs before a partial one (`prev_regs`).
    let get_reg = |at: RegsAt, prev: RegsAt, off: u64| -> Result<u64, String> {
        for r in [at, prev] {
            match r {
                RegsAt::Initial => return Ok(initial_reg(regs, off)),
                RegsAt::Stack { addr, full: true } => return read(addr.wrapping_add(off)),
                _ => {}
            }
        }
        Err(format!("an ORC entry names pt_regs offset {off} and no pt_regs holds it"))
    };
    let mut prev = RegsAt::None;
    loop {
        if frames.len() >= MAX_FRAMES {
            note = Some(format!("stopped at {MAX_FRAMES} frames"));
            break;
        }
        let first = frames.len() == 1;
        let step = (|| -> Result<Option<Step>, String> {
            let e = orc
                .find(if signal { ip } else { ip.wrapping_sub(1) })
                .ok_or_else(|| format!("no ORC entry for {:#x}", ip))?;
            match e.kind {
                OrcType::End => return Ok(None),
                OrcType::Undefined => return Err(format!("undefined ORC entry at {ip:#x}")),
                _ => {}
            }
            let off = e.sp_offset as i64 as u64;
            // The previous frame's SP (6.1, after v5.12's stack swizzle fix: SP_INDIRECT is
            // `*sp + offset`, BP_INDIRECT `*(bp + offset)`).
            let new_sp = match e.sp_reg {
                reg::SP => sp.wrapping_add(off),
                reg::BP => bp.wrapping_add(off),
                reg::SP_INDIRECT => read(sp)?.wrapping_add(off),
                reg::BP_INDIRECT => read(bp.wrapping_add(off))?,
                reg::R10 => get_reg(at, prev, pt::R10)?,
                reg::R13 => get_reg(at, prev, pt::R13)?,
                reg::DI => get_reg(at, prev, pt::DI)?,
                reg::DX => get_reg(at, prev, pt::DX)?,
                r => return Err(format!("unknown ORC SP register {r} at {ip:#x}")),
            };
            let full = |r: RegsAt| matches!(r, RegsAt::Initial | RegsAt::Stack { full: true, .. });
            let (new_ip, next_sp, new_at, new_prev, new_signal) = match e.kind {
                OrcType::Call => (read(new_sp.wrapping_sub(8))?, new_sp, RegsAt::None, RegsAt::None, e.signal),
                OrcType::Regs => (
                    read(new_sp.wrapping_add(pt::IP))?,
                    read(new_sp.wrapping_add(pt::SP))?,
                    RegsAt::Stack { addr: new_sp, full: true },
                    RegsAt::None,
                    true,
                ),
                OrcType::RegsPartial => {
                    let r = new_sp.wrapping_sub(pt::IRET_FRAME_OFFSET);
                    (
                        read(r.wrapping_add(pt::IP))?,
                        read(r.wrapping_add(pt::SP))?,
                        RegsAt::Stack { addr: r, full: false },
                        if full(at) { at } else { prev },
                        true,
                    )
                }
                OrcType::End | OrcType::Undefined => return Ok(None),
            };
            let new_bp = match e.bp_reg {
                reg::UNDEFINED => get_reg(new_at, new_prev, pt::BP).unwrap_or(bp),
                reg::PREV_SP => read(new_sp.wrapping_add(e.bp_offset as i64 as u64))?,
                reg::BP => read(bp.wrapping_add(e.bp_offset as i64 as u64))?,
                r => return Err(format!("unknown ORC BP register {r} at {ip:#x}")),
            };
            Ok(Some((new_ip, next_sp, new_bp, new_at, new_prev, new_signal)))
        })();
        let (new_ip, new_sp, new_bp, new_at, new_prev, new_signal) = match step {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(why) => {
                // No ORC for this IP (a function objtool skips, as `__crash_kexec` with its
                // `crash_setup_regs`, or module text): resume at a return address above SP.
                // From a first frame in core kernel text only a call to its function is taken.
                let core = syms.is_kernel_text(ip);
                let target = if first && core { syms.symbolize(ip).map(|s| ip - s.offset) } else { None };
                let found = if resumes < MAX_RESUMES && (!first || !core || target.is_some()) {
                    resume(kmem, syms, sp, target)
                } else {
                    None
                };
                match found {
                    Some((slot, ret)) => {
                        resumes += 1;
                        frames.push(frame(syms, ret, false, target.is_some(), stacks.label(slot), Some(slot)));
                        note = Some(format!("{why}: resumed at the return address at {slot:#x}"));
                        ip = ret;
                        sp = slot.wrapping_add(8);
                        at = RegsAt::None;
                        prev = RegsAt::None;
                        signal = false;
                        continue;
                    }
                    None if first => return Err(why),
                    None => {
                        note = Some(why);
                        break;
                    }
                }
            }
        };
        // A pt_regs from user mode ends the kernel stack (`user_mode(state->regs)`).
        if let RegsAt::Stack { addr, .. } = new_at {
            match read(addr.wrapping_add(pt::CS)) {
                Ok(cs) if cs & 3 == 3 => break,
                Ok(_) => {}
                Err(why) => {
                    note = Some(why);
                    break;
                }
            }
        }
        if !is_kernel_addr(new_ip) {
            note = Some(format!("unwound to a non-kernel address {new_ip:#x}"));
            break;
        }
        // Progress ("stack going in the wrong direction?"), and a bounded number of switches.
        if stacks.id(new_sp) == stacks.id(sp) {
            if new_sp <= sp {
                note = Some(format!("the stack pointer does not grow at {ip:#x}"));
                break;
            }
        } else {
            switches += 1;
            if switches > MAX_STACK_SWITCHES {
                note = Some(format!("over {MAX_STACK_SWITCHES} stack switches"));
                break;
            }
        }
        let where_ = if new_signal { new_sp } else { new_sp.wrapping_sub(8) };
        frames.push(frame(syms, new_ip, new_signal, true, stacks.label(where_), (!new_signal).then_some(where_)));
        ip = new_ip;
        sp = new_sp;
        bp = new_bp;
        at = new_at;
        prev = new_prev;
        signal = new_signal;
    }
    Ok(Unwound { frames, unwinder: "orc", note })
}

/// How far above SP [`resume`] looks for a return address.
const RESUME_WINDOW: u64 = 2048;
/// The most resumes in one walk.
const MAX_RESUMES: usize = 3;

/// The first word above `sp` (within [`RESUME_WINDOW`] and its THREAD_SIZE block) that is a
/// return address: kernel text right after a call instruction; with `target`, a direct call to
/// it. Its slot and value.
fn resume<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    syms: &Kallsyms,
    sp: u64,
    target: Option<u64>,
) -> Option<(u64, u64)> {
    let start = sp & !7;
    let top = (start | (THREAD_SIZE - 1)).wrapping_add(1).min(start.wrapping_add(RESUME_WINDOW));
    let data = read_stack(kmem, start, top).ok()?;
    for (i, w) in data.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if !syms.is_text_addr(v) {
            continue;
        }
        let Ok(b) = kmem.bytes(v.wrapping_sub(7), 7) else { continue };
        let direct = (b.get(2) == Some(&0xe8)).then(|| {
            let rel = i32::from_le_bytes([b[3], b[4], b[5], b[6]]);
            v.wrapping_add(rel as i64 as u64)
        });
        let ok = match target {
            Some(t) => direct == Some(t),
            None => direct.is_some_and(|t| syms.is_text_addr(t)) || is_indirect_call(&b),
        };
        if ok {
            return Some((start.wrapping_add(8 * i as u64), v));
        }
    }
    None
}

/// Whether the 7 bytes before a return address end in an indirect call: `call *%reg` (with or
/// without REX), `call *disp32(%rip)`, `call *disp8(%reg)`, `call *(%reg,%reg)`.
fn is_indirect_call(b: &[u8]) -> bool {
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    (at(5) == 0xff && at(6) & 0xf8 == 0xd0)
        || (at(1) == 0xff && at(2) == 0x15)
        || (at(4) == 0xff && (at(5) & 0xf8 == 0x50 || at(5) == 0x14))
}

/// Every kernel text address on the stack from `rsp` to the end of its THREAD_SIZE-aligned
/// block, unreliable, after the IP itself.
fn scan<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, syms: &Kallsyms, regs: &Regs, stacks: &Stacks) -> Unwound {
    let mut frames = vec![frame(syms, regs.rip, true, true, stacks.label(regs.rsp), None)];
    let start = regs.rsp & !7;
    let top = (start | (THREAD_SIZE - 1)).wrapping_add(1);
    let data = match read_stack(kmem, start, top) {
        Ok(d) => d,
        Err(why) => return Unwound { frames, unwinder: "none", note: Some(why) },
    };
    for (i, w) in data.chunks_exact(8).enumerate() {
        if frames.len() >= MAX_FRAMES {
            break;
        }
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if syms.is_text_addr(v) {
            frames.push(frame(
                syms,
                v,
                false,
                false,
                stacks.label(start.wrapping_add(8 * i as u64)),
                Some(start.wrapping_add(8 * i as u64)),
            ));
        }
    }
    Unwound { frames, unwinder: "scan", note: None }
}

/// A vCPU's stack: its frames and what it was running.
pub fn cpu_stack<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    syms: &Kallsyms,
    orc: Option<&Orc>,
    regs: &VcpuRegs,
    source: &str,
) -> CpuStack {
    let rip = regs.regs.rip;
    let mut cs = CpuStack {
        cpu: regs.cpu,
        registers: source.to_string(),
        ip: format!("{rip:#x}"),
        symbol: syms.symbolize(rip).map(|s| s.display()),
        unwinder: "none".into(),
        ..Default::default()
    };
    if regs.cs & 3 == 3 || !is_kernel_addr(rip) {
        cs.note = Some(format!("user mode (cs {:#x}, rip {rip:#x})", regs.cs));
        return cs;
    }
    let u = unwind(kmem, syms, orc, &regs.regs, Some(regs.cpu));
    cs.frames = u.frames;
    cs.unwinder = u.unwinder.to_string();
    cs.note = u.note;
    cs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kallsyms::tests::{build, BASE, TEXT};
    use kdump::{SliceMem, VmcoreInfo};

    const ORC: u64 = 0x180000;
    /// The stack's physical address (THREAD_SIZE-aligned).
    const STACK: u64 = 0x1c0000;

    fn entry(sp_reg: u8, sp_off: i16, bp_reg: u8, bp_off: i16, ty: u8, end: bool) -> [u8; 6] {
        let w: u16 = sp_reg as u16 | (bp_reg as u16) << 4 | (ty as u16) << 8 | (end as u16) << 10;
        let (a, b, c) = (sp_off.to_le_bytes(), bp_off.to_le_bytes(), w.to_le_bytes());
        [a[0], a[1], b[0], b[1], c[0], c[1]]
    }

    /// A kernel image: kallsyms, ORC for `(ip, entry)`, and an empty stack.
    fn image(orc: &[(u64, [u8; 6])]) -> (Vec<u8>, VmcoreInfo) {
        let mut mem = vec![0u8; 0x200000];
        let n = orc.len() as u64;
        let ip_va = BASE + ORC;
        let u_va = ip_va + 4 * n;
        let lookup_va = (u_va + 6 * n).next_multiple_of(8);
        let blocks = 0x1000 / 256 + 1;
        let syms: Vec<(String, u8, u64)> = vec![
            ("_stext".into(), b'T', TEXT),
            ("do_thing".into(), b'T', TEXT + 0x200),
            ("caller_fn".into(), b'T', TEXT + 0x300),
            ("outer_fn".into(), b'T', TEXT + 0x400),
            ("irq_entry".into(), b'T', TEXT + 0x500),
            ("_etext".into(), b'T', TEXT + 0x1000),
            ("_end".into(), b'B', TEXT + 0x3000),
            ("__start_orc_unwind_ip".into(), b'D', ip_va),
            ("__stop_orc_unwind_ip".into(), b'D', u_va),
            ("__start_orc_unwind".into(), b'D', u_va),
            ("orc_lookup".into(), b'D', lookup_va),
            ("orc_lookup_end".into(), b'D', lookup_va + 4 * blocks),
        ];
        let info = build(&syms, &mut mem, 0x1000);
        for (i, (ip, e)) in orc.iter().enumerate() {
            let at = (ip_va + 4 * i as u64) as i64;
            let rel = (*ip as i64 - at) as i32;
            let p = (ORC + 4 * i as u64) as usize;
            mem[p..p + 4].copy_from_slice(&rel.to_le_bytes());
            let p = (u_va - BASE) as usize + 6 * i;
            mem[p..p + 6].copy_from_slice(e);
        }
        // unwind_init's lookup table.
        let find = |ip: u64| orc.iter().rposition(|(a, _)| *a <= ip).unwrap_or(0) as u32;
        for b in 0..blocks {
            let ip = if b == blocks - 1 { TEXT + 0x1000 } else { TEXT + 256 * b };
            let p = (lookup_va - BASE + 4 * b) as usize;
            mem[p..p + 4].copy_from_slice(&find(ip).to_le_bytes());
        }
        (mem, VmcoreInfo::parse(&info))
    }

    fn put(mem: &mut [u8], va: u64, v: u64) {
        let p = (va - BASE) as usize;
        mem[p..p + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn standard_orc() -> Vec<(u64, [u8; 6])> {
        vec![
            (TEXT, entry(0, 0, 0, 0, 0, false)),
            // do_thing: push %rbp; the return address above it.
            (TEXT + 0x200, entry(reg::SP, 16, reg::PREV_SP, -16, 0, false)),
            (TEXT + 0x300, entry(reg::SP, 8, reg::UNDEFINED, 0, 0, false)),
            // outer_fn: the end of the stack.
            (TEXT + 0x400, entry(0, 0, 0, 0, 0, true)),
            // irq_entry: a full pt_regs at SP.
            (TEXT + 0x500, entry(reg::SP, 0, reg::UNDEFINED, 0, 1, false)),
            (TEXT + 0x600, entry(0, 0, 0, 0, 0, false)),
        ]
    }

    fn names(f: &[Frame]) -> Vec<String> {
        f.iter().map(|f| f.symbol.clone().unwrap_or_default()).collect()
    }

    fn run(mem: &[u8], info: &VmcoreInfo, regs: Regs, with_orc: bool) -> Unwound {
        let sm = SliceMem::new(vec![(0, mem)]);
        let kmem = KernelMem::linear(&sm, BASE);
        let syms = Kallsyms::read(&kmem, info).unwrap();
        let orc = Orc::read(&kmem, &syms).unwrap();
        unwind(&kmem, &syms, with_orc.then_some(&orc), &regs, None)
    }

    #[test]
    fn orc_call_frames() {
        let (mut mem, info) = image(&standard_orc());
        let s = BASE + STACK + 0x3000;
        put(&mut mem, s, 0x1234); // saved rbp
        put(&mut mem, s + 8, TEXT + 0x320);
        put(&mut mem, s + 16, TEXT + 0x420);
        let regs = Regs { rip: TEXT + 0x210, rsp: s, rbp: 7, ..Default::default() };
        let u = run(&mem, &info, regs, true);
        assert_eq!(u.unwinder, "orc");
        assert_eq!(names(&u.frames), ["do_thing+0x10/0x100", "caller_fn+0x20/0x100", "outer_fn+0x20/0x100"]);
        assert!(u.frames.iter().all(|f| f.reliable));
        assert_eq!(u.frames[1].address, format!("{:#x}", TEXT + 0x320));
        // Without ORC: the scan, every text address from rsp up.
        let u = run(&mem, &info, regs, false);
        assert_eq!(u.unwinder, "scan");
        assert_eq!(names(&u.frames), ["do_thing+0x10/0x100", "caller_fn+0x20/0x100", "outer_fn+0x20/0x100"]);
        assert!(!u.frames[1].reliable);
        // User mode: nothing.
        let u = run(&mem, &info, Regs { rip: 0x401000, rsp: 0x7fff_0000, ..Default::default() }, true);
        assert_eq!((u.frames.len(), u.unwinder), (0, "none"));
    }

    #[test]
    fn orc_regs_frames() {
        let (mut mem, info) = image(&standard_orc());
        // irq_entry's pt_regs at rsp: interrupted caller_fn+0x10 with its own stack above.
        let s = BASE + STACK + 0x2000;
        let task_sp = BASE + STACK + 0x3800;
        put(&mut mem, s + pt::IP, TEXT + 0x310);
        put(&mut mem, s + pt::CS, 0x10);
        put(&mut mem, s + pt::SP, task_sp);
        put(&mut mem, task_sp, TEXT + 0x410);
        let regs = Regs { rip: TEXT + 0x510, rsp: s, ..Default::default() };
        let u = run(&mem, &info, regs, true);
        assert_eq!(names(&u.frames), ["irq_entry+0x10/0xb00", "caller_fn+0x10/0x100", "outer_fn+0x10/0x100"]);
        // The same from user mode ends at the pt_regs.
        put(&mut mem, s + pt::CS, 0x33);
        let u = run(&mem, &info, regs, true);
        assert_eq!(names(&u.frames), ["irq_entry+0x10/0xb00"]);
    }

    #[test]
    fn hostile_orc_and_stacks_end() {
        // An entry that does not move SP: the walk stops.
        let mut orc = standard_orc();
        orc[1].1 = entry(reg::SP, 0, reg::UNDEFINED, 0, 0, false);
        let (mut mem, info) = image(&orc);
        let s = BASE + STACK + 0x3000;
        put(&mut mem, s - 8, TEXT + 0x210);
        let u = run(&mem, &info, Regs { rip: TEXT + 0x210, rsp: s, ..Default::default() }, true);
        assert!(u.frames.len() <= 2, "{:?}", names(&u.frames));
        // A stack full of the same return address: capped.
        let (mut mem, info) = image(&standard_orc());
        for i in 0..0x800u64 {
            put(&mut mem, BASE + STACK + 8 * i, TEXT + 0x320);
        }
        let t = std::time::Instant::now();
        let u = run(&mem, &info, Regs { rip: TEXT + 0x310, rsp: BASE + STACK, ..Default::default() }, true);
        assert_eq!(u.frames.len(), MAX_FRAMES);
        let u = run(&mem, &info, Regs { rip: TEXT + 0x310, rsp: BASE + STACK, ..Default::default() }, false);
        assert_eq!(u.frames.len(), MAX_FRAMES);
        // Stack pointers off the map, registers naming no pt_regs, garbage entries.
        let u = run(&mem, &info, Regs { rip: TEXT + 0x210, rsp: BASE - 0x10_0000_0000, ..Default::default() }, true);
        assert!(u.frames.len() <= 1);
        let mut orc = standard_orc();
        orc[2].1 = entry(reg::R10, 0, 15, 0, 3, false);
        orc[1].1 = [0xff; 6];
        let (mem, info) = image(&orc);
        for rip in [TEXT + 0x210, TEXT + 0x310, TEXT + 0x510, 0, u64::MAX] {
            let _ = run(
                &mem,
                &info,
                Regs { rip, rsp: BASE + STACK + 0x100, r10: BASE + STACK, ..Default::default() },
                true,
            );
        }
        assert!(t.elapsed().as_secs() < 5);
    }

    #[test]
    fn crash_notes_buffers() {
        // A note_buf_t as crash_save_cpu writes it: "CORE" NT_PRSTATUS, then an empty note.
        let mut buf = vec![0u8; crate::crashnotes::NOTE_BUF_BYTES];
        assert!(crate::crashnotes::from_note_buf(&buf).is_none());
        buf[0..4].copy_from_slice(&5u32.to_le_bytes());
        buf[4..8].copy_from_slice(&336u32.to_le_bytes());
        buf[8..12].copy_from_slice(&1u32.to_le_bytes());
        buf[12..16].copy_from_slice(b"CORE");
        let desc = 20;
        buf[desc + 32..desc + 36].copy_from_slice(&42u32.to_le_bytes());
        buf[desc + 112 + 16 * 8..desc + 112 + 17 * 8].copy_from_slice(&(TEXT + 5).to_le_bytes());
        buf[desc + 112 + 17 * 8..desc + 112 + 18 * 8].copy_from_slice(&0x10u64.to_le_bytes());
        let (pid, r) = crate::crashnotes::from_note_buf(&buf).unwrap();
        assert_eq!((pid, r.regs.rip, r.cs), (42, TEXT + 5, 0x10));
    }
}
