//! The VMBus server against any sequence of guest messages (structured INITIATE_CONTACTs with
//! any version and target, REQUESTOFFERS, UNLOAD, any header, raw bytes) on any connection id,
//! interleaved with the VMM's "UNLOAD_RESPONSE posted". A model of the protocol state, kept
//! from the guest's side, checks every answer:
//!
//! - every INITIATE_CONTACT gets exactly one VERSION_RESPONSE (at once, or after the UNLOAD
//!   being answered; only contacts beyond the bounded queue are dropped), to the target VP it
//!   names when that VP exists, else to the sender, "supported" exactly for a supported version
//!   with a valid target, after a ClearQueues (a held one: without, behind the UNLOAD_RESPONSE);
//! - REQUESTOFFERS while connected gets every offer, then one ALLOFFERS_DELIVERED, to the
//!   target VP; otherwise it is rejected;
//! - one UNLOAD_RESPONSE per UNLOAD at most, never two outstanding, with the configured delay,
//!   and the replies to the contacts held meanwhile never drop it from the SynIC queue;
//! - rejected or misrouted messages change nothing and answer nothing;
//! - every reply goes to an existing VP, is a well-formed channel message of its kind, and can
//!   be queued on the SynIC; `connection()` always agrees with the model.

#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use crashvmm_fuzz::{ServerInput, ServerOp};
use devices::hyperv::tlfs::{
    HV_STATUS_INSUFFICIENT_BUFFERS, HV_STATUS_INVALID_CONNECTION_ID, HV_STATUS_INVALID_PARAMETER, HV_STATUS_SUCCESS,
    VMBUS_MESSAGE_SINT,
};
use devices::hyperv::{HvConfig, HvPartition};
use devices::vmbus::messages::*;
use devices::vmbus::server::MAX_QUEUED_CONTACTS;
use devices::vmbus::{Output, SendKind, ServerConfig, ServerEvent, VmbusServer};
use libfuzzer_sys::fuzz_target;

const UNLOAD_DELAY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Disconnected,
    Connected { version: u32, target: u32 },
    Unloading,
}

impl Model {
    fn connection(self) -> Option<(u32, u32)> {
        match self {
            Model::Connected { version, target } => Some((version, target)),
            _ => None,
        }
    }
}

struct Harness {
    server: VmbusServer,
    /// Where the VMM queues the replies.
    partition: HvPartition,
    vcpus: u32,
    offers: usize,
    unload_response: bool,
    unload_delay: Duration,
    model: Model,
    /// INITIATE_CONTACTs held during an UNLOAD: sender, version, target.
    held: VecDeque<(u32, u32, u32)>,
    /// The VP of the UNLOAD_RESPONSE handed out and not yet posted.
    unload_pending: Option<u32>,
    /// The posted UNLOAD_RESPONSE is still in the SynIC queue (no ClearQueues since).
    unload_queued: bool,
}

fn only_rejection(vp: u32, status: u16, out: &[Output]) {
    assert_eq!(status, HV_STATUS_INVALID_PARAMETER);
    assert!(
        matches!(out, [Output::Event(ServerEvent::Rejected { vcpu, reason })] if *vcpu == vp && !reason.is_empty()),
        "{out:?}"
    );
}

impl Harness {
    fn new(input: &ServerInput) -> Self {
        let vcpus = u32::from(input.vcpus);
        let unload_delay = if input.unload_delay { UNLOAD_DELAY } else { Duration::ZERO };
        let mut server = VmbusServer::new(ServerConfig { vcpus, unload_delay, unload_response: input.unload_response });
        for i in 0..input.offers {
            server.add_offer(ChannelOffer {
                interface_type: [i; 16],
                interface_instance: [0xa0 | i; 16],
                child_relid: u32::from(i) + 1,
                connection_id: 0x20 + u32::from(i),
            });
        }
        Self {
            server,
            partition: HvPartition::new(HvConfig { vcpus, tsc_hz: 1, apic_hz: 1, crash_message: true }),
            vcpus,
            offers: usize::from(input.offers),
            unload_response: input.unload_response,
            unload_delay,
            model: Model::Disconnected,
            held: VecDeque::new(),
            unload_pending: None,
            unload_queued: false,
        }
    }

    /// Queue a reply on the SynIC as the VMM does; it must be acceptable there.
    fn queue(&mut self, vp: u32, payload: &[u8], kind: SendKind) -> bool {
        match self.partition.post(vp, VMBUS_MESSAGE_SINT, VMBUS_SYNIC_MESSAGE_TYPE, payload, 0) {
            Ok(()) => true,
            Err(HV_STATUS_INSUFFICIENT_BUFFERS) => false,
            Err(status) => panic!("the SynIC refuses a {kind:?} to VP {vp}: status {status:#x}"),
        }
    }

    /// What holds for every output, whatever caused it; carries it out as the VMM does (an
    /// UNLOAD_RESPONSE is queued when [`Self::unload_response_posted`] says so).
    fn check_output(&mut self, o: &Output) {
        match o {
            Output::Send { vp, payload, delay, kind } => {
                assert!(*vp < self.vcpus, "reply to VP {vp} of {}", self.vcpus);
                let want = match kind {
                    SendKind::VersionResponse => CHANNELMSG_VERSION_RESPONSE,
                    SendKind::Offer => CHANNELMSG_OFFERCHANNEL,
                    SendKind::AllOffersDelivered => CHANNELMSG_ALLOFFERS_DELIVERED,
                    SendKind::UnloadResponse => CHANNELMSG_UNLOAD_RESPONSE,
                };
                assert_eq!(parse(payload), Ok(GuestMessage::Unsupported { msgtype: want }), "{kind:?}");
                if *kind == SendKind::UnloadResponse {
                    assert_eq!(self.unload_pending, None, "two UNLOAD_RESPONSEs outstanding");
                    self.unload_pending = Some(*vp);
                } else {
                    assert_eq!(*delay, Duration::ZERO, "{kind:?}");
                    self.queue(*vp, payload, *kind);
                }
            }
            Output::ClearQueues => {
                self.partition.clear_queues();
                self.unload_queued = false;
            }
            Output::Event(ServerEvent::Connected { version, target_vcpu, .. }) => {
                assert!(SUPPORTED_VERSIONS.contains(version) && *target_vcpu < self.vcpus);
            }
            Output::Event(ServerEvent::Rejected { reason, .. }) => assert!(!reason.is_empty()),
            Output::Event(_) => {}
        }
    }

    /// The answer to an INITIATE_CONTACT the server acted on: a fresh one resets the connection
    /// (ClearQueues first), one `held` during an UNLOAD is answered after the UNLOAD_RESPONSE.
    fn check_contact(&mut self, vp: u32, version: u32, target: u32, out: &[Output], held: bool) {
        let target_ok = target < self.vcpus;
        let accepted = target_ok && SUPPORTED_VERSIONS.contains(&version);
        let reply = Output::Send {
            vp: if target_ok { target } else { vp },
            payload: version_response(accepted, if accepted { VMBUS_MESSAGE_CONNECTION_ID } else { 0 }),
            delay: Duration::ZERO,
            kind: SendKind::VersionResponse,
        };
        if held {
            assert_eq!(out.len(), 2, "{out:?}");
            assert!(!out.contains(&Output::ClearQueues), "{out:?}");
        } else {
            assert_eq!(out.len(), 3, "{out:?}");
            assert_eq!(out[0], Output::ClearQueues);
        }
        assert_eq!(out.iter().filter(|o| **o == reply).count(), 1, "one VERSION_RESPONSE: {out:?}");
        let event = out.iter().find_map(|o| if let Output::Event(e) = o { Some(e) } else { None });
        match event {
            Some(ServerEvent::Connected { vcpu, version: v, target_vcpu }) => {
                assert!(accepted);
                assert_eq!((*vcpu, *v, *target_vcpu), (vp, version, target));
            }
            Some(ServerEvent::VersionRejected { vcpu, version: v }) => {
                assert!(target_ok && !accepted);
                assert_eq!((*vcpu, *v), (vp, version));
            }
            Some(ServerEvent::Rejected { vcpu, .. }) => assert!(!target_ok && *vcpu == vp),
            e => panic!("INITIATE_CONTACT answered with {e:?}"),
        }
        self.model = if accepted { Model::Connected { version, target } } else { Model::Disconnected };
    }

    fn post(&mut self, vp: u32, connection_id: u32, payload: &[u8]) {
        let before = self.model;
        let (status, out) = self.server.post_message(vp, connection_id, payload);
        for o in &out {
            self.check_output(o);
        }
        let msg = match parse(payload) {
            Ok(m) => m,
            Err(_) => return only_rejection(vp, status, &out),
        };
        let contact = matches!(msg, GuestMessage::InitiateContact { .. });
        if !(connection_id == VMBUS_MESSAGE_CONNECTION_ID || contact && connection_id == VMBUS_MESSAGE_CONNECTION_ID_4)
        {
            assert_eq!((status, out.len()), (HV_STATUS_INVALID_CONNECTION_ID, 0), "{out:?}");
            return;
        }
        match (msg, before) {
            (GuestMessage::InitiateContact { version, target_vcpu, .. }, Model::Unloading) => {
                assert_eq!((status, out.len()), (HV_STATUS_SUCCESS, 0), "held until the UNLOAD is answered");
                if self.held.len() == MAX_QUEUED_CONTACTS {
                    self.held.pop_front();
                }
                self.held.push_back((vp, version, target_vcpu));
            }
            (GuestMessage::InitiateContact { version, target_vcpu, .. }, _) => {
                assert_eq!(status, HV_STATUS_SUCCESS);
                self.check_contact(vp, version, target_vcpu, &out, false);
            }
            (GuestMessage::RequestOffers, Model::Connected { target, .. }) => {
                assert_eq!(status, HV_STATUS_SUCCESS);
                let kinds: Vec<_> = out
                    .iter()
                    .map(|o| match o {
                        Output::Send { vp, kind, .. } if *vp == target => *kind,
                        o => panic!("REQUESTOFFERS answered with {o:?}"),
                    })
                    .collect();
                let mut want = vec![SendKind::Offer; self.offers];
                want.push(SendKind::AllOffersDelivered);
                assert_eq!(kinds, want);
            }
            (GuestMessage::RequestOffers, _) => only_rejection(vp, status, &out),
            (GuestMessage::Unload, Model::Unloading) => {
                assert_eq!((status, out.len()), (HV_STATUS_SUCCESS, 0), "a second UNLOAD_RESPONSE");
            }
            (GuestMessage::Unload, _) => {
                // Not connected: answered to the sender, as Hyper-V does.
                let target = before.connection().map_or(vp, |(_, t)| t);
                assert_eq!(status, HV_STATUS_SUCCESS);
                assert_eq!(out.first(), Some(&Output::Event(ServerEvent::UnloadRequested { vcpu: vp })));
                if self.unload_response {
                    let reply = Output::Send {
                        vp: target,
                        payload: unload_response(),
                        delay: self.unload_delay,
                        kind: SendKind::UnloadResponse,
                    };
                    assert_eq!(&out[1..], &[reply]);
                    assert_eq!(self.unload_pending, Some(target));
                    self.model = Model::Unloading;
                } else {
                    assert_eq!(out.len(), 1);
                    self.model = Model::Disconnected;
                }
            }
            (GuestMessage::Unsupported { .. }, _) => only_rejection(vp, status, &out),
        }
    }

    /// The VMM queues the UNLOAD_RESPONSE it was handed and tells the server.
    fn unload_response_posted(&mut self) {
        let Some(vp) = self.unload_pending.take() else {
            // Nothing was being answered, so nothing can be held.
            let out = self.server.unload_response_posted();
            assert!(out.is_empty() && self.held.is_empty(), "{out:?}");
            return;
        };
        self.unload_queued = self.queue(vp, &unload_response(), SendKind::UnloadResponse);
        let queued = self.unload_queued;
        let out = self.server.unload_response_posted();
        for o in &out {
            self.check_output(o);
        }
        assert_eq!(self.model, Model::Unloading);
        self.model = Model::Disconnected;
        // The held contacts, answered in order.
        assert_eq!(out.len(), 2 * self.held.len(), "{out:?}");
        let held: Vec<_> = self.held.drain(..).collect();
        for ((vp, version, target), chunk) in held.into_iter().zip(out.chunks(2)) {
            self.check_contact(vp, version, target, chunk, true);
        }
        // Their replies come after the UNLOAD_RESPONSE and do not drop it.
        assert_eq!(self.unload_queued, queued, "the UNLOAD_RESPONSE was dropped");
    }

    fn consistent(&self) {
        assert_eq!(self.server.connection(), self.model.connection());
        assert!(self.held.len() <= MAX_QUEUED_CONTACTS);
        assert!(self.held.is_empty() || self.model == Model::Unloading);
    }
}

fuzz_target!(|input: ServerInput| {
    let mut h = Harness::new(&input);
    for op in &input.ops {
        match op {
            ServerOp::Post { vp, connection_id, msg } => {
                // Only a VP of the partition makes hypercalls.
                h.post(u32::from(*vp) % h.vcpus, *connection_id, &msg.payload());
            }
            ServerOp::UnloadResponsePosted => h.unload_response_posted(),
        }
        h.consistent();
    }
    // The VMM posts what is outstanding; every held contact is then answered.
    if h.unload_pending.is_some() {
        h.unload_response_posted();
        h.consistent();
        assert!(h.held.is_empty());
    }
});
