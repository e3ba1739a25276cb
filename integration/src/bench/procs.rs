//! Process and file helpers for the benchmarks: timed spawning, a console reader that
//! timestamps what a VMM prints, `/proc/PID/smaps`, file sizes, sequential copies.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wait_timeout::ChildExt;

/// Seconds since the Unix epoch (the clock of event logs, QMP and QEMU's trace).
pub fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

pub fn now_epoch() -> f64 {
    epoch(SystemTime::now())
}

/// An event log `ts` (RFC 3339, UTC) as seconds since the epoch.
pub fn parse_ts(ts: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9)
}

/// One line a VMM printed on its console, with when its first byte arrived.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    pub at: Instant,
    pub epoch: f64,
    pub text: String,
}

/// Reads a child's stdout (the guest's serial console) on a thread, recording when the first
/// byte came and every line with the time its first byte came.
pub struct Console {
    first_byte: Arc<Mutex<Option<Instant>>>,
    lines: Arc<Mutex<Vec<ConsoleLine>>>,
    new_line: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    /// Starts reading `out`; every byte is also appended to `copy` when given.
    pub fn start(mut out: ChildStdout, mut copy: Option<File>) -> Self {
        let first_byte = Arc::new(Mutex::new(None));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (fb, ls) = (first_byte.clone(), lines.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut partial: Vec<u8> = Vec::new();
            let mut partial_at: Option<(Instant, f64)> = None;
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (at, ep) = (Instant::now(), now_epoch());
                fb.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(at);
                if let Some(f) = copy.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                for &b in &buf[..n] {
                    if partial_at.is_none() {
                        partial_at = Some((at, ep));
                    }
                    if b == b'\n' {
                        let (at, epoch) = partial_at.take().unwrap_or((at, ep));
                        let text = String::from_utf8_lossy(&partial).trim_end_matches('\r').to_string();
                        ls.lock().unwrap_or_else(|e| e.into_inner()).push(ConsoleLine { at, epoch, text });
                        partial.clear();
                        let _ = tx.send(());
                    } else {
                        partial.push(b);
                    }
                }
            }
            if !partial.is_empty() {
                let (at, epoch) = partial_at.unwrap_or((Instant::now(), now_epoch()));
                let text = String::from_utf8_lossy(&partial).to_string();
                ls.lock().unwrap_or_else(|e| e.into_inner()).push(ConsoleLine { at, epoch, text });
            }
            let _ = tx.send(());
        });
        Self { first_byte, lines, new_line: rx, thread: Some(thread) }
    }

    pub fn first_byte(&self) -> Option<Instant> {
        *self.first_byte.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lines(&self) -> Vec<ConsoleLine> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first line containing `needle`, waiting up to `limit` for it.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Option<ConsoleLine> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.text.contains(needle)) {
                return Some(l);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.new_line.recv_timeout(left) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                // The reader ended (the VMM closed its stdout): one last look.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return self.lines().into_iter().find(|l| l.text.contains(needle));
                }
            }
        }
    }

    /// Waits until the first byte arrives (up to `limit`).
    pub fn wait_first_byte(&self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.first_byte() {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Waits for the reader thread (the child's stdout closed).
    pub fn finish(mut self) -> Vec<ConsoleLine> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.lines()
    }
}

/// A child that is killed (and reaped) when dropped.
pub struct Guarded(pub Option<Child>);

impl Guarded {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until dropped")
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Waits up to `limit` for the child to exit by itself; `None` if it had to be killed.
    pub fn wait_or_kill(&mut self, limit: Duration) -> Option<i32> {
        let child = self.0.as_mut()?;
        match child.wait_timeout(limit) {
            Ok(Some(status)) => {
                self.0 = None;
                Some(exit_code(status))
            }
            _ => {
                self.kill();
                None
            }
        }
    }

    /// SIGTERM, a moment to exit, then SIGKILL; reaped either way.
    pub fn terminate(&mut self) {
        if let Some(child) = self.0.as_mut() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if !matches!(child.wait_timeout(Duration::from_secs(5)), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.0 = None;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Spawns `cmd` with stdin null and stdout piped into a [`Console`], stderr to `stderr_log`.
/// Returns the child, its console and the instant just before the spawn.
pub fn spawn_with_console(cmd: &mut Command, stderr_log: &Path) -> io::Result<(Guarded, Console, Instant, f64)> {
    let err = File::create(stderr_log)?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
    let (t0, e0) = (Instant::now(), now_epoch());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    Ok((Guarded(Some(child)), Console::start(out, None), t0, e0))
}

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    pub range: String,
    pub perms: String,
    pub name: String,
    pub size_kib: u64,
    pub rss_kib: u64,
}

impl Mapping {
    /// Anonymous memory: no file (heap, stacks, plain mmap).
    pub fn anonymous(&self) -> bool {
        self.name.is_empty() || self.name.starts_with("[anon") || self.name == "[heap]"
    }
}

/// Parses `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let perms = words.next().unwrap_or("").to_string();
            let rest: Vec<&str> = words.collect();
            // offset dev inode [name...]
            let name = rest.get(3..).map(|n| n.join(" ")).unwrap_or_default();
            maps.push(Mapping { range: first.to_string(), perms, name, size_kib: 0, rss_kib: 0 });
        } else if let Some(m) = maps.last_mut() {
            let value = || words.clone().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            match first {
                "Size:" => m.size_kib = value(),
                "Rss:" => m.rss_kib = value(),
                _ => {}
            }
        }
    }
    maps
}

pub fn smaps(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse_smaps(&fs::read_to_string(format!("/proc/{pid}/smaps"))?))
}

/// `Rss:` of `/proc/PID/smaps_rollup`, in KiB.
pub fn rollup_rss_kib(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Rss:").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .ok_or_else(|| io::Error::other("no Rss: line in smaps_rollup"))
}

/// A file's apparent size and the space it takes on disk (`st_blocks * 512`).
pub fn file_sizes(path: &Path) -> io::Result<(u64, u64)> {
    let m = fs::metadata(path)?;
    Ok((m.len(), m.blocks() * 512))
}

/// Flushes `path` to disk; how long that took.
pub fn fsync_file(path: &Path) -> io::Result<Duration> {
    let t = Instant::now();
    File::open(path)?.sync_all()?;
    Ok(t.elapsed())
}

/// sync(2): so that what earlier steps left dirty is not written back during a measurement.
pub fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Free space for unprivileged writers on the file system holding `path`, in bytes.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct we pass; `c` is a valid C string.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes `len` bytes of incompressible pseudo-random data (xorshift64*, fixed seed) to `path`.
pub fn write_random(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let mut f = File::create(path)?;
    let mut state = seed | 1;
    let mut buf = vec![0u8; 16 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// A plain sequential copy: `dd if=SRC of=DST bs=16M conv=fsync`; how long it took.
pub fn dd_copy(src: &Path, dst: &Path) -> io::Result<Duration> {
    let t = Instant::now();
    let status = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args(["bs=16M", "conv=fsync", "status=none"])
        .status()?;
    let took = t.elapsed();
    if !status.success() {
        return Err(io::Error::other(format!("dd exited with {status}")));
    }
    Ok(took)
}

/// Reads a whole file once (to have it in the page cache before a measurement).
pub fn warm(path: &Path) -> io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 16 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_are_parsed() {
        let text = "\
55d4c0a00000-55d4c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  12 kB
7f0000000000-7f0040000000 rw-p 00000000 00:00 0 
Size:            1048576 kB
Rss:              102400 kB
7f1000000000-7f1000001000 r-xp 00000000 fe:01 123                        /usr/bin/qemu system
Size:                  4 kB
Rss:                   4 kB
";
        let m = parse_smaps(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name, "[heap]");
        assert!(m[0].anonymous());
        assert_eq!((m[1].size_kib, m[1].rss_kib), (1_048_576, 102_400));
        assert!(m[1].anonymous());
        assert_eq!(m[2].name, "/usr/bin/qemu system");
        assert!(!m[2].anonymous());
    }

    #[test]
    fn event_timestamps_parse() {
        let t = parse_ts("2026-11-25T15:14:38.765898Z").unwrap();
        let u = parse_ts("2026-11-25T15:14:39.000000Z").unwrap();
        assert!((u - t - 0.234102).abs() < 1e-6, "{}", u - t);
        assert!(parse_ts("nope").is_none());
    }

    #[test]
    fn random_data_does_not_compress_to_zero_pages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r");
        write_random(&p, 3 * 4096 + 5, 7).unwrap();
        let data = fs::read(&p).unwrap();
        assert_eq!(data.len(), 3 * 4096 + 5);
        assert!(data.chunks(4096).all(|c| c.iter().any(|&b| b != 0)));
    }
}
