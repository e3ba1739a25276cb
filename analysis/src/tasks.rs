//! The task list and the blocked (D-state) tasks, through BTF. TODO(helper C).

use kdump::{PhysMem, VmcoreInfo};

use crate::kallsyms::Kallsyms;
use crate::{AnalysisError, KernelMem, Task};

pub fn blocked<M: PhysMem + ?Sized>(
    _kmem: &KernelMem<'_, M>,
    _info: &VmcoreInfo,
    _syms: &Kallsyms,
) -> Result<Vec<Task>, AnalysisError> {
    Err(AnalysisError::Missing("TODO".into()))
}
