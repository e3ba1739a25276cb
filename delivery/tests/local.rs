//! `file://` targets (no resumable multipart there: the vmcore is streamed in parts and an
//! interrupted one starts over), and "never upload twice": a directory the store already holds
//! as it is here is not sent again.

mod common;

use common::{crash_dir, sha256, R};
use delivery::{fetch, list_crashes, JobMeta, Spool, StopSignal, Target, Uploader, UploaderConfig};

#[test]
fn file_target_round_trip_and_no_second_upload() -> R {
    let work = tempfile::tempdir()?;
    let store = work.path().join("store");
    let target = Target::parse(&format!("file://{}/crashes", store.display()))?;
    let base = work.path().join("host");
    let dir = crash_dir(&base, "20261125T130105Z-001", "eeeeeeeeeeeeeeee", "BUG: z", "6.1.0-1-amd64", 18 << 20, 5)?;
    let meta = JobMeta { signature_id: "eeeeeeeeeeeeeeee".into(), host: "h".into(), kernel_release: None };
    let config = UploaderConfig { part_size: 8 << 20, ..Default::default() };
    let stop = StopSignal::new();

    let spool = Spool::open(&base)?;
    spool.enqueue(&dir, &meta)?;
    assert_eq!(Uploader::new(target.clone(), spool, config.clone()).run_once(&stop, &|_| {})?, 1);
    let stored = store.join("crashes/eeeeeeeeeeeeeeee/h/20261125T130105Z-001");
    let mtimes = |f: &str| std::fs::metadata(stored.join(f)).and_then(|m| m.modified());
    let before = [mtimes("vmcore")?, mtimes("report.json")?];
    assert_eq!(sha256(&stored.join("vmcore"))?, sha256(&dir.join("vmcore"))?);

    // A second spool (another crashvmm, or one whose spool was lost) queues the same directory:
    // everything is already there, checked, and not sent again.
    let base2 = work.path().join("host-again");
    std::fs::create_dir_all(&base2)?;
    let spool2 = Spool::open(&base2)?;
    spool2.enqueue(&dir, &meta)?;
    assert_eq!(Uploader::new(target.clone(), spool2, config).run_once(&stop, &|_| {})?, 1);
    assert_eq!([mtimes("vmcore")?, mtimes("report.json")?], before);

    let groups = list_crashes(&target)?;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].count, 1);
    let dest = tempfile::tempdir()?;
    let got = fetch(&groups[0].dirs[0].url, dest.path())?;
    assert_eq!(sha256(&got.join("vmcore"))?, sha256(&dir.join("vmcore"))?);
    Ok(())
}
