//! vmmci's host-side event sources, as subscribers of the launcher's
//! event loop (rust-vmm `event-manager`, on the launcher's main thread):
//!
//! * [`VmmciTimer`] watches the device's one timerfd and, when vmd's short
//!   or long timeout runs out, hands [`VmmciEvent`] to the device's
//!   [`EventSink`](super::EventSink) (which asks the VM to stop or reboot).
//! * [`ClockWatcher`] ticks once a second, asks [`ClockWatch`] whether the
//!   host was suspended, and if so sends SYNCRTC through
//!   [`VmmciControl::sync_rtc`].
//!
//! Both timerfds are non-blocking, so a read after a re-arm that cleared
//! the expiry cannot stall the loop.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use super::{ClockWatch, Shared, VmmciControl, VmmciEvent};

/// How often [`ClockWatcher`] compares the clocks.
pub const CLOCK_WATCH_PERIOD: Duration = Duration::from_secs(1);

/// A CLOCK_MONOTONIC timerfd whose reads never block (for event-loop
/// subscribers: vmmci's, the control socket's back-off).
pub fn nonblocking_timer() -> std::io::Result<TimerFd> {
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
pub(super) fn drain(timer: &mut TimerFd) -> u64 {
    timer.wait().unwrap_or(0)
}

/// Ends the VM when vmmci's pending timeout runs out; see
/// [`VmmciControl::timer`].
pub struct VmmciTimer {
    shared: Arc<Shared>,
}

impl VmmciTimer {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// What the event loop does on expiry, for a given `now`: fires the
    /// event sink if the deadline passed and returns what it fired.
    pub fn expire_at(&self, now: Instant) -> Option<VmmciEvent> {
        self.shared.expire(now)
    }

    fn fd(&self) -> RawFd {
        super::lock(&self.shared.state).timer.as_raw_fd()
    }
}

impl MutEventSubscriber for VmmciTimer {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.expire_at(Instant::now());
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd(), EventSet::IN)) {
            log::error!("vmmci: cannot watch the timer, timeouts will not fire: {e}");
        }
    }
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
