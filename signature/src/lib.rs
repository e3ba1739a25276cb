//! Crash signatures of Linux guests: a title named the way kernel developers (and syzkaller's
//! `pkg/report`) name crashes, the first frames of the call trace with offsets stripped, and a
//! stable id over both.
//!
//! Sans-IO: text in, [`Signature`] out. The text comes from a hostile guest, so every step is
//! bounded (input size, line length, lines per report, frames per report) and nothing panics.
//!
//! Sources, best first: the Hyper-V crash message ([`Signature::from_hyperv_message`]), the
//! console log and the vmcore's kernel log ([`from_text`]); crashes with no text get
//! [`Signature::hang`] and [`Signature::triple_fault`].

mod frames;
mod parse;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// How many frames a signature keeps (after the skip list).
pub const MAX_FRAMES: usize = 5;
/// Titles are cut to this many bytes, as syzkaller does.
pub const MAX_TITLE_LEN: usize = 120;
/// At most this much text is read; a console log longer than this is read from its start.
pub const MAX_INPUT_BYTES: usize = 16 << 20;

/// The kind of crash, from the report's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `Kernel panic - not syncing: ...` with no earlier report that caused it.
    Panic,
    /// `BUG: unable to handle page fault for address` / `kernel paging request`.
    PageFault,
    /// `BUG: kernel NULL pointer dereference`.
    NullDeref,
    /// `general protection fault`.
    Gpf,
    /// `WARNING: ...`.
    Warning,
    /// `kernel BUG at ...` and the other `BUG: ...` reports.
    Bug,
    /// `watchdog: BUG: soft lockup`.
    SoftLockup,
    /// `watchdog: Watchdog detected hard LOCKUP`.
    HardLockup,
    /// `INFO: task ... blocked for more than N seconds`.
    HungTask,
    /// `rcu: INFO: rcu_preempt detected stalls`.
    RcuStall,
    /// `BUG: KASAN: ...`.
    Kasan,
    /// `UBSAN: ...`.
    Ubsan,
    /// `invalid opcode:` (with no `kernel BUG at` before it).
    InvalidOpcode,
    /// `divide error:`.
    DivideError,
    /// `PANIC: double fault`.
    DoubleFault,
    /// `stack segment:`.
    StackSegment,
    /// The hang detector stopped a guest that printed nothing.
    Hang,
    /// The guest triple-faulted (a shutdown exit).
    TripleFault,
}

impl Kind {
    /// Kinds that end the task with an oops (and the guest with `panic_on_oops`); a report of
    /// one of these is the cause of a later `Fatal exception` panic.
    fn is_oops(self) -> bool {
        matches!(
            self,
            Kind::PageFault
                | Kind::NullDeref
                | Kind::Gpf
                | Kind::Bug
                | Kind::InvalidOpcode
                | Kind::DivideError
                | Kind::DoubleFault
                | Kind::StackSegment
        )
    }
}

/// A crash signature: what `report.json` and `crash_report` events carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    /// The crash's title, syzkaller style (`general protection fault in FUNC`).
    pub title: String,
    /// Up to [`MAX_FRAMES`] call-trace function names, innermost first: `? ` entries, skipped
    /// frames (panic, dump_stack, __warn, ...), offsets, `.isra.0`-style suffixes and syscall
    /// prefixes removed.
    pub frames: Vec<String>,
    /// 16 hex digits of the SHA-256 of the title and frames: the same bug gives the same id
    /// across guests, boots (KASLR, PIDs, timestamps, CPUs) and builds of one kernel release.
    pub id: String,
    /// The kind of crash.
    pub kind: Kind,
}

/// Why a Hyper-V crash message gave no signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The message holds no text (empty, or only NUL bytes).
    #[error("the crash message is empty")]
    Empty,
    /// The message holds text, but no crash report the parser knows.
    #[error("no crash report in {0} bytes of text")]
    NoCrashReport(usize),
}

impl Signature {
    /// A signature from its parts; the title is sanitized and the id computed here.
    pub fn new(kind: Kind, title: &str, frames: Vec<String>) -> Signature {
        let title = parse::sanitize_title(title);
        let mut frames = frames;
        frames.truncate(MAX_FRAMES);
        for f in &mut frames {
            if f.len() > frames::MAX_FUNC_LEN {
                *f = parse::truncate(f, frames::MAX_FUNC_LEN).to_string();
            }
        }
        let id = signature_id(&title, &frames);
        Signature { title, frames, id, kind }
    }

    /// A guest the hang detector stopped with no crash report on its console.
    pub fn hang() -> Signature {
        Signature::new(Kind::Hang, "hang", Vec::new())
    }

    /// A guest the hang detector stopped whose vCPUs spin in `function` (syzkaller names its
    /// stalls `... in FUNC` too): hangs in one function group together, in different ones not.
    pub fn hang_in(function: &str) -> Signature {
        Signature::new(Kind::Hang, &format!("hang in {function}"), vec![function.to_string()])
    }

    /// A guest that triple-faulted (KVM shutdown exit).
    pub fn triple_fault() -> Signature {
        Signature::new(Kind::TripleFault, "triple fault", Vec::new())
    }

    /// The signature in a Hyper-V crash message: the kmsg dump text the guest put in the crash
    /// message page (bytes as the guest wrote them: NULs, invalid UTF-8 and all).
    pub fn from_hyperv_message(message: &[u8]) -> Result<Signature, SignatureError> {
        let message = &message[..message.len().min(MAX_INPUT_BYTES)];
        let text = String::from_utf8_lossy(message);
        let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if text.is_empty() {
            return Err(SignatureError::Empty);
        }
        from_text(text).ok_or(SignatureError::NoCrashReport(text.len()))
    }
}

/// The id of a title and its frames: 16 hex digits of SHA-256 over `title\nframe\nframe...`.
pub fn signature_id(title: &str, frames: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(title.as_bytes());
    for f in frames {
        h.update(b"\n");
        h.update(f.as_bytes());
    }
    let digest = h.finalize();
    hex::encode(&digest[..8])
}

/// The signature of the crash in a console log or kernel log, or `None` if it holds no crash
/// report.
///
/// Which report: a panic whose message names a cause elsewhere (`Fatal exception`,
/// `panic_on_warn set`, `softlockup: hung tasks`, ...) takes the first oops before it (or,
/// with none, the last report before it); any other panic is its own title. With no panic,
/// the first oops wins, then the first stall, lockup, hung task or sanitizer report, then the
/// first WARNING (so a boot-time WARNING does not hide the later fault that killed the guest).
pub fn from_text(text: &str) -> Option<Signature> {
    pick(text).map(|(s, _)| s)
}

/// [`from_text`], and whether what it chose is a panic that names a cause it cannot see (a
/// `Fatal exception` whose oops was printed before the text begins).
fn pick(text: &str) -> Option<(Signature, bool)> {
    let text = parse::truncate(text, MAX_INPUT_BYTES);
    let lines = parse::normalize_lines(text);
    let reports = parse::find_reports(&lines);
    let chosen = choose(&reports)?;
    let cause_unseen = reports[chosen].kind == Kind::Panic && reports[chosen].consequence;
    Some((parse::signature_of(&lines, &reports, chosen), cause_unseen))
}

/// The signature of a crash from the guest's Hyper-V crash message (its kernel log at the
/// panic, a tail of a few KiB) and its console (the whole log, if the kernel printed it
/// there): the message's, unless the message begins after the oops its panic names as the
/// cause, when the console's oops is that cause; the console's when there is no message or it
/// holds no report.
pub fn from_message_and_console(message: Option<&[u8]>, console: &str) -> Option<Signature> {
    let from_message = message.and_then(|m| {
        let m = &m[..m.len().min(MAX_INPUT_BYTES)];
        pick(String::from_utf8_lossy(m).trim_matches(|c: char| c == '\0' || c.is_whitespace()))
    });
    match from_message {
        Some((sig, false)) => Some(sig),
        Some((sig, true)) => Some(from_text(console).filter(|c| c.kind.is_oops()).unwrap_or(sig)),
        None => from_text(console),
    }
}

fn choose(reports: &[parse::Start]) -> Option<usize> {
    if let Some(p) = reports.iter().position(|r| r.kind == Kind::Panic) {
        if !reports[p].consequence {
            // An earlier oops is still the cause when the panic is its own kind of message
            // (`Attempted to kill init!` after init oopsed).
            if reports[p].title.contains("Attempted to kill") {
                if let Some(o) = reports[..p].iter().position(|r| r.kind.is_oops()) {
                    return Some(o);
                }
            }
            return Some(p);
        }
        if let Some(o) = reports[..p].iter().position(|r| r.kind.is_oops()) {
            return Some(o);
        }
        return Some(if p > 0 { p - 1 } else { p });
    }
    if let Some(o) = reports.iter().position(|r| r.kind.is_oops()) {
        return Some(o);
    }
    if let Some(o) = reports.iter().position(|r| r.kind != Kind::Warning) {
        return Some(o);
    }
    if reports.is_empty() {
        None
    } else {
        Some(0)
    }
}
