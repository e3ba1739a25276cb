//! virtio devices and their transports.
//!
//! - [`common`]: [`VirtioCommon`], what every transport keeps for a [`VirtioDevice`]: feature
//!   negotiation, the status handshake, the split virtqueues (`virtio_queue::Queue`), queue
//!   setup, notifications and the interrupt status.
//! - [`mmio`]: [`VirtioMmio`], the virtio-mmio version 2 ("modern") register window (virtio 1.x
//!   §4.2.2) decoded onto it.
//! - [`pci`]: [`VirtioPci`], a modern virtio-pci function (virtio 1.x §4.1): its configuration
//!   space and capabilities, BAR 0 (common configuration, ISR, device configuration,
//!   notifications) decoded onto it, and MSI-X (the messages it says to send).
//! - [`block`]: [`VirtioBlock`], a virtio-blk device (one request queue) over a [`BlockBackend`],
//!   so that no file is touched here; [`VecBackend`] keeps the disk in memory.
//! - [`net`]: [`VirtioNet`], a virtio-net device (receive and transmit queues) over a
//!   [`NetBackend`] for the frames it sends; received frames are handed to it
//!   ([`VirtioNet::receive`], through [`VirtioCommon::process_with`]).
//!
//! Guest memory is `vm_memory::GuestMemory` (what `virtio_queue` works with), not the crate's own
//! [`crate::GuestMemory`]: every access is bounds-checked either way. A block device's requests
//! are processed synchronously inside the `QueueNotify` write; a network device's queues are
//! served by the VMM's I/O thread (notifications by ioeventfd: [`VirtioCommon::notify_queue`],
//! [`VirtioCommon::process_with`]). Either way the transport reports whether the device
//! interrupt must be raised (virtio-pci: which MSI-X message) and the VMM raises it.
//!
//! Nothing a guest writes panics: malformed accesses and requests are refused, logged (warnings
//! for the first few per device, debug level after that) and, for requests, completed with an
//! error status wherever the request has a status byte to write.

pub mod block;
pub mod common;
pub mod mmio;
pub mod net;
pub mod pci;

#[cfg(test)]
mod test_util;

pub use block::{BlockBackend, VecBackend, VirtioBlock, VirtioBlockError};
pub use common::{NeedsInterrupt, VirtioCommon, VirtioDevice, VirtioError};
pub use mmio::{VirtioMmio, VIRTIO_MMIO_ACPI_HID, VIRTIO_MMIO_WINDOW};
pub use net::{NetBackend, NetCounters, Offloads, Rx, VecNetBackend, VirtioNet};
pub use pci::{MsiMessage, VirtioPci};

/// How many guest mistakes a device reports as warnings before it goes quiet (debug level), so a
/// hostile or broken guest cannot flood the host log.
const GUEST_WARNINGS: u32 = 16;

/// The next chain the driver made available in `queue`, or `None`: none is, or the ring cannot
/// be read (logged for `device` at `warnings`' level).
fn next_chain<'m, M: vm_memory::GuestMemory>(
    queue: &mut virtio_queue::Queue,
    mem: &'m M,
    warnings: &mut GuestWarnings,
    device: &str,
) -> Option<virtio_queue::DescriptorChain<&'m M>> {
    use virtio_queue::QueueOwnedT;
    match queue.iter(mem) {
        Ok(mut chains) => chains.next(),
        Err(e) => {
            log::log!(warnings.level(), "{device}: queue unusable: {e}");
            None
        }
    }
}

/// Chooses the log level for guest-caused problems: `Warn` for the first [`GUEST_WARNINGS`], then
/// `Debug`.
#[derive(Debug, Default)]
struct GuestWarnings {
    reported: u32,
}

impl GuestWarnings {
    fn level(&mut self) -> log::Level {
        if self.reported < GUEST_WARNINGS {
            self.reported += 1;
            if self.reported == GUEST_WARNINGS {
                log::warn!("virtio: this device logs further guest errors at debug level only");
            }
            log::Level::Warn
        } else {
            log::Level::Debug
        }
    }
}
