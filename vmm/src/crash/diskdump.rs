//! The kdump-compressed host-side vmcore (`--vmcore-format kdump`, the default): guest RAM
//! classified from the guest's own VMCOREINFO and struct pages, and written, compressed on all
//! cores, by the `kdump` crate, which reads guest memory through [`RegionMem`].

use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use kdump::classify::{Classification, ClassifyOptions, DL_ZERO};
use kdump::diskdump::{Compression, KdumpOptions, NoteSet};
use kdump::vmcoreinfo::VmcoreInfo;
use kdump::{KdumpError, OutOfRange, PhysMem};

use super::vmcore::{
    self, FilterSummary, Region, VcpuState, VmcoreCompression, VmcoreError, VmcoreInfoNote, VmcoreOptions,
    VmcoreSummary,
};

/// zlib level for kdump files: level 1 (what `makedumpfile -c` uses) makes a larger file with
/// the pure-Rust deflate than makedumpfile's; 6 is smaller and still fast enough.
const ZLIB_LEVEL: u32 = 6;

/// Guest RAM as the `kdump` crate reads it: the host mappings of the regions, bounds-checked.
pub(super) struct RegionMem<'a>(&'a [Region<'a>]);

impl<'a> RegionMem<'a> {
    pub(super) fn new(regions: &'a [Region<'a>]) -> Self {
        Self(regions)
    }

    /// The region holding `[paddr, paddr + len)` whole, and the range's offset in it.
    fn locate(&self, paddr: u64, len: usize) -> Option<(&Region<'a>, usize)> {
        let r = &self.0[self.0.partition_point(|r| r.gpa <= paddr).checked_sub(1)?];
        let off = usize::try_from(paddr - r.gpa).ok()?;
        off.checked_add(len).is_some_and(|end| end <= r.bytes.len()).then_some((r, off))
    }
}

impl PhysMem for RegionMem<'_> {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let (r, off) = self.locate(paddr, buf.len()).ok_or(OutOfRange { paddr, len: buf.len() })?;
        r.read_into(off, buf);
        Ok(())
    }

    /// The mapping itself, unless a live snapshot must patch what is read.
    fn slice(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        let (r, off) = self.locate(paddr, len)?;
        r.snapshot.is_none().then(|| &r.bytes[off..off + len])
    }
}

/// Which pages `level` keeps. A classification that fails as a whole (guest memory that makes
/// no sense) falls back to zero pages only, and its report says so: a page is never dropped on
/// a guess.
pub(super) fn classify(
    regions: &[Region<'_>],
    info: Option<&VmcoreInfo>,
    level: u8,
) -> Result<Classification, KdumpError> {
    let (mem, ram) = (RegionMem(regions), vmcore::ram(regions));
    let opts = ClassifyOptions::default();
    match kdump::classify::classify(&mem, &ram, info, level, &opts) {
        Ok(c) => Ok(c),
        Err(e) => {
            log::warn!("page classification failed ({e}); only zero pages are left out");
            let mut c = kdump::classify::classify(&mem, &ram, None, level & DL_ZERO, &opts)?;
            c.report.notes.push(format!("classification failed ({e}): only zero pages excluded"));
            Ok(c)
        }
    }
}

/// Writes the kdump-compressed vmcore of `regions` to `path`.
#[allow(clippy::too_many_arguments)]
pub(super) fn write(
    regions: &[Region<'_>],
    pagemap: Option<&vmcore::Pagemap>,
    vcpus: &[VcpuState],
    vmcoreinfo: Option<VmcoreInfoNote>,
    path: &Path,
    opts: &VmcoreOptions,
    started: Instant,
) -> Result<VmcoreSummary, VmcoreError> {
    let kdump_err = |source| VmcoreError::Kdump { path: path.to_path_buf(), source };
    let write_err = |source| VmcoreError::Write { path: path.to_path_buf(), source };
    let info = vmcoreinfo.as_ref().map(VmcoreInfoNote::info);
    let classification = classify(regions, info.as_ref(), opts.spec.dump_level).map_err(kdump_err)?;
    let notes = NoteSet::new(
        &kdump::elfcore::notes(&vmcore::cpu_states(vcpus), None),
        vmcoreinfo.as_ref().map(|n| n.text.as_str()),
    );
    let file = crate::files::create_private(path)
        .map_err(|source| VmcoreError::Create { path: path.to_path_buf(), source })?;
    let total = classification.dumpable.count().saturating_mul(kdump::PAGE_SIZE);
    let bar = vmcore::progress_bar(total, opts.progress);
    let progress = |done: u64, total: u64| {
        bar.set_position(done);
        if let Some(report) = opts.on_progress {
            report(done, total);
        }
    };
    let compression = match opts.spec.compression {
        VmcoreCompression::Zlib => Compression::Zlib { level: ZLIB_LEVEL },
        VmcoreCompression::Lzo => Compression::Lzo,
        VmcoreCompression::None => Compression::None,
    };
    // Pages the host never backed are zero: not read (a read would fault each one in).
    let holds_data = vmcore::data_pages(regions, pagemap, classification.valid.len());
    let kopts = KdumpOptions { compression, threads: 0, on_progress: Some(&progress), holds_data: holds_data.as_ref() };
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let summary =
        kdump::diskdump::write_kdump(&mut out, &RegionMem(regions), &classification, info.as_ref(), &notes, &kopts)
            .map_err(kdump_err)?;
    out.flush().map_err(write_err)?;
    drop(out);
    file.sync_all().map_err(|source| VmcoreError::Sync { path: path.to_path_buf(), source })?;
    bar.finish_and_clear();
    let sha256 = match opts.sha256 {
        true => Some(
            super::report::sha256_file(path).map_err(|e| write_err(std::io::Error::other(crate::error::chain(&e))))?,
        ),
        false => None,
    };
    let meta = file.metadata().map_err(write_err)?;
    log::debug!(
        "vmcore {}: kdump, level {} of {}, {} of {} pages written, {} bytes",
        path.display(),
        summary.effective_level,
        summary.requested_level,
        summary.written_pages,
        summary.total_pages,
        meta.len()
    );
    Ok(VmcoreSummary {
        path: path.to_path_buf(),
        bytes: meta.len(),
        allocated_bytes: meta.blocks().saturating_mul(512),
        sha256,
        duration: started.elapsed(),
        vmcoreinfo,
        spec: opts.spec,
        filter: Some(FilterSummary::Kdump(Box::new(summary))),
    })
}
