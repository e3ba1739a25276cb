//! What holds guest data is owner-only whatever the umask (the spool, a `file://` store,
//! `fetch`'s output); the spool acts only on job files it wrote itself and sets aside those it
//! cannot deliver; a moved spool delivers from its new place; a bad report.json in a store
//! does not hide the rest. Every test here runs under umask 000 (this binary's own process).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{crash_dir, R};
use delivery::{fetch, list_crashes, DeliveryEvent, JobMeta, Spool, StopSignal, Target, Uploader, UploaderConfig};

const SIG: &str = "cccccccccccccccc";

fn umask_000() {
    // SAFETY: umask(2) only swaps the process's file mode mask; every test of this binary
    // sets the same one.
    unsafe { libc::umask(0) };
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).map(|m| m.mode() & 0o7777).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every directory and file under `root` (itself included).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_owned()];
    if root.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            out.extend(walk(&e));
        }
    }
    out
}

fn assert_owner_only(root: &Path) {
    for p in walk(root) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{} is {:04o}", p.display(), mode(&p));
    }
}

fn config() -> UploaderConfig {
    UploaderConfig { part_size: 5 << 20, ..Default::default() }
}

fn meta() -> JobMeta {
    JobMeta { signature_id: SIG.into(), host: "h".into(), kernel_release: None }
}

/// Deliver what `spool` holds, one attempt per job; the number delivered and the events.
fn deliver_once(target: &Target, spool: &Spool) -> R<(usize, Vec<DeliveryEvent>)> {
    let events = Mutex::new(Vec::new());
    let stop = StopSignal::new();
    let n = Uploader::new(target.clone(), spool.clone(), config())
        .run_once(&stop, &|e| events.lock().unwrap_or_else(|p| p.into_inner()).push(e))?;
    Ok((n, events.into_inner().unwrap_or_else(|p| p.into_inner())))
}

#[test]
fn the_spool_the_file_store_and_fetched_copies_are_owner_only_under_umask_000() -> R {
    umask_000();
    let work = tempfile::tempdir()?;
    let base = work.path().join("crashes");
    // A vmcore over a part: the file store's multipart path as well as its single puts.
    let dir = crash_dir(&base, "20261125T130105Z-001", SIG, "BUG: x", "6.1.0-1-amd64", 6 << 20, 7)?;
    let spool = Spool::open(&base)?;
    spool.enqueue(&dir, &meta())?;
    assert_owner_only(spool.root());

    let store = work.path().join("store");
    let target = Target::parse(&format!("file://{}/fleet", store.display()))?;
    assert!(!store.exists(), "parsing the URL created the store");
    assert_eq!(deliver_once(&target, &spool)?.0, 1);
    assert_owner_only(&store);
    assert_owner_only(spool.root());
    let stored = store.join(format!("fleet/{SIG}/h/20261125T130105Z-001"));
    assert_eq!(std::fs::read(stored.join("vmcore"))?, std::fs::read(dir.join("vmcore"))?);

    let dest = work.path().join("fetched/here");
    let got = fetch(&target.url_of(&format!("{SIG}/h/20261125T130105Z-001")), &dest)?;
    assert_eq!(std::fs::read(got.join("vmcore"))?, std::fs::read(dir.join("vmcore"))?);
    assert_owner_only(&work.path().join("fetched"));
    Ok(())
}

#[test]
fn a_moved_spool_delivers_from_its_new_place() -> R {
    umask_000();
    let work = tempfile::tempdir()?;
    let old = work.path().join("old");
    let dir = crash_dir(&old, "20261125T130105Z-001", SIG, "BUG: x", "6.1.0-1-amd64", 1 << 20, 8)?;
    let job = Spool::open(&old)?.enqueue(&dir, &meta())?;
    assert_eq!(job.dir, Path::new("20261125T130105Z-001"), "stored relative to the crash directory");
    let new = work.path().join("new");
    std::fs::rename(&old, &new)?;
    let spool = Spool::open(&new)?;
    assert_eq!(spool.pending()?[0].path, new.canonicalize()?.join("20261125T130105Z-001"));
    let target = Target::parse(&format!("file://{}/store", work.path().display()))?;
    let (n, events) = deliver_once(&target, &spool)?;
    assert_eq!(n, 1, "{events:?}");
    assert!(spool.pending()?.is_empty());
    Ok(())
}

/// A job file as another writer would put it: for `dir`, under `id`.
fn job_text(id: &str, dir: &Path) -> String {
    serde_json::json!({
        "id": id, "dir": dir, "name": id, "signature_id": SIG, "host": "evil",
        "enqueued_at": "2026-11-25T13:01:05.000000Z",
    })
    .to_string()
}

#[test]
fn job_files_the_spool_did_not_write_are_set_aside_unread_and_the_rest_delivered() -> R {
    umask_000();
    let work = tempfile::tempdir()?;
    let base = work.path().join("crashes");
    let good = crash_dir(&base, "20261125T130105Z-001", SIG, "BUG: x", "6.1.0-1-amd64", 1 << 10, 9)?;
    // What an injected job would deliver: it must never reach the store.
    let secret = crash_dir(&work.path().join("elsewhere"), "secret", SIG, "BUG: y", "6.1.0-1-amd64", 1 << 10, 10)?;
    let spool = Spool::open(&base)?;
    spool.enqueue(&good, &meta())?;
    let jobs = spool.root().join("jobs");
    let mut bad = vec![("00000000000000001-corrupt.json", "not a job file".to_owned())];
    std::fs::write(jobs.join(bad[0].0), "{ not json")?;
    std::fs::set_permissions(jobs.join(bad[0].0), std::fs::Permissions::from_mode(0o600))?;
    // Writable by others.
    let p = jobs.join("00000000000000002-open.json");
    std::fs::write(&p, job_text("00000000000000002-open", &secret))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666))?;
    bad.push(("00000000000000002-open.json", "group- or other-writable (mode 0666)".into()));
    // A symbolic link to a job file elsewhere.
    let elsewhere = work.path().join("00000000000000003-link.json");
    std::fs::write(&elsewhere, job_text("00000000000000003-link", &secret))?;
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::symlink(&elsewhere, jobs.join("00000000000000003-link.json"))?;
    bad.push(("00000000000000003-link.json", "it is a symbolic link".into()));
    // Another user's (root can make one).
    if common_euid() == 0 {
        let p = jobs.join("00000000000000004-theirs.json");
        std::fs::write(&p, job_text("00000000000000004-theirs", &secret))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(&p, Some(65534), Some(65534))?;
        bad.push(("00000000000000004-theirs.json", "belongs to uid 65534".into()));
    }
    let store = work.path().join("store");
    let target = Target::parse(&format!("file://{}", store.display()))?;
    let (n, events) = deliver_once(&target, &spool)?;
    assert_eq!(n, 1, "{events:?}");
    for (name, why) in &bad {
        assert!(
            events.iter().any(|e| matches!(e, DeliveryEvent::Abandoned { dir: None, error, job }
                if job.ends_with(name) && error.contains(why.as_str()))),
            "{name}: {why}: {events:?}"
        );
        assert!(spool.root().join("failed").join(name).symlink_metadata().is_ok(), "{name} not set aside");
    }
    assert_eq!(std::fs::read_dir(&jobs)?.count(), 0, "jobs/ keeps nothing it refused");
    assert!(walk(&store).iter().all(|p| !p.ends_with("secret")), "an injected job was delivered");
    assert!(store.join(format!("{SIG}/h/20261125T130105Z-001/report.json")).is_file());
    Ok(())
}

fn common_euid() -> u32 {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

#[test]
fn a_spool_whose_directories_others_may_write_or_swap_is_refused() -> R {
    umask_000();
    let work = tempfile::tempdir()?;
    let base = work.path().join("crashes");
    std::fs::create_dir_all(&base)?;
    let spool = Spool::open(&base)?;
    std::fs::set_permissions(spool.root().join("jobs"), std::fs::Permissions::from_mode(0o777))?;
    let e = Spool::open(&base).expect_err("a 0777 jobs/ was taken").to_string();
    assert!(e.contains(".upload/jobs") && e.contains("mode 0777"), "{e}");
    assert!(spool.pending().is_err(), "an open spool checks its directories each time");
    // jobs/ swapped for a link to a directory of someone else's choosing.
    std::fs::remove_dir(spool.root().join("jobs"))?;
    let theirs = work.path().join("theirs");
    std::fs::create_dir(&theirs)?;
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::symlink(&theirs, spool.root().join("jobs"))?;
    let e = Spool::open(&base).expect_err("a linked jobs/ was taken").to_string();
    assert!(e.contains("symbolic link"), "{e}");
    Ok(())
}

#[test]
fn a_job_that_cannot_be_delivered_is_set_aside_with_the_reason() -> R {
    umask_000();
    let work = tempfile::tempdir()?;
    let base = work.path().join("crashes");
    let gone = crash_dir(&base, "20261125T130105Z-001", SIG, "BUG: x", "6.1.0-1-amd64", 1 << 10, 11)?;
    let unfinished = crash_dir(&base, "20261125T130106Z-002", SIG, "BUG: x", "6.1.0-1-amd64", 1 << 10, 12)?;
    let spool = Spool::open(&base)?;
    spool.enqueue(&gone, &meta())?;
    spool.enqueue(&unfinished, &meta())?;
    std::fs::remove_dir_all(&gone)?;
    std::fs::remove_file(unfinished.join("report.json"))?;
    let target = Target::parse(&format!("file://{}/store", work.path().display()))?;
    let (n, events) = deliver_once(&target, &spool)?;
    assert_eq!(n, 0);
    assert!(spool.pending()?.is_empty(), "a permanent failure is not retried");
    let failed = spool.failed()?;
    assert_eq!(failed.len(), 2, "{events:?}");
    assert!(failed[0].last_error.as_deref().is_some_and(|e| e.contains("20261125T130105Z-001")), "{failed:?}");
    assert!(failed[1].last_error.as_deref().is_some_and(|e| e.contains("no report.json")), "{failed:?}");
    assert_eq!(events.iter().filter(|e| matches!(e, DeliveryEvent::Abandoned { dir: Some(_), .. })).count(), 2);
    Ok(())
}

#[test]
fn a_bad_report_json_or_index_entry_in_the_store_costs_a_title_or_that_entry_only() -> R {
    umask_000();
    let work = tempfile::tempdir()?;
    let store = work.path().join("store");
    for (sig, dir, text) in [
        ("aaaaaaaaaaaaaaaa", "20261125T130105Z-001", r#"{"signature":{"title":"BUG: a"}}"#),
        ("bbbbbbbbbbbbbbbb", "20261125T130205Z-001", "{ not json"),
    ] {
        let d = store.join(format!("{sig}/h/{dir}"));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("report.json"), text)?;
        let entry = store.join(delivery::index::crash_key(sig, dir, "h", Some("6.1.0-57-cloud-amd64")));
        std::fs::create_dir_all(entry.parent().ok_or("no parent")?)?;
        std::fs::write(entry, "")?;
    }
    // Not an entry: skipped with a warning.
    std::fs::write(store.join(".index/crashes/aaaaaaaaaaaaaaaa/20261125T130105Z-001/h/a b"), "")?;
    let groups = list_crashes(&Target::parse(&format!("file://{}", store.display()))?)?;
    let got: Vec<_> = groups.iter().map(|g| (g.signature_id.as_str(), g.count, g.title.as_deref())).collect();
    assert_eq!(got, [("bbbbbbbbbbbbbbbb", 1, None), ("aaaaaaaaaaaaaaaa", 1, Some("BUG: a"))]);
    assert_eq!(groups[0].kernel_releases, ["6.1.0-57-cloud-amd64"]);
    // A store that is not there is an error, and reading it does not create it.
    let missing = work.path().join("missing");
    assert!(list_crashes(&Target::parse(&format!("file://{}", missing.display()))?).is_err());
    assert!(!missing.exists());
    Ok(())
}
