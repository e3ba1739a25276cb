//! The kexec of the kdump scenario: copy this image into the memory reserved for the crash
//! kernel (`testguest.crashkernel=SIZE@ADDR`, default [`DEFAULT_SIZE`]@[`DEFAULT_BASE`]) and
//! jump to the copy's entry, which relocates itself and runs from there (boot.rs).

use core::arch::asm;

use crate::boot;
use crate::start_info::{param, parse_u64, StartInfo};

/// Default crash kernel region: 4 MiB at 16 MiB (the first stage lives below 2 MiB).
pub const DEFAULT_BASE: u64 = 16 << 20;
pub const DEFAULT_SIZE: u64 = 4 << 20;
/// The copy must keep the image's page alignment.
pub const REGION_ALIGN: u64 = 4096;

/// The reserved region.
#[derive(Clone, Copy)]
pub struct Region {
    pub base: u64,
    pub size: u64,
}

impl Region {
    fn overlaps(&self, start: u64, len: u64) -> bool {
        len != 0 && start < self.base + self.size && self.base < start + len
    }
}

/// `testguest.crashkernel=SIZE@ADDR` (Linux's `crashkernel=` syntax), or the default.
pub fn region(cmdline: &[u8]) -> Option<Region> {
    let Some(v) = param(cmdline, "testguest.crashkernel") else {
        return Some(Region { base: DEFAULT_BASE, size: DEFAULT_SIZE });
    };
    let at = v.iter().position(|&b| b == b'@')?;
    Some(Region { size: parse_u64(&v[..at])?, base: parse_u64(&v[at + 1..])? })
}

/// Why the region cannot take the image, if it cannot.
pub fn validate(r: &Region, si: &StartInfo) -> Result<(), &'static str> {
    let (start, end) = boot::image_range();
    if !r.base.is_multiple_of(REGION_ALIGN) {
        return Err("crash kernel region is not page aligned");
    }
    if end - start > r.size {
        return Err("crash kernel region is smaller than the image");
    }
    if !si.is_ram(r.base, r.size) {
        return Err("crash kernel region is not RAM in the memory map");
    }
    let (_, stack_end) = boot::image_extent();
    if r.overlaps(start, stack_end - start) {
        return Err("crash kernel region overlaps the running image");
    }
    if r.overlaps(si.paddr, 4096) || r.overlaps(si.cmdline_paddr, 4096) {
        return Err("crash kernel region overlaps the start info or command line");
    }
    for i in 0..si.nr_modules {
        let (addr, size) = si.module(i);
        if r.overlaps(addr, size) {
            return Err("crash kernel region overlaps a boot module");
        }
    }
    Ok(())
}

/// Copy the image to `r.base` and jump to the copy's stage-2 entry with the start info, this
/// image's base and its failed checks. Interrupts are off; nothing returns.
pub fn kexec(r: &Region, start_info: u64, failures: u32) -> ! {
    let (start, end) = boot::image_range();
    // SAFETY: validate() made sure the destination is RAM that neither this image, the start
    // info nor any module uses; source and destination do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, r.base as *mut u8, (end - start) as usize) };
    let entry = r.base + boot::stage2_entry_offset();
    // SAFETY: `entry` is the copy's tg_stage2_entry, which takes RDI, RSI, RDX and never
    // returns; it sets up its own stack, page tables and GDT.
    unsafe {
        asm!("jmp {entry}", entry = in(reg) entry, in("rdi") start_info, in("rsi") start,
             in("rdx") failures as u64, options(noreturn))
    }
}
