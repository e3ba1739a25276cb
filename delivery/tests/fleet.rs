//! The bar: three guests' crashes, two with the same bug, uploaded to a real S3-protocol
//! server; the store holds three complete directories under two signature ids and
//! `list_crashes` gives two groups with counts 2 and 1, from the store's index.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{crash_dir, sha256, S3Server, BUCKET, R};
use delivery::{
    count_vmcores, fetch, list_crashes, DeliveryEvent, JobMeta, Spool, StopSignal, Target, Uploader, UploaderConfig,
    VmcoreCount,
};

const BUG: &str = "aaaaaaaaaaaaaaaa";
const OTHER: &str = "bbbbbbbbbbbbbbbb";

#[test]
fn three_crashes_two_signatures_two_groups() -> R {
    let server = S3Server::start()?;
    let target = Target::parse(&format!("s3://{BUCKET}/fleet"))?;
    let work = tempfile::tempdir()?;
    // Three guests, each with its own crash directory and spool; two hosts.
    let guests = [
        ("host-a", "20261125T130105Z-001", BUG, "BUG: unable to handle page fault in foo", 20 << 20, 1),
        ("host-b", "20261125T130205Z-001", BUG, "BUG: unable to handle page fault in foo", 9 << 20, 2),
        ("host-a", "20261125T130305Z-002", OTHER, "general protection fault in bar", 3 << 20, 3),
    ];
    let mut dirs = Vec::new();
    for (i, (host, name, sig, title, bytes, seed)) in guests.iter().enumerate() {
        let base = work.path().join(format!("guest{i}"));
        let dir = crash_dir(&base, name, sig, title, &format!("6.1.0-{i}-amd64"), *bytes, *seed)?;
        let spool = Spool::open(&base)?;
        let meta = JobMeta::from_dir(&dir)?;
        assert_eq!(meta.signature_id, *sig);
        spool.enqueue(&dir, &JobMeta { host: host.to_string(), ..meta })?;
        let config = UploaderConfig { part_size: 8 << 20, keep_local: i != 2, ..Default::default() };
        let up = Uploader::new(target.clone(), spool.clone(), config);
        let events = Mutex::new(Vec::new());
        let stop = StopSignal::new();
        let t0 = std::time::Instant::now();
        let n = up.run_once(&stop, &|e| events.lock().unwrap_or_else(|p| p.into_inner()).push(e))?;
        eprintln!("guest {i}: {bytes} byte vmcore delivered in {:?}", t0.elapsed());
        let events = events.into_inner().unwrap_or_else(|p| p.into_inner());
        assert_eq!(n, 1, "{events:?}");
        assert!(matches!(events.first(), Some(DeliveryEvent::Started { .. })), "{events:?}");
        assert!(matches!(events.last(), Some(DeliveryEvent::Completed { .. })), "{events:?}");
        assert!(spool.pending()?.is_empty());
        // Queued again once delivered: nothing to do.
        spool
            .enqueue(&dir, &JobMeta { host: host.to_string(), signature_id: sig.to_string(), kernel_release: None })?;
        assert!(spool.pending()?.is_empty());
        // --upload-keep-local off: the local copy goes once the store confirmed it.
        assert_eq!(dir.exists(), i != 2);
        dirs.push(dir);
    }
    // 4 files per directory, and the index: a vmcore entry and a crash entry per directory.
    let keys = server.keys()?;
    assert_eq!(keys.len(), 18, "{keys:?}");
    for key in [
        format!("fleet/.index/vmcores/{BUG}/20261125T130205Z-001/host-b"),
        format!("fleet/.index/crashes/{BUG}/20261125T130205Z-001/host-b/6.1.0-1-amd64"),
        format!("fleet/.index/crashes/{OTHER}/20261125T130305Z-002/host-a/6.1.0-2-amd64"),
    ] {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
    assert_eq!(server.open_uploads()?, 0);

    let groups = list_crashes(&target)?;
    assert_eq!(groups.iter().map(|g| (g.signature_id.as_str(), g.count)).collect::<Vec<_>>(), [(BUG, 2), (OTHER, 1)]);
    assert_eq!(groups[0].hosts, ["host-a", "host-b"]);
    assert_eq!(groups[0].kernel_releases, ["6.1.0-0-amd64", "6.1.0-1-amd64"]);
    assert_eq!(groups[0].title.as_deref(), Some("BUG: unable to handle page fault in foo"));
    assert_eq!(groups[0].first_seen.as_deref(), Some("2026-11-25T13:01:05Z"));
    assert_eq!(groups[0].last_seen.as_deref(), Some("2026-11-25T13:02:05Z"));
    let listed: Vec<_> = groups[0].dirs.iter().map(|d| (d.host.as_str(), d.kernel_release.as_deref())).collect();
    assert_eq!(listed, [("host-a", Some("6.1.0-0-amd64")), ("host-b", Some("6.1.0-1-amd64"))]);
    println!("{}", serde_json::to_string_pretty(&groups)?);

    // A directory being delivered (its vmcore is there, with its index entry, its report.json
    // is not yet) is not a crash yet: it is not listed, but its vmcore counts.
    for key in [
        format!("{OTHER}/host-c/20261125T125905Z-001/vmcore"),
        delivery::index::vmcore_key(OTHER, "20261125T125905Z-001", "host-c"),
    ] {
        let (st, _) = common::http(server.port, "PUT", &format!("/{BUCKET}/fleet/{key}"), b"")?;
        assert_eq!(st, 200);
    }
    assert_eq!(list_crashes(&target)?.iter().map(|g| g.count).sum::<usize>(), 3);

    // Per signature, the directories with a vmcore, up to the count asked for: the oldest is
    // named.
    let bug = count_vmcores(&target, BUG, 5)?;
    assert_eq!(bug.count, 2);
    assert_eq!(bug.first.as_deref(), Some(format!("s3://{BUCKET}/fleet/{BUG}/host-a/20261125T130105Z-001").as_str()));
    assert_eq!(count_vmcores(&target, BUG, 1)?.count, 1);
    let other = count_vmcores(&target, OTHER, 5)?;
    assert_eq!(other.count, 2);
    assert_eq!(
        other.first.as_deref(),
        Some(format!("s3://{BUCKET}/fleet/{OTHER}/host-c/20261125T125905Z-001").as_str())
    );
    assert_eq!(count_vmcores(&target, "cccccccccccccccc", 5)?, VmcoreCount::default());

    // Fetch one back: the same files, the same bytes.
    let entry = &groups[0].dirs[0];
    let dest = tempfile::tempdir()?;
    let got = fetch(&entry.url, dest.path())?;
    for f in ["report.json", "events.jsonl", "console.log", "vmcore"] {
        assert_eq!(sha256(&got.join(f))?, sha256(&dirs[0].join(f))?, "{f}");
    }
    assert!(fetch(&format!("s3://{BUCKET}/fleet/{OTHER}/host-c/x"), dest.path()).is_err());
    drop(server);
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

/// A store without the bucket is a permanent failure: the job is set aside with the reason at
/// the first attempt, not retried forever.
#[test]
fn a_missing_bucket_sets_the_job_aside_with_the_reason() -> R {
    let _server = S3Server::start()?;
    let target = Target::parse("s3://no-such-bucket/fleet")?;
    let work = tempfile::tempdir()?;
    let dir = crash_dir(work.path(), "20261125T130105Z-001", BUG, "BUG: x", "6.1.0-1-amd64", 1 << 10, 4)?;
    let spool = Spool::open(work.path())?;
    spool.enqueue(&dir, &JobMeta::from_dir(&dir)?)?;
    let stop = StopSignal::new();
    let n = Uploader::new(target, spool.clone(), UploaderConfig::default()).run_once(&stop, &|_| {})?;
    assert_eq!(n, 0);
    assert!(spool.pending()?.is_empty(), "retried: {:?}", spool.pending()?);
    let failed = spool.failed()?;
    assert_eq!(failed.len(), 1);
    let why = failed[0].last_error.clone().unwrap_or_default();
    assert!(why.contains("no such bucket"), "{why}");
    Ok(())
}
