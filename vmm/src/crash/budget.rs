//! `--crash-dir-max`: the crash directory's disk budget.
//!
//! Before a vmcore is written into a crash directory, the most it can take on disk (its
//! format's bound for the guest's memory, [`super::vmcore::max_bytes`], or the crash disk's
//! data for the guest's own kdump) is set against what the crash directory already holds
//! (allocated blocks, everything under it: crash directories, the spool, unfinished ones).
//! Where the sum is over the budget, crash directories the store has confirmed (the spool's
//! `done/`, with `--upload`) go, oldest first, as few as make room; a directory still queued,
//! never delivered, or being written is never a candidate. Where even all of them would not
//! make room, none is removed and the crash keeps its report, kernel log and console without
//! a vmcore: its `report.json` says why.

use std::path::{Path, PathBuf};

/// A crash directory that may go to make room: delivered, and not the crash being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    /// What it takes on disk.
    pub bytes: u64,
}

/// Not enough room even with every candidate gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// What the budget leaves once every candidate is gone.
    pub available: u64,
}

/// Which of `candidates` (oldest first) to remove, the oldest first, so that `used - removed +
/// needed <= max`: the shortest prefix that does. None when nothing needs to go.
pub fn plan(max: u64, used: u64, needed: u64, candidates: &[Candidate]) -> Result<usize, Shortfall> {
    let mut left = used;
    for n in 0..=candidates.len() {
        if left.saturating_add(needed) <= max {
            return Ok(n);
        }
        if let Some(c) = candidates.get(n) {
            left = left.saturating_sub(c.bytes);
        }
    }
    Err(Shortfall { available: max.saturating_sub(left) })
}

/// What `path` takes on disk: its allocated blocks and, for a directory, those of everything
/// under it (symbolic links are not followed). What cannot be read counts as nothing.
pub fn usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks().saturating_mul(512);
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return own };
    entries.filter_map(Result::ok).fold(own, |sum, e| sum.saturating_add(usage(&e.path())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(sizes: &[u64]) -> Vec<Candidate> {
        sizes.iter().enumerate().map(|(i, &bytes)| Candidate { path: PathBuf::from(format!("d{i}")), bytes }).collect()
    }

    #[test]
    fn the_oldest_go_first_and_no_more_than_make_room() {
        let c = dirs(&[30, 20, 10]);
        // Room already: nothing goes.
        assert_eq!(plan(100, 60, 40, &c), Ok(0));
        // 10 over: the oldest alone makes room, though a younger one would too.
        assert_eq!(plan(100, 70, 40, &c), Ok(1));
        assert_eq!(plan(100, 95, 40, &c), Ok(2));
        assert_eq!(plan(100, 115, 40, &c), Ok(3));
        // Not even all of them: none goes, and what all of them would leave is said.
        assert_eq!(plan(100, 125, 40, &c), Err(Shortfall { available: 35 }));
        assert_eq!(plan(100, 10, 200, &[]), Err(Shortfall { available: 90 }));
        assert_eq!(plan(100, 200, 0, &[]), Err(Shortfall { available: 0 }));
    }

    #[test]
    fn usage_counts_allocated_blocks_under_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/data"), vec![1u8; 64 << 10]).unwrap();
        // A sparse file takes (almost) nothing.
        std::fs::File::create(d.path().join("a/sparse")).unwrap().set_len(1 << 30).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("a/link")).unwrap();
        let all = usage(d.path());
        assert!(all >= 64 << 10, "{all}");
        assert!(all < 1 << 20, "{all}");
        assert_eq!(usage(&d.path().join("missing")), 0);
    }
}
