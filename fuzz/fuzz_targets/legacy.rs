//! The virtio 0.9.5 PCI transport on random sequences of register
//! accesses (the I/O BAR's header and device configuration, PCI
//! configuration space), strict or lenient, in front of the tests' fake
//! device with one to three queues (several queues share one notify port
//! and a kick relay thread).
#![no_main]

use std::sync::Arc;

use devices::virtio::transport::legacy::LegacyTransport;
use devices::virtio::transport::testing::{fake, FakeHooks};
use fuzzing::{register_op, Input, Registers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let hooks = Arc::new(FakeHooks::new(input.bool()));
    let (mut dev, _log, _counts) = fake(1 + usize::from(input.u8() % 3));
    dev.features |= input.u64() & !(0xff << 24);
    let mut t = LegacyTransport::new(Box::new(dev), 4, hooks.clone());
    t.config_mut().set_bar_address(0, 0xc100);
    t.config_mut().set_interrupt(1, 11);
    t.connect_interrupts().expect("interrupts");
    let regs = Registers {
        // The header (status at 18, ISR at 19) and device configuration.
        bases: &[0x0, 0x10, 0x14],
        size: t.bar_size(),
        max_width: 4,
    };
    for _ in 0..fuzzing::MAX_OPS {
        if input.is_empty() {
            break;
        }
        register_op(&mut input, &mut t, &regs, &hooks.mem);
    }
    for v in hooks.take_violations() {
        assert!(!v.to_string().is_empty());
    }
});
