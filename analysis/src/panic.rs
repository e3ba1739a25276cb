//! The panic, from the kernel log: the last `Kernel panic - not syncing: MSG` (kernel/panic.c
//! `panic()`), the first line of the report that led to it, and the CPU and task that panicked
//! (lib/dump_stack.c `dump_stack_print_info`'s `CPU: N PID: P Comm: C ...`, or the record's
//! caller ID).
//!
//! Where the report comes from (6.1): an oops (arch/x86/kernel/dumpstack.c `__die`: `Oops: ...
//! [#1]`, `general protection fault ... [#1]`, `invalid opcode: 0000 [#1]`, after `BUG: ...` or
//! `kernel BUG at ...`; then `panic("Fatal exception")`), `__warn` (kernel/panic.c: `WARNING:`,
//! `panic_on_warn`), the soft and hard lockup watchdogs (kernel/watchdog.c), the hung task
//! detector (kernel/hung_task.c `INFO: task ... blocked for more than`), the OOM killer
//! (mm/oom_kill.c `... invoked oom-killer:`), unknown NMIs (arch/x86/kernel/nmi.c `Uhhuh. NMI
//! received`) and sysrq-c (drivers/tty/sysrq.c `sysrq: Trigger a crash`).

use crate::printk::Record;
use crate::Panic;

const PANIC: &str = "Kernel panic - not syncing: ";
/// How far back a report's first line is looked for when the panic message does not say what
/// kind of report to expect.
const NEAR: usize = 64;
/// How far back a report of the kind the panic message names is looked for.
const FAR: usize = 100_000;
/// How many records after the panic line its own `CPU:` line (panic()'s dump_stack) may be.
const AFTER: usize = 4;

/// The first line of a record's text, without its trailing whitespace.
fn first_line(r: &Record) -> String {
    let t = r.text_lossy();
    t.lines().next().unwrap_or("").trim_end().to_string()
}

/// The die header of an oops (`__die_header`): `... [#N]`.
fn is_die_header(l: &str) -> bool {
    let Some(i) = l.find("[#") else { return false };
    let rest = &l[i + 2..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with(']')
}

/// The first line of an oops report, before its die header.
fn is_oops_start(l: &str) -> bool {
    l.starts_with("BUG: ")
        || l.starts_with("kernel BUG at ")
        || l.starts_with("Unable to handle kernel ")
        || l.starts_with("general protection fault")
}

/// Every kind of report's first line.
fn is_report_start(l: &str) -> bool {
    is_oops_start(l)
        || is_die_header(l)
        || l.starts_with("Oops: ")
        || l.starts_with("WARNING: ")
        || l.starts_with("watchdog: BUG: soft lockup")
        || l.contains("Watchdog detected hard LOCKUP")
        || l.starts_with("sysrq: Trigger a crash")
        || l.starts_with("SysRq : Trigger a crash")
        || l.starts_with("Out of memory")
        || l.contains(" invoked oom-killer: ")
        || (l.starts_with("INFO: task ") && l.contains(" blocked for more than "))
        || l.starts_with("Uhhuh. NMI received")
        || l.starts_with("NMI: IOCK error")
        || l.starts_with("NMI: PCI system error")
        || l.contains("rcu_sched detected stalls")
        || l.contains("rcu_preempt detected stalls")
}

/// The report a panic message says led to it, where it says: a predicate on a line.
fn expected_cause(msg: &str) -> Option<fn(&str) -> bool> {
    let m = msg.to_ascii_lowercase();
    Some(if m.starts_with("fatal exception") || m.starts_with("fatal machine check") {
        |l: &str| is_die_header(l) || is_oops_start(l) || l.starts_with("Oops: ")
    } else if m.contains("hung_task") || (m.contains("hung tasks") && !m.contains("softlockup")) {
        |l: &str| l.starts_with("INFO: task ") && l.contains(" blocked for more than ")
    } else if m.contains("softlockup") {
        |l: &str| l.contains("BUG: soft lockup")
    } else if m.contains("hard lockup") {
        |l: &str| l.contains("Watchdog detected hard LOCKUP")
    } else if m.contains("nmi") {
        |l: &str| {
            l.starts_with("Uhhuh. NMI received")
                || l.starts_with("NMI: ")
                || l.contains("Watchdog detected hard LOCKUP")
        }
    } else if m.contains("sysrq") {
        |l: &str| l.starts_with("sysrq: Trigger a crash") || l.starts_with("SysRq : Trigger a crash")
    } else if m.contains("out of memory") || m.contains("deadlocked on memory") {
        |l: &str| l.contains(" invoked oom-killer: ")
    } else if m.starts_with("attempted to kill init") || m.starts_with("aiee, killing interrupt") {
        |l: &str| is_die_header(l) || is_oops_start(l) || l.starts_with("Oops: ")
    } else if m.contains("panic_on_warn") {
        |l: &str| l.starts_with("WARNING: ")
    } else if m.contains("rcu stall") {
        |l: &str| l.contains("detected stalls")
    } else {
        return None;
    })
}

/// `CPU: N PID: P Comm: C ...` (dump_stack_print_info): (cpu, pid, comm).
pub fn parse_cpu_line(l: &str) -> Option<(u32, u32, String)> {
    let rest = l.strip_prefix("CPU: ")?;
    let (cpu, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("PID: ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("Comm: ")?;
    // `%.20s` of a comm that may hold spaces: up to what dump_stack_print_info prints next.
    let end = [" Kdump: loaded ", " Tainted: ", " Not tainted "]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or_else(|| rest.find(' ').unwrap_or(rest.len()));
    Some((cpu.parse().ok()?, pid.parse().ok()?, rest[..end].to_string()))
}

/// The oops report's first line: the `BUG:`/`kernel BUG at`/... line just before its die
/// header (within a few records: `#PF:` and `PGD` lines come between), else the header.
fn oops_first_line(lines: &[String], at: usize) -> usize {
    if is_oops_start(&lines[at]) {
        return at;
    }
    let from = at.saturating_sub(8);
    (from..at).find(|&i| is_oops_start(&lines[i])).unwrap_or(at)
}

fn nearest_back(lines: &[String], from: usize, to: usize, f: impl Fn(&str) -> bool) -> Option<usize> {
    (to..from).rev().find(|&i| f(&lines[i]))
}

fn apply_caller(p: &mut Panic, r: &Record) {
    if r.caller_id == 0 {
        return;
    }
    if r.caller_id & 0x8000_0000 != 0 {
        p.cpu = Some(r.caller_id & 0x7fff_ffff);
    } else {
        p.pid = Some(r.caller_id);
    }
}

/// The panic from the log: the last `Kernel panic - not syncing:` line's message and time;
/// the first line of the report before it (of the kind the message names: the oops for
/// `Fatal exception`, the hung task for `hung_task: blocked tasks`, ...; else any report's
/// within the 64 records before, a WARNING excepted); the CPU, PID and comm from the `CPU:` line panic()'s own
/// dump_stack prints just after it, else the nearest one between the report and the panic, else
/// the panic record's caller ID. Where the log has no panic line but an oops, the oops's first
/// line is the message. `None` where there is neither.
pub fn from_log(log: &[Record]) -> Option<Panic> {
    let lines: Vec<String> = log.iter().map(first_line).collect();
    let Some(at) = lines.iter().rposition(|l| l.starts_with(PANIC)) else {
        return oops_only(log, &lines);
    };
    let msg = lines[at][PANIC.len()..].trim().to_string();
    let mut p = Panic { message: Some(msg.clone()), time_s: Some(log[at].time_s()), ..Default::default() };

    let cause = match expected_cause(&msg) {
        Some(f) => nearest_back(&lines, at, at.saturating_sub(FAR), f),
        // A WARNING leads to a panic only with panic_on_warn (a message of its own).
        None => {
            nearest_back(&lines, at, at.saturating_sub(NEAR), |l| is_report_start(l) && !l.starts_with("WARNING: "))
        }
    };
    let cause = cause.map(|c| if is_die_header(&lines[c]) { oops_first_line(&lines, c) } else { c });
    p.cause = cause.map(|c| lines[c].clone());

    let after = (at + 1..lines.len().min(at + 1 + AFTER)).find_map(|i| parse_cpu_line(&lines[i]));
    let before = cause.and_then(|c| (c..at).rev().find_map(|i| parse_cpu_line(&lines[i])));
    match after.or(before) {
        Some((cpu, pid, comm)) => {
            p.cpu = Some(cpu);
            p.pid = Some(pid);
            p.comm = Some(comm);
        }
        None => apply_caller(&mut p, &log[at]),
    }
    Some(p)
}

/// No panic line: the last oops (die header) or `BUG:` report as the message.
fn oops_only(log: &[Record], lines: &[String]) -> Option<Panic> {
    let h = lines.iter().rposition(|l| is_die_header(l) || l.starts_with("BUG: "))?;
    let first = oops_first_line(lines, h);
    let mut p = Panic {
        message: Some(lines[first].clone()),
        cause: Some(lines[first].clone()),
        time_s: Some(log[first].time_s()),
        ..Default::default()
    };
    match (first..lines.len().min(h + 1 + 2 * AFTER)).find_map(|i| parse_cpu_line(&lines[i])) {
        Some((cpu, pid, comm)) => {
            p.cpu = Some(cpu);
            p.pid = Some(pid);
            p.comm = Some(comm);
        }
        None => apply_caller(&mut p, &log[first]),
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records from `makedumpfile --dump-dmesg` lines (`[    5.757229] text`).
    fn log(text: &str) -> Vec<Record> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let l = l.trim_start();
                let (ts, rest) = l[1..].split_once("] ").unwrap();
                let (s, us) = ts.trim().split_once('.').unwrap();
                let ts_nsec = s.parse::<u64>().unwrap() * 1_000_000_000 + us.parse::<u64>().unwrap() * 1000;
                Record { ts_nsec, text: rest.as_bytes().to_vec(), ..Default::default() }
            })
            .collect()
    }

    const BOOT: &str = "
[    1.280855] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606 fpu__init_system_xstate+0x85a/0xb19
[    1.280855] Modules linked in:
[    1.280855] CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[    1.280855] ---[ end trace 0000000000000000 ]---
[    1.349884] NMI watchdog: Perf NMI watchdog permanently disabled
";

    #[test]
    fn sysrq_c() {
        let l = log(&format!(
            "{BOOT}
[    5.757229] sysrq: Trigger a crash
[    5.762181] Kernel panic - not syncing: sysrq triggered crash
[    5.767968] CPU: 0 PID: 93 Comm: sh Tainted: G        W          6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[    5.771000] Hardware name: crashvmm
[    5.792319]  sysrq_handle_crash+0x16/0x20
"
        ));
        let p = from_log(&l).unwrap();
        assert_eq!(p.message.as_deref(), Some("sysrq triggered crash"));
        assert_eq!(p.cause.as_deref(), Some("sysrq: Trigger a crash"));
        assert_eq!((p.cpu, p.pid, p.comm.as_deref()), (Some(0), Some(93), Some("sh")));
        assert_eq!(p.time_s, Some(5.762181));
    }

    #[test]
    fn oops_null_deref() {
        let l = log(&format!(
            "{BOOT}
[   14.496510] BUG: kernel NULL pointer dereference, address: 0000000000000000
[   14.505000] #PF: supervisor write access in kernel mode
[   14.515000] #PF: error_code(0x0002) - not-present page
[   14.525000] PGD 0 P4D 0
[   14.535665] Oops: 0002 [#1] PREEMPT SMP NOPTI
[   14.544546] CPU: 1 PID: 121 Comm: insmod Kdump: loaded Tainted: G        W  OE      6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[   14.936941] Modules linked in: crashtest(OE+) hv_vmbus pvpanic_mmio pvpanic
[   14.959169] ---[ end trace 0000000000000000 ]---
[   15.180526] Kernel panic - not syncing: Fatal exception
[   15.311871] Kernel Offset: 0x2f400000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
"
        ));
        let p = from_log(&l).unwrap();
        assert_eq!(p.message.as_deref(), Some("Fatal exception"));
        assert_eq!(p.cause.as_deref(), Some("BUG: kernel NULL pointer dereference, address: 0000000000000000"));
        assert_eq!((p.cpu, p.pid, p.comm.as_deref()), (Some(1), Some(121), Some("insmod")));

        // Without the panic line, the oops is the message.
        let p = from_log(&l[..l.len() - 2]).unwrap();
        assert_eq!(p.message.as_deref(), Some("BUG: kernel NULL pointer dereference, address: 0000000000000000"));
        assert_eq!((p.cpu, p.pid), (Some(1), Some(121)));
        assert_eq!(p.time_s, Some(14.49651));
    }

    #[test]
    fn kernel_bug_gpf_and_warn() {
        let l = log(&format!(
            "{BOOT}
[   14.900000] ------------[ cut here ]------------
[   14.910000] kernel BUG at /build/crashtest.c:40!
[   14.920000] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[   14.957953] CPU: 0 PID: 120 Comm: insmod Kdump: loaded Tainted: G        W  OE      6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[   15.888379] Kernel panic - not syncing: Fatal exception
"
        ));
        let p = from_log(&l).unwrap();
        assert_eq!(p.cause.as_deref(), Some("kernel BUG at /build/crashtest.c:40!"));
        assert_eq!(p.pid, Some(120));

        let l = log("
[    9.000000] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI
[    9.000001] CPU: 3 PID: 7 Comm: kworker/3:0 Not tainted 6.1.0 #1
[    9.100000] Kernel panic - not syncing: Fatal exception in interrupt
");
        let p = from_log(&l).unwrap();
        assert!(p.cause.as_deref().unwrap().starts_with("general protection fault, probably"));
        assert_eq!((p.cpu, p.pid, p.comm.as_deref()), (Some(3), Some(7), Some("kworker/3:0")));

        let l = log(&format!(
            "{BOOT}
[   10.939105] WARNING: CPU: 1 PID: 119 at /work/crashtest.c:54 crashtest_init+0x8a/0x1000 [crashtest]
[   10.950000] Modules linked in: crashtest(OE+)
[   10.966631] CPU: 1 PID: 119 Comm: insmod Kdump: loaded Tainted: G        W  OE      6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[   11.370932] Kernel panic - not syncing: kernel: panic_on_warn set ...
[   11.382376] CPU: 1 PID: 119 Comm: insmod Kdump: loaded Tainted: G        W  OE      6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
"
        ));
        let p = from_log(&l).unwrap();
        assert_eq!(p.message.as_deref(), Some("kernel: panic_on_warn set ..."));
        assert!(p.cause.as_deref().unwrap().starts_with("WARNING: CPU: 1 PID: 119 at /work/crashtest.c:54"));
    }

    #[test]
    fn watchdogs_hung_task_oom_nmi() {
        let l = log(&format!(
            "{BOOT}
[   14.188658] INFO: task sh:132 blocked for more than 5 seconds.
[   14.190000]       Tainted: G        W          6.1.0-57-cloud-amd64 #1
[   14.200000] task:sh              state:D stack:0     pid:132   ppid:1      flags:0x00000000
[   14.349827] Kernel panic - not syncing: hung_task: blocked tasks
[   14.355351] CPU: 0 PID: 29 Comm: khungtaskd Kdump: loaded Tainted: G        W          6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
"
        ));
        let p = from_log(&l).unwrap();
        assert_eq!(p.cause.as_deref(), Some("INFO: task sh:132 blocked for more than 5 seconds."));
        assert_eq!((p.pid, p.comm.as_deref()), (Some(29), Some("khungtaskd")));

        let l = log(&format!(
            "{BOOT}
[   16.384300] watchdog: BUG: soft lockup - CPU#0 stuck for 5s! [insmod:120]
[   16.433199] CPU: 0 PID: 120 Comm: insmod Kdump: loaded Tainted: G        W  OE      6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[   17.449133] Kernel panic - not syncing: softlockup: hung tasks
[   17.475855] CPU: 0 PID: 120 Comm: insmod Kdump: loaded Tainted: G        W  OEL     6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
"
        ));
        let p = from_log(&l).unwrap();
        assert_eq!(p.cause.as_deref(), Some("watchdog: BUG: soft lockup - CPU#0 stuck for 5s! [insmod:120]"));

        let l = log(&format!(
            "{BOOT}
[   27.067192] tail invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0, oom_score_adj=0
[   27.079956] CPU: 0 PID: 121 Comm: tail Kdump: loaded Tainted: G        W          6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
[   28.043633] Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled
"
        ));
        let p = from_log(&l).unwrap();
        assert!(p.cause.as_deref().unwrap().starts_with("tail invoked oom-killer: "));
        assert_eq!((p.pid, p.comm.as_deref()), (Some(121), Some("tail")));

        // The NMI's cause is the unknown NMI, not the boot-time WARNING before it.
        let l = log(&format!(
            "{BOOT}
[    7.894419] Uhhuh. NMI received for unknown reason 10 on CPU 1.
[    7.896666] Kernel panic - not syncing: NMI: Not continuing
[    7.896988] CPU: 1 PID: 0 Comm: swapper/1 Kdump: loaded Tainted: G        W          6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3
"
        ));
        let p = from_log(&l).unwrap();
        assert_eq!(p.cause.as_deref(), Some("Uhhuh. NMI received for unknown reason 10 on CPU 1."));
        assert_eq!((p.cpu, p.pid, p.comm.as_deref()), (Some(1), Some(0), Some("swapper/1")));
    }

    #[test]
    fn caller_id_fallback_and_nothing() {
        let mut l = log(&format!("{BOOT}\n[    3.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\n"));
        l.last_mut().unwrap().caller_id = 0x8000_0002;
        let p = from_log(&l).unwrap();
        assert_eq!(p.message.as_deref(), Some("VFS: Unable to mount root fs"));
        assert_eq!(p.cause, None);
        assert_eq!((p.cpu, p.pid), (Some(2), None));
        l.last_mut().unwrap().caller_id = 1;
        assert_eq!(from_log(&l).unwrap().pid, Some(1));
        assert_eq!(from_log(&log(BOOT)), None);
        assert_eq!(from_log(&[]), None);
    }
}
