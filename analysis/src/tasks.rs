//! The task list and the blocked (D-state) tasks, with the layout of `struct task_struct` from
//! the kernel's BTF, and the task running on a CPU.
//!
//! Followed (Linux v6.1): `include/linux/sched.h` (`task_struct`: `__state`, `tasks`, `pid`,
//! `comm`, `signal`, `thread_node`, `thread_group`, `thread`, and the `TASK_*` state bits),
//! `include/linux/sched/signal.h` (`signal_struct.thread_head`; `for_each_process_thread`
//! walks `init_task.tasks`, then each process's `signal->thread_head` through `thread_node`;
//! 6.1 also has the older `thread_group` ring, removed in 6.7, used where `thread_node` is
//! absent), `arch/x86/include/asm/switch_to.h` (`struct inactive_task_frame`, what
//! `__switch_to_asm` pushed on a task's stack when it was switched out: `thread.sp` points at
//! it, and `arch/x86/kernel/unwind_orc.c`'s `unwind_start` starts a sleeping task's unwind at
//! `ret_addr` with `sp = thread.sp + sizeof(inactive_task_frame)` and `bp = frame->bp`), and
//! `arch/x86/include/asm/current.h` (`current_task` per-CPU in 6.1, `pcpu_hot.current_task`
//! from 6.2).
//!
//! Guest memory is hostile: the walk is cycle-checked and capped at [`MAX_TASKS`].

use std::collections::HashSet;

use kdump::elfcore::Regs;
use kdump::PhysMem;

use crate::btf::Btf;
use crate::kallsyms::Kallsyms;
use crate::orc::Orc;
use crate::{AnalysisError, Frame, KernelMem, Task};

/// The most tasks walked.
pub const MAX_TASKS: usize = 100_000;
/// The most blocked tasks reported (each with its unwound stack).
pub const MAX_BLOCKED: usize = 256;
/// `TASK_UNINTERRUPTIBLE`.
pub const TASK_UNINTERRUPTIBLE: u64 = 0x2;
/// `TASK_NOLOAD`: with `TASK_UNINTERRUPTIBLE`, `TASK_IDLE` (`ps` shows `I`, not `D`).
pub const TASK_NOLOAD: u64 = 0x400;
/// `TASK_COMM_LEN`.
pub const TASK_COMM_LEN: usize = 16;
/// The most CPUs `__per_cpu_offset` is read for (`NR_CPUS` of a big config).
const MAX_CPUS: u32 = 8192;

/// Where the task walk's fields are, from BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLayout {
    /// `task_struct.tasks` (the process list).
    pub tasks: u64,
    pub pid: u64,
    pub comm: u64,
    /// `task_struct.__state` (`state` before 5.14), and its size (4 or 8).
    pub state: u64,
    pub state_size: u64,
    /// How a process's threads are linked.
    pub threads: Threads,
    /// `task_struct.thread.sp` and the saved frame it points at, where BTF has them.
    pub thread_sp: Option<u64>,
    pub frame: Option<FrameLayout>,
}

/// How a process's threads are linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// `signal->thread_head` through each thread's `thread_node` (3.14+).
    Signal { signal: u64, thread_head: u64, thread_node: u64 },
    /// The `thread_group` ring (before 6.7).
    Group { thread_group: u64 },
    /// Neither: thread group leaders only.
    Leaders,
}

/// `struct inactive_task_frame` (x86_64): the offsets of the registers in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    pub size: u64,
    pub bp: u64,
    pub ret_addr: u64,
    pub bx: Option<u64>,
    pub r12: Option<u64>,
    pub r13: Option<u64>,
    pub r14: Option<u64>,
    pub r15: Option<u64>,
}

impl TaskLayout {
    /// The layout from BTF; fails only without the fields every walk needs.
    pub fn new(btf: &Btf) -> Result<Self, AnalysisError> {
        let ts = "task_struct";
        let state = btf.member(ts, "__state").or_else(|_| btf.member(ts, "state"))?;
        if !matches!(state.size, 4 | 8) {
            return Err(AnalysisError::Implausible(format!("task_struct.__state of {} bytes", state.size)));
        }
        let comm = btf.member(ts, "comm")?;
        if comm.size == 0 {
            return Err(AnalysisError::Implausible("task_struct.comm of 0 bytes".into()));
        }
        let threads =
            match (btf.offset(ts, "signal"), btf.offset("signal_struct", "thread_head"), btf.offset(ts, "thread_node"))
            {
                (Ok(signal), Ok(thread_head), Ok(thread_node)) => Threads::Signal { signal, thread_head, thread_node },
                _ => match btf.offset(ts, "thread_group") {
                    Ok(thread_group) => Threads::Group { thread_group },
                    Err(_) => Threads::Leaders,
                },
            };
        let f = "inactive_task_frame";
        let frame = match (btf.size_of(f), btf.offset(f, "bp"), btf.offset(f, "ret_addr")) {
            (Ok(size), Ok(bp), Ok(ret_addr)) if size <= 256 => Some(FrameLayout {
                size,
                bp,
                ret_addr,
                bx: btf.offset(f, "bx").ok(),
                r12: btf.offset(f, "r12").ok(),
                r13: btf.offset(f, "r13").ok(),
                r14: btf.offset(f, "r14").ok(),
                r15: btf.offset(f, "r15").ok(),
            }),
            _ => None,
        };
        Ok(Self {
            tasks: btf.offset(ts, "tasks")?,
            pid: btf.offset(ts, "pid")?,
            comm: comm.offset,
            state: state.offset,
            state_size: state.size,
            threads,
            thread_sp: btf.offset(ts, "thread.sp").ok(),
            frame,
        })
    }
}

/// Every task's address, `init_task` first, processes in list order, each followed by its
/// other threads. A list that loops back on itself, or one that cannot be read further, ends
/// its walk there; [`MAX_TASKS`] caps the whole.
pub fn task_addrs<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    l: &TaskLayout,
    init_task: u64,
) -> Result<Vec<u64>, AnalysisError> {
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    let mut procs = HashSet::new();
    let mut steps = 0usize;
    let head = init_task.wrapping_add(l.tasks);
    // The first link must read: otherwise init_task is not there at all.
    let mut next = kmem.u64(head)?;
    let mut leader = init_task;
    procs.insert(leader);
    loop {
        if seen.insert(leader) {
            all.push(leader);
        }
        threads(kmem, l, leader, &mut all, &mut seen, &mut steps);
        if all.len() >= MAX_TASKS || steps >= 2 * MAX_TASKS || next == head {
            break;
        }
        steps += 1;
        // A task is listed only where its own link reads (a pointer into nowhere ends the
        // walk), and only once (a list that loops short of init_task ends it too).
        let task = next.wrapping_sub(l.tasks);
        match kmem.u64(next) {
            Ok(n) if procs.insert(task) => {
                leader = task;
                next = n;
            }
            _ => break,
        }
    }
    all.truncate(MAX_TASKS);
    Ok(all)
}

/// `leader`'s other threads, appended.
fn threads<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    l: &TaskLayout,
    leader: u64,
    all: &mut Vec<u64>,
    seen: &mut HashSet<u64>,
    steps: &mut usize,
) {
    let (head, link) = match l.threads {
        Threads::Signal { signal, thread_head, thread_node } => match kmem.u64(leader.wrapping_add(signal)) {
            Ok(s) if s != 0 => (s.wrapping_add(thread_head), thread_node),
            _ => return,
        },
        Threads::Group { thread_group } => (leader.wrapping_add(thread_group), thread_group),
        Threads::Leaders => return,
    };
    let mut node = match kmem.u64(head) {
        Ok(n) => n,
        Err(_) => return,
    };
    let mut here = HashSet::new();
    while node != head && node != 0 && all.len() < MAX_TASKS && *steps < 2 * MAX_TASKS {
        *steps += 1;
        if !here.insert(node) {
            return;
        }
        let t = node.wrapping_sub(link);
        if seen.insert(t) {
            all.push(t);
        }
        node = match kmem.u64(node) {
            Ok(n) => n,
            Err(_) => return,
        };
    }
}

/// A task's pid and comm.
pub fn pid_comm<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    l: &TaskLayout,
    task: u64,
) -> Result<(u32, String), AnalysisError> {
    let pid = kmem.u32(task.wrapping_add(l.pid))?;
    let comm = kmem.cstr(task.wrapping_add(l.comm), TASK_COMM_LEN)?;
    Ok((pid, comm))
}

/// A task's `__state`.
pub fn state<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, l: &TaskLayout, task: u64) -> Result<u64, AnalysisError> {
    let at = task.wrapping_add(l.state);
    Ok(if l.state_size == 8 { kmem.u64(at)? } else { u64::from(kmem.u32(at)?) })
}

/// In uninterruptible sleep, as `ps` shows `D` (`TASK_IDLE` is `I`).
pub fn is_blocked(state: u64) -> bool {
    state & TASK_UNINTERRUPTIBLE != 0 && state & TASK_NOLOAD == 0
}

/// The registers a switched-out task resumes with, from its `inactive_task_frame`:
/// `rip` is the return address into `__schedule` (a return address: look up `rip - 1`).
pub fn saved_regs<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    l: &TaskLayout,
    task: u64,
) -> Result<Regs, AnalysisError> {
    let (sp_off, f) = match (l.thread_sp, l.frame) {
        (Some(s), Some(f)) => (s, f),
        _ => return Err(AnalysisError::Missing("BTF thread_struct.sp or inactive_task_frame".into())),
    };
    let sp = kmem.u64(task.wrapping_add(sp_off))?;
    let frame = kmem.bytes(sp, f.size as usize)?;
    let at = |off: u64| -> u64 {
        let o = off as usize;
        frame.get(o..o.saturating_add(8)).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
    };
    let opt = |off: Option<u64>| off.map(at).unwrap_or(0);
    Ok(Regs {
        rip: at(f.ret_addr),
        rsp: sp.wrapping_add(f.size),
        rbp: at(f.bp),
        rbx: opt(f.bx),
        r12: opt(f.r12),
        r13: opt(f.r13),
        r14: opt(f.r14),
        r15: opt(f.r15),
        ..Regs::default()
    })
}

/// The tasks in uninterruptible sleep, each with its stack (`unwind::frames` from its saved
/// context), found from kallsyms' `init_task`.
pub fn blocked<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    syms: &Kallsyms,
    btf: &Btf,
    orc: Option<&Orc>,
) -> Result<Vec<Task>, AnalysisError> {
    let init_task = syms.lookup("init_task").ok_or_else(|| AnalysisError::NoSymbol("init_task".into()))?;
    let layout = TaskLayout::new(btf)?;
    blocked_from(kmem, &layout, init_task, &mut |regs| crate::unwind::frames(kmem, syms, orc, regs, None).0)
}

/// [`blocked`] from `init_task`'s address, with `frames` to unwind a saved register state.
pub fn blocked_from<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    l: &TaskLayout,
    init_task: u64,
    frames: &mut dyn FnMut(&Regs) -> Vec<Frame>,
) -> Result<Vec<Task>, AnalysisError> {
    let mut out = Vec::new();
    for t in task_addrs(kmem, l, init_task)? {
        if out.len() >= MAX_BLOCKED {
            break;
        }
        match state(kmem, l, t) {
            Ok(s) if is_blocked(s) => {}
            _ => continue,
        }
        let Ok((pid, comm)) = pid_comm(kmem, l, t) else { continue };
        let frames = saved_regs(kmem, l, t).map(|r| frames(&r)).unwrap_or_default();
        out.push(Task { pid, comm, state: "D".into(), frames });
    }
    Ok(out)
}

/// The task running on `cpu`: its pid and comm (the per-CPU `current_task`, or
/// `pcpu_hot.current_task` from 6.2, at `__per_cpu_offset[cpu]`).
pub fn current<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    syms: &Kallsyms,
    btf: &Btf,
    cpu: u32,
) -> Option<(u32, String)> {
    let var = match syms.lookup("pcpu_hot") {
        Some(hot) => hot.wrapping_add(btf.offset("pcpu_hot", "current_task").ok()?),
        None => syms.lookup("current_task")?,
    };
    let per_cpu_offset = syms.lookup("__per_cpu_offset")?;
    current_at(kmem, &TaskLayout::new(btf).ok()?, var, per_cpu_offset, cpu)
}

/// [`current`] with the per-CPU variable's address (its offset in the per-CPU area: per-CPU
/// symbols are not relocated) and `__per_cpu_offset`'s.
pub fn current_at<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    l: &TaskLayout,
    var: u64,
    per_cpu_offset: u64,
    cpu: u32,
) -> Option<(u32, String)> {
    if cpu >= MAX_CPUS {
        return None;
    }
    let base = kmem.u64(per_cpu_offset.wrapping_add(8 * u64::from(cpu))).ok()?;
    let task = kmem.u64(var.wrapping_add(base)).ok()?;
    if task == 0 {
        return None;
    }
    pid_comm(kmem, l, task).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::Enc;
    use kdump::SliceMem;

    const BASE: u64 = 0xffff_8880_0000_0000;
    const TASK: u64 = 0x1000;
    const TS: u64 = 0x400;
    // Offsets in the synthetic task_struct.
    const STATE: u64 = 0x10;
    const TASKS: u64 = 0x20;
    const PID: u64 = 0x40;
    const COMM: u64 = 0x50;
    const SIGNAL: u64 = 0x60;
    const NODE: u64 = 0x70;
    const SP: u64 = 0x100 + 8;
    // signal_struct.thread_head
    const HEAD: u64 = 0x8;

    fn btf() -> Btf {
        let mut e = Enc::new();
        let int = e.int("int", 4);
        let uint = e.int("unsigned int", 4);
        let ulong = e.int("long unsigned int", 8);
        let ch = e.int("char", 1);
        let comm = e.array(ch, int, 16);
        let list = e.record(false, "list_head", 16, &[("next", ulong, 0), ("prev", ulong, 8)]);
        let sig = e.record(false, "signal_struct", 64, &[("thread_head", list, HEAD as u32)]);
        let sigp = e.ptr(sig);
        let thread = e.record(false, "thread_struct", 64, &[("es", ulong, 0), ("sp", ulong, 8)]);
        let anon = e.record(false, "", 8, &[("pid", int, 0), ("tgid", int, 4)]);
        e.record(
            false,
            "task_struct",
            TS as u32,
            &[
                ("__state", uint, STATE as u32),
                ("tasks", list, TASKS as u32),
                ("", anon, PID as u32),
                ("comm", comm, COMM as u32),
                ("signal", sigp, SIGNAL as u32),
                ("thread_node", list, NODE as u32),
                ("thread", thread, 0x100),
            ],
        );
        let names = ["r15", "r14", "r13", "r12", "bx", "bp", "ret_addr"];
        let m: Vec<(&str, u32, u32)> = names.iter().enumerate().map(|(i, n)| (*n, ulong, 8 * i as u32)).collect();
        e.record(false, "inactive_task_frame", 56, &m);
        e.record(false, "pcpu_hot_unused", 8, &[]);
        Btf::parse(&e.blob()).unwrap()
    }

    struct Img(Vec<u8>);

    impl Img {
        fn put(&mut self, va: u64, v: u64) {
            let o = (va - BASE) as usize;
            self.0[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn put32(&mut self, va: u64, v: u32) {
            let o = (va - BASE) as usize;
            self.0[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn task(n: u64) -> u64 {
            BASE + TASK + n * TS * 2
        }
        /// Task `n` (pid n) in state `st`, with a saved frame on its stack.
        fn add(&mut self, n: u64, st: u32, signal: u64) {
            let t = Self::task(n);
            self.put32(t + STATE, st);
            self.put32(t + PID, n as u32);
            let name = format!("task{n}");
            let o = (t + COMM - BASE) as usize;
            self.0[o..o + name.len()].copy_from_slice(name.as_bytes());
            self.put(t + SIGNAL, signal);
            let sp = t + TS;
            self.put(t + SP, sp);
            self.put(sp + 40, 0xbbbb_0000 + n); // bp
            self.put(sp + 48, 0xffff_ffff_8100_0000 + n); // ret_addr
        }
        /// Links `ring` through the `off` list_head, with `head` (an address) first.
        fn ring(&mut self, head: u64, nodes: &[u64]) {
            let mut all = vec![head];
            all.extend_from_slice(nodes);
            for i in 0..all.len() {
                let next = all[(i + 1) % all.len()];
                let prev = all[(i + all.len() - 1) % all.len()];
                self.put(all[i], next);
                self.put(all[i] + 8, prev);
            }
        }
    }

    /// init_task (0, running), process 1 (S) with threads 2 (D) and 3 (TASK_IDLE), process 4
    /// (D, TASK_KILLABLE).
    fn image() -> Img {
        let mut m = Img(vec![0u8; 0x10000]);
        let sig = |i: u64| BASE + 0x100 + i * 0x40;
        m.add(0, 0, sig(0));
        m.add(1, 1, sig(1));
        m.add(2, 2, sig(1));
        m.add(3, 0x402, sig(1));
        m.add(4, 0x102, sig(4));
        let t = Img::task;
        m.ring(t(0) + TASKS, &[t(1) + TASKS, t(4) + TASKS]);
        m.ring(sig(0) + HEAD, &[t(0) + NODE]);
        m.ring(sig(1) + HEAD, &[t(1) + NODE, t(2) + NODE, t(3) + NODE]);
        m.ring(sig(4) + HEAD, &[t(4) + NODE]);
        m
    }

    #[test]
    fn layout() {
        let l = TaskLayout::new(&btf()).unwrap();
        assert_eq!((l.tasks, l.pid, l.comm, l.state, l.state_size), (TASKS, PID, COMM, STATE, 4));
        assert_eq!(l.threads, Threads::Signal { signal: SIGNAL, thread_head: HEAD, thread_node: NODE });
        assert_eq!(l.thread_sp, Some(SP));
        let f = l.frame.unwrap();
        assert_eq!((f.size, f.bp, f.ret_addr, f.bx), (56, 40, 48, Some(32)));
    }

    #[test]
    fn walk_and_blocked() {
        let img = image();
        let mem = SliceMem::new(vec![(0, &img.0[..])]);
        let kmem = KernelMem::linear(&mem, BASE);
        let l = TaskLayout::new(&btf()).unwrap();
        let all = task_addrs(&kmem, &l, Img::task(0)).unwrap();
        assert_eq!(all, (0..5).map(Img::task).collect::<Vec<_>>());
        let mut seen = Vec::new();
        let b = blocked_from(&kmem, &l, Img::task(0), &mut |r| {
            seen.push(*r);
            vec![Frame { address: format!("{:#x}", r.rip), ..Default::default() }]
        })
        .unwrap();
        let got: Vec<(u32, &str, &str)> = b.iter().map(|t| (t.pid, t.comm.as_str(), t.state.as_str())).collect();
        assert_eq!(got, vec![(2, "task2", "D"), (4, "task4", "D")]);
        assert_eq!(seen[0].rip, 0xffff_ffff_8100_0002);
        assert_eq!(seen[0].rbp, 0xbbbb_0002);
        assert_eq!(seen[0].rsp, Img::task(2) + TS + 56);
        assert_eq!(b[1].frames[0].address, "0xffffffff81000004");
    }

    #[test]
    fn loops_end() {
        let mut img = image();
        let t = Img::task;
        // The process list loops 1 -> 4 -> 1 without coming back to init_task, and process 1's
        // thread list loops 2 -> 3 -> 2.
        img.put(t(4) + TASKS, t(1) + TASKS);
        img.put(t(3) + NODE, t(2) + NODE);
        let mem = SliceMem::new(vec![(0, &img.0[..])]);
        let kmem = KernelMem::linear(&mem, BASE);
        let l = TaskLayout::new(&btf()).unwrap();
        let all = task_addrs(&kmem, &l, t(0)).unwrap();
        assert_eq!(all, (0..5).map(t).collect::<Vec<_>>());
        // A list that points into itself, a list into nowhere.
        img.put(t(1) + TASKS, t(1) + TASKS);
        img.put(t(0) + TASKS, 0xdead_0000_0000);
        let mem = SliceMem::new(vec![(0, &img.0[..])]);
        let kmem = KernelMem::linear(&mem, BASE);
        assert_eq!(task_addrs(&kmem, &l, t(0)).unwrap().len(), 1);
        // init_task not in memory at all.
        assert!(task_addrs(&kmem, &l, BASE + 0x100_0000).is_err());
        assert!(blocked_from(&kmem, &l, BASE + 0x100_0000, &mut |_| Vec::new()).is_err());
    }

    #[test]
    fn current_task() {
        let mut img = image();
        // __per_cpu_offset at 0x8000: CPU 0's area at 0x9000, CPU 1's at 0xa000; current_task
        // at per-CPU offset 0x10.
        let pco = BASE + 0x8000;
        img.put(pco, BASE + 0x9000);
        img.put(pco + 8, BASE + 0xa000);
        img.put(BASE + 0x9010, Img::task(2));
        img.put(BASE + 0xa010, Img::task(4));
        let mem = SliceMem::new(vec![(0, &img.0[..])]);
        let kmem = KernelMem::linear(&mem, BASE);
        let l = TaskLayout::new(&btf()).unwrap();
        assert_eq!(current_at(&kmem, &l, 0x10, pco, 0), Some((2, "task2".into())));
        assert_eq!(current_at(&kmem, &l, 0x10, pco, 1), Some((4, "task4".into())));
        assert_eq!(current_at(&kmem, &l, 0x10, pco, 2), None);
        assert_eq!(current_at(&kmem, &l, 0x10, pco, u32::MAX), None);
    }

    #[test]
    fn no_btf_fields() {
        let mut e = Enc::new();
        e.record(false, "task_struct", 8, &[]);
        let b = Btf::parse(&e.blob()).unwrap();
        assert!(matches!(TaskLayout::new(&b), Err(AnalysisError::Missing(_))));
    }
}
