//! A copy-on-write snapshot of guest RAM by `userfaultfd` write protection, for live dumps.
//!
//! Guest RAM is registered with a userfaultfd in write-protect mode and protected in one
//! `UFFDIO_WRITEPROTECT` per region while the vCPUs are paused: a page table walk over the
//! 2 MiB pages guest RAM has, and KVM dropping its own mappings of the range, about a
//! millisecond per 4 GiB here whatever share is touched (`docs/live-dump.md`). From then on,
//! every write to guest memory (the guest's, through KVM's faults on the vCPU threads;
//! crashvmm's own device threads') stops the writing thread on a fault, which the copier thread
//! serves: it copies the page as it was into this snapshot,
//! marks the page copied and lifts the protection of that page alone, which wakes the writer.
//!
//! Pages that hold no data (never touched, so no page table entry to protect) are listed in the
//! same pause by `PAGEMAP_SCAN` (Linux 6.7), which walks the page tables and skips the holes: in
//! the snapshot such a page is zero, whatever the guest writes to it later.
//! `UFFD_FEATURE_WP_UNPOPULATED` (Linux 6.4) would protect them instead, but it writes a marker
//! for every 4 KiB page without data, which made the pause grow with untouched memory (5-30 ms
//! for 1-4 GiB guests with 10% touched, `docs/live-dump.md`).
//!
//! The vmcore writer reads guest memory in place. A page whose copied bit is clear once a read
//! of it has finished was not written during the read (the bit is set before the protection is
//! lifted), so what was read is the snapshot's; for a page whose bit is set, the saved copy is,
//! and for a page without data at the snapshot, zeros. [`Snapshot::patch`] applies that to a
//! buffer just read, [`Snapshot::copied_pages`] lists the copies of a range whose bytes went
//! from guest memory to a file directly, [`Snapshot::had_data`] says which pages to leave out
//! as zero.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::seccomp::{self, ThreadKind};
use crate::sync::lock;
use crate::uffd::{
    self, ioctl, UffdMsg, UffdioApi, UffdioRange, UffdioRegister, _UFFDIO_WRITEPROTECT, UFFDIO_API, UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_WP, UFFDIO_UNREGISTER, UFFD_API, UFFD_EVENT_PAGEFAULT, UFFD_FEATURE_PAGEFAULT_FLAG_WP,
    UFFD_PAGEFAULT_FLAG_WP,
};

const PAGE: usize = 4096;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("no userfaultfd (the userfaultfd system call needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1; /dev/userfaultfd needs read and write access)")]
    Open(#[source] io::Error),
    #[error("this kernel's userfaultfd has no write protection of anonymous memory (Linux 5.7)")]
    Features(#[source] io::Error),
    #[error("/proc/self/pagemap cannot list the pages that hold data (PAGEMAP_SCAN, Linux 6.7)")]
    PagemapScan(#[source] io::Error),
    #[error("cannot register guest RAM at {host:#x} (+{len:#x}) for write protection")]
    Register { host: usize, len: usize, source: io::Error },
    #[error("cannot write-protect guest RAM")]
    Protect(#[source] io::Error),
    #[error("cannot start the live dump's copier thread")]
    Thread(#[source] io::Error),
}

/// One registered range of guest RAM and where its pages' bits start.
#[derive(Debug, Clone, Copy)]
struct Area {
    host: usize,
    len: usize,
    first_bit: usize,
}

/// What the copier thread and the readers share.
struct Shared {
    areas: Vec<Area>,
    /// A bit per page: copied (set before the page's protection is lifted), so that readers
    /// look at `copies` (under its lock) only for the pages that have one.
    bits: Vec<AtomicU64>,
    /// Host page address -> the page as of the snapshot; never changed once inserted.
    copies: Mutex<HashMap<usize, Arc<[u8]>>>,
    copied: AtomicU64,
    /// Called (on the copier thread) when `copied` passes the limit: [`Snapshot::wake_past`].
    past: OnceLock<(u64, PastLimit)>,
}

type PastLimit = Box<dyn Fn() + Send + Sync>;

impl Shared {
    /// The bit of the page holding host address `addr`.
    fn bit_of(&self, addr: usize) -> Option<usize> {
        let i = self.areas.partition_point(|a| a.host <= addr).checked_sub(1)?;
        let a = &self.areas[i];
        (addr < a.host + a.len).then(|| a.first_bit + (addr - a.host) / PAGE)
    }

    fn is_copied(&self, bit: usize) -> bool {
        self.bits[bit / 64].load(Ordering::Acquire) & (1 << (bit % 64)) != 0
    }

    /// Saves the page at `page` (page-aligned, write-protected, so nobody changes it now) unless
    /// it was saved already.
    fn save(&self, page: usize) {
        let Some(bit) = self.bit_of(page) else { return };
        if self.is_copied(bit) {
            return;
        }
        // SAFETY: `page` is inside a registered area of guest RAM, which stays mapped while the
        // snapshot lives (the snapshot borrows the memory), and is write-protected: the only
        // writers are stopped on their fault until this thread lifts the protection below.
        let copy: Arc<[u8]> = Arc::from(unsafe { std::slice::from_raw_parts(page as *const u8, PAGE) });
        lock(&self.copies).insert(page, copy);
        let before = self.copied.fetch_add(PAGE as u64, Ordering::Release);
        self.bits[bit / 64].fetch_or(1 << (bit % 64), Ordering::Release);
        if let Some((limit, wake)) = self.past.get() {
            if before <= *limit && before + PAGE as u64 > *limit {
                wake();
            }
        }
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(super) fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created these descriptors; each is owned once.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((rx.into(), tx.into()))
}

/// A write-protect snapshot of guest RAM; dropping it lifts the protection.
pub struct Snapshot<'m> {
    _mem: &'m GuestMemoryMmap,
    pagemap: std::fs::File,
    /// Host ranges of guest RAM that held data at the snapshot, sorted; every other page was zero.
    with_data: Vec<(usize, usize)>,
    uffd: Arc<OwnedFd>,
    shared: Arc<Shared>,
    copier: Option<JoinHandle<()>>,
    /// The write end of the copier's stop pipe: dropping it (end of file) stops the copier.
    stop: Option<File>,
    protected: bool,
}

impl<'m> Snapshot<'m> {
    /// Registers every region of `mem` for write protection and starts the copier; nothing is
    /// protected yet, so the guest runs as before until [`Snapshot::protect`].
    pub fn new(mem: &'m GuestMemoryMmap) -> Result<Self, SnapshotError> {
        let pagemap = std::fs::File::open("/proc/self/pagemap").map_err(SnapshotError::PagemapScan)?;
        // Trust the scan only if it lists a page just written (some sandboxes serve a pagemap
        // of zeros, which would make the whole snapshot zero).
        let probe = std::hint::black_box(vec![1u8; 2 * PAGE]);
        let page = probe.as_ptr().addr().next_multiple_of(PAGE);
        let listed = uffd::pages_with_data(&pagemap, page, page + PAGE).map_err(SnapshotError::PagemapScan)?;
        if listed != [(page, page + PAGE)] {
            return Err(SnapshotError::PagemapScan(io::Error::other(format!(
                "a page just written is listed as {listed:x?}"
            ))));
        }
        drop(probe);
        let uffd = uffd::open().map_err(SnapshotError::Open)?;
        let mut api = UffdioApi { api: UFFD_API, features: UFFD_FEATURE_PAGEFAULT_FLAG_WP, ioctls: 0 };
        ioctl(uffd.as_raw_fd(), UFFDIO_API(), &mut api).map_err(SnapshotError::Features)?;
        let mut areas = Vec::new();
        let mut bits = 0;
        for r in mem.iter() {
            let len = r.len() as usize;
            let Ok(host) = r.get_host_address(MemoryRegionAddress(0)) else { continue };
            let host = host.addr();
            areas.push(Area { host, len, first_bit: bits });
            bits += len.div_ceil(PAGE);
        }
        areas.sort_by_key(|a| a.host);
        for a in &areas {
            let mut reg = UffdioRegister {
                range: UffdioRange { start: a.host as u64, len: a.len as u64 },
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            let err = |source| SnapshotError::Register { host: a.host, len: a.len, source };
            ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER(), &mut reg).map_err(err)?;
            if reg.ioctls & (1 << _UFFDIO_WRITEPROTECT) == 0 {
                return Err(err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
            }
        }
        let shared = Arc::new(Shared {
            areas,
            bits: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            copies: Mutex::new(HashMap::new()),
            copied: AtomicU64::new(0),
            past: OnceLock::new(),
        });
        let uffd = Arc::new(uffd);
        let mut snapshot = Self {
            _mem: mem,
            pagemap,
            with_data: Vec::new(),
            uffd: uffd.clone(),
            shared: shared.clone(),
            copier: None,
            stop: None,
            protected: false,
        };
        let (stop_rx, stop_tx) = pipe().map_err(SnapshotError::Thread)?;
        snapshot.stop = Some(stop_tx);
        snapshot.copier = Some(
            std::thread::Builder::new()
                .name("snapshot-copier".into())
                .spawn(move || copier(&uffd, &shared, &stop_rx))
                .map_err(SnapshotError::Thread)?,
        );
        Ok(snapshot)
    }

    /// Lists the pages of guest RAM that hold data and write-protects them: the snapshot is
    /// what guest RAM holds now. Call with the vCPUs paused.
    pub fn protect(&mut self) -> Result<(), SnapshotError> {
        let started = std::time::Instant::now();
        let mut with_data = Vec::new();
        for a in &self.shared.areas {
            let listed = uffd::pages_with_data(&self.pagemap, a.host, a.host + a.len);
            with_data.extend(listed.map_err(SnapshotError::PagemapScan)?);
        }
        self.with_data = with_data;
        let scanned = started.elapsed();
        self.protected = true;
        self.set_protection(true).map_err(SnapshotError::Protect)?;
        log::debug!(
            "snapshot: {} ranges with data listed in {scanned:?}, write-protected in {:?}",
            self.with_data.len(),
            started.elapsed() - scanned
        );
        Ok(())
    }

    /// Whether the page at host address `page` held data at the snapshot (else it was zero).
    pub fn had_data(&self, page: usize) -> bool {
        let i = self.with_data.partition_point(|r| r.0 <= page);
        i > 0 && page < self.with_data[i - 1].1
    }

    fn set_protection(&self, on: bool) -> io::Result<()> {
        for a in &self.shared.areas {
            uffd::write_protect(self.uffd.as_raw_fd(), a.host, a.len, on)?;
        }
        Ok(())
    }

    /// Once more than `limit` bytes were copied, call `wake` (once, on the copier thread: it
    /// must not block). Only the first call sets it.
    pub fn wake_past(&self, limit: u64, wake: impl Fn() + Send + Sync + 'static) {
        if self.shared.past.set((limit, Box::new(wake))).is_ok() && self.copied_bytes() > limit {
            // Passed before it was set: now, then (a second call at most, in a race).
            if let Some((_, wake)) = self.shared.past.get() {
                wake();
            }
        }
    }

    /// Guest memory copied so far because it was written after the snapshot.
    pub fn copied_bytes(&self) -> u64 {
        self.shared.copied.load(Ordering::Acquire)
    }

    /// `buf` was just read from guest memory at host address `host`: puts the snapshot's bytes
    /// back for every page written since the snapshot, zeros for the pages without data then.
    pub fn patch(&self, host: usize, buf: &mut [u8]) {
        self.each_page(host, buf.len(), |page, as_of| {
            let (start, end) = (page.max(host) - host, (page + PAGE - host).min(buf.len()));
            match as_of {
                AsOf::Read => {}
                AsOf::Zero => buf[start..end].fill(0),
                AsOf::Copy(saved) => {
                    let from = page.max(host) - page;
                    buf[start..end].copy_from_slice(&saved[from..from + end - start]);
                }
            }
        });
    }

    /// The copies of the pages of `[host, host + len)` (`host` page-aligned) that held data at
    /// the snapshot and were copied by now, with their offsets from `host`. Call it after the
    /// range's bytes were read.
    pub fn copied_pages(&self, host: usize, len: usize) -> Vec<(usize, Arc<[u8]>)> {
        let mut pages = Vec::new();
        if self.copied_bytes() != 0 {
            self.each_page(host, len, |page, as_of| {
                if let AsOf::Copy(saved) = as_of {
                    pages.push((page - host, saved));
                }
            });
        }
        pages
    }

    /// `f(page, how it reads in the snapshot)` for every page overlapping `[host, host + len)`,
    /// whose bytes have just been read from guest memory.
    fn each_page(&self, host: usize, len: usize, mut f: impl FnMut(usize, AsOf)) {
        // Orders the reads of guest memory before the bits' loads (see the module's docs).
        fence(Ordering::SeqCst);
        let any_copies = self.copied_bytes() != 0;
        let mut page = host & !(PAGE - 1);
        while page < host + len {
            let as_of = if !self.had_data(page) {
                AsOf::Zero
            } else if any_copies && self.shared.bit_of(page).is_some_and(|bit| self.shared.is_copied(bit)) {
                // The copy went in before the bit was set.
                lock(&self.shared.copies).get(&page).cloned().map_or(AsOf::Read, AsOf::Copy)
            } else {
                AsOf::Read
            };
            f(page, as_of);
            page += PAGE;
        }
    }
}

/// How a page just read from guest memory reads in the snapshot.
enum AsOf {
    /// As read: not written since the snapshot.
    Read,
    /// Zero: it held no data at the snapshot.
    Zero,
    /// As its copy: written since.
    Copy(Arc<[u8]>),
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        if self.protected {
            if let Err(e) = self.set_protection(false) {
                log::warn!("live dump: lifting the write protection of guest RAM: {e}");
            }
        }
        for a in &self.shared.areas {
            let mut range = UffdioRange { start: a.host as u64, len: a.len as u64 };
            if let Err(e) = ioctl(self.uffd.as_raw_fd(), UFFDIO_UNREGISTER(), &mut range) {
                log::warn!("live dump: unregistering guest RAM from its userfaultfd: {e}");
            }
        }
        // End of file on the stop pipe wakes the copier, which ends.
        drop(self.stop.take());
        if let Some(t) = self.copier.take() {
            let _ = t.join();
        }
    }
}

/// The copier thread: for every write fault, save the page, then lift its protection. It sleeps
/// in poll(2) on the userfaultfd and its stop pipe, and ends when the pipe's write end goes.
fn copier(uffd: &OwnedFd, shared: &Shared, stop: &File) {
    if let Err(e) = seccomp::apply(ThreadKind::SnapshotCopier) {
        // Without the filter it still serves the faults: a guest left waiting on them would hang.
        log::error!("live dump: {}", crate::error::Chain(&e));
    }
    let fd = uffd.as_raw_fd();
    let mut msgs = [UffdMsg::default(); 16];
    loop {
        let mut pfds = [
            libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds, for the call's duration.
        let ready = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if ready <= 0 {
            continue;
        }
        if pfds[1].revents != 0 {
            return;
        }
        // SAFETY: reads whole uffd_msg records into `msgs`, which has room for the length given.
        let n = unsafe { libc::read(fd, msgs.as_mut_ptr().cast(), std::mem::size_of_val(&msgs)) };
        if n <= 0 {
            continue;
        }
        for m in &msgs[..n as usize / std::mem::size_of::<UffdMsg>()] {
            let (flags, addr) = (m.arg[0], m.arg[1] as usize);
            if m.event != UFFD_EVENT_PAGEFAULT || flags & UFFD_PAGEFAULT_FLAG_WP == 0 {
                continue;
            }
            let page = addr & !(PAGE - 1);
            shared.save(page);
            // EAGAIN: the mappings are changing; the fault is raised again and served then.
            if let Err(e) = uffd::write_protect(fd, page, PAGE, false) {
                if e.raw_os_error() != Some(libc::EAGAIN) {
                    log::warn!("live dump: lifting the write protection of {page:#x}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn snapshot_or_skip(mem: &GuestMemoryMmap) -> Option<Snapshot<'_>> {
        match Snapshot::new(mem) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn writes_after_the_snapshot_leave_the_snapshot_as_it_was() {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 * PAGE), (GuestAddress(1 << 32), 8 * PAGE)]).unwrap();
        for p in 0..32u64 {
            mem.write_obj(p + 1, GuestAddress(p * PAGE as u64)).unwrap();
        }
        let Some(mut snap) = snapshot_or_skip(&mem) else { return };
        snap.protect().unwrap();
        let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap().addr();
        // Another thread writes (it stops on the fault until the copier has saved the page);
        // page 3 is written twice; page 40 and the high region were never touched: no data,
        // nothing to protect or copy, zero in the snapshot.
        std::thread::scope(|s| {
            s.spawn(|| {
                for (p, v) in [(3u64, 100u64), (3, 101), (40, 7), (10, 9)] {
                    mem.write_obj(v, GuestAddress(p * PAGE as u64)).unwrap();
                }
                mem.write_obj(5u64, GuestAddress((1 << 32) + PAGE as u64)).unwrap();
            });
        });
        assert_eq!(snap.copied_bytes(), 2 * PAGE as u64, "pages 3 and 10");
        assert!(snap.had_data(host(10 * PAGE as u64)) && !snap.had_data(host(40 * PAGE as u64)));
        assert_eq!(mem.read_obj::<u64>(GuestAddress(3 * PAGE as u64)).unwrap(), 101, "the guest's view");
        // The snapshot's view of pages 2..=11 read in one buffer.
        let mut buf = vec![0u8; 10 * PAGE];
        mem.read_slice(&mut buf, GuestAddress(2 * PAGE as u64)).unwrap();
        snap.patch(host(2 * PAGE as u64), &mut buf);
        for (i, p) in (2u64..12).enumerate() {
            assert_eq!(u64::from_le_bytes(buf[i * PAGE..i * PAGE + 8].try_into().unwrap()), p + 1, "page {p}");
        }
        // A read that starts inside a copied page.
        let mut word = [0u8; 8];
        mem.read_slice(&mut word, GuestAddress(40 * PAGE as u64)).unwrap();
        assert_eq!(u64::from_le_bytes(word), 7);
        snap.patch(host(40 * PAGE as u64), &mut word);
        assert_eq!(u64::from_le_bytes(word), 0, "never touched: zero in the snapshot");
        let mut high = vec![0u8; 8 * PAGE];
        mem.read_slice(&mut high, GuestAddress(1 << 32)).unwrap();
        assert_eq!(high[PAGE], 5);
        snap.patch(host(1 << 32), &mut high);
        assert!(high.iter().all(|&b| b == 0));
        let seen: Vec<(usize, u8)> = snap.copied_pages(host(0), 64 * PAGE).iter().map(|(o, p)| (*o, p[0])).collect();
        assert_eq!(seen, vec![(3 * PAGE, 4), (10 * PAGE, 11)]);
        drop(snap);
        // Unprotected: writes go straight through.
        mem.write_obj(55u64, GuestAddress(20 * PAGE as u64)).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(20 * PAGE as u64)).unwrap(), 55);
    }
}
