//! The VMBus channel message codec: any bytes are parsed or rejected with the right reason, what
//! parses round-trips through the guest's encoding, and the host's messages are well-formed.

#![no_main]

use crashvmm_fuzz::guest_message;
use devices::vmbus::messages::*;
use libfuzzer_sys::fuzz_target;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// The classification, from the layouts: the SynIC payload bounds, then the message type, then
/// the size of the one type whose fields crashvmm reads.
fn expected(b: &[u8]) -> Result<u32, MessageError> {
    if b.len() > MAX_MESSAGE_SIZE {
        return Err(MessageError::Oversized { len: b.len() });
    }
    if b.len() < HEADER_SIZE {
        return Err(MessageError::NoHeader { len: b.len() });
    }
    let msgtype = u32_at(b, 0);
    if msgtype == 0 || msgtype >= CHANNELMSG_COUNT {
        return Err(MessageError::UnknownType { msgtype });
    }
    if msgtype == CHANNELMSG_INITIATE_CONTACT && b.len() < INITIATE_CONTACT_SIZE {
        return Err(MessageError::Truncated { msgtype, need: INITIATE_CONTACT_SIZE, len: b.len() });
    }
    Ok(msgtype)
}

fn msgtype(m: &GuestMessage) -> u32 {
    match m {
        GuestMessage::InitiateContact { .. } => CHANNELMSG_INITIATE_CONTACT,
        GuestMessage::RequestOffers => CHANNELMSG_REQUESTOFFERS,
        GuestMessage::Unload => CHANNELMSG_UNLOAD,
        GuestMessage::Unsupported { msgtype } => {
            assert!(
                ![CHANNELMSG_INITIATE_CONTACT, CHANNELMSG_REQUESTOFFERS, CHANNELMSG_UNLOAD].contains(msgtype),
                "a served type parsed as Unsupported"
            );
            *msgtype
        }
    }
}

/// A host message: a channel message of `want` type that fits a SynIC payload.
fn host_message(b: &[u8], want: u32) {
    assert!(b.len() <= MAX_MESSAGE_SIZE, "host message of {} bytes", b.len());
    assert_eq!(parse(b), Ok(GuestMessage::Unsupported { msgtype: want }));
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    assert_eq!(parsed.as_ref().map(msgtype).map_err(Clone::clone), expected(data), "{data:02x?}");
    match parsed {
        // The reason goes into the event log.
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(m) => {
            let enc = guest_message(&m);
            assert_eq!(parse(&enc).as_ref(), Ok(&m), "round trip");
            // Every field came from where Linux puts it: the encoding is the input, header
            // padding cleared, without the trailing bytes of a newer guest.
            let mut want = data[..enc.len()].to_vec();
            want[4..HEADER_SIZE].fill(0);
            assert_eq!(enc, want);
        }
    }

    // The host's messages, with fields from the same bytes.
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let word = |i: usize| u32::from_le_bytes([byte(i), byte(i + 1), byte(i + 2), byte(i + 3)]);
    let supported = byte(0) & 1 != 0;
    let r = version_response(supported, word(1));
    host_message(&r, CHANNELMSG_VERSION_RESPONSE);
    assert_eq!((r.len(), r[8] != 0, u32_at(&r, 12)), (VERSION_RESPONSE_SIZE, supported, word(1)));
    host_message(&all_offers_delivered(), CHANNELMSG_ALLOFFERS_DELIVERED);
    host_message(&unload_response(), CHANNELMSG_UNLOAD_RESPONSE);
    let offer = ChannelOffer {
        interface_type: std::array::from_fn(|i| byte(5 + i)),
        interface_instance: std::array::from_fn(|i| byte(21 + i)),
        child_relid: word(37),
        connection_id: word(41),
    };
    let o = offer.encode();
    host_message(&o, CHANNELMSG_OFFERCHANNEL);
    assert_eq!(o.len(), OFFER_CHANNEL_SIZE);
    assert_eq!((&o[8..24], &o[24..40]), (&offer.interface_type[..], &offer.interface_instance[..]));
    assert_eq!((u32_at(&o, 184), u32_at(&o, 192)), (offer.child_relid, offer.connection_id));
});
