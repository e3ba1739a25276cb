//! COM1: vm-superio's 16550A UART, plus the one thing it lacks, a *break* on the receive line
//! (what `crashvmm ctl sysrq` sends ahead of its key: Linux's 8250 console driver takes a
//! break followed by a character as a magic SysRq key).
//!
//! A break arrives as a 0x00 byte in the receive FIFO that the guest sees with the line
//! status register's BI bit: while that byte is at the head of the FIFO, LSR reads BI|DR;
//! reading RBR pops it and BI goes with it, as on a 16550 in FIFO mode. Where a break sits is
//! counted in bytes received and bytes read ([`Breaks`]), so console input queued ahead of it
//! is read first, as plain input.

use std::collections::VecDeque;
use std::io;

use devices::{PioDevice, VmRequest};
use thiserror::Error;
use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::console::SharedConsole;

/// UART register offsets and bits this module looks at.
const DATA: u8 = 0;
const LSR: u8 = 5;
const MCR: u8 = 4;
const LSR_BREAK: u8 = 0x10;
const MCR_LOOP: u8 = 0x10;

/// The serial interrupt line: an eventfd registered as an irqfd for COM1's GSI.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Why a break could not be sent.
#[derive(Debug, Error)]
pub enum BreakError {
    #[error("the serial receive FIFO has no room for a break and its key ({room} bytes free, 2 needed)")]
    FifoFull { room: usize },
    #[error("the guest has the serial port in loopback mode, where it receives nothing")]
    Loopback,
    #[error("cannot raise the serial interrupt")]
    Interrupt(#[source] io::Error),
}

/// Where breaks sit in the receive FIFO, as positions in the stream of received bytes:
/// `read` bytes have left the FIFO, and a break is the byte at its position. Sans-IO: the
/// device says when a byte was queued ahead of a break and when one was read.
#[derive(Debug, Default)]
pub struct Breaks {
    /// Bytes read out of the FIFO (RBR reads that popped one).
    read: u64,
    /// Positions of the breaks still in the FIFO, oldest first.
    at: VecDeque<u64>,
}

impl Breaks {
    /// A break is queued behind `ahead` bytes already in the FIFO.
    pub fn push(&mut self, ahead: usize) {
        self.at.push_back(self.read + ahead as u64);
    }

    /// Whether the byte at the head of the FIFO is a break.
    pub fn at_head(&self) -> bool {
        self.at.front() == Some(&self.read)
    }

    /// The guest read the byte at the head of the FIFO.
    pub fn popped(&mut self) {
        if self.at_head() {
            self.at.pop_front();
        }
        self.read += 1;
    }

    /// Breaks still in the FIFO.
    pub fn pending(&self) -> usize {
        self.at.len()
    }
}

/// The 8250 UART on the port bus, with breaks.
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, SharedConsole>,
    /// The receive FIFO's size: its room when empty (the UART says only its room).
    fifo_size: usize,
    breaks: Breaks,
}

impl SerialDevice {
    pub fn new(irq: IrqLine, console: SharedConsole) -> Self {
        let uart = Serial::new(irq, console);
        Self { fifo_size: uart.fifo_capacity(), uart, breaks: Breaks::default() }
    }

    /// Room left in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Console input: as much of `bytes` as fits is queued (and the receive interrupt raised).
    pub fn enqueue(&mut self, bytes: &[u8]) -> Result<usize, SerialError<io::Error>> {
        self.uart.enqueue_raw_bytes(bytes)
    }

    /// Queue a break and then `key`, behind whatever input is queued already, and raise the
    /// receive interrupt. Both bytes or neither: with less than two bytes of room it fails.
    pub fn send_break(&mut self, key: u8) -> Result<(), BreakError> {
        if self.uart.read(MCR) & MCR_LOOP != 0 {
            return Err(BreakError::Loopback);
        }
        let room = self.uart.fifo_capacity();
        if room < 2 {
            return Err(BreakError::FifoFull { room });
        }
        let ahead = self.queued();
        match self.uart.enqueue_raw_bytes(&[0, key]) {
            Ok(_) => {
                self.breaks.push(ahead);
                Ok(())
            }
            // Both bytes are queued; only the interrupt failed.
            Err(SerialError::Trigger(e)) => {
                self.breaks.push(ahead);
                Err(BreakError::Interrupt(e))
            }
            Err(_) => Err(BreakError::FifoFull { room: self.uart.fifo_capacity() }),
        }
    }

    /// Bytes in the receive FIFO.
    fn queued(&self) -> usize {
        self.fifo_size - self.uart.fifo_capacity()
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        let offset = offset as u8;
        let before = self.uart.fifo_capacity();
        *b = self.uart.read(offset);
        match offset {
            // A byte left the FIFO (RBR with DLAB clear and data there), a break or not.
            DATA if self.uart.fifo_capacity() > before => self.breaks.popped(),
            LSR if self.breaks.at_head() => *b |= LSR_BREAK,
            _ => {}
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmRequest> {
        if let Some(&b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, b) {
                log::warn!("serial: {e:?}");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{ConsoleMode, ConsoleOutput};

    const LSR_DR: u8 = 0x01;
    const IIR: u16 = 2;
    const IER: u16 = 1;

    fn device() -> SerialDevice {
        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        SerialDevice::new(irq, SharedConsole::new(ConsoleOutput::new(&ConsoleMode::Null, None).unwrap()))
    }

    fn inb(dev: &mut SerialDevice, offset: u16) -> u8 {
        let mut b = [0xAA];
        dev.read(offset, &mut b);
        b[0]
    }

    /// How many times the interrupt line was raised since last asked.
    fn interrupts(dev: &SerialDevice) -> u64 {
        dev.uart.interrupt_evt().0.read().unwrap_or(0)
    }

    /// What Linux's 8250 driver reads for each received byte: LSR, then RBR.
    fn receive(dev: &mut SerialDevice) -> (u8, u8) {
        let lsr = inb(dev, LSR as u16);
        (lsr, inb(dev, DATA as u16))
    }

    #[test]
    fn a_break_reads_as_bi_with_a_zero_byte_then_the_key_reads_plain() {
        let mut dev = device();
        dev.write(IER, &[0x01]);
        interrupts(&dev);
        dev.send_break(b'c').unwrap();
        assert_eq!(interrupts(&dev), 1, "the receive interrupt fires as for any input");
        assert_eq!(inb(&mut dev, IIR) & 0x0f, 0x04, "received data available");
        let (lsr, rbr) = receive(&mut dev);
        assert_eq!(lsr & (LSR_BREAK | LSR_DR), LSR_BREAK | LSR_DR);
        assert_eq!(rbr, 0);
        let (lsr, rbr) = receive(&mut dev);
        assert_eq!(lsr & (LSR_BREAK | LSR_DR), LSR_DR, "BI went with the break's byte");
        assert_eq!(rbr, b'c');
        assert_eq!(inb(&mut dev, LSR as u16) & (LSR_BREAK | LSR_DR), 0, "FIFO empty");
        assert_eq!(dev.breaks.pending(), 0);
    }

    #[test]
    fn input_queued_ahead_is_read_plain_before_the_break() {
        let mut dev = device();
        dev.enqueue(b"ls").unwrap();
        dev.send_break(b'9').unwrap();
        // LSR read twice (the console's own transmit wait reads it too): BI stays until RBR.
        for expected in [b'l', b's'] {
            assert_eq!(inb(&mut dev, LSR as u16) & LSR_BREAK, 0);
            assert_eq!(receive(&mut dev), (LSR_DR | 0x60, expected));
        }
        // DLAB set: offset 0 is the divisor latch, nothing leaves the FIFO.
        dev.write(3, &[0x80]);
        assert_eq!(inb(&mut dev, DATA as u16), 0x0c);
        dev.write(3, &[0x03]);
        assert_eq!(inb(&mut dev, LSR as u16) & LSR_BREAK, LSR_BREAK);
        assert_eq!(receive(&mut dev), (LSR_BREAK | LSR_DR | 0x60, 0));
        dev.enqueue(b"x").unwrap();
        assert_eq!(receive(&mut dev), (LSR_DR | 0x60, b'9'));
        assert_eq!(receive(&mut dev), (LSR_DR | 0x60, b'x'));
        // An RBR read of an empty FIFO pops nothing and moves no break.
        assert_eq!(receive(&mut dev), (0x60, 0));
        dev.send_break(b'h').unwrap();
        assert_eq!(receive(&mut dev), (LSR_BREAK | LSR_DR | 0x60, 0));
        assert_eq!(receive(&mut dev), (LSR_DR | 0x60, b'h'));
    }

    #[test]
    fn a_break_needs_room_for_both_bytes() {
        let mut dev = device();
        let fifo_size = dev.fifo_size;
        assert_eq!(fifo_size, 64, "vm-superio's");
        assert_eq!(dev.enqueue(&vec![b'a'; fifo_size - 1]).unwrap(), fifo_size - 1);
        interrupts(&dev);
        let e = dev.send_break(b'c').unwrap_err();
        assert!(matches!(e, BreakError::FifoFull { room: 1 }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the serial receive FIFO has no room for a break and its key (1 bytes free, 2 needed)"
        );
        assert_eq!(dev.fifo_capacity(), 1, "nothing queued");
        assert_eq!(dev.breaks.pending(), 0);
        // Once the guest reads, there is room.
        receive(&mut dev);
        dev.send_break(b'c').unwrap();
        assert_eq!(dev.fifo_capacity(), 0);
        for _ in 0..fifo_size - 2 {
            assert_eq!(receive(&mut dev), (LSR_DR | 0x60, b'a'));
        }
        assert_eq!(receive(&mut dev), (LSR_BREAK | LSR_DR | 0x60, 0));
        assert_eq!(receive(&mut dev), (LSR_DR | 0x60, b'c'));
    }

    #[test]
    fn no_break_in_loopback_mode() {
        let mut dev = device();
        dev.write(MCR as u16, &[MCR_LOOP]);
        assert!(matches!(dev.send_break(b'c'), Err(BreakError::Loopback)));
        assert_eq!(dev.fifo_capacity(), dev.fifo_size);
    }
}
