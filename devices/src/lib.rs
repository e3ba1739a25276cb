//! Device and protocol state machines for crashvmm.
//!
//! Nothing in this crate touches KVM, spawns threads or opens files: a device is a plain struct
//! with `read`/`write`, and whatever it wants the VM to do comes back as a [`VmRequest`] for the
//! VMM to act on. Everything here is unit-tested without `/dev/kvm`.

pub mod acpi_pm;
pub mod bus;
pub mod hyperv;
pub mod i8042;
pub mod pci;
pub mod port61;
pub mod pvpanic;
pub mod rtc;
pub mod virtio;
pub mod vmbus;

/// Why the guest asked for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSource {
    /// Pulse of the reset line through the i8042 keyboard controller (command 0xFE on port 0x64).
    Keyboard,
    /// Write of the FADT `RESET_VALUE` to the ACPI reset register.
    AcpiResetRegister,
}

impl ResetSource {
    /// Short stable name used in logs and the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetSource::Keyboard => "i8042_reset",
            ResetSource::AcpiResetRegister => "acpi_reset",
        }
    }
}

/// Something a device asks the VMM to do to the whole VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest asked for a platform reset.
    Reset(ResetSource),
    /// The guest entered ACPI sleep state S5 (soft off).
    PowerOff,
    /// The guest wrote this bitmask to the pvpanic device.
    PvPanic { bits: u8 },
}

/// Access to guest physical memory, as devices see it. Every access is bounds-checked by the
/// implementation; an access outside guest RAM is an error, never a panic.
pub trait GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange>;
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange>;
}

/// A guest physical access outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest physical range {gpa:#x}+{len:#x} is outside guest RAM")]
pub struct OutOfRange {
    pub gpa: u64,
    pub len: usize,
}

/// A device on the port-I/O bus. `offset` is relative to the base port the device was
/// registered at.
pub trait PioDevice: Send {
    /// Fill `data` with the value of a guest `IN` at `offset`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handle a guest `OUT` at `offset`; returns what the VM must do, if anything.
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest>;
}
