//! The PC's CMOS real-time clock: an MC146818-compatible RTC at ports 0x70 (index) and 0x71
//! (data), with 128 bytes of CMOS RAM.
//!
//! Linux reads the wall clock from it at boot (`mach_get_cmos_time`, through
//! `mc146818_get_time`), and `rtc_cmos` binds to it as `rtc0` when the DSDT describes a
//! `PNP0B00` device. Without one, every register reads 0xff: the update-in-progress bit looks
//! stuck and Linux polls it for a second of guest time before it prints "Unable to read current
//! time from RTC".
//!
//! The time comes from a [`WallClock`] (the host's clock in the VMM, a fixed one in tests) plus
//! an offset that the guest changes by writing the time registers, so a guest that sets the RTC
//! reads back what it set, advancing. The time and date registers are in BCD or binary and in
//! 12- or 24-hour format as status register B says; the clock counts whole seconds and an
//! update is never in progress (`RTC_UIP` always reads 0), so a reader never has to wait.
//!
//! Not emulated: interrupts. Status register C reads 0 and nothing is ever raised: no alarm,
//! periodic or update-ended interrupt, and no square wave. The enable bits of register B and the
//! alarm registers are stored like CMOS RAM and have no effect. The DSDT therefore describes the
//! device without an IRQ, and `rtc_cmos` runs without alarms.

use crate::{PioDevice, VmRequest};

/// Base port: the index register; the data register follows it.
pub const RTC_BASE: u16 = 0x70;
/// Number of ports from [`RTC_BASE`].
pub const RTC_LEN: u16 = 2;
/// ACPI hardware id of an AT-compatible CMOS RTC, which Linux's `rtc_cmos` matches.
pub const RTC_ACPI_HID: &str = "PNP0B00";
/// Offset of the index register (port 0x70).
pub const INDEX_OFFSET: u16 = 0;
/// Offset of the data register (port 0x71).
pub const DATA_OFFSET: u16 = 1;
/// Bit 7 of a write to the index register masks NMIs on a PC; it selects no register and is
/// ignored here.
pub const RTC_NMI_DISABLE: u8 = 0x80;
/// Bytes of CMOS RAM (registers included).
pub const CMOS_SIZE: usize = 128;

// Registers, named as in Linux's include/linux/mc146818rtc.h.
pub const RTC_SECONDS: u8 = 0x00;
pub const RTC_SECONDS_ALARM: u8 = 0x01;
pub const RTC_MINUTES: u8 = 0x02;
pub const RTC_MINUTES_ALARM: u8 = 0x03;
pub const RTC_HOURS: u8 = 0x04;
pub const RTC_HOURS_ALARM: u8 = 0x05;
/// 1 (Sunday) to 7.
pub const RTC_DAY_OF_WEEK: u8 = 0x06;
pub const RTC_DAY_OF_MONTH: u8 = 0x07;
pub const RTC_MONTH: u8 = 0x08;
/// The year within its century, 0-99.
pub const RTC_YEAR: u8 = 0x09;
/// Status register A (`RTC_FREQ_SELECT`): UIP, divider and rate select.
pub const RTC_REG_A: u8 = 0x0a;
/// Status register B (`RTC_CONTROL`): SET, interrupt enables, data mode, 12/24 hour.
pub const RTC_REG_B: u8 = 0x0b;
/// Status register C (`RTC_INTR_FLAGS`): interrupt flags, read-only.
pub const RTC_REG_C: u8 = 0x0c;
/// Status register D (`RTC_VALID`): valid RAM and time, read-only.
pub const RTC_REG_D: u8 = 0x0d;
/// The century, where a PC BIOS keeps it (the register an ACPI FADT's `CENTURY` field names).
pub const RTC_CENTURY: u8 = 0x32;

// Register A.
/// Update in progress.
pub const RTC_UIP: u8 = 0x80;
/// Divider bits: the 32.768 kHz time base, oscillator on.
pub const RTC_REF_CLCK_32KHZ: u8 = 0x20;
/// Rate select bits: 1024 Hz periodic rate.
pub const RTC_RATE_1024HZ: u8 = 0x06;
/// Register A as a PC BIOS leaves it.
pub const RTC_REG_A_DEFAULT: u8 = RTC_REF_CLCK_32KHZ | RTC_RATE_1024HZ;

// Register B.
/// Updates halted: the guest is setting the time.
pub const RTC_SET: u8 = 0x80;
/// Periodic interrupt enable (stored, not emulated).
pub const RTC_PIE: u8 = 0x40;
/// Alarm interrupt enable (stored, not emulated).
pub const RTC_AIE: u8 = 0x20;
/// Update-ended interrupt enable (stored, not emulated).
pub const RTC_UIE: u8 = 0x10;
/// Square wave enable (stored, not emulated).
pub const RTC_SQWE: u8 = 0x08;
/// Time and date in binary; clear: BCD.
pub const RTC_DM_BINARY: u8 = 0x04;
/// 24-hour mode; clear: 12-hour mode with [`RTC_HOURS_PM`].
pub const RTC_24H: u8 = 0x02;
/// Daylight saving enable (stored, not emulated).
pub const RTC_DST_EN: u8 = 0x01;
/// Register B as a PC BIOS leaves it: 24-hour, BCD, no interrupts.
pub const RTC_REG_B_DEFAULT: u8 = RTC_24H;
/// In 12-hour mode, bit 7 of the hours register is set from noon to midnight.
pub const RTC_HOURS_PM: u8 = 0x80;

// Register D.
/// Valid RAM and time: the battery is good.
pub const RTC_VRT: u8 = 0x80;

/// The clock the RTC runs on.
pub trait WallClock: Send {
    /// UTC seconds since the Unix epoch.
    fn unix_seconds(&self) -> i64;
}

impl<F: Fn() -> i64 + Send> WallClock for F {
    fn unix_seconds(&self) -> i64 {
        self()
    }
}

/// A broken-down UTC time, as the RTC's registers hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    /// 1-12.
    month: i64,
    /// 1-31.
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl DateTime {
    fn from_unix(t: i64) -> Self {
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        Self { year, month, day, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60 }
    }

    /// Seconds since the epoch. Fields out of range carry over (day 32 of a month is the next
    /// month's first or more), so whatever the guest wrote gives some time, never a panic.
    fn to_unix(self) -> i64 {
        let month0 = self.month.saturating_sub(1);
        let year = self.year.saturating_add(month0.div_euclid(12));
        let days = days_from_civil(year, month0.rem_euclid(12) + 1, 1).saturating_add(self.day.saturating_sub(1));
        days.saturating_mul(86_400)
            .saturating_add(self.hour.saturating_mul(3600))
            .saturating_add(self.minute.saturating_mul(60))
            .saturating_add(self.second)
    }

    /// 1 (Sunday) to 7.
    fn day_of_week(self) -> i64 {
        // 1970-01-01 was a Thursday (5).
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) + 1
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Keep the arithmetic far from overflow for absurd guest-made years.
    let y = year.clamp(-1_000_000_000, 1_000_000_000) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`). No allocation: crashvmm's SIGSYS handler formats its timestamp with it.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The CMOS RTC.
pub struct Rtc {
    clock: Box<dyn WallClock>,
    /// The register the next data access goes to (bit 7, the NMI mask, dropped).
    index: u8,
    /// CMOS RAM. The time registers, C and D are computed, not read from here.
    cmos: [u8; CMOS_SIZE],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// While [`RTC_SET`] is set: the time being written (the chip's updates are halted).
    held: Option<DateTime>,
}

impl Rtc {
    /// An RTC running on `clock`, showing its time, with registers as a PC BIOS leaves them.
    pub fn new(clock: impl WallClock + 'static) -> Self {
        let mut cmos = [0; CMOS_SIZE];
        cmos[RTC_REG_A as usize] = RTC_REG_A_DEFAULT;
        cmos[RTC_REG_B as usize] = RTC_REG_B_DEFAULT;
        Self { clock: Box::new(clock), index: 0, cmos, offset: 0, held: None }
    }

    fn control(&self) -> u8 {
        self.cmos[RTC_REG_B as usize]
    }

    /// The time the guest sees now.
    fn now(&self) -> DateTime {
        self.held.unwrap_or_else(|| DateTime::from_unix(self.clock.unix_seconds().saturating_add(self.offset)))
    }

    /// Make `time` the guest's time from now on.
    fn commit(&mut self, time: DateTime) {
        self.offset = time.to_unix().saturating_sub(self.clock.unix_seconds());
    }

    /// A time or date value in the register format register B selects.
    fn encode(&self, value: i64) -> u8 {
        let v = value.rem_euclid(100) as u8;
        if self.control() & RTC_DM_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, value: u8) -> i64 {
        if self.control() & RTC_DM_BINARY != 0 {
            value.into()
        } else {
            i64::from(value >> 4) * 10 + i64::from(value & 0x0f)
        }
    }

    fn encode_hours(&self, hour: i64) -> u8 {
        if self.control() & RTC_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { RTC_HOURS_PM } else { 0 };
        let hour12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(hour12) | pm
    }

    fn decode_hours(&self, value: u8) -> i64 {
        if self.control() & RTC_24H != 0 {
            return self.decode(value);
        }
        let pm = if value & RTC_HOURS_PM != 0 { 12 } else { 0 };
        self.decode(value & !RTC_HOURS_PM) % 12 + pm
    }

    fn read_register(&self, reg: u8) -> u8 {
        match reg {
            RTC_SECONDS => self.encode(self.now().second),
            RTC_MINUTES => self.encode(self.now().minute),
            RTC_HOURS => self.encode_hours(self.now().hour),
            RTC_DAY_OF_WEEK => self.encode(self.now().day_of_week()),
            RTC_DAY_OF_MONTH => self.encode(self.now().day),
            RTC_MONTH => self.encode(self.now().month),
            RTC_YEAR => self.encode(self.now().year),
            RTC_CENTURY => self.encode(self.now().year.div_euclid(100)),
            // Never in the middle of an update.
            RTC_REG_A => self.cmos[reg as usize] & !RTC_UIP,
            // No interrupt is ever pending.
            RTC_REG_C => 0,
            RTC_REG_D => RTC_VRT,
            _ => self.cmos[reg as usize],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            RTC_SECONDS | RTC_MINUTES | RTC_HOURS | RTC_DAY_OF_MONTH | RTC_MONTH | RTC_YEAR | RTC_CENTURY => {
                self.write_time(reg, value)
            }
            RTC_REG_A => self.cmos[reg as usize] = value & !RTC_UIP,
            RTC_REG_B => {
                let (was_set, set) = (self.control() & RTC_SET != 0, value & RTC_SET != 0);
                if !was_set && set {
                    self.held = Some(self.now());
                } else if was_set && !set {
                    if let Some(time) = self.held.take() {
                        self.commit(time);
                    }
                }
                self.cmos[reg as usize] = value;
            }
            // The day of the week follows from the date; C and D are read-only.
            RTC_DAY_OF_WEEK | RTC_REG_C | RTC_REG_D => {}
            _ => self.cmos[reg as usize] = value,
        }
    }

    /// A write to a time or date register: held until SET clears, or the new time at once.
    fn write_time(&mut self, reg: u8, value: u8) {
        let mut time = self.now();
        match reg {
            RTC_SECONDS => time.second = self.decode(value),
            RTC_MINUTES => time.minute = self.decode(value),
            RTC_HOURS => time.hour = self.decode_hours(value),
            RTC_DAY_OF_MONTH => time.day = self.decode(value),
            RTC_MONTH => time.month = self.decode(value),
            RTC_YEAR => time.year = time.year.div_euclid(100) * 100 + self.decode(value),
            _ => time.year = self.decode(value) * 100 + time.year.rem_euclid(100),
        }
        match &mut self.held {
            Some(held) => *held = time,
            None => self.commit(time),
        }
    }
}

impl PioDevice for Rtc {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // A wider access covers the following ports, as on the ISA bus.
        for (port, b) in (offset..).zip(data.iter_mut()) {
            *b = match port {
                DATA_OFFSET => self.read_register(self.index),
                // The index register is write-only.
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest> {
        for (port, &b) in (offset..).zip(data) {
            match port {
                INDEX_OFFSET => self.index = b & !RTC_NMI_DISABLE,
                DATA_OFFSET => self.write_register(self.index, b),
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// 2026-11-25 15:58:54 UTC, a Wednesday.
    const T0: i64 = 1_795_622_334;

    /// A clock the test moves by hand.
    fn clock(start: i64) -> (Arc<AtomicI64>, impl WallClock) {
        let now = Arc::new(AtomicI64::new(start));
        let c = now.clone();
        (now, move || c.load(Ordering::Relaxed))
    }

    fn read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(INDEX_OFFSET, &[reg]);
        let mut b = [0];
        rtc.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn write(rtc: &mut Rtc, reg: u8, value: u8) {
        rtc.write(INDEX_OFFSET, &[reg]);
        rtc.write(DATA_OFFSET, &[value]);
    }

    /// Seconds, minutes, hours, day of week, day, month, year, century.
    fn time(rtc: &mut Rtc) -> [u8; 8] {
        [RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY]
            .map(|r| read(rtc, r))
    }

    #[test]
    fn defaults_are_what_a_pc_bios_leaves() {
        let (_, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        assert_eq!(read(&mut rtc, RTC_REG_A), 0x26);
        assert_eq!(read(&mut rtc, RTC_REG_B), 0x02);
        assert_eq!(read(&mut rtc, RTC_REG_C), 0);
        assert_eq!(read(&mut rtc, RTC_REG_D), 0x80);
    }

    #[test]
    fn reads_bcd_24_hour_by_default() {
        let (_, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        assert_eq!(time(&mut rtc), [0x54, 0x58, 0x15, 0x04, 0x25, 0x11, 0x26, 0x20]);
    }

    #[test]
    fn reads_binary_when_register_b_says_so() {
        let (_, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        write(&mut rtc, RTC_REG_B, RTC_24H | RTC_DM_BINARY);
        assert_eq!(time(&mut rtc), [54, 58, 15, 4, 25, 11, 26, 20]);
    }

    #[test]
    fn twelve_hour_mode_sets_the_pm_bit() {
        let (now, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        write(&mut rtc, RTC_REG_B, 0);
        assert_eq!(read(&mut rtc, RTC_HOURS), RTC_HOURS_PM | 0x03, "15:58 is 3 PM");
        write(&mut rtc, RTC_REG_B, RTC_DM_BINARY);
        assert_eq!(read(&mut rtc, RTC_HOURS), RTC_HOURS_PM | 3);
        let midnight = T0 - (15 * 3600 + 58 * 60 + 54);
        for (t, hours) in [(midnight, 12), (midnight + 3600, 1), (midnight + 12 * 3600, RTC_HOURS_PM | 12)] {
            now.store(t, Ordering::Relaxed);
            assert_eq!(read(&mut rtc, RTC_HOURS), hours, "{t}");
        }
        // Written in 12-hour mode: 11 PM.
        write(&mut rtc, RTC_HOURS, RTC_HOURS_PM | 11);
        write(&mut rtc, RTC_REG_B, RTC_24H | RTC_DM_BINARY);
        assert_eq!(read(&mut rtc, RTC_HOURS), 23);
    }

    #[test]
    fn century_and_dates_across_eras() {
        // 1999-12-31 23:59:59, then 2000-01-01 00:00:00 (a Saturday), then 2100-03-01.
        let (now, c) = clock(946_684_799);
        let mut rtc = Rtc::new(c);
        assert_eq!(time(&mut rtc), [0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19]);
        now.store(946_684_800, Ordering::Relaxed);
        assert_eq!(time(&mut rtc), [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]);
        now.store(4_107_542_400, Ordering::Relaxed);
        assert_eq!(time(&mut rtc), [0x00, 0x00, 0x00, 0x02, 0x01, 0x03, 0x00, 0x21]);
        for t in [-86_400 * 400 * 366, -1, 0, 951_782_400, 4_107_542_399, 253_402_300_799] {
            assert_eq!(DateTime::from_unix(t).to_unix(), t);
        }
    }

    /// What Linux's `mc146818_set_time` does: SET in register B, the divider reset in A, the
    /// fields from the year down, then A and B restored.
    #[test]
    fn setting_the_time_holds_it_then_runs_from_it() {
        // From 2026-12-31 12:00:00 to 2031-02-28 23:59:50: the fields are held as written, so
        // the intermediate 2031-02-31 (the new month, the old day) never becomes March 3rd.
        let (now, c) = clock(1_798_718_400);
        let mut rtc = Rtc::new(c);
        let (b, a) = (read(&mut rtc, RTC_REG_B), read(&mut rtc, RTC_REG_A));
        write(&mut rtc, RTC_REG_B, b | RTC_SET);
        write(&mut rtc, RTC_REG_A, a | 0x70);
        for (reg, v) in [(RTC_YEAR, 0x31), (RTC_MONTH, 0x02)] {
            write(&mut rtc, reg, v);
        }
        assert_eq!(read(&mut rtc, RTC_DAY_OF_MONTH), 0x31);
        for (reg, v) in [(RTC_DAY_OF_MONTH, 0x28), (RTC_HOURS, 0x23), (RTC_MINUTES, 0x59), (RTC_SECONDS, 0x50)] {
            write(&mut rtc, reg, v);
        }
        now.fetch_add(100, Ordering::Relaxed);
        assert_eq!(time(&mut rtc)[..3], [0x50, 0x59, 0x23], "updates are halted while SET");
        write(&mut rtc, RTC_REG_A, a);
        write(&mut rtc, RTC_REG_B, b);
        assert_eq!(time(&mut rtc), [0x50, 0x59, 0x23, 0x06, 0x28, 0x02, 0x31, 0x20]);
        now.fetch_add(10, Ordering::Relaxed);
        assert_eq!(time(&mut rtc), [0x00, 0x00, 0x00, 0x07, 0x01, 0x03, 0x31, 0x20], "it runs on");
        assert_eq!(read(&mut rtc, RTC_REG_A), 0x26);
    }

    #[test]
    fn a_single_write_without_set_moves_the_clock_at_once() {
        let (now, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        write(&mut rtc, RTC_MINUTES, 0x05);
        write(&mut rtc, RTC_CENTURY, 0x21);
        assert_eq!(time(&mut rtc), [0x54, 0x05, 0x15, 0x02, 0x25, 0x11, 0x26, 0x21], "2126-11-25, a Monday");
        now.fetch_add(6, Ordering::Relaxed);
        assert_eq!(read(&mut rtc, RTC_SECONDS), 0x00);
        assert_eq!(read(&mut rtc, RTC_MINUTES), 0x06);
        // Day of week follows the date; writing it changes nothing.
        write(&mut rtc, RTC_DAY_OF_WEEK, 0x01);
        assert_eq!(read(&mut rtc, RTC_DAY_OF_WEEK), 0x02);
        // Garbage from the guest gives some time, never a panic.
        for reg in [RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY] {
            for v in [0x00, 0x99, 0xff] {
                write(&mut rtc, reg, v);
                time(&mut rtc);
            }
        }
    }

    #[test]
    fn extreme_clocks_and_offsets_do_not_panic() {
        for start in [i64::MIN, -1, i64::MAX] {
            let (_, c) = clock(start);
            let mut rtc = Rtc::new(c);
            for reg in [RTC_SECONDS, RTC_HOURS, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY] {
                write(&mut rtc, reg, 0x99);
                time(&mut rtc);
            }
        }
    }

    #[test]
    fn update_in_progress_never_reads_set() {
        let (now, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        write(&mut rtc, RTC_REG_A, 0xff);
        for t in 0..3000 {
            now.store(T0 + t, Ordering::Relaxed);
            assert_eq!(read(&mut rtc, RTC_REG_A) & RTC_UIP, 0);
        }
        assert_eq!(read(&mut rtc, RTC_REG_A), 0x7f, "the rest of A is kept");
    }

    #[test]
    fn nmi_mask_bit_selects_no_register() {
        let (_, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        write(&mut rtc, 0x40, 0xa5);
        assert_eq!(read(&mut rtc, RTC_NMI_DISABLE | 0x40), 0xa5);
        assert_eq!(read(&mut rtc, RTC_NMI_DISABLE | RTC_SECONDS), 0x54);
        assert_eq!(read(&mut rtc, RTC_NMI_DISABLE | RTC_REG_D), RTC_VRT);
    }

    #[test]
    fn cmos_ram_and_out_of_range_accesses() {
        let (_, c) = clock(T0);
        let mut rtc = Rtc::new(c);
        // Every RAM byte outside the clock keeps what was written, index 0x7f included.
        let ram = (0x0e..0x80u8).filter(|&r| r != RTC_CENTURY);
        for r in ram.clone().chain([RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM]) {
            write(&mut rtc, r, r ^ 0x5a);
        }
        for r in ram.chain([RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM]) {
            assert_eq!(read(&mut rtc, r), r ^ 0x5a, "register {r:#x}");
        }
        // C and D are read-only.
        write(&mut rtc, RTC_REG_C, 0xff);
        write(&mut rtc, RTC_REG_D, 0x00);
        assert_eq!((read(&mut rtc, RTC_REG_C), read(&mut rtc, RTC_REG_D)), (0, RTC_VRT));
        // The index port reads all ones; offsets past the device read all ones, writes vanish.
        let mut b = [0u8; 1];
        rtc.read(INDEX_OFFSET, &mut b);
        assert_eq!(b, [0xff]);
        rtc.read(2, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(rtc.write(2, &[0x42]), None);
        assert_eq!(rtc.write(5, &[]), None);
        // A 16-bit OUT to 0x70 writes the index, then the data; a 16-bit IN reads 0xff, data.
        assert_eq!(rtc.write(INDEX_OFFSET, &[0x20, 0x77]), None);
        let mut w = [0u8; 2];
        rtc.read(INDEX_OFFSET, &mut w);
        assert_eq!(w, [0xff, 0x77]);
        let mut w = [0u8; 3];
        rtc.read(DATA_OFFSET, &mut w);
        assert_eq!(w, [0x77, 0xff, 0xff]);
    }
}
