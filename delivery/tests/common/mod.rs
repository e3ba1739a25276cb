//! The test S3 server (moto's standalone server, its own process: tests/s3-server.sh) and
//! crash-directory fixtures.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

pub const BUCKET: &str = "crashes";

pub struct S3Server {
    pub port: u16,
    child: Option<Child>,
    /// The process's AWS settings name this server: one server per test process at a time.
    _serial: MutexGuard<'static, ()>,
}

/// Held by the live [`S3Server`]: the AWS settings are the process's environment, so two tests
/// of one binary with a server each would otherwise send requests to each other's.
static ONE_SERVER: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    // From the workspace root, so that other crates' tests can use this helper too.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../delivery/tests/s3-server.sh")
}

impl S3Server {
    /// Start the server on a free loopback port, wait until it answers, create the bucket, and
    /// point this process's AWS settings (AWS_ENDPOINT_URL, keys, region) at it.
    pub fn start() -> R<Self> {
        // A test that failed while holding it poisoned it; the next one may still run.
        let serial = ONE_SERVER.lock().unwrap_or_else(|e| e.into_inner());
        let st = Command::new("bash").arg(script()).arg("install").status()?;
        if !st.success() {
            return Err(format!("s3-server.sh install: {st}").into());
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut s = Self { port, child: None, _serial: serial };
        s.restart()?;
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        Ok(s)
    }

    /// (Re)start the server on the same port (moto keeps its state in memory: it comes back
    /// empty) and create the bucket.
    pub fn restart(&mut self) -> R {
        let t0 = Instant::now();
        let child = Command::new("bash")
            .arg(script())
            .arg("run")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        loop {
            if let Ok((status, _)) = http(self.port, "GET", "/", b"") {
                if status < 500 {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err("the S3 server did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, body) = http(self.port, "PUT", &format!("/{BUCKET}"), b"")?;
        if status != 200 {
            return Err(format!("create bucket: {status} {body}").into());
        }
        eprintln!("s3 server on 127.0.0.1:{} up in {:?}", self.port, t0.elapsed());
        Ok(())
    }

    /// Kill the server at once (SIGKILL): the way a crashed or unplugged server goes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Multipart uploads the bucket has open (`ListMultipartUploads`).
    pub fn open_uploads(&self) -> R<usize> {
        let (_, body) = http(self.port, "GET", &format!("/{BUCKET}?uploads"), b"")?;
        Ok(body.matches("<UploadId>").count())
    }

    /// Every key in the bucket (`ListObjectsV2`, one page is enough here).
    pub fn keys(&self) -> R<Vec<String>> {
        let (_, body) = http(self.port, "GET", &format!("/{BUCKET}?list-type=2&max-keys=1000"), b"")?;
        Ok(body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One plain HTTP/1.0 request (moto takes unsigned requests); status and body.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> R<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n", body.len())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// A finished crash directory `<base>/<name>` with a vmcore of `vmcore_bytes` bytes of
/// pseudo-random data seeded by `seed`.
pub fn crash_dir(
    base: &Path,
    name: &str,
    sig: &str,
    title: &str,
    release: &str,
    vmcore_bytes: usize,
    seed: u64,
) -> R<PathBuf> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir)?;
    let report = serde_json::json!({
        "crash_number": 1,
        "detected_at": format!("2026-11-25T13:{:02}:05.000000Z", seed % 60),
        "guest": {"kernel": "/k", "kernel_release": release},
        "signature": {"id": sig, "title": title, "frames": [], "kind": "bug"},
        "vmcore": {"path": "vmcore", "bytes": vmcore_bytes},
    });
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(dir.join("events.jsonl"), "{\"event\":\"vm_started\"}\n")?;
    std::fs::write(dir.join("console.log"), format!("Linux version {release} (test)\nKernel panic - {title}\n"))?;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(vmcore_bytes + 8);
    while data.len() < vmcore_bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(vmcore_bytes);
    std::fs::write(dir.join("vmcore"), data)?;
    Ok(dir)
}

pub fn sha256(path: &Path) -> R<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}
