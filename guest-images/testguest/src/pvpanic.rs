//! The pvpanic guest driver (`drivers/misc/pvpanic/`): read the capability at probe, write
//! one event byte at panic.

use crate::cpu::{inb, outb};

/// QEMU's ISA pvpanic port (ACPI `QEMU0001`), where crashvmm puts its device.
pub const PVPANIC_PORT: u16 = 0x505;
pub const PVPANIC_PANICKED: u8 = 1 << 0;
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The events a 6.1 driver knows (`PVPANIC_PANICKED | PVPANIC_CRASH_LOADED`).
pub const DRIVER_BITS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// `pi->capability = driver_bits & ioread8(base)`.
pub fn capability() -> u8 {
    DRIVER_BITS & inb(PVPANIC_PORT)
}

/// `pvpanic_send_event()`: write `event` when the device supports it. Returns whether it did.
pub fn send_event(event: u8) -> bool {
    let e = event & capability();
    if e != 0 {
        outb(PVPANIC_PORT, e);
    }
    e != 0
}

/// Write any byte (the pvpanic-bytes scenario).
pub fn write_raw(value: u8) {
    outb(PVPANIC_PORT, value);
}
