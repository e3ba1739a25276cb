//! The fleet view: what a store holds, grouped by signature, and fetching one crash directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use object_store::ObjectStoreExt;

use crate::error::{chain, io};
use crate::target::Target;
use crate::{private, DeliveryError, REPORT};

/// One complete crash directory in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrashEntry {
    /// `<target URL>/<signature id>/<host>/<dir>`.
    pub url: String,
    pub host: String,
    pub dir: String,
    pub detected_at: Option<String>,
    pub kernel_release: Option<String>,
}

/// The crashes of one signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub signature_id: String,
    pub title: Option<String>,
    pub count: usize,
    pub hosts: Vec<String>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub kernel_releases: Vec<String>,
    /// Oldest first.
    pub dirs: Vec<CrashEntry>,
}

fn runtime() -> Result<tokio::runtime::Runtime, DeliveryError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DeliveryError::Runtime)
}

/// The complete crash directories under `target` (those whose report.json is there: it is
/// uploaded last), grouped by signature id, the biggest group first. A report.json that cannot
/// be read or is not JSON is left out with a warning naming it.
pub fn list_crashes(target: &Target) -> Result<Vec<Group>, DeliveryError> {
    runtime()?.block_on(list_async(target))
}

async fn list_async(target: &Target) -> Result<Vec<Group>, DeliveryError> {
    let prefix = (!target.prefix.is_empty()).then(|| target.key(""));
    let store = target.store()?;
    let objects: Vec<_> = store.list(prefix.as_ref()).try_collect().await?;
    let reports: Vec<(String, String, String, object_store::path::Path)> = objects
        .into_iter()
        .filter_map(|m| {
            let rel = target.relative(m.location.as_ref()).to_owned();
            let parts: Vec<&str> = rel.split('/').collect();
            match parts.as_slice() {
                [sig, host, dir, REPORT] => Some((sig.to_string(), host.to_string(), dir.to_string(), m.location)),
                _ => None,
            }
        })
        .collect();
    let fetched: Vec<_> = futures::stream::iter(reports.into_iter().map(|(sig, host, dir, key)| {
        let store = store.clone();
        async move {
            let report = async {
                let bytes = store.get(&key).await?.bytes().await?;
                crash_report::from_slice::<crash_report::Report>(&bytes)
                    .map_err(|source| DeliveryError::Report { path: key.to_string(), source })
            };
            match report.await {
                Ok(report) => Some((sig, host, dir, report)),
                Err(e) => {
                    log::warn!("skipping {}: {}", target.url_of(&format!("{sig}/{host}/{dir}/{REPORT}")), chain(&e));
                    None
                }
            }
        }
    }))
    .buffer_unordered(16)
    .filter_map(std::future::ready)
    .collect()
    .await;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (sig, host, dir, report) in fetched {
        let g = groups.entry(sig.clone()).or_insert_with(|| Group {
            signature_id: sig.clone(),
            title: None,
            count: 0,
            hosts: Vec::new(),
            first_seen: None,
            last_seen: None,
            kernel_releases: Vec::new(),
            dirs: Vec::new(),
        });
        if g.title.is_none() {
            g.title = report.signature.and_then(|s| s.title);
        }
        g.dirs.push(CrashEntry {
            url: target.url_of(&format!("{sig}/{host}/{dir}")),
            host,
            dir,
            detected_at: report.detected_at,
            kernel_release: report.guest.and_then(|g| g.kernel_release),
        });
    }
    let mut out: Vec<Group> = groups
        .into_values()
        .map(|mut g| {
            // RFC 3339 UTC times of one format sort as text.
            g.dirs.sort_by(|a, b| (&a.detected_at, &a.dir).cmp(&(&b.detected_at, &b.dir)));
            g.count = g.dirs.len();
            g.hosts = g.dirs.iter().map(|d| d.host.clone()).collect::<BTreeSet<_>>().into_iter().collect();
            g.kernel_releases =
                g.dirs.iter().filter_map(|d| d.kernel_release.clone()).collect::<BTreeSet<_>>().into_iter().collect();
            let seen: Vec<&String> = g.dirs.iter().filter_map(|d| d.detected_at.as_ref()).collect();
            g.first_seen = seen.iter().min().map(|s| s.to_string());
            g.last_seen = seen.iter().max().map(|s| s.to_string());
            g
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| b.last_seen.cmp(&a.last_seen)));
    Ok(out)
}

/// The crash directories of one signature in the store that hold a vmcore.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmcoreCount {
    /// Directories (`HOST/DIR`) with a `vmcore` or `vmcore.kdump` object.
    pub count: usize,
    /// The URL of the oldest of them (directory names begin with the crash's time).
    pub first: Option<String>,
}

/// How many crash directories of `signature` under `target` hold a vmcore: one listing of
/// `PREFIX/SIGNATURE-ID/` (a directory still being delivered counts once its vmcore is there).
pub fn count_vmcores(target: &Target, signature: &str) -> Result<VmcoreCount, DeliveryError> {
    runtime()?.block_on(count_async(target, signature))
}

async fn count_async(target: &Target, signature: &str) -> Result<VmcoreCount, DeliveryError> {
    let store = target.store()?;
    let prefix = target.key(signature);
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let mut dirs: BTreeSet<(String, String)> = BTreeSet::new();
    for m in &objects {
        let rel = target.relative(m.location.as_ref());
        if let [sig, host, dir, "vmcore" | "vmcore.kdump"] = rel.split('/').collect::<Vec<_>>().as_slice() {
            if *sig == signature {
                dirs.insert((dir.to_string(), host.to_string()));
            }
        }
    }
    let first = dirs.first().map(|(dir, host)| target.url_of(&format!("{signature}/{host}/{dir}")));
    Ok(VmcoreCount { count: dirs.len(), first })
}

/// Download the crash directory at `url` (`<target>/<signature id>/<host>/<dir>`) into
/// `dest/<dir>` (written under a temporary name, then renamed); returns that path. Only a
/// complete directory (its report.json is there) is fetched. Like a crash directory it is
/// owner-only whatever the umask: the directory 0700, its files 0600, and `dest` 0700 where it
/// is created here.
pub fn fetch(url: &str, dest: &Path) -> Result<PathBuf, DeliveryError> {
    let target = Target::parse(url)?;
    runtime()?.block_on(fetch_async(&target, dest))
}

async fn fetch_async(target: &Target, dest: &Path) -> Result<PathBuf, DeliveryError> {
    let name = target
        .url
        .rsplit('/')
        .next()
        .filter(|n| crate::spool::is_safe_component(n))
        .ok_or_else(|| DeliveryError::Url { url: target.url.clone(), reason: "names no crash directory".into() })?
        .to_owned();
    let prefix = target.key("");
    let store = target.store()?;
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let mut files: Vec<(String, object_store::path::Path)> = objects
        .into_iter()
        .filter_map(|m| {
            let rel = target.relative(m.location.as_ref()).to_owned();
            (!rel.contains('/') && crate::spool::is_safe_component(&rel)).then_some((rel, m.location))
        })
        .collect();
    if !files.iter().any(|(n, _)| n == REPORT) {
        return Err(DeliveryError::Incomplete(target.url.clone()));
    }
    files.sort_by_key(|(n, _)| n == REPORT);
    private::create_dir_all(dest).map_err(io("create", dest))?;
    let final_dir = dest.join(&name);
    if final_dir.exists() {
        return Err(DeliveryError::Other(format!("{} exists", final_dir.display())));
    }
    let tmp = dest.join(format!(".tmp-fetch-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
    }
    private::create_dir(&tmp).map_err(io("create", &tmp))?;
    for (file, key) in files {
        let path = tmp.join(&file);
        let mut out = private::create_file(&path).map_err(io("create", &path))?;
        let mut s = store.get(&key).await?.into_stream();
        while let Some(chunk) = s.next().await {
            out.write_all(&chunk?).map_err(io("write", &path))?;
        }
        out.sync_all().map_err(io("sync", &path))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io("rename to", &final_dir))?;
    Ok(final_dir)
}
