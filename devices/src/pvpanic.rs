//! pvpanic: the ISA device at port 0x505 that Linux's `pvpanic-mmio` driver (ACPI id
//! `QEMU0001`) writes to when the guest panics.
//!
//! A read returns the events the host supports; a write is a bitmask of events (Linux writes
//! exactly one byte, `PVPANIC_PANICKED` or `PVPANIC_CRASH_LOADED`, but any bits are accepted).

use crate::{PioDevice, VmRequest};

/// Port of the ISA pvpanic device (QEMU's default).
pub const PVPANIC_PORT: u16 = 0x505;
/// ACPI hardware id the guest driver matches.
pub const PVPANIC_ACPI_HID: &str = "QEMU0001";
/// The guest panicked and will not handle it itself.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest panicked and is about to run its crash kernel (kdump).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The guest is shutting down normally (Linux 6.10+).
pub const PVPANIC_SHUTDOWN: u8 = 1 << 2;
/// Every event this device knows.
pub const PVPANIC_ALL: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN;

/// The events one pvpanic write carries, decoded once for the event log and the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvPanicEvents {
    pub panicked: bool,
    pub crash_loaded: bool,
    pub shutdown: bool,
}

impl PvPanicEvents {
    pub fn from_bits(bits: u8) -> Self {
        Self {
            panicked: bits & PVPANIC_PANICKED != 0,
            crash_loaded: bits & PVPANIC_CRASH_LOADED != 0,
            shutdown: bits & PVPANIC_SHUTDOWN != 0,
        }
    }

    /// Whether the guest says it crashed (PANICKED or CRASH_LOADED; SHUTDOWN alone is no crash).
    pub fn is_crash(self) -> bool {
        self.panicked || self.crash_loaded
    }
}

/// Parse `--pvpanic-events`: `all`, a comma list of `panicked`, `crash-loaded`, `shutdown`,
/// or a number (`0x3`, `3`).
pub fn parse_events(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if s == "all" {
        return Ok(PVPANIC_ALL);
    }
    let number = s.strip_prefix("0x").map(|h| u8::from_str_radix(h, 16)).unwrap_or_else(|| s.parse::<u8>());
    if let Ok(n) = number {
        return if n & !PVPANIC_ALL == 0 {
            Ok(n)
        } else {
            Err(format!("pvpanic events {n:#x} include unknown bits (known: {PVPANIC_ALL:#x})"))
        };
    }
    s.split(',').try_fold(0u8, |acc, name| {
        Ok(acc
            | match name.trim() {
                "panicked" => PVPANIC_PANICKED,
                "crash-loaded" | "crash_loaded" => PVPANIC_CRASH_LOADED,
                "shutdown" => PVPANIC_SHUTDOWN,
                other => {
                    return Err(format!(
                        "unknown pvpanic event '{other}' (use panicked, crash-loaded, shutdown, all or a bitmask)"
                    ))
                }
            })
    })
}

/// The device.
#[derive(Debug, Clone)]
pub struct PvPanic {
    supported: u8,
}

impl PvPanic {
    /// A device that advertises `supported` (a subset of [`PVPANIC_ALL`]).
    pub fn new(supported: u8) -> Self {
        Self { supported: supported & PVPANIC_ALL }
    }
}

impl PioDevice for PvPanic {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.supported;
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<VmRequest> {
        // Report what the guest wrote, even bits we did not advertise: the host wants to know.
        data.first().map(|&bits| VmRequest::PvPanic { bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_each_bit() {
        let e = PvPanicEvents::from_bits(PVPANIC_CRASH_LOADED | PVPANIC_SHUTDOWN);
        assert_eq!(e, PvPanicEvents { panicked: false, crash_loaded: true, shutdown: true });
        assert!(e.is_crash());
        assert!(!PvPanicEvents::from_bits(PVPANIC_SHUTDOWN).is_crash());
        assert!(PvPanicEvents::from_bits(PVPANIC_PANICKED).is_crash());
    }

    #[test]
    fn read_returns_supported_events() {
        let mut dev = PvPanic::new(PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        let mut b = [0xffu8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [3]);
        let mut dev = PvPanic::new(0xff);
        dev.read(0, &mut b);
        assert_eq!(b, [PVPANIC_ALL]);
    }

    #[test]
    fn every_byte_value_is_reported_as_a_bitmask() {
        let mut dev = PvPanic::new(PVPANIC_ALL);
        for v in 0..=255u8 {
            assert_eq!(dev.write(0, &[v]), Some(VmRequest::PvPanic { bits: v }));
        }
        assert_eq!(dev.write(0, &[]), None);
        assert_eq!(dev.write(0, &[1, 2, 3, 4]), Some(VmRequest::PvPanic { bits: 1 }));
    }

    #[test]
    fn parses_event_masks() {
        assert_eq!(parse_events("all"), Ok(7));
        assert_eq!(parse_events("panicked,crash-loaded"), Ok(3));
        assert_eq!(parse_events("shutdown"), Ok(4));
        assert_eq!(parse_events("0x3"), Ok(3));
        assert_eq!(parse_events("1"), Ok(1));
        assert_eq!(parse_events("0"), Ok(0));
        assert!(parse_events("8").is_err());
        assert!(parse_events("panicked,bogus").is_err());
    }
}
