//! The fleet view: what a store holds, grouped by signature, and fetching one crash directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use object_store::list::PaginatedListOptions;
use object_store::ObjectStoreExt;

use crate::error::{chain, io};
use crate::target::Target;
use crate::{index, private, DeliveryError, REPORT};

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

/// The complete crash directories under `target`, grouped by signature id, the biggest group
/// first: one listing of the store's index (`crate::index`, a key per directory) and, for each
/// group, its newest report.json for the title. A title that cannot be read is left out with a
/// warning naming it. Directories delivered without the index are not listed.
pub fn list_crashes(target: &Target) -> Result<Vec<Group>, DeliveryError> {
    runtime()?.block_on(list_async(target))
}

async fn list_async(target: &Target) -> Result<Vec<Group>, DeliveryError> {
    let store = target.store()?;
    let prefix = target.key(index::CRASHES_PREFIX);
    let mut groups: BTreeMap<String, Vec<index::Entry>> = BTreeMap::new();
    let mut listing = store.list(Some(&prefix));
    while let Some(m) = listing.try_next().await? {
        let rel = target.relative(m.location.as_ref());
        match index::parse_crash_key(rel) {
            Some(e) => groups.entry(e.signature.clone()).or_default().push(e),
            None => log::warn!("skipping {}: not an index entry", target.url_of(rel)),
        }
    }
    // Directory names begin with the crash's time: the newest directory's report names the
    // group's title (a signature's title is what its id was made from).
    let titles: BTreeMap<String, Option<String>> =
        futures::stream::iter(groups.values().filter_map(|g| g.iter().max_by(|a, b| a.dir.cmp(&b.dir))).map(|e| {
            let store = store.clone();
            let key = target.key(&format!("{}/{REPORT}", e.dir_key()));
            let signature = e.signature.clone();
            async move {
                let report = async {
                    let bytes = store.get(&key).await?.bytes().await?;
                    crash_report::from_slice::<crash_report::Report>(&bytes)
                        .map_err(|source| DeliveryError::Report { path: key.to_string(), source })
                };
                let title = match report.await {
                    Ok(r) => r.signature.and_then(|s| s.title),
                    Err(e) => {
                        log::warn!("no title for {signature}: {}", chain(&e));
                        None
                    }
                };
                (signature, title)
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    let mut out: Vec<Group> = groups
        .into_iter()
        .map(|(signature_id, entries)| {
            let mut dirs: Vec<CrashEntry> = entries
                .iter()
                .map(|e| CrashEntry {
                    url: target.url_of(&e.dir_key()),
                    host: e.host.clone(),
                    dir: e.dir.clone(),
                    detected_at: e.detected_at(),
                    kernel_release: e.kernel_release.clone(),
                })
                .collect();
            dirs.sort_by(|a, b| (&a.dir, &a.host).cmp(&(&b.dir, &b.host)));
            let set = |f: &dyn Fn(&CrashEntry) -> Option<&String>| {
                dirs.iter().filter_map(f).cloned().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>()
            };
            let seen = set(&|d| d.detected_at.as_ref());
            Group {
                title: titles.get(&signature_id).cloned().flatten(),
                signature_id,
                count: dirs.len(),
                hosts: set(&|d| Some(&d.host)),
                first_seen: seen.first().cloned(),
                last_seen: seen.last().cloned(),
                kernel_releases: set(&|d| d.kernel_release.as_ref()),
                dirs,
            }
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| b.last_seen.cmp(&a.last_seen)));
    Ok(out)
}

/// The crash directories of one signature in the store that hold a vmcore.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmcoreCount {
    /// Directories (`HOST/DIR`) with a vmcore, counted up to the `at_most` asked for.
    pub count: usize,
    /// The URL of the oldest of them (directory names begin with the crash's time).
    pub first: Option<String>,
}

/// How many crash directories of `signature` under `target` hold a vmcore, counting no further
/// than `at_most`: a page of at most `at_most` keys of the index's
/// `.index/vmcores/SIGNATURE-ID/` (a directory still being delivered counts once its vmcore is
/// there), so the time does not grow with the signature's crashes.
pub fn count_vmcores(target: &Target, signature: &str, at_most: usize) -> Result<VmcoreCount, DeliveryError> {
    runtime()?.block_on(count_async(target, signature, at_most))
}

async fn count_async(target: &Target, signature: &str, at_most: usize) -> Result<VmcoreCount, DeliveryError> {
    // The vmcore entries seen: (dir, host).
    let mut dirs: Vec<(String, String)> = Vec::new();
    let take = |dirs: &mut Vec<(String, String)>, key: &object_store::path::Path| {
        if let Some((dir, host)) = index::parse_vmcore_key(target.relative(key.as_ref()), signature) {
            dirs.push((dir.to_owned(), host.to_owned()));
        }
    };
    if let Some(pages) = target.pages() {
        // Object stores list in key order, oldest first here: pages of what is still wanted.
        let prefix = format!("{}/", target.key(&index::vmcores_prefix(signature)));
        let mut token = None;
        loop {
            let wanted = at_most.saturating_sub(dirs.len());
            if wanted == 0 {
                break;
            }
            let opts = PaginatedListOptions {
                max_keys: Some(wanted.min(1000)),
                page_token: token.take(),
                ..Default::default()
            };
            let page = pages.list_paginated(Some(&prefix), opts).await?;
            page.result.objects.iter().for_each(|m| take(&mut dirs, &m.location));
            match page.page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
    } else {
        // A local directory's listing has no order: all of it.
        let mut listing = target.store()?.list(Some(&target.key(&index::vmcores_prefix(signature))));
        while let Some(m) = listing.try_next().await? {
            take(&mut dirs, &m.location);
        }
    }
    dirs.sort_unstable();
    Ok(VmcoreCount {
        count: dirs.len().min(at_most),
        first: dirs.first().map(|(dir, host)| target.url_of(&format!("{signature}/{host}/{dir}"))),
    })
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
