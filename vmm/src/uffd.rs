//! The kernel interfaces of the live dump's write-protect snapshot (`crash/snapshot.rs`), for it
//! and for the seccomp filters that allow its requests: `userfaultfd` as `linux/userfaultfd.h`
//! defines it (the structures, numbers and the two ways to open one), and `/proc/self/pagemap`'s
//! `PAGEMAP_SCAN` (`linux/fs.h`, Linux 6.7), which lists the pages that hold data.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

/// The ioctl type of userfaultfd requests.
pub const UFFDIO: u32 = 0xAA;
pub const UFFD_API: u64 = 0xAA;
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// Bit of `uffdio_register.ioctls`: the range supports `UFFDIO_WRITEPROTECT`.
pub const _UFFDIO_WRITEPROTECT: u64 = 0x06;
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct uffd_msg`: the event, then (for a page fault) flags, address and thread id.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: [u64; 3],
}

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3F, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_ior_nr!(UFFDIO_UNREGISTER, UFFDIO, 0x01, UffdioRange);
ioctl_iowr_nr!(UFFDIO_WRITEPROTECT, UFFDIO, 0x06, UffdioWriteprotect);
ioctl_io_nr!(USERFAULTFD_IOC_NEW, UFFDIO, 0x00);

/// `struct page_region`: `[start, end)` with `categories`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

ioctl_iowr_nr!(PAGEMAP_SCAN, b'f' as u32, 16, PmScanArg);

/// The requests a live dump's snapshot makes, for the seccomp filters.
pub fn ioctls() -> Vec<u64> {
    vec![
        UFFDIO_API(),
        UFFDIO_REGISTER(),
        UFFDIO_UNREGISTER(),
        UFFDIO_WRITEPROTECT(),
        USERFAULTFD_IOC_NEW(),
        PAGEMAP_SCAN(),
    ]
}

/// The ranges of `[start, end)` (host addresses of this process) whose pages hold data, present
/// or swapped out, by `PAGEMAP_SCAN` on `pagemap` (an open `/proc/self/pagemap`); adjacent
/// ranges come merged.
pub fn pages_with_data(pagemap: &std::fs::File, start: usize, end: usize) -> io::Result<Vec<(usize, usize)>> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut buf = vec![PageRegion::default(); 4096];
    let mut at = start as u64;
    while at < end as u64 {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end: end as u64,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..Default::default()
        };
        // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` regions to `vec`, which
        // points at `buf`, alive for the call; it returns how many it wrote.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN() as _, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for r in &buf[..n as usize] {
            match out.last_mut() {
                Some(last) if last.1 == r.start as usize => last.1 = r.end as usize,
                _ => out.push((r.start as usize, r.end as usize)),
            }
        }
        if arg.walk_end <= at {
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        at = arg.walk_end;
    }
    Ok(out)
}

/// The one request the copier thread makes.
pub fn copier_ioctls() -> Vec<u64> {
    vec![UFFDIO_WRITEPROTECT()]
}

/// One userfaultfd request on `fd` with its argument structure.
pub fn ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used with this helper takes a pointer to its `T`, which is
    // `repr(C)` as the kernel defines it and lives for the call.
    if unsafe { libc::ioctl(fd, request as _, arg as *mut T) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Write-protects `[start, start + len)` (`on`) or lifts its protection, which wakes the
/// threads waiting on a fault there.
pub fn write_protect(fd: RawFd, start: usize, len: usize, on: bool) -> io::Result<()> {
    let mut wp = UffdioWriteprotect {
        range: UffdioRange { start: start as u64, len: len as u64 },
        mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
    };
    ioctl(fd, UFFDIO_WRITEPROTECT(), &mut wp)
}

/// A new userfaultfd (non-blocking, close-on-exec) that handles kernel-mode faults too (KVM's):
/// by the system call, else through `/dev/userfaultfd` (Linux 6.1+), where access to the device
/// node decides instead of CAP_SYS_PTRACE.
pub fn open() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd takes flags only; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just returned to us, owned once.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let syscall_err = io::Error::last_os_error();
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/userfaultfd").map_err(|_| syscall_err)?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument and returns a new descriptor.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW() as _, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernels() {
        // _IOWR(0xAA, 0x3F, 24 bytes), _IOWR(0xAA, 0x00, 32), _IOR(0xAA, 0x01, 16),
        // _IOWR(0xAA, 0x06, 24), _IO(0xAA, 0x00).
        assert_eq!(UFFDIO_API(), 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER(), 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER(), 0x8010_aa01);
        assert_eq!(UFFDIO_WRITEPROTECT(), 0xc018_aa06);
        assert_eq!(USERFAULTFD_IOC_NEW(), 0xaa00);
        // _IOWR('f', 16, 96 bytes).
        assert_eq!(PAGEMAP_SCAN(), 0xc060_6610);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
    }
}
