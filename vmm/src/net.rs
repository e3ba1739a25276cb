//! `--net tap=NAME[,mac=MAC][,transport=pci|mmio]`: a virtio-net device
//! ([`devices::virtio::VirtioNet`]) on a TAP interface, its frames moved by a `net` thread of its
//! own, never by a vCPU.
//!
//! - [`Tap`]: opened once per session (before the vmm thread confines itself), with
//!   `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte vnet header (`TUNSETVNETHDRSZ`), so a
//!   frame and its `virtio_net_hdr_v1` move as one, checksum and segmentation requests
//!   included. The offloads of frames it hands the guest (`TUNSETOFFLOAD`) are none until the
//!   driver accepts some: the device model sets them when the driver activates the device and
//!   clears them at its reset (on the vCPU thread that wrote the status register). An
//!   existing interface is attached to; a missing one is created when crashvmm may
//!   (`CAP_NET_ADMIN`) and goes away with it; the log says which.
//! - [`NetDevice`]: the device behind its transport ([`NetTransport`]), shared by the vCPU
//!   threads (register accesses) and the net thread. virtio-pci (the default): a function on PCI
//!   bus 0 ([`devices::pci::PciBus`]) whose queues and configuration changes each signal an
//!   MSI-X vector of their own (`KVM_SIGNAL_MSI`), so an interrupt costs the guest no exit to
//!   crashvmm. virtio-mmio: a window in the DSDT and an edge on an IOAPIC pin (`KVM_IRQ_LINE`),
//!   whose status the driver reads and acknowledges with two exits per interrupt. Either way a
//!   queue notification does no work on the vCPU: KVM signals the net thread's eventfd for
//!   that queue (an ioeventfd, which follows the function's BAR when the guest moves it), or
//!   the register write exits and the vCPU kicks the same eventfd.
//! - [`NetThread`]: per boot, `poll` on the TAP (only while a received frame has somewhere to
//!   go), the two queues' kicks and its stop eventfd; sends what the transmit queue holds,
//!   receives what the TAP has, raises the interrupt ([`NetIrq`]). A frame the receive queue
//!   cannot take yet waits for the driver's next receive notification, and the TAP is not read
//!   meanwhile (its own queue holds the rest, and drops when full, as a NIC's ring does). A TAP
//!   that fails (its interface deleted) turns the link down (a configuration interrupt) and is
//!   not polled again; frames sent to it are dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::bus::MmioDevice;
use devices::pci::PciFunction;
use devices::virtio::net::{MAX_FRAME, RX_QUEUE, TX_QUEUE};
use devices::virtio::{
    MsiMessage, NeedsInterrupt, NetBackend, Offloads, VirtioCommon, VirtioMmio, VirtioNet, VirtioPci,
};
use kvm_bindings::kvm_msi;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use thiserror::Error;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::PtrGuard;
use vm_memory::{GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_iow_nr;

use crate::events::{Event, NetDropped};
use crate::layout::{PCI_MMIO_SIZE, PCI_MMIO_START};
use crate::seccomp::{self, ThreadKind, TUNSETOFFLOAD};
use crate::sync::lock;

ioctl_iow_nr!(TUNSETIFF, b'T' as u32, 202, libc::c_int);
// TUNSETOFFLOAD's flags (include/uapi/linux/if_tun.h).
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
ioctl_iow_nr!(TUNSETVNETHDRSZ, b'T' as u32, 216, libc::c_int);

/// `IFNAMSIZ`: an interface name and its NUL.
const IFNAMSIZ: usize = 16;
/// `virtio_net_hdr_v1`, as the device model moves frames.
const VNET_HDR_LEN: libc::c_int = devices::virtio::net::NET_HDR_LEN as libc::c_int;

#[derive(Debug, Error)]
pub enum NetError {
    #[error("TAP interface name {0:?}: 1 to 15 bytes of letters, digits, '-', '_' and '.'")]
    Name(String),
    #[error("cannot open /dev/net/tun")]
    Open(#[source] io::Error),
    #[error("cannot attach to TAP interface {name} (it must be a TAP this user may use, or crashvmm needs CAP_NET_ADMIN to create it)")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TAP interface {name}: cannot {what}")]
    Setup {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the virtio transport")]
    Virtio(#[source] devices::virtio::VirtioError),
    #[error("PCI bus 0 has no free slot for another network device")]
    PciFull,
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the name and flags TUNSETIFF reads.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP interface.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attach to the TAP interface `name`, or create it when it does not exist and crashvmm may.
    pub fn open(name: &str) -> Result<Self, NetError> {
        let valid = !name.is_empty()
            && name.len() < IFNAMSIZ
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(NetError::Name(name.to_owned()));
        }
        let existed = Path::new("/sys/class/net").join(name).exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(NetError::Open)?;
        let mut req = IfReq { name: [0; IFNAMSIZ], flags: 0, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads a struct ifreq; `req` has its layout (name, flags, padding to
        // its 40 bytes) and outlives the call; the descriptor is ours.
        let r = unsafe { ioctl_with_ref(&file, TUNSETIFF(), &req) };
        if r < 0 {
            return Err(NetError::Attach { name: name.to_owned(), source: io::Error::last_os_error() });
        }
        let setup = |what, r: libc::c_int| match r {
            0.. => Ok(()),
            _ => Err(NetError::Setup { name: name.to_owned(), what, source: io::Error::last_os_error() }),
        };
        let len = VNET_HDR_LEN;
        // SAFETY: TUNSETVNETHDRSZ reads one int at the pointer; `len` outlives the call.
        let r = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ(), &len) };
        setup("set its vnet header size", r)?;
        // SAFETY: TUNSETOFFLOAD takes its flags by value; 0 turns every offload off (until a
        // driver accepts some).
        let r = unsafe { ioctl_with_val(&file, TUNSETOFFLOAD(), 0) };
        setup("turn its offloads off", r)?;
        if existed {
            log::info!("net: attached to TAP interface {name}");
        } else {
            log::info!("net: created TAP interface {name} (it goes away when crashvmm ends)");
        }
        Ok(Self { file, name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hand the guest only frames with these offloads (`TUNSETOFFLOAD`).
    pub fn set_offloads(&self, offloads: Offloads) -> io::Result<()> {
        let flags = [(offloads.csum, TUN_F_CSUM), (offloads.tso4, TUN_F_TSO4), (offloads.tso6, TUN_F_TSO6)]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |f, (_, flag)| f | flag);
        // SAFETY: TUNSETOFFLOAD takes its flags by value; the descriptor is ours.
        match unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), flags) } {
            0.. => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

/// The device's way out: writes to the TAP, a frame with its vnet header in one `writev`
/// straight from guest memory.
pub struct TapBackend(Arc<Tap>);

impl NetBackend for TapBackend {
    fn send<S: BitmapSlice>(&mut self, frame: &[VolatileSlice<'_, S>]) -> io::Result<()> {
        let guards: Vec<PtrGuard> = frame.iter().map(VolatileSlice::ptr_guard).collect();
        let iov: Vec<libc::iovec> =
            guards.iter().map(|g| libc::iovec { iov_base: g.as_ptr().cast_mut().cast(), iov_len: g.len() }).collect();
        let len: usize = iov.iter().map(|v| v.iov_len).sum();
        let count = libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: each iovec names a slice of guest memory, mapped while `guards` lives; writev
        // only reads it, and the descriptor is ours.
        match unsafe { libc::writev(self.0.file.as_raw_fd(), iov.as_ptr(), count) } {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize == len => Ok(()),
            n => Err(io::Error::other(format!("short TAP write: {n} of {len} bytes"))),
        }
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.0.set_offloads(offloads)
    }
}

/// A network device, with the TAP its thread reads.
pub type NetSlot = (Arc<Mutex<NetDevice>>, Arc<Tap>);

/// The device model as a network device's transport holds it.
pub type Net = VirtioNet<TapBackend>;

/// How the guest reaches a network device (`--net ...,transport=`).
pub enum NetTransport {
    /// A virtio-mmio window, interrupting on an IOAPIC pin (`gsi`).
    Mmio { regs: VirtioMmio<Net>, gsi: u32 },
    /// A PCI function on bus 0, interrupting with MSI-X.
    Pci(Box<VirtioPci<Net>>),
}

impl Deref for NetTransport {
    type Target = VirtioCommon<Net>;
    fn deref(&self) -> &VirtioCommon<Net> {
        match self {
            NetTransport::Mmio { regs, .. } => regs,
            NetTransport::Pci(p) => p,
        }
    }
}

impl DerefMut for NetTransport {
    fn deref_mut(&mut self) -> &mut VirtioCommon<Net> {
        match self {
            NetTransport::Mmio { regs, .. } => regs,
            NetTransport::Pci(p) => p,
        }
    }
}

/// What the driver is interrupted for.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Queue(usize),
    Config,
}

/// A virtio-net device: on the MMIO bus (virtio-mmio) or the PCI bus (virtio-pci).
pub struct NetDevice {
    pub transport: NetTransport,
    /// The net thread's kicks, by queue.
    kicks: [EventFd; 2],
    mem: GuestMemoryMmap,
    irq: NetIrq,
    /// virtio-pci: where the kicks' ioeventfds are registered (BAR 0's base), if they are.
    notify_base: Option<u64>,
}

/// How a network device interrupts the guest.
pub enum NetIrq {
    /// Through KVM, by the thread that raises it (the net thread, nearly always), which KVM
    /// delivers within the call: an edge on an IOAPIC pin (`KVM_IRQ_LINE` up, then down) or an
    /// MSI (`KVM_SIGNAL_MSI`). An irqfd would not: KVM injects only MSI routes from the
    /// eventfd's wakeup and hands an IOAPIC pin to a kernel worker, one more wakeup and context
    /// switch on every interrupt's way. Raisers hold the device's lock, so two pulses never
    /// overlap (an edge each).
    Kvm(Arc<VmFd>),
    /// An eventfd a test waits on, without a VM.
    #[cfg(test)]
    Eventfd(EventFd),
}

impl NetIrq {
    fn pulse(&self, gsi: u32) -> io::Result<()> {
        match self {
            NetIrq::Kvm(vm) => {
                for level in [true, false] {
                    vm.set_irq_line(gsi, level)?;
                }
                Ok(())
            }
            #[cfg(test)]
            NetIrq::Eventfd(fd) => fd.write(1),
        }
    }

    fn msi(&self, m: MsiMessage) -> io::Result<()> {
        match self {
            NetIrq::Kvm(vm) => {
                let msi = kvm_msi {
                    address_lo: m.address as u32,
                    address_hi: (m.address >> 32) as u32,
                    data: m.data,
                    ..Default::default()
                };
                match vm.signal_msi(msi)? {
                    // 0: the guest blocks it (its APIC is disabled), as a real message would be lost.
                    0.. => Ok(()),
                    _ => Err(io::Error::other("KVM_SIGNAL_MSI failed")),
                }
            }
            #[cfg(test)]
            NetIrq::Eventfd(fd) => fd.write(1),
        }
    }
}

impl NetDevice {
    /// The device for `tap` with `mac` behind virtio-mmio, interrupting on `gsi` through `irq`;
    /// `kicks` are the queues' notifications.
    pub fn mmio(
        tap: Arc<Tap>,
        mac: [u8; 6],
        mem: GuestMemoryMmap,
        irq: NetIrq,
        gsi: u32,
        kicks: [EventFd; 2],
    ) -> Result<Self, NetError> {
        let regs = VirtioMmio::new(VirtioNet::new(TapBackend(tap), mac)).map_err(NetError::Virtio)?;
        Ok(Self { transport: NetTransport::Mmio { regs, gsi }, kicks, mem, irq, notify_base: None })
    }

    /// The device for `tap` with `mac` as a PCI function whose BAR 0 is at `bar`, signalling
    /// through `irq`; its notifications ioeventfds on `kicks` there when KVM takes them (else
    /// they exit to the vCPU, which kicks the same eventfds: slower, never wrong).
    pub fn pci(
        tap: Arc<Tap>,
        mac: [u8; 6],
        mem: GuestMemoryMmap,
        irq: NetIrq,
        bar: u32,
        kicks: [EventFd; 2],
    ) -> Result<Self, NetError> {
        let function = VirtioPci::new(VirtioNet::new(TapBackend(tap), mac), bar).map_err(NetError::Virtio)?;
        let mut dev = Self { transport: NetTransport::Pci(Box::new(function)), kicks, mem, irq, notify_base: None };
        dev.move_notifications();
        Ok(dev)
    }

    /// The `net_counters` record of device `index` (`netN`) for the boot so far.
    pub fn counters_event(&self, index: usize) -> Event {
        let c = self.transport.device().counters();
        Event::NetCounters {
            device: format!("net{index}"),
            tap: self.transport.device().backend().0.name().to_string(),
            tx_frames: c.tx_frames,
            tx_bytes: c.tx_bytes,
            rx_frames: c.rx_frames,
            rx_bytes: c.rx_bytes,
            dropped: NetDropped {
                tx_malformed: c.tx_malformed,
                tx_too_large: c.tx_too_large,
                tx_backend: c.tx_backend,
                rx_malformed: c.rx_malformed,
                rx_too_large: c.rx_too_large,
                rx_offload: c.rx_offload,
                rx_held: c.rx_held,
            },
        }
    }

    fn interrupt(&mut self, cause: Cause) {
        let r = match &mut self.transport {
            NetTransport::Mmio { gsi, .. } => self.irq.pulse(*gsi),
            NetTransport::Pci(p) => {
                let message = match cause {
                    Cause::Queue(index) => p.queue_interrupt(index),
                    Cause::Config => p.config_interrupt(),
                };
                message.map_or(Ok(()), |m| self.irq.msi(m))
            }
        };
        if let Err(e) = r {
            log::warn!("virtio-net: cannot raise the interrupt: {e}");
        }
    }

    fn send_messages(&self, messages: Vec<MsiMessage>) {
        for m in messages {
            if let Err(e) = self.irq.msi(m) {
                log::warn!("virtio-net: cannot raise the interrupt: {e}");
            }
        }
    }

    /// Kick the net thread for queue `index` (a notification that reached the VMM).
    fn kick(&self, index: usize) {
        match self.kicks.get(index) {
            Some(k) => {
                let _ = k.write(1);
            }
            None => log::debug!("virtio-net: notify for queue {index} ignored"),
        }
    }

    /// virtio-pci: keep the notification ioeventfds where BAR 0 is now (none while the
    /// function decodes no memory, or while its BAR lies outside the PCI window, where the bus
    /// hands it no access either).
    fn move_notifications(&mut self) {
        let NetTransport::Pci(p) = &self.transport else { return };
        // Refutable in tests (an eventfd, no VM).
        #[allow(irrefutable_let_patterns)]
        let NetIrq::Kvm(vm) = &self.irq
        else {
            return;
        };
        let inside = |&(base, len): &(u64, u64)| base >= PCI_MMIO_START && base + len <= PCI_MMIO_START + PCI_MMIO_SIZE;
        let base = p.bar_window().filter(inside).map(|(base, _)| base);
        if base == self.notify_base {
            return;
        }
        let at = |base: u64, q: usize| IoEventAddress::Mmio(base + VirtioPci::<Net>::notify_offset(q));
        if let Some(old) = self.notify_base.take() {
            for (q, kick) in self.kicks.iter().enumerate() {
                if let Err(e) = vm.unregister_ioevent(kick, &at(old, q), NoDatamatch) {
                    log::warn!("virtio-net: cannot remove queue {q}'s ioeventfd at {old:#x}: {e}");
                }
            }
        }
        let Some(new) = base else { return };
        for (q, kick) in self.kicks.iter().enumerate() {
            if let Err(e) = vm.register_ioevent(kick, &at(new, q), NoDatamatch) {
                log::info!("virtio-net: no ioeventfd for queue {q} ({e}): its notifications exit to the vCPU");
                return;
            }
        }
        self.notify_base = Some(new);
    }
}

impl MmioDevice for NetDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match &mut self.transport {
            NetTransport::Mmio { regs, .. } => regs.read(offset, data),
            NetTransport::Pci(_) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let NetTransport::Mmio { regs, .. } = &mut self.transport else { return };
        if offset == u64::from(VIRTIO_MMIO_QUEUE_NOTIFY) && data.len() == 4 {
            // The net thread does the work (an ioeventfd would have woken it without an exit).
            self.kick(u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize);
            return;
        }
        if regs.write(offset, data, &self.mem) {
            self.interrupt(Cause::Queue(0));
        }
    }
}

impl PciFunction for NetDevice {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        match &self.transport {
            NetTransport::Pci(p) => p.read_config(offset, data),
            NetTransport::Mmio { .. } => data.fill(0xff),
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let NetTransport::Pci(p) = &mut self.transport else { return };
        let messages = p.write_config(offset, data);
        self.send_messages(messages);
        self.move_notifications();
    }

    fn bar_window(&self) -> Option<(u64, u64)> {
        match &self.transport {
            NetTransport::Pci(p) => p.bar_window(),
            NetTransport::Mmio { .. } => None,
        }
    }

    fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
        match &mut self.transport {
            NetTransport::Pci(p) => p.read_bar(offset, data),
            NetTransport::Mmio { .. } => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, offset: u64, data: &[u8]) {
        let NetTransport::Pci(p) = &mut self.transport else { return };
        if let Some(index) = p.notified_queue(offset, data.len()) {
            // The net thread does the work (the ioeventfd would have woken it without an exit).
            self.kick(index);
            return;
        }
        let messages = p.write_bar(offset, data, &self.mem);
        self.send_messages(messages);
    }
}

/// Per boot: the thread that moves this device's frames.
pub struct NetThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl NetThread {
    /// Start it for `dev` (whose kicks it waits on) and `tap`.
    pub fn start(dev: Arc<Mutex<NetDevice>>, tap: Arc<Tap>, index: usize) -> Result<Self, NetError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetError::Io { what: "create an eventfd", source })?;
        let clone = |fd: &EventFd| fd.try_clone().map_err(|source| NetError::Io { what: "clone an eventfd", source });
        let stop2 = clone(&stop)?;
        let (rx, tx) = {
            let d = lock(&dev);
            (clone(&d.kicks[0])?, clone(&d.kicks[1])?)
        };
        let handle = std::thread::Builder::new()
            .name(format!("net{index}"))
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::Net) {
                    log::error!("net: {}; the device moves no frames", crate::error::Chain(&e));
                    return;
                }
                Mover { dev, tap, pending: None, tap_ok: true, buf: vec![0; MAX_FRAME] }.run(&rx, &tx, &stop2);
            })
            .map_err(|source| NetError::Io { what: "spawn the net thread", source })?;
        Ok(Self { stop, handle: Some(handle) })
    }
}

impl Drop for NetThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("the net thread panicked");
            }
        }
    }
}

/// The net thread's state.
struct Mover {
    dev: Arc<Mutex<NetDevice>>,
    tap: Arc<Tap>,
    /// The length of a received frame the receive queue had no room for yet, held in `buf`
    /// (the TAP is not read meanwhile). Nothing is allocated per frame: a freed 64 KiB frame
    /// would let glibc trim this thread's heap, which reads /proc (`openat`, not allowed here).
    pending: Option<usize>,
    /// The TAP has not failed.
    tap_ok: bool,
    buf: Vec<u8>,
}

impl Mover {
    fn run(&mut self, rx: &EventFd, tx: &EventFd, stop: &EventFd) {
        loop {
            let tap_fd = if self.tap_ok && self.pending.is_none() { self.tap.file.as_raw_fd() } else { -1 };
            let mut fds = [tap_fd, rx.as_raw_fd(), tx.as_raw_fd(), stop.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: poll(2) reads and writes the `fds` array, which outlives the call; a
            // negative descriptor is ignored.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("net: poll: {e}; the device moves no more frames");
                return;
            }
            let ready = |i: usize| fds[i].revents != 0;
            if ready(3) {
                return;
            }
            if ready(2) {
                let _ = tx.read();
                let mut d = lock(&self.dev);
                let d = &mut *d;
                if d.transport.notify_queue(TX_QUEUE, &d.mem) {
                    d.interrupt(Cause::Queue(TX_QUEUE));
                }
            }
            if ready(1) {
                let _ = rx.read();
                let mut d = lock(&self.dev);
                let d = &mut *d;
                d.transport.notify_queue(RX_QUEUE, &d.mem);
                d.transport.device_mut().take_rx_kick();
            }
            if self.tap_ok && (ready(0) || ready(1)) {
                self.receive();
            }
        }
    }

    /// Move frames from the TAP (the pending one first) into the receive queue until the TAP
    /// is empty or the queue full; then one interrupt for them all, if the driver wants one.
    fn receive(&mut self) {
        let mut interrupt = false;
        self.receive_frames(&mut interrupt);
        if interrupt {
            lock(&self.dev).interrupt(Cause::Queue(RX_QUEUE));
        }
    }

    fn receive_frames(&mut self, interrupt: &mut bool) {
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match (&self.tap.file).read(&mut self.buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("net: TAP {}: {e}; link down", self.tap.name);
                        self.tap_ok = false;
                        let mut d = lock(&self.dev);
                        if d.transport.device_mut().set_link(false) && d.transport.config_changed() {
                            d.interrupt(Cause::Config);
                        }
                        return;
                    }
                },
            };
            let frame = &self.buf[..len];
            let mut d = lock(&self.dev);
            let d = &mut *d;
            match d.transport.process_with(RX_QUEUE, &d.mem, |net, q, mem| net.receive(q, mem, frame)) {
                // The driver is not there (not live, queue not ready): the frame is dropped, as
                // a NIC that is down drops it.
                None => {}
                Some(devices::virtio::Rx::NoBuffers) => {
                    self.pending = Some(len);
                    return;
                }
                Some(r) => *interrupt |= r.needs_interrupt(),
            }
        }
    }
}

/// A locally administered unicast MAC derived from the TAP's name and the device's index, so
/// that a guest keeps its address across runs.
pub fn default_mac(tap: &str, index: usize) -> [u8; 6] {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tap.bytes().chain([index as u8]) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

    /// An EtherType for local experiments (IEEE 802): nothing else on the interface uses it.
    const ETH_P_TEST: u16 = 0x88b5;
    const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
    /// Guest memory of the driver below: queue rings, then buffers.
    const RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x2000, 0x3000), (0x4000, 0x5000, 0x6000)];
    const RX_BUFS: u64 = 0x10000;
    const TX_BUF: u64 = 0x40000;
    const QSIZE: u16 = 16;

    /// A raw packet socket on interface `index` for the test EtherType.
    fn packet_socket(index: u32) -> OwnedFd {
        let proto = ETH_P_TEST.to_be();
        // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket (needs CAP_NET_RAW): {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are then set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: bind(2) reads `len` bytes of `addr`, which outlives the call.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), len) };
        assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
        fd
    }

    /// Wait up to 10 s for `fd` to be readable.
    fn wait_readable(fd: i32) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that outlives the call.
        unsafe { libc::poll(&mut p, 1, 10_000) == 1 }
    }

    fn reg(dev: &Mutex<NetDevice>, offset: u32, value: u32) {
        MmioDevice::write(&mut *lock(dev), u64::from(offset), &value.to_le_bytes());
    }

    fn publish(mem: &GuestMemoryMmap, queue: usize, head: u16) {
        let avail = RINGS[queue].1;
        let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
        mem.write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(idx % QSIZE))).unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2)).unwrap();
    }

    fn descriptor(mem: &GuestMemoryMmap, queue: usize, index: u16, addr: u64, len: u32, write: bool) {
        let at = RINGS[queue].0 + 16 * u64::from(index);
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(if write { 2u16 } else { 0 }, GuestAddress(at + 12)).unwrap();
        mem.write_obj(0u16, GuestAddress(at + 14)).unwrap();
    }

    /// The used ring entries of `queue` so far: (descriptor, length).
    fn used(mem: &GuestMemoryMmap, queue: usize) -> Vec<(u32, u32)> {
        let ring = RINGS[queue].2;
        let idx: u16 = mem.read_obj(GuestAddress(ring + 2)).unwrap();
        (0..idx)
            .map(|n| {
                let at = ring + 4 + 8 * u64::from(n % QSIZE);
                (mem.read_obj(GuestAddress(at)).unwrap(), mem.read_obj(GuestAddress(at + 4)).unwrap())
            })
            .collect()
    }

    /// A TAP created for the test (`prefix` and the process id), up, without IPv6 chatter, and a
    /// packet socket on its host side. Needs CAP_NET_ADMIN and CAP_NET_RAW.
    fn test_tap(prefix: &str) -> (Arc<Tap>, OwnedFd) {
        let name = format!("{prefix}{}", std::process::id() % 100_000);
        let tap = Arc::new(Tap::open(&name).expect("a TAP interface (the test needs CAP_NET_ADMIN)"));
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        let up = std::process::Command::new("ip").args(["link", "set", &name, "up"]).status().unwrap();
        assert!(up.success());
        let index = std::ffi::CString::new(name).unwrap();
        // SAFETY: a NUL-terminated name that outlives the call.
        let index = unsafe { libc::if_nametoindex(index.as_ptr()) };
        assert_ne!(index, 0);
        (tap, packet_socket(index))
    }

    /// A frame on the host's side of the TAP with the test EtherType, for the guest.
    fn send_to_guest(host: &OwnedFd, len: usize) -> Vec<u8> {
        let mut frame = GUEST_MAC.to_vec();
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&ETH_P_TEST.to_be_bytes());
        frame.extend((0..len).map(|i| (i * 7 + 3) as u8));
        // SAFETY: send(2) reads `frame`, which outlives the call.
        let sent = unsafe { libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize, "{}", io::Error::last_os_error());
        frame
    }

    /// The receive buffer (of four at RX_BUFS) that holds a frame of the test EtherType, once
    /// `irq` said so, within 10 s.
    fn received(mem: &GuestMemoryMmap, irq: &EventFd) -> Vec<u8> {
        let t0 = Instant::now();
        loop {
            assert!(wait_readable(irq.as_raw_fd()), "no receive interrupt within 10 s");
            let _ = irq.read();
            let hit = used(mem, RX_QUEUE).into_iter().find_map(|(desc, len)| {
                let mut b = vec![0u8; len as usize];
                mem.read_slice(&mut b, GuestAddress(RX_BUFS + 0x1000 * u64::from(desc))).unwrap();
                (b.len() > 24 && b[24..26] == ETH_P_TEST.to_be_bytes()).then_some(b)
            });
            if let Some(b) = hit {
                return b;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the frame never arrived");
        }
    }

    /// A frame of the test EtherType (`len` bytes of payload) with its header in TX_BUF, made
    /// available in the transmit queue as descriptor 0; returns the frame.
    fn queue_guest_frame(mem: &GuestMemoryMmap, len: usize) -> Vec<u8> {
        let mut tx = vec![0x02, 0, 0, 0, 0, 0x01];
        tx.extend_from_slice(&GUEST_MAC);
        tx.extend_from_slice(&ETH_P_TEST.to_be_bytes());
        tx.extend((0..len).map(|i| (i * 5 + 1) as u8));
        let mut out = vec![0u8; 12];
        out.extend_from_slice(&tx);
        mem.write_slice(&out, GuestAddress(TX_BUF)).unwrap();
        descriptor(mem, TX_QUEUE, 0, TX_BUF, out.len() as u32, false);
        publish(mem, TX_QUEUE, 0);
        tx
    }

    /// The guest's next frame on the host's side of the TAP, within 10 s.
    fn sent_by_guest(host: &OwnedFd) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        loop {
            assert!(wait_readable(host.as_raw_fd()), "nothing came out of the TAP within 10 s");
            // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::recv(host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n > 0, "{}", io::Error::last_os_error());
            // The host's own frame comes back on a packet socket too: wait for the guest's.
            if buf[6..12] == GUEST_MAC {
                return buf[..n as usize].to_vec();
            }
        }
    }

    /// The PCI function's way: Linux's virtio_pci_modern bring-up through BAR 0 and
    /// configuration space (MSI-X on, a vector per queue), then a frame from the host's side
    /// of the TAP reaches a receive buffer and signals the receive queue's vector (the test's
    /// eventfd stands for KVM_SIGNAL_MSI), and a notification written to the transmit queue's
    /// address (as the vCPU's exit delivers it without an ioeventfd) sends the guest's frame.
    #[test]
    fn a_pci_function_moves_frames_and_signals_its_vectors() {
        let (tap, host) = test_tap("cvnp");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kicks = [EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let msi = NetIrq::Eventfd(irq.try_clone().unwrap());
        let dev = NetDevice::pci(tap.clone(), GUEST_MAC, mem.clone(), msi, PCI_MMIO_START as u32, kicks).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let thread = NetThread::start(dev.clone(), tap.clone(), 0).unwrap();
        let bar = |offset: u64, value: u64, len: usize| {
            PciFunction::write_bar(&mut *lock(&dev), offset, &value.to_le_bytes()[..len]);
        };
        for status in [0, 1, 3] {
            bar(20, status, 1);
        }
        bar(8, 1, 4);
        bar(12, 1, 4);
        bar(8, 0, 4);
        bar(12, 1 << 5 | 1 << 15 | 1 << 16, 4);
        bar(20, 0xb, 1);
        // MSI-X on (Message Control at 0x86), its three vectors unmasked.
        PciFunction::write_config(&mut *lock(&dev), 0x86, &0x8000u16.to_le_bytes());
        for v in 0..3u64 {
            bar(0x4000 + 16 * v, 0xfee0_0000, 4);
            bar(0x4008 + 16 * v, 0x30 + v, 4);
            bar(0x400c + 16 * v, 0, 4);
        }
        for (q, (desc, avail, used)) in RINGS.iter().enumerate() {
            bar(22, q as u64, 2);
            bar(24, u64::from(QSIZE), 2);
            for (low, addr) in [(32, desc), (40, avail), (48, used)] {
                bar(low, *addr, 4);
                bar(low + 4, 0, 4);
            }
            bar(26, q as u64 + 1, 2);
            bar(28, 1, 2);
        }
        bar(20, 0xf, 1);
        for i in 0..4u16 {
            descriptor(&mem, RX_QUEUE, i, RX_BUFS + 0x1000 * u64::from(i), 2048, true);
            publish(&mem, RX_QUEUE, i);
        }
        bar(VirtioPci::<Net>::notify_offset(RX_QUEUE), RX_QUEUE as u64, 2);

        let frame = send_to_guest(&host, 500);
        let got = received(&mem, &irq);
        assert_eq!(got[12..], frame[..], "the frame");

        let tx = queue_guest_frame(&mem, 700);
        bar(VirtioPci::<Net>::notify_offset(TX_QUEUE), TX_QUEUE as u64, 2);
        assert_eq!(sent_by_guest(&host), tx, "the transmitted frame");
        drop(thread);
        assert_eq!(used(&mem, TX_QUEUE), [(0, 0)]);
    }

    /// A real TAP, the net thread, and a driver doing what Linux's virtio_net does through the
    /// register window (as the vCPU threads would): a frame sent on the host's side of the TAP
    /// lands in a receive buffer byte for byte with its header; a frame the guest transmits
    /// comes out on the host's side byte for byte. Needs CAP_NET_ADMIN and CAP_NET_RAW (root).
    #[test]
    fn frames_cross_a_real_tap_both_ways_through_the_net_thread() {
        let (tap, host) = test_tap("cvnt");

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kicks = [EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let dev =
            NetDevice::mmio(tap.clone(), GUEST_MAC, mem.clone(), NetIrq::Eventfd(irq.try_clone().unwrap()), 0, kicks)
                .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let thread = NetThread::start(dev.clone(), tap.clone(), 0).unwrap();

        // Linux's bring-up: VERSION_1, MAC, STATUS, MRG_RXBUF; both queues; DRIVER_OK.
        for status in [0, 1, 3] {
            reg(&dev, 0x70, status);
        }
        reg(&dev, 0x24, 1);
        reg(&dev, 0x20, 1);
        reg(&dev, 0x24, 0);
        reg(&dev, 0x20, 1 << 5 | 1 << 15 | 1 << 16);
        reg(&dev, 0x70, 0xb);
        for (q, (desc, avail, used)) in RINGS.iter().enumerate() {
            reg(&dev, 0x30, q as u32);
            reg(&dev, 0x38, u32::from(QSIZE));
            for (low, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                reg(&dev, low, *addr as u32);
                reg(&dev, low + 4, 0);
            }
            reg(&dev, 0x44, 1);
        }
        reg(&dev, 0x70, 0xf);
        // Byte by byte, as virtio_net reads it.
        let mac: Vec<u8> = (0..6)
            .map(|i| {
                let mut b = [0u8];
                MmioDevice::read(&mut *lock(&dev), 0x100 + i, &mut b);
                b[0]
            })
            .collect();
        assert_eq!(mac, GUEST_MAC);
        for i in 0..4u16 {
            descriptor(&mem, RX_QUEUE, i, RX_BUFS + 0x1000 * u64::from(i), 2048, true);
            publish(&mem, RX_QUEUE, i);
        }
        reg(&dev, 0x50, RX_QUEUE as u32);

        // Host to guest.
        let frame = send_to_guest(&host, 1000);
        let got = received(&mem, &irq);
        assert_eq!(got[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "header, num_buffers 1");
        assert_eq!(got[12..], frame[..], "the frame");

        // Guest to host.
        let tx = queue_guest_frame(&mem, 1400);
        reg(&dev, 0x50, TX_QUEUE as u32);
        assert_eq!(sent_by_guest(&host), tx, "the transmitted frame");
        // The thread returns the chain after the frame went out: once it is joined.
        drop(thread);
        assert_eq!(used(&mem, TX_QUEUE), [(0, 0)]);
        let c = lock(&dev).transport.device().counters();
        assert_eq!((c.tx_frames, c.tx_bytes), (1, tx.len() as u64));
        assert!(c.rx_frames >= 1);
    }

    #[test]
    fn default_macs_are_local_unicast_and_stable() {
        let a = default_mac("tap0", 0);
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(a, default_mac("tap0", 0));
        assert_ne!(a, default_mac("tap0", 1));
        assert_ne!(a, default_mac("tap1", 0));
    }

    #[test]
    fn bad_tap_names_are_refused_before_anything_is_opened() {
        for name in ["", "0123456789abcdef", "a/b", "tap 0", "tap\u{1b}"] {
            assert!(matches!(Tap::open(name), Err(NetError::Name(_))), "{name:?}");
        }
    }
}
