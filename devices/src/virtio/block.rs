//! virtio-blk (device type 2, virtio 1.x §5.2) over a [`BlockBackend`].
//!
//! One request queue of [`BLOCK_QUEUE_SIZE`] entries. Offered features: `VERSION_1`, `FLUSH`
//! (so Linux runs the disk as a write-back cache and sends flushes), `SEG_MAX` (at most
//! [`BLOCK_SEG_MAX`] data segments, so that a request always fits the ring without indirect
//! descriptors) and `RO` for a read-only disk. The configuration space holds `capacity` (512-byte
//! sectors; a partial last sector of the backend is not exposed) and `seg_max`; everything else
//! reads as zero.
//!
//! Requests: `IN` (read), `OUT` (write), `FLUSH` (the backend's flush) and `GET_ID` (the
//! 20-byte serial given to [`VirtioBlock::new`]); any other type completes with `UNSUPP`.
//!
//! A request is a descriptor chain of device-readable buffers followed by device-writable ones.
//! The layout of the bytes over the descriptors is free (virtio 1.x §2.6.4): the first 16
//! device-readable bytes are the header (`type`, `ioprio`, `sector`), the last device-writable
//! byte is the status; for `OUT` the data is the rest of the device-readable bytes, for `IN` and
//! `GET_ID` the rest of the device-writable ones. Linux uses one descriptor for the header, one
//! per data segment, and one for the status byte.
//!
//! Validation: every check below completes the request with `IOERR` (or `UNSUPP` for an unknown
//! type) and a log line; nothing panics.
//! - a chain that does not end (a loop, longer than the queue, a `next` index past the table, a
//!   descriptor outside guest memory, more than 4 GiB in all) or whose last descriptor is not a
//!   device-writable buffer with a status byte inside guest memory is put in the used ring with
//!   length 0 and no status written: there is nowhere to put one;
//! - a device-readable descriptor after a device-writable one;
//! - fewer than 16 header bytes;
//! - `IN` with device-readable data, `OUT` with device-writable data;
//! - a data length that is not a multiple of 512, or a sector range that is not inside the disk
//!   (checked arithmetic);
//! - `OUT` to a read-only disk;
//! - a data buffer not entirely inside guest memory (checked before any byte moves);
//! - a backend error.
//!
//! The used-ring length is the number of bytes written into guest memory: the data read for `IN`,
//! the serial for `GET_ID`, plus the status byte.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::common::VirtioDevice;
use super::GuestWarnings;

/// Bytes in a virtio-blk sector, whatever the backend's own block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Data segments per request (`seg_max`): the ring size less the header and status descriptors.
pub const BLOCK_SEG_MAX: u32 = BLOCK_QUEUE_SIZE as u32 - 2;
/// Length of the `GET_ID` serial.
pub const BLOCK_SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Length of the request header (`struct virtio_blk_outhdr`).
const HEADER_LEN: u64 = 16;
/// Configuration space we expose (`struct virtio_blk_config` up to `num_queues`); zeros after
/// the fields we fill.
const CONFIG_LEN: usize = 0x24;
const CONFIG_CAPACITY: usize = 0x00;
const CONFIG_SEG_MAX: usize = 0x0c;
/// Data moves between guest memory and the backend through a buffer of at most this size, so a
/// huge request does not allocate a huge buffer.
const BOUNCE_LEN: usize = 64 << 10;

/// The disk behind a [`VirtioBlock`]. Offsets and lengths are in bytes; the device only asks for
/// ranges inside `len()`.
pub trait BlockBackend: Send {
    /// Size of the disk in bytes.
    fn len(&self) -> u64;
    /// Whether the disk is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from the disk at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `data` to the disk at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make earlier writes durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A disk in memory (tests, scratch disks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VecBackend {
    data: Vec<u8>,
    flushes: u64,
}

impl VecBackend {
    /// A disk holding `data` (its size is `data.len()`).
    pub fn new(data: Vec<u8>) -> Self {
        Self { data, flushes: 0 }
    }

    /// The disk's contents.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// How many times the device flushed.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= self.data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "access past the end of the disk"))
    }
}

impl BlockBackend for VecBackend {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let r = self.range(offset, data.len())?;
        self.data[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

/// Errors building a [`VirtioBlock`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtioBlockError {
    #[error("block device serial is {0} bytes long; at most {BLOCK_SERIAL_LEN} fit")]
    SerialTooLong(usize),
}

/// Why a request failed; each becomes a status byte.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("header is {0} bytes, 16 needed")]
    HeaderTooShort(u64),
    #[error("IN request with {0} bytes of device-readable data")]
    ReadableDataForIn(u64),
    #[error("OUT request with {0} bytes of device-writable data")]
    WritableDataForOut(u64),
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    #[error("sector {sector} + {len} bytes is not inside the disk of {capacity} sectors")]
    OutOfRange { sector: u64, len: u64, capacity: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("buffer {addr:#x}+{len:#x} is not inside guest memory")]
    GuestMemory { addr: u64, len: u64 },
    #[error("backend I/O failed")]
    Backend(#[from] io::Error),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A piece of a request in guest memory.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

/// `segments` without their first `n` bytes.
fn skip(segments: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segments.len());
    for s in segments {
        if n >= s.len {
            n -= s.len;
        } else {
            // Cannot overflow: the descriptor was `addr..addr+len` and n < len.
            out.push(Segment { addr: GuestAddress(s.addr.0.wrapping_add(n)), len: s.len - n });
            n = 0;
        }
    }
    out
}

/// `segments` without their last `n` bytes.
fn trim_end(segments: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out: Vec<Segment> = segments.to_vec();
    while n > 0 {
        let Some(last) = out.last_mut() else { break };
        if last.len > n {
            last.len -= n;
            break;
        }
        n -= last.len;
        out.pop();
    }
    out
}

/// Fail unless every segment lies in guest memory with `access`.
fn check_memory<M: GuestMemory>(mem: &M, segments: &[Segment], access: Permissions) -> Result<(), RequestError> {
    for s in segments {
        let fits = usize::try_from(s.len).is_ok_and(|len| mem.check_range(s.addr, len, access));
        if !fits {
            return Err(RequestError::GuestMemory { addr: s.addr.0, len: s.len });
        }
    }
    Ok(())
}

/// Read `buf.len()` bytes from the concatenation of `segments`.
fn gather<M: GuestMemory>(mem: &M, segments: &[Segment], buf: &mut [u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for s in segments {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(usize::try_from(s.len).unwrap_or(usize::MAX));
        mem.read_slice(&mut buf[done..done + n], s.addr)
            .map_err(|_| RequestError::GuestMemory { addr: s.addr.0, len: n as u64 })?;
        done += n;
    }
    Ok(())
}

/// Write `data` to the start of the concatenation of `segments` (which holds at least that much).
fn scatter<M: GuestMemory>(mem: &M, segments: &[Segment], data: &[u8]) -> Result<(), RequestError> {
    let mut done = 0;
    for s in segments {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(usize::try_from(s.len).unwrap_or(usize::MAX));
        mem.write_slice(&data[done..done + n], s.addr)
            .map_err(|_| RequestError::GuestMemory { addr: s.addr.0, len: n as u64 })?;
        done += n;
    }
    Ok(())
}

/// The virtio-blk device model. Put it in a [`super::VirtioMmio`].
pub struct VirtioBlock<B> {
    backend: B,
    read_only: bool,
    serial: [u8; BLOCK_SERIAL_LEN],
    /// Disk size in sectors.
    capacity: u64,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    bounce: Vec<u8>,
    warnings: GuestWarnings,
}

impl<B: BlockBackend> VirtioBlock<B> {
    /// A disk over `backend`, read-only or not, whose `GET_ID` answers `serial` (at most 20 bytes,
    /// zero-padded).
    pub fn new(backend: B, read_only: bool, serial: &[u8]) -> Result<Self, VirtioBlockError> {
        if serial.len() > BLOCK_SERIAL_LEN {
            return Err(VirtioBlockError::SerialTooLong(serial.len()));
        }
        let mut padded = [0u8; BLOCK_SERIAL_LEN];
        padded[..serial.len()].copy_from_slice(serial);
        let capacity = backend.len() / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        config[CONFIG_CAPACITY..CONFIG_CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
        config[CONFIG_SEG_MAX..CONFIG_SEG_MAX + 4].copy_from_slice(&BLOCK_SEG_MAX.to_le_bytes());
        Ok(Self {
            backend,
            read_only,
            serial: padded,
            capacity,
            config,
            acked_features: 0,
            bounce: Vec::new(),
            warnings: GuestWarnings::default(),
        })
    }

    /// The backend (to inspect a [`VecBackend`], or to flush on shutdown).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Disk size in 512-byte sectors, as the guest sees it.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the disk refuses writes (and offers `VIRTIO_BLK_F_RO`).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Features the driver acknowledged at activation (0 before, and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Handle one descriptor chain; returns the used length (0 when no status could be written).
    fn handle_chain<M: GuestMemory>(&mut self, chain: DescriptorChain<&M>, mem: &M) -> u32 {
        let head = chain.head_index();
        let descriptors: Vec<Descriptor> = chain.collect();
        // The chain iterator stops early, after a descriptor with NEXT set, on a loop, a chain
        // longer than the queue, a next index past the table, an unreadable descriptor or more
        // than 4 GiB of buffers.
        let Some(last) = descriptors.last().filter(|d| !d.has_next()) else {
            log::log!(
                self.warnings.level(),
                "virtio-blk: request {head}: descriptor chain broken after {} descriptors (loop, too long, bad \
                 index or outside guest memory); dropped without status",
                descriptors.len()
            );
            return 0;
        };
        let status_addr = (last.is_write_only() && last.len() > 0)
            .then(|| last.addr().0.checked_add(u64::from(last.len()) - 1))
            .flatten()
            .map(GuestAddress)
            .filter(|&a| mem.check_range(a, 1, Permissions::Write));
        let Some(status_addr) = status_addr else {
            log::log!(
                self.warnings.level(),
                "virtio-blk: request {head}: no device-writable status byte in guest memory at the end of the \
                 chain; dropped without status"
            );
            return 0;
        };
        let (status, written) = match self.execute(&descriptors, mem) {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(e) => {
                // The backend's I/O error is the cause (`source`), not part of the message.
                let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
                log::log!(self.warnings.level(), "virtio-blk: request {head}: {e}{cause}");
                (e.status(), 0)
            }
        };
        if mem.write_obj(status, status_addr).is_err() {
            log::log!(self.warnings.level(), "virtio-blk: request {head}: status byte could not be written");
            return 0;
        }
        written.saturating_add(1)
    }

    /// Carry out a request whose status byte is known to be writable; returns the data bytes
    /// written into guest memory.
    fn execute<M: GuestMemory>(&mut self, descriptors: &[Descriptor], mem: &M) -> Result<u32, RequestError> {
        let split = descriptors.iter().position(|d| d.is_write_only()).unwrap_or(descriptors.len());
        if descriptors[split..].iter().any(|d| !d.is_write_only()) {
            return Err(RequestError::ReadableAfterWritable);
        }
        let segments = |ds: &[Descriptor]| -> Vec<Segment> {
            ds.iter().filter(|d| d.len() > 0).map(|d| Segment { addr: d.addr(), len: d.len().into() }).collect()
        };
        let readable = segments(&descriptors[..split]);
        let writable = trim_end(&segments(&descriptors[split..]), 1);

        let readable_len = total(&readable);
        if readable_len < HEADER_LEN {
            return Err(RequestError::HeaderTooShort(readable_len));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        gather(mem, &readable, &mut header)?;
        let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let data_out = skip(&readable, HEADER_LEN);
        let data_in = writable;
        let (out_len, in_len) = (total(&data_out), total(&data_in));

        match request_type {
            VIRTIO_BLK_T_IN => {
                if out_len != 0 {
                    return Err(RequestError::ReadableDataForIn(out_len));
                }
                let mut offset = self.disk_range(sector, in_len)?;
                check_memory(mem, &data_in, Permissions::Write)?;
                for s in &data_in {
                    let mut done = 0;
                    while done < s.len {
                        let n = self.bounce_len(s.len - done);
                        let buf = &mut self.bounce[..n];
                        self.backend.read_at(offset, buf)?;
                        let addr = GuestAddress(s.addr.0.wrapping_add(done));
                        mem.write_slice(buf, addr)
                            .map_err(|_| RequestError::GuestMemory { addr: addr.0, len: n as u64 })?;
                        done += n as u64;
                        offset += n as u64;
                    }
                }
                // At most 4 GiB - 1: the whole chain is below 4 GiB and includes the status byte.
                Ok(u32::try_from(in_len).unwrap_or(u32::MAX))
            }
            VIRTIO_BLK_T_OUT => {
                if in_len != 0 {
                    return Err(RequestError::WritableDataForOut(in_len));
                }
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let mut offset = self.disk_range(sector, out_len)?;
                check_memory(mem, &data_out, Permissions::Read)?;
                for s in &data_out {
                    let mut done = 0;
                    while done < s.len {
                        let n = self.bounce_len(s.len - done);
                        let buf = &mut self.bounce[..n];
                        let addr = GuestAddress(s.addr.0.wrapping_add(done));
                        mem.read_slice(buf, addr)
                            .map_err(|_| RequestError::GuestMemory { addr: addr.0, len: n as u64 })?;
                        self.backend.write_at(offset, buf)?;
                        done += n as u64;
                        offset += n as u64;
                    }
                }
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.backend.flush()?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = BLOCK_SERIAL_LEN.min(usize::try_from(in_len).unwrap_or(usize::MAX));
                scatter(mem, &data_in, &self.serial[..n])?;
                Ok(n as u32)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Byte offset of `len` bytes at `sector`, if a whole number of sectors inside the disk.
    fn disk_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if len % SECTOR_SIZE != 0 {
            return Err(RequestError::UnalignedLength(len));
        }
        let out_of_range = || RequestError::OutOfRange { sector, len, capacity: self.capacity };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.capacity * SECTOR_SIZE {
            return Err(out_of_range());
        }
        Ok(offset)
    }

    /// Size the bounce buffer for the next piece of at most `remaining` bytes; returns the size.
    fn bounce_len(&mut self, remaining: u64) -> usize {
        let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(BOUNCE_LEN);
        if self.bounce.len() < n {
            self.bounce.resize(n, 0);
        }
        n
    }
}

impl<B: BlockBackend> VirtioDevice for VirtioBlock<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| self.config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which is not offered.
        log::log!(self.warnings.level(), "virtio-blk: {}-byte config write at {offset:#x} ignored", data.len());
    }

    fn activate(&mut self, acked_features: u64) {
        self.acked_features = acked_features;
    }

    fn process_queue<M: GuestMemory>(&mut self, index: usize, queue: &mut Queue, mem: &M) -> bool {
        if index != 0 {
            return false;
        }
        let mut used = false;
        while let Some(chain) = super::next_chain(queue, mem, &mut self.warnings, "virtio-blk") {
            let head = chain.head_index();
            if head >= queue.size() {
                // There is no such descriptor, and no used element can name it: skip the entry.
                log::log!(self.warnings.level(), "virtio-blk: available ring names descriptor {head}, past the table");
                continue;
            }
            let len = self.handle_chain(chain, mem);
            match queue.add_used(mem, head, len) {
                Ok(()) => used = true,
                Err(e) => log::log!(self.warnings.level(), "virtio-blk: request {head} not returned: {e}"),
            }
        }
        used && queue.needs_notification(mem).unwrap_or(true)
    }

    fn reset(&mut self) {
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::{ro, wo, Buf, Driver, BUFFERS, QUEUE_SIZE, VERSION_1};
    use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL};

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    const DISK_SECTORS: u64 = 64;
    const SERIAL: &[u8] = b"crashvmm-disk-0";

    /// Guest addresses of a request's parts.
    const HDR: u64 = BUFFERS;
    const DATA: u64 = BUFFERS + 0x1000;
    const STATUS: u64 = BUFFERS + 0x800;
    /// Status bytes start as this, so a test sees whether the device wrote one.
    const UNTOUCHED: u8 = 0xee;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    fn disk(read_only: bool) -> Driver<VirtioBlock<VecBackend>> {
        let backend = VecBackend::new(pattern(DISK_SECTORS as usize * 512));
        Driver::new(VirtioBlock::new(backend, read_only, SERIAL).unwrap(), u64::MAX)
    }

    fn header(d: &Driver<VirtioBlock<VecBackend>>, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        d.write_bytes(HDR, &h);
        d.write_bytes(STATUS, &[UNTOUCHED]);
    }

    fn backend(d: &Driver<VirtioBlock<VecBackend>>) -> &[u8] {
        d.dev.device().backend().data()
    }

    /// Submit a request; assert it was returned as used element `n` (1-based count) with
    /// length `len` and an interrupt; return the status byte at STATUS.
    fn run(d: &mut Driver<VirtioBlock<VecBackend>>, bufs: &[Buf], count: u16, len: u32) -> u8 {
        assert!(d.submit(bufs), "interrupt expected");
        assert_eq!(d.dev.interrupt_status() & 1, 1);
        assert_eq!(d.last_used(count), (0, len));
        d.read_byte(STATUS)
    }

    #[test]
    fn features_and_config_space() {
        let mut d = disk(false);
        let acked = d.dev.acked_features();
        assert_eq!(acked, VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX);
        assert_eq!(d.dev.device().acked_features(), acked);
        let mut q = [0u8; 8];
        d.dev.read(0x100, &mut q);
        assert_eq!(u64::from_le_bytes(q), DISK_SECTORS);
        let mut w = [0u8; 4];
        d.dev.read(0x104, &mut w);
        assert_eq!(w, [0; 4], "capacity high word");
        d.dev.read(0x100, &mut w);
        assert_eq!(u32::from_le_bytes(w), DISK_SECTORS as u32);
        d.dev.read(0x10c, &mut w);
        assert_eq!(u32::from_le_bytes(w), 254, "seg_max");
        let mut b = [0xffu8; 1];
        d.dev.read(0x120, &mut b);
        assert_eq!(b, [0]);
        d.dev.read(0x1ff, &mut b);
        assert_eq!(b, [0]);
        // Config writes change nothing.
        assert!(!d.dev.write(0x100, &[0xff; 8], &d.mem.clone()));
        d.dev.read(0x100, &mut q);
        assert_eq!(u64::from_le_bytes(q), DISK_SECTORS);

        let ro_disk = disk(true);
        assert_ne!(ro_disk.dev.acked_features() & 1 << VIRTIO_BLK_F_RO, 0);
        let mut dev = ro_disk.dev;
        let mem = ro_disk.mem;
        assert!(!dev.write(u64::from(VIRTIO_MMIO_DEVICE_FEATURES_SEL), &0u32.to_le_bytes(), &mem));
        let mut f = [0u8; 4];
        dev.read(u64::from(VIRTIO_MMIO_DEVICE_FEATURES), &mut f);
        assert_eq!(u32::from_le_bytes(f), 1 << VIRTIO_BLK_F_RO | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX);
    }

    #[test]
    fn the_transport_with_a_disk_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<crate::virtio::VirtioMmio<VirtioBlock<VecBackend>>>();
    }

    #[test]
    fn partial_last_sector_is_not_exposed() {
        let block = VirtioBlock::new(VecBackend::new(vec![0; 1000]), false, b"").unwrap();
        assert_eq!(block.capacity(), 1);
        let mut q = [0u8; 8];
        block.read_config(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 1);
    }

    #[test]
    fn serial_longer_than_20_bytes_is_refused() {
        let r = VirtioBlock::new(VecBackend::new(vec![]), false, &[b'x'; 21]);
        assert_eq!(r.err(), Some(VirtioBlockError::SerialTooLong(21)));
    }

    #[test]
    fn read_round_trip() {
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_IN, 3);
        // Two data segments, as Linux sends for a request over two pages.
        let status = run(&mut d, &[ro(HDR, 16), wo(DATA, 512), wo(DATA + 0x2000, 1024), wo(STATUS, 1)], 1, 1537);
        assert_eq!(status, OK);
        assert_eq!(d.read_bytes(DATA, 512), backend(&d)[3 * 512..4 * 512]);
        assert_eq!(d.read_bytes(DATA + 0x2000, 1024), backend(&d)[4 * 512..6 * 512]);
        write_reg_ack(&mut d);
    }

    fn write_reg_ack(d: &mut Driver<VirtioBlock<VecBackend>>) {
        let mem = d.mem.clone();
        d.dev.write(u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_INTERRUPT_ACK), &1u32.to_le_bytes(), &mem);
        assert_eq!(d.dev.interrupt_status(), 0);
    }

    #[test]
    fn write_round_trip() {
        let mut d = disk(false);
        let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        d.write_bytes(DATA, &data);
        header(&d, VIRTIO_BLK_T_OUT, 10);
        let status = run(&mut d, &[ro(HDR, 16), ro(DATA, 1024), wo(STATUS, 1)], 1, 1);
        assert_eq!(status, OK);
        assert_eq!(&backend(&d)[10 * 512..12 * 512], &data[..]);
        // Neighbours untouched.
        assert_eq!(&backend(&d)[9 * 512..10 * 512], &pattern(DISK_SECTORS as usize * 512)[9 * 512..10 * 512]);
        assert_eq!(&backend(&d)[12 * 512..13 * 512], &pattern(DISK_SECTORS as usize * 512)[12 * 512..13 * 512]);

        // Read it back through the queue.
        header(&d, VIRTIO_BLK_T_IN, 10);
        d.write_bytes(DATA + 0x4000, &[0; 1024]);
        let status = run(&mut d, &[ro(HDR, 16), wo(DATA + 0x4000, 1024), wo(STATUS, 1)], 2, 1025);
        assert_eq!(status, OK);
        assert_eq!(d.read_bytes(DATA + 0x4000, 1024), data);
    }

    #[test]
    fn the_last_sector_is_accessible() {
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 512), wo(STATUS, 1)], 1, 513), OK);
        assert_eq!(d.read_bytes(DATA, 512), backend(&d)[(DISK_SECTORS as usize - 1) * 512..]);
    }

    #[test]
    fn any_descriptor_layout_works() {
        let mut d = disk(false);
        // Header split over two descriptors, data and status in one writable descriptor.
        header(&d, VIRTIO_BLK_T_IN, 1);
        let status = run(&mut d, &[ro(HDR, 10), ro(HDR + 10, 6), wo(DATA, 513)], 1, 513);
        assert_eq!(status, UNTOUCHED, "the status is the last byte of the data descriptor");
        assert_eq!(d.read_byte(DATA + 512), OK);
        assert_eq!(d.read_bytes(DATA, 512), backend(&d)[512..1024]);
        // Header and data in one readable descriptor.
        d.write_bytes(HDR + 16, &[0x5a; 512]);
        header(&d, VIRTIO_BLK_T_OUT, 2);
        assert_eq!(run(&mut d, &[ro(HDR, 16 + 512), ro(HDR, 0), wo(STATUS, 1)], 2, 1), OK);
        assert_eq!(&backend(&d)[1024..1536], &[0x5a; 512][..]);
    }

    #[test]
    fn zero_length_read_is_ok() {
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(STATUS, 1)], 1, 1), OK);
    }

    #[test]
    fn flush_calls_the_backend() {
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(STATUS, 1)], 1, 1), OK);
        assert_eq!(d.dev.device().backend().flushes(), 1);
        // Read-only disks flush too (a no-op for them, but not an error).
        let mut r = disk(true);
        header(&r, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(run(&mut r, &[ro(HDR, 16), wo(STATUS, 1)], 1, 1), OK);
    }

    #[test]
    fn get_id_returns_the_serial() {
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_GET_ID, 0);
        d.write_bytes(DATA, &[0xff; 32]);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 20), wo(STATUS, 1)], 1, 21), OK);
        let mut expected = SERIAL.to_vec();
        expected.resize(20, 0);
        assert_eq!(d.read_bytes(DATA, 20), expected);
        assert_eq!(d.read_byte(DATA + 20), 0xff);
        // A shorter buffer gets a truncated serial.
        header(&d, VIRTIO_BLK_T_GET_ID, 0);
        d.write_bytes(DATA, &[0xff; 32]);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 4), wo(STATUS, 1)], 2, 5), OK);
        assert_eq!(d.read_bytes(DATA, 5), [b'c', b'r', b'a', b's', 0xff]);
    }

    #[test]
    fn unknown_request_types_are_unsupported() {
        let mut d = disk(false);
        for (n, t) in [2u32, 11, 13, 0x8000_0000, u32::MAX].into_iter().enumerate() {
            header(&d, t, 0);
            assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 512), wo(STATUS, 1)], n as u16 + 1, 1), UNSUPP);
        }
        assert_eq!(d.dev.device().backend().flushes(), 0);
    }

    #[test]
    fn several_requests_in_one_notify() {
        let mut d = disk(false);
        let mut h = [0u8; 16];
        for i in 0..3u64 {
            h[8..16].copy_from_slice(&i.to_le_bytes());
            d.write_bytes(HDR + 0x20 * i, &h);
            let first = 3 * i as u16;
            d.add_chain(first, &[ro(HDR + 0x20 * i, 16), wo(DATA + 0x200 * i, 512), wo(STATUS + i, 1)]);
            d.publish(first);
        }
        assert!(d.notify(0));
        assert_eq!(d.used_idx(), 3);
        for i in 0..3u16 {
            assert_eq!(d.used(i), (3 * u32::from(i), 513));
            assert_eq!(d.read_byte(STATUS + u64::from(i)), OK);
        }
        assert_eq!(d.read_bytes(DATA, 1536), backend(&d)[..1536]);
    }

    #[test]
    fn out_of_range_sectors_fail() {
        let mut d = disk(false);
        let before = backend(&d).to_vec();
        let cases: [(u32, u64, u32); 6] = [
            (VIRTIO_BLK_T_IN, DISK_SECTORS, 512),
            (VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 1024),
            (VIRTIO_BLK_T_IN, u64::MAX, 512),
            (VIRTIO_BLK_T_IN, u64::MAX / 512, 512),
            (VIRTIO_BLK_T_OUT, DISK_SECTORS, 512),
            (VIRTIO_BLK_T_OUT, u64::MAX / 512 + 1, 512),
        ];
        for (n, (t, sector, len)) in cases.into_iter().enumerate() {
            header(&d, t, sector);
            d.write_bytes(DATA, &[0xcc; 1024]);
            let data = if t == VIRTIO_BLK_T_IN { wo(DATA, len) } else { ro(DATA, len) };
            assert_eq!(run(&mut d, &[ro(HDR, 16), data, wo(STATUS, 1)], n as u16 + 1, 1), IOERR, "case {n}");
            assert_eq!(d.read_bytes(DATA, 1024), [0xcc; 1024], "case {n}: guest memory untouched");
        }
        assert_eq!(backend(&d), before);
    }

    #[test]
    fn lengths_not_a_multiple_of_512_fail() {
        let mut d = disk(false);
        let before = backend(&d).to_vec();
        header(&d, VIRTIO_BLK_T_IN, 0);
        d.write_bytes(DATA, &[0xcc; 1024]);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 511), wo(STATUS, 1)], 1, 1), IOERR);
        assert_eq!(d.read_bytes(DATA, 511), [0xcc; 511]);
        header(&d, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), ro(DATA, 512), ro(DATA, 1), wo(STATUS, 1)], 2, 1), IOERR);
        assert_eq!(backend(&d), before);
    }

    #[test]
    fn short_header_fails() {
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 8), wo(STATUS, 1)], 1, 1), IOERR);
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[wo(DATA, 512), wo(STATUS, 1)], 2, 1), IOERR);
        assert_eq!(d.dev.device().backend().flushes(), 0);
    }

    #[test]
    fn missing_or_read_only_status_drops_the_request() {
        let mut d = disk(false);
        let before = backend(&d).to_vec();
        d.write_bytes(DATA, &[0x11; 512]);
        // OUT without a status descriptor: the last descriptor is device-readable.
        header(&d, VIRTIO_BLK_T_OUT, 0);
        assert!(d.submit(&[ro(HDR, 16), ro(DATA, 512)]));
        assert_eq!(d.last_used(1), (0, 0));
        // A device-readable "status" descriptor.
        assert!(d.submit(&[ro(HDR, 16), ro(DATA, 512), ro(STATUS, 1)]));
        assert_eq!(d.last_used(2), (0, 0));
        assert_eq!(d.read_byte(STATUS), UNTOUCHED);
        // A zero-length status descriptor.
        assert!(d.submit(&[ro(HDR, 16), ro(DATA, 512), wo(STATUS, 0)]));
        assert_eq!(d.last_used(3), (0, 0));
        // The header alone.
        assert!(d.submit(&[ro(HDR, 16)]));
        assert_eq!(d.last_used(4), (0, 0));
        assert_eq!(d.read_byte(STATUS), UNTOUCHED);
        assert_eq!(backend(&d), before);
    }

    #[test]
    fn in_with_device_readable_data_fails() {
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_IN, 0);
        d.write_bytes(DATA, &[0xcc; 512]);
        assert_eq!(run(&mut d, &[ro(HDR, 16), ro(DATA, 512), wo(STATUS, 1)], 1, 1), IOERR);
        assert_eq!(d.read_bytes(DATA, 512), [0xcc; 512]);
    }

    #[test]
    fn out_with_device_writable_data_fails() {
        let mut d = disk(false);
        let before = backend(&d).to_vec();
        header(&d, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 512), wo(STATUS, 1)], 1, 1), IOERR);
        assert_eq!(backend(&d), before);
    }

    #[test]
    fn readable_after_writable_fails() {
        let mut d = disk(false);
        let before = backend(&d).to_vec();
        header(&d, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 512), ro(DATA, 512), wo(STATUS, 1)], 1, 1), IOERR);
        assert_eq!(backend(&d), before);
    }

    #[test]
    fn write_to_read_only_disk_fails() {
        let mut d = disk(true);
        let before = backend(&d).to_vec();
        header(&d, VIRTIO_BLK_T_OUT, 0);
        d.write_bytes(DATA, &[0x77; 512]);
        assert_eq!(run(&mut d, &[ro(HDR, 16), ro(DATA, 512), wo(STATUS, 1)], 1, 1), IOERR);
        assert_eq!(backend(&d), before);
        // Reads still work.
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 512), wo(STATUS, 1)], 2, 513), OK);
        assert_eq!(d.read_bytes(DATA, 512), before[..512]);
    }

    #[test]
    fn buffers_outside_guest_memory_fail() {
        let mut d = disk(false);
        let before = backend(&d).to_vec();
        let outside = 0xdead_0000_0000;
        // Data outside memory, for a read and a write.
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(outside, 512), wo(STATUS, 1)], 1, 1), IOERR);
        header(&d, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), ro(outside, 512), wo(STATUS, 1)], 2, 1), IOERR);
        // Data straddling the end of memory: nothing is written, not even the part inside.
        let end = crate::virtio::test_util::MEM_SIZE;
        d.write_bytes(end - 512, &[0xcc; 512]);
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(end - 512, 1024), wo(STATUS, 1)], 3, 1), IOERR);
        assert_eq!(d.read_bytes(end - 512, 512), [0xcc; 512]);
        // Data whose end wraps around the address space.
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(u64::MAX - 511, 1024), wo(STATUS, 1)], 4, 1), IOERR);
        // Header outside memory.
        assert_eq!(run(&mut d, &[ro(outside, 16), wo(STATUS, 1)], 5, 1), IOERR);
        // Status byte outside memory, or at the very end of the address space: no status at all.
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert!(d.submit(&[ro(HDR, 16), wo(DATA, 512), wo(outside, 1)]));
        assert_eq!(d.last_used(6), (0, 0));
        assert!(d.submit(&[ro(HDR, 16), wo(DATA, 512), wo(u64::MAX, 2)]));
        assert_eq!(d.last_used(7), (0, 0));
        assert_eq!(backend(&d), before);
    }

    #[test]
    fn descriptor_loops_and_bad_links_drop_the_request() {
        use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
        let (next, write) = (NEXT as u16, WRITE as u16);
        let mut d = disk(false);
        let before = backend(&d).to_vec();
        header(&d, VIRTIO_BLK_T_OUT, 0);
        // 0 -> 1 -> 0 -> ...
        d.set_desc(0, HDR, 16, next, 1);
        d.set_desc(1, DATA, 512, next, 0);
        d.publish(0);
        assert!(d.notify(0));
        assert_eq!(d.last_used(1), (0, 0));
        // A self loop on a writable descriptor.
        d.set_desc(0, HDR, 16, next, 1);
        d.set_desc(1, STATUS, 1, next | write, 1);
        d.publish(0);
        assert!(d.notify(0));
        assert_eq!(d.last_used(2), (0, 0));
        assert_eq!(d.read_byte(STATUS), UNTOUCHED);
        // A chain longer than the queue: all 256 descriptors, each linking to the next, the last
        // back to the first.
        for i in 0..QUEUE_SIZE {
            d.set_desc(i, DATA, 512, next, (i + 1) % QUEUE_SIZE);
        }
        d.set_desc(0, HDR, 16, next, 1);
        d.publish(0);
        assert!(d.notify(0));
        assert_eq!(d.last_used(3), (0, 0));
        // A next index past the table.
        d.set_desc(0, HDR, 16, next, 1);
        d.set_desc(1, STATUS, 1, next | write, 300);
        d.publish(0);
        assert!(d.notify(0));
        assert_eq!(d.last_used(4), (0, 0));
        assert_eq!(d.read_byte(STATUS), UNTOUCHED);
        assert_eq!(backend(&d), before);
        // The device still works afterwards.
        header(&d, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(STATUS, 1)], 5, 1), OK);
    }

    #[test]
    fn a_full_length_chain_is_fine() {
        // 1 header + 254 data segments + status = 256 descriptors: exactly the queue.
        let disk = VecBackend::new(pattern(256 * 512));
        let mut d = Driver::new(VirtioBlock::new(disk, false, SERIAL).unwrap(), u64::MAX);
        header(&d, VIRTIO_BLK_T_IN, 0);
        let mut bufs = vec![ro(HDR, 16)];
        bufs.extend((0..254).map(|i| wo(DATA + 512 * i, 512)));
        bufs.push(wo(STATUS, 1));
        assert_eq!(run(&mut d, &bufs, 1, 254 * 512 + 1), OK);
        assert_eq!(d.read_bytes(DATA, 254 * 512), backend(&d)[..254 * 512]);
    }

    #[test]
    fn bad_head_index_and_avail_index_are_survived() {
        let mut d = disk(false);
        // A head index past the table: nothing to return it as.
        d.publish(300);
        assert!(!d.notify(0));
        assert_eq!(d.used_idx(), 0);
        // The available index jumps more than a queue ahead: the queue is not processed.
        d.set_avail_idx(1 + QUEUE_SIZE + 5);
        assert!(!d.notify(0));
        assert_eq!(d.used_idx(), 0);
    }

    #[test]
    fn huge_lengths_fail_without_allocating() {
        let mut d = disk(false);
        // Almost 4 GiB of data, a multiple of 512: out of the disk.
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 0xffff_fe00), wo(STATUS, 1)], 1, 1), IOERR);
        // Chains over 4 GiB in all are broken chains.
        assert!(d.submit(&[ro(HDR, 16), wo(DATA, 0xffff_fe00), wo(DATA, 0xffff_fe00), wo(STATUS, 1)]));
        assert_eq!(d.last_used(2), (0, 0));

        // A disk big enough for the request: guest memory is what stops it.
        let mut big = Driver::new(VirtioBlock::new(Huge, false, b"").unwrap(), u64::MAX);
        header_for(&big, VIRTIO_BLK_T_IN, 8);
        assert!(big.submit(&[ro(HDR, 16), wo(DATA, 0xffff_fe00), wo(STATUS, 1)]));
        assert_eq!(big.last_used(1), (0, 1));
        assert_eq!(big.read_byte(STATUS), IOERR);
        header_for(&big, VIRTIO_BLK_T_OUT, 8);
        assert!(big.submit(&[ro(HDR, 16), ro(DATA, 0xffff_fe00), wo(STATUS, 1)]));
        assert_eq!(big.read_byte(STATUS), IOERR);
        // A 1 MiB read from it goes through in bounce-buffer pieces.
        header_for(&big, VIRTIO_BLK_T_IN, 8);
        assert!(big.submit(&[ro(HDR, 16), wo(0x10_0000, 0x10_0000), wo(STATUS, 1)]));
        assert_eq!(big.last_used(3), (0, 0x10_0001));
        assert_eq!(big.read_byte(STATUS), OK);
        assert_eq!(big.read_bytes(0x10_0000 + 0xffff, 2), [0x5a, 0x5a]);
    }

    /// A 1 PiB disk of 0x5a bytes that must only ever be asked for pieces of the bounce size.
    struct Huge;

    impl BlockBackend for Huge {
        fn len(&self) -> u64 {
            1 << 50
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            assert!(buf.len() <= BOUNCE_LEN && offset + buf.len() as u64 <= self.len());
            buf.fill(0x5a);
            Ok(())
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            assert!(data.len() <= BOUNCE_LEN && offset + data.len() as u64 <= self.len());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn header_for<D: VirtioDevice>(d: &Driver<D>, request_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        d.write_bytes(HDR, &h);
        d.write_bytes(STATUS, &[UNTOUCHED]);
    }

    /// A backend whose every operation fails.
    struct Broken;

    impl BlockBackend for Broken {
        fn len(&self) -> u64 {
            1 << 20
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::other("read failed"))
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
            Err(io::Error::other("write failed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::other("flush failed"))
        }
    }

    #[test]
    fn backend_errors_are_ioerr() {
        let mut d = Driver::new(VirtioBlock::new(Broken, false, b"").unwrap(), u64::MAX);
        for (n, (t, data)) in
            [(VIRTIO_BLK_T_IN, wo(DATA, 512)), (VIRTIO_BLK_T_OUT, ro(DATA, 512))].into_iter().enumerate()
        {
            header_for(&d, t, 0);
            assert!(d.submit(&[ro(HDR, 16), data, wo(STATUS, 1)]));
            assert_eq!(d.last_used(n as u16 + 1), (0, 1));
            assert_eq!(d.read_byte(STATUS), IOERR);
        }
        header_for(&d, VIRTIO_BLK_T_FLUSH, 0);
        assert!(d.submit(&[ro(HDR, 16), wo(STATUS, 1)]));
        assert_eq!(d.read_byte(STATUS), IOERR);
    }

    #[test]
    fn notify_before_the_queue_is_ready_does_nothing() {
        use crate::virtio::test_util::{read_reg, write_reg, AVAIL_RING, DESC_TABLE, USED_RING};
        use virtio_bindings::virtio_mmio::*;
        let block = VirtioBlock::new(VecBackend::new(vec![0; 4096]), false, b"").unwrap();
        let mut d = Driver::new(block, u64::MAX);
        // Reset, then a driver that goes to DRIVER_OK with the queue configured but not ready.
        let mem = d.mem.clone();
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_STATUS, 0);
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_STATUS, 3);
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_STATUS, 0xb);
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC_TABLE as u32);
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL_RING as u32);
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_QUEUE_USED_LOW, USED_RING as u32);
        mem.write_slice(&[0; 0x2000], GuestAddress(AVAIL_RING)).unwrap();
        header_for(&d, VIRTIO_BLK_T_FLUSH, 0);
        d.add_chain(0, &[ro(HDR, 16), wo(STATUS, 1)]);
        mem.write_obj(0u16, GuestAddress(AVAIL_RING + 4)).unwrap();
        d.set_avail_idx(1);
        assert!(!d.notify(0), "FEATURES_OK only");
        write_reg(&mut d.dev, &mem, VIRTIO_MMIO_STATUS, 0xf);
        assert_eq!(read_reg(&mut d.dev, VIRTIO_MMIO_STATUS), 0xf);
        assert!(!d.notify(0), "queue not ready");
        assert!(!d.notify(1), "no queue 1");
        assert!(!d.notify(u32::MAX), "no queue 0xffffffff");
        assert_eq!(d.used_idx(), 0);
        assert_eq!(d.read_byte(STATUS), UNTOUCHED);
        assert_eq!(d.dev.device().backend().flushes(), 0);
        assert_eq!(d.dev.interrupt_status(), 0);
    }

    #[test]
    fn requests_after_reset_and_reinit() {
        // What a kdump kernel does: the device is reset and brought up again with new rings while
        // the old ones still hold the crashed kernel's entries.
        let mut d = disk(false);
        header(&d, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 512), wo(STATUS, 1)], 1, 513), OK);
        d.handshake(u64::MAX);
        assert_eq!(d.dev.queue(0).unwrap().next_avail(), 0);
        header(&d, VIRTIO_BLK_T_IN, 1);
        assert_eq!(run(&mut d, &[ro(HDR, 16), wo(DATA, 512), wo(STATUS, 1)], 1, 513), OK);
        assert_eq!(d.read_bytes(DATA, 512), backend(&d)[512..1024]);
    }
}
