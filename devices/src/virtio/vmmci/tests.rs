//! vmmci behind the legacy transport, driven the way OpenBSD's and Linux's
//! drivers drive it, with fake hooks (no KVM). Timeouts are checked
//! against the armed deadline by calling the timer subscriber's handler
//! with a chosen "now"; a few tests run a real event loop on the timerfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};

use super::*;
use crate::pci::config::reg as pcireg;
use crate::pci::root::PciFunction;
use crate::virtio::device::status;
use crate::virtio::transport::legacy::testing::{FakeHooks, Regs};
use crate::virtio::transport::legacy::{standard_identity, LegacyTransport};

const CMD: u64 = 20;
const TIME: u64 = 24;
const ISR: u64 = 19;
const STATUS: u64 = 18;
const UP: u32 = (status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK) as u32;

struct Rig {
    t: LegacyTransport,
    hooks: Arc<FakeHooks>,
    control: VmmciControl,
    timer: VmmciTimer,
    events: Receiver<VmmciEvent>,
}

fn rig_with(settings: Settings) -> Rig {
    let (tx, events) = channel();
    let (dev, control) = Vmmci::with_settings(
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
        settings,
    )
    .unwrap();
    let timer = control.timer();
    let hooks = Arc::new(FakeHooks::new(false));
    let mut t = LegacyTransport::with_identity(
        Box::new(dev),
        7,
        hooks.clone(),
        standard_identity(DEVICE_TYPE),
        BAR_SIZE,
    );
    t.config_mut().set_bar_address(0, 0xd000);
    t.connect_interrupts().unwrap();
    Rig {
        t,
        hooks,
        control,
        timer,
        events,
    }
}

/// Timers short enough for tests.
fn quick(short_ms: u64, long_ms: u64) -> Settings {
    Settings {
        short_timeout: Duration::from_millis(short_ms),
        long_timeout: Duration::from_millis(long_ms),
        ..Settings::default()
    }
}

impl Rig {
    /// The driver's probe: status, features, DRIVER_OK.
    fn up(&mut self, features: u32) {
        self.t
            .w(STATUS, 1, u32::from(status::ACKNOWLEDGE | status::DRIVER));
        self.t.w(4, 4, features);
        self.t.w(STATUS, 1, UP);
        assert!(self.hooks.take().is_empty());
    }

    /// When the pending timeout runs out, if one runs.
    fn deadline(&self) -> Option<Instant> {
        lock(&self.control.shared.state).deadline
    }

    /// Whether the timerfd is set to go off.
    fn armed(&self) -> bool {
        lock(&self.control.shared.state).timer.is_armed().unwrap()
    }

    /// The timer handler run at `now`; checks that what it returns is
    /// what reached the event sink.
    fn expire_at(&mut self, now: Instant) -> Option<VmmciEvent> {
        let fired = self.timer.expire_at(now);
        assert_eq!(self.events.try_recv().ok(), fired);
        fired
    }

    /// Runs the handler just before and at the deadline: only the second
    /// fires. Returns what it fired.
    fn expire_at_deadline(&mut self) -> VmmciEvent {
        let d = self.deadline().expect("a timer runs");
        assert_eq!(self.expire_at(d - Duration::from_millis(1)), None);
        assert_eq!(self.deadline(), Some(d), "an early wake keeps the deadline");
        assert!(self.armed(), "an early wake re-arms the timerfd");
        let e = self.expire_at(d).expect("the deadline passed");
        assert_eq!(self.deadline(), None);
        e
    }

    /// A config register read byte by byte, as Linux's stock driver does.
    fn bytewise(&mut self, offset: u64) -> u32 {
        let mut v = 0u32;
        for i in 0..4 {
            v |= self.t.r(offset + i, 1) << (8 * i);
        }
        v
    }
}

#[test]
fn identity_features_and_bar() {
    let mut r = rig_with(Settings::default());
    let mut b = [0u8; 4];
    r.t.config_read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x0777_0b5d);
    r.t.config_read(pcireg::SUBSYSTEM_VENDOR_ID, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xffff_0b5d);
    r.t.config_read(pcireg::REVISION, &mut b);
    assert_eq!(
        u32::from_le_bytes(b),
        0x0780_0000,
        "class 07/80, revision 0"
    );
    r.t.config_read(pcireg::CAPABILITIES, &mut b[..1]);
    assert_eq!(b[0], 0);
    r.t.config_write(pcireg::BAR0, &[0xff; 4]);
    r.t.config_read(pcireg::BAR0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xffff_f001, "4 KiB I/O BAR");
    assert_eq!(r.t.r(0, 4), 0x7, "TIMESYNC | ACK | SYNCRTC");
    assert_eq!(r.t.r(12, 2), 0, "no virtqueues");
    assert_eq!(r.t.r(CMD, 4), command::NONE);
    assert!(r.hooks.take().is_empty());
}

fn fixed_clock() -> Duration {
    Duration::new(0x1_2345_6789, 123_456_000)
}

#[test]
fn time_registers_exact_and_bytewise() {
    let mut r = rig_with(Settings {
        clock: fixed_clock,
        ..Settings::default()
    });
    r.up(7);
    // OpenBSD: exact 32-bit reads, 24 first.
    assert_eq!(r.t.r(TIME, 4), 0x2345_6789);
    assert_eq!(r.t.r(TIME + 4, 4), 1, "tv_sec high word");
    assert_eq!(r.t.r(TIME + 8, 4), 123_456);
    assert_eq!(r.t.r(TIME + 12, 4), 0);
    // Linux: byte by byte, and 16-bit halves.
    assert_eq!(r.bytewise(TIME), 0x2345_6789);
    assert_eq!(r.bytewise(TIME + 4), 1);
    assert_eq!(r.bytewise(TIME + 8), 123_456);
    assert_eq!(r.t.r(TIME + 2, 2), 0x2345);
    assert!(r.hooks.take().is_empty());
}

#[test]
fn time_is_the_host_clock_latched_at_offset_24() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    assert_eq!(r.t.r(TIME + 8, 4), 0, "nothing latched yet");
    let lo = r.bytewise(TIME);
    let hi = r.t.r(TIME + 4, 4);
    let usec = r.t.r(TIME + 8, 4);
    let host = realtime();
    let guest = Duration::new(u64::from(hi) << 32 | u64::from(lo), usec * 1000);
    assert!(usec < 1_000_000);
    assert!(
        host.abs_diff(guest) < Duration::from_secs(1),
        "{host:?} vs {guest:?}"
    );
    // Other offsets read the latch; they do not take a new time.
    std::thread::sleep(Duration::from_millis(3));
    assert_eq!(r.t.r(TIME + 8, 4), usec);
}

#[test]
fn request_before_driver_ok_says_not_up() {
    let mut r = rig_with(Settings::default());
    assert_eq!(r.control.request(Request::Shutdown), Outcome::NotUp);
    assert!(!r.control.driver_ok());
    r.t.w(STATUS, 1, u32::from(status::ACKNOWLEDGE | status::DRIVER));
    assert_eq!(r.control.request(Request::Reboot), Outcome::NotUp);
    assert_eq!(r.hooks.pulses(), 0);
    assert_eq!(r.t.r(CMD, 4), command::NONE);
    assert_eq!(r.deadline(), None);
    assert!(!r.armed());
    assert_eq!(r.expire_at(Instant::now() + LONG_TIMEOUT), None);
}

#[test]
fn shutdown_request_pulses_once_and_shows_the_command() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    assert!(r.control.driver_ok());
    assert_eq!(r.control.request(Request::Shutdown), Outcome::Sent);
    assert_eq!(r.hooks.pulses(), 1);
    assert_eq!(
        r.control.request(Request::Shutdown),
        Outcome::AlreadyPending
    );
    assert_eq!(
        r.hooks.pulses(),
        0,
        "no second interrupt for the same command"
    );
    assert_eq!(r.t.r(ISR, 1), 2, "configuration change");
    assert_eq!(r.t.r(ISR, 1), 0, "read clears");
    assert_eq!(r.t.r(CMD, 4), command::SHUTDOWN);
    assert_eq!(r.bytewise(CMD), command::SHUTDOWN);
    assert_eq!(r.control.pending(), Some(VmmciEvent::ShutdownNow));
    assert!(r.hooks.take().is_empty());
}

#[test]
fn command_read_and_ack_clear_isr() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    r.control.request(Request::Reboot);
    assert_eq!(r.bytewise(CMD), command::REBOOT, "Linux never reads ISR");
    assert_eq!(r.t.r(ISR, 1), 0);
    r.control.request(Request::Shutdown);
    assert_eq!(r.hooks.pulses(), 2, "a new command interrupts again");
    r.t.w(CMD, 4, command::SHUTDOWN);
    assert_eq!(r.t.r(ISR, 1), 0);
}

#[test]
fn no_ack_within_the_short_timer_stops() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    let before = Instant::now();
    assert_eq!(r.control.request(Request::Shutdown), Outcome::Sent);
    let d = r.deadline().unwrap();
    assert!(d >= before + SHORT_TIMEOUT && d <= Instant::now() + SHORT_TIMEOUT);
    assert!(r.armed());
    assert_eq!(r.expire_at_deadline(), VmmciEvent::ShutdownNow);
    assert_eq!(r.control.pending(), None);
    assert_eq!(r.expire_at(d + LONG_TIMEOUT), None, "fires once");

    assert_eq!(r.control.request(Request::Reboot), Outcome::Sent);
    assert_eq!(r.expire_at_deadline(), VmmciEvent::RebootNow);
}

#[test]
fn ack_rearms_the_long_timer() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    r.control.request(Request::Shutdown);
    let short = r.deadline().unwrap();
    let before = Instant::now();
    r.t.w(CMD, 4, command::SHUTDOWN);
    let long = r.deadline().unwrap();
    assert!(long >= before + LONG_TIMEOUT && long <= Instant::now() + LONG_TIMEOUT);
    assert_eq!(r.expire_at(short), None, "the short timer was replaced");
    assert_eq!(r.expire_at_deadline(), VmmciEvent::ShutdownNow);
}

#[test]
fn bytewise_ack_counts_as_an_ack() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    r.control.request(Request::Reboot);
    let short = r.deadline().unwrap();
    for (i, b) in command::REBOOT.to_le_bytes().iter().enumerate() {
        r.t.w(CMD + i as u64, 1, u32::from(*b));
    }
    assert!(r.deadline().unwrap() >= short + (LONG_TIMEOUT - SHORT_TIMEOUT));
    assert_eq!(r.expire_at(short), None);
    assert_eq!(r.expire_at_deadline(), VmmciEvent::RebootNow);
}

#[test]
fn duplicate_acks_do_not_extend() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    r.control.request(Request::Shutdown);
    r.t.w(CMD, 4, command::SHUTDOWN);
    let long = r.deadline().unwrap();
    r.t.w(CMD, 4, command::SHUTDOWN);
    r.t.w(CMD, 4, command::SHUTDOWN);
    assert_eq!(r.deadline(), Some(long));
    assert_eq!(r.expire_at_deadline(), VmmciEvent::ShutdownNow);
    assert_eq!(r.expire_at(long + LONG_TIMEOUT), None);
}

#[test]
fn guest_going_down_on_its_own_arms_the_short_timer() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    let before = Instant::now();
    r.t.w(CMD, 4, command::SHUTDOWN);
    assert_eq!(r.control.pending(), Some(VmmciEvent::ShutdownNow));
    assert_eq!(
        r.control.request(Request::Shutdown),
        Outcome::AlreadyPending
    );
    let d = r.deadline().unwrap();
    assert!(d >= before + SHORT_TIMEOUT && d <= Instant::now() + SHORT_TIMEOUT);
    assert_eq!(r.expire_at_deadline(), VmmciEvent::ShutdownNow);
}

#[test]
fn syncrtc_ack_resets_the_command() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    assert!(r.control.sync_rtc());
    assert_eq!(r.hooks.pulses(), 1);
    assert!(!r.control.sync_rtc(), "already pending");
    assert_eq!(r.t.r(CMD, 4), command::SYNCRTC);
    r.t.w(CMD, 4, command::SYNCRTC);
    assert_eq!(r.t.r(CMD, 4), command::NONE);
    assert_eq!(r.control.pending(), None);
    // Not while a shutdown is under way.
    r.control.request(Request::Shutdown);
    assert!(!r.control.sync_rtc());
    assert_eq!(r.t.r(CMD, 4), command::SHUTDOWN);
}

#[test]
fn syncrtc_needs_the_feature_and_a_driver() {
    let mut r = rig_with(Settings::default());
    assert!(!r.control.sync_rtc());
    r.up(feature::TIMESYNC as u32 | feature::ACK as u32);
    assert!(!r.control.sync_rtc());
    assert_eq!(r.hooks.pulses(), 0);
}

static TICKS: AtomicU64 = AtomicU64::new(1000);

fn ticking_clock() -> Duration {
    Duration::from_secs(TICKS.fetch_add(1, Ordering::SeqCst))
}

#[test]
fn only_a_read_covering_offset_24_latches() {
    let mut r = rig_with(Settings {
        clock: ticking_clock,
        ..Settings::default()
    });
    r.up(7);
    let first = r.t.r(TIME, 4);
    assert_eq!(r.t.r(TIME + 1, 1), first >> 8 & 0xff, "no new latch");
    assert_eq!(r.t.r(TIME + 4, 4), 0);
    assert_eq!(
        r.t.r(TIME, 2) as u16,
        (first + 1) as u16,
        "a new read latches"
    );
    assert_eq!(r.t.r(CMD, 4), 0, "command register");
}

#[test]
fn driver_reset_means_not_up_but_keeps_a_shutdown_timer() {
    let mut r = rig_with(Settings::default());
    r.up(7);
    r.control.request(Request::Shutdown);
    let d = r.deadline().unwrap();
    r.t.w(STATUS, 1, 0);
    assert_eq!(r.t.r(CMD, 4), command::NONE);
    assert_eq!(r.control.request(Request::Reboot), Outcome::NotUp);
    assert_eq!(r.deadline(), Some(d));
    assert_eq!(r.expire_at_deadline(), VmmciEvent::ShutdownNow);
}

/// Runs an event loop with only `r`'s timer subscriber on it until an
/// event reaches the sink; panics after `limit`.
fn run_until_event(r: &Rig, limit: Duration) -> VmmciEvent {
    let mut loop_ = EventManager::<VmmciTimer>::new().unwrap();
    loop_.add_subscriber(r.control.timer());
    let give_up = Instant::now() + limit;
    loop {
        if let Ok(e) = r.events.try_recv() {
            return e;
        }
        assert!(Instant::now() < give_up, "no timer event within {limit:?}");
        loop_.run_with_timeout(100).unwrap();
    }
}

#[test]
fn the_event_loop_fires_the_short_timeout_on_the_timerfd() {
    let mut r = rig_with(quick(50, 10_000));
    r.up(7);
    let start = Instant::now();
    assert_eq!(r.control.request(Request::Reboot), Outcome::Sent);
    let e = run_until_event(&r, Duration::from_secs(10));
    assert_eq!(e, VmmciEvent::RebootNow);
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(r.deadline(), None);
    assert!(!r.armed());
}

#[test]
fn the_event_loop_fires_the_long_timeout_after_an_ack() {
    let mut r = rig_with(quick(30, 60));
    r.up(7);
    r.control.request(Request::Shutdown);
    r.t.w(CMD, 4, command::SHUTDOWN);
    let acked = Instant::now();
    let e = run_until_event(&r, Duration::from_secs(10));
    assert_eq!(e, VmmciEvent::ShutdownNow);
    assert!(acked.elapsed() >= Duration::from_millis(60));
}

#[test]
fn a_rearm_that_races_the_expiry_wins() {
    let mut r = rig_with(quick(1, 10_000));
    r.up(7);
    r.control.request(Request::Shutdown);
    let short = r.deadline().unwrap();
    // Let the short timer really expire on the timerfd...
    let fd = lock(&r.control.shared.state).timer.as_raw_fd();
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 10_000) }, 1, "timer expired");
    // ...then the guest's ack re-arms before the loop gets to it.
    r.t.w(CMD, 4, command::SHUTDOWN);
    let long = r.deadline().unwrap();
    assert!(long > short);
    assert_eq!(r.expire_at(Instant::now()), None, "the re-arm wins");
    assert_eq!(r.deadline(), Some(long));
    assert!(r.armed(), "the long timer still runs");
    assert_eq!(r.control.pending(), Some(VmmciEvent::ShutdownNow));
}

#[test]
fn clock_watch_sees_no_jump_without_one() {
    let mut w = ClockWatch::new();
    assert!(!w.jumped());
}

#[test]
fn clock_watch_sees_a_suspend_and_a_step_back() {
    let mut w = ClockWatch::new();
    let (wall, mono) = (w.wall, w.mono);
    // Host slept 60 s: monotonic time moved 1 s, wall time 61 s.
    assert!(w.observe(
        wall + Duration::from_secs(61),
        mono + Duration::from_secs(1)
    ));
    // Then both move together again.
    assert!(!w.observe(
        wall + Duration::from_secs(63),
        mono + Duration::from_secs(3)
    ));
    // Small drift below the 5 s threshold is no jump.
    assert!(!w.observe(
        wall + Duration::from_secs(67),
        mono + Duration::from_secs(4)
    ));
    // The wall clock stepped back by a minute.
    assert!(w.observe(wall + Duration::from_secs(8), mono + Duration::from_secs(5)));
}
