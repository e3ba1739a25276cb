//! A minimal QMP client (QEMU's JSON monitor protocol) over a Unix socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Every asynchronous event read so far, in order.
    pub events: Vec<Value>,
}

/// An event's QMP timestamp as seconds since the epoch.
pub fn event_time(ev: &Value) -> Option<f64> {
    let t = ev.get("timestamp")?;
    Some(t.get("seconds")?.as_f64()? + t.get("microseconds")?.as_f64()? / 1e6)
}

impl Qmp {
    /// Connects (retrying until `limit` while QEMU creates the socket), reads the greeting and
    /// enters command mode.
    pub fn connect(path: &Path, limit: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let writer = stream.try_clone()?;
        let mut qmp = Self { reader: BufReader::new(stream), writer, events: Vec::new() };
        let greeting = qmp.read(limit)?.ok_or_else(|| io::Error::other("no QMP greeting"))?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::other(format!("unexpected QMP greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}), limit)?;
        Ok(qmp)
    }

    /// The next message, or `None` after `limit` without one.
    fn read(&mut self, limit: Duration) -> io::Result<Option<Value>> {
        self.reader.get_ref().set_read_timeout(Some(limit.max(Duration::from_millis(1))))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QMP connection closed")),
            Ok(_) => serde_json::from_str(&line).map(Some).map_err(io::Error::other),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs a command and returns its `return` value (events read meanwhile are kept).
    pub fn execute(&mut self, command: &str, arguments: Value, limit: Duration) -> io::Result<Value> {
        let msg = json!({"execute": command, "arguments": arguments});
        self.writer.write_all(format!("{msg}\n").as_bytes())?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, format!("QMP {command}: no answer")))?;
            let Some(v) = self.read(left)? else { continue };
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(io::Error::other(format!("QMP {command}: {e}")));
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Waits up to `limit` for the event `name` (or finds it among those already read).
    pub fn wait_event(&mut self, name: &str, limit: Duration) -> io::Result<Option<Value>> {
        if let Some(e) = self.events.iter().find(|e| e["event"] == name) {
            return Ok(Some(e.clone()));
        }
        let deadline = Instant::now() + limit;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return Ok(None) };
            let Some(v) = self.read(left)? else { return Ok(None) };
            if v.get("event").is_some() {
                self.events.push(v.clone());
                if v["event"] == name {
                    return Ok(Some(v));
                }
            }
        }
    }

    /// Reads events until the connection closes or `limit` passes.
    pub fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.read(left) {
                Ok(Some(v)) if v.get("event").is_some() => self.events.push(v),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_seconds() {
        let ev = json!({"timestamp": {"seconds": 100, "microseconds": 250000}, "event": "STOP"});
        assert_eq!(event_time(&ev), Some(100.25));
        assert_eq!(event_time(&json!({})), None);
    }

    #[test]
    fn talks_to_a_fake_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"));
            w.write_all(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 0}, \"event\": \"GUEST_PANICKED\"}\n")
                .unwrap();
            w.write_all(b"{\"return\": {\"status\": \"paused\"}}\n").unwrap();
        });
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let r = q.execute("query-status", json!({}), Duration::from_secs(5)).unwrap();
        assert_eq!(r["status"], "paused");
        assert!(q.wait_event("GUEST_PANICKED", Duration::from_millis(10)).unwrap().is_some());
        server.join().unwrap();
    }
}
