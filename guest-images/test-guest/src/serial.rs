//! COM1 output (8250 at 0x3f8), polled: wait for LSR bit 5 (transmit
//! holding register empty), then write the byte; input is polled the same
//! way (LSR bit 0). No interrupts.

use core::fmt;

use crate::port::{inb, outb};

pub const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Writes one byte, waiting (bounded) for the transmitter. An absent UART
/// reads 0xff, which also has the bit set, so this never hangs.
pub fn write_byte(b: u8) {
    for _ in 0..100_000 {
        if inb(LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

/// Writes bytes, turning "\n" into "\r\n".
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

/// `core::fmt` sink for COM1 (used by `print!` / `println!`).
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::_print(format_args!($($arg)*)));
}

/// Prints a line to COM1 (ends with "\r\n").
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))));
}

/// LSR bit 0: a received byte is waiting in the receive buffer.
const LSR_DATA_READY: u8 = 1;

/// The next byte the host sent to COM1 (the launcher's stdin), polled, or
/// `None` if none came before `deadline` expired.
pub fn read_byte(deadline: &mut crate::clock::Deadline) -> Option<u8> {
    while !deadline.expired() {
        if inb(LSR) & LSR_DATA_READY != 0 {
            return Some(inb(COM1));
        }
        core::hint::spin_loop();
    }
    None
}
