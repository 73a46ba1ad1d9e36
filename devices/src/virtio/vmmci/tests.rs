//! vmmci behind the legacy transport, driven the way OpenBSD's and Linux's
//! drivers drive it, with short timers and fake hooks (no KVM).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    events: Receiver<VmmciEvent>,
}

fn rig_with(settings: Settings) -> Rig {
    let (tx, events) = channel();
    let (dev, control) = Vmmci::with_settings(
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
        settings,
    );
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
    let mut r = rig_with(quick(50, 50));
    assert_eq!(r.control.request(Request::Shutdown), Outcome::NotUp);
    assert!(!r.control.driver_ok());
    r.t.w(STATUS, 1, u32::from(status::ACKNOWLEDGE | status::DRIVER));
    assert_eq!(r.control.request(Request::Reboot), Outcome::NotUp);
    assert_eq!(r.hooks.pulses(), 0);
    assert_eq!(r.t.r(CMD, 4), command::NONE);
    assert!(r.events.recv_timeout(Duration::from_millis(150)).is_err());
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
    let mut r = rig_with(quick(50, 10_000));
    r.up(7);
    let start = Instant::now();
    assert_eq!(r.control.request(Request::Shutdown), Outcome::Sent);
    let e = r.events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e, VmmciEvent::ShutdownNow);
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(r.control.pending(), None);

    assert_eq!(r.control.request(Request::Reboot), Outcome::Sent);
    let e = r.events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e, VmmciEvent::RebootNow);
}

#[test]
fn ack_rearms_the_long_timer() {
    let mut r = rig_with(quick(100, 400));
    r.up(7);
    r.control.request(Request::Shutdown);
    r.t.w(CMD, 4, command::SHUTDOWN);
    let acked = Instant::now();
    assert!(
        r.events.recv_timeout(Duration::from_millis(250)).is_err(),
        "the short timer was replaced"
    );
    let e = r.events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e, VmmciEvent::ShutdownNow);
    assert!(acked.elapsed() >= Duration::from_millis(400));
}

#[test]
fn bytewise_ack_counts_as_an_ack() {
    let mut r = rig_with(quick(100, 400));
    r.up(7);
    r.control.request(Request::Reboot);
    for (i, b) in command::REBOOT.to_le_bytes().iter().enumerate() {
        r.t.w(CMD + i as u64, 1, u32::from(*b));
    }
    assert!(r.events.recv_timeout(Duration::from_millis(250)).is_err());
    let e = r.events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e, VmmciEvent::RebootNow);
}

#[test]
fn duplicate_acks_do_not_extend() {
    let mut r = rig_with(quick(100, 500));
    r.up(7);
    r.control.request(Request::Shutdown);
    r.t.w(CMD, 4, command::SHUTDOWN);
    let acked = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    r.t.w(CMD, 4, command::SHUTDOWN);
    r.t.w(CMD, 4, command::SHUTDOWN);
    let e = r.events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e, VmmciEvent::ShutdownNow);
    let took = acked.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(750),
        "{took:?}"
    );
    assert!(r.events.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn guest_going_down_on_its_own_arms_the_short_timer() {
    let mut r = rig_with(quick(50, 10_000));
    r.up(7);
    r.t.w(CMD, 4, command::SHUTDOWN);
    assert_eq!(r.control.pending(), Some(VmmciEvent::ShutdownNow));
    assert_eq!(
        r.control.request(Request::Shutdown),
        Outcome::AlreadyPending
    );
    let e = r.events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e, VmmciEvent::ShutdownNow);
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
    let mut r = rig_with(quick(50, 10_000));
    r.up(7);
    r.control.request(Request::Shutdown);
    r.t.w(STATUS, 1, 0);
    assert_eq!(r.t.r(CMD, 4), command::NONE);
    assert_eq!(r.control.request(Request::Reboot), Outcome::NotUp);
    let e = r.events.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(e, VmmciEvent::ShutdownNow);
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
