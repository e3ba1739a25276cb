//! Guest physical memory layout and the e820 map.
//!
//! ```text
//! 0x0000_0500  GDT                 0x0000_7000  boot_params (zero page)
//! 0x0000_0520  IDT                 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 page directories (identity map of 4 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  end of low RAM (EBDA and legacy hole above, not RAM)
//! 0x000e_0000  ACPI tables (RSDP first), reserved in e820 up to 1 MiB
//! 0x0010_0000  RAM: kernel, then initrd at the top of low RAM
//! 0xc000_0000  MMIO hole up to 4 GiB: the PCI window (BARs, 256 MiB), virtio-mmio windows from
//!              0xd000_0000 (one page each), IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000  RAM above 4 GiB, when the guest has more than 3 GiB
//! ```

use vm_memory::GuestAddress;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// PVH boot: `hvm_start_info` (in place of the zero page), its memory map and module list.
pub const PVH_START_INFO_ADDR: u64 = ZERO_PAGE_ADDR;
pub const PVH_MEMMAP_ADDR: u64 = ZERO_PAGE_ADDR + 0x40;
pub const PVH_MODLIST_ADDR: u64 = ZERO_PAGE_ADDR + 0x800;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
/// Four page directories, one per GiB identity-mapped at boot.
pub const PD_ADDR: u64 = 0xb000;
pub const IDENTITY_MAPPED_GIB: u64 = 4;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line we accept (the kernel's own limit, `COMMAND_LINE_SIZE`, is 2048 on
/// x86 and the setup header's `cmdline_size` tells the real one).
pub const CMDLINE_MAX: usize = 2048;
pub const EBDA_START: u64 = 0x9_fc00;
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Where PCI functions' BARs lie (the host bridge's memory window in the DSDT): below the
/// virtio-mmio windows.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_SIZE: u64 = 0x1000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the TSS on Intel; put them just under the BIOS area.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;

// The fixed boot areas must not overlap: checked when compiling.
const _: () = assert!(GDT_ADDR + 4 * 8 <= IDT_ADDR);
const _: () = assert!(ZERO_PAGE_ADDR + 4096 <= BOOT_STACK_TOP);
const _: () = assert!(BOOT_STACK_TOP < PML4_ADDR);
const _: () = assert!(PD_ADDR + IDENTITY_MAPPED_GIB * 4096 <= CMDLINE_ADDR);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= EBDA_START);
const _: () = assert!(PCI_MMIO_START + PCI_MMIO_SIZE <= crate::disk::VIRTIO_MMIO_BASE);

/// Smallest guest we start.
pub const MIN_MEMORY: u64 = 32 << 20;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM ranges (start, size) for a guest of `mem_size` bytes: RAM below the MMIO hole,
/// the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if mem_size > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), (mem_size - low) as usize));
    }
    ranges
}

/// End of RAM below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

/// The e820 map Linux gets for a guest of `mem_size` bytes (at least [`MIN_MEMORY`]).
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry { addr: 0, size: EBDA_START, kind: E820_RAM },
        E820Entry { addr: ACPI_START, size: ACPI_END - ACPI_START, kind: E820_RESERVED },
        E820Entry { addr: HIMEM_START, size: low_ram_end(mem_size) - HIMEM_START, kind: E820_RAM },
    ];
    if mem_size > MMIO_HOLE_START {
        map.push(E820Entry { addr: MMIO_HOLE_END, size: mem_size - MMIO_HOLE_START, kind: E820_RAM });
    }
    map
}

/// COM1: its ports and ISA interrupt.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
pub const COM1_GSI: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_no_high_ram() {
        let mem = 512 << 20;
        assert_eq!(ram_ranges(mem), vec![(GuestAddress(0), mem as usize)]);
        let map = e820_map(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2], E820Entry { addr: HIMEM_START, size: mem - HIMEM_START, kind: E820_RAM });
        let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let mem = 6u64 << 30;
        assert_eq!(
            ram_ranges(mem),
            vec![
                (GuestAddress(0), MMIO_HOLE_START as usize),
                (GuestAddress(1 << 32), (mem - MMIO_HOLE_START) as usize)
            ]
        );
        let map = e820_map(mem);
        assert_eq!(map.last().unwrap(), &E820Entry { addr: 1 << 32, size: 3 << 30, kind: E820_RAM });
        for e in &map {
            let end = e.addr + e.size;
            assert!(end <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END, "{e:?} overlaps the hole");
        }
    }
}
