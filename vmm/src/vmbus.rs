//! Carrying out what the VMBus server decides: posting its replies into SynIC queues (now, or
//! later for the UNLOAD-delay knob), kicking the target vCPU so that its own thread delivers
//! them, and recording the VMBus events.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use devices::hyperv::tlfs::VMBUS_MESSAGE_SINT;
use devices::vmbus::messages::{version_string, VMBUS_SYNIC_MESSAGE_TYPE};
use devices::vmbus::{Output, SendKind, ServerEvent};

use crate::control::SignalQueue;
use crate::crash::CrashSignal;
use crate::events::{Event, EventLog};
use crate::hyperv::{HyperV, TAG_UNLOAD_RESPONSE};
use crate::sync::lock;

/// What carrying out the server's outputs reports to: the event log, the crash signals, and
/// the replies to post later.
pub struct VmbusLink<'a> {
    pub events: &'a EventLog,
    pub signals: &'a SignalQueue,
    pub deferred: &'a Deferred,
}

/// A reply the server wants posted later.
#[derive(Debug)]
pub struct DeferredSend {
    pub due: Instant,
    pub vp: u32,
    pub payload: Vec<u8>,
    pub kind: SendKind,
}

/// Replies waiting for their time; the main loop posts them when due.
#[derive(Default)]
pub struct Deferred(Mutex<Vec<DeferredSend>>);

impl Deferred {
    /// When the next one is due.
    pub fn next_due(&self) -> Option<Instant> {
        lock(&self.0).iter().map(|d| d.due).min()
    }

    fn push(&self, d: DeferredSend) {
        lock(&self.0).push(d);
    }

    fn take_due(&self, now: Instant) -> Vec<DeferredSend> {
        let mut q = lock(&self.0);
        let (due, later) = q.drain(..).partition(|d| d.due <= now);
        *q = later;
        due
    }
}

/// Carry out the server's outputs. Returns the VPs to kick (after the Hyper-V lock is released)
/// so they deliver what was queued for them.
pub fn apply(ctx: &VmbusLink<'_>, hv: &mut HyperV, outputs: Vec<Output>, now: Instant) -> Vec<u32> {
    let mut kick = Vec::new();
    let mut pending = std::collections::VecDeque::from(outputs);
    while let Some(out) = pending.pop_front() {
        match out {
            Output::Send { vp, payload, delay, kind } if delay > Duration::ZERO => {
                ctx.deferred.push(DeferredSend { due: now + delay, vp, payload, kind });
                // Wake the main loop so it rearms its timer.
                ctx.signals.wake();
            }
            Output::Send { vp, payload, kind, .. } => {
                let tag = if kind == SendKind::UnloadResponse { TAG_UNLOAD_RESPONSE } else { 0 };
                if let Err(status) = hv.partition.post(vp, VMBUS_MESSAGE_SINT, VMBUS_SYNIC_MESSAGE_TYPE, &payload, tag)
                {
                    log::warn!("VMBus: cannot queue a message for VP {vp} (status {status:#x})");
                }
                kick.push(vp);
                if kind == SendKind::UnloadResponse {
                    pending.extend(hv.vmbus.unload_response_posted());
                }
            }
            Output::ClearQueues => hv.partition.clear_queues(),
            Output::Event(e) => record(ctx, hv, e, now),
        }
    }
    kick.sort_unstable();
    kick.dedup();
    kick
}

/// Every record here is the guest's doing, so each is throttled per source (`EventLog`).
fn record(ctx: &VmbusLink<'_>, hv: &mut HyperV, event: ServerEvent, now: Instant) {
    match event {
        ServerEvent::Connected { vcpu, version, target_vcpu } => {
            if ctx.events.emit_guest(Event::VmbusConnected { vcpu, version: version_string(version), target_vcpu }) {
                log::info!("VMBus: connected, protocol {} (target VP {target_vcpu})", version_string(version));
            }
        }
        ServerEvent::VersionRejected { vcpu, version } => {
            if ctx.events.admit("vmbus_version_rejected", chrono::Utc::now()) {
                log::info!("VMBus: vCPU {vcpu} asked for protocol {}, declined", version_string(version));
            }
        }
        ServerEvent::UnloadRequested { vcpu } => {
            hv.unload_started = Some((vcpu, now));
            let at = chrono::Utc::now();
            if ctx.events.emit_at(Event::VmbusUnloadRequested { vcpu }, at) {
                log::info!("VMBus: vCPU {vcpu} requests UNLOAD");
            }
            ctx.signals.send_at(CrashSignal::UnloadRequested { vcpu, answered: hv.vmbus.answers_unload() }, at);
        }
        ServerEvent::Rejected { vcpu, reason } => {
            if ctx.events.emit_guest(Event::VmbusMessageRejected { vcpu, reason: reason.clone() }) {
                log::warn!("VMBus: message from vCPU {vcpu} rejected: {reason}");
            }
        }
    }
}

/// Post the deferred replies that are due (the main thread). Returns the VPs to kick once the
/// Hyper-V lock is released.
pub fn post_due(ctx: &VmbusLink<'_>, hv: &mut HyperV, now: Instant) -> Vec<u32> {
    let due = ctx.deferred.take_due(now);
    if due.is_empty() {
        return Vec::new();
    }
    let outputs = due
        .into_iter()
        .map(|d| Output::Send { vp: d.vp, payload: d.payload, delay: Duration::ZERO, kind: d.kind })
        .collect();
    apply(ctx, hv, outputs, now)
}

/// After a delivery on `vcpu`: if it carried the UNLOAD_RESPONSE, the UNLOAD is complete.
pub fn delivered(ctx: &VmbusLink<'_>, hv: &mut HyperV, vcpu: u32, tags: &[u64]) {
    if tags.contains(&TAG_UNLOAD_RESPONSE) {
        let latency_us = hv.unload_started.take().map_or(0, |(_, t)| t.elapsed().as_micros() as u64);
        let at = chrono::Utc::now();
        if ctx.events.emit_at(Event::VmbusUnloadCompleted { vcpu, latency_us }, at) {
            log::info!("VMBus: UNLOAD answered on VP {vcpu} after {latency_us} us");
        }
        ctx.signals.send_at(CrashSignal::UnloadCompleted { vcpu, latency_us }, at);
    }
}
