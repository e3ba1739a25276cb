//! The uploader: a blocking loop over the spool, oldest job first. It sleeps until there is
//! work: a job queued through its [`Spool`] (or a clone of it) wakes it, a failed job's retry
//! is a timer, and a [`StopSignal`] ends any wait at once.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use md5::Md5;
use object_store::multipart::PartId;
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::{chain, io};
use crate::spool::{FileState, Job, MultipartState, Spool};
use crate::target::{Scheme, Target};
use crate::{index, is_vmcore, DeliveryError, REPORT};

/// The metadata key each object's SHA-256 is stored under (S3: `x-amz-meta-sha256`).
pub const SHA256_META: &str = "sha256";

/// What the uploader tells: the event log's `upload_*` events, serialized as they are recorded
/// there (`event` names the event; paths as text, lossily where they are not UTF-8).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event")]
pub enum DeliveryEvent {
    /// A crash directory's upload began (each attempt).
    #[serde(rename = "upload_started")]
    Started {
        #[serde(serialize_with = "path_text")]
        dir: PathBuf,
        url: String,
    },
    #[serde(rename = "upload_progress")]
    Progress {
        #[serde(serialize_with = "path_text")]
        dir: PathBuf,
        bytes: u64,
        total: u64,
    },
    /// Every object of the directory was confirmed by the store.
    #[serde(rename = "upload_completed")]
    Completed {
        #[serde(serialize_with = "path_text")]
        dir: PathBuf,
        url: String,
        bytes: u64,
    },
    /// An attempt failed; the job is tried again in `retry_in_s` seconds.
    #[serde(rename = "upload_failed")]
    Failed {
        #[serde(serialize_with = "path_text")]
        dir: PathBuf,
        error: String,
        retry_in_s: f64,
    },
    /// A job that cannot be delivered (a permanent failure: credentials refused, no such
    /// bucket, a file of it gone; or a job file the spool refuses) was set aside in the spool's
    /// `failed/` and will not be tried again.
    #[serde(rename = "upload_abandoned")]
    Abandoned {
        /// The crash directory (none for a job file that was refused unread).
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_path_text")]
        dir: Option<PathBuf>,
        error: String,
        /// Where the job file was set aside.
        #[serde(serialize_with = "path_text")]
        job: PathBuf,
    },
}

fn path_text<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

fn opt_path_text<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => path_text(p, s),
        None => s.serialize_none(),
    }
}

/// When a running uploader ends ([`Uploader::run`]): never (the default), once the spool is
/// empty, or now. Clones share one signal; setting it wakes the uploader from any wait.
#[derive(Debug, Clone)]
pub struct StopSignal(Arc<watch::Sender<Ending>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Never,
    WhenEmpty,
    Now,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl StopSignal {
    pub fn new() -> Self {
        Self(Arc::new(watch::Sender::new(Ending::Never)))
    }

    /// Stop now: a wait (a retry's backoff, the bandwidth cap) ends at once, an upload in
    /// progress at its next file or part (it resumes there next time).
    pub fn stop(&self) {
        self.0.send_replace(Ending::Now);
    }

    /// Stop once the spool holds no job (each delivered or set aside); failed jobs are still
    /// retried when their backoff ends. [`StopSignal::stop`] ends it earlier.
    pub fn stop_when_empty(&self) {
        self.0.send_if_modified(|e| {
            let was = *e;
            if was == Ending::Never {
                *e = Ending::WhenEmpty;
            }
            was == Ending::Never
        });
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow() == Ending::Now
    }

    /// Resolves once stopped.
    async fn stopped(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = rx.wait_for(|e| *e == Ending::Now).await;
    }
}

#[derive(Debug, Clone)]
pub struct UploaderConfig {
    /// Files at least this big go as a multipart upload of parts this big (5 MiB..=5 GiB;
    /// default 16 MiB).
    pub part_size: u64,
    /// Parts in flight at once (default 4).
    pub concurrency: usize,
    /// Keep the local crash directory once the store confirmed it (`--upload-keep-local`).
    pub keep_local: bool,
    /// First retry delay; doubled per failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Upload bandwidth cap in bytes per second (`None`: none).
    pub max_bytes_per_sec: Option<u64>,
    /// How often an idle uploader reads the spool directory again, for jobs that another
    /// process queued or an operator moved back from `failed/` (default 60 s). Not how it
    /// learns of its own jobs: a job queued through its [`Spool`] (or a clone) wakes it at
    /// once, and a failed job's retry is a timer of its own.
    pub rescan: Duration,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        Self {
            part_size: 16 << 20,
            concurrency: 4,
            keep_local: true,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_bytes_per_sec: None,
            rescan: Duration::from_secs(60),
        }
    }
}

pub struct Uploader {
    target: Target,
    spool: Spool,
    config: UploaderConfig,
}

/// Why one attempt at a job ended early.
enum Halt {
    Stopped,
    Error(DeliveryError),
}

impl From<DeliveryError> for Halt {
    fn from(e: DeliveryError) -> Self {
        Halt::Error(e)
    }
}

impl From<object_store::Error> for Halt {
    fn from(e: object_store::Error) -> Self {
        Halt::Error(e.into())
    }
}

struct Throttle {
    rate: Option<u64>,
    state: Mutex<(Instant, u64)>,
}

impl Throttle {
    /// How long to wait before sending `bytes` more.
    fn reserve(&self, bytes: u64) -> Duration {
        let Some(rate) = self.rate.filter(|r| *r > 0) else { return Duration::ZERO };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let due = s.0 + Duration::from_secs_f64(s.1 as f64 / rate as f64);
        s.1 += bytes;
        due.saturating_duration_since(Instant::now())
    }
}

impl Uploader {
    pub fn new(target: Target, spool: Spool, mut config: UploaderConfig) -> Self {
        config.part_size = config.part_size.clamp(5 << 20, 5 << 30);
        config.concurrency = config.concurrency.clamp(1, 64);
        Self { target, spool, config }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Deliver the spool's jobs until `stop` says so: oldest first; a failed job is retried with
    /// exponential backoff while the others go on. Between jobs it sleeps until one is queued
    /// through the spool, a retry is due, `stop` changes or [`UploaderConfig::rescan`] passes.
    /// Returns when stopped (or, after [`StopSignal::stop_when_empty`], when the spool is
    /// empty or cannot be read), or when the runtime cannot start or the spool is refused.
    pub fn run(&self, stop: &StopSignal, events: &dyn Fn(DeliveryEvent)) -> Result<(), DeliveryError> {
        let rt = runtime()?;
        rt.block_on(self.run_async(stop, events, false)).map(|_| ())
    }

    /// Deliver what the spool holds now, one attempt per job; returns how many were delivered.
    pub fn run_once(&self, stop: &StopSignal, events: &dyn Fn(DeliveryEvent)) -> Result<usize, DeliveryError> {
        let rt = runtime()?;
        rt.block_on(self.run_async(stop, events, true))
    }

    async fn run_async(
        &self,
        stop: &StopSignal,
        events: &dyn Fn(DeliveryEvent),
        once: bool,
    ) -> Result<usize, DeliveryError> {
        let mut not_before: HashMap<String, (Instant, u32)> = HashMap::new();
        let mut delivered = 0;
        let mut ending = stop.0.subscribe();
        loop {
            let when_empty = match *ending.borrow_and_update() {
                Ending::Now => return Ok(delivered),
                Ending::WhenEmpty => true,
                Ending::Never => false,
            };
            let jobs = match self.spool.set_aside_refused().and_then(|refused| {
                for r in refused {
                    log::error!("delivery: job file set aside as {}: {}", r.path.display(), r.reason);
                    events(DeliveryEvent::Abandoned { dir: None, error: r.reason, job: r.path });
                }
                self.spool.pending()
            }) {
                Ok(j) if j.is_empty() && when_empty => return Ok(delivered),
                Ok(j) => j,
                Err(e) if once || e.is_permanent() => return Err(e),
                Err(e) if when_empty => {
                    log::warn!("delivery: cannot read the spool: {e}");
                    return Ok(delivered);
                }
                Err(e) => {
                    log::warn!("delivery: cannot read the spool: {}", chain(&e));
                    Vec::new()
                }
            };
            let now = Instant::now();
            let mut next = None;
            // A job left the queue (delivered or set aside) in this pass.
            let mut progressed = false;
            for mut job in jobs {
                if stop.is_stopped() {
                    return Ok(delivered);
                }
                if let Some((at, _)) = not_before.get(&job.id) {
                    if *at > now {
                        next = Some(next.map_or(*at, |n: Instant| n.min(*at)));
                        continue;
                    }
                }
                match self.deliver(&mut job, stop, events).await {
                    Ok(()) => {
                        not_before.remove(&job.id);
                        delivered += 1;
                        progressed = true;
                    }
                    Err(Halt::Stopped) => return Ok(delivered),
                    Err(Halt::Error(e)) if e.is_permanent() => {
                        not_before.remove(&job.id);
                        job.attempts += 1;
                        let error = chain(&e);
                        match self.spool.fail(&mut job, &error) {
                            Ok(at) => {
                                log::error!(
                                    "delivery: {}: {error}; not retried, the job is set aside as {}",
                                    job.path.display(),
                                    at.display()
                                );
                                events(DeliveryEvent::Abandoned { dir: Some(job.path.clone()), error, job: at });
                                progressed = true;
                            }
                            Err(f) => {
                                log::error!(
                                    "delivery: {}: {error}; cannot set it aside: {}",
                                    job.path.display(),
                                    chain(&f)
                                )
                            }
                        }
                    }
                    Err(Halt::Error(e)) => {
                        let failures = not_before.get(&job.id).map_or(0, |(_, n)| *n) + 1;
                        let delay = backoff(&self.config, failures);
                        job.attempts += 1;
                        let error = chain(&e);
                        job.last_error = Some(error.clone());
                        if let Err(e) = self.spool.save(&job) {
                            log::warn!("delivery: cannot save {}: {}", job.id, chain(&e));
                        }
                        events(DeliveryEvent::Failed { dir: job.path.clone(), error, retry_in_s: delay.as_secs_f64() });
                        let at = Instant::now() + delay;
                        not_before.insert(job.id.clone(), (at, failures));
                        next = Some(next.map_or(at, |n: Instant| n.min(at)));
                    }
                }
            }
            if once {
                return Ok(delivered);
            }
            if when_empty && progressed {
                // Look again at once: the spool may be empty now.
                continue;
            }
            let wait = next
                .map_or(self.config.rescan, |n| n.saturating_duration_since(Instant::now()).min(self.config.rescan));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.spool.queued() => {}
                _ = ending.changed() => {}
            }
        }
    }

    /// One attempt at `job`.
    async fn deliver(&self, job: &mut Job, stop: &StopSignal, events: &dyn Fn(DeliveryEvent)) -> Result<(), Halt> {
        let dir_target = self.target.join(&job.key_prefix());
        events(DeliveryEvent::Started { dir: job.path.clone(), url: dir_target.url.clone() });
        if job.files.is_empty() || !job.path.is_dir() && job.files.iter().any(|f| !f.done) {
            job.files = scan(&job.path, self.config.part_size).await?;
            self.spool.save(job)?;
        }
        let total: u64 = job.files.iter().map(|f| f.size).sum();
        let mut sent: u64 = job.files.iter().filter(|f| f.done).map(|f| f.size).sum();
        let throttle = Throttle { rate: self.config.max_bytes_per_sec, state: Mutex::new((Instant::now(), 0)) };
        // Every file but report.json, in the order scan() chose (small ones first).
        for i in 0..job.files.len() {
            if stop.is_stopped() {
                return Err(Halt::Stopped);
            }
            if job.files[i].name == REPORT || job.files[i].done {
                continue;
            }
            self.put_file(job, i, &dir_target, &throttle, stop, events, &mut sent, total).await?;
        }
        // The store must hold every file, as they are here, before report.json says the
        // directory is complete (a store restarted empty, a file removed meanwhile).
        for i in 0..job.files.len() {
            let f = &job.files[i];
            if f.name == REPORT {
                continue;
            }
            let key = dir_target.key(&f.name);
            if !self.matches(&key, f).await? {
                let name = f.name.clone();
                job.files[i].done = false;
                self.spool.save(job)?;
                return Err(DeliveryError::Checksum {
                    path: key.to_string(),
                    detail: format!("{name} is missing from the store or differs; it will be uploaded again"),
                }
                .into());
            }
        }
        // The index (crate::index): the vmcore's entry before report.json, the directory's
        // once report.json is there. Empty objects, put again on every attempt (a retry after
        // either finds them as they were).
        let m = &job.meta;
        if job.files.iter().any(|f| is_vmcore(&f.name)) {
            self.put_index_entry(&index::vmcore_key(&m.signature_id, &job.name, &m.host)).await?;
        }
        if let Some(i) = job.files.iter().position(|f| f.name == REPORT && !f.done) {
            self.put_file(job, i, &dir_target, &throttle, stop, events, &mut sent, total).await?;
        }
        let m = &job.meta;
        self.put_index_entry(&index::crash_key(&m.signature_id, &job.name, &m.host, m.kernel_release.as_deref()))
            .await?;
        job.url = Some(dir_target.url.clone());
        job.last_error = None;
        self.spool.complete(job)?;
        if !self.config.keep_local && job.path.is_dir() {
            std::fs::remove_dir_all(&job.path).map_err(io("remove", &job.path))?;
        }
        events(DeliveryEvent::Completed { dir: job.path.clone(), url: dir_target.url, bytes: total });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_file(
        &self,
        job: &mut Job,
        i: usize,
        dir_target: &Target,
        throttle: &Throttle,
        stop: &StopSignal,
        events: &dyn Fn(DeliveryEvent),
        sent: &mut u64,
        total: u64,
    ) -> Result<(), Halt> {
        let f = job.files[i].clone();
        let key = dir_target.key(&f.name);
        let local = job.path.join(&f.name);
        let meta = std::fs::metadata(&local).map_err(io("stat", &local))?;
        if meta.len() != f.size {
            return Err(DeliveryError::Changed(local).into());
        }
        // Never upload twice: an object already there as it is here is taken as uploaded.
        if self.matches(&key, &f).await? {
            if let (Some(mp), Some(st)) = (self.target.multipart(), &f.multipart) {
                // A stale upload of the same object (completed before a restart): let it go.
                let _ = mp.abort_multipart(&key, &st.upload_id.clone()).await;
            }
        } else if f.size >= self.config.part_size {
            if self.target.multipart().is_some() {
                self.put_resumable(job, i, &key, &local, throttle, stop, events, sent, total).await?;
            } else {
                self.put_streamed(&key, &local, &f, throttle, stop).await?;
            }
            if !self.matches(&key, &job.files[i]).await? {
                return Err(DeliveryError::Checksum { path: key.to_string(), detail: "after upload".into() }.into());
            }
        } else {
            let data = read_all(&local).await?;
            let wait = throttle.reserve(data.len() as u64);
            sleep_unless_stopped(wait, stop).await;
            let md5 = hex::encode(Md5::digest(&data));
            let opts = PutOptions { attributes: self.attributes(&f), ..Default::default() };
            let store = self.target.store_for_write(&key)?;
            let r = store.put_opts(&key, PutPayload::from(data), opts).await.map_err(|e| self.no_bucket(e))?;
            self.target.seal(&key)?;
            if self.target.scheme == Scheme::S3 && !etag_agrees(r.e_tag.as_deref(), &md5) {
                return Err(DeliveryError::Checksum {
                    path: key.to_string(),
                    detail: format!("ETag {:?}, MD5 sent {md5}", r.e_tag),
                }
                .into());
            }
            if !self.matches(&key, &f).await? {
                return Err(DeliveryError::Checksum { path: key.to_string(), detail: "after upload".into() }.into());
            }
        }
        job.files[i].done = true;
        job.files[i].multipart = None;
        self.spool.save(job)?;
        if f.multipart.is_none() || f.size < self.config.part_size {
            *sent += f.size;
        } else {
            *sent = job.files.iter().filter(|f| f.done).map(|f| f.size).sum();
        }
        events(DeliveryEvent::Progress { dir: job.path.clone(), bytes: *sent, total });
        Ok(())
    }

    /// An empty object at `rel` under the target's prefix.
    async fn put_index_entry(&self, rel: &str) -> Result<(), DeliveryError> {
        let key = self.target.key(rel);
        let store = self.target.store_for_write(&key)?;
        store.put(&key, PutPayload::new()).await.map_err(|e| self.no_bucket(e))?;
        self.target.seal(&key)
    }

    /// A write answered "not found": the bucket or container is not there (an object never
    /// is before it is written).
    fn no_bucket(&self, e: object_store::Error) -> DeliveryError {
        match e {
            object_store::Error::NotFound { .. } => DeliveryError::NoBucket { url: self.target.url.clone(), source: e },
            e => e.into(),
        }
    }

    fn attributes(&self, f: &FileState) -> Attributes {
        let mut a = Attributes::new();
        if self.target.scheme != Scheme::File {
            a.insert(Attribute::Metadata(SHA256_META.into()), f.sha256.clone().into());
        }
        a
    }

    /// Whether the store holds `key` with `f`'s size and SHA-256.
    async fn matches(&self, key: &ObjPath, f: &FileState) -> Result<bool, DeliveryError> {
        let opts = GetOptions { head: true, ..Default::default() };
        let store = match self.target.store() {
            Ok(s) => s,
            // A `file://` store not made yet holds nothing.
            Err(DeliveryError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let r = match store.get_opts(key, opts).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if r.meta.size != f.size {
            return Ok(false);
        }
        if self.target.scheme == Scheme::File {
            // No metadata on a local store: read it back.
            let data = store.get(key).await?;
            let mut h = Sha256::new();
            let mut s = data.into_stream();
            while let Some(chunk) = s.next().await {
                h.update(&chunk?);
            }
            return Ok(hex::encode(h.finalize()) == f.sha256);
        }
        let stored = r.attributes.get(&Attribute::Metadata(SHA256_META.into())).map(|v| v.to_string());
        Ok(stored.as_deref() == Some(f.sha256.as_str()))
    }

    /// A multipart upload the store can resume after a restart (S3, GCS, Azure): its id and
    /// every acknowledged part are in the job file.
    #[allow(clippy::too_many_arguments)]
    async fn put_resumable(
        &self,
        job: &mut Job,
        i: usize,
        key: &ObjPath,
        local: &Path,
        throttle: &Throttle,
        stop: &StopSignal,
        events: &dyn Fn(DeliveryEvent),
        sent: &mut u64,
        total: u64,
    ) -> Result<(), Halt> {
        let Some(mp) = self.target.multipart() else {
            return Err(DeliveryError::Other("no multipart API".into()).into());
        };
        let part_size = self.config.part_size;
        let size = job.files[i].size;
        let n = size.div_ceil(part_size) as usize;
        let resumed = job.files[i].multipart.is_some();
        let mut sent_now = false;
        let st = match job.files[i].multipart.clone() {
            Some(st) if st.part_size == part_size && st.parts.len() == n && st.strikes < 2 => st,
            stale => {
                if let Some(st) = stale {
                    let _ = mp.abort_multipart(key, &st.upload_id).await;
                }
                let opts = PutMultipartOptions { attributes: self.attributes(&job.files[i]), ..Default::default() };
                let upload_id = mp.create_multipart_opts(key, opts).await.map_err(|e| self.no_bucket(e))?;
                let st =
                    MultipartState { upload_id, part_size, parts: vec![None; n], part_md5: vec![None; n], strikes: 0 };
                job.files[i].multipart = Some(st.clone());
                self.spool.save(job)?;
                st
            }
        };
        let id = st.upload_id.clone();
        let base: u64 = job.files.iter().filter(|f| f.done).map(|f| f.size).sum();
        let part_len = |p: usize| (size - p as u64 * part_size).min(part_size);
        let mut done_bytes: u64 = (0..n).filter(|p| st.parts[*p].is_some()).map(part_len).sum();
        let missing: Vec<usize> = (0..n).filter(|p| st.parts[*p].is_none()).collect();
        let parts = futures::stream::iter(missing.into_iter().map(|p| {
            let (mp, key, id, local) = (mp.clone(), key.clone(), id.clone(), local.to_owned());
            let offset = p as u64 * part_size;
            let len = part_len(p);
            async move {
                let data = read_part(&local, offset, len).await?;
                let md5 = hex::encode(Md5::digest(&data));
                sleep_unless_stopped(throttle.reserve(len), stop).await;
                if stop.is_stopped() {
                    return Err(Halt::Stopped);
                }
                let part = mp.put_part(&key, &id, p, PutPayload::from(data)).await?;
                Ok::<_, Halt>((p, part, md5))
            }
        }))
        .buffer_unordered(self.config.concurrency);
        futures::pin_mut!(parts);
        while let Some(r) = parts.next().await {
            match r {
                Ok((p, part, md5)) => {
                    if self.target.scheme == Scheme::S3 && !etag_agrees(Some(&part.content_id), &md5) {
                        return Err(DeliveryError::Checksum {
                            path: format!("{key} part {p}"),
                            detail: format!("ETag {}, MD5 sent {md5}", part.content_id),
                        }
                        .into());
                    }
                    if let Some(st) = job.files[i].multipart.as_mut() {
                        st.parts[p] = Some(part.content_id);
                        st.part_md5[p] = Some(md5);
                        st.strikes = 0;
                    }
                    sent_now = true;
                    self.spool.save(job)?;
                    done_bytes += part_len(p);
                    *sent = base + done_bytes;
                    events(DeliveryEvent::Progress { dir: job.path.clone(), bytes: *sent, total });
                }
                Err(Halt::Error(DeliveryError::Store(object_store::Error::NotFound { path, source }))) => {
                    // The store no longer knows the upload (expired, aborted, a store that
                    // lost its state): start it over, next attempt.
                    let _ = mp.abort_multipart(key, &id).await;
                    job.files[i].multipart = None;
                    self.spool.save(job)?;
                    return Err(Halt::Error(DeliveryError::Store(object_store::Error::NotFound { path, source })));
                }
                Err(Halt::Error(e)) => {
                    // The store answered HEAD a moment ago, but not this part of an upload
                    // taken over from an earlier attempt: one strike.
                    if resumed && !sent_now {
                        if let Some(st) = job.files[i].multipart.as_mut() {
                            st.strikes += 1;
                            log::warn!(
                                "delivery: {key}: upload {} failed its first part ({})",
                                st.upload_id,
                                chain(&e)
                            );
                        }
                        self.spool.save(job)?;
                    }
                    return Err(Halt::Error(e));
                }
                Err(Halt::Stopped) => return Err(Halt::Stopped),
            }
        }
        let Some(st) = job.files[i].multipart.clone() else {
            return Err(DeliveryError::Other("multipart state lost".into()).into());
        };
        let ids: Vec<PartId> = st.parts.iter().flatten().map(|c| PartId { content_id: c.clone() }).collect();
        if ids.len() != n {
            return Err(DeliveryError::Other(format!("{key}: {} of {n} parts uploaded", ids.len())).into());
        }
        match mp.complete_multipart(key, &id, ids).await {
            Ok(r) => {
                if self.target.scheme == Scheme::S3 {
                    let expected = multipart_etag(&st.part_md5);
                    if let (Some(e), Some(x)) = (r.e_tag.as_deref(), expected.as_deref()) {
                        let e = e.trim_matches('"');
                        if looks_like_multipart_etag(e) && e != x {
                            return Err(DeliveryError::Checksum {
                                path: key.to_string(),
                                detail: format!("ETag {e}, expected {x}"),
                            }
                            .into());
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                if matches!(e, object_store::Error::NotFound { .. }) {
                    job.files[i].multipart = None;
                    self.spool.save(job)?;
                }
                Err(e.into())
            }
        }
    }

    /// A multipart upload started over after a restart (`file://`, whose store has no
    /// resumable multipart API; an interrupted one leaves nothing under the object's name).
    async fn put_streamed(
        &self,
        key: &ObjPath,
        local: &Path,
        f: &FileState,
        throttle: &Throttle,
        stop: &StopSignal,
    ) -> Result<(), Halt> {
        let opts = PutMultipartOptions { attributes: self.attributes(f), ..Default::default() };
        let store = self.target.store_for_write(key)?;
        let upload = store.put_multipart_opts(key, opts).await.map_err(|e| self.no_bucket(e))?;
        let part_size = self.config.part_size;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part_size as usize);
        let mut offset = 0;
        while offset < f.size {
            let len = (f.size - offset).min(part_size);
            let data = match read_part(local, offset, len).await {
                Ok(d) => d,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e.into());
                }
            };
            sleep_unless_stopped(throttle.reserve(len), stop).await;
            if stop.is_stopped() {
                let _ = w.abort().await;
                return Err(Halt::Stopped);
            }
            if let Err(e) = w.wait_for_capacity(self.config.concurrency).await {
                return Err(e.into());
            }
            w.write(&data);
            offset += len;
        }
        w.finish().await?;
        self.target.seal(key)?;
        Ok(())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, DeliveryError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("crashvmm-upload")
        .enable_all()
        .build()
        .map_err(DeliveryError::Runtime)
}

fn backoff(c: &UploaderConfig, failures: u32) -> Duration {
    let factor = 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    c.backoff_initial.mul_f64(factor).min(c.backoff_max)
}

/// Wait `d`, or less if `stop` says stop.
async fn sleep_unless_stopped(d: Duration, stop: &StopSignal) {
    if d.is_zero() {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stop.stopped() => {}
    }
}

fn blocking_err(e: tokio::task::JoinError) -> DeliveryError {
    DeliveryError::Task(e)
}

async fn read_all(path: &Path) -> Result<Vec<u8>, DeliveryError> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::read(&p).map_err(io("read", &p))).await.map_err(blocking_err)?
}

async fn read_part(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, DeliveryError> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let f = File::open(&p).map_err(io("open", &p))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(io("read", &p))?;
        Ok(buf)
    })
    .await
    .map_err(blocking_err)?
}

/// The files of a crash directory with size and SHA-256: files smaller than a part first (by
/// size), then the big ones, report.json last.
async fn scan(dir: &Path, part_size: u64) -> Result<Vec<FileState>, DeliveryError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut files = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let e = e.map_err(io("list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ty = e.file_type().map_err(io("stat", &e.path()))?;
            if !ty.is_file() || name.starts_with('.') || !crate::spool::is_safe_component(&name) {
                continue;
            }
            let path = e.path();
            let mut f = File::open(&path).map_err(io("open", &path))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(io("read", &path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                size += n as u64;
            }
            files.push(FileState { name, size, sha256: hex::encode(h.finalize()), done: false, multipart: None });
        }
        if !files.iter().any(|f| f.name == REPORT) {
            return Err(DeliveryError::Unfinished(dir));
        }
        files.sort_by_key(|f| (f.name == REPORT, f.size >= part_size, f.size, f.name.clone()));
        Ok(files)
    })
    .await
    .map_err(blocking_err)?
}

/// An S3 ETag (quotes removed) that is an MD5 must be `md5`; any other (SSE-KMS, a store
/// that does not use MD5s) says nothing.
fn etag_agrees(etag: Option<&str>, md5: &str) -> bool {
    match etag.map(|e| e.trim_matches('"')) {
        Some(e) if e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()) => e.eq_ignore_ascii_case(md5),
        _ => true,
    }
}

fn looks_like_multipart_etag(e: &str) -> bool {
    e.split_once('-').is_some_and(|(h, n)| {
        h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// S3's ETag of a completed multipart upload: MD5 of the parts' MD5s, `-<parts>`.
fn multipart_etag(part_md5: &[Option<String>]) -> Option<String> {
    let mut h = Md5::new();
    for m in part_md5 {
        h.update(hex::decode(m.as_ref()?).ok()?);
    }
    Some(format!("{}-{}", hex::encode(h.finalize()), part_md5.len()))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn etags() {
        let md5 = hex::encode(Md5::digest(b"abc"));
        assert!(etag_agrees(Some(&format!("\"{md5}\"")), &md5));
        assert!(!etag_agrees(Some("\"00000000000000000000000000000000\""), &md5));
        assert!(etag_agrees(Some("opaque-azure-etag"), &md5));
        let parts = vec![Some(md5.clone()), Some(md5.clone())];
        let e = multipart_etag(&parts).unwrap_or_default();
        assert!(looks_like_multipart_etag(&e) && e.ends_with("-2"));
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let c = UploaderConfig::default();
        assert_eq!(backoff(&c, 1), Duration::from_secs(1));
        assert_eq!(backoff(&c, 3), Duration::from_secs(4));
        assert_eq!(backoff(&c, 40), Duration::from_secs(300));
    }

    type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

    /// A finished crash directory: report.json and a console log.
    fn crash_dir(base: &Path, name: &str) -> R<PathBuf> {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(REPORT), br#"{"signature": {"id": "0123456789abcdef"}}"#)?;
        std::fs::write(dir.join("console.log"), b"Kernel panic - not syncing\n")?;
        Ok(dir)
    }

    fn meta() -> crate::JobMeta {
        crate::JobMeta { signature_id: "0123456789abcdef".into(), host: "h".into(), kernel_release: None }
    }

    /// `run` on a thread of its own: its events, and its result once it returns.
    fn spawn_run(
        uploader: Uploader,
        stop: &StopSignal,
    ) -> (mpsc::Receiver<DeliveryEvent>, mpsc::Receiver<Result<(), DeliveryError>>) {
        let (events, events_rx) = mpsc::channel();
        let (done, done_rx) = mpsc::channel();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = done.send(uploader.run(&stop, &|e| {
                let _ = events.send(e);
            }));
        });
        (events_rx, done_rx)
    }

    /// A bound for what must happen at once, far below the waits the tests make sure are cut
    /// short (a day): a broken wake-up fails the test instead of hanging it.
    const AT_ONCE: Duration = Duration::from_secs(60);

    fn next_event(rx: &mpsc::Receiver<DeliveryEvent>, want: impl Fn(&DeliveryEvent) -> bool) -> R<DeliveryEvent> {
        loop {
            let e = rx.recv_timeout(AT_ONCE).map_err(|e| format!("no such event: {e}"))?;
            if want(&e) {
                return Ok(e);
            }
        }
    }

    #[test]
    fn a_job_queued_through_the_spool_wakes_the_idle_uploader() -> R {
        let work = tempfile::tempdir()?;
        let target = Target::parse(&format!("file://{}/store", work.path().display()))?;
        let spool = Spool::open(work.path())?;
        // Never rescanned within the test: only the spool's notification can wake it.
        let config = UploaderConfig { rescan: Duration::from_secs(24 * 3600), ..Default::default() };
        let stop = StopSignal::new();
        let (events, done) = spawn_run(Uploader::new(target, spool.clone(), config), &stop);
        // The second is queued once the uploader has delivered the first and gone idle.
        for name in ["20261125T130105Z-001", "20261125T130106Z-002"] {
            let dir = crash_dir(work.path(), name)?;
            spool.enqueue(&dir, &meta())?;
            next_event(&events, |e| matches!(e, DeliveryEvent::Completed { dir: d, .. } if *d == dir))?;
        }
        assert!(work.path().join("store/0123456789abcdef/h/20261125T130106Z-002/report.json").is_file());
        stop.stop();
        done.recv_timeout(AT_ONCE)??;
        assert_eq!(spool.delivered()?.len(), 2);
        Ok(())
    }

    #[test]
    fn stop_cuts_a_retry_backoff_short() -> R {
        let work = tempfile::tempdir()?;
        // A store under a regular file cannot be created: a failure that is retried.
        std::fs::write(work.path().join("blocker"), b"")?;
        let target = Target::parse(&format!("file://{}/blocker/store", work.path().display()))?;
        let spool = Spool::open(work.path())?;
        let day = Duration::from_secs(24 * 3600);
        let config = UploaderConfig { backoff_initial: day, backoff_max: day, ..Default::default() };
        let stop = StopSignal::new();
        let (events, done) = spawn_run(Uploader::new(target, spool.clone(), config), &stop);
        spool.enqueue(&crash_dir(work.path(), "20261125T130105Z-001")?, &meta())?;
        let failed = next_event(&events, |e| matches!(e, DeliveryEvent::Failed { .. }))?;
        assert!(matches!(failed, DeliveryEvent::Failed { retry_in_s, .. } if retry_in_s == day.as_secs_f64()));
        stop.stop();
        done.recv_timeout(AT_ONCE)??;
        // Left queued for the next run, its failure recorded.
        let pending = spool.pending()?;
        assert_eq!((pending.len(), pending[0].attempts), (1, 1));
        Ok(())
    }

    #[test]
    fn stop_when_empty_ends_the_uploader_once_the_spool_is_drained() -> R {
        let work = tempfile::tempdir()?;
        let target = Target::parse(&format!("file://{}/store", work.path().display()))?;
        let spool = Spool::open(work.path())?;
        let config = UploaderConfig { rescan: Duration::from_secs(24 * 3600), ..Default::default() };
        let stop = StopSignal::new();
        let (events, done) = spawn_run(Uploader::new(target, spool.clone(), config), &stop);
        let dir = crash_dir(work.path(), "20261125T130105Z-001")?;
        spool.enqueue(&dir, &meta())?;
        stop.stop_when_empty();
        done.recv_timeout(AT_ONCE)??;
        assert!(!stop.is_stopped());
        assert!(spool.pending()?.is_empty());
        assert_eq!(spool.delivered()?.len(), 1);
        assert!(events.try_iter().any(|e| matches!(e, DeliveryEvent::Completed { dir: d, .. } if d == dir)));
        Ok(())
    }

    #[test]
    fn events_are_named_as_the_event_log_names_them() {
        let e = DeliveryEvent::Failed { dir: "/c/d".into(), error: "x".into(), retry_in_s: 2.0 };
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["event"], "upload_failed");
        assert_eq!(v["retry_in_s"], 2.0);
    }
}
