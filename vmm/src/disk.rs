//! Disks: files behind virtio-blk devices on the virtio-mmio transport, and the crash disk the
//! guest's crash kernel writes its dump to.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
    Mmio(#[source] devices::virtio::VirtioMmioError),
    #[error("invalid virtio-blk device")]
    Block(#[source] devices::virtio::VirtioBlockError),
}

/// A disk image file.
pub struct FileBackend {
    file: File,
    len: u64,
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
        Ok(Self { file, len })
    }

    /// The crash disk: created (sparse) or emptied at `size` bytes, so that nothing from an
    /// earlier run can pass for this crash's dump.
    pub fn crash_disk(path: &Path, size: u64) -> Result<Self, DiskError> {
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
        Ok(Self { file, len: size })
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
        let transport = VirtioMmio::new(block).map_err(DiskError::Mmio)?;
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
