//! Part 8: a fleet's store. 10,000 small synthetic crash directories from 50 hosts under 100
//! signatures in a real S3-protocol server (PyPI moto's standalone server on the loopback, as
//! the delivery tests use: `delivery/tests/s3-server.sh`), laid out as crashvmm's uploader lays
//! them out, with the store's index (`delivery::index`). One signature is a crash loop across
//! the fleet: 5,000 directories, every one with a vmcore (as before a `--vmcores-per-signature`
//! limit); the other 99 share the other 5,000, the first 3 of each with a vmcore.
//!
//! Measured: the per-signature vmcore count a new crash asks for (`delivery::count_vmcores`,
//! what crashvmm's store-query thread runs) for the crash loop's signature and for a typical
//! one, and `crashvmm crashes URL` (the real binary, its text output). The reference for both:
//! what a view without the index must do at least, one listing of every object under the
//! prefix, and what `crashvmm crashes` did before the index, that listing plus a GET of every
//! report.json (16 at a time).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use delivery::{index, Target};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::progress;
use super::stats::{max, median, min};

/// Repetitions of each count and of `crashvmm crashes`.
const REPS: usize = 7;
const DIRS: usize = 10_000;
const SIGNATURES: usize = 100;
const HOSTS: usize = 50;
/// The crash loop's directories (signature 0).
const LOOP_DIRS: usize = 5_000;
/// Directories with a vmcore per other signature.
const VMCORES_PER_OTHER: usize = 3;
const PREFIX: &str = "crashes";
/// Requests in flight while the store is filled.
const LOAD_CONCURRENCY: usize = 32;

/// The targets.
pub const TARGET_COUNT_S: f64 = 1.0;
pub const TARGET_CRASHES_S: f64 = 10.0;

/// Part 8's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetBench {
    /// When it was measured (UTC).
    pub measured_at: Option<String>,
    /// Measured by a run of its own (`--only ...`), to be merged into a full run's results.
    #[serde(default)]
    pub alone: bool,
    pub server: Option<String>,
    pub dirs: usize,
    pub signatures: usize,
    pub hosts: usize,
    /// Objects in the store, the index's included.
    pub objects: usize,
    pub load_s: Option<f64>,
    /// `count_vmcores` with limit 1 and 3, the crash loop's signature, seconds.
    pub count_loop_1_s: Vec<f64>,
    pub count_loop_3_s: Vec<f64>,
    /// `count_vmcores` with limit 3, a signature of 50 directories, seconds.
    pub count_typical_3_s: Vec<f64>,
    /// `crashvmm crashes URL`, seconds.
    pub crashes_s: Vec<f64>,
    /// Groups and directories `crashvmm crashes --json` listed.
    pub crashes_groups: usize,
    pub crashes_dirs: usize,
    /// Listing every object under the prefix, seconds.
    pub full_listing_s: Vec<f64>,
    /// That listing plus every report.json, seconds.
    pub every_report_s: Option<f64>,
    pub notes: Vec<String>,
}

pub fn run(env: &super::Env) -> FleetBench {
    let mut b = FleetBench {
        measured_at: Some(chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()),
        ..Default::default()
    };
    if let Err(e) = measure(env, &mut b) {
        progress(format!("fleet: FAILED: {e}"));
        b.notes.push(e);
    }
    b
}

/// The delivery tests' S3 server (moto): started on a free loopback port with the bucket, and
/// this process's AWS settings pointed at it.
#[path = "../../../delivery/tests/common/mod.rs"]
mod s3;

/// The server and its version.
fn start_server(root: &Path) -> Result<(s3::S3Server, String), String> {
    let server = s3::S3Server::start().map_err(|e| format!("the S3 server: {e}"))?;
    let script = root.join("delivery/tests/s3-server.sh");
    let python = Command::new("bash").arg(&script).arg("python").output().map_err(|e| e.to_string())?;
    let python = String::from_utf8_lossy(&python.stdout).trim().to_owned();
    let version = Command::new(&python)
        .args(["-c", "import moto; print(moto.__version__)"])
        .output()
        .map(|o| format!("moto {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|_| "moto".into());
    Ok((server, version))
}

/// One synthetic crash directory.
struct Dir {
    /// Which of the fleet's signatures (0: the crash loop).
    sig: usize,
    signature: String,
    host: String,
    name: String,
    release: &'static str,
    vmcore: bool,
}

fn signature_id(i: usize) -> String {
    format!("{:016x}", 0x5eed_0000_0000_0000u64 + i as u64 * 0x1_0000_0001)
}

fn title(i: usize) -> String {
    if i == 0 {
        "BUG: kernel NULL pointer dereference in crash_loop_fn".into()
    } else {
        format!("general protection fault in driver_fn_{i}")
    }
}

/// The fleet: directory `n` crashed at base + 37 n seconds; signature 0 takes every other
/// directory, the rest go round the other signatures, the first ones of each with a vmcore.
fn fleet() -> Vec<Dir> {
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default();
    let releases = ["6.1.0-55-cloud-amd64", "6.1.0-57-cloud-amd64", "6.12.38+deb13-cloud-amd64"];
    let mut seen = vec![0usize; SIGNATURES];
    (0..DIRS)
        .map(|n| {
            let sig = if n % (DIRS / LOOP_DIRS) == 0 { 0 } else { 1 + (n / 2) % (SIGNATURES - 1) };
            seen[sig] += 1;
            let at = base + chrono::Duration::seconds(37 * n as i64);
            Dir {
                sig,
                signature: signature_id(sig),
                host: format!("host-{:02}", (n + n / HOSTS) % HOSTS),
                name: format!("{}-001", at.format("%Y%m%dT%H%M%SZ")),
                release: releases[n % releases.len()],
                vmcore: sig == 0 || seen[sig] <= VMCORES_PER_OTHER,
            }
        })
        .collect()
}

/// The objects of `d`, as the uploader leaves them (small files, the vmcore, report.json, the
/// index), keys relative to the prefix.
fn objects(d: &Dir) -> Result<Vec<(String, Vec<u8>)>, String> {
    let key = format!("{}/{}/{}", d.signature, d.host, d.name);
    let mut report: crash_report::Report = crash_report::from_slice(b"{}").map_err(|e| e.to_string())?;
    report.detected_at = index::Entry {
        signature: d.signature.clone(),
        dir: d.name.clone(),
        host: d.host.clone(),
        kernel_release: None,
    }
    .detected_at();
    report.signature = Some(crash_report::Signature {
        title: Some(title(d.sig)),
        id: Some(d.signature.clone()),
        kind: Some("bug".into()),
        ..Default::default()
    });
    report.guest = Some(crash_report::Guest { kernel_release: Some(d.release.into()), ..Default::default() });
    let mut out = vec![
        (
            format!("{key}/console.log"),
            format!("Linux version {} (bench)\nKernel panic - {}\n", d.release, title(d.sig)).into_bytes(),
        ),
        (format!("{key}/events.jsonl"), b"{\"event\":\"vm_started\"}\n".to_vec()),
    ];
    if d.vmcore {
        out.push((format!("{key}/vmcore.kdump"), vec![0x4b; 4096]));
        out.push((index::vmcore_key(&d.signature, &d.name, &d.host), Vec::new()));
    }
    out.push((format!("{key}/report.json"), crash_report::to_vec_pretty(&report).map_err(|e| e.to_string())?));
    out.push((index::crash_key(&d.signature, &d.name, &d.host, Some(d.release)), Vec::new()));
    Ok(out)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())
}

fn measure(env: &super::Env, b: &mut FleetBench) -> Result<(), String> {
    progress("fleet: starting the S3 server (moto)");
    let (_server, version) = start_server(&env.setup.root)?;
    b.server = Some(version);
    // The AWS settings crashvmm's delivery (and object_store here) read, as start() set them.
    let aws: Vec<(&str, String)> = ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]
        .into_iter()
        .map(|k| (k, std::env::var(k).unwrap_or_default()))
        .collect();
    let url = format!("s3://{}/{PREFIX}", s3::BUCKET);
    let target = Target::parse(&url).map_err(|e| e.to_string())?;
    let store = target.store().map_err(|e| e.to_string())?;
    let rt = runtime()?;

    let dirs = fleet();
    let mut all = Vec::new();
    for d in &dirs {
        all.extend(objects(d)?);
    }
    b.dirs = dirs.len();
    b.signatures = SIGNATURES;
    b.hosts = HOSTS;
    b.objects = all.len();
    progress(format!("fleet: filling the store with {} directories, {} objects", b.dirs, b.objects));
    let t0 = Instant::now();
    rt.block_on(async {
        futures::stream::iter(all.into_iter().map(|(key, body)| {
            let store = store.clone();
            let key = target.key(&key);
            async move { store.put(&key, PutPayload::from(body)).await.map(|_| ()) }
        }))
        .buffer_unordered(LOAD_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
    })
    .map_err(|e| format!("filling the store: {e}"))?;
    b.load_s = Some(t0.elapsed().as_secs_f64());
    progress(format!("fleet: filled in {:.0} s", t0.elapsed().as_secs_f64()));

    // The per-signature count, as a new crash asks for it.
    let loop_sig = signature_id(0);
    let typical = signature_id(SIGNATURES / 2);
    let loop_first = dirs
        .iter()
        .find(|d| d.signature == loop_sig)
        .map(|d| target.url_of(&format!("{}/{}/{}", d.signature, d.host, d.name)));
    for _ in 0..REPS {
        for (sig, at_most, want, into) in [
            (&loop_sig, 1, 1, &mut b.count_loop_1_s),
            (&loop_sig, 3, 3, &mut b.count_loop_3_s),
            (&typical, 3, VMCORES_PER_OTHER, &mut b.count_typical_3_s),
        ] {
            let t = Instant::now();
            let c = delivery::count_vmcores(&target, sig, at_most).map_err(|e| e.to_string())?;
            into.push(t.elapsed().as_secs_f64());
            if c.count != want {
                return Err(format!("count_vmcores({sig}, {at_most}) = {}, not {want}", c.count));
            }
            if sig == &loop_sig && c.first != loop_first {
                return Err(format!("count_vmcores({sig}) names {:?}, not the oldest {loop_first:?}", c.first));
            }
        }
    }
    progress(format!(
        "fleet: per-signature count {:.3} s (crash loop, limit 1), {:.3} s (typical)",
        median(&b.count_loop_1_s),
        median(&b.count_typical_3_s)
    ));

    // crashvmm crashes, the real binary.
    let crashes = |json: bool| {
        let mut c = Command::new(&env.setup.binary);
        c.arg("crashes").arg(&url).envs(aws.iter().map(|(k, v)| (k, v))).stderr(Stdio::piped());
        if json {
            c.arg("--json");
        }
        c
    };
    for _ in 0..REPS {
        let t = Instant::now();
        let out = crashes(false).output().map_err(|e| e.to_string())?;
        b.crashes_s.push(t.elapsed().as_secs_f64());
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        if !out.status.success() || lines != SIGNATURES {
            return Err(format!(
                "crashvmm crashes: {} with {lines} lines: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let out = crashes(true).output().map_err(|e| e.to_string())?;
    let groups: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("crashes --json: {e}"))?;
    b.crashes_groups = groups.len();
    b.crashes_dirs = groups.iter().filter_map(|g| g["count"].as_u64()).sum::<u64>() as usize;
    let big = groups.first().ok_or("crashes --json: no groups")?;
    if big["signature_id"] != loop_sig.as_str()
        || big["count"] != LOOP_DIRS
        || big["hosts"].as_array().map(Vec::len) != Some(HOSTS)
        || big["title"] != title(0).as_str()
        || b.crashes_dirs != DIRS
    {
        return Err(format!("crashes --json: the groups are not the fleet's: {} dirs, first {big}", b.crashes_dirs));
    }
    progress(format!("fleet: crashvmm crashes {:.2} s", median(&b.crashes_s)));

    // The references: every object listed, and every report.json read.
    let prefix = target.key("");
    for _ in 0..3 {
        let t = Instant::now();
        let n = rt
            .block_on(store.list(Some(&prefix)).try_fold(0usize, |n, _| async move { Ok(n + 1) }))
            .map_err(|e| e.to_string())?;
        b.full_listing_s.push(t.elapsed().as_secs_f64());
        if n != b.objects {
            return Err(format!("the listing has {n} objects, not {}", b.objects));
        }
    }
    let t = Instant::now();
    let reports = rt
        .block_on(async {
            let keys: Vec<_> = store
                .list(Some(&prefix))
                .try_filter(|m| std::future::ready(m.location.as_ref().ends_with("/report.json")))
                .map_ok(|m| m.location)
                .try_collect()
                .await?;
            futures::stream::iter(keys.into_iter().map(|k| {
                let store = store.clone();
                async move { store.get(&k).await?.bytes().await }
            }))
            .buffer_unordered(16)
            .try_fold(0usize, |n, _| async move { Ok(n + 1) })
            .await
        })
        .map_err(|e| e.to_string())?;
    b.every_report_s = Some(t.elapsed().as_secs_f64());
    if reports != DIRS {
        return Err(format!("read {reports} report.json files, not {DIRS}"));
    }
    progress(format!(
        "fleet: every object listed {:.2} s; and every report.json read {:.1} s",
        median(&b.full_listing_s),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Seconds as milliseconds: "median (min-max)".
fn spread_ms(v: &[f64]) -> String {
    let ms = |s: f64| if s < 0.1 { format!("{:.1}", s * 1000.0) } else { format!("{:.0}", s * 1000.0) };
    match v.len() {
        0 => "n/a".into(),
        1 => ms(v[0]),
        _ => format!("{} ({}-{})", ms(median(v)), ms(min(v)), ms(max(v))),
    }
}

/// 10000 as "10,000".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn section(m: &mut String, b: &FleetBench) {
    use std::fmt::Write as _;
    let _ = writeln!(m, "## 8. A fleet's store: 10,000 crash directories\n");
    if b.crashes_s.is_empty() {
        let _ =
            writeln!(m, "Not measured in this run.{}\n", b.notes.iter().map(|n| format!(" {n}")).collect::<String>());
        return;
    }
    let _ = writeln!(
        m,
        "Measured {} (`make bench` part 8; `--only fleet` runs it alone). {} small synthetic crash directories from {} hosts under {} signatures in a real \
         S3-protocol server on the loopback ({}, `delivery/tests/s3-server.sh`), {} objects with the store's \
         index (`delivery::index`), filled in {:.0} s. One signature is a crash loop across the fleet: {} \
         directories, every one with a vmcore; the other {} share the rest, the first {} of each with a vmcore. \
         Median (min-max) of {} runs; the full listing of 3, reading every report.json once.\n",
        b.measured_at.as_deref().unwrap_or("?"),
        thousands(b.dirs),
        b.hosts,
        b.signatures,
        b.server.as_deref().unwrap_or("moto"),
        thousands(b.objects),
        b.load_s.unwrap_or(f64::NAN),
        thousands(LOOP_DIRS),
        b.signatures.saturating_sub(1),
        VMCORES_PER_OTHER,
        b.crashes_s.len()
    );
    let _ = writeln!(m, "| what | ms |\n|---|---|");
    for (what, v) in [
        (
            "vmcore count of the crash loop's signature, limit 1 (`count_vmcores`, as a new crash asks)",
            &b.count_loop_1_s,
        ),
        ("the same, limit 3", &b.count_loop_3_s),
        ("vmcore count of a signature of about 50 directories, limit 3", &b.count_typical_3_s),
        ("`crashvmm crashes URL` (the binary, all groups)", &b.crashes_s),
        ("reference: one listing of every object under the prefix", &b.full_listing_s),
    ] {
        let _ = writeln!(m, "| {what} | {} |", spread_ms(v));
    }
    if let Some(s) = b.every_report_s {
        let _ = writeln!(
            m,
            "| reference: that listing and every report.json read, 16 at a time (`crashvmm crashes` before the index) | {:.0} |",
            s * 1000.0
        );
    }
    let count =
        [&b.count_loop_1_s, &b.count_loop_3_s, &b.count_typical_3_s].iter().map(|v| median(v)).fold(0.0, f64::max);
    let crashes = median(&b.crashes_s);
    let _ = writeln!(m, "\n| target | measured | result |\n|---|---|---|");
    let _ = writeln!(
        m,
        "| the per-signature count for a new crash under {TARGET_COUNT_S} s | {count:.3} s at most | {} |",
        if count < TARGET_COUNT_S { "met" } else { "MISSED" }
    );
    let _ = writeln!(
        m,
        "| `crashvmm crashes` lists the groups ({} groups, {} directories) in under {TARGET_CRASHES_S} s | {crashes:.2} s | {} |",
        b.crashes_groups,
        thousands(b.crashes_dirs),
        if crashes < TARGET_CRASHES_S { "met" } else { "MISSED" }
    );
    let _ = writeln!(
        m,
        "\nThe count lists the index's `.index/vmcores/SIGNATURE-ID/` and stops at the limit, so it does not grow \
         with the signature's crashes; `crashvmm crashes` lists `.index/crashes/` (one key per directory: \
         signature, time, host, kernel release) and reads one report.json per group, for its title. moto is a \
         single Python process: its listing pages cost more than a cloud store's, and grow with the bucket.\n"
    );
    for n in &b.notes {
        let _ = writeln!(m, "- {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn the_fleet_is_what_part_8_says() {
        let dirs = fleet();
        assert_eq!(dirs.len(), DIRS);
        let keys: BTreeSet<_> = dirs.iter().map(|d| (&d.signature, &d.host, &d.name)).collect();
        assert_eq!(keys.len(), DIRS, "two directories with one key");
        let mut by_sig: BTreeMap<&str, (usize, usize, BTreeSet<&str>)> = BTreeMap::new();
        for d in &dirs {
            let e = by_sig.entry(&d.signature).or_default();
            e.0 += 1;
            e.1 += usize::from(d.vmcore);
            e.2.insert(&d.host);
        }
        assert_eq!(by_sig.len(), SIGNATURES);
        let crash_loop = &by_sig[signature_id(0).as_str()];
        assert_eq!((crash_loop.0, crash_loop.1, crash_loop.2.len()), (LOOP_DIRS, LOOP_DIRS, HOSTS));
        for (sig, (n, vmcores, _)) in &by_sig {
            if *sig != signature_id(0) {
                assert!((50..=51).contains(n), "{sig}: {n}");
                assert_eq!(*vmcores, VMCORES_PER_OTHER, "{sig}");
            }
        }
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(50_594), "50,594");
        assert_eq!(thousands(999), "999");
    }
}
