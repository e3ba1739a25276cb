//! The control socket (`--api-socket PATH`): JSON requests and responses, one per line, over a
//! Unix socket only its owner can use; `subscribe` turns a connection into a stream of the
//! event log's records. Served by the main thread's event loop: every request that changes the
//! VM's course is a [`Command`] the executor carries out (no crash or dump code here), and a
//! client never blocks the VMM (event streams are non-blocking and a slow subscriber is
//! dropped).
//!
//! ```text
//! {"command":"status"}                         -> {"ok":true,"state":"running",...}
//! {"command":"inject-nmi"} / {"command":"inject-nmi","vcpu":1}
//! {"command":"pause"} / {"command":"resume"}
//! {"command":"dump"}                           -> host-side vmcore of the live VM (pause, write, resume)
//! {"command":"dump","format":"elf","dump_level":0}   the same, in another format or dump level
//! {"command":"dump","live":true}               -> the guest paused for a snapshot only (pause_us)
//! {"command":"reset"}                          -> boot the guest again
//! {"command":"shutdown"}                       -> hard stop (exit code 0)
//! {"command":"sysrq","key":"c"}                -> {"ok":true,"key":"c"}: a break then `c` on COM1
//! {"command":"subscribe"}                      -> {"ok":true} then event lines
//! anything else                                -> {"ok":false,"error":"..."}
//! ```
//!
//! One dump at a time: while a vmcore is being written (the operator's, live or not, or a
//! crash's or a hang's), `status` answers at once and says so (`dump_in_progress`), and every
//! other command is answered at once with `{"ok":false,"error":"a dump is in progress (...)"}`;
//! the dump's own answer comes when its vmcore is written.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vmm_sys_util::epoll::EventSet;

use crate::control::ExitState;
use crate::crash::executor::{Answer, CommandError, CommandReply, CrashHandling, SharedVm};
use crate::crash::vmcore::VmcoreFormat;
use crate::crash::{Command, DumpOverride, NmiTargets};
use crate::error::Chain;
use crate::events::Event;
use crate::serial::SerialDevice;
use crate::sync::lock;
use crate::vcpu::ExitContext;

/// Longest request line.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request. Also the subcommands of `crashvmm ctl` (their help is these doc comments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// State, vCPUs, crashes, last crash directory.
    Status,
    /// Inject an NMI into every vCPU, or one.
    InjectNmi {
        #[serde(default)]
        #[arg(long)]
        vcpu: Option<u32>,
    },
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// Write a host-side vmcore of the running VM (pause, write, resume), in the format and at
    /// the dump level crashvmm was started with unless given here.
    Dump {
        #[serde(default)]
        #[arg(long, value_enum)]
        format: Option<VmcoreFormat>,
        #[serde(default)]
        #[arg(long)]
        dump_level: Option<u8>,
        /// Pause the guest only for a copy-on-write snapshot (milliseconds), not for the write.
        #[serde(default)]
        #[arg(long)]
        live: bool,
    },
    /// Boot the guest again.
    Reset,
    /// Stop the VM now (hard stop; crashvmm exits with code 0).
    Shutdown,
    /// Stream the event log's records as they happen.
    Subscribe,
    /// Send a magic SysRq key to the guest's serial console: a break, then KEY (one ASCII
    /// letter or digit). The guest's kernel decides what it does (its kernel.sysrq mask
    /// applies); a crash it causes is noticed as any other.
    Sysrq { key: SysrqKey },
}

/// A magic SysRq key: one ASCII letter or digit (`crashvmm ctl sysrq c`, `"key":"c"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SysrqKey(u8);

impl SysrqKey {
    /// The byte the guest receives after the break.
    pub fn byte(self) -> u8 {
        self.0
    }
}

impl std::str::FromStr for SysrqKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.as_bytes() {
            [b] if b.is_ascii_alphanumeric() => Ok(SysrqKey(*b)),
            _ => Err(format!("a sysrq key is one ASCII letter or digit, not {s:?}")),
        }
    }
}

impl TryFrom<String> for SysrqKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SysrqKey> for String {
    fn from(k: SysrqKey) -> String {
        k.to_string()
    }
}

impl std::fmt::Display for SysrqKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0 as char)
    }
}

/// Parse one request line.
pub fn parse(line: &str) -> Result<Request, String> {
    serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))
}

fn error(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A process answers on the socket: another crashvmm (or something else) serves it.
    #[error("another crashvmm is serving {}", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    #[error("control socket {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bind the socket at `path`, owner-only. An existing socket that nobody serves (a crashed
/// crashvmm's) is replaced; one that accepts a connection is another crashvmm's, and any other
/// kind of file is left alone: both are refused.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io { path: path.to_owned(), source };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_owned()));
        }
        match probe(path) {
            Ok(()) => return Err(BindError::InUse(path.to_owned())),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(e)),
                _ => {}
            },
            // Gone meanwhile: bind it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    // Owner-only from the start: bind(2) takes the socket's mode from the umask.
    let listener = crate::files::with_umask(0o177, || UnixListener::bind(path)).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    Ok(listener)
}

/// Whether something listens on the socket at `path`: `Ok` when a connection is accepted or
/// its queue is full (`EAGAIN`: a listener that does not keep up is still one), otherwise
/// connect(2)'s error (`ECONNREFUSED`: a socket file nobody serves). Non-blocking, so that a
/// stopped crashvmm with a full queue cannot hold this one up.
fn probe(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the descriptor it returns is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    let r = unsafe { libc::connect(socket.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) };
    if r == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EAGAIN) => Ok(()),
        e => Err(e),
    }
}

/// Descriptors that control-socket connections never take: what the VM's own work needs
/// beyond what is open when a boot starts (a crash's vmcore, its snapshot's userfaultfd and
/// pagemap or pipe, the crash directory's files, the upload's connections, the refusal of one
/// connection past the cap).
pub const FD_RESERVE: u64 = 32;
/// Most control-socket connections (subscribers included) at once, whatever the limit.
pub const MAX_CONNECTIONS: u64 = 1024;

/// How many control-socket connections may be open at once, with `limit` descriptors
/// (RLIMIT_NOFILE) of which `open` are in use: all but [`FD_RESERVE`] of the rest.
pub fn connection_cap(limit: u64, open: u64) -> usize {
    limit.saturating_sub(open).saturating_sub(FD_RESERVE).min(MAX_CONNECTIONS) as usize
}

/// Descriptors this process has open now (`/proc/self/fd`; the listing's own counted).
fn open_descriptors() -> io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

/// What the API acts on during one boot of the guest.
pub struct ApiServer {
    pub listener: UnixListener,
    pub ctx: Arc<ExitContext>,
    pub state: Arc<ExitState>,
    pub crash: Arc<Mutex<CrashHandling>>,
    /// COM1, for `sysrq`.
    pub serial: Arc<Mutex<SerialDevice>>,
    pub started: Instant,
    conns: HashMap<u32, (UnixStream, Vec<u8>)>,
    next: u32,
    /// Most connections at once (subscribers included): see [`connection_cap`].
    cap: usize,
    /// RLIMIT_NOFILE, for the refusal's wording.
    fd_limit: u64,
    /// Whether the cap was reached and said so (once, until connections are below it again).
    at_cap: bool,
    /// A descriptor held spare: at EMFILE or ENFILE it is closed to take one connection off
    /// the queue and refuse it (a level-triggered listener that cannot be drained would wake
    /// the loop again at once), then opened again.
    spare: Option<std::fs::File>,
    /// Whether the listener is watched: not while descriptors ran out and no spare was left,
    /// until a connection closes.
    listening: bool,
    /// Connections refused since descriptors ran out (`None`: they have not).
    exhausted: Option<u64>,
}

/// `data` of the listener in the event loop; connections count up from 1.
const LISTENER: u32 = 0;

impl ApiServer {
    pub fn new(
        listener: UnixListener,
        ctx: Arc<ExitContext>,
        state: Arc<ExitState>,
        crash: Arc<Mutex<CrashHandling>>,
        serial: Arc<Mutex<SerialDevice>>,
        started: Instant,
        fd_limit: u64,
    ) -> Self {
        let spare = std::fs::File::open("/dev/null").ok();
        let cap = match open_descriptors() {
            Ok(open) => connection_cap(fd_limit, open),
            Err(e) => {
                log::warn!("control socket: cannot count open descriptors ({e}); assuming half the limit");
                connection_cap(fd_limit, fd_limit / 2)
            }
        };
        if cap == 0 {
            log::warn!(
                "control socket: no descriptors to spare under RLIMIT_NOFILE {fd_limit}; it refuses every connection"
            );
        } else {
            log::debug!("control socket: at most {cap} connections (RLIMIT_NOFILE {fd_limit})");
        }
        Self {
            listener,
            ctx,
            state,
            crash,
            serial,
            started,
            conns: HashMap::new(),
            next: 1,
            cap,
            fd_limit,
            at_cap: false,
            spare,
            listening: true,
            exhausted: None,
        }
    }

    /// Connections holding a descriptor: served ones and subscribers.
    fn connections(&self) -> usize {
        self.conns.len() + self.ctx.events.subscribers()
    }

    fn status(&self) -> Value {
        let c = &self.ctx;
        let crash = lock(&self.crash);
        let state = if self.state.stopping() || crash.end().is_some() {
            "stopping"
        } else if c.control.paused() {
            "paused"
        } else {
            "running"
        };
        json!({
            "ok": true, "state": state, "vcpus": c.control.vcpus(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "crashes": crash.orchestrator.crashes(),
            "crash_in_progress": crash.orchestrator.panicked(),
            "last_crash_dir": crash.last_crash_dir().map(|d| d.display().to_string()),
            "dump_in_progress": crash.dump_in_progress(),
        })
    }

    /// Answer `req` from connection `id`: now, or (a dump) once the executor has its result.
    fn handle(&mut self, id: u32, req: Request) {
        let command = match req {
            Request::Status => {
                let status = self.status();
                return self.reply(id, &status);
            }
            Request::InjectNmi { vcpu } => Command::InjectNmi(vcpu.map_or(NmiTargets::All, NmiTargets::One)),
            Request::Pause => Command::Pause,
            Request::Resume => Command::Resume,
            Request::Dump { format, dump_level, live } => Command::Dump(DumpOverride { format, dump_level, live }),
            Request::Reset => Command::Reset,
            Request::Shutdown => Command::Shutdown,
            Request::Sysrq { key } => return self.sysrq(id, key),
            Request::Subscribe => unreachable!("handled by the caller"),
        };
        let Some(mut stream) = self.conns.get(&id).and_then(|(s, _)| s.try_clone().ok()) else { return };
        // The executor decides and acts; the socket only words the answer.
        let answer: Answer = Box::new(move |result| write_line(&mut stream, &answer(result)));
        let vm: SharedVm = self.ctx.clone();
        lock(&self.crash).command(command, &vm, answer);
    }

    /// `sysrq`: a break and `key` on COM1, queued as console input is (no [`Command`]: the
    /// guest decides what follows, and a crash it causes is noticed as any other). Refused as
    /// a command would be while this boot ends or a vmcore is being written.
    fn sysrq(&mut self, id: u32, key: SysrqKey) {
        let refused = match lock(&self.crash).check_input() {
            Ok(()) if self.state.stopping() => Err(CommandError::Ending),
            r => r,
        };
        if let Err(e) = refused {
            return self.reply(id, &error(Chain(&e)));
        }
        let sent = lock(&self.serial).send_break(key.byte());
        match sent {
            Ok(()) => {
                self.ctx.events.emit(Event::SysrqSent { key: key.to_string() });
                log::info!("sysrq: a break and '{key}' queued on the serial console");
                self.reply(id, &json!({"ok": true, "key": key.to_string()}));
            }
            Err(e) => {
                log::warn!("sysrq '{key}': {}", Chain(&e));
                self.reply(id, &error(format!("cannot send sysrq '{key}': {}", Chain(&e))));
            }
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if let Some(refused) = self.exhausted.take() {
                        log::info!("control socket: descriptors free again ({refused} connections refused meanwhile)");
                    }
                    if self.connections() >= self.cap {
                        if !self.at_cap {
                            log::warn!(
                                "control socket: {} connections open, the most under RLIMIT_NOFILE {}; refusing new ones",
                                self.cap,
                                self.fd_limit
                            );
                            self.at_cap = true;
                        }
                        let _ = stream.set_nonblocking(true);
                        let msg = format!(
                            "too many control-socket connections ({} open, the most under RLIMIT_NOFILE {}); try again later",
                            self.cap, self.fd_limit
                        );
                        write_line(&mut stream, &error(msg));
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let id = self.next;
                    self.next += 1;
                    if ops.add(Events::with_data(&stream, id, EventSet::IN)).is_ok() {
                        self.conns.insert(id, (stream, Vec::new()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // accept(2) wants a descriptor before it looks at the queue, so a connection
                    // may be waiting or not: the spare makes room to take it off and refuse it.
                    let Some(spare) = self.spare.take() else {
                        // No spare (another thread took its descriptor): the queue cannot be
                        // drained, so stop watching it until a connection of ours closes.
                        log::warn!("control socket: accept: {e}; not accepting until a connection closes");
                        return self.stop_listening(ops);
                    };
                    drop(spare);
                    let refused_one = match self.listener.accept() {
                        Ok((mut stream, _)) => {
                            let refused = self.exhausted.get_or_insert_with(|| {
                                log::error!(
                                    "control socket: accept: {e}; refusing connections until descriptors are free"
                                );
                                0
                            });
                            *refused += 1;
                            let _ = stream.set_nonblocking(true);
                            write_line(&mut stream, &error("crashvmm is out of file descriptors; try again later"));
                            true
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                        Err(e) => {
                            log::warn!("control socket: accept: {e}");
                            false
                        }
                    };
                    // The refused connection's descriptor is closed: the spare takes it again.
                    self.spare = std::fs::File::open("/dev/null").ok();
                    if !refused_one {
                        return;
                    }
                }
                Err(e) => {
                    log::warn!("control socket: accept: {e}");
                    return;
                }
            }
        }
    }

    fn stop_listening(&mut self, ops: &mut EventOps) {
        if self.listening {
            let _ = ops.remove(Events::new_raw(self.listener.as_raw_fd(), EventSet::IN));
            self.listening = false;
        }
    }

    /// A connection closed: below the cap again, and a descriptor is free.
    fn closed(&mut self, ops: &mut EventOps) {
        if self.connections() < self.cap {
            self.at_cap = false;
        }
        if self.spare.is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
        }
        if !self.listening && self.spare.is_some() {
            match ops.add(Events::with_data(&self.listener, LISTENER, EventSet::IN)) {
                Ok(()) => self.listening = true,
                Err(e) => log::error!("cannot watch the control socket: {e:?}"),
            }
        }
    }

    fn close(&mut self, id: u32, ops: &mut EventOps) {
        if let Some((stream, _)) = self.conns.remove(&id) {
            let _ = ops.remove(Events::new_raw(stream.as_raw_fd(), EventSet::IN));
            drop(stream);
            self.closed(ops);
        }
    }

    fn serve(&mut self, id: u32, ops: &mut EventOps) {
        let mut chunk = [0u8; 4096];
        let n = match self.conns.get_mut(&id).map(|(s, _)| s.read(&mut chunk)) {
            Some(Ok(0)) | Some(Err(_)) | None => return self.close(id, ops),
            Some(Ok(n)) => n,
        };
        let Some((_, buf)) = self.conns.get_mut(&id) else { return };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST && !buf.contains(&b'\n') {
            self.reply(id, &error(format!("request longer than {MAX_REQUEST} bytes")));
            return self.close(id, ops);
        }
        while let Some(pos) = self.conns.get(&id).and_then(|(_, b)| b.iter().position(|&c| c == b'\n')) {
            let line: Vec<u8> = self.conns.get_mut(&id).map(|(_, b)| b.drain(..=pos).collect()).unwrap_or_default();
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.trim().is_empty() {
                continue;
            }
            match parse(&line) {
                Ok(Request::Subscribe) => {
                    // From now on this connection carries event lines, written by whichever
                    // thread emits them.
                    self.reply(id, &json!({"ok": true}));
                    if let Some((stream, _)) = self.conns.get(&id).and_then(|(s, b)| s.try_clone().ok().map(|s| (s, b)))
                    {
                        self.ctx.events.subscribe(stream);
                    }
                    // Stop reading it; the subscription lives until the client goes away.
                    if let Some((stream, _)) = self.conns.remove(&id) {
                        let _ = ops.remove(Events::new_raw(stream.as_raw_fd(), EventSet::IN));
                    }
                    return;
                }
                Ok(req) => self.handle(id, req),
                Err(e) => self.reply(id, &error(e)),
            }
        }
    }

    fn reply(&mut self, id: u32, v: &Value) {
        if let Some((stream, _)) = self.conns.get_mut(&id) {
            write_line(stream, v);
        }
    }
}

/// One answer line. Non-blocking: a client that does not read its answers loses them.
fn write_line(stream: &mut UnixStream, v: &Value) {
    let mut line = v.to_string();
    line.push('\n');
    let _ = stream.write_all(line.as_bytes());
}

/// A command's reply as the socket words it.
fn answer(result: Result<CommandReply, CommandError>) -> Value {
    match result {
        Ok(CommandReply::NmiInjected { vcpus }) => json!({"ok": true, "vcpus": vcpus}),
        Ok(CommandReply::Paused { all_stopped }) => json!({"ok": all_stopped}),
        Ok(CommandReply::Resumed | CommandReply::Ending) => json!({"ok": true}),
        Ok(CommandReply::Dumped(d)) => {
            let mut v = json!({
                "ok": true, "path": d.path.display().to_string(), "bytes": d.bytes, "sha256": d.sha256,
                "duration_ms": d.duration_ms,
            });
            if let Some(l) = d.live {
                v["live"] = json!(true);
                v["snapshot"] = json!(l.snapshot);
                v["pause_us"] = json!(l.pause_us);
                v["copied_bytes"] = json!(l.copied_bytes);
                v["paused_for_rest"] = json!(l.paused_for_rest);
            }
            v
        }
        Err(e) => error(Chain(&e)),
    }
}

impl MutEventSubscriber for ApiServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            LISTENER => self.accept(ops),
            id => self.serve(id, ops),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.listener, LISTENER, EventSet::IN)) {
            log::error!("cannot watch the control socket: {e:?}");
        }
    }
}

/// `crashvmm ctl`: send one request, print the answer (and, for `subscribe`, the stream).
/// How long `crashvmm ctl` waits for the answer to `request` unless told: a `dump` is answered
/// once its vmcore is written (minutes for a large guest), the rest at once.
pub fn default_timeout(request: &str) -> Option<Duration> {
    match parse(request) {
        Ok(Request::Dump { .. }) => Some(Duration::from_secs(3600)),
        _ => Some(Duration::from_secs(10)),
    }
}

/// `crashvmm ctl`: send one request and print the answer (for `subscribe`, every line that
/// follows). `timeout` bounds the wait for the (first) answer. A closed stdout ends it with a
/// `BrokenPipe` error, which `main` takes for a quiet end.
pub fn client(path: &Path, request: &str, timeout: Option<Duration>) -> anyhow::Result<i32> {
    use anyhow::Context;
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the control socket {}", path.display()))?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    stream.write_all(request.as_bytes())?;
    stream.write_all(b"\n")?;
    let subscribe = parse(request).is_ok_and(|r| r == Request::Subscribe);
    let mut reader = io::BufReader::new(stream);
    let mut line = String::new();
    let mut ok = true;
    let mut out = io::stdout().lock();
    loop {
        line.clear();
        match io::BufRead::read_line(&mut reader, &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                let waited = timeout.map(|t| humantime::format_duration(t).to_string()).unwrap_or_default();
                anyhow::bail!("no answer from the control socket {} within {waited}", path.display());
            }
            Err(e) => return Err(e.into()),
        }
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line.trim().into()));
        writeln!(out, "{}", line.trim_end())?;
        out.flush()?;
        if v.get("ok") == Some(&Value::Bool(false)) {
            ok = false;
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                eprintln!("crashvmm ctl: {}", crate::printable::escape(e));
            }
        }
        if !subscribe {
            break;
        }
        // The stream of events that follows the first answer has no end.
        reader.get_ref().set_read_timeout(None)?;
    }
    Ok(if ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_rejects_the_rest() {
        assert_eq!(parse(r#"{"command":"status"}"#), Ok(Request::Status));
        assert_eq!(parse(r#"{"command":"inject-nmi"}"#), Ok(Request::InjectNmi { vcpu: None }));
        assert_eq!(parse(r#" {"command":"inject-nmi","vcpu":1} "#), Ok(Request::InjectNmi { vcpu: Some(1) }));
        assert_eq!(parse(r#"{"command":"subscribe"}"#), Ok(Request::Subscribe));
        assert_eq!(parse(r#"{"command":"dump"}"#), Ok(Request::Dump { format: None, dump_level: None, live: false }));
        assert_eq!(
            parse(r#"{"command":"dump","format":"elf","dump_level":0}"#),
            Ok(Request::Dump { format: Some(VmcoreFormat::Elf), dump_level: Some(0), live: false })
        );
        assert_eq!(parse(r#"{"command":"reset"}"#), Ok(Request::Reset));
        assert_eq!(parse(r#"{"command":"sysrq","key":"c"}"#), Ok(Request::Sysrq { key: SysrqKey(b'c') }));
        assert_eq!(
            parse(r#"{"command":"sysrq","key":"9"}"#).map(|r| serde_json::to_string(&r).unwrap()),
            Ok(r#"{"command":"sysrq","key":"9"}"#.to_string())
        );
        for bad in ["", "cc", " ", r"\n", "é", r"\u0000", "-"] {
            let e = parse(&format!(r#"{{"command":"sysrq","key":"{bad}"}}"#)).unwrap_err();
            assert!(e.contains("a sysrq key is one ASCII letter or digit"), "{bad}: {e}");
        }
        assert!(parse(r#"{"command":"sysrq"}"#).unwrap_err().contains("missing field `key`"));
        for bad in ["", "garbage", "{}", r#"{"command":"explode"}"#, r#"{"command":"inject-nmi","vcpu":"one"}"#, "[1]"]
        {
            assert!(parse(bad).unwrap_err().starts_with("bad request"), "{bad}");
        }
    }

    #[test]
    fn bind_is_owner_only_and_refuses_to_clobber_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(bind(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A stale socket (nobody serves it) is replaced; a regular file is not touched.
        drop(bind(&path).unwrap());
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        let e = bind(&file).unwrap_err();
        assert!(matches!(e, BindError::NotASocket(_)), "{e:?}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    /// A socket someone serves is another crashvmm's: refused, and left as it is (its
    /// listener still gets connections).
    #[test]
    fn bind_refuses_a_socket_that_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let first = bind(&path).unwrap();
        let e = bind(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("another crashvmm is serving {}", path.display()));
        drop(UnixStream::connect(&path).expect("the first socket still serves"));
        first.set_nonblocking(false).unwrap();
        first.accept().expect("the first listener got the connection");
    }

    #[test]
    fn connections_leave_the_reserve_to_the_vm() {
        assert_eq!(connection_cap(64, 22), 10);
        assert_eq!(connection_cap(64, 40), 0);
        assert_eq!(connection_cap(16, 30), 0);
        assert_eq!(connection_cap(1 << 20, 30), MAX_CONNECTIONS as usize);
        assert_eq!(connection_cap(u64::MAX, 30), MAX_CONNECTIONS as usize);
    }
}
