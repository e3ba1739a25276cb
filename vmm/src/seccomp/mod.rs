//! Per-thread seccomp filters (rust-vmm's `seccompiler`), as Firecracker and Cloud Hypervisor
//! confine their threads.
//!
//! Each kind of crashvmm thread has the smallest system call set it needs:
//!
//! - **vmm**: the main thread once the session is set up. It runs the event loop (control
//!   socket, console input, signals), crash handling and its executor (crash directories, the
//!   host-side vmcore, the guest's kdump), and builds the VM again on a reset (so it keeps the KVM
//!   ioctls that create a VM). No `socket`, `execve`, `fork`, `ptrace`, executable mappings.
//! - **vcpu**: `KVM_RUN` and the few vCPU ioctls crash handling needs at run time, console output
//!   (`write`), virtio-blk requests on the disks' open descriptors (`pread64`, `pwrite64`,
//!   `fdatasync`: the device runs in the thread whose MMIO write notified it), a TAP's
//!   `TUNSETOFFLOAD` (a virtio-net driver activating or resetting its device), a network
//!   device's interrupt (`KVM_IRQ_LINE`, `KVM_SIGNAL_MSI`) and its notification ioeventfds when
//!   the guest moves its PCI BAR (`KVM_IOEVENTFD`), memory and futexes. No `open`, no sockets,
//!   no thread creation.
//! - **vmcore-writer**: the thread that writes every host-side vmcore (a crash's, the
//!   operator's, live or not) while the vmm thread goes on serving the control socket: the
//!   file (create, write, sync, remove a failed one), its compression and hashing threads, a
//!   live dump's snapshot (a userfaultfd: the system call or `/dev/userfaultfd`, and its
//!   `UFFDIO_*` requests; or the fork and the wait for it). No KVM ioctls (the vCPU threads
//!   saved the registers), no sockets, no event loop. A live dump's `live-dump-writer` thread
//!   (userfaultfd snapshot) runs under this filter too.
//! - **vmcore-hasher**: the thread that hashes a host-side vmcore (`--vmcore-sha256 on`):
//!   reads guest memory and `/proc/self/pagemap` through an open descriptor.
//! - **snapshot-copier**: the thread that serves a live dump's write faults: `poll` and `read`
//!   on the userfaultfd, copies of guest pages (memory), and `UFFDIO_WRITEPROTECT` as its one
//!   `ioctl`. No files, no sockets, no threads.
//! - **live-dump-writer**: the child process a live dump forks (`--live-dump-snapshot fork`) (its view of guest memory is the
//!   copy-on-write snapshot): it creates and writes the vmcore file, with threads for
//!   compression, and reports through a pipe. No `ioctl` (no KVM), no sockets. The vmcore
//!   writer forks it (`clone` with exactly glibc's fork flags, `wait4`, `pipe2`, `kill`), so the
//!   vmm thread's filter, which the writer's stacks on, allows that too.
//!
//! - **net**: a network device's frames (`--net`): `poll` on its TAP and eventfds, `read`,
//!   `write` and `writev` on them, and its interrupt (`KVM_IRQ_LINE` or `KVM_SIGNAL_MSI`, its
//!   only `ioctl`s; it spawns from the vmm thread, whose filter its own stacks on, so the vmm
//!   thread's allows them too, as does the vCPU threads'). No `open`, no sockets, no threads.
//!
//! Console output is written by the vCPU thread that emulates the UART; console input is the vmm
//! thread's. Every `ioctl` is checked against the list of request numbers of its kind.
//!
//! A forbidden call (`--seccomp on`, the default) traps: [`on_sigsys`] writes one line naming the
//! thread and the system call to stderr and a `seccomp_violation` record to the event log, then
//! ends crashvmm with exit code [`EXIT_SECCOMP`] (128 + SIGSYS). `--seccomp log` lets the call
//! through and has the kernel log it (`dmesg`, audit type 1326); `off` installs nothing.

mod names;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use thiserror::Error;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

pub use names::SYSCALL_NAMES;

/// crashvmm's exit code after a seccomp violation: 128 + SIGSYS.
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// `--seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompMode {
    /// A forbidden system call ends crashvmm with a report.
    #[default]
    On,
    /// A forbidden system call is let through and logged by the kernel.
    Log,
    /// No filters.
    Off,
}

/// The kinds of crashvmm thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ThreadKind {
    Vmm,
    Vcpu,
    VmcoreWriter,
    VmcoreHasher,
    LiveDumpWriter,
    SnapshotCopier,
    Upload,
    Metrics,
    Net,
}

impl ThreadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::VmcoreWriter => "vmcore-writer",
            ThreadKind::VmcoreHasher => "vmcore-hasher",
            ThreadKind::LiveDumpWriter => "live-dump-writer",
            ThreadKind::SnapshotCopier => "snapshot-copier",
            ThreadKind::Upload => "upload",
            ThreadKind::Metrics => "metrics",
            ThreadKind::Net => "net",
        }
    }
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot build the {kind} seccomp filter")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind} seccomp filter")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

// ---------------------------------------------------------------------------------------------
// ioctl request numbers (include/uapi/linux/kvm.h), as kvm-ioctls issues them.

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_bindings::kvm_cpuid2);
ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_bindings::kvm_userspace_memory_region);
ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_bindings::kvm_irq_level);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_bindings::kvm_pit_config);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_iow_nr!(KVM_ENABLE_CAP, KVMIO, 0xa3, kvm_bindings::kvm_enable_cap);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_bindings::kvm_msi);
ioctl_iow_nr!(KVM_X86_SET_MSR_FILTER, KVMIO, 0xc6, kvm_bindings::kvm_msr_filter);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_bindings::kvm_msrs);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_bindings::kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_bindings::kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_bindings::kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
ioctl_io_nr!(KVM_NMI, KVMIO, 0x9a);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
// include/uapi/linux/if_tun.h: the one TAP request made after the filters are on (`net.rs`).
ioctl_iow_nr!(TUNSETOFFLOAD, b'T' as u32, 208, libc::c_uint);

/// What a vCPU thread does to KVM while the guest runs: run it, read its registers for
/// snapshots and hypercalls (and write them back after one), watchdog samples, NMIs, SynIC
/// interrupts, a network device's interrupt (`KVM_IRQ_LINE`, `KVM_SIGNAL_MSI`: whichever thread
/// holds the device raises it) and its notification ioeventfds, moved with its PCI BAR
/// (`KVM_IOEVENTFD`); and to a TAP: the offloads a virtio-net driver accepts when it activates
/// or resets its device (`TUNSETOFFLOAD`, `net.rs`).
fn vcpu_ioctls() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_MP_STATE(),
        KVM_NMI(),
        KVM_SIGNAL_MSI(),
        KVM_IRQ_LINE(),
        KVM_IOEVENTFD(),
        TUNSETOFFLOAD(),
    ]
}

/// The vmm thread builds VMs (again after a reset), configures vCPUs before their threads run,
/// and keeps the terminal (raw mode, window size for progress bars, non-blocking sockets).
fn vmm_ioctls() -> Vec<u64> {
    let mut v = vcpu_ioctls();
    v.extend([
        KVM_GET_API_VERSION(),
        KVM_CREATE_VM(),
        KVM_CHECK_EXTENSION(),
        KVM_GET_VCPU_MMAP_SIZE(),
        KVM_GET_SUPPORTED_CPUID(),
        KVM_CREATE_VCPU(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SET_TSS_ADDR(),
        KVM_CREATE_IRQCHIP(),
        KVM_IRQFD(),
        KVM_IOEVENTFD(),
        KVM_CREATE_PIT2(),
        KVM_ENABLE_CAP(),
        KVM_X86_SET_MSR_FILTER(),
        KVM_SET_SREGS(),
        KVM_SET_MSRS(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_SET_CPUID2(),
        KVM_GET_TSC_KHZ(),
    ]);
    v.extend([
        libc::TCGETS,
        libc::TCSETS,
        libc::TCSETSW,
        libc::TCSETSF,
        libc::TIOCGWINSZ,
        libc::FIONBIO,
        libc::FIOCLEX,
    ]);
    // The vmcore writer's, for a live dump's snapshot (its filter stacks on this one).
    v.extend(crate::uffd::ioctls());
    v
}

// ---------------------------------------------------------------------------------------------
// System call sets

/// What every thread needs: memory, futexes, signals (the vCPU kick, signal-hook's pipe writes
/// from whichever thread takes SIGINT/SIGTERM), time, logging to stderr, its own end, and what
/// glibc and std do on a thread's first allocation.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sendto,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The vmm thread's own: files and directories (crash directories, vmcores, the crash disk,
/// the kernel and initrd read again on a reset), the event loop, the control socket's
/// connections, threads (vCPUs, the vmcore hasher).
const VMM: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    // The crash disk, created at each boot, is marked as crashvmm's (files::create_output).
    libc::SYS_fsetxattr,
    libc::SYS_fallocate,
    libc::SYS_copy_file_range,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_getcwd,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_eventfd2,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_clone3,
    // A new thread confines itself further under this filter (a filter only ever adds limits).
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_sysinfo,
    libc::SYS_rt_sigaction,
    // The vmcore writer's, for a live dump's snapshot.
    libc::SYS_userfaultfd,
];

/// A vCPU thread serves virtio-blk requests (the crash kernel writing its dump to the crash
/// disk) on descriptors the vmm thread opened.
const VCPU: &[i64] = &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync];

/// The vmcore writer: what a vmcore's writing needs ([`VMCORE_FILE`]), the removal of a
/// failed one, the free space check, and for a live dump its userfaultfd (and `poll`, for the
/// copier thread's filter stacks on this one) or the fork and the wait (see `rules`) and
/// `/proc/self/smaps_rollup`.
const VMCORE_WRITER: &[i64] = &[
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_readv,
    libc::SYS_fallocate,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fcntl,
    libc::SYS_sysinfo,
    libc::SYS_userfaultfd,
    libc::SYS_poll,
];

/// The vmcore writer's `ioctl`s: a progress bar's terminal checks, a live dump's
/// userfaultfd (`crash/snapshot.rs`).
fn vmcore_writer_ioctls() -> Vec<u64> {
    let mut v = vec![libc::TCGETS, libc::TIOCGWINSZ];
    v.extend(crate::uffd::ioctls());
    v
}

/// A live dump's copier thread: waits for write faults on the userfaultfd (`read`, `poll`),
/// copies pages (memory) and lifts their protection (its one `ioctl`). No files.
const SNAPSHOT_COPIER: &[i64] = &[libc::SYS_poll];

/// The vmcore hasher reads guest memory (mapped) and the pagemap (an open descriptor).
const VMCORE_HASHER: &[i64] = &[libc::SYS_pread64];

/// Writing a vmcore file, with compression threads and the vmcore hasher thread (an ELF with
/// `--vmcore-sha256`), which confine themselves further: the live dump's writer process has
/// this alone.
const VMCORE_FILE: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_writev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fchmod,
    libc::SYS_clone3,
    libc::SYS_prctl,
    libc::SYS_seccomp,
];

/// The uploader (`--upload`) and its runtime's threads: TCP (and UNIX, for name service)
/// sockets to the object store, the crash directories and the spool. The only filter with
/// sockets; no `ioctl` beyond non-blocking and close-on-exec, no KVM.
const UPLOAD: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_clone3,
    libc::SYS_openat,
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_getdents64,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_fchmod,
    libc::SYS_chmod,
    libc::SYS_fchmodat,
    libc::SYS_fcntl,
    libc::SYS_prctl,
    libc::SYS_uname,
    libc::SYS_writev,
    libc::SYS_socketpair,
    libc::SYS_readlink,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_prlimit64,
];

/// The metrics writer (`--metrics-file`): a temporary file created, written, synced and
/// renamed over the metrics file (removed instead when that fails). No descriptor of its own
/// beyond it, no threads, no sockets.
const METRICS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_fsync,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
];

/// The net thread's own: waiting on the TAP and its eventfds (it reads them and the eventfds
/// with the common `read` and `write`), and the `writev` that sends a frame to the TAP from
/// guest memory. No files, no sockets, no threads; two ioctls, `KVM_IRQ_LINE` and
/// `KVM_SIGNAL_MSI`.
const NET: &[i64] = &[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_writev];

/// glibc's `fork()`: `clone(CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD, ...)`.
const FORK_FLAGS: u64 = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Argument indexes below 6 and these operators are always valid.
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).expect("a valid seccomp condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a non-empty seccomp rule")
}

/// The rules of `kind`: syscall number -> conditions (none: any arguments).
fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let (own, ioctls): (&[&[i64]], Vec<u64>) = match kind {
        ThreadKind::Vmm => (&[VMM], vmm_ioctls()),
        ThreadKind::Vcpu => (&[VCPU], vcpu_ioctls()),
        ThreadKind::VmcoreWriter => (&[VMCORE_FILE, VMCORE_WRITER], vmcore_writer_ioctls()),
        ThreadKind::VmcoreHasher => (&[VMCORE_HASHER], Vec::new()),
        ThreadKind::LiveDumpWriter => (&[VMCORE_FILE], Vec::new()),
        ThreadKind::SnapshotCopier => (&[SNAPSHOT_COPIER], crate::uffd::copier_ioctls()),
        ThreadKind::Upload => (&[UPLOAD], vec![libc::FIONBIO, libc::FIOCLEX]),
        ThreadKind::Metrics => (&[METRICS], Vec::new()),
        ThreadKind::Net => (&[NET], vec![KVM_IRQ_LINE(), KVM_SIGNAL_MSI()]),
    };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().chain(own.iter().copied().flatten()).map(|&nr| (nr, Vec::new())).collect();
    if !ioctls.is_empty() {
        map.insert(libc::SYS_ioctl, ioctls.into_iter().map(|nr| rule(vec![cond(1, SeccompCmpOp::Eq, nr)])).collect());
    }
    // No executable mappings anywhere.
    let no_exec = || vec![rule(vec![cond(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)])];
    map.insert(libc::SYS_mmap, no_exec());
    map.insert(libc::SYS_mprotect, no_exec());
    let thread = libc::CLONE_THREAD as u64;
    let threads = || rule(vec![cond(0, SeccompCmpOp::MaskedEq(thread), thread)]);
    match kind {
        // Threads (glibc tries clone3 first; clone without CLONE_THREAD is a fork), and the one
        // fork a live dump makes (in the vmcore writer, whose filter stacks on the vmm
        // thread's), with glibc's exact flags, then waits for.
        ThreadKind::Vmm | ThreadKind::VmcoreWriter => {
            map.insert(libc::SYS_clone, vec![threads(), rule(vec![cond(0, SeccompCmpOp::Eq, FORK_FLAGS)])]);
            for nr in [libc::SYS_wait4, libc::SYS_pipe2, libc::SYS_kill] {
                map.insert(nr, Vec::new());
            }
        }
        ThreadKind::LiveDumpWriter | ThreadKind::Upload => {
            map.insert(libc::SYS_clone, vec![threads()]);
        }
        ThreadKind::Vcpu
        | ThreadKind::VmcoreHasher
        | ThreadKind::SnapshotCopier
        | ThreadKind::Metrics
        | ThreadKind::Net => {}
    }
    map
}

/// The BPF program for `kind`; a forbidden call gets `mismatch`.
pub fn program(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build { kind: kind.as_str(), source };
    let filter = SeccompFilter::new(rules(kind), mismatch, SeccompAction::Allow, seccompiler::TargetArch::x86_64)
        .map_err(err)?;
    filter.try_into().map_err(err)
}

// ---------------------------------------------------------------------------------------------
// Installing, and the SIGSYS report

/// `--seccomp` for the process (set once by [`init`]).
static MODE: AtomicU8 = AtomicU8::new(SeccompMode::Off as u8);
/// The event log's descriptor for [`on_sigsys`], or -1.
static EVENTS_FD: AtomicI32 = AtomicI32::new(-1);
/// `--seccomp-selftest`: the thread kind that makes a forbidden call once its filter is in (a
/// test knob), as `ThreadKind as u8 + 1`, 0 for none.
static SELFTEST: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// This thread's name, for [`on_sigsys`] (a signal handler reads no std thread data).
    static LABEL: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn mode() -> SeccompMode {
    match MODE.load(Ordering::Relaxed) {
        m if m == SeccompMode::On as u8 => SeccompMode::On,
        m if m == SeccompMode::Log as u8 => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}

/// Set the mode for every later [`apply`], and with `on` install the SIGSYS reporter; `events`
/// is the event log's descriptor (kept open for the process's life).
pub fn init(mode: SeccompMode, events: Option<RawFd>, selftest: Option<ThreadKind>) -> Result<(), SeccompError> {
    MODE.store(mode as u8, Ordering::Relaxed);
    EVENTS_FD.store(events.unwrap_or(-1), Ordering::Relaxed);
    SELFTEST.store(selftest.map_or(0, |k| k as u8 + 1), Ordering::Relaxed);
    if mode != SeccompMode::On {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Confine the calling thread as `kind` (per the mode [`init`] set; nothing when off).
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let action = match mode() {
        SeccompMode::Off => None,
        SeccompMode::On => Some(SeccompAction::Trap),
        SeccompMode::Log => Some(SeccompAction::Log),
    };
    let mut label = [0u8; 16];
    // std calls the main thread "main"; it is the vmm thread.
    let name = match std::thread::current().name() {
        Some("main") | None => kind.as_str().to_owned(),
        Some(n) => n.to_owned(),
    };
    let n = name.len().min(15);
    label[..n].copy_from_slice(&name.as_bytes()[..n]);
    LABEL.with(|l| l.set(label));
    if let Some(action) = action {
        let bpf = program(kind, action)?;
        seccompiler::apply_filter(&bpf).map_err(|source| SeccompError::Install { kind: kind.as_str(), source })?;
        log::debug!("seccomp: {name} confined as {} ({} BPF instructions)", kind.as_str(), bpf.len());
    }
    if SELFTEST.load(Ordering::Relaxed) == kind as u8 + 1 {
        selftest(&name);
    }
    Ok(())
}

/// The test knob: a system call no crashvmm thread may make (an IPv4 socket).
fn selftest(name: &str) {
    log::warn!("seccomp self-test: {name} opens an IPv4 socket");
    // SAFETY: socket(2) takes no pointers; the descriptor, if any, is closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            log::warn!("seccomp self-test: {name} opened an IPv4 socket (filters off or logging)");
            libc::close(fd);
        }
    }
}

/// Offset of `_sigsys._syscall` in the kernel's siginfo on x86-64: three ints, padding to 8,
/// then `void *_call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;

/// SIGSYS from a filter: say which thread made which call, then end crashvmm.
extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a SIGSYS handler a valid siginfo whose union is `_sigsys`.
    let nr = unsafe { std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32) };
    let label = LABEL.with(|l| l.get());
    let thread = std::str::from_utf8(&label[..label.iter().position(|&b| b == 0).unwrap_or(16)]).unwrap_or("?");
    let name = syscall_name(nr as i64);
    let mut line = Buf::new();
    line.s("crashvmm: seccomp: thread ").s(thread).s(" made a forbidden system call ").num(nr as i64);
    line.s(" (").s(name).s("); stopping (exit code 159)\n");
    line.write_to(2);
    let fd = EVENTS_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // The log's last line: no other thread's record after it.
        crate::sync::EVENT_LOG.close();
        violation_record(&mut Buf::new(), now_realtime(), thread, nr as i64, name).write_to(fd);
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(EXIT_SECCOMP) }
}

/// The name of system call `nr`, or "unknown".
pub fn syscall_name(nr: i64) -> &'static str {
    usize::try_from(nr).ok().and_then(|i| SYSCALL_NAMES.get(i)).filter(|n| !n.is_empty()).copied().unwrap_or("unknown")
}

/// The event-log line of a violation, formatted without allocating (as the events module would
/// write `Event::SeccompViolation`).
fn violation_record<'a>(b: &'a mut Buf, (secs, micros): (i64, i64), thread: &str, nr: i64, name: &str) -> &'a Buf {
    b.s("{\"ts\":\"");
    rfc3339(b, secs, micros);
    b.s("\",\"event\":\"seccomp_violation\",\"thread\":\"").s(thread).s("\",\"syscall\":").num(nr);
    b.s(",\"name\":\"").s(name).s("\"}\n");
    b
}

fn now_realtime() -> (i64, i64) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec, ts.tv_nsec / 1000)
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (the event log's timestamps), from Unix time.
fn rfc3339(b: &mut Buf, secs: i64, micros: i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = devices::rtc::civil_from_days(days);
    b.pad(year, 4).s("-").pad(month, 2).s("-").pad(day, 2).s("T");
    b.pad(rem / 3600, 2).s(":").pad(rem / 60 % 60, 2).s(":").pad(rem % 60, 2).s(".").pad(micros, 6).s("Z");
}

/// A fixed buffer for text built in a signal handler.
struct Buf {
    bytes: [u8; 512],
    len: usize,
}

impl Buf {
    fn new() -> Self {
        Self { bytes: [0; 512], len: 0 }
    }

    fn s(&mut self, text: &str) -> &mut Self {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text.as_bytes()[..n]);
        self.len += n;
        self
    }

    fn num(&mut self, v: i64) -> &mut Self {
        self.pad(v, 1)
    }

    /// `v` in decimal, zero-padded to `width` digits.
    fn pad(&mut self, v: i64, width: usize) -> &mut Self {
        if v < 0 {
            self.s("-");
        }
        let mut digits = [0u8; 20];
        let (mut n, mut i) = (v.unsigned_abs(), digits.len());
        while n > 0 || digits.len() - i < width {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        // Only ASCII digits were written.
        self.s(std::str::from_utf8(&digits[i..]).unwrap_or("?"))
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    fn write_to(&self, fd: RawFd) {
        // SAFETY: write(2) from a buffer of `len` initialized bytes; async-signal-safe.
        unsafe { libc::write(fd, self.bytes.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventLog};

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // _IO(KVMIO, 0x80) and _IOR(KVMIO, 0x81, struct kvm_regs) (144 bytes).
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_GET_TSC_KHZ(), 0xaea3);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_ne!(KVM_ENABLE_CAP(), KVM_GET_TSC_KHZ());
    }

    #[test]
    fn every_filter_compiles() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::VmcoreWriter,
            ThreadKind::VmcoreHasher,
            ThreadKind::LiveDumpWriter,
            ThreadKind::SnapshotCopier,
            ThreadKind::Upload,
            ThreadKind::Metrics,
            ThreadKind::Net,
        ] {
            for action in [SeccompAction::Trap, SeccompAction::Log, SeccompAction::Errno(1)] {
                assert!(!program(kind, action).unwrap().is_empty());
            }
        }
    }

    /// Install `kind`'s filter (forbidden calls fail with EPERM instead of trapping) on a thread
    /// of its own, run `f` there.
    fn confined<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            seccompiler::apply_filter(&program(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap()).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn errno_of(ret: i64) -> i32 {
        if ret < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    fn socket() -> i32 {
        // SAFETY: socket(2) takes no pointers; a descriptor it returns is closed.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let e = errno_of(fd as i64);
        if fd >= 0 {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
        }
        e
    }

    fn open_passwd() -> i32 {
        std::fs::File::open("/etc/passwd").err().and_then(|e| e.raw_os_error()).unwrap_or(0)
    }

    fn exec_mapping() -> i32 {
        // SAFETY: an anonymous mapping, unmapped again when it was made.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return errno_of(-1);
            }
            libc::munmap(p, 4096);
            0
        }
    }

    fn ioctl_kvm_create_vm_on_stdin() -> i32 {
        // SAFETY: an ioctl without a pointer argument, on a descriptor that is not KVM's.
        let r = unsafe { libc::ioctl(0, KVM_CREATE_VM() as _, 0) };
        errno_of(r as i64)
    }

    #[test]
    fn vcpu_threads_cannot_open_files_sockets_exec_mappings_or_create_vms() {
        let (open, sock, exec, create_vm, alloc) = confined(ThreadKind::Vcpu, || {
            let v = vec![1u8; 1 << 20];
            (open_passwd(), socket(), exec_mapping(), ioctl_kvm_create_vm_on_stdin(), v.len())
        });
        assert_eq!(open, libc::EPERM, "openat");
        assert_eq!(sock, libc::EPERM, "socket");
        assert_eq!(exec, libc::EPERM, "mmap PROT_EXEC");
        assert_eq!(create_vm, libc::EPERM, "ioctl KVM_CREATE_VM");
        assert_eq!(alloc, 1 << 20);
    }

    /// The Linux kdump scenarios found this: the crash kernel's writes to the crash disk are
    /// served on the vCPU thread.
    #[test]
    fn vcpu_threads_do_disk_io_on_open_descriptors() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::tempfile().unwrap();
        let (wrote, read, synced) = confined(ThreadKind::Vcpu, move || {
            let mut buf = [0u8; 4];
            let wrote = file.write_at(b"dump", 512).is_ok();
            let read = file.read_at(&mut buf, 512).is_ok() && &buf == b"dump";
            (wrote, read, file.sync_data().is_ok())
        });
        assert!(wrote && read && synced, "pwrite64 {wrote}, pread64 {read}, fdatasync {synced}");
    }

    #[test]
    fn the_vmm_thread_opens_files_but_no_sockets_processes_or_exec_mappings() {
        let (open, sock, exec, fork, thread) = confined(ThreadKind::Vmm, || {
            // SAFETY: a raw clone(2) with SIGCHLD and no CLONE_THREAD (a fork) must fail before
            // it creates anything; had it succeeded the child exits at once.
            let fork = unsafe {
                let r = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
                if r == 0 {
                    libc::_exit(0);
                }
                errno_of(r)
            };
            let thread = std::thread::spawn(|| 7).join().unwrap_or(0);
            (open_passwd(), socket(), exec_mapping(), fork, thread)
        });
        assert_eq!(open, 0, "openat");
        assert_eq!(sock, libc::EPERM, "socket");
        assert_eq!(exec, libc::EPERM, "mmap PROT_EXEC");
        assert_eq!(fork, libc::EPERM, "clone without CLONE_THREAD");
        assert_eq!(thread, 7, "threads can be created");
    }

    #[test]
    fn the_live_dump_writer_writes_files_with_threads_but_no_kvm_sockets_or_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmcore");
        let (wrote, ioctl, sock, fork, thread) = confined(ThreadKind::LiveDumpWriter, move || {
            let wrote = crate::files::create_private(&path).and_then(|f| f.sync_all()).is_ok();
            // SAFETY: as in the vmm test: a fork that must fail before it creates anything.
            let fork = unsafe {
                let r = libc::syscall(libc::SYS_clone, FORK_FLAGS, 0, 0, 0, 0);
                if r == 0 {
                    libc::_exit(0);
                }
                errno_of(r)
            };
            let thread = std::thread::spawn(|| 7).join().unwrap_or(0);
            (wrote, ioctl_kvm_create_vm_on_stdin(), socket(), fork, thread)
        });
        assert!(wrote, "openat, fsync");
        assert_eq!(ioctl, libc::EPERM, "ioctl");
        assert_eq!(sock, libc::EPERM, "socket");
        assert_eq!(fork, libc::EPERM, "fork");
        assert_eq!(thread, 7, "compression threads");
    }

    #[test]
    fn the_metrics_writer_replaces_its_file_but_has_no_kvm_sockets_or_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crashvmm.prom");
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(0));
        let text = metrics.encode().unwrap();
        let (wrote, ioctl, sock, thread) = confined(ThreadKind::Metrics, move || {
            let wrote =
                crate::metrics::write_file(&path, &text).is_ok() && crate::metrics::write_file(&path, &text).is_ok();
            let thread = std::thread::Builder::new().spawn(|| ()).is_ok();
            (wrote, ioctl_kvm_create_vm_on_stdin(), socket(), thread)
        });
        assert!(wrote, "openat, fsync, rename");
        assert_eq!(ioctl, libc::EPERM, "ioctl");
        assert_eq!(sock, libc::EPERM, "socket");
        assert!(!thread, "no threads");
    }

    #[test]
    fn the_net_thread_polls_reads_writes_gathers_and_raises_its_interrupt_but_opens_nothing() {
        use std::os::fd::AsRawFd;
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (polled, moved, ioctl, open, sock, thread) = confined(ThreadKind::Net, move || {
            let mut pfd = libc::pollfd { fd: efd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd, no wait.
            let polled = errno_of(unsafe { libc::poll(&mut pfd, 1, 0) } as i64);
            let one = 1u64.to_ne_bytes();
            let iov = [libc::iovec { iov_base: one.as_ptr().cast_mut().cast(), iov_len: one.len() }];
            // SAFETY: one iovec over `one`, which outlives the call.
            let gathered = unsafe { libc::writev(efd.as_raw_fd(), iov.as_ptr(), 1) } == 8;
            let moved = gathered && efd.write(1).is_ok() && efd.read().is_ok_and(|v| v == 2);
            let thread = std::thread::Builder::new().spawn(|| ()).is_ok();
            let level = kvm_bindings::kvm_irq_level::default();
            // SAFETY: an ioctl on a descriptor that is not open: EBADF if the filter lets it by.
            let line = errno_of(unsafe { libc::ioctl(-1, KVM_IRQ_LINE() as _, &level) } as i64);
            let msi = kvm_bindings::kvm_msi::default();
            // SAFETY: as above.
            let msi = errno_of(unsafe { libc::ioctl(-1, KVM_SIGNAL_MSI() as _, &msi) } as i64);
            (polled, moved, (line, msi, ioctl_kvm_create_vm_on_stdin()), open_passwd(), socket(), thread)
        });
        assert_eq!(polled, 0, "poll");
        assert!(moved, "read, write and writev");
        assert_eq!(
            ioctl,
            (libc::EBADF, libc::EBADF, libc::EPERM),
            "KVM_IRQ_LINE and KVM_SIGNAL_MSI reach the kernel, other ioctls do not"
        );
        assert_eq!(open, libc::EPERM, "openat");
        assert_eq!(sock, libc::EPERM, "socket");
        assert!(!thread, "no threads");
    }

    #[test]
    fn the_live_dump_copier_waits_and_lifts_write_protection_but_opens_nothing() {
        let (polled, protect, ioctl, open, sock, thread) = confined(ThreadKind::SnapshotCopier, || {
            let mut pfd = libc::pollfd { fd: 0, events: 0, revents: 0 };
            // SAFETY: one pollfd, no wait.
            let polled = errno_of(unsafe { libc::poll(&mut pfd, 1, 0) } as i64);
            let mut wp = crate::uffd::UffdioWriteprotect::default();
            // SAFETY: an ioctl on a descriptor that is not open: EBADF if the filter lets it by.
            let protect = errno_of(unsafe { libc::ioctl(-1, crate::uffd::UFFDIO_WRITEPROTECT() as _, &mut wp) } as i64);
            let thread = std::thread::Builder::new().spawn(|| ()).is_ok();
            (polled, protect, ioctl_kvm_create_vm_on_stdin(), open_passwd(), socket(), thread)
        });
        assert_eq!(polled, 0, "poll");
        assert_eq!(protect, libc::EBADF, "UFFDIO_WRITEPROTECT reaches the kernel");
        assert_eq!(ioctl, libc::EPERM, "other ioctls");
        assert_eq!(open, libc::EPERM, "openat");
        assert_eq!(sock, libc::EPERM, "socket");
        assert!(!thread, "no threads");
    }

    #[test]
    fn the_vmcore_writer_writes_files_and_forks_but_has_no_kvm_sockets_or_exec_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmcore");
        let (wrote, removed, ioctl, sock, exec, fork, thread) = confined(ThreadKind::VmcoreWriter, move || {
            let wrote = crate::files::create_private(&path).and_then(|f| f.sync_all()).is_ok();
            let removed = std::fs::remove_file(&path).is_ok();
            // SAFETY: a fork with glibc's flags; the child leaves at once.
            let fork = unsafe {
                let r = libc::syscall(libc::SYS_clone, FORK_FLAGS, 0, 0, 0, 0);
                if r == 0 {
                    libc::_exit(0);
                }
                let e = errno_of(r);
                if r > 0 {
                    libc::waitpid(r as libc::pid_t, std::ptr::null_mut(), 0);
                }
                e
            };
            let thread = std::thread::spawn(|| 7).join().unwrap_or(0);
            (wrote, removed, ioctl_kvm_create_vm_on_stdin(), socket(), exec_mapping(), fork, thread)
        });
        assert!(wrote && removed, "openat, fsync, unlink");
        assert_eq!(ioctl, libc::EPERM, "ioctl KVM_CREATE_VM");
        assert_eq!(sock, libc::EPERM, "socket");
        assert_eq!(exec, libc::EPERM, "mmap PROT_EXEC");
        assert_eq!(fork, 0, "a live dump's fork");
        assert_eq!(thread, 7, "compression threads");
    }

    #[test]
    fn the_vmcore_hasher_reads_but_opens_nothing() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let (pread, open, sock) = confined(ThreadKind::VmcoreHasher, move || {
            let mut buf = [0u8; 16];
            (std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0).is_ok(), open_passwd(), socket())
        });
        assert!(pread, "pread64");
        assert_eq!(open, libc::EPERM, "openat");
        assert_eq!(sock, libc::EPERM, "socket");
    }

    #[test]
    fn the_violation_record_is_the_event_logs() {
        let mut b = Buf::new();
        let line = violation_record(&mut b, (1_796_300_000, 42), "vcpu1", 41, "socket").as_str().to_string();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2026-12-03T12:13:20.000042Z");
        let event = Event::SeccompViolation { thread: "vcpu1".into(), syscall: 41, name: "socket".into() };
        let ours: serde_json::Value = serde_json::from_str(&EventLog::format(&event)).unwrap();
        let strip = |mut v: serde_json::Value| {
            v.as_object_mut().unwrap().remove("ts");
            v
        };
        assert_eq!(strip(v), strip(ours));
        assert!(line.ends_with("}\n"));
    }

    #[test]
    fn timestamps_match_chrono() {
        for secs in [0i64, 951_782_400, 1_796_300_000, 4_102_444_799] {
            let mut b = Buf::new();
            rfc3339(&mut b, secs, 7);
            let want = chrono::DateTime::from_timestamp(secs, 7000)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(b.as_str(), want);
        }
    }

    #[test]
    fn syscall_names() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(41), "socket");
        assert_eq!(syscall_name(59), "execve");
        assert_eq!(syscall_name(335), "unknown");
        assert_eq!(syscall_name(-1), "unknown");
        assert_eq!(syscall_name(100_000), "unknown");
    }
}
