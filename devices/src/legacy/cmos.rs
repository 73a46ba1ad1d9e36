//! The CMOS RTC and NVRAM at ports 0x70 (index) and 0x71 (data).
//!
//! Linux reads the wall clock from here at boot (and the vmmci SYNCRTC
//! command makes it read again), so the clock registers are computed from
//! the host's `CLOCK_REALTIME` (UTC) on every read. The format follows
//! register B as the guest set it (BCD or binary, 12 or 24 hour). Everything
//! else is 128 bytes of plain NVRAM.

use crate::bus::BusDevice;

const INDEX: u64 = 0;
const DATA: u64 = 1;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register B: 24-hour mode.
const B_24H: u8 = 1 << 1;
/// Register B: binary, not BCD.
const B_BINARY: u8 = 1 << 2;

/// Broken-down UTC time, as the RTC shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl RtcTime {
    /// Converts seconds since the Unix epoch (civil-from-days algorithm).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        Self {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self::from_unix(secs)
    }
}

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Where the time comes from; replaceable so tests can fix it.
    clock: fn() -> RtcTime,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(RtcTime::now)
    }

    pub fn with_clock(clock: fn() -> RtcTime) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A as usize] = 0x26; // 32.768 kHz base, 1024 Hz rate, no update in progress
        nvram[REG_B as usize] = B_24H;
        nvram[REG_D as usize] = 0x80; // battery good, time valid
        Self {
            index: 0,
            nvram,
            clock,
        }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.nvram[REG_B as usize] & B_BINARY != 0 {
            v
        } else {
            (v / 10) << 4 | (v % 10)
        }
    }

    fn hours(&self, h: u8) -> u8 {
        if self.nvram[REG_B as usize] & B_24H != 0 {
            return self.encode(h);
        }
        let pm = if h >= 12 { 0x80 } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | pm
    }

    fn register(&self, reg: u8) -> u8 {
        let t = (self.clock)();
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.hours(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode((t.year % 100) as u8),
            REG_CENTURY => self.encode((t.year / 100) as u8),
            // No periodic, alarm or update interrupts are ever pending.
            REG_C => 0,
            r => self.nvram[r as usize & 0x7f],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            INDEX => self.index,
            DATA => self.register(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match offset {
            // Bit 7 is the NMI mask on a PC; it does not select a register.
            INDEX => self.index = b & 0x7f,
            // Writes to the clock registers are dropped: the host clock rules.
            DATA if self.index > REG_D || self.index == REG_B || self.index == REG_A => {
                let i = self.index as usize;
                self.nvram[i] = if self.index == REG_A { b & 0x7f } else { b };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> RtcTime {
        // 2026-11-22 15:04:05 UTC, a Sunday.
        RtcTime::from_unix(1_795_359_845)
    }

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(INDEX, &[reg]);
        let mut b = [0];
        c.read(DATA, &mut b);
        b[0]
    }

    #[test]
    fn converts_unix_time() {
        assert_eq!(
            RtcTime::from_unix(0),
            RtcTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 5,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        let t = fixed();
        assert_eq!((t.year, t.month, t.day, t.weekday), (2026, 11, 22, 1));
        assert_eq!((t.hour, t.minute, t.second), (15, 4, 5));
        assert_eq!(RtcTime::from_unix(951_782_400).day, 29); // 2000-02-29
    }

    #[test]
    fn reads_bcd_and_binary() {
        let mut c = Cmos::with_clock(fixed);
        assert_eq!(read(&mut c, REG_HOURS), 0x15);
        assert_eq!(read(&mut c, REG_YEAR), 0x26);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "no update in progress");
        assert_eq!(read(&mut c, REG_D), 0x80);
        c.write(INDEX, &[REG_B]);
        c.write(DATA, &[B_24H | B_BINARY]);
        assert_eq!(read(&mut c, REG_HOURS), 15);
        assert_eq!(read(&mut c, REG_MONTH), 11);
        c.write(INDEX, &[REG_B]);
        c.write(DATA, &[0]);
        assert_eq!(read(&mut c, REG_HOURS), 0x83, "3 pm in 12-hour BCD");
    }

    #[test]
    fn nvram_keeps_bytes_but_clock_ignores_writes() {
        let mut c = Cmos::with_clock(fixed);
        c.write(INDEX, &[0x80 | 0x40]);
        c.write(DATA, &[0x5a]);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        c.write(INDEX, &[REG_SECONDS]);
        c.write(DATA, &[0x33]);
        assert_eq!(read(&mut c, REG_SECONDS), 0x05);
    }
}
