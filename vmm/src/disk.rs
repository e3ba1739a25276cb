//! Disks: files behind virtio-blk devices on the virtio-mmio transport, and the crash disk the
//! guest's crash kernel writes its dump to.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::bus::MmioDevice;
use devices::virtio::{BlockBackend, VirtioBlock, VirtioMmio};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// First virtio-mmio window; one page apart, in the MMIO hole.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1000;
/// Interrupt lines for virtio devices (ISA IRQs nothing else uses), in order.
pub const VIRTIO_GSIS: [u32; 8] = [5, 6, 7, 10, 11, 12, 14, 15];
/// The serial (virtio-blk GET_ID) of the crash disk: the guest finds it by this name.
pub const CRASH_DISK_SERIAL: &str = "crashvmm-crashdisk";

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("cannot open disk {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make crash disk {path} {size} bytes long")]
    Resize {
        path: PathBuf,
        size: u64,
        #[source]
        source: io::Error,
    },
    #[error("disk {path} is {len} bytes, not a multiple of 512")]
    Size { path: PathBuf, len: u64 },
    #[error("at most {} virtio devices", VIRTIO_GSIS.len())]
    TooMany,
    #[error("cannot set up the virtio-mmio transport")]
    Virtio(#[source] devices::virtio::VirtioError),
    #[error("invalid virtio-blk device")]
    Block(#[source] devices::virtio::VirtioBlockError),
}

/// The guest's first write to the crash disk in a boot: where, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstWrite {
    pub offset: u64,
    pub bytes: u64,
}

/// Watches the crash disk for its first write in a boot (one watch per boot: the machine,
/// its disks and this are made anew at each boot).
///
/// Only the guest's crash kernel writes the crash disk: a normal boot finds it (its serial,
/// the partition scan) and reads it, but nothing in it writes it (guest-images/guest-init.sh
/// leaves it alone; scenarios/kdump-capture.sh, run in the crash kernel, writes the dump with
/// `makedumpfile -F ... >/dev/vdX`). So its first write says that a crash kernel runs and has
/// begun writing a dump, even when the crashed kernel gave no notice (kexec before its panic
/// notifiers: `crash_kexec_post_notifiers=0`, plain KVM's default). Reads, flushes and
/// `GET_ID` never count.
///
/// The block device notes the write from inside the queue's processing, on the vCPU thread
/// whose MMIO write notified the queue; that thread then takes it ([`Self::take`]) and
/// records the event and the signal with its vCPU number, as the other devices' are.
#[derive(Debug, Clone, Default)]
pub struct CrashDiskWatch(Arc<WatchState>);

#[derive(Debug, Default)]
struct WatchState {
    /// A first write is noted and not yet taken (the vCPU threads' cheap check after every
    /// MMIO write).
    pending: AtomicBool,
    /// The first write, once there was one; `taken` once handed out.
    first: Mutex<Option<(FirstWrite, bool)>>,
}

impl CrashDiskWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The device wrote `bytes` at `offset`: noted if it is the boot's first (non-empty) write.
    fn wrote(&self, offset: u64, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut first = crate::sync::lock(&self.0.first);
        if first.is_none() {
            *first = Some((FirstWrite { offset, bytes: bytes as u64 }, false));
            self.0.pending.store(true, Ordering::Release);
        }
    }

    /// The boot's first write, once: to the first caller after it happened.
    pub fn take(&self) -> Option<FirstWrite> {
        if !self.0.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut first = crate::sync::lock(&self.0.first);
        match first.as_mut() {
            Some((write, taken)) if !*taken => {
                *taken = true;
                self.0.pending.store(false, Ordering::Release);
                Some(*write)
            }
            _ => None,
        }
    }
}

/// A disk image file.
pub struct FileBackend {
    file: File,
    len: u64,
    /// The crash disk's: its first write is noted here.
    watch: Option<CrashDiskWatch>,
}

impl FileBackend {
    pub fn open(path: &Path, readonly: bool) -> Result<Self, DiskError> {
        let err = |source| DiskError::Open { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(!readonly).open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(err(io::Error::other("not a regular file")));
        }
        let len = meta.len();
        if len % 512 != 0 {
            return Err(DiskError::Size { path: path.to_owned(), len });
        }
        Ok(Self { file, len, watch: None })
    }

    /// The crash disk: created (sparse) or emptied at `size` bytes, so that nothing from an
    /// earlier run can pass for this crash's dump; its first write is noted in `watch`.
    pub fn crash_disk(path: &Path, size: u64, watch: CrashDiskWatch) -> Result<Self, DiskError> {
        let err = |source| DiskError::Open { path: path.to_owned(), source };
        let existed = path.exists();
        // It will hold the guest's kdump (its memory): owner-only, as crashvmm's other files.
        let file = crate::files::create_output(path, "crash-disk").map_err(err)?;
        if let Err(source) = file.set_len(size) {
            // A size the file system cannot hold leaves no empty file behind.
            if !existed {
                let _ = std::fs::remove_file(path);
            }
            return Err(DiskError::Resize { path: path.to_owned(), size, source });
        }
        Ok(Self { file, len: size, watch: Some(watch) })
    }
}

impl BlockBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        // The guest wrote, whether or not the host's file takes it.
        if let Some(w) = &self.watch {
            w.wrote(offset, data.len());
        }
        self.file.write_all_at(data, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A virtio-blk device on the MMIO bus, with its interrupt line (an irqfd).
pub struct VirtioBlockMmio {
    transport: VirtioMmio<VirtioBlock<FileBackend>>,
    mem: GuestMemoryMmap,
    irq: EventFd,
}

impl VirtioBlockMmio {
    pub fn new(block: VirtioBlock<FileBackend>, mem: GuestMemoryMmap, irq: EventFd) -> Result<Self, DiskError> {
        let transport = VirtioMmio::new(block).map_err(DiskError::Virtio)?;
        Ok(Self { transport, mem, irq })
    }
}

impl MmioDevice for VirtioBlockMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.transport.write(offset, data, &self.mem) {
            if let Err(e) = self.irq.write(1) {
                log::warn!("virtio-blk: cannot raise the interrupt: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the crash disk's first non-empty write in a boot is noted, and handed out once;
    /// reads (the partition scan, the serial's search) and flushes never are. A new boot's
    /// watch counts again.
    #[test]
    fn the_crash_disk_notes_its_first_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.img");
        let watch = CrashDiskWatch::new();
        let mut disk = FileBackend::crash_disk(&path, 1 << 20, watch.clone()).unwrap();
        let mut buf = [0u8; 512];
        disk.read_at(0, &mut buf).unwrap();
        disk.read_at(4096, &mut buf).unwrap();
        disk.flush().unwrap();
        disk.write_at(512, &[]).unwrap();
        assert_eq!(watch.take(), None, "reads, flushes and empty writes are no write");
        disk.write_at(4096, &[0xaa; 1024]).unwrap();
        disk.write_at(0, &[0xbb; 512]).unwrap();
        assert_eq!(watch.take(), Some(FirstWrite { offset: 4096, bytes: 1024 }));
        assert_eq!(watch.take(), None, "once");
        disk.write_at(8192, &[1; 512]).unwrap();
        assert_eq!(watch.take(), None, "only the first write counts");
        // Another disk (not the crash disk) has no watch.
        let mut other = FileBackend::open(&path, false).unwrap();
        other.write_at(0, &[2; 512]).unwrap();
        assert_eq!(watch.take(), None);
        // The next boot: the crash disk emptied, a new watch.
        let watch = CrashDiskWatch::new();
        let mut disk = FileBackend::crash_disk(&path, 1 << 20, watch.clone()).unwrap();
        disk.write_at(0, &[3; 512]).unwrap();
        assert_eq!(watch.take(), Some(FirstWrite { offset: 0, bytes: 512 }));
    }
}
