//! Time for ring-3 scenarios: the CMOS clock's seconds register for coarse,
//! host-independent timeouts, and the TSC (`rdtsc` is allowed in ring 3)
//! for measurements, with its rate from `tsc_khz=N` on the command line or
//! calibrated against the CMOS clock.

use crate::cmdline::Cmdline;
use crate::port::{inb, outb};
use crate::scenarios::rdtsc;

/// Polls between two looks at the CMOS clock (a look is two port exits).
const POLLS_PER_CLOCK_READ: u32 = 4096;

/// The CMOS clock's seconds register (whatever its encoding: only changes
/// are counted).
pub fn rtc_seconds() -> u8 {
    outb(0x70, 0x00);
    inb(0x71)
}

/// A coarse deadline counted in CMOS-clock second changes; call
/// [`Deadline::expired`] from a polling loop.
pub struct Deadline {
    seconds: u32,
    limit: u32,
    last: u8,
    polls: u32,
}

impl Deadline {
    /// Expires `seconds` to `seconds + 1` seconds from now.
    pub fn after(seconds: u32) -> Deadline {
        Deadline {
            seconds: 0,
            limit: seconds,
            last: rtc_seconds(),
            polls: 0,
        }
    }

    /// Whether the deadline has passed; looks at the clock only every
    /// [`POLLS_PER_CLOCK_READ`] calls.
    pub fn expired(&mut self) -> bool {
        self.polls += 1;
        if self.polls < POLLS_PER_CLOCK_READ {
            return false;
        }
        self.polls = 0;
        let now = rtc_seconds();
        if now != self.last {
            self.last = now;
            self.seconds += 1;
        }
        self.seconds > self.limit
    }
}

/// TSC ticks over one CMOS-clock second (between two changes of the
/// seconds register): between one and two seconds to measure.
pub fn calibrate_tsc_khz() -> u64 {
    let wait_change = || {
        let s = rtc_seconds();
        while rtc_seconds() == s {
            core::hint::spin_loop();
        }
        rdtsc()
    };
    let t0 = wait_change();
    let t1 = wait_change();
    (t1 - t0) / 1000
}

/// The TSC rate: `tsc_khz=N` from the command line, else calibrated.
/// Prints `GUEST-TSC khz=<n> source=<cmdline|rtc>`.
pub fn tsc_khz(cmdline: &Cmdline) -> u64 {
    let (khz, source) = match cmdline.get_u64("tsc_khz") {
        Some(k) if k > 0 => (k, "cmdline"),
        _ => (calibrate_tsc_khz(), "rtc"),
    };
    crate::println!("GUEST-TSC khz={khz} source={source}");
    khz.max(1)
}
