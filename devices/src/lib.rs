//! Device and protocol state machines for crashvmm.
//!
//! Nothing in this crate touches KVM, spawns threads or opens files: a device is a plain struct
//! with `read`/`write`, and whatever it wants the VM to do comes back as a [`VmRequest`] for the
//! VMM to act on. Everything here is unit-tested without `/dev/kvm`.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;

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
}

/// A device on the port-I/O bus. `offset` is relative to the base port the device was
/// registered at.
pub trait PioDevice: Send {
    /// Fill `data` with the value of a guest `IN` at `offset`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handle a guest `OUT` at `offset`; returns what the VM must do, if anything.
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest>;
}
