//! COM1 output, one byte per port write, and the `TG: ` line format. No `core::fmt`: every
//! instruction costs on an emulated CPU, so numbers are printed by hand.

use crate::cpu::outb;

/// COM1 transmit holding register (an 8250 that is always ready under crashvmm and QEMU).
pub const COM1: u16 = 0x3f8;

pub fn putc(b: u8) {
    outb(COM1, b);
}

pub fn puts(s: &str) {
    for b in s.bytes() {
        putc(b);
    }
}

/// Bytes that are printable ASCII, others as '.'.
pub fn put_bytes(b: &[u8]) {
    for &c in b {
        putc(if (0x20..0x7f).contains(&c) { c } else { b'.' });
    }
}

pub fn put_hex(v: u64) {
    puts("0x");
    let mut started = false;
    for i in (0..16).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        if d != 0 || started || i == 0 {
            started = true;
            putc(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
    }
}

pub fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &c in &buf[i..] {
        putc(c);
    }
}

/// Start a line: `line().s("x ").hex(1).end()` prints `TG: x 0x1`.
pub fn line() -> Line {
    puts("TG: ");
    Line
}

/// A line under construction (see [`line`]).
pub struct Line;

impl Line {
    pub fn s(self, s: &str) -> Self {
        puts(s);
        self
    }
    pub fn hex(self, v: u64) -> Self {
        put_hex(v);
        self
    }
    pub fn dec(self, v: u64) -> Self {
        put_dec(v);
        self
    }
    pub fn bytes(self, b: &[u8]) -> Self {
        put_bytes(b);
        self
    }
    pub fn end(self) {
        putc(b'\n');
    }
}
