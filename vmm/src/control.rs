//! The control plane between the vCPU threads and the main thread, at the bottom of `vmm`: it
//! knows no device, no KVM file descriptor and no policy.
//!
//! - [`SignalQueue`]: crash signals from the vCPU threads to the main thread's executor.
//! - [`ExitState`]: the first reason a vCPU thread (or the main loop itself) stopped the vCPUs;
//!   an input of the orchestrator (`on_vm_exit`), never the boot's end itself, which only the
//!   executor decides.
//! - [`Kicker`]: makes vCPU threads leave `KVM_RUN` (a stop, a pause, a SynIC message for that
//!   vCPU's own thread to deliver).
//! - [`VcpuControl`]: per-vCPU requests (pause, NMI, watchdog sample) and what each vCPU thread
//!   answers (its registers when it stops, its sample), one [`VcpuSlot`] per vCPU behind one
//!   lock and one condition variable. The vCPU side passes values in (registers it read), so
//!   this module never touches a vCPU.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::SIGRTMIN;

use crate::exit::VmExit;
use crate::signal::{CrashSignal, TimedSignal};
use crate::sync::lock;
use crate::vcpu_state::VcpuState;
use crate::watchdog::Sample;

/// Crash signals from the vCPU threads to the main thread's executor, each with when it was
/// observed. A guest can send the same signal as fast as it can write a port: each kind of
/// signal (pvpanic per byte value) passes [`SignalQueue::SAME_SIGNAL_MAX`] times a boot, the
/// rest is counted and dropped here, so neither this queue nor the crash's record grows with
/// the guest's persistence. (The queue lives as long as one boot.)
pub struct SignalQueue {
    queue: Mutex<Queue>,
    notify: EventFd,
}

#[derive(Default)]
struct Queue {
    signals: VecDeque<(TimedSignal, Instant)>,
    /// Signals sent per [`CrashSignal::repeat_key`] this boot.
    sent: HashMap<(u8, u64), u32>,
    dropped: u64,
}

impl SignalQueue {
    /// Signals of one kind (and value) that reach the executor per boot: more than any crash
    /// path sends (a crash kernel that panics again sends a second report).
    pub const SAME_SIGNAL_MAX: u32 = 8;

    pub fn new() -> std::io::Result<Self> {
        Ok(Self { queue: Mutex::new(Queue::default()), notify: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    /// Send `signal`, observed now.
    pub fn send(&self, signal: CrashSignal) {
        self.send_at(signal, Utc::now());
    }

    /// Send `signal`, observed at `at` (the `ts` of the event that recorded it).
    pub fn send_at(&self, signal: CrashSignal, at: DateTime<Utc>) {
        {
            let mut q = lock(&self.queue);
            let sent = q.sent.entry(signal.repeat_key()).or_default();
            if *sent >= Self::SAME_SIGNAL_MAX {
                q.dropped += 1;
                if q.dropped == 1 {
                    log::warn!("the guest repeats crash signals: further repeats this boot are dropped ({signal:?})");
                }
                return;
            }
            *sent += 1;
            q.signals.push_back((TimedSignal { at, signal }, Instant::now()));
        }
        if let Err(e) = self.notify.write(1) {
            log::error!("cannot wake the main loop for a crash signal: {e}");
        }
    }

    /// Wake the main loop without a signal (it recomputes its timers).
    pub fn wake(&self) {
        let _ = self.notify.write(1);
    }

    /// The signals sent since the last drain, with when each was observed (wall clock) and
    /// queued (monotonic).
    pub fn drain(&self) -> Vec<(TimedSignal, Instant)> {
        let _ = self.notify.read();
        lock(&self.queue).signals.drain(..).collect()
    }

    /// Repeats dropped this boot.
    pub fn dropped(&self) -> u64 {
        lock(&self.queue).dropped
    }

    pub fn notify_fd(&self) -> &EventFd {
        &self.notify
    }
}

/// The first reason the vCPUs stopped, shared by every vCPU thread and the main loop.
pub struct ExitState {
    exit: Mutex<Option<VmExit>>,
    notify: EventFd,
    stop: AtomicBool,
}

impl ExitState {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { exit: Mutex::new(None), notify: EventFd::new(libc::EFD_NONBLOCK)?, stop: AtomicBool::new(false) })
    }

    /// Record `exit` if it is the first, and wake the main loop.
    pub fn request(&self, exit: VmExit) {
        let mut slot = lock(&self.exit);
        if slot.is_none() {
            log::info!("VM exit requested: {}", exit.reason());
            *slot = Some(exit);
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.notify.write(1) {
            log::error!("cannot wake the main loop: {e}");
        }
    }

    /// Stop the vCPUs without an exit reason of their own (the executor decided).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<VmExit> {
        lock(&self.exit).clone()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn notify_fd(&self) -> &EventFd {
        &self.notify
    }
}

/// Kicks vCPU threads out of KVM_RUN (for a stop, or to deliver a SynIC message on the target
/// vCPU's own thread). The signal's handler is the vCPU thread's business (`vcpu.rs`).
#[derive(Default)]
pub struct Kicker {
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
}

impl Kicker {
    pub fn new(vcpus: u32) -> Self {
        Self { threads: Mutex::new(vec![None; vcpus as usize]) }
    }

    /// The calling thread runs `vcpu` from now on.
    pub fn register(&self, vcpu: u32) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if let Some(slot) = lock(&self.threads).get_mut(vcpu as usize) {
            *slot = Some(me);
        }
    }

    /// `vcpu`'s thread is about to end.
    pub fn unregister(&self, vcpu: u32) {
        if let Some(slot) = lock(&self.threads).get_mut(vcpu as usize) {
            *slot = None;
        }
    }

    /// Kick `vcpu` (a no-op once its thread ended).
    pub fn kick(&self, vcpu: u32) {
        let threads = lock(&self.threads);
        if let Some(Some(t)) = threads.get(vcpu as usize) {
            // SAFETY: the thread id is live: it is removed under this lock before the thread
            // ends. The signal's handler is installed before any vCPU thread starts.
            unsafe { libc::pthread_kill(*t, SIGRTMIN()) };
        }
    }

    /// Kick every vCPU still running.
    pub fn kick_all(&self) {
        let n = lock(&self.threads).len();
        (0..n as u32).for_each(|v| self.kick(v));
    }
}

/// One vCPU's requests and answers.
#[derive(Debug, Default)]
struct VcpuSlot {
    /// An NMI to inject before its next run.
    nmi: bool,
    /// The watchdog wants a sample; the latest sample.
    sample_wanted: bool,
    sample: Option<Sample>,
    /// The registers it had when it last reported a crash (pvpanic, the Hyper-V crash MSRs),
    /// read on its own thread before the report went out.
    reported: Option<VcpuState>,
    /// Stopped (paused, or its thread ended) with the registers it had.
    stopped: Option<VcpuState>,
}

struct ControlState {
    pause: bool,
    vcpus: Vec<VcpuSlot>,
}

/// Pausing and resuming the vCPU threads, the requests they carry out between runs, and the
/// registers they save when they stop.
pub struct VcpuControl {
    inner: Mutex<ControlState>,
    changed: Condvar,
}

impl VcpuControl {
    pub fn new(vcpus: u32) -> Self {
        let vcpus = (0..vcpus).map(|_| VcpuSlot::default()).collect();
        Self { inner: Mutex::new(ControlState { pause: false, vcpus }), changed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        lock(&self.inner)
    }

    fn with_slot<T>(&self, id: u32, f: impl FnOnce(&mut VcpuSlot) -> T) -> Option<T> {
        self.lock().vcpus.get_mut(id as usize).map(f)
    }

    // The main thread's side.

    /// Stop every vCPU and wait (up to `timeout`) until each has saved its registers. Returns
    /// false when some did not stop in time.
    pub fn pause_all(&self, kicker: &Kicker, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.lock().pause = true;
        loop {
            if self.lock().vcpus.iter().all(|s| s.stopped.is_some()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            kicker.kick_all();
            let guard = self.lock();
            let _ = self.changed.wait_timeout(guard, Duration::from_millis(5));
        }
    }

    pub fn vcpus(&self) -> u32 {
        self.lock().vcpus.len() as u32
    }

    /// Whether a pause is in force.
    pub fn paused(&self) -> bool {
        self.lock().pause
    }

    /// Let paused vCPUs run again.
    pub fn resume(&self) {
        self.lock().pause = false;
        self.changed.notify_all();
    }

    /// Wake paused vCPUs so that they see a stop request.
    pub fn wake(&self) {
        self.changed.notify_all();
    }

    /// Ask vCPU `id` to inject an NMI before it runs again (kick it afterwards).
    pub fn request_nmi(&self, id: u32) {
        self.with_slot(id, |s| s.nmi = true);
    }

    /// Ask every vCPU for a watchdog sample (kick them afterwards); returns the previous ones.
    pub fn request_samples(&self) -> Vec<Option<Sample>> {
        let mut c = self.lock();
        c.vcpus
            .iter_mut()
            .map(|s| {
                s.sample_wanted = true;
                s.sample.take()
            })
            .collect()
    }

    /// The registers the stopped vCPUs saved, in vCPU order.
    pub fn snapshots(&self) -> Vec<VcpuState> {
        self.lock().vcpus.iter().filter_map(|s| s.stopped).collect()
    }

    /// The registers of the vCPUs that reported a crash, as they were at their report.
    pub fn reported(&self) -> Vec<VcpuState> {
        self.lock().vcpus.iter().filter_map(|s| s.reported).collect()
    }

    /// vCPU `id` reports a crash with these registers (its thread, before it sends the report).
    pub fn put_reported(&self, id: u32, state: VcpuState) {
        self.with_slot(id, |s| s.reported = Some(state));
    }

    // The vCPU threads' side: each calls these for its own `id` between runs.

    /// Whether vCPU `id` owes a watchdog sample (it then reads one and calls [`Self::put_sample`]).
    pub fn take_sample_request(&self, id: u32) -> bool {
        self.with_slot(id, |s| std::mem::take(&mut s.sample_wanted)).unwrap_or(false)
    }

    pub fn put_sample(&self, id: u32, sample: Sample) {
        self.with_slot(id, |s| s.sample = Some(sample));
    }

    /// Whether vCPU `id` must inject an NMI now (the request is consumed).
    pub fn take_nmi(&self, id: u32) -> bool {
        self.with_slot(id, |s| std::mem::take(&mut s.nmi)).unwrap_or(false)
    }

    /// Whether a pause is requested (the vCPU then reads its registers and calls [`Self::park`]).
    pub fn pause_requested(&self) -> bool {
        self.lock().pause
    }

    /// vCPU `id` stopped with `state`: its thread ended, or (tests) it stands for one.
    pub fn mark_stopped(&self, id: u32, state: VcpuState) {
        self.with_slot(id, |s| s.stopped = Some(state));
        self.changed.notify_all();
    }

    /// Park vCPU `id`, stopped with `state`, while the pause lasts and the VM is not stopping.
    pub fn park(&self, id: u32, state: VcpuState, exit: &ExitState) {
        self.mark_stopped(id, state);
        let mut c = self.lock();
        // Woken by `resume` and by `wake` (which `vm::stop_vcpus` repeats until every vCPU
        // thread has ended, so a stop request cannot be missed between the check and the wait).
        while c.pause && !exit.stopping() {
            c = self.changed.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(s) = c.vcpus.get_mut(id as usize) {
            s.stopped = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: u32) -> VcpuState {
        VcpuState { id, regs: Default::default(), sregs: Default::default() }
    }

    #[test]
    fn first_exit_wins() {
        let s = ExitState::new().unwrap();
        assert!(!s.stopping());
        s.request(VmExit::PowerOff);
        s.request(VmExit::TripleFault { vcpu: 1 });
        assert_eq!(s.get(), Some(VmExit::PowerOff));
        assert!(s.stopping());
    }

    #[test]
    fn pause_waits_for_every_vcpu_and_resume_releases_them() {
        let control = std::sync::Arc::new(VcpuControl::new(2));
        let exit = std::sync::Arc::new(ExitState::new().unwrap());
        let kicker = Kicker::new(2);
        assert!(!control.pause_all(&kicker, Duration::from_millis(20)), "nobody parked yet");
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let (control, exit) = (control.clone(), exit.clone());
                std::thread::spawn(move || {
                    while !control.pause_requested() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    control.park(id, state(id), &exit);
                })
            })
            .collect();
        assert!(control.pause_all(&kicker, Duration::from_secs(5)));
        assert_eq!(control.snapshots().iter().map(|s| s.id).collect::<Vec<_>>(), vec![0, 1]);
        control.resume();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(control.snapshots().is_empty(), "running vCPUs have no saved registers");
    }

    #[test]
    fn requests_are_per_vcpu_and_consumed_once() {
        let c = VcpuControl::new(2);
        c.request_nmi(1);
        c.request_nmi(7);
        assert!(!c.take_nmi(0));
        assert!(c.take_nmi(1));
        assert!(!c.take_nmi(1));
        assert_eq!(c.request_samples(), vec![None, None]);
        assert!(c.take_sample_request(0) && !c.take_sample_request(0));
        c.put_sample(0, Sample { interrupts_enabled: true, halted: false });
        assert_eq!(c.request_samples()[0], Some(Sample { interrupts_enabled: true, halted: false }));
    }
}
