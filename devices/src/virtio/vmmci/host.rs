//! vmmci's host-side event sources, as subscribers of the launcher's
//! event loop (rust-vmm `event-manager`, on the launcher's main thread):
//!
//! * [`ClockWatcher`] ticks once a second, asks [`ClockWatch`] whether the
//!   host was suspended, and if so sends SYNCRTC through
//!   [`VmmciControl::sync_rtc`].
//!
//! Its timerfd is non-blocking, so a stray read cannot stall the loop.

use std::os::fd::AsRawFd;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use super::{ClockWatch, VmmciControl};

/// How often [`ClockWatcher`] compares the clocks.
pub const CLOCK_WATCH_PERIOD: Duration = Duration::from_secs(1);

/// A CLOCK_MONOTONIC timerfd whose reads never block.
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(std::io::Error::from)?;
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own change only its
    // status flags.
    let r = unsafe {
        let fd = timer.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

/// Reads (and so clears) the expiry count; 0 when none is pending.
fn drain(timer: &mut TimerFd) -> u64 {
    timer.wait().unwrap_or(0)
}

/// Notices a host suspend/resume once a second and asks the guest to
/// re-read its RTC.
pub struct ClockWatcher {
    tick: TimerFd,
    watch: ClockWatch,
    vmmci: VmmciControl,
}

impl ClockWatcher {
    /// Fails only if no timerfd can be made or armed.
    pub fn new(vmmci: VmmciControl) -> std::io::Result<Self> {
        let mut tick = nonblocking_timer()?;
        tick.reset(CLOCK_WATCH_PERIOD, Some(CLOCK_WATCH_PERIOD))
            .map_err(std::io::Error::from)?;
        Ok(Self {
            tick,
            watch: ClockWatch::new(),
            vmmci,
        })
    }
}

impl MutEventSubscriber for ClockWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if drain(&mut self.tick) == 0 {
            return;
        }
        if self.watch.jumped() {
            let sent = self.vmmci.sync_rtc();
            log::debug!(
                "host clock jumped; SYNCRTC {}",
                if sent { "sent" } else { "not sent (no driver)" }
            );
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.tick, EventSet::IN)) {
            log::warn!("vmmci: no clock watch: {e}");
        }
    }
}
