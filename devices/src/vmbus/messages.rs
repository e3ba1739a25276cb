//! VMBus channel messages (`drivers/hv/hyperv_vmbus.h`, `include/linux/hyperv.h`): the
//! numbers, the layouts crashvmm reads and writes, and a codec that rejects malformed input
//! with a reason instead of panicking.

use thiserror::Error;

/// Connection ids of the VMBus message port.
pub const VMBUS_MESSAGE_CONNECTION_ID: u32 = 1;
/// INITIATE_CONTACT for protocol 5.0 and later.
pub const VMBUS_MESSAGE_CONNECTION_ID_4: u32 = 4;
/// SynIC message type of every VMBus message.
pub const VMBUS_SYNIC_MESSAGE_TYPE: u32 = 1;

/// `enum vmbus_channel_message_type`.
pub const CHANNELMSG_OFFERCHANNEL: u32 = 1;
pub const CHANNELMSG_RESCIND_CHANNELOFFER: u32 = 2;
pub const CHANNELMSG_REQUESTOFFERS: u32 = 3;
pub const CHANNELMSG_ALLOFFERS_DELIVERED: u32 = 4;
pub const CHANNELMSG_INITIATE_CONTACT: u32 = 14;
pub const CHANNELMSG_VERSION_RESPONSE: u32 = 15;
pub const CHANNELMSG_UNLOAD: u32 = 16;
pub const CHANNELMSG_UNLOAD_RESPONSE: u32 = 17;
/// `CHANNELMSG_COUNT`: message types at or above this are invalid.
pub const CHANNELMSG_COUNT: u32 = 25;

/// Protocol versions, `(major << 16) | minor`.
pub const VERSION_WS2008: u32 = 0x0000_000d;
pub const VERSION_WIN7: u32 = 0x0001_0001;
pub const VERSION_WIN8: u32 = 0x0002_0004;
pub const VERSION_WIN8_1: u32 = 0x0003_0000;
pub const VERSION_WIN10: u32 = 0x0004_0000;
pub const VERSION_WIN10_V4_1: u32 = 0x0004_0001;
pub const VERSION_WIN10_V5: u32 = 0x0005_0000;
pub const VERSION_WIN10_V5_1: u32 = 0x0005_0001;
pub const VERSION_WIN10_V5_2: u32 = 0x0005_0002;
pub const VERSION_WIN10_V5_3: u32 = 0x0005_0003;

/// Versions crashvmm accepts. 3.0 (WIN8_1) is the lowest with an UNLOAD on crash.
pub const SUPPORTED_VERSIONS: [u32; 7] = [
    VERSION_WIN10_V5_3,
    VERSION_WIN10_V5_2,
    VERSION_WIN10_V5_1,
    VERSION_WIN10_V5,
    VERSION_WIN10_V4_1,
    VERSION_WIN10,
    VERSION_WIN8_1,
];

/// `major.minor` of a protocol version.
pub fn version_string(v: u32) -> String {
    format!("{}.{}", v >> 16, v & 0xffff)
}

/// `struct vmbus_channel_message_header`.
pub const HEADER_SIZE: usize = 8;
/// `struct vmbus_channel_initiate_contact`.
pub const INITIATE_CONTACT_SIZE: usize = 40;
/// `struct vmbus_channel_version_response`.
pub const VERSION_RESPONSE_SIZE: usize = 16;
/// `struct vmbus_channel_offer_channel`.
pub const OFFER_CHANNEL_SIZE: usize = 196;
/// Largest SynIC payload.
pub const MAX_MESSAGE_SIZE: usize = 240;

/// A message from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    InitiateContact {
        version: u32,
        target_vcpu: u32,
        /// `interrupt_page` (v < 5.0) or `msg_sint` in the low byte (v >= 5.0).
        interrupt_page_or_sint: u64,
        monitor_page1: u64,
        monitor_page2: u64,
    },
    RequestOffers,
    Unload,
    /// A well-formed message of a type crashvmm does not serve (it offers no channels).
    Unsupported {
        msgtype: u32,
    },
}

/// Why a guest message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    #[error("message of {len} bytes is shorter than the 8-byte header")]
    NoHeader { len: usize },
    #[error("message of {len} bytes is larger than the {MAX_MESSAGE_SIZE}-byte SynIC payload")]
    Oversized { len: usize },
    #[error("message type {msgtype} is not a VMBus channel message type")]
    UnknownType { msgtype: u32 },
    #[error("message type {msgtype} needs {need} bytes, got {len}")]
    Truncated { msgtype: u32, need: usize, len: usize },
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

/// Parse a message the guest posted. Longer messages than a type needs are accepted (newer
/// guests may append fields); shorter ones are not.
pub fn parse(b: &[u8]) -> Result<GuestMessage, MessageError> {
    if b.len() > MAX_MESSAGE_SIZE {
        return Err(MessageError::Oversized { len: b.len() });
    }
    if b.len() < HEADER_SIZE {
        return Err(MessageError::NoHeader { len: b.len() });
    }
    let msgtype = u32_at(b, 0);
    let need = |n: usize| {
        if b.len() < n {
            Err(MessageError::Truncated { msgtype, need: n, len: b.len() })
        } else {
            Ok(())
        }
    };
    match msgtype {
        CHANNELMSG_INITIATE_CONTACT => {
            need(INITIATE_CONTACT_SIZE)?;
            Ok(GuestMessage::InitiateContact {
                version: u32_at(b, 8),
                target_vcpu: u32_at(b, 12),
                interrupt_page_or_sint: u64_at(b, 16),
                monitor_page1: u64_at(b, 24),
                monitor_page2: u64_at(b, 32),
            })
        }
        CHANNELMSG_REQUESTOFFERS => Ok(GuestMessage::RequestOffers),
        CHANNELMSG_UNLOAD => Ok(GuestMessage::Unload),
        0 | CHANNELMSG_COUNT.. => Err(MessageError::UnknownType { msgtype }),
        _ => Ok(GuestMessage::Unsupported { msgtype }),
    }
}

fn header(msgtype: u32, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    v[0..4].copy_from_slice(&msgtype.to_le_bytes());
    v
}

/// `VERSION_RESPONSE`: `version_supported`, `connection_state` 0, and the connection id the
/// guest must use from now on (read by Linux for protocol 5.0+).
pub fn version_response(supported: bool, msg_conn_id: u32) -> Vec<u8> {
    let mut v = header(CHANNELMSG_VERSION_RESPONSE, VERSION_RESPONSE_SIZE);
    v[8] = supported as u8;
    v[12..16].copy_from_slice(&msg_conn_id.to_le_bytes());
    v
}

pub fn all_offers_delivered() -> Vec<u8> {
    header(CHANNELMSG_ALLOFFERS_DELIVERED, HEADER_SIZE)
}

pub fn unload_response() -> Vec<u8> {
    header(CHANNELMSG_UNLOAD_RESPONSE, HEADER_SIZE)
}

/// A channel crashvmm offers the guest (none today; devices plug in here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOffer {
    pub interface_type: [u8; 16],
    pub interface_instance: [u8; 16],
    pub child_relid: u32,
    pub connection_id: u32,
}

impl ChannelOffer {
    /// `struct vmbus_channel_offer_channel` with a dedicated interrupt and no monitor page.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = header(CHANNELMSG_OFFERCHANNEL, OFFER_CHANNEL_SIZE);
        v[8..24].copy_from_slice(&self.interface_type);
        v[24..40].copy_from_slice(&self.interface_instance);
        // struct vmbus_channel_offer is 176 bytes; then child_relid, monitorid,
        // monitor_allocated, is_dedicated_interrupt, connection_id.
        let o = HEADER_SIZE + 176;
        v[o..o + 4].copy_from_slice(&self.child_relid.to_le_bytes());
        v[o + 6..o + 8].copy_from_slice(&1u16.to_le_bytes());
        v[o + 8..o + 12].copy_from_slice(&self.connection_id.to_le_bytes());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initiate(version: u32, target: u32) -> Vec<u8> {
        let mut b = header(CHANNELMSG_INITIATE_CONTACT, INITIATE_CONTACT_SIZE);
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&target.to_le_bytes());
        b[16] = 2;
        b[24..32].copy_from_slice(&0x1234_5000u64.to_le_bytes());
        b
    }

    #[test]
    fn parses_linux_messages() {
        assert_eq!(
            parse(&initiate(VERSION_WIN10_V5_3, 1)),
            Ok(GuestMessage::InitiateContact {
                version: 0x0005_0003,
                target_vcpu: 1,
                interrupt_page_or_sint: 2,
                monitor_page1: 0x1234_5000,
                monitor_page2: 0
            })
        );
        assert_eq!(parse(&header(CHANNELMSG_REQUESTOFFERS, 8)), Ok(GuestMessage::RequestOffers));
        assert_eq!(parse(&header(CHANNELMSG_UNLOAD, 8)), Ok(GuestMessage::Unload));
        assert_eq!(parse(&header(5, 32)), Ok(GuestMessage::Unsupported { msgtype: 5 }));
        // Trailing bytes from a newer guest are fine.
        assert!(parse(&[initiate(VERSION_WIN8_1, 0), vec![0; 8]].concat()).is_ok());
    }

    #[test]
    fn rejects_malformed_messages() {
        assert_eq!(parse(&[]), Err(MessageError::NoHeader { len: 0 }));
        assert_eq!(parse(&[14, 0, 0]), Err(MessageError::NoHeader { len: 3 }));
        assert_eq!(
            parse(&initiate(VERSION_WIN10, 0)[..39]),
            Err(MessageError::Truncated { msgtype: 14, need: 40, len: 39 })
        );
        assert_eq!(parse(&header(0, 8)), Err(MessageError::UnknownType { msgtype: 0 }));
        assert_eq!(parse(&header(25, 8)), Err(MessageError::UnknownType { msgtype: 25 }));
        assert_eq!(parse(&header(0xffff_ffff, 8)), Err(MessageError::UnknownType { msgtype: 0xffff_ffff }));
        assert_eq!(parse(&vec![0u8; 241]), Err(MessageError::Oversized { len: 241 }));
    }

    #[test]
    fn parse_never_panics_on_any_short_input() {
        for len in 0..=64usize {
            for t in 0..=26u8 {
                let mut b = vec![0xa5u8; len];
                if len > 0 {
                    b[0] = t;
                }
                if len >= 4 {
                    b[1..4].fill(0);
                }
                let _ = parse(&b);
            }
        }
    }

    #[test]
    fn encodes_host_messages() {
        let r = version_response(true, VMBUS_MESSAGE_CONNECTION_ID);
        assert_eq!(r.len(), 16);
        assert_eq!(u32_at(&r, 0), 15);
        assert_eq!(r[8], 1);
        assert_eq!(u32_at(&r, 12), 1);
        assert_eq!(version_response(false, 0)[8], 0);
        assert_eq!(all_offers_delivered(), vec![4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(unload_response(), vec![17, 0, 0, 0, 0, 0, 0, 0]);
        let offer =
            ChannelOffer { interface_type: [1; 16], interface_instance: [2; 16], child_relid: 7, connection_id: 0x20 };
        let b = offer.encode();
        assert_eq!(b.len(), 196);
        assert_eq!(u32_at(&b, 184), 7);
        assert_eq!(u32_at(&b, 192), 0x20);
        assert_eq!(version_string(VERSION_WIN10_V5_3), "5.3");
    }
}
