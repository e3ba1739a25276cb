//! The kernel's ORC unwind tables. TODO(helper B).

use kdump::PhysMem;

use crate::kallsyms::Kallsyms;
use crate::{AnalysisError, KernelMem};

pub struct Orc {}

impl Orc {
    pub fn read<M: PhysMem + ?Sized>(_kmem: &KernelMem<'_, M>, _syms: &Kallsyms) -> Result<Self, AnalysisError> {
        Err(AnalysisError::Missing("TODO".into()))
    }
}
