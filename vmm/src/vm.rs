//! Running a VM from a [`VmConfig`] to its end: the session (what lives across guest
//! resets), and for each boot a machine from [`builder::build`] run by the main thread's event
//! loop until the executor decides how the boot ends.
//!
//! The main thread owns the event loop (event-manager): serial input from stdin, host
//! signals, crash signals, the control socket, and the notification that a vCPU thread
//! stopped the VM. Each vCPU runs in its own thread ([`vcpu::run_vcpu`]).

use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use devices::rtc::Rtc;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::api::{self, ApiServer};
pub use crate::builder::VmError;
use crate::builder::{self, io_err, kvm_err, Machine, Shared};
use crate::config::VmConfig;
use crate::console::{ConsoleMode, ConsoleOutput, ConsoleTail, EscapeFilter, RawTerminal, SharedConsole};
use crate::control::{ExitState, Kicker, VcpuControl};
use crate::crash::executor::{BootEnd, CrashHandling, CrashHandlingConfig, SharedVm};
use crate::crash::live::LiveOptions;
use crate::crash::report::GuestInfo;
use crate::crash::{CrashSignal, Policy};
use crate::events::{Event, EventLog};
use crate::exit::VmExit;
use crate::metrics::{Metrics, MetricsWriter};
use crate::net::{NetThread, Tap};
use crate::seccomp::{self, ThreadKind};
use crate::serial::SerialDevice;
use crate::sync::lock;
use crate::upload::{Delivery, StoreQuery};
use crate::vcpu::{self, ExitContext};
use crate::watchdog::Watchdog;

/// Wakes the main loop when a vCPU asked for the VM to end.
struct ExitWatcher(Arc<ExitState>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.notify_fd().read();
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.notify_fd(), EventSet::IN)) {
            log::error!("cannot watch vCPU exits: {e:?}");
        }
    }
}

/// SIGINT/SIGTERM through signal-hook self-pipes.
struct SignalWatcher {
    pipes: Vec<(i32, UnixStream)>,
    state: Arc<ExitState>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let signal = events.data() as i32;
        if let Some((_, pipe)) = self.pipes.iter_mut().find(|(s, _)| *s == signal) {
            let mut buf = [0u8; 16];
            let _ = pipe.read(&mut buf);
        }
        log::info!("received signal {signal}, stopping the VM");
        self.state.request(VmExit::Stopped { signal });
    }
    fn init(&mut self, ops: &mut EventOps) {
        for (signal, pipe) in &self.pipes {
            if let Err(e) = ops.add(Events::with_data(pipe, *signal as u32, EventSet::IN)) {
                log::error!("cannot watch signal {signal}: {e:?}");
            }
        }
    }
}

/// Console input from stdin to the UART.
struct StdinWatcher {
    serial: Arc<Mutex<SerialDevice>>,
    filter: EscapeFilter,
    escape_enabled: bool,
    state: Arc<ExitState>,
}

impl MutEventSubscriber for StdinWatcher {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let capacity = lock(&self.serial).fifo_capacity();
        if capacity == 0 {
            // The guest has not drained the FIFO yet; let it catch up.
            std::thread::sleep(Duration::from_millis(2));
            return;
        }
        let mut buf = vec![0u8; capacity];
        match io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                // End of input: stop watching, the guest keeps running.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let (bytes, quit) =
                    if self.escape_enabled { self.filter.feed(&buf[..n]) } else { (buf[..n].to_vec(), false) };
                let mut serial = lock(&self.serial);
                if let Err(e) = serial.enqueue(&bytes) {
                    log::warn!("serial input dropped: {e:?}");
                }
                drop(serial);
                if quit {
                    log::info!("console escape: stopping the VM");
                    self.state.request(VmExit::Stopped { signal: libc::SIGINT });
                }
            }
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null (EPERM): then there is no console input.
        if let Err(e) = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN)) {
            log::debug!("stdin cannot be watched, no console input: {e:?}");
        }
    }
}

/// The host's clock for the RTC: UTC seconds since the epoch.
fn host_clock() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What lives across boots of the guest (a reset builds a fresh VM in the same session).
struct Session<'a> {
    config: &'a VmConfig,
    kvm: Kvm,
    events: EventLog,
    console: SharedConsole,
    signal_pipes: Vec<(i32, UnixStream)>,
    crash: Arc<Mutex<CrashHandling>>,
    escape_enabled: bool,
    /// The control socket, when `--api-socket` was given.
    api: Option<UnixListener>,
    /// RLIMIT_NOFILE (raised to its hard limit), which caps the control socket's connections.
    fd_limit: u64,
    started: Instant,
    /// The CMOS RTC keeps a time the guest set across resets, as a battery-backed one does.
    rtc: Arc<Mutex<Rtc>>,
    /// `--net`'s TAP interfaces, open for the whole session.
    taps: Vec<Arc<Tap>>,
}

/// Run the VM described by `config` to its end.
pub fn run(config: &VmConfig) -> Result<VmExit, VmError> {
    config.validate()?;
    let fd_limit = raise_fd_limit();
    // The control socket first: refused (another crashvmm serves it) before anything is
    // created or truncated. Its file goes when this returns, however.
    let api = match &config.api_socket {
        Some(path) => Some(api::bind(path)?),
        None => None,
    };
    let _socket_file = config.api_socket.as_deref().filter(|_| api.is_some()).map(RemoveOnDrop);
    let events = match &config.events {
        Some(p) => EventLog::create(p)?,
        None => EventLog::disabled(),
    };
    // Every event counts in the metrics: the observer is set before the log is handed out.
    let metrics = config.metrics_file.as_ref().map(|_| Arc::new(Metrics::new(queued_uploads(config))));
    let events = match &metrics {
        Some(m) => events.with_observer(m.clone()),
        None => events,
    };
    let console = SharedConsole::new(ConsoleOutput::new(&config.console, config.console_log.as_deref())?);

    let open_err = |source| VmError::OpenKvm { path: config.kvm_device.clone(), source };
    let kvm_path = CString::new(config.kvm_device.as_os_str().as_bytes())
        .map_err(|_| open_err(vmm_sys_util::errno::Error::new(libc::EINVAL)))?;
    let kvm = Kvm::new_with_path(kvm_path).map_err(open_err)?;
    builder::check_kvm(&kvm, config.vcpus)?;

    register_signal_handler(SIGRTMIN(), vcpu::kick_handler).map_err(kvm_err("registering the vCPU kick signal"))?;
    let mut signal_pipes = Vec::new();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let (rx, tx) = UnixStream::pair().map_err(io_err("signal pipe"))?;
        rx.set_nonblocking(true).map_err(io_err("signal pipe"))?;
        signal_hook::low_level::pipe::register(signal, tx).map_err(io_err("signal handler"))?;
        signal_pipes.push((signal, rx));
    }
    CrashHandling::report_leftovers(&config.crash_dir, &events);
    let raw_terminal = match config.console {
        ConsoleMode::Stdio => RawTerminal::enable(),
        _ => None,
    };
    if raw_terminal.is_some() {
        eprintln!("crashvmm: console on this terminal; press Ctrl-A x to stop the VM\r");
    }
    // The TAP interfaces before the filters: opening one takes open and ioctl.
    let taps = config.nets.iter().map(|n| Tap::open(&n.tap).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
    // Confine this thread (the event loop, crash handling) before any guest code runs; the vCPU
    // and vmcore-hasher threads confine themselves further.
    seccomp::init(config.seccomp, events.raw_fd(), config.seccomp_selftest)?;
    // The metrics writer and the uploader before the vmm thread's own filter: filters stack.
    let metrics_writer = match (&config.metrics_file, metrics) {
        (Some(path), Some(m)) => Some(MetricsWriter::start(path, m)?),
        _ => None,
    };
    // The uploader first: filters stack, and the vmm thread's allows no socket.
    let delivery = match &config.upload {
        Some(target) => Some(
            Delivery::start(target.clone(), &config.crash_dir, &config.upload_options, events.clone())
                .map_err(VmError::Upload)?,
        ),
        None => None,
    };
    let spool = delivery.as_ref().map(|d| d.spool().clone());
    // The store's count of a signature's vmcores needs a socket: a thread of the upload's kind.
    let store_query = match &config.upload {
        Some(target) if config.vmcores_per_signature > 0 => {
            Some(StoreQuery::start(target.clone()).map_err(VmError::Upload)?)
        }
        _ => None,
    };
    let handling =
        CrashHandling::new(crash_handling_config(config, events.clone(), console.tail(), spool, store_query))
            .map_err(io_err("dump eventfd"))?;
    let crash = Arc::new(Mutex::new(handling));
    seccomp::apply(ThreadKind::Vmm)?;
    let started = Instant::now();
    let session = Session {
        config,
        kvm,
        events: events.clone(),
        console,
        signal_pipes,
        crash: crash.clone(),
        escape_enabled: raw_terminal.is_some(),
        api,
        fd_limit,
        started,
        rtc: Arc::new(Mutex::new(Rtc::new(host_clock))),
        taps,
    };

    let mut boots = 0u32;
    let exit = loop {
        match boot(&session, boots)? {
            BootEnd::Exit(exit) => break exit,
            BootEnd::Reset { wait } => {
                boots += 1;
                // The crash loop's back-off (`reset_delayed` said how long); SIGINT or SIGTERM
                // ends it, and crashvmm.
                if let Some(signal) = sleep_unless_signalled(&session.signal_pipes, wait) {
                    log::info!("received signal {signal} while waiting to boot the guest again");
                    break VmExit::Stopped { signal };
                }
                let mut c = lock(&crash);
                let crashes = c.orchestrator.crashes();
                log::warn!("resetting the VM after crash {crashes}");
                events.emit(Event::VmReset { crashes });
                c.on_boot();
            }
        }
    };
    session.console.sync();
    drop(raw_terminal);
    if let Some(d) = delivery {
        d.finish(config.upload_wait);
    }
    log::info!("VM ended after {:.3} s: {}", started.elapsed().as_secs_f64(), exit.reason());
    events.flush_suppressed();
    events.emit(Event::VmExited { exit_code: exit.exit_code(), reason: exit.reason() });
    events.sync();
    if let Some(w) = metrics_writer {
        w.finish();
    }
    Ok(exit)
}

/// Sleep for `wait`, or until one of `pipes` (signal-hook's SIGINT/SIGTERM pipes) has a
/// signal: its number.
fn sleep_unless_signalled(pipes: &[(i32, UnixStream)], wait: Duration) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> =
        pipes.iter().map(|(_, p)| libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is an array of `fds.len()` pollfd that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        // Zero: the time is up (checked above); below zero: a signal interrupted the wait.
        if n > 0 {
            return fds.iter().zip(pipes).find(|(f, _)| f.revents != 0).map(|(_, (signal, _))| *signal);
        }
    }
}

/// Crash directories waiting in the spool at start (`--upload`), for the queue's gauge.
fn queued_uploads(config: &VmConfig) -> usize {
    if config.upload.is_none() || !config.crash_dir.join(".upload").is_dir() {
        return 0;
    }
    delivery::Spool::open(&config.crash_dir).and_then(|s| s.pending()).map_or(0, |jobs| jobs.len())
}

/// What crash handling is given, as `config` says, with the session's event log, console and
/// upload spool.
fn crash_handling_config(
    config: &VmConfig,
    events: EventLog,
    console: ConsoleTail,
    upload_spool: Option<delivery::Spool>,
    store_query: Option<StoreQuery>,
) -> CrashHandlingConfig {
    CrashHandlingConfig {
        policy: Policy { hyperv: config.hyperv, ..config.policy.clone() },
        crash_dir: config.crash_dir.clone(),
        guest: GuestInfo {
            kernel: config.kernel.display().to_string(),
            cmdline: config.cmdline.clone(),
            memory_bytes: config.memory_bytes,
            vcpus: config.vcpus,
        },
        crash_disk: config.crash_disk.as_ref().map(|c| c.path.clone()),
        vmcore_sha256: config.vmcore_sha256,
        dump_spec: config.dump,
        live: LiveOptions { max_copy: config.live_dump_max_copy, method: config.live_dump_snapshot },
        upload_spool,
        crash_dir_max: config.crash_dir_max,
        vmcores_per_signature: config.vmcores_per_signature,
        store_query,
        upload_host: config.upload_host.clone(),
        events,
        console,
    }
}

/// A file removed when this goes (the control socket's).
struct RemoveOnDrop<'a>(&'a std::path::Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Raise the soft RLIMIT_NOFILE to the hard limit, so that a flood of control-socket clients
/// (capped below the limit, `api::connection_cap`) leaves the crash path its descriptors; the
/// soft limit in force is returned.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one rlimit into `limit`, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = io::Error::last_os_error();
        log::warn!("cannot read RLIMIT_NOFILE ({e}); assuming 1024");
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit(2) reads one rlimit from `raised`, which outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::debug!("RLIMIT_NOFILE raised from {} to {}", limit.rlim_cur, raised.rlim_cur);
            limit = raised;
        } else {
            let e = io::Error::last_os_error();
            log::warn!("cannot raise RLIMIT_NOFILE from {} to {}: {e}", limit.rlim_cur, limit.rlim_max);
        }
    }
    limit.rlim_cur
}

/// Build a fresh VM, run it until this boot ends, and say how.
fn boot(s: &Session, boot_number: u32) -> Result<BootEnd, VmError> {
    let shared = Shared { events: &s.events, console: &s.console, rtc: &s.rtc, taps: &s.taps };
    let machine = builder::build(s.config, &s.kvm, &shared)?;
    if boot_number == 0 {
        s.events.emit(Event::VmStarted {
            vcpus: s.config.vcpus,
            memory_bytes: s.config.memory_bytes,
            kernel: s.config.kernel.display().to_string(),
        });
    }
    run_machine(s, machine)
}

/// Run a built machine: its vCPU threads and the event loop, until the executor decides how
/// the boot ends or a vCPU thread stops the VM; then stop and join the threads.
fn run_machine(s: &Session, machine: Machine) -> Result<BootEnd, VmError> {
    let Machine { vm, vcpus, ctx, serial, nets } = machine;
    // The executor's view of this VM (shared with the thread that writes a vmcore).
    let control: SharedVm = ctx.clone();
    let state = Arc::new(ExitState::new().map_err(io_err("exit eventfd"))?);
    let mut manager = event_loop(s, &ctx, &state, serial)?;
    // The network devices' threads; stopped and joined when they are dropped, at this boot's end.
    // Before the vCPUs: nothing to undo if one cannot start.
    let net_threads = nets
        .into_iter()
        .enumerate()
        .map(|(i, (dev, tap))| NetThread::start(dev, tap, i))
        .collect::<Result<Vec<_>, _>>()?;

    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (id, fd) in vcpus.into_iter().enumerate() {
        let (vm, ctx, state) = (vm.clone(), ctx.clone(), state.clone());
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || match seccomp::apply(ThreadKind::Vcpu) {
                Ok(()) => vcpu::run_vcpu(id as u32, fd, vm, ctx, state),
                Err(e) => state.request(VmExit::Error(format!("vCPU {id}: {}", crate::error::Chain(&e)))),
            })
            .map_err(io_err("spawning a vCPU thread"))?;
        threads.push(t);
    }

    let mut watchdog = s.config.watchdog.map(|period| (Watchdog::new(period, Instant::now()), Instant::now()));
    // Run until the executor decides (stop, reset) or a vCPU thread stops the VM.
    while lock(&s.crash).end().is_none() && state.get().is_none() {
        // While a vmcore is written nothing here is timed: its end wakes the loop (`DumpWatcher`),
        // and the watchdog does not judge the guest meanwhile, so it does not wake the loop.
        let dumping = lock(&s.crash).dump_in_progress().is_some();
        let tick = watchdog.as_ref().filter(|_| !dumping).map(|(w, last)| *last + w.tick());
        let deadline = [lock(&s.crash).deadline(), ctx.deferred.next_due(), tick].into_iter().flatten().min();
        let timeout_ms = deadline
            .map_or(-1, |d| d.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32);
        if let Err(e) = manager.run_with_timeout(timeout_ms) {
            state.request(VmExit::Error(format!("event loop: {e:?}")));
        }
        ctx.post_due(Instant::now());
        lock(&s.crash).timer(&control);
        if let Some((w, last)) = watchdog.as_mut().filter(|_| dumping) {
            // The time a vmcore was being written does not count as a stall.
            let now = Instant::now();
            w.hold(now.saturating_duration_since(*last));
            *last = now;
            continue;
        }
        if let Some((w, last)) = watchdog.as_mut().filter(|(w, last)| Instant::now() >= *last + w.tick()) {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(*last);
            *last = now;
            if ctx.control.paused() || lock(&s.crash).dump_in_progress().is_some() {
                // Paused vCPUs make no progress, nor is a guest hung while its vmcore is being
                // written (a live dump may pause it past its copy limit): this time is not counted.
                w.hold(elapsed);
                continue;
            }
            let samples = ctx.control.request_samples();
            ctx.kicker.kick_all();
            if let Some(stalled) = w.observe(ctx.exits.load(std::sync::atomic::Ordering::Relaxed), &samples, now) {
                log::warn!("watchdog: the guest made no progress for {:.1} s", stalled.as_secs_f64());
                s.events.emit(Event::GuestHang { seconds: stalled.as_secs_f64() });
                let signal = CrashSignal::GuestHang { stalled_ms: stalled.as_millis() as u64 };
                lock(&s.crash).signal(signal, &control);
            }
        }
    }
    // A vmcore still being written is finished (and what follows it done) before the VM goes.
    lock(&s.crash).wait_dump(&control);
    state.stop();
    stop_vcpus(&threads, &ctx.kicker, &ctx.control);
    for t in threads {
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
    drop(net_threads);
    // What each network device moved and dropped this boot, now that its thread is gone.
    for (i, net) in ctx.nets.iter().enumerate() {
        s.events.emit(lock(net).counters_event(i));
    }
    let mut crash = lock(&s.crash);
    let stopped_from_outside = matches!(state.get(), Some(VmExit::Stopped { .. }));
    match crash.end() {
        // A reset decided while crashvmm was being stopped does not outlive the stop (`vm_exit`).
        Some(BootEnd::Reset { .. }) if stopped_from_outside => {}
        Some(end) => return Ok(end),
        None => {}
    }
    // Signals sent while the VM was ending (a panic just before the guest's own reboot) still
    // count.
    for (signal, seen) in ctx.signals.drain() {
        crash.observed(signal, seen, &control);
    }
    let exit = state.get().unwrap_or(VmExit::Error("no exit reason".into()));
    Ok(crash.vm_exit(exit, &control))
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber>>;

/// The main thread's event loop for one boot, with its subscribers.
fn event_loop(
    s: &Session,
    ctx: &Arc<ExitContext>,
    state: &Arc<ExitState>,
    serial: Arc<Mutex<SerialDevice>>,
) -> Result<EventManager<Subscriber>, VmError> {
    let mut manager: EventManager<Subscriber> = EventManager::new()
        .map_err(|e| VmError::Io { what: "event manager", source: io::Error::other(format!("{e:?}")) })?;
    manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher(state.clone()))));
    manager.add_subscriber(Arc::new(Mutex::new(CrashWatcher { ctx: ctx.clone(), crash: s.crash.clone() })));
    let notify = lock(&s.crash).dump_notifier();
    manager.add_subscriber(Arc::new(Mutex::new(DumpWatcher { notify, ctx: ctx.clone(), crash: s.crash.clone() })));
    let pipes = s
        .signal_pipes
        .iter()
        .map(|(sig, p)| p.try_clone().map(|p| (*sig, p)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("signal pipe"))?;
    manager.add_subscriber(Arc::new(Mutex::new(SignalWatcher { pipes, state: state.clone() })));
    if let Some(listener) = &s.api {
        let listener = listener.try_clone().map_err(io_err("control socket"))?;
        manager.add_subscriber(Arc::new(Mutex::new(ApiServer::new(
            listener,
            ctx.clone(),
            state.clone(),
            s.crash.clone(),
            serial.clone(),
            s.started,
            s.fd_limit,
        ))));
    }
    if s.config.console == ConsoleMode::Stdio {
        manager.add_subscriber(Arc::new(Mutex::new(StdinWatcher {
            serial,
            filter: EscapeFilter::default(),
            escape_enabled: s.escape_enabled,
            state: state.clone(),
        })));
    }
    Ok(manager)
}

/// Feeds crash signals from the vCPU threads to the executor.
struct CrashWatcher {
    ctx: Arc<ExitContext>,
    crash: Arc<Mutex<CrashHandling>>,
}

impl MutEventSubscriber for CrashWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut crash = lock(&self.crash);
        let vm: SharedVm = self.ctx.clone();
        for (signal, seen) in self.ctx.signals.drain() {
            crash.observed(signal, seen, &vm);
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.ctx.signals.notify_fd(), EventSet::IN)) {
            log::error!("cannot watch crash signals: {e:?}");
        }
    }
}

/// Wakes the main loop when the `vmcore-writer` thread is done: what waited for the vmcore
/// follows.
struct DumpWatcher {
    notify: Arc<EventFd>,
    ctx: Arc<ExitContext>,
    crash: Arc<Mutex<CrashHandling>>,
}

impl MutEventSubscriber for DumpWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.notify.read();
        let vm: SharedVm = self.ctx.clone();
        lock(&self.crash).dump_done(&vm);
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.notify.as_ref(), EventSet::IN)) {
            log::error!("cannot watch the vmcore writer: {e:?}");
        }
    }
}

/// Kick every vCPU thread out of KVM_RUN until each has seen the stop flag and ended.
fn stop_vcpus(threads: &[JoinHandle<()>], kicker: &Kicker, control: &VcpuControl) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads.iter().any(|t| !t.is_finished()) {
        kicker.kick_all();
        control.wake();
        if Instant::now() > deadline {
            log::error!("vCPU threads did not stop within 5 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
