//! The VMBus server state machine: version negotiation, offers, UNLOAD, and the crash
//! kernel's reconnect.

use std::collections::VecDeque;
use std::time::Duration;

use super::messages::*;
use crate::hyperv::tlfs::{HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_INVALID_PARAMETER, HV_STATUS_SUCCESS};

/// INITIATE_CONTACTs kept while an UNLOAD is being answered.
pub const MAX_QUEUED_CONTACTS: usize = 4;

/// Server settings (the UNLOAD knobs are for crash-injection tests).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub vcpus: u32,
    /// Answer UNLOAD this late (an Azure host flushing its disk cache answers late too).
    pub unload_delay: Duration,
    /// Answer UNLOAD at all (off: the guest falls back after its 100 s wait).
    pub unload_response: bool,
}

/// What kind of message a [`Output::Send`] carries, for the VMM's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    VersionResponse,
    Offer,
    AllOffersDelivered,
    /// When it is posted, call [`VmbusServer::unload_response_posted`].
    UnloadResponse,
}

/// Facts for the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Connected {
        vcpu: u32,
        version: u32,
        target_vcpu: u32,
    },
    /// INITIATE_CONTACT with a version crashvmm does not speak; answered "not supported".
    VersionRejected {
        vcpu: u32,
        version: u32,
    },
    UnloadRequested {
        vcpu: u32,
    },
    /// A message the server refused, with the reason.
    Rejected {
        vcpu: u32,
        reason: String,
    },
}

/// What the VMM must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Post `payload` to VP `vp` on SINT 2 (SynIC message type 1), `delay` from now.
    Send {
        vp: u32,
        payload: Vec<u8>,
        delay: Duration,
        kind: SendKind,
    },
    /// Drop every VMBus message still queued for any VP (the connection was reset).
    ClearQueues,
    Event(ServerEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Disconnected,
    Connected {
        version: u32,
        target_vp: u32,
    },
    /// UNLOAD received; its response goes to `target_vp` and has not been posted yet.
    Unloading {
        target_vp: u32,
    },
}

/// The server.
#[derive(Debug)]
pub struct VmbusServer {
    config: ServerConfig,
    state: State,
    offers: Vec<ChannelOffer>,
    /// INITIATE_CONTACTs that arrived during an UNLOAD, answered after it.
    queued_contacts: VecDeque<(u32, Vec<u8>)>,
}

impl VmbusServer {
    pub fn new(config: ServerConfig) -> Self {
        Self { config, state: State::Disconnected, offers: Vec::new(), queued_contacts: VecDeque::new() }
    }

    /// Offer a channel from the next REQUESTOFFERS on.
    pub fn add_offer(&mut self, offer: ChannelOffer) {
        self.offers.push(offer);
    }

    /// Whether UNLOAD gets an answer (the `unload_response` knob).
    /// The most SynIC messages one guest message can cause (the VMM keeps room for them).
    pub fn max_replies(&self) -> usize {
        // REQUESTOFFERS: every offer and ALLOFFERS_DELIVERED; an INITIATE_CONTACT held during an
        // UNLOAD: the UNLOAD_RESPONSE and the VERSION_RESPONSE.
        self.offers.len().max(1) + 1
    }

    pub fn answers_unload(&self) -> bool {
        self.config.unload_response
    }

    /// The negotiated version and target VP, when connected.
    pub fn connection(&self) -> Option<(u32, u32)> {
        match self.state {
            State::Connected { version, target_vp } => Some((version, target_vp)),
            _ => None,
        }
    }

    /// An HvPostMessage from `vp`; returns the hypercall status and what to do.
    pub fn post_message(&mut self, vp: u32, connection_id: u32, payload: &[u8]) -> (u16, Vec<Output>) {
        let msg = match parse(payload) {
            Ok(m) => m,
            Err(e) => return reject(vp, e.to_string()),
        };
        let is_contact = matches!(msg, GuestMessage::InitiateContact { .. });
        let port_ok = connection_id == VMBUS_MESSAGE_CONNECTION_ID
            || (is_contact && connection_id == VMBUS_MESSAGE_CONNECTION_ID_4);
        if !port_ok {
            // Linux reacts to this on INITIATE_CONTACT by trying the next version.
            return (HV_STATUS_INVALID_CONNECTION_ID, vec![]);
        }
        match msg {
            GuestMessage::InitiateContact { .. } if matches!(self.state, State::Unloading { .. }) => {
                // The race that hung kdump kernels on Hyper-V: answer after the UNLOAD.
                if self.queued_contacts.len() >= MAX_QUEUED_CONTACTS {
                    self.queued_contacts.pop_front();
                }
                self.queued_contacts.push_back((vp, payload.to_vec()));
                (HV_STATUS_SUCCESS, vec![])
            }
            GuestMessage::InitiateContact { version, target_vcpu, .. } => {
                (HV_STATUS_SUCCESS, self.initiate_contact(vp, version, target_vcpu))
            }
            GuestMessage::RequestOffers => match self.state {
                State::Connected { target_vp, .. } => (HV_STATUS_SUCCESS, self.offers(target_vp)),
                _ => reject(vp, "REQUESTOFFERS without a connection".into()),
            },
            GuestMessage::Unload => (HV_STATUS_SUCCESS, self.unload(vp)),
            GuestMessage::Unsupported { msgtype } => {
                reject(vp, format!("message type {msgtype} needs a channel, and none is offered"))
            }
        }
    }

    fn initiate_contact(&mut self, vp: u32, version: u32, target_vcpu: u32) -> Vec<Output> {
        // Any INITIATE_CONTACT resets the connection: the crash kernel reconnects whatever state
        // the crashed kernel left.
        self.state = State::Disconnected;
        let mut out = vec![Output::ClearQueues];
        let target_ok = target_vcpu < self.config.vcpus;
        let reply_to = if target_ok { target_vcpu } else { vp };
        let send =
            |payload| Output::Send { vp: reply_to, payload, delay: Duration::ZERO, kind: SendKind::VersionResponse };
        if !target_ok {
            out.push(Output::Event(ServerEvent::Rejected {
                vcpu: vp,
                reason: format!(
                    "INITIATE_CONTACT names target VP {target_vcpu}, the partition has {}",
                    self.config.vcpus
                ),
            }));
            out.push(send(version_response(false, 0)));
        } else if !SUPPORTED_VERSIONS.contains(&version) {
            out.push(Output::Event(ServerEvent::VersionRejected { vcpu: vp, version }));
            out.push(send(version_response(false, 0)));
        } else {
            self.state = State::Connected { version, target_vp: target_vcpu };
            out.push(send(version_response(true, VMBUS_MESSAGE_CONNECTION_ID)));
            out.push(Output::Event(ServerEvent::Connected { vcpu: vp, version, target_vcpu }));
        }
        out
    }

    fn offers(&self, target_vp: u32) -> Vec<Output> {
        let send = |payload, kind| Output::Send { vp: target_vp, payload, delay: Duration::ZERO, kind };
        let mut out: Vec<Output> = self.offers.iter().map(|o| send(o.encode(), SendKind::Offer)).collect();
        out.push(send(all_offers_delivered(), SendKind::AllOffersDelivered));
        out
    }

    fn unload(&mut self, vp: u32) -> Vec<Output> {
        let target_vp = match self.state {
            State::Connected { target_vp, .. } => target_vp,
            // Already answering one: the guest only sends UNLOAD once per connection.
            State::Unloading { .. } => return vec![],
            // Not connected: answer the sender anyway, as Hyper-V does.
            State::Disconnected => vp,
        };
        let mut out = vec![Output::Event(ServerEvent::UnloadRequested { vcpu: vp })];
        if self.config.unload_response {
            self.state = State::Unloading { target_vp };
            out.push(Output::Send {
                vp: target_vp,
                payload: unload_response(),
                delay: self.config.unload_delay,
                kind: SendKind::UnloadResponse,
            });
        } else {
            self.state = State::Disconnected;
        }
        out
    }

    /// The VMM posted the UNLOAD_RESPONSE: the connection is gone; answer any INITIATE_CONTACT
    /// that arrived meanwhile. Their replies come after the UNLOAD_RESPONSE, which is still
    /// queued: so no [`Output::ClearQueues`] here (that would drop it).
    pub fn unload_response_posted(&mut self) -> Vec<Output> {
        if matches!(self.state, State::Unloading { .. }) {
            self.state = State::Disconnected;
        }
        let mut out = Vec::new();
        while let Some((vp, payload)) = self.queued_contacts.pop_front() {
            let replies = self.post_message(vp, VMBUS_MESSAGE_CONNECTION_ID, &payload).1;
            out.extend(replies.into_iter().filter(|o| *o != Output::ClearQueues));
        }
        out
    }
}

fn reject(vp: u32, reason: String) -> (u16, Vec<Output>) {
    (HV_STATUS_INVALID_PARAMETER, vec![Output::Event(ServerEvent::Rejected { vcpu: vp, reason })])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(vcpus: u32) -> VmbusServer {
        VmbusServer::new(ServerConfig { vcpus, unload_delay: Duration::ZERO, unload_response: true })
    }

    fn contact(version: u32, target: u32) -> Vec<u8> {
        let mut b = vec![0u8; INITIATE_CONTACT_SIZE];
        b[0] = CHANNELMSG_INITIATE_CONTACT as u8;
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&target.to_le_bytes());
        b
    }

    fn msg(t: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[0] = t as u8;
        b
    }

    fn sends(out: &[Output]) -> Vec<(u32, u32, SendKind)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { vp, payload, kind, .. } => Some((*vp, payload[0] as u32, *kind)),
                _ => None,
            })
            .collect()
    }

    fn events(out: &[Output]) -> Vec<ServerEvent> {
        out.iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Linux's sequence: 5.3 on connection 4, then REQUESTOFFERS on the returned id 1.
    #[test]
    fn linux_connect_sequence() {
        let mut s = server(2);
        let (st, out) = s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 1));
        assert_eq!(st, 0);
        assert_eq!(out[0], Output::ClearQueues);
        assert_eq!(sends(&out), vec![(1, CHANNELMSG_VERSION_RESPONSE, SendKind::VersionResponse)]);
        let Output::Send { payload, .. } = &out[1] else { panic!() };
        assert_eq!(payload, &version_response(true, 1));
        assert_eq!(events(&out), vec![ServerEvent::Connected { vcpu: 0, version: VERSION_WIN10_V5_3, target_vcpu: 1 }]);
        assert_eq!(s.connection(), Some((VERSION_WIN10_V5_3, 1)));
        let (st, out) = s.post_message(0, 1, &msg(CHANNELMSG_REQUESTOFFERS));
        assert_eq!(st, 0);
        assert_eq!(sends(&out), vec![(1, CHANNELMSG_ALLOFFERS_DELIVERED, SendKind::AllOffersDelivered)]);
    }

    #[test]
    fn offers_come_before_all_offers_delivered() {
        let mut s = server(1);
        s.add_offer(ChannelOffer {
            interface_type: [0; 16],
            interface_instance: [1; 16],
            child_relid: 1,
            connection_id: 5,
        });
        s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 0));
        let (_, out) = s.post_message(0, 1, &msg(CHANNELMSG_REQUESTOFFERS));
        assert_eq!(
            sends(&out),
            vec![
                (0, CHANNELMSG_OFFERCHANNEL, SendKind::Offer),
                (0, CHANNELMSG_ALLOFFERS_DELIVERED, SendKind::AllOffersDelivered)
            ]
        );
    }

    #[test]
    fn versions_below_3_0_are_declined_and_contact_is_never_unanswered() {
        let mut s = server(1);
        for v in [VERSION_WIN8, VERSION_WIN7, VERSION_WS2008, 0xdead_beef] {
            let (st, out) = s.post_message(0, 1, &contact(v, 0));
            assert_eq!(st, 0);
            let Some(Output::Send { payload, .. }) = out.iter().find(|o| matches!(o, Output::Send { .. })) else {
                panic!("unanswered")
            };
            assert_eq!(payload[8], 0, "version {v:#x} declined");
            assert_eq!(s.connection(), None);
        }
        for v in SUPPORTED_VERSIONS {
            let (_, out) = s.post_message(0, 1, &contact(v, 0));
            assert!(events(&out).iter().any(|e| matches!(e, ServerEvent::Connected { .. })), "{v:#x}");
        }
    }

    #[test]
    fn wrong_connection_ids_and_bad_targets() {
        let mut s = server(2);
        assert_eq!(s.post_message(0, 2, &contact(VERSION_WIN10_V5_3, 0)).0, HV_STATUS_INVALID_CONNECTION_ID);
        assert_eq!(s.post_message(0, 4, &msg(CHANNELMSG_UNLOAD)).0, HV_STATUS_INVALID_CONNECTION_ID);
        // A target VP that does not exist: declined to the sender.
        let (st, out) = s.post_message(1, 4, &contact(VERSION_WIN10_V5_3, 9));
        assert_eq!(st, 0);
        assert_eq!(sends(&out), vec![(1, CHANNELMSG_VERSION_RESPONSE, SendKind::VersionResponse)]);
        assert!(matches!(events(&out)[0], ServerEvent::Rejected { vcpu: 1, .. }));
        assert_eq!(s.connection(), None);
    }

    #[test]
    fn unload_answers_the_target_vp_then_disconnects() {
        let mut s = server(2);
        s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 1));
        let (st, out) = s.post_message(0, 1, &msg(CHANNELMSG_UNLOAD));
        assert_eq!(st, 0);
        assert_eq!(events(&out), vec![ServerEvent::UnloadRequested { vcpu: 0 }]);
        assert_eq!(sends(&out), vec![(1, CHANNELMSG_UNLOAD_RESPONSE, SendKind::UnloadResponse)]);
        // A second UNLOAD while the first is being answered: nothing more.
        assert_eq!(s.post_message(0, 1, &msg(CHANNELMSG_UNLOAD)), (0, vec![]));
        assert!(s.unload_response_posted().is_empty());
        assert_eq!(s.connection(), None);
    }

    #[test]
    fn unload_without_connect_is_answered_to_the_sender() {
        let mut s = server(2);
        let (st, out) = s.post_message(1, 1, &msg(CHANNELMSG_UNLOAD));
        assert_eq!(st, 0);
        assert_eq!(sends(&out), vec![(1, CHANNELMSG_UNLOAD_RESPONSE, SendKind::UnloadResponse)]);
    }

    #[test]
    fn contact_during_unload_is_answered_after_it() {
        let mut s =
            VmbusServer::new(ServerConfig { vcpus: 2, unload_delay: Duration::from_secs(3), unload_response: true });
        s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 0));
        let (_, out) = s.post_message(0, 1, &msg(CHANNELMSG_UNLOAD));
        let Some(Output::Send { delay, .. }) = out.iter().find(|o| matches!(o, Output::Send { .. })) else { panic!() };
        assert_eq!(*delay, Duration::from_secs(3));
        // The crash kernel (on VP 1) connects before the response went out.
        let (st, out) = s.post_message(1, 4, &contact(VERSION_WIN10_V5_3, 1));
        assert_eq!((st, out), (0, vec![]));
        let out = s.unload_response_posted();
        assert_eq!(sends(&out), vec![(1, CHANNELMSG_VERSION_RESPONSE, SendKind::VersionResponse)]);
        // The UNLOAD_RESPONSE being posted stays queued ahead of the VERSION_RESPONSE (found by
        // the test guest's contact-during-unload scenario: a ClearQueues here dropped it).
        assert!(!out.contains(&Output::ClearQueues), "{out:?}");
        assert_eq!(s.connection(), Some((VERSION_WIN10_V5_3, 1)));
    }

    #[test]
    fn no_unload_response_knob() {
        let mut s = VmbusServer::new(ServerConfig { vcpus: 1, unload_delay: Duration::ZERO, unload_response: false });
        s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 0));
        let (_, out) = s.post_message(0, 1, &msg(CHANNELMSG_UNLOAD));
        assert_eq!(events(&out), vec![ServerEvent::UnloadRequested { vcpu: 0 }]);
        assert!(sends(&out).is_empty());
        // After the guest's 100 s fallback, its crash kernel still gets an answer.
        let (_, out) = s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 0));
        assert_eq!(sends(&out).len(), 1);
    }

    #[test]
    fn reconnect_from_any_state_resets() {
        let mut s = server(2);
        s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 0));
        let (_, out) = s.post_message(1, 4, &contact(VERSION_WIN10_V4_1, 1));
        assert_eq!(out[0], Output::ClearQueues);
        assert_eq!(s.connection(), Some((VERSION_WIN10_V4_1, 1)));
    }

    #[test]
    fn malformed_messages_are_rejected_with_reasons() {
        let mut s = server(1);
        for bad in
            [vec![], vec![14u8, 0, 0, 0], contact(VERSION_WIN10, 0)[..20].to_vec(), msg(99), msg(5), vec![0; 241]]
        {
            let (st, out) = s.post_message(0, 1, &bad);
            assert_eq!(st, HV_STATUS_INVALID_PARAMETER, "{bad:?}");
            assert!(matches!(&events(&out)[0], ServerEvent::Rejected { reason, .. } if !reason.is_empty()));
        }
        let (st, _) = s.post_message(0, 1, &msg(CHANNELMSG_REQUESTOFFERS));
        assert_eq!(st, HV_STATUS_INVALID_PARAMETER, "REQUESTOFFERS before INITIATE_CONTACT");
    }

    #[test]
    fn message_flood_stays_bounded() {
        let mut s =
            VmbusServer::new(ServerConfig { vcpus: 1, unload_delay: Duration::from_secs(1), unload_response: true });
        s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 0));
        s.post_message(0, 1, &msg(CHANNELMSG_UNLOAD));
        for _ in 0..10_000 {
            s.post_message(0, 4, &contact(VERSION_WIN10_V5_3, 0));
        }
        assert_eq!(s.queued_contacts.len(), MAX_QUEUED_CONTACTS);
    }
}
