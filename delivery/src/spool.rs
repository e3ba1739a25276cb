//! The on-disk upload queue, `<crash-dir>/.upload/`:
//!
//! ```text
//! .upload/jobs/<enqueued, µs since the epoch>-<dir>.json   waiting or in progress
//! .upload/done/<same name>                                 delivered (the store confirmed)
//! .upload/failed/<same name>                               set aside: undeliverable (its
//!                                                          last_error says why) or refused
//! ```
//!
//! Every write is atomic (a temporary file, fsynced, renamed over, the directory fsynced), so a
//! crash of crashvmm or of the host leaves each job file either as it was or as it became.
//!
//! The spool is owner-only (directories 0700, files 0600, whatever the umask), and it acts only
//! on what it wrote itself: a spool directory or job file that is not this process's user's,
//! that group or others may write, or that is a symbolic link is refused with the reason (a
//! job file is set aside in `failed/`, never delivered). A job names its crash directory
//! relative to the crash directory the spool is in, so a spool moved along with its crash
//! directories delivers from their new place.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::{private, DeliveryError, REPORT};

/// What the uploader must know about a crash directory besides its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    /// `signature.id` of report.json (`unknown` when it has none).
    pub signature_id: String,
    /// The host the crash happened on.
    pub host: String,
    /// `guest.kernel_release` of report.json, for the store's index (absent from job files
    /// written before the index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
}

impl JobMeta {
    /// From the directory's report.json and this host's name.
    pub fn from_dir(dir: &Path) -> Result<Self, DeliveryError> {
        let path = dir.join(REPORT);
        let text = fs::read(&path).map_err(io("read", &path))?;
        let report = crash_report::from_slice::<crash_report::Report>(&text)
            .map_err(|source| DeliveryError::Report { path: path.display().to_string(), source })?;
        Ok(Self::from_report(&report))
    }

    /// From a crash's report (as written to its report.json) and this host's name.
    pub fn from_report(report: &crash_report::Report) -> Self {
        let signature_id = report
            .signature
            .as_ref()
            .and_then(|s| s.id.as_deref())
            .filter(|s| is_safe_component(s))
            .unwrap_or("unknown")
            .to_owned();
        let kernel_release = report.guest.as_ref().and_then(|g| g.kernel_release.clone());
        Self { signature_id, host: hostname(), kernel_release }
    }
}

/// This host's name (the kernel's, as `uname -n` gives it), `unknown-host` if unreadable.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| is_safe_component(h))
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// A name that is one path component of an object key.
pub(crate) fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// One file of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub name: String,
    pub size: u64,
    /// Hex SHA-256 of the whole file (stored with the object as metadata `sha256`).
    pub sha256: String,
    /// The store confirmed the object (size and checksum checked).
    pub done: bool,
    /// A multipart upload in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart: Option<MultipartState>,
}

/// A multipart upload in progress: its id and the parts the store acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartState {
    pub upload_id: String,
    pub part_size: u64,
    /// Per part: the id the store gave it (S3: its ETag), once uploaded.
    pub parts: Vec<Option<String>>,
    /// Per part: its hex MD5, once uploaded (S3's ETag of the whole is derived from them).
    pub part_md5: Vec<Option<String>>,
    /// Attempts in a row whose first part failed though the store answered: at two, the
    /// upload is taken as gone (a store that lost it and answers 500 rather than 404, as moto
    /// does after a restart), aborted and started over.
    #[serde(default)]
    pub strikes: u32,
}

/// One crash directory to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job file's stem: `<µs since the epoch>-<dir name>`; sorting by it is oldest first.
    pub id: String,
    /// The local crash directory, relative to the crash directory the spool is in (`<crash
    /// dir>/.upload`'s parent); absolute where it is not under it (and in job files written
    /// before crashvmm stored it relative).
    pub dir: PathBuf,
    /// `dir` resolved against the spool's crash directory (not stored).
    #[serde(skip)]
    pub path: PathBuf,
    /// Its name, the last component of its key prefix.
    pub name: String,
    #[serde(flatten)]
    pub meta: JobMeta,
    pub enqueued_at: String,
    /// Filled in on the first attempt, small files first, big ones next, report.json last.
    #[serde(default)]
    pub files: Vec<FileState>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Where it went (set once delivered).
    #[serde(default)]
    pub url: Option<String>,
}

impl Job {
    /// The key of the directory under the target's prefix: `<signature id>/<host>/<dir>`.
    pub fn key_prefix(&self) -> String {
        format!("{}/{}/{}", self.meta.signature_id, self.meta.host, self.name)
    }
}

/// A job file the spool would not act on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Where it is now (in `failed/` once set aside).
    pub path: PathBuf,
    pub reason: String,
}

/// The spool of one crash directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// The crash directory the spool is in (canonical): jobs' directories are relative to it.
    crash_dir: PathBuf,
    /// This process's effective uid, the owner of everything the spool trusts (taken once, in
    /// `open`: the confined upload thread may not ask).
    euid: u32,
    /// Told of each job queued through this spool or a clone of it: the uploader sleeps on it.
    queued: Arc<tokio::sync::Notify>,
}

const SUBDIRS: [&str; 3] = ["jobs", "done", "failed"];

impl Spool {
    /// Open (creating it, owner-only) `<crash_dir>/.upload/`. An existing spool directory
    /// that is not this user's, that others may write or that is a symbolic link is refused.
    pub fn open(crash_dir: &Path) -> Result<Self, DeliveryError> {
        let crash_dir = fs::canonicalize(crash_dir).map_err(io("resolve", crash_dir))?;
        let spool = Self {
            root: crash_dir.join(".upload"),
            crash_dir,
            euid: private::euid(),
            queued: Arc::new(tokio::sync::Notify::new()),
        };
        for d in std::iter::once(spool.root.clone()).chain(SUBDIRS.iter().map(|s| spool.root.join(s))) {
            match private::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => spool.check_dir(&d)?,
                Err(e) => return Err(io("create", &d)(e)),
            }
        }
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An error unless `d` is a directory of this user's that only it may write.
    fn check_dir(&self, d: &Path) -> Result<(), DeliveryError> {
        match private::untrusted_dir(d, self.euid).map_err(io("inspect", d))? {
            Some(reason) => Err(DeliveryError::Untrusted { path: d.to_owned(), reason }),
            None => Ok(()),
        }
    }

    /// Queue the finished crash directory `dir`, and wake an uploader of this spool (or of a
    /// clone of it). Queueing one already queued or delivered returns that job.
    pub fn enqueue(&self, dir: &Path, meta: &JobMeta) -> Result<Job, DeliveryError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| is_safe_component(n))
            .ok_or_else(|| DeliveryError::Other(format!("{}: not a crash directory name", dir.display())))?;
        for sub in ["jobs", "done"] {
            if let Some(job) = self.read_dir(sub)?.0.into_iter().find(|j| j.name == name) {
                return Ok(job);
            }
        }
        let micros = chrono::Utc::now().timestamp_micros();
        let path = fs::canonicalize(dir).map_err(io("resolve", dir))?;
        let job = Job {
            id: format!("{micros:017}-{name}"),
            dir: path.strip_prefix(&self.crash_dir).map_or_else(|_| path.clone(), Path::to_owned),
            path,
            name,
            meta: meta.clone(),
            enqueued_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            files: Vec::new(),
            attempts: 0,
            last_error: None,
            url: None,
        };
        self.save(&job)?;
        // A permit if the uploader is not waiting now: it looks again when it next would.
        self.queued.notify_one();
        Ok(job)
    }

    /// Resolves when a job is queued through this spool or a clone of it (at once if one was
    /// queued since the last time).
    pub(crate) async fn queued(&self) {
        self.queued.notified().await;
    }

    /// Jobs waiting, oldest first (those it refuses are left out: `set_aside_refused`).
    pub fn pending(&self) -> Result<Vec<Job>, DeliveryError> {
        Ok(self.read_dir("jobs")?.0)
    }

    /// Jobs delivered, oldest first.
    pub fn delivered(&self) -> Result<Vec<Job>, DeliveryError> {
        Ok(self.read_dir("done")?.0)
    }

    /// Jobs set aside as undeliverable, oldest first (refused files are not read).
    pub fn failed(&self) -> Result<Vec<Job>, DeliveryError> {
        Ok(self.read_dir("failed")?.0)
    }

    /// Move every job file of `jobs/` that the spool refuses (not JSON, not a job, not this
    /// user's, writable by others, a symbolic link) into `failed/`, unread; returns them with
    /// the reason.
    pub fn set_aside_refused(&self) -> Result<Vec<Refused>, DeliveryError> {
        let (_, refused) = self.read_dir("jobs")?;
        let mut moved = Vec::with_capacity(refused.len());
        for Refused { path, reason } in refused {
            let to = self.root.join("failed").join(path.file_name().unwrap_or_default());
            fs::rename(&path, &to).map_err(io("set aside", &path))?;
            moved.push(Refused { path: to, reason });
        }
        if !moved.is_empty() {
            sync_dir(&self.root.join("jobs"))?;
        }
        Ok(moved)
    }

    /// Persist `job`'s progress (atomically).
    pub fn save(&self, job: &Job) -> Result<(), DeliveryError> {
        self.write_atomic(&self.root.join("jobs").join(format!("{}.json", job.id)), job)
    }

    /// Move `job` to `done/` (written there first, then removed from `jobs/`).
    pub fn complete(&self, job: &Job) -> Result<(), DeliveryError> {
        self.move_to("done", job)
    }

    /// Set `job` aside in `failed/` with `reason` as its last error: it is not tried again
    /// (moving it back to `jobs/` queues it again).
    pub fn fail(&self, job: &mut Job, reason: &str) -> Result<PathBuf, DeliveryError> {
        job.last_error = Some(reason.to_owned());
        self.move_to("failed", job)?;
        Ok(self.root.join("failed").join(format!("{}.json", job.id)))
    }

    /// Forget the delivered `job` (its crash directory was removed: the store has it): its
    /// file leaves `done/`.
    pub fn forget_delivered(&self, job: &Job) -> Result<(), DeliveryError> {
        let d = self.root.join("done");
        let p = d.join(format!("{}.json", job.id));
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &p)(e)),
        }
    }

    fn move_to(&self, sub: &str, job: &Job) -> Result<(), DeliveryError> {
        self.write_atomic(&self.root.join(sub).join(format!("{}.json", job.id)), job)?;
        let p = self.root.join("jobs").join(format!("{}.json", job.id));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &p)(e)),
        }
        sync_dir(&self.root.join("jobs"))
    }

    /// The jobs of `sub`, oldest first, and the files there it refuses. The spool directory
    /// and `sub` are checked first, each time: a spool whose directories are not its own is an
    /// error.
    fn read_dir(&self, sub: &str) -> Result<(Vec<Job>, Vec<Refused>), DeliveryError> {
        let d = self.root.join(sub);
        self.check_dir(&self.root)?;
        self.check_dir(&d)?;
        let mut names: Vec<PathBuf> = fs::read_dir(&d)
            .map_err(io("list", &d))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        let mut jobs = Vec::with_capacity(names.len());
        let mut refused = Vec::new();
        for p in names {
            match self.read_job(&p) {
                Ok(j) => jobs.push(j),
                Err(reason) => refused.push(Refused { path: p, reason }),
            }
        }
        Ok((jobs, refused))
    }

    /// The job in `p`, or why the spool refuses it.
    fn read_job(&self, p: &Path) -> Result<Job, String> {
        let mut f = private::open_trusted(p, self.euid)?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut text).map_err(|e| format!("cannot read it: {e}"))?;
        let mut job: Job = serde_json::from_slice(&text).map_err(|e| format!("not a job file: {e}"))?;
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if job.id != stem || !is_safe_component(&job.id) || !is_safe_component(&job.name) {
            return Err(format!(
                "not a job file: its id {:?} or name {:?} does not fit its file name",
                job.id, job.name
            ));
        }
        job.path = self.crash_dir.join(&job.dir);
        Ok(job)
    }

    fn write_atomic(&self, path: &Path, job: &Job) -> Result<(), DeliveryError> {
        let data = serde_json::to_vec_pretty(job)
            .map_err(|source| DeliveryError::Json { path: path.display().to_string(), source })?;
        let tmp = self.root.join(format!(".tmp-{}-{}", std::process::id(), job.id));
        let mut f = private::create_file(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&data).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io("rename to", path))?;
        sync_dir(path.parent().unwrap_or(&self.root))
    }
}

fn sync_dir(dir: &Path) -> Result<(), DeliveryError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_id_of_a_report_is_its_key_when_it_is_one_path_component() -> Result<(), DeliveryError> {
        let base = tempfile::tempdir().map_err(|e| DeliveryError::Other(e.to_string()))?;
        for (report, id) in [
            (r#"{"signature": {"id": "0123456789abcdef", "title": "t"}}"#, "0123456789abcdef"),
            (r#"{"signature": {"id": "../x"}}"#, "unknown"),
            (r#"{"signature": {"id": 5}}"#, "unknown"),
            (r#"{"signature": null, "future": 1}"#, "unknown"),
        ] {
            fs::write(base.path().join(REPORT), report).map_err(io("write", base.path()))?;
            assert_eq!(JobMeta::from_dir(base.path())?.signature_id, id, "{report}");
        }
        fs::write(base.path().join(REPORT), "[1]").map_err(io("write", base.path()))?;
        assert!(matches!(JobMeta::from_dir(base.path()), Err(DeliveryError::Report { .. })));
        Ok(())
    }

    #[test]
    fn enqueue_is_atomic_idempotent_and_oldest_first() -> Result<(), DeliveryError> {
        let base = tempfile::tempdir().map_err(|e| DeliveryError::Other(e.to_string()))?;
        let spool = Spool::open(base.path())?;
        let meta = JobMeta { signature_id: "0123456789abcdef".into(), host: "h1".into(), kernel_release: None };
        let mut ids = Vec::new();
        for n in ["20261125T130105Z-001", "20261125T130106Z-002"] {
            let d = base.path().join(n);
            fs::create_dir(&d).map_err(io("mkdir", &d))?;
            ids.push(spool.enqueue(&d, &meta)?.id);
        }
        let again = spool.enqueue(&base.path().join("20261125T130105Z-001"), &meta)?;
        assert_eq!(again.id, ids[0]);
        let pending = spool.pending()?;
        assert_eq!(pending.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), ids);
        spool.complete(&pending[0])?;
        assert_eq!(spool.pending()?.len(), 1);
        assert_eq!(spool.delivered()?.len(), 1);
        // Delivered stays delivered: queueing it again does not start it over.
        assert_eq!(spool.enqueue(&base.path().join("20261125T130105Z-001"), &meta)?.id, ids[0]);
        assert_eq!(spool.pending()?.len(), 1);
        // Forgotten once its directory is gone; forgetting it twice is no error.
        let done = spool.delivered()?;
        spool.forget_delivered(&done[0])?;
        spool.forget_delivered(&done[0])?;
        assert!(spool.delivered()?.is_empty());
        assert_eq!(spool.pending()?.len(), 1);
        Ok(())
    }
}
