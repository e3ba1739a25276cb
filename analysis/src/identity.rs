//! The crashed kernel's identity. TODO(helper A).

use kdump::{PhysMem, VmcoreInfo};

use crate::kallsyms::Kallsyms;
use crate::printk::Record;
use crate::{Identity, KernelMem, Unread};

pub fn read<M: PhysMem + ?Sized>(
    _kmem: &KernelMem<'_, M>,
    _info: &VmcoreInfo,
    _syms: Option<&Kallsyms>,
    _log: &[Record],
) -> (Identity, Vec<Unread>) {
    (Identity::default(), Vec::new())
}
