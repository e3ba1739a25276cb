//! The crashed kernel's identity: `uname` from `init_uts_ns` (include/linux/utsname.h,
//! include/uapi/linux/utsname.h `struct new_utsname`), the taint flags from `tainted_mask` as
//! kernel/panic.c `print_tainted()` (6.1) prints them, and the uptime from the log.

use kdump::{PhysMem, VmcoreInfo};

use crate::kallsyms::Kallsyms;
use crate::printk::Record;
use crate::{chain, Identity, KernelMem, Unread};

/// `__NEW_UTS_LEN + 1`: each field of `struct new_utsname`.
const UTS_FIELD: usize = 65;
/// sysname, nodename, release, version, machine, domainname.
const UTS_FIELDS: usize = 6;

/// kernel/panic.c `taint_flags[]` (6.1): (set, unset) characters, bit 0 first.
pub const TAINT_FLAGS: [(char, char); 19] = [
    ('P', 'G'), // TAINT_PROPRIETARY_MODULE
    ('F', ' '), // TAINT_FORCED_MODULE
    ('S', ' '), // TAINT_CPU_OUT_OF_SPEC
    ('R', ' '), // TAINT_FORCED_RMMOD
    ('M', ' '), // TAINT_MACHINE_CHECK
    ('B', ' '), // TAINT_BAD_PAGE
    ('U', ' '), // TAINT_USER
    ('D', ' '), // TAINT_DIE
    ('A', ' '), // TAINT_OVERRIDDEN_ACPI_TABLE
    ('W', ' '), // TAINT_WARN
    ('C', ' '), // TAINT_CRAP
    ('I', ' '), // TAINT_FIRMWARE_WORKAROUND
    ('O', ' '), // TAINT_OOT_MODULE
    ('E', ' '), // TAINT_UNSIGNED_MODULE
    ('L', ' '), // TAINT_SOFTLOCKUP
    ('K', ' '), // TAINT_LIVEPATCH
    ('X', ' '), // TAINT_AUX
    ('T', ' '), // TAINT_RANDSTRUCT
    ('N', ' '), // TAINT_TEST
];

/// kernel/panic.c `print_tainted()` (6.1): `Tainted: ` and one character per flag (a space
/// where unset, `G` where no proprietary module), or `Not tainted`.
pub fn print_tainted(mask: u64) -> String {
    if mask == 0 {
        return "Not tainted".to_string();
    }
    let mut s = String::from("Tainted: ");
    for (i, (set, unset)) in TAINT_FLAGS.iter().enumerate() {
        s.push(if mask & (1 << i) != 0 { *set } else { *unset });
    }
    s
}

/// The taint flags as [`Identity::taint`] holds them: [`print_tainted`]'s flags without the
/// `Tainted: ` prefix and trailing spaces (`G        W  OE`), or `Not tainted`.
pub fn taint_string(mask: u64) -> String {
    let s = print_tainted(mask);
    match s.strip_prefix("Tainted: ") {
        Some(flags) => flags.trim_end().to_string(),
        None => s,
    }
}

/// The mask back from [`print_tainted`]'s flags as the log shows them (`G        W  OE`, padded
/// or trimmed); `None` where a character is not the flag's own.
pub fn parse_taint(flags: &str) -> Option<u64> {
    let mut mask = 0u64;
    for (i, c) in flags.chars().enumerate() {
        let (set, unset) = *TAINT_FLAGS.get(i)?;
        if c == set {
            mask |= 1 << i;
        } else if c != unset {
            return None;
        }
    }
    Some(mask)
}

/// The taint flags of the last `... Tainted: FLAGS RELEASE ...` (or `Not tainted`) line of the
/// log (lib/dump_stack.c `dump_stack_print_info`, `__warn`): (flags as [`taint_string`], mask).
pub fn taint_from_log(log: &[Record], release: Option<&str>) -> Option<(String, u64)> {
    for r in log.iter().rev() {
        let text = r.text_lossy();
        if !text.starts_with("CPU: ") {
            continue;
        }
        if text.contains(" Not tainted ") {
            return Some(("Not tainted".to_string(), 0));
        }
        let Some((_, rest)) = text.split_once(" Tainted: ") else { continue };
        // The flags are TAINT_FLAGS.len() characters, then a space and the release.
        let flags: String = rest.chars().take(TAINT_FLAGS.len()).collect();
        if let Some(rel) = release {
            let after: String = rest.chars().skip(TAINT_FLAGS.len()).collect();
            if !after.trim_start().starts_with(rel) {
                continue;
            }
        }
        if let Some(mask) = parse_taint(&flags) {
            return Some((taint_string(mask), mask));
        }
    }
    None
}

/// `uname` (release, version, nodename, machine) from `init_uts_ns.name`, the taint from
/// `tainted_mask` (its address from kallsyms: VMCOREINFO lacks it; without kallsyms, from the
/// log's last `Tainted:` line), and the uptime from the last log record's time.
pub fn read<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    info: &VmcoreInfo,
    syms: Option<&Kallsyms>,
    log: &[Record],
) -> (Identity, Vec<Unread>) {
    let taint_addr = match syms.map(|s| s.lookup("tainted_mask")) {
        Some(Some(addr)) => Ok(addr),
        Some(None) => Err("no symbol tainted_mask in kallsyms".to_string()),
        None => Err("tainted_mask's address needs kallsyms (not in VMCOREINFO)".to_string()),
    };
    read_with(kmem, info, taint_addr, log)
}

/// [`read`] with `tainted_mask`'s address (or why there is none) given.
pub fn read_with<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    info: &VmcoreInfo,
    taint_addr: Result<u64, String>,
    log: &[Record],
) -> (Identity, Vec<Unread>) {
    let mut id = Identity::default();
    let mut why = Vec::new();
    let mut unread = |what: &str, reason: String| {
        why.push(Unread { what: what.to_string(), why: reason });
    };

    match (info.symbol("init_uts_ns"), info.offset("uts_namespace.name")) {
        (Some(ns), Some(off)) => match kmem.bytes(ns.wrapping_add(off), UTS_FIELD * UTS_FIELDS) {
            Ok(b) => {
                let field = |i: usize| {
                    let f = b.get(i * UTS_FIELD..(i + 1) * UTS_FIELD).unwrap_or_default();
                    let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
                    Some(String::from_utf8_lossy(&f[..end]).into_owned()).filter(|s| !s.is_empty())
                };
                id.hostname = field(1);
                id.release = field(2);
                id.version = field(3);
                id.machine = field(4);
            }
            Err(e) => unread("utsname", format!("init_uts_ns: {}", chain(&e))),
        },
        (None, _) => unread("utsname", "VMCOREINFO lacks SYMBOL(init_uts_ns)".to_string()),
        (_, None) => unread("utsname", "VMCOREINFO lacks OFFSET(uts_namespace.name)".to_string()),
    }
    if id.release.is_none() {
        id.release = info.osrelease().map(str::to_string);
    }

    let mask = taint_addr.and_then(|addr| kmem.u64(addr).map_err(|e| format!("tainted_mask: {}", chain(&e))));
    match mask {
        Ok(m) => {
            id.taint = Some(taint_string(m));
            id.tainted_mask = Some(m);
        }
        Err(e) => match taint_from_log(log, id.release.as_deref()) {
            Some((flags, m)) => {
                id.taint = Some(flags);
                id.tainted_mask = Some(m);
                unread("tainted_mask", format!("{e}; the taint is the log's last `Tainted:` line's"));
            }
            None => unread("tainted_mask", e),
        },
    }

    id.uptime_s = log.last().map(Record::time_s);
    (id, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdump::SliceMem;

    fn rec(ts_nsec: u64, text: &str) -> Record {
        Record { ts_nsec, text: text.as_bytes().to_vec(), ..Default::default() }
    }

    #[test]
    fn taint_as_the_kernel_prints_it() {
        assert_eq!(print_tainted(0), "Not tainted");
        // W, O, E: as in "CPU: 1 PID: 121 Comm: insmod Kdump: loaded Tainted: G        W  OE      6.1.0-57".
        let m = (1 << 9) | (1 << 12) | (1 << 13);
        assert_eq!(print_tainted(m), "Tainted: G        W  OE     ");
        assert_eq!(taint_string(m), "G        W  OE");
        assert_eq!(taint_string((1 << 7) | (1 << 9)), "G      D W");
        assert_eq!(taint_string(1), "P");
        assert_eq!(taint_string(1 << 18), "G                 N");
        assert_eq!(parse_taint("G        W  OE     "), Some(m));
        assert_eq!(parse_taint("G        W  OEL"), Some(m | 1 << 14));
        assert_eq!(parse_taint("G  Z"), None);
    }

    #[test]
    fn taint_from_the_log() {
        let log = [
            rec(1, "CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3"),
            rec(2, "CPU: 0 PID: 120 Comm: insmod Kdump: loaded Tainted: G        W  OEL     6.1.0-57-cloud-amd64 #1  Debian 6.1.192-3"),
            rec(3, "Kernel Offset: 0x2f400000"),
        ];
        let m = (1 << 9) | (1 << 12) | (1 << 13) | (1 << 14);
        assert_eq!(taint_from_log(&log, Some("6.1.0-57-cloud-amd64")), Some(("G        W  OEL".to_string(), m)));
        assert_eq!(taint_from_log(&log[..1], None), Some(("Not tainted".to_string(), 0)));
        assert_eq!(taint_from_log(&log[2..], None), None);
    }

    #[test]
    fn reads_utsname() {
        const BASE: u64 = 0xffff_ffff_8000_0000;
        let mut mem = vec![0u8; 0x1000];
        let uts = 0x100;
        for (i, s) in
            ["Linux", "guest", "6.1.0-57-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3", "x86_64", "(none)"]
                .iter()
                .enumerate()
        {
            let at = uts + 8 + i * UTS_FIELD;
            mem[at..at + s.len()].copy_from_slice(s.as_bytes());
        }
        let info =
            VmcoreInfo::parse(&format!("SYMBOL(init_uts_ns)={:x}\nOFFSET(uts_namespace.name)=8\n", BASE + uts as u64));
        let sm = SliceMem::new(vec![(0, &mem)]);
        let kmem = KernelMem::linear(&sm, BASE);
        let log = [rec(5_757_229_000, "sysrq: Trigger a crash")];
        let (id, why) = read(&kmem, &info, None, &log);
        assert_eq!(id.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(id.version.as_deref(), Some("#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3"));
        assert_eq!(id.hostname.as_deref(), Some("guest"));
        assert_eq!(id.machine.as_deref(), Some("x86_64"));
        assert_eq!(id.uptime_s, Some(5.757229));
        assert_eq!(id.taint, None);
        assert_eq!(why.len(), 1);
        assert_eq!(why[0].what, "tainted_mask");

        // tainted_mask at a (kallsyms) address: D and W.
        mem[0x800..0x808].copy_from_slice(&((1u64 << 7) | (1 << 9)).to_le_bytes());
        let sm = SliceMem::new(vec![(0, &mem)]);
        let kmem = KernelMem::linear(&sm, BASE);
        let (id, why) = read_with(&kmem, &info, Ok(BASE + 0x800), &log);
        assert_eq!(id.taint.as_deref(), Some("G      D W"));
        assert_eq!(id.tainted_mask, Some(0x280));
        assert!(why.is_empty());
        // An address that does not read: an Unread, the taint from the log where it has one.
        let log2 = [rec(1, "CPU: 0 PID: 93 Comm: sh Tainted: G        W          6.1.0-57-cloud-amd64 #1")];
        let (id, why) = read_with(&kmem, &info, Ok(BASE + 0x10_0000), &log2);
        assert_eq!(id.taint.as_deref(), Some("G        W"));
        assert_eq!(why.len(), 1);
    }
}
