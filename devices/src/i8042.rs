//! The part of the i8042 keyboard controller that a VM needs: the reset line.
//!
//! Linux reboots through the keyboard controller (`reboot=k`, or as a fallback after the ACPI
//! reset register) by waiting for the input buffer to drain (status bit 1 clear) and writing
//! command 0xFE ("pulse output line 0", the CPU reset line) to the command port 0x64.

use crate::port61::Port61;
use crate::{PioDevice, ResetSource, VmRequest};

/// Base port of the controller; the device spans 0x60..=0x64, and answers system control port
/// B (0x61) too (see [`crate::port61`]).
pub const I8042_BASE: u16 = 0x60;
/// Number of ports from [`I8042_BASE`].
pub const I8042_LEN: u16 = 5;
/// Offset of the data port (0x60).
pub const DATA_OFFSET: u16 = 0;
/// Offset of the command (write) / status (read) port (0x64).
pub const COMMAND_OFFSET: u16 = 4;
/// Command: pulse the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// Offset of system control port B (0x61).
pub const PORT_B_OFFSET: u16 = 1;

/// Minimal i8042: empty buffers, no keyboard, a working reset line; plus port 0x61.
#[derive(Debug, Default)]
pub struct I8042 {
    port_b: Port61,
}

impl I8042 {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            PORT_B_OFFSET => self.port_b.read(0, data),
            // Status 0: output buffer empty, input buffer empty; data port has nothing.
            DATA_OFFSET | COMMAND_OFFSET => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest> {
        if offset == PORT_B_OFFSET {
            return self.port_b.write(0, data);
        }
        (offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU))
            .then_some(VmRequest::Reset(ResetSource::Keyboard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_only_on_fe_to_command_port() {
        let mut dev = I8042::new();
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xfe]), Some(VmRequest::Reset(ResetSource::Keyboard)));
        assert_eq!(dev.write(DATA_OFFSET, &[0xfe]), None);
        for cmd in (0..=0xffu8).filter(|&c| c != 0xfe) {
            assert_eq!(dev.write(COMMAND_OFFSET, &[cmd]), None, "command {cmd:#x}");
        }
        assert_eq!(dev.write(COMMAND_OFFSET, &[]), None);
    }

    #[test]
    fn status_says_input_buffer_empty() {
        let mut dev = I8042::new();
        let mut b = [0xaa];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b[0] & 0x02, 0, "Linux's kb_wait() spins while bit 1 is set");
        dev.read(2, &mut b);
        assert_eq!(b, [0xff]);
        // Port 0x61: an NMI's reason must not read as SERR/IOCHK.
        dev.read(PORT_B_OFFSET, &mut b);
        assert_eq!(b[0] & 0xc0, 0);
    }
}
