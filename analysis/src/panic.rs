//! The panic, from the kernel log. TODO(helper A).

use crate::printk::Record;
use crate::Panic;

pub fn from_log(_log: &[Record]) -> Option<Panic> {
    None
}
