//! vmmci, OpenBSD's VMM Control Interface (vmd's `vmmci_io`), as a
//! [`VirtioDevice`] without queues behind the legacy transport.
//!
//! It carries three things between host and guest, all through a 20-byte
//! device configuration:
//!
//! | config offset | read | write |
//! |---|---|---|
//! | 0 | pending command | ack: the command the guest handled |
//! | 4 | latches host CLOCK_REALTIME, tv_sec low 32 bits | — |
//! | 8 | tv_sec high 32 bits | — |
//! | 12 | latched tv_usec | — |
//! | 16 | 0 (tv_usec high) | — |
//!
//! * Orderly shutdown and reboot: the launcher (SIGTERM, a control
//!   command) calls [`VmmciControl::request`]; the command goes to the
//!   guest with a configuration-change interrupt, and vmd's timeouts end
//!   the VM through the launcher's [`EventSink`] if the guest does not.
//!   The timeouts are one timerfd, re-armed in place, that the launcher's
//!   event loop watches through [`VmmciTimer`] (`host.rs`).
//! * Clock sync after a host suspend: [`VmmciControl::sync_rtc`]
//!   ([`ClockWatcher`] ticks [`ClockWatch`] to notice the jump) asks the
//!   guest to re-read its RTC.
//! * The guest reads the host clock (OpenBSD every 15 s, Linux every 20 s).
//!
//! The Linux driver never reads ISR and acts on every interrupt, so the
//! interrupt is a single pulse per new command, ISR bit 1 is cleared again
//! by a read of the command and by the ack, and a repeated ack does not
//! extend the long timer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmm_sys_util::timerfd::TimerFd;

use crate::bus::lock;
use crate::pci::config::Identity;
use crate::trace::{Detail, Tracer, Value};
use crate::virtio::device::{ConfigSignal, QueueHandler, VirtioDevice};

/// The "virtio device id" Linux's driver matches (PCI subsystem id).
pub const DEVICE_TYPE: u16 = 0xffff;

/// vmd's PCI identity for vmmci: "bsd" vendor, "control" device,
/// revision 0 (the drivers refuse anything else).
pub const IDENTITY: Identity = Identity {
    vendor: 0x0b5d,
    device: 0x0777,
    class: 0x07,
    subclass: 0x80,
    prog_if: 0,
    revision: 0,
    subsystem_vendor: 0x0b5d,
    subsystem: DEVICE_TYPE,
};

/// vmd's I/O BAR size (a size probe reads 0xfffff001).
pub const BAR_SIZE: u64 = 0x1000;

/// Feature bits.
pub mod feature {
    pub const TIMESYNC: u64 = 1 << 0;
    pub const ACK: u64 = 1 << 1;
    pub const SYNCRTC: u64 = 1 << 2;
}

/// Offered features: all of them. TIMESYNC matters beyond its name: the
/// Linux driver only acks when it was negotiated.
pub const FEATURES: u64 = feature::TIMESYNC | feature::ACK | feature::SYNCRTC;

/// Values of the command register.
pub mod command {
    pub const NONE: u32 = 0;
    pub const SHUTDOWN: u32 = 1;
    pub const REBOOT: u32 = 2;
    pub const SYNCRTC: u32 = 3;
}

/// Time the guest has to ack a shutdown or reboot command (vmd: 3 s).
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time an acknowledged shutdown or reboot may take (vmd: 120 s).
pub const LONG_TIMEOUT: Duration = Duration::from_secs(120);

/// What the host asks of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Shutdown,
    Reboot,
}

impl Request {
    fn command(self) -> u32 {
        match self {
            Request::Shutdown => command::SHUTDOWN,
            Request::Reboot => command::REBOOT,
        }
    }
}

/// What [`VmmciControl::request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest's driver is not running (no DRIVER_OK): nobody would
    /// hear the request, so the launcher stops or reboots at once.
    NotUp,
    /// The command is with the guest; an [`VmmciEvent`] follows if the
    /// guest does not finish on its own in time.
    Sent,
    /// The same request is already in progress; nothing was re-sent and
    /// the timers run on unchanged.
    AlreadyPending,
}

/// What the device asks of the launcher when a timer runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmciEvent {
    /// Stop the VM now.
    ShutdownNow,
    /// Restart the VM now.
    RebootNow,
}

/// Where timer expiries go; called on the launcher's event loop (from
/// [`VmmciTimer`]) with no lock held.
pub type EventSink = Box<dyn Fn(VmmciEvent) + Send + Sync>;

/// Timeouts and clock, injectable for tests.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub short_timeout: Duration,
    pub long_timeout: Duration,
    /// Host wall-clock time since the epoch (CLOCK_REALTIME).
    pub clock: fn() -> Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            short_timeout: SHORT_TIMEOUT,
            long_timeout: LONG_TIMEOUT,
            clock: realtime,
        }
    }
}

/// CLOCK_REALTIME (what `SystemTime` reads on Linux); 0 before 1970.
fn realtime() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A shutdown or reboot under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The host asked; `acked` once the guest confirmed (long timer).
    Host { request: Request, acked: bool },
    /// The guest said on its own that it is powering off (short timer).
    Guest,
}

struct State {
    /// DRIVER_OK: the transport activated the device and no reset since.
    driver_ok: bool,
    features: u64,
    command: u32,
    ending: Option<Ending>,
    /// tv_sec and tv_usec, as latched by the last read of offset 4.
    time: (u64, u32),
    /// When the one pending timer runs out; `None` when none runs.
    deadline: Option<Instant>,
    /// Armed for `deadline`; the launcher's event loop watches it through
    /// [`VmmciTimer`]. Only ever set or read under the state lock.
    timer: TimerFd,
    signal: Option<Arc<dyn ConfigSignal>>,
}

struct Shared {
    state: Mutex<State>,
    events: EventSink,
    settings: Settings,
    /// The transport's tracer for this function, once it has one.
    trace: std::sync::OnceLock<Tracer>,
}

impl Shared {
    /// A command or an ack (`-vv`).
    fn trace(&self, kind: &str, v: u32, text: std::fmt::Arguments) {
        if let Some(t) = self.trace.get() {
            t.event(
                Detail::Request,
                kind,
                &[("command", Value::U(v.into()))],
                text,
            );
        }
    }
}

impl Shared {
    /// Arms the one pending timer for `after` from now, replacing any
    /// other (`timerfd_settime` replaces the old expiry).
    fn arm(&self, st: &mut State, after: Duration) {
        st.deadline = Some(Instant::now() + after);
        set_timer(&mut st.timer, after);
    }

    /// The timer fired (or the loop woke for it) at `now`: ends the VM
    /// through the [`EventSink`] if the deadline really passed. A re-arm
    /// that raced the expiry moved the deadline, and wins.
    fn expire(&self, now: Instant) -> Option<VmmciEvent> {
        let mut st = lock(&self.state);
        host::drain(&mut st.timer);
        let deadline = st.deadline?;
        if now < deadline {
            // Re-armed after the expiry (already set for the new deadline)
            // or woken early: either way the timer runs for what is left.
            set_timer(&mut st.timer, deadline - now);
            return None;
        }
        let event = match st.ending {
            Some(Ending::Host {
                request: Request::Reboot,
                ..
            }) => VmmciEvent::RebootNow,
            _ => VmmciEvent::ShutdownNow,
        };
        log::info!("vmmci: the guest did not finish in time: {event:?}");
        st.ending = None;
        st.deadline = None;
        drop(st);
        (self.events)(event);
        Some(event)
    }
}

/// Sets `timer` to run out once, `after` from now; a zero `after` still
/// fires (a zero `it_value` would disarm it).
fn set_timer(timer: &mut TimerFd, after: Duration) {
    if let Err(e) = timer.reset(after.max(Duration::from_nanos(1)), None) {
        log::error!("vmmci: cannot arm the timer: {e}");
    }
}

/// The device half, owned by the transport.
pub struct Vmmci {
    shared: Arc<Shared>,
}

/// The host half: Clone and Send, for signal handlers, control sockets
/// and the clock watcher.
#[derive(Clone)]
pub struct VmmciControl {
    shared: Arc<Shared>,
}

impl Vmmci {
    /// A device with vmd's timeouts; `events` hears when to stop or restart.
    /// Fails only if no timerfd can be made. The timeouts only run out if
    /// the launcher's event loop watches [`VmmciControl::timer`].
    pub fn new(events: EventSink) -> std::io::Result<(Vmmci, VmmciControl)> {
        Self::with_settings(events, Settings::default())
    }

    pub fn with_settings(
        events: EventSink,
        settings: Settings,
    ) -> std::io::Result<(Vmmci, VmmciControl)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                driver_ok: false,
                features: 0,
                command: command::NONE,
                ending: None,
                time: (0, 0),
                deadline: None,
                timer: host::nonblocking_timer()?,
                signal: None,
            }),
            events,
            settings,
            trace: std::sync::OnceLock::new(),
        });
        Ok((
            Vmmci {
                shared: shared.clone(),
            },
            VmmciControl { shared },
        ))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// The guest wrote `v` to the command register.
    fn ack(&self, v: u32) {
        self.shared
            .trace("ack", v, format_args!("the guest acks command {v}"));
        let mut st = self.state();
        if let Some(s) = &st.signal {
            s.clear();
        }
        match v {
            command::NONE => {}
            command::SHUTDOWN | command::REBOOT => match st.ending {
                None if v == command::SHUTDOWN => {
                    log::info!("vmmci: the guest is powering off on its own");
                    st.ending = Some(Ending::Guest);
                    let t = self.shared.settings.short_timeout;
                    self.shared.arm(&mut st, t);
                }
                Some(Ending::Host {
                    request,
                    acked: false,
                }) if request.command() == v => {
                    log::info!("vmmci: the guest acknowledged {request:?}");
                    st.ending = Some(Ending::Host {
                        request,
                        acked: true,
                    });
                    let t = self.shared.settings.long_timeout;
                    self.shared.arm(&mut st, t);
                }
                // A repeated ack must not stretch the long timer.
                _ => log::debug!("vmmci: ack {v} ignored, {:?} under way", st.ending),
            },
            command::SYNCRTC => {
                if st.command == command::SYNCRTC {
                    st.command = command::NONE;
                }
            }
            v => crate::guestlog::warn(
                "vmmci unknown ack",
                format_args!("vmmci: the guest acked unknown command {v}"),
            ),
        }
    }
}

impl VirtioDevice for Vmmci {
    fn set_tracer(&mut self, trace: Tracer) {
        let _ = self.shared.trace.set(trace);
    }
    fn feature_names(&self) -> &'static [(u32, &'static str)] {
        &[
            (0, "VMMCI_F_TIMESYNC"),
            (1, "VMMCI_F_ACK"),
            (2, "VMMCI_F_SYNCRTC"),
        ]
    }
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }
    fn name(&self) -> &'static str {
        "vmmci"
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let mut st = self.state();
        let end = offset.saturating_add(data.len());
        // Only a read covering offset 4 latches, so the halves read after
        // it belong to the same instant.
        if offset <= 4 && end > 4 {
            let now = (self.shared.settings.clock)();
            st.time = (now.as_secs(), now.subsec_micros());
        }
        if offset < 4 {
            if let Some(s) = &st.signal {
                s.clear();
            }
        }
        let mut regs = [0u8; 20];
        regs[0..4].copy_from_slice(&st.command.to_le_bytes());
        regs[4..12].copy_from_slice(&st.time.0.to_le_bytes());
        regs[12..16].copy_from_slice(&st.time.1.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| regs.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // Linux's stock legacy transport writes the ack byte by byte and
        // commands fit in the low byte: act on the write that covers it.
        if offset == 0 {
            let mut b = [0u8; 4];
            let n = data.len().min(4);
            b[..n].copy_from_slice(&data[..n]);
            self.ack(u32::from_le_bytes(b));
        } else if offset >= 4 || data.iter().any(|&b| b != 0) {
            crate::guestlog::warn(
                "vmmci read-only write",
                format_args!("vmmci: ignored write of {data:02x?} at config offset {offset}"),
            );
        }
    }

    fn activate(&mut self, features: u64) -> Vec<Box<dyn QueueHandler>> {
        let mut st = self.state();
        st.driver_ok = true;
        st.features = features;
        // A host request still stands from before the driver's reset: the
        // new driver hears it and has the short timer to ack it.
        if let Some(Ending::Host { request, .. }) = st.ending {
            log::info!("vmmci: a new driver is up; asking again for {request:?}");
            st.command = request.command();
            if let Some(s) = &st.signal {
                s.raise();
            }
        }
        Vec::new()
    }

    fn reset(&mut self) {
        // A request under way stands, like across the guest's own reboot:
        // the host still wants it, whatever the driver does. An ack the old
        // driver gave dies with it, so vmd's short timer runs again.
        let mut st = self.state();
        st.driver_ok = false;
        st.features = 0;
        st.command = command::NONE;
        if let Some(Ending::Host {
            request,
            acked: true,
        }) = st.ending
        {
            log::info!("vmmci: the driver reset with {request:?} acked; waiting for a new ack");
            st.ending = Some(Ending::Host {
                request,
                acked: false,
            });
            let t = self.shared.settings.short_timeout;
            self.shared.arm(&mut st, t);
        }
    }

    fn set_config_signal(&mut self, signal: Arc<dyn ConfigSignal>) {
        self.state().signal = Some(signal);
    }
}

impl VmmciControl {
    /// Asks the guest to shut down or reboot. Only a running driver
    /// hears it; see [`Outcome`] for what the launcher does next.
    pub fn request(&self, request: Request) -> Outcome {
        let mut st = lock(&self.shared.state);
        let signal = match (&st.signal, st.driver_ok) {
            (Some(s), true) => s.clone(),
            _ => return Outcome::NotUp,
        };
        match st.ending {
            Some(Ending::Host { request: r, .. }) if r == request => {
                return Outcome::AlreadyPending
            }
            Some(Ending::Guest) if request == Request::Shutdown => return Outcome::AlreadyPending,
            _ => {}
        }
        log::info!("vmmci: asking the guest for {request:?}");
        let c = request.command();
        self.shared.trace(
            "command",
            c,
            format_args!("command {c} ({request:?}) to the guest"),
        );
        st.command = request.command();
        st.ending = Some(Ending::Host {
            request,
            acked: false,
        });
        signal.raise();
        let t = self.shared.settings.short_timeout;
        self.shared.arm(&mut st, t);
        Outcome::Sent
    }

    /// After a host clock jump: asks the guest to re-read its RTC, if its
    /// driver runs, negotiated SYNCRTC, and is not shutting down. Returns
    /// whether the command went out.
    pub fn sync_rtc(&self) -> bool {
        let mut st = lock(&self.shared.state);
        let Some(signal) = st.signal.clone() else {
            return false;
        };
        if !st.driver_ok
            || st.features & feature::SYNCRTC == 0
            || st.ending.is_some()
            || st.command == command::SYNCRTC
        {
            return false;
        }
        st.command = command::SYNCRTC;
        signal.raise();
        true
    }

    /// What happens when the pending timer runs out, if one runs: lets
    /// the launcher stop rather than restart a guest that resets while a
    /// shutdown is under way.
    pub fn pending(&self) -> Option<VmmciEvent> {
        match lock(&self.shared.state).ending? {
            Ending::Host {
                request: Request::Reboot,
                ..
            } => Some(VmmciEvent::RebootNow),
            _ => Some(VmmciEvent::ShutdownNow),
        }
    }

    /// Whether the guest's driver is up (DRIVER_OK).
    pub fn driver_ok(&self) -> bool {
        lock(&self.shared.state).driver_ok
    }

    /// The subscriber that ends the VM when a timeout runs out; register it
    /// on the launcher's event loop, or the timeouts never fire.
    pub fn timer(&self) -> VmmciTimer {
        VmmciTimer::new(self.shared.clone())
    }
}

/// Notices host suspend/resume: CLOCK_MONOTONIC stops while the host
/// sleeps, CLOCK_REALTIME does not, so wall time running ahead of the
/// monotonic clock by more than [`ClockWatch::THRESHOLD`] means a jump.
pub struct ClockWatch {
    wall: Duration,
    mono: Instant,
}

impl ClockWatch {
    /// vmd's and the spec sheet's threshold.
    pub const THRESHOLD: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self {
            wall: realtime(),
            mono: Instant::now(),
        }
    }

    /// Whether the wall clock jumped since the last call (or `new`); call
    /// it periodically and [`VmmciControl::sync_rtc`] when it says so.
    pub fn jumped(&mut self) -> bool {
        self.observe(realtime(), Instant::now())
    }

    /// [`ClockWatch::jumped`] for given readings of both clocks.
    fn observe(&mut self, wall: Duration, mono: Instant) -> bool {
        let expected = self.wall + mono.duration_since(self.mono);
        let jumped = wall > expected + Self::THRESHOLD || wall + Self::THRESHOLD < expected;
        (self.wall, self.mono) = (wall, mono);
        jumped
    }
}

impl Default for ClockWatch {
    fn default() -> Self {
        Self::new()
    }
}

mod host;
pub use host::nonblocking_timer;

pub use host::{ClockWatcher, VmmciTimer};

#[cfg(test)]
mod tests;
