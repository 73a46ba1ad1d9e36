//! A minimal i8042 keyboard controller at ports 0x60 (data) and 0x64
//! (status/command): enough for Linux's probe to find a keyboard quickly,
//! no mouse, and the one command that matters, 0xFE "pulse reset", which is
//! how Linux reboots a PC without ACPI. The reset becomes a
//! [`VmRequest::Reboot`], which the launcher turns into a re-exec.
//!
//! Keyboard replies raise IRQ 1 (through an irqfd) when the guest enabled
//! it: Linux's PS/2 layer waits for them by interrupt, and a missing reply
//! costs a timeout per command.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::control::{VmControl, VmRequest};

const DATA: u64 = 0;
/// Most bytes the output queue holds.
const OUT_LIMIT: usize = 16;
const STATUS_CMD: u64 = 4;

const STATUS_OBF: u8 = 1 << 0;
const STATUS_SYS: u8 = 1 << 2;
/// The last write went to the command port.
const STATUS_CMD_LAST: u8 = 1 << 3;
/// Keyboard not inhibited (the "keylock" switch is open).
const STATUS_UNLOCKED: u8 = 1 << 4;

const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYS: u8 = 1 << 2;
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
const CTR_XLATE: u8 = 1 << 6;

/// What the next byte written to the data port means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A command for the keyboard itself.
    Keyboard,
    WriteCtr,
    WriteOutputPort,
    WriteKbdOutput,
    WriteAuxOutput,
    WriteAux,
}

pub struct I8042 {
    ctr: u8,
    status_extra: u8,
    out: VecDeque<u8>,
    pending: Pending,
    irq: Option<EventFd>,
    control: VmControl,
}

impl I8042 {
    /// `irq` (GSI 1) is signalled when keyboard data is ready; `control`
    /// receives the reset request.
    pub fn new(irq: Option<EventFd>, control: VmControl) -> Self {
        Self {
            ctr: CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLED | CTR_XLATE,
            status_extra: STATUS_SYS | STATUS_UNLOCKED,
            out: VecDeque::new(),
            pending: Pending::Keyboard,
            irq,
            control,
        }
    }

    fn reply(&mut self, bytes: &[u8]) {
        // A real controller holds one byte; a few cover multi-byte replies,
        // and a guest that never reads cannot grow the queue.
        let room = OUT_LIMIT.saturating_sub(self.out.len());
        self.out.extend(bytes.iter().take(room));
        self.raise();
    }

    /// One interrupt per byte ready: Linux reads one byte per interrupt.
    fn raise(&self) {
        if self.ctr & CTR_KBD_INT != 0 && !self.out.is_empty() {
            if let Some(irq) = &self.irq {
                let _ = irq.write(1);
            }
        }
    }

    fn reset(&self) {
        self.control.request(VmRequest::Reboot {
            reason: "i8042 reset".into(),
        });
    }

    fn command(&mut self, cmd: u8) {
        self.pending = Pending::Keyboard;
        // A real controller's output buffer holds one byte, and a command's
        // reply replaces it. Linux reads the "aux interface test" reply
        // right after a loopback it rejected without reading; a stale byte
        // there made it probe for a mouse and wait 250 ms for its IRQ.
        if matches!(cmd, 0x20 | 0xa9 | 0xaa | 0xab) {
            self.out.clear();
        }
        match cmd {
            0x20 => self.reply(&[self.ctr]),
            0x60 => self.pending = Pending::WriteCtr,
            0xa7 => self.ctr |= CTR_AUX_DISABLED,
            0xa8 => self.ctr &= !CTR_AUX_DISABLED,
            // Auxiliary interface test: "clock line stuck low", so Linux
            // decides at once that there is no mouse port.
            0xa9 => self.reply(&[0x01]),
            0xaa => self.reply(&[0x55]),
            0xab => self.reply(&[0x00]),
            0xad => self.ctr |= CTR_KBD_DISABLED,
            0xae => self.ctr &= !CTR_KBD_DISABLED,
            0xd1 => self.pending = Pending::WriteOutputPort,
            0xd2 => self.pending = Pending::WriteKbdOutput,
            0xd3 => self.pending = Pending::WriteAuxOutput,
            0xd4 => self.pending = Pending::WriteAux,
            0xfe => self.reset(),
            _ => log::debug!("i8042: command {cmd:#04x} ignored"),
        }
    }

    fn data(&mut self, byte: u8) {
        let pending = std::mem::replace(&mut self.pending, Pending::Keyboard);
        match pending {
            Pending::WriteCtr => self.ctr = byte,
            // Bit 0 of the output port is the CPU reset line, active low.
            Pending::WriteOutputPort if byte & 1 == 0 => self.reset(),
            Pending::WriteOutputPort => {}
            Pending::WriteKbdOutput => self.reply(&[byte]),
            // No mouse: the loopback does not come back as written.
            Pending::WriteAuxOutput => self.reply(&[0xff]),
            Pending::WriteAux => {}
            Pending::Keyboard => match byte {
                0xff => self.reply(&[0xfa, 0xaa]),
                0xf2 => self.reply(&[0xfa, 0xab, 0x83]),
                0xee => self.reply(&[0xee]),
                _ => self.reply(&[0xfa]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            DATA => {
                let b = self.out.pop_front().unwrap_or(0);
                self.raise();
                b
            }
            STATUS_CMD => self.status_extra | if self.out.is_empty() { 0 } else { STATUS_OBF },
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            DATA => {
                self.status_extra &= !STATUS_CMD_LAST;
                self.data(byte);
            }
            STATUS_CMD => {
                self.status_extra |= STATUS_CMD_LAST;
                self.command(byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, crate::control::Requests) {
        let (control, rx) = VmControl::new().unwrap();
        (I8042::new(None, control), rx)
    }

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn self_test_and_ctr_round_trip() {
        let (mut d, _rx) = dev();
        d.write(STATUS_CMD, &[0xaa]);
        assert_eq!(read(&mut d, STATUS_CMD) & STATUS_OBF, STATUS_OBF);
        assert_eq!(read(&mut d, DATA), 0x55);
        assert_eq!(read(&mut d, STATUS_CMD) & STATUS_OBF, 0);
        d.write(STATUS_CMD, &[0x60]);
        d.write(DATA, &[0x45]);
        d.write(STATUS_CMD, &[0x20]);
        assert_eq!(read(&mut d, DATA), 0x45);
    }

    #[test]
    fn keyboard_identifies_itself() {
        let (mut d, _rx) = dev();
        d.write(DATA, &[0xf2]);
        assert_eq!(
            [read(&mut d, DATA), read(&mut d, DATA), read(&mut d, DATA)],
            [0xfa, 0xab, 0x83]
        );
    }

    #[test]
    fn one_interrupt_per_byte_and_a_bounded_queue() {
        let (control, _rx) = VmControl::new().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut d = I8042::new(Some(irq.try_clone().unwrap()), control);
        d.write(DATA, &[0xf2]);
        assert_eq!(irq.read().unwrap(), 1);
        for want in [0xfa, 0xab] {
            assert_eq!(read(&mut d, DATA), want);
            assert_eq!(irq.read().unwrap(), 1, "the next byte raises IRQ 1 again");
        }
        assert_eq!(read(&mut d, DATA), 0x83);
        assert!(irq.read().is_err(), "nothing left, no interrupt");
        for _ in 0..100 {
            d.write(DATA, &[0xf2]);
        }
        assert_eq!(d.out.len(), OUT_LIMIT);
    }

    /// Linux's mouse probe: the loopback (0xd3) comes back without the
    /// aux flag, so Linux skips that byte and sends the interface test
    /// (0xa9), whose reply must be the next byte it reads.
    #[test]
    fn aux_probe_fails_at_once() {
        let (mut d, _rx) = dev();
        d.write(STATUS_CMD, &[0xd3]);
        d.write(DATA, &[0x5a]);
        assert_eq!(read(&mut d, STATUS_CMD) & STATUS_OBF, STATUS_OBF);
        d.write(STATUS_CMD, &[0xa9]);
        assert_eq!(read(&mut d, DATA), 0x01, "clock line stuck: no aux port");
        assert_eq!(read(&mut d, STATUS_CMD) & STATUS_OBF, 0);
    }

    #[test]
    fn pulse_reset_asks_for_reboot() {
        let (mut d, rx) = dev();
        assert!(rx.try_recv().is_err());
        d.write(STATUS_CMD, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmRequest::Reboot { .. })));
        d.write(STATUS_CMD, &[0xd1]);
        d.write(DATA, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmRequest::Reboot { .. })));
    }
}
