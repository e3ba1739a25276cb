//! Call-trace frames: parsing one frame line, the skip list, syscall prefixes, and the frame
//! extractors for stalls and hung tasks (after syzkaller's `pkg/report/linux.go`).

/// A function name longer than this is cut (kernel symbols are under 128 bytes).
pub(crate) const MAX_FUNC_LEN: usize = 128;

/// A skip pattern: `^x` is a prefix, `x$` a suffix, `^x$` an exact name, anything else a
/// substring. syzkaller's regular expressions are spelled out as alternatives here.
const SKIP: &[&str] = &[
    "__sanitizer",
    "__asan",
    "kasan",
    "hwasan",
    "__msan",
    "kmsan",
    "kcsan_setup_watchpoint",
    "check_memory_region",
    "check_heap_object",
    "check_object",
    "read_word_at_a_time",
    "print_address_description",
    "panic",
    "invalid_op",
    "report_bug",
    "fixup_bug",
    "print_report",
    "print_usage_bug",
    "do_error",
    "_trap$",
    "do_trap",
    "show_stack",
    "dump_stack",
    "walk_stack",
    "dump_backtrace",
    "warn_slowpath",
    "warn_alloc",
    "warn_bogus",
    "__warn",
    "alloc_page",
    "kmalloc",
    "kzalloc",
    "kcalloc",
    "vmalloc",
    "vzalloc",
    "kvmalloc",
    "kvzalloc",
    "krealloc",
    "kmem_cache",
    "allocate_slab",
    "folio_alloc",
    "folio_unlock",
    "filemap_alloc_folio",
    "__filemap_get_folio",
    "find_or_create_page",
    "do_read_cache_folio",
    "read_cache_page",
    "pagecache_get_page",
    "grab_cache_page_write_begin",
    "slab_",
    "debug_object",
    "timer_is_static_object",
    "work_is_static_object",
    "__might_fault",
    "print_unlock",
    "imbalance_bug",
    "lockdep",
    "bh_enable",
    "bh_disable",
    "perf_trace",
    "lock_acquire",
    "lock_release",
    "lock_class",
    "mark_lock",
    "reacquire_held_locks",
    "mark_held_locks",
    "raw_spin_rq",
    "spin_lock",
    "spin_trylock",
    "spin_unlock",
    "read_lock",
    "read_trylock",
    "write_lock",
    "write_trylock",
    "read_unlock",
    "write_unlock",
    "^down$",
    "down_read",
    "down_write",
    "down_trylock",
    "up_read",
    "up_write",
    "^mutex_",
    "^__mutex_",
    "^rt_mutex_",
    "owner_on_cpu",
    "osq_lock",
    "osq_unlock",
    "atomic_dec",
    "atomic_inc",
    "atomic_read",
    "atomic_set",
    "atomic_add",
    "atomic_sub",
    "atomic_fetch",
    "atomic_xchg",
    "atomic_cmpxchg",
    "atomic_try",
    "atomic64_",
    "set_bit",
    "clear_bit",
    "change_bit",
    "test_bit",
    "__wake_up",
    "^refcount_",
    "^kref_",
    "ref_tracker",
    "memcpy",
    "memcmp",
    "memset",
    "memchr",
    "memmove",
    "memdup",
    "strcmp",
    "strncmp",
    "strcpy",
    "strlcpy",
    "strncpy",
    "strscpy",
    "strlen",
    "strstr",
    "strnstr",
    "strnlen",
    "strchr",
    "strdup",
    "strndup",
    "copy_to_user",
    "copy_from_user",
    "copy_to_iter",
    "copy_from_iter",
    "copy_page_to_iter",
    "copy_page_from_iter",
    "put_user",
    "get_user",
    "might_fault",
    "might_sleep",
    "list_add",
    "list_del",
    "list_replace",
    "list_move",
    "list_splice",
    "^rb_",
    "^__rb_",
    "_indirect_thunk_",
    "string",
    "pointer",
    "snprintf",
    "scnprintf",
    "kasprintf",
    "kvasprintf",
    "printk",
    "va_format",
    "dev_info",
    "dev_notice",
    "dev_warn",
    "dev_err",
    "dev_alert",
    "dev_crit",
    "dev_emerg",
    "del_timer",
    "flush_work",
    "__cancel_work_timer",
    "cancel_work_sync",
    "try_to_grab_pending",
    "flush_workqueue",
    "drain_workqueue",
    "destroy_workqueue",
    "queue_work",
    "finish_wait",
    "kthread_stop",
    "kobject_",
    "device_add",
    "device_del",
    "device_unregister",
    "device_destroy",
    "device_release",
    "sysfs_remove",
    "usb_kill_urb",
    "usb_submit_urb",
    "^complete$",
    "wait_for_completion",
    "^kfree$",
    "^kvfree$",
    "kfree_skb",
    "readb$",
    "readw$",
    "readl$",
    "readq$",
    "writeb$",
    "writew$",
    "writel$",
    "writeq$",
    "^crc",
    "__might_resched",
    "^iput$",
    "^iput_final$",
    "hex_dump_to_buffer",
    "print_hex_dump",
    "^klist_",
    "trace_hardirq",
    "trace_softirq",
    "lockdep_hardirq",
    "lockdep_softirq",
    "^lock_page",
    "^unlock_page",
    "stack_trace_consume_entry",
    "arch_stack_walk",
    "stack_trace_save",
    "insert_work",
    "__queue_delayed_work",
    "queue_delayed_work_on",
    "print_tainted",
    "__phys_addr",
    "__fortify_report",
    "^get_taint$",
    "^put_device$",
    "lock_timer_base",
    "__timer_delete_sync",
    "__mod_timer",
    "fast_dput",
    "dput",
    "read_once_word_nocheck",
    "read_once_nocheck",
    "write_once_nocheck",
    "copy_folio_to_iter",
    "^copyin$",
    "^copyout$",
    "seqprop_assert",
    "program_check_exception",
    "program_check_common",
    "add_uevent_var",
    "get_device_parent",
    "devres_release_all",
    "hwrng_unregister",
    "i2c_del_adapter",
    "__unregister_client",
    "device_for_each_child",
    "rollback_registered",
    "unregister_netdev",
    "device_remove_file",
    "tty_unregister_device",
    "dummy_urb_enqueue",
    "usb_kill_anchored_urbs",
    "usb_control_msg",
    "usb_hcd_submit_urb",
    "logic_in",
    "logic_out",
    "crc_itu_t",
    "assertfail",
    "^ihold$",
    "ida_free",
    "do_kernel_fault",
    "do_translation_fault",
    "do_mem_abort",
    "el1_abort",
    "el1h_64_sync",
    "xas_start",
    "xas_load",
    "xas_find",
    "find_lock_entries",
    "truncate_inode_pages_range",
    "cleanup_srcu_struct",
    "rhashtable_lookup",
    "extract_user_to_sg",
    "extract_iter_to_sg",
    "drop_nlink",
    "sk_stop_timer_sync",
    "mark_buffer_dirty",
    "__alloc_frozen_pages_noprof",
    // Ours: the x86 exception entry that newer kernels print as plain (not `? `) frames.
    "^asm_exc_",
    "^exc_invalid_op$",
    "^handle_bug$",
];

/// Syscall-entry prefixes dropped from a frame, so that `__x64_sys_write`, `SyS_write` and
/// `__do_sys_write` all read `write` (stable across kernel builds and architectures).
const STRIP_PREFIXES: &[&str] = &[
    "compat_SYSC_",
    "compat_SyS_",
    "__se_sys_",
    "__do_sys_",
    "____sys_",
    "___sys_",
    "__sys_",
    "__se_",
    "__x64_",
    "__ia32_",
    "__arm64_",
    "SYSC_",
    "SyS_",
    "sys_",
    "ksys_",
];

/// Frames the stall extractor stops at: generic dispatchers (syscall entry, work items, timers,
/// softirqs) and a few discriminating callers; the frame before the first of them names the
/// stall.
const STALL_ANCHORS: &[&str] = &[
    "process_one_work",
    "do_syscall_",
    "do_fast_syscall_",
    "sysenter_dispatch",
    "tracesys_phase2",
    "el0_svc_handler",
    "invoke_syscall",
    "ret_fast_syscall",
    "netif_receive_skb",
    "do_softirq",
    "call_timer_fn",
    "_run_timers",
    "run_timer_softirq",
    "hrtimer_run",
    "run_ksoftirqd",
    "smpboot_thread_fn",
    "^kthread$",
    "start_secondary",
    "cpu_startup_entry",
    "ret_from_fork",
    "vfs_write",
    "vfs_read",
    "vfs_iter_read",
    "vfs_iter_write",
    "do_iter_read",
    "do_iter_write",
    "call_read_iter",
    "call_write_iter",
    "new_sync_read",
    "new_sync_write",
    "vfs_ioctl",
    "ksys_ioctl",
    "compat_ioctl",
    "compat_sys_ioctl",
    "blkdev_driver_ioctl",
    "blkdev_ioctl",
    "do_iter_readv_writev",
    "^call_mmap",
    "mmap_region",
    "do_mmap",
    "do_dentry_open",
    "vfs_open",
    "^sock_sendmsg",
    "^sock_recvmsg",
    "^sock_release",
    "^__sock_release",
    "^setsockopt$",
    "kernel_setsockopt",
    "sock_common_setsockopt",
    "^listen$",
    "kernel_listen",
    "sk_common_release",
    "^sock_mmap",
    "^accept$",
    "kernel_accept",
    "^sock_do_ioctl",
    "^sock_ioctl",
    "^compat_sock_ioctl",
    "^nfnetlink_rcv_msg",
    "^rtnetlink_rcv_msg",
    "^netlink_dump",
    "^socketpair",
    "^connect",
    "^ioctl",
    "^sys_socketpair",
    "^sys_connect",
    "^sys_ioctl",
    "__do_fault",
    "do_page_fault",
    "^page_fault$",
    "__fput",
    "task_work_run",
    "exit_to_usermode",
    "smp_call_function",
    "tasklet_action",
    "tasklet_hi_action",
];

fn matches(name: &str, pattern: &str) -> bool {
    let (anchored_start, rest) = match pattern.strip_prefix('^') {
        Some(r) => (true, r),
        None => (false, pattern),
    };
    let (anchored_end, body) = match rest.strip_suffix('$') {
        Some(b) => (true, b),
        None => (false, rest),
    };
    match (anchored_start, anchored_end) {
        (true, true) => name == body,
        (true, false) => name.starts_with(body),
        (false, true) => name.ends_with(body),
        (false, false) => name.contains(body),
    }
}

pub(crate) fn matches_any(name: &str, patterns: &[&str]) -> bool {
    patterns.iter().any(|p| matches(name, p))
}

/// Whether a raw frame (as printed, suffixes cut) is in the common skip list or `extra`.
pub(crate) fn skipped(name: &str, extra: &[&str]) -> bool {
    matches_any(name, SKIP) || matches_any(name, extra)
}

/// The frame as signatures name it: syscall prefixes removed.
pub(crate) fn canonical(name: &str) -> String {
    let mut name = name;
    // `__x64_sys_write` takes two rounds.
    for _ in 0..3 {
        let Some(rest) = STRIP_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).filter(|r| !r.is_empty()) else {
            break;
        };
        name = rest;
    }
    name.to_string()
}

/// The frame as titles name it (syzkaller keeps the raw name): `SyS_rmdir` and
/// `__x64_sys_rmdir` read `sys_rmdir`, anything else is unchanged.
pub(crate) fn title_name(raw: &str) -> String {
    let c = canonical(raw);
    if c != raw && raw.to_ascii_lowercase().contains("sys_") {
        format!("sys_{c}")
    } else {
        raw.to_string()
    }
}

/// The stall extractor: the frame before the first anchor (or `smp_call_function` itself).
pub(crate) fn stall_frame(frames: &[String]) -> Option<usize> {
    let mut prev = 0;
    for (i, f) in frames.iter().enumerate() {
        if matches_any(f, STALL_ANCHORS) {
            return Some(if f.contains("smp_call_function") { i } else { prev });
        }
        prev = i;
    }
    None
}

/// The hung-task extractor: the first `rtnl_lock`/`synchronize_*` frame, else the first frame
/// that is not scheduling, locking or waiting.
pub(crate) fn hung_task_frame(frames: &[String]) -> Option<(usize, Option<&'static str>)> {
    for (i, f) in frames.iter().enumerate() {
        if f.contains("rtnl_lock") {
            return Some((i, None));
        }
        for anchor in ["synchronize_rcu", "synchronize_srcu", "synchronize_net", "synchronize_sched"] {
            if f.contains(anchor) {
                return Some((i, Some("synchronize_rcu")));
            }
        }
    }
    const SKIP_HUNG: &[&str] = &[
        "sched",
        "_lock",
        "_slowlock",
        "down",
        "rwsem",
        "completion",
        "kthread",
        "wait",
        "synchronize",
        "context_switch",
        "__switch_to",
        "cancel_delayed_work",
        "rcu_barrier",
    ];
    frames.iter().position(|f| !matches_any(f, SKIP_HUNG)).map(|i| (i, None))
}

/// Reads `[<ffffffff81234567>] ` (at most two of them) off the front of a frame line.
fn strip_pcs(mut s: &str) -> &str {
    for _ in 0..2 {
        let t = s.trim_start();
        let Some(rest) = t.strip_prefix("[<") else { break };
        let Some(end) = rest.find(">]") else { break };
        let inner = &rest[..end];
        let inner = inner.trim_start().strip_prefix("0x").unwrap_or(inner.trim_start());
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit()) {
            break;
        }
        s = &rest[end + 2..];
    }
    s.trim_start()
}

/// A function name at the front of `s` followed by `+0x`: `name.isra.0+0x1a/0x30 [mod]`
/// gives `name`. `None` for anything else.
pub(crate) fn func_at(s: &str) -> Option<&str> {
    let end = s.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.')).unwrap_or(s.len());
    if end == 0 || end > MAX_FUNC_LEN || !s[end..].starts_with("+0x") {
        return None;
    }
    let full = &s[..end];
    let name = full.split('.').next().unwrap_or(full);
    if name.is_empty() || name.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(name)
}

/// One call-trace line: `Some((name, questionable))` for a frame.
pub(crate) fn parse_frame_line(line: &str) -> Option<(&str, bool)> {
    let s = strip_pcs(line);
    let (s, questionable) = match s.strip_prefix("? ") {
        Some(r) => (strip_pcs(r), true),
        None => (s, false),
    };
    func_at(s).map(|f| (f, questionable))
}

/// The function of a kernel `RIP:`/`IP:`/`pc :` line: `RIP: 0010:func+0x16/0x20`,
/// `RIP: 0010:[<ffffffff8123>]  [<ffffffff8123>] func+0x..`, `IP: func+0x..`. A user-mode
/// `RIP: 0033:0x47b7a0` gives `None`.
pub(crate) fn rip_frame(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let rest = t
        .strip_prefix("RIP:")
        .or_else(|| t.strip_prefix("IP:"))
        .or_else(|| t.strip_prefix("NIP:"))
        .or_else(|| t.strip_prefix("pc :"))
        .or_else(|| t.strip_prefix("PC is at"))?;
    let mut rest = rest.trim_start();
    // The code segment selector: `0010:`.
    if let Some(colon) = rest.find(':') {
        if colon > 0 && colon <= 4 && rest[..colon].bytes().all(|b| b.is_ascii_digit()) {
            rest = &rest[colon + 1..];
        }
    }
    func_at(strip_pcs(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lines() {
        assert_eq!(parse_frame_line(" dump_stack_lvl+0x44/0x5c"), Some(("dump_stack_lvl", false)));
        assert_eq!(parse_frame_line(" ? _printk+0x68/0x83"), Some(("_printk", true)));
        assert_eq!(parse_frame_line(" __handle_sysrq.cold+0x44/0x11c"), Some(("__handle_sysrq", false)));
        assert_eq!(parse_frame_line(" foo+0x1/0x2 [crashtest]"), Some(("foo", false)));
        assert_eq!(parse_frame_line(" [<ffffffff81234567>] ? bar+0x1/0x2"), Some(("bar", true)));
        assert_eq!(parse_frame_line(" __dump_stack lib/dump_stack.c:88 [inline]"), None);
        assert_eq!(parse_frame_line(" <TASK>"), None);
        assert_eq!(rip_frame("RIP: 0010:sysrq_handle_crash+0x16/0x20"), Some("sysrq_handle_crash"));
        assert_eq!(rip_frame("RIP: 0033:0x47b7a0"), None);
        assert_eq!(rip_frame("IP: 0xffffffffffffffff"), None);
        assert_eq!(canonical("__x64_sys_write"), "write");
        assert_eq!(canonical("__do_sys_write"), "write");
        assert_eq!(canonical("ksys_write"), "write");
        assert!(skipped("dump_stack_lvl", &[]));
        assert!(!skipped("sysrq_handle_crash", &[]));
    }
}
