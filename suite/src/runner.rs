//! Runs crashvmm once, the same way for a suite's case and for the integration scenarios:
//! directly where `/dev/kvm` is hardware virtualization, elsewhere inside the *software KVM
//! test host* (`qemu-system-x86_64 -accel tcg -cpu max` booting a Debian kernel with
//! `kvm_amd`, which mounts a 9p share holding crashvmm, the inputs and a `run.sh`, runs it and
//! hands the outputs back; see guest-images/README.md).
//!
//! A run is a shell script, `run.sh DIR`, the same in both places: crashvmm with its arguments,
//! and an optional driver that waits for a console line and then talks to the control socket.
//! It leaves in the output directory: `events.jsonl`, `console.log`, `crashvmm.log` (crashvmm's
//! stderr), `exit-code`, `crashes/`, the driver's `ctl-*` files, whatever else the setup and
//! the driver write there and, in the test host, `testhost.log` (the test host's own console).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use wait_timeout::ChildExt;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{what} not found at {}: {hint}", .path.display())]
    Missing { what: &'static str, path: PathBuf, hint: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Where crashvmm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Direct,
    TestHost,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::TestHost => "testhost",
        }
    }

    /// Direct when `/dev/kvm` is usable and backed by hardware virtualization (kvm_intel or
    /// kvm_amd loaded), the test host otherwise. Returns the mode and why.
    pub fn detect() -> (Mode, String) {
        let hw = ["kvm_intel", "kvm_amd"].into_iter().find(|m| Path::new("/sys/module").join(m).exists());
        let usable = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        match (hw, usable) {
            (Some(m), true) => (Mode::Direct, format!("/dev/kvm is hardware virtualization ({m})")),
            (Some(m), false) => (Mode::TestHost, format!("{m} is loaded but /dev/kvm cannot be opened")),
            (None, _) => (Mode::TestHost, "/dev/kvm is not hardware virtualization (no kvm_intel or kvm_amd)".into()),
        }
    }
}

/// The software KVM test host's kernel and initramfs (`make images` builds them into
/// `build/images/host`).
#[derive(Debug, Clone)]
pub struct TestHost {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl TestHost {
    /// The test host image in `dir` (`vmlinuz`, `initramfs.cpio.gz`), checked.
    pub fn in_dir(dir: &Path) -> Result<TestHost, RunError> {
        let hint = || "build it with `make images` (build/images/host)".to_string();
        let kernel = dir.join("vmlinuz");
        let initrd = dir.join("initramfs.cpio.gz");
        for (what, p) in [("test host kernel", &kernel), ("test host initramfs", &initrd)] {
            if !p.is_file() {
                return Err(RunError::Missing { what, path: p.clone(), hint: hint() });
            }
        }
        Ok(TestHost { kernel, initrd })
    }
}

/// One crashvmm run.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Named in the test host's progress lines.
    pub label: String,
    /// `crashvmm` arguments. Paths are relative to the run's directory, where the inputs are;
    /// `{out}` stands for the output directory.
    pub args: Vec<String>,
    /// Files the run needs, by the name the arguments use (`vmlinuz`, a disk image).
    pub inputs: Vec<(String, PathBuf)>,
    /// Shell commands run beside crashvmm once the console shows the first string: `ctl` is
    /// `crashvmm ctl --api-socket ...` (crashvmm then serves a control socket), `$OUT` the
    /// output directory.
    pub driver: Option<(String, String)>,
    /// Put the crash directory on a tmpfs of this size (to test a full disk); needs root.
    pub crash_dir_tmpfs: Option<String>,
    /// The guest's memory, for the test host's.
    pub guest_mib: u64,
    /// Shell commands run in the run's directory before crashvmm starts (`$OUT` the output
    /// directory, their output in `setup.log`); a failure ends the run with exit status 125.
    /// What they leave running in the background is killed once crashvmm and the driver end.
    pub setup: Option<String>,
    /// The run has a network namespace of its own: the test host is one; a direct run gets one
    /// from `unshare --net` (needs root), so that its TAP and addresses touch no real network.
    pub own_network: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Run {
    pub mode: Mode,
    /// crashvmm's exit code, when it ran to its end.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The test host ended without crashvmm's exit code: its own reset or failure; its rc.
    pub test_host_failed: Option<String>,
    pub elapsed: Duration,
}

/// The outputs a run leaves (and that are cleared before it starts).
pub const OUTPUTS: &[&str] =
    &["events.jsonl", "console.log", "crashvmm.log", "exit-code", "testhost.log", "mode", "setup.log"];

/// Quote one word for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl RunSpec {
    /// A boot of `kernel` and `initrd` (inputs `vmlinuz` and `initramfs.cpio.gz`) with this
    /// command line, memory (`768M`) and vCPUs: the console on stdout and in `console.log`,
    /// the event log and the crash directory in the output directory. Callers add options.
    pub fn boot(
        label: String,
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: &str,
        memory_mib: u64,
        vcpus: u32,
    ) -> RunSpec {
        let args = [
            "run",
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initramfs.cpio.gz",
            "--cmdline",
            cmdline,
            "--memory",
            &format!("{memory_mib}M"),
            "--vcpus",
            &vcpus.to_string(),
            "--console",
            "stdio",
            "--console-log",
            "{out}/console.log",
            "--events",
            "{out}/events.jsonl",
            "--crash-dir",
            "{crashes}",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        RunSpec {
            label,
            args,
            inputs: vec![("vmlinuz".into(), kernel), ("initramfs.cpio.gz".into(), initrd)],
            guest_mib: memory_mib,
            ..Default::default()
        }
    }

    /// Where crashvmm writes crash directories, inside the output directory.
    fn crash_dir_name(&self) -> &'static str {
        if self.crash_dir_tmpfs.is_some() {
            "crashes-tmpfs"
        } else {
            "crashes"
        }
    }

    /// The arguments with `{out}` and `{crashes}` filled in.
    pub fn resolved_args(&self, out: &str) -> Vec<String> {
        let crashes = format!("{out}/{}", self.crash_dir_name());
        self.args.iter().map(|a| a.replace("{crashes}", &crashes).replace("{out}", out)).collect()
    }

    /// The shell script that runs crashvmm from directory `$1`, with paths as seen there,
    /// leaving `crashvmm.log`, `exit-code` and `crashes/` in `out`.
    pub fn script(&self, crashvmm: &str, out: &str, api: &str) -> String {
        let mut args: Vec<String> = self.resolved_args(out).iter().map(|a| sh_quote(a)).collect();
        if self.driver.is_some() {
            args.extend(["--api-socket".to_string(), sh_quote(api)]);
        }
        let label = self.label.replace(['\n', '"', '$', '`', '\\'], "_");
        let mut sh = format!(
            "# Written by crashvmm's runner; run as `sh run.sh DIR`.\n\
             cd \"$1\" || exit 125\n\
             echo \"TESTHOST: {label}: starting crashvmm\"\n"
        );
        if let Some(size) = &self.crash_dir_tmpfs {
            let d = format!("{out}/{}", self.crash_dir_name());
            sh += &format!(
                "mkdir -p {d} && mount -t tmpfs -o size={size} crashvmm-crashes {d} || \
                 {{ echo \"TESTHOST: cannot mount a {size} tmpfs on {d}\"; exit 125; }}\n"
            );
        }
        if let Some(setup) = &self.setup {
            sh += &format!(
                "echo \"TESTHOST: {label}: setting up\"\n\
                 OUT={out}\n\
                 {{\n{setup}\n}} >{out}/setup.log 2>&1 || \
                 {{ echo \"TESTHOST: {label}: setup failed: $(tail -n 3 {out}/setup.log | tr '\\n' ' ')\"; exit 125; }}\n"
            );
        }
        // RUST_LOG reaches crashvmm, in the test host too.
        if let Ok(level) = std::env::var("RUST_LOG") {
            sh += &format!("export RUST_LOG={}\n", sh_quote(&level));
        }
        let q = sh_quote(crashvmm);
        sh += &format!("{q} {args} </dev/null 2>{out}/crashvmm.log &\npid=$!\n", args = args.join(" "));
        if let Some((marker, commands)) = &self.driver {
            // Wait for the guest's marker (while crashvmm lives), then drive the control socket.
            sh += &format!(
                "(\n\
                 ctl() {{ {q} ctl --api-socket {api} \"$@\"; }}\n\
                 OUT={out}\n\
                 exec 2>{out}/ctl-errors.log\n\
                 i=0\n\
                 until grep -qF {m} {out}/console.log 2>/dev/null; do\n\
                 \tkill -0 $pid 2>/dev/null || exit 0; i=$((i + 1)); [ $i -lt 600 ] || exit 0; sleep 1\n\
                 done\n\
                 echo \"TESTHOST: {label}: driving the control socket\"\n\
                 {commands}\n\
                 ) &\n\
                 driver=$!\n",
                api = sh_quote(api),
                m = sh_quote(marker),
            );
        }
        sh += "wait $pid\nrc=$?\n";
        if self.driver.is_some() {
            sh += "wait $driver\n";
        }
        if self.setup.is_some() {
            // What the setup left running (peers that may still wait for the guest). `jobs`
            // into a file: in a command substitution dash has no jobs.
            sh += &format!("jobs -p >{out}/.jobs\nkill $(cat {out}/.jobs) 2>/dev/null\nrm -f {out}/.jobs\nwait\n");
        }
        sh += &format!("echo \"$rc\" >{out}/exit-code\n");
        if self.crash_dir_tmpfs.is_some() {
            let d = format!("{out}/{}", self.crash_dir_name());
            sh += &format!("cp -a {d} {out}/crashes; umount {d}; rmdir {d}\n");
        }
        sh += &format!("echo \"TESTHOST: {label}: crashvmm exited with $rc\"\n");
        sh
    }
}

/// Runs `spec` with the static crashvmm at `crashvmm`, leaving its outputs in `out` (created;
/// earlier outputs are replaced), killed past `limit`. `show` copies the console (and the
/// test host's) to stdout.
pub fn execute(
    spec: &RunSpec,
    mode: Mode,
    crashvmm: &Path,
    test_host: Option<&TestHost>,
    out: &Path,
    limit: Duration,
    show: bool,
) -> Result<Run, RunError> {
    if !crashvmm.is_file() {
        return Err(RunError::Missing {
            what: "crashvmm binary",
            path: crashvmm.to_owned(),
            hint: "run `make build`".into(),
        });
    }
    for (_, path) in &spec.inputs {
        if !path.is_file() {
            return Err(RunError::Missing { what: "input", path: path.clone(), hint: "build it first".into() });
        }
    }
    fs::create_dir_all(out).map_err(io_err(format!("creating {}", out.display())))?;
    let out = out.canonicalize().map_err(io_err(format!("resolving {}", out.display())))?;
    for f in OUTPUTS {
        let _ = fs::remove_file(out.join(f));
    }
    fs::write(out.join("mode"), format!("{}\n", mode.as_str())).map_err(io_err("writing mode"))?;
    let start = Instant::now();
    let (exit_code, timed_out, test_host_failed) = match mode {
        Mode::Direct => run_direct(spec, crashvmm, &out, limit, show)?,
        Mode::TestHost => {
            let th = test_host.ok_or_else(|| RunError::Missing {
                what: "software KVM test host",
                path: PathBuf::from("build/images/host"),
                hint: "this /dev/kvm cannot run Linux directly: give the test host's image (`make images`)".into(),
            })?;
            run_testhost(spec, crashvmm, th, &out, limit, show)?
        }
    };
    Ok(Run { mode, exit_code, timed_out, test_host_failed, elapsed: start.elapsed() })
}

/// Copy a child's output to `log`, and to our stdout when `show`.
fn tee(mut from: impl Read + Send + 'static, log: File, show: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut log = log;
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = log.write_all(&buf[..n]);
                    if show {
                        let mut out = io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
            }
        }
    })
}

/// Wait for `child` up to `limit`; kill it past that. Returns the exit status, or `None`
/// when it had to be killed.
fn wait_or_kill(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>, RunError> {
    match child.wait_timeout(limit).map_err(io_err("waiting for the run"))? {
        Some(status) => Ok(Some(status)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Ok(None)
        }
    }
}

pub fn exit_code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

type Ended = (Option<i32>, bool, Option<String>);

fn run_direct(spec: &RunSpec, crashvmm: &Path, out: &Path, limit: Duration, show: bool) -> Result<Ended, RunError> {
    // The inputs are linked into the output directory, where the script runs.
    for (name, path) in &spec.inputs {
        let link = out.join(name);
        let _ = fs::remove_file(&link);
        let target = path.canonicalize().map_err(io_err(format!("resolving {}", path.display())))?;
        std::os::unix::fs::symlink(&target, &link).map_err(io_err(format!("linking {}", link.display())))?;
    }
    let script = out.join("run.sh");
    fs::write(&script, spec.script(&crashvmm.display().to_string(), ".", "./api.sock"))
        .map_err(io_err("writing run.sh"))?;
    // A run with its own tmpfs needs a private mount namespace; one with its own network, a
    // network namespace.
    let mut namespaces = Vec::new();
    if spec.crash_dir_tmpfs.is_some() {
        namespaces.extend(["--mount", "--propagation", "private"]);
    }
    if spec.own_network {
        namespaces.push("--net");
    }
    let mut cmd = if namespaces.is_empty() {
        Command::new("sh")
    } else {
        let mut c = Command::new("unshare");
        c.args(namespaces).arg("sh");
        c
    };
    let mut child = cmd
        .arg(&script)
        .arg(out)
        .stdin(Stdio::null())
        .stdout(if show { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .map_err(io_err("starting the run script"))?;
    let status = wait_or_kill(&mut child, limit)?;
    for (name, _) in &spec.inputs {
        let _ = fs::remove_file(out.join(name));
    }
    let code = fs::read_to_string(out.join("exit-code")).ok().and_then(|c| c.trim().parse().ok());
    Ok((code.or(status.map(exit_code_of)), status.is_none(), None))
}

/// Boots the software KVM test host (`host_mib` MiB of RAM) with `share` as its 9p share: its
/// init runs `sh /share/run.sh /share` and leaves the exit status in `share/testhost-rc`. The
/// test host's console goes to `log` (and to stdout when `show`). Returns `None` when it ran
/// past `limit` and was killed.
pub fn boot_testhost(
    th: &TestHost,
    share: &Path,
    host_mib: u64,
    log: &Path,
    limit: Duration,
    show: bool,
) -> Result<Option<ExitStatus>, RunError> {
    let log = File::create(log).map_err(io_err(format!("creating {}", log.display())))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "2"])
        .args(["-m", &format!("{host_mib}M")])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&th.kernel)
        .arg("-initrd")
        .arg(&th.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=share,security_model=none,id=share", share.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("starting qemu-system-x86_64 (install qemu-system-x86, or run `make deps`)"))?;
    let t_out = tee(child.stdout.take().expect("piped stdout"), log.try_clone().map_err(io_err("testhost.log"))?, show);
    let t_err = tee(child.stderr.take().expect("piped stderr"), log, show);
    let status = wait_or_kill(&mut child, limit)?;
    let _ = t_out.join();
    let _ = t_err.join();
    Ok(status)
}

/// A file into the share: a hard link where the file system allows, else a copy.
fn place(from: &Path, to: &Path) -> io::Result<()> {
    let _ = fs::remove_file(to);
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(|_| ()))
}

fn run_testhost(
    spec: &RunSpec,
    crashvmm: &Path,
    th: &TestHost,
    out: &Path,
    limit: Duration,
    show: bool,
) -> Result<Ended, RunError> {
    let share = tempfile::Builder::new()
        .prefix("crashvmm-testhost-")
        .tempdir()
        .map_err(io_err("creating the test host share"))?;
    let sp = share.path();
    place(crashvmm, &sp.join("crashvmm")).map_err(io_err(format!("copying {} to the share", crashvmm.display())))?;
    for (name, path) in &spec.inputs {
        place(path, &sp.join(name)).map_err(io_err(format!("copying {} to the share", path.display())))?;
    }
    fs::create_dir(sp.join("out")).map_err(io_err("creating the share's out/"))?;
    // Unix sockets do not live on the 9p share: the control socket goes to the test host's /tmp.
    fs::write(sp.join("run.sh"), spec.script("./crashvmm", "out", "/tmp/crashvmm-api.sock"))
        .map_err(io_err("writing run.sh"))?;

    // The guest's memory plus room for the test host kernel and its page cache.
    let host_mib = (spec.guest_mib + 1024).max(2048);
    let status = boot_testhost(th, sp, host_mib, &out.join("testhost.log"), limit, show)?;

    let names = fs::read_dir(sp.join("out"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    for f in names.iter().filter(|f| sp.join("out").join(f).is_file()) {
        fs::copy(sp.join("out").join(f), out.join(f)).map_err(io_err(format!("copying {f} back")))?;
    }
    copy_sparse(&sp.join("out/crashes"), &out.join("crashes"))?;
    if status.is_none() {
        return Ok((None, true, None));
    }
    let code = fs::read_to_string(out.join("exit-code")).ok().and_then(|c| c.trim().parse().ok());
    let failed = code.is_none().then(|| {
        let rc = fs::read_to_string(sp.join("testhost-rc")).unwrap_or_default().trim().to_string();
        if rc.is_empty() {
            "missing".to_string()
        } else {
            rc
        }
    });
    Ok((code, false, failed))
}

/// Copy a directory tree keeping holes (vmcores are sparse), replacing `to`.
fn copy_sparse(from: &Path, to: &Path) -> Result<(), RunError> {
    if !from.exists() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(to);
    let status =
        Command::new("cp").args(["-a", "--sparse=always"]).arg(from).arg(to).status().map_err(io_err("running cp"))?;
    if status.success() {
        Ok(())
    } else {
        Err(RunError::Io {
            what: format!("copying {} back", from.display()),
            source: io::Error::other(format!("cp exited with {status}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_script_runs_crashvmm_with_its_outputs_where_the_run_keeps_them() {
        let spec = RunSpec {
            label: "x".into(),
            args: vec![
                "run".into(),
                "--events".into(),
                "{out}/events.jsonl".into(),
                "--crash-dir".into(),
                "{crashes}".into(),
            ],
            driver: Some(("ready".into(), "ctl inject-nmi >$OUT/ctl-nmi.json".into())),
            ..Default::default()
        };
        let sh = spec.script("./crashvmm", "out", "/tmp/api.sock");
        assert!(sh.contains("'./crashvmm' 'run' '--events' 'out/events.jsonl' '--crash-dir' 'out/crashes' --api-socket '/tmp/api.sock'"), "{sh}");
        assert!(sh.contains("until grep -qF 'ready' out/console.log"), "{sh}");
        assert!(sh.contains("echo \"$rc\" >out/exit-code"), "{sh}");
        let tmpfs = RunSpec { crash_dir_tmpfs: Some("4m".into()), ..spec };
        assert_eq!(tmpfs.resolved_args(".")[4], "./crashes-tmpfs");
    }

    #[test]
    fn a_setup_runs_before_crashvmm_and_what_it_leaves_running_is_killed_after() {
        let spec = RunSpec { label: "x".into(), setup: Some("peer &".into()), ..Default::default() };
        let sh = spec.script("./crashvmm", "out", "/tmp/api.sock");
        let (setup, crashvmm, kill) =
            (sh.find("peer &").unwrap(), sh.find("'./crashvmm'").unwrap(), sh.find("kill $(cat out/.jobs)").unwrap());
        assert!(setup < crashvmm && crashvmm < kill, "{sh}");
        assert!(sh.contains(">out/setup.log 2>&1 ||"), "{sh}");
        assert!(sh.contains("exit 125"), "{sh}");
    }

    /// The script itself: a failed setup ends it with 125 before crashvmm starts; a peer the
    /// setup left waiting does not keep it from ending.
    #[test]
    fn the_script_ends_on_a_failed_setup_and_despite_a_waiting_peer() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let run = |setup: &str| {
            let spec = RunSpec { label: "x".into(), setup: Some(setup.into()), ..Default::default() };
            fs::write(dir.path().join("run.sh"), spec.script("true", "out", "/tmp/api.sock")).unwrap();
            let started = Instant::now();
            let status = Command::new("sh").arg(dir.path().join("run.sh")).arg(dir.path()).output().unwrap();
            (status, started.elapsed())
        };
        let (failed, _) = run("echo no TAP; false");
        assert_eq!(failed.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&failed.stdout).contains("setup failed: no TAP"), "{failed:?}");
        let (ok, took) = run("sleep 600 &");
        assert_eq!(ok.status.code(), Some(0), "{ok:?}");
        assert_eq!(fs::read_to_string(out.join("exit-code")).unwrap().trim(), "0");
        assert!(took < Duration::from_secs(60), "the waiting peer was killed: {took:?}");
    }
}
