//! The store's index: empty objects whose keys say what the fleet view and the duplicate count
//! need, so that neither reads every object (or every report.json) of a big store.
//!
//! Beside each crash directory `PREFIX/SIGNATURE-ID/HOST/DIR/` the uploader puts
//!
//! - `PREFIX/.index/vmcores/SIGNATURE-ID/DIR/HOST` once the directory's vmcore is in the store
//!   (before its report.json): a listing of `.index/vmcores/SIGNATURE-ID/` gives that
//!   signature's directories with a vmcore, oldest first (a directory's name begins with the
//!   crash's UTC time), one key each;
//! - `PREFIX/.index/crashes/SIGNATURE-ID/DIR/HOST/KERNEL` once its report.json is (the
//!   directory is complete): a listing of `.index/crashes/` gives every crash's signature, time,
//!   host and guest kernel release, one key each. `KERNEL` is the release with every byte but
//!   `[A-Za-z0-9.-]` written `_XX` (hex), or `_` when the report has none.
//!
//! Crash directories delivered by a crashvmm without the index are not in it.

use chrono::{NaiveDateTime, SecondsFormat};

use crate::spool::is_safe_component;

/// The index's folder under the store's prefix.
pub const INDEX: &str = ".index";

/// The key (relative to the prefix) of a directory's "has a vmcore" entry.
pub fn vmcore_key(signature: &str, dir: &str, host: &str) -> String {
    format!("{INDEX}/vmcores/{signature}/{dir}/{host}")
}

/// The prefix whose listing gives `signature`'s vmcore entries.
pub fn vmcores_prefix(signature: &str) -> String {
    format!("{INDEX}/vmcores/{signature}/")
}

/// The key (relative to the prefix) of a complete directory's entry.
pub fn crash_key(signature: &str, dir: &str, host: &str, kernel_release: Option<&str>) -> String {
    format!("{INDEX}/crashes/{signature}/{dir}/{host}/{}", encode_release(kernel_release))
}

/// The prefix whose listing gives every complete directory's entry.
pub const CRASHES_PREFIX: &str = ".index/crashes/";

/// One crash directory, as its index entry names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub signature: String,
    pub dir: String,
    pub host: String,
    pub kernel_release: Option<String>,
}

impl Entry {
    /// The directory's key relative to the prefix: `SIGNATURE-ID/HOST/DIR`.
    pub fn dir_key(&self) -> String {
        format!("{}/{}/{}", self.signature, self.host, self.dir)
    }

    /// The crash's time from the directory's name (`YYYYMMDDTHHMMSSZ-N`), RFC 3339 UTC.
    pub fn detected_at(&self) -> Option<String> {
        let stamp = self.dir.get(..16)?;
        NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
            .ok()
            .map(|t| t.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

/// A crash entry's key relative to the prefix, or `None` for anything else.
pub fn parse_crash_key(rel: &str) -> Option<Entry> {
    let rest = rel.strip_prefix(CRASHES_PREFIX)?;
    let [signature, dir, host, release] = rest.split('/').collect::<Vec<_>>()[..] else { return None };
    if ![signature, dir, host].iter().all(|c| is_safe_component(c)) {
        return None;
    }
    Some(Entry {
        signature: signature.to_owned(),
        dir: dir.to_owned(),
        host: host.to_owned(),
        kernel_release: decode_release(release)?,
    })
}

/// A vmcore entry's key relative to `vmcores_prefix(signature)`: `(dir, host)`.
pub fn parse_vmcore_key<'a>(rel: &'a str, signature: &str) -> Option<(&'a str, &'a str)> {
    let rest = rel.strip_prefix(&vmcores_prefix(signature))?;
    let (dir, host) = rest.split_once('/')?;
    (is_safe_component(dir) && is_safe_component(host)).then_some((dir, host))
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

fn encode_release(release: Option<&str>) -> String {
    match release {
        None | Some("") => "_".into(),
        Some(r) => r.bytes().map(|b| if plain(b) { char::from(b).to_string() } else { format!("_{b:02X}") }).collect(),
    }
}

/// `None` for a component that is not an encoded release; `Some(None)` for `_`.
fn decode_release(s: &str) -> Option<Option<String>> {
    if s == "_" {
        return Some(None);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if plain(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    (!out.is_empty()).then(|| Some(String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keys_round_trip_any_release() {
        for release in [None, Some("6.1.0-57-cloud-amd64"), Some("5.15.0_rc1+ #1 / ../x\u{1b}[31m"), Some("ü")] {
            let key = crash_key("0123456789abcdef", "20261205T034630Z-001", "host-a", release);
            assert!(key.bytes().all(|b| plain(b) || b == b'_' || b == b'/'), "{key}");
            assert_eq!(key.matches('/').count(), 5, "{key}");
            let e = parse_crash_key(&key).unwrap_or_else(|| panic!("{key}"));
            assert_eq!(e.kernel_release.as_deref(), release, "{key}");
            assert_eq!(e.dir_key(), "0123456789abcdef/host-a/20261205T034630Z-001");
            assert_eq!(e.detected_at().as_deref(), Some("2026-12-05T03:46:30Z"));
        }
    }

    #[test]
    fn other_keys_are_not_entries() {
        for key in [
            ".index/crashes/sig/dir/host",
            ".index/crashes/sig/dir/host/rel/more",
            ".index/crashes/sig/../host/_",
            ".index/crashes/sig/dir/host/_4",
            ".index/crashes/sig/dir/host/_zz",
            ".index/crashes/sig/dir/host/a+b",
            ".index/vmcores/sig/dir/host",
            "sig/host/dir/report.json",
        ] {
            assert_eq!(parse_crash_key(key), None, "{key}");
        }
        assert_eq!(parse_vmcore_key(&vmcore_key("s", "d", "h"), "s"), Some(("d", "h")));
        assert_eq!(parse_vmcore_key(".index/vmcores/s/d/h/x", "s"), None);
        assert_eq!(parse_vmcore_key(".index/vmcores/t/d/h", "s"), None);
        let odd = Entry { signature: "s".into(), dir: "not-a-time".into(), host: "h".into(), kernel_release: None };
        assert_eq!(odd.detected_at(), None);
    }
}
