//! vmmci behind the legacy transport (vmd's or the standard identity) on
//! random sequences of register accesses mixed with what the host does:
//! shutdown and reboot requests, clock syncs, its timer running out at
//! any moment, and a host clock at any value the guest can read.
#![no_main]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::transport::legacy::{standard_identity, vmd_identity, LegacyTransport};
use devices::virtio::transport::testing::FakeHooks;
use devices::virtio::vmmci::{Request, Settings, Vmmci, BAR_SIZE, DEVICE_TYPE};
use fuzzing::{register_op, Input, Registers};
use libfuzzer_sys::fuzz_target;

/// The host's CLOCK_REALTIME as the input sets it.
static SECS: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU32 = AtomicU32::new(0);

fn clock() -> Duration {
    Duration::new(SECS.load(Ordering::Relaxed), NANOS.load(Ordering::Relaxed))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let hooks = Arc::new(FakeHooks::new(input.bool()));
    let settings = Settings {
        clock,
        ..Settings::default()
    };
    let (dev, control) = Vmmci::with_settings(Box::new(|_| {}), settings).expect("a timerfd");
    let timer = control.timer();
    let id = if input.bool() {
        vmd_identity(DEVICE_TYPE)
    } else {
        standard_identity(DEVICE_TYPE)
    };
    let mut t = LegacyTransport::with_identity(Box::new(dev), 7, hooks.clone(), id, BAR_SIZE);
    t.config_mut().set_bar_address(0, 0xd000);
    t.connect_interrupts().expect("interrupts");
    let regs = Registers {
        // The header, the command register (20) and the clock (24..40).
        bases: &[0x0, 0x14, 0x18],
        size: t.bar_size(),
        max_width: 4,
    };
    for _ in 0..fuzzing::MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 => {
                control.request(Request::Shutdown);
            }
            1 => {
                control.request(Request::Reboot);
            }
            2 => {
                control.sync_rtc();
            }
            3 => {
                let after = Duration::from_millis(u64::from(input.u32()));
                timer.expire_at(Instant::now() + after);
            }
            4 => {
                SECS.store(input.u64(), Ordering::Relaxed);
                NANOS.store(input.u32() % 1_000_000_000, Ordering::Relaxed);
            }
            _ => register_op(&mut input, &mut t, &regs, &hooks.mem),
        }
        let _ = (control.pending(), control.driver_ok());
    }
    for v in hooks.take_violations() {
        assert!(!v.to_string().is_empty());
    }
});
