//! System control port B (port 0x61), part of the [`crate::i8042`] device's port range.
//!
//! Linux reads it in its NMI handler for the NMI reason: bit 7 (SERR) and bit 6 (IOCHK) set
//! would make an injected NMI a "PCI system error" instead of an unknown NMI, so they read 0.
//! Bit 4 (refresh) toggles on every read, as timing loops expect; bits 0-3 keep what was written
//! (PIT channel 2 gate, speaker, SERR/IOCHK disable).

use crate::{PioDevice, VmRequest};

pub const PORT61: u16 = 0x61;
const REFRESH: u8 = 1 << 4;

#[derive(Debug, Default)]
pub struct Port61 {
    control: u8,
    refresh: bool,
}

impl Port61 {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PioDevice for Port61 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        self.refresh = !self.refresh;
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = (self.control & 0x0f) | if self.refresh { REFRESH } else { 0 };
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmRequest> {
        if let Some(&b) = data.first() {
            self.control = b & 0x0f;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmi_reason_bits_are_clear_and_refresh_toggles() {
        let mut p = Port61::new();
        let mut a = [0xffu8];
        let mut b = [0xffu8];
        p.write(0, &[0xff]);
        p.read(0, &mut a);
        p.read(0, &mut b);
        assert_eq!(a[0] & 0xc0, 0, "no SERR, no IOCHK");
        assert_eq!(a[0] & 0x0f, 0x0f);
        assert_ne!(a[0] & REFRESH, b[0] & REFRESH);
    }
}
