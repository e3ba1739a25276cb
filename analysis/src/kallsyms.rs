//! The kernel's symbol table from its kallsyms tables in guest memory. TODO(helper B).

use kdump::{PhysMem, VmcoreInfo};

use crate::{AnalysisError, KernelMem};

/// A symbolized address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// The module the address is in, for module addresses.
    pub module: Option<String>,
}

impl Symbol {
    /// `function+0xoff/0xsize`, as the kernel prints it.
    pub fn display(&self) -> String {
        format!("{}+{:#x}/{:#x}", self.name, self.offset, self.size)
    }
}

pub struct Kallsyms {}

impl Kallsyms {
    pub fn read<M: PhysMem + ?Sized>(_kmem: &KernelMem<'_, M>, _info: &VmcoreInfo) -> Result<Self, AnalysisError> {
        Err(AnalysisError::Missing("TODO".into()))
    }

    /// The address of a symbol.
    pub fn lookup(&self, _name: &str) -> Option<u64> {
        None
    }

    /// The symbol an address is in.
    pub fn symbolize(&self, _addr: u64) -> Option<Symbol> {
        None
    }
}
