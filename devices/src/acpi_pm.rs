//! ACPI power management for a hardware-reduced ACPI platform: the FADT sleep control, sleep
//! status and reset registers, all in one small port-I/O block.
//!
//! Linux powers off by evaluating `\_S5` for the sleep type and writing
//! `(SLP_TYP << 2) | SLP_EN` to the sleep control register (`acpi_hw_extended_sleep`), and
//! resets by writing the FADT `RESET_VALUE` to the reset register (`acpi_reboot`).

use crate::{PioDevice, ResetSource, VmRequest};

/// Base port of the block.
pub const ACPI_PM_BASE: u16 = 0x600;
/// Number of ports in the block.
pub const ACPI_PM_LEN: u16 = 8;
/// Offset of the sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const SLEEP_CONTROL_OFFSET: u16 = 0;
/// Offset of the sleep status register (FADT `SLEEP_STATUS_REG`).
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// Offset of the reset register (FADT `RESET_REG`).
pub const RESET_OFFSET: u16 = 4;
/// The FADT `RESET_VALUE`.
pub const RESET_VALUE: u8 = 1;
/// `SLP_TYP` that the DSDT's `\_S5` package announces for soft-off.
pub const S5_SLP_TYP: u8 = 5;
/// `SLP_EN` bit of the sleep control register (ACPI 6.x, 4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
/// Position of `SLP_TYP` in the sleep control register.
pub const SLP_TYP_SHIFT: u8 = 2;
/// `WAK_STS` bit of the sleep status register.
pub const WAK_STS: u8 = 1 << 7;

/// The power-management block.
#[derive(Debug, Default)]
pub struct AcpiPm {
    _private: (),
}

impl AcpiPm {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if offset == SLEEP_STATUS_OFFSET {
            // We never sleep, so any wait for wake completes at once.
            if let Some(b) = data.first_mut() {
                *b = WAK_STS;
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest> {
        let value = *data.first()?;
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & 0x7 == S5_SLP_TYP => {
                Some(VmRequest::PowerOff)
            }
            RESET_OFFSET if value == RESET_VALUE => Some(VmRequest::Reset(ResetSource::AcpiResetRegister)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPm::new();
        let s5 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(s5, 0x34, "the value Linux writes for SLP_TYP 5");
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[s5]), Some(VmRequest::PowerOff));
        // Without SLP_EN, or another sleep type, nothing happens.
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[s5 & !SLP_EN]), None);
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]), None);
        assert_eq!(pm.write(SLEEP_STATUS_OFFSET, &[s5]), None);
        assert_eq!(pm.write(SLEEP_CONTROL_OFFSET, &[]), None);
    }

    #[test]
    fn reset_register_needs_reset_value() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.write(RESET_OFFSET, &[RESET_VALUE]), Some(VmRequest::Reset(ResetSource::AcpiResetRegister)));
        assert_eq!(pm.write(RESET_OFFSET, &[2]), None);
    }

    #[test]
    fn sleep_status_reports_wake() {
        let mut pm = AcpiPm::new();
        let mut b = [0u8; 1];
        pm.read(SLEEP_STATUS_OFFSET, &mut b);
        assert_eq!(b[0], WAK_STS);
        pm.read(SLEEP_CONTROL_OFFSET, &mut b);
        assert_eq!(b[0], 0);
    }
}
