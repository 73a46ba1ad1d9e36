//! ACPI power-management registers: PM1a event block (status/enable) at
//! 0x600 and the PM1a control register at 0x604, as the FADT will describe
//! them. Writing SLP_EN with sleep type 5 (S5, "soft off") is how an ACPI
//! guest powers off; it becomes [`VmRequest::Poweroff`]. Test guests write
//! it directly.

use crate::bus::BusDevice;
use crate::control::{VmControl, VmRequest};

/// PM1a_EVT_BLK: status (2 bytes) then enable (2 bytes).
const EVT_LEN: u64 = 4;
/// PM1a_CNT_BLK offset within the range.
const CNT: u64 = 4;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
/// The sleep type our \_S5 object names; also what test guests write.
pub const S5_SLP_TYP: u16 = 5;

pub struct PowerManagement {
    evt: [u8; EVT_LEN as usize],
    cnt: u16,
    control: VmControl,
}

impl PowerManagement {
    pub fn new(control: VmControl) -> Self {
        Self {
            evt: [0; EVT_LEN as usize],
            cnt: 0,
            control,
        }
    }
}

impl BusDevice for PowerManagement {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset + i as u64;
            *b = match off {
                0..EVT_LEN => self.evt[off as usize],
                CNT => self.cnt as u8,
                5 => (self.cnt >> 8) as u8,
                _ => 0,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let off = offset + i as u64;
            match off {
                // Status bits are write-one-to-clear; enable bits are plain.
                0 | 1 => self.evt[off as usize] &= !b,
                2 | 3 => self.evt[off as usize] = b,
                CNT => self.cnt = (self.cnt & 0xff00) | u16::from(b),
                5 => self.cnt = (self.cnt & 0x00ff) | (u16::from(b) << 8),
                _ => {}
            }
        }
        if self.cnt & SLP_EN != 0 {
            let typ = (self.cnt >> SLP_TYP_SHIFT) & 7;
            self.cnt &= !SLP_EN;
            if typ == S5_SLP_TYP {
                self.control.request(VmRequest::Poweroff);
            } else {
                log::debug!("pm: guest asked for sleep type {typ}, which we do not offer");
            }
        }
    }
}

/// The value a guest writes to PM1a_CNT to power off.
pub const POWEROFF_VALUE: u16 = SLP_EN | (S5_SLP_TYP << SLP_TYP_SHIFT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_in_one_word_or_two_bytes() {
        let (control, rx) = VmControl::new().unwrap();
        let mut pm = PowerManagement::new(control);
        pm.write(CNT, &POWEROFF_VALUE.to_le_bytes());
        assert_eq!(rx.try_recv(), Ok(VmRequest::Poweroff));
        let [lo, hi] = POWEROFF_VALUE.to_le_bytes();
        pm.write(CNT, &[lo]);
        assert!(rx.try_recv().is_err());
        pm.write(CNT + 1, &[hi]);
        assert_eq!(rx.try_recv(), Ok(VmRequest::Poweroff));
        // Another sleep type does nothing.
        pm.write(CNT, &(SLP_EN | (1 << SLP_TYP_SHIFT)).to_le_bytes());
        assert!(rx.try_recv().is_err());
    }
}
