//! Where the guest's serial console goes: `stdio`, a file, or nowhere, always copied to the
//! optional console log and to an in-memory tail kept for crash reports.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use thiserror::Error;

/// Bytes of console output kept in memory.
pub const CONSOLE_TAIL_BYTES: usize = 1 << 20;

/// `--console` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleMode {
    Stdio,
    File(PathBuf),
    Null,
}

impl FromStr for ConsoleMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(ConsoleMode::Stdio),
            "null" => Ok(ConsoleMode::Null),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(ConsoleMode::File(PathBuf::from(p))),
                _ => Err(format!("'{s}' is not one of stdio, file:PATH, null")),
            },
        }
    }
}

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("cannot create console file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn create(path: &Path) -> Result<File, ConsoleError> {
    crate::files::create_output(path, "console")
        .map_err(|source| ConsoleError::Create { path: path.to_owned(), source })
}

/// The last [`CONSOLE_TAIL_BYTES`] of console output.
#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    fn push(&self, data: &[u8]) {
        let mut q = lock(&self.0);
        q.extend(data);
        let excess = q.len().saturating_sub(CONSOLE_TAIL_BYTES);
        q.drain(..excess);
    }

    pub fn contents(&self) -> Vec<u8> {
        lock(&self.0).iter().copied().collect()
    }
}

/// The serial port's output sink.
///
/// The UART hands over one byte at a time and flushes after each. stdout gets every byte at
/// once (a prompt must show before its newline); the files (`--console file:`,
/// `--console-log`) get whole lines: a write per byte costs a system call per byte, and where a
/// file is slow to write (a 9p share in the software KVM test host) that made the guest's
/// console output, and with it its boot, about twice as slow. A partial last line reaches the
/// files at [`SharedConsole::sync`] or when the output is dropped.
pub struct ConsoleOutput {
    sink: Option<Box<dyn Write + Send>>,
    /// Whether the UART's flush after each byte reaches the sink (stdout), or the sink is a
    /// line-buffered file.
    flush_sink: bool,
    log: Option<LineWriter<File>>,
    tail: ConsoleTail,
}

impl ConsoleOutput {
    pub fn new(mode: &ConsoleMode, log: Option<&Path>) -> Result<Self, ConsoleError> {
        let sink: Option<Box<dyn Write + Send>> = match mode {
            ConsoleMode::Stdio => Some(Box::new(io::stdout())),
            ConsoleMode::File(p) => Some(Box::new(LineWriter::new(create(p)?))),
            ConsoleMode::Null => None,
        };
        let log = log.map(create).transpose()?.map(LineWriter::new);
        Ok(Self { sink, flush_sink: *mode == ConsoleMode::Stdio, log, tail: ConsoleTail::default() })
    }

    pub fn tail(&self) -> ConsoleTail {
        self.tail.clone()
    }

    /// Write out everything buffered, a partial last line included.
    fn sync(&mut self) {
        if let Some(log) = &mut self.log {
            if let Err(e) = log.flush() {
                log::warn!("console log write failed: {e}");
                self.log = None;
            }
        }
        if let Some(sink) = &mut self.sink {
            sink.flush().ok();
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.push(buf);
        // The log must not miss output because the terminal went away, and the reverse.
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write_all(buf) {
                log::warn!("console log write failed: {e}");
                self.log = None;
            }
        }
        if let Some(sink) = &mut self.sink {
            if let Err(e) = sink.write_all(buf) {
                log::warn!("console output failed, dropping it from now on: {e}");
                self.sink = None;
            }
        }
        Ok(buf.len())
    }

    /// What the UART calls after every byte: only stdout is flushed (see [`ConsoleOutput`]).
    fn flush(&mut self) -> io::Result<()> {
        if let Some(sink) = self.sink.as_mut().filter(|_| self.flush_sink) {
            sink.flush().ok();
        }
        Ok(())
    }
}

/// The console output shared by every boot of the VM (a reset keeps the same console).
#[derive(Clone)]
pub struct SharedConsole(Arc<Mutex<ConsoleOutput>>);

impl SharedConsole {
    pub fn new(out: ConsoleOutput) -> Self {
        Self(Arc::new(Mutex::new(out)))
    }

    pub fn tail(&self) -> ConsoleTail {
        lock(&self.0).tail()
    }

    /// Write out what the console files hold back (a partial last line), as the VM ends.
    pub fn sync(&self) {
        lock(&self.0).sync()
    }
}

impl Write for SharedConsole {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.0).flush()
    }
}

/// Puts the terminal on stdin into raw mode while alive, so that keys reach the guest
/// unmodified; restores it on drop.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on stdin when it is a terminal; `None` otherwise.
    pub fn enable() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and pointer to a termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so that "\n" from the guest still returns the carriage.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: valid descriptor and termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Ctrl-A, the console escape prefix; Ctrl-A then `x` stops crashvmm, Ctrl-A twice sends one.
pub const ESCAPE: u8 = 0x01;

/// Filters console input for the escape sequence.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending_escape: bool,
}

impl EscapeFilter {
    /// Returns the bytes for the guest, and whether the user asked to quit.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => return (out, true),
                    ESCAPE => out.push(ESCAPE),
                    other => {
                        out.push(ESCAPE);
                        out.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_console_modes() {
        assert_eq!("stdio".parse::<ConsoleMode>(), Ok(ConsoleMode::Stdio));
        assert_eq!("null".parse::<ConsoleMode>(), Ok(ConsoleMode::Null));
        assert_eq!("file:/tmp/c".parse::<ConsoleMode>(), Ok(ConsoleMode::File("/tmp/c".into())));
        assert!("file:".parse::<ConsoleMode>().is_err());
        assert!("tty".parse::<ConsoleMode>().is_err());
    }

    #[test]
    fn output_goes_to_file_log_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (c, l) = (dir.path().join("c"), dir.path().join("l"));
        let mut out = ConsoleOutput::new(&ConsoleMode::File(c.clone()), Some(&l)).unwrap();
        out.write_all(b"hello\n").unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), b"hello\n");
        assert_eq!(std::fs::read(&l).unwrap(), b"hello\n");
        assert_eq!(out.tail().contents(), b"hello\n");
        let mut null = ConsoleOutput::new(&ConsoleMode::Null, None).unwrap();
        null.write_all(&vec![b'a'; CONSOLE_TAIL_BYTES + 10]).unwrap();
        assert_eq!(null.tail().contents().len(), CONSOLE_TAIL_BYTES);
        assert!(ConsoleOutput::new(&ConsoleMode::File("/nonexistent/x".into()), None).is_err());
    }

    /// The UART writes and flushes one byte at a time: the files get whole lines, and the
    /// partial last one at `sync` or drop; the tail gets every byte at once.
    #[test]
    fn files_get_whole_lines_and_the_rest_at_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (c, l) = (dir.path().join("c"), dir.path().join("l"));
        let console = SharedConsole::new(ConsoleOutput::new(&ConsoleMode::File(c.clone()), Some(&l)).unwrap());
        let mut uart = console.clone();
        let put = |uart: &mut SharedConsole, bytes: &[u8]| {
            for &b in bytes {
                uart.write_all(&[b]).unwrap();
                uart.flush().unwrap();
            }
        };
        put(&mut uart, b"one\r\ntw");
        for f in [&c, &l] {
            assert_eq!(std::fs::read(f).unwrap(), b"one\r\n");
        }
        assert_eq!(console.tail().contents(), b"one\r\ntw");
        put(&mut uart, b"o\r\nlogin: ");
        console.sync();
        for f in [&c, &l] {
            assert_eq!(std::fs::read(f).unwrap(), b"one\r\ntwo\r\nlogin: ");
        }
        put(&mut uart, b"root");
        drop((console, uart));
        for f in [&c, &l] {
            assert_eq!(std::fs::read(f).unwrap(), b"one\r\ntwo\r\nlogin: root");
        }
    }

    #[test]
    fn escape_sequence() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(f.feed(&[ESCAPE, ESCAPE, b'a']), (vec![ESCAPE, b'a'], false));
        assert_eq!(f.feed(&[b'q', ESCAPE]), (b"q".to_vec(), false));
        assert_eq!(f.feed(b"x"), (vec![], true));
        assert_eq!(f.feed(&[ESCAPE, b'c']), (vec![ESCAPE, b'c'], false));
    }
}
