//! Power-off the way a hardware-reduced ACPI platform describes it: the FADT's
//! SLEEP_CONTROL_REG (a Generic Address: an I/O port under crashvmm, MMIO under QEMU's
//! microvm) gets `(SLP_TYP << 2) | SLP_EN`, with SLP_TYP 5 from the `\_S5` both platforms
//! declare. Without a usable FADT, crashvmm's register at port 0x600 (devices/src/acpi_pm.rs).
//! And the MADT's local APICs, for the counter scenario's AP start-up (smp.rs).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::outb;

/// crashvmm's ACPI sleep control port and the soft-off value `(SLP_TYP 5 << 2) | SLP_EN`.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_S5_SLP_TYP: u8 = 5;
pub const ACPI_SLP_TYP_SHIFT: u8 = 2;
pub const ACPI_SLP_EN: u8 = 1 << 5;
pub const S5_SLEEP_CONTROL: u8 = (ACPI_S5_SLP_TYP << ACPI_SLP_TYP_SHIFT) | ACPI_SLP_EN;

/// FADT offsets (ACPI 6.x, table 5.9): Flags, SLEEP_CONTROL_REG.
const FADT_FLAGS: u64 = 112;
const FADT_SLEEP_CONTROL_REG: u64 = 244;
const FADT_MIN_LENGTH: u32 = 256;
/// FADT flag HW_REDUCED_ACPI.
const HW_REDUCED_ACPI: u32 = 1 << 20;
/// Generic Address Structure address spaces.
const GAS_SYSTEM_MEMORY: u8 = 0;
const GAS_SYSTEM_IO: u8 = 1;
/// MADT offsets (ACPI 6.x, table 5.43): Local Interrupt Controller Address, the first
/// interrupt controller structure; the Processor Local APIC structure's type and its
/// Enabled flag.
const MADT_LAPIC_ADDR: u64 = 36;
const MADT_ENTRIES: u64 = 44;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_ENABLED: u32 = 1;
/// Tables scanned at most (XSDT entries).
const MAX_TABLES: u64 = 64;

static RSDP: AtomicU64 = AtomicU64::new(0);

/// Remember the RSDP the loader named (`hvm_start_info.rsdp_paddr`).
pub fn set_rsdp(paddr: u64) {
    RSDP.store(paddr, Ordering::Relaxed);
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: firmware tables in identity-mapped low memory, read unaligned.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// The first table with signature `sig` the XSDT (or RSDT) names, below 4 GiB.
fn find_table(sig: &[u8; 4]) -> Option<u64> {
    let rsdp = RSDP.load(Ordering::Relaxed);
    if rsdp == 0 || read::<[u8; 8]>(rsdp) != *b"RSD PTR " {
        return None;
    }
    // ACPI 2.0+: the XSDT (64-bit entries); else the RSDT (32-bit entries).
    let (table, entry_size) =
        if read::<u8>(rsdp + 15) >= 2 { (read::<u64>(rsdp + 24), 8) } else { (read::<u32>(rsdp + 16) as u64, 4) };
    if table == 0 || table >= 1 << 32 {
        return None;
    }
    let entries = (read::<u32>(table + 4) as u64).saturating_sub(36) / entry_size;
    (0..entries.min(MAX_TABLES))
        .map(|i| table + 36 + i * entry_size)
        .map(|e| if entry_size == 8 { read::<u64>(e) } else { read::<u32>(e) as u64 })
        .find(|&t| t != 0 && t < 1 << 32 && read::<[u8; 4]>(t) == *sig)
}

/// The local APICs of the MADT: its local APIC address and the ids of the enabled Processor
/// Local APIC entries (type 0), at most `ids.len()` of them, in table order; the number found
/// is returned. `None` without a MADT.
pub fn local_apics(ids: &mut [u8]) -> Option<(u64, usize)> {
    let madt = find_table(b"APIC")?;
    let len = read::<u32>(madt + 4) as u64;
    let lapic_addr = read::<u32>(madt + MADT_LAPIC_ADDR) as u64;
    let (mut off, mut n) = (MADT_ENTRIES, 0);
    while off + 2 <= len && n < ids.len() {
        let (kind, entry_len) = (read::<u8>(madt + off), read::<u8>(madt + off + 1) as u64);
        if entry_len < 2 || off + entry_len > len {
            break;
        }
        if kind == MADT_LOCAL_APIC && entry_len >= 8 && read::<u32>(madt + off + 4) & MADT_ENABLED != 0 {
            ids[n] = read::<u8>(madt + off + 3);
            n += 1;
        }
        off += entry_len;
    }
    Some((lapic_addr, n))
}

/// The FADT's sleep control register: (address space, address), for a hardware-reduced FADT.
pub fn sleep_control_reg() -> Option<(u8, u64)> {
    let fadt = find_table(b"FACP")?;
    if read::<u32>(fadt + 4) < FADT_MIN_LENGTH || read::<u32>(fadt + FADT_FLAGS) & HW_REDUCED_ACPI == 0 {
        return None;
    }
    let gas = fadt + FADT_SLEEP_CONTROL_REG;
    Some((read::<u8>(gas), read::<u64>(gas + 4)))
}

/// Ask the platform to power off (returns if it did not).
pub fn power_off() {
    match sleep_control_reg() {
        Some((GAS_SYSTEM_IO, port)) if port <= u16::MAX as u64 => outb(port as u16, S5_SLEEP_CONTROL),
        Some((GAS_SYSTEM_MEMORY, addr)) if addr != 0 && addr < 1 << 32 => {
            // SAFETY: the FADT names this MMIO register (identity mapped, uncached above
            // 3 GiB); a byte write is what SLEEP_CONTROL_REG takes.
            unsafe { core::ptr::write_volatile(addr as *mut u8, S5_SLEEP_CONTROL) }
        }
        _ => outb(ACPI_SLEEP_CONTROL_PORT, S5_SLEEP_CONTROL),
    }
}
