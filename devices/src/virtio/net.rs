//! virtio-net (device type 1, virtio 1.x §5.1): the device model, sans I/O.
//!
//! Two queues: receive ([`RX_QUEUE`]) and transmit ([`TX_QUEUE`]), [`NET_QUEUE_SIZE`] entries
//! each; no control queue, one queue pair. Offered features: `VERSION_1`, `MAC` (the address in
//! configuration space), `STATUS` (link state in configuration space), `MRG_RXBUF` (a frame may
//! span several receive chains, as Linux's default mergeable buffers expect), and the checksum
//! and TCP segmentation offloads both ways: `CSUM`, `HOST_TSO4`, `HOST_TSO6` (the driver may
//! send a frame whose checksum is left to fill in, or a TCP segment of up to 64 KiB to split),
//! `GUEST_CSUM`, `GUEST_TSO4`, `GUEST_TSO6` (the device may hand it such frames); and
//! `EVENT_IDX` (notifications and interrupts suppressed by ring index). Every frame
//! carries the 12-byte `virtio_net_hdr_v1` ([`NET_HDR_LEN`]) that says so; the backend (a TAP
//! opened with `IFF_VNET_HDR`) reads and writes the same header, and is told at activation
//! which offloads the driver accepts ([`NetBackend::set_offloads`]), so that it only hands
//! those.
//!
//! Frames go out through a [`NetBackend`]; frames come in through [`VirtioNet::receive`],
//! called by whoever reads them (the VMM's network thread). Nothing here touches a file, a
//! socket or a thread.
//!
//! Transmit: each chain is one frame, header first, in device-readable buffers, handed to the
//! backend as slices of guest memory (read in place; the header checked on a copy of its 12
//! bytes). It goes to the used ring with length 0 whatever happens to it; a frame that cannot
//! go out is dropped and counted by reason ([`NetCounters`]; a ring whose index runs past its
//! size is left alone, not spun on):
//! - `tx_malformed`: a chain that does not end (a loop, longer than the queue, a `next` past the
//!   table, a descriptor outside guest memory), a device-writable descriptor, fewer bytes than
//!   the header, or a header that asks for an offload that was not negotiated (a segment
//!   without `NEEDS_CSUM`, UDP or ECN segmentation, flags the driver may not set);
//! - `tx_too_large`: more than [`MAX_FRAME`] bytes with the header;
//! - `tx_backend`: the backend refused it (the TAP is full or gone, or the kernel found the
//!   header's offsets wrong).
//!
//! Receive: a frame (header first, as the TAP gives it) is written over as many receive chains
//! as it needs (one without `MRG_RXBUF`), each made of device-writable buffers; the header's
//! `num_buffers` says how many, and the used index moves past all of them at once (a driver
//! never finds part of a frame). A frame the available chains cannot hold yet is left with the
//! caller ([`Rx::NoBuffers`]: nothing consumed) until the driver adds buffers; one that cannot
//! fit at all, or whose chain is malformed, is dropped and counted (`rx_too_large`,
//! `rx_malformed`, `rx_offload`: a header asking for an offload the driver did not accept; a
//! "checksum verified" hint it did not ask for is left out instead).

use std::io;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions, VolatileSlice};

use super::common::{NeedsInterrupt, VirtioDevice};
use super::GuestWarnings;

/// Entries per queue.
pub const NET_QUEUE_SIZE: u16 = 256;
/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const NET_HDR_LEN: usize = 12;
/// The largest frame moved, header included: a 64 KiB IP packet, its Ethernet and VLAN headers
/// and the virtio-net header (what Linux sizes its buffers for with offloads on).
pub const MAX_FRAME: usize = 65_562;
/// `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Configuration space: `mac[6]`, `status`.
const CONFIG_LEN: usize = 8;
/// The split virtqueue's ring layout (virtio 1.x §2.7.6, §2.7.8): `flags` and `idx` before
/// the available ring's entries and the used ring's elements, and one `virtq_used_elem`.
const VIRTQ_AVAIL_RING_HEADER: u64 = 4;
const VIRTQ_USED_RING_HEADER: u64 = 4;
const VIRTQ_USED_ELEM: u64 = 8;

/// The offloads of received frames the driver accepts, for the backend to hand only those
/// (the TAP's `TUNSETOFFLOAD`: `TUN_F_CSUM`, `TUN_F_TSO4`, `TUN_F_TSO6`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// Checksums left to fill in (`GUEST_CSUM`).
    pub csum: bool,
    /// TCP segments over IPv4 / IPv6 (`GUEST_TSO4` / `GUEST_TSO6`, each with `GUEST_CSUM`).
    pub tso4: bool,
    pub tso6: bool,
}

/// Where transmitted frames go.
pub trait NetBackend: Send {
    /// Send one frame, its [`NET_HDR_LEN`]-byte header first: the concatenation of `frame`,
    /// slices of guest memory where the driver put it (the backend reads them in place, as a
    /// TAP's `writev` does, so each byte is copied once). The driver can still change those
    /// bytes meanwhile; what the header says was checked on a copy, and the backend's own end
    /// (the kernel's TAP) checks it again.
    fn send<S: BitmapSlice>(&mut self, frame: &[VolatileSlice<'_, S>]) -> io::Result<()>;
    /// Hand only received frames with these offloads from now on (all off at a reset).
    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()>;
}

/// A backend that keeps what was sent (tests, fuzzing).
#[derive(Debug, Default)]
pub struct VecNetBackend {
    pub sent: Vec<Vec<u8>>,
    /// Refuse every frame with this error kind.
    pub fail: Option<io::ErrorKind>,
    pub offloads: Offloads,
}

impl NetBackend for VecNetBackend {
    fn send<S: BitmapSlice>(&mut self, frame: &[VolatileSlice<'_, S>]) -> io::Result<()> {
        match self.fail {
            Some(kind) => Err(kind.into()),
            None => {
                let mut sent = vec![0u8; frame.iter().map(VolatileSlice::len).sum()];
                gather(frame, &mut sent);
                self.sent.push(sent);
                Ok(())
            }
        }
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.offloads = offloads;
        Ok(())
    }
}

/// What moved and what was dropped, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_malformed: u64,
    pub tx_too_large: u64,
    pub tx_backend: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_malformed: u64,
    pub rx_too_large: u64,
    pub rx_offload: u64,
    /// Frames dropped while receiving is held (after a crash: [`VirtioNet::hold_rx`]).
    pub rx_held: u64,
}

/// What became of a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// In the receive queue; `notify`: the driver must be interrupted.
    Delivered { notify: bool },
    /// The available buffers cannot hold it yet: nothing was consumed, offer it again once the
    /// driver adds receive buffers.
    NoBuffers,
    /// Dropped and counted (the counters say why); `notify` as for `Delivered` (chains a
    /// malformed frame used up went back to the driver).
    Dropped { notify: bool },
}

impl NeedsInterrupt for Rx {
    fn needs_interrupt(&self) -> bool {
        matches!(self, Rx::Delivered { notify: true } | Rx::Dropped { notify: true })
    }
}

/// A virtio-net device over a [`NetBackend`].
pub struct VirtioNet<B> {
    backend: B,
    mac: [u8; 6],
    link_up: bool,
    acked_features: u64,
    counters: NetCounters,
    /// The driver added receive buffers since the last [`VirtioNet::take_rx_kick`].
    rx_kick: bool,
    /// Received frames are dropped until the driver resets the device.
    rx_held: bool,
    warnings: GuestWarnings,
}

impl<B: NetBackend> VirtioNet<B> {
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        Self {
            backend,
            mac,
            link_up: true,
            acked_features: 0,
            counters: NetCounters::default(),
            rx_kick: false,
            rx_held: false,
            warnings: GuestWarnings::default(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Set the link state the driver reads (`VIRTIO_NET_S_LINK_UP`); true if it changed (the
    /// transport should then raise a configuration-change interrupt).
    pub fn set_link(&mut self, up: bool) -> bool {
        std::mem::replace(&mut self.link_up, up) != up
    }

    /// Tell the backend which offloads to hand. If it cannot, frames with others are still
    /// dropped here ([`VirtioNet::rx_header`]).
    fn set_backend_offloads(&mut self, offloads: Offloads) {
        if let Err(e) = self.backend.set_offloads(offloads) {
            log::warn!("virtio-net: cannot set the backend's offloads to {offloads:?}: {e}");
        }
    }

    /// Stop writing received frames into guest memory until the driver resets the device:
    /// after a crash, the crashed kernel's receive buffers are part of what its vmcore shows,
    /// and its crash kernel, which may not drive this device at all, must not find them
    /// changing. Frames are dropped and counted (`rx_held`); frames the guest sends still go
    /// (a panic's netconsole). A reset (the next driver) receives again.
    pub fn hold_rx(&mut self) {
        self.rx_held = true;
    }

    /// Whether the driver notified the receive queue (added buffers) since the last call.
    pub fn take_rx_kick(&mut self) -> bool {
        std::mem::take(&mut self.rx_kick)
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    /// Whether a transmitted frame's header asks only for offloads the driver negotiated: a
    /// checksum to fill in with `CSUM`; a TCP segment with `HOST_TSO4`/`HOST_TSO6`, and its
    /// checksum left to fill in (Linux always sets `NEEDS_CSUM` on one). No other flag.
    fn tx_header_ok(&self, header: &[u8]) -> bool {
        let (flags, gso) = (u32::from(header[0]), u32::from(header[1]));
        let needs_csum = flags == VIRTIO_NET_HDR_F_NEEDS_CSUM;
        let flags_ok = flags == 0 || (needs_csum && self.acked(VIRTIO_NET_F_CSUM));
        let gso_ok = match gso {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => needs_csum && self.acked(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => needs_csum && self.acked(VIRTIO_NET_F_HOST_TSO6),
            _ => false,
        };
        flags_ok && gso_ok
    }

    /// The header to hand the driver for a received frame, or `None` when the frame asks for
    /// an offload the driver did not accept (the backend was told; this holds it to that). A
    /// "checksum verified" hint without `GUEST_CSUM` is left out; fields no flag or segment
    /// type gives a meaning are zeroed.
    fn rx_header(&self, frame: &[u8]) -> Option<[u8; NET_HDR_LEN]> {
        let mut h = [0u8; NET_HDR_LEN];
        h[..NUM_BUFFERS_OFFSET].copy_from_slice(&frame[..NUM_BUFFERS_OFFSET]);
        let csum = self.acked(VIRTIO_NET_F_GUEST_CSUM);
        let (needs_csum, data_valid) = (VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, VIRTIO_NET_HDR_F_DATA_VALID as u8);
        if h[0] & !(needs_csum | data_valid) != 0 || (h[0] & needs_csum != 0 && !csum) {
            return None;
        }
        if !csum {
            h[0] &= !data_valid;
        }
        match u32::from(h[1]) {
            VIRTIO_NET_HDR_GSO_NONE => h[2..6].fill(0),
            VIRTIO_NET_HDR_GSO_TCPV4 if csum && self.acked(VIRTIO_NET_F_GUEST_TSO4) => {}
            VIRTIO_NET_HDR_GSO_TCPV6 if csum && self.acked(VIRTIO_NET_F_GUEST_TSO6) => {}
            _ => return None,
        }
        if h[0] & needs_csum == 0 {
            h[6..10].fill(0);
        }
        Some(h)
    }

    /// Put `frame` (header first) into the receive `queue`.
    ///
    /// The driver's notifications of new receive buffers are suppressed while frames find
    /// buffers (`VRING_USED_F_NO_NOTIFY`, or with `EVENT_IDX` an `avail_event` left behind) and
    /// asked for again when a frame finds too few ([`Rx::NoBuffers`]): the caller then waits for
    /// one. Buffers added in between are seen by a second look.
    pub fn receive<M: GuestMemory>(&mut self, queue: &mut Queue, mem: &M, frame: &[u8]) -> Rx {
        if self.rx_held {
            self.counters.rx_held += 1;
            return Rx::Dropped { notify: false };
        }
        let r = match self.try_receive(queue, mem, frame) {
            Some(r) => r,
            None => self.try_receive(queue, mem, frame).unwrap_or(Rx::NoBuffers),
        };
        if r != Rx::NoBuffers {
            let _ = queue.disable_notification(mem);
        }
        r
    }

    /// One look at the available buffers; `None`: too few, but more came while the driver was
    /// asked to notify.
    fn try_receive<M: GuestMemory>(&mut self, queue: &mut Queue, mem: &M, frame: &[u8]) -> Option<Rx> {
        if frame.len() < NET_HDR_LEN || frame.len() > MAX_FRAME {
            self.counters.rx_too_large += u64::from(frame.len() > MAX_FRAME);
            self.counters.rx_malformed += u64::from(frame.len() < NET_HDR_LEN);
            return Some(Rx::Dropped { notify: false });
        }
        let Some(mut header) = self.rx_header(frame) else {
            self.counters.rx_offload += 1;
            return Some(Rx::Dropped { notify: false });
        };
        let mergeable = self.acked(VIRTIO_NET_F_MRG_RXBUF);
        let start = queue.next_avail();
        // The chains it takes, each with its writable buffers: (head, buffers).
        let mut chains: Vec<(u16, Vec<Descriptor>)> = Vec::new();
        let mut room = 0usize;
        let mut malformed = None;
        while room < frame.len() && (mergeable || chains.is_empty()) {
            let Some(chain) = super::next_chain(queue, mem, &mut self.warnings, "virtio-net receive") else { break };
            let head = chain.head_index();
            match writable_buffers(chain, mem) {
                Some(bufs) if head < queue.size() => {
                    room = room.saturating_add(bufs.iter().map(|d| d.len() as usize).sum());
                    chains.push((head, bufs));
                }
                _ => {
                    malformed = Some(head);
                    break;
                }
            }
        }
        if let Some(bad) = malformed {
            // A chain no frame can go into goes back empty, and the frame with it (with the
            // chains taken before it, also empty).
            log::log!(self.warnings.level(), "virtio-net: receive chain {bad} malformed: frame dropped");
            self.counters.rx_malformed += 1;
            let empty: Vec<(u16, u32)> =
                chains.iter().map(|c| c.0).chain(Some(bad).filter(|&h| h < queue.size())).map(|h| (h, 0)).collect();
            return Some(Rx::Dropped { notify: self.add_used_together(queue, mem, &empty) });
        }
        if room < frame.len() {
            if !mergeable && !chains.is_empty() {
                queue.set_next_avail(start);
                // One chain is all it may have, and it is too small: never deliverable.
                log::log!(
                    self.warnings.level(),
                    "virtio-net: a {}-byte frame does not fit a {room}-byte receive buffer: dropped",
                    frame.len()
                );
                self.counters.rx_too_large += 1;
                return Some(Rx::Dropped { notify: false });
            }
            // Every available chain was taken and they are too few: ask to be notified of the
            // next one (with EVENT_IDX: `avail_event` is the index past the last one seen, which
            // the driver has not reached), then leave them for the next look.
            let more = queue.enable_notification(mem).unwrap_or(true);
            queue.set_next_avail(start);
            return (!more).then_some(Rx::NoBuffers);
        }
        // The header as this device passes it on (num_buffers set), then the frame, over the
        // buffers in order.
        header[NUM_BUFFERS_OFFSET..].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let mut parts = [&header[..], &frame[NET_HDR_LEN..]];
        let mut used = Vec::with_capacity(chains.len());
        for (head, bufs) in &chains {
            let mut written = 0u32;
            for d in bufs {
                // A buffer takes what is left of the header and of the frame, in order.
                let mut at = 0usize;
                for part in parts.iter_mut() {
                    let n = part.len().min(d.len() as usize - at);
                    // writable_buffers checked that every buffer is inside guest memory.
                    if n > 0 && mem.write_slice(&part[..n], GuestAddress(d.addr().0 + at as u64)).is_err() {
                        break;
                    }
                    *part = &part[n..];
                    at += n;
                }
                written += at as u32;
                if parts.iter().all(|p| p.is_empty()) {
                    break;
                }
            }
            used.push((*head, written));
        }
        let notify = self.add_used_together(queue, mem, &used);
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += (frame.len() - NET_HDR_LEN) as u64;
        Some(Rx::Delivered { notify })
    }

    /// Return the chains `used` (head, bytes written) of one frame to the driver together: every
    /// element is in the used ring before the ring's index moves past them, once.
    /// `Queue::add_used` moves the index per chain, and a driver inside its receive loop would
    /// meanwhile find a frame's first buffer promising `num_buffers` and not all of them: Linux
    /// drops that frame ("rx error: N buffers out of M missing", counted in `rx_dropped`).
    ///
    /// True when the driver wants an interrupt for them (always without `EVENT_IDX`; with it,
    /// when the index passed `used_event`, virtio 1.x §2.7.10). A used ring outside guest memory
    /// (the queue's checks rule that out) loses the frame, logged.
    fn add_used_together<M: GuestMemory>(&mut self, queue: &mut Queue, mem: &M, used: &[(u16, u32)]) -> bool {
        let start = queue.next_used();
        let Some((&(last, last_len), rest)) = used.split_last() else { return false };
        let published = rest
            .iter()
            .zip(0u16..)
            .try_for_each(|(&(head, len), i)| {
                // struct virtq_used_elem { le32 id; le32 len; } at ring[(start + i) % size].
                let slot = u64::from(start.wrapping_add(i) % queue.size());
                let at = (queue.used_ring().checked_add(VIRTQ_USED_RING_HEADER + slot * VIRTQ_USED_ELEM))
                    .ok_or(virtio_queue::Error::AddressOverflow)?;
                let mut elem = [0u8; VIRTQ_USED_ELEM as usize];
                elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
                elem[4..].copy_from_slice(&len.to_le_bytes());
                mem.write_slice(&elem, GuestAddress(at)).map_err(virtio_queue::Error::GuestMemory)
            })
            .and_then(|()| {
                // The last element, then the index past all of them, stored with release ordering.
                queue.set_next_used(start.wrapping_add(rest.len() as u16));
                queue.add_used(mem, last, last_len)
            });
        if let Err(e) = published {
            queue.set_next_used(start);
            log::log!(self.warnings.level(), "virtio-net: receive chains not returned: {e}");
            return false;
        }
        if !queue.event_idx_enabled() {
            return true;
        }
        // The used index is written before used_event is read (as Queue::needs_notification).
        std::sync::atomic::fence(Ordering::SeqCst);
        // struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
        let at = queue.avail_ring().checked_add(VIRTQ_AVAIL_RING_HEADER + 2 * u64::from(queue.size()));
        let Some(Ok(event)) = at.map(|at| mem.load::<u16>(GuestAddress(at), Ordering::Relaxed).map(u16::from_le))
        else {
            return true;
        };
        // vring_need_event(used_event, new, old).
        let new = queue.next_used();
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(start)
    }

    /// Send the frame of one transmit chain; every outcome is counted.
    fn transmit<M: GuestMemory>(&mut self, chain: DescriptorChain<&M>, mem: &M) {
        let head = chain.head_index();
        let descriptors: Vec<Descriptor> = chain.collect();
        let ends = descriptors.last().is_some_and(|d| !d.has_next());
        if !ends || descriptors.iter().any(Descriptor::is_write_only) {
            log::log!(
                self.warnings.level(),
                "virtio-net: transmit chain {head} broken or device-writable: frame dropped"
            );
            self.counters.tx_malformed += 1;
            return;
        }
        let len: u64 = descriptors.iter().map(|d| u64::from(d.len())).sum();
        if len > MAX_FRAME as u64 {
            log::log!(self.warnings.level(), "virtio-net: transmit chain {head}: a {len}-byte frame: dropped");
            self.counters.tx_too_large += 1;
            return;
        }
        // The frame where the driver put it: a slice of guest memory per buffer (more where a
        // buffer crosses from one memory region into the next).
        let mut frame = Vec::with_capacity(descriptors.len());
        for d in &descriptors {
            let slices = mem.get_slices(d.addr(), d.len() as usize, Permissions::Read);
            match slices.map(|mut it| it.try_for_each(|s| s.map(|s| frame.push(s)))) {
                Ok(Ok(())) => {}
                _ => {
                    log::log!(self.warnings.level(), "virtio-net: transmit chain {head}: buffer outside guest memory");
                    self.counters.tx_malformed += 1;
                    return;
                }
            }
        }
        let mut header = [0u8; NET_HDR_LEN];
        if gather(&frame, &mut header) < NET_HDR_LEN || !self.tx_header_ok(&header) {
            log::log!(
                self.warnings.level(),
                "virtio-net: transmit chain {head}: {len} bytes, no header or one asking for an offload not negotiated"
            );
            self.counters.tx_malformed += 1;
            return;
        }
        match self.backend.send(&frame) {
            Ok(()) => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += len - NET_HDR_LEN as u64;
            }
            Err(e) => {
                log::log!(self.warnings.level(), "virtio-net: transmit: frame dropped: {e}");
                self.counters.tx_backend += 1;
            }
        }
    }
}

/// Copy the start of `parts` (one frame's slices of guest memory, in order) into `into`, as
/// much as fits; the bytes copied.
fn gather<S: BitmapSlice>(parts: &[VolatileSlice<'_, S>], into: &mut [u8]) -> usize {
    parts.iter().fold(0, |at, part| at + part.copy_to(&mut into[at..]))
}

/// The buffers of a receive chain: all device-writable, the chain ending, every buffer inside
/// guest memory; `None` otherwise.
fn writable_buffers<M: GuestMemory>(chain: DescriptorChain<&M>, mem: &M) -> Option<Vec<Descriptor>> {
    let descriptors: Vec<Descriptor> = chain.collect();
    let ends = descriptors.last().is_some_and(|d| !d.has_next());
    let usable = descriptors
        .iter()
        .all(|d| d.is_write_only() && mem.check_range(d.addr(), d.len() as usize, Permissions::Write));
    (ends && usable).then_some(descriptors)
}

impl<B: NetBackend> VirtioDevice for VirtioNet<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_RING_F_EVENT_IDX,
        ]
        .iter()
        .fold(0, |f, bit| f | 1 << bit)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac);
        let status = if self.link_up { VIRTIO_NET_S_LINK_UP as u16 } else { 0 };
        config[6..8].copy_from_slice(&status.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is the VMM's to choose (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).
        log::log!(self.warnings.level(), "virtio-net: configuration write of {} bytes at {offset} ignored", data.len());
    }

    fn activate(&mut self, acked_features: u64) {
        self.acked_features = acked_features;
        let csum = self.acked(VIRTIO_NET_F_GUEST_CSUM);
        let offloads = Offloads {
            csum,
            tso4: csum && self.acked(VIRTIO_NET_F_GUEST_TSO4),
            tso6: csum && self.acked(VIRTIO_NET_F_GUEST_TSO6),
        };
        self.set_backend_offloads(offloads);
        self.rx_kick = true;
    }

    fn process_queue<M: GuestMemory>(&mut self, index: usize, queue: &mut Queue, mem: &M) -> bool {
        match index {
            RX_QUEUE => {
                // Buffers to receive into: whoever holds frames offers them now.
                self.rx_kick = true;
                false
            }
            TX_QUEUE => {
                let (mut used, mut idle_passes) = (false, 0);
                // No notifications while the queue is drained; asked for again at the end, and
                // frames queued meanwhile are sent before the next wait.
                loop {
                    let _ = queue.disable_notification(mem);
                    let mut taken = false;
                    while let Some(chain) = super::next_chain(queue, mem, &mut self.warnings, "virtio-net transmit") {
                        taken = true;
                        let head = chain.head_index();
                        if head >= queue.size() {
                            log::log!(
                                self.warnings.level(),
                                "virtio-net: available ring names descriptor {head}, past the table"
                            );
                            self.counters.tx_malformed += 1;
                            continue;
                        }
                        self.transmit(chain, mem);
                        match queue.add_used(mem, head, 0) {
                            Ok(()) => used = true,
                            Err(e) => log::log!(self.warnings.level(), "virtio-net: chain {head} not returned: {e}"),
                        }
                    }
                    // More made available meanwhile: another pass. Two passes in a row that
                    // find nothing though the ring says there is more: its index is broken (too
                    // far ahead, which the queue refuses to walk); left for the next
                    // notification, not spun on.
                    idle_passes = if taken { 0 } else { idle_passes + 1 };
                    if !queue.enable_notification(mem).unwrap_or(false) || idle_passes == 2 {
                        break;
                    }
                }
                used && queue.needs_notification(mem).unwrap_or(true)
            }
            _ => false,
        }
    }

    fn reset(&mut self) {
        self.acked_features = 0;
        self.rx_kick = false;
        self.rx_held = false;
        self.set_backend_offloads(Offloads::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::{ro, wo, Driver, BUFFERS, MEM_SIZE, VERSION_1};
    use vm_memory::GuestMemoryMmap;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    /// Every feature but `EVENT_IDX` (whose driver side the tests that need it write).
    const ALL: u64 = !EVENT_IDX;
    const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

    fn net(wanted: u64) -> Driver<VirtioNet<VecNetBackend>> {
        Driver::with_queues(VirtioNet::new(VecNetBackend::default(), MAC), wanted, 2)
    }

    /// A frame with a zero header and `len` bytes of payload.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; NET_HDR_LEN];
        f.extend((0..len).map(|i| (i * 13 + i / 256) as u8));
        f
    }

    fn rx(d: &mut Driver<VirtioNet<VecNetBackend>>, frame: &[u8]) -> Rx {
        let mem = d.mem.clone();
        d.dev.process_with(RX_QUEUE, &mem, |net, q, mem| net.receive(q, mem, frame)).expect("live")
    }

    #[test]
    fn config_space_has_the_mac_and_the_link() {
        let mut d = net(ALL);
        let mut mac = [0u8; 6];
        d.dev.device().read_config(0, &mut mac);
        assert_eq!(mac, MAC);
        let mut status = [0u8; 2];
        d.dev.device().read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 1);
        assert!(d.dev.device_mut().set_link(false));
        assert!(!d.dev.device_mut().set_link(false));
        d.dev.device().read_config(6, &mut status);
        assert_eq!(status, [0, 0]);
        let mut past = [0xffu8; 4];
        d.dev.device().read_config(u64::MAX - 1, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(d.dev.acked_features() & (VERSION_1 | MRG), VERSION_1 | MRG);
    }

    #[test]
    fn a_frame_goes_out_whole_over_any_split_of_its_chain() {
        let mut d = net(ALL);
        let f = frame(1500);
        d.write_bytes(BUFFERS, &f);
        // Header alone, then the frame in two pieces of odd sizes.
        let head = d.add_chain_to(TX_QUEUE, 0, &[ro(BUFFERS, 12), ro(BUFFERS + 12, 7), ro(BUFFERS + 19, 1493)]);
        d.publish_to(TX_QUEUE, head);
        assert!(d.notify(TX_QUEUE as u32));
        assert_eq!(d.dev.device().backend().sent, [f]);
        assert_eq!(d.used_of(TX_QUEUE, 0), (0, 0));
        let c = d.dev.device().counters();
        assert_eq!((c.tx_frames, c.tx_bytes), (1, 1500));
    }

    #[test]
    fn a_frame_whose_buffer_crosses_from_one_memory_region_into_the_next_goes_out_whole() {
        let mut d = net(ALL);
        // The same guest memory, empty as at the start, in two regions meeting inside the
        // frame's one buffer and its header.
        let seam = BUFFERS + 0x1000;
        d.mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), seam as usize),
            (GuestAddress(seam), (MEM_SIZE - seam) as usize),
        ])
        .unwrap();
        let f = frame(1500);
        d.write_bytes(seam - 5, &f);
        let head = d.add_chain_to(TX_QUEUE, 0, &[ro(seam - 5, f.len() as u32)]);
        d.publish_to(TX_QUEUE, head);
        assert!(d.notify(TX_QUEUE as u32));
        assert_eq!(d.dev.device().backend().sent, [f]);
        let c = d.dev.device().counters();
        assert_eq!((c.tx_frames, c.tx_bytes, c.tx_malformed), (1, 1500, 0));
    }

    #[test]
    fn hostile_transmit_chains_are_dropped_counted_and_returned() {
        let mut d = net(ALL);
        d.write_bytes(BUFFERS, &frame(64));
        let mut offload = frame(64);
        offload[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4 without NEEDS_CSUM
        d.write_bytes(BUFFERS + 0x1000, &offload);
        let cases: Vec<Vec<crate::virtio::test_util::Buf>> = vec![
            vec![ro(BUFFERS, 12), wo(BUFFERS + 12, 64)],    // device-writable
            vec![ro(BUFFERS, 8)],                           // shorter than the header
            vec![ro(BUFFERS + 0x1000, 76)],                 // a segment without its checksum request
            vec![ro(BUFFERS, 40_000), ro(BUFFERS, 40_000)], // too large
            vec![ro(0x7fff_f000, 76)],                      // outside guest memory
        ];
        for (i, bufs) in cases.iter().enumerate() {
            let head = d.add_chain_to(TX_QUEUE, 8 * i as u16, bufs);
            d.publish_to(TX_QUEUE, head);
        }
        // A chain that loops on itself.
        d.set_desc_of(TX_QUEUE, 100, BUFFERS, 76, virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16, 100);
        d.publish_to(TX_QUEUE, 100);
        d.notify(TX_QUEUE as u32);
        assert!(d.dev.device().backend().sent.is_empty());
        assert_eq!(d.used_idx_of(TX_QUEUE), 6, "every chain returned");
        let c = d.dev.device().counters();
        assert_eq!((c.tx_malformed, c.tx_too_large, c.tx_frames), (5, 1, 0));
        // The backend refusing: counted, the guest goes on.
        d.dev.device_mut().backend_mut().fail = Some(io::ErrorKind::WouldBlock);
        let head = d.add_chain_to(TX_QUEUE, 200, &[ro(BUFFERS, 76)]);
        d.publish_to(TX_QUEUE, head);
        d.notify(TX_QUEUE as u32);
        assert_eq!(d.dev.device().counters().tx_backend, 1);
        assert_eq!(d.used_idx_of(TX_QUEUE), 7);
    }

    #[test]
    fn a_received_frame_spans_merged_buffers_with_num_buffers() {
        let mut d = net(ALL);
        for i in 0..3u16 {
            let head = d.add_chain_to(RX_QUEUE, i, &[wo(BUFFERS + 0x1000 * u64::from(i), 1024)]);
            d.publish_to(RX_QUEUE, head);
        }
        let f = frame(2000);
        assert_eq!(rx(&mut d, &f), Rx::Delivered { notify: true });
        assert_eq!(d.used_idx_of(RX_QUEUE), 2);
        assert_eq!(d.used_of(RX_QUEUE, 0), (0, 1024));
        assert_eq!(d.used_of(RX_QUEUE, 1), (1, (f.len() - 1024) as u32));
        let mut got = d.read_bytes(BUFFERS, 1024);
        got.extend(d.read_bytes(BUFFERS + 0x1000, f.len() - 1024));
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
        assert_eq!(got[..10], [0; 10]);
        assert_eq!(got[12..], f[12..]);
        // The third buffer is left for the next frame; one that needs two waits for more.
        assert_eq!(rx(&mut d, &frame(1500)), Rx::NoBuffers);
        assert_eq!(d.used_idx_of(RX_QUEUE), 2, "nothing consumed");
        let head = d.add_chain_to(RX_QUEUE, 3, &[wo(BUFFERS + 0x3000, 1024)]);
        d.publish_to(RX_QUEUE, head);
        assert_eq!(rx(&mut d, &frame(1500)), Rx::Delivered { notify: true });
        assert_eq!(d.used_idx_of(RX_QUEUE), 4);
        assert_eq!(d.dev.device().counters().rx_frames, 2);
    }

    #[test]
    fn a_driver_reading_the_used_ring_meanwhile_never_finds_part_of_a_merged_frame() {
        // Linux's receive loop reads the used index while the device goes on adding: every
        // index it can find must end on a whole frame. Each frame here takes two buffers, so an
        // odd index is a frame whose num_buffers promises a buffer not yet returned. (Which
        // thread runs when decides whether a broken device is caught on a given run, never
        // whether a correct one passes.)
        use crate::virtio::test_util::{rings, QUEUE_SIZE};
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let mut d = net(ALL);
        let (mem, done, reads) = (d.mem.clone(), Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let used_idx = GuestAddress(rings(RX_QUEUE as u16).2 + 2);
        let driver = {
            let (done, reads) = (done.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut odd: Vec<u16> = Vec::new();
                while !done.load(Ordering::Acquire) {
                    let idx = u16::from_le(mem.load::<u16>(used_idx, Ordering::Acquire).unwrap());
                    if idx % 2 == 1 && odd.len() < 8 {
                        odd.push(idx);
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                odd
            })
        };
        // The device starts once the driver is reading.
        while reads.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let f = frame(1500);
        for _ in 0..200 {
            for i in 0..QUEUE_SIZE {
                let head = d.add_chain_to(RX_QUEUE, i, &[wo(BUFFERS + 0x400 * u64::from(i), 1024)]);
                d.publish_to(RX_QUEUE, head);
            }
            for _ in 0..QUEUE_SIZE / 2 {
                assert!(matches!(rx(&mut d, &f), Rx::Delivered { .. }));
            }
        }
        done.store(true, Ordering::Release);
        assert_eq!(driver.join().unwrap(), Vec::<u16>::new(), "used indexes ending inside a frame");
        assert_eq!(d.used_idx_of(RX_QUEUE), 200 * QUEUE_SIZE);
    }

    #[test]
    fn a_checksum_verified_hint_reaches_only_a_driver_that_accepts_it_and_the_interrupt_status_says_so() {
        use virtio_bindings::virtio_mmio::{
            VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
        };
        let mut f = frame(64);
        f[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
        f[2..10].copy_from_slice(&[9; 8]);
        for (features, flags) in [(ALL, VIRTIO_NET_HDR_F_DATA_VALID as u8), (ALL & !(1 << VIRTIO_NET_F_GUEST_CSUM), 0)]
        {
            let mut d = net(features);
            let head = d.add_chain_to(RX_QUEUE, 0, &[wo(BUFFERS, 2048)]);
            d.publish_to(RX_QUEUE, head);
            assert_eq!(rx(&mut d, &f), Rx::Delivered { notify: true });
            // Fields no flag or segment type gives a meaning are zeroed.
            assert_eq!(d.read_bytes(BUFFERS, 12), [flags, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
            let status = crate::virtio::test_util::read_reg(&mut d.dev, VIRTIO_MMIO_INTERRUPT_STATUS);
            assert_eq!(status, VIRTIO_MMIO_INT_VRING);
            assert!(d.dev.device_mut().set_link(false) && d.dev.config_changed());
            let status = crate::virtio::test_util::read_reg(&mut d.dev, VIRTIO_MMIO_INTERRUPT_STATUS);
            assert_eq!(status, VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        }
    }

    /// A 64 KiB TCP segment with its checksum left to fill in: `(flags, gso_type, hdr_len,
    /// gso_size, csum_start, csum_offset)` as Linux writes them for IPv4.
    fn tso_frame(payload: usize) -> Vec<u8> {
        let mut f = frame(payload);
        f[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        f[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        f[2..4].copy_from_slice(&66u16.to_le_bytes());
        f[4..6].copy_from_slice(&1448u16.to_le_bytes());
        f[6..8].copy_from_slice(&34u16.to_le_bytes());
        f[8..10].copy_from_slice(&16u16.to_le_bytes());
        f
    }

    #[test]
    fn a_tcp_segment_goes_out_as_is_when_negotiated_and_is_dropped_when_not() {
        let f = tso_frame(65_000);
        for (features, sent) in
            [(ALL, true), (ALL & !(1 << VIRTIO_NET_F_HOST_TSO4), false), (ALL & !(1 << VIRTIO_NET_F_CSUM), false)]
        {
            let mut d = net(features);
            d.write_bytes(BUFFERS, &f);
            let head = d.add_chain_to(TX_QUEUE, 0, &[ro(BUFFERS, 12), ro(BUFFERS + 12, f.len() as u32 - 12)]);
            d.publish_to(TX_QUEUE, head);
            d.notify(TX_QUEUE as u32);
            let c = d.dev.device().counters();
            if sent {
                assert_eq!(d.dev.device().backend().sent, std::slice::from_ref(&f), "header and segment unchanged");
                assert_eq!((c.tx_frames, c.tx_malformed), (1, 0));
            } else {
                assert!(d.dev.device().backend().sent.is_empty());
                assert_eq!((c.tx_frames, c.tx_malformed), (0, 1));
            }
            assert_eq!(d.used_idx_of(TX_QUEUE), 1);
        }
    }

    #[test]
    fn a_received_segment_keeps_its_header_over_merged_buffers_and_the_backend_hands_what_was_accepted() {
        let mut d = net(ALL);
        assert_eq!(d.dev.device().backend().offloads, Offloads { csum: true, tso4: true, tso6: true });
        for i in 0..20u16 {
            let head = d.add_chain_to(RX_QUEUE, i, &[wo(BUFFERS + 0x1000 * u64::from(i), 4096)]);
            d.publish_to(RX_QUEUE, head);
        }
        let f = tso_frame(65_000);
        assert_eq!(rx(&mut d, &f), Rx::Delivered { notify: true });
        let used = d.used_idx_of(RX_QUEUE);
        assert_eq!(used, 16, "65,012 bytes over 4 KiB buffers");
        let mut got = Vec::new();
        for i in 0..used {
            let (head, len) = d.used_of(RX_QUEUE, i);
            got.extend(d.read_bytes(BUFFERS + 0x1000 * u64::from(head), len as usize));
        }
        assert_eq!(got[..10], f[..10], "the offload fields as the TAP gave them");
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 16, "num_buffers");
        assert_eq!(got[12..], f[12..]);
        // A driver that accepts no segments: the backend is told, and one that comes anyway
        // is dropped; a reset clears the backend's offloads.
        let mut d = net(ALL & !(1 << VIRTIO_NET_F_GUEST_TSO4) & !(1 << VIRTIO_NET_F_GUEST_TSO6));
        assert_eq!(d.dev.device().backend().offloads, Offloads { csum: true, tso4: false, tso6: false });
        let head = d.add_chain_to(RX_QUEUE, 0, &[wo(BUFFERS, 0x10000)]);
        d.publish_to(RX_QUEUE, head);
        assert_eq!(rx(&mut d, &f), Rx::Dropped { notify: false });
        assert_eq!(d.dev.device().counters().rx_offload, 1);
        d.dev.reset();
        assert_eq!(d.dev.device().backend().offloads, Offloads::default());
    }

    #[test]
    fn without_merged_buffers_a_frame_needs_one_chain_or_is_dropped() {
        let mut d = net(ALL & !MRG);
        let head = d.add_chain_to(RX_QUEUE, 0, &[wo(BUFFERS, 12), wo(BUFFERS + 0x100, 100)]);
        d.publish_to(RX_QUEUE, head);
        assert_eq!(rx(&mut d, &frame(200)), Rx::Dropped { notify: false });
        assert_eq!(d.dev.device().counters().rx_too_large, 1);
        assert_eq!(d.used_idx_of(RX_QUEUE), 0, "the buffer stays for a frame that fits");
        assert_eq!(rx(&mut d, &frame(50)), Rx::Delivered { notify: true });
        assert_eq!(d.used_of(RX_QUEUE, 0), (0, 62));
        assert_eq!(d.read_bytes(BUFFERS + 10, 2), [1, 0], "num_buffers");
        assert_eq!(d.read_bytes(BUFFERS + 0x100, 50), frame(50)[12..]);
    }

    #[test]
    fn hostile_receive_chains_drop_the_frame_not_the_device() {
        let mut d = net(ALL);
        // Device-readable, then outside guest memory.
        let a = d.add_chain_to(RX_QUEUE, 0, &[ro(BUFFERS, 2048)]);
        d.publish_to(RX_QUEUE, a);
        let b = d.add_chain_to(RX_QUEUE, 1, &[wo(0x7fff_0000, 2048)]);
        d.publish_to(RX_QUEUE, b);
        assert!(matches!(rx(&mut d, &frame(100)), Rx::Dropped { .. }));
        assert!(matches!(rx(&mut d, &frame(100)), Rx::Dropped { .. }));
        assert_eq!(d.dev.device().counters().rx_malformed, 2);
        assert_eq!(d.used_idx_of(RX_QUEUE), 2, "returned empty");
        // An offload no driver may ask for (UDP fragmentation), too short, too long: dropped.
        let mut gso = frame(100);
        gso[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        gso[1] = virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_UDP as u8;
        for f in [gso, vec![0; 5], vec![0; MAX_FRAME + 1]] {
            assert_eq!(rx(&mut d, &f), Rx::Dropped { notify: false });
        }
        let c = d.dev.device().counters();
        assert_eq!((c.rx_offload, c.rx_malformed, c.rx_too_large), (1, 3, 1));
        // And a good frame still goes in.
        let head = d.add_chain_to(RX_QUEUE, 2, &[wo(BUFFERS, 2048)]);
        d.publish_to(RX_QUEUE, head);
        assert_eq!(rx(&mut d, &frame(100)), Rx::Delivered { notify: true });
    }

    /// `avail_event` (after the used ring's entries) and `used_event` (after the available
    /// ring's) of queue `q`.
    fn event_slots(q: usize) -> (u64, u64) {
        let (_, avail, used) = crate::virtio::test_util::rings(q as u16);
        let n = u64::from(NET_QUEUE_SIZE);
        (used + 4 + 8 * n, avail + 4 + 2 * n)
    }

    #[test]
    fn notifications_are_asked_for_only_when_needed() {
        // Without EVENT_IDX: the used ring's NO_NOTIFY flag. Receive buffers are not asked
        // for while frames find some, and are once one finds none.
        let mut d = net(ALL);
        let (_, _, used) = crate::virtio::test_util::rings(RX_QUEUE as u16);
        let head = d.add_chain_to(RX_QUEUE, 0, &[wo(BUFFERS, 2048)]);
        d.publish_to(RX_QUEUE, head);
        assert_eq!(rx(&mut d, &frame(100)), Rx::Delivered { notify: true });
        assert_eq!(d.read_bytes(used, 2), [1, 0], "NO_NOTIFY while buffers last");
        assert_eq!(rx(&mut d, &frame(100)), Rx::NoBuffers);
        assert_eq!(d.read_bytes(used, 2), [0, 0], "notify me when you add one");
        // With EVENT_IDX: avail_event. The driver wants an interrupt at every used entry.
        let mut d = net(ALL | EVENT_IDX);
        let (rx_avail_event, rx_used_event) = event_slots(RX_QUEUE);
        let (tx_avail_event, tx_used_event) = event_slots(TX_QUEUE);
        for i in 0..2u16 {
            let head = d.add_chain_to(RX_QUEUE, i, &[wo(BUFFERS + 0x1000 * u64::from(i), 2048)]);
            d.publish_to(RX_QUEUE, head);
        }
        d.write_bytes(rx_used_event, &0u16.to_le_bytes());
        assert_eq!(rx(&mut d, &frame(100)), Rx::Delivered { notify: true });
        d.write_bytes(rx_used_event, &1u16.to_le_bytes());
        assert_eq!(rx(&mut d, &frame(100)), Rx::Delivered { notify: true });
        assert_eq!(d.read_bytes(rx_avail_event, 2), [0, 0], "not asked for while buffers lasted");
        assert_eq!(rx(&mut d, &frame(100)), Rx::NoBuffers);
        assert_eq!(d.read_bytes(rx_avail_event, 2), [2, 0], "asked for at the next buffer");
        // A frame that needs more buffers than there are: asked for past the ones it found,
        // which the driver has already passed (avail_event there would never be crossed).
        let head = d.add_chain_to(RX_QUEUE, 5, &[wo(BUFFERS + 0x5000, 1024)]);
        d.publish_to(RX_QUEUE, head);
        assert_eq!(rx(&mut d, &frame(2000)), Rx::NoBuffers);
        assert_eq!(d.read_bytes(rx_avail_event, 2), [3, 0], "asked for at the buffer after the one found");
        assert!(matches!(rx(&mut d, &frame(100)), Rx::Delivered { .. }), "the one found is still there");
        // The driver suppresses interrupts it does not want: used_event far ahead.
        let head = d.add_chain_to(RX_QUEUE, 2, &[wo(BUFFERS + 0x2000, 2048)]);
        d.publish_to(RX_QUEUE, head);
        d.write_bytes(rx_used_event, &100u16.to_le_bytes());
        assert_eq!(rx(&mut d, &frame(100)), Rx::Delivered { notify: false });
        // A frame over two buffers passes a used_event at its first entry (4) or its last (7).
        for (event, first) in [(4u16, 6u16), (7, 8)] {
            for i in first..first + 2 {
                let head = d.add_chain_to(RX_QUEUE, i, &[wo(BUFFERS + 0x1000 * u64::from(i), 1024)]);
                d.publish_to(RX_QUEUE, head);
            }
            d.write_bytes(rx_used_event, &event.to_le_bytes());
            assert_eq!(rx(&mut d, &frame(1500)), Rx::Delivered { notify: true }, "used_event {event}");
        }
        // Transmit: drained, then asked for at the next frame.
        d.write_bytes(BUFFERS + 0x8000, &frame(60));
        for i in 0..3u16 {
            let head = d.add_chain_to(TX_QUEUE, i, &[ro(BUFFERS + 0x8000, 72)]);
            d.publish_to(TX_QUEUE, head);
        }
        d.write_bytes(tx_used_event, &0u16.to_le_bytes());
        assert!(d.notify(TX_QUEUE as u32));
        assert_eq!(d.dev.device().backend().sent.len(), 3);
        assert_eq!(d.read_bytes(tx_avail_event, 2), [3, 0]);
    }

    #[test]
    fn a_transmit_ring_whose_index_runs_too_far_ahead_stops_nothing() {
        // An available index more than the queue's size ahead: the queue refuses to walk it,
        // while it still says more is available. The transmit pass must end (the fuzzer's
        // input spun it forever), and the device serve the driver once the index is sane.
        let mut d = net(ALL);
        let avail_idx = crate::virtio::test_util::rings(TX_QUEUE as u16).1 + 2;
        d.write_bytes(avail_idx, &1000u16.to_le_bytes());
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let interrupt = d.notify(TX_QUEUE as u32);
            let _ = done.send((interrupt, d));
        });
        let (interrupt, mut d) =
            result.recv_timeout(std::time::Duration::from_secs(30)).expect("the transmit pass never ended");
        assert!(!interrupt);
        assert_eq!(d.used_idx_of(TX_QUEUE), 0);
        d.write_bytes(avail_idx, &0u16.to_le_bytes());
        d.write_bytes(BUFFERS, &frame(60));
        let head = d.add_chain_to(TX_QUEUE, 0, &[ro(BUFFERS, 72)]);
        d.publish_to(TX_QUEUE, head);
        assert!(d.notify(TX_QUEUE as u32));
        assert_eq!(d.dev.device().backend().sent.len(), 1);
    }

    #[test]
    fn after_a_crash_nothing_is_received_until_the_next_driver_and_frames_still_go_out() {
        let mut d = net(ALL);
        let head = d.add_chain_to(RX_QUEUE, 0, &[wo(BUFFERS, 2048)]);
        d.publish_to(RX_QUEUE, head);
        d.write_bytes(BUFFERS, &[0xaa; 64]);
        d.dev.device_mut().hold_rx();
        assert_eq!(rx(&mut d, &frame(100)), Rx::Dropped { notify: false });
        assert_eq!(d.used_idx_of(RX_QUEUE), 0, "no buffer used");
        assert_eq!(d.read_bytes(BUFFERS, 64), [0xaa; 64], "guest memory untouched");
        assert_eq!(d.dev.device().counters().rx_held, 1);
        d.write_bytes(BUFFERS + 0x8000, &frame(60));
        let head = d.add_chain_to(TX_QUEUE, 0, &[ro(BUFFERS + 0x8000, 72)]);
        d.publish_to(TX_QUEUE, head);
        d.notify(TX_QUEUE as u32);
        assert_eq!(d.dev.device().backend().sent.len(), 1, "a panic's netconsole still goes out");
        // The next driver (the crash kernel's, or the kernel after a reboot) receives again.
        d.dev.reset();
        d.handshake_queues(ALL, 2);
        let head = d.add_chain_to(RX_QUEUE, 0, &[wo(BUFFERS, 2048)]);
        d.publish_to(RX_QUEUE, head);
        assert_eq!(rx(&mut d, &frame(100)), Rx::Delivered { notify: true });
    }

    #[test]
    fn reset_forgets_the_features_and_the_transport_refuses_a_dead_queue() {
        let mut d = net(ALL);
        d.dev.reset();
        let mem = d.mem.clone();
        assert_eq!(d.dev.process_with(RX_QUEUE, &mem, |net, q, mem| net.receive(q, mem, &frame(10))), None);
        d.handshake_queues(ALL & !MRG, 2);
        assert_eq!(d.dev.acked_features() & MRG, 0);
        assert!(d.dev.device_mut().take_rx_kick(), "activation offers frames");
        assert!(!d.dev.device_mut().take_rx_kick());
        d.notify(RX_QUEUE as u32);
        assert!(d.dev.device_mut().take_rx_kick());
    }
}
