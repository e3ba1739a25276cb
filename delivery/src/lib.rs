//! Delivery of crash directories to an object store (`--upload URL`), and the fleet view of one
//! (`crashvmm crashes URL`, `crashvmm fetch URL/...`).
//!
//! A finished crash directory is queued in an on-disk spool (`<crash-dir>/.upload/`); an
//! [`Uploader`] takes jobs oldest first and uploads each directory under
//! `<prefix>/<signature id>/<host>/<dir>/`: the small files first, then the big ones (the
//! vmcore) as a multipart upload of parallel parts, `report.json` last, so that a reader that
//! only believes directories with a `report.json` never sees a crash without its files. Every
//! object carries its SHA-256 as metadata (`sha256`); an object already there with the same size
//! and checksum is never uploaded again. The job file records each file done and, for a
//! multipart upload, its upload id and the parts the store acknowledged, so that a restart
//! resumes the same upload (S3, GCS, Azure: `MultipartStore`) where it stopped. Beside the
//! directories the uploader keeps the store's [`index`], which the fleet view and the
//! per-signature vmcore count list instead of every object.

mod error;
mod fleet;
pub mod index;
pub mod private;
mod spool;
mod target;
mod upload;

pub use error::DeliveryError;
pub use fleet::{count_vmcores, fetch, list_crashes, CrashEntry, Group, VmcoreCount};
pub use spool::{FileState, Job, JobMeta, MultipartState, Refused, Spool};
pub use target::{Scheme, Target};
pub use upload::{DeliveryEvent, StopSignal, Uploader, UploaderConfig};

/// Files uploaded last: their presence says the directory is complete.
pub const REPORT: &str = "report.json";

/// Whether a crash directory's file named `name` is its vmcore.
pub fn is_vmcore(name: &str) -> bool {
    matches!(name, "vmcore" | "vmcore.kdump")
}
