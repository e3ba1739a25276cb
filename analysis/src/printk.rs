//! The kernel log from guest memory. TODO(helper A).

use kdump::{PhysMem, VmcoreInfo};

use crate::{AnalysisError, KernelMem};

/// One log record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub ts_nsec: u64,
    /// `caller_id`: a task's PID, or `0x80000000 | cpu` in an interrupt context.
    pub caller_id: u32,
    pub level: u8,
    pub facility: u8,
    /// The text, raw bytes (one record may hold several lines).
    pub text: Vec<u8>,
}

pub fn read_log<M: PhysMem + ?Sized>(
    _kmem: &KernelMem<'_, M>,
    _info: &VmcoreInfo,
) -> Result<Vec<Record>, AnalysisError> {
    Err(AnalysisError::Missing("TODO".into()))
}

/// The log as `makedumpfile --dump-dmesg` prints it.
pub fn format_dmesg(_records: &[Record]) -> String {
    String::new()
}
